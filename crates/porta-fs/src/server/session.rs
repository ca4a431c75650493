//! The session with the kernel: the INIT handshake, each request thread's loop
//! (reading frames, polling before sleeping, see [`super::SPIN`]) and sending replies.

use std::sync::atomic::Ordering;

use super::{errno_err, Exit, Fs, BUF_LEN, MAX_WRITE, SPIN};
use crate::abi::args::{self, Decode};
use crate::abi::{self, init, op, InHeader, Reader, Writer};
use crate::shared::hdr;
use crate::sys::{self, Errno};
use crate::Error;

/// The INIT flags the server asks of the kernel and offers a translator alike (it plays
/// the kernel's part towards translators, `super::translators`).
pub(super) const FORWARDED_INIT_FLAGS: u64 = init::ASYNC_READ
    | init::ATOMIC_O_TRUNC
    | init::BIG_WRITES
    | init::DO_READDIRPLUS
    | init::PARALLEL_DIROPS
    | init::MAX_PAGES
    | init::CACHE_SYMLINKS
    | init::INIT_EXT
    | init::HANDLE_KILLPRIV_V2;

impl Fs {
    pub(super) fn handshake(
        &mut self,
        buf: &mut [u8],
        want_passthrough: bool,
        want_uring: bool,
    ) -> Result<Option<Exit>, Error> {
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
            let Ok(args::Init {
                major,
                minor,
                max_readahead: readahead,
                flags: kflags,
            }) = args::Init::decode(&mut r)
            else {
                self.send_err(h.unique, libc::EINVAL);
                continue;
            };
            if major != abi::KERNEL_VERSION || minor < 31 {
                tracing::error!(major, minor, "kernel FUSE protocol too old");
                self.send_err(h.unique, libc::EPROTO);
                return Err(Error::BadState(format!(
                    "kernel FUSE protocol {major}.{minor} unsupported"
                )));
            }
            let mut want = FORWARDED_INIT_FLAGS | init::NO_EXPORT_SUPPORT | init::HAS_RESEND;
            if want_passthrough && kflags & init::PASSTHROUGH != 0 {
                want |= init::PASSTHROUGH;
            } else {
                want |= init::WRITEBACK_CACHE;
            }
            if want_uring {
                want |= init::OVER_IO_URING;
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
                io_uring = flags & init::OVER_IO_URING != 0,
                "FUSE connection initialized"
            );
            return Ok(None);
        }
    }

    pub(super) fn run_loop(&self, idx: usize, buf: &mut [u8]) -> Result<Exit, Error> {
        let slot = self.sh.thread_slot(idx);
        if let Some(s) = slot {
            s.start(sys::gettid() as u64);
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
                s.set_working(true);
            }
            let done = self.dispatch(idx, &buf[..n], &mut w, &mut dents);
            if done.reply {
                self.send(&w);
            }
            if let Some(s) = slot {
                s.set_working(false);
            }
            self.sh
                .hdr(hdr::REQUESTS_DONE)
                .fetch_add(1, Ordering::Relaxed);
            if let Some(Exit::Destroyed) = done.exit {
                return Ok(Exit::Destroyed);
            }
        }
    }

    /// Waits for the next request after a read found none: one thread at a time
    /// polls for up to [`SPIN`] (a request that arrives meanwhile is taken without a
    /// wake-up, the dominant cost of a round trip on a virtual machine), then every
    /// thread sleeps in poll(2).
    pub(super) fn wait_for_request(&self, idle_since: &mut Option<std::time::Instant>) {
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

    pub(super) fn send(&self, w: &Writer) {
        match sys::write(self.fuse, &w.buf) {
            Ok(_) | Err(libc::ENOENT) => {}
            Err(e) => tracing::debug!(errno = e, "reply not delivered"),
        }
    }

    pub(super) fn send_err(&self, unique: u64, errno: Errno) {
        let mut w = Writer::default();
        w.start();
        w.finish(-errno, unique);
        self.send(&w);
    }
}
