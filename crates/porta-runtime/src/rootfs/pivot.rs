//! Entering the prepared root: pivot_root, MS_MOVE + chroot, or chroot alone.

use std::os::fd::AsRawFd;
use std::path::Path;

use nix::mount::{mount, umount2, MntFlags, MsFlags};

use crate::error::{Context, Result};

use super::*;

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
