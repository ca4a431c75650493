//! Which calls the root file system set-up makes for a given config, checked against the
//! recording kernel on a scratch directory: no root needed.

use std::fs;
use std::path::Path;

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags};
use nix::sys::stat::SFlag;
use serde_json::json;

use super::*;
use crate::kernel::recorder::{Call, Recorder};
use crate::mounts::MountOptions;

/// A scratch root (`<tmp>/root`) with a bind source beside it (`<tmp>/src`).
struct Scratch {
    tmp: tempfile::TempDir,
}

impl Scratch {
    fn new() -> Scratch {
        let tmp = tempfile::tempdir().unwrap();
        fs::create_dir(tmp.path().join("root")).unwrap();
        fs::create_dir(tmp.path().join("src")).unwrap();
        Scratch { tmp }
    }
    fn root(&self) -> std::path::PathBuf {
        self.tmp.path().join("root").canonicalize().unwrap()
    }
    fn src(&self) -> String {
        self.tmp
            .path()
            .join("src")
            .canonicalize()
            .unwrap()
            .display()
            .to_string()
    }
}

fn spec(v: serde_json::Value) -> Spec {
    let mut v = v;
    v["ociVersion"] = json!("1.0.2");
    serde_json::from_value(v).unwrap()
}

/// Runs `prepare` for `spec` on the scratch root; returns the recorder and the result.
fn prepare_with(
    s: &Scratch,
    spec: &Spec,
    new_userns: bool,
    setup: impl FnOnce(&Recorder),
) -> (Recorder, Result<()>) {
    let root = s.root();
    let k = Recorder::new(&root);
    setup(&k);
    let mut plan = RootfsPlan {
        spec,
        rootfs: &root,
        new_cgroupns: false,
        new_userns,
        mount_label: None,
        served_root: None,
        sources: Default::default(),
        own_mount_ns: true,
    };
    let r = prepare(&k, &mut plan);
    (k, r)
}

fn mount_on(calls: &[Call], target: &str) -> Vec<Call> {
    calls
        .iter()
        .filter(|c| matches!(c, Call::Mount { target: t, .. } if t == target))
        .cloned()
        .collect()
}

fn flags_of(c: &Call) -> MsFlags {
    match c {
        Call::Mount { flags, .. } => *flags,
        c => panic!("not a mount: {c:?}"),
    }
}

#[test]
fn root_is_made_a_slave_then_bound_onto_itself() {
    let s = Scratch::new();
    let (k, r) = prepare_with(&s, &spec(json!({"mounts": []})), false, |_| {});
    r.unwrap();
    let calls = k.calls();
    assert_eq!(
        calls[0],
        Call::Mount {
            source: None,
            target: "/".into(),
            fstype: None,
            flags: MsFlags::MS_SLAVE | MsFlags::MS_REC,
            data: None
        }
    );
    // The root bind: source and target are the root itself.
    assert_eq!(
        calls[1],
        Call::Mount {
            source: Some("/".into()),
            target: "/".into(),
            fstype: None,
            flags: MsFlags::MS_BIND | MsFlags::MS_REC,
            data: None
        }
    );
}

#[test]
fn private_root_propagation_replaces_the_slave_mount() {
    let s = Scratch::new();
    let sp = spec(json!({"mounts": [], "linux": {"rootfsPropagation": "private"}}));
    let (k, r) = prepare_with(&s, &sp, false, |_| {});
    r.unwrap();
    assert_eq!(
        flags_of(&k.calls()[0]),
        MsFlags::MS_PRIVATE | MsFlags::MS_REC
    );
}

#[test]
fn served_root_is_moved_onto_the_root_path() {
    let s = Scratch::new();
    let root = s.root();
    let sp = spec(json!({"mounts": []}));
    let k = Recorder::new(&root);
    let fd: OwnedFd = fs::File::open(s.tmp.path()).unwrap().into();
    let mut plan = RootfsPlan {
        spec: &sp,
        rootfs: &root,
        new_cgroupns: false,
        new_userns: false,
        mount_label: None,
        served_root: Some(fd),
        sources: Default::default(),
        own_mount_ns: true,
    };
    prepare(&k, &mut plan).unwrap();
    let calls = k.calls();
    assert_eq!(calls[1], Call::MoveMount("/".into()));
    // No kernel bind of the root besides.
    assert!(mount_on(&calls, "/")
        .iter()
        .all(|c| !flags_of(c).contains(MsFlags::MS_BIND)));

    // Without a mount namespace of its own a served root is refused, before any mount.
    let k = Recorder::new(&root);
    let fd: OwnedFd = fs::File::open(s.tmp.path()).unwrap().into();
    let mut plan = RootfsPlan {
        spec: &sp,
        rootfs: &root,
        new_cgroupns: false,
        new_userns: false,
        mount_label: None,
        served_root: Some(fd),
        sources: Default::default(),
        own_mount_ns: false,
    };
    let e = prepare(&k, &mut plan).unwrap_err();
    assert!(e.to_string().contains("own mount namespace"), "{e}");
    assert!(k.calls().is_empty(), "{:?}", k.calls());
}

#[test]
fn rbind_with_rro_binds_recursively_then_sets_readonly_with_at_recursive() {
    let s = Scratch::new();
    let sp = spec(json!({"mounts": [
        {"destination": "/data", "type": "bind", "source": s.src(), "options": ["rbind", "rro"]}
    ]}));
    let (k, r) = prepare_with(&s, &sp, false, |_| {});
    r.unwrap();
    let calls = k.calls();
    let bind = calls
        .iter()
        .position(|c| {
            *c == Call::Mount {
                source: Some(s.src()),
                target: "/data".into(),
                fstype: None,
                flags: MsFlags::MS_BIND | MsFlags::MS_REC,
                data: None,
            }
        })
        .unwrap_or_else(|| panic!("no recursive bind on /data: {calls:?}"));
    assert_eq!(
        calls[bind + 1],
        Call::MountSetattr {
            path: "/data".into(),
            recursive: true,
            set: porta_sys::mount_api::MOUNT_ATTR_RDONLY,
            clr: 0
        }
    );
    // rro is not a plain read-only remount of the top mount only.
    assert!(mount_on(&calls, "/data")
        .iter()
        .all(|c| !flags_of(c).contains(MsFlags::MS_RDONLY)));
    // The destination was made inside the root.
    assert!(s.root().join("data").is_dir());
}

#[test]
fn bind_with_ro_and_nosuid_is_remounted_with_them() {
    let s = Scratch::new();
    let sp = spec(json!({"mounts": [
        {"destination": "/data", "type": "bind", "source": s.src(), "options": ["bind", "ro", "nosuid"]}
    ]}));
    let (k, r) = prepare_with(&s, &sp, false, |_| {});
    r.unwrap();
    let on = mount_on(&k.calls(), "/data");
    assert_eq!(on.len(), 2, "{on:?}");
    assert_eq!(flags_of(&on[0]), MsFlags::MS_BIND);
    let re = flags_of(&on[1]);
    assert!(
        re.contains(
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_NOSUID
        ),
        "{re:?}"
    );
}

#[test]
fn propagation_option_is_set_after_the_mount() {
    let s = Scratch::new();
    let sp = spec(json!({"mounts": [
        {"destination": "/data", "type": "bind", "source": s.src(), "options": ["rbind", "rshared"]}
    ]}));
    let (k, r) = prepare_with(&s, &sp, false, |_| {});
    r.unwrap();
    let on = mount_on(&k.calls(), "/data");
    assert_eq!(
        on.last(),
        Some(&Call::Mount {
            source: None,
            target: "/data".into(),
            fstype: None,
            flags: MsFlags::MS_SHARED | MsFlags::MS_REC,
            data: None
        }),
        "{on:?}"
    );
}

#[test]
fn read_only_tmpfs_is_mounted_writable_and_made_read_only_last() {
    let s = Scratch::new();
    let sp = spec(json!({"mounts": [
        {"destination": "/scratch", "type": "tmpfs", "source": "tmpfs", "options": ["ro", "nosuid", "size=1m"]}
    ]}));
    let (k, r) = prepare_with(&s, &sp, false, |_| {});
    r.unwrap();
    let calls = k.calls();
    let on = mount_on(&calls, "/scratch");
    assert_eq!(on.len(), 2, "{on:?}");
    match &on[0] {
        Call::Mount {
            fstype,
            flags,
            data,
            ..
        } => {
            assert_eq!(fstype.as_deref(), Some("tmpfs"));
            assert!(!flags.contains(MsFlags::MS_RDONLY), "{flags:?}");
            assert!(flags.contains(MsFlags::MS_NOSUID), "{flags:?}");
            assert!(
                data.as_deref().unwrap_or("").contains("size=1m"),
                "{data:?}"
            );
        }
        c => panic!("{c:?}"),
    }
    assert!(flags_of(&on[1]).contains(MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY));
    // The read-only remount comes after /dev is made (last of all).
    let last_mknod = calls
        .iter()
        .rposition(|c| matches!(c, Call::Mknod { .. }))
        .unwrap();
    let remount = calls.iter().position(|c| *c == on[1]).unwrap();
    assert!(remount > last_mknod, "{calls:?}");
}

#[test]
fn mount_errors_name_the_mount_and_its_destination() {
    let s = Scratch::new();
    let sp = spec(json!({"mounts": [
        {"destination": "/proc", "type": "proc", "source": "proc"},
        {"destination": "/data", "type": "bind", "source": s.src(), "options": ["rbind"]}
    ]}));
    let (k, r) = prepare_with(&s, &sp, false, |k| {
        k.fail(
            |c| matches!(c, Call::Mount { target, .. } if target == "/data"),
            Errno::EACCES,
        )
    });
    let e = r.unwrap_err().to_string();
    assert!(e.contains("mounts[1] (/data)"), "{e}");
    assert!(e.contains(&s.src()), "{e}");
    // The first mount was made; nothing after the failing one.
    assert_eq!(mount_on(&k.calls(), "/proc").len(), 1);
    assert!(!k.calls().iter().any(|c| matches!(c, Call::Mknod { .. })));
}

#[test]
fn devices_are_made_with_mknod_and_owned_as_configured() {
    let s = Scratch::new();
    let sp = spec(json!({"mounts": [], "linux": {"devices": [
        {"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229, "fileMode": 0o600, "uid": 1000, "gid": 1001},
        {"path": "/dev/null", "type": "c", "major": 1, "minor": 3, "fileMode": 0o640}
    ]}}));
    let (k, r) = prepare_with(&s, &sp, false, |_| {});
    r.unwrap();
    let calls = k.calls();
    let mknods: Vec<_> = calls
        .iter()
        .filter_map(|c| match c {
            Call::Mknod {
                path,
                kind,
                perm,
                major,
                minor,
            } => Some((path.clone(), *kind, *perm, *major, *minor)),
            _ => None,
        })
        .collect();
    for d in [
        "/dev/zero",
        "/dev/full",
        "/dev/random",
        "/dev/urandom",
        "/dev/tty",
    ] {
        assert!(mknods.iter().any(|m| m.0 == d), "{d} not made: {mknods:?}");
    }
    assert!(mknods.contains(&("/dev/fuse".into(), SFlag::S_IFCHR, 0o600, 10, 229)));
    // A configured device replaces the default of the same path.
    let nulls: Vec<_> = mknods.iter().filter(|m| m.0 == "/dev/null").collect();
    assert_eq!(nulls, [&("/dev/null".into(), SFlag::S_IFCHR, 0o640, 1, 3)]);
    assert!(calls.contains(&Call::Chown("/dev/fuse".into(), 1000, 1001)));
    assert!(calls.contains(&Call::Chmod("/dev/fuse".into(), 0o600)));
    // No device is bound from the host.
    assert!(mount_on(&calls, "/dev/fuse").is_empty());
}

#[test]
fn devices_are_bound_from_the_host_in_a_user_namespace() {
    let s = Scratch::new();
    let sp = spec(json!({"mounts": []}));
    let (k, r) = prepare_with(&s, &sp, true, |_| {});
    r.unwrap();
    let calls = k.calls();
    assert!(!calls.iter().any(|c| matches!(c, Call::Mknod { .. })));
    assert_eq!(
        mount_on(&calls, "/dev/null"),
        [Call::Mount {
            source: Some("/dev/null".into()),
            target: "/dev/null".into(),
            fstype: None,
            flags: MsFlags::MS_BIND,
            data: None
        }]
    );
    // The bind target is an empty file made in the root.
    assert!(s.root().join("dev/null").is_file());
}

#[test]
fn mknod_refused_falls_back_to_a_bind_and_other_errors_name_the_device() {
    let s = Scratch::new();
    let sp = spec(json!({"mounts": []}));
    let (k, r) = prepare_with(&s, &sp, false, |k| {
        k.fail(|c| matches!(c, Call::Mknod { .. }), Errno::EPERM)
    });
    r.unwrap();
    assert_eq!(mount_on(&k.calls(), "/dev/zero").len(), 1);

    let s = Scratch::new();
    let (_, r) = prepare_with(&s, &sp, false, |k| {
        k.fail(
            |c| matches!(c, Call::Mknod { path, .. } if path == "/dev/zero"),
            Errno::EIO,
        )
    });
    let e = r.unwrap_err().to_string();
    assert!(e.contains("mknod /dev/zero"), "{e}");
}

#[test]
fn bad_devices_are_refused_with_the_field_named() {
    let s = Scratch::new();
    let sp = spec(json!({"mounts": [], "linux": {"devices": [
        {"path": "/dev/all", "type": "a", "major": 1, "minor": 1}
    ]}}));
    let (k, r) = prepare_with(&s, &sp, false, |_| {});
    let e = r.unwrap_err().to_string();
    assert!(e.contains("linux.devices[0].type"), "{e}");
    assert!(!k.calls().iter().any(|c| matches!(c, Call::Mknod { .. })));

    let sp = spec(json!({"mounts": [], "linux": {"devices": [
        {"path": "/etc/evil", "type": "c", "major": 1, "minor": 3}
    ]}}));
    let (_, r) = prepare_with(&s, &sp, false, |_| {});
    let e = r.unwrap_err().to_string();
    assert!(e.contains("linux.devices[0].path"), "{e}");
    assert!(e.contains("/etc/evil"), "{e}");
}

#[test]
fn a_bound_dev_gets_no_devices_or_symlinks() {
    let s = Scratch::new();
    let sp = spec(json!({"mounts": [
        {"destination": "/dev", "type": "bind", "source": s.src(), "options": ["rbind"]}
    ]}));
    let (k, r) = prepare_with(&s, &sp, false, |_| {});
    r.unwrap();
    let calls = k.calls();
    assert!(!calls
        .iter()
        .any(|c| matches!(c, Call::Mknod { .. } | Call::Symlink { .. })));
}

#[test]
fn dev_gets_the_standard_symlinks() {
    let s = Scratch::new();
    let (k, r) = prepare_with(&s, &spec(json!({"mounts": []})), false, |_| {});
    r.unwrap();
    let calls = k.calls();
    for (path, target) in [
        ("/dev/fd", "/proc/self/fd"),
        ("/dev/stdin", "/proc/self/fd/0"),
        ("/dev/stdout", "/proc/self/fd/1"),
        ("/dev/stderr", "/proc/self/fd/2"),
    ] {
        assert!(
            calls.contains(&Call::Symlink {
                path: path.into(),
                target: target.into()
            }),
            "{path}: {calls:?}"
        );
    }
}

#[test]
fn pivot_root_sequence_detaches_the_old_root() {
    let s = Scratch::new();
    let root = s.root();
    let k = Recorder::new(&root);
    enter(&k, &root, false, true).unwrap();
    let calls = k.calls();
    assert_eq!(calls[0], Call::Chdir("/".into()));
    assert_eq!(calls[1], Call::PivotRoot(".".into(), ".".into()));
    // fchdir to the old root ("/" of this process, outside the scratch root).
    assert!(
        matches!(&calls[2], Call::Fchdir(p) if p == "/"),
        "{calls:?}"
    );
    assert_eq!(
        flags_of(&calls[3]),
        MsFlags::MS_SLAVE | MsFlags::MS_REC,
        "the old root is made a slave before it is detached"
    );
    assert_eq!(calls[4], Call::Umount2(".".into(), MntFlags::MNT_DETACH));
    assert_eq!(calls[5], Call::Fchdir("/".into()));
    assert_eq!(calls[6], Call::Chdir("/".into()));
    assert_eq!(calls.len(), 7);
}

#[test]
fn no_pivot_moves_the_root_and_chroots_and_no_mount_namespace_only_chroots() {
    let s = Scratch::new();
    let root = s.root();
    let k = Recorder::new(&root);
    enter(&k, &root, true, true).unwrap();
    let calls = k.calls();
    assert_eq!(
        calls[1],
        Call::Mount {
            source: Some("/".into()),
            target: "/".into(),
            fstype: None,
            flags: MsFlags::MS_MOVE,
            data: None
        }
    );
    assert_eq!(calls[2], Call::Chroot(".".into()));
    assert!(!calls.iter().any(|c| matches!(c, Call::PivotRoot(..))));

    let k = Recorder::new(&root);
    enter(&k, &root, false, false).unwrap();
    assert_eq!(
        k.calls(),
        [
            Call::Chdir("/".into()),
            Call::Chroot(".".into()),
            Call::Chdir("/".into())
        ]
    );

    // A refused pivot_root names the root.
    let k = Recorder::new(&root);
    k.fail(|c| matches!(c, Call::PivotRoot(..)), Errno::EINVAL);
    let e = enter(&k, &root, false, true).unwrap_err().to_string();
    assert!(
        e.contains(&format!("pivot_root into {}", root.display())),
        "{e}"
    );
}

#[test]
fn masked_and_readonly_paths_and_a_readonly_root() {
    let s = Scratch::new();
    let d = s.tmp.path().join("masked-dir");
    let f = s.tmp.path().join("masked-file");
    let ro = s.tmp.path().join("ro-dir");
    fs::create_dir(&d).unwrap();
    fs::write(&f, "").unwrap();
    fs::create_dir(&ro).unwrap();
    let gone = s.tmp.path().join("not-there");
    let p = |p: &Path| p.display().to_string();
    let sp = spec(json!({
        "root": {"path": "rootfs", "readonly": true},
        "linux": {
            "maskedPaths": [p(&d), p(&f), p(&gone)],
            "readonlyPaths": [p(&ro), p(&gone)],
            "rootfsPropagation": "rslave"
        }
    }));
    let k = Recorder::new(&s.root());
    // The kernel's answer to a bind of a missing path.
    let missing = p(&gone);
    k.fail(
        move |c| matches!(c, Call::Mount { source: Some(s), .. } if *s == missing),
        Errno::ENOENT,
    );
    finish(&k, &sp).unwrap();
    let calls = k.calls();
    assert_eq!(
        mount_on(&calls, &p(&d)),
        [Call::Mount {
            source: Some("tmpfs".into()),
            target: p(&d),
            fstype: Some("tmpfs".into()),
            flags: MsFlags::MS_RDONLY,
            data: Some("size=0".into())
        }]
    );
    assert_eq!(
        mount_on(&calls, &p(&f)),
        [Call::Mount {
            source: Some("/dev/null".into()),
            target: p(&f),
            fstype: None,
            flags: MsFlags::MS_BIND,
            data: None
        }]
    );
    let ro_mounts = mount_on(&calls, &p(&ro));
    assert_eq!(ro_mounts.len(), 2, "{ro_mounts:?}");
    assert_eq!(flags_of(&ro_mounts[0]), MsFlags::MS_BIND | MsFlags::MS_REC);
    assert!(flags_of(&ro_mounts[1]).contains(
        MsFlags::MS_BIND
            | MsFlags::MS_REMOUNT
            | MsFlags::MS_RDONLY
            | MsFlags::MS_NOSUID
            | MsFlags::MS_NODEV
            | MsFlags::MS_NOEXEC
    ));
    // A missing masked path is skipped; a missing read-only one is tried and let go.
    let gone_mounts = mount_on(&calls, &p(&gone));
    assert_eq!(gone_mounts.len(), 1, "{gone_mounts:?}");
    assert_eq!(
        flags_of(&gone_mounts[0]),
        MsFlags::MS_BIND | MsFlags::MS_REC
    );
    let root = mount_on(&calls, "/");
    assert!(flags_of(&root[0]).contains(MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY));
    assert_eq!(flags_of(&root[1]), MsFlags::MS_SLAVE | MsFlags::MS_REC);
}

#[test]
fn a_failed_mask_names_the_path_and_bad_sysctls_are_refused() {
    let s = Scratch::new();
    let d = s.tmp.path().join("masked-dir");
    fs::create_dir(&d).unwrap();
    let sp = spec(json!({"linux": {"maskedPaths": [d.display().to_string()]}}));
    let k = Recorder::new(&s.root());
    k.fail(|c| matches!(c, Call::Mount { .. }), Errno::EACCES);
    let e = finish(&k, &sp).unwrap_err().to_string();
    assert!(
        e.contains(&format!("linux.maskedPaths: mask {}", d.display())),
        "{e}"
    );

    let sp = spec(json!({"linux": {"sysctl": {"../../etc/passwd": "x"}}}));
    let k = Recorder::new(&s.root());
    let e = finish(&k, &sp).unwrap_err().to_string();
    assert!(e.contains("linux.sysctl.../../etc/passwd"), "{e}");
    assert!(k.calls().is_empty());
}

/// A hybrid host as porta-cgroups reads it: the mount point of `net_cls` is escaped.
fn hybrid() -> Vec<porta_cgroups::Hierarchy> {
    let mountinfo = "\
30 1 0:27 / /sys/fs/cgroup rw - tmpfs tmpfs rw,mode=755
31 30 0:28 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct
33 30 0:30 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
34 30 0:31 / /sys/fs/cgroup/net\\040cls rw - cgroup cgroup rw,net_cls
35 30 0:32 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw
";
    let own = "4:net_cls:/box\n3:memory:/box\n2:cpu,cpuacct:/box\n0::/box\n";
    porta_cgroups::CgroupSetup::from_proc(mountinfo, own, |_| vec![])
        .unwrap()
        .hierarchies
}

fn mount_cgroupfs(s: &Scratch, new_cgroupns: bool, options: &[&str]) -> Recorder {
    let root = s.root();
    let k = Recorder::new(&root);
    let sp = spec(json!({"mounts": []}));
    let plan = RootfsPlan {
        spec: &sp,
        rootfs: &root,
        new_cgroupns,
        new_userns: false,
        mount_label: None,
        served_root: None,
        sources: Default::default(),
        own_mount_ns: true,
    };
    let opts =
        MountOptions::parse(&options.iter().map(|o| o.to_string()).collect::<Vec<_>>()).unwrap();
    let root_fd = open_dir(&root).unwrap();
    cgroupfs::mount_cgroup_in(
        &k,
        root_fd.as_fd(),
        Path::new("/sys/fs/cgroup"),
        &opts,
        &plan,
        &hybrid(),
    )
    .unwrap();
    k
}

#[test]
fn cgroupfs_in_a_new_cgroup_namespace_mounts_each_hierarchy_anew() {
    let s = Scratch::new();
    let k = mount_cgroupfs(&s, true, &[]);
    let calls = k.calls();
    let tmpfs = mount_on(&calls, "/sys/fs/cgroup");
    assert_eq!(tmpfs.len(), 1, "{calls:?}");
    assert!(
        matches!(&tmpfs[0], Call::Mount { fstype: Some(t), data: Some(d), .. } if t == "tmpfs" && d == "mode=755")
    );
    let want = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    for (dir, typ, data) in [
        ("cpu,cpuacct", "cgroup", Some("cpu,cpuacct")),
        ("memory", "cgroup", Some("memory")),
        // The escaped mount point of the host becomes a directory with a space.
        ("net cls", "cgroup", Some("net_cls")),
        ("unified", "cgroup2", None),
    ] {
        let target = format!("/sys/fs/cgroup/{dir}");
        assert_eq!(
            mount_on(&calls, &target),
            [Call::Mount {
                source: Some(typ.into()),
                target: target.clone(),
                fstype: Some(typ.into()),
                flags: want,
                data: data.map(str::to_string)
            }],
            "{target}"
        );
        assert!(s.root().join(&target[1..]).is_dir(), "{target}");
    }
}

#[test]
fn cgroupfs_without_a_cgroup_namespace_binds_the_own_group_read_only() {
    let s = Scratch::new();
    let k = mount_cgroupfs(&s, false, &["ro"]);
    let calls = k.calls();
    let mem = mount_on(&calls, "/sys/fs/cgroup/memory");
    assert_eq!(mem.len(), 2, "{mem:?}");
    assert_eq!(
        mem[0],
        Call::Mount {
            source: Some("/sys/fs/cgroup/memory/box".into()),
            target: "/sys/fs/cgroup/memory".into(),
            fstype: None,
            flags: MsFlags::MS_BIND | MsFlags::MS_REC,
            data: None
        }
    );
    assert!(flags_of(&mem[1]).contains(MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY));
    // The tmpfs holding the hierarchies is made read-only last.
    let top = mount_on(&calls, "/sys/fs/cgroup");
    assert!(flags_of(top.last().unwrap()).contains(MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY));
    assert_eq!(
        mount_on(&calls, "/sys/fs/cgroup/net cls")
            .first()
            .and_then(|c| match c {
                Call::Mount { source, .. } => source.clone(),
                _ => None,
            }),
        Some("/sys/fs/cgroup/net cls/box".into())
    );
}
