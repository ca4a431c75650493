//! Finding what containers left behind: mounts in any process's mount table, cgroup
//! directories, processes and state directories.

use std::fs;
use std::path::{Path, PathBuf};

/// Mount-table lines (from every /proc/<pid>/mountinfo) for which `bad` is true,
/// each prefixed with the pid whose table holds it. Each mount namespace is read once.
pub fn mounts_matching(bad: &dyn Fn(&str) -> bool) -> Vec<String> {
    let mut seen_ns = std::collections::HashSet::new();
    let mut found = Vec::new();
    let Ok(rd) = fs::read_dir("/proc") else {
        return found;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let ns = fs::read_link(e.path().join("ns/mnt")).ok();
        if let Some(ns) = &ns {
            if !seen_ns.insert(ns.clone()) {
                continue;
            }
        }
        let Ok(text) = fs::read_to_string(e.path().join("mountinfo")) else {
            continue;
        };
        for l in text.lines() {
            if bad(l) {
                found.push(format!("pid {name}: {l}"));
            }
        }
    }
    found
}

/// True for a mount-table line that mentions the tests' state or bundle paths.
pub fn is_test_mount(line: &str) -> bool {
    line.contains(crate::ROOT)
        || line.contains("/run/porta/")
        || line.contains(" /run/porta ")
        || line.contains(crate::BUNDLES)
        || line.contains("pit-long-root")
        || line.contains("/run/porta-nested/")
}

/// Every cgroup directory (any hierarchy under /sys/fs/cgroup) whose name satisfies `bad`.
pub fn cgroups_matching(bad: &dyn Fn(&str) -> bool) -> Vec<PathBuf> {
    let mut found = Vec::new();
    fn walk(d: &Path, bad: &dyn Fn(&str) -> bool, found: &mut Vec<PathBuf>, depth: usize) {
        if depth > 12 {
            return;
        }
        let Ok(rd) = fs::read_dir(d) else { return };
        for e in rd.flatten() {
            let Ok(ty) = e.file_type() else { continue };
            if !ty.is_dir() {
                continue;
            }
            let n = e.file_name().to_string_lossy().into_owned();
            if bad(&n) {
                found.push(e.path());
            }
            walk(&e.path(), bad, found, depth + 1);
        }
    }
    walk(Path::new(crate::cgroup::MNT), bad, &mut found, 0);
    found
}

/// True for a cgroup directory name made after a test container id, or after the
/// containerd namespace of the tests.
pub fn is_test_cgroup(name: &str) -> bool {
    name.contains(crate::ID_PREFIX) || name == crate::containerd::NAMESPACE
}

/// Processes that belong to test containers: root inside a test bundle, a cgroup named
/// after a test id, or a command line naming a test id. Returns "pid: why".
pub fn processes_matching(bad: &dyn Fn(&str) -> bool) -> Vec<String> {
    let me = std::process::id().to_string();
    let mut found = Vec::new();
    let Ok(rd) = fs::read_dir("/proc") else {
        return found;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.bytes().all(|b| b.is_ascii_digit()) || name == me {
            continue;
        }
        let p = e.path();
        // a zombie is dead already (its parent, maybe the host's init, reaps it later)
        if !crate::pid_alive(name.parse().unwrap_or(0)) {
            continue;
        }
        let root = fs::read_link(p.join("root"))
            .map(|r| r.display().to_string())
            .unwrap_or_default();
        let cg = fs::read_to_string(p.join("cgroup")).unwrap_or_default();
        let cmdline = fs::read(p.join("cmdline"))
            .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
            .unwrap_or_default();
        let comm = fs::read_to_string(p.join("comm")).unwrap_or_default();
        for (what, s) in [("root", &root), ("cgroup", &cg), ("cmdline", &cmdline)] {
            if bad(s) {
                found.push(format!("pid {name} ({}) {what}: {}", comm.trim(), s.trim()));
                break;
            }
        }
    }
    found
}

/// True for a process attribute (root path, cgroup file, command line) of a test container.
pub fn is_test_process(s: &str) -> bool {
    s.contains(crate::BUNDLES)
        || s.contains(&format!("/{}", crate::ID_PREFIX))
        || s.contains(&format!(" {}", crate::ID_PREFIX))
}

/// Entries left in a state directory (missing directory = empty).
pub fn state_entries(dir: &str) -> Vec<String> {
    fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path().display().to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// Everything the tests left, for one set of container ids (or for all when `ids` is
/// empty): a list of human-readable findings, empty when clean.
pub fn check(ids: &[String], bundles: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    let id_hit = |s: &str| ids.iter().any(|id| s.contains(id.as_str()));
    let b_hit = |s: &str| bundles.iter().any(|b| s.contains(b.as_str()));
    if ids.is_empty() {
        out.extend(
            mounts_matching(&is_test_mount)
                .into_iter()
                .map(|m| format!("mount: {m}")),
        );
        out.extend(
            cgroups_matching(&is_test_cgroup)
                .into_iter()
                .map(|c| format!("cgroup: {}", c.display())),
        );
        out.extend(
            processes_matching(&is_test_process)
                .into_iter()
                .map(|p| format!("process: {p}")),
        );
        // Nested children's host-only roots (porta_runtime::nested::CHILD_ROOTS).
        for d in [crate::ROOT, "/run/porta", "/run/porta-nested"] {
            out.extend(state_entries(d).into_iter().map(|e| format!("state: {e}")));
        }
    } else {
        out.extend(
            mounts_matching(&|l| id_hit(l) || b_hit(l))
                .into_iter()
                .map(|m| format!("mount: {m}")),
        );
        out.extend(
            cgroups_matching(&|n| id_hit(n))
                .into_iter()
                .map(|c| format!("cgroup: {}", c.display())),
        );
        out.extend(
            processes_matching(&|s| id_hit(s) || b_hit(s))
                .into_iter()
                .map(|p| format!("process: {p}")),
        );
        for id in ids {
            let p = Path::new(crate::ROOT).join(id);
            if p.exists() {
                out.push(format!("state: {}", p.display()));
            }
        }
    }
    out
}

/// What a test's private Docker could leave: its daemons (`dockerd`, the containerd it
/// starts, the shims of its containers — all name the tests' directory on their command
/// line), its cgroup parent (`pit-docker-<pid>`, in every hierarchy) and, with it, the
/// groups of its containers, and the network-namespace and root mounts below its exec and
/// data roots (in the tests' directory). One line per finding.
pub fn docker_leftovers() -> Vec<String> {
    let mut out = Vec::new();
    let daemons = ["dockerd", "containerd", "containerd-shim", "docker-proxy"];
    out.extend(
        processes_matching(&|s| {
            s.contains(crate::BUNDLES)
                && s.split_whitespace()
                    .next()
                    .and_then(|p| p.rsplit('/').next())
                    .is_some_and(|p| daemons.iter().any(|d| p.starts_with(d)))
        })
        .into_iter()
        .map(|p| format!("docker daemon: {p}")),
    );
    out.extend(
        cgroups_matching(&|n| n.starts_with("pit-docker-"))
            .into_iter()
            .map(|c| format!("docker cgroup parent: {}", c.display())),
    );
    out.extend(
        mounts_matching(&|l| {
            l.contains(crate::BUNDLES) && (l.contains(" - nsfs ") || l.contains("/docker-"))
        })
        .into_iter()
        .map(|m| format!("docker mount: {m}")),
    );
    out
}
