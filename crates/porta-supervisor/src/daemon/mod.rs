//! The supervisor daemon (`porta supervisor …`): one per container, single-threaded.
//!
//! This module holds its state and its loop; the parts of its work each have a module:
//! starting ([`launch`]), the keeper ([`keeper_link`]), the servers ([`servers`]), the
//! successor ([`takeover`]), the control socket ([`control`]), the grants served in the
//! container ([`grants`]) and the record of the servers ([`records`]).

mod api_link;
pub use api_link::bind as bind_api_socket;
mod control;
mod grants;
mod keeper_link;
mod launch;
mod records;
mod servers;
mod takeover;

use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signalfd::SignalFd;
use nix::unistd::Pid;

use porta_fs::shared::Shared;
use porta_protocol::supervisor::{LaunchReply, SupervisorArgs as Args};
use porta_protocol::Confinement;

use crate::backing::Broker;
use crate::proc::{self, pidfd_open, Death};
use crate::{Error, SOCKET_NAME};
use servers::Poison;

/// How long a request may make no progress before its server counts as deadlocked,
/// unless `--hang-timeout-ms` or `PORTA_HANG_TIMEOUT_MS` says otherwise.
const DEFAULT_HANG_TIMEOUT: Duration = Duration::from_secs(10);

/// The hang timeout `PORTA_HANG_TIMEOUT_MS` asks for, if any.
fn hang_timeout_from_env() -> Option<Duration> {
    std::env::var("PORTA_HANG_TIMEOUT_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map(Duration::from_millis)
}

/// Rootless: joins the container's user namespace (the user owns it, so it may) and gives
/// the supervisor a mount namespace of its own owned by it. There the kernel lets it open
/// /dev/fuse and make the FUSE mount (FS_USERNS_MOUNT), and write the identity maps of the
/// keeper's nested user namespace. Must run while the process is single-threaded.
fn join_container_userns(fd: RawFd) -> Result<(), Error> {
    // SAFETY: the launcher handed us this descriptor number; nothing else owns it.
    let ns = unsafe { OwnedFd::from_raw_fd(fd) };
    nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWUSER)
        .map_err(|e| Error::Sys("join the container's user namespace", e))?;
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).map_err(|e| {
        Error::Sys(
            "unshare mount namespace in the container's user namespace",
            e,
        )
    })
}

fn fork_and_leave_parent() -> Result<(), Error> {
    // SAFETY: called first thing in a single-threaded process; the parent only exits.
    match unsafe { nix::unistd::fork() }.map_err(|e| Error::Sys("fork", e))? {
        nix::unistd::ForkResult::Parent { .. } => {
            // SAFETY: leaves at once without running destructors or atexit handlers.
            unsafe { libc::_exit(0) }
        }
        nix::unistd::ForkResult::Child => Ok(()),
    }
}

/// Runs the supervisor; returns the exit code.
pub(crate) fn run(mut a: Args) -> i32 {
    if a.hang_timeout.is_none() {
        a.hang_timeout = Some(hang_timeout_from_env().unwrap_or(DEFAULT_HANG_TIMEOUT));
    }
    // Only stdio and these two stay open; failing to close leaves inherited descriptors
    // open, which costs nothing but table slots.
    let _ = porta_sys::fd::close_all_but(&[
        a.sock_fd,
        a.userns_fd.unwrap_or(-1),
        a.api_fd.unwrap_or(-1),
    ]);
    // SAFETY: the launcher handed us this descriptor number; nothing else owns it.
    let sock = unsafe { OwnedFd::from_raw_fd(a.sock_fd) };
    // Best effort, as every fcntl on our own descriptor: it cannot fail on a valid one.
    let _ = porta_sys::fd::set_cloexec(sock.as_raw_fd(), true);
    if !a.foreground {
        if let Err(e) = fork_and_leave_parent() {
            send_failure(&sock, &e);
            return 1;
        }
    }
    crate::init_logging();
    tracing::info!(id = %a.id, rootfs = %a.rootfs.display(), passthrough = a.passthrough, rootless = a.userns_fd.is_some(), "supervisor starting");
    if let Some(fd) = a.userns_fd {
        if let Err(e) = join_container_userns(fd) {
            tracing::error!(error = %e, "supervisor failed to start");
            send_failure(&sock, &e);
            return 1;
        }
    }
    let mut sv = match Supervisor::start(a, &sock) {
        Ok(sv) => sv,
        Err((e, partial)) => {
            tracing::error!(error = %e, "supervisor failed to start");
            send_failure(&sock, &e);
            if let Some(mut p) = partial {
                p.shutdown();
            }
            return 1;
        }
    };
    let mount = sv.mount.take();
    let msg = LaunchReply::Ready {
        pid: std::process::id() as i32,
    }
    .encode();
    let mount_fd = mount.as_ref().map(|m| m.as_raw_fd());
    if let Err(e) = porta_sys::scm::send(sock.as_raw_fd(), &msg, mount_fd.as_slice(), 0) {
        tracing::error!(error = %e, "could not hand the mount over; stopping");
        sv.shutdown();
        return 1;
    }
    // Keep our own reference: while we hold it the superblock lives, so the connection's
    // fusectl number stays ours and the abort path (give_up, shutdown) cannot hit another
    // container's connection.
    sv.mount = mount;
    drop(sock);
    // After the handover, so that `porta create` sets up the container meanwhile. The
    // twin first: from then on a keeper death (during the standby's set-up too) is
    // survived.
    sv.ensure_twin();
    sv.prepare_standby();
    // Off the critical path of `create` too: moving a process into a cgroup2 group waits
    // for the kernel (porta_cgroups::join).
    join_servers_cgroup(&sv.a.cgroup_procs);
    sv.write_state();
    let code = sv.run_loop();
    tracing::info!(code, "supervisor exiting");
    code
}

/// Tells the launcher why the supervisor could not start (best effort: it may be gone).
fn send_failure(sock: &OwnedFd, e: &Error) {
    let msg = LaunchReply::Failed(e.to_string()).encode();
    let _ = porta_sys::scm::send(sock.as_raw_fd(), &msg, &[], 0);
}

/// Moves the supervisor (single-threaded) into the servers' leaf of the container's cgroup
/// (`procs`: its `cgroup.procs` in each hierarchy): the supervisor does file-system work
/// for the container too — in passthrough mode it holds the backing registrations, so
/// the last reference of a file the container deleted may drop here, and the file's
/// eviction and truncation run in this process — and that work is the container's to pay
/// for, not the host's. No leaf (rootless without cgroups): nothing to do.
fn join_servers_cgroup(procs: &[PathBuf]) {
    if procs.is_empty() {
        return;
    }
    let cgroup2 = match porta_cgroups::join::Join::new(procs).and_then(|j| j.enter_v1()) {
        Ok(rest) => rest,
        Err(e) => {
            tracing::warn!(error = %e, "could not move the supervisor into the servers' cgroup leaf: its work for the container is charged to the host");
            return;
        }
    };
    let Some(cgroup2) = cgroup2 else {
        tracing::debug!("supervisor moved into the servers' cgroup leaf");
        return;
    };
    // The cgroup2 move waits for an RCU grace period (porta_cgroups::join): a helper
    // child makes it, so that the supervisor answers the servers' first backing requests
    // meanwhile (a container's first open waited ~10 ms for it). The child is reaped by
    // the event loop like any other.
    let me = std::process::id() as i32;
    // SAFETY: the supervisor is single-threaded; the child only writes one file and
    // ends with _exit.
    match unsafe { libc::fork() } {
        0 => {
            let code = match porta_cgroups::join::move_pid(&cgroup2, me) {
                Ok(()) => 0,
                Err(_) => 1,
            };
            // SAFETY: ends the helper child without running the parent's destructors.
            unsafe { libc::_exit(code) }
        }
        -1 => match porta_cgroups::join::move_pid(&cgroup2, me) {
            Ok(()) => tracing::debug!("supervisor moved into the servers' cgroup leaf"),
            Err(e) => {
                tracing::warn!(error = %e, "could not move the supervisor into the servers' cgroup2 leaf: its work for the container is charged to the host")
            }
        },
        pid => tracing::debug!(
            helper = pid,
            "supervisor moved into the servers' v1 leaves; a helper moves it in cgroup2"
        ),
    }
}

/// True if `pid` exists and is not a zombie.
pub(crate) fn pid_alive(pid: i32) -> bool {
    porta_sys::proc::Stat::of(pid).is_some_and(|s| s.state != 'Z')
}

struct Supervisor {
    a: Args,
    fuse: Option<OwnedFd>,
    mount: Option<OwnedFd>,
    _state_fd: OwnedFd,
    shared: Shared,
    ctl: Option<OwnedFd>,
    keeper_pid: i32,
    server_pid: i32,
    restarts: u64,
    failures: u32,
    progress_at_start: u64,
    last_error: Option<String>,
    kill_reason: Option<String>,
    failed: bool,
    listener: Option<UnixListener>,
    conn_id: u64,
    sigfd: SignalFd,
    watch: HashMap<u64, (u64, Instant)>,
    container: Option<OwnedFd>,
    standby_pid: i32,
    standby_failures: u32,
    /// The keeper's twin (a fork of the keeper, its child), which takes the keeper's place
    /// when it dies; its pidfd; how often twins died in a row.
    twin_pid: i32,
    twin_fd: Option<OwnedFd>,
    twin_failures: u32,
    /// How often a twin took the place of a dead keeper.
    keeper_takeovers: u64,
    /// Registers passthrough backing files for the servers (passthrough only) and
    /// carries their translator requests.
    broker: Option<Broker>,
    /// The translators the servers asked for.
    translators: crate::translators::Translators,
    /// Which confinement the servers run under.
    confinement: Confinement,
    last_watchdog: Instant,
    /// Pidfds of the keeper, the server and the standby: after a takeover they are not
    /// our children, and every signal goes through these.
    keeper_fd: Option<OwnedFd>,
    server_fd: Option<OwnedFd>,
    standby_fd: Option<OwnedFd>,
    /// This process's own pidfd: the successor it forks inherits it and waits on it.
    self_fd: Option<OwnedFd>,
    /// The successor (our child), waiting to take over when we die.
    successor: Option<(i32, OwnedFd)>,
    /// Sequence number of the last command sent to the keeper.
    seq: u32,
    /// The requests in flight at each of the last consecutive self-inflicted deaths.
    poison: Poison,
    /// The container's process (pid and start time), once `watch` named it.
    container_pid: i32,
    container_start: u64,
    /// How often a successor took over from a dead supervisor.
    takeovers: u64,
    /// In a successor whose supervisor died: its pid and how it died, for take_over.
    pending: Option<(i32, Death)>,
    /// Invalidates what the kernel cached of changes made from the host (`watch.rs`);
    /// None when switched off or unavailable (then `short_ttl`).
    host: Option<crate::watch::Watcher>,
    /// Servers answer with short timeouts: host changes are not watched.
    short_ttl: bool,
    /// Until when the host-change queue is left alone (see [`crate::watch::OWN_EVENTS_REST`]).
    host_rest_until: Option<Instant>,
    /// The container's API socket and its server (`--api`).
    api: api_link::ApiLink,
}

enum Next {
    Exit(i32),
}

impl Supervisor {
    fn run_loop(&mut self) -> i32 {
        if let Some(pid) = self.a.container_pid {
            self.container = pidfd_open(pid);
            self.container_pid = pid;
            self.container_start = porta_sys::proc::start_time(pid).unwrap_or(0);
        }
        self.self_fd = proc::pidfd_open(std::process::id() as i32);
        loop {
            // Before the successor is forked: it should know the twin.
            self.ensure_twin();
            self.ensure_api();
            // In a successor, returns only once its supervisor died: it takes over.
            self.ensure_successor();
            if let Some((dead, death)) = self.pending.take() {
                self.take_over(dead, death);
            }
            let container = self.container.take();
            let mut fds = vec![PollFd::new(self.sigfd.as_fd(), PollFlags::POLLIN)];
            if let Some(l) = &self.listener {
                fds.push(PollFd::new(l.as_fd(), PollFlags::POLLIN));
            }
            let cidx = fds.len();
            if let Some(c) = &container {
                fds.push(PollFd::new(c.as_fd(), PollFlags::POLLIN));
            }
            let bidx = fds.len();
            if let Some(b) = self.broker.as_ref().filter(|b| b.live()) {
                fds.push(PollFd::new(b.fd(), PollFlags::POLLIN));
            }
            let hidx = fds.len();
            // After a batch of the container's own events the queue rests a moment.
            let rest = self
                .host_rest_until
                .map(|t| t.saturating_duration_since(Instant::now()));
            let resting = rest.is_some_and(|r| !r.is_zero());
            let has_host = self.host.is_some() && !resting;
            if let Some(h) = self.host.as_ref().filter(|_| has_host) {
                fds.push(PollFd::new(h.fd(), PollFlags::POLLIN));
            }
            // Exits of processes that may not be our children (after a takeover).
            for fd in [
                &self.server_fd,
                &self.standby_fd,
                &self.keeper_fd,
                &self.twin_fd,
            ]
            .into_iter()
            .flatten()
            .chain(self.successor.as_ref().map(|(_, f)| f))
            {
                fds.push(PollFd::new(fd.as_fd(), PollFlags::POLLIN));
            }
            let wait_ms = match rest {
                Some(r) if resting => (r.as_millis() as u16).clamp(1, 250),
                _ => 250,
            };
            let polled = poll(&mut fds, PollTimeout::from(wait_ms));
            let ready = |i: usize| {
                fds.get(i)
                    .and_then(|f| f.revents())
                    .is_some_and(|r| !r.is_empty())
            };
            let container_gone = container.is_some() && ready(cidx);
            let backing = bidx < hidx && ready(bidx);
            let host = has_host && ready(hidx);
            // Anything but backing requests and host changes (or a timeout, or EINTR): do
            // the rest too.
            let others = match polled {
                // A timeout that only ends a rest of the host-change queue is not one.
                Ok(n) => (n == 0 && !resting) || n > i32::from(backing) + i32::from(host),
                Err(_) => true,
            };
            drop(fds);
            self.container = container;
            // Backing requests first: a server thread waits for each answer.
            if backing {
                self.serve_backing();
                // A successor forked before a grant's server started would not know it.
                if self.translators.take_changed() {
                    self.renew_successor();
                }
            }
            if host {
                let pids = [self.server_pid, self.standby_pid, self.keeper_pid];
                if let Some(h) = self.host.as_mut() {
                    let foreign = h.handle(&self.shared, &pids);
                    self.host_rest_until =
                        (!foreign).then(|| Instant::now() + crate::watch::OWN_EVENTS_REST);
                }
            }
            if !others && self.last_watchdog.elapsed() < Duration::from_millis(250) {
                continue;
            }
            while self.sigfd.read_signal().ok().flatten().is_some() {}
            if let Some(Next::Exit(code)) = self.reap() {
                return code;
            }
            if self.translators.reap() {
                self.restart_socket_relays();
                self.write_state();
            }
            if let Some(Next::Exit(code)) = self.serve_control() {
                return code;
            }
            if container_gone {
                tracing::info!("container process exited; stopping");
                self.shutdown();
                return 0;
            }
            self.last_watchdog = Instant::now();
            self.watchdog();
            if let Some(h) = self.host.as_mut() {
                h.flush();
            }
        }
    }

    /// Records a permanent failure, aborts the connection (processes using the mount get
    /// ENOTCONN instead of hanging) and stops.
    fn give_up(&mut self, msg: String) {
        tracing::error!(error = %msg, "giving up on the file server; aborting the connection");
        self.failed = true;
        self.last_error = Some(msg);
        self.shutdown();
    }

    /// Stops the successor, the servers and the keeper, aborts the connection, removes
    /// the socket.
    fn shutdown(&mut self) {
        // First: the mark's destruction then overlaps with what follows (see `unmark`).
        if let Some(host) = &self.host {
            host.unmark();
        }
        self.translators.kill_all();
        self.stop_api();
        // The successor first: it must not take over from a supervisor that stops.
        if let Some((pid, fd)) = self.successor.take() {
            proc::send(fd.as_fd(), libc::SIGKILL);
            let _ = nix::sys::wait::waitpid(Pid::from_raw(pid), None);
        }
        let procs = [
            (self.server_pid, self.server_fd.take()),
            (self.standby_pid, self.standby_fd.take()),
            (self.twin_pid, self.twin_fd.take()),
            (self.keeper_pid, self.keeper_fd.take()),
        ];
        for (_, fd) in &procs {
            if let Some(fd) = fd {
                proc::send(fd.as_fd(), libc::SIGKILL);
            }
        }
        for (pid, fd) in &procs {
            let Some(fd) = fd else { continue };
            // Our child: reap it. Not ours (after a takeover): wait for its exit.
            if nix::sys::wait::waitpid(Pid::from_raw(*pid), None).is_err()
                && !proc::wait_exit(fd.as_fd(), 10_000)
            {
                tracing::error!(pid, "did not die within 10 s of SIGKILL");
            }
        }
        self.server_pid = 0;
        self.standby_pid = 0;
        self.twin_pid = 0;
        self.keeper_pid = 0;
        // Abort only while our mount fd keeps the superblock alive: its device number (the
        // connection's fusectl name) cannot then belong to another container's connection.
        // Once the superblock is gone the number is free for reuse, and closing our
        // /dev/fuse descriptor ends the connection anyway.
        if self.mount.is_some() && self.fuse.is_some() && self.conn_id > 0 {
            abort_connection(self.conn_id);
        }
        self.ctl = None;
        self.broker = None;
        self.host = None;
        self.mount = None;
        self.fuse = None;
        if self.listener.take().is_some() {
            let _ = std::fs::remove_file(self.a.state_dir.join(SOCKET_NAME));
        }
        self.write_state();
    }
}

/// Aborts FUSE connection `conn` through the fusectl file system (mounted in a private
/// mount namespace of a short-lived child when the host has not mounted it). Best effort:
/// with every descriptor of the connection closed, the kernel aborts it anyway.
fn abort_connection(conn: u64) {
    let path = format!("/sys/fs/fuse/connections/{conn}/abort");
    if std::fs::write(&path, "1").is_ok() {
        return;
    }
    // SAFETY: the supervisor is single-threaded; the child only makes system calls and exits.
    match unsafe { nix::unistd::fork() } {
        Ok(nix::unistd::ForkResult::Child) => {
            let ok = nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).is_ok()
                && nix::mount::mount(
                    None::<&str>,
                    "/",
                    None::<&str>,
                    nix::mount::MsFlags::MS_REC | nix::mount::MsFlags::MS_PRIVATE,
                    None::<&str>,
                )
                .is_ok()
                && nix::mount::mount(
                    Some("fusectl"),
                    "/sys/fs/fuse/connections",
                    Some("fusectl"),
                    nix::mount::MsFlags::empty(),
                    None::<&str>,
                )
                .is_ok()
                && std::fs::write(&path, "1").is_ok();
            // SAFETY: leaves the child at once.
            unsafe { libc::_exit(if ok { 0 } else { 1 }) }
        }
        Ok(nix::unistd::ForkResult::Parent { child }) => {
            let _ = nix::sys::wait::waitpid(child, None);
        }
        Err(_) => {}
    }
}
