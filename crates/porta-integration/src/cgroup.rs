//! Finding a process's cgroup directories, on v1, hybrid and v2 hosts.

use std::path::{Path, PathBuf};

pub const MNT: &str = "/sys/fs/cgroup";

/// True when /sys/fs/cgroup is a pure cgroup v2 mount.
pub fn is_unified() -> bool {
    Path::new(MNT).join("cgroup.controllers").exists()
}

/// The directory of `pid`'s cgroup that holds `controller`'s files: the v1 hierarchy
/// mounted at /sys/fs/cgroup/<controller> when there is one, else the v2 one.
pub fn dir_of(pid: i32, controller: &str) -> Option<PathBuf> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let mut v2 = None;
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, ctrls, path) = (parts.next()?, parts.next()?, parts.next()?);
        let path = path.trim_start_matches('/');
        if ctrls.is_empty() {
            v2 = Some(path.to_string());
            continue;
        }
        if ctrls.split(',').any(|c| c == controller) && !is_unified() {
            // v1: the hierarchy may be mounted under a joined name (e.g. cpu,cpuacct)
            for cand in [controller.to_string(), ctrls.to_string()] {
                let d = Path::new(MNT).join(&cand);
                if d.is_dir() {
                    return Some(d.join(path));
                }
            }
        }
    }
    let v2 = v2?;
    if is_unified() {
        Some(Path::new(MNT).join(v2))
    } else {
        let u = Path::new(MNT).join("unified");
        u.is_dir().then(|| u.join(v2))
    }
}

/// Reads a cgroup file of `pid` for `controller`, trimmed.
pub fn read(pid: i32, controller: &str, file: &str) -> Option<String> {
    let d = dir_of(pid, controller)?;
    std::fs::read_to_string(d.join(file))
        .ok()
        .map(|s| s.trim().to_string())
}

/// Removes the cgroup directory `d` and every group below it, deepest first (only empty
/// groups can go; what still holds a process stays).
pub fn remove_tree(d: &Path) {
    if let Ok(rd) = std::fs::read_dir(d) {
        for e in rd.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                remove_tree(&e.path());
            }
        }
    }
    let _ = std::fs::remove_dir(d);
}
