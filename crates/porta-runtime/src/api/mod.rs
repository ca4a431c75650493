//! The container API: the server behind a container's API socket (`porta api`, started
//! and kept alive by the container's supervisor), and the client `porta` uses inside a
//! container.
//!
//! The server answers each connection in a thread of its own, with limits: at most
//! [`MAX_CONNECTIONS`] at once and [`MAX_PER_UID`] of one user (more are answered EBUSY
//! and closed), a frame of at most
//! [`api::MAX_FRAME`] bytes and [`api::MAX_FDS`] descriptors, and a connection that says
//! nothing for [`IDLE_TIMEOUT`] is closed: a stuck or hostile client holds one thread and
//! nothing else. Malformed requests are answered with an error and the connection closed.
//!
//! Who asks is the kernel's word: SO_PEERCRED (pid, uid, gid as the host sees them) and
//! the peer's pidfd (SO_PEERPIDFD where the kernel has it, Linux 6.5+; else a pidfd
//! opened from the pid and checked against the pid's start time). A peer whose pid
//! namespace is not the container's is refused. The caller is the container's
//! **superuser** when its host uid is the one the container's user namespace maps to 0
//! (or 0 when the container has no user namespace).

pub mod client;
pub mod nested;

use std::collections::HashMap;
use std::ffi::OsString;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use porta_supervisor::protocol::api::{self, path_components, Reply, Request};
use porta_supervisor::protocol::objects::{Detail, Tree};

use crate::objects;

/// Most connections served at once.
pub const MAX_CONNECTIONS: usize = 64;
/// Most connections of one user (host uid) served at once: one user's stuck or hostile
/// clients leave room for the others.
pub const MAX_PER_UID: usize = 16;
/// How long a connection may stay silent (or a reply unread) before it is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Who is on the other end of a connection, as the kernel tells it.
#[derive(Debug)]
pub struct Caller {
    /// Its pid on the host.
    pub pid: i32,
    /// Its uid on the host.
    pub uid: u32,
    /// Its gid on the host.
    pub gid: u32,
    /// It is the container's superuser (see the module's documentation).
    pub superuser: bool,
    /// A pidfd of it.
    pub pidfd: OwnedFd,
}

/// The container an API server serves.
#[derive(Debug, Clone)]
pub struct Served {
    /// The container's id.
    pub id: String,
    /// Its state directory.
    pub state_dir: PathBuf,
}

/// `porta api --state-dir DIR --listen-fd N`: serves the API socket inherited as
/// descriptor N until killed. Returns the exit code.
pub fn main(args: &[OsString]) -> i32 {
    let mut state_dir = None;
    let mut fd: Option<RawFd> = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.to_str() {
            Some("--state-dir") => state_dir = it.next().map(PathBuf::from),
            Some("--listen-fd") => fd = it.next().and_then(|v| v.to_str()?.parse().ok()),
            _ => {
                eprintln!("porta api: unknown argument {a:?}");
                return 2;
            }
        }
    }
    let (Some(state_dir), Some(fd)) = (state_dir, fd) else {
        eprintln!("porta api: --state-dir DIR and --listen-fd N are required");
        return 2;
    };
    let is_socket =
        nix::sys::stat::fstat(fd).is_ok_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFSOCK);
    if fd < 3 || !is_socket {
        eprintln!("porta api: --listen-fd {fd} is not an inherited socket");
        return 2;
    }
    let Some(id) = state_dir
        .file_name()
        .and_then(|n| n.to_str())
        .map(String::from)
    else {
        eprintln!("porta api: {} names no container", state_dir.display());
        return 2;
    };
    // SAFETY: the supervisor handed us this descriptor number; nothing else owns it.
    let listener = unsafe { OwnedFd::from_raw_fd(fd) };
    let _ = porta_sys::fd::set_cloexec(listener.as_raw_fd(), true);
    let served = Arc::new(Served { id, state_dir });
    tracing::info!(id = %served.id, pid = std::process::id(), "API server serving");
    serve(listener, served)
}

/// Connections open, in all and by host uid.
/// The condition variable is signalled whenever a connection ends.
type Counts = Arc<(Mutex<(usize, HashMap<u32, usize>)>, Condvar)>;

/// One connection's place in [`Counts`], given back on drop.
struct Slot {
    counts: Counts,
    uid: u32,
}

impl Slot {
    /// A place for a connection of `uid`, unless the limits are reached.
    fn take(counts: &Counts, uid: u32) -> Option<Slot> {
        let mut c = counts.0.lock().unwrap_or_else(|p| p.into_inner());
        let mine = c.1.get(&uid).copied().unwrap_or(0);
        if c.0 >= MAX_CONNECTIONS || mine >= MAX_PER_UID {
            return None;
        }
        c.0 += 1;
        c.1.insert(uid, mine + 1);
        Some(Slot {
            counts: counts.clone(),
            uid,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut c = self.counts.0.lock().unwrap_or_else(|p| p.into_inner());
        c.0 = c.0.saturating_sub(1);
        if let Some(n) = c.1.get_mut(&self.uid) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                c.1.remove(&self.uid);
            }
        }
        self.counts.1.notify_all();
    }
}

/// A pidfd of this process's parent (the supervisor that started it); None when it is
/// already gone.
fn parent_pidfd() -> Option<OwnedFd> {
    let ppid = nix::unistd::getppid().as_raw();
    let fd = porta_sys::pidfd::open(ppid).ok()?;
    // Still our parent after the open: the pidfd names the supervisor, not a reused pid.
    (nix::unistd::getppid().as_raw() == ppid).then_some(fd)
}

/// Waits until every connection has ended (each is bounded by the idle timeout).
fn drain(counts: &Counts) {
    let mut c = counts.0.lock().unwrap_or_else(|p| p.into_inner());
    while c.0 > 0 {
        c = counts.1.wait(c).unwrap_or_else(|p| p.into_inner());
    }
}

/// Accepts connections on `listener`, one thread each, until the supervisor that started
/// this server dies: then it accepts no more (the connections waiting are left to the
/// server the successor starts), finishes the ones it has, and exits.
fn serve(listener: OwnedFd, served: Arc<Served>) -> i32 {
    let counts: Counts = Arc::default();
    let Some(parent) = parent_pidfd() else {
        tracing::info!("the supervisor is gone; not serving");
        return 0;
    };
    // Non-blocking, so that a connection another server took meanwhile does not block
    // this one (only servers of this container share the socket; the supervisor never
    // accepts on it).
    let _ = porta_sys::fd::set_nonblocking(listener.as_raw_fd());
    loop {
        let mut fds = [
            nix::poll::PollFd::new(listener.as_fd(), nix::poll::PollFlags::POLLIN),
            nix::poll::PollFd::new(parent.as_fd(), nix::poll::PollFlags::POLLIN),
        ];
        match nix::poll::poll(&mut fds, nix::poll::PollTimeout::NONE) {
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => {
                tracing::error!(error = %e, "poll on the API socket failed; exiting");
                return 1;
            }
        }
        let ready = |f: &nix::poll::PollFd<'_>| f.revents().is_some_and(|r| !r.is_empty());
        if ready(&fds[1]) {
            tracing::info!("the supervisor died; finishing the open connections, then exiting");
            drain(&counts);
            return 0;
        }
        if !ready(&fds[0]) {
            continue;
        }
        // SAFETY: accept4 on our listening socket with no address buffer.
        let c = unsafe {
            libc::accept4(
                listener.as_raw_fd(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_CLOEXEC,
            )
        };
        if c < 0 {
            let e = std::io::Error::last_os_error();
            match e.raw_os_error() {
                Some(
                    libc::EINTR
                    | libc::EAGAIN
                    | libc::ECONNABORTED
                    | libc::EMFILE
                    | libc::ENFILE
                    | libc::ENOBUFS
                    | libc::ENOMEM,
                ) => {
                    if e.raw_os_error() == Some(libc::EAGAIN) {
                        continue;
                    }
                    tracing::warn!(error = %e, "accept on the API socket");
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
                    ) {
                        // Let connections end and give their descriptors back.
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    continue;
                }
                _ => {
                    tracing::error!(error = %e, "the API socket failed; exiting");
                    return 1;
                }
            }
        }
        // SAFETY: accept4 returned a new descriptor that nothing else owns.
        let conn = unsafe { OwnedFd::from_raw_fd(c) };
        let uid = nix::sys::socket::getsockopt(&conn, nix::sys::socket::sockopt::PeerCredentials)
            .map(|c| c.uid())
            .unwrap_or(u32::MAX);
        let Some(slot) = Slot::take(&counts, uid) else {
            send_reply(
                &conn,
                &Reply::error(
                    libc::EBUSY,
                    format!(
                        "too many connections at once ({MAX_PER_UID} a user, {MAX_CONNECTIONS} in \
                         all); try again"
                    ),
                ),
                None,
            );
            continue;
        };
        let served = served.clone();
        let spawned = std::thread::Builder::new()
            .name("api-conn".into())
            .spawn(move || {
                connection(&conn, &served);
                drop(slot);
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "could not start a thread for an API connection");
        }
    }
}

/// The errno and message of an error reply.
fn err(code: i32, msg: impl Into<String>) -> Reply {
    Reply::error(code, msg)
}

fn send_reply(conn: &OwnedFd, r: &Reply, fd: Option<RawFd>) {
    let frame = r.encode();
    if let Err(e) =
        porta_sys::scm::send(conn.as_raw_fd(), &frame, fd.as_slice(), libc::MSG_NOSIGNAL)
    {
        tracing::debug!(error = %e, "API reply not delivered");
    }
}

/// Sends a last reply and ends the connection: no more requests are read, and what
/// was sent meanwhile is dropped here (a close with unread messages would make the peer's
/// next read fail with ECONNRESET before it reads the reply).
fn hang_up(conn: &OwnedFd, r: &Reply) {
    send_reply(conn, r, None);
    let _ = nix::sys::socket::shutdown(conn.as_raw_fd(), nix::sys::socket::Shutdown::Write);
    let mut buf = [0u8; 64];
    // Bounded: a peer cannot keep this thread here.
    for _ in 0..64 {
        let mut slots: [Option<OwnedFd>; api::MAX_FDS + 1] = Default::default();
        match porta_sys::scm::recv(conn.as_raw_fd(), &mut buf, libc::MSG_DONTWAIT, &mut slots) {
            Ok(g) if g.len > 0 || g.flags & libc::MSG_TRUNC != 0 => continue,
            _ => break,
        }
    }
}

/// Serves one connection: identifies the peer, then answers its requests in order until
/// it hangs up, goes silent, or sends something malformed.
fn connection(conn: &OwnedFd, served: &Served) {
    let timeout = nix::sys::time::TimeVal::new(IDLE_TIMEOUT.as_secs() as _, 0);
    let _ = nix::sys::socket::setsockopt(conn, nix::sys::socket::sockopt::ReceiveTimeout, &timeout);
    let _ = nix::sys::socket::setsockopt(conn, nix::sys::socket::sockopt::SendTimeout, &timeout);
    let mut buf = vec![0u8; api::MAX_FRAME + 1];
    let caller = match identify(conn, served) {
        Ok(c) => c,
        Err(r) => {
            // Answered once it asks: a reply before the request would be lost when the
            // connection closes with the request unread.
            let mut slots: [Option<OwnedFd>; api::MAX_FDS + 1] = Default::default();
            if porta_sys::scm::recv(conn.as_raw_fd(), &mut buf, 0, &mut slots).is_ok() {
                hang_up(conn, &r);
            }
            return;
        }
    };
    loop {
        let mut slots: [Option<OwnedFd>; api::MAX_FDS + 1] = Default::default();
        let got = match porta_sys::scm::recv(conn.as_raw_fd(), &mut buf, 0, &mut slots) {
            Ok(g) => g,
            Err(e) => {
                if matches!(e.raw_os_error(), Some(libc::EAGAIN)) {
                    send_reply(
                        conn,
                        &err(
                            libc::ETIMEDOUT,
                            format!("no request for {} s; closing", IDLE_TIMEOUT.as_secs()),
                        ),
                        None,
                    );
                }
                return;
            }
        };
        if got.len == 0 && got.flags & libc::MSG_TRUNC == 0 {
            return;
        }
        if got.flags & libc::MSG_TRUNC != 0 {
            send_reply(
                conn,
                &err(
                    libc::EMSGSIZE,
                    format!("frame larger than {} bytes; closing", api::MAX_FRAME),
                ),
                None,
            );
            return;
        }
        if got.flags & libc::MSG_CTRUNC != 0 || got.nfds > api::MAX_FDS {
            send_reply(
                conn,
                &err(
                    libc::EINVAL,
                    format!(
                        "more than {} descriptors with a frame; closing",
                        api::MAX_FDS
                    ),
                ),
                None,
            );
            return;
        }
        let req = match Request::decode(&buf[..got.len]) {
            Ok(r) => r,
            Err(e) => {
                send_reply(conn, &err(libc::EPROTO, format!("{e}; closing")), None);
                return;
            }
        };
        if got.nfds != req.fds_wanted() {
            send_reply(
                conn,
                &err(
                    libc::EINVAL,
                    format!(
                        "{} takes {} descriptors, {} came; closing",
                        req.op(),
                        req.fds_wanted(),
                        got.nfds
                    ),
                ),
                None,
            );
            return;
        }
        let fds: Vec<OwnedFd> = slots.into_iter().flatten().collect();
        let op = req.op();
        let (reply, fd) = dispatch(served, &caller, req, fds);
        if let Reply::Error { errno, message, .. } = &reply {
            tracing::info!(op, caller = caller.pid, uid = caller.uid, errno = %errno, message = %message, "API request refused");
        }
        send_reply(conn, &reply, fd.as_ref().map(|f| f.as_raw_fd()));
    }
}

/// Who the peer is, from the kernel; refused unless it is in the container's pid namespace.
fn identify(conn: &OwnedFd, served: &Served) -> Result<Caller, Reply> {
    let cred = nix::sys::socket::getsockopt(conn, nix::sys::socket::sockopt::PeerCredentials)
        .map_err(|e| err(libc::EACCES, format!("no peer credentials: {e}")))?;
    let (pid, uid, gid) = (cred.pid(), cred.uid(), cred.gid());
    if pid <= 0 {
        return Err(err(
            libc::EACCES,
            "the peer's pid is not known to this pid namespace",
        ));
    }
    let pidfd =
        peer_pidfd(conn, pid).ok_or_else(|| err(libc::EACCES, "the connecting process is gone"))?;
    let st = load_state(&served.state_dir).map_err(|m| err(libc::EIO, m))?;
    if !init_alive(&st) {
        return Err(err(
            libc::ESRCH,
            format!("container {} is not running", served.id),
        ));
    }
    let same_ns = ns_id(pid, "pid").is_some() && ns_id(pid, "pid") == ns_id(st.pid, "pid");
    // The pidfd was opened first: still alive, the /proc entries read were the peer's.
    if porta_sys::pidfd::has_exited(pidfd.as_fd()) || !init_alive(&st) {
        return Err(err(libc::EACCES, "the connecting process is gone"));
    }
    if !same_ns {
        return Err(err(
            libc::EACCES,
            format!(
                "only processes of container {}'s pid namespace may use its API socket",
                served.id
            ),
        ));
    }
    let superuser = superuser_uid(st.pid) == Some(uid);
    Ok(Caller {
        pid,
        uid,
        gid,
        superuser,
        pidfd,
    })
}

/// The peer's pidfd: SO_PEERPIDFD (Linux 6.5+), else one opened from its pid (then the
/// pid could have been reused since connect: the namespace check below still holds for
/// the process the pidfd names, and every later use goes through that pidfd).
fn peer_pidfd(conn: &OwnedFd, pid: i32) -> Option<OwnedFd> {
    const SO_PEERPIDFD: libc::c_int = 77;
    let mut fd: libc::c_int = -1;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `fd`.
    let r = unsafe {
        libc::getsockopt(
            conn.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_PEERPIDFD,
            (&mut fd as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if r == 0 && fd >= 0 {
        // SAFETY: the kernel installed a new descriptor for us.
        return Some(unsafe { OwnedFd::from_raw_fd(fd) });
    }
    porta_sys::pidfd::open(pid).ok()
}

/// The nsfs identity (device, inode) of namespace `kind` of `pid`.
fn ns_id(pid: i32, kind: &str) -> Option<(u64, u64)> {
    let md = std::fs::metadata(format!("/proc/{pid}/ns/{kind}")).ok()?;
    Some((md.dev(), md.ino()))
}

/// The host uid that is root in the user namespace of `init` (0 when it is the host's).
fn superuser_uid(init: i32) -> Option<u32> {
    if ns_id(init, "user")? == ns_id(std::process::id() as i32, "user")? {
        return Some(0);
    }
    let map = std::fs::read_to_string(format!("/proc/{init}/uid_map")).ok()?;
    map.lines().find_map(|l| {
        let mut f = l.split_whitespace().map(|v| v.parse::<u32>().ok());
        match (f.next()??, f.next()??, f.next()??) {
            (0, outside, len) if len > 0 => Some(outside),
            _ => None,
        }
    })
}

fn load_state(dir: &Path) -> Result<crate::state::ContainerState, String> {
    let p = dir.join("state.json");
    let data = std::fs::read(&p).map_err(|e| format!("state {}: {e}", p.display()))?;
    crate::state::parse_state(&data).map_err(|e| format!("state {}: {e}", p.display()))
}

fn init_alive(st: &crate::state::ContainerState) -> bool {
    st.pid > 0
        && porta_sys::proc::Stat::of(st.pid)
            .is_some_and(|s| s.start_time == st.pid_start_time && !s.is_dead())
}

/// Answers one request; a reply to `open` carries a descriptor.
fn dispatch(
    served: &Served,
    caller: &Caller,
    req: Request,
    fds: Vec<OwnedFd>,
) -> (Reply, Option<OwnedFd>) {
    match req {
        Request::List { path } => (list(served, path.as_deref()), None),
        Request::Open { path } => match open(served, caller, &path) {
            Ok((v, fd)) => (Reply::Ok { value: v }, Some(fd)),
            Err(r) => (r, None),
        },
        other => (nested::dispatch(served, caller, other, fds), None),
    }
}

/// The listing of the caller's namespace, or of the object at `path` in it.
fn list(served: &Served, path: Option<&str>) -> Reply {
    let listing = match objects::container_tree(&served.state_dir) {
        Ok(l) => l,
        Err(e) => return err(libc::EIO, e.to_string()),
    };
    let Some(path) = path else {
        return ok_json(&listing.tree);
    };
    let found = match find(&listing.tree, path) {
        Ok(o) => o.clone(),
        Err(r) => return r,
    };
    ok_json(&Tree {
        version: listing.tree.version,
        view: listing.tree.view,
        objects: vec![found],
    })
}

fn ok_json<T: serde::Serialize>(v: &T) -> Reply {
    match serde_json::to_value(v) {
        Ok(value) => Reply::Ok { value },
        Err(e) => err(libc::EIO, e.to_string()),
    }
}

/// The object at `path` of the caller's namespace. Every path outside it (another
/// container's, or none at all) is the same ENOENT: the reply tells nothing of what
/// exists elsewhere.
fn find<'t>(
    tree: &'t Tree,
    path: &str,
) -> Result<&'t porta_supervisor::protocol::objects::Object, Reply> {
    let parts = path_components(path).map_err(|e| err(libc::EINVAL, e.to_string()))?;
    let none = || {
        err(
            libc::ENOENT,
            format!("no object at {path:?} in this namespace"),
        )
    };
    let top = tree.objects.first().ok_or_else(none)?;
    if parts.is_empty() {
        return Ok(top);
    }
    top.find(&parts).ok_or_else(none)
}

/// A pidfd of the process object at `path`: the caller must be the container's superuser
/// or the process's owner (its uid, as for kill(2)).
fn open(
    served: &Served,
    caller: &Caller,
    path: &str,
) -> Result<(serde_json::Value, OwnedFd), Reply> {
    let listing =
        objects::container_tree(&served.state_dir).map_err(|e| err(libc::EIO, e.to_string()))?;
    let obj = find(&listing.tree, path)?;
    if !matches!(obj.detail, Detail::Process { .. }) {
        return Err(err(
            libc::EOPNOTSUPP,
            format!(
                "{path} is a {} object: only process objects can be opened (a pidfd)",
                obj.detail.kind()
            ),
        ));
    }
    let proc = listing
        .procs
        .into_iter()
        .find(|p| p.path == obj.path)
        .ok_or_else(|| err(libc::ESRCH, format!("{path}: the process is gone")))?;
    if !caller.superuser && objects::uid_of(proc.host_pid) != Some(caller.uid) {
        return Err(err(
            libc::EACCES,
            format!("{path}: only its owner or the container's superuser may open it"),
        ));
    }
    if porta_sys::pidfd::has_exited(proc.pidfd.as_fd()) {
        return Err(err(libc::ESRCH, format!("{path}: the process is gone")));
    }
    let v = serde_json::to_value(obj).map_err(|e| err(libc::EIO, e.to_string()))?;
    Ok((v, proc.pidfd))
}
