//! Passing one descriptor with a short message over a Unix socket (SCM_RIGHTS).

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};

/// Sends `msg`, with `fd` attached when given.
pub fn send_with_fd(sock: RawFd, msg: &[u8], fd: Option<RawFd>) -> Result<(), nix::errno::Errno> {
    let iov = [IoSlice::new(msg)];
    let fds;
    let cmsgs: Vec<ControlMessage> = match fd {
        Some(f) => {
            fds = [f];
            vec![ControlMessage::ScmRights(&fds)]
        }
        None => vec![],
    };
    sendmsg::<()>(sock, &iov, &cmsgs, MsgFlags::empty(), None).map(|_| ())
}

/// Receives a message and the descriptor attached to it, if any (close-on-exec).
pub fn recv_with_fd(sock: RawFd) -> Result<(Vec<u8>, Option<OwnedFd>), nix::errno::Errno> {
    let mut buf = vec![0u8; 4096];
    let mut cmsg = nix::cmsg_space!([RawFd; 4]);
    let (n, fds) = {
        let mut iov = [IoSliceMut::new(&mut buf)];
        let m = recvmsg::<()>(sock, &mut iov, Some(&mut cmsg), MsgFlags::MSG_CMSG_CLOEXEC)?;
        let mut fds = Vec::new();
        for c in m.cmsgs()? {
            if let ControlMessageOwned::ScmRights(v) = c {
                fds.extend(v);
            }
        }
        (m.bytes, fds)
    };
    buf.truncate(n);
    let mut owned: Vec<OwnedFd> = fds
        .into_iter()
        // SAFETY: descriptors just received with SCM_RIGHTS belong to us alone.
        .map(|f| unsafe { OwnedFd::from_raw_fd(f) })
        .collect();
    let first = if owned.is_empty() {
        None
    } else {
        Some(owned.remove(0))
    };
    Ok((buf, first))
}
