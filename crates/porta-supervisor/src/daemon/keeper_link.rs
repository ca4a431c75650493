//! The supervisor's link to the keeper: a command and its answer (sequence-numbered,
//! checked against the processes sharing the keeper's table), the keeper's twin, and
//! the twin taking a dead keeper's place.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use porta_protocol::keeper::{Answer, Command as KeeperCommand, CommandKind, Outcome};

use super::Supervisor;
use crate::proc;
use crate::Error;

impl Supervisor {
    /// Sends one command to the keeper and reads its answer: the pid of a process it
    /// started (checked, with a pidfd of it), or (0, None) for [`CommandKind::Sync`].
    /// When the keeper dies before it answers, its twin takes its place
    /// ([`Self::replace_keeper`]) and the command goes to the twin.
    pub(super) fn keeper_request(
        &mut self,
        kind: CommandKind,
    ) -> Result<(i32, Option<OwnedFd>), Error> {
        let mut attempt = 0;
        let outcome = loop {
            attempt += 1;
            match self.exchange(kind) {
                Ok((outcome, _)) => break outcome,
                Err(e) if attempt < 3 && self.keeper_gone() => {
                    tracing::warn!(error = %e, "the file-server keeper died during a command");
                    let cause = self.keeper_death_cause();
                    self.replace_keeper(&cause)?;
                }
                Err(e) => return Err(e),
            }
        };
        if kind == CommandKind::Sync {
            return Ok((0, None));
        }
        let what = if kind == CommandKind::Twin {
            "keeper: fork its twin"
        } else {
            "keeper: clone file server"
        };
        let pid = match outcome {
            Outcome::Started(pid) => pid,
            Outcome::Failed(errno) => {
                return Err(Error::Sys(what, nix::errno::Errno::from_raw(errno)))
            }
            Outcome::Done => {
                return Err(Error::Refused(format!(
                    "{what}: the keeper answered {kind:?} without a pid"
                )))
            }
        };
        let fd = if kind == CommandKind::Twin {
            self.verified_sharer(pid)
        } else {
            self.verified_server(pid)
        };
        match fd {
            Some(fd) => Ok((pid, Some(fd))),
            None => Err(Error::Refused(format!(
                "the keeper answered pid {pid}, which is no process of this container's file server"
            ))),
        }
    }

    /// Sends one command on the keeper's socket and waits for the answer with its
    /// sequence number: (what the keeper did, the pid of the keeper that answered).
    /// Fails at once when the keeper dies first.
    fn exchange(&mut self, kind: CommandKind) -> Result<(Outcome, i32), Error> {
        let ctl = self.ctl.as_ref().ok_or(Error::NoKeeper)?.as_raw_fd();
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let msg = KeeperCommand { kind, seq }.encode();
        porta_fs::sys::write(ctl, &msg).map_err(|e| {
            Error::Sys(
                "send a command to the keeper",
                nix::errno::Errno::from_raw(e),
            )
        })?;
        // The keeper's end of this socket is in the fd table it shares with the servers:
        // a compromised server can write into it. An answer is taken only with our
        // sequence number, and its pid only if that process shares the keeper's table
        // (checked by the caller); we never wait forever. Answers to earlier commands (a
        // dead predecessor's, or one we gave up waiting for) are skipped, their servers
        // killed.
        //
        // Meanwhile (for the stand-ins: the twin, a standby) the servers' passthrough
        // backing requests are answered: such a command takes milliseconds, and a
        // container that opens its first file then would wait for it. Not during SYNC
        // and ACTIVATE: a takeover or a restart settles the broker's ids first.
        let serve_backing = matches!(kind, CommandKind::Twin | CommandKind::Standby);
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut answers = 0;
        while answers < 64 {
            let left = deadline.saturating_duration_since(Instant::now());
            let ms = u16::try_from(left.as_millis()).unwrap_or(u16::MAX);
            let (n, answered, backing) = {
                // SAFETY: `ctl` is our open socket, borrowed for the poll only.
                let bfd = unsafe { std::os::fd::BorrowedFd::borrow_raw(ctl) };
                let mut fds = vec![PollFd::new(bfd, PollFlags::POLLIN)];
                if let Some(k) = &self.keeper_fd {
                    fds.push(PollFd::new(k.as_fd(), PollFlags::POLLIN));
                }
                let broker = self.broker.as_ref().filter(|b| serve_backing && b.live());
                let bidx = broker.map(|b| {
                    fds.push(PollFd::new(b.fd(), PollFlags::POLLIN));
                    fds.len() - 1
                });
                let n = poll(&mut fds, PollTimeout::from(ms)).unwrap_or(0);
                let ready = |i: usize| fds[i].revents().is_some_and(|r| !r.is_empty());
                (n, ready(0), bidx.is_some_and(ready))
            };
            if n <= 0 {
                return Err(Error::Timeout(
                    "hear the keeper's answer",
                    Duration::from_secs(5),
                ));
            }
            if backing {
                self.serve_backing();
                if n == 1 {
                    continue;
                }
            }
            if !answered {
                return Err(Error::Refused(
                    "the file-server keeper died before it answered".into(),
                ));
            }
            answers += 1;
            let mut b = [0u8; porta_protocol::keeper::ANSWER_LEN + 1];
            let n = porta_fs::sys::read(ctl, &mut b).map_err(|e| {
                Error::Sys("read the keeper's answer", nix::errno::Errno::from_raw(e))
            })?;
            if n == 0 {
                return Err(Error::Refused(
                    "the keeper closed its control socket".into(),
                ));
            }
            let answer = match Answer::decode(&b[..n]) {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "ignored an answer on the keeper's socket");
                    continue;
                }
            };
            if answer.seq != seq {
                if let Outcome::Started(pid) = answer.outcome {
                    if pid != self.twin_pid {
                        if let Some(fd) = self.verified_server(pid) {
                            tracing::warn!(pid, "killing a server started for an earlier command");
                            proc::send(fd.as_fd(), libc::SIGKILL);
                        }
                    }
                }
                continue;
            }
            return Ok((answer.outcome, answer.keeper));
        }
        Err(Error::Refused(
            "the keeper's socket gave no answer to our command".into(),
        ))
    }

    /// Whether the keeper we know is gone (or we know none).
    pub(super) fn keeper_gone(&self) -> bool {
        self.keeper_fd
            .as_ref()
            .is_none_or(|k| porta_sys::pidfd::has_exited(k.as_fd()))
    }

    /// How the keeper we know died, for the record.
    pub(super) fn keeper_death_cause(&self) -> String {
        match &self.keeper_fd {
            Some(k) => proc::death_of(k.as_fd(), self.keeper_pid).cause,
            None => "gone".into(),
        }
    }

    /// The keeper died: its twin took its place and answers on the same socket. Learns
    /// the new keeper from the answer to a `SYNC`, checks that it is the twin (or, when
    /// the keeper died before it could answer which twin it forked, a process sharing the
    /// servers' table that is neither server nor standby), and stops every other sharer
    /// but the active server: the standby (its wake-up pipe was the dead keeper's) and
    /// whatever a command the dead keeper was in left behind. The next loop forks a twin.
    pub(super) fn replace_keeper(&mut self, cause: &str) -> Result<(), Error> {
        let old = self.keeper_pid;
        self.keeper_pid = 0;
        self.keeper_fd = None;
        let (twin, twin_fd) = (self.twin_pid, self.twin_fd.take());
        self.twin_pid = 0;
        let no_twin = || {
            Error::Refused(format!(
                "the file-server keeper {old} {cause}, and no twin took its place: open files and nodes are lost"
            ))
        };
        let (_, k) = self.exchange(CommandKind::Sync).map_err(|e| {
            tracing::error!(error = %e, "no answer from a twin of the dead keeper");
            no_twin()
        })?;
        let kfd = proc::pidfd_open(k).ok_or_else(no_twin)?;
        let twin_alive = twin_fd
            .as_ref()
            .is_some_and(|f| !porta_sys::pidfd::has_exited(f.as_fd()));
        let known = if twin_alive {
            // Our twin lives: only it can have taken over.
            k == twin
        } else {
            // Checked against a live process of ours that shares the servers' table.
            k != self.server_pid
                && k != self.standby_pid
                && [
                    (self.server_pid, &self.server_fd),
                    (self.standby_pid, &self.standby_fd),
                ]
                .into_iter()
                .any(|(p, f)| {
                    p > 0
                        && f.as_ref()
                            .is_some_and(|f| !porta_sys::pidfd::has_exited(f.as_fd()))
                        && proc::share_files(k, p)
                })
        };
        if !known || porta_sys::pidfd::has_exited(kfd.as_fd()) {
            tracing::error!(
                answered = k,
                twin,
                "the process that answered is not the keeper's twin"
            );
            return Err(no_twin());
        }
        self.keeper_pid = k;
        self.keeper_fd = Some(kfd);
        self.keeper_takeovers += 1;
        // The standby's pipe died with the keeper; an unknown sharer is a server or
        // standby the dead keeper started without answering. All must be gone before the
        // new keeper's next command, which closes the dead one's standby pipe.
        let mut stopped = 0;
        if let Some(fd) = self.standby_fd.take() {
            proc::send(fd.as_fd(), libc::SIGKILL);
            if !proc::wait_exit(fd.as_fd(), 10_000) {
                tracing::error!("the standby did not die within 10 s of SIGKILL");
            }
            stopped += 1;
        }
        self.standby_pid = 0;
        stopped += self.stop_servers_but(self.server_pid);
        // The successor's copy of us knows the dead keeper.
        self.refresh_successor();
        self.last_error = Some(format!(
            "file-server keeper {old} {cause}; its twin {k} took its place"
        ));
        tracing::warn!(old, new = k, stopped, "the keeper's twin took its place");
        self.write_state();
        Ok(())
    }

    /// Kills every process sharing the keeper's table but the keeper, its twin and `keep`
    /// (0: none), and waits for them; returns how many.
    pub(super) fn stop_servers_but(&self, keep: i32) -> usize {
        let mut fds = Vec::new();
        for pid in proc::sharers_of(self.keeper_pid) {
            if pid == keep {
                continue;
            }
            if let Some(fd) = self.verified_server(pid) {
                proc::send(fd.as_fd(), libc::SIGKILL);
                fds.push(fd);
            }
        }
        for fd in &fds {
            if !proc::wait_exit(fd.as_fd(), 10_000) {
                tracing::error!("a file server did not die within 10 s of SIGKILL");
            }
        }
        fds.len()
    }

    /// A pidfd of `pid` if it is a live server of ours: a process other than the keeper
    /// and its twin sharing the keeper's descriptor table.
    fn verified_server(&self, pid: i32) -> Option<OwnedFd> {
        if pid == self.twin_pid {
            return None;
        }
        self.verified_sharer(pid)
    }

    /// A pidfd of `pid` if it is a live process other than the keeper sharing the
    /// keeper's descriptor table (checked after the pidfd is open and while the process
    /// is alive, so the pid is the pidfd's process).
    fn verified_sharer(&self, pid: i32) -> Option<OwnedFd> {
        let keeper = proc::borrow(&self.keeper_fd)?;
        if pid == self.keeper_pid || porta_sys::pidfd::has_exited(keeper) {
            return None;
        }
        let fd = proc::pidfd_open(pid)?;
        if !proc::share_files(self.keeper_pid, pid)
            || porta_sys::pidfd::has_exited(fd.as_fd())
            || porta_sys::pidfd::has_exited(keeper)
        {
            return None;
        }
        Some(fd)
    }

    /// Forks the keeper's twin unless one lives (or twins keep dying).
    pub(super) fn ensure_twin(&mut self) {
        if self.twin_pid > 0 || self.twin_failures >= 5 || self.ctl.is_none() || self.failed {
            return;
        }
        match self.keeper_request(CommandKind::Twin) {
            Ok((pid, fd)) => {
                self.twin_pid = pid;
                self.twin_fd = fd;
                // The successor's copy of us does not know this twin.
                self.refresh_successor();
                self.write_state();
            }
            Err(e) => {
                self.twin_failures += 1;
                tracing::warn!(error = %e, "could not fork the keeper's twin");
                if self.twin_failures >= 5 {
                    tracing::error!("the keeper has no twin: its death would not be survived");
                }
            }
        }
    }
}
