//! The Debian root for the translator tests (`porta_integration::debian`): its programs run
//! in a container of the runtime under test, and each FUSE program serves a file system
//! through a FUSE device handed to it as `/dev/fd/N` (no mount of its own), as a translator
//! does. The second part runs on the host, chrooted into copies of the root, with a FUSE
//! mount the test makes itself.

use porta_integration::container::run_sh;
use porta_integration::debian::{self, FuseMount, Images, Served, HELLO_FUSE, HELLO_TEXT};
use porta_integration::{require_root, Bundle};
use std::collections::HashMap;
use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// How long a check may wait for a FUSE program before it is killed (a guard against a
/// program that never answers; a working one answers at once).
const LIMIT: Duration = Duration::from_secs(120);
/// The descriptor number the FUSE device gets in the program.
const FD: i32 = 3;

/// Splits the container's output of `run NAME CMD...` sections into NAME -> (status, text).
fn sections(out: &str) -> HashMap<String, (i32, String)> {
    let mut m: HashMap<String, (i32, String)> = HashMap::new();
    let mut cur: Option<String> = None;
    for l in out.lines() {
        if let Some(h) = l.strip_prefix("== ") {
            if let Some((name, rc)) = h.split_once(" rc=") {
                let rc = rc.trim().parse().unwrap_or(-1);
                m.insert(name.to_string(), (rc, String::new()));
                cur = Some(name.to_string());
                continue;
            }
        }
        if let Some(c) = &cur {
            let e = m.get_mut(c).expect("section just inserted");
            e.1.push_str(l);
            e.1.push('\n');
        }
    }
    m
}

#[test]
fn debian_programs_run_in_a_container() {
    require_root!();
    let b = Bundle::empty(&[]);
    debian::install(&b.rootfs(), false).unwrap();
    let script = r#"
run() { name=$1; shift; "$@" >/tmp/out 2>&1; rc=$?; echo "== $name rc=$rc"; cat /tmp/out; echo; }
run fuse2fs fuse2fs -V
run squashfuse squashfuse --help
run bindfs bindfs --version
run hello hello-fuse --help
run getfattr getfattr --version
echo data > /tmp/x
run setfattr setfattr -n user.porta -v translator /tmp/x
run getx getfattr --absolute-names --only-values -n user.porta /tmp/x
run shell sh -c 'ls /usr/bin/sh /usr/bin/ls /usr/bin/cat && id -un && stat -c %U /home/tester'
"#;
    let (o, out) = run_sh("debian", b, script);
    o.expect_ok();
    let s = sections(&out);
    let get = |k: &str| -> &(i32, String) {
        s.get(k)
            .unwrap_or_else(|| panic!("no section {k} in the container's output:\n{out}"))
    };
    let (rc, t) = get("fuse2fs");
    assert!(
        *rc == 0 && t.contains("fuse2fs 1.47") && t.contains("FUSE library version 3."),
        "fuse2fs -V (rc {rc}):\n{t}"
    );
    // squashfuse --help prints its usage and exits 254; 126/127 would mean it did not run.
    let (rc, t) = get("squashfuse");
    assert!(
        *rc != 126 && *rc != 127 && t.contains("squashfuse 0.5") && t.contains("Usage:"),
        "squashfuse --help (rc {rc}):\n{t}"
    );
    let (rc, t) = get("bindfs");
    assert!(
        *rc == 0 && t.contains("bindfs 1.18"),
        "bindfs --version (rc {rc}):\n{t}"
    );
    let (rc, t) = get("hello");
    assert!(
        *rc == 0 && t.contains("MOUNTPOINT may be /dev/fd/N"),
        "hello-fuse --help (rc {rc}):\n{t}"
    );
    let (rc, t) = get("getfattr");
    assert!(
        *rc == 0 && t.contains("getfattr 2.5"),
        "getfattr --version (rc {rc}):\n{t}"
    );
    let (rc, t) = get("setfattr");
    assert!(*rc == 0, "setfattr user.porta (rc {rc}):\n{t}");
    let (rc, t) = get("getx");
    assert!(
        *rc == 0 && t.trim_end() == "translator",
        "getfattr user.porta (rc {rc}): {t:?}"
    );
    let (rc, t) = get("shell");
    assert!(
        *rc == 0 && t.contains("/usr/bin/cat") && t.contains("root\nroot"),
        "busybox applets and users (rc {rc}):\n{t}"
    );
}

/// A scratch bundle directory (so that the leak check sees anything left mounted) with a
/// copy of the Debian root in `rootfs`, device nodes, and a mount point `mnt`.
struct Scratch {
    bundle: Bundle,
}

impl Scratch {
    fn new() -> Scratch {
        let bundle = Bundle::empty(&[]);
        // uid 1000 callers reach the mount point through the bundle directory.
        fs::set_permissions(bundle.path(), fs::Permissions::from_mode(0o755)).unwrap();
        debian::install(&bundle.rootfs(), true).unwrap();
        fs::create_dir(bundle.file("mnt")).unwrap();
        Scratch { bundle }
    }
    fn root(&self) -> PathBuf {
        self.bundle.rootfs()
    }
    fn mnt(&self) -> PathBuf {
        self.bundle.file("mnt")
    }
    /// Makes the images in the chroot's /images.
    fn images(&self) -> Images {
        let d = self.root().join("images");
        fs::create_dir(&d).unwrap();
        debian::images(&d)
    }
    /// Mounts FUSE on `mnt` and starts `argv` chrooted into the copy (as `user`, a
    /// chroot --userspec, when given) with the device as /dev/fd/3.
    fn serve(&self, user: Option<&str>, argv: &[&str]) -> (FuseMount, Served) {
        let mut m = FuseMount::new(&self.mnt()).unwrap();
        let mut c = Command::new("chroot");
        if let Some(u) = user {
            c.arg(format!("--userspec={u}"));
        }
        c.arg(self.root()).args(argv);
        let log = self
            .bundle
            .file(format!("log-{}", std::process::id()).as_str());
        let s = m.serve(c, FD, &log).unwrap();
        (m, s)
    }
}

/// Unmounts, then checks the program exited by itself once its file system was gone,
/// returning its output.
fn finish(mut m: FuseMount, mut s: Served) -> String {
    m.unmount().unwrap();
    let st = s.wait(LIMIT).unwrap();
    let log = s.log();
    assert!(
        st.success(),
        "the program exited {st} after the unmount; output:\n{log}"
    );
    log
}

fn rel(img_root: &Path, p: &str) -> PathBuf {
    img_root.join(p)
}

/// Checks every file, directory and link of `img` through `at`.
fn check_tree(at: &Path, img: &Images) {
    for (p, data) in &img.files {
        let got = fs::read(rel(at, p)).unwrap_or_else(|e| panic!("reading {p}: {e}"));
        assert!(
            got == *data,
            "{p}: {} bytes differ from the {} expected",
            got.len(),
            data.len()
        );
    }
    for d in &img.dirs {
        assert!(rel(at, d).is_dir(), "{d} is not a directory");
    }
    for (p, t) in &img.symlinks {
        let got = fs::read_link(rel(at, p)).unwrap_or_else(|e| panic!("readlink {p}: {e}"));
        assert_eq!(got, Path::new(t), "{p}");
    }
    let mut names: Vec<String> = fs::read_dir(at)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    for want in ["dir", "empty", "hello.txt", "link"] {
        assert!(
            names.iter().any(|n| n == want),
            "{want} missing from {names:?}"
        );
    }
}

#[test]
fn hello_fuse_serves_through_dev_fd() {
    require_root!();
    let sc = Scratch::new();
    let at = sc.mnt();
    // As root and as uid 1000: neither needs a privilege.
    for user in [None, Some("1000:1000")] {
        let (m, mut s) = sc.serve(user, &[HELLO_FUSE, "-f", "/dev/fd/3"]);
        s.check(LIMIT, || {
            assert_eq!(fs::read_to_string(at.join("hello")).unwrap(), HELLO_TEXT);
            let mut names: Vec<String> = fs::read_dir(&at)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            assert_eq!(names, ["hello", "note"]);
            let md = fs::metadata(at.join("hello")).unwrap();
            assert_eq!(md.permissions().mode() & 0o777, 0o444);
            let uid = if user.is_some() { 1000 } else { 0 };
            assert_eq!(md.uid(), uid, "hello-fuse serves its files as its own uid");
            assert_eq!(md.len(), HELLO_TEXT.len() as u64);
            // hello is read-only, note takes writes, truncation and appends.
            let e = fs::OpenOptions::new()
                .write(true)
                .open(at.join("hello"))
                .unwrap_err();
            assert_eq!(e.kind(), ErrorKind::PermissionDenied, "{e}");
            fs::write(at.join("note"), b"first line\n").unwrap();
            {
                use std::io::Write;
                let mut f = fs::OpenOptions::new()
                    .append(true)
                    .open(at.join("note"))
                    .unwrap();
                f.write_all(b"second line\n").unwrap();
            }
            assert_eq!(
                fs::read_to_string(at.join("note")).unwrap(),
                "first line\nsecond line\n"
            );
            fs::write(at.join("note"), b"short").unwrap();
            assert_eq!(fs::read_to_string(at.join("note")).unwrap(), "short");
            let e = fs::write(at.join("new"), b"x").unwrap_err();
            assert!(e.raw_os_error().is_some(), "creating a file must fail: {e}");
        });
        finish(m, s);
    }
}

#[test]
fn fuse2fs_serves_an_ext4_image_through_dev_fd() {
    require_root!();
    let sc = Scratch::new();
    let img = sc.images();
    let at = sc.mnt();

    // As root, read-write, no options: the tree is there, a write lands in the image.
    let (m, mut s) = sc.serve(
        None,
        &["/usr/bin/fuse2fs", "/images/ext4.img", "/dev/fd/3", "-f"],
    );
    s.check(LIMIT, || {
        check_tree(&at, &img);
        fs::write(at.join("written"), b"through fuse2fs\n").unwrap();
        fs::create_dir(at.join("newdir")).unwrap();
    });
    let log = finish(m, s);
    let o = porta_integration::cmd::host(
        "debugfs",
        &["-R", "cat /written", img.ext4.to_str().unwrap()],
    );
    assert_eq!(
        o.stdout, "through fuse2fs\n",
        "the write is in the image: {o}\nfuse2fs:\n{log}"
    );

    // As uid 1000 (the image is its own), without options: it serves read-write and checks
    // each caller's uid itself: root may write anywhere, uid 1000 not into root's
    // directories. With -o fakeroot every caller passes as root.
    let chroot_img = sc.root().join("images/ext4.img");
    std::os::unix::fs::chown(&chroot_img, Some(1000), Some(1000)).unwrap();
    for fakeroot in [false, true] {
        let mut argv = vec!["/usr/bin/fuse2fs", "/images/ext4.img", "/dev/fd/3", "-f"];
        if fakeroot {
            argv.extend(["-o", "fakeroot"]);
        }
        let (m, mut s) = sc.serve(Some("1000:1000"), &argv);
        let name = if fakeroot {
            "by-1000-fakeroot"
        } else {
            "by-1000"
        };
        s.check(LIMIT, || {
            check_tree(&at, &img);
            fs::write(at.join(format!("{name}-root")), b"root\n").unwrap();
            let o = porta_integration::cmd::host(
                "setpriv",
                &[
                    "--reuid=1000",
                    "--regid=1000",
                    "--clear-groups",
                    "sh",
                    "-c",
                    &format!("echo user > {}/{name}", at.display()),
                ],
            );
            if fakeroot {
                o.expect_ok();
                let md = fs::metadata(at.join(name)).unwrap();
                assert_eq!(
                    (md.uid(), md.gid()),
                    (1000, 1000),
                    "a new file gets the caller's ids"
                );
            } else {
                assert!(
                    !o.ok() && o.stderr.contains("Permission denied"),
                    "uid 1000 must not write into root's directory without fakeroot: {o}"
                );
            }
        });
        finish(m, s);
    }

    // An image the program may not write: it must be told -o ro.
    fs::set_permissions(&chroot_img, fs::Permissions::from_mode(0o444)).unwrap();
    std::os::unix::fs::chown(&chroot_img, Some(0), Some(0)).unwrap();
    let (m, mut s) = sc.serve(
        Some("1000:1000"),
        &["/usr/bin/fuse2fs", "/images/ext4.img", "/dev/fd/3", "-f"],
    );
    let e = s.check(LIMIT, || fs::read_dir(&at).map(|_| ()).unwrap_err());
    assert_eq!(e.raw_os_error(), Some(libc::ENOTCONN), "{e}");
    let st = s.wait(LIMIT).unwrap();
    assert!(
        !st.success(),
        "fuse2fs read-write on an image it cannot write: {}",
        s.log()
    );
    drop(m);
    let (m, mut s) = sc.serve(
        Some("1000:1000"),
        &[
            "/usr/bin/fuse2fs",
            "/images/ext4.img",
            "/dev/fd/3",
            "-f",
            "-o",
            "ro",
        ],
    );
    s.check(LIMIT, || {
        check_tree(&at, &img);
        let e = fs::write(at.join("nope"), b"x").unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{e}");
    });
    finish(m, s);
}

#[test]
fn fuse2fs_on_corrupted_ext4_images() {
    require_root!();
    let sc = Scratch::new();
    let img = sc.images();
    let at = sc.mnt();
    let in_chroot = |p: &Path| format!("/images/{}", p.file_name().unwrap().to_string_lossy());

    // A damaged inode: fuse2fs starts and serves the rest, the damaged file gives EIO.
    let bad = in_chroot(&img.ext4_bad_inode);
    let (m, mut s) = sc.serve(
        None,
        &["/usr/bin/fuse2fs", &bad, "/dev/fd/3", "-f", "-o", "ro"],
    );
    s.check(LIMIT, || {
        assert_eq!(fs::read(at.join("hello.txt")).unwrap(), img.files[0].1);
        let e = fs::read(at.join(&img.damaged))
            .map(|d| d.len())
            .unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EIO), "{}: {e}", img.damaged);
        // The error does not spread: the healthy files still read.
        assert_eq!(fs::read(at.join("dir/nested.txt")).unwrap(), img.files[1].1);
        assert_eq!(fs::read(at.join("hello.txt")).unwrap(), img.files[0].1);
    });
    let log = finish(m, s);
    assert!(
        log.contains("Inode checksum does not match"),
        "fuse2fs's output:\n{log}"
    );

    // Zeroed group descriptors: fuse2fs starts, every access (even the root) gives EIO.
    let bad = in_chroot(&img.ext4_bad_groups);
    let (m, mut s) = sc.serve(
        None,
        &["/usr/bin/fuse2fs", &bad, "/dev/fd/3", "-f", "-o", "ro"],
    );
    s.check(LIMIT, || {
        let e = fs::read_dir(&at).map(|_| ()).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
        let e = fs::read(at.join("hello.txt")).map(|d| d.len()).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
    });
    finish(m, s);

    // A bad superblock magic: fuse2fs refuses to start (exit 2), the mount is dead.
    let bad = in_chroot(&img.ext4_bad_super);
    let (m, mut s) = sc.serve(None, &["/usr/bin/fuse2fs", &bad, "/dev/fd/3", "-f"]);
    let st = s.wait(LIMIT).unwrap();
    let log = s.log();
    assert_eq!(
        st.code(),
        Some(2),
        "fuse2fs on a bad superblock; output:\n{log}"
    );
    assert!(log.contains("Bad magic number in super-block"), "{log}");
    let e = fs::read_dir(&at).map(|_| ()).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ENOTCONN), "{e}");
    drop(m);
}

#[test]
fn squashfuse_serves_a_squashfs_image_through_dev_fd() {
    require_root!();
    let sc = Scratch::new();
    let img = sc.images();
    let at = sc.mnt();
    for user in [None, Some("1000:1000")] {
        let argv = [
            "/usr/bin/squashfuse",
            "-f",
            "/images/squash.img",
            "/dev/fd/3",
        ];
        let (m, mut s) = sc.serve(user, &argv);
        s.check(LIMIT, || {
            check_tree(&at, &img);
            let e = fs::write(at.join("nope"), b"x").unwrap_err();
            assert!(e.raw_os_error().is_some(), "squashfs is read-only: {e}");
        });
        finish(m, s);
    }
}

#[test]
fn bindfs_serves_a_directory_through_dev_fd() {
    require_root!();
    let sc = Scratch::new();
    let img = sc.images();
    let at = sc.mnt();
    let argv = ["/usr/bin/bindfs", "-f", "/images/tree", "/dev/fd/3"];

    // bindfs 1.18 calls realpath(3) on its mount point before it hands the string to
    // libfuse: where /dev/fd/3 does not resolve it refuses to start.
    let (m, mut s) = sc.serve(None, &argv);
    let st = s.wait(LIMIT).unwrap();
    let log = s.log();
    assert!(
        !st.success() && log.contains("Failed to resolve mount point"),
        "bindfs without a resolvable /dev/fd/3 exited {st}:\n{log}"
    );
    drop(m);

    // With a path /dev/fd/3 that resolves (a directory here), it serves through fd 3.
    fs::create_dir_all(sc.root().join("dev/fd/3")).unwrap();
    let (m, mut s) = sc.serve(None, &argv);
    s.check(LIMIT, || {
        check_tree(&at, &img);
        fs::write(at.join("through-bindfs"), b"bound\n").unwrap();
    });
    finish(m, s);
    assert_eq!(
        fs::read(sc.root().join("images/tree/through-bindfs")).unwrap(),
        b"bound\n",
        "the write reached the source directory"
    );

    // As uid 1000 it serves too (writes then follow the source's permissions).
    let (m, mut s) = sc.serve(Some("1000:1000"), &argv);
    s.check(LIMIT, || check_tree(&at, &img));
    finish(m, s);
}
