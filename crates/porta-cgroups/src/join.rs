//! How a new process enters a leaf (`payload/`, `porta/`) without waiting for the kernel.
//!
//! Writing a pid to `cgroup.procs` takes the kernel's global `cgroup_threadgroup_rwsem`
//! for writing, and the write side of that per-CPU semaphore waits for an RCU grace
//! period: 7.5 ms median on the development VM (0.34 ms without), on the critical path of
//! every `create` and of the file server's start. Two ways in skip it:
//!
//! * a child cloned with `CLONE_INTO_CGROUP` starts in its cgroup2 group: nothing moves;
//! * in a v1 hierarchy, a thread that moves *itself* through the `tasks` file needs no
//!   threadgroup stability and the kernel skips the lock; for a single-threaded process,
//!   moving its one thread moves the process.
//!
//! Where neither applies (a kernel without `CLONE_INTO_CGROUP`, a cgroup2 group that
//! refuses it) the child writes `0` to `cgroup.procs` as before: slower, never wrong.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::fsutil;

/// `CLONE_INTO_CGROUP` (linux/sched.h; not in every libc).
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;
/// statfs magic of a cgroup2 file system.
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

/// Which side of a fork the caller is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forked {
    /// The parent, with the child's pid.
    Parent(i32),
    /// The child; `cloned_into` tells whether it already is in the cgroup2 group.
    Child {
        /// Started in the cgroup2 group by `CLONE_INTO_CGROUP`.
        cloned_into: bool,
    },
}

/// The way into one leaf in every hierarchy, prepared before the fork (the child only
/// writes to files it was given).
#[derive(Debug, Default)]
pub struct Join {
    /// The leaf in the cgroup2 hierarchy, opened for `CLONE_INTO_CGROUP`.
    cgroup2: Option<File>,
    /// The leaf's `cgroup.procs` in the cgroup2 hierarchy (when the clone cannot enter it).
    cgroup2_procs: Option<PathBuf>,
    /// Files the child writes `0` to itself: the leaf's `tasks` in every v1 hierarchy
    /// (and the `cgroup.procs` of a second cgroup2 mount, should the host have one).
    self_moves: Vec<PathBuf>,
}

impl Join {
    /// The way into the leaves whose `cgroup.procs` files are `procs` (one per hierarchy, as
    /// [`crate::ContainerCgroup::payload_procs_files`] gives them). Each hierarchy's kind
    /// is read from its file system; a leaf that cannot be opened is an error naming it.
    pub fn new(procs: &[PathBuf]) -> Result<Join> {
        let mut j = Join::default();
        for p in procs {
            let dir = p.parent().unwrap_or(Path::new("/"));
            let read_err = |source| Error::Read {
                path: dir.to_path_buf(),
                source,
            };
            let fd = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
                .open(dir)
                .map_err(read_err)?;
            let v2 = nix::sys::statfs::fstatfs(&fd)
                .map_err(|e| read_err(e.into()))?
                .filesystem_type()
                .0 as i64
                == CGROUP2_SUPER_MAGIC;
            if v2 && j.cgroup2.is_none() {
                j.cgroup2 = Some(fd);
                j.cgroup2_procs = Some(p.clone());
            } else if v2 {
                // A second cgroup2 leaf (two mounts of the hierarchy): written to as well.
                j.self_moves.push(p.clone());
            } else {
                j.self_moves.push(dir.join("tasks"));
            }
        }
        Ok(j)
    }

    /// Forks like fork(2) with clone3, the child starting in the cgroup2 leaf when there is
    /// one and the kernel lets it; `flags` are further clone flags (namespaces, no sharing).
    /// The caller must be single-threaded, as for fork(2).
    pub fn fork(&self, flags: u64) -> io::Result<Forked> {
        if let Some(fd) = &self.cgroup2 {
            match clone3(flags | CLONE_INTO_CGROUP, fd.as_raw_fd()) {
                Ok(0) => return Ok(Forked::Child { cloned_into: true }),
                Ok(pid) => return Ok(Forked::Parent(pid)),
                // Older kernels (EINVAL: unknown flag, E2BIG: short clone_args) and groups
                // that may not hold processes (EOPNOTSUPP, EBUSY): join by writing instead.
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(
                            libc::EINVAL
                                | libc::E2BIG
                                | libc::EOPNOTSUPP
                                | libc::EBUSY
                                | libc::ENOSYS
                        )
                    ) =>
                {
                    tracing::debug!(error = %e, "CLONE_INTO_CGROUP refused; the child joins by writing cgroup.procs");
                }
                Err(e) => return Err(e),
            }
        }
        match clone3(flags, -1)? {
            0 => Ok(Forked::Child { cloned_into: false }),
            pid => Ok(Forked::Parent(pid)),
        }
    }

    /// For a process that is already running (not a child of [`Join::fork`]): moves the
    /// calling single-threaded process into the leaf of every v1 hierarchy (the quick
    /// self-move through `tasks`) and returns the cgroup2 leaf's `cgroup.procs`, if any,
    /// that someone must still write its pid to ([`move_pid`]): that write waits for the
    /// kernel, so a caller with better things to do hands it to a helper process.
    pub fn enter_v1(self) -> Result<Option<PathBuf>> {
        for f in &self.self_moves {
            fsutil::write(f, "0")?;
        }
        Ok(self.cgroup2_procs)
    }

    /// In the child of [`Join::fork`], while it is single-threaded: moves it into the leaf
    /// in every hierarchy it is not in yet (and closes the cgroup2 directory).
    pub fn enter(self, cloned_into: bool) -> Result<()> {
        for f in &self.self_moves {
            fsutil::write(f, "0")?;
        }
        if !cloned_into {
            if let Some(f) = &self.cgroup2_procs {
                fsutil::write(f, "0")?;
            }
        }
        Ok(())
    }
}

/// Moves process `pid` into the cgroup whose `cgroup.procs` is `procs`.
pub fn move_pid(procs: &Path, pid: i32) -> Result<()> {
    fsutil::write(procs, &pid.to_string())
}

/// fork(2) through clone3, with further clone `flags` (new namespaces; no CLONE_VM), into
/// cgroup2 group `cgroup` (a directory descriptor, or -1) when `flags` has
/// CLONE_INTO_CGROUP. Returns 0 in the child, the child's pid in the parent. The caller
/// must be single-threaded, as for fork(2).
pub fn clone3(flags: u64, cgroup: RawFd) -> io::Result<i32> {
    #[repr(C)]
    #[derive(Default)]
    struct CloneArgs {
        flags: u64,
        pidfd: u64,
        child_tid: u64,
        parent_tid: u64,
        exit_signal: u64,
        stack: u64,
        stack_size: u64,
        tls: u64,
        set_tid: u64,
        set_tid_size: u64,
        cgroup: u64,
    }
    let mut args = CloneArgs {
        flags,
        exit_signal: libc::SIGCHLD as u64,
        cgroup: if cgroup >= 0 { cgroup as u64 } else { 0 },
        ..Default::default()
    };
    // SAFETY: clone3 without CLONE_VM duplicates the address space like fork; `args` is a
    // valid, correctly sized struct that outlives the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &mut args as *mut CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(ret as i32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plain_directory_is_joined_through_its_tasks_file() {
        let d = std::env::temp_dir().join(format!("porta-join-{}", std::process::id()));
        std::fs::create_dir_all(d.join("payload")).unwrap();
        let j = Join::new(&[d.join("payload/cgroup.procs")]).unwrap();
        assert!(j.cgroup2.is_none());
        assert_eq!(j.self_moves, vec![d.join("payload/tasks")]);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_missing_leaf_is_named() {
        let e = Join::new(&[PathBuf::from("/nonexistent/porta/leaf/cgroup.procs")]).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/porta/leaf"), "{e}");
    }
}
