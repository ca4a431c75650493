//! The supervisor daemon (`porta supervisor …`): one per container, single-threaded.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitid, Id, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use porta_fs::shared::{hdr, slot, Shared};

use crate::backing::{Broker, FuseDevice};
use crate::proc::{self, pidfd_open, Death};
use crate::{fdpass, Error, ServerStatus, SupervisorState, SERVERS_FILE, SOCKET_NAME};
use porta_protocol::keeper::{
    Answer, Command as KeeperCommand, CommandKind, Hello, KeeperArgs, MapsReply, Outcome,
};
use porta_protocol::supervisor::{
    ControlReply, ControlRequest, LaunchReply, SupervisorArgs as Args,
};
use porta_protocol::Confinement;

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

fn close_all_but(keep: &[RawFd]) {
    let mut keep: Vec<RawFd> = keep.iter().copied().filter(|&fd| fd > 2).collect();
    keep.sort_unstable();
    let mut from = 3;
    for fd in keep {
        if fd > from {
            // SAFETY: closing descriptors this fresh process inherited and does not use.
            unsafe { libc::syscall(libc::SYS_close_range, from, fd - 1, 0) };
        }
        from = fd + 1;
    }
    // SAFETY: as above; only stdio and `keep` stay open.
    unsafe { libc::syscall(libc::SYS_close_range, from, u32::MAX, 0) };
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
    close_all_but(&[a.sock_fd, a.userns_fd.unwrap_or(-1)]);
    // SAFETY: the launcher handed us this descriptor number; nothing else owns it.
    let sock = unsafe { OwnedFd::from_raw_fd(a.sock_fd) };
    set_cloexec(sock.as_raw_fd(), true);
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
    let mut sv = match Supervisor::start(a) {
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
    if let Err(e) = fdpass::send_with_fd(
        sock.as_raw_fd(),
        &msg,
        mount.as_ref().map(|m| m.as_raw_fd()),
    ) {
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
    let _ = fdpass::send_with_fd(sock.as_raw_fd(), &msg, None);
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
    match porta_cgroups::join::Join::new(procs).and_then(|j| j.enter(false)) {
        Ok(()) => tracing::debug!("supervisor moved into the servers' cgroup leaf"),
        Err(e) => {
            tracing::warn!(error = %e, "could not move the supervisor into the servers' cgroup leaf: its work for the container is charged to the host")
        }
    }
}

/// Forks into the cgroup leaf of `join` and execs `cmd` there, as `Command::spawn` would;
/// returns the child's pid once it has exec'd, or what went wrong in the child (joining
/// the leaf, or the exec). The supervisor is single-threaded, as forking requires.
fn spawn_joined(cmd: &mut Command, join: porta_cgroups::join::Join) -> Result<i32, Error> {
    use porta_cgroups::join::Forked;
    use std::io::Read;
    use std::os::unix::process::CommandExt;
    let (rd, wr) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| Error::Sys("pipe", e))?;
    match join
        .fork(0)
        .map_err(|e| Error::Io("fork the file-server keeper", e))?
    {
        Forked::Child { cloned_into } => {
            drop(rd);
            let msg = match join.enter(cloned_into) {
                Err(e) => e.to_string(),
                // Returns only when the exec failed.
                Ok(()) => {
                    let e = cmd.exec();
                    format!("exec {:?}: {e}", cmd.get_program())
                }
            };
            let _ = nix::unistd::write(&wr, msg.as_bytes());
            // SAFETY: ends the forked child without running the parent's exit handlers.
            unsafe { libc::_exit(127) }
        }
        Forked::Parent(pid) => {
            drop(join);
            drop(wr);
            let mut msg = Vec::new();
            // EOF when the child's exec closed the write end.
            let _ = std::fs::File::from(rd).read_to_end(&mut msg);
            if msg.is_empty() {
                return Ok(pid);
            }
            let _ = nix::sys::wait::waitpid(Pid::from_raw(pid), None);
            Err(Error::Io(
                "start the file-server keeper",
                std::io::Error::other(String::from_utf8_lossy(&msg).into_owned()),
            ))
        }
    }
}

fn set_cloexec(fd: RawFd, on: bool) {
    // SAFETY: plain fcntl on a descriptor we own.
    unsafe {
        let fl = libc::fcntl(fd, libc::F_GETFD);
        if fl >= 0 {
            let nfl = if on {
                fl | libc::FD_CLOEXEC
            } else {
                fl & !libc::FD_CLOEXEC
            };
            libc::fcntl(fd, libc::F_SETFD, nfl);
        }
    }
}

/// True if `pid` exists and is not a zombie.
pub fn pid_alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => proc::stat_state(&s) != Some('Z'),
        Err(_) => false,
    }
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
    /// Registers passthrough backing files for the servers (passthrough only).
    broker: Option<Broker>,
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
}

/// A FUSE request as a server's slot shows it: opcode, request id (without the kernel's
/// resend bit), node id.
type Req = (u32, u64, u64);

/// Evidence that a request kills the servers: the requests in flight at every one of the
/// last `streak` consecutive self-inflicted deaths (crash, abort, forbidden system call,
/// failure exit, deadlock).
#[derive(Debug, Clone, Default)]
struct Poison {
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

enum Next {
    Exit(i32),
}

impl Supervisor {
    fn start(a: Args) -> Result<Supervisor, (Error, Option<Box<Supervisor>>)> {
        let mut mask = SigSet::empty();
        mask.add(Signal::SIGCHLD);
        mask.thread_block()
            .map_err(|e| (Error::Sys("block SIGCHLD", e), None))?;
        let sigfd = SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
            .map_err(|e| (Error::Sys("signalfd", e), None))?;
        let capacity = raise_nofile();
        let fuse = porta_fs::mount::open_dev_fuse().map_err(|e| (e.into(), None))?;
        let opts = porta_fs::mount::MountOptions {
            source: format!("porta-{}", a.id),
            ..Default::default()
        };
        let mount =
            porta_fs::mount::fsmount_fuse(fuse.as_raw_fd(), &opts).map_err(|e| (e.into(), None))?;
        let conn_id = 0;
        let state_fd = porta_fs::shared::create_memfd(capacity).map_err(|e| (e.into(), None))?;
        let shared = Shared::map(state_fd.as_raw_fd()).map_err(|e| (e.into(), None))?;
        let (host, short_ttl) =
            crate::watch::start_for(a.host_changes, &a.rootfs, fuse.as_raw_fd(), &a.cgroup_procs);
        let mut sv = Supervisor {
            a,
            fuse: Some(fuse),
            mount: Some(mount),
            _state_fd: state_fd,
            shared,
            ctl: None,
            keeper_pid: 0,
            server_pid: 0,
            restarts: 0,
            failures: 0,
            progress_at_start: 0,
            last_error: None,
            kill_reason: None,
            failed: false,
            listener: None,
            conn_id,
            sigfd,
            watch: HashMap::new(),
            container: None,
            standby_pid: 0,
            standby_failures: 0,
            twin_pid: 0,
            twin_fd: None,
            twin_failures: 0,
            keeper_takeovers: 0,
            broker: None,
            confinement: Confinement::Unknown,
            last_watchdog: Instant::now(),
            keeper_fd: None,
            server_fd: None,
            standby_fd: None,
            self_fd: None,
            successor: None,
            seq: 0,
            poison: Poison::default(),
            container_pid: 0,
            container_start: 0,
            takeovers: 0,
            pending: None,
            host,
            short_ttl,
            host_rest_until: None,
        };
        if let Err(e) = sv.start_rest() {
            return Err((e, Some(Box::new(sv))));
        }
        Ok(sv)
    }

    fn start_rest(&mut self) -> Result<(), Error> {
        self.spawn_keeper()?;
        let sock = self.a.state_dir.join(SOCKET_NAME);
        let _ = std::fs::remove_file(&sock);
        let l = crate::socket_path(&self.a.state_dir, SOCKET_NAME)
            .and_then(|(p, _keep)| UnixListener::bind(p))
            .map_err(|e| Error::Path {
                what: "bind control socket",
                path: sock.clone(),
                source: e,
            })?;
        l.set_nonblocking(true)
            .map_err(|e| Error::Io("control socket", e))?;
        self.listener = Some(l);
        self.spawn_server()?;
        // The kernel queued INIT when the superblock was made; wait for the answer so
        // the mount is served before anyone uses it.
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.shared.hdr(hdr::INITIALIZED).load(Ordering::Acquire) == 0 {
            if Instant::now() > deadline {
                return Err(Error::Timeout(
                    "see the file server answer INIT",
                    Duration::from_secs(10),
                ));
            }
            if let Some(Next::Exit(_)) = self.reap() {
                return Err(Error::Start {
                    id: self.a.id.clone(),
                    msg: format!(
                        "file server died during INIT: {}",
                        self.last_error.clone().unwrap_or_default()
                    ),
                    log: PathBuf::new(),
                });
            }
            // A fresh server answers INIT within a millisecond or two, on the critical
            // path of `porta create`: look often.
            std::thread::sleep(Duration::from_micros(100));
        }
        // The connection's number (for its fusectl abort file) is the minor of the
        // superblock's device; fstat would wait for INIT, so ask only now.
        if let Some(m) = &self.mount {
            self.conn_id = nix::sys::stat::fstat(m.as_raw_fd())
                .map(|st| libc::minor(st.st_dev) as u64)
                .unwrap_or(0);
        }
        // Before the handover: callers of `launch` read it at once.
        self.write_state();
        Ok(())
    }

    /// Starts the keeper, in a user namespace of its own when the machine has them
    /// (`PORTA_FS_USERNS=0` switches that off), else in the initial one with a warning.
    fn spawn_keeper(&mut self) -> Result<(), Error> {
        let userns = std::env::var("PORTA_FS_USERNS").map_or(true, |v| v != "0" && v != "off");
        match self.spawn_keeper_once(userns) {
            Err(Error::Refused(why)) if userns => {
                tracing::warn!(error = %why, "could not map the file server's user namespace; starting it in the initial user namespace instead");
                self.stop_keeper();
                self.spawn_keeper_once(false)
            }
            r => r,
        }
    }

    fn stop_keeper(&mut self) {
        if let Some(fd) = self.keeper_fd.take() {
            proc::send(fd.as_fd(), libc::SIGKILL);
            let _ = nix::sys::wait::waitpid(Pid::from_raw(self.keeper_pid), None);
        }
        self.keeper_pid = 0;
        self.ctl = None;
        self.broker = None;
    }

    fn spawn_keeper_once(&mut self, userns: bool) -> Result<(), Error> {
        let fuse = self.fuse.as_ref().map(|f| f.as_raw_fd()).unwrap_or(-1);
        let state = self._state_fd.as_raw_fd();
        let seqpacket = || {
            nix::sys::socket::socketpair(
                nix::sys::socket::AddressFamily::Unix,
                nix::sys::socket::SockType::SeqPacket,
                None,
                nix::sys::socket::SockFlag::SOCK_CLOEXEC,
            )
            .map_err(|e| Error::Sys("socketpair", e))
        };
        let (ours, theirs) = seqpacket()?;
        let backing = if self.a.passthrough {
            Some(seqpacket()?)
        } else {
            None
        };
        let mut args = KeeperArgs::new(fuse, state, theirs.as_raw_fd(), self.a.rootfs.clone());
        args.threads = self.a.threads;
        args.userns = userns;
        let mut inherit = vec![fuse, state, theirs.as_raw_fd()];
        // The keeper confines its servers beneath the root recorded here, and gives them a
        // procfs of their own (process directories only) instead of the host's.
        let root_st = nix::sys::stat::stat(&self.a.rootfs).map_err(|e| Error::Path {
            what: "stat the container's root",
            path: self.a.rootfs.clone(),
            source: e.into(),
        })?;
        args.root_id = Some((root_st.st_dev, root_st.st_ino));
        let procfs = match porta_fs::mount::procfs_instance() {
            Ok(p) => Some(p),
            Err(e) => {
                tracing::info!(error = %e, "no procfs instance for the file server (it gets a copy of this process's /proc mount)");
                None
            }
        };
        if let Some(p) = &procfs {
            args.proc_fd = Some(p.as_raw_fd());
            inherit.push(p.as_raw_fd());
        }
        if let Some((_, b)) = &backing {
            args.passthrough = true;
            args.backing_fd = Some(b.as_raw_fd());
            inherit.push(b.as_raw_fd());
        }
        if self.short_ttl {
            args.ttl = Duration::from_secs(crate::watch::SHORT_TTL_SECS);
        }
        let mut cmd = Command::new("/proc/self/exe");
        cmd.args(porta_protocol::keeper::SUBCOMMAND)
            .args(args.to_argv())
            .stdin(Stdio::null());
        // The keeper (and so every server it forks) starts in the servers' leaf: no
        // migration, which would wait for the kernel (porta_cgroups::join).
        let join = porta_cgroups::join::Join::new(&self.a.cgroup_procs)?;
        for fd in &inherit {
            set_cloexec(*fd, false);
        }
        let child = spawn_joined(&mut cmd, join);
        for fd in &inherit {
            set_cloexec(*fd, true);
        }
        self.keeper_pid = child?;
        // Our child, not reaped yet: the pid is still the keeper's.
        self.keeper_fd = proc::pidfd_open(self.keeper_pid);
        drop(theirs);
        self.ctl = Some(ours);
        self.broker = backing.map(|(b, _theirs)| Broker::new(b, self.shared.capacity()));
        let pid = self.keeper_pid;
        // -1000 needs CAP_SYS_RESOURCE; without it the server keeps the supervisor's value.
        if let Err(e) = std::fs::write(format!("/proc/{pid}/oom_score_adj"), "-1000") {
            // Rootless, that is expected: the server keeps the supervisor's value.
            if self.a.userns_fd.is_some() {
                tracing::debug!(pid, error = %e, "rootless: oom_score_adj of the file server not lowered");
            } else {
                tracing::warn!(pid, error = %e, "could not set oom_score_adj -1000 for the file server (CAP_SYS_RESOURCE missing?)");
            }
        }
        self.keeper_hello(pid)?;
        tracing::info!(pid, confinement = %self.confinement, "file-server keeper started");
        Ok(())
    }

    /// The keeper's first message: it is in a new user namespace (write its identity maps
    /// and answer), has none (the servers run in the initial user namespace), or is not
    /// confined. Error::Refused when the maps cannot be written.
    fn keeper_hello(&mut self, pid: i32) -> Result<(), Error> {
        let ctl = self.ctl.as_ref().ok_or(Error::NoKeeper)?.as_raw_fd();
        // SAFETY: `ctl` is our open socket, borrowed for the poll only.
        let bfd = unsafe { std::os::fd::BorrowedFd::borrow_raw(ctl) };
        let mut fds = [PollFd::new(bfd, PollFlags::POLLIN)];
        let n = poll(&mut fds, PollTimeout::from(10_000u16)).unwrap_or(0);
        if n == 0 {
            return Err(Error::Timeout(
                "hear from the file-server keeper",
                Duration::from_secs(10),
            ));
        }
        let mut b = [0u8; 32];
        let n = porta_fs::sys::read(ctl, &mut b)
            .map_err(|e| Error::Sys("read keeper hello", nix::errno::Errno::from_raw(e)))?;
        if n == 0 {
            return Err(Error::Start {
                id: self.a.id.clone(),
                msg: "the file-server keeper exited at once (see the supervisor log)".into(),
                log: PathBuf::new(),
            });
        }
        let hello = Hello::decode(&b[..n]).map_err(|e| Error::Start {
            id: self.a.id.clone(),
            msg: format!("file-server keeper: unexpected first message: {e}"),
            log: PathBuf::new(),
        })?;
        match hello {
            Hello::Userns => match write_identity_maps(pid) {
                Ok(()) => {
                    porta_fs::sys::write(ctl, &MapsReply::Written.encode())
                        .map_err(|e| Error::Sys("answer keeper", nix::errno::Errno::from_raw(e)))?;
                    tracing::info!("file server confinement: identity-mapped user namespace owning a mount namespace with only the backing directory; no global capabilities");
                }
                Err(e) => {
                    let _ = porta_fs::sys::write(ctl, &MapsReply::Failed.encode());
                    return Err(Error::Refused(e.to_string()));
                }
            },
            Hello::Root(errno) => {
                let why = if errno == 0 {
                    "switched off (PORTA_FS_USERNS=0)".to_string()
                } else {
                    format!("unavailable: {}", std::io::Error::from_raw_os_error(errno))
                };
                tracing::warn!("file server confinement: user namespaces {why}; the file server runs as root of the initial user namespace (global CAP_CHOWN, CAP_DAC_OVERRIDE, CAP_FOWNER, CAP_FSETID, CAP_SETFCAP), in its own mount namespace, with Landlock and seccomp");
            }
            Hello::Unconfined => {
                tracing::warn!("file server confinement: none (--no-confine)");
            }
        }
        self.confinement = hello.confinement();
        Ok(())
    }

    /// Sends one command to the keeper and reads its answer: the pid of a process it
    /// started (checked, with a pidfd of it), or (0, None) for [`CommandKind::Sync`].
    /// When the keeper dies before it answers, its twin takes its place
    /// ([`Self::replace_keeper`]) and the command goes to the twin.
    fn keeper_request(&mut self, kind: CommandKind) -> Result<(i32, Option<OwnedFd>), Error> {
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
        for _ in 0..64 {
            // SAFETY: `ctl` is our open socket, borrowed for the poll only.
            let bfd = unsafe { std::os::fd::BorrowedFd::borrow_raw(ctl) };
            let mut fds = vec![PollFd::new(bfd, PollFlags::POLLIN)];
            if let Some(k) = &self.keeper_fd {
                fds.push(PollFd::new(k.as_fd(), PollFlags::POLLIN));
            }
            let n = poll(&mut fds, PollTimeout::from(5_000u16)).unwrap_or(0);
            let answered = fds[0].revents().is_some_and(|r| !r.is_empty());
            drop(fds);
            if n <= 0 {
                return Err(Error::Timeout(
                    "hear the keeper's answer",
                    Duration::from_secs(5),
                ));
            }
            if !answered {
                return Err(Error::Refused(
                    "the file-server keeper died before it answered".into(),
                ));
            }
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
    fn keeper_gone(&self) -> bool {
        self.keeper_fd
            .as_ref()
            .is_none_or(|k| proc::exited(k.as_fd()))
    }

    /// How the keeper we know died, for the record.
    fn keeper_death_cause(&self) -> String {
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
    fn replace_keeper(&mut self, cause: &str) -> Result<(), Error> {
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
        let twin_alive = twin_fd.as_ref().is_some_and(|f| !proc::exited(f.as_fd()));
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
                        && f.as_ref().is_some_and(|f| !proc::exited(f.as_fd()))
                        && proc::share_files(k, p)
                })
        };
        if !known || proc::exited(kfd.as_fd()) {
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
    fn stop_servers_but(&self, keep: i32) -> usize {
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

    /// Stops the successor, whose copy of this process is out of date (it knows a dead
    /// keeper, or not the twin): the next loop forks a new one.
    fn refresh_successor(&mut self) {
        if let Some((pid, fd)) = self.successor.take() {
            proc::send(fd.as_fd(), libc::SIGKILL);
            let _ = nix::sys::wait::waitpid(Pid::from_raw(pid), None);
        }
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
        if pid == self.keeper_pid || proc::exited(keeper) {
            return None;
        }
        let fd = proc::pidfd_open(pid)?;
        if !proc::share_files(self.keeper_pid, pid)
            || proc::exited(fd.as_fd())
            || proc::exited(keeper)
        {
            return None;
        }
        Some(fd)
    }

    /// Forks the keeper's twin unless one lives (or twins keep dying).
    fn ensure_twin(&mut self) {
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

    /// Pre-forks a standby server (set up and confined, waiting to be woken), unless
    /// standbys keep dying.
    fn prepare_standby(&mut self) {
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

    fn spawn_server(&mut self) -> Result<(), Error> {
        for i in 0..hdr::MAX_SLOTS {
            if let Some(s) = self.shared.slot(i) {
                for w in s {
                    w.store(0, Ordering::Relaxed);
                }
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

    /// Forks the successor unless one waits: a copy of this process holding every
    /// descriptor that matters (the FUSE device, the mount, the state memfd, the control
    /// socket's listener, the keeper's socket and pidfd, the backing broker's socket),
    /// which waits for this process to die. Returns in the child only once this process
    /// died, with `pending` set: the caller then takes over.
    fn ensure_successor(&mut self) {
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
    fn take_over(&mut self, mut dead: i32, mut death: Death) {
        // Forks the successor first; in that successor, should this process die before
        // the takeover is done, the loop starts the takeover again from the beginning.
        // This copy's idea of the servers is as old as the fork: the sweep below finds
        // the ones there are.
        self.server_pid = 0;
        self.server_fd = None;
        self.standby_pid = 0;
        self.standby_fd = None;
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

    fn run_loop(&mut self) -> i32 {
        if let Some(pid) = self.a.container_pid {
            self.container = pidfd_open(pid);
            self.container_pid = pid;
            self.container_start = proc::start_time(pid).unwrap_or(0);
        }
        self.self_fd = proc::pidfd_open(std::process::id() as i32);
        loop {
            // Before the successor is forked: it should know the twin.
            self.ensure_twin();
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

    /// Answers the servers' queued passthrough backing requests (never blocks).
    fn serve_backing(&mut self) {
        let (Some(b), Some(f)) = (self.broker.as_mut(), self.fuse.as_ref()) else {
            return;
        };
        b.serve(&mut FuseDevice(f.as_raw_fd()), 64);
    }

    /// After the server died: drop what it left unanswered and the backing ids it had
    /// not recorded in the shared table (a kill between the registration and the record).
    fn reclaim_backing(&mut self) {
        let (Some(b), Some(f)) = (self.broker.as_mut(), self.fuse.as_ref()) else {
            return;
        };
        let shared = self.shared;
        b.server_died(&mut FuseDevice(f.as_raw_fd()), |node| {
            shared.backing_of(node)
        });
    }

    /// Reaps children and notices the exits of the keeper and servers (children or not);
    /// restarts the server or decides to stop.
    fn reap(&mut self) -> Option<Next> {
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
            let Some(fd) = fd.as_ref().filter(|f| proc::exited(f.as_fd())) else {
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
            let Some(s) = self.shared.slot(i) else {
                continue;
            };
            if s[0].load(Ordering::Acquire) != slot::WORKING || s[2].load(Ordering::Acquire) == 0 {
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
    fn watchdog(&mut self) {
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
                    .and_then(|t| proc::stat_state(&t));
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

    fn serve_control(&mut self) -> Option<Next> {
        let l = self.listener.as_ref()?;
        let (mut conn, _) = l.accept().ok()?;
        let _ = conn.set_nonblocking(false);
        let _ = conn.set_read_timeout(Some(Duration::from_secs(1)));
        let mut buf = [0u8; ControlRequest::MAX_LEN];
        let n = conn.read(&mut buf).unwrap_or(0);
        let request = match ControlRequest::decode(&buf[..n]) {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(error = %e, "refused a request on the control socket");
                let _ = conn.write_all(ControlReply::UnknownRequest.encode());
                return None;
            }
        };
        match request {
            ControlRequest::Stop => {
                tracing::info!("stop requested");
                self.shutdown();
                let _ = conn.write_all(ControlReply::Ok.encode());
                Some(Next::Exit(0))
            }
            ControlRequest::Watch(pid) => {
                match pidfd_open(pid) {
                    Some(fd) => {
                        tracing::info!(pid, "watching the container's process");
                        self.container_pid = pid;
                        self.container_start = proc::start_time(self.container_pid).unwrap_or(0);
                        self.container = Some(fd);
                        // Recorded for a successor, which reopens it after a takeover.
                        self.write_state();
                        let _ = conn.write_all(ControlReply::Ok.encode());
                    }
                    None => {
                        let _ = conn.write_all(ControlReply::NoSuchProcess.encode());
                    }
                }
                None
            }
            ControlRequest::Status => {
                let _ = conn.write_all(&self.state().encode());
                None
            }
        }
    }

    fn state(&self) -> SupervisorState {
        let me = std::process::id() as i32;
        let successor = self.successor.as_ref().map_or(0, |(p, _)| *p);
        SupervisorState {
            supervisor_pid: me,
            supervisor_start: proc::start_time(me).unwrap_or(0),
            successor_pid: successor,
            successor_start: proc::start_time(successor).unwrap_or(0),
            container_pid: self.container_pid,
            container_start: self.container_start,
            takeovers: self.takeovers,
            keeper_pid: self.keeper_pid,
            twin_pid: self.twin_pid,
            keeper_takeovers: self.keeper_takeovers,
            standby_pid: self.standby_pid,
            servers: vec![ServerStatus {
                name: "fs".into(),
                pid: self.server_pid,
                start_time: proc::start_time(self.server_pid).unwrap_or(0),
                restarts: self.restarts,
                state: if self.failed {
                    "failed".into()
                } else if self.server_pid > 0 {
                    "running".into()
                } else if self.listener.is_some() {
                    // Between a death and the replacement.
                    "restarting".into()
                } else {
                    "stopped".into()
                },
                error: self.last_error.clone(),
                confinement: self.confinement,
            }],
        }
    }

    fn write_state(&self) {
        let p = self.a.state_dir.join(SERVERS_FILE);
        let tmp = self.a.state_dir.join(format!(".{SERVERS_FILE}.tmp"));
        let body = self.state().encode();
        let r = std::fs::File::create(&tmp)
            // No fsync: the file describes processes, which do not outlive a crash.
            .and_then(|mut f| f.write_all(&body))
            .and_then(|_| std::fs::rename(&tmp, &p));
        if let Err(e) = r {
            tracing::error!(error = %e, path = %p.display(), "could not record the servers' state");
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

/// The identity over this process's own id map, as `uid_map`/`gid_map` take it: every
/// range valid here mapped onto itself ("0 0 4294967295" in the initial user namespace).
fn identity_map(own: &str) -> String {
    own.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            let first: u64 = w.next()?.parse().ok()?;
            let _lower = w.next()?;
            let count: u64 = w.next()?.parse().ok()?;
            Some(format!("{first} {first} {count}\n"))
        })
        .collect()
}

/// Writes the identity uid and gid maps of the keeper `pid`, which just entered a new
/// user namespace (needs CAP_SETUID and CAP_SETGID here).
fn write_identity_maps(pid: i32) -> std::io::Result<()> {
    for f in ["uid_map", "gid_map"] {
        let own = std::fs::read_to_string(format!("/proc/self/{f}"))?;
        let map = identity_map(&own);
        std::fs::write(format!("/proc/{pid}/{f}"), &map).map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("write /proc/{pid}/{f} ({}): {e}", map.trim()),
            )
        })?;
    }
    Ok(())
}

/// Descriptor limit the supervisor asks for (systemd's default hard limit): the file
/// server holds one descriptor per node the kernel caches, so this bounds how much of a
/// container's tree stays cached on the FUSE side (the node budget, see porta_fs::evict).
const WANT_NOFILE: u64 = 1 << 19;

/// Raises RLIMIT_NOFILE for the supervisor and the servers it starts: the hard limit up to
/// [`WANT_NOFILE`] (capped by fs.nr_open) where the host allows it (CAP_SYS_RESOURCE),
/// else the soft limit up to the hard one. Returns the soft limit in force, the size of
/// the shared node table.
fn raise_nofile() -> usize {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `rl` is a valid out-pointer.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) };
    let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(1 << 20);
    let want = WANT_NOFILE.min(nr_open);
    if rl.rlim_max < want {
        let raised = libc::rlimit {
            rlim_cur: want,
            rlim_max: want,
        };
        // SAFETY: valid rlimit pointer.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            tracing::debug!(
                hard = rl.rlim_max,
                want,
                "cannot raise the descriptor hard limit (no CAP_SYS_RESOURCE): the file server's node table stays within it"
            );
        }
    }
    // SAFETY: valid rlimit pointers.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl);
        rl.rlim_cur = rl.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &rl);
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl);
    }
    (rl.rlim_cur as usize).clamp(1024, 1 << 20)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_of_the_initial_and_of_a_nested_map() {
        assert_eq!(
            identity_map("         0          0 4294967295\n"),
            "0 0 4294967295\n"
        );
        assert_eq!(
            identity_map("0 100000 65536\n65536 5000 1\nbogus\n"),
            "0 0 65536\n65536 65536 1\n"
        );
    }
}
