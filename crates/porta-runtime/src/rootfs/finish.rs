//! After pivot_root: sysctls, read-only and masked paths, a read-only root, propagation.

use std::fs;
use std::path::{Path, PathBuf};

use nix::mount::MsFlags;
use oci_spec::runtime::Spec;

use crate::error::{Context, Error, Result};
use crate::mounts::propagation_flags;

use super::*;

/// After pivot_root: sysctls, masked and read-only paths, read-only root, root propagation.
pub(crate) fn finish(k: &dyn Kernel, spec: &Spec) -> Result<()> {
    let Some(linux) = spec.linux().as_ref() else {
        return Ok(());
    };
    for (key, v) in linux.sysctl().iter().flatten() {
        if key.contains("..") || key.contains('/') && key.split('/').any(|c| c == "..") {
            return Err(Error::field(
                format!("linux.sysctl.{key}"),
                "not a sysctl name",
            ));
        }
        let p = PathBuf::from("/proc/sys").join(key.replace('.', "/"));
        fs::write(&p, v.as_bytes()).map_err(|e| {
            Error::field(
                format!("linux.sysctl.{key}"),
                format!("write {}: {e}", p.display()),
            )
        })?;
    }
    for p in linux.readonly_paths().iter().flatten() {
        let path = Path::new(p);
        match k.mnt(
            Some(path),
            path,
            none(),
            MsFlags::MS_BIND | MsFlags::MS_REC,
            none(),
        ) {
            Ok(()) => remount_bind(
                k,
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
            k.mnt(
                Some("tmpfs"),
                path,
                Some("tmpfs"),
                MsFlags::MS_RDONLY,
                Some("size=0"),
            )
        } else {
            k.mnt(Some("/dev/null"), path, none(), MsFlags::MS_BIND, none())
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
        remount_bind(k, Path::new("/"), MsFlags::MS_RDONLY)?;
    }
    if let Some(p) = linux
        .rootfs_propagation()
        .as_deref()
        .and_then(propagation_flags)
    {
        k.mnt(none(), "/", none(), p, none())
            .ctx(|| "set linux.rootfsPropagation on /".into())?;
    }
    Ok(())
}
