//! The config's mounts, made beneath the container's root before pivot_root.

use std::fs;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::mount::MsFlags;
use oci_spec::runtime::Mount;

use crate::error::{Context, Error, Result};
use crate::mounts::MountOptions;
use crate::sys;

use super::*;

/// A mount made read-write now and remounted read-only once the root is prepared, as runc
/// does for tmpfs and /dev (devices, /dev/pts and copied-up content go in first).
pub(super) struct DeferredRo {
    /// The mount's index in the config.
    pub(super) index: usize,
    pub(super) dest: PathBuf,
}

#[allow(clippy::too_many_arguments)]
pub(super) fn mount_one(
    k: &dyn Kernel,
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
        super::cgroupfs::mount_cgroup(k, root, dest, opts, plan)?;
        return after_mount(k, root, dest, opts);
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
                return copy_symlink(k, root, dest, &target);
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
            Some(fd) => k
                .attach(fd.as_fd(), target.as_fd())
                .ctx(|| format!("attach {} on {}", source.display(), dest.display()))?,
            None => {
                let mut bflags = MsFlags::MS_BIND;
                if opts.recursive {
                    bflags |= MsFlags::MS_REC;
                }
                k.mnt(Some(&source), &tpath, none(), bflags, none())
                    .ctx(|| format!("bind mount {} on {}", source.display(), dest.display()))?;
            }
        }
        let extra = flags.difference(MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_REC);
        if !extra.is_empty() {
            // Re-open: the mount just made hides what `target` pointed at.
            let t = reopen(root, dest)?;
            remount_bind(k, &fd_path(t.as_fd()), extra)?;
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
        match k.mnt(Some(&source), &tpath, Some(typ), flags, data.as_deref()) {
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
                k.mnt(
                    Some(dest),
                    &tpath,
                    none(),
                    MsFlags::MS_BIND | MsFlags::MS_REC,
                    none(),
                )
                .ctx(|| format!("bind the host's {} as {typ}", dest.display()))?;
                let t = reopen(root, dest)?;
                remount_bind(k, &fd_path(t.as_fd()), flags | MsFlags::MS_RDONLY)?;
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
    after_mount(k, root, dest, opts)
}

/// Recursive attributes and propagation, applied once the mount is made.
pub(super) fn after_mount(
    k: &dyn Kernel,
    root: BorrowedFd<'_>,
    dest: &Path,
    opts: &MountOptions,
) -> Result<()> {
    if !opts.rec_attrs.is_empty() {
        let t = reopen(root, dest)?;
        let (set, clr) = opts.rec_attrs.set_clr();
        k.mount_setattr(t.as_fd(), true, set, clr).ctx(|| {
            format!(
                "set recursive attributes of {} (mount_setattr)",
                dest.display()
            )
        })?;
    }
    if !opts.propagation.is_empty() {
        let t = reopen(root, dest)?;
        for p in &opts.propagation {
            k.mnt(none(), &fd_path(t.as_fd()), none(), *p, none())
                .ctx(|| format!("set propagation of {}", dest.display()))?;
        }
    }
    Ok(())
}

/// proc and sysfs go only on an ordinary directory: never through a symlink of the image.
pub(super) fn refuse_non_directory(root: BorrowedFd<'_>, dest: &Path, typ: &str) -> Result<()> {
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
pub(super) fn copy_symlink(
    k: &dyn Kernel,
    root: BorrowedFd<'_>,
    dest: &Path,
    target: &Path,
) -> Result<()> {
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
    k.symlinkat(target, parent.as_fd(), Path::new(name))
        .ctx(|| format!("symlink {} -> {}", dest.display(), target.display()))
}
