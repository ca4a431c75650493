//! Podman drives the runtime end to end: an image imported from the busybox root file
//! system, `run --rm`, a detached `run -d`, `exec`, `stop`, `rm`, `rmi`. Podman runs with
//! a private --root/--runroot/--tmpdir under a temporary directory (removed afterwards),
//! so nothing of the host's Podman is touched.

use porta_integration::*;
use std::path::{Path, PathBuf};
use std::time::Duration;

struct Podman {
    dir: PathBuf,
    /// Whether podman's cgroup parent existed before (else the test removes it).
    had_libpod_parent: bool,
}

/// One Podman test at a time: each one's clean-up removes the empty groups under
/// `libpod_parent`, which would take the other's fresh (still empty) leaves with them.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static ONE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    ONE.lock().unwrap_or_else(|p| p.into_inner())
}

fn libpod_parents() -> Vec<PathBuf> {
    leaks::cgroups_matching(&|n| n == "libpod_parent")
}

impl Podman {
    fn new() -> Podman {
        std::fs::create_dir_all(BUNDLES).unwrap();
        let dir = tempfile::Builder::new()
            .prefix("podman-")
            .tempdir_in(BUNDLES)
            .unwrap()
            .keep();
        for d in ["root", "runroot", "tmp", "volumes", "networks"] {
            std::fs::create_dir_all(dir.join(d)).unwrap();
        }
        Podman {
            dir,
            had_libpod_parent: !libpod_parents().is_empty(),
        }
    }
    fn cmd(&self) -> Cmd {
        Cmd::new("podman")
            .args(podman_args(&self.dir, "cgroupfs"))
            .timeout(Duration::from_secs(120))
    }
    fn run(&self, args: &[&str]) -> Out {
        self.cmd().args(args).run()
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self.run(&["rm", "-a", "-f", "-t", "0"]);
        let _ = self.run(&["rmi", "-a", "-f"]);
        let _ = self.run(&["system", "reset", "-f"]);
        // unmount anything podman left below the directory, deepest first, then remove it
        let d = self.dir.display().to_string();
        unmount_below(&self.dir);
        if !self.had_libpod_parent {
            // podman (conmon) leaves its empty cgroup parent behind
            for top in libpod_parents() {
                cgroup::remove_tree(&top);
            }
        }
        let still = std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .contains(&d);
        if !still {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// The limits every container of these tests gets: no network, and open-file and process
/// limits this host's hard limits allow.
const LIMITS: [&str; 5] = [
    "--network=none",
    "--ulimit",
    "nofile=1024:1024",
    "--ulimit",
    "nproc=1024:1024",
];

/// The busybox root imported as an image; returns its name.
fn import_busybox(pm: &Podman) -> &'static str {
    let tar = pm.dir.join("rootfs.tar");
    rootfs::tar_to(&tar).unwrap();
    let image = "localhost/pit-busybox:latest";
    pm.run(&["import", tar.to_str().unwrap(), image])
        .expect_ok();
    image
}

fn have_podman() -> bool {
    if !have_command("podman") {
        skip("podman is not installed (scripts/deps.sh installs it)");
        return false;
    }
    true
}

#[test]
fn podman_end_to_end() {
    require_root!();
    let _serial = serial();
    if !have_podman() {
        return;
    }
    let pm = Podman::new();
    let image = import_busybox(&pm);
    let limits = LIMITS;

    // run --rm in the foreground
    let o = pm
        .cmd()
        .args(["run", "--rm"])
        .args(limits)
        .args([image, "echo", "hi"])
        .run();
    o.expect_ok();
    assert_eq!(o.stdout.trim(), "hi", "{o}");

    // exit codes come through
    let o = pm
        .cmd()
        .args(["run", "--rm"])
        .args(limits)
        .args([image, "sh", "-c", "exit 3"])
        .run();
    assert_eq!(o.code, 3, "{o}");

    // a detached container, exec, stop, rm
    let o = pm
        .cmd()
        .args(["run", "-d", "--name", "pit-podman-detached"])
        .args(limits)
        .args([image, "sleep", "1000"])
        .run();
    o.expect_ok();
    let cid = o.stdout.trim().to_string();
    assert!(!cid.is_empty(), "{o}");
    let o = pm.run(&[
        "inspect",
        "--format",
        "{{.OCIRuntime}} {{.State.Status}}",
        &cid,
    ]);
    o.expect_ok();
    assert!(
        o.stdout.contains(runtime().to_str().unwrap())
            || o.stdout
                .contains(runtime().file_name().unwrap().to_str().unwrap()),
        "podman did not use the runtime under test: {o}"
    );
    assert!(o.stdout.contains("running"), "{o}");
    let o = pm.run(&["exec", &cid, "sh", "-c", "echo exec-ok; hostname"]);
    o.expect_ok();
    assert!(o.stdout.contains("exec-ok"), "{o}");
    let o = pm.run(&["exec", &cid, "ps", "-o", "pid,comm"]);
    o.expect_ok();
    assert!(o.stdout.contains("sleep"), "{o}");
    let o = pm.run(&["top", &cid]);
    let _ = o; // `podman top` needs the runtime's ps; informational only
    let o = pm.cmd().args(["stop", "-t", "2", &cid]).run();
    o.expect_ok();
    let o = pm.run(&["inspect", "--format", "{{.State.Status}}", &cid]);
    assert!(
        o.stdout.contains("exited") || o.stdout.contains("stopped"),
        "{o}"
    );
    pm.run(&["rm", &cid]).expect_ok();
    let o = pm.run(&["ps", "-a", "-q"]);
    o.expect_ok();
    assert!(o.stdout.trim().is_empty(), "containers left in podman: {o}");

    // rm -f of a running container
    let o = pm
        .cmd()
        .args(["run", "-d"])
        .args(limits)
        .args([image, "sleep", "1000"])
        .run();
    o.expect_ok();
    let cid = o.stdout.trim().to_string();
    pm.run(&["rm", "-f", "-t", "0", &cid]).expect_ok();

    pm.run(&["rmi", image]).expect_ok();
    let dir = pm.dir.clone();
    drop(pm);
    assert!(
        !Path::new(&dir).exists(),
        "podman's private directory could not be removed: {}",
        dir.display()
    );
}

/// Podman's global flags with `rt` as the runtime instead of the one under test.
fn podman_args_with(dir: &Path, rt: &Path) -> Vec<std::ffi::OsString> {
    let mut v = podman_args(dir, "cgroupfs");
    if let Some(i) = v.iter().position(|a| a == "--runtime") {
        v[i + 1] = rt.as_os_str().to_owned();
    }
    v
}

/// `podman run --read-only`, `--tmpfs /x` and `--mount type=tmpfs,…`: Podman sends crun's
/// `tmpcopyup` (and `notmpcopyup`), which the runtime must apply, not hand to the kernel.
/// Run with the runtime under test and, side by side, with runc where it is installed.
#[test]
fn podman_read_only_and_tmpfs_mounts() {
    require_root!();
    let _serial = serial();
    if !have_podman() {
        return;
    }
    let pm = Podman::new();
    // an image with content at /x, which a tmpfs there starts with
    let img = pm.dir.join("img");
    rootfs::copy_tree(rootfs::cached(), &img).unwrap();
    std::fs::create_dir_all(img.join("x/sub")).unwrap();
    std::fs::write(img.join("x/sub/f"), "from-the-image\n").unwrap();
    std::os::unix::fs::symlink("sub/f", img.join("x/link")).unwrap();
    let tar = pm.dir.join("img.tar");
    cmd::host(
        "tar",
        &[
            "-C",
            img.to_str().unwrap(),
            "-cf",
            tar.to_str().unwrap(),
            ".",
        ],
    )
    .expect_ok();
    let image = "localhost/pit-busybox-x:latest";
    pm.run(&["import", tar.to_str().unwrap(), image])
        .expect_ok();

    let mut runtimes = vec![runtime()];
    let runc = Path::new("/usr/sbin/runc");
    if runc.exists() && is_porta() {
        runtimes.push(runc.to_path_buf());
    }
    let limits = LIMITS;
    let run = |rt: &Path, args: &[&str]| -> Out {
        Cmd::new("podman")
            .args(podman_args_with(&pm.dir, rt))
            .timeout(Duration::from_secs(120))
            .args(["run", "--rm"])
            .args(limits)
            .args(args)
            .run()
    };
    let mut results: Vec<(String, Vec<String>)> = Vec::new();
    for rt in &runtimes {
        let name = rt.display().to_string();
        let mut seen = Vec::new();

        // --read-only: the root is read-only, /tmp, /var/tmp and /run are writable tmpfs
        let o = run(
            rt,
            &[
                "--read-only",
                image,
                "sh",
                "-c",
                "touch /tmp/a && echo tmp-ok; touch /var/tmp/a && echo var-tmp-ok; \
                 touch /run/a && echo run-ok; touch /etc/a 2>/dev/null || echo root-ro",
            ],
        );
        assert_eq!(o.code, 0, "{name}: {o}");
        for want in ["tmp-ok", "var-tmp-ok", "run-ok", "root-ro"] {
            assert!(o.stdout.contains(want), "{name}: {want} missing: {o}");
        }
        seen.push(o.stdout.clone());

        // --tmpfs /x: a tmpfs that starts with the image's /x
        let o = run(
            rt,
            &[
                "--tmpfs",
                "/x",
                image,
                "sh",
                "-c",
                "cat /x/sub/f; readlink /x/link; echo w > /x/w && echo written; \
                 grep ' /x ' /proc/mounts | cut -d' ' -f3",
            ],
        );
        assert_eq!(o.code, 0, "{name}: {o}");
        for want in ["from-the-image", "sub/f", "written", "tmpfs"] {
            assert!(o.stdout.contains(want), "{name}: {want} missing: {o}");
        }
        seen.push(o.stdout.clone());

        // --mount type=tmpfs with size and mode: copied up by default
        let o = run(
            rt,
            &[
                "--mount",
                "type=tmpfs,destination=/x,tmpfs-size=1m,tmpfs-mode=0700",
                image,
                "sh",
                "-c",
                "stat -c 'mode %a' /x; cat /x/sub/f; grep ' /x ' /proc/mounts | cut -d' ' -f3",
            ],
        );
        assert_eq!(o.code, 0, "{name}: {o}");
        for want in ["from-the-image", "tmpfs"] {
            assert!(o.stdout.contains(want), "{name}: {want} missing: {o}");
        }
        // tmpfs-mode names the root's mode; runc 1.1 lets the copied directory's mode
        // (755) override it, crun and Porta keep the mode asked for
        if rt.as_path() == runtime().as_path() && is_porta() {
            assert!(o.stdout.contains("mode 700"), "{name}: {o}");
        }
        results.push((name, seen));
    }
    // the same output from both runtimes
    if let [(a, ra), (b, rb)] = &results[..] {
        assert_eq!(ra, rb, "{a} and {b} differ");
    }

    // notmpcopyup (crun's; runc 1.1 does not know it): the tmpfs starts empty
    if is_porta() {
        let o = run(
            &runtime(),
            &[
                "--mount",
                "type=tmpfs,destination=/x,notmpcopyup",
                image,
                "sh",
                "-c",
                "echo \"x [$(ls -A /x)]\"",
            ],
        );
        assert_eq!(o.code, 0, "{o}");
        assert!(o.stdout.contains("x []"), "{o}");
    }
    pm.run(&["rmi", image]).expect_ok();
}

/// `podman container checkpoint` and `restore` of a container whose root the kernel
/// mounts (`--annotation run.porta.fs=kernel`): the restored container goes on counting
/// where it stopped (its log is one unbroken sequence) and is running again; a container
/// whose root the file server serves is refused with the reason and keeps running.
#[test]
fn podman_checkpoint_and_restore() {
    require_root!();
    let _serial = serial();
    if !have_podman() {
        return;
    }
    assert!(
        have_command("criu") && cmd::host("criu", &["check"]).ok(),
        "`criu check` fails on this host: run scripts/criu.sh (it builds a CRIU that works)"
    );
    let pm = Podman::new();
    let image = import_busybox(&pm);
    let limits = LIMITS;
    let counter = "i=0; while true; do i=$((i+1)); echo $i; sleep 0.1; done";
    pm.cmd()
        .args(["run", "-d", "--name", "pit-podman-ckpt"])
        .args(["--annotation", "run.porta.fs=kernel"])
        .args(limits)
        .args([image, "sh", "-c", counter])
        .run()
        .expect_ok();
    let lines = |pm: &Podman| pm.run(&["logs", "pit-podman-ckpt"]).stdout.lines().count();
    wait_for(Duration::from_secs(60), || (lines(&pm) >= 3).then_some(()))
        .expect("the counter never wrote");
    pm.run(&["container", "checkpoint", "pit-podman-ckpt"])
        .expect_ok();
    let before = lines(&pm);
    pm.run(&["container", "restore", "pit-podman-ckpt"])
        .expect_ok();
    let o = pm.run(&[
        "inspect",
        "--format",
        "{{.State.Status}}",
        "pit-podman-ckpt",
    ]);
    assert_eq!(o.stdout.trim(), "running", "{o}");
    wait_for(Duration::from_secs(60), || {
        (lines(&pm) >= before + 3).then_some(())
    })
    .expect("the restored counter never wrote");
    // One unbroken count: 1, 2, 3, … (a fresh start would begin at 1 again).
    let log = pm.run(&["logs", "pit-podman-ckpt"]).stdout;
    for (n, l) in log.lines().enumerate() {
        assert_eq!(l.trim(), (n + 1).to_string(), "log: {log}");
    }
    pm.run(&["rm", "-f", "-t", "0", "pit-podman-ckpt"])
        .expect_ok();

    // A root served by the file server: refused, and the container keeps running.
    pm.cmd()
        .args(["run", "-d", "--name", "pit-podman-served"])
        .args(limits)
        .args([image, "sleep", "1000"])
        .run()
        .expect_ok();
    let o = pm.run(&["container", "checkpoint", "pit-podman-served"]);
    o.expect_fail();
    if is_porta() {
        assert!(o.stderr.contains("run.porta.fs=kernel"), "{o}");
    }
    let o = pm.run(&[
        "inspect",
        "--format",
        "{{.State.Status}}",
        "pit-podman-served",
    ]);
    assert_eq!(o.stdout.trim(), "running", "{o}");
    pm.run(&["rm", "-f", "-t", "0", "pit-podman-served"])
        .expect_ok();
}
