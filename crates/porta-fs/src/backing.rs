//! Passthrough backing-file registration through the supervisor.
//!
//! Registering a backing file (`FUSE_DEV_IOC_BACKING_OPEN`) needs CAP_SYS_ADMIN in the
//! initial user namespace, which a confined server does not have. So the server sends the
//! open file (SCM_RIGHTS) over a SOCK_SEQPACKET socket to its supervisor, which registers
//! it on its own descriptor of the same connection (backing ids are per connection) and
//! answers the id. Dropping an id is a one-way message.
//!
//! Messages are 16 bytes, native endian. A request is `op: u32, arg: i32, tag: u64`:
//! [`OP_OPEN`] carries exactly one descriptor and the node descriptor the backing is for
//! in `arg` (the supervisor checks the shared table against it after a server died);
//! [`OP_CLOSE`] carries the backing id in `arg`. An answer (to OPEN only) is
//! `tag: u64, result: i32, 0: u32`: the id, or a negative errno. The server discards
//! answers whose tag is not the one it waits for (an answer meant for a killed
//! predecessor). The caller serializes requests (the server holds its node-table lock).

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::sys::{self, SysResult};

/// Register the attached descriptor; `arg` is the node descriptor.
pub const OP_OPEN: u32 = 1;
/// Drop backing id `arg` (no answer).
pub const OP_CLOSE: u32 = 2;
/// Length of every request and answer.
pub const MSG_LEN: usize = 16;

/// A request from the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// [`OP_OPEN`] or [`OP_CLOSE`].
    pub op: u32,
    /// OPEN: the node descriptor; CLOSE: the backing id.
    pub arg: i32,
    /// Echoed in the answer.
    pub tag: u64,
}

impl Request {
    /// The wire form.
    pub fn encode(&self) -> [u8; MSG_LEN] {
        let mut b = [0u8; MSG_LEN];
        b[..4].copy_from_slice(&self.op.to_ne_bytes());
        b[4..8].copy_from_slice(&self.arg.to_ne_bytes());
        b[8..].copy_from_slice(&self.tag.to_ne_bytes());
        b
    }

    /// Parses a request of exactly [`MSG_LEN`] bytes (any op value).
    pub fn decode(b: &[u8]) -> Option<Request> {
        if b.len() != MSG_LEN {
            return None;
        }
        Some(Request {
            op: u32::from_ne_bytes(b[..4].try_into().ok()?),
            arg: i32::from_ne_bytes(b[4..8].try_into().ok()?),
            tag: u64::from_ne_bytes(b[8..].try_into().ok()?),
        })
    }
}

/// The supervisor's answer to an OPEN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Answer {
    /// The request's tag.
    pub tag: u64,
    /// The backing id (>= 0) or a negative errno.
    pub result: i32,
}

impl Answer {
    /// The wire form.
    pub fn encode(&self) -> [u8; MSG_LEN] {
        let mut b = [0u8; MSG_LEN];
        b[..8].copy_from_slice(&self.tag.to_ne_bytes());
        b[8..12].copy_from_slice(&self.result.to_ne_bytes());
        b
    }

    /// Parses an answer of exactly [`MSG_LEN`] bytes.
    pub fn decode(b: &[u8]) -> Option<Answer> {
        if b.len() != MSG_LEN {
            return None;
        }
        Some(Answer {
            tag: u64::from_ne_bytes(b[..8].try_into().ok()?),
            result: i32::from_ne_bytes(b[8..12].try_into().ok()?),
        })
    }
}

static NEXT_TAG: AtomicU64 = AtomicU64::new(0);

/// A tag no earlier server process used: the pid in the high half (a server is a fresh
/// process), a counter in the low half.
pub(crate) fn next_tag() -> u64 {
    let n = NEXT_TAG.fetch_add(1, Ordering::Relaxed) & 0xffff_ffff;
    ((std::process::id() as u64) << 32) | n
}

/// How long [`open`] polls for the supervisor's answer before it blocks.
const ANSWER_SPIN: std::time::Duration = std::time::Duration::from_micros(100);

/// Asks the supervisor on `sock` to register `file` (an open regular file) as the
/// backing file of the node with [`crate::shared::NodeRef::tag`] `node`; returns the
/// backing id. Blocks until answered.
pub fn open(sock: RawFd, node: i32, file: RawFd) -> SysResult<i32> {
    let tag = next_tag();
    let req = Request {
        op: OP_OPEN,
        arg: node,
        tag,
    }
    .encode();
    loop {
        match sys::send_with_fd(sock, &req, Some(file), 0) {
            Ok(_) => break,
            Err(libc::EINTR) => continue,
            Err(e) => return Err(e),
        }
    }
    let mut buf = [0u8; MSG_LEN + 1];
    // The supervisor usually answers within tens of microseconds: poll for the answer
    // that long before sleeping, which saves this thread a wake-up (see server::SPIN).
    let spin_until = std::time::Instant::now() + ANSWER_SPIN;
    loop {
        let flags = if std::time::Instant::now() < spin_until {
            libc::MSG_DONTWAIT
        } else {
            0
        };
        let r = match sys::recv_with_fds(sock, &mut buf, flags) {
            Ok(r) => r,
            Err(libc::EAGAIN) if flags != 0 => {
                std::hint::spin_loop();
                continue;
            }
            Err(libc::EINTR) => continue,
            Err(e) => return Err(e),
        };
        if r.len == 0 {
            // The supervisor is gone.
            return Err(libc::EIO);
        }
        match Answer::decode(&buf[..r.len]) {
            Some(a) if a.tag == tag => {
                return if a.result >= 0 {
                    Ok(a.result)
                } else {
                    Err(a.result.checked_neg().unwrap_or(libc::EIO))
                };
            }
            // An answer meant for a predecessor (or garbage): not ours.
            _ => continue,
        }
    }
}

/// Tells the supervisor on `sock` to drop backing id `id` (no answer awaited).
pub fn close(sock: RawFd, id: i32) -> SysResult<()> {
    let req = Request {
        op: OP_CLOSE,
        arg: id,
        tag: next_tag(),
    }
    .encode();
    loop {
        match sys::send_with_fd(sock, &req, None, 0) {
            Ok(_) => return Ok(()),
            Err(libc::EINTR) => continue,
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn wire_round_trip() {
        let r = Request {
            op: OP_OPEN,
            arg: -7,
            tag: u64::MAX - 3,
        };
        assert_eq!(Request::decode(&r.encode()), Some(r));
        assert_eq!(Request::decode(&[0u8; 15]), None);
        let a = Answer {
            tag: 42,
            result: -libc::EINVAL,
        };
        assert_eq!(Answer::decode(&a.encode()), Some(a));
        assert_eq!(Answer::decode(&[0u8; 17]), None);
    }

    #[test]
    fn open_skips_stale_answers_and_passes_the_descriptor() {
        let (a, b) = nix::sys::socket::socketpair(
            nix::sys::socket::AddressFamily::Unix,
            nix::sys::socket::SockType::SeqPacket,
            None,
            nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        )
        .unwrap();
        // A stale answer for a predecessor sits in the queue already.
        sys::send_with_fd(
            b.as_raw_fd(),
            &Answer { tag: 1, result: 9 }.encode(),
            None,
            0,
        )
        .unwrap();
        let peer = std::thread::spawn(move || {
            let mut buf = [0u8; 32];
            let r = sys::recv_with_fds(b.as_raw_fd(), &mut buf, 0).unwrap();
            let req = Request::decode(&buf[..r.len]).unwrap();
            assert_eq!((req.op, req.arg, r.nfds()), (OP_OPEN, 5, 1));
            let st = sys::fstat(r.fds[0].as_ref().unwrap().as_raw_fd()).unwrap();
            assert_eq!(st.st_mode & libc::S_IFMT, libc::S_IFREG);
            let ans = Answer {
                tag: req.tag,
                result: 3,
            };
            sys::send_with_fd(b.as_raw_fd(), &ans.encode(), None, 0).unwrap();
            let r = sys::recv_with_fds(b.as_raw_fd(), &mut buf, 0).unwrap();
            let req = Request::decode(&buf[..r.len]).unwrap();
            assert_eq!((req.op, req.arg, r.nfds()), (OP_CLOSE, 3, 0));
        });
        let f = tempfile::tempfile().unwrap();
        assert_eq!(open(a.as_raw_fd(), 5, f.as_raw_fd()), Ok(3));
        close(a.as_raw_fd(), 3).unwrap();
        peer.join().unwrap();
    }
}
