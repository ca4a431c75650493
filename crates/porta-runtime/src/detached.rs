//! Bind-mount sources opened before the container's process enters its namespaces, as
//! detached mounts (`open_tree(OPEN_TREE_CLONE)`), idmapped when the mount asks for it
//! (`idmap`, `ridmap`, `uidMappings`/`gidMappings`), and the mount-API calls they need.
//!
//! Opening a source on the host side means a source the container's user may not reach
//! (a directory only the host's root can walk) still mounts, as with runc; an idmapped
//! mount needs a user namespace holding the mapping, made here, on the host side, where
//! the mapping's host ids are valid.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

use oci_spec::runtime::{LinuxIdMapping, Mount, Spec};

use crate::error::{Error, Result};
use crate::mounts::{attr, MountOptions};

const OPEN_TREE_CLONE: libc::c_uint = 1;
const OPEN_TREE_CLOEXEC: libc::c_uint = libc::O_CLOEXEC as libc::c_uint;
const AT_RECURSIVE: libc::c_uint = 0x8000;

fn cvt(ret: libc::c_long) -> io::Result<libc::c_long> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// open_tree(OPEN_TREE_CLONE): a detached copy of the mount at `path` (with every mount
/// below it when `recursive`), close-on-exec.
pub fn clone_tree(path: &Path, recursive: bool) -> io::Result<OwnedFd> {
    let c = CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let mut flags = OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC;
    if recursive {
        flags |= AT_RECURSIVE;
    }
    // SAFETY: c is a valid NUL-terminated path for the duration of the call.
    let fd = cvt(unsafe { libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, c.as_ptr(), flags) })?;
    // SAFETY: open_tree returned a fresh fd that nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// mount_setattr(2) on the mount behind `fd` (and every mount below it when `recursive`).
pub fn set_attrs(
    fd: BorrowedFd<'_>,
    recursive: bool,
    set: u64,
    clr: u64,
    userns: Option<BorrowedFd<'_>>,
) -> io::Result<()> {
    #[repr(C)]
    struct MountAttr {
        attr_set: u64,
        attr_clr: u64,
        propagation: u64,
        userns_fd: u64,
    }
    let a = MountAttr {
        attr_set: set,
        attr_clr: clr,
        propagation: 0,
        userns_fd: userns.map(|u| u.as_raw_fd() as u64).unwrap_or(0),
    };
    let mut flags = libc::AT_EMPTY_PATH as libc::c_uint;
    if recursive {
        flags |= AT_RECURSIVE;
    }
    let empty = c"";
    // SAFETY: `a` and `empty` are valid for the call; the kernel copies the struct.
    cvt(unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            fd.as_raw_fd(),
            empty.as_ptr(),
            flags,
            &a as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    })?;
    Ok(())
}

/// move_mount of the detached mount `from` onto the file or directory `to` is open on.
pub fn attach(from: BorrowedFd<'_>, to: BorrowedFd<'_>) -> io::Result<()> {
    const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;
    const MOVE_MOUNT_T_EMPTY_PATH: libc::c_uint = 0x40;
    let empty = c"";
    // SAFETY: `empty` is a valid NUL-terminated string for the call; both fds are borrowed.
    cvt(unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            from.as_raw_fd(),
            empty.as_ptr(),
            to.as_raw_fd(),
            empty.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH,
        )
    })?;
    Ok(())
}

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

/// Undoes mountinfo's octal escapes (`\040` for a space, …).
fn unescape(field: &str) -> String {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') as u32 * 64
                + (b[i + 2] - b'0') as u32 * 8
                + (b[i + 3] - b'0') as u32;
            out.push(v as u8);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether anything is mounted below `path` (in this process's mount namespace).
fn has_submounts(path: &Path, mountinfo: &str) -> bool {
    let canon = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    mountinfo.lines().any(|l| {
        l.split(' ')
            .nth(4)
            .map(|mp| {
                let mp = std::path::PathBuf::from(unescape(mp));
                mp != canon && mp.starts_with(&canon)
            })
            .unwrap_or(false)
    })
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
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
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
    let tree = match clone_tree(src, opts.recursive) {
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
        set_attrs(tree.as_fd(), rec, attr::IDMAP, 0, Some(ns.as_fd())).map_err(|e| {
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
        let info = "1 0 8:1 / / rw - ext4 /dev/sda rw\n\
                    2 1 0:5 / /srv/a\\040b/sub rw - tmpfs t rw\n\
                    3 1 0:6 / /srv/c rw - tmpfs t rw\n";
        assert!(has_submounts(Path::new("/srv/a b"), info));
        assert!(!has_submounts(Path::new("/srv/a"), info));
        // a mount on the source itself is not below it
        assert!(!has_submounts(Path::new("/srv/c"), info));
        assert!(has_submounts(Path::new("/srv"), info));
        assert_eq!(unescape("a\\040b\\011c"), "a b\tc");
    }
}
