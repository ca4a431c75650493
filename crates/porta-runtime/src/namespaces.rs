//! Linux namespaces of a container: which to make, which to join by path.

use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;

use oci_spec::runtime::{LinuxNamespace, LinuxNamespaceType};

use crate::error::{Context, Error, Result};
use crate::kernel::Kernel;

/// The clone/setns flag of a namespace type.
pub fn flag(t: LinuxNamespaceType) -> i32 {
    match t {
        LinuxNamespaceType::Mount => libc::CLONE_NEWNS,
        LinuxNamespaceType::Cgroup => libc::CLONE_NEWCGROUP,
        LinuxNamespaceType::Uts => libc::CLONE_NEWUTS,
        LinuxNamespaceType::Ipc => libc::CLONE_NEWIPC,
        LinuxNamespaceType::User => libc::CLONE_NEWUSER,
        LinuxNamespaceType::Pid => libc::CLONE_NEWPID,
        LinuxNamespaceType::Network => libc::CLONE_NEWNET,
        LinuxNamespaceType::Time => libc::CLONE_NEWTIME,
    }
}

/// The namespace plan of a container.
#[derive(Debug, Default)]
pub struct Plan {
    /// Flags of the namespaces to create.
    pub new: i32,
    /// Namespaces to join: (flag, path), user first.
    pub join: Vec<(i32, PathBuf)>,
}

impl Plan {
    /// Builds the plan from the config's namespace list.
    pub fn from_config(list: &[LinuxNamespace]) -> Plan {
        let mut p = Plan::default();
        for ns in list {
            match ns.path() {
                Some(path) => p.join.push((flag(ns.typ()), path.clone())),
                None => p.new |= flag(ns.typ()),
            }
        }
        p.join
            .sort_by_key(|(f, _)| if *f == libc::CLONE_NEWUSER { 0 } else { 1 });
        p
    }

    /// Whether a namespace of this type is created.
    pub fn creates(&self, t: LinuxNamespaceType) -> bool {
        self.new & flag(t) != 0
    }

    /// Whether the container has a namespace of this type (new or joined by path).
    pub fn has(&self, t: LinuxNamespaceType) -> bool {
        self.creates(t) || self.join.iter().any(|(f, _)| *f == flag(t))
    }

    /// Opens every namespace to join (before any is joined: later paths may not resolve after).
    pub fn open_joins(&self) -> Result<Vec<(i32, OwnedFd, PathBuf)>> {
        self.join
            .iter()
            .map(|(f, p)| {
                let fd: OwnedFd = std::fs::File::open(p)
                    .map_err(|e| {
                        Error::field("linux.namespaces[].path", format!("{}: {e}", p.display()))
                    })?
                    .into();
                Ok((*f, fd, p.clone()))
            })
            .collect()
    }
}

/// Joins opened namespaces in order.
pub(crate) fn join_all(k: &dyn Kernel, opened: &[(i32, OwnedFd, PathBuf)]) -> Result<()> {
    for (f, fd, p) in opened {
        k.setns(fd.as_fd(), *f)
            .ctx(|| format!("join namespace {}", p.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_puts_user_first() {
        let list: Vec<LinuxNamespace> = serde_json::from_value(serde_json::json!([
            {"type": "network", "path": "/proc/1/ns/net"},
            {"type": "user", "path": "/proc/1/ns/user"},
            {"type": "pid"},
            {"type": "mount"}
        ]))
        .unwrap();
        let p = Plan::from_config(&list);
        assert_eq!(p.new, libc::CLONE_NEWPID | libc::CLONE_NEWNS);
        assert_eq!(p.join[0].0, libc::CLONE_NEWUSER);
        assert!(p.creates(LinuxNamespaceType::Pid));
        assert!(!p.creates(LinuxNamespaceType::Network));
    }

    /// Joined namespaces are entered user first, in the plan's order, and a refused
    /// setns names the namespace file.
    #[test]
    fn join_all_enters_user_first_and_names_the_path() {
        use crate::kernel::recorder::{Call, Recorder};
        let list: Vec<LinuxNamespace> = serde_json::from_value(serde_json::json!([
            {"type": "network", "path": "/proc/self/ns/net"},
            {"type": "user", "path": "/proc/self/ns/user"},
            {"type": "mount"}
        ]))
        .unwrap();
        let opened = Plan::from_config(&list).open_joins().unwrap();
        let k = Recorder::new(std::path::Path::new("/"));
        join_all(&k, &opened).unwrap();
        assert_eq!(
            k.calls(),
            [
                Call::Setns(libc::CLONE_NEWUSER),
                Call::Setns(libc::CLONE_NEWNET)
            ]
        );
        let k = Recorder::new(std::path::Path::new("/"));
        k.fail(
            |c| *c == Call::Setns(libc::CLONE_NEWNET),
            nix::errno::Errno::EPERM,
        );
        let e = join_all(&k, &opened).unwrap_err().to_string();
        assert!(e.contains("join namespace /proc/self/ns/net"), "{e}");
    }
}
