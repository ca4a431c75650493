//! Directory listings through a real mount. The server answers OPENDIR with ENOSYS, so
//! the kernel opens directories without asking and caches their listings itself; the
//! server keeps each listing's directory open between READDIRs (`porta_fs::listing`).
//! Needs root (skipped otherwise).

mod common;
use common::{Overlay, TestMount};
use std::collections::BTreeMap;
use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;

fn open_dir(p: &Path) -> OwnedFd {
    let c = CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    porta_fs::sys::openat(libc::AT_FDCWD, &c, libc::O_RDONLY | libc::O_DIRECTORY, 0).unwrap()
}

/// One getdents64 call into a buffer of `len` bytes: the names it returned.
fn getdents(fd: &OwnedFd, len: usize) -> Vec<String> {
    let mut buf = vec![0u8; len];
    let n = porta_fs::sys::getdents64(fd.as_raw_fd(), &mut buf).unwrap();
    let mut names = Vec::new();
    let mut p = 0;
    while p < n {
        let reclen = u16::from_ne_bytes([buf[p + 16], buf[p + 17]]) as usize;
        let raw = &buf[p + 19..p + reclen];
        let end = raw.iter().position(|&c| c == 0).unwrap_or(raw.len());
        names.push(String::from_utf8(raw[..end].to_vec()).unwrap());
        p += reclen;
    }
    names
}

fn names_in(p: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(p)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    v.sort();
    v
}

#[test]
fn listing_a_directory_again_costs_no_request_and_sees_the_containers_changes() {
    require_root!();
    let m = TestMount::new(true);
    let d = m.backing.join("d");
    std::fs::create_dir(&d).unwrap();
    for i in 0..500 {
        std::fs::write(d.join(format!("f{i:03}")), b"").unwrap();
    }
    let d = m.mnt.join("d");
    assert_eq!(names_in(&d).len(), 500);
    // The first listing again may cost one request: a GETATTR, because the first
    // READDIR marked the directory's atime stale. Then none.
    let before = requests_settled(&m);
    assert_eq!(names_in(&d).len(), 500);
    let n = m.shared.requests_done() - before;
    assert!(n <= 1, "{n} requests");
    let before = requests_settled(&m);
    for _ in 0..10 {
        assert_eq!(names_in(&d).len(), 500);
    }
    assert_eq!(
        m.shared.requests_done() - before,
        0,
        "ten more listings reach the server"
    );
    // Changes made through the mount show at once.
    std::fs::write(d.join("new"), b"x").unwrap();
    std::fs::remove_file(d.join("f000")).unwrap();
    let names = names_in(&d);
    assert_eq!(names.len(), 500);
    assert!(names.contains(&"new".to_string()) && !names.contains(&"f000".to_string()));
    // rewinddir / a second read of the same open directory, and fsync of a directory
    // (FSYNCDIR comes without a handle).
    let fd = open_dir(&d);
    let mut first = Vec::new();
    loop {
        let part = getdents(&fd, 4096);
        if part.is_empty() {
            break;
        }
        first.extend(part);
    }
    assert_eq!(first.len(), 502);
    // SAFETY: lseek on a descriptor this test owns.
    assert_eq!(unsafe { libc::lseek(fd.as_raw_fd(), 0, libc::SEEK_SET) }, 0);
    assert_eq!(getdents(&fd, 1 << 16).len(), 502);
    // SAFETY: fsync on a descriptor this test owns.
    let synced = unsafe { libc::fsync(fd.as_raw_fd()) };
    assert_eq!(synced, 0, "fsync of a directory");
    drop(fd);
    // No listing left half-read: the server holds no directory open.
    assert_eq!(common::streams(&m.shared), 0);
}

/// Requests the server has answered, once the count stands still (a server thread
/// counts a request after sending its reply, so the last one of a listing may be counted
/// after the program has carried on).
fn requests_settled(m: &TestMount) -> u64 {
    let mut n = m.shared.requests_done();
    loop {
        std::thread::sleep(std::time::Duration::from_millis(20));
        let again = m.shared.requests_done();
        if again == n {
            return n;
        }
        n = again;
    }
}

/// `rm -r`'s pattern on the usual container root: read a few names, remove them, read
/// on. overlayfs numbers a merged directory's offsets by position in the snapshot its
/// open directory took; a server that reopened the directory for each READDIR would
/// continue in a new, shorter snapshot and skip names.
#[test]
fn removing_names_while_listing_an_overlay_directory_sees_each_once() {
    require_root!();
    const N: usize = 400;
    let ovl = Overlay::new("porta-fs-listing-layers", |lower| {
        let d = lower.join("d");
        std::fs::create_dir(&d).unwrap();
        for i in 0..N {
            std::fs::write(d.join(format!("lower-{i:03}")), b"x").unwrap();
        }
    });
    let (dir, _, mnt) = common::scratch("porta-fs-listing-ovl");
    let m = TestMount::with_dirs(dir, ovl.merged.clone(), mnt, true);
    let d = m.mnt.join("d");
    // Some names in the upper layer too (a merged directory).
    for i in 0..N / 4 {
        std::fs::write(d.join(format!("upper-{i:03}")), b"y").unwrap();
    }
    let total = N + N / 4;
    for round in 0..2 {
        if round == 1 {
            // Again, on a directory the kernel has listed (and cached) before.
            for i in 0..total {
                std::fs::write(d.join(format!("again-{i:03}")), b"z").unwrap();
            }
            assert_eq!(names_in(&d).len(), total);
        }
        let fd = open_dir(&d);
        let mut seen: BTreeMap<String, usize> = BTreeMap::new();
        loop {
            let part = getdents(&fd, 1024);
            if part.is_empty() {
                break;
            }
            for name in part {
                if name == "." || name == ".." {
                    continue;
                }
                *seen.entry(name.clone()).or_default() += 1;
                std::fs::remove_file(d.join(&name)).unwrap();
            }
        }
        drop(fd);
        let twice: Vec<_> = seen.iter().filter(|(_, &n)| n > 1).collect();
        assert!(
            twice.is_empty(),
            "round {round}: names seen twice: {twice:?}"
        );
        assert_eq!(seen.len(), total, "round {round}: names seen");
        assert_eq!(names_in(&d), Vec::<String>::new(), "round {round}: left");
    }
    std::fs::remove_dir(&d).unwrap();
    drop(m);
    drop(ovl);
}
