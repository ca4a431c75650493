//! `porta nested`: the operations on a container's children, run on the host with the
//! caller's host ids given, through the same functions (and checks) as the container's
//! API socket.

use anyhow::Result;
use porta_runtime::nested::{self, Caller, CreateRequest, ExecRequest, Parent, Stdio};
use porta_runtime::state::StateRoot;

use crate::cli::{NestedArgs, NestedOp};

/// Runs one operation; returns the exit code.
pub fn run(root: &StateRoot, a: NestedArgs) -> Result<i32> {
    let parent = Parent::open(root, &a.parent)?;
    let caller = Caller {
        uid: a.caller_uid,
        gid: a.caller_gid,
        pid: a.caller_pid,
    };
    match a.op {
        NestedOp::Create { bundle, id } => {
            let req = CreateRequest { id, bundle };
            nested::create(&parent, &caller, &req, Stdio::inherit()?)?;
            Ok(0)
        }
        NestedOp::Start { id } => {
            nested::start(&parent, &caller, &id)?;
            Ok(0)
        }
        NestedOp::Exec {
            cwd,
            env,
            user,
            id,
            command,
        } => {
            let req = ExecRequest {
                id,
                args: command,
                env,
                cwd,
                user,
            };
            Ok(nested::exec(&parent, &caller, &req, Stdio::inherit()?)?)
        }
        NestedOp::Kill { all, id, signal } => {
            let sig = crate::run::parse_signal(&signal)?;
            nested::kill(&parent, &caller, &id, sig, all)?;
            Ok(0)
        }
        NestedOp::Delete { force, id } => {
            nested::delete(&parent, &caller, &id, force)?;
            Ok(0)
        }
        NestedOp::State { id } => {
            let v = nested::state(&parent, &caller, &id)?;
            println!("{}", serde_json::to_string_pretty(&v)?);
            Ok(0)
        }
        NestedOp::List => {
            let v = nested::list(&parent, &caller)?;
            println!("{}", serde_json::to_string_pretty(&v)?);
            Ok(0)
        }
    }
}
