//! The control socket: `stop`, `watch PID`, `status`, `grant` and `revoke` from `porta`
//! (see [`porta_protocol::supervisor::ControlRequest`]).

use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};
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
        let mut buf = vec![0u8; ControlRequest::MAX_LEN];
        let mut fds: [Option<OwnedFd>; 1] = [None];
        let n = porta_sys::scm::recv(conn.as_raw_fd(), &mut buf, 0, &mut fds)
            .map(|r| r.len)
            .unwrap_or(0);
        let request = match ControlRequest::decode(&buf[..n]) {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(error = %e, "refused a request on the control socket");
                let _ = conn.write_all(&ControlReply::UnknownRequest.encode());
                return None;
            }
        };
        let [fd] = fds;
        match request {
            ControlRequest::Stop => {
                tracing::info!("stop requested");
                self.shutdown();
                let _ = conn.write_all(&ControlReply::Ok.encode());
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
                        let _ = conn.write_all(&ControlReply::Ok.encode());
                    }
                    None => {
                        let _ = conn.write_all(&ControlReply::NoSuchProcess.encode());
                    }
                }
                None
            }
            ControlRequest::Status => {
                let _ = conn.write_all(&self.state().encode());
                None
            }
            ControlRequest::Grant(_) | ControlRequest::Revoke(_) => {
                let done = match request {
                    ControlRequest::Grant(g) => self.add_grant(*g, fd),
                    ControlRequest::Revoke(id) => self.revoke_grant(&id),
                    _ => Ok(()),
                };
                let reply = match &done {
                    Ok(()) => ControlReply::Ok,
                    Err(why) => ControlReply::Failed(why.clone()),
                };
                let _ = conn.write_all(&reply.encode());
                // The connection closed first: the new successor must not hold it (the
                // client reads to its end).
                drop(conn);
                if done.is_ok() {
                    // A successor forked before holds the old set of handles.
                    self.renew_successor();
                }
                None
            }
        }
    }
}
