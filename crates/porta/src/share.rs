//! `porta share A:/PATH B:/PATH [--read-only]` and `porta unshare B:/PATH`: a directory of
//! one container served live in another, and its revocation. The source is opened once,
//! inside A's root (no symlink or `..` leads out of it), and the descriptor — not the
//! path — goes to B's supervisor, which serves it at the target through B's file server.
//! Both containers' state directories record the grant (`grants.json`).

use std::os::fd::{AsFd, AsRawFd};
use std::path::Path;

use anyhow::{bail, Context, Result};
use porta_runtime::container::Container;
use porta_runtime::state::StateRoot;
use porta_supervisor::protocol::grants::{self, Direction, Endpoint, Grant, GrantKind};

/// `ID:/PATH`, split and checked.
fn endpoint(s: &str) -> Result<Endpoint> {
    let Some((id, path)) = s.split_once(':') else {
        bail!("{s:?}: give CONTAINER:/PATH");
    };
    porta_runtime::state::validate_id(id).with_context(|| format!("{s:?}"))?;
    if !path.starts_with('/') {
        bail!("{s:?}: the path must be absolute in the container");
    }
    if path.split('/').any(|c| c == "..") {
        bail!("{s:?}: the path must not hold \"..\"");
    }
    let norm: Vec<&str> = path
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect();
    Ok(Endpoint {
        container: id.to_owned(),
        path: format!("/{}", norm.join("/")),
    })
}

/// Opens containers `a` and `b` (locking their state), in a fixed order so that two
/// commands never wait for each other.
fn open_pair(root: &StateRoot, a: &str, b: &str) -> Result<(Container, Container)> {
    if a < b {
        let ca = Container::open(root, a)?;
        Ok((ca, Container::open(root, b)?))
    } else {
        let cb = Container::open(root, b)?;
        Ok((Container::open(root, a)?, cb))
    }
}

fn save(dir: &Path, list: &[Grant]) -> Result<()> {
    porta_runtime::state::write_atomic(
        &dir.join(grants::GRANTS_FILE),
        &grants::encode(list),
        0o600,
    )?;
    Ok(())
}

fn new_id() -> String {
    let mut b = [0u8; 6];
    // SAFETY: a valid buffer of its length.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    if n != b.len() as isize {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        return format!("g-{:012x}", t & 0xffff_ffff_ffff);
    }
    format!(
        "g-{}",
        b.iter().map(|x| format!("{x:02x}")).collect::<String>()
    )
}

/// What `path` names in container `c`'s tree: a directory (resolved in the backing tree,
/// which the grant then serves without A's file server) or a listening socket (resolved
/// through the container's own view, where its server bound it).
fn source_in_tree(c: &Container, path: &str) -> Result<(GrantKind, std::os::fd::OwnedFd)> {
    let rootfs = std::fs::File::open(&c.state.rootfs)
        .with_context(|| format!("open the root {}", c.state.rootfs.display()))?;
    let node = porta_sys::path::open_in_root(rootfs.as_fd(), path, libc::O_PATH)
        .with_context(|| format!("not a directory or socket in container {}", c.state.id))?;
    let st = nix::sys::stat::fstat(node.as_raw_fd())?;
    match st.st_mode & libc::S_IFMT {
        libc::S_IFDIR => Ok((GrantKind::Directory, node)),
        libc::S_IFSOCK => {
            let root = std::fs::File::open(format!("/proc/{}/root", c.state.pid))
                .context("the container's view of its tree")?;
            let sock = porta_sys::path::open_in_root(root.as_fd(), path, libc::O_PATH)
                .with_context(|| format!("{path} in the container's view"))?;
            Ok((GrantKind::Socket, sock))
        }
        _ => bail!("not a directory or socket in container {} (a memory object is given as /proc/PID/fd/N)", c.state.id),
    }
}

/// `/proc/PID/fd/N`: a descriptor of a process of the source (a memory object).
fn memfd_ref(path: &str) -> Option<(i32, i32)> {
    let rest = path.strip_prefix("/proc/")?;
    let (pid, fd) = rest.split_once("/fd/")?;
    Some((
        pid.parse().ok().filter(|p| *p > 0)?,
        fd.parse().ok().filter(|f| *f >= 0)?,
    ))
}

/// The memfd that process `pid` (as container `c` numbers it) holds as descriptor `fd`,
/// taken with pidfd_getfd: the same open file, so both sides see one memory object.
fn memfd_of(c: &Container, pid: i32, fd: i32) -> Result<std::os::fd::OwnedFd> {
    let host = host_pid(c, pid)
        .with_context(|| format!("no process {pid} in container {}", c.state.id))?;
    let link = std::fs::read_link(format!("/proc/{host}/fd/{fd}"))
        .with_context(|| format!("process {pid} has no descriptor {fd}"))?;
    if !link.to_string_lossy().starts_with("/memfd:") {
        bail!(
            "descriptor {fd} of process {pid} is {} (not a memfd)",
            link.display()
        );
    }
    let pidfd = porta_sys::pidfd::open(host).context("pidfd_open")?;
    let got = porta_sys::pidfd::getfd(pidfd.as_fd(), fd).context("pidfd_getfd")?;
    // Checked again on what was taken: the process may have put something else there.
    let link = std::fs::read_link(format!("/proc/self/fd/{}", got.as_raw_fd()))?;
    if !link.to_string_lossy().starts_with("/memfd:") {
        bail!("descriptor {fd} of process {pid} changed under us (not a memfd)");
    }
    Ok(got)
}

/// The host pid of the process container `c` numbers `pid` (its PID namespace's view).
fn host_pid(c: &Container, pid: i32) -> Option<i32> {
    let ns = |p: i32| std::fs::read_link(format!("/proc/{p}/ns/pid")).ok();
    let theirs = ns(c.state.pid)?;
    for e in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(host) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        if ns(host).as_ref() != Some(&theirs) {
            continue;
        }
        let status = std::fs::read_to_string(format!("/proc/{host}/status")).unwrap_or_default();
        let inner = status
            .lines()
            .find_map(|l| l.strip_prefix("NSpid:"))
            .and_then(|l| l.split_whitespace().last())
            .and_then(|p| p.parse::<i32>().ok());
        if inner == Some(pid) {
            return Some(host);
        }
    }
    None
}

/// `porta share`: prints the grant's id.
pub fn share(root: &StateRoot, from: &str, to: &str, read_only: bool) -> Result<i32> {
    let source = endpoint(from)?;
    let target = endpoint(to)?;
    if source.container == target.container {
        bail!("share: {from} and {to} are in the same container (a bind mount does that)");
    }
    if target.path == "/" {
        bail!("share: {to}: a grant is served below the root, not at it");
    }
    let (a, b) = open_pair(root, &source.container, &target.container)?;
    for c in [&a, &b] {
        if !c.init_alive() {
            bail!("share: container {} has no running process", c.state.id);
        }
    }
    if !b.dir.path.join(porta_supervisor::SOCKET_NAME).exists() {
        bail!(
            "share: container {} has no file server (run.porta.fs=kernel?): a grant is served by it",
            b.state.id
        );
    }
    let mut into_b = grants::load(&b.dir.path).context("share: read the grants")?;
    if let Some(g) = into_b
        .iter()
        .find(|g| g.direction == Direction::In && g.target.path == target.path)
    {
        bail!(
            "share: {to} already serves grant {} (from {}:{})",
            g.id,
            g.source.container,
            g.source.path
        );
    }
    let (kind, handle) = match memfd_ref(&source.path) {
        Some((pid, fd)) => (
            GrantKind::Memfd,
            memfd_of(&a, pid, fd).with_context(|| format!("share: {from}"))?,
        ),
        None => source_in_tree(&a, &source.path).with_context(|| format!("share: {from}"))?,
    };
    let g = Grant {
        id: new_id(),
        kind,
        direction: Direction::In,
        source,
        target,
        read_only,
        created: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    };
    porta_supervisor::grant(&b.dir.path, &g, handle.as_fd())
        .with_context(|| format!("share {from} {to}"))?;
    drop(handle);
    let mut out_of_a = grants::load(&a.dir.path).unwrap_or_default();
    let mut out = g.clone();
    out.direction = Direction::Out;
    into_b.push(g.clone());
    out_of_a.push(out);
    if let Err(e) = save(&b.dir.path, &into_b).and_then(|_| save(&a.dir.path, &out_of_a)) {
        // Not recorded: not made.
        let _ = porta_supervisor::revoke(&b.dir.path, &g.id);
        return Err(e.context("share: record the grant"));
    }
    println!("{}", g.id);
    Ok(0)
}

/// Which grant `porta unshare` names: the one served at a path, or by its id.
enum Pick {
    At(String),
    Id(String),
}

impl Pick {
    fn matches(&self, g: &Grant) -> bool {
        g.direction == Direction::In
            && match self {
                Pick::At(path) => g.target.path == *path,
                Pick::Id(id) => g.id == *id,
            }
    }
}

/// `porta unshare B:/PATH` (or a grant id): revokes the grant served there.
pub fn unshare(root: &StateRoot, what: &str) -> Result<i32> {
    let (target_id, pick) = if what.contains(':') {
        let t = endpoint(what)?;
        (t.container.clone(), Pick::At(t.path))
    } else {
        if !grants::valid_id(what) {
            bail!("unshare: {what:?} is neither CONTAINER:/PATH nor a grant id");
        }
        let owner = root
            .ids()?
            .into_iter()
            .find(|id| {
                grants::load(&root.dir(id))
                    .unwrap_or_default()
                    .iter()
                    .any(|g| g.id == what && g.direction == Direction::In)
            })
            .with_context(|| format!("unshare: no container serves grant {what}"))?;
        (owner, Pick::Id(what.to_owned()))
    };
    let g = {
        let b = Container::open(root, &target_id)?;
        grants::load(&b.dir.path)?
            .into_iter()
            .find(|g| pick.matches(g))
            .with_context(|| format!("unshare: nothing is shared at {what}"))?
    };
    revoke(root, &g)?;
    Ok(0)
}

/// Revokes grant `g` (the target's record of it) and forgets it on both sides; the
/// source may be gone.
fn revoke(root: &StateRoot, g: &Grant) -> Result<()> {
    let b = Container::open(root, &g.target.container)?;
    let sock = b.dir.path.join(porta_supervisor::SOCKET_NAME);
    if sock.exists() {
        porta_supervisor::revoke(&b.dir.path, &g.id)
            .with_context(|| format!("unshare {}", g.id))?;
    }
    let keep: Vec<Grant> = grants::load(&b.dir.path)?
        .into_iter()
        .filter(|x| x.id != g.id)
        .collect();
    save(&b.dir.path, &keep)?;
    drop(b);
    forget_at(root, &g.source.container, &g.id);
    Ok(())
}

/// Drops grant `id` from container `id`'s record (best effort: the container may be gone).
fn forget_at(root: &StateRoot, container: &str, id: &str) {
    let Ok(c) = Container::open(root, container) else {
        return;
    };
    let Ok(list) = grants::load(&c.dir.path) else {
        return;
    };
    let keep: Vec<Grant> = list.into_iter().filter(|x| x.id != id).collect();
    if let Err(e) = save(&c.dir.path, &keep) {
        tracing::warn!(error = %e, container, grant = id, "could not update the grants record");
    }
}

/// The grants of container `id`, read before it is deleted (see [`after_delete`]).
pub fn before_delete(root: &StateRoot, id: &str) -> Vec<Grant> {
    grants::load(&root.dir(id)).unwrap_or_default()
}

/// After container `id` was deleted: grants out of it are revoked where they are served,
/// grants into it are forgotten by their sources.
pub fn after_delete(root: &StateRoot, grants: Vec<Grant>) {
    for g in grants {
        match g.direction {
            Direction::Out => {
                if let Err(e) = revoke(root, &g) {
                    tracing::warn!(error = %e, grant = %g.id, "could not revoke a grant of a deleted container");
                }
            }
            Direction::In => forget_at(root, &g.source.container, &g.id),
        }
    }
}
