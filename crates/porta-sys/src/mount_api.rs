//! The new mount API (Linux 5.2+, mount_setattr 5.12+): file system contexts, detached
//! mounts, attaching them, and changing mount attributes, with the uapi constants.
//!
//! Directory arguments are raw descriptors so that `libc::AT_FDCWD` can be passed.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};

use crate::{cvt, owned};

/// fsopen flag: the context descriptor is close-on-exec.
pub const FSOPEN_CLOEXEC: u32 = 0x1;
/// fsconfig command: set a flag parameter (`key`, no value).
pub const FSCONFIG_SET_FLAG: u32 = 0;
/// fsconfig command: set a string parameter.
pub const FSCONFIG_SET_STRING: u32 = 1;
/// fsconfig command: create the superblock.
pub const FSCONFIG_CMD_CREATE: u32 = 6;
/// fsmount flag: the mount descriptor is close-on-exec.
pub const FSMOUNT_CLOEXEC: u32 = 0x1;
/// move_mount flag: the source is the descriptor itself (empty path).
pub const MOVE_MOUNT_F_EMPTY_PATH: u32 = 0x4;
/// move_mount flag: the target is the descriptor itself (empty path).
pub const MOVE_MOUNT_T_EMPTY_PATH: u32 = 0x40;
/// open_tree flag: a detached copy of the mount instead of an O_PATH descriptor.
pub const OPEN_TREE_CLONE: u32 = 0x1;
/// open_tree flag: the descriptor is close-on-exec.
pub const OPEN_TREE_CLOEXEC: u32 = libc::O_CLOEXEC as u32;
/// open_tree / mount_setattr flag: the mounts below too.
pub const AT_RECURSIVE: u32 = 0x8000;
/// Mount attribute: read-only.
pub const MOUNT_ATTR_RDONLY: u64 = 0x1;
/// Mount attribute: ignore set-user-id and set-group-id bits.
pub const MOUNT_ATTR_NOSUID: u64 = 0x2;
/// Mount attribute: no device files.
pub const MOUNT_ATTR_NODEV: u64 = 0x4;
/// Mount attribute: no execution.
pub const MOUNT_ATTR_NOEXEC: u64 = 0x8;
/// Mount attribute: the access-time field (a value, not a set of bits).
pub const MOUNT_ATTR__ATIME: u64 = 0x70;
/// Access-time value: relatime (the kernel's default).
pub const MOUNT_ATTR_RELATIME: u64 = 0x0;
/// Access-time value: never updated.
pub const MOUNT_ATTR_NOATIME: u64 = 0x10;
/// Access-time value: always updated.
pub const MOUNT_ATTR_STRICTATIME: u64 = 0x20;
/// Mount attribute: no directory access-time updates.
pub const MOUNT_ATTR_NODIRATIME: u64 = 0x80;
/// Mount attribute: an idmapped mount (`userns_fd` gives the mapping).
pub const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;
/// Mount attribute: symlinks are not followed.
pub const MOUNT_ATTR_NOSYMFOLLOW: u64 = 0x0020_0000;

/// `struct mount_attr` of mount_setattr(2).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct MountAttr {
    /// `MOUNT_ATTR_*` to set.
    pub attr_set: u64,
    /// `MOUNT_ATTR_*` to clear.
    pub attr_clr: u64,
    /// `MS_SHARED`, `MS_SLAVE`, `MS_PRIVATE` or `MS_UNBINDABLE`; 0 leaves it.
    pub propagation: u64,
    /// User namespace descriptor for [`MOUNT_ATTR_IDMAP`].
    pub userns_fd: u64,
}

/// `fsopen(2)`: a new file system context for `fstype`, close-on-exec.
pub fn fsopen(fstype: &CStr) -> io::Result<OwnedFd> {
    // SAFETY: `fstype` is a valid NUL-terminated string for the duration of the call.
    let ret = cvt(unsafe { libc::syscall(libc::SYS_fsopen, fstype.as_ptr(), FSOPEN_CLOEXEC) })?;
    owned(ret)
}

fn fsconfig(
    fs: BorrowedFd<'_>,
    cmd: u32,
    key: Option<&CStr>,
    value: Option<&CStr>,
) -> io::Result<()> {
    let k = key.map_or(std::ptr::null(), CStr::as_ptr);
    let v = value.map_or(std::ptr::null(), CStr::as_ptr);
    // SAFETY: `k` and `v` are null or valid NUL-terminated strings that outlive the call.
    cvt(unsafe { libc::syscall(libc::SYS_fsconfig, fs.as_raw_fd(), cmd, k, v, 0) })?;
    Ok(())
}

/// `fsconfig(FSCONFIG_SET_STRING, key, value)`.
pub fn fsconfig_set_string(fs: BorrowedFd<'_>, key: &CStr, value: &CStr) -> io::Result<()> {
    fsconfig(fs, FSCONFIG_SET_STRING, Some(key), Some(value))
}

/// `fsconfig(FSCONFIG_SET_FLAG, key)`.
pub fn fsconfig_set_flag(fs: BorrowedFd<'_>, key: &CStr) -> io::Result<()> {
    fsconfig(fs, FSCONFIG_SET_FLAG, Some(key), None)
}

/// `fsconfig(FSCONFIG_CMD_CREATE)`: creates the context's superblock.
pub fn fsconfig_create(fs: BorrowedFd<'_>) -> io::Result<()> {
    fsconfig(fs, FSCONFIG_CMD_CREATE, None, None)
}

/// `fsmount(2)`: the context's superblock as a detached mount (close-on-exec) with the
/// `MOUNT_ATTR_*` flags `attrs`.
pub fn fsmount(fs: BorrowedFd<'_>, attrs: u64) -> io::Result<OwnedFd> {
    // SAFETY: integer arguments on a context descriptor we borrow.
    let ret =
        cvt(unsafe { libc::syscall(libc::SYS_fsmount, fs.as_raw_fd(), FSMOUNT_CLOEXEC, attrs) })?;
    owned(ret)
}

/// `open_tree(2)` of `path` below `dir` with `flags` (`OPEN_TREE_*`, `AT_*`).
pub fn open_tree(dir: RawFd, path: &CStr, flags: u32) -> io::Result<OwnedFd> {
    // SAFETY: `path` is a valid NUL-terminated string for the duration of the call.
    let ret = cvt(unsafe { libc::syscall(libc::SYS_open_tree, dir, path.as_ptr(), flags) })?;
    owned(ret)
}

/// `move_mount(2)` of `from_dir`+`from_path` onto `to_dir`+`to_path`, with
/// `MOVE_MOUNT_*` `flags`.
pub fn move_mount(
    from_dir: RawFd,
    from_path: &CStr,
    to_dir: RawFd,
    to_path: &CStr,
    flags: u32,
) -> io::Result<()> {
    // SAFETY: both strings are valid and NUL-terminated for the duration of the call.
    cvt(unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            from_dir,
            from_path.as_ptr(),
            to_dir,
            to_path.as_ptr(),
            flags,
        )
    })?;
    Ok(())
}

/// Attaches the detached mount `mount` at `target` (relative paths: to the working
/// directory).
pub fn move_mount_to(mount: BorrowedFd<'_>, target: &CStr) -> io::Result<()> {
    move_mount(
        mount.as_raw_fd(),
        c"",
        libc::AT_FDCWD,
        target,
        MOVE_MOUNT_F_EMPTY_PATH,
    )
}

/// `mount_setattr(2)` of `dir`+`path` with `flags` (`AT_*`) and the attributes `attr`.
pub fn mount_setattr(dir: RawFd, path: &CStr, flags: u32, attr: &MountAttr) -> io::Result<()> {
    // SAFETY: `path` is a valid string and `attr` a valid `struct mount_attr` of the size
    // passed, both alive for the call; the kernel copies them.
    cvt(unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            dir,
            path.as_ptr(),
            flags,
            attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn mount_attr_has_the_kernel_layout() {
        assert_eq!(std::mem::size_of::<MountAttr>(), 32);
    }

    #[test]
    fn errors_come_back_with_the_errno() {
        let e = fsopen(c"no-such-fs-type").unwrap_err();
        // Without privilege fsopen refuses (EPERM) before looking at the type (ENODEV).
        assert!(matches!(e.raw_os_error(), Some(libc::ENODEV | libc::EPERM)));
        let f = std::fs::File::open("/dev/null").unwrap();
        assert!(fsconfig_create(f.as_fd()).is_err());
        assert!(fsmount(f.as_fd(), 0).is_err());
        assert!(move_mount_to(f.as_fd(), c"/nonexistent/porta-sys").is_err());
    }

    #[test]
    fn a_tmpfs_is_made_detached_and_cloned_as_root() {
        if !crate::user::is_root() {
            return;
        }
        let fs = fsopen(c"tmpfs").unwrap();
        fsconfig_set_string(fs.as_fd(), c"size", c"1m").unwrap();
        assert!(fsconfig_set_flag(fs.as_fd(), c"no-such-flag").is_err());
        fsconfig_create(fs.as_fd()).unwrap();
        let m = fsmount(fs.as_fd(), MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV).unwrap();
        let attr = MountAttr {
            attr_set: MOUNT_ATTR_RDONLY,
            ..Default::default()
        };
        mount_setattr(m.as_raw_fd(), c"", libc::AT_EMPTY_PATH as u32, &attr).unwrap();
        let copy = open_tree(
            m.as_raw_fd(),
            c"",
            OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | libc::AT_EMPTY_PATH as u32,
        )
        .unwrap();
        // SAFETY: an all-zero statvfs is valid; `st` is a valid out-pointer.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        assert_eq!(unsafe { libc::fstatvfs(copy.as_raw_fd(), &mut st) }, 0);
        assert!(st.f_flag & libc::ST_RDONLY != 0);
    }
}
