//! Life cycle commands as runc has them: create/start/state, run, list, ps, kill,
//! delete, pause/resume, events, update, spec, features, --version, --log, --pid-file.

use porta_integration::*;
use std::time::Duration;

const LOOP: &str = "trap 'exit 3' TERM; while true; do sleep 0.1; done";

#[test]
fn create_start_state_statuses() {
    require_root!();
    let mut b = Bundle::new(&[]);
    b.sh("echo started; sleep 0.5");
    b.annotation("org.example.key", "value");
    let c = Container::new("life-status", b);
    c.create().expect_ok();
    let st = c.state();
    assert_eq!(st["status"], "created", "{st}");
    assert_eq!(st["id"], c.id.as_str());
    assert!(st["pid"].as_i64().unwrap_or(0) > 0, "{st}");
    assert!(st["ociVersion"].is_string(), "{st}");
    let bundle = st["bundle"].as_str().unwrap_or_default().to_string();
    assert_eq!(
        std::fs::canonicalize(&bundle).unwrap(),
        std::fs::canonicalize(c.bundle.path()).unwrap()
    );
    assert_eq!(st["annotations"]["org.example.key"], "value", "{st}");
    // The process must not have run its program yet.
    assert!(!c.output().contains("started"));
    c.start().expect_ok();
    let s = c.status().unwrap();
    assert!(s == "running" || s == "stopped", "status after start: {s}");
    c.wait_stopped(20);
    assert!(c.output().contains("started"));
    // Starting a stopped container fails.
    c.start().expect_fail();
    c.delete().expect_ok();
    c.rt(&["state", &c.id]).expect_fail();
}

#[test]
fn run_propagates_exit_code() {
    require_root!();
    let mut b = Bundle::new(&[]);
    b.sh("echo out-line; exit 7");
    let c = Container::new("life-exit", b);
    let o = c.run();
    assert_eq!(o.code, 7, "{o}");
    assert!(c.output().contains("out-line"), "{}", c.output());
    // run removes the container afterwards
    c.rt(&["state", &c.id]).expect_fail();
}

#[test]
fn run_exit_zero_and_one() {
    require_root!();
    let c = Container::new("life-run0", Bundle::new(&["true"]));
    assert_eq!(c.run().code, 0);
    // (a container's PID 1 cannot kill itself with a signal; see kill_by_name_and_number
    // for 128+signal exit codes)
    let c = Container::new("life-runfalse", Bundle::new(&["false"]));
    assert_eq!(c.run().code, 1);
}

#[test]
fn run_detach() {
    require_root!();
    let mut b = Bundle::new(&[]);
    b.sh("echo detached-ok; sleep 1");
    let c = Container::new("life-detach", b);
    c.run_with(&["--detach"]).expect_ok();
    let s = c.status().expect("state after run --detach");
    assert!(s == "running" || s == "stopped", "{s}");
    c.wait_stopped(20);
    assert!(c.wait_output("detached-ok", 5));
    c.delete().expect_ok();
}

#[test]
fn list_formats() {
    require_root!();
    let c = Container::new("life-list", Bundle::new(&["sleep", "100"]));
    c.create().expect_ok();
    let t = rt(&["list"]);
    t.expect_ok();
    let header = t.stdout.lines().next().unwrap_or_default();
    for col in ["ID", "PID", "STATUS", "BUNDLE", "CREATED", "OWNER"] {
        assert!(header.contains(col), "table header lacks {col}: {t}");
    }
    let line = t
        .stdout
        .lines()
        .find(|l| l.starts_with(&c.id))
        .unwrap_or_else(|| panic!("{t}"));
    assert!(line.contains("created"), "{line}");
    let j = rt(&["list", "--format", "json"]);
    j.expect_ok();
    let v = j.json();
    let me = v
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["id"] == c.id.as_str())
        .unwrap_or_else(|| panic!("{j}"));
    assert_eq!(me["status"], "created");
    assert!(me["pid"].as_i64().unwrap() > 0);
    assert!(me["bundle"].is_string());
    let q = rt(&["list", "-q"]);
    q.expect_ok();
    assert!(q.stdout.lines().any(|l| l.trim() == c.id), "{q}");
    assert!(q.stdout.lines().all(|l| !l.contains(' ')), "{q}");
}

#[test]
fn ps_json() {
    require_root!();
    let mut b = Bundle::new(&[]);
    b.sh("sleep 100 & sleep 100 & wait");
    let c = Container::new("life-ps", b);
    c.create_start();
    let pid = c.pid();
    let pids = wait_for(Duration::from_secs(10), || {
        let a = ps_pids(&c);
        (a.len() >= 3).then_some(a)
    })
    .expect("ps shows init and two children");
    assert!(pids.contains(&(pid as i64)), "{pids:?} lacks {pid}");
    let table = c.rt(&["ps", &c.id]);
    table.expect_ok();
    assert!(table.stdout.contains("sleep"), "{table}");
}

#[test]
fn ps_passes_options_to_ps() {
    require_root!();
    let mut b = Bundle::new(&[]);
    b.sh("sleep 100 & wait");
    let c = Container::new("life-psopts", b);
    c.create_start();
    let pids: Vec<i64> = wait_for(Duration::from_secs(10), || {
        let a = ps_pids(&c);
        (a.len() >= 2).then_some(a)
    })
    .expect("ps --format json lists the shell and its sleep");
    let o = c.rt(&["ps", &c.id, "--", "-o", "pid,comm"]);
    o.expect_ok();
    let mut lines = o.stdout.lines();
    let header: Vec<&str> = lines
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(header, ["PID", "COMMAND"], "{o}");
    let rows: Vec<(i64, String)> = lines
        .map(|l| {
            let mut f = l.split_whitespace();
            let pid = f.next().unwrap().parse().unwrap();
            (pid, f.collect::<Vec<_>>().join(" "))
        })
        .collect();
    assert!(rows.iter().any(|(_, cmd)| cmd == "sleep"), "{o}");
    // Only the container's processes: no host process, no file server.
    let servers: Vec<i64> = c.state()["servers"]
        .as_array()
        .map(|a| a.iter().filter_map(|s| s["pid"].as_i64()).collect())
        .unwrap_or_default();
    for (pid, _) in &rows {
        assert!(
            pids.contains(pid),
            "{pid} is not the container's ({pids:?}): {o}"
        );
        assert!(!servers.contains(pid), "{pid} is a file server: {o}");
    }
    assert_eq!(rows.len(), pids.len(), "{o}");
    let aux = c.rt(&["ps", &c.id, "aux"]);
    aux.expect_ok();
    assert!(
        aux.stdout
            .lines()
            .next()
            .unwrap_or_default()
            .contains("PID"),
        "{aux}"
    );
    assert!(aux.stdout.contains("sleep 100"), "{aux}");
    assert_eq!(aux.stdout.lines().count(), pids.len() + 1, "{aux}");
    let no_pid = c.rt(&["ps", &c.id, "--", "-o", "comm"]);
    no_pid.expect_fail();
    assert!(no_pid.stderr.contains("PID column"), "{no_pid}");
}

fn kill_and_expect(sig: &str, code: i32) {
    let mut b = Bundle::new(&[]);
    b.sh(LOOP);
    let c = std::sync::Arc::new(Container::new("life-kill", b));
    let c2 = c.clone();
    let h = std::thread::spawn(move || c2.run());
    assert!(
        wait_for(Duration::from_secs(20), || (c.status().as_deref()
            == Some("running"))
        .then_some(()))
        .is_some(),
        "container never ran"
    );
    std::thread::sleep(Duration::from_millis(300)); // let the shell install its trap
    c.kill(sig).expect_ok();
    let o = h.join().unwrap();
    assert_eq!(o.code, code, "after kill {sig}: {o}");
}

#[test]
fn kill_by_name_and_number() {
    require_root!();
    kill_and_expect("TERM", 3);
    kill_and_expect("SIGTERM", 3);
    kill_and_expect("15", 3);
    kill_and_expect("KILL", 137);
    kill_and_expect("9", 137);
}

#[test]
fn kill_default_is_sigterm() {
    require_root!();
    let mut b = Bundle::new(&[]);
    b.sh(LOOP);
    let c = Container::new("life-killdef", b);
    c.create_start();
    std::thread::sleep(Duration::from_millis(300));
    c.rt(&["kill", &c.id]).expect_ok();
    c.wait_stopped(20);
}

#[test]
fn kill_all() {
    require_root!();
    let mut b = Bundle::new(&[]);
    b.sh("sleep 1000 & sleep 1000 & wait");
    let c = Container::new("life-killall", b);
    c.create_start();
    let pids = wait_for(Duration::from_secs(10), || {
        let a: Vec<i32> = ps_pids(&c).into_iter().map(|x| x as i32).collect();
        (a.len() >= 3).then_some(a)
    })
    .unwrap();
    c.rt(&["kill", "--all", &c.id, "KILL"]).expect_ok();
    c.wait_stopped(20);
    let gone = wait_for(Duration::from_secs(10), || {
        pids.iter().all(|p| !pid_alive(*p)).then_some(())
    });
    assert!(gone.is_some(), "processes left after kill --all: {pids:?}");
}

#[test]
fn delete_semantics() {
    require_root!();
    // created: delete without --force works
    let c = Container::new("life-delc", Bundle::new(&["sleep", "100"]));
    c.create().expect_ok();
    let pid = c.pid();
    c.delete().expect_ok();
    assert!(wait_for(Duration::from_secs(10), || (!pid_alive(pid)).then_some(())).is_some());
    c.rt(&["state", &c.id]).expect_fail();

    // running: delete fails, delete --force works and kills it
    let c = Container::new("life-delr", Bundle::new(&["sleep", "100"]));
    c.create_start();
    let pid = c.pid();
    c.delete().expect_fail();
    assert_eq!(c.status().as_deref(), Some("running"));
    c.rt(&["delete", "--force", &c.id]).expect_ok();
    assert!(wait_for(Duration::from_secs(10), || (!pid_alive(pid)).then_some(())).is_some());
    c.rt(&["state", &c.id]).expect_fail();

    // delete of an unknown id fails; with --force it succeeds
    rt(&["delete", "pit-no-such-container"]).expect_fail();
    rt(&["delete", "--force", "pit-no-such-container"]).expect_ok();
}

#[test]
fn delete_half_made() {
    require_root!();
    // init killed from outside before start
    let c = Container::new("life-half1", Bundle::new(&["sleep", "100"]));
    c.create().expect_ok();
    let pid = c.pid();
    // SAFETY: kill(2) takes integers only; no memory is involved.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    assert!(wait_for(Duration::from_secs(10), || (!pid_alive(pid)).then_some(())).is_some());
    c.wait_stopped(10);
    c.delete().expect_ok();
    c.rt(&["state", &c.id]).expect_fail();

    // a state directory without state (an aborted create): delete --force cleans it
    let id = unique_id("life-half2");
    let dir = std::path::Path::new(ROOT).join(&id);
    std::fs::create_dir_all(&dir).unwrap();
    rt(&["delete", "--force", &id]).expect_ok();
    assert!(!dir.exists(), "{} left after delete --force", dir.display());
}

#[test]
fn pause_resume() {
    require_root!();
    let mut b = Bundle::new(&[]);
    b.sh("i=0; while true; do i=$((i+1)); echo $i > /tmp/count; sleep 0.05; done");
    let c = Container::new("life-pause", b);
    c.create_start();
    let count = c.bundle.rootfs().join("tmp/count");
    let read = || std::fs::read_to_string(&count).unwrap_or_default();
    assert!(wait_for(Duration::from_secs(10), || (!read().is_empty())
        .then_some(()))
    .is_some());
    c.rt(&["pause", &c.id]).expect_ok();
    assert_eq!(c.status().as_deref(), Some("paused"));
    let st = c.state();
    assert_eq!(st["status"], "paused");
    std::thread::sleep(Duration::from_millis(200));
    let a = read();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(a, read(), "counter moved while paused");
    // delete without force of a paused container fails
    c.delete().expect_fail();
    c.rt(&["resume", &c.id]).expect_ok();
    assert_eq!(c.status().as_deref(), Some("running"));
    let a = read();
    assert!(
        wait_for(Duration::from_secs(5), || (read() != a).then_some(())).is_some(),
        "counter did not move after resume"
    );
}

#[test]
fn events_stats() {
    require_root!();
    let c = Container::new("life-events", Bundle::new(&["sleep", "100"]));
    c.create_start();
    let o = c.rt(&["events", "--stats", &c.id]);
    o.expect_ok();
    let line = o
        .stdout
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or_else(|| panic!("{o}"));
    let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {o}"));
    assert_eq!(v["type"], "stats", "{v}");
    assert_eq!(v["id"], c.id.as_str(), "{v}");
    assert!(v["data"].is_object(), "{v}");
    assert!(
        v["data"]["pids"]["current"].as_u64().unwrap_or(0) >= 1,
        "{v}"
    );
}

#[test]
fn update_pids_and_memory() {
    require_root!();
    let c = Container::new("life-update", Bundle::new(&["sleep", "100"]));
    c.create_start();
    let pid = c.pid();
    c.rt(&["update", "--pids-limit", "57", &c.id]).expect_ok();
    assert_eq!(cgroup::read(pid, "pids", "pids.max").as_deref(), Some("57"));
    c.rt(&["update", "--memory", "96M", "--memory-swap", "96M", &c.id])
        .expect_ok();
    let mem = if cgroup::is_unified() {
        cgroup::read(pid, "memory", "memory.max")
    } else {
        cgroup::read(pid, "memory", "memory.limit_in_bytes")
    };
    assert_eq!(mem.as_deref(), Some("100663296"));
    // resources from a JSON file
    let f = c.bundle.file("res.json");
    std::fs::write(&f, r#"{"pids": {"limit": 61}}"#).unwrap();
    c.rt(&["update", "-r", f.to_str().unwrap(), &c.id])
        .expect_ok();
    assert_eq!(cgroup::read(pid, "pids", "pids.max").as_deref(), Some("61"));
    // and from stdin
    let o = c
        .cmd()
        .args(["update", "-r", "-", &c.id])
        .stdin(r#"{"pids": {"limit": 63}}"#)
        .run();
    o.expect_ok();
    assert_eq!(cgroup::read(pid, "pids", "pids.max").as_deref(), Some("63"));
}

#[test]
fn spec_and_rootless_spec() {
    require_root!();
    let d = tempfile::tempdir().unwrap();
    let o = Cmd::runtime(ROOT).arg("spec").cwd(d.path()).run();
    o.expect_ok();
    let v: Value =
        serde_json::from_slice(&std::fs::read(d.path().join("config.json")).unwrap()).unwrap();
    assert!(v["ociVersion"].as_str().unwrap().starts_with("1."), "{v}");
    assert_eq!(v["root"]["path"], "rootfs");
    assert!(v["process"]["args"].is_array());
    assert!(v["linux"]["namespaces"]
        .as_array()
        .unwrap()
        .iter()
        .any(|n| n["type"] == "mount"));
    // refuses to overwrite
    Cmd::runtime(ROOT)
        .arg("spec")
        .cwd(d.path())
        .run()
        .expect_fail();

    let d2 = tempfile::tempdir().unwrap();
    let b = d2.path().display().to_string();
    rt(&["spec", "--rootless", "--bundle", &b]).expect_ok();
    let v: Value =
        serde_json::from_slice(&std::fs::read(d2.path().join("config.json")).unwrap()).unwrap();
    assert!(
        v["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["type"] == "user"),
        "{v}"
    );
    assert!(
        v["linux"]["uidMappings"]
            .as_array()
            .map(|a| !a.is_empty())
            .unwrap_or(false),
        "{v}"
    );
}

#[test]
fn spec_output_runs() {
    require_root!();
    // the config `spec` writes, with args and terminal changed, runs a container
    let b = Bundle::new(&[]);
    rt(&["spec", "--bundle", &b.path_str()]).expect_ok();
    let mut v: Value =
        serde_json::from_slice(&std::fs::read(b.file("config.json")).unwrap()).unwrap();
    v["process"]["args"] = json!(["sh", "-c", "echo from-spec"]);
    v["process"]["terminal"] = json!(false);
    let mut b = b;
    b.config = v;
    let c = Container::new("life-spec", b);
    let o = c.run();
    assert_eq!(o.code, 0, "{o}");
    assert!(c.output().contains("from-spec"));
}

#[test]
fn features_json() {
    require_root!();
    let o = rt(&["features"]);
    o.expect_ok();
    let v = o.json();
    assert!(v["ociVersionMin"].is_string(), "{v}");
    assert!(v["ociVersionMax"].is_string(), "{v}");
    let hooks: Vec<&str> = v["hooks"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|h| h.as_str())
        .collect();
    for h in [
        "prestart",
        "createRuntime",
        "createContainer",
        "startContainer",
        "poststart",
        "poststop",
    ] {
        assert!(hooks.contains(&h), "features lacks hook {h}: {v}");
    }
    assert!(v["mountOptions"].is_array(), "{v}");
    let ns: Vec<&str> = v["linux"]["namespaces"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|h| h.as_str())
        .collect();
    for n in ["pid", "network", "ipc", "uts", "mount", "user", "cgroup"] {
        assert!(ns.contains(&n), "features lacks namespace {n}: {v}");
    }
    assert!(v["linux"]["capabilities"].is_array(), "{v}");
}

#[test]
fn version() {
    require_root!();
    let o = rt(&["--version"]);
    o.expect_ok();
    assert!(o.stdout.contains("version"), "{o}");
    assert!(o.stdout.contains("spec"), "{o}");
}

#[test]
fn log_json_lines() {
    require_root!();
    let d = tempfile::tempdir().unwrap();
    let log = d.path().join("log.json");
    let l = log.display().to_string();
    let o = rt(&[
        "--log",
        &l,
        "--log-format",
        "json",
        "state",
        "pit-does-not-exist",
    ]);
    o.expect_fail();
    let text = std::fs::read_to_string(&log).expect("log file written");
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty(), "empty log");
    for line in &lines {
        let v: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("log line not JSON ({e}): {line}"));
        assert!(
            v["level"].is_string() && v["msg"].is_string() && v["time"].is_string(),
            "{line}"
        );
    }
    assert!(lines.iter().any(|l| l.contains("\"error\"")), "{text}");

    // --debug with a successful command writes debug lines that are JSON too
    let log2 = d.path().join("log2.json");
    let l2 = log2.display().to_string();
    let c = Container::new("life-log", Bundle::new(&["true"]));
    let o = c
        .cmd()
        .args([
            "--debug",
            "--log",
            &l2,
            "--log-format",
            "json",
            "run",
            "--bundle",
            &c.bundle.path_str(),
            &c.id,
        ])
        .run();
    o.expect_ok();
    if let Ok(text) = std::fs::read_to_string(&log2) {
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let v: Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("log line not JSON ({e}): {line}"));
            assert!(v["level"].is_string() && v["msg"].is_string(), "{line}");
        }
    }
}

#[test]
fn pid_file() {
    require_root!();
    let c = Container::new("life-pidf", Bundle::new(&["sleep", "100"]));
    let pf = c.bundle.file("init.pid");
    c.create_with(&["--pid-file", pf.to_str().unwrap()])
        .expect_ok();
    let text = std::fs::read_to_string(&pf).expect("pid file");
    let p: i32 = text
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("pid file holds {text:?}"));
    assert_eq!(p, c.pid());
    // relative pid file path is relative to the caller's cwd
    let c2 = Container::new("life-pidf2", Bundle::new(&["sleep", "100"]));
    let o = c2
        .cmd()
        .args([
            "create",
            "--bundle",
            &c2.bundle.path_str(),
            "--pid-file",
            "rel.pid",
            &c2.id,
        ])
        .cwd(c2.bundle.path())
        .run();
    o.expect_ok();
    let text = std::fs::read_to_string(c2.bundle.file("rel.pid")).expect("relative pid file");
    assert_eq!(text.trim().parse::<i32>().unwrap(), c2.pid());
}

#[test]
fn long_root_and_long_id() {
    require_root!();
    // ~80-character --root and a 64-character id: socket paths must still fit
    let mut root = String::from("/run/pit-long-root-");
    while root.len() < 80 {
        root.push('x');
    }
    let mut id = unique_id("long");
    while id.len() < 64 {
        id.push('z');
    }
    id.truncate(64);
    // removes the (then empty) root however the test ends; dropped after the container
    struct RmDir(String);
    impl Drop for RmDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir(&self.0);
        }
    }
    let _root_guard = RmDir(root.clone());
    let mut b = Bundle::new(&[]);
    b.sh("echo long-ok; sleep 100");
    let c = Container::with_id(id.clone(), &root, b);
    c.create().expect_ok();
    c.start().expect_ok();
    assert!(c.wait_output("long-ok", 10));
    assert_eq!(c.state()["id"], id.as_str());
    let o = c.exec(&[], &["echo", "exec-ok"]);
    o.expect_ok();
    assert!(o.stdout.contains("exec-ok"));
    c.kill("KILL").expect_ok();
    c.wait_stopped(10);
    c.delete().expect_ok();
}

#[test]
fn delete_force_paused() {
    require_root!();
    let mut b = Bundle::new(&[]);
    b.sh("sleep 100 & sleep 100");
    let c = Container::new("life-delp", b);
    c.create_start();
    let pid = c.pid();
    c.rt(&["pause", &c.id]).expect_ok();
    c.rt(&["delete", "--force", &c.id]).expect_ok();
    assert!(
        wait_for(Duration::from_secs(10), || (!pid_alive(pid)).then_some(())).is_some(),
        "paused init survived delete --force"
    );
    c.rt(&["state", &c.id]).expect_fail();
    let ids = [c.id.clone()];
    let bundles = [c.bundle.path_str()];
    let ok = wait_for(Duration::from_secs(5), || {
        leaks::check(&ids, &bundles).is_empty().then_some(())
    });
    assert!(ok.is_some(), "{:?}", leaks::check(&ids, &bundles));
}

#[test]
fn global_and_create_flags_accepted() {
    require_root!();
    rt(&["--debug", "list"]).expect_ok();
    rt(&["--rootless", "false", "list"]).expect_ok();
    rt(&["--systemd-cgroup=false", "list", "-q"]).expect_ok();
    let mut b = Bundle::new(&[]);
    b.sh("echo keyring-ok");
    let c = Container::new("life-flags", b);
    c.create_with(&["--no-new-keyring"]).expect_ok();
    c.start().expect_ok();
    c.wait_stopped(10);
    assert!(c.output().contains("keyring-ok"));
    c.delete().expect_ok();
}

#[test]
fn state_json_fields() {
    require_root!();
    let c = Container::new("life-statejson", Bundle::new(&["sleep", "100"]));
    c.create_start();
    let st = c.state();
    for k in ["ociVersion", "id", "status", "pid", "bundle"] {
        assert!(!st[k].is_null(), "state lacks {k}: {st}");
    }
    assert_eq!(st["status"], "running");
    c.kill("KILL").expect_ok();
    c.wait_stopped(10);
    let st = c.state();
    assert_eq!(st["status"], "stopped");
}

#[test]
fn porta_state_directory() {
    require_root!();
    porta_only!("Porta's state layout: <root>/<id>/state.json");
    let c = Container::new("life-statedir", Bundle::new(&["sleep", "100"]));
    c.create().expect_ok();
    let dir = std::path::Path::new(ROOT).join(&c.id);
    let f = dir.join("state.json");
    let text = std::fs::read(&f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
    let _: Value = serde_json::from_slice(&text)
        .unwrap_or_else(|e| panic!("{} is not JSON: {e}", f.display()));
    // written atomically: no temporary files left beside it
    let names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        !names
            .iter()
            .any(|n| n.contains(".tmp") || n.starts_with(".state")),
        "{names:?}"
    );
    c.delete().expect_ok();
    assert!(!dir.exists(), "{} left after delete", dir.display());
}

#[test]
fn porta_default_root_is_run_porta() {
    require_root!();
    porta_only!("Porta's default --root is /run/porta (runc's is /run/runc)");
    let b = Bundle::new(&["sleep", "100"]);
    b.write();
    let id = unique_id("life-defroot");
    let o = Cmd::new(runtime())
        .args(["create", "--bundle", &b.path_str(), &id])
        .run();
    o.expect_ok();
    let exists = std::path::Path::new("/run/porta").join(&id).exists();
    let d = Cmd::new(runtime()).args(["delete", "--force", &id]).run();
    assert!(exists, "no /run/porta/{id} after create without --root");
    d.expect_ok();
    assert!(!std::path::Path::new("/run/porta").join(&id).exists());
}

#[test]
fn update_cpu_flags() {
    require_root!();
    let c = Container::new("life-updcpu", Bundle::new(&["sleep", "100"]));
    c.create_start();
    let pid = c.pid();
    c.rt(&[
        "update",
        "--cpu-period",
        "100000",
        "--cpu-quota",
        "25000",
        "--cpu-share",
        "256",
        "--cpuset-cpus",
        "0",
        &c.id,
    ])
    .expect_ok();
    if cgroup::is_unified() {
        assert_eq!(
            cgroup::read(pid, "cpu", "cpu.max").as_deref(),
            Some("25000 100000")
        );
    } else {
        assert_eq!(
            cgroup::read(pid, "cpu", "cpu.cfs_quota_us").as_deref(),
            Some("25000")
        );
        assert_eq!(
            cgroup::read(pid, "cpu", "cpu.shares").as_deref(),
            Some("256")
        );
    }
    assert_eq!(
        cgroup::read(pid, "cpuset", "cpuset.cpus").as_deref(),
        Some("0")
    );
}

#[test]
fn commands_on_stopped_container() {
    require_root!();
    let c = Container::new("life-stoppedcmds", Bundle::new(&["true"]));
    c.create_start();
    c.wait_stopped(10);
    c.start().expect_fail();
    c.rt(&["pause", &c.id]).expect_fail();
    c.rt(&["resume", &c.id]).expect_fail();
    // the container is still listed as stopped until deleted
    let v = rt(&["list", "--format", "json"]).json();
    let me = v
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["id"] == c.id.as_str())
        .cloned();
    assert_eq!(me.map(|m| m["status"].clone()), Some(json!("stopped")));
    c.delete().expect_ok();
}

/// The container's pids as `ps --format json` lists them (the command must succeed).
fn ps_pids(c: &Container) -> Vec<i64> {
    let o = c.rt(&["ps", "--format", "json", &c.id]);
    o.expect_ok();
    o.json()
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|x| x.as_i64())
        .collect()
}

/// A reader that went away (`porta features | head`) ends the runtime quietly: no panic,
/// no backtrace, never exit 134. The pipe's read end is closed before the runtime starts,
/// so every run meets the closed pipe.
#[test]
fn closed_stdout_pipe_exits_quietly() {
    require_root!();
    let c = Container::new("life-epipe", Bundle::new(&["sleep", "100"]));
    c.create_start();
    for args in [
        vec!["features"],
        vec!["state", c.id.as_str()],
        vec!["list"],
        vec!["ps", "--format", "json", c.id.as_str()],
    ] {
        for _ in 0..3 {
            let mut fds = [0; 2];
            // SAFETY: pipe2 writes two descriptors into `fds`, an array of two ints.
            assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
            // SAFETY: the read end is ours and not used again.
            unsafe { libc::close(fds[0]) };
            // SAFETY: the write end was just made by pipe2 and is owned by nobody else.
            let w = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fds[1]) };
            let err = tempfile::NamedTempFile::new().unwrap();
            let st = std::process::Command::new(runtime())
                .args(["--root", &c.root])
                .args(&args)
                .stdout(w)
                .stderr(err.reopen().unwrap())
                .status()
                .unwrap();
            let stderr = std::fs::read_to_string(err.path()).unwrap();
            use std::os::unix::process::ExitStatusExt;
            assert_ne!(
                st.signal(),
                Some(libc::SIGABRT),
                "{args:?} aborted: {stderr}"
            );
            assert_ne!(st.code(), Some(134), "{args:?}: {stderr}");
            assert!(!stderr.contains("panicked"), "{args:?} panicked: {stderr}");
            assert!(stderr.trim().is_empty(), "{args:?} was not quiet: {stderr}");
        }
    }
}

/// `kill ID 0` sends no signal and succeeds while the process exists (as runc); the
/// container keeps running; once it stopped, signal 0 fails.
#[test]
fn kill_signal_zero_checks_the_process() {
    require_root!();
    let c = Container::new("life-kill0", Bundle::new(&["sh", "-c", LOOP]));
    c.create_start();
    c.kill("0").expect_ok();
    assert_eq!(c.status().as_deref(), Some("running"));
    c.kill("KILL").expect_ok();
    c.wait_stopped(30);
    c.kill("0").expect_fail();
}

/// `update --cpu-quota -1` removes the CPU limit (unlimited), as runc accepts it.
#[test]
fn update_cpu_quota_minus_one_is_unlimited() {
    require_root!();
    let c = Container::new("life-quota-1", Bundle::new(&["sleep", "100"]));
    c.create_start();
    let pid = c.pid();
    c.rt(&[
        "update",
        "--cpu-period",
        "100000",
        "--cpu-quota",
        "25000",
        &c.id,
    ])
    .expect_ok();
    c.rt(&["update", "--cpu-quota", "-1", &c.id]).expect_ok();
    if cgroup::is_unified() {
        let v = cgroup::read(pid, "cpu", "cpu.max").unwrap_or_default();
        assert!(v.starts_with("max"), "cpu.max {v:?}");
    } else {
        assert_eq!(
            cgroup::read(pid, "cpu", "cpu.cfs_quota_us").as_deref(),
            Some("-1")
        );
    }
}

/// `spec` gives the default config a cgroup namespace only on a pure cgroup v2 host, as
/// runc does.
#[test]
fn spec_cgroup_namespace_only_on_cgroup_v2() {
    require_root!();
    let dir = tempfile::tempdir().unwrap();
    Cmd::new(runtime())
        .args(["spec", "--bundle"])
        .arg(dir.path())
        .run()
        .expect_ok();
    let cfg: Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("config.json")).unwrap()).unwrap();
    let has_cgroupns = cfg["linux"]["namespaces"]
        .as_array()
        .unwrap()
        .iter()
        .any(|n| n["type"] == "cgroup");
    // SAFETY: an all-zero statfs is a valid value.
    let mut sfs: libc::statfs = unsafe { std::mem::zeroed() };
    let p = std::ffi::CString::new("/sys/fs/cgroup").unwrap();
    // SAFETY: `p` is a valid C string and `sfs` a valid out-pointer.
    assert_eq!(unsafe { libc::statfs(p.as_ptr(), &mut sfs) }, 0);
    let v2 = sfs.f_type == 0x6367_7270; // CGROUP2_SUPER_MAGIC
    assert_eq!(
        has_cgroupns, v2,
        "cgroup namespace in spec: {has_cgroupns}, pure v2 host: {v2}"
    );
}

/// The container's process does not start with SIGPIPE ignored, as under runc (the
/// runtime's own ignored SIGPIPE used to be inherited through exec). Only that bit is
/// checked: other ignored signals may come from whoever started the test.
#[test]
fn container_process_does_not_ignore_sigpipe() {
    require_root!();
    let c = Container::new(
        "life-sigign",
        Bundle::new(&["grep", "SigIgn", "/proc/self/status"]),
    );
    c.run().expect_ok();
    let out = c.output();
    let mask = out
        .trim()
        .strip_prefix("SigIgn:")
        .and_then(|m| u64::from_str_radix(m.trim(), 16).ok())
        .unwrap_or_else(|| panic!("no SigIgn line: {out:?}"));
    assert_eq!(
        mask & (1 << (libc::SIGPIPE - 1)),
        0,
        "SIGPIPE ignored: {out:?}"
    );
}
