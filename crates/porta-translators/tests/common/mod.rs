//! Test harness: a built-in served on a real FUSE mount made by the test (as root), on a
//! thread of the test process; unmounted on drop, also when the test fails.
#![allow(dead_code)]

use std::ffi::{CString, OsStr};
use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{RwLock, RwLockReadGuard};
use std::thread::JoinHandle;

use porta_translators::{Builtin, Error};

/// Skips the test (returns) unless running as root with /dev/fuse.
#[macro_export]
macro_rules! require_root {
    () => {
        if !nix::unistd::geteuid().is_root() || !std::path::Path::new("/dev/fuse").exists() {
            eprintln!("skipped: needs root and /dev/fuse");
            return;
        }
    };
}

/// A scratch directory under /tmp, world-searchable (tests run commands as uid 1000).
pub fn scratch(prefix: &str) -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in("/tmp")
        .unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// A built-in mounted at `mnt` (fuse, `default_permissions,allow_other`, source
/// "porta-test").
pub struct Mounted {
    pub dir: tempfile::TempDir,
    pub mnt: PathBuf,
    /// Whether `mnt` is still mounted (by this test).
    mounted: bool,
    server: Option<Server>,
}

/// Who serves the mount: a thread of the test, or a child process with other credentials.
enum Server {
    Thread(JoinHandle<Result<(), Error>>),
    Child(Child),
}

/// The environment variable that makes `serve_helper` serve (fd, name, args, one a line).
const SERVE_ENV: &str = "PORTA_TRANSLATORS_TEST_SERVE";

fn cstr(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

impl Mounted {
    /// Parses, prepares and mounts `name args...` (prepare runs in the test's cwd).
    pub fn new(name: &str, args: &[&str]) -> Mounted {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let prepared = Builtin::parse(name, &args).unwrap().prepare().unwrap();
        let (mut m, fuse) = mount_fuse();
        let thread = std::thread::spawn(move || prepared.serve(fuse));
        m.server = Some(Server::Thread(thread));
        m
    }

    /// Mounts `name args...` served by a child process running as `uid`:`uid` with no
    /// supplementary groups and no capabilities, as the supervisor runs a built-in. The
    /// child is this test binary running `helper_test` (which calls `serve_helper`).
    pub fn new_as(uid: u32, helper_test: &str, name: &str, args: &[&str]) -> Mounted {
        use std::os::unix::process::CommandExt;
        let (mut m, fuse) = mount_fuse();
        // No process may start while the copy is open for writing (a forked child holding
        // it would make the exec below fail with ETXTBSY).
        let _exclusive = FORKS.write().unwrap_or_else(|p| p.into_inner());
        // The test binary, copied where any uid may run it.
        let exe = m.dir.path().join("helper");
        std::fs::copy(std::env::current_exe().unwrap(), &exe).unwrap();
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
        // A descriptor of the connection the child inherits (not close-on-exec).
        let inherited = nix::unistd::dup(fuse.as_raw_fd()).unwrap();
        let mut spec = format!("{inherited}\n{name}");
        for a in args {
            spec.push('\n');
            spec.push_str(a);
        }
        let child = Command::new(&exe)
            .args([helper_test, "--exact", "--nocapture", "--test-threads=1"])
            .env(SERVE_ENV, spec)
            .current_dir(m.dir.path())
            .uid(uid)
            .gid(uid)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn();
        // SAFETY: `inherited` is ours (from dup), the child has its own copy now.
        drop(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(inherited) });
        drop(fuse);
        m.server = Some(Server::Child(child.unwrap()));
        m
    }
}

/// In a child started by `Mounted::new_as`: prepares and serves the built-in named in the
/// environment, exiting with failure (and the error on stderr) if that fails. Elsewhere:
/// returns at once.
pub fn serve_helper() {
    let Ok(spec) = std::env::var(SERVE_ENV) else {
        return;
    };
    let mut lines = spec.split('\n');
    let fd: i32 = lines.next().unwrap().parse().unwrap();
    let name = lines.next().unwrap().to_string();
    let args: Vec<String> = lines.map(str::to_string).collect();
    // SAFETY: the parent passed this descriptor for this process to own.
    let fuse = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let result = Builtin::parse(&name, &args)
        .and_then(|b| b.prepare())
        .and_then(|p| p.serve(fuse));
    if let Err(e) = result {
        eprintln!("{e}");
        std::process::exit(1);
    }
    std::process::exit(0);
}

/// A scratch directory with `mnt`, a FUSE connection mounted there (unmounted when the
/// `Mounted` drops, also before a server is set), and the connection's descriptor.
fn mount_fuse() -> (Mounted, OwnedFd) {
    let dir = scratch("porta-translators-");
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let fuse: OwnedFd = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
        .unwrap()
        .into();
    let opts = format!(
        "fd={},rootmode=40000,user_id=0,group_id=0,default_permissions,allow_other",
        fuse.as_raw_fd()
    );
    let opts = CString::new(opts).unwrap();
    // SAFETY: all pointers are to NUL-terminated strings that outlive the call.
    let rc = unsafe {
        libc::mount(
            c"porta-test".as_ptr(),
            cstr(&mnt).as_ptr(),
            c"fuse".as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV,
            opts.as_ptr().cast(),
        )
    };
    assert_eq!(rc, 0, "mount: {}", io::Error::last_os_error());
    let m = Mounted {
        dir,
        mnt,
        mounted: true,
        server: None,
    };
    (m, fuse)
}

impl Mounted {
    /// A path in the mount.
    pub fn p(&self, rel: &str) -> PathBuf {
        self.mnt.join(rel)
    }

    /// Unmounts and returns what `serve` returned (for a child: its stderr on failure).
    pub fn finish(mut self) -> Result<(), String> {
        self.unmount().expect("the server ended")
    }

    fn unmount(&mut self) -> Option<Result<(), String>> {
        if std::mem::take(&mut self.mounted) {
            // Detached: a process forked by another test at this moment holds copies of
            // this test's descriptors until it execs; the connection ends (and the
            // server with it) when the last of them is closed.
            // SAFETY: the path is NUL-terminated and outlives the call.
            let rc = unsafe { libc::umount2(cstr(&self.mnt).as_ptr(), libc::MNT_DETACH) };
            assert_eq!(
                rc,
                0,
                "umount {}: {}",
                self.mnt.display(),
                io::Error::last_os_error()
            );
        }
        let server = self.server.take()?;
        Some(match server {
            Server::Thread(thread) => thread
                .join()
                .expect("serve thread panicked")
                .map_err(|e| e.to_string()),
            Server::Child(child) => {
                let out = child.wait_with_output().unwrap();
                if out.status.success() {
                    Ok(())
                } else {
                    Err(format!(
                        "{}: {}",
                        out.status,
                        String::from_utf8_lossy(&out.stderr)
                    ))
                }
            }
        })
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if let Some(Err(e)) = self.unmount() {
            if !std::thread::panicking() {
                panic!("serve ended with an error: {e}");
            }
        }
    }
}

/// Held (shared) by a test that needs no other process to hold copies of its descriptors
/// (a forked child does until it execs); held exclusively while a test starts a process.
static FORKS: RwLock<()> = RwLock::new(());

/// Keeps other tests of this binary from starting processes while the guard lives.
pub fn no_forks() -> RwLockReadGuard<'static, ()> {
    FORKS.read().unwrap_or_else(|p| p.into_inner())
}

/// Starts a process (`Command::spawn` returns once it has exec'd).
pub fn spawn(cmd: &mut Command) -> io::Result<Child> {
    let _exclusive = FORKS.write().unwrap_or_else(|p| p.into_inner());
    cmd.spawn()
}

/// Runs `script` with `sh -c` as uid and gid 1000 (no supplementary groups); its status
/// and output.
pub fn as_user(script: &str) -> std::process::Output {
    use std::os::unix::process::CommandExt;
    let child = spawn(
        Command::new("/bin/sh")
            .arg("-c")
            .arg(script)
            .uid(1000)
            .gid(1000)
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    )
    .unwrap();
    child.wait_with_output().unwrap()
}

/// The errno of a failed std call.
pub fn errno<T: std::fmt::Debug>(r: io::Result<T>) -> i32 {
    r.expect_err("expected an error").raw_os_error().unwrap()
}

/// `getxattr(2)` (no follow) as a Result.
pub fn getxattr(path: &Path, name: &str) -> io::Result<Vec<u8>> {
    let p = cstr(path);
    let n = CString::new(name).unwrap();
    let mut buf = vec![0u8; 4096];
    // SAFETY: the buffer is valid for its length; strings are NUL-terminated.
    let rc = unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    buf.truncate(rc as usize);
    Ok(buf)
}

/// `setxattr(2)` (no follow) as a Result.
pub fn setxattr(path: &Path, name: &str, value: &[u8], flags: i32) -> io::Result<()> {
    let p = cstr(path);
    let n = CString::new(name).unwrap();
    // SAFETY: the value is valid for its length; strings are NUL-terminated.
    let rc = unsafe {
        libc::lsetxattr(
            p.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            flags,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `listxattr(2)` (no follow): the names.
pub fn listxattr(path: &Path) -> io::Result<Vec<String>> {
    let p = cstr(path);
    let mut buf = vec![0u8; 4096];
    // SAFETY: the buffer is valid for its length; the path is NUL-terminated.
    let rc = unsafe { libc::llistxattr(p.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    buf.truncate(rc as usize);
    Ok(buf
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect())
}

/// `renameat2(2)` with `flags`.
pub fn rename2(from: &Path, to: &Path, flags: u32) -> io::Result<()> {
    let (f, t) = (cstr(from), cstr(to));
    // SAFETY: both paths are NUL-terminated and outlive the call.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            f.as_ptr(),
            libc::AT_FDCWD,
            t.as_ptr(),
            flags,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Names in a directory, sorted.
pub fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Whether `OsStr` paths are equal as bytes (for symlink targets).
pub fn bytes(p: &Path) -> &[u8] {
    OsStr::as_bytes(p.as_os_str())
}
