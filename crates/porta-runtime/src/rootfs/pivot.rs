//! Entering the prepared root: pivot_root, MS_MOVE + chroot, or chroot alone.

use std::path::Path;

use nix::mount::{MntFlags, MsFlags};

use crate::error::{Context, Result};

use super::*;

/// Makes the prepared root the process's root: pivot_root, or MS_MOVE + chroot with
/// `no_pivot`; without a mount namespace of its own (`own_mount_ns` false), chroot alone,
/// as runc (pivot_root and MS_MOVE would change the caller's mount table).
pub(crate) fn enter(
    k: &dyn Kernel,
    rootfs: &Path,
    no_pivot: bool,
    own_mount_ns: bool,
) -> Result<()> {
    k.chdir(rootfs)
        .ctx(|| format!("chdir {}", rootfs.display()))?;
    if !own_mount_ns {
        k.chroot(Path::new("."))
            .ctx(|| format!("chroot into {}", rootfs.display()))?;
    } else if no_pivot {
        k.mnt(Some(rootfs), "/", none(), MsFlags::MS_MOVE, none())
            .ctx(|| "move the root onto /".into())?;
        k.chroot(Path::new(".")).ctx(|| "chroot".into())?;
    } else {
        let old = open_dir(Path::new("/"))?;
        let new = open_dir(rootfs)?;
        k.pivot_root(Path::new("."), Path::new("."))
            .ctx(|| format!("pivot_root into {}", rootfs.display()))?;
        // The old root now sits on top of the new one at "."; detach it.
        k.fchdir(old.as_fd()).ctx(|| "fchdir old root".into())?;
        k.mnt(
            none(),
            ".",
            none(),
            MsFlags::MS_SLAVE | MsFlags::MS_REC,
            none(),
        )
        .ctx(|| "make old root a slave".into())?;
        k.umnt(".", MntFlags::MNT_DETACH)
            .ctx(|| "detach old root".into())?;
        k.fchdir(new.as_fd()).ctx(|| "fchdir new root".into())?;
    }
    k.chdir(Path::new("/")).ctx(|| "chdir /".into())?;
    Ok(())
}
