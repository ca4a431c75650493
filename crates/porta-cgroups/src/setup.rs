//! Which cgroup hierarchies this host has, where each is mounted, and where the calling
//! process sits in each.

use std::path::{Path, PathBuf};

use porta_sys::proc::MountInfo;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::fsutil;

/// The overall layout of the host's cgroups.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum CgroupMode {
    /// cgroup v1 only.
    Legacy,
    /// cgroup v1 controllers plus a cgroup2 hierarchy (which may hold some controllers, as
    /// hugetlb on the development machines).
    Hybrid,
    /// cgroup v2 only.
    Unified,
}

/// cgroup v1 or v2.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum CgroupVersion {
    /// A v1 hierarchy (one or more controllers, or a named hierarchy such as `name=systemd`).
    V1,
    /// The v2 (unified) hierarchy.
    V2,
}

/// One mounted cgroup hierarchy.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Hierarchy {
    /// v1 or v2.
    pub version: CgroupVersion,
    /// Where it is mounted, e.g. `/sys/fs/cgroup/memory`.
    pub mount_point: PathBuf,
    /// Which cgroup of the hierarchy the mount shows at `mount_point` (`/` on a host; a
    /// sub-group inside a container).
    pub mount_root: PathBuf,
    /// The controllers: for v1 from the mount options (`name=systemd` for named
    /// hierarchies), for v2 from the root's `cgroup.controllers`.
    pub controllers: Vec<String>,
    /// The calling process's cgroup in this hierarchy (from /proc/self/cgroup).
    pub own_path: PathBuf,
}

impl Hierarchy {
    /// Whether this hierarchy carries `controller`.
    pub fn has(&self, controller: &str) -> bool {
        self.controllers.iter().any(|c| c == controller)
    }

    /// The directory of cgroup `cgroup_path` (a path from the hierarchy's root) in this mount.
    pub fn dir_of(&self, cgroup_path: &Path) -> PathBuf {
        let rel = cgroup_path
            .strip_prefix(&self.mount_root)
            .unwrap_or(cgroup_path);
        let rel = rel.strip_prefix("/").unwrap_or(rel);
        self.mount_point.join(rel)
    }
}

/// The host's cgroup layout, as [`detect`] finds it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct CgroupSetup {
    /// v1, v2 or hybrid.
    pub mode: CgroupMode,
    /// Every hierarchy Porta uses: v1 hierarchies first, then the v2 one (if any).
    pub hierarchies: Vec<Hierarchy>,
}

/// cgroup v1 controller names (anything else in a v1 mount's options is an option, except
/// `name=...`).
const V1_CONTROLLERS: &[&str] = &[
    "cpu",
    "cpuacct",
    "cpuset",
    "memory",
    "devices",
    "freezer",
    "net_cls",
    "net_prio",
    "blkio",
    "perf_event",
    "hugetlb",
    "pids",
    "rdma",
    "misc",
    "debug",
];

/// Finds the host's cgroup hierarchies from /proc/self/mountinfo and /proc/self/cgroup.
pub fn detect() -> Result<CgroupSetup> {
    let mountinfo = fsutil::read(Path::new("/proc/self/mountinfo"))?;
    let own = fsutil::read(Path::new("/proc/self/cgroup"))?;
    CgroupSetup::from_proc(&mountinfo, &own, |p| {
        fsutil::read_opt(&p.join("cgroup.controllers"))
            .ok()
            .flatten()
            .map(|s| s.split_whitespace().map(str::to_string).collect())
            .unwrap_or_default()
    })
}

impl CgroupSetup {
    /// Builds the layout from the text of /proc/self/mountinfo and /proc/self/cgroup;
    /// `v2_controllers` reads the controllers of a cgroup2 mount point.
    pub fn from_proc(
        mountinfo: &str,
        proc_cgroup: &str,
        v2_controllers: impl Fn(&Path) -> Vec<String>,
    ) -> Result<Self> {
        let mut v1: Vec<Hierarchy> = Vec::new();
        let mut v2: Vec<Hierarchy> = Vec::new();
        // A line the kernel would not write (tests feed text) is passed over.
        for m in mountinfo.lines().filter_map(|l| MountInfo::parse(l).ok()) {
            let (root, mount_point) = (m.root, m.mount_point);
            match m.fs_type.as_str() {
                "cgroup" => {
                    let mut controllers: Vec<String> = m
                        .super_options
                        .split(',')
                        .filter(|o| V1_CONTROLLERS.contains(o) || o.starts_with("name="))
                        .map(str::to_string)
                        .collect();
                    controllers.sort();
                    if controllers.is_empty() || v1.iter().any(|h| h.controllers == controllers) {
                        continue;
                    }
                    let own_path = own_path_v1(proc_cgroup, &controllers);
                    v1.push(Hierarchy {
                        version: CgroupVersion::V1,
                        mount_point,
                        mount_root: root,
                        controllers,
                        own_path,
                    });
                }
                "cgroup2" => {
                    let controllers = v2_controllers(&mount_point);
                    let own_path = own_path_v2(proc_cgroup);
                    v2.push(Hierarchy {
                        version: CgroupVersion::V2,
                        mount_point,
                        mount_root: root,
                        controllers,
                        own_path,
                    });
                }
                _ => {}
            }
        }
        // Of several cgroup2 mounts, prefer the usual places.
        let unified = v2
            .iter()
            .position(|h| h.mount_point == Path::new("/sys/fs/cgroup"))
            .or_else(|| {
                v2.iter()
                    .position(|h| h.mount_point == Path::new("/sys/fs/cgroup/unified"))
            })
            .or(if v2.is_empty() { None } else { Some(0) })
            .map(|i| v2.swap_remove(i));

        let v1_has_controllers = v1
            .iter()
            .any(|h| h.controllers.iter().any(|c| !c.starts_with("name=")));
        let mode = match (v1_has_controllers, &unified) {
            (true, Some(_)) => CgroupMode::Hybrid,
            (true, None) => CgroupMode::Legacy,
            (false, Some(_)) => CgroupMode::Unified,
            (false, None) => return Err(Error::NoCgroups),
        };
        let mut hierarchies = if mode == CgroupMode::Unified {
            Vec::new()
        } else {
            v1
        };
        hierarchies.extend(unified);
        Ok(CgroupSetup { mode, hierarchies })
    }

    /// A cgroup v2-only layout whose hierarchy is the directory `root` (a real cgroup2 mount,
    /// or a directory laid out like one for tests). The caller is taken to sit in `/`.
    pub fn unified_at(root: &Path) -> Result<Self> {
        let controllers = fsutil::read(&root.join("cgroup.controllers"))?
            .split_whitespace()
            .map(str::to_string)
            .collect();
        Ok(CgroupSetup {
            mode: CgroupMode::Unified,
            hierarchies: vec![Hierarchy {
                version: CgroupVersion::V2,
                mount_point: root.to_path_buf(),
                mount_root: PathBuf::from("/"),
                controllers,
                own_path: PathBuf::from("/"),
            }],
        })
    }

    /// The hierarchy that carries `controller` (a v1 one first, as runc does on hybrid hosts).
    pub fn hierarchy_for(&self, controller: &str) -> Option<&Hierarchy> {
        self.hierarchies.iter().find(|h| h.has(controller))
    }

    /// The cgroup2 hierarchy, if mounted.
    pub fn unified(&self) -> Option<&Hierarchy> {
        self.hierarchies
            .iter()
            .find(|h| h.version == CgroupVersion::V2)
    }
}

fn own_path_v1(proc_cgroup: &str, controllers: &[String]) -> PathBuf {
    for line in proc_cgroup.lines() {
        let mut it = line.splitn(3, ':');
        let (Some(_), Some(ctrls), Some(path)) = (it.next(), it.next(), it.next()) else {
            continue;
        };
        let mut c: Vec<&str> = ctrls.split(',').filter(|s| !s.is_empty()).collect();
        c.sort();
        if !c.is_empty() && c == controllers.iter().map(String::as_str).collect::<Vec<_>>() {
            return PathBuf::from(path);
        }
    }
    PathBuf::from("/")
}

fn own_path_v2(proc_cgroup: &str) -> PathBuf {
    for line in proc_cgroup.lines() {
        if let Some(path) = line.strip_prefix("0::") {
            return PathBuf::from(path);
        }
    }
    PathBuf::from("/")
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID_MOUNTINFO: &str = "\
30 1 0:27 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
31 30 0:28 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
32 30 0:29 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
33 30 0:30 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
34 30 0:31 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
35 30 0:32 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
36 30 0:30 / /mnt/memory\\040again rw,relatime - cgroup cgroup rw,memory
";
    const HYBRID_CGROUP: &str = "\
4:name=systemd:/
3:memory:/process_api/abc
2:cpuacct:/
1:cpu:/
0::/
";

    #[test]
    fn detects_hybrid_with_separate_cpu_and_cpuacct() {
        let s = CgroupSetup::from_proc(HYBRID_MOUNTINFO, HYBRID_CGROUP, |_| {
            vec!["hugetlb".to_string()]
        })
        .unwrap();
        assert_eq!(s.mode, CgroupMode::Hybrid);
        let names: Vec<String> = s
            .hierarchies
            .iter()
            .map(|h| h.controllers.join(","))
            .collect();
        assert_eq!(
            names,
            ["cpu", "cpuacct", "memory", "name=systemd", "hugetlb"]
        );
        assert_eq!(
            s.hierarchy_for("cpuacct").unwrap().mount_point,
            Path::new("/sys/fs/cgroup/cpuacct")
        );
        assert_eq!(
            s.hierarchy_for("memory").unwrap().own_path,
            Path::new("/process_api/abc")
        );
        assert_eq!(
            s.hierarchy_for("hugetlb").unwrap().version,
            CgroupVersion::V2
        );
    }

    #[test]
    fn detects_unified_and_legacy() {
        let mi = "25 1 0:22 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate\n";
        let s = CgroupSetup::from_proc(mi, "0::/user.slice/x.scope\n", |_| {
            vec!["cpu".into(), "memory".into()]
        })
        .unwrap();
        assert_eq!(s.mode, CgroupMode::Unified);
        assert_eq!(s.hierarchies.len(), 1);
        assert_eq!(s.hierarchies[0].own_path, Path::new("/user.slice/x.scope"));

        let mi = "31 30 0:28 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n";
        let s = CgroupSetup::from_proc(mi, "1:cpuacct,cpu:/a\n", |_| vec![]).unwrap();
        assert_eq!(s.mode, CgroupMode::Legacy);
        assert_eq!(s.hierarchies[0].controllers, ["cpu", "cpuacct"]);
        assert_eq!(s.hierarchies[0].own_path, Path::new("/a"));

        assert!(matches!(
            CgroupSetup::from_proc("", "", |_| vec![]),
            Err(Error::NoCgroups)
        ));
    }

    #[test]
    fn mount_root_is_stripped() {
        let h = Hierarchy {
            version: CgroupVersion::V1,
            mount_point: "/sys/fs/cgroup/memory".into(),
            mount_root: "/docker/abc".into(),
            controllers: vec!["memory".into()],
            own_path: "/docker/abc".into(),
        };
        assert_eq!(
            h.dir_of(Path::new("/docker/abc/ctr")),
            Path::new("/sys/fs/cgroup/memory/ctr")
        );
        assert_eq!(
            h.dir_of(Path::new("/other")),
            Path::new("/sys/fs/cgroup/memory/other")
        );
    }

    #[test]
    fn detects_this_host() {
        // Whatever the host is, detection must work and find at least one hierarchy.
        let s = detect().unwrap();
        assert!(!s.hierarchies.is_empty());
    }
}
