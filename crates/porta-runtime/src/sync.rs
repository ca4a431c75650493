//! The channel between `porta create`/`exec` and the processes it forks: typed messages over a
//! SEQPACKET socket pair, with file descriptors attached (SCM_RIGHTS).

use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// A message exchanged while a container process is being set up.
#[derive(Debug, Serialize, Deserialize)]
pub enum Msg {
    /// Stage one reports the pid (in the caller's pid namespace) of the process it forked.
    Pid(i32),
    /// The child is in its new user namespace and waits for its id mappings.
    NeedMappings,
    /// The parent wrote the id mappings.
    MappingsDone,
    /// The child asks for its root file server's detached mount.
    NeedRoot,
    /// The parent sends the file server's detached mount (the fd comes with the message).
    Root,
    /// The child finished its mounts and asks for the prestart/createRuntime hooks.
    RunHooks,
    /// The parent ran those hooks; carries the state JSON for the hooks run inside.
    HooksDone(String),
    /// A pty master is attached (terminal mode).
    Console,
    /// A seccomp notification fd is attached.
    SeccompListener,
    /// The child is set up and waits for `start` (or, for exec, is about to exec).
    Ready,
    /// The child failed; the text says why.
    Failed(String),
}

/// One end of the set-up channel.
pub struct Channel {
    fd: OwnedFd,
}

impl Channel {
    /// A connected pair of channel ends (both close-on-exec).
    pub fn pair() -> Result<(Channel, Channel)> {
        let (a, b) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .map_err(|e| Error::nix("socketpair for the set-up channel", e))?;
        Ok((Channel { fd: a }, Channel { fd: b }))
    }

    /// Sends a message with optional fds.
    pub fn send(&self, msg: &Msg, fds: &[RawFd]) -> Result<()> {
        let bytes = serde_json::to_vec(msg)
            .map_err(|e| Error::Init(format!("encode set-up message: {e}")))?;
        porta_sys::scm::send(self.fd.as_raw_fd(), &bytes, fds, libc::MSG_NOSIGNAL)
            .map_err(|e| Error::sys("send on the set-up channel", e))?;
        Ok(())
    }

    /// Receives one message and the fds that came with it. A closed peer yields an error
    /// naming `peer`.
    pub fn recv(&self, peer: &str) -> Result<(Msg, Vec<OwnedFd>)> {
        let mut buf = vec![0u8; 64 * 1024];
        let mut slots: [Option<OwnedFd>; 4] = Default::default();
        let (n, fds) = loop {
            match porta_sys::scm::recv(self.fd.as_raw_fd(), &mut buf, 0, &mut slots) {
                Ok(r) => break (r.len, slots.iter_mut().filter_map(Option::take).collect()),
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                Err(e) => return Err(Error::sys(format!("receive from {peer}"), e)),
            }
        };
        if n == 0 {
            return Err(Error::Init(format!(
                "{peer} exited before finishing set-up"
            )));
        }
        let msg: Msg = serde_json::from_slice(&buf[..n])
            .map_err(|e| Error::Init(format!("malformed set-up message from {peer}: {e}")))?;
        if let Msg::Failed(why) = msg {
            return Err(Error::Init(why));
        }
        Ok((msg, fds))
    }

    /// Receives a message and checks that it is the expected one.
    pub fn expect(&self, peer: &str, want: fn(&Msg) -> bool) -> Result<Vec<OwnedFd>> {
        let (msg, fds) = self.recv(peer)?;
        if want(&msg) {
            Ok(fds)
        } else {
            Err(Error::Init(format!(
                "unexpected set-up message from {peer}: {msg:?}"
            )))
        }
    }
}
