//! One file served as a whole file system (its root is the file): what a grant of a
//! memory object (a memfd of one container shared into another) is served by. Reads and
//! writes go to the file descriptor it was given; nothing else is reachable from it.

use std::fs::File;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, FopenFlags, INodeNo, KernelConfig, OpenFlags, ReplyAttr,
    ReplyData, ReplyEmpty, ReplyOpen, ReplyWrite, Request, TimeOrNow, WriteFlags,
};

use crate::Error;

/// How long the file server's kernel side may keep the attributes (the container's file
/// server forwards with its own timeouts; a grant's are zero).
const TTL: Duration = Duration::from_secs(0);

/// One file, served.
pub struct FileFs {
    file: File,
    read_only: bool,
}

fn errno(e: std::io::Error) -> Errno {
    Errno::from_i32(e.raw_os_error().unwrap_or(libc::EIO))
}

fn time(secs: i64, nsecs: i64) -> SystemTime {
    if secs >= 0 {
        UNIX_EPOCH + Duration::new(secs as u64, nsecs.clamp(0, 999_999_999) as u32)
    } else {
        UNIX_EPOCH
    }
}

impl FileFs {
    fn attr(&self) -> Result<FileAttr, Errno> {
        let m = self.file.metadata().map_err(errno)?;
        let mut perm = (m.mode() & 0o7777) as u16;
        if self.read_only {
            perm &= !0o222;
        }
        Ok(FileAttr {
            ino: INodeNo(1),
            size: m.size(),
            blocks: m.blocks(),
            atime: time(m.atime(), m.atime_nsec()),
            mtime: time(m.mtime(), m.mtime_nsec()),
            ctime: time(m.ctime(), m.ctime_nsec()),
            crtime: time(m.ctime(), m.ctime_nsec()),
            kind: FileType::RegularFile,
            perm,
            nlink: 1,
            uid: m.uid(),
            gid: m.gid(),
            rdev: 0,
            blksize: 4096,
            flags: 0,
        })
    }

    fn writable(&self) -> Result<(), Errno> {
        if self.read_only {
            Err(Errno::EROFS)
        } else {
            Ok(())
        }
    }
}

impl fuser::Filesystem for FileFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        crate::session::init("file", config)
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        if ino.0 != 1 {
            return reply.error(Errno::ENOENT);
        }
        match self.attr() {
            Ok(a) => reply.attr(&TTL, &a),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let r = (|| {
            if uid.is_some() || gid.is_some() {
                return Err(Errno::EPERM);
            }
            if let Some(size) = size {
                self.writable()?;
                self.file.set_len(size).map_err(errno)?;
            }
            if let Some(mode) = mode {
                self.writable()?;
                let p = std::os::unix::fs::PermissionsExt::from_mode(mode & 0o7777);
                self.file.set_permissions(p).map_err(errno)?;
            }
            self.attr()
        })();
        match r {
            Ok(a) => reply.attr(&TTL, &a),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if ino.0 != 1 {
            return reply.error(Errno::ENOENT);
        }
        let writes = flags.0 & libc::O_ACCMODE != libc::O_RDONLY || flags.0 & libc::O_TRUNC != 0;
        if writes && self.read_only {
            return reply.error(Errno::EROFS);
        }
        if flags.0 & libc::O_TRUNC != 0 {
            if let Err(e) = self.file.set_len(0) {
                return reply.error(errno(e));
            }
        }
        reply.opened(FileHandle(1), FopenFlags::FOPEN_DIRECT_IO)
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        reply: ReplyData,
    ) {
        let mut buf = vec![0u8; size as usize];
        match self.file.read_at(&mut buf, offset) {
            Ok(n) => reply.data(&buf[..n]),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        reply: ReplyWrite,
    ) {
        if let Err(e) = self.writable() {
            return reply.error(e);
        }
        let at = if flags.0 & libc::O_APPEND != 0 {
            match self.file.metadata() {
                Ok(m) => m.size(),
                Err(e) => return reply.error(errno(e)),
            }
        } else {
            offset
        };
        match self.file.write_at(data, at) {
            Ok(n) => reply.written(n as u32),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: fuser::LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok()
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        reply.ok()
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        reply.ok()
    }
}

/// Serves the file `file` (read and written through this descriptor; `read_only`: only
/// read) on the FUSE connection `fuse` until the peer closes it.
pub fn serve_file(file: OwnedFd, fuse: OwnedFd, read_only: bool) -> Result<(), Error> {
    let fs = FileFs {
        file: File::from(file),
        read_only,
    };
    crate::session::serve("file", fs, fuse)
}
