//! Running a `fuser` session on a given FUSE connection: a `SOCK_SEQPACKET` socket from the
//! container's file server (or, in tests, a `/dev/fuse` descriptor).
//!
//! `fuser::Session::from_fd` reads one request per `read` and writes one reply per
//! `writev`, which a SEQPACKET socket preserves as message boundaries; it mounts nothing
//! and needs no privilege. The one difference from `/dev/fuse` is the end: on `/dev/fuse`
//! an unmount makes `read` fail with ENODEV (which `fuser` takes as a clean end), while a
//! socket whose peer closed reads as a zero-length message, which `fuser` reports as an
//! invalid request. `serve` tells the two apart by polling a duplicate of the socket.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

use crate::Error;

/// The largest WRITE payload the built-ins accept, told to the file server in the INIT
/// reply. `fuser` would offer 16 MiB; a `SOCK_SEQPACKET` message must fit the socket's
/// send buffer (about 208 KiB by default), so requests and replies are kept to 128 KiB
/// of data, as the kernel's own default of 32 pages.
pub(crate) const MAX_WRITE: u32 = 128 * 1024;

/// Settles the connection's parameters at INIT, for every built-in.
pub(crate) fn init(builtin: &'static str, config: &mut fuser::KernelConfig) -> io::Result<()> {
    config.set_max_write(MAX_WRITE).map_err(|limit| {
        io::Error::other(format!(
            "max_write {MAX_WRITE} refused (the connection allows {limit})"
        ))
    })?;
    // Read-ahead no larger either, so that `max_pages` (from the larger of the two) keeps
    // READ replies to 128 KiB too. Err: the peer offered less, which is kept.
    let _ = config.set_max_readahead(MAX_WRITE);
    tracing::debug!(builtin, abi = ?config.kernel_abi(), "FUSE connection initialised");
    Ok(())
}

/// Serves `fs` on `fuse` until the peer closes the connection or an unmount ends it.
pub(crate) fn serve<F: fuser::Filesystem>(
    builtin: &'static str,
    fs: F,
    fuse: OwnedFd,
) -> Result<(), Error> {
    let fail = |source| Error::Serve { builtin, source };
    ignore_sigpipe().map_err(fail)?;
    // A second descriptor of the connection, to ask whether the peer has gone.
    let probe = fuse.try_clone().map_err(fail)?;
    let mut config = fuser::Config::default();
    config.acl = fuser::SessionACL::All;
    let result = fuser::Session::from_fd(fs, fuse, fuser::SessionACL::All, config)
        .and_then(|session| session.run());
    match result {
        Ok(()) => {
            tracing::debug!(builtin, "FUSE connection ended");
            Ok(())
        }
        Err(e) if peer_closed(&probe) => {
            tracing::debug!(builtin, error = %e, "the file server closed the connection");
            Ok(())
        }
        Err(e) => Err(fail(e)),
    }
}

/// Whether `fd` is a socket whose peer has closed it (poll reports a hang-up; an empty
/// message from a live peer does not count).
fn peer_closed(fd: &OwnedFd) -> bool {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN | libc::POLLRDHUP,
        revents: 0,
    };
    // SAFETY: `pfd` is one valid pollfd for the duration of the call; a zero timeout
    // makes it return at once.
    let n = unsafe { libc::poll(&mut pfd, 1, 0) };
    n == 1 && pfd.revents & (libc::POLLHUP | libc::POLLRDHUP) != 0
}

/// Replies written after the file server closed the socket must fail with EPIPE rather
/// than kill the translator with SIGPIPE (Rust programs ignore it from the start; a
/// process forked from anything else may not).
fn ignore_sigpipe() -> io::Result<()> {
    // SAFETY: setting a signal's disposition to SIG_IGN installs no handler code.
    let previous = unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
    if previous == libc::SIG_ERR {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
