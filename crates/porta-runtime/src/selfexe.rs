//! Protection of the `porta` binary against being overwritten from inside a container through
//! /proc/self/exe (CVE-2019-5736): processes that enter a container run from an image of the
//! binary that nothing can write.
//!
//! First choice (as runc ≥ 1.2): a private overlayfs over the binary's directory, with no
//! upper layer (so its superblock is read-only and cannot be made writable) and never
//! attached to any mount table (so nobody can find it to remount or mount over it). Its
//! files share the page cache of the real ones: nothing is copied, and every container's
//! supervisor and file server run from the same pages. Fallback (no overlayfs, no privilege
//! to make one, odd path): a sealed memfd copy of the binary.

use std::ffi::CString;
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

use porta_sys::mount_api::{
    self, MOUNT_ATTR_NODEV, MOUNT_ATTR_NOEXEC, MOUNT_ATTR_NOSUID, MOUNT_ATTR_RDONLY,
};

use crate::error::{Context, Error, Result};
use crate::sys;

const MEMFD_NAME: &str = "porta";
const OVERLAYFS_SUPER_MAGIC: i64 = 0x794c_7630;

/// Whether this process already runs from a sealed memfd copy of the binary or from a
/// private read-only overlay of it.
pub fn is_sealed_copy() -> bool {
    let Ok(f) = File::open("/proc/self/exe") else {
        return false;
    };
    is_sealed_memfd(&f) || is_private_overlay(&f)
}

fn is_sealed_memfd(exe: &File) -> bool {
    let Ok(link) = std::fs::read_link("/proc/self/exe") else {
        return false;
    };
    if !link
        .as_os_str()
        .as_bytes()
        .starts_with(format!("/memfd:{MEMFD_NAME}").as_bytes())
    {
        return false;
    }
    let want = libc::F_SEAL_SEAL | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE;
    sys::get_seals(exe.as_fd())
        .map(|s| s & want == want)
        .unwrap_or(false)
}

/// True if `exe` lives on a read-only overlayfs that is not in this process's mount table
/// (a detached mount, as [`private_overlay`] makes).
fn is_private_overlay(exe: &File) -> bool {
    match sys::fstatfs(exe.as_fd()) {
        Ok((t, flags)) if t == OVERLAYFS_SUPER_MAGIC && flags & libc::ST_RDONLY as i64 != 0 => {}
        _ => return false,
    }
    let Ok(id) = sys::mount_id(exe.as_fd()) else {
        return false;
    };
    let Ok(mounts) = porta_sys::proc::own_mountinfo() else {
        return false;
    };
    !mounts.iter().any(|m| m.mount_id == id)
}

/// Opens the running binary through a private, detached, read-only overlayfs whose lower
/// layers are the binary's directory and an empty detached tmpfs (overlayfs needs two
/// lower layers when it has no upper one).
fn private_overlay() -> std::io::Result<File> {
    let inval = || std::io::Error::from_raw_os_error(libc::EINVAL);
    let exe = std::fs::read_link("/proc/self/exe")?;
    let dir = exe.parent().ok_or_else(inval)?;
    let name = exe.file_name().ok_or_else(inval)?;
    let dir_s = dir.to_str().ok_or_else(inval)?;
    // ':' separates layers and '\' escapes; such paths take the memfd way.
    if dir_s.contains([':', '\\', ',']) || !dir.is_absolute() {
        return Err(inval());
    }
    let tmpfs = mount_api::fsopen(c"tmpfs")?;
    mount_api::fsconfig_create(tmpfs.as_fd())?;
    let empty = mount_api::fsmount(
        tmpfs.as_fd(),
        MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | MOUNT_ATTR_NOEXEC,
    )?;
    let ovl = mount_api::fsopen(c"overlay")?;
    let lower = CString::new(format!("{dir_s}:/proc/self/fd/{}", empty.as_raw_fd()))
        .map_err(|_| inval())?;
    mount_api::fsconfig_set_string(ovl.as_fd(), c"lowerdir", &lower)?;
    // Spares dmesg a notice when the layers are on different file systems; optional.
    let _ = mount_api::fsconfig_set_string(ovl.as_fd(), c"xino", c"off");
    mount_api::fsconfig_create(ovl.as_fd())?;
    let mnt = mount_api::fsmount(
        ovl.as_fd(),
        MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV,
    )?;
    let path = Path::new("/proc/self/fd")
        .join(mnt.as_raw_fd().to_string())
        .join(name);
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
        .open(path)?;
    // The file must be the one we run (not replaced since): same size and times.
    let (a, b) = (f.metadata()?, std::fs::metadata("/proc/self/exe")?);
    if !a.is_file()
        || a.size() != b.size()
        || a.mtime() != b.mtime()
        || a.mtime_nsec() != b.mtime_nsec()
    {
        return Err(std::io::Error::from_raw_os_error(libc::ESTALE));
    }
    if !is_private_overlay(&f) {
        return Err(std::io::Error::from_raw_os_error(libc::EROFS));
    }
    Ok(f)
}

fn memfd_copy() -> Result<File> {
    let mut src = File::open("/proc/self/exe").ctx(|| "open /proc/self/exe".into())?;
    let memfd = sys::memfd_create(MEMFD_NAME, libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING)
        .ctx(|| "memfd_create".into())?;
    let mut dst = File::from(memfd);
    std::io::copy(&mut src, &mut dst).ctx(|| "copy the porta binary into a memfd".into())?;
    sys::add_seals(
        dst.as_fd(),
        libc::F_SEAL_SEAL | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE,
    )
    .ctx(|| "seal the memfd copy".into())?;
    Ok(dst)
}

/// Re-executes the current command from a read-only image of the binary (a private overlay,
/// else a sealed memfd copy), unless it already runs from one. Returns only when nothing had
/// to be done, or on error.
pub fn ensure_sealed_copy() -> Result<()> {
    if is_sealed_copy() {
        return Ok(());
    }
    let argv: Vec<CString> = std::env::args_os()
        .filter_map(|a| CString::new(a.as_bytes()).ok())
        .collect();
    let envp: Vec<CString> = std::env::vars_os()
        .filter_map(|(k, v)| {
            let mut b = k.as_bytes().to_vec();
            b.push(b'=');
            b.extend_from_slice(v.as_bytes());
            CString::new(b).ok()
        })
        .collect();
    match private_overlay() {
        Ok(f) => {
            let err = sys::fexecve(f.as_fd(), &argv, &envp);
            tracing::debug!("re-execute from a private overlay: {err}; copying into a memfd");
        }
        Err(e) => tracing::debug!("private overlay of the binary: {e}; copying into a memfd"),
    }
    let dst = memfd_copy()?;
    let err = sys::fexecve(dst.as_fd(), &argv, &envp);
    Err(Error::sys("re-execute from the sealed memfd copy", err))
}
