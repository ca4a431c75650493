//! Cold nodes: once the descriptor table is at its high-water mark, new nodes are kept
//! by parent and name, without a descriptor. The kernel keeps caching them (a second walk
//! of a tree larger than the descriptor budget does not reach the server), and every
//! operation works on them as on any node: through renames of the node and of its
//! directory, hard links, unlink while open, and the kernel dropping them. Needs root
//! (skipped otherwise).

mod common;
use common::TestMount;
use porta_fs::evict::Budget;
use porta_fs::shared::hdr;
use porta_fs::Shared;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::atomic::Ordering;

/// The servers' descriptor budget in these tests (the table itself is larger, so that
/// descriptors of other tests in this process never fall outside it).
const NOFILE: u64 = 1000;
const DIRS: usize = 4;
const PER_DIR: usize = 400;

/// A mount whose descriptor budget is `NOFILE`, with a cold table of `cold` entries,
/// over a tree of DIRS × PER_DIR one-byte files.
fn mount(prefix: &str, cold: usize) -> TestMount {
    let (dir, backing, mnt) = common::scratch(prefix);
    for d in 0..DIRS {
        let dp = backing.join(format!("d{d}"));
        std::fs::create_dir(&dp).unwrap();
        for f in 0..PER_DIR {
            std::fs::write(dp.join(format!("f{f}")), b"x").unwrap();
        }
    }
    let shared = Shared::anonymous_with(20000, cold).unwrap();
    shared.hdr(hdr::NOFILE).store(NOFILE, Ordering::Relaxed);
    TestMount::with_shared(dir, backing, mnt, true, shared)
}

/// Lists every directory of the tree and lstat's every entry.
fn walk(m: &TestMount) -> usize {
    let mut n = 0;
    for d in 0..DIRS {
        for e in std::fs::read_dir(m.mnt.join(format!("d{d}"))).unwrap() {
            let e = e.unwrap();
            assert_eq!(std::fs::symlink_metadata(e.path()).unwrap().len(), 1);
            n += 1;
        }
    }
    n
}

fn requests(m: &TestMount) -> u64 {
    m.shared.requests_done()
}

#[test]
fn a_second_walk_of_a_tree_larger_than_the_descriptor_budget_stays_in_the_kernel() {
    require_root!();
    let budget = Budget::for_limit(NOFILE as usize);
    const { assert!(DIRS * PER_DIR > NOFILE as usize) };
    let m = mount("porta-fs-cold-walk", 1 << 16);
    assert_eq!(walk(&m), DIRS * PER_DIR);
    assert!(m.shared.live() <= budget.max, "{} entries", m.shared.live());
    assert!(
        m.shared.cold_live() >= DIRS * PER_DIR - budget.high,
        "{} cold nodes",
        m.shared.cold_live()
    );
    let before = requests(&m);
    assert_eq!(walk(&m), DIRS * PER_DIR);
    let second = requests(&m) - before;
    eprintln!(
        "second walk: {second} requests for {} files",
        DIRS * PER_DIR
    );
    // A GETATTR per directory (the first walk's READDIR marked its atime stale); no
    // LOOKUP per file, no OPENDIR or RELEASEDIR (listings come without them).
    assert!(second <= 2 * DIRS as u64, "{second} requests");
    drop(m);

    // Without a cold table the same walk evicts and looks names up again: the check
    // above can fail.
    let m = mount("porta-fs-cold-none", 0);
    walk(&m);
    let before = requests(&m);
    walk(&m);
    let second = requests(&m) - before;
    eprintln!("without a cold table: {second} requests");
    assert!(
        second > (DIRS * PER_DIR - budget.max) as u64,
        "{second} requests"
    );
}

#[test]
fn cold_nodes_take_every_operation() {
    require_root!();
    let m = mount("porta-fs-cold-ops", 1 << 16);
    walk(&m); // fills the descriptor table to its high-water mark: new files are cold
    let b = &m.backing;
    let mnt = &m.mnt;
    // Directories keep getting descriptors up to the maximum: fill it, so that the
    // directories below are cold too.
    let budget = Budget::for_limit(NOFILE as usize);
    std::fs::create_dir(b.join("fill")).unwrap();
    for i in 0..budget.max {
        std::fs::create_dir(b.join(format!("fill/{i}"))).unwrap();
    }
    for i in 0..budget.max {
        std::fs::metadata(mnt.join(format!("fill/{i}"))).unwrap();
    }
    assert!(m.shared.live() >= budget.max, "{} entries", m.shared.live());
    std::fs::create_dir(b.join("late")).unwrap();
    std::fs::write(b.join("late/file"), b"hello").unwrap();
    std::fs::create_dir(b.join("late/sub")).unwrap();
    std::fs::write(b.join("late/sub/deep"), b"deep").unwrap();
    std::os::unix::fs::symlink("file", b.join("late/link")).unwrap();
    let cold_before = m.shared.cold_live();
    let f = mnt.join("late/file");
    assert_eq!(std::fs::read(&f).unwrap(), b"hello");
    assert_eq!(std::fs::read(mnt.join("late/sub/deep")).unwrap(), b"deep");
    assert!(
        m.shared.cold_live() >= cold_before + 4,
        "late, file, sub, deep should be cold: {} -> {}",
        cold_before,
        m.shared.cold_live()
    );

    // A cold node keeps no passthrough backing id once its last open file is closed (the
    // supervisor registers at most as many ids as there are descriptors).
    if m.passthrough_active() {
        let ino = std::fs::metadata(b.join("late/file")).unwrap().ino();
        let sh = m.shared;
        let entry = (0..sh.cold_scan_end())
            .filter_map(|i| {
                sh.cold_node(i)
                    .filter(|_| sh.cold_kind(i) == porta_fs::shared::kind::NODE)
            })
            .find(|e| e.ino() == ino)
            .expect("late/file is a cold node");
        let open = std::fs::File::open(&f).unwrap();
        assert_ne!(
            entry.backing().load(Ordering::Relaxed),
            0,
            "a backing id while open"
        );
        drop(open);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while entry.backing().load(Ordering::Relaxed) != 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(
            entry.backing().load(Ordering::Relaxed),
            0,
            "the backing id outlived the open"
        );
    }

    // Data, attributes, xattrs, symlinks.
    std::fs::OpenOptions::new()
        .append(true)
        .open(&f)
        .unwrap()
        .write_all(b" world")
        .unwrap();
    assert_eq!(std::fs::read(&f).unwrap(), b"hello world");
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o640)).unwrap();
    assert_eq!(std::fs::metadata(&f).unwrap().mode() & 0o7777, 0o640);
    std::os::unix::fs::chown(&f, Some(1234), Some(5678)).unwrap();
    let md = std::fs::metadata(&f).unwrap();
    assert_eq!((md.uid(), md.gid()), (1234, 5678));
    std::fs::File::options()
        .write(true)
        .open(&f)
        .unwrap()
        .set_len(5)
        .unwrap();
    assert_eq!(std::fs::read(&f).unwrap(), b"hello");
    common::sh(
        mnt,
        "touch -d '2001-02-03 04:05:06' late/file && [ \"$(stat -c %Y late/file)\" = 981173106 ]",
    );
    xattr_roundtrip(&f);
    assert_eq!(
        std::fs::read_link(mnt.join("late/link")).unwrap(),
        Path::new("file")
    );

    // New files in a cold directory, two levels below the last node with a descriptor.
    std::fs::write(mnt.join("late/sub/new"), b"new").unwrap();
    std::fs::create_dir(mnt.join("late/sub/newdir")).unwrap();
    std::fs::write(mnt.join("late/sub/newdir/x"), b"x").unwrap();

    // Rename the cold directory: what is below it is still reached through the kernel's
    // node (OPEN goes to the server, which walks the recorded names).
    std::fs::rename(mnt.join("late/sub"), mnt.join("late/moved")).unwrap();
    assert_eq!(std::fs::read(mnt.join("late/moved/deep")).unwrap(), b"deep");
    assert_eq!(
        std::fs::read(mnt.join("late/moved/newdir/x")).unwrap(),
        b"x"
    );
    // Rename a cold file to another directory, and exchange two.
    std::fs::rename(mnt.join("late/moved/deep"), mnt.join("fill/deep")).unwrap();
    assert_eq!(std::fs::read(mnt.join("fill/deep")).unwrap(), b"deep");
    common::sh(
        mnt,
        "echo a > late/ea; echo b > late/eb; cat late/ea late/eb >/dev/null",
    );
    renameat2_exchange(&mnt.join("late/ea"), &mnt.join("late/eb"));
    assert_eq!(std::fs::read(mnt.join("late/ea")).unwrap(), b"b\n");
    assert_eq!(std::fs::read(mnt.join("late/eb")).unwrap(), b"a\n");
    // A cold file replaced by a rename over it, while open.
    let mut over = std::fs::File::open(mnt.join("late/eb")).unwrap();
    std::fs::rename(mnt.join("late/ea"), mnt.join("late/eb")).unwrap();
    let mut s = String::new();
    over.read_to_string(&mut s).unwrap();
    assert_eq!(s, "a\n");
    assert_eq!(std::fs::read(mnt.join("late/eb")).unwrap(), b"b\n");

    // Hard link, then the first name goes: the node lives on under the second.
    std::fs::hard_link(&f, mnt.join("late/other")).unwrap();
    std::fs::remove_file(&f).unwrap();
    assert_eq!(std::fs::read(mnt.join("late/other")).unwrap(), b"hello");
    assert_eq!(
        std::fs::metadata(mnt.join("late/other")).unwrap().nlink(),
        1
    );

    // Unlinked while open: the open file keeps working, attribute changes included (a
    // SETATTR names the node, whose name is gone: the server pinned it).
    let p = mnt.join("late/moved/new");
    let mut open = std::fs::File::options()
        .read(true)
        .write(true)
        .open(&p)
        .unwrap();
    std::fs::remove_file(&p).unwrap();
    open.write_all(b"NEW").unwrap();
    open.set_permissions(std::fs::Permissions::from_mode(0o600))
        .unwrap();
    assert_eq!(open.metadata().unwrap().mode() & 0o7777, 0o600);
    assert_eq!(open.metadata().unwrap().nlink(), 0);
    open.seek(SeekFrom::Start(0)).unwrap();
    let mut s = String::new();
    open.read_to_string(&mut s).unwrap();
    assert_eq!(s, "NEW");
    drop(open);

    // Clean up through the mount: rmdir of cold directories.
    common::sh(
        mnt,
        "rm -r late/moved && rm late/other late/eb late/link && rmdir late",
    );
    assert!(!b.join("late").exists());

    // When the kernel drops its cache, it forgets cold nodes like any other.
    let cold = m.shared.cold_live();
    common::sh(mnt, "sync; echo 2 > /proc/sys/vm/drop_caches");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while m.shared.cold_live() >= cold && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(
        m.shared.cold_live() < cold,
        "cold nodes not forgotten: {cold} -> {}",
        m.shared.cold_live()
    );
    // And the tree is still all there.
    assert_eq!(walk(&m), DIRS * PER_DIR);
    assert_eq!(std::fs::read(mnt.join("fill/deep")).unwrap(), b"deep");
}

fn xattr_roundtrip(p: &Path) {
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: valid NUL-terminated strings and buffers of the given lengths.
    unsafe {
        assert_eq!(
            libc::setxattr(c.as_ptr(), c"user.t".as_ptr(), b"v1".as_ptr().cast(), 2, 0),
            0
        );
        let mut buf = [0u8; 16];
        let n = libc::getxattr(c.as_ptr(), c"user.t".as_ptr(), buf.as_mut_ptr().cast(), 16);
        assert_eq!(&buf[..n as usize], b"v1");
        let n = libc::listxattr(c.as_ptr(), buf.as_mut_ptr().cast(), 16);
        assert_eq!(&buf[..n as usize], b"user.t\0");
        assert_eq!(libc::removexattr(c.as_ptr(), c"user.t".as_ptr()), 0);
    }
}

fn renameat2_exchange(a: &Path, b: &Path) {
    let ca = std::ffi::CString::new(a.as_os_str().as_encoded_bytes()).unwrap();
    let cb = std::ffi::CString::new(b.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: valid NUL-terminated paths.
    let r = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            ca.as_ptr(),
            libc::AT_FDCWD,
            cb.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    assert_eq!(r, 0, "{}", std::io::Error::last_os_error());
}

#[test]
fn cold_nodes_on_an_overlay_root_survive_copy_up() {
    require_root!();
    // The root containerd and Podman hand over: an overlay of an image layer and an
    // upper directory. A write to a lower file copies it up; a cold node of it must
    // still open (overlayfs keeps st_ino across copy-up when its layers share a file
    // system, as here and under containerd's snapshotter).
    // The overlay is dropped after the FUSE mount (declared first).
    let ovl = common::Overlay::new("porta-fs-cold-layers", |lower| {
        for d in 0..DIRS {
            std::fs::create_dir(lower.join(format!("d{d}"))).unwrap();
            for f in 0..PER_DIR {
                std::fs::write(lower.join(format!("d{d}/f{f}")), b"x").unwrap();
            }
        }
    });
    let (dir, _, mnt) = common::scratch("porta-fs-cold-ovl");
    let backing = ovl.merged.clone();
    let shared = Shared::anonymous_with(20000, 1 << 16).unwrap();
    shared.hdr(hdr::NOFILE).store(NOFILE, Ordering::Relaxed);
    let m = TestMount::with_shared(dir, backing, mnt, true, shared);
    assert_eq!(walk(&m), DIRS * PER_DIR);
    assert!(m.shared.cold_live() > 0);
    // The last files of the walk are cold; copy each up by writing, then reopen it.
    for f in PER_DIR - 20..PER_DIR {
        let p = m.mnt.join(format!("d{}/f{f}", DIRS - 1));
        std::fs::OpenOptions::new()
            .append(true)
            .open(&p)
            .unwrap()
            .write_all(b"y")
            .unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"xy", "{}", p.display());
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let copied = std::fs::read_dir(ovl.upper.join(format!("d{}", DIRS - 1)))
        .unwrap()
        .count();
    assert_eq!(copied, 20, "copied up");
    drop(m);
}
