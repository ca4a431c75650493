//! Test harness: a real FUSE mount of a temporary backing directory, served by
//! `porta_fs::serve` on threads of the test process; unmounted and cleaned on drop,
//! also when the test fails.
#![allow(dead_code)]

use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use porta_fs::{mount, serve, sys, Config, Shared};

/// Skips the test (returns) unless running as root.
#[macro_export]
macro_rules! require_root {
    () => {
        if !porta_sys::user::is_root() {
            eprintln!("skipped: needs root");
            return;
        }
    };
}

pub struct TestMount {
    pub dir: tempfile::TempDir,
    pub backing: PathBuf,
    pub mnt: PathBuf,
    fuse: Option<OwnedFd>,
    _root: OwnedFd,
    _proc: OwnedFd,
    thread: Option<std::thread::JoinHandle<Result<porta_fs::Exit, porta_fs::Error>>>,
    pub shared: Shared,
}

fn open_dir(p: &Path, flags: i32) -> OwnedFd {
    let c = CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    sys::openat(libc::AT_FDCWD, &c, flags | libc::O_DIRECTORY, 0).unwrap()
}

/// A temporary directory under /tmp holding empty `backing` and `mnt` directories.
#[allow(dead_code)]
pub fn scratch(prefix: &str) -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in("/tmp")
        .unwrap();
    let backing = dir.path().join("backing");
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&backing).unwrap();
    std::fs::create_dir(&mnt).unwrap();
    (dir, backing, mnt)
}

impl TestMount {
    pub fn new(passthrough: bool) -> TestMount {
        let (dir, backing, mnt) = scratch("porta-fs-test");
        Self::with_dirs(dir, backing, mnt, passthrough)
    }

    pub fn with_dirs(
        dir: tempfile::TempDir,
        backing: PathBuf,
        mnt: PathBuf,
        passthrough: bool,
    ) -> TestMount {
        Self::with_capacity(dir, backing, mnt, passthrough, 20000)
    }

    /// As `with_dirs`, with a shared table of `capacity` entries (which bounds the
    /// server's node budget).
    pub fn with_capacity(
        dir: tempfile::TempDir,
        backing: PathBuf,
        mnt: PathBuf,
        passthrough: bool,
        capacity: usize,
    ) -> TestMount {
        Self::with_shared(
            dir,
            backing,
            mnt,
            passthrough,
            Shared::anonymous(capacity).unwrap(),
        )
    }

    /// As `with_dirs`, on a shared state region the test prepared.
    pub fn with_shared(
        dir: tempfile::TempDir,
        backing: PathBuf,
        mnt: PathBuf,
        passthrough: bool,
        shared: Shared,
    ) -> TestMount {
        let fuse = mount::open_dev_fuse().unwrap();
        let m = mount::fsmount_fuse(fuse.as_raw_fd(), &mount::MountOptions::default()).unwrap();
        let target = std::ffi::CString::new(mnt.as_os_str().as_encoded_bytes()).unwrap();
        porta_sys::mount_api::move_mount_to(std::os::fd::AsFd::as_fd(&m), &target).unwrap();
        drop(m);
        let root = open_dir(&backing, libc::O_PATH);
        let procfd = open_dir(Path::new("/proc/self/fd"), libc::O_RDONLY);
        let cfg = Config {
            fuse_fd: fuse.as_raw_fd(),
            root_fd: root.as_raw_fd(),
            proc_fd: procfd.as_raw_fd(),
            shared,
            passthrough,
            threads: 2,
            ttl: Duration::from_secs(86400),
            backing_fd: -1,
            transport: porta_fs::Transport::Dev,
            rings: None,
        };
        let thread = std::thread::spawn(move || serve(&cfg));
        TestMount {
            dir,
            backing,
            mnt,
            fuse: Some(fuse),
            _root: root,
            _proc: procfd,
            thread: Some(thread),
            shared,
        }
    }

    pub fn passthrough_active(&self) -> bool {
        let flags = self
            .shared
            .hdr(porta_fs::shared::hdr::INIT_FLAGS)
            .load(std::sync::atomic::Ordering::Relaxed);
        flags & porta_fs::abi::init::PASSTHROUGH != 0
    }

    /// Runs `sh -c script` in `dir`; panics with its output when it fails.
    pub fn sh(&self, dir: &Path, script: &str) -> String {
        sh(dir, script)
    }
}

/// Directories a server holds open for listings (table entries of kind STREAM).
pub fn streams(sh: &Shared) -> usize {
    (0..sh.capacity() as i32)
        .filter(|&fd| sh.kind(fd) == porta_fs::shared::kind::STREAM)
        .count()
}

pub fn sh(dir: &Path, script: &str) -> String {
    let out = Command::new("sh")
        .arg("-ec")
        .arg(script)
        .current_dir(dir)
        .output()
        .unwrap();
    let so = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        panic!(
            "script failed in {}: {script}\nstdout: {so}\nstderr: {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    so
}

impl Drop for TestMount {
    fn drop(&mut self) {
        let _ = mount::unmount(&self.mnt);
        if let Some(t) = self.thread.take() {
            let deadline = Instant::now() + Duration::from_secs(10);
            while !t.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            if t.is_finished() {
                match t.join() {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => eprintln!("server ended with error: {e}"),
                    Err(_) => eprintln!("server thread panicked"),
                }
                drop(self.fuse.take());
            } else {
                eprintln!("server did not stop within 10 s; leaking its thread");
                std::mem::forget(self.fuse.take());
            }
        }
    }
}

/// An overlay mount (what containerd and Podman hand over as a container's root): a
/// lower layer filled by the test, an upper and a work directory, all in a directory of
/// its own under /tmp. Unmounted (lazily: a server's descriptors in this process may keep
/// it busy) and removed on drop; drop it after the FUSE mount served from it.
pub struct Overlay {
    pub merged: PathBuf,
    pub upper: PathBuf,
    layers: Option<tempfile::TempDir>,
}

impl Overlay {
    pub fn new(prefix: &str, fill_lower: impl FnOnce(&Path)) -> Overlay {
        let layers = tempfile::Builder::new()
            .prefix(prefix)
            .tempdir_in("/tmp")
            .unwrap();
        let [lower, upper, work, merged] =
            ["lower", "upper", "work", "merged"].map(|d| layers.path().join(d));
        for d in [&lower, &upper, &work, &merged] {
            std::fs::create_dir(d).unwrap();
        }
        fill_lower(&lower);
        let opts = format!(
            "lowerdir={},upperdir={},workdir={}",
            lower.display(),
            upper.display(),
            work.display()
        );
        let st = Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o", &opts])
            .arg(&merged)
            .status()
            .unwrap();
        assert!(st.success(), "mount overlay");
        Overlay {
            merged,
            upper,
            layers: Some(layers),
        }
    }
}

impl Drop for Overlay {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.merged).status();
        drop(self.layers.take());
    }
}
