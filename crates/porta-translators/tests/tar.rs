//! `porta:tar` served on a real FUSE mount: plain, gzip and zstd layers; bad archives
//! refused at prepare.

mod common;

use std::fs;
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use common::*;
use porta_translators::Builtin;
use tar::{EntryType, Header};

fn header(kind: EntryType, mode: u32, size: u64) -> Header {
    let mut h = Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_600_000_000);
    h
}

const BIG: usize = 20_000;

fn long_dir() -> String {
    format!("long/{}", "n".repeat(150))
}

/// A layer with one of everything.
fn layer() -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    // The layer's root entry.
    b.append(
        &raw_header(b"./", EntryType::Directory, 0o750, None),
        &[][..],
    )
    .unwrap();
    let mut h = header(EntryType::Directory, 0o755, 0);
    b.append_data(&mut h, "etc/", &[][..]).unwrap();
    let mut h = header(EntryType::Regular, 0o640, 6);
    h.set_uid(1000);
    h.set_gid(1001);
    h.set_mtime(1_234_567_890);
    b.append_data(&mut h, "etc/hostname", &b"porta\n"[..])
        .unwrap();
    let mut h = header(EntryType::Link, 0o640, 0);
    b.append_link(&mut h, "etc/hostname.hard", "etc/hostname")
        .unwrap();
    let mut h = header(EntryType::Symlink, 0o777, 0);
    b.append_link(&mut h, "bin/sh", "/bin/busybox").unwrap();
    let big: Vec<u8> = (0..BIG).map(|i| (i % 251) as u8).collect();
    let mut h = header(EntryType::Regular, 0o755, BIG as u64);
    b.append_data(&mut h, "bin/busybox", &big[..]).unwrap();
    // GNU long names and long link targets.
    let mut h = header(EntryType::Regular, 0o644, 4);
    b.append_data(&mut h, format!("{}/file.txt", long_dir()), &b"deep"[..])
        .unwrap();
    let mut h = header(EntryType::Symlink, 0o777, 0);
    b.append_link(&mut h, "long/link", "x".repeat(200)).unwrap();
    // A PAX path, mtime and xattr.
    let pax_path = format!("pax/{}", "p".repeat(120));
    b.append_pax_extensions([
        ("path", pax_path.as_bytes()),
        ("mtime", &b"1500000000.25"[..]),
        ("SCHILY.xattr.user.origin", &b"layer"[..]),
    ])
    .unwrap();
    let mut h = Header::new_ustar();
    h.set_entry_type(EntryType::Regular);
    h.set_mode(0o600);
    h.set_size(3);
    h.set_mtime(1);
    h.set_uid(0);
    h.set_gid(0);
    h.set_path("pax/short").unwrap();
    h.set_cksum();
    b.append(&h, &b"pax"[..]).unwrap();
    // Devices and a fifo.
    for (path, kind, major, minor, mode) in [
        ("dev/null", EntryType::Char, 1, 3, 0o666),
        ("dev/sda", EntryType::Block, 8, 0, 0o660),
        ("dev/big", EntryType::Char, 300, 70000, 0o600),
    ] {
        let mut h = header(kind, mode, 0);
        h.set_device_major(major).unwrap();
        h.set_device_minor(minor).unwrap();
        b.append_data(&mut h, path, &[][..]).unwrap();
    }
    let mut h = header(EntryType::Fifo, 0o600, 0);
    b.append_data(&mut h, "run/fifo", &[][..]).unwrap();
    // A file whose directories are only implied.
    let mut h = header(EntryType::Regular, 0o644, 1);
    b.append_data(&mut h, "implied/a/b/file", &b"i"[..])
        .unwrap();
    // Whiteouts and an opaque marker.
    let mut h = header(EntryType::Regular, 0o000, 0);
    b.append_data(&mut h, "etc/.wh.passwd", &[][..]).unwrap();
    let mut h = header(EntryType::Directory, 0o700, 0);
    b.append_data(&mut h, "opaque/", &[][..]).unwrap();
    let mut h = header(EntryType::Regular, 0o000, 0);
    b.append_data(&mut h, "opaque/.wh..wh..opq", &[][..])
        .unwrap();
    let mut h = header(EntryType::Regular, 0o644, 4);
    b.append_data(&mut h, "opaque/kept", &b"kept"[..]).unwrap();
    b.into_inner().unwrap()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn zstd(data: &[u8]) -> Vec<u8> {
    ruzstd::encoding::compress_to_vec(data, ruzstd::encoding::CompressionLevel::Fastest)
}

fn check_layer(m: &Mounted) {
    assert_eq!(
        names(&m.mnt),
        ["bin", "dev", "etc", "implied", "long", "opaque", "pax", "run"]
    );
    // Files: contents, modes, owners, mtimes.
    assert_eq!(fs::read(m.p("etc/hostname")).unwrap(), b"porta\n");
    let host = fs::metadata(m.p("etc/hostname")).unwrap();
    assert_eq!(host.mode() & 0o7777, 0o640);
    assert_eq!((host.uid(), host.gid()), (1000, 1001));
    assert_eq!(host.mtime(), 1_234_567_890);
    let big: Vec<u8> = (0..BIG).map(|i| (i % 251) as u8).collect();
    assert_eq!(fs::read(m.p("bin/busybox")).unwrap(), big);
    assert_eq!(
        fs::metadata(m.p("bin/busybox")).unwrap().mode() & 0o7777,
        0o755
    );
    // Hard links: one inode, two links.
    let hard = fs::metadata(m.p("etc/hostname.hard")).unwrap();
    assert_eq!(hard.ino(), host.ino());
    assert_eq!(hard.nlink(), 2);
    // Symlinks are symlinks, long targets whole.
    assert!(fs::symlink_metadata(m.p("bin/sh"))
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(
        bytes(&fs::read_link(m.p("bin/sh")).unwrap()),
        b"/bin/busybox"
    );
    assert_eq!(
        bytes(&fs::read_link(m.p("long/link")).unwrap()),
        "x".repeat(200).as_bytes()
    );
    assert_eq!(
        fs::read(m.p(&format!("{}/file.txt", long_dir()))).unwrap(),
        b"deep"
    );
    // PAX: path, fractional mtime, xattr.
    let pax = m.p(&format!("pax/{}", "p".repeat(120)));
    assert_eq!(fs::read(&pax).unwrap(), b"pax");
    let pm = fs::metadata(&pax).unwrap();
    assert_eq!((pm.mtime(), pm.mtime_nsec()), (1_500_000_000, 250_000_000));
    assert_eq!(getxattr(&pax, "user.origin").unwrap(), b"layer");
    assert_eq!(listxattr(&pax).unwrap(), ["user.origin"]);
    assert_eq!(names(&m.p("pax")), ["p".repeat(120)]);
    // Devices and fifos shown as such.
    let null = fs::symlink_metadata(m.p("dev/null")).unwrap();
    assert!(null.file_type().is_char_device());
    assert_eq!(null.rdev(), libc::makedev(1, 3));
    assert_eq!(null.mode() & 0o7777, 0o666);
    let sda = fs::symlink_metadata(m.p("dev/sda")).unwrap();
    assert!(sda.file_type().is_block_device());
    assert_eq!(sda.rdev(), libc::makedev(8, 0));
    assert_eq!(
        fs::symlink_metadata(m.p("dev/big")).unwrap().rdev(),
        libc::makedev(300, 70000)
    );
    assert!(fs::symlink_metadata(m.p("run/fifo"))
        .unwrap()
        .file_type()
        .is_fifo());
    // Implied directories.
    let implied = fs::metadata(m.p("implied/a")).unwrap();
    assert!(implied.is_dir());
    assert_eq!(implied.mode() & 0o7777, 0o755);
    assert_eq!((implied.uid(), implied.gid()), (0, 0));
    assert_eq!(fs::read(m.p("implied/a/b/file")).unwrap(), b"i");
    // Directory link counts: etc has no subdirectories, the root has eight.
    assert_eq!(fs::metadata(m.p("etc")).unwrap().nlink(), 2);
    let root = fs::metadata(&m.mnt).unwrap();
    assert_eq!(root.nlink(), 10);
    assert_eq!(root.mode() & 0o7777, 0o750, "the root entry's mode");
    // Whiteouts and opaque markers are not shown.
    assert_eq!(names(&m.p("etc")), ["hostname", "hostname.hard"]);
    assert!(!m.p("etc/.wh.passwd").exists());
    assert_eq!(names(&m.p("opaque")), ["kept"]);
    assert!(!m.p("opaque/.wh..wh..opq").exists());
    assert_eq!(fs::metadata(m.p("opaque")).unwrap().mode() & 0o7777, 0o700);
    let st = nix::sys::statvfs::statvfs(&m.mnt).unwrap();
    assert_eq!((st.blocks_free(), st.block_size()), (0, 4096));
    assert!(st.blocks() > 0 && st.files() > 20);
    // Read-only.
    assert_eq!(errno(fs::write(m.p("new"), b"x")), libc::EROFS);
    assert_eq!(
        errno(fs::OpenOptions::new().write(true).open(m.p("etc/hostname"))),
        libc::EROFS
    );
    assert_eq!(errno(fs::remove_file(m.p("etc/hostname"))), libc::EROFS);
    assert_eq!(errno(fs::create_dir(m.p("newdir"))), libc::EROFS);
    assert_eq!(errno(fs::rename(m.p("etc"), m.p("etc2"))), libc::EROFS);
    assert_eq!(errno(setxattr(&pax, "user.x", b"1", 0)), libc::EROFS);
    assert_eq!(
        errno(nix::unistd::chown(&m.p("etc"), Some(1.into()), None).map_err(std::io::Error::from)),
        libc::EROFS
    );
}

fn serve_bytes(data: &[u8], name: &str) {
    let dir = scratch("porta-translators-tar-");
    let path = dir.path().join(name);
    fs::write(&path, data).unwrap();
    let m = Mounted::new("tar", &[path.to_str().unwrap()]);
    check_layer(&m);
    m.finish().unwrap();
}

#[test]
fn plain_layer() {
    require_root!();
    serve_bytes(&layer(), "layer.tar");
}

#[test]
fn gzip_layer() {
    require_root!();
    serve_bytes(&gzip(&layer()), "layer.tar.gz");
}

#[test]
fn zstd_layer() {
    require_root!();
    serve_bytes(&zstd(&layer()), "layer.tar.zst");
}

#[test]
fn zstd_layer_of_several_frames() {
    require_root!();
    // As pzstd writes: the layer in independent frames, with a skippable frame between.
    let layer = layer();
    let mut data = zstd(&layer[..layer.len() / 3]);
    data.extend_from_slice(&0x184D_2A50u32.to_le_bytes());
    data.extend_from_slice(&5u32.to_le_bytes());
    data.extend_from_slice(b"skip!");
    data.extend_from_slice(&zstd(&layer[layer.len() / 3..]));
    serve_bytes(&data, "frames.tar.zst");
    // Something after the last frame that is not a frame is refused.
    let mut trailing = zstd(&layer);
    trailing.extend_from_slice(b"garbage!");
    let err = prepare_err(&trailing);
    assert!(err.contains("decompressing zstd"), "{err}");
    // A frame whose contents do not match its checksum is refused.
    let mut corrupt = zstd(&layer);
    *corrupt.last_mut().unwrap() ^= 1;
    let err = prepare_err(&corrupt);
    assert!(err.contains("checksum mismatch"), "{err}");
}

fn prepare_err(data: &[u8]) -> String {
    let dir = scratch("porta-translators-bad-");
    let path = dir.path().join("bad.tar");
    fs::write(&path, data).unwrap();
    prepare_path_err(&path)
}

fn prepare_path_err(path: &Path) -> String {
    Builtin::parse("tar", &[path.to_str().unwrap().to_string()])
        .unwrap()
        .prepare()
        .expect_err("a bad archive was accepted")
        .to_string()
}

/// A header with a path the Builder would refuse.
fn raw_header(path: &[u8], kind: EntryType, mode: u32, link: Option<&[u8]>) -> Header {
    let mut h = header(kind, mode, 0);
    h.as_old_mut().name[..path.len()].copy_from_slice(path);
    if let Some(link) = link {
        h.as_old_mut().linkname[..link.len()].copy_from_slice(link);
    }
    h.set_cksum();
    h
}

/// One raw entry, with a path the Builder would refuse, and the end-of-archive blocks.
fn raw_entry(path: &[u8], kind: EntryType, link: Option<&[u8]>, data: &[u8]) -> Vec<u8> {
    let mut h = raw_header(path, kind, 0o644, link);
    h.set_size(data.len() as u64);
    h.set_cksum();
    let mut out = h.as_bytes().to_vec();
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(512) * 512 + 1024, 0);
    out
}

#[test]
fn bad_archives_are_refused_at_prepare() {
    let good = layer();
    let err = prepare_err(&vec![0x55; 2048]);
    assert!(
        err.contains("bad.tar") && err.contains("reading the archive"),
        "{err}"
    );
    // Cut inside bin/busybox's contents.
    let err = prepare_err(&good[..8192]);
    assert!(
        err.contains("truncated") && err.contains("bin/busybox"),
        "{err}"
    );
    let gz = gzip(&good);
    let err = prepare_err(&gz[..gz.len() / 2]);
    assert!(err.contains("decompressing gzip"), "{err}");
    let mut gz_trailing = gz.clone();
    gz_trailing.extend_from_slice(b"garbage!");
    let err = prepare_err(&gz_trailing);
    assert!(err.contains("decompressing gzip"), "{err}");
    let mut gz_crc = gz.clone();
    let at = gz_crc.len() - 8;
    gz_crc[at] ^= 1;
    let err = prepare_err(&gz_crc);
    assert!(err.contains("decompressing gzip"), "{err}");
    let zs = zstd(&good);
    let err = prepare_err(&zs[..zs.len() / 2]);
    assert!(err.contains("decompressing zstd"), "{err}");
    let err = prepare_err(&raw_entry(b"../evil", EntryType::Regular, None, b"x"));
    assert!(err.contains("../evil") && err.contains(".."), "{err}");
    let err = prepare_err(&raw_entry(
        b"orphan",
        EntryType::Link,
        Some(b"missing"),
        b"",
    ));
    assert!(err.contains("orphan") && err.contains("missing"), "{err}");
    let mut beneath = raw_entry(b"lib", EntryType::Symlink, Some(b"usr/lib"), b"");
    beneath.truncate(512);
    beneath.extend(raw_entry(b"lib/x", EntryType::Regular, None, b"x"));
    let err = prepare_err(&beneath);
    assert!(
        err.contains("lib/x") && err.contains("not a directory"),
        "{err}"
    );
    let dir = scratch("porta-translators-bad-");
    let err = prepare_path_err(dir.path());
    assert!(err.contains("not a regular file"), "{err}");
    let err = prepare_path_err(&dir.path().join("absent.tar"));
    assert!(
        err.contains("cannot open") && err.contains("absent.tar"),
        "{err}"
    );
}

#[test]
fn gnu_sparse_file() {
    require_root!();
    let dir = scratch("porta-translators-sparse-");
    let src = dir.path().join("src");
    fs::create_dir(&src).unwrap();
    let f = fs::File::create(src.join("sparse")).unwrap();
    f.set_len(1 << 20).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, b"A", 0).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, b"Z", 700_000).unwrap();
    drop(f);
    let archive = dir.path().join("sparse.tar");
    let status = spawn(
        std::process::Command::new("tar")
            .args(["--sparse", "--format=gnu", "-cf"])
            .arg(&archive)
            .arg("-C")
            .arg(&src)
            .arg("sparse"),
    )
    .unwrap()
    .wait()
    .unwrap();
    assert!(status.success());
    let m = Mounted::new("tar", &[archive.to_str().unwrap()]);
    let data = fs::read(m.p("sparse")).unwrap();
    assert_eq!(data.len(), 1 << 20);
    assert_eq!((data[0], data[700_000]), (b'A', b'Z'));
    assert_eq!(data.iter().filter(|b| **b != 0).count(), 2);
    m.finish().unwrap();
}

#[test]
fn pax_sparse_files_are_refused() {
    let dir = scratch("porta-translators-sparse-");
    let src = dir.path().join("src");
    fs::create_dir(&src).unwrap();
    let f = fs::File::create(src.join("sparse")).unwrap();
    f.set_len(1 << 20).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, b"A", 0).unwrap();
    drop(f);
    let archive = dir.path().join("sparse.tar");
    let status = spawn(
        std::process::Command::new("tar")
            .args(["--sparse", "--format=posix", "-cf"])
            .arg(&archive)
            .arg("-C")
            .arg(&src)
            .arg("sparse"),
    )
    .unwrap()
    .wait()
    .unwrap();
    assert!(status.success());
    let err = prepare_path_err(&archive);
    assert!(err.contains("PAX-format sparse file"), "{err}");
}
