//! FUSE over io_uring for tests: the kernel's switch turned on for a test's duration.

/// The kernel's switch for FUSE over io_uring.
pub const SWITCH: &str = "/sys/module/fuse/parameters/enable_uring";

/// `enable_uring` turned on; its old value written back on drop. Every holder in a test
/// binary takes one lock, so that one test's restore cannot turn it off under another.
pub struct Enabled {
    old: String,
    _lock: std::sync::MutexGuard<'static, ()>,
}

static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

impl Enabled {
    /// Turns FUSE over io_uring on; None (with the reason printed) on a kernel without it.
    pub fn new() -> Option<Enabled> {
        let lock = LOCK.lock().unwrap_or_else(|p| p.into_inner());
        let Ok(old) = std::fs::read_to_string(SWITCH) else {
            eprintln!("SKIPPED: this kernel has no FUSE over io_uring ({SWITCH} is missing)");
            return None;
        };
        std::fs::write(SWITCH, "Y").expect("turn enable_uring on");
        Some(Enabled {
            old: old.trim().to_string(),
            _lock: lock,
        })
    }
}

impl Enabled {
    /// Turns FUSE over io_uring off for the holder's duration (where the kernel has it);
    /// the old value is written back on drop.
    pub fn off() -> Option<Enabled> {
        let lock = LOCK.lock().unwrap_or_else(|p| p.into_inner());
        let old = std::fs::read_to_string(SWITCH).ok()?;
        std::fs::write(SWITCH, "N").expect("turn enable_uring off");
        Some(Enabled {
            old: old.trim().to_string(),
            _lock: lock,
        })
    }
}

impl Drop for Enabled {
    fn drop(&mut self) {
        if let Err(e) = std::fs::write(SWITCH, &self.old) {
            eprintln!("could not put {SWITCH} back to {}: {e}", self.old);
        }
    }
}
