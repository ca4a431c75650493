//! The nested-container requests of the API socket (`create`, `start`, `exec`, `kill`,
//! `delete`, `state`, `listChildren`): child containers of the served container, under
//! `<state dir>/children/`.
//!
//! Every request arrives here with the caller's identity from the kernel
//! ([`super::Caller`]) and the descriptors it carried (3 for `exec`: stdin, stdout,
//! stderr).

use std::os::fd::OwnedFd;

use porta_supervisor::protocol::api::{Reply, Request};

use super::{Caller, Served};

/// Answers a nested-container request.
pub fn dispatch(served: &Served, caller: &Caller, req: Request, fds: Vec<OwnedFd>) -> Reply {
    let _ = (served, caller, fds);
    Reply::error(
        libc::ENOSYS,
        format!(
            "nested containers: {} is not available through the API socket of this build",
            req.op()
        ),
    )
}
