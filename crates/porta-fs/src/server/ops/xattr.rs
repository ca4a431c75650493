//! Extended attributes: SETXATTR, GETXATTR, LISTXATTR, REMOVEXATTR, with the names
//! the server reserves for itself hidden from the container.

use std::ffi::CStr;
use std::os::fd::RawFd;

use super::super::nodes::{proc_path, FdName, NodeFd};
use super::super::Fs;
use crate::abi::{args, InHeader, Writer};
use crate::sys::{self, SysResult};
use crate::translator::PASSIVE_XATTR;

/// Extended attribute recording a device node stored as a regular file.
pub(in crate::server) const DEV_XATTR: &CStr = c"user.porta.dev";

/// Prefix of the extended attributes reserved to the server (hidden from the container).
pub(in crate::server) const RESERVED_XATTR_PREFIX: &[u8] = b"user.porta.";

pub(in crate::server) fn reserved_xattr(name: &[u8]) -> bool {
    name.starts_with(RESERVED_XATTR_PREFIX)
}

impl Fs {
    /// SETXATTR (names under the server's reserved prefix are refused).
    pub(in crate::server) fn op_setxattr(
        &self,
        h: &InHeader,
        a: args::Setxattr,
        w: &mut Writer,
    ) -> SysResult<()> {
        if let Some(r) = self.node_record(h, a.name.to_bytes(), Some(a.value), w) {
            return r;
        }
        if reserved_xattr(a.name.to_bytes()) {
            return Err(libc::EPERM);
        }
        let node = self.xattr_fd(h.nodeid)?;
        self.xset(node.fd(), a.name, a.value, a.flags)
    }

    /// GETXATTR: a value, or its size (`size` 0). Symlinks and the server's reserved
    /// names have none.
    pub(in crate::server) fn op_getxattr(
        &self,
        h: &InHeader,
        a: args::Getxattr,
        w: &mut Writer,
    ) -> SysResult<()> {
        if let Some(r) = self.node_record(h, a.name.to_bytes(), Some(&a.size.to_ne_bytes()), w) {
            return r;
        }
        if reserved_xattr(a.name.to_bytes()) {
            return Err(libc::ENODATA);
        }
        let node = match self.xattr_fd(h.nodeid) {
            Ok(node) => node,
            Err(libc::EPERM) => return Err(libc::ENODATA),
            Err(e) => return Err(e),
        };
        let fd = node.fd();
        let size = a.size as usize;
        if size == 0 {
            let n = self.xget(fd, a.name, &mut [])?;
            w.u32(n as u32).u32(0);
        } else {
            let start = w.buf.len();
            w.zeros(size.min(1 << 16));
            let n = self.xget(fd, a.name, &mut w.buf[start..])?;
            w.buf.truncate(start + n);
        }
        Ok(())
    }

    /// LISTXATTR: the names (the server's reserved ones left out), or their size
    /// (`size` 0). A symlink has none.
    pub(in crate::server) fn op_listxattr(
        &self,
        h: &InHeader,
        a: args::Listxattr,
        w: &mut Writer,
    ) -> SysResult<()> {
        let size = a.size as usize;
        let node = match self.xattr_fd(h.nodeid) {
            Ok(node) => node,
            Err(libc::EPERM) => {
                if size == 0 {
                    w.u32(0).u32(0);
                }
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        let mut list = vec![0u8; 1 << 16];
        let n = self.xlist(node.fd(), &mut list)?;
        let mut out = Vec::with_capacity(n);
        for name in list[..n].split(|&c| c == 0).filter(|s| !s.is_empty()) {
            if !reserved_xattr(name) || name == PASSIVE_XATTR.as_bytes() {
                out.extend_from_slice(name);
                out.push(0);
            }
        }
        if size == 0 {
            w.u32(out.len() as u32).u32(0);
        } else if out.len() > size {
            return Err(libc::ERANGE);
        } else {
            w.bytes(&out);
        }
        Ok(())
    }

    /// REMOVEXATTR (the server's reserved names are not there for the container).
    pub(in crate::server) fn op_removexattr(
        &self,
        h: &InHeader,
        a: args::Removexattr,
    ) -> SysResult<()> {
        if let Some(r) = self.node_record(h, a.name.to_bytes(), None, &mut Writer::default()) {
            return r;
        }
        if reserved_xattr(a.name.to_bytes()) {
            return Err(libc::ENODATA);
        }
        let node = self.xattr_fd(h.nodeid)?;
        self.xremove(node.fd(), a.name)
    }

    // Extended attributes of a node, through its entry in the /proc/self/fd directory
    // descriptor (*xattrat, Linux 6.13: works without /proc in the server's mount
    // namespace), or through the /proc/self/fd path on older kernels.
    pub(in crate::server) fn xget(
        &self,
        fd: RawFd,
        name: &CStr,
        buf: &mut [u8],
    ) -> SysResult<usize> {
        match sys::getxattrat(self.proc_fd, FdName::new(b"", fd).cstr(), name, buf) {
            Err(libc::ENOSYS) => sys::getxattr(proc_path(fd).cstr(), name, buf),
            r => r,
        }
    }

    pub(in crate::server) fn xset(
        &self,
        fd: RawFd,
        name: &CStr,
        val: &[u8],
        flags: i32,
    ) -> SysResult<()> {
        match sys::setxattrat(self.proc_fd, FdName::new(b"", fd).cstr(), name, val, flags) {
            Err(libc::ENOSYS) => sys::setxattr(proc_path(fd).cstr(), name, val, flags),
            r => r,
        }
    }

    pub(in crate::server) fn xlist(&self, fd: RawFd, buf: &mut [u8]) -> SysResult<usize> {
        match sys::listxattrat(self.proc_fd, FdName::new(b"", fd).cstr(), buf) {
            Err(libc::ENOSYS) => sys::listxattr(proc_path(fd).cstr(), buf),
            r => r,
        }
    }

    pub(in crate::server) fn xremove(&self, fd: RawFd, name: &CStr) -> SysResult<()> {
        match sys::removexattrat(self.proc_fd, FdName::new(b"", fd).cstr(), name) {
            Err(libc::ENOSYS) => sys::removexattr(proc_path(fd).cstr(), name),
            r => r,
        }
    }

    /// A node descriptor on which path-based xattr calls are meaningful (not a symlink).
    pub(in crate::server) fn xattr_fd(&self, nodeid: u64) -> SysResult<NodeFd> {
        let node = self.node_fd(nodeid)?;
        let st = sys::fstat(node.fd())?;
        match st.st_mode & libc::S_IFMT {
            libc::S_IFLNK => Err(libc::EPERM),
            _ => Ok(node),
        }
    }
}
