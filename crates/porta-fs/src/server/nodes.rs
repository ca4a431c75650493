//! Nodes: ids (descriptor nodes and cold nodes, see [`crate::shared::NodeRef`]), the
//! index by backing inode, lookups that count, cold nodes opened by name, pins, FORGET,
//! and the rebuilding of the index by a new server.

use std::collections::HashMap;
use std::ffi::CStr;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::ops::attr::may_be_fake_dev;
use super::scratch::Scratch;
use super::Fs;
use crate::abi::{self, Attr};
use crate::evict::Method;
use crate::listing::Streams;
use crate::shared::{self, cold, kind, NodeEntry, NodeRef};
use crate::sys::{self, SysResult};

/// The directory node id and the name a node was last looked up under.
pub(super) type NameRec = (u64, Box<[u8]>);

/// Node ids by backing (st_dev, st_ino). A new server rebuilds it from the shared tables
/// before it serves, so its hasher is a cheap multiply-rotate one (inode numbers are
/// chosen by the backing file system, not by the container): hashing was most of a
/// restart's time with many nodes.
pub(super) type InodeMap = HashMap<(u64, u64), u64, std::hash::BuildHasherDefault<InodeHasher>>;

/// The hasher of [`InodeMap`].
#[derive(Default)]
pub(super) struct InodeHasher(u64);

impl std::hash::Hasher for InodeHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    fn write_u64(&mut self, x: u64) {
        self.0 = (self.0.rotate_left(5) ^ x).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
}

/// Nodes by backing inode, and the free cold entries.
pub(super) struct Inodes {
    /// (st_dev, st_ino) -> node id: one node per backing inode (hard links share it).
    pub(super) by_inode: InodeMap,
    /// Free cold entries below `cold_next`.
    pub(super) cold_free: Vec<usize>,
    /// The next cold entry never used.
    pub(super) cold_next: usize,
}

/// Longest chain of cold directories opened to reach one cold node (a guard against a
/// corrupted table; real chains end at a node with a descriptor long before).
pub(super) const MAX_COLD_CHAIN: usize = 1 << 16;

/// A node's descriptor for one request: its own, or (a cold node) one opened by name
/// for this request.
pub(super) enum NodeFd {
    Held(RawFd),
    Opened(Scratch),
}

impl NodeFd {
    pub(super) fn fd(&self) -> RawFd {
        match self {
            NodeFd::Held(fd) => *fd,
            NodeFd::Opened(f) => f.as_raw_fd(),
        }
    }
}

/// A stack-built decimal descriptor name ("123") or /proc path ("/proc/self/fd/123").
pub(super) struct FdName {
    buf: [u8; 40],
    len: usize,
}

impl FdName {
    pub(super) fn new(prefix: &[u8], fd: RawFd) -> FdName {
        let mut buf = [0u8; 40];
        buf[..prefix.len()].copy_from_slice(prefix);
        let mut digits = [0u8; 12];
        let mut n = fd.max(0) as u32;
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        let d = &digits[i..];
        buf[prefix.len()..prefix.len() + d.len()].copy_from_slice(d);
        FdName {
            buf,
            len: prefix.len() + d.len() + 1,
        }
    }
    pub(super) fn cstr(&self) -> &CStr {
        CStr::from_bytes_with_nul(&self.buf[..self.len]).unwrap_or(c"")
    }
}

pub(super) fn proc_path(fd: RawFd) -> FdName {
    FdName::new(b"/proc/self/fd/", fd)
}

impl Fs {
    /// The descriptor of a node for one request: the root's, a descriptor node's own, or
    /// a cold node opened by name (ESTALE when the name no longer names its inode).
    pub(super) fn node_fd(&self, nodeid: u64) -> SysResult<NodeFd> {
        if nodeid == abi::ROOT_ID {
            return Ok(NodeFd::Held(self.root));
        }
        match NodeRef::of(nodeid).ok_or(libc::ESTALE)? {
            NodeRef::Hot(fd) if fd != self.root && self.sh.kind(fd) == kind::NODE => {
                Ok(NodeFd::Held(fd))
            }
            NodeRef::Hot(_) => Err(libc::ESTALE),
            NodeRef::Cold(i) => self.open_cold(i),
        }
    }

    /// Opens cold node `i`: walks up its recorded parents to the nearest node with a
    /// descriptor (or pin), then opens each name beneath it with O_NOFOLLOW, checking
    /// that every step is still the inode it was recorded as.
    pub(super) fn open_cold(&self, i: usize) -> SysResult<NodeFd> {
        // (name with its NUL, st_ino, st_dev, file type) from the node up.
        let mut chain: Vec<(std::ffi::CString, u64, u64, u64)> = Vec::new();
        let mut buf = [0u8; cold::NAME_MAX];
        let mut at = i;
        let base = loop {
            let e = match self.sh.cold_node(at) {
                Some(e) if e.kind() == kind::NODE => e,
                _ => return Err(libc::ESTALE),
            };
            let (dev, ino) = e.inode_key();
            let ftype = e.file_type().unwrap_or(0);
            let pin = e.pin().map_or(0, |p| p.load(Ordering::Acquire));
            if pin != 0 && self.sh.kind((pin - 1) as RawFd) == kind::PIN {
                break NodeFd::Held((pin - 1) as RawFd);
            }
            let (parent, len) = self.sh.cold_name(at, &mut buf);
            let name = &buf[..len];
            // One component, as LOOKUP accepted it (the table is Porta's own memory; this
            // only keeps a damaged entry from walking anywhere).
            if len == 0
                || name == b"."
                || name == b".."
                || name.contains(&b'/')
                || chain.len() >= MAX_COLD_CHAIN
            {
                return Err(libc::ESTALE);
            }
            let cname = std::ffi::CString::new(name).map_err(|_| libc::ESTALE)?;
            chain.push((cname, ino, dev, ftype));
            match NodeRef::of(parent) {
                Some(NodeRef::Cold(p)) => at = p,
                _ => break self.node_fd(parent)?,
            }
        };
        let mut cur = base;
        for (cname, ino, dev, ftype) in chain.iter().rev() {
            let fd = match sys::openat(cur.fd(), cname, libc::O_PATH | libc::O_NOFOLLOW, 0) {
                Ok(fd) => self.scratch(fd),
                Err(libc::ENOENT) | Err(libc::ENOTDIR) => return Err(libc::ESTALE),
                Err(e) => return Err(e),
            };
            let st = sys::fstat(fd.as_raw_fd())?;
            // Inode numbers can be reused at once: the type is checked too (a file
            // replaced from the host by a symlink with its number is not served).
            if st.st_ino != *ino
                || st.st_dev != *dev
                || u64::from(st.st_mode & libc::S_IFMT) != *ftype
            {
                return Err(libc::ESTALE);
            }
            cur = NodeFd::Opened(fd);
        }
        Ok(cur)
    }

    /// The table entry of a node (the root's included).
    pub(super) fn node_entry(&self, nodeid: u64) -> Option<NodeEntry<'_>> {
        if nodeid == abi::ROOT_ID {
            return self.sh.hot_node(self.root);
        }
        self.sh.node_entry(nodeid)
    }

    pub(super) fn nodeid(&self, fd: RawFd) -> u64 {
        if fd == self.root {
            abi::ROOT_ID
        } else {
            NodeRef::Hot(fd).id()
        }
    }

    pub(super) fn fh_fd(&self, fh: u64) -> SysResult<RawFd> {
        if fh > i32::MAX as u64 {
            return Err(libc::EBADF);
        }
        let fd = fh as RawFd;
        match self.sh.kind(fd) {
            kind::FILE => Ok(fd),
            _ => Err(libc::EBADF),
        }
    }

    /// Looks `name` up beneath `parent` (node `parent_id`; one component, never
    /// following a symlink) and returns its node id (its lookup count raised by one) and
    /// attributes. A new node gets a descriptor while the table is below its high-water
    /// mark (a directory: below its maximum), else it is cold.
    pub(super) fn lookup(
        &self,
        parent_id: u64,
        parent: RawFd,
        name: &CStr,
    ) -> SysResult<(u64, Attr)> {
        let may_be_cold = self.sh.cold_capacity() > 0 && name.to_bytes().len() <= cold::NAME_MAX;
        if !may_be_cold || self.sh.live() < self.budget.high {
            return self.lookup_hot(parent_id, parent, name);
        }
        let st = sys::statat(parent, name)?;
        if st.st_mode & libc::S_IFMT == libc::S_IFDIR && self.sh.live() < self.budget.max {
            return self.lookup_hot(parent_id, parent, name);
        }
        let key = (st.st_dev, st.st_ino);
        let mut nodes = self.inodes.lock().map_err(|_| libc::EIO)?;
        let id = match self.counted_again(&nodes, key, parent_id, name) {
            Some(id) => id,
            None => {
                if self.sh.cold_live() >= self.cold_budget.max {
                    drop(nodes);
                    self.evict.request();
                    if self.sh.live() < self.budget.max {
                        return self.lookup_hot(parent_id, parent, name);
                    }
                    tracing::debug!(cold = self.sh.cold_live(), "node tables full: ENFILE");
                    return Err(libc::ENFILE);
                }
                let i = match nodes.cold_free.pop() {
                    Some(i) => i,
                    None if nodes.cold_next < self.sh.cold_capacity() => {
                        nodes.cold_next += 1;
                        nodes.cold_next - 1
                    }
                    None => return Err(libc::ENFILE),
                };
                let ftype = st.st_mode & libc::S_IFMT;
                if !self.sh.cold_publish(
                    i,
                    1,
                    st.st_ino,
                    st.st_dev,
                    ftype,
                    parent_id,
                    name.to_bytes(),
                ) {
                    nodes.cold_free.push(i);
                    return Err(libc::ENFILE);
                }
                let id = NodeRef::Cold(i).id();
                if let Some(e) = self.sh.cold_node(i) {
                    e.last_use().store(self.sh.next_epoch(), Ordering::Relaxed);
                }
                self.sh.dev_index(st.st_dev);
                nodes.by_inode.insert(key, id);
                if self.sh.cold_live() > self.cold_budget.high {
                    self.evict.request();
                }
                id
            }
        };
        drop(nodes);
        Ok((id, self.attr_at(parent, name, &st)))
    }

    /// When backing inode `key` already has a node: counts one more lookup of it, stamps
    /// it as used, records `name` in `parent_id` as its name if it is cold (the name the
    /// kernel last found it under), and returns its id. Called with the node lock held.
    pub(super) fn counted_again(
        &self,
        nodes: &Inodes,
        key: (u64, u64),
        parent_id: u64,
        name: &CStr,
    ) -> Option<u64> {
        let id = *nodes.by_inode.get(&key)?;
        let e = self.node_entry(id)?;
        e.lookups().fetch_add(1, Ordering::AcqRel);
        e.touch(self.sh.epoch());
        if let Some(NodeRef::Cold(i)) = NodeRef::of(id) {
            self.sh.cold_set_name(i, parent_id, name.to_bytes());
        }
        Some(id)
    }

    /// [`Fs::lookup`] for a node with a descriptor of its own.
    pub(super) fn lookup_hot(
        &self,
        parent_id: u64,
        parent: RawFd,
        name: &CStr,
    ) -> SysResult<(u64, Attr)> {
        if self.sh.live() >= self.budget.max {
            self.wait_for_room();
        }
        let fd = self.scratch(sys::openat(
            parent,
            name,
            libc::O_PATH | libc::O_NOFOLLOW,
            0,
        )?);
        let st = sys::fstat(fd.as_raw_fd())?;
        let key = (st.st_dev, st.st_ino);
        let mut nodes = self.inodes.lock().map_err(|_| libc::EIO)?;
        let id = match self.counted_again(&nodes, key, parent_id, name) {
            Some(id) => id,
            None => {
                // (The descriptor, a scratch one until published, is counted already.)
                let own = usize::from(self.sh.kind(fd.as_raw_fd()) == kind::SCRATCH);
                if self.sh.live().saturating_sub(own) >= self.budget.max {
                    // Everything the budget allows is in use (or eviction lags behind):
                    // refuse this node rather than the descriptors open files need.
                    self.evict.request();
                    tracing::debug!(live = self.sh.live(), "node table full: ENFILE");
                    return Err(libc::ENFILE);
                }
                let raw = fd.into_raw_fd();
                if raw == self.root || !self.sh.publish(raw, kind::NODE, 1, st.st_ino, st.st_dev) {
                    sys::close(raw);
                    return Err(libc::ENFILE);
                }
                self.sh.touch(raw, self.sh.next_epoch());
                self.sh.dev_index(st.st_dev);
                if self.sh.fd_table_filling(raw) {
                    self.evict.request();
                }
                let id = self.nodeid(raw);
                nodes.by_inode.insert(key, id);
                if self.sh.live() > self.budget.high {
                    self.evict.request();
                }
                drop(nodes);
                return self.hot_found(id, raw, parent_id, name, &st);
            }
        };
        let held = match NodeRef::of(id) {
            Some(NodeRef::Hot(fd)) => fd,
            _ if id == abi::ROOT_ID => self.root,
            // A cold node found again: its attributes through the descriptor just opened.
            _ => {
                drop(nodes);
                return Ok((id, self.attr(fd.as_raw_fd(), &st)));
            }
        };
        drop(fd);
        drop(nodes);
        self.hot_found(id, held, parent_id, name, &st)
    }

    /// The end of a [`Fs::lookup_hot`]: records the name for the fallback eviction and
    /// returns the node's id and attributes.
    pub(super) fn hot_found(
        &self,
        id: u64,
        fd: RawFd,
        parent_id: u64,
        name: &CStr,
        st: &libc::stat,
    ) -> SysResult<(u64, Attr)> {
        if self.evict.method() == Method::InvalEntry {
            if let Ok(mut names) = self.names.lock() {
                names.insert(id, (parent_id, name.to_bytes().into()));
            }
        }
        Ok((id, self.attr(fd, st)))
    }

    /// Attributes of `name` in `parent` from its `stat` (opening it only to read a
    /// stored device node's xattr).
    pub(super) fn attr_at(&self, parent: RawFd, name: &CStr, st: &libc::stat) -> Attr {
        if may_be_fake_dev(st) {
            if let Ok(f) = sys::openat(parent, name, libc::O_PATH | libc::O_NOFOLLOW, 0) {
                let f = self.scratch(f);
                return self.attr(f.as_raw_fd(), st);
            }
        }
        self.attr(-1, st)
    }

    /// Before `name` in directory node `parent_id` goes away (unlink, rmdir, or replaced
    /// by a rename): a cold node recorded under that name gets a descriptor of its own (a
    /// *pin*), so the kernel can still use it (an open file, another hard link).
    pub(super) fn pin_if_named(&self, parent_id: u64, parent: RawFd, name: &CStr) {
        if self.sh.cold_live() == 0 {
            return;
        }
        let Ok(st) = sys::statat(parent, name) else {
            return;
        };
        let Ok(nodes) = self.inodes.lock() else {
            return;
        };
        let Some(&id) = nodes.by_inode.get(&(st.st_dev, st.st_ino)) else {
            return;
        };
        let (Some(NodeRef::Cold(i)), Some(pin)) =
            (NodeRef::of(id), self.node_entry(id).and_then(|e| e.pin()))
        else {
            return;
        };
        if pin.load(Ordering::Acquire) != 0 || !self.cold_named(i, parent_id, name) {
            return;
        }
        let fd = match sys::openat(parent, name, libc::O_PATH | libc::O_NOFOLLOW, 0) {
            Ok(fd) => self.scratch(fd),
            Err(errno) => {
                tracing::debug!(errno, "cold node not pinned");
                return;
            }
        };
        match sys::fstat(fd.as_raw_fd()) {
            Ok(s) if s.st_ino == st.st_ino && s.st_dev == st.st_dev => {}
            _ => return,
        }
        let raw = fd.into_raw_fd();
        if !self.sh.publish(raw, kind::PIN, id, 0, 0) {
            sys::close(raw);
            return;
        }
        pin.store(raw as u64 + 1, Ordering::Release);
        drop(nodes);
    }

    /// After a rename of `from` (directory node id, descriptor, name) to `to`: a cold
    /// node recorded under the old name is recorded under the new one. Also right for a
    /// resent rename whose first run moved the file.
    pub(super) fn renamed(&self, from: (u64, RawFd, &CStr), to: (u64, RawFd, &CStr)) {
        if self.sh.cold_live() == 0 {
            return;
        }
        let Ok(st) = sys::statat(to.1, to.2) else {
            return;
        };
        let Ok(nodes) = self.inodes.lock() else {
            return;
        };
        let Some(&id) = nodes.by_inode.get(&(st.st_dev, st.st_ino)) else {
            return;
        };
        if let Some(NodeRef::Cold(i)) = NodeRef::of(id) {
            if self.cold_named(i, from.0, from.2) {
                self.sh.cold_set_name(i, to.0, to.2.to_bytes());
            }
        }
        drop(nodes);
    }

    /// Whether cold node `i` is recorded as `name` in directory node `parent_id`.
    pub(super) fn cold_named(&self, i: usize, parent_id: u64, name: &CStr) -> bool {
        let mut buf = [0u8; cold::NAME_MAX];
        let (p, len) = self.sh.cold_name(i, &mut buf);
        p == parent_id && &buf[..len] == name.to_bytes()
    }

    /// Stamps a node as used now (after each request naming it).
    pub(super) fn touch(&self, nodeid: u64) {
        if let Some(e) = self.sh.node_entry(nodeid) {
            e.touch(self.sh.epoch());
        }
    }

    /// Whether a directory listing (READDIRPLUS) may add nodes: below the high-water mark
    /// of the descriptor table or of the cold table.
    pub(super) fn room_for_listing(&self) -> bool {
        self.sh.live() <= self.budget.high
            || (self.sh.cold_capacity() > 0 && self.sh.cold_live() <= self.cold_budget.high)
    }

    /// Fails with ENFILE when a new node does not fit, even after waiting briefly for
    /// the eviction.
    pub(super) fn room_for_node(&self) -> SysResult<()> {
        if self.sh.cold_live() < self.cold_budget.max {
            return Ok(()); // it can be cold
        }
        if self.sh.live() >= self.budget.max && !self.wait_for_room() {
            return Err(libc::ENFILE);
        }
        Ok(())
    }

    /// Wakes the eviction and waits up to 50 ms for the table to drop below its
    /// maximum (the other request thread reads the kernel's FORGETs meanwhile). Called
    /// with no lock held.
    pub(super) fn wait_for_room(&self) -> bool {
        for _ in 0..50 {
            self.evict.request();
            std::thread::sleep(Duration::from_millis(1));
            if self.sh.live() < self.budget.max {
                return true;
            }
        }
        false
    }

    /// Rebuilds the (device, inode) -> node index, the free cold entries and the idle
    /// listing streams from the shared tables, recounts the entries in use, then opens
    /// `indexed`. Runs once, on the eviction thread, while the request threads already
    /// serve what needs none of it ([`index_free`]): none of those changes the tables.
    pub(super) fn rebuild_index(&self) {
        let sh = self.sh;
        let mut map =
            InodeMap::with_capacity_and_hasher(sh.live() + sh.cold_live(), Default::default());
        let mut streams = Streams::default();
        // Open files per node (see `Fs::open_io`), recounted from the handles in the table.
        let mut opens: HashMap<u64, u64> = HashMap::new();
        // Spare files the previous server left, and every backing id nodes record.
        let mut spares = Vec::new();
        let mut node_ids = std::collections::HashSet::new();
        // Descriptors a killed server held for a request in progress, and listings whose
        // first READDIR it never answered (none goes on from offset 0: the kernel asks
        // again from 0, and that opens a new stream).
        let mut dropped = 0;
        for fd in 0..sh.scan_end() {
            let (Some(node), Some(file), Some(stream)) =
                (sh.hot_node(fd), sh.file(fd), sh.stream(fd))
            else {
                break;
            };
            match sh.kind(fd) {
                kind::FILE if self.passthrough => {
                    let one = if file.served() {
                        shared::SERVED_OPEN
                    } else {
                        1
                    };
                    *opens.entry(file.node()).or_default() += one;
                }
                kind::STREAM if stream.offset() == 0 => {
                    sh.free(fd);
                    sys::close(fd);
                    dropped += 1;
                }
                kind::STREAM => streams.add(fd, stream.inode_key(), stream.offset(), false),
                kind::SCRATCH => dropped += usize::from(self.close_scratch_of_the_dead(fd)),
                kind::SPARE => spares.push(fd),
                kind::NODE => {
                    node_ids.insert(node.backing().load(Ordering::Acquire));
                    let id = if fd == self.root {
                        abi::ROOT_ID
                    } else {
                        NodeRef::Hot(fd).id()
                    };
                    map.insert(node.inode_key(), id);
                }
                _ => {}
            }
        }
        let cold_next = sh.cold_scan_end();
        let mut cold_free = Vec::new();
        let cold_live = sh.cold_recount(|i, e| match e {
            Some(e) => {
                map.insert(shared::inode_key(e), NodeRef::Cold(i).id());
            }
            None => cold_free.push(i),
        });
        cold_free.reverse();
        if self.passthrough {
            for &id in map.values() {
                if let Some(e) = sh.node_entry(id) {
                    e.opens()
                        .store(opens.get(&id).copied().unwrap_or(0), Ordering::Release);
                }
            }
        }
        let cold_ids = (0..sh.cold_scan_end())
            .filter_map(|i| sh.node_entry(NodeRef::Cold(i).id()))
            .map(|e| e.backing().load(Ordering::Acquire));
        node_ids.extend(cold_ids);
        self.adopt_spares(&spares, &node_ids);
        for fd in streams.trim() {
            sh.free(fd);
            sys::close(fd);
            dropped += 1;
        }
        if dropped > 0 {
            tracing::info!(
                dropped,
                "closed the descriptors a killed server held for requests in progress"
            );
        }
        let live = sh.recount();
        let indexed = map.len();
        {
            let mut nodes = self.inodes.lock().unwrap_or_else(|p| p.into_inner());
            *nodes = Inodes {
                by_inode: map,
                cold_free,
                cold_next,
            };
        }
        *self.lock_streams() = streams;
        self.indexed.open();
        tracing::debug!(live, cold_live, indexed, budget = ?self.budget, cold_budget = ?self.cold_budget, "node index rebuilt");
    }

    pub(super) fn forget(&self, nodeid: u64, n: u64) {
        let node = match NodeRef::of(nodeid) {
            Some(NodeRef::Hot(fd)) if fd == self.root => return,
            Some(node) => node,
            None => return,
        };
        let Ok(mut nodes) = self.inodes.lock() else {
            return;
        };
        let Some(e) = self.sh.node_entry(nodeid) else {
            return;
        };
        let left = e.lookups().load(Ordering::Acquire).saturating_sub(n);
        if left > 0 {
            e.lookups().store(left, Ordering::Release);
            return;
        }
        let key = e.inode_key();
        if nodes.by_inode.get(&key) == Some(&nodeid) {
            nodes.by_inode.remove(&key);
        }
        if self.evict.method() == Method::InvalEntry {
            if let Ok(mut names) = self.names.lock() {
                names.remove(&nodeid);
            }
        }
        self.drop_backing(e);
        match node {
            NodeRef::Hot(fd) => {
                self.sh.free(fd);
                sys::close(fd);
            }
            NodeRef::Cold(i) => {
                let pin = e.pin().map_or(0, |p| p.swap(0, Ordering::AcqRel));
                if pin != 0 && self.sh.kind((pin - 1) as RawFd) == kind::PIN {
                    self.sh.free((pin - 1) as RawFd);
                    sys::close((pin - 1) as RawFd);
                }
                self.sh.cold_free(i);
                nodes.cold_free.push(i);
            }
        }
    }
}
