//! Descriptor tables: closing ranges, close-on-exec, non-blocking mode.

use std::io;
use std::os::fd::RawFd;

use crate::{cvt, cvt_int};

/// `close_range(2)` of the descriptors `first..=last`; `cloexec_only` marks them
/// close-on-exec (CLOSE_RANGE_CLOEXEC) instead of closing them.
///
/// Closing descriptors that other code of the process still owns breaks that code (its
/// `OwnedFd` would close a number that may be reused): callers use it in a freshly forked
/// child or on ranges they know hold nothing they use.
pub fn close_range(first: u32, last: u32, cloexec_only: bool) -> io::Result<()> {
    let flags = if cloexec_only {
        libc::CLOSE_RANGE_CLOEXEC
    } else {
        0
    };
    // SAFETY: close_range takes integers and only changes this process's descriptor
    // table; which descriptors may go is the caller's contract, stated above.
    cvt(unsafe { libc::syscall(libc::SYS_close_range, first, last, flags) })?;
    Ok(())
}

/// Closes (or marks close-on-exec, with `cloexec_only`) every descriptor from `first` up.
pub fn close_from(first: u32, cloexec_only: bool) -> io::Result<()> {
    close_range(first, u32::MAX, cloexec_only)
}

/// Closes every descriptor above stderr except those in `keep` (in any order; numbers
/// 0 to 2 in it are ignored, stdio always stays). For a freshly forked process: it does
/// not allocate, so it is safe between fork and exec.
pub fn close_all_but(keep: &[RawFd]) -> io::Result<()> {
    let mut from: u32 = 3;
    loop {
        // The smallest kept descriptor not below `from`.
        let next = keep
            .iter()
            .filter_map(|&fd| u32::try_from(fd).ok())
            .filter(|&fd| fd >= from)
            .min();
        match next {
            Some(fd) => {
                if fd > from {
                    close_range(from, fd - 1, false)?;
                }
                match fd.checked_add(1) {
                    Some(n) => from = n,
                    None => return Ok(()),
                }
            }
            None => return close_from(from, false),
        }
    }
}

/// Sets or clears FD_CLOEXEC on `fd`.
pub fn set_cloexec(fd: RawFd, on: bool) -> io::Result<()> {
    // SAFETY: fcntl with integer arguments on a descriptor number; no memory is passed.
    let flags = cvt_int(unsafe { libc::fcntl(fd, libc::F_GETFD) })?;
    let new = if on {
        flags | libc::FD_CLOEXEC
    } else {
        flags & !libc::FD_CLOEXEC
    };
    // SAFETY: as above.
    cvt_int(unsafe { libc::fcntl(fd, libc::F_SETFD, new) })?;
    Ok(())
}

/// Sets O_NONBLOCK on the open file description of `fd`.
pub fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl with integer arguments on a descriptor number; no memory is passed.
    let fl = cvt_int(unsafe { libc::fcntl(fd, libc::F_GETFL) })?;
    // SAFETY: as above.
    cvt_int(unsafe { libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK) })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    fn is_open(fd: RawFd) -> bool {
        // SAFETY: F_GETFD only queries the descriptor number.
        unsafe { libc::fcntl(fd, libc::F_GETFD) >= 0 }
    }

    fn cloexec(fd: RawFd) -> bool {
        // SAFETY: as above.
        unsafe { libc::fcntl(fd, libc::F_GETFD) & libc::FD_CLOEXEC != 0 }
    }

    #[test]
    fn cloexec_and_nonblocking_are_set() {
        let f = std::fs::File::open("/dev/null").unwrap();
        set_cloexec(f.as_raw_fd(), false).unwrap();
        assert!(!cloexec(f.as_raw_fd()));
        set_cloexec(f.as_raw_fd(), true).unwrap();
        assert!(cloexec(f.as_raw_fd()));
        set_nonblocking(f.as_raw_fd()).unwrap();
        // SAFETY: F_GETFL only queries the descriptor.
        let fl = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_GETFL) };
        assert!(fl & libc::O_NONBLOCK != 0);
        assert!(set_cloexec(-1, true).is_err());
    }

    #[test]
    fn a_range_is_marked_then_closed() {
        let f = std::fs::File::open("/dev/null").unwrap();
        let fd = f.as_raw_fd() as u32;
        set_cloexec(f.as_raw_fd(), false).unwrap();
        close_range(fd, fd, true).unwrap();
        assert!(cloexec(f.as_raw_fd()));
        let raw = std::os::fd::IntoRawFd::into_raw_fd(f);
        close_range(fd, fd, false).unwrap();
        assert!(!is_open(raw));
    }

    #[test]
    fn close_all_but_keeps_stdio_and_the_kept_in_a_child() {
        let a = std::fs::File::open("/dev/null").unwrap();
        let b = std::fs::File::open("/dev/null").unwrap();
        let (a, b) = (a.as_raw_fd(), b.as_raw_fd());
        // SAFETY: the child only makes async-signal-safe calls and leaves with _exit.
        match unsafe { libc::fork() } {
            0 => {
                let ok = close_all_but(&[b, 1, b]).is_ok()
                    && is_open(0)
                    && is_open(2)
                    && is_open(b)
                    && !is_open(a);
                // SAFETY: ends the forked child without running the parent's destructors.
                unsafe { libc::_exit(if ok { 0 } else { 1 }) }
            }
            pid => {
                assert!(pid > 0);
                let mut st = 0;
                // SAFETY: waits for our own child; `st` is a valid out-pointer.
                assert_eq!(unsafe { libc::waitpid(pid, &mut st, 0) }, pid);
                assert!(libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 0);
            }
        }
    }
}
