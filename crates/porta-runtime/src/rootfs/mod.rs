//! The container's root file system, set up by the container's process inside its new mount
//! namespace: propagation, the root itself (a kernel bind mount, or the file server's mount),
//! the config's mounts, /dev, pivot_root, then masked and read-only paths.
//!
//! `mounts.rs` makes the config's mounts, `devices.rs` /dev, `cgroupfs.rs` the cgroup file
//! system, `pivot.rs` enters the root, `finish.rs` does what follows pivot_root, and
//! `hostbind.rs` is the root bind of a container without a mount namespace.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use nix::mount::MsFlags;
use nix::sys::stat::Mode;
use oci_spec::runtime::Spec;

use crate::error::{Context, Error, Result};
use crate::kernel::Kernel;
use crate::mounts::{propagation_flags, MountOptions};
use crate::sys;

mod cgroupfs;
mod devices;
mod finish;
mod hostbind;
mod mounts;
mod pivot;

#[cfg(test)]
mod kernel_tests;

pub(crate) use finish::finish;
pub use hostbind::HostRootBind;
pub(crate) use pivot::enter;

/// What the container's process needs to build its root.
pub(crate) struct RootfsPlan<'a> {
    /// The container's config.
    pub spec: &'a Spec,
    /// Absolute root path on the host.
    pub rootfs: &'a Path,
    /// A new cgroup namespace is made for the container.
    pub new_cgroupns: bool,
    /// A new user namespace is made for the container.
    pub new_userns: bool,
    /// `linux.mountLabel`, applied only where SELinux is on.
    pub mount_label: Option<String>,
    /// The file server's detached mount, when the root is served.
    pub served_root: Option<OwnedFd>,
    /// Bind sources opened on the host side before the process entered its namespaces.
    pub sources: crate::detached::Sources,
    /// The container has a mount namespace of its own. Without one, `porta create` bound
    /// the root onto itself in its own mount namespace ([`HostRootBind`]) and every mount
    /// goes beneath that bind; nothing else of the caller's mount table is touched.
    pub own_mount_ns: bool,
}

pub(super) fn none() -> Option<&'static str> {
    None
}

/// Whether SELinux is enabled on this host.
pub(crate) fn selinux_enabled() -> bool {
    Path::new("/sys/fs/selinux/enforce").exists()
}

/// Prepares propagation, the root mount and the config's mounts; runs before pivot_root.
pub(crate) fn prepare(k: &dyn Kernel, plan: &mut RootfsPlan<'_>) -> Result<()> {
    let linux = plan.spec.linux().as_ref();
    let prop = linux
        .and_then(|l| l.rootfs_propagation().as_deref())
        .and_then(propagation_flags);
    let rootfs = plan.rootfs;
    if plan.own_mount_ns {
        // Our copy of the host's mounts must not propagate back to the host.
        let initial = match prop {
            Some(p) if p.contains(MsFlags::MS_PRIVATE) => MsFlags::MS_PRIVATE | MsFlags::MS_REC,
            _ => MsFlags::MS_SLAVE | MsFlags::MS_REC,
        };
        k.mnt(none(), "/", none(), initial, none())
            .ctx(|| "make / a slave mount in the container's mount namespace".into())?;
        match plan.served_root.take() {
            Some(fd) => k
                .move_mount_onto(fd.as_fd(), rootfs)
                .ctx(|| format!("attach the file server's mount on {}", rootfs.display()))?,
            None => k
                .mnt(
                    Some(rootfs),
                    rootfs,
                    none(),
                    MsFlags::MS_BIND | MsFlags::MS_REC,
                    none(),
                )
                .ctx(|| format!("bind mount root {}", rootfs.display()))?,
        }
    } else if plan.served_root.is_some() {
        return Err(Error::Init(
            "a served root needs the container's own mount namespace".into(),
        ));
    }
    // Without a mount namespace the root is the private bind `porta create` made
    // (HostRootBind): the mounts below land beneath it, in the caller's mount namespace.
    let root_fd = open_dir(rootfs)?;
    let label = plan.mount_label.clone().filter(|_| selinux_enabled());
    if plan.mount_label.is_some() && label.is_none() {
        tracing::debug!(
            "linux.mountLabel given but SELinux is not enabled on this host: not applied"
        );
    }
    let mounts = plan.spec.mounts().clone().unwrap_or_default();
    let mut dev_is_bind = false;
    let mut deferred = Vec::new();
    for (i, m) in mounts.iter().enumerate() {
        let name = || format!("mounts[{i}] ({})", m.destination().display());
        let opts = MountOptions::parse(m.options().as_deref().unwrap_or(&[]))
            .map_err(|e| Error::field(name(), e.to_string()))?;
        let typ = m
            .typ()
            .as_deref()
            .unwrap_or(if opts.bind { "bind" } else { "none" });
        opts.check_for_type(typ)
            .map_err(|e| Error::field(name(), e.to_string()))?;
        if m.destination() == Path::new("/dev") && (typ == "bind" || opts.bind) {
            dev_is_bind = true;
        }
        let detached = plan.sources.take(i);
        mounts::mount_one(
            k,
            root_fd.as_fd(),
            i,
            m,
            &opts,
            detached,
            plan,
            label.as_deref(),
            &mut deferred,
        )
        .map_err(|e| Error::field(name(), e.to_string()))?;
    }
    if !dev_is_bind {
        devices::create_devices(k, root_fd.as_fd(), plan)?;
        devices::dev_symlinks(k, root_fd.as_fd())?;
    }
    for d in deferred {
        let t = reopen(root_fd.as_fd(), &d.dest)?;
        remount_bind(k, &fd_path(t.as_fd()), MsFlags::MS_RDONLY).map_err(|e| {
            Error::field(
                format!("mounts[{}] ({})", d.index, d.dest.display()),
                e.to_string(),
            )
        })?;
    }
    Ok(())
}

pub(super) fn open_dir(p: &Path) -> Result<OwnedFd> {
    nix::fcntl::open(
        p,
        nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map(|fd| {
        // SAFETY: open returned a fresh fd we now own.
        unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) }
    })
    .ctx(|| format!("open {}", p.display()))
}

pub(super) fn fd_path(fd: BorrowedFd<'_>) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

/// Relative form of an absolute container path ("/a/b" -> "a/b").
pub(super) fn rel(p: &Path) -> String {
    let s: Vec<_> = p
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => n.to_str(),
            Component::ParentDir => Some(".."),
            _ => None,
        })
        .collect();
    if s.is_empty() {
        ".".to_string()
    } else {
        s.join("/")
    }
}

/// Opens (creating if missing) a directory below the root, with every symlink kept inside it.
pub(crate) fn ensure_dir(root: BorrowedFd<'_>, path: &Path) -> Result<OwnedFd> {
    let mut cur = PathBuf::new();
    let mut fd = sys::openat2(
        root,
        ".",
        libc::O_PATH | libc::O_DIRECTORY,
        0,
        sys::RESOLVE_IN_ROOT,
    )
    .ctx(|| "open root".into())?;
    for c in path.components() {
        let Component::Normal(name) = c else { continue };
        cur.push(name);
        let r = rel(&cur);
        match sys::openat2(
            root,
            &r,
            libc::O_PATH | libc::O_DIRECTORY,
            0,
            sys::RESOLVE_IN_ROOT,
        ) {
            Ok(f) => fd = f,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                match nix::sys::stat::mkdirat(
                    Some(fd.as_raw_fd()),
                    name,
                    Mode::from_bits_truncate(0o755),
                ) {
                    Ok(()) | Err(nix::errno::Errno::EEXIST) => {}
                    Err(e) => {
                        return Err(Error::nix(
                            format!("create directory /{r} in the container"),
                            e,
                        ))
                    }
                }
                fd = sys::openat2(
                    root,
                    &r,
                    libc::O_PATH | libc::O_DIRECTORY,
                    0,
                    sys::RESOLVE_IN_ROOT,
                )
                .ctx(|| format!("open /{r} in the container"))?;
            }
            Err(e) => return Err(Error::sys(format!("open /{r} in the container"), e)),
        }
    }
    Ok(fd)
}

/// Opens (creating an empty file if missing) a file below the root, symlinks kept inside it.
pub(crate) fn ensure_file(root: BorrowedFd<'_>, path: &Path) -> Result<OwnedFd> {
    let r = rel(path);
    match sys::openat2(root, &r, libc::O_PATH, 0, sys::RESOLVE_IN_ROOT) {
        Ok(f) => return Ok(f),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
        Err(e) => return Err(Error::sys(format!("open /{r} in the container"), e)),
    }
    let parent = ensure_dir(root, path.parent().unwrap_or(Path::new("/")))?;
    let name = path
        .file_name()
        .ok_or_else(|| Error::field("mounts", format!("{} has no file name", path.display())))?;
    let pname = name.to_str().unwrap_or_default();
    let f = sys::openat2(
        parent.as_fd(),
        pname,
        libc::O_CREAT | libc::O_WRONLY | libc::O_NOFOLLOW,
        0o644,
        sys::RESOLVE_IN_ROOT,
    )
    .or_else(|e| {
        if e.raw_os_error() == Some(libc::EEXIST) {
            sys::openat2(parent.as_fd(), pname, libc::O_PATH, 0, sys::RESOLVE_IN_ROOT)
        } else {
            Err(e)
        }
    })
    .ctx(|| format!("create /{r} in the container"))?;
    drop(f);
    sys::openat2(root, &r, libc::O_PATH, 0, sys::RESOLVE_IN_ROOT)
        .ctx(|| format!("open /{r} in the container"))
}

pub(super) fn reopen(root: BorrowedFd<'_>, dest: &Path) -> Result<OwnedFd> {
    sys::openat2(root, &rel(dest), libc::O_PATH, 0, sys::RESOLVE_IN_ROOT)
        .ctx(|| format!("open {} in the container", dest.display()))
}

/// Remounts a bind mount with `flags`, keeping the flags the kernel locked on it.
pub(super) fn remount_bind(k: &dyn Kernel, path: &Path, flags: MsFlags) -> Result<()> {
    let locked = statvfs_flags(path);
    k.mnt(
        none(),
        path,
        none(),
        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | flags | locked,
        none(),
    )
    .ctx(|| format!("remount {} with {flags:?}", path.display()))
}

pub(super) fn statvfs_flags(path: &Path) -> MsFlags {
    use nix::sys::statvfs::{statvfs, FsFlags};
    let Ok(st) = statvfs(path) else {
        return MsFlags::empty();
    };
    let f = st.flags();
    let mut m = MsFlags::empty();
    for (a, b) in [
        (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
        (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
        (FsFlags::ST_RDONLY, MsFlags::MS_RDONLY),
        (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
        (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
        (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
    ] {
        if f.contains(a) {
            m |= b;
        }
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths() {
        assert_eq!(rel(Path::new("/")), ".");
        assert_eq!(rel(Path::new("/a/b/../c")), "a/b/../c");
        assert_eq!(rel(Path::new("/dev/pts")), "dev/pts");
    }
}
