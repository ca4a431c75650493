//! The nested-container requests of the API socket (`create`, `start`, `exec`, `kill`,
//! `delete`, `state`, `listChildren`): child containers of the served container, under
//! `<state dir>/children/`, made and driven by [`crate::nested`].
//!
//! Every request arrives here with the caller's identity from the kernel
//! ([`super::Caller`]) and the descriptors it carried (3 for `exec`: stdin, stdout,
//! stderr). The served container's superuser rule is applied by [`crate::nested`] for
//! each operation (`state` and `listChildren` are open to every caller in the container).

use std::os::fd::OwnedFd;
use std::path::PathBuf;

use porta_supervisor::protocol::api::{Reply, Request};

use super::{Caller, Served};
use crate::error::{Error, Result};
use crate::nested::{self, CreateRequest, ExecRequest, Parent, Stdio};
use crate::state::StateRoot;

/// Answers a nested-container request.
pub fn dispatch(served: &Served, caller: &Caller, req: Request, fds: Vec<OwnedFd>) -> Reply {
    let op = req.op();
    match answer(served, caller, req, fds) {
        Ok(r) => r,
        Err(e) => {
            tracing::info!(container = %served.id, op, "refused: {e}");
            Reply::error(e.errno(), e.to_string())
        }
    }
}

fn answer(served: &Served, caller: &Caller, req: Request, fds: Vec<OwnedFd>) -> Result<Reply> {
    let root = StateRoot {
        path: served
            .state_dir
            .parent()
            .map(PathBuf::from)
            .ok_or_else(|| Error::Usage("the served state directory has no parent".into()))?,
    };
    let parent = Parent::open(&root, &served.id)?;
    let who = nested::Caller {
        uid: caller.uid,
        gid: caller.gid,
        pid: caller.pid,
    };
    let done = || Reply::Ok {
        value: serde_json::Value::Null,
    };
    Ok(match req {
        Request::Create { id, bundle } => {
            let req = CreateRequest {
                id,
                bundle: PathBuf::from(bundle),
            };
            nested::create(&parent, &who, &req, Stdio::from_fds(fds)?)?;
            done()
        }
        Request::Start { id } => {
            nested::start(&parent, &who, &id)?;
            done()
        }
        Request::Exec { id, args, env, cwd } => {
            let req = ExecRequest {
                id,
                args,
                env,
                cwd,
                user: None,
            };
            let code = nested::exec(&parent, &who, &req, Stdio::from_fds(fds)?)?;
            Reply::Exit { code }
        }
        Request::Kill { id, signal, all } => {
            let sig = nested::parse_signal(&signal)?;
            nested::kill(&parent, &who, &id, sig, all)?;
            done()
        }
        Request::Delete { id, force } => {
            nested::delete(&parent, &who, &id, force)?;
            done()
        }
        Request::State { id } => Reply::Ok {
            value: nested::state(&parent, &who, &id)?,
        },
        Request::ListChildren {} => Reply::Ok {
            value: serde_json::Value::Array(nested::list(&parent, &who)?),
        },
        other => {
            return Err(Error::Usage(format!(
                "{} is not a nested-container request",
                other.op()
            )))
        }
    })
}
