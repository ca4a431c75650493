//! Nested containers from the command line: inside a container (its API socket on), the
//! client mode of `create`, `start`, `exec`, `kill`, `delete`, `state` and `list`, which
//! act on the container's children; on the host, the hidden `porta nested`, which runs
//! the same operations with a caller's host ids given, through the same functions (and
//! checks) as the container's API socket.

use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use porta_runtime::api::client::Client;
use porta_runtime::nested::{self, Caller, CreateRequest, ExecRequest, Parent, Stdio};
use porta_runtime::state::StateRoot;
use porta_supervisor::protocol::api::{Reply, Request};

use crate::cli::{Command, NestedArgs, NestedOp};

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

/// Whether `cmd` is one the client mode sends to the container's API socket.
pub fn is_client_command(cmd: &Command) -> bool {
    matches!(
        cmd,
        Command::Create(_)
            | Command::Start { .. }
            | Command::Exec(_)
            | Command::Kill { .. }
            | Command::Delete { .. }
            | Command::State { .. }
            | Command::List { .. }
    )
}

/// The client mode inside a container: `create`, `start`, `exec`, `kill`, `delete`,
/// `state` and `list` act on the container's children through its API socket `sock`.
pub fn client(sock: &Path, cmd: Command) -> Result<i32> {
    let c = Client::connect(sock)?;
    let unsupported = |flag: &str| -> Result<i32> {
        bail!("{flag} is not available inside a container (through its API socket)")
    };
    let value = |req: Request| -> Result<serde_json::Value> { Ok(c.value(&req)?) };
    match cmd {
        Command::Create(a) => {
            if a.console_socket.is_some() {
                return unsupported("--console-socket");
            }
            if a.pid_file.is_some() {
                return unsupported("--pid-file");
            }
            if a.preserve_fds > 0 {
                return unsupported("--preserve-fds");
            }
            let bundle = if a.bundle.is_absolute() {
                a.bundle.clone()
            } else {
                std::env::current_dir()
                    .context("the working directory (for a relative --bundle)")?
                    .join(&a.bundle)
            };
            let bundle = bundle
                .to_str()
                .ok_or_else(|| anyhow!("--bundle {}: not UTF-8", bundle.display()))?
                .to_string();
            value(Request::Create { id: a.id, bundle })?;
            Ok(0)
        }
        Command::Start { id } => {
            value(Request::Start { id })?;
            Ok(0)
        }
        Command::Kill { all, id, signal } => {
            value(Request::Kill { id, signal, all })?;
            Ok(0)
        }
        Command::Delete { force, id } => {
            value(Request::Delete { id, force })?;
            Ok(0)
        }
        Command::State { id } => {
            let v = value(Request::State { id })?;
            println!("{}", serde_json::to_string_pretty(&v)?);
            Ok(0)
        }
        Command::List { format, quiet } => {
            let v = value(Request::ListChildren {})?;
            let items = v.as_array().cloned().unwrap_or_default();
            crate::run::print_list(&items, &format, quiet)
        }
        Command::Exec(a) => {
            for (set, flag) in [
                (a.process.is_some(), "--process"),
                (a.detach, "--detach"),
                (a.tty, "--tty"),
                (a.user.is_some(), "--user"),
                (!a.additional_gids.is_empty(), "--additional-gids"),
                (a.pid_file.is_some(), "--pid-file"),
                (a.console_socket.is_some(), "--console-socket"),
                (a.preserve_fds > 0, "--preserve-fds"),
                (!a.cap.is_empty(), "--cap"),
                (a.process_label.is_some(), "--process-label"),
                (a.apparmor.is_some(), "--apparmor"),
            ] {
                if set {
                    return unsupported(flag);
                }
            }
            let req = Request::Exec {
                id: a.id,
                args: a.command,
                env: a.env,
                cwd: a.cwd.map(|p| p.display().to_string()),
            };
            let (reply, _) = c.call(&req, &[0, 1, 2])?;
            match reply {
                Reply::Exit { code } => Ok(code),
                Reply::Error { errno, message, .. } => {
                    bail!("exec: {message} ({errno})")
                }
                Reply::Ok { .. } => bail!("exec: the API server answered no exit code"),
            }
        }
        _ => bail!("this command is not available inside a container"),
    }
}
