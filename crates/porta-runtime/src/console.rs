//! Terminal mode: a pty made inside the container, its master sent to `--console-socket`.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;

use crate::error::{Context, Error, Result};
use crate::sys;

/// Connects to a Unix socket at `path`, also when the path is longer than sun_path allows
/// (it then goes through the directory's fd).
pub fn connect_unix(path: &Path) -> Result<UnixStream> {
    if path.as_os_str().len() < 100 {
        return UnixStream::connect(path).ctx(|| format!("connect to {}", path.display()));
    }
    let dir = path.parent().unwrap_or(Path::new("/"));
    let name = path
        .file_name()
        .ok_or_else(|| Error::Usage(format!("{} is not a socket path", path.display())))?;
    let dfd = std::fs::File::open(dir).ctx(|| format!("open {}", dir.display()))?;
    let short = Path::new("/proc/self/fd")
        .join(dfd.as_raw_fd().to_string())
        .join(name);
    UnixStream::connect(&short).ctx(|| format!("connect to {}", path.display()))
}

/// Sends the pty master over the console socket as runc does (SCM_RIGHTS, the fd's name as data).
pub fn send_master(socket: &Path, master: BorrowedFd<'_>) -> Result<()> {
    let s = connect_unix(socket)?;
    porta_sys::scm::send(s.as_raw_fd(), b"/dev/ptmx", &[master.as_raw_fd()], 0).ctx(|| {
        format!(
            "send the pty master to the console socket {}",
            socket.display()
        )
    })?;
    Ok(())
}

/// A new pty from the devpts instance at `ptmx`: (master, slave), the slave owned by `uid`,
/// the user the process runs as, as runc gives it (its group stays the one devpts gives:
/// `gid=5`, the tty group, in the default config).
pub fn open_pty(ptmx: &Path, size: Option<(u16, u16)>, uid: u32) -> Result<(OwnedFd, OwnedFd)> {
    let master: OwnedFd = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags_noctty()
        .open(ptmx)
        .ctx(|| format!("open {}", ptmx.display()))?
        .into();
    sys::unlock_pty(master.as_fd()).ctx(|| "unlock pty".into())?;
    let slave = sys::pty_peer(master.as_fd()).ctx(|| "open pty peer".into())?;
    if let Some((rows, cols)) = size {
        sys::set_winsize(slave.as_fd(), rows, cols).ctx(|| "process.consoleSize".into())?;
    }
    let st = nix::sys::stat::fstat(slave.as_raw_fd()).ctx(|| "stat the pty".into())?;
    if st.st_uid != uid {
        nix::unistd::fchown(
            slave.as_raw_fd(),
            Some(nix::unistd::Uid::from_raw(uid)),
            None,
        )
        .ctx(|| format!("give the pty to process.user.uid {uid}"))?;
    }
    Ok((master, slave))
}

trait NoCtty {
    fn custom_flags_noctty(&mut self) -> &mut Self;
}

impl NoCtty for std::fs::OpenOptions {
    fn custom_flags_noctty(&mut self) -> &mut Self {
        use std::os::unix::fs::OpenOptionsExt;
        self.custom_flags(libc::O_NOCTTY | libc::O_CLOEXEC)
    }
}

/// Makes `slave` the calling process's controlling terminal and stdio (new session).
pub fn become_tty(slave: BorrowedFd<'_>) -> Result<()> {
    nix::unistd::setsid().ctx(|| "setsid".into())?;
    sys::set_controlling_tty(slave).ctx(|| "set controlling terminal".into())?;
    for fd in 0..3 {
        nix::unistd::dup2(slave.as_raw_fd(), fd).ctx(|| format!("dup2 pty to fd {fd}"))?;
    }
    Ok(())
}
