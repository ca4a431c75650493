//! Bind-mount sources opened before the container's process enters its namespaces, as
//! detached mounts (`open_tree(OPEN_TREE_CLONE)`), idmapped when the mount asks for it
//! (`idmap`, `ridmap`, `uidMappings`/`gidMappings`), and the mount-API calls they need.
//!
//! Opening a source on the host side means a source the container's user may not reach
//! (a directory only the host's root can walk) still mounts, as with runc; an idmapped
//! mount needs a user namespace holding the mapping, made here, on the host side, where
//! the mapping's host ids are valid.

use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;

use oci_spec::runtime::{LinuxIdMapping, Mount, Spec};
use porta_sys::mount_api;
use porta_sys::proc::MountInfo;

use crate::error::{Error, Result};
use crate::mounts::MountOptions;

/// A process parked in a new user namespace; killed and reaped on drop.
struct Parked {
    pid: nix::unistd::Pid,
    /// Closing it lets the child exit.
    hold: Option<OwnedFd>,
}

impl Drop for Parked {
    fn drop(&mut self) {
        drop(self.hold.take());
        let _ = nix::sys::signal::kill(self.pid, nix::sys::signal::Signal::SIGKILL);
        let _ = nix::sys::wait::waitpid(self.pid, None);
    }
}

fn map_lines(m: &[LinuxIdMapping]) -> String {
    m.iter()
        .map(|x| format!("{} {} {}\n", x.container_id(), x.host_id(), x.size()))
        .collect()
}

/// A user namespace with the given mappings, as an fd (the namespace lives as long as it).
/// The caller must be single-threaded (it forks).
pub fn userns_with(uids: &[LinuxIdMapping], gids: &[LinuxIdMapping]) -> Result<OwnedFd> {
    let (r, w) = nix::unistd::pipe().map_err(|e| Error::nix("pipe for a user namespace", e))?;
    let pid = match crate::sys::clone_into(libc::CLONE_NEWUSER as u64)
        .map_err(|e| Error::sys("clone a process into a new user namespace", e))?
    {
        crate::sys::Forked::Child => {
            drop(w);
            let mut b = [0u8; 1];
            // Parked until the parent closes its end (or dies).
            let _ = nix::unistd::read(r.as_raw_fd(), &mut b);
            crate::sys::exit_now(0)
        }
        crate::sys::Forked::Parent(pid) => pid,
    };
    drop(r);
    let parked = Parked {
        pid: nix::unistd::Pid::from_raw(pid),
        hold: Some(w),
    };
    for (file, m) in [("uid_map", uids), ("gid_map", gids)] {
        let p = format!("/proc/{pid}/{file}");
        std::fs::write(&p, map_lines(m)).map_err(|e| Error::sys(format!("write {p}"), e))?;
    }
    let ns = std::fs::File::open(format!("/proc/{pid}/ns/user"))
        .map_err(|e| Error::sys("open the mapping user namespace", e))?;
    drop(parked);
    Ok(ns.into())
}

/// Whether `source` lies inside the container's root: mounted in config order, from inside.
fn inside_root(source: &Path, rootfs: &Path) -> bool {
    let canon = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    canon(source).starts_with(canon(rootfs))
}

/// Whether anything is mounted below `path` in the mount table `mounts`.
fn has_submounts(path: &Path, mounts: &[MountInfo]) -> bool {
    let canon = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    mounts
        .iter()
        .any(|m| m.mount_point != canon && m.mount_point.starts_with(&canon))
}

/// The id mappings an idmapped mount uses: its own, else the container's.
fn mappings<'a>(
    m: &'a Mount,
    spec: &'a Spec,
) -> Option<(&'a [LinuxIdMapping], &'a [LinuxIdMapping])> {
    let own = (m.uid_mappings().as_deref(), m.gid_mappings().as_deref());
    if let (Some(u), Some(g)) = own {
        return Some((u, g));
    }
    let linux = spec.linux().as_ref()?;
    Some((
        linux.uid_mappings().as_deref()?,
        linux.gid_mappings().as_deref()?,
    ))
}

/// Detached mounts made before the container's process starts, by config mount index.
#[derive(Default)]
pub struct Sources(Vec<Option<OwnedFd>>);

impl Sources {
    /// Takes the detached mount made for mount `i`, if any.
    pub fn take(&mut self, i: usize) -> Option<OwnedFd> {
        self.0.get_mut(i).and_then(Option::take)
    }
}

/// Opens, on the host side, the bind sources that must be: every idmapped one, and, when
/// the container gets a new user namespace, every one outside the container's root (which
/// the container's user may not be able to reach). Sources inside the root are left to be
/// mounted in config order. A failure names the mount.
///
/// A recursive bind with mounts below its source is left to the container's process when
/// not idmapped: binding from inside its user namespace keeps the kernel's locks on those
/// submounts (they cannot be unmounted to show what they cover), which a tree cloned on
/// the host side would not have.
pub fn open_sources(spec: &Spec, rootfs: &Path, new_userns: bool) -> Result<Sources> {
    let mountinfo = porta_sys::proc::own_mountinfo().unwrap_or_default();
    let mut out = Vec::new();
    for (i, m) in spec.mounts().iter().flatten().enumerate() {
        let name = || format!("mounts[{i}] ({})", m.destination().display());
        let opts = MountOptions::parse(m.options().as_deref().unwrap_or(&[]))
            .map_err(|e| Error::field(name(), e.to_string()))?;
        let typ = m
            .typ()
            .as_deref()
            .unwrap_or(if opts.bind { "bind" } else { "none" });
        let bind = opts.bind || typ == "bind";
        let has_maps = m.uid_mappings().is_some() || m.gid_mappings().is_some();
        let idmap = opts.idmap.is_some() || has_maps;
        let wanted = bind
            && (idmap
                || (new_userns
                    && !(opts.recursive
                        && m.source()
                            .as_deref()
                            .is_some_and(|s| has_submounts(s, &mountinfo)))));
        let fd = match (wanted, m.source()) {
            (true, Some(src)) if !inside_root(src, rootfs) => {
                let is_link = std::fs::symlink_metadata(src)
                    .map(|md| md.file_type().is_symlink())
                    .unwrap_or(false);
                if opts.copy_symlink && is_link {
                    None
                } else {
                    open_one(spec, m, &opts, src, idmap).map_err(|e| Error::field(name(), e))?
                }
            }
            (true, Some(_)) if idmap => {
                return Err(Error::field(
                    name(),
                    "an idmapped bind mount needs a source outside the container's root",
                ))
            }
            _ => None,
        };
        out.push(fd);
    }
    Ok(Sources(out))
}

fn open_one(
    spec: &Spec,
    m: &Mount,
    opts: &MountOptions,
    src: &Path,
    idmap: bool,
) -> Result<Option<OwnedFd>, String> {
    let path = CString::new(src.as_os_str().as_encoded_bytes())
        .map_err(|_| format!("bind source {}: a NUL byte in the path", src.display()))?;
    let mut flags = mount_api::OPEN_TREE_CLONE | mount_api::OPEN_TREE_CLOEXEC;
    if opts.recursive {
        flags |= mount_api::AT_RECURSIVE;
    }
    let tree = match mount_api::open_tree(libc::AT_FDCWD, &path, flags) {
        Ok(t) => t,
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
            return Err(format!("bind source {}: {e}", src.display()))
        }
        // Not privileged on the host (a rootless runtime): mounted from inside, as before.
        Err(e) if !idmap && e.raw_os_error() == Some(libc::EPERM) => {
            tracing::debug!(
                "open_tree {} refused ({e}); mounting it from inside",
                src.display()
            );
            return Ok(None);
        }
        Err(e) => return Err(format!("open bind source {}: {e}", src.display())),
    };
    if idmap {
        if m.uid_mappings().is_some() != m.gid_mappings().is_some() {
            return Err("uidMappings and gidMappings must be given together".into());
        }
        let (u, g) = mappings(m, spec).ok_or_else(|| {
            "an idmapped mount needs uidMappings and gidMappings on the mount, or a user \
             namespace with mappings for the container"
                .to_string()
        })?;
        if u.is_empty() || g.is_empty() {
            return Err("an idmapped mount needs at least one uid and one gid mapping".into());
        }
        let ns = userns_with(u, g).map_err(|e| e.to_string())?;
        // `ridmap` on an rbind: every mount of the tree; else the top mount only (runc).
        let rec = opts.recursive && opts.idmap.map(|i| i.recursive).unwrap_or(false);
        let mut flags = libc::AT_EMPTY_PATH as u32;
        if rec {
            flags |= mount_api::AT_RECURSIVE;
        }
        let attr = mount_api::MountAttr {
            attr_set: mount_api::MOUNT_ATTR_IDMAP,
            userns_fd: ns.as_raw_fd() as u64,
            ..Default::default()
        };
        mount_api::mount_setattr(tree.as_raw_fd(), c"", flags, &attr).map_err(|e| {
            format!(
                "idmap {} (mount_setattr MOUNT_ATTR_IDMAP): {e}",
                src.display()
            )
        })?;
    }
    Ok(Some(tree))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn submounts_are_found_by_mount_point() {
        let info = porta_sys::proc::parse_mountinfo(
            "1 0 8:1 / / rw - ext4 /dev/sda rw\n\
             2 1 0:5 / /srv/a\\040b/sub rw - tmpfs t rw\n\
             3 1 0:6 / /srv/c rw - tmpfs t rw\n",
        )
        .unwrap();
        let info = &info[..];
        assert!(has_submounts(Path::new("/srv/a b"), info));
        assert!(!has_submounts(Path::new("/srv/a"), info));
        // a mount on the source itself is not below it
        assert!(!has_submounts(Path::new("/srv/c"), info));
        assert!(has_submounts(Path::new("/srv"), info));
    }
}
