//! The crate's one error type.

use std::path::PathBuf;

/// Everything that can go wrong while making, limiting, reading or removing a container's
/// cgroups. Each variant names the file or directory, the controller and the value involved,
/// so that the message alone tells a person what to look at.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A cgroup file could not be read.
    #[error("cannot read cgroup file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What the kernel said.
        source: std::io::Error,
    },

    /// A value could not be written to a cgroup file.
    #[error("cannot write {value:?} to {path}: {source}{}", write_hint(source))]
    Write {
        /// The file.
        path: PathBuf,
        /// The value that was written.
        value: String,
        /// What the kernel said.
        source: std::io::Error,
    },

    /// A cgroup directory could not be made.
    #[error("cannot create cgroup directory {path}: {source}")]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// What the kernel said.
        source: std::io::Error,
    },

    /// A cgroup directory could not be removed.
    #[error("cannot remove cgroup directory {path}: {source}")]
    RemoveDir {
        /// The directory.
        path: PathBuf,
        /// What the kernel said.
        source: std::io::Error,
    },

    /// A cgroup file held something this crate does not understand.
    #[error("cannot parse {path}: {detail}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What was wrong with it.
        detail: String,
    },

    /// The container's cgroup existed already and is frozen (its processes would never run).
    #[error(
        "container's cgroup unexpectedly frozen: {path} reports {state:?}; thaw it (or remove \
         it) or choose another linux.cgroupsPath"
    )]
    Frozen {
        /// The group's freezer file.
        path: PathBuf,
        /// What it says.
        state: String,
    },

    /// No cgroup file system is mounted.
    #[error("no cgroup hierarchy is mounted: /proc/self/mountinfo lists no `cgroup` or `cgroup2` file system")]
    NoCgroups,

    /// The config's `cgroupsPath` (or the container id used in its place) is unusable.
    #[error("invalid cgroupsPath {path:?}: {reason}")]
    InvalidPath {
        /// The path as given.
        path: String,
        /// Why it is refused.
        reason: String,
    },

    /// The systemd cgroup driver was asked for, but systemd is not running on this host.
    #[error(
        "the systemd cgroup driver was requested (cgroupsPath {path:?}) but systemd is not \
         running on this host (/run/systemd/system does not exist); run without \
         --systemd-cgroup so that Porta manages the cgroup file system itself"
    )]
    SystemdNotRunning {
        /// The cgroupsPath as given.
        path: String,
    },

    /// The systemd cgroup driver was asked for by a rootless runtime on a host with cgroup
    /// v1 controllers: systemd delegates a subtree to a user only on cgroup v2.
    #[error(
        "the systemd cgroup driver (cgroupsPath {path:?}) needs a cgroup v2-only host when \
         rootless: systemd delegates no cgroup v1 controller to a user; run without \
         --systemd-cgroup"
    )]
    SystemdRootlessV1 {
        /// The cgroupsPath as given.
        path: String,
    },

    /// systemd refused or failed a request for the container's unit.
    #[error("systemd cannot {action} unit {unit}: {msg}")]
    Systemd {
        /// The unit, e.g. `porta-abc.scope`.
        unit: String,
        /// What was asked: start, stop, update.
        action: &'static str,
        /// systemd's (or the bus's) answer.
        msg: String,
    },

    /// A limit needs a controller that this host (or this rootless container) does not have.
    #[error("{what} needs the {controller} cgroup controller, which {reason}")]
    ControllerMissing {
        /// The controller, e.g. `memory`.
        controller: String,
        /// The limit that needs it, e.g. `linux.resources.memory.limit`.
        what: String,
        /// Why it is missing.
        reason: String,
    },

    /// A resource value is out of range or malformed.
    #[error("invalid value {value:?} for {field}: {reason}")]
    InvalidValue {
        /// The config field, e.g. `linux.resources.memory.swap`.
        field: String,
        /// The value as given.
        value: String,
        /// What is wrong with it.
        reason: String,
    },

    /// libcgroups (youki's cgroup v2 code) failed to write a limit.
    #[error("cannot apply resource limits to cgroup v2 group {path}: {source}")]
    V2Apply {
        /// The group.
        path: PathBuf,
        /// libcgroups' error, naming the file and value.
        source: libcgroups::v2::manager::V2ManagerError,
    },

    /// A bpf(2) call for the cgroup v2 device filter failed.
    #[error("cannot {op} cgroup {path}: {source}{}", if log.is_empty() { String::new() } else { format!("; verifier log: {log}") })]
    Bpf {
        /// What was being done.
        op: &'static str,
        /// The group.
        path: PathBuf,
        /// What the kernel said.
        source: std::io::Error,
        /// The verifier's log, if any.
        log: String,
    },

    /// The freezer did not reach the wanted state in time.
    #[error("cgroup {path} did not become {wanted} within {waited_ms} ms (state now: {state})")]
    FreezeTimeout {
        /// The group.
        path: PathBuf,
        /// `frozen` or `thawed`.
        wanted: &'static str,
        /// How long Porta waited.
        waited_ms: u64,
        /// The last state read.
        state: String,
    },

    /// The group cannot be frozen because no freezer is available.
    #[error("cannot freeze or thaw {path}: {reason}")]
    NoFreezer {
        /// The group (the payload leaf).
        path: PathBuf,
        /// Why.
        reason: String,
    },

    /// Processes stayed in a group after they were sent SIGKILL.
    #[error(
        "cgroup {path} still holds processes {pids:?} {waited_ms} ms after SIGKILL \
         (stuck in uninterruptible sleep?); it was left in place"
    )]
    NotEmpty {
        /// The group.
        path: PathBuf,
        /// The processes left.
        pids: Vec<i32>,
        /// How long Porta waited.
        waited_ms: u64,
    },

    /// Several directories could not be removed; the first error is kept with the list.
    #[error(
        "cannot remove every cgroup directory of container {id}: {first}; also left: {others:?}"
    )]
    Destroy {
        /// The container.
        id: String,
        /// The first failure.
        first: Box<Error>,
        /// Other directories left behind.
        others: Vec<PathBuf>,
    },
}

fn write_hint(e: &std::io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(libc_ebusy) if libc_ebusy == nix::errno::Errno::EBUSY as i32 => {
            " (EBUSY: for a memory limit, usage may be above the new limit; for cgroup.procs on \
             cgroup v2, the group may have child groups with controllers enabled)"
        }
        Some(e) if e == nix::errno::Errno::EINVAL as i32 => {
            " (EINVAL: the kernel refused the value; check its range and format)"
        }
        Some(e) if e == nix::errno::Errno::ENOENT as i32 => {
            " (ENOENT: the file does not exist; the controller may not be enabled for this group)"
        }
        Some(e)
            if e == nix::errno::Errno::EACCES as i32 || e == nix::errno::Errno::EPERM as i32 =>
        {
            " (permission denied: is the cgroup delegated to this user?)"
        }
        _ => "",
    }
}

/// Result with the crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
