//! `checkpoint` and `restore` through CRIU, for containers whose root the kernel mounts
//! (`run.porta.fs=kernel`). A root served by the container's file server is a FUSE mount,
//! which CRIU cannot checkpoint: such a container is refused, with the reason, and left
//! running.

use std::path::{Path, PathBuf};
use std::process::Command;

use oci_spec::runtime::{LinuxNamespaceType, Spec};

use porta_cgroups::{CgroupVersion, ContainerCgroup, PAYLOAD};

use crate::config::{Bundle, ANNOTATION_FS};
use crate::container::Container;
use crate::error::{Error, Result};
use crate::state::{StateRoot, Status};

/// Options `checkpoint` and `restore` share (runc's flags).
#[derive(Debug, Clone, Default)]
pub struct CriuOptions {
    /// The criu binary.
    pub criu: PathBuf,
    /// Directory of the image files.
    pub image_path: PathBuf,
    /// Directory for CRIU's work files and logs (default: the image directory).
    pub work_path: Option<PathBuf>,
    /// Allow open TCP connections.
    pub tcp_established: bool,
    /// Allow external unix sockets.
    pub ext_unix_sk: bool,
    /// Allow shell jobs.
    pub shell_job: bool,
    /// Handle file locks.
    pub file_locks: bool,
    /// Lazy memory pages through userfaultfd.
    pub lazy_pages: bool,
    /// soft, full, strict or ignore.
    pub manage_cgroups_mode: Option<String>,
    /// Namespaces to create empty.
    pub empty_ns: Vec<String>,
    /// Deduplicate memory images.
    pub auto_dedup: bool,
}

impl CriuOptions {
    /// Where CRIU writes its work files and log: `--work-path`, else the image directory.
    fn work_dir(&self) -> PathBuf {
        self.work_path.clone().unwrap_or(self.image_path.clone())
    }

    /// CRIU's arguments for the options both commands share (but the cgroup mode).
    fn shared_args(&self) -> Vec<String> {
        let mut a: Vec<String> = [
            (self.tcp_established, "--tcp-established"),
            (self.ext_unix_sk, "--ext-unix-sk"),
            (self.shell_job, "--shell-job"),
            (self.file_locks, "--file-locks"),
            (self.lazy_pages, "--lazy-pages"),
            (self.auto_dedup, "--auto-dedup"),
        ]
        .into_iter()
        .filter(|f| f.0)
        .map(|f| f.1.to_string())
        .collect();
        for ns in &self.empty_ns {
            a.push("--empty-ns".into());
            a.push(if ns == "network" {
                "net".into()
            } else {
                ns.clone()
            });
        }
        a
    }
}

/// Options of `checkpoint`.
#[derive(Debug, Clone, Default)]
pub struct CheckpointOptions {
    /// The shared options.
    pub criu: CriuOptions,
    /// Previous images (a pre-dump), relative to the image directory.
    pub parent_path: Option<PathBuf>,
    /// Leave the container running.
    pub leave_running: bool,
    /// Skip in-flight TCP connections.
    pub tcp_skip_in_flight: bool,
    /// Link unlinked files back.
    pub link_remap: bool,
    /// Fd CRIU signals lazy-pages readiness on (-1: none).
    pub status_fd: i32,
    /// ADDRESS:PORT of a page server.
    pub page_server: Option<String>,
    /// Dump memory only; the container keeps running.
    pub pre_dump: bool,
}

/// Options of `restore`.
#[derive(Debug, Clone, Default)]
pub struct RestoreOptions {
    /// The shared options.
    pub criu: CriuOptions,
    /// Container id.
    pub id: String,
    /// Bundle directory.
    pub bundle: PathBuf,
    /// Console socket for a terminal.
    pub console_socket: Option<PathBuf>,
    /// LSM profile (TYPE:NAME).
    pub lsm_profile: Option<String>,
    /// Where to write the restored process's pid.
    pub pid_file: Option<PathBuf>,
    /// Use the systemd cgroup driver.
    pub systemd_cgroup: bool,
}

/// The reason a container with a file server cannot be checkpointed, and what would allow it.
fn fuse_root_refusal(what: &str, id: &str) -> Error {
    Error::Checkpoint(format!(
        "{what} {id}: the container's root file system is served by its own FUSE file server, \
         and CRIU cannot checkpoint or restore a FUSE mount; create the container with the \
         annotation {ANNOTATION_FS}=kernel (the kernel then mounts its root, as under runc) \
         to checkpoint it"
    ))
}

/// Checks the flags both commands share; returns the cgroup mode for CRIU.
fn check_common(o: &CriuOptions) -> Result<&'static str> {
    let mode = match o.manage_cgroups_mode.as_deref() {
        None | Some("soft") => "soft",
        Some("full") => "full",
        Some("strict") => "strict",
        Some("ignore") => "ignore",
        Some(other) => {
            return Err(Error::Usage(format!(
                "--manage-cgroups-mode {other:?}: must be soft, full, strict or ignore"
            )))
        }
    };
    for ns in &o.empty_ns {
        // As runc: only the network namespace can be made empty.
        if ns != "network" {
            return Err(Error::Usage(format!(
                "--empty-ns {ns:?}: only the network namespace can be restored empty"
            )));
        }
    }
    Ok(mode)
}

/// Runs `criu --version` and fails with what to do when CRIU is missing.
fn check_criu(criu: &Path) -> Result<()> {
    let out = Command::new(criu).arg("--version").output().map_err(|e| {
        Error::Checkpoint(format!(
            "run {} --version: {e}: install CRIU (the Debian package criu) or pass --criu PATH",
            criu.display()
        ))
    })?;
    if !out.status.success() {
        return Err(Error::Checkpoint(format!(
            "{} --version failed ({}): {}",
            criu.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// The container paths CRIU must treat as external bind mounts: every bind mount of the
/// config (their sources live outside the container), keyed by destination.
fn external_mounts(spec: &Spec) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for m in spec.mounts().iter().flatten() {
        let bind = m.typ().as_deref() == Some("bind")
            || m.options()
                .iter()
                .flatten()
                .any(|o| o == "bind" || o == "rbind");
        if bind {
            let dest = m.destination().to_string_lossy().into_owned();
            let src = m
                .source()
                .as_ref()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            out.push((dest, src));
        }
    }
    out
}

/// Namespaces the container joined by path: CRIU must not dump them but mark them external.
fn joined_namespaces(spec: &Spec) -> Vec<(LinuxNamespaceType, PathBuf)> {
    spec.linux()
        .as_ref()
        .and_then(|l| l.namespaces().clone())
        .unwrap_or_default()
        .into_iter()
        .filter_map(|n| n.path().clone().map(|p| (n.typ(), p)))
        .collect()
}

/// The last lines of CRIU's log that name an error, for the message.
fn criu_log_errors(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let errs: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("Error") || l.contains("error"))
        .collect();
    let tail = if errs.is_empty() {
        text.lines()
            .rev()
            .take(5)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
    } else {
        errs.into_iter()
            .rev()
            .take(5)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect()
    };
    tail.join("; ")
}

/// Creates a directory CRIU writes to (mode 0700 when new).
fn make_dir(p: &Path, flag: &str) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(p)
        .map_err(|e| Error::sys(format!("{flag} {}", p.display()), e))
}

/// The file in the image directory where `checkpoint` records the CRIU keys of the
/// container's standard descriptors (as runc keeps `descriptors.json`), so that `restore`
/// can hand the restoring caller's descriptors in their place.
pub const DESCRIPTORS_FILE: &str = "porta-descriptors.json";

/// What `checkpoint` must tell CRIU about the container beyond its process tree: the
/// mounts whose sources lie outside it and the standard descriptors that lead out of it.
#[derive(Debug, Default)]
struct DumpView {
    /// Mount points (as the container sees them) CRIU must record as external mounts.
    external_mounts: Vec<String>,
    /// `--external` arguments: descriptors of files outside the container.
    external_files: Vec<String>,
    /// For fds 0, 1 and 2: the CRIU key `restore` hands a new descriptor for ("" for none).
    stdio_keys: Vec<String>,
}

/// The CRIU key of one standard descriptor of process `pid`, and whether CRIU must be told
/// it is external: pipes and sockets are dumped as such (and replaced on restore); a
/// terminal or a file on a mount outside the container is external.
fn stdio_key(pid: i32, fd: i32, mount_ids: &[u64]) -> (String, Option<String>) {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let link = format!("/proc/{pid}/fd/{fd}");
    let Ok(target) = std::fs::read_link(&link) else {
        return (String::new(), None);
    };
    let target = target.to_string_lossy().into_owned();
    if target.starts_with("pipe:[") || target.starts_with("socket:[") {
        return (target, None);
    }
    let Ok(md) = std::fs::metadata(&link) else {
        return (String::new(), None);
    };
    // Pseudo terminals (majors 136-143) and the classic tty majors 4 and 5.
    let major = nix::sys::stat::major(md.rdev());
    let is_tty = md.file_type().is_char_device()
        && (major == 4 || major == 5 || (136..=143).contains(&major));
    if is_tty {
        let key = format!("tty[{:x}:{:x}]", md.rdev(), md.dev());
        return (key.clone(), Some(key));
    }
    let mnt_id = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}"))
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| {
                    l.strip_prefix("mnt_id:")
                        .map(|v| v.trim().parse::<u64>().ok())
                })
                .flatten()
        });
    match mnt_id {
        Some(m) if !mount_ids.contains(&m) => {
            let key = format!("file[{m:x}:{:x}]", md.ino());
            (key.clone(), Some(key))
        }
        _ => (String::new(), None),
    }
}

/// Reads what CRIU must be told about container process `pid` (see [`DumpView`]).
fn dump_view(pid: i32, spec: &Spec) -> Result<DumpView> {
    let p = format!("/proc/{pid}/mountinfo");
    let text = std::fs::read_to_string(&p).map_err(|e| Error::sys(format!("read {p}"), e))?;
    let mounts = porta_sys::proc::parse_mountinfo(&text)
        .map_err(|e| Error::Checkpoint(format!("parse {p}: {e}")))?;
    let mut v = DumpView::default();
    // The config's bind mounts, and the cgroup hierarchies (bound from the host's groups,
    // or mounted in a cgroup namespace): restore binds the new container's own there.
    v.external_mounts
        .extend(external_mounts(spec).into_iter().map(|(dest, _)| dest));
    for m in &mounts {
        let mp = m.mount_point.to_string_lossy().into_owned();
        // A pty bound on its own (the terminal as /dev/console) has its master outside:
        // restore binds the new terminal there.
        let pty_bind =
            m.fs_type == "devpts" && m.root != Path::new("/") && m.root != Path::new("/ptmx");
        let cgroup = m.fs_type == "cgroup" || m.fs_type == "cgroup2";
        if (cgroup || pty_bind) && !v.external_mounts.contains(&mp) {
            v.external_mounts.push(mp);
        }
    }
    let ids: Vec<u64> = mounts.iter().map(|m| m.mount_id).collect();
    for fd in 0..3 {
        let (key, external) = stdio_key(pid, fd, &ids);
        if let Some(e) = external {
            if !v.external_files.contains(&e) {
                v.external_files.push(e);
            }
        }
        v.stdio_keys.push(key);
    }
    Ok(v)
}

/// The `criu dump` (or `pre-dump`) command line for container `c`.
fn dump_args(
    c: &Container,
    spec: &Spec,
    view: &DumpView,
    o: &CheckpointOptions,
    mode: &str,
) -> Result<Vec<String>> {
    let img = o.criu.image_path.to_string_lossy().into_owned();
    let work = o.criu.work_dir().to_string_lossy().into_owned();
    let mut a: Vec<String> = vec![
        if o.pre_dump { "pre-dump" } else { "dump" }.into(),
        "--tree".into(),
        c.state.pid.to_string(),
        "--images-dir".into(),
        img,
        "--work-dir".into(),
        work,
        "--log-file".into(),
        if o.pre_dump {
            "pre-dump.log"
        } else {
            "dump.log"
        }
        .into(),
        "-v4".into(),
        "--root".into(),
        c.state.rootfs.to_string_lossy().into_owned(),
        // The mode is an optional argument of criu's: it must be joined with "=".
        format!("--manage-cgroups={mode}"),
    ];
    for dest in &view.external_mounts {
        a.push("--ext-mount-map".into());
        a.push(format!("{dest}:{dest}"));
    }
    for e in &view.external_files {
        a.push("--external".into());
        a.push(e.clone());
    }
    for (t, path) in joined_namespaces(spec) {
        let key = match t {
            LinuxNamespaceType::Network => "extRootNetNS",
            LinuxNamespaceType::Pid => "extRootPidNS",
            _ => continue,
        };
        let kind = if t == LinuxNamespaceType::Network {
            "net"
        } else {
            "pid"
        };
        let ino = std::fs::metadata(&path)
            .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
            .map_err(|e| Error::sys(format!("stat namespace {}", path.display()), e))?;
        a.push("--external".into());
        a.push(format!("{kind}[{ino}]:{key}"));
    }
    let flags = [
        (o.leave_running && !o.pre_dump, "--leave-running"),
        (o.tcp_skip_in_flight, "--skip-in-flight"),
        (o.link_remap, "--link-remap"),
        (o.pre_dump, "--track-mem"),
    ];
    a.extend(o.criu.shared_args());
    a.extend(flags.iter().filter(|f| f.0).map(|f| f.1.to_string()));
    if o.criu.lazy_pages && o.status_fd >= 0 {
        a.push("--status-fd".into());
        a.push(o.status_fd.to_string());
    }
    if let Some(ps) = &o.page_server {
        let (addr, port) = ps
            .rsplit_once(':')
            .ok_or_else(|| Error::Usage(format!("--page-server {ps:?}: not ADDRESS:PORT")))?;
        port.parse::<u16>()
            .map_err(|_| Error::Usage(format!("--page-server {ps:?}: {port:?} is not a port")))?;
        a.extend([
            "--page-server".into(),
            "--address".into(),
            addr.into(),
            "--port".into(),
            port.into(),
        ]);
    }
    if let Some(parent) = &o.parent_path {
        a.push("--prev-images-dir".into());
        a.push(parent.to_string_lossy().into_owned());
        if !o.pre_dump {
            a.push("--track-mem".into());
        }
    }
    Ok(a)
}

/// `checkpoint`: dumps the container with CRIU. Without `--leave-running` (or `--pre-dump`)
/// the container is stopped and deleted afterwards, as runc does. A container whose root
/// its file server serves is refused before anything is touched: it keeps running.
pub fn checkpoint(root: &StateRoot, id: &str, o: &CheckpointOptions) -> Result<()> {
    let c = Container::open(root, id)?;
    let status = c.status();
    if !matches!(status, Status::Running | Status::Paused) {
        return Err(Error::BadState {
            id: id.into(),
            status: status.to_string(),
            msg: "only a running or paused container can be checkpointed".into(),
        });
    }
    if c.state.file_server {
        return Err(fuse_root_refusal("checkpoint", id));
    }
    let mode = check_common(&o.criu)?;
    if o.page_server.is_some() && o.criu.lazy_pages {
        // Lazy pages are served by CRIU's own page server: the two do not combine.
        return Err(Error::Usage(
            "--page-server and --lazy-pages cannot be combined".into(),
        ));
    }
    let spec = c.spec()?;
    check_criu(&o.criu.criu)?;
    make_dir(&o.criu.image_path, "--image-path")?;
    let work = o.criu.work_dir();
    make_dir(&work, "--work-path")?;
    let view = dump_view(c.state.pid, &spec)?;
    let args = dump_args(&c, &spec, &view, o, mode)?;
    tracing::debug!("{} {}", o.criu.criu.display(), args.join(" "));
    let out = Command::new(&o.criu.criu)
        .args(&args)
        .output()
        .map_err(|e| Error::sys(format!("run {}", o.criu.criu.display()), e))?;
    if !out.status.success() {
        let log = work.join(if o.pre_dump {
            "pre-dump.log"
        } else {
            "dump.log"
        });
        let errors = criu_log_errors(&log);
        // Pre-dumps and dumps on top of them need the kernel's soft-dirty page tracking.
        let hint = if errors.contains("Tracking memory is not available") {
            " (this kernel has no soft-dirty page tracking, CONFIG_MEM_SOFT_DIRTY: \
             --pre-dump and --parent-path cannot work on it; a plain checkpoint can)"
        } else {
            ""
        };
        return Err(Error::Checkpoint(format!(
            "checkpoint {id}: criu {} failed ({}): {errors}{hint}{} (full log: {}); the container keeps running",
            args[0],
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            log.display()
        )));
    }
    let keys = serde_json::to_vec(&view.stdio_keys).unwrap_or_default();
    crate::state::write_atomic(&o.criu.image_path.join(DESCRIPTORS_FILE), &keys, 0o600)?;
    if !(o.leave_running || o.pre_dump) {
        // CRIU killed the container's processes after dumping them: remove what is left.
        c.delete(true)?;
    }
    Ok(())
}

/// `restore`, before anything is made: the id is free, the bundle asks for a kernel-mounted
/// root, the flags are sound, the images are a CRIU checkpoint and CRIU runs. Returns the
/// loaded bundle.
pub(crate) fn check_restore(root: &StateRoot, o: &RestoreOptions) -> Result<Bundle> {
    crate::state::validate_id(&o.id)?;
    if root.dir(&o.id).join("state.json").exists() {
        return Err(Error::Exists(o.id.clone()));
    }
    let bundle = Bundle::load(&o.bundle)?;
    let spec = &bundle.spec;
    let kernel_root = spec
        .annotations()
        .as_ref()
        .and_then(|a| a.get(ANNOTATION_FS))
        .is_some_and(|v| v == "kernel");
    if !kernel_root {
        return Err(fuse_root_refusal("restore", &o.id));
    }
    check_common(&o.criu)?;
    let terminal = spec
        .process()
        .as_ref()
        .and_then(|p| p.terminal())
        .unwrap_or(false);
    if terminal && o.console_socket.is_none() {
        return Err(Error::Usage(
            "process.terminal is true: --console-socket is required".into(),
        ));
    }
    if !terminal && o.console_socket.is_some() {
        return Err(Error::Usage(
            "--console-socket given but process.terminal is false".into(),
        ));
    }
    if !nix::unistd::geteuid().is_root() {
        return Err(Error::Usage(format!(
            "restore {}: CRIU restores namespaces, mounts and cgroups, which needs root",
            o.id
        )));
    }
    if !crate::config::has_mount_namespace(spec) {
        return Err(Error::field(
            "linux.namespaces",
            "restore needs a mount namespace: CRIU rebuilds the container's mounts in a new one",
        ));
    }
    let inventory = o.criu.image_path.join("inventory.img");
    if !inventory.exists() {
        return Err(Error::Checkpoint(format!(
            "restore {}: {} holds no CRIU checkpoint (no inventory.img): give the --image-path \
             a checkpoint wrote",
            o.id,
            o.criu.image_path.display()
        )));
    }
    check_criu(&o.criu.criu)?;
    Ok(bundle)
}

/// The `--ext-mount-map` pairs of a restore: each external mount's key (its destination in
/// the container, as `checkpoint` recorded it) and the host path bound there — the
/// config's bind sources, and the new container's own groups for the cgroup mounts.
fn restore_mounts(bundle: &Bundle, cg: &ContainerCgroup) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = external_mounts(&bundle.spec)
        .into_iter()
        .map(|(dest, src)| {
            let src = if Path::new(&src).is_absolute() {
                src
            } else {
                bundle.dir.join(src).to_string_lossy().into_owned()
            };
            (dest, src)
        })
        .collect();
    let base = Path::new("/sys/fs/cgroup");
    let cgroup_mounts = bundle
        .spec
        .mounts()
        .iter()
        .flatten()
        .filter(|m| matches!(m.typ().as_deref(), Some("cgroup") | Some("cgroup2")));
    for m in cgroup_mounts {
        let dest = m.destination();
        for d in cg.dirs() {
            let payload = d.path.join(PAYLOAD);
            // As the container's cgroup file system lays them out (rootfs/cgroupfs.rs):
            // the cgroup2 hierarchy itself on a v2-only host, else one directory per
            // hierarchy named as on the host.
            let key = if d.version == CgroupVersion::V2 && d.mount_point == base {
                dest.clone()
            } else {
                match d.mount_point.file_name() {
                    Some(n) if d.mount_point.starts_with(base) => dest.join(n),
                    _ => continue,
                }
            };
            out.push((
                key.to_string_lossy().into_owned(),
                payload.to_string_lossy().into_owned(),
            ));
        }
    }
    out
}

/// Makes the mount points the config's mounts need in the bundle's root, as `create`
/// would (a new root of the same image lacks them): a file for a bind of a file, else a
/// directory. Mounts beneath another mount of the config are left to CRIU, which rebuilds
/// that mount's contents. A mount point that cannot be made is left to CRIU to report.
fn make_mount_points(bundle: &Bundle) -> Result<()> {
    use std::os::fd::AsFd;
    let root = std::fs::File::open(&bundle.rootfs)
        .map_err(|e| Error::sys(format!("open the root {}", bundle.rootfs.display()), e))?;
    let mounts: Vec<_> = bundle.spec.mounts().iter().flatten().collect();
    let binds = external_mounts(&bundle.spec);
    for m in &mounts {
        let dest = m.destination();
        let nested = mounts
            .iter()
            .any(|o| o.destination() != dest && dest.starts_with(o.destination()));
        if nested {
            continue;
        }
        let bind = binds
            .iter()
            .find(|(d, _)| Path::new(d) == dest)
            .map(|(_, src)| bundle.dir.join(src));
        let file = bind.is_some_and(|src| src.metadata().is_ok_and(|md| !md.is_dir()));
        let d = dest.to_string_lossy();
        let made = if file {
            porta_sys::path::create_file_in_root(root.as_fd(), &d, 0o644).map(drop)
        } else {
            porta_sys::path::mkdir_in_root(root.as_fd(), &d, 0o755).map(drop)
        };
        if let Err(e) = made {
            tracing::debug!("restore: mount point {d}: {e} (left to CRIU)");
        }
    }
    Ok(())
}

/// The `--cgroup-root` arguments: every hierarchy's tasks go to the new container's
/// `payload/` group (the cgroup2 one as CRIU's default root; it names no controller).
fn cgroup_roots(cg: &ContainerCgroup) -> Vec<String> {
    let mut out = Vec::new();
    for d in cg.dirs() {
        let path = d.cgroup_path.join(PAYLOAD).to_string_lossy().into_owned();
        out.push("--cgroup-root".into());
        out.push(if d.version == CgroupVersion::V2 {
            path
        } else {
            format!("{}:{path}", d.controllers.join(","))
        });
    }
    out
}

/// The CRIU keys of the checkpointed container's standard descriptors, as `checkpoint`
/// recorded them (none for images without the record).
fn stdio_keys(image_path: &Path) -> Result<Vec<String>> {
    let p = image_path.join(DESCRIPTORS_FILE);
    match std::fs::read(&p) {
        Ok(data) => serde_json::from_slice(&data).map_err(|e| {
            Error::Checkpoint(format!(
                "{}: not a list of descriptor keys: {e}",
                p.display()
            ))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(Error::sys(format!("read {}", p.display()), e)),
    }
}

/// Which of restore's own standard descriptors CRIU hands over for each recorded key.
/// CRIU finds a file by its key, so a key several descriptors shared (one /dev/null on
/// all three) is given once: restore's stdout when it was the container's stdout too,
/// else the lowest descriptor that had it.
fn inherited_stdio(keys: &[String]) -> Vec<(usize, String)> {
    let mut out: Vec<(usize, String)> = Vec::new();
    for (fd, key) in keys.iter().enumerate() {
        if key.is_empty() {
            continue;
        }
        match out.iter_mut().find(|(_, k)| k == key) {
            Some(e) if fd == 1 => e.0 = 1,
            Some(_) => {}
            None => out.push((fd, key.clone())),
        }
    }
    out
}

/// A copy of `fd` that CRIU inherits (no close-on-exec), closed when dropped.
fn inheritable(fd: std::os::fd::BorrowedFd<'_>) -> Result<std::os::fd::OwnedFd> {
    nix::unistd::dup(std::os::fd::AsRawFd::as_raw_fd(&fd))
        .map_err(|e| Error::nix("duplicate a descriptor for CRIU", e))
        .map(|raw| {
            // SAFETY: dup returned a new descriptor we own; dup does not copy close-on-exec.
            unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) }
        })
}

/// Opens a namespace the config joins by path, kept open (and inherited by CRIU) while
/// it restores.
fn open_inherited(path: &Path) -> Result<std::os::fd::OwnedFd> {
    use std::os::fd::AsFd;
    let f = std::fs::File::open(path)
        .map_err(|e| Error::sys(format!("open namespace {}", path.display()), e))?;
    inheritable(f.as_fd())
}

/// The action script CRIU runs during a restore, when the config has prestart or
/// createRuntime hooks: it calls this binary's `restore-hooks`, which runs them once the
/// namespaces exist, as runc does. Removed when dropped.
struct HookScript(PathBuf);

impl HookScript {
    fn make(bundle: &Bundle, state_dir: &Path) -> Result<Option<HookScript>> {
        let any = bundle.spec.hooks().as_ref().is_some_and(|h| {
            h.prestart().as_ref().is_some_and(|v| !v.is_empty())
                || h.create_runtime().as_ref().is_some_and(|v| !v.is_empty())
        });
        if !any {
            return Ok(None);
        }
        let exe = std::env::current_exe().map_err(|e| Error::sys("find porta's binary", e))?;
        let quote = |p: &Path| format!("'{}'", p.to_string_lossy().replace('\'', "'\\''"));
        let path = state_dir.join("restore-hooks");
        let text = format!(
            "#!/bin/sh\nexec {} restore-hooks {}\n",
            quote(&exe),
            quote(state_dir)
        );
        crate::state::write_atomic(&path, text.as_bytes(), 0o700)?;
        Ok(Some(HookScript(path)))
    }
}

impl Drop for HookScript {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// `restore-hooks`: CRIU's action script during a restore. At `setup-namespaces` (the
/// restored tree's namespaces exist, its root process `pid` does not run yet) runs the
/// config's prestart and createRuntime hooks with the container's state; other actions
/// do nothing. Reads the state without its lock, which the restore holds.
pub fn restore_hooks(state_dir: &Path, action: &str, pid: i32) -> Result<()> {
    if action != "setup-namespaces" {
        return Ok(());
    }
    let read = |name: &str| {
        let p = state_dir.join(name);
        std::fs::read(&p).map_err(|e| Error::sys(format!("read {}", p.display()), e))
    };
    let st = crate::state::parse_state(&read("state.json")?).map_err(|msg| Error::State {
        path: state_dir.join("state.json"),
        msg,
    })?;
    let spec = crate::config::parse_spec(&read("config.json")?, &state_dir.join("config.json"))?;
    let mut state = crate::container::oci_state_json(&st, Status::Creating);
    state["pid"] = pid.into();
    let json = serde_json::to_vec(&state).unwrap_or_default();
    if let Some(h) = spec.hooks() {
        crate::hooks::run_all("prestart", h.prestart().as_deref().unwrap_or(&[]), &json)?;
        crate::hooks::run_all(
            "createRuntime",
            h.create_runtime().as_deref().unwrap_or(&[]),
            &json,
        )?;
    }
    Ok(())
}

/// Restores the checkpoint into the container whose groups `cg` are, its state kept in
/// `state_dir`: runs `criu restore` with the restored tree's root as a child of this
/// process, the caller's standard descriptors in place of the checkpointed ones (a
/// checkpointed terminal replaced by `terminal`, the slave of a new pty, when given), and
/// returns the restored process's pid.
pub(crate) fn run_restore(
    bundle: &Bundle,
    cg: &ContainerCgroup,
    state_dir: &Path,
    o: &RestoreOptions,
    terminal: Option<std::os::fd::BorrowedFd<'_>>,
) -> Result<i32> {
    use std::os::fd::AsRawFd;
    let mode = check_common(&o.criu)?;
    let work = o.criu.work_dir();
    make_dir(&work, "--work-path")?;
    make_mount_points(bundle)?;
    let pidfile = state_dir.join("criu-restore.pid");
    let mut a: Vec<String> = vec![
        "restore".into(),
        "--images-dir".into(),
        o.criu.image_path.to_string_lossy().into_owned(),
        "--work-dir".into(),
        work.to_string_lossy().into_owned(),
        "--log-file".into(),
        "restore.log".into(),
        "-v4".into(),
        "--root".into(),
        bundle.rootfs.to_string_lossy().into_owned(),
        "--restore-detached".into(),
        "--restore-sibling".into(),
        "--pidfile".into(),
        pidfile.to_string_lossy().into_owned(),
        format!("--manage-cgroups={mode}"),
    ];
    a.extend(cgroup_roots(cg));
    for (key, src) in restore_mounts(bundle, cg) {
        a.push("--ext-mount-map".into());
        a.push(format!("{key}:{src}"));
    }
    let mut held = Vec::new();
    let keys = stdio_keys(&o.criu.image_path)?;
    if let Some(t) = terminal {
        if !keys.iter().any(|k| k.starts_with("tty[")) {
            return Err(Error::Checkpoint(format!(
                "restore {}: process.terminal is true, but the checkpoint in {} has no \
                 terminal on the container's standard descriptors",
                o.id,
                o.criu.image_path.display()
            )));
        }
        let fd = inheritable(t)?;
        let pts = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
            .map_err(|e| Error::sys("find the new terminal's path", e))?;
        a.push("--ext-mount-map".into());
        a.push(format!("/dev/console:{}", pts.display()));
        held.push(fd);
    }
    // A checkpointed terminal is replaced by the new pty's slave (held first, if any).
    let slave = held.first().map(|f| f.as_raw_fd());
    for (fd, key) in inherited_stdio(&keys) {
        let fd = match slave {
            Some(s) if key.starts_with("tty[") => s,
            _ => fd as i32,
        };
        a.push("--inherit-fd".into());
        a.push(format!("fd[{fd}]:{key}"));
    }
    for (t, path) in joined_namespaces(&bundle.spec) {
        let key = match t {
            LinuxNamespaceType::Network => "extRootNetNS",
            LinuxNamespaceType::Pid => "extRootPidNS",
            _ => continue,
        };
        let fd = open_inherited(&path)?;
        a.push("--inherit-fd".into());
        a.push(format!("fd[{}]:{key}", fd.as_raw_fd()));
        held.push(fd);
    }
    a.extend(o.criu.shared_args());
    if let Some(p) = &o.lsm_profile {
        a.push("--lsm-profile".into());
        a.push(p.clone());
    }
    let hooks = HookScript::make(bundle, state_dir)?;
    if let Some(h) = &hooks {
        a.push("--action-script".into());
        a.push(h.0.to_string_lossy().into_owned());
    }
    tracing::debug!("{} {}", o.criu.criu.display(), a.join(" "));
    // CRIU's standard descriptors are ours: it hands them to the restored process.
    let status = Command::new(&o.criu.criu)
        .args(&a)
        .status()
        .map_err(|e| Error::sys(format!("run {}", o.criu.criu.display()), e))?;
    drop(held);
    drop(hooks);
    let pid_text = std::fs::read_to_string(&pidfile);
    let _ = std::fs::remove_file(&pidfile);
    if !status.success() {
        let log = work.join("restore.log");
        return Err(Error::Checkpoint(format!(
            "restore {}: criu restore failed ({status}): {} (full log: {})",
            o.id,
            criu_log_errors(&log),
            log.display()
        )));
    }
    pid_text
        .ok()
        .and_then(|t| t.trim().parse::<i32>().ok())
        .filter(|p| *p > 0)
        .ok_or_else(|| {
            Error::Checkpoint(format!(
                "restore {}: criu restore succeeded but wrote no pid to {}",
                o.id,
                pidfile.display()
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_modes_and_empty_namespaces_are_checked() {
        let mut o = CriuOptions::default();
        assert_eq!(check_common(&o).unwrap(), "soft");
        o.manage_cgroups_mode = Some("strict".into());
        assert_eq!(check_common(&o).unwrap(), "strict");
        o.manage_cgroups_mode = Some("hard".into());
        assert!(check_common(&o)
            .unwrap_err()
            .to_string()
            .contains("soft, full, strict"));
        o.manage_cgroups_mode = None;
        o.empty_ns = vec!["pid".into()];
        assert!(check_common(&o)
            .unwrap_err()
            .to_string()
            .contains("network"));
    }

    #[test]
    fn each_stdio_key_is_inherited_once_preferring_stdout() {
        let k = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            inherited_stdio(&k(&["file[18:3]", "file[18:3]", "file[18:3]"])),
            vec![(1, "file[18:3]".to_string())]
        );
        assert_eq!(
            inherited_stdio(&k(&["pipe:[5]", "pipe:[6]", "pipe:[6]"])),
            vec![(0, "pipe:[5]".to_string()), (1, "pipe:[6]".to_string())]
        );
        assert_eq!(
            inherited_stdio(&k(&["", "tty[8800:2d]", "tty[8800:2d]"])),
            vec![(1, "tty[8800:2d]".to_string())]
        );
        assert!(inherited_stdio(&[]).is_empty());
    }

    #[test]
    fn bind_mounts_are_external() {
        let spec: Spec = serde_json::from_value(serde_json::json!({
            "ociVersion": "1.0.2",
            "root": {"path": "rootfs"},
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/data", "type": "bind", "source": "/srv/data"},
                {"destination": "/etc/hosts", "source": "/tmp/h", "options": ["rbind", "ro"]}
            ]
        }))
        .unwrap();
        assert_eq!(
            external_mounts(&spec),
            vec![
                ("/data".to_string(), "/srv/data".to_string()),
                ("/etc/hosts".to_string(), "/tmp/h".to_string())
            ]
        );
    }
}
