//! Making a FUSE mount for a connection: with the new mount API (a detached mount the
//! host's mount table never holds) or, for tests, the classic mount(2).

use std::ffi::{CStr, CString};
use std::os::fd::{AsFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

use porta_sys::mount_api;

use crate::Error;

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

fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> Error {
    move |e| Error::Io(what, e)
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
    let fs = mount_api::fsopen(c"fuse").map_err(io("fsopen(\"fuse\")"))?;
    let fs = fs.as_fd();
    let s = |v: String| CString::new(v).map_err(|_| Error::BadState("NUL in mount option".into()));
    let set = |k: &CStr, v: &CStr| mount_api::fsconfig_set_string(fs, k, v).map_err(io("fsconfig"));
    set(c"source", &s(opts.source.clone())?)?;
    set(c"fd", &s(fuse.to_string())?)?;
    set(c"rootmode", c"40000")?;
    set(c"user_id", &s(opts.user_id.to_string())?)?;
    set(c"group_id", &s(opts.group_id.to_string())?)?;
    for flag in [c"allow_other", c"default_permissions"] {
        mount_api::fsconfig_set_flag(fs, flag).map_err(io("fsconfig"))?;
    }
    mount_api::fsconfig_create(fs).map_err(io("fsconfig"))?;
    mount_api::fsmount(fs, 0).map_err(io("fsmount"))
}

/// A new procfs instance for the file server's sandbox, as a detached mount: process
/// directories only (`subset=pid`: no /proc/sys, no sysrq-trigger, no kcore), each
/// visible only to processes that may ptrace it (`hidepid=invisible`), read-only, nosuid,
/// nodev, noexec. The servers need it to reopen their nodes by descriptor
/// (`/proc/self/fd/N`). Needs CAP_SYS_ADMIN over the caller's PID namespace.
pub fn procfs_instance() -> Result<OwnedFd, Error> {
    let fs = mount_api::fsopen(c"proc").map_err(io("fsopen(\"proc\")"))?;
    let fs = fs.as_fd();
    mount_api::fsconfig_set_string(fs, c"subset", c"pid").map_err(io("fsconfig"))?;
    mount_api::fsconfig_set_string(fs, c"hidepid", c"invisible").map_err(io("fsconfig"))?;
    mount_api::fsconfig_create(fs).map_err(io("fsconfig"))?;
    let attrs = mount_api::MOUNT_ATTR_RDONLY
        | mount_api::MOUNT_ATTR_NOSUID
        | mount_api::MOUNT_ATTR_NODEV
        | mount_api::MOUNT_ATTR_NOEXEC;
    mount_api::fsmount(fs, attrs).map_err(io("fsmount procfs"))
}

/// Lazily unmounts `target` (MNT_DETACH).
pub fn unmount(target: &Path) -> Result<(), Error> {
    nix::mount::umount2(target, nix::mount::MntFlags::MNT_DETACH)
        .map_err(|e| Error::Sys("umount2", e))
}
