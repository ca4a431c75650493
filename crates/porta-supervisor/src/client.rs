//! The supervisor's clients, in `porta`: launching it, asking it to watch the container's
//! process or to stop, and reading its record of the servers.

use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use porta_protocol::supervisor::{ControlReply, ControlRequest, LaunchReply, SupervisorArgs};

use crate::{daemon, proc, Error, ServerStatus, SupervisorState, SERVERS_FILE, SOCKET_NAME};

/// What [`launch`] needs to give a container its file server.
#[derive(Debug, Clone)]
pub struct LaunchSpec {
    /// Container id.
    pub id: String,
    /// The container's state directory (short path: the control socket lives there).
    pub state_dir: PathBuf,
    /// The backing directory to serve (the bundle's root.path).
    pub rootfs: PathBuf,
    /// Use FUSE passthrough for regular-file data (root only); off: strict mode.
    pub passthrough: bool,
    /// Watch the backing tree for changes made from the host and invalidate what the
    /// kernel cached of them (off: `run.porta.fs.host-changes=off`).
    pub host_changes: bool,
    /// How the file servers take requests from the kernel (`run.porta.fs.transport`).
    pub transport: porta_protocol::keeper::Transport,
    /// cgroup.procs files the servers must join (the container's `porta/` leaf).
    pub server_cgroup_procs: Vec<PathBuf>,
    /// Binary to exec for `supervisor` / `fs` (a sealed copy of porta, or /proc/self/exe).
    pub exe: PathBuf,
    /// The supervisor's log file (its stdout and stderr).
    pub log: PathBuf,
    /// The container's API socket, bound and listening (annotation `run.porta.api=on`):
    /// the supervisor inherits it and keeps an API server answering it.
    pub api_fd: Option<RawFd>,
}

/// A started supervisor and the container's mount.
#[derive(Debug)]
pub struct Launched {
    /// The supervisor daemon's pid.
    pub supervisor_pid: i32,
    /// The detached FUSE mount (from fsmount), attached nowhere; move it onto the
    /// container's root with move_mount(fd, "", AT_FDCWD, root, MOVE_MOUNT_F_EMPTY_PATH).
    pub mount_fd: OwnedFd,
}

/// Descriptor number of the container's user namespace in a rootless supervisor.
const USERNS_FD: RawFd = 4;
/// Descriptor number of the API socket in the supervisor.
const API_FD: RawFd = 5;

/// How long [`launch`] waits for the supervisor to hand over the mount.
pub const LAUNCH_TIMEOUT: Duration = Duration::from_secs(20);

/// Starts the container's supervisor as a detached daemon and returns the detached FUSE
/// mount of the container's root, already served. `userns`: for a rootless container,
/// its user namespace; the supervisor joins it and makes the mount there (the kernel
/// allows an unprivileged FUSE mount only inside a user namespace the user owns).
pub fn launch(spec: &LaunchSpec, userns: Option<BorrowedFd<'_>>) -> Result<Launched, Error> {
    let (ours, intermediate) = start_supervisor(spec, userns, false)?;
    daemonized(spec, intermediate)?;
    receive_mount(spec, &ours)
}

/// A supervisor started by [`spawn`] before the container's cgroup exists: it sets up
/// what needs no cgroup and waits for [`Pending::go`] before it starts any process of the
/// file server. Dropped unfinished, it leaves nothing behind: a supervisor that never got
/// its go exits when the launch socket closes (the drop returns once it has closed its
/// descriptors, as it exits); one that did is stopped, and waited for.
pub struct Pending {
    spec: LaunchSpec,
    ours: Option<UnixStream>,
    intermediate: Option<std::process::Child>,
    went: bool,
}

/// Starts the container's supervisor (as root, in the host's user namespace) ahead of its
/// cgroup, so that its start-up overlaps with the rest of `porta create`; see [`Pending`].
/// `spec.server_cgroup_procs` is not used: the files come with [`Pending::go`].
pub fn spawn(spec: &LaunchSpec) -> Result<Pending, Error> {
    let (ours, intermediate) = start_supervisor(spec, None, true)?;
    Ok(Pending {
        spec: spec.clone(),
        ours: Some(ours),
        intermediate: Some(intermediate),
        went: false,
    })
}

impl Pending {
    /// The container's cgroup exists: the servers join the leaf whose cgroup.procs files
    /// are `cgroup_procs` (none: no cgroup). The supervisor goes on with its start-up.
    pub fn go(&mut self, cgroup_procs: &[PathBuf]) -> Result<(), Error> {
        let frame = porta_protocol::supervisor::LaunchGo {
            cgroup_procs: cgroup_procs.to_vec(),
        }
        .encode();
        let sock = self.ours.as_mut().ok_or(Error::NoMount {
            id: self.spec.id.clone(),
            log: self.spec.log.clone(),
        })?;
        // Set before the write: a write that failed halfway still may have reached it.
        self.went = true;
        sock.write_all(&frame)
            .map_err(|e| Error::Io("send the cgroup to the supervisor", e))
    }

    /// Our end of the launch socket (-1 once used up): processes forked meanwhile close
    /// it, so that the supervisor sees the launcher's end when the launcher ends.
    pub fn socket_fd(&self) -> RawFd {
        self.ours.as_ref().map_or(-1, |s| s.as_raw_fd())
    }

    /// Waits until the supervisor serves the container's root (after [`Pending::go`]) and
    /// returns its mount.
    pub fn ready(mut self) -> Result<Launched, Error> {
        if let Some(child) = self.intermediate.take() {
            daemonized(&self.spec, child)?;
        }
        let sock = self.ours.take().ok_or(Error::NoMount {
            id: self.spec.id.clone(),
            log: self.spec.log.clone(),
        })?;
        receive_mount(&self.spec, &sock)
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some(sock) = self.ours.take() {
            // It starts the file server once it has its go, whatever we do now: let it
            // finish, then stop it, so that nothing of it is left when the caller removes
            // the cgroup.
            if self.went && receive_mount(&self.spec, &sock).is_ok() {
                if let Err(e) = stop(&self.spec.state_dir) {
                    tracing::warn!("stop the supervisor of an abandoned launch: {e}");
                }
            }
            // Without a go, the end of our side makes it exit; after a failure it exits
            // too: either way its side closes when it is gone.
            let _ = sock.shutdown(std::net::Shutdown::Write);
            wait_hangup(&sock);
        }
        if let Some(mut child) = self.intermediate.take() {
            let _ = child.wait();
        }
    }
}

/// Waits (at most [`LAUNCH_TIMEOUT`]) until the supervisor's end of the launch socket is
/// closed: it exited (only the supervisor holds that end).
fn wait_hangup(sock: &UnixStream) {
    let deadline = Instant::now() + LAUNCH_TIMEOUT;
    let mut buf = [0u8; 256];
    let mut s = sock;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || s.set_read_timeout(Some(left)).is_err() {
            tracing::warn!("the supervisor of an abandoned launch did not exit");
            return;
        }
        match s.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => return,
        }
    }
}

/// Execs the supervisor (`await_go`: it waits for a [`Pending::go`]); returns our end of
/// its launch socket and the process that daemonizes it.
fn start_supervisor(
    spec: &LaunchSpec,
    userns: Option<BorrowedFd<'_>>,
    await_go: bool,
) -> Result<(UnixStream, std::process::Child), Error> {
    std::fs::create_dir_all(&spec.state_dir).map_err(|e| Error::Path {
        what: "create state directory",
        path: spec.state_dir.clone(),
        source: e,
    })?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&spec.log)
        .map_err(|e| Error::Path {
            what: "open supervisor log",
            path: spec.log.clone(),
            source: e,
        })?;
    let log2 = log.try_clone().map_err(|e| Error::Io("dup log file", e))?;
    let (ours, theirs) = UnixStream::pair().map_err(|e| Error::Io("socketpair", e))?;
    let mut args = SupervisorArgs::new(
        spec.id.clone(),
        spec.state_dir.clone(),
        spec.rootfs.clone(),
        3,
    );
    args.passthrough = spec.passthrough;
    args.host_changes = spec.host_changes;
    args.transport = spec.transport;
    args.await_cgroups = await_go;
    if !await_go {
        args.cgroup_procs = spec.server_cgroup_procs.clone();
    }
    if spec.api_fd.is_some() {
        args.api_fd = Some(API_FD);
    }
    // The API socket goes to descriptor 5, from a copy above the low numbers (as the user
    // namespace below): a listener that happens to be descriptor 3 or 4 (a create run
    // with few descriptors open, as a nested container's is) would otherwise be
    // overwritten by the moves to 3 and 4 before its own move.
    let api = match spec.api_fd {
        Some(fd) => Some(
            nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(10))
                .map_err(|e| Error::Sys("dup the API socket descriptor", e))
                .map(|fd| {
                    // SAFETY: fcntl returned a fresh descriptor we now own.
                    unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) }
                })?,
        ),
        None => None,
    };
    let api_raw = api.as_ref().map_or(-1, |a| a.as_raw_fd());
    // The user namespace goes to descriptor 4, from a copy above the low numbers so that
    // moving the socket to 3 cannot overwrite it.
    let userns = match userns {
        Some(u) => {
            args.userns_fd = Some(USERNS_FD);
            Some(
                nix::fcntl::fcntl(u.as_raw_fd(), nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(10))
                    .map_err(|e| Error::Sys("dup user namespace descriptor", e))
                    .map(|fd| {
                        // SAFETY: fcntl returned a fresh descriptor we now own.
                        unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) }
                    })?,
            )
        }
        None => None,
    };
    let mut cmd = Command::new(&spec.exe);
    cmd.arg(porta_protocol::supervisor::SUBCOMMAND)
        .args(args.to_argv());
    let userns_raw = userns.as_ref().map_or(-1, |u| u.as_raw_fd());
    let sock = theirs.as_raw_fd();
    cmd.stdin(Stdio::null())
        .stdout(log)
        .stderr(log2)
        .current_dir("/");
    // SAFETY: the closure only makes async-signal-safe system calls (setsid, dup2, fcntl).
    unsafe {
        cmd.pre_exec(move || {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if sock == 3 {
                porta_sys::fd::set_cloexec(3, false)?;
            } else if libc::dup2(sock, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // dup2 leaves the copy without FD_CLOEXEC.
            if userns_raw >= 0 && libc::dup2(userns_raw, USERNS_FD) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if api_raw >= 0 && libc::dup2(api_raw, API_FD) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().map_err(|e| Error::Path {
        what: "exec supervisor",
        path: spec.exe.clone(),
        source: e,
    })?;
    drop(theirs);
    drop(userns);
    drop(api);
    Ok((ours, child))
}

/// Waits for the process that daemonizes the supervisor (it exits once the daemon is
/// forked).
fn daemonized(spec: &LaunchSpec, mut intermediate: std::process::Child) -> Result<(), Error> {
    let status = intermediate
        .wait()
        .map_err(|e| Error::Io("wait for the supervisor to daemonize", e))?;
    if !status.success() {
        return Err(Error::Daemonize {
            id: spec.id.clone(),
            status,
            log: spec.log.clone(),
        });
    }
    Ok(())
}

/// Receives the supervisor's launch reply: the mount once it is served, or why not.
fn receive_mount(spec: &LaunchSpec, ours: &UnixStream) -> Result<Launched, Error> {
    ours.set_read_timeout(Some(LAUNCH_TIMEOUT))
        .map_err(|e| Error::Io("socket timeout", e))?;
    // The caller's children (`porta create` forks stage one meanwhile) may interrupt the
    // wait with SIGCHLD when it has a handler or runs under ptrace: wait on.
    let deadline = Instant::now() + LAUNCH_TIMEOUT;
    let mut msg = vec![0u8; 4096];
    let mut fds: [Option<OwnedFd>; 4] = Default::default();
    let received = loop {
        match porta_sys::scm::recv(ours.as_raw_fd(), &mut msg, 0, &mut fds) {
            Err(e) if e.raw_os_error() == Some(libc::EINTR) && Instant::now() < deadline => {
                let left = deadline.saturating_duration_since(Instant::now());
                ours.set_read_timeout(Some(left.max(Duration::from_millis(1))))
                    .map_err(|e| Error::Io("socket timeout", e))?;
            }
            r => break r,
        }
    };
    let r = received.map_err(|e| match e.raw_os_error() {
        Some(libc::EAGAIN) => Error::Timeout("hand over the mount", LAUNCH_TIMEOUT),
        _ => Error::Io("receive mount from supervisor", e),
    })?;
    msg.truncate(r.len);
    // The first descriptor is the mount; any further ones are closed with `fds`.
    let [fd, ..] = fds;
    launched(spec, &msg, fd)
}

/// What the supervisor's launch reply `msg` (with the descriptor `fd` that came with it)
/// says: the mount, or the typed reason it did not come.
fn launched(spec: &LaunchSpec, msg: &[u8], fd: Option<OwnedFd>) -> Result<Launched, Error> {
    match (LaunchReply::decode(msg), fd) {
        (Ok(LaunchReply::Ready { pid }), Some(fd)) => Ok(Launched {
            supervisor_pid: pid,
            mount_fd: fd,
        }),
        (Ok(LaunchReply::Failed(msg)), _) => Err(Error::Start {
            id: spec.id.clone(),
            msg,
            log: spec.log.clone(),
        }),
        // Ready without the mount, or nothing at all: it ended before the handover.
        (Ok(LaunchReply::Ready { .. }), None) => Err(Error::NoMount {
            id: spec.id.clone(),
            log: spec.log.clone(),
        }),
        (Err(_), _) if msg.is_empty() => Err(Error::NoMount {
            id: spec.id.clone(),
            log: spec.log.clone(),
        }),
        (Err(source), _) => Err(Error::BadReply {
            id: spec.id.clone(),
            source,
            log: spec.log.clone(),
        }),
    }
}

/// A path naming `name` in `dir` that fits in a socket address (108 bytes): the path itself
/// when short, else one through an open fd of the directory (returned, to be kept open
/// until the socket call is done).
pub(crate) fn socket_path(
    dir: &Path,
    name: &str,
) -> std::io::Result<(PathBuf, Option<std::fs::File>)> {
    let full = dir.join(name);
    if full.as_os_str().len() < 100 {
        return Ok((full, None));
    }
    let d = std::fs::File::open(dir)?;
    let short = PathBuf::from(format!("/proc/self/fd/{}/{name}", d.as_raw_fd()));
    Ok((short, Some(d)))
}

fn connect_control(state_dir: &Path) -> std::io::Result<UnixStream> {
    let (p, _keep) = socket_path(state_dir, SOCKET_NAME)?;
    UnixStream::connect(p)
}

/// Asks the supervisor of `state_dir` to stop its servers and exit, and waits for it.
/// The container's mount is aborted (its files then fail with ENOTCONN). Succeeds when
/// no supervisor runs.
pub fn stop(state_dir: &Path) -> Result<(), Error> {
    let pid = read_state(state_dir).map(|s| s.supervisor_pid).unwrap_or(0);
    let sock = state_dir.join(SOCKET_NAME);
    match connect_control(state_dir) {
        Ok(mut s) => {
            s.set_read_timeout(Some(Duration::from_secs(10)))
                .map_err(|e| Error::Io("socket timeout", e))?;
            match s.write_all(&ControlRequest::Stop.encode()) {
                Ok(()) => {
                    let mut answer = String::new();
                    let _ = s.read_to_string(&mut answer);
                }
                // It is already on its way out (its container is gone): wait for it below.
                Err(e)
                    if matches!(e.raw_os_error(), Some(libc::EPIPE) | Some(libc::ECONNRESET)) => {}
                Err(e) => return Err(Error::Io("send stop", e)),
            }
        }
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::ENOENT) | Some(libc::ECONNREFUSED)
            ) => {}
        Err(e) => {
            return Err(Error::Path {
                what: "connect to supervisor",
                path: sock,
                source: e,
            })
        }
    }
    if pid > 0 {
        let deadline = Instant::now() + Duration::from_secs(10);
        // A pidfd wakes us when it exits (it is not our child: no waitpid); the 5 ms poll
        // stays for a pid reused before we opened it.
        let pidfd = proc::pidfd_open(pid);
        while daemon::pid_alive(pid) {
            if Instant::now() > deadline {
                return Err(Error::Timeout("exit", Duration::from_secs(10)));
            }
            match &pidfd {
                Some(fd) => {
                    let mut fds = [nix::poll::PollFd::new(
                        fd.as_fd(),
                        nix::poll::PollFlags::POLLIN,
                    )];
                    let _ = nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(5u16));
                }
                None => std::thread::sleep(Duration::from_millis(5)),
            }
        }
    }
    Ok(())
}

/// Tells the supervisor of `state_dir` the pid of the container's process (once `porta
/// create` forked it): the supervisor watches it with a pidfd and stops its servers and
/// exits when it is gone.
pub fn watch_container(state_dir: &Path, pid: i32) -> Result<(), Error> {
    let req = ControlRequest::Watch(pid);
    let answer = exchange(state_dir, "watch", &req, None, Duration::from_secs(10))?;
    watched(pid, answer.as_bytes())
}

/// Hands grant `g` (its source's O_PATH descriptor `source`) to the supervisor of
/// `state_dir` (the target's), which serves it in the container from then on.
pub fn grant(
    state_dir: &Path,
    g: &porta_protocol::grants::Grant,
    source: BorrowedFd<'_>,
) -> Result<(), Error> {
    let req = ControlRequest::Grant(Box::new(g.clone()));
    request(state_dir, "grant", &req, Some(source))
}

/// Asks the supervisor of `state_dir` to revoke grant `id`; returns once its servers are
/// gone.
pub fn revoke(state_dir: &Path, id: &str) -> Result<(), Error> {
    let req = ControlRequest::Revoke(id.to_owned());
    request(state_dir, "revoke", &req, None)
}

/// One request (with at most one descriptor) answered `ok` or `failed WHY`.
fn request(
    state_dir: &Path,
    what: &'static str,
    req: &ControlRequest,
    fd: Option<BorrowedFd<'_>>,
) -> Result<(), Error> {
    // Revoking waits for a grant's servers to die (SIGKILL, bounded by the supervisor).
    let answer = exchange(state_dir, what, req, fd, Duration::from_secs(30))?;
    match ControlReply::decode(answer.as_bytes()) {
        Ok(ControlReply::Ok) => Ok(()),
        Ok(ControlReply::Failed(why)) => Err(Error::Refused(why)),
        Ok(other) => Err(Error::Refused(format!(
            "{what}: the supervisor answered {other:?}"
        ))),
        Err(source) => Err(Error::Protocol {
            request: what,
            source,
        }),
    }
}

/// Sends one request (and at most one descriptor) on the control socket and reads the
/// answer to its end.
fn exchange(
    state_dir: &Path,
    what: &'static str,
    req: &ControlRequest,
    fd: Option<BorrowedFd<'_>>,
    timeout: Duration,
) -> Result<String, Error> {
    let sock = state_dir.join(SOCKET_NAME);
    let s = connect_control(state_dir).map_err(|e| Error::Path {
        what: "connect to supervisor",
        path: sock.clone(),
        source: e,
    })?;
    s.set_read_timeout(Some(timeout))
        .map_err(|e| Error::Io("socket timeout", e))?;
    let fds: Vec<RawFd> = fd.iter().map(|f| f.as_raw_fd()).collect();
    porta_sys::scm::send(s.as_raw_fd(), &req.encode(), &fds, libc::MSG_NOSIGNAL)
        .map_err(|e| Error::Io(what, e))?;
    s.shutdown(std::net::Shutdown::Write)
        .map_err(|e| Error::Io(what, e))?;
    let mut answer = String::new();
    (&s).read_to_string(&mut answer)
        .map_err(|e| Error::Io("read supervisor answer", e))?;
    Ok(answer)
}

/// What the supervisor's answer to `watch PID` says.
fn watched(pid: i32, answer: &[u8]) -> Result<(), Error> {
    match ControlReply::decode(answer) {
        Ok(ControlReply::Ok) => Ok(()),
        Ok(ControlReply::NoSuchProcess) => Err(Error::NoSuchProcess(pid)),
        Ok(ControlReply::UnknownRequest) => Err(Error::Refused(format!(
            "watch {pid}: the supervisor does not know the request"
        ))),
        Ok(ControlReply::Failed(why)) => Err(Error::Refused(format!("watch {pid}: {why}"))),
        Err(source) => Err(Error::Protocol {
            request: "watch",
            source,
        }),
    }
}

/// The servers of the container whose state directory is `state_dir`, for `porta state`,
/// as they are now: the recorded state, checked against the processes with pidfds. A
/// server recorded running that is gone says "restarting" while a supervisor lives to
/// replace it; when neither the supervisor nor its successor lives, a server not
/// stopped says "failed" with the cause (a live one goes on serving, with nobody left
/// to replace it).
pub fn servers(state_dir: &Path) -> Result<Vec<ServerStatus>, Error> {
    Ok(live_view(read_state(state_dir)?))
}

fn live_view(st: SupervisorState) -> Vec<ServerStatus> {
    let active = proc::alive(st.supervisor_pid, st.supervisor_start);
    let successor = proc::alive(st.successor_pid, st.successor_start);
    let mut out = st.servers;
    for s in &mut out {
        if s.state != "running" {
            continue;
        }
        let up = proc::alive(s.pid, s.start_time);
        if !active && !successor {
            let what = if st.successor_pid > 0 {
                format!(
                    "supervisor {} and its successor {} are gone",
                    st.supervisor_pid, st.successor_pid
                )
            } else {
                format!(
                    "supervisor {} is gone, with no successor",
                    st.supervisor_pid
                )
            };
            s.state = "failed".into();
            s.error = Some(if up {
                format!(
                    "{what}: nothing replaces the file server {} if it dies",
                    s.pid
                )
            } else {
                format!("{what}, and so is the file server {}", s.pid)
            });
        } else if !up {
            s.state = "restarting".into();
        }
        if !up {
            s.pid = 0;
        }
    }
    out
}

/// The supervisor's record of `state_dir` as it wrote it (`servers.json`), unchecked.
pub fn read_state(state_dir: &Path) -> Result<SupervisorState, Error> {
    let p = state_dir.join(SERVERS_FILE);
    let text = std::fs::read(&p).map_err(|e| Error::Path {
        what: "read",
        path: p.clone(),
        source: e,
    })?;
    SupervisorState::decode(&text).map_err(|e| Error::State(p, e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> LaunchSpec {
        LaunchSpec {
            id: "c1".into(),
            state_dir: "/run/x/c1".into(),
            rootfs: "/b/rootfs".into(),
            passthrough: false,
            host_changes: true,
            transport: porta_protocol::keeper::Transport::Dev,
            server_cgroup_procs: vec![],
            exe: "/proc/self/exe".into(),
            log: "/run/x/c1/supervisor.log".into(),
            api_fd: None,
        }
    }

    fn some_fd() -> Option<OwnedFd> {
        Some(std::fs::File::open("/dev/null").unwrap().into())
    }

    #[test]
    fn each_answer_to_watch_is_its_own_result() {
        assert!(watched(5, b"ok\n").is_ok());
        let e = watched(5, b"error no such process\n").unwrap_err();
        assert!(matches!(e, Error::NoSuchProcess(5)), "{e:?}");
        assert_eq!(
            e.to_string(),
            "supervisor refused to watch process 5: no such process"
        );
        let e = watched(5, b"error unknown command\n").unwrap_err();
        assert!(matches!(e, Error::Refused(_)), "{e:?}");
        for garbled in [&b""[..], b"okay", b"error disk full"] {
            let e = watched(5, garbled).unwrap_err();
            assert!(
                matches!(
                    e,
                    Error::Protocol {
                        request: "watch",
                        ..
                    }
                ),
                "{garbled:?}: {e:?}"
            );
        }
    }

    #[test]
    fn a_ready_reply_with_the_mount_is_a_launch() {
        let l = launched(&spec(), b"ok 1234", some_fd()).unwrap();
        assert_eq!(l.supervisor_pid, 1234);
    }

    #[test]
    fn each_failed_launch_reply_is_its_own_error() {
        let e = launched(&spec(), b"error could not open /dev/fuse", None).unwrap_err();
        assert!(
            matches!(&e, Error::Start { id, msg, .. } if id == "c1" && msg == "could not open /dev/fuse"),
            "{e:?}"
        );
        assert_eq!(
            e.to_string(),
            "supervisor for container c1 failed to start: could not open /dev/fuse (log: /run/x/c1/supervisor.log)"
        );
        for (msg, fd) in [
            (&b""[..], None),
            (&b"ok 77"[..], None),
            (&b""[..], some_fd()),
        ] {
            let e = launched(&spec(), msg, fd).unwrap_err();
            assert!(matches!(e, Error::NoMount { .. }), "{msg:?}: {e:?}");
        }
        let e = launched(&spec(), b"ok pid", some_fd()).unwrap_err();
        assert!(matches!(e, Error::BadReply { .. }), "{e:?}");
        assert_eq!(
            e.to_string(),
            "supervisor for container c1 failed to start: malformed launch reply: bad pid in \"ok pid\" (log: /run/x/c1/supervisor.log)"
        );
    }
}
