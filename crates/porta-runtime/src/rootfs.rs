//! The container's root file system, set up by the container's process inside its new mount
//! namespace: propagation, the root itself (a kernel bind mount, or the file server's mount),
//! the config's mounts, /dev, pivot_root, then masked and read-only paths.

use std::fs;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::stat::{Mode, SFlag};
use oci_spec::runtime::{LinuxDevice, LinuxDeviceType, Mount, Spec};

use crate::error::{Context, Error, Result};
use crate::mounts::{propagation_flags, MountOptions};
use crate::sys;

/// What the container's process needs to build its root.
pub struct RootfsPlan<'a> {
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

/// The bind of a root onto itself that `porta create` makes in its own mount namespace
/// for a container without a mount namespace of its own (runc makes the same bind and
/// mounts the config's mounts beneath it). Recorded in the state; [`HostRootBind::release`]
/// detaches it, and with it every mount made beneath it, at `delete` or when `create`
/// fails.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HostRootBind {
    /// The root path the bind covers.
    pub path: PathBuf,
    /// Inode of the mount namespace it was made in (/proc/self/ns/mnt).
    pub mnt_ns: u64,
    /// The bind's mount id (statx STATX_MNT_ID).
    pub mnt_id: u64,
}

fn own_mnt_ns() -> Result<u64> {
    use std::os::unix::fs::MetadataExt;
    fs::metadata("/proc/self/ns/mnt")
        .map(|m| m.ino())
        .ctx(|| "stat /proc/self/ns/mnt".into())
}

impl HostRootBind {
    /// Binds `rootfs` onto itself (recursively) in this process's mount namespace and
    /// makes the bind and everything beneath it private, so that the container's mounts
    /// do not propagate to the rest of the host.
    pub fn make(rootfs: &Path) -> Result<HostRootBind> {
        let mnt_ns = own_mnt_ns()?;
        mount(
            Some(rootfs),
            rootfs,
            none(),
            MsFlags::MS_BIND | MsFlags::MS_REC,
            none(),
        )
        .ctx(|| format!("bind mount root {} onto itself", rootfs.display()))?;
        let bind = HostRootBind {
            path: rootfs.to_path_buf(),
            mnt_ns,
            mnt_id: 0,
        };
        let r = (|| {
            mount(
                none(),
                rootfs,
                none(),
                MsFlags::MS_PRIVATE | MsFlags::MS_REC,
                none(),
            )
            .ctx(|| format!("make the bind of {} private", rootfs.display()))?;
            let fd = open_dir(rootfs)?;
            sys::mount_id(fd.as_fd()).ctx(|| format!("mount id of {}", rootfs.display()))
        })();
        match r {
            Ok(mnt_id) => Ok(HostRootBind { mnt_id, ..bind }),
            Err(e) => {
                let _ = umount2(rootfs, MntFlags::MNT_DETACH);
                Err(e)
            }
        }
    }

    /// Detaches the bind and every mount beneath it, if it is still the top mount on its
    /// path in this mount namespace. A `delete` run in another mount namespace than
    /// `create` cannot reach it: it says so in a warning and goes on (the mounts live
    /// in that namespace and go away with it; a container that cannot be deleted would
    /// help nobody).
    pub fn release(&self) -> Result<()> {
        let here = own_mnt_ns()?;
        if here != self.mnt_ns {
            tracing::warn!(
                "the container's root bind on {} is in mount namespace mnt:[{}], not in this \
                 process's mnt:[{here}]: it and the container's mounts beneath it stay there \
                 (run delete in the mount namespace create ran in to detach them)",
                self.path.display(),
                self.mnt_ns
            );
            return Ok(());
        }
        let top = match open_dir(&self.path) {
            Ok(fd) => sys::mount_id(fd.as_fd()).ok(),
            Err(_) => None,
        };
        if top != Some(self.mnt_id) {
            tracing::debug!(
                "root bind on {} (mount {}) is gone already",
                self.path.display(),
                self.mnt_id
            );
            return Ok(());
        }
        umount2(&self.path, MntFlags::MNT_DETACH)
            .ctx(|| format!("detach the root bind on {}", self.path.display()))
    }
}

fn none() -> Option<&'static str> {
    None
}

/// Whether SELinux is enabled on this host.
pub fn selinux_enabled() -> bool {
    Path::new("/sys/fs/selinux/enforce").exists()
}

/// Prepares propagation, the root mount and the config's mounts; runs before pivot_root.
pub fn prepare(plan: &mut RootfsPlan<'_>) -> Result<()> {
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
        mount(none(), "/", none(), initial, none())
            .ctx(|| "make / a slave mount in the container's mount namespace".into())?;
        match plan.served_root.take() {
            Some(fd) => sys::move_mount_onto(fd.as_fd(), rootfs)
                .ctx(|| format!("attach the file server's mount on {}", rootfs.display()))?,
            None => mount(
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
        mount_one(
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
        create_devices(root_fd.as_fd(), plan)?;
        dev_symlinks(root_fd.as_fd())?;
    }
    for d in deferred {
        let t = reopen(root_fd.as_fd(), &d.dest)?;
        remount_bind(&fd_path(t.as_fd()), MsFlags::MS_RDONLY).map_err(|e| {
            Error::field(
                format!("mounts[{}] ({})", d.index, d.dest.display()),
                e.to_string(),
            )
        })?;
    }
    Ok(())
}

fn open_dir(p: &Path) -> Result<OwnedFd> {
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

fn fd_path(fd: BorrowedFd<'_>) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

/// Relative form of an absolute container path ("/a/b" -> "a/b").
fn rel(p: &Path) -> String {
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
pub fn ensure_dir(root: BorrowedFd<'_>, path: &Path) -> Result<OwnedFd> {
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
pub fn ensure_file(root: BorrowedFd<'_>, path: &Path) -> Result<OwnedFd> {
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

/// A mount made read-write now and remounted read-only once the root is prepared, as runc
/// does for tmpfs and /dev (devices, /dev/pts and copied-up content go in first).
struct DeferredRo {
    /// The mount's index in the config.
    index: usize,
    dest: PathBuf,
}

#[allow(clippy::too_many_arguments)]
fn mount_one(
    root: BorrowedFd<'_>,
    index: usize,
    m: &Mount,
    opts: &MountOptions,
    detached: Option<OwnedFd>,
    plan: &RootfsPlan<'_>,
    label: Option<&str>,
    deferred: &mut Vec<DeferredRo>,
) -> Result<()> {
    let typ = m
        .typ()
        .as_deref()
        .unwrap_or(if opts.bind { "bind" } else { "none" });
    let dest = m.destination();
    if typ == "cgroup" || typ == "cgroup2" {
        mount_cgroup(root, dest, opts, plan)?;
        return after_mount(root, dest, opts);
    }
    let bind = opts.bind || typ == "bind";
    let source = m.source().clone().unwrap_or_else(|| PathBuf::from(typ));
    let is_dev = rel(dest) == "dev";
    // Read-only applied last for /dev and tmpfs, so what goes below them can be made.
    let defer_ro = opts.flags.contains(MsFlags::MS_RDONLY) && (is_dev || typ == "tmpfs");
    // `difference`, not `& !`: the latter drops bits nix does not name (MS_NOSYMFOLLOW).
    let flags = if defer_ro {
        opts.flags.difference(MsFlags::MS_RDONLY)
    } else {
        opts.flags
    };
    if bind {
        if opts.copy_symlink && detached.is_none() {
            if let Ok(target) = fs::read_link(&source) {
                return copy_symlink(root, dest, &target);
            }
        }
        let is_dir = match &detached {
            Some(fd) => nix::sys::stat::fstat(fd.as_raw_fd())
                .map(|st| st.st_mode & libc::S_IFMT == libc::S_IFDIR)
                .ctx(|| format!("stat bind source {}", source.display()))?,
            None => fs::metadata(&source)
                .ctx(|| format!("bind source {}", source.display()))?
                .is_dir(),
        };
        let target = if is_dir {
            ensure_dir(root, dest)?
        } else {
            ensure_file(root, dest)?
        };
        let tpath = fd_path(target.as_fd());
        match detached {
            Some(fd) => crate::detached::attach(fd.as_fd(), target.as_fd())
                .ctx(|| format!("attach {} on {}", source.display(), dest.display()))?,
            None => {
                let mut bflags = MsFlags::MS_BIND;
                if opts.recursive {
                    bflags |= MsFlags::MS_REC;
                }
                mount(Some(&source), &tpath, none(), bflags, none())
                    .ctx(|| format!("bind mount {} on {}", source.display(), dest.display()))?;
            }
        }
        let extra = flags.difference(MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_REC);
        if !extra.is_empty() {
            // Re-open: the mount just made hides what `target` pointed at.
            let t = reopen(root, dest)?;
            remount_bind(&fd_path(t.as_fd()), extra)?;
        }
    } else {
        if matches!(typ, "proc" | "sysfs") {
            refuse_non_directory(root, dest, typ)?;
        }
        // The image's directory, when there is one: its mode becomes the tmpfs root's
        // (as runc) and, with tmpcopyup, its content the tmpfs's.
        let under = if typ == "tmpfs" {
            sys::openat2(
                root,
                &rel(dest),
                libc::O_RDONLY | libc::O_DIRECTORY,
                0,
                sys::RESOLVE_IN_ROOT,
            )
            .ok()
        } else {
            None
        };
        let target = ensure_dir(root, dest)?;
        let tpath = fd_path(target.as_fd());
        let mut data = if matches!(typ, "proc" | "sysfs" | "mqueue" | "cgroup2") {
            opts.data_with_label(None)
        } else {
            opts.data_with_label(label)
        };
        if let Some(u) = &under {
            if !opts.has_mode() {
                let st = nix::sys::stat::fstat(u.as_raw_fd())
                    .ctx(|| format!("stat {} in the image", dest.display()))?;
                let mode = format!("mode={:o}", st.st_mode & 0o7777);
                data = Some(match data {
                    Some(d) => format!("{mode},{d}"),
                    None => mode,
                });
            }
        }
        let flags = flags.difference(MsFlags::MS_REMOUNT);
        match mount(Some(&source), &tpath, Some(typ), flags, data.as_deref()) {
            Ok(()) => {}
            Err(nix::errno::Errno::EPERM) | Err(nix::errno::Errno::EBUSY)
                if matches!(typ, "sysfs" | "mqueue") =>
            {
                // In a user namespace without its own network (sysfs) or IPC (mqueue) namespace
                // the kernel refuses a new instance: bind the host's, as runc does.
                tracing::debug!(
                    "{typ} refused in this namespace; binding the host's {}",
                    dest.display()
                );
                mount(
                    Some(dest),
                    &tpath,
                    none(),
                    MsFlags::MS_BIND | MsFlags::MS_REC,
                    none(),
                )
                .ctx(|| format!("bind the host's {} as {typ}", dest.display()))?;
                let t = reopen(root, dest)?;
                remount_bind(&fd_path(t.as_fd()), flags | MsFlags::MS_RDONLY)?;
            }
            Err(e) => return Err(Error::nix(format!("mount {typ} on {}", dest.display()), e)),
        }
        if opts.tmpcopyup {
            if let Some(u) = &under {
                let new = sys::openat2(
                    root,
                    &rel(dest),
                    libc::O_RDONLY | libc::O_DIRECTORY,
                    0,
                    sys::RESOLVE_IN_ROOT,
                )
                .ctx(|| format!("open the tmpfs on {}", dest.display()))?;
                crate::tmpcopyup::copy_up(
                    u.as_fd(),
                    new.as_fd(),
                    opts.has_mode(),
                    &dest.display().to_string(),
                )?;
            }
        }
    }
    if defer_ro {
        deferred.push(DeferredRo {
            index,
            dest: dest.to_path_buf(),
        });
    }
    after_mount(root, dest, opts)
}

/// Recursive attributes and propagation, applied once the mount is made.
fn after_mount(root: BorrowedFd<'_>, dest: &Path, opts: &MountOptions) -> Result<()> {
    if !opts.rec_attrs.is_empty() {
        let t = reopen(root, dest)?;
        let (set, clr) = opts.rec_attrs.set_clr();
        crate::detached::set_attrs(t.as_fd(), true, set, clr, None).ctx(|| {
            format!(
                "set recursive attributes of {} (mount_setattr)",
                dest.display()
            )
        })?;
    }
    if !opts.propagation.is_empty() {
        let t = reopen(root, dest)?;
        for p in &opts.propagation {
            mount(none(), &fd_path(t.as_fd()), none(), *p, none())
                .ctx(|| format!("set propagation of {}", dest.display()))?;
        }
    }
    Ok(())
}

/// proc and sysfs go only on an ordinary directory: never through a symlink of the image.
fn refuse_non_directory(root: BorrowedFd<'_>, dest: &Path, typ: &str) -> Result<()> {
    match sys::openat2(
        root,
        &rel(dest),
        libc::O_PATH | libc::O_NOFOLLOW,
        0,
        sys::RESOLVE_IN_ROOT,
    ) {
        Ok(fd) => {
            let st = nix::sys::stat::fstat(fd.as_raw_fd())
                .ctx(|| format!("stat {} in the container", dest.display()))?;
            let kind = st.st_mode & libc::S_IFMT;
            if kind != libc::S_IFDIR {
                let what = if kind == libc::S_IFLNK {
                    "a symlink"
                } else {
                    "not a directory"
                };
                return Err(Error::Usage(format!(
                    "{typ} must be mounted on an ordinary directory; {} in the root is {what}",
                    dest.display()
                )));
            }
            Ok(())
        }
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        Err(e) => Err(Error::sys(
            format!("open {} in the container", dest.display()),
            e,
        )),
    }
}

/// `copy-symlink`: the bind source is a symlink, made again at the destination.
fn copy_symlink(root: BorrowedFd<'_>, dest: &Path, target: &Path) -> Result<()> {
    let parent = ensure_dir(root, dest.parent().unwrap_or(Path::new("/")))?;
    let name = dest
        .file_name()
        .ok_or_else(|| Error::Usage(format!("{} has no file name", dest.display())))?;
    match nix::unistd::unlinkat(
        Some(parent.as_raw_fd()),
        name,
        nix::unistd::UnlinkatFlags::NoRemoveDir,
    ) {
        Ok(()) | Err(nix::errno::Errno::ENOENT) => {}
        Err(e) => {
            return Err(Error::nix(
                format!("replace {} by a symlink", dest.display()),
                e,
            ))
        }
    }
    nix::unistd::symlinkat(target, Some(parent.as_raw_fd()), name)
        .ctx(|| format!("symlink {} -> {}", dest.display(), target.display()))
}

fn reopen(root: BorrowedFd<'_>, dest: &Path) -> Result<OwnedFd> {
    sys::openat2(root, &rel(dest), libc::O_PATH, 0, sys::RESOLVE_IN_ROOT)
        .ctx(|| format!("open {} in the container", dest.display()))
}

/// Remounts a bind mount with `flags`, keeping the flags the kernel locked on it.
fn remount_bind(path: &Path, flags: MsFlags) -> Result<()> {
    let locked = statvfs_flags(path);
    mount(
        none(),
        path,
        none(),
        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | flags | locked,
        none(),
    )
    .ctx(|| format!("remount {} with {flags:?}", path.display()))
}

fn statvfs_flags(path: &Path) -> MsFlags {
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

/// A cgroup hierarchy mounted on the host.
#[derive(Debug, Clone)]
struct Hierarchy {
    mountpoint: PathBuf,
    v2: bool,
    /// The v1 controllers / name= of the hierarchy, as in its super options.
    subsystems: Vec<String>,
}

fn host_hierarchies() -> Vec<Hierarchy> {
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for line in info.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let l: Vec<&str> = left.split(' ').collect();
        let r: Vec<&str> = right.split(' ').collect();
        if l.len() < 5 || r.len() < 3 {
            continue;
        }
        let mp = PathBuf::from(l[4]);
        match r[0] {
            "cgroup2" => out.push(Hierarchy {
                mountpoint: mp,
                v2: true,
                subsystems: vec![],
            }),
            "cgroup" => {
                let subs = r[2]
                    .split(',')
                    .filter(|o| {
                        !matches!(*o, "rw" | "ro")
                            && !o.starts_with("release_agent")
                            && *o != "clone_children"
                            && *o != "noprefix"
                            && *o != "xattr"
                    })
                    .map(str::to_string)
                    .collect();
                out.push(Hierarchy {
                    mountpoint: mp,
                    v2: false,
                    subsystems: subs,
                });
            }
            _ => {}
        }
    }
    out
}

/// This process's cgroup path in the hierarchy with the given subsystems ("" = the v2 one).
fn own_cgroup(h: &Hierarchy) -> Option<PathBuf> {
    let data = fs::read_to_string("/proc/self/cgroup").ok()?;
    for line in data.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, ctrls, path) = (parts.next()?, parts.next()?, parts.next()?);
        let matches = if h.v2 {
            ctrls.is_empty()
        } else {
            let mut a: Vec<&str> = ctrls.split(',').collect();
            let mut b: Vec<&str> = h.subsystems.iter().map(String::as_str).collect();
            a.sort();
            b.sort();
            a == b
        };
        if matches {
            return Some(PathBuf::from(path));
        }
    }
    None
}

fn mount_cgroup(
    root: BorrowedFd<'_>,
    dest: &Path,
    opts: &MountOptions,
    plan: &RootfsPlan<'_>,
) -> Result<()> {
    let hs = host_hierarchies();
    let flags = opts.flags.difference(MsFlags::MS_REMOUNT)
        | MsFlags::MS_NOSUID
        | MsFlags::MS_NODEV
        | MsFlags::MS_NOEXEC;
    let base = Path::new("/sys/fs/cgroup");
    let v2_only = hs.iter().any(|h| h.v2 && h.mountpoint == base);
    let target = ensure_dir(root, dest)?;
    if v2_only {
        let h = hs.iter().find(|h| h.v2 && h.mountpoint == base).cloned();
        return mount_hierarchy(
            root,
            dest,
            &fd_path(target.as_fd()),
            h.as_ref(),
            flags,
            plan,
        );
    }
    // v1 or hybrid: a tmpfs holding one directory per hierarchy.
    mount(
        Some("tmpfs"),
        &fd_path(target.as_fd()),
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("mode=755"),
    )
    .ctx(|| format!("mount tmpfs for cgroups on {}", dest.display()))?;
    for h in hs
        .iter()
        .filter(|h| h.mountpoint.starts_with(base) && h.mountpoint != base)
    {
        let Some(name) = h.mountpoint.file_name() else {
            continue;
        };
        let sub = dest.join(name);
        let t = ensure_dir(root, &sub)?;
        mount_hierarchy(root, &sub, &fd_path(t.as_fd()), Some(h), flags, plan)?;
    }
    if flags.contains(MsFlags::MS_RDONLY) {
        let t = reopen(root, dest)?;
        remount_bind(
            &fd_path(t.as_fd()),
            MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        )?;
    }
    Ok(())
}

fn mount_hierarchy(
    root: BorrowedFd<'_>,
    dest: &Path,
    target: &Path,
    h: Option<&Hierarchy>,
    flags: MsFlags,
    plan: &RootfsPlan<'_>,
) -> Result<()> {
    let Some(h) = h else { return Ok(()) };
    if plan.new_cgroupns {
        let (typ, data) = if h.v2 {
            ("cgroup2", None)
        } else {
            ("cgroup", Some(h.subsystems.join(",")))
        };
        match mount(Some(typ), target, Some(typ), flags, data.as_deref()) {
            Ok(()) => return Ok(()),
            Err(e) => tracing::debug!(
                "mount {typ} {:?} refused ({e}); binding the container's group instead",
                h.subsystems
            ),
        }
    }
    let own = own_cgroup(h).unwrap_or_default();
    let src = h.mountpoint.join(own.strip_prefix("/").unwrap_or(&own));
    mount(
        Some(&src),
        target,
        none(),
        MsFlags::MS_BIND | MsFlags::MS_REC,
        none(),
    )
    .ctx(|| format!("bind cgroup {}", src.display()))?;
    // Re-open by name: `target` still names the directory under the new mount.
    let t = reopen(root, dest)?;
    remount_bind(&fd_path(t.as_fd()), flags)
}

const DEFAULT_DEVICES: &[(&str, u64, u64)] = &[
    ("/dev/null", 1, 3),
    ("/dev/zero", 1, 5),
    ("/dev/full", 1, 7),
    ("/dev/random", 1, 8),
    ("/dev/urandom", 1, 9),
    ("/dev/tty", 5, 0),
];

fn create_devices(root: BorrowedFd<'_>, plan: &RootfsPlan<'_>) -> Result<()> {
    let mut devs: Vec<(PathBuf, SFlag, u64, u64, u32, u32, u32)> = DEFAULT_DEVICES
        .iter()
        .map(|(p, ma, mi)| (PathBuf::from(p), SFlag::S_IFCHR, *ma, *mi, 0o666, 0, 0))
        .collect();
    let cfg: Vec<LinuxDevice> = plan
        .spec
        .linux()
        .as_ref()
        .and_then(|l| l.devices().clone())
        .unwrap_or_default();
    for (i, d) in cfg.iter().enumerate() {
        let kind = match d.typ() {
            LinuxDeviceType::C | LinuxDeviceType::U => SFlag::S_IFCHR,
            LinuxDeviceType::B => SFlag::S_IFBLK,
            LinuxDeviceType::P => SFlag::S_IFIFO,
            LinuxDeviceType::A => {
                return Err(Error::field(
                    format!("linux.devices[{i}].type"),
                    "\"a\" is not a device node type",
                ))
            }
        };
        if !d.path().starts_with("/dev") {
            return Err(Error::field(
                format!("linux.devices[{i}].path"),
                format!("{} is not under /dev", d.path().display()),
            ));
        }
        devs.retain(|x| x.0 != *d.path());
        devs.push((
            d.path().clone(),
            kind,
            d.major() as u64,
            d.minor() as u64,
            d.file_mode().unwrap_or(0o666),
            d.uid().unwrap_or(0),
            d.gid().unwrap_or(0),
        ));
    }
    for (path, kind, major, minor, mode, uid, gid) in devs {
        let parent = ensure_dir(root, path.parent().unwrap_or(Path::new("/dev")))?;
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string();
        let _ = nix::unistd::unlinkat(
            Some(parent.as_raw_fd()),
            name.as_str(),
            nix::unistd::UnlinkatFlags::NoRemoveDir,
        );
        let dev = nix::sys::stat::makedev(major, minor);
        let made = if plan.new_userns {
            Err(nix::errno::Errno::EPERM)
        } else {
            nix::sys::stat::mknodat(
                Some(parent.as_raw_fd()),
                name.as_str(),
                kind,
                Mode::from_bits_truncate(mode & 0o7777),
                dev,
            )
        };
        match made {
            Ok(()) => {
                nix::unistd::fchownat(
                    Some(parent.as_raw_fd()),
                    name.as_str(),
                    Some(uid.into()),
                    Some(gid.into()),
                    nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
                )
                .ctx(|| format!("chown {}", path.display()))?;
                nix::sys::stat::fchmodat(
                    Some(parent.as_raw_fd()),
                    name.as_str(),
                    Mode::from_bits_truncate(mode & 0o7777),
                    nix::sys::stat::FchmodatFlags::FollowSymlink,
                )
                .ctx(|| format!("chmod {}", path.display()))?;
            }
            Err(nix::errno::Errno::EPERM) => {
                // No mknod in a user namespace: bind the host's node, as runc does.
                let t = ensure_file(root, &path)?;
                mount(
                    Some(&path),
                    &fd_path(t.as_fd()),
                    none(),
                    MsFlags::MS_BIND,
                    none(),
                )
                .ctx(|| format!("bind the host's {}", path.display()))?;
            }
            Err(e) => return Err(Error::nix(format!("mknod {}", path.display()), e)),
        }
    }
    Ok(())
}

fn dev_symlinks(root: BorrowedFd<'_>) -> Result<()> {
    let dev = ensure_dir(root, Path::new("/dev"))?;
    let mut links = vec![
        ("/proc/self/fd", "fd"),
        ("/proc/self/fd/0", "stdin"),
        ("/proc/self/fd/1", "stdout"),
        ("/proc/self/fd/2", "stderr"),
    ];
    if Path::new("/proc/kcore").exists() {
        links.push(("/proc/kcore", "core"));
    }
    for (target, name) in links {
        match nix::unistd::symlinkat(target, Some(dev.as_raw_fd()), name) {
            Ok(()) | Err(nix::errno::Errno::EEXIST) => {}
            Err(e) => return Err(Error::nix(format!("symlink /dev/{name}"), e)),
        }
    }
    // /dev/ptmx points into the container's own devpts instance.
    if sys::openat2(root, "dev/pts/ptmx", libc::O_PATH, 0, sys::RESOLVE_IN_ROOT).is_ok() {
        let _ = nix::unistd::unlinkat(
            Some(dev.as_raw_fd()),
            "ptmx",
            nix::unistd::UnlinkatFlags::NoRemoveDir,
        );
        nix::unistd::symlinkat("pts/ptmx", Some(dev.as_raw_fd()), "ptmx")
            .ctx(|| "symlink /dev/ptmx".into())?;
    }
    Ok(())
}

/// Makes the prepared root the process's root: pivot_root, or MS_MOVE + chroot with
/// `no_pivot`; without a mount namespace of its own (`own_mount_ns` false), chroot alone,
/// as runc (pivot_root and MS_MOVE would change the caller's mount table).
pub fn enter(rootfs: &Path, no_pivot: bool, own_mount_ns: bool) -> Result<()> {
    nix::unistd::chdir(rootfs).ctx(|| format!("chdir {}", rootfs.display()))?;
    if !own_mount_ns {
        nix::unistd::chroot(".").ctx(|| format!("chroot into {}", rootfs.display()))?;
    } else if no_pivot {
        mount(Some(rootfs), "/", none(), MsFlags::MS_MOVE, none())
            .ctx(|| "move the root onto /".into())?;
        nix::unistd::chroot(".").ctx(|| "chroot".into())?;
    } else {
        let old = open_dir(Path::new("/"))?;
        let new = open_dir(rootfs)?;
        nix::unistd::pivot_root(".", ".")
            .ctx(|| format!("pivot_root into {}", rootfs.display()))?;
        // The old root now sits on top of the new one at "."; detach it.
        nix::unistd::fchdir(old.as_raw_fd()).ctx(|| "fchdir old root".into())?;
        mount(
            none(),
            ".",
            none(),
            MsFlags::MS_SLAVE | MsFlags::MS_REC,
            none(),
        )
        .ctx(|| "make old root a slave".into())?;
        umount2(".", MntFlags::MNT_DETACH).ctx(|| "detach old root".into())?;
        nix::unistd::fchdir(new.as_raw_fd()).ctx(|| "fchdir new root".into())?;
    }
    nix::unistd::chdir("/").ctx(|| "chdir /".into())?;
    Ok(())
}

/// After pivot_root: sysctls, masked and read-only paths, read-only root, root propagation.
pub fn finish(spec: &Spec) -> Result<()> {
    let Some(linux) = spec.linux().as_ref() else {
        return Ok(());
    };
    for (k, v) in linux.sysctl().iter().flatten() {
        if k.contains("..") || k.contains('/') && k.split('/').any(|c| c == "..") {
            return Err(Error::field(
                format!("linux.sysctl.{k}"),
                "not a sysctl name",
            ));
        }
        let p = PathBuf::from("/proc/sys").join(k.replace('.', "/"));
        fs::write(&p, v.as_bytes()).map_err(|e| {
            Error::field(
                format!("linux.sysctl.{k}"),
                format!("write {}: {e}", p.display()),
            )
        })?;
    }
    for p in linux.readonly_paths().iter().flatten() {
        let path = Path::new(p);
        match mount(
            Some(path),
            path,
            none(),
            MsFlags::MS_BIND | MsFlags::MS_REC,
            none(),
        ) {
            Ok(()) => remount_bind(
                path,
                MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            )?,
            Err(nix::errno::Errno::ENOENT) => {}
            Err(e) => return Err(Error::nix(format!("linux.readonlyPaths: bind {p}"), e)),
        }
    }
    for p in linux.masked_paths().iter().flatten() {
        let path = Path::new(p);
        let Ok(meta) = fs::symlink_metadata(path) else {
            continue;
        };
        let r = if meta.is_dir() {
            mount(
                Some("tmpfs"),
                path,
                Some("tmpfs"),
                MsFlags::MS_RDONLY,
                Some("size=0"),
            )
        } else {
            mount(Some("/dev/null"), path, none(), MsFlags::MS_BIND, none())
        };
        if let Err(e) = r {
            return Err(Error::nix(format!("linux.maskedPaths: mask {p}"), e));
        }
    }
    if spec
        .root()
        .as_ref()
        .and_then(|r| r.readonly())
        .unwrap_or(false)
    {
        remount_bind(Path::new("/"), MsFlags::MS_RDONLY)?;
    }
    if let Some(p) = linux
        .rootfs_propagation()
        .as_deref()
        .and_then(propagation_flags)
    {
        mount(none(), "/", none(), p, none()).ctx(|| "set linux.rootfsPropagation on /".into())?;
    }
    Ok(())
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

    #[test]
    fn hierarchies_are_found_here() {
        let hs = host_hierarchies();
        // Every Linux host with cgroups mounted lists at least one hierarchy.
        if Path::new("/sys/fs/cgroup").exists() {
            assert!(!hs.is_empty());
        }
    }
}
