//! Process descriptors: a handle on one process that, unlike a pid, can never come to
//! name another process after the first one is reaped.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::time::Duration;

use crate::{cvt, owned};

/// `pidfd_open(2)`: a close-on-exec pidfd of `pid`. A pid of 0 or less is refused with
/// EINVAL (the kernel would, too).
pub fn open(pid: i32) -> io::Result<OwnedFd> {
    if pid <= 0 {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    // SAFETY: pidfd_open takes two integers; flags 0 give a close-on-exec descriptor.
    let ret = cvt(unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) })?;
    owned(ret)
}

/// `pidfd_getfd(2)`: a close-on-exec duplicate of descriptor `fd` of the process of
/// `pidfd` (needs the right to ptrace it).
pub fn getfd(pidfd: BorrowedFd<'_>, fd: i32) -> io::Result<OwnedFd> {
    // SAFETY: integer arguments; a new descriptor on success.
    let ret = cvt(unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0) })?;
    owned(ret)
}

/// `pidfd_send_signal(2)`: sends `sig` to the process of `fd` (no siginfo, no flags).
/// ESRCH once it has exited.
pub fn send_signal(fd: BorrowedFd<'_>, sig: i32) -> io::Result<()> {
    // SAFETY: integer arguments and a null siginfo, which the call allows.
    cvt(unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            fd.as_raw_fd(),
            sig,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    })?;
    Ok(())
}

/// Waits until the process of `fd` has exited (a zombie counts as exited), at most
/// `timeout` (`None`: without limit). True if it has; interrupted waits are resumed.
pub fn wait_exit(fd: BorrowedFd<'_>, timeout: Option<Duration>) -> io::Result<bool> {
    let ms = timeout.map_or(-1, |t| i32::try_from(t.as_millis()).unwrap_or(i32::MAX));
    let mut p = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    loop {
        // SAFETY: `p` is one valid pollfd for the duration of the call.
        match crate::cvt_int(unsafe { libc::poll(&mut p, 1, ms) }) {
            Ok(n) => return Ok(n > 0),
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
            Err(e) => return Err(e),
        }
    }
}

/// True if the process of `fd` has exited (without waiting); false also when that cannot
/// be told.
pub fn has_exited(fd: BorrowedFd<'_>) -> bool {
    wait_exit(fd, Some(Duration::ZERO)).unwrap_or(false)
}

/// `struct pidfd_info` of linux/pidfd.h, its first version (64 bytes).
#[repr(C)]
#[derive(Default)]
struct PidfdInfo {
    mask: u64,
    cgroupid: u64,
    pid: u32,
    tgid: u32,
    ppid: u32,
    ruid: u32,
    rgid: u32,
    euid: u32,
    egid: u32,
    suid: u32,
    sgid: u32,
    fsuid: u32,
    fsgid: u32,
    exit_code: i32,
}

/// `PIDFD_INFO_EXIT`: ask for the exit status.
const PIDFD_INFO_EXIT: u64 = 1 << 3;
/// `PIDFD_GET_INFO`: _IOWR(PIDFS_IOCTL_MAGIC 0xFF, 11, struct pidfd_info).
const PIDFD_GET_INFO: u64 =
    (3 << 30) | ((std::mem::size_of::<PidfdInfo>() as u64) << 16) | (0xFF << 8) | 11;

/// The wait status of the exited process of `fd` once it has been reaped, by whoever
/// reaped it (PIDFD_GET_INFO with PIDFD_INFO_EXIT, Linux 6.15). `None` while it runs or
/// is a zombie, and on older kernels.
pub fn exit_status(fd: BorrowedFd<'_>) -> Option<i32> {
    let mut info = PidfdInfo {
        mask: PIDFD_INFO_EXIT,
        ..Default::default()
    };
    // SAFETY: the ioctl fills a buffer of the size its number encodes, `info`.
    let r = unsafe {
        libc::ioctl(
            fd.as_raw_fd(),
            PIDFD_GET_INFO as _,
            &mut info as *mut PidfdInfo,
        )
    };
    (r == 0 && info.mask & PIDFD_INFO_EXIT != 0).then_some(info.exit_code)
}

/// The pid a pidfd of this process refers to, from its fdinfo ("Pid:"; -1 once the
/// process is reaped).
pub fn pid_of(fd: BorrowedFd<'_>) -> Option<i32> {
    let s = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd())).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("Pid:"))
        .and_then(|v| v.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn a_child_is_waited_signalled_and_its_status_read_after_reaping() {
        let mut child = std::process::Command::new("sleep")
            .arg("1000")
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        let fd = open(pid).unwrap();
        assert_eq!(pid_of(fd.as_fd()), Some(pid));
        assert!(!has_exited(fd.as_fd()));
        assert_eq!(exit_status(fd.as_fd()), None);
        send_signal(fd.as_fd(), libc::SIGKILL).unwrap();
        assert!(wait_exit(fd.as_fd(), None).unwrap());
        assert!(has_exited(fd.as_fd()));
        child.wait().unwrap();
        assert_eq!(pid_of(fd.as_fd()), Some(-1));
        // Only kernels with PIDFD_INFO_EXIT (6.15) answer; those must give SIGKILL.
        if let Some(st) = exit_status(fd.as_fd()) {
            assert!(libc::WIFSIGNALED(st) && libc::WTERMSIG(st) == libc::SIGKILL);
        }
        assert_eq!(
            send_signal(fd.as_fd(), 0).map_err(|e| e.raw_os_error()),
            Err(Some(libc::ESRCH))
        );
    }

    #[test]
    fn bad_pids_are_refused() {
        assert_eq!(open(0).unwrap_err().raw_os_error(), Some(libc::EINVAL));
        assert_eq!(open(-5).unwrap_err().raw_os_error(), Some(libc::EINVAL));
    }
}
