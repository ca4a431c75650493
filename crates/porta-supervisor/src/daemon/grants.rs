//! Grants into this container (`porta share` / `porta unshare`): the supervisor holds the
//! source's handle, marks the node it is served at, and the file server serves it
//! through a grant server started on the node's first lookup (see
//! [`crate::translators`]).

use std::collections::HashSet;
use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use porta_fs::translator::{encode_grant_record, GRANT_XATTR};
use porta_protocol::grants::{Grant, GrantKind};

use super::Supervisor;
use crate::translators::Held;

fn fd_path(fd: &OwnedFd) -> CString {
    // A number formatted into a path holds no NUL.
    CString::new(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap_or_default()
}

/// Sets (or, `value` None, removes) the grant record of the node `fd`.
fn set_record(fd: &OwnedFd, value: Option<&[u8]>) -> std::io::Result<()> {
    let path = fd_path(fd);
    let name = CString::new(GRANT_XATTR).unwrap_or_default();
    // SAFETY: valid strings and buffer for the calls.
    let r = unsafe {
        match value {
            Some(v) => libc::setxattr(path.as_ptr(), name.as_ptr(), v.as_ptr().cast(), v.len(), 0),
            None => libc::removexattr(path.as_ptr(), name.as_ptr()),
        }
    };
    if r < 0 {
        let e = std::io::Error::last_os_error();
        if value.is_none() && e.raw_os_error() == Some(libc::ENODATA) {
            return Ok(());
        }
        return Err(e);
    }
    Ok(())
}

impl Supervisor {
    /// Holds a grant into this container and marks its node (made if missing) so that
    /// the next lookup serves the source there.
    pub(super) fn add_grant(&mut self, g: Grant, source: Option<OwnedFd>) -> Result<(), String> {
        let source = source.ok_or("no handle came with the grant")?;
        if g.target.container != self.a.id {
            return Err(format!(
                "grant {} is for container {:?}, not {:?}",
                g.id, g.target.container, self.a.id
            ));
        }
        let st = nix::sys::stat::fstat(source.as_raw_fd())
            .map_err(|e| format!("grant {}: the handle: {e}", g.id))?;
        let want = match g.kind {
            GrantKind::Directory => libc::S_IFDIR,
            GrantKind::Memfd => libc::S_IFREG,
            GrantKind::Socket => libc::S_IFSOCK,
        };
        if st.st_mode & libc::S_IFMT != want {
            return Err(format!("grant {}: the handle is not a {:?}", g.id, g.kind));
        }
        if self.translators.grant(&g.id).is_some() {
            return Err(format!("grant {} is already held", g.id));
        }
        if let Some(other) = self
            .translators
            .grants()
            .find(|h| h.record.target.path == g.target.path)
        {
            return Err(format!(
                "{} is already served by grant {}",
                g.target.path, other.record.id
            ));
        }
        let path = g.target.path.trim_end_matches('/').to_owned();
        let path = path.as_str();
        if !g.target.path.starts_with('/') || path.is_empty() || path.split('/').any(|c| c == "..")
        {
            return Err(format!(
                "{:?}: a grant is served at an absolute path below the root, without \"..\"",
                g.target.path
            ));
        }
        let root = std::fs::File::open(&self.a.rootfs)
            .map_err(|e| format!("open the container's root {}: {e}", self.a.rootfs.display()))?;
        if g.kind == GrantKind::Socket {
            return self.add_socket_grant(g, source, path);
        }
        let target = match g.kind {
            GrantKind::Directory => porta_sys::path::mkdir_in_root(root.as_fd(), path, 0o755),
            _ => porta_sys::path::create_file_in_root(root.as_fd(), path, 0o644),
        }
        .map_err(|e| format!("{path} in container {}: {e}", self.a.id))?;
        set_record(&target, Some(&encode_grant_record(&g.id, g.read_only)))
            .map_err(|e| format!("mark {path} for grant {}: {e}", g.id))?;
        tracing::info!(grant = %g.id, source = %format!("{}:{}", g.source.container, g.source.path), target = path, read_only = g.read_only, "grant held");
        self.translators.add_grant(Held {
            source,
            target,
            record: g,
        });
        // The kernel may know the name as the plain directory: it must look it up again.
        if let Some((parent, name)) = path.rsplit_once('/') {
            let parent = if parent.is_empty() { "/" } else { parent };
            if let Ok(p) = porta_sys::path::open_in_root(root.as_fd(), parent, libc::O_PATH) {
                if let Ok(pst) = nix::sys::stat::fstat(p.as_raw_fd()) {
                    self.invalidate_entry((pst.st_dev, pst.st_ino), name.as_bytes());
                }
            }
        }
        Ok(())
    }

    /// A socket grant: its relay listens at `path` in the container from now on (the
    /// directories on the way are made in the backing tree).
    fn add_socket_grant(&mut self, g: Grant, source: OwnedFd, path: &str) -> Result<(), String> {
        let root = std::fs::File::open(&self.a.rootfs)
            .map_err(|e| format!("open the container's root {}: {e}", self.a.rootfs.display()))?;
        let (parent, _) = path.rsplit_once('/').unwrap_or(("", path));
        let target = porta_sys::path::mkdir_in_root(root.as_fd(), parent, 0o755)
            .map_err(|e| format!("{parent} in container {}: {e}", self.a.id))?;
        let id = g.id.clone();
        self.translators.add_grant(Held {
            source,
            target,
            record: g,
        });
        if let Err(e) = self.translators.start_socket_proxy(&id, self.container_pid) {
            self.translators.take_grant(&id);
            return Err(format!("grant {id}: {e}"));
        }
        tracing::info!(grant = %id, target = path, "socket grant held");
        Ok(())
    }

    /// Starts again the relays of socket grants that died.
    pub(super) fn restart_socket_relays(&mut self) {
        let dead = self.translators.socket_grants_without_relay();
        for id in &dead {
            if let Err(e) = self.translators.start_socket_proxy(id, self.container_pid) {
                tracing::warn!(grant = %id, error = %e, "could not restart a socket grant's relay");
            }
        }
        if self.translators.take_changed() {
            self.renew_successor();
        }
    }

    /// Revokes grant `id`: its node loses the record, its servers are killed (the file
    /// server then fails every request of the grant's nodes with EACCES; a socket's
    /// relayed connections end), the handle is closed.
    pub(super) fn revoke_grant(&mut self, id: &str) -> Result<(), String> {
        let (target, kind, path) = match self.translators.grant(id) {
            Some(h) => (
                h.target
                    .try_clone()
                    .map_err(|e| format!("grant {id}: {e}"))?,
                h.record.kind,
                h.record.target.path.clone(),
            ),
            None => {
                return Err(format!(
                    "no grant {id:?} is held in container {}",
                    self.a.id
                ))
            }
        };
        if kind != GrantKind::Socket {
            // The record first: a server the file server sees die is then a revoked one.
            set_record(&target, None).map_err(|e| format!("unmark the node of grant {id}: {e}"))?;
        }
        let held = self.translators.take_grant(id);
        if kind == GrantKind::Socket {
            // The relay's socket goes with it (in the backing tree: the host-change
            // watcher tells the kernel).
            if let Some(name) = path.rsplit('/').next().and_then(|n| CString::new(n).ok()) {
                // SAFETY: valid directory descriptor and name.
                unsafe { libc::unlinkat(target.as_raw_fd(), name.as_ptr(), 0) };
            }
        }
        tracing::info!(grant = id, "grant revoked");
        drop(held);
        Ok(())
    }

    /// Tells the kernel to forget the name `name` in the directory with backing key
    /// `parent`, when it knows the directory. Written by a short-lived child: the kernel
    /// may wait for a lookup in that directory, which may wait for us.
    fn invalidate_entry(&self, parent: (u64, u64), name: &[u8]) {
        let Some(fuse) = self.fuse.as_ref() else {
            return;
        };
        let root_key = std::fs::metadata(&self.a.rootfs).ok().map(|m| {
            (
                std::os::unix::fs::MetadataExt::dev(&m),
                std::os::unix::fs::MetadataExt::ino(&m),
            )
        });
        let id = if root_key == Some(parent) {
            Some(porta_fs::abi::ROOT_ID)
        } else {
            let wanted: HashSet<(u64, u64)> = [parent].into();
            crate::watch::node_ids(&self.shared, Some(&wanted))
                .get(&parent)
                .copied()
        };
        let Some(id) = id else { return };
        let mut w = porta_fs::abi::Writer::default();
        porta_fs::abi::encode_inval_entry(&mut w, id, name);
        // SAFETY: the supervisor is single-threaded; the child writes once and leaves.
        match unsafe { libc::fork() } {
            0 => {
                // SAFETY: our /dev/fuse descriptor and a valid buffer.
                let r =
                    unsafe { libc::write(fuse.as_raw_fd(), w.buf.as_ptr().cast(), w.buf.len()) };
                // SAFETY: leave at once.
                unsafe { libc::_exit(i32::from(r < 0)) }
            }
            -1 => tracing::warn!("could not fork to invalidate a granted node's name"),
            _ => {}
        }
    }
}
