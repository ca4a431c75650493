//! Nested containers: a container made by a process of another container (its parent),
//! confined to the parent's tree and cgroup, with its own user namespace, superuser and
//! file server.
//!
//! The operations here are what the parent's API socket (or the host's hidden
//! `porta nested` command) runs for a caller inside the parent. The caller's identity
//! comes from the kernel, never from a message: [`Caller`] holds its host ids.
//!
//! Layout, for a parent whose state directory is `P`:
//!
//! ```text
//! P/children/                 a Porta state root: the children's state directories
//!                             (`porta --root P/children list` works on them from the host)
//! /run/porta-nested/<hash of P>/<id>/
//!                             host-only, the child's bundle: the sanitized config.json,
//!     root/                   a clone of the child's root directory from the parent's tree
//!                             (open_tree + move_mount: nothing the parent does later swaps it)
//!     bind-<n>/               the same for the source of bind mount n
//!     nested.json             the bundle and root as the parent named them (for `state`)
//! <parent's cgroup>/children/<id>/   the child's cgroup (the parent's limits bound it)
//! ```
//!
//! Who may do what: only the parent's superuser (the host uid its user namespace maps 0
//! to, or host root) creates, starts, enters (`exec`), kills and deletes children;
//! anyone in the parent reads their `state` and `list`s them.

pub mod idmap;
pub mod sanitize;

use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use crate::container::{self, Container};
use crate::error::{Context, Error, Result};
use crate::state::{self, ContainerState, StateDir, StateRoot};
use idmap::Extent;

/// The state root of a container's children, beneath its state directory.
pub const CHILDREN: &str = "children";
/// The host-only directory of the children's bundles and root mounts.
/// Where the children's host-only directories live: outside every state root, since a
/// state root is private (0700) and a child's process, whose host uid is its parent's
/// (a user namespace's), must walk the path of its root to attach its file server's
/// mount there. Each directory on the way is 0711: passable, not listable.
pub const CHILD_ROOTS: &str = "/run/porta-nested";

/// The host-only directory of the children of the container whose state directory is
/// `parent_dir`: `CHILD_ROOTS/<hash of parent_dir>` (FNV-1a, stable across builds).
pub fn child_roots(parent_dir: &Path) -> PathBuf {
    // The same directory whichever spelling of the path names it (a state root reached
    // through a symlink): the canonical one while it exists, as it does whenever children
    // are made or deleted.
    let canonical = std::fs::canonicalize(parent_dir).unwrap_or_else(|_| parent_dir.into());
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in canonical.as_os_str().as_encoded_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    Path::new(CHILD_ROOTS).join(format!("{h:016x}"))
}
/// The largest config.json a child's bundle may have.
const MAX_CONFIG: u64 = 4 << 20;
/// `RESOLVE_BENEATH` of openat2(2).
const RESOLVE_BENEATH: u64 = 0x08;

/// The container a request is about: the parent of the children it acts on.
#[derive(Debug, Clone)]
pub struct Parent {
    /// The state root the parent lives in.
    pub root: StateRoot,
    /// Its state directory.
    pub dir: PathBuf,
    /// Its recorded state.
    pub state: ContainerState,
    /// Its saved config (as Porta wrote it at create).
    config: Value,
}

/// Who asks: the process on the other end of the API socket, as the kernel names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    /// Its effective uid on the host.
    pub uid: u32,
    /// Its effective gid on the host.
    pub gid: u32,
    /// Its pid on the host.
    pub pid: i32,
}

/// The three standard descriptors a child's process (or the `create` of it) gets.
#[derive(Debug)]
pub struct Stdio {
    /// Standard input.
    pub stdin: OwnedFd,
    /// Standard output.
    pub stdout: OwnedFd,
    /// Standard error.
    pub stderr: OwnedFd,
}

impl Stdio {
    /// Copies of this process's own stdio.
    pub fn inherit() -> Result<Stdio> {
        let dup = |fd: BorrowedFd<'_>| fd.try_clone_to_owned().ctx(|| "dup stdio".to_string());
        Ok(Stdio {
            stdin: dup(std::io::stdin().as_fd())?,
            stdout: dup(std::io::stdout().as_fd())?,
            stderr: dup(std::io::stderr().as_fd())?,
        })
    }

    /// `/dev/null` for all three.
    pub fn null() -> Result<Stdio> {
        let open = || -> Result<OwnedFd> {
            Ok(std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/null")
                .ctx(|| "open /dev/null".to_string())?
                .into())
        };
        Ok(Stdio {
            stdin: open()?,
            stdout: open()?,
            stderr: open()?,
        })
    }

    /// From the (up to three) descriptors a request carried: missing ones are `/dev/null`.
    pub fn from_fds(fds: Vec<OwnedFd>) -> Result<Stdio> {
        let mut it = fds.into_iter();
        let null = Stdio::null()?;
        Ok(Stdio {
            stdin: it.next().unwrap_or(null.stdin),
            stdout: it.next().unwrap_or(null.stdout),
            stderr: it.next().unwrap_or(null.stderr),
        })
    }
}

/// `create`: the child's id and its bundle, a directory of the parent's tree.
#[derive(Debug, Clone)]
pub struct CreateRequest {
    /// The child's id (unique among the parent's children).
    pub id: String,
    /// The bundle, as an absolute path in the parent's root file system.
    pub bundle: PathBuf,
}

/// `exec`: a process to run in a child, with the caller's stdio.
#[derive(Debug, Clone, Default)]
pub struct ExecRequest {
    /// The child's id.
    pub id: String,
    /// The program and its arguments.
    pub args: Vec<String>,
    /// `KEY=VALUE` entries added to the container's environment.
    pub env: Vec<String>,
    /// Working directory in the child (default: the container's).
    pub cwd: Option<String>,
    /// `uid[:gid]` in the child (default: the container's user).
    pub user: Option<String>,
}

impl Parent {
    /// Loads container `id` of `root` as a parent (without holding its lock).
    pub fn open(root: &StateRoot, id: &str) -> Result<Parent> {
        state::validate_id(id)?;
        let dir = root.dir(id);
        let read = |name: &str| -> Result<Vec<u8>> {
            let p = dir.join(name);
            std::fs::read(&p).map_err(|e| {
                if e.kind() == std::io::ErrorKind::NotFound {
                    Error::NotFound(id.to_string())
                } else {
                    Error::State {
                        path: p,
                        msg: e.to_string(),
                    }
                }
            })
        };
        let state = state::parse_state(&read("state.json")?).map_err(|msg| Error::State {
            path: dir.join("state.json"),
            msg,
        })?;
        let config: Value =
            serde_json::from_slice(&read("config.json")?).map_err(|e| Error::State {
                path: dir.join("config.json"),
                msg: e.to_string(),
            })?;
        Ok(Parent {
            root: root.clone(),
            dir,
            state,
            config,
        })
    }

    /// The id.
    pub fn id(&self) -> &str {
        &self.state.id
    }

    /// The state root of the children.
    pub fn children_root(&self) -> StateRoot {
        StateRoot {
            path: self.dir.join(CHILDREN),
        }
    }

    fn alive(&self) -> bool {
        self.state.pid > 0
            && porta_sys::proc::Stat::of(self.state.pid)
                .is_some_and(|s| s.start_time == self.state.pid_start_time && !s.is_dead())
    }

    fn user_namespace(&self) -> Option<&Value> {
        self.config["linux"]["namespaces"]
            .as_array()?
            .iter()
            .find(|n| n["type"] == "user")
    }

    /// The parent's uid (`"uid"`) or gid (`"gid"`) map: its ids to host ids.
    fn id_map(&self, kind: &str) -> Result<Vec<Extent>> {
        let Some(ns) = self.user_namespace() else {
            return Ok(idmap::identity());
        };
        if ns["path"].as_str().is_some_and(|p| !p.is_empty()) {
            // A joined user namespace: the kernel's map of the parent's process.
            if !self.alive() {
                return Err(self.stopped());
            }
            let p = format!("/proc/{}/{kind}_map", self.state.pid);
            let text = std::fs::read_to_string(&p).ctx(|| format!("read {p}"))?;
            return idmap::parse_proc(&text).map_err(|m| Error::State {
                path: p.into(),
                msg: m,
            });
        }
        let field = if kind == "uid" {
            "uidMappings"
        } else {
            "gidMappings"
        };
        Ok(self.config["linux"][field]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|m| {
                Some(Extent {
                    inside: m["containerID"].as_u64()?,
                    outside: m["hostID"].as_u64()?,
                    count: m["size"].as_u64()?,
                })
            })
            .collect())
    }

    fn stopped(&self) -> Error {
        Error::BadState {
            id: self.state.id.clone(),
            status: "stopped".into(),
            msg: "its process is not running: it cannot make children".into(),
        }
    }

    /// Refuses a caller that is not the parent's superuser (the host uid the parent's user
    /// namespace maps 0 to, or host root).
    pub fn authorize(&self, caller: &Caller, what: &str) -> Result<()> {
        if caller.uid == 0 {
            return Ok(());
        }
        let root = idmap::map_one(&self.id_map("uid")?, 0);
        if root == Some(u64::from(caller.uid)) {
            return Ok(());
        }
        Err(Error::Denied(format!(
            "only the superuser of container {} may {what} its children (the caller is \
             host uid {}, the container's root is {})",
            self.state.id,
            caller.uid,
            root.map_or("unmapped".to_string(), |u| format!("host uid {u}"))
        )))
    }

    fn bounds(&self) -> Result<sanitize::Bounds> {
        if !self.alive() {
            return Err(self.stopped());
        }
        if self.state.cgroup.is_none() {
            return Err(Error::BadState {
                id: self.state.id.clone(),
                status: "without a cgroup".into(),
                msg: "a child's cgroup goes beneath its parent's".into(),
            });
        }
        let pid = self.state.pid;
        let p = format!("/proc/{pid}/oom_score_adj");
        let oom_score_adj = std::fs::read_to_string(&p)
            .ctx(|| format!("read {p}"))?
            .trim()
            .parse::<i64>()
            .map_err(|e| Error::State {
                path: p.clone().into(),
                msg: e.to_string(),
            })?;
        let mut rlimits = Vec::new();
        for (name, res) in RLIMITS {
            let mut old = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            // SAFETY: prlimit reads the limit of `pid` into `old`, a valid struct we own;
            // the new-limit pointer is null (nothing is changed).
            if unsafe { libc::prlimit(pid, res, std::ptr::null(), &mut old) } == 0 {
                rlimits.push((name.to_string(), old.rlim_max));
            }
        }
        Ok(sanitize::Bounds {
            uid_map: self.id_map("uid")?,
            gid_map: self.id_map("gid")?,
            oom_score_adj,
            rlimits,
        })
    }

    fn child_dir(&self, id: &str) -> PathBuf {
        child_roots(&self.dir).join(id)
    }
}

/// The resource limits a child's config may name, with their `RLIMIT_*` numbers.
const RLIMITS: [(&str, libc::__rlimit_resource_t); 16] = [
    ("RLIMIT_CPU", libc::RLIMIT_CPU),
    ("RLIMIT_FSIZE", libc::RLIMIT_FSIZE),
    ("RLIMIT_DATA", libc::RLIMIT_DATA),
    ("RLIMIT_STACK", libc::RLIMIT_STACK),
    ("RLIMIT_CORE", libc::RLIMIT_CORE),
    ("RLIMIT_RSS", libc::RLIMIT_RSS),
    ("RLIMIT_NPROC", libc::RLIMIT_NPROC),
    ("RLIMIT_NOFILE", libc::RLIMIT_NOFILE),
    ("RLIMIT_MEMLOCK", libc::RLIMIT_MEMLOCK),
    ("RLIMIT_AS", libc::RLIMIT_AS),
    ("RLIMIT_LOCKS", libc::RLIMIT_LOCKS),
    ("RLIMIT_SIGPENDING", libc::RLIMIT_SIGPENDING),
    ("RLIMIT_MSGQUEUE", libc::RLIMIT_MSGQUEUE),
    ("RLIMIT_NICE", libc::RLIMIT_NICE),
    ("RLIMIT_RTPRIO", libc::RLIMIT_RTPRIO),
    ("RLIMIT_RTTIME", libc::RLIMIT_RTTIME),
];

/// The runtime binary the children's `create` and `exec` run (this one).
fn runtime_exe() -> PathBuf {
    PathBuf::from("/proc/self/exe")
}

/// The host-only directory of one child: removed, with its mounts, when dropped armed.
struct ChildDir {
    path: PathBuf,
    armed: bool,
}

impl Drop for ChildDir {
    fn drop(&mut self) {
        if self.armed {
            if let Err(e) = release_child_dir(&self.path) {
                tracing::warn!("after a failed nested create: {e}");
            }
        }
    }
}

/// Unmounts and removes a child's host-only directory. Only the names this module makes
/// are touched, each removed with rmdir/unlink: a mount that would not go away makes an
/// error, never a recursive removal through the parent's tree.
pub fn release_child_dir(dir: &Path) -> Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::sys(format!("read {}", dir.display()), e)),
    };
    for e in entries {
        let e = e.ctx(|| format!("read {}", dir.display()))?;
        let name = e.file_name();
        let name = name.to_string_lossy();
        let p = e.path();
        if name == "root" || name.starts_with("bind-") {
            match nix::mount::umount2(
                &p,
                nix::mount::MntFlags::MNT_DETACH | nix::mount::MntFlags::UMOUNT_NOFOLLOW,
            ) {
                Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
                Err(e) => return Err(Error::nix(format!("unmount {}", p.display()), e)),
            }
        }
        let is_dir = std::fs::symlink_metadata(&p).is_ok_and(|m| m.is_dir());
        if is_dir {
            std::fs::remove_dir(&p).ctx(|| format!("remove {}", p.display()))?;
        } else {
            std::fs::remove_file(&p).ctx(|| format!("remove {}", p.display()))?;
        }
    }
    match std::fs::remove_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::sys(format!("remove {}", dir.display()), e)),
    }
}

/// Resolves `path` of the parent's view: absolute ones in the parent's root (no symlink
/// or `..` leaves it), relative ones beneath the bundle directory.
fn resolve(
    proot: BorrowedFd<'_>,
    bundle: BorrowedFd<'_>,
    path: &str,
    flags: i32,
) -> std::io::Result<OwnedFd> {
    if let Some(rel) = path.strip_prefix('/') {
        let rel = if rel.is_empty() { "." } else { rel };
        crate::sys::openat2(
            proot,
            rel,
            flags,
            0,
            crate::sys::RESOLVE_IN_ROOT | crate::sys::RESOLVE_NO_MAGICLINKS,
        )
    } else {
        crate::sys::openat2(
            bundle,
            path,
            flags,
            0,
            RESOLVE_BENEATH | crate::sys::RESOLVE_NO_MAGICLINKS,
        )
    }
}

/// Clones the mount of the resolved `fd` (detached, never in any mount table yet),
/// `nodev`, and attaches it at `target` (made as a directory or an empty file to match).
fn attach_clone(fd: BorrowedFd<'_>, recursive: bool, target: &Path) -> Result<()> {
    use porta_sys::mount_api as m;
    let st = nix::sys::stat::fstat(fd.as_raw_fd()).ctx(|| format!("stat {}", target.display()))?;
    let is_dir = st.st_mode & libc::S_IFMT == libc::S_IFDIR;
    let mut flags = m::OPEN_TREE_CLONE | m::OPEN_TREE_CLOEXEC | libc::AT_EMPTY_PATH as u32;
    if recursive {
        flags |= m::AT_RECURSIVE;
    }
    let tree = m::open_tree(fd.as_raw_fd(), c"", flags)
        .ctx(|| format!("open_tree(OPEN_TREE_CLONE) for {}", target.display()))?;
    let attr = m::MountAttr {
        attr_set: m::MOUNT_ATTR_NODEV,
        ..Default::default()
    };
    m::mount_setattr(
        tree.as_raw_fd(),
        c"",
        libc::AT_EMPTY_PATH as u32 | m::AT_RECURSIVE,
        &attr,
    )
    .ctx(|| format!("mount_setattr(nodev) for {}", target.display()))?;
    if is_dir {
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(target)
            .ctx(|| format!("create {}", target.display()))?;
    } else {
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(target)
            .ctx(|| format!("create {}", target.display()))?;
    }
    let c = std::ffi::CString::new(target.as_os_str().as_encoded_bytes())
        .map_err(|_| Error::Usage(format!("path {} has a NUL", target.display())))?;
    m::move_mount_to(tree.as_fd(), &c).ctx(|| format!("move_mount to {}", target.display()))
}

/// Reads the bundle's config.json: a regular file beneath the bundle directory, at most
/// [`MAX_CONFIG`] bytes.
fn read_config(bundle: BorrowedFd<'_>, shown: &Path) -> Result<Value> {
    let path = shown.join("config.json");
    let fd = crate::sys::openat2(
        bundle,
        "config.json",
        libc::O_RDONLY | libc::O_NONBLOCK | libc::O_NOCTTY,
        0,
        RESOLVE_BENEATH | crate::sys::RESOLVE_NO_MAGICLINKS,
    )
    .map_err(|e| Error::Config {
        path: path.clone(),
        msg: e.to_string(),
    })?;
    let mut f = std::fs::File::from(fd);
    let meta = f.metadata().ctx(|| format!("stat {}", path.display()))?;
    if !meta.is_file() {
        return Err(Error::Config {
            path,
            msg: "not a regular file".into(),
        });
    }
    let mut data = Vec::new();
    f.by_ref()
        .take(MAX_CONFIG + 1)
        .read_to_end(&mut data)
        .ctx(|| format!("read {}", path.display()))?;
    if data.len() as u64 > MAX_CONFIG {
        return Err(Error::Config {
            path,
            msg: format!("larger than {MAX_CONFIG} bytes"),
        });
    }
    serde_json::from_slice(&data).map_err(|e| Error::Config {
        path,
        msg: e.to_string(),
    })
}

/// Runs this runtime binary with `args` under the children's state root, the child's
/// process(es) getting `stdio`; returns its exit status. With `root_cgroups` (the
/// `cgroup.procs` files of the hierarchies' roots), the runtime moves itself there
/// before it runs, as a `porta create` on the host runs outside any container's group:
/// the parent's API server runs in the parent's `porta/` leaf, whose device rules deny
/// `/dev/fuse` to the child's supervisor that the runtime starts (it moves itself into the
/// child's own leaf, beneath the parent's group, once it handed the mount over).
fn run_runtime(
    root: &StateRoot,
    args: &[&std::ffi::OsStr],
    stdio: Stdio,
    root_cgroups: &[std::ffi::CString],
) -> Result<i32> {
    let mut cmd = Command::new(runtime_exe());
    if !root_cgroups.is_empty() {
        let files = root_cgroups.to_vec();
        use std::os::unix::process::CommandExt;
        // SAFETY: the closure runs in the forked child before exec and calls only
        // open/write/close (async-signal-safe) on strings made before the fork.
        unsafe {
            cmd.pre_exec(move || {
                move_self_to(&files);
                Ok(())
            });
        }
    }
    let status = cmd
        .arg("--root")
        .arg(&root.path)
        .args(args)
        .stdin(std::process::Stdio::from(stdio.stdin))
        .stdout(std::process::Stdio::from(stdio.stdout))
        .stderr(std::process::Stdio::from(stdio.stderr))
        .status()
        .ctx(|| format!("run {}", runtime_exe().display()))?;
    use std::os::unix::process::ExitStatusExt;
    Ok(status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0)))
}

/// Writes `0` (this process) to each `cgroup.procs` file; errors are left to the
/// runtime to meet (it names what it cannot do). Async-signal-safe: runs after fork.
fn move_self_to(files: &[std::ffi::CString]) {
    for f in files {
        // SAFETY: f is a valid NUL-terminated path; the fd is closed right after.
        unsafe {
            let fd = libc::open(f.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd >= 0 {
                let _ = libc::write(fd, b"0".as_ptr().cast(), 1);
                libc::close(fd);
            }
        }
    }
}

/// The `cgroup.procs` files of the roots of the hierarchies the parent's groups are in.
fn root_cgroup_files(parent: &Parent) -> Vec<std::ffi::CString> {
    parent
        .state
        .cgroup
        .iter()
        .flat_map(|c| c.dirs.iter())
        .filter_map(|d| {
            std::ffi::CString::new(
                d.mount_point
                    .join("cgroup.procs")
                    .into_os_string()
                    .into_encoded_bytes(),
            )
            .ok()
        })
        .collect()
}

/// The last error a runtime command logged (`--log-format json`).
fn logged_error(log: &Path) -> Option<String> {
    let text = std::fs::read_to_string(log).ok()?;
    text.lines()
        .rev()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["level"] == "error")
        .find_map(|v| v["msg"].as_str().map(str::to_string))
}

/// `create`: makes child `req.id` of `parent` from a bundle of the parent's tree. The
/// child's process gets `stdio`. On any failure nothing is left: no state, mount,
/// cgroup or process.
pub fn create(parent: &Parent, caller: &Caller, req: &CreateRequest, stdio: Stdio) -> Result<()> {
    parent.authorize(caller, "create")?;
    validate_child_id(&req.id)?;
    // The parent's lock: a `delete` of the parent waits until the child is made (and then
    // deletes it), and no child is made while the parent is being deleted.
    let _lock = StateDir::open(&parent.root, parent.id())?;
    let bounds = parent.bounds()?;
    let bundle_shown = &req.bundle;
    let bundle_str = bundle_shown
        .to_str()
        .filter(|s| s.starts_with('/'))
        .ok_or_else(|| {
            Error::Usage(format!(
                "bundle {}: must be an absolute path in the container's root",
                bundle_shown.display()
            ))
        })?;
    let proot: OwnedFd = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags_dir()
        .open(&parent.state.rootfs)
        .ctx(|| format!("open the root of {}", parent.id()))?
        .into();
    let bundle = resolve(
        proot.as_fd(),
        proot.as_fd(),
        bundle_str,
        libc::O_PATH | libc::O_DIRECTORY,
    )
    .map_err(|e| {
        Error::Usage(format!(
            "bundle {bundle_str}: {e} (resolved in the root of container {})",
            parent.id()
        ))
    })?;
    let config = read_config(bundle.as_fd(), bundle_shown)?;
    let checked = sanitize::check(config, &bounds)?;
    let mut config = checked.config;

    let children = StateRoot::open(&parent.dir.join(CHILDREN))?;
    if children.dir(&req.id).exists() {
        return Err(Error::Exists(req.id.clone()));
    }
    let roots = child_roots(&parent.dir);
    for d in [Path::new(CHILD_ROOTS), &roots] {
        match std::fs::DirBuilder::new().mode(0o711).create(d) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(Error::sys(format!("create {}", d.display()), e)),
        }
    }
    let dir = parent.child_dir(&req.id);
    match std::fs::DirBuilder::new().mode(0o711).create(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(Error::Exists(req.id.clone()))
        }
        Err(e) => return Err(Error::sys(format!("create {}", dir.display()), e)),
    }
    let mut guard = ChildDir {
        path: dir.clone(),
        armed: true,
    };

    // The root, then every bind source: resolved once to a descriptor, cloned from it.
    let root_fd = resolve(
        proot.as_fd(),
        bundle.as_fd(),
        &checked.root,
        libc::O_PATH | libc::O_DIRECTORY,
    )
    .map_err(|e| {
        Error::field(
            "root.path",
            format!(
                "{}: {e} (resolved in the root of container {})",
                checked.root,
                parent.id()
            ),
        )
    })?;
    let root_path = dir.join("root");
    attach_clone(root_fd.as_fd(), false, &root_path)?;
    config["root"]["path"] = root_path.display().to_string().into();
    for b in &checked.binds {
        let field = format!("mounts[{}].source", b.index);
        let fd = resolve(proot.as_fd(), bundle.as_fd(), &b.source, libc::O_PATH).map_err(|e| {
            Error::field(
                &field,
                format!(
                    "{}: {e} (resolved in the root of container {})",
                    b.source,
                    parent.id()
                ),
            )
        })?;
        let target = dir.join(format!("bind-{}", b.index));
        attach_clone(fd.as_fd(), b.recursive, &target)?;
        config["mounts"][b.index]["source"] = target.display().to_string().into();
    }
    let shown_root = if checked.root.starts_with('/') {
        PathBuf::from(&checked.root)
    } else {
        bundle_shown.join(&checked.root)
    };
    let data = serde_json::to_vec_pretty(&config).map_err(|e| Error::Config {
        path: dir.join("config.json"),
        msg: e.to_string(),
    })?;
    state::write_atomic(&dir.join("config.json"), &data, 0o600)?;
    let shown = serde_json::json!({"bundle": bundle_shown, "rootfs": shown_root});
    state::write_atomic(
        &dir.join("nested.json"),
        shown.to_string().as_bytes(),
        0o600,
    )?;

    let log = dir.join("create.log");
    let code = run_runtime(
        &children,
        &[
            "--log".as_ref(),
            log.as_os_str(),
            "--log-format".as_ref(),
            "json".as_ref(),
            "create".as_ref(),
            "--nested-in".as_ref(),
            parent.dir.as_os_str(),
            "--bundle".as_ref(),
            dir.as_os_str(),
            req.id.as_ref(),
        ],
        stdio,
        &root_cgroup_files(parent),
    )?;
    let msg = logged_error(&log);
    let _ = std::fs::remove_file(&log);
    if code != 0 {
        // The runtime's own rollback removed what it made; a create killed half-way
        // leaves a state directory without state, removed here.
        if let Err(e) = remove_child_state(&children, &req.id) {
            tracing::warn!("after a failed nested create: {e}");
        }
        let msg = msg.unwrap_or_else(|| format!("exit status {code}"));
        tracing::warn!(parent = parent.id(), child = %req.id, "nested create failed: {msg}");
        // The caller is told in its own names: the host-only paths and the state
        // directory are the host's (the full message is in the log above).
        let msg = msg
            .replace(
                &root_path.display().to_string(),
                &shown_root.display().to_string(),
            )
            .replace(
                &dir.display().to_string(),
                &bundle_shown.display().to_string(),
            )
            .replace(
                &parent.dir.display().to_string(),
                "<the host's state directory>",
            );
        return Err(Error::Nested {
            id: req.id.clone(),
            op: "create".into(),
            msg,
        });
    }
    guard.armed = false;
    tracing::info!(parent = parent.id(), child = %req.id, "nested container created");
    Ok(())
}

/// A child's id: a container id (`state::validate_id`) that does not start with `-`
/// (it goes on the command line of the runtime that makes and enters the child).
fn validate_child_id(id: &str) -> Result<()> {
    state::validate_id(id)?;
    if id.starts_with('-') {
        return Err(Error::InvalidId {
            id: id.to_string(),
            why: "a child's id may not start with '-'".into(),
        });
    }
    Ok(())
}

/// Removes whatever state a failed create left of child `id`.
fn remove_child_state(children: &StateRoot, id: &str) -> Result<()> {
    match container::delete_half_made(children, id) {
        Ok(true) | Err(Error::NotFound(_)) => Ok(()),
        Ok(false) => Container::open(children, id)?.delete(true),
        Err(e) => Err(e),
    }
}

/// Opens child `id` of `parent`, with its lock held.
fn open_child(parent: &Parent, id: &str) -> Result<Container> {
    validate_child_id(id)?;
    let root = parent.children_root();
    if !root.path.is_dir() {
        return Err(Error::NotFound(id.to_string()));
    }
    Container::open(&root, id)
}

/// `start`: lets created child `id` run its program.
pub fn start(parent: &Parent, caller: &Caller, id: &str) -> Result<()> {
    parent.authorize(caller, "start")?;
    open_child(parent, id)?.start()
}

/// `kill`: sends `signal` to child `id`'s process (with `all`, to every process of it).
pub fn kill(parent: &Parent, caller: &Caller, id: &str, signal: i32, all: bool) -> Result<()> {
    parent.authorize(caller, "kill")?;
    open_child(parent, id)?.kill(signal, all)
}

/// `delete`: removes child `id` (a running one only with `force`), its children first,
/// then its state, cgroup and root mounts.
pub fn delete(parent: &Parent, caller: &Caller, id: &str, force: bool) -> Result<()> {
    parent.authorize(caller, "delete")?;
    validate_child_id(id)?;
    delete_child(&parent.dir, id, force)
}

fn delete_child(parent_dir: &Path, id: &str, force: bool) -> Result<()> {
    let root = StateRoot {
        path: parent_dir.join(CHILDREN),
    };
    if !root.path.is_dir() {
        return Err(Error::NotFound(id.to_string()));
    }
    match container::delete_half_made(&root, id) {
        Ok(true) => {}
        Ok(false) => Container::open(&root, id)?.delete(force)?,
        Err(e) => return Err(e),
    }
    release_child_dir(&child_roots(parent_dir).join(id))
}

/// `exec`: runs a process in child `id` with `stdio`; returns its exit code (255 when
/// the runtime failed to start it: the reason went to `stdio`'s stderr).
pub fn exec(parent: &Parent, caller: &Caller, req: &ExecRequest, stdio: Stdio) -> Result<i32> {
    parent.authorize(caller, "enter")?;
    if req.args.is_empty() {
        return Err(Error::Usage("exec: no program given".into()));
    }
    // Checked here for a clear error; the lock is not kept (the exec takes it).
    drop(open_child(parent, &req.id)?);
    let mut args: Vec<std::ffi::OsString> = vec!["exec".into()];
    if let Some(c) = &req.cwd {
        args.extend(["--cwd".into(), c.into()]);
    }
    for e in &req.env {
        args.extend(["--env".into(), e.into()]);
    }
    if let Some(u) = &req.user {
        args.extend(["--user".into(), u.into()]);
    }
    args.push(req.id.clone().into());
    args.push("--".into());
    args.extend(req.args.iter().map(Into::into));
    let args: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
    run_runtime(&parent.children_root(), &args, stdio, &[])
}

/// A child's state as its parent may see it: the bundle and root as the parent named
/// them, no host pid (the child's processes are in a pid namespace beside the parent's,
/// with no pid there: `pid` is 0), its servers by name, state and restarts only (no pid,
/// no host path), no host path in a server error.
fn as_parent_sees(parent_dir: &Path, v: Value) -> Value {
    let Some(id) = v["id"].as_str().map(str::to_string) else {
        return Value::Null;
    };
    let shown = std::fs::read(child_roots(parent_dir).join(&id).join("nested.json"))
        .ok()
        .and_then(|d| serde_json::from_slice::<Value>(&d).ok());
    let mut out = serde_json::Map::new();
    for k in [
        "ociVersion",
        "id",
        "status",
        "created",
        "owner",
        "annotations",
    ] {
        if let Some(x) = v.get(k) {
            out.insert(k.into(), x.clone());
        }
    }
    out.insert("pid".into(), 0.into());
    for k in ["bundle", "rootfs"] {
        out.insert(
            k.into(),
            shown.as_ref().map(|s| s[k].clone()).unwrap_or(Value::Null),
        );
    }
    if let Some(servers) = v.get("servers").and_then(Value::as_array) {
        let servers: Vec<Value> = servers
            .iter()
            .map(|s| serde_json::json!({"name": s["name"], "state": s["state"], "restarts": s["restarts"]}))
            .collect();
        out.insert("servers".into(), servers.into());
    }
    if v.get("serverError").is_some() {
        out.insert(
            "serverError".into(),
            "the file server failed (the host's log has the details)".into(),
        );
    }
    Value::Object(out)
}

/// `state`: child `id`'s state, as `porta state` prints it (paths as the parent named
/// them). Anyone in the parent may ask.
pub fn state(parent: &Parent, _caller: &Caller, id: &str) -> Result<Value> {
    let c = open_child(parent, id)?;
    Ok(as_parent_sees(&parent.dir, c.state_json()))
}

/// `list`: every child of `parent`, as `porta list --format json` prints them.
pub fn list(parent: &Parent, _caller: &Caller) -> Result<Vec<Value>> {
    let root = parent.children_root();
    if !root.path.is_dir() {
        return Ok(Vec::new());
    }
    Ok(container::list(&root)?
        .into_iter()
        .map(|v| as_parent_sees(&parent.dir, v))
        .collect())
}

/// The delete cascade: deletes every child of the container whose state directory is
/// `parent_dir` (their children first, running ones killed), then the `children` and
/// host-only directories (`child_roots`). Every child's processes are killed before any lock is
/// taken, so an `exec` holding a child's lock ends instead of blocking the delete.
pub fn delete_children(parent_dir: &Path) -> Result<()> {
    let children = StateRoot {
        path: parent_dir.join(CHILDREN),
    };
    let roots = child_roots(parent_dir);
    if !children.path.is_dir() && !roots.is_dir() {
        return Ok(());
    }
    if children.path.is_dir() {
        kill_tree(&children);
        let mut first: Option<Error> = None;
        for id in children.ids()? {
            if let Err(e) = delete_child(parent_dir, &id, true) {
                tracing::warn!(child = %id, "delete: {e}");
                first.get_or_insert(e);
            }
        }
        if let Some(e) = first {
            return Err(e);
        }
        std::fs::remove_dir(&children.path)
            .ctx(|| format!("remove {}", children.path.display()))?;
    }
    if roots.is_dir() {
        // What a create interrupted before its state existed may have left.
        for e in std::fs::read_dir(&roots).ctx(|| format!("read {}", roots.display()))? {
            let e = e.ctx(|| format!("read {}", roots.display()))?;
            release_child_dir(&e.path())?;
        }
        std::fs::remove_dir(&roots).ctx(|| format!("remove {}", roots.display()))?;
    }
    Ok(())
}

/// After a container's state directory `state_dir` was removed: when it was a child's
/// (its state root is a parent's `children`), unmounts and removes the child's host-only
/// directory too, so that a child deleted straight from the host
/// (`porta --root <parent>/children delete ID`) leaves nothing either.
pub fn release_if_child(state_dir: &Path) -> Result<()> {
    let (Some(root), Some(id)) = (state_dir.parent(), state_dir.file_name()) else {
        return Ok(());
    };
    if root.file_name() != Some(std::ffi::OsStr::new(CHILDREN)) {
        return Ok(());
    }
    let Some(parent_dir) = root.parent() else {
        return Ok(());
    };
    release_child_dir(&child_roots(parent_dir).join(id))
}

/// SIGKILLs the processes of every container beneath `children`, depth first, reading
/// their state without their locks.
fn kill_tree(children: &StateRoot) {
    let Ok(ids) = children.ids() else { return };
    for id in ids {
        let dir = children.dir(&id);
        kill_tree(&StateRoot {
            path: dir.join(CHILDREN),
        });
        let Ok(data) = std::fs::read(dir.join("state.json")) else {
            continue;
        };
        let Ok(st) = state::parse_state(&data) else {
            continue;
        };
        if let Some(cg) = st
            .cgroup
            .as_ref()
            .and_then(|c| porta_cgroups::ContainerCgroup::open(c).ok())
        {
            let _ = cg.signal_payload(nix::sys::signal::Signal::SIGKILL);
            let _ = cg.thaw();
        }
    }
}

/// Opening a directory for use as a dirfd.
trait DirOpen {
    fn custom_flags_dir(&mut self) -> &mut Self;
}

impl DirOpen for std::fs::OpenOptions {
    fn custom_flags_dir(&mut self) -> &mut Self {
        use std::os::unix::fs::OpenOptionsExt;
        self.custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
    }
}

/// A signal by name (`KILL`, `SIGKILL`) or number.
pub fn parse_signal(s: &str) -> Result<i32> {
    if let Ok(n) = s.parse::<i32>() {
        if (1..=64).contains(&n) {
            return Ok(n);
        }
        return Err(Error::Usage(format!("signal {s}: not between 1 and 64")));
    }
    let up = s.to_ascii_uppercase();
    let name = if up.starts_with("SIG") {
        up
    } else {
        format!("SIG{up}")
    };
    name.parse::<nix::sys::signal::Signal>()
        .map(|sig| sig as i32)
        .map_err(|_| Error::Usage(format!("signal {s}: unknown")))
}
