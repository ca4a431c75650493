//! Thin wrappers around the system calls the file server makes. Each returns the
//! `errno` on failure, so a handler can answer the kernel with it unchanged.

use std::ffi::CStr;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

/// An errno value.
pub type Errno = i32;
/// Result of a system call.
pub type SysResult<T> = Result<T, Errno>;

fn errno() -> Errno {
    std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

/// The errno of an error from [`porta_sys`] (EIO when it carries none).
fn os_errno(e: std::io::Error) -> Errno {
    e.raw_os_error().unwrap_or(libc::EIO)
}

fn check(ret: libc::c_int) -> SysResult<libc::c_int> {
    if ret < 0 {
        Err(errno())
    } else {
        Ok(ret)
    }
}

fn check_ssize(ret: isize) -> SysResult<usize> {
    if ret < 0 {
        Err(errno())
    } else {
        Ok(ret as usize)
    }
}

const EMPTY: &CStr = c"";

/// `openat(2)`; the returned descriptor is always O_CLOEXEC.
pub fn openat(dir: RawFd, name: &CStr, flags: i32, mode: u32) -> SysResult<OwnedFd> {
    // SAFETY: `name` is a valid NUL-terminated string; the kernel validates `dir`.
    let fd = check(unsafe { libc::openat(dir, name.as_ptr(), flags | libc::O_CLOEXEC, mode) })?;
    // SAFETY: `fd` was just returned by the kernel and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `fstatat(2)` with AT_SYMLINK_NOFOLLOW (`name` empty: the descriptor itself).
pub fn statat(dir: RawFd, name: &CStr) -> SysResult<libc::stat> {
    let flags = if name.is_empty() {
        libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW
    } else {
        libc::AT_SYMLINK_NOFOLLOW
    };
    // SAFETY: all-zero is a valid `struct stat`.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is a valid out-pointer, `name` a valid string.
    check(unsafe { libc::fstatat(dir, name.as_ptr(), &mut st, flags) })?;
    Ok(st)
}

/// `fstat` of a descriptor (O_PATH descriptors included).
pub fn fstat(fd: RawFd) -> SysResult<libc::stat> {
    statat(fd, EMPTY)
}

/// Whether `fd` is an open pipe.
pub fn is_fifo(fd: RawFd) -> bool {
    fstat(fd).is_ok_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFIFO)
}

/// `mkdirat(2)`.
pub fn mkdirat(dir: RawFd, name: &CStr, mode: u32) -> SysResult<()> {
    // SAFETY: valid string; plain system call.
    check(unsafe { libc::mkdirat(dir, name.as_ptr(), mode) }).map(|_| ())
}

/// `mknodat(2)`.
pub fn mknodat(dir: RawFd, name: &CStr, mode: u32, rdev: u64) -> SysResult<()> {
    // SAFETY: valid string; plain system call.
    check(unsafe { libc::mknodat(dir, name.as_ptr(), mode, rdev) }).map(|_| ())
}

/// `symlinkat(2)`.
pub fn symlinkat(target: &CStr, dir: RawFd, name: &CStr) -> SysResult<()> {
    // SAFETY: valid strings; plain system call.
    check(unsafe { libc::symlinkat(target.as_ptr(), dir, name.as_ptr()) }).map(|_| ())
}

/// `unlinkat(2)`.
pub fn unlinkat(dir: RawFd, name: &CStr, flags: i32) -> SysResult<()> {
    // SAFETY: valid string; plain system call.
    check(unsafe { libc::unlinkat(dir, name.as_ptr(), flags) }).map(|_| ())
}

/// `renameat2(2)`.
pub fn renameat2(od: RawFd, on: &CStr, nd: RawFd, nn: &CStr, flags: u32) -> SysResult<()> {
    // SAFETY: valid strings; plain system call.
    check(unsafe { libc::renameat2(od, on.as_ptr(), nd, nn.as_ptr(), flags) }).map(|_| ())
}

/// `linkat(2)`.
pub fn linkat(od: RawFd, on: &CStr, nd: RawFd, nn: &CStr, flags: i32) -> SysResult<()> {
    // SAFETY: valid strings; plain system call.
    check(unsafe { libc::linkat(od, on.as_ptr(), nd, nn.as_ptr(), flags) }).map(|_| ())
}

/// `readlinkat(2)` of an O_PATH descriptor of a symlink, into `buf`.
pub fn readlink_fd(fd: RawFd, buf: &mut [u8]) -> SysResult<usize> {
    // SAFETY: `buf` is valid for `buf.len()` bytes.
    check_ssize(unsafe { libc::readlinkat(fd, EMPTY.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) })
}

/// `fchownat(2)` without following symlinks (`name` empty: the descriptor itself).
pub fn chownat(dir: RawFd, name: &CStr, uid: u32, gid: u32) -> SysResult<()> {
    let mut flags = libc::AT_SYMLINK_NOFOLLOW;
    if name.is_empty() {
        flags |= libc::AT_EMPTY_PATH;
    }
    // SAFETY: valid string; plain system call.
    check(unsafe { libc::fchownat(dir, name.as_ptr(), uid, gid, flags) }).map(|_| ())
}

/// `fchmodat(2)` (follows the final link: used with /proc/self/fd names).
pub fn chmodat(dir: RawFd, name: &CStr, mode: u32) -> SysResult<()> {
    // SAFETY: valid string; plain system call.
    check(unsafe { libc::fchmodat(dir, name.as_ptr(), mode, 0) }).map(|_| ())
}

/// `utimensat(2)` on a descriptor itself (AT_EMPTY_PATH, works on O_PATH).
pub fn utimens_fd(fd: RawFd, times: &[libc::timespec; 2]) -> SysResult<()> {
    // SAFETY: `times` points to two timespecs; empty path with AT_EMPTY_PATH.
    check(unsafe { libc::utimensat(fd, EMPTY.as_ptr(), times.as_ptr(), libc::AT_EMPTY_PATH) })
        .map(|_| ())
}

/// `ftruncate(2)`.
pub fn ftruncate(fd: RawFd, size: u64) -> SysResult<()> {
    // SAFETY: plain system call.
    check(unsafe { libc::ftruncate(fd, size as i64) }).map(|_| ())
}

/// `pread(2)`.
pub fn pread(fd: RawFd, buf: &mut [u8], off: u64) -> SysResult<usize> {
    // SAFETY: `buf` is valid for writes of `buf.len()` bytes.
    check_ssize(unsafe { libc::pread(fd, buf.as_mut_ptr().cast(), buf.len(), off as i64) })
}

/// `pwrite(2)`.
pub fn pwrite(fd: RawFd, buf: &[u8], off: u64) -> SysResult<usize> {
    // SAFETY: `buf` is valid for reads of `buf.len()` bytes.
    check_ssize(unsafe { libc::pwrite(fd, buf.as_ptr().cast(), buf.len(), off as i64) })
}

/// `read(2)`.
pub fn read(fd: RawFd, buf: &mut [u8]) -> SysResult<usize> {
    // SAFETY: `buf` is valid for writes of `buf.len()` bytes.
    check_ssize(unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) })
}

/// `write(2)`.
pub fn write(fd: RawFd, buf: &[u8]) -> SysResult<usize> {
    // SAFETY: `buf` is valid for reads of `buf.len()` bytes.
    check_ssize(unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) })
}

/// `fsync(2)` or `fdatasync(2)`.
pub fn fsync(fd: RawFd, datasync: bool) -> SysResult<()> {
    // SAFETY: plain system calls.
    let r = unsafe {
        if datasync {
            libc::fdatasync(fd)
        } else {
            libc::fsync(fd)
        }
    };
    check(r).map(|_| ())
}

/// `syncfs(2)`.
pub fn syncfs(fd: RawFd) -> SysResult<()> {
    // SAFETY: plain system call.
    check(unsafe { libc::syncfs(fd) }).map(|_| ())
}

/// `fallocate(2)`.
pub fn fallocate(fd: RawFd, mode: i32, off: u64, len: u64) -> SysResult<()> {
    // SAFETY: plain system call.
    check(unsafe { libc::fallocate(fd, mode, off as i64, len as i64) }).map(|_| ())
}

/// `lseek(2)`.
pub fn lseek(fd: RawFd, off: i64, whence: i32) -> SysResult<i64> {
    // SAFETY: plain system call.
    let r = unsafe { libc::lseek(fd, off, whence) };
    if r < 0 {
        Err(errno())
    } else {
        Ok(r)
    }
}

/// `copy_file_range(2)`.
pub fn copy_file_range(
    fi: RawFd,
    oi: u64,
    fo: RawFd,
    oo: u64,
    len: usize,
    flags: u32,
) -> SysResult<usize> {
    let mut oi = oi as i64;
    let mut oo = oo as i64;
    // SAFETY: the offsets are valid in/out pointers.
    check_ssize(unsafe { libc::copy_file_range(fi, &mut oi, fo, &mut oo, len, flags) })
}

/// `fstatvfs(3)`.
pub fn fstatvfs(fd: RawFd) -> SysResult<libc::statvfs> {
    // SAFETY: all-zero is a valid statvfs.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is a valid out-pointer.
    check(unsafe { libc::fstatvfs(fd, &mut st) })?;
    Ok(st)
}

/// `getdents64(2)` into `buf`.
pub fn getdents64(fd: RawFd, buf: &mut [u8]) -> SysResult<usize> {
    // SAFETY: `buf` is valid for writes of `buf.len()` bytes.
    let r = unsafe { libc::syscall(libc::SYS_getdents64, fd, buf.as_mut_ptr(), buf.len()) };
    check_ssize(r as isize)
}

/// `getxattr(2)` (follows: used with /proc/self/fd names); empty `buf` asks for the size.
pub fn getxattr(path: &CStr, name: &CStr, buf: &mut [u8]) -> SysResult<usize> {
    // SAFETY: valid strings; `buf` valid for `buf.len()` bytes (null when empty).
    check_ssize(unsafe {
        libc::getxattr(
            path.as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    })
}

/// `setxattr(2)`.
pub fn setxattr(path: &CStr, name: &CStr, val: &[u8], flags: i32) -> SysResult<()> {
    // SAFETY: valid strings and value buffer.
    check(unsafe {
        libc::setxattr(
            path.as_ptr(),
            name.as_ptr(),
            val.as_ptr().cast(),
            val.len(),
            flags,
        )
    })
    .map(|_| ())
}

/// `listxattr(2)`; empty `buf` asks for the size.
pub fn listxattr(path: &CStr, buf: &mut [u8]) -> SysResult<usize> {
    // SAFETY: valid string; `buf` valid for `buf.len()` bytes.
    check_ssize(unsafe { libc::listxattr(path.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) })
}

/// `removexattr(2)`.
pub fn removexattr(path: &CStr, name: &CStr) -> SysResult<()> {
    // SAFETY: valid strings.
    check(unsafe { libc::removexattr(path.as_ptr(), name.as_ptr()) }).map(|_| ())
}

/// `close(2)` of a raw descriptor the caller owns.
pub fn close(fd: RawFd) {
    // SAFETY: the caller owns `fd` and drops every use of it.
    unsafe { libc::close(fd) };
}

/// Registers `fd` as a passthrough backing file on the FUSE connection; returns its id.
///
/// The kernel writes through a backing file with the credentials of the thread that
/// registered it, so the calling thread leaves CAP_FSETID out of its effective set for
/// the call: a write through the backing file then clears set-user-id and set-group-id
/// bits as an unprivileged writer's would (the server asks the kernel to leave those to
/// it, [`crate::abi::init::HANDLE_KILLPRIV_V2`], and passthrough writes never reach it).
pub fn backing_open(fuse: RawFd, fd: RawFd) -> SysResult<i32> {
    use caps::{CapSet, Capability};
    let fsetid = caps::has_cap(None, CapSet::Effective, Capability::CAP_FSETID).unwrap_or(false)
        && caps::drop(None, CapSet::Effective, Capability::CAP_FSETID).is_ok();
    let map: [u32; 4] = [fd as u32, 0, 0, 0];
    // SAFETY: `map` has the layout of `struct fuse_backing_map` (16 bytes).
    let r = unsafe { libc::ioctl(fuse, crate::abi::DEV_IOC_BACKING_OPEN as _, map.as_ptr()) };
    if fsetid {
        if let Err(e) = caps::raise(None, CapSet::Effective, Capability::CAP_FSETID) {
            tracing::warn!(error = %e, "CAP_FSETID not raised again after a backing registration");
        }
    }
    check(r)
}

/// Drops a passthrough backing id.
pub fn backing_close(fuse: RawFd, id: i32) -> SysResult<()> {
    let id = id as u32;
    // SAFETY: the argument is a pointer to a u32 backing id.
    check(unsafe { libc::ioctl(fuse, crate::abi::DEV_IOC_BACKING_CLOSE as _, &id) }).map(|_| ())
}

/// `gettid(2)`.
pub fn gettid() -> i32 {
    // SAFETY: always succeeds.
    unsafe { libc::gettid() }
}

/// Makes the process's descriptor table hold at least `size` descriptors now, using a
/// duplicate of `fd` (closed again) to make the kernel grow it. Growing a table that other
/// processes share (CLONE_FILES) waits for an RCU grace period, tens of milliseconds on a
/// virtual machine, at every doubling; growing it once before it is shared costs none.
pub fn grow_fd_table(fd: RawFd, size: usize) -> SysResult<()> {
    let Ok(last) = i32::try_from(size.saturating_sub(1)) else {
        return Err(libc::EINVAL);
    };
    // SAFETY: F_DUPFD_CLOEXEC duplicates `fd` to the lowest free number >= `last`; the
    // new descriptor is ours alone and closed right away.
    let d = check(unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, last) })?;
    close(d);
    Ok(())
}

/// The size of the descriptor table of process `pid` (`None`: the calling process), as
/// `FDSize` in its /proc status.
pub fn fd_table_size(pid: Option<i32>) -> Option<usize> {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/status"),
        None => "/proc/self/status".to_string(),
    };
    let s = std::fs::read_to_string(path).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("FDSize:"))
        .and_then(|v| v.trim().parse().ok())
}

/// `struct xattr_args` of the *xattrat system calls (Linux 6.13).
#[repr(C)]
struct XattrArgs {
    value: u64,
    size: u32,
    flags: u32,
}

const SYS_SETXATTRAT: libc::c_long = 463;
const SYS_GETXATTRAT: libc::c_long = 464;
const SYS_LISTXATTRAT: libc::c_long = 465;
const SYS_REMOVEXATTRAT: libc::c_long = 466;

/// `getxattrat(2)` (Linux 6.13), following the final link: `dir` + `name` is a
/// /proc/self/fd entry. Empty `buf` asks for the size.
pub fn getxattrat(dir: RawFd, name: &CStr, attr: &CStr, buf: &mut [u8]) -> SysResult<usize> {
    let mut a = XattrArgs {
        value: buf.as_mut_ptr() as u64,
        size: buf.len() as u32,
        flags: 0,
    };
    // SAFETY: valid strings; `a` points to `buf`, valid for `buf.len()` bytes.
    let r = unsafe {
        libc::syscall(
            SYS_GETXATTRAT,
            dir,
            name.as_ptr(),
            0u32,
            attr.as_ptr(),
            &mut a as *mut XattrArgs,
            std::mem::size_of::<XattrArgs>(),
        )
    };
    check_ssize(r as isize)
}

/// `setxattrat(2)` (Linux 6.13), following the final link.
pub fn setxattrat(dir: RawFd, name: &CStr, attr: &CStr, val: &[u8], flags: i32) -> SysResult<()> {
    let mut a = XattrArgs {
        value: val.as_ptr() as u64,
        size: val.len() as u32,
        flags: flags as u32,
    };
    // SAFETY: valid strings; `a` points to `val`, valid for `val.len()` bytes.
    let r = unsafe {
        libc::syscall(
            SYS_SETXATTRAT,
            dir,
            name.as_ptr(),
            0u32,
            attr.as_ptr(),
            &mut a as *mut XattrArgs,
            std::mem::size_of::<XattrArgs>(),
        )
    };
    check_ssize(r as isize).map(|_| ())
}

/// `listxattrat(2)` (Linux 6.13), following the final link; empty `buf` asks for the size.
pub fn listxattrat(dir: RawFd, name: &CStr, buf: &mut [u8]) -> SysResult<usize> {
    // SAFETY: valid string; `buf` valid for `buf.len()` bytes.
    let r = unsafe {
        libc::syscall(
            SYS_LISTXATTRAT,
            dir,
            name.as_ptr(),
            0u32,
            buf.as_mut_ptr(),
            buf.len(),
        )
    };
    check_ssize(r as isize)
}

/// `removexattrat(2)` (Linux 6.13), following the final link.
pub fn removexattrat(dir: RawFd, name: &CStr, attr: &CStr) -> SysResult<()> {
    // SAFETY: valid strings.
    let r = unsafe { libc::syscall(SYS_REMOVEXATTRAT, dir, name.as_ptr(), 0u32, attr.as_ptr()) };
    check_ssize(r as isize).map(|_| ())
}

/// The x86_64 numbers of the *xattrat system calls, for the seccomp allowlist.
pub const XATTRAT_SYSCALLS: [libc::c_long; 4] = [
    SYS_SETXATTRAT,
    SYS_GETXATTRAT,
    SYS_LISTXATTRAT,
    SYS_REMOVEXATTRAT,
];

/// Blocks until `fd` is readable (or has an error or hang-up to report).
pub fn wait_readable(fd: RawFd) -> SysResult<()> {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: `p` is one valid `pollfd` for the duration of the call.
    check(unsafe { libc::poll(&mut p, 1, -1) }).map(|_| ())
}

/// Sets SECBIT_NO_SETUID_FIXUP for the calling process (inherited by the processes it
/// clones): changing the file-system uid then keeps the effective capabilities, so a
/// server thread can create files as the caller (see `server::enable_create_as_caller`).
pub fn keep_caps_on_fsuid_change() -> SysResult<()> {
    const SECBIT_NO_SETUID_FIXUP: libc::c_ulong = 1 << 2;
    // SAFETY: plain prctl calls with integer arguments.
    let bits = check(unsafe { libc::prctl(libc::PR_GET_SECUREBITS, 0, 0, 0, 0) })?;
    // SAFETY: as above.
    check(unsafe {
        libc::prctl(
            libc::PR_SET_SECUREBITS,
            bits as libc::c_ulong | SECBIT_NO_SETUID_FIXUP,
            0,
            0,
            0,
        )
    })
    .map(|_| ())
}

/// setfsuid(2) of the calling thread; returns the previous file-system uid.
pub fn setfsuid(uid: u32) -> u32 {
    // SAFETY: plain system call; it only changes this thread's credentials.
    unsafe { libc::syscall(libc::SYS_setfsuid, uid) as u32 }
}

/// setfsgid(2) of the calling thread; returns the previous file-system gid.
pub fn setfsgid(gid: u32) -> u32 {
    // SAFETY: plain system call; it only changes this thread's credentials.
    unsafe { libc::syscall(libc::SYS_setfsgid, gid) as u32 }
}

/// Most descriptors [`recv_with_fds`] accepts in one message; more are closed.
pub const MAX_RECV_FDS: usize = 4;

/// `sendmsg(2)` of `buf` on a connected socket, with `fd` attached (SCM_RIGHTS) when
/// given. MSG_NOSIGNAL is always added.
pub fn send_with_fd(sock: RawFd, buf: &[u8], fd: Option<RawFd>, flags: i32) -> SysResult<usize> {
    let fds = fd.as_slice();
    porta_sys::scm::send(sock, buf, fds, flags | libc::MSG_NOSIGNAL).map_err(os_errno)
}

/// What [`recv_with_fds`] received: the byte count, the `msg_flags` (MSG_TRUNC,
/// MSG_CTRUNC) and the descriptors that came with it (close-on-exec, owned).
#[derive(Debug)]
pub struct Received {
    /// Bytes received (of the message, up to the buffer's length).
    pub len: usize,
    /// `msg_flags` of the received message.
    pub flags: i32,
    /// The descriptors attached, in order; at most [`MAX_RECV_FDS`].
    pub fds: [Option<OwnedFd>; MAX_RECV_FDS],
}

impl Received {
    /// Number of descriptors received.
    pub fn nfds(&self) -> usize {
        self.fds.iter().filter(|f| f.is_some()).count()
    }
}

/// `recvmsg(2)` of one message into `buf` with MSG_CMSG_CLOEXEC; every descriptor
/// attached is returned owned (so dropped ones are closed). Descriptors that do not fit
/// the control buffer are closed by the kernel (MSG_CTRUNC is then set).
pub fn recv_with_fds(sock: RawFd, buf: &mut [u8], flags: i32) -> SysResult<Received> {
    let mut fds: [Option<OwnedFd>; MAX_RECV_FDS] = Default::default();
    let r = porta_sys::scm::recv(sock, buf, flags, &mut fds).map_err(os_errno)?;
    Ok(Received {
        len: r.len,
        flags: r.flags,
        fds,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_descriptor_table_grows_at_once_and_the_duplicate_is_closed() {
        let before = fd_table_size(None).expect("FDSize in /proc/self/status");
        let want = before * 4;
        grow_fd_table(0, want).unwrap();
        assert!(fd_table_size(None).unwrap() >= want);
        assert_eq!(
            std::fs::read_link(format!("/proc/self/fd/{}", want - 1)).map_err(|e| e.raw_os_error()),
            Err(Some(libc::ENOENT)),
            "the duplicate that grew the table is closed"
        );
        assert_eq!(grow_fd_table(0, usize::MAX), Err(libc::EINVAL));
    }
}
