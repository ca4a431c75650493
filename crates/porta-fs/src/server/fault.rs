//! Fault injection for tests of the supervisor: a server that hangs, crashes, or
//! plays a compromised server, on a given LOOKUP or FORGET.

use std::ffi::CStr;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::Ordering;

use super::Fs;
use crate::shared::hdr;
use crate::sys;

/// Fault injection for the supervisor's tests, from `PORTA_FS_FAULT=hang:NAME` or
/// `crash:NAME`: a LOOKUP of NAME blocks its thread forever (a deadlock) or crashes
/// the server (SIGSEGV). Only in builds with the feature `fault-injection`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Fault {
    Hang,
    Crash,
    /// `crash-once:NAME`: like `crash`, in the first server only (its successor serves the
    /// LOOKUP the first one took: the request is answered, not repeated forever).
    CrashOnce,
    /// `crash-forget:K`: the first server crashes before it applies its (K+1)-th FORGET
    /// entry, wherever that falls in a batch (its successor must finish the batch).
    CrashForget,
    /// `compromise:NAME`: a simulated compromise: a LOOKUP of NAME makes the server do to
    /// the shared descriptor table what an attacker in it could, with only the calls its
    /// filter allows (replace the root and procfs descriptors its successor would be
    /// confined beneath by other directories), then crash.
    Compromise,
    /// `crash-linked:NAME`: the first server crashes right after a spare file got the
    /// name NAME in a CREATE (before the node and the answer).
    CrashLinked,
}

/// The server fault `PORTA_FS_FAULT` names, if any (the keeper's own fault,
/// `keeper-dies-in:C`, is none of the server's).
pub(super) fn fault_from_env() -> Option<(Fault, Vec<u8>)> {
    parse_fault(&std::env::var("PORTA_FS_FAULT").ok()?)
}

/// Parses `KIND:NAME`.
fn parse_fault(v: &str) -> Option<(Fault, Vec<u8>)> {
    let (kind, name) = v.split_once(':')?;
    let f = match kind {
        "hang" => Fault::Hang,
        "crash" => Fault::Crash,
        "crash-once" => Fault::CrashOnce,
        "crash-forget" => Fault::CrashForget,
        "compromise" => Fault::Compromise,
        "crash-linked" => Fault::CrashLinked,
        _ => return None,
    };
    Some((f, name.as_bytes().to_vec()))
}

impl Fs {
    pub(super) fn inject_forget_fault(&self) {
        static APPLIED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let Some((Fault::CrashForget, n)) = &self.fault else {
            return;
        };
        let at = std::str::from_utf8(n)
            .ok()
            .and_then(|s| s.parse::<usize>().ok());
        let k = APPLIED.fetch_add(1, Ordering::Relaxed);
        if at == Some(k) && self.sh.hdr(hdr::SERVER_STARTS).load(Ordering::Relaxed) == 1 {
            // SAFETY: deliberately raises SIGSEGV against this process (test fault).
            unsafe { libc::raise(libc::SIGSEGV) };
        }
    }

    /// The `crash-linked` fault, after a spare file got `name`.
    pub(super) fn inject_linked_fault(&self, name: &CStr) {
        let Some((Fault::CrashLinked, n)) = &self.fault else {
            return;
        };
        if name.to_bytes() == n.as_slice()
            && self.sh.hdr(hdr::SERVER_STARTS).load(Ordering::Relaxed) == 1
        {
            // SAFETY: deliberately raises SIGSEGV against this process (test fault).
            unsafe { libc::raise(libc::SIGSEGV) };
        }
    }

    pub(super) fn inject_fault(&self, name: &CStr) {
        let Some((f, n)) = &self.fault else { return };
        if name.to_bytes() != n.as_slice() {
            return;
        }
        match f {
            Fault::Hang => loop {
                std::thread::park();
            },
            Fault::Crash => {
                // SAFETY: deliberately raises SIGSEGV against this process (test fault).
                unsafe { libc::raise(libc::SIGSEGV) };
            }
            Fault::CrashOnce => {
                if self.sh.hdr(hdr::SERVER_STARTS).load(Ordering::Relaxed) == 1 {
                    // SAFETY: deliberately raises SIGSEGV against this process (test fault).
                    unsafe { libc::raise(libc::SIGSEGV) };
                }
            }
            Fault::CrashForget | Fault::CrashLinked => {}
            Fault::Compromise => {
                // The first server only: its successor must serve the real root.
                if self.sh.hdr(hdr::SERVER_STARTS).load(Ordering::Relaxed) != 1 {
                    return;
                }
                self.compromise();
                // SAFETY: deliberately raises SIGSEGV against this process (test fault).
                unsafe { libc::raise(libc::SIGSEGV) };
            }
        }
    }

    /// See [`Fault::Compromise`]. The best replacement is a host directory reached
    /// through the keeper's procfs (`sys/kernel`: host sysctls); failing that, the
    /// directory above the served root.
    pub(super) fn compromise(&self) {
        let procfs = self.sh.hdr(hdr::PROC_FD).load(Ordering::Relaxed) as RawFd;
        let dir = libc::O_PATH | libc::O_DIRECTORY;
        let (what, other) = match sys::openat(procfs, c"sys/kernel", dir, 0) {
            Ok(fd) => ("host /proc/sys/kernel", fd),
            Err(_) => match sys::openat(self.root, c"..", dir, 0) {
                Ok(fd) => ("the directory above the root", fd),
                Err(e) => {
                    tracing::error!(errno = e, "simulated compromise: no directory to plant");
                    return;
                }
            },
        };
        for (name, fd) in [("root", self.root), ("procfs", procfs)] {
            sys::close(fd);
            // SAFETY: F_DUPFD duplicates `other` to the lowest free number >= `fd`, the
            // number just closed (the table is shared: another thread may race for it).
            let got = unsafe { libc::fcntl(other.as_raw_fd(), libc::F_DUPFD, fd) };
            tracing::warn!(
                name,
                fd,
                got,
                planted = what,
                "simulated compromise: replaced a descriptor of the shared table"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_parse_from_kind_and_name() {
        assert_eq!(
            parse_fault("crash:poison"),
            Some((Fault::Crash, b"poison".to_vec()))
        );
        assert_eq!(
            parse_fault("crash-forget:3"),
            Some((Fault::CrashForget, b"3".to_vec()))
        );
        assert_eq!(parse_fault("hang:x").map(|f| f.0), Some(Fault::Hang));
        assert_eq!(
            parse_fault("compromise:x").map(|f| f.0),
            Some(Fault::Compromise)
        );
        assert_eq!(parse_fault("keeper-dies-in:B"), None);
        assert_eq!(parse_fault("crash"), None);
    }
}
