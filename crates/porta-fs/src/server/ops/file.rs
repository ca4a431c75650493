//! Open files: OPEN, CREATE, READ, WRITE, RELEASE, FSYNC, FALLOCATE, LSEEK and
//! COPY_FILE_RANGE; handles in the shared table, and the passthrough backing ids of nodes.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::Ordering;

use super::super::nodes::FdName;
use super::super::scratch::Scratch;
use super::super::{Fs, COPY_CHUNK, MAX_WRITE};
use crate::abi::{self, args, fopen, InHeader, Writer};
use crate::shared::{self, kind, NodeEntry, NodeRef};
use crate::sys::{self, SysResult};

impl Fs {
    /// OPEN: a regular file opened with real access flags, published as a handle.
    pub(in crate::server) fn op_open(
        &self,
        h: &InHeader,
        a: args::Open,
        w: &mut Writer,
    ) -> SysResult<()> {
        let fd_node = self.node_fd(h.nodeid)?;
        let fd = fd_node.fd();
        let setid = if a.flags & libc::O_TRUNC != 0 {
            self.setid_bits(fd)
        } else {
            0
        };
        let (file, st) = self.reopen_stat(fd, self.file_flags(a.flags), libc::S_IFREG)?;
        self.settle_setid_bits(h.nodeid, h.gid, file.as_raw_fd(), setid, a.kill_suidgid);
        self.open_reply(w, h.nodeid, file, a.flags, st.st_mode)
    }

    /// CREATE: a regular file created (or found, and maybe truncated) and opened,
    /// answered with its node and the handle.
    pub(in crate::server) fn op_create(
        &self,
        h: &InHeader,
        a: args::Create,
        resent: bool,
        w: &mut Writer,
    ) -> SysResult<()> {
        let (flags, name) = (a.flags, a.name);
        let parent_node = self.node_fd(h.nodeid)?;
        let parent = parent_node.fd();
        self.room_for_node()?;
        if !resent && self.create_from_spare(h, &a, parent, w)? {
            return Ok(());
        }
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
            // The umask is applied by the kernel already.
            self.scratch(sys::openat(parent, name, oflags, a.mode & 0o7777)?)
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
                self.settle_setid_bits(id, h.gid, fd, old.st_mode & 0o7777, a.kill_suidgid);
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
        Ok(())
    }

    /// READ: up to [`MAX_WRITE`] bytes of an open file.
    pub(in crate::server) fn op_read(&self, a: args::Read, w: &mut Writer) -> SysResult<()> {
        let size = a.size.min(MAX_WRITE) as usize;
        let fd = self.fh_fd(a.fh)?;
        let start = w.buf.len();
        w.zeros(size);
        let n = sys::pread(fd, &mut w.buf[start..], a.offset)?;
        w.buf.truncate(start + n);
        Ok(())
    }

    /// WRITE: data into an open file (set-id bits settled as the writer's own write).
    pub(in crate::server) fn op_write(
        &self,
        h: &InHeader,
        a: args::Write,
        w: &mut Writer,
    ) -> SysResult<()> {
        let fd = self.fh_fd(a.fh)?;
        let kill = a.write_flags & abi::write_flags::KILL_SUIDGID != 0;
        let n = self.settling_setid_bits(h.nodeid, h.gid, fd, kill, || {
            sys::pwrite(fd, a.data, a.offset)
        })?;
        w.u32(n as u32).u32(0);
        Ok(())
    }

    /// RELEASE: closes a handle. The journal entry of thread `idx` records the handle and
    /// its stamp first, so that a resent copy never closes a file opened since.
    pub(in crate::server) fn op_release(
        &self,
        idx: usize,
        h: &InHeader,
        a: args::Release,
        resent: bool,
    ) -> SysResult<()> {
        let fh = a.fh;
        let stamp = match self.fh_fd(fh) {
            Ok(fd) => self.sh.file(fd).map_or(0, |e| e.stamp()),
            Err(_) => return Ok(()),
        };
        if resent && self.released_already(h, fh, stamp) {
            return Ok(());
        }
        // The handle's identity, for a resent copy of this request (above).
        self.record_release(idx, fh, stamp);
        self.release(fh);
        Ok(())
    }

    /// FSYNC: an open file to stable storage.
    pub(in crate::server) fn op_fsync(&self, a: args::Fsync) -> SysResult<()> {
        let fd = self.fh_fd(a.fh)?;
        sys::fsync(fd, a.datasync())
    }

    /// FALLOCATE: space of an open file allocated or punched.
    pub(in crate::server) fn op_fallocate(
        &self,
        h: &InHeader,
        a: args::Fallocate,
    ) -> SysResult<()> {
        let fd = self.fh_fd(a.fh)?;
        // The kernel leaves set-id bits to the server here too but, unlike for
        // WRITE, says nothing of the caller's CAP_FSETID: root keeps them.
        self.settling_setid_bits(h.nodeid, h.gid, fd, h.uid != 0, || {
            sys::fallocate(fd, a.mode, a.offset, a.length)
        })
    }

    /// LSEEK: SEEK_DATA and SEEK_HOLE on an open file.
    pub(in crate::server) fn op_lseek(&self, a: args::Lseek, w: &mut Writer) -> SysResult<()> {
        let pos = sys::lseek(self.fh_fd(a.fh)?, a.offset, a.whence)?;
        w.u64(pos as u64);
        Ok(())
    }

    /// COPY_FILE_RANGE: up to [`COPY_CHUNK`] bytes from one open file to another.
    pub(in crate::server) fn op_copy_file_range(
        &self,
        h: &InHeader,
        a: args::CopyFileRange,
        w: &mut Writer,
    ) -> SysResult<()> {
        let len = a.len.min(COPY_CHUNK) as usize;
        let (fd_in, out) = (self.fh_fd(a.fh_in)?, self.fh_fd(a.fh_out)?);
        // As for FALLOCATE: no word on the caller's CAP_FSETID here.
        let n = self.settling_setid_bits(a.nodeid_out, h.gid, out, h.uid != 0, || {
            sys::copy_file_range(fd_in, a.off_in, out, a.off_out, len, a.flags)
        })?;
        w.u32(n as u32).u32(0);
        Ok(())
    }

    /// Closes file handle `fh`. Its node's open count goes down after the handle left
    /// the table: a server killed in between leaves the count one too high (the node is
    /// kept, its next opens go the same way) rather than too low, and a new server
    /// recounts ([`Fs::rebuild_index`]).
    pub(in crate::server) fn release(&self, fh: u64) {
        let Ok(fd) = self.fh_fd(fh) else { return };
        let node = self.sh.file(fd).map(|e| e.node());
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
    pub(in crate::server) fn open_io(&self, nodeid: u64, setid: bool) -> SysResult<Option<i32>> {
        let fd_node = self.node_fd(nodeid)?;
        let fd = fd_node.fd();
        let e = self.sh.node_entry(nodeid).ok_or(libc::ESTALE)?;
        let _g = self.inodes.lock().map_err(|_| libc::EIO)?;
        let opens = e.opens().load(Ordering::Acquire);
        if opens & shared::PASSTHROUGH_OPENS == 0 && (opens > 0 || setid) {
            e.opens().fetch_add(shared::SERVED_OPEN, Ordering::AcqRel);
            return Ok(None);
        }
        let id = e.backing().load(Ordering::Acquire);
        if id != 0 {
            e.opens().fetch_add(1, Ordering::AcqRel);
            return Ok(Some((id - 1) as i32));
        }
        let tag = NodeRef::of(nodeid).map_or(fd, NodeRef::tag);
        let id = self.register_backing(fd, tag)?;
        e.opens().fetch_add(1, Ordering::AcqRel);
        e.backing().store(id as u64 + 1, Ordering::Release);
        Ok(Some(id))
    }

    /// Counts one open of a node fewer: a served one (`served`) or a passthrough one. A
    /// node with a descriptor keeps its backing id registered; a cold node drops it with
    /// its last passthrough open: cold nodes are the ones past the descriptor budget, and
    /// the supervisor registers at most as many backing ids as the table has descriptors.
    pub(in crate::server) fn put_io(&self, nodeid: u64, served: bool) {
        let Some(e) = self.sh.node_entry(nodeid) else {
            return;
        };
        let Ok(_g) = self.inodes.lock() else { return };
        let opens = e.opens().load(Ordering::Acquire);
        let (one, mask) = if served {
            (shared::SERVED_OPEN, !shared::PASSTHROUGH_OPENS)
        } else {
            (1, shared::PASSTHROUGH_OPENS)
        };
        if opens & mask == 0 {
            return;
        }
        let left = opens - one;
        e.opens().store(left, Ordering::Release);
        if !served
            && left & shared::PASSTHROUGH_OPENS == 0
            && matches!(NodeRef::of(nodeid), Some(NodeRef::Cold(_)))
        {
            self.drop_backing(e);
        }
    }

    /// Whether open file `fd` is served by the server in a passthrough connection (see
    /// [`Fs::open_io`]).
    pub(in crate::server) fn served_in_passthrough(&self, fd: RawFd) -> bool {
        self.sh.file(fd).is_some_and(|e| e.served())
    }

    /// Unregisters the backing id of node entry `e` (its last lookup is gone); the
    /// caller holds the `inodes` lock.
    pub(in crate::server) fn drop_backing(&self, e: NodeEntry) {
        let id = e.backing().swap(0, Ordering::AcqRel);
        e.opens()
            .fetch_and(!shared::PASSTHROUGH_OPENS, Ordering::Relaxed);
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

    pub(in crate::server) fn file_flags(&self, flags: i32) -> i32 {
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
    pub(in crate::server) fn reopen(&self, fd: RawFd, flags: i32, want: u32) -> SysResult<Scratch> {
        self.reopen_stat(fd, flags, want).map(|(file, _)| file)
    }

    /// As [`Fs::reopen`], with the opened file's status.
    pub(in crate::server) fn reopen_stat(
        &self,
        fd: RawFd,
        flags: i32,
        want: u32,
    ) -> SysResult<(Scratch, libc::stat)> {
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
        let file = self.scratch(sys::openat(
            self.proc_fd,
            FdName::new(b"", fd).cstr(),
            flags | libc::O_NONBLOCK,
            0,
        )?);
        let st2 = sys::fstat(file.as_raw_fd())?;
        if st2.st_mode & libc::S_IFMT != want || st2.st_ino != st.st_ino || st2.st_dev != st.st_dev
        {
            return Err(libc::EIO);
        }
        Ok((file, st2))
    }

    /// Publishes open `file` of node `nodeid` (mode `mode`) as a handle and writes the
    /// `fuse_open_out` for it.
    pub(in crate::server) fn open_reply(
        &self,
        w: &mut Writer,
        nodeid: u64,
        file: Scratch,
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
    pub(in crate::server) fn open_out(&self, w: &mut Writer, fh: RawFd, io: Option<i32>) {
        let (flags, backing) = match io {
            Some(id) => (fopen::PASSTHROUGH, id),
            None if self.passthrough => (0, 0),
            None => (fopen::KEEP_CACHE, 0),
        };
        w.u64(fh as u64).u32(flags).i32(backing);
    }
}
