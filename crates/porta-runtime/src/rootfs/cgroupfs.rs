//! The cgroup file system inside the container: the cgroup2 hierarchy, or a tmpfs with
//! one directory per v1 hierarchy; a new instance in a new cgroup namespace, else a bind
//! of the container's own group.

use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;

use nix::mount::MsFlags;

use porta_cgroups::{CgroupVersion, Hierarchy};

use crate::error::{Context, Result};
use crate::mounts::MountOptions;

use super::*;

/// The host's cgroup hierarchies as porta-cgroups finds them in /proc/self/mountinfo and
/// /proc/self/cgroup (its one parser: escaped mount points are undone), or none.
pub(super) fn host_hierarchies() -> Vec<Hierarchy> {
    match porta_cgroups::detect() {
        Ok(setup) => setup.hierarchies,
        Err(e) => {
            tracing::debug!("no cgroup hierarchy found: {e}");
            Vec::new()
        }
    }
}

fn is_v2(h: &Hierarchy) -> bool {
    h.version == CgroupVersion::V2
}

/// Mounts the cgroup file system on `dest`, for the host's hierarchies.
pub(super) fn mount_cgroup(
    k: &dyn Kernel,
    root: BorrowedFd<'_>,
    dest: &Path,
    opts: &MountOptions,
    plan: &RootfsPlan<'_>,
) -> Result<()> {
    mount_cgroup_in(k, root, dest, opts, plan, &host_hierarchies())
}

/// Mounts the cgroup file system on `dest` for the hierarchies `hs`.
pub(super) fn mount_cgroup_in(
    k: &dyn Kernel,
    root: BorrowedFd<'_>,
    dest: &Path,
    opts: &MountOptions,
    plan: &RootfsPlan<'_>,
    hs: &[Hierarchy],
) -> Result<()> {
    let flags = opts.flags.difference(MsFlags::MS_REMOUNT)
        | MsFlags::MS_NOSUID
        | MsFlags::MS_NODEV
        | MsFlags::MS_NOEXEC;
    let base = Path::new("/sys/fs/cgroup");
    let v2_only = hs.iter().any(|h| is_v2(h) && h.mount_point == base);
    let target = ensure_dir(root, dest)?;
    if v2_only {
        let h = hs
            .iter()
            .find(|h| is_v2(h) && h.mount_point == base)
            .cloned();
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
        .filter(|h| h.mount_point.starts_with(base) && h.mount_point != base)
    {
        let Some(name) = h.mount_point.file_name() else {
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
        let (typ, data) = if is_v2(h) {
            ("cgroup2", None)
        } else {
            ("cgroup", Some(h.controllers.join(",")))
        };
        match k.mnt(Some(typ), target, Some(typ), flags, data.as_deref()) {
            Ok(()) => return Ok(()),
            Err(e) => tracing::debug!(
                "mount {typ} {:?} refused ({e}); binding the container's group instead",
                h.controllers
            ),
        }
    }
    let own = &h.own_path;
    let src = h.mount_point.join(own.strip_prefix("/").unwrap_or(own));
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
