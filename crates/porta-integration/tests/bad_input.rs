//! Bad input: malformed, truncated or ill-typed config.json, missing fields, unknown
//! values, bad bundle paths, duplicate ids, unknown commands and flags, invalid
//! signals. Each must exit non-zero, (for Porta) name what is at fault on stderr, and
//! leave nothing behind in --root, cgroups, mounts or processes.

use porta_integration::*;
use std::time::Duration;

/// Expects `o` to have failed; for Porta, `names` must all appear in stderr.
#[track_caller]
fn expect_error(o: &Out, names: &[&str]) {
    o.expect_fail();
    if is_porta() {
        for n in names {
            assert!(
                o.stderr.contains(n),
                "error message does not name {n:?}: {o}"
            );
        }
        assert!(!o.stderr.contains("panicked"), "the runtime panicked: {o}");
    }
}

#[track_caller]
fn assert_nothing_left(c: &Container) {
    let ids = [c.id.clone()];
    let bundles = [c.bundle.path_str()];
    let ok = wait_for(Duration::from_secs(5), || {
        leaks::check(&ids, &bundles).is_empty().then_some(())
    });
    assert!(
        ok.is_some(),
        "left behind: {:?}",
        leaks::check(&ids, &bundles)
    );
    let l = rt(&["list", "-q"]);
    assert!(!l.stdout.lines().any(|x| x.trim() == c.id), "{l}");
}

/// Writes `text` as config.json (instead of the bundle's config) and tries create.
fn create_with_raw_config(tag: &str, text: &str, names: &[&str]) {
    let c = Container::new(tag, Bundle::new(&["true"]));
    std::fs::write(c.bundle.file("config.json"), text).unwrap();
    let o = c.create();
    expect_error(&o, names);
    assert_nothing_left(&c);
}

/// Modifies the default config with `f` and tries create (and start, if create passed).
fn create_with_config(tag: &str, f: impl FnOnce(&mut Bundle), names: &[&str]) {
    let mut b = Bundle::new(&["true"]);
    f(&mut b);
    let c = Container::new(tag, b);
    let o = c.create();
    expect_error(&o, names);
    assert_nothing_left(&c);
}

#[test]
fn malformed_json() {
    require_root!();
    create_with_raw_config("bad-json", "{ this is not json", &["config.json"]);
    create_with_raw_config("bad-empty", "", &["config.json"]);
    create_with_raw_config("bad-array", "[1, 2, 3]", &["config.json"]);
}

#[test]
fn truncated_config() {
    require_root!();
    let full = serde_json::to_string_pretty(&bundle::default_config(&["true"])).unwrap();
    for cut in [full.len() / 3, full.len() / 2, full.len() - 2] {
        create_with_raw_config("bad-trunc", &full[..cut], &["config.json"]);
    }
}

#[test]
fn wrong_types() {
    require_root!();
    create_with_config(
        "bad-type1",
        |b| b.config["process"]["args"] = json!("sh"),
        &["args"],
    );
    create_with_config(
        "bad-type2",
        |b| b.config["process"]["user"]["uid"] = json!("root"),
        &["uid"],
    );
    create_with_config(
        "bad-type3",
        |b| b.config["linux"]["namespaces"] = json!({"type": "pid"}),
        &["namespaces"],
    );
    create_with_config(
        "bad-type4",
        |b| b.config["mounts"][0]["destination"] = json!(42),
        &["destination"],
    );
    create_with_config(
        "bad-type5",
        |b| b.config["process"]["rlimits"][0]["hard"] = json!(-1),
        &["hard"],
    );
}

#[test]
fn missing_process_args() {
    require_root!();
    create_with_config(
        "bad-noargs",
        |b| {
            b.config["process"].as_object_mut().unwrap().remove("args");
        },
        &["args"],
    );
    create_with_config(
        "bad-emptyargs",
        |b| b.config["process"]["args"] = json!([]),
        &["args"],
    );
}

#[test]
fn missing_required_sections() {
    require_root!();
    create_with_config(
        "bad-noroot",
        |b| {
            b.config.as_object_mut().unwrap().remove("root");
        },
        &["root"],
    );
}

#[test]
fn unknown_namespace_type() {
    require_root!();
    create_with_config(
        "bad-ns",
        |b| {
            b.namespace("bogusns", None);
        },
        &["bogusns"],
    );
}

#[test]
fn namespace_path_that_does_not_exist() {
    require_root!();
    create_with_config(
        "bad-nspath",
        |b| {
            b.namespace("network", Some("/proc/999999999/ns/net"));
        },
        &["/proc/999999999/ns/net"],
    );
}

#[test]
fn unknown_capability() {
    require_root!();
    // runc ignores capabilities the kernel does not know, with a warning; either way
    // the name must be on stderr
    let mut b = Bundle::new(&["true"]);
    b.capabilities(&["CAP_KILL", "CAP_PIT_BOGUS"]);
    let c = Container::new("bad-cap", b);
    let o = c.create();
    assert!(
        o.stderr.contains("CAP_PIT_BOGUS"),
        "unknown capability not named: {o}"
    );
    if o.ok() {
        c.rt(&["delete", "--force", &c.id]).expect_ok();
    }
    assert_nothing_left(&c);
}

#[test]
fn missing_rootfs() {
    require_root!();
    create_with_config(
        "bad-rootfs",
        |b| b.config["root"]["path"] = json!("no-such-rootfs"),
        &["no-such-rootfs"],
    );
}

#[test]
fn resources_the_kernel_refuses() {
    require_root!();
    // Refused when the cgroup is written, after the file server's supervisor was started
    // (it starts ahead of the cgroup): it must go with the rest.
    create_with_config(
        "bad-cpus",
        |b| b.config["linux"]["resources"]["cpu"] = json!({"cpus": "999"}),
        &["999"],
    );
}

#[test]
fn bad_mount() {
    require_root!();
    create_with_config(
        "bad-mount",
        |b| {
            b.mount(json!({"destination": "/data", "type": "bind", "source": "/nonexistent/pit-src", "options": ["bind"]}));
        },
        &["/nonexistent/pit-src"],
    );
}

#[test]
fn program_not_found() {
    require_root!();
    let c = Container::new("bad-noprog", Bundle::new(&["/no/such/program"]));
    let created = c.create();
    if created.ok() {
        // a runtime may refuse only at start; then delete must clean up
        let s = c.start();
        let _ = s;
        c.wait_stopped(10);
        c.delete().expect_ok();
    } else {
        expect_error(&created, &["/no/such/program"]);
    }
    assert_nothing_left(&c);
}

#[test]
fn nonexistent_bundle() {
    require_root!();
    let id = unique_id("bad-bundle");
    let o = rt(&["create", "--bundle", "/nonexistent/pit-bundle", &id]);
    expect_error(&o, &["/nonexistent/pit-bundle"]);
    rt(&["state", &id]).expect_fail();
    assert!(!std::path::Path::new(ROOT).join(&id).exists());
    // a bundle directory without config.json
    let b = Bundle::empty(&["true"]);
    let o = rt(&["create", "--bundle", &b.path_str(), &id]);
    expect_error(&o, &["config.json"]);
    assert!(!std::path::Path::new(ROOT).join(&id).exists());
}

#[test]
fn duplicate_id() {
    require_root!();
    let a = Container::new("bad-dup", Bundle::new(&["sleep", "100"]));
    a.create().expect_ok();
    let mut b = Container::with_id(a.id.clone(), ROOT, Bundle::new(&["sleep", "100"]));
    b.disarm(); // its Drop must not delete a's container
    let o = b.create();
    expect_error(&o, &[&a.id]);
    // the first container is untouched
    let st = a.state();
    assert_eq!(st["status"], "created");
    assert!(pid_alive(st["pid"].as_i64().unwrap() as i32));
    let bb = std::fs::canonicalize(st["bundle"].as_str().unwrap()).unwrap();
    assert_eq!(bb, std::fs::canonicalize(a.bundle.path()).unwrap());
}

#[test]
fn unknown_command_and_flag() {
    require_root!();
    let o = rt(&["pit-frobnicate"]);
    expect_error(&o, &["pit-frobnicate"]);
    let o = rt(&["create", "--pit-bogus-flag", "x"]);
    expect_error(&o, &["pit-bogus-flag"]);
    let o = rt(&["--pit-bogus-global", "list"]);
    expect_error(&o, &["pit-bogus-global"]);
}

#[test]
fn unknown_ids() {
    require_root!();
    for cmd in ["start", "state", "kill", "pause", "resume", "ps", "delete"] {
        let o = rt(&[cmd, "pit-no-such-id"]);
        expect_error(&o, &["pit-no-such-id"]);
    }
    let o = rt(&["exec", "pit-no-such-id", "true"]);
    expect_error(&o, &["pit-no-such-id"]);
}

#[test]
fn missing_id_argument() {
    require_root!();
    for cmd in ["create", "start", "state", "kill", "delete"] {
        rt(&[cmd]).expect_fail();
    }
}

#[test]
fn invalid_signal() {
    require_root!();
    let c = Container::new("bad-signal", Bundle::new(&["sleep", "100"]));
    c.create_start();
    for sig in ["SIGPITBOGUS", "999", "-3"] {
        let o = c.kill(sig);
        expect_error(&o, &[sig.trim_start_matches("SIG")]);
    }
    assert_eq!(c.status().as_deref(), Some("running"));
}

#[test]
fn invalid_log_format() {
    require_root!();
    let o = rt(&["--log-format", "pit-xml", "list"]);
    expect_error(&o, &["pit-xml"]);
}

#[test]
fn update_with_bad_json() {
    require_root!();
    let c = Container::new("bad-update", Bundle::new(&["sleep", "100"]));
    c.create_start();
    let o = c
        .cmd()
        .args(["update", "-r", "-", &c.id])
        .stdin("{ not json")
        .run();
    o.expect_fail();
    assert_eq!(c.status().as_deref(), Some("running"));
}

#[test]
fn hostile_exec_process_file() {
    require_root!();
    let c = Container::new("bad-procfile", Bundle::new(&["sleep", "100"]));
    c.create_start();
    let f = c.bundle.file("p.json");
    for text in ["{", "{\"args\": 5}", "{\"cwd\": \"/\"}", "[]"] {
        std::fs::write(&f, text).unwrap();
        let o = c.exec(&["--process", f.to_str().unwrap()], &[]);
        o.expect_fail();
    }
    assert_eq!(c.status().as_deref(), Some("running"));
}
