//! `porta create`: validates the bundle, writes the state, makes the cgroup, picks the
//! root (served or the kernel's), forks the container's process and drives it until it is
//! ready. Everything made is undone by [`Rollback`] if a step fails.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::PathBuf;

use oci_spec::runtime::Spec;
use porta_cgroups::{CgroupConfig, ContainerCgroup};

use super::{forward_console, forward_seccomp, oci_state_json, wait_pidfd};
use crate::config::{self, Bundle, RootMode};
use crate::error::{Context, Error, Result};
use crate::init::{self, InitArgs};
use crate::namespaces::Plan;
use crate::state::{self, ContainerState, StateDir, StateRoot, Status};
use crate::sync::{Channel, Msg};
use crate::{hooks, rootfs};

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
    /// A nested container: the state directory of its parent, beneath whose cgroup
    /// (`<parent's group>/children/<id>`) its group goes (see `crate::nested`).
    pub nested_in: Option<PathBuf>,
}

/// Undoes a partly made container when `create` fails: each field holds what was made
/// until `create` succeeds and [`Rollback::disarm`] hands it to the container.
#[derive(Default)]
pub(super) struct Rollback {
    /// A supervisor started ahead of the cgroup, until its mount is handed over.
    pending: Option<porta_supervisor::Pending>,
    supervisor: Option<PathBuf>,
    pub(super) dir: Option<StateDir>,
    pub(super) cgroup: Option<ContainerCgroup>,
    pub(super) init: Option<OwnedFd>,
    host_root: Option<rootfs::HostRootBind>,
}

impl Rollback {
    /// Success: the container owns what was made.
    pub(super) fn disarm(&mut self) {
        self.pending = None;
        self.supervisor = None;
        self.init = None;
        self.cgroup = None;
        self.host_root = None;
        self.dir = None;
    }
}

impl Drop for Rollback {
    fn drop(&mut self) {
        if let Some(pidfd) = self.init.take() {
            let _ = porta_sys::pidfd::send_signal(pidfd.as_fd(), libc::SIGKILL);
            wait_pidfd(pidfd.as_fd(), -1);
        }
        // Before the cgroup goes: an abandoned launch stops what it started.
        drop(self.pending.take());
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

/// Creates a container: its state, cgroup, namespaces, root and process, which then waits
/// for `start`. Everything made is undone if any step fails.
pub fn create(root: &StateRoot, opts: &CreateOptions) -> Result<ContainerState> {
    let mut bundle = Bundle::load(&opts.bundle)?;
    let api_on = config::api_on(&bundle.spec);
    if api_on {
        config::add_api_mount(&mut bundle.spec, &root.dir(&opts.id))?;
    }
    let bundle = bundle;
    let spec = &bundle.spec;
    let linux = validate(spec, opts)?;
    let ns = Plan::from_config(linux.namespaces().as_deref().unwrap_or(&[]));
    let (mut rb, mut st) = begin_state(root, &bundle, opts)?;
    let dir = rb
        .dir
        .as_ref()
        .ok_or_else(|| Error::Init("state directory vanished".into()))?;
    let mut choice = choose_root(spec, opts, &bundle, dir)?;
    // The API socket: bound now, before the container's process looks for it to
    // bind-mount; the supervisor holds it from its launch on, this copy goes with create.
    let _api_sock = if api_on {
        let l = choice
            .served
            .as_mut()
            .filter(|_| choice.host_root)
            .ok_or_else(|| {
                Error::field(
                    format!("annotations.{}", config::ANNOTATION_API),
                    "\"on\": the API socket is served by the container's supervisor, which runs \
                 only for a root served by the file server as root (this container's root is \
                 the kernel's, or porta runs rootless); remove the annotation or set it to \
                 \"off\"",
                )
            })?;
        let sock = porta_supervisor::bind_api_socket(&dir.path)?;
        l.api_fd = Some(sock.as_raw_fd());
        Some(sock)
    } else {
        None
    };
    // As root, the supervisor starts now, ahead of the cgroup: its exec and set-up
    // overlap with the rest of create, and it starts its processes once the cgroup is
    // made (`go` below). Recorded before: `delete` of a create interrupted from here on
    // stops it.
    if let Some(l) = choice.served.as_ref().filter(|_| choice.host_root) {
        rb.supervisor = Some(dir.path.clone());
        st.file_server = true;
        dir.save(&st)?;
        rb.pending = Some(porta_supervisor::spawn(l)?);
    }
    add_cgroup(&mut rb.cgroup, dir, &mut st, linux, opts)?;
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
    if let Some(p) = rb.pending.as_mut() {
        p.go(&cg.server_procs_files())?;
    }
    if let Some(l) = choice.served.as_mut() {
        l.server_cgroup_procs = cg.server_procs_files();
    }
    if choice.served.is_some() {
        rb.supervisor = Some(dir.path.clone());
        st.file_server = true;
    }
    let fifo = make_start_fifo(dir)?;
    let mut close_in_child = vec![dir.lock_fd()];
    if let Some(p) = &rb.pending {
        close_in_child.push(p.socket_fd());
    }

    // Relative bind sources are relative to the bundle, as with runc.
    std::env::set_current_dir(&bundle.dir).ctx(|| format!("chdir {}", bundle.dir.display()))?;
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
        served_root: choice.served.is_some(),
        close_in_child,
    };
    let (stage1, chan) = fork_stage_one(args)?;
    launch(&chan, stage1, &mut rb, &mut st, spec, opts, &choice)?;

    if st.file_server {
        porta_supervisor::watch_container(
            &rb.dir.as_ref().map(|d| d.path.clone()).unwrap_or_default(),
            st.pid,
        )?;
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
    rb.disarm();
    Ok(st)
}

/// Step 1: checks what the config and the options must agree on before anything is made;
/// returns the config's `linux` section.
fn validate<'s>(spec: &'s Spec, opts: &CreateOptions) -> Result<&'s oci_spec::runtime::Linux> {
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
    spec.linux()
        .as_ref()
        .ok_or_else(|| Error::field("linux", "missing"))
}

/// Steps 2 and 3: the state directory, the initial state and the cgroup with its limits,
/// recorded; the returned [`Rollback`] removes them again until disarmed.
pub(super) fn begin(
    root: &StateRoot,
    bundle: &Bundle,
    linux: &oci_spec::runtime::Linux,
    opts: &CreateOptions,
) -> Result<(Rollback, ContainerState)> {
    let (mut rb, mut st) = begin_state(root, bundle, opts)?;
    let dir = rb
        .dir
        .as_ref()
        .ok_or_else(|| Error::Init("state directory vanished".into()))?;
    add_cgroup(&mut rb.cgroup, dir, &mut st, linux, opts)?;
    Ok((rb, st))
}

/// Step 3: the container's cgroup, recorded in the state (saved in `dir`) and in `slot`
/// (the rollback's), then its limits applied.
fn add_cgroup(
    slot: &mut Option<ContainerCgroup>,
    dir: &StateDir,
    st: &mut ContainerState,
    linux: &oci_spec::runtime::Linux,
    opts: &CreateOptions,
) -> Result<()> {
    let cg = make_cgroup(linux, opts)?;
    st.cgroup = Some(cg.state());
    let cg = slot.insert(cg);
    dir.save(st)?;
    if let Some(r) = linux.resources() {
        cg.apply(r)?;
    }
    Ok(())
}

/// Step 2 alone: the state directory and the initial state (recorded by the caller once
/// it made something); the returned [`Rollback`] removes them again until disarmed.
fn begin_state(
    root: &StateRoot,
    bundle: &Bundle,
    opts: &CreateOptions,
) -> Result<(Rollback, ContainerState)> {
    let mut rb = Rollback::default();
    let dir = make_state_dir(root, &opts.id, &bundle.spec)?;
    let st = initial_state(bundle, opts);
    rb.dir = Some(dir);
    Ok((rb, st))
}

/// Step 2: the container's state directory, with the config saved in it. Removed again if
/// the config cannot be written.
fn make_state_dir(root: &StateRoot, id: &str, spec: &Spec) -> Result<StateDir> {
    let dir = StateDir::create(root, id)?;
    let saved = serde_json::to_vec(spec)
        .map_err(|e| Error::State {
            path: dir.config_file(),
            msg: e.to_string(),
        })
        .and_then(|data| state::write_atomic(&dir.config_file(), &data, 0o600));
    if let Err(e) = saved {
        if let Err(r) = dir.remove() {
            tracing::warn!("rollback: {r}");
        }
        return Err(e);
    }
    Ok(dir)
}

/// The state recorded before anything else is made.
fn initial_state(bundle: &Bundle, opts: &CreateOptions) -> ContainerState {
    let spec = &bundle.spec;
    ContainerState {
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
    }
}

/// Step 3: the container's cgroup (its limits are applied once it is recorded).
pub(super) fn make_cgroup(
    linux: &oci_spec::runtime::Linux,
    opts: &CreateOptions,
) -> Result<ContainerCgroup> {
    let cfg = CgroupConfig {
        cgroups_path: linux.cgroups_path().clone(),
        container_id: opts.id.clone(),
        systemd: opts.systemd_cgroup,
        rootless: opts.rootless,
        resources: linux.resources().clone(),
    };
    let Some(parent) = &opts.nested_in else {
        return Ok(ContainerCgroup::create(&cfg)?);
    };
    if cfg.cgroups_path.is_some() || cfg.systemd {
        return Err(Error::field(
            "linux.cgroupsPath",
            "a nested container's group is beneath its parent's: no path or systemd driver",
        ));
    }
    // Read without the parent's lock: the nested create that runs this holds it.
    let p = parent.join("state.json");
    let data = std::fs::read(&p).ctx(|| format!("read the parent's state {}", p.display()))?;
    let st = state::parse_state(&data).map_err(|msg| Error::State { path: p, msg })?;
    let pcg = st.cgroup.ok_or_else(|| Error::BadState {
        id: st.id.clone(),
        status: "without a cgroup".into(),
        msg: "a nested container's group goes beneath its parent's".into(),
    })?;
    Ok(ContainerCgroup::create_beneath(&pcg, &cfg)?)
}

/// Which root the container gets, from [`choose_root`].
struct RootChoice {
    /// Porta runs in the host's user namespace (not rootless).
    host_root: bool,
    /// The file server to launch, when the root is served.
    served: Option<porta_supervisor::LaunchSpec>,
}

/// Step 4: the container's root: served by its own file server (the default), or the
/// kernel's. As root, the FUSE mount (with passthrough) belongs to the initial user
/// namespace. Rootless, it is made inside the container's user namespace (strict mode),
/// when this user may open /dev/fuse; else the kernel mounts the root, as for runc.
fn choose_root(
    spec: &Spec,
    opts: &CreateOptions,
    bundle: &Bundle,
    dir: &StateDir,
) -> Result<RootChoice> {
    let host_root = nix::unistd::geteuid().is_root();
    let dev_fuse = host_root || config::dev_fuse_usable();
    if !dev_fuse {
        tracing::info!(
            "rootless and /dev/fuse cannot be opened: the container's root is mounted by the \
             kernel, without a file server"
        );
    }
    // The file server is launched once stage one is forked (see `launch`); rootless, once
    // the container's user namespace exists.
    let served = match config::root_mode(spec, host_root, dev_fuse)? {
        RootMode::Kernel => None,
        RootMode::Served { passthrough, .. } => Some(porta_supervisor::LaunchSpec {
            id: opts.id.clone(),
            state_dir: dir.path.clone(),
            rootfs: bundle.rootfs.clone(),
            passthrough,
            host_changes: config::host_changes(spec),
            transport: config::transport(spec),
            // Known once the cgroup is made (see `create`).
            server_cgroup_procs: Vec::new(),
            exe: PathBuf::from("/proc/self/exe"),
            log: dir.path.join("supervisor.log"),
            api_fd: None,
        }),
    };
    Ok(RootChoice { host_root, served })
}

/// Step 5: the start fifo `start` writes to, opened O_PATH (it lives in the state
/// directory and goes with it).
fn make_start_fifo(dir: &StateDir) -> Result<OwnedFd> {
    let fifo_path = dir.fifo();
    nix::unistd::mkfifo(&fifo_path, nix::sys::stat::Mode::from_bits_truncate(0o622))
        .ctx(|| format!("mkfifo {}", fifo_path.display()))?;
    std::fs::set_permissions(
        &fifo_path,
        std::os::unix::fs::PermissionsExt::from_mode(0o622),
    )
    .ctx(|| "chmod start fifo".into())?;
    nix::fcntl::open(
        &fifo_path,
        nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map(|fd| {
        // SAFETY: open returned a fresh fd we now own.
        unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) }
    })
    .ctx(|| "open start fifo".into())
}

/// Step 6: forks stage one, which joins the cgroup and namespaces and makes the
/// container's process (it never returns to this code). Returns, in the parent, stage
/// one's pid and the channel to it and the container's process.
fn fork_stage_one(args: InitArgs<'_>) -> Result<(i32, Channel)> {
    let (parent_chan, child_chan) = Channel::pair()?;
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
            Ok((stage1, parent_chan))
        }
    }
}

/// Step 7: launches the file server (as root, while stage one runs), takes the
/// container's process's pid from stage one, and answers that process until it is ready.
fn launch(
    chan: &Channel,
    stage1: i32,
    rb: &mut Rollback,
    st: &mut ContainerState,
    spec: &Spec,
    opts: &CreateOptions,
    choice: &RootChoice,
) -> Result<()> {
    let dir = rb
        .dir
        .as_ref()
        .ok_or_else(|| Error::Init("state directory vanished".into()))?;
    // The file server starts while stage one joins the cgroup and namespaces and the
    // container's process sets up its namespaces; that process asks for the mount
    // (NeedRoot) before it makes any mount of its own.
    // Rootless, the supervisor mounts from inside the container's user namespace:
    // it starts when the container's process asks for its root (see drive_init).
    // As root the supervisor was started ahead of the cgroup (see `create`).
    let pending = rb.pending.take();
    // The container's process may speak before stage one has reported its pid:
    // both use the same channel. Keep its early messages for after.
    let mut early = Vec::new();
    let pid = loop {
        match chan.recv("porta create (stage one)") {
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
        porta_sys::pidfd::open(pid).ctx(|| format!("pidfd of the container's process {pid}"))?,
    );
    st.pid = pid;
    st.pid_start_time = porta_sys::proc::start_time(pid).unwrap_or(0);
    let root = match (pending, &choice.served) {
        (Some(p), _) => {
            let l = p.ready()?;
            st.supervisor_pid = l.supervisor_pid;
            dir.save(st)?;
            RootSource::Mounted(l.mount_fd)
        }
        (None, Some(l)) if !choice.host_root => RootSource::InUserNamespace(l, dir),
        (None, _) => RootSource::None,
    };
    drive_init(chan, early, st, spec, opts, root)
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
                        let launched = porta_supervisor::launch(l, Some(userns.as_fd()))?;
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
