//! Foreground terminal mode of `run` and `exec -t` without `--console-socket`: Porta itself
//! receives the pty master and relays it to its own stdin/stdout, as runc does.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context, Result};

/// A listening console socket in a private temporary directory.
pub struct ConsoleListener {
    dir: PathBuf,
    listener: UnixListener,
}

impl ConsoleListener {
    /// Binds a console socket under `root` (Porta's state root, so the path is short).
    pub fn new(root: &Path) -> Result<Self> {
        let dir = root.join(format!(".console-{}", std::process::id()));
        std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        let listener = UnixListener::bind(dir.join("sock"))
            .with_context(|| format!("bind console socket in {}", dir.display()))?;
        Ok(ConsoleListener { dir, listener })
    }

    /// The socket's path, to pass as the console socket.
    pub fn path(&self) -> PathBuf {
        self.dir.join("sock")
    }

    /// Accepts the connection the runtime made and receives the pty master from it.
    pub fn receive(&self) -> Result<OwnedFd> {
        let (s, _) = self
            .listener
            .accept()
            .context("accept on the console socket")?;
        let mut buf = [0u8; 256];
        let mut cbuf = nix::cmsg_space!([std::os::fd::RawFd; 1]);
        let mut iov = [std::io::IoSliceMut::new(&mut buf)];
        let msg = nix::sys::socket::recvmsg::<()>(
            s.as_raw_fd(),
            &mut iov,
            Some(&mut cbuf),
            nix::sys::socket::MsgFlags::MSG_CMSG_CLOEXEC,
        )
        .context("receive the pty master")?;
        for c in msg.cmsgs().context("read control message")? {
            if let nix::sys::socket::ControlMessageOwned::ScmRights(fds) = c {
                if let Some(fd) = fds.first() {
                    // SAFETY: SCM_RIGHTS handed us this fd; we own it now.
                    return Ok(unsafe { OwnedFd::from_raw_fd(*fd) });
                }
            }
        }
        Err(anyhow!("no pty master arrived on the console socket"))
    }
}

impl Drop for ConsoleListener {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Puts stdin in raw mode while alive (when it is a terminal).
pub struct RawMode(Option<nix::sys::termios::Termios>);

impl RawMode {
    /// Enters raw mode if stdin is a terminal.
    pub fn enter() -> RawMode {
        let stdin = std::io::stdin();
        match nix::sys::termios::tcgetattr(&stdin) {
            Ok(orig) => {
                let mut raw = orig.clone();
                nix::sys::termios::cfmakeraw(&mut raw);
                let _ =
                    nix::sys::termios::tcsetattr(&stdin, nix::sys::termios::SetArg::TCSANOW, &raw);
                RawMode(Some(orig))
            }
            Err(_) => RawMode(None),
        }
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        if let Some(t) = &self.0 {
            let _ = nix::sys::termios::tcsetattr(
                std::io::stdin(),
                nix::sys::termios::SetArg::TCSANOW,
                t,
            );
        }
    }
}

/// Relays stdin to the master and the master to stdout, in two threads; returns the
/// output thread, which ends when the pty closes.
pub fn relay(master: OwnedFd) -> Result<std::thread::JoinHandle<()>> {
    let mut from = std::fs::File::from(master);
    let mut to = from.try_clone().context("dup pty master")?;
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        let mut stdin = std::io::stdin();
        while let Ok(n) = stdin.read(&mut buf) {
            if n == 0 || to.write_all(&buf[..n]).is_err() {
                break;
            }
        }
    });
    Ok(std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        let mut out = std::io::stdout();
        // EIO once the last slave fd is closed: the container's terminal is gone.
        while let Ok(n) = from.read(&mut buf) {
            if n == 0 || out.write_all(&buf[..n]).is_err() {
                break;
            }
            let _ = out.flush();
        }
    }))
}
