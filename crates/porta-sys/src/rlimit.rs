//! Resource limits.
//!
//! One behaviour for RLIMIT_NOFILE, used by the supervisor, the keeper and the file
//! servers alike: raise the hard limit to what the caller wants where the host allows it
//! (CAP_SYS_RESOURCE; capped by `fs.nr_open`), then the soft limit to the hard one. The
//! file server holds one descriptor per node the kernel caches, so its node budget is
//! the soft limit; a process without the capability still gets all its hard limit gives.

use std::io;

/// The RLIMIT_NOFILE limits in force after [`raise_nofile`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NofileLimits {
    /// The soft limit (what the process may open).
    pub soft: u64,
    /// The hard limit.
    pub hard: u64,
}

fn get() -> io::Result<NofileLimits> {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `rl` is a valid out-pointer for the duration of the call.
    crate::cvt_int(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) })?;
    Ok(NofileLimits {
        soft: rl.rlim_cur,
        hard: rl.rlim_max,
    })
}

fn set(soft: u64, hard: u64) -> io::Result<()> {
    let rl = libc::rlimit {
        rlim_cur: soft,
        rlim_max: hard,
    };
    // SAFETY: `rl` is a valid rlimit for the duration of the call.
    crate::cvt_int(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &rl) })?;
    Ok(())
}

/// The kernel's ceiling on any process's descriptor limit (`fs.nr_open`; 2^20, its
/// default, when it cannot be read).
pub fn nr_open() -> u64 {
    std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(1 << 20)
}

/// Raises RLIMIT_NOFILE: the hard limit to `hard_wanted` (capped by [`nr_open`]; only
/// tried when above the current hard limit, and only a privileged process may), then the
/// soft limit to the hard limit. Both steps are best effort: a refusal leaves the limit
/// as it was. Returns the limits then in force; fails only when they cannot be read.
/// `hard_wanted` 0 only raises the soft limit (and reads no file).
pub fn raise_nofile(hard_wanted: u64) -> io::Result<NofileLimits> {
    let mut now = get()?;
    if hard_wanted > now.hard {
        let want = hard_wanted.min(nr_open());
        if want > now.hard && set(want, want).is_ok() {
            now = NofileLimits {
                soft: want,
                hard: want,
            };
        }
    }
    if now.soft < now.hard && set(now.hard, now.hard).is_ok() {
        now.soft = now.hard;
    }
    Ok(now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_soft_limit_reaches_the_hard_one() {
        let before = get().unwrap();
        // A soft limit below the hard one first (test harnesses often start with both
        // equal), so the raise has something to do.
        set(before.hard.min(1024) / 2, before.hard).unwrap();
        let after = raise_nofile(0).unwrap();
        assert_eq!(after.hard, before.hard);
        assert_eq!(after.soft, after.hard);
        assert_eq!(get().unwrap(), after);
        // Asking for less than the hard limit never lowers it.
        assert_eq!(raise_nofile(after.hard / 2).unwrap(), after);
    }
}
