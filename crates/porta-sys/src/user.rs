//! Who the calling process runs as, and the mode it creates files with.

/// True when the effective user id is 0.
pub fn is_root() -> bool {
    // SAFETY: geteuid takes no arguments and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// `umask(2)`: sets the file-creation mask; returns the previous one.
pub fn umask(mask: u32) -> u32 {
    // SAFETY: umask takes an integer and cannot fail.
    unsafe { libc::umask(mask as libc::mode_t) as u32 }
}

#[cfg(test)]
mod tests {
    #[test]
    fn agrees_with_proc_status() {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let euid: u32 = status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|v| v.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap();
        assert_eq!(super::is_root(), euid == 0);
    }

    #[test]
    fn umask_returns_the_previous_mask() {
        let before = super::umask(0o027);
        assert_eq!(super::umask(before), 0o027);
    }
}
