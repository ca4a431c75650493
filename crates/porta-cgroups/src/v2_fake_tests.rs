//! cgroup v2 tests against a fake hierarchy: a temporary directory laid out like
//! /sys/fs/cgroup on a v2-only host. The kernel would make the interface files of a new
//! group by itself; here they are made in advance, and the tests check what Porta wrote.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{
    LinuxBlockIoBuilder, LinuxCpuBuilder, LinuxHugepageLimitBuilder, LinuxMemoryBuilder,
    LinuxPidsBuilder, LinuxResources, LinuxResourcesBuilder, LinuxThrottleDevice,
    LinuxThrottleDeviceBuilder,
};

use crate::*;

const CONTROLLERS: &str = "cpuset cpu io memory hugetlb pids";

const GROUP_FILES: &[(&str, &str)] = &[
    ("cgroup.controllers", CONTROLLERS),
    ("cgroup.subtree_control", ""),
    ("cgroup.procs", ""),
    ("cgroup.freeze", "0"),
    ("cgroup.events", "populated 0\nfrozen 0\n"),
    ("memory.max", ""),
    ("memory.swap.max", ""),
    ("memory.high", ""),
    ("memory.low", ""),
    ("memory.events", "low 0\nhigh 0\nmax 0\noom 2\noom_kill 2\n"),
    ("pids.max", ""),
    ("cpu.max", ""),
    ("cpu.weight", ""),
    ("cpuset.cpus", ""),
    ("cpuset.mems", ""),
    ("io.max", ""),
    ("io.weight", ""),
    ("hugetlb.2MB.max", ""),
];

struct Fake {
    _tmp: tempfile::TempDir,
    root: PathBuf,
}

fn group(dir: &Path) {
    fs::create_dir_all(dir).unwrap();
    for (f, c) in GROUP_FILES {
        fs::write(dir.join(f), c).unwrap();
    }
}

/// A fake v2 root with `porta/ctr1` (and its leaves) already laid out.
fn fake() -> Fake {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("cgroup");
    group(&root);
    for d in [
        "porta",
        "porta/ctr1",
        "porta/ctr1/payload",
        "porta/ctr1/porta",
    ] {
        group(&root.join(d));
    }
    Fake { _tmp: tmp, root }
}

fn cfg(path: &str) -> CgroupConfig {
    CgroupConfig {
        cgroups_path: Some(path.into()),
        container_id: "ctr1".into(),
        systemd: false,
        rootless: false,
        resources: None,
    }
}

fn read(p: PathBuf) -> String {
    fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn create_enables_controllers_down_the_path() {
    let f = fake();
    let setup = CgroupSetup::unified_at(&f.root).unwrap();
    let cg = ContainerCgroup::create_in(&setup, &cfg("/porta/ctr1")).unwrap();
    let all = "+cpuset +cpu +io +memory +hugetlb +pids";
    assert_eq!(read(f.root.join("cgroup.subtree_control")), all);
    assert_eq!(read(f.root.join("porta/cgroup.subtree_control")), all);
    assert_eq!(read(f.root.join("porta/ctr1/cgroup.subtree_control")), all);
    // Leaves: no subtree_control written (processes live there).
    assert_eq!(
        read(f.root.join("porta/ctr1/payload/cgroup.subtree_control")),
        ""
    );

    let st = cg.state();
    assert_eq!(st.mode, CgroupMode::Unified);
    assert_eq!(st.dirs.len(), 1);
    assert_eq!(st.dirs[0].path, f.root.join("porta/ctr1"));
    assert_eq!(
        cg.payload_procs_files(),
        [f.root.join("porta/ctr1/payload/cgroup.procs")]
    );
    assert_eq!(
        cg.server_procs_files(),
        [f.root.join("porta/ctr1/porta/cgroup.procs")]
    );
    // The state survives a round trip through JSON and reopens the same groups.
    let json = serde_json::to_string(&st).unwrap();
    let back: CgroupState = serde_json::from_str(&json).unwrap();
    assert_eq!(back, st);
    let again = ContainerCgroup::open(&back).unwrap();
    assert_eq!(again.dirs(), cg.dirs());
}

#[test]
fn new_groups_are_made_and_rolled_back() {
    let f = fake();
    let setup = CgroupSetup::unified_at(&f.root).unwrap();
    // A fresh path: directories are made (a real kernel would fill them with files).
    let cg = ContainerCgroup::create_in(&setup, &cfg("/new/a/b")).unwrap();
    for d in [
        "new",
        "new/a",
        "new/a/b",
        "new/a/b/payload",
        "new/a/b/porta",
    ] {
        assert!(f.root.join(d).is_dir(), "{d} missing");
    }
    assert_eq!(cg.dirs()[0].cgroup_path, Path::new("/new/a/b"));
}

#[test]
fn a_failure_removes_what_was_made() {
    // Two hierarchies: the first works, the second cannot be used (its mount point is a
    // file), so the groups made in the first must go again.
    let tmp = tempfile::tempdir().unwrap();
    let v1 = tmp.path().join("v1");
    fs::create_dir(&v1).unwrap();
    fs::write(tmp.path().join("v2"), "").unwrap();
    let h = |version, mount_point: PathBuf| Hierarchy {
        version,
        mount_point,
        mount_root: "/".into(),
        controllers: vec![],
        own_path: "/".into(),
    };
    let setup = CgroupSetup {
        mode: CgroupMode::Hybrid,
        hierarchies: vec![
            h(CgroupVersion::V1, v1.clone()),
            h(CgroupVersion::V2, tmp.path().join("v2")),
        ],
    };
    let e = ContainerCgroup::create_in(&setup, &cfg("/x/y")).unwrap_err();
    assert!(e.to_string().contains("v2"), "{e}");
    assert!(
        !v1.join("x").exists(),
        "groups of the first hierarchy were left behind"
    );
}

#[test]
fn limits_go_to_the_right_files() {
    let f = fake();
    let setup = CgroupSetup::unified_at(&f.root).unwrap();
    let cg = ContainerCgroup::create_in(&setup, &cfg("/porta/ctr1")).unwrap();
    let mut unified = HashMap::new();
    unified.insert("memory.high".to_string(), "50331648".to_string());
    let r = LinuxResourcesBuilder::default()
        .memory(
            LinuxMemoryBuilder::default()
                .limit(64i64 << 20)
                .swap(96i64 << 20)
                .build()
                .unwrap(),
        )
        .pids(LinuxPidsBuilder::default().limit(5).build().unwrap())
        .cpu(
            LinuxCpuBuilder::default()
                .shares(1024u64)
                .quota(50_000i64)
                .period(100_000u64)
                .cpus("0")
                .mems("0")
                .build()
                .unwrap(),
        )
        .block_io(
            LinuxBlockIoBuilder::default()
                .weight(500u16)
                .throttle_read_bps_device(vec![LinuxThrottleDeviceBuilder::default()
                    .major(8i64)
                    .minor(0i64)
                    .rate(1_048_576u64)
                    .build()
                    .unwrap()])
                .build()
                .unwrap(),
        )
        .hugepage_limits(vec![LinuxHugepageLimitBuilder::default()
            .page_size("2MB")
            .limit(4i64 << 20)
            .build()
            .unwrap()])
        .unified(unified)
        .build()
        .unwrap();
    cg.apply(&r).unwrap();
    let g = |f2: &str| read(f.root.join("porta/ctr1").join(f2));
    assert_eq!(g("memory.max"), "67108864");
    assert_eq!(g("memory.swap.max"), (32u64 << 20).to_string()); // v2 swap excludes memory
    assert_eq!(g("payload/pids.max"), "5");
    assert_eq!(g("pids.max"), (5 + SERVER_PIDS_RESERVE).to_string());
    assert_eq!(g("cpu.max"), "50000 100000");
    // shares → weight with the conversion of current runc (opencontainers/cgroups) and
    // crun: 1024 shares, the v1 default, become 100, the v2 default.
    assert_eq!(g("cpu.weight"), "100");
    assert_eq!(g("cpuset.cpus"), "0");
    assert_eq!(g("cpuset.mems"), "0");
    assert_eq!(g("io.max"), "8:0 rbps=1048576");
    // blkio weight 500 (range 10..1000) → io.weight 4950 (range 1..10000), as runc.
    assert_eq!(g("io.weight"), "4950");
    assert_eq!(g("hugetlb.2MB.max"), "4194304");
    assert_eq!(g("memory.high"), "50331648");
}

#[test]
fn update_changes_a_limit() {
    let f = fake();
    let setup = CgroupSetup::unified_at(&f.root).unwrap();
    let cg = ContainerCgroup::create_in(&setup, &cfg("/porta/ctr1")).unwrap();
    let r = LinuxResourcesBuilder::default()
        .pids(LinuxPidsBuilder::default().limit(-1).build().unwrap())
        .build()
        .unwrap();
    cg.update(&r).unwrap();
    assert_eq!(read(f.root.join("porta/ctr1/pids.max")), "max");
    assert_eq!(read(f.root.join("porta/ctr1/payload/pids.max")), "max");
}

#[test]
fn missing_controller_is_reported_with_the_group() {
    let f = fake();
    // The container group is not offered `pids` by its parent.
    fs::write(
        f.root.join("porta/ctr1/cgroup.controllers"),
        "cpuset cpu io memory hugetlb",
    )
    .unwrap();
    let setup = CgroupSetup::unified_at(&f.root).unwrap();
    let cg = ContainerCgroup::create_in(&setup, &cfg("/porta/ctr1")).unwrap();
    let r = LinuxResourcesBuilder::default()
        .pids(LinuxPidsBuilder::default().limit(5).build().unwrap())
        .build()
        .unwrap();
    let e = cg.apply(&r).unwrap_err().to_string();
    assert!(e.contains("pids") && e.contains("porta/ctr1"), "{e}");
    // Nothing asked for, nothing needed.
    cg.apply(&LinuxResources::default()).unwrap();
}

#[test]
fn freeze_and_thaw_use_cgroup_freeze_and_events() {
    let f = fake();
    let setup = CgroupSetup::unified_at(&f.root).unwrap();
    let cg = ContainerCgroup::create_in(&setup, &cfg("/porta/ctr1")).unwrap();
    let leaf = f.root.join("porta/ctr1/payload");
    // The kernel would report "frozen 1" once every task stopped; play the kernel.
    fs::write(leaf.join("cgroup.events"), "populated 1\nfrozen 1\n").unwrap();
    cg.freeze().unwrap();
    assert_eq!(read(leaf.join("cgroup.freeze")), "1");
    assert!(cg.is_frozen().unwrap());
    // Porta's own leaf is left alone.
    assert_eq!(read(f.root.join("porta/ctr1/porta/cgroup.freeze")), "0");
    fs::write(leaf.join("cgroup.events"), "populated 1\nfrozen 0\n").unwrap();
    cg.thaw().unwrap();
    assert_eq!(read(leaf.join("cgroup.freeze")), "0");
    assert!(!cg.is_frozen().unwrap());
}

#[test]
fn pids_stats_and_oom_count() {
    let f = fake();
    let setup = CgroupSetup::unified_at(&f.root).unwrap();
    let cg = ContainerCgroup::create_in(&setup, &cfg("/porta/ctr1")).unwrap();
    let dir = f.root.join("porta/ctr1");
    fs::write(dir.join("payload/cgroup.procs"), "12\n13\n").unwrap();
    group(&dir.join("payload/nested"));
    fs::write(dir.join("payload/nested/cgroup.procs"), "14\n").unwrap();
    fs::write(dir.join("porta/cgroup.procs"), "99\n").unwrap();
    assert_eq!(cg.payload_pids().unwrap(), [12, 13, 14]);
    assert_eq!(cg.oom_kill_count().unwrap(), 2);

    fs::write(
        dir.join("cpu.stat"),
        "usage_usec 10\nuser_usec 6\nsystem_usec 4\n",
    )
    .unwrap();
    fs::write(dir.join("memory.current"), "1000\n").unwrap();
    fs::write(dir.join("memory.max"), "max\n").unwrap();
    fs::write(dir.join("pids.current"), "4\n").unwrap();
    fs::write(dir.join("pids.max"), "69\n").unwrap();
    fs::write(dir.join("payload/pids.max"), "5\n").unwrap();
    let s = cg.stats().unwrap();
    assert_eq!(s.cpu.usage.total, 10_000);
    assert_eq!(s.memory.usage.usage, 1000);
    assert_eq!(s.memory.usage.limit, u64::MAX);
    assert_eq!((s.pids.current, s.pids.limit), (4, 5));
    let j = serde_json::to_value(&s).unwrap();
    assert_eq!(j["pids"]["limit"], 5);
}

#[test]
fn systemd_without_systemd_is_a_clear_error() {
    let f = fake();
    let setup = CgroupSetup::unified_at(&f.root).unwrap();
    let mut c = cfg("system.slice:porta:ctr1");
    c.systemd = true;
    let e = ContainerCgroup::create_in(&setup, &c).unwrap_err();
    if Path::new("/run/systemd/system").exists() {
        assert!(matches!(e, Error::InvalidPath { .. }), "{e}");
    } else {
        assert!(matches!(e, Error::SystemdNotRunning { .. }), "{e}");
        assert!(e.to_string().contains("systemd is not running"), "{e}");
    }
    // A malformed systemd path is refused before anything else.
    c.cgroups_path = Some("/not/systemd".into());
    assert!(matches!(
        ContainerCgroup::create_in(&setup, &c),
        Err(Error::InvalidPath { .. })
    ));
}

#[test]
fn a_frozen_existing_group_is_refused() {
    // the group frozen by someone else (cgroup.freeze written, kernel not done yet)
    let f = fake();
    let setup = CgroupSetup::unified_at(&f.root).unwrap();
    fs::write(f.root.join("porta/ctr1/cgroup.freeze"), "1").unwrap();
    let e = ContainerCgroup::create_in(&setup, &cfg("/porta/ctr1")).unwrap_err();
    assert!(matches!(e, Error::Frozen { .. }), "{e}");
    assert!(e.to_string().contains("unexpectedly frozen"), "{e}");
    // below a frozen parent: the payload leaf reports itself frozen
    let f = fake();
    let setup = CgroupSetup::unified_at(&f.root).unwrap();
    fs::write(
        f.root.join("porta/ctr1/payload/cgroup.events"),
        "populated 0\nfrozen 1\n",
    )
    .unwrap();
    let e = ContainerCgroup::create_in(&setup, &cfg("/porta/ctr1")).unwrap_err();
    assert!(e.to_string().contains("payload/cgroup.events"), "{e}");
}

/// Every resource of the OCI spec cgroup v2 has a file for (those without one on v2 —
/// realtime, swappiness, kernel memory, oom_kill_disable, net_cls/net_prio — are not
/// given here), read back at the configured path as runc writes them, and in `payload/`
/// where Porta mirrors them; then `update` of each updatable limit.
#[test]
fn every_v2_limit_and_its_update_read_back() {
    let f = fake();
    for d in ["porta/ctr1", "porta/ctr1/payload", "porta/ctr1/porta"] {
        for file in ["cpu.max.burst", "cpu.idle", "memory.oom.group"] {
            fs::write(f.root.join(d).join(file), "").unwrap();
        }
    }
    let setup = CgroupSetup::unified_at(&f.root).unwrap();
    let cg = ContainerCgroup::create_in(&setup, &cfg("/porta/ctr1")).unwrap();
    let dev = |rate: u64| {
        vec![LinuxThrottleDeviceBuilder::default()
            .major(8i64)
            .minor(0i64)
            .rate(rate)
            .build()
            .unwrap()]
    };
    let mut unified = HashMap::new();
    unified.insert("memory.high".to_string(), "50331648".to_string());
    unified.insert("memory.oom.group".to_string(), "1".to_string());
    unified.insert("cpu.idle".to_string(), "0".to_string());
    let r = LinuxResourcesBuilder::default()
        .memory(
            LinuxMemoryBuilder::default()
                .limit(64i64 << 20)
                .reservation(32i64 << 20)
                .swap(96i64 << 20)
                .build()
                .unwrap(),
        )
        .pids(LinuxPidsBuilder::default().limit(77).build().unwrap())
        .cpu(
            LinuxCpuBuilder::default()
                .shares(512u64)
                .quota(50_000i64)
                .period(100_000u64)
                .cpus("0-1")
                .mems("0")
                .build()
                .unwrap(),
        )
        .block_io(
            LinuxBlockIoBuilder::default()
                .weight(500u16)
                .throttle_read_bps_device(dev(1_048_576))
                .throttle_write_bps_device(dev(2_097_152))
                .throttle_read_iops_device(dev(100))
                .throttle_write_iops_device(dev(200))
                .build()
                .unwrap(),
        )
        .hugepage_limits(vec![LinuxHugepageLimitBuilder::default()
            .page_size("2MB")
            .limit(4i64 << 20)
            .build()
            .unwrap()])
        .unified(unified)
        .build()
        .unwrap();
    cg.apply(&r).unwrap();
    let g = |f2: &str| read(f.root.join("porta/ctr1").join(f2));
    // The configured path, as runc writes it.
    assert_eq!(g("memory.max"), "67108864");
    assert_eq!(g("memory.low"), "33554432");
    assert_eq!(g("memory.swap.max"), (32u64 << 20).to_string());
    assert_eq!(g("cpu.max"), "50000 100000");
    // 512 shares → weight 59 with runc ≥ 1.2's (and crun's) conversion.
    assert_eq!(g("cpu.weight"), "59");
    assert_eq!(g("cpuset.cpus"), "0-1");
    assert_eq!(g("cpuset.mems"), "0");
    assert_eq!(g("io.weight"), "4950");
    // io.max takes one line per write (the kernel merges them per device, a fake file
    // keeps the last): each throttle alone, from an empty file, reads back as runc writes it.
    type SetThrottle = fn(LinuxBlockIoBuilder, Vec<LinuxThrottleDevice>) -> LinuxBlockIoBuilder;
    let throttles: [(&str, SetThrottle, u64); 4] = [
        ("rbps", |b, d| b.throttle_read_bps_device(d), 1_048_576),
        ("wbps", |b, d| b.throttle_write_bps_device(d), 2_097_152),
        ("riops", |b, d| b.throttle_read_iops_device(d), 100),
        ("wiops", |b, d| b.throttle_write_iops_device(d), 200),
    ];
    for (key, set, rate) in throttles {
        fs::write(f.root.join("porta/ctr1/io.max"), "").unwrap();
        let one = LinuxResourcesBuilder::default()
            .block_io(
                set(LinuxBlockIoBuilder::default(), dev(rate))
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap();
        cg.apply(&one).unwrap();
        assert_eq!(g("io.max"), format!("8:0 {key}={rate}"));
    }
    // A weight device goes to io.bfq.weight as "major:minor weight", as runc writes it.
    let bfq = f.root.join("porta/ctr1/io.bfq.weight");
    fs::write(&bfq, "").unwrap();
    let wd = LinuxResourcesBuilder::default()
        .block_io(
            LinuxBlockIoBuilder::default()
                .weight_device(vec![oci_spec::runtime::LinuxWeightDeviceBuilder::default()
                    .major(8i64)
                    .minor(0i64)
                    .weight(300u16)
                    .build()
                    .unwrap()])
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();
    cg.apply(&wd).unwrap();
    assert_eq!(g("io.bfq.weight"), "8:0 300");
    fs::remove_file(&bfq).unwrap();
    assert_eq!(g("hugetlb.2MB.max"), "4194304");
    assert_eq!(g("memory.high"), "50331648");
    assert_eq!(g("memory.oom.group"), "1");
    assert_eq!(g("cpu.idle"), "0");
    // Porta: the group's pids.max is the limit + 64; payload/ holds the limit and a copy
    // of the memory and cpu limits (the container sees them in its own cgroup).
    assert_eq!(g("pids.max"), (77 + SERVER_PIDS_RESERVE).to_string());
    assert_eq!(g("payload/pids.max"), "77");
    assert_eq!(g("payload/memory.max"), "67108864");
    assert_eq!(g("payload/memory.low"), "33554432");
    assert_eq!(g("payload/memory.swap.max"), (32u64 << 20).to_string());
    assert_eq!(g("payload/cpu.max"), "50000 100000");
    assert_eq!(g("payload/cpu.weight"), "59");
    // Not mirrored: cpuset (inherited), io and hugetlb (hierarchical, on the group).
    assert_eq!(g("payload/cpuset.cpus"), "");
    assert_eq!(g("payload/io.max"), "");
    assert_eq!(g("payload/hugetlb.2MB.max"), "");

    // update: each limit `porta update` takes (runc's flags and -r), read back.
    let upd = LinuxResourcesBuilder::default()
        .memory(
            LinuxMemoryBuilder::default()
                .limit(48i64 << 20)
                .reservation(24i64 << 20)
                .swap(80i64 << 20)
                .build()
                .unwrap(),
        )
        .pids(LinuxPidsBuilder::default().limit(55).build().unwrap())
        .cpu(
            LinuxCpuBuilder::default()
                .shares(2048u64)
                .quota(40_000i64)
                .period(80_000u64)
                .cpus("1")
                .mems("0")
                .build()
                .unwrap(),
        )
        .block_io(
            LinuxBlockIoBuilder::default()
                .weight(1000u16)
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();
    // A real interface file holds only the last value; the fake files are emptied so
    // that what `update` did not write reads empty.
    for d in ["", "payload/"] {
        for file in [
            "memory.max",
            "memory.low",
            "memory.swap.max",
            "cpu.max",
            "cpu.weight",
            "cpuset.cpus",
            "io.weight",
            "pids.max",
        ] {
            fs::write(f.root.join("porta/ctr1").join(format!("{d}{file}")), "").unwrap();
        }
    }
    cg.update(&upd).unwrap();
    assert_eq!(g("memory.max"), "50331648");
    assert_eq!(g("memory.low"), "25165824");
    assert_eq!(g("memory.swap.max"), (32u64 << 20).to_string());
    assert_eq!(g("cpu.max"), "40000 80000");
    assert_eq!(g("cpu.weight"), "174");
    assert_eq!(g("cpuset.cpus"), "1");
    assert_eq!(g("io.weight"), "10000");
    assert_eq!(g("pids.max"), (55 + SERVER_PIDS_RESERVE).to_string());
    assert_eq!(g("payload/pids.max"), "55");
    assert_eq!(g("payload/memory.max"), "50331648");
    assert_eq!(g("payload/memory.low"), "25165824");
    assert_eq!(g("payload/cpu.max"), "40000 80000");
    assert_eq!(g("payload/cpu.weight"), "174");
}

#[test]
fn a_nested_child_goes_beneath_its_parent_with_controllers_enabled() {
    let f = fake();
    let setup = CgroupSetup::unified_at(&f.root).unwrap();
    let parent = ContainerCgroup::create_in(&setup, &cfg("/porta/ctr1")).unwrap();
    // The kernel makes a new group's files; the fake makes them first.
    for d in [
        "porta/ctr1/children",
        "porta/ctr1/children/kid",
        "porta/ctr1/children/kid/payload",
        "porta/ctr1/children/kid/porta",
    ] {
        group(&f.root.join(d));
    }
    let mut kid = cfg("/ignored/for/a/child");
    kid.container_id = "kid".into();
    let cg = ContainerCgroup::create_beneath_in(&setup, &parent.state(), &kid).unwrap();
    let st = cg.state();
    assert_eq!(st.dirs.len(), 1);
    assert_eq!(st.dirs[0].path, f.root.join("porta/ctr1/children/kid"));
    // cgroup2: the parent's group holds no process of its own (its processes are in its
    // leaves), so the child's group beside the leaves gets the controllers, down the path.
    let all = "+cpuset +cpu +io +memory +hugetlb +pids";
    assert_eq!(read(f.root.join("porta/ctr1/cgroup.subtree_control")), all);
    assert_eq!(
        read(f.root.join("porta/ctr1/children/cgroup.subtree_control")),
        all
    );
    assert_eq!(
        cg.payload_procs_files(),
        [f.root.join("porta/ctr1/children/kid/payload/cgroup.procs")]
    );
    // A parent without a group in the hierarchy: the child would escape its limits.
    let mut stray = parent.state();
    stray.dirs[0].mount_point = f.root.join("elsewhere");
    let e = ContainerCgroup::create_beneath_in(&setup, &stray, &kid).unwrap_err();
    assert!(e.to_string().contains("no group in this hierarchy"), "{e}");
}
