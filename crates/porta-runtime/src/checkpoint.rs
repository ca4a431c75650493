//! `checkpoint` and `restore` through CRIU, for containers whose root the kernel mounts
//! (`run.porta.fs=kernel`). A root served by the container's file server is a FUSE mount,
//! which CRIU cannot checkpoint: such a container is refused, with the reason, and left
//! running.

use std::path::{Path, PathBuf};
use std::process::Command;

use oci_spec::runtime::{LinuxNamespaceType, Spec};

use crate::config::ANNOTATION_FS;
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

/// The `criu dump` (or `pre-dump`) command line for container `c`.
fn dump_args(c: &Container, spec: &Spec, o: &CheckpointOptions, mode: &str) -> Result<Vec<String>> {
    let img = o.criu.image_path.to_string_lossy().into_owned();
    let work = o
        .criu
        .work_path
        .as_ref()
        .unwrap_or(&o.criu.image_path)
        .to_string_lossy()
        .into_owned();
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
    for (dest, _) in external_mounts(spec) {
        a.push("--ext-mount-map".into());
        a.push(format!("{dest}:{dest}"));
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
        (o.criu.tcp_established, "--tcp-established"),
        (o.criu.ext_unix_sk, "--ext-unix-sk"),
        (o.criu.shell_job, "--shell-job"),
        (o.criu.file_locks, "--file-locks"),
        (o.criu.lazy_pages, "--lazy-pages"),
        (o.criu.auto_dedup, "--auto-dedup"),
        (o.tcp_skip_in_flight, "--skip-in-flight"),
        (o.link_remap, "--link-remap"),
        (o.pre_dump, "--track-mem"),
    ];
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
    for ns in &o.criu.empty_ns {
        a.push("--empty-ns".into());
        a.push(if ns == "network" {
            "net".into()
        } else {
            ns.clone()
        });
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
    let work = o
        .criu
        .work_path
        .clone()
        .unwrap_or(o.criu.image_path.clone());
    make_dir(&work, "--work-path")?;
    let args = dump_args(&c, &spec, o, mode)?;
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
        return Err(Error::Checkpoint(format!(
            "checkpoint {id}: criu {} failed ({}): {}{} (full log: {}); the container keeps running",
            args[0],
            out.status,
            criu_log_errors(&log),
            String::from_utf8_lossy(&out.stderr).trim(),
            log.display()
        )));
    }
    if !(o.leave_running || o.pre_dump) {
        // CRIU killed the container's processes after dumping them: remove what is left.
        c.delete(true)?;
    }
    Ok(())
}

/// `restore`: checks the bundle, the images and CRIU. Restoring a root served by a file
/// server is refused with the reason.
pub fn restore(root: &StateRoot, o: &RestoreOptions) -> Result<i32> {
    crate::state::validate_id(&o.id)?;
    if root.dir(&o.id).join("state.json").exists() {
        return Err(Error::Exists(o.id.clone()));
    }
    let cfg = o.bundle.join("config.json");
    let data = std::fs::read(&cfg).map_err(|e| Error::Config {
        path: cfg.clone(),
        msg: e.to_string(),
    })?;
    let spec = crate::config::parse_spec(&data, &cfg)?;
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
    Err(Error::Checkpoint(format!(
        "restore {}: restoring a CRIU image into a new container is not implemented by this \
         build of Porta",
        o.id
    )))
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
