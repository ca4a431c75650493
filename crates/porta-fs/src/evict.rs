//! Bounding the node table.
//!
//! The kernel keeps a node (and so the server's O_PATH descriptor of it) until it sends
//! FORGET, which it does only when it drops the inode; with long entry timeouts it keeps
//! every inode it has seen. Descriptors are bounded by RLIMIT_NOFILE, so a container
//! touching more files than that would get EMFILE from its own file system. The server
//! therefore watches the number of table entries in use and, above a high-water mark,
//! asks the kernel to drop cached inodes that nothing uses, least recently used first,
//! down to a low-water mark: with `FUSE_NOTIFY_PRUNE` (Linux 6.18, protocol 7.45) by node
//! id, or else with `FUSE_NOTIFY_INVAL_ENTRY` by the name the node was last looked up
//! under. The kernel answers with FORGETs, and the server closes those descriptors.
//! Notifications are sent from a thread of their own, never while handling a request.

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::OnceLock;
use std::thread::Thread;

use crate::abi::{self, Writer};
use crate::shared::{kind, NodeEntry, NodeRef, Shared};
use crate::sys;

/// Thresholds on the number of table entries in use (nodes, open files, open
/// directories), derived from the number of descriptors the server may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// Descriptors the server may hold: the smaller of RLIMIT_NOFILE and the table.
    pub limit: usize,
    /// At this many entries a LOOKUP that would add a node fails with ENFILE; the rest
    /// is kept for opening files and for the server's own descriptors.
    pub max: usize,
    /// Above this many entries the server asks the kernel to drop unused nodes.
    pub high: usize,
    /// What such an eviction aims for.
    pub low: usize,
}

impl Budget {
    /// The thresholds for `limit` descriptors: 1/8 (at least 64) kept in reserve,
    /// eviction from 2/3 of the rest down to 1/2.
    pub fn for_limit(limit: usize) -> Budget {
        let reserve = (limit / 8).max(64).min(limit / 2);
        let max = limit - reserve;
        Budget {
            limit,
            max,
            high: max * 2 / 3,
            low: max / 2,
        }
    }
}

impl Budget {
    /// The thresholds for a cold table of `capacity` entries (no descriptors to keep in
    /// reserve): eviction from 3/4 down to 1/2.
    pub fn for_cold(capacity: usize) -> Budget {
        Budget {
            limit: capacity,
            max: capacity,
            high: capacity * 3 / 4,
            low: capacity / 2,
        }
    }
}

/// How the kernel is asked to drop nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Method {
    /// `FUSE_NOTIFY_PRUNE` with node ids.
    Prune,
    /// `FUSE_NOTIFY_INVAL_ENTRY` with (parent, name), for non-directories whose name is
    /// known.
    InvalEntry,
    /// Not at all (the connection is not a FUSE device, e.g. a test socket).
    Off,
}

impl Method {
    fn code(self) -> u8 {
        match self {
            Method::Prune => 1,
            Method::InvalEntry => 2,
            Method::Off => 0,
        }
    }
    fn from_code(c: u8) -> Method {
        match c {
            1 => Method::Prune,
            2 => Method::InvalEntry,
            _ => Method::Off,
        }
    }
}

/// Finds out how this kernel can be asked to drop nodes: an empty `FUSE_NOTIFY_PRUNE`
/// is accepted by kernels that know it and refused (EINVAL) by the others.
/// `PORTA_FS_EVICT=prune|inval|off` overrides it (tests only: feature
/// `fault-injection`).
pub(crate) fn probe(fuse: RawFd) -> Method {
    #[cfg(feature = "fault-injection")]
    match std::env::var("PORTA_FS_EVICT").ok().as_deref() {
        Some("prune") => return Method::Prune,
        Some("inval") => return Method::InvalEntry,
        Some("off") => return Method::Off,
        _ => {}
    }
    match sys::fstat(fuse) {
        Ok(st) if st.st_mode & libc::S_IFMT == libc::S_IFCHR => {}
        _ => return Method::Off,
    }
    let mut w = Writer::default();
    abi::encode_prune(&mut w, &[]);
    match sys::write(fuse, &w.buf) {
        Ok(_) => Method::Prune,
        Err(e) => {
            if e != libc::EINVAL && e != libc::ENOSYS {
                tracing::warn!(errno = e, "FUSE_NOTIFY_PRUNE probe failed");
            }
            Method::InvalEntry
        }
    }
}

/// Picks up to `n_hot` nodes with descriptors and `n_cold` cold nodes to drop, least
/// recently used first: published nodes other than `root` without an open passthrough
/// file. `out` receives (last use, node id) pairs, oldest first (on equal stamps, the
/// lower id first).
pub(crate) fn victims(
    sh: &Shared,
    root: RawFd,
    n_hot: usize,
    n_cold: usize,
    out: &mut Vec<(u64, u64)>,
) {
    out.clear();
    let unused = |e: &NodeEntry| e.kind() == kind::NODE && e.opens().load(Ordering::Relaxed) == 0;
    if n_hot > 0 {
        for fd in 0..sh.scan_end() {
            match sh.hot_node(fd) {
                Some(e) if fd != root && unused(&e) => {
                    out.push((e.last_use().load(Ordering::Relaxed), NodeRef::Hot(fd).id()))
                }
                _ => {}
            }
        }
        oldest(out, 0, n_hot);
    }
    if n_cold > 0 {
        let start = out.len();
        for i in 0..sh.cold_scan_end() {
            match sh.cold_node(i) {
                Some(e) if unused(&e) => {
                    out.push((e.last_use().load(Ordering::Relaxed), NodeRef::Cold(i).id()))
                }
                _ => {}
            }
        }
        oldest(out, start, n_cold);
    }
    out.sort_unstable();
}

/// Keeps the `n` smallest of `v[start..]`.
fn oldest(v: &mut Vec<(u64, u64)>, start: usize, n: usize) {
    if v.len() - start > n {
        v[start..].select_nth_unstable(n);
        v.truncate(start + n);
    }
}

/// The eviction thread's controls, shared with the request threads.
#[derive(Debug, Default)]
pub(crate) struct Control {
    method: AtomicU8,
    wake: AtomicBool,
    stop: AtomicBool,
    thread: OnceLock<Thread>,
}

impl Control {
    pub(crate) fn method(&self) -> Method {
        Method::from_code(self.method.load(Ordering::Relaxed))
    }

    pub(crate) fn set_method(&self, m: Method) {
        self.method.store(m.code(), Ordering::Relaxed);
    }

    /// Registers the eviction thread (to be woken by [`Control::request`]).
    pub(crate) fn set_thread(&self, t: Thread) {
        let _ = self.thread.set(t);
    }

    /// Wakes the eviction thread (once until it runs: no system call per request).
    pub(crate) fn request(&self) {
        if !self.wake.swap(true, Ordering::AcqRel) {
            if let Some(t) = self.thread.get() {
                t.unpark();
            }
        }
    }

    /// Called by the eviction thread when it starts a pass.
    pub(crate) fn take_request(&self) -> bool {
        self.wake.swap(false, Ordering::AcqRel)
    }

    pub(crate) fn stopped(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    /// Ends the eviction thread.
    pub(crate) fn shutdown(&self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.get() {
            t.unpark();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_leaves_reserve_and_orders_marks() {
        let b = Budget::for_limit(20000);
        assert_eq!(b.max, 17500);
        assert_eq!(b.high, 11666);
        assert_eq!(b.low, 8750);
        for limit in [16, 100, 1024, 4096, 20000, 1 << 20] {
            let b = Budget::for_limit(limit);
            assert!(b.low < b.high && b.high < b.max && b.max < b.limit, "{b:?}");
            assert!(b.limit - b.max >= 64.min(limit / 2));
        }
    }

    #[test]
    fn victims_are_oldest_unused_nodes() {
        let sh = Shared::anonymous_with(64, 8).unwrap();
        let root = 3;
        assert!(sh.publish(root, kind::NODE, 1, 1, 1));
        for (fd, stamp) in [(10, 5), (11, 1), (12, 9), (13, 3), (14, 1)] {
            assert!(sh.publish(fd, kind::NODE, 1, fd as u64, 1));
            sh.touch(fd, stamp);
        }
        // An open passthrough file pins node 13; a handle is never a victim.
        sh.hot_node(13).unwrap().opens().store(1, Ordering::Relaxed);
        assert!(sh.publish(20, kind::FILE, 12, 0, 0));
        // Cold nodes compete on the same clock.
        assert!(sh.cold_publish(2, 1, 99, 1, 0o100000, 1, b"c"));
        sh.cold_node(2)
            .unwrap()
            .last_use()
            .store(2, Ordering::Relaxed);
        let hot = |fd| NodeRef::Hot(fd).id();
        let mut v = Vec::new();
        victims(&sh, root, 3, 0, &mut v);
        assert_eq!(v, vec![(1, hot(11)), (1, hot(14)), (5, hot(10))]);
        victims(&sh, root, 2, 1, &mut v);
        assert_eq!(
            v,
            vec![(1, hot(11)), (1, hot(14)), (2, NodeRef::Cold(2).id())]
        );
        victims(&sh, root, 100, 100, &mut v);
        assert_eq!(v.len(), 5);
        assert!(v
            .iter()
            .all(|&(_, id)| id != hot(root) && id != hot(13) && id != hot(20)));
        victims(&sh, root, 0, 0, &mut v);
        assert!(v.is_empty());
    }

    #[test]
    fn request_wakes_once() {
        let c = Control::default();
        c.set_thread(std::thread::current());
        c.request();
        c.request();
        assert!(c.take_request());
        assert!(!c.take_request());
        c.set_method(Method::InvalEntry);
        assert_eq!(c.method(), Method::InvalEntry);
        c.shutdown();
        assert!(c.stopped());
    }
}
