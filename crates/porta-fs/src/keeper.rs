//! The keeper: a tiny process that owns the fd table the file servers share.
//!
//! The supervisor starts it (as `porta fs keeper …`) with the FUSE connection and the
//! state memfd. On each request from the supervisor it creates a server with
//! `clone(CLONE_FILES | CLONE_PARENT)`: the server shares the keeper's descriptor table
//! (so node and file descriptors survive the server's death) and is the supervisor's
//! child (so the supervisor reaps it and sees it stop with waitid(WSTOPPED)).
//!
//! Neither the keeper nor an active server dies with the supervisor (no parent-death
//! signal): the supervisor's successor adopts them. A command carries a sequence number
//! that its answer echoes, so a supervisor taking over tells the answers to its own
//! commands from the ones its dead predecessor left unread. A standby server ends when
//! every supervisor has closed the control socket (it sees the hang-up).
//!
//! The keeper can die too: its *twin* ([`CommandKind::Twin`]), a fork of it sharing the same
//! descriptor table and confinement, waits for the keeper's death (a parent-death signal,
//! checked against `getppid`) and then goes on reading the same control socket as the
//! keeper. Every answer carries the answering keeper's pid, so the supervisor learns who
//! took over from the first answer after the death.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use crate::server::{serve, Config, Exit};
use crate::shared::{hdr, Shared};
use crate::{sys, Error};

/// Descriptors the keeper's table holds from the start (8 bytes of kernel memory each):
/// enough for the nodes of most containers without growing the table while servers share
/// it ([`sys::grow_fd_table`]).
pub const FD_TABLE_AT_START: usize = 16384;

pub use porta_protocol::keeper::KeeperArgs;
use porta_protocol::keeper::{Answer, Command, CommandKind, Hello, MapsReply, Outcome};
use porta_protocol::server::{EXIT_FAILED, EXIT_UNMOUNTED};

/// Enters a new user namespace and has the supervisor (on the control socket) write its
/// identity maps; tells the supervisor when there is none (then the servers run in the
/// initial user namespace). Returns whether the keeper is in a new user namespace.
fn enter_user_namespace(args: &KeeperArgs) -> Result<bool, Error> {
    let hello = |msg: Hello| {
        sys::write(args.ctl_fd, &msg.encode())
            .map(|_| ())
            .map_err(|e| Error::Sys("keeper: hello", nix::errno::Errno::from_raw(e)))
    };
    if args.no_confine {
        hello(Hello::Unconfined)?;
        return Ok(false);
    }
    if !args.userns {
        hello(Hello::Root(0))?;
        return Ok(false);
    }
    if let Err(e) = crate::confine::unshare_user_namespace() {
        hello(Hello::Root(e as i32))?;
        return Ok(false);
    }
    hello(Hello::Userns)?;
    let mut b = [0u8; 4];
    loop {
        match sys::read(args.ctl_fd, &mut b) {
            Ok(n) if MapsReply::decode(&b[..n]) == Ok(MapsReply::Written) => break,
            Err(libc::EINTR) => continue,
            Ok(_) => {
                return Err(Error::BadState(
                    "the supervisor could not map the user namespace".into(),
                ))
            }
            Err(e) => {
                return Err(Error::Sys(
                    "keeper: wait for the id maps",
                    nix::errno::Errno::from_raw(e),
                ))
            }
        }
    }
    Ok(true)
}

/// Runs the keeper until the supervisor closes the control socket.
pub fn run_keeper(args: &KeeperArgs) -> Result<(), Error> {
    let userns = enter_user_namespace(args)?;
    let shared = Shared::map(args.state_fd)?;
    // The io_uring buffers: mapped shared here, before any server is forked, so every
    // server (and a twin) has them at the same address and a new server can answer what
    // a killed one took from its rings (see server::uring).
    let rings = match args.transport {
        crate::Transport::Dev => None,
        _ => Some(crate::RingArea::map(crate::server::uring::possible_cpus()?)?),
    };
    match sys::keep_caps_on_fsuid_change() {
        Ok(()) => crate::server::enable_create_as_caller(),
        Err(e) => tracing::warn!(
            errno = e,
            "cannot keep capabilities across a file-system id change: files are created as \
             the server, then chowned (an idmapped backing mount not mapping its id refuses that)"
        ),
    }
    // The servers inherit this process's limits: raise the soft descriptor limit to the
    // hard one and record it for them (the node budget derives from it; a confined server
    // cannot ask for it).
    match porta_sys::rlimit::raise_nofile(0) {
        Ok(n) => shared.hdr(hdr::NOFILE).store(
            n.soft.min(nofile_cap()),
            std::sync::atomic::Ordering::Relaxed,
        ),
        Err(e) => tracing::warn!(error = %e, "could not read RLIMIT_NOFILE"),
    }
    // The servers will share this descriptor table, and each node a server caches holds a
    // descriptor: growing the shared table later stalls a server for an RCU grace period
    // at every doubling (measured: 13-25 ms each, 64 to 8,192, during the first seconds of
    // a tree walk). Growing it now, while no one shares it, costs nothing but its memory.
    let limit = shared
        .hdr(hdr::NOFILE)
        .load(std::sync::atomic::Ordering::Relaxed) as usize;
    let want = FD_TABLE_AT_START.min(limit).min(shared.capacity());
    match sys::grow_fd_table(args.state_fd, want.max(1)) {
        Ok(()) => shared
            .hdr(hdr::FD_TABLE)
            .store(want as u64, std::sync::atomic::Ordering::Relaxed),
        Err(e) => tracing::warn!(errno = e, want, "could not grow the descriptor table ahead"),
    }
    // The keeper's own mount namespace: a read-only tmpfs holding the backing tree at
    // /root and a procfs of process directories only at /proc (each server opens its own
    // `self/fd` there: a Landlock-restricted server may not follow another process's
    // /proc links). No descriptor names a directory outside this namespace.
    let (root, proc) = if args.no_confine {
        (
            open_dir(&args.root, libc::O_PATH)?,
            open_dir(std::path::Path::new("/proc"), libc::O_PATH)?,
        )
    } else {
        // SAFETY: the supervisor handed us this descriptor number; nothing else owns it.
        let procfs = args
            .proc_fd
            .map(|fd| unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) });
        let m = crate::confine::enter_keeper_namespace(&args.root, procfs)?;
        (m.root, m.proc)
    };
    let root_id = crate::confine::dir_identity(root.as_raw_fd())?;
    if let Some((dev, ino)) = args.root_id {
        if (root_id.dev, root_id.ino) != (dev, ino) {
            return Err(Error::BadState(format!(
                "the backing root {} is device {}:{} inode {}, not the directory recorded at create ({}:{} inode {ino})",
                args.root.display(),
                libc::major(root_id.dev),
                libc::minor(root_id.dev),
                root_id.ino,
                libc::major(dev),
                libc::minor(dev),
            )));
        }
    }
    let proc_id = crate::confine::dir_identity(proc.as_raw_fd())?;
    let keeper_fds = sys::openat(
        proc.as_raw_fd(),
        c"self/fd",
        libc::O_RDONLY | libc::O_DIRECTORY,
        0,
    )
    .map_err(|e| {
        Error::Sys(
            "open the keeper's /proc/self/fd",
            nix::errno::Errno::from_raw(e),
        )
    })?;
    if !args.no_confine {
        // The keeper shares its descriptor table with every server, which parses hostile
        // input: it is confined as they are (capabilities, no_new_privs, Landlock,
        // seccomp) before the first one exists.
        crate::confine::confine_keeper(root.as_raw_fd(), proc.as_raw_fd())?;
    }
    tracing::info!(
        userns,
        confined = !args.no_confine,
        "file-server keeper ready"
    );
    shared
        .hdr(hdr::FUSE_FD)
        .store(args.fuse_fd as u64, std::sync::atomic::Ordering::Relaxed);
    shared.hdr(hdr::PROC_FD).store(
        proc.as_raw_fd() as u64,
        std::sync::atomic::Ordering::Relaxed,
    );
    let server = Config {
        fuse_fd: args.fuse_fd,
        root_fd: root.as_raw_fd(),
        proc_fd: keeper_fds.as_raw_fd(),
        shared,
        passthrough: args.passthrough,
        threads: args.threads,
        ttl: args.ttl,
        backing_fd: args.backing_fd.unwrap_or(-1),
        transport: args.transport,
        rings,
    };
    let mut cfg = ServerSetup {
        server,
        confine: !args.no_confine,
        proc_root: proc.as_raw_fd(),
        ctl_fd: args.ctl_fd,
        root_id: (!args.no_confine).then_some(root_id),
    };
    // Every descriptor of the table may be replaced by a compromised server: a new server
    // gets the root and procfs only after their identity was checked again.
    let guard = Guard {
        root: (root_id, crate::confine::KEEPER_ROOT),
        proc: (proc_id, crate::confine::KEEPER_PROC),
        on: !args.no_confine,
    };
    let mut cmd = [0u8; 16];
    // The standby server: its pid and the pipe that wakes it (both ends live in the
    // shared fd table; the standby closes the read end once awake).
    let mut standby: Option<(i32, RawFd, RawFd)> = None;
    // Tests only: the command during which this keeper dies, after doing it and before
    // answering (its twin does not inherit the fault).
    let mut dies_in = dies_in_from_env();
    // Twins are this process's children (servers are the supervisor's): reaped by the
    // kernel as they exit.
    // SAFETY: sets a disposition; no handler code involved.
    unsafe { libc::signal(libc::SIGCHLD, libc::SIG_IGN) };
    loop {
        let n = match sys::read(args.ctl_fd, &mut cmd) {
            Ok(0) => {
                // Every supervisor is gone. The descriptors this function holds (the
                // backing root, /proc) are in the table a server may still share and
                // serve from: leave without closing them.
                // SAFETY: ends the keeper at once, running no destructor.
                unsafe { libc::_exit(0) }
            }
            Ok(n) => n,
            Err(libc::EINTR) => continue,
            Err(e) => {
                return Err(Error::Sys(
                    "keeper: read control socket",
                    nix::errno::Errno::from_raw(e),
                ))
            }
        };
        let command = match Command::decode(&cmd[..n]) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "ignored a command on the keeper's socket");
                continue;
            }
        };
        let unchecked = command.kind.starts_server()
            && match guard.check(&mut cfg) {
                Ok(false) => false,
                Ok(true) => {
                    // The standby was confined beneath what that descriptor named then,
                    // and serves from its number, which names something else now: it
                    // would refuse to serve. Drop it (it ends on the pipe's hang-up, which
                    // its check of the pipe's identity tells from a wake-up).
                    if let Some((_, rd, wr)) = standby.take() {
                        record_standby(&cfg.server.shared, None);
                        sys::close(wr);
                        sys::close(rd);
                    }
                    false
                }
                Err(e) => {
                    tracing::error!(error = %e, "refusing to start a file server");
                    true
                }
            };
        let pid = match command.kind {
            _ if unchecked => -libc::EIO,
            CommandKind::Spawn => spawn_server(&cfg, None),
            CommandKind::Standby => {
                if let Some((_, rd, wr)) = standby.take() {
                    // A standby that died (or is replaced) never woke: drop its pipe.
                    record_standby(&cfg.server.shared, None);
                    sys::close(wr);
                    sys::close(rd);
                }
                match pipe() {
                    Ok((rd, wr)) => {
                        let pid = spawn_server(&cfg, Some(rd));
                        if pid > 0 {
                            standby = Some((pid, rd, wr));
                            record_standby(&cfg.server.shared, Some((rd, wr)));
                        } else {
                            sys::close(wr);
                            sys::close(rd);
                        }
                        pid
                    }
                    Err(e) => -e,
                }
            }
            CommandKind::Activate => match standby.take() {
                Some((0, rd, wr)) => {
                    // A dead keeper's standby, killed by now: drop its pipe.
                    record_standby(&cfg.server.shared, None);
                    sys::close(wr);
                    sys::close(rd);
                    spawn_server(&cfg, None)
                }
                Some((pid, _rd, go)) => {
                    record_standby(&cfg.server.shared, None);
                    let woke = sys::write(go, b"g").is_ok();
                    sys::close(go);
                    if woke {
                        pid
                    } else {
                        spawn_server(&cfg, None)
                    }
                }
                None => spawn_server(&cfg, None),
            },
            CommandKind::Sync => 0,
            CommandKind::Twin => match spawn_twin(args.ctl_fd) {
                Twin::Forked(pid) => pid,
                Twin::Failed(e) => -e,
                Twin::TookOver => {
                    // This process is the keeper now. Its copy of the standby is as old
                    // as the fork; the supervisor kills the dead keeper's standby and
                    // waits for its end before its next command, which closes the pipe
                    // the dead keeper recorded (closed now, its numbers could be reused
                    // under the standby still polling them).
                    standby = recorded_standby(&cfg.server.shared).map(|(rd, wr)| (0, rd, wr));
                    dies_in = None;
                    tracing::warn!("the file-server keeper died; its twin took its place");
                    continue;
                }
            },
        };
        if Some(command.kind.byte()) == dies_in {
            tracing::warn!(command = ?command.kind, "simulated fault: the keeper dies before it answers");
            // SAFETY: kills this (single-threaded) process: a test fault.
            unsafe {
                let me = libc::getpid();
                libc::syscall(libc::SYS_tgkill, me, me, libc::SIGKILL);
            }
        }
        // The sequence number, echoed (0 when the command carried none), and who answers.
        let answer = Answer {
            outcome: match pid {
                0 => Outcome::Done,
                p if p > 0 => Outcome::Started(p),
                e => Outcome::Failed(e.saturating_neg()),
            },
            seq: command.seq,
            // SAFETY: plain getpid.
            keeper: unsafe { libc::getpid() },
        }
        .encode();
        let _ = sys::write(args.ctl_fd, &answer);
    }
}

fn open_dir(path: &std::path::Path, flags: i32) -> Result<OwnedFd, Error> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| Error::Usage("NUL in path".into()))?;
    sys::openat(libc::AT_FDCWD, &c, flags | libc::O_DIRECTORY, 0)
        .map_err(|e| Error::Sys("open backing directory", nix::errno::Errno::from_raw(e)))
}

fn clone_files_parent() -> i64 {
    // SAFETY: fork-like clone (no new stack, no CLONE_VM) from a single-threaded process:
    // the child gets a copy of the address space and shares only the fd table.
    unsafe {
        libc::syscall(
            libc::SYS_clone,
            libc::CLONE_FILES | libc::CLONE_PARENT,
            0,
            0,
            0,
            0,
        )
    }
}

/// What [`spawn_twin`] returns in each process.
enum Twin {
    /// In the keeper: the twin's pid.
    Forked(i32),
    /// In the keeper: the clone failed (errno).
    Failed(i32),
    /// In the twin, once the keeper died: it is the keeper now.
    TookOver,
}

/// Forks the keeper's twin: a copy sharing the descriptor table (and so the control
/// socket, the FUSE connection and every node), with the same confinement and the same
/// recorded root identity. It waits for the keeper's death and then returns
/// [`Twin::TookOver`]; it ends without returning when every supervisor hung up.
fn spawn_twin(ctl: RawFd) -> Twin {
    // SAFETY: plain getpid.
    let keeper = unsafe { libc::getpid() };
    // SAFETY: fork-like clone (no new stack, no CLONE_VM) from a single-threaded process:
    // the child gets a copy of the address space and shares only the fd table; it is
    // this process's child, so its parent-death signal fires when the keeper dies.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone,
            libc::CLONE_FILES | libc::SIGCHLD,
            0,
            0,
            0,
            0,
        )
    };
    if pid < 0 {
        return Twin::Failed(
            std::io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EIO),
        );
    }
    if pid > 0 {
        return Twin::Forked(pid as i32);
    }
    if !twin_waits_for(keeper, ctl) {
        // SAFETY: no supervisor is left: end at once, closing nothing of the shared table.
        unsafe { libc::_exit(0) };
    }
    Twin::TookOver
}

/// Does nothing: SIGUSR1 only interrupts the twin's wait.
extern "C" fn wake(_: libc::c_int) {}

/// The twin's wait: true once `keeper` (the parent) is gone, false when the control
/// socket hangs up. The parent-death signal (SIGUSR1, blocked but during the wait) ends
/// the wait at once; the parent is checked with `getppid`, which no other process can
/// fake, and again every few seconds in case a signal was missed.
fn twin_waits_for(keeper: i32, ctl: RawFd) -> bool {
    // SAFETY: sigset operations on a local set, a handler that does nothing, the thread's
    // mask and a plain prctl.
    let wait_mask = unsafe {
        let mut usr1: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut usr1);
        libc::sigaddset(&mut usr1, libc::SIGUSR1);
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::pthread_sigmask(libc::SIG_BLOCK, &usr1, &mut old);
        libc::signal(libc::SIGUSR1, wake as *const () as libc::sighandler_t);
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGUSR1, 0, 0, 0);
        libc::sigdelset(&mut old, libc::SIGUSR1);
        old
    };
    let took_over = loop {
        // SAFETY: plain getppid.
        if unsafe { libc::getppid() } != keeper {
            break true;
        }
        // Events 0: only a hang-up or an error is reported, never the commands.
        let mut fd = libc::pollfd {
            fd: ctl,
            events: 0,
            revents: 0,
        };
        let every = libc::timespec {
            tv_sec: 5,
            tv_nsec: 0,
        };
        // SAFETY: one valid pollfd, a valid timeout and signal mask.
        let r = unsafe { libc::ppoll(&mut fd, 1, &every, &wait_mask) };
        if r > 0 && fd.revents & (libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0 {
            break false;
        }
    };
    // SAFETY: as above: back to no parent-death signal and the default disposition.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, 0, 0, 0, 0);
        libc::signal(libc::SIGUSR1, libc::SIG_DFL);
        libc::pthread_sigmask(libc::SIG_SETMASK, &wait_mask, std::ptr::null_mut());
    }
    took_over
}

/// Records the standby's wake-up pipe in the shared header (for a twin that takes over).
fn record_standby(shared: &Shared, pipe: Option<(RawFd, RawFd)>) {
    let (rd, wr) = pipe.map_or((0, 0), |(r, w)| (r as u64 + 1, w as u64 + 1));
    shared
        .hdr(hdr::STANDBY_RD)
        .store(rd, std::sync::atomic::Ordering::Release);
    shared
        .hdr(hdr::STANDBY_WR)
        .store(wr, std::sync::atomic::Ordering::Release);
}

/// The standby pipe a dead keeper recorded, if both descriptors are still pipes (the
/// header is shared with the servers: anything else is left alone).
fn recorded_standby(shared: &Shared) -> Option<(RawFd, RawFd)> {
    let fd = |w: usize| {
        let v = shared.hdr(w).load(std::sync::atomic::Ordering::Acquire);
        v.checked_sub(1)
            .and_then(|f| RawFd::try_from(f).ok())
            .filter(|f| sys::is_fifo(*f))
    };
    Some((fd(hdr::STANDBY_RD)?, fd(hdr::STANDBY_WR)?))
}

/// Restores the default action of SIGSEGV, SIGBUS and SIGCHLD: the Rust runtime's
/// stack-overflow handler would otherwise let a server survive a SIGSEGV sent to it, and
/// a server that crashes must die so the supervisor replaces it.
fn default_fault_signals() {
    // SIGCHLD too: the keeper ignores it (its twins are reaped so).
    for sig in [libc::SIGSEGV, libc::SIGBUS, libc::SIGCHLD] {
        // SAFETY: installs the default disposition; no handler code involved.
        unsafe { libc::signal(sig, libc::SIG_DFL) };
    }
    // No core dumps: a crashed server's memory holds the container's file data.
    let zero = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: valid rlimit pointer.
    unsafe { libc::setrlimit(libc::RLIMIT_CORE, &zero) };
}

/// The identities of the directories a new server is confined beneath, recorded when the
/// keeper set up its namespace (its private memory: no server can change them), with the
/// path in the keeper's namespace to reopen each from.
struct Guard {
    root: (crate::confine::DirIdentity, &'static std::ffi::CStr),
    proc: (crate::confine::DirIdentity, &'static std::ffi::CStr),
    on: bool,
}

impl Guard {
    /// Makes sure `cfg`'s root and procfs descriptors still name the recorded
    /// directories; a replaced one (the table is shared with servers that parse hostile
    /// input) is opened again from the keeper's own namespace, whose root no server can
    /// change (they share descriptors, not the file-system root).
    /// Returns whether one was replaced.
    fn check(&self, cfg: &mut ServerSetup) -> Result<bool, Error> {
        if !self.on {
            return Ok(false);
        }
        let (root, proc) = (cfg.server.root_fd, cfg.proc_root);
        cfg.server.root_fd = checked_dir(root, self.root)?;
        cfg.proc_root = checked_dir(proc, self.proc)?;
        Ok(cfg.server.root_fd != root || cfg.proc_root != proc)
    }
}

/// `fd` when it is the directory `want.0`; else that directory opened again by its path
/// `want.1` in the keeper's namespace (and checked), the new descriptor kept for good.
fn checked_dir(
    fd: RawFd,
    want: (crate::confine::DirIdentity, &'static std::ffi::CStr),
) -> Result<RawFd, Error> {
    let (id, path) = want;
    let now = crate::confine::dir_identity(fd);
    if now.as_ref().ok() == Some(&id) {
        return Ok(fd);
    }
    tracing::warn!(fd, path = ?path, found = ?now.ok(), want = ?id, "a descriptor a file server is confined beneath no longer names its directory (replaced in the shared table); opened it again");
    let again =
        sys::openat(libc::AT_FDCWD, path, libc::O_PATH | libc::O_DIRECTORY, 0).map_err(|e| {
            Error::Sys(
                "reopen a confinement directory",
                nix::errno::Errno::from_raw(e),
            )
        })?;
    if crate::confine::dir_identity(again.as_raw_fd())? != id {
        return Err(Error::BadState(format!(
            "{path:?} in the keeper's namespace is no longer the directory recorded at start"
        )));
    }
    Ok(std::os::fd::IntoRawFd::into_raw_fd(again))
}

/// What a spawned server runs with.
struct ServerSetup {
    server: Config,
    confine: bool,
    proc_root: RawFd,
    /// The keeper's end of the control socket: a standby ends when it hangs up.
    ctl_fd: RawFd,
    /// The identity the root must have (recorded by the keeper at start); `None`:
    /// unconfined.
    root_id: Option<crate::confine::DirIdentity>,
}

fn pipe() -> Result<(RawFd, RawFd), i32> {
    let mut p = [0i32; 2];
    // SAFETY: `p` is a valid out-array of two ints.
    if unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO));
    }
    Ok((p[0], p[1]))
}

/// Creates one server sharing this process's fd table; returns its pid (or -errno).
/// With `wait_on`, the server sets itself up and confines itself, then waits for a byte
/// on that pipe before serving (a standby: takeover without the clone and the set-up).
fn spawn_server(cfg: &ServerSetup, wait_on: Option<RawFd>) -> i32 {
    let pid = clone_files_parent();
    if pid < 0 {
        return -std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO);
    }
    if pid > 0 {
        return pid as i32;
    }
    // The child: the new file server. No parent-death signal: it outlives a supervisor.
    default_fault_signals();
    let mut server = cfg.server.clone();
    if cfg.confine {
        // This server's own /proc/self/fd (the same shared table); the previous server's
        // is useless now: close it.
        let own = match sys::openat(
            cfg.proc_root,
            c"self/fd",
            libc::O_RDONLY | libc::O_DIRECTORY,
            0,
        ) {
            Ok(fd) => std::os::fd::IntoRawFd::into_raw_fd(fd),
            Err(e) => {
                tracing::error!(errno = e, "could not open /proc/self/fd");
                // SAFETY: ends this process at once.
                unsafe { libc::_exit(EXIT_FAILED) };
            }
        };
        server.proc_fd = own;
        // The keeper checked the root before this fork, but a server may have replaced it
        // since: check again here, where nothing can race with the confinement but the
        // server's own threads (none yet) and another server's.
        if crate::confine::dir_identity(server.root_fd).ok() != cfg.root_id {
            tracing::error!("the root descriptor was replaced before the file server confined itself; not serving");
            // SAFETY: ends this process at once.
            unsafe { libc::_exit(EXIT_FAILED) };
        }
        let sock = (server.backing_fd >= 0).then_some(server.backing_fd);
        if let Err(e) = crate::confine::confine(server.root_fd, sock) {
            tracing::error!(error = %e, "could not confine the file server");
            // SAFETY: ends this process at once.
            unsafe { libc::_exit(EXIT_FAILED) };
        }
    }
    // A standby waits with its confinement in place; its root descriptor must still name
    // the root it was confined beneath when it starts to serve (a server killed meanwhile
    // may have replaced it in the shared table).
    if let Some(go) = wait_on {
        // The pipe's identity: once the keeper drops a standby, the number `go` may name
        // another file of the shared table, which must never wake it.
        let pipe = sys::fstat(go).ok().map(|st| (st.st_dev, st.st_ino));
        if pipe.is_none() || !standby_woken(go, pipe, cfg.ctl_fd) {
            // SAFETY: the keeper dropped this standby, or no supervisor is left: end at once.
            unsafe { libc::_exit(EXIT_UNMOUNTED) };
        }
        sys::close(go);
        if cfg.root_id.is_some() && crate::confine::dir_identity(server.root_fd).ok() != cfg.root_id
        {
            tracing::error!("standby file server: its root descriptor was replaced while it waited; not serving");
            // SAFETY: ends this process at once.
            unsafe { libc::_exit(EXIT_FAILED) };
        }
    }
    if cfg.confine {
        let old = server
            .shared
            .hdr(hdr::SERVER_PROC_FD)
            .swap(server.proc_fd as u64, std::sync::atomic::Ordering::AcqRel);
        if old != 0 && old as RawFd != server.proc_fd {
            sys::close(old as RawFd);
        }
    }
    let code = match serve(&server) {
        Ok(Exit::Unmounted) | Ok(Exit::Destroyed) => EXIT_UNMOUNTED,
        Err(e) => {
            tracing::error!(error = %e, "file server failed");
            EXIT_FAILED
        }
    };
    // SAFETY: ends this process without running the keeper's destructors twice.
    unsafe { libc::_exit(code) }
}

/// A standby's wait: true once the keeper writes its byte on `go` (still the pipe `pipe`);
/// false when the keeper dropped it, or when the control socket hangs up (every
/// supervisor is gone, so nobody would ever wake it).
fn standby_woken(go: RawFd, pipe: Option<(u64, u64)>, ctl: RawFd) -> bool {
    loop {
        let mut fds = [
            libc::pollfd {
                fd: go,
                events: libc::POLLIN,
                revents: 0,
            },
            // Events 0: only a hang-up or an error is reported, never the commands.
            libc::pollfd {
                fd: ctl,
                events: 0,
                revents: 0,
            },
        ];
        // SAFETY: `fds` is a valid array of two pollfd structures.
        let r = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if r < 0 {
            if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return false;
        }
        if fds[0].revents != 0 {
            if fds[0].revents & libc::POLLIN == 0
                || sys::fstat(go).ok().map(|st| (st.st_dev, st.st_ino)) != pipe
            {
                return false;
            }
            let mut b = [0u8; 1];
            return matches!(sys::read(go, &mut b), Ok(1));
        }
        if fds[1].revents & (libc::POLLHUP | libc::POLLERR) != 0 {
            return false;
        }
    }
}

/// Tests only (feature `fault-injection`): `PORTA_FS_FAULT=keeper-dies-in:C` (C a
/// command byte, e.g. `B` or `T`): the keeper dies after doing its first such command,
/// before it answers.
#[cfg(feature = "fault-injection")]
fn dies_in_from_env() -> Option<u8> {
    let v = std::env::var("PORTA_FS_FAULT").ok()?;
    let c = v.strip_prefix("keeper-dies-in:")?;
    (c.len() == 1).then(|| c.as_bytes()[0])
}

/// Without the feature `fault-injection` the keeper never dies on purpose.
#[cfg(not(feature = "fault-injection"))]
fn dies_in_from_env() -> Option<u8> {
    None
}

/// Tests only (feature `fault-injection`): `PORTA_FS_NOFILE=N` gives the servers a
/// descriptor budget of at most N, so that a test reaches the cold-node table without
/// tens of thousands of files.
#[cfg(feature = "fault-injection")]
fn nofile_cap() -> u64 {
    std::env::var("PORTA_FS_NOFILE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(u64::MAX)
}

/// Without the feature `fault-injection` the budget is the descriptor limit's.
#[cfg(not(feature = "fault-injection"))]
fn nofile_cap() -> u64 {
    u64::MAX
}
