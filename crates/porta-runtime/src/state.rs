//! Container state on disk: one directory per container under the state root, holding
//! `state.json` (written atomically), a copy of the config, and the start fifo.
//!
//! A state root may be shared with runc: Docker (20.10) passes the same `--root`
//! (`<exec-root>/runtime-runc/moby`) to every runtime it drives through containerd's
//! runc shim, and the shim's default root (`/run/containerd/runc/<namespace>`) is runc's
//! too. So `state.json` also carries the fields of runc's own state format (see
//! [`runc_fields`]): `runc list` and `runc state` load Porta's containers instead of
//! failing on each of them, and Porta recognises runc's containers and names them as such.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Context, Error, Result};

/// The lifecycle status of a container, as the OCI runtime spec names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// `create` is under way (or was interrupted).
    Creating,
    /// Created, waiting for `start`.
    Created,
    /// The container's process runs.
    Running,
    /// The container's processes are frozen.
    Paused,
    /// The container's process has exited.
    Stopped,
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = match self {
            Status::Creating => "creating",
            Status::Created => "created",
            Status::Running => "running",
            Status::Paused => "paused",
            Status::Stopped => "stopped",
        };
        f.write_str(s)
    }
}

/// One of a container's servers, as `porta state` reports it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServerInfo {
    /// The server's role ("fs" for the file server).
    pub name: String,
    /// Its pid on the host.
    pub pid: i32,
    /// How often it was replaced.
    pub restarts: u64,
}

/// What Porta records about a container.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerState {
    /// OCI version of the config.
    pub oci_version: String,
    /// Container id.
    pub id: String,
    /// Recorded status (the live status is derived from the process, see `Container::status`).
    pub status: Status,
    /// Host pid of the container's process (0 while creating).
    pub pid: i32,
    /// Absolute bundle path.
    pub bundle: PathBuf,
    /// Absolute root file system path.
    pub rootfs: PathBuf,
    /// Creation time (RFC 3339).
    pub created: String,
    /// Owner of the container (user name or uid).
    pub owner: String,
    /// The config's annotations.
    #[serde(default)]
    pub annotations: HashMap<String, String>,
    /// Start time of the container's process (field 22 of /proc/PID/stat), to detect pid reuse.
    #[serde(default)]
    pub pid_start_time: u64,
    /// The container's cgroup, for later commands.
    #[serde(default)]
    pub cgroup: Option<porta_cgroups::CgroupState>,
    /// Whether `start` has run.
    #[serde(default)]
    pub started: bool,
    /// Whether the file server is on for this container.
    #[serde(default)]
    pub file_server: bool,
    /// Pid of the container's supervisor, if any.
    #[serde(default)]
    pub supervisor_pid: i32,
    /// A clear error recorded by the supervisor, if the file server could not be kept alive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_error: Option<String>,
    /// The bind of the root made in `create`'s mount namespace for a container without a
    /// mount namespace of its own; `delete` detaches it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_root_bind: Option<crate::rootfs::HostRootBind>,
}

/// The state root (`--root`).
#[derive(Debug, Clone)]
pub struct StateRoot {
    /// The directory.
    pub path: PathBuf,
}

impl StateRoot {
    /// The state root at `path`, created (mode 0700) if missing.
    pub fn open(path: &Path) -> Result<Self> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(path)
            .ctx(|| format!("create state root {}", path.display()))?;
        let path =
            fs::canonicalize(path).ctx(|| format!("resolve state root {}", path.display()))?;
        Ok(StateRoot { path })
    }

    /// The directory of container `id`.
    pub fn dir(&self, id: &str) -> PathBuf {
        self.path.join(id)
    }

    /// Ids of all containers under the root, sorted.
    pub fn ids(&self) -> Result<Vec<String>> {
        let mut ids = Vec::new();
        for e in
            fs::read_dir(&self.path).ctx(|| format!("read state root {}", self.path.display()))?
        {
            let e = e.ctx(|| format!("read state root {}", self.path.display()))?;
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                if let Some(s) = e.file_name().to_str() {
                    ids.push(s.to_string());
                }
            }
        }
        ids.sort();
        Ok(ids)
    }
}

/// Checks that a container id is usable as a directory name and in logs.
pub fn validate_id(id: &str) -> Result<()> {
    let bad = |why: &str| {
        Err(Error::InvalidId {
            id: id.to_string(),
            why: why.to_string(),
        })
    };
    if id.is_empty() {
        return bad("empty");
    }
    if id.len() > 1024 {
        return bad("longer than 1024 bytes");
    }
    if id == "." || id == ".." {
        return bad("not a name");
    }
    if !id
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '+'))
    {
        return bad("only letters, digits and _ - . + are allowed");
    }
    Ok(())
}

/// A container's state directory, locked for the lifetime of this value.
pub struct StateDir {
    /// Its path.
    pub path: PathBuf,
    /// The open, flock'ed directory.
    dir: OwnedFd,
}

impl StateDir {
    /// Makes the directory for a new container and locks it; fails if it already exists.
    pub fn create(root: &StateRoot, id: &str) -> Result<Self> {
        validate_id(id)?;
        let path = root.dir(id);
        match fs::DirBuilder::new().mode(0o711).create(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(Error::Exists(id.to_string()))
            }
            Err(e) => {
                return Err(Error::sys(
                    format!("create state directory {}", path.display()),
                    e,
                ))
            }
        }
        Self::lock(path, id)
    }

    /// Opens and locks an existing container's directory.
    pub fn open(root: &StateRoot, id: &str) -> Result<Self> {
        validate_id(id)?;
        let path = root.dir(id);
        if !path.is_dir() {
            return Err(Error::NotFound(id.to_string()));
        }
        Self::lock(path, id)
    }

    fn lock(path: PathBuf, id: &str) -> Result<Self> {
        let dir: OwnedFd = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
            .open(&path)
            .map_err(|e| {
                if e.kind() == std::io::ErrorKind::NotFound {
                    Error::NotFound(id.to_string())
                } else {
                    Error::sys(format!("open state directory {}", path.display()), e)
                }
            })?
            .into();
        flock_exclusive(&dir).ctx(|| format!("lock state directory {}", path.display()))?;
        // The directory may have been removed by a racing delete while we waited for the lock.
        if !path.join(".").exists() || fs::metadata(&path).map(|m| m.len()).is_err() {
            return Err(Error::NotFound(id.to_string()));
        }
        Ok(StateDir { path, dir })
    }

    /// The state file's path.
    pub fn state_file(&self) -> PathBuf {
        self.path.join("state.json")
    }

    /// The saved config's path.
    pub fn config_file(&self) -> PathBuf {
        self.path.join("config.json")
    }

    /// The start fifo's path.
    pub fn fifo(&self) -> PathBuf {
        self.path.join("exec.fifo")
    }

    /// Reads state.json. The state of a container made by runc in a shared root is refused
    /// with an error that says so.
    pub fn load(&self) -> Result<ContainerState> {
        let p = self.state_file();
        let data = fs::read(&p).map_err(|e| Error::State {
            path: p.clone(),
            msg: e.to_string(),
        })?;
        parse_state(&data).map_err(|msg| Error::State { path: p, msg })
    }

    /// Whether state.json exists (a missing one means `create` was interrupted early).
    pub fn has_state(&self) -> bool {
        self.state_file().exists()
    }

    /// Writes state.json atomically (temporary file, rename): Porta's fields and, beside
    /// them, runc's ([`runc_fields`]).
    pub fn save(&self, st: &ContainerState) -> Result<()> {
        let data = state_bytes(st).map_err(|e| Error::State {
            path: self.state_file(),
            msg: e.to_string(),
        })?;
        write_atomic(&self.state_file(), &data, 0o600)
    }

    /// Removes the directory and everything in it.
    pub fn remove(self) -> Result<()> {
        fs::remove_dir_all(&self.path)
            .ctx(|| format!("remove state directory {}", self.path.display()))
    }

    /// The raw lock fd, for forked children to close.
    pub fn lock_fd(&self) -> std::os::fd::RawFd {
        self.dir.as_raw_fd()
    }

    /// Keeps the lock fd alive (used by forked children that must not drop it).
    pub fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.dir.as_fd()
    }
}

fn flock_exclusive(fd: &OwnedFd) -> std::io::Result<()> {
    loop {
        // SAFETY: flock on an fd we own; no memory is involved.
        if unsafe { libc::flock(fd.as_raw_fd(), libc::LOCK_EX) } == 0 {
            return Ok(());
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINTR) {
            return Err(e);
        }
    }
}

/// Writes `data` to `path` atomically (temp file in the same directory, rename): readers see
/// the old or the new content, never a mix. No fsync, as runc: these files describe
/// processes, which do not outlive a crash of the machine, and an fsync costs milliseconds
/// on every create, start and exec when the state root is on a disk.
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .custom_flags(libc::O_CLOEXEC)
            .open(&tmp)?;
        f.write_all(data)?;
        fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        let _ = fs::remove_file(&tmp);
        Error::sys(format!("write {}", path.display()), e)
    })
}

/// The bytes of state.json for `st`: Porta's fields, then runc's.
fn state_bytes(st: &ContainerState) -> serde_json::Result<Vec<u8>> {
    let mut v = serde_json::to_value(st)?;
    if let (Some(obj), serde_json::Value::Object(runc)) = (v.as_object_mut(), runc_fields(st)) {
        for (k, val) in runc {
            obj.insert(k, val);
        }
    }
    serde_json::to_vec(&v)
}

/// Parses state.json; a state written by runc (a shared root) gets an error naming it.
pub fn parse_state(data: &[u8]) -> std::result::Result<ContainerState, String> {
    serde_json::from_slice(data).map_err(|e| {
        let v: Option<serde_json::Value> = serde_json::from_slice(data).ok();
        let runc_made = v
            .as_ref()
            .is_some_and(|v| v.get("init_process_pid").is_some() && v.get("ociVersion").is_none());
        if runc_made {
            "this container was made by runc, not Porta (the state root is shared): \
             manage it with runc"
                .to_string()
        } else {
            e.to_string()
        }
    })
}

/// The fields of runc's state format (libcontainer's `State`: `init_process_pid`,
/// `init_process_start`, `config` with `rootfs`, `labels` and `cgroups`, `cgroup_paths`)
/// that runc needs to load a container, list it and tell its status: running or
/// stopped from the pid and its start time, created while `exec.fifo` exists (Porta's
/// start fifo has runc's name), paused from the freezer of the `payload/` leaf (Porta's
/// servers live beside it in `porta/`). The cgroup paths are the payload leaves, so a
/// runc command that reads them sees the container's processes only.
pub fn runc_fields(st: &ContainerState) -> serde_json::Value {
    let mut paths = serde_json::Map::new();
    let mut cgroup_path = String::new();
    if let Some(cg) = &st.cgroup {
        for d in &cg.dirs {
            let leaf = d.path.join(porta_cgroups::PAYLOAD).display().to_string();
            if cgroup_path.is_empty() {
                cgroup_path = d
                    .cgroup_path
                    .join(porta_cgroups::PAYLOAD)
                    .display()
                    .to_string();
            }
            match d.version {
                porta_cgroups::CgroupVersion::V2 => {
                    paths.insert(String::new(), leaf.into());
                }
                porta_cgroups::CgroupVersion::V1 => {
                    for c in &d.controllers {
                        paths.insert(c.clone(), leaf.clone().into());
                    }
                }
            }
        }
    }
    let mut labels = vec![format!("bundle={}", st.bundle.display())];
    let mut ann: Vec<_> = st.annotations.iter().collect();
    ann.sort();
    labels.extend(ann.into_iter().map(|(k, v)| format!("{k}={v}")));
    serde_json::json!({
        "init_process_pid": st.pid,
        "init_process_start": st.pid_start_time,
        "config": {
            "version": st.oci_version,
            "rootfs": st.rootfs,
            "labels": labels,
            // runc's cgroup config embeds its resources; one field makes runc allocate
            // them, which its v1 manager requires ("" is runc's "undefined" freezer state)
            "cgroups": {"path": cgroup_path, "freezer": ""},
        },
        "cgroup_paths": paths,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_checked() {
        assert!(validate_id("abc-1.2_x+y").is_ok());
        assert!(validate_id("").is_err());
        assert!(validate_id("..").is_err());
        assert!(validate_id("a/b").is_err());
        assert!(validate_id("a b").is_err());
        assert!(validate_id(&"x".repeat(64)).is_ok());
    }

    #[test]
    fn state_round_trips_atomically() {
        let tmp = tempfile::tempdir().unwrap();
        let root = StateRoot::open(tmp.path()).unwrap();
        let d = StateDir::create(&root, "c1").unwrap();
        assert!(matches!(
            StateDir::create(&root, "c1"),
            Err(Error::Exists(_))
        ));
        let st = ContainerState {
            oci_version: "1.0.2".into(),
            id: "c1".into(),
            status: Status::Created,
            pid: 42,
            bundle: "/b".into(),
            rootfs: "/b/rootfs".into(),
            created: "now".into(),
            owner: "root".into(),
            annotations: HashMap::new(),
            pid_start_time: 7,
            cgroup: None,
            started: false,
            file_server: false,
            supervisor_pid: 0,
            server_error: None,
            host_root_bind: None,
        };
        d.save(&st).unwrap();
        let back = d.load().unwrap();
        assert_eq!(back.pid, 42);
        assert_eq!(back.status, Status::Created);
        assert_eq!(root.ids().unwrap(), vec!["c1".to_string()]);
        d.remove().unwrap();
        assert!(root.ids().unwrap().is_empty());
    }

    fn sample(id: &str) -> ContainerState {
        let me = std::process::id() as i32;
        ContainerState {
            oci_version: "1.0.2".into(),
            id: id.into(),
            status: Status::Running,
            pid: me,
            bundle: "/b".into(),
            rootfs: "/b/rootfs".into(),
            created: "2026-12-06T23:00:00.000000000Z".into(),
            owner: "root".into(),
            annotations: HashMap::from([("k".to_string(), "v".to_string())]),
            pid_start_time: porta_sys::proc::start_time(me).unwrap(),
            cgroup: None,
            started: true,
            file_server: true,
            supervisor_pid: 0,
            server_error: None,
            host_root_bind: None,
        }
    }

    #[test]
    fn state_json_carries_runc_fields_and_still_loads() {
        let tmp = tempfile::tempdir().unwrap();
        let root = StateRoot::open(tmp.path()).unwrap();
        let d = StateDir::create(&root, "c2").unwrap();
        let st = sample("c2");
        d.save(&st).unwrap();
        let v: serde_json::Value =
            serde_json::from_slice(&fs::read(d.state_file()).unwrap()).unwrap();
        assert_eq!(v["init_process_pid"], st.pid);
        assert_eq!(v["init_process_start"], st.pid_start_time);
        assert_eq!(v["config"]["labels"][0], "bundle=/b");
        assert_eq!(v["config"]["labels"][1], "k=v");
        assert_eq!(v["config"]["rootfs"], "/b/rootfs");
        assert!(v["config"]["cgroups"].is_object());
        assert!(v["cgroup_paths"].is_object());
        let back = d.load().unwrap();
        assert_eq!(back.pid, st.pid);
        assert_eq!(back.annotations, st.annotations);
    }

    #[test]
    fn runc_state_is_named_as_runcs() {
        let tmp = tempfile::tempdir().unwrap();
        let root = StateRoot::open(tmp.path()).unwrap();
        let d = StateDir::create(&root, "r1").unwrap();
        // the start of a state.json written by runc 1.1
        fs::write(
            d.state_file(),
            r#"{"id":"r1","init_process_pid":123,"init_process_start":456,
               "created":"2026-12-06T23:00:00Z","config":{"rootfs":"/x"},"cgroup_paths":{}}"#,
        )
        .unwrap();
        let e = d.load().unwrap_err().to_string();
        assert!(e.contains("made by runc"), "{e}");
        assert!(e.contains("state.json"), "{e}");
        // anything else unreadable keeps serde's message
        fs::write(d.state_file(), "{").unwrap();
        let e = d.load().unwrap_err().to_string();
        assert!(!e.contains("runc"), "{e}");
    }

    /// runc, sharing a state root with Porta, lists Porta's containers without an error
    /// (before runc's fields were written it printed "load container …: cgroups/manager.New:
    /// config must not be nil" for each). Skipped where runc is not installed.
    #[test]
    fn runc_lists_portas_containers_in_a_shared_root() {
        let Some(runc) = ["/usr/sbin/runc", "/usr/bin/runc", "/usr/local/sbin/runc"]
            .into_iter()
            .map(Path::new)
            .find(|p| p.exists())
        else {
            eprintln!("SKIP runc_lists_portas_containers_in_a_shared_root: runc not installed");
            return;
        };
        let tmp = tempfile::tempdir().unwrap();
        let root = StateRoot::open(tmp.path()).unwrap();
        let d = StateDir::create(&root, "porta-c").unwrap();
        d.save(&sample("porta-c")).unwrap();
        drop(d);
        let out = std::process::Command::new(runc)
            .arg("--root")
            .arg(tmp.path())
            .args(["list", "--format", "json"])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "runc list failed: {stderr}");
        assert!(stderr.trim().is_empty(), "runc list complained: {stderr}");
        let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let c = &list[0];
        assert_eq!(c["id"], "porta-c", "{list}");
        assert_eq!(c["status"], "running", "{list}");
        assert_eq!(c["pid"], std::process::id(), "{list}");
        assert_eq!(c["bundle"], "/b", "{list}");
        let out = std::process::Command::new(runc)
            .arg("--root")
            .arg(tmp.path())
            .args(["state", "porta-c"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "runc state failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
