//! Hostile input straight at a server: FUSE frames written to its connection (a
//! SEQPACKET socket standing in for /dev/fuse), malformed or fuzzed, and hostile backing
//! content (a directory swapped for a symlink between lookups, symlinks out, FIFOs,
//! device nodes, dangling symlinks used as create targets).

mod common;

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{symlink, FileTypeExt};
use std::path::Path;
use std::time::Duration;

use porta_fs::abi::{op, IN_HEADER_LEN};
use porta_fs::{serve, sys, Config, Shared};

struct Conn {
    cfg: Config,
    client: OwnedFd,
    thread: Option<std::thread::JoinHandle<Result<porta_fs::Exit, porta_fs::Error>>>,
    unique: u64,
    _fds: Vec<OwnedFd>,
    dir: tempfile::TempDir,
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
    assert_eq!(r, 0);
    // SAFETY: fresh descriptors owned by nobody else.
    unsafe { (OwnedFd::from_raw_fd(sv[0]), OwnedFd::from_raw_fd(sv[1])) }
}

fn open_dir(p: &Path, flags: i32) -> OwnedFd {
    let c = CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    sys::openat(libc::AT_FDCWD, &c, flags | libc::O_DIRECTORY, 0).unwrap()
}

impl Conn {
    fn new() -> Conn {
        Self::with_nofile(0)
    }

    /// A server whose descriptor budget is `nofile` (0: the process's limit).
    fn with_nofile(nofile: u64) -> Conn {
        Self::with(nofile, false)
    }

    /// A server that asks for passthrough (granted: the INIT offers everything). It
    /// cannot register backing files here (the connection is a socket), so only opens it
    /// serves itself succeed.
    fn passthrough() -> Conn {
        Self::with(0, true)
    }

    fn with(nofile: u64, passthrough: bool) -> Conn {
        let dir = tempfile::Builder::new()
            .prefix("porta-fs-hostile")
            .tempdir_in("/tmp")
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
            shared: {
                let sh = Shared::anonymous(20000).unwrap();
                sh.hdr(porta_fs::shared::hdr::NOFILE)
                    .store(nofile, std::sync::atomic::Ordering::Relaxed);
                sh
            },
            passthrough,
            threads: 1,
            ttl: Duration::from_secs(1),
            backing_fd: -1,
            transport: porta_fs::Transport::Dev,
            rings: None,
        };
        let cfg2 = cfg.clone();
        let thread = std::thread::spawn(move || serve(&cfg2));
        let mut c = Conn {
            cfg,
            client,
            thread: Some(thread),
            unique: 0,
            _fds: vec![server, root, procfd],
            dir,
        };
        // INIT 7.40 offering everything.
        let mut body = Vec::new();
        for v in [7u32, 40, 131072, u32::MAX, u32::MAX] {
            body.extend_from_slice(&v.to_ne_bytes());
        }
        body.extend_from_slice(&[0u8; 44]);
        let (err, out) = c.req(op::INIT, 0, &body);
        assert_eq!(err, 0);
        assert!(out.len() >= 64);
        c
    }

    fn backing(&self) -> std::path::PathBuf {
        self.dir.path().join("backing")
    }

    fn send_raw(&self, frame: &[u8]) {
        sys::write(self.client.as_raw_fd(), frame).unwrap();
    }

    fn recv(&self) -> (u64, i32, Vec<u8>) {
        let mut buf = vec![0u8; 1 << 21];
        let n = sys::read(self.client.as_raw_fd(), &mut buf).unwrap();
        assert!(n >= 16, "short reply");
        let len = u32::from_ne_bytes(buf[0..4].try_into().unwrap()) as usize;
        assert_eq!(len, n, "reply length field must match");
        let err = i32::from_ne_bytes(buf[4..8].try_into().unwrap());
        let unique = u64::from_ne_bytes(buf[8..16].try_into().unwrap());
        (unique, err, buf[16..n].to_vec())
    }

    /// The next reply, past notifications (unique 0), which a server may send at any
    /// time (e.g. after clearing set-id bits).
    fn recv_reply(&self) -> (u64, i32, Vec<u8>) {
        loop {
            let (unique, err, out) = self.recv();
            if unique != 0 {
                return (unique, err, out);
            }
            assert!(err > 0, "a notification carries its code");
        }
    }

    fn frame(&mut self, opcode: u32, nodeid: u64, body: &[u8]) -> (u64, Vec<u8>) {
        self.unique += 2;
        let mut f = Vec::with_capacity(IN_HEADER_LEN + body.len());
        f.extend_from_slice(&((IN_HEADER_LEN + body.len()) as u32).to_ne_bytes());
        f.extend_from_slice(&opcode.to_ne_bytes());
        f.extend_from_slice(&self.unique.to_ne_bytes());
        f.extend_from_slice(&nodeid.to_ne_bytes());
        f.extend_from_slice(&[0u8; 16]);
        f.extend_from_slice(body);
        (self.unique, f)
    }

    /// Sends a request and returns (error, payload) of its reply.
    fn req(&mut self, opcode: u32, nodeid: u64, body: &[u8]) -> (i32, Vec<u8>) {
        let (u, f) = self.frame(opcode, nodeid, body);
        self.send_raw(&f);
        let (ru, err, out) = self.recv();
        assert_eq!(ru, u, "reply to the wrong request");
        (err, out)
    }

    fn lookup(&mut self, parent: u64, name: &str) -> (i32, u64, u32) {
        let mut b = name.as_bytes().to_vec();
        b.push(0);
        let (err, out) = self.req(op::LOOKUP, parent, &b);
        if err != 0 {
            return (err, 0, 0);
        }
        let nodeid = u64::from_ne_bytes(out[0..8].try_into().unwrap());
        if nodeid == 0 {
            // A cached negative entry.
            return (-libc::ENOENT, 0, 0);
        }
        let mode = u32::from_ne_bytes(out[40 + 60..40 + 64].try_into().unwrap());
        (0, nodeid, mode)
    }

    /// The server must still answer a valid request correctly.
    fn assert_alive(&mut self) {
        let (err, out) = self.req(op::GETATTR, 1, &[0u8; 16]);
        assert_eq!(err, 0);
        let mode = u32::from_ne_bytes(out[16 + 60..16 + 64].try_into().unwrap());
        assert_eq!(mode & libc::S_IFMT, libc::S_IFDIR);
    }
}

impl Conn {
    /// Ends the server (its connection closes) and starts a new one on the same shared
    /// state and descriptors, as the supervisor does after a crash; returns the frame the
    /// new server sends first (FUSE_NOTIFY_RESEND).
    fn restart(&mut self) -> (u64, i32, Vec<u8>) {
        self.restart_after(|_| {})
    }

    /// As `restart`, running `between` on the shared state while no server runs.
    fn restart_after(&mut self, between: impl FnOnce(&Shared)) -> (u64, i32, Vec<u8>) {
        self.stop_server();
        between(&self.cfg.shared);
        let (client, server) = socketpair();
        let mut cfg = self.cfg.clone();
        cfg.fuse_fd = server.as_raw_fd();
        self.client = client;
        self._fds.push(server);
        self.thread = Some(std::thread::spawn(move || serve(&cfg)));
        self.recv()
    }

    fn stop_server(&mut self) {
        let (a, _) = socketpair();
        // SAFETY: replace the client descriptor with the new one and close the old.
        let r = unsafe { libc::dup2(a.as_raw_fd(), self.client.as_raw_fd()) };
        assert!(r >= 0);
        drop(a);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A READDIR body without a handle (the server answers OPENDIR with ENOSYS): offset
/// `off`, reply of at most `size` bytes.
fn readdir_body_sized(off: u64, size: u32) -> Vec<u8> {
    let mut b = 0u64.to_ne_bytes().to_vec();
    b.extend_from_slice(&off.to_ne_bytes());
    b.extend_from_slice(&size.to_ne_bytes());
    b.extend_from_slice(&[0u8; 20]);
    b
}

fn readdir_body(off: u64) -> Vec<u8> {
    readdir_body_sized(off, 4096)
}

impl Conn {
    /// One READDIR of `node` from `off`: the (name, cookie) pairs of its reply.
    fn readdir(&mut self, node: u64, off: u64, size: u32) -> Vec<(String, u64)> {
        let (err, out) = self.req(op::READDIR, node, &readdir_body_sized(off, size));
        assert_eq!(err, 0, "READDIR of {node} at {off}");
        let mut v = Vec::new();
        let mut p = 0;
        while p + 24 <= out.len() {
            let cookie = u64::from_ne_bytes(out[p + 8..p + 16].try_into().unwrap());
            let len = u32::from_ne_bytes(out[p + 16..p + 20].try_into().unwrap()) as usize;
            v.push((
                String::from_utf8(out[p + 24..p + 24 + len].to_vec()).unwrap(),
                cookie,
            ));
            p += (24 + len).div_ceil(8) * 8;
        }
        v
    }

    /// Directories the server holds open for listings.
    fn streams(&self) -> usize {
        common::streams(&self.cfg.shared)
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        // Closing the client end makes the server's read return 0: it exits.
        let (a, _) = socketpair();
        // SAFETY: replace the client descriptor with the new one and close the old.
        let r = unsafe { libc::dup2(a.as_raw_fd(), self.client.as_raw_fd()) };
        assert!(r >= 0);
        drop(a);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn malformed_frames_are_rejected_and_the_server_carries_on() {
    require_root!();
    let mut c = Conn::new();
    // Too short to be a header: ignored.
    c.send_raw(&[1, 2, 3]);
    c.assert_alive();
    // Length field lies: answered EIO (unique is readable), server carries on.
    let (u, mut f) = c.frame(op::GETATTR, 1, &[0u8; 16]);
    f[0..4].copy_from_slice(&9999u32.to_ne_bytes());
    c.send_raw(&f);
    let (ru, err, _) = c.recv();
    assert_eq!((ru, err), (u, -libc::EIO));
    // Unknown opcodes.
    for opcode in [0u32, 7, 19, 99, 4096, u32::MAX] {
        assert_eq!(
            c.req(opcode, 1, &[0u8; 64]).0,
            -libc::ENOSYS,
            "opcode {opcode}"
        );
    }
    // Names without NUL, empty, with '/', '.', '..'.
    for name in [&b"abc"[..], b"\0", b"a/b\0", b".\0", b"..\0"] {
        assert_eq!(c.req(op::LOOKUP, 1, name).0, -libc::EINVAL, "{name:?}");
        assert_eq!(
            c.req(op::MKDIR, 1, &[&[0u8; 8][..], name].concat()).0,
            -libc::EINVAL
        );
    }
    // Bogus node ids and file handles.
    for nodeid in [0u64, 2, 3, 1000, 1 << 40, u64::MAX] {
        assert_eq!(
            c.req(op::GETATTR, nodeid, &[0u8; 16]).0,
            -libc::ESTALE,
            "node {nodeid}"
        );
        assert_eq!(c.req(op::LOOKUP, nodeid, b"x\0").0, -libc::ESTALE);
        assert_eq!(
            c.req(op::READDIR, nodeid, &readdir_body(0)).0,
            -libc::ESTALE
        );
    }
    for fh in [0u64, 1, 2, 5, 1 << 33, u64::MAX] {
        let mut b = fh.to_ne_bytes().to_vec();
        b.extend_from_slice(&[0u8; 32]);
        assert_eq!(c.req(op::READ, 1, &b).0, -libc::EBADF, "fh {fh}");
        assert_eq!(c.req(op::FSYNC, 1, &b[..16]).0, -libc::EBADF);
    }
    // Truncated bodies.
    assert_eq!(c.req(op::SETATTR, 1, &[0u8; 10]).0, -libc::EINVAL);
    assert_eq!(c.req(op::READ, 1, &[0u8; 10]).0, -libc::EINVAL);
    // WRITE claiming more data than the frame carries.
    let mut b = Vec::new();
    b.extend_from_slice(&3u64.to_ne_bytes());
    b.extend_from_slice(&0u64.to_ne_bytes());
    b.extend_from_slice(&(1u32 << 30).to_ne_bytes());
    b.extend_from_slice(&[0u8; 20]);
    assert_eq!(c.req(op::WRITE, 1, &b).0, -libc::EINVAL);
    // BATCH_FORGET with an absurd count and no entries: no reply, no crash.
    let (_, f) = c.frame(
        op::BATCH_FORGET,
        0,
        &[&u32::MAX.to_ne_bytes()[..], &[0u8; 4]].concat(),
    );
    c.send_raw(&f);
    // Second INIT is refused.
    assert_eq!(c.req(op::INIT, 0, &[0u8; 64]).0, -libc::EIO);
    c.assert_alive();
}

#[test]
fn fuzzed_frames_never_crash_nor_escape() {
    require_root!();
    let mut c = Conn::new();
    std::fs::create_dir_all(c.backing().join("d/e")).unwrap();
    std::fs::write(c.backing().join("d/f"), b"data").unwrap();
    let before_parent: Vec<_> = std::fs::read_dir(c.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut rnd = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut sent = 0;
    for i in 0..20_000 {
        let mut opcode = (rnd() % 52) as u32;
        if opcode == op::DESTROY || opcode == op::INIT {
            opcode = op::GETATTR;
        }
        let nodeid = match rnd() % 4 {
            0 => 1,
            1 => rnd() % 64,
            2 => rnd(),
            _ => 2 + rnd() % 32,
        };
        let len = (rnd() % 200) as usize;
        let mut body: Vec<u8> = (0..len).map(|_| rnd() as u8).collect();
        if rnd() % 2 == 0 && !body.is_empty() {
            // Plausible names: short printable runs ended by NUL.
            for (j, b) in body.iter_mut().enumerate() {
                *b = if j % 5 == 4 { 0 } else { b'a' + (*b % 4) };
            }
        }
        let (u, f) = c.frame(opcode, nodeid, &body);
        c.send_raw(&f);
        // Requests that get no reply: FORGET, BATCH_FORGET, INTERRUPT.
        if opcode == op::FORGET || opcode == op::BATCH_FORGET || opcode == op::INTERRUPT {
            continue;
        }
        let (ru, _, _) = c.recv_reply();
        assert_eq!(ru, u, "frame {i}: reply to the wrong request");
        sent += 1;
        if i % 1000 == 0 {
            c.assert_alive();
        }
    }
    assert!(sent > 15_000);
    c.assert_alive();
    let after_parent: Vec<_> = std::fs::read_dir(c.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        before_parent, after_parent,
        "nothing may appear next to the backing directory"
    );
}

#[test]
fn directory_swapped_for_a_symlink_between_lookups() {
    require_root!();
    let mut c = Conn::new();
    let b = c.backing();
    std::fs::create_dir(b.join("d")).unwrap();
    std::fs::write(b.join("d/inside"), b"in").unwrap();
    let (err, d, mode) = c.lookup(1, "d");
    assert_eq!((err, mode & libc::S_IFMT), (0, libc::S_IFDIR));
    // The host swaps the directory for a symlink to /etc.
    std::fs::rename(b.join("d"), b.join("moved")).unwrap();
    symlink("/etc", b.join("d")).unwrap();
    // The node the kernel holds is the directory itself, wherever it went: never /etc.
    assert_eq!(c.lookup(d, "passwd").0, -libc::ENOENT);
    assert_eq!(c.lookup(d, "inside").0, 0);
    // A fresh lookup sees a symlink node, and names beneath it resolve nowhere.
    let (err, s, mode) = c.lookup(1, "d");
    assert_eq!((err, mode & libc::S_IFMT), (0, libc::S_IFLNK));
    assert_eq!(c.lookup(s, "passwd").0, -libc::ENOTDIR);
    assert_eq!(c.req(op::READDIR, s, &readdir_body(0)).0, -libc::ENOTDIR);
    let (err, target) = c.req(op::READLINK, s, &[]);
    assert_eq!((err, target.as_slice()), (0, &b"/etc"[..]));
    // Creating through a dangling symlink never creates its target outside.
    let outside = c.dir.path().join("created-outside");
    symlink(&outside, b.join("dang")).unwrap();
    let mut body = Vec::new();
    body.extend_from_slice(&((libc::O_CREAT | libc::O_WRONLY) as u32).to_ne_bytes());
    body.extend_from_slice(&0o644u32.to_ne_bytes());
    body.extend_from_slice(&[0u8; 8]);
    body.extend_from_slice(b"dang\0");
    assert_eq!(c.req(op::CREATE, 1, &body).0, -libc::ELOOP);
    let mut mk = Vec::new();
    mk.extend_from_slice(&(libc::S_IFREG | 0o644).to_ne_bytes());
    mk.extend_from_slice(&[0u8; 12]);
    mk.extend_from_slice(b"dang\0");
    assert_ne!(c.req(op::MKNOD, 1, &mk).0, 0);
    assert!(
        !outside.exists(),
        "a file was created outside the backing tree"
    );
    c.assert_alive();
}

#[test]
fn fifos_and_device_nodes_never_block_nor_open() {
    require_root!();
    let mut c = Conn::new();
    let b = c.backing();
    nix::unistd::mkfifo(
        &b.join("fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o666),
    )
    .unwrap();
    nix::sys::stat::mknod(
        &b.join("null"),
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::from_bits_truncate(0o666),
        nix::sys::stat::makedev(1, 3),
    )
    .unwrap();
    let (err, fifo, mode) = c.lookup(1, "fifo");
    assert_eq!((err, mode & libc::S_IFMT), (0, libc::S_IFIFO));
    let (err, null, mode) = c.lookup(1, "null");
    assert_eq!((err, mode & libc::S_IFMT), (0, libc::S_IFCHR));
    // OPEN of a FIFO or a device node is refused at once (the kernel never sends it for
    // them; a hostile frame may): the server opens only regular files and directories.
    let flags = (libc::O_RDONLY as u32).to_ne_bytes();
    let body = [&flags[..], &[0u8; 4]].concat();
    assert_eq!(c.req(op::OPEN, fifo, &body).0, -libc::ENXIO);
    assert_eq!(c.req(op::OPEN, null, &body).0, -libc::ENXIO);
    assert_eq!(c.req(op::READDIR, fifo, &readdir_body(0)).0, -libc::ENOTDIR);
    // A device node created through the server is a regular file in the backing tree.
    let mut mk = Vec::new();
    mk.extend_from_slice(&(libc::S_IFBLK | 0o600).to_ne_bytes());
    mk.extend_from_slice(&(8u32 << 8).to_ne_bytes());
    mk.extend_from_slice(&[0u8; 8]);
    mk.extend_from_slice(b"sda\0");
    let (err, out) = c.req(op::MKNOD, 1, &mk);
    assert_eq!(err, 0);
    let mode = u32::from_ne_bytes(out[40 + 60..40 + 64].try_into().unwrap());
    assert_eq!(mode & libc::S_IFMT, libc::S_IFBLK);
    let ft = std::fs::symlink_metadata(b.join("sda"))
        .unwrap()
        .file_type();
    assert!(ft.is_file() && !ft.is_block_device());
    c.assert_alive();
}

#[test]
fn distinct_inode_numbers_across_backing_file_systems() {
    require_root!();
    let m = common::TestMount::new(true);
    let t = m.backing.join("t");
    std::fs::create_dir(&t).unwrap();
    nix::mount::mount(
        Some("tmpfs"),
        &t,
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .unwrap();
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
        }
    }
    let _u = Unmount(t.clone());
    common::sh(
        &m.backing,
        "for i in $(seq 1 200); do echo $i > t/f$i; echo $i > r$i; done",
    );
    let inos = common::sh(
        &m.mnt,
        "find . -type f -printf '%i\\n' | sort | uniq -d | wc -l",
    );
    assert_eq!(inos.trim(), "0", "inode numbers collide through the mount");
    let raw = common::sh(
        &m.backing,
        "find . -type f -printf '%i\\n' | sort | uniq -d | wc -l",
    );
    eprintln!("raw duplicates in the backing tree: {}", raw.trim());
}

#[test]
fn resent_requests_are_answered_as_the_first_run_did() {
    require_root!();
    let mut c = Conn::new();
    let b = c.backing();
    std::fs::write(b.join("x"), b"X").unwrap();
    std::fs::write(b.join("y"), b"Y").unwrap();
    std::fs::write(b.join("gone"), b"").unwrap();
    std::fs::write(b.join("xa"), b"").unwrap();
    let (_, xa, _) = c.lookup(1, "xa");
    let mut exch = 1u64.to_ne_bytes().to_vec();
    exch.extend_from_slice(&(libc::RENAME_EXCHANGE).to_ne_bytes());
    exch.extend_from_slice(&[0u8; 4]);
    exch.extend_from_slice(b"x\0y\0");
    let mut sx = 1u32.to_ne_bytes().to_vec();
    sx.extend_from_slice(&(libc::XATTR_CREATE as u32).to_ne_bytes());
    sx.extend_from_slice(b"user.k\0v");
    let cases: [(u32, u64, Vec<u8>); 3] = [
        (op::RENAME2, 1, exch),
        (op::UNLINK, 1, b"gone\0".to_vec()),
        (op::SETXATTR, xa, sx),
    ];
    for (opcode, node, body) in cases {
        // The server runs the request, then dies before the kernel saw the answer
        // (here: the answer is read and ignored); the kernel resends it with bit 63.
        let (_, f) = c.frame(opcode, node, &body);
        c.send_raw(&f);
        assert_eq!(c.recv().1, 0, "first run of opcode {opcode}");
        let (u, err, _) = c.restart();
        assert_eq!(
            (u, err),
            (0, porta_fs::abi::NOTIFY_RESEND),
            "a new server first asks for a resend"
        );
        let mut rf = f.clone();
        let ru =
            u64::from_ne_bytes(rf[8..16].try_into().unwrap()) | porta_fs::abi::UNIQUE_RESEND_FLAG;
        rf[8..16].copy_from_slice(&ru.to_ne_bytes());
        c.send_raw(&rf);
        let (got, err, _) = c.recv();
        assert_eq!(got, ru, "the reply echoes the resent id");
        assert_eq!(
            err, 0,
            "resent opcode {opcode} must get the first run's answer"
        );
    }
    // EXCHANGE ran once, not twice.
    assert_eq!(std::fs::read(b.join("x")).unwrap(), b"Y");
    assert_eq!(std::fs::read(b.join("y")).unwrap(), b"X");
    c.assert_alive();
}

#[test]
fn a_resent_release_never_closes_a_file_opened_since() {
    require_root!();
    let mut c = Conn::new();
    let b = c.backing();
    std::fs::write(b.join("a"), b"A").unwrap();
    std::fs::write(b.join("b"), b"B").unwrap();
    let (_, na, _) = c.lookup(1, "a");
    let (_, nb, _) = c.lookup(1, "b");
    let open = |c: &mut Conn, node: u64| -> u64 {
        let mut o = (libc::O_RDONLY as u32).to_ne_bytes().to_vec();
        o.extend_from_slice(&[0u8; 4]);
        let (err, out) = c.req(op::OPEN, node, &o);
        assert_eq!(err, 0);
        u64::from_ne_bytes(out[0..8].try_into().unwrap())
    };
    let release = |fh: u64| -> Vec<u8> {
        let mut r = fh.to_ne_bytes().to_vec();
        r.extend_from_slice(&[0u8; 16]);
        r
    };
    // The first run of RELEASE closes descriptor `fh`; a file opened right after takes the
    // same number (lowest free descriptor; retried when a parallel test took it first).
    let mut reused = None;
    for _ in 0..20 {
        let fa = open(&mut c, na);
        let (_, f) = c.frame(op::RELEASE, na, &release(fa));
        c.send_raw(&f);
        assert_eq!(c.recv().1, 0);
        let fb = open(&mut c, nb);
        if fb == fa {
            reused = Some((f, fb));
            break;
        }
        assert_eq!(c.req(op::RELEASE, nb, &release(fb)).0, 0);
    }
    let (f, fb) = reused.expect("a released descriptor number is reused by the next open");
    // The server dies before the kernel saw the RELEASE answer; the kernel resends it.
    let (u, err, _) = c.restart();
    assert_eq!((u, err), (0, porta_fs::abi::NOTIFY_RESEND));
    let mut rf = f.clone();
    let ru = u64::from_ne_bytes(rf[8..16].try_into().unwrap()) | porta_fs::abi::UNIQUE_RESEND_FLAG;
    rf[8..16].copy_from_slice(&ru.to_ne_bytes());
    c.send_raw(&rf);
    let (got, _, _) = c.recv();
    assert_eq!(got, ru);
    // b's file handle still reads b.
    let mut rd = fb.to_ne_bytes().to_vec();
    rd.extend_from_slice(&0u64.to_ne_bytes());
    rd.extend_from_slice(&16u32.to_ne_bytes());
    rd.extend_from_slice(&[0u8; 20]);
    let (err, out) = c.req(op::READ, nb, &rd);
    assert_eq!(
        err, 0,
        "the resent RELEASE closed a file opened after the first run"
    );
    assert_eq!(out, b"B");
    // Killed after the close but before the journal said DONE (state INTENT, the handle's
    // identity recorded), with the number taken again by a later open in between (the
    // other request thread): the resent RELEASE must see the stamp changed.
    assert_eq!(c.req(op::RELEASE, nb, &release(fb)).0, 0);
    let mut reused = None;
    let mut stamp = 0;
    for _ in 0..20 {
        let fx = open(&mut c, nb);
        stamp = c.cfg.shared.file(fx as i32).unwrap().stamp();
        let (_, f) = c.frame(op::RELEASE, nb, &release(fx));
        c.send_raw(&f);
        assert_eq!(c.recv().1, 0);
        let fa = open(&mut c, na);
        if fa == fx {
            reused = Some(f);
            break;
        }
        assert_eq!(c.req(op::RELEASE, na, &release(fa)).0, 0);
    }
    let f = reused.expect("a released descriptor number is reused by the next open");
    let sh = c.cfg.shared;
    let unique = u64::from_ne_bytes(f[8..16].try_into().unwrap());
    let slot = (0..porta_fs::shared::hdr::MAX_SLOTS)
        .find(|&i| sh.journal(i).unwrap().snapshot().unique == unique)
        .expect("the RELEASE is in the journal");
    // As the first run left it when killed: the handle and its stamp recorded, no answer.
    let fh = u64::from_ne_bytes(f[IN_HEADER_LEN..IN_HEADER_LEN + 8].try_into().unwrap());
    let e = sh.journal(slot).unwrap();
    e.release(fh, stamp);
    e.set_state(porta_fs::shared::journal::INTENT);
    c.restart();
    let mut rf = f.clone();
    rf[8..16].copy_from_slice(&(unique | porta_fs::abi::UNIQUE_RESEND_FLAG).to_ne_bytes());
    c.send_raw(&rf);
    assert_eq!(c.recv().1, 0);
    // The handle the first run released, now a's (same number).
    let mut rd = fh.to_ne_bytes().to_vec();
    rd.extend_from_slice(&0u64.to_ne_bytes());
    rd.extend_from_slice(&16u32.to_ne_bytes());
    rd.extend_from_slice(&[0u8; 20]);
    let (err, out) = c.req(op::READ, na, &rd);
    assert_eq!(
        err, 0,
        "a resent RELEASE (first run cut short) closed a file opened since"
    );
    assert_eq!(out, b"A");
    c.assert_alive();
}

#[test]
fn resent_lookup_and_create_count_their_node_once() {
    require_root!();
    let mut c = Conn::new();
    let b = c.backing();
    std::fs::write(b.join("seen"), b"s").unwrap();
    let sh = c.cfg.shared;
    let count = |nodeid: u64| {
        sh.hot_node((nodeid - 2) as i32)
            .unwrap()
            .lookups()
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    let files = || {
        (0..sh.scan_end())
            .filter(|&fd| sh.kind(fd) == porta_fs::shared::kind::FILE)
            .count()
    };
    let resend = |c: &mut Conn, f: &[u8]| -> (i32, Vec<u8>) {
        let (u, err, _) = c.restart();
        assert_eq!((u, err), (0, porta_fs::abi::NOTIFY_RESEND));
        let mut rf = f.to_vec();
        let ru =
            u64::from_ne_bytes(rf[8..16].try_into().unwrap()) | porta_fs::abi::UNIQUE_RESEND_FLAG;
        rf[8..16].copy_from_slice(&ru.to_ne_bytes());
        c.send_raw(&rf);
        let (got, err, out) = c.recv();
        assert_eq!(got, ru, "the reply echoes the resent id");
        (err, out)
    };
    // LOOKUP: run, answer lost with the server, resent.
    let (_, f) = c.frame(op::LOOKUP, 1, b"seen\0");
    c.send_raw(&f);
    let (_, err, first) = c.recv();
    assert_eq!(err, 0);
    let node = u64::from_ne_bytes(first[0..8].try_into().unwrap());
    assert_eq!(count(node), 1);
    let (err, again) = resend(&mut c, &f);
    assert_eq!(err, 0);
    assert_eq!(u64::from_ne_bytes(again[0..8].try_into().unwrap()), node);
    assert_eq!(count(node), 1, "a resent LOOKUP counted its node twice");
    // CREATE (O_EXCL): same node, same handle, one file, no second handle.
    let before = files();
    let mut cr = ((libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL) as u32)
        .to_ne_bytes()
        .to_vec();
    cr.extend_from_slice(&0o644u32.to_ne_bytes());
    cr.extend_from_slice(&[0u8; 8]);
    cr.extend_from_slice(b"made\0");
    let (_, f) = c.frame(op::CREATE, 1, &cr);
    c.send_raw(&f);
    let (_, err, first) = c.recv();
    assert_eq!(err, 0);
    let node = u64::from_ne_bytes(first[0..8].try_into().unwrap());
    let fh = u64::from_ne_bytes(first[128..136].try_into().unwrap());
    assert_eq!(files(), before + 1);
    let (err, again) = resend(&mut c, &f);
    assert_eq!(
        err, 0,
        "a resent exclusive CREATE must not fail with EEXIST"
    );
    assert_eq!(u64::from_ne_bytes(again[0..8].try_into().unwrap()), node);
    assert_eq!(
        u64::from_ne_bytes(again[128..136].try_into().unwrap()),
        fh,
        "same file handle"
    );
    assert_eq!(count(node), 1, "a resent CREATE counted its node twice");
    assert_eq!(
        files(),
        before + 1,
        "a resent CREATE opened a second handle"
    );
    c.assert_alive();
}

#[test]
fn cold_nodes_are_checked_by_inode_and_survive_a_restart() {
    use porta_fs::shared::COLD_BASE;
    require_root!();
    // Budget for 200 descriptors: nodes past its high-water mark (90) are cold.
    let mut c = Conn::with_nofile(200);
    let b = c.backing();
    for i in 0..120 {
        std::fs::write(b.join(format!("f{i}")), b"x").unwrap();
    }
    let ids: Vec<u64> = (0..120)
        .map(|i| {
            let (err, id, _) = c.lookup(1, &format!("f{i}"));
            assert_eq!(err, 0);
            id
        })
        .collect();
    let cold_ids: Vec<(usize, u64)> = ids
        .iter()
        .copied()
        .enumerate()
        .filter(|&(_, id)| id >= COLD_BASE)
        .collect();
    assert!(cold_ids.len() >= 20, "{} cold nodes", cold_ids.len());
    let sh = c.cfg.shared;
    assert_eq!(sh.cold_live(), cold_ids.len());
    let getattr = |c: &mut Conn, id: u64| c.req(op::GETATTR, id, &[0u8; 16]).0;
    let (ka, k) = cold_ids[0];
    let (ja, j) = cold_ids[1];
    assert_eq!(getattr(&mut c, k), 0);

    // A new server finds the cold nodes in the shared table: same answers, same ids.
    let (u, err, _) = c.restart();
    assert_eq!((u, err), (0, porta_fs::abi::NOTIFY_RESEND));
    assert_eq!(getattr(&mut c, k), 0);
    assert_eq!(
        c.lookup(1, &format!("f{ka}")).1,
        k,
        "a second node for one inode"
    );
    assert_eq!(sh.cold_live(), cold_ids.len());

    // The host swaps the file for a symlink out: the node's name now names another
    // inode, and the server says so instead of following it or serving it.
    std::fs::remove_file(b.join(format!("f{ka}"))).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", b.join(format!("f{ka}"))).unwrap();
    assert_eq!(getattr(&mut c, k), -libc::ESTALE);
    assert_eq!(c.req(op::OPEN, k, &[0u8; 8]).0, -libc::ESTALE);
    // Made-up cold ids name nothing.
    for id in [COLD_BASE + 50_000, COLD_BASE + (1 << 40), u64::MAX] {
        assert_eq!(getattr(&mut c, id), -libc::ESTALE, "{id:#x}");
    }
    // A name a killed server left half-written is dropped by the next one (ESTALE),
    // never used.
    let i = (j - COLD_BASE) as usize;
    sh.cold_node(i).unwrap().tear_name();
    c.restart();
    assert_eq!(getattr(&mut c, j), -libc::ESTALE);
    assert_eq!(
        c.lookup(1, &format!("f{ja}")).1,
        j,
        "the node is found again by inode"
    );

    // FORGET frees cold entries like any other.
    let before = sh.cold_live();
    let mut forget = Vec::new();
    forget.extend_from_slice(&2u64.to_ne_bytes());
    let (_, f) = c.frame(op::FORGET, k, &forget);
    c.send_raw(&f);
    c.assert_alive();
    assert_eq!(sh.cold_live(), before - 1);
    assert_eq!(sh.cold_kind(i), porta_fs::shared::kind::NODE);
}

#[test]
fn forget_frames_read_by_a_killed_server_are_applied_by_its_successor() {
    use porta_fs::shared::kind;
    use std::sync::atomic::Ordering;
    require_root!();
    let mut c = Conn::new();
    let b = c.backing();
    for f in ["a", "b", "c"] {
        std::fs::write(b.join(f), f).unwrap();
    }
    let node = |c: &mut Conn, f: &str| c.lookup(1, f).1;
    let (na, nb, nc) = (node(&mut c, "a"), node(&mut c, "b"), node(&mut c, "c"));
    assert_eq!(node(&mut c, "c"), nc); // c counted twice
    let sh = c.cfg.shared;
    let kind_of = |n: u64| sh.kind((n - 2) as i32);
    let count_of = |n: u64| {
        sh.hot_node((n - 2) as i32)
            .unwrap()
            .lookups()
            .load(Ordering::Relaxed)
    };
    // A BATCH_FORGET as the kernel sends it: (a, 1), (b, 1), (c, 1).
    let mut body = 3u32.to_ne_bytes().to_vec();
    body.extend_from_slice(&[0u8; 4]);
    for n in [na, nb, nc] {
        body.extend_from_slice(&n.to_ne_bytes());
        body.extend_from_slice(&1u64.to_ne_bytes());
    }
    let (unique, frame) = c.frame(op::BATCH_FORGET, 0, &body);
    // The server read it into its request buffer and was killed before applying any
    // entry (the window between read(2) and the first entry): the kernel will not resend.
    c.restart_after(|sh| {
        // SAFETY: no server runs; this is the only slice of the buffer.
        let buf = unsafe { sh.request_buf(0) }.unwrap();
        buf[..frame.len()].copy_from_slice(&frame);
    });
    assert_eq!(kind_of(na), kind::FREE, "a forgotten");
    assert_eq!(kind_of(nb), kind::FREE, "b forgotten");
    assert_eq!(
        (kind_of(nc), count_of(nc)),
        (kind::NODE, 1),
        "c counted once less"
    );
    // A restart that finds the same frame already applied does nothing again.
    c.restart();
    assert_eq!(
        (kind_of(nc), count_of(nc)),
        (kind::NODE, 1),
        "applied twice"
    );
    // Killed in the middle: the progress words say entry 1 was started, so the
    // successor applies only what follows (entry 1 itself may be lost, never doubled).
    let (na, nb) = (node(&mut c, "a"), node(&mut c, "b"));
    let mut body = 3u32.to_ne_bytes().to_vec();
    body.extend_from_slice(&[0u8; 4]);
    for n in [na, nb, nc] {
        body.extend_from_slice(&n.to_ne_bytes());
        body.extend_from_slice(&1u64.to_ne_bytes());
    }
    let (unique2, frame) = c.frame(op::BATCH_FORGET, 0, &body);
    assert_ne!(unique, unique2);
    c.restart_after(|sh| {
        // SAFETY: as above.
        let buf = unsafe { sh.request_buf(0) }.unwrap();
        buf[..frame.len()].copy_from_slice(&frame);
        let p = sh.forget_log(0).unwrap();
        p.begin(unique2, 2);
    });
    assert_eq!(
        (kind_of(na), count_of(na)),
        (kind::NODE, 1),
        "a was done before the kill"
    );
    assert_eq!(
        (kind_of(nb), count_of(nb)),
        (kind::NODE, 1),
        "b was being applied"
    );
    assert_eq!(kind_of(nc), kind::FREE, "c was still to do");
    c.assert_alive();
}

#[test]
fn listings_go_on_with_their_own_open_directory_also_after_a_restart() {
    let mut c = Conn::new();
    let d = c.backing().join("d");
    std::fs::create_dir(&d).unwrap();
    for i in 0..300 {
        std::fs::write(d.join(format!("f{i:03}")), b"").unwrap();
    }
    let (err, d, _) = c.lookup(1, "d");
    assert_eq!(err, 0);
    let all: std::collections::BTreeSet<String> = [".".to_string(), "..".to_string()]
        .into_iter()
        .chain((0..300).map(|i| format!("f{i:03}")))
        .collect();
    // Two listings of one directory at once: a stream each.
    let first = c.readdir(d, 0, 1024);
    let other = c.readdir(d, 0, 1024);
    assert!(!first.is_empty() && first.len() < all.len());
    assert_eq!(c.streams(), 2);
    // The first goes on, across a server restart, on its own stream: no new one.
    let mut names: Vec<String> = first.iter().map(|e| e.0.clone()).collect();
    let mut off = first.last().unwrap().1;
    c.restart();
    loop {
        let part = c.readdir(d, off, 1024);
        let Some(last) = part.last() else { break };
        off = last.1;
        names.extend(part.into_iter().map(|e| e.0));
        assert!(c.streams() <= 2, "{} streams", c.streams());
    }
    assert_eq!(names.len(), all.len(), "each name once");
    assert_eq!(
        names.into_iter().collect::<std::collections::BTreeSet<_>>(),
        all
    );
    assert_eq!(
        c.streams(),
        1,
        "a listing read to its end closes its stream"
    );
    // The other goes on from the middle of its last reply (what the kernel does when
    // the program's buffer was full).
    let half = other.len() / 2;
    let mut names: Vec<String> = other[..half].iter().map(|e| e.0.clone()).collect();
    let mut off = other[half - 1].1;
    loop {
        let part = c.readdir(d, off, 1 << 16);
        let Some(last) = part.last() else { break };
        off = last.1;
        names.extend(part.into_iter().map(|e| e.0));
    }
    assert_eq!(names.len(), all.len(), "each name once");
    assert_eq!(c.streams(), 0);
    // Listings abandoned halfway keep at most MAX_IDLE directories open.
    for i in 0..2 * porta_fs::listing::MAX_IDLE {
        let p = c.backing().join(format!("a{i}"));
        std::fs::create_dir(&p).unwrap();
        for f in 0..50 {
            std::fs::write(p.join(format!("f{f}")), b"").unwrap();
        }
        let (err, n, _) = c.lookup(1, &format!("a{i}"));
        assert_eq!(err, 0);
        assert!(!c.readdir(n, 0, 256).is_empty());
    }
    assert_eq!(c.streams(), porta_fs::listing::MAX_IDLE);
    // A made-up offset is no crash: the server answers (whatever the backing file
    // system makes of it) and carries on.
    let (err, _) = c.req(op::READDIR, d, &readdir_body(0x7fff_ffff_ffff_fff0));
    assert!(err == 0 || err == -libc::EINVAL, "{err}");
    c.assert_alive();
}

#[test]
fn after_a_restart_lookups_wait_for_the_node_index_and_reads_do_not() {
    let mut c = Conn::new();
    std::fs::write(c.backing().join("f"), b"hello").unwrap();
    let (err, f, _) = c.lookup(1, "f");
    assert_eq!(err, 0);
    // A large node table, as a container that walked a big tree leaves it: a new server
    // rebuilds its (device, inode) index from it while it already serves.
    const COLD: usize = 300_000;
    let fill = |sh: &Shared| {
        for i in 0..COLD {
            let name = format!("c{i}");
            assert!(sh.cold_publish(
                i,
                1,
                (1 << 40) + i as u64,
                77,
                libc::S_IFREG,
                1,
                name.as_bytes()
            ));
        }
    };
    c.restart_after(fill);
    // A LOOKUP sent at once finds the node the kernel already holds: it waited for the
    // index (without it, the server would make a second node for the same file).
    let (err, again, _) = c.lookup(1, "f");
    assert_eq!((err, again), (0, f), "the same node after the restart");
    // Reads of known nodes do not wait for it. Reported, not asserted (timing).
    c.restart();
    let t = std::time::Instant::now();
    c.assert_alive();
    let getattr = t.elapsed();
    let t = std::time::Instant::now();
    assert_eq!(c.lookup(1, "f").1, f);
    eprintln!(
        "{COLD} cold nodes: GETATTR answered {getattr:?} after the restart, a LOOKUP {:?} later",
        t.elapsed()
    );
}

/// In a passthrough connection a file with a set-id bit is served (its writes reach the
/// server, which clears the bits as the writer's capabilities say); an open goes the way
/// the node's open files already go (the kernel fails an open in the other I/O mode with
/// EIO), also after the file lost its bits; and a new server recounts each node's open
/// files from the handles in the table (a count a killed server left wrong is mended).
#[test]
fn setid_files_are_served_and_open_counts_are_recounted_by_a_new_server() {
    use porta_fs::abi::fopen;
    use porta_fs::shared::SERVED_OPEN;
    use std::os::unix::fs::PermissionsExt;
    use std::sync::atomic::Ordering;
    require_root!();
    let mut c = Conn::passthrough();
    let f = c.backing().join("s");
    std::fs::write(&f, b"x").unwrap();
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o4755)).unwrap();
    let (_, node, _) = c.lookup(1, "s");
    let open = |c: &mut Conn| -> (u64, u32) {
        let mut o = (libc::O_RDWR as u32).to_ne_bytes().to_vec();
        o.extend_from_slice(&[0u8; 4]);
        let (err, out) = c.req(op::OPEN, node, &o);
        assert_eq!(err, 0, "open of a served file");
        let fh = u64::from_ne_bytes(out[0..8].try_into().unwrap());
        (fh, u32::from_ne_bytes(out[8..12].try_into().unwrap()))
    };
    let opens = |c: &Conn| {
        c.cfg
            .shared
            .node_entry(node)
            .unwrap()
            .opens()
            .load(Ordering::Acquire)
    };
    let (fa, flags) = open(&mut c);
    assert_eq!(flags & fopen::PASSTHROUGH, 0, "a set-id file is served");
    assert_eq!(opens(&c), SERVED_OPEN);
    // A count lost by a killed server is recounted by the next one.
    let (u, err, _) = c.restart_after(|sh| {
        sh.node_entry(node)
            .unwrap()
            .opens()
            .store(0, Ordering::Release)
    });
    assert_eq!((u, err), (0, porta_fs::abi::NOTIFY_RESEND));
    assert_eq!(
        c.lookup(1, "s").1,
        node,
        "a lookup waits for the index (and the recount)"
    );
    assert_eq!(opens(&c), SERVED_OPEN, "recounted from the open handle");
    // The file loses its bit while open: the next open is served as well.
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o755)).unwrap();
    let (fb, flags) = open(&mut c);
    assert_eq!(
        flags & fopen::PASSTHROUGH,
        0,
        "opened the way the open one goes"
    );
    assert_eq!(opens(&c), 2 * SERVED_OPEN);
    for fh in [fa, fb] {
        let mut r = fh.to_ne_bytes().to_vec();
        r.extend_from_slice(&[0u8; 16]);
        assert_eq!(c.req(op::RELEASE, node, &r).0, 0);
    }
    assert_eq!(opens(&c), 0, "released");
    c.assert_alive();
}

/// The (name, node id, inode, mode) entries of a READDIRPLUS reply.
fn plus_entries(out: &[u8]) -> Vec<(String, u64, u64, u32, u64)> {
    let mut v = Vec::new();
    let mut p = 0;
    while p + 128 + 24 <= out.len() {
        let word = |at: usize| u64::from_ne_bytes(out[at..at + 8].try_into().unwrap());
        let node = word(p);
        let ino = word(p + 40);
        let mode = u32::from_ne_bytes(out[p + 100..p + 104].try_into().unwrap());
        let d = p + 128;
        let cookie = word(d + 8);
        let len = u32::from_ne_bytes(out[d + 16..d + 20].try_into().unwrap()) as usize;
        let name = String::from_utf8(out[d + 24..d + 24 + len].to_vec()).unwrap();
        v.push((name, node, ino, mode, cookie));
        p = d + (24 + len).div_ceil(8) * 8;
    }
    v
}

#[test]
fn long_listings_give_every_name_its_node_once_whichever_thread_looked_it_up() {
    // A descriptor budget of 0 (the process's) keeps the listed nodes hot; 200 makes
    // most of them cold nodes (no descriptor), looked up by both threads at once.
    for nofile in [0u64, 200] {
        let mut c = Conn::with_nofile(nofile);
        let d = c.backing().join("d");
        std::fs::create_dir(&d).unwrap();
        for i in 0..400 {
            std::fs::write(d.join(format!("f{i:03}")), b"").unwrap();
        }
        std::fs::create_dir(d.join("sub")).unwrap();
        let (err, dn, _) = c.lookup(1, "d");
        assert_eq!(err, 0);
        let live = |c: &Conn| c.cfg.shared.live() + c.cfg.shared.cold_live();
        let before = live(&c);
        // Chunks of ~25 entries (shared with the helper from 16 on), then the rest at once.
        let mut seen = std::collections::BTreeMap::new();
        let mut off = 0;
        let mut size = 4096u32;
        loop {
            let (err, out) = c.req(op::READDIRPLUS, dn, &readdir_body_sized(off, size));
            assert_eq!(err, 0, "READDIRPLUS at {off} ({nofile})");
            let ents = plus_entries(&out);
            let Some(last) = ents.last() else { break };
            off = last.4;
            for (name, node, ino, mode, _) in ents {
                if name == "." || name == ".." {
                    assert_eq!(node, 0, "no node for {name}");
                    continue;
                }
                assert_ne!(node, 0, "{name} listed without its node ({nofile})");
                let st = std::fs::symlink_metadata(d.join(&name)).unwrap();
                use std::os::unix::fs::MetadataExt;
                assert_eq!((ino, mode), (st.ino(), st.mode()), "{name}'s attributes");
                assert!(seen.insert(name.clone(), node).is_none(), "{name} twice");
            }
            if seen.len() > 200 {
                size = 1 << 17;
            }
        }
        assert_eq!(seen.len(), 401, "every name once ({nofile})");
        let nodes: std::collections::BTreeSet<u64> = seen.values().copied().collect();
        assert_eq!(nodes.len(), 401, "a node each");
        assert_eq!(live(&c), before + 401);
        // A LOOKUP finds the node the listing gave; then each node has been looked up
        // exactly twice: a FORGET of 2 frees it (a name looked up twice by the listing
        // would keep it).
        for (name, &node) in &seen {
            assert_eq!(c.lookup(dn, name).1, node, "{name}");
        }
        let mut body = Vec::new();
        body.extend_from_slice(&(nodes.len() as u32).to_ne_bytes());
        body.extend_from_slice(&0u32.to_ne_bytes());
        for &n in &nodes {
            body.extend_from_slice(&n.to_ne_bytes());
            body.extend_from_slice(&2u64.to_ne_bytes());
        }
        let (_, f) = c.frame(op::BATCH_FORGET, 0, &body);
        c.send_raw(&f);
        c.assert_alive();
        assert_eq!(live(&c), before, "every listed node forgotten ({nofile})");
    }
}

#[test]
fn a_create_that_truncates_an_existing_file_leaves_its_set_id_bits_as_an_open_would() {
    use std::os::unix::fs::PermissionsExt;
    require_root!();
    let mut c = Conn::new();
    let f = c.backing().join("s");
    // (FUSE_OPEN_KILL_SUIDGID, mode after): a caller with CAP_FSETID keeps the bits; one
    // without loses both (group execute set).
    for (kill, want) in [(false, 0o6755), (true, 0o0755)] {
        std::fs::write(&f, b"data").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o6755)).unwrap();
        let mut body = Vec::new();
        body.extend_from_slice(&(libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC).to_ne_bytes());
        body.extend_from_slice(&0o100644u32.to_ne_bytes());
        body.extend_from_slice(&0u32.to_ne_bytes()); // umask
        body.extend_from_slice(&(if kill { 1u32 } else { 0 }).to_ne_bytes());
        body.extend_from_slice(b"s\0");
        let (u, frame) = c.frame(op::CREATE, 1, &body);
        c.send_raw(&frame);
        let (ru, err, out) = c.recv_reply();
        assert_eq!((ru, err), (u, 0), "CREATE of an existing file");
        let meta = std::fs::metadata(&f).unwrap();
        assert_eq!(meta.len(), 0, "truncated");
        assert_eq!(meta.permissions().mode() & 0o7777, want, "kill={kill}");
        let reported = u32::from_ne_bytes(out[100..104].try_into().unwrap());
        assert_eq!(reported & 0o7777, want, "the entry's mode (kill={kill})");
        let fh = u64::from_ne_bytes(out[128..136].try_into().unwrap());
        let mut rel = fh.to_ne_bytes().to_vec();
        rel.extend_from_slice(&[0u8; 16]);
        let node = u64::from_ne_bytes(out[0..8].try_into().unwrap());
        assert_eq!(c.req(op::RELEASE, node, &rel).0, 0);
    }
    c.assert_alive();
}

#[test]
fn the_descriptor_table_is_grown_ahead_as_nodes_fill_it() {
    use porta_fs::shared::hdr;
    use std::sync::atomic::Ordering;
    let mut c = Conn::new();
    // This test process's table as it is now (other tests' descriptors included); the
    // server is told that is what was grown ahead last.
    let table = sys::fd_table_size(None).unwrap();
    c.cfg
        .shared
        .hdr(hdr::FD_TABLE)
        .store(table as u64, Ordering::Relaxed);
    // Nodes with descriptors until the highest one is in the table's last quarter.
    let mut i = 0;
    while (c.cfg.shared.hdr(hdr::HIGH).load(Ordering::Relaxed) as usize) * 4 < table * 3 {
        let name = format!("f{i}");
        std::fs::write(c.backing().join(&name), b"").unwrap();
        assert_eq!(c.lookup(1, &name).0, 0);
        i += 1;
        assert!(i < 4 * table, "the node table does not fill the fd table");
    }
    let want = (table * 4) as u64;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while c.cfg.shared.hdr(hdr::FD_TABLE).load(Ordering::Relaxed) < want {
        assert!(std::time::Instant::now() < deadline, "not grown ahead");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(sys::fd_table_size(None).unwrap() >= table * 4);
    c.assert_alive();
}

#[test]
fn descriptors_a_killed_server_held_for_requests_in_progress_are_closed_by_its_successor() {
    use porta_fs::shared::{hdr, kind};
    use std::os::fd::IntoRawFd;
    use std::sync::atomic::Ordering;
    require_root!();
    let mut c = Conn::new();
    let b = c.backing();
    std::fs::write(b.join("f"), "x").unwrap();
    for i in 0..41 {
        std::fs::create_dir(b.join(format!("s{i}"))).unwrap();
    }
    let open = |name: &str, flags: i32| {
        let p = CString::new(b.join(name).as_os_str().as_encoded_bytes()).unwrap();
        sys::openat(libc::AT_FDCWD, &p, flags, 0)
            .unwrap()
            .into_raw_fd()
    };
    let key = |fd: i32| sys::fstat(fd).ok().map(|st| (st.st_dev, st.st_ino));
    let dead = open("f", libc::O_RDONLY); // a reopen the dead server was registering
    let own = open("f", libc::O_PATH); // a request of the successor itself, under way
    let first = open("s40", libc::O_RDONLY | libc::O_DIRECTORY); // a READDIR never answered
    let streams: Vec<i32> = (0..40)
        .map(|i| open(&format!("s{i}"), libc::O_RDONLY | libc::O_DIRECTORY))
        .collect();
    let keys: Vec<_> = [dead, own, first]
        .iter()
        .chain(&streams)
        .map(|&fd| key(fd).unwrap())
        .collect();
    c.restart_after(|sh| {
        let started = sh.hdr(hdr::SERVER_STARTS).load(Ordering::Relaxed);
        assert!(sh.publish(dead, kind::SCRATCH, started, 0, 0));
        assert!(sh.publish(own, kind::SCRATCH, started + 1, 0, 0));
        for (i, &fd) in std::iter::once(&first).chain(&streams).enumerate() {
            let (dev, ino) = key(fd).unwrap();
            assert!(sh.publish(fd, kind::STREAM, 1, ino, dev));
            // The abandoned listings ended somewhere; the unanswered one at 0.
            sh.stream(fd).unwrap().set_offset(i as u64 * 7);
        }
    });
    // A LOOKUP waits for the rebuilt index: the successor has looked at the table.
    assert_eq!(c.lookup(1, "f").0, 0);
    let sh = c.cfg.shared;
    // Closed: the entry free and the number no longer that object (another test's
    // thread may have taken the number since).
    let closed = |fd: i32, k: (u64, u64)| sh.kind(fd) == kind::FREE && key(fd) != Some(k);
    assert!(
        closed(dead, keys[0]),
        "the dead server's scratch descriptor stays open"
    );
    assert_eq!(
        sh.kind(own),
        kind::SCRATCH,
        "the successor's own was closed"
    );
    assert_eq!(key(own), Some(keys[1]));
    assert!(closed(first, keys[2]), "a listing at offset 0 was kept");
    let kept = streams
        .iter()
        .filter(|&&fd| sh.kind(fd) == kind::STREAM)
        .count();
    assert_eq!(
        kept,
        porta_fs::listing::MAX_IDLE,
        "idle listings kept past the limit"
    );
    for (&fd, &k) in streams.iter().zip(&keys[3..]) {
        assert!(
            sh.kind(fd) == kind::STREAM || closed(fd, k),
            "descriptor {fd}"
        );
    }
    // The successor's own goes as it would after its request.
    sh.free(own);
    sys::close(own);
}
