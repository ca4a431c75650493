//! The few system calls the built-ins make that std and nix do not wrap as needed.

use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};

use nix::fcntl::{OFlag, OpenHow, ResolveFlag};

fn cstring(name: &OsStr) -> io::Result<CString> {
    CString::new(name.as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// Opens `name` beneath `dir` with `openat2(RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)`:
/// resolution never leaves `dir` (no `..` out of it, no absolute symlinks, no magic links).
pub(crate) fn open_beneath(dir: BorrowedFd<'_>, name: &OsStr, flags: OFlag) -> io::Result<OwnedFd> {
    // openat2 refuses O_PATH with any flag but O_DIRECTORY, O_NOFOLLOW and O_CLOEXEC.
    let extra = if flags.contains(OFlag::O_PATH) {
        OFlag::O_CLOEXEC
    } else {
        OFlag::O_CLOEXEC | OFlag::O_NOCTTY
    };
    let how = OpenHow::new()
        .flags(flags | extra)
        .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    let fd = nix::fcntl::openat2(dir.as_raw_fd(), name, how)?;
    // SAFETY: openat2 just returned this descriptor; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `fstat` of any descriptor, `O_PATH` ones included.
pub(crate) fn fstat(fd: BorrowedFd<'_>) -> io::Result<libc::stat> {
    Ok(nix::sys::stat::fstat(fd.as_raw_fd())?)
}

/// The target of the symlink `fd` refers to (opened `O_PATH | O_NOFOLLOW`).
pub(crate) fn readlink_fd(fd: BorrowedFd<'_>) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; libc::PATH_MAX as usize];
    // SAFETY: the buffer is valid for `buf.len()` bytes; the empty path names `fd` itself.
    let n = unsafe {
        libc::readlinkat(
            fd.as_raw_fd(),
            c"".as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    buf.truncate(n as usize);
    Ok(buf)
}

/// The value of extended attribute `name` of the open file `fd`.
pub(crate) fn fgetxattr(fd: BorrowedFd<'_>, name: &OsStr) -> io::Result<Vec<u8>> {
    let name = cstring(name)?;
    // Attributes change between the size query and the read: retry a few times.
    for _ in 0..4 {
        // SAFETY: a null buffer of size 0 asks for the value's size only.
        let size =
            unsafe { libc::fgetxattr(fd.as_raw_fd(), name.as_ptr(), std::ptr::null_mut(), 0) };
        if size < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut buf = vec![0u8; size as usize];
        // SAFETY: the buffer is valid for `buf.len()` bytes.
        let n = unsafe {
            libc::fgetxattr(
                fd.as_raw_fd(),
                name.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        };
        if n >= 0 {
            buf.truncate(n as usize);
            return Ok(buf);
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::ERANGE) {
            return Err(e);
        }
    }
    Err(io::Error::from_raw_os_error(libc::ERANGE))
}

/// The extended attribute names of the open file `fd`, each ending in NUL.
pub(crate) fn flistxattr(fd: BorrowedFd<'_>) -> io::Result<Vec<u8>> {
    for _ in 0..4 {
        // SAFETY: a null buffer of size 0 asks for the list's size only.
        let size = unsafe { libc::flistxattr(fd.as_raw_fd(), std::ptr::null_mut(), 0) };
        if size < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut buf = vec![0u8; size as usize];
        // SAFETY: the buffer is valid for `buf.len()` bytes.
        let n = unsafe { libc::flistxattr(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n >= 0 {
            buf.truncate(n as usize);
            return Ok(buf);
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::ERANGE) {
            return Err(e);
        }
    }
    Err(io::Error::from_raw_os_error(libc::ERANGE))
}

/// The entries of the directory open as `dir` (read from a fresh descriptor of it), without
/// `.` and `..`: name, inode number, `d_type`.
pub(crate) fn read_dir(dir: OwnedFd) -> io::Result<Vec<(OsString, u64, Option<nix::dir::Type>)>> {
    use std::os::fd::IntoRawFd;
    let mut d = nix::dir::Dir::from_fd(dir.into_raw_fd())?;
    let mut out = Vec::new();
    for entry in d.iter() {
        let entry = entry?;
        let name = entry.file_name().to_bytes();
        if name == b"." || name == b".." {
            continue;
        }
        out.push((
            OsString::from_vec(name.to_vec()),
            entry.ino(),
            entry.file_type(),
        ));
    }
    Ok(out)
}

/// The errno of an I/O error, EIO when it carries none.
pub(crate) fn errno(e: &io::Error) -> fuser::Errno {
    fuser::Errno::from_i32(e.raw_os_error().unwrap_or(libc::EIO))
}
