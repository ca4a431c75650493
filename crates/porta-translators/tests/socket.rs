//! The FUSE protocol over a SOCK_SEQPACKET socket pair, driven by hand from the test as
//! the container's file server would: INIT, LOOKUP, GETATTR, OPEN, READ; the peer closing
//! the socket ends `serve` with Ok. Needs no privilege: nothing is mounted.

mod common;

use std::fs;
use std::os::fd::{AsRawFd, OwnedFd};
use std::thread::JoinHandle;

use common::scratch;
use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
use porta_translators::{Builtin, Error};

const FUSE_LOOKUP: u32 = 1;
const FUSE_GETATTR: u32 = 3;
const FUSE_SETATTR: u32 = 4;
const FUSE_MKNOD: u32 = 8;
const FUSE_UNLINK: u32 = 10;
const FUSE_RENAME: u32 = 12;
const FUSE_OPEN: u32 = 14;
const FUSE_READ: u32 = 15;
const FUSE_INIT: u32 = 26;

/// The file server's end of the connection, with the translator serving the other.
struct Peer {
    fd: Option<OwnedFd>,
    unique: u64,
    thread: Option<JoinHandle<Result<(), Error>>>,
}

impl Peer {
    fn start(name: &str, arg: &str) -> Peer {
        let prepared = Builtin::parse(name, &[arg.to_string()])
            .unwrap()
            .prepare()
            .unwrap();
        let (ours, theirs) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .unwrap();
        let thread = std::thread::spawn(move || prepared.serve(theirs));
        Peer {
            fd: Some(ours),
            unique: 0,
            thread: Some(thread),
        }
    }

    /// Sends one request (from uid 0) and returns the reply's error and payload.
    fn call(&mut self, opcode: u32, nodeid: u64, arg: &[u8]) -> (i32, Vec<u8>) {
        self.call_as(0, opcode, nodeid, arg)
    }

    /// Sends one request from `uid` (gid the same).
    fn call_as(&mut self, uid: u32, opcode: u32, nodeid: u64, arg: &[u8]) -> (i32, Vec<u8>) {
        self.unique += 1;
        let mut msg = Vec::new();
        msg.extend_from_slice(&(40 + arg.len() as u32).to_ne_bytes());
        msg.extend_from_slice(&opcode.to_ne_bytes());
        msg.extend_from_slice(&self.unique.to_ne_bytes());
        msg.extend_from_slice(&nodeid.to_ne_bytes());
        msg.extend_from_slice(&uid.to_ne_bytes());
        msg.extend_from_slice(&uid.to_ne_bytes()); // gid
        msg.extend_from_slice(&1u32.to_ne_bytes()); // pid
        msg.extend_from_slice(&0u32.to_ne_bytes()); // total_extlen, padding
        msg.extend_from_slice(arg);
        let fd = self.fd.as_ref().unwrap();
        let n = nix::unistd::write(fd, &msg).unwrap();
        assert_eq!(n, msg.len());
        let mut buf = vec![0u8; (1 << 17) + 4096];
        let n = nix::unistd::read(fd.as_raw_fd(), &mut buf).unwrap();
        assert!(n >= 16, "short reply: {n} bytes");
        let len = u32::from_ne_bytes(buf[0..4].try_into().unwrap()) as usize;
        assert_eq!(len, n, "reply length field");
        let error = i32::from_ne_bytes(buf[4..8].try_into().unwrap());
        let unique = u64::from_ne_bytes(buf[8..16].try_into().unwrap());
        assert_eq!(unique, self.unique);
        (error, buf[16..n].to_vec())
    }

    fn init(&mut self) {
        let mut arg = Vec::new();
        for v in [7u32, 31, 1 << 20, 0] {
            arg.extend_from_slice(&v.to_ne_bytes());
        }
        arg.resize(64, 0);
        let (err, out) = self.call(FUSE_INIT, 0, &arg);
        assert_eq!(err, 0);
        assert_eq!(
            u32::from_ne_bytes(out[0..4].try_into().unwrap()),
            7,
            "major"
        );
        // fuse_init_out.max_write: every message must fit a SEQPACKET socket's buffer.
        assert_eq!(u32_at(&out, 20), 128 * 1024, "max_write");
        // fuse_init_out.max_readahead (offered 1 MiB) and max_pages (at 28) follow.
        assert_eq!(u32_at(&out, 8), 128 * 1024, "max_readahead");
        let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
            .unwrap()
            .unwrap() as usize;
        let pages = (128 * 1024usize).div_ceil(page) as u16;
        assert_eq!(u16::from_ne_bytes([out[28], out[29]]), pages, "max_pages");
    }

    fn lookup(&mut self, parent: u64, name: &str) -> Result<(u64, u32), i32> {
        let mut arg = name.as_bytes().to_vec();
        arg.push(0);
        let (err, out) = self.call(FUSE_LOOKUP, parent, &arg);
        if err != 0 {
            return Err(-err);
        }
        // fuse_entry_out: nodeid, generation, valid times, then fuse_attr (mode at 60).
        let nodeid = u64::from_ne_bytes(out[0..8].try_into().unwrap());
        let mode = u32::from_ne_bytes(out[40 + 60..40 + 64].try_into().unwrap());
        Ok((nodeid, mode))
    }

    /// Closes our end and returns what `serve` returned.
    fn close(mut self) -> Result<(), Error> {
        drop(self.fd.take());
        self.thread.take().unwrap().join().unwrap()
    }
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_ne_bytes(b[at..at + 8].try_into().unwrap())
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes(b[at..at + 4].try_into().unwrap())
}

#[test]
fn tar_over_a_seqpacket_socket() {
    let dir = scratch("porta-translators-sock-");
    let path = dir.path().join("one.tar");
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_mode(0o644);
    h.set_size(12);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    b.append_data(&mut h, "hello.txt", &b"hello, world"[..])
        .unwrap();
    let big: Vec<u8> = (0..200_000u32).map(|i| (i % 253) as u8).collect();
    h.set_size(big.len() as u64);
    b.append_data(&mut h, "big", &big[..]).unwrap();
    fs::write(&path, b.into_inner().unwrap()).unwrap();

    let mut peer = Peer::start("tar", path.to_str().unwrap());
    peer.init();
    assert_eq!(peer.lookup(1, "absent"), Err(libc::ENOENT));
    let (ino, mode) = peer.lookup(1, "hello.txt").unwrap();
    assert_eq!(mode, libc::S_IFREG | 0o644);

    // GETATTR: fuse_getattr_in; reply fuse_attr_out (attr at 16: size at +8).
    let (err, out) = peer.call(FUSE_GETATTR, ino, &[0u8; 16]);
    assert_eq!(err, 0);
    assert_eq!(u64_at(&out, 16), ino);
    assert_eq!(u64_at(&out, 24), 12);

    // OPEN read-only; READ 5 bytes at offset 7.
    let (err, out) = peer.call(FUSE_OPEN, ino, &[0u8; 8]);
    assert_eq!(err, 0);
    let fh = u64_at(&out, 0);
    let mut read = Vec::new();
    read.extend_from_slice(&fh.to_ne_bytes());
    read.extend_from_slice(&7u64.to_ne_bytes());
    read.extend_from_slice(&5u32.to_ne_bytes());
    read.resize(40, 0);
    let (err, out) = peer.call(FUSE_READ, ino, &read);
    assert_eq!(err, 0);
    assert_eq!(out, b"world");

    // A read of max_write bytes fits in one message.
    let (big_ino, _) = peer.lookup(1, "big").unwrap();
    let mut read = Vec::new();
    read.extend_from_slice(&0u64.to_ne_bytes());
    read.extend_from_slice(&1000u64.to_ne_bytes());
    read.extend_from_slice(&(128u32 * 1024).to_ne_bytes());
    read.resize(40, 0);
    let (err, out) = peer.call(FUSE_READ, big_ino, &read);
    assert_eq!(err, 0);
    assert_eq!(out, &big[1000..1000 + 128 * 1024]);

    // Opening for writing is refused.
    let mut open_rw = Vec::new();
    open_rw.extend_from_slice(&(libc::O_RDWR as u32).to_ne_bytes());
    open_rw.resize(8, 0);
    assert_eq!(peer.call(FUSE_OPEN, ino, &open_rw).0, -libc::EROFS);

    // The file server closing the socket ends serving cleanly.
    peer.close().unwrap();
}

#[test]
fn view_never_follows_a_symlink_out() {
    let src = scratch("porta-translators-sock-");
    fs::write(src.path().join("f"), b"f").unwrap();
    std::os::unix::fs::symlink("/", src.path().join("escape")).unwrap();
    std::os::unix::fs::symlink("..", src.path().join("dotdot")).unwrap();

    let mut peer = Peer::start("view", src.path().to_str().unwrap());
    peer.init();
    let (link, mode) = peer.lookup(1, "escape").unwrap();
    assert_eq!(mode & libc::S_IFMT, libc::S_IFLNK);
    // A peer asking for a name beneath the symlink gets nothing from beyond it.
    assert_eq!(peer.lookup(link, "etc"), Err(libc::ENOTDIR));
    let (dotdot, _) = peer.lookup(1, "dotdot").unwrap();
    assert_eq!(peer.lookup(dotdot, "f"), Err(libc::ENOTDIR));
    // Nor are "..", "." or names with a slash looked up.
    for name in ["..", ".", "escape/etc", "../etc"] {
        assert_eq!(peer.lookup(1, name), Err(libc::EINVAL), "{name}");
    }
    let (f, mode) = peer.lookup(1, "f").unwrap();
    assert_eq!(mode & libc::S_IFMT, libc::S_IFREG);
    let (err, out) = peer.call(FUSE_GETATTR, f, &[0u8; 16]);
    assert_eq!(err, 0);
    assert_eq!(u32_at(&out, 16 + 60) & libc::S_IFMT, libc::S_IFREG);
    peer.close().unwrap();
}

#[test]
fn closing_before_init_is_a_clean_end() {
    let peer = Peer::start("memfs", "size=1m");
    peer.close().unwrap();
}

#[test]
fn an_empty_message_from_a_live_peer_is_an_error() {
    let mut peer = Peer::start("memfs", "size=1m");
    let fd = peer.fd.as_ref().unwrap();
    nix::unistd::write(fd, b"").unwrap();
    let thread = peer.thread.take().unwrap();
    let err = thread
        .join()
        .unwrap()
        .expect_err("an empty message ended serving cleanly");
    assert!(err.to_string().contains("porta:memfs"), "{err}");
}

#[test]
fn garbage_instead_of_a_request_is_an_error() {
    let mut peer = Peer::start("memfs", "size=1m");
    let fd = peer.fd.as_ref().unwrap();
    nix::unistd::write(fd, b"not a fuse request").unwrap();
    let thread = peer.thread.take().unwrap();
    let err = thread.join().unwrap().expect_err("garbage accepted");
    assert!(err.to_string().contains("porta:memfs"), "{err}");
}

/// A MKNOD of a regular file `name` in `parent` from `uid`; the reply's error and node id.
fn mknod(peer: &mut Peer, uid: u32, parent: u64, name: &str) -> (i32, u64) {
    let mut arg = Vec::new();
    for v in [libc::S_IFREG | 0o644, 0, 0, 0] {
        arg.extend_from_slice(&v.to_ne_bytes());
    }
    arg.extend_from_slice(name.as_bytes());
    arg.push(0);
    let (err, out) = peer.call_as(uid, FUSE_MKNOD, parent, &arg);
    (err, if err == 0 { u64_at(&out, 0) } else { 0 })
}

/// A SETATTR from `uid` of the mode or the owner (`valid`: FATTR_MODE 1, FATTR_UID 2).
fn setattr(peer: &mut Peer, uid: u32, ino: u64, valid: u32, mode: u32, owner: u32) -> i32 {
    let mut arg = vec![0u8; 88];
    arg[0..4].copy_from_slice(&valid.to_ne_bytes());
    arg[68..72].copy_from_slice(&mode.to_ne_bytes());
    arg[76..80].copy_from_slice(&owner.to_ne_bytes());
    arg[80..84].copy_from_slice(&owner.to_ne_bytes());
    if valid & 2 != 0 {
        arg[0..4].copy_from_slice(&(valid | 4).to_ne_bytes());
    }
    peer.call_as(uid, FUSE_SETATTR, ino, &arg).0
}

/// memfs enforces the ownership rules itself, not only through the kernel's
/// `default_permissions`: a peer passing requests on unchecked gets no further.
#[test]
fn memfs_enforces_ownership_rules_itself() {
    let mut peer = Peer::start("memfs", "mode=1777");
    peer.init();
    let (err, roots) = mknod(&mut peer, 0, 1, "roots");
    assert_eq!(err, 0);
    let (err, users) = mknod(&mut peer, 1000, 1, "users");
    assert_eq!(err, 0);
    // Sticky root directory: uid 1000 may not remove or rename root's file.
    let name = |n: &str| {
        let mut v = n.as_bytes().to_vec();
        v.push(0);
        v
    };
    assert_eq!(
        peer.call_as(1000, FUSE_UNLINK, 1, &name("roots")).0,
        -libc::EPERM
    );
    let mut rename = 1u64.to_ne_bytes().to_vec();
    rename.extend(name("roots"));
    rename.extend(name("moved"));
    assert_eq!(peer.call_as(1000, FUSE_RENAME, 1, &rename).0, -libc::EPERM);
    // chmod by the owner or root only; chown by root only.
    assert_eq!(setattr(&mut peer, 1000, roots, 1, 0o777, 0), -libc::EPERM);
    assert_eq!(setattr(&mut peer, 1000, users, 1, 0o600, 0), 0);
    assert_eq!(setattr(&mut peer, 1000, users, 2, 0, 0), -libc::EPERM);
    assert_eq!(setattr(&mut peer, 0, users, 2, 0, 0), 0);
    // Now root's: uid 1000 may not remove it either; root may remove anything.
    assert_eq!(
        peer.call_as(1000, FUSE_UNLINK, 1, &name("users")).0,
        -libc::EPERM
    );
    assert_eq!(peer.call_as(0, FUSE_UNLINK, 1, &name("users")).0, 0);
    assert_eq!(peer.call_as(0, FUSE_UNLINK, 1, &name("roots")).0, 0);
    peer.close().unwrap();
}
