//! The object namespace of a container: every resource of a container as a typed, named
//! object in a tree, as `porta objects` prints it and the API socket's `list` returns it.
//!
//! A container is a **namespace** object (`/ID`). Beneath it, one **group** object per
//! kind of resource (`/ID/processes`, `/ID/servers`, `/ID/translators`, `/ID/mounts`,
//! `/ID/grants`, `/ID/children`), and beneath the groups the objects themselves:
//! `/ID/processes/1`, `/ID/servers/fs`, `/ID/mounts/0`, `/ID/grants/G`,
//! `/ID/children/CHILD` (a namespace again, nested). Every object has a kind, a name
//! (its last path component) and a path; the kind-specific fields sit beside them.
//!
//! Two views exist: the **host** view (everything, host pids and paths) and the
//! **container** view (what a process inside may learn: pids as its own pid namespace
//! numbers them, no host paths, no host pids, no other container). Fields a view leaves
//! out are absent from the JSON.

use serde::{Deserialize, Serialize};

use crate::Error;

/// Version of the tree's JSON (`"version"` of a [`Tree`]).
pub const VERSION: u32 = 1;

/// The names of the groups beneath a namespace, in the order they are listed.
pub const GROUPS: [&str; 6] = [
    "processes",
    "servers",
    "translators",
    "mounts",
    "grants",
    "children",
];

/// Which view a tree was built for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum View {
    /// The host's: everything.
    Host,
    /// A process inside a container: its own namespace only, in its own terms.
    Container,
}

/// A listing: the namespaces (or the one object) asked for, in one view.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tree {
    /// [`VERSION`].
    pub version: u32,
    /// The view it was built for.
    pub view: View,
    /// The top objects (namespaces, or the subtree asked for).
    pub objects: Vec<Object>,
}

impl Tree {
    /// Its JSON.
    pub fn encode(&self) -> Vec<u8> {
        // Plain data with string keys: serializing it cannot fail.
        serde_json::to_vec_pretty(self).unwrap_or_default()
    }

    /// Reads a tree; a tree of another version is refused, naming it.
    pub fn decode(b: &[u8]) -> Result<Tree, Error> {
        let t: Tree = serde_json::from_slice(b)
            .map_err(|e| Error::malformed("object tree", e.to_string()))?;
        if t.version != VERSION {
            return Err(Error::malformed(
                "object tree",
                format!("version {} (this build reads {VERSION})", t.version),
            ));
        }
        Ok(t)
    }
}

/// One object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Object {
    /// Its name: the last component of its path.
    pub name: String,
    /// Its path in the tree (`/ID/processes/1`).
    pub path: String,
    /// The kind and what objects of that kind have.
    #[serde(flatten)]
    pub detail: Detail,
    /// The objects beneath it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub children: Vec<Object>,
}

/// The kind of an object and its kind-specific fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Detail {
    /// A container: a namespace of objects (a child container is one too).
    Namespace {
        /// The container id.
        id: String,
        /// `creating`, `created`, `running`, `paused` or `stopped`.
        status: String,
        /// Its first process, as the view numbers it (absent when stopped, or where the
        /// view cannot see it).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pid: Option<i32>,
        /// Whether its root is served by its own file server.
        #[serde(rename = "fileServer")]
        file_server: bool,
        /// Its bundle (host view only).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        bundle: Option<String>,
        /// Its state directory (host view only).
        #[serde(default, rename = "stateDir", skip_serializing_if = "Option::is_none")]
        state_dir: Option<String>,
        /// How deep it is nested (0: a container of the state root).
        depth: u32,
    },
    /// A group of objects of one kind beneath a namespace.
    Group {},
    /// A process of the container.
    Process {
        /// Its pid as the view numbers it (the container view: its own pid namespace).
        pid: i32,
        /// Its command name.
        comm: String,
        /// Its pid on the host (host view only).
        #[serde(default, rename = "hostPid", skip_serializing_if = "Option::is_none")]
        host_pid: Option<i32>,
    },
    /// A process of Porta serving the container (supervisor, keeper, file server, …).
    Server {
        /// What it does.
        role: String,
        /// `running`, `restarting`, `stopped`, `failed` or `standing by`.
        state: String,
        /// How often it was replaced (where recorded).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        restarts: Option<u64>,
        /// Its host pid (host view only).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pid: Option<i32>,
    },
    /// A translator serving a node of the container's tree.
    Translator {
        /// The translated node's path in the container.
        node: String,
        /// Its arguments as recorded.
        args: Vec<String>,
        /// The container's uid it runs as.
        uid: u32,
        /// The container's gid it runs as.
        gid: u32,
        /// Started from the node's passive record.
        passive: bool,
        /// Its pid as the view numbers it (absent where the view cannot see it).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pid: Option<i32>,
    },
    /// A mount of the container's mount table.
    Mount {
        /// Where it is mounted, in the container.
        #[serde(rename = "mountPoint")]
        mount_point: String,
        /// The file-system type.
        #[serde(rename = "fsType")]
        fs_type: String,
        /// The mount's source (absent in the container view where it is a host path).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        source: Option<String>,
        /// Mounted read-only.
        #[serde(rename = "readOnly")]
        read_only: bool,
    },
    /// A handle shared into or out of the container (`porta share`).
    Grant {
        /// The grant's id.
        id: String,
        /// `in` (served in this container) or `out` (given away by it).
        direction: String,
        /// What it carries (`directory`).
        what: String,
        /// The path on this container's side.
        #[serde(rename = "localPath")]
        local_path: String,
        /// The other side (host view only): `CONTAINER:PATH`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        peer: Option<String>,
        /// The target may only read.
        #[serde(rename = "readOnly")]
        read_only: bool,
    },
}

impl Detail {
    /// The kind's name as in the JSON.
    pub fn kind(&self) -> &'static str {
        match self {
            Detail::Namespace { .. } => "namespace",
            Detail::Group {} => "group",
            Detail::Process { .. } => "process",
            Detail::Server { .. } => "server",
            Detail::Translator { .. } => "translator",
            Detail::Mount { .. } => "mount",
            Detail::Grant { .. } => "grant",
        }
    }
}

impl Object {
    /// The object at `path` beneath (or at) this one; `None` when there is none. `path`
    /// must be checked first ([`crate::api::path_components`]).
    pub fn find(&self, parts: &[&str]) -> Option<&Object> {
        let (first, rest) = parts.split_first()?;
        if *first != self.name {
            return None;
        }
        if rest.is_empty() {
            return Some(self);
        }
        self.children.iter().find_map(|c| c.find(rest))
    }

    /// Every path in the subtree (this one first), for checks and tests.
    pub fn paths(&self) -> Vec<&str> {
        let mut out = vec![self.path.as_str()];
        for c in &self.children {
            out.extend(c.paths());
        }
        out
    }

    /// The subtree as an indented tree a person reads, one object a line.
    pub fn render(&self, indent: usize, out: &mut String) {
        use std::fmt::Write;
        let pad = "  ".repeat(indent);
        let what = match &self.detail {
            Detail::Namespace {
                id,
                status,
                pid,
                file_server,
                bundle,
                ..
            } => {
                let mut s = format!("namespace {id} {status}");
                if let Some(p) = pid {
                    let _ = write!(s, " pid {p}");
                }
                s.push_str(if *file_server {
                    " file-server"
                } else {
                    " kernel-root"
                });
                if let Some(b) = bundle {
                    let _ = write!(s, " bundle {b}");
                }
                s
            }
            Detail::Group {} => format!("{}/", self.name),
            Detail::Process {
                pid,
                comm,
                host_pid,
            } => {
                let mut s = format!("process {pid} {comm}");
                if let Some(h) = host_pid {
                    let _ = write!(s, " (host pid {h})");
                }
                s
            }
            Detail::Server {
                role,
                state,
                restarts,
                pid,
            } => {
                let mut s = format!("server {role} {state}");
                if let Some(p) = pid {
                    let _ = write!(s, " pid {p}");
                }
                if let Some(r) = restarts {
                    let _ = write!(s, " restarts {r}");
                }
                s
            }
            Detail::Translator {
                node,
                args,
                uid,
                gid,
                passive,
                pid,
            } => {
                let mut s = format!(
                    "translator {node} {} uid {uid} gid {gid}{}",
                    args.join(" "),
                    if *passive { " passive" } else { "" }
                );
                if let Some(p) = pid {
                    let _ = write!(s, " pid {p}");
                }
                s
            }
            Detail::Mount {
                mount_point,
                fs_type,
                source,
                read_only,
            } => {
                let mut s = format!("mount {mount_point} {fs_type}");
                if let Some(src) = source {
                    let _ = write!(s, " from {src}");
                }
                if *read_only {
                    s.push_str(" ro");
                }
                s
            }
            Detail::Grant {
                id,
                direction,
                what,
                local_path,
                peer,
                read_only,
            } => {
                let arrow = if direction == "in" { "<-" } else { "->" };
                let mut s = format!("grant {id} {what} {local_path}");
                if let Some(p) = peer {
                    let _ = write!(s, " {arrow} {p}");
                } else {
                    let _ = write!(s, " ({direction})");
                }
                if *read_only {
                    s.push_str(" ro");
                }
                s
            }
        };
        let _ = writeln!(out, "{pad}{what}");
        for c in &self.children {
            c.render(indent + 1, out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Tree {
        let proc1 = Object {
            name: "1".into(),
            path: "/a/processes/1".into(),
            detail: Detail::Process {
                pid: 1,
                comm: "sh".into(),
                host_pid: None,
            },
            children: vec![],
        };
        let group = Object {
            name: "processes".into(),
            path: "/a/processes".into(),
            detail: Detail::Group {},
            children: vec![proc1],
        };
        Tree {
            version: VERSION,
            view: View::Container,
            objects: vec![Object {
                name: "a".into(),
                path: "/a".into(),
                detail: Detail::Namespace {
                    id: "a".into(),
                    status: "running".into(),
                    pid: Some(1),
                    file_server: true,
                    bundle: None,
                    state_dir: None,
                    depth: 0,
                },
                children: vec![group],
            }],
        }
    }

    #[test]
    fn round_trip_find_render() {
        let t = sample();
        let back = Tree::decode(&t.encode()).unwrap();
        assert_eq!(back, t);
        let a = &t.objects[0];
        assert_eq!(
            a.find(&["a", "processes", "1"]).map(|o| o.detail.kind()),
            Some("process")
        );
        assert!(a.find(&["b"]).is_none());
        assert!(a.find(&["a", "nothing"]).is_none());
        let mut s = String::new();
        a.render(0, &mut s);
        assert_eq!(
            s,
            "namespace a running pid 1 file-server\n  processes/\n    process 1 sh\n"
        );
        let v: serde_json::Value = serde_json::from_slice(&t.encode()).unwrap();
        assert_eq!(v["objects"][0]["kind"], "namespace");
        assert!(v["objects"][0].get("bundle").is_none());
    }

    #[test]
    fn hostile_trees_are_errors() {
        for b in [
            &b"{"[..],
            b"{\"version\":2,\"view\":\"host\",\"objects\":[]}",
            b"{\"version\":1,\"view\":\"x\",\"objects\":[]}",
            b"{\"version\":1,\"view\":\"host\",\"objects\":[{\"name\":\"a\",\"path\":\"/a\",\"kind\":\"spaceship\"}]}",
        ] {
            assert!(Tree::decode(b).is_err());
        }
    }
}
