//! `porta:view` served on a real FUSE mount.

mod common;

use std::fs;
use std::os::unix::fs::{DirEntryExt, FileTypeExt, MetadataExt, PermissionsExt};

use common::*;
use porta_translators::Builtin;

#[test]
fn shows_the_directory_read_only() {
    require_root!();
    let src = scratch("porta-translators-src-");
    let s = |rel: &str| src.path().join(rel);
    fs::write(s("file"), b"contents").unwrap();
    fs::set_permissions(s("file"), fs::Permissions::from_mode(0o640)).unwrap();
    nix::unistd::chown(&s("file"), Some(1234.into()), Some(5678.into())).unwrap();
    setxattr(&s("file"), "user.tag", b"v", 0).unwrap();
    fs::hard_link(s("file"), s("file.hard")).unwrap();
    fs::create_dir(s("sub")).unwrap();
    fs::write(s("sub/inner"), b"inner").unwrap();
    std::os::unix::fs::symlink("/etc/passwd", s("sub/abs")).unwrap();
    std::os::unix::fs::symlink("../../outside", s("up")).unwrap();
    nix::unistd::mkfifo(&s("fifo"), nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();

    let m = Mounted::new("view", &[src.path().to_str().unwrap()]);
    assert_eq!(names(&m.mnt), ["fifo", "file", "file.hard", "sub", "up"]);
    assert_eq!(names(&m.p("sub")), ["abs", "inner"]);

    // Contents and attributes as they are.
    assert_eq!(fs::read(m.p("file")).unwrap(), b"contents");
    assert_eq!(fs::read(m.p("sub/inner")).unwrap(), b"inner");
    let (v, o) = (
        fs::metadata(m.p("file")).unwrap(),
        fs::metadata(s("file")).unwrap(),
    );
    assert_eq!(v.mode(), o.mode());
    assert_eq!((v.uid(), v.gid()), (1234, 5678));
    assert_eq!((v.mtime(), v.mtime_nsec()), (o.mtime(), o.mtime_nsec()));
    assert_eq!(v.ino(), o.ino());
    assert_eq!(v.nlink(), 2);
    assert_eq!(fs::metadata(m.p("file.hard")).unwrap().ino(), v.ino());
    assert!(fs::symlink_metadata(m.p("fifo"))
        .unwrap()
        .file_type()
        .is_fifo());
    assert_eq!(getxattr(&m.p("file"), "user.tag").unwrap(), b"v");
    assert_eq!(listxattr(&m.p("file")).unwrap(), ["user.tag"]);
    assert_eq!(errno(getxattr(&m.p("file"), "user.none")), libc::ENODATA);

    // Symlinks are served as symlinks, their targets as written.
    assert!(fs::symlink_metadata(m.p("sub/abs"))
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(
        bytes(&fs::read_link(m.p("sub/abs")).unwrap()),
        b"/etc/passwd"
    );
    assert_eq!(bytes(&fs::read_link(m.p("up")).unwrap()), b"../../outside");

    // statfs is the directory's file system's.
    let (vs, os) = (
        nix::sys::statvfs::statvfs(&m.mnt).unwrap(),
        nix::sys::statvfs::statvfs(src.path()).unwrap(),
    );
    assert_eq!(
        (vs.blocks(), vs.block_size()),
        (os.blocks(), os.block_size())
    );

    // Changes in the directory show.
    fs::write(s("later"), b"new").unwrap();
    assert_eq!(fs::read(m.p("later")).unwrap(), b"new");

    // Every change is refused.
    assert_eq!(errno(fs::write(m.p("created"), b"x")), libc::EROFS);
    assert_eq!(
        errno(fs::OpenOptions::new().append(true).open(m.p("file"))),
        libc::EROFS
    );
    assert_eq!(errno(fs::create_dir(m.p("d"))), libc::EROFS);
    assert_eq!(errno(fs::remove_file(m.p("file"))), libc::EROFS);
    assert_eq!(errno(fs::remove_dir(m.p("sub"))), libc::EROFS);
    assert_eq!(errno(fs::rename(m.p("file"), m.p("f2"))), libc::EROFS);
    assert_eq!(errno(fs::hard_link(m.p("file"), m.p("f3"))), libc::EROFS);
    assert_eq!(
        errno(std::os::unix::fs::symlink("x", m.p("l"))),
        libc::EROFS
    );
    assert_eq!(
        errno(fs::set_permissions(
            m.p("file"),
            fs::Permissions::from_mode(0o777)
        )),
        libc::EROFS
    );
    assert_eq!(
        errno(setxattr(&m.p("file"), "user.tag", b"w", 0)),
        libc::EROFS
    );
    assert_eq!(fs::read(s("file")).unwrap(), b"contents");
    assert_eq!(fs::metadata(s("file")).unwrap().mode() & 0o777, 0o640);

    m.finish().unwrap();
}

#[test]
fn bad_directories_are_refused_at_prepare() {
    let dir = scratch("porta-translators-bad-");
    let file = dir.path().join("file");
    fs::write(&file, b"").unwrap();
    for (path, needle) in [
        (dir.path().join("absent"), "No such file"),
        (file, "Not a directory"),
    ] {
        let err = Builtin::parse("view", &[path.to_str().unwrap().to_string()])
            .unwrap()
            .prepare()
            .expect_err("a bad directory was accepted")
            .to_string();
        assert!(err.contains("porta:view") && err.contains(needle), "{err}");
    }
}

/// Unmounts a test's tmpfs on drop.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(at: &std::path::Path) -> Tmpfs {
        nix::mount::mount(
            Some("porta-test"),
            at,
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            Some("size=1m"),
        )
        .unwrap();
        Tmpfs(at.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

#[test]
fn file_systems_mounted_within_are_shown_renumbered() {
    require_root!();
    let src = scratch("porta-translators-src-");
    fs::create_dir(src.path().join("inner")).unwrap();
    fs::write(src.path().join("top"), b"top").unwrap();
    let _tmpfs = Tmpfs::mount(&src.path().join("inner"));
    fs::write(src.path().join("inner/file"), b"in tmpfs").unwrap();
    fs::create_dir(src.path().join("inner/dir")).unwrap();

    let m = Mounted::new("view", &[src.path().to_str().unwrap()]);
    assert_eq!(fs::read(m.p("inner/file")).unwrap(), b"in tmpfs");
    assert_eq!(names(&m.p("inner")), ["dir", "file"]);
    // Inodes of the other file system get node ids of their own, all distinct, and the
    // same ones in the listing as in stat.
    let file = fs::metadata(m.p("inner/file")).unwrap().ino();
    let dir = fs::metadata(m.p("inner/dir")).unwrap().ino();
    let inner = fs::metadata(m.p("inner")).unwrap().ino();
    let top = fs::metadata(m.p("top")).unwrap().ino();
    assert_eq!(top, fs::metadata(src.path().join("top")).unwrap().ino());
    for ino in [file, dir, inner] {
        assert!(ino >= 1 << 63, "{ino:#x} not renumbered");
    }
    assert!(file != dir && dir != inner && file != inner);
    let listed: Vec<(String, u64)> = fs::read_dir(m.p("inner"))
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (e.file_name().to_string_lossy().into_owned(), e.ino())
        })
        .collect();
    for (name, ino) in listed {
        let expected = if name == "file" { file } else { dir };
        assert_eq!(ino, expected, "{name}");
    }
    m.finish().unwrap();
}
