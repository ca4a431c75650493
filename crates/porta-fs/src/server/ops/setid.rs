//! Set-user-id and set-group-id bits after writes, truncates and chowns: the server
//! leaves them as the caller's own change would have (the kernel tells it whether the
//! caller has CAP_FSETID).

use std::os::fd::RawFd;

use super::super::nodes::FdName;
use super::super::Fs;
use super::xattr::DEV_XATTR;
use crate::abi::{self, Writer};
use crate::sys::{self, SysResult};

/// The permission bits `mode` (with set-id bits) of a non-directory after a change that
/// kills set-id bits for a caller of group `caller_gid`, the file's group being
/// `file_gid`: set-user-id goes; set-group-id goes where the group may execute or the
/// caller is not of the file's group (the kernel's rule; supplementary groups and
/// CAP_FSETID are not known to the server, so such callers lose it too).
pub(in crate::server) fn killed_setid(mode: u32, file_gid: u32, caller_gid: u32) -> u32 {
    if mode & 0o010 != 0 || file_gid != caller_gid {
        mode & !0o6000
    } else {
        mode & !0o4000
    }
}

impl Fs {
    /// The permission bits of `fd` when it has a set-user-id or set-group-id bit, else 0.
    pub(in crate::server) fn setid_bits(&self, fd: RawFd) -> u32 {
        match sys::fstat(fd) {
            Ok(st) if st.st_mode & 0o6000 != 0 => st.st_mode & 0o7777,
            _ => 0,
        }
    }

    /// Runs `op`, a write, truncate or allocation of node `nodeid` (open as `fd`) for a
    /// caller of group `gid`, then leaves the set-id bits as the caller's own would have
    /// ([`Fs::settle_setid_bits`]); untouched when `op` fails.
    pub(in crate::server) fn settling_setid_bits<T>(
        &self,
        nodeid: u64,
        gid: u32,
        fd: RawFd,
        kill: bool,
        op: impl FnOnce() -> SysResult<T>,
    ) -> SysResult<T> {
        let mode = self.setid_bits(fd);
        let r = op()?;
        self.settle_setid_bits(nodeid, gid, fd, mode, kill);
        Ok(r)
    }

    /// Leaves the set-id bits of node `nodeid` (open as `fd`) after the server's write or
    /// truncate for a caller of group `gid` as the caller's own would have: `mode` (from
    /// [`Fs::setid_bits`]) as they were before, `kill` when the kernel says the caller has
    /// no CAP_FSETID (`KILL_SUIDGID`, asked for with `HANDLE_KILLPRIV_V2`). Killed:
    /// set-user-id, and set-group-id where the group may execute or the caller's group is
    /// not the file's (the kernel's rule; supplementary groups are not known here, so a
    /// member through one loses it too); the kernel is told that the node's attributes
    /// changed (with the writeback cache it would keep showing the old mode). Kept
    /// otherwise: the server, without CAP_FSETID in the initial user namespace, has the
    /// backing file system clear them for privileged callers too.
    pub(in crate::server) fn settle_setid_bits(
        &self,
        nodeid: u64,
        gid: u32,
        fd: RawFd,
        mode: u32,
        kill: bool,
    ) {
        if mode == 0 {
            return;
        }
        if let Ok(st) = sys::fstat(fd) {
            let want = if kill {
                killed_setid(mode, st.st_gid, gid)
            } else {
                mode
            };
            if st.st_mode & 0o7777 != want
                && sys::chmodat(self.proc_fd, FdName::new(b"", fd).cstr(), want).is_ok()
                && kill
            {
                let mut w = Writer::default();
                abi::encode_inval_inode(&mut w, nodeid);
                match sys::write(self.fuse, &w.buf) {
                    Ok(_) | Err(libc::ENOENT) | Err(libc::ENODEV) => {}
                    Err(e) => tracing::debug!(errno = e, "FUSE_NOTIFY_INVAL_INODE failed"),
                }
            }
        }
    }

    /// Clears the set-id bits of a device node stored as a regular file (`fd`, emulated
    /// mode `dmode`, device `rdev`) as a chown by a caller of group `gid` clears them on a
    /// real node ([`killed_setid`]): the backing file's own mode never has them.
    pub(in crate::server) fn kill_fake_dev_setid(
        &self,
        fd: RawFd,
        dmode: u32,
        rdev: u32,
        gid: u32,
    ) -> SysResult<()> {
        if dmode & 0o6000 == 0 {
            return Ok(());
        }
        let file_gid = sys::fstat(fd)?.st_gid;
        let perm = killed_setid(dmode & 0o7777, file_gid, gid);
        let v = format!("{:o} {rdev}", (dmode & libc::S_IFMT) | perm);
        self.xset(fd, DEV_XATTR, v.as_bytes(), 0)
    }
}
