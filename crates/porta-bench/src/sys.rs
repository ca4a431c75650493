//! Small Linux helpers: the private mount namespace, child subreaper, signals, waiting with a
//! time limit (pidfd), process trees, PSS and host memory.

use anyhow::{bail, Context, Result};
use porta_sys::proc::Stat;
use std::collections::{HashMap, HashSet};
use std::ffi::CString;
use std::io::Read;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Installs SIGINT/SIGTERM/SIGHUP handlers that only set a flag; the harness checks it between
/// steps and cleans up.
pub fn install_signal_handlers() {
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only stores to an atomic.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as *const () as usize;
            sa.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
}

/// True once SIGINT, SIGTERM or SIGHUP has arrived (see [`install_signal_handlers`]).
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

fn cstr(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).expect("path without NUL")
}

/// Moves the calling (still single-threaded) process into a private mount namespace, makes every
/// mount private and unmounts the cgroup2 hierarchy of this hybrid host at
/// /sys/fs/cgroup/unified, so that crun 1.8.1 accepts the host. Every environment inherits
/// this namespace, so the workaround applies to all alike. Returns a note for the report.
pub fn enter_private_mount_namespace() -> Result<String> {
    // SAFETY: plain syscalls; called before any thread is started.
    unsafe {
        if libc::unshare(libc::CLONE_NEWNS) != 0 {
            bail!("unshare(CLONE_NEWNS): {}", std::io::Error::last_os_error());
        }
        let root = c"/";
        if libc::mount(
            std::ptr::null(),
            root.as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        ) != 0
        {
            bail!("making / rprivate: {}", std::io::Error::last_os_error());
        }
    }
    let unified = Path::new("/sys/fs/cgroup/unified");
    let mounted = porta_sys::proc::own_mountinfo()
        .unwrap_or_default()
        .iter()
        .any(|m| m.mount_point == unified);
    if mounted {
        // SAFETY: plain syscall.
        if unsafe { libc::umount2(cstr(unified).as_ptr(), libc::MNT_DETACH) } != 0 {
            bail!(
                "umount /sys/fs/cgroup/unified: {}",
                std::io::Error::last_os_error()
            );
        }
        Ok("All environments (native too) run inside one private mount namespace of the harness in which the cgroup2 hierarchy /sys/fs/cgroup/unified of this hybrid host is unmounted; crun 1.8.1 refuses the hybrid layout otherwise (\"cgroups in hybrid mode not supported\"). Containers therefore use the cgroup v1 controllers only.".into())
    } else {
        Ok("All environments run inside one private mount namespace of the harness (no /sys/fs/cgroup/unified mount to hide on this host).".into())
    }
}

/// Makes this process the child subreaper: processes that runtimes leave running (container
/// init, runsc sandbox, Porta's supervisor) are reparented to the harness, which can then
/// measure and reap them.
pub fn set_child_subreaper() -> Result<()> {
    // SAFETY: plain prctl.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
        bail!(
            "PR_SET_CHILD_SUBREAPER: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

/// Reaps every exited child without blocking. Only call it when no `std::process::Child` is
/// outstanding (the harness is sequential, so between steps).
pub fn reap_zombies() {
    loop {
        let mut st = 0;
        // SAFETY: plain syscall.
        let r = unsafe { libc::waitpid(-1, &mut st, libc::WNOHANG) };
        if r <= 0 {
            break;
        }
    }
}

/// Reaps our zombie children except `except` (which a `std::process::Child` still owns).
pub fn reap_other_zombies(except: i32) {
    let me = std::process::id() as i32;
    for p in all_pids() {
        if p == except {
            continue;
        }
        let Some(st) = Stat::of(p) else {
            continue;
        };
        if st.state == 'Z' && st.ppid == me {
            let mut st = 0;
            // SAFETY: our own zombie child.
            unsafe { libc::waitpid(p, &mut st, libc::WNOHANG) };
        }
    }
}

/// Waits until process `pid` (any process, not only a child) has exited, polling its pidfd so
/// that the wait is exact. Returns false on time-out or interruption. A process that is our
/// child is reaped.
pub fn wait_pid_exit(pid: i32, timeout: Duration) -> bool {
    let done = wait_pid_exit_nonreaping(pid, timeout);
    if done && parent_of(pid) == Some(std::process::id() as i32) {
        let mut st = 0;
        // SAFETY: plain syscall on our own child.
        unsafe { libc::waitpid(pid, &mut st, 0) };
    }
    done
}

/// Waits for `pid` to exit and reaps it, if it is our child (blocking: call it after a
/// SIGKILL). Anything else is left alone.
pub fn reap_child(pid: i32) {
    if parent_of(pid) == Some(std::process::id() as i32) {
        let mut st = 0;
        // SAFETY: plain syscall on our own child.
        unsafe { libc::waitpid(pid, &mut st, 0) };
    }
}

/// Waits for a child with a time limit; on time-out or interruption kills its process group
/// and returns an error.
pub fn wait_child(child: &mut Child, timeout: Duration, what: &str) -> Result<ExitStatus> {
    let pid = child.id() as i32;
    let ok = wait_pid_exit_nonreaping(pid, timeout);
    if !ok {
        kill_group(pid);
        let _ = child.wait();
        if interrupted() {
            bail!("{what}: interrupted");
        }
        bail!("{what}: no exit within {} s, killed", timeout.as_secs());
    }
    Ok(child.wait()?)
}

fn wait_pid_exit_nonreaping(pid: i32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    let Ok(fd) = porta_sys::pidfd::open(pid) else {
        return true;
    };
    let mut done = false;
    while !interrupted() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        let slice = left.clamp(Duration::from_millis(1), Duration::from_millis(50));
        if porta_sys::pidfd::wait_exit(fd.as_fd(), Some(slice)).unwrap_or(false) {
            done = true;
            break;
        }
        // While a runtime command runs, processes it left to us may exit; a runtime waiting
        // for one of them (runsc delete waits for its gofer) would wait for ever on a zombie.
        reap_other_zombies(pid);
    }
    done
}

/// SIGKILL to the process group led by `pid` (children are spawned as group leaders) and the
/// process itself.
pub fn kill_group(pid: i32) {
    // SAFETY: plain syscalls.
    unsafe {
        libc::kill(-pid, libc::SIGKILL);
        libc::kill(pid, libc::SIGKILL);
    }
}

/// Sends `sig` to `pid` (best effort: a process already gone is no error).
pub fn kill_pid(pid: i32, sig: i32) {
    // SAFETY: plain syscall.
    unsafe { libc::kill(pid, sig) };
}

/// The pre_exec action of the native environment: chroot into the shared root file system.
pub fn chroot_action(rootfs: &Path) -> impl FnMut() -> std::io::Result<()> + Send + Sync + 'static {
    let root = cstr(rootfs);
    move || {
        // SAFETY: async-signal-safe syscalls between fork and exec.
        unsafe {
            if libc::chroot(root.as_ptr()) != 0 || libc::chdir(c"/".as_ptr()) != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(())
    }
}

/// Parent pid of a process, from /proc/PID/stat.
pub fn parent_of(pid: i32) -> Option<i32> {
    Stat::of(pid).map(|s| s.ppid)
}

/// All pids currently in /proc.
pub fn all_pids() -> Vec<i32> {
    let mut v = Vec::new();
    if let Ok(rd) = std::fs::read_dir("/proc") {
        for e in rd.flatten() {
            if let Some(p) = e.file_name().to_str().and_then(|s| s.parse().ok()) {
                v.push(p);
            }
        }
    }
    v
}

/// Every descendant of `root` (not `root` itself).
pub fn descendants(root: i32) -> Vec<i32> {
    let mut children: HashMap<i32, Vec<i32>> = HashMap::new();
    for p in all_pids() {
        if let Some(pp) = parent_of(p) {
            children.entry(pp).or_default().push(p);
        }
    }
    let mut out = Vec::new();
    let mut stack = vec![root];
    while let Some(p) = stack.pop() {
        if let Some(cs) = children.get(&p) {
            for &c in cs {
                out.push(c);
                stack.push(c);
            }
        }
    }
    out
}

/// The executable of a process (`/proc/PID/exe`).
pub fn exe_of(pid: i32) -> Option<PathBuf> {
    std::fs::read_link(format!("/proc/{pid}/exe")).ok()
}

/// The command name of a process (`/proc/PID/comm`; empty when it is gone).
pub fn comm_of(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Proportional set size of a process in KiB (from smaps_rollup); None for kernel threads or
/// vanished processes.
pub fn pss_kib(pid: i32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    s.lines()
        .find(|l| l.starts_with("Pss:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn meminfo() -> HashMap<String, u64> {
    let mut m = HashMap::new();
    for l in std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
    {
        let mut it = l.split_whitespace();
        if let (Some(k), Some(v)) = (it.next(), it.next()) {
            if let Ok(v) = v.parse() {
                m.insert(k.trim_end_matches(':').to_string(), v);
            }
        }
    }
    m
}

/// Host used memory in KiB including page cache: MemTotal - MemFree.
pub fn host_used_kib() -> u64 {
    let m = meminfo();
    m.get("MemTotal")
        .copied()
        .unwrap_or(0)
        .saturating_sub(m.get("MemFree").copied().unwrap_or(0))
}

/// The host's total memory in KiB (MemTotal of /proc/meminfo; 0 when unknown).
pub fn mem_total_kib() -> u64 {
    meminfo().get("MemTotal").copied().unwrap_or(0)
}

/// True when the ELF file has no PT_INTERP program header (i.e. it is statically linked, static
/// PIE included).
pub fn is_static_elf(path: &Path) -> Result<bool> {
    let mut f = std::fs::File::open(path).with_context(|| format!("open {}", path.display()))?;
    let mut b = Vec::new();
    f.read_to_end(&mut b)?;
    if b.len() < 64 || &b[..4] != b"\x7fELF" || b[4] != 2 {
        bail!("{}: not a 64-bit ELF file", path.display());
    }
    let u64le = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap());
    let u16le = |o: usize| u16::from_le_bytes(b[o..o + 2].try_into().unwrap());
    let phoff = u64le(0x20) as usize;
    let phentsize = u16le(0x36) as usize;
    let phnum = u16le(0x38) as usize;
    for i in 0..phnum {
        let o = phoff + i * phentsize;
        if o + 4 > b.len() {
            bail!("{}: truncated program headers", path.display());
        }
        if u32::from_le_bytes(b[o..o + 4].try_into().unwrap()) == 3 {
            return Ok(false); // PT_INTERP
        }
    }
    Ok(true)
}

/// The set of pids at a moment, to find processes that appeared later.
pub fn pid_set() -> HashSet<i32> {
    all_pids().into_iter().collect()
}

/// File-system type of the mount holding `path` (longest matching mount point).
pub fn fs_type(path: &Path) -> String {
    let path = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let mut best = (0usize, String::from("unknown"));
    for l in std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
    {
        let f: Vec<&str> = l.split_whitespace().collect();
        let Some(sep) = f.iter().position(|x| *x == "-") else {
            continue;
        };
        let mp = f.get(4).copied().unwrap_or("");
        if path.starts_with(mp) && mp.len() >= best.0 {
            best = (
                mp.len(),
                format!(
                    "{} ({})",
                    f.get(sep + 1).unwrap_or(&"?"),
                    f.get(sep + 2).unwrap_or(&"?")
                ),
            );
        }
    }
    best.1
}

/// Writes back dirty data and drops the kernel's clean page cache, dentries and inodes, so
/// the next file-system walk starts cold for every environment alike.
pub fn drop_caches() -> Result<()> {
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
    std::fs::write("/proc/sys/vm/drop_caches", b"3\n")
        .context("dropping the kernel caches (/proc/sys/vm/drop_caches)")
}

/// Mounts an overlay file system on `target` with the mount options `opts`.
pub fn mount_overlay(target: &Path, opts: &str) -> Result<()> {
    let t = cstr(target);
    let o = std::ffi::CString::new(opts).context("overlay options contain a NUL")?;
    // SAFETY: mount(2) with NUL-terminated strings that outlive the call.
    let r = unsafe {
        libc::mount(
            c"overlay".as_ptr(),
            t.as_ptr(),
            c"overlay".as_ptr(),
            0,
            o.as_ptr().cast(),
        )
    };
    if r != 0 {
        let e = std::io::Error::last_os_error();
        bail!("mount overlay on {} ({opts}): {e}", target.display());
    }
    Ok(())
}

/// Detaches the mount on `target`, if there is one (errors are ignored: nothing mounted).
pub fn unmount(target: &Path) {
    let t = cstr(target);
    // SAFETY: umount2(2) with a NUL-terminated path that outlives the call.
    unsafe { libc::umount2(t.as_ptr(), libc::MNT_DETACH) };
}

/// The number of online CPUs (`sysconf(_SC_NPROCESSORS_ONLN)`, at least 1).
pub fn online_cpus() -> usize {
    // SAFETY: sysconf takes a constant and has no side effects.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    usize::try_from(n).ok().filter(|&n| n > 0).unwrap_or(1)
}

/// CPU hogs for `--load`: child processes that only spin, at nice 0, each in a session of
/// its own (so, with the scheduler's autogroups, each competes with the measured processes
/// as one scheduling entity of its own, as a separate service or container would, rather than
/// all of them sharing the harness's group). Each is killed and reaped by [`Hogs::stop`] or
/// when the value is dropped (also on an error path, and the harness's Ctrl-C handling drops
/// it); each also has `PR_SET_PDEATHSIG` = SIGKILL, so none survives the harness even if the
/// harness is killed itself.
#[derive(Debug)]
pub struct Hogs {
    pids: Vec<i32>,
}

impl Hogs {
    /// Starts `n` busy loops at nice 0.
    pub fn start(n: usize) -> Result<Hogs> {
        let mut h = Hogs {
            pids: Vec::with_capacity(n),
        };
        for _ in 0..n {
            // On an error, dropping `h` stops the hogs already started.
            h.pids.push(fork_hog().context("fork a CPU hog")?);
        }
        Ok(h)
    }

    /// The hogs' process ids.
    pub fn pids(&self) -> &[i32] {
        &self.pids
    }

    /// Kills and reaps every hog.
    pub fn stop(&mut self) {
        for p in std::mem::take(&mut self.pids) {
            kill_pid(p, libc::SIGKILL);
            let mut st = 0;
            // SAFETY: `p` is our own child; waitpid only writes the status. ECHILD (already
            // reaped by a catch-all reap) is fine.
            unsafe { libc::waitpid(p, &mut st, 0) };
        }
    }
}

impl Drop for Hogs {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Forks one busy loop; returns its pid in the parent. The child never returns.
fn fork_hog() -> std::io::Result<i32> {
    // SAFETY: getpid has no preconditions.
    let parent = unsafe { libc::getpid() };
    // SAFETY: fork in a possibly multi-threaded process: the child only makes
    // async-signal-safe system calls (prctl, getppid, signal, setsid, setpriority, _exit) and then
    // spins in pure arithmetic, never allocating or taking a lock.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(std::io::Error::last_os_error());
    }
    if pid == 0 {
        // SAFETY: see above; all are async-signal-safe.
        unsafe {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
            if libc::getppid() != parent {
                libc::_exit(0);
            }
            for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
                libc::signal(sig, libc::SIG_DFL);
            }
            libc::setsid();
            libc::setpriority(libc::PRIO_PROCESS, 0, 0);
        }
        spin();
    }
    Ok(pid)
}

fn spin() -> ! {
    let mut x: u64 = 1;
    loop {
        x = std::hint::black_box(
            x.wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407),
        );
    }
}

/// Unmounts `target` (waiting for a FUSE server to see it gone); when it is busy, detaches
/// it instead. Errors are ignored: nothing mounted.
pub fn unmount_or_detach(target: &Path) {
    let t = cstr(target);
    // SAFETY: umount2(2) with a NUL-terminated path that outlives the call.
    if unsafe { libc::umount2(t.as_ptr(), 0) } != 0
        && std::io::Error::last_os_error().raw_os_error() == Some(libc::EBUSY)
    {
        // SAFETY: as above.
        unsafe { libc::umount2(t.as_ptr(), libc::MNT_DETACH) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_helpers() {
        let me = std::process::id() as i32;
        assert!(parent_of(me).is_some());
        assert!(pss_kib(me).unwrap_or(1) > 0);
        let mut c = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        assert!(descendants(me).contains(&(c.id() as i32)));
        c.kill().unwrap();
        c.wait().unwrap();
        assert!(host_used_kib() > 0);
    }

    #[test]
    fn wait_with_timeout() {
        let mut c = std::process::Command::new("sleep")
            .arg("10")
            .process_group(0)
            .spawn()
            .unwrap();
        let t = Instant::now();
        assert!(wait_child(&mut c, Duration::from_millis(300), "sleep").is_err());
        assert!(t.elapsed() < Duration::from_secs(5));
        let mut c = std::process::Command::new("true").spawn().unwrap();
        assert!(wait_child(&mut c, Duration::from_secs(10), "true")
            .unwrap()
            .success());
    }

    #[test]
    fn static_elf_detection() {
        assert!(!is_static_elf(Path::new("/bin/sh")).unwrap());
        if Path::new("/bin/busybox").exists() {
            assert!(is_static_elf(Path::new("/bin/busybox")).unwrap());
        }
    }

    #[test]
    fn hogs_spin_and_are_reaped() {
        let mut h = Hogs::start(2).unwrap();
        let pids = h.pids().to_vec();
        assert_eq!(pids.len(), 2);
        for &p in &pids {
            // Running or runnable, never sleeping: a busy loop.
            let st = Stat::of(p).unwrap();
            assert_eq!(st.ppid, std::process::id() as i32);
            assert_ne!(st.state, 'Z');
        }
        h.stop();
        assert!(h.pids().is_empty());
        for p in pids {
            assert!(Stat::of(p).is_none(), "hog {p} still exists");
        }
        // Dropping stops them as well.
        let pids = Hogs::start(1).unwrap().pids().to_vec();
        assert!(Stat::of(pids[0]).is_none());
        assert!(online_cpus() >= 1);
    }

    use std::os::unix::process::CommandExt;
}
