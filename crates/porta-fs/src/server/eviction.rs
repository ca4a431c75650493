//! The eviction thread: keeps the node tables under their budgets by asking the kernel
//! to forget the least recently used unused nodes ([`crate::evict`]), and grows the
//! shared descriptor table ahead of need.

use std::ffi::CStr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::Fs;
use crate::abi::{self, Writer};
use crate::evict::{self, Method};
use crate::shared::{cold, hdr, NodeRef};
use crate::sys;

impl Fs {
    /// The eviction thread: waits to be woken (a LOOKUP took the table above the
    /// high-water mark) or for a second to pass, then asks the kernel to drop the least
    /// recently used unused nodes. It never handles a request, so a notification that
    /// waits for a directory lock the kernel holds for a request in progress cannot
    /// block that request's thread.
    pub(super) fn evict_loop(&self) {
        let mut victims = Vec::new();
        let mut w = Writer::default();
        let mut idle_backoff = Duration::from_millis(10);
        while !self.evict.stopped() {
            std::thread::park_timeout(Duration::from_secs(1));
            if self.evict.stopped() {
                return;
            }
            self.evict.take_request();
            self.grow_fd_table();
            if self.over(false) == (0, 0) || self.evict.method() == Method::Off {
                continue;
            }
            let before = (self.sh.live(), self.sh.cold_live());
            let freed = self.evict_pass(&mut victims, &mut w);
            let after = (self.sh.live(), self.sh.cold_live());
            tracing::debug!(?before, ?after, freed, "node eviction pass");
            if freed == 0 {
                // What is left is in use (open, a working directory, a mount point...):
                // do not spin on it.
                if idle_backoff == Duration::from_millis(10) {
                    tracing::warn!(
                        live = after.0,
                        high = self.budget.high,
                        cold = after.1,
                        cold_high = self.cold_budget.high,
                        "node table above its high-water mark and nothing to evict"
                    );
                }
                std::thread::sleep(idle_backoff);
                idle_backoff = (idle_backoff * 2).min(Duration::from_secs(1));
            } else {
                idle_backoff = Duration::from_millis(10);
            }
        }
    }

    /// Grows the shared fd table to four times its size (at most the descriptor limit)
    /// once the highest descriptor in use is in its last quarter. Growing a shared table
    /// waits for an RCU grace period (tens of milliseconds here); this thread waits it
    /// out, while request threads go on with the free descriptors below the old size.
    pub(super) fn grow_fd_table(&self) {
        let table = self.sh.hdr(hdr::FD_TABLE).load(Ordering::Relaxed) as usize;
        let high = self.sh.hdr(hdr::HIGH).load(Ordering::Relaxed) as usize;
        let limit = self.budget.limit;
        if table == 0 || table >= limit || high * 4 < table * 3 {
            return;
        }
        let want = (table * 4).min(limit);
        match sys::grow_fd_table(self.root, want) {
            Ok(()) => {
                self.sh
                    .hdr(hdr::FD_TABLE)
                    .store(want as u64, Ordering::Relaxed);
                tracing::debug!(table, want, "descriptor table grown ahead");
            }
            Err(e) => {
                // Do not try again: the table then grows on demand, as without this.
                self.sh.hdr(hdr::FD_TABLE).store(0, Ordering::Relaxed);
                tracing::debug!(errno = e, want, "descriptor table not grown ahead");
            }
        }
    }

    /// How many nodes of each table (descriptors, cold) an eviction should drop now:
    /// above the high-water mark down to the low-water mark (`started`: a pass is under
    /// way and goes on down to it). With a cold table, new nodes go cold instead, and
    /// nodes with descriptors are only evicted when open files have taken half of the
    /// reserve above the maximum, and then down to the high-water mark.
    pub(super) fn over(&self, started: bool) -> (usize, usize) {
        let live = self.sh.live();
        let b = &self.budget;
        if self.sh.cold_capacity() == 0 {
            let trigger = if started { b.low } else { b.high };
            return (if live > trigger { live - b.low } else { 0 }, 0);
        }
        let trigger = if started {
            b.high
        } else {
            b.max + (b.limit - b.max) / 2
        };
        let hot = if live > trigger { live - b.high } else { 0 };
        let cold_live = self.sh.cold_live();
        let c = &self.cold_budget;
        let trigger = if started { c.low } else { c.high };
        let cold = if cold_live > trigger {
            cold_live - c.low
        } else {
            0
        };
        (hot, cold)
    }

    /// Up to a few rounds of: pick the oldest unused nodes, notify, wait for the
    /// kernel's FORGETs. Nodes that survive a round (the kernel still uses them) are
    /// stamped as used, so they do not stand first in line again. Returns how many
    /// victims went.
    pub(super) fn evict_pass(&self, victims: &mut Vec<(u64, u64)>, w: &mut Writer) -> usize {
        let mut freed = 0;
        let mut inos = Vec::new();
        for _ in 0..8 {
            let (hot, cold) = self.over(true);
            if hot + cold == 0 || self.evict.stopped() {
                break;
            }
            evict::victims(&self.sh, self.root, hot, cold, victims);
            if victims.is_empty() {
                break;
            }
            // A victim's entry may be reused by a new node once it is forgotten:
            // survivors are told by their inode number.
            inos.clear();
            inos.extend(victims.iter().map(|&(_, id)| self.ino_of(id)));
            match self.evict.method() {
                Method::Prune => self.send_prune(victims, w),
                Method::InvalEntry => self.send_inval(victims, w),
                Method::Off => break,
            }
            // The FORGETs come in through the request threads: wait while the count
            // goes down (new lookups may be adding nodes meanwhile).
            let count = || self.sh.live() + self.sh.cold_live();
            let target = count().saturating_sub(victims.len());
            let mut last = count();
            let mut flat = 0;
            for _ in 0..100 {
                std::thread::sleep(Duration::from_millis(1));
                let now = count();
                if now <= target {
                    break;
                }
                flat = if now < last { 0 } else { flat + 1 };
                if flat >= 3 {
                    break;
                }
                last = now;
            }
            let now = self.sh.epoch();
            let mut survivors = 0;
            for (&(_, id), &ino) in victims.iter().zip(inos.iter()) {
                if self.ino_of(id) == ino {
                    if let Some(e) = self.sh.node_entry(id) {
                        e.last_use().store(now, Ordering::Relaxed);
                    }
                    survivors += 1;
                }
            }
            freed += victims.len() - survivors;
        }
        freed
    }

    /// The inode number of node `id` (0 when it is not a node).
    pub(super) fn ino_of(&self, id: u64) -> u64 {
        self.sh.node_entry(id).map_or(0, |e| e.ino())
    }

    pub(super) fn send_prune(&self, victims: &[(u64, u64)], w: &mut Writer) {
        let mut ids = [0u64; 512];
        for chunk in victims.chunks(ids.len()) {
            for (i, &(_, id)) in chunk.iter().enumerate() {
                ids[i] = id;
            }
            abi::encode_prune(w, &ids[..chunk.len()]);
            match sys::write(self.fuse, &w.buf) {
                Ok(_) => {}
                Err(libc::ENODEV) => return,
                Err(e) => {
                    tracing::warn!(errno = e, "FUSE_NOTIFY_PRUNE failed; invalidating names");
                    self.evict.set_method(Method::InvalEntry);
                    return;
                }
            }
        }
    }

    /// The fallback: drops the dentry of each victim's last known name (a cold node's
    /// recorded one). Only for non-directories whose name still names them:
    /// invalidating a directory entry would also prune its subtree and detach mounts
    /// beneath it.
    pub(super) fn send_inval(&self, victims: &[(u64, u64)], w: &mut Writer) {
        let mut buf = [0u8; cold::NAME_MAX];
        for &(_, id) in victims {
            let rec = match NodeRef::of(id) {
                Some(NodeRef::Cold(i)) => {
                    let (parent, len) = self.sh.cold_name(i, &mut buf);
                    (len > 0).then(|| (parent, Box::<[u8]>::from(&buf[..len])))
                }
                _ => match self.names.lock() {
                    Ok(names) => names.get(&id).cloned(),
                    Err(_) => return,
                },
            };
            let Some((parent_id, name)) = rec else {
                continue;
            };
            let Some(e) = self.sh.node_entry(id) else {
                continue;
            };
            let (dev, ino) = e.inode_key();
            let Ok(parent) = self.node_fd(parent_id) else {
                continue;
            };
            let mut cname = name.to_vec();
            cname.push(0);
            let Ok(c) = CStr::from_bytes_with_nul(&cname) else {
                continue;
            };
            match sys::statat(parent.fd(), c) {
                Ok(st)
                    if st.st_ino == ino
                        && st.st_dev == dev
                        && st.st_mode & libc::S_IFMT != libc::S_IFDIR => {}
                _ => continue,
            }
            abi::encode_inval_entry(w, parent_id, &name);
            match sys::write(self.fuse, &w.buf) {
                Ok(_) | Err(libc::ENOENT) => {}
                Err(libc::ENODEV) => return,
                Err(e) => tracing::debug!(errno = e, "FUSE_NOTIFY_INVAL_ENTRY failed"),
            }
        }
    }
}
