//! The root bind of a container without a mount namespace of its own.

use std::fs;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};

use crate::error::{Context, Result};
use crate::sys;

use super::*;

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
