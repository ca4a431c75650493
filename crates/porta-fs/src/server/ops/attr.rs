//! Attribute operations (GETATTR, SETATTR, READLINK, STATFS) and how a node's
//! attributes are shown: inode numbers made distinct across backing file systems, device
//! nodes stored as regular files shown as devices.

use std::os::fd::{AsRawFd, RawFd};

use super::super::nodes::FdName;
use super::super::Fs;
use super::xattr::DEV_XATTR;
use crate::abi::{args, fattr, Attr, InHeader, Writer};
use crate::sys::{self, SysResult};

/// Whether a file could be a device node stored as a regular file (sticky and empty):
/// only then is its xattr read.
pub(in crate::server) fn may_be_fake_dev(st: &libc::stat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFREG && st.st_size == 0 && st.st_mode & libc::S_ISVTX != 0
}

impl Fs {
    /// GETATTR: a node's attributes (an open file's, when the kernel names one).
    pub(in crate::server) fn op_getattr(
        &self,
        h: &InHeader,
        a: args::Getattr,
        w: &mut Writer,
    ) -> SysResult<()> {
        let fd_node = self.node_fd(h.nodeid)?;
        let fd = fd_node.fd();
        let st = if a.flags & args::GETATTR_FH != 0 {
            match self.fh_fd(a.fh) {
                Ok(f) => sys::fstat(f)?,
                Err(_) => sys::fstat(fd)?,
            }
        } else {
            sys::fstat(fd)?
        };
        let attr = self.attr(fd, &st);
        self.attr_out(w, &attr);
        Ok(())
    }

    /// READLINK: a symbolic link's target.
    pub(in crate::server) fn op_readlink(&self, h: &InHeader, w: &mut Writer) -> SysResult<()> {
        let fd_node = self.node_fd(h.nodeid)?;
        let fd = fd_node.fd();
        let start = w.buf.len();
        w.zeros(libc::PATH_MAX as usize);
        let n = sys::readlink_fd(fd, &mut w.buf[start..])?;
        w.buf.truncate(start + n);
        Ok(())
    }

    /// STATFS: the backing file system's figures.
    pub(in crate::server) fn op_statfs(&self, w: &mut Writer) -> SysResult<()> {
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
        Ok(())
    }

    pub(in crate::server) fn attr(&self, fd: RawFd, st: &libc::stat) -> Attr {
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
    pub(in crate::server) fn fake_dev(&self, fd: RawFd, st: &libc::stat) -> Option<(u32, u32)> {
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

    pub(in crate::server) fn attr_out(&self, w: &mut Writer, attr: &Attr) {
        w.u64(self.ttl.secs).u32(self.ttl.nsecs).u32(0);
        attr.encode(w);
    }

    /// SETATTR: mode, owner, size and times, answered with the new attributes. Set-id
    /// bits end as the caller's own change would leave them ([`Fs::settle_setid_bits`]).
    pub(in crate::server) fn op_setattr(
        &self,
        h: &InHeader,
        a: args::Setattr,
        w: &mut Writer,
    ) -> SysResult<()> {
        let args::Setattr {
            valid,
            fh,
            size,
            atime,
            mtime,
            atimensec,
            mtimensec,
            mode,
            uid,
            gid,
        } = a;
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
}
