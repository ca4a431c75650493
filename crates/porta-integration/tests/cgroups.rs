//! cgroup limits are set and enforced: pids.max stops fork, a memory limit ends a hog
//! through the OOM killer, cpu/cpuset values reach the cgroup, cgroupsPath is honoured.

use porta_integration::*;
use std::time::Duration;

#[test]
fn pids_limit_stops_fork() {
    require_root!();
    let mut b = Bundle::new(&[]);
    b.resources(json!({"pids": {"limit": 10}}));
    // A shell whose fork fails exits, so the forking loop runs in a child shell and
    // PID 1 then spins on builtins only.
    b.sh("exec 2>&1; sh -c 'i=0; while [ $i -lt 30 ]; do sleep 60 & i=$((i+1)); done'; echo loop-done; while true; do :; done");
    let c = Container::new("cg-pids", b);
    c.create_start();
    let pid = c.pid();
    assert_eq!(cgroup::read(pid, "pids", "pids.max").as_deref(), Some("10"));
    assert!(c.wait_output("loop-done", 20), "{}", c.output());
    let cur: u64 = cgroup::read(pid, "pids", "pids.current")
        .unwrap()
        .parse()
        .unwrap();
    assert!(cur <= 10, "pids.current {cur} above the limit");
    let out = c.output();
    assert!(
        out.contains("fork") || out.contains("Resource temporarily unavailable"),
        "no fork failure reported: {out}"
    );
    c.rt(&["delete", "--force", &c.id]).expect_ok();
}

fn oom_kills(pid: i32) -> Option<u64> {
    let (file, key) = if cgroup::is_unified() {
        ("memory.events", "oom_kill")
    } else {
        ("memory.oom_control", "oom_kill")
    };
    let text = cgroup::read(pid, "memory", file)?;
    text.lines().find_map(|l| {
        let mut w = l.split_whitespace();
        (w.next() == Some(key)).then(|| w.next().and_then(|v| v.parse().ok()).unwrap_or(0))
    })
}

#[test]
fn memory_limit_ends_a_hog() {
    require_root!();
    let limit = 32u64 << 20;
    let mut b = Bundle::new(&[]);
    b.resources(json!({"memory": {"limit": limit, "swap": limit}}));
    // awk doubles a string until it holds far more than the limit
    b.sh("awk 'BEGIN { s = \"xxxxxxxxxxxxxxxx\"; while (length(s) < 1073741824) s = s s; print \"survived\" }'; echo awk-exit=$?; sleep 60");
    let c = Container::new("cg-mem", b);
    c.create_start();
    let pid = c.pid();
    let lim = if cgroup::is_unified() {
        cgroup::read(pid, "memory", "memory.max")
    } else {
        cgroup::read(pid, "memory", "memory.limit_in_bytes")
    };
    assert_eq!(lim, Some(limit.to_string()));
    assert!(
        c.wait_output("awk-exit=", 60),
        "hog still running: {}",
        c.output()
    );
    let out = c.output();
    assert!(
        out.contains("awk-exit=137"),
        "hog not killed by SIGKILL: {out}"
    );
    assert!(!out.contains("survived"), "{out}");
    if let Some(n) = oom_kills(pid) {
        let text = cgroup::read(
            pid,
            "memory",
            if cgroup::is_unified() {
                "memory.events"
            } else {
                "memory.oom_control"
            },
        );
        assert!(
            n >= 1,
            "no OOM kill recorded in the container's memory cgroup: {text:?}"
        );
    }
    c.rt(&["delete", "--force", &c.id]).expect_ok();
}

#[test]
fn memory_limit_kills_init_hog_run_exit_137() {
    require_root!();
    let limit = 24u64 << 20;
    let mut b = Bundle::new(&[
        "awk",
        "BEGIN { s = \"xxxxxxxxxxxxxxxx\"; while (length(s) < 1073741824) s = s s }",
    ]);
    b.resources(json!({"memory": {"limit": limit, "swap": limit}}));
    let c = Container::new("cg-mem2", b);
    let o = c.run();
    assert_eq!(o.code, 137, "{o}");
}

#[test]
fn cpu_and_cpuset_values() {
    require_root!();
    let mut b = Bundle::new(&["sleep", "100"]);
    b.resources(
        json!({"cpu": {"shares": 512, "quota": 50000, "period": 100000, "cpus": "0", "mems": "0"}}),
    );
    let c = Container::new("cg-cpu", b);
    c.create_start();
    let pid = c.pid();
    if cgroup::is_unified() {
        assert_eq!(
            cgroup::read(pid, "cpu", "cpu.max").as_deref(),
            Some("50000 100000")
        );
        assert_eq!(
            cgroup::read(pid, "cpuset", "cpuset.cpus").as_deref(),
            Some("0")
        );
    } else {
        assert_eq!(
            cgroup::read(pid, "cpu", "cpu.shares").as_deref(),
            Some("512")
        );
        assert_eq!(
            cgroup::read(pid, "cpu", "cpu.cfs_quota_us").as_deref(),
            Some("50000")
        );
        assert_eq!(
            cgroup::read(pid, "cpu", "cpu.cfs_period_us").as_deref(),
            Some("100000")
        );
        assert_eq!(
            cgroup::read(pid, "cpuset", "cpuset.cpus").as_deref(),
            Some("0")
        );
        assert_eq!(
            cgroup::read(pid, "cpuset", "cpuset.mems").as_deref(),
            Some("0")
        );
    }
    let allowed = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let l = allowed
        .lines()
        .find(|l| l.starts_with("Cpus_allowed_list:"))
        .unwrap();
    assert_eq!(l.split_whitespace().nth(1), Some("0"), "{l}");
}

/// Removes the test's own parent cgroup (runc leaves parents of a cgroupsPath to the
/// caller) however the test ends; waits a little for the runtime to remove the child.
struct ParentCgroup(String);

impl Drop for ParentCgroup {
    fn drop(&mut self) {
        let name = self.0.clone();
        let _ = wait_for(Duration::from_secs(5), || {
            let dirs = leaks::cgroups_matching(&|n| n == name);
            for d in &dirs {
                let _ = std::fs::remove_dir(d);
            }
            leaks::cgroups_matching(&|n| n == name)
                .is_empty()
                .then_some(())
        });
    }
}

#[test]
fn cgroups_path_absolute_nested() {
    require_root!();
    let parent = unique_id("cg-parent");
    let _parent_guard = ParentCgroup(parent.clone());
    let mut b = Bundle::new(&["sleep", "100"]);
    let id = unique_id("cg-path");
    b.cgroups_path(&format!("/{parent}/{id}"));
    b.resources(json!({"pids": {"limit": 33}}));
    let c = Container::with_id(id.clone(), ROOT, b);
    c.create_start();
    let pid = c.pid();
    let dir = cgroup::dir_of(pid, "pids").unwrap();
    if porta_integration::is_porta() {
        // Porta puts the container's processes in the `payload/` leaf of the container's
        // group; the config's pids limit is on that leaf.
        assert!(
            dir.ends_with(format!("{parent}/{id}/payload")),
            "{}",
            dir.display()
        );
    } else {
        assert!(dir.ends_with(format!("{parent}/{id}")), "{}", dir.display());
    }
    assert_eq!(
        std::fs::read_to_string(dir.join("pids.max"))
            .unwrap()
            .trim(),
        "33"
    );
    c.rt(&["delete", "--force", &c.id]).expect_ok();
    assert!(
        wait_for(Duration::from_secs(5), || (!dir.exists()).then_some(())).is_some(),
        "cgroup {} left after delete",
        dir.display()
    );
    let left = leaks::cgroups_matching(&|n| n == id);
    assert!(
        left.is_empty(),
        "the container's cgroup is left in other hierarchies: {left:?}"
    );
}

#[test]
fn processes_stay_in_container_cgroup() {
    require_root!();
    let mut b = Bundle::new(&[]);
    b.sh("sleep 100 & sleep 100");
    let c = Container::new("cg-procs", b);
    c.create_start();
    let pid = c.pid();
    let dir = cgroup::dir_of(pid, "pids").unwrap();
    assert!(
        dir.display().to_string().contains(&c.id),
        "cgroup not named after the id: {}",
        dir.display()
    );
    let procs = wait_for(Duration::from_secs(5), || {
        let p = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
        (p.lines().count() >= 2).then_some(p)
    });
    assert!(procs.is_some(), "children not in the container's cgroup");
    // exec'd processes join it too
    let o = c.exec(&[], &["cat", "/proc/self/cgroup"]);
    o.expect_ok();
    assert!(o.stdout.contains(&c.id), "{o}");
}

/// Thaws and removes a group the test made itself, however the test ends.
struct FrozenGroup(std::path::PathBuf);

impl Drop for FrozenGroup {
    fn drop(&mut self) {
        let _ = std::fs::write(self.0.join("freezer.state"), "THAWED");
        let _ = std::fs::write(self.0.join("cgroup.freeze"), "0");
        cgroup::remove_tree(&self.0);
    }
}

/// As runc: a cgroupsPath naming a group that exists and is frozen is refused at create
/// with an error saying so (Porta used to hang, its first process frozen), and nothing
/// of the container is left.
#[test]
fn frozen_cgroup_refused_at_create() {
    require_root!();
    let id = unique_id("cg-frozen");
    // the freezer: the v1 hierarchy when there is one, else cgroup v2's cgroup.freeze
    let v1 = std::path::Path::new(cgroup::MNT).join("freezer");
    let (dir, file, value) = if v1.join("freezer.state").exists() || v1.is_dir() {
        (v1.join(&id), "freezer.state", "FROZEN")
    } else if cgroup::is_unified() {
        (
            std::path::Path::new(cgroup::MNT).join(&id),
            "cgroup.freeze",
            "1",
        )
    } else {
        skip("no freezer on this host");
        return;
    };
    std::fs::create_dir(&dir).unwrap();
    let _guard = FrozenGroup(dir.clone());
    std::fs::write(dir.join(file), value).unwrap();
    let mut b = Bundle::new(&["true"]);
    b.cgroups_path(&format!("/{id}"));
    let c = Container::with_id(id.clone(), ROOT, b);
    let o = c.create();
    assert_ne!(o.code, 0, "create in a frozen cgroup succeeded: {o}");
    assert_ne!(o.code, -1, "create in a frozen cgroup hung: {o}");
    assert!(o.stderr.contains("frozen"), "{o}");
    assert!(c.status().is_none(), "a container was left: {o}");
    // nothing below the group the test made
    let below: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
        .map(|e| e.path())
        .collect();
    assert!(below.is_empty(), "left below the frozen group: {below:?}");
}

/// A cgroup v1 hierarchy's mount point for `controller`, if the host has one.
fn v1_mount(controller: &str) -> Option<std::path::PathBuf> {
    if cgroup::is_unified() {
        return None;
    }
    let d = std::path::Path::new(cgroup::MNT).join(controller);
    d.join("cgroup.procs").exists().then_some(d)
}

/// The major:minor of a whole block device of this host (for blkio throttles), if any.
fn a_block_device() -> Option<String> {
    let mut names: Vec<String> = std::fs::read_dir("/sys/block")
        .ok()?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with("loop") && !n.starts_with("ram"))
        .collect();
    names.sort();
    names.into_iter().find_map(|n| {
        std::fs::read_to_string(format!("/sys/block/{n}/dev"))
            .ok()
            .map(|s| s.trim().to_string())
    })
}

/// Reads `<mount>/<rel>/<file>`, trimmed (None when absent).
fn read_cg(mount: &std::path::Path, rel: &str, file: &str) -> Option<String> {
    std::fs::read_to_string(mount.join(rel).join(file))
        .ok()
        .map(|s| s.trim().to_string())
}

/// The lines of a devices.list, as a sorted set.
fn device_set(text: &str) -> Vec<String> {
    let mut v: Vec<String> = text.lines().map(|l| l.trim().to_string()).collect();
    v.sort();
    v.dedup();
    v
}

/// Every resource of the OCI spec this host's cgroup v1 controllers have is set, and each
/// reads back from the configured path (and, for the limits Porta mirrors there, from
/// `payload/`) as runc writes it: the values below are those runc 1.1.5 leaves in the
/// same files. The differences are asserted on purpose (docs/architecture.md, "What a
/// tool reading the configured path sees"): Porta's group pids.max is the limit + 64.
/// Then `update` of each updatable limit reads back the same way.
#[test]
fn every_limit_reads_back_from_the_configured_path_as_runc_writes_it() {
    require_root!();
    let (Some(memory), Some(cpu), Some(cpuset), Some(pids), Some(devices)) = (
        v1_mount("memory"),
        v1_mount("cpu"),
        v1_mount("cpuset"),
        v1_mount("pids"),
        v1_mount("devices"),
    ) else {
        skip("not a cgroup v1 or hybrid host with memory, cpu, cpuset, pids and devices (v2: porta-cgroups' v2_fake_tests)");
        return;
    };
    let parent = unique_id("cg-every");
    let _parent_guard = ParentCgroup(parent.clone());
    let id = unique_id("cg-every-c");
    let rel = format!("{parent}/{id}");
    // Realtime needs a budget in the parent: the test's own parent group gets one.
    let realtime = cpu.join("cpu.rt_runtime_us").exists();
    if realtime {
        std::fs::create_dir(cpu.join(&parent)).unwrap();
        std::fs::write(cpu.join(&parent).join("cpu.rt_runtime_us"), "20000").unwrap();
    }
    let swap = memory.join("memory.memsw.limit_in_bytes").exists();
    let blkio = v1_mount("blkio").filter(|b| b.join("blkio.throttle.read_bps_device").exists());
    let dev = a_block_device();
    let mut cpu_res =
        json!({"shares": 512, "quota": 50000, "period": 100000, "cpus": "0", "mems": "0"});
    if realtime {
        cpu_res["realtimeRuntime"] = json!(10000);
        cpu_res["realtimePeriod"] = json!(1000000);
    }
    // cpu.burst (OCI 1.1): runc 1.1 does not know the field and leaves the file at 0.
    let burst = cpu.join("cpu.cfs_burst_us").exists();
    if burst {
        cpu_res["burst"] = json!(20000);
    }
    let mut mem = json!({"limit": 67108864, "reservation": 33554432, "swappiness": 20, "disableOOMKiller": true});
    if swap {
        mem["swap"] = json!(134217728);
    }
    let mut res = json!({
        "memory": mem,
        "cpu": cpu_res,
        "pids": {"limit": 77},
        "devices": [
            {"allow": false, "access": "rwm"},
            {"allow": true, "type": "c", "major": 1, "minor": 3, "access": "rwm"},
            {"allow": true, "type": "c", "major": 1, "minor": 5, "access": "rw"}
        ]
    });
    if let (Some(_), Some(d)) = (&blkio, &dev) {
        let (ma, mi) = d.split_once(':').unwrap();
        let (ma, mi): (i64, i64) = (ma.parse().unwrap(), mi.parse().unwrap());
        let t = |rate: u64| json!([{"major": ma, "minor": mi, "rate": rate}]);
        res["blockIO"] = json!({
            "throttleReadBpsDevice": t(1048576), "throttleWriteBpsDevice": t(2097152),
            "throttleReadIOPSDevice": t(100), "throttleWriteIOPSDevice": t(200)
        });
        res["devices"]
            .as_array_mut()
            .unwrap()
            .push(json!({"allow": true, "type": "b", "major": ma, "minor": mi, "access": "r"}));
    }
    let mut b = Bundle::new(&["sleep", "1000"]);
    b.cgroups_path(&format!("/{rel}"));
    b.resources(res);
    let c = Container::with_id(id.clone(), ROOT, b);
    c.create_start();
    let porta = is_porta();
    let payload = format!("{rel}/payload");

    // (mount, file, value at the configured path, value in payload/ (Porta) or None)
    let mut want: Vec<(&std::path::Path, &str, String, Option<String>)> = vec![
        (
            &memory,
            "memory.limit_in_bytes",
            "67108864".into(),
            Some("67108864".into()),
        ),
        (
            &memory,
            "memory.soft_limit_in_bytes",
            "33554432".into(),
            Some("33554432".into()),
        ),
        (&memory, "memory.swappiness", "20".into(), Some("20".into())),
        (&cpu, "cpu.shares", "512".into(), Some("512".into())),
        (
            &cpu,
            "cpu.cfs_quota_us",
            "50000".into(),
            Some("50000".into()),
        ),
        (
            &cpu,
            "cpu.cfs_period_us",
            "100000".into(),
            Some("100000".into()),
        ),
        (&cpuset, "cpuset.cpus", "0".into(), Some("0".into())),
        (&cpuset, "cpuset.mems", "0".into(), Some("0".into())),
        // Porta: the group holds the limit + 64 for the file server, payload/ the limit.
        (
            &pids,
            "pids.max",
            if porta { "141" } else { "77" }.into(),
            Some("77".into()),
        ),
    ];
    if swap {
        want.push((
            &memory,
            "memory.memsw.limit_in_bytes",
            "134217728".into(),
            Some("134217728".into()),
        ));
    }
    if burst {
        let v = if porta { "20000" } else { "0" };
        want.push((&cpu, "cpu.cfs_burst_us", v.into(), Some(v.into())));
    }
    if realtime {
        want.push((
            &cpu,
            "cpu.rt_runtime_us",
            "10000".into(),
            Some("10000".into()),
        ));
        want.push((
            &cpu,
            "cpu.rt_period_us",
            "1000000".into(),
            Some("1000000".into()),
        ));
    }
    if let (Some(bk), Some(d)) = (&blkio, &dev) {
        for (f, v) in [
            ("blkio.throttle.read_bps_device", "1048576"),
            ("blkio.throttle.write_bps_device", "2097152"),
            ("blkio.throttle.read_iops_device", "100"),
            ("blkio.throttle.write_iops_device", "200"),
        ] {
            // Throttles are hierarchical: on the group only (payload/ reads empty).
            want.push((bk, f, format!("{d} {v}"), None));
        }
    }
    let mut bad = Vec::new();
    for (m, f, group, leaf) in &want {
        let got = read_cg(m, &rel, f);
        if got.as_deref() != Some(group.as_str()) {
            bad.push(format!("{rel}/{f}: {got:?}, want {group}"));
        }
        if let (true, Some(l)) = (porta, leaf) {
            let got = read_cg(m, &payload, f);
            if got.as_deref() != Some(l.as_str()) {
                bad.push(format!("{payload}/{f}: {got:?}, want {l}"));
            }
        }
    }
    let oom = read_cg(&memory, &rel, "memory.oom_control").unwrap_or_default();
    if !oom.lines().any(|l| l == "oom_kill_disable 1") {
        bad.push(format!(
            "{rel}/memory.oom_control: {oom:?}, want oom_kill_disable 1"
        ));
    }
    // devices: the config's rules and runc's default ones (no /dev/console 5:1: Porta's
    // console is a pty, 136:*), on the group and on payload/.
    let mut dev_want: Vec<String> = [
        "b *:* m",
        "c *:* m",
        "c 1:3 rwm",
        "c 1:5 rwm",
        "c 1:7 rwm",
        "c 1:8 rwm",
        "c 1:9 rwm",
        "c 5:0 rwm",
        "c 5:2 rwm",
        "c 10:200 rwm",
        "c 136:* rwm",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if let (Some(_), Some(d)) = (&blkio, &dev) {
        dev_want.push(format!("b {d} r"));
    }
    dev_want.sort();
    let mut places = vec![rel.clone()];
    if porta {
        places.push(payload.clone());
    }
    for p in &places {
        let got = device_set(&read_cg(&devices, p, "devices.list").unwrap_or_default());
        if got != dev_want {
            bad.push(format!("{p}/devices.list: {got:?}, want {dev_want:?}"));
        }
    }
    assert!(
        bad.is_empty(),
        "limits that do not read back:\n{}",
        bad.join("\n")
    );

    // update: each updatable limit, read back the same way.
    let mut args: Vec<String> = [
        "update",
        "--memory",
        "50331648",
        "--memory-reservation",
        "25165824",
        "--cpu-share",
        "256",
        "--cpu-quota",
        "40000",
        "--cpu-period",
        "80000",
        "--cpuset-cpus",
        "0",
        "--cpuset-mems",
        "0",
        "--pids-limit",
        "55",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if swap {
        args.extend(["--memory-swap".into(), "100663296".into()]);
    }
    if realtime {
        args.extend([
            "--cpu-rt-period".into(),
            "900000".into(),
            "--cpu-rt-runtime".into(),
            "5000".into(),
        ]);
    }
    args.push(id.clone());
    c.rt(&args.iter().map(String::as_str).collect::<Vec<_>>())
        .expect_ok();
    let mut want: Vec<(&std::path::Path, &str, &str, &str)> = vec![
        (&memory, "memory.limit_in_bytes", "50331648", "50331648"),
        (
            &memory,
            "memory.soft_limit_in_bytes",
            "25165824",
            "25165824",
        ),
        (&cpu, "cpu.shares", "256", "256"),
        (&cpu, "cpu.cfs_quota_us", "40000", "40000"),
        (&cpu, "cpu.cfs_period_us", "80000", "80000"),
        (&cpuset, "cpuset.cpus", "0", "0"),
        (&cpuset, "cpuset.mems", "0", "0"),
        (&pids, "pids.max", if porta { "119" } else { "55" }, "55"),
    ];
    if swap {
        want.push((
            &memory,
            "memory.memsw.limit_in_bytes",
            "100663296",
            "100663296",
        ));
    }
    if realtime {
        want.push((&cpu, "cpu.rt_period_us", "900000", "900000"));
        want.push((&cpu, "cpu.rt_runtime_us", "5000", "5000"));
    }
    let mut bad = Vec::new();
    for (m, f, group, leaf) in &want {
        let got = read_cg(m, &rel, f);
        if got.as_deref() != Some(*group) {
            bad.push(format!("after update {rel}/{f}: {got:?}, want {group}"));
        }
        if porta {
            let got = read_cg(m, &payload, f);
            if got.as_deref() != Some(*leaf) {
                bad.push(format!("after update {payload}/{f}: {got:?}, want {leaf}"));
            }
        }
    }
    // update leaves the device rules alone.
    let got = device_set(&read_cg(&devices, &rel, "devices.list").unwrap_or_default());
    if got != dev_want {
        bad.push(format!("after update {rel}/devices.list: {got:?}"));
    }
    assert!(
        bad.is_empty(),
        "updated limits that do not read back:\n{}",
        bad.join("\n")
    );
    c.rt(&["delete", "--force", &c.id]).expect_ok();
}

/// Hugepage limits. Where hugetlb is a cgroup v1 controller they read back there (both
/// runtimes). On a hybrid host whose hugetlb controller is on the cgroup2 hierarchy, runc
/// 1.1 refuses the config ("cannot set hugetlb limit"); Porta writes the limit to the
/// group in the cgroup2 hierarchy, where it reads back.
#[test]
fn hugepage_limits_read_back() {
    require_root!();
    if !std::path::Path::new("/sys/kernel/mm/hugepages/hugepages-2048kB").exists() {
        skip("no 2MB huge pages on this host");
        return;
    }
    let unified = std::path::Path::new(cgroup::MNT).join("unified");
    let (mount, file) = if let Some(m) = v1_mount("hugetlb") {
        (m, "hugetlb.2MB.limit_in_bytes")
    } else if cgroup::is_unified() {
        (std::path::PathBuf::from(cgroup::MNT), "hugetlb.2MB.max")
    } else if read_cg(&unified, "", "cgroup.controllers").is_some_and(|c| c.contains("hugetlb")) {
        (unified, "hugetlb.2MB.max")
    } else {
        skip("no hugetlb controller on this host");
        return;
    };
    let id = unique_id("cg-huge");
    let mut b = Bundle::new(&["sleep", "1000"]);
    b.cgroups_path(&format!("/{id}"));
    b.resources(json!({"hugepageLimits": [{"pageSize": "2MB", "limit": 4194304}]}));
    let c = Container::with_id(id.clone(), ROOT, b);
    let o = c.create();
    let hybrid_v2 = !cgroup::is_unified() && v1_mount("hugetlb").is_none();
    if hybrid_v2 && !is_porta() {
        assert_ne!(
            o.code, 0,
            "runc 1.1 set a cgroup2 hugetlb limit on a hybrid host: {o}"
        );
        assert!(o.stderr.contains("hugetlb"), "{o}");
        return;
    }
    o.expect_ok();
    assert_eq!(read_cg(&mount, &id, file).as_deref(), Some("4194304"));
    c.rt(&["delete", "--force", &c.id]).expect_ok();
}

/// `linux.resources.unified` on a hybrid host: runc 1.1 refuses any entry ("cannot use
/// unified on cgroup v1"). Porta takes the entries of controllers the cgroup2 hierarchy
/// carries (hugetlb on the development machines), which read back there, and refuses the
/// others naming the entry and why; neither leaves anything behind.
#[test]
fn unified_entries_on_a_hybrid_host() {
    require_root!();
    let unified = std::path::Path::new(cgroup::MNT).join("unified");
    let v2_hugetlb = !cgroup::is_unified()
        && read_cg(&unified, "", "cgroup.controllers").is_some_and(|c| c.contains("hugetlb"))
        && v1_mount("memory").is_some();
    if !v2_hugetlb {
        skip("not a hybrid host with hugetlb on cgroup2 and memory on v1 (v2: porta-cgroups' v2_fake_tests)");
        return;
    }
    // A v1 controller's entry: refused by both.
    let id = unique_id("cg-unified-mem");
    let mut b = Bundle::new(&["sleep", "1000"]);
    b.cgroups_path(&format!("/{id}"));
    b.resources(json!({"unified": {"memory.high": "50331648"}}));
    let c = Container::with_id(id.clone(), ROOT, b);
    let o = c.create();
    assert_ne!(o.code, 0, "{o}");
    if is_porta() {
        assert!(
            o.stderr.contains("memory.high") && o.stderr.contains("cgroup v1"),
            "{o}"
        );
    } else {
        assert!(o.stderr.contains("cannot use unified"), "{o}");
    }
    assert_eq!(c.status(), None, "state left behind");
    assert!(
        leaks::cgroups_matching(&|n| n == id).is_empty(),
        "cgroup left behind"
    );

    // A cgroup2 controller's entry: Porta writes it, runc 1.1 refuses the config.
    let id = unique_id("cg-unified-huge");
    let mut b = Bundle::new(&["sleep", "1000"]);
    b.cgroups_path(&format!("/{id}"));
    b.resources(json!({"unified": {"hugetlb.2MB.max": "4194304"}}));
    let c = Container::with_id(id.clone(), ROOT, b);
    let o = c.create();
    if !is_porta() {
        assert_ne!(o.code, 0, "{o}");
        assert!(o.stderr.contains("cannot use unified"), "{o}");
        return;
    }
    o.expect_ok();
    assert_eq!(
        read_cg(&unified, &id, "hugetlb.2MB.max").as_deref(),
        Some("4194304")
    );
    c.rt(&["delete", "--force", &c.id]).expect_ok();
}
