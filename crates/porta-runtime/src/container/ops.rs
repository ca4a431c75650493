//! The operations on a created container: start, kill, delete, pause, resume, ps, update
//! and its statistics.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;

use oci_spec::runtime::LinuxResources;

use super::{oci_state_json, wait_pidfd, Container};
use crate::error::{Context, Error, Result};
use crate::hooks;
use crate::state::{StateDir, StateRoot, Status};

impl Container {
    /// `start`: lets the created container's process run its program.
    pub fn start(&mut self) -> Result<()> {
        let status = self.status();
        if status != Status::Created {
            return Err(self.bad_state(status, "only a created container can be started"));
        }
        let pidfd = self.pidfd()?;
        let fifo = self.dir.fifo();
        let f = nix::fcntl::open(
            &fifo,
            nix::fcntl::OFlag::O_RDONLY
                | nix::fcntl::OFlag::O_NONBLOCK
                | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .ctx(|| format!("open start fifo {}", fifo.display()))?;
        // SAFETY: f is a fresh fd from open; we own it.
        let f = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(f) };
        // Wait for the byte, or for the process to die before writing it.
        loop {
            let mut fds = [
                nix::poll::PollFd::new(f.as_fd(), nix::poll::PollFlags::POLLIN),
                nix::poll::PollFd::new(pidfd.as_fd(), nix::poll::PollFlags::POLLIN),
            ];
            match nix::poll::poll(&mut fds, nix::poll::PollTimeout::NONE) {
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(Error::nix("wait for the container's process", e)),
            }
            let mut b = [0u8; 1];
            match nix::unistd::read(f.as_raw_fd(), &mut b) {
                Ok(1) => break,
                Ok(_) | Err(nix::errno::Errno::EAGAIN) => {
                    if fds[1].revents().is_some_and(|r| !r.is_empty()) {
                        return Err(self.bad_state(
                            Status::Stopped,
                            "the container's process exited before start",
                        ));
                    }
                }
                Err(e) => return Err(Error::nix("read start fifo", e)),
            }
        }
        let _ = std::fs::remove_file(&fifo);
        self.state.started = true;
        self.state.status = Status::Running;
        self.dir.save(&self.state)?;
        let spec = self.spec()?;
        if let Some(h) = spec.hooks().as_ref().and_then(|h| h.poststart().clone()) {
            let json = serde_json::to_vec(&oci_state_json(&self.state, Status::Running))
                .unwrap_or_default();
            // The spec: a failing poststart hook is a warning; the other hooks still run and
            // the container runs on.
            hooks::run_each_warn("poststart", &h, &json);
        }
        Ok(())
    }

    /// `kill`: sends `sig` to the container's process, or with `all` to every process of it.
    pub fn kill(&self, sig: i32, all: bool) -> Result<()> {
        let status = self.status();
        if all {
            if let Some(cg) = self.cgroup()? {
                let pids = cg.payload_pids()?;
                for p in pids {
                    if let Ok(fd) = porta_sys::pidfd::open(p) {
                        let _ = porta_sys::pidfd::send_signal(fd.as_fd(), sig);
                    }
                }
                if sig == libc::SIGKILL && status == Status::Paused {
                    let _ = cg.thaw();
                }
                return Ok(());
            }
        }
        if status == Status::Stopped || status == Status::Creating {
            return Err(self.bad_state(status, "container not running"));
        }
        let fd = self.pidfd()?;
        porta_sys::pidfd::send_signal(fd.as_fd(), sig)
            .ctx(|| format!("send signal {sig} to {}", self.state.pid))
    }

    /// `delete`: removes a stopped (or created) container; with `force` also a running one.
    pub fn delete(self, force: bool) -> Result<()> {
        let status = self.status();
        match status {
            Status::Running | Status::Paused if !force => {
                return Err(
                    self.bad_state(status, "cannot delete a running container without --force")
                );
            }
            _ => {}
        }
        // Its children first (and theirs), running ones killed: a parent never goes
        // while a container confined to its tree and cgroup is left.
        crate::nested::delete_children(&self.dir.path)?;
        if let Ok(fd) = self.pidfd() {
            let _ = porta_sys::pidfd::send_signal(fd.as_fd(), libc::SIGKILL);
            if let Ok(Some(cg)) = self.cgroup() {
                let _ = cg.thaw();
            }
            wait_pidfd(fd.as_fd(), 10_000);
        }
        if let Some(cg) = self.cgroup()? {
            // The container's processes go first (they may wait on the file server)...
            let _ = cg.signal_payload(nix::sys::signal::Signal::SIGKILL);
            // ...then its servers, then the groups.
            if self.state.file_server {
                porta_supervisor::stop(&self.dir.path)?;
            }
            cg.destroy()?;
        } else if self.state.file_server {
            porta_supervisor::stop(&self.dir.path)?;
        }
        if let Some(b) = &self.state.host_root_bind {
            b.release()?;
        }
        if self.state.status != Status::Creating {
            if let Ok(spec) = self.spec() {
                if let Some(h) = spec.hooks().as_ref().and_then(|h| h.poststop().clone()) {
                    let json = serde_json::to_vec(&oci_state_json(&self.state, Status::Stopped))
                        .unwrap_or_default();
                    hooks::run_each_warn("poststop", &h, &json);
                }
            }
        }
        let path = self.dir.path.clone();
        self.dir.remove()?;
        crate::nested::release_if_child(&path)
    }

    /// `pause`: freezes the container's processes.
    pub fn pause(&mut self) -> Result<()> {
        let status = self.status();
        if status != Status::Running && status != Status::Created {
            return Err(self.bad_state(status, "only a running container can be paused"));
        }
        let cg = self
            .cgroup()?
            .ok_or_else(|| self.bad_state(status, "no cgroup"))?;
        cg.freeze()?;
        self.state.status = Status::Paused;
        self.dir.save(&self.state)
    }

    /// `resume`: thaws a paused container.
    pub fn resume(&mut self) -> Result<()> {
        let status = self.status();
        if status != Status::Paused {
            return Err(self.bad_state(status, "only a paused container can be resumed"));
        }
        let cg = self
            .cgroup()?
            .ok_or_else(|| self.bad_state(status, "no cgroup"))?;
        cg.thaw()?;
        self.state.status = if self.state.started {
            Status::Running
        } else {
            Status::Created
        };
        self.dir.save(&self.state)
    }

    /// Pids of the container's processes.
    pub fn pids(&self) -> Result<Vec<i32>> {
        match self.cgroup()? {
            Some(cg) => Ok(cg.payload_pids()?),
            None => Ok(vec![]),
        }
    }

    /// `update`: changes the container's resource limits and records them.
    pub fn update(&mut self, r: &LinuxResources) -> Result<()> {
        let status = self.status();
        if status == Status::Stopped {
            return Err(self.bad_state(status, "cannot update a stopped container"));
        }
        let cg = self
            .cgroup()?
            .ok_or_else(|| self.bad_state(status, "no cgroup"))?;
        cg.update(r)?;
        Ok(())
    }

    /// Cgroup statistics in runc's `events --stats` shape.
    pub fn stats(&self) -> Result<serde_json::Value> {
        let cg = self
            .cgroup()?
            .ok_or_else(|| self.bad_state(self.status(), "no cgroup"))?;
        let s = cg.stats()?;
        Ok(serde_json::to_value(s).unwrap_or_default())
    }

    /// Count of OOM kills in the container so far.
    pub fn oom_kills(&self) -> u64 {
        self.cgroup()
            .ok()
            .flatten()
            .and_then(|c| c.oom_kill_count().ok())
            .unwrap_or(0)
    }
}

/// Deletes a container whose `create` was interrupted before state.json was written.
pub fn delete_half_made(root: &StateRoot, id: &str) -> Result<bool> {
    let dir = StateDir::open(root, id)?;
    if dir.has_state() {
        return Ok(false);
    }
    dir.remove()?;
    Ok(true)
}

/// Reads a resources JSON document for `update -r`.
pub fn parse_resources(data: &[u8], path: &Path) -> Result<LinuxResources> {
    let de = &mut serde_json::Deserializer::from_slice(data);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let field = e.path().to_string();
        Error::Config {
            path: path.to_path_buf(),
            msg: format!("field {field}: {}", e.into_inner()),
        }
    })
}
