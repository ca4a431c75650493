//! Directory listings: READDIR and READDIRPLUS from open directories kept per listing
//! ([`crate::listing`]), lookups of long listings shared with a helper thread
//! ([`crate::helper`]); FSYNCDIR.

use std::os::fd::{AsRawFd, RawFd};

use super::super::{Fs, BUF_LEN};
use crate::abi::{self, args, Attr, InHeader, Ttl, Writer};
use crate::helper;
use crate::listing::{self, Streams};
use crate::shared::kind;
use crate::sys::{self, SysResult};

/// What a listing found for one name.
#[derive(Debug, Clone, Copy)]
pub(in crate::server) enum Listed {
    /// Its node (looked up: its lookup count is one higher) and attributes.
    Node(u64, Attr),
    /// Gone since the directory was read: left out of the listing.
    Gone,
    /// Listed without a node.
    Unknown,
}

impl Fs {
    /// READDIR and READDIRPLUS (`plus`): a directory node listed from an open
    /// directory kept for the listing ([`crate::listing`]); with `plus`, each name with
    /// its node.
    pub(in crate::server) fn op_readdir(
        &self,
        h: &InHeader,
        a: args::Readdir,
        plus: bool,
        w: &mut Writer,
        dents: &mut [u8],
    ) -> SysResult<()> {
        let fd = self.take_stream(h.nodeid, a.offset)?;
        let size = (a.size as usize).min(BUF_LEN);
        let res = self.readdir(h.nodeid, fd, a.offset, size, plus, w, dents);
        self.put_stream(fd, res.as_ref().ok().copied().flatten());
        res.map(|_| ())
    }

    /// FSYNCDIR: a directory to stable storage. No handle (no OPENDIR): the directory
    /// by its node.
    pub(in crate::server) fn op_fsyncdir(&self, h: &InHeader, a: args::Fsync) -> SysResult<()> {
        let node = self.node_fd(h.nodeid)?;
        let dir = self.reopen(node.fd(), libc::O_RDONLY | libc::O_DIRECTORY, libc::S_IFDIR)?;
        sys::fsync(dir.as_raw_fd(), a.datasync())
    }

    /// The open directory to answer a READDIR of node `nodeid` at `off` with: an idle
    /// stream that goes on with this listing, or a new one.
    pub(in crate::server) fn take_stream(&self, nodeid: u64, off: u64) -> SysResult<RawFd> {
        let known = self.node_entry(nodeid).map(|e| e.inode_key());
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
    pub(in crate::server) fn put_stream(&self, fd: RawFd, next: Option<u64>) {
        let close = match next {
            Some(next) => {
                if let Some(e) = self.sh.stream(fd) {
                    e.set_offset(next);
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

    pub(in crate::server) fn lock_streams(&self) -> std::sync::MutexGuard<'_, Streams> {
        // A thread that panicked holding the lock left the list consistent (no method
        // of Streams panics halfway).
        self.streams.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Lists directory node `dir_id` from its open directory `fd` at `off` into `w`;
    /// returns the offset of the last entry answered (`None`: none, the end).
    #[allow(clippy::too_many_arguments)]
    pub(in crate::server) fn readdir(
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
    pub(in crate::server) fn encode_plus(
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
    pub(in crate::server) fn list_lookup(&self, job: &helper::Job<Listed>, i: usize) -> Listed {
        if !self.room_for_listing() {
            return Listed::Unknown;
        }
        let Some(name) = job.name(i) else {
            return Listed::Unknown;
        };
        match self.lookup(job.dir, job.fd, name) {
            // A node with a translator is shown without a node: the kernel looks it up
            // when it needs it, and the lookup answers with the translator's root.
            Ok((id, attr)) if self.carries_translator(id, attr.mode) => {
                self.forget(id, 1);
                Listed::Unknown
            }
            Ok((id, attr)) => Listed::Node(id, attr),
            Err(libc::ENOENT) => Listed::Gone,
            Err(_) => Listed::Unknown,
        }
    }
}
