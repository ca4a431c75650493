//! The supervisor daemon (`porta supervisor …`): one per container, single-threaded.

use std::collections::HashMap;
use std::ffi::OsString;
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
use crate::{fdpass, Error, ServerStatus, SupervisorState, SERVERS_FILE, SOCKET_NAME};

/// Parsed arguments of `porta supervisor`.
#[derive(Debug, Clone)]
pub struct Args {
    id: String,
    state_dir: PathBuf,
    rootfs: PathBuf,
    sock_fd: RawFd,
    passthrough: bool,
    cgroup_procs: Vec<PathBuf>,
    container_pid: Option<i32>,
    userns_fd: Option<RawFd>,
    hang_timeout: Duration,
    max_failures: u32,
    threads: usize,
    foreground: bool,
    /// Watch the backing tree for changes made from the host (`--host-changes off`: no).
    host_changes: bool,
}

impl Args {
    /// Parses `--id ID --state-dir DIR --rootfs DIR --sock-fd N [--passthrough]
    /// [--cgroup-procs FILE]… [--container-pid PID] [--userns-fd N] [--hang-timeout-ms MS]
    /// [--max-failures N] [--threads N] [--foreground]`.
    pub fn parse(args: &[OsString]) -> Result<Args, Error> {
        let mut a = Args {
            id: String::new(),
            state_dir: PathBuf::new(),
            rootfs: PathBuf::new(),
            sock_fd: -1,
            passthrough: false,
            cgroup_procs: vec![],
            container_pid: None,
            userns_fd: None,
            hang_timeout: std::env::var("PORTA_HANG_TIMEOUT_MS")
                .ok()
                .and_then(|v| v.parse().ok())
                .map_or(Duration::from_secs(10), Duration::from_millis),
            max_failures: 5,
            threads: 2,
            foreground: false,
            host_changes: true,
        };
        let mut it = args.iter();
        while let Some(arg) = it.next() {
            let name = arg.to_string_lossy().into_owned();
            let mut val = || {
                it.next()
                    .cloned()
                    .ok_or_else(|| Error::Usage(format!("{name} needs a value")))
            };
            let num = |v: OsString| -> Result<i64, Error> {
                v.to_str()
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| Error::Usage(format!("{name}: not a number")))
            };
            match name.as_str() {
                "--id" => a.id = val()?.to_string_lossy().into_owned(),
                "--state-dir" => a.state_dir = val()?.into(),
                "--rootfs" => a.rootfs = val()?.into(),
                "--sock-fd" => a.sock_fd = num(val()?)? as RawFd,
                "--passthrough" => a.passthrough = true,
                "--cgroup-procs" => a.cgroup_procs.push(val()?.into()),
                "--container-pid" => a.container_pid = Some(num(val()?)? as i32),
                "--userns-fd" => a.userns_fd = Some(num(val()?)? as RawFd),
                "--hang-timeout-ms" => a.hang_timeout = Duration::from_millis(num(val()?)? as u64),
                "--max-failures" => a.max_failures = num(val()?)? as u32,
                "--threads" => a.threads = num(val()?)? as usize,
                "--foreground" => a.foreground = true,
                "--host-changes" => {
                    a.host_changes = match val()?.to_str() {
                        Some("on") => true,
                        Some("off") => false,
                        _ => return Err(Error::Usage(format!("{name}: on or off"))),
                    }
                }
                other => return Err(Error::Usage(format!("unknown argument {other}"))),
            }
        }
        if a.id.is_empty()
            || a.state_dir.as_os_str().is_empty()
            || a.rootfs.as_os_str().is_empty()
            || a.sock_fd < 0
        {
            return Err(Error::Usage(
                "--id, --state-dir, --rootfs and --sock-fd are required".into(),
            ));
        }
        Ok(a)
    }
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
pub fn run(a: Args) -> i32 {
    close_all_but(&[a.sock_fd, a.userns_fd.unwrap_or(-1)]);
    // SAFETY: the launcher handed us this descriptor number; nothing else owns it.
    let sock = unsafe { OwnedFd::from_raw_fd(a.sock_fd) };
    set_cloexec(sock.as_raw_fd(), true);
    if !a.foreground {
        if let Err(e) = fork_and_leave_parent() {
            let _ = fdpass::send_with_fd(sock.as_raw_fd(), format!("error {e}").as_bytes(), None);
            return 1;
        }
    }
    crate::init_logging();
    tracing::info!(id = %a.id, rootfs = %a.rootfs.display(), passthrough = a.passthrough, rootless = a.userns_fd.is_some(), "supervisor starting");
    if let Some(fd) = a.userns_fd {
        if let Err(e) = join_container_userns(fd) {
            tracing::error!(error = %e, "supervisor failed to start");
            let _ = fdpass::send_with_fd(sock.as_raw_fd(), format!("error {e}").as_bytes(), None);
            return 1;
        }
    }
    let mut sv = match Supervisor::start(a) {
        Ok(sv) => sv,
        Err((e, partial)) => {
            tracing::error!(error = %e, "supervisor failed to start");
            let _ = fdpass::send_with_fd(sock.as_raw_fd(), format!("error {e}").as_bytes(), None);
            if let Some(mut p) = partial {
                p.shutdown();
            }
            return 1;
        }
    };
    let mount = sv.mount.take();
    let msg = format!("ok {}", std::process::id());
    if let Err(e) = fdpass::send_with_fd(
        sock.as_raw_fd(),
        msg.as_bytes(),
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
    // After the handover, so that `porta create` sets up the container meanwhile.
    sv.prepare_standby();
    let code = sv.run_loop();
    tracing::info!(code, "supervisor exiting");
    code
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
        Ok(s) => thread_state(&s) != Some('Z'),
        Err(_) => false,
    }
}

/// The parent pid of `pid`, from /proc/PID/stat.
fn parent_of(pid: i32) -> Option<i32> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    s.rfind(')')
        .and_then(|i| s[i + 1..].split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

fn thread_state(stat: &str) -> Option<char> {
    stat.rfind(')')
        .and_then(|i| stat[i + 1..].trim_start().chars().next())
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
    /// Registers passthrough backing files for the servers (passthrough only).
    broker: Option<Broker>,
    /// Which confinement the servers run under ("userns", "root" or "none").
    confinement: String,
    last_watchdog: Instant,
    /// Invalidates what the kernel cached of changes made from the host (`watch.rs`);
    /// None when switched off or unavailable (then `short_ttl`).
    host: Option<crate::watch::Watcher>,
    /// Servers answer with short timeouts: host changes are not watched.
    short_ttl: bool,
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
            broker: None,
            confinement: String::new(),
            last_watchdog: Instant::now(),
            host,
            short_ttl,
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
        if self.keeper_pid > 0 {
            let _ = kill(Pid::from_raw(self.keeper_pid), Signal::SIGKILL);
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
        let mut cmd = Command::new("/proc/self/exe");
        cmd.arg("fs")
            .arg("keeper")
            .arg("--fuse-fd")
            .arg(fuse.to_string())
            .arg("--state-fd")
            .arg(state.to_string())
            .arg("--ctl-fd")
            .arg(theirs.as_raw_fd().to_string())
            .arg("--root")
            .arg(&self.a.rootfs)
            .arg("--threads")
            .arg(self.a.threads.to_string())
            .stdin(Stdio::null());
        let mut inherit = vec![fuse, state, theirs.as_raw_fd()];
        if let Some((_, b)) = &backing {
            cmd.arg("--passthrough")
                .arg("--backing-fd")
                .arg(b.as_raw_fd().to_string());
            inherit.push(b.as_raw_fd());
        }
        if !userns {
            cmd.arg("--no-userns");
        }
        if self.short_ttl {
            cmd.arg("--ttl")
                .arg(crate::watch::SHORT_TTL_SECS.to_string());
        }
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
        let ctl = self
            .ctl
            .as_ref()
            .ok_or_else(|| Error::Usage("no keeper".into()))?
            .as_raw_fd();
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
        let hello = &b[..n];
        match hello.first().copied() {
            Some(porta_fs::keeper::HELLO_USERNS) => match write_identity_maps(pid) {
                Ok(()) => {
                    porta_fs::sys::write(ctl, &[porta_fs::keeper::MAPS_OK])
                        .map_err(|e| Error::Sys("answer keeper", nix::errno::Errno::from_raw(e)))?;
                    self.confinement = "userns".into();
                    tracing::info!("file server confinement: identity-mapped user namespace owning a mount namespace with only the backing directory; no global capabilities");
                    Ok(())
                }
                Err(e) => {
                    let _ = porta_fs::sys::write(ctl, &[porta_fs::keeper::MAPS_FAILED]);
                    Err(Error::Refused(e.to_string()))
                }
            },
            Some(porta_fs::keeper::HELLO_ROOT) => {
                let errno: i32 = std::str::from_utf8(&hello[1..])
                    .ok()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                let why = if errno == 0 {
                    "switched off (PORTA_FS_USERNS=0)".to_string()
                } else {
                    format!("unavailable: {}", std::io::Error::from_raw_os_error(errno))
                };
                self.confinement = "root".into();
                tracing::warn!("file server confinement: user namespaces {why}; the file server runs as root of the initial user namespace (global CAP_CHOWN, CAP_DAC_OVERRIDE, CAP_FOWNER, CAP_FSETID, CAP_SETFCAP), in its own mount namespace, with Landlock and seccomp");
                Ok(())
            }
            Some(porta_fs::keeper::HELLO_UNCONFINED) => {
                self.confinement = "none".into();
                tracing::warn!("file server confinement: none (--no-confine)");
                Ok(())
            }
            _ => Err(Error::Start {
                id: self.a.id.clone(),
                msg: format!(
                    "file-server keeper: unexpected first message {:?}",
                    String::from_utf8_lossy(hello)
                ),
                log: PathBuf::new(),
            }),
        }
    }

    /// Sends one command byte to the keeper and reads the pid it answers.
    fn keeper_request(&self, cmd: u8) -> Result<i32, Error> {
        let ctl = self
            .ctl
            .as_ref()
            .ok_or_else(|| Error::Usage("no keeper".into()))?
            .as_raw_fd();
        porta_fs::sys::write(ctl, &[cmd])
            .map_err(|e| Error::Sys("ask keeper for a server", nix::errno::Errno::from_raw(e)))?;
        // The keeper's end of this socket is in the fd table it shares with the servers:
        // a compromised server can write into it. Only a pid that is our child (servers
        // are, by CLONE_PARENT; a child's pid cannot be reused before we reap it) is
        // taken, so we never signal a process of someone else; and we never wait forever.
        let me = std::process::id() as i32;
        for _ in 0..8 {
            // SAFETY: `ctl` is our open socket, borrowed for the poll only.
            let bfd = unsafe { std::os::fd::BorrowedFd::borrow_raw(ctl) };
            let mut fds = [PollFd::new(bfd, PollFlags::POLLIN)];
            if poll(&mut fds, PollTimeout::from(5_000u16)).unwrap_or(0) <= 0 {
                return Err(Error::Timeout(
                    "hear the new server's pid from the keeper",
                    Duration::from_secs(5),
                ));
            }
            let mut b = [0u8; 8];
            let n = porta_fs::sys::read(ctl, &mut b)
                .map_err(|e| Error::Sys("read server pid", nix::errno::Errno::from_raw(e)))?;
            let pid = if n == 4 {
                i32::from_ne_bytes([b[0], b[1], b[2], b[3]])
            } else {
                -libc::EIO
            };
            if pid <= 0 {
                return Err(Error::Sys(
                    "keeper: clone file server",
                    nix::errno::Errno::from_raw(-pid),
                ));
            }
            if parent_of(pid) == Some(me) {
                return Ok(pid);
            }
            tracing::warn!(
                pid,
                "ignored a server pid from the keeper's socket that is not our child"
            );
        }
        Err(Error::Refused(
            "the keeper's socket gave no pid of a child of ours".into(),
        ))
    }

    /// Pre-forks a standby server (set up and confined, waiting to be woken), unless
    /// standbys keep dying.
    fn prepare_standby(&mut self) {
        if self.standby_pid > 0 || self.standby_failures >= 5 || self.ctl.is_none() {
            return;
        }
        match self.keeper_request(porta_fs::keeper::CMD_STANDBY) {
            Ok(pid) => self.standby_pid = pid,
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
        let pid = self.keeper_request(porta_fs::keeper::CMD_ACTIVATE)?;
        if standby > 0 && pid != standby {
            tracing::warn!(
                standby,
                "standby file server could not be woken; started a new one"
            );
        }
        self.server_pid = pid;
        self.progress_at_start = self.shared.requests_done();
        tracing::info!(pid, restarts = self.restarts, "file server started");
        Ok(())
    }

    fn run_loop(&mut self) -> i32 {
        if let Some(pid) = self.a.container_pid {
            self.container = pidfd_open(pid);
        }
        loop {
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
            if let Some(h) = &self.host {
                fds.push(PollFd::new(h.fd(), PollFlags::POLLIN));
            }
            let polled = poll(&mut fds, PollTimeout::from(250u16));
            let ready = |i: usize| {
                fds.get(i)
                    .and_then(|f| f.revents())
                    .is_some_and(|r| !r.is_empty())
            };
            let container_gone = container.is_some() && ready(cidx);
            let backing = bidx < hidx && ready(bidx);
            let host = hidx < fds.len() && ready(hidx);
            // Anything but backing requests and host changes (or a timeout, or EINTR): do
            // the rest too.
            let others = match polled {
                Ok(n) => n == 0 || n > i32::from(backing) + i32::from(host),
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
                    h.handle(&self.shared, &pids);
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

    /// Reaps children; restarts the server or decides to stop.
    fn reap(&mut self) -> Option<Next> {
        loop {
            let st = match waitid(
                Id::All,
                WaitPidFlag::WEXITED | WaitPidFlag::WSTOPPED | WaitPidFlag::WNOHANG,
            ) {
                Ok(WaitStatus::StillAlive) | Err(_) => return None,
                Ok(st) => st,
            };
            let (pid, cause) = match st {
                WaitStatus::Exited(p, code) => (p.as_raw(), format!("exited with status {code}")),
                WaitStatus::Signaled(p, sig, _) => (p.as_raw(), format!("killed by {sig}")),
                WaitStatus::Stopped(p, sig) => {
                    if p.as_raw() == self.standby_pid {
                        let _ = kill(p, Signal::SIGKILL);
                    }
                    if p.as_raw() == self.server_pid {
                        tracing::warn!(pid = p.as_raw(), signal = %sig, "file server stopped; replacing it");
                        self.kill_reason = Some(format!("stopped by {sig}"));
                        let _ = kill(p, Signal::SIGKILL);
                    }
                    continue;
                }
                _ => continue,
            };
            if pid == self.server_pid {
                if let Some(n) = self.on_server_death(cause) {
                    return Some(n);
                }
            } else if pid == self.standby_pid {
                tracing::warn!(pid, cause = %cause, "standby file server died; pre-forking another");
                self.standby_pid = 0;
                self.standby_failures += 1;
                self.prepare_standby();
            } else if pid == self.keeper_pid {
                self.keeper_pid = 0;
                self.give_up(format!(
                    "file-server keeper {cause}: open files and nodes are lost"
                ));
                return Some(Next::Exit(1));
            }
        }
    }

    fn on_server_death(&mut self, cause: String) -> Option<Next> {
        self.server_pid = 0;
        if self.shared.hdr(hdr::UNMOUNTED).load(Ordering::Acquire) == 1 {
            tracing::info!("the container's mount is gone; stopping");
            self.shutdown();
            return Some(Next::Exit(0));
        }
        let cause = match self.kill_reason.take() {
            Some(r) => format!("{r} ({cause})"),
            None => cause,
        };
        let done = self.shared.requests_done();
        if done == self.progress_at_start {
            self.failures += 1;
        } else {
            self.failures = 0;
        }
        if self.failures >= self.a.max_failures {
            self.give_up(format!(
                "file server died {} times in a row without answering a request; last: {cause}",
                self.failures
            ));
            return Some(Next::Exit(1));
        }
        self.restarts += 1;
        tracing::warn!(cause = %cause, restarts = self.restarts, "file server died; restarting it");
        self.reclaim_backing();
        self.last_error = Some(cause);
        if let Err(e) = self.spawn_server() {
            self.give_up(format!("could not restart the file server: {e}"));
            return Some(Next::Exit(1));
        }
        self.write_state();
        self.prepare_standby();
        None
    }

    /// Kills a server thread that sits in a request with no progress for the hang
    /// timeout while not waiting on I/O (state D): a deadlock, not a slow disk.
    fn watchdog(&mut self) {
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
            if now.duration_since(e.1) < self.a.hang_timeout {
                continue;
            }
            let state =
                std::fs::read_to_string(format!("/proc/{}/task/{}/stat", self.server_pid, s.tid))
                    .ok()
                    .and_then(|t| thread_state(&t));
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
            let _ = kill(Pid::from_raw(self.server_pid), Signal::SIGKILL);
            self.watch.clear();
            return;
        }
    }

    fn serve_control(&mut self) -> Option<Next> {
        let l = self.listener.as_ref()?;
        let (mut conn, _) = l.accept().ok()?;
        let _ = conn.set_nonblocking(false);
        let _ = conn.set_read_timeout(Some(Duration::from_secs(1)));
        let mut buf = [0u8; 64];
        let n = conn.read(&mut buf).unwrap_or(0);
        let cmd = String::from_utf8_lossy(&buf[..n]).trim().to_string();
        match cmd.as_str() {
            "stop" => {
                tracing::info!("stop requested");
                self.shutdown();
                let _ = conn.write_all(b"ok\n");
                Some(Next::Exit(0))
            }
            c if c.starts_with("watch ") => {
                match c[6..]
                    .trim()
                    .parse::<i32>()
                    .ok()
                    .filter(|p| *p > 0)
                    .and_then(pidfd_open)
                {
                    Some(fd) => {
                        tracing::info!(pid = %c[6..].trim(), "watching the container's process");
                        self.container = Some(fd);
                        let _ = conn.write_all(b"ok\n");
                    }
                    None => {
                        let _ = conn.write_all(b"error no such process\n");
                    }
                }
                None
            }
            "status" => {
                let s = serde_json::to_string(&self.state()).unwrap_or_default();
                let _ = conn.write_all(s.as_bytes());
                None
            }
            _ => {
                let _ = conn.write_all(b"error unknown command\n");
                None
            }
        }
    }

    fn state(&self) -> SupervisorState {
        SupervisorState {
            supervisor_pid: std::process::id() as i32,
            servers: vec![ServerStatus {
                name: "fs".into(),
                pid: self.server_pid,
                restarts: self.restarts,
                state: if self.failed {
                    "failed".into()
                } else if self.server_pid > 0 {
                    "running".into()
                } else {
                    "stopped".into()
                },
                error: self.last_error.clone(),
                confinement: self.confinement.clone(),
            }],
        }
    }

    fn write_state(&self) {
        let p = self.a.state_dir.join(SERVERS_FILE);
        let tmp = self.a.state_dir.join(format!(".{SERVERS_FILE}.tmp"));
        let body = serde_json::to_vec(&self.state()).unwrap_or_default();
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

    /// Stops the servers and the keeper, aborts the connection, removes the socket.
    fn shutdown(&mut self) {
        for pid in [self.server_pid, self.standby_pid, self.keeper_pid] {
            if pid > 0 {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
        for pid in [self.server_pid, self.standby_pid, self.keeper_pid] {
            if pid > 0 {
                let _ = nix::sys::wait::waitpid(Pid::from_raw(pid), None);
            }
        }
        self.server_pid = 0;
        self.standby_pid = 0;
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

pub(crate) fn pidfd_open(pid: i32) -> Option<OwnedFd> {
    // SAFETY: plain system call.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: fresh descriptor owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
    set_cloexec(fd.as_raw_fd(), true);
    Some(fd)
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
    fn parent_of_reads_the_parent_pid() {
        // SAFETY: getppid always succeeds.
        let ppid = unsafe { libc::getppid() };
        assert_eq!(parent_of(std::process::id() as i32), Some(ppid));
        assert_eq!(parent_of(i32::MAX), None);
    }

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
