//! Translators inside the container's file server: requests at and below a translated
//! node are forwarded to the translator's FUSE connection (a SOCK_SEQPACKET socket; the
//! server plays the kernel's part), with node ids, inode numbers and identities remapped
//! both ways. See docs/translators.md.
//!
//! **Node ids.** A node of a translator is shown to the kernel as [`TRANS_BIT`] | the
//! server's descriptor of the translator's socket (the *slot*, 14 bits) | the slot's epoch
//! (4 bits) | the translator's own node id (45 bits; larger ids are mapped through a
//! table of the slot). So the mapping needs no memory and survives a restart of the
//! server: the socket and the translated node's descriptor are in the shared table
//! (kinds [`kind::TRANSLATOR`] and [`kind::TRANSLATED`]).
//!
//! **Replies.** Requests are forwarded with the kernel's request id; each slot's reader
//! thread takes the translator's answers, remaps them and writes them to /dev/fuse. A
//! request thread never waits for a translator, so a slow, hung or crashed translator
//! holds up only the requests below its node: those of a dead translator fail with EIO,
//! a translator with a request unanswered for longer than the timeout is killed.
//!
//! **Starting.** A passive translator (the node's [`PASSIVE_XATTR`] record) is started
//! when its node is looked up; an active one when [`ACTIVE_XATTR`] is set. The start is
//! the manager thread's work: it asks the supervisor for the process and runs the INIT
//! exchange while the request threads go on serving (the translator's program is itself
//! read through this server). Lookups of a node whose translator is starting wait in its
//! queue.

use std::collections::HashMap;
use std::ffi::CStr;
use std::os::fd::{AsRawFd, IntoRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use super::nodes::FdName;
use super::Fs;
use crate::abi::{self, init, op, InHeader, Writer, IN_HEADER_LEN, OUT_HEADER_LEN};
use crate::shared::kind;
use crate::sys::{self, Errno, SysResult};
use crate::translator::{self, IdMap, StartRequest, ACTIVE_XATTR, PASSIVE_XATTR};

/// Bit of a node id naming a translator's node.
pub(super) const TRANS_BIT: u64 = 1 << 63;
const SLOT_SHIFT: u32 = 49;
const SLOT_MASK: u64 = (1 << 14) - 1;
const EPOCH_SHIFT: u32 = 45;
const EPOCH_MASK: u64 = 0xf;
const LOCAL_MASK: u64 = (1 << 45) - 1;
/// Local ids from here on are entries of a slot's overflow table.
const OVERFLOW_BIT: u64 = 1 << 44;
/// Bit of a request id the server made itself (directory opens it adds for a translator).
const OWN_UNIQUE: u64 = 1 << 62;
/// Inode numbers of a translator's nodes: the translator's, with the slot in the high bits.
const INO_SHIFT: u32 = 48;

/// How long a translator may leave a request unanswered before it counts as hung.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// How long removing a translator waits for it to exit (the supervisor kills it after 5 s).
const END_WAIT: Duration = Duration::from_secs(8);

/// Largest frame exchanged with a translator (a 1 MiB write or read plus headers).
const FRAME_LEN: usize = super::BUF_LEN;

/// Shared-table words of a translator socket's entry (kind TRANSLATOR).
mod word {
    pub const NODE: usize = 1;
    pub const INO: usize = 2;
    pub const DEV: usize = 3;
    pub const PID: usize = 4;
    /// epoch | passive << 8 | grant << 9 | read-only << 10
    pub const STATE: usize = 5;
    pub const MAX_WRITE: usize = 7;
}

/// Whether node id `id` names a translator's node.
pub(super) fn is_translated(id: u64) -> bool {
    id & TRANS_BIT != 0
}

fn split(id: u64) -> (RawFd, u64, u64) {
    (
        ((id >> SLOT_SHIFT) & SLOT_MASK) as RawFd,
        (id >> EPOCH_SHIFT) & EPOCH_MASK,
        id & LOCAL_MASK,
    )
}

/// One running translator.
pub(super) struct Slot {
    /// The server's end of the translator's socket (also the slot number).
    fd: RawFd,
    /// O_PATH descriptor of the translated node.
    node: RawFd,
    /// (st_dev, st_ino) of the translated node.
    key: (u64, u64),
    epoch: u64,
    passive: bool,
    /// A grant's server (another container's handle, served with the host's ids): not
    /// cached by the kernel, and its nodes fail with EACCES once it is revoked.
    grant: bool,
    /// A read-only grant: changes are refused here with EROFS.
    read_only: bool,
    pid: i32,
    max_write: u32,
    /// Whether the translator answers READDIRPLUS (else READDIR is asked and converted).
    plus: bool,
    /// The translator answered OPENDIR with ENOSYS: READDIR goes without an added open.
    no_opendir: AtomicBool,
    /// The argument vector (empty after a server restart).
    args: Vec<String>,
    /// Where the kernel sees the translator's root: (parent node id, name).
    place: Mutex<Option<(u64, Vec<u8>)>>,
    /// No request goes to it any more (it died or is being removed).
    dead: AtomicBool,
    /// Its reader thread saw the end and cleaned up.
    gone: AtomicBool,
    overflow: Mutex<Overflow>,
}

#[derive(Default)]
struct Overflow {
    to_local: HashMap<u64, u64>,
    to_inner: HashMap<u64, u64>,
    next: u64,
}

impl Slot {
    fn outer(&self, inner: u64) -> u64 {
        let local = if inner < OVERFLOW_BIT {
            inner
        } else {
            let mut o = self.overflow.lock().unwrap_or_else(|p| p.into_inner());
            match o.to_local.get(&inner) {
                Some(l) => *l,
                None => {
                    let l = OVERFLOW_BIT | (o.next & (OVERFLOW_BIT - 1));
                    o.next += 1;
                    o.to_local.insert(inner, l);
                    o.to_inner.insert(l, inner);
                    l
                }
            }
        };
        TRANS_BIT
            | (self.fd as u64) << SLOT_SHIFT
            | (self.epoch & EPOCH_MASK) << EPOCH_SHIFT
            | local
    }

    fn inner(&self, local: u64) -> Option<u64> {
        if local < OVERFLOW_BIT {
            Some(local)
        } else {
            let o = self.overflow.lock().unwrap_or_else(|p| p.into_inner());
            o.to_inner.get(&local).copied()
        }
    }

    fn ino(&self, ino: u64) -> u64 {
        (ino & ((1 << INO_SHIFT) - 1)) | ((self.fd as u64 + 1) << INO_SHIFT)
    }
}

/// Where a forwarded request's answer goes.
enum Sink {
    /// Written to /dev/fuse by the reader thread.
    Dev,
}

/// A thread waiting for an answer (a whole reply frame) or an errno.
#[derive(Default)]
pub(super) struct Waiter {
    got: Mutex<Option<Result<Vec<u8>, Errno>>>,
    cv: Condvar,
}

impl Waiter {
    fn set(&self, r: Result<Vec<u8>, Errno>) {
        *self.got.lock().unwrap_or_else(|p| p.into_inner()) = Some(r);
        self.cv.notify_all();
    }

    fn wait(&self, limit: Duration) -> Result<Vec<u8>, Errno> {
        let deadline = Instant::now() + limit;
        let mut g = self.got.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(r) = g.take() {
                return r;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(libc::ETIMEDOUT);
            }
            g = self
                .cv
                .wait_timeout(g, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}

/// What to do with a translator's answer.
enum Then {
    /// Remap by the operation and pass on.
    Pass(u32),
    /// A GETATTR of the translator's root answering a LOOKUP of the translated node.
    RootEntry,
    /// The OPENDIR added before a READDIR: send the READDIR (its frame kept here) next.
    DirOpened { frame: Vec<u8>, plus_wanted: bool },
    /// The READDIR after an added OPENDIR: pass it on, then release handle `fh`.
    DirRead {
        /// The handle of the added open; None: the translator opens no directories
        /// (it answered OPENDIR with ENOSYS, as the kernel allows).
        fh: Option<u64>,
        plus_wanted: bool,
        node: u64,
    },
    /// Nothing to pass on (the RELEASEDIR of an added OPENDIR).
    Drop,
}

struct Pending {
    slot: RawFd,
    /// The kernel's request id (the answer's), when this is one of the server's own.
    kernel: u64,
    then: Then,
    sink: Sink,
    sent: Instant,
}

/// A request waiting for its translator to start.
enum Parked {
    /// LOOKUP of the translated node, by request id.
    RootLookup(u64, Sink),
    /// The thread that set an active translator.
    Setter(Arc<Waiter>),
}

/// A start for the manager thread.
pub(super) struct Job {
    key: (u64, u64),
    node: OwnedFd,
    place: Option<(u64, Vec<u8>)>,
    args: Vec<String>,
    uid: u32,
    gid: u32,
    passive: bool,
    /// A grant's node: Some(read-only).
    grant: Option<bool>,
}

#[derive(Default)]
struct Table {
    slots: HashMap<RawFd, Arc<Slot>>,
    by_key: HashMap<(u64, u64), RawFd>,
    starting: HashMap<(u64, u64), Vec<Parked>>,
}

/// The server's translators.
pub(super) struct Translators {
    table: Mutex<Table>,
    pending: Mutex<HashMap<u64, Pending>>,
    jobs: Mutex<Option<mpsc::Sender<Job>>>,
    maps: OnceLock<(IdMap, IdMap)>,
    /// The maps of a grant's server, which speaks the host's ids: none.
    identity: (IdMap, IdMap),
    next_own: AtomicU64,
    epoch: AtomicU64,
    /// (slot, epoch) of translators that died, the most recent ones: their nodes fail
    /// with EIO rather than ESTALE.
    dead: Mutex<std::collections::VecDeque<(RawFd, u64)>>,
    /// (slot, epoch) of grants that were revoked: their nodes fail with EACCES.
    revoked: Mutex<std::collections::VecDeque<(RawFd, u64)>>,
    /// False on io_uring (answers cannot come from another thread there).
    pub(super) enabled: AtomicBool,
    pub(super) timeout: Duration,
}

impl Translators {
    /// No translators yet; a request unanswered for `timeout` marks a translator hung.
    pub(super) fn with_timeout(timeout: Duration) -> Self {
        Translators {
            table: Mutex::default(),
            pending: Mutex::default(),
            jobs: Mutex::new(None),
            maps: OnceLock::new(),
            identity: (IdMap::default(), IdMap::default()),
            dead: Mutex::default(),
            revoked: Mutex::default(),
            next_own: AtomicU64::new(2),
            epoch: AtomicU64::new(0),
            enabled: AtomicBool::new(true),
            timeout,
        }
    }
}

fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_ne_bytes());
}
fn put_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_ne_bytes());
}
fn get_u32(b: &[u8], at: usize) -> u32 {
    b.get(at..at + 4)
        .and_then(|s| s.try_into().ok())
        .map_or(0, u32::from_ne_bytes)
}
fn get_u64(b: &[u8], at: usize) -> u64 {
    b.get(at..at + 8)
        .and_then(|s| s.try_into().ok())
        .map_or(0, u64::from_ne_bytes)
}

/// Offsets in `struct fuse_attr` of ino, uid and gid.
const ATTR_INO: usize = 0;
const ATTR_UID: usize = 68;
const ATTR_GID: usize = 72;
const ATTR_LEN: usize = 88;
/// Offset of the attributes in `struct fuse_entry_out` and `fuse_attr_out`.
const ENTRY_ATTR: usize = 40;
const ATTR_OUT_ATTR: usize = 16;

impl Fs {
    fn maps(&self) -> &(IdMap, IdMap) {
        self.trans.maps.get_or_init(|| {
            if self.backing < 0 {
                return (IdMap::default(), IdMap::default());
            }
            let _g = self.backing_lock.lock().unwrap_or_else(|p| p.into_inner());
            translator::id_maps(self.backing).unwrap_or_else(|e| {
                tracing::warn!(
                    errno = e,
                    "no identity maps from the supervisor: ids pass unmapped"
                );
                (IdMap::default(), IdMap::default())
            })
        })
    }

    /// The identity maps between the kernel's ids and the translator's of `slot`.
    fn slot_maps(&self, slot: &Slot) -> &(IdMap, IdMap) {
        if slot.grant {
            &self.trans.identity
        } else {
            self.maps()
        }
    }

    /// The error a request to the gone translator of `slot` gets: EACCES for a revoked
    /// grant, else EIO.
    fn gone_errno(&self, slot: &Slot) -> Errno {
        let key = (slot.fd, slot.epoch & EPOCH_MASK);
        if slot.grant
            && self
                .trans
                .revoked
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains(&key)
        {
            libc::EACCES
        } else {
            libc::EIO
        }
    }

    fn slot(&self, fd: RawFd) -> Option<Arc<Slot>> {
        let t = self.trans.table.lock().unwrap_or_else(|p| p.into_inner());
        t.slots.get(&fd).cloned()
    }

    /// The live slot of a translated node id, and the translator's own id of the node.
    fn slot_of(&self, id: u64) -> Option<(Arc<Slot>, u64)> {
        let (fd, epoch, local) = split(id);
        let slot = self.slot(fd)?;
        if slot.epoch & EPOCH_MASK != epoch || slot.dead.load(Ordering::Acquire) {
            return None;
        }
        let inner = slot.inner(local)?;
        Some((slot, inner))
    }

    /// The running (or starting) translator of a backing node, by (st_dev, st_ino).
    fn slot_by_key(&self, key: (u64, u64)) -> Option<Arc<Slot>> {
        let t = self.trans.table.lock().unwrap_or_else(|p| p.into_inner());
        t.by_key.get(&key).and_then(|fd| t.slots.get(fd)).cloned()
    }

    /// Serves a request that involves a translator's node (or a LOOKUP that reaches a
    /// translated node); None when the request is the server's own to serve.
    pub(super) fn translated(
        &self,
        h: &InHeader,
        frame: &[u8],
        w: &mut Writer,
    ) -> Option<super::dispatch::Served> {
        use super::dispatch::Served;
        match h.opcode {
            op::INTERRUPT => {
                let target = get_u64(frame, IN_HEADER_LEN);
                let slot = {
                    let p = self.trans.pending.lock().unwrap_or_else(|p| p.into_inner());
                    p.get(&(target & !abi::UNIQUE_RESEND_FLAG)).map(|p| p.slot)
                };
                let slot = slot.and_then(|fd| self.slot(fd))?;
                let _ = self.send_to(&slot, frame);
                return Some(Served::NOTHING);
            }
            op::FORGET if is_translated(h.nodeid) => {
                if let Some((slot, inner)) = self.slot_of(h.nodeid) {
                    if inner != abi::ROOT_ID {
                        let mut f = frame.to_vec();
                        put_u64(&mut f, 16, inner);
                        let _ = self.send_to(&slot, &f);
                    }
                }
                return Some(Served::NOTHING);
            }
            op::FORGET => return None,
            op::BATCH_FORGET => {
                // The translators' nodes among them go to their translators (one FORGET
                // each); the server's own ignores them.
                let count = get_u32(frame, IN_HEADER_LEN) as usize;
                let entries = frame.get(IN_HEADER_LEN + 8..).unwrap_or(&[]);
                for e in entries.chunks_exact(16).take(count) {
                    let (id, n) = (get_u64(e, 0), get_u64(e, 8));
                    if !is_translated(id) {
                        continue;
                    }
                    if let Some((slot, inner)) =
                        self.slot_of(id).filter(|(_, i)| *i != abi::ROOT_ID)
                    {
                        let mut f = Vec::with_capacity(IN_HEADER_LEN + 8);
                        f.extend_from_slice(&((IN_HEADER_LEN + 8) as u32).to_ne_bytes());
                        f.extend_from_slice(&op::FORGET.to_ne_bytes());
                        f.extend_from_slice(&self.own_unique().to_ne_bytes());
                        f.extend_from_slice(&inner.to_ne_bytes());
                        f.extend_from_slice(&[0u8; 16]);
                        f.extend_from_slice(&n.to_ne_bytes());
                        let _ = self.send_to(&slot, &f);
                    }
                }
                return None;
            }
            _ => {}
        }
        if !is_translated(h.nodeid) {
            return None;
        }
        let Some((slot, inner)) = self.slot_of(h.nodeid) else {
            // A node of a translator that died fails with EIO; a made-up id names
            // nothing.
            let (fd, epoch, _) = split(h.nodeid);
            let revoked = self
                .trans
                .revoked
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains(&(fd, epoch));
            let dead = self.slot(fd).is_some_and(|s| s.epoch & EPOCH_MASK == epoch)
                || self
                    .trans
                    .dead
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .contains(&(fd, epoch));
            let e = if revoked {
                libc::EACCES
            } else if dead {
                libc::EIO
            } else {
                libc::ESTALE
            };
            return Some(err(w, h.unique, e));
        };
        if slot.read_only && changes_tree(h.opcode, frame) {
            return Some(err(w, h.unique, libc::EROFS));
        }
        // The translator's records are the server's business, on the translator's root.
        if inner == abi::ROOT_ID
            && matches!(
                h.opcode,
                op::SETXATTR | op::GETXATTR | op::REMOVEXATTR | op::LISTXATTR
            )
        {
            if let Some(r) = self.root_xattr(h, frame, &slot, w) {
                return Some(r);
            }
        }
        let mut f = frame.to_vec();
        put_u64(&mut f, 16, inner);
        let (umap, gmap) = self.slot_maps(&slot);
        put_u32(&mut f, 24, umap.to_inside(h.uid));
        put_u32(&mut f, 28, gmap.to_inside(h.gid));
        put_u64(&mut f, 8, h.unique & !abi::UNIQUE_RESEND_FLAG);
        // The caller's pid is the host's; the translator lives in the container's PID
        // namespace, where that number is no process or another one. 0, as the kernel
        // sends for a caller outside a connection's PID namespace.
        put_u32(&mut f, 32, 0);
        let body = IN_HEADER_LEN;
        match h.opcode {
            op::RENAME | op::RENAME2 | op::LINK => {
                let other = get_u64(&f, body);
                match self.slot_of(other) {
                    Some((s2, i2)) if Arc::ptr_eq(&s2, &slot) => put_u64(&mut f, body, i2),
                    _ => return Some(err(w, h.unique, libc::EXDEV)),
                }
            }
            op::COPY_FILE_RANGE => {
                // fh_in, off_in, nodeid_out
                let other = get_u64(&f, body + 16);
                match self.slot_of(other) {
                    Some((s2, i2)) if Arc::ptr_eq(&s2, &slot) => put_u64(&mut f, body + 16, i2),
                    _ => return Some(err(w, h.unique, libc::EXDEV)),
                }
            }
            op::SETATTR => {
                let (u, g) = (get_u32(&f, body + 76), get_u32(&f, body + 80));
                put_u32(&mut f, body + 76, umap.to_inside(u));
                put_u32(&mut f, body + 80, gmap.to_inside(g));
            }
            op::WRITE => {
                // fh, offset, size: a write larger than the translator takes is cut short
                // (the caller gets a short count and goes on).
                let size = get_u32(&f, body + 16);
                if size > slot.max_write {
                    let data_at = body + 40;
                    put_u32(&mut f, body + 16, slot.max_write);
                    f.truncate(data_at + slot.max_write as usize);
                    let len = f.len() as u32;
                    put_u32(&mut f, 0, len);
                }
            }
            op::READDIR | op::READDIRPLUS | op::OPENDIR | op::RELEASEDIR => {}
            op::BATCH_FORGET | op::DESTROY | op::INIT => return Some(err(w, h.unique, libc::EIO)),
            _ => {}
        }
        let unique = h.unique & !abi::UNIQUE_RESEND_FLAG;
        let sink = Sink::Dev;
        if matches!(h.opcode, op::READDIR | op::READDIRPLUS) {
            // The kernel opens directories without asking (the server answers OPENDIR
            // ENOSYS): a translator gets the OPENDIR and RELEASEDIR around each READDIR.
            let plus_wanted = h.opcode == op::READDIRPLUS;
            if plus_wanted && !slot.plus {
                put_u32(&mut f, 4, op::READDIR);
            }
            if slot.no_opendir.load(Ordering::Relaxed) {
                let node = get_u64(&f, 16);
                let then = Then::DirRead {
                    fh: None,
                    plus_wanted,
                    node,
                };
                self.expect(unique, &slot, unique, then, sink);
                if let Err(e) = self.send_expected(&slot, &f, unique) {
                    return Some(err(w, h.unique, e));
                }
                return Some(Served::NOTHING);
            }
            let own = self.own_unique();
            let mut open = Vec::with_capacity(IN_HEADER_LEN + 8);
            open.extend_from_slice(&f[..IN_HEADER_LEN]);
            open.extend_from_slice(&(libc::O_RDONLY as u32).to_ne_bytes());
            open.extend_from_slice(&0u32.to_ne_bytes());
            let len = open.len() as u32;
            put_u32(&mut open, 0, len);
            put_u32(&mut open, 4, op::OPENDIR);
            put_u64(&mut open, 8, own);
            self.expect(
                own,
                &slot,
                unique,
                Then::DirOpened {
                    frame: f,
                    plus_wanted,
                },
                sink,
            );
            if let Err(e) = self.send_expected(&slot, &open, own) {
                return Some(err(w, h.unique, e));
            }
            return Some(Served::NOTHING);
        }
        let forget_like = matches!(h.opcode, op::FORGET | op::BATCH_FORGET);
        if !forget_like {
            self.expect(unique, &slot, unique, Then::Pass(h.opcode), sink);
        }
        if let Err(e) = self.send_expected(&slot, &f, unique) {
            return Some(err(w, h.unique, e));
        }
        Some(Served::NOTHING)
    }

    /// Sends a frame whose answer is expected as request `unique`; on failure the
    /// expectation is dropped.
    fn send_expected(&self, slot: &Slot, frame: &[u8], unique: u64) -> SysResult<()> {
        let r = self.send_to(slot, frame);
        if r.is_err() {
            self.trans
                .pending
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&unique);
        }
        r
    }

    fn own_unique(&self) -> u64 {
        OWN_UNIQUE | (self.trans.next_own.fetch_add(2, Ordering::Relaxed) & (OWN_UNIQUE - 1))
    }

    fn expect(&self, unique: u64, slot: &Slot, kernel: u64, then: Then, sink: Sink) {
        let mut p = self.trans.pending.lock().unwrap_or_else(|p| p.into_inner());
        p.insert(
            unique,
            Pending {
                slot: slot.fd,
                kernel,
                then,
                sink,
                sent: Instant::now(),
            },
        );
    }

    /// One frame to the translator; never blocks (a translator that does not read its
    /// requests is a hung one).
    fn send_to(&self, slot: &Slot, frame: &[u8]) -> SysResult<()> {
        if slot.dead.load(Ordering::Acquire) {
            return Err(self.gone_errno(slot));
        }
        // write(2): the server's seccomp filter allows sendmsg on the supervisor's socket
        // only. The socket is non-blocking (see `start`).
        loop {
            match sys::write(slot.fd, frame) {
                Ok(_) => return Ok(()),
                Err(libc::EINTR) => continue,
                Err(libc::EAGAIN) => {
                    tracing::warn!(pid = slot.pid, "translator does not read its requests");
                    return Err(libc::EIO);
                }
                Err(_) => {
                    // The translator is gone and its reader thread may not have seen it
                    // yet: clean up now, so the next access starts over.
                    if let Some(slot) = self
                        .slot(slot.fd)
                        .filter(|s| std::ptr::eq(s.as_ref(), slot))
                    {
                        self.translator_gone(&slot);
                    }
                    return Err(self.gone_errno(slot));
                }
            }
        }
    }

    /// After a LOOKUP found `id` (attributes `attr`) under `parent`/`name`: when the node
    /// carries a translator (running, starting or passive), answers with the translator's
    /// root instead (the lookup of `id` is dropped) and returns true.
    pub(super) fn lookup_translated(
        &self,
        h: &InHeader,
        parent: u64,
        name: &CStr,
        id: u64,
        mode: u32,
    ) -> bool {
        let ftype = mode & libc::S_IFMT;
        if ftype != libc::S_IFDIR && ftype != libc::S_IFREG
            || !self.trans.enabled.load(Ordering::Relaxed)
        {
            return false;
        }
        let Some(key) = self.node_entry(id).map(|e| {
            let (dev, ino) = e.inode_key();
            (dev, ino)
        }) else {
            return false;
        };
        let unique = h.unique & !abi::UNIQUE_RESEND_FLAG;
        if let Some(slot) = self.slot_by_key(key) {
            if !slot.dead.load(Ordering::Acquire) {
                self.forget(id, 1);
                *slot.place.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some((parent, name.to_bytes().to_vec()));
                self.forward_root_lookup(&slot, unique, Sink::Dev);
                return true;
            }
        }
        {
            let mut t = self.trans.table.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(q) = t.starting.get_mut(&key) {
                q.push(Parked::RootLookup(unique, Sink::Dev));
                drop(t);
                self.forget(id, 1);
                return true;
            }
        }
        // A grant or a passive record on the node?
        let Ok(node) = self.node_fd(id) else {
            return false;
        };
        let mut buf = vec![0u8; translator::MAX_RECORD + 1];
        let (args, grant) = match self.grant_record(node.fd()) {
            Some((gid, ro)) => (vec![translator::GRANT_PROGRAM.to_owned(), gid], Some(ro)),
            None => {
                let n = match self.xget(node.fd(), c"user.porta.translator", &mut buf) {
                    Ok(n) => n,
                    Err(_) => return false,
                };
                match translator::parse_record(&buf[..n]) {
                    Ok(a) => (a, None),
                    Err(e) => {
                        tracing::warn!(error = %e, "ignored a node's bad translator record");
                        return false;
                    }
                }
            }
        };
        let Ok(st) = sys::fstat(node.fd()) else {
            return false;
        };
        let Ok(own) = reopen_path(self, node.fd()) else {
            return false;
        };
        drop(node);
        self.forget(id, 1);
        let job = Job {
            key,
            node: own,
            place: Some((parent, name.to_bytes().to_vec())),
            args,
            uid: st.st_uid,
            gid: st.st_gid,
            passive: true,
            grant,
        };
        self.submit(job, Parked::RootLookup(unique, Sink::Dev));
        true
    }

    /// Whether node `id` (of mode `mode`) has a translator: running, starting, or
    /// recorded on it.
    pub(super) fn carries_translator(&self, id: u64, mode: u32) -> bool {
        let ftype = mode & libc::S_IFMT;
        if ftype != libc::S_IFDIR && ftype != libc::S_IFREG {
            return false;
        }
        let Some(key) = self.node_entry(id).map(|e| e.inode_key()) else {
            return false;
        };
        {
            let t = self.trans.table.lock().unwrap_or_else(|p| p.into_inner());
            if t.by_key.contains_key(&key) || t.starting.contains_key(&key) {
                return true;
            }
        }
        let Ok(node) = self.node_fd(id) else {
            return false;
        };
        self.grant_record(node.fd()).is_some()
            || self
                .xget(node.fd(), c"user.porta.translator", &mut [])
                .is_ok()
    }

    /// The grant record of a backing node (see [`translator::GRANT_XATTR`]), if any.
    fn grant_record(&self, node: RawFd) -> Option<(String, bool)> {
        let mut buf = [0u8; 80];
        let n = self.xget(node, c"user.porta.grant", &mut buf).ok()?;
        translator::parse_grant_record(&buf[..n])
    }

    /// Queues a start (or joins one under way) with a parked request.
    fn submit(&self, job: Job, parked: Parked) {
        let key = job.key;
        let mut t = self.trans.table.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(q) = t.starting.get_mut(&key) {
            q.push(parked);
            return;
        }
        t.starting.insert(key, vec![parked]);
        drop(t);
        let sent = self
            .trans
            .jobs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .is_some_and(|tx| tx.send(job).is_ok());
        if !sent {
            self.fail_parked(key, libc::EIO);
        }
    }

    fn forward_root_lookup(&self, slot: &Slot, unique: u64, sink: Sink) {
        let mut f = Vec::with_capacity(IN_HEADER_LEN + 16);
        f.extend_from_slice(&((IN_HEADER_LEN + 16) as u32).to_ne_bytes());
        f.extend_from_slice(&op::GETATTR.to_ne_bytes());
        f.extend_from_slice(&unique.to_ne_bytes());
        f.extend_from_slice(&abi::ROOT_ID.to_ne_bytes());
        f.extend_from_slice(&[0u8; 16]);
        f.extend_from_slice(&[0u8; 16]);
        self.expect(unique, slot, unique, Then::RootEntry, sink);
        if let Err(e) = self.send_to(slot, &f) {
            if let Some(p) = self
                .trans
                .pending
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&unique)
            {
                self.deliver_err(p.sink, unique, e);
            }
        }
    }

    fn deliver_err(&self, sink: Sink, unique: u64, e: Errno) {
        match sink {
            Sink::Dev => self.send_err(unique, e),
        }
    }

    fn fail_parked(&self, key: (u64, u64), e: Errno) {
        let parked = {
            let mut t = self.trans.table.lock().unwrap_or_else(|p| p.into_inner());
            t.starting.remove(&key).unwrap_or_default()
        };
        for p in parked {
            match p {
                Parked::RootLookup(u, sink) => self.deliver_err(sink, u, e),
                Parked::Setter(w) => w.set(Err(e)),
            }
        }
    }

    /// The manager thread: starts translators and kills hung ones, until the server stops.
    pub(super) fn translator_manager<'scope>(
        &'scope self,
        s: &'scope std::thread::Scope<'scope, '_>,
        rx: mpsc::Receiver<Job>,
        adopted: Vec<Arc<Slot>>,
    ) {
        // Slots a previous server left: their reader threads first.
        for slot in adopted {
            s.spawn(move || self.read_replies(slot));
        }
        loop {
            match rx.recv_timeout(Duration::from_millis(500)) {
                Ok(job) => {
                    if let Some(slot) = self.start(job) {
                        s.spawn(move || self.read_replies(slot));
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
            self.kill_hung();
        }
    }

    /// Makes the manager's channel; the receiver goes to [`Fs::translator_manager`].
    pub(super) fn translator_channel(&self) -> mpsc::Receiver<Job> {
        let (tx, rx) = mpsc::channel();
        *self.trans.jobs.lock().unwrap_or_else(|p| p.into_inner()) = Some(tx);
        rx
    }

    /// Stops the manager and the reader threads (the connection is gone for good).
    pub(super) fn stop_translators(&self, for_good: bool) {
        self.trans
            .jobs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let t = self.trans.table.lock().unwrap_or_else(|p| p.into_inner());
        for slot in t.slots.values() {
            // The reader's read ends; the socket stays in the shared table for a successor
            // unless the connection is gone.
            // SAFETY: plain shutdown of our socket.
            unsafe {
                libc::shutdown(
                    slot.fd,
                    if for_good {
                        libc::SHUT_RDWR
                    } else {
                        libc::SHUT_RD
                    },
                )
            };
        }
    }

    /// Rebuilds the slots recorded in the shared table by a previous server (before any
    /// request is served).
    pub(super) fn adopt_slots(&self) -> Vec<Arc<Slot>> {
        let sh = self.sh;
        let mut out = Vec::new();
        for fd in 0..sh.scan_end() {
            if sh.kind(fd) != kind::TRANSLATOR {
                continue;
            }
            let Some(e) = sh.entry(fd) else { continue };
            let w = |i: usize| e[i].load(Ordering::Acquire);
            let node = w(word::NODE) as RawFd;
            if sh.kind(node) != kind::TRANSLATED {
                continue;
            }
            let slot = Arc::new(Slot {
                fd,
                node,
                key: (w(word::DEV), w(word::INO)),
                epoch: w(word::STATE) & 0xff,
                passive: (w(word::STATE) >> 8) & 1 != 0,
                grant: (w(word::STATE) >> 9) & 1 != 0,
                read_only: (w(word::STATE) >> 10) & 1 != 0,
                pid: w(word::PID) as i32,
                max_write: (w(word::MAX_WRITE) & 0xffff_ffff) as u32,
                plus: (w(word::MAX_WRITE) >> 32) & 1 != 0,
                no_opendir: AtomicBool::new(false),
                args: Vec::new(),
                place: Mutex::new(None),
                dead: AtomicBool::new(false),
                gone: AtomicBool::new(false),
                overflow: Mutex::default(),
            });
            let mut t = self.trans.table.lock().unwrap_or_else(|p| p.into_inner());
            t.by_key.insert(slot.key, fd);
            t.slots.insert(fd, slot.clone());
            self.trans
                .epoch
                .fetch_max(slot.epoch + 1, Ordering::Relaxed);
            out.push(slot);
        }
        if !out.is_empty() {
            tracing::info!(
                translators = out.len(),
                "took over the translators of the previous server"
            );
        }
        out
    }

    /// Runs one start: the process from the supervisor, then the INIT exchange.
    fn start(&self, job: Job) -> Option<Arc<Slot>> {
        let key = job.key;
        if self.backing < 0 {
            self.fail_parked(key, libc::EOPNOTSUPP);
            return None;
        }
        let Some(path) = self.container_path(job.node.as_raw_fd()) else {
            self.fail_parked(key, libc::ESTALE);
            return None;
        };
        let req = StartRequest {
            uid: job.uid,
            gid: job.gid,
            flags: if job.passive {
                translator::FLAG_PASSIVE
            } else {
                0
            } | if job.grant.is_some() {
                translator::FLAG_GRANT
            } else {
                0
            },
            tag: 0,
            path,
            args: job.args.clone(),
        };
        let started = {
            let _g = self.backing_lock.lock().unwrap_or_else(|p| p.into_inner());
            translator::start(self.backing, req)
        };
        let (sock, pid) = match started {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(errno = e, args = ?job.args, "the supervisor did not start the translator");
                self.fail_parked(key, e);
                return None;
            }
        };
        if sock.as_raw_fd() as u64 > SLOT_MASK || job.node.as_raw_fd() < 0 {
            translator::stop(self.backing, pid, true);
            self.fail_parked(key, libc::EMFILE);
            return None;
        }
        let (max_write, plus) = match self.init_translator(sock.as_raw_fd()) {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(errno = e, pid, args = ?job.args, "translator failed to start");
                translator::stop(self.backing, pid, true);
                self.fail_parked(key, e);
                return None;
            }
        };
        let epoch = self.trans.epoch.fetch_add(1, Ordering::Relaxed) & EPOCH_MASK;
        let fd = sock.into_raw_fd();
        let node = job.node.into_raw_fd();
        let sh = self.sh;
        sh.publish(node, kind::TRANSLATED, fd as u64, key.1, key.0);
        sh.publish(fd, kind::TRANSLATOR, node as u64, key.1, key.0);
        if let Some(e) = sh.entry(fd) {
            e[word::PID].store(pid as u64, Ordering::Relaxed);
            let grant =
                u64::from(job.grant.is_some()) << 9 | u64::from(job.grant.unwrap_or(false)) << 10;
            e[word::STATE].store(
                epoch | (u64::from(job.passive) << 8) | grant,
                Ordering::Relaxed,
            );
            e[word::MAX_WRITE].store(
                u64::from(max_write) | (u64::from(plus) << 32),
                Ordering::Release,
            );
        }
        let slot = Arc::new(Slot {
            fd,
            node,
            key,
            epoch,
            passive: job.passive,
            grant: job.grant.is_some(),
            read_only: job.grant.unwrap_or(false),
            pid,
            max_write,
            plus,
            no_opendir: AtomicBool::new(false),
            args: job.args,
            place: Mutex::new(job.place),
            dead: AtomicBool::new(false),
            gone: AtomicBool::new(false),
            overflow: Mutex::default(),
        });
        let parked = {
            let mut t = self.trans.table.lock().unwrap_or_else(|p| p.into_inner());
            t.slots.insert(fd, slot.clone());
            t.by_key.insert(key, fd);
            t.starting.remove(&key).unwrap_or_default()
        };
        tracing::info!(pid, args = ?slot.args, passive = slot.passive, "translator started");
        for p in parked {
            match p {
                Parked::RootLookup(u, sink) => self.forward_root_lookup(&slot, u, sink),
                Parked::Setter(w) => w.set(Ok(Vec::new())),
            }
        }
        Some(slot)
    }

    /// The INIT exchange with a new translator; returns its max_write and whether it
    /// answers READDIRPLUS.
    fn init_translator(&self, sock: RawFd) -> SysResult<(u32, bool)> {
        let minor = (self
            .sh
            .hdr(crate::shared::hdr::PROTO_MINOR)
            .load(Ordering::Relaxed) as u32)
            .clamp(31, abi::KERNEL_MINOR_VERSION);
        let readahead = self
            .sh
            .hdr(crate::shared::hdr::MAX_READAHEAD)
            .load(Ordering::Relaxed) as u32;
        let offer = super::session::FORWARDED_INIT_FLAGS;
        let mut f = Vec::with_capacity(IN_HEADER_LEN + 64);
        f.extend_from_slice(&((IN_HEADER_LEN + 64) as u32).to_ne_bytes());
        f.extend_from_slice(&op::INIT.to_ne_bytes());
        f.extend_from_slice(&2u64.to_ne_bytes());
        f.extend_from_slice(&[0u8; 24]);
        f.extend_from_slice(&abi::KERNEL_VERSION.to_ne_bytes());
        f.extend_from_slice(&minor.to_ne_bytes());
        f.extend_from_slice(&readahead.max(4096).to_ne_bytes());
        f.extend_from_slice(&(offer as u32).to_ne_bytes());
        f.extend_from_slice(&((offer >> 32) as u32).to_ne_bytes());
        f.extend_from_slice(&[0u8; 44]);
        porta_sys::fd::set_nonblocking(sock).map_err(|e| e.raw_os_error().unwrap_or(libc::EIO))?;
        sys::write(sock, &f)?;
        let mut buf = vec![0u8; 4096];
        let deadline = Instant::now() + self.trans.timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(libc::ETIMEDOUT);
            }
            let mut p = libc::pollfd {
                fd: sock,
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            let n = unsafe { libc::poll(&mut p, 1, left.as_millis().min(1000) as i32) };
            if n <= 0 {
                continue;
            }
            let n = match sys::read(sock, &mut buf) {
                Ok(0) => return Err(libc::EIO),
                Ok(n) => n,
                Err(libc::EINTR) | Err(libc::EAGAIN) => continue,
                Err(e) => return Err(e),
            };
            let r = &buf[..n];
            let error = get_u32(r, 4) as i32;
            let unique = get_u64(r, 8);
            if unique == translator::START_FAILED_UNIQUE {
                return Err(if error < 0 { -error } else { libc::EIO });
            }
            if unique != 2 {
                continue;
            }
            if error != 0 || n < OUT_HEADER_LEN + 24 {
                return Err(libc::EPROTO);
            }
            let b = OUT_HEADER_LEN;
            if get_u32(r, b) != abi::KERNEL_VERSION {
                return Err(libc::EPROTO);
            }
            let flags = u64::from(get_u32(r, b + 12)) | u64::from(get_u32(r, b + 36)) << 32;
            let max_write = get_u32(r, b + 20).clamp(4096, super::MAX_WRITE);
            return Ok((max_write, flags & init::DO_READDIRPLUS != 0));
        }
    }

    /// Kills the translators with a request unanswered for longer than the timeout.
    fn kill_hung(&self) {
        let now = Instant::now();
        let hung: Vec<RawFd> = {
            let p = self.trans.pending.lock().unwrap_or_else(|p| p.into_inner());
            let mut v: Vec<RawFd> = p
                .values()
                .filter(|p| now.duration_since(p.sent) > self.trans.timeout)
                .map(|p| p.slot)
                .collect();
            v.sort_unstable();
            v.dedup();
            v
        };
        for fd in hung {
            if let Some(slot) = self.slot(fd) {
                tracing::warn!(pid = slot.pid, timeout = ?self.trans.timeout, "translator hung: killed");
                translator::stop(self.backing, slot.pid, true);
                // SAFETY: plain shutdown of our socket: the reader sees the end.
                unsafe { libc::shutdown(slot.fd, libc::SHUT_RDWR) };
            }
        }
    }

    /// A slot's reader thread: answers from the translator to the kernel, until the
    /// translator is gone.
    fn read_replies(&self, slot: Arc<Slot>) {
        let mut buf = vec![0u8; FRAME_LEN + 4096];
        let mut w = Writer::default();
        loop {
            let n = match sys::read(slot.fd, &mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(libc::EAGAIN) => {
                    let _ = sys::wait_readable(slot.fd);
                    continue;
                }
                Err(libc::EINTR) => continue,
                Err(_) => break,
            };
            if n < OUT_HEADER_LEN {
                continue;
            }
            let unique = get_u64(&buf, 8);
            let pending = self
                .trans
                .pending
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&unique);
            let Some(p) = pending else { continue };
            self.answer(&slot, p, &mut buf[..n], &mut w);
        }
        self.translator_gone(&slot);
    }

    fn answer(&self, slot: &Slot, p: Pending, r: &mut [u8], w: &mut Writer) {
        let error = get_u32(r, 4) as i32;
        put_u64(r, 8, p.kernel);
        let ok = error == 0;
        match p.then {
            Then::Drop => {}
            Then::Pass(opcode) => {
                if ok {
                    self.remap_reply(slot, opcode, r);
                }
                self.deliver(p.sink, r);
            }
            Then::RootEntry => {
                if !ok || r.len() < OUT_HEADER_LEN + ATTR_OUT_ATTR + ATTR_LEN {
                    self.deliver(p.sink, r);
                    return;
                }
                let a = &r[OUT_HEADER_LEN..];
                let valid = get_u64(a, 0);
                let nsec = get_u32(a, 8);
                w.start();
                // The name's binding to the translator's root is the server's (dropped
                // when the translator goes): the server's entry timeout. Its attributes
                // are the translator's, with the translator's timeout.
                let (valid, nsec) = if slot.grant { (0, 0) } else { (valid, nsec) };
                w.u64(slot.outer(abi::ROOT_ID))
                    .u64(slot.epoch)
                    .u64(self.ttl.secs)
                    .u64(valid)
                    .u32(self.ttl.nsecs)
                    .u32(nsec);
                w.bytes(&a[ATTR_OUT_ATTR..ATTR_OUT_ATTR + ATTR_LEN]);
                w.finish(0, p.kernel);
                let at = OUT_HEADER_LEN + ENTRY_ATTR;
                self.remap_attr(slot, &mut w.buf[at..at + ATTR_LEN]);
                self.deliver(p.sink, &w.buf);
            }
            Then::DirOpened {
                mut frame,
                plus_wanted,
            } => {
                let error = -(get_u32(r, 4) as i32);
                let no_opendir = error == libc::ENOSYS;
                if !ok && !no_opendir {
                    self.deliver(p.sink, r);
                    return;
                }
                let fh = if no_opendir {
                    slot.no_opendir.store(true, Ordering::Relaxed);
                    None
                } else {
                    Some(get_u64(r, OUT_HEADER_LEN))
                };
                put_u64(&mut frame, IN_HEADER_LEN, fh.unwrap_or(0));
                let own = self.own_unique();
                put_u64(&mut frame, 8, own);
                let node = get_u64(&frame, 16);
                self.expect(
                    own,
                    slot,
                    p.kernel,
                    Then::DirRead {
                        fh,
                        plus_wanted,
                        node,
                    },
                    p.sink,
                );
                if self.send_to(slot, &frame).is_err() {
                    if let Some(p) = self
                        .trans
                        .pending
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(&own)
                    {
                        self.deliver_err(p.sink, p.kernel, libc::EIO);
                    }
                }
            }
            Then::DirRead {
                fh,
                plus_wanted,
                node,
            } => {
                // Release the added open first: the answer may be large.
                if let Some(fh) = fh {
                    let own = self.own_unique();
                    let mut rel = Vec::with_capacity(IN_HEADER_LEN + 24);
                    rel.extend_from_slice(&((IN_HEADER_LEN + 24) as u32).to_ne_bytes());
                    rel.extend_from_slice(&op::RELEASEDIR.to_ne_bytes());
                    rel.extend_from_slice(&own.to_ne_bytes());
                    rel.extend_from_slice(&node.to_ne_bytes());
                    rel.extend_from_slice(&[0u8; 16]);
                    rel.extend_from_slice(&fh.to_ne_bytes());
                    rel.extend_from_slice(&[0u8; 16]);
                    self.expect(own, slot, own, Then::Drop, Sink::Dev);
                    let _ = self.send_to(slot, &rel);
                }
                if !ok {
                    self.deliver(p.sink, r);
                } else if plus_wanted && !slot.plus {
                    w.start();
                    self.plain_to_plus(slot, &r[OUT_HEADER_LEN..], w);
                    w.finish(0, p.kernel);
                    self.deliver(p.sink, &w.buf);
                } else {
                    self.remap_reply(
                        slot,
                        if plus_wanted {
                            op::READDIRPLUS
                        } else {
                            op::READDIR
                        },
                        r,
                    );
                    self.deliver(p.sink, r);
                }
            }
        }
    }

    fn deliver(&self, sink: Sink, frame: &[u8]) {
        match sink {
            Sink::Dev => match sys::write(self.fuse, frame) {
                Ok(_) | Err(libc::ENOENT) => {}
                Err(e) => tracing::debug!(errno = e, "translator answer not delivered"),
            },
        }
    }

    fn remap_attr(&self, slot: &Slot, a: &mut [u8]) {
        let (umap, gmap) = self.slot_maps(slot);
        put_u64(a, ATTR_INO, slot.ino(get_u64(a, ATTR_INO)));
        put_u32(a, ATTR_UID, umap.to_outside(get_u32(a, ATTR_UID)));
        put_u32(a, ATTR_GID, gmap.to_outside(get_u32(a, ATTR_GID)));
    }

    fn remap_entry(&self, slot: &Slot, e: &mut [u8]) {
        let id = get_u64(e, 0);
        if id != 0 {
            put_u64(e, 0, slot.outer(id));
        }
        if slot.grant {
            // Nothing of a grant is cached: after a revocation no name or attribute of
            // it is answered from the kernel's caches.
            put_u64(e, 16, 0);
            put_u64(e, 24, 0);
            put_u32(e, 32, 0);
            put_u32(e, 36, 0);
        }
        self.remap_attr(slot, &mut e[ENTRY_ATTR..ENTRY_ATTR + ATTR_LEN]);
    }

    /// Remaps the node ids, inode numbers and owners of a successful answer in place.
    fn remap_reply(&self, slot: &Slot, opcode: u32, r: &mut [u8]) {
        let b = OUT_HEADER_LEN;
        match opcode {
            op::LOOKUP
            | op::MKDIR
            | op::MKNOD
            | op::SYMLINK
            | op::LINK
            | op::CREATE
            | op::TMPFILE => {
                if r.len() >= b + abi::ENTRY_OUT_LEN {
                    self.remap_entry(slot, &mut r[b..b + abi::ENTRY_OUT_LEN]);
                }
                if opcode == op::CREATE && r.len() >= b + abi::ENTRY_OUT_LEN + 16 {
                    let at = b + abi::ENTRY_OUT_LEN + 8;
                    put_u32(r, at, open_flags(slot, get_u32(r, at)));
                }
            }
            op::GETATTR | op::SETATTR if r.len() >= b + ATTR_OUT_ATTR + ATTR_LEN => {
                if slot.grant {
                    put_u64(r, b, 0);
                    put_u32(r, b + 8, 0);
                }
                self.remap_attr(
                    slot,
                    &mut r[b + ATTR_OUT_ATTR..b + ATTR_OUT_ATTR + ATTR_LEN],
                );
            }
            op::OPEN | op::OPENDIR if r.len() >= b + 16 => {
                put_u32(r, b + 8, open_flags(slot, get_u32(r, b + 8)));
            }
            op::READDIR => {
                let mut at = b;
                while at + abi::DIRENT_LEN <= r.len() {
                    let namelen = get_u32(r, at + 16) as usize;
                    put_u64(r, at, slot.ino(get_u64(r, at)));
                    at += abi::dirent_align(abi::DIRENT_LEN + namelen);
                }
            }
            op::READDIRPLUS => {
                let mut at = b;
                while at + abi::ENTRY_OUT_LEN + abi::DIRENT_LEN <= r.len() {
                    self.remap_entry(slot, &mut r[at..at + abi::ENTRY_OUT_LEN]);
                    let d = at + abi::ENTRY_OUT_LEN;
                    let namelen = get_u32(r, d + 16) as usize;
                    put_u64(r, d, slot.ino(get_u64(r, d)));
                    at = d + abi::dirent_align(abi::DIRENT_LEN + namelen);
                }
            }
            _ => {}
        }
    }

    /// A READDIR answer as a READDIRPLUS one without entries (node id 0: the kernel then
    /// looks each name up itself).
    fn plain_to_plus(&self, slot: &Slot, d: &[u8], w: &mut Writer) {
        let mut at = 0;
        while at + abi::DIRENT_LEN <= d.len() {
            let namelen = get_u32(d, at + 16) as usize;
            let next = at + abi::dirent_align(abi::DIRENT_LEN + namelen);
            if next > d.len() {
                break;
            }
            w.zeros(abi::ENTRY_OUT_LEN);
            let start = w.buf.len();
            w.bytes(&d[at..next]);
            let ino = slot.ino(get_u64(&w.buf, start));
            put_u64(&mut w.buf, start, ino);
            at = next;
        }
    }

    /// The translator of `slot` is gone: its requests fail, the kernel forgets its root.
    fn translator_gone(&self, slot: &Arc<Slot>) {
        if slot.gone.swap(true, Ordering::AcqRel) {
            return;
        }
        // A grant whose record left its node was revoked: from now on its nodes fail
        // with EACCES (decided before any request can see the slot dead).
        if slot.grant && self.grant_record(slot.node).is_none() {
            let mut r = self.trans.revoked.lock().unwrap_or_else(|p| p.into_inner());
            if r.len() >= 1024 {
                r.pop_front();
            }
            r.push_back((slot.fd, slot.epoch & EPOCH_MASK));
        }
        slot.dead.store(true, Ordering::Release);
        let failed: Vec<Pending> = {
            let mut p = self.trans.pending.lock().unwrap_or_else(|p| p.into_inner());
            let keys: Vec<u64> = p
                .iter()
                .filter(|(_, v)| v.slot == slot.fd)
                .map(|(k, _)| *k)
                .collect();
            keys.into_iter().filter_map(|k| p.remove(&k)).collect()
        };
        let for_good = self
            .trans
            .jobs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_none();
        let e = self.gone_errno(slot);
        for p in failed {
            if !matches!(p.then, Then::Drop) {
                self.deliver_err(p.sink, p.kernel, e);
            }
        }
        if for_good {
            // The server is stopping: the slot stays for a successor.
            return;
        }
        self.unlink_slot(slot);
        tracing::info!(pid = slot.pid, passive = slot.passive, "translator gone");
        translator::stop(self.backing, slot.pid, false);
        // Before the node's descriptor goes: a server that took over finds the place
        // from it.
        self.forget_place(slot);
        self.sh.free(slot.fd);
        self.sh.free(slot.node);
        sys::close(slot.fd);
        sys::close(slot.node);
    }

    /// Takes a slot out of the tables (no new request reaches it).
    fn unlink_slot(&self, slot: &Arc<Slot>) {
        {
            let mut d = self.trans.dead.lock().unwrap_or_else(|p| p.into_inner());
            if !d.contains(&(slot.fd, slot.epoch & EPOCH_MASK)) {
                if d.len() >= 1024 {
                    d.pop_front();
                }
                d.push_back((slot.fd, slot.epoch & EPOCH_MASK));
            }
        }
        let mut t = self.trans.table.lock().unwrap_or_else(|p| p.into_inner());
        if t.slots.get(&slot.fd).is_some_and(|s| Arc::ptr_eq(s, slot)) {
            t.slots.remove(&slot.fd);
        }
        if t.by_key.get(&slot.key) == Some(&slot.fd) {
            t.by_key.remove(&slot.key);
        }
    }

    /// Makes the kernel look the translated node up again (its translator changed).
    fn forget_place(&self, slot: &Slot) {
        let known = slot.place.lock().unwrap_or_else(|p| p.into_inner()).clone();
        // A server that took over the slot never saw the lookup: the node's path tells.
        let place = known.or_else(|| {
            self.indexed.wait();
            self.place_of(slot.node)
        });
        if let Some((parent, name)) = place {
            self.inval_entry(parent, &name);
        }
    }

    fn inval_entry(&self, parent: u64, name: &[u8]) {
        let mut w = Writer::default();
        abi::encode_inval_entry(&mut w, parent, name);
        if let Err(e) = sys::write(self.fuse, &w.buf) {
            tracing::debug!(
                errno = e,
                "invalidation of a translated node's entry failed"
            );
        }
    }

    /// The extended attributes of a translator's root that are the server's: the records.
    fn root_xattr(
        &self,
        h: &InHeader,
        frame: &[u8],
        slot: &Arc<Slot>,
        w: &mut Writer,
    ) -> Option<super::dispatch::Served> {
        use super::dispatch::Served;
        let body = &frame[IN_HEADER_LEN..];
        let name_at = match h.opcode {
            op::SETXATTR => 8,
            op::GETXATTR => 8,
            op::REMOVEXATTR => 0,
            _ => return None,
        };
        let name_end = body.get(name_at..)?.iter().position(|&c| c == 0)? + name_at;
        let name = &body[name_at..name_end];
        if name != PASSIVE_XATTR.as_bytes() && name != ACTIVE_XATTR.as_bytes() {
            return None;
        }
        // Our own descriptor of the node: ending the translator closes the slot's. A
        // scratch one: a kill during this request leaves it to the successor to close.
        let own = match reopen_path(self, slot.node) {
            Ok(fd) => self.scratch(fd),
            Err(e) => return Some(err(w, h.unique, e)),
        };
        let node = own.as_raw_fd();
        let unique = h.unique;
        let res: SysResult<()> = (|| {
            match h.opcode {
                op::GETXATTR => {
                    let size = get_u32(body, 0) as usize;
                    let value = if name == ACTIVE_XATTR.as_bytes() {
                        if slot.passive {
                            return Err(libc::ENODATA);
                        }
                        translator::encode_record(&slot.args)
                    } else {
                        let mut buf = vec![0u8; translator::MAX_RECORD + 1];
                        let n = self.xget(node, c"user.porta.translator", &mut buf)?;
                        buf.truncate(n);
                        buf
                    };
                    w.start();
                    if size == 0 {
                        w.u32(value.len() as u32).u32(0);
                    } else if value.len() > size {
                        return Err(libc::ERANGE);
                    } else {
                        w.bytes(&value);
                    }
                    Ok(())
                }
                op::REMOVEXATTR | op::SETXATTR => {
                    self.may_set_translator(h, node)?;
                    if name == PASSIVE_XATTR.as_bytes() {
                        match self.xremove(node, c"user.porta.translator") {
                            Ok(()) | Err(libc::ENODATA) => {}
                            Err(e) => return Err(e),
                        }
                    }
                    // Removing either record (or setting one anew) ends the running
                    // translator; a new record takes effect at the next lookup.
                    self.end_translator(slot);
                    if h.opcode == op::SETXATTR {
                        let size = get_u32(body, 0) as usize;
                        let value = body
                            .get(name_end + 1..name_end + 1 + size)
                            .ok_or(libc::EINVAL)?;
                        return self.set_record(
                            node,
                            name,
                            value,
                            slot.place.lock().unwrap_or_else(|p| p.into_inner()).clone(),
                        );
                    }
                    w.start();
                    Ok(())
                }
                _ => Err(libc::ENOSYS),
            }
        })();
        Some(match res {
            Ok(()) => {
                if w.buf.len() < OUT_HEADER_LEN {
                    w.start();
                }
                w.finish(0, unique);
                Served::reply(None)
            }
            Err(e) => err(w, unique, e),
        })
    }

    /// Ends a running translator on purpose (its records were changed).
    fn end_translator(&self, slot: &Arc<Slot>) {
        slot.dead.store(true, Ordering::Release);
        self.unlink_slot(slot);
        // The translator reads the end of its connection (a libfuse program then
        // flushes and exits) and gets SIGTERM; the supervisor kills it after a grace
        // period. Returns once it is gone (its end of the socket closed), so that what it
        // wrote is complete before anything else opens its storage.
        // SAFETY: plain shutdown of our socket's sending side.
        unsafe { libc::shutdown(slot.fd, libc::SHUT_WR) };
        translator::stop(self.backing, slot.pid, false);
        let deadline = Instant::now() + END_WAIT;
        while !slot.gone.load(Ordering::Acquire) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        self.forget_place(slot);
    }

    /// Only the node's owner, the container's root or the host's may set or remove a
    /// translator on a directory or regular file the caller may write.
    fn may_set_translator(&self, h: &InHeader, node: RawFd) -> SysResult<()> {
        // A grant's node is the host's to change (`porta unshare`).
        if self.grant_record(node).is_some() {
            return Err(libc::EBUSY);
        }
        let st = sys::fstat(node)?;
        let t = st.st_mode & libc::S_IFMT;
        if t != libc::S_IFDIR && t != libc::S_IFREG {
            return Err(libc::EPERM);
        }
        if st.st_uid != h.uid && !self.maps().0.is_root(h.uid) {
            return Err(libc::EPERM);
        }
        if !self.trans.enabled.load(Ordering::Relaxed) {
            return Err(libc::EOPNOTSUPP);
        }
        Ok(())
    }

    /// SETXATTR of a translator record on a backing node (`place`: where the kernel sees
    /// it, when known): a passive record is written to the node; an active one starts the
    /// translator now (the caller waits for its INIT).
    fn set_record(
        &self,
        node: RawFd,
        name: &[u8],
        value: &[u8],
        place: Option<(u64, Vec<u8>)>,
    ) -> SysResult<()> {
        let args = translator::parse_record(value).map_err(|e| {
            tracing::info!(error = %e, "translator record refused");
            libc::EINVAL
        })?;
        let st = sys::fstat(node)?;
        let key = (st.st_dev, st.st_ino);
        if self
            .slot_by_key(key)
            .is_some_and(|s| !s.dead.load(Ordering::Acquire))
        {
            return Err(libc::EBUSY);
        }
        let place = place.or_else(|| self.place_of(node));
        if name == PASSIVE_XATTR.as_bytes() {
            self.xset(
                node,
                c"user.porta.translator",
                &translator::encode_record(&args),
                0,
            )?;
            if let Some((parent, n)) = &place {
                self.inval_entry(*parent, n);
            }
            return Ok(());
        }
        let waiter = Arc::new(Waiter::default());
        let job = Job {
            key,
            node: reopen_path(self, node)?,
            place: place.clone(),
            args,
            uid: st.st_uid,
            gid: st.st_gid,
            passive: false,
            grant: None,
        };
        self.submit(job, Parked::Setter(waiter.clone()));
        waiter.wait(self.trans.timeout + Duration::from_secs(5))?;
        if let Some((parent, n)) = &place {
            self.inval_entry(*parent, n);
        }
        Ok(())
    }

    /// SETXATTR / REMOVEXATTR / GETXATTR of a translator record on one of the server's
    /// own nodes; None for every other name.
    pub(super) fn node_record(
        &self,
        h: &InHeader,
        name: &[u8],
        value: Option<&[u8]>,
        w: &mut Writer,
    ) -> Option<SysResult<()>> {
        if name != PASSIVE_XATTR.as_bytes() && name != ACTIVE_XATTR.as_bytes() {
            return None;
        }
        Some((|| {
            let node = self.node_fd(h.nodeid)?;
            match (h.opcode, value) {
                (op::SETXATTR, Some(v)) => {
                    self.may_set_translator(h, node.fd())?;
                    if h.nodeid == abi::ROOT_ID {
                        return Err(libc::EBUSY);
                    }
                    self.set_record(node.fd(), name, v, None)
                }
                (op::REMOVEXATTR, _) => {
                    self.may_set_translator(h, node.fd())?;
                    if name == ACTIVE_XATTR.as_bytes() {
                        return Err(libc::ENODATA);
                    }
                    self.xremove(node.fd(), c"user.porta.translator")
                }
                (op::GETXATTR, Some(size)) => {
                    if name == ACTIVE_XATTR.as_bytes() {
                        return Err(libc::ENODATA);
                    }
                    let mut buf = vec![0u8; translator::MAX_RECORD + 1];
                    let n = self.xget(node.fd(), c"user.porta.translator", &mut buf)?;
                    let size = get_u32(size, 0) as usize;
                    if size == 0 {
                        w.u32(n as u32).u32(0);
                    } else if n > size {
                        return Err(libc::ERANGE);
                    } else {
                        w.bytes(&buf[..n]);
                    }
                    Ok(())
                }
                _ => Err(libc::EINVAL),
            }
        })())
    }

    /// The path of descriptor `fd` in this server's mount namespace.
    fn fd_path(&self, fd: RawFd) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; 4096];
        let name = FdName::new(b"", fd);
        // SAFETY: `buf` is valid for `buf.len()` bytes, the name a valid string.
        let n = unsafe {
            libc::readlinkat(
                self.proc_fd,
                name.cstr().as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        };
        buf.truncate(usize::try_from(n).ok()?);
        Some(buf)
    }

    /// The path of a node's descriptor as the container sees it.
    fn container_path(&self, node: RawFd) -> Option<String> {
        let root = self.fd_path(self.root)?;
        let path = self.fd_path(node)?;
        let rest = path.strip_prefix(root.as_slice())?;
        let rest = if root == b"/" { &path[..] } else { rest };
        let s = String::from_utf8(rest.to_vec()).ok()?;
        (s.starts_with('/')).then_some(s)
    }

    /// The (parent node id, name) of a node, from its path in the backing tree.
    fn place_of(&self, node: RawFd) -> Option<(u64, Vec<u8>)> {
        let buf = self.fd_path(node)?;
        let path = &buf[..];
        let cut = path.iter().rposition(|&c| c == b'/')?;
        let (dir, name) = (&path[..cut.max(1)], &path[cut + 1..]);
        let cdir = std::ffi::CString::new(dir).ok()?;
        let st = sys::statat(libc::AT_FDCWD, &cdir).ok()?;
        let nodes = self.inodes.lock().unwrap_or_else(|p| p.into_inner());
        let parent = nodes.by_inode.get(&(st.st_dev, st.st_ino)).copied()?;
        Some((parent, name.to_vec()))
    }
}

/// The open flags a translator's OPEN or CREATE answer reaches the kernel with: never
/// passthrough (the translator's backing files are not the kernel's to reach); for a
/// grant, uncached data (direct I/O), so that a revocation reaches open files at once.
fn open_flags(slot: &Slot, flags: u32) -> u32 {
    let flags = flags & !abi::fopen::PASSTHROUGH;
    if slot.grant {
        (flags | abi::fopen::DIRECT_IO) & !(abi::fopen::KEEP_CACHE | abi::fopen::CACHE_DIR)
    } else {
        flags
    }
}

/// Whether request `opcode` (frame `frame`) would change a tree: refused on a read-only
/// grant.
fn changes_tree(opcode: u32, frame: &[u8]) -> bool {
    match opcode {
        op::SETATTR
        | op::SYMLINK
        | op::MKNOD
        | op::MKDIR
        | op::UNLINK
        | op::RMDIR
        | op::RENAME
        | op::RENAME2
        | op::LINK
        | op::WRITE
        | op::SETXATTR
        | op::REMOVEXATTR
        | op::CREATE
        | op::FALLOCATE
        | op::COPY_FILE_RANGE
        | op::TMPFILE => true,
        op::OPEN => {
            let flags = get_u32(frame, IN_HEADER_LEN) as i32;
            flags & libc::O_ACCMODE != libc::O_RDONLY || flags & libc::O_TRUNC != 0
        }
        _ => false,
    }
}

fn err(w: &mut Writer, unique: u64, e: Errno) -> super::dispatch::Served {
    w.start();
    w.finish(-e, unique);
    super::dispatch::Served::reply(None)
}

/// An O_PATH descriptor of the same inode as `node`, owned by the caller.
fn reopen_path(fs: &Fs, node: RawFd) -> SysResult<OwnedFd> {
    sys::openat(fs.proc_fd, FdName::new(b"", node).cstr(), libc::O_PATH, 0)
}
