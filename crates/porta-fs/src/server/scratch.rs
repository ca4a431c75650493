//! Scratch descriptors: the ones a server holds while a request or task is under way,
//! before they become a node, a handle, a stream or a spare (a file being opened, the
//! read-only reopen registered as a passthrough backing file while the supervisor
//! answers, a node being looked up), and the directory spares are made in.
//!
//! Every descriptor a server opens lives in the fd table it shares with the keeper, so a
//! server killed while it holds one would leave that descriptor open for good: one per
//! request in progress at each kill, and a kill loop grows the table past its budget.
//! Each scratch descriptor is therefore recorded in the shared table (kind
//! [`kind::SCRATCH`], with the start number of the server holding it) while it is held,
//! and a successor closes the ones of servers that are gone ([`Fs::rebuild_index`]).

use std::os::fd::{AsRawFd, IntoRawFd, OwnedFd, RawFd};

use super::Fs;
use crate::shared::{kind, Shared};
use crate::sys;

/// A descriptor held for one request or task, recorded in the shared table; closed (and
/// its entry freed) when dropped. [`Scratch::into_raw_fd`] hands it on to a caller that
/// publishes it as something else (the entry's kind is overwritten then).
#[derive(Debug)]
pub(super) struct Scratch {
    sh: Shared,
    fd: RawFd,
}

impl Scratch {
    /// Records `fd` as a scratch descriptor of the server with start number `owner`.
    /// A descriptor past the table (none in practice: the table covers the descriptor
    /// limit) is kept unrecorded.
    fn new(sh: Shared, owner: u64, fd: OwnedFd) -> Scratch {
        let fd = fd.into_raw_fd();
        sh.publish(fd, kind::SCRATCH, owner, 0, 0);
        Scratch { sh, fd }
    }

    /// Hands the descriptor on, still recorded as scratch: the caller publishes it as
    /// something else, or frees its entry and closes it.
    pub(super) fn into_raw_fd(self) -> RawFd {
        let fd = self.fd;
        std::mem::forget(self);
        fd
    }
}

impl AsRawFd for Scratch {
    fn as_raw_fd(&self) -> RawFd {
        self.fd
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        // Freed before closed: once closed, the number may be another thread's.
        if self.sh.kind(self.fd) == kind::SCRATCH {
            self.sh.free(self.fd);
        }
        sys::close(self.fd);
    }
}

impl Fs {
    /// Records `fd` as a scratch descriptor of this server.
    pub(super) fn scratch(&self, fd: OwnedFd) -> Scratch {
        Scratch::new(self.sh, self.start, fd)
    }

    /// Closes scratch descriptor `fd` when a server other than this one held it (it is
    /// gone: a server starts once its predecessor is dead); returns whether it did.
    /// Called while the index is rebuilt.
    pub(super) fn close_scratch_of_the_dead(&self, fd: RawFd) -> bool {
        match self.sh.owner(fd, kind::SCRATCH) {
            Some(owner) if owner != self.start => {
                self.sh.free(fd);
                sys::close(fd);
                true
            }
            _ => false,
        }
    }
}
