//! Spare files: new, nameless regular files made and registered as passthrough backing
//! files ahead of need, so that a CREATE in a passthrough connection never waits for
//! the supervisor.
//!
//! Registering a backing file takes a round trip to the supervisor (only it may, see
//! [`crate::backing`]). A first OPEN of a node pays that once for the node's life; a
//! CREATE would pay it for every new file, and it would wait for a single-threaded
//! process that a loaded machine schedules late. So a *filler* thread keeps a few spare
//! files ready: each an `O_TMPFILE` made in the backing root (no name: it vanishes with
//! its last descriptor), reopened read-only and registered. A CREATE takes one, gives
//! it the new file's owner, mode and times, links it under the asked-for name
//! (`linkat` of its `/proc/self/fd` entry, which an `O_TMPFILE` opened without
//! `O_EXCL` allows) and answers with its node, the spare's descriptor as the handle and
//! its backing id: no other process involved.
//!
//! A spare is in the shared table (kind [`kind::SPARE`], its backing id in the node
//! entry's backing word), so a server killed at any point leaves nothing behind: the
//! next server adopts spares that are still nameless and drops the others
//! ([`Fs::adopt_spares`]), and the supervisor counts a backing id recorded by a spare as
//! owned. The steps of a CREATE are ordered so that a kill between any two leaves either
//! a nameless spare (adopted again), or a named file with its final owner and mode whose
//! node may or may not carry the backing id (a resent CREATE then finds the file and
//! opens it as any existing file).
//!
//! Where the pool cannot help the normal path runs: a file system without `O_TMPFILE`,
//! a parent on another mount than the backing root, a directory with a default ACL
//! (a nameless file does not inherit it), a mode with set-id or sticky bits, a backing
//! mount that does not map the server's own id (idmapped), any other failure before
//! the spare got its name.

use std::ffi::CStr;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use super::nodes::FdName;
use super::ops::entry::owner_in;
use super::scratch::Scratch;
use super::Fs;
use crate::abi::{self, args, InHeader, Writer};
use crate::shared::{kind, NodeRef};
use crate::sys::{self, SysResult};

/// Spares kept ready.
pub(super) const TARGET: usize = 16;
/// The filler starts again when fewer than this are left (and makes none while the
/// server's descriptors are past its eviction threshold: they go to nodes first).
const LOW: usize = 8;
/// Spares that failed to be made in a row after which the filler stops for good
/// (a failure ends a round; the next CREATE that finds the pool low starts another).
const FAILURES: u32 = 3;

/// One spare file: its descriptor (open read-write, published as [`kind::SPARE`]), its
/// backing id, and what it is now (so a create changes only what differs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Spare {
    fd: RawFd,
    backing: i32,
    /// (`st_dev`, `st_ino`).
    key: (u64, u64),
    /// (uid, gid).
    owner: (u32, u32),
    /// Permission bits.
    mode: u32,
}

impl Spare {
    fn new(fd: RawFd, backing: i32, st: &libc::stat) -> Spare {
        Spare {
            fd,
            backing,
            key: (st.st_dev, st.st_ino),
            owner: (st.st_uid, st.st_gid),
            mode: st.st_mode & 0o7777,
        }
    }
}

/// The mode spares are made with: the usual mode of a new file (0666 less a 022 umask),
/// so most creates need no chmod. Nobody but the server can open a nameless file.
const SPARE_MODE: u32 = 0o644;

#[derive(Debug, Default)]
struct Pool {
    ready: Vec<Spare>,
    stop: bool,
    /// A CREATE asked for a spare: from then on the filler keeps the pool filled. Until
    /// then it makes none (a container that never creates a file never pays for
    /// spares, and a new server's first requests do not queue behind 16 registrations
    /// at the supervisor).
    wanted: bool,
    /// Where the filler makes spares: the directory of the latest CREATE.
    dir: Option<Arc<Dir>>,
}

/// A directory spares are made in.
#[derive(Debug)]
struct Dir {
    /// Its inode number (its mount is the backing root's).
    ino: u64,
    /// An `O_PATH` descriptor of it (a scratch descriptor of the server: a successor
    /// closes it).
    fd: Scratch,
}

/// The pool of spare files and the filler's controls.
#[derive(Debug, Default)]
pub(super) struct Spares {
    pool: Mutex<Pool>,
    cv: Condvar,
    /// Spares can be made here (cleared for good when they keep failing).
    enabled: AtomicBool,
    /// The mount id of the backing root, where spares are made (0: unknown).
    mnt_id: AtomicU64,
    /// CREATEs served from the pool, for the log.
    used: AtomicU64,
}

impl Spares {
    fn pool(&self) -> MutexGuard<'_, Pool> {
        // No code holding this lock panics.
        self.pool.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes a spare for a CREATE in directory `parent` (inode `ino`), waking the
    /// filler when the pool runs low; the filler makes the next spares there.
    /// (`scratch` records the directory's new descriptor as the server's.)
    fn take(
        &self,
        parent: RawFd,
        ino: u64,
        scratch: impl FnOnce(OwnedFd) -> Scratch,
    ) -> Option<Spare> {
        if !self.enabled.load(Ordering::Relaxed) {
            return None;
        }
        let mut p = self.pool();
        p.wanted = true;
        if p.dir.as_ref().is_none_or(|d| d.ino != ino) {
            // A failure leaves the previous directory (the root at worst).
            if let Ok(fd) = sys::openat(parent, c".", libc::O_PATH | libc::O_DIRECTORY, 0) {
                p.dir = Some(Arc::new(Dir {
                    ino,
                    fd: scratch(fd),
                }));
            }
        }
        let s = p.ready.pop();
        if p.ready.len() < LOW {
            self.cv.notify_one();
        }
        s
    }

    /// Puts back a spare a CREATE could not use.
    fn give_back(&self, s: Spare) {
        self.pool().ready.push(s);
    }

    /// The directory to make spares in (`None`: the backing root).
    fn dir(&self) -> Option<Arc<Dir>> {
        self.pool().dir.clone()
    }

    /// Ends the filler's loop.
    pub(super) fn stop(&self) {
        let mut p = self.pool();
        p.stop = true;
        p.dir = None;
        drop(p);
        self.cv.notify_all();
        tracing::debug!(
            creates = self.used.load(Ordering::Relaxed),
            "creates served from spare files"
        );
    }

    /// How many spares are ready (tests and logs).
    pub(super) fn ready(&self) -> usize {
        self.pool().ready.len()
    }
}

/// The mount id of what `fd` names.
fn mount_id(fd: RawFd) -> SysResult<u64> {
    dir_status(fd).map(|d| d.mnt)
}

/// What a CREATE needs to know of its directory.
#[derive(Debug, Clone, Copy)]
struct DirStatus {
    mnt: u64,
    ino: u64,
    mode: u32,
    gid: u32,
}

/// The mount id, inode, mode and group of what `fd` names.
fn dir_status(fd: RawFd) -> SysResult<DirStatus> {
    let mut stx: libc::statx = zeroed_statx();
    // SAFETY: valid empty path, `stx` is a writable statx buffer.
    let r = unsafe {
        libc::statx(
            fd,
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            libc::STATX_MNT_ID | libc::STATX_MODE | libc::STATX_GID | libc::STATX_INO,
            &mut stx,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO));
    }
    if stx.stx_mask & libc::STATX_MNT_ID == 0 {
        return Err(libc::EOPNOTSUPP);
    }
    Ok(DirStatus {
        mnt: stx.stx_mnt_id,
        ino: stx.stx_ino,
        mode: u32::from(stx.stx_mode),
        gid: stx.stx_gid,
    })
}

fn zeroed_statx() -> libc::statx {
    // SAFETY: statx is plain data; all-zero is a valid value.
    unsafe { std::mem::zeroed() }
}

impl Fs {
    /// Whether CREATEs may use spare files at all (a passthrough connection). A server
    /// that creates files as the caller (for idmapped backing mounts) makes spares as
    /// itself and gives them the caller's ids afterwards; where the mount does not map
    /// the server's own id the filler cannot make any and gives up.
    fn spares_possible(&self) -> bool {
        self.passthrough
    }

    /// The filler thread: keeps [`TARGET`] spares ready until [`Spares::stop`]. Runs
    /// after the index was rebuilt (it adopts the spares a predecessor left first).
    pub(super) fn fill_spares(&self) {
        self.indexed.wait();
        if !self.spares_possible() {
            return;
        }
        match mount_id(self.root) {
            Ok(id) => self.spares.mnt_id.store(id, Ordering::Relaxed),
            Err(errno) => {
                tracing::info!(errno, "no spare files: the backing root's mount is unknown");
                return;
            }
        }
        self.spares.enabled.store(true, Ordering::Relaxed);
        let mut failures = 0;
        loop {
            {
                let mut p = self.spares.pool();
                while !p.stop && (p.ready.len() >= LOW || !p.wanted) {
                    p = self.spares.cv.wait(p).unwrap_or_else(|e| e.into_inner());
                }
                if p.stop {
                    return;
                }
            }
            while self.spares.ready() < TARGET {
                if self.sh.live() >= self.budget.high {
                    // Descriptors are getting scarce: they go to nodes, not to spares
                    // (a CREATE without one registers its file itself). The next
                    // CREATE that finds the pool low looks again.
                    self.spares.pool().wanted = false;
                    break;
                }
                match self.make_spare() {
                    Ok(s) => {
                        failures = 0;
                        self.spares.give_back(s);
                    }
                    Err(errno) if failures + 1 < FAILURES => {
                        // Transient (e.g. a busy supervisor or a full table): the next
                        // CREATE that finds the pool low starts another round.
                        failures += 1;
                        tracing::debug!(errno, failures, "a spare file could not be made");
                        self.spares.pool().wanted = false;
                        break;
                    }
                    Err(errno) => {
                        self.spares.enabled.store(false, Ordering::Relaxed);
                        tracing::info!(
                            errno,
                            "no spare files for creates: new files are registered one by one"
                        );
                        return;
                    }
                }
                if self.spares.pool().stop {
                    return;
                }
            }
        }
    }

    /// Makes one spare: a nameless file in the directory of the latest CREATE (else
    /// in the backing root), published, registered.
    fn make_spare(&self) -> SysResult<Spare> {
        let flags = libc::O_TMPFILE | libc::O_RDWR | libc::O_NONBLOCK;
        let dir = self.spares.dir();
        let file = match dir
            .as_ref()
            .map(|d| sys::openat(d.fd.as_raw_fd(), c".", flags, SPARE_MODE))
        {
            Some(Ok(file)) => file,
            // Removed, or not writable for the server: the root is as good a place.
            _ => sys::openat(self.root, c".", flags, SPARE_MODE)?,
        };
        let file = self.scratch(file);
        let st = sys::fstat(file.as_raw_fd())?;
        let fd = file.into_raw_fd();
        if !self.sh.publish(fd, kind::SPARE, 0, st.st_ino, st.st_dev) {
            sys::close(fd);
            return Err(libc::ENFILE);
        }
        match self.register_backing(fd, NodeRef::Hot(fd).tag()) {
            Ok(id) => {
                if let Some(e) = self.sh.hot_node(fd) {
                    e.backing().store(id as u64 + 1, Ordering::Release);
                }
                Ok(Spare::new(fd, id, &st))
            }
            Err(e) => {
                self.sh.free(fd);
                sys::close(fd);
                Err(e)
            }
        }
    }

    /// Registers a read-only reopen of regular file `fd` as a passthrough backing file
    /// for table entry `tag`; returns the backing id.
    pub(super) fn register_backing(&self, fd: RawFd, tag: i32) -> SysResult<i32> {
        let ro = self.reopen(fd, libc::O_RDONLY, libc::S_IFREG)?;
        if self.backing >= 0 {
            let _one = self.backing_lock.lock().map_err(|_| libc::EIO)?;
            crate::backing::open(self.backing, tag, ro.as_raw_fd())
        } else {
            sys::backing_open(self.fuse, ro.as_raw_fd())
        }
    }

    /// After a restart (called while the index is rebuilt, alone): the spares the
    /// predecessor left. A nameless one with a backing id goes back into the pool;
    /// one that got a name (its predecessor was killed in a CREATE) is dropped, and so
    /// is its backing id unless a node records it (`node_ids`: every id the node
    /// entries record).
    pub(super) fn adopt_spares(&self, spares: &[RawFd], node_ids: &std::collections::HashSet<u64>) {
        let mut kept = 0;
        for &fd in spares {
            let Some(e) = self.sh.hot_node(fd) else {
                continue;
            };
            let id = e.backing().load(Ordering::Acquire);
            let st = sys::fstat(fd).ok();
            let nameless = st
                .as_ref()
                .filter(|st| st.st_mode & libc::S_IFMT == libc::S_IFREG && st.st_nlink == 0);
            if let (Some(st), true, true) = (nameless, id != 0, self.spares_possible()) {
                self.spares.give_back(Spare::new(fd, (id - 1) as i32, st));
                kept += 1;
                continue;
            }
            if id != 0 && !node_ids.contains(&id) {
                let _g = self.inodes.lock().unwrap_or_else(|p| p.into_inner());
                self.drop_backing(e);
            }
            self.sh.free(fd);
            sys::close(fd);
        }
        if kept < spares.len() {
            tracing::info!(
                found = spares.len(),
                kept,
                "spare files of the previous server: the named ones dropped"
            );
        }
    }

    /// CREATE from a spare file, when one is ready and the pool can serve this create;
    /// `Ok(false)`: the caller creates the file the usual way (nothing was changed).
    pub(super) fn create_from_spare(
        &self,
        h: &InHeader,
        a: &args::Create,
        parent: RawFd,
        w: &mut Writer,
    ) -> SysResult<bool> {
        if a.mode & 0o7000 != 0
            || !self.spares_possible()
            || !self.spares.enabled.load(Ordering::Relaxed)
        {
            return Ok(false);
        }
        let Ok(dir) = dir_status(parent) else {
            return Ok(false);
        };
        if dir.mnt != self.spares.mnt_id.load(Ordering::Relaxed) || self.has_default_acl(parent) {
            return Ok(false);
        }
        let Some(mut spare) = self.spares.take(parent, dir.ino, |fd| self.scratch(fd)) else {
            return Ok(false);
        };
        match self.link_spare(h, a, parent, dir, &mut spare) {
            Linked::Done(id, attr) => {
                self.spares.used.fetch_add(1, Ordering::Relaxed);
                abi::encode_entry(w, id, 0, self.ttl, &attr);
                self.open_out(w, spare.fd, Some(spare.backing));
                Ok(true)
            }
            Linked::NotHere => {
                self.spares.give_back(spare);
                Ok(false)
            }
            Linked::Refused(e) => {
                self.spares.give_back(spare);
                Err(e)
            }
            Linked::Failed(e) => {
                self.spare_used_up(spare);
                Err(e)
            }
        }
    }

    /// Gives `spare` the new file's identity and name, then makes it the node and the
    /// handle of the CREATE.
    fn link_spare(
        &self,
        h: &InHeader,
        a: &args::Create,
        parent: RawFd,
        dir: DirStatus,
        spare: &mut Spare,
    ) -> Linked {
        let owner = owner_in(h, dir.mode, dir.gid);
        let mode = a.mode & 0o777;
        let fd = spare.fd;
        let proc_name = FdName::new(b"", fd);
        let now = libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_NOW,
        };
        // Owner, mode and times before the name: a file that has a name is complete.
        // (A spare left unused keeps them; the next use sets them again.)
        let ready = (|| {
            if spare.owner != owner {
                sys::chownat(fd, c"", owner.0, owner.1)?;
                spare.owner = owner;
                // A chown may clear mode bits: look again below.
                spare.mode = u32::MAX;
            }
            if spare.mode != mode {
                sys::chmodat(self.proc_fd, proc_name.cstr(), mode)?;
                spare.mode = mode;
            }
            sys::utimens_fd(fd, &[now, now])
        })();
        if ready.is_err() {
            // The usual path gives the authoritative answer (e.g. an id the backing mount
            // does not map).
            return Linked::NotHere;
        }
        match sys::linkat(
            self.proc_fd,
            proc_name.cstr(),
            parent,
            a.name,
            libc::AT_SYMLINK_FOLLOW,
        ) {
            Ok(()) => {}
            // Another creator was first: O_EXCL says so, else open what is there.
            Err(libc::EEXIST) if a.flags & libc::O_EXCL != 0 => {
                return Linked::Refused(libc::EEXIST)
            }
            Err(_) => return Linked::NotHere,
        }
        #[cfg(feature = "fault-injection")]
        self.inject_linked_fault(a.name);
        let (id, attr) = match self.lookup(h.nodeid, parent, a.name) {
            Ok(found) => found,
            Err(e) => return Linked::Failed(e),
        };
        let same = self
            .sh
            .node_entry(id)
            .is_some_and(|e| e.inode_key() == spare.key);
        // Not the spare (the name replaced at once), or a node that existed already:
        // the kernel looks the name up again; the spare, named now, is used up.
        let adopted = if same {
            self.adopt_spare_backing(id, *spare)
        } else {
            Err(libc::EIO)
        };
        let published = adopted.is_ok()
            && self.sh.publish(
                fd,
                kind::FILE,
                id,
                self.sh.next_open(),
                a.flags as u32 as u64,
            );
        if !published {
            self.forget(id, 1);
            return Linked::Failed(adopted.err().unwrap_or(libc::ENFILE));
        }
        Linked::Done(id, attr)
    }

    /// Moves the spare's backing id to node `id` (recorded there before the spare
    /// entry lets go of it) and counts one passthrough open of the node.
    fn adopt_spare_backing(&self, id: u64, spare: Spare) -> SysResult<()> {
        let e = self.sh.node_entry(id).ok_or(libc::ESTALE)?;
        let s = self.sh.hot_node(spare.fd).ok_or(libc::EIO)?;
        let _g = self.inodes.lock().map_err(|_| libc::EIO)?;
        let opens = e.opens().load(Ordering::Acquire);
        if e.backing().load(Ordering::Acquire) != 0 || opens != 0 {
            // A node of that inode existed already (another name was linked to it in
            // the meantime): not a new file.
            return Err(libc::EIO);
        }
        e.backing()
            .store(spare.backing as u64 + 1, Ordering::Release);
        s.backing().store(0, Ordering::Release);
        e.opens().fetch_add(1, Ordering::AcqRel);
        Ok(())
    }

    /// A spare that got a name but could not become the CREATE's file: its backing id
    /// and descriptor go.
    fn spare_used_up(&self, spare: Spare) {
        if let Some(e) = self.sh.hot_node(spare.fd) {
            if let Ok(_g) = self.inodes.lock() {
                self.drop_backing(e);
            }
        }
        self.sh.free(spare.fd);
        sys::close(spare.fd);
    }

    /// Whether directory `parent` has a default ACL (a file made in it inherits one).
    fn has_default_acl(&self, parent: RawFd) -> bool {
        !matches!(
            self.xget(parent, ACL_DEFAULT, &mut []),
            Err(libc::ENODATA) | Err(libc::EOPNOTSUPP)
        )
    }
}

/// What became of a spare in a CREATE.
enum Linked {
    /// The spare is the new file: its node and attributes.
    Done(u64, abi::Attr),
    /// This create cannot use it; the spare is unchanged (but for owner, mode, times).
    NotHere,
    /// The create fails with this errno before the spare got a name.
    Refused(i32),
    /// The create fails with this errno after the spare got a name: it is used up.
    Failed(i32),
}

/// The extended attribute holding a directory's default ACL.
const ACL_DEFAULT: &CStr = c"system.posix_acl_default";
