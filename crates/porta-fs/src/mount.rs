//! Making a FUSE mount for a connection: with the new mount API (a detached mount the
//! host's mount table never holds) or, for tests, the classic mount(2).

use std::ffi::{CStr, CString};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

use crate::Error;

const FSOPEN_CLOEXEC: libc::c_uint = 1;
const FSCONFIG_SET_FLAG: libc::c_uint = 0;
const FSCONFIG_SET_STRING: libc::c_uint = 1;
const FSCONFIG_CMD_CREATE: libc::c_uint = 6;
const FSMOUNT_CLOEXEC: libc::c_uint = 1;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 4;

fn last_err(what: &'static str) -> Error {
    Error::Io(what, std::io::Error::last_os_error())
}

/// Opens /dev/fuse (O_RDWR|O_CLOEXEC): a new, unmounted FUSE connection.
pub fn open_dev_fuse() -> Result<OwnedFd, Error> {
    // SAFETY: constant path; plain system call.
    let fd = unsafe { libc::open(c"/dev/fuse".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(last_err("open /dev/fuse"));
    }
    // SAFETY: fresh descriptor owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn fsopen(name: &CStr) -> Result<OwnedFd, Error> {
    // SAFETY: valid string; plain system call.
    let fd = unsafe { libc::syscall(libc::SYS_fsopen, name.as_ptr(), FSOPEN_CLOEXEC) };
    if fd < 0 {
        return Err(Error::Io(
            if name == c"proc" {
                "fsopen(\"proc\")"
            } else {
                "fsopen(\"fuse\")"
            },
            std::io::Error::last_os_error(),
        ));
    }
    // SAFETY: fresh descriptor owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

fn fsconfig(
    fs: &OwnedFd,
    cmd: libc::c_uint,
    key: Option<&CStr>,
    val: Option<&CStr>,
) -> Result<(), Error> {
    let k = key.map_or(std::ptr::null(), |k| k.as_ptr());
    let v = val.map_or(std::ptr::null(), |v| v.as_ptr());
    // SAFETY: valid (or null) strings; plain system call.
    let r = unsafe { libc::syscall(libc::SYS_fsconfig, fs.as_raw_fd(), cmd, k, v, 0) };
    if r < 0 {
        return Err(last_err("fsconfig"));
    }
    Ok(())
}

/// Options of a FUSE mount.
#[derive(Debug, Clone)]
pub struct MountOptions {
    /// Name shown as the mount's source.
    pub source: String,
    /// uid of the mount's owner (user_id=).
    pub user_id: u32,
    /// gid of the mount's owner (group_id=).
    pub group_id: u32,
}

impl Default for MountOptions {
    fn default() -> Self {
        MountOptions {
            source: "porta".into(),
            user_id: 0,
            group_id: 0,
        }
    }
}

/// Creates a FUSE superblock for connection `fuse` with fsopen/fsconfig/fsmount
/// (fd=, rootmode=40000, user_id, group_id, allow_other, default_permissions) and
/// returns the detached mount: attached nowhere, gone when its last descriptor closes.
pub fn fsmount_fuse(fuse: RawFd, opts: &MountOptions) -> Result<OwnedFd, Error> {
    let fs = fsopen(c"fuse")?;
    let s = |v: String| CString::new(v).map_err(|_| Error::BadState("NUL in mount option".into()));
    fsconfig(
        &fs,
        FSCONFIG_SET_STRING,
        Some(c"source"),
        Some(&s(opts.source.clone())?),
    )?;
    fsconfig(
        &fs,
        FSCONFIG_SET_STRING,
        Some(c"fd"),
        Some(&s(fuse.to_string())?),
    )?;
    fsconfig(&fs, FSCONFIG_SET_STRING, Some(c"rootmode"), Some(c"40000"))?;
    fsconfig(
        &fs,
        FSCONFIG_SET_STRING,
        Some(c"user_id"),
        Some(&s(opts.user_id.to_string())?),
    )?;
    fsconfig(
        &fs,
        FSCONFIG_SET_STRING,
        Some(c"group_id"),
        Some(&s(opts.group_id.to_string())?),
    )?;
    fsconfig(&fs, FSCONFIG_SET_FLAG, Some(c"allow_other"), None)?;
    fsconfig(&fs, FSCONFIG_SET_FLAG, Some(c"default_permissions"), None)?;
    fsconfig(&fs, FSCONFIG_CMD_CREATE, None, None)?;
    // SAFETY: plain system call on our fs context descriptor.
    let m = unsafe { libc::syscall(libc::SYS_fsmount, fs.as_raw_fd(), FSMOUNT_CLOEXEC, 0) };
    if m < 0 {
        return Err(last_err("fsmount"));
    }
    // SAFETY: fresh descriptor owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(m as RawFd) })
}

const MOUNT_ATTR_RDONLY: libc::c_uint = 0x1;
const MOUNT_ATTR_NOSUID: libc::c_uint = 0x2;
const MOUNT_ATTR_NODEV: libc::c_uint = 0x4;
const MOUNT_ATTR_NOEXEC: libc::c_uint = 0x8;
const OPEN_TREE_CLONE: libc::c_uint = 1;
const OPEN_TREE_CLOEXEC: libc::c_uint = libc::O_CLOEXEC as libc::c_uint;

/// A new procfs instance for the file server's sandbox, as a detached mount: process
/// directories only (`subset=pid`: no /proc/sys, no sysrq-trigger, no kcore), each
/// visible only to processes that may ptrace it (`hidepid=invisible`), read-only, nosuid,
/// nodev, noexec. The servers need it to reopen their nodes by descriptor
/// (`/proc/self/fd/N`). Needs CAP_SYS_ADMIN over the caller's PID namespace.
pub fn procfs_instance() -> Result<OwnedFd, Error> {
    let fs = fsopen(c"proc")?;
    fsconfig(&fs, FSCONFIG_SET_STRING, Some(c"subset"), Some(c"pid"))?;
    fsconfig(
        &fs,
        FSCONFIG_SET_STRING,
        Some(c"hidepid"),
        Some(c"invisible"),
    )?;
    fsconfig(&fs, FSCONFIG_CMD_CREATE, None, None)?;
    let attrs = MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | MOUNT_ATTR_NOEXEC;
    // SAFETY: plain system call on our fs context descriptor.
    let m = unsafe { libc::syscall(libc::SYS_fsmount, fs.as_raw_fd(), FSMOUNT_CLOEXEC, attrs) };
    if m < 0 {
        return Err(last_err("fsmount procfs"));
    }
    // SAFETY: fresh descriptor owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(m as RawFd) })
}

/// A detached copy of the mount at `path` (open_tree with OPEN_TREE_CLONE; with the
/// mounts beneath it when `recursive`), to attach elsewhere with [`move_mount_to`].
pub fn clone_tree(path: &Path, recursive: bool) -> Result<OwnedFd, Error> {
    let rec = if recursive {
        libc::AT_RECURSIVE as libc::c_uint
    } else {
        0
    };
    let p = CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| Error::BadState("NUL in mount source".into()))?;
    // SAFETY: valid string; plain system call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            p.as_ptr(),
            OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | rec,
        )
    };
    if fd < 0 {
        return Err(last_err("open_tree"));
    }
    // SAFETY: fresh descriptor owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Attaches a detached mount (from [`fsmount_fuse`]) on `target` (move_mount).
pub fn move_mount_to(mount: RawFd, target: &Path) -> Result<(), Error> {
    let t = CString::new(target.as_os_str().as_encoded_bytes())
        .map_err(|_| Error::BadState("NUL in mount target".into()))?;
    // SAFETY: valid strings; plain system call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            mount,
            c"".as_ptr(),
            libc::AT_FDCWD,
            t.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    if r < 0 {
        return Err(last_err("move_mount"));
    }
    Ok(())
}

/// Lazily unmounts `target` (MNT_DETACH).
pub fn unmount(target: &Path) -> Result<(), Error> {
    nix::mount::umount2(target, nix::mount::MntFlags::MNT_DETACH)
        .map_err(|e| Error::Sys("umount2", e))
}
