//! The supervisor's record of its servers (`servers.json`), read by `porta state` and by
//! a successor taking over.

use std::io::Write;

use super::Supervisor;
use crate::{ServerStatus, SupervisorState, SERVERS_FILE};

impl Supervisor {
    pub(super) fn state(&self) -> SupervisorState {
        let me = std::process::id() as i32;
        let successor = self.successor.as_ref().map_or(0, |(p, _)| *p);
        SupervisorState {
            supervisor_pid: me,
            supervisor_start: porta_sys::proc::start_time(me).unwrap_or(0),
            successor_pid: successor,
            successor_start: porta_sys::proc::start_time(successor).unwrap_or(0),
            container_pid: self.container_pid,
            container_start: self.container_start,
            takeovers: self.takeovers,
            keeper_pid: self.keeper_pid,
            twin_pid: self.twin_pid,
            keeper_takeovers: self.keeper_takeovers,
            standby_pid: self.standby_pid,
            servers: [ServerStatus {
                name: "fs".into(),
                pid: self.server_pid,
                start_time: porta_sys::proc::start_time(self.server_pid).unwrap_or(0),
                restarts: self.restarts,
                state: if self.failed {
                    "failed".into()
                } else if self.server_pid > 0 {
                    "running".into()
                } else if self.listener.is_some() {
                    // Between a death and the replacement.
                    "restarting".into()
                } else {
                    "stopped".into()
                },
                error: self.last_error.clone(),
                confinement: self.confinement,
                transport: self.transport().into(),
            }]
            .into_iter()
            .chain(self.api_status())
            .collect(),
            translators: self.translators.status(),
        }
    }

    /// The transport the connection was initialized with ("" before INIT).
    fn transport(&self) -> &'static str {
        use porta_fs::shared::hdr;
        use std::sync::atomic::Ordering;
        if self.shared.hdr(hdr::INITIALIZED).load(Ordering::Acquire) == 0 {
            return "";
        }
        let flags = self.shared.hdr(hdr::INIT_FLAGS).load(Ordering::Relaxed);
        if flags & porta_fs::abi::init::OVER_IO_URING != 0 {
            "uring"
        } else {
            "dev"
        }
    }

    pub(super) fn write_state(&self) {
        let p = self.a.state_dir.join(SERVERS_FILE);
        let tmp = self.a.state_dir.join(format!(".{SERVERS_FILE}.tmp"));
        let body = self.state().encode();
        let r = std::fs::File::create(&tmp)
            // No fsync: the file describes processes, which do not outlive a crash.
            .and_then(|mut f| f.write_all(&body))
            .and_then(|_| std::fs::rename(&tmp, &p));
        if let Err(e) = r {
            tracing::error!(error = %e, path = %p.display(), "could not record the servers' state");
        }
    }
}
