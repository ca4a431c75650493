//! The container life cycle: create, start, state, kill, delete, pause, resume, exec, ps,
//! update, events — each taking the container's lock for its whole duration.
//!
//! [`create`] lives in `create.rs`, [`Container::exec`] and its stage one in `exec.rs`,
//! the other operations on a created container in `ops.rs`; this file holds the
//! [`Container`] type, its state and what the operations share.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;

use oci_spec::runtime::Spec;
use porta_cgroups::ContainerCgroup;

use crate::config;
use crate::console;
use crate::error::{Context, Error, Result};
use crate::state::{ContainerState, StateDir, StateRoot, Status};

mod create;
mod exec;
mod ops;
mod restore;

pub use create::{create, CreateOptions};
pub use exec::ExecOptions;
pub use ops::{delete_half_made, parse_resources};
pub use restore::restore;

/// Waits until the process behind `pidfd` exits (timeout in ms, -1 = forever). True if it did.
pub(crate) fn wait_pidfd(pidfd: std::os::fd::BorrowedFd<'_>, timeout_ms: i32) -> bool {
    let mut fds = [nix::poll::PollFd::new(pidfd, nix::poll::PollFlags::POLLIN)];
    let t = if timeout_ms < 0 {
        nix::poll::PollTimeout::NONE
    } else {
        nix::poll::PollTimeout::try_from(timeout_ms).unwrap_or(nix::poll::PollTimeout::MAX)
    };
    loop {
        match nix::poll::poll(&mut fds, t) {
            Ok(n) => return n > 0,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return true,
        }
    }
}

/// The OCI state JSON of a container as hooks and `porta state` see it.
pub(crate) fn oci_state_json(st: &ContainerState, status: Status) -> serde_json::Value {
    serde_json::json!({
        "ociVersion": st.oci_version,
        "id": st.id,
        "status": status.to_string(),
        "pid": st.pid,
        "bundle": st.bundle,
        "annotations": st.annotations,
    })
}

fn send_seccomp_fd(
    listener: &Path,
    metadata: Option<&str>,
    fd: &OwnedFd,
    st: &serde_json::Value,
) -> Result<()> {
    let s = console::connect_unix(listener)?;
    let msg = serde_json::json!({
        "ociVersion": "1.0.2",
        "fds": ["seccompFd"],
        "pid": st["pid"],
        "metadata": metadata.unwrap_or(""),
        "state": st,
    });
    let data = serde_json::to_vec(&msg).unwrap_or_default();
    porta_sys::scm::send(s.as_raw_fd(), &data, &[fd.as_raw_fd()], 0).ctx(|| {
        format!(
            "send the seccomp fd to linux.seccomp.listenerPath {}",
            listener.display()
        )
    })?;
    Ok(())
}

/// Passes a pty master received from a container process on to the console socket.
fn forward_console(fds: Vec<OwnedFd>, socket: Option<&Path>) -> Result<()> {
    let master = fds
        .into_iter()
        .next()
        .ok_or_else(|| Error::Init("console message without a pty".into()))?;
    let sock = socket.ok_or_else(|| Error::Usage("--console-socket is required".into()))?;
    console::send_master(sock, master.as_fd())
}

/// Passes a seccomp notification fd on to `linux.seccomp.listenerPath`.
fn forward_seccomp(fds: Vec<OwnedFd>, spec: &Spec, state: &serde_json::Value) -> Result<()> {
    let fd = fds
        .into_iter()
        .next()
        .ok_or_else(|| Error::Init("seccomp message without an fd".into()))?;
    let sc = spec.linux().as_ref().and_then(|l| l.seccomp().as_ref());
    let path = sc
        .and_then(|s| s.listener_path().clone())
        .ok_or_else(|| Error::field("linux.seccomp.listenerPath", "missing"))?;
    let meta = sc.and_then(|s| s.listener_metadata().clone());
    send_seccomp_fd(&path, meta.as_deref(), &fd, state)
}

/// A container opened by id, with its lock held.
pub struct Container {
    /// Its locked state directory.
    pub dir: StateDir,
    /// Its recorded state.
    pub state: ContainerState,
}

impl Container {
    /// Opens container `id`.
    pub fn open(root: &StateRoot, id: &str) -> Result<Container> {
        let dir = StateDir::open(root, id)?;
        let state = dir.load()?;
        Ok(Container { dir, state })
    }

    /// The saved config.
    pub fn spec(&self) -> Result<Spec> {
        let p = self.dir.config_file();
        let data = std::fs::read(&p).map_err(|e| Error::State {
            path: p.clone(),
            msg: e.to_string(),
        })?;
        config::parse_spec(&data, &p)
    }

    /// The container's cgroup.
    pub fn cgroup(&self) -> Result<Option<ContainerCgroup>> {
        match &self.state.cgroup {
            Some(s) => Ok(Some(ContainerCgroup::open(s)?)),
            None => Ok(None),
        }
    }

    /// Whether the container's first process still runs (not a zombie, not a reused pid).
    pub fn init_alive(&self) -> bool {
        let pid = self.state.pid;
        if pid <= 0 {
            return false;
        }
        porta_sys::proc::Stat::of(pid)
            .is_some_and(|s| s.start_time == self.state.pid_start_time && !s.is_dead())
    }

    /// The live status.
    pub fn status(&self) -> Status {
        if self.state.status == Status::Creating {
            return Status::Creating;
        }
        if !self.init_alive() {
            return Status::Stopped;
        }
        if let Ok(Some(cg)) = self.cgroup() {
            if cg.is_frozen().unwrap_or(false) {
                return Status::Paused;
            }
        }
        if self.state.started {
            Status::Running
        } else {
            Status::Created
        }
    }

    fn bad_state(&self, status: Status, msg: &str) -> Error {
        Error::BadState {
            id: self.state.id.clone(),
            status: status.to_string(),
            msg: msg.to_string(),
        }
    }

    /// The OCI state JSON, plus Porta's `servers` list.
    pub fn state_json(&self) -> serde_json::Value {
        let status = self.status();
        let mut v = oci_state_json(&self.state, status);
        let pid = if status == Status::Stopped {
            0
        } else {
            self.state.pid
        };
        v["pid"] = pid.into();
        v["rootfs"] = serde_json::json!(self.state.rootfs);
        v["created"] = serde_json::json!(self.state.created);
        v["owner"] = serde_json::json!(self.state.owner);
        // Each server as the supervisor records it (name, pid, restarts, state,
        // confinement, and why it was last replaced or given up on).
        let servers = if self.state.file_server {
            porta_supervisor::servers(&self.dir.path).unwrap_or_default()
        } else {
            Vec::new()
        };
        // A failed server (given up on, or no supervisor left) fails the container loudly.
        let failed = servers.iter().find(|s| s.state == "failed").map(|s| {
            format!(
                "{} server failed: {}",
                s.name,
                s.error.as_deref().unwrap_or("")
            )
        });
        v["servers"] = serde_json::to_value(servers).unwrap_or_else(|_| serde_json::json!([]));
        if let Some(e) = self.state.server_error.clone().or(failed) {
            v["serverError"] = serde_json::json!(e);
        }
        v
    }

    fn pidfd(&self) -> Result<OwnedFd> {
        if !self.init_alive() {
            return Err(self.bad_state(Status::Stopped, "the container's process is not running"));
        }
        let fd = porta_sys::pidfd::open(self.state.pid)
            .ctx(|| format!("pidfd of {}", self.state.pid))?;
        // Re-check after opening: the pidfd now pins the process we checked.
        if !self.init_alive() {
            return Err(self.bad_state(Status::Stopped, "the container's process is not running"));
        }
        Ok(fd)
    }
}

/// Ids and states of every container under the root (for `list`).
pub fn list(root: &StateRoot) -> Result<Vec<serde_json::Value>> {
    let mut out = Vec::new();
    for id in root.ids()? {
        let dir = root.dir(&id);
        let Ok(data) = std::fs::read(dir.join("state.json")) else {
            continue;
        };
        let Ok(st) = serde_json::from_slice::<ContainerState>(&data) else {
            continue;
        };
        // Read without the lock: state.json is replaced atomically.
        let c = ContainerView { state: st };
        out.push(c.json());
    }
    Ok(out)
}

struct ContainerView {
    state: ContainerState,
}

impl ContainerView {
    fn json(&self) -> serde_json::Value {
        let alive = self.state.pid > 0
            && porta_sys::proc::Stat::of(self.state.pid)
                .is_some_and(|s| s.start_time == self.state.pid_start_time && !s.is_dead());
        let status = if self.state.status == Status::Creating {
            Status::Creating
        } else if !alive {
            Status::Stopped
        } else if self.state.status == Status::Paused {
            Status::Paused
        } else if self.state.started {
            Status::Running
        } else {
            Status::Created
        };
        let mut v = oci_state_json(&self.state, status);
        v["pid"] = (if status == Status::Stopped {
            0
        } else {
            self.state.pid
        })
        .into();
        v["rootfs"] = serde_json::json!(self.state.rootfs);
        v["created"] = serde_json::json!(self.state.created);
        v["owner"] = serde_json::json!(self.state.owner);
        v
    }
}
