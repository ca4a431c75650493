//! /dev inside the container: the default and configured device nodes (made, or bound
//! from the host in a user namespace) and the standard symlinks.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::path::{Path, PathBuf};

use nix::mount::MsFlags;
use nix::sys::stat::{Mode, SFlag};
use oci_spec::runtime::{LinuxDevice, LinuxDeviceType};

use crate::error::{Context, Error, Result};
use crate::sys;

use super::*;

pub(super) const DEFAULT_DEVICES: &[(&str, u64, u64)] = &[
    ("/dev/null", 1, 3),
    ("/dev/zero", 1, 5),
    ("/dev/full", 1, 7),
    ("/dev/random", 1, 8),
    ("/dev/urandom", 1, 9),
    ("/dev/tty", 5, 0),
];

pub(super) fn create_devices(
    k: &dyn Kernel,
    root: BorrowedFd<'_>,
    plan: &RootfsPlan<'_>,
) -> Result<()> {
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
            k.mknodat(
                parent.as_fd(),
                name.as_str(),
                kind,
                Mode::from_bits_truncate(mode & 0o7777),
                dev,
            )
        };
        match made {
            Ok(()) => {
                k.fchownat(parent.as_fd(), name.as_str(), uid, gid)
                    .ctx(|| format!("chown {}", path.display()))?;
                k.fchmodat(
                    parent.as_fd(),
                    name.as_str(),
                    Mode::from_bits_truncate(mode & 0o7777),
                )
                .ctx(|| format!("chmod {}", path.display()))?;
            }
            Err(nix::errno::Errno::EPERM) => {
                // No mknod in a user namespace: bind the host's node, as runc does.
                let t = ensure_file(root, &path)?;
                k.mnt(
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

pub(super) fn dev_symlinks(k: &dyn Kernel, root: BorrowedFd<'_>) -> Result<()> {
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
        match k.symlinkat(Path::new(target), dev.as_fd(), Path::new(name)) {
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
        k.symlinkat(Path::new("pts/ptmx"), dev.as_fd(), Path::new("ptmx"))
            .ctx(|| "symlink /dev/ptmx".into())?;
    }
    Ok(())
}
