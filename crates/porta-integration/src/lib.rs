//! Support code for Porta's integration tests: root file systems, bundles, the runtime under test.
//!
//! Every test drives the binary named by `PORTA_BIN` (default: the workspace's
//! `target/release/porta`, then `target/debug/porta`) with `--root /run/porta-test`.
//! The tests are written against runc's command line, so `PORTA_BIN=/usr/sbin/runc`
//! must pass them all, except those guarded by [`porta_only`].
//!
//! Every container id starts with [`ID_PREFIX`], so `tests/zz_leaks.rs` can find
//! anything a test left behind.

pub mod bundle;
pub mod cgroup;
pub mod cmd;
pub mod console;
pub mod container;
pub mod containerd;
pub mod debian;
pub mod leaks;
pub mod rootfs;
pub mod survival;
pub mod uring;
pub mod user;

pub use bundle::Bundle;
pub use cmd::{rt, rt_root, Cmd, Out};
pub use console::ConsoleSocket;
pub use container::Container;
pub use serde_json::{json, Value};

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// The `--root` every test uses (short: socket paths are limited to 108 bytes).
pub const ROOT: &str = "/run/porta-test";
/// Common prefix of every container id the tests make.
pub const ID_PREFIX: &str = "pit-";
/// Parent directory of every bundle the tests make.
pub const BUNDLES: &str = "/var/tmp/pit-bundles";

/// The workspace root (two levels above this crate).
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .and_then(Path::parent)
        .expect("workspace root")
        .to_path_buf()
}

/// The runtime built with the file server's fault injection: `$PORTA_FAULT_BIN`
/// (scripts/integration.sh builds one). Release builds do not carry it, so a test that
/// needs it fails without it, saying how to build one.
pub fn fault_runtime() -> PathBuf {
    match std::env::var_os("PORTA_FAULT_BIN") {
        Some(p) if !p.is_empty() && Path::new(&p).exists() => p.into(),
        other => panic!(
            "PORTA_FAULT_BIN ({other:?}) names no binary: this test needs a porta built with \
             the feature fault-injection (`bash scripts/build-faults.sh` makes \
             target/faults/porta; scripts/integration.sh does it)"
        ),
    }
}

/// The runtime under test: `$PORTA_BIN`, else target/release/porta, else target/debug/porta.
pub fn runtime() -> PathBuf {
    if let Some(p) = std::env::var_os("PORTA_BIN") {
        if !p.is_empty() {
            return PathBuf::from(p);
        }
    }
    let ws = workspace();
    let release = ws.join("target/release/porta");
    if release.exists() {
        return release;
    }
    ws.join("target/debug/porta")
}

/// True when the binary under test is Porta (its file name starts with "porta").
pub fn is_porta() -> bool {
    runtime()
        .file_name()
        .map(|n| n.to_string_lossy().starts_with("porta"))
        .unwrap_or(false)
}

/// For tests of Porta-only behaviour: returns true when the binary under test is Porta;
/// otherwise prints why the test is skipped and returns false.
pub fn porta_only(why: &str) -> bool {
    if is_porta() {
        return true;
    }
    skip(&format!(
        "Porta-only check ({why}); runtime under test is {}",
        runtime().display()
    ));
    false
}

/// Prints why a test is skipped, straight to stderr so that the test harness's output
/// capture does not hide it.
pub fn skip(why: &str) {
    use std::io::Write;
    let name = std::thread::current().name().unwrap_or("?").to_string();
    let _ = writeln!(std::io::stderr(), "SKIP {name}: {why}");
}

/// True when running as root; otherwise prints a skip reason.
pub fn is_root() -> bool {
    if porta_sys::user::is_root() {
        return true;
    }
    skip("integration tests need root");
    false
}

/// Returns early from a test (with a printed reason) unless running as root and the
/// runtime binary exists.
#[macro_export]
macro_rules! require_root {
    () => {
        if !$crate::is_root() {
            return;
        }
        $crate::check_runtime();
    };
}

/// Returns early from a test unless the runtime under test is Porta.
#[macro_export]
macro_rules! porta_only {
    ($why:expr) => {
        if !$crate::porta_only($why) {
            return;
        }
    };
}

/// Panics with a clear message when the runtime binary does not exist.
pub fn check_runtime() {
    let rt = runtime();
    assert!(
        rt.exists(),
        "runtime under test {} does not exist: build it (cargo build --release) or set PORTA_BIN",
        rt.display()
    );
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A unique container id: `pit-<tag>-<pid>-<n>`.
pub fn unique_id(tag: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    let tag: String = tag
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(24)
        .collect();
    format!("{ID_PREFIX}{tag}-{}-{n}", std::process::id())
}

/// Polls `f` every 10 ms until it returns Some, or `timeout` passes.
pub fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The process's start time (field 22 of /proc/PID/stat), to tell a pid from its reuse.
pub use porta_sys::proc::start_time;

/// True if `pid` names a live (non-zombie) process.
pub fn pid_alive(pid: i32) -> bool {
    porta_sys::proc::Stat::of(pid).is_some_and(|s| !s.is_dead())
}

/// Whether a command exists on the host's PATH.
pub fn have_command(name: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file()))
        .unwrap_or(false)
}

/// Whether the kernel offers a namespace type (by /proc/self/ns entry name).
pub fn kernel_has_ns(name: &str) -> bool {
    Path::new("/proc/self/ns").join(name).exists()
}

/// Podman's global flags for a private installation under `dir` (storage, run and temp
/// directories, volumes, networks; vfs storage, file events), with `cgroup_manager`
/// (`cgroupfs` or `systemd`) and the runtime under test, so that nothing of the host's
/// Podman is touched.
pub fn podman_args(dir: &Path, cgroup_manager: &str) -> Vec<std::ffi::OsString> {
    let p = |s: &str| dir.join(s).into_os_string();
    let mut v: Vec<std::ffi::OsString> = Vec::new();
    for (flag, sub) in [
        ("--root", "root"),
        ("--runroot", "runroot"),
        ("--tmpdir", "tmp"),
        ("--volumepath", "volumes"),
        ("--network-config-dir", "networks"),
    ] {
        v.push(flag.into());
        v.push(p(sub));
    }
    for a in ["--storage-driver", "vfs", "--events-backend", "file"] {
        v.push(a.into());
    }
    v.push("--cgroup-manager".into());
    v.push(cgroup_manager.into());
    v.push("--runtime".into());
    v.push(runtime().into_os_string());
    v
}

/// Unmounts everything mounted below `dir` in this mount namespace, deepest first (lazy
/// unmounts, so a busy mount does not stop the rest).
pub fn unmount_below(dir: &Path) {
    let mut mps: Vec<PathBuf> = porta_sys::proc::own_mountinfo()
        .unwrap_or_default()
        .into_iter()
        .map(|m| m.mount_point)
        .filter(|m| m.starts_with(dir))
        .collect();
    mps.sort_by_key(|m| std::cmp::Reverse(m.as_os_str().len()));
    for m in &mps {
        let c = std::ffi::CString::new(m.as_os_str().as_encoded_bytes())
            .expect("a mount point has no NUL");
        // SAFETY: a valid C string; umount2 only reads it.
        unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    }
}
