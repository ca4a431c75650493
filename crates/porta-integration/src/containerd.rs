//! A private containerd for the tests that drive the runtime through containerd's runc v2
//! shim, and an OCI image of the test root file system for it.

use crate::{cmd, rootfs, runtime, wait_for, Cmd, BUNDLES};
use serde_json::json;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The image the tests import.
pub const IMAGE: &str = "docker.io/library/pit-busybox:latest";
/// The containerd namespace of the tests.
pub const NAMESPACE: &str = "pit";

/// A private containerd (root, state and sockets under a temporary directory), started
/// directly or inside other namespaces (through a command prefix such as `nsenter …`).
pub struct Containerd {
    /// Its private directory.
    pub dir: PathBuf,
    child: Child,
    /// The command prefix that runs a program where containerd runs (empty: here).
    prefix: Vec<OsString>,
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

/// Writes an OCI image archive (one uncompressed layer) of the test root file system,
/// named [`IMAGE`], whose command is `sh`.
pub fn build_image(dir: &Path) -> PathBuf {
    build_oci_image(dir, IMAGE, &[], &["sh"])
}

/// Writes an OCI image archive (one uncompressed layer: the test root file system) named
/// `name`, with the given entrypoint and command, in a directory of its own below `dir`;
/// returns the archive's path (for `ctr images import`).
pub fn build_oci_image(dir: &Path, name: &str, entrypoint: &[&str], cmd: &[&str]) -> PathBuf {
    let slug: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let work = dir.join(format!("image-{slug}"));
    let img = work.join("layout");
    std::fs::create_dir_all(img.join("blobs/sha256")).unwrap();
    let layer = work.join("layer.tar");
    rootfs::tar_to(&layer).unwrap();
    let (ld, ls) = add_blob(&img, &layer);
    let cfg = work.join("config.json");
    let mut config = json!({"Env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"]});
    if !entrypoint.is_empty() {
        config["Entrypoint"] = json!(entrypoint);
    }
    if !cmd.is_empty() {
        config["Cmd"] = json!(cmd);
    }
    std::fs::write(
        &cfg,
        serde_json::to_vec(&json!({
            "architecture": "amd64", "os": "linux",
            "config": config,
            "rootfs": {"type": "layers", "diff_ids": [ld]}
        }))
        .unwrap(),
    )
    .unwrap();
    let (cd, cs) = add_blob(&img, &cfg);
    let man = work.join("manifest.json");
    std::fs::write(&man, serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": cs},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": ld, "size": ls}]
    })).unwrap()).unwrap();
    let (md, ms) = add_blob(&img, &man);
    let tag = name.rsplit_once(':').map_or("latest", |(_, t)| t);
    std::fs::write(img.join("index.json"), serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md, "size": ms,
            "annotations": {"io.containerd.image.name": name, "org.opencontainers.image.ref.name": tag}}]
    })).unwrap()).unwrap();
    std::fs::write(img.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let tar = work.join("image.tar");
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
    /// Starts a private containerd on this host.
    pub fn start() -> Containerd {
        Self::start_in(Vec::new())
    }

    /// Starts a private containerd through `prefix` (e.g. `nsenter -t PID -m -p -C --`).
    pub fn start_in(prefix: Vec<OsString>) -> Containerd {
        Self::launch(prefix, None)
    }

    /// Starts a private containerd on this host with its CRI plugin (disabled otherwise)
    /// configured by the TOML that `cri_config` returns for the private directory it is
    /// given (`[plugins."io.containerd.grpc.v1.cri"…]` sections).
    pub fn start_with_cri(cri_config: impl Fn(&Path) -> String) -> Containerd {
        Self::launch(Vec::new(), Some(&cri_config))
    }

    fn launch(prefix: Vec<OsString>, cri: Option<&dyn Fn(&Path) -> String>) -> Containerd {
        std::fs::create_dir_all(BUNDLES).unwrap();
        let dir = tempfile::Builder::new()
            .prefix("ctrd-")
            .tempdir_in(BUNDLES)
            .unwrap()
            .keep();
        let d = dir.display();
        let plugins = match cri {
            Some(_) => String::new(),
            None => "disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n".to_string(),
        };
        let mut cfg = format!(
            "version = 2\nroot = \"{d}/root\"\nstate = \"{d}/state\"\n{plugins}\
             [grpc]\n  address = \"{d}/c.sock\"\n[ttrpc]\n  address = \"{d}/c.sock.ttrpc\"\n"
        );
        if let Some(cri) = cri {
            cfg.push_str(&cri(&dir));
        }
        std::fs::write(dir.join("config.toml"), cfg).unwrap();
        let had_run_dir = !prefix.is_empty() || Path::new("/run/containerd").exists();
        let log = std::fs::File::create(dir.join("containerd.log")).unwrap();
        let mut c = match prefix.split_first() {
            Some((prog, args)) => {
                let mut c = Command::new(prog);
                c.args(args).arg("containerd");
                c
            }
            None => Command::new("containerd"),
        };
        let child = c
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
            prefix,
            had_run_dir,
        };
        assert!(
            up.is_some(),
            "containerd did not come up: {}",
            std::fs::read_to_string(me.dir.join("containerd.log")).unwrap_or_default()
        );
        me
    }
    /// `ctr` talking to this containerd, in its namespace `pit`.
    pub fn ctr(&self) -> Cmd {
        let c = match self.prefix.split_first() {
            Some((prog, args)) => Cmd::new(prog).args(args).arg("ctr"),
            None => Cmd::new("ctr"),
        };
        c.arg("-a")
            .arg(self.dir.join("c.sock"))
            .args(["-n", NAMESPACE])
            .timeout(Duration::from_secs(120))
    }
    /// Kills task `id` with SIGKILL, waits until containerd reports it stopped, then
    /// removes the task and the container.
    pub fn kill_and_remove(&self, id: &str) {
        self.ctr()
            .args(["task", "kill", "-s", "KILL", id])
            .run()
            .expect_ok();
        let stopped = wait_for(Duration::from_secs(20), || {
            let o = self.ctr().args(["task", "ls"]).run();
            o.stdout
                .lines()
                .any(|l| l.starts_with(id) && l.contains("STOPPED"))
                .then_some(())
        });
        assert!(stopped.is_some(), "task {id} not stopped after kill");
        self.ctr().args(["task", "rm", id]).run().expect_ok();
        self.ctr().args(["containers", "rm", id]).run().expect_ok();
    }

    /// The `ctr run` options that use the runtime under test.
    pub fn run_opts(&self) -> Vec<String> {
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

/// The cgroup directories named after containerd's namespace for the tests (`pit`), in
/// every hierarchy.
pub fn namespace_cgroups() -> Vec<std::path::PathBuf> {
    crate::leaks::cgroups_matching(&|n| n == NAMESPACE)
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = self.ctr().args(["images", "rm", IMAGE]).run();
        // SAFETY: kill(2) takes integers only; no memory is involved.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let gone = wait_for(Duration::from_secs(10), || {
            self.child.try_wait().ok().flatten()
        });
        if gone.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let d = self.dir.display().to_string();
        crate::unmount_below(&self.dir);
        if !std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .contains(&d)
        {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
        // containerd puts its containers' cgroups under one named after its namespace
        // and leaves that behind when they are gone (with runc too); remove it where it
        // is empty.
        for dir in namespace_cgroups() {
            let _ = std::fs::remove_dir(dir);
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
