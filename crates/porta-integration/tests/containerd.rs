//! containerd drives the runtime through its runc v2 shim: a private containerd (root,
//! state and sockets under a temporary directory), an OCI image built from the busybox
//! root file system, `ctr run --rm --runc-binary`, a detached task with `exec`, `kill`
//! and removal. Nothing of the host's containerd is touched.

use porta_integration::containerd::{build_image, Containerd, IMAGE};
use porta_integration::*;

#[test]
fn containerd_end_to_end() {
    require_root!();
    if !have_command("containerd") || !have_command("ctr") {
        skip("containerd/ctr not installed (scripts/deps.sh installs them)");
        return;
    }
    let cd = Containerd::start();
    let tar = build_image(&cd.dir);
    cd.ctr()
        .args(["images", "import", "--snapshotter", "native"])
        .arg(&tar)
        .run()
        .expect_ok();

    // run --rm in the foreground
    let id = unique_id("ctr-run");
    let o = cd
        .ctr()
        .args(["run", "--rm"])
        .args(cd.run_opts())
        .args([IMAGE, &id, "echo", "hi-from-ctr"])
        .run();
    o.expect_ok();
    assert!(o.stdout.contains("hi-from-ctr"), "{o}");

    // exit code
    let id = unique_id("ctr-exit");
    let o = cd
        .ctr()
        .args(["run", "--rm"])
        .args(cd.run_opts())
        .args([IMAGE, &id, "sh", "-c", "exit 4"])
        .run();
    assert_eq!(o.code, 4, "{o}");

    // a detached task: exec, kill, delete
    let id = unique_id("ctr-task");
    cd.ctr()
        .args(["run", "-d"])
        .args(cd.run_opts())
        .args([IMAGE, &id, "sleep", "1000"])
        .run()
        .expect_ok();
    let o = cd.ctr().args(["task", "ls"]).run();
    assert!(
        o.stdout
            .lines()
            .any(|l| l.starts_with(&id) && l.contains("RUNNING")),
        "{o}"
    );
    let fifo = cd.dir.join("fifo").display().to_string();
    let o = cd
        .ctr()
        .args([
            "task",
            "exec",
            "--fifo-dir",
            &fifo,
            "--exec-id",
            "e1",
            &id,
            "sh",
            "-c",
            "echo exec-ok; ps -o comm",
        ])
        .run();
    o.expect_ok();
    assert!(
        o.stdout.contains("exec-ok") && o.stdout.contains("sleep"),
        "{o}"
    );
    let o = cd.ctr().args(["task", "ps", &id]).run();
    o.expect_ok();
    cd.kill_and_remove(&id);
    let o = cd.ctr().args(["containers", "ls", "-q"]).run();
    assert!(o.stdout.trim().is_empty(), "{o}");
    // the runtime's state under its root is gone
    let rr = cd.dir.join("rr/pit");
    assert!(
        leaks::state_entries(rr.to_str().unwrap()).is_empty(),
        "{:?}",
        leaks::state_entries(rr.to_str().unwrap())
    );
    let dir = cd.dir.clone();
    drop(cd);
    assert!(
        !dir.exists(),
        "containerd's private directory could not be removed: {}",
        dir.display()
    );
    let left = porta_integration::containerd::namespace_cgroups();
    assert!(left.is_empty(), "cgroups left: {left:?}");
}
