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
}
