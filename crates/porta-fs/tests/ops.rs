//! Each FUSE operation the server implements, one request at a time over an in-memory
//! connection: a SEQPACKET socket pair stands in for /dev/fuse (the server reads and
//! writes whole frames on it as on the device), the backing root is a temporary
//! directory, the shared state an anonymous region. No mount, no /dev/fuse, no
//! privilege: these run as any user (requests carry the test's own uid and gid).
//!
//! Each test sends the encoded request and checks the decoded reply, and an error case
//! where the operation has one.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use porta_fs::abi::{fattr, op, IN_HEADER_LEN};
use porta_fs::{serve, sys, Config, Shared};

/// A server on one end of a socket pair, serving a temporary backing directory.
struct Conn {
    client: OwnedFd,
    thread: Option<std::thread::JoinHandle<Result<porta_fs::Exit, porta_fs::Error>>>,
    unique: u64,
    _fds: Vec<OwnedFd>,
    dir: tempfile::TempDir,
    uid: u32,
    gid: u32,
}

fn socketpair() -> (OwnedFd, OwnedFd) {
    let mut sv = [0i32; 2];
    // SAFETY: `sv` is a valid out-array of two ints.
    let r = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            sv.as_mut_ptr(),
        )
    };
    assert_eq!(r, 0, "socketpair");
    // SAFETY: fresh descriptors owned by nobody else.
    unsafe { (OwnedFd::from_raw_fd(sv[0]), OwnedFd::from_raw_fd(sv[1])) }
}

fn open_dir(p: &Path, flags: i32) -> OwnedFd {
    let c = CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    sys::openat(libc::AT_FDCWD, &c, flags | libc::O_DIRECTORY, 0).unwrap()
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes(b[at..at + 4].try_into().unwrap())
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_ne_bytes(b[at..at + 8].try_into().unwrap())
}

/// Concatenates request body parts.
fn body(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

fn name(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

/// `struct fuse_attr` fields in an entry reply (`fuse_entry_out`: 40 bytes, then attr).
const ENTRY_ATTR: usize = 40;
/// `struct fuse_attr` in an attribute reply (`fuse_attr_out`: 16 bytes, then attr).
const ATTR_ATTR: usize = 16;
/// Offsets inside `struct fuse_attr`.
const A_INO: usize = 0;
const A_SIZE: usize = 8;
const A_MTIME: usize = 32;
const A_MODE: usize = 60;
const A_NLINK: usize = 64;
const A_UID: usize = 68;
const A_RDEV: usize = 76;

impl Conn {
    fn new() -> Conn {
        let dir = tempfile::Builder::new()
            .prefix("porta-fs-ops")
            .tempdir()
            .unwrap();
        let backing = dir.path().join("backing");
        std::fs::create_dir(&backing).unwrap();
        let (client, server) = socketpair();
        let root = open_dir(&backing, libc::O_PATH);
        let procfd = open_dir(Path::new("/proc/self/fd"), libc::O_RDONLY);
        let cfg = Config {
            fuse_fd: server.as_raw_fd(),
            root_fd: root.as_raw_fd(),
            proc_fd: procfd.as_raw_fd(),
            shared: Shared::anonymous(4096).unwrap(),
            passthrough: false,
            threads: 1,
            ttl: Duration::from_secs(1),
            backing_fd: -1,
            transport: porta_fs::Transport::Dev,
            rings: None,
        };
        let thread = std::thread::spawn(move || serve(&cfg));
        // SAFETY: plain getters.
        let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
        let mut c = Conn {
            client,
            thread: Some(thread),
            unique: 0,
            _fds: vec![server, root, procfd],
            dir,
            uid,
            gid,
        };
        c.init();
        c
    }

    /// INIT 7.40 offering every flag.
    fn init(&mut self) {
        let mut b = Vec::new();
        for v in [7u32, 40, 131072, u32::MAX, u32::MAX] {
            b.extend_from_slice(&v.to_ne_bytes());
        }
        b.extend_from_slice(&[0u8; 44]);
        let (err, out) = self.req(op::INIT, 0, &b);
        assert_eq!(err, 0, "INIT");
        assert_eq!((u32_at(&out, 0), u32_at(&out, 4)), (7, 40), "protocol 7.40");
        assert_eq!(u32_at(&out, 20), porta_fs::MAX_WRITE, "max_write");
    }

    fn backing(&self) -> PathBuf {
        self.dir.path().join("backing")
    }

    fn frame(&mut self, opcode: u32, nodeid: u64, b: &[u8]) -> (u64, Vec<u8>) {
        self.unique += 2;
        let mut f = Vec::with_capacity(IN_HEADER_LEN + b.len());
        f.extend_from_slice(&((IN_HEADER_LEN + b.len()) as u32).to_ne_bytes());
        f.extend_from_slice(&opcode.to_ne_bytes());
        f.extend_from_slice(&self.unique.to_ne_bytes());
        f.extend_from_slice(&nodeid.to_ne_bytes());
        f.extend_from_slice(&self.uid.to_ne_bytes());
        f.extend_from_slice(&self.gid.to_ne_bytes());
        f.extend_from_slice(&std::process::id().to_ne_bytes());
        f.extend_from_slice(&[0u8; 4]);
        f.extend_from_slice(b);
        (self.unique, f)
    }

    fn recv(&self) -> (u64, i32, Vec<u8>) {
        let mut buf = vec![0u8; 1 << 21];
        let n = sys::read(self.client.as_raw_fd(), &mut buf).unwrap();
        assert!(n >= 16, "short reply");
        assert_eq!(u32_at(&buf, 0) as usize, n, "reply length field");
        let err = i32::from_ne_bytes(buf[4..8].try_into().unwrap());
        (u64_at(&buf, 8), err, buf[16..n].to_vec())
    }

    /// Sends a request; returns (error, payload) of its reply (past notifications).
    fn req(&mut self, opcode: u32, nodeid: u64, b: &[u8]) -> (i32, Vec<u8>) {
        let (u, f) = self.frame(opcode, nodeid, b);
        sys::write(self.client.as_raw_fd(), &f).unwrap();
        loop {
            let (ru, err, out) = self.recv();
            if ru == 0 {
                continue; // a notification
            }
            assert_eq!(ru, u, "reply to the wrong request");
            return (err, out);
        }
    }

    /// Sends a request that is never answered (FORGET, INTERRUPT), then checks that the
    /// server goes on with the next one.
    fn send_unanswered(&mut self, opcode: u32, nodeid: u64, b: &[u8]) {
        let (_, f) = self.frame(opcode, nodeid, b);
        sys::write(self.client.as_raw_fd(), &f).unwrap();
    }

    /// LOOKUP of `n` in `parent`: (error, node id, entry reply).
    fn lookup(&mut self, parent: u64, n: &str) -> (i32, u64, Vec<u8>) {
        let (err, out) = self.req(op::LOOKUP, parent, &name(n));
        let id = if err == 0 { u64_at(&out, 0) } else { 0 };
        (err, id, out)
    }

    fn node(&mut self, parent: u64, n: &str) -> u64 {
        let (err, id, _) = self.lookup(parent, n);
        assert_eq!(err, 0, "LOOKUP {n}");
        assert!(id > 1, "LOOKUP {n} gave a node");
        id
    }

    /// OPEN of node `id` with `flags`: the handle.
    fn open(&mut self, id: u64, flags: i32) -> u64 {
        let (err, out) = self.req(op::OPEN, id, &open_body(flags));
        assert_eq!(err, 0, "OPEN");
        u64_at(&out, 0)
    }

    fn release(&mut self, id: u64, fh: u64) {
        assert_eq!(self.req(op::RELEASE, id, &release_body(fh)).0, 0);
    }

    /// The mode in a GETATTR reply of `id`.
    fn getattr(&mut self, id: u64) -> Vec<u8> {
        let (err, out) = self.req(op::GETATTR, id, &[0u8; 16]);
        assert_eq!(err, 0, "GETATTR");
        out
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        // Closing the client end makes the server's read return 0: it exits.
        let (a, _) = socketpair();
        // SAFETY: replaces the client descriptor (closing the old one) with a fresh one.
        let r = unsafe { libc::dup2(a.as_raw_fd(), self.client.as_raw_fd()) };
        assert!(r >= 0);
        drop(a);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn open_body(flags: i32) -> Vec<u8> {
    body(&[&flags.to_ne_bytes(), &0u32.to_ne_bytes()])
}

fn release_body(fh: u64) -> Vec<u8> {
    body(&[&fh.to_ne_bytes(), &[0u8; 16]])
}

fn create_body(flags: i32, mode: u32, n: &str) -> Vec<u8> {
    body(&[
        &flags.to_ne_bytes(),
        &mode.to_ne_bytes(),
        &0o022u32.to_ne_bytes(),
        &0u32.to_ne_bytes(),
        &name(n),
    ])
}

fn read_body(fh: u64, off: u64, size: u32) -> Vec<u8> {
    body(&[
        &fh.to_ne_bytes(),
        &off.to_ne_bytes(),
        &size.to_ne_bytes(),
        &[0u8; 20],
    ])
}

fn write_body(fh: u64, off: u64, data: &[u8]) -> Vec<u8> {
    body(&[
        &fh.to_ne_bytes(),
        &off.to_ne_bytes(),
        &(data.len() as u32).to_ne_bytes(),
        &0u32.to_ne_bytes(),
        &[0u8; 16],
        data,
    ])
}

fn setattr_body(valid: u32, fh: u64, size: u64, mtime: u64, mode: u32) -> Vec<u8> {
    body(&[
        &valid.to_ne_bytes(),
        &0u32.to_ne_bytes(),
        &fh.to_ne_bytes(),
        &size.to_ne_bytes(),
        &0u64.to_ne_bytes(),     // lock_owner
        &0u64.to_ne_bytes(),     // atime
        &mtime.to_ne_bytes(),    // mtime
        &0u64.to_ne_bytes(),     // ctime
        &[0u8; 12],              // atimensec, mtimensec, ctimensec
        &mode.to_ne_bytes(),     // mode
        &0u32.to_ne_bytes(),     // unused
        &u32::MAX.to_ne_bytes(), // uid
        &u32::MAX.to_ne_bytes(), // gid
        &0u32.to_ne_bytes(),     // unused
    ])
}

fn readdir_body(off: u64) -> Vec<u8> {
    body(&[
        &0u64.to_ne_bytes(),
        &off.to_ne_bytes(),
        &4096u32.to_ne_bytes(),
        &[0u8; 20],
    ])
}

/// The names of a READDIR reply (`fuse_dirent`s).
fn dirent_names(out: &[u8]) -> Vec<String> {
    let mut v = Vec::new();
    let mut p = 0;
    while p + 24 <= out.len() {
        let len = u32_at(out, p + 16) as usize;
        v.push(String::from_utf8(out[p + 24..p + 24 + len].to_vec()).unwrap());
        p += (24 + len).div_ceil(8) * 8;
    }
    v
}

/// The (name, node id) pairs of a READDIRPLUS reply (`fuse_direntplus`s: an entry reply
/// of 128 bytes, then a `fuse_dirent`).
fn direntplus(out: &[u8]) -> Vec<(String, u64)> {
    let mut v = Vec::new();
    let mut p = 0;
    while p + 128 + 24 <= out.len() {
        let id = u64_at(out, p);
        let d = p + 128;
        let len = u32_at(out, d + 16) as usize;
        v.push((
            String::from_utf8(out[d + 24..d + 24 + len].to_vec()).unwrap(),
            id,
        ));
        p = d + (24 + len).div_ceil(8) * 8;
    }
    v
}

#[test]
fn lookup_finds_names_and_answers_missing_ones_with_a_negative_entry() {
    let mut c = Conn::new();
    std::fs::write(c.backing().join("f"), "abc").unwrap();
    let (err, id, out) = c.lookup(1, "f");
    assert_eq!(err, 0);
    assert!(id > 1);
    let ino = std::fs::metadata(c.backing().join("f")).unwrap().ino();
    assert_eq!(u64_at(&out, ENTRY_ATTR + A_INO), ino);
    assert_eq!(u64_at(&out, ENTRY_ATTR + A_SIZE), 3);
    assert_eq!(
        u32_at(&out, ENTRY_ATTR + A_MODE) & libc::S_IFMT,
        libc::S_IFREG
    );
    // The same inode is the same node.
    assert_eq!(c.node(1, "f"), id);
    let (err, id, _) = c.lookup(1, "missing");
    assert_eq!((err, id), (0, 0), "negative entry");
    assert_eq!(c.lookup(1, "..").0, -libc::EINVAL, "not one component");
    assert_eq!(
        c.lookup(999_999, "f").0,
        -libc::ESTALE,
        "no such parent node"
    );
}

#[test]
fn forget_and_batch_forget_drop_lookups_without_an_answer() {
    let mut c = Conn::new();
    std::fs::write(c.backing().join("f"), "").unwrap();
    std::fs::write(c.backing().join("g"), "").unwrap();
    let f = c.node(1, "f");
    let f2 = c.node(1, "f");
    assert_eq!(f, f2);
    let g = c.node(1, "g");
    // Two lookups of f dropped at once, g's by a batch: both nodes go.
    c.send_unanswered(op::FORGET, f, &2u64.to_ne_bytes());
    let batch = body(&[
        &1u32.to_ne_bytes(),
        &0u32.to_ne_bytes(),
        &g.to_ne_bytes(),
        &1u64.to_ne_bytes(),
    ]);
    c.send_unanswered(op::BATCH_FORGET, 0, &batch);
    // The next reply is GETATTR's: the FORGETs got none. The forgotten nodes are gone.
    assert_eq!(c.req(op::GETATTR, f, &[0u8; 16]).0, -libc::ESTALE);
    assert_eq!(c.req(op::GETATTR, g, &[0u8; 16]).0, -libc::ESTALE);
}

#[test]
fn getattr_of_a_node_and_of_an_open_file() {
    let mut c = Conn::new();
    std::fs::write(c.backing().join("f"), "12345").unwrap();
    let out = c.getattr(1);
    assert_eq!(
        u32_at(&out, ATTR_ATTR + A_MODE) & libc::S_IFMT,
        libc::S_IFDIR
    );
    let f = c.node(1, "f");
    let fh = c.open(f, libc::O_RDONLY);
    let b = body(&[&1u32.to_ne_bytes(), &0u32.to_ne_bytes(), &fh.to_ne_bytes()]);
    let (err, out) = c.req(op::GETATTR, f, &b);
    assert_eq!(err, 0);
    assert_eq!(u64_at(&out, ATTR_ATTR + A_SIZE), 5);
    assert_eq!(c.req(op::GETATTR, 424_242, &[0u8; 16]).0, -libc::ESTALE);
    assert_eq!(
        c.req(op::GETATTR, 1, &[0u8; 4]).0,
        -libc::EINVAL,
        "short body"
    );
}

#[test]
fn setattr_changes_mode_size_and_times() {
    let mut c = Conn::new();
    std::fs::write(c.backing().join("f"), "0123456789").unwrap();
    let f = c.node(1, "f");
    let valid = fattr::MODE | fattr::SIZE | fattr::MTIME;
    let (err, out) = c.req(op::SETATTR, f, &setattr_body(valid, 0, 4, 1_000_000, 0o640));
    assert_eq!(err, 0);
    assert_eq!(u32_at(&out, ATTR_ATTR + A_MODE) & 0o7777, 0o640);
    assert_eq!(u64_at(&out, ATTR_ATTR + A_SIZE), 4);
    assert_eq!(u64_at(&out, ATTR_ATTR + A_MTIME), 1_000_000);
    let md = std::fs::metadata(c.backing().join("f")).unwrap();
    assert_eq!(
        (md.len(), md.mode() & 0o7777, md.mtime()),
        (4, 0o640, 1_000_000)
    );
    // Truncating a directory fails as the backing file system says.
    let (err, _) = c.req(op::SETATTR, 1, &setattr_body(fattr::SIZE, 0, 0, 0, 0));
    assert_eq!(err, -libc::EISDIR);
}

#[test]
fn symlink_and_readlink() {
    let mut c = Conn::new();
    let (err, out) = c.req(
        op::SYMLINK,
        1,
        &body(&[&name("l"), &name("/target/elsewhere")]),
    );
    assert_eq!(err, 0);
    let l = u64_at(&out, 0);
    assert_eq!(
        u32_at(&out, ENTRY_ATTR + A_MODE) & libc::S_IFMT,
        libc::S_IFLNK
    );
    assert_eq!(
        u32_at(&out, ENTRY_ATTR + A_UID),
        c.uid,
        "owned by the caller"
    );
    assert_eq!(
        std::fs::read_link(c.backing().join("l")).unwrap(),
        Path::new("/target/elsewhere")
    );
    let (err, out) = c.req(op::READLINK, l, &[]);
    assert_eq!((err, out.as_slice()), (0, &b"/target/elsewhere"[..]));
    // Not a symlink (readlinkat of an empty path names no link).
    assert_eq!(c.req(op::READLINK, 1, &[]).0, -libc::ENOENT);
    // The name is taken.
    let again = body(&[&name("l"), &name("x")]);
    assert_eq!(c.req(op::SYMLINK, 1, &again).0, -libc::EEXIST);
}

#[test]
fn mknod_makes_fifos_and_stores_device_nodes_as_files() {
    let mut c = Conn::new();
    let mknod = |mode: u32, rdev: u32, n: &str| {
        body(&[
            &mode.to_ne_bytes(),
            &rdev.to_ne_bytes(),
            &0o022u32.to_ne_bytes(),
            &0u32.to_ne_bytes(),
            &name(n),
        ])
    };
    let (err, out) = c.req(op::MKNOD, 1, &mknod(libc::S_IFIFO | 0o644, 0, "fifo"));
    assert_eq!(err, 0);
    assert_eq!(
        u32_at(&out, ENTRY_ATTR + A_MODE) & libc::S_IFMT,
        libc::S_IFIFO
    );
    use std::os::unix::fs::FileTypeExt;
    assert!(std::fs::symlink_metadata(c.backing().join("fifo"))
        .unwrap()
        .file_type()
        .is_fifo());
    // A character device: shown as one, stored as an empty sticky file with an xattr
    // (needs user xattrs on the file system of the temporary directory).
    let rdev = libc::makedev(1, 3) as u32;
    let (err, out) = c.req(op::MKNOD, 1, &mknod(libc::S_IFCHR | 0o666, rdev, "null"));
    if err == -libc::EOPNOTSUPP {
        eprintln!("device node part skipped: no user xattrs on the temporary directory");
    } else {
        assert_eq!(err, 0);
        assert_eq!(u32_at(&out, ENTRY_ATTR + A_MODE), libc::S_IFCHR | 0o666);
        assert_eq!(u32_at(&out, ENTRY_ATTR + A_RDEV), rdev);
        let md = std::fs::symlink_metadata(c.backing().join("null")).unwrap();
        assert!(md.is_file() && md.len() == 0 && md.mode() & 0o1000 != 0);
    }
    // A directory is not MKNOD's to make.
    assert_eq!(
        c.req(op::MKNOD, 1, &mknod(libc::S_IFDIR | 0o755, 0, "d")).0,
        -libc::EINVAL
    );
}

#[test]
fn mkdir_and_rmdir() {
    let mut c = Conn::new();
    let mkdir = body(&[&0o750u32.to_ne_bytes(), &0u32.to_ne_bytes(), &name("d")]);
    let (err, out) = c.req(op::MKDIR, 1, &mkdir);
    assert_eq!(err, 0);
    let d = u64_at(&out, 0);
    assert_eq!(u32_at(&out, ENTRY_ATTR + A_MODE), libc::S_IFDIR | 0o750);
    assert_eq!(u32_at(&out, ENTRY_ATTR + A_NLINK), 2);
    assert_eq!(c.req(op::MKDIR, 1, &mkdir).0, -libc::EEXIST);
    std::fs::write(c.backing().join("d/inner"), "").unwrap();
    assert_eq!(c.req(op::RMDIR, 1, &name("d")).0, -libc::ENOTEMPTY);
    assert_eq!(c.req(op::UNLINK, d, &name("inner")).0, 0);
    assert_eq!(c.req(op::RMDIR, 1, &name("d")).0, 0);
    assert!(!c.backing().join("d").exists());
}

#[test]
fn unlink_removes_a_name() {
    let mut c = Conn::new();
    std::fs::write(c.backing().join("f"), "").unwrap();
    assert_eq!(c.req(op::UNLINK, 1, &name("f")).0, 0);
    assert!(!c.backing().join("f").exists());
    assert_eq!(c.req(op::UNLINK, 1, &name("f")).0, -libc::ENOENT);
    std::fs::create_dir(c.backing().join("d")).unwrap();
    assert_eq!(c.req(op::UNLINK, 1, &name("d")).0, -libc::EISDIR);
}

#[test]
fn rename_and_rename2_move_and_exchange_names() {
    let mut c = Conn::new();
    std::fs::write(c.backing().join("a"), "A").unwrap();
    std::fs::create_dir(c.backing().join("d")).unwrap();
    let d = c.node(1, "d");
    let (err, _) = c.req(
        op::RENAME,
        1,
        &body(&[&d.to_ne_bytes(), &name("a"), &name("b")]),
    );
    assert_eq!(err, 0);
    assert_eq!(std::fs::read(c.backing().join("d/b")).unwrap(), b"A");
    std::fs::write(c.backing().join("x"), "X").unwrap();
    let rename2 = |flags: u32, old: &str, new: &str| {
        body(&[
            &d.to_ne_bytes(),
            &flags.to_ne_bytes(),
            &0u32.to_ne_bytes(),
            &name(old),
            &name(new),
        ])
    };
    // x and d/b trade places.
    let (err, _) = c.req(op::RENAME2, 1, &rename2(libc::RENAME_EXCHANGE, "x", "b"));
    assert_eq!(err, 0);
    assert_eq!(std::fs::read(c.backing().join("d/b")).unwrap(), b"X");
    assert_eq!(std::fs::read(c.backing().join("x")).unwrap(), b"A");
    // RENAME_NOREPLACE onto an existing name.
    let (err, _) = c.req(op::RENAME2, 1, &rename2(libc::RENAME_NOREPLACE, "x", "b"));
    assert_eq!(err, -libc::EEXIST);
    let (err, _) = c.req(op::RENAME2, 1, &rename2(0, "nothing", "b"));
    assert_eq!(err, -libc::ENOENT);
}

#[test]
fn link_gives_a_node_a_second_name() {
    let mut c = Conn::new();
    std::fs::write(c.backing().join("f"), "").unwrap();
    let f = c.node(1, "f");
    let (err, out) = c.req(op::LINK, 1, &body(&[&f.to_ne_bytes(), &name("g")]));
    assert_eq!(err, 0);
    assert_eq!(u64_at(&out, 0), f, "one node per inode");
    assert_eq!(u32_at(&out, ENTRY_ATTR + A_NLINK), 2);
    let (err, _) = c.req(op::LINK, 1, &body(&[&f.to_ne_bytes(), &name("g")]));
    assert_eq!(err, -libc::EEXIST);
    let (err, _) = c.req(op::LINK, 1, &body(&[&777_777u64.to_ne_bytes(), &name("h")]));
    assert_eq!(err, -libc::ESTALE);
}

#[test]
fn create_open_write_read_release() {
    let mut c = Conn::new();
    let (err, out) = c.req(
        op::CREATE,
        1,
        &create_body(libc::O_RDWR | libc::O_EXCL, 0o600, "f"),
    );
    assert_eq!(err, 0);
    assert_eq!(out.len(), 128 + 16, "entry and open replies");
    let f = u64_at(&out, 0);
    let fh = u64_at(&out, 128);
    assert_eq!(u32_at(&out, ENTRY_ATTR + A_MODE), libc::S_IFREG | 0o600);
    let (err, out) = c.req(op::WRITE, f, &write_body(fh, 0, b"hello world"));
    assert_eq!((err, u32_at(&out, 0)), (0, 11));
    let (err, out) = c.req(op::READ, f, &read_body(fh, 6, 100));
    assert_eq!((err, out.as_slice()), (0, &b"world"[..]));
    c.release(f, fh);
    assert_eq!(
        std::fs::read(c.backing().join("f")).unwrap(),
        b"hello world"
    );
    // A released handle is gone.
    assert_eq!(c.req(op::READ, f, &read_body(fh, 0, 1)).0, -libc::EBADF);
    // O_EXCL is the kernel's to check (it sends CREATE after a negative lookup): a
    // CREATE of a name taken by a regular file opens it, one taken by a directory fails.
    let again = create_body(libc::O_RDWR | libc::O_EXCL, 0o600, "f");
    let (err, out) = c.req(op::CREATE, 1, &again);
    assert_eq!((err, u64_at(&out, 0)), (0, f), "the same node");
    c.release(f, u64_at(&out, 128));
    std::fs::create_dir(c.backing().join("d")).unwrap();
    let dir = create_body(libc::O_RDWR, 0o600, "d");
    assert_eq!(c.req(op::CREATE, 1, &dir).0, -libc::EISDIR);
    // OPEN by node, read only: writes fail.
    let ro = c.open(f, libc::O_RDONLY);
    assert_eq!(
        c.req(op::WRITE, f, &write_body(ro, 0, b"x")).0,
        -libc::EBADF
    );
    c.release(f, ro);
    // A directory is not opened by OPEN.
    assert_eq!(
        c.req(op::OPEN, 1, &open_body(libc::O_RDONLY)).0,
        -libc::EISDIR
    );
    // A WRITE whose data is shorter than it says is malformed.
    let mut short = write_body(ro, 0, b"abc");
    short.pop();
    assert_eq!(c.req(op::WRITE, f, &short).0, -libc::EINVAL);
}

#[test]
fn statfs_reports_the_backing_file_system() {
    let mut c = Conn::new();
    let (err, out) = c.req(op::STATFS, 1, &[]);
    assert_eq!(err, 0);
    assert_eq!(out.len(), 80, "fuse_statfs_out");
    let st = sys::fstatvfs(open_dir(&c.backing(), libc::O_RDONLY).as_raw_fd()).unwrap();
    assert_eq!(u64_at(&out, 0), st.f_blocks);
    assert_eq!(u32_at(&out, 44), st.f_namemax as u32);
}

#[test]
fn fsync_and_fsyncdir() {
    let mut c = Conn::new();
    std::fs::write(c.backing().join("f"), "x").unwrap();
    let f = c.node(1, "f");
    let fh = c.open(f, libc::O_WRONLY);
    let fsync = |fh: u64, flags: u32| body(&[&fh.to_ne_bytes(), &flags.to_ne_bytes(), &[0; 4]]);
    assert_eq!(c.req(op::FSYNC, f, &fsync(fh, 0)).0, 0);
    assert_eq!(c.req(op::FSYNC, f, &fsync(fh, 1)).0, 0, "fdatasync");
    c.release(f, fh);
    assert_eq!(c.req(op::FSYNC, f, &fsync(fh, 0)).0, -libc::EBADF);
    assert_eq!(c.req(op::FSYNCDIR, 1, &fsync(0, 0)).0, 0);
    assert_eq!(c.req(op::FSYNCDIR, f, &fsync(0, 0)).0, -libc::ENOTDIR);
}

#[test]
fn extended_attributes_set_get_list_remove() {
    let mut c = Conn::new();
    std::fs::write(c.backing().join("f"), "").unwrap();
    let f = c.node(1, "f");
    let setx = |n: &str, v: &[u8]| {
        body(&[
            &(v.len() as u32).to_ne_bytes(),
            &0u32.to_ne_bytes(),
            &name(n),
            v,
        ])
    };
    let getx = |n: &str, size: u32| body(&[&size.to_ne_bytes(), &0u32.to_ne_bytes(), &name(n)]);
    let err = c.req(op::SETXATTR, f, &setx("user.color", b"blue")).0;
    if err == -libc::EOPNOTSUPP {
        eprintln!("skipped: no user xattrs on the temporary directory");
        return;
    }
    assert_eq!(err, 0);
    let (err, out) = c.req(op::GETXATTR, f, &getx("user.color", 0));
    assert_eq!((err, u32_at(&out, 0)), (0, 4), "size only");
    let (err, out) = c.req(op::GETXATTR, f, &getx("user.color", 64));
    assert_eq!((err, out.as_slice()), (0, &b"blue"[..]));
    assert_eq!(
        c.req(op::GETXATTR, f, &getx("user.none", 64)).0,
        -libc::ENODATA
    );
    // The server's own names are neither settable nor visible.
    assert_eq!(
        c.req(op::SETXATTR, f, &setx("user.porta.dev", b"1")).0,
        -libc::EPERM
    );
    let (err, out) = c.req(op::LISTXATTR, f, &body(&[&0u32.to_ne_bytes(), &[0; 4]]));
    assert_eq!((err, u32_at(&out, 0)), (0, 11), "size of \"user.color\\0\"");
    let (err, out) = c.req(op::LISTXATTR, f, &body(&[&64u32.to_ne_bytes(), &[0; 4]]));
    assert_eq!((err, out.as_slice()), (0, &b"user.color\0"[..]));
    let (err, _) = c.req(op::LISTXATTR, f, &body(&[&4u32.to_ne_bytes(), &[0; 4]]));
    assert_eq!(err, -libc::ERANGE, "buffer too small");
    assert_eq!(c.req(op::REMOVEXATTR, f, &name("user.color")).0, 0);
    assert_eq!(
        c.req(op::REMOVEXATTR, f, &name("user.color")).0,
        -libc::ENODATA
    );
    assert_eq!(
        c.req(op::REMOVEXATTR, f, &name("user.porta.dev")).0,
        -libc::ENODATA
    );
}

#[test]
fn readdir_and_readdirplus_list_a_directory() {
    let mut c = Conn::new();
    for n in ["a", "b", "c"] {
        std::fs::write(c.backing().join(n), "").unwrap();
    }
    let (err, out) = c.req(op::READDIR, 1, &readdir_body(0));
    assert_eq!(err, 0);
    let mut names = dirent_names(&out);
    names.sort();
    assert_eq!(names, [".", "..", "a", "b", "c"]);
    let (err, out) = c.req(op::READDIRPLUS, 1, &readdir_body(0));
    assert_eq!(err, 0);
    let plus = direntplus(&out);
    assert_eq!(plus.len(), 5);
    let b = c.node(1, "b");
    for (n, id) in &plus {
        match n.as_str() {
            "." | ".." => assert_eq!(*id, 0, "no node for {n}"),
            "b" => assert_eq!(*id, b, "the node a LOOKUP gives"),
            _ => assert!(*id > 1, "{n} has a node"),
        }
    }
    std::fs::write(c.backing().join("f"), "").unwrap();
    let f = c.node(1, "f");
    assert_eq!(c.req(op::READDIR, f, &readdir_body(0)).0, -libc::ENOTDIR);
}

#[test]
fn fallocate_lseek_and_copy_file_range() {
    let mut c = Conn::new();
    std::fs::write(c.backing().join("src"), "0123456789").unwrap();
    std::fs::write(c.backing().join("dst"), "").unwrap();
    let src = c.node(1, "src");
    let dst = c.node(1, "dst");
    let sfh = c.open(src, libc::O_RDONLY);
    let dfh = c.open(dst, libc::O_RDWR);
    // FALLOCATE: the file grows to offset + length.
    let falloc = body(&[
        &dfh.to_ne_bytes(),
        &0u64.to_ne_bytes(),
        &4096u64.to_ne_bytes(),
        &0u32.to_ne_bytes(),
        &[0u8; 4],
    ]);
    assert_eq!(c.req(op::FALLOCATE, dst, &falloc).0, 0);
    assert_eq!(
        std::fs::metadata(c.backing().join("dst")).unwrap().len(),
        4096
    );
    // LSEEK: SEEK_DATA from 0 of a file with data finds 0; past the end, ENXIO.
    let lseek = |fh: u64, off: u64, whence: i32| {
        body(&[
            &fh.to_ne_bytes(),
            &off.to_ne_bytes(),
            &(whence as u32).to_ne_bytes(),
            &[0u8; 4],
        ])
    };
    let (err, out) = c.req(op::LSEEK, src, &lseek(sfh, 0, libc::SEEK_DATA));
    assert_eq!((err, u64_at(&out, 0)), (0, 0));
    let (err, _) = c.req(op::LSEEK, src, &lseek(sfh, 100, libc::SEEK_DATA));
    assert_eq!(err, -libc::ENXIO);
    // COPY_FILE_RANGE: 4 bytes from src at 2 to dst at 1.
    let copy = body(&[
        &sfh.to_ne_bytes(),
        &2u64.to_ne_bytes(),
        &dst.to_ne_bytes(),
        &dfh.to_ne_bytes(),
        &1u64.to_ne_bytes(),
        &4u64.to_ne_bytes(),
        &0u64.to_ne_bytes(),
    ]);
    let (err, out) = c.req(op::COPY_FILE_RANGE, src, &copy);
    assert_eq!((err, u32_at(&out, 0)), (0, 4));
    let data = std::fs::read(c.backing().join("dst")).unwrap();
    assert_eq!(&data[..5], b"\x002345");
    // Into a read-only handle.
    let copy_ro = body(&[
        &dfh.to_ne_bytes(),
        &0u64.to_ne_bytes(),
        &src.to_ne_bytes(),
        &sfh.to_ne_bytes(),
        &0u64.to_ne_bytes(),
        &4u64.to_ne_bytes(),
        &0u64.to_ne_bytes(),
    ]);
    assert_eq!(c.req(op::COPY_FILE_RANGE, dst, &copy_ro).0, -libc::EBADF);
    c.release(src, sfh);
    c.release(dst, dfh);
}

#[test]
fn syncfs_and_the_operations_the_server_declines() {
    let mut c = Conn::new();
    // Answered. (The kernel sends SYNCFS only to virtiofs; syncfs(2) of the O_PATH
    // root descriptor fails with EBADF.)
    let (err, _) = c.req(op::SYNCFS, 1, &[0u8; 8]);
    assert!(err == 0 || err == -libc::EBADF, "{err}");
    for o in [
        op::FLUSH,
        op::ACCESS,
        op::OPENDIR,
        op::GETLK,
        op::IOCTL,
        9999,
    ] {
        assert_eq!(c.req(o, 1, &[0u8; 64]).0, -libc::ENOSYS, "opcode {o}");
    }
    // A second INIT on an initialized connection.
    assert_eq!(c.req(op::INIT, 0, &[0u8; 64]).0, -libc::EIO);
    // INTERRUPT is never answered: the next reply is the next request's.
    c.send_unanswered(op::INTERRUPT, 0, &7u64.to_ne_bytes());
    assert_eq!(c.getattr(1).len(), 104, "fuse_attr_out");
}

#[test]
fn destroy_ends_the_server() {
    let mut c = Conn::new();
    assert_eq!(c.req(op::DESTROY, 0, &[]).0, 0);
    let t = c.thread.take().unwrap();
    assert_eq!(t.join().unwrap().unwrap(), porta_fs::Exit::Destroyed);
}

#[test]
fn files_created_keep_the_permission_bits_asked_for() {
    let mut c = Conn::new();
    let (err, _) = c.req(op::CREATE, 1, &create_body(libc::O_WRONLY, 0o751, "x"));
    assert_eq!(err, 0);
    let md = std::fs::metadata(c.backing().join("x")).unwrap();
    assert_eq!(
        md.permissions().mode() & 0o7777,
        0o751,
        "the umask is the kernel's"
    );
}
