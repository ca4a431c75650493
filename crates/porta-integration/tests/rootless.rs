//! Rootless containers: the runtime run by an unprivileged user (no capabilities, a
//! user namespace mapping only that user, no cgroups), as `runc --rootless` is used.
//! Where the user may open /dev/fuse, the container gets its own file server, mounted from
//! inside its user namespace (strict mode); where not (a /dev/fuse of mode
//! 0600), the kernel's root, and asking for the file server is an error naming the
//! annotation. The file-server tests give the user a mode-0666 /dev/fuse (as most
//! distributions ship it) in a private mount namespace.

use porta_integration::*;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

/// The unprivileged user the tests run the runtime as (needs no passwd entry).
const UID: u32 = 52_017;

fn chown_tree(p: &Path) {
    user::chown_tree(p, UID);
}

/// The runtime under test as the unprivileged user, with `--root <state>`.
fn as_user(state: &Path) -> Cmd {
    user::runtime_as(Cmd::new("env"), UID, state)
}

/// Like [`as_user`], in a private mount namespace whose /dev/fuse is a mode-0666 node of
/// the FUSE device (made in `dir`), so the user may open it.
fn as_user_with_fuse(state: &Path, dir: &Path) -> Cmd {
    user::runtime_as(user::with_open_fuse(dir), UID, state)
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
        o.stderr.contains("annotations.run.porta.fs") && o.stderr.contains("/dev/fuse"),
        "the error names the annotation and why: {o}"
    );
    assert!(
        !state.join(&id).exists(),
        "a refused create leaves no state"
    );
}

fn skip_without_fuse() -> bool {
    if skip_without_setpriv() || !porta_only("the file server") {
        return true;
    }
    if !Path::new("/dev/fuse").exists() || !have_command("unshare") {
        skip("needs /dev/fuse and unshare");
        return true;
    }
    false
}

#[test]
fn rootless_container_gets_its_own_file_server_and_writes_as_the_user() {
    if skip_without_fuse() {
        return;
    }
    let (b, state) = rootless_bundle(
        "awk '$5 == \"/\" { for (i = 7; i < NF; i++) if ($i == \"-\") print $(i+1), $(i+2) }' \
         /proc/self/mountinfo; id -u; \
         mkdir -p /d/e && echo hi > /d/e/f && ln /d/e/f /d/g && ln -s e/f /d/s && \
         mv /d/g /d/h && cat /d/s && rm /d/h && ls -ln /d/e/f | awk '{print $3}'; exit 7",
    );
    let id = unique_id("rootless-srv");
    let o = as_user_with_fuse(&state, b.path())
        .args(["run", "--bundle", &b.path_str(), &id])
        .timeout(Duration::from_secs(60))
        .run();
    assert_eq!(o.code, 7, "the container's exit code: {o}");
    let lines: Vec<&str> = o.stdout.lines().collect();
    assert_eq!(
        lines,
        [format!("fuse porta-{id}").as_str(), "0", "hi", "0"],
        "root served by the container's file server, files made as root inside: {o}"
    );
    let made = std::fs::metadata(b.rootfs().join("d/e/f")).unwrap();
    assert_eq!(
        made.uid(),
        UID,
        "a file made inside belongs to the user on the host"
    );
    assert_eq!(made.gid(), UID);
    assert!(!b.rootfs().join("d/h").exists());
    assert!(!state.join(&id).exists(), "run leaves no state behind");
}

#[test]
fn rootless_file_server_killed_under_load_is_replaced_without_errors() {
    if skip_without_fuse() {
        return;
    }
    let (b, state) = rootless_bundle(
        "i=0; while [ $i -lt 1500 ]; do echo $i > /f$i && [ \"$(cat /f$i)\" = $i ] && \
         mv /f$i /g$i && rm /g$i || echo ERR $i; i=$((i+1)); done; echo done",
    );
    let id = unique_id("rootless-kill");
    let out = b.path().join("out");
    let o = as_user_with_fuse(&state, b.path())
        .args(["run", "--detach", "--bundle", &b.path_str(), &id])
        .stdout_file(std::fs::File::create(&out).unwrap())
        .run();
    o.expect_ok();
    let server_pid = || -> i64 {
        as_user(&state).args(["state", &id]).run().json()["servers"][0]["pid"]
            .as_i64()
            .unwrap_or(0)
    };
    // The container's process, watched through a pidfd: the test waits for its exit (an
    // event), however slowly a loaded machine runs the workload.
    let init = as_user(&state).args(["state", &id]).run().json()["pid"]
        .as_i64()
        .unwrap_or(0);
    let init = porta_sys::pidfd::open(init as i32).expect("pidfd of the container's process");
    let mut killed = 0;
    for _ in 0..5 {
        std::thread::sleep(Duration::from_millis(100));
        let pid = server_pid();
        if pid > 0 && Cmd::new("kill").args(["-9", &pid.to_string()]).run().ok() {
            killed += 1;
        }
    }
    // A bound only against a hang (a wedged file server), far beyond any run's length.
    let exited = porta_sys::pidfd::wait_exit(
        std::os::fd::AsFd::as_fd(&init),
        Some(Duration::from_secs(600)),
    )
    .expect("wait for the container's process");
    let st = as_user(&state).args(["state", &id]).run().json();
    assert!(exited, "the workload never ended: {st}");
    assert_eq!(st["status"], "stopped", "the workload ended: {st}");
    let restarts = st["servers"][0]["restarts"].as_u64().unwrap_or(0);
    as_user(&state).args(["delete", &id]).run().expect_ok();
    let text = std::fs::read_to_string(&out).unwrap();
    assert!(killed >= 1, "killed the server at least once");
    assert!(restarts >= 1, "the supervisor replaced it: {st}");
    assert_eq!(text.trim(), "done", "no errors in the workload: {text}");
    assert!(!state.join(&id).exists(), "delete leaves no state behind");
}

#[test]
fn rootless_file_server_that_cannot_be_brought_back_fails_requests_instead_of_hanging() {
    if skip_without_fuse() {
        return;
    }
    // Every server crashes on a LOOKUP of "poison" (the file server's fault injection),
    // so each replacement dies on the resent request: the supervisor gives up. Rootless it
    // cannot reach fusectl; the connection ends when the last /dev/fuse descriptor closes
    // (keeper, servers and supervisor hold them all), and the waiting caller gets an error.
    let (b, state) = rootless_bundle(
        "cat /fine; echo fine=$?; cat /poison; echo poison=$?; cat /fine; echo after=$?",
    );
    std::fs::write(b.rootfs().join("fine"), "fine\n").unwrap();
    chown_tree(b.path());
    let id = unique_id("rootless-giveup");
    let out = b.path().join("out");
    let t0 = std::time::Instant::now();
    user::runtime_bin_as(
        user::with_open_fuse(b.path()),
        UID,
        &state,
        &fault_runtime(),
    )
    .env("PORTA_FS_FAULT", "crash:poison")
    .args(["run", "--detach", "--bundle", &b.path_str(), &id])
    .stdout_file(std::fs::File::create(&out).unwrap())
    .run()
    .expect_ok();
    let st = wait_for(Duration::from_secs(60), || {
        let st = as_user(&state).args(["state", &id]).run().json();
        (st["status"] == "stopped").then_some(st)
    })
    .expect("the container ends: its requests fail instead of hanging");
    let waited = t0.elapsed();
    let text = std::fs::read_to_string(&out).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    // After the abort a request fails: `cat` (busybox, on the served root) either cannot
    // open the file or dies of SIGBUS faulting in its own code; it never hangs.
    assert_eq!(lines.len(), 4, "{text}");
    assert_eq!(lines[..2], ["fine", "fine=0"], "{text}");
    for (line, what) in lines[2..].iter().zip(["poison=", "after="]) {
        let code = line.strip_prefix(what).unwrap_or("0");
        assert_ne!(code, "0", "{what} fails after the give-up: {text}");
    }
    let server = &st["servers"][0];
    assert!(
        server["error"]
            .as_str()
            .unwrap_or_default()
            .contains("in the same request"),
        "the state records why: {st}"
    );
    as_user(&state).args(["delete", &id]).run().expect_ok();
    assert!(!state.join(&id).exists(), "delete leaves no state behind");
    eprintln!("gave up and failed the requests after {waited:?}");
}

/// A rootless container's Porta processes — supervisor, successor, server, standby,
/// keeper and its twin — are each killed in turn, twice, while the container writes,
/// fsyncs, renames and reads back: no error inside, and `delete` leaves none of them.
#[test]
fn rootless_every_porta_process_can_die_while_the_container_works() {
    if skip_without_fuse() {
        return;
    }
    let (b, state) = rootless_bundle(
        "exec 2>&1; err=0; i=0; mkdir -p /work; \
         while [ $i -lt 20 ] || [ ! -e /stop ]; do \
           echo p$i > /work/t && sync /work/t && [ \"$(cat /work/t)\" = p$i ] && \
           mv /work/t /work/k$((i % 5)) && [ \"$(cat /work/k$((i % 5)))\" = p$i ] || \
           {{ err=$((err+1)); echo ERR $i; }}; i=$((i+1)); \
         done; echo SUMMARY errors=$err"
            .replace("{{", "{")
            .replace("}}", "}")
            .as_str(),
    );
    let id = unique_id("rootless-survive");
    let out = b.path().join("out");
    as_user_with_fuse(&state, b.path())
        .args(["run", "--detach", "--bundle", &b.path_str(), &id])
        .stdout_file(std::fs::File::create(&out).unwrap())
        .run()
        .expect_ok();
    let w = porta_integration::survival::Watched {
        id: id.clone(),
        record: Box::new(|| {
            let p = state.join(&id).join("servers.json");
            serde_json::from_str(&std::fs::read_to_string(p).ok()?).ok()
        }),
        state: Box::new(|| {
            let o = as_user(&state).args(["state", &id]).run();
            o.ok().then(|| o.json())
        }),
    };
    let mut seen = Vec::new();
    for round in 0..2 {
        porta_integration::survival::kill_each_in_turn(&w, &mut seen);
        eprintln!("round {round}: ok");
    }
    // The workload may end (and the container with it) before `touch` exits.
    let _ = as_user(&state).args(["exec", &id, "touch", "/stop"]).run();
    let st = wait_for(Duration::from_secs(60), || {
        let st = as_user(&state).args(["state", &id]).run().json();
        (st["status"] == "stopped").then_some(st)
    });
    assert!(st.is_some(), "the workload ended");
    if let Some(last) = (w.record)() {
        porta_integration::survival::note(&last, &mut seen);
    }
    as_user(&state).args(["delete", &id]).run().expect_ok();
    let text = std::fs::read_to_string(&out).unwrap();
    assert!(
        text.lines().any(|l| l == "SUMMARY errors=0"),
        "errors inside the container: {text}"
    );
    let alive = porta_integration::survival::still_alive(&seen);
    assert!(
        alive.is_empty(),
        "Porta processes left after delete: {alive:?}"
    );
    assert!(!state.join(&id).exists(), "delete leaves no state behind");
}
