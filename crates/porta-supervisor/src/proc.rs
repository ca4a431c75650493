//! Processes the supervisor watches but may not be the parent of (after a takeover the
//! keeper and the servers are re-parented to a reaper): pidfds for every wait and every
//! signal, never bare pids, which a reaper may free and the kernel reuse.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::Duration;

use porta_sys::proc::Stat;

/// A pidfd of `pid` (close-on-exec), or None when there is no such process.
pub(crate) fn pidfd_open(pid: i32) -> Option<OwnedFd> {
    porta_sys::pidfd::open(pid).ok()
}

/// Sends `sig` to the process of `fd`; false when it is gone (or not ours to signal).
pub(crate) fn send(fd: BorrowedFd<'_>, sig: i32) -> bool {
    porta_sys::pidfd::send_signal(fd, sig).is_ok()
}

/// Waits up to `ms` milliseconds for the process of `fd` to exit; true if it did.
pub(crate) fn wait_exit(fd: BorrowedFd<'_>, ms: u16) -> bool {
    porta_sys::pidfd::wait_exit(fd, Some(Duration::from_millis(u64::from(ms)))).unwrap_or(false)
}

/// How a process ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Death {
    /// In words: "exited with status N", "killed by SIGKILL".
    pub cause: String,
    /// The signal that killed it, if one did.
    pub signal: Option<i32>,
    /// Its exit status, if it exited.
    pub code: Option<i32>,
}

impl Death {
    /// From a wait status (as waitpid and PIDFD_INFO_EXIT give it).
    pub fn from_wait_status(st: i32) -> Death {
        if libc::WIFSIGNALED(st) {
            Death::signaled(libc::WTERMSIG(st))
        } else {
            Death::exited(libc::WEXITSTATUS(st))
        }
    }

    /// Killed by `sig`.
    pub fn signaled(sig: i32) -> Death {
        let name = nix::sys::signal::Signal::try_from(sig)
            .map(|s| s.to_string())
            .unwrap_or_else(|_| format!("signal {sig}"));
        Death {
            cause: format!("killed by {name}"),
            signal: Some(sig),
            code: None,
        }
    }

    /// Exited with `code`.
    pub fn exited(code: i32) -> Death {
        Death {
            cause: format!("exited with status {code}"),
            signal: None,
            code: Some(code),
        }
    }

    /// Gone, status unknown.
    fn unknown() -> Death {
        Death {
            cause: "exited (status not known)".into(),
            signal: None,
            code: None,
        }
    }

    /// True for a death the process brought on itself: a fault signal (a crash, an
    /// abort, a system call its filter forbids) or an exit with a failure status.
    pub fn own_fault(&self) -> bool {
        match (self.signal, self.code) {
            (Some(s), _) => [
                libc::SIGSEGV,
                libc::SIGBUS,
                libc::SIGABRT,
                libc::SIGSYS,
                libc::SIGILL,
                libc::SIGFPE,
            ]
            .contains(&s),
            (None, Some(c)) => c != 0,
            (None, None) => false,
        }
    }
}

/// How the exited process of `fd` (pid `pid`) ended, for a process that need not be our
/// child: PIDFD_INFO_EXIT (Linux 6.15, once a reaper reaped it), else the exit code
/// /proc shows for a zombie that still holds the pid of our pidfd.
pub(crate) fn death_of(fd: BorrowedFd<'_>, pid: i32) -> Death {
    if let Some(st) = porta_sys::pidfd::exit_status(fd) {
        return Death::from_wait_status(st);
    }
    // Not reaped yet: the pid is still the zombie's (a zombie holds its pid).
    match Stat::of(pid) {
        Some(s) if s.state == 'Z' => s
            .exit_code
            .map_or_else(Death::unknown, Death::from_wait_status),
        _ => Death::unknown(),
    }
}

/// True if `pid` is stopped (job control or ptrace).
pub(crate) fn stopped(pid: i32) -> bool {
    Stat::of(pid).is_some_and(|s| s.is_stopped())
}

/// A pidfd of the process `pid` that started at `start` if it still runs (not a zombie):
/// the check is made after the pidfd is opened, so it cannot be of a later process that
/// reused the pid.
pub(crate) fn open_if_same(pid: i32, start: u64) -> Option<OwnedFd> {
    let fd = pidfd_open(pid)?;
    if porta_sys::proc::start_time(pid) != Some(start) || porta_sys::pidfd::has_exited(fd.as_fd()) {
        return None;
    }
    Some(fd)
}

/// True if the process `pid` started at `start` still runs.
pub fn alive(pid: i32, start: u64) -> bool {
    pid > 0 && start > 0 && open_if_same(pid, start).is_some()
}

/// True if processes `a` and `b` share one descriptor table (kcmp KCMP_FILES).
pub(crate) fn share_files(a: i32, b: i32) -> bool {
    const KCMP_FILES: i32 = 2;
    // SAFETY: plain system call comparing two processes' tables.
    unsafe { libc::syscall(libc::SYS_kcmp, a, b, KCMP_FILES, 0, 0) == 0 }
}

/// Every process (by pid) that shares `keeper`'s descriptor table, the keeper excepted.
pub(crate) fn sharers_of(keeper: i32) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return vec![];
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&p| p != keeper && share_files(keeper, p))
        .collect()
}

/// Borrow of an optional pidfd.
pub(crate) fn borrow(fd: &Option<OwnedFd>) -> Option<BorrowedFd<'_>> {
    fd.as_ref().map(|f| f.as_fd())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_status_of_a_non_child_after_it_is_reaped_and_of_our_zombie() {
        // Our own child: zombie until reaped, then PIDFD_INFO_EXIT.
        let child = std::process::Command::new("sh")
            .args(["-c", "exit 7"])
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        let fd = pidfd_open(pid).unwrap();
        assert!(wait_exit(fd.as_fd(), 10_000));
        assert_eq!(death_of(fd.as_fd(), pid), Death::exited(7));
        let mut child = child;
        child.wait().unwrap();
        assert_eq!(death_of(fd.as_fd(), pid), Death::exited(7));
        assert_eq!(porta_sys::pidfd::pid_of(fd.as_fd()), Some(-1));
    }

    #[test]
    fn faults_are_own_and_sigkill_is_not() {
        assert!(Death::signaled(libc::SIGSEGV).own_fault());
        assert!(Death::signaled(libc::SIGSYS).own_fault());
        assert!(Death::exited(3).own_fault());
        assert!(!Death::signaled(libc::SIGKILL).own_fault());
        assert!(!Death::exited(0).own_fault());
        assert_eq!(Death::signaled(libc::SIGKILL).cause, "killed by SIGKILL");
    }

    #[test]
    fn same_process_checks() {
        let me = std::process::id() as i32;
        let st = porta_sys::proc::start_time(me).unwrap();
        assert!(alive(me, st));
        assert!(!alive(me, st + 1));
        assert!(share_files(me, me));
        assert!(!stopped(me));
    }
}
