//! Idmapped root file systems: containerd (user-namespaced pods) and Podman may hand the
//! runtime a `root.path` that is an idmapped mount, so that an image stored with host ids
//! 0..65535 shows as the container's own ids without being chowned. The file server works
//! through that mount like any other process: the kernel translates the ids of what it
//! reads and creates. The container must see the image's files as its own root's, and
//! files it creates must land on disk with the unmapped (image) ids — with the file server
//! exactly as with the kernel's root.

use porta_integration::*;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};

/// Host ids the container's ids 0..65535 map to.
const HOST_BASE: u32 = 300_000;
const SIZE: u32 = 65_536;

/// A process in a user namespace mapping 0..SIZE to HOST_BASE..: its namespace is what
/// the idmapped mount takes. Killed on drop.
struct MapNs(Child);

impl MapNs {
    fn new() -> MapNs {
        let child = Command::new("unshare")
            .args(["--user", "sleep", "600"])
            .spawn()
            .expect("spawn unshare --user");
        let pid = child.id();
        // wait until it is in its own user namespace
        let mine = std::fs::read_link("/proc/self/ns/user").unwrap();
        let in_ns = wait_for(std::time::Duration::from_secs(10), || {
            let l = std::fs::read_link(format!("/proc/{pid}/ns/user")).ok()?;
            (l != mine).then_some(())
        });
        assert!(in_ns.is_some(), "unshare --user did not enter a namespace");
        let map = format!("0 {HOST_BASE} {SIZE}\n");
        std::fs::write(format!("/proc/{pid}/uid_map"), &map).expect("uid_map");
        std::fs::write(format!("/proc/{pid}/gid_map"), &map).expect("gid_map");
        MapNs(child)
    }
    fn ns_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}/ns/user", self.0.id()))
    }
}

impl Drop for MapNs {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// An idmapped bind mount of `src` on `dst`; detached on drop.
struct IdmappedMount(PathBuf);

fn cstr(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

impl IdmappedMount {
    fn new(src: &Path, dst: &Path, userns: &Path) -> IdmappedMount {
        use porta_sys::mount_api as m;
        let ns = std::fs::File::open(userns).expect("open user namespace");
        let tree = m::open_tree(
            libc::AT_FDCWD,
            &cstr(src),
            m::OPEN_TREE_CLONE | m::OPEN_TREE_CLOEXEC,
        )
        .unwrap_or_else(|e| panic!("open_tree: {e}"));
        let attr = m::MountAttr {
            attr_set: m::MOUNT_ATTR_IDMAP,
            userns_fd: std::os::fd::AsRawFd::as_raw_fd(&ns) as u64,
            ..Default::default()
        };
        m::mount_setattr(
            std::os::fd::AsRawFd::as_raw_fd(&tree),
            c"",
            libc::AT_EMPTY_PATH as u32,
            &attr,
        )
        .unwrap_or_else(|e| panic!("mount_setattr IDMAP: {e}"));
        m::move_mount_to(std::os::fd::AsFd::as_fd(&tree), &cstr(dst))
            .unwrap_or_else(|e| panic!("move_mount: {e}"));
        IdmappedMount(dst.to_path_buf())
    }
}

impl Drop for IdmappedMount {
    fn drop(&mut self) {
        let p = cstr(&self.0);
        // SAFETY: umount2(2) of the mount we made.
        unsafe { libc::umount2(p.as_ptr(), libc::MNT_DETACH) };
    }
}

/// Runs a container with a user namespace (0 -> HOST_BASE) on an idmapped root and
/// returns its output and the on-disk owner of the file it made.
fn run_on_idmapped_root(tag: &str, kernel_root: bool) -> (String, u32) {
    let mut b = Bundle::new(&["true"]);
    let src = b.path().join("rootfs-src");
    std::fs::rename(b.rootfs(), &src).unwrap();
    std::fs::create_dir(b.rootfs()).unwrap();
    b.user_ns(HOST_BASE, SIZE)
        .readonly_root(false)
        .sh("stat -c '%u %g' /bin/busybox; id -u; echo x > /made; stat -c '%u %g' /made");
    if kernel_root {
        b.annotation("run.porta.fs", "kernel");
    }
    let rootfs = b.rootfs();
    let ns = MapNs::new();
    let c = Container::new(tag, b);
    let _mount = IdmappedMount::new(&src, &rootfs, &ns.ns_path());
    let o = c.run();
    assert_eq!(o.code, 0, "{o}");
    let owner = std::fs::metadata(src.join("made")).unwrap().uid();
    (c.output(), owner)
}

fn check(tag: &str, kernel_root: bool) {
    if !is_root() || !have_command("unshare") || !kernel_has_ns("user") {
        skip("needs root, unshare and user namespaces");
        return;
    }
    let (out, owner) = run_on_idmapped_root(tag, kernel_root);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines,
        ["0 0", "0", "0 0"],
        "the image's files and the new file are the container root's: {out}"
    );
    assert_eq!(
        owner, 0,
        "the new file is stored with the image's (unmapped) id"
    );
}

#[test]
fn idmapped_root_served_by_the_file_server() {
    if !porta_only("the file server") {
        return;
    }
    check("idmap-served", false);
}

#[test]
fn idmapped_root_mounted_by_the_kernel() {
    check("idmap-kernel", true);
}
