//! The container's API socket (`--api-fd`, annotation `run.porta.api=on`): `porta create`
//! binds `<state dir>/api.sock` once, the supervisor holds the listening socket for the
//! container's life (its successor inherits it) and keeps an API server (`porta api`, a
//! child it executes, in the servers' cgroup leaf) answering it. A dead API server is
//! replaced at once; connections made meanwhile wait in the socket's backlog, so a client
//! never sees the gap. When the supervisor that started it dies, the API server accepts
//! no more connections, finishes those it has and exits (it watches its parent's
//! pidfd); the successor taking over starts its own, which serves the waiting ones.

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use nix::unistd::Pid;
use porta_protocol::api;

use super::Supervisor;
use crate::proc::Death;
use crate::Error;

/// Descriptor number of the listening socket in the API server.
const LISTEN_FD: i32 = 3;
/// Connections waiting for an API server (while one is replaced).
const BACKLOG: i32 = 64;
/// How often the API server may fail by its own fault in a row before the supervisor
/// stops replacing it.
const MAX_FAILURES: u32 = 5;

/// The API server as the supervisor keeps it.
#[derive(Default)]
pub(super) struct ApiLink {
    /// The listening socket (None: the API is off).
    pub(super) listener: Option<OwnedFd>,
    /// The running API server (0: none).
    pub(super) pid: i32,
    /// How often it was replaced.
    pub(super) restarts: u64,
    /// Own-fault deaths in a row.
    failures: u32,
    /// Why it was last replaced, or why the supervisor gave up on it.
    pub(super) error: Option<String>,
    /// Given up on (too many failures in a row).
    pub(super) failed: bool,
}

/// Binds the API socket at `<state dir>/api.sock` (a stale one is removed first):
/// SOCK_SEQPACKET, mode 0666 (every user of the container may connect; the server
/// decides what each may do from the kernel's word on who it is).
/// `porta create` binds it before anything else runs, so that the container's process
/// finds it to bind-mount, and hands it to the supervisor.
pub fn bind(state_dir: &std::path::Path) -> Result<OwnedFd, Error> {
    use nix::sys::socket::{bind, listen, socket, AddressFamily, Backlog, SockFlag, SockType};
    let path = state_dir.join(api::SOCKET_NAME);
    let _ = std::fs::remove_file(&path);
    let sock = socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(|e| Error::Sys("socket for the API", e))?;
    let (p, _keep) = crate::socket_path(state_dir, api::SOCKET_NAME).map_err(|e| Error::Path {
        what: "open the state directory for the API socket",
        path: state_dir.to_path_buf(),
        source: e,
    })?;
    let addr =
        nix::sys::socket::UnixAddr::new(&p).map_err(|e| Error::Sys("API socket address", e))?;
    bind(sock.as_raw_fd(), &addr).map_err(|e| Error::Path {
        what: "bind the API socket",
        path: path.clone(),
        source: e.into(),
    })?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).map_err(|e| {
        Error::Path {
            what: "chmod the API socket",
            path: path.clone(),
            source: e,
        }
    })?;
    let backlog = Backlog::new(BACKLOG).map_err(|e| Error::Sys("API socket backlog", e))?;
    listen(&sock, backlog).map_err(|e| Error::Sys("listen on the API socket", e))?;
    Ok(sock)
}

impl Supervisor {
    /// Starts the API server when the API is on and none runs (nor was given up on).
    pub(super) fn ensure_api(&mut self) {
        let Some(l) = self.api.listener.as_ref() else {
            return;
        };
        if self.api.pid > 0 || self.api.failed {
            return;
        }
        let listen = l.as_raw_fd();
        let mut cmd = Command::new("/proc/self/exe");
        cmd.arg(api::SUBCOMMAND)
            .arg("--state-dir")
            .arg(&self.a.state_dir)
            .arg("--listen-fd")
            .arg(LISTEN_FD.to_string())
            .stdin(Stdio::null());
        // SAFETY: runs in the forked child before exec; dup2 is async-signal-safe.
        unsafe {
            cmd.pre_exec(move || {
                if libc::dup2(listen, LISTEN_FD) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let started = porta_cgroups::join::Join::new(&self.a.cgroup_procs)
            .map_err(Error::from)
            .and_then(|join| super::launch::spawn_joined(&mut cmd, join));
        match started {
            Ok(pid) => {
                tracing::info!(pid, "API server started");
                self.api.pid = pid;
            }
            Err(e) => {
                tracing::error!(error = %e, "could not start the API server");
                self.api.failures += 1;
                self.api.error = Some(e.to_string());
                if self.api.failures >= MAX_FAILURES {
                    self.api.failed = true;
                }
            }
        }
        self.write_state();
    }

    /// The API server `pid` died: replaced at the next turn of the loop, unless it kept
    /// failing by its own fault.
    pub(super) fn on_api_exit(&mut self, death: &Death) {
        tracing::warn!(pid = self.api.pid, cause = %death.cause, "API server died; starting another");
        self.api.pid = 0;
        self.api.restarts += 1;
        self.api.error = Some(death.cause.clone());
        if death.own_fault() {
            self.api.failures += 1;
            if self.api.failures >= MAX_FAILURES {
                tracing::error!(
                    failures = self.api.failures,
                    "the API server keeps failing; not starting it again"
                );
                self.api.failed = true;
            }
        } else {
            self.api.failures = 0;
        }
        self.write_state();
    }

    /// Stops the API server and closes the socket (shutdown).
    pub(super) fn stop_api(&mut self) {
        if self.api.pid > 0 {
            let _ = nix::sys::signal::kill(Pid::from_raw(self.api.pid), nix::sys::signal::SIGKILL);
            let _ = nix::sys::wait::waitpid(Pid::from_raw(self.api.pid), None);
            self.api.pid = 0;
        }
        if self.api.listener.take().is_some() {
            let _ = std::fs::remove_file(self.a.state_dir.join(api::SOCKET_NAME));
        }
    }

    /// The API server as `porta state` shows it (None: the API is off).
    pub(super) fn api_status(&self) -> Option<crate::ServerStatus> {
        if self.api.listener.is_none() && self.api.pid == 0 && !self.api.failed {
            return None;
        }
        let state = if self.api.failed {
            "failed"
        } else if self.api.pid > 0 {
            "running"
        } else if self.api.listener.is_some() {
            "restarting"
        } else {
            "stopped"
        };
        Some(crate::ServerStatus {
            name: api::SERVER_NAME.into(),
            pid: self.api.pid,
            restarts: self.api.restarts,
            state: state.into(),
            error: self.api.error.clone(),
            confinement: Default::default(),
            start_time: porta_sys::proc::start_time(self.api.pid).unwrap_or(0),
            transport: String::new(),
        })
    }
}
