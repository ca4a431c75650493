//! Taking over after a dead server: the reply journal (one entry per request thread)
//! that lets a resent request get the answer its first run gave instead of running
//! twice, and the FORGET log that lets a successor finish the FORGETs a killed server had
//! read.

use std::ffi::CStr;
use std::os::fd::RawFd;
use std::sync::atomic::Ordering;

use super::dispatch::Done;
use super::Fs;
use crate::abi::{self, op, InHeader, Reader, Writer};
use crate::shared::{hdr, journal, kind, JournalRecord, NodeRef};
use crate::sys::{self, SysResult};

/// A node id as the reply journal records it (32 bits, never 0): descriptor nodes as
/// their id (below 2^31), cold nodes as 2^31 + index. `None` for the root and non-nodes.
pub(super) fn journal_code(nodeid: u64) -> Option<u64> {
    match NodeRef::of(nodeid)? {
        NodeRef::Hot(_) => Some(nodeid),
        NodeRef::Cold(i) if i < 1 << 31 => Some((1 << 31) | i as u64),
        NodeRef::Cold(_) => None,
    }
}

/// The node id of a [`journal_code`].
pub(super) fn journal_node(code: u64) -> Option<u64> {
    let id = if code & (1 << 31) != 0 {
        NodeRef::Cold((code & 0x7fff_ffff) as usize).id()
    } else {
        code
    };
    NodeRef::of(id).map(NodeRef::id)
}

/// The request id and (node, count) entries of a FORGET or BATCH_FORGET frame at the
/// start of `buf`; `None` for any other request or a malformed one.
pub(super) fn forget_frame(buf: &[u8]) -> Option<(u64, Vec<(u64, u64)>)> {
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

impl Fs {
    /// Runs a request whose reply is only an errno through the reply journal: a resent
    /// request whose first run completed gets the recorded answer and is not run again.
    pub(super) fn journaled(
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
            if let Some(e) = self.journal_record(id, journal::DONE) {
                let errno = e.errno();
                return if errno == 0 {
                    Ok(Done::Reply)
                } else {
                    Err(errno)
                };
            }
        }
        let entry = self.sh.journal(idx);
        if let Some(e) = entry {
            e.intent(id);
        }
        let res = self.handle(idx, h, r, w, dents, resent);
        if let Some(e) = entry {
            let errno = match &res {
                Ok(_) => 0,
                Err(e) => *e,
            };
            e.done(errno);
        }
        res
    }

    /// Records in the thread's journal entry the node (and the file handle) a request that
    /// counts a lookup is about to be answered with, so that a resent copy of it gets the
    /// same answer instead of counting the node again (and, for CREATE, opening a second
    /// handle nobody would ever release: a leaked writable descriptor makes exec of the
    /// file fail with ETXTBSY).
    pub(super) fn record_entry(&self, idx: usize, h: &InHeader, w: &Writer) {
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
            e.entry(h.unique & !abi::UNIQUE_RESEND_FLAG, x, node.ino());
        }
    }

    /// For a resent request whose first run was recorded by [`Fs::record_entry`]: writes the
    /// first run's answer (the node and its current attributes, and for CREATE the same
    /// file handle) when that node and handle are still what they were.
    pub(super) fn entry_again(&self, h: &InHeader, w: &mut Writer, resent: bool) -> Option<()> {
        if !resent {
            return None;
        }
        let id = h.unique & !abi::UNIQUE_RESEND_FLAG;
        let e = self.journal_record(id, journal::ENTRY)?;
        let (code, fh1) = e.node_and_fh();
        let nodeid = journal_node(code)?;
        let node = self.sh.node_entry(nodeid)?;
        if node.ino() != e.ino() {
            return None;
        }
        let open = if h.opcode == op::CREATE {
            let fh = (fh1 as i64 - 1) as RawFd;
            if fh < 0 || self.sh.kind(fh) != kind::FILE {
                return None;
            }
            if self.sh.file(fh)?.node() != nodeid {
                return None;
            }
            let io = if !self.passthrough || self.served_in_passthrough(fh) {
                None
            } else {
                match node.backing().load(Ordering::Acquire) {
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
    pub(super) fn released_already(&self, h: &InHeader, fh: u64, stamp: u64) -> bool {
        let id = h.unique & !abi::UNIQUE_RESEND_FLAG;
        self.journal_record(id, journal::INTENT)
            .is_some_and(|e| e.fh() == fh && e.stamp() != 0 && e.stamp() != stamp)
    }

    /// For a resent RENAME_EXCHANGE whose first run may have happened before the journal
    /// recorded it: the inode numbers seen before the swap tell whether it did.
    pub(super) fn exchange_already_done(&self, h: &InHeader, od: RawFd, old: &CStr) -> bool {
        let id = h.unique & !abi::UNIQUE_RESEND_FLAG;
        let Some(e) = self.journal_record(id, journal::INTENT) else {
            return false;
        };
        let (old_ino, new_ino) = e.inos();
        old_ino != 0 && new_ino != 0 && sys::statat(od, old).is_ok_and(|st| st.st_ino == new_ino)
    }

    /// Applies the entries of the FORGET frame with request id `unique` (from entry
    /// `first` on), noting in the shared memory which one is being applied. The kernel never
    /// resends a FORGET; the frame stays in the thread's request buffer in the shared
    /// memory until the thread reads the next request, so a server killed at any point
    /// leaves the rest to its successor ([`Fs::recover_forgets`]). At most the entry being
    /// applied at the kill is lost (a node kept too long, never one dropped too early).
    pub(super) fn forget_logged(
        &self,
        idx: usize,
        unique: u64,
        entries: &[(u64, u64)],
        first: usize,
    ) {
        let progress = self.sh.forget_log(idx);
        if let Some(p) = progress {
            p.begin(unique, first);
        }
        for (k, (id, n)) in entries.iter().enumerate().skip(first) {
            #[cfg(feature = "fault-injection")]
            self.inject_forget_fault();
            if let Some(p) = progress {
                p.started_entry(k);
            }
            self.forget(*id, *n);
        }
    }

    /// Finishes the FORGET frames killed predecessors had read but not applied (found in
    /// the threads' request buffers); returns how many entries. Runs before any request
    /// thread starts.
    pub(super) fn recover_forgets(&self) -> usize {
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
            let first = if unique != 0 && progress.unique() == unique {
                progress.started()
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

    /// Records in thread `idx`'s journal entry (its intent already written) the inode
    /// numbers of the two names a RENAME_EXCHANGE is about to swap
    /// ([`Fs::exchange_already_done`]).
    pub(super) fn record_exchange(&self, idx: usize, old_ino: u64, new_ino: u64) {
        if let Some(e) = self.sh.journal(idx) {
            e.exchange(old_ino, new_ino);
        }
    }

    /// Records in thread `idx`'s journal entry (its intent already written) the handle a
    /// RELEASE is about to close and its stamp ([`Fs::released_already`]).
    pub(super) fn record_release(&self, idx: usize, fh: u64, stamp: u64) {
        if let Some(e) = self.sh.journal(idx) {
            e.release(fh, stamp);
        }
    }

    /// The journal entry a predecessor left for request `unique` in `state`.
    fn journal_record(&self, unique: u64, state: u64) -> Option<&JournalRecord> {
        self.journal_at_start
            .iter()
            .find(|e| e.unique == unique && e.state == state)
    }
}
