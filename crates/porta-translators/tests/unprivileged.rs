//! Built-ins served by a process running as uid 1000 with no capabilities, as the
//! supervisor runs them: the root directory of memfs is the translator's; view reads with
//! the translator's rights only; prepare refuses what the translator may not open.

mod common;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};

use common::*;

/// The child's side: serves when started by `Mounted::new_as`, else does nothing.
#[test]
fn serve_helper_child() {
    serve_helper();
}

const HELPER: &str = "serve_helper_child";

#[test]
fn memfs_root_belongs_to_the_translator() {
    require_root!();
    let m = Mounted::new_as(1000, HELPER, "memfs", &["size=1m"]);
    let root = fs::metadata(&m.mnt).unwrap();
    assert_eq!((root.uid(), root.gid()), (1000, 1000));
    assert_eq!(root.mode() & 0o7777, 0o755);
    // Root's file is root's, uid 1000's is its own; the translator's uid does not matter.
    fs::write(m.p("by-root"), b"r").unwrap();
    let md = fs::metadata(m.p("by-root")).unwrap();
    assert_eq!((md.uid(), md.gid()), (0, 0));
    let mnt = m.mnt.display().to_string();
    let out = as_user(&format!("mkdir {mnt}/by-user && echo hi > {mnt}/by-user/f"));
    assert!(out.status.success(), "{out:?}");
    let md = fs::metadata(m.p("by-user/f")).unwrap();
    assert_eq!((md.uid(), md.gid()), (1000, 1000));
    assert_eq!(fs::read(m.p("by-user/f")).unwrap(), b"hi\n");
    m.finish().unwrap();
}

#[test]
fn view_reads_with_the_translators_rights() {
    require_root!();
    let src = scratch("porta-translators-src-");
    fs::write(src.path().join("public"), b"public").unwrap();
    fs::write(src.path().join("secret"), b"secret").unwrap();
    fs::set_permissions(src.path().join("secret"), fs::Permissions::from_mode(0o600)).unwrap();
    let m = Mounted::new_as(1000, HELPER, "view", &[src.path().to_str().unwrap()]);
    assert_eq!(fs::read(m.p("public")).unwrap(), b"public");
    // Root may read anything, but the translator (uid 1000) may not open this file.
    assert_eq!(errno(fs::read(m.p("secret"))), libc::EACCES);
    assert_eq!(fs::metadata(m.p("secret")).unwrap().mode() & 0o777, 0o600);
    m.finish().unwrap();
}

#[test]
fn tar_prepare_refuses_an_archive_the_translator_cannot_read() {
    require_root!();
    let dir = scratch("porta-translators-tar-");
    let archive = dir.path().join("private.tar");
    fs::write(
        &archive,
        tar::Builder::new(Vec::new()).into_inner().unwrap(),
    )
    .unwrap();
    fs::set_permissions(&archive, fs::Permissions::from_mode(0o600)).unwrap();
    let m = Mounted::new_as(1000, HELPER, "tar", &[archive.to_str().unwrap()]);
    let err = m
        .finish()
        .expect_err("prepare opened an archive uid 1000 cannot read");
    assert!(
        err.contains("porta:tar: cannot open") && err.contains("Permission denied"),
        "{err}"
    );
}
