//! The control socket: `stop`, `watch PID` and `status` from `porta` (see
//! [`porta_protocol::supervisor::ControlRequest`]).

use std::io::{Read, Write};
use std::time::Duration;

use porta_protocol::supervisor::{ControlReply, ControlRequest};

use super::{Next, Supervisor};
use crate::proc::pidfd_open;

impl Supervisor {
    pub(super) fn serve_control(&mut self) -> Option<Next> {
        let l = self.listener.as_ref()?;
        let (mut conn, _) = l.accept().ok()?;
        let _ = conn.set_nonblocking(false);
        let _ = conn.set_read_timeout(Some(Duration::from_secs(1)));
        let mut buf = [0u8; ControlRequest::MAX_LEN];
        let n = conn.read(&mut buf).unwrap_or(0);
        let request = match ControlRequest::decode(&buf[..n]) {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(error = %e, "refused a request on the control socket");
                let _ = conn.write_all(ControlReply::UnknownRequest.encode());
                return None;
            }
        };
        match request {
            ControlRequest::Stop => {
                tracing::info!("stop requested");
                self.shutdown();
                let _ = conn.write_all(ControlReply::Ok.encode());
                Some(Next::Exit(0))
            }
            ControlRequest::Watch(pid) => {
                match pidfd_open(pid) {
                    Some(fd) => {
                        tracing::info!(pid, "watching the container's process");
                        self.container_pid = pid;
                        self.container_start =
                            porta_sys::proc::start_time(self.container_pid).unwrap_or(0);
                        self.container = Some(fd);
                        // Recorded for a successor, which reopens it after a takeover.
                        self.write_state();
                        let _ = conn.write_all(ControlReply::Ok.encode());
                    }
                    None => {
                        let _ = conn.write_all(ControlReply::NoSuchProcess.encode());
                    }
                }
                None
            }
            ControlRequest::Status => {
                let _ = conn.write_all(&self.state().encode());
                None
            }
        }
    }
}
