//! Operations on names: LOOKUP and FORGET, the creations (SYMLINK, MKNOD, MKDIR,
//! LINK; CREATE is with the files), UNLINK, RMDIR and RENAME.

use std::ffi::CStr;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::Ordering;

use super::super::nodes::FdName;
use super::super::{Fs, CREATE_AS_CALLER};
use super::xattr::DEV_XATTR;
use crate::abi::{self, args, Attr, InHeader, Writer};
use crate::sys::{self, SysResult};

/// The calling thread's file-system ids before [`Fs::as_caller`]; restored on drop.
pub(in crate::server) struct FsIds {
    pub(in crate::server) uid: u32,
    pub(in crate::server) gid: u32,
}

impl Drop for FsIds {
    fn drop(&mut self) {
        sys::setfsuid(self.uid);
        sys::setfsgid(self.gid);
    }
}

/// The identity a file the caller `h` makes gets in a directory of mode `dir_mode` and
/// group `dir_gid`: the caller's uid, and its gid unless the directory is set-group-id.
pub(in crate::server) fn owner_in(h: &InHeader, dir_mode: u32, dir_gid: u32) -> (u32, u32) {
    if dir_mode & libc::S_ISGID != 0 {
        (h.uid, dir_gid)
    } else {
        (h.uid, h.gid)
    }
}

impl Fs {
    /// LOOKUP: the node of a name in a directory node (a negative entry, node id 0,
    /// when there is none: the kernel caches that too). True when the node carries a
    /// translator, which answers instead (with its root).
    pub(in crate::server) fn op_lookup(
        &self,
        h: &InHeader,
        a: args::Lookup,
        w: &mut Writer,
    ) -> SysResult<bool> {
        #[cfg(feature = "fault-injection")]
        self.inject_fault(a.name);
        let parent_node = self.node_fd(h.nodeid)?;
        let parent = parent_node.fd();
        match self.lookup(h.nodeid, parent, a.name) {
            Ok((id, attr)) => {
                if self.lookup_translated(h, h.nodeid, a.name, id, attr.mode) {
                    return Ok(true);
                }
                abi::encode_entry(w, id, 0, self.ttl, &attr)
            }
            Err(libc::ENOENT) => abi::encode_entry(w, 0, 0, self.ttl, &Attr::default()),
            Err(e) => return Err(e),
        }
        Ok(false)
    }

    /// FORGET: the kernel drops lookups of one node (never answered).
    pub(in crate::server) fn op_forget(&self, idx: usize, h: &InHeader, a: args::Forget) {
        self.forget_logged(idx, h.unique, &[(h.nodeid, a.nlookup)], 0);
    }

    /// BATCH_FORGET: FORGET for many nodes at once (never answered).
    pub(in crate::server) fn op_batch_forget(
        &self,
        idx: usize,
        h: &InHeader,
        a: args::BatchForget,
    ) {
        self.forget_logged(idx, h.unique, &a.entries, 0);
    }

    /// SYMLINK: a new symbolic link, answered with its node.
    pub(in crate::server) fn op_symlink(
        &self,
        h: &InHeader,
        a: args::Symlink,
        resent: bool,
        w: &mut Writer,
    ) -> SysResult<()> {
        let parent_node = self.node_fd(h.nodeid)?;
        let parent = parent_node.fd();
        self.room_for_node()?;
        let res = {
            let _ids = self.as_caller(h);
            sys::symlinkat(a.target, parent, a.name)
        };
        self.finish_new(h, parent, a.name, res, resent, w)
    }

    /// MKNOD: a new regular file, FIFO, socket or device node (stored as a regular
    /// file, see [`Fs::mknod`]), answered with its node.
    pub(in crate::server) fn op_mknod(
        &self,
        h: &InHeader,
        a: args::Mknod,
        resent: bool,
        w: &mut Writer,
    ) -> SysResult<()> {
        let parent_node = self.node_fd(h.nodeid)?;
        let parent = parent_node.fd();
        self.room_for_node()?;
        let res = {
            let _ids = self.as_caller(h);
            self.mknod(parent, a.name, a.mode, a.rdev)
        };
        self.finish_new(h, parent, a.name, res, resent, w)
    }

    /// MKDIR: a new directory, answered with its node.
    pub(in crate::server) fn op_mkdir(
        &self,
        h: &InHeader,
        a: args::Mkdir,
        resent: bool,
        w: &mut Writer,
    ) -> SysResult<()> {
        let parent_node = self.node_fd(h.nodeid)?;
        let parent = parent_node.fd();
        self.room_for_node()?;
        let res = {
            let _ids = self.as_caller(h);
            sys::mkdirat(parent, a.name, a.mode & 0o7777)
        };
        self.finish_new(h, parent, a.name, res, resent, w)
    }

    /// UNLINK (`flags` 0) and RMDIR (`AT_REMOVEDIR`). A cold node known by the name
    /// is pinned first, so the kernel can still use it.
    pub(in crate::server) fn op_unlink(
        &self,
        h: &InHeader,
        a: args::Unlink,
        flags: i32,
        resent: bool,
    ) -> SysResult<()> {
        let parent_node = self.node_fd(h.nodeid)?;
        let parent = parent_node.fd();
        self.pin_if_named(h.nodeid, parent, a.name);
        match sys::unlinkat(parent, a.name, flags) {
            Ok(()) => Ok(()),
            Err(libc::ENOENT) if resent => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// RENAME and RENAME2. For RENAME_EXCHANGE the journal entry of thread `idx` holds
    /// the two inode numbers before the swap, so that a resent copy can tell whether the
    /// first run swapped them already.
    pub(in crate::server) fn op_rename(
        &self,
        idx: usize,
        h: &InHeader,
        a: args::Rename,
        resent: bool,
    ) -> SysResult<()> {
        let (old, new, newdir) = (a.old, a.new, a.newdir);
        let od_node = self.node_fd(h.nodeid)?;
        let od = od_node.fd();
        let nd_node = self.node_fd(newdir)?;
        let nd = nd_node.fd();
        let exchange = a.flags & libc::RENAME_EXCHANGE != 0;
        if exchange {
            if resent && self.exchange_already_done(h, od, old) {
                return Ok(());
            }
            if let (Ok(x), Ok(y)) = (sys::statat(od, old), sys::statat(nd, new)) {
                self.record_exchange(idx, x.st_ino, y.st_ino);
            }
        } else {
            self.pin_if_named(newdir, nd, new);
        }
        match sys::renameat2(od, old, nd, new, a.flags) {
            Ok(()) => {}
            Err(libc::ENOENT) if resent && sys::statat(nd, new).is_ok() => {}
            Err(e) => return Err(e),
        }
        self.renamed((h.nodeid, od, old), (newdir, nd, new));
        if exchange {
            self.renamed((newdir, nd, new), (h.nodeid, od, old));
        }
        Ok(())
    }

    /// LINK: a new name for a node, answered with the node.
    pub(in crate::server) fn op_link(
        &self,
        h: &InHeader,
        a: args::Link,
        resent: bool,
        w: &mut Writer,
    ) -> SysResult<()> {
        let ofd_node = self.node_fd(a.oldnodeid)?;
        let ofd = ofd_node.fd();
        let parent_node = self.node_fd(h.nodeid)?;
        let parent = parent_node.fd();
        let src = FdName::new(b"", ofd);
        let res = sys::linkat(
            self.proc_fd,
            src.cstr(),
            parent,
            a.name,
            libc::AT_SYMLINK_FOLLOW,
        );
        match res {
            Ok(()) => {}
            Err(libc::EEXIST) if resent => {}
            Err(e) => return Err(e),
        }
        let (id, attr) = self.lookup(h.nodeid, parent, a.name)?;
        abi::encode_entry(w, id, 0, self.ttl, &attr);
        Ok(())
    }

    /// Switches the thread's file-system ids to the caller's for one creation (when
    /// enabled); the kernel then applies the set-group-id directory rule itself.
    pub(in crate::server) fn as_caller(&self, h: &InHeader) -> Option<FsIds> {
        if !CREATE_AS_CALLER.load(Ordering::Relaxed) {
            return None;
        }
        let gid = sys::setfsgid(h.gid);
        let uid = sys::setfsuid(h.uid);
        Some(FsIds { uid, gid })
    }

    /// The identity a new file gets: the caller's uid, and its gid unless the parent
    /// directory is set-group-id.
    pub(in crate::server) fn owner(&self, h: &InHeader, parent: RawFd) -> SysResult<(u32, u32)> {
        let pst = sys::fstat(parent)?;
        Ok(owner_in(h, pst.st_mode, pst.st_gid))
    }

    pub(in crate::server) fn finish_new(
        &self,
        h: &InHeader,
        parent: RawFd,
        name: &CStr,
        res: SysResult<()>,
        resent: bool,
        w: &mut Writer,
    ) -> SysResult<()> {
        match res {
            Ok(()) => {}
            Err(libc::EEXIST) if resent => {}
            Err(e) => return Err(e),
        }
        let (uid, gid) = self.owner(h, parent)?;
        let st = sys::statat(parent, name)?;
        if st.st_uid != uid || st.st_gid != gid {
            sys::chownat(parent, name, uid, gid)?;
        }
        let (id, attr) = self.lookup(h.nodeid, parent, name)?;
        abi::encode_entry(w, id, 0, self.ttl, &attr);
        Ok(())
    }

    pub(in crate::server) fn mknod(
        &self,
        parent: RawFd,
        name: &CStr,
        mode: u32,
        rdev: u32,
    ) -> SysResult<()> {
        let perm = mode & 0o7777;
        match mode & libc::S_IFMT {
            libc::S_IFREG => {
                let f = sys::openat(
                    parent,
                    name,
                    libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY | libc::O_NOFOLLOW,
                    perm,
                )?;
                drop(self.scratch(f));
                Ok(())
            }
            libc::S_IFIFO | libc::S_IFSOCK => sys::mknodat(parent, name, mode, 0),
            libc::S_IFCHR | libc::S_IFBLK => {
                // No CAP_MKNOD: store the node as an empty sticky regular file + xattr.
                let f = self.scratch(sys::openat(
                    parent,
                    name,
                    libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY | libc::O_NOFOLLOW,
                    0o1600,
                )?);
                let fd = f.as_raw_fd();
                sys::chmodat(self.proc_fd, FdName::new(b"", fd).cstr(), 0o1600)?;
                let v = format!("{mode:o} {rdev}");
                if let Err(e) = self.xset(fd, DEV_XATTR, v.as_bytes(), 0) {
                    let _ = sys::unlinkat(parent, name, 0);
                    return Err(e);
                }
                Ok(())
            }
            _ => Err(libc::EINVAL),
        }
    }
}
