//! checkpoint / restore: runc's flags are accepted; a container whose root a FUSE file
//! server serves is refused with the reason and keeps running; a kernel-mounted root
//! (`run.porta.fs=kernel`) goes through CRIU (when CRIU works on this kernel: a
//! `--leave-running` checkpoint writes images; else CRIU's own failure is reported) and
//! keeps running either way.

use porta_integration::*;

const LOOP: &str = "trap 'exit 3' TERM; while true; do sleep 0.1; done";

fn running(tag: &str, kernel_root: bool) -> Container {
    let mut b = Bundle::new(&["sh", "-c", LOOP]);
    if kernel_root {
        b.annotation("run.porta.fs", "kernel");
    }
    let c = Container::new(tag, b);
    c.create_start();
    c
}

/// Whether CRIU can work on this host at all (`criu check` exits 0).
fn criu_works() -> bool {
    have_command("criu") && porta_integration::cmd::host("criu", &["check"]).ok()
}

fn assert_still_running(c: &Container, pid: i32) {
    assert_eq!(
        c.status().as_deref(),
        Some("running"),
        "container {} not running",
        c.id
    );
    assert_eq!(c.pid(), pid, "the container's process changed");
    assert!(pid_alive(pid));
}

fn no_clap_rejection(o: &Out) {
    for bad in [
        "unexpected argument",
        "Usage:",
        "unrecognized",
        "flag provided but not defined",
    ] {
        assert!(!o.stderr.contains(bad), "a flag was rejected: {o}");
    }
}

/// Every flag of runc's checkpoint is accepted (Podman, Docker and ctr send --image-path
/// and --work-path); on a root served by the file server Porta refuses, says why and what
/// would make it possible, and the container keeps running.
#[test]
fn checkpoint_flags_and_file_server_refusal() {
    require_root!();
    let c = running("ckpt-fuse", false);
    let pid = c.pid();
    let img = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let (i, w) = (
        img.path().display().to_string(),
        work.path().display().to_string(),
    );
    let o = c.rt(&[
        "checkpoint",
        "--image-path",
        &i,
        "--work-path",
        &w,
        "--leave-running",
        "--tcp-established",
        "--ext-unix-sk",
        "--shell-job",
        "--file-locks",
        "--manage-cgroups-mode",
        "soft",
        "--auto-dedup",
        &c.id,
    ]);
    no_clap_rejection(&o);
    assert_still_running(&c, pid);
    if is_porta() {
        o.expect_fail();
        assert!(o.stderr.contains("FUSE"), "{o}");
        assert!(o.stderr.contains("run.porta.fs=kernel"), "{o}");
    }
}

/// The rest of runc's checkpoint flags parse too (pre-dump, parent path, page server,
/// lazy pages with a status fd, empty network namespace).
#[test]
fn checkpoint_remaining_flags_parse() {
    require_root!();
    let c = running("ckpt-flags", true);
    let pid = c.pid();
    let img = tempfile::tempdir().unwrap();
    let i = img.path().display().to_string();
    let o = c.rt(&[
        "checkpoint",
        "--image-path",
        &i,
        "--pre-dump",
        "--parent-path",
        "..",
        "--empty-ns",
        "network",
        &c.id,
    ]);
    no_clap_rejection(&o);
    assert_still_running(&c, pid);
    let o = c.rt(&[
        "checkpoint",
        "--image-path",
        &i,
        "--leave-running",
        "--lazy-pages",
        "--status-fd",
        "-1",
        "--page-server",
        "no-port",
        &c.id,
    ]);
    no_clap_rejection(&o);
    assert_still_running(&c, pid);
    if is_porta() {
        // runc 1.2's --tcp-skip-in-flight and --link-remap (runc 1.1 has neither).
        let o2 = c.rt(&[
            "checkpoint",
            "--image-path",
            &i,
            "--leave-running",
            "--tcp-skip-in-flight",
            "--link-remap",
            "--manage-cgroups-mode",
            "bogus",
            &c.id,
        ]);
        no_clap_rejection(&o2);
        assert!(o2.stderr.contains("bogus"), "{o2}");
        assert_still_running(&c, pid);
        // The page server address is checked before CRIU runs (and with lazy pages too).
        o.expect_fail();
        assert!(
            o.stderr.contains("--page-server") || o.stderr.contains("--lazy-pages"),
            "{o}"
        );
    }
}

/// A kernel-mounted root is checkpointed through CRIU. Where CRIU works, `--leave-running`
/// writes the images and the container keeps running; where it cannot work on this kernel,
/// the error is CRIU's, and the container keeps running as well.
#[test]
fn checkpoint_kernel_root_through_criu() {
    require_root!();
    let mut b = Bundle::new(&["sh", "-c", LOOP]);
    b.annotation("run.porta.fs", "kernel");
    let data = tempfile::tempdir().unwrap();
    b.mount(json!({"destination": "/mnt", "type": "bind",
                   "source": data.path().display().to_string(), "options": ["rbind", "ro"]}));
    let c = Container::new("ckpt-kernel", b);
    c.create_start();
    let pid = c.pid();
    let img = tempfile::tempdir().unwrap();
    let i = img.path().display().to_string();
    let o = c.rt(&[
        "checkpoint",
        "--image-path",
        &i,
        "--leave-running",
        "--tcp-established",
        "--ext-unix-sk",
        "--file-locks",
        "--manage-cgroups-mode",
        "full",
        &c.id,
    ]);
    no_clap_rejection(&o);
    assert_still_running(&c, pid);
    if criu_works() {
        o.expect_ok();
        assert!(
            img.path().join("inventory.img").exists(),
            "no images written: {o}"
        );
    } else {
        o.expect_fail();
        if is_porta() {
            assert!(o.stderr.contains("criu dump failed"), "{o}");
            assert!(o.stderr.contains("keeps running"), "{o}");
            // CRIU got as far as the kernel: its command line was right.
            for bad in [
                "excessive parameter",
                "unrecognized option",
                "invalid option",
                "Unknown",
            ] {
                assert!(
                    !o.stderr.contains(bad),
                    "criu refused Porta's command line: {o}"
                );
            }
        }
    }
}

/// A wrong --manage-cgroups-mode is named, nothing is dumped, the container keeps running.
#[test]
fn checkpoint_bad_cgroup_mode_is_named() {
    require_root!();
    let c = running("ckpt-badmode", true);
    let pid = c.pid();
    let img = tempfile::tempdir().unwrap();
    let i = img.path().display().to_string();
    let o = c.rt(&[
        "checkpoint",
        "--image-path",
        &i,
        "--manage-cgroups-mode",
        "bogus",
        &c.id,
    ]);
    o.expect_fail();
    assert_still_running(&c, pid);
    if is_porta() {
        assert!(o.stderr.contains("--manage-cgroups-mode"), "{o}");
        assert!(o.stderr.contains("bogus"), "{o}");
    }
}

/// runc's restore flags are accepted; with no checkpoint in --image-path, restore fails
/// clearly and makes no container. A bundle whose root the file server would serve is
/// refused with the reason.
#[test]
fn restore_flags_and_refusals() {
    require_root!();
    let img = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let (i, w) = (
        img.path().display().to_string(),
        work.path().display().to_string(),
    );
    let mut b = Bundle::new(&["sh", "-c", LOOP]);
    b.annotation("run.porta.fs", "kernel");
    let c = Container::new("rst-flags", b);
    let pidf = c.bundle.file("restored.pid").display().to_string();
    let bundle = c.bundle.path_str();
    let o = c.rt(&[
        "restore",
        "--image-path",
        &i,
        "--work-path",
        &w,
        "--bundle",
        &bundle,
        "--detach",
        "--pid-file",
        &pidf,
        "--no-subreaper",
        "--no-pivot",
        "--tcp-established",
        "--ext-unix-sk",
        "--shell-job",
        "--file-locks",
        "--manage-cgroups-mode",
        "soft",
        "--empty-ns",
        "network",
        "--auto-dedup",
        "--lazy-pages",
        &c.id,
    ]);
    no_clap_rejection(&o);
    o.expect_fail();
    c.rt(&["state", &c.id]).expect_fail();
    if is_porta() {
        assert!(o.stderr.contains("no CRIU checkpoint"), "{o}");
        let fuse = Container::new("rst-fuse", Bundle::new(&["true"]));
        let fb = fuse.bundle.path_str();
        let o = fuse.rt(&[
            "restore",
            "--image-path",
            &i,
            "--bundle",
            &fb,
            "--detach",
            &fuse.id,
        ]);
        o.expect_fail();
        assert!(
            o.stderr.contains("FUSE") && o.stderr.contains("run.porta.fs=kernel"),
            "{o}"
        );
        fuse.rt(&["state", &fuse.id]).expect_fail();
    }
}

/// `features` tells checkpoint needs a kernel-mounted root.
#[test]
fn features_tell_checkpoint_needs_kernel_root() {
    require_root!();
    porta_only!("Porta's annotation for checkpoint in the features document");
    let o = rt(&["features"]);
    o.expect_ok();
    let v = o.json();
    let note = v["annotations"]["run.porta.checkpoint"]
        .as_str()
        .unwrap_or_default();
    assert!(
        note.contains("run.porta.fs=kernel") && note.contains("FUSE"),
        "{note:?}"
    );
}
