//! The node table stays bounded: a tree larger than the server's descriptor budget is
//! walked, and more files than it holds are created and deleted, with no error, while
//! the entries in use stay below the budget. Needs root (skipped otherwise).
//!
//! One test (not several): it sets `PORTA_FS_EVICT` for the process to run the
//! `FUSE_NOTIFY_INVAL_ENTRY` fallback after the default. Also: with every node in use,
//! opens fail with ENFILE and the server carries on.

mod common;
use common::TestMount;
use porta_fs::evict::Budget;
use porta_fs::shared::{hdr, kind};
use std::io::{Read, Write};
use std::path::Path;
use std::sync::atomic::Ordering;

const CAPACITY: usize = 3000;
const DIRS: usize = 40;
const PER_DIR: usize = 150;

fn new_mount(passthrough: bool) -> TestMount {
    let (dir, backing, mnt) = common::scratch("porta-fs-nodes");
    for d in 0..DIRS {
        let dp = backing.join(format!("d{d}"));
        std::fs::create_dir(&dp).unwrap();
        for f in 0..PER_DIR {
            std::fs::write(dp.join(format!("f{f}")), b"x").unwrap();
        }
    }
    TestMount::with_capacity(dir, backing, mnt, passthrough, CAPACITY)
}

/// Walks the tree and stats every file twice; then creates and deletes more files than
/// the budget holds. Returns the most entries seen in use.
fn exercise(m: &TestMount, budget: &Budget) -> usize {
    let mut most = 0;
    let mut sample = |m: &TestMount| {
        most = most.max(m.shared.live());
    };
    // A file held open and a directory in use across the whole run.
    let mut held = std::fs::File::open(m.mnt.join("d0/f0")).unwrap();
    for _ in 0..2 {
        for d in 0..DIRS {
            let dp = m.mnt.join(format!("d{d}"));
            let mut n = 0;
            for e in std::fs::read_dir(&dp).unwrap() {
                let e = e.unwrap();
                assert_eq!(std::fs::symlink_metadata(e.path()).unwrap().len(), 1);
                n += 1;
            }
            assert_eq!(n, PER_DIR, "{}", dp.display());
            sample(m);
        }
    }
    let new = m.mnt.join("new");
    std::fs::create_dir(&new).unwrap();
    let total = budget.limit + 1000;
    for i in 0..total {
        let p = new.join(format!("n{i}"));
        let mut f = std::fs::File::create(&p).unwrap();
        f.write_all(b"data").unwrap();
        if i % 200 == 0 {
            sample(m);
        }
    }
    for i in 0..total {
        std::fs::remove_file(new.join(format!("n{i}"))).unwrap();
    }
    std::fs::remove_dir(&new).unwrap();
    let mut s = String::new();
    held.read_to_string(&mut s).unwrap();
    assert_eq!(s, "x");
    sample(m);
    most
}

/// Unmounts, then closes the descriptors the server left in this process (a keeper's fd
/// table would go with the keeper; here it is the test's own), so the next mount's
/// descriptors fit its table again.
fn finish(m: TestMount) {
    let sh = m.shared;
    let root = sh.hdr(hdr::ROOT_FD).load(Ordering::Relaxed) as i32;
    drop(m);
    for fd in 0..sh.capacity() as i32 {
        if fd != root && sh.kind(fd) != kind::FREE {
            sh.free(fd);
            porta_fs::sys::close(fd);
        }
    }
}

fn check(passthrough: bool, what: &str) {
    let m = new_mount(passthrough);
    let budget = Budget::for_limit(CAPACITY);
    const { assert!(DIRS * PER_DIR > CAPACITY) };
    let most = exercise(&m, &budget);
    eprintln!("{what}: most entries in use {most}, budget {budget:?}");
    assert!(
        most <= budget.max,
        "{what}: {most} entries in use, budget {budget:?}"
    );
    assert!(Path::new(&m.mnt).join("d1/f1").exists());
    finish(m);
}

/// Every node in use (files held open): opening more fails with ENFILE, what is open
/// keeps working, the server keeps serving, and the tree is usable again once closed.
fn full_table(passthrough: bool) {
    let m = new_mount(passthrough);
    let budget = Budget::for_limit(CAPACITY);
    let mut held = Vec::new();
    let mut refused = 0;
    'all: for d in 0..DIRS {
        for f in 0..PER_DIR {
            match std::fs::File::open(m.mnt.join(format!("d{d}/f{f}"))) {
                Ok(h) => held.push(h),
                Err(e) => {
                    assert_eq!(e.raw_os_error(), Some(libc::ENFILE), "d{d}/f{f}: {e}");
                    refused += 1;
                    if refused >= 10 {
                        break 'all;
                    }
                }
            }
        }
    }
    eprintln!(
        "full table: {} files held open, {refused} opens refused, {} entries in use",
        held.len(),
        m.shared.live()
    );
    assert!(refused > 0, "every open succeeded");
    assert!(m.shared.live() <= budget.max);
    for h in held.iter_mut().step_by(97) {
        let mut s = String::new();
        h.read_to_string(&mut s).unwrap();
        assert_eq!(s, "x");
    }
    drop(held);
    for d in 0..DIRS {
        for e in std::fs::read_dir(m.mnt.join(format!("d{d}"))).unwrap() {
            std::fs::symlink_metadata(e.unwrap().path()).unwrap();
        }
    }
    assert_eq!(
        std::fs::read_to_string(m.mnt.join("d39/f149")).unwrap(),
        "x"
    );
    assert!(m.shared.live() <= budget.max);
    finish(m);
}

#[test]
fn node_table_stays_bounded() {
    require_root!();
    check(true, "prune, passthrough");
    check(false, "prune, writeback");
    full_table(true);
    std::env::set_var("PORTA_FS_EVICT", "inval");
    check(true, "inval-entry fallback, passthrough");
    std::env::remove_var("PORTA_FS_EVICT");
}
