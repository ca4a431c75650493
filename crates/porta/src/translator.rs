//! `porta translator set|show|rm`: a container's translators from the host. The records
//! are set through the container's own file server (as extended attributes of the node,
//! reached through the container's root), exactly as `setfattr` inside the container
//! would; the running translators come from the supervisor's record.

use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use anyhow::{bail, Context, Result};
use porta_runtime::container::Container;
use porta_runtime::state::StateRoot;
use porta_supervisor::translator::{self, ACTIVE_XATTR, PASSIVE_XATTR};

use crate::cli::TranslatorCommand;

/// Runs one `porta translator` command.
pub fn run(root: &StateRoot, cmd: TranslatorCommand) -> Result<i32> {
    match cmd {
        TranslatorCommand::Set {
            passive,
            id,
            path,
            program,
        } => {
            if program.is_empty() {
                bail!("translator set: give the program after `--` (e.g. -- porta:memfs)");
            }
            let record = translator::encode_record(&program);
            translator::parse_record(&record).context("translator set")?;
            let c = open(root, &id)?;
            let node = node(&c, &path)?;
            let name = if passive { PASSIVE_XATTR } else { ACTIVE_XATTR };
            xattr(&node, name, Some(&record)).with_context(|| format!("translator set {path}"))?;
            Ok(0)
        }
        TranslatorCommand::Rm { id, path } => {
            let c = open(root, &id)?;
            let node = node(&c, &path)?;
            let passive = xattr(&node, PASSIVE_XATTR, None);
            let active = match xattr(&node, ACTIVE_XATTR, None) {
                Err(e) if passive.is_ok() => {
                    tracing::debug!(error = %e, "no active translator");
                    Ok(())
                }
                r => r,
            };
            match (passive, active) {
                (Err(_), Err(_)) => bail!("translator rm: {path} has no translator"),
                _ => Ok(0),
            }
        }
        TranslatorCommand::Show { id, path, format } => {
            let c = open(root, &id)?;
            match path {
                Some(path) => {
                    let node = node(&c, &path)?;
                    let get = |name: &str| {
                        get_xattr(&node, name)
                            .map(|v| translator::parse_record(&v).unwrap_or_default())
                    };
                    let passive = get(PASSIVE_XATTR);
                    let active = get(ACTIVE_XATTR);
                    if format == "json" {
                        println!(
                            "{}",
                            serde_json::json!({"path": path, "passive": passive, "active": active})
                        );
                    } else {
                        if let Some(p) = &passive {
                            println!("passive: {}", p.join(" "));
                        }
                        if let Some(a) = &active {
                            println!("active: {}", a.join(" "));
                        }
                        if passive.is_none() && active.is_none() {
                            println!("{path}: no translator");
                        }
                    }
                }
                None => {
                    let st = porta_supervisor::read_state(&c.dir.path)
                        .context("read the container's supervisor record")?;
                    if format == "json" {
                        println!("{}", serde_json::to_string(&st.translators)?);
                    } else {
                        println!("{:<8} {:<8} {:<24} ARGS", "PID", "KIND", "PATH");
                        for t in &st.translators {
                            let kind = if t.passive { "passive" } else { "active" };
                            println!(
                                "{:<8} {:<8} {:<24} {}",
                                t.pid,
                                kind,
                                t.path,
                                t.args.join(" ")
                            );
                        }
                    }
                }
            }
            Ok(0)
        }
    }
}

fn open(root: &StateRoot, id: &str) -> Result<Container> {
    let c = Container::open(root, id)?;
    if !c.init_alive() {
        bail!("container {id} has no running process: translators are set on a created or running container");
    }
    if !c.dir.path.join(porta_supervisor::SOCKET_NAME).exists() {
        bail!("container {id} has no file server (run.porta.fs=kernel?): translators need one");
    }
    Ok(c)
}

/// The node at `path` of the container's tree, resolved inside its root (symlinks
/// included), as an O_PATH descriptor.
fn node(c: &Container, path: &str) -> Result<OwnedFd> {
    if !path.starts_with('/') {
        bail!("{path:?}: give the node's absolute path inside the container");
    }
    let root = format!("/proc/{}/root", c.state.pid);
    let dir = std::fs::File::open(&root).with_context(|| format!("open {root}"))?;
    porta_sys::path::open_in_root(dir.as_fd(), path, libc::O_PATH)
        .with_context(|| format!("{path} in container {}", c.state.id))
}

fn fd_path(node: &OwnedFd) -> CString {
    CString::new(format!("/proc/self/fd/{}", node.as_raw_fd())).unwrap_or_default()
}

/// Sets (`Some`) or removes (`None`) an extended attribute of the node, with the file
/// server's answer as a readable error.
fn xattr(node: &OwnedFd, name: &str, value: Option<&[u8]>) -> Result<()> {
    let p = fd_path(node);
    let n = CString::new(name)?;
    // SAFETY: valid strings and buffer for the calls.
    let r = unsafe {
        match value {
            Some(v) => libc::setxattr(p.as_ptr(), n.as_ptr(), v.as_ptr().cast(), v.len(), 0),
            None => libc::removexattr(p.as_ptr(), n.as_ptr()),
        }
    };
    if r == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    let why = match e.raw_os_error() {
        Some(libc::EPERM) => {
            "only the node's owner or root may attach a translator, to a directory or regular file"
        }
        Some(libc::EBUSY) => "the node has a running translator (remove it first) or is the root",
        Some(libc::EINVAL) => "not a valid translator command line",
        Some(libc::ENOENT) => "the program was not found in the container",
        Some(libc::EACCES) => "permission denied (the node, or the program)",
        Some(libc::ENODATA) => "no such translator",
        Some(libc::EOPNOTSUPP) => {
            "translators are not supported by this container's file server (io_uring transport?)"
        }
        Some(libc::ETIMEDOUT) => "the translator did not answer FUSE INIT in time",
        Some(libc::EIO) => "the translator failed to start (see the supervisor's log)",
        _ => "",
    };
    if why.is_empty() {
        Err(e.into())
    } else {
        Err(anyhow::anyhow!("{why} ({e})"))
    }
}

fn get_xattr(node: &OwnedFd, name: &str) -> Option<Vec<u8>> {
    let p = fd_path(node);
    let n = CString::new(name).ok()?;
    let mut buf = vec![0u8; translator::MAX_RECORD + 1];
    // SAFETY: valid strings and buffer.
    let r = unsafe { libc::getxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    (r >= 0).then(|| {
        buf.truncate(r as usize);
        buf
    })
}
