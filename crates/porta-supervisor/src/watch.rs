//! Changes made from the host: the backing tree is watched with fanotify, and what the
//! kernel cached of a changed name, attribute or page is invalidated.
//!
//! The file server answers with one-day entry and attribute timeouts, caches negative
//! entries and keeps file pages (it is the tree's only writer). A change made from the host
//! (`docker cp`, `podman mount` and an edit, a rename, a chmod) would stay invisible
//! inside for that long. So the supervisor puts a fanotify *filesystem* mark on the
//! backing tree's file system (reporting directory handles and names, and object handles),
//! drops the events of the container's own processes and servers, maps each handle to the
//! server's node (the node table in the state memfd is keyed by backing (device, inode))
//! and sends the connection:
//!
//! * for a name created, removed or renamed in a directory the kernel knows:
//!   `FUSE_NOTIFY_INVAL_ENTRY` with `FUSE_EXPIRE_ONLY` for (directory, name) — also a
//!   negative entry, which has no node — and `FUSE_NOTIFY_INVAL_INODE` of the directory
//!   (its attributes and cached listing);
//! * for an attribute change: `FUSE_NOTIFY_INVAL_INODE` of the node (attributes);
//! * for a data change (write, truncate): `FUSE_NOTIFY_INVAL_INODE` of the node,
//!   attributes and every cached page.
//!
//! Notifications are written by a tiny *notifier* child, never by the supervisor itself:
//! an entry notification takes the directory's lock, which the kernel may hold for a
//! request (a CREATE) whose server thread waits for the supervisor's backing-file answer.
//! The notifier only copies frames from a socket to the FUSE descriptor; when it dies it
//! is forked again. The supervisor parses nothing from the container but names and
//! handles (the event records are bounds-checked; names are passed on as bytes).

use std::collections::{HashMap, HashSet, VecDeque};
use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use porta_fs::abi;
use porta_fs::shared::{hdr, kind, NodeRef, Shared};

/// Events watched: names (also of directories), attributes, data (writes and truncates
/// send FAN_MODIFY). Not FAN_CLOSE_WRITE: the last close of a passthrough backing file
/// happens in whichever process drops it last — often a container's process on its way
/// out, whose pid is gone when the event is read — and a close changes nothing a write
/// did not already report.
const MASK: u64 = libc::FAN_CREATE
    | libc::FAN_DELETE
    | libc::FAN_MOVED_FROM
    | libc::FAN_MOVED_TO
    | libc::FAN_ATTRIB
    | libc::FAN_MODIFY
    | libc::FAN_ONDIR;

/// Size of `struct fanotify_event_metadata`.
const META_LEN: usize = 24;
/// `FAN_EVENT_INFO_TYPE_FID`, `_DFID_NAME`, `_DFID` (linux/fanotify.h).
const INFO_FID: u8 = 1;
const INFO_DFID_NAME: u8 = 2;
const INFO_DFID: u8 = 3;
/// `FILEID_INO32_GEN`: ext2/3/4's handle, (inode, generation) as two u32.
const FILEID_INO32_GEN: i32 = 1;
/// `EXT4_SUPER_MAGIC` (also ext2 and ext3).
const EXT_MAGIC: i64 = 0xEF53;
/// Frames waiting for the notifier beyond which new ones are dropped (and counted).
const MAX_PENDING: usize = 65_536;
/// Bytes sent on `sock` that its peer has not read yet (`SIOCOUTQ`); unknown counts as
/// some.
fn unread(sock: &OwnedFd) -> i32 {
    let mut n: libc::c_int = 1;
    // SAFETY: SIOCOUTQ (TIOCOUTQ) writes one int to the pointer given.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::TIOCOUTQ, &mut n) } < 0 {
        return 1;
    }
    n
}

/// Frames kept after they were handed to the notifier, sent again through the next one
/// when it dies: more than its socket can hold unread (a frame of at most 289 bytes takes
/// about 1 KiB of the socket's 208 KiB send buffer) plus the one it was writing.
const RECENT_FRAMES: usize = 1024;
/// Times the notifier is forked again before the watcher gives up.
const MAX_NOTIFIER_STARTS: u32 = 100;
/// Largest notification frame: header, `fuse_notify_inval_entry_out`, a name, NUL.
const MAX_FRAME: usize = 16 + 16 + 256 + 1;

/// How long the supervisor leaves the event queue alone after a batch that held only the
/// container's own changes: the kernel merges a file's repeated events meanwhile, so a
/// container writing in small pieces (each write an event, in passthrough mode made by
/// the container's own process) wakes the supervisor about once per rest, not once per
/// write. A host change waits at most this much longer.
pub const OWN_EVENTS_REST: std::time::Duration = std::time::Duration::from_millis(2);

/// Entry and attribute timeout of the servers (seconds) when host changes cannot be
/// watched: a change from the host is seen at the latest this long after it was made.
pub const SHORT_TTL_SECS: u64 = 1;

/// Starts the watcher of a container unless `enabled` is false. Returns it, and whether
/// the servers must fall back to short timeouts (enabled, but no watcher could be had:
/// logged as a warning saying why).
pub fn start_for(
    enabled: bool,
    rootfs: &Path,
    fuse: RawFd,
    cgroup_procs: &[PathBuf],
) -> (Option<Watcher>, bool) {
    if !enabled {
        tracing::info!("host changes are not watched (run.porta.fs.host-changes=off): changes made from the host may stay invisible inside for up to a day");
        return (None, false);
    }
    match Watcher::start(rootfs, fuse, cgroup_procs) {
        Ok(w) => {
            tracing::info!(rootfs = %rootfs.display(), "watching the backing file system for host changes");
            (Some(w), false)
        }
        Err(e) => {
            tracing::warn!(error = %e, rootfs = %rootfs.display(), ttl_secs = SHORT_TTL_SECS, "cannot watch the backing tree for host changes (fanotify filesystem marks need CAP_SYS_ADMIN and a file system with file handles; overlayfs needs nfs_export=on); the file server answers with short timeouts instead");
            (None, true)
        }
    }
}

/// Errors of the watcher's set-up (the caller logs them and falls back).
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    /// A system call failed.
    #[error("{0}: {1}")]
    Sys(&'static str, #[source] std::io::Error),
}

fn last_err(what: &'static str) -> WatchError {
    WatchError::Sys(what, std::io::Error::last_os_error())
}

/// A file handle as fanotify reports it: `handle_type` and the opaque bytes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Handle {
    pub htype: i32,
    pub bytes: Vec<u8>,
}

/// What one event asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Change {
    /// `name` in directory `dir` was created, removed or renamed.
    Entry { dir: Handle, name: Vec<u8> },
    /// The object's attributes changed (`data`: and its contents).
    Inode { obj: Handle, data: bool },
    /// The kernel's event queue overflowed: events were lost.
    Overflow,
}

/// One notification to send: the result of mapping a [`Change`] to node ids.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Inval {
    /// Expire (directory node, name).
    Entry(u64, Vec<u8>),
    /// Drop the node's attributes (`true`: and pages).
    Inode(u64, bool),
    /// Writeback cache: grow the kernel's size of the node to this (if smaller).
    Size(u64, u64),
    /// Writeback cache: drop the node from the kernel if nothing uses it.
    Prune(u64),
}

/// Parses a buffer read from a fanotify descriptor (`FAN_REPORT_DFID_NAME |
/// FAN_REPORT_FID`). Events whose pid `own` accepts are skipped; malformed records end the
/// parse. Returns the number of events read (skipped ones too).
pub(crate) fn parse(buf: &[u8], own: &mut dyn FnMut(i32) -> bool, out: &mut Vec<Change>) -> usize {
    let mut at = 0;
    let mut n = 0;
    while buf.len() - at >= META_LEN {
        let ev = &buf[at..];
        let len = u32::from_ne_bytes([ev[0], ev[1], ev[2], ev[3]]) as usize;
        let meta_len = u16::from_ne_bytes([ev[6], ev[7]]) as usize;
        if len < META_LEN || len > ev.len() || meta_len < META_LEN || meta_len > len {
            break;
        }
        let mask = u64::from_ne_bytes(ev[8..16].try_into().unwrap_or([0; 8]));
        let pid = i32::from_ne_bytes([ev[20], ev[21], ev[22], ev[23]]);
        n += 1;
        at += len;
        if mask & libc::FAN_Q_OVERFLOW != 0 {
            out.push(Change::Overflow);
            continue;
        }
        if own(pid) {
            continue;
        }
        let (mut dfid_name, mut dfid, mut fid) = (None, None, None);
        let mut info = &ev[meta_len..len];
        while info.len() >= 4 {
            let itype = info[0];
            let ilen = u16::from_ne_bytes([info[2], info[3]]) as usize;
            if ilen < 4 || ilen > info.len() {
                break;
            }
            // Header (4), fsid (8), then struct file_handle (8 + bytes) [+ name + NUL].
            let rec = &info[4..ilen];
            info = &info[ilen..];
            let Some(fh) = rec.get(8..) else { continue };
            if fh.len() < 8 {
                continue;
            }
            let hbytes = u32::from_ne_bytes([fh[0], fh[1], fh[2], fh[3]]) as usize;
            let htype = i32::from_ne_bytes([fh[4], fh[5], fh[6], fh[7]]);
            let Some(bytes) = fh.get(8..8 + hbytes) else {
                continue;
            };
            let h = Handle {
                htype,
                bytes: bytes.to_vec(),
            };
            match itype {
                INFO_FID => fid = Some(h),
                INFO_DFID => dfid = Some(h),
                INFO_DFID_NAME => {
                    let rest = &fh[8 + hbytes..];
                    let name = rest.split(|&b| b == 0).next().unwrap_or(&[]);
                    if !name.is_empty() && name != b"." && !name.contains(&b'/') {
                        dfid_name = Some((h, name.to_vec()));
                    } else {
                        dfid = Some(h);
                    }
                }
                _ => {}
            }
        }
        let dirent =
            libc::FAN_CREATE | libc::FAN_DELETE | libc::FAN_MOVED_FROM | libc::FAN_MOVED_TO;
        if mask & dirent != 0 {
            if let Some((dir, name)) = &dfid_name {
                out.push(Change::Entry {
                    dir: dir.clone(),
                    name: name.clone(),
                });
                out.push(Change::Inode {
                    obj: dir.clone(),
                    data: true,
                });
            }
        }
        let data = mask & (libc::FAN_MODIFY | libc::FAN_CLOSE_WRITE) != 0;
        if data || mask & libc::FAN_ATTRIB != 0 {
            // The object: its own handle, else (an event on a directory itself without
            // one) the directory's.
            if let Some(obj) = fid.or(dfid) {
                out.push(Change::Inode { obj, data });
            }
        }
    }
    n
}

/// Maps changes to notifications, given each handle's backing (device, inode) and the
/// node of each (device, inode) the kernel knows. Deduplicated, in first-seen order.
pub(crate) fn invalidations(
    changes: &[Change],
    key_of: &mut dyn FnMut(&Handle) -> Option<(u64, u64)>,
    node_of: &dyn Fn((u64, u64)) -> Option<u64>,
) -> Vec<Inval> {
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    for c in changes {
        let inval = match c {
            Change::Entry { dir, name } => key_of(dir)
                .and_then(node_of)
                .map(|n| Inval::Entry(n, name.clone())),
            Change::Inode { obj, data } => key_of(obj)
                .and_then(node_of)
                .map(|n| Inval::Inode(n, *data)),
            Change::Overflow => None,
        };
        if let Some(i) = inval {
            if seen.insert(i.clone()) {
                out.push(i);
            }
        }
    }
    // An attribute-only invalidation is implied by a data one of the same node.
    out.retain(|i| !matches!(i, Inval::Inode(n, false) if seen.contains(&Inval::Inode(*n, true))));
    out
}

/// What a lost event (a queue overflow) calls for, given every node the kernel holds:
/// attributes and pages of each node and the root, with a writeback cache also a prune of
/// each node (names cannot be enumerated, see [`Watcher::handle`]).
pub(crate) fn overflow_invalidations(
    nodes: &HashMap<(u64, u64), u64>,
    writeback: bool,
) -> Vec<Inval> {
    let mut ids: Vec<u64> = nodes.values().copied().filter(|&n| n != 1).collect();
    ids.sort_unstable();
    let mut out: Vec<Inval> = std::iter::once(1)
        .chain(ids.iter().copied())
        .map(|n| Inval::Inode(n, true))
        .collect();
    if writeback {
        out.extend(ids.iter().map(|&n| Inval::Prune(n)));
    }
    out
}

/// The host-change watcher of one container.
pub struct Watcher {
    fan: OwnedFd,
    /// The backing root (a directory opened for reading, as fanotify_mark wants): the
    /// mount for `open_by_handle_at`.
    root: OwnedFd,
    root_key: (u64, u64),
    /// ext2/3/4: a `FILEID_INO32_GEN` handle names its inode directly.
    ext: bool,
    fuse: RawFd,
    expire_only: bool,
    buf: Vec<u8>,
    notifier: Option<Notifier>,
    notifier_starts: u32,
    pending: VecDeque<Vec<u8>>,
    /// The last frames handed to the notifier (see [`RECENT_FRAMES`]).
    recent: VecDeque<Vec<u8>>,
    dropped: u64,
    /// Server pids seen (the last few, for events queued before a restart).
    servers: VecDeque<i32>,
    /// The container's `payload/` and `porta/` leaves (their `cgroup.procs`), one pair
    /// per hierarchy; the first pair that can be read is enough (every hierarchy holds
    /// the same processes in them).
    leaves: Vec<PathBuf>,
    members: HashSet<i32>,
    /// Pids found outside the container, kept across reads: the file system is marked
    /// whole, so every busy process of the host (a compiler, a log writer) sends events,
    /// and looking each up again would cost a read of the leaves per batch. A pid seen
    /// here that later is the container's (reused) only costs extra invalidations.
    foreign: HashSet<i32>,
    overflows: u64,
}

struct Notifier {
    sock: OwnedFd,
    pidfd: Option<OwnedFd>,
}

impl Drop for Notifier {
    fn drop(&mut self) {
        if let Some(p) = &self.pidfd {
            let _ = porta_sys::pidfd::send_signal(p.as_fd(), libc::SIGKILL);
        }
    }
}

impl Watcher {
    /// Marks the file system of `rootfs` and forks the notifier writing to `fuse`.
    /// `cgroup_procs`: the servers' leaf files (the container's leaves are found next to
    /// them). Fails (the caller falls back to short timeouts) when fanotify cannot mark
    /// the file system: no CAP_SYS_ADMIN, or a file system without file handles
    /// (overlayfs without `nfs_export=on`).
    pub fn start(
        rootfs: &Path,
        fuse: RawFd,
        cgroup_procs: &[PathBuf],
    ) -> Result<Watcher, WatchError> {
        let root = open_path(rootfs)?;
        // SAFETY: fstat into a local struct.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: `root` is open; `st` is a valid out pointer.
        if unsafe { libc::fstat(root.as_raw_fd(), &mut st) } != 0 {
            return Err(last_err("fstat backing root"));
        }
        // SAFETY: fstatfs into a local struct.
        let mut sfs: libc::statfs = unsafe { std::mem::zeroed() };
        // SAFETY: `root` is open; `sfs` is a valid out pointer.
        let ext = unsafe { libc::fstatfs(root.as_raw_fd(), &mut sfs) } == 0
            && sfs.f_type as i64 == EXT_MAGIC;
        let fan = fanotify_init()?;
        fanotify_mark_fs(&fan, &root)?;
        let leaves = cgroup_procs
            .iter()
            .filter_map(|p| p.parent()?.parent())
            .flat_map(|g| [g.join("payload/cgroup.procs"), g.join("porta/cgroup.procs")])
            .collect();
        let mut w = Watcher {
            fan,
            root,
            root_key: (st.st_dev, st.st_ino),
            ext,
            fuse,
            expire_only: false,
            buf: vec![0; 64 * 1024],
            notifier: None,
            notifier_starts: 0,
            pending: VecDeque::new(),
            recent: VecDeque::new(),
            dropped: 0,
            servers: VecDeque::new(),
            leaves,
            members: HashSet::new(),
            foreign: HashSet::new(),
            overflows: 0,
        };
        w.notifier = Some(w.fork_notifier()?);
        Ok(w)
    }

    /// Stops watching: drops the file system's mark now. Closing a fanotify group waits
    /// for its marks to be destroyed, which takes an SRCU grace period (~10 ms here) once
    /// they are detached; detached first, the grace period runs while the caller tears
    /// down the rest, and the close at the end finds little or nothing left to wait for.
    pub fn unmark(&self) {
        // SAFETY: FAN_MARK_FLUSH of the group's file-system marks: no path is read.
        let r = unsafe {
            libc::fanotify_mark(
                self.fan.as_raw_fd(),
                libc::FAN_MARK_FLUSH | libc::FAN_MARK_FILESYSTEM,
                0,
                libc::AT_FDCWD,
                std::ptr::null(),
            )
        };
        if r != 0 {
            tracing::debug!(error = %std::io::Error::last_os_error(), "fanotify marks not flushed");
        }
    }

    /// The fanotify descriptor, to poll for events.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fan.as_fd()
    }

    /// Reads the queued events and sends the notifications they call for. `servers`: the
    /// pids of the container's keeper and servers now (their changes are the container's).
    /// Returns whether any event was a change from outside the container.
    pub fn handle(&mut self, shared: &Shared, servers: &[i32]) -> bool {
        for &p in servers.iter().filter(|&&p| p > 0) {
            if !self.servers.contains(&p) {
                if self.servers.len() >= 16 {
                    self.servers.pop_front();
                }
                self.servers.push_back(p);
            }
        }
        self.expire_only = shared.hdr(hdr::PROTO_MINOR).load(Ordering::Relaxed) >= 38;
        let mut changes = Vec::new();
        let mut events = 0;
        let me = std::process::id() as i32;
        // Bounded: at most 64 reads per wake-up, the rest on the next one.
        for _ in 0..64 {
            // SAFETY: reading into our own buffer of its length.
            let n = unsafe {
                libc::read(
                    self.fan.as_raw_fd(),
                    self.buf.as_mut_ptr().cast(),
                    self.buf.len(),
                )
            };
            if n <= 0 {
                break;
            }
            let buf = std::mem::take(&mut self.buf);
            let mut refreshed = false;
            if self.foreign.len() > 4096 {
                self.foreign.clear();
            }
            events += parse(
                &buf[..n as usize],
                &mut |pid| {
                    // The supervisor's own: its log file may live on the same file system,
                    // and it drops the last reference to passthrough backing files (their
                    // CLOSE_WRITE).
                    if pid == me || self.servers.contains(&pid) || self.members.contains(&pid) {
                        return true;
                    }
                    if self.foreign.contains(&pid) {
                        return false;
                    }
                    if !refreshed {
                        refreshed = true;
                        // Members are kept once seen (a writer may exit before its
                        // later events are read); bounded, dropped all at once.
                        if self.members.len() > 4096 {
                            self.members.clear();
                        }
                        self.members.extend(read_members(&self.leaves));
                        if self.members.contains(&pid) {
                            return true;
                        }
                    }
                    self.foreign.insert(pid);
                    tracing::debug!(pid, "events of a process outside the container");
                    false
                },
                &mut changes,
            );
            self.buf = buf;
        }
        if changes.is_empty() {
            self.flush();
            return false;
        }
        let overflow = changes.iter().any(|c| matches!(c, Change::Overflow));
        let mut keys: HashMap<Handle, Option<(u64, u64)>> = HashMap::new();
        for c in &changes {
            let h = match c {
                Change::Entry { dir, .. } => dir,
                Change::Inode { obj, .. } => obj,
                Change::Overflow => continue,
            };
            if !keys.contains_key(h) {
                let k = self.key_of(h);
                keys.insert(h.clone(), k);
            }
        }
        let wanted: HashSet<(u64, u64)> = keys.values().flatten().copied().collect();
        let nodes = self.nodes_of(shared, if overflow { None } else { Some(&wanted) });
        let root_key = self.root_key;
        let mut invals = invalidations(&changes, &mut |h| keys.get(h).copied().flatten(), &|k| {
            if k == root_key {
                Some(1)
            } else {
                nodes.get(&k).copied()
            }
        });
        // A writeback-cache connection (strict mode) keeps the kernel's size and mtime of
        // a regular file over the server's: a file the host grew gets its new size by a
        // data-less STORE at its end, and each changed file is PRUNEd — dropped from the
        // kernel when nothing uses it, so that its next lookup takes every attribute anew
        // (the only way a shrunk size is seen; an open file keeps its size until closed).
        let writeback =
            shared.hdr(hdr::INIT_FLAGS).load(Ordering::Relaxed) & abi::init::WRITEBACK_CACHE != 0;
        let mut extra = Vec::new();
        if writeback {
            let by_id: HashMap<u64, (u64, u64)> = nodes.iter().map(|(k, id)| (*id, *k)).collect();
            let mut sizes: HashMap<(u64, u64), u64> = HashMap::new();
            for c in &changes {
                if let Change::Inode { obj, data: true } = c {
                    if let Some(fd) = open_by_handle(&self.root, obj) {
                        if let Ok(st) = nix::sys::stat::fstat(fd.as_raw_fd()) {
                            if st.st_mode & libc::S_IFMT == libc::S_IFREG {
                                sizes.insert((st.st_dev, st.st_ino), st.st_size as u64);
                            }
                        }
                    }
                }
            }
            for i in &invals {
                if let Inval::Inode(n, true) = i {
                    if let Some(size) = by_id.get(n).and_then(|k| sizes.get(k)) {
                        extra.push(Inval::Size(*n, *size));
                        extra.push(Inval::Prune(*n));
                    }
                }
            }
        }
        invals.extend(extra);
        if overflow {
            // Events were lost: anything cached may be stale. Every node's attributes and
            // pages are dropped (writeback cache: every node nothing uses is pruned too,
            // its size being the kernel's own). Names cannot be enumerated: a negative
            // entry stays until its timeout or the next change in its directory. Not
            // FUSE_NOTIFY_INC_EPOCH: it makes every dentry invalid, and the kernel detaches
            // the mounts on an invalid dentry — the container's /proc, /dev, /sys.
            self.overflows += 1;
            tracing::warn!(
                overflows = self.overflows,
                nodes = nodes.len(),
                "host-change watcher: the event queue overflowed; invalidating every node's attributes and pages"
            );
            invals.extend(overflow_invalidations(&nodes, writeback));
        }
        let count = invals.len() as u64;
        for i in &invals {
            let mut w = abi::Writer::default();
            match i {
                Inval::Entry(dir, name) => {
                    let flags = if self.expire_only {
                        abi::INVAL_ENTRY_EXPIRE_ONLY
                    } else {
                        0
                    };
                    abi::encode_inval_entry_flags(&mut w, *dir, name, flags);
                }
                Inval::Inode(n, data) => {
                    abi::encode_inval_inode_range(&mut w, *n, if *data { 0 } else { -1 }, 0)
                }
                Inval::Size(n, size) => abi::encode_store(&mut w, *n, *size, &[]),
                Inval::Prune(n) => abi::encode_prune(&mut w, &[*n]),
            }
            self.queue(w.buf);
        }
        self.flush();
        if count > 0 {
            let total = shared
                .hdr(hdr::HOST_INVALIDATIONS)
                .fetch_add(count, Ordering::Relaxed)
                + count;
            // The first few names (made by the host, not the container) say what changed.
            let names: Vec<String> = invals
                .iter()
                .filter_map(|i| match i {
                    Inval::Entry(_, n) => Some(String::from_utf8_lossy(n).into_owned()),
                    _ => None,
                })
                .take(8)
                .collect();
            tracing::info!(
                events,
                invalidations = count,
                total,
                names = ?names,
                "host changes: invalidated what the kernel cached"
            );
            for i in &invals {
                tracing::debug!(?i, "host change");
            }
        }
        true
    }

    /// The backing (device, inode) a handle names: read from an ext2/3/4 handle, else
    /// by opening it (`open_by_handle_at`, O_PATH). None when it is gone.
    fn key_of(&self, h: &Handle) -> Option<(u64, u64)> {
        if self.ext && h.htype == FILEID_INO32_GEN && h.bytes.len() == 8 {
            let ino = u32::from_ne_bytes([h.bytes[0], h.bytes[1], h.bytes[2], h.bytes[3]]);
            return Some((self.root_key.0, u64::from(ino)));
        }
        let fd = open_by_handle(&self.root, h)?;
        let st = nix::sys::stat::fstat(fd.as_raw_fd()).ok()?;
        Some((st.st_dev, st.st_ino))
    }

    /// Node ids by backing (device, inode), of the nodes whose key is `wanted` (all:
    /// None), from the node tables in the state memfd.
    fn nodes_of(
        &self,
        shared: &Shared,
        wanted: Option<&HashSet<(u64, u64)>>,
    ) -> HashMap<(u64, u64), u64> {
        node_ids(shared, wanted)
    }

    fn queue(&mut self, frame: Vec<u8>) {
        if self.pending.len() >= MAX_PENDING {
            self.dropped += 1;
            if self.dropped.is_power_of_two() {
                tracing::warn!(
                    dropped = self.dropped,
                    "host-change watcher: the notifier is behind; notifications dropped"
                );
            }
            return;
        }
        self.pending.push_back(frame);
    }

    /// Hands the waiting frames to the notifier, as many as its socket takes now; forks
    /// the notifier again when it died.
    pub fn flush(&mut self) {
        // A notifier that died may have left frames unwritten in its socket.
        if self
            .notifier
            .as_ref()
            .and_then(|n| n.pidfd.as_ref())
            .is_some_and(|p| porta_sys::pidfd::has_exited(p.as_fd()))
        {
            let e = std::io::Error::from_raw_os_error(libc::ESRCH);
            if !self.replace_notifier(&e) {
                return;
            }
        }
        while let Some(frame) = self.pending.front() {
            let Some(n) = &self.notifier else { return };
            // SAFETY: sending our own buffer on our own socket.
            let r = unsafe {
                libc::send(
                    n.sock.as_raw_fd(),
                    frame.as_ptr().cast(),
                    frame.len(),
                    libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                )
            };
            if r >= 0 {
                if let Some(f) = self.pending.pop_front() {
                    if self.recent.len() >= RECENT_FRAMES {
                        self.recent.pop_front();
                    }
                    self.recent.push_back(f);
                }
                continue;
            }
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EAGAIN) {
                return;
            }
            if !self.replace_notifier(&e) {
                return;
            }
        }
        // Everything sent was read: only the frame the notifier may still be writing can
        // be lost with it.
        if self.recent.len() > 1 && self.notifier.as_ref().is_some_and(|n| unread(&n.sock) == 0) {
            let last = self.recent.pop_back();
            self.recent.clear();
            self.recent.extend(last);
        }
    }

    /// The notifier died (`e` says how it was noticed): the frames it was last handed go
    /// out again through a new one — those it had not written yet would be lost, and an
    /// invalidation sent twice does no harm. False when no new notifier could be had.
    fn replace_notifier(&mut self, e: &std::io::Error) -> bool {
        self.notifier = None;
        while let Some(f) = self.recent.pop_back() {
            self.pending.push_front(f);
        }
        if self.notifier_starts >= MAX_NOTIFIER_STARTS {
            tracing::error!(error = %e, "host-change watcher: the notifier keeps dying; host changes are no longer invalidated");
            self.pending.clear();
            return false;
        }
        tracing::warn!(error = %e, resent = self.pending.len(), "host-change watcher: the notifier is gone; forking it again");
        match self.fork_notifier() {
            Ok(n) => {
                self.notifier = Some(n);
                true
            }
            Err(e) => {
                tracing::error!(error = %e, "host-change watcher: cannot fork the notifier");
                self.pending.clear();
                false
            }
        }
    }

    /// Forks the notifier: a child that copies each frame from its socket to the FUSE
    /// descriptor, and exits when the socket closes (or its parent dies).
    fn fork_notifier(&mut self) -> Result<Notifier, WatchError> {
        self.notifier_starts += 1;
        let mut sv = [0; 2];
        // SAFETY: socketpair into a local array.
        if unsafe {
            libc::socketpair(
                libc::AF_UNIX,
                libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
                0,
                sv.as_mut_ptr(),
            )
        } != 0
        {
            return Err(last_err("socketpair"));
        }
        // SAFETY: socketpair returned two fresh descriptors we now own.
        let (ours, theirs) = unsafe { (OwnedFd::from_raw_fd(sv[0]), OwnedFd::from_raw_fd(sv[1])) };
        let fuse = self.fuse;
        // SAFETY: the supervisor is single-threaded (by design, see daemon.rs), so the
        // child may run any code; it runs only system calls (`notifier_main`).
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(last_err("fork notifier"));
        }
        if pid == 0 {
            notifier_main(theirs.as_raw_fd(), fuse);
        }
        drop(theirs);
        tracing::info!(pid, "host-change notifier started");
        Ok(Notifier {
            sock: ours,
            pidfd: crate::proc::pidfd_open(pid),
        })
    }
}

/// The notifier child's whole life: system calls only, no allocation.
fn notifier_main(sock: RawFd, fuse: RawFd) -> ! {
    // SAFETY: plain system calls on descriptors inherited from the parent; the child
    // owns its copy of the descriptor table and ends with _exit.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
        if libc::getppid() == 1 {
            libc::_exit(0);
        }
        // Keep only the socket (0) and the FUSE descriptor (1): the mount, the state and
        // the control socket stay the supervisor's alone.
        if libc::dup2(sock, 0) < 0 || libc::dup2(fuse, 1) < 0 {
            libc::_exit(1);
        }
        let _ = porta_sys::fd::close_from(2, false);
        let mut buf = [0u8; MAX_FRAME];
        loop {
            let n = libc::recv(0, buf.as_mut_ptr().cast(), buf.len(), 0);
            if n == 0 {
                libc::_exit(0);
            }
            if n < 0 {
                if *libc::__errno_location() == libc::EINTR {
                    continue;
                }
                libc::_exit(1);
            }
            // ENOENT (a node the kernel forgot meanwhile) and the like change nothing.
            libc::write(1, buf.as_ptr().cast(), n as usize);
        }
    }
}

/// The pids in the container's leaves: those of the first hierarchy whose two leaves
/// (`leaves` holds them in pairs) can be read; none when no pair can.
/// Node ids by backing (device, inode), of the nodes whose key is `wanted` (all: None),
/// from the node tables in the state memfd (the root is not among them: its id is
/// [`abi::ROOT_ID`]).
pub(crate) fn node_ids(
    shared: &Shared,
    wanted: Option<&HashSet<(u64, u64)>>,
) -> HashMap<(u64, u64), u64> {
    let mut out = HashMap::new();
    if wanted.is_some_and(|w| w.is_empty()) {
        return out;
    }
    let mut take = |k: (u64, u64), id: u64| {
        if wanted.is_none_or(|w| w.contains(&k)) {
            out.insert(k, id);
        }
    };
    for fd in 0..shared.scan_end() {
        if shared.kind(fd) == kind::NODE {
            if let Some(e) = shared.hot_node(fd) {
                take(e.inode_key(), NodeRef::Hot(fd).id());
            }
        }
    }
    for i in 0..shared.cold_scan_end() {
        if shared.cold_kind(i) == kind::NODE {
            if let Some(e) = shared.cold_node(i) {
                take(e.inode_key(), NodeRef::Cold(i).id());
            }
        }
    }
    out
}

fn read_members(leaves: &[PathBuf]) -> HashSet<i32> {
    for pair in leaves.chunks(2) {
        let read: Option<Vec<String>> = pair
            .iter()
            .map(|p| std::fs::read_to_string(p).ok())
            .collect();
        if let Some(files) = read {
            return files
                .iter()
                .flat_map(|s| s.lines().filter_map(|l| l.trim().parse().ok()))
                .collect();
        }
    }
    HashSet::new()
}

fn open_path(p: &Path) -> Result<OwnedFd, WatchError> {
    let c = CString::new(p.as_os_str().as_bytes()).map_err(|_| {
        WatchError::Sys("backing root path", std::io::ErrorKind::InvalidInput.into())
    })?;
    // SAFETY: open of a NUL-terminated path.
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(last_err("open backing root"));
    }
    // SAFETY: open returned a fresh descriptor we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn fanotify_init() -> Result<OwnedFd, WatchError> {
    // SAFETY: fanotify_init takes flags only.
    let fd = unsafe {
        libc::fanotify_init(
            libc::FAN_CLASS_NOTIF
                | libc::FAN_REPORT_DFID_NAME
                | libc::FAN_REPORT_FID
                | libc::FAN_NONBLOCK
                | libc::FAN_CLOEXEC,
            (libc::O_RDONLY | libc::O_CLOEXEC) as u32,
        )
    };
    if fd < 0 {
        return Err(last_err("fanotify_init"));
    }
    // SAFETY: fanotify_init returned a fresh descriptor we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn fanotify_mark_fs(fan: &OwnedFd, root: &OwnedFd) -> Result<(), WatchError> {
    // SAFETY: marks the file system of the open `root` (NULL path: the descriptor itself).
    let r = unsafe {
        libc::fanotify_mark(
            fan.as_raw_fd(),
            libc::FAN_MARK_ADD | libc::FAN_MARK_FILESYSTEM,
            MASK,
            root.as_raw_fd(),
            std::ptr::null(),
        )
    };
    if r != 0 {
        return Err(last_err("fanotify_mark (filesystem)"));
    }
    Ok(())
}

/// `open_by_handle_at(root, handle, O_PATH)`.
fn open_by_handle(root: &OwnedFd, h: &Handle) -> Option<OwnedFd> {
    // struct file_handle: handle_bytes (u32), handle_type (i32), f_handle[].
    let mut fh = Vec::with_capacity(8 + h.bytes.len());
    fh.extend_from_slice(&(h.bytes.len() as u32).to_ne_bytes());
    fh.extend_from_slice(&h.htype.to_ne_bytes());
    fh.extend_from_slice(&h.bytes);
    // SAFETY: `fh` is a complete struct file_handle of the length it states; the kernel
    // only reads it.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_by_handle_at,
            root.as_raw_fd(),
            fh.as_mut_ptr(),
            libc::O_PATH | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return None;
    }
    // SAFETY: the kernel returned a fresh descriptor we now own.
    Some(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_come_from_the_first_hierarchy_whose_leaves_can_be_read() {
        let d = tempfile::tempdir().unwrap();
        let leaf = |h: &str, l: &str, pids: Option<&str>| {
            let p = d.path().join(h).join(l);
            std::fs::create_dir_all(&p).unwrap();
            if let Some(pids) = pids {
                std::fs::write(p.join("cgroup.procs"), pids).unwrap();
            }
            p.join("cgroup.procs")
        };
        let leaves = vec![
            // The first hierarchy lacks its porta/ leaf: skipped whole.
            leaf("a", "payload", Some("1\n")),
            leaf("a", "porta", None),
            leaf("b", "payload", Some("10\n11\n")),
            leaf("b", "porta", Some("20\n")),
            leaf("c", "payload", Some("99\n")),
            leaf("c", "porta", Some("98\n")),
        ];
        let got = read_members(&leaves);
        assert_eq!(got, HashSet::from([10, 11, 20]));
        assert!(read_members(&leaves[..2]).is_empty());
    }

    fn event(mask: u64, pid: i32, infos: &[(u8, &[u8], &[u8])]) -> Vec<u8> {
        let mut body = Vec::new();
        for (t, handle, name) in infos {
            let mut rec = vec![*t, 0, 0, 0];
            rec.extend_from_slice(&[7; 8]); // fsid
            rec.extend_from_slice(&(handle.len() as u32).to_ne_bytes());
            rec.extend_from_slice(&FILEID_INO32_GEN.to_ne_bytes());
            rec.extend_from_slice(handle);
            if !name.is_empty() {
                rec.extend_from_slice(name);
                rec.push(0);
            }
            while rec.len() % 4 != 0 {
                rec.push(0);
            }
            let l = rec.len() as u16;
            rec[2..4].copy_from_slice(&l.to_ne_bytes());
            body.extend_from_slice(&rec);
        }
        let mut ev = Vec::new();
        ev.extend_from_slice(&((META_LEN + body.len()) as u32).to_ne_bytes());
        ev.extend_from_slice(&[3, 0]);
        ev.extend_from_slice(&(META_LEN as u16).to_ne_bytes());
        ev.extend_from_slice(&mask.to_ne_bytes());
        ev.extend_from_slice(&(-1i32).to_ne_bytes());
        ev.extend_from_slice(&pid.to_ne_bytes());
        ev.extend_from_slice(&body);
        ev
    }

    fn h(ino: u32) -> Handle {
        let mut bytes = ino.to_ne_bytes().to_vec();
        bytes.extend_from_slice(&[0; 4]);
        Handle {
            htype: FILEID_INO32_GEN,
            bytes,
        }
    }

    fn hb(ino: u32) -> Vec<u8> {
        h(ino).bytes
    }

    fn key(h: &Handle) -> Option<(u64, u64)> {
        Some((
            9,
            u64::from(u32::from_ne_bytes(h.bytes[..4].try_into().ok()?)),
        ))
    }

    #[test]
    fn a_created_name_expires_the_entry_and_the_directory_of_a_known_directory() {
        let d = hb(100);
        let f = hb(200);
        let buf = event(
            libc::FAN_CREATE,
            42,
            &[(INFO_DFID_NAME, &d, b"new"), (INFO_FID, &f, b"")],
        );
        let mut ch = Vec::new();
        assert_eq!(parse(&buf, &mut |_| false, &mut ch), 1);
        assert_eq!(
            ch,
            vec![
                Change::Entry {
                    dir: h(100),
                    name: b"new".to_vec()
                },
                Change::Inode {
                    obj: h(100),
                    data: true
                }
            ]
        );
        let nodes = |k: (u64, u64)| (k == (9, 100)).then_some(5);
        assert_eq!(
            invalidations(&ch, &mut key, &nodes),
            vec![Inval::Entry(5, b"new".to_vec()), Inval::Inode(5, true)]
        );
        // A directory the kernel does not know: nothing to do.
        assert!(invalidations(&ch, &mut key, &|_| None).is_empty());
    }

    #[test]
    fn attribute_and_data_changes_invalidate_the_node_and_own_events_are_skipped() {
        let d = hb(100);
        let f = hb(200);
        let mut buf = event(
            libc::FAN_ATTRIB,
            42,
            &[(INFO_DFID_NAME, &d, b"f"), (INFO_FID, &f, b"")],
        );
        buf.extend(event(
            libc::FAN_MODIFY,
            42,
            &[(INFO_DFID_NAME, &d, b"f"), (INFO_FID, &f, b"")],
        ));
        buf.extend(event(
            libc::FAN_CREATE,
            7,
            &[(INFO_DFID_NAME, &d, b"mine"), (INFO_FID, &f, b"")],
        ));
        let mut ch = Vec::new();
        assert_eq!(parse(&buf, &mut |pid| pid == 7, &mut ch), 3);
        let nodes = |k: (u64, u64)| match k.1 {
            100 => Some(5),
            200 => Some(1 << 32),
            _ => None,
        };
        // The attribute-only invalidation is folded into the data one.
        assert_eq!(
            invalidations(&ch, &mut key, &nodes),
            vec![Inval::Inode(1 << 32, true)]
        );
    }

    #[test]
    fn renames_expire_both_names_and_overflow_is_reported() {
        let a = hb(100);
        let b = hb(101);
        let f = hb(200);
        let mut buf = event(
            libc::FAN_MOVED_FROM,
            1,
            &[(INFO_DFID_NAME, &a, b"old"), (INFO_FID, &f, b"")],
        );
        buf.extend(event(
            libc::FAN_MOVED_TO | libc::FAN_ONDIR,
            1,
            &[(INFO_DFID_NAME, &b, b"new"), (INFO_FID, &f, b"")],
        ));
        buf.extend(event(libc::FAN_Q_OVERFLOW, -1, &[]));
        let mut ch = Vec::new();
        assert_eq!(parse(&buf, &mut |_| false, &mut ch), 3);
        let nodes = |k: (u64, u64)| Some(k.1);
        assert_eq!(
            invalidations(&ch, &mut key, &nodes),
            vec![
                Inval::Entry(100, b"old".to_vec()),
                Inval::Inode(100, true),
                Inval::Entry(101, b"new".to_vec()),
                Inval::Inode(101, true),
            ]
        );
        assert_eq!(ch.last(), Some(&Change::Overflow));
    }

    #[test]
    fn an_overflow_invalidates_every_node() {
        let nodes: HashMap<(u64, u64), u64> = [((9, 2), 1), ((9, 100), 7), ((9, 200), 1 << 32)]
            .into_iter()
            .collect();
        assert_eq!(
            overflow_invalidations(&nodes, false),
            vec![
                Inval::Inode(1, true),
                Inval::Inode(7, true),
                Inval::Inode(1 << 32, true),
            ]
        );
        let wb = overflow_invalidations(&nodes, true);
        assert_eq!(&wb[3..], &[Inval::Prune(7), Inval::Prune(1 << 32)]);
        assert_eq!(
            overflow_invalidations(&HashMap::new(), true),
            vec![Inval::Inode(1, true)]
        );
    }

    #[test]
    fn malformed_records_end_the_parse_without_panicking() {
        let d = hb(100);
        let good = event(libc::FAN_CREATE, 1, &[(INFO_DFID_NAME, &d, b"x")]);
        for cut in 0..good.len() {
            let mut ch = Vec::new();
            parse(&good[..cut], &mut |_| false, &mut ch);
            assert!(ch.is_empty(), "cut at {cut}");
        }
        // A record claiming more handle bytes than it has, a name with a slash, "." .
        let mut bad = good.clone();
        bad[META_LEN + 12] = 200;
        let mut ch = Vec::new();
        assert_eq!(parse(&bad, &mut |_| false, &mut ch), 1);
        assert!(ch.is_empty());
        for name in [&b"a/b"[..], b"."] {
            let ev = event(libc::FAN_CREATE, 1, &[(INFO_DFID_NAME, &d, name)]);
            let mut ch = Vec::new();
            parse(&ev, &mut |_| false, &mut ch);
            assert!(!ch.iter().any(|c| matches!(c, Change::Entry { .. })));
        }
    }
}
