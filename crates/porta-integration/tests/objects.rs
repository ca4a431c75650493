//! (Porta) The object namespace and the container API socket: `porta objects` on the host
//! (every container with its processes, servers and mounts; one container; bad input),
//! `porta objects` inside a container through its API socket (its own namespace only: no
//! other container, no host pid, no host path), hostile messages on the socket (each
//! answered with an error, nothing leaked), a process outside the container's pid
//! namespace refused, the API server killed and replaced, the annotation off (no socket)
//! and bad values refused, nothing left behind.

use porta_integration::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::Duration;

const PROBE: &str = "/usr/local/bin/pit-api-probe";
const SOCK: &str = "/run/porta/api.sock";

/// Copies `bin` and the shared libraries it needs (ldd) into `rootfs` at `dest`.
fn install_binary(rootfs: &Path, bin: &Path, dest: &str) {
    let target = rootfs.join(dest.trim_start_matches('/'));
    std::fs::create_dir_all(target.parent().unwrap()).unwrap();
    std::fs::copy(bin, &target).unwrap_or_else(|e| panic!("copy {}: {e}", bin.display()));
    let ldd = std::process::Command::new("ldd").arg(bin).output().unwrap();
    for word in String::from_utf8_lossy(&ldd.stdout).split_whitespace() {
        if !word.starts_with('/') {
            continue;
        }
        let dst = rootfs.join(word.trim_start_matches('/'));
        std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
        // Follows symlinks: the library's file under the name the loader asks for.
        std::fs::copy(word, &dst).unwrap_or_else(|e| panic!("copy {word}: {e}"));
    }
}

/// A bundle running `sleep 1000`, with porta and the probe installed, API `api`
/// (`None`: no annotation).
fn bundle(api: Option<&str>) -> Bundle {
    let mut b = Bundle::new(&["sleep", "1000"]);
    if let Some(v) = api {
        b.annotation("run.porta.api", v);
    }
    install_binary(&b.rootfs(), &runtime(), "/usr/local/bin/porta");
    install_binary(
        &b.rootfs(),
        Path::new(env!("CARGO_BIN_EXE_pit-api-probe")),
        PROBE,
    );
    b
}

fn state_dir(c: &Container) -> PathBuf {
    Path::new(&c.root).join(&c.id)
}

/// The host's tree of the test root, as JSON.
fn host_objects(c: &Container, extra: &[&str]) -> Value {
    c.cmd()
        .args(["objects", "--format", "json"])
        .args(extra)
        .run()
        .expect_ok()
        .json()
}

fn namespace<'v>(tree: &'v Value, id: &str) -> Option<&'v Value> {
    tree["objects"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["kind"] == "namespace" && o["id"] == id)
}

fn group<'v>(ns: &'v Value, name: &str) -> Vec<&'v Value> {
    ns["children"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["name"] == name)
        .unwrap_or_else(|| panic!("no group {name} in {ns}"))["children"]
        .as_array()
        .map(|a| a.iter().collect())
        .unwrap_or_default()
}

/// The host pid of a server of `c` named `name` (from `porta state`).
fn server_pid(c: &Container, name: &str) -> Option<i64> {
    c.state()["servers"]
        .as_array()?
        .iter()
        .find(|s| s["name"] == name)?["pid"]
        .as_i64()
}

/// Every number under a key named like `pid` anywhere in `v`.
fn pids_in(v: &Value, out: &mut Vec<i64>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                if k.to_lowercase().contains("pid") {
                    if let Some(n) = x.as_i64() {
                        out.push(n);
                    }
                }
                pids_in(x, out);
            }
        }
        Value::Array(a) => a.iter().for_each(|x| pids_in(x, out)),
        _ => {}
    }
}

/// Runs the probe in `c`: (first line: the reply as JSON, the other lines).
fn probe(c: &Container, args: &[&str]) -> (Value, Vec<String>) {
    let mut full = vec![PROBE, SOCK];
    full.extend_from_slice(args);
    let o = c.exec(&[], &full);
    o.expect_ok();
    let mut lines = o.stdout.lines();
    let first = lines.next().unwrap_or_default();
    let v: Value = serde_json::from_str(first).unwrap_or_else(|e| panic!("{e}: {o}"));
    (v, lines.map(String::from).collect())
}

#[test]
fn host_tree_shows_every_container_with_processes_servers_mounts() {
    require_root!();
    porta_only!("porta objects is Porta's own command");
    let a = Container::new("obj-ha", Bundle::new(&["sleep", "1000"]));
    a.create_start();
    let b = Container::new("obj-hb", Bundle::new(&["sleep", "1000"]));
    b.create_start();
    let created = Container::new("obj-hc", Bundle::new(&["sleep", "1000"]));
    created.create().expect_ok();
    let tree = host_objects(&a, &[]);
    assert_eq!(tree["version"], 1);
    assert_eq!(tree["view"], "host");
    for c in [&a, &b] {
        let ns = namespace(&tree, &c.id).unwrap_or_else(|| panic!("{} missing: {tree}", c.id));
        assert_eq!(ns["path"], format!("/{}", c.id));
        assert_eq!(ns["status"], "running");
        assert_eq!(ns["pid"].as_i64(), Some(c.pid() as i64), "{ns}");
        let procs = group(ns, "processes");
        assert!(
            procs
                .iter()
                .any(|p| p["pid"].as_i64() == Some(c.pid() as i64) && p["comm"] == "sleep"),
            "{procs:?}"
        );
        let servers = group(ns, "servers");
        for role in ["supervisor", "keeper", "fs"] {
            let s = servers
                .iter()
                .find(|s| s["role"] == role)
                .unwrap_or_else(|| panic!("no {role} server: {servers:?}"));
            assert_eq!(s["state"], "running", "{s}");
            assert!(s["pid"].as_i64().unwrap_or(0) > 0, "{s}");
        }
        assert_eq!(
            servers.iter().find(|s| s["role"] == "fs").unwrap()["pid"].as_i64(),
            server_pid(c, "fs")
        );
        // Off by default: no API server.
        assert!(!servers.iter().any(|s| s["role"] == "api"), "{servers:?}");
        let mounts = group(ns, "mounts");
        let root = mounts
            .iter()
            .find(|m| m["mountPoint"] == "/")
            .unwrap_or_else(|| panic!("no root mount: {mounts:?}"));
        assert_eq!(root["fsType"], "fuse", "{root}");
        assert_eq!(root["source"], format!("porta-{}", c.id));
        assert!(mounts
            .iter()
            .any(|m| m["mountPoint"] == "/proc" && m["fsType"] == "proc"));
        assert_eq!(ns["stateDir"], state_dir(c).display().to_string());
    }
    let ns = namespace(&tree, &created.id).expect("created container listed");
    assert_eq!(ns["status"], "created");

    // One container: its subtree only.
    let one = host_objects(&a, &[&a.id]);
    assert_eq!(one["objects"].as_array().unwrap().len(), 1, "{one}");
    assert!(namespace(&one, &a.id).is_some());
    assert!(!one.to_string().contains(&b.id), "{one}");
    // The table: an indented tree.
    let t = a.rt(&["objects", &a.id]);
    t.expect_ok();
    assert!(
        t.stdout
            .starts_with(&format!("namespace {} running pid {}", a.id, a.pid())),
        "{t}"
    );
    assert!(t.stdout.contains("\n  processes/\n"), "{t}");
    assert!(
        t.stdout.contains(&format!("process {} sleep", a.pid())),
        "{t}"
    );

    // A stopped container is listed too, without processes.
    b.kill("KILL").expect_ok();
    b.wait_stopped(30);
    let tree = host_objects(&a, &[&b.id]);
    let ns = namespace(&tree, &b.id).unwrap();
    assert_eq!(ns["status"], "stopped", "{ns}");
    assert!(group(ns, "processes").is_empty(), "{ns}");

    // Bad input: an unknown id, a bad format.
    let o = a.rt(&["objects", "pit-no-such-container"]);
    o.expect_fail();
    assert!(
        o.stderr.contains("pit-no-such-container") && o.stderr.contains("does not exist"),
        "{o}"
    );
    let o = a.rt(&["objects", "--format", "yaml"]);
    o.expect_fail();
    assert!(o.stderr.contains("yaml"), "{o}");
    let o = a.rt(&["objects", "../etc"]);
    o.expect_fail();
}

#[test]
fn inside_a_container_porta_objects_lists_its_own_namespace_only() {
    require_root!();
    porta_only!("the API socket is Porta's own");
    let a = Container::new("obj-ia", bundle(Some("on")));
    a.create_start();
    let b = Container::new("obj-ib", bundle(Some("on")));
    b.create_start();
    let o = a.exec(&[], &["porta", "objects", "--format", "json"]);
    o.expect_ok();
    let tree: Value = serde_json::from_str(&o.stdout).unwrap_or_else(|e| panic!("{e}: {o}"));
    assert_eq!(tree["view"], "container");
    let objects = tree["objects"].as_array().unwrap();
    assert_eq!(objects.len(), 1, "{tree}");
    let ns = &objects[0];
    assert_eq!(ns["id"], a.id.as_str());
    assert_eq!(
        ns["pid"], 1,
        "the container's pid namespace numbers its first process 1"
    );
    let procs = group(ns, "processes");
    assert!(
        procs.iter().any(|p| p["pid"] == 1 && p["comm"] == "sleep"),
        "{procs:?}"
    );
    assert!(
        group(ns, "mounts").iter().any(|m| m["mountPoint"] == SOCK),
        "the API socket's mount is listed: {ns}"
    );
    let servers = group(ns, "servers");
    assert!(
        servers
            .iter()
            .any(|s| s["role"] == "api" && s["state"] == "running"),
        "{servers:?}"
    );
    // Nothing of the host or of B.
    let text = o.stdout.clone();
    assert!(!text.contains(&b.id), "B's id leaked: {text}");
    for key in ["hostPid", "stateDir", "bundle"] {
        assert!(!text.contains(key), "{key} leaked: {text}");
    }
    for path in [
        a.bundle.path_str(),
        b.bundle.path_str(),
        a.root.clone(),
        "/var/tmp".to_string(),
    ] {
        assert!(!text.contains(&path), "host path {path} leaked: {text}");
    }
    let mut host_pids = vec![a.pid() as i64, b.pid() as i64];
    for c in [&a, &b] {
        for s in ["fs", "api"] {
            host_pids.extend(server_pid(c, s));
        }
        let rec: Value =
            serde_json::from_slice(&std::fs::read(state_dir(c).join("servers.json")).unwrap())
                .unwrap();
        for k in [
            "supervisor_pid",
            "successor_pid",
            "keeper_pid",
            "twin_pid",
            "standby_pid",
        ] {
            host_pids.extend(rec[k].as_i64().filter(|p| *p > 0));
        }
    }
    let mut seen = Vec::new();
    pids_in(&tree, &mut seen);
    assert!(!seen.is_empty());
    for p in &seen {
        assert!(
            !host_pids.contains(p),
            "host pid {p} leaked (host pids {host_pids:?}): {text}"
        );
    }
    // The table, and one object path.
    let t = a.exec(&[], &["porta", "objects"]);
    t.expect_ok();
    assert!(
        t.stdout
            .starts_with(&format!("namespace {} running pid 1", a.id)),
        "{t}"
    );
    let t = a.exec(
        &[],
        &[
            "porta",
            "objects",
            "--format",
            "json",
            &format!("/{}/processes/1", a.id),
        ],
    );
    t.expect_ok();
    let v: Value = serde_json::from_str(&t.stdout).unwrap();
    assert_eq!(v["objects"][0]["kind"], "process", "{v}");
    // B's id named from inside A: refused like any object A does not have.
    let t = a.exec(&[], &["porta", "objects", &b.id]);
    t.expect_fail();
    assert!(t.stderr.contains("ENOENT"), "{t}");
}

#[test]
fn hostile_messages_get_errors_and_leak_nothing() {
    require_root!();
    porta_only!("the API socket is Porta's own");
    let a = Container::new("obj-xa", bundle(Some("on")));
    a.create_start();
    let b = Container::new("obj-xb", bundle(Some("on")));
    b.create_start();
    let bpid = b.pid().to_string();
    let secrets = [b.id.clone(), b.bundle.path_str(), a.bundle.path_str()];
    let check = |what: &str, args: &[&str], errno: &str, after: &str| -> Value {
        let (v, rest) = probe(&a, args);
        assert_eq!(v["reply"], "error", "{what}: {v}");
        assert_eq!(v["errno"], errno, "{what}: {v}");
        assert!(
            v["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{what}: {v}"
        );
        assert_eq!(
            rest.last().map(String::as_str),
            Some(after),
            "{what}: {rest:?}"
        );
        // The path the caller gave is echoed back; nothing else may name B.
        let given = args
            .last()
            .and_then(|b| serde_json::from_str::<Value>(b).ok())
            .and_then(|b| b["path"].as_str().map(String::from))
            .unwrap_or_default();
        let message = v["message"].as_str().unwrap_or_default();
        let text = if given.is_empty() {
            message.to_string()
        } else {
            message.replace(&given, "")
        };
        for s in &secrets {
            assert!(!text.contains(s.as_str()), "{what}: {s} leaked: {v}");
        }
        v
    };
    // Malformed: answered, then the connection is closed.
    check("garbage", &["garbage"], "EPROTO", "closed");
    check("a huge frame", &["huge"], "EMSGSIZE", "closed");
    check(
        "4 descriptors",
        &["fds", "4", r#"{"v":1,"op":"list"}"#],
        "EINVAL",
        "closed",
    );
    check(
        "a descriptor list does not take",
        &["fds", "1", r#"{"v":1,"op":"list"}"#],
        "EINVAL",
        "closed",
    );
    check(
        "an unknown variant",
        &["frame", r#"{"v":1,"op":"format","path":"/"}"#],
        "EPROTO",
        "closed",
    );
    check(
        "another version",
        &["frame", r#"{"v":2,"op":"list"}"#],
        "EPROTO",
        "closed",
    );
    check(
        "a length that lies",
        &["len-lies", r#"{"v":1,"op":"list"}"#],
        "EPROTO",
        "closed",
    );
    check(
        "a forged uid",
        &["frame", r#"{"v":1,"op":"list","uid":0,"pid":1}"#],
        "EPROTO",
        "closed",
    );
    // Well-formed but refused: the connection stays.
    let dotdot = format!(r#"{{"v":1,"op":"list","path":"/{}/../{}"}}"#, a.id, b.id);
    check("a path with ..", &["frame", &dotdot], "EINVAL", "open");
    let other = format!(r#"{{"v":1,"op":"list","path":"/{}/processes"}}"#, b.id);
    let v1 = check(
        "another container's path",
        &["frame", &other],
        "ENOENT",
        "open",
    );
    let none = r#"{"v":1,"op":"list","path":"/pit-obj-nothing-here/processes"}"#;
    let v2 = check("a path of nothing", &["frame", none], "ENOENT", "open");
    // Another container's objects and nothing at all are told apart by nothing but the
    // path given back.
    assert_eq!(
        v1["message"].as_str().unwrap().replace(&b.id, "X"),
        v2["message"]
            .as_str()
            .unwrap()
            .replace("pit-obj-nothing-here", "X")
    );
    let open_b = format!(
        r#"{{"v":1,"op":"open","path":"/{}/processes/{bpid}"}}"#,
        a.id
    );
    check(
        "open of B's init by its host pid",
        &["frame", &open_b],
        "ENOENT",
        "open",
    );
    let open_b = format!(r#"{{"v":1,"op":"open","path":"/{}/processes/1"}}"#, b.id);
    check(
        "open of B's init by B's path",
        &["frame", &open_b],
        "ENOENT",
        "open",
    );
    let open_fs = format!(r#"{{"v":1,"op":"open","path":"/{}/servers/fs"}}"#, a.id);
    let v = check(
        "open of a server",
        &["frame", &open_fs],
        "EOPNOTSUPP",
        "open",
    );
    assert!(v["message"].as_str().unwrap().contains("server"), "{v}");
    let nested = format!(r#"{{"v":1,"op":"state","id":"{}"}}"#, b.id);
    let (v, _) = probe(&a, &["frame", &nested]);
    assert_eq!(v["reply"], "error", "{v}");
    assert!(!v.to_string().contains(&bpid), "{v}");

    // Open of its own first process: a pidfd of it.
    let open_1 = format!(r#"{{"v":1,"op":"open","path":"/{}/processes/1"}}"#, a.id);
    let (v, rest) = probe(&a, &["frame", &open_1]);
    assert_eq!(v["reply"], "ok", "{v}");
    assert_eq!(v["value"]["pid"], 1, "{v}");
    assert_eq!(
        rest.first().map(String::as_str),
        Some("fd-pid: 1"),
        "{rest:?}"
    );
    // Not its superuser, not the owner: refused.
    let o = a.exec(&["--user", "1000:1000"], &[PROBE, SOCK, "frame", &open_1]);
    o.expect_ok();
    assert!(o.stdout.contains("\"EACCES\""), "{o}");
    // The same user may list.
    let o = a.exec(&["--user", "1000:1000"], &["porta", "objects"]);
    o.expect_ok();

    // From the host (another pid namespace), a forged uid or not: refused.
    let host_sock = state_dir(&a).join("api.sock");
    let host_sock = host_sock.to_str().unwrap();
    for body in [r#"{"v":1,"op":"list"}"#, r#"{"v":1,"op":"list","uid":0}"#] {
        let o = Cmd::new(env!("CARGO_BIN_EXE_pit-api-probe"))
            .args([host_sock, "frame", body])
            .run();
        o.expect_ok();
        let first: Value = serde_json::from_str(o.stdout.lines().next().unwrap()).unwrap();
        assert_eq!(first["errno"], "EACCES", "{o}");
        assert!(o.stdout.ends_with("closed\n"), "{o}");
        assert!(!o.stdout.contains(&bpid), "{o}");
    }
    // After all that, the server still answers.
    let o = a.exec(&[], &["porta", "objects"]);
    o.expect_ok();
    assert!(server_pid(&a, "api").is_some_and(|p| p > 0));
}

#[test]
fn grants_and_children_are_listed_in_both_views() {
    require_root!();
    porta_only!("porta objects is Porta's own command");
    let a = Container::new("obj-pa", bundle(Some("on")));
    a.create_start();
    // A child: a container of the state root in A's state directory.
    let croot = state_dir(&a).join("children");
    let child = Container::with_id(
        unique_id("obj-ch"),
        croot.to_str().unwrap(),
        Bundle::new(&["sleep", "1000"]),
    );
    child.create_start();
    // A grant into A, as `porta share` records it (grants.json).
    let grants = state_dir(&a).join("grants.json");
    let record = serde_json::json!([{
        "id": "g-obj-1",
        "kind": "directory",
        "direction": "in",
        "source": {"container": "pit-obj-peer", "path": "/data"},
        "target": {"container": a.id, "path": "/mnt/data"},
        "readOnly": true,
        "created": "2026-12-07T00:00:00Z"
    }]);
    std::fs::write(&grants, serde_json::to_vec(&record).unwrap()).unwrap();
    struct Remove(PathBuf);
    impl Drop for Remove {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
    let _record = Remove(grants);

    let tree = host_objects(&a, &[&a.id]);
    let ns = namespace(&tree, &a.id).unwrap();
    let g = group(ns, "grants");
    assert_eq!(g.len(), 1, "{ns}");
    assert_eq!(g[0]["path"], format!("/{}/grants/g-obj-1", a.id));
    assert_eq!(g[0]["direction"], "in");
    assert_eq!(g[0]["localPath"], "/mnt/data");
    assert_eq!(g[0]["peer"], "pit-obj-peer:/data");
    let kids = group(ns, "children");
    assert_eq!(kids.len(), 1, "{ns}");
    assert_eq!(kids[0]["id"], child.id.as_str());
    assert_eq!(kids[0]["path"], format!("/{}/children/{}", a.id, child.id));
    assert_eq!(kids[0]["depth"], 1);
    assert_eq!(kids[0]["status"], "running");
    assert!(
        group(kids[0], "processes")
            .iter()
            .any(|p| p["pid"].as_i64() == Some(child.pid() as i64)),
        "{}",
        kids[0]
    );
    // The host's list of the root does not show the child; the whole tree has it beneath A.
    let l = a.rt(&["list", "-q"]);
    assert!(!l.stdout.contains(&child.id), "{l}");
    let whole = host_objects(&a, &[]);
    assert!(namespace(&whole, &child.id).is_none());

    // Inside A: the grant's own side only, the child in A's view (its processes are in
    // a pid namespace A cannot see: none listed).
    let o = a.exec(&[], &["porta", "objects", "--format", "json"]);
    o.expect_ok();
    assert!(!o.stdout.contains("pit-obj-peer"), "{o}");
    let tree: Value = serde_json::from_str(&o.stdout).unwrap();
    let ns = &tree["objects"][0];
    let g = group(ns, "grants");
    assert_eq!(g.len(), 1, "{ns}");
    assert_eq!(g[0]["localPath"], "/mnt/data");
    assert!(g[0].get("peer").is_none(), "{}", g[0]);
    let kids = group(ns, "children");
    assert_eq!(kids.len(), 1, "{ns}");
    assert_eq!(kids[0]["id"], child.id.as_str());
    assert!(kids[0].get("pid").is_none(), "{}", kids[0]);
    assert!(group(kids[0], "processes").is_empty(), "{}", kids[0]);
    let mut seen = Vec::new();
    pids_in(kids[0], &mut seen);
    assert!(!seen.contains(&(child.pid() as i64)), "{}", kids[0]);
    // A child by id, from inside.
    let o = a.exec(&[], &["porta", "objects", &child.id]);
    o.expect_ok();
    assert!(
        o.stdout
            .starts_with(&format!("namespace {} running", child.id)),
        "{o}"
    );
    child.rt(&["delete", "--force", &child.id]).expect_ok();
}

#[test]
fn in_a_user_namespace_the_superuser_is_the_containers_root() {
    require_root!();
    porta_only!("the API socket is Porta's own");
    let host_uid = 230000u32;
    let mut b = bundle(Some("on"));
    b.user_ns(host_uid, 65536);
    cmd::host(
        "chown",
        &[
            "-R",
            "-h",
            &format!("{host_uid}:{host_uid}"),
            b.rootfs().to_str().unwrap(),
        ],
    )
    .expect_ok();
    let a = Container::new("obj-us", b);
    a.create_start();
    let o = a.exec(&[], &["porta", "objects", "--format", "json"]);
    o.expect_ok();
    let tree: Value = serde_json::from_str(&o.stdout).unwrap_or_else(|e| panic!("{e}: {o}"));
    assert_eq!(tree["objects"][0]["pid"], 1, "{tree}");
    // A process of another user of the container.
    a.exec(&["--detach", "--user", "1000:1000"], &["sleep", "1000"])
        .expect_ok();
    let procs = |tree: &Value| -> Vec<(i64, String)> {
        group(&tree["objects"][0], "processes")
            .iter()
            .map(|p| {
                (
                    p["pid"].as_i64().unwrap(),
                    p["comm"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };
    let other = wait_for(Duration::from_secs(30), || {
        let o = a.exec(&[], &["porta", "objects", "--format", "json"]);
        let t: Value = serde_json::from_str(&o.stdout).ok()?;
        procs(&t)
            .into_iter()
            .find(|(p, c)| *p != 1 && c == "sleep")
            .map(|(p, _)| p)
    })
    .expect("the second sleep is listed");
    let open = format!(
        r#"{{"v":1,"op":"open","path":"/{}/processes/{other}"}}"#,
        a.id
    );
    // The container's root (host uid 230000) is its superuser: it may open it.
    let (v, rest) = probe(&a, &["frame", &open]);
    assert_eq!(v["reply"], "ok", "{v}");
    assert_eq!(
        rest.first().map(String::as_str),
        Some(format!("fd-pid: {other}").as_str()),
        "{rest:?}"
    );
    // Its owner may too; another user may not.
    let o = a.exec(&["--user", "1000:1000"], &[PROBE, SOCK, "frame", &open]);
    o.expect_ok();
    assert!(o.stdout.contains("\"reply\":\"ok\""), "{o}");
    let o = a.exec(&["--user", "1001:1001"], &[PROBE, SOCK, "frame", &open]);
    o.expect_ok();
    assert!(o.stdout.contains("\"EACCES\""), "{o}");
}

#[test]
fn stuck_clients_of_one_user_leave_room_for_others() {
    require_root!();
    porta_only!("the API socket is Porta's own");
    let a = Container::new("obj-st", bundle(Some("on")));
    a.create_start();
    // A user opens 40 connections and keeps them: 16 are served, the rest refused.
    let script = format!("exec {PROBE} {SOCK} hold 40 > /tmp/held");
    a.exec(&["--detach", "--user", "1000:1000"], &["sh", "-c", &script])
        .expect_ok();
    let held = a.bundle.rootfs().join("tmp/held");
    let line = wait_for(Duration::from_secs(60), || {
        std::fs::read_to_string(&held)
            .ok()
            .filter(|s| s.ends_with('\n'))
    })
    .expect("the holder reports");
    assert_eq!(line.trim(), "ok 16 busy 24");
    // Meanwhile root is served, and so is another user.
    let o = a.exec(&[], &["porta", "objects"]);
    o.expect_ok();
    assert!(o.stdout.contains("server api running"), "{o}");
    let o = a.exec(&["--user", "1001:1001"], &["porta", "objects"]);
    o.expect_ok();
}

#[test]
fn a_killed_api_server_is_replaced_and_the_socket_kept() {
    require_root!();
    porta_only!("the API socket is Porta's own");
    let a = Container::new("obj-ka", bundle(Some("on")));
    a.create_start();
    for round in 1..=2 {
        let pid = server_pid(&a, "api").expect("an API server");
        assert!(pid > 0);
        assert!(pid_alive(pid as i32));
        // SAFETY: kill(2) of a process this test's container owns.
        assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGKILL) }, 0);
        // The next request works: it waits in the socket's backlog for the new server.
        let o = a.exec(&[], &["porta", "objects"]);
        o.expect_ok();
        assert!(o.stdout.contains("server api running"), "{o}");
        let st = a.state();
        let api = st["servers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == "api")
            .cloned()
            .unwrap();
        assert_eq!(api["restarts"], round, "{api}");
        assert_ne!(api["pid"].as_i64(), Some(pid), "{api}");
    }
    // The supervisor killed: its API server dies with it, the successor starts another.
    let rec = |k: &str| -> i64 {
        let v: Value =
            serde_json::from_slice(&std::fs::read(state_dir(&a).join("servers.json")).unwrap())
                .unwrap();
        v[k].as_i64().unwrap_or(0)
    };
    let supervisor = rec("supervisor_pid") as i32;
    let old_api = server_pid(&a, "api").unwrap();
    // A client the old API server has answered once, and asks again after the supervisor
    // died: the old server finishes its connection. It waits on its stdin in between.
    let list = format!(r#"{{"v":1,"op":"list","path":"/{}/processes/1"}}"#, a.id);
    let mut client = std::process::Command::new(runtime())
        .args([
            "--root",
            &a.root,
            "exec",
            &a.id,
            PROBE,
            SOCK,
            "pause-between",
            &list,
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(client.stdout.take().unwrap());
    let mut first = String::new();
    std::io::BufRead::read_line(&mut out, &mut first).unwrap();
    assert!(first.contains(r#""reply":"ok""#), "{first}");
    // SAFETY: kill(2) of this test's container's supervisor.
    assert_eq!(unsafe { libc::kill(supervisor, libc::SIGKILL) }, 0);
    let new_api = wait_for(Duration::from_secs(60), || {
        let p = server_pid(&a, "api")?;
        (rec("supervisor_pid") != supervisor as i64 && p > 0 && p != old_api && pid_alive(p as i32))
            .then_some(p)
    })
    .expect("the successor starts an API server");
    // The paused client goes on: its connection is still answered.
    drop(client.stdin.take());
    let mut second = String::new();
    std::io::BufRead::read_line(&mut out, &mut second).unwrap();
    assert!(second.contains(r#""reply":"ok""#), "{second}");
    assert!(client.wait().unwrap().success());
    assert!(
        wait_for(Duration::from_secs(30), || (!pid_alive(old_api as i32))
            .then_some(()))
        .is_some(),
        "the dead supervisor's API server {old_api} lives on"
    );
    let o = a.exec(&[], &["porta", "objects"]);
    o.expect_ok();
    assert!(o.stdout.contains("server api running"), "{o}");
    assert_eq!(server_pid(&a, "api"), Some(new_api));
    // Deleted: the API server goes too, with the socket.
    let pid = server_pid(&a, "api").unwrap() as i32;
    a.rt(&["delete", "--force", &a.id]).expect_ok();
    assert!(
        wait_for(Duration::from_secs(30), || (!pid_alive(pid)).then_some(())).is_some(),
        "API server {pid} outlived its container"
    );
    assert!(!state_dir(&a).exists());
}

#[test]
fn api_off_has_no_socket_and_bad_values_are_refused() {
    require_root!();
    porta_only!("the API socket is Porta's own");
    for api in [None, Some("off")] {
        let c = Container::new("obj-off", bundle(api));
        c.create_start();
        let o = c.exec(&[], &["ls", "/run/porta"]);
        assert!(!o.stdout.contains("api.sock"), "{api:?}: {o}");
        assert!(!state_dir(&c).join("api.sock").exists());
        assert!(server_pid(&c, "api").is_none(), "{api:?}");
        // The client finds no socket: it reads the (empty) default root instead.
        let o = c.exec(&[], &["porta", "objects"]);
        assert!(!o.stdout.contains(&c.id), "{o}");
    }
    let mut b = Bundle::new(&["true"]);
    b.annotation("run.porta.api", "yes");
    let c = Container::new("obj-bad", b);
    let o = c.create();
    o.expect_fail();
    assert!(
        o.stderr.contains("run.porta.api") && o.stderr.contains("yes"),
        "{o}"
    );
    assert!(!state_dir(&c).exists(), "a refused create left its state");
    // Without a file server there is no supervisor to serve it: refused, named.
    let mut b = Bundle::new(&["true"]);
    b.annotation("run.porta.api", "on");
    b.annotation("run.porta.fs", "kernel");
    let c = Container::new("obj-kern", b);
    let o = c.create();
    o.expect_fail();
    assert!(o.stderr.contains("run.porta.api"), "{o}");
    assert!(!state_dir(&c).exists(), "a refused create left its state");
}
