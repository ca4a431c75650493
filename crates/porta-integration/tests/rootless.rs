//! Rootless containers: the runtime run by an unprivileged user (no capabilities, a
//! user namespace mapping only that user, no cgroups), as `runc --rootless` is used.
//! The file server needs root on the host, so a rootless container gets the kernel's root
//! and asking for the file server is an error naming the annotation.

use porta_integration::*;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

/// The unprivileged user the tests run the runtime as (needs no passwd entry).
const UID: u32 = 52_017;

fn chown_tree(p: &Path) {
    Cmd::new("chown")
        .args(["-R", &format!("{UID}:{UID}"), &p.display().to_string()])
        .run()
        .expect_ok();
}

/// The runtime under test as the unprivileged user, with `--root <state>`.
fn as_user(state: &Path) -> Cmd {
    Cmd::new("setpriv")
        .args([
            format!("--reuid={UID}"),
            format!("--regid={UID}"),
            "--clear-groups".to_string(),
            "--inh-caps=-all".to_string(),
            "--".to_string(),
        ])
        .arg(runtime())
        .arg("--root")
        .arg(state)
        .env("XDG_RUNTIME_DIR", state)
}

/// A bundle owned by the user, its config written by `spec --rootless` run as that user,
/// then given `script` to run and a writable root.
fn rootless_bundle(script: &str) -> (Bundle, std::path::PathBuf) {
    let b = Bundle::new(&["true"]);
    let state = b.path().join("state");
    std::fs::create_dir(&state).unwrap();
    chown_tree(b.path());
    as_user(&state)
        .arg("spec")
        .arg("--rootless")
        .cwd(b.path())
        .run()
        .expect_ok();
    let mut cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(b.file("config.json")).unwrap()).unwrap();
    cfg["process"]["args"] = serde_json::json!(["sh", "-c", script]);
    cfg["process"]["terminal"] = serde_json::json!(false);
    cfg["root"]["readonly"] = serde_json::json!(false);
    std::fs::write(b.file("config.json"), serde_json::to_vec(&cfg).unwrap()).unwrap();
    chown_tree(b.path());
    (b, state)
}

fn skip_without_setpriv() -> bool {
    if !is_root() || !have_command("setpriv") {
        skip("needs root and setpriv to become an unprivileged user");
        return true;
    }
    false
}

#[test]
fn rootless_run_maps_only_the_user_and_writes_as_the_user() {
    if skip_without_setpriv() {
        return;
    }
    let (b, state) = rootless_bundle("id -u; cat /proc/self/uid_map; echo hi > /made-here; exit 7");
    let id = unique_id("rootless");
    let o = as_user(&state)
        .args(["run", "--bundle", &b.path_str(), &id])
        .timeout(Duration::from_secs(60))
        .run();
    assert_eq!(o.code, 7, "the container's exit code: {o}");
    let mut lines = o.stdout.lines();
    assert_eq!(lines.next(), Some("0"), "root inside: {o}");
    let map: Vec<&str> = lines
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(map, ["0", &UID.to_string(), "1"], "{o}");
    let made = std::fs::metadata(b.rootfs().join("made-here")).unwrap();
    assert_eq!(
        made.uid(),
        UID,
        "a file made inside belongs to the user on the host"
    );
    as_user(&state).args(["delete", &id]).run();
    assert!(!state.join(&id).exists(), "run leaves no state behind");
}

#[test]
fn rootless_runs_one_after_another_all_end() {
    if skip_without_setpriv() {
        return;
    }
    // Each `run` must notice its container's exit (a lost SIGCHLD once hung it).
    let (b, state) = rootless_bundle("exit 3");
    for i in 0..12 {
        let id = unique_id(&format!("rootless-seq{i}"));
        let o = as_user(&state)
            .args(["run", "--bundle", &b.path_str(), &id])
            .timeout(Duration::from_secs(30))
            .run();
        assert_eq!(o.code, 3, "run {i}: {o}");
        assert!(!state.join(&id).exists(), "run {i} left state");
    }
}

#[test]
fn rootless_file_server_request_is_refused_and_leaves_nothing() {
    if skip_without_setpriv() || !porta_only("the run.porta.fs annotation") {
        return;
    }
    let (b, state) = rootless_bundle("true");
    let mut cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(b.file("config.json")).unwrap()).unwrap();
    cfg["annotations"] = serde_json::json!({"run.porta.fs": "server"});
    std::fs::write(b.file("config.json"), serde_json::to_vec(&cfg).unwrap()).unwrap();
    let id = unique_id("rootless-fs");
    let o = as_user(&state)
        .args(["create", "--bundle", &b.path_str(), &id])
        .run();
    o.expect_fail();
    assert!(
        o.stderr.contains("annotations.run.porta.fs") && o.stderr.contains("root"),
        "the error names the annotation and why: {o}"
    );
    assert!(
        !state.join(&id).exists(),
        "a refused create leaves no state"
    );
}
