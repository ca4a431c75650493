//! The OCI seccomp section, compiled with libseccomp and loaded into the container's process.

use std::os::fd::{FromRawFd, OwnedFd};
use std::str::FromStr;

use libseccomp::{
    ScmpAction, ScmpArch, ScmpArgCompare, ScmpCompareOp, ScmpFilterAttr, ScmpFilterContext,
    ScmpSyscall,
};
use oci_spec::runtime::{
    LinuxSeccomp, LinuxSeccompAction, LinuxSeccompFilterFlag, LinuxSeccompOperator,
};

use crate::error::{Error, Result};

fn action(
    a: LinuxSeccompAction,
    errno: Option<u32>,
    default_errno: Option<u32>,
) -> Result<ScmpAction> {
    Ok(match a {
        LinuxSeccompAction::ScmpActKill | LinuxSeccompAction::ScmpActKillThread => {
            ScmpAction::KillThread
        }
        LinuxSeccompAction::ScmpActKillProcess => ScmpAction::KillProcess,
        LinuxSeccompAction::ScmpActTrap => ScmpAction::Trap,
        LinuxSeccompAction::ScmpActErrno => {
            ScmpAction::Errno(errno.or(default_errno).unwrap_or(libc::EPERM as u32) as i32)
        }
        LinuxSeccompAction::ScmpActTrace => {
            ScmpAction::Trace(errno.or(default_errno).unwrap_or(libc::EPERM as u32) as u16)
        }
        LinuxSeccompAction::ScmpActAllow => ScmpAction::Allow,
        LinuxSeccompAction::ScmpActLog => ScmpAction::Log,
        LinuxSeccompAction::ScmpActNotify => ScmpAction::Notify,
    })
}

fn op(o: LinuxSeccompOperator, value_two: Option<u64>) -> ScmpCompareOp {
    match o {
        LinuxSeccompOperator::ScmpCmpNe => ScmpCompareOp::NotEqual,
        LinuxSeccompOperator::ScmpCmpLt => ScmpCompareOp::Less,
        LinuxSeccompOperator::ScmpCmpLe => ScmpCompareOp::LessOrEqual,
        LinuxSeccompOperator::ScmpCmpEq => ScmpCompareOp::Equal,
        LinuxSeccompOperator::ScmpCmpGe => ScmpCompareOp::GreaterEqual,
        LinuxSeccompOperator::ScmpCmpGt => ScmpCompareOp::Greater,
        LinuxSeccompOperator::ScmpCmpMaskedEq => ScmpCompareOp::MaskedEqual(value_two.unwrap_or(0)),
    }
}

/// Whether the profile asks for user notification (an fd must then go to `listenerPath`).
pub fn uses_notify(s: &LinuxSeccomp) -> bool {
    s.default_action() == LinuxSeccompAction::ScmpActNotify
        || s.syscalls()
            .iter()
            .flatten()
            .any(|r| r.action() == LinuxSeccompAction::ScmpActNotify)
}

/// Compiles the seccomp section into a filter (not yet loaded). Errors name the rule at fault.
pub fn compile(s: &LinuxSeccomp) -> Result<ScmpFilterContext> {
    if uses_notify(s) && s.listener_path().is_none() {
        return Err(Error::field(
            "linux.seccomp.listenerPath",
            "SCMP_ACT_NOTIFY needs a listener path",
        ));
    }
    let default = action(s.default_action(), s.default_errno_ret(), None)?;
    let mut ctx =
        ScmpFilterContext::new(default).map_err(|e| Error::Seccomp(format!("new filter: {e}")))?;
    // NO_NEW_PRIVS is the process config's business, not the filter's.
    ctx.set_ctl_nnp(false)
        .map_err(|e| Error::Seccomp(format!("nnp attribute: {e}")))?;
    for (i, a) in s.architectures().iter().flatten().enumerate() {
        let name = serde_json::to_value(a)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        let arch = ScmpArch::from_str(&name).map_err(|e| {
            Error::field(
                format!("linux.seccomp.architectures[{i}]"),
                format!("{name}: {e}"),
            )
        })?;
        ctx.add_arch(arch).map_err(|e| {
            Error::field(format!("linux.seccomp.architectures[{i}]"), e.to_string())
        })?;
    }
    for f in s.flags().iter().flatten() {
        match f {
            LinuxSeccompFilterFlag::SeccompFilterFlagLog => {
                ctx.set_filter_attr(ScmpFilterAttr::CtlLog, 1)
                    .map_err(|e| Error::Seccomp(e.to_string()))?;
            }
            LinuxSeccompFilterFlag::SeccompFilterFlagSpecAllow => {
                ctx.set_filter_attr(ScmpFilterAttr::CtlSsb, 1)
                    .map_err(|e| Error::Seccomp(e.to_string()))?;
            }
            LinuxSeccompFilterFlag::SeccompFilterFlagTsync => {
                ctx.set_filter_attr(ScmpFilterAttr::CtlTsync, 1)
                    .map_err(|e| Error::Seccomp(e.to_string()))?;
            }
            other => {
                tracing::debug!("seccomp flag {other:?} is not applied by libseccomp; ignored")
            }
        }
    }
    for (i, rule) in s.syscalls().iter().flatten().enumerate() {
        let act = action(rule.action(), rule.errno_ret(), s.default_errno_ret())?;
        if act == default {
            continue; // libseccomp refuses rules equal to the default action
        }
        let conds: Vec<ScmpArgCompare> = rule
            .args()
            .iter()
            .flatten()
            .map(|a| ScmpArgCompare::new(a.index() as u32, op(a.op(), a.value_two()), a.value()))
            .collect();
        for name in rule.names() {
            let sc = match ScmpSyscall::from_name(name) {
                Ok(sc) => sc,
                Err(_) => {
                    // As runc: a name unknown to this architecture is skipped, not fatal.
                    tracing::debug!(
                        "seccomp: unknown syscall {name:?} in linux.seccomp.syscalls[{i}] skipped"
                    );
                    continue;
                }
            };
            let r = if conds.is_empty() {
                ctx.add_rule(act, sc)
            } else {
                ctx.add_rule_conditional(act, sc, &conds)
            };
            r.map_err(|e| {
                Error::field(
                    format!("linux.seccomp.syscalls[{i}] ({name})"),
                    e.to_string(),
                )
            })?;
        }
    }
    Ok(ctx)
}

/// The most instructions the kernel takes in one filter (BPF_MAXINSNS).
const MAX_INSNS: usize = 4096;

/// A filter turned into its BPF program ahead of time: installing it right before execve is
/// then one system call. libseccomp's own load generates the program at that moment, which
/// takes tens of milliseconds for a large profile (Docker's default is ~300 system calls on
/// three architectures): time in which `start` has returned but the container's program
/// has not started, so a signal sent at once found Porta's set-up code instead of the
/// program's handlers.
pub struct Program {
    insns: Vec<libc::sock_filter>,
    flags: libc::c_ulong,
}

impl std::fmt::Debug for Program {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Program")
            .field("insns", &self.insns.len())
            .field("flags", &self.flags)
            .finish()
    }
}

/// Generates the BPF program of a compiled filter (see [`Program`]), with the load flags
/// the profile's `flags` ask for. A program longer than the kernel takes is refused here,
/// naming the profile, rather than after `start`.
pub fn prepare(ctx: &ScmpFilterContext, s: &LinuxSeccomp) -> Result<Program> {
    use std::io::{Read, Seek, SeekFrom};
    let fd = nix::sys::memfd::memfd_create(
        c"porta-seccomp",
        nix::sys::memfd::MemFdCreateFlag::MFD_CLOEXEC,
    )
    .map_err(|e| Error::Seccomp(format!("memfd for the filter's program: {e}")))?;
    ctx.export_bpf(&fd)
        .map_err(|e| Error::Seccomp(format!("generate the filter's program: {e}")))?;
    let mut file = std::fs::File::from(fd);
    let mut bytes = Vec::new();
    file.seek(SeekFrom::Start(0))
        .and_then(|_| file.read_to_end(&mut bytes))
        .map_err(|e| Error::Seccomp(format!("read the filter's program back: {e}")))?;
    let size = std::mem::size_of::<libc::sock_filter>();
    if bytes.is_empty() || bytes.len() % size != 0 {
        return Err(Error::Seccomp(format!(
            "libseccomp exported a program of {} bytes, not a whole number of {size}-byte instructions",
            bytes.len()
        )));
    }
    let insns: Vec<libc::sock_filter> = bytes
        .chunks_exact(size)
        .map(|c| libc::sock_filter {
            code: u16::from_ne_bytes([c[0], c[1]]),
            jt: c[2],
            jf: c[3],
            k: u32::from_ne_bytes([c[4], c[5], c[6], c[7]]),
        })
        .collect();
    if insns.len() > MAX_INSNS {
        return Err(Error::field(
            "linux.seccomp",
            format!(
                "the profile compiles to {} BPF instructions; the kernel takes at most {MAX_INSNS} in one filter",
                insns.len()
            ),
        ));
    }
    let mut flags: libc::c_ulong = 0;
    for f in s.flags().iter().flatten() {
        match f {
            LinuxSeccompFilterFlag::SeccompFilterFlagLog => flags |= libc::SECCOMP_FILTER_FLAG_LOG,
            LinuxSeccompFilterFlag::SeccompFilterFlagSpecAllow => {
                flags |= libc::SECCOMP_FILTER_FLAG_SPEC_ALLOW
            }
            LinuxSeccompFilterFlag::SeccompFilterFlagTsync => {
                flags |= libc::SECCOMP_FILTER_FLAG_TSYNC
            }
            _ => {} // not applied (see compile)
        }
    }
    Ok(Program { insns, flags })
}

/// Installs a prepared program into the calling thread (see [`Program`]). Without
/// no_new_privs this needs CAP_SYS_ADMIN, as libseccomp's load does.
pub fn install(p: &Program) -> Result<()> {
    let len = u16::try_from(p.insns.len())
        .map_err(|_| Error::Seccomp(format!("{} instructions", p.insns.len())))?;
    let prog = libc::sock_fprog {
        len,
        filter: p.insns.as_ptr().cast_mut(),
    };
    // SAFETY: prog points at p.insns, which outlives the call; the kernel copies the program.
    let r = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            p.flags,
            &prog as *const libc::sock_fprog,
        )
    };
    match r {
        0 => Ok(()),
        r if r > 0 => Err(Error::Seccomp(format!(
            "load filter: thread {r} could not be synchronised (SECCOMP_FILTER_FLAG_TSYNC)"
        ))),
        _ => Err(Error::Seccomp(format!(
            "load filter: {}",
            std::io::Error::last_os_error()
        ))),
    }
}

/// Loads a compiled filter into the calling process; returns the notification fd when the
/// profile uses SCMP_ACT_NOTIFY.
pub fn load(ctx: &ScmpFilterContext, notify: bool) -> Result<Option<OwnedFd>> {
    ctx.load()
        .map_err(|e| Error::Seccomp(format!("load filter: {e}")))?;
    if !notify {
        return Ok(None);
    }
    let fd = ctx
        .get_notify_fd()
        .map_err(|e| Error::Seccomp(format!("notification fd: {e}")))?;
    // SAFETY: libseccomp hands us the notification fd; we take sole ownership of it.
    Ok(Some(unsafe { OwnedFd::from_raw_fd(fd) }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compiles_a_profile_with_conditions() {
        let s: LinuxSeccomp = serde_json::from_value(serde_json::json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"],
            "syscalls": [
                {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1},
                {"names": ["personality"], "action": "SCMP_ACT_ERRNO", "args": [{"index": 0, "value": 8, "op": "SCMP_CMP_EQ"}]},
                {"names": ["no_such_syscall_here"], "action": "SCMP_ACT_ERRNO"}
            ]
        }))
        .unwrap();
        assert!(compile(&s).is_ok());
        assert!(!uses_notify(&s));
    }

    #[test]
    fn notify_needs_a_listener() {
        let s: LinuxSeccomp = serde_json::from_value(serde_json::json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_NOTIFY"}]
        }))
        .unwrap();
        assert!(uses_notify(&s));
        assert!(compile(&s)
            .unwrap_err()
            .to_string()
            .contains("listenerPath"));
    }

    #[test]
    fn a_prepared_program_filters_as_the_profile_says() {
        let s: LinuxSeccomp = serde_json::from_value(serde_json::json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
            "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 42}]
        }))
        .unwrap();
        let p = prepare(&compile(&s).unwrap(), &s).unwrap();
        assert!(!p.insns.is_empty());
        // The filter goes into a child (it would stay on the test's own thread otherwise).
        // SAFETY: the child only makes system calls and exits.
        match unsafe { nix::unistd::fork() }.unwrap() {
            nix::unistd::ForkResult::Child => {
                // SAFETY: prctl(PR_SET_NO_NEW_PRIVS) takes no pointers.
                unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
                let code = match install(&p) {
                    Err(_) => 1,
                    Ok(()) => match nix::unistd::mkdir(
                        "/proc/porta-test-never",
                        nix::sys::stat::Mode::empty(),
                    ) {
                        Err(e) if e as i32 == 42 => 0,
                        _ => 2,
                    },
                };
                // SAFETY: ends the child without running the parent's destructors.
                unsafe { libc::_exit(code) };
            }
            nix::unistd::ForkResult::Parent { child } => {
                let st = nix::sys::wait::waitpid(child, None).unwrap();
                assert_eq!(st, nix::sys::wait::WaitStatus::Exited(child, 0));
            }
        }
    }

    #[test]
    fn a_program_longer_than_the_kernel_takes_is_refused_by_name() {
        let s = oversized_profile();
        let e = prepare(&compile(&s).unwrap(), &s).unwrap_err().to_string();
        assert!(e.contains("linux.seccomp") && e.contains("4096"), "{e}");
    }

    /// A profile whose program exceeds 4096 instructions: 100 conditional rules (each with
    /// its own errno and value, so that libseccomp can neither merge nor share them) on each
    /// of 30 system calls (about 6,000 instructions on x86-64 alone).
    pub(crate) fn oversized_profile() -> LinuxSeccomp {
        let names = [
            "read",
            "write",
            "openat",
            "close",
            "fstat",
            "lseek",
            "mmap",
            "ioctl",
            "pread64",
            "pwrite64",
            "readv",
            "writev",
            "dup",
            "dup2",
            "fcntl",
            "flock",
            "fsync",
            "ftruncate",
            "fchmod",
            "fchown",
            "getdents64",
            "fdatasync",
            "fstatfs",
            "fchdir",
            "munmap",
            "mprotect",
            "madvise",
            "msync",
            "sendfile",
            "splice",
        ];
        let rules: Vec<serde_json::Value> = names
            .iter()
            .enumerate()
            .flat_map(|(i, name)| {
                (0..100u64).map(move |v| {
                    serde_json::json!({
                        "names": [name],
                        "action": "SCMP_ACT_ERRNO",
                        "errnoRet": 1 + v,
                        "args": [{"index": 0, "value": 100_000 * (i as u64 + 1) + v, "op": "SCMP_CMP_EQ"}]
                    })
                })
            })
            .collect();
        serde_json::from_value(serde_json::json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "architectures": ["SCMP_ARCH_X86_64"],
            "syscalls": rules
        }))
        .unwrap()
    }
}
