//! The io_uring transport (FUSE over io_uring, kernel 6.14+): per-CPU queues of ring
//! entries whose buffers live in memory every server of the container shares.
//!
//! * **Buffers**: [`RingArea`], mapped `MAP_SHARED` by the keeper before it forks any
//!   server, so it is at the same address in every server, present and future. Each queue
//!   has [`ENTRIES_PER_QUEUE`] slots; a slot is a header page (the kernel's
//!   `fuse_uring_req_header` and Porta's record of the slot) and a payload buffer. The
//!   kernel keeps the user addresses a slot was registered with and copies requests and
//!   replies in the context of whichever server thread submitted the command: a
//!   successor can answer what a killed server took from a ring.
//! * **Threads**: one ring thread per queue (pinned to the queue's CPU), each with its own
//!   io_uring instance restricted to `URING_CMD` and `READ`. Blocking backing calls
//!   ([`blocking`]) go to worker threads; the ring thread commits their answers when they
//!   are done (an eventfd read on its ring wakes it), meanwhile serving its other entries.
//!   /dev/fuse still carries INIT, FORGETs and INTERRUPTs and every request before all
//!   queues are registered: the server's thread 0 reads it as on the /dev/fuse transport.
//! * **Restart**: each slot records the request it holds and how far its answer got
//!   ([`phase`]); a new server finds the requests its predecessor took and did not answer
//!   in the slots (or, while the answer was being copied, in the thread's shared request
//!   buffer), serves them again (as resent: the reply journal applies) and commits them
//!   with the old entry's commit id, and registers the other slots afresh.
//!   See docs/file-server.md ("FUSE over io_uring") for what the kernel does and where the
//!   restart cannot be transparent.

use std::collections::{HashMap, VecDeque};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};

use io_uring::{cqueue, opcode, register::Restriction, squeue, types, IoUring};

use super::{Exit, Fs, MAX_WRITE};
use crate::abi::{self, op, uring as ua, Writer};
use crate::shared::{hdr, kind};
use crate::sys;
use crate::Error;

/// Ring entries per queue: a ring thread serves one while the workers hold others.
pub const ENTRIES_PER_QUEUE: usize = 4;
/// Worker threads for blocking backing calls (shared by all queues).
pub const WORKERS: usize = 2;
/// The header page of a slot: the kernel's header block, then Porta's record.
const HEADER_AREA: usize = 4096;
/// The payload buffer: the kernel requires at least max(max_write, max_pages pages).
const PAYLOAD_LEN: usize = MAX_WRITE as usize;
const SLOT_LEN: usize = HEADER_AREA + PAYLOAD_LEN;
/// The control page at the start of the area: the 8-byte buffers of the ring threads'
/// eventfd reads. (The rings themselves are recorded in the shared table: `kind::RING`.)
const CTL_LEN: usize = 4096;
/// Where a slot's record (two words: the unique id it holds, its phase) starts.
const RECORD_OFF: usize = 2048;
/// Where the two iovecs a REGISTER of the slot points at are (the kernel may read them
/// after the thread that submitted the command is gone: they live as long as the area).
const IOVEC_OFF: usize = 3072;
/// Ring threads the control page has eventfd buffers for.
const MAX_RINGS: usize = CTL_LEN / 8;

/// How far a slot's request got. The word also carries, in its second byte, the thread
/// whose shared request buffer holds the frame during [`phase::WRITING`].
pub mod phase {
    /// Armed or never used: nothing to answer.
    pub const IDLE: u64 = 0;
    /// The request is in the slot, unanswered, intact.
    pub const TAKEN: u64 = 1;
    /// The answer is being copied over the request; the request is in a thread's buffer.
    pub const WRITING: u64 = 2;
    /// The whole answer is in the slot; it may or may not have been committed.
    pub const REPLIED: u64 = 3;
}

const KIND_REGISTER: u64 = 1;
const KIND_COMMIT: u64 = 2;
const EVENTFD_TAG: u64 = u64::MAX;

/// Whether an operation may block on the backing file system long enough to hold up the
/// other requests of its queue: served by a worker, off the ring thread.
pub fn blocking(opcode: u32) -> bool {
    matches!(
        opcode,
        op::FSYNC | op::FSYNCDIR | op::FALLOCATE | op::COPY_FILE_RANGE | op::SYNCFS
    )
}

/// The number of queues the kernel makes: one per possible CPU
/// (`/sys/devices/system/cpu/possible`).
pub fn possible_cpus() -> Result<usize, Error> {
    let text = std::fs::read_to_string("/sys/devices/system/cpu/possible")
        .map_err(|e| Error::Io("read /sys/devices/system/cpu/possible", e))?;
    parse_cpu_list(&text).ok_or_else(|| {
        Error::BadState(format!(
            "/sys/devices/system/cpu/possible: cannot parse {:?}",
            text.trim()
        ))
    })
}

/// Counts the CPUs of a kernel CPU list ("0-3,5,7-8").
fn parse_cpu_list(text: &str) -> Option<usize> {
    let mut n = 0usize;
    for part in text.trim().split(',') {
        let (a, b) = match part.split_once('-') {
            Some((a, b)) => (a.parse::<usize>().ok()?, b.parse::<usize>().ok()?),
            None => {
                let a = part.parse::<usize>().ok()?;
                (a, a)
            }
        };
        n = n.checked_add(b.checked_sub(a)? + 1)?;
    }
    (n > 0).then_some(n)
}

/// The ring buffers of a container's file servers (see the module documentation). Never
/// unmapped: it lives as long as the keeper and the servers that inherit it.
#[derive(Debug, Clone, Copy)]
pub struct RingArea {
    base: usize,
    queues: usize,
}

impl RingArea {
    /// Maps the buffers for `queues` queues (shared, anonymous, not reserved: a slot costs
    /// memory only once a request used it).
    pub fn map(queues: usize) -> Result<RingArea, Error> {
        if queues == 0 || queues > usize::from(u16::MAX) {
            return Err(Error::BadState(format!(
                "{queues} io_uring queues: want 1 to 65535"
            )));
        }
        let len = CTL_LEN + queues * ENTRIES_PER_QUEUE * SLOT_LEN;
        // SAFETY: a new anonymous mapping; it touches no existing memory.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(Error::Io(
                "map the io_uring buffers",
                std::io::Error::last_os_error(),
            ));
        }
        Ok(RingArea {
            base: p as usize,
            queues,
        })
    }

    /// The number of queues.
    pub fn queues(&self) -> usize {
        self.queues
    }

    fn slots(&self) -> usize {
        self.queues * ENTRIES_PER_QUEUE
    }

    fn slot_base(&self, s: usize) -> usize {
        assert!(s < self.slots(), "ring slot index within the area");
        self.base + CTL_LEN + s * SLOT_LEN
    }

    fn word(&self, addr: usize) -> &AtomicU64 {
        // SAFETY: `addr` is 8-byte aligned inside the mapping (page-aligned bases plus
        // multiples of 8), which is never unmapped; AtomicU64 has u64's layout.
        unsafe { &*(addr as *const AtomicU64) }
    }

    /// The unique id of the request slot `s` holds, and its phase.
    fn record(&self, s: usize) -> (&AtomicU64, &AtomicU64) {
        let b = self.slot_base(s) + RECORD_OFF;
        (self.word(b), self.word(b + 8))
    }

    /// The buffer of ring thread `t`'s eventfd read (it outlives the thread: the kernel
    /// may complete the read after the thread ended, before the ring is torn down).
    fn eventfd_buf(&self, t: usize) -> *mut u8 {
        assert!(t < MAX_RINGS, "ring index within the control page");
        (self.base + t * 8) as *mut u8
    }

    /// The header block and payload buffer of slot `s`.
    ///
    /// # Safety
    /// The caller is the only thread using slot `s` (its ring thread, or the worker the
    /// ring thread handed it to) until it hands it on.
    #[allow(clippy::mut_from_ref)]
    unsafe fn bufs(&self, s: usize) -> (&mut [u8], &mut [u8]) {
        let b = self.slot_base(s);
        // SAFETY: both ranges are inside the mapping, which is never unmapped; the caller
        // guarantees no other thread uses them meanwhile.
        unsafe {
            (
                std::slice::from_raw_parts_mut(b as *mut u8, ua::HEADER_LEN),
                std::slice::from_raw_parts_mut((b + HEADER_AREA) as *mut u8, PAYLOAD_LEN),
            )
        }
    }

    /// Writes the iovecs of slot `s` into its header page; returns their address.
    fn iovecs(&self, s: usize) -> u64 {
        let b = self.slot_base(s);
        let v = [
            libc::iovec {
                iov_base: b as *mut libc::c_void,
                iov_len: ua::HEADER_LEN,
            },
            libc::iovec {
                iov_base: (b + HEADER_AREA) as *mut libc::c_void,
                iov_len: PAYLOAD_LEN,
            },
        ];
        let at = b + IOVEC_OFF;
        // SAFETY: `at` is inside slot `s`'s header page, beyond the kernel's header block
        // and the record, aligned for iovec; only the thread holding the slot writes it.
        unsafe { std::ptr::write(at as *mut [libc::iovec; 2], v) };
        at as u64
    }
}

/// What a new server found in a slot.
#[derive(Debug)]
enum Pending {
    /// A request the previous server took and did not answer (the frame).
    Request(Vec<u8>),
    /// An answer written whole, perhaps never committed.
    Replied,
}

/// Reads what a killed server left in the slots. Runs before any thread of the new
/// server exists (the request buffers it reads are overwritten once they run).
fn recover(fs: &Fs, area: &RingArea) -> HashMap<usize, (u64, Pending)> {
    let mut found = HashMap::new();
    for s in 0..area.slots() {
        let (unique, ph) = area.record(s);
        let recorded = unique.load(Ordering::Acquire);
        let ph = ph.load(Ordering::Acquire);
        // SAFETY: no thread of this server runs yet; the previous server is dead.
        let (header, payload) = unsafe { area.bufs(s) };
        let latest = ua::commit_id(header).unwrap_or(0);
        let from_slot = |id: u64| {
            let mut frame = vec![0u8; abi::IN_HEADER_LEN + ua::OP_IN_LEN + PAYLOAD_LEN];
            match ua::assemble(header, payload, &mut frame) {
                Ok(n) => {
                    frame.truncate(n);
                    Some((id, Pending::Request(frame)))
                }
                Err(_) => {
                    tracing::warn!(slot = s, "garbled ring entry left by the previous server");
                    None
                }
            }
        };
        let p = if latest != 0 && latest != recorded {
            // Delivered after the previous server last looked: the request is intact.
            from_slot(latest)
        } else if recorded == 0 {
            None
        } else {
            match ph & 0xff {
                phase::TAKEN => from_slot(recorded),
                phase::WRITING => {
                    let t = ((ph >> 8) & 0xff) as usize;
                    // SAFETY: no thread of this server runs yet.
                    match unsafe { fs.sh.request_buf(t) } {
                        Some(b) => match frame_len(b) {
                            Some(n) if frame_unique(&b[..n]) == recorded => {
                                Some((recorded, Pending::Request(b[..n].to_vec())))
                            }
                            _ => None,
                        },
                        None => None,
                    }
                }
                phase::REPLIED => Some((recorded, Pending::Replied)),
                _ => None,
            }
        };
        if let Some(p) = p {
            found.insert(s, p);
        }
    }
    found
}

/// The length of the frame at the start of a request buffer, when it is plausible.
fn frame_len(buf: &[u8]) -> Option<usize> {
    let b = buf.get(..4)?;
    let n = u32::from_ne_bytes([b[0], b[1], b[2], b[3]]) as usize;
    (abi::IN_HEADER_LEN..=buf.len()).contains(&n).then_some(n)
}

/// The unique id of a frame at least [`abi::IN_HEADER_LEN`] long, without the resend bit.
fn frame_unique(frame: &[u8]) -> u64 {
    let mut u = [0u8; 8];
    u.copy_from_slice(&frame[8..16]);
    u64::from_ne_bytes(u) & !abi::UNIQUE_RESEND_FLAG
}

/// Work handed between ring threads and workers.
#[derive(Default)]
struct Jobs {
    queue: Mutex<(VecDeque<(usize, usize)>, bool)>,
    cv: Condvar,
}

/// A ring thread's inbox: slots whose answers a worker wrote, and the eventfd that wakes it.
struct Inbox {
    efd: OwnedFd,
    done: Mutex<Vec<usize>>,
}

/// Everything the ring threads and workers of one server share.
pub(super) struct Transport<'a> {
    fs: &'a Fs,
    area: RingArea,
    /// The queues each ring thread serves.
    plan: Vec<Vec<usize>>,
    inboxes: Vec<Inbox>,
    jobs: Jobs,
    recovered: Mutex<HashMap<usize, (u64, Pending)>>,
    /// The previous server's io_uring descriptors, closed once every ring thread armed
    /// its entries.
    old_rings: Mutex<Vec<RawFd>>,
    /// Ring threads that armed their entries (or failed before), and its condition.
    armed_threads: Mutex<usize>,
    all_armed: Condvar,
}

impl<'a> Transport<'a> {
    /// Prepares the transport of a starting server: what the previous one left, its ring
    /// descriptors closed, the queues spread over at most `max_threads` ring threads.
    pub(super) fn new(fs: &'a Fs, area: RingArea, max_threads: usize) -> Result<Self, Error> {
        let recovered = recover(fs, &area);
        if !recovered.is_empty() {
            tracing::info!(
                count = recovered.len(),
                "requests a killed server took from its rings are served again"
            );
        }
        // The previous server's rings stay open until this server's entries are armed
        // (see `armed`): while they are open, the kernel still hands requests to the dead
        // server's armed entries (and fails them); once they are closed it cancels those
        // entries, and a request for a queue without an armed entry waits until the next
        // commit on that queue, which a REGISTER is not.
        // Every ring of an older server the table records: a server killed before its
        // own were armed leaves its predecessors' recorded too.
        let mut old_rings: Vec<RawFd> = (0..fs.sh.scan_end())
            .filter(|&fd| fs.sh.owner(fd, kind::RING).is_some_and(|o| o != fs.start))
            .collect();
        old_rings.retain(|&fd| is_io_uring(fs.proc_fd, fd));
        let n = area.queues().min(max_threads.max(1));
        let mut plan = vec![Vec::new(); n];
        for q in 0..area.queues() {
            plan[q % n].push(q);
        }
        let mut inboxes = Vec::with_capacity(n);
        for _ in 0..n {
            // SAFETY: plain eventfd2; the result is checked.
            let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
            if fd < 0 {
                return Err(Error::Io(
                    "eventfd for a ring thread",
                    std::io::Error::last_os_error(),
                ));
            }
            inboxes.push(Inbox {
                // SAFETY: a new descriptor nothing else owns.
                efd: unsafe { OwnedFd::from_raw_fd(fd) },
                done: Mutex::new(Vec::new()),
            });
        }
        Ok(Transport {
            fs,
            area,
            plan,
            inboxes,
            jobs: Jobs::default(),
            recovered: Mutex::new(recovered),
            old_rings: Mutex::new(old_rings),
            armed_threads: Mutex::new(0),
            all_armed: Condvar::new(),
        })
    }

    /// The number of ring threads.
    pub(super) fn threads(&self) -> usize {
        self.plan.len()
    }

    /// Stops the workers (after the ring threads ended).
    pub(super) fn stop_workers(&self) {
        let mut q = self.jobs.queue.lock().unwrap_or_else(|p| p.into_inner());
        q.1 = true;
        self.jobs.cv.notify_all();
    }

    /// Serves slot `s`: the request in it (or `frame`, one recovered), answered into the
    /// slot. Returns whether the server is to stop (DESTROY).
    fn serve_slot(
        &self,
        s: usize,
        idx: usize,
        frame: Option<&[u8]>,
        w: &mut Writer,
        dents: &mut [u8],
    ) -> Option<Exit> {
        let fs = self.fs;
        let (unique, ph) = self.area.record(s);
        let id = unique.load(Ordering::Acquire);
        let buf = super::request_buf(&fs.sh, idx);
        // SAFETY: this thread holds slot `s` (see RingArea::bufs).
        let (header, payload) = unsafe { self.area.bufs(s) };
        let n = match frame {
            Some(f) if f.len() <= buf.len() => {
                buf[..f.len()].copy_from_slice(f);
                // Served again: the reply journal must know (bit 63 of unique).
                let u = frame_unique(f) | abi::UNIQUE_RESEND_FLAG;
                buf[8..16].copy_from_slice(&u.to_ne_bytes());
                Some(f.len())
            }
            Some(_) => None,
            None => ua::assemble(header, payload, buf).ok(),
        };
        let slot = fs.sh.thread_slot(idx);
        let served = match n {
            Some(n) => {
                if let Some(t) = slot {
                    t.set_working(true);
                }
                let r = fs.dispatch(idx, &buf[..n], w, dents);
                if let Some(t) = slot {
                    t.set_working(false);
                }
                fs.sh
                    .hdr(hdr::REQUESTS_DONE)
                    .fetch_add(1, Ordering::Relaxed);
                r
            }
            None => {
                tracing::warn!(slot = s, "garbled request in a ring entry answered EIO");
                w.start();
                w.finish(-libc::EIO, id);
                super::dispatch::Served {
                    reply: true,
                    exit: None,
                }
            }
        };
        if !served.reply {
            // Every request on a ring is answered (the entry is re-armed by the commit).
            w.start();
            w.finish(-libc::EIO, id);
        }
        ph.store(
            phase::WRITING | ((idx as u64 & 0xff) << 8),
            Ordering::Release,
        );
        if ua::place_reply(&w.buf, id, header, payload).is_err() {
            tracing::warn!(
                slot = s,
                len = w.buf.len(),
                "reply does not fit a ring entry: EIO"
            );
            w.start();
            w.finish(-libc::EIO, id);
            let _ = ua::place_reply(&w.buf, id, header, payload);
        }
        ph.store(phase::REPLIED, Ordering::Release);
        served.exit
    }

    /// Counts a ring thread whose fresh entries are submitted (or that failed before it
    /// could); the last one closes the previous server's rings.
    fn armed(&self) {
        let mut n = self.armed_threads.lock().unwrap_or_else(|p| p.into_inner());
        *n += 1;
        if *n == self.plan.len() {
            let old =
                std::mem::take(&mut *self.old_rings.lock().unwrap_or_else(|p| p.into_inner()));
            for fd in old {
                // Freed before closed: once closed, the number may be another thread's.
                if self.fs.sh.owner(fd, kind::RING).is_some() {
                    self.fs.sh.free(fd);
                }
                sys::close(fd);
            }
            self.all_armed.notify_all();
        }
    }

    /// Waits until every ring thread armed its entries and the previous server's rings are
    /// closed. Before that, a request for a queue without a fresh entry would go to a dead
    /// entry (and fail) or, once those are cancelled, wait for a commit on its queue: the
    /// requests a killed server left are answered only after this, so that a container
    /// blocked on one of them finds every queue armed when it goes on.
    fn wait_all_armed(&self) {
        let mut n = self.armed_threads.lock().unwrap_or_else(|p| p.into_inner());
        while *n < self.plan.len() {
            n = self.all_armed.wait(n).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Records slot `s` as holding nothing to answer before it is registered: its record
    /// names the last request the kernel put there (still in the header), so that a
    /// successor does not take the old contents for a new request.
    fn mark_idle(&self, s: usize) {
        // SAFETY: this thread holds slot `s` (it is about to register it).
        let (header, _) = unsafe { self.area.bufs(s) };
        let (unique, ph) = self.area.record(s);
        ph.store(phase::IDLE, Ordering::Release);
        unique.store(ua::commit_id(header).unwrap_or(0), Ordering::Release);
    }

    /// Polls `ring`'s completion queue for up to [`super::SPIN`] when no other thread of
    /// the server is polling; true when a completion arrived meanwhile.
    fn spin_for_completion(&self, ring: &mut IoUring<squeue::Entry128, cqueue::Entry>) -> bool {
        if !ring.completion().is_empty() {
            return true;
        }
        let spinning = &self.fs.spinning;
        if spinning
            .compare_exchange(false, true, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
        {
            return false;
        }
        let t0 = std::time::Instant::now();
        let mut got = false;
        while t0.elapsed() < super::SPIN {
            if !ring.completion().is_empty() {
                got = true;
                break;
            }
            std::hint::spin_loop();
        }
        spinning.store(false, Ordering::Relaxed);
        got
    }

    /// A worker: serves the blocking requests the ring threads hand it.
    pub(super) fn worker(&self, idx: usize) {
        if let Some(s) = self.fs.sh.thread_slot(idx) {
            s.start(sys::gettid() as u64);
        }
        let mut w = Writer {
            buf: Vec::with_capacity(super::BUF_LEN),
        };
        let mut dents = vec![0u8; 32 * 1024];
        loop {
            let (s, t) = {
                let mut q = self.jobs.queue.lock().unwrap_or_else(|p| p.into_inner());
                loop {
                    if let Some(j) = q.0.pop_front() {
                        break j;
                    }
                    if q.1 {
                        return;
                    }
                    q = self.jobs.cv.wait(q).unwrap_or_else(|p| p.into_inner());
                }
            };
            self.serve_slot(s, idx, None, &mut w, &mut dents);
            let inbox = &self.inboxes[t];
            inbox.done.lock().unwrap_or_else(|p| p.into_inner()).push(s);
            let one = 1u64.to_ne_bytes();
            if let Err(e) = sys::write(inbox.efd.as_raw_fd(), &one) {
                tracing::error!(errno = e, "cannot wake a ring thread");
            }
        }
    }

    /// Ring thread `t` (thread slot `idx`): registers its queues' entries and serves them
    /// until the connection ends.
    pub(super) fn ring_thread(&self, t: usize, idx: usize) -> Result<Exit, Error> {
        let fs = self.fs;
        if let Some(s) = fs.sh.thread_slot(idx) {
            s.start(sys::gettid() as u64);
        }
        if let [q] = self.plan[t][..] {
            pin_to_cpu(q);
        }
        let mut armed = false;
        let r = self.ring_thread_inner(t, idx, &mut armed);
        if !armed {
            // Failed before arming: the other ring threads must not wait for this one.
            self.armed();
        }
        r
    }

    fn ring_thread_inner(&self, t: usize, idx: usize, armed: &mut bool) -> Result<Exit, Error> {
        let fs = self.fs;
        let queues = &self.plan[t];
        let slots: Vec<usize> = queues
            .iter()
            .flat_map(|&q| q * ENTRIES_PER_QUEUE..(q + 1) * ENTRIES_PER_QUEUE)
            .collect();
        let size = ((slots.len() + 2) * 2).next_power_of_two() as u32;
        let mut ring: IoUring<squeue::Entry128, cqueue::Entry> = IoUring::builder()
            .setup_r_disabled()
            .build(size)
            .map_err(|e| Error::Io("io_uring_setup for a ring thread", e))?;
        // A compromised server can submit nothing but FUSE commands and eventfd reads
        // through this ring (io_uring operations are not seen by the seccomp filter).
        // Recorded at once (see `kind::RING`); the record goes before the ring closes.
        let _recorded = RingRecord::new(fs, ring.as_raw_fd());
        ring.submitter()
            .register_restrictions(&mut [
                Restriction::sqe_op(opcode::UringCmd80::CODE),
                Restriction::sqe_op(opcode::Read::CODE),
            ])
            .map_err(|e| Error::Io("io_uring restrictions", e))?;
        ring.submitter()
            .register_enable_rings()
            .map_err(|e| Error::Io("enable the io_uring", e))?;
        // The iovecs a REGISTER points at, in the slots' header pages.
        let iovecs: HashMap<usize, u64> = slots.iter().map(|&s| (s, self.area.iovecs(s))).collect();
        let mut w = Writer {
            buf: Vec::with_capacity(super::BUF_LEN),
        };
        let mut dents = vec![0u8; 32 * 1024];
        let efd_ptr = self.area.eventfd_buf(t);
        let mut out: Vec<squeue::Entry128> = Vec::with_capacity(slots.len() + 1);
        let fuse = types::Fd(fs.fuse);
        let register = |s: usize| -> squeue::Entry128 {
            let cmd = opcode::UringCmd80::new(fuse, ua::CMD_REGISTER)
                .cmd(ua::cmd_req(0, (s / ENTRIES_PER_QUEUE) as u16))
                .addr(Some(iovecs[&s]))
                .build()
                .user_data((KIND_REGISTER << 32) | s as u64);
            with_len(cmd, 2)
        };
        let commit = |s: usize, id: u64| -> squeue::Entry128 {
            opcode::UringCmd80::new(fuse, ua::CMD_COMMIT_AND_FETCH)
                .cmd(ua::cmd_req(id, (s / ENTRIES_PER_QUEUE) as u16))
                .build()
                .user_data((KIND_COMMIT << 32) | s as u64)
        };
        let mut stop: Option<Exit> = None;
        let mut found = Vec::new();
        {
            let mut rec = self.recovered.lock().unwrap_or_else(|p| p.into_inner());
            for &s in &slots {
                match rec.remove(&s) {
                    Some(p) => found.push((s, p)),
                    None => {
                        self.mark_idle(s);
                        out.push(register(s));
                    }
                }
            }
        }
        // The fresh entries first, at once: until a queue has an armed entry, requests
        // for it wait, and a REGISTER does not take a waiting request (only a commit does).
        {
            let mut sq = ring.submission();
            for e in out.drain(..) {
                // SAFETY: as below (every buffer named is in the shared area).
                if unsafe { sq.push(&e) }.is_err() {
                    return Err(Error::BadState("io_uring submission queue full".into()));
                }
            }
        }
        ring.submit()
            .map_err(|e| Error::Io("io_uring_enter (register)", e))?;
        self.armed();
        *armed = true;
        self.wait_all_armed();
        for (s, (id, p)) in found {
            tracing::info!(
                slot = s,
                unique = id,
                replied = matches!(p, Pending::Replied),
                "answering a request the previous server took"
            );
            if let Pending::Request(frame) = p {
                let (unique, ph) = self.area.record(s);
                unique.store(id, Ordering::Release);
                ph.store(phase::TAKEN, Ordering::Release);
                if let Some(e) = self.serve_slot(s, idx, Some(&frame), &mut w, &mut dents) {
                    stop = Some(e);
                }
            }
            out.push(commit(s, id));
        }
        let efd = self.inboxes[t].efd.as_raw_fd();
        let read_efd = || {
            opcode::Read::new(types::Fd(efd), efd_ptr, 8)
                .build()
                .user_data(EVENTFD_TAG)
                .into()
        };
        out.push(read_efd());
        let mut done: Vec<(u64, i32)> = Vec::with_capacity(size as usize);
        loop {
            {
                let mut sq = ring.submission();
                for e in out.drain(..) {
                    // SAFETY: every buffer an entry names (slot buffers, their iovecs, the
                    // eventfd buffer) is in the shared area, which is never unmapped.
                    if unsafe { sq.push(&e) }.is_err() {
                        return Err(Error::BadState("io_uring submission queue full".into()));
                    }
                }
            }
            if let Some(e) = stop {
                let _ = ring.submit();
                return Ok(e);
            }
            // As on /dev/fuse (super::SPIN): one thread at a time polls its completion
            // queue for a while before it sleeps in io_uring_enter, so that the next
            // request of a busy container is taken without a wake-up.
            let spun = match ring.submit() {
                Ok(_) => self.spin_for_completion(&mut ring),
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => false,
                Err(e) => return Err(Error::Io("io_uring_enter", e)),
            };
            if !spun {
                match ring.submit_and_wait(1) {
                    Ok(_) => {}
                    Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                    Err(e) => return Err(Error::Io("io_uring_enter", e)),
                }
            }
            done.clear();
            done.extend(ring.completion().map(|c| (c.user_data(), c.result())));
            for &(ud, res) in &done {
                if ud == EVENTFD_TAG {
                    let ready: Vec<usize> = std::mem::take(
                        &mut *self.inboxes[t]
                            .done
                            .lock()
                            .unwrap_or_else(|p| p.into_inner()),
                    );
                    for s in ready {
                        out.push(commit(s, self.area.record(s).0.load(Ordering::Acquire)));
                    }
                    out.push(read_efd());
                    continue;
                }
                let kind = ud >> 32;
                let s = (ud & 0xffff_ffff) as usize;
                if !slots.contains(&s) {
                    tracing::warn!(user_data = ud, "unknown io_uring completion ignored");
                    continue;
                }
                match res {
                    0 => {
                        // SAFETY: the kernel handed slot `s` to this thread.
                        let (header, _) = unsafe { self.area.bufs(s) };
                        let id = ua::commit_id(header).unwrap_or(0);
                        let opcode = header
                            .get(4..8)
                            .map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
                            .unwrap_or(0);
                        let (unique, ph) = self.area.record(s);
                        unique.store(id, Ordering::Release);
                        ph.store(phase::TAKEN, Ordering::Release);
                        if blocking(opcode) {
                            let mut q = self.jobs.queue.lock().unwrap_or_else(|p| p.into_inner());
                            q.0.push_back((s, t));
                            self.jobs.cv.notify_one();
                            continue;
                        }
                        if let Some(e) = self.serve_slot(s, idx, None, &mut w, &mut dents) {
                            stop = Some(e);
                        }
                        out.push(commit(s, id));
                    }
                    e if e == -libc::ENOTCONN || e == -libc::ECONNABORTED || e == -libc::ENODEV => {
                        return Ok(Exit::Unmounted);
                    }
                    e if kind == KIND_COMMIT => {
                        // The request was answered already (the previous server's commit
                        // reached the kernel) or is gone: this slot gets a fresh entry.
                        if e != -libc::ENOENT {
                            tracing::warn!(slot = s, errno = -e, "commit to the ring failed");
                        }
                        self.mark_idle(s);
                        out.push(register(s));
                    }
                    e => {
                        return Err(Error::Sys(
                            "register a FUSE ring entry",
                            nix::errno::Errno::from_raw(-e),
                        ))
                    }
                }
            }
        }
    }
}

/// Sets the `len` field of a submission entry: FUSE's REGISTER reads the number of its
/// iovecs there, and io-uring's `UringCmd80` has no setter for it.
fn with_len(e: squeue::Entry128, len: u32) -> squeue::Entry128 {
    // SAFETY: Entry128 is #[repr(C)]: the kernel's 64-byte io_uring_sqe, then 64 bytes
    // of command; every byte pattern is valid. `len` is the u32 at offset 24 of
    // io_uring_sqe (include/uapi/linux/io_uring.h).
    let mut raw: [u8; 128] = unsafe { std::mem::transmute(e) };
    raw[24..28].copy_from_slice(&len.to_ne_bytes());
    // SAFETY: as above.
    unsafe { std::mem::transmute::<[u8; 128], squeue::Entry128>(raw) }
}

/// A ring thread's io_uring recorded in the shared table as [`kind::RING`] while it is
/// open: dropped before the ring (declared after it), it frees the entry.
struct RingRecord<'a> {
    fs: &'a Fs,
    fd: RawFd,
}

impl<'a> RingRecord<'a> {
    fn new(fs: &'a Fs, fd: RawFd) -> RingRecord<'a> {
        fs.sh.publish(fd, kind::RING, fs.start, 0, 0);
        RingRecord { fs, fd }
    }
}

impl Drop for RingRecord<'_> {
    fn drop(&mut self) {
        if self.fs.sh.owner(self.fd, kind::RING).is_some() {
            self.fs.sh.free(self.fd);
        }
    }
}

/// Whether descriptor `fd` of this process is an io_uring instance (`dir`: /proc/self/fd).
fn is_io_uring(dir: RawFd, fd: RawFd) -> bool {
    let name = match std::ffi::CString::new(fd.to_string()) {
        Ok(n) => n,
        Err(_) => return false,
    };
    let mut buf = [0u8; 64];
    // SAFETY: readlinkat into a buffer of the length given.
    let n = unsafe {
        libc::readlinkat(
            dir,
            name.as_ptr(),
            buf.as_mut_ptr() as *mut libc::c_char,
            buf.len(),
        )
    };
    n > 0 && &buf[..n as usize] == b"anon_inode:[io_uring]"
}

/// Pins the calling thread to `cpu` (best effort: a CPU outside the allowed set stays
/// unpinned; the kernel picks the queue by the requester's CPU, not the server's).
fn pin_to_cpu(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is an empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    if cpu >= 8 * std::mem::size_of::<libc::cpu_set_t>() {
        return;
    }
    // SAFETY: `cpu` is within the set (checked above).
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: sched_setaffinity of the calling thread with a set of the size given.
    let r = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if r != 0 {
        tracing::debug!(cpu, "ring thread not pinned");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("0-1\n"), Some(2));
        assert_eq!(parse_cpu_list("0"), Some(1));
        assert_eq!(parse_cpu_list("0-3,5,7-8"), Some(7));
        assert_eq!(parse_cpu_list(""), None);
        assert_eq!(parse_cpu_list("3-1"), None);
        assert_eq!(parse_cpu_list("x"), None);
    }

    #[test]
    fn blocking_calls_are_the_slow_ones() {
        for o in [
            op::FSYNC,
            op::FSYNCDIR,
            op::FALLOCATE,
            op::COPY_FILE_RANGE,
            op::SYNCFS,
        ] {
            assert!(blocking(o));
        }
        for o in [op::LOOKUP, op::CREATE, op::READ, op::WRITE, op::GETATTR] {
            assert!(!blocking(o));
        }
    }

    #[test]
    fn register_entries_carry_two_iovecs() {
        let e = with_len(
            opcode::UringCmd80::new(types::Fd(3), ua::CMD_REGISTER)
                .cmd(ua::cmd_req(0, 1))
                .addr(Some(0x1000))
                .build(),
            2,
        );
        // SAFETY: as in with_len.
        let raw: [u8; 128] = unsafe { std::mem::transmute(e) };
        assert_eq!(u32::from_ne_bytes([raw[24], raw[25], raw[26], raw[27]]), 2);
        assert_eq!(u64::from_ne_bytes(raw[16..24].try_into().unwrap()), 0x1000);
        assert_eq!(ua::parse_cmd_req(&raw[48..]).unwrap(), (0, 1));
    }
}
