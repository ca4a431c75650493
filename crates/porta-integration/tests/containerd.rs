//! containerd drives the runtime through its runc v2 shim: a private containerd (root,
//! state and sockets under a temporary directory), an OCI image built from the busybox
//! root file system, `ctr run --rm --runc-binary`, a detached task with `exec`, `kill`
//! and removal. Nothing of the host's containerd is touched.

use porta_integration::*;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const IMAGE: &str = "docker.io/library/pit-busybox:latest";

struct Containerd {
    dir: PathBuf,
    child: Child,
    /// Whether /run/containerd existed before (containerd 1.6 puts shim sockets in
    /// /run/containerd/s whatever its config says; the test removes what it made).
    had_run_dir: bool,
}

fn sha256_file(p: &Path) -> String {
    let o = cmd::host("sha256sum", &[p.to_str().unwrap()]);
    o.expect_ok();
    o.stdout.split_whitespace().next().unwrap().to_string()
}

/// Stores `p` as a blob of the layout at `img`; returns (digest, size).
fn add_blob(img: &Path, p: &Path) -> (String, u64) {
    let d = sha256_file(p);
    let size = std::fs::metadata(p).unwrap().len();
    std::fs::rename(p, img.join("blobs/sha256").join(&d)).unwrap();
    (format!("sha256:{d}"), size)
}

/// Writes an OCI image archive (one uncompressed layer) of the test root file system.
fn build_image(dir: &Path) -> PathBuf {
    let img = dir.join("img");
    std::fs::create_dir_all(img.join("blobs/sha256")).unwrap();
    let layer = dir.join("layer.tar");
    rootfs::tar_to(&layer).unwrap();
    let (ld, ls) = add_blob(&img, &layer);
    let cfg = dir.join("config.json");
    std::fs::write(
        &cfg,
        serde_json::to_vec(&json!({
            "architecture": "amd64", "os": "linux",
            "config": {"Env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"], "Cmd": ["sh"]},
            "rootfs": {"type": "layers", "diff_ids": [ld]}
        }))
        .unwrap(),
    )
    .unwrap();
    let (cd, cs) = add_blob(&img, &cfg);
    let man = dir.join("manifest.json");
    std::fs::write(&man, serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": cs},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": ld, "size": ls}]
    })).unwrap()).unwrap();
    let (md, ms) = add_blob(&img, &man);
    std::fs::write(img.join("index.json"), serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md, "size": ms,
            "annotations": {"io.containerd.image.name": IMAGE, "org.opencontainers.image.ref.name": "latest"}}]
    })).unwrap()).unwrap();
    std::fs::write(img.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let tar = dir.join("image.tar");
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
    tar
}

impl Containerd {
    fn start() -> Containerd {
        std::fs::create_dir_all(BUNDLES).unwrap();
        let dir = tempfile::Builder::new()
            .prefix("ctrd-")
            .tempdir_in(BUNDLES)
            .unwrap()
            .keep();
        let d = dir.display();
        let cfg = format!(
            "version = 2\nroot = \"{d}/root\"\nstate = \"{d}/state\"\n\
             disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
             [grpc]\n  address = \"{d}/c.sock\"\n[ttrpc]\n  address = \"{d}/c.sock.ttrpc\"\n"
        );
        std::fs::write(dir.join("config.toml"), cfg).unwrap();
        let had_run_dir = Path::new("/run/containerd").exists();
        let log = std::fs::File::create(dir.join("containerd.log")).unwrap();
        let child = Command::new("containerd")
            .arg("--config")
            .arg(dir.join("config.toml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start containerd");
        let sock = dir.join("c.sock");
        let up = wait_for(Duration::from_secs(30), || sock.exists().then_some(()));
        let me = Containerd {
            dir,
            child,
            had_run_dir,
        };
        assert!(
            up.is_some(),
            "containerd did not come up: {}",
            std::fs::read_to_string(me.dir.join("containerd.log")).unwrap_or_default()
        );
        me
    }
    fn ctr(&self) -> Cmd {
        Cmd::new("ctr")
            .arg("-a")
            .arg(self.dir.join("c.sock"))
            .args(["-n", "pit"])
            .timeout(Duration::from_secs(120))
    }
    fn run_opts(&self) -> Vec<String> {
        vec![
            "--snapshotter".into(),
            "native".into(),
            "--runc-binary".into(),
            runtime().display().to_string(),
            "--runc-root".into(),
            self.dir.join("rr").display().to_string(),
            "--fifo-dir".into(),
            self.dir.join("fifo").display().to_string(),
        ]
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = self.ctr().args(["images", "rm", IMAGE]).run();
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let gone = wait_for(Duration::from_secs(10), || {
            self.child.try_wait().ok().flatten()
        });
        if gone.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let d = self.dir.display().to_string();
        let mut mps: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_whitespace().nth(4).map(str::to_string))
            .filter(|m| m.starts_with(&d))
            .collect();
        mps.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in &mps {
            let c = std::ffi::CString::new(m.as_str()).unwrap();
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
        if !std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .contains(&d)
        {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
        if !self.had_run_dir {
            for p in [
                "/run/containerd/fifo",
                "/run/containerd/s",
                "/run/containerd",
            ] {
                let _ = std::fs::remove_dir(p); // only when empty
            }
        }
    }
}

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
    cd.ctr()
        .args(["task", "kill", "-s", "KILL", &id])
        .run()
        .expect_ok();
    let stopped = wait_for(Duration::from_secs(20), || {
        let o = cd.ctr().args(["task", "ls"]).run();
        o.stdout
            .lines()
            .any(|l| l.starts_with(&id) && l.contains("STOPPED"))
            .then_some(())
    });
    assert!(stopped.is_some(), "task not stopped after kill");
    cd.ctr().args(["task", "rm", &id]).run().expect_ok();
    cd.ctr().args(["containers", "rm", &id]).run().expect_ok();
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
}
