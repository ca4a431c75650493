//! OCI hooks: run with the container's state JSON on stdin, bounded by their timeouts.

use std::io::{Read, Seek, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::process::{Command, Stdio};

use oci_spec::runtime::Hook;

use crate::error::{Error, Result};
use crate::sys;

/// Runs each hook in order with `state` (OCI state JSON) on stdin; stops at the first failure.
pub fn run_all(kind: &str, hooks: &[Hook], state: &[u8]) -> Result<()> {
    for h in hooks {
        run(kind, h, state)?;
    }
    Ok(())
}

/// Runs every hook of a kind whose failure the spec makes a warning (poststart, poststop):
/// a failing hook is logged and the remaining hooks still run.
pub fn run_each_warn(kind: &str, hooks: &[Hook], state: &[u8]) {
    for h in hooks {
        if let Err(e) = run(kind, h, state) {
            tracing::warn!("{e}");
        }
    }
}

fn run(kind: &str, h: &Hook, state: &[u8]) -> Result<()> {
    let path = h.path().clone();
    let err = |msg: String| Error::Hook {
        kind: kind.to_string(),
        path: path.clone(),
        msg,
    };
    let args = h.args().clone().unwrap_or_default();
    let mut cmd = Command::new(&path);
    if let Some(a0) = args.first() {
        use std::os::unix::process::CommandExt;
        cmd.arg0(a0);
    }
    cmd.args(args.iter().skip(1));
    cmd.env_clear();
    for e in h.env().iter().flatten() {
        if let Some((k, v)) = e.split_once('=') {
            cmd.env(k, v);
        }
    }
    // Output goes to an anonymous file, reported if the hook fails; it must not reach the
    // container's stdio, which `create` shares with its caller.
    let out = sys::memfd_create("porta-hook-output", libc::MFD_CLOEXEC)
        .map_err(|e| err(format!("memfd: {e}")))?;
    let mut out_file = std::fs::File::from(out);
    let o2 = out_file.try_clone().map_err(|e| err(format!("dup: {e}")))?;
    let o3 = out_file.try_clone().map_err(|e| err(format!("dup: {e}")))?;
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::from(o2))
        .stderr(Stdio::from(o3));
    let mut child = cmd.spawn().map_err(|e| err(format!("start: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        // A hook that does not read its stdin is fine: ignore EPIPE.
        let _ = stdin.write_all(state);
    }
    let pid = child.id() as i32;
    let timeout_ms: i32 = match h.timeout() {
        Some(t) if t <= 0 => return Err(err(format!("timeout {t} must be positive"))),
        Some(t) => t.saturating_mul(1000) as i32,
        None => -1,
    };
    let pidfd = porta_sys::pidfd::open(pid).map_err(|e| err(format!("pidfd: {e}")))?;
    let mut fds = [nix::poll::PollFd::new(
        pidfd.as_fd(),
        nix::poll::PollFlags::POLLIN,
    )];
    let timeout = if timeout_ms < 0 {
        nix::poll::PollTimeout::NONE
    } else {
        nix::poll::PollTimeout::try_from(timeout_ms).unwrap_or(nix::poll::PollTimeout::MAX)
    };
    let ready = loop {
        match nix::poll::poll(&mut fds, timeout) {
            Ok(n) => break n,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(err(format!("wait: {e}"))),
        }
    };
    if ready == 0 {
        let _ = porta_sys::pidfd::send_signal(pidfd.as_fd(), libc::SIGKILL);
        let _ = child.wait();
        return Err(err(format!(
            "timed out after {}s",
            h.timeout().unwrap_or(0)
        )));
    }
    let status = child.wait().map_err(|e| err(format!("wait: {e}")))?;
    if !status.success() {
        let mut output = String::new();
        let _ = out_file.rewind();
        let _ = (&mut out_file).take(4096).read_to_string(&mut output);
        let _ = pidfd.as_raw_fd();
        return Err(err(format!("{status}; output: {}", output.trim())));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hook(v: serde_json::Value) -> Hook {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn hook_gets_state_on_stdin() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let h = hook(
            serde_json::json!({"path": "/bin/sh", "args": ["sh", "-c", format!("cat > {}", out.display())]}),
        );
        run_all("prestart", &[h], b"{\"id\":\"x\"}").unwrap();
        assert_eq!(std::fs::read_to_string(out).unwrap(), "{\"id\":\"x\"}");
    }

    #[test]
    fn failing_and_slow_hooks_are_reported() {
        let h = hook(
            serde_json::json!({"path": "/bin/sh", "args": ["sh", "-c", "echo boom >&2; exit 3"]}),
        );
        let e = run_all("poststart", &[h], b"{}").unwrap_err().to_string();
        assert!(e.contains("boom") && e.contains("poststart"), "{e}");
        let h =
            hook(serde_json::json!({"path": "/bin/sleep", "args": ["sleep", "5"], "timeout": 1}));
        let e = run_all("prestart", &[h], b"{}").unwrap_err().to_string();
        assert!(e.contains("timed out"), "{e}");
    }
}
