//! The file servers' lives: starting one (or waking the standby), noticing deaths and
//! stops, the watchdog for deadlocked requests, and the evidence that a request kills
//! them (after which the supervisor gives up).

use std::os::fd::{AsFd, AsRawFd};
use std::sync::atomic::Ordering;
use std::time::Instant;

use nix::sys::wait::{waitid, Id, WaitPidFlag, WaitStatus};

use porta_fs::shared::{hdr, slot};
use porta_protocol::keeper::CommandKind;

use super::{Next, Supervisor, DEFAULT_HANG_TIMEOUT};
use crate::backing::FuseDevice;
use crate::proc::{self, Death};
use crate::Error;

/// A FUSE request as a server's slot shows it: opcode, request id (without the kernel's
/// resend bit), node id.
type Req = (u32, u64, u64);

/// Evidence that a request kills the servers: the requests in flight at every one of the
/// last `streak` consecutive self-inflicted deaths (crash, abort, forbidden system call,
/// failure exit, deadlock).
#[derive(Debug, Clone, Default)]
pub(super) struct Poison {
    suspects: Vec<Req>,
    streak: u32,
}

/// The kernel sets this bit of a request id when it resends the request.
const FUSE_UNIQUE_RESEND: u64 = 1 << 63;

/// Name of a FUSE opcode, for messages.
fn opcode_name(op: u32) -> &'static str {
    match op {
        1 => "LOOKUP",
        2 => "FORGET",
        3 => "GETATTR",
        4 => "SETATTR",
        5 => "READLINK",
        6 => "SYMLINK",
        8 => "MKNOD",
        9 => "MKDIR",
        10 => "UNLINK",
        11 => "RMDIR",
        12 => "RENAME",
        13 => "LINK",
        14 => "OPEN",
        15 => "READ",
        16 => "WRITE",
        17 => "STATFS",
        18 => "RELEASE",
        20 => "FSYNC",
        21 => "SETXATTR",
        22 => "GETXATTR",
        23 => "LISTXATTR",
        24 => "REMOVEXATTR",
        25 => "FLUSH",
        26 => "INIT",
        27 => "OPENDIR",
        28 => "READDIR",
        29 => "RELEASEDIR",
        30 => "FSYNCDIR",
        34 => "ACCESS",
        35 => "CREATE",
        38 => "DESTROY",
        42 => "BATCH_FORGET",
        43 => "FALLOCATE",
        44 => "READDIRPLUS",
        45 => "RENAME2",
        46 => "LSEEK",
        47 => "COPY_FILE_RANGE",
        51 => "STATX",
        _ => "request",
    }
}

/// "LOOKUP (opcode 1, request 42, node 7)".
fn describe(r: &Req) -> String {
    format!(
        "{} (opcode {}, request {}, node {})",
        opcode_name(r.0),
        r.0,
        r.1,
        r.2
    )
}

impl Supervisor {
    /// Pre-forks a standby server (set up and confined, waiting to be woken), unless
    /// standbys keep dying.
    pub(super) fn prepare_standby(&mut self) {
        if self.standby_pid > 0 || self.standby_failures >= 5 || self.ctl.is_none() {
            return;
        }
        match self.keeper_request(CommandKind::Standby) {
            Ok((pid, fd)) => {
                self.standby_pid = pid;
                self.standby_fd = fd;
            }
            Err(e) => {
                self.standby_failures += 1;
                tracing::warn!(error = %e, "could not pre-fork a standby file server");
            }
        }
    }

    pub(super) fn spawn_server(&mut self) -> Result<(), Error> {
        for i in 0..hdr::MAX_SLOTS {
            if let Some(s) = self.shared.thread_slot(i) {
                s.clear();
            }
        }
        self.watch.clear();
        // The standby (if any) takes over; the keeper starts a server when there is none.
        let standby = self.standby_pid;
        self.standby_pid = 0;
        self.standby_fd = None;
        let mut tries = 0;
        let (pid, fd) = loop {
            tries += 1;
            match self.keeper_request(CommandKind::Activate) {
                Ok(started) => break started,
                // The server died before it could be checked (e.g. a standby that refused
                // to serve): the next ACTIVATE starts a new one.
                Err(Error::Refused(why)) if tries < 3 && !self.keeper_gone() => {
                    tracing::warn!(why, "the woken file server is gone; starting another");
                }
                Err(e) => return Err(e),
            }
        };
        if standby > 0 && pid != standby {
            tracing::warn!(
                standby,
                "standby file server could not be woken; started a new one"
            );
        } else if standby > 0 {
            // A standby served: standbys do not keep dying.
            self.standby_failures = 0;
        }
        self.server_pid = pid;
        self.server_fd = fd;
        self.progress_at_start = self.shared.requests_done();
        tracing::info!(pid, restarts = self.restarts, "file server started");
        Ok(())
    }

    /// Reaps children and notices the exits of the keeper and servers (children or not);
    /// restarts the server or decides to stop.
    pub(super) fn reap(&mut self) -> Option<Next> {
        loop {
            let st = match waitid(
                Id::All,
                WaitPidFlag::WEXITED | WaitPidFlag::WSTOPPED | WaitPidFlag::WNOHANG,
            ) {
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(st) => st,
            };
            let (pid, death) = match st {
                WaitStatus::Exited(p, code) => (p.as_raw(), Death::exited(code)),
                WaitStatus::Signaled(p, sig, _) => (p.as_raw(), Death::signaled(sig as i32)),
                WaitStatus::Stopped(p, sig) => {
                    self.on_stopped(p.as_raw(), sig.as_ref());
                    continue;
                }
                _ => continue,
            };
            if let Some(n) = self.on_exit(pid, death) {
                return Some(n);
            }
        }
        // Those that are not our children (a reaper has them; the twin is the keeper's).
        for role in 0..4 {
            let (pid, fd) = match role {
                0 => (self.server_pid, &self.server_fd),
                1 => (self.standby_pid, &self.standby_fd),
                2 => (self.keeper_pid, &self.keeper_fd),
                _ => (self.twin_pid, &self.twin_fd),
            };
            let Some(fd) = fd
                .as_ref()
                .filter(|f| porta_sys::pidfd::has_exited(f.as_fd()))
            else {
                continue;
            };
            let death = proc::death_of(fd.as_fd(), pid);
            if let Some(n) = self.on_exit(pid, death) {
                return Some(n);
            }
        }
        None
    }

    /// A server or the standby stopped (job control, ptrace): it serves no one so.
    fn on_stopped(&mut self, pid: i32, how: &str) {
        if pid > 0 && pid == self.standby_pid {
            if let Some(fd) = &self.standby_fd {
                proc::send(fd.as_fd(), libc::SIGKILL);
            }
        }
        if pid > 0 && pid == self.server_pid {
            tracing::warn!(pid, how, "file server stopped; replacing it");
            self.kill_reason = Some(format!("stopped by {how}"));
            if let Some(fd) = &self.server_fd {
                proc::send(fd.as_fd(), libc::SIGKILL);
            }
        }
    }

    fn on_exit(&mut self, pid: i32, death: Death) -> Option<Next> {
        if pid <= 0 {
            return None;
        }
        if pid == self.server_pid {
            return self.on_server_death(death);
        }
        if pid == self.standby_pid {
            tracing::warn!(pid, cause = %death.cause, "standby file server died; pre-forking another");
            self.standby_pid = 0;
            self.standby_fd = None;
            self.standby_failures += 1;
            self.prepare_standby();
            self.write_state();
        } else if pid == self.keeper_pid {
            if let Err(e) = self.replace_keeper(&death.cause) {
                self.give_up(e.to_string());
                return Some(Next::Exit(1));
            }
            self.prepare_standby();
            self.write_state();
        } else if pid == self.twin_pid {
            tracing::warn!(pid, cause = %death.cause, "the keeper's twin died; forking another");
            self.twin_pid = 0;
            self.twin_fd = None;
            if death.own_fault() {
                self.twin_failures += 1;
            }
        } else if pid == self.api.pid {
            self.on_api_exit(&death);
        } else if self.successor.as_ref().is_some_and(|(p, _)| *p == pid) {
            tracing::warn!(pid, cause = %death.cause, "successor supervisor died; forking another");
            // ensure_successor forks the next one.
            self.successor = None;
        }
        None
    }

    /// The requests the server's threads were in (their slots say WORKING) as it died.
    fn in_flight(&self) -> Vec<Req> {
        let mut out = Vec::new();
        for i in 0..hdr::MAX_SLOTS {
            let Some(s) = self.shared.thread_slot(i) else {
                continue;
            };
            let info = s.info();
            if info.state != slot::WORKING || info.tid == 0 {
                continue;
            }
            if let Some((op, unique, node)) = self.shared.request_in(i) {
                out.push((op, unique & !FUSE_UNIQUE_RESEND, node));
            }
        }
        out
    }

    fn on_server_death(&mut self, death: Death) -> Option<Next> {
        self.server_pid = 0;
        self.server_fd = None;
        if self.shared.hdr(hdr::UNMOUNTED).load(Ordering::Acquire) == 1 {
            tracing::info!("the container's mount is gone; stopping");
            self.shutdown();
            return Some(Next::Exit(0));
        }
        let deadlocked = self
            .kill_reason
            .as_ref()
            .is_some_and(|r| r.starts_with("deadlocked"));
        let cause = match self.kill_reason.take() {
            Some(r) => format!("{r} ({})", death.cause),
            None => death.cause.clone(),
        };
        let in_flight = self.in_flight();
        let done = self.shared.requests_done();
        let progressed = done != self.progress_at_start;
        // Only a death the server brought on itself is evidence against a request: a
        // SIGKILL from outside (an operator, a test, a loaded machine's tooling) is not.
        if death.own_fault() || deadlocked {
            let common: Vec<Req> = in_flight
                .iter()
                .copied()
                .filter(|r| self.poison.suspects.contains(r))
                .collect();
            if self.poison.streak > 0 && !common.is_empty() {
                self.poison.suspects = common;
                self.poison.streak += 1;
            } else {
                self.poison.suspects = in_flight.clone();
                self.poison.streak = 1;
            }
            self.failures = if progressed { 1 } else { self.failures + 1 };
        } else if progressed {
            self.failures = 0;
        }
        if !self.poison.suspects.is_empty() && self.poison.streak >= self.a.max_failures {
            let req = describe(&self.poison.suspects[0]);
            self.give_up(format!(
                "file server died {} times in a row in the same request, {req}: the container's request kills it; last: {cause}",
                self.poison.streak
            ));
            return Some(Next::Exit(1));
        }
        if self.failures >= self.a.max_failures {
            self.give_up(format!(
                "file server failed {} times in a row on its own (crash or failure exit) without answering a request; last: {cause}",
                self.failures
            ));
            return Some(Next::Exit(1));
        }
        self.restarts += 1;
        tracing::warn!(cause = %cause, restarts = self.restarts, in_flight = in_flight.len(), "file server died; restarting it");
        self.reclaim_backing();
        self.last_error = Some(cause);
        if let Err(e) = self.spawn_server() {
            self.give_up(format!("could not restart the file server: {e}"));
            return Some(Next::Exit(1));
        }
        self.prepare_standby();
        self.write_state();
        None
    }

    /// Kills a server thread that sits in a request with no progress for the hang
    /// timeout while not waiting on I/O (state D): a deadlock, not a slow disk.
    pub(super) fn watchdog(&mut self) {
        // A stopped server that is not our child (no WSTOPPED reaches us): /proc says so.
        for pid in [self.standby_pid, self.server_pid] {
            if pid > 0 && proc::stopped(pid) {
                self.on_stopped(pid, "a stop signal");
            }
        }
        if self.server_pid <= 0 {
            return;
        }
        let now = Instant::now();
        for s in self.shared.slots() {
            if s.state != slot::WORKING {
                self.watch.remove(&s.tid);
                continue;
            }
            let e = self.watch.entry(s.tid).or_insert((s.seq, now));
            if e.0 != s.seq {
                *e = (s.seq, now);
                continue;
            }
            if now.duration_since(e.1) < self.a.hang_timeout.unwrap_or(DEFAULT_HANG_TIMEOUT) {
                continue;
            }
            let state =
                std::fs::read_to_string(format!("/proc/{}/task/{}/stat", self.server_pid, s.tid))
                    .ok()
                    .and_then(|t| porta_sys::proc::Stat::parse(&t).ok())
                    .map(|s| s.state);
            if state == Some('D') {
                continue;
            }
            let secs = now.duration_since(e.1).as_secs_f32();
            tracing::warn!(
                tid = s.tid,
                secs,
                "file server thread made no progress; killing the server"
            );
            self.kill_reason = Some(format!(
                "deadlocked: thread {} made no progress for {secs:.1} s",
                s.tid
            ));
            if let Some(fd) = &self.server_fd {
                proc::send(fd.as_fd(), libc::SIGKILL);
            }
            self.watch.clear();
            return;
        }
    }

    /// Answers the servers' queued passthrough backing requests (never blocks).
    pub(super) fn serve_backing(&mut self) {
        let (Some(b), Some(f)) = (self.broker.as_mut(), self.fuse.as_ref()) else {
            return;
        };
        b.serve(&mut FuseDevice(f.as_raw_fd()), 64);
        let msgs = b.take_translator_msgs();
        let sock = b.raw_fd();
        let mut started = false;
        for m in msgs {
            started |= self.translators.handle(sock, &m, self.container_pid);
        }
        if started {
            self.write_state();
        }
    }

    /// After the server died: drop what it left unanswered and the backing ids it had
    /// not recorded in the shared table (a kill between the registration and the record).
    fn reclaim_backing(&mut self) {
        let (Some(b), Some(f)) = (self.broker.as_mut(), self.fuse.as_ref()) else {
            return;
        };
        let recorded: std::collections::HashSet<i32> = self
            .shared
            .recorded_backing()
            .into_iter()
            .map(|(_, id)| id)
            .collect();
        b.server_died(&mut FuseDevice(f.as_raw_fd()), |id| recorded.contains(&id));
    }
}
