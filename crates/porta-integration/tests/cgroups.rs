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
        // group (shared/DESIGN.md section 3); the config's pids limit is on that leaf.
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
