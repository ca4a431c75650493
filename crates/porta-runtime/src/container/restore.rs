//! `porta restore`: a new container from a CRIU checkpoint of a container whose root the
//! kernel mounts. Its state and cgroup are made as `create` makes them; CRIU then rebuilds
//! the processes, namespaces and mounts, and the container is running. Everything made is
//! undone if a step fails.

use std::os::fd::AsFd;
use std::path::Path;

use porta_sys::pidfd;

use super::create::{begin, CreateOptions};
use crate::checkpoint::{self, RestoreOptions};
use crate::console;
use crate::error::{Context, Error, Result};
use crate::state::{self, ContainerState, StateRoot, Status};

/// Restores container `o.id` from the checkpoint in `o.criu.image_path`. The restored
/// process is a child of the caller, which may wait for it (a foreground `restore`).
pub fn restore(root: &StateRoot, o: &RestoreOptions) -> Result<ContainerState> {
    let bundle = checkpoint::check_restore(root, o)?;
    let spec = &bundle.spec;
    let linux = spec
        .linux()
        .as_ref()
        .ok_or_else(|| Error::field("linux", "missing"))?;
    let copts = CreateOptions {
        id: o.id.clone(),
        bundle: bundle.dir.clone(),
        systemd_cgroup: o.systemd_cgroup,
        ..CreateOptions::default()
    };
    let (mut rb, mut st) = begin(root, &bundle, linux, &copts)?;
    let dir = rb
        .dir
        .as_ref()
        .ok_or_else(|| Error::Init("state directory vanished".into()))?;
    let cg = rb
        .cgroup
        .as_ref()
        .ok_or_else(|| Error::Init("cgroup vanished".into()))?;
    // A terminal: a new pty, its slave in place of the checkpointed one, its master sent
    // to the console socket once the process runs.
    let terminal = if spec
        .process()
        .as_ref()
        .and_then(|p| p.terminal())
        .unwrap_or(false)
    {
        let uid = spec.process().as_ref().map(|p| p.user().uid()).unwrap_or(0);
        Some(console::open_pty(Path::new("/dev/ptmx"), None, uid)?)
    } else {
        None
    };
    let slave = terminal.as_ref().map(|(_, s)| s.as_fd());
    let pid = checkpoint::run_restore(&bundle, cg, &dir.path, o, slave)?;
    rb.init = Some(pidfd::open(pid).ctx(|| format!("pidfd of the restored process {pid}"))?);
    st.pid = pid;
    st.pid_start_time = porta_sys::proc::start_time(pid).unwrap_or(0);
    st.started = true;
    st.status = Status::Running;
    dir.save(&st)?;
    if let (Some((master, _)), Some(sock)) = (&terminal, &o.console_socket) {
        console::send_master(sock, master.as_fd())?;
    }
    if let Some(p) = &o.pid_file {
        state::write_atomic(p, pid.to_string().as_bytes(), 0o644)?;
    }
    rb.disarm();
    Ok(st)
}
