//! Thin wrappers around the system calls the runtime needs and neither nix nor std offers.
//! Each wrapper is small and states why its `unsafe` block is sound.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

fn cvt(ret: libc::c_long) -> io::Result<libc::c_long> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Result of a fork-like call.
pub enum Forked {
    /// In the parent: the child's pid.
    Parent(i32),
    /// In the child.
    Child,
}

/// clone3 with the given namespace flags and no other sharing (a fork into new namespaces).
/// The caller must be single-threaded, like for fork().
pub fn clone_into(flags: u64) -> io::Result<Forked> {
    match porta_cgroups::join::clone3(flags, -1)? {
        0 => Ok(Forked::Child),
        pid => Ok(Forked::Parent(pid)),
    }
}

/// setns on an fd (a namespace file or a pidfd) with the given flags.
pub fn setns(fd: BorrowedFd<'_>, nstype: i32) -> io::Result<()> {
    // SAFETY: plain integer arguments.
    cvt(unsafe { libc::setns(fd.as_raw_fd(), nstype) } as libc::c_long)?;
    Ok(())
}

/// unshare(2).
pub fn unshare(flags: i32) -> io::Result<()> {
    // SAFETY: plain integer argument.
    cvt(unsafe { libc::unshare(flags) } as libc::c_long)?;
    Ok(())
}

/// Resolve flags for [`openat2`].
pub const RESOLVE_IN_ROOT: u64 = 0x10;
/// Refuse magic links (/proc/self/fd/…) while resolving.
pub const RESOLVE_NO_MAGICLINKS: u64 = 0x02;

/// openat2 with a `resolve` mask: opens `path` below `dirfd` with symlinks kept inside it.
pub fn openat2(
    dirfd: BorrowedFd<'_>,
    path: &str,
    flags: i32,
    mode: u32,
    resolve: u64,
) -> io::Result<OwnedFd> {
    #[repr(C)]
    struct OpenHow {
        flags: u64,
        mode: u64,
        resolve: u64,
    }
    let c = CString::new(path).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let how = OpenHow {
        flags: (flags | libc::O_CLOEXEC) as u64,
        mode: mode as u64,
        resolve,
    };
    loop {
        // SAFETY: c and how are valid for the duration of the call; the result is a new fd.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                dirfd.as_raw_fd(),
                c.as_ptr(),
                &how as *const OpenHow,
                std::mem::size_of::<OpenHow>(),
            )
        };
        match cvt(ret) {
            // SAFETY: a fresh fd from the kernel.
            Ok(fd) => return Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) }),
            Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => continue,
            Err(e) => return Err(e),
        }
    }
}

/// prctl with up to two integer arguments.
pub fn prctl(option: i32, arg2: libc::c_ulong, arg3: libc::c_ulong) -> io::Result<i32> {
    // SAFETY: the options used by Porta take integer arguments only.
    let r = unsafe { libc::prctl(option, arg2, arg3, 0 as libc::c_ulong, 0 as libc::c_ulong) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// personality(2).
pub fn personality(persona: libc::c_ulong) -> io::Result<()> {
    // SAFETY: integer argument.
    let r = unsafe { libc::personality(persona) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Creates a memfd with the given name and flags.
pub fn memfd_create(name: &str, flags: u32) -> io::Result<OwnedFd> {
    let c = CString::new(name).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: c is a valid C string; the result is a new fd.
    let fd = cvt(unsafe { libc::memfd_create(c.as_ptr(), flags) } as libc::c_long)?;
    // SAFETY: a fresh fd from the kernel.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// fcntl(F_ADD_SEALS).
pub fn add_seals(fd: BorrowedFd<'_>, seals: i32) -> io::Result<()> {
    // SAFETY: integer arguments on an fd we hold.
    cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, seals) } as libc::c_long)?;
    Ok(())
}

/// fcntl(F_GET_SEALS).
pub fn get_seals(fd: BorrowedFd<'_>) -> io::Result<i32> {
    // SAFETY: integer arguments on an fd we hold.
    Ok(cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GET_SEALS) } as libc::c_long)? as i32)
}

/// execveat(fd, "", argv, envp, AT_EMPTY_PATH): runs the program behind `fd`. Returns only on error.
pub fn fexecve(fd: BorrowedFd<'_>, argv: &[CString], envp: &[CString]) -> io::Error {
    let mut a: Vec<*const libc::c_char> = argv.iter().map(|s| s.as_ptr()).collect();
    a.push(std::ptr::null());
    let mut e: Vec<*const libc::c_char> = envp.iter().map(|s| s.as_ptr()).collect();
    e.push(std::ptr::null());
    let empty = c"";
    // SAFETY: argv/envp are NUL-terminated arrays of valid C strings that outlive the call.
    unsafe {
        libc::syscall(
            libc::SYS_execveat,
            fd.as_raw_fd(),
            empty.as_ptr(),
            a.as_ptr(),
            e.as_ptr(),
            libc::AT_EMPTY_PATH,
        );
    }
    io::Error::last_os_error()
}

/// Sets the controlling terminal of the calling process (which must be a session leader).
pub fn set_controlling_tty(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: TIOCSCTTY takes an integer argument.
    cvt(unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSCTTY, 0) } as libc::c_long)?;
    Ok(())
}

/// Sets a terminal's window size.
pub fn set_winsize(fd: BorrowedFd<'_>, rows: u16, cols: u16) -> io::Result<()> {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: ws is a valid winsize for the duration of the call.
    cvt(unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, &ws) } as libc::c_long)?;
    Ok(())
}

/// Opens the slave side of the pty behind master `fd` (TIOCGPTPEER), without any path lookup.
pub fn pty_peer(fd: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    // SAFETY: TIOCGPTPEER returns a new fd for the peer.
    let r = cvt(unsafe {
        libc::ioctl(
            fd.as_raw_fd(),
            libc::TIOCGPTPEER,
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        )
    } as libc::c_long)?;
    // SAFETY: a fresh fd from the kernel.
    Ok(unsafe { OwnedFd::from_raw_fd(r as RawFd) })
}

/// Unlocks a pty master (unlockpt).
pub fn unlock_pty(fd: BorrowedFd<'_>) -> io::Result<()> {
    let mut zero: libc::c_int = 0;
    // SAFETY: TIOCSPTLCK reads one int.
    cvt(unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSPTLCK, &mut zero) } as libc::c_long)?;
    Ok(())
}

/// Exits the process immediately, without running destructors (for forked children).
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit never returns and is async-signal-safe.
    unsafe { libc::_exit(code) }
}

/// fstatfs and fstatvfs: (f_type, f_flag) of the file system holding `fd`.
pub fn fstatfs(fd: BorrowedFd<'_>) -> io::Result<(i64, i64)> {
    // SAFETY: statfs and statvfs are plain old data; zeroed is a valid value.
    let (mut st, mut vst): (libc::statfs, libc::statvfs) =
        unsafe { (std::mem::zeroed(), std::mem::zeroed()) };
    // SAFETY: st and vst are valid out-pointers for the duration of the calls.
    cvt(unsafe { libc::fstatfs(fd.as_raw_fd(), &mut st) } as libc::c_long)?;
    // SAFETY: as above.
    cvt(unsafe { libc::fstatvfs(fd.as_raw_fd(), &mut vst) } as libc::c_long)?;
    #[allow(clippy::unnecessary_cast)] // f_type is not i64 on every target
    Ok((st.f_type as i64, vst.f_flag as i64))
}

/// The mount id of the mount holding `fd` (statx STATX_MNT_ID).
pub fn mount_id(fd: BorrowedFd<'_>) -> io::Result<u64> {
    // SAFETY: statx is plain old data; zeroed is a valid value.
    let mut st: libc::statx = unsafe { std::mem::zeroed() };
    let empty = c"";
    // SAFETY: empty is a valid NUL-terminated path, st a valid out-pointer.
    cvt(unsafe {
        libc::statx(
            fd.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_EMPTY_PATH,
            libc::STATX_MNT_ID,
            &mut st,
        )
    } as libc::c_long)?;
    if st.stx_mask & libc::STATX_MNT_ID == 0 {
        return Err(io::Error::from_raw_os_error(libc::ENOSYS));
    }
    Ok(st.stx_mnt_id)
}

/// `ioctl(NS_GET_PARENT)`: the parent of a pid (or user) namespace.
fn ns_parent(ns: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    // NS_GET_PARENT = _IO(0xb7, 0x2)
    const NS_GET_PARENT: libc::c_ulong = 0xb702;
    // SAFETY: the ioctl takes no argument and returns a new descriptor (or -1).
    let fd = unsafe { libc::ioctl(ns.as_raw_fd(), NS_GET_PARENT as _) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just installed this descriptor for us; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Whether namespace `ns` is the one with nsfs identity `(dev, ino)` or nested in it
/// (walked up with NS_GET_PARENT, at most 33 levels: the kernel's limit is 32).
pub fn ns_descends_from(ns: OwnedFd, dev: u64, ino: u64) -> bool {
    let mut cur = ns;
    for _ in 0..33 {
        match nix::sys::stat::fstat(cur.as_raw_fd()) {
            Ok(st) if st.st_dev == dev && st.st_ino == ino => return true,
            Ok(_) => {}
            Err(_) => return false,
        }
        match ns_parent(std::os::fd::AsFd::as_fd(&cur)) {
            Ok(p) => cur = p,
            Err(_) => return false,
        }
    }
    false
}
