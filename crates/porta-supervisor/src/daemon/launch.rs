//! Starting the supervisor's processes: the FUSE connection and mount, the shared state,
//! the keeper (in a user namespace of its own, whose identity maps the supervisor writes)
//! and the first server.

use std::collections::HashMap;
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::unistd::Pid;

use porta_fs::shared::{hdr, Shared};
use porta_protocol::keeper::{Hello, KeeperArgs, MapsReply};
use porta_protocol::supervisor::{LaunchGo, SupervisorArgs as Args};
use porta_protocol::Confinement;

use super::servers::Poison;
use super::{Next, Supervisor};
use crate::backing::Broker;
use crate::proc;
use crate::{Error, SOCKET_NAME};

/// Forks into the cgroup leaf of `join` and execs `cmd` there, as `Command::spawn` would;
/// returns the child's pid once it has exec'd, or what went wrong in the child (joining
/// the leaf, or the exec). The supervisor is single-threaded, as forking requires.
pub(super) fn spawn_joined(
    cmd: &mut Command,
    join: porta_cgroups::join::Join,
) -> Result<i32, Error> {
    use porta_cgroups::join::Forked;
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
    let want = WANT_NOFILE.min(porta_sys::rlimit::nr_open());
    match porta_sys::rlimit::raise_nofile(WANT_NOFILE) {
        Ok(now) => {
            if now.hard < want {
                tracing::debug!(
                    hard = now.hard,
                    want,
                    "cannot raise the descriptor hard limit (no CAP_SYS_RESOURCE): the file server's node table stays within it"
                );
            }
            usize::try_from(now.soft)
                .unwrap_or(usize::MAX)
                .clamp(1024, 1 << 20)
        }
        Err(e) => {
            tracing::debug!("getrlimit(RLIMIT_NOFILE): {e}; assuming 1024 descriptors");
            1024
        }
    }
}

impl Supervisor {
    pub(super) fn start(
        mut a: Args,
        launch_sock: &OwnedFd,
    ) -> Result<Supervisor, (Error, Option<Box<Supervisor>>)> {
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
        // Started ahead of the container's cgroup (`porta create`): everything above needed
        // none; the notifier, the keeper and the servers start in it.
        if a.await_cgroups {
            a.cgroup_procs = await_go(launch_sock).map_err(|e| (e, None))?;
        }
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
            translators: Default::default(),
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
            api: Default::default(),
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
        if let Some(fd) = self.a.api_fd {
            // SAFETY: the launcher handed us this descriptor number; nothing else owns it.
            let l = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
            let _ = porta_sys::fd::set_cloexec(fd, true);
            self.api.listener = Some(l);
        }
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
        // Also in strict mode: translator requests come over it.
        let backing = Some(seqpacket()?);
        let mut args = KeeperArgs::new(fuse, state, theirs.as_raw_fd(), self.a.rootfs.clone());
        args.threads = self.a.threads;
        args.transport = self.a.transport;
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
            args.passthrough = self.a.passthrough;
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
            let _ = porta_sys::fd::set_cloexec(*fd, false);
        }
        let child = spawn_joined(&mut cmd, join);
        for fd in &inherit {
            let _ = porta_sys::fd::set_cloexec(*fd, true);
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
}

/// Reads the launcher's [`LaunchGo`] from the launch socket: the cgroup.procs files the
/// file server's processes join. The launcher gone without one (its `porta create`
/// failed or was killed) is an error, and the supervisor exits.
fn await_go(sock: &OwnedFd) -> Result<Vec<PathBuf>, Error> {
    let mut s = std::fs::File::from(
        sock.try_clone()
            .map_err(|e| Error::Io("duplicate the launch socket", e))?,
    );
    let mut len = [0u8; 4];
    s.read_exact(&mut len).map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => {
            Error::Refused("the launcher went away before the container's cgroup was made".into())
        }
        _ => Error::Io("read the launcher's go", e),
    })?;
    let len = u32::from_le_bytes(len) as usize;
    if len > LaunchGo::MAX_LEN {
        return Err(Error::Args(porta_protocol::Error::Malformed {
            what: "launch go",
            why: format!("{len} bytes, more than {}", LaunchGo::MAX_LEN),
        }));
    }
    let mut body = vec![0u8; len];
    s.read_exact(&mut body)
        .map_err(|e| Error::Io("read the launcher's go", e))?;
    let go = LaunchGo::decode(&body)?;
    tracing::debug!(
        files = go.cgroup_procs.len(),
        "the container's cgroup is made"
    );
    Ok(go.cgroup_procs)
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
