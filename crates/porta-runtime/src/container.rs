//! The container life cycle: create, start, state, kill, delete, pause, resume, exec, ps,
//! update, events — each taking the container's lock for its whole duration.

use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxNamespaceType, LinuxResources, Process, Spec};
use porta_cgroups::{CgroupConfig, ContainerCgroup};

use crate::config::{self, Bundle, RootMode};
use crate::error::{Context, Error, Result};
use crate::init::{self, InitArgs};
use crate::namespaces::{self, Plan};
use crate::state::{self, ContainerState, StateDir, StateRoot, Status};
use crate::sync::{Channel, Msg};
use crate::{console, hooks, rootfs, sys};

/// Options of `porta create` (and the create half of `porta run`).
#[derive(Debug, Clone, Default)]
pub struct CreateOptions {
    /// Container id.
    pub id: String,
    /// Bundle directory.
    pub bundle: PathBuf,
    /// Where to write the container's pid.
    pub pid_file: Option<PathBuf>,
    /// Socket to send the pty master to.
    pub console_socket: Option<PathBuf>,
    /// Use MS_MOVE + chroot instead of pivot_root.
    pub no_pivot: bool,
    /// Do not make a new session keyring.
    pub no_new_keyring: bool,
    /// Number of fds above stdio passed to the container.
    pub preserve_fds: u32,
    /// Use the systemd cgroup driver.
    pub systemd_cgroup: bool,
    /// Rootless mode.
    pub rootless: bool,
}

/// Undoes a partly made container when `create` fails.
struct Rollback {
    supervisor: Option<PathBuf>,
    dir: Option<StateDir>,
    cgroup: Option<ContainerCgroup>,
    init: Option<OwnedFd>,
    host_root: Option<rootfs::HostRootBind>,
}

impl Drop for Rollback {
    fn drop(&mut self) {
        if let Some(pidfd) = self.init.take() {
            let _ = sys::pidfd_send_signal(pidfd.as_fd(), libc::SIGKILL);
            wait_pidfd(pidfd.as_fd(), -1);
        }
        if let Some(b) = self.host_root.take() {
            if let Err(e) = b.release() {
                tracing::warn!("rollback: {e}");
            }
        }
        if let Some(sd) = self.supervisor.take() {
            if let Err(e) = porta_supervisor::stop(&sd) {
                tracing::warn!("rollback: stop the file server: {e}");
            }
        }
        if let Some(cg) = self.cgroup.take() {
            if let Err(e) = cg.destroy() {
                tracing::warn!("rollback: {e}");
            }
        }
        if let Some(d) = self.dir.take() {
            if let Err(e) = d.remove() {
                tracing::warn!("rollback: {e}");
            }
        }
    }
}

/// Waits until the process behind `pidfd` exits (timeout in ms, -1 = forever). True if it did.
pub fn wait_pidfd(pidfd: std::os::fd::BorrowedFd<'_>, timeout_ms: i32) -> bool {
    let mut fds = [nix::poll::PollFd::new(pidfd, nix::poll::PollFlags::POLLIN)];
    let t = if timeout_ms < 0 {
        nix::poll::PollTimeout::NONE
    } else {
        nix::poll::PollTimeout::try_from(timeout_ms).unwrap_or(nix::poll::PollTimeout::MAX)
    };
    loop {
        match nix::poll::poll(&mut fds, t) {
            Ok(n) => return n > 0,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return true,
        }
    }
}

fn owner() -> String {
    let uid = nix::unistd::geteuid();
    nix::unistd::User::from_uid(uid)
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_else(|| uid.to_string())
}

fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
}

/// The OCI state JSON of a container as hooks and `porta state` see it.
pub fn oci_state_json(st: &ContainerState, status: Status) -> serde_json::Value {
    serde_json::json!({
        "ociVersion": st.oci_version,
        "id": st.id,
        "status": status.to_string(),
        "pid": st.pid,
        "bundle": st.bundle,
        "annotations": st.annotations,
    })
}

fn write_id_maps(pid: i32, spec: &Spec) -> Result<()> {
    let linux = spec
        .linux()
        .as_ref()
        .ok_or_else(|| Error::field("linux", "missing"))?;
    let fmt = |m: &Option<Vec<oci_spec::runtime::LinuxIdMapping>>| {
        m.iter()
            .flatten()
            .map(|m| format!("{} {} {}\n", m.container_id(), m.host_id(), m.size()))
            .collect::<String>()
    };
    std::fs::write(format!("/proc/{pid}/uid_map"), fmt(linux.uid_mappings()))
        .map_err(|e| Error::field("linux.uidMappings", format!("write uid_map: {e}")))?;
    // Without CAP_SETGID in the parent namespace (rootless), the kernel takes a gid_map
    // only after setgroups(2) is denied in the child namespace, as runc does it; the
    // container then cannot have additional groups (process.rs reports that).
    if !nix::unistd::geteuid().is_root() {
        std::fs::write(format!("/proc/{pid}/setgroups"), "deny")
            .map_err(|e| Error::field("linux.gidMappings", format!("write setgroups deny: {e}")))?;
    }
    std::fs::write(format!("/proc/{pid}/gid_map"), fmt(linux.gid_mappings()))
        .map_err(|e| Error::field("linux.gidMappings", format!("write gid_map: {e}")))?;
    Ok(())
}

fn send_seccomp_fd(
    listener: &Path,
    metadata: Option<&str>,
    fd: &OwnedFd,
    st: &serde_json::Value,
) -> Result<()> {
    let s = console::connect_unix(listener)?;
    let msg = serde_json::json!({
        "ociVersion": "1.0.2",
        "fds": ["seccompFd"],
        "pid": st["pid"],
        "metadata": metadata.unwrap_or(""),
        "state": st,
    });
    let data = serde_json::to_vec(&msg).unwrap_or_default();
    let iov = [std::io::IoSlice::new(&data)];
    let fds = [fd.as_raw_fd()];
    nix::sys::socket::sendmsg::<()>(
        s.as_raw_fd(),
        &iov,
        &[nix::sys::socket::ControlMessage::ScmRights(&fds)],
        nix::sys::socket::MsgFlags::empty(),
        None,
    )
    .ctx(|| {
        format!(
            "send the seccomp fd to linux.seccomp.listenerPath {}",
            listener.display()
        )
    })?;
    Ok(())
}

/// Passes a pty master received from a container process on to the console socket.
fn forward_console(fds: Vec<OwnedFd>, socket: Option<&Path>) -> Result<()> {
    let master = fds
        .into_iter()
        .next()
        .ok_or_else(|| Error::Init("console message without a pty".into()))?;
    let sock = socket.ok_or_else(|| Error::Usage("--console-socket is required".into()))?;
    console::send_master(sock, master.as_fd())
}

/// Passes a seccomp notification fd on to `linux.seccomp.listenerPath`.
fn forward_seccomp(fds: Vec<OwnedFd>, spec: &Spec, state: &serde_json::Value) -> Result<()> {
    let fd = fds
        .into_iter()
        .next()
        .ok_or_else(|| Error::Init("seccomp message without an fd".into()))?;
    let sc = spec.linux().as_ref().and_then(|l| l.seccomp().as_ref());
    let path = sc
        .and_then(|s| s.listener_path().clone())
        .ok_or_else(|| Error::field("linux.seccomp.listenerPath", "missing"))?;
    let meta = sc.and_then(|s| s.listener_metadata().clone());
    send_seccomp_fd(&path, meta.as_deref(), &fd, state)
}

/// Creates a container: its state, cgroup, namespaces, root and process, which then waits
/// for `start`. Everything made is undone if any step fails.
pub fn create(root: &StateRoot, opts: &CreateOptions) -> Result<ContainerState> {
    let bundle = Bundle::load(&opts.bundle)?;
    let spec = &bundle.spec;
    let process = spec
        .process()
        .as_ref()
        .ok_or_else(|| Error::field("process", "missing"))?;
    if process.terminal().unwrap_or(false) && opts.console_socket.is_none() {
        return Err(Error::Usage(
            "process.terminal is true: --console-socket is required".into(),
        ));
    }
    if !process.terminal().unwrap_or(false) && opts.console_socket.is_some() {
        return Err(Error::Usage(
            "--console-socket given but process.terminal is false".into(),
        ));
    }
    let linux = spec
        .linux()
        .as_ref()
        .ok_or_else(|| Error::field("linux", "missing"))?;
    let ns = Plan::from_config(linux.namespaces().as_deref().unwrap_or(&[]));
    let mut rb = Rollback {
        supervisor: None,
        dir: None,
        cgroup: None,
        init: None,
        host_root: None,
    };
    rb.dir = Some(StateDir::create(root, &opts.id)?);
    let dir = rb
        .dir
        .as_ref()
        .ok_or_else(|| Error::Init("state directory vanished".into()))?;
    let data = serde_json::to_vec(spec).map_err(|e| Error::State {
        path: dir.config_file(),
        msg: e.to_string(),
    })?;
    state::write_atomic(&dir.config_file(), &data, 0o600)?;

    let mut st = ContainerState {
        oci_version: spec.version().clone(),
        id: opts.id.clone(),
        status: Status::Creating,
        pid: 0,
        bundle: bundle.dir.clone(),
        rootfs: bundle.rootfs.clone(),
        created: now_rfc3339(),
        owner: owner(),
        annotations: spec.annotations().clone().unwrap_or_default(),
        pid_start_time: 0,
        cgroup: None,
        started: false,
        file_server: false,
        supervisor_pid: 0,
        server_error: None,
        host_root_bind: None,
    };
    let cg = ContainerCgroup::create(&CgroupConfig {
        cgroups_path: linux.cgroups_path().clone(),
        container_id: opts.id.clone(),
        systemd: opts.systemd_cgroup,
        rootless: opts.rootless,
        resources: linux.resources().clone(),
    })?;
    st.cgroup = Some(cg.state());
    rb.cgroup = Some(cg);
    dir.save(&st)?;
    if !config::has_mount_namespace(spec) {
        // No mount namespace of its own: as runc, the container's mounts are made in ours,
        // beneath a bind of the root onto itself, which this container owns (recorded
        // before anything is mounted beneath it, released by delete or the rollback).
        let bind = rootfs::HostRootBind::make(&bundle.rootfs)?;
        st.host_root_bind = Some(bind.clone());
        rb.host_root = Some(bind);
        dir.save(&st)?;
    }
    let cg = rb
        .cgroup
        .as_ref()
        .ok_or_else(|| Error::Init("cgroup vanished".into()))?;
    if let Some(r) = linux.resources() {
        cg.apply(r)?;
    }

    // The container's root: served by its own file server (the default), or the kernel's.
    // As root, the FUSE mount (with passthrough) belongs to the initial user namespace.
    // Rootless, it is made inside the container's user namespace (strict mode), when this
    // user may open /dev/fuse; else the kernel mounts the root, as for runc.
    let host_root = nix::unistd::geteuid().is_root();
    let dev_fuse = host_root || config::dev_fuse_usable();
    if !dev_fuse {
        tracing::info!(
            "rootless and /dev/fuse cannot be opened: the container's root is mounted by the \
             kernel, without a file server"
        );
    }
    // The file server is launched once stage one is forked (see below); rootless, once the
    // container's user namespace exists.
    let served = match config::root_mode(spec, host_root, dev_fuse)? {
        RootMode::Kernel => None,
        RootMode::Served { passthrough, .. } => {
            rb.supervisor = Some(dir.path.clone());
            st.file_server = true;
            Some(porta_supervisor::LaunchSpec {
                id: opts.id.clone(),
                state_dir: dir.path.clone(),
                rootfs: bundle.rootfs.clone(),
                passthrough,
                host_changes: config::host_changes(spec),
                server_cgroup_procs: cg.server_procs_files(),
                exe: PathBuf::from("/proc/self/exe"),
                log: dir.path.join("supervisor.log"),
            })
        }
    };

    let fifo_path = dir.fifo();
    nix::unistd::mkfifo(&fifo_path, nix::sys::stat::Mode::from_bits_truncate(0o622))
        .ctx(|| format!("mkfifo {}", fifo_path.display()))?;
    std::fs::set_permissions(
        &fifo_path,
        std::os::unix::fs::PermissionsExt::from_mode(0o622),
    )
    .ctx(|| "chmod start fifo".into())?;
    let fifo: OwnedFd = nix::fcntl::open(
        &fifo_path,
        nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map(|fd| {
        // SAFETY: open returned a fresh fd we now own.
        unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) }
    })
    .ctx(|| "open start fifo".into())?;

    // Relative bind sources are relative to the bundle, as with runc.
    std::env::set_current_dir(&bundle.dir).ctx(|| format!("chdir {}", bundle.dir.display()))?;
    let (parent_chan, child_chan) = Channel::pair()?;
    let args = InitArgs {
        spec,
        rootfs: &bundle.rootfs,
        ns: &ns,
        cgroup: porta_cgroups::join::Join::new(&cg.payload_procs_files())?,
        cloned_into: false,
        fifo: Some(fifo.as_raw_fd()),
        no_pivot: opts.no_pivot,
        no_new_keyring: opts.no_new_keyring,
        preserve_fds: opts.preserve_fds,
        served_root: served.is_some(),
        close_in_child: vec![dir.lock_fd()],
    };
    // Stage one starts in the payload leaf's cgroup2 group where it can, and moves itself
    // into the v1 ones (join.rs: no wait for the kernel's migration lock).
    match args.cgroup.fork(0).ctx(|| "fork".into())? {
        porta_cgroups::join::Forked::Child { cloned_into } => {
            drop(parent_chan);
            init::stage_one(
                child_chan,
                InitArgs {
                    cloned_into,
                    ..args
                },
            )
        }
        porta_cgroups::join::Forked::Parent(stage1) => {
            drop(child_chan);
            drop(args);
            // The file server starts while stage one joins the cgroup and namespaces and the
            // container's process sets up its namespaces; that process asks for the mount
            // (NeedRoot) before it makes any mount of its own.
            // Rootless, the supervisor mounts from inside the container's user namespace:
            // it starts when the container's process asks for its root (see drive_init).
            let launched = served.as_ref().filter(|_| host_root).map(|l| {
                // Recorded before: `delete` of a create interrupted from here on stops it.
                dir.save(&st)?;
                porta_supervisor::launch(l, None).map_err(|e| Error::FileServer(e.to_string()))
            });
            // The container's process may speak before stage one has reported its pid:
            // both use the same channel. Keep its early messages for after.
            let mut early = Vec::new();
            let pid = loop {
                match parent_chan.recv("porta create (stage one)") {
                    Ok((Msg::Pid(p), _)) => break p,
                    Ok(m) => early.push(m),
                    Err(e) => {
                        let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(stage1), None);
                        return Err(e);
                    }
                }
            };
            let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(stage1), None);
            rb.init = Some(
                sys::pidfd_open(pid).ctx(|| format!("pidfd of the container's process {pid}"))?,
            );
            st.pid = pid;
            st.pid_start_time = state::process_start_time(pid).unwrap_or(0);
            let root = match (launched, &served) {
                (Some(l), _) => {
                    let l = l?;
                    st.supervisor_pid = l.supervisor_pid;
                    dir.save(&st)?;
                    RootSource::Mounted(l.mount_fd)
                }
                (None, Some(l)) if !host_root => RootSource::InUserNamespace(l, dir),
                (None, _) => RootSource::None,
            };
            drive_init(&parent_chan, early, &mut st, spec, opts, root)?;
        }
    }
    if st.file_server {
        porta_supervisor::watch_container(
            &rb.dir.as_ref().map(|d| d.path.clone()).unwrap_or_default(),
            st.pid,
        )
        .map_err(|e| Error::FileServer(e.to_string()))?;
    }
    drop(fifo);
    st.status = Status::Created;
    let dir = rb
        .dir
        .as_ref()
        .ok_or_else(|| Error::Init("state directory vanished".into()))?;
    dir.save(&st)?;
    if let Some(p) = &opts.pid_file {
        state::write_atomic(p, st.pid.to_string().as_bytes(), 0o644)?;
    }
    // Success: the container owns what was made.
    rb.supervisor = None;
    rb.init = None;
    rb.cgroup = None;
    rb.host_root = None;
    rb.dir = None;
    Ok(st)
}

/// Where the container's served root comes from, for [`drive_init`].
enum RootSource<'a> {
    /// Not served: the kernel's root.
    None,
    /// The supervisor already made the mount.
    Mounted(OwnedFd),
    /// Rootless: the supervisor is launched into the container's user namespace (sent by
    /// the container's process with its request for the root) and makes the mount there.
    InUserNamespace(&'a porta_supervisor::LaunchSpec, &'a StateDir),
}

/// Answers the container's process until it reports ready.
fn drive_init(
    chan: &Channel,
    early: Vec<(Msg, Vec<OwnedFd>)>,
    st: &mut ContainerState,
    spec: &Spec,
    opts: &CreateOptions,
    mut root: RootSource<'_>,
) -> Result<()> {
    let mut early = early.into_iter();
    loop {
        let (msg, fds) = match early.next() {
            Some(m) => m,
            None => chan.recv("the container's process")?,
        };
        match msg {
            Msg::NeedMappings => {
                write_id_maps(st.pid, spec)?;
                chan.send(&Msg::MappingsDone, &[])?;
            }
            Msg::NeedRoot => {
                let fd = match std::mem::replace(&mut root, RootSource::None) {
                    RootSource::None => {
                        return Err(Error::Init(
                            "root mount asked for twice, or for a root that is not served".into(),
                        ))
                    }
                    RootSource::Mounted(fd) => fd,
                    RootSource::InUserNamespace(l, dir) => {
                        let userns = fds.first().ok_or_else(|| {
                            Error::Init("root request without the user namespace".into())
                        })?;
                        // Recorded before: `delete` of a create interrupted from here on
                        // stops it.
                        dir.save(st)?;
                        let launched = porta_supervisor::launch(l, Some(userns.as_fd()))
                            .map_err(|e| Error::FileServer(e.to_string()))?;
                        st.supervisor_pid = launched.supervisor_pid;
                        dir.save(st)?;
                        launched.mount_fd
                    }
                };
                chan.send(&Msg::Root, &[fd.as_raw_fd()])?;
            }
            Msg::RunHooks => {
                let json =
                    serde_json::to_vec(&oci_state_json(st, Status::Creating)).unwrap_or_default();
                if let Some(h) = spec.hooks() {
                    hooks::run_all("prestart", h.prestart().as_deref().unwrap_or(&[]), &json)?;
                    hooks::run_all(
                        "createRuntime",
                        h.create_runtime().as_deref().unwrap_or(&[]),
                        &json,
                    )?;
                }
                chan.send(
                    &Msg::HooksDone(String::from_utf8_lossy(&json).into_owned()),
                    &[],
                )?;
            }
            Msg::Console => forward_console(fds, opts.console_socket.as_deref())?,
            Msg::SeccompListener => {
                forward_seccomp(fds, spec, &oci_state_json(st, Status::Creating))?
            }
            Msg::Ready => return Ok(()),
            m => return Err(Error::Init(format!("unexpected message {m:?}"))),
        }
    }
}

/// A container opened by id, with its lock held.
pub struct Container {
    /// Its locked state directory.
    pub dir: StateDir,
    /// Its recorded state.
    pub state: ContainerState,
}

impl Container {
    /// Opens container `id`.
    pub fn open(root: &StateRoot, id: &str) -> Result<Container> {
        let dir = StateDir::open(root, id)?;
        let state = dir.load()?;
        Ok(Container { dir, state })
    }

    /// The saved config.
    pub fn spec(&self) -> Result<Spec> {
        let p = self.dir.config_file();
        let data = std::fs::read(&p).map_err(|e| Error::State {
            path: p.clone(),
            msg: e.to_string(),
        })?;
        config::parse_spec(&data, &p)
    }

    /// The container's cgroup.
    pub fn cgroup(&self) -> Result<Option<ContainerCgroup>> {
        match &self.state.cgroup {
            Some(s) => Ok(Some(ContainerCgroup::open(s)?)),
            None => Ok(None),
        }
    }

    /// Whether the container's first process still runs (not a zombie, not a reused pid).
    pub fn init_alive(&self) -> bool {
        let pid = self.state.pid;
        if pid <= 0 {
            return false;
        }
        match (state::process_start_time(pid), state::process_state(pid)) {
            (Some(t), Some(s)) => t == self.state.pid_start_time && s != 'Z' && s != 'X',
            _ => false,
        }
    }

    /// The live status.
    pub fn status(&self) -> Status {
        if self.state.status == Status::Creating {
            return Status::Creating;
        }
        if !self.init_alive() {
            return Status::Stopped;
        }
        if let Ok(Some(cg)) = self.cgroup() {
            if cg.is_frozen().unwrap_or(false) {
                return Status::Paused;
            }
        }
        if self.state.started {
            Status::Running
        } else {
            Status::Created
        }
    }

    fn bad_state(&self, status: Status, msg: &str) -> Error {
        Error::BadState {
            id: self.state.id.clone(),
            status: status.to_string(),
            msg: msg.to_string(),
        }
    }

    /// The OCI state JSON, plus Porta's `servers` list.
    pub fn state_json(&self) -> serde_json::Value {
        let status = self.status();
        let mut v = oci_state_json(&self.state, status);
        let pid = if status == Status::Stopped {
            0
        } else {
            self.state.pid
        };
        v["pid"] = pid.into();
        v["rootfs"] = serde_json::json!(self.state.rootfs);
        v["created"] = serde_json::json!(self.state.created);
        v["owner"] = serde_json::json!(self.state.owner);
        // Each server as the supervisor records it (name, pid, restarts, state,
        // confinement, and why it was last replaced or given up on).
        let servers = if self.state.file_server {
            porta_supervisor::servers(&self.dir.path).unwrap_or_default()
        } else {
            Vec::new()
        };
        // A failed server (given up on, or no supervisor left) fails the container loudly.
        let failed = servers.iter().find(|s| s.state == "failed").map(|s| {
            format!(
                "{} server failed: {}",
                s.name,
                s.error.as_deref().unwrap_or("")
            )
        });
        v["servers"] = serde_json::to_value(servers).unwrap_or_else(|_| serde_json::json!([]));
        if let Some(e) = self.state.server_error.clone().or(failed) {
            v["serverError"] = serde_json::json!(e);
        }
        v
    }

    fn pidfd(&self) -> Result<OwnedFd> {
        if !self.init_alive() {
            return Err(self.bad_state(Status::Stopped, "the container's process is not running"));
        }
        let fd = sys::pidfd_open(self.state.pid).ctx(|| format!("pidfd of {}", self.state.pid))?;
        // Re-check after opening: the pidfd now pins the process we checked.
        if !self.init_alive() {
            return Err(self.bad_state(Status::Stopped, "the container's process is not running"));
        }
        Ok(fd)
    }

    /// `start`: lets the created container's process run its program.
    pub fn start(&mut self) -> Result<()> {
        let status = self.status();
        if status != Status::Created {
            return Err(self.bad_state(status, "only a created container can be started"));
        }
        let pidfd = self.pidfd()?;
        let fifo = self.dir.fifo();
        let f = nix::fcntl::open(
            &fifo,
            nix::fcntl::OFlag::O_RDONLY
                | nix::fcntl::OFlag::O_NONBLOCK
                | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .ctx(|| format!("open start fifo {}", fifo.display()))?;
        // SAFETY: f is a fresh fd from open; we own it.
        let f = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(f) };
        // Wait for the byte, or for the process to die before writing it.
        loop {
            let mut fds = [
                nix::poll::PollFd::new(f.as_fd(), nix::poll::PollFlags::POLLIN),
                nix::poll::PollFd::new(pidfd.as_fd(), nix::poll::PollFlags::POLLIN),
            ];
            match nix::poll::poll(&mut fds, nix::poll::PollTimeout::NONE) {
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(Error::nix("wait for the container's process", e)),
            }
            let mut b = [0u8; 1];
            match nix::unistd::read(f.as_raw_fd(), &mut b) {
                Ok(1) => break,
                Ok(_) | Err(nix::errno::Errno::EAGAIN) => {
                    if fds[1].revents().is_some_and(|r| !r.is_empty()) {
                        return Err(self.bad_state(
                            Status::Stopped,
                            "the container's process exited before start",
                        ));
                    }
                }
                Err(e) => return Err(Error::nix("read start fifo", e)),
            }
        }
        let _ = std::fs::remove_file(&fifo);
        self.state.started = true;
        self.state.status = Status::Running;
        self.dir.save(&self.state)?;
        let spec = self.spec()?;
        if let Some(h) = spec.hooks().as_ref().and_then(|h| h.poststart().clone()) {
            let json = serde_json::to_vec(&oci_state_json(&self.state, Status::Running))
                .unwrap_or_default();
            // The spec: a failing poststart hook is a warning; the other hooks still run and
            // the container runs on.
            hooks::run_each_warn("poststart", &h, &json);
        }
        Ok(())
    }

    /// `kill`: sends `sig` to the container's process, or with `all` to every process of it.
    pub fn kill(&self, sig: i32, all: bool) -> Result<()> {
        let status = self.status();
        if all {
            if let Some(cg) = self.cgroup()? {
                let pids = cg.payload_pids()?;
                for p in pids {
                    if let Ok(fd) = sys::pidfd_open(p) {
                        let _ = sys::pidfd_send_signal(fd.as_fd(), sig);
                    }
                }
                if sig == libc::SIGKILL && status == Status::Paused {
                    let _ = cg.thaw();
                }
                return Ok(());
            }
        }
        if status == Status::Stopped || status == Status::Creating {
            return Err(self.bad_state(status, "container not running"));
        }
        let fd = self.pidfd()?;
        sys::pidfd_send_signal(fd.as_fd(), sig)
            .ctx(|| format!("send signal {sig} to {}", self.state.pid))
    }

    /// `delete`: removes a stopped (or created) container; with `force` also a running one.
    pub fn delete(self, force: bool) -> Result<()> {
        let status = self.status();
        match status {
            Status::Running | Status::Paused if !force => {
                return Err(
                    self.bad_state(status, "cannot delete a running container without --force")
                );
            }
            _ => {}
        }
        if let Ok(fd) = self.pidfd() {
            let _ = sys::pidfd_send_signal(fd.as_fd(), libc::SIGKILL);
            if let Ok(Some(cg)) = self.cgroup() {
                let _ = cg.thaw();
            }
            wait_pidfd(fd.as_fd(), 10_000);
        }
        if let Some(cg) = self.cgroup()? {
            // The container's processes go first (they may wait on the file server)...
            let _ = cg.signal_payload(nix::sys::signal::Signal::SIGKILL);
            // ...then its servers, then the groups.
            if self.state.file_server {
                porta_supervisor::stop(&self.dir.path)
                    .map_err(|e| Error::FileServer(e.to_string()))?;
            }
            cg.destroy()?;
        } else if self.state.file_server {
            porta_supervisor::stop(&self.dir.path).map_err(|e| Error::FileServer(e.to_string()))?;
        }
        if let Some(b) = &self.state.host_root_bind {
            b.release()?;
        }
        if self.state.status != Status::Creating {
            if let Ok(spec) = self.spec() {
                if let Some(h) = spec.hooks().as_ref().and_then(|h| h.poststop().clone()) {
                    let json = serde_json::to_vec(&oci_state_json(&self.state, Status::Stopped))
                        .unwrap_or_default();
                    hooks::run_each_warn("poststop", &h, &json);
                }
            }
        }
        self.dir.remove()
    }

    /// `pause`: freezes the container's processes.
    pub fn pause(&mut self) -> Result<()> {
        let status = self.status();
        if status != Status::Running && status != Status::Created {
            return Err(self.bad_state(status, "only a running container can be paused"));
        }
        let cg = self
            .cgroup()?
            .ok_or_else(|| self.bad_state(status, "no cgroup"))?;
        cg.freeze()?;
        self.state.status = Status::Paused;
        self.dir.save(&self.state)
    }

    /// `resume`: thaws a paused container.
    pub fn resume(&mut self) -> Result<()> {
        let status = self.status();
        if status != Status::Paused {
            return Err(self.bad_state(status, "only a paused container can be resumed"));
        }
        let cg = self
            .cgroup()?
            .ok_or_else(|| self.bad_state(status, "no cgroup"))?;
        cg.thaw()?;
        self.state.status = if self.state.started {
            Status::Running
        } else {
            Status::Created
        };
        self.dir.save(&self.state)
    }

    /// Pids of the container's processes.
    pub fn pids(&self) -> Result<Vec<i32>> {
        match self.cgroup()? {
            Some(cg) => Ok(cg.payload_pids()?),
            None => Ok(vec![]),
        }
    }

    /// `update`: changes the container's resource limits and records them.
    pub fn update(&mut self, r: &LinuxResources) -> Result<()> {
        let status = self.status();
        if status == Status::Stopped {
            return Err(self.bad_state(status, "cannot update a stopped container"));
        }
        let cg = self
            .cgroup()?
            .ok_or_else(|| self.bad_state(status, "no cgroup"))?;
        cg.update(r)?;
        Ok(())
    }

    /// Cgroup statistics in runc's `events --stats` shape.
    pub fn stats(&self) -> Result<serde_json::Value> {
        let cg = self
            .cgroup()?
            .ok_or_else(|| self.bad_state(self.status(), "no cgroup"))?;
        let s = cg.stats()?;
        Ok(serde_json::to_value(s).unwrap_or_default())
    }

    /// Count of OOM kills in the container so far.
    pub fn oom_kills(&self) -> u64 {
        self.cgroup()
            .ok()
            .flatten()
            .and_then(|c| c.oom_kill_count().ok())
            .unwrap_or(0)
    }
}

/// Deletes a container whose `create` was interrupted before state.json was written.
pub fn delete_half_made(root: &StateRoot, id: &str) -> Result<bool> {
    let dir = StateDir::open(root, id)?;
    if dir.has_state() {
        return Ok(false);
    }
    dir.remove()?;
    Ok(true)
}

/// Options of `porta exec`.
#[derive(Debug, Clone, Default)]
pub struct ExecOptions {
    /// The process to run (already merged from --process or flags with the config's defaults).
    pub process: Option<Process>,
    /// Where to write the new process's pid.
    pub pid_file: Option<PathBuf>,
    /// Socket for the pty master.
    pub console_socket: Option<PathBuf>,
    /// Do not wait for the process.
    pub detach: bool,
    /// Fds above stdio passed to the process.
    pub preserve_fds: u32,
    /// Allow exec into a paused container.
    pub ignore_paused: bool,
}

impl Container {
    /// `exec`: runs another process in the container's namespaces and cgroup. Returns its
    /// pid; the caller waits for it unless detached.
    pub fn exec(self, spec: &Spec, opts: &ExecOptions) -> Result<i32> {
        let status = self.status();
        match status {
            Status::Running | Status::Created => {}
            Status::Paused if opts.ignore_paused => {}
            _ => {
                return Err(
                    self.bad_state(status, "cannot exec into a container that is not running")
                )
            }
        }
        let p = opts
            .process
            .as_ref()
            .ok_or_else(|| Error::Usage("no process to execute".into()))?;
        config::validate_process(p)?;
        // As runc: a process without a capabilities field (`exec --process FILE`) gets
        // the container's.
        let with_caps;
        let p = if p.capabilities().is_none() {
            let mut q = p.clone();
            q.set_capabilities(
                spec.process()
                    .as_ref()
                    .and_then(|s| s.capabilities().clone()),
            );
            with_caps = q;
            &with_caps
        } else {
            p
        };
        if p.terminal().unwrap_or(false) && opts.console_socket.is_none() {
            return Err(Error::Usage("--tty needs --console-socket".into()));
        }
        let pidfd = self.pidfd()?;
        let linux = spec
            .linux()
            .as_ref()
            .ok_or_else(|| Error::field("linux", "missing"))?;
        let plan = Plan::from_config(linux.namespaces().as_deref().unwrap_or(&[]));
        let mut flags = 0;
        for t in [
            LinuxNamespaceType::User,
            LinuxNamespaceType::Mount,
            LinuxNamespaceType::Pid,
            LinuxNamespaceType::Network,
            LinuxNamespaceType::Ipc,
            LinuxNamespaceType::Uts,
            LinuxNamespaceType::Cgroup,
            LinuxNamespaceType::Time,
        ] {
            let listed = linux.namespaces().iter().flatten().any(|n| n.typ() == t);
            if listed {
                flags |= namespaces::flag(t);
            }
        }
        let _ = plan;
        let join = porta_cgroups::join::Join::new(
            &self
                .cgroup()?
                .map(|c| c.payload_procs_files())
                .unwrap_or_default(),
        )?;
        // The exec'd process may run for long (and `resume` must get through to a paused
        // container): release the container's lock before forking.
        let Container { dir, state: cstate } = self;
        drop(dir);
        let (parent_chan, child_chan) = Channel::pair()?;
        match join.fork(0).ctx(|| "fork".into())? {
            porta_cgroups::join::Forked::Child { cloned_into } => {
                drop(parent_chan);
                let joined = join.enter(cloned_into);
                exec_stage_one(child_chan, pidfd, flags, joined, spec, p, opts.preserve_fds)
            }
            porta_cgroups::join::Forked::Parent(stage1) => {
                drop(child_chan);
                drop(join);
                let mut pid = None;
                let res = exec_messages(&parent_chan, &mut pid, |msg, fds| match msg {
                    Msg::Console => forward_console(fds, opts.console_socket.as_deref()),
                    Msg::SeccompListener => {
                        forward_seccomp(fds, spec, &oci_state_json(&cstate, Status::Running))
                    }
                    m => Err(Error::Init(format!("unexpected message {m:?}"))),
                });
                let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(stage1), None);
                let pid = match (res, pid) {
                    (Ok(p), _) => p,
                    (Err(e), Some(p)) => {
                        let _ = nix::sys::signal::kill(
                            nix::unistd::Pid::from_raw(p),
                            nix::sys::signal::Signal::SIGKILL,
                        );
                        return Err(e);
                    }
                    (Err(e), None) => return Err(e),
                };
                if let Some(pf) = &opts.pid_file {
                    state::write_atomic(pf, pid.to_string().as_bytes(), 0o644)?;
                }
                Ok(pid)
            }
        }
    }
}

/// Receives `porta exec`'s set-up messages until both the exec'd process's pid (from
/// stage one, into `pid`) and its ready message came, passing the others to `other`.
/// Stage one sends the pid after forking the process, so the process's own messages
/// (console, seccomp listener, ready) may come first: any order is taken (a CI run once
/// failed with "unexpected message Ready" when the pid was expected first).
fn exec_messages(
    chan: &Channel,
    pid: &mut Option<i32>,
    mut other: impl FnMut(Msg, Vec<OwnedFd>) -> Result<()>,
) -> Result<i32> {
    let mut ready = false;
    loop {
        if let (Some(p), true) = (*pid, ready) {
            return Ok(p);
        }
        let peer = if pid.is_none() {
            "porta exec (stage one)"
        } else {
            "the exec'd process"
        };
        let (msg, fds) = chan.recv(peer)?;
        match msg {
            Msg::Pid(p) if pid.is_none() => *pid = Some(p),
            Msg::Ready if !ready => ready = true,
            m => other(m, fds)?,
        }
    }
}

fn exec_stage_one(
    chan: Channel,
    target: OwnedFd,
    flags: i32,
    joined: porta_cgroups::Result<()>,
    spec: &Spec,
    p: &Process,
    preserve: u32,
) -> ! {
    let r = (|| -> Result<i32> {
        joined?;
        sys::setns(target.as_fd(), flags).ctx(|| "join the container's namespaces".into())?;
        drop(target);
        match sys::clone_into(0).ctx(|| "fork the exec'd process".into())? {
            sys::Forked::Parent(pid) => Ok(pid),
            sys::Forked::Child => {
                let r = exec_child(&chan, spec, p, preserve);
                let _ = chan.send(
                    &Msg::Failed(r.err().map(|e| e.to_string()).unwrap_or_default()),
                    &[],
                );
                sys::exit_now(1)
            }
        }
    })();
    match r {
        Ok(pid) => {
            let _ = chan.send(&Msg::Pid(pid), &[]);
            sys::exit_now(0)
        }
        Err(e) => {
            let _ = chan.send(&Msg::Failed(e.to_string()), &[]);
            sys::exit_now(1)
        }
    }
}

fn exec_child(chan: &Channel, spec: &Spec, p: &Process, preserve: u32) -> Result<()> {
    if p.terminal().unwrap_or(false) {
        let size = p
            .console_size()
            .as_ref()
            .map(|b| (b.height() as u16, b.width() as u16));
        let (master, slave) = console::open_pty(Path::new("/dev/pts/ptmx"), size, p.user().uid())?;
        chan.send(&Msg::Console, &[master.as_raw_fd()])?;
        drop(master);
        console::become_tty(slave.as_fd())?;
    } else {
        let _ = nix::unistd::setsid();
    }
    init::finalize_and_exec(chan, spec, p, preserve, None, "")
}

/// Reads a resources JSON document for `update -r`.
pub fn parse_resources(data: &[u8], path: &Path) -> Result<LinuxResources> {
    let de = &mut serde_json::Deserializer::from_slice(data);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let field = e.path().to_string();
        Error::Config {
            path: path.to_path_buf(),
            msg: format!("field {field}: {}", e.into_inner()),
        }
    })
}

/// Ids and states of every container under the root (for `list`).
pub fn list(root: &StateRoot) -> Result<Vec<serde_json::Value>> {
    let mut out = Vec::new();
    for id in root.ids()? {
        let dir = root.dir(&id);
        let Ok(data) = std::fs::read(dir.join("state.json")) else {
            continue;
        };
        let Ok(st) = serde_json::from_slice::<ContainerState>(&data) else {
            continue;
        };
        // Read without the lock: state.json is replaced atomically.
        let c = ContainerView { state: st };
        out.push(c.json());
    }
    Ok(out)
}

struct ContainerView {
    state: ContainerState,
}

impl ContainerView {
    fn json(&self) -> serde_json::Value {
        let alive = self.state.pid > 0
            && state::process_start_time(self.state.pid) == Some(self.state.pid_start_time)
            && !matches!(
                state::process_state(self.state.pid),
                Some('Z') | Some('X') | None
            );
        let status = if self.state.status == Status::Creating {
            Status::Creating
        } else if !alive {
            Status::Stopped
        } else if self.state.status == Status::Paused {
            Status::Paused
        } else if self.state.started {
            Status::Running
        } else {
            Status::Created
        };
        let mut v = oci_state_json(&self.state, status);
        v["pid"] = (if status == Status::Stopped {
            0
        } else {
            self.state.pid
        })
        .into();
        v["rootfs"] = serde_json::json!(self.state.rootfs);
        v["created"] = serde_json::json!(self.state.created);
        v["owner"] = serde_json::json!(self.state.owner);
        v
    }
}

/// Annotations helper for callers that only need them.
pub fn annotations(st: &ContainerState) -> &HashMap<String, String> {
    &st.annotations
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The exec'd process's messages may come before stage one's pid, or after it.
    #[test]
    fn exec_messages_take_the_pid_and_ready_in_either_order() {
        for pid_first in [true, false] {
            let (ours, theirs) = Channel::pair().unwrap();
            if pid_first {
                theirs.send(&Msg::Pid(42), &[]).unwrap();
            }
            theirs.send(&Msg::Console, &[]).unwrap();
            theirs.send(&Msg::Ready, &[]).unwrap();
            if !pid_first {
                theirs.send(&Msg::Pid(42), &[]).unwrap();
            }
            let mut pid = None;
            let mut others = Vec::new();
            let r = exec_messages(&ours, &mut pid, |m, _| {
                others.push(format!("{m:?}"));
                Ok(())
            });
            assert_eq!(r.unwrap(), 42, "pid first: {pid_first}");
            assert_eq!(others, ["Console"]);
        }
        // A failure report ends it with that error; a second pid is unexpected.
        let (ours, theirs) = Channel::pair().unwrap();
        theirs
            .send(&Msg::Failed("no such file".into()), &[])
            .unwrap();
        let mut pid = None;
        let e = exec_messages(&ours, &mut pid, |_, _| Ok(())).unwrap_err();
        assert!(e.to_string().contains("no such file"), "{e}");
        let (ours, theirs) = Channel::pair().unwrap();
        theirs.send(&Msg::Pid(1), &[]).unwrap();
        theirs.send(&Msg::Pid(2), &[]).unwrap();
        let mut pid = None;
        let e = exec_messages(&ours, &mut pid, |m, _| {
            Err(Error::Init(format!("unexpected message {m:?}")))
        })
        .unwrap_err();
        assert!(e.to_string().contains("unexpected message Pid(2)"), "{e}");
        assert_eq!(pid, Some(1));
    }
}
