//! The successor: a fork of the supervisor that waits for its death and takes over,
//! replacing every server of the dead one.

use std::os::fd::{AsFd, OwnedFd};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use porta_protocol::keeper::CommandKind;

use super::Supervisor;
use crate::proc::{self, Death};

impl Supervisor {
    /// Forks the successor unless one waits: a copy of this process holding every
    /// descriptor that matters (the FUSE device, the mount, the state memfd, the control
    /// socket's listener, the keeper's socket and pidfd, the backing broker's socket),
    /// which waits for this process to die. Returns in the child only once this process
    /// died, with `pending` set: the caller then takes over.
    pub(super) fn ensure_successor(&mut self) {
        if self.successor.is_some() || self.failed || self.listener.is_none() {
            return;
        }
        if self.self_fd.is_none() {
            return;
        }
        let parent = std::process::id() as i32;
        // SAFETY: the supervisor is single-threaded; the child goes on with a copy of it.
        match unsafe { nix::unistd::fork() } {
            Ok(nix::unistd::ForkResult::Parent { child }) => {
                let pid = child.as_raw();
                // Our child, not reaped yet: the pid is the successor's.
                match proc::pidfd_open(pid) {
                    Some(fd) => self.successor = Some((pid, fd)),
                    None => {
                        let _ = kill(child, Signal::SIGKILL);
                        let _ = nix::sys::wait::waitpid(child, None);
                    }
                }
                self.write_state();
            }
            Ok(nix::unistd::ForkResult::Child) => {
                // The parent's own pidfd, inherited: the one to wait on.
                if let Some(active) = self.self_fd.take() {
                    self.wait_as_successor(parent, active);
                }
            }
            Err(e) => tracing::warn!(error = %e, "could not fork the successor supervisor"),
        }
    }

    /// Replaces the waiting successor with a fresh fork, which knows what this process
    /// holds now (a grant's handle, a grant's server).
    pub(super) fn renew_successor(&mut self) {
        if let Some((pid, fd)) = self.successor.take() {
            proc::send(fd.as_fd(), libc::SIGKILL);
            let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None);
        }
        self.ensure_successor();
    }

    /// The successor's life: waits on the active supervisor's pidfd, then records its
    /// death in `pending`.
    fn wait_as_successor(&mut self, active_pid: i32, active: OwnedFd) {
        tracing::info!(active = active_pid, "successor supervisor waiting");
        while !proc::wait_exit(active.as_fd(), u16::MAX) {}
        let death = proc::death_of(active.as_fd(), active_pid);
        drop(active);
        self.pending = Some((active_pid, death));
    }

    /// Becomes the active supervisor after `dead` died: forks a successor of its own,
    /// reloads what the dead one recorded, settles the keeper's socket, kills every
    /// server (the replacement resends what they had in flight) and starts a new one.
    pub(super) fn take_over(&mut self, mut dead: i32, mut death: Death) {
        // Forks the successor first; in that successor, should this process die before
        // the takeover is done, the loop starts the takeover again from the beginning.
        // This copy's idea of the servers is as old as the fork: the sweep below finds
        // the ones there are.
        self.server_pid = 0;
        self.server_fd = None;
        self.standby_pid = 0;
        self.standby_fd = None;
        // The dead supervisor's API server stops accepting once it sees its parent gone
        // (and exits when its open connections end): start another.
        self.api.pid = 0;
        loop {
            tracing::warn!(dead, cause = %death.cause, "the supervisor died; its successor takes over");
            self.self_fd = proc::pidfd_open(std::process::id() as i32);
            self.ensure_successor();
            match self.pending.take() {
                Some((d, why)) => (dead, death) = (d, why),
                None => break,
            }
        }
        let me = std::process::id() as i32;
        self.takeovers += 1;
        // What the dead supervisor recorded since this copy was forked.
        if let Ok(st) = crate::read_state(&self.a.state_dir) {
            if let Some(fs) = st.servers.first() {
                self.restarts = self.restarts.max(fs.restarts);
            }
            self.takeovers = self.takeovers.max(st.takeovers + 1);
            if st.container_pid > 0 {
                self.container_pid = st.container_pid;
                self.container_start = st.container_start;
                self.container = proc::open_if_same(st.container_pid, st.container_start);
            }
        }
        let cause = format!(
            "supervisor {dead} {}; supervisor {me} took over",
            death.cause
        );
        if self.keeper_gone() {
            // The keeper died too (or before the supervisor could notice): its twin.
            let died = self.keeper_death_cause();
            if let Err(e) = self.replace_keeper(&died) {
                self.give_up(format!("{e} ({cause})"));
                std::process::exit(1);
            }
        }
        // Every command the dead one sent is answered once ours is.
        if let Err(e) = self.keeper_request(CommandKind::Sync) {
            self.give_up(format!(
                "the keeper does not answer after a takeover: {e} ({cause})"
            ));
            std::process::exit(1);
        }
        // Now nothing makes servers but us: stop every one there is.
        let killed = self.stop_servers_but(0);
        self.server_pid = 0;
        self.server_fd = None;
        self.standby_pid = 0;
        self.standby_fd = None;
        if let Some(b) = self.broker.as_mut() {
            b.adopt(self.shared.recorded_backing());
        }
        self.restarts += 1;
        self.last_error = Some(cause.clone());
        tracing::info!(killed, "servers of the dead supervisor stopped");
        if self.container_pid > 0 && self.container.is_none() {
            tracing::info!("the container's process is gone; stopping");
            self.shutdown();
            std::process::exit(0);
        }
        // A fresh standby replaces the keeper's record of the killed one, then serves.
        self.prepare_standby();
        if let Err(e) = self.spawn_server() {
            self.give_up(format!(
                "could not restart the file server after a takeover: {e} ({cause})"
            ));
            std::process::exit(1);
        }
        self.prepare_standby();
        self.write_state();
    }

    /// Stops the successor, whose copy of this process is out of date (it knows a dead
    /// keeper, or not the twin): the next loop forks a new one.
    pub(super) fn refresh_successor(&mut self) {
        if let Some((pid, fd)) = self.successor.take() {
            proc::send(fd.as_fd(), libc::SIGKILL);
            let _ = nix::sys::wait::waitpid(Pid::from_raw(pid), None);
        }
    }
}
