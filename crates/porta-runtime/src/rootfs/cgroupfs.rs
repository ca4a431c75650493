//! The cgroup file system inside the container: the cgroup2 hierarchy, or a tmpfs with
//! one directory per v1 hierarchy; a new instance in a new cgroup namespace, else a bind
//! of the container's own group.

use std::fs;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};

use nix::mount::MsFlags;

use crate::error::{Context, Result};
use crate::mounts::MountOptions;

use super::*;

/// A cgroup hierarchy mounted on the host.
#[derive(Debug, Clone)]
pub(super) struct Hierarchy {
    mountpoint: PathBuf,
    v2: bool,
    /// The v1 controllers / name= of the hierarchy, as in its super options.
    subsystems: Vec<String>,
}

pub(super) fn host_hierarchies() -> Vec<Hierarchy> {
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
pub(super) fn own_cgroup(h: &Hierarchy) -> Option<PathBuf> {
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

pub(super) fn mount_cgroup(
    k: &dyn Kernel,
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
            k,
            root,
            dest,
            &fd_path(target.as_fd()),
            h.as_ref(),
            flags,
            plan,
        );
    }
    // v1 or hybrid: a tmpfs holding one directory per hierarchy.
    k.mnt(
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
        mount_hierarchy(k, root, &sub, &fd_path(t.as_fd()), Some(h), flags, plan)?;
    }
    if flags.contains(MsFlags::MS_RDONLY) {
        let t = reopen(root, dest)?;
        remount_bind(
            k,
            &fd_path(t.as_fd()),
            MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        )?;
    }
    Ok(())
}

pub(super) fn mount_hierarchy(
    k: &dyn Kernel,
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
        match k.mnt(Some(typ), target, Some(typ), flags, data.as_deref()) {
            Ok(()) => return Ok(()),
            Err(e) => tracing::debug!(
                "mount {typ} {:?} refused ({e}); binding the container's group instead",
                h.subsystems
            ),
        }
    }
    let own = own_cgroup(h).unwrap_or_default();
    let src = h.mountpoint.join(own.strip_prefix("/").unwrap_or(&own));
    k.mnt(
        Some(&src),
        target,
        none(),
        MsFlags::MS_BIND | MsFlags::MS_REC,
        none(),
    )
    .ctx(|| format!("bind cgroup {}", src.display()))?;
    // Re-open by name: `target` still names the directory under the new mount.
    let t = reopen(root, dest)?;
    remount_bind(k, &fd_path(t.as_fd()), flags)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hierarchies_are_found_here() {
        let hs = host_hierarchies();
        // Every Linux host with cgroups mounted lists at least one hierarchy.
        if Path::new("/sys/fs/cgroup").exists() {
            assert!(!hs.is_empty());
        }
    }
}
