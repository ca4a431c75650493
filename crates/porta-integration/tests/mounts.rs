//! Mount options the engines send: `tmpcopyup` (a tmpfs starting with the image's content),
//! recursive attributes (`rro`, `rnosuid`, `rnoexec`, `rnodev`, `rnoatime`, …) reaching
//! submounts, `nosymfollow`, options refused by name, proc refused on a symlink, a
//! read-only /dev that still gets /dev/pts and the default devices, bind sources only the
//! host's root can reach in a user-namespaced container, bind sources inside the root in
//! config order, idmapped bind mounts (`idmap` with the container's mappings, and a mount's
//! own `uidMappings`/`gidMappings`), and `copy-symlink`.

use porta_integration::container::run_sh;
use porta_integration::*;
use std::ffi::CString;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// A directory under the bundles directory, removed on drop (with anything mounted below).
struct HostDir(PathBuf);

impl HostDir {
    fn new() -> HostDir {
        std::fs::create_dir_all(BUNDLES).unwrap();
        let d = tempfile::Builder::new()
            .prefix("mnt-")
            .tempdir_in(BUNDLES)
            .unwrap()
            .keep();
        HostDir(d)
    }
    fn path(&self) -> &Path {
        &self.0
    }
    fn s(&self) -> String {
        self.0.display().to_string()
    }
    /// Mounts a small tmpfs at `sub` (created), unmounted on drop.
    fn tmpfs_at(&self, sub: &str) -> PathBuf {
        let p = self.0.join(sub);
        std::fs::create_dir_all(&p).unwrap();
        let c = CString::new(p.to_str().unwrap()).unwrap();
        // SAFETY: valid C strings for the duration of the call.
        let r = unsafe {
            libc::mount(
                c"tmpfs".as_ptr(),
                c.as_ptr(),
                c"tmpfs".as_ptr(),
                0,
                c"size=1m".as_ptr().cast(),
            )
        };
        assert_eq!(r, 0, "mount tmpfs on {}", p.display());
        p
    }
}

impl Drop for HostDir {
    fn drop(&mut self) {
        unmount_below(&self.0);
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn chown(p: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::lchown(p, Some(uid), Some(gid)).unwrap();
}

fn mount_line<'a>(out: &'a str, mp: &str) -> &'a str {
    out.lines()
        .find(|l| l.split_whitespace().nth(1) == Some(mp))
        .unwrap_or_else(|| panic!("no mount on {mp} in:\n{out}"))
}

fn mount_opts(line: &str) -> Vec<&str> {
    line.split_whitespace()
        .nth(3)
        .unwrap_or("")
        .split(',')
        .collect()
}

#[test]
fn tmpcopyup_starts_with_the_image_content() {
    require_root!();
    let mut b = Bundle::new(&[]);
    let x = b.rootfs().join("x");
    std::fs::create_dir_all(x.join("sub")).unwrap();
    std::fs::write(x.join("sub/file"), "from-the-image\n").unwrap();
    // readable and writable by others: the container's root has no CAP_DAC_OVERRIDE
    std::fs::set_permissions(x.join("sub/file"), std::fs::Permissions::from_mode(0o604)).unwrap();
    chown(&x.join("sub/file"), 1234, 5678);
    std::os::unix::fs::symlink("sub/file", x.join("link")).unwrap();
    chown(&x.join("link"), 42, 43);
    std::fs::set_permissions(&x, std::fs::Permissions::from_mode(0o757)).unwrap();
    chown(&x, 7, 8);
    b.mount(
        json!({"destination": "/x", "type": "tmpfs", "source": "tmpfs",
        "options": ["rw", "rprivate", "nosuid", "nodev", "tmpcopyup"]}),
    );
    // and a plain tmpfs over another image directory stays empty
    std::fs::create_dir_all(b.rootfs().join("y")).unwrap();
    std::fs::write(b.rootfs().join("y/hidden"), "x").unwrap();
    b.mount(
        json!({"destination": "/y", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid"]}),
    );
    let rootfs = b.rootfs();
    let (o, out) = run_sh(
        "mnt-copyup",
        b,
        "stat -c 'root %a %u %g' /x; stat -c 'file %a %u %g' /x/sub/file; \
         stat -c 'link %u %g' /x/link; echo \"target $(readlink /x/link)\"; cat /x/link; \
         echo \"y [$(ls -A /y)]\"; echo new > /x/made-inside && echo written; cat /proc/mounts",
    );
    assert_eq!(o.code, 0, "{o}\n{out}");
    assert!(out.contains("root 757 "), "{out}");
    if is_porta() {
        // Porta also gives the tmpfs root the directory's owner (runc leaves it root's)
        assert!(out.contains("root 757 7 8"), "{out}");
    }
    assert!(out.contains("file 604 1234 5678"), "{out}");
    assert!(out.contains("link 42 43"), "{out}");
    assert!(out.contains("target sub/file"), "{out}");
    assert!(out.contains("from-the-image"), "{out}");
    assert!(out.contains("y []"), "{out}");
    assert!(out.contains("written"), "{out}");
    assert!(mount_line(&out, "/x").starts_with("tmpfs "), "{out}");
    // the tmpfs took the writes: the image is untouched
    assert!(!rootfs.join("x/made-inside").exists());
}

#[test]
fn notmpcopyup_cancels_tmpcopyup() {
    require_root!();
    porta_only!("notmpcopyup is crun's option; runc 1.1 hands it to the kernel as tmpfs data");
    let mut b = Bundle::new(&[]);
    std::fs::create_dir_all(b.rootfs().join("x")).unwrap();
    std::fs::write(b.rootfs().join("x/hidden"), "x").unwrap();
    b.mount(
        json!({"destination": "/x", "type": "tmpfs", "source": "tmpfs",
        "options": ["tmpcopyup", "notmpcopyup"]}),
    );
    let (o, out) = run_sh("mnt-nocopyup", b, "echo \"x [$(ls -A /x)]\"");
    assert_eq!(o.code, 0, "{o}\n{out}");
    assert!(out.contains("x []"), "{out}");
}

#[test]
fn recursive_attributes_reach_submounts() {
    require_root!();
    let h = HostDir::new();
    std::fs::write(h.path().join("top"), "t").unwrap();
    h.tmpfs_at("sub");
    let mut b = Bundle::new(&[]);
    b.mount(json!({"destination": "/r", "type": "bind", "source": h.s(),
        "options": ["rbind", "rro", "rnosuid", "rnodev", "rnoexec", "rnoatime"]}));
    b.mount(
        json!({"destination": "/plain", "type": "bind", "source": h.s(),
        "options": ["rbind", "ro"]}),
    );
    let (o, out) = run_sh(
        "mnt-rro",
        b,
        "touch /r/x 2>/dev/null && echo top-writable; touch /r/sub/x 2>/dev/null && echo sub-writable; \
         touch /plain/sub/y 2>/dev/null && echo plain-sub-writable; cat /proc/mounts",
    );
    assert_eq!(o.code, 0, "{o}\n{out}");
    assert!(!out.contains("top-writable"), "{out}");
    assert!(!out.lines().any(|l| l == "sub-writable"), "{out}");
    // plain "ro" is the top mount only, as with mount(2)
    assert!(out.contains("plain-sub-writable"), "{out}");
    for mp in ["/r", "/r/sub"] {
        let opts = mount_opts(mount_line(&out, mp));
        for want in ["ro", "nosuid", "nodev", "noexec", "noatime"] {
            assert!(opts.contains(&want), "{mp} lacks {want}: {opts:?}\n{out}");
        }
    }
    let _ = std::fs::remove_file(h.path().join("sub/y"));
}

#[test]
fn recursive_clear_undoes_an_earlier_set() {
    require_root!();
    porta_only!("runc 1.1 sets and clears both given attributes instead of the last one winning");
    let h = HostDir::new();
    h.tmpfs_at("sub");
    let mut b = Bundle::new(&[]);
    b.mount(json!({"destination": "/r", "type": "bind", "source": h.s(),
        "options": ["rbind", "rro", "rrw", "rnoexec", "rexec"]}));
    let (o, out) = run_sh(
        "mnt-rrw",
        b,
        "touch /r/sub/x && echo sub-writable; cat /proc/mounts",
    );
    assert_eq!(o.code, 0, "{o}\n{out}");
    assert!(out.contains("sub-writable"), "{out}");
    let opts = mount_opts(mount_line(&out, "/r/sub"));
    assert!(
        opts.contains(&"rw") && !opts.contains(&"noexec"),
        "{opts:?}"
    );
}

#[test]
fn nosymfollow_plain_and_recursive() {
    require_root!();
    let h = HostDir::new();
    std::fs::write(h.path().join("target"), "reached\n").unwrap();
    std::os::unix::fs::symlink("target", h.path().join("link")).unwrap();
    let sub = h.tmpfs_at("sub");
    std::fs::write(sub.join("target"), "reached\n").unwrap();
    std::os::unix::fs::symlink("target", sub.join("link")).unwrap();
    let mut b = Bundle::new(&[]);
    b.mount(json!({"destination": "/n", "type": "bind", "source": h.s(),
        "options": ["bind", "nosymfollow"]}));
    b.mount(
        json!({"destination": "/rn", "type": "bind", "source": h.s(),
        "options": ["rbind", "rnosymfollow"]}),
    );
    b.mount(json!({"destination": "/f", "type": "bind", "source": h.s(),
        "options": ["rbind"]}));
    let (o, out) = run_sh(
        "mnt-nosymfollow",
        b,
        "cat /n/link 2>/dev/null && echo n-followed; echo \"n $(readlink /n/link)\"; \
         cat /rn/sub/link 2>/dev/null && echo rn-sub-followed; cat /f/sub/link",
    );
    assert_eq!(o.code, 0, "{o}\n{out}");
    assert!(!out.contains("n-followed"), "{out}");
    assert!(out.contains("n target"), "{out}");
    assert!(!out.contains("rn-sub-followed"), "{out}");
    assert!(out.contains("reached"), "{out}");
}

#[test]
fn refused_options_name_the_mount_and_leave_nothing() {
    require_root!();
    for (opts, typ, bad) in [
        (vec!["rw", "z"], "bind", "z"),
        (
            vec!["bind", "idmap=uids=0-1000-10"],
            "bind",
            "idmap=uids=0-1000-10",
        ),
        (vec!["bind", "tmpcopyup"], "bind", "tmpcopyup"),
    ] {
        if !is_porta() && bad != "z" {
            // runc 1.1 hands these to a bind mount as data, which the kernel ignores
            continue;
        }
        let h = HostDir::new();
        let mut b = Bundle::new(&["true"]);
        let src = if typ == "tmpfs" {
            "tmpfs".to_string()
        } else {
            h.s()
        };
        b.mount(json!({"destination": "/bad", "type": typ, "source": src, "options": opts}));
        let n = b.config["mounts"].as_array().unwrap().len() - 1;
        let c = Container::new("mnt-refused", b);
        let o = c.create();
        assert_ne!(o.code, 0, "{opts:?} accepted: {o}");
        if is_porta() {
            // the log line escapes the quotes around the option
            let want = format!("mounts[{n}] (/bad): option ");
            assert!(o.stderr.contains(&want), "{opts:?}: want {want} in {o}");
            assert!(o.stderr.contains(bad), "{opts:?}: want {bad} in {o}");
        }
        // nothing left under the container's id
        let l = rt(&["list", "-q"]);
        assert!(!l.stdout.lines().any(|x| x == c.id), "{l}");
    }
}

#[test]
fn proc_on_a_symlink_is_refused() {
    require_root!();
    let b = Bundle::new(&["true"]);
    let proc_ = b.rootfs().join("proc");
    let _ = std::fs::remove_dir_all(&proc_);
    std::fs::create_dir_all(b.rootfs().join("fakeproc")).unwrap();
    std::os::unix::fs::symlink("/fakeproc", &proc_).unwrap();
    let rootfs = b.rootfs();
    let c = Container::new("mnt-procsym", b);
    let o = c.create();
    assert_ne!(o.code, 0, "proc mounted through a symlink: {o}");
    if is_porta() {
        assert!(o.stderr.contains("mounts[0] (/proc)"), "{o}");
        assert!(o.stderr.contains("symlink"), "{o}");
    }
    let l = rt(&["list", "-q"]);
    assert!(!l.stdout.lines().any(|x| x == c.id), "{l}");
    // and nothing was mounted on the symlink's target
    let mi = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mi.contains(&rootfs.join("fakeproc").display().to_string()),
        "{mi}"
    );
}

#[test]
fn readonly_dev_still_gets_pts_and_devices() {
    require_root!();
    let mut b = Bundle::new(&[]);
    let mounts = b.config["mounts"].as_array_mut().unwrap();
    for m in mounts.iter_mut() {
        if m["destination"] == "/dev" {
            m["options"].as_array_mut().unwrap().push(json!("ro"));
        }
    }
    let (o, out) = run_sh(
        "mnt-rodev",
        b,
        "test -e /dev/pts/ptmx && echo has-pts; echo x > /dev/null && echo null-ok; \
         head -c 4 /dev/zero | wc -c; touch /dev/newfile 2>/dev/null && echo dev-writable; \
         cat /proc/mounts",
    );
    assert_eq!(o.code, 0, "{o}\n{out}");
    assert!(out.contains("has-pts"), "{out}");
    assert!(out.contains("null-ok"), "{out}");
    assert!(out.lines().any(|l| l.trim() == "4"), "{out}");
    assert!(!out.contains("dev-writable"), "{out}");
    assert!(
        mount_opts(mount_line(&out, "/dev")).contains(&"ro"),
        "{out}"
    );
}

/// Host ids a user-namespaced container's 0..65536 map to.
const HOST_BASE: u32 = 310_000;

#[test]
fn bind_source_only_the_host_can_reach() {
    require_root!();
    if !kernel_has_ns("user") {
        return skip("no user namespaces");
    }
    let h = HostDir::new();
    // a 0700 directory of the host's root: the container's root (a host uid) cannot walk it
    std::fs::set_permissions(h.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let inner = h.path().join("open");
    std::fs::create_dir_all(&inner).unwrap();
    std::fs::set_permissions(&inner, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(inner.join("f"), "reached\n").unwrap();
    std::fs::set_permissions(inner.join("f"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut b = Bundle::new(&[]);
    b.user_ns(HOST_BASE, 65536);
    cmd::host(
        "chown",
        &[
            "-R",
            "-h",
            &format!("{HOST_BASE}:{HOST_BASE}"),
            b.rootfs().to_str().unwrap(),
        ],
    )
    .expect_ok();
    b.mount(
        json!({"destination": "/m", "type": "bind", "source": inner, "options": ["rbind", "ro"]}),
    );
    let (o, out) = run_sh("mnt-hostonly", b, "cat /m/f");
    assert_eq!(o.code, 0, "{o}\n{out}");
    assert!(out.contains("reached"), "{out}");
}

#[test]
fn bind_source_inside_the_root_in_config_order() {
    require_root!();
    let h = HostDir::new();
    std::fs::create_dir_all(h.path().join("sub")).unwrap();
    std::fs::write(h.path().join("sub/f"), "via-the-first-mount\n").unwrap();
    for userns in [false, true] {
        if userns && !kernel_has_ns("user") {
            continue;
        }
        if userns && !is_porta() {
            // runc 1.1 opens every bind source before making any mount (fails here);
            // runc 1.2 mounts a source inside the root in config order, as Porta does
            skip("userns half of bind_source_inside_the_root_in_config_order: runc 1.1 opens all sources first");
            continue;
        }
        let mut b = Bundle::new(&[]);
        if userns {
            b.user_ns(HOST_BASE, 65536);
            cmd::host(
                "chown",
                &[
                    "-R",
                    "-h",
                    &format!("{HOST_BASE}:{HOST_BASE}"),
                    b.rootfs().to_str().unwrap(),
                ],
            )
            .expect_ok();
        }
        // the second mount's source exists only once the first mount is made
        let second_src = b.rootfs().join("a/sub");
        b.mount(
            json!({"destination": "/a", "type": "bind", "source": h.s(), "options": ["rbind"]}),
        );
        b.mount(json!({"destination": "/b", "type": "bind", "source": second_src, "options": ["rbind"]}));
        let (o, out) = run_sh("mnt-order", b, "cat /b/f");
        assert_eq!(o.code, 0, "userns {userns}: {o}\n{out}");
        assert!(
            out.contains("via-the-first-mount"),
            "userns {userns}: {out}"
        );
    }
}

#[test]
fn idmap_with_the_containers_mappings() {
    require_root!();
    porta_only!("idmapped mounts need runc 1.2");
    if !kernel_has_ns("user") {
        return skip("no user namespaces");
    }
    let h = HostDir::new();
    std::fs::write(h.path().join("root-owned"), "r\n").unwrap();
    std::fs::write(h.path().join("owned-1000"), "u\n").unwrap();
    chown(&h.path().join("owned-1000"), 1000, 1001);
    std::fs::set_permissions(h.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let mut b = Bundle::new(&[]);
    b.user_ns(HOST_BASE, 65536);
    cmd::host(
        "chown",
        &[
            "-R",
            "-h",
            &format!("{HOST_BASE}:{HOST_BASE}"),
            b.rootfs().to_str().unwrap(),
        ],
    )
    .expect_ok();
    b.mount(
        json!({"destination": "/m", "type": "bind", "source": h.s(), "options": ["bind", "idmap"]}),
    );
    b.mount(json!({"destination": "/plain", "type": "bind", "source": h.s(), "options": ["bind"]}));
    let (o, out) = run_sh(
        "mnt-idmap",
        b,
        "stat -c 'm %u %g' /m/root-owned; stat -c 'u %u %g' /m/owned-1000; \
         stat -c 'plain %u' /plain/root-owned; echo hi > /m/made-inside && echo written",
    );
    assert_eq!(o.code, 0, "{o}\n{out}");
    // on disk 0 and 1000: the container's 0 and 1000 through its own mapping
    assert!(out.contains("m 0 0"), "{out}");
    assert!(out.contains("u 1000 1001"), "{out}");
    // without idmap the same file is the overflow id
    assert!(out.contains("plain 65534"), "{out}");
    assert!(out.contains("written"), "{out}");
    // created by the container's root: on disk as 0, not as HOST_BASE
    let md = std::fs::metadata(h.path().join("made-inside")).unwrap();
    assert_eq!((md.uid(), md.gid()), (0, 0));
}

#[test]
fn idmap_with_the_mounts_own_mappings() {
    require_root!();
    porta_only!("mount uidMappings/gidMappings need runc 1.2");
    if !kernel_has_ns("user") {
        return skip("no user namespaces");
    }
    let h = HostDir::new();
    std::fs::write(h.path().join("f"), "x\n").unwrap();
    chown(&h.path().join("f"), 1000, 1000);
    // a container without a user namespace; on-disk 1000..1009 show as 2000..2009
    let mut b = Bundle::new(&[]);
    let map = json!([{"containerID": 1000, "hostID": 2000, "size": 10}]);
    b.mount(json!({"destination": "/m", "type": "bind", "source": h.s(),
        "options": ["rbind"], "uidMappings": map, "gidMappings": map}));
    let (o, out) = run_sh("mnt-idmap-own", b, "stat -c 'f %u %g' /m/f");
    assert_eq!(o.code, 0, "{o}\n{out}");
    assert!(out.contains("f 2000 2000"), "{out}");
}

#[test]
fn idmap_without_mappings_is_refused() {
    require_root!();
    porta_only!("idmapped mounts need runc 1.2");
    let h = HostDir::new();
    let mut b = Bundle::new(&["true"]);
    b.mount(
        json!({"destination": "/m", "type": "bind", "source": h.s(), "options": ["bind", "idmap"]}),
    );
    let n = b.config["mounts"].as_array().unwrap().len() - 1;
    let c = Container::new("mnt-idmap-none", b);
    let o = c.create();
    assert_ne!(o.code, 0, "{o}");
    assert!(o.stderr.contains(&format!("mounts[{n}] (/m)")), "{o}");
    assert!(o.stderr.contains("uidMappings"), "{o}");
}

#[test]
fn copy_symlink_copies_the_link() {
    require_root!();
    porta_only!("copy-symlink is crun's option (Podman's --timezone)");
    let h = HostDir::new();
    std::fs::write(h.path().join("zone"), "tz\n").unwrap();
    std::os::unix::fs::symlink("/usr/share/zoneinfo/Etc/UTC", h.path().join("localtime")).unwrap();
    let mut b = Bundle::new(&[]);
    b.mount(json!({"destination": "/etc/localtime", "type": "bind",
        "source": h.path().join("localtime"), "options": ["bind", "ro", "copy-symlink"]}));
    let (o, out) = run_sh("mnt-copysym", b, "echo \"l $(readlink /etc/localtime)\"");
    assert_eq!(o.code, 0, "{o}\n{out}");
    assert!(out.contains("l /usr/share/zoneinfo/Etc/UTC"), "{out}");
}
