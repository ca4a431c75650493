//! The environments a workload runs in: `native` (a chroot into the same root file system) and
//! the OCI runtimes driven through the runc-compatible command line.

use serde_json::{json, Value};
use std::path::{Path, PathBuf};

/// The environments run by default, in report order.
pub const ALL: &[&str] = &[
    "native",
    "porta",
    "porta-nowatch",
    "porta-strict",
    "porta-strict-nowatch",
    "porta-kernel",
    "runc",
    "runc-fuse-overlayfs",
    "crun",
    "runsc",
];

/// Environments run only when asked for with `--runtimes`: `porta-overlay` (the root is an
/// overlay mount the harness makes for each container, without `nfs_export`, as Podman and
/// containerd hand over: the host-change watcher cannot mark it, the servers fall back to
/// short timeouts).
/// `porta-uring` (the file server on FUSE over io_uring, `run.porta.fs.transport=uring`:
/// needs `/sys/module/fuse/parameters/enable_uring` set to Y by the administrator;
/// skipped with that reason otherwise).
/// `porta-memfs` (translator-fuse2fs only: the same probe against Porta's built-in
/// `porta:memfs` translator instead of fuse2fs, the floor of the forwarding).
pub const EXTRA: &[&str] = &["porta-overlay", "porta-uring", "porta-memfs"];

/// Prefix of the environments that run a second, baseline porta binary (`--baseline`):
/// `baseline-porta`, `baseline-porta-strict`, … are the Porta environment of that name run
/// by the baseline binary, so two builds are compared run by run in one invocation.
pub const BASELINE_PREFIX: &str = "baseline-";

/// What a container's `root.path` is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootMount {
    /// The shared root file system itself.
    Shared,
    /// A kernel overlay mount the harness makes for each container over the shared root
    /// (`nfs_export=off`).
    Overlay,
    /// A `fuse-overlayfs` mount (this binary) the harness makes for each container over the
    /// shared root, as rootless Podman's classic root.
    FuseOverlayfs(PathBuf),
}

impl RootMount {
    /// True when each container gets its own mount (made before create, unmounted after
    /// delete).
    pub fn per_container(&self) -> bool {
        !matches!(self, RootMount::Shared)
    }
}

/// The annotation that switches the host-change watcher off.
pub const HOST_CHANGES_OFF: (&str, &str) = ("run.porta.fs.host-changes", "off");

/// How an OCI runtime is invoked.
#[derive(Debug, Clone)]
pub struct Oci {
    /// The runtime binary.
    pub bin: PathBuf,
    /// Global flags before the subcommand (besides `--root`).
    pub global: Vec<String>,
    /// Annotations written into config.json.
    pub annotations: Vec<(String, String)>,
}

#[derive(Debug, Clone)]
/// How an environment runs a workload.
pub enum Kind {
    /// Directly on the host, chrooted into the root file system.
    Native,
    /// In a container of an OCI runtime.
    Oci(Oci),
}

#[derive(Debug, Clone)]
/// One environment of the comparison: a runtime with its flags and annotations.
pub struct Env {
    /// Its name in the report (`native`, `porta`, `porta-strict`, `runc`, …).
    pub name: String,
    /// How it runs workloads.
    pub kind: Kind,
    /// The `--root` state directory, private to this environment.
    pub state_root: PathBuf,
    /// Why this environment is skipped, if it is.
    pub skip: Option<String>,
    /// What each container's root is: the shared root file system, or a mount over it
    /// that the harness makes per container.
    pub root: RootMount,
    /// The runtime's version line, for the report.
    pub version: String,
}

fn find_in_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join(name))
                .find(|f| f.is_file())
        })
        .unwrap_or(None)
}

impl Env {
    /// Builds the environment `name`; `porta` is the path of the porta binary and `baseline`
    /// the one `baseline-*` environments run (`None`: they are skipped). A missing binary
    /// yields an environment with `skip` set; an unknown name, `None`.
    pub fn new(
        name: &str,
        porta: &Path,
        baseline: Option<&Path>,
        state_base: &Path,
    ) -> Option<Env> {
        if let Some(inner) = name.strip_prefix(BASELINE_PREFIX) {
            if !inner.starts_with("porta") {
                return None;
            }
            let missing = Path::new("");
            let mut e = Env::new(inner, baseline.unwrap_or(missing), None, state_base)?;
            e.name = name.into();
            e.state_root = state_base.join(name);
            if baseline.is_none() {
                e.skip = Some(format!("{name}: no --baseline binary given"));
            }
            return Some(e);
        }
        Env::plain(name, porta, state_base)
    }

    fn plain(name: &str, porta: &Path, state_base: &Path) -> Option<Env> {
        let ann = |k: &str, v: &str| vec![(k.to_string(), v.to_string())];
        let (bin, global, annotations): (Option<PathBuf>, Vec<String>, Vec<(String, String)>) =
            match name {
                "native" => {
                    return Some(Env {
                        name: name.into(),
                        kind: Kind::Native,
                        state_root: PathBuf::new(),
                        skip: None,
                        root: RootMount::Shared,
                        version: String::new(),
                    })
                }
                "porta" => (Some(porta.to_path_buf()), vec![], vec![]),
                "porta-nowatch" => (
                    Some(porta.to_path_buf()),
                    vec![],
                    ann(HOST_CHANGES_OFF.0, HOST_CHANGES_OFF.1),
                ),
                "porta-strict" => (
                    Some(porta.to_path_buf()),
                    vec![],
                    ann("run.porta.fs.passthrough", "off"),
                ),
                "porta-strict-nowatch" => (
                    Some(porta.to_path_buf()),
                    vec![],
                    [
                        ann("run.porta.fs.passthrough", "off"),
                        ann(HOST_CHANGES_OFF.0, HOST_CHANGES_OFF.1),
                    ]
                    .concat(),
                ),
                "porta-overlay" | "porta-memfs" => (Some(porta.to_path_buf()), vec![], vec![]),
                "porta-uring" => (
                    Some(porta.to_path_buf()),
                    vec![],
                    ann("run.porta.fs.transport", "uring"),
                ),
                "porta-kernel" => (
                    Some(porta.to_path_buf()),
                    vec![],
                    ann("run.porta.fs", "kernel"),
                ),
                "runc" | "runc-fuse-overlayfs" => (find_in_path("runc"), vec![], vec![]),
                "crun" => (find_in_path("crun"), vec![], vec![]),
                "runsc" => (
                    find_in_path("runsc"),
                    vec!["--network=none".into(), "--platform=ptrace".into()],
                    vec![],
                ),
                _ => return None,
            };
        let mut skip = match &bin {
            None => Some(format!("{name}: binary not found in PATH")),
            Some(b) if !b.is_file() => Some(format!("{name}: binary {} not found", b.display())),
            _ => None,
        };
        if name == "porta-uring" && skip.is_none() {
            let on = std::fs::read_to_string("/sys/module/fuse/parameters/enable_uring")
                .is_ok_and(|v| v.trim() == "Y");
            if !on {
                skip = Some(format!(
                    "{name}: FUSE over io_uring is off (echo Y > /sys/module/fuse/parameters/enable_uring)"
                ));
            }
        }
        let root = match name {
            "porta-overlay" => RootMount::Overlay,
            "runc-fuse-overlayfs" => match find_in_path("fuse-overlayfs") {
                Some(f) => RootMount::FuseOverlayfs(f),
                None => {
                    skip.get_or_insert_with(|| {
                        format!("{name}: fuse-overlayfs not found in PATH (apt-get install fuse-overlayfs)")
                    });
                    RootMount::FuseOverlayfs(PathBuf::from("fuse-overlayfs"))
                }
            },
            _ => RootMount::Shared,
        };
        Some(Env {
            name: name.into(),
            kind: Kind::Oci(Oci {
                bin: bin.unwrap_or_else(|| PathBuf::from(name)),
                global,
                annotations,
            }),
            state_root: state_base.join(name),
            skip,
            root,
            version: String::new(),
        })
    }

    /// The OCI runtime of this environment, unless it is native.
    pub fn oci(&self) -> Option<&Oci> {
        match &self.kind {
            Kind::Oci(o) => Some(o),
            Kind::Native => None,
        }
    }

    /// How the environment is invoked, for the report.
    pub fn invocation(&self) -> String {
        match &self.kind {
            Kind::Native => {
                "chroot ROOTFS /bin/porta-workload ... (no namespaces, no cgroup)".into()
            }
            Kind::Oci(o) => {
                let mut s = format!(
                    "{} {}--root STATE run --bundle B ID",
                    o.bin.display(),
                    o.global.iter().map(|g| format!("{g} ")).collect::<String>()
                );
                for (k, v) in &o.annotations {
                    s.push_str(&format!("; annotation {k}={v}"));
                }
                match &self.root {
                    RootMount::Shared => {}
                    RootMount::Overlay => s.push_str(
                        "; root.path an overlay mount (lower: the shared root, nfs_export=off)",
                    ),
                    RootMount::FuseOverlayfs(f) => s.push_str(&format!(
                        "; root.path a mount of `{} -o lowerdir=ROOTFS,upperdir=B/upper,workdir=B/work B/merged` made per container",
                        f.display()
                    )),
                }
                s
            }
        }
    }
}

/// A config.json like the one `runc spec` writes (ociVersion 1.0.2-dev, which crun 1.8.1 also
/// accepts), with a writable root at `rootfs`, no terminal, the given arguments and
/// annotations, and an explicit cgroups path so that leftovers can be found.
pub fn config_json(
    rootfs: &Path,
    args: &[String],
    annotations: &[(String, String)],
    cgroups_path: &str,
    hostname: &str,
    cgroup_mount: bool,
) -> Value {
    let caps = json!(["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]);
    let ann: serde_json::Map<String, Value> = annotations
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    let mut c = json!({
        "ociVersion": "1.0.2-dev",
        "process": {
            "terminal": false,
            "user": {"uid": 0, "gid": 0},
            "args": args,
            "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "TERM=xterm"],
            "cwd": "/",
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps, "ambient": caps},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": true
        },
        "root": {"path": rootfs.to_string_lossy(), "readonly": false},
        "hostname": hostname,
        "annotations": ann,
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
            {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]}
        ],
        "linux": {
            "cgroupsPath": cgroups_path,
            "resources": {"devices": [{"allow": false, "access": "rwm"}]},
            "namespaces": [{"type": "pid"}, {"type": "network"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}],
            "maskedPaths": ["/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware", "/proc/scsi"],
            "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]
        }
    });
    if !cgroup_mount {
        if let Some(m) = c["mounts"].as_array_mut() {
            m.retain(|m| m["destination"] != "/sys/fs/cgroup");
        }
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn porta_variants_differ_only_in_annotations() {
        let p = Path::new("/nonexistent/porta");
        let b = Path::new("/tmp/state");
        let get = |n: &str| Env::new(n, p, None, b).unwrap();
        let strict = get("porta-strict");
        let kernel = get("porta-kernel");
        assert_eq!(get("porta").oci().unwrap().annotations, vec![]);
        assert_eq!(
            strict.oci().unwrap().annotations,
            vec![("run.porta.fs.passthrough".to_string(), "off".to_string())]
        );
        assert_eq!(
            kernel.oci().unwrap().annotations,
            vec![("run.porta.fs".to_string(), "kernel".to_string())]
        );
        assert!(strict.skip.as_deref().unwrap().contains("not found"));
        assert_eq!(strict.state_root, b.join("porta-strict"));
        assert!(Env::new("bogus", p, None, b).is_none());
        assert_eq!(
            get("porta-nowatch").oci().unwrap().annotations,
            vec![("run.porta.fs.host-changes".to_string(), "off".to_string())]
        );
        assert_eq!(
            get("porta-strict-nowatch").oci().unwrap().annotations,
            vec![
                ("run.porta.fs.passthrough".to_string(), "off".to_string()),
                ("run.porta.fs.host-changes".to_string(), "off".to_string())
            ]
        );
        assert_eq!(get("porta-overlay").root, RootMount::Overlay);
        assert_eq!(get("porta").root, RootMount::Shared);
        assert!(get("porta-overlay").root.per_container() && !get("runc").root.per_container());
        let old = Path::new("/nonexistent/porta-old");
        let base = Env::new("baseline-porta-strict", p, Some(old), b).unwrap();
        assert_eq!(base.oci().unwrap().bin, old);
        assert_eq!(
            base.oci().unwrap().annotations,
            strict.oci().unwrap().annotations
        );
        assert_eq!(base.state_root, b.join("baseline-porta-strict"));
        assert_eq!(base.name, "baseline-porta-strict");
        assert!(
            Env::new("baseline-porta-overlay", p, Some(old), b)
                .unwrap()
                .root
                == RootMount::Overlay
        );
        let unset = Env::new("baseline-porta", p, None, b).unwrap();
        assert!(unset.skip.as_deref().unwrap().contains("--baseline"));
        assert!(Env::new("baseline-runc", p, Some(old), b).is_none());
        for n in ALL.iter().chain(EXTRA) {
            assert!(Env::new(n, p, None, b).is_some(), "{n}");
        }
        assert!(get("runsc")
            .oci()
            .unwrap()
            .global
            .contains(&"--network=none".to_string()));
    }

    #[test]
    fn runc_fuse_overlayfs_is_runc_on_a_fuse_overlayfs_root() {
        let b = Path::new("/tmp/state");
        let e = Env::new("runc-fuse-overlayfs", Path::new("/p"), None, b).unwrap();
        assert!(ALL.contains(&"runc-fuse-overlayfs"));
        assert_eq!(e.state_root, b.join("runc-fuse-overlayfs"));
        let o = e.oci().unwrap();
        assert!(o.annotations.is_empty() && o.global.is_empty());
        assert!(e.root.per_container());
        match (
            &e.root,
            find_in_path("fuse-overlayfs"),
            find_in_path("runc"),
        ) {
            (RootMount::FuseOverlayfs(f), Some(want), Some(runc)) => {
                assert_eq!(f, &want);
                assert_eq!(o.bin, runc);
                assert!(e.skip.is_none(), "{:?}", e.skip);
                assert!(e.invocation().contains("fuse-overlayfs -o lowerdir=ROOTFS"));
            }
            (RootMount::FuseOverlayfs(_), None, _) => {
                assert!(e
                    .skip
                    .as_deref()
                    .unwrap()
                    .contains("fuse-overlayfs not found"))
            }
            (RootMount::FuseOverlayfs(_), _, None) => assert!(e.skip.is_some()),
            (other, _, _) => panic!("root {other:?}"),
        }
        // No baseline variant: it is not a Porta environment.
        assert!(Env::new("baseline-runc-fuse-overlayfs", Path::new("/p"), None, b).is_none());
    }

    #[test]
    fn config_has_what_runtimes_need() {
        let c = config_json(
            Path::new("/r"),
            &["/bin/true".into()],
            &[("a".into(), "b".into())],
            "/pb/x",
            "h",
            true,
        );
        assert!(c["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["destination"] == "/sys/fs/cgroup"));
        let without = config_json(Path::new("/r"), &[], &[], "/pb/x", "h", false);
        assert!(!without["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["destination"] == "/sys/fs/cgroup"));
        assert_eq!(c["ociVersion"], "1.0.2-dev");
        assert_eq!(c["root"]["path"], "/r");
        assert_eq!(c["root"]["readonly"], false);
        assert_eq!(c["process"]["terminal"], false);
        assert_eq!(c["process"]["args"][0], "/bin/true");
        assert_eq!(c["annotations"]["a"], "b");
        assert_eq!(c["linux"]["cgroupsPath"], "/pb/x");
    }
}
