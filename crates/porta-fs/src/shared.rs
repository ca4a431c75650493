//! State that outlives one file-server process: a shared memory region (a memfd the
//! supervisor creates) holding the negotiated INIT parameters, progress counters the
//! supervisor watches, and the node / open-file table.
//!
//! The table is indexed by descriptor number: node ids and file handles are descriptors
//! in an fd table shared with the keeper process (CLONE_FILES), so a server killed at
//! any instant leaves every descriptor and every published entry behind for the next one.
//! Every entry is written completely before its kind word is published (Release), so a
//! kill between two stores leaves at worst a leaked descriptor, never a torn entry.
//!
//! Descriptors are bounded (RLIMIT_NOFILE), so a second table holds *cold* nodes: nodes
//! without a descriptor of their own, recorded by their parent node and name (see
//! [`cold`]); the server opens one by name, and checks its inode, when a request needs it.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::Error;

/// Magic word at the start of the region ("PORTAFS1").
pub const MAGIC: u64 = 0x5054_4153_4653_3031;

/// Header word indexes.
#[allow(missing_docs)]
pub mod hdr {
    pub const MAGIC: usize = 0;
    pub const CAPACITY: usize = 1;
    pub const INITIALIZED: usize = 2;
    pub const PROTO_MINOR: usize = 3;
    pub const INIT_FLAGS: usize = 4;
    pub const MAX_WRITE: usize = 5;
    pub const MAX_READAHEAD: usize = 6;
    pub const SERVER_STARTS: usize = 7;
    pub const REQUESTS_DONE: usize = 8;
    pub const RESENT: usize = 9;
    pub const SERVER_PID: usize = 10;
    pub const ROOT_FD: usize = 11;
    pub const PROC_FD: usize = 12;
    pub const FUSE_FD: usize = 13;
    pub const UNMOUNTED: usize = 14;
    pub const SERVER_PROC_FD: usize = 15;
    pub const DEV_COUNT: usize = 16;
    pub const DEVS: usize = 17;
    pub const MAX_DEVS: usize = 32;
    pub const SLOTS: usize = 64;
    pub const SLOT_WORDS: usize = 4;
    pub const MAX_SLOTS: usize = 8;
    pub const JOURNAL: usize = 96;
    pub const JOURNAL_WORDS: usize = 4;
    pub const TABLE: usize = 128;
    /// Table entries in use (nodes and handles); recounted by each new server.
    pub const LIVE: usize = 60;
    /// Node-use clock: advanced once per new node, stamped on a node when it is used.
    pub const EPOCH: usize = 61;
    /// RLIMIT_NOFILE soft limit of the servers, as the keeper set it (0: unknown).
    pub const NOFILE: usize = 62;
    /// One more than the highest descriptor ever published: table scans stop there, so
    /// the untouched rest of the memfd is never faulted in (it would count as memory).
    pub const HIGH: usize = 63;
    /// Entries of the cold-node table (0: none).
    pub const COLD_CAPACITY: usize = 49;
    /// Cold nodes in use; recounted by each new server.
    pub const COLD_LIVE: usize = 50;
    /// One more than the highest cold entry ever published (scans stop there).
    pub const COLD_HIGH: usize = 51;
    /// Open counter: each file or directory handle gets the next value as its stamp.
    pub const OPENS: usize = 52;
    /// Descriptors the shared fd table holds at least, as the keeper or a server last
    /// grew it (0: unknown, never grown ahead).
    pub const FD_TABLE: usize = 53;
    /// Notifications the supervisor's host-change watcher has sent (invalidations of
    /// names, attributes or pages changed from the host; 0 without a watcher).
    pub const HOST_INVALIDATIONS: usize = 54;
    /// The standby's wake-up pipe as the keeper holds it: read end + 1, write end + 1
    /// (0: none). A twin taking the keeper's place closes them (the standby is gone).
    pub const STANDBY_RD: usize = 55;
    /// See [`STANDBY_RD`].
    pub const STANDBY_WR: usize = 56;
}

/// Kind word of a table entry.
#[allow(missing_docs)]
pub mod kind {
    pub const FREE: u64 = 0;
    pub const NODE: u64 = 1;
    pub const FILE: u64 = 2;
    /// A directory the server keeps open for a listing the kernel reads without a handle
    /// ([`crate::listing`]): word 1 the node id, words 2 and 3 the directory's inode and
    /// device, word 4 the offset its last READDIR ended at.
    pub const STREAM: u64 = 3;
    /// A descriptor holding a cold node whose recorded name went away (unlinked or
    /// replaced while the kernel still knows the node): word 1 is the node id.
    pub const PIN: u64 = 4;
    /// A spare file: a nameless regular file made and registered as a passthrough
    /// backing file ahead of a CREATE (`server::spares`); words 2 and 3 its inode and
    /// device, word 4 its backing id + 1, as a node's.
    pub const SPARE: u64 = 5;
    /// The server's end of a translator's FUSE socket (`server::translators`): word 1
    /// the translated node's descriptor (kind [`TRANSLATED`]), words 2 and 3 its inode and
    /// device, 4 the translator's pid, 5 its epoch and passive flag, 7 its max_write.
    pub const TRANSLATOR: u64 = 6;
    /// An O_PATH descriptor of a node that carries a running translator: word 1 the
    /// translator's socket.
    pub const TRANSLATED: u64 = 7;
    /// A descriptor a server holds while one request or task is under way, before it
    /// becomes anything above (a file being opened, a read-only reopen being registered
    /// as a backing file, a node being looked up), or for as long as the server runs (the
    /// directory spares are made in): word 1 the start number (`hdr::SERVER_STARTS`) of
    /// the server holding it. A successor closes the ones of servers that are gone.
    pub const SCRATCH: u64 = 8;
    /// The io_uring instance of a ring thread (FUSE over io_uring): word 1 the start
    /// number of the server that made it. A new server closes those of older servers once
    /// its own rings are armed; recorded here, they are not lost when it dies before.
    pub const RING: u64 = 9;
}

/// States of a reply-journal entry (one per server thread: request id, state, two words).
#[allow(missing_docs)]
pub mod journal {
    pub const EMPTY: u64 = 0;
    pub const INTENT: u64 = 1;
    pub const DONE: u64 = 2;
    /// A request answered with a node (and, for CREATE, a file handle) finished: the
    /// entry holds the node's descriptor + 1 (and the handle + 1 in the high half) and the
    /// node's backing inode number.
    pub const ENTRY: u64 = 3;
}

/// Thread slot states.
#[allow(missing_docs)]
pub mod slot {
    pub const IDLE: u64 = 0;
    pub const WORKING: u64 = 1;
}

/// Words per table entry (one cache line). Node: kind, lookup count, st_ino, st_dev,
/// passthrough backing id + 1 (0: none), its open files (passthrough ones in the low
/// half, [`PASSTHROUGH_OPENS`], ones served by the server in a passthrough connection in
/// the high half, [`SERVED_OPEN`] each), last use (a value of the `hdr::EPOCH` clock),
/// spare. File handle: kind, node id, its stamp (a value of `hdr::OPENS`, never 0: tells
/// this open from a later one that got the same descriptor number), open flags (with
/// [`FILE_SERVED`]), then zeros.
pub const ENTRY_WORDS: usize = 8;

/// Mask of a node's open-files word counting its passthrough opens.
pub const PASSTHROUGH_OPENS: u64 = 0xffff_ffff;

/// One open served by the server in a passthrough connection, in a node's open-files word.
pub const SERVED_OPEN: u64 = 1 << 32;

/// Bit of a file handle's open-flags word: the server serves its I/O although the
/// connection passes files through (a file with set-id bits, or one opened alongside).
/// Published with the entry, so a new server counts the handle the way it was opened.
pub const FILE_SERVED: u64 = 1 << 32;

/// Word of a node entry holding its last use.
pub const LAST_USE: usize = 6;

/// Words of a thread's FORGET progress, after the table: the request id of the FORGET
/// frame the thread is applying (the frame itself stays in the thread's request buffer,
/// [`Shared::request_buf`]) and how many of its entries were started.
pub const FORGET_LOG_WORDS: usize = 2;

/// Word indexes of a thread's FORGET progress.
#[allow(missing_docs)]
pub mod forget_log {
    pub const UNIQUE: usize = 0;
    pub const STARTED: usize = 1;
}

/// Bytes of each server thread's request buffer in the region. Requests are read straight
/// into it, so a FORGET frame read by a server killed before it logged the frame is still
/// there for its successor (the kernel never resends a FORGET).
pub const REQUEST_BUF_LEN: usize = (1 << 20) + 4096;

/// Node ids from here on name cold-table entries (`COLD_BASE + index`); below it, node
/// id = descriptor + 2.
pub const COLD_BASE: u64 = 1 << 32;

/// What a node id (other than the root's) names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeRef {
    /// A node holding a descriptor (node id = descriptor + 2).
    Hot(RawFd),
    /// A cold-table entry (node id = [`COLD_BASE`] + index).
    Cold(usize),
}

impl NodeRef {
    /// Decodes a node id; `None` for ids that name nothing (0, the root's 1, out of range).
    pub fn of(id: u64) -> Option<NodeRef> {
        if id >= COLD_BASE {
            usize::try_from(id - COLD_BASE).ok().map(NodeRef::Cold)
        } else if (2..=i32::MAX as u64).contains(&id) {
            Some(NodeRef::Hot((id - 2) as RawFd))
        } else {
            None
        }
    }

    /// The node id.
    pub fn id(self) -> u64 {
        match self {
            NodeRef::Hot(fd) => fd as u64 + 2,
            NodeRef::Cold(i) => COLD_BASE + i as u64,
        }
    }

    /// The number the supervisor's backing broker knows the node by (an `i32` on its
    /// wire): the descriptor, or -(index + 1) for a cold node.
    pub fn tag(self) -> i32 {
        match self {
            NodeRef::Hot(fd) => fd,
            NodeRef::Cold(i) => -(i32::try_from(i).unwrap_or(i32::MAX)) - 1,
        }
    }

    /// The node of a [`NodeRef::tag`].
    pub fn from_tag(tag: i32) -> NodeRef {
        if tag >= 0 {
            NodeRef::Hot(tag)
        } else {
            NodeRef::Cold((-(tag as i64) - 1) as usize)
        }
    }
}

/// Cold nodes a supervisor's state region has room for. The memfd is sparse: only
/// entries in use are memory.
pub const DEFAULT_COLD_CAPACITY: usize = 1 << 20;

/// Layout of a cold-table entry (32 words). Words 0-6 are as in a node entry of the
/// descriptor table (kind, lookup count, st_ino, st_dev, backing id + 1, open count, last
/// use), then the descriptor of its pin + 1 (0: none), the parent's node id, the name's
/// length, a sequence word (odd while the name is being rewritten), the file type
/// (`st_mode & S_IFMT`), and the name.
#[allow(missing_docs)]
pub mod cold {
    pub const WORDS: usize = 32;
    pub const PIN: usize = 7;
    pub const PARENT: usize = 8;
    pub const NAME_LEN: usize = 9;
    pub const SEQ: usize = 10;
    pub const TYPE: usize = 11;
    pub const NAME: usize = 12;
    /// Longest name a cold entry holds; a node with a longer name gets a descriptor.
    pub const NAME_MAX: usize = (WORDS - NAME) * 8;
}

/// The shared region, mapped for the life of the process.
#[derive(Debug, Clone, Copy)]
pub struct Shared {
    words: &'static [AtomicU64],
}

/// A progress snapshot of one server thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotInfo {
    /// `slot::IDLE` or `slot::WORKING`.
    pub state: u64,
    /// Incremented at the start and end of each request.
    pub seq: u64,
    /// The thread's id.
    pub tid: u64,
}

/// A node's words, in the descriptor table or in the cold table (their first seven
/// words are laid out alike; see [`ENTRY_WORDS`] and [`cold`]).
#[derive(Debug, Clone, Copy)]
pub struct NodeEntry<'a> {
    w: &'a [AtomicU64],
    cold: bool,
}

impl<'a> NodeEntry<'a> {
    /// The kind word ([`kind`]).
    pub fn kind(&self) -> u64 {
        self.w[0].load(Ordering::Acquire)
    }

    /// The lookup count: the kernel's references to the node.
    pub fn lookups(&self) -> &'a AtomicU64 {
        &self.w[1]
    }

    /// The backing inode number (`st_ino`).
    pub fn ino(&self) -> u64 {
        self.w[2].load(Ordering::Relaxed)
    }

    /// The backing (`st_dev`, `st_ino`).
    pub fn inode_key(&self) -> (u64, u64) {
        inode_key(self.w)
    }

    /// The passthrough backing id + 1 (0: none).
    pub fn backing(&self) -> &'a AtomicU64 {
        &self.w[4]
    }

    /// The open files: passthrough ones in the low half ([`PASSTHROUGH_OPENS`]), ones the
    /// server serves in a passthrough connection in the high half ([`SERVED_OPEN`] each).
    pub fn opens(&self) -> &'a AtomicU64 {
        &self.w[5]
    }

    /// The last use, a value of the `hdr::EPOCH` clock.
    pub fn last_use(&self) -> &'a AtomicU64 {
        &self.w[LAST_USE]
    }

    /// Stamps the node as used at `epoch` (no store when it carries it already: the hot
    /// path does not dirty the cache line of a node used over and over).
    pub fn touch(&self, epoch: u64) {
        if self.w[LAST_USE].load(Ordering::Relaxed) != epoch {
            self.w[LAST_USE].store(epoch, Ordering::Relaxed);
        }
    }

    /// A cold node's pin: the descriptor + 1 holding it since its recorded name went
    /// away (0: none). `None` for a node with a descriptor of its own.
    pub fn pin(&self) -> Option<&'a AtomicU64> {
        self.cold.then(|| &self.w[cold::PIN])
    }

    /// Test-only fault: leaves a cold node's recorded name as a server killed while
    /// writing it would (its sequence word odd), for the next server to drop. No effect
    /// on a node with a descriptor.
    #[cfg(feature = "fault-injection")]
    pub fn tear_name(&self) {
        if self.cold {
            self.w[cold::SEQ].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A cold node's file type (`st_mode & S_IFMT`); `None` for a node with a descriptor.
    pub fn file_type(&self) -> Option<u64> {
        self.cold
            .then(|| self.w[cold::TYPE].load(Ordering::Relaxed))
    }
}

/// A file handle's words in the descriptor table (kind [`kind::FILE`]).
#[derive(Debug, Clone, Copy)]
pub struct FileEntry<'a>(&'a [AtomicU64]);

impl FileEntry<'_> {
    /// The node the file was opened from.
    pub fn node(&self) -> u64 {
        self.0[1].load(Ordering::Relaxed)
    }

    /// Its stamp, a value of `hdr::OPENS` (never 0): tells this open from a later one
    /// that got the same descriptor number.
    pub fn stamp(&self) -> u64 {
        self.0[2].load(Ordering::Relaxed)
    }

    /// Whether the server serves its I/O in a passthrough connection ([`FILE_SERVED`]).
    pub fn served(&self) -> bool {
        self.0[3].load(Ordering::Relaxed) & FILE_SERVED != 0
    }
}

/// A listing stream's words in the descriptor table (kind [`kind::STREAM`]).
#[derive(Debug, Clone, Copy)]
pub struct StreamEntry<'a>(&'a [AtomicU64]);

impl StreamEntry<'_> {
    /// The directory's backing (`st_dev`, `st_ino`).
    pub fn inode_key(&self) -> (u64, u64) {
        inode_key(self.0)
    }

    /// The offset its last READDIR ended at.
    pub fn offset(&self) -> u64 {
        self.0[4].load(Ordering::Relaxed)
    }

    /// Records the offset a READDIR ended at.
    pub fn set_offset(&self, off: u64) {
        self.0[4].store(off, Ordering::Relaxed);
    }
}

/// The reply-journal entry of one server thread: the request id, a state
/// ([`journal`]) and two data words whose meaning depends on the request (see
/// [`JournalRecord`]). Each write sequence publishes its state last (Release).
#[derive(Debug, Clone, Copy)]
pub struct JournalEntry<'a>(&'a [AtomicU64]);

impl JournalEntry<'_> {
    /// What the entry holds now.
    pub fn snapshot(&self) -> JournalRecord {
        let [unique, state, x, y] = [0, 1, 2, 3].map(|k| self.0[k].load(Ordering::Acquire));
        JournalRecord {
            unique,
            state,
            x,
            y,
        }
    }

    /// Starts request `unique` of the kinds whose reply is only an errno: state
    /// [`journal::INTENT`], data words cleared.
    pub fn intent(&self, unique: u64) {
        self.0[1].store(journal::EMPTY, Ordering::Release);
        self.0[0].store(unique, Ordering::Relaxed);
        self.0[2].store(0, Ordering::Relaxed);
        self.0[3].store(0, Ordering::Relaxed);
        self.0[1].store(journal::INTENT, Ordering::Release);
    }

    /// Ends the request started by [`JournalEntry::intent`] with `errno` (0: success):
    /// state [`journal::DONE`].
    pub fn done(&self, errno: i32) {
        self.0[2].store(errno as u64, Ordering::Relaxed);
        self.0[1].store(journal::DONE, Ordering::Release);
    }

    /// Records that request `unique` is about to be answered with a node: state
    /// [`journal::ENTRY`], its [`JournalRecord::node_and_fh`] word and its inode number.
    pub fn entry(&self, unique: u64, node_and_fh: u64, ino: u64) {
        self.0[1].store(journal::EMPTY, Ordering::Release);
        self.0[0].store(unique, Ordering::Relaxed);
        self.0[2].store(node_and_fh, Ordering::Relaxed);
        self.0[3].store(ino, Ordering::Relaxed);
        self.0[1].store(journal::ENTRY, Ordering::Release);
    }

    /// For a RELEASE under way (state INTENT): the handle and its stamp.
    pub fn release(&self, fh: u64, stamp: u64) {
        self.0[2].store(fh, Ordering::Relaxed);
        self.0[3].store(stamp, Ordering::Release);
    }

    /// For a RENAME_EXCHANGE under way (state INTENT): the inode numbers of the old and
    /// the new name before the swap.
    pub fn exchange(&self, old_ino: u64, new_ino: u64) {
        self.0[2].store(old_ino, Ordering::Relaxed);
        self.0[3].store(new_ino, Ordering::Release);
    }

    /// Sets the state alone (tests: a journal as a killed server left it).
    pub fn set_state(&self, state: u64) {
        self.0[1].store(state, Ordering::Release);
    }
}

/// A copy of a [`JournalEntry`]. The data words `x` and `y` mean, by state and request:
/// * [`journal::DONE`] (UNLINK, RMDIR, RENAME, RENAME2, SETXATTR, REMOVEXATTR,
///   RELEASE): `x` the errno answered ([`JournalRecord::errno`]).
/// * [`journal::INTENT`] of a RELEASE: `x` the handle, `y` its stamp
///   ([`JournalRecord::fh`], [`JournalRecord::stamp`]); of a RENAME_EXCHANGE: the two
///   inode numbers before the swap ([`JournalRecord::inos`]); 0 and 0 otherwise.
/// * [`journal::ENTRY`] (LOOKUP, MKDIR, MKNOD, SYMLINK, LINK, CREATE): `x` the node's
///   journal code in the low half and, for CREATE, the handle + 1 in the high half
///   ([`JournalRecord::node_and_fh`]); `y` the node's inode number
///   ([`JournalRecord::ino`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JournalRecord {
    /// The request id (without the resend flag).
    pub unique: u64,
    /// [`journal::EMPTY`], [`journal::INTENT`], [`journal::DONE`] or [`journal::ENTRY`].
    pub state: u64,
    x: u64,
    y: u64,
}

impl JournalRecord {
    /// DONE: the errno answered (0: success).
    pub fn errno(&self) -> i32 {
        self.x as i32
    }

    /// ENTRY: the node's journal code (low 32 bits) and, for CREATE, the handle + 1
    /// (high 32 bits; 0: none).
    pub fn node_and_fh(&self) -> (u64, u64) {
        (self.x & 0xffff_ffff, self.x >> 32)
    }

    /// ENTRY: the node's backing inode number.
    pub fn ino(&self) -> u64 {
        self.y
    }

    /// INTENT of a RELEASE: the handle.
    pub fn fh(&self) -> u64 {
        self.x
    }

    /// INTENT of a RELEASE: the handle's stamp (0: not recorded yet).
    pub fn stamp(&self) -> u64 {
        self.y
    }

    /// INTENT of a RENAME_EXCHANGE: the inode numbers of the old and the new name
    /// before the swap (0: not recorded yet).
    pub fn inos(&self) -> (u64, u64) {
        (self.x, self.y)
    }
}

/// The progress slot of one server thread, which the supervisor watches.
#[derive(Debug, Clone, Copy)]
pub struct ThreadSlot<'a>(&'a [AtomicU64]);

impl ThreadSlot<'_> {
    /// The thread `tid` starts, idle.
    pub fn start(&self, tid: u64) {
        self.0[0].store(slot::IDLE, Ordering::Relaxed);
        self.0[2].store(tid, Ordering::Release);
    }

    /// The thread starts or ends a request (`working`): the state set and the sequence
    /// counter advanced.
    pub fn set_working(&self, working: bool) {
        let state = if working { slot::WORKING } else { slot::IDLE };
        self.0[0].store(state, Ordering::Relaxed);
        self.0[1].fetch_add(1, Ordering::Release);
    }

    /// Clears every word (state, sequence, thread id, spare): no thread, no request.
    pub fn clear(&self) {
        for w in self.0 {
            w.store(0, Ordering::Relaxed);
        }
    }

    /// A snapshot.
    pub fn info(&self) -> SlotInfo {
        SlotInfo {
            state: self.0[0].load(Ordering::Acquire),
            seq: self.0[1].load(Ordering::Acquire),
            tid: self.0[2].load(Ordering::Acquire),
        }
    }
}

/// One server thread's FORGET progress (see [`FORGET_LOG_WORDS`]).
#[derive(Debug, Clone, Copy)]
pub struct ForgetLog<'a>(&'a [AtomicU64]);

impl ForgetLog<'_> {
    /// The request id of the FORGET frame being applied.
    pub fn unique(&self) -> u64 {
        self.0[forget_log::UNIQUE].load(Ordering::Acquire)
    }

    /// How many of its entries were started.
    pub fn started(&self) -> usize {
        self.0[forget_log::STARTED].load(Ordering::Acquire) as usize
    }

    /// Starts applying frame `unique` from entry `first` on.
    pub fn begin(&self, unique: u64, first: usize) {
        self.0[forget_log::STARTED].store(first as u64, Ordering::Relaxed);
        self.0[forget_log::UNIQUE].store(unique, Ordering::Release);
    }

    /// Records that entry `k` is being applied (`k + 1` started).
    pub fn started_entry(&self, k: usize) {
        self.0[forget_log::STARTED].store(k as u64 + 1, Ordering::Release);
    }
}

/// Creates a memfd sized for `capacity` table entries (and
/// [`DEFAULT_COLD_CAPACITY`] cold nodes) and initializes it.
pub fn create_memfd(capacity: usize) -> Result<OwnedFd, Error> {
    create_memfd_with(capacity, DEFAULT_COLD_CAPACITY)
}

/// As [`create_memfd`], with room for `cold_capacity` cold nodes.
pub fn create_memfd_with(capacity: usize, cold_capacity: usize) -> Result<OwnedFd, Error> {
    let size = region_size(capacity, cold_capacity);
    let fd = memfd(c"porta-fs-state")?;
    nix::unistd::ftruncate(&fd, size as i64).map_err(|e| Error::Sys("ftruncate state memfd", e))?;
    let sh = Shared::map(fd.as_raw_fd())?;
    sh.words[hdr::CAPACITY].store(capacity as u64, Ordering::Relaxed);
    sh.words[hdr::COLD_CAPACITY].store(cold_capacity as u64, Ordering::Relaxed);
    sh.words[hdr::MAGIC].store(MAGIC, Ordering::Release);
    Ok(fd)
}

/// Words before the cold table: header, descriptor table, FORGET logs.
fn cold_start(capacity: usize) -> usize {
    hdr::TABLE + capacity * ENTRY_WORDS + hdr::MAX_SLOTS * FORGET_LOG_WORDS
}

/// Words before the request buffers.
fn bufs_start(capacity: usize, cold_capacity: usize) -> usize {
    let words = cold_start(capacity) + cold_capacity * cold::WORDS;
    (words + 511) & !511 // page-aligned
}

fn region_size(capacity: usize, cold_capacity: usize) -> usize {
    let bytes = bufs_start(capacity, cold_capacity) * 8 + hdr::MAX_SLOTS * REQUEST_BUF_LEN;
    (bytes + 4095) & !4095
}

fn memfd(name: &std::ffi::CStr) -> Result<OwnedFd, Error> {
    // SAFETY: valid name; plain system call.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(Error::Io("memfd_create", std::io::Error::last_os_error()));
    }
    // SAFETY: fresh descriptor owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn map_shared(fd: RawFd, len: usize) -> Result<&'static [AtomicU64], Error> {
    // SAFETY: mapping a memfd we hold, MAP_SHARED, never unmapped: the returned slice
    // stays valid for the life of the process. The region is page-aligned, AtomicU64 has
    // the layout of u64, and every access to it goes through atomics.
    unsafe {
        let p = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            fd,
            0,
        );
        if p == libc::MAP_FAILED {
            return Err(Error::Io(
                "mmap state memfd",
                std::io::Error::last_os_error(),
            ));
        }
        Ok(std::slice::from_raw_parts(p as *const AtomicU64, len / 8))
    }
}

impl Shared {
    /// Maps an existing state memfd (created by [`create_memfd`]).
    pub fn map(fd: RawFd) -> Result<Shared, Error> {
        let st = crate::sys::fstat(fd)
            .map_err(|e| Error::Sys("fstat state memfd", nix::errno::Errno::from_raw(e)))?;
        let len = st.st_size as usize;
        if len < hdr::TABLE * 8 || len % 8 != 0 {
            return Err(Error::BadState(format!("state memfd has size {len}")));
        }
        let words = map_shared(fd, len)?;
        let sh = Shared { words };
        let magic = words[hdr::MAGIC].load(Ordering::Acquire);
        if magic != 0 && magic != MAGIC {
            return Err(Error::BadState(format!("state memfd magic {magic:#x}")));
        }
        if magic == MAGIC {
            let cap = sh.capacity();
            let cold = words[hdr::COLD_CAPACITY].load(Ordering::Relaxed) as usize;
            if region_size(cap, cold) > len {
                return Err(Error::BadState(format!(
                    "state capacity {cap} exceeds its memfd"
                )));
            }
        }
        Ok(sh)
    }

    /// A process-private region (tests and servers that need no restart).
    pub fn anonymous(capacity: usize) -> Result<Shared, Error> {
        Self::anonymous_with(capacity, DEFAULT_COLD_CAPACITY)
    }

    /// As [`Shared::anonymous`], with room for `cold_capacity` cold nodes.
    pub fn anonymous_with(capacity: usize, cold_capacity: usize) -> Result<Shared, Error> {
        let fd = create_memfd_with(capacity, cold_capacity)?;
        let sh = Shared::map(fd.as_raw_fd())?;
        Ok(sh)
    }

    /// A header word.
    pub fn hdr(&self, i: usize) -> &AtomicU64 {
        &self.words[i]
    }

    /// Number of table entries.
    pub fn capacity(&self) -> usize {
        let cap = self.words[hdr::CAPACITY].load(Ordering::Relaxed) as usize;
        cap.min((self.words.len() - hdr::TABLE) / ENTRY_WORDS)
    }

    /// Descriptors below this bound are all a table scan has to look at (one more than
    /// the highest descriptor ever published, at most the capacity).
    pub fn scan_end(&self) -> RawFd {
        (self.words[hdr::HIGH].load(Ordering::Relaxed) as usize).min(self.capacity()) as RawFd
    }

    /// The raw words of the entry for descriptor `fd`, if in range. Outside this module,
    /// read them through the typed views ([`Shared::hot_node`], [`Shared::file`],
    /// [`Shared::stream`]) or [`inode_key`].
    pub(crate) fn entry(&self, fd: RawFd) -> Option<&[AtomicU64]> {
        if fd < 0 || fd as usize >= self.capacity() {
            return None;
        }
        let base = hdr::TABLE + fd as usize * ENTRY_WORDS;
        Some(&self.words[base..base + ENTRY_WORDS])
    }

    /// Publishes an entry: the data words first (the others zeroed), then its kind.
    /// Counts it in `hdr::LIVE` when the entry was free.
    pub fn publish(&self, fd: RawFd, k: u64, a: u64, b: u64, c: u64) -> bool {
        match self.entry(fd) {
            Some(e) => {
                e[1].store(a, Ordering::Relaxed);
                e[2].store(b, Ordering::Relaxed);
                e[3].store(c, Ordering::Relaxed);
                for w in &e[4..] {
                    w.store(0, Ordering::Relaxed);
                }
                self.words[hdr::HIGH].fetch_max(fd as u64 + 1, Ordering::Relaxed);
                if e[0].swap(k, Ordering::AcqRel) == kind::FREE {
                    self.words[hdr::LIVE].fetch_add(1, Ordering::Relaxed);
                }
                true
            }
            None => false,
        }
    }

    /// Whether descriptor `fd`, just published, lies in the last quarter of the fd table
    /// as last grown ([`hdr::FD_TABLE`]): time to grow it again, ahead of need.
    pub fn fd_table_filling(&self, fd: RawFd) -> bool {
        let table = self.words[hdr::FD_TABLE].load(Ordering::Relaxed);
        table > 0 && (fd as u64 + 1) * 4 >= table * 3
    }

    /// The kind of entry `fd`.
    pub fn kind(&self, fd: RawFd) -> u64 {
        self.entry(fd)
            .map_or(kind::FREE, |e| e[0].load(Ordering::Acquire))
    }

    /// The start number of the server holding descriptor `fd`, an entry of kind `k`
    /// ([`kind::SCRATCH`] or [`kind::RING`]; `None`: not of that kind).
    pub fn owner(&self, fd: RawFd, k: u64) -> Option<u64> {
        let e = self.entry(fd)?;
        (e[0].load(Ordering::Acquire) == k).then(|| e[1].load(Ordering::Relaxed))
    }

    /// Marks entry `fd` free (and uncounts it from `hdr::LIVE`).
    pub fn free(&self, fd: RawFd) {
        if let Some(e) = self.entry(fd) {
            free_entry(e, &self.words[hdr::LIVE]);
        }
    }

    /// Table entries in use (nodes and handles), as counted by `publish` and `free`.
    pub fn live(&self) -> usize {
        self.words[hdr::LIVE].load(Ordering::Relaxed) as usize
    }

    /// Counts the entries in use again and stores the count in `hdr::LIVE` (a server
    /// killed between a publish and its count leaves it off by one; a new server calls
    /// this before serving, alone).
    pub fn recount(&self) -> usize {
        let n = (0..self.scan_end())
            .filter(|&fd| self.kind(fd) != kind::FREE)
            .count();
        self.words[hdr::LIVE].store(n as u64, Ordering::Relaxed);
        n
    }

    /// The current value of the node-use clock.
    pub fn epoch(&self) -> u64 {
        self.words[hdr::EPOCH].load(Ordering::Relaxed)
    }

    /// Advances the node-use clock; returns the value before (the stamp of a new node).
    pub fn next_epoch(&self) -> u64 {
        self.words[hdr::EPOCH].fetch_add(1, Ordering::Relaxed)
    }

    /// Stamps node `fd` as used at `epoch` (no store when it already carries it: the
    /// hot path does not dirty the cache line of a node used over and over).
    pub fn touch(&self, fd: RawFd, epoch: u64) {
        if let Some(e) = self.entry(fd) {
            if e[LAST_USE].load(Ordering::Relaxed) != epoch {
                e[LAST_USE].store(epoch, Ordering::Relaxed);
            }
        }
    }

    /// The raw progress slot words of thread `i` (state, sequence, thread id, spare);
    /// the typed view is [`Shared::thread_slot`].
    pub(crate) fn slot(&self, i: usize) -> Option<&[AtomicU64]> {
        if i >= hdr::MAX_SLOTS {
            return None;
        }
        let base = hdr::SLOTS + i * hdr::SLOT_WORDS;
        Some(&self.words[base..base + hdr::SLOT_WORDS])
    }

    /// The reply-journal entry of thread `i`.
    pub fn journal(&self, i: usize) -> Option<JournalEntry<'_>> {
        if i >= hdr::MAX_SLOTS {
            return None;
        }
        let base = hdr::JOURNAL + i * hdr::JOURNAL_WORDS;
        Some(JournalEntry(&self.words[base..base + hdr::JOURNAL_WORDS]))
    }

    /// The progress slot of thread `i`.
    pub fn thread_slot(&self, i: usize) -> Option<ThreadSlot<'_>> {
        self.slot(i).map(ThreadSlot)
    }

    /// Entry `fd` of the descriptor table as a node (whatever its kind word says).
    pub fn hot_node(&self, fd: RawFd) -> Option<NodeEntry<'_>> {
        self.entry(fd).map(|w| NodeEntry { w, cold: false })
    }

    /// Cold entry `i` as a node (whatever its kind word says).
    pub fn cold_node(&self, i: usize) -> Option<NodeEntry<'_>> {
        self.cold_entry(i).map(|w| NodeEntry { w, cold: true })
    }

    /// Entry `fd` of the descriptor table as a file handle (whatever its kind word says).
    pub fn file(&self, fd: RawFd) -> Option<FileEntry<'_>> {
        self.entry(fd).map(FileEntry)
    }

    /// Entry `fd` of the descriptor table as a listing stream (whatever its kind word
    /// says).
    pub fn stream(&self, fd: RawFd) -> Option<StreamEntry<'_>> {
        self.entry(fd).map(StreamEntry)
    }

    /// The FORGET log of thread `i` (see [`FORGET_LOG_WORDS`]): what a killed server had
    /// read from the kernel but not yet applied, for its successor to finish.
    pub fn forget_log(&self, i: usize) -> Option<ForgetLog<'_>> {
        if i >= hdr::MAX_SLOTS {
            return None;
        }
        let base = hdr::TABLE + self.capacity() * ENTRY_WORDS + i * FORGET_LOG_WORDS;
        self.words.get(base..base + FORGET_LOG_WORDS).map(ForgetLog)
    }

    /// Snapshot of every thread slot in use.
    pub fn slots(&self) -> Vec<SlotInfo> {
        (0..hdr::MAX_SLOTS)
            .filter_map(|i| self.slot(i))
            .map(|s| SlotInfo {
                state: s[0].load(Ordering::Acquire),
                seq: s[1].load(Ordering::Acquire),
                tid: s[2].load(Ordering::Acquire),
            })
            .filter(|s| s.tid != 0)
            .collect()
    }

    /// The request thread `i` last read (opcode, request id, node id), from the FUSE
    /// header at the start of its request buffer: while its slot is [`slot::WORKING`], the
    /// request it is in. The supervisor reads it when a server dies, to tell a request
    /// that kills every server from bad luck. Written by an untrusted server: use it to
    /// decide about that server only.
    pub fn request_in(&self, i: usize) -> Option<(u32, u64, u64)> {
        if i >= hdr::MAX_SLOTS {
            return None;
        }
        let cold = self.words[hdr::COLD_CAPACITY].load(Ordering::Relaxed) as usize;
        // REQUEST_BUF_LEN is a multiple of 8: each buffer starts on a word.
        let w = bufs_start(self.capacity(), cold) + i * (REQUEST_BUF_LEN / 8);
        let len_op = self.words.get(w)?.load(Ordering::Acquire);
        let unique = self.words.get(w + 1)?.load(Ordering::Acquire);
        let node = self.words.get(w + 2)?.load(Ordering::Acquire);
        Some(((len_op >> 32) as u32, unique, node))
    }

    /// Every passthrough backing id the table records, with the [`NodeRef::tag`] of its
    /// node: what a supervisor taking over knows its dead predecessor handed out.
    pub fn recorded_backing(&self) -> Vec<(i32, i32)> {
        let mut out = Vec::new();
        for fd in 0..self.scan_end() {
            if !matches!(self.kind(fd), kind::NODE | kind::SPARE) {
                continue;
            }
            if let Some(e) = self.entry(fd) {
                let id = e[4].load(Ordering::Acquire);
                if id != 0 {
                    out.push((NodeRef::Hot(fd).tag(), (id - 1) as i32));
                }
            }
        }
        for i in 0..self.cold_scan_end() {
            if self.cold_kind(i) != kind::NODE {
                continue;
            }
            if let Some(e) = self.cold_entry(i) {
                let id = e[4].load(Ordering::Acquire);
                if id != 0 {
                    out.push((NodeRef::Cold(i).tag(), (id - 1) as i32));
                }
            }
        }
        out
    }

    /// Total requests answered by all servers so far.
    pub fn requests_done(&self) -> u64 {
        self.words[hdr::REQUESTS_DONE].load(Ordering::Relaxed)
    }

    /// The passthrough backing id recorded for the node with [`NodeRef::tag`] `tag`, if
    /// it is a node and has one (the supervisor checks the ids it handed out against
    /// this).
    pub fn backing_of(&self, tag: i32) -> Option<i32> {
        let id = self
            .node_entry(NodeRef::from_tag(tag).id())?
            .backing()
            .load(Ordering::Acquire);
        (id != 0).then(|| (id - 1) as i32)
    }

    /// Index (1-based) of device `dev` in the device table, adding it when new.
    pub fn dev_index(&self, dev: u64) -> u64 {
        let n = self.words[hdr::DEV_COUNT].load(Ordering::Acquire) as usize;
        for i in 0..n.min(hdr::MAX_DEVS) {
            if self.words[hdr::DEVS + i].load(Ordering::Relaxed) == dev {
                return i as u64 + 1;
            }
        }
        if n >= hdr::MAX_DEVS {
            return hdr::MAX_DEVS as u64 + 1;
        }
        self.words[hdr::DEVS + n].store(dev, Ordering::Relaxed);
        self.words[hdr::DEV_COUNT].store(n as u64 + 1, Ordering::Release);
        n as u64 + 1
    }
}

/// The cold-node table.
impl Shared {
    /// Number of cold-table entries (0 when the region has none).
    pub fn cold_capacity(&self) -> usize {
        let cap = self.words[hdr::COLD_CAPACITY].load(Ordering::Relaxed) as usize;
        let start = cold_start(self.capacity());
        cap.min(self.words.len().saturating_sub(start) / cold::WORDS)
    }

    /// Cold entries below this bound are all a scan has to look at.
    pub fn cold_scan_end(&self) -> usize {
        (self.words[hdr::COLD_HIGH].load(Ordering::Relaxed) as usize).min(self.cold_capacity())
    }

    /// The raw words of cold entry `i`, if in range (the typed view:
    /// [`Shared::cold_node`]).
    pub(crate) fn cold_entry(&self, i: usize) -> Option<&[AtomicU64]> {
        if i >= self.cold_capacity() {
            return None;
        }
        let base = cold_start(self.capacity()) + i * cold::WORDS;
        self.words.get(base..base + cold::WORDS)
    }

    /// Publishes cold entry `i`: a node with lookup count `count`, inode (`ino`, `dev`)
    /// of file type `ftype`, found as `name` in directory node `parent`. The data words
    /// first, then the kind. False when `i` is out of range or the name too long.
    #[allow(clippy::too_many_arguments)]
    pub fn cold_publish(
        &self,
        i: usize,
        count: u64,
        ino: u64,
        dev: u64,
        ftype: u32,
        parent: u64,
        name: &[u8],
    ) -> bool {
        let Some(e) = self.cold_entry(i) else {
            return false;
        };
        if name.is_empty() || name.len() > cold::NAME_MAX {
            return false;
        }
        e[1].store(count, Ordering::Relaxed);
        e[2].store(ino, Ordering::Relaxed);
        e[3].store(dev, Ordering::Relaxed);
        for w in &e[4..cold::PARENT] {
            w.store(0, Ordering::Relaxed);
        }
        e[cold::SEQ].store(0, Ordering::Relaxed);
        e[cold::TYPE].store(u64::from(ftype), Ordering::Relaxed);
        store_name(e, parent, name);
        self.words[hdr::COLD_HIGH].fetch_max(i as u64 + 1, Ordering::Relaxed);
        if e[0].swap(kind::NODE, Ordering::AcqRel) == kind::FREE {
            self.words[hdr::COLD_LIVE].fetch_add(1, Ordering::Relaxed);
        }
        true
    }

    /// The entry of node `id` (hot or cold) when it holds a node.
    pub fn node_entry(&self, id: u64) -> Option<NodeEntry<'_>> {
        match NodeRef::of(id)? {
            NodeRef::Hot(fd) if self.kind(fd) == kind::NODE => self.hot_node(fd),
            NodeRef::Cold(i) if self.cold_kind(i) == kind::NODE => self.cold_node(i),
            _ => None,
        }
    }

    /// Whether cold entry `i` holds a node.
    pub fn cold_kind(&self, i: usize) -> u64 {
        self.cold_entry(i)
            .map_or(kind::FREE, |e| e[0].load(Ordering::Acquire))
    }

    /// Frees cold entry `i`.
    pub fn cold_free(&self, i: usize) {
        if let Some(e) = self.cold_entry(i) {
            free_entry(e, &self.words[hdr::COLD_LIVE]);
        }
    }

    /// The request buffer of server thread `i` ([`REQUEST_BUF_LEN`] bytes), `None` when
    /// the region has none (made by an older version).
    ///
    /// # Safety
    /// The slice aliases shared memory: within a process, at most one slice per `i` may
    /// be alive at a time (each server thread takes its own; recovery takes them before
    /// the threads start and drops them). Other processes only touch it after this one
    /// is dead (a successor server) or never (keeper, supervisor).
    pub unsafe fn request_buf(&self, i: usize) -> Option<&'static mut [u8]> {
        if i >= hdr::MAX_SLOTS {
            return None;
        }
        let cold = self.words[hdr::COLD_CAPACITY].load(Ordering::Relaxed) as usize;
        let start = bufs_start(self.capacity(), cold) * 8 + i * REQUEST_BUF_LEN;
        if start + REQUEST_BUF_LEN > self.words.len() * 8 {
            return None;
        }
        let base = self.words.as_ptr() as *mut u8;
        // SAFETY: in bounds of the mapping (checked above), which lives for the process;
        // exclusivity is the caller's contract.
        Some(unsafe { std::slice::from_raw_parts_mut(base.add(start), REQUEST_BUF_LEN) })
    }

    /// A new handle stamp (never 0).
    pub fn next_open(&self) -> u64 {
        self.words[hdr::OPENS].fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Cold nodes in use.
    pub fn cold_live(&self) -> usize {
        self.words[hdr::COLD_LIVE].load(Ordering::Relaxed) as usize
    }

    /// Counts the cold nodes in use again (a new server, in one pass over the entries
    /// ever used) and repairs names a killed server left half-written: such a name is
    /// dropped (length 0), so the node can no longer be opened by name and fails with
    /// ESTALE instead of opening a wrong file. `each` sees every entry below the scan end:
    /// `Some(words)` for a node, `None` for a free one.
    pub fn cold_recount(&self, mut each: impl FnMut(usize, Option<&[AtomicU64]>)) -> usize {
        let mut n = 0;
        for i in 0..self.cold_scan_end() {
            let Some(e) = self.cold_entry(i) else { break };
            if e[0].load(Ordering::Acquire) == kind::FREE {
                each(i, None);
                continue;
            }
            n += 1;
            let seq = e[cold::SEQ].load(Ordering::Acquire);
            if seq % 2 == 1 {
                e[cold::NAME_LEN].store(0, Ordering::Relaxed);
                e[cold::SEQ].store(seq + 1, Ordering::Release);
            }
            each(i, Some(e));
        }
        self.words[hdr::COLD_LIVE].store(n as u64, Ordering::Relaxed);
        n
    }

    /// Records that cold node `i` is now `name` in directory node `parent`. One writer
    /// at a time (the server's node lock); readers see the old or the new name, never a
    /// mix ([`Shared::cold_name`]).
    pub fn cold_set_name(&self, i: usize, parent: u64, name: &[u8]) -> bool {
        match self.cold_entry(i) {
            Some(e) if !name.is_empty() && name.len() <= cold::NAME_MAX => {
                store_name(e, parent, name);
                true
            }
            _ => false,
        }
    }

    /// Copies the parent node id and name of cold node `i` (name into `buf`, at least
    /// [`cold::NAME_MAX`] bytes, returning its length; 0 when the node has no usable name).
    pub fn cold_name(&self, i: usize, buf: &mut [u8]) -> (u64, usize) {
        let Some(e) = self.cold_entry(i) else {
            return (0, 0);
        };
        if buf.len() < cold::NAME_MAX {
            return (0, 0);
        }
        for _ in 0..1000 {
            let seq = e[cold::SEQ].load(Ordering::Acquire);
            if seq % 2 == 1 {
                std::hint::spin_loop();
                continue;
            }
            let parent = e[cold::PARENT].load(Ordering::Relaxed);
            let len = (e[cold::NAME_LEN].load(Ordering::Relaxed) as usize).min(cold::NAME_MAX);
            for (k, w) in e[cold::NAME..].iter().enumerate() {
                if k * 8 >= len {
                    break;
                }
                let b = w.load(Ordering::Relaxed).to_le_bytes();
                let n = (len - k * 8).min(8);
                buf[k * 8..k * 8 + n].copy_from_slice(&b[..n]);
            }
            std::sync::atomic::fence(Ordering::Acquire);
            if e[cold::SEQ].load(Ordering::Relaxed) == seq {
                return (parent, len);
            }
        }
        (0, 0)
    }
}

/// The backing (st_dev, st_ino) recorded in a node entry (hot or cold) or a listing
/// stream's entry: words 3 and 2.
pub(crate) fn inode_key(e: &[AtomicU64]) -> (u64, u64) {
    (e[3].load(Ordering::Relaxed), e[2].load(Ordering::Relaxed))
}

/// Marks entry `e` free and uncounts it from `counter` when it was in use.
fn free_entry(e: &[AtomicU64], counter: &AtomicU64) {
    if e[0].swap(kind::FREE, Ordering::AcqRel) != kind::FREE {
        let _ = counter.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
            Some(n.saturating_sub(1))
        });
    }
}

/// Writes the parent and name of a cold entry under its sequence word.
fn store_name(e: &[AtomicU64], parent: u64, name: &[u8]) {
    let seq = e[cold::SEQ].load(Ordering::Relaxed);
    e[cold::SEQ].store(seq | 1, Ordering::Relaxed);
    std::sync::atomic::fence(Ordering::Release);
    e[cold::PARENT].store(parent, Ordering::Relaxed);
    e[cold::NAME_LEN].store(name.len() as u64, Ordering::Relaxed);
    for (k, chunk) in name.chunks(8).enumerate() {
        let mut b = [0u8; 8];
        b[..chunk.len()].copy_from_slice(chunk);
        e[cold::NAME + k].store(u64::from_le_bytes(b), Ordering::Relaxed);
    }
    e[cold::SEQ].store((seq | 1) + 1, Ordering::Release);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_and_free() {
        let sh = Shared::anonymous(64).unwrap();
        assert_eq!(sh.capacity(), 64);
        assert!(sh.publish(5, kind::NODE, 1, 2, 3));
        assert_eq!(sh.kind(5), kind::NODE);
        sh.free(5);
        assert_eq!(sh.kind(5), kind::FREE);
        assert!(!sh.publish(64, kind::NODE, 0, 0, 0));
        assert!(sh.entry(-1).is_none());
        assert_eq!(sh.dev_index(77), 1);
        assert_eq!(sh.dev_index(78), 2);
        assert_eq!(sh.dev_index(77), 1);
    }

    #[test]
    fn live_count_and_touch() {
        let sh = Shared::anonymous(64).unwrap();
        assert_eq!(sh.live(), 0);
        assert!(sh.publish(5, kind::NODE, 1, 2, 3));
        assert!(sh.publish(6, kind::FILE, 7, 0, 0));
        // Publishing over a published entry does not count it twice.
        assert!(sh.publish(6, kind::FILE, 7, 0, 0));
        assert_eq!(sh.live(), 2);
        sh.free(6);
        sh.free(6);
        assert_eq!(sh.live(), 1);
        sh.free(9);
        assert_eq!(sh.live(), 1);
        sh.hdr(hdr::LIVE).store(40, Ordering::Relaxed);
        assert_eq!(sh.recount(), 1);
        assert_eq!(sh.live(), 1);
        let t = sh.next_epoch();
        assert_eq!(sh.epoch(), t + 1);
        sh.touch(5, 9);
        assert_eq!(sh.entry(5).unwrap()[LAST_USE].load(Ordering::Relaxed), 9);
        // A new entry starts with every data word cleared.
        assert!(sh.publish(5, kind::NODE, 1, 2, 3));
        assert_eq!(sh.entry(5).unwrap()[LAST_USE].load(Ordering::Relaxed), 0);
    }

    #[test]
    fn cold_entries_publish_name_and_free() {
        let sh = Shared::anonymous_with(64, 16).unwrap();
        assert_eq!(sh.cold_capacity(), 16);
        assert_eq!(sh.cold_live(), 0);
        let long = [b'x'; cold::NAME_MAX + 1];
        assert!(!sh.cold_publish(3, 1, 10, 20, 0o100000, 2, &long));
        assert!(!sh.cold_publish(16, 1, 10, 20, 0o100000, 2, b"a"));
        assert!(sh.cold_publish(3, 1, 10, 20, 0o100000, 7, b"a-name-longer-than-eight"));
        assert_eq!(sh.cold_kind(3), kind::NODE);
        assert_eq!(sh.cold_live(), 1);
        assert_eq!(sh.cold_scan_end(), 4);
        let mut buf = [0u8; cold::NAME_MAX];
        let (parent, len) = sh.cold_name(3, &mut buf);
        assert_eq!((parent, &buf[..len]), (7, &b"a-name-longer-than-eight"[..]));
        let max = [b'y'; cold::NAME_MAX];
        assert!(sh.cold_set_name(3, 9, &max));
        let (parent, len) = sh.cold_name(3, &mut buf);
        assert_eq!((parent, &buf[..len]), (9, &max[..]));
        assert!(sh.cold_set_name(3, 9, b"short"));
        let (_, len) = sh.cold_name(3, &mut buf);
        assert_eq!(&buf[..len], b"short");
        // A name left half-written by a killed server is dropped by the next one.
        let e = sh.cold_entry(3).unwrap();
        e[cold::SEQ].fetch_add(1, Ordering::Relaxed);
        assert_eq!(sh.cold_name(3, &mut buf).1, 0);
        sh.hdr(hdr::COLD_LIVE).store(9, Ordering::Relaxed);
        assert_eq!(sh.cold_recount(|_, _| {}), 1);
        assert_eq!(sh.cold_name(3, &mut buf).1, 0);
        assert_eq!(e[cold::SEQ].load(Ordering::Relaxed) % 2, 0);
        sh.cold_free(3);
        sh.cold_free(3);
        assert_eq!(sh.cold_live(), 0);
        assert_eq!(sh.cold_kind(3), kind::FREE);
        // The descriptor table, the FORGET progress words, the cold table and the request
        // buffers do not overlap, and the last buffer ends inside the region.
        assert!(
            sh.forget_log(hdr::MAX_SLOTS - 1)
                .unwrap()
                .0
                .as_ptr_range()
                .end
                <= sh.cold_entry(0).unwrap().as_ptr_range().start
        );
        let cold_end = sh.cold_entry(15).unwrap().as_ptr_range().end as usize;
        // SAFETY: the test holds no other slice of these buffers.
        let (b0, b7) = unsafe { (sh.request_buf(0).unwrap(), sh.request_buf(7).unwrap()) };
        assert!(b0.as_ptr() as usize >= cold_end);
        assert_eq!(b0.len(), REQUEST_BUF_LEN);
        assert_eq!(
            b7.as_ptr() as usize - b0.as_ptr() as usize,
            7 * REQUEST_BUF_LEN
        );
        b7[REQUEST_BUF_LEN - 1] = 1;
        // SAFETY: returns None; nothing is aliased.
        assert!(unsafe { sh.request_buf(hdr::MAX_SLOTS) }.is_none());
    }

    #[test]
    fn node_ids_and_tags_round_trip() {
        for n in [
            NodeRef::Hot(0),
            NodeRef::Hot(19_999),
            NodeRef::Cold(0),
            NodeRef::Cold(1 << 20),
        ] {
            assert_eq!(NodeRef::of(n.id()), Some(n));
            assert_eq!(NodeRef::from_tag(n.tag()), n);
        }
        assert_eq!(NodeRef::of(0), None);
        assert_eq!(NodeRef::of(1), None, "the root is the server's own");
        assert_eq!(NodeRef::of(i32::MAX as u64 + 1), None);
        assert!(NodeRef::Cold(0).tag() < 0);
        // A backing id recorded in a cold entry is found by the cold node's tag.
        let sh = Shared::anonymous_with(64, 8).unwrap();
        assert!(sh.cold_publish(5, 1, 1, 1, 0o100000, 1, b"f"));
        sh.cold_entry(5).unwrap()[4].store(8, Ordering::Relaxed);
        assert_eq!(sh.backing_of(NodeRef::Cold(5).tag()), Some(7));
        assert_eq!(sh.backing_of(NodeRef::Cold(6).tag()), None);
    }
}
