//! `porta:memfs` served on a real FUSE mount.

mod common;

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::time::{Duration, UNIX_EPOCH};

use common::*;

#[test]
fn files_directories_links_and_renames() {
    require_root!();
    let m = Mounted::new("memfs", &[]);
    let root = fs::metadata(&m.mnt).unwrap();
    assert_eq!(root.mode() & 0o7777, 0o755);
    assert_eq!((root.uid(), root.gid()), (0, 0));
    assert_eq!(root.nlink(), 2);

    // Files: write, read back, append, truncate.
    fs::write(m.p("a"), b"hello").unwrap();
    assert_eq!(fs::read(m.p("a")).unwrap(), b"hello");
    let mut f = fs::OpenOptions::new().append(true).open(m.p("a")).unwrap();
    f.write_all(b", world").unwrap();
    drop(f);
    assert_eq!(fs::read(m.p("a")).unwrap(), b"hello, world");
    let mut f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(m.p("a"))
        .unwrap();
    f.seek(SeekFrom::Start(10)).unwrap();
    f.write_all(b"XYZ").unwrap();
    f.set_len(4).unwrap();
    f.seek(SeekFrom::Start(0)).unwrap();
    let mut s = String::new();
    f.read_to_string(&mut s).unwrap();
    assert_eq!(s, "hell");
    drop(f);
    let meta = fs::metadata(m.p("a")).unwrap();
    assert_eq!(meta.len(), 4);
    assert_eq!(meta.mode() & 0o7777, 0o644, "umask 022 applied to 0666");
    assert_eq!(meta.nlink(), 1);

    // Directories: nlink counts subdirectories.
    fs::create_dir(m.p("d")).unwrap();
    fs::create_dir(m.p("d/sub")).unwrap();
    assert_eq!(fs::metadata(&m.mnt).unwrap().nlink(), 3);
    assert_eq!(fs::metadata(m.p("d")).unwrap().nlink(), 3);
    fs::write(m.p("d/sub/f"), b"x").unwrap();
    assert_eq!(errno(fs::remove_dir(m.p("d/sub"))), libc::ENOTEMPTY);
    assert_eq!(errno(fs::remove_file(m.p("d"))), libc::EISDIR);
    assert_eq!(errno(fs::create_dir(m.p("d"))), libc::EEXIST);
    assert_eq!(names(&m.mnt), ["a", "d"]);

    // Symlinks.
    std::os::unix::fs::symlink("d/sub/f", m.p("link")).unwrap();
    assert!(fs::symlink_metadata(m.p("link"))
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(bytes(&fs::read_link(m.p("link")).unwrap()), b"d/sub/f");
    assert_eq!(fs::read(m.p("link")).unwrap(), b"x");

    // Hard links share the inode and count.
    fs::hard_link(m.p("a"), m.p("d/a2")).unwrap();
    let (a, a2) = (
        fs::metadata(m.p("a")).unwrap(),
        fs::metadata(m.p("d/a2")).unwrap(),
    );
    assert_eq!(a.ino(), a2.ino());
    assert_eq!(a2.nlink(), 2);
    fs::remove_file(m.p("a")).unwrap();
    assert_eq!(fs::metadata(m.p("d/a2")).unwrap().nlink(), 1);
    assert_eq!(fs::read(m.p("d/a2")).unwrap(), b"hell");
    assert_eq!(errno(fs::hard_link(m.p("d"), m.p("dlink"))), libc::EPERM);

    // An unlinked file stays readable while open.
    fs::write(m.p("gone"), b"still here").unwrap();
    let mut open = fs::File::open(m.p("gone")).unwrap();
    fs::remove_file(m.p("gone")).unwrap();
    let mut s = String::new();
    open.read_to_string(&mut s).unwrap();
    assert_eq!(s, "still here");
    drop(open);

    // Renames: over a file, of a directory across parents, into itself, flags.
    fs::write(m.p("r1"), b"one").unwrap();
    fs::write(m.p("r2"), b"two").unwrap();
    fs::rename(m.p("r1"), m.p("r2")).unwrap();
    assert_eq!(fs::read(m.p("r2")).unwrap(), b"one");
    assert!(!m.p("r1").exists());
    fs::create_dir(m.p("e")).unwrap();
    fs::rename(m.p("d/sub"), m.p("e/sub")).unwrap();
    assert_eq!(fs::metadata(m.p("d")).unwrap().nlink(), 2);
    assert_eq!(fs::metadata(m.p("e")).unwrap().nlink(), 3);
    assert_eq!(fs::read(m.p("e/sub/f")).unwrap(), b"x");
    assert_eq!(errno(fs::rename(m.p("e"), m.p("e/sub/e"))), libc::EINVAL);
    assert_eq!(errno(fs::rename(m.p("e"), m.p("r2"))), libc::ENOTDIR);
    assert_eq!(errno(fs::rename(m.p("r2"), m.p("e"))), libc::EISDIR);
    assert_eq!(errno(fs::rename(m.p("d"), m.p("e"))), libc::ENOTEMPTY);
    fs::write(m.p("x1"), b"first").unwrap();
    fs::write(m.p("x2"), b"second").unwrap();
    assert_eq!(
        errno(rename2(&m.p("x1"), &m.p("x2"), libc::RENAME_NOREPLACE)),
        libc::EEXIST
    );
    rename2(&m.p("x1"), &m.p("x3"), libc::RENAME_NOREPLACE).unwrap();
    rename2(&m.p("x3"), &m.p("x2"), libc::RENAME_EXCHANGE).unwrap();
    assert_eq!(fs::read(m.p("x2")).unwrap(), b"first");
    assert_eq!(fs::read(m.p("x3")).unwrap(), b"second");
    assert_eq!(
        errno(rename2(&m.p("x3"), &m.p("nothing"), libc::RENAME_EXCHANGE)),
        libc::ENOENT
    );
    // Exchanging a directory and a file across parents moves the link counts too.
    rename2(&m.p("e/sub"), &m.p("x3"), libc::RENAME_EXCHANGE).unwrap();
    assert!(fs::metadata(m.p("x3")).unwrap().is_dir());
    assert_eq!(fs::read(m.p("e/sub")).unwrap(), b"second");
    assert_eq!(fs::metadata(m.p("e")).unwrap().nlink(), 2);
    assert_eq!(fs::read(m.p("x3/f")).unwrap(), b"x");

    // Fifos.
    nix::unistd::mkfifo(
        &m.p("fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o640),
    )
    .unwrap();
    let fifo = fs::symlink_metadata(m.p("fifo")).unwrap();
    assert!(fifo.file_type().is_fifo());
    assert_eq!(fifo.mode() & 0o7777, 0o640);

    // chmod, chown, utimens.
    fs::set_permissions(m.p("x2"), fs::Permissions::from_mode(0o4710)).unwrap();
    assert_eq!(fs::metadata(m.p("x2")).unwrap().mode() & 0o7777, 0o4710);
    nix::unistd::chown(&m.p("x2"), Some(1234.into()), Some(5678.into())).unwrap();
    let x2 = fs::metadata(m.p("x2")).unwrap();
    assert_eq!((x2.uid(), x2.gid()), (1234, 5678));
    assert_eq!(x2.mode() & 0o7777, 0o710, "chown clears set-uid");
    let t = UNIX_EPOCH + Duration::new(1_000_000_000, 500);
    fs::File::options()
        .write(true)
        .open(m.p("x2"))
        .unwrap()
        .set_times(fs::FileTimes::new().set_modified(t).set_accessed(t))
        .unwrap();
    let x2 = fs::metadata(m.p("x2")).unwrap();
    assert_eq!((x2.mtime(), x2.mtime_nsec()), (1_000_000_000, 500));
    assert_eq!((x2.atime(), x2.atime_nsec()), (1_000_000_000, 500));

    // Creating an entry changes the directory's mtime and ctime.
    let old = UNIX_EPOCH + Duration::from_secs(1000);
    fs::File::open(m.p("d"))
        .unwrap()
        .set_times(fs::FileTimes::new().set_modified(old))
        .unwrap();
    assert_eq!(fs::metadata(m.p("d")).unwrap().mtime(), 1000);
    fs::write(m.p("d/new"), b"").unwrap();
    assert!(fs::metadata(m.p("d")).unwrap().mtime() > 1000);

    // Extended attributes.
    setxattr(&m.p("x2"), "user.colour", b"blue", 0).unwrap();
    assert_eq!(getxattr(&m.p("x2"), "user.colour").unwrap(), b"blue");
    assert_eq!(
        errno(setxattr(
            &m.p("x2"),
            "user.colour",
            b"red",
            libc::XATTR_CREATE
        )),
        libc::EEXIST
    );
    assert_eq!(
        errno(setxattr(&m.p("x2"), "user.size", b"1", libc::XATTR_REPLACE)),
        libc::ENODATA
    );
    setxattr(&m.p("x2"), "user.size", b"1", 0).unwrap();
    assert_eq!(listxattr(&m.p("x2")).unwrap(), ["user.colour", "user.size"]);
    assert_eq!(errno(getxattr(&m.p("x2"), "user.none")), libc::ENODATA);
    assert_eq!(
        errno(setxattr(&m.p("link"), "user.x", b"1", 0)),
        libc::EPERM
    );

    // fallocate extends; punching a hole zeroes.
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(m.p("falloc"))
        .unwrap();
    nix::fcntl::fallocate(
        std::os::fd::AsRawFd::as_raw_fd(&f),
        nix::fcntl::FallocateFlags::empty(),
        0,
        8192,
    )
    .unwrap();
    assert_eq!(f.metadata().unwrap().len(), 8192);
    drop(f);

    m.finish().unwrap();
}

#[test]
fn size_limit_gives_enospc_and_statfs() {
    require_root!();
    // Space comes back at the last close: no forked child may hold a copy meanwhile.
    let _no_forks = no_forks();
    let m = Mounted::new("memfs", &["size=64k", "mode=1777"]);
    assert_eq!(fs::metadata(&m.mnt).unwrap().mode() & 0o7777, 0o1777);
    let st = nix::sys::statvfs::statvfs(&m.mnt).unwrap();
    assert_eq!(st.block_size(), 4096);
    assert_eq!(st.blocks(), 16);
    assert_eq!(st.blocks_free(), 16);

    let mut f = fs::File::create(m.p("big")).unwrap();
    let chunk = vec![7u8; 10_000];
    let mut written = 0;
    let err = loop {
        match f.write(&chunk) {
            Ok(n) => written += n,
            Err(e) => break e,
        }
        assert!(written <= 65536, "wrote past the limit");
    };
    assert_eq!(err.raw_os_error(), Some(libc::ENOSPC));
    assert_eq!(written, 65536);
    drop(f);
    assert_eq!(nix::sys::statvfs::statvfs(&m.mnt).unwrap().blocks_free(), 0);
    assert_eq!(errno(fs::write(m.p("more"), b"x")), libc::ENOSPC);
    // Growing by truncate, a symlink target or an xattr is charged too.
    let small = fs::File::create(m.p("small")).unwrap();
    assert_eq!(errno(small.set_len(1)), libc::ENOSPC);
    drop(small);
    assert_eq!(
        errno(std::os::unix::fs::symlink("target", m.p("sym"))),
        libc::ENOSPC
    );
    assert_eq!(
        errno(setxattr(&m.p("small"), "user.a", b"v", 0)),
        libc::ENOSPC
    );
    // Removing the file gives the space back.
    fs::remove_file(m.p("big")).unwrap();
    fs::remove_file(m.p("small")).unwrap();
    assert_eq!(
        nix::sys::statvfs::statvfs(&m.mnt).unwrap().blocks_free(),
        16
    );
    fs::write(m.p("again"), vec![1u8; 60_000]).unwrap();
    m.finish().unwrap();
}

#[test]
fn owners_setgid_and_sticky_as_uid_1000() {
    require_root!();
    let m = Mounted::new("memfs", &["mode=1777"]);
    let root = m.mnt.display().to_string();

    // A file and a directory made by uid 1000 are its own.
    let out = as_user(&format!("touch {root}/mine && mkdir {root}/mydir"));
    assert!(out.status.success(), "{out:?}");
    for p in ["mine", "mydir"] {
        let md = fs::metadata(m.p(p)).unwrap();
        assert_eq!((md.uid(), md.gid()), (1000, 1000), "{p}");
    }

    // A set-gid directory gives its group to new entries and its bit to subdirectories.
    fs::create_dir(m.p("shared")).unwrap();
    nix::unistd::chown(&m.p("shared"), None, Some(50.into())).unwrap();
    fs::set_permissions(m.p("shared"), fs::Permissions::from_mode(0o2777)).unwrap();
    let out = as_user(&format!("touch {root}/shared/f && mkdir {root}/shared/sub"));
    assert!(out.status.success(), "{out:?}");
    let f = fs::metadata(m.p("shared/f")).unwrap();
    assert_eq!((f.uid(), f.gid()), (1000, 50));
    let sub = fs::metadata(m.p("shared/sub")).unwrap();
    assert_eq!((sub.uid(), sub.gid()), (1000, 50));
    assert_ne!(
        sub.mode() & 0o2000,
        0,
        "set-gid inherited by a subdirectory"
    );
    assert_eq!(f.mode() & 0o2000, 0);

    // Sticky root: uid 1000 may not remove or rename root's file, but may its own.
    fs::write(m.p("roots"), b"r").unwrap();
    let out = as_user(&format!("rm -f {root}/roots"));
    assert!(
        !out.status.success(),
        "removed root's file in a sticky directory"
    );
    assert!(m.p("roots").exists());
    let out = as_user(&format!("mv {root}/roots {root}/stolen"));
    assert!(!out.status.success());
    let out = as_user(&format!("rm {root}/mine"));
    assert!(out.status.success(), "{out:?}");

    // uid 1000 cannot give its file away nor chmod root's.
    let out = as_user(&format!("touch {root}/mine2 && chown 0 {root}/mine2"));
    assert!(!out.status.success());
    assert_eq!(fs::metadata(m.p("mine2")).unwrap().uid(), 1000);
    let out = as_user(&format!("chmod 777 {root}/roots"));
    assert!(!out.status.success());
    assert_eq!(fs::metadata(m.p("roots")).unwrap().mode() & 0o777, 0o644);
    // Permissions come from the modes returned: 0600 root's file is unreadable.
    fs::set_permissions(m.p("roots"), fs::Permissions::from_mode(0o600)).unwrap();
    let out = as_user(&format!("cat {root}/roots"));
    assert!(!out.status.success());

    m.finish().unwrap();
}

#[test]
fn open_flags_reach_the_file() {
    require_root!();
    let m = Mounted::new("memfs", &[]);
    let f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(m.p("excl"))
        .unwrap();
    drop(f);
    assert_eq!(fs::metadata(m.p("excl")).unwrap().mode() & 0o777, 0o600);
    assert_eq!(
        errno(
            fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(m.p("excl"))
        ),
        libc::EEXIST
    );
    m.finish().unwrap();
}
