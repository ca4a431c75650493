//! The request loop and the file-system operations: Porta's own FUSE server over the
//! kernel ABI (see docs/file-server.md for why not a library's loop).
//!
//! Nodes are O_PATH descriptors opened one name at a time beneath the root with
//! O_NOFOLLOW; node id = descriptor + 2 (the root is node 1). Open files are descriptors
//! too (file handle = descriptor), and so are the directories the server keeps open for
//! listings ([`crate::listing`]). All are published in the shared table
//! ([`crate::shared`]) so a replacement server carries on with them. When
//! descriptors run short, new nodes are *cold*: recorded by parent node and name in the
//! shared cold table, opened by name (inode checked) for each request that needs them.

use std::collections::HashMap;
use std::ffi::CStr;
use std::os::fd::{AsRawFd, IntoRawFd, OwnedFd, RawFd};
use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::time::Duration;

use crate::abi::{self, fattr, fopen, init, op, Attr, InHeader, Reader, Ttl, Writer};
use crate::evict::{self, Budget, Method};
use crate::helper;
use crate::listing::{self, Streams};
use crate::shared::{self, cold, forget_log, hdr, journal, kind, slot, NodeRef, Shared};
use crate::sys::{self, Errno, SysResult};
use crate::Error;

/// Extended attribute recording a device node stored as a regular file.
const DEV_XATTR: &CStr = c"user.porta.dev";
/// Prefix of the extended attributes reserved to the server (hidden from the container).
const RESERVED_XATTR_PREFIX: &[u8] = b"user.porta.";
/// Largest write the server accepts (and negotiates).
pub const MAX_WRITE: u32 = 1 << 20;

/// Whether server threads create files with the caller's file-system ids (set by the
/// keeper once SECBIT_NO_SETUID_FIXUP keeps the capabilities across the switch; servers
/// are clones of the keeper and inherit it).
static CREATE_AS_CALLER: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Makes the server create new files, directories, nodes and symlinks with the calling
/// process's uid and gid as its file-system ids, so the backing file system records the
/// owner itself: through an idmapped backing mount that does not map the server's own
/// id, a file created as the server would be refused (EOVERFLOW).
pub fn enable_create_as_caller() {
    CREATE_AS_CALLER.store(true, Ordering::Relaxed);
}

/// The calling thread's file-system ids before [`Fs::as_caller`]; restored on drop.
struct FsIds {
    uid: u32,
    gid: u32,
}

impl Drop for FsIds {
    fn drop(&mut self) {
        sys::setfsuid(self.uid);
        sys::setfsgid(self.gid);
    }
}

/// How long an idle request thread keeps polling the (non-blocking) FUSE descriptor
/// before it sleeps. A FUSE round trip is two wake-ups; on these virtual machines a
/// wake-up of an idle CPU costs tens of microseconds, so catching the next request of a
/// busy container while still running makes creates ~30% faster, at the price of at most
/// this much CPU time after each burst of requests, on one thread.
const SPIN: std::time::Duration = std::time::Duration::from_micros(50);
/// The most one COPY_FILE_RANGE copies (the caller gets a short count and goes on, as
/// copy_file_range(2) allows). The caller waits uninterruptibly for a request the server
/// has taken, even on SIGKILL; a file system in the kernel would stop a large copy at
/// a signal. 16 MiB keeps that wait well under a second even on slow disks (the old cap of
/// 1 GiB meant ten seconds at 100 MB/s), at one round trip per 16 MiB.
const COPY_CHUNK: u64 = 16 << 20;
/// Size of the request buffer of each thread.
const BUF_LEN: usize = shared::REQUEST_BUF_LEN;
const _: () = assert!(BUF_LEN == MAX_WRITE as usize + 4096);

/// Server thread `idx`'s request buffer: its buffer in the shared memory, or (a region
/// without one) a private one.
fn request_buf(sh: &Shared, idx: usize) -> &'static mut [u8] {
    // SAFETY: each index is taken once per server (one server runs at a time on a state
    // region), by the thread that uses it (slot 0 by the main thread for INIT and then
    // its loop), after recovery dropped its slices.
    match unsafe { sh.request_buf(idx) } {
        Some(b) => b,
        None => Box::leak(vec![0u8; BUF_LEN].into_boxed_slice()),
    }
}

/// How a server is set up.
#[derive(Debug, Clone)]
pub struct Config {
    /// The FUSE connection (a /dev/fuse descriptor; a SEQPACKET socket in tests).
    pub fuse_fd: RawFd,
    /// O_PATH descriptor of the backing root directory.
    pub root_fd: RawFd,
    /// Descriptor of the directory `/proc/self/fd` (reopening nodes by descriptor).
    pub proc_fd: RawFd,
    /// The shared state region.
    pub shared: Shared,
    /// Ask for FUSE passthrough of regular-file data (falls back to the writeback
    /// cache when the kernel does not offer it).
    pub passthrough: bool,
    /// Number of request threads (1 or 2 is right on 2 cores).
    pub threads: usize,
    /// Entry and attribute timeout: long, as the server is the tree's only writer.
    pub ttl: Duration,
    /// Socket to the supervisor that registers passthrough backing files for the server
    /// ([`crate::backing`]); -1: register them itself with the FUSE ioctl (needs
    /// CAP_SYS_ADMIN in the initial user namespace; tests and examples).
    pub backing_fd: RawFd,
}

/// Why a server stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// The connection is gone (unmounted or aborted): nothing more to serve.
    Unmounted,
    /// The kernel sent DESTROY.
    Destroyed,
}

struct Fs {
    fault: Option<(Fault, Vec<u8>)>,
    /// The reply journal as the previous server left it: (request id, state, x, y).
    journal_at_start: Vec<[u64; 4]>,
    fuse: RawFd,
    backing: RawFd,
    root: RawFd,
    proc_fd: RawFd,
    sh: Shared,
    passthrough: bool,
    writeback: bool,
    ttl: Ttl,
    /// Whether one request thread is polling for the next request (see [`SPIN`]).
    spinning: std::sync::atomic::AtomicBool,
    root_dev: u64,
    /// The node index; also the lock under which node entries change.
    inodes: Mutex<Inodes>,
    /// Thresholds on the table entries in use (see [`crate::evict`]).
    budget: Budget,
    /// Thresholds on the cold table.
    cold_budget: Budget,
    /// The eviction thread's controls.
    evict: evict::Control,
    /// With `Method::InvalEntry` only: the (parent, name) each node was last looked up
    /// under. Process memory: after a restart a node has no known name (and is not
    /// evicted that way) until it is looked up again.
    names: Mutex<HashMap<u64, NameRec>>,
    /// The directories kept open for listings.
    streams: Mutex<Streams>,
    /// The thread that shares the lookups of long listings.
    helper: helper::Helper<Listed>,
    /// Open once `inodes` and `streams` are rebuilt after the server started.
    indexed: Gate,
}

/// A one-way gate: closed when made, open for good once `open` is called.
#[derive(Default)]
struct Gate {
    is_open: std::sync::atomic::AtomicBool,
    lock: Mutex<bool>,
    cv: std::sync::Condvar,
}

impl Gate {
    fn open(&self) {
        *self.lock.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.is_open.store(true, Ordering::Release);
        self.cv.notify_all();
    }

    fn wait(&self) {
        if self.is_open.load(Ordering::Acquire) {
            return;
        }
        let mut open = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        while !*open {
            open = self.cv.wait(open).unwrap_or_else(|p| p.into_inner());
        }
    }
}

/// Whether a request may be served before a starting server has rebuilt its node index
/// (`Fs::rebuild_index`): it neither looks a name up, nor counts, frees or opens anything
/// in the shared tables. Reads, writes, attributes and xattrs of the nodes and files the
/// kernel holds go on at once after a restart, however many nodes there are.
fn index_free(opcode: u32) -> bool {
    matches!(
        opcode,
        op::GETATTR
            | op::SETATTR
            | op::READLINK
            | op::READ
            | op::WRITE
            | op::STATFS
            | op::FSYNC
            | op::FSYNCDIR
            | op::SETXATTR
            | op::GETXATTR
            | op::LISTXATTR
            | op::REMOVEXATTR
            | op::FLUSH
            | op::ACCESS
            | op::FALLOCATE
            | op::LSEEK
            | op::COPY_FILE_RANGE
            | op::INTERRUPT
            | op::SYNCFS
    )
}

/// The directory node id and the name a node was last looked up under.
type NameRec = (u64, Box<[u8]>);

/// Node ids by backing (st_dev, st_ino). A new server rebuilds it from the shared tables
/// before it serves, so its hasher is a cheap multiply-rotate one (inode numbers are
/// chosen by the backing file system, not by the container): hashing was most of a
/// restart's time with many nodes.
type InodeMap = HashMap<(u64, u64), u64, std::hash::BuildHasherDefault<InodeHasher>>;

/// The hasher of [`InodeMap`].
#[derive(Default)]
struct InodeHasher(u64);

impl std::hash::Hasher for InodeHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    fn write_u64(&mut self, x: u64) {
        self.0 = (self.0.rotate_left(5) ^ x).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
}

/// Nodes by backing inode, and the free cold entries.
struct Inodes {
    /// (st_dev, st_ino) -> node id: one node per backing inode (hard links share it).
    by_inode: InodeMap,
    /// Free cold entries below `cold_next`.
    cold_free: Vec<usize>,
    /// The next cold entry never used.
    cold_next: usize,
}

/// Longest chain of cold directories opened to reach one cold node (a guard against a
/// corrupted table; real chains end at a node with a descriptor long before).
const MAX_COLD_CHAIN: usize = 1 << 16;

/// A node's descriptor for one request: its own, or (a cold node) one opened by name
/// for this request.
enum NodeFd {
    Held(RawFd),
    Opened(OwnedFd),
}

impl NodeFd {
    fn fd(&self) -> RawFd {
        match self {
            NodeFd::Held(fd) => *fd,
            NodeFd::Opened(f) => f.as_raw_fd(),
        }
    }
}

/// A stack-built decimal descriptor name ("123") or /proc path ("/proc/self/fd/123").
struct FdName {
    buf: [u8; 40],
    len: usize,
}

impl FdName {
    fn new(prefix: &[u8], fd: RawFd) -> FdName {
        let mut buf = [0u8; 40];
        buf[..prefix.len()].copy_from_slice(prefix);
        let mut digits = [0u8; 12];
        let mut n = fd.max(0) as u32;
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        let d = &digits[i..];
        buf[prefix.len()..prefix.len() + d.len()].copy_from_slice(d);
        FdName {
            buf,
            len: prefix.len() + d.len() + 1,
        }
    }
    fn cstr(&self) -> &CStr {
        CStr::from_bytes_with_nul(&self.buf[..self.len]).unwrap_or(c"")
    }
}

fn proc_path(fd: RawFd) -> FdName {
    FdName::new(b"/proc/self/fd/", fd)
}

/// A node id as the reply journal records it (32 bits, never 0): descriptor nodes as
/// their id (below 2^31), cold nodes as 2^31 + index. `None` for the root and non-nodes.
fn journal_code(nodeid: u64) -> Option<u64> {
    match NodeRef::of(nodeid)? {
        NodeRef::Hot(_) => Some(nodeid),
        NodeRef::Cold(i) if i < 1 << 31 => Some((1 << 31) | i as u64),
        NodeRef::Cold(_) => None,
    }
}

/// The node id of a [`journal_code`].
fn journal_node(code: u64) -> Option<u64> {
    let id = if code & (1 << 31) != 0 {
        NodeRef::Cold((code & 0x7fff_ffff) as usize).id()
    } else {
        code
    };
    NodeRef::of(id).map(NodeRef::id)
}

/// The request id and (node, count) entries of a FORGET or BATCH_FORGET frame at the
/// start of `buf`; `None` for any other request or a malformed one.
fn forget_frame(buf: &[u8]) -> Option<(u64, Vec<(u64, u64)>)> {
    let len = u32::from_ne_bytes(buf.get(..4)?.try_into().ok()?) as usize;
    let frame = buf.get(..len)?;
    let h = InHeader::parse(frame).ok()?;
    let mut r = Reader::new(frame.get(abi::IN_HEADER_LEN..)?);
    match h.opcode {
        op::FORGET => Some((h.unique, vec![(h.nodeid, r.u64().ok()?)])),
        op::BATCH_FORGET => {
            let count = r.u32().ok()? as usize;
            r.u32().ok()?;
            let mut v = Vec::with_capacity(count.min(len / 16));
            for _ in 0..count {
                let (Ok(id), Ok(n)) = (r.u64(), r.u64()) else {
                    break;
                };
                v.push((id, n));
            }
            Some((h.unique, v))
        }
        _ => None,
    }
}

fn mal(_: abi::Malformed) -> Errno {
    libc::EINVAL
}

enum Done {
    Reply,
    NoReply,
    Destroy,
}

/// Serves the connection until it goes away. The first server of a connection runs the
/// INIT handshake; a replacement (the shared state says INIT happened) restores the
/// negotiated parameters and asks the kernel to resend the requests its predecessor had
/// read but not answered (FUSE_NOTIFY_RESEND).
pub fn serve(cfg: &Config) -> Result<Exit, Error> {
    sys::umask(0);
    let root_st = sys::fstat(cfg.root_fd).map_err(|e| errno_err("fstat backing root", e))?;
    if root_st.st_mode & libc::S_IFMT != libc::S_IFDIR {
        return Err(Error::BadState("backing root is not a directory".into()));
    }
    let sh = cfg.shared;
    if sh.capacity() <= cfg.root_fd as usize {
        return Err(Error::BadState(
            "state table too small for the root descriptor".into(),
        ));
    }
    sh.hdr(hdr::ROOT_FD)
        .store(cfg.root_fd as u64, Ordering::Relaxed);
    sh.hdr(hdr::SERVER_STARTS).fetch_add(1, Ordering::Relaxed);
    sh.hdr(hdr::SERVER_PID)
        .store(std::process::id() as u64, Ordering::Relaxed);
    sh.dev_index(root_st.st_dev);
    sh.publish(
        cfg.root_fd,
        kind::NODE,
        u64::MAX / 2,
        root_st.st_ino,
        root_st.st_dev,
    );
    let nofile = match sh.hdr(hdr::NOFILE).load(Ordering::Relaxed) {
        0 => sys::raise_nofile().unwrap_or(u64::MAX),
        n => n,
    };
    let budget = Budget::for_limit((nofile.min(sh.capacity() as u64) as usize).max(16));
    let cold_budget = Budget::for_cold(sh.cold_capacity());
    let secs = cfg.ttl.as_secs();
    let journal_at_start = (0..hdr::MAX_SLOTS)
        .filter_map(|i| sh.journal(i))
        .map(|e| [0, 1, 2, 3].map(|k| e[k].load(Ordering::Acquire)))
        .filter(|e| e[1] != journal::EMPTY)
        .collect();
    let mut fs = Fs {
        fault: fault_from_env(),
        journal_at_start,
        fuse: cfg.fuse_fd,
        backing: cfg.backing_fd,
        root: cfg.root_fd,
        proc_fd: cfg.proc_fd,
        sh,
        passthrough: false,
        writeback: false,
        ttl: Ttl {
            secs,
            nsecs: cfg.ttl.subsec_nanos(),
        },
        root_dev: root_st.st_dev,
        // Empty until `rebuild_index` (on the eviction thread) fills them from the shared
        // tables; requests that need them wait for `indexed`.
        inodes: Mutex::new(Inodes {
            by_inode: InodeMap::default(),
            cold_free: Vec::new(),
            cold_next: sh.cold_scan_end(),
        }),
        indexed: Gate::default(),
        spinning: std::sync::atomic::AtomicBool::new(false),
        budget,
        cold_budget,
        evict: evict::Control::default(),
        names: Mutex::new(HashMap::new()),
        streams: Mutex::new(Streams::default()),
        helper: helper::Helper::default(),
    };
    // Before this server reads anything: the FORGETs a killed predecessor had read are in
    // its threads' request buffers. Applied to the shared tables before the index is
    // rebuilt from them (what `forget` does to the still empty index is dropped with it).
    let recovered = fs.recover_forgets();
    if recovered > 0 {
        tracing::info!(recovered, "applied the FORGETs a killed server had read");
    }
    let buf = request_buf(&sh, 0);
    if sh.hdr(hdr::INITIALIZED).load(Ordering::Acquire) == 0 {
        if let Some(exit) = fs.handshake(buf, cfg.passthrough)? {
            return Ok(exit);
        }
    } else {
        let flags = sh.hdr(hdr::INIT_FLAGS).load(Ordering::Relaxed);
        fs.passthrough = flags & init::PASSTHROUGH != 0;
        fs.writeback = flags & init::WRITEBACK_CACHE != 0;
        if flags & init::HAS_RESEND != 0 {
            let mut w = Writer::default();
            w.start();
            w.finish(abi::NOTIFY_RESEND, 0);
            if let Err(e) = sys::write(fs.fuse, &w.buf) {
                tracing::warn!(errno = e, "FUSE_NOTIFY_RESEND failed");
            }
        }
        tracing::info!(
            passthrough = fs.passthrough,
            "file server restarted on a live connection"
        );
    }
    fs.evict.set_method(evict::probe(fs.fuse));
    // Request threads poll before they sleep (wait_for_request); the supervisor and the
    // keeper never read this descriptor, so its file description may be non-blocking.
    sys::set_nonblocking(fs.fuse)
        .map_err(|e| errno_err("make the FUSE descriptor non-blocking", e))?;
    let fs = &fs;
    let threads = cfg.threads.clamp(1, hdr::MAX_SLOTS);
    let result = std::thread::scope(|s| {
        let evictor = s.spawn(move || {
            fs.rebuild_index();
            fs.evict_loop()
        });
        fs.evict.set_thread(evictor.thread().clone());
        s.spawn(move || fs.helper.run(|job, i| fs.list_lookup(job, i)));
        let handles: Vec<_> = (1..threads)
            .map(|i| s.spawn(move || fs.run_loop(i, request_buf(&fs.sh, i))))
            .collect();
        let mut r = fs.run_loop(0, buf);
        fs.evict.shutdown();
        fs.helper.stop();
        for h in handles {
            let hr = h
                .join()
                .unwrap_or(Err(Error::BadState("server thread panicked".into())));
            if r.is_ok() {
                r = hr;
            }
        }
        r
    });
    if result.is_ok() {
        sh.hdr(hdr::UNMOUNTED).store(1, Ordering::Release);
    }
    result
}

fn errno_err(what: &'static str, e: Errno) -> Error {
    Error::Sys(what, nix::errno::Errno::from_raw(e))
}

impl Fs {
    fn handshake(&mut self, buf: &mut [u8], want_passthrough: bool) -> Result<Option<Exit>, Error> {
        loop {
            let n = match sys::read(self.fuse, buf) {
                Ok(0) | Err(libc::ENODEV) => return Ok(Some(Exit::Unmounted)),
                Ok(n) => n,
                Err(libc::EAGAIN) => {
                    // a predecessor made the description non-blocking
                    let _ = sys::wait_readable(self.fuse);
                    continue;
                }
                Err(libc::EINTR) | Err(libc::ENOENT) => continue,
                Err(e) => return Err(errno_err("read INIT", e)),
            };
            let frame = &buf[..n];
            let Ok(h) = InHeader::parse(frame) else {
                tracing::warn!(len = n, "malformed frame before INIT ignored");
                continue;
            };
            if h.opcode != op::INIT {
                self.send_err(h.unique, libc::EIO);
                continue;
            }
            let mut r = Reader::new(&frame[abi::IN_HEADER_LEN..]);
            let parsed = (|| {
                let major = r.u32()?;
                let minor = r.u32()?;
                let readahead = r.u32()?;
                let flags = r.u32()? as u64;
                let flags2 = r.u32().unwrap_or(0) as u64;
                Ok::<_, abi::Malformed>((major, minor, readahead, flags, flags2))
            })();
            let Ok((major, minor, readahead, flags_lo, flags_hi)) = parsed else {
                self.send_err(h.unique, libc::EINVAL);
                continue;
            };
            let kflags = if flags_lo & init::INIT_EXT != 0 {
                flags_lo | (flags_hi << 32)
            } else {
                flags_lo
            };
            if major != abi::KERNEL_VERSION || minor < 31 {
                tracing::error!(major, minor, "kernel FUSE protocol too old");
                self.send_err(h.unique, libc::EPROTO);
                return Err(Error::BadState(format!(
                    "kernel FUSE protocol {major}.{minor} unsupported"
                )));
            }
            let mut want = init::ASYNC_READ
                | init::ATOMIC_O_TRUNC
                | init::BIG_WRITES
                | init::DO_READDIRPLUS
                | init::PARALLEL_DIROPS
                | init::MAX_PAGES
                | init::CACHE_SYMLINKS
                | init::INIT_EXT
                | init::NO_EXPORT_SUPPORT
                | init::HAS_RESEND
                | init::HANDLE_KILLPRIV_V2;
            if want_passthrough && kflags & init::PASSTHROUGH != 0 {
                want |= init::PASSTHROUGH;
            } else {
                want |= init::WRITEBACK_CACHE;
            }
            let flags = want & kflags;
            self.passthrough = flags & init::PASSTHROUGH != 0;
            self.writeback = flags & init::WRITEBACK_CACHE != 0;
            let minor = minor.min(abi::KERNEL_MINOR_VERSION);
            let mut w = Writer::default();
            w.start();
            w.u32(abi::KERNEL_VERSION)
                .u32(minor)
                .u32(readahead)
                .u32(flags as u32)
                .u16(16)
                .u16(12)
                .u32(MAX_WRITE)
                .u32(1)
                .u16((MAX_WRITE / 4096) as u16)
                .u16(0)
                .u32((flags >> 32) as u32)
                .u32(if self.passthrough { 2 } else { 0 })
                .zeros(24);
            w.finish(0, h.unique);
            let sh = &self.sh;
            sh.hdr(hdr::PROTO_MINOR)
                .store(minor as u64, Ordering::Relaxed);
            sh.hdr(hdr::INIT_FLAGS).store(flags, Ordering::Relaxed);
            sh.hdr(hdr::MAX_WRITE)
                .store(MAX_WRITE as u64, Ordering::Relaxed);
            sh.hdr(hdr::MAX_READAHEAD)
                .store(readahead as u64, Ordering::Relaxed);
            sh.hdr(hdr::INITIALIZED).store(1, Ordering::Release);
            match sys::write(self.fuse, &w.buf) {
                Ok(_) => {}
                Err(libc::ENODEV) => return Ok(Some(Exit::Unmounted)),
                Err(e) => return Err(errno_err("reply INIT", e)),
            }
            tracing::info!(
                minor,
                passthrough = self.passthrough,
                writeback = self.writeback,
                "FUSE connection initialized"
            );
            return Ok(None);
        }
    }

    fn run_loop(&self, idx: usize, buf: &mut [u8]) -> Result<Exit, Error> {
        let slot = self.sh.slot(idx);
        if let Some(s) = slot {
            s[0].store(slot::IDLE, Ordering::Relaxed);
            s[2].store(sys::gettid() as u64, Ordering::Release);
        }
        let mut w = Writer {
            buf: Vec::with_capacity(BUF_LEN),
        };
        let mut dents = vec![0u8; 32 * 1024];
        let mut idle_since: Option<std::time::Instant> = None;
        loop {
            let n = match sys::read(self.fuse, buf) {
                Ok(0) | Err(libc::ENODEV) => return Ok(Exit::Unmounted),
                Ok(n) => n,
                Err(libc::EAGAIN) => {
                    self.wait_for_request(&mut idle_since);
                    continue;
                }
                Err(libc::EINTR) | Err(libc::ENOENT) => continue,
                Err(e) => return Err(errno_err("read FUSE request", e)),
            };
            if idle_since.take().is_some() {
                self.spinning.store(false, Ordering::Relaxed);
            }
            if let Some(s) = slot {
                s[0].store(slot::WORKING, Ordering::Relaxed);
                s[1].fetch_add(1, Ordering::Release);
            }
            let done = self.dispatch(idx, &buf[..n], &mut w, &mut dents);
            if let Some(s) = slot {
                s[0].store(slot::IDLE, Ordering::Relaxed);
                s[1].fetch_add(1, Ordering::Release);
            }
            self.sh
                .hdr(hdr::REQUESTS_DONE)
                .fetch_add(1, Ordering::Relaxed);
            if let Some(Exit::Destroyed) = done {
                return Ok(Exit::Destroyed);
            }
        }
    }

    /// Waits for the next request after a read found none: one thread at a time
    /// polls for up to [`SPIN`] (a request that arrives meanwhile is taken without a
    /// wake-up, the dominant cost of a round trip on a virtual machine), then every
    /// thread sleeps in poll(2).
    fn wait_for_request(&self, idle_since: &mut Option<std::time::Instant>) {
        if idle_since.is_none()
            && self
                .spinning
                .compare_exchange(false, true, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            *idle_since = Some(std::time::Instant::now());
        }
        if let Some(t) = *idle_since {
            if t.elapsed() < SPIN {
                std::hint::spin_loop();
                return;
            }
            self.spinning.store(false, Ordering::Relaxed);
            *idle_since = None;
        }
        if let Err(e) = sys::wait_readable(self.fuse) {
            if e != libc::EINTR {
                tracing::debug!(errno = e, "poll of the FUSE descriptor failed");
            }
        }
    }

    fn send(&self, w: &Writer) {
        match sys::write(self.fuse, &w.buf) {
            Ok(_) | Err(libc::ENOENT) => {}
            Err(e) => tracing::debug!(errno = e, "reply not delivered"),
        }
    }

    fn send_err(&self, unique: u64, errno: Errno) {
        let mut w = Writer::default();
        w.start();
        w.finish(-errno, unique);
        self.send(&w);
    }

    fn dispatch(&self, idx: usize, frame: &[u8], w: &mut Writer, dents: &mut [u8]) -> Option<Exit> {
        let h = match InHeader::parse(frame) {
            Ok(h) => h,
            Err(_) => {
                tracing::warn!(len = frame.len(), "malformed FUSE frame ignored");
                if frame.len() >= 16 {
                    let mut u = [0u8; 8];
                    u.copy_from_slice(&frame[8..16]);
                    self.send_err(u64::from_ne_bytes(u), libc::EIO);
                }
                return None;
            }
        };
        let ext = h.total_extlen as usize * 8;
        let body_end = frame.len().saturating_sub(ext).max(abi::IN_HEADER_LEN);
        let r = Reader::new(&frame[abi::IN_HEADER_LEN..body_end]);
        let resent = h.unique & abi::UNIQUE_RESEND_FLAG != 0;
        if resent {
            self.sh.hdr(hdr::RESENT).fetch_add(1, Ordering::Relaxed);
        }
        w.start();
        if !index_free(h.opcode) {
            self.indexed.wait();
        }
        let journaled = matches!(
            h.opcode,
            op::UNLINK
                | op::RMDIR
                | op::RENAME
                | op::RENAME2
                | op::SETXATTR
                | op::REMOVEXATTR
                // A resent RELEASE whose first run closed the descriptor must not close
                // whatever file took the number since.
                | op::RELEASE
        );
        let entry_reply = matches!(
            h.opcode,
            op::LOOKUP | op::MKDIR | op::MKNOD | op::SYMLINK | op::LINK | op::CREATE
        );
        let res = if journaled {
            self.journaled(idx, &h, r, w, dents, resent)
        } else if entry_reply {
            match self.entry_again(&h, w, resent) {
                Some(()) => Ok(Done::Reply),
                None => {
                    let res = self.handle(idx, &h, r, w, dents, resent);
                    if res.is_ok() {
                        self.record_entry(idx, &h, w);
                    }
                    res
                }
            }
        } else {
            self.handle(idx, &h, r, w, dents, resent)
        };
        if !matches!(
            h.opcode,
            op::FORGET | op::BATCH_FORGET | op::INTERRUPT | op::DESTROY
        ) {
            self.touch(h.nodeid);
        }
        if matches!(h.opcode, op::FORGET | op::BATCH_FORGET | op::INTERRUPT) {
            // Never answered, even when malformed.
            return None;
        }
        match res {
            Ok(Done::Reply) => {
                w.finish(0, h.unique);
                self.send(w);
                None
            }
            Ok(Done::NoReply) => None,
            Ok(Done::Destroy) => {
                w.finish(0, h.unique);
                self.send(w);
                Some(Exit::Destroyed)
            }
            Err(e) => {
                w.start();
                w.finish(-e, h.unique);
                self.send(w);
                None
            }
        }
    }

    /// Runs a request whose reply is only an errno through the reply journal: a resent
    /// request whose first run completed gets the recorded answer and is not run again.
    fn journaled(
        &self,
        idx: usize,
        h: &InHeader,
        r: Reader,
        w: &mut Writer,
        dents: &mut [u8],
        resent: bool,
    ) -> SysResult<Done> {
        let id = h.unique & !abi::UNIQUE_RESEND_FLAG;
        if resent {
            if let Some(e) = self
                .journal_at_start
                .iter()
                .find(|e| e[0] == id && e[1] == journal::DONE)
            {
                let errno = e[2] as i32;
                return if errno == 0 {
                    Ok(Done::Reply)
                } else {
                    Err(errno)
                };
            }
        }
        let entry = self.sh.journal(idx);
        if let Some(e) = entry {
            e[1].store(journal::EMPTY, Ordering::Release);
            e[0].store(id, Ordering::Relaxed);
            e[2].store(0, Ordering::Relaxed);
            e[3].store(0, Ordering::Relaxed);
            e[1].store(journal::INTENT, Ordering::Release);
        }
        let res = self.handle(idx, h, r, w, dents, resent);
        if let Some(e) = entry {
            let errno = match &res {
                Ok(_) => 0,
                Err(e) => *e,
            };
            e[2].store(errno as u64, Ordering::Relaxed);
            e[1].store(journal::DONE, Ordering::Release);
        }
        res
    }

    /// Records in the thread's journal entry the node (and the file handle) a request that
    /// counts a lookup is about to be answered with, so that a resent copy of it gets the
    /// same answer instead of counting the node again (and, for CREATE, opening a second
    /// handle nobody would ever release: a leaked writable descriptor makes exec of the
    /// file fail with ETXTBSY).
    fn record_entry(&self, idx: usize, h: &InHeader, w: &Writer) {
        // The answer as handle() wrote it: fuse_entry_out, then fuse_open_out for CREATE.
        let mut r = Reader::new(w.buf.get(abi::OUT_HEADER_LEN..).unwrap_or(&[]));
        let nodeid = r.u64().unwrap_or(0);
        let Some(code) = journal_code(nodeid) else {
            return; // a negative entry, or the root: nothing counted
        };
        let Some(node) = self.sh.node_entry(nodeid) else {
            return;
        };
        let mut x = code;
        if h.opcode == op::CREATE {
            let fh = match r.skip(abi::ENTRY_OUT_LEN - 8).and_then(|()| r.u64()) {
                Ok(fh) => fh,
                Err(_) => return,
            };
            if fh > i32::MAX as u64 {
                return;
            }
            x |= (fh + 1) << 32;
        }
        if let Some(e) = self.sh.journal(idx) {
            e[1].store(journal::EMPTY, Ordering::Release);
            e[0].store(h.unique & !abi::UNIQUE_RESEND_FLAG, Ordering::Relaxed);
            e[2].store(x, Ordering::Relaxed);
            e[3].store(node[2].load(Ordering::Relaxed), Ordering::Relaxed);
            e[1].store(journal::ENTRY, Ordering::Release);
        }
    }

    /// For a resent request whose first run was recorded by [`Fs::record_entry`]: writes the
    /// first run's answer (the node and its current attributes, and for CREATE the same
    /// file handle) when that node and handle are still what they were.
    fn entry_again(&self, h: &InHeader, w: &mut Writer, resent: bool) -> Option<()> {
        if !resent {
            return None;
        }
        let id = h.unique & !abi::UNIQUE_RESEND_FLAG;
        let e = self
            .journal_at_start
            .iter()
            .find(|e| e[0] == id && e[1] == journal::ENTRY)?;
        let nodeid = journal_node(e[2] & 0xffff_ffff)?;
        let node = self.sh.node_entry(nodeid)?;
        if node[2].load(Ordering::Relaxed) != e[3] {
            return None;
        }
        let open = if h.opcode == op::CREATE {
            let fh = ((e[2] >> 32) as i64 - 1) as RawFd;
            if fh < 0 || self.sh.kind(fh) != kind::FILE {
                return None;
            }
            if self.sh.entry(fh)?[1].load(Ordering::Relaxed) != nodeid {
                return None;
            }
            let io = if !self.passthrough || self.served_in_passthrough(fh) {
                None
            } else {
                match node[4].load(Ordering::Acquire) {
                    0 => return None,
                    id => Some((id - 1) as i32),
                }
            };
            Some((fh, io))
        } else {
            None
        };
        let fd = self.node_fd(nodeid).ok()?;
        let st = sys::fstat(fd.fd()).ok()?;
        let attr = self.attr(fd.fd(), &st);
        w.start();
        abi::encode_entry(w, nodeid, 0, self.ttl, &attr);
        if let Some((fh, io)) = open {
            self.open_out(w, fh, io);
        }
        Some(())
    }

    /// For a resent RELEASE whose first run recorded the handle it was about to close: a
    /// different stamp at that descriptor now means the first run closed it and a later
    /// open took the number (closing that one would break an open file: EBADF).
    fn released_already(&self, h: &InHeader, fh: u64, stamp: u64) -> bool {
        let id = h.unique & !abi::UNIQUE_RESEND_FLAG;
        self.journal_at_start
            .iter()
            .find(|e| e[0] == id && e[1] == journal::INTENT)
            .is_some_and(|e| e[2] == fh && e[3] != 0 && e[3] != stamp)
    }

    /// For a resent RENAME_EXCHANGE whose first run may have happened before the journal
    /// recorded it: the inode numbers seen before the swap tell whether it did.
    fn exchange_already_done(&self, h: &InHeader, od: RawFd, old: &CStr) -> bool {
        let id = h.unique & !abi::UNIQUE_RESEND_FLAG;
        let Some(e) = self
            .journal_at_start
            .iter()
            .find(|e| e[0] == id && e[1] == journal::INTENT)
        else {
            return false;
        };
        let (old_ino, new_ino) = (e[2], e[3]);
        old_ino != 0 && new_ino != 0 && sys::statat(od, old).is_ok_and(|st| st.st_ino == new_ino)
    }

    fn handle(
        &self,
        idx: usize,
        h: &InHeader,
        mut r: Reader,
        w: &mut Writer,
        dents: &mut [u8],
        resent: bool,
    ) -> SysResult<Done> {
        match h.opcode {
            op::LOOKUP => {
                let name = r.name().map_err(mal)?;
                self.inject_fault(name);
                let parent_node = self.node_fd(h.nodeid)?;
                let parent = parent_node.fd();
                match self.lookup(h.nodeid, parent, name) {
                    Ok((id, attr)) => abi::encode_entry(w, id, 0, self.ttl, &attr),
                    Err(libc::ENOENT) => abi::encode_entry(w, 0, 0, self.ttl, &Attr::default()),
                    Err(e) => return Err(e),
                }
            }
            op::FORGET => {
                let n = r.u64().map_err(mal)?;
                self.forget_logged(idx, h.unique, &[(h.nodeid, n)], 0);
                return Ok(Done::NoReply);
            }
            op::BATCH_FORGET => {
                let count = r.u32().map_err(mal)?;
                r.u32().map_err(mal)?;
                let mut entries = Vec::with_capacity((count as usize).min(4096));
                for _ in 0..count {
                    let (Ok(id), Ok(n)) = (r.u64(), r.u64()) else {
                        break;
                    };
                    entries.push((id, n));
                }
                self.forget_logged(idx, h.unique, &entries, 0);
                return Ok(Done::NoReply);
            }
            op::GETATTR => {
                let flags = r.u32().map_err(mal)?;
                r.u32().map_err(mal)?;
                let fh = r.u64().map_err(mal)?;
                let fd_node = self.node_fd(h.nodeid)?;
                let fd = fd_node.fd();
                let st = if flags & 1 != 0 {
                    match self.fh_fd(fh) {
                        Ok(f) => sys::fstat(f)?,
                        Err(_) => sys::fstat(fd)?,
                    }
                } else {
                    sys::fstat(fd)?
                };
                let attr = self.attr(fd, &st);
                self.attr_out(w, &attr);
            }
            op::SETATTR => self.setattr(h, r, w)?,
            op::READLINK => {
                let fd_node = self.node_fd(h.nodeid)?;
                let fd = fd_node.fd();
                let start = w.buf.len();
                w.zeros(libc::PATH_MAX as usize);
                let n = sys::readlink_fd(fd, &mut w.buf[start..])?;
                w.buf.truncate(start + n);
            }
            op::SYMLINK => {
                let name = r.name().map_err(mal)?;
                let target = r.cstr().map_err(mal)?;
                let parent_node = self.node_fd(h.nodeid)?;
                let parent = parent_node.fd();
                self.room_for_node()?;
                let res = {
                    let _ids = self.as_caller(h);
                    sys::symlinkat(target, parent, name)
                };
                self.finish_new(h, parent, name, res, resent, w)?;
            }
            op::MKNOD => {
                let mode = r.u32().map_err(mal)?;
                let rdev = r.u32().map_err(mal)?;
                r.skip(8).map_err(mal)?;
                let name = r.name().map_err(mal)?;
                let parent_node = self.node_fd(h.nodeid)?;
                let parent = parent_node.fd();
                self.room_for_node()?;
                let res = {
                    let _ids = self.as_caller(h);
                    self.mknod(parent, name, mode, rdev)
                };
                self.finish_new(h, parent, name, res, resent, w)?;
            }
            op::MKDIR => {
                let mode = r.u32().map_err(mal)?;
                r.u32().map_err(mal)?;
                let name = r.name().map_err(mal)?;
                let parent_node = self.node_fd(h.nodeid)?;
                let parent = parent_node.fd();
                self.room_for_node()?;
                let res = {
                    let _ids = self.as_caller(h);
                    sys::mkdirat(parent, name, mode & 0o7777)
                };
                self.finish_new(h, parent, name, res, resent, w)?;
            }
            op::UNLINK | op::RMDIR => {
                let name = r.name().map_err(mal)?;
                let parent_node = self.node_fd(h.nodeid)?;
                let parent = parent_node.fd();
                let flags = if h.opcode == op::RMDIR {
                    libc::AT_REMOVEDIR
                } else {
                    0
                };
                self.pin_if_named(h.nodeid, parent, name);
                match sys::unlinkat(parent, name, flags) {
                    Ok(()) => {}
                    Err(libc::ENOENT) if resent => {}
                    Err(e) => return Err(e),
                }
            }
            op::RENAME | op::RENAME2 => {
                let newdir = r.u64().map_err(mal)?;
                let flags = if h.opcode == op::RENAME2 {
                    let f = r.u32().map_err(mal)?;
                    r.u32().map_err(mal)?;
                    f
                } else {
                    0
                };
                let old = r.name().map_err(mal)?;
                let new = r.name().map_err(mal)?;
                let od_node = self.node_fd(h.nodeid)?;
                let od = od_node.fd();
                let nd_node = self.node_fd(newdir)?;
                let nd = nd_node.fd();
                if flags & libc::RENAME_EXCHANGE != 0 {
                    if resent && self.exchange_already_done(h, od, old) {
                        return Ok(Done::Reply);
                    }
                    if let (Some(e), Ok(a), Ok(b)) = (
                        self.sh.journal(idx),
                        sys::statat(od, old),
                        sys::statat(nd, new),
                    ) {
                        e[2].store(a.st_ino, Ordering::Relaxed);
                        e[3].store(b.st_ino, Ordering::Release);
                    }
                } else {
                    self.pin_if_named(newdir, nd, new);
                }
                match sys::renameat2(od, old, nd, new, flags) {
                    Ok(()) => {}
                    Err(libc::ENOENT) if resent && sys::statat(nd, new).is_ok() => {}
                    Err(e) => return Err(e),
                }
                self.renamed((h.nodeid, od, old), (newdir, nd, new));
                if flags & libc::RENAME_EXCHANGE != 0 {
                    self.renamed((newdir, nd, new), (h.nodeid, od, old));
                }
            }
            op::LINK => {
                let old = r.u64().map_err(mal)?;
                let name = r.name().map_err(mal)?;
                let ofd_node = self.node_fd(old)?;
                let ofd = ofd_node.fd();
                let parent_node = self.node_fd(h.nodeid)?;
                let parent = parent_node.fd();
                let src = FdName::new(b"", ofd);
                let res = sys::linkat(
                    self.proc_fd,
                    src.cstr(),
                    parent,
                    name,
                    libc::AT_SYMLINK_FOLLOW,
                );
                match res {
                    Ok(()) => {}
                    Err(libc::EEXIST) if resent => {}
                    Err(e) => return Err(e),
                }
                let (id, attr) = self.lookup(h.nodeid, parent, name)?;
                abi::encode_entry(w, id, 0, self.ttl, &attr);
            }
            op::OPEN => {
                let flags = r.u32().map_err(mal)? as i32;
                let kill = r.u32().map_err(mal)? & abi::open_in::KILL_SUIDGID != 0;
                let fd_node = self.node_fd(h.nodeid)?;
                let fd = fd_node.fd();
                let setid = if flags & libc::O_TRUNC != 0 {
                    self.setid_bits(fd)
                } else {
                    0
                };
                let (file, st) = self.reopen_stat(fd, self.file_flags(flags), libc::S_IFREG)?;
                self.settle_setid_bits(h.nodeid, h.gid, file.as_raw_fd(), setid, kill);
                self.open_reply(w, h.nodeid, file, flags, st.st_mode)?;
            }
            op::CREATE => {
                let flags = r.u32().map_err(mal)? as i32;
                let mode = r.u32().map_err(mal)?;
                r.skip(4).map_err(mal)?; // umask: applied by the kernel
                let kill = r.u32().map_err(mal)? & abi::open_in::KILL_SUIDGID != 0;
                let name = r.name().map_err(mal)?;
                let parent_node = self.node_fd(h.nodeid)?;
                let parent = parent_node.fd();
                self.room_for_node()?;
                // A CREATE may find the file there (a race with another creator, or a
                // resent CREATE) and truncate it: its set-id bits then end as an OPEN
                // with O_TRUNC leaves them.
                let existing = match flags & libc::O_TRUNC {
                    0 => None,
                    _ => sys::statat(parent, name).ok(),
                };
                let mut oflags =
                    self.file_flags(flags) | libc::O_CREAT | libc::O_NOFOLLOW | libc::O_NONBLOCK;
                if resent {
                    oflags &= !libc::O_EXCL;
                }
                let file = {
                    let _ids = self.as_caller(h);
                    sys::openat(parent, name, oflags, mode & 0o7777)?
                };
                let st = sys::fstat(file.as_raw_fd())?;
                if st.st_mode & libc::S_IFMT != libc::S_IFREG {
                    return Err(libc::EIO);
                }
                let (uid, gid) = self.owner(h, parent)?;
                if st.st_uid != uid || st.st_gid != gid {
                    sys::chownat(file.as_raw_fd(), c"", uid, gid)?;
                }
                let (id, mut attr) = self.lookup(h.nodeid, parent, name)?;
                let mut st_mode = st.st_mode;
                if let Some(old) = existing {
                    let setid = old.st_mode & 0o6000;
                    if setid != 0 && (old.st_dev, old.st_ino) == (st.st_dev, st.st_ino) {
                        let fd = file.as_raw_fd();
                        self.settle_setid_bits(id, h.gid, fd, old.st_mode & 0o7777, kill);
                        if let Ok(now) = sys::fstat(fd) {
                            st_mode = now.st_mode;
                            attr.mode = (attr.mode & !0o7777) | (now.st_mode & 0o7777);
                        }
                    }
                }
                abi::encode_entry(w, id, 0, self.ttl, &attr);
                if let Err(e) = self.open_reply(w, id, file, flags, st_mode) {
                    self.forget(id, 1);
                    return Err(e);
                }
            }
            op::READ => {
                let fh = r.u64().map_err(mal)?;
                let off = r.u64().map_err(mal)?;
                let size = (r.u32().map_err(mal)?).min(MAX_WRITE) as usize;
                let fd = self.fh_fd(fh)?;
                let start = w.buf.len();
                w.zeros(size);
                let n = sys::pread(fd, &mut w.buf[start..], off)?;
                w.buf.truncate(start + n);
            }
            op::WRITE => {
                let fh = r.u64().map_err(mal)?;
                let off = r.u64().map_err(mal)?;
                let size = r.u32().map_err(mal)? as usize;
                let wflags = r.u32().map_err(mal)?;
                r.skip(16).map_err(mal)?;
                let data = r.bytes(size).map_err(mal)?;
                let fd = self.fh_fd(fh)?;
                let kill = wflags & abi::write_flags::KILL_SUIDGID != 0;
                let n = self.settling_setid_bits(h.nodeid, h.gid, fd, kill, || {
                    sys::pwrite(fd, data, off)
                })?;
                w.u32(n as u32).u32(0);
            }
            op::STATFS => {
                let st = sys::fstatvfs(self.root)?;
                w.u64(st.f_blocks)
                    .u64(st.f_bfree)
                    .u64(st.f_bavail)
                    .u64(st.f_files)
                    .u64(st.f_ffree)
                    .u32(st.f_bsize as u32)
                    .u32(st.f_namemax as u32)
                    .u32(st.f_frsize as u32)
                    .u32(0)
                    .zeros(24);
            }
            op::RELEASE => {
                let fh = r.u64().map_err(mal)?;
                let stamp = match self.fh_fd(fh) {
                    Ok(fd) => self
                        .sh
                        .entry(fd)
                        .map_or(0, |e| e[2].load(Ordering::Relaxed)),
                    Err(_) => return Ok(Done::Reply),
                };
                if resent && self.released_already(h, fh, stamp) {
                    return Ok(Done::Reply);
                }
                // The handle's identity, for a resent copy of this request (above).
                if let Some(e) = self.sh.journal(idx) {
                    e[2].store(fh, Ordering::Relaxed);
                    e[3].store(stamp, Ordering::Release);
                }
                self.release(fh);
            }
            op::FSYNC => {
                let fh = r.u64().map_err(mal)?;
                let flags = r.u32().map_err(mal)?;
                let fd = self.fh_fd(fh)?;
                sys::fsync(fd, flags & 1 != 0)?;
            }
            op::FSYNCDIR => {
                // No handle (no OPENDIR): the directory by its node.
                let _fh = r.u64().map_err(mal)?;
                let flags = r.u32().map_err(mal)?;
                let node = self.node_fd(h.nodeid)?;
                let dir =
                    self.reopen(node.fd(), libc::O_RDONLY | libc::O_DIRECTORY, libc::S_IFDIR)?;
                sys::fsync(dir.as_raw_fd(), flags & 1 != 0)?;
            }
            op::SETXATTR => {
                let size = r.u32().map_err(mal)? as usize;
                let flags = r.u32().map_err(mal)? as i32;
                let name = r.cstr().map_err(mal)?;
                let value = r.bytes(size).map_err(mal)?;
                if reserved_xattr(name.to_bytes()) {
                    return Err(libc::EPERM);
                }
                let node = self.xattr_fd(h.nodeid)?;
                self.xset(node.fd(), name, value, flags)?;
            }
            op::GETXATTR => {
                let size = r.u32().map_err(mal)? as usize;
                r.u32().map_err(mal)?;
                let name = r.cstr().map_err(mal)?;
                if reserved_xattr(name.to_bytes()) {
                    return Err(libc::ENODATA);
                }
                let node = match self.xattr_fd(h.nodeid) {
                    Ok(node) => node,
                    Err(libc::EPERM) => return Err(libc::ENODATA),
                    Err(e) => return Err(e),
                };
                let fd = node.fd();
                if size == 0 {
                    let n = self.xget(fd, name, &mut [])?;
                    w.u32(n as u32).u32(0);
                } else {
                    let start = w.buf.len();
                    w.zeros(size.min(1 << 16));
                    let n = self.xget(fd, name, &mut w.buf[start..])?;
                    w.buf.truncate(start + n);
                }
            }
            op::LISTXATTR => {
                let size = r.u32().map_err(mal)? as usize;
                let node = match self.xattr_fd(h.nodeid) {
                    Ok(node) => node,
                    Err(libc::EPERM) => {
                        if size == 0 {
                            w.u32(0).u32(0);
                        }
                        return Ok(Done::Reply);
                    }
                    Err(e) => return Err(e),
                };
                let mut list = vec![0u8; 1 << 16];
                let n = self.xlist(node.fd(), &mut list)?;
                let mut out = Vec::with_capacity(n);
                for name in list[..n].split(|&c| c == 0).filter(|s| !s.is_empty()) {
                    if !reserved_xattr(name) {
                        out.extend_from_slice(name);
                        out.push(0);
                    }
                }
                if size == 0 {
                    w.u32(out.len() as u32).u32(0);
                } else if out.len() > size {
                    return Err(libc::ERANGE);
                } else {
                    w.bytes(&out);
                }
            }
            op::REMOVEXATTR => {
                let name = r.cstr().map_err(mal)?;
                if reserved_xattr(name.to_bytes()) {
                    return Err(libc::ENODATA);
                }
                let node = self.xattr_fd(h.nodeid)?;
                self.xremove(node.fd(), name)?;
            }
            op::FLUSH | op::ACCESS => return Err(libc::ENOSYS),
            op::INIT => return Err(libc::EIO),
            // The kernel then opens directories without asking and caches their
            // listings itself; READDIR comes by node (crate::listing).
            op::OPENDIR => return Err(libc::ENOSYS),
            op::READDIR | op::READDIRPLUS => {
                let _fh = r.u64().map_err(mal)?;
                let off = r.u64().map_err(mal)?;
                let size = r.u32().map_err(mal)? as usize;
                let fd = self.take_stream(h.nodeid, off)?;
                let res = self.readdir(
                    h.nodeid,
                    fd,
                    off,
                    size.min(BUF_LEN),
                    h.opcode == op::READDIRPLUS,
                    w,
                    dents,
                );
                self.put_stream(fd, res.as_ref().ok().copied().flatten());
                res?;
            }
            op::FALLOCATE => {
                let fh = r.u64().map_err(mal)?;
                let off = r.u64().map_err(mal)?;
                let len = r.u64().map_err(mal)?;
                let mode = r.u32().map_err(mal)? as i32;
                let fd = self.fh_fd(fh)?;
                // The kernel leaves set-id bits to the server here too but, unlike for
                // WRITE, says nothing of the caller's CAP_FSETID: root keeps them.
                self.settling_setid_bits(h.nodeid, h.gid, fd, h.uid != 0, || {
                    sys::fallocate(fd, mode, off, len)
                })?;
            }
            op::LSEEK => {
                let fh = r.u64().map_err(mal)?;
                let off = r.u64().map_err(mal)? as i64;
                let whence = r.u32().map_err(mal)? as i32;
                let pos = sys::lseek(self.fh_fd(fh)?, off, whence)?;
                w.u64(pos as u64);
            }
            op::COPY_FILE_RANGE => {
                let fh_in = r.u64().map_err(mal)?;
                let off_in = r.u64().map_err(mal)?;
                let node_out = r.u64().map_err(mal)?;
                let fh_out = r.u64().map_err(mal)?;
                let off_out = r.u64().map_err(mal)?;
                let len = r.u64().map_err(mal)?.min(COPY_CHUNK) as usize;
                let flags = r.u64().map_err(mal)? as u32;
                let (fd_in, out) = (self.fh_fd(fh_in)?, self.fh_fd(fh_out)?);
                // As for FALLOCATE: no word on the caller's CAP_FSETID here.
                let n = self.settling_setid_bits(node_out, h.gid, out, h.uid != 0, || {
                    sys::copy_file_range(fd_in, off_in, out, off_out, len, flags)
                })?;
                w.u32(n as u32).u32(0);
            }
            op::SYNCFS => sys::syncfs(self.root)?,
            op::INTERRUPT => return Ok(Done::NoReply),
            op::DESTROY => return Ok(Done::Destroy),
            _ => return Err(libc::ENOSYS),
        }
        Ok(Done::Reply)
    }

    // ----- node and handle table -----

    /// The descriptor of a node for one request: the root's, a descriptor node's own, or
    /// a cold node opened by name (ESTALE when the name no longer names its inode).
    fn node_fd(&self, nodeid: u64) -> SysResult<NodeFd> {
        if nodeid == abi::ROOT_ID {
            return Ok(NodeFd::Held(self.root));
        }
        match NodeRef::of(nodeid).ok_or(libc::ESTALE)? {
            NodeRef::Hot(fd) if fd != self.root && self.sh.kind(fd) == kind::NODE => {
                Ok(NodeFd::Held(fd))
            }
            NodeRef::Hot(_) => Err(libc::ESTALE),
            NodeRef::Cold(i) => self.open_cold(i),
        }
    }

    /// Opens cold node `i`: walks up its recorded parents to the nearest node with a
    /// descriptor (or pin), then opens each name beneath it with O_NOFOLLOW, checking
    /// that every step is still the inode it was recorded as.
    fn open_cold(&self, i: usize) -> SysResult<NodeFd> {
        // (name with its NUL, st_ino, st_dev, file type) from the node up.
        let mut chain: Vec<(std::ffi::CString, u64, u64, u64)> = Vec::new();
        let mut buf = [0u8; cold::NAME_MAX];
        let mut at = i;
        let base = loop {
            let e = match self.sh.cold_entry(at) {
                Some(e) if self.sh.cold_kind(at) == kind::NODE => e,
                _ => return Err(libc::ESTALE),
            };
            let (dev, ino) = shared::inode_key(e);
            let ftype = e[cold::TYPE].load(Ordering::Relaxed);
            let pin = e[cold::PIN].load(Ordering::Acquire);
            if pin != 0 && self.sh.kind((pin - 1) as RawFd) == kind::PIN {
                break NodeFd::Held((pin - 1) as RawFd);
            }
            let (parent, len) = self.sh.cold_name(at, &mut buf);
            let name = &buf[..len];
            // One component, as LOOKUP accepted it (the table is Porta's own memory; this
            // only keeps a damaged entry from walking anywhere).
            if len == 0
                || name == b"."
                || name == b".."
                || name.contains(&b'/')
                || chain.len() >= MAX_COLD_CHAIN
            {
                return Err(libc::ESTALE);
            }
            let cname = std::ffi::CString::new(name).map_err(|_| libc::ESTALE)?;
            chain.push((cname, ino, dev, ftype));
            match NodeRef::of(parent) {
                Some(NodeRef::Cold(p)) => at = p,
                _ => break self.node_fd(parent)?,
            }
        };
        let mut cur = base;
        for (cname, ino, dev, ftype) in chain.iter().rev() {
            let fd = match sys::openat(cur.fd(), cname, libc::O_PATH | libc::O_NOFOLLOW, 0) {
                Ok(fd) => fd,
                Err(libc::ENOENT) | Err(libc::ENOTDIR) => return Err(libc::ESTALE),
                Err(e) => return Err(e),
            };
            let st = sys::fstat(fd.as_raw_fd())?;
            // Inode numbers can be reused at once: the type is checked too (a file
            // replaced from the host by a symlink with its number is not served).
            if st.st_ino != *ino
                || st.st_dev != *dev
                || u64::from(st.st_mode & libc::S_IFMT) != *ftype
            {
                return Err(libc::ESTALE);
            }
            cur = NodeFd::Opened(fd);
        }
        Ok(cur)
    }

    /// The table entry of a node (the root's included).
    fn node_entry(&self, nodeid: u64) -> Option<&[std::sync::atomic::AtomicU64]> {
        if nodeid == abi::ROOT_ID {
            return self.sh.entry(self.root);
        }
        self.sh.node_entry(nodeid)
    }

    fn nodeid(&self, fd: RawFd) -> u64 {
        if fd == self.root {
            abi::ROOT_ID
        } else {
            NodeRef::Hot(fd).id()
        }
    }

    fn fh_fd(&self, fh: u64) -> SysResult<RawFd> {
        if fh > i32::MAX as u64 {
            return Err(libc::EBADF);
        }
        let fd = fh as RawFd;
        match self.sh.kind(fd) {
            kind::FILE => Ok(fd),
            _ => Err(libc::EBADF),
        }
    }

    /// Looks `name` up beneath `parent` (node `parent_id`; one component, never
    /// following a symlink) and returns its node id (its lookup count raised by one) and
    /// attributes. A new node gets a descriptor while the table is below its high-water
    /// mark (a directory: below its maximum), else it is cold.
    fn lookup(&self, parent_id: u64, parent: RawFd, name: &CStr) -> SysResult<(u64, Attr)> {
        let may_be_cold = self.sh.cold_capacity() > 0 && name.to_bytes().len() <= cold::NAME_MAX;
        if !may_be_cold || self.sh.live() < self.budget.high {
            return self.lookup_hot(parent_id, parent, name);
        }
        let st = sys::statat(parent, name)?;
        if st.st_mode & libc::S_IFMT == libc::S_IFDIR && self.sh.live() < self.budget.max {
            return self.lookup_hot(parent_id, parent, name);
        }
        let key = (st.st_dev, st.st_ino);
        let mut nodes = self.inodes.lock().map_err(|_| libc::EIO)?;
        let id = match self.counted_again(&nodes, key, parent_id, name) {
            Some(id) => id,
            None => {
                if self.sh.cold_live() >= self.cold_budget.max {
                    drop(nodes);
                    self.evict.request();
                    if self.sh.live() < self.budget.max {
                        return self.lookup_hot(parent_id, parent, name);
                    }
                    tracing::debug!(cold = self.sh.cold_live(), "node tables full: ENFILE");
                    return Err(libc::ENFILE);
                }
                let i = match nodes.cold_free.pop() {
                    Some(i) => i,
                    None if nodes.cold_next < self.sh.cold_capacity() => {
                        nodes.cold_next += 1;
                        nodes.cold_next - 1
                    }
                    None => return Err(libc::ENFILE),
                };
                let ftype = st.st_mode & libc::S_IFMT;
                if !self.sh.cold_publish(
                    i,
                    1,
                    st.st_ino,
                    st.st_dev,
                    ftype,
                    parent_id,
                    name.to_bytes(),
                ) {
                    nodes.cold_free.push(i);
                    return Err(libc::ENFILE);
                }
                let id = NodeRef::Cold(i).id();
                if let Some(e) = self.sh.cold_entry(i) {
                    e[shared::LAST_USE].store(self.sh.next_epoch(), Ordering::Relaxed);
                }
                self.sh.dev_index(st.st_dev);
                nodes.by_inode.insert(key, id);
                if self.sh.cold_live() > self.cold_budget.high {
                    self.evict.request();
                }
                id
            }
        };
        drop(nodes);
        Ok((id, self.attr_at(parent, name, &st)))
    }

    /// When backing inode `key` already has a node: counts one more lookup of it, stamps
    /// it as used, records `name` in `parent_id` as its name if it is cold (the name the
    /// kernel last found it under), and returns its id. Called with the node lock held.
    fn counted_again(
        &self,
        nodes: &Inodes,
        key: (u64, u64),
        parent_id: u64,
        name: &CStr,
    ) -> Option<u64> {
        let id = *nodes.by_inode.get(&key)?;
        let e = self.node_entry(id)?;
        e[1].fetch_add(1, Ordering::AcqRel);
        let now = self.sh.epoch();
        if e[shared::LAST_USE].load(Ordering::Relaxed) != now {
            e[shared::LAST_USE].store(now, Ordering::Relaxed);
        }
        if let Some(NodeRef::Cold(i)) = NodeRef::of(id) {
            self.sh.cold_set_name(i, parent_id, name.to_bytes());
        }
        Some(id)
    }

    /// [`Fs::lookup`] for a node with a descriptor of its own.
    fn lookup_hot(&self, parent_id: u64, parent: RawFd, name: &CStr) -> SysResult<(u64, Attr)> {
        if self.sh.live() >= self.budget.max {
            self.wait_for_room();
        }
        let fd = sys::openat(parent, name, libc::O_PATH | libc::O_NOFOLLOW, 0)?;
        let st = sys::fstat(fd.as_raw_fd())?;
        let key = (st.st_dev, st.st_ino);
        let mut nodes = self.inodes.lock().map_err(|_| libc::EIO)?;
        let id = match self.counted_again(&nodes, key, parent_id, name) {
            Some(id) => id,
            None => {
                if self.sh.live() >= self.budget.max {
                    // Everything the budget allows is in use (or eviction lags behind):
                    // refuse this node rather than the descriptors open files need.
                    self.evict.request();
                    tracing::debug!(live = self.sh.live(), "node table full: ENFILE");
                    return Err(libc::ENFILE);
                }
                let raw = fd.into_raw_fd();
                if raw == self.root || !self.sh.publish(raw, kind::NODE, 1, st.st_ino, st.st_dev) {
                    sys::close(raw);
                    return Err(libc::ENFILE);
                }
                self.sh.touch(raw, self.sh.next_epoch());
                self.sh.dev_index(st.st_dev);
                if self.sh.fd_table_filling(raw) {
                    self.evict.request();
                }
                let id = self.nodeid(raw);
                nodes.by_inode.insert(key, id);
                if self.sh.live() > self.budget.high {
                    self.evict.request();
                }
                drop(nodes);
                return self.hot_found(id, raw, parent_id, name, &st);
            }
        };
        let held = match NodeRef::of(id) {
            Some(NodeRef::Hot(fd)) => fd,
            _ if id == abi::ROOT_ID => self.root,
            // A cold node found again: its attributes through the descriptor just opened.
            _ => {
                drop(nodes);
                return Ok((id, self.attr(fd.as_raw_fd(), &st)));
            }
        };
        drop(fd);
        drop(nodes);
        self.hot_found(id, held, parent_id, name, &st)
    }

    /// The end of a [`Fs::lookup_hot`]: records the name for the fallback eviction and
    /// returns the node's id and attributes.
    fn hot_found(
        &self,
        id: u64,
        fd: RawFd,
        parent_id: u64,
        name: &CStr,
        st: &libc::stat,
    ) -> SysResult<(u64, Attr)> {
        if self.evict.method() == Method::InvalEntry {
            if let Ok(mut names) = self.names.lock() {
                names.insert(id, (parent_id, name.to_bytes().into()));
            }
        }
        Ok((id, self.attr(fd, st)))
    }

    /// Attributes of `name` in `parent` from its `stat` (opening it only to read a
    /// stored device node's xattr).
    fn attr_at(&self, parent: RawFd, name: &CStr, st: &libc::stat) -> Attr {
        if may_be_fake_dev(st) {
            if let Ok(f) = sys::openat(parent, name, libc::O_PATH | libc::O_NOFOLLOW, 0) {
                return self.attr(f.as_raw_fd(), st);
            }
        }
        self.attr(-1, st)
    }

    /// Before `name` in directory node `parent_id` goes away (unlink, rmdir, or replaced
    /// by a rename): a cold node recorded under that name gets a descriptor of its own (a
    /// *pin*), so the kernel can still use it (an open file, another hard link).
    fn pin_if_named(&self, parent_id: u64, parent: RawFd, name: &CStr) {
        if self.sh.cold_live() == 0 {
            return;
        }
        let Ok(st) = sys::statat(parent, name) else {
            return;
        };
        let Ok(nodes) = self.inodes.lock() else {
            return;
        };
        let Some(&id) = nodes.by_inode.get(&(st.st_dev, st.st_ino)) else {
            return;
        };
        let (Some(NodeRef::Cold(i)), Some(e)) = (NodeRef::of(id), self.node_entry(id)) else {
            return;
        };
        if e[cold::PIN].load(Ordering::Acquire) != 0 || !self.cold_named(i, parent_id, name) {
            return;
        }
        let fd = match sys::openat(parent, name, libc::O_PATH | libc::O_NOFOLLOW, 0) {
            Ok(fd) => fd,
            Err(errno) => {
                tracing::debug!(errno, "cold node not pinned");
                return;
            }
        };
        match sys::fstat(fd.as_raw_fd()) {
            Ok(s) if s.st_ino == st.st_ino && s.st_dev == st.st_dev => {}
            _ => return,
        }
        let raw = fd.into_raw_fd();
        if !self.sh.publish(raw, kind::PIN, id, 0, 0) {
            sys::close(raw);
            return;
        }
        e[cold::PIN].store(raw as u64 + 1, Ordering::Release);
        drop(nodes);
    }

    /// After a rename of `from` (directory node id, descriptor, name) to `to`: a cold
    /// node recorded under the old name is recorded under the new one. Also right for a
    /// resent rename whose first run moved the file.
    fn renamed(&self, from: (u64, RawFd, &CStr), to: (u64, RawFd, &CStr)) {
        if self.sh.cold_live() == 0 {
            return;
        }
        let Ok(st) = sys::statat(to.1, to.2) else {
            return;
        };
        let Ok(nodes) = self.inodes.lock() else {
            return;
        };
        let Some(&id) = nodes.by_inode.get(&(st.st_dev, st.st_ino)) else {
            return;
        };
        if let Some(NodeRef::Cold(i)) = NodeRef::of(id) {
            if self.cold_named(i, from.0, from.2) {
                self.sh.cold_set_name(i, to.0, to.2.to_bytes());
            }
        }
        drop(nodes);
    }

    /// Whether cold node `i` is recorded as `name` in directory node `parent_id`.
    fn cold_named(&self, i: usize, parent_id: u64, name: &CStr) -> bool {
        let mut buf = [0u8; cold::NAME_MAX];
        let (p, len) = self.sh.cold_name(i, &mut buf);
        p == parent_id && &buf[..len] == name.to_bytes()
    }

    /// Stamps a node as used now (after each request naming it).
    fn touch(&self, nodeid: u64) {
        if let Some(e) = self.sh.node_entry(nodeid) {
            let now = self.sh.epoch();
            if e[shared::LAST_USE].load(Ordering::Relaxed) != now {
                e[shared::LAST_USE].store(now, Ordering::Relaxed);
            }
        }
    }

    /// Whether a directory listing (READDIRPLUS) may add nodes: below the high-water mark
    /// of the descriptor table or of the cold table.
    fn room_for_listing(&self) -> bool {
        self.sh.live() <= self.budget.high
            || (self.sh.cold_capacity() > 0 && self.sh.cold_live() <= self.cold_budget.high)
    }

    /// Fails with ENFILE when a new node does not fit, even after waiting briefly for
    /// the eviction.
    fn room_for_node(&self) -> SysResult<()> {
        if self.sh.cold_live() < self.cold_budget.max {
            return Ok(()); // it can be cold
        }
        if self.sh.live() >= self.budget.max && !self.wait_for_room() {
            return Err(libc::ENFILE);
        }
        Ok(())
    }

    /// Wakes the eviction and waits up to 50 ms for the table to drop below its
    /// maximum (the other request thread reads the kernel's FORGETs meanwhile). Called
    /// with no lock held.
    fn wait_for_room(&self) -> bool {
        for _ in 0..50 {
            self.evict.request();
            std::thread::sleep(Duration::from_millis(1));
            if self.sh.live() < self.budget.max {
                return true;
            }
        }
        false
    }

    /// Applies the entries of the FORGET frame with request id `unique` (from entry
    /// `first` on), noting in the shared memory which one is being applied. The kernel never
    /// resends a FORGET; the frame stays in the thread's request buffer in the shared
    /// memory until the thread reads the next request, so a server killed at any point
    /// leaves the rest to its successor ([`Fs::recover_forgets`]). At most the entry being
    /// applied at the kill is lost (a node kept too long, never one dropped too early).
    fn forget_logged(&self, idx: usize, unique: u64, entries: &[(u64, u64)], first: usize) {
        let progress = self.sh.forget_log(idx);
        if let Some(p) = progress {
            p[forget_log::STARTED].store(first as u64, Ordering::Relaxed);
            p[forget_log::UNIQUE].store(unique, Ordering::Release);
        }
        for (k, (id, n)) in entries.iter().enumerate().skip(first) {
            self.inject_forget_fault();
            if let Some(p) = progress {
                p[forget_log::STARTED].store(k as u64 + 1, Ordering::Release);
            }
            self.forget(*id, *n);
        }
    }

    /// Rebuilds the (device, inode) -> node index, the free cold entries and the idle
    /// listing streams from the shared tables, recounts the entries in use, then opens
    /// `indexed`. Runs once, on the eviction thread, while the request threads already
    /// serve what needs none of it ([`index_free`]): none of those changes the tables.
    fn rebuild_index(&self) {
        let sh = self.sh;
        let mut map =
            InodeMap::with_capacity_and_hasher(sh.live() + sh.cold_live(), Default::default());
        let mut streams = Streams::default();
        // Open files per node (see `Fs::open_io`), recounted from the handles in the table.
        let mut opens: HashMap<u64, u64> = HashMap::new();
        for fd in 0..sh.scan_end() {
            let Some(e) = sh.entry(fd) else { break };
            match sh.kind(fd) {
                kind::FILE if self.passthrough => {
                    let one = match e[3].load(Ordering::Relaxed) & shared::FILE_SERVED {
                        0 => 1,
                        _ => shared::SERVED_OPEN,
                    };
                    *opens.entry(e[1].load(Ordering::Relaxed)).or_default() += one;
                }
                kind::STREAM => streams.add(
                    fd,
                    shared::inode_key(e),
                    e[4].load(Ordering::Relaxed),
                    false,
                ),
                kind::NODE => {
                    let id = if fd == self.root {
                        abi::ROOT_ID
                    } else {
                        NodeRef::Hot(fd).id()
                    };
                    map.insert(shared::inode_key(e), id);
                }
                _ => {}
            }
        }
        let cold_next = sh.cold_scan_end();
        let mut cold_free = Vec::new();
        let cold_live = sh.cold_recount(|i, e| match e {
            Some(e) => {
                map.insert(shared::inode_key(e), NodeRef::Cold(i).id());
            }
            None => cold_free.push(i),
        });
        cold_free.reverse();
        if self.passthrough {
            for &id in map.values() {
                if let Some(e) = sh.node_entry(id) {
                    e[5].store(opens.get(&id).copied().unwrap_or(0), Ordering::Release);
                }
            }
        }
        let live = sh.recount();
        let indexed = map.len();
        {
            let mut nodes = self.inodes.lock().unwrap_or_else(|p| p.into_inner());
            *nodes = Inodes {
                by_inode: map,
                cold_free,
                cold_next,
            };
        }
        *self.lock_streams() = streams;
        self.indexed.open();
        tracing::debug!(live, cold_live, indexed, budget = ?self.budget, cold_budget = ?self.cold_budget, "node index rebuilt");
    }

    /// Finishes the FORGET frames killed predecessors had read but not applied (found in
    /// the threads' request buffers); returns how many entries. Runs before any request
    /// thread starts.
    fn recover_forgets(&self) -> usize {
        let mut total = 0;
        for i in 0..hdr::MAX_SLOTS {
            let Some(progress) = self.sh.forget_log(i) else {
                continue;
            };
            // SAFETY: no request thread runs yet; the slice is dropped at the end of
            // this iteration, before any other slice of this buffer is taken.
            let Some(buf) = (unsafe { self.sh.request_buf(i) }) else {
                continue;
            };
            let Some((unique, entries)) = forget_frame(buf) else {
                continue;
            };
            let first =
                if unique != 0 && progress[forget_log::UNIQUE].load(Ordering::Acquire) == unique {
                    progress[forget_log::STARTED].load(Ordering::Acquire) as usize
                } else {
                    0
                };
            if first < entries.len() {
                total += entries.len() - first;
                self.forget_logged(i, unique, &entries, first);
            }
        }
        total
    }

    fn forget(&self, nodeid: u64, n: u64) {
        let node = match NodeRef::of(nodeid) {
            Some(NodeRef::Hot(fd)) if fd == self.root => return,
            Some(node) => node,
            None => return,
        };
        let Ok(mut nodes) = self.inodes.lock() else {
            return;
        };
        let Some(e) = self.sh.node_entry(nodeid) else {
            return;
        };
        let left = e[1].load(Ordering::Acquire).saturating_sub(n);
        if left > 0 {
            e[1].store(left, Ordering::Release);
            return;
        }
        let key = shared::inode_key(e);
        if nodes.by_inode.get(&key) == Some(&nodeid) {
            nodes.by_inode.remove(&key);
        }
        if self.evict.method() == Method::InvalEntry {
            if let Ok(mut names) = self.names.lock() {
                names.remove(&nodeid);
            }
        }
        self.drop_backing(e);
        match node {
            NodeRef::Hot(fd) => {
                self.sh.free(fd);
                sys::close(fd);
            }
            NodeRef::Cold(i) => {
                let pin = e[cold::PIN].swap(0, Ordering::AcqRel);
                if pin != 0 && self.sh.kind((pin - 1) as RawFd) == kind::PIN {
                    self.sh.free((pin - 1) as RawFd);
                    sys::close((pin - 1) as RawFd);
                }
                self.sh.cold_free(i);
                nodes.cold_free.push(i);
            }
        }
    }

    // ----- eviction (see crate::evict) -----

    /// The eviction thread: waits to be woken (a LOOKUP took the table above the
    /// high-water mark) or for a second to pass, then asks the kernel to drop the least
    /// recently used unused nodes. It never handles a request, so a notification that
    /// waits for a directory lock the kernel holds for a request in progress cannot
    /// block that request's thread.
    fn evict_loop(&self) {
        let mut victims = Vec::new();
        let mut w = Writer::default();
        let mut idle_backoff = Duration::from_millis(10);
        while !self.evict.stopped() {
            std::thread::park_timeout(Duration::from_secs(1));
            if self.evict.stopped() {
                return;
            }
            self.evict.take_request();
            self.grow_fd_table();
            if self.over(false) == (0, 0) || self.evict.method() == Method::Off {
                continue;
            }
            let before = (self.sh.live(), self.sh.cold_live());
            let freed = self.evict_pass(&mut victims, &mut w);
            let after = (self.sh.live(), self.sh.cold_live());
            tracing::debug!(?before, ?after, freed, "node eviction pass");
            if freed == 0 {
                // What is left is in use (open, a working directory, a mount point...):
                // do not spin on it.
                if idle_backoff == Duration::from_millis(10) {
                    tracing::warn!(
                        live = after.0,
                        high = self.budget.high,
                        cold = after.1,
                        cold_high = self.cold_budget.high,
                        "node table above its high-water mark and nothing to evict"
                    );
                }
                std::thread::sleep(idle_backoff);
                idle_backoff = (idle_backoff * 2).min(Duration::from_secs(1));
            } else {
                idle_backoff = Duration::from_millis(10);
            }
        }
    }

    /// Grows the shared fd table to four times its size (at most the descriptor limit)
    /// once the highest descriptor in use is in its last quarter. Growing a shared table
    /// waits for an RCU grace period (tens of milliseconds here); this thread waits it
    /// out, while request threads go on with the free descriptors below the old size.
    fn grow_fd_table(&self) {
        let table = self.sh.hdr(hdr::FD_TABLE).load(Ordering::Relaxed) as usize;
        let high = self.sh.hdr(hdr::HIGH).load(Ordering::Relaxed) as usize;
        let limit = self.budget.limit;
        if table == 0 || table >= limit || high * 4 < table * 3 {
            return;
        }
        let want = (table * 4).min(limit);
        match sys::grow_fd_table(self.root, want) {
            Ok(()) => {
                self.sh
                    .hdr(hdr::FD_TABLE)
                    .store(want as u64, Ordering::Relaxed);
                tracing::debug!(table, want, "descriptor table grown ahead");
            }
            Err(e) => {
                // Do not try again: the table then grows on demand, as without this.
                self.sh.hdr(hdr::FD_TABLE).store(0, Ordering::Relaxed);
                tracing::debug!(errno = e, want, "descriptor table not grown ahead");
            }
        }
    }

    /// How many nodes of each table (descriptors, cold) an eviction should drop now:
    /// above the high-water mark down to the low-water mark (`started`: a pass is under
    /// way and goes on down to it). With a cold table, new nodes go cold instead, and
    /// nodes with descriptors are only evicted when open files have taken half of the
    /// reserve above the maximum, and then down to the high-water mark.
    fn over(&self, started: bool) -> (usize, usize) {
        let live = self.sh.live();
        let b = &self.budget;
        if self.sh.cold_capacity() == 0 {
            let trigger = if started { b.low } else { b.high };
            return (if live > trigger { live - b.low } else { 0 }, 0);
        }
        let trigger = if started {
            b.high
        } else {
            b.max + (b.limit - b.max) / 2
        };
        let hot = if live > trigger { live - b.high } else { 0 };
        let cold_live = self.sh.cold_live();
        let c = &self.cold_budget;
        let trigger = if started { c.low } else { c.high };
        let cold = if cold_live > trigger {
            cold_live - c.low
        } else {
            0
        };
        (hot, cold)
    }

    /// Up to a few rounds of: pick the oldest unused nodes, notify, wait for the
    /// kernel's FORGETs. Nodes that survive a round (the kernel still uses them) are
    /// stamped as used, so they do not stand first in line again. Returns how many
    /// victims went.
    fn evict_pass(&self, victims: &mut Vec<(u64, u64)>, w: &mut Writer) -> usize {
        let mut freed = 0;
        let mut inos = Vec::new();
        for _ in 0..8 {
            let (hot, cold) = self.over(true);
            if hot + cold == 0 || self.evict.stopped() {
                break;
            }
            evict::victims(&self.sh, self.root, hot, cold, victims);
            if victims.is_empty() {
                break;
            }
            // A victim's entry may be reused by a new node once it is forgotten:
            // survivors are told by their inode number.
            inos.clear();
            inos.extend(victims.iter().map(|&(_, id)| self.ino_of(id)));
            match self.evict.method() {
                Method::Prune => self.send_prune(victims, w),
                Method::InvalEntry => self.send_inval(victims, w),
                Method::Off => break,
            }
            // The FORGETs come in through the request threads: wait while the count
            // goes down (new lookups may be adding nodes meanwhile).
            let count = || self.sh.live() + self.sh.cold_live();
            let target = count().saturating_sub(victims.len());
            let mut last = count();
            let mut flat = 0;
            for _ in 0..100 {
                std::thread::sleep(Duration::from_millis(1));
                let now = count();
                if now <= target {
                    break;
                }
                flat = if now < last { 0 } else { flat + 1 };
                if flat >= 3 {
                    break;
                }
                last = now;
            }
            let now = self.sh.epoch();
            let mut survivors = 0;
            for (&(_, id), &ino) in victims.iter().zip(inos.iter()) {
                if self.ino_of(id) == ino {
                    if let Some(e) = self.sh.node_entry(id) {
                        e[shared::LAST_USE].store(now, Ordering::Relaxed);
                    }
                    survivors += 1;
                }
            }
            freed += victims.len() - survivors;
        }
        freed
    }

    /// The inode number of node `id` (0 when it is not a node).
    fn ino_of(&self, id: u64) -> u64 {
        self.sh
            .node_entry(id)
            .map_or(0, |e| e[2].load(Ordering::Relaxed))
    }

    fn send_prune(&self, victims: &[(u64, u64)], w: &mut Writer) {
        let mut ids = [0u64; 512];
        for chunk in victims.chunks(ids.len()) {
            for (i, &(_, id)) in chunk.iter().enumerate() {
                ids[i] = id;
            }
            abi::encode_prune(w, &ids[..chunk.len()]);
            match sys::write(self.fuse, &w.buf) {
                Ok(_) => {}
                Err(libc::ENODEV) => return,
                Err(e) => {
                    tracing::warn!(errno = e, "FUSE_NOTIFY_PRUNE failed; invalidating names");
                    self.evict.set_method(Method::InvalEntry);
                    return;
                }
            }
        }
    }

    /// The fallback: drops the dentry of each victim's last known name (a cold node's
    /// recorded one). Only for non-directories whose name still names them:
    /// invalidating a directory entry would also prune its subtree and detach mounts
    /// beneath it.
    fn send_inval(&self, victims: &[(u64, u64)], w: &mut Writer) {
        let mut buf = [0u8; cold::NAME_MAX];
        for &(_, id) in victims {
            let rec = match NodeRef::of(id) {
                Some(NodeRef::Cold(i)) => {
                    let (parent, len) = self.sh.cold_name(i, &mut buf);
                    (len > 0).then(|| (parent, Box::<[u8]>::from(&buf[..len])))
                }
                _ => match self.names.lock() {
                    Ok(names) => names.get(&id).cloned(),
                    Err(_) => return,
                },
            };
            let Some((parent_id, name)) = rec else {
                continue;
            };
            let Some(e) = self.sh.node_entry(id) else {
                continue;
            };
            let (dev, ino) = shared::inode_key(e);
            let Ok(parent) = self.node_fd(parent_id) else {
                continue;
            };
            let mut cname = name.to_vec();
            cname.push(0);
            let Ok(c) = CStr::from_bytes_with_nul(&cname) else {
                continue;
            };
            match sys::statat(parent.fd(), c) {
                Ok(st)
                    if st.st_ino == ino
                        && st.st_dev == dev
                        && st.st_mode & libc::S_IFMT != libc::S_IFDIR => {}
                _ => continue,
            }
            abi::encode_inval_entry(w, parent_id, &name);
            match sys::write(self.fuse, &w.buf) {
                Ok(_) | Err(libc::ENOENT) => {}
                Err(libc::ENODEV) => return,
                Err(e) => tracing::debug!(errno = e, "FUSE_NOTIFY_INVAL_ENTRY failed"),
            }
        }
    }

    /// Closes file handle `fh`. Its node's open count goes down after the handle left
    /// the table: a server killed in between leaves the count one too high (the node is
    /// kept, its next opens go the same way) rather than too low, and a new server
    /// recounts ([`Fs::rebuild_index`]).
    fn release(&self, fh: u64) {
        let Ok(fd) = self.fh_fd(fh) else { return };
        let node = self.sh.entry(fd).map(|e| e[1].load(Ordering::Relaxed));
        let file = self.sh.kind(fd) == kind::FILE;
        let served = self.served_in_passthrough(fd);
        self.sh.free(fd);
        sys::close(fd);
        if let (true, Some(nodeid)) = (file, node) {
            self.put_io(nodeid, served);
        }
    }

    /// The passthrough backing id of a node, registered at its first passthrough open
    /// and kept for the node's lifetime (dropped in [`Fs::forget`]): the kernel takes one
    /// backing file per inode for all of its passthrough opens and only borrows the
    /// backing file's path and credentials (each open gets its own backing file with its
    /// own flags), so later opens need no registration round trip. What is registered is
    /// a read-only reopen of the node: a writable one, held that long, would make every
    /// exec of the file fail with ETXTBSY.
    ///
    /// An open the kernel must not pass through gets `None` and is served: the kernel
    /// takes one I/O mode per inode (an open in the other mode fails with EIO while
    /// any is open), so an open goes the way the node's open files already go, and,
    /// when none is open, a file with a set-user-id or set-group-id bit is served: its
    /// writes reach the server, which clears those bits as the writer's capabilities
    /// say (`KILL_SUIDGID`); a passthrough write has the registration's credentials,
    /// without CAP_FSETID ([`sys::backing_open`]), and so clears them for any writer.
    fn open_io(&self, nodeid: u64, setid: bool) -> SysResult<Option<i32>> {
        let fd_node = self.node_fd(nodeid)?;
        let fd = fd_node.fd();
        let e = self.sh.node_entry(nodeid).ok_or(libc::ESTALE)?;
        let _g = self.inodes.lock().map_err(|_| libc::EIO)?;
        let opens = e[5].load(Ordering::Acquire);
        if opens & shared::PASSTHROUGH_OPENS == 0 && (opens > 0 || setid) {
            e[5].fetch_add(shared::SERVED_OPEN, Ordering::AcqRel);
            return Ok(None);
        }
        let id = e[4].load(Ordering::Acquire);
        if id != 0 {
            e[5].fetch_add(1, Ordering::AcqRel);
            return Ok(Some((id - 1) as i32));
        }
        let ro = self.reopen(fd, libc::O_RDONLY, libc::S_IFREG)?;
        let id = if self.backing >= 0 {
            let tag = NodeRef::of(nodeid).map_or(fd, NodeRef::tag);
            crate::backing::open(self.backing, tag, ro.as_raw_fd())?
        } else {
            sys::backing_open(self.fuse, ro.as_raw_fd())?
        };
        e[5].fetch_add(1, Ordering::AcqRel);
        e[4].store(id as u64 + 1, Ordering::Release);
        Ok(Some(id))
    }

    /// Counts one open of a node fewer: a served one (`served`) or a passthrough one. A
    /// node with a descriptor keeps its backing id registered; a cold node drops it with
    /// its last passthrough open: cold nodes are the ones past the descriptor budget, and
    /// the supervisor registers at most as many backing ids as the table has descriptors.
    fn put_io(&self, nodeid: u64, served: bool) {
        let Some(e) = self.sh.node_entry(nodeid) else {
            return;
        };
        let Ok(_g) = self.inodes.lock() else { return };
        let opens = e[5].load(Ordering::Acquire);
        let (one, mask) = if served {
            (shared::SERVED_OPEN, !shared::PASSTHROUGH_OPENS)
        } else {
            (1, shared::PASSTHROUGH_OPENS)
        };
        if opens & mask == 0 {
            return;
        }
        let left = opens - one;
        e[5].store(left, Ordering::Release);
        if !served
            && left & shared::PASSTHROUGH_OPENS == 0
            && matches!(NodeRef::of(nodeid), Some(NodeRef::Cold(_)))
        {
            self.drop_backing(e);
        }
    }

    /// Whether open file `fd` is served by the server in a passthrough connection (see
    /// [`Fs::open_io`]).
    fn served_in_passthrough(&self, fd: RawFd) -> bool {
        self.sh
            .entry(fd)
            .is_some_and(|e| e[3].load(Ordering::Relaxed) & shared::FILE_SERVED != 0)
    }

    /// Unregisters the backing id of node entry `e` (its last lookup is gone); the
    /// caller holds the `inodes` lock.
    fn drop_backing(&self, e: &[std::sync::atomic::AtomicU64]) {
        let id = e[4].swap(0, Ordering::AcqRel);
        e[5].fetch_and(!shared::PASSTHROUGH_OPENS, Ordering::Relaxed);
        if id == 0 {
            return;
        }
        let r = if self.backing >= 0 {
            crate::backing::close(self.backing, (id - 1) as i32)
        } else {
            sys::backing_close(self.fuse, (id - 1) as i32)
        };
        if let Err(errno) = r {
            tracing::debug!(errno, id = id - 1, "backing id not released");
        }
    }

    // ----- helpers -----

    /// The permission bits of `fd` when it has a set-user-id or set-group-id bit, else 0.
    fn setid_bits(&self, fd: RawFd) -> u32 {
        match sys::fstat(fd) {
            Ok(st) if st.st_mode & 0o6000 != 0 => st.st_mode & 0o7777,
            _ => 0,
        }
    }

    /// Runs `op`, a write, truncate or allocation of node `nodeid` (open as `fd`) for a
    /// caller of group `gid`, then leaves the set-id bits as the caller's own would have
    /// ([`Fs::settle_setid_bits`]); untouched when `op` fails.
    fn settling_setid_bits<T>(
        &self,
        nodeid: u64,
        gid: u32,
        fd: RawFd,
        kill: bool,
        op: impl FnOnce() -> SysResult<T>,
    ) -> SysResult<T> {
        let mode = self.setid_bits(fd);
        let r = op()?;
        self.settle_setid_bits(nodeid, gid, fd, mode, kill);
        Ok(r)
    }

    /// Leaves the set-id bits of node `nodeid` (open as `fd`) after the server's write or
    /// truncate for a caller of group `gid` as the caller's own would have: `mode` (from
    /// [`Fs::setid_bits`]) as they were before, `kill` when the kernel says the caller has
    /// no CAP_FSETID (`KILL_SUIDGID`, asked for with `HANDLE_KILLPRIV_V2`). Killed:
    /// set-user-id, and set-group-id where the group may execute or the caller's group is
    /// not the file's (the kernel's rule; supplementary groups are not known here, so a
    /// member through one loses it too); the kernel is told that the node's attributes
    /// changed (with the writeback cache it would keep showing the old mode). Kept
    /// otherwise: the server, without CAP_FSETID in the initial user namespace, has the
    /// backing file system clear them for privileged callers too.
    fn settle_setid_bits(&self, nodeid: u64, gid: u32, fd: RawFd, mode: u32, kill: bool) {
        if mode == 0 {
            return;
        }
        if let Ok(st) = sys::fstat(fd) {
            let want = if kill {
                killed_setid(mode, st.st_gid, gid)
            } else {
                mode
            };
            if st.st_mode & 0o7777 != want
                && sys::chmodat(self.proc_fd, FdName::new(b"", fd).cstr(), want).is_ok()
                && kill
            {
                let mut w = Writer::default();
                abi::encode_inval_inode(&mut w, nodeid);
                match sys::write(self.fuse, &w.buf) {
                    Ok(_) | Err(libc::ENOENT) | Err(libc::ENODEV) => {}
                    Err(e) => tracing::debug!(errno = e, "FUSE_NOTIFY_INVAL_INODE failed"),
                }
            }
        }
    }

    /// Clears the set-id bits of a device node stored as a regular file (`fd`, emulated
    /// mode `dmode`, device `rdev`) as a chown by a caller of group `gid` clears them on a
    /// real node ([`killed_setid`]): the backing file's own mode never has them.
    fn kill_fake_dev_setid(&self, fd: RawFd, dmode: u32, rdev: u32, gid: u32) -> SysResult<()> {
        if dmode & 0o6000 == 0 {
            return Ok(());
        }
        let file_gid = sys::fstat(fd)?.st_gid;
        let perm = killed_setid(dmode & 0o7777, file_gid, gid);
        let v = format!("{:o} {rdev}", (dmode & libc::S_IFMT) | perm);
        self.xset(fd, DEV_XATTR, v.as_bytes(), 0)
    }

    // Extended attributes of a node, through its entry in the /proc/self/fd directory
    // descriptor (*xattrat, Linux 6.13: works without /proc in the server's mount
    // namespace), or through the /proc/self/fd path on older kernels.

    fn xget(&self, fd: RawFd, name: &CStr, buf: &mut [u8]) -> SysResult<usize> {
        match sys::getxattrat(self.proc_fd, FdName::new(b"", fd).cstr(), name, buf) {
            Err(libc::ENOSYS) => sys::getxattr(proc_path(fd).cstr(), name, buf),
            r => r,
        }
    }

    fn xset(&self, fd: RawFd, name: &CStr, val: &[u8], flags: i32) -> SysResult<()> {
        match sys::setxattrat(self.proc_fd, FdName::new(b"", fd).cstr(), name, val, flags) {
            Err(libc::ENOSYS) => sys::setxattr(proc_path(fd).cstr(), name, val, flags),
            r => r,
        }
    }

    fn xlist(&self, fd: RawFd, buf: &mut [u8]) -> SysResult<usize> {
        match sys::listxattrat(self.proc_fd, FdName::new(b"", fd).cstr(), buf) {
            Err(libc::ENOSYS) => sys::listxattr(proc_path(fd).cstr(), buf),
            r => r,
        }
    }

    fn xremove(&self, fd: RawFd, name: &CStr) -> SysResult<()> {
        match sys::removexattrat(self.proc_fd, FdName::new(b"", fd).cstr(), name) {
            Err(libc::ENOSYS) => sys::removexattr(proc_path(fd).cstr(), name),
            r => r,
        }
    }

    fn attr(&self, fd: RawFd, st: &libc::stat) -> Attr {
        let idx = if st.st_dev == self.root_dev {
            0
        } else {
            self.sh.dev_index(st.st_dev)
        };
        let mut a = Attr {
            ino: if idx == 0 {
                st.st_ino
            } else {
                st.st_ino ^ (idx << 56)
            },
            size: st.st_size as u64,
            blocks: st.st_blocks as u64,
            atime: st.st_atime,
            mtime: st.st_mtime,
            ctime: st.st_ctime,
            atimensec: st.st_atime_nsec as u32,
            mtimensec: st.st_mtime_nsec as u32,
            ctimensec: st.st_ctime_nsec as u32,
            mode: st.st_mode,
            nlink: st.st_nlink as u32,
            uid: st.st_uid,
            gid: st.st_gid,
            rdev: st.st_rdev as u32,
            blksize: st.st_blksize as u32,
        };
        if let Some((mode, rdev)) = self.fake_dev(fd, st) {
            a.mode = mode;
            a.rdev = rdev;
            a.size = 0;
        }
        a
    }

    /// A device node stored as a regular file: sticky, empty, with the xattr.
    fn fake_dev(&self, fd: RawFd, st: &libc::stat) -> Option<(u32, u32)> {
        if !may_be_fake_dev(st) {
            return None;
        }
        let mut v = [0u8; 64];
        let n = self.xget(fd, DEV_XATTR, &mut v).ok()?;
        let s = std::str::from_utf8(&v[..n]).ok()?;
        let mut it = s.split(' ');
        let mode = u32::from_str_radix(it.next()?, 8).ok()?;
        let rdev: u32 = it.next()?.parse().ok()?;
        let t = mode & libc::S_IFMT;
        if t != libc::S_IFCHR && t != libc::S_IFBLK {
            return None;
        }
        Some((mode, rdev))
    }

    fn attr_out(&self, w: &mut Writer, attr: &Attr) {
        w.u64(self.ttl.secs).u32(self.ttl.nsecs).u32(0);
        attr.encode(w);
    }

    /// Switches the thread's file-system ids to the caller's for one creation (when
    /// enabled); the kernel then applies the set-group-id directory rule itself.
    fn as_caller(&self, h: &InHeader) -> Option<FsIds> {
        if !CREATE_AS_CALLER.load(Ordering::Relaxed) {
            return None;
        }
        let gid = sys::setfsgid(h.gid);
        let uid = sys::setfsuid(h.uid);
        Some(FsIds { uid, gid })
    }

    /// The identity a new file gets: the caller's uid, and its gid unless the parent
    /// directory is set-group-id.
    fn owner(&self, h: &InHeader, parent: RawFd) -> SysResult<(u32, u32)> {
        let pst = sys::fstat(parent)?;
        let gid = if pst.st_mode & libc::S_ISGID != 0 {
            pst.st_gid
        } else {
            h.gid
        };
        Ok((h.uid, gid))
    }

    fn finish_new(
        &self,
        h: &InHeader,
        parent: RawFd,
        name: &CStr,
        res: SysResult<()>,
        resent: bool,
        w: &mut Writer,
    ) -> SysResult<()> {
        match res {
            Ok(()) => {}
            Err(libc::EEXIST) if resent => {}
            Err(e) => return Err(e),
        }
        let (uid, gid) = self.owner(h, parent)?;
        let st = sys::statat(parent, name)?;
        if st.st_uid != uid || st.st_gid != gid {
            sys::chownat(parent, name, uid, gid)?;
        }
        let (id, attr) = self.lookup(h.nodeid, parent, name)?;
        abi::encode_entry(w, id, 0, self.ttl, &attr);
        Ok(())
    }

    fn mknod(&self, parent: RawFd, name: &CStr, mode: u32, rdev: u32) -> SysResult<()> {
        let perm = mode & 0o7777;
        match mode & libc::S_IFMT {
            libc::S_IFREG => {
                sys::openat(
                    parent,
                    name,
                    libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY | libc::O_NOFOLLOW,
                    perm,
                )?;
                Ok(())
            }
            libc::S_IFIFO | libc::S_IFSOCK => sys::mknodat(parent, name, mode, 0),
            libc::S_IFCHR | libc::S_IFBLK => {
                // No CAP_MKNOD: store the node as an empty sticky regular file + xattr.
                let f = sys::openat(
                    parent,
                    name,
                    libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY | libc::O_NOFOLLOW,
                    0o1600,
                )?;
                let fd = f.as_raw_fd();
                sys::chmodat(self.proc_fd, FdName::new(b"", fd).cstr(), 0o1600)?;
                let v = format!("{mode:o} {rdev}");
                if let Err(e) = self.xset(fd, DEV_XATTR, v.as_bytes(), 0) {
                    let _ = sys::unlinkat(parent, name, 0);
                    return Err(e);
                }
                Ok(())
            }
            _ => Err(libc::EINVAL),
        }
    }

    fn file_flags(&self, flags: i32) -> i32 {
        let mut f = flags
            & !(libc::O_CREAT | libc::O_EXCL | libc::O_NOCTTY | libc::O_APPEND | libc::O_NOFOLLOW);
        if self.writeback && f & libc::O_ACCMODE == libc::O_WRONLY {
            f = (f & !libc::O_ACCMODE) | libc::O_RDWR;
        }
        f
    }

    /// Opens the object a node descriptor names, with real access flags, through its
    /// /proc/self/fd entry (exactly that inode, no path walk), non-blocking, and checks
    /// that it is of the expected type.
    fn reopen(&self, fd: RawFd, flags: i32, want: u32) -> SysResult<OwnedFd> {
        self.reopen_stat(fd, flags, want).map(|(file, _)| file)
    }

    /// As [`Fs::reopen`], with the opened file's status.
    fn reopen_stat(&self, fd: RawFd, flags: i32, want: u32) -> SysResult<(OwnedFd, libc::stat)> {
        let st = sys::fstat(fd)?;
        if st.st_mode & libc::S_IFMT != want {
            return Err(if want == libc::S_IFDIR {
                libc::ENOTDIR
            } else if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
                libc::EISDIR
            } else {
                libc::ENXIO
            });
        }
        let file = sys::openat(
            self.proc_fd,
            FdName::new(b"", fd).cstr(),
            flags | libc::O_NONBLOCK,
            0,
        )?;
        let st2 = sys::fstat(file.as_raw_fd())?;
        if st2.st_mode & libc::S_IFMT != want || st2.st_ino != st.st_ino || st2.st_dev != st.st_dev
        {
            return Err(libc::EIO);
        }
        Ok((file, st2))
    }

    /// Publishes open `file` of node `nodeid` (mode `mode`) as a handle and writes the
    /// `fuse_open_out` for it.
    fn open_reply(
        &self,
        w: &mut Writer,
        nodeid: u64,
        file: OwnedFd,
        flags: i32,
        mode: u32,
    ) -> SysResult<()> {
        let io = if self.passthrough {
            self.open_io(nodeid, mode & 0o6000 != 0)?
        } else {
            None
        };
        let served = self.passthrough && io.is_none();
        let mark = if served { shared::FILE_SERVED } else { 0 };
        let raw = file.into_raw_fd();
        if !self.sh.publish(
            raw,
            kind::FILE,
            nodeid,
            self.sh.next_open(),
            flags as u32 as u64 | mark,
        ) {
            if self.passthrough {
                self.put_io(nodeid, served);
            }
            sys::close(raw);
            return Err(libc::ENFILE);
        }
        self.open_out(w, raw, io);
        Ok(())
    }

    /// Writes `fuse_open_out` for file handle `fh`: passthrough with backing id `io`, or
    /// served by the server (with the page cache kept across opens where no open of the
    /// file can pass through and so change the file behind it).
    fn open_out(&self, w: &mut Writer, fh: RawFd, io: Option<i32>) {
        let (flags, backing) = match io {
            Some(id) => (fopen::PASSTHROUGH, id),
            None if self.passthrough => (0, 0),
            None => (fopen::KEEP_CACHE, 0),
        };
        w.u64(fh as u64).u32(flags).i32(backing);
    }

    /// A node descriptor on which path-based xattr calls are meaningful (not a symlink).
    fn xattr_fd(&self, nodeid: u64) -> SysResult<NodeFd> {
        let node = self.node_fd(nodeid)?;
        let st = sys::fstat(node.fd())?;
        match st.st_mode & libc::S_IFMT {
            libc::S_IFLNK => Err(libc::EPERM),
            _ => Ok(node),
        }
    }

    fn setattr(&self, h: &InHeader, mut r: Reader, w: &mut Writer) -> SysResult<()> {
        let valid = r.u32().map_err(mal)?;
        r.u32().map_err(mal)?;
        let fh = r.u64().map_err(mal)?;
        let size = r.u64().map_err(mal)?;
        r.u64().map_err(mal)?;
        let atime = r.u64().map_err(mal)? as i64;
        let mtime = r.u64().map_err(mal)? as i64;
        r.u64().map_err(mal)?;
        let atimensec = r.u32().map_err(mal)?;
        let mtimensec = r.u32().map_err(mal)?;
        r.u32().map_err(mal)?;
        let mode = r.u32().map_err(mal)?;
        r.u32().map_err(mal)?;
        let uid = r.u32().map_err(mal)?;
        let gid = r.u32().map_err(mal)?;
        let fd_node = self.node_fd(h.nodeid)?;
        let fd = fd_node.fd();
        let st = sys::fstat(fd)?;
        if valid & fattr::MODE != 0 {
            if let Some((dmode, rdev)) = self.fake_dev(fd, &st) {
                let v = format!("{:o} {rdev}", (dmode & libc::S_IFMT) | (mode & 0o7777));
                self.xset(fd, DEV_XATTR, v.as_bytes(), 0)?;
            } else if st.st_mode & libc::S_IFMT != libc::S_IFLNK {
                sys::chmodat(self.proc_fd, FdName::new(b"", fd).cstr(), mode & 0o7777)?;
            }
        }
        let kill = valid & fattr::KILL_SUIDGID != 0 && valid & fattr::MODE == 0;
        if valid & (fattr::UID | fattr::GID) != 0 {
            let u = if valid & fattr::UID != 0 {
                uid
            } else {
                u32::MAX
            };
            let g = if valid & fattr::GID != 0 {
                gid
            } else {
                u32::MAX
            };
            // Without `kill` the bits stay as the backing chown left them.
            let setid = if kill { self.setid_bits(fd) } else { 0 };
            sys::chownat(fd, c"", u, g)?;
            match self.fake_dev(fd, &st) {
                // A stored device node's mode (set-id bits included) is its xattr's.
                Some((dmode, rdev)) if kill => self.kill_fake_dev_setid(fd, dmode, rdev, h.gid)?,
                Some(_) => {}
                None => self.settle_setid_bits(h.nodeid, h.gid, fd, setid, true),
            }
        }
        if valid & fattr::SIZE != 0 {
            let by_fh = if valid & fattr::FH != 0 {
                self.fh_fd(fh).ok()
            } else {
                None
            };
            self.settling_setid_bits(h.nodeid, h.gid, fd, kill, || match by_fh {
                Some(f) => sys::ftruncate(f, size),
                None => {
                    let f = self.reopen(fd, libc::O_WRONLY, libc::S_IFREG)?;
                    sys::ftruncate(f.as_raw_fd(), size)
                }
            })?;
        }
        if valid & (fattr::ATIME | fattr::MTIME) != 0 {
            let t = |set: bool, now: bool, s: i64, ns: u32| libc::timespec {
                tv_sec: if set && !now { s } else { 0 },
                tv_nsec: if !set {
                    libc::UTIME_OMIT
                } else if now {
                    libc::UTIME_NOW
                } else {
                    ns as i64
                },
            };
            let times = [
                t(
                    valid & fattr::ATIME != 0,
                    valid & fattr::ATIME_NOW != 0,
                    atime,
                    atimensec,
                ),
                t(
                    valid & fattr::MTIME != 0,
                    valid & fattr::MTIME_NOW != 0,
                    mtime,
                    mtimensec,
                ),
            ];
            sys::utimens_fd(fd, &times)?;
        }
        let st = sys::fstat(fd)?;
        let attr = self.attr(fd, &st);
        self.attr_out(w, &attr);
        Ok(())
    }

    /// The open directory to answer a READDIR of node `nodeid` at `off` with: an idle
    /// stream that goes on with this listing, or a new one.
    fn take_stream(&self, nodeid: u64, off: u64) -> SysResult<RawFd> {
        let known = self.node_entry(nodeid).map(shared::inode_key);
        if let Some(dir) = known {
            if let Some(fd) = self.lock_streams().take(dir, off) {
                return Ok(fd);
            }
        }
        let node = self.node_fd(nodeid)?;
        let dir = self.reopen(node.fd(), libc::O_RDONLY | libc::O_DIRECTORY, libc::S_IFDIR)?;
        // The node's recorded inode is the one reopened (checked by `reopen`).
        let (dev, ino) = match known {
            Some(k) => k,
            None => {
                let st = sys::fstat(dir.as_raw_fd())?;
                (st.st_dev, st.st_ino)
            }
        };
        let raw = dir.into_raw_fd();
        if !self.sh.publish(raw, kind::STREAM, nodeid, ino, dev) {
            sys::close(raw);
            return Err(libc::ENFILE);
        }
        self.lock_streams().add(raw, (dev, ino), off, true);
        Ok(raw)
    }

    /// Gives a stream back after a READDIR that ended at offset `next` (`None`: the
    /// listing is at its end, or failed, and its stream is closed).
    fn put_stream(&self, fd: RawFd, next: Option<u64>) {
        let close = match next {
            Some(next) => {
                if let Some(e) = self.sh.entry(fd) {
                    e[4].store(next, Ordering::Relaxed);
                }
                self.lock_streams().put(fd, next)
            }
            None => {
                self.lock_streams().remove(fd);
                Some(fd)
            }
        };
        if let Some(fd) = close {
            self.sh.free(fd);
            sys::close(fd);
        }
    }

    fn lock_streams(&self) -> std::sync::MutexGuard<'_, Streams> {
        // A thread that panicked holding the lock left the list consistent (no method
        // of Streams panics halfway).
        self.streams.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Lists directory node `dir_id` from its open directory `fd` at `off` into `w`;
    /// returns the offset of the last entry answered (`None`: none, the end).
    #[allow(clippy::too_many_arguments)]
    fn readdir(
        &self,
        dir_id: u64,
        fd: RawFd,
        off: u64,
        size: usize,
        plus: bool,
        w: &mut Writer,
        dents: &mut [u8],
    ) -> SysResult<Option<u64>> {
        let mut last = None;
        sys::lseek(fd, off as i64, libc::SEEK_SET)?;
        let limit = abi::OUT_HEADER_LEN + size;
        let mut planned = w.buf.len();
        let mut ents = Vec::new();
        loop {
            let n = sys::getdents64(fd, dents)?;
            if n == 0 {
                break;
            }
            let batch = &dents[..n];
            ents.clear();
            let more = listing::parse_dents(batch, plus, limit, &mut planned, &mut ents);
            if plus {
                self.encode_plus(dir_id, fd, batch, &ents, w, &mut last);
            } else {
                for e in &ents {
                    abi::encode_dirent(w, e.ino, e.off, e.typ, &batch[e.name.clone()]);
                    last = Some(e.off);
                }
            }
            if !more {
                break;
            }
        }
        Ok(last)
    }

    /// READDIRPLUS entries for `ents` of directory node `dir_id` (open at `fd`), each
    /// with the node a LOOKUP of its name would give; long listings share the lookups
    /// with the helper thread ([`crate::helper`]). Sets `last` to the offset of the last
    /// entry written.
    fn encode_plus(
        &self,
        dir_id: u64,
        fd: RawFd,
        batch: &[u8],
        ents: &[listing::Dent],
        w: &mut Writer,
        last: &mut Option<u64>,
    ) {
        let mut job = helper::Job::new(dir_id, fd);
        // `.` and `..` get no node: the kernel knows them, and `..` may lie outside.
        let index: Vec<Option<usize>> = ents
            .iter()
            .map(|e| {
                let name = &batch[e.name.clone()];
                (name != b"." && name != b"..").then(|| job.push(name))
            })
            .collect();
        let job = std::sync::Arc::new(job);
        let shared = job.len() >= helper::MIN_SHARED && self.helper.post(&job);
        let mut found = vec![None; job.len()];
        while let Some(i) = job.take() {
            found[i] = Some(self.list_lookup(&job, i));
        }
        if shared {
            for (i, r) in job.finish() {
                found[i] = Some(r);
            }
        }
        for (e, i) in ents.iter().zip(index) {
            let name = &batch[e.name.clone()];
            // Node id 0: no entry for the kernel to cache (it looks the name up when it
            // needs it). For `.` and `..`, when the node table is above its high-water
            // mark (a listing must not fill it, nor lose names to ENFILE), and when the
            // lookup failed otherwise than ENOENT.
            match i.and_then(|i| found[i].take()) {
                Some(Listed::Node(id, attr)) => {
                    abi::encode_entry(w, id, 0, self.ttl, &attr);
                    let typ = (attr.mode & libc::S_IFMT) >> 12;
                    abi::encode_dirent(w, attr.ino, e.off, typ, name);
                }
                Some(Listed::Gone) => continue,
                Some(Listed::Unknown) | None => {
                    let none = Ttl { secs: 0, nsecs: 0 };
                    abi::encode_entry(w, 0, 0, none, &Attr::default());
                    abi::encode_dirent(w, e.ino, e.off, e.typ, name);
                }
            }
            *last = Some(e.off);
        }
    }

    /// The lookup of name `i` of a listing job, on either thread.
    fn list_lookup(&self, job: &helper::Job<Listed>, i: usize) -> Listed {
        if !self.room_for_listing() {
            return Listed::Unknown;
        }
        let Some(name) = job.name(i) else {
            return Listed::Unknown;
        };
        match self.lookup(job.dir, job.fd, name) {
            Ok((id, attr)) => Listed::Node(id, attr),
            Err(libc::ENOENT) => Listed::Gone,
            Err(_) => Listed::Unknown,
        }
    }
}

/// What a listing found for one name.
#[derive(Debug, Clone, Copy)]
enum Listed {
    /// Its node (looked up: its lookup count is one higher) and attributes.
    Node(u64, Attr),
    /// Gone since the directory was read: left out of the listing.
    Gone,
    /// Listed without a node.
    Unknown,
}

/// Fault injection for the supervisor's tests, from `PORTA_FS_FAULT=hang:NAME` or
/// `crash:NAME`: a LOOKUP of NAME blocks its thread forever (a deadlock) or crashes
/// the server (SIGSEGV). Unset in production.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    Hang,
    Crash,
    /// `crash-forget:K`: the first server crashes before it applies its (K+1)-th FORGET
    /// entry, wherever that falls in a batch (its successor must finish the batch).
    CrashForget,
    /// `compromise:NAME`: a simulated compromise: a LOOKUP of NAME makes the server do to
    /// the shared descriptor table what an attacker in it could, with only the calls its
    /// filter allows (replace the root and procfs descriptors its successor would be
    /// confined beneath by other directories), then crash.
    Compromise,
}

fn fault_from_env() -> Option<(Fault, Vec<u8>)> {
    let v = std::env::var("PORTA_FS_FAULT").ok()?;
    let (kind, name) = v.split_once(':')?;
    let f = match kind {
        "hang" => Fault::Hang,
        "crash" => Fault::Crash,
        "crash-forget" => Fault::CrashForget,
        "compromise" => Fault::Compromise,
        _ => return None,
    };
    Some((f, name.as_bytes().to_vec()))
}

impl Fs {
    fn inject_forget_fault(&self) {
        static APPLIED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let Some((Fault::CrashForget, n)) = &self.fault else {
            return;
        };
        let at = std::str::from_utf8(n)
            .ok()
            .and_then(|s| s.parse::<usize>().ok());
        let k = APPLIED.fetch_add(1, Ordering::Relaxed);
        if at == Some(k) && self.sh.hdr(hdr::SERVER_STARTS).load(Ordering::Relaxed) == 1 {
            // SAFETY: deliberately raises SIGSEGV against this process (test fault).
            unsafe { libc::raise(libc::SIGSEGV) };
        }
    }

    fn inject_fault(&self, name: &CStr) {
        let Some((f, n)) = &self.fault else { return };
        if name.to_bytes() != n.as_slice() {
            return;
        }
        match f {
            Fault::Hang => loop {
                std::thread::park();
            },
            Fault::Crash => {
                // SAFETY: deliberately raises SIGSEGV against this process (test fault).
                unsafe { libc::raise(libc::SIGSEGV) };
            }
            Fault::CrashForget => {}
            Fault::Compromise => {
                // The first server only: its successor must serve the real root.
                if self.sh.hdr(hdr::SERVER_STARTS).load(Ordering::Relaxed) != 1 {
                    return;
                }
                self.compromise();
                // SAFETY: deliberately raises SIGSEGV against this process (test fault).
                unsafe { libc::raise(libc::SIGSEGV) };
            }
        }
    }

    /// See [`Fault::Compromise`]. The best replacement is a host directory reached
    /// through the keeper's procfs (`sys/kernel`: host sysctls); failing that, the
    /// directory above the served root.
    fn compromise(&self) {
        let procfs = self.sh.hdr(hdr::PROC_FD).load(Ordering::Relaxed) as RawFd;
        let dir = libc::O_PATH | libc::O_DIRECTORY;
        let (what, other) = match sys::openat(procfs, c"sys/kernel", dir, 0) {
            Ok(fd) => ("host /proc/sys/kernel", fd),
            Err(_) => match sys::openat(self.root, c"..", dir, 0) {
                Ok(fd) => ("the directory above the root", fd),
                Err(e) => {
                    tracing::error!(errno = e, "simulated compromise: no directory to plant");
                    return;
                }
            },
        };
        for (name, fd) in [("root", self.root), ("procfs", procfs)] {
            sys::close(fd);
            // SAFETY: F_DUPFD duplicates `other` to the lowest free number >= `fd`, the
            // number just closed (the table is shared: another thread may race for it).
            let got = unsafe { libc::fcntl(other.as_raw_fd(), libc::F_DUPFD, fd) };
            tracing::warn!(
                name,
                fd,
                got,
                planted = what,
                "simulated compromise: replaced a descriptor of the shared table"
            );
        }
    }
}

/// The permission bits `mode` (with set-id bits) of a non-directory after a change that
/// kills set-id bits for a caller of group `caller_gid`, the file's group being
/// `file_gid`: set-user-id goes; set-group-id goes where the group may execute or the
/// caller is not of the file's group (the kernel's rule; supplementary groups and
/// CAP_FSETID are not known to the server, so such callers lose it too).
fn killed_setid(mode: u32, file_gid: u32, caller_gid: u32) -> u32 {
    if mode & 0o010 != 0 || file_gid != caller_gid {
        mode & !0o6000
    } else {
        mode & !0o4000
    }
}

/// Whether a file could be a device node stored as a regular file (sticky and empty):
/// only then is its xattr read.
fn may_be_fake_dev(st: &libc::stat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFREG && st.st_size == 0 && st.st_mode & libc::S_ISVTX != 0
}

fn reserved_xattr(name: &[u8]) -> bool {
    name.starts_with(RESERVED_XATTR_PREFIX)
}
