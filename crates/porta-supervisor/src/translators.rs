//! Translators, the supervisor's half: starting the process a file server asks for (in
//! the container's namespaces and cgroup, as the node's owner, with no capabilities,
//! no_new_privs and a seccomp filter), stopping it, and the list `porta state` and
//! `porta translator show` read. The server's half and the wire format:
//! [`porta_fs::translator`].

use std::collections::HashMap;
use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use porta_fs::translator::{
    self as wire, IdMap, StartRequest, BUILTIN_PREFIX, MOUNT_POINT_ARG, OP_ID_MAPS, OP_KILL,
    OP_START, OP_STOP, START_FAILED_UNIQUE,
};
use porta_protocol::supervisor::TranslatorStatus;

use crate::proc;

/// The descriptor number a translator gets its FUSE socket on (`/dev/fd/3`).
pub const TRANSLATOR_FD: RawFd = 3;

/// The PATH a translator's program is looked up in (and gets).
const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Socket buffer size of a translator's socket: a whole 1 MiB READ or WRITE frame.
const SOCK_BUF: i32 = 4 << 20;

/// The translators this container's servers asked for, by pid, and the grants served in
/// this container.
#[derive(Default)]
pub(crate) struct Translators {
    /// pid → pidfd, what it is, and since when it was asked to stop.
    live: HashMap<i32, (OwnedFd, TranslatorStatus, Option<Instant>)>,
    /// The grants into this container, by id.
    grants: HashMap<String, Held>,
    /// A grant's server started since the last [`Translators::take_changed`].
    changed: bool,
}

/// A grant the supervisor holds: the source's handle and the node it is served at.
pub(crate) struct Held {
    /// O_PATH descriptor of the source directory (in the other container's tree).
    pub source: OwnedFd,
    /// O_PATH descriptor of the node in this container's backing tree.
    pub target: OwnedFd,
    /// The record both sides keep.
    pub record: porta_protocol::grants::Grant,
}

/// How long a translator asked to stop (SIGTERM: a libfuse program then flushes and
/// exits) may take before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// The built-in translators' entry point: serves the FUSE connection `fd` with the
/// built-in `name` and its arguments (runs in the translator's process, after the
/// confinement). Returns an errno when it cannot start.
pub type BuiltinFn = fn(name: &str, args: &[String], fd: OwnedFd) -> Result<(), (i32, String)>;

static BUILTIN: std::sync::OnceLock<BuiltinFn> = std::sync::OnceLock::new();

/// Installs the built-in translators (the binary links them in).
pub fn set_builtins(f: BuiltinFn) {
    let _ = BUILTIN.set(f);
}

/// The server of a memory-object grant: serves the file `file` (read-only: only read) on
/// the FUSE connection `fuse` as a file system whose root is that file.
pub type FileServerFn = fn(file: OwnedFd, fuse: OwnedFd, read_only: bool) -> Result<(), String>;

static FILE_SERVER: std::sync::OnceLock<FileServerFn> = std::sync::OnceLock::new();

/// Installs the server of memory-object grants (the binary links it in).
pub fn set_file_server(f: FileServerFn) {
    let _ = FILE_SERVER.set(f);
}

impl Translators {
    /// What `porta state` shows.
    pub fn status(&self) -> Vec<TranslatorStatus> {
        let mut v: Vec<TranslatorStatus> = self
            .live
            .values()
            .filter(|(_, _, stopping)| stopping.is_none())
            .map(|(_, s, _)| s.clone())
            .collect();
        v.sort_by(|a, b| a.path.cmp(&b.path));
        v
    }

    /// Drops the translators that exited (and kills those that overstayed a stop);
    /// true when any exited.
    pub fn reap(&mut self) -> bool {
        for (fd, _, stopping) in self.live.values() {
            if stopping.is_some_and(|t| t.elapsed() > STOP_GRACE) {
                proc::send(fd.as_fd(), libc::SIGKILL);
            }
        }
        let gone: Vec<i32> = self
            .live
            .iter()
            .filter(|(_, (fd, _, _))| proc::wait_exit(fd.as_fd(), 0))
            .map(|(pid, _)| *pid)
            .collect();
        for pid in &gone {
            self.live.remove(pid);
            tracing::info!(pid, "translator exited");
        }
        !gone.is_empty()
    }

    /// Holds a new grant.
    pub fn add_grant(&mut self, held: Held) {
        self.grants.insert(held.record.id.clone(), held);
    }

    /// The grant with this id.
    pub fn grant(&self, id: &str) -> Option<&Held> {
        self.grants.get(id)
    }

    /// The grants held.
    pub fn grants(&self) -> impl Iterator<Item = &Held> {
        self.grants.values()
    }

    /// Lets go of grant `id` and kills its servers, waiting for them to exit; None when
    /// no such grant is held.
    pub fn take_grant(&mut self, id: &str) -> Option<Held> {
        let held = self.grants.remove(id)?;
        let servers: Vec<i32> = self
            .live
            .iter()
            .filter(|(_, (_, st, _))| {
                st.args.first().map(String::as_str) == Some(wire::GRANT_PROGRAM)
                    && st.args.get(1).map(String::as_str) == Some(id)
            })
            .map(|(pid, _)| *pid)
            .collect();
        for pid in servers {
            if let Some((fd, _, _)) = self.live.remove(&pid) {
                proc::send(fd.as_fd(), libc::SIGKILL);
                if !proc::wait_exit(fd.as_fd(), 10_000) {
                    tracing::error!(
                        pid,
                        "a revoked grant's server did not die within 10 s of SIGKILL"
                    );
                }
            }
        }
        Some(held)
    }

    /// Starts the relay of socket grant `id` (the container's process `cpid` gives its
    /// view of the tree, where the socket is bound); returns once it listens.
    pub fn start_socket_proxy(&mut self, id: &str, cpid: i32) -> Result<i32, String> {
        let held = self
            .grants
            .get(id)
            .ok_or_else(|| format!("no grant {id:?} is held"))?;
        let path = held.record.target.path.clone();
        let (parent, name) = match path.rsplit_once('/') {
            Some((p, n)) if !n.is_empty() => (if p.is_empty() { "/" } else { p }, n.to_owned()),
            _ => return Err(format!("{path:?}: no socket name")),
        };
        if cpid <= 0 {
            return Err("the container has no process yet".into());
        }
        let root = std::fs::File::open(format!("/proc/{cpid}/root"))
            .map_err(|e| format!("the container's root: {e}"))?;
        let dir = porta_sys::path::open_in_root(
            std::os::fd::AsFd::as_fd(&root),
            parent,
            libc::O_PATH | libc::O_DIRECTORY,
        )
        .map_err(|e| format!("{parent} in the container: {e}"))?;
        let st = nix::sys::stat::fstat(held.source.as_raw_fd())
            .map_err(|e| format!("the source socket: {e}"))?;
        let source = held
            .source
            .try_clone()
            .map_err(|e| format!("dup the handle: {e}"))?;
        let (rd, wr) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))?;
        let plan = crate::proxy::Plan {
            dir,
            name,
            mode: st.st_mode,
            source,
            report: wr,
        };
        // SAFETY: the supervisor is single-threaded; the child relays and ends in _exit.
        let child = match unsafe { nix::unistd::fork() } {
            Err(e) => return Err(format!("fork: {e}")),
            Ok(nix::unistd::ForkResult::Child) => crate::proxy::run(plan),
            Ok(nix::unistd::ForkResult::Parent { child }) => child,
        };
        drop(plan);
        let pid = child.as_raw();
        let fd = proc::pidfd_open(pid).ok_or("the socket relay died at once")?;
        // Bounded: binding goes through the container's file server, which may wait for
        // this supervisor (a translator on the way).
        let mut fds = [nix::poll::PollFd::new(
            std::os::fd::AsFd::as_fd(&rd),
            nix::poll::PollFlags::POLLIN,
        )];
        let _ = nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(5000u16));
        let mut buf = [0u8; 512];
        let n = nix::unistd::read(rd.as_raw_fd(), &mut buf).unwrap_or(0);
        let said = String::from_utf8_lossy(&buf[..n]).to_string();
        if said != "ok" {
            proc::send(fd.as_fd(), libc::SIGKILL);
            let _ = proc::wait_exit(fd.as_fd(), 5000);
            return Err(if said.is_empty() {
                "the socket relay did not start".into()
            } else {
                said
            });
        }
        let status = TranslatorStatus {
            pid,
            path: path.clone(),
            args: vec![wire::GRANT_PROGRAM.to_owned(), id.to_owned()],
            uid: 0,
            gid: 0,
            passive: false,
        };
        tracing::info!(pid, path = %path, grant = id, "socket grant relay started");
        self.live.insert(pid, (fd, status, None));
        self.changed = true;
        Ok(pid)
    }

    /// The socket grants whose relay is not running (it died): to start again.
    pub fn socket_grants_without_relay(&self) -> Vec<String> {
        self.grants
            .values()
            .filter(|h| h.record.kind == porta_protocol::grants::GrantKind::Socket)
            .filter(|h| {
                !self.live.values().any(|(_, st, stopping)| {
                    stopping.is_none() && st.args.get(1) == Some(&h.record.id)
                })
            })
            .map(|h| h.record.id.clone())
            .collect()
    }

    /// Whether a grant's server started since the last call (the successor supervisor
    /// must then be forked anew to know it).
    pub fn take_changed(&mut self) -> bool {
        std::mem::take(&mut self.changed)
    }

    /// Kills every translator (the container is going away).
    pub fn kill_all(&mut self) {
        for (fd, _, _) in self.live.values() {
            proc::send(fd.as_fd(), libc::SIGKILL);
        }
        self.live.clear();
    }

    /// Handles one translator message from the server on `sock`; true when it was one
    /// (start, stop or id maps).
    pub fn handle(&mut self, sock: RawFd, msg: &[u8], container_pid: i32) -> bool {
        if msg.len() < 16 {
            return false;
        }
        let op = u32::from_ne_bytes([msg[0], msg[1], msg[2], msg[3]]);
        match op {
            OP_START => {
                let Some(req) = StartRequest::decode(msg) else {
                    tracing::warn!("malformed translator start request from the file server");
                    return true;
                };
                let answer = match self.start(&req, container_pid) {
                    Ok((ours, pid)) => {
                        let a = wire::encode_answer(req.tag, 0, pid);
                        let r =
                            porta_sys::scm::send(sock, &a, &[ours.as_raw_fd()], libc::MSG_NOSIGNAL);
                        if r.is_err() {
                            self.stop(pid, true);
                        }
                        return true;
                    }
                    Err((e, why)) => {
                        tracing::warn!(args = ?req.args, path = %req.path, errno = e, "translator not started: {why}");
                        wire::encode_answer(req.tag, -e, 0)
                    }
                };
                let _ = porta_sys::scm::send(sock, &answer, &[], libc::MSG_NOSIGNAL);
            }
            OP_STOP | OP_KILL => {
                let pid = i32::from_ne_bytes([msg[4], msg[5], msg[6], msg[7]]);
                self.stop(pid, op == OP_KILL);
            }
            OP_ID_MAPS => {
                let tag = u64::from_ne_bytes(msg[8..16].try_into().unwrap_or([0; 8]));
                let read = |f: &str| {
                    std::fs::read_to_string(format!("/proc/{container_pid}/{f}"))
                        .unwrap_or_default()
                };
                let (mut out, body) = if container_pid > 0 {
                    let body = wire::encode_id_maps(&read("uid_map"), &read("gid_map"));
                    (
                        wire::encode_answer(tag, 0, body.len() as i32).to_vec(),
                        body,
                    )
                } else {
                    (
                        wire::encode_answer(tag, -libc::ESRCH, 0).to_vec(),
                        Vec::new(),
                    )
                };
                out.extend_from_slice(&body);
                let _ = porta_sys::scm::send(sock, &out, &[], libc::MSG_NOSIGNAL);
            }
            _ => return false,
        }
        true
    }

    /// Stops translator `pid` (only one of ours): SIGTERM, SIGKILL after [`STOP_GRACE`]
    /// or at once (`kill`: a hung one).
    fn stop(&mut self, pid: i32, kill: bool) {
        if let Some((fd, _, stopping)) = self.live.get_mut(&pid) {
            proc::send(fd.as_fd(), if kill { libc::SIGKILL } else { libc::SIGTERM });
            stopping.get_or_insert_with(Instant::now);
        }
    }

    /// Starts the server of the grant a node carries: a confined file server of the
    /// source's handle, in the supervisor's namespaces (the host's ids), in the servers'
    /// cgroup leaf. EACCES when the grant is not held (revoked).
    fn start_grant(&mut self, req: &StartRequest) -> Result<(OwnedFd, i32), (i32, String)> {
        let id = req.args.get(1).map(String::as_str).unwrap_or("");
        let held = self.grants.get(id).ok_or((
            libc::EACCES,
            format!("no grant {id:?} is held for this container (revoked?)"),
        ))?;
        let read_only = held.record.read_only;
        let kind = held.record.kind;
        let source = held.source.try_clone().map_err(|e| {
            (
                e.raw_os_error().unwrap_or(libc::EMFILE),
                "dup the grant's handle".to_string(),
            )
        })?;
        let (ours, theirs) = fuse_socketpair()?;
        // SAFETY: the supervisor is single-threaded; the child serves and ends in _exit.
        let child = match unsafe { nix::unistd::fork() } {
            Err(e) => return Err((e as i32, "fork".into())),
            Ok(nix::unistd::ForkResult::Child) => grant_server(theirs, source, kind, read_only),
            Ok(nix::unistd::ForkResult::Parent { child }) => child,
        };
        drop(theirs);
        drop(source);
        let pid = child.as_raw();
        let fd =
            proc::pidfd_open(pid).ok_or((libc::ESRCH, "the grant's server died at once".into()))?;
        let status = TranslatorStatus {
            pid,
            path: req.path.clone(),
            args: req.args.clone(),
            uid: 0,
            gid: 0,
            passive: true,
        };
        tracing::info!(pid, path = %req.path, grant = id, read_only, "grant server started");
        self.live.insert(pid, (fd, status, None));
        self.changed = true;
        Ok((ours, pid))
    }

    fn start(&mut self, req: &StartRequest, cpid: i32) -> Result<(OwnedFd, i32), (i32, String)> {
        if req.flags & wire::FLAG_GRANT != 0 {
            return self.start_grant(req);
        }
        if cpid <= 0 {
            return Err((libc::ESRCH, "the container has no process yet".into()));
        }
        let read =
            |f: &str| std::fs::read_to_string(format!("/proc/{cpid}/{f}")).unwrap_or_default();
        let (umap, gmap) = (
            IdMap::parse(&read("uid_map")),
            IdMap::parse(&read("gid_map")),
        );
        let (uid, gid) = (umap.to_inside(req.uid), gmap.to_inside(req.gid));
        if uid == wire::OVERFLOW_ID && req.uid != wire::OVERFLOW_ID {
            return Err((
                libc::EPERM,
                format!("uid {} is not mapped in the container", req.uid),
            ));
        }
        if !req.path.starts_with('/') || req.path.split('/').any(|c| c == "..") {
            return Err((libc::EINVAL, format!("bad node path {:?}", req.path)));
        }
        let cwd = match req.path.rsplit_once('/') {
            Some(("", _)) | None => "/".to_string(),
            Some((dir, _)) => dir.to_string(),
        };
        let pidfd = proc::pidfd_open(cpid)
            .ok_or((libc::ESRCH, "the container's process is gone".into()))?;
        let joins = namespaces_to_join(cpid);
        let (ours, theirs) = fuse_socketpair()?;
        let (rd, wr) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|e| (e as i32, "pipe".into()))?;
        let null = std::fs::File::open("/dev/null").map_err(|e| {
            (
                e.raw_os_error().unwrap_or(libc::EIO),
                "open /dev/null".into(),
            )
        })?;
        let plan = Plan {
            pidfd: pidfd.as_raw_fd(),
            joins,
            uid,
            gid,
            cwd,
            args: req.args.clone(),
            sock: theirs.as_raw_fd(),
            null: null.as_raw_fd(),
            report: wr.as_raw_fd(),
        };
        // SAFETY: the supervisor is single-threaded; the child only makes system calls
        // and ends in exec or _exit.
        let child = match unsafe { nix::unistd::fork() } {
            Err(e) => return Err((e as i32, "fork".into())),
            Ok(nix::unistd::ForkResult::Child) => plan.intermediate(),
            Ok(nix::unistd::ForkResult::Parent { child }) => child,
        };
        drop(wr);
        drop(theirs);
        let mut b = [0u8; 4];
        let got = nix::unistd::read(rd.as_raw_fd(), &mut b);
        let _ = nix::sys::wait::waitpid(child, None);
        let pid = match got {
            Ok(4) => i32::from_ne_bytes(b),
            _ => {
                return Err((
                    libc::EIO,
                    "the translator's starter failed (see the log above)".into(),
                ))
            }
        };
        let fd =
            proc::pidfd_open(pid).ok_or((libc::ESRCH, "the translator died at once".into()))?;
        let status = TranslatorStatus {
            pid,
            path: req.path.clone(),
            args: req.args.clone(),
            uid,
            gid,
            passive: req.flags & wire::FLAG_PASSIVE != 0,
        };
        tracing::info!(pid, path = %req.path, args = ?req.args, uid, gid, "translator started");
        self.live.insert(pid, (fd, status, None));
        Ok((ours, pid))
    }
}

/// The grant's server process (a child of the supervisor): its signals back to the
/// defaults, every descriptor but its two closed, then the confined file server of
/// `source` on `sock`.
fn grant_server(
    sock: OwnedFd,
    source: OwnedFd,
    kind: porta_protocol::grants::GrantKind,
    read_only: bool,
) -> ! {
    detach_child(&[sock.as_raw_fd(), source.as_raw_fd()]);
    let served = match kind {
        porta_protocol::grants::GrantKind::Directory => {
            porta_fs::grant::serve_grant(sock, source, read_only).map_err(|e| e.to_string())
        }
        porta_protocol::grants::GrantKind::Memfd => match FILE_SERVER.get() {
            Some(serve) => porta_fs::grant::confine_without_tree()
                .map_err(|e| e.to_string())
                .and_then(|()| serve(source, sock, read_only)),
            None => Err("no server of memory objects in this build".into()),
        },
        porta_protocol::grants::GrantKind::Socket => {
            Err("a socket grant is relayed, not served as a file system".into())
        }
    };
    let code = match served {
        Ok(()) => 0,
        Err(e) => {
            tracing::warn!(error = %e, "grant server failed");
            1
        }
    };
    // SAFETY: leave at once, without the supervisor's destructors.
    unsafe { libc::_exit(code) }
}

/// A translator's FUSE connection: a SOCK_SEQPACKET pair whose buffers hold a whole
/// frame (the server's end, the translator's end).
fn fuse_socketpair() -> Result<(OwnedFd, OwnedFd), (i32, String)> {
    let (ours, theirs) = nix::sys::socket::socketpair(
        nix::sys::socket::AddressFamily::Unix,
        nix::sys::socket::SockType::SeqPacket,
        None,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
    )
    .map_err(|e| (e as i32, "socketpair".to_string()))?;
    for s in [&ours, &theirs] {
        big_buffers(s.as_raw_fd());
    }
    Ok((ours, theirs))
}

/// The first steps of a server forked from the supervisor: signals unblocked (the
/// supervisor blocks them for its signalfd), a session of its own, every descriptor but
/// stdio and `keep` closed.
pub(crate) fn detach_child(keep: &[RawFd]) {
    let _ = nix::sys::signal::sigprocmask(
        nix::sys::signal::SigmaskHow::SIG_SETMASK,
        Some(&nix::sys::signal::SigSet::empty()),
        None,
    );
    // SAFETY: a single-threaded child; making itself a session leader detaches it from
    // the supervisor's terminal signals.
    unsafe { libc::setsid() };
    let mut all = vec![0, 1, 2];
    all.extend_from_slice(keep);
    let _ = porta_sys::fd::close_all_but(&all);
}

fn big_buffers(fd: RawFd) {
    for opt in [libc::SO_SNDBUFFORCE, libc::SO_RCVBUFFORCE] {
        // SAFETY: a valid int option value for our own socket.
        let r = unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                opt,
                (&SOCK_BUF as *const i32).cast(),
                4,
            )
        };
        if r != 0 {
            tracing::debug!("translator socket buffers not enlarged (no CAP_NET_ADMIN)");
        }
    }
}

/// The namespace types of `pid` that differ from ours (setns flags).
fn namespaces_to_join(pid: i32) -> i32 {
    let mut flags = 0;
    for (name, flag) in [
        ("user", libc::CLONE_NEWUSER),
        ("mnt", libc::CLONE_NEWNS),
        ("pid", libc::CLONE_NEWPID),
        ("ipc", libc::CLONE_NEWIPC),
        ("uts", libc::CLONE_NEWUTS),
        ("net", libc::CLONE_NEWNET),
        ("cgroup", libc::CLONE_NEWCGROUP),
        ("time", libc::CLONE_NEWTIME),
    ] {
        let ours = std::fs::read_link(format!("/proc/self/ns/{name}")).ok();
        let theirs = std::fs::read_link(format!("/proc/{pid}/ns/{name}")).ok();
        if theirs.is_some() && ours != theirs {
            flags |= flag;
        }
    }
    flags
}

/// What the child does, prepared in the parent.
struct Plan {
    pidfd: RawFd,
    joins: i32,
    uid: u32,
    gid: u32,
    cwd: String,
    args: Vec<String>,
    sock: RawFd,
    null: RawFd,
    report: RawFd,
}

impl Plan {
    /// The first child: joins the container's namespaces, forks the translator (so it
    /// is in the container's PID namespace), reports its pid and exits.
    fn intermediate(self) -> ! {
        if self.joins != 0 {
            if let Err(e) = nix::sched::setns(
                // SAFETY: the parent's pidfd, open for the child's life.
                unsafe { std::os::fd::BorrowedFd::borrow_raw(self.pidfd) },
                nix::sched::CloneFlags::from_bits_retain(self.joins),
            ) {
                tracing::warn!("translator: join the container's namespaces: {e}");
                fail(self.sock, e as i32);
            }
        }
        // SAFETY: single-threaded child.
        match unsafe { nix::unistd::fork() } {
            Ok(nix::unistd::ForkResult::Child) => self.translator(),
            Ok(nix::unistd::ForkResult::Parent { child }) => {
                let _ = nix::unistd::write(
                    // SAFETY: the report pipe, open in this process.
                    unsafe { std::os::fd::BorrowedFd::borrow_raw(self.report) },
                    &child.as_raw().to_ne_bytes(),
                );
                // SAFETY: leave at once, as a forked child should.
                unsafe { libc::_exit(0) }
            }
            Err(e) => fail(self.sock, e as i32),
        }
    }

    /// The translator: confined, then the program (or the built-in).
    fn translator(self) -> ! {
        let sock = self.sock;
        if let Err((e, what)) = self.confine() {
            tracing::warn!(
                "translator: {what}: {}",
                std::io::Error::from_raw_os_error(e)
            );
            fail(sock, e);
        }
        let prog = self.args[0].clone();
        let args: Vec<String> = self
            .args
            .iter()
            .map(|a| {
                if a == MOUNT_POINT_ARG {
                    format!("/dev/fd/{TRANSLATOR_FD}")
                } else {
                    a.clone()
                }
            })
            .collect();
        if let Some(name) = prog.strip_prefix(BUILTIN_PREFIX) {
            let Some(run) = BUILTIN.get() else {
                fail(TRANSLATOR_FD, libc::ENOSYS);
            };
            // SAFETY: descriptor 3 was set up by `confine` and is owned here alone.
            let fd = unsafe { OwnedFd::from_raw_fd(TRANSLATOR_FD) };
            let dup = nix::unistd::dup(fd.as_raw_fd()).ok();
            match run(name, &args[1..], fd) {
                Ok(()) => {
                    // SAFETY: leave at once.
                    unsafe { libc::_exit(0) }
                }
                Err((e, why)) => {
                    tracing::warn!("translator {prog}: {why}");
                    fail(dup.unwrap_or(-1), e);
                }
            }
        }
        let c = |s: &str| CString::new(s).unwrap_or_default();
        let argv: Vec<CString> = args.iter().map(|a| c(a)).collect();
        let env = [c(&format!("PATH={PATH}")), c("HOME=/")];
        let path = if prog.contains('/') {
            prog.clone()
        } else {
            // As execvp, but a name found nowhere is ENOENT whatever the PATH holds.
            match PATH
                .split(':')
                .map(|d| format!("{d}/{prog}"))
                .find(|p| std::fs::metadata(p).is_ok_and(|m| m.is_file()))
            {
                Some(p) => p,
                None => {
                    tracing::warn!("translator: {prog} not found in {PATH}");
                    fail(TRANSLATOR_FD, libc::ENOENT)
                }
            }
        };
        let e = nix::unistd::execve(&c(&path), &argv, &env)
            .err()
            .map_or(libc::ENOEXEC, |e| e as i32);
        tracing::warn!(
            "translator: exec {prog}: {}",
            std::io::Error::from_raw_os_error(e)
        );
        fail(TRANSLATOR_FD, e)
    }

    /// Descriptors, directory, identity, capabilities, no_new_privs, seccomp.
    fn confine(&self) -> Result<(), (i32, &'static str)> {
        let errno = |what: &'static str| move |e: nix::errno::Errno| (e as i32, what);
        // SAFETY: plain dup2/close_range on descriptors of this process.
        unsafe {
            if libc::dup2(self.sock, TRANSLATOR_FD) < 0
                || libc::dup2(self.null, 0) < 0
                || libc::fcntl(TRANSLATOR_FD, libc::F_SETFD, 0) < 0
            {
                return Err((nix::errno::Errno::last_raw(), "set up descriptors"));
            }
            libc::syscall(libc::SYS_close_range, TRANSLATOR_FD as u32 + 1, u32::MAX, 0);
        }
        nix::unistd::chdir("/").map_err(errno("enter the container's root"))?;
        nix::unistd::chdir(self.cwd.as_str())
            .map_err(errno("enter the translated node's directory"))?;
        nix::unistd::setgroups(&[]).map_err(errno("drop supplementary groups"))?;
        let g = nix::unistd::Gid::from_raw(self.gid);
        let u = nix::unistd::Uid::from_raw(self.uid);
        nix::unistd::setresgid(g, g, g).map_err(errno("set the group id"))?;
        nix::unistd::setresuid(u, u, u).map_err(errno("set the user id"))?;
        drop_capabilities().map_err(|e| (e, "drop capabilities"))?;
        seccomp().map_err(|e| (e, "install the seccomp filter"))?;
        Ok(())
    }
}

/// Tells the server on `sock` why the translator did not start, then exits.
fn fail(sock: RawFd, errno: i32) -> ! {
    let mut m = [0u8; 16];
    m[..4].copy_from_slice(&16u32.to_ne_bytes());
    m[4..8].copy_from_slice(&(-errno).to_ne_bytes());
    m[8..].copy_from_slice(&START_FAILED_UNIQUE.to_ne_bytes());
    if sock >= 0 {
        // SAFETY: a plain write of a local buffer.
        unsafe { libc::write(sock, m.as_ptr().cast(), m.len()) };
        // Take the server's INIT (sent as soon as the process exists) before exiting: a
        // socket closed with unread data resets its peer, which would then lose the
        // message above.
        let mut p = libc::pollfd {
            fd: sock,
            events: libc::POLLIN,
            revents: 0,
        };
        let mut buf = vec![0u8; 64 * 1024];
        // SAFETY: one valid pollfd; a read into a local buffer.
        unsafe {
            if libc::poll(&mut p, 1, 2000) > 0 {
                libc::read(sock, buf.as_mut_ptr().cast(), buf.len());
            }
        }
    }
    // SAFETY: leave at once.
    unsafe { libc::_exit(127) }
}

/// Empties every capability set (bounding and ambient included) and sets no_new_privs.
fn drop_capabilities() -> Result<(), i32> {
    // SAFETY: plain prctl calls and capset with a valid header and data array.
    unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        );
        for cap in 0..64 {
            if libc::prctl(libc::PR_CAPBSET_READ, cap, 0, 0, 0) < 0 {
                break;
            }
            libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0);
        }
        let mut hdr: [u32; 2] = [0x2008_0522, 0];
        let data = [0u32; 6];
        if libc::syscall(libc::SYS_capset, hdr.as_mut_ptr(), data.as_ptr()) < 0 {
            return Err(nix::errno::Errno::last_raw());
        }
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0 {
            return Err(nix::errno::Errno::last_raw());
        }
    }
    Ok(())
}

/// System calls a translator never gets (EPERM): mounting, namespaces, kernel modules and
/// keys, tracing other processes, BPF and the like.
const DENIED: &[&str] = &[
    "mount",
    "umount2",
    "pivot_root",
    "chroot",
    "unshare",
    "setns",
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    "move_mount",
    "open_tree",
    "mount_setattr",
    "ptrace",
    "process_vm_writev",
    "process_vm_readv",
    "kexec_load",
    "kexec_file_load",
    "init_module",
    "finit_module",
    "delete_module",
    "bpf",
    "perf_event_open",
    "keyctl",
    "add_key",
    "request_key",
    "open_by_handle_at",
    "name_to_handle_at",
    "swapon",
    "swapoff",
    "reboot",
    "syslog",
    "acct",
    "quotactl",
    "settimeofday",
    "clock_settime",
    "clock_adjtime",
    "adjtimex",
    "iopl",
    "ioperm",
    "userfaultfd",
    "lookup_dcookie",
    "vhangup",
    "personality",
];

fn seccomp() -> Result<(), i32> {
    use libseccomp::{ScmpAction, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext, ScmpSyscall};
    let e = |_| libc::EINVAL;
    let mut f = ScmpFilterContext::new(ScmpAction::Allow).map_err(e)?;
    for name in DENIED {
        if let Ok(sc) = ScmpSyscall::from_name(name) {
            f.add_rule(ScmpAction::Errno(libc::EPERM), sc).map_err(e)?;
        }
    }
    let ns = (libc::CLONE_NEWNS
        | libc::CLONE_NEWUSER
        | libc::CLONE_NEWPID
        | libc::CLONE_NEWNET
        | libc::CLONE_NEWUTS
        | libc::CLONE_NEWIPC
        | libc::CLONE_NEWCGROUP) as u64;
    if let Ok(clone) = ScmpSyscall::from_name("clone") {
        for bit in (0..64).map(|b| 1u64 << b).filter(|b| ns & b != 0) {
            f.add_rule_conditional(
                ScmpAction::Errno(libc::EPERM),
                clone,
                &[ScmpArgCompare::new(0, ScmpCompareOp::MaskedEqual(bit), bit)],
            )
            .map_err(e)?;
        }
    }
    if let Ok(clone3) = ScmpSyscall::from_name("clone3") {
        // Its flags are behind a pointer: glibc falls back to clone on ENOSYS.
        f.add_rule(ScmpAction::Errno(libc::ENOSYS), clone3)
            .map_err(e)?;
    }
    f.load().map_err(e)
}
