//! The system-call layer every Porta crate shares: the wrappers neither `std` nor `nix`
//! offers (or offers in the shape Porta needs), each written once.
//!
//! Modules by concept:
//! * [`pidfd`]: process descriptors (open, signal, wait, exit status);
//! * [`fd`]: descriptor tables (close_range, close-on-exec, non-blocking);
//! * [`mount_api`]: fsopen / fsconfig / fsmount / move_mount / open_tree / mount_setattr
//!   and their constants;
//! * [`scm`]: sending and receiving descriptors over a Unix socket (SCM_RIGHTS) with a
//!   payload;
//! * [`path`]: paths resolved inside a root (openat2 RESOLVE_IN_ROOT);
//! * [`proc`]: parsing `/proc/PID/stat` and `/proc/PID/mountinfo`;
//! * [`rlimit`]: raising RLIMIT_NOFILE;
//! * [`user`]: who the process runs as.
//!
//! System calls return [`std::io::Result`] with the kernel's errno; the parsers return
//! [`Error`]. Every `unsafe` block sits in a small function and says why it is sound.

pub mod fd;
pub mod mount_api;
pub mod path;
pub mod pidfd;
pub mod proc;
pub mod rlimit;
pub mod scm;
pub mod user;

use std::io;

/// What a parser of kernel text found wrong.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// A line of kernel text (`what`: "/proc/PID/stat", "mountinfo") does not have the
    /// expected shape.
    #[error("malformed {what} line {line:?}: {reason}")]
    Malformed {
        /// Which file's format the text was read as.
        what: &'static str,
        /// The offending line (as given).
        line: String,
        /// What is missing or wrong in it.
        reason: &'static str,
    },
}

/// The error of the last system call when `ret` is negative, else `ret`.
pub(crate) fn cvt(ret: libc::c_long) -> io::Result<libc::c_long> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// [`cvt`] for calls that return a C `int`.
pub(crate) fn cvt_int(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Takes ownership of a descriptor a system call has just returned (`ret` >= 0).
pub(crate) fn owned(ret: libc::c_long) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    let fd =
        std::os::fd::RawFd::try_from(ret).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
    if fd < 0 {
        return Err(io::Error::from_raw_os_error(libc::EBADF));
    }
    // SAFETY: `fd` is a descriptor the kernel has just installed for us; nobody else owns it.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}
