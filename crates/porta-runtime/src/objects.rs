//! Builds a container's namespace of objects ([`porta_supervisor::protocol::objects`]) from
//! its state directory: the container, its processes, its servers, its translators, its
//! mounts, its grants and its children (a state root of their own, `<state dir>/children`),
//! in the host's view or in the view of a process inside the container.
//!
//! Everything is read without the containers' locks (state.json and servers.json are
//! replaced atomically): listing never waits for a command in flight, and a container
//! half made or half deleted is listed as what its records say.

use std::collections::BTreeMap;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use porta_supervisor::protocol::grants::{self, Direction};
use porta_supervisor::protocol::objects::{Detail, Object, Tree, View, VERSION};
use porta_supervisor::SupervisorState;

use crate::error::{Error, Result};
use crate::state::{ContainerState, Status};

/// Name of the directory, in a container's state directory, that is the state root of its
/// child containers.
pub const CHILDREN_DIR: &str = "children";

/// The most levels of children listed (deeper ones are left out).
const MAX_DEPTH: u32 = 16;

/// A pid namespace, by its inode (and device) on nsfs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PidNs {
    dev: u64,
    ino: u64,
    /// Its level: 0 for the host's, 1 for a namespace made in it, …
    level: usize,
}

impl PidNs {
    /// The pid namespace of `pid` (read through /proc), with its level.
    pub fn of(pid: i32) -> Option<PidNs> {
        let md = std::fs::metadata(format!("/proc/{pid}/ns/pid")).ok()?;
        let nspid = ns_pids(pid)?;
        Some(PidNs {
            dev: md.dev(),
            ino: md.ino(),
            level: nspid.len().checked_sub(1)?,
        })
    }

    /// Whether `pid` is in this namespace or in one nested in it; then its pid in this
    /// namespace.
    pub fn pid_of(&self, pid: i32) -> Option<i32> {
        let nspid = ns_pids(pid)?;
        let mine = *nspid.get(self.level)?;
        let f = std::fs::File::open(format!("/proc/{pid}/ns/pid")).ok()?;
        if crate::sys::ns_descends_from(f.into(), self.dev, self.ino) {
            Some(mine)
        } else {
            None
        }
    }
}

/// The `NSpid` line of /proc/PID/status: the pid in each pid namespace, outermost first.
fn ns_pids(pid: i32) -> Option<Vec<i32>> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find_map(|l| l.strip_prefix("NSpid:"))?;
    line.split_whitespace().map(|p| p.parse().ok()).collect()
}

/// The real uid of `pid` (the `Uid:` line of /proc/PID/status).
pub fn uid_of(pid: i32) -> Option<u32> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// A process of a container, found while listing: its host pid, the pid the view gives
/// it, and a pidfd that pins it.
#[derive(Debug)]
pub struct Proc {
    /// Its pid on the host.
    pub host_pid: i32,
    /// Its pid in the view.
    pub pid: i32,
    /// Its command name.
    pub comm: String,
    /// A pidfd of it, opened before its details were read and checked alive after.
    pub pidfd: OwnedFd,
    /// The object path it is listed at.
    pub path: String,
}

/// Who looks: the host, or a container (through its pid namespace).
#[derive(Debug, Clone, Copy)]
pub enum Viewer {
    /// The host: everything, host pids.
    Host,
    /// A process of a container whose pid namespace is this one.
    Container(Option<PidNs>),
}

impl Viewer {
    /// The pid the viewer knows `host_pid` by (None: it cannot see it).
    fn pid(&self, host_pid: i32) -> Option<i32> {
        match self {
            Viewer::Host => Some(host_pid),
            Viewer::Container(Some(ns)) => ns.pid_of(host_pid),
            Viewer::Container(None) => None,
        }
    }
}

/// The result of a listing: the objects and the processes found (with their pidfds, for
/// `open`).
pub struct Listing {
    /// The tree.
    pub tree: Tree,
    /// Every process object listed, pinned.
    pub procs: Vec<Proc>,
}

/// The whole tree of state root `root` in the host's view, or the subtree of container
/// `id` (an error naming it when there is no such container).
pub fn host_tree(root: &Path, id: Option<&str>) -> Result<Listing> {
    let mut b = Builder {
        viewer: Viewer::Host,
        procs: Vec::new(),
    };
    let mut objects = Vec::new();
    match id {
        Some(id) => {
            crate::state::validate_id(id)?;
            let dir = root.join(id);
            if !dir.join("state.json").exists() {
                return Err(Error::NotFound(id.to_string()));
            }
            objects.push(b.namespace(&dir, "", 0)?);
        }
        None => {
            for id in ids(root)? {
                // A container going away meanwhile is left out.
                if let Ok(o) = b.namespace(&root.join(&id), "", 0) {
                    objects.push(o);
                }
            }
        }
    }
    Ok(Listing {
        tree: Tree {
            version: VERSION,
            view: View::Host,
            objects,
        },
        procs: b.procs,
    })
}

/// The namespace of the container whose state directory is `state_dir`, as a process in
/// it may see it: pids in the container's pid namespace, no host paths or pids, its
/// children in the same view.
pub fn container_tree(state_dir: &Path) -> Result<Listing> {
    let st = load_state(state_dir)?;
    let ns = if alive(&st) { PidNs::of(st.pid) } else { None };
    let mut b = Builder {
        viewer: Viewer::Container(ns),
        procs: Vec::new(),
    };
    let ns = b.namespace(state_dir, "", 0)?;
    Ok(Listing {
        tree: Tree {
            version: VERSION,
            view: View::Container,
            objects: vec![ns],
        },
        procs: b.procs,
    })
}

/// The container ids of a state root, sorted (none when it does not exist).
fn ids(root: &Path) -> Result<Vec<String>> {
    let rd = match std::fs::read_dir(root) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(Error::Sys {
                what: format!("read state root {}", root.display()),
                source: e,
            })
        }
    };
    let mut out: Vec<String> = rd
        .flatten()
        .filter(|e| e.path().join("state.json").is_file())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|id| crate::state::validate_id(id).is_ok())
        .collect();
    out.sort();
    Ok(out)
}

fn load_state(dir: &Path) -> Result<ContainerState> {
    let p = dir.join("state.json");
    let data = std::fs::read(&p).map_err(|e| Error::State {
        path: p.clone(),
        msg: e.to_string(),
    })?;
    crate::state::parse_state(&data).map_err(|msg| Error::State { path: p, msg })
}

fn alive(st: &ContainerState) -> bool {
    st.pid > 0
        && porta_sys::proc::Stat::of(st.pid)
            .is_some_and(|s| s.start_time == st.pid_start_time && !s.is_dead())
}

/// The live status, as `porta list` tells it.
fn status(st: &ContainerState) -> Status {
    if st.status == Status::Creating {
        Status::Creating
    } else if !alive(st) {
        Status::Stopped
    } else if st.status == Status::Paused {
        Status::Paused
    } else if st.started {
        Status::Running
    } else {
        Status::Created
    }
}

struct Builder {
    viewer: Viewer,
    procs: Vec<Proc>,
}

fn group(parent: &str, name: &str, children: Vec<Object>) -> Object {
    Object {
        name: name.into(),
        path: format!("{parent}/{name}"),
        detail: Detail::Group {},
        children,
    }
}

impl Builder {
    fn host(&self) -> bool {
        matches!(self.viewer, Viewer::Host)
    }

    /// The namespace of the container in `dir`, at path `prefix/ID`.
    fn namespace(&mut self, dir: &Path, prefix: &str, depth: u32) -> Result<Object> {
        let st = load_state(dir)?;
        let path = format!("{prefix}/{}", st.id);
        let status = status(&st);
        let running = status != Status::Stopped && status != Status::Creating;
        let pid = if running {
            self.viewer.pid(st.pid)
        } else {
            None
        };
        let host = self.host();
        let mut children = Vec::new();
        let procs = if running {
            self.processes(&st, &path)
        } else {
            Vec::new()
        };
        children.push(group(&path, "processes", procs));
        let servers = if st.file_server {
            self.servers(dir, &path)
        } else {
            Vec::new()
        };
        children.push(group(&path, "servers", servers));
        let translators = if st.file_server {
            self.translators(dir, &path)
        } else {
            Vec::new()
        };
        children.push(group(&path, "translators", translators));
        let mounts = if running {
            self.mounts(st.pid, &path)
        } else {
            Vec::new()
        };
        children.push(group(&path, "mounts", mounts));
        children.push(group(&path, "grants", self.grants(dir, &path)));
        let mut kids = Vec::new();
        if depth < MAX_DEPTH {
            let croot = dir.join(CHILDREN_DIR);
            for id in ids(&croot)? {
                let cpath = format!("{path}/{CHILDREN_DIR}");
                if let Ok(o) = self.namespace(&croot.join(&id), &cpath, depth + 1) {
                    kids.push(o);
                }
            }
        }
        children.push(group(&path, CHILDREN_DIR, kids));
        Ok(Object {
            name: st.id.clone(),
            path,
            detail: Detail::Namespace {
                id: st.id.clone(),
                status: status.to_string(),
                pid,
                file_server: st.file_server,
                bundle: host.then(|| st.bundle.display().to_string()),
                state_dir: host.then(|| dir.display().to_string()),
                depth,
            },
            children,
        })
    }

    /// The container's processes: its cgroup's payload leaf, or (without a cgroup) the
    /// processes of its pid namespace when it has one of its own.
    fn processes(&mut self, st: &ContainerState, path: &str) -> Vec<Object> {
        let from_cgroup = st
            .cgroup
            .as_ref()
            .and_then(|c| porta_cgroups::ContainerCgroup::open(c).ok())
            .and_then(|cg| cg.payload_pids().ok());
        let pids = match from_cgroup {
            Some(p) => p,
            None => pid_namespace_members(st.pid),
        };
        let mut found = BTreeMap::new();
        for host_pid in pids {
            let Ok(fd) = porta_sys::pidfd::open(host_pid) else {
                continue;
            };
            let Some(stat) = porta_sys::proc::Stat::of(host_pid) else {
                continue;
            };
            if stat.is_dead() {
                continue;
            }
            let Some(pid) = self.viewer.pid(host_pid) else {
                continue;
            };
            // The pidfd was opened first: alive now, it is the process just read.
            if porta_sys::pidfd::has_exited(fd.as_fd()) {
                continue;
            }
            found.insert(pid, (host_pid, stat.comm, fd));
        }
        let mut out = Vec::new();
        for (pid, (host_pid, comm, fd)) in found {
            let opath = format!("{path}/processes/{pid}");
            out.push(Object {
                name: pid.to_string(),
                path: opath.clone(),
                detail: Detail::Process {
                    pid,
                    comm: comm.clone(),
                    host_pid: self.host().then_some(host_pid),
                },
                children: Vec::new(),
            });
            self.procs.push(Proc {
                host_pid,
                pid,
                comm,
                pidfd: fd,
                path: opath,
            });
        }
        out
    }

    /// The servers the supervisor records (servers.json).
    fn servers(&self, dir: &Path, path: &str) -> Vec<Object> {
        let Ok(rec) = porta_supervisor::read_state(dir) else {
            return Vec::new();
        };
        let live = porta_supervisor::servers(dir).unwrap_or_default();
        let host = self.host();
        let mut out = Vec::new();
        let mut push = |role: &str, pid: i32, state: String, restarts: Option<u64>| {
            out.push(Object {
                name: role.into(),
                path: format!("{path}/servers/{role}"),
                detail: Detail::Server {
                    role: role.into(),
                    state,
                    restarts,
                    pid: (host && pid > 0).then_some(pid),
                },
                children: Vec::new(),
            });
        };
        let up = |pid: i32, start: u64| {
            let ok = pid > 0
                && porta_sys::proc::Stat::of(pid)
                    .is_some_and(|s| !s.is_dead() && (start == 0 || s.start_time == start));
            if ok { "running" } else { "stopped" }.to_string()
        };
        let SupervisorState {
            supervisor_pid,
            supervisor_start,
            successor_pid,
            successor_start,
            keeper_pid,
            twin_pid,
            standby_pid,
            ..
        } = rec;
        push(
            "supervisor",
            supervisor_pid,
            up(supervisor_pid, supervisor_start),
            None,
        );
        if successor_pid > 0 {
            let s = if up(successor_pid, successor_start) == "running" {
                "standing by".to_string()
            } else {
                "stopped".to_string()
            };
            push("successor", successor_pid, s, None);
        }
        if keeper_pid > 0 {
            push("keeper", keeper_pid, up(keeper_pid, 0), None);
        }
        if twin_pid > 0 {
            let s = if up(twin_pid, 0) == "running" {
                "standing by".to_string()
            } else {
                "stopped".to_string()
            };
            push("twin", twin_pid, s, None);
        }
        for s in &live {
            push(&s.name, s.pid, s.state.clone(), Some(s.restarts));
            if s.name == "fs" && standby_pid > 0 {
                let st = if up(standby_pid, 0) == "running" {
                    "standing by".to_string()
                } else {
                    "stopped".to_string()
                };
                push("standby", standby_pid, st, None);
            }
        }
        out
    }

    /// The translators the supervisor records.
    fn translators(&self, dir: &Path, path: &str) -> Vec<Object> {
        let Ok(rec) = porta_supervisor::read_state(dir) else {
            return Vec::new();
        };
        rec.translators
            .into_iter()
            .enumerate()
            .map(|(i, t)| Object {
                name: i.to_string(),
                path: format!("{path}/translators/{i}"),
                detail: Detail::Translator {
                    node: t.path,
                    args: t.args,
                    uid: t.uid,
                    gid: t.gid,
                    passive: t.passive,
                    pid: (t.pid > 0).then(|| self.viewer.pid(t.pid)).flatten(),
                },
                children: Vec::new(),
            })
            .collect()
    }

    /// The container's mount table, as its first process sees it.
    fn mounts(&self, init: i32, path: &str) -> Vec<Object> {
        let Ok(text) = std::fs::read_to_string(format!("/proc/{init}/mountinfo")) else {
            return Vec::new();
        };
        let Ok(list) = porta_sys::proc::parse_mountinfo(&text) else {
            return Vec::new();
        };
        let host = self.host();
        list.into_iter()
            .enumerate()
            .map(|(i, m)| {
                let source = if host || !m.source.starts_with('/') {
                    Some(m.source.clone())
                } else {
                    None
                };
                Object {
                    name: i.to_string(),
                    path: format!("{path}/mounts/{i}"),
                    detail: Detail::Mount {
                        mount_point: m.mount_point.display().to_string(),
                        fs_type: m.fs_type.clone(),
                        source,
                        read_only: m.options.split(',').any(|o| o == "ro"),
                    },
                    children: Vec::new(),
                }
            })
            .collect()
    }

    /// The grants into and out of the container.
    fn grants(&self, dir: &Path, path: &str) -> Vec<Object> {
        let list = match grants::load(dir) {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "grants record unreadable; listed as none");
                return Vec::new();
            }
        };
        let host = self.host();
        list.into_iter()
            .map(|g| {
                let (local, peer, dir) = match g.direction {
                    Direction::In => (g.target.path, g.source, "in"),
                    Direction::Out => (g.source.path, g.target, "out"),
                };
                Object {
                    name: g.id.clone(),
                    path: format!("{path}/grants/{}", g.id),
                    detail: Detail::Grant {
                        id: g.id,
                        direction: dir.into(),
                        what: serde_json::to_value(g.kind)
                            .ok()
                            .and_then(|v| v.as_str().map(String::from))
                            .unwrap_or_default(),
                        local_path: local,
                        peer: host.then(|| format!("{}:{}", peer.container, peer.path)),
                        read_only: g.read_only,
                    },
                    children: Vec::new(),
                }
            })
            .collect()
    }
}

/// The processes in the pid namespace of `init` (or nested in it), when it is not the
/// host's: the listing of a container without a cgroup.
fn pid_namespace_members(init: i32) -> Vec<i32> {
    let Some(ns) = PidNs::of(init) else {
        return Vec::new();
    };
    if ns.level == 0 {
        return Vec::new();
    }
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()))
        .filter(|p| ns.pid_of(*p).is_some())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stopped container's state directory under `root` (pid 0: nothing runs).
    fn fake(root: &Path, id: &str, bundle: &str) -> std::path::PathBuf {
        let dir = root.join(id);
        std::fs::create_dir_all(&dir).unwrap();
        let st = serde_json::json!({
            "ociVersion": "1.2.1", "id": id, "status": "stopped", "pid": 0,
            "bundle": bundle, "rootfs": format!("{bundle}/rootfs"),
            "created": "2026-12-07T00:00:00Z", "owner": "root",
            "started": true, "fileServer": false
        });
        std::fs::write(dir.join("state.json"), st.to_string()).unwrap();
        dir
    }

    #[test]
    fn trees_of_a_root_with_grants_and_children() {
        let t = tempfile::tempdir().unwrap();
        let a = fake(t.path(), "a", "/secret/bundle-a");
        fake(t.path(), "b", "/secret/bundle-b");
        fake(&a.join(CHILDREN_DIR), "c", "/secret/bundle-c");
        std::fs::write(
            a.join("grants.json"),
            serde_json::json!([{
                "id": "g1", "kind": "directory", "direction": "out",
                "source": {"container": "a", "path": "/data"},
                "target": {"container": "b", "path": "/mnt"},
                "readOnly": false, "created": "2026-12-07T00:00:00Z"
            }])
            .to_string(),
        )
        .unwrap();
        // Not containers: a stray file and a directory without state.
        std::fs::write(t.path().join("stray"), b"x").unwrap();
        std::fs::create_dir(t.path().join("empty")).unwrap();

        let host = host_tree(t.path(), None).unwrap().tree;
        let ids: Vec<&str> = host.objects.iter().map(|o| o.name.as_str()).collect();
        assert_eq!(ids, ["a", "b"]);
        let a_obj = &host.objects[0];
        let grant = a_obj.find(&["a", "grants", "g1"]).unwrap();
        assert!(matches!(
            &grant.detail,
            Detail::Grant { peer: Some(p), direction, .. } if p == "b:/mnt" && direction == "out"
        ));
        let c = a_obj.find(&["a", "children", "c"]).unwrap();
        assert_eq!(c.path, "/a/children/c");
        assert!(matches!(c.detail, Detail::Namespace { depth: 1, .. }));
        let text = String::from_utf8(host.encode()).unwrap();
        assert!(text.contains("/secret/bundle-a"), "the host sees bundles");

        let one = host_tree(t.path(), Some("b")).unwrap().tree;
        assert_eq!(one.objects.len(), 1);
        assert!(matches!(
            host_tree(t.path(), Some("nope")),
            Err(Error::NotFound(_))
        ));
        assert!(host_tree(t.path(), Some("../a")).is_err());

        let inside = container_tree(&a).unwrap().tree;
        assert_eq!(inside.view, View::Container);
        assert_eq!(inside.objects.len(), 1);
        let text = String::from_utf8(inside.encode()).unwrap();
        assert!(!text.contains("/secret"), "host paths leaked: {text}");
        assert!(!text.contains("\"b:"), "the peer leaked: {text}");
        assert!(inside.objects[0].find(&["a", "children", "c"]).is_some());
        assert!(inside.objects[0].find(&["b"]).is_none());
    }
}
