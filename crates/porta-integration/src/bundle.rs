//! OCI bundles: a directory with config.json (as `runc spec` writes it) and a private
//! copy of the busybox root file system.

use serde_json::{json, Value};
use std::fs;
use std::path::{Path, PathBuf};

/// The configuration `runc spec` generates, adapted for tests: no terminal, writable
/// root, `args` as given.
pub fn default_config(args: &[&str]) -> Value {
    let caps = json!(["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]);
    json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": 0, "gid": 0},
            "args": args,
            "env": [
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "TERM=xterm"
            ],
            "cwd": "/",
            "capabilities": {
                "bounding": caps, "effective": caps, "permitted": caps, "ambient": caps
            },
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": true
        },
        "root": {"path": "rootfs", "readonly": false},
        "hostname": "pit",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
             "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
             "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs",
             "options": ["nosuid", "noexec", "nodev", "ro"]},
            {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
             "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]}
        ],
        "linux": {
            "resources": {"devices": [{"allow": false, "access": "rwm"}]},
            "namespaces": [
                {"type": "pid"}, {"type": "network"}, {"type": "ipc"},
                {"type": "uts"}, {"type": "mount"}
            ],
            "maskedPaths": [
                "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys",
                "/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats",
                "/proc/sched_debug", "/sys/firmware", "/proc/scsi"
            ],
            "readonlyPaths": [
                "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"
            ]
        }
    })
}

/// An OCI bundle in a temporary directory under `/var/tmp/pit-bundles`; removed on drop
/// (unless something is still mounted below it — the leak check reports that).
pub struct Bundle {
    dir: Option<tempfile::TempDir>,
    /// The config.json to write (the runtime-spec document, edited by the builders).
    pub config: Value,
}

impl Bundle {
    /// A bundle running `args`, with its own copy of the root file system.
    pub fn new(args: &[&str]) -> Bundle {
        let b = Bundle::empty(args);
        crate::rootfs::install(&b.rootfs());
        b
    }

    /// A bundle with config but no root file system (for bad-input tests).
    pub fn empty(args: &[&str]) -> Bundle {
        fs::create_dir_all(crate::BUNDLES).expect("bundles dir");
        let dir = tempfile::Builder::new()
            .prefix("b-")
            .tempdir_in(crate::BUNDLES)
            .expect("bundle dir");
        Bundle {
            dir: Some(dir),
            config: default_config(args),
        }
    }

    /// The bundle directory.
    pub fn path(&self) -> &Path {
        self.dir.as_ref().unwrap().path()
    }
    /// The bundle directory as a string, for command lines.
    pub fn path_str(&self) -> String {
        self.path().display().to_string()
    }
    /// The root file system directory (`rootfs` in the bundle).
    pub fn rootfs(&self) -> PathBuf {
        self.path().join("rootfs")
    }
    /// Path of a file in the bundle directory.
    pub fn file(&self, name: &str) -> PathBuf {
        self.path().join(name)
    }

    /// Writes config.json.
    pub fn write(&self) {
        fs::write(
            self.path().join("config.json"),
            serde_json::to_vec_pretty(&self.config).unwrap(),
        )
        .expect("write config.json");
    }

    // --- builder methods (each returns &mut Self for chaining) ---

    /// Sets process.args.
    pub fn args(&mut self, args: &[&str]) -> &mut Self {
        self.config["process"]["args"] = json!(args);
        self
    }
    /// A shell script run with `sh -c`.
    pub fn sh(&mut self, script: &str) -> &mut Self {
        self.args(&["sh", "-c", script])
    }
    /// Appends `KEY=value` to process.env.
    pub fn env(&mut self, kv: &str) -> &mut Self {
        self.config["process"]["env"]
            .as_array_mut()
            .unwrap()
            .push(json!(kv));
        self
    }
    /// Sets process.cwd.
    pub fn cwd(&mut self, cwd: &str) -> &mut Self {
        self.config["process"]["cwd"] = json!(cwd);
        self
    }
    /// Sets process.user (uid, gid and, when given, additionalGids).
    pub fn user(&mut self, uid: u32, gid: u32, additional: &[u32]) -> &mut Self {
        self.config["process"]["user"] = json!({"uid": uid, "gid": gid});
        if !additional.is_empty() {
            self.config["process"]["user"]["additionalGids"] = json!(additional);
        }
        self
    }
    /// Sets process.terminal.
    pub fn terminal(&mut self, on: bool) -> &mut Self {
        self.config["process"]["terminal"] = json!(on);
        self
    }
    /// Sets root.readonly.
    pub fn readonly_root(&mut self, on: bool) -> &mut Self {
        self.config["root"]["readonly"] = json!(on);
        self
    }
    /// Sets hostname.
    pub fn hostname(&mut self, h: &str) -> &mut Self {
        self.config["hostname"] = json!(h);
        self
    }
    /// Sets annotation `k` to `v`.
    pub fn annotation(&mut self, k: &str, v: &str) -> &mut Self {
        self.config["annotations"][k] = json!(v);
        self
    }
    /// Appends a mount (a runtime-spec mount object).
    pub fn mount(&mut self, m: Value) -> &mut Self {
        self.config["mounts"].as_array_mut().unwrap().push(m);
        self
    }
    /// Sets the capability sets (all five) to `caps`.
    pub fn capabilities(&mut self, caps: &[&str]) -> &mut Self {
        let c = json!(caps);
        self.config["process"]["capabilities"] = json!({
            "bounding": c, "effective": c, "permitted": c, "ambient": c, "inheritable": c
        });
        self
    }
    /// Sets linux.cgroupsPath.
    pub fn cgroups_path(&mut self, p: &str) -> &mut Self {
        self.config["linux"]["cgroupsPath"] = json!(p);
        self
    }
    /// Merges `r` into linux.resources.
    pub fn resources(&mut self, r: Value) -> &mut Self {
        let res = &mut self.config["linux"]["resources"];
        if let (Some(dst), Some(src)) = (res.as_object_mut(), r.as_object()) {
            for (k, v) in src {
                dst.insert(k.clone(), v.clone());
            }
        }
        self
    }
    /// Sets linux.seccomp (a runtime-spec seccomp object).
    pub fn seccomp(&mut self, s: Value) -> &mut Self {
        self.config["linux"]["seccomp"] = s;
        self
    }
    /// Appends a hook of `kind` (prestart, createRuntime, ...).
    pub fn hook(&mut self, kind: &str, hook: Value) -> &mut Self {
        let hooks = &mut self.config["hooks"][kind];
        if hooks.is_null() {
            *hooks = json!([]);
        }
        hooks.as_array_mut().unwrap().push(hook);
        self
    }
    /// Whether linux.namespaces holds a namespace of type `ty`.
    pub fn has_namespace(&self, ty: &str) -> bool {
        self.config["linux"]["namespaces"]
            .as_array()
            .map(|a| a.iter().any(|n| n["type"] == ty))
            .unwrap_or(false)
    }
    /// Adds (or replaces) a namespace, optionally joined by path.
    pub fn namespace(&mut self, ty: &str, path: Option<&str>) -> &mut Self {
        self.remove_namespace(ty);
        let mut ns = json!({"type": ty});
        if let Some(p) = path {
            ns["path"] = json!(p);
        }
        self.config["linux"]["namespaces"]
            .as_array_mut()
            .unwrap()
            .push(ns);
        self
    }
    /// Removes the namespace of type `ty` from linux.namespaces.
    pub fn remove_namespace(&mut self, ty: &str) -> &mut Self {
        if let Some(a) = self.config["linux"]["namespaces"].as_array_mut() {
            a.retain(|n| n["type"] != ty);
        }
        self
    }
    /// A user namespace mapping container ids 0..size to host ids host..host+size.
    pub fn user_ns(&mut self, host: u32, size: u32) -> &mut Self {
        self.namespace("user", None);
        let m = json!([{"containerID": 0, "hostID": host, "size": size}]);
        self.config["linux"]["uidMappings"] = m.clone();
        self.config["linux"]["gidMappings"] = m;
        self
    }
    /// Removes the config mount at `dest`.
    pub fn remove_mount(&mut self, dest: &str) -> &mut Self {
        if let Some(a) = self.config["mounts"].as_array_mut() {
            a.retain(|m| m["destination"] != dest);
        }
        self
    }
}

impl Drop for Bundle {
    fn drop(&mut self) {
        let Some(dir) = self.dir.take() else { return };
        let p = dir.path().to_path_buf();
        let mounted = fs::read_to_string("/proc/self/mountinfo")
            .map(|m| m.lines().any(|l| l.contains(p.to_str().unwrap_or("\0"))))
            .unwrap_or(true);
        if mounted {
            eprintln!("WARNING: {} still has mounts; not removing it", p.display());
            let _ = dir.keep();
        }
    }
}
