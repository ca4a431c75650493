//! The config of a nested container, written by a process of the parent: hostile. Only
//! what keeps the child inside its parent passes; every refusal names the field.
//!
//! Checked on the raw JSON (an allow-list of fields at every level), so that a field this
//! code does not know (a newer spec's, or a misspelt one) is refused, never ignored.

use serde_json::{Map, Value};

use super::idmap::{self, Extent};
use crate::error::{Error, Result};

/// Namespaces a child always gets new (added when the config leaves one out).
pub const REQUIRED_NAMESPACES: [&str; 7] =
    ["user", "mount", "pid", "ipc", "uts", "cgroup", "network"];
/// Namespaces a child may ask for (always new: no `path`).
const ALLOWED_NAMESPACES: [&str; 8] = [
    "user", "mount", "pid", "ipc", "uts", "cgroup", "network", "time",
];
/// Mount types a child may have besides bind mounts.
const ALLOWED_MOUNT_TYPES: [&str; 7] = [
    "proc", "sysfs", "tmpfs", "devpts", "mqueue", "cgroup", "cgroup2",
];

/// What the parent's state says about the limits a child must stay within.
#[derive(Debug, Clone)]
pub struct Bounds {
    /// The parent's uid map (its ids to host ids).
    pub uid_map: Vec<Extent>,
    /// The parent's gid map.
    pub gid_map: Vec<Extent>,
    /// The parent's `oom_score_adj`: a child may not go below it.
    pub oom_score_adj: i64,
    /// The parent's hard limit of each `RLIMIT_*` (by its OCI name), where known.
    pub rlimits: Vec<(String, u64)>,
}

/// A bind mount of the config whose source must be resolved in the parent's tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindSource {
    /// Its index in `mounts`.
    pub index: usize,
    /// The source as the config gives it (in the parent's view).
    pub source: String,
    /// `rbind`: the parent's mounts beneath the source come along.
    pub recursive: bool,
}

/// The sanitized config and what is left to resolve in the parent's tree.
#[derive(Debug, Clone)]
pub struct Checked {
    /// The config, with namespaces and id maps set; `root.path` and the bind
    /// sources still as given (the caller replaces them with the host-side mounts).
    pub config: Value,
    /// `root.path` as given (relative: to the bundle).
    pub root: String,
    /// The bind mounts.
    pub binds: Vec<BindSource>,
}

fn refuse(field: impl Into<String>, why: impl Into<String>) -> Error {
    Error::field(field, why)
}

/// Refuses every key of `obj` not in `allowed`.
fn only(obj: &Map<String, Value>, at: &str, allowed: &[&str]) -> Result<()> {
    for k in obj.keys() {
        if !allowed.contains(&k.as_str()) {
            return Err(refuse(
                join(at, k),
                "not allowed in a nested container's config",
            ));
        }
    }
    Ok(())
}

fn join(at: &str, k: &str) -> String {
    if at.is_empty() {
        k.to_string()
    } else {
        format!("{at}.{k}")
    }
}

fn object<'a>(v: &'a Value, at: &str) -> Result<&'a Map<String, Value>> {
    v.as_object().ok_or_else(|| refuse(at, "must be an object"))
}

fn is_empty(v: Option<&Value>) -> bool {
    match v {
        None | Some(Value::Null) => true,
        Some(Value::Array(a)) => a.is_empty(),
        Some(Value::Object(o)) => o.is_empty(),
        Some(Value::String(s)) => s.is_empty(),
        _ => false,
    }
}

/// Checks `config` against the allow-list and the parent's `bounds`, and returns it with
/// every namespace new and the id maps composed to host ids (the cgroup is set by
/// `create --nested-in`, beneath the parent's in every hierarchy).
pub fn check(mut config: Value, bounds: &Bounds) -> Result<Checked> {
    let top = object(&config, "(config)")?;
    if !is_empty(top.get("hooks")) {
        return Err(refuse(
            "hooks",
            "a nested container may not have hooks (they would run on the host)",
        ));
    }
    only(
        top,
        "",
        &[
            "ociVersion",
            "process",
            "root",
            "hostname",
            "domainname",
            "mounts",
            "annotations",
            "linux",
            "hooks",
        ],
    )?;
    if let Some(p) = top.get("process") {
        check_process(p, bounds)?;
    }
    let root = match top.get("root") {
        Some(r) => {
            let r = object(r, "root")?;
            only(r, "root", &["path", "readonly"])?;
            r.get("path")
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .ok_or_else(|| refuse("root.path", "missing"))?
                .to_string()
        }
        None => return Err(refuse("root", "missing")),
    };
    let binds = match top.get("mounts") {
        Some(m) => check_mounts(m)?,
        None => Vec::new(),
    };
    if let Some(a) = top.get("annotations") {
        let a = object(a, "annotations")?;
        if let Some((k, _)) = a.iter().find(|(_, v)| !v.is_string()) {
            return Err(refuse(format!("annotations.{k}"), "must be a string"));
        }
    }
    let obj = config
        .as_object_mut()
        .ok_or_else(|| refuse("(config)", "must be an object"))?;
    obj.remove("hooks");
    let linux = obj
        .entry("linux")
        .or_insert_with(|| Value::Object(Map::new()));
    check_linux(linux, bounds)?;
    Ok(Checked {
        config,
        root,
        binds,
    })
}

fn check_process(p: &Value, bounds: &Bounds) -> Result<()> {
    let p = object(p, "process")?;
    if matches!(
        p.get("apparmorProfile").or(p.get("selinuxLabel")),
        Some(v) if !is_empty(Some(v))
    ) {
        let f = if p.contains_key("apparmorProfile") {
            "process.apparmorProfile"
        } else {
            "process.selinuxLabel"
        };
        return Err(refuse(
            f,
            "a nested container runs under its parent's security label",
        ));
    }
    only(
        p,
        "process",
        &[
            "terminal",
            "consoleSize",
            "user",
            "args",
            "commandLine",
            "env",
            "cwd",
            "capabilities",
            "rlimits",
            "noNewPrivileges",
            "oomScoreAdj",
            "execCPUAffinity",
            "apparmorProfile",
            "selinuxLabel",
        ],
    )?;
    if p.get("terminal").and_then(Value::as_bool) == Some(true) {
        return Err(refuse(
            "process.terminal",
            "a nested container has no console socket: run it without a terminal",
        ));
    }
    if let Some(u) = p.get("user") {
        only(
            object(u, "process.user")?,
            "process.user",
            &["uid", "gid", "umask", "additionalGids"],
        )?;
    }
    if let Some(adj) = p.get("oomScoreAdj") {
        let adj = adj
            .as_i64()
            .ok_or_else(|| refuse("process.oomScoreAdj", "must be an integer"))?;
        if adj < bounds.oom_score_adj {
            return Err(refuse(
                "process.oomScoreAdj",
                format!(
                    "{adj} is below the parent's {} (a child cannot be less likely to be \
                     killed than its parent)",
                    bounds.oom_score_adj
                ),
            ));
        }
    }
    if let Some(r) = p.get("rlimits") {
        let r = r
            .as_array()
            .ok_or_else(|| refuse("process.rlimits", "must be an array"))?;
        for (i, l) in r.iter().enumerate() {
            let at = format!("process.rlimits[{i}]");
            let l = object(l, &at)?;
            only(l, &at, &["type", "hard", "soft"])?;
            let ty = l
                .get("type")
                .and_then(Value::as_str)
                .ok_or_else(|| refuse(format!("{at}.type"), "missing"))?;
            let hard = l
                .get("hard")
                .and_then(Value::as_u64)
                .ok_or_else(|| refuse(format!("{at}.hard"), "must be a number"))?;
            let Some((_, max)) = bounds.rlimits.iter().find(|(n, _)| n == ty) else {
                return Err(refuse(
                    format!("{at}.type"),
                    format!("unknown limit {ty:?}"),
                ));
            };
            if hard > *max {
                return Err(refuse(
                    format!("{at}.hard"),
                    format!("{ty} {hard} is above the parent's hard limit {max}"),
                ));
            }
        }
    }
    Ok(())
}

fn check_mounts(m: &Value) -> Result<Vec<BindSource>> {
    let m = m
        .as_array()
        .ok_or_else(|| refuse("mounts", "must be an array"))?;
    let mut binds = Vec::new();
    for (i, mnt) in m.iter().enumerate() {
        let at = format!("mounts[{i}]");
        let o = object(mnt, &at)?;
        if !is_empty(o.get("uidMappings")) || !is_empty(o.get("gidMappings")) {
            return Err(refuse(
                format!("{at}.uidMappings"),
                "a nested container's mounts cannot be idmapped",
            ));
        }
        only(o, &at, &["destination", "type", "source", "options"])?;
        let opts: Vec<&str> = match o.get("options") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(a)) => a
                .iter()
                .map(|v| {
                    v.as_str()
                        .ok_or_else(|| refuse(format!("{at}.options"), "must be strings"))
                })
                .collect::<Result<_>>()?,
            Some(_) => return Err(refuse(format!("{at}.options"), "must be an array")),
        };
        if let Some(o) = opts
            .iter()
            .find(|o| o.starts_with("idmap") || o.starts_with("ridmap"))
        {
            return Err(refuse(
                format!("{at}.options"),
                format!("{o}: a nested container's mounts cannot be idmapped"),
            ));
        }
        let bind = opts.iter().any(|o| *o == "bind" || *o == "rbind");
        let ty = o.get("type").and_then(Value::as_str).unwrap_or("");
        if bind || ty == "bind" {
            if !matches!(ty, "" | "bind" | "none") {
                return Err(refuse(
                    format!("{at}.type"),
                    format!("{ty:?} with a bind option: only a bind mount may be"),
                ));
            }
            let source = o
                .get("source")
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .ok_or_else(|| refuse(format!("{at}.source"), "missing"))?;
            binds.push(BindSource {
                index: i,
                source: source.to_string(),
                recursive: opts.contains(&"rbind"),
            });
        } else if !ALLOWED_MOUNT_TYPES.contains(&ty) {
            return Err(refuse(
                format!("{at}.type"),
                format!(
                    "{ty:?}: a nested container may mount only {} and bind mounts of its \
                     parent's tree",
                    ALLOWED_MOUNT_TYPES.join(", ")
                ),
            ));
        }
    }
    Ok(binds)
}

fn check_linux(linux: &mut Value, bounds: &Bounds) -> Result<()> {
    let l = object(linux, "linux")?;
    for (f, why) in [
        ("sysctl", "sysctls are refused in a nested container"),
        (
            "devices",
            "a nested container gets the default devices only",
        ),
        (
            "cgroupsPath",
            "a nested container's cgroup is set by its parent (<parent>/children/<id>)",
        ),
        (
            "mountLabel",
            "a nested container runs under its parent's security label",
        ),
        (
            "intelRdt",
            "the host's resctrl groups are not a nested container's",
        ),
        (
            "netDevices",
            "the host's network devices are not a nested container's",
        ),
    ] {
        if !is_empty(l.get(f)) {
            return Err(refuse(format!("linux.{f}"), why));
        }
    }
    only(
        l,
        "linux",
        &[
            "namespaces",
            "uidMappings",
            "gidMappings",
            "timeOffsets",
            "resources",
            "cgroupsPath",
            "seccomp",
            "rootfsPropagation",
            "maskedPaths",
            "readonlyPaths",
            "personality",
            "sysctl",
            "devices",
            "mountLabel",
            "intelRdt",
            "netDevices",
        ],
    )?;
    if let Some(s) = l.get("seccomp") {
        let s = object(s, "linux.seccomp")?;
        for f in ["listenerPath", "listenerMetadata"] {
            if !is_empty(s.get(f)) {
                return Err(refuse(
                    format!("linux.seccomp.{f}"),
                    "a nested container's seccomp notifications cannot go to a host socket",
                ));
            }
        }
        only(
            s,
            "linux.seccomp",
            &[
                "defaultAction",
                "defaultErrnoRet",
                "architectures",
                "flags",
                "syscalls",
                "listenerPath",
                "listenerMetadata",
            ],
        )?;
    }
    if let Some(r) = l.get("resources") {
        check_resources(r)?;
    }
    let namespaces = check_namespaces(l.get("namespaces"))?;
    let uid = child_map(l.get("uidMappings"), "linux.uidMappings", &bounds.uid_map)?;
    let gid = child_map(l.get("gidMappings"), "linux.gidMappings", &bounds.gid_map)?;
    let l = linux
        .as_object_mut()
        .ok_or_else(|| refuse("linux", "must be an object"))?;
    l.insert("namespaces".into(), namespaces);
    l.insert("uidMappings".into(), idmap::to_json(&uid));
    l.insert("gidMappings".into(), idmap::to_json(&gid));
    Ok(())
}

fn check_resources(r: &Value) -> Result<()> {
    let o = object(r, "linux.resources")?;
    if !is_empty(o.get("unified")) {
        return Err(refuse(
            "linux.resources.unified",
            "its keys name files of the cgroup: refused in a nested container",
        ));
    }
    only(
        o,
        "linux.resources",
        &[
            "memory",
            "cpu",
            "pids",
            "blockIO",
            "hugepageLimits",
            "devices",
            "network",
            "rdma",
            "unified",
        ],
    )?;
    if let Some(d) = o.get("devices") {
        let d = d
            .as_array()
            .ok_or_else(|| refuse("linux.resources.devices", "must be an array"))?;
        for (i, rule) in d.iter().enumerate() {
            if rule.get("allow").and_then(Value::as_bool) != Some(false) {
                return Err(refuse(
                    format!("linux.resources.devices[{i}]"),
                    "a nested container may only deny devices (it gets the default ones)",
                ));
            }
        }
    }
    Ok(())
}

fn check_namespaces(ns: Option<&Value>) -> Result<Value> {
    let mut out: Vec<Value> = Vec::new();
    let mut seen: Vec<String> = Vec::new();
    if let Some(ns) = ns.filter(|v| !v.is_null()) {
        let ns = ns
            .as_array()
            .ok_or_else(|| refuse("linux.namespaces", "must be an array"))?;
        for (i, n) in ns.iter().enumerate() {
            let at = format!("linux.namespaces[{i}]");
            let o = object(n, &at)?;
            if !is_empty(o.get("path")) {
                return Err(refuse(
                    format!("{at}.path"),
                    "a nested container cannot join a namespace: every namespace is new",
                ));
            }
            only(o, &at, &["type", "path"])?;
            let ty = o
                .get("type")
                .and_then(Value::as_str)
                .ok_or_else(|| refuse(format!("{at}.type"), "missing"))?;
            if !ALLOWED_NAMESPACES.contains(&ty) {
                return Err(refuse(
                    format!("{at}.type"),
                    format!("{ty:?} is not a namespace a nested container may have"),
                ));
            }
            if seen.iter().any(|s| s == ty) {
                return Err(refuse(format!("{at}.type"), format!("{ty} given twice")));
            }
            seen.push(ty.to_string());
            out.push(serde_json::json!({ "type": ty }));
        }
    }
    for ty in REQUIRED_NAMESPACES {
        if !seen.iter().any(|s| s == ty) {
            out.push(serde_json::json!({ "type": ty }));
        }
    }
    Ok(Value::Array(out))
}

/// The child's map in host ids: the config's (in the parent's id space) composed with
/// the parent's, or the default.
fn child_map(v: Option<&Value>, field: &str, parent: &[Extent]) -> Result<Vec<Extent>> {
    let given = match v {
        None | Some(Value::Null) => None,
        Some(Value::Array(a)) if a.is_empty() => None,
        Some(Value::Array(a)) => {
            let mut m = Vec::new();
            for (i, e) in a.iter().enumerate() {
                let at = format!("{field}[{i}]");
                let o = object(e, &at)?;
                only(o, &at, &["containerID", "hostID", "size"])?;
                let n = |k: &str| {
                    o.get(k)
                        .and_then(Value::as_u64)
                        .filter(|n| *n <= u64::from(u32::MAX))
                        .ok_or_else(|| refuse(format!("{at}.{k}"), "must be a 32-bit number"))
                };
                m.push(Extent {
                    inside: n("containerID")?,
                    outside: n("hostID")?,
                    count: n("size")?,
                });
            }
            Some(m)
        }
        Some(_) => return Err(refuse(field, "must be an array")),
    };
    let child = given.unwrap_or_else(|| idmap::default_child(parent));
    if child.is_empty() {
        return Err(refuse(field, "the parent maps no id a child could have"));
    }
    idmap::compose(&child, parent).map_err(|why| {
        refuse(
            field,
            format!("{why} (a nested container's hostIDs are ids of its parent)"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn bounds() -> Bounds {
        Bounds {
            uid_map: vec![Extent {
                inside: 0,
                outside: 100_000,
                count: 65536,
            }],
            gid_map: vec![Extent {
                inside: 0,
                outside: 100_000,
                count: 65536,
            }],
            oom_score_adj: 0,
            rlimits: vec![("RLIMIT_NOFILE".into(), 4096)],
        }
    }

    fn base() -> Value {
        json!({
            "ociVersion": "1.0.2",
            "process": {"args": ["sh"], "cwd": "/", "user": {"uid": 0, "gid": 0},
                        "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}]},
            "root": {"path": "rootfs"},
            "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"},
                       {"destination": "/data", "type": "bind", "source": "/srv/data", "options": ["rbind", "ro"]}],
            "linux": {"namespaces": [{"type": "pid"}, {"type": "mount"}]}
        })
    }

    fn refused(mut f: impl FnMut(&mut Value), field: &str) {
        let mut c = base();
        f(&mut c);
        let e = check(c, &bounds()).unwrap_err().to_string();
        assert!(e.contains(field), "{field} not named in: {e}");
    }

    #[test]
    fn a_plain_config_gets_every_namespace_and_the_default_maps() {
        let c = check(base(), &bounds()).unwrap();
        let l = &c.config["linux"];
        let types: Vec<&str> = l["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["type"].as_str().unwrap())
            .collect();
        for t in REQUIRED_NAMESPACES {
            assert!(types.contains(&t), "{t} missing: {types:?}");
        }
        assert_eq!(
            l["uidMappings"],
            json!([{"containerID": 0, "hostID": 100_000, "size": 65536}])
        );
        assert!(l.get("cgroupsPath").is_none());
        assert_eq!(c.root, "rootfs");
        assert_eq!(
            c.binds,
            vec![BindSource {
                index: 1,
                source: "/srv/data".into(),
                recursive: true
            }]
        );
    }

    #[test]
    fn given_maps_are_composed_and_refused_outside_the_parent() {
        let mut c = base();
        c["linux"]["uidMappings"] = json!([{"containerID": 0, "hostID": 1000, "size": 1000}]);
        let out = check(c, &bounds()).unwrap();
        assert_eq!(
            out.config["linux"]["uidMappings"],
            json!([{"containerID": 0, "hostID": 101_000, "size": 1000}])
        );
        refused(
            |c| {
                c["linux"]["uidMappings"] =
                    json!([{"containerID": 0, "hostID": 65000, "size": 1000}])
            },
            "linux.uidMappings",
        );
        refused(
            |c| c["linux"]["gidMappings"] = json!([{"containerID": 0, "hostID": 0, "size": 70000}]),
            "linux.gidMappings",
        );
    }

    #[test]
    fn what_would_leave_the_parent_is_refused_by_name() {
        refused(
            |c| c["hooks"] = json!({"prestart": [{"path": "/bin/true"}]}),
            "hooks",
        );
        refused(
            |c| c["linux"]["namespaces"] = json!([{"type": "network", "path": "/proc/1/ns/net"}]),
            "linux.namespaces[0].path",
        );
        refused(
            |c| c["linux"]["namespaces"] = json!([{"type": "bogus"}]),
            "linux.namespaces[0].type",
        );
        refused(
            |c| c["linux"]["sysctl"] = json!({"kernel.x": "1"}),
            "linux.sysctl",
        );
        refused(
            |c| {
                c["linux"]["devices"] =
                    json!([{"path": "/dev/sda", "type": "b", "major": 8, "minor": 0}])
            },
            "linux.devices",
        );
        refused(
            |c| c["linux"]["cgroupsPath"] = json!("/"),
            "linux.cgroupsPath",
        );
        refused(
            |c| c["linux"]["resources"] = json!({"devices": [{"allow": true, "access": "rwm"}]}),
            "linux.resources.devices[0]",
        );
        refused(
            |c| c["linux"]["resources"] = json!({"unified": {"cgroup.procs": "1"}}),
            "linux.resources.unified",
        );
        refused(
            |c| {
                c["linux"]["seccomp"] =
                    json!({"defaultAction": "SCMP_ACT_ALLOW", "listenerPath": "/run/x"})
            },
            "linux.seccomp.listenerPath",
        );
        refused(|c| c["linux"]["frobnicate"] = json!(1), "linux.frobnicate");
        refused(|c| c["solaris"] = json!({}), "solaris");
        refused(
            |c| c["mounts"][1]["uidMappings"] = json!([{"containerID": 0, "hostID": 0, "size": 1}]),
            "mounts[1].uidMappings",
        );
        refused(
            |c| c["mounts"][1]["options"] = json!(["bind", "idmap"]),
            "mounts[1].options",
        );
        refused(
            |c| {
                c["mounts"][0] = json!({"destination": "/x", "type": "ext4", "source": "/dev/sda1"})
            },
            "mounts[0].type",
        );
        refused(
            |c| c["process"]["terminal"] = json!(true),
            "process.terminal",
        );
        refused(
            |c| c["process"]["apparmorProfile"] = json!("unconfined"),
            "process.apparmorProfile",
        );
        refused(
            |c| c["process"]["oomScoreAdj"] = json!(-1000),
            "process.oomScoreAdj",
        );
        refused(
            |c| c["process"]["rlimits"][0]["hard"] = json!(1_000_000),
            "process.rlimits[0].hard",
        );
        refused(
            |c| c["process"]["scheduler"] = json!({"policy": "SCHED_FIFO"}),
            "process.scheduler",
        );
        refused(|c| c["root"] = json!({"path": ""}), "root.path");
    }
}
