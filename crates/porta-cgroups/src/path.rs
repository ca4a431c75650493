//! `linux.cgroupsPath` in the forms runc accepts, resolved the way runc resolves it.
//!
//! * cgroupfs driver (the default):
//!   * an absolute path (`/porta/abc`) names the same group in every hierarchy, taken from
//!     the hierarchy's root;
//!   * a relative path (`porta/abc`) is taken from the caller's own cgroup in each v1
//!     hierarchy (and in the cgroup2 hierarchy of a hybrid host), and from the *parent* of
//!     the caller's cgroup on a cgroup v2-only host (runc does the same: the caller's own
//!     group usually holds processes, so no controller could be enabled below it);
//!   * no path at all is the relative path `<container id>`, as in runc.
//!
//!   `..` cannot climb above the hierarchy's root (or above the caller's group for a
//!   relative path): paths are cleaned lexically first, as runc's `CleanPath` does.
//! * systemd driver: `slice:prefix:name` (all three parts, as runc demands); an empty path
//!   means `system.slice:porta:<id>` (`user.slice` when rootless). The group is
//!   `<slice expanded>/<prefix>-<name>.scope`, e.g. `machine-a.slice:porta:x` →
//!   `/machine.slice/machine-a.slice/porta-x.scope`.

use std::path::{Component, Path, PathBuf};

use crate::error::{Error, Result};
use crate::setup::{CgroupMode, CgroupVersion, Hierarchy};
use crate::CgroupConfig;

/// A parsed `cgroupsPath`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CgroupsPath {
    /// From each hierarchy's root (cleaned, starts with `/`).
    Absolute(PathBuf),
    /// From the caller's cgroup (cleaned, relative, never empty).
    Relative(PathBuf),
    /// The systemd form.
    Systemd {
        /// The parent slice, e.g. `system.slice`.
        slice: String,
        /// The scope prefix, e.g. `porta`.
        prefix: String,
        /// The unit name (without `.scope`), or a slice name ending in `.slice`.
        name: String,
    },
}

impl CgroupsPath {
    /// Parses the config's `cgroupsPath`, falling back to runc's defaults.
    pub fn parse(cfg: &CgroupConfig) -> Result<Self> {
        let raw = cfg
            .cgroups_path
            .as_ref()
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        if cfg.systemd {
            if raw.is_empty() {
                check_id(&cfg.container_id)?;
                let slice = if cfg.rootless {
                    "user.slice"
                } else {
                    "system.slice"
                };
                return Ok(CgroupsPath::Systemd {
                    slice: slice.into(),
                    prefix: "porta".into(),
                    name: cfg.container_id.clone(),
                });
            }
            let parts: Vec<&str> = raw.split(':').collect();
            if parts.len() != 3 {
                return Err(Error::InvalidPath {
                    path: raw,
                    reason: "with the systemd cgroup driver it must have the form \
                             \"slice:prefix:name\""
                        .into(),
                });
            }
            for p in &parts {
                if p.contains('/') {
                    return Err(Error::InvalidPath {
                        path: raw.clone(),
                        reason: "systemd slice, prefix and name cannot contain '/'".into(),
                    });
                }
            }
            if !parts[0].is_empty() && !parts[0].ends_with(".slice") {
                return Err(Error::InvalidPath {
                    path: raw.clone(),
                    reason: format!("the slice {:?} must end in \".slice\"", parts[0]),
                });
            }
            if parts[2].is_empty() {
                return Err(Error::InvalidPath {
                    path: raw.clone(),
                    reason: "the unit name (third part) is empty".into(),
                });
            }
            let slice = if parts[0].is_empty() {
                if cfg.rootless {
                    "user.slice"
                } else {
                    "system.slice"
                }
                .to_string()
            } else {
                parts[0].to_string()
            };
            return Ok(CgroupsPath::Systemd {
                slice,
                prefix: parts[1].into(),
                name: parts[2].into(),
            });
        }
        if raw.is_empty() {
            check_id(&cfg.container_id)?;
            return Ok(CgroupsPath::Relative(PathBuf::from(&cfg.container_id)));
        }
        let p = Path::new(&raw);
        let cleaned = clean(p);
        if p.is_absolute() {
            if cleaned.as_os_str().is_empty() {
                return Err(Error::InvalidPath {
                    path: raw,
                    reason: "it names the root of the hierarchy, which a container cannot own"
                        .into(),
                });
            }
            Ok(CgroupsPath::Absolute(Path::new("/").join(cleaned)))
        } else {
            if cleaned.as_os_str().is_empty() {
                return Err(Error::InvalidPath {
                    path: raw,
                    reason: "it names the caller's own cgroup, which a container cannot own".into(),
                });
            }
            Ok(CgroupsPath::Relative(cleaned))
        }
    }

    /// The systemd unit and its group path (from the hierarchy root), for the systemd form.
    pub fn systemd_unit(&self) -> Option<(String, PathBuf)> {
        let CgroupsPath::Systemd {
            slice,
            prefix,
            name,
        } = self
        else {
            return None;
        };
        let unit = if name.ends_with(".slice") {
            name.clone()
        } else if prefix.is_empty() {
            format!("{name}.scope")
        } else {
            format!("{prefix}-{name}.scope")
        };
        let mut path = expand_slice(slice);
        path.push(&unit);
        Some((unit, path))
    }

    /// The container's group in hierarchy `h` on a host of layout `mode`, as a path from the
    /// hierarchy's root (starting with `/`).
    pub fn in_hierarchy(&self, h: &Hierarchy, mode: CgroupMode) -> PathBuf {
        match self {
            CgroupsPath::Absolute(p) => p.clone(),
            CgroupsPath::Relative(p) => {
                let base = if h.version == CgroupVersion::V2 && mode == CgroupMode::Unified {
                    h.own_path.parent().unwrap_or(Path::new("/")).to_path_buf()
                } else {
                    h.own_path.clone()
                };
                Path::new("/").join(clean(&base)).join(p)
            }
            CgroupsPath::Systemd { .. } => self
                .systemd_unit()
                .map(|(_, p)| p)
                .unwrap_or_else(|| PathBuf::from("/")),
        }
    }
}

/// `a-b-c.slice` → `/a.slice/a-b.slice/a-b-c.slice`; `-.slice` is the root.
fn expand_slice(slice: &str) -> PathBuf {
    let mut out = PathBuf::from("/");
    if slice == "-.slice" {
        return out;
    }
    let base = slice.strip_suffix(".slice").unwrap_or(slice);
    let mut prefix = String::new();
    for part in base.split('-') {
        if !prefix.is_empty() {
            prefix.push('-');
        }
        prefix.push_str(part);
        out.push(format!("{prefix}.slice"));
    }
    out
}

fn check_id(id: &str) -> Result<()> {
    if id.is_empty() || id == "." || id == ".." || id.contains('/') {
        return Err(Error::InvalidPath {
            path: String::new(),
            reason: format!(
                "no cgroupsPath was given and the container id {id:?} cannot name a cgroup"
            ),
        });
    }
    Ok(())
}

/// Lexically cleans a path into a relative one: `.` dropped, `..` removes the previous
/// component and never climbs above the start.
pub(crate) fn clean(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::ParentDir => {
                out.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(path: Option<&str>, systemd: bool, rootless: bool) -> CgroupConfig {
        CgroupConfig {
            cgroups_path: path.map(PathBuf::from),
            container_id: "ctr1".into(),
            systemd,
            rootless,
            resources: None,
        }
    }

    fn hier(version: CgroupVersion, own: &str) -> Hierarchy {
        Hierarchy {
            version,
            mount_point: "/sys/fs/cgroup/x".into(),
            mount_root: "/".into(),
            controllers: vec![],
            own_path: own.into(),
        }
    }

    #[test]
    fn absolute_paths_are_cleaned_and_kept() {
        let p = CgroupsPath::parse(&cfg(Some("/porta/../porta/./c1"), false, false)).unwrap();
        assert_eq!(p, CgroupsPath::Absolute("/porta/c1".into()));
        let p = CgroupsPath::parse(&cfg(Some("/../../etc"), false, false)).unwrap();
        assert_eq!(p, CgroupsPath::Absolute("/etc".into()));
        let h = hier(CgroupVersion::V1, "/somewhere");
        assert_eq!(
            CgroupsPath::Absolute("/porta/c1".into()).in_hierarchy(&h, CgroupMode::Legacy),
            Path::new("/porta/c1")
        );
        assert!(CgroupsPath::parse(&cfg(Some("/"), false, false)).is_err());
        assert!(CgroupsPath::parse(&cfg(Some("/.."), false, false)).is_err());
    }

    #[test]
    fn relative_paths_follow_runc() {
        let p = CgroupsPath::parse(&cfg(Some("../../x/y"), false, false)).unwrap();
        assert_eq!(p, CgroupsPath::Relative("x/y".into()));
        // v1: below the caller's own group.
        let h = hier(CgroupVersion::V1, "/process_api/abc");
        assert_eq!(
            p.in_hierarchy(&h, CgroupMode::Hybrid),
            Path::new("/process_api/abc/x/y")
        );
        // cgroup2 on a hybrid host: like v1.
        let h = hier(CgroupVersion::V2, "/a/b");
        assert_eq!(
            p.in_hierarchy(&h, CgroupMode::Hybrid),
            Path::new("/a/b/x/y")
        );
        // v2-only host: below the parent of the caller's group.
        assert_eq!(p.in_hierarchy(&h, CgroupMode::Unified), Path::new("/a/x/y"));
        let root = hier(CgroupVersion::V2, "/");
        assert_eq!(
            p.in_hierarchy(&root, CgroupMode::Unified),
            Path::new("/x/y")
        );
        assert!(CgroupsPath::parse(&cfg(Some("a/.."), false, false)).is_err());
    }

    #[test]
    fn no_path_means_the_container_id_relative() {
        let p = CgroupsPath::parse(&cfg(None, false, false)).unwrap();
        assert_eq!(p, CgroupsPath::Relative("ctr1".into()));
        let p = CgroupsPath::parse(&cfg(Some(""), false, false)).unwrap();
        assert_eq!(p, CgroupsPath::Relative("ctr1".into()));
        let mut c = cfg(None, false, false);
        c.container_id = "../x".into();
        assert!(CgroupsPath::parse(&c).is_err());
    }

    #[test]
    fn systemd_form() {
        let p = CgroupsPath::parse(&cfg(Some("machine-a.slice:porta:x"), true, false)).unwrap();
        let (unit, path) = p.systemd_unit().unwrap();
        assert_eq!(unit, "porta-x.scope");
        assert_eq!(
            path,
            Path::new("/machine.slice/machine-a.slice/porta-x.scope")
        );

        let p = CgroupsPath::parse(&cfg(None, true, false)).unwrap();
        assert_eq!(
            p.systemd_unit().unwrap().1,
            Path::new("/system.slice/porta-ctr1.scope")
        );
        let p = CgroupsPath::parse(&cfg(None, true, true)).unwrap();
        assert_eq!(
            p.systemd_unit().unwrap().1,
            Path::new("/user.slice/porta-ctr1.scope")
        );
        let p = CgroupsPath::parse(&cfg(Some(":porta:y"), true, false)).unwrap();
        assert_eq!(
            p.systemd_unit().unwrap().1,
            Path::new("/system.slice/porta-y.scope")
        );
        let p = CgroupsPath::parse(&cfg(Some("-.slice::z.slice"), true, false)).unwrap();
        assert_eq!(p.systemd_unit().unwrap().1, Path::new("/z.slice"));

        for bad in [
            "/abs/path",
            "a.slice:b",
            "a:b:c",
            "a.slice:b:",
            "a.slice:b/c:d",
        ] {
            assert!(
                CgroupsPath::parse(&cfg(Some(bad), true, false)).is_err(),
                "{bad} should be refused"
            );
        }
    }
}
