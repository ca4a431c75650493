//! Finding a process's cgroup directories, on v1, hybrid and v2 hosts.

use std::path::{Path, PathBuf};

use porta_sys::proc::MountInfo;

/// Where the host's cgroup hierarchies are mounted.
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

/// One cgroup hierarchy of the host, at one of its mounts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hierarchy {
    /// Where it is mounted.
    pub mount_point: PathBuf,
    /// `cgroup` (v1) or `cgroup2`.
    pub fstype: String,
    /// The mount's super-block options (`rw,memory`, `rw,name=systemd`, `rw`).
    pub options: String,
}

/// The host's real cgroup hierarchies, one mount each: for every hierarchy the kernel
/// lists in /proc/self/cgroup, a writable mount of that hierarchy's root (preferably
/// below /sys/fs/cgroup). Other cgroup mounts — read-only ones, mounts of a subgroup,
/// second mounts of a hierarchy, such as another job may leave behind — are not counted.
pub fn hierarchies() -> Vec<Hierarchy> {
    let cgroup = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    hierarchies_from(&cgroup, &mountinfo)
}

/// [`hierarchies`] from the texts of /proc/self/cgroup and /proc/self/mountinfo.
pub fn hierarchies_from(cgroup: &str, mountinfo: &str) -> Vec<Hierarchy> {
    let mounts: Vec<MountInfo> = mountinfo
        .lines()
        .filter_map(|l| MountInfo::parse(l).ok())
        .filter(|m| m.fs_type == "cgroup" || m.fs_type == "cgroup2")
        .collect();
    let mut out: Vec<Hierarchy> = Vec::new();
    for line in cgroup.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(ctrls)) = (parts.next(), parts.next()) else {
            continue;
        };
        let is_it = |m: &MountInfo| {
            let sopt = |o: &str| m.super_options.split(',').any(|s| s == o);
            let writable = m.has_option("rw") && sopt("rw");
            let same = if ctrls.is_empty() {
                m.fs_type == "cgroup2"
            } else {
                m.fs_type == "cgroup" && ctrls.split(',').all(sopt)
            };
            writable && same && m.root == Path::new("/")
        };
        let best = mounts
            .iter()
            .filter(|m| is_it(m))
            .min_by_key(|m| !m.mount_point.starts_with(MNT));
        if let Some(m) = best {
            let h = Hierarchy {
                mount_point: m.mount_point.clone(),
                fstype: m.fs_type.clone(),
                options: m.super_options.clone(),
            };
            if !out.contains(&h) {
                out.push(h);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const CGROUP: &str = "4:memory:/x\n3:pids:/\n1:name=systemd:/\n0::/\n";
    const MOUNTINFO: &str = "\
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
90 20 0:36 / /tmp/stale ro,relatime - cgroup cgroup ro,pids
91 20 0:32 /x /tmp/sub rw,relatime - cgroup cgroup rw,memory
92 20 0:38 / /tmp/again rw,relatime - cgroup2 cgroup2 rw
";

    #[test]
    fn one_writable_root_mount_per_hierarchy() {
        let h: Vec<PathBuf> = hierarchies_from(CGROUP, MOUNTINFO)
            .into_iter()
            .map(|h| h.mount_point)
            .collect();
        assert_eq!(
            h,
            [
                "/sys/fs/cgroup/memory",
                "/sys/fs/cgroup/pids",
                "/sys/fs/cgroup/systemd",
                "/sys/fs/cgroup/unified"
            ]
            .map(PathBuf::from)
        );
    }

    #[test]
    fn a_read_only_hierarchy_is_left_out() {
        let mi = MOUNTINFO.replace("/sys/fs/cgroup/pids rw,", "/sys/fs/cgroup/pids ro,");
        let h = hierarchies_from(CGROUP, &mi);
        assert!(!h.iter().any(|h| h.options.contains("pids")), "{h:?}");
    }
}
