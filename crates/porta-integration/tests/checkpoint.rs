//! checkpoint / restore: runc's flags are accepted; a container whose root a FUSE file
//! server serves is refused with the reason and keeps running; a kernel-mounted root
//! (`run.porta.fs=kernel`) goes through CRIU (when CRIU works on this kernel: a
//! `--leave-running` checkpoint writes images; else CRIU's own failure is reported) and
//! keeps running either way.

use porta_integration::*;
use std::time::Duration;

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

/// A counting loop that keeps its count in a shell variable (only a restored process can
/// go on from where it was), writes it to /data/cnt and stdout, and marks the /dev tmpfs.
const COUNTER: &str = "i=0; trap 'exit 3' TERM; echo kept > /dev/shm/mark; \
    while true; do i=$((i+1)); echo $i > /data/cnt; echo tick $i; sleep 0.1; done";

/// A kernel-rooted bundle running [`COUNTER`] with `data` bound at /data.
fn counter_bundle(data: &std::path::Path) -> Bundle {
    let mut b = Bundle::new(&["sh", "-c", COUNTER]);
    b.annotation("run.porta.fs", "kernel");
    b.mount(json!({"destination": "/data", "type": "bind",
                   "source": data.display().to_string(), "options": ["rbind", "rw"]}));
    b
}

/// The count [`COUNTER`] last wrote, once it is at least `min`.
fn count_reaching(data: &std::path::Path, min: u64) -> u64 {
    wait_for(Duration::from_secs(60), || {
        std::fs::read_to_string(data.join("cnt"))
            .ok()
            .and_then(|t| t.trim().parse::<u64>().ok())
            .filter(|n| *n >= min)
    })
    .unwrap_or_else(|| panic!("the counter never reached {min}"))
}

/// /dev/null, for writing.
fn dev_null() -> std::fs::File {
    std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/null")
        .unwrap()
}

/// Creates and starts `c` with its standard output on /dev/null: CRIU hands an outside
/// file to the restored process only from a file of the same kind and size (restore's own
/// /dev/null here; a pipe, as engines give, has no such check).
fn start_quiet(c: &Container) {
    c.cmd()
        .args(["create", "--bundle", &c.bundle.path_str(), &c.id])
        .stdout_file(dev_null())
        .run()
        .expect_ok();
    c.start().expect_ok();
}

/// Starts a [`COUNTER`] container on `data`, lets it count to `min`, then checkpoints it
/// with `extra` flags; returns it, its process's pid and the image directory.
fn checkpointed(
    tag: &str,
    data: &std::path::Path,
    min: u64,
    extra: &[&str],
) -> (Container, i32, tempfile::TempDir) {
    let a = Container::new(tag, counter_bundle(data));
    start_quiet(&a);
    let pid = a.pid();
    count_reaching(data, min);
    let img = tempfile::tempdir().unwrap();
    let i = img.path().display().to_string();
    a.cmd()
        .arg("checkpoint")
        .args(extra)
        .args(["--image-path", &i, &a.id])
        .run()
        .expect_ok();
    (a, pid, img)
}

/// Requires a CRIU that works on this kernel (scripts/criu.sh installs one).
fn require_criu() {
    assert!(
        criu_works(),
        "`criu check` fails on this host: run scripts/criu.sh (it builds a CRIU that works)"
    );
}

/// `checkpoint` (without --leave-running) dumps and removes the container; `restore -d`
/// into a new id with a new root of the same image goes on with the same process: its
/// count in memory continues, the /dev tmpfs keeps what it held, the bind mount and its
/// cgroups are the new container's, its prestart hook runs with the restored pid, the
/// pid file is written, and `exec`, `kill` and `delete` work on it.
#[test]
fn checkpoint_then_restore_goes_on_with_the_same_process() {
    require_root!();
    require_criu();
    let data = tempfile::tempdir().unwrap();
    let (a, a_pid, img) = checkpointed("ckrs-a", data.path(), 3, &[]);
    let i = img.path().display().to_string();
    a.rt(&["state", &a.id]).expect_fail();
    assert!(!pid_alive(a_pid), "the checkpointed process still runs");
    let at_dump: u64 = std::fs::read_to_string(data.path().join("cnt"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();

    // B's prestart hook keeps the state it is given.
    let hook_out = data.path().join("prestart.json");
    let mut bb = counter_bundle(data.path());
    bb.config["hooks"] = json!({"prestart": [{"path": "/bin/sh",
        "args": ["sh", "-c", format!("cat > {}", hook_out.display())]}]});
    let b = Container::new("ckrs-b", bb);
    let pidf = b.bundle.file("restored.pid").display().to_string();
    let o = b
        .cmd()
        .args([
            "restore",
            "--image-path",
            &i,
            "--bundle",
            &b.bundle.path_str(),
        ])
        .args(["--detach", "--pid-file", &pidf, &b.id])
        .stdout_file(dev_null())
        .run();
    o.expect_ok();
    assert_eq!(b.status().as_deref(), Some("running"), "{o}");
    let pid = b.pid();
    assert_eq!(
        std::fs::read_to_string(&pidf).unwrap().trim(),
        pid.to_string()
    );
    // The prestart hook ran during the restore, with the restored process's pid.
    let hook: Value = serde_json::from_slice(&std::fs::read(&hook_out).unwrap()).unwrap();
    assert_eq!(hook["id"], b.id.as_str(), "{hook}");
    assert_eq!(hook["pid"], pid, "{hook}");
    // The shell's own count goes on from the dump: a fresh start would begin at 1.
    let next = count_reaching(data.path(), at_dump + 1);
    assert!(next > at_dump);
    // Its standard output (/dev/null outside the container) is restore's.
    assert_eq!(
        std::fs::read_link(format!("/proc/{pid}/fd/1")).unwrap(),
        std::path::Path::new("/dev/null")
    );
    let e = b.exec(&[], &["sh", "-c", "cat /dev/shm/mark; cat /proc/1/cmdline"]);
    e.expect_ok();
    assert!(e.stdout.contains("kept"), "{e}");
    assert!(e.stdout.contains("/data/cnt"), "{e}");
    // The restored tree is in the new container's groups.
    let cg = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    for line in cg.lines() {
        assert!(
            line.ends_with(&format!("/{}/payload", b.id)),
            "not in {}'s group: {cg}",
            b.id
        );
    }
    b.kill("TERM").expect_ok();
    b.wait_stopped(60);
    b.delete().expect_ok();
    b.rt(&["state", &b.id]).expect_fail();
}

/// `restore` in the foreground waits for the restored process, passes its exit code on
/// and removes the container; a `--leave-running` checkpoint leaves the original running
/// beside its restored copy.
#[test]
fn foreground_restore_of_a_running_copy() {
    require_root!();
    require_criu();
    let data = tempfile::tempdir().unwrap();
    let (a, a_pid, img) = checkpointed("ckfg-a", data.path(), 2, &["--leave-running"]);
    let i = img.path().display().to_string();
    assert_still_running(&a, a_pid);
    a.kill("KILL").expect_ok();
    a.wait_stopped(60);

    let b = Container::new("ckfg-b", counter_bundle(data.path()));
    let cmd = b
        .cmd()
        .args([
            "restore",
            "--image-path",
            &i,
            "--bundle",
            &b.bundle.path_str(),
            &b.id,
        ])
        .stdout_file(dev_null())
        .timeout(Duration::from_secs(120));
    let fg = std::thread::spawn(move || cmd.run());
    let pid = wait_for(Duration::from_secs(60), || {
        (b.status().as_deref() == Some("running")).then(|| b.pid())
    })
    .expect("the restored container never ran");
    assert_ne!(pid, a_pid);
    b.kill("TERM").expect_ok();
    let o = fg.join().unwrap();
    assert_eq!(o.code, 3, "the exit code of the restored process: {o}");
    b.rt(&["state", &b.id]).expect_fail();
}

/// A restore CRIU cannot complete (the bundle lacks a bind mount the checkpoint has)
/// fails with CRIU's reason and leaves no state, no cgroup and no process behind.
#[test]
fn failed_restore_leaves_nothing() {
    require_root!();
    require_criu();
    porta_only!("Porta's rollback of a failed restore");
    let data = tempfile::tempdir().unwrap();
    let (_a, _, img) = checkpointed("ckbad-a", data.path(), 2, &[]);
    let i = img.path().display().to_string();

    let mut bare = Bundle::new(&["sh", "-c", COUNTER]);
    bare.annotation("run.porta.fs", "kernel");
    let b = Container::new("ckbad-b", bare);
    let o = b.rt(&[
        "restore",
        "--detach",
        "--image-path",
        &i,
        "--bundle",
        &b.bundle.path_str(),
        &b.id,
    ]);
    o.expect_fail();
    assert!(o.stderr.contains("criu restore failed"), "{o}");
    b.rt(&["state", &b.id]).expect_fail();
    let leftovers: Vec<_> = std::fs::read_dir("/sys/fs/cgroup")
        .unwrap()
        .flatten()
        .map(|h| h.path().join(&b.id))
        .filter(|p| p.exists())
        .collect();
    assert!(leftovers.is_empty(), "groups left: {leftovers:?}");
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

/// A terminal: the checkpointed container's pty is replaced on restore by a new one whose
/// master goes to `--console-socket`; the restored shell reads from it and goes on with
/// its count.
#[test]
fn restore_gives_a_terminal_container_a_new_pty() {
    require_root!();
    require_criu();
    let script = "i=0; while read l; do i=$((i+1)); echo \"got $i $l\"; done";
    let bundle = || {
        let mut b = Bundle::new(&["sh", "-c", script]);
        b.annotation("run.porta.fs", "kernel");
        b.terminal(true);
        b
    };
    let a = Container::new("cktty-a", bundle());
    let sock = porta_integration::console::ConsoleSocket::new(a.bundle.path());
    a.create_with(&["--console-socket", &sock.path_str()])
        .expect_ok();
    a.start().expect_ok();
    let (mut pty, _) = sock.master().expect("the first pty master");
    pty.write_all(b"one\n").unwrap();
    let seen = pty.read_until("got 1 one", Duration::from_secs(60));
    assert!(seen.contains("got 1 one"), "{seen:?}");
    let img = tempfile::tempdir().unwrap();
    let i = img.path().display().to_string();
    a.rt(&["checkpoint", "--image-path", &i, &a.id]).expect_ok();

    let b = Container::new("cktty-b", bundle());
    let sock = porta_integration::console::ConsoleSocket::new(b.bundle.path());
    b.rt(&[
        "restore",
        "--detach",
        "--console-socket",
        &sock.path_str(),
        "--image-path",
        &i,
        "--bundle",
        &b.bundle.path_str(),
        &b.id,
    ])
    .expect_ok();
    let (mut pty, _) = sock.master().expect("the restored container's pty master");
    pty.write_all(b"two\n").unwrap();
    let seen = pty.read_until("got 2 two", Duration::from_secs(60));
    assert!(seen.contains("got 2 two"), "{seen:?}");
    drop(pty);
    b.rt(&["delete", "--force", &b.id]).expect_ok();
}
