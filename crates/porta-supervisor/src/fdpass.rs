//! Passing one descriptor with a short message over a Unix socket (SCM_RIGHTS), over
//! [`porta_sys::scm`].

use std::os::fd::{OwnedFd, RawFd};

/// Sends `msg`, with `fd` attached when given.
pub fn send_with_fd(sock: RawFd, msg: &[u8], fd: Option<RawFd>) -> Result<(), nix::errno::Errno> {
    porta_sys::scm::send(sock, msg, fd.as_slice(), 0)
        .map(|_| ())
        .map_err(errno)
}

/// Receives a message (up to 4096 bytes) and the first descriptor attached to it, if
/// any (close-on-exec; further ones, up to four, are closed).
pub fn recv_with_fd(sock: RawFd) -> Result<(Vec<u8>, Option<OwnedFd>), nix::errno::Errno> {
    let mut buf = vec![0u8; 4096];
    let mut fds: [Option<OwnedFd>; 4] = Default::default();
    let r = porta_sys::scm::recv(sock, &mut buf, 0, &mut fds).map_err(errno)?;
    buf.truncate(r.len);
    let [first, ..] = fds;
    Ok((buf, first))
}

fn errno(e: std::io::Error) -> nix::errno::Errno {
    nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO))
}
