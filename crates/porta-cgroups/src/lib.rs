//! The container's cgroups: one group per container with the `payload/` and `porta/` leaves.
//!
//! # Layout
//!
//! For every container Porta makes one *container group* at the config's
//! `linux.cgroupsPath` (resolved as runc resolves it, see [`CgroupsPath`]) in every cgroup
//! hierarchy the host has, and two leaves below it:
//!
//! ```text
//! <hierarchy>/<cgroupsPath>/          the container group: all resource limits go here
//! <hierarchy>/<cgroupsPath>/payload/  the container's own processes (pause, `kill --all`,
//!                                     `ps` and OOM accounting act here)
//! <hierarchy>/<cgroupsPath>/porta/    Porta's servers for this container (file server,
//!                                     translators, supervisor helpers)
//! ```
//!
//! Both leaves count against the container's limits, so a container cannot escape its memory
//! or pids limit through its servers, and its servers are never frozen with it. One
//! exception keeps the servers alive under a fork bomb: the config's pids limit is written
//! to `payload/`, and the container group gets that limit plus [`SERVER_PIDS_RESERVE`]. On cgroup v2
//! the container group holds no process itself (processes live only in leaves, as v2
//! requires once controllers are enabled for children).
//!
//! # Hosts
//!
//! * cgroup v2 only: one directory per level in the unified hierarchy; the controllers the
//!   parent offers are enabled in `cgroup.subtree_control` down to the container group.
//! * cgroup v1 (legacy), and hybrid hosts (v1 controllers plus a cgroup2 mount, which may
//!   itself carry controllers, such as hugetlb): a group in every
//!   hierarchy, including named ones (`name=systemd`) and the cgroup2 one. New v1 cpuset
//!   groups get `cpuset.cpus`/`cpuset.mems` from their parent. Each controller is used
//!   where it is mounted, even when `cpu` and `cpuacct` are separate mounts.
//!
//! # What does what
//!
//! * Limits on cgroup v2 are written by youki's `libcgroups` v2 manager (memory, cpu with
//!   its shares → weight conversion, cpuset, io, pids, hugetlb, the `unified` map), except
//!   the blkio weight (libcgroups 0.7 overflows converting it) and device rules (an eBPF
//!   program written in [`devices_v2`], as libcgroups needs libbpf for it).
//! * Limits on cgroup v1, directory creation, the freezer, statistics (in runc's
//!   `events --stats` shape), and removal are written here (see the module docs of `v1` for
//!   why libcgroups' v1 manager does not fit).
//!
//! # State
//!
//! [`ContainerCgroup::state`] returns a [`CgroupState`] (serde) naming every directory, so
//! that later commands (`porta update`, `events`, `pause`, `ps`, `kill`, `delete`) reopen the
//! same groups with [`ContainerCgroup::open`] without resolving paths again.

#![deny(missing_docs)]

pub mod devices_v2;
mod error;
mod fsutil;
pub mod join;
mod path;
mod setup;
pub mod stats;
mod systemd;
mod v1;
mod v2;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use oci_spec::runtime::{
    LinuxDeviceCgroup, LinuxDeviceCgroupBuilder, LinuxDeviceType, LinuxResources,
};
use serde::{Deserialize, Serialize};

pub use error::{Error, Result};
pub use path::CgroupsPath;
pub use setup::{detect, CgroupMode, CgroupSetup, CgroupVersion, Hierarchy};
pub use stats::Stats;

/// Name of the leaf that holds the container's own processes.
pub const PAYLOAD: &str = "payload";
/// Name of the leaf that holds Porta's servers for the container.
pub const SERVERS: &str = "porta";

/// Extra pids the container group allows above the config's pids limit, usable only by
/// Porta's servers: `payload/` gets the config's limit itself, so a fork bomb in the
/// container cannot starve the restart of its file server.
pub const SERVER_PIDS_RESERVE: i64 = 64;

/// How long [`ContainerCgroup::freeze`] and [`ContainerCgroup::thaw`] wait for the freezer.
const FREEZE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long [`ContainerCgroup::destroy`] waits for killed processes to leave a group.
const KILL_TIMEOUT: Duration = Duration::from_secs(10);

/// What [`ContainerCgroup::create`] needs to know.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CgroupConfig {
    /// The config's `linux.cgroupsPath`, as given (`None` or empty: runc's default).
    pub cgroups_path: Option<PathBuf>,
    /// The container id (the default group name).
    pub container_id: String,
    /// Whether `--systemd-cgroup` was given (the `slice:prefix:name` form).
    pub systemd: bool,
    /// Whether the runtime runs rootless: hierarchies it may not write to are skipped.
    pub rootless: bool,
    /// The config's `linux.resources`: with the systemd driver they become properties of
    /// the unit as well (see the `systemd` module). [`ContainerCgroup::apply`] writes them.
    pub resources: Option<LinuxResources>,
}

/// One of the container's group directories, in one hierarchy.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct CgroupDir {
    /// v1 or v2.
    pub version: CgroupVersion,
    /// The hierarchy's controllers (v2: those of its root).
    pub controllers: Vec<String>,
    /// Where the hierarchy is mounted.
    pub mount_point: PathBuf,
    /// The container group as a path from the hierarchy's root (`/porta/abc`).
    pub cgroup_path: PathBuf,
    /// The container group's directory (`/sys/fs/cgroup/memory/porta/abc`).
    pub path: PathBuf,
}

impl CgroupDir {
    fn has(&self, controller: &str) -> bool {
        self.controllers.iter().any(|c| c == controller)
    }
}

/// Everything later commands need to reopen a container's groups; stored in state.json.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct CgroupState {
    /// The container.
    pub container_id: String,
    /// The host's layout when the groups were made.
    pub mode: CgroupMode,
    /// Whether the container is rootless.
    pub rootless: bool,
    /// The container group in every hierarchy used.
    pub dirs: Vec<CgroupDir>,
    /// With the systemd driver: the unit systemd made for the container group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub systemd_unit: Option<String>,
}

/// A container's cgroups: the container group and its `payload/` and `porta/` leaves in
/// every hierarchy. Dropping it leaves the groups in place; [`ContainerCgroup::destroy`]
/// removes them.
#[derive(Debug)]
pub struct ContainerCgroup {
    st: CgroupState,
    /// systemd driver, during `create` only: the process holding the new scope until the
    /// container's processes are in it (killed when this is dropped).
    holder: Option<systemd::Holder>,
}

enum Freezer {
    V1(PathBuf),
    V2(PathBuf),
}

impl ContainerCgroup {
    /// Makes the container's group and its `payload/` and `porta/` leaves on this host
    /// (with `--systemd-cgroup`: systemd makes the group as a unit, see the `systemd`
    /// module). On failure, everything made so far is removed again.
    pub fn create(cfg: &CgroupConfig) -> Result<Self> {
        let spec = CgroupsPath::parse(cfg)?;
        let setup = detect()?;
        if matches!(spec, CgroupsPath::Systemd { .. }) {
            return Self::create_systemd(&setup, cfg, &spec);
        }
        Self::create_in(&setup, cfg)
    }

    /// Like [`ContainerCgroup::create`], on a given layout (a fake hierarchy in tests), for
    /// the cgroupfs driver.
    pub fn create_in(setup: &CgroupSetup, cfg: &CgroupConfig) -> Result<Self> {
        let spec = CgroupsPath::parse(cfg)?;
        if matches!(spec, CgroupsPath::Systemd { .. }) {
            return Err(systemd_error(cfg, &spec));
        }
        Self::create_at(setup, cfg, |h| Ok(spec.in_hierarchy(h, setup.mode)))
    }

    /// The group of a nested container: `<parent's group>/children/<id>` in every
    /// hierarchy of the parent (whose groups may sit at different paths in each), so that
    /// the parent's limits bound the child's. A hierarchy the parent has no group in is
    /// an error (the child would escape its parent's limits there).
    pub fn create_beneath(parent: &CgroupState, cfg: &CgroupConfig) -> Result<Self> {
        Self::create_beneath_in(&detect()?, parent, cfg)
    }

    /// Like [`ContainerCgroup::create_beneath`], on a given layout (a fake hierarchy in
    /// tests).
    pub fn create_beneath_in(
        setup: &CgroupSetup,
        parent: &CgroupState,
        cfg: &CgroupConfig,
    ) -> Result<Self> {
        Self::create_at(setup, cfg, |h| {
            parent
                .dirs
                .iter()
                .find(|d| d.mount_point == h.mount_point)
                .map(|d| d.cgroup_path.join("children").join(&cfg.container_id))
                .ok_or_else(|| Error::InvalidPath {
                    path: h.mount_point.display().to_string(),
                    reason: format!(
                        "the parent container {} has no group in this hierarchy",
                        parent.container_id
                    ),
                })
        })
    }

    /// Makes the groups at the path `path_of` gives in each hierarchy (cgroupfs driver).
    fn create_at(
        setup: &CgroupSetup,
        cfg: &CgroupConfig,
        path_of: impl Fn(&Hierarchy) -> Result<PathBuf>,
    ) -> Result<Self> {
        let mut made: Vec<PathBuf> = Vec::new();
        let mut dirs = Vec::new();
        for h in &setup.hierarchies {
            let made_before = made.len();
            let cgroup_path = match path_of(h) {
                Ok(p) => p,
                Err(e) => {
                    for d in made.iter().rev() {
                        let _ = std::fs::remove_dir(d);
                    }
                    return Err(e);
                }
            };
            let dir = h.dir_of(&cgroup_path);
            let res = match h.version {
                CgroupVersion::V1 => make_v1(h, &dir, &mut made, device_rules(cfg)),
                CgroupVersion::V2 => v2::make_groups(&h.mount_point, &dir, &mut made, true),
            };
            match res {
                Ok(()) => dirs.push(CgroupDir {
                    version: h.version,
                    controllers: h.controllers.clone(),
                    mount_point: h.mount_point.clone(),
                    cgroup_path,
                    path: dir,
                }),
                Err(e) if cfg.rootless && is_permission_error(&e) => {
                    for d in made.drain(made_before..).rev() {
                        let _ = std::fs::remove_dir(&d);
                    }
                    tracing::warn!(
                        "rootless: no cgroup in the {} hierarchy ({e}); its limits cannot apply",
                        h.controllers.join(",")
                    );
                }
                Err(e) => {
                    for d in made.iter().rev() {
                        let _ = std::fs::remove_dir(d);
                    }
                    return Err(e);
                }
            }
        }
        if let Err(e) = refuse_frozen(&dirs) {
            for d in made.iter().rev() {
                let _ = std::fs::remove_dir(d);
            }
            return Err(e);
        }
        tracing::debug!(container = %cfg.container_id, ?dirs, "cgroups created");
        Ok(ContainerCgroup {
            st: CgroupState {
                container_id: cfg.container_id.clone(),
                mode: setup.mode,
                rootless: cfg.rootless,
                dirs,
                systemd_unit: None,
            },
            holder: None,
        })
    }

    /// The systemd driver: systemd starts the unit (a scope holding the holder process, or a
    /// slice), then Porta makes the leaves in it (and the group itself in the hierarchies
    /// systemd does not manage, as runc does), moves the holder into `porta/` and, on cgroup
    /// v2, enables the controllers for the leaves.
    fn create_systemd(setup: &CgroupSetup, cfg: &CgroupConfig, spec: &CgroupsPath) -> Result<Self> {
        if !systemd::running() || (cfg.rootless && setup.mode != CgroupMode::Unified) {
            return Err(systemd_error(cfg, spec));
        }
        let manager = systemd::Manager::of(cfg.rootless);
        let (unit, computed) = spec.systemd_unit().ok_or_else(|| Error::InvalidPath {
            path: format!("{spec:?}"),
            reason: "not the systemd form".into(),
        })?;
        let slice = match spec {
            CgroupsPath::Systemd { slice, .. } => slice.clone(),
            _ => String::new(),
        };
        let props = systemd::unit_properties(
            &unit,
            &slice,
            &cfg.container_id,
            cfg.resources.as_ref(),
            setup.mode,
        )?;
        let (reported, holder) = systemd::start_unit(manager, &unit, props)?;
        let cgroup_path = if reported.starts_with('/') {
            PathBuf::from(&reported)
        } else {
            computed
        };
        // From here the unit exists: a failure removes what Porta made and stops it.
        let mut cg = ContainerCgroup {
            st: CgroupState {
                container_id: cfg.container_id.clone(),
                mode: setup.mode,
                rootless: cfg.rootless,
                dirs: Vec::new(),
                systemd_unit: Some(unit.clone()),
            },
            holder,
        };
        let mut made: Vec<PathBuf> = Vec::new();
        let res = (|| -> Result<()> {
            for h in &setup.hierarchies {
                let dir = h.dir_of(&cgroup_path);
                match h.version {
                    CgroupVersion::V1 => make_v1(h, &dir, &mut made, device_rules(cfg))?,
                    CgroupVersion::V2 => v2::make_groups(&h.mount_point, &dir, &mut made, false)?,
                }
                cg.st.dirs.push(CgroupDir {
                    version: h.version,
                    controllers: h.controllers.clone(),
                    mount_point: h.mount_point.clone(),
                    cgroup_path: cgroup_path.clone(),
                    path: dir,
                });
            }
            refuse_frozen(&cg.st.dirs)?;
            if let Some(pid) = cg.holder.as_ref().map(|h| h.pid()) {
                cg.add(SERVERS, pid)?;
            }
            if let Some(d) = cg.v2() {
                v2::enable_controllers(&d.path)?;
            }
            Ok(())
        })();
        if let Err(e) = res {
            cg.holder = None;
            for d in made.iter().rev() {
                let _ = std::fs::remove_dir(d);
            }
            if let Err(stop) = systemd::stop_unit(manager, &unit) {
                tracing::warn!("after a failed create: {stop}");
            }
            return Err(e);
        }
        tracing::debug!(container = %cfg.container_id, %unit, dirs = ?cg.st.dirs, "systemd unit and cgroups created");
        Ok(cg)
    }

    /// Reopens groups made earlier (by another command) from their saved state.
    pub fn open(state: &CgroupState) -> Result<Self> {
        Ok(ContainerCgroup {
            st: state.clone(),
            holder: None,
        })
    }

    /// What to save to reopen these groups later.
    pub fn state(&self) -> CgroupState {
        self.st.clone()
    }

    /// The container group in every hierarchy.
    pub fn dirs(&self) -> &[CgroupDir] {
        &self.st.dirs
    }

    /// Applies the config's `linux.resources` to the container group (both leaves count
    /// against them), with two exceptions: the pids limit (see [`SERVER_PIDS_RESERVE`]), and
    /// device rules (the config's, then [`default_device_rules`]), which on cgroup v1 go to
    /// both leaves (the kernel refuses to change the default rule of a v1 devices group that
    /// has children; the group itself got them when it was made, before its leaves) and on
    /// cgroup v2 become an eBPF program on the container group.
    pub fn apply(&self, r: &LinuxResources) -> Result<()> {
        self.set(r, false)
    }

    /// Changes limits of a running container (`porta update`): like
    /// [`ContainerCgroup::apply`], but device rules are left alone, as in runc.
    pub fn update(&self, r: &LinuxResources) -> Result<()> {
        if let Some(unit) = &self.st.systemd_unit {
            let props = systemd::resource_properties(r, self.st.mode)?;
            systemd::set_properties(self.manager(), unit, props)?;
        }
        self.set(r, true)
    }

    /// Moves process `pid` into `payload/` in every hierarchy.
    pub fn add_payload(&self, pid: i32) -> Result<()> {
        self.add(PAYLOAD, pid)
    }

    /// Moves process `pid` (one of Porta's servers) into `porta/` in every hierarchy.
    pub fn add_server(&self, pid: i32) -> Result<()> {
        self.add(SERVERS, pid)
    }

    /// The `cgroup.procs` file of `payload/` in every hierarchy: a freshly forked child
    /// joins by writing `0` to each.
    pub fn payload_procs_files(&self) -> Vec<PathBuf> {
        self.procs_files(PAYLOAD)
    }

    /// The `cgroup.procs` file of `porta/` in every hierarchy.
    pub fn server_procs_files(&self) -> Vec<PathBuf> {
        self.procs_files(SERVERS)
    }

    /// Freezes the container's processes (`payload/` only; Porta's servers keep running)
    /// and waits until the kernel reports them frozen.
    pub fn freeze(&self) -> Result<()> {
        match self.freezer()? {
            Freezer::V1(d) => {
                let f = d.join("freezer.state");
                let start = Instant::now();
                loop {
                    fsutil::write(&f, "FROZEN")?;
                    let state = fsutil::read(&f)?.trim().to_string();
                    if state == "FROZEN" {
                        return Ok(());
                    }
                    if start.elapsed() > FREEZE_TIMEOUT {
                        let _ = fsutil::write(&f, "THAWED");
                        return Err(Error::FreezeTimeout {
                            path: d,
                            wanted: "frozen",
                            waited_ms: FREEZE_TIMEOUT.as_millis() as u64,
                            state,
                        });
                    }
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
            Freezer::V2(d) => v2::freeze(&d),
        }
    }

    /// Thaws the container's processes and waits until the kernel reports them thawed.
    pub fn thaw(&self) -> Result<()> {
        match self.freezer()? {
            Freezer::V1(d) => {
                let f = d.join("freezer.state");
                let start = Instant::now();
                loop {
                    fsutil::write(&f, "THAWED")?;
                    let state = fsutil::read(&f)?.trim().to_string();
                    if state == "THAWED" {
                        return Ok(());
                    }
                    if start.elapsed() > FREEZE_TIMEOUT {
                        return Err(Error::FreezeTimeout {
                            path: d,
                            wanted: "thawed",
                            waited_ms: FREEZE_TIMEOUT.as_millis() as u64,
                            state,
                        });
                    }
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
            Freezer::V2(d) => v2::thaw(&d),
        }
    }

    /// Whether the container's processes are frozen (a group still freezing is not).
    pub fn is_frozen(&self) -> Result<bool> {
        match self.freezer()? {
            Freezer::V1(d) => Ok(fsutil::read(&d.join("freezer.state"))?.trim() == "FROZEN"),
            Freezer::V2(d) => v2::is_frozen(&d),
        }
    }

    /// The processes in `payload/` (and any group the container made below it), for `ps`
    /// and `kill --all`.
    pub fn payload_pids(&self) -> Result<Vec<i32>> {
        match self.primary() {
            Some(d) => fsutil::pids_recursive(&d.path.join(PAYLOAD)),
            None => Ok(Vec::new()),
        }
    }

    /// Sends `signal` to every process of the payload (`kill --all`). When a freezer is
    /// available the payload is frozen first and thawed afterwards, as runc does, so that
    /// no process can fork a new one between the listing and the signal. Returns the pids
    /// signalled.
    pub fn signal_payload(&self, signal: nix::sys::signal::Signal) -> Result<Vec<i32>> {
        let frozen = self.freezer().is_ok() && self.freeze().is_ok();
        let pids = self.payload_pids();
        if let Ok(pids) = &pids {
            for pid in pids {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(*pid), signal);
            }
        }
        if frozen {
            self.thaw()?;
        }
        pids
    }

    /// Statistics of the container group (both leaves), in runc's `events --stats` shape.
    pub fn stats(&self) -> Result<Stats> {
        let mut s = Stats::default();
        if self.st.mode == CgroupMode::Unified {
            return match self.v2() {
                Some(d) => v2::stats(&d.path),
                None => Ok(s),
            };
        }
        if let Some(d) = self.v1_with("cpuacct") {
            stats::v1_cpuacct(&d.path, &mut s.cpu)?;
        }
        if let Some(d) = self.v1_with("cpu") {
            stats::v1_cpu(&d.path, &mut s.cpu)?;
        }
        if let Some(d) = self.v1_with("memory") {
            s.memory = stats::v1_memory(&d.path)?;
        }
        if let Some(d) = self.v1_with("pids") {
            s.pids = pids_stats(&d.path)?;
        }
        if let Some(d) = self.v1_with("blkio") {
            s.blkio = stats::v1_blkio(&d.path)?;
        }
        if let Some(d) = self.v1_with("hugetlb") {
            s.hugetlb = stats::v1_hugetlb(&d.path)?;
        } else if let Some(d) = self.v2().filter(|d| d.has("hugetlb")) {
            s.hugetlb = stats::v2_hugetlb(&d.path)?;
        }
        Ok(s)
    }

    /// How many processes of the container group the kernel's OOM killer has killed, 0 when
    /// unknown. v2: `oom_kill` of the group's `memory.events` (hierarchical). v1: the sum of
    /// `oom_kill` in `memory.oom_control` over the group and every group below it (v1 counts
    /// a kill only in the victim's own group, which is `payload/` or `porta/`).
    pub fn oom_kill_count(&self) -> Result<u64> {
        if self.st.mode == CgroupMode::Unified {
            return match self.v2() {
                Some(d) => v2::oom_kill_count(&d.path),
                None => Ok(0),
            };
        }
        let Some(d) = self.v1_with("memory") else {
            return Ok(0);
        };
        let mut total = 0u64;
        let mut stack = vec![d.path.clone()];
        while let Some(dir) = stack.pop() {
            let list = fsutil::read_flat_keyed(&dir.join("memory.oom_control"))?;
            total = total.saturating_add(fsutil::keyed(&list, "oom_kill").unwrap_or(0));
            stack.extend(fsutil::subdirs(&dir)?);
        }
        Ok(total)
    }

    /// Kills what is left (the payload first, then Porta's servers), waits until every group
    /// is empty and removes the directories in every hierarchy, deepest first (including
    /// groups the container made below `payload/`). Safe to call again on a state whose
    /// directories are already gone.
    pub fn destroy(mut self) -> Result<()> {
        self.holder = None;
        let mut errors: Vec<Error> = Vec::new();
        for leaf in [PAYLOAD, SERVERS, ""] {
            if let Err(e) = self.kill_and_wait(leaf) {
                errors.push(e);
            }
        }
        if let Some(unit) = &self.st.systemd_unit {
            if let Err(e) = systemd::stop_unit(self.manager(), unit) {
                errors.push(e);
            }
        }
        let mut left = Vec::new();
        for d in &self.st.dirs {
            if let Err(e) = remove_tree(&d.path) {
                left.push(d.path.clone());
                errors.push(e);
            }
        }
        if errors.is_empty() {
            return Ok(());
        }
        let first = errors.remove(0);
        if left.is_empty() && errors.is_empty() {
            return Err(first);
        }
        Err(Error::Destroy {
            id: self.st.container_id.clone(),
            first: Box::new(first),
            others: left,
        })
    }

    // ------------------------------------------------------------------ internals

    fn procs_files(&self, leaf: &str) -> Vec<PathBuf> {
        self.st
            .dirs
            .iter()
            .map(|d| d.path.join(leaf).join("cgroup.procs"))
            .collect()
    }

    fn add(&self, leaf: &str, pid: i32) -> Result<()> {
        for f in self.procs_files(leaf) {
            // EINVAL can mean the task is still being set up by fork (TASK_NEW): retry a
            // few times, as runc does.
            let mut tries = 0;
            loop {
                match fsutil::write(&f, &pid.to_string()) {
                    Err(Error::Write { source, .. })
                        if source.raw_os_error() == Some(nix::errno::Errno::EINVAL as i32)
                            && tries < 5 =>
                    {
                        tries += 1;
                        std::thread::sleep(Duration::from_millis(30));
                    }
                    other => {
                        other?;
                        break;
                    }
                }
            }
        }
        Ok(())
    }

    /// The systemd instance that owns the unit (systemd driver).
    fn manager(&self) -> systemd::Manager {
        systemd::Manager::of(self.st.rootless)
    }

    fn v1_with(&self, controller: &str) -> Option<&CgroupDir> {
        self.st
            .dirs
            .iter()
            .find(|d| d.version == CgroupVersion::V1 && d.has(controller))
    }

    fn v2(&self) -> Option<&CgroupDir> {
        self.st.dirs.iter().find(|d| d.version == CgroupVersion::V2)
    }

    /// The hierarchy whose `cgroup.procs` files are read for pids.
    fn primary(&self) -> Option<&CgroupDir> {
        if self.st.mode == CgroupMode::Unified {
            return self.v2();
        }
        ["freezer", "pids", "memory", "devices"]
            .iter()
            .find_map(|c| self.v1_with(c))
            .or_else(|| self.st.dirs.first())
    }

    fn freezer(&self) -> Result<Freezer> {
        if let Some(d) = self.v1_with("freezer") {
            return Ok(Freezer::V1(d.path.join(PAYLOAD)));
        }
        if let Some(d) = self.v2() {
            let leaf = d.path.join(PAYLOAD);
            if leaf.join("cgroup.freeze").exists() {
                return Ok(Freezer::V2(leaf));
            }
            return Err(Error::NoFreezer {
                path: leaf,
                reason: "there is no v1 freezer hierarchy and this kernel's cgroup v2 has no \
                         cgroup.freeze (Linux >= 5.2 needed)"
                    .into(),
            });
        }
        Err(Error::NoFreezer {
            path: PathBuf::from(PAYLOAD),
            reason: "the container has no freezer cgroup".into(),
        })
    }

    /// The controllers a set of resources needs, with the config field that needs each.
    fn required(&self, r: &LinuxResources) -> Vec<(String, &'static str)> {
        let v2 = self.st.mode == CgroupMode::Unified;
        let mut out: Vec<(String, &'static str)> = Vec::new();
        if let Some(m) = r.memory() {
            if m.limit().is_some()
                || m.swap().is_some()
                || m.reservation().is_some()
                || m.swappiness().is_some()
                || m.disable_oom_killer() == Some(true)
            {
                out.push(("memory".into(), "linux.resources.memory"));
            }
        }
        if let Some(c) = r.cpu() {
            if c.shares().is_some_and(|s| s != 0)
                || c.quota().is_some_and(|q| q != 0)
                || c.period().is_some_and(|p| p != 0)
                || c.realtime_runtime().is_some_and(|v| v != 0)
                || c.realtime_period().is_some_and(|v| v != 0)
                || c.idle().is_some()
                || c.burst().is_some()
            {
                out.push(("cpu".into(), "linux.resources.cpu"));
            }
            if c.cpus().as_ref().is_some_and(|s| !s.is_empty())
                || c.mems().as_ref().is_some_and(|s| !s.is_empty())
            {
                out.push(("cpuset".into(), "linux.resources.cpu.cpus/mems"));
            }
        }
        if let Some(p) = r.pids() {
            if p.limit() != 0 {
                out.push(("pids".into(), "linux.resources.pids"));
            }
        }
        if let Some(b) = r.block_io() {
            let any = b.weight().is_some_and(|w| w != 0)
                || b.leaf_weight().is_some_and(|w| w != 0)
                || v1::has_device_entries(b);
            if any {
                out.push((
                    if v2 { "io" } else { "blkio" }.into(),
                    "linux.resources.blockIO",
                ));
            }
        }
        if r.hugepage_limits().as_ref().is_some_and(|v| !v.is_empty()) {
            out.push(("hugetlb".into(), "linux.resources.hugepageLimits"));
        }
        out
    }

    fn check_required(&self, r: &LinuxResources) -> Result<()> {
        for (controller, what) in self.required(r) {
            let dir = self.st.dirs.iter().find(|d| d.has(&controller));
            let Some(dir) = dir else {
                let reason = if self.st.rootless {
                    "is not available to this rootless container (no writable, delegated \
                     cgroup carries it)"
                } else {
                    "is not mounted on this host"
                };
                return Err(Error::ControllerMissing {
                    controller,
                    what: what.into(),
                    reason: reason.into(),
                });
            };
            if dir.version == CgroupVersion::V2 {
                // The group itself must offer the controller (enabled in its parent).
                let offered =
                    fsutil::read_opt(&dir.path.join("cgroup.controllers"))?.unwrap_or_default();
                if !offered.split_whitespace().any(|c| c == controller) {
                    return Err(Error::ControllerMissing {
                        controller: controller.clone(),
                        what: what.into(),
                        reason: format!(
                            "is not enabled for {} (missing from its cgroup.controllers; the \
                             parent's cgroup.subtree_control does not pass it down)",
                            dir.path.display()
                        ),
                    });
                }
            }
        }
        Ok(())
    }

    fn set(&self, r: &LinuxResources, update: bool) -> Result<()> {
        let mut r = r.clone();
        if update {
            r.set_devices(None);
        }
        self.check_required(&r)?;
        if r.network().is_some() && self.st.mode == CgroupMode::Unified {
            tracing::warn!("linux.resources.network is ignored on cgroup v2 (no net_cls/net_prio)");
        }
        if self.st.mode == CgroupMode::Unified {
            return match self.v2() {
                Some(d) => v2::set(d, &r, self.st.rootless),
                None => Ok(()),
            };
        }

        // cgroup v1 (with a cgroup2 hierarchy on hybrid hosts).
        let find = |c: &str| self.v1_with(c).map(|d| d.path.clone());
        if let Some(m) = r.memory() {
            v1::memory(&find, m)?;
        }
        if let Some(c) = r.cpu() {
            if c.realtime_runtime().is_some() || c.realtime_period().is_some() {
                // The kernel refuses a group a realtime budget smaller than its children's
                // (payload/ holds a copy of the last one): payload/'s goes to 0 first and
                // gets the new one below, after the group's.
                if let Some(d) = self.v1_with("cpu") {
                    let f = d.path.join(PAYLOAD).join("cpu.rt_runtime_us");
                    if f.exists() {
                        fsutil::write(&f, "0")?;
                    }
                }
            }
            v1::cpu(&find, c)?;
            v1::cpuset(&find, c)?;
        }
        // The same memory and cpu limits on payload/, so the container sees them in its
        // own cgroup (both leaves still count against the container group's limits).
        let find_payload = |c: &str| self.v1_with(c).map(|d| d.path.join(PAYLOAD));
        if let Some(m) = r.memory() {
            v1::memory(&find_payload, m)?;
        }
        if let Some(c) = r.cpu() {
            v1::cpu(&find_payload, c)?;
        }
        if let Some(p) = r.pids() {
            v1::pids(&find, p.limit())?;
        }
        if let Some(b) = r.block_io() {
            v1::blkio(&find, b)?;
        }
        if let Some(n) = r.network() {
            v1::network(&find, n)?;
        }
        // What the cgroup2 hierarchy of a hybrid host carries: hugetlb here, and `unified`
        // entries for its controllers.
        let mut for_v2 = LinuxResources::default();
        let mut any_v2 = false;
        if let Some(limits) = r.hugepage_limits() {
            if let Some(d) = self.v1_with("hugetlb") {
                for l in limits {
                    v1::hugetlb(&d.path, l.page_size(), l.limit())?;
                }
            } else if !limits.is_empty() {
                for_v2.set_hugepage_limits(Some(limits.clone()));
                any_v2 = true;
            }
        }
        if let Some(u) = r.unified() {
            if !u.is_empty() {
                let v2 = self.v2();
                for key in u.keys() {
                    let controller = key.split('.').next().unwrap_or_default();
                    let ok = v2.is_some_and(|d| d.has(controller) || controller == "cgroup");
                    if !ok {
                        return Err(Error::InvalidValue {
                            field: "linux.resources.unified".into(),
                            value: key.clone(),
                            reason: format!(
                                "this host's {controller} controller is cgroup v1; unified \
                                 entries only reach controllers of the cgroup2 hierarchy"
                            ),
                        });
                    }
                }
                for_v2.set_unified(Some(u.clone()));
                any_v2 = true;
            }
        }
        if any_v2 {
            if let Some(d) = self.v2() {
                v2::apply(d, &for_v2, self.st.rootless)?;
            }
        }
        if !update {
            if let Some(devs) = r.devices() {
                match (self.v1_with("devices"), self.v2()) {
                    // A hybrid host without a v1 devices hierarchy: filter on cgroup2.
                    (None, Some(d)) => {
                        let mut rules = devs.clone();
                        rules.extend(default_device_rules());
                        devices_v2::attach(&d.path, &rules)?;
                    }
                    _ => v1::devices(&find, devs)?,
                }
            }
        }
        Ok(())
    }

    /// SIGKILLs every process in `leaf` (the container group itself for `""`) in every
    /// hierarchy, and waits until none is left.
    fn kill_and_wait(&self, leaf: &str) -> Result<()> {
        let targets: Vec<PathBuf> = self
            .st
            .dirs
            .iter()
            .map(|d| {
                if leaf.is_empty() {
                    d.path.clone()
                } else {
                    d.path.join(leaf)
                }
            })
            .collect();
        // cgroup v2 can kill a whole subtree at once, without a race against fork.
        if let Some(d) = self.v2() {
            let kill = if leaf.is_empty() {
                d.path.clone()
            } else {
                d.path.join(leaf)
            }
            .join("cgroup.kill");
            if kill.exists() {
                let _ = fsutil::write(&kill, "1");
            }
        }
        let start = Instant::now();
        let mut thawed = false;
        loop {
            let mut pids = Vec::new();
            let mut first_with = None;
            for t in &targets {
                let p = fsutil::pids_recursive(t)?;
                if !p.is_empty() && first_with.is_none() {
                    first_with = Some(t.clone());
                }
                pids.extend(p);
            }
            pids.sort_unstable();
            pids.dedup();
            if pids.is_empty() {
                return Ok(());
            }
            for pid in &pids {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(*pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            if !thawed {
                // A frozen v1 task cannot act on SIGKILL until thawed.
                thawed = true;
                if leaf == PAYLOAD || leaf.is_empty() {
                    if let Ok(Freezer::V1(d)) = self.freezer() {
                        let _ = fsutil::write(&d.join("freezer.state"), "THAWED");
                    }
                }
            }
            if start.elapsed() > KILL_TIMEOUT {
                return Err(Error::NotEmpty {
                    path: first_with.unwrap_or_default(),
                    pids,
                    waited_ms: KILL_TIMEOUT.as_millis() as u64,
                });
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// The device rules Porta always allows on top of the config's (the same set runc allows:
/// `mknod` of any device, and /dev/null, zero, full, tty, random, urandom, console, ptmx,
/// the pty slaves and /dev/net/tun).
pub fn default_device_rules() -> Vec<LinuxDeviceCgroup> {
    let rule = |typ: LinuxDeviceType, major: Option<i64>, minor: Option<i64>, access: &str| {
        let mut b = LinuxDeviceCgroupBuilder::default()
            .allow(true)
            .typ(typ)
            .access(access);
        if let Some(m) = major {
            b = b.major(m);
        }
        if let Some(m) = minor {
            b = b.minor(m);
        }
        b.build().ok()
    };
    use LinuxDeviceType::{B, C};
    [
        rule(C, None, None, "m"),
        rule(B, None, None, "m"),
        rule(C, Some(1), Some(3), "rwm"),
        rule(C, Some(1), Some(5), "rwm"),
        rule(C, Some(1), Some(7), "rwm"),
        rule(C, Some(5), Some(0), "rwm"),
        rule(C, Some(1), Some(8), "rwm"),
        rule(C, Some(1), Some(9), "rwm"),
        rule(C, Some(5), Some(2), "rwm"),
        rule(C, Some(136), None, "rwm"),
        rule(C, Some(10), Some(200), "rwm"),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// Why the systemd driver cannot be used: systemd does not run here, the runtime is
/// rootless on a host with cgroup v1 controllers, or (fake hierarchies in tests) there is
/// no host systemd to ask.
fn systemd_error(cfg: &CgroupConfig, spec: &CgroupsPath) -> Error {
    let path = cfg
        .cgroups_path
        .as_ref()
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default();
    if !systemd::running() {
        return Error::SystemdNotRunning { path };
    }
    if cfg.rootless {
        return Error::SystemdRootlessV1 { path };
    }
    Error::InvalidPath {
        path,
        reason: format!(
            "the systemd form ({:?}) needs the host's systemd, not a given layout",
            spec.systemd_unit().map(|(u, _)| u).unwrap_or_default()
        ),
    }
}

fn is_permission_error(e: &Error) -> bool {
    match e {
        Error::CreateDir { source, .. } | Error::Write { source, .. } => {
            fsutil::is_permission(source)
        }
        _ => false,
    }
}

pub(crate) fn mkdir(dir: &Path, made: &mut Vec<PathBuf>) -> Result<()> {
    match std::fs::create_dir(dir) {
        Ok(()) => {
            made.push(dir.to_path_buf());
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && dir.is_dir() => Ok(()),
        Err(source) => Err(Error::CreateDir {
            path: dir.to_path_buf(),
            source,
        }),
    }
}

/// The directories from just below `mount_point` down to `dir`.
pub(crate) fn levels(mount_point: &Path, dir: &Path) -> Vec<PathBuf> {
    let rel = dir.strip_prefix(mount_point).unwrap_or(Path::new(""));
    let mut cur = mount_point.to_path_buf();
    rel.components()
        .map(|c| {
            cur.push(c);
            cur.clone()
        })
        .collect()
}

/// The config's device rules, if it has any (written at creation on cgroup v1).
fn device_rules(cfg: &CgroupConfig) -> Option<&[LinuxDeviceCgroup]> {
    cfg.resources.as_ref().and_then(|r| r.devices().as_deref())
}

/// Makes the v1 groups down to the container group and its leaves. In the devices
/// hierarchy the config's rules (`devices`) are written to the container group before its
/// leaves exist: the kernel refuses to change the default rule of a group that has
/// children, and the leaves inherit the group's rules when they are made. So the
/// configured path's `devices.list` reads as the config says, as with runc.
fn make_v1(
    h: &Hierarchy,
    dir: &Path,
    made: &mut Vec<PathBuf>,
    devices: Option<&[LinuxDeviceCgroup]>,
) -> Result<()> {
    let cpuset = h.has("cpuset");
    for level in levels(&h.mount_point, dir) {
        mkdir(&level, made)?;
        if cpuset {
            v1::cpuset_inherit(&level)?;
        }
    }
    if let Some(rules) = devices.filter(|_| h.has("devices")) {
        v1::device_rules_on(dir, rules)?;
    }
    for leaf in [dir.join(PAYLOAD), dir.join(SERVERS)] {
        mkdir(&leaf, made)?;
        if cpuset {
            v1::cpuset_inherit(&leaf)?;
        }
    }
    Ok(())
}

/// Refuses a container group (or payload leaf) that is frozen already, as runc does: a
/// group made earlier by someone else, frozen (or below a frozen parent), would hold the
/// container's first process forever.
fn refuse_frozen(dirs: &[CgroupDir]) -> Result<()> {
    for d in dirs {
        for dir in [d.path.clone(), d.path.join(PAYLOAD)] {
            let (file, frozen) = match d.version {
                CgroupVersion::V1 if d.controllers.iter().any(|c| c == "freezer") => {
                    let f = dir.join("freezer.state");
                    // The root group of a freezer hierarchy has no freezer.state.
                    let Some(st) = fsutil::read_opt(&f)? else {
                        continue;
                    };
                    let frozen = st.trim() != "THAWED";
                    (f, frozen.then(|| st.trim().to_string()))
                }
                CgroupVersion::V2 if dir.join("cgroup.freeze").exists() => {
                    let f = dir.join("cgroup.events");
                    let frozen = v2::is_frozen(&dir)?
                        || fsutil::read(&dir.join("cgroup.freeze"))?.trim() == "1";
                    (f, frozen.then(|| "frozen".to_string()))
                }
                _ => continue,
            };
            if let Some(state) = frozen {
                return Err(Error::Frozen { path: file, state });
            }
        }
    }
    Ok(())
}

/// The pids limit, on v1 and v2 alike: `payload/pids.max` = `limit` (what the container's
/// processes may have), and the container group's `pids.max` = `limit` +
/// [`SERVER_PIDS_RESERVE`] (both leaves count against it; the reserve keeps room for
/// Porta's servers). A negative limit means no limit anywhere.
pub(crate) fn write_pids_limits(dir: &Path, limit: i64) -> Result<()> {
    if limit < 0 {
        fsutil::write(&dir.join("pids.max"), "max")?;
        return fsutil::write(&dir.join(PAYLOAD).join("pids.max"), "max");
    }
    let group = limit.saturating_add(SERVER_PIDS_RESERVE);
    // Raise the group first: the leaf's value is checked against nothing, but keeping
    // group >= leaf at every step avoids a moment where the servers have no room.
    fsutil::write(&dir.join("pids.max"), &group.to_string())?;
    fsutil::write(&dir.join(PAYLOAD).join("pids.max"), &limit.to_string())
}

/// pids of the whole container (both leaves), with the limit the config asked for (that of
/// `payload/`, see [`SERVER_PIDS_RESERVE`]).
pub(crate) fn pids_stats(dir: &Path) -> Result<stats::Pids> {
    let mut p = stats::pids(dir)?;
    let leaf = dir.join(PAYLOAD).join("pids.max");
    if let Some(v) = fsutil::read_opt(&leaf)? {
        let v = fsutil::parse_u64(&leaf, v.trim())?;
        p.limit = if v == u64::MAX { 0 } else { v };
    }
    Ok(p)
}

/// Removes `dir` and every group below it, deepest first; a missing directory is fine.
/// rmdir is retried for a while on EBUSY (the kernel may still be releasing a dead task).
fn remove_tree(dir: &Path) -> Result<()> {
    for sub in fsutil::subdirs(dir)? {
        remove_tree(&sub)?;
    }
    let start = Instant::now();
    loop {
        match std::fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e)
                if e.raw_os_error() == Some(nix::errno::Errno::EBUSY as i32)
                    && start.elapsed() < Duration::from_secs(2) =>
            {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(source) => {
                return Err(Error::RemoveDir {
                    path: dir.to_path_buf(),
                    source,
                })
            }
        }
    }
}

#[cfg(test)]
mod v1_fake_tests;
#[cfg(test)]
mod v2_fake_tests;
