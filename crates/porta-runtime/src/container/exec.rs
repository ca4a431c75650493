//! `porta exec`: another process in a running container's namespaces and cgroup, through
//! a stage one that joins them and forks the process.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxNamespaceType, Process, Spec};

use super::{forward_console, forward_seccomp, oci_state_json, Container};
use crate::config;
use crate::error::{Context, Error, Result};
use crate::init;
use crate::kernel::{Kernel, LinuxKernel};
use crate::namespaces::{self, Plan};
use crate::state::{self, Status};
use crate::sync::{Channel, Msg};
use crate::{console, sys};

/// Options of `porta exec`.
#[derive(Debug, Clone, Default)]
pub struct ExecOptions {
    /// The process to run (already merged from --process or flags with the config's defaults).
    pub process: Option<Process>,
    /// Where to write the new process's pid.
    pub pid_file: Option<PathBuf>,
    /// Socket for the pty master.
    pub console_socket: Option<PathBuf>,
    /// Do not wait for the process.
    pub detach: bool,
    /// Fds above stdio passed to the process.
    pub preserve_fds: u32,
    /// Allow exec into a paused container.
    pub ignore_paused: bool,
}

impl Container {
    /// `exec`: runs another process in the container's namespaces and cgroup. Returns its
    /// pid; the caller waits for it unless detached.
    pub fn exec(self, spec: &Spec, opts: &ExecOptions) -> Result<i32> {
        let status = self.status();
        match status {
            Status::Running | Status::Created => {}
            Status::Paused if opts.ignore_paused => {}
            _ => {
                return Err(
                    self.bad_state(status, "cannot exec into a container that is not running")
                )
            }
        }
        let p = opts
            .process
            .as_ref()
            .ok_or_else(|| Error::Usage("no process to execute".into()))?;
        config::validate_process(p)?;
        // As runc: a process without a capabilities field (`exec --process FILE`) gets
        // the container's.
        let with_caps;
        let p = if p.capabilities().is_none() {
            let mut q = p.clone();
            q.set_capabilities(
                spec.process()
                    .as_ref()
                    .and_then(|s| s.capabilities().clone()),
            );
            with_caps = q;
            &with_caps
        } else {
            p
        };
        if p.terminal().unwrap_or(false) && opts.console_socket.is_none() {
            return Err(Error::Usage("--tty needs --console-socket".into()));
        }
        let pidfd = self.pidfd()?;
        let linux = spec
            .linux()
            .as_ref()
            .ok_or_else(|| Error::field("linux", "missing"))?;
        let plan = Plan::from_config(linux.namespaces().as_deref().unwrap_or(&[]));
        let mut flags = 0;
        for t in [
            LinuxNamespaceType::User,
            LinuxNamespaceType::Mount,
            LinuxNamespaceType::Pid,
            LinuxNamespaceType::Network,
            LinuxNamespaceType::Ipc,
            LinuxNamespaceType::Uts,
            LinuxNamespaceType::Cgroup,
            LinuxNamespaceType::Time,
        ] {
            let listed = linux.namespaces().iter().flatten().any(|n| n.typ() == t);
            if listed {
                flags |= namespaces::flag(t);
            }
        }
        let _ = plan;
        let join = porta_cgroups::join::Join::new(
            &self
                .cgroup()?
                .map(|c| c.payload_procs_files())
                .unwrap_or_default(),
        )?;
        // The exec'd process may run for long (and `resume` must get through to a paused
        // container): release the container's lock before forking.
        let Container { dir, state: cstate } = self;
        drop(dir);
        let (parent_chan, child_chan) = Channel::pair()?;
        match join.fork(0).ctx(|| "fork".into())? {
            porta_cgroups::join::Forked::Child { cloned_into } => {
                drop(parent_chan);
                let joined = join.enter(cloned_into);
                exec_stage_one(child_chan, pidfd, flags, joined, spec, p, opts.preserve_fds)
            }
            porta_cgroups::join::Forked::Parent(stage1) => {
                drop(child_chan);
                drop(join);
                let mut pid = None;
                let res = exec_messages(&parent_chan, &mut pid, |msg, fds| match msg {
                    Msg::Console => forward_console(fds, opts.console_socket.as_deref()),
                    Msg::SeccompListener => {
                        forward_seccomp(fds, spec, &oci_state_json(&cstate, Status::Running))
                    }
                    m => Err(Error::Init(format!("unexpected message {m:?}"))),
                });
                let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(stage1), None);
                let pid = match (res, pid) {
                    (Ok(p), _) => p,
                    (Err(e), Some(p)) => {
                        let _ = nix::sys::signal::kill(
                            nix::unistd::Pid::from_raw(p),
                            nix::sys::signal::Signal::SIGKILL,
                        );
                        return Err(e);
                    }
                    (Err(e), None) => return Err(e),
                };
                if let Some(pf) = &opts.pid_file {
                    state::write_atomic(pf, pid.to_string().as_bytes(), 0o644)?;
                }
                Ok(pid)
            }
        }
    }
}

/// Receives `porta exec`'s set-up messages until both the exec'd process's pid (from
/// stage one, into `pid`) and its ready message came, passing the others to `other`.
/// Stage one sends the pid after forking the process, so the process's own messages
/// (console, seccomp listener, ready) may come first: any order is taken (a CI run once
/// failed with "unexpected message Ready" when the pid was expected first).
fn exec_messages(
    chan: &Channel,
    pid: &mut Option<i32>,
    mut other: impl FnMut(Msg, Vec<OwnedFd>) -> Result<()>,
) -> Result<i32> {
    let mut ready = false;
    loop {
        if let (Some(p), true) = (*pid, ready) {
            return Ok(p);
        }
        let peer = if pid.is_none() {
            "porta exec (stage one)"
        } else {
            "the exec'd process"
        };
        let (msg, fds) = chan.recv(peer)?;
        match msg {
            Msg::Pid(p) if pid.is_none() => *pid = Some(p),
            Msg::Ready if !ready => ready = true,
            m => other(m, fds)?,
        }
    }
}

fn exec_stage_one(
    chan: Channel,
    target: OwnedFd,
    flags: i32,
    joined: porta_cgroups::Result<()>,
    spec: &Spec,
    p: &Process,
    preserve: u32,
) -> ! {
    let r = (|| -> Result<i32> {
        joined?;
        LinuxKernel
            .setns(target.as_fd(), flags)
            .ctx(|| "join the container's namespaces".into())?;
        drop(target);
        match sys::clone_into(0).ctx(|| "fork the exec'd process".into())? {
            sys::Forked::Parent(pid) => Ok(pid),
            sys::Forked::Child => {
                let r = exec_child(&chan, spec, p, preserve);
                let _ = chan.send(
                    &Msg::Failed(r.err().map(|e| e.to_string()).unwrap_or_default()),
                    &[],
                );
                sys::exit_now(1)
            }
        }
    })();
    match r {
        Ok(pid) => {
            let _ = chan.send(&Msg::Pid(pid), &[]);
            sys::exit_now(0)
        }
        Err(e) => {
            let _ = chan.send(&Msg::Failed(e.to_string()), &[]);
            sys::exit_now(1)
        }
    }
}

fn exec_child(chan: &Channel, spec: &Spec, p: &Process, preserve: u32) -> Result<()> {
    if p.terminal().unwrap_or(false) {
        let size = p
            .console_size()
            .as_ref()
            .map(|b| (b.height() as u16, b.width() as u16));
        let (master, slave) = console::open_pty(Path::new("/dev/pts/ptmx"), size, p.user().uid())?;
        chan.send(&Msg::Console, &[master.as_raw_fd()])?;
        drop(master);
        console::become_tty(slave.as_fd())?;
    } else {
        let _ = nix::unistd::setsid();
    }
    init::finalize_and_exec(chan, spec, p, preserve, None, "")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The exec'd process's messages may come before stage one's pid, or after it.
    #[test]
    fn exec_messages_take_the_pid_and_ready_in_either_order() {
        for pid_first in [true, false] {
            let (ours, theirs) = Channel::pair().unwrap();
            if pid_first {
                theirs.send(&Msg::Pid(42), &[]).unwrap();
            }
            theirs.send(&Msg::Console, &[]).unwrap();
            theirs.send(&Msg::Ready, &[]).unwrap();
            if !pid_first {
                theirs.send(&Msg::Pid(42), &[]).unwrap();
            }
            let mut pid = None;
            let mut others = Vec::new();
            let r = exec_messages(&ours, &mut pid, |m, _| {
                others.push(format!("{m:?}"));
                Ok(())
            });
            assert_eq!(r.unwrap(), 42, "pid first: {pid_first}");
            assert_eq!(others, ["Console"]);
        }
        // A failure report ends it with that error; a second pid is unexpected.
        let (ours, theirs) = Channel::pair().unwrap();
        theirs
            .send(&Msg::Failed("no such file".into()), &[])
            .unwrap();
        let mut pid = None;
        let e = exec_messages(&ours, &mut pid, |_, _| Ok(())).unwrap_err();
        assert!(e.to_string().contains("no such file"), "{e}");
        let (ours, theirs) = Channel::pair().unwrap();
        theirs.send(&Msg::Pid(1), &[]).unwrap();
        theirs.send(&Msg::Pid(2), &[]).unwrap();
        let mut pid = None;
        let e = exec_messages(&ours, &mut pid, |m, _| {
            Err(Error::Init(format!("unexpected message {m:?}")))
        })
        .unwrap_err();
        assert!(e.to_string().contains("unexpected message Pid(2)"), "{e}");
        assert_eq!(pid, Some(1));
    }
}
