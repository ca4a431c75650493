//! A grant's server: serves a directory of one container (an O_PATH handle the target's
//! supervisor holds) to another container's file server, over a translator's socket.
//!
//! It is a file server of its own (the same request handling as a container's root),
//! confined as one is: capabilities cut to the file server's, no_new_privs, Landlock to
//! the tree beneath the handle (read-only for a read-only grant), and the seccomp
//! allowlist. It speaks the host's ids (it runs in no user namespace of a container), and
//! restarts nothing: the target's file server starts a new one on the next lookup of the
//! grant's node when it died.

use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Duration;

use crate::confine::{self, TreeAccess};
use crate::{Error, Shared};

/// Node table entries of a grant's server (its descriptors: one per node it knows).
const CAPACITY: usize = 16384;

/// Request threads of a grant's server.
const THREADS: usize = 2;

/// Serves the directory `root` (an O_PATH descriptor) on the FUSE connection `sock` (the
/// translator socket a container's file server plays the kernel on) until the
/// connection ends. Confines the calling process first: call it in a process of its own,
/// single-threaded, that holds nothing else.
pub fn serve_grant(sock: OwnedFd, root: OwnedFd, read_only: bool) -> Result<(), Error> {
    let proc_fd = crate::sys::openat(
        libc::AT_FDCWD,
        c"/proc/self/fd",
        libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        0,
    )
    .map_err(|e| Error::Sys("open /proc/self/fd", nix::errno::Errno::from_raw(e)))?;
    let shared = Shared::anonymous(CAPACITY)?;
    confine::limit_capabilities()?;
    // SAFETY: plain prctl.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } < 0 {
        return Err(Error::Io("no_new_privs", std::io::Error::last_os_error()));
    }
    let access = if read_only {
        TreeAccess::ReadOnly
    } else {
        TreeAccess::All
    };
    if confine::restrict_to_trees(&[(root.as_raw_fd(), access)])? == 0 {
        tracing::warn!(
            "no Landlock in this kernel: the grant's server is not restricted to its tree"
        );
    }
    confine::install_seccomp(None)?;
    let cfg = crate::Config {
        fuse_fd: sock.as_raw_fd(),
        root_fd: root.as_raw_fd(),
        proc_fd: proc_fd.as_raw_fd(),
        shared,
        passthrough: false,
        threads: THREADS,
        // The target's file server tells its kernel to cache nothing of a grant; the
        // timeouts here only matter to that server.
        ttl: Duration::ZERO,
        backing_fd: -1,
        transport: crate::Transport::Dev,
        rings: None,
    };
    crate::serve(&cfg).map(|_| ())
}

/// Confines a grant server that needs no file-system access at all (the server of a
/// memory object): no capabilities, no_new_privs, Landlock with no tree allowed, and the
/// seccomp allowlist. Call it in the server's own process, single-threaded.
pub fn confine_without_tree() -> Result<(), Error> {
    confine_files_and_capabilities()?;
    confine::install_seccomp(None)
}

/// No capabilities, no_new_privs and Landlock with no tree allowed (no seccomp filter:
/// for a process that needs sockets, such as a socket grant's relay).
pub fn confine_files_and_capabilities() -> Result<(), Error> {
    confine::drop_all_capabilities()?;
    // SAFETY: plain prctl.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } < 0 {
        return Err(Error::Io("no_new_privs", std::io::Error::last_os_error()));
    }
    if confine::restrict_to_trees(&[])? == 0 {
        tracing::warn!("no Landlock in this kernel: a grant's server is not kept from files");
    }
    Ok(())
}
