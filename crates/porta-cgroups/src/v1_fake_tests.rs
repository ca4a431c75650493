//! cgroup v1 (and hybrid) tests against fake hierarchies: one temporary directory per
//! controller mount, laid out like /sys/fs/cgroup/<controller>. The caller sits in a
//! different group in the memory hierarchy than in the others, as on the development
//! machines, so a relative cgroupsPath names different paths per hierarchy.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{
    LinuxCpuBuilder, LinuxDeviceCgroupBuilder, LinuxHugepageLimitBuilder, LinuxMemoryBuilder,
    LinuxPidsBuilder, LinuxResourcesBuilder,
};

use crate::*;

const FILES: &[(&str, &[&str])] = &[
    (
        "cpu",
        &["cpu.shares", "cpu.cfs_period_us", "cpu.cfs_quota_us"],
    ),
    ("cpuacct", &["cpuacct.usage"]),
    ("cpuset", &["cpuset.cpus", "cpuset.mems"]),
    (
        "memory",
        &[
            "memory.limit_in_bytes",
            "memory.soft_limit_in_bytes",
            "memory.oom_control",
        ],
    ),
    ("pids", &["pids.max"]),
    ("devices", &["devices.allow", "devices.deny"]),
    ("freezer", &["freezer.state"]),
];

struct Fake {
    _tmp: tempfile::TempDir,
    base: PathBuf,
    setup: CgroupSetup,
}

/// Fake mounts; the container group `ctr` (relative to the caller) is laid out in advance
/// because a plain directory does not grow interface files by itself.
fn fake(with_unified_hugetlb: bool) -> Fake {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().to_path_buf();
    let mut hierarchies = Vec::new();
    for (ctrl, files) in FILES {
        let mount = base.join(ctrl);
        let own = if *ctrl == "memory" {
            "/process_api/abc"
        } else {
            "/"
        };
        for g in ["", "ctr", "ctr/payload", "ctr/porta"] {
            let dir = mount.join(own.trim_start_matches('/')).join(g);
            fs::create_dir_all(&dir).unwrap();
            fs::write(dir.join("cgroup.procs"), "").unwrap();
            for f in *files {
                let init = match *f {
                    "cpuset.cpus" => "0-1",
                    "cpuset.mems" => "0",
                    "freezer.state" => "THAWED",
                    _ => "",
                };
                fs::write(dir.join(f), init).unwrap();
            }
        }
        hierarchies.push(Hierarchy {
            version: CgroupVersion::V1,
            mount_point: mount,
            mount_root: "/".into(),
            controllers: vec![ctrl.to_string()],
            own_path: own.into(),
        });
    }
    let mode = if with_unified_hugetlb {
        let u = base.join("unified");
        for g in ["", "ctr", "ctr/payload", "ctr/porta"] {
            let dir = u.join(g);
            fs::create_dir_all(&dir).unwrap();
            fs::write(dir.join("cgroup.controllers"), "hugetlb").unwrap();
            fs::write(dir.join("cgroup.subtree_control"), "").unwrap();
            fs::write(dir.join("cgroup.procs"), "").unwrap();
            fs::write(dir.join("hugetlb.2MB.max"), "").unwrap();
        }
        hierarchies.push(Hierarchy {
            version: CgroupVersion::V2,
            mount_point: u,
            mount_root: "/".into(),
            controllers: vec!["hugetlb".into()],
            own_path: "/".into(),
        });
        CgroupMode::Hybrid
    } else {
        CgroupMode::Legacy
    };
    Fake {
        _tmp: tmp,
        base,
        setup: CgroupSetup { mode, hierarchies },
    }
}

fn cfg() -> CgroupConfig {
    CgroupConfig {
        cgroups_path: None,
        container_id: "ctr".into(),
        systemd: false,
        rootless: false,
        resources: None,
    }
}

fn read(p: &Path) -> String {
    fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn each_controller_is_written_in_its_own_hierarchy() {
    let f = fake(false);
    let cg = ContainerCgroup::create_in(&f.setup, &cfg()).unwrap();
    let dir = |c: &str| {
        cg.dirs()
            .iter()
            .find(|d| d.controllers == [c])
            .unwrap()
            .path
            .clone()
    };
    assert_eq!(dir("memory"), f.base.join("memory/process_api/abc/ctr"));
    assert_eq!(dir("cpu"), f.base.join("cpu/ctr"));

    let r = LinuxResourcesBuilder::default()
        .memory(
            LinuxMemoryBuilder::default()
                .limit(1i64 << 30)
                .reservation(1i64 << 29)
                .disable_oom_killer(true)
                .build()
                .unwrap(),
        )
        .cpu(
            LinuxCpuBuilder::default()
                .shares(512u64)
                .quota(20_000i64)
                .period(100_000u64)
                .cpus("1")
                .build()
                .unwrap(),
        )
        .pids(LinuxPidsBuilder::default().limit(100).build().unwrap())
        .devices(vec![LinuxDeviceCgroupBuilder::default()
            .allow(false)
            .access("rwm")
            .build()
            .unwrap()])
        .build()
        .unwrap();
    // Plain files do not truncate on write as cgroup files do: empty the cpuset ones.
    for sub in ["", "payload", "porta"] {
        fs::write(dir("cpuset").join(sub).join("cpuset.cpus"), "").unwrap();
    }
    cg.apply(&r).unwrap();
    assert_eq!(
        read(&dir("memory").join("memory.limit_in_bytes")),
        "1073741824"
    );
    assert_eq!(
        read(&dir("memory").join("memory.soft_limit_in_bytes")),
        "536870912"
    );
    assert_eq!(read(&dir("memory").join("memory.oom_control")), "1");
    assert_eq!(read(&dir("cpu").join("cpu.shares")), "512");
    assert_eq!(read(&dir("cpu").join("cpu.cfs_quota_us")), "20000");
    assert_eq!(read(&dir("cpu").join("cpu.cfs_period_us")), "100000");
    assert_eq!(read(&dir("pids").join("payload/pids.max")), "100");
    assert_eq!(
        read(&dir("pids").join("pids.max")),
        (100 + SERVER_PIDS_RESERVE).to_string()
    );
    // cpuset on the group and both leaves.
    for sub in ["", "payload", "porta"] {
        assert_eq!(
            read(&dir("cpuset").join(sub).join("cpuset.cpus")),
            "1",
            "{sub}"
        );
    }
    // Device rules: the deny-all was written (a plain file keeps only the last write of
    // each file, which is the last default allow rule).
    // They go to both leaves (the kernel refuses "a" rules on a group with children).
    for leaf in ["payload", "porta"] {
        assert_eq!(
            read(&dir("devices").join(leaf).join("devices.deny")),
            "a *:* rwm"
        );
        assert_eq!(
            read(&dir("devices").join(leaf).join("devices.allow")),
            "c 10:200 rwm"
        );
    }
    assert_eq!(read(&dir("devices").join("devices.deny")), "");

    // `update` leaves devices alone.
    fs::write(dir("devices").join("payload/devices.deny"), "").unwrap();
    cg.update(&r).unwrap();
    assert_eq!(read(&dir("devices").join("payload/devices.deny")), "");

    // Stats read from the right places.
    fs::write(dir("cpuacct").join("cpuacct.usage"), "777").unwrap();
    fs::write(dir("pids").join("pids.current"), "3").unwrap();
    let s = cg.stats().unwrap();
    assert_eq!(s.cpu.usage.total, 777);
    assert_eq!(s.pids.current, 3);
    assert_eq!(s.pids.limit, 100);

    // The freezer is the v1 one, on payload/ only.
    let fz = dir("freezer").join("payload/freezer.state");
    cg.freeze().unwrap(); // a plain file "settles" at once
    assert_eq!(read(&fz), "FROZEN");
    assert!(cg.is_frozen().unwrap());
    assert_eq!(read(&dir("freezer").join("porta/freezer.state")), "THAWED");
    cg.thaw().unwrap();
    assert!(!cg.is_frozen().unwrap());
}

#[test]
fn new_cpuset_groups_inherit_cpus_and_mems() {
    let f = fake(false);
    let mut c = cfg();
    c.cgroups_path = Some("/fresh".into());
    // A real kernel would make the files empty; the fake makes them on the first mkdir.
    // Lay them out empty in advance to see the copy.
    let d = f.base.join("cpuset/fresh");
    for sub in ["", "payload", "porta"] {
        fs::create_dir_all(d.join(sub)).unwrap();
        fs::write(d.join(sub).join("cpuset.cpus"), "").unwrap();
        fs::write(d.join(sub).join("cpuset.mems"), "").unwrap();
    }
    fs::write(f.base.join("cpuset/cpuset.cpus"), "0-1").unwrap();
    fs::write(f.base.join("cpuset/cpuset.mems"), "0").unwrap();
    // Only the cpuset hierarchy, so that other (file-less) fake groups are not in the way.
    let setup = CgroupSetup {
        mode: CgroupMode::Legacy,
        hierarchies: vec![f.setup.hierarchy_for("cpuset").unwrap().clone()],
    };
    ContainerCgroup::create_in(&setup, &c).unwrap();
    for sub in ["", "payload", "porta"] {
        assert_eq!(read(&d.join(sub).join("cpuset.cpus")), "0-1");
        assert_eq!(read(&d.join(sub).join("cpuset.mems")), "0");
    }
}

#[test]
fn hybrid_puts_hugetlb_and_unified_entries_on_cgroup2() {
    let f = fake(true);
    let cg = ContainerCgroup::create_in(&f.setup, &cfg()).unwrap();
    assert_eq!(
        read(&f.base.join("unified/cgroup.subtree_control")),
        "+hugetlb"
    );
    let r = LinuxResourcesBuilder::default()
        .hugepage_limits(vec![LinuxHugepageLimitBuilder::default()
            .page_size("2MB")
            .limit(2i64 << 20)
            .build()
            .unwrap()])
        .build()
        .unwrap();
    cg.apply(&r).unwrap();
    assert_eq!(read(&f.base.join("unified/ctr/hugetlb.2MB.max")), "2097152");

    // A unified entry for a v1 controller is refused with the reason.
    let mut u = HashMap::new();
    u.insert("memory.high".to_string(), "1000".to_string());
    let r = LinuxResourcesBuilder::default().unified(u).build().unwrap();
    let e = cg.apply(&r).unwrap_err().to_string();
    assert!(e.contains("memory.high") && e.contains("cgroup v1"), "{e}");
}

#[test]
fn legacy_host_without_hugetlb_names_the_controller() {
    let f = fake(false);
    let cg = ContainerCgroup::create_in(&f.setup, &cfg()).unwrap();
    let r = LinuxResourcesBuilder::default()
        .hugepage_limits(vec![LinuxHugepageLimitBuilder::default()
            .page_size("2MB")
            .limit(2i64 << 20)
            .build()
            .unwrap()])
        .build()
        .unwrap();
    let e = cg.apply(&r).unwrap_err();
    assert!(
        matches!(&e, Error::ControllerMissing { controller, .. } if controller == "hugetlb"),
        "{e}"
    );
}

#[test]
fn a_frozen_existing_group_is_refused() {
    for state in ["FROZEN", "FREEZING"] {
        let f = fake(false);
        fs::write(f.base.join("freezer/ctr/freezer.state"), state).unwrap();
        let e = ContainerCgroup::create_in(&f.setup, &cfg()).unwrap_err();
        assert!(matches!(e, Error::Frozen { .. }), "{e}");
        assert!(e.to_string().contains(state), "{e}");
    }
    let f = fake(false);
    assert!(ContainerCgroup::create_in(&f.setup, &cfg()).is_ok());
}

/// The config's device rules reach the container group itself at creation (before its
/// leaves exist on a real host: the kernel refuses "a" rules on a group with children),
/// so that the configured path's devices.list reads as configured, as with runc.
#[test]
fn device_rules_reach_the_container_group_at_creation() {
    let f = fake(false);
    let mut c = cfg();
    c.resources = Some(
        LinuxResourcesBuilder::default()
            .devices(vec![LinuxDeviceCgroupBuilder::default()
                .allow(false)
                .access("rwm")
                .build()
                .unwrap()])
            .build()
            .unwrap(),
    );
    let cg = ContainerCgroup::create_in(&f.setup, &c).unwrap();
    let group = cg
        .dirs()
        .iter()
        .find(|d| d.controllers == ["devices"])
        .unwrap()
        .path
        .clone();
    assert_eq!(read(&group.join("devices.deny")), "a *:* rwm");
    // A plain file keeps the last write: the last default rule (runc's list, no 5:1).
    assert_eq!(read(&group.join("devices.allow")), "c 10:200 rwm");
    assert!(!default_device_rules()
        .iter()
        .any(|r| r.major() == Some(5) && r.minor() == Some(1)));
    // Without device rules in the config the group is left as the kernel made it.
    let f = fake(false);
    let cg = ContainerCgroup::create_in(&f.setup, &cfg()).unwrap();
    let group = &cg
        .dirs()
        .iter()
        .find(|d| d.controllers == ["devices"])
        .unwrap()
        .path;
    assert_eq!(read(&group.join("devices.deny")), "");
}

/// The v1 controllers the development machines lack (blkio weights, net_cls, net_prio,
/// hugetlb as a v1 hierarchy, cpu realtime, memory swap and swappiness), in fake
/// hierarchies of their own: each limit lands in the file runc writes, on the
/// configured path (and the memory and cpu ones in `payload/` too).
#[test]
fn limits_of_the_controllers_this_host_lacks_go_to_runcs_files() {
    let tmp = tempfile::tempdir().unwrap();
    let layout: &[(&str, &[&str])] = &[
        (
            "blkio",
            &[
                "blkio.weight",
                "blkio.leaf_weight",
                "blkio.weight_device",
                "blkio.leaf_weight_device",
                "blkio.throttle.read_bps_device",
            ],
        ),
        ("net_cls", &["net_cls.classid"]),
        ("net_prio", &["net_prio.ifpriomap"]),
        ("hugetlb", &["hugetlb.2MB.limit_in_bytes"]),
        (
            "cpu",
            &[
                "cpu.shares",
                "cpu.cfs_period_us",
                "cpu.cfs_quota_us",
                "cpu.rt_period_us",
                "cpu.rt_runtime_us",
            ],
        ),
        (
            "memory",
            &[
                "memory.limit_in_bytes",
                "memory.soft_limit_in_bytes",
                "memory.memsw.limit_in_bytes",
                "memory.swappiness",
                "memory.oom_control",
            ],
        ),
    ];
    let mut hierarchies = Vec::new();
    for (ctrl, files) in layout {
        let mount = tmp.path().join(ctrl);
        for g in ["", "ctr", "ctr/payload", "ctr/porta"] {
            let dir = mount.join(g);
            fs::create_dir_all(&dir).unwrap();
            fs::write(dir.join("cgroup.procs"), "").unwrap();
            for f in *files {
                fs::write(dir.join(f), "").unwrap();
            }
        }
        hierarchies.push(Hierarchy {
            version: CgroupVersion::V1,
            mount_point: mount,
            mount_root: "/".into(),
            controllers: vec![ctrl.to_string()],
            own_path: "/".into(),
        });
    }
    let setup = CgroupSetup {
        mode: CgroupMode::Legacy,
        hierarchies,
    };
    let cg = ContainerCgroup::create_in(&setup, &cfg()).unwrap();
    let r: LinuxResources = serde_json::from_value(serde_json::json!({
        "blockIO": {
            "weight": 500, "leafWeight": 300,
            "weightDevice": [{"major": 8, "minor": 0, "weight": 600, "leafWeight": 200}]
        },
        "network": {"classID": 1048577, "priorities": [{"name": "lo", "priority": 5}]},
        "hugepageLimits": [{"pageSize": "2MB", "limit": 4194304}],
        "cpu": {"realtimeRuntime": 10000, "realtimePeriod": 1000000},
        "memory": {"limit": 67108864, "swap": 134217728, "swappiness": 20}
    }))
    .unwrap();
    cg.apply(&r).unwrap();
    let at = |ctrl: &str, f: &str| read(&tmp.path().join(ctrl).join("ctr").join(f));
    assert_eq!(at("blkio", "blkio.weight"), "500");
    assert_eq!(at("blkio", "blkio.leaf_weight"), "300");
    assert_eq!(at("blkio", "blkio.weight_device"), "8:0 600");
    assert_eq!(at("blkio", "blkio.leaf_weight_device"), "8:0 200");
    assert_eq!(at("net_cls", "net_cls.classid"), "1048577");
    assert_eq!(at("net_prio", "net_prio.ifpriomap"), "lo 5");
    assert_eq!(at("hugetlb", "hugetlb.2MB.limit_in_bytes"), "4194304");
    for leaf in ["", "payload/"] {
        assert_eq!(at("cpu", &format!("{leaf}cpu.rt_runtime_us")), "10000");
        assert_eq!(at("cpu", &format!("{leaf}cpu.rt_period_us")), "1000000");
        assert_eq!(
            at("memory", &format!("{leaf}memory.limit_in_bytes")),
            "67108864"
        );
        assert_eq!(
            at("memory", &format!("{leaf}memory.memsw.limit_in_bytes")),
            "134217728"
        );
        assert_eq!(at("memory", &format!("{leaf}memory.swappiness")), "20");
    }
    // Hierarchical limits stay on the group.
    assert_eq!(at("blkio", "payload/blkio.weight"), "");
    assert_eq!(at("net_cls", "payload/net_cls.classid"), "");
    assert_eq!(at("hugetlb", "payload/hugetlb.2MB.limit_in_bytes"), "");
}
