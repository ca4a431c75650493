//! The last steps before the container's program runs, shared by `create` and `exec`:
//! rlimits, identity, capabilities, no_new_privs, LSM labels, seccomp, environment, execve.

use std::collections::HashSet;
use std::ffi::CString;
use std::path::Path;
use std::str::FromStr;

use caps::{CapSet, Capability};
use oci_spec::runtime::{Capabilities, LinuxCapabilities, PosixRlimit, Process};

use crate::error::{Context, Error, Result};
use crate::sys;

/// Converts an OCI capability set to the caps crate's, naming unknown capabilities.
pub fn to_caps(field: &str, set: &Option<Capabilities>) -> Result<HashSet<Capability>> {
    let mut out = HashSet::new();
    for c in set.iter().flatten() {
        let name = serde_json::to_value(c)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        match Capability::from_str(&name) {
            Ok(cap) => {
                out.insert(cap);
            }
            // Capabilities this kernel or library does not know are skipped, as runc does.
            Err(_) => tracing::debug!("{field}: capability {name} unknown here; skipped"),
        }
    }
    Ok(out)
}

fn rlimit_resource(typ: &str) -> Option<libc::__rlimit_resource_t> {
    Some(match typ {
        "RLIMIT_CPU" => libc::RLIMIT_CPU,
        "RLIMIT_FSIZE" => libc::RLIMIT_FSIZE,
        "RLIMIT_DATA" => libc::RLIMIT_DATA,
        "RLIMIT_STACK" => libc::RLIMIT_STACK,
        "RLIMIT_CORE" => libc::RLIMIT_CORE,
        "RLIMIT_RSS" => libc::RLIMIT_RSS,
        "RLIMIT_NPROC" => libc::RLIMIT_NPROC,
        "RLIMIT_NOFILE" => libc::RLIMIT_NOFILE,
        "RLIMIT_MEMLOCK" => libc::RLIMIT_MEMLOCK,
        "RLIMIT_AS" => libc::RLIMIT_AS,
        "RLIMIT_LOCKS" => libc::RLIMIT_LOCKS,
        "RLIMIT_SIGPENDING" => libc::RLIMIT_SIGPENDING,
        "RLIMIT_MSGQUEUE" => libc::RLIMIT_MSGQUEUE,
        "RLIMIT_NICE" => libc::RLIMIT_NICE,
        "RLIMIT_RTPRIO" => libc::RLIMIT_RTPRIO,
        "RLIMIT_RTTIME" => libc::RLIMIT_RTTIME,
        _ => return None,
    })
}

/// Applies the process's rlimits; a limit above what the host allows gets an error naming
/// the limit, the value asked for and the host's hard limit.
pub fn apply_rlimits(rlimits: &[PosixRlimit]) -> Result<()> {
    for (i, r) in rlimits.iter().enumerate() {
        let name = serde_json::to_value(r.typ())
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        let res = rlimit_resource(&name).ok_or_else(|| {
            Error::field(
                format!("process.rlimits[{i}].type"),
                format!("unknown rlimit {name}"),
            )
        })?;
        if r.soft() > r.hard() {
            return Err(Error::field(
                format!("process.rlimits[{i}]"),
                format!(
                    "{name}: soft limit {} above hard limit {}",
                    r.soft(),
                    r.hard()
                ),
            ));
        }
        let lim = libc::rlimit {
            rlim_cur: r.soft(),
            rlim_max: r.hard(),
        };
        // SAFETY: lim is a valid rlimit for the duration of the call.
        if unsafe { libc::setrlimit(res, &lim) } != 0 {
            let err = std::io::Error::last_os_error();
            let mut cur = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            // SAFETY: cur is a valid out-parameter.
            unsafe { libc::getrlimit(res, &mut cur) };
            return Err(Error::field(
                format!("process.rlimits[{i}]"),
                format!(
                    "cannot set {name} to soft {} hard {}: {err} (the current hard limit is {}; raising a hard limit needs CAP_SYS_RESOURCE in the host, which this host does not grant)",
                    r.soft(),
                    r.hard(),
                    cur.rlim_max
                ),
            ));
        }
    }
    Ok(())
}

/// Switches to the process's user (groups first), keeping capabilities across the switch so
/// that [`apply_capabilities`] can set them afterwards.
pub fn switch_user(p: &Process) -> Result<()> {
    let u = p.user();
    sys::prctl(libc::PR_SET_KEEPCAPS, 1, 0).ctx(|| "prctl(PR_SET_KEEPCAPS)".into())?;
    let groups: Vec<nix::unistd::Gid> = u
        .additional_gids()
        .iter()
        .flatten()
        .map(|g| nix::unistd::Gid::from_raw(*g))
        .collect();
    match nix::unistd::setgroups(&groups) {
        Ok(()) => {}
        // setgroups is denied in a user namespace with setgroups=deny: only fine without extra groups.
        Err(nix::errno::Errno::EPERM) if groups.is_empty() => {}
        Err(e) => {
            return Err(Error::nix(
                format!("process.user.additionalGids: setgroups {groups:?}"),
                e,
            ))
        }
    }
    let gid = nix::unistd::Gid::from_raw(u.gid());
    nix::unistd::setresgid(gid, gid, gid)
        .ctx(|| format!("process.user.gid: setgid {}", u.gid()))?;
    let uid = nix::unistd::Uid::from_raw(u.uid());
    nix::unistd::setresuid(uid, uid, uid)
        .ctx(|| format!("process.user.uid: setuid {}", u.uid()))?;
    sys::prctl(libc::PR_SET_KEEPCAPS, 0, 0).ctx(|| "prctl(PR_SET_KEEPCAPS, 0)".into())?;
    if let Some(mask) = u.umask() {
        porta_sys::user::umask(mask);
    }
    Ok(())
}

/// Drops from the bounding set every capability the config does not keep. Must run before
/// the user switch (it needs CAP_SETPCAP).
pub fn drop_bounding(c: &Option<LinuxCapabilities>) -> Result<()> {
    let keep = to_caps(
        "process.capabilities.bounding",
        &c.as_ref().and_then(|c| c.bounding().clone()),
    )?;
    for cap in caps::all() {
        if !keep.contains(&cap) && caps::has_cap(None, CapSet::Bounding, cap).unwrap_or(false) {
            caps::drop(None, CapSet::Bounding, cap).map_err(|e| {
                Error::field("process.capabilities.bounding", format!("drop {cap}: {e}"))
            })?;
        }
    }
    Ok(())
}

/// The effective, permitted and inheritable sets, as the kernel's bit masks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CapMasks {
    effective: u64,
    permitted: u64,
    inheritable: u64,
}

fn mask(set: &HashSet<Capability>) -> u64 {
    set.iter().fold(0, |m, c| m | c.bitmask())
}

/// Sets the effective, permitted, inheritable and ambient sets. With `keep_sys_admin`
/// (a seccomp filter is to be loaded later without no_new_privs, which needs it)
/// CAP_SYS_ADMIN is also kept in the effective and permitted sets; the sets the config
/// asks for are then returned, for [`set_final_caps`] once the filter is loaded.
pub fn apply_capabilities(
    c: &Option<LinuxCapabilities>,
    keep_sys_admin: bool,
) -> Result<Option<CapMasks>> {
    // No capabilities field: every set empty, as runc (not oci-spec's default sets).
    let set = |f: &str, pick: fn(&LinuxCapabilities) -> &Option<Capabilities>| {
        to_caps(f, &c.as_ref().and_then(|c| pick(c).clone()))
    };
    let mut eff = set(
        "process.capabilities.effective",
        LinuxCapabilities::effective,
    )?;
    let mut perm = set(
        "process.capabilities.permitted",
        LinuxCapabilities::permitted,
    )?;
    let inh = set(
        "process.capabilities.inheritable",
        LinuxCapabilities::inheritable,
    )?;
    let amb = set("process.capabilities.ambient", LinuxCapabilities::ambient)?;
    let wanted = CapMasks {
        effective: mask(&eff),
        permitted: mask(&perm),
        inheritable: mask(&inh),
    };
    let admin = Capability::CAP_SYS_ADMIN;
    let extra = keep_sys_admin && !(eff.contains(&admin) && perm.contains(&admin));
    if extra {
        eff.insert(admin);
        perm.insert(admin);
    }
    // Order matters: inheritable may only grow within permitted, effective within permitted.
    caps::set(None, CapSet::Inheritable, &inh)
        .map_err(|e| Error::field("process.capabilities.inheritable", e.to_string()))?;
    caps::set(
        None,
        CapSet::Effective,
        &eff.intersection(&perm).copied().collect(),
    )
    .and_then(|_| caps::set(None, CapSet::Permitted, &perm))
    .and_then(|_| caps::set(None, CapSet::Effective, &eff))
    .map_err(|e| Error::field("process.capabilities.effective/permitted", e.to_string()))?;
    caps::clear(None, CapSet::Ambient)
        .map_err(|e| Error::field("process.capabilities.ambient", e.to_string()))?;
    for cap in amb {
        if let Err(e) = caps::raise(None, CapSet::Ambient, cap) {
            tracing::debug!("process.capabilities.ambient: cannot raise {cap}: {e}");
        }
    }
    Ok(extra.then_some(wanted))
}

/// Sets the effective, permitted and inheritable sets with a single capset(2) and no other
/// system call: the last step before execve once the seccomp filter is loaded.
pub fn set_final_caps(m: &CapMasks) -> Result<()> {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: libc::c_int,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const VERSION_3: u32 = 0x2008_0522;
    let mut hdr = Header {
        version: VERSION_3,
        pid: 0,
    };
    let half = |v: u64, i: u32| (v >> (32 * i)) as u32;
    let data: [Data; 2] = [0, 1].map(|i| Data {
        effective: half(m.effective, i),
        permitted: half(m.permitted, i),
        inheritable: half(m.inheritable, i),
    });
    // SAFETY: hdr and data are valid, correctly laid out capset arguments for version 3
    // (two data structs) and live across the call.
    let r = unsafe { libc::syscall(libc::SYS_capset, &mut hdr as *mut Header, data.as_ptr()) };
    if r != 0 {
        return Err(Error::field(
            "process.capabilities",
            format!(
                "drop CAP_SYS_ADMIN kept for loading the seccomp filter: {} (does linux.seccomp allow capset?)",
                std::io::Error::last_os_error()
            ),
        ));
    }
    Ok(())
}

/// Applies the AppArmor profile and SELinux label for the next execve, where the kernel has
/// those; otherwise logs at debug level and goes on, as runc does on hosts without them.
pub fn apply_lsm(apparmor: Option<&str>, selinux: Option<&str>) -> Result<()> {
    if let Some(profile) = apparmor.filter(|p| !p.is_empty()) {
        if Path::new("/sys/kernel/security/apparmor").exists() {
            let attr = if Path::new("/proc/self/attr/apparmor/exec").exists() {
                "/proc/self/attr/apparmor/exec"
            } else {
                "/proc/self/attr/exec"
            };
            std::fs::write(attr, format!("exec {profile}"))
                .map_err(|e| Error::field("process.apparmorProfile", format!("{profile}: {e}")))?;
        } else {
            tracing::debug!("process.apparmorProfile {profile:?}: AppArmor is not enabled on this host; not applied");
        }
    }
    if let Some(label) = selinux.filter(|l| !l.is_empty()) {
        if crate::rootfs::selinux_enabled() {
            std::fs::write("/proc/self/attr/exec", label)
                .map_err(|e| Error::field("process.selinuxLabel", format!("{label}: {e}")))?;
        } else {
            tracing::debug!(
                "process.selinuxLabel {label:?}: SELinux is not enabled on this host; not applied"
            );
        }
    }
    Ok(())
}

/// Sets no_new_privs.
pub fn set_no_new_privs() -> Result<()> {
    sys::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0).ctx(|| "prctl(PR_SET_NO_NEW_PRIVS)".into())?;
    Ok(())
}

/// Writes the process's oom_score_adj.
pub fn set_oom_score_adj(v: i32) -> Result<()> {
    std::fs::write("/proc/self/oom_score_adj", v.to_string())
        .map_err(|e| Error::field("process.oomScoreAdj", format!("{v}: {e}")))
}

/// Resolves argv[0] against PATH from the process's environment, as runc does before exec.
pub fn find_program(arg0: &str, env: &[String]) -> Result<CString> {
    let found = if arg0.contains('/') {
        Some(arg0.to_string())
    } else {
        let path = env
            .iter()
            .find_map(|e| e.strip_prefix("PATH="))
            .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
        path.split(':')
            .map(|d| format!("{}/{}", if d.is_empty() { "." } else { d }, arg0))
            .find(|c| {
                std::fs::metadata(c)
                    .map(|m| {
                        use std::os::unix::fs::PermissionsExt;
                        m.is_file() && m.permissions().mode() & 0o111 != 0
                    })
                    .unwrap_or(false)
            })
    };
    let p = found.ok_or_else(|| {
        Error::field(
            "process.args[0]",
            format!("{arg0:?}: executable file not found in $PATH"),
        )
    })?;
    if std::fs::metadata(&p).is_err() {
        return Err(Error::field(
            "process.args[0]",
            format!("{p}: no such file or directory"),
        ));
    }
    CString::new(p).map_err(|_| Error::field("process.args[0]", "contains a NUL byte"))
}

/// Converts strings to C strings, naming the field holding a NUL byte.
pub fn cstrings(field: &str, v: &[String]) -> Result<Vec<CString>> {
    v.iter()
        .enumerate()
        .map(|(i, s)| {
            CString::new(s.as_str())
                .map_err(|_| Error::field(format!("{field}[{i}]"), "contains a NUL byte"))
        })
        .collect()
}

/// Replaces the process image. Returns only on failure.
pub fn exec(program: &CString, args: &[CString], env: &[CString]) -> Error {
    match nix::unistd::execve(program, args, env) {
        Ok(never) => match never {},
        Err(e) => Error::nix(format!("exec {}", program.to_string_lossy()), e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capability_names_convert() {
        let set: Capabilities =
            serde_json::from_value(serde_json::json!(["CAP_CHOWN", "CAP_NET_RAW"])).unwrap();
        let c = to_caps("x", &Some(set)).unwrap();
        assert!(c.contains(&Capability::CAP_CHOWN) && c.contains(&Capability::CAP_NET_RAW));
    }

    #[test]
    fn programs_are_found_on_path() {
        let env = vec!["PATH=/nonexistent:/bin:/usr/bin".to_string()];
        assert!(find_program("sh", &env).is_ok());
        assert!(find_program("definitely-not-a-program-xyz", &env)
            .unwrap_err()
            .to_string()
            .contains("not found"));
        assert!(find_program("/bin/sh", &[]).is_ok());
    }

    #[test]
    fn rlimit_names_are_known() {
        assert!(rlimit_resource("RLIMIT_NOFILE").is_some());
        assert!(rlimit_resource("RLIMIT_BOGUS").is_none());
    }
}
