//! From a request frame to the operation that serves it: the header decoded, the
//! arguments decoded into their typed struct ([`crate::abi::args`]), the method of the
//! operation called (the `ops` modules), and the reply or error sent back.

use std::sync::atomic::Ordering;

use super::{Exit, Fs};
use crate::abi::args::{self, Decode};
use crate::abi::{self, op, InHeader, Reader, Writer};
use crate::shared::hdr;
use crate::sys::{self, Errno, SysResult};

/// Whether a request may be served before a starting server has rebuilt its node index
/// (`Fs::rebuild_index`): it neither looks a name up, nor counts, frees or opens anything
/// in the shared tables. Reads, writes, attributes and xattrs of the nodes and files the
/// kernel holds go on at once after a restart, however many nodes there are.
pub(super) fn index_free(opcode: u32) -> bool {
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

/// A malformed request body is answered EINVAL.
pub(super) fn mal(_: abi::Malformed) -> Errno {
    libc::EINVAL
}

/// Decodes the typed arguments of an operation from its request body.
fn arg<'a, A: Decode<'a>>(r: &mut Reader<'a>) -> SysResult<A> {
    A::decode(r).map_err(mal)
}

/// What is left to do after an operation succeeded.
pub(super) enum Done {
    /// Send the reply written.
    Reply,
    /// Send nothing (FORGET, INTERRUPT).
    NoReply,
    /// Send the reply, then stop serving (DESTROY).
    Destroy,
}

/// What serving one frame left to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Served {
    /// The answer in the writer is to be sent.
    pub reply: bool,
    /// The server is to stop after sending it (DESTROY).
    pub exit: Option<Exit>,
}

impl Served {
    pub(super) const NOTHING: Served = Served {
        reply: false,
        exit: None,
    };

    pub(super) fn reply(exit: Option<Exit>) -> Served {
        Served { reply: true, exit }
    }
}

impl Fs {
    /// Serves one request frame read by thread `idx`: decodes its header, runs it
    /// (through the reply journal where a resent copy must not run twice) and leaves its
    /// answer in `w`. The transport sends it when [`Served::reply`] says there is one.
    pub(super) fn dispatch(
        &self,
        idx: usize,
        frame: &[u8],
        w: &mut Writer,
        dents: &mut [u8],
    ) -> Served {
        let h = match InHeader::parse(frame) {
            Ok(h) => h,
            Err(_) => {
                tracing::warn!(len = frame.len(), "malformed FUSE frame ignored");
                if frame.len() >= 16 {
                    let mut u = [0u8; 8];
                    u.copy_from_slice(&frame[8..16]);
                    w.start();
                    w.finish(-libc::EIO, u64::from_ne_bytes(u));
                    return Served::reply(None);
                }
                return Served::NOTHING;
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
        // Requests for a translator's nodes go to the translator.
        if let Some(served) = self.translated(&h, frame, w) {
            return served;
        }
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
                    if matches!(res, Ok(Done::Reply)) {
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
            return Served::NOTHING;
        }
        match res {
            Ok(Done::Reply) => {
                w.finish(0, h.unique);
                Served::reply(None)
            }
            Ok(Done::NoReply) => Served::NOTHING,
            Ok(Done::Destroy) => {
                w.finish(0, h.unique);
                Served::reply(Some(Exit::Destroyed))
            }
            Err(e) => {
                w.start();
                w.finish(-e, h.unique);
                Served::reply(None)
            }
        }
    }

    /// Runs one request: decodes its arguments and calls the operation's method.
    pub(super) fn handle(
        &self,
        idx: usize,
        h: &InHeader,
        mut r: Reader,
        w: &mut Writer,
        dents: &mut [u8],
        resent: bool,
    ) -> SysResult<Done> {
        let r = &mut r;
        match h.opcode {
            op::LOOKUP => {
                if self.op_lookup(h, arg(r)?, w)? {
                    // Answered by a translator.
                    return Ok(Done::NoReply);
                }
            }
            op::FORGET => {
                self.op_forget(idx, h, arg(r)?);
                return Ok(Done::NoReply);
            }
            op::BATCH_FORGET => {
                self.op_batch_forget(idx, h, arg(r)?);
                return Ok(Done::NoReply);
            }
            op::GETATTR => self.op_getattr(h, arg(r)?, w)?,
            op::SETATTR => self.op_setattr(h, arg(r)?, w)?,
            op::READLINK => self.op_readlink(h, w)?,
            op::SYMLINK => self.op_symlink(h, arg(r)?, resent, w)?,
            op::MKNOD => self.op_mknod(h, arg(r)?, resent, w)?,
            op::MKDIR => self.op_mkdir(h, arg(r)?, resent, w)?,
            op::UNLINK => self.op_unlink(h, arg(r)?, 0, resent)?,
            op::RMDIR => self.op_unlink(h, arg(r)?, libc::AT_REMOVEDIR, resent)?,
            op::RENAME | op::RENAME2 => {
                let a = args::Rename::decode(r, h.opcode == op::RENAME2).map_err(mal)?;
                self.op_rename(idx, h, a, resent)?
            }
            op::LINK => self.op_link(h, arg(r)?, resent, w)?,
            op::OPEN => self.op_open(h, arg(r)?, w)?,
            op::CREATE => self.op_create(h, arg(r)?, resent, w)?,
            op::READ => self.op_read(arg(r)?, w)?,
            op::WRITE => self.op_write(h, arg(r)?, w)?,
            op::STATFS => self.op_statfs(w)?,
            op::RELEASE => self.op_release(idx, h, arg(r)?, resent)?,
            op::FSYNC => self.op_fsync(arg(r)?)?,
            op::FSYNCDIR => self.op_fsyncdir(h, arg(r)?)?,
            op::SETXATTR => self.op_setxattr(h, arg(r)?, w)?,
            op::GETXATTR => self.op_getxattr(h, arg(r)?, w)?,
            op::LISTXATTR => self.op_listxattr(h, arg(r)?, w)?,
            op::REMOVEXATTR => self.op_removexattr(h, arg(r)?)?,
            // No FLUSH and ACCESS: the kernel stops sending them after ENOSYS. Nor
            // OPENDIR: the kernel then opens directories without asking and caches their
            // listings itself; READDIR comes by node (crate::listing).
            op::FLUSH | op::ACCESS | op::OPENDIR => return Err(libc::ENOSYS),
            op::INIT => return Err(libc::EIO),
            op::READDIR | op::READDIRPLUS => {
                self.op_readdir(h, arg(r)?, h.opcode == op::READDIRPLUS, w, dents)?
            }
            op::FALLOCATE => self.op_fallocate(h, arg(r)?)?,
            op::LSEEK => self.op_lseek(arg(r)?, w)?,
            op::COPY_FILE_RANGE => self.op_copy_file_range(h, arg(r)?, w)?,
            op::SYNCFS => sys::syncfs(self.root)?,
            op::INTERRUPT => return Ok(Done::NoReply),
            op::DESTROY => return Ok(Done::Destroy),
            _ => return Err(libc::ENOSYS),
        }
        Ok(Done::Reply)
    }
}
