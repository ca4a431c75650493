//! The supervisor's half of passthrough backing registration ([`porta_fs::backing`]): a
//! confined server has no CAP_SYS_ADMIN in the initial user namespace, so it sends each
//! backing file here and the supervisor registers it on its own /dev/fuse descriptor.
//!
//! The server is not trusted: requests are read without blocking, a bounded number per
//! call; a descriptor must be a regular file open for I/O (not O_PATH); only ids this
//! broker handed out (and still holds) can be closed; answers are sent without blocking,
//! and an id whose answer cannot be delivered is closed at once. After a server died,
//! [`Broker::server_died`] drops its unanswered requests and closes every id the shared
//! table does not record, so a kill at any point leaks no registration.

use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};

use porta_fs::backing::{Answer, Request, MSG_LEN, OP_CLOSE, OP_OPEN};
use porta_fs::sys;
use porta_fs::translator::{OP_ID_MAPS, OP_KILL, OP_START, OP_STOP};

/// Where backing ids are made and dropped: the FUSE device, or a fake in tests.
pub(crate) trait Registrar {
    /// Registers `fd` as a backing file; returns its id or an errno.
    fn open(&mut self, fd: RawFd) -> Result<i32, i32>;
    /// Drops backing id `id`.
    fn close(&mut self, id: i32) -> Result<(), i32>;
}

/// The supervisor's /dev/fuse descriptor of the container's connection.
pub(crate) struct FuseDevice(pub RawFd);

impl Registrar for FuseDevice {
    fn open(&mut self, fd: RawFd) -> Result<i32, i32> {
        sys::backing_open(self.0, fd)
    }
    fn close(&mut self, id: i32) -> Result<(), i32> {
        sys::backing_close(self.0, id)
    }
}

/// Counters, for the log and the tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stats {
    /// Ids registered and answered.
    pub opened: u64,
    /// Ids dropped on the server's request.
    pub closed: u64,
    /// Requests refused (malformed, bad descriptor, unknown id, over the limit).
    pub refused: u64,
    /// Ids dropped because no server recorded them (killed mid-exchange) or because the
    /// answer could not be delivered.
    pub reclaimed: u64,
}

/// One container's backing broker: the supervisor's end of the socket shared by the
/// keeper and its servers, and the ids handed out over it.
pub(crate) struct Broker {
    sock: OwnedFd,
    /// Backing id → the node descriptor the server said it was for.
    ids: HashMap<i32, RawFd>,
    limit: usize,
    hung_up: bool,
    pub stats: Stats,
    /// Translator messages read, for the supervisor to handle ([`crate::translators`]).
    translator_msgs: Vec<Vec<u8>>,
}

/// Why one message was not served.
enum Step {
    /// Handled (answered, refused or dropped).
    Done,
    /// Nothing queued.
    Empty,
    /// The peer is gone (every server and the keeper closed their end).
    HungUp,
}

impl Broker {
    /// A broker on `sock` (the supervisor's end) holding at most `limit` ids at a time.
    pub fn new(sock: OwnedFd, limit: usize) -> Broker {
        Broker {
            sock,
            ids: HashMap::new(),
            limit: limit.max(1),
            hung_up: false,
            stats: Stats::default(),
            translator_msgs: Vec::new(),
        }
    }

    /// The socket, to poll for POLLIN.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }

    /// False once every peer closed its end: stop polling.
    pub fn live(&self) -> bool {
        !self.hung_up
    }

    /// The translator messages read since the last call.
    pub fn take_translator_msgs(&mut self) -> Vec<Vec<u8>> {
        std::mem::take(&mut self.translator_msgs)
    }

    /// The raw socket (translator answers are sent on it).
    pub fn raw_fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }

    /// Number of ids currently held.
    #[cfg(test)]
    pub fn held(&self) -> usize {
        self.ids.len()
    }

    /// Serves up to `budget` queued requests without blocking; returns how many.
    pub fn serve(&mut self, reg: &mut impl Registrar, budget: usize) -> usize {
        let mut n = 0;
        while n < budget {
            match self.step(reg, true) {
                Step::Done => n += 1,
                Step::Empty => break,
                Step::HungUp => {
                    self.hung_up = true;
                    break;
                }
            }
        }
        n
    }

    /// After the server died (reaped: none of its threads can write any more) and before
    /// another one serves: drops its unanswered OPENs (it never recorded their ids),
    /// honours its queued CLOSEs, then closes every id that the shared table does not
    /// record (`recorded(id)`: some entry of the table holds the id — the node it was
    /// registered for, or another one: a spare file's id moves to the node it becomes).
    /// Returns the number of ids reclaimed.
    pub fn server_died(
        &mut self,
        reg: &mut impl Registrar,
        recorded: impl Fn(i32) -> bool,
    ) -> usize {
        // Bounded: the queue holds what a dead server sent, a few messages.
        for _ in 0..4096 {
            match self.step(reg, false) {
                Step::Done => {}
                Step::Empty => break,
                Step::HungUp => {
                    self.hung_up = true;
                    break;
                }
            }
        }
        let stale: Vec<i32> = self
            .ids
            .iter()
            .filter(|(id, _)| !recorded(**id))
            .map(|(id, _)| *id)
            .collect();
        for id in &stale {
            self.ids.remove(id);
            let _ = reg.close(*id);
            self.stats.reclaimed += 1;
        }
        if !stale.is_empty() {
            tracing::info!(
                ids = stale.len(),
                "dropped passthrough backing ids the killed file server had not recorded"
            );
        }
        stale.len()
    }

    /// For a supervisor taking over from a dead one: forgets the ids this copy of the
    /// broker knew (a snapshot from when it was forked, stale now) and holds instead the
    /// ids the shared table records, `(node tag, id)`. Ids the dead supervisor handed out
    /// that no server recorded yet stay registered, unowned, until the connection ends:
    /// at most one per server thread that was opening a file at that moment.
    pub fn adopt(&mut self, recorded: Vec<(RawFd, i32)>) {
        self.ids = recorded.into_iter().map(|(tag, id)| (id, tag)).collect();
        self.hung_up = false;
    }

    fn refuse(&mut self, why: &'static str) {
        self.stats.refused += 1;
        let n = self.stats.refused;
        // 1, 2, 4, 8, …: a hostile server cannot flood the log.
        if n.is_power_of_two() {
            tracing::warn!(
                refused = n,
                why,
                "refused a backing request from the file server"
            );
        }
    }

    fn answer(&mut self, reg: &mut impl Registrar, tag: u64, result: i32) {
        let a = Answer { tag, result }.encode();
        if sys::send_with_fd(self.sock.as_raw_fd(), &a, None, libc::MSG_DONTWAIT).is_err()
            && result >= 0
        {
            // Undeliverable (the server does not read its answers): nobody can record it.
            if self.ids.remove(&result).is_some() {
                let _ = reg.close(result);
                self.stats.reclaimed += 1;
                self.stats.opened -= 1;
            }
        }
    }

    /// Reads and handles one message. `serving`: answer OPENs (false: the sender is dead,
    /// drop them).
    fn step(&mut self, reg: &mut impl Registrar, serving: bool) -> Step {
        let mut buf = [0u8; 16 * 1024];
        let r = match sys::recv_with_fds(self.sock.as_raw_fd(), &mut buf, libc::MSG_DONTWAIT) {
            Ok(r) => r,
            Err(libc::EINTR) => return Step::Done,
            Err(libc::EAGAIN) => return Step::Empty,
            // ECONNRESET: the last peer closed with answers unread.
            Err(_) if self.peer_gone() => return Step::HungUp,
            Err(_) => return Step::Empty,
        };
        if r.len == 0 && r.nfds() == 0 && self.peer_gone() {
            return Step::HungUp;
        }
        let op = u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]);
        if r.len >= MSG_LEN
            && r.flags & libc::MSG_TRUNC == 0
            && matches!(op, OP_START | OP_STOP | OP_KILL | OP_ID_MAPS)
        {
            if serving {
                self.translator_msgs.push(buf[..r.len].to_vec());
            }
            return Step::Done;
        }
        let Some(req) = Request::decode(&buf[..r.len.min(buf.len())])
            .filter(|_| r.flags & (libc::MSG_TRUNC | libc::MSG_CTRUNC) == 0)
        else {
            self.refuse("malformed message");
            return Step::Done;
        };
        match req.op {
            OP_OPEN if !serving => {}
            OP_OPEN => {
                let result = match self.check_open(&r) {
                    Err(e) => {
                        self.refuse("not a regular file open for I/O");
                        -e
                    }
                    Ok(_) if self.ids.len() >= self.limit => {
                        self.refuse("too many backing ids");
                        -libc::ENFILE
                    }
                    Ok(fd) => match reg.open(fd) {
                        Ok(id) => {
                            self.ids.insert(id, req.arg);
                            self.stats.opened += 1;
                            tracing::trace!(id, node = req.arg, "backing file registered");
                            id
                        }
                        Err(e) => -e,
                    },
                };
                self.answer(reg, req.tag, result);
            }
            OP_CLOSE if r.nfds() == 0 => {
                if self.ids.remove(&req.arg).is_some() {
                    let _ = reg.close(req.arg);
                    self.stats.closed += 1;
                } else {
                    self.refuse("close of an id not handed to this server");
                }
            }
            _ => self.refuse("unknown request"),
        }
        // Received descriptors are dropped (closed) here; a registered file is held by
        // the kernel.
        Step::Done
    }

    /// The one descriptor of an OPEN, if it is a regular file open for reading or writing.
    fn check_open(&self, r: &sys::Received) -> Result<RawFd, i32> {
        if r.nfds() != 1 {
            return Err(libc::EBADF);
        }
        let fd = r.fds[0]
            .as_ref()
            .map(|f| f.as_raw_fd())
            .ok_or(libc::EBADF)?;
        let st = sys::fstat(fd)?;
        match st.st_mode & libc::S_IFMT {
            libc::S_IFREG => {}
            libc::S_IFDIR => return Err(libc::EISDIR),
            _ => return Err(libc::EINVAL),
        }
        // SAFETY: plain fcntl on a descriptor we own.
        let fl = unsafe { libc::fcntl(fd, libc::F_GETFL) };
        if fl < 0 || fl & libc::O_PATH != 0 {
            return Err(libc::EBADF);
        }
        Ok(fd)
    }

    fn peer_gone(&self) -> bool {
        let mut p = libc::pollfd {
            fd: self.sock.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, zero timeout.
        let n = unsafe { libc::poll(&mut p, 1, 0) };
        n > 0 && p.revents & libc::POLLHUP != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use porta_fs::backing;
    use std::os::fd::FromRawFd;

    /// Hands out ids 100, 101, …; records what is open.
    #[derive(Default)]
    struct Fake {
        next: i32,
        open: std::collections::BTreeSet<i32>,
    }

    impl Registrar for Fake {
        fn open(&mut self, fd: RawFd) -> Result<i32, i32> {
            assert_eq!(
                sys::fstat(fd).unwrap().st_mode & libc::S_IFMT,
                libc::S_IFREG
            );
            let id = 100 + self.next;
            self.next += 1;
            self.open.insert(id);
            Ok(id)
        }
        fn close(&mut self, id: i32) -> Result<(), i32> {
            assert!(self.open.remove(&id), "closed {id} twice or never opened");
            Ok(())
        }
    }

    fn pair() -> (OwnedFd, OwnedFd) {
        let mut p = [0i32; 2];
        // SAFETY: valid out-array.
        let r = unsafe {
            libc::socketpair(
                libc::AF_UNIX,
                libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
                0,
                p.as_mut_ptr(),
            )
        };
        assert_eq!(r, 0);
        // SAFETY: fresh descriptors.
        unsafe { (OwnedFd::from_raw_fd(p[0]), OwnedFd::from_raw_fd(p[1])) }
    }

    fn send(s: &OwnedFd, op: u32, arg: i32, tag: u64, fd: Option<RawFd>) {
        let m = Request { op, arg, tag }.encode();
        sys::send_with_fd(s.as_raw_fd(), &m, fd, 0).unwrap();
    }

    fn answer(s: &OwnedFd) -> Option<Answer> {
        let mut b = [0u8; 32];
        let r = sys::recv_with_fds(s.as_raw_fd(), &mut b, libc::MSG_DONTWAIT).ok()?;
        Answer::decode(&b[..r.len])
    }

    #[test]
    fn open_close_and_hostile_requests() {
        let (ours, theirs) = pair();
        let mut b = Broker::new(ours, 3);
        let mut reg = Fake::default();
        let file = tempfile::tempfile().unwrap();
        let dir = std::fs::File::open("/tmp").unwrap();
        let (p_rd, _p_wr) = nix::unistd::pipe().unwrap();
        let opath = sys::openat(libc::AT_FDCWD, c"/etc/hostname", libc::O_PATH, 0)
            .or_else(|_| sys::openat(libc::AT_FDCWD, c"/proc/self/exe", libc::O_PATH, 0))
            .unwrap();

        // A good open.
        send(&theirs, OP_OPEN, 7, 1, Some(file.as_raw_fd()));
        assert_eq!(b.serve(&mut reg, 64), 1);
        assert_eq!(
            answer(&theirs),
            Some(Answer {
                tag: 1,
                result: 100
            })
        );
        // Directory, pipe, socket, O_PATH file, no descriptor: refused with an errno.
        let bad: [(Option<RawFd>, i32); 5] = [
            (Some(dir.as_raw_fd()), libc::EISDIR),
            (Some(p_rd.as_raw_fd()), libc::EINVAL),
            (Some(theirs.as_raw_fd()), libc::EINVAL),
            (Some(opath.as_raw_fd()), libc::EBADF),
            (None, libc::EBADF),
        ];
        for (i, (fd, _)) in bad.iter().enumerate() {
            send(&theirs, OP_OPEN, 7, 10 + i as u64, *fd);
        }
        assert_eq!(b.serve(&mut reg, 64), bad.len());
        for (i, (_, e)) in bad.iter().enumerate() {
            assert_eq!(
                answer(&theirs),
                Some(Answer {
                    tag: 10 + i as u64,
                    result: -e
                })
            );
        }
        // Garbage: short, long, unknown op, a close with a descriptor attached, closes of
        // ids never handed out (also another connection's idea of an id).
        sys::send_with_fd(theirs.as_raw_fd(), b"junk", None, 0).unwrap();
        sys::send_with_fd(theirs.as_raw_fd(), &[0u8; 40], None, 0).unwrap();
        sys::send_with_fd(theirs.as_raw_fd(), &[], None, 0).unwrap();
        send(&theirs, 99, 0, 20, None);
        send(&theirs, OP_CLOSE, 100, 21, Some(file.as_raw_fd()));
        send(&theirs, OP_CLOSE, 5, 22, None);
        send(&theirs, OP_CLOSE, -1, 23, None);
        assert_eq!(b.serve(&mut reg, 64), 7);
        assert!(b.live(), "an empty message is not a hang-up");
        assert_eq!(answer(&theirs), None, "garbage is not answered");
        assert_eq!(reg.open.len(), 1, "nothing closed: {:?}", reg.open);
        // Two descriptors in one OPEN: refused, both closed.
        let m = Request {
            op: OP_OPEN,
            arg: 1,
            tag: 30,
        }
        .encode();
        let two = [file.as_raw_fd(), file.as_raw_fd()];
        assert!(porta_sys::scm::send(theirs.as_raw_fd(), &m, &two, 0).unwrap() > 0);
        assert_eq!(b.serve(&mut reg, 64), 1);
        assert_eq!(
            answer(&theirs),
            Some(Answer {
                tag: 30,
                result: -libc::EBADF
            })
        );
        // The limit (3 ids).
        for t in 40..43 {
            send(&theirs, OP_OPEN, 8, t, Some(file.as_raw_fd()));
        }
        b.serve(&mut reg, 64);
        let results: Vec<i32> = (0..3).map(|_| answer(&theirs).unwrap().result).collect();
        assert_eq!(results, vec![101, 102, -libc::ENFILE]);
        // A good close, then the same id again (refused).
        send(&theirs, OP_CLOSE, 101, 50, None);
        send(&theirs, OP_CLOSE, 101, 51, None);
        b.serve(&mut reg, 64);
        assert_eq!(reg.open.iter().copied().collect::<Vec<_>>(), vec![100, 102]);
        assert_eq!(b.held(), 2);
        assert_eq!(b.stats.opened, 3);
        assert_eq!(b.stats.closed, 1);
        assert!(b.stats.refused >= 13, "{:?}", b.stats);
    }

    #[test]
    fn never_blocks_on_a_server_that_does_not_read() {
        let (ours, theirs) = pair();
        let mut b = Broker::new(ours, 100_000);
        let mut reg = Fake::default();
        let file = tempfile::tempfile().unwrap();
        // More OPENs than answers fit in the server's queue; the server reads none.
        let t = std::time::Instant::now();
        for round in 0..250 {
            for i in 0..8 {
                send(&theirs, OP_OPEN, 1, round * 8 + i, Some(file.as_raw_fd()));
            }
            b.serve(&mut reg, 64);
        }
        assert!(t.elapsed() < std::time::Duration::from_secs(5));
        // Whatever was not delivered was closed again: the registrar holds only the ids
        // whose answers sit in the queue.
        assert_eq!(reg.open.len(), b.held());
        assert!(b.held() < 2000 && b.stats.reclaimed > 0, "{:?}", b.stats);
        // Budget: one call serves at most that many.
        for i in 0..8 {
            send(&theirs, OP_CLOSE, 100 + i, 0, None);
        }
        assert_eq!(b.serve(&mut reg, 3), 3);
    }

    #[test]
    fn killed_server_leaks_nothing() {
        let (ours, theirs) = pair();
        let mut b = Broker::new(ours, 100);
        let mut reg = Fake::default();
        let file = tempfile::tempfile().unwrap();
        // Node 10 recorded its id (100); node 11 got 101 but died before recording it;
        // node 12's request and a CLOSE of 100 are still queued when it dies.
        send(&theirs, OP_OPEN, 10, 1, Some(file.as_raw_fd()));
        send(&theirs, OP_OPEN, 11, 2, Some(file.as_raw_fd()));
        b.serve(&mut reg, 64);
        send(&theirs, OP_OPEN, 12, 3, Some(file.as_raw_fd()));
        send(&theirs, OP_CLOSE, 102, 4, None); // not handed out: refused
        let recorded = |id: i32| id == 100;
        assert_eq!(b.server_died(&mut reg, recorded), 1);
        assert_eq!(reg.open.iter().copied().collect::<Vec<_>>(), vec![100]);
        assert_eq!(b.held(), 1);
        // The stale answers are still in the server's queue; a new server skips them by
        // tag (porta_fs::backing::open). Its own request works.
        let peer = std::thread::spawn(move || {
            let f = tempfile::tempfile().unwrap();
            backing::open(theirs.as_raw_fd(), 13, f.as_raw_fd())
        });
        let t = std::time::Instant::now();
        while !peer.is_finished() && t.elapsed() < std::time::Duration::from_secs(5) {
            b.serve(&mut reg, 64);
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert_eq!(peer.join().unwrap(), Ok(102));
        // The queued CLOSE of a recorded id is honoured while draining.
        let (ours, theirs) = pair();
        let mut b = Broker::new(ours, 100);
        let mut reg = Fake::default();
        send(&theirs, OP_OPEN, 10, 1, Some(file.as_raw_fd()));
        b.serve(&mut reg, 64);
        send(&theirs, OP_CLOSE, 100, 2, None);
        assert_eq!(b.server_died(&mut reg, |_| false), 0);
        assert!(reg.open.is_empty());
        // Every peer gone: a hang-up, not a busy loop.
        drop(theirs);
        b.serve(&mut reg, 64);
        assert!(!b.live());
    }

    #[test]
    fn round_trip_cost() {
        // The IPC part of a first open (no ioctl): a thread asks, the broker answers.
        let (ours, theirs) = pair();
        let mut b = Broker::new(ours, 1 << 20);
        let mut reg = Fake::default();
        let n = 2000;
        let client = std::thread::spawn(move || {
            let f = tempfile::tempfile().unwrap();
            let t = std::time::Instant::now();
            for i in 0..n {
                let id = backing::open(theirs.as_raw_fd(), i, f.as_raw_fd()).unwrap();
                backing::close(theirs.as_raw_fd(), id).unwrap();
            }
            t.elapsed()
        });
        while !client.is_finished() {
            let mut p = libc::pollfd {
                fd: b.fd().as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            unsafe { libc::poll(&mut p, 1, 10) };
            b.serve(&mut reg, 64);
        }
        let el = client.join().unwrap();
        eprintln!(
            "backing open+close round trip: {:.1} us each",
            el.as_secs_f64() * 1e6 / n as f64
        );
        b.serve(&mut reg, 64);
        assert!(reg.open.is_empty());
    }
}
