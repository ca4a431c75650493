//! Porta's own FUSE server over the kernel ABI (see docs/file-server.md for why not a
//! library's loop), as a folder of concepts: the session with the kernel
//! ([`session`]), from a frame to an operation ([`dispatch`]), the operations themselves
//! (`ops`), nodes ([`nodes`]), taking over after a dead server ([`replay`]) and the
//! eviction thread ([`eviction`]).
//!
//! Nodes are O_PATH descriptors opened one name at a time beneath the root with
//! O_NOFOLLOW; node id = descriptor + 2 (the root is node 1). Open files are descriptors
//! too (file handle = descriptor), and so are the directories the server keeps open for
//! listings ([`crate::listing`]). All are published in the shared table
//! ([`crate::shared`]) so a replacement server carries on with them. When
//! descriptors run short, new nodes are *cold*: recorded by parent node and name in the
//! shared cold table, opened by name (inode checked) for each request that needs them.

use std::collections::HashMap;
use std::os::fd::RawFd;
use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::time::Duration;

use crate::abi::{self, init, Ttl, Writer};
use crate::evict::{self, Budget};
use crate::helper;
use crate::listing::Streams;
use crate::shared::{self, hdr, journal, kind, JournalRecord, Shared};
use crate::sys::{self, Errno};
use crate::Error;

mod dispatch;
mod eviction;
#[cfg(feature = "fault-injection")]
mod fault;
mod nodes;
mod ops;
mod replay;
mod scratch;
mod session;
mod spares;
mod translators;
pub mod uring;

#[cfg(feature = "fault-injection")]
use fault::{fault_from_env, Fault};
use nodes::{InodeMap, Inodes, NameRec};
use ops::dir::Listed;

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

/// How long an idle request thread keeps polling the (non-blocking) FUSE descriptor
/// before it sleeps. A FUSE round trip is two wake-ups; on a virtual machine a
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
    /// How requests reach the server: /dev/fuse reads, or FUSE over io_uring.
    pub transport: Transport,
    /// The io_uring buffers (mapped by the keeper before it forks servers); None: the
    /// /dev/fuse transport only.
    pub rings: Option<uring::RingArea>,
}

pub use porta_protocol::keeper::Transport;

/// Why a server stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// The connection is gone (unmounted or aborted): nothing more to serve.
    Unmounted,
    /// The kernel sent DESTROY.
    Destroyed,
}

struct Fs {
    /// The fault to inject (tests only).
    #[cfg(feature = "fault-injection")]
    fault: Option<(Fault, Vec<u8>)>,
    /// The reply journal as the previous server left it.
    journal_at_start: Vec<JournalRecord>,
    /// This server's start number (`hdr::SERVER_STARTS` after its start): the owner its
    /// scratch descriptors are recorded with ([`scratch`]).
    start: u64,
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
    /// Spare files for passthrough CREATEs.
    spares: spares::Spares,
    /// Serializes exchanges with the supervisor on the backing socket (a request thread
    /// registering a node's first open, the spare filler, translator starts).
    backing_lock: Mutex<()>,
    /// The translators attached to nodes of this tree.
    trans: translators::Translators,
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

/// Serves the connection until it goes away. The first server of a connection runs the
/// INIT handshake; a replacement (the shared state says INIT happened) restores the
/// negotiated parameters and asks the kernel to resend the requests its predecessor had
/// read but not answered (FUSE_NOTIFY_RESEND).
pub fn serve(cfg: &Config) -> Result<Exit, Error> {
    porta_sys::user::umask(0);
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
    let start = sh.hdr(hdr::SERVER_STARTS).fetch_add(1, Ordering::Relaxed) + 1;
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
        // The soft limit raised to the hard one; the hard limit is the supervisor's to raise.
        0 => porta_sys::rlimit::raise_nofile(0).map_or(u64::MAX, |l| l.soft),
        n => n,
    };
    let budget = Budget::for_limit((nofile.min(sh.capacity() as u64) as usize).max(16));
    let cold_budget = Budget::for_cold(sh.cold_capacity());
    let secs = cfg.ttl.as_secs();
    let journal_at_start = (0..hdr::MAX_SLOTS)
        .filter_map(|i| sh.journal(i))
        .map(|e| e.snapshot())
        .filter(|e| e.state != journal::EMPTY)
        .collect();
    let mut fs = Fs {
        #[cfg(feature = "fault-injection")]
        fault: fault_from_env(),
        journal_at_start,
        start,
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
        spares: spares::Spares::default(),
        backing_lock: Mutex::new(()),
        trans: translators::Translators::with_timeout(translator_timeout()),
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
        let want_uring = cfg.transport != Transport::Dev && cfg.rings.is_some();
        if let Some(exit) = fs.handshake(buf, cfg.passthrough, want_uring)? {
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
    let flags = sh.hdr(hdr::INIT_FLAGS).load(Ordering::Relaxed);
    let on_rings = flags & init::OVER_IO_URING != 0;
    if cfg.transport == Transport::Uring && !on_rings {
        return Err(Error::BadState(
            "the io_uring transport is required, but the kernel did not offer FUSE_OVER_IO_URING at INIT \
             (is /sys/module/fuse/parameters/enable_uring Y?)"
                .into(),
        ));
    }
    let rings = match (on_rings, cfg.rings) {
        (false, _) => None,
        (true, Some(area)) => Some(area),
        (true, None) => {
            return Err(Error::BadState(
                "the connection runs on io_uring, but this server has no ring buffers".into(),
            ))
        }
    };
    fs.evict.set_method(evict::probe(fs.fuse));
    // Request threads poll before they sleep (wait_for_request); the supervisor and the
    // keeper never read this descriptor, so its file description may be non-blocking.
    porta_sys::fd::set_nonblocking(fs.fuse)
        .map_err(|e| Error::Io("make the FUSE descriptor non-blocking", e))?;
    // Answers of translators are written to /dev/fuse by their reader threads; on rings
    // a request must be answered on its ring entry.
    fs.trans.enabled.store(rings.is_none(), Ordering::Relaxed);
    let adopted = fs.adopt_slots();
    let translator_jobs = fs.translator_channel();
    let fs = &fs;
    // On rings /dev/fuse carries only FORGETs, INTERRUPTs and what came before the rings
    // were ready: one thread; the other thread slots go to ring threads and workers.
    let threads = if rings.is_some() {
        1
    } else {
        cfg.threads.clamp(1, hdr::MAX_SLOTS)
    };
    let transport = match rings {
        Some(area) => Some(uring::Transport::new(
            fs,
            area,
            hdr::MAX_SLOTS - 1 - uring::WORKERS,
        )?),
        None => None,
    };
    let transport = transport.as_ref();
    if let Some(t) = transport {
        tracing::info!(
            queues = cfg.rings.map_or(0, |a| a.queues()),
            ring_threads = t.threads(),
            "serving over io_uring"
        );
    }
    let result = std::thread::scope(|s| {
        let evictor = s.spawn(move || {
            fs.rebuild_index();
            fs.evict_loop()
        });
        fs.evict.set_thread(evictor.thread().clone());
        s.spawn(move || fs.helper.run(|job, i| fs.list_lookup(job, i)));
        s.spawn(move || fs.fill_spares());
        s.spawn(move || fs.translator_manager(s, translator_jobs, adopted));
        let handles: Vec<_> = (1..threads)
            .map(|i| s.spawn(move || fs.run_loop(i, request_buf(&fs.sh, i))))
            .collect();
        let (rings, workers) = match transport {
            Some(t) => {
                let n = t.threads();
                let rings: Vec<_> = (0..n)
                    .map(|i| {
                        s.spawn(move || {
                            let r = t.ring_thread(i, 1 + i);
                            if let Err(e) = &r {
                                tracing::error!(error = %e, ring = i, "ring thread failed");
                            }
                            r
                        })
                    })
                    .collect();
                let workers: Vec<_> = (0..uring::WORKERS)
                    .map(|i| s.spawn(move || t.worker(1 + n + i)))
                    .collect();
                (rings, workers)
            }
            None => (Vec::new(), Vec::new()),
        };
        let mut r = fs.run_loop(0, buf);
        fs.stop_translators(r.is_ok());
        for h in rings {
            let hr = h
                .join()
                .unwrap_or(Err(Error::BadState("ring thread panicked".into())));
            if r.is_ok() {
                r = hr;
            }
        }
        if let Some(t) = transport {
            t.stop_workers();
        }
        for h in workers {
            let _ = h.join();
        }
        fs.evict.shutdown();
        fs.helper.stop();
        fs.spares.stop();
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

/// The translator timeout `PORTA_TRANSLATOR_TIMEOUT_MS` asks for (set by the supervisor
/// from the container's `run.porta.translator.timeout` annotation), or the default.
fn translator_timeout() -> Duration {
    std::env::var("PORTA_TRANSLATOR_TIMEOUT_MS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|&ms| ms > 0)
        .map_or(translators::DEFAULT_TIMEOUT, Duration::from_millis)
}

fn errno_err(what: &'static str, e: Errno) -> Error {
    Error::Sys(what, nix::errno::Errno::from_raw(e))
}
