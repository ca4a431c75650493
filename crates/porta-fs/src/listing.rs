//! Directory listings the kernel reads without opening the directory.
//!
//! The server answers OPENDIR with ENOSYS, and the kernel then sends neither OPENDIR nor
//! RELEASEDIR again (FUSE "no-opendir"): it reads a directory with READDIR by node and
//! offset alone and caches what it read (as with `FOPEN_CACHE_DIR | FOPEN_KEEP_CACHE`),
//! which saves two round trips per directory a program opens. The server therefore keeps
//! the directories it lists open itself, as *streams*: a READDIR at offset 0 opens a new
//! stream, a READDIR that goes on with a listing takes the stream that ended where it
//! starts (else another idle stream of the same directory), and a listing read to its
//! end closes its stream. Keeping the same open directory for one listing matters on
//! overlayfs, the usual container root: it numbers a merged directory's offsets by
//! position in a snapshot that each open directory takes, so continuing on a reopened
//! directory that changed in between (`rm -r` does that) could skip or repeat names.
//!
//! Streams are entries of kind `STREAM` in the shared table (descriptor in the fd table
//! shared with the keeper), so they outlive a server; this module is the server's
//! bookkeeping of which streams are idle and where each one ended.

use std::os::fd::RawFd;

/// Idle streams a server keeps at most; past it the least recently used is closed (a
/// listing abandoned before its end, e.g. `ls | head`, never closes its own).
pub const MAX_IDLE: usize = 32;

/// A directory by backing device and inode. A stream holds its directory open, so the
/// inode number cannot be reused while the stream exists.
pub(crate) type DirKey = (u64, u64);

#[derive(Debug, Clone, Copy)]
struct Stream {
    fd: RawFd,
    dir: DirKey,
    /// The offset the last READDIR on this stream ended at (its last entry's cookie).
    next: u64,
    busy: bool,
    used: u64,
}

/// The streams of one server.
#[derive(Debug, Default)]
pub(crate) struct Streams {
    list: Vec<Stream>,
    tick: u64,
}

impl Streams {
    /// Takes an idle stream to go on with a listing of `dir` at offset `off` (never for
    /// offset 0, which starts a new listing): the one that ended at `off`; else (the
    /// kernel asks again from the middle of its last reply when the program's buffer was
    /// full) the one that ended closest past `off`, whose last reply `off` lies in when
    /// offsets grow along a listing (positions on overlayfs and tmpfs, hashes in ext4's
    /// hash order); else any idle one of `dir`. The caller seeks it to `off`.
    pub fn take(&mut self, dir: DirKey, off: u64) -> Option<RawFd> {
        if off == 0 {
            return None;
        }
        let idle = |s: &Stream| !s.busy && s.dir == dir;
        let i = self
            .list
            .iter()
            .position(|s| idle(s) && s.next == off)
            .or_else(|| {
                let past = self.list.iter().enumerate();
                past.filter(|(_, s)| idle(s) && s.next > off)
                    .min_by_key(|(_, s)| s.next)
                    .map(|(i, _)| i)
            })
            .or_else(|| self.list.iter().position(idle))?;
        self.list[i].busy = true;
        Some(self.list[i].fd)
    }

    /// Records a stream the caller opened (busy), or found idle in the shared table
    /// when the server started.
    pub fn add(&mut self, fd: RawFd, dir: DirKey, next: u64, busy: bool) {
        self.tick += 1;
        self.list.push(Stream {
            fd,
            dir,
            next,
            busy,
            used: self.tick,
        });
    }

    /// Gives a busy stream back, ended at `next`. Returns an idle stream to close when
    /// more than [`MAX_IDLE`] are idle now (the least recently used one).
    pub fn put(&mut self, fd: RawFd, next: u64) -> Option<RawFd> {
        self.tick += 1;
        let tick = self.tick;
        if let Some(s) = self.list.iter_mut().find(|s| s.fd == fd) {
            s.busy = false;
            s.next = next;
            s.used = tick;
        }
        if self.list.iter().filter(|s| !s.busy).count() <= MAX_IDLE {
            return None;
        }
        let (i, _) = self
            .list
            .iter()
            .enumerate()
            .filter(|(_, s)| !s.busy)
            .min_by_key(|(_, s)| s.used)?;
        Some(self.list.swap_remove(i).fd)
    }

    /// Drops idle streams past [`MAX_IDLE`] (a server's successor finds every stream its
    /// predecessor kept); returns them for the caller to close.
    pub fn trim(&mut self) -> Vec<RawFd> {
        let mut gone = Vec::new();
        while self.list.iter().filter(|s| !s.busy).count() > MAX_IDLE {
            let Some((i, _)) = self
                .list
                .iter()
                .enumerate()
                .filter(|(_, s)| !s.busy)
                .min_by_key(|(_, s)| s.used)
            else {
                break;
            };
            gone.push(self.list.swap_remove(i).fd);
        }
        gone
    }

    /// Forgets a stream (its listing ended or failed); the caller closes it.
    pub fn remove(&mut self, fd: RawFd) {
        if let Some(i) = self.list.iter().position(|s| s.fd == fd) {
            self.list.swap_remove(i);
        }
    }

    /// Streams known, idle or busy.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.list.len()
    }
}

/// One entry of a `getdents64` batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Dent {
    /// Backing inode number.
    pub ino: u64,
    /// The offset that goes on after this entry (its cookie).
    pub off: u64,
    /// File type (`DT_*`).
    pub typ: u32,
    /// Where its name (without the NUL) lies in the batch.
    pub name: std::ops::Range<usize>,
}

/// Appends to `ents` the entries of `getdents64` batch `batch` that fit into a reply of
/// `limit` bytes, of which `planned` are taken already (and grow by each entry taken;
/// READDIRPLUS entries when `plus`). Returns whether the listing may go on with the
/// next batch: false when the reply is full or the batch ended in a malformed record.
pub(crate) fn parse_dents(
    batch: &[u8],
    plus: bool,
    limit: usize,
    planned: &mut usize,
    ents: &mut Vec<Dent>,
) -> bool {
    const HEAD: usize = 19; // d_ino, d_off, d_reclen, d_type
    let n = batch.len();
    let mut p = 0;
    while p + HEAD <= n {
        let word = |at: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&batch[at..at + 8]);
            u64::from_ne_bytes(b)
        };
        let (ino, off) = (word(p), word(p + 8));
        let reclen = u16::from_ne_bytes([batch[p + 16], batch[p + 17]]) as usize;
        if reclen < HEAD || p + reclen > n {
            return false;
        }
        let typ = batch[p + 18] as u32;
        let raw = &batch[p + HEAD..p + reclen];
        let start = p + HEAD;
        p += reclen;
        let Some(len) = raw.iter().position(|&c| c == 0) else {
            continue;
        };
        if len == 0 {
            continue;
        }
        let rec = crate::abi::dirent_align(crate::abi::DIRENT_LEN + len)
            + if plus { crate::abi::ENTRY_OUT_LEN } else { 0 };
        if *planned + rec > limit {
            return false;
        }
        *planned += rec;
        ents.push(Dent {
            ino,
            off,
            typ,
            name: start..start + len,
        });
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(ino: u64, off: u64, typ: u8, name: &[u8]) -> Vec<u8> {
        let reclen = (19 + name.len() + 1).div_ceil(8) * 8;
        let mut r = Vec::new();
        r.extend_from_slice(&ino.to_ne_bytes());
        r.extend_from_slice(&off.to_ne_bytes());
        r.extend_from_slice(&(reclen as u16).to_ne_bytes());
        r.push(typ);
        r.extend_from_slice(name);
        r.resize(reclen, 0);
        r
    }

    #[test]
    fn dents_are_parsed_until_the_reply_is_full() {
        let mut batch = record(10, 1, 4, b".");
        batch.extend(record(11, 2, 8, b"a-file"));
        batch.extend(record(12, 3, 8, b"another"));
        let mut ents = Vec::new();
        let mut planned = 16;
        assert!(parse_dents(&batch, false, 4096, &mut planned, &mut ents));
        assert_eq!(ents.len(), 3);
        assert_eq!(&batch[ents[1].name.clone()], b"a-file");
        assert_eq!((ents[2].ino, ents[2].off, ents[2].typ), (12, 3, 8));
        assert_eq!(planned, 16 + 32 + 32 + 32);
        // Room for two READDIRPLUS entries only.
        let mut ents = Vec::new();
        let mut planned = 16;
        assert!(!parse_dents(
            &batch,
            true,
            16 + 2 * 160,
            &mut planned,
            &mut ents
        ));
        assert_eq!(ents.len(), 2);
    }

    #[test]
    fn a_malformed_record_ends_the_listing() {
        let mut batch = record(11, 2, 8, b"ok");
        let mut bad = record(12, 3, 8, b"bad");
        bad[16] = 200; // reclen past the end
        batch.extend(bad);
        let mut ents = Vec::new();
        assert!(!parse_dents(&batch, false, 1 << 20, &mut 0, &mut ents));
        assert_eq!(ents.len(), 1);
        let mut short = record(11, 2, 8, b"ok");
        short[16] = 3;
        assert!(!parse_dents(
            &short,
            false,
            1 << 20,
            &mut 0,
            &mut Vec::new()
        ));
    }

    /// Streams 5 and 6 of directory `d`, idle, ended at `next5` and `next6`.
    fn idle_pair(d: DirKey, next5: u64, next6: u64) -> Streams {
        let mut s = Streams::default();
        s.add(5, d, 0, true);
        s.add(6, d, 0, true);
        assert_eq!(s.put(5, next5), None);
        assert_eq!(s.put(6, next6), None);
        s
    }

    #[test]
    fn a_listing_goes_on_with_the_stream_that_ended_where_it_starts() {
        let d = (1, 10);
        let mut s = idle_pair(d, 100, 200);
        assert_eq!(s.take(d, 200), Some(6));
        assert_eq!(s.take(d, 100), Some(5));
        // Both busy: none to take.
        assert_eq!(s.take(d, 100), None);
    }

    #[test]
    fn an_offset_inside_the_last_reply_takes_an_idle_stream_of_the_same_directory() {
        let mut s = Streams::default();
        s.add(5, (1, 10), 0, true);
        s.add(7, (1, 11), 0, true);
        s.put(5, 100);
        s.put(7, 150);
        assert_eq!(s.take((1, 10), 42), Some(5));
        assert_eq!(s.take((2, 10), 42), None, "another device");
    }

    #[test]
    fn two_listings_going_on_from_inside_their_last_replies_keep_their_own_streams() {
        let d = (1, 10);
        // Stream 5's listing is ahead, stream 6's behind; each asks again from inside its
        // own last reply.
        let mut s = idle_pair(d, 300, 100);
        assert_eq!(
            s.take(d, 80),
            Some(6),
            "80 lies in the reply that ended at 100"
        );
        assert_eq!(
            s.take(d, 250),
            Some(5),
            "250 lies in the reply that ended at 300"
        );
        s.put(5, 300);
        s.put(6, 100);
        // Past every stream's end: any idle one.
        assert!(s.take(d, 999).is_some());
    }

    #[test]
    fn offset_zero_always_starts_a_new_stream() {
        let mut s = Streams::default();
        s.add(5, (1, 10), 7, false);
        assert_eq!(s.take((1, 10), 0), None);
    }

    #[test]
    fn past_the_idle_limit_the_least_recently_used_stream_goes() {
        let mut s = Streams::default();
        for fd in 0..MAX_IDLE as RawFd {
            s.add(fd + 100, (1, fd as u64), 0, true);
            assert_eq!(s.put(fd + 100, 1), None);
        }
        // Use the oldest again: the second oldest is now the least recently used.
        assert_eq!(s.take((1, 0), 1), Some(100));
        s.put(100, 2);
        s.add(500, (1, 999), 0, true);
        assert_eq!(s.put(500, 3), Some(101));
        assert_eq!(s.len(), MAX_IDLE);
        // Busy streams never go, however many there are.
        let mut b = Streams::default();
        for fd in 0..(2 * MAX_IDLE) as RawFd {
            b.add(fd, (1, 1), 0, true);
        }
        b.add(999, (1, 2), 0, true);
        assert_eq!(b.put(999, 5), None);
        s.remove(500);
        assert_eq!(s.len(), MAX_IDLE - 1);
    }
}
