//! The supervisor end to end: launch (detached daemon, fsmount, mount fd handed over),
//! serving, restart after SIGKILL / SIGSEGV / SIGSTOP / deadlock, giving up, stop,
//! and the kill-every-100-ms transparent-restart workload. Needs root.

use std::collections::BTreeSet;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use porta_supervisor::{
    launch, read_state, servers, stop, watch_container, LaunchSpec, ServerStatus, SupervisorState,
};

/// Skips the test (returns) unless running as root.
macro_rules! require_root {
    () => {
        if !porta_sys::user::is_root() {
            eprintln!("skipped: needs root");
            return;
        }
    };
}

/// Tests share the process environment (PORTA_FS_FAULT): one container at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

struct Container {
    _serial: std::sync::MutexGuard<'static, ()>,
    dir: tempfile::TempDir,
    state: PathBuf,
    backing: PathBuf,
    mnt: PathBuf,
    pid: i32,
}

impl Container {
    fn start(passthrough: bool, fault: Option<&str>) -> Container {
        Self::start_with(passthrough, fault, None)
    }

    fn start_with(passthrough: bool, fault: Option<&str>, hang_ms: Option<&str>) -> Container {
        Self::start_inner(passthrough, fault, hang_ms, true, None)
    }

    /// A container whose file servers get a descriptor budget of `nofile`
    /// (PORTA_FS_NOFILE): past about half of it, new nodes are cold.
    fn start_with_nofile(passthrough: bool, nofile: u64) -> Container {
        Self::start_inner(passthrough, None, None, true, Some(nofile))
    }

    /// A container whose supervisor is told not to use a user namespace.
    fn start_without_userns(passthrough: bool) -> Container {
        Self::start_inner(passthrough, None, None, false, None)
    }

    fn start_inner(
        passthrough: bool,
        fault: Option<&str>,
        hang_ms: Option<&str>,
        userns: bool,
        nofile: Option<u64>,
    ) -> Container {
        // The environment is the launched supervisor's: set it only under the lock.
        let serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
        match hang_ms {
            Some(v) => std::env::set_var("PORTA_HANG_TIMEOUT_MS", v),
            None => std::env::remove_var("PORTA_HANG_TIMEOUT_MS"),
        }
        match nofile {
            Some(n) => std::env::set_var("PORTA_FS_NOFILE", n.to_string()),
            None => std::env::remove_var("PORTA_FS_NOFILE"),
        }
        if userns {
            std::env::remove_var("PORTA_FS_USERNS");
        } else {
            std::env::set_var("PORTA_FS_USERNS", "0");
        }
        let dir = tempfile::Builder::new()
            .prefix("psv")
            .tempdir_in("/tmp")
            .unwrap();
        let state = dir.path().join("s");
        let backing = dir.path().join("rootfs");
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&backing).unwrap();
        std::fs::create_dir(&mnt).unwrap();
        match fault {
            Some(f) => std::env::set_var("PORTA_FS_FAULT", f),
            None => std::env::remove_var("PORTA_FS_FAULT"),
        }
        let spec = test_spec(dir.path(), passthrough);
        let l = launch(&spec, None).unwrap_or_else(|e| {
            panic!(
                "launch: {e}\nlog: {}",
                std::fs::read_to_string(&spec.log).unwrap_or_default()
            )
        });
        let target = std::ffi::CString::new(mnt.as_os_str().as_encoded_bytes()).unwrap();
        porta_sys::mount_api::move_mount_to(std::os::fd::AsFd::as_fd(&l.mount_fd), &target)
            .unwrap();
        drop(l.mount_fd);
        Container {
            _serial: serial,
            dir,
            state,
            backing,
            mnt,
            pid: l.supervisor_pid,
        }
    }

    fn fs(&self) -> ServerStatus {
        servers(&self.state)
            .unwrap()
            .into_iter()
            .find(|s| s.name == "fs")
            .unwrap()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("supervisor.log")).unwrap_or_default()
    }

    fn wait_for(&self, what: &str, f: impl Fn(&ServerStatus) -> bool) -> ServerStatus {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(v) = servers(&self.state) {
                if let Some(s) = v.into_iter().find(|s| s.name == "fs") {
                    if f(&s) {
                        return s;
                    }
                }
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// The launch of a supervisor test container in `dir` (state `dir/s`, root `dir/rootfs`,
/// log `dir/supervisor.log`).
fn test_spec(dir: &Path, passthrough: bool) -> LaunchSpec {
    LaunchSpec {
        id: "t1".into(),
        state_dir: dir.join("s"),
        rootfs: dir.join("rootfs"),
        passthrough,
        host_changes: true,
        transport: porta_supervisor::protocol::keeper::Transport::Dev,
        server_cgroup_procs: vec![],
        exe: std::env::var_os("PORTA_TEST_EXE")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_porta-supervisor-test"))),
        log: dir.join("supervisor.log"),
        api_fd: None,
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = stop(&self.state);
        let _ = porta_fs::mount::unmount(&self.mnt);
    }
}

fn no_fd_of(pid: i32, what: &str) -> bool {
    // The supervisor holds no descriptor on the caller's stdio or pipes.
    let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return true;
    };
    for e in rd.flatten() {
        if let Ok(t) = std::fs::read_link(e.path()) {
            if t.to_string_lossy().contains(what) {
                return false;
            }
        }
    }
    true
}

#[test]
fn launch_serve_state_and_stop() {
    require_root!();
    let c = Container::start(true, None);
    std::fs::write(c.mnt.join("hello"), b"world").unwrap();
    assert_eq!(std::fs::read(c.backing.join("hello")).unwrap(), b"world");
    let s = c.fs();
    assert!(
        s.pid > 0 && s.restarts == 0 && s.state == "running",
        "{s:?}"
    );
    // The descriptor table the servers share was grown before it was shared (growing it
    // later stalls the server at every doubling).
    let fd_size = porta_fs::sys::fd_table_size(Some(s.pid)).unwrap();
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", s.pid)).unwrap();
    let soft: usize = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .unwrap()
        .parse()
        .unwrap();
    let want = porta_fs::keeper::FD_TABLE_AT_START.min(soft);
    assert!(fd_size >= want, "FDSize {fd_size}, want at least {want}");
    // Detached: its own session, not our child, stdio on the log file.
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", c.pid)).unwrap();
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    assert_ne!(
        fields[1].parse::<u32>().unwrap(),
        std::process::id(),
        "supervisor must not be our child"
    );
    // Its own session (made by setsid before the second fork), of which it is not the
    // leader: it can never acquire a controlling terminal.
    // SAFETY: getsid(0) always succeeds.
    let our_sid = unsafe { libc::getsid(0) };
    assert_ne!(
        fields[3],
        our_sid.to_string(),
        "supervisor must be in a session of its own"
    );
    assert_ne!(
        fields[3],
        c.pid.to_string(),
        "supervisor must not be a session leader"
    );
    let own_stdout = std::fs::read_link("/proc/self/fd/1").unwrap();
    assert!(
        no_fd_of(c.pid, &own_stdout.to_string_lossy())
            || own_stdout.to_string_lossy().contains("/dev/null")
    );
    // Mount is not in the supervisor's mount table (new mount API).
    let mi = std::fs::read_to_string(format!("/proc/{}/mountinfo", c.pid)).unwrap();
    assert!(!mi.contains("porta-t1") || mi.contains(&c.mnt.to_string_lossy().to_string()));
    let spid = c.pid;
    stop(&c.state).unwrap();
    assert!(
        !Path::new(&format!("/proc/{spid}")).exists()
            || std::fs::read_to_string(format!("/proc/{spid}/stat"))
                .map(|s| s.contains(") Z"))
                .unwrap_or(true)
    );
    // The connection is aborted: the mount answers ENOTCONN, never hangs.
    let e = std::fs::read(c.mnt.join("hello")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ENOTCONN), "{e}");
    assert_eq!(c.fs().state, "stopped");
    stop(&c.state).unwrap(); // repeatable
}

fn restart_after_signal(sig: i32) {
    let c = Container::start(true, None);
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(c.mnt.join("open-across"))
        .unwrap();
    f.write_all(b"before ").unwrap();
    std::fs::create_dir_all(c.mnt.join("a/b")).unwrap();
    let old = c.fs();
    // SAFETY: signalling the server process the supervisor reported.
    assert_eq!(unsafe { libc::kill(old.pid, sig) }, 0);
    let new = c.wait_for("a restarted server", |s| {
        s.restarts == 1 && s.pid > 0 && s.pid != old.pid
    });
    assert!(
        new.error.as_deref().unwrap_or("").contains("killed by"),
        "{new:?}"
    );
    // The open file and the nodes the kernel holds survive the server.
    f.write_all(b"after").unwrap();
    f.sync_all().unwrap();
    f.seek(SeekFrom::Start(0)).unwrap();
    let mut s = String::new();
    f.read_to_string(&mut s).unwrap();
    assert_eq!(s, "before after");
    std::fs::write(c.mnt.join("a/b/new"), b"x").unwrap();
    assert!(c.log().contains("restarting"), "{}", c.log());
    // The replacement, in its user namespace, wrote FUSE_NOTIFY_RESEND to the
    // connection the supervisor opened in the initial one.
    assert!(
        !c.log().contains("FUSE_NOTIFY_RESEND failed"),
        "{}",
        c.log()
    );
}

#[test]
fn restart_after_sigkill() {
    require_root!();
    restart_after_signal(libc::SIGKILL);
}

#[test]
fn restart_after_sigsegv() {
    require_root!();
    restart_after_signal(libc::SIGSEGV);
}

#[test]
fn stopped_server_is_replaced() {
    require_root!();
    let c = Container::start(true, None);
    let old = c.fs();
    // SAFETY: signalling the server process the supervisor reported.
    unsafe { libc::kill(old.pid, libc::SIGSTOP) };
    // Requests queue while it is stopped, then the replacement answers them.
    let t0 = Instant::now();
    std::fs::write(c.mnt.join("while-stopped"), b"ok").unwrap();
    let new = c.wait_for("replacement of a stopped server", |s| s.restarts == 1);
    assert!(
        new.error.as_deref().unwrap_or("").contains("stopped"),
        "{new:?}"
    );
    eprintln!("write through a SIGSTOPped server took {:?}", t0.elapsed());
    assert_eq!(
        std::fs::read(c.backing.join("while-stopped")).unwrap(),
        b"ok"
    );
}

#[test]
fn deadlocked_server_is_replaced() {
    require_root!();
    let c = Container::start_with(true, Some("hang:deadlock-here"), Some("1000"));
    std::env::remove_var("PORTA_FS_FAULT");
    std::env::remove_var("PORTA_HANG_TIMEOUT_MS");
    // The hang needs the supervisor's hang timeout (1 s here, 10 s by default) to pass.
    let t0 = Instant::now();
    let r = std::fs::metadata(c.mnt.join("deadlock-here"));
    let waited = t0.elapsed();
    // The fault is in the environment of every server, so each replacement hangs on the
    // resent LOOKUP again; after repeated deaths without progress the supervisor gives up.
    eprintln!("lookup returned {r:?} after {waited:?}");
    assert!(r.is_err());
    // Not a speed check: only that the caller is not left hanging for good (a generous
    // bound, so that a loaded machine cannot fail it).
    assert!(waited < Duration::from_secs(120), "{waited:?}");
    let s = c.wait_for("deadlock detection", |s| s.state == "failed");
    assert!(
        s.error.as_deref().unwrap_or("").contains("deadlocked"),
        "{s:?}"
    );
    assert!(c.log().contains("made no progress"), "{}", c.log());
}

#[test]
fn repeated_crashes_without_progress_give_up() {
    require_root!();
    let c = Container::start(true, Some("crash:poison"));
    std::env::remove_var("PORTA_FS_FAULT");
    std::fs::write(c.mnt.join("fine"), b"1").unwrap();
    // Every server crashes on the resent request: no progress, the supervisor gives up
    // and aborts the connection: the caller gets an error, not a hang.
    let e = std::fs::metadata(c.mnt.join("poison")).unwrap_err();
    assert!(
        matches!(
            e.raw_os_error(),
            Some(libc::ENOTCONN) | Some(libc::ECONNABORTED)
        ),
        "{e}"
    );
    let e = std::fs::metadata(c.mnt.join("fine")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ENOTCONN), "{e}");
    let s = c.wait_for("failed state", |s| s.state == "failed");
    let msg = s.error.unwrap_or_default();
    // The supervisor names the request that killed every server.
    assert!(msg.contains("same request, LOOKUP (opcode 1"), "{msg}");
    assert!(msg.contains("SIGSEGV"), "{msg}");
    assert!(c.log().contains("giving up"));
}

/// Descriptors open in the file server (its node table and handles live there: the fd
/// table is shared with the keeper).
fn server_fds(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[test]
fn forgets_read_by_a_killed_server_are_finished_by_its_successor() {
    require_root!();
    // The first server crashes before it applies its 6th FORGET entry (the kernel never
    // resends a FORGET); its successor must apply the rest of that batch from the shared
    // log, else the nodes (and their descriptors) leak for good.
    let c = Container::start(true, Some("crash-forget:5"));
    std::env::remove_var("PORTA_FS_FAULT");
    let first = c.wait_for("a running server", |s| s.pid > 0);
    let baseline = server_fds(first.pid);
    let dir = c.mnt.join("many");
    std::fs::create_dir(&dir).unwrap();
    for i in 0..400 {
        std::fs::write(dir.join(format!("f{i}")), b"x").unwrap();
    }
    for i in 0..400 {
        std::fs::metadata(dir.join(format!("f{i}"))).unwrap();
    }
    assert!(server_fds(first.pid) >= baseline + 400, "one node per file");
    let drop_caches = || std::fs::write("/proc/sys/vm/drop_caches", "2").unwrap();
    // (Under load the kernel may evict in small steps: ask again while waiting.)
    let second = c.wait_for("the replacement", |s| {
        drop_caches();
        s.restarts == 1 && s.pid > 0
    });
    // The replacement is recorded when it is forked; it logs the FORGETs it applied while
    // it rebuilds its index, a moment later (under load, much later): wait for that line.
    let applied = "applied the FORGETs a killed server had read";
    let deadline = Instant::now() + Duration::from_secs(20);
    while !c.log().contains(applied) {
        assert!(Instant::now() < deadline, "{}", c.log());
        std::thread::sleep(Duration::from_millis(10));
    }
    // Whatever the kernel still had cached is forgotten now; the table is back to the
    // baseline (a few descriptors of slack: the directory node, a handle being closed;
    // the spare files the creates made the server keep ready, 16, and the directory it
    // makes them in, 1).
    let slack = 4 + 16 + 1;
    let mut fds = usize::MAX;
    for _ in 0..50 {
        drop_caches();
        fds = server_fds(second.pid);
        if fds <= baseline + slack {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        fds <= baseline + slack,
        "nodes leaked: {fds} descriptors against {baseline} before\n{}",
        c.log()
    );
    // The files are all still there and served.
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 400);
}

#[test]
fn kill_every_100ms_under_load_no_errors_no_lost_data() {
    require_root!();
    for passthrough in [true, false] {
        kill_loop(passthrough, 200, None);
    }
}

#[test]
fn kill_every_100ms_with_cold_nodes() {
    require_root!();
    // A budget of 300 descriptors: once the table holds about 160 nodes, new files are
    // cold (kept by parent and name in the shared memory). Creates, renames (the
    // recorded name follows), unlinks (the node is pinned) and reads of cold nodes while
    // the server is killed every 100 ms. Each worker keeps every other file: 2 x 325 kept
    // files are more than twice the budget, however slowly the machine runs.
    kill_loop(true, 650, Some(300));
    kill_loop(false, 650, Some(300));
}

/// Checks that `dir` lists exactly the files of `kept`.
fn listing_is(dir: &std::path::Path, kept: &[(std::path::PathBuf, String)]) -> std::io::Result<()> {
    let mut names = std::fs::read_dir(dir)?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<std::io::Result<Vec<_>>>()?;
    names.sort();
    let mut want: Vec<_> = kept
        .iter()
        .map(|(p, _)| p.file_name().unwrap_or_default().to_owned())
        .collect();
    want.sort();
    if names != want {
        return Err(std::io::Error::other(format!(
            "listing: {} names, {} expected",
            names.len(),
            want.len()
        )));
    }
    Ok(())
}

/// Kills at least this many servers in every kill loop: the workers go on past their count
/// of operation groups until the killer got there, however slow the machine.
const MIN_KILLS: u64 = 20;

/// Two workers each run `groups` groups of create, write, fsync, rename, read (and every
/// other time unlink) — and more until [`MIN_KILLS`] servers were killed — while the
/// server is killed every 100 ms. Bounded by counts, never by time.
fn kill_loop(passthrough: bool, groups: u64, nofile: Option<u64>) {
    let c = match nofile {
        Some(n) => Container::start_with_nofile(passthrough, n),
        None => Container::start(passthrough, None),
    };
    let killed = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut workers = vec![];
    for w in 0..2 {
        let dir = c.mnt.join(format!("w{w}"));
        std::fs::create_dir(&dir).unwrap();
        let killed = killed.clone();
        workers.push(std::thread::spawn(move || {
            let mut ops = 0u64;
            let mut errors = vec![];
            let mut kept = vec![];
            let mut worst = Duration::ZERO;
            let mut lat = vec![];
            let mut i = 0u64;
            while i < groups || killed.load(std::sync::atomic::Ordering::Relaxed) < MIN_KILLS {
                let t0 = Instant::now();
                let tmp = dir.join(format!("tmp{i}"));
                let fin = dir.join(format!("f{i}"));
                let data = format!("{w}:{i}:").repeat(200);
                let r = (|| -> std::io::Result<()> {
                    let step = |what: &'static str| {
                        move |e: std::io::Error| {
                            std::io::Error::new(e.kind(), format!("{what}: {e}"))
                        }
                    };
                    let f = std::fs::File::create(&tmp).map_err(step("create"))?;
                    f.write_all_at(data.as_bytes(), 0).map_err(step("write"))?;
                    f.sync_all().map_err(step("fsync"))?;
                    drop(f);
                    std::fs::rename(&tmp, &fin).map_err(step("rename"))?;
                    let back = std::fs::read(&fin).map_err(step("read"))?;
                    if back != data.as_bytes() {
                        return Err(std::io::Error::other("content differs"));
                    }
                    if i % 2 == 1 {
                        std::fs::remove_file(&fin).map_err(step("unlink"))?;
                    }
                    Ok(())
                })();
                worst = worst.max(t0.elapsed());
                lat.push(t0.elapsed());
                match r {
                    Ok(()) => {
                        if i % 2 == 0 {
                            kept.push((fin, data));
                        }
                    }
                    Err(e) => errors.push(format!("op {i}: {e}")),
                }
                if i % 16 == 0 {
                    // Untimed: a listing (READDIRs on the server's open directory, taken
                    // over by each new server) is exactly the files kept so far.
                    if let Err(e) = listing_is(&dir, &kept) {
                        errors.push(format!("op {i}: {e}"));
                    }
                }
                ops += 5;
                i += 1;
            }
            (ops, errors, kept, worst, lat)
        }));
    }
    let mut kills = 0;
    let mut last = 0;
    // Paced, not timed: one kill per 100 ms for as long as a worker is at work.
    while workers.iter().any(|w| !w.is_finished()) {
        std::thread::sleep(Duration::from_millis(100));
        let s = c.fs();
        if s.pid > 0 && s.pid != last {
            last = s.pid;
            // SAFETY: signalling the server process the supervisor reported.
            if unsafe { libc::kill(s.pid, libc::SIGKILL) } == 0 {
                kills += 1;
                killed.store(kills, std::sync::atomic::Ordering::Relaxed);
            }
        }
    }
    let mut total = 0;
    let mut all_errors = vec![];
    let mut kept_all = vec![];
    let mut worst = Duration::ZERO;
    let mut lat = vec![];
    for w in workers {
        let (ops, errors, kept, wst, l) = w.join().unwrap();
        lat.extend(l);
        total += ops;
        all_errors.extend(errors);
        kept_all.extend(kept);
        worst = worst.max(wst);
    }
    // Every fsync'ed file is intact, read through the backing tree.
    let mut lost = 0;
    for (p, data) in &kept_all {
        let rel = p.strip_prefix(&c.mnt).unwrap();
        if std::fs::read(c.backing.join(rel)).ok().as_deref() != Some(data.as_bytes()) {
            lost += 1;
        }
    }
    let s = c.fs();
    if let Some(n) = nofile {
        // More files than the budget holds descriptors, all known to the kernel (its
        // cached nodes), the server within its budget: most are cold. Each is still
        // opened and read through the mount, by the node the kernel holds.
        assert!(kept_all.len() as u64 > 2 * n, "{} files", kept_all.len());
        let fds = server_fds(s.pid) as u64;
        eprintln!("passthrough={passthrough}: the server holds {fds} descriptors (budget {n})");
        if fds > n {
            let _ = std::fs::write("/tmp/porta-cold-nodes-failure.log", c.log());
            let _ = std::process::Command::new("sh")
                .arg("-c")
                .arg(format!(
                    "ls -l /proc/{}/fd > /tmp/porta-cold-nodes-fds.txt",
                    s.pid
                ))
                .status();
        }
        assert!(
            fds <= n,
            "{fds} descriptors for a budget of {n} (listed in /tmp/porta-cold-nodes-fds.txt)"
        );
        for (p, data) in &kept_all {
            match std::fs::read(p) {
                Ok(got) => assert_eq!(got, data.as_bytes(), "{}", p.display()),
                Err(e) => panic!("{}: {e}\nlog tail: {}", p.display(), tail(&c.log())),
            }
        }
    }
    lat.sort();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    // Reported, not asserted: timings on a shared machine are noise.
    eprintln!(
        "passthrough={passthrough}: {kills} kills, {total} ops, {} errors, {lost} lost of {} fsync'ed files, restarts {}, \
         create+write+fsync+rename+read(+unlink) group latency p50 {:?} p99 {:?} max {worst:?}",
        all_errors.len(),
        kept_all.len(),
        s.restarts,
        pct(0.5),
        pct(0.99),
    );
    if !all_errors.is_empty() {
        let _ = std::fs::write("/tmp/porta-kill-loop-failure.log", c.log());
    }
    assert!(kills >= MIN_KILLS, "only {kills} kills");
    assert!(
        all_errors.is_empty(),
        "errors: {:?}\nlog tail: {}",
        &all_errors[..all_errors.len().min(10)],
        tail(&c.log())
    );
    assert_eq!(lost, 0);
    assert!(
        s.restarts >= kills - 1,
        "{} restarts for {kills} kills",
        s.restarts
    );
}

fn tail(s: &str) -> String {
    s.lines()
        .rev()
        .take(30)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect::<Vec<_>>()
        .join("\n")
}

fn sh(dir: &Path, script: &str) -> String {
    let out = std::process::Command::new("sh")
        .arg("-ec")
        .arg(script)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn confined_server_runs_real_workloads() {
    require_root!();
    for passthrough in [true, false] {
        let c = Container::start(passthrough, None);
        let pid = c.fs().pid;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let field = |k: &str| {
            status
                .lines()
                .find(|l| l.starts_with(k))
                .unwrap()
                .split_whitespace()
                .nth(1)
                .unwrap()
                .to_string()
        };
        assert_eq!(field("Seccomp:"), "2", "seccomp filter mode");
        assert_eq!(field("NoNewPrivs:"), "1");
        let eff = u64::from_str_radix(&field("CapEff:"), 16).unwrap();
        let bnd = u64::from_str_radix(&field("CapBnd:"), 16).unwrap();
        // CAP_DAC_READ_SEARCH, CAP_SYS_ADMIN, CAP_MKNOD.
        for cap in [2u32, 21, 27] {
            assert_eq!(eff & (1 << cap), 0, "capability {cap} effective");
            assert_eq!(bnd & (1 << cap), 0, "capability {cap} in bounding set");
        }
        assert_userns(pid, &c);
        let tarball = c.dir.path().join("inc.tar");
        sh(
            Path::new("/usr"),
            &format!("tar -cf {} include/linux", tarball.display()),
        );
        sh(
            &c.mnt,
            &format!(
                "mkdir x && tar -xf {} -C x && find x -type f | wc -l >/dev/null",
                tarball.display()
            ),
        );
        sh(
            &c.mnt,
            r#"mkdir p && cd p && printf '#include <stdio.h>\nint main(void){puts("hi");return 0;}\n' > m.c && printf 'm: m.c\n\tgcc -o m m.c\n' > Makefile && make -s && ./m >/dev/null"#,
        );
        sh(&c.mnt, "sqlite3 d.db 'PRAGMA journal_mode=WAL; CREATE TABLE t(x); INSERT INTO t VALUES(1);' >/dev/null && sqlite3 d.db 'SELECT count(*) FROM t;'");
        sh(
            &c.mnt,
            r#"mkfifo f && mknod n c 1 3 && ln -s x l && ln p/m.c hard && python3 -c 'import os; os.setxattr("hard", "user.a", b"b"); assert os.getxattr("hard", "user.a") == b"b"' && truncate -s 1M big && rm big"#,
        );
        assert_eq!(
            c.fs().restarts,
            0,
            "the confined server must not have died: {}",
            c.log()
        );
        assert!(!c.log().contains("ERROR"), "{}", c.log());
    }
}

/// `pid` runs in a user namespace of its own (not the host's), mapped by the identity, and
/// the supervisor says so.
fn assert_userns(pid: i32, c: &Container) {
    let ns = |p: &str| std::fs::read_link(format!("/proc/{p}/ns/user")).ok();
    let server = ns(&pid.to_string()).expect("the server's user namespace");
    // /proc/1 may be out of reach in a sandbox; this test and the supervisor run in the
    // host's user namespace.
    for host in [ns("1"), ns("self"), ns(&c.pid.to_string())]
        .into_iter()
        .flatten()
    {
        assert_ne!(
            server,
            host,
            "server {pid} in the host's user namespace; supervisor log:\n{}",
            c.log()
        );
    }
    for f in ["uid_map", "gid_map"] {
        let m = std::fs::read_to_string(format!("/proc/{pid}/{f}")).unwrap();
        let w: Vec<&str> = m.split_whitespace().collect();
        assert_eq!(w, ["0", "0", "4294967295"], "{f}: {m}");
    }
    assert_eq!(c.fs().confinement, "userns", "{}", c.log());
    assert!(
        c.log().contains("identity-mapped user namespace"),
        "{}",
        c.log()
    );
}

fn mode_of(p: &Path) -> u32 {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(p).unwrap().mode()
}

/// File work a server in a user namespace must still do for a privileged caller: owners
/// and groups of any id, set-id bits, times, hard links to others' files, FIFOs, emulated
/// devices, `security.capability`; `trusted.*` answered as to an unprivileged process.
#[test]
fn user_namespace_server_keeps_file_semantics() {
    require_root!();
    use std::os::unix::fs::MetadataExt;
    for passthrough in [true, false] {
        let c = Container::start(passthrough, None);
        assert_userns(c.fs().pid, &c);
        let m = &c.mnt;
        let b = &c.backing;
        std::fs::write(m.join("f"), b"data").unwrap();
        std::os::unix::fs::chown(m.join("f"), Some(1234), Some(5678)).unwrap();
        let md = std::fs::metadata(b.join("f")).unwrap();
        assert_eq!((md.uid(), md.gid()), (1234, 5678));
        // Set-id bits on a file of another owner and group (CAP_FOWNER, CAP_FSETID).
        std::fs::set_permissions(
            m.join("f"),
            std::os::unix::fs::PermissionsExt::from_mode(0o6755),
        )
        .unwrap();
        assert_eq!(mode_of(&b.join("f")) & 0o7777, 0o6755);
        // A set-group-id directory of another group: new entries inherit it.
        std::fs::create_dir(m.join("d")).unwrap();
        std::os::unix::fs::chown(m.join("d"), Some(1234), Some(5678)).unwrap();
        std::fs::set_permissions(
            m.join("d"),
            std::os::unix::fs::PermissionsExt::from_mode(0o2775),
        )
        .unwrap();
        std::fs::create_dir(m.join("d/sub")).unwrap();
        std::fs::write(m.join("d/file"), b"").unwrap();
        let sub = std::fs::metadata(b.join("d/sub")).unwrap();
        assert_eq!((sub.gid(), sub.mode() & 0o2000), (5678, 0o2000));
        assert_eq!(std::fs::metadata(b.join("d/file")).unwrap().gid(), 5678);
        // Explicit times on another owner's file; a hard link to it.
        let out = sh(
            m,
            "touch -h -d @1000000000 f && ln f f2 && mkfifo p && mknod n c 1 3 && \
             stat -c '%Y %h %F' f && stat -c '%F %t:%T' n p",
        );
        assert!(out.contains("1000000000 2 regular file"), "{out}");
        assert!(out.contains("character special file 1:3"), "{out}");
        assert!(out.contains("fifo"), "{out}");
        assert_eq!(mode_of(&b.join("p")) & libc::S_IFMT, libc::S_IFIFO);
        // security.capability (what setcap writes: v2, cap_net_raw+ep).
        let mut v2 = vec![0u8; 20];
        v2[..4].copy_from_slice(&0x0200_0001u32.to_le_bytes());
        v2[4..8].copy_from_slice(&(1u32 << 13).to_le_bytes());
        xattr_set(&m.join("f"), "security.capability", &v2).unwrap();
        assert_eq!(xattr_get(&m.join("f"), "security.capability").unwrap(), v2);
        assert_eq!(xattr_get(&b.join("f"), "security.capability").unwrap(), v2);
        // trusted.*: the server has no CAP_SYS_ADMIN in the initial user namespace.
        assert_eq!(
            xattr_set(&m.join("f2"), "trusted.porta", b"x").unwrap_err(),
            libc::EPERM
        );
        xattr_set(&b.join("f2"), "trusted.host", b"x").unwrap();
        assert_eq!(
            xattr_get(&m.join("f2"), "trusted.host").unwrap_err(),
            libc::ENODATA
        );
        // Root (CAP_FSETID) writing to and truncating a set-user-id file keeps the bit, as
        // on a kernel file system; the kernel clears it for an unprivileged writer.
        std::fs::write(m.join("suid"), b"12345").unwrap();
        let setuid = std::os::unix::fs::PermissionsExt::from_mode(0o4755);
        std::fs::set_permissions(m.join("suid"), setuid).unwrap();
        {
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(m.join("suid"))
                .unwrap();
            f.write_at(b"x", 0).unwrap();
            f.sync_all().unwrap();
            f.set_len(2).unwrap();
        }
        assert_eq!(
            mode_of(&b.join("suid")) & 0o7777,
            0o4755,
            "passthrough {passthrough}: root's write and truncate kept the set-user-id bit\nlog:\n{}",
            c.log()
        );
        // (uid 1000 must reach the mount)
        let open = std::os::unix::fs::PermissionsExt::from_mode(0o755);
        std::fs::set_permissions(c.dir.path(), open).unwrap();
        sh(m, "chmod 4777 suid && setpriv --reuid=1000 --regid=1000 --clear-groups sh -c 'echo y >> suid'");
        assert_eq!(mode_of(&b.join("suid")) & 0o7777, 0o777);
        // user.* still works, and the mount still serves after all this.
        xattr_set(&m.join("f2"), "user.k", b"v").unwrap();
        assert_eq!(xattr_get(&m.join("f2"), "user.k").unwrap(), b"v");
        assert_eq!(c.fs().restarts, 0, "{}", c.log());
    }
}

fn xattr_set(p: &Path, name: &str, v: &[u8]) -> Result<(), i32> {
    let cp = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    let cn = std::ffi::CString::new(name).unwrap();
    // SAFETY: valid strings and buffer.
    let r = unsafe { libc::lsetxattr(cp.as_ptr(), cn.as_ptr(), v.as_ptr().cast(), v.len(), 0) };
    if r < 0 {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
    } else {
        Ok(())
    }
}

fn xattr_get(p: &Path, name: &str) -> Result<Vec<u8>, i32> {
    let cp = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    let cn = std::ffi::CString::new(name).unwrap();
    let mut b = vec![0u8; 256];
    // SAFETY: valid strings and buffer.
    let r = unsafe { libc::lgetxattr(cp.as_ptr(), cn.as_ptr(), b.as_mut_ptr().cast(), b.len()) };
    if r < 0 {
        return Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0));
    }
    b.truncate(r as usize);
    Ok(b)
}

/// Without user namespaces (switched off here, as on a machine without them) the server
/// runs in the initial user namespace, still without CAP_SYS_ADMIN (the supervisor
/// registers backing files), and says so.
#[test]
fn without_user_namespaces_the_server_falls_back_and_says_so() {
    require_root!();
    let c = Container::start_without_userns(true);
    let pid = c.fs().pid;
    let ns = |p: &str| std::fs::read_link(format!("/proc/{p}/ns/user")).unwrap();
    assert_eq!(ns(&pid.to_string()), ns("self"));
    assert_eq!(c.fs().confinement, "root");
    assert!(
        c.log().contains("user namespaces switched off"),
        "{}",
        c.log()
    );
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .map(|v| u64::from_str_radix(v.trim(), 16).unwrap())
        .unwrap();
    assert_eq!(eff & (1 << 21), 0, "CAP_SYS_ADMIN kept: {eff:#x}");
    // Passthrough still works (backing files registered by the supervisor).
    sh(
        &c.mnt,
        "head -c 3000000 /dev/urandom > r && cp r s && cmp r s && rm r s",
    );
    assert_eq!(c.fs().restarts, 0, "{}", c.log());
}

#[test]
fn server_mount_namespace_holds_only_the_backing_directory() {
    require_root!();
    let c = Container::start(true, None);
    std::fs::write(c.backing.join("marker"), b"m").unwrap();
    let pid = c.fs().pid;
    let mi = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
    // Three mounts: a read-only tmpfs as its root, the backing tree at /root, its own
    // procfs (process directories only) at /proc.
    let mounts: Vec<(&str, &str, &str)> = mi
        .lines()
        .filter_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            let sep = w.iter().position(|x| *x == "-")?;
            Some((*w.get(4)?, *w.get(sep + 1)?, *w.get(5)?))
        })
        .collect();
    assert_eq!(mounts.len(), 3, "{mi}");
    assert!(
        mounts
            .iter()
            .any(|(at, ty, opts)| *at == "/" && *ty == "tmpfs" && opts.starts_with("ro")),
        "{mi}"
    );
    assert!(
        mounts
            .iter()
            .any(|(at, ty, _)| *at == "/proc" && *ty == "proc"),
        "{mi}"
    );
    assert!(mi.contains("subset=pid"), "{mi}");
    assert!(mounts.iter().any(|(at, _, _)| *at == "/root"), "{mi}");
    // The backing directory is at /root of its namespace; nothing of the host is.
    assert!(Path::new(&format!("/proc/{pid}/root/root/marker")).exists());
    assert!(!Path::new(&format!("/proc/{pid}/root/etc/passwd")).exists());
    assert!(!Path::new(&format!("/proc/{pid}/root/root/etc/passwd")).exists());
    assert!(!Path::new(&format!("/proc/{pid}/root/proc/sys")).exists());
    // And it still serves, xattrs and links included.
    sh(
        &c.mnt,
        r#"echo x > f && ln f g && python3 -c 'import os; os.setxattr("f", "user.k", b"v"); assert os.getxattr("g", "user.k") == b"v"; assert "user.k" in os.listxattr("f"); os.removexattr("f", "user.k")'"#,
    );
}

#[test]
fn supervisor_holds_the_mount_until_stopped() {
    require_root!();
    let serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    std::env::remove_var("PORTA_FS_FAULT");
    std::env::remove_var("PORTA_FS_USERNS");
    let dir = tempfile::Builder::new()
        .prefix("psv")
        .tempdir_in("/tmp")
        .unwrap();
    let state = dir.path().join("s");
    let backing = dir.path().join("rootfs");
    std::fs::create_dir(&backing).unwrap();
    let spec = LaunchSpec {
        id: "gone".into(),
        state_dir: state.clone(),
        rootfs: backing,
        passthrough: true,
        host_changes: true,
        transport: porta_supervisor::protocol::keeper::Transport::Dev,
        server_cgroup_procs: vec![],
        exe: PathBuf::from(env!("CARGO_BIN_EXE_porta-supervisor-test")),
        log: dir.path().join("log"),
        api_fd: None,
    };
    let l = launch(&spec, None).unwrap();
    let pid = l.supervisor_pid;
    // The creator drops its reference (its container never came, or create was killed):
    // the supervisor keeps its own, so the connection's fusectl number stays its own and
    // cannot name another container's connection; `stop` (porta delete) ends it.
    drop(l.mount_fd);
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "supervisor exited"
    );
    assert_eq!(servers(&state).unwrap()[0].state, "running");
    stop(&state).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.contains(") Z"))
        .unwrap_or(false)
    {
        assert!(
            Instant::now() < deadline,
            "supervisor still running after stop"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(servers(&state).unwrap()[0].state, "stopped");
    assert!(!state.join("supervisor.sock").exists());
    drop(serial);
}

#[test]
fn supervisor_stops_when_the_watched_container_process_exits() {
    require_root!();
    let c = Container::start(true, None);
    let mut child = std::process::Command::new("sleep")
        .arg("100")
        .spawn()
        .unwrap();
    watch_container(&c.state, child.id() as i32).unwrap();
    assert!(watch_container(&c.state, 999_999_999).is_err());
    std::fs::write(c.mnt.join("f"), b"x").unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    c.wait_for("stop after the container's exit", |s| s.state == "stopped");
    let e = std::fs::read(c.mnt.join("f")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ENOTCONN), "{e}");
}

/// Reported, not asserted (timings on a shared machine are noise): time from SIGKILL of
/// the server to the first answered request (a getxattr, which always reaches the server).
#[test]
fn kill_to_first_answer_latency() {
    require_root!();
    let c = Container::start(true, None);
    let f = c.mnt.join("probe");
    std::fs::write(&f, b"").unwrap();
    let cf = std::ffi::CString::new(f.as_os_str().as_encoded_bytes()).unwrap();
    let probe = || {
        let mut b = [0u8; 8];
        // SAFETY: valid strings and buffer.
        unsafe {
            libc::getxattr(
                cf.as_ptr(),
                c"user.none".as_ptr(),
                b.as_mut_ptr().cast(),
                b.len(),
            )
        }
    };
    let mut lat = vec![];
    let mut last = 0;
    for _ in 0..60 {
        let s = c.wait_for("a new server", |s| s.pid > 0 && s.pid != last);
        last = s.pid;
        assert_eq!(probe(), -1); // ENODATA, answered by the live server
        let t0 = Instant::now();
        // SAFETY: signalling the server process the supervisor reported.
        unsafe { libc::kill(s.pid, libc::SIGKILL) };
        probe();
        lat.push(t0.elapsed());
    }
    lat.sort();
    eprintln!(
        "kill to first answer over {} kills: p50 {:?} p90 {:?} p99 {:?} max {:?}",
        lat.len(),
        lat[lat.len() / 2],
        lat[lat.len() * 9 / 10],
        lat[(lat.len() * 99 / 100).min(lat.len() - 1)],
        lat[lat.len() - 1]
    );
}

/// Reported, not asserted: what a first open costs now that the supervisor registers the
/// backing file (a round trip to it, and a one-way CLOSE at the last release), against
/// opens of files whose backing file is already registered (another descriptor keeps
/// each open).
#[test]
fn first_open_round_trip_cost() {
    require_root!();
    let c = Container::start(true, None);
    let n = 2000;
    let dir = c.mnt.join("many");
    std::fs::create_dir(&dir).unwrap();
    let names: Vec<PathBuf> = (0..n).map(|i| dir.join(format!("f{i}"))).collect();
    for p in &names {
        std::fs::write(p, b"x").unwrap();
    }
    let round = |keep: bool| {
        let held: Vec<std::fs::File> = if keep {
            names
                .iter()
                .map(|p| std::fs::File::open(p).unwrap())
                .collect()
        } else {
            vec![]
        };
        let t = Instant::now();
        for p in &names {
            drop(std::fs::File::open(p).unwrap());
        }
        let el = t.elapsed();
        drop(held);
        el.as_secs_f64() * 1e6 / n as f64
    };
    let mut first = vec![];
    let mut again = vec![];
    for _ in 0..5 {
        first.push(round(false));
        again.push(round(true));
    }
    first.sort_by(f64::total_cmp);
    again.sort_by(f64::total_cmp);
    eprintln!(
        "open+close of a file: first open (backing registered by the supervisor, closed at \
         release) median {:.1} us, backing already registered median {:.1} us",
        first[2], again[2]
    );
    assert_eq!(c.fs().restarts, 0, "{}", c.log());
}

/// The children of `parent` whose argv contains `word`.
fn children_with(parent: i32, word: &str) -> Vec<i32> {
    let mut v = vec![];
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, r)| r.split_whitespace().nth(1))
            .and_then(|p| p.parse::<i32>().ok());
        let argv = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let argv = String::from_utf8_lossy(&argv).replace('\0', " ");
        if ppid == Some(parent) && argv.split(' ').any(|a| a == word) {
            v.push(pid);
        }
    }
    v
}

/// Checks what process `pid` (a keeper or a server) can reach: no_new_privs, a seccomp
/// filter, none of the capabilities that reach beyond its files, and no directory
/// descriptor on a mount outside its own mount namespace; its procfs has process
/// directories only.
fn assert_sandboxed(pid: i32, what: &str) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |k: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(k))
            .map(|v| v.trim().to_string())
            .unwrap_or_default()
    };
    assert_eq!(field("NoNewPrivs:"), "1", "{what} {pid}: no_new_privs");
    assert_eq!(field("Seccomp:"), "2", "{what} {pid}: seccomp filter");
    // CAP_DAC_READ_SEARCH 2, CAP_SYS_PTRACE 19, CAP_SYS_ADMIN 21, CAP_MKNOD 27.
    let forbidden: u64 = (1 << 2) | (1 << 19) | (1 << 21) | (1 << 27);
    for set in ["CapEff:", "CapPrm:", "CapBnd:"] {
        let caps = u64::from_str_radix(&field(set), 16).unwrap();
        assert_eq!(caps & forbidden, 0, "{what} {pid}: {set} {caps:x}");
    }
    let mountinfo = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
    let ids: BTreeSet<String> = mountinfo
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect();
    let procs: Vec<&str> = mountinfo
        .lines()
        .filter(|l| l.contains(" - proc "))
        .collect();
    assert!(
        !procs.is_empty() && procs.iter().all(|l| l.contains("subset=pid")),
        "{what} {pid}: its procfs must hold process directories only:\n{mountinfo}"
    );
    let mut dirs = 0;
    for e in std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
    {
        let Ok(md) = std::fs::metadata(e.path()) else {
            continue;
        };
        if !md.is_dir() {
            continue;
        }
        dirs += 1;
        let fd = e.file_name().to_string_lossy().into_owned();
        let info = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")).unwrap_or_default();
        let mnt = info
            .lines()
            .find_map(|l| l.strip_prefix("mnt_id:"))
            .map(|v| v.trim().to_string())
            .unwrap_or_default();
        assert!(
            ids.contains(&mnt),
            "{what} {pid}: fd {fd} ({:?}) is on mount {mnt}, not in its mount namespace:\n{mountinfo}",
            std::fs::read_link(e.path())
        );
    }
    assert!(dirs > 0, "{what} {pid}: no directory descriptors seen");
}

#[test]
fn keeper_and_servers_are_sandboxed_alike() {
    require_root!();
    for passthrough in [true, false] {
        let c = Container::start(passthrough, None);
        std::fs::write(c.mnt.join("f"), b"x").unwrap();
        // The keeper and the servers it clones share its argv; the keeper came first.
        let fs = c.fs();
        let mut all = children_with(c.pid, "keeper");
        for _ in 0..200 {
            if all.len() >= 3 {
                break;
            }
            // The standby is pre-forked after the first server: wait for it (by count).
            std::thread::sleep(Duration::from_millis(50));
            all = children_with(c.pid, "keeper");
        }
        all.sort();
        assert!(
            all.len() >= 3,
            "keeper, server and standby of {}: {all:?}",
            c.pid
        );
        assert_sandboxed(all[0], "keeper");
        for pid in &all[1..] {
            assert_sandboxed(*pid, if *pid == fs.pid { "server" } else { "standby" });
        }
        // The keeper's twin (its child), which takes its place when it dies.
        let st = c.wait_state("a twin", |st, _| st.twin_pid > 0);
        assert_eq!(children_with(all[0], "keeper"), vec![st.twin_pid]);
        assert_sandboxed(st.twin_pid, "twin");
    }
}

#[test]
fn a_compromised_server_cannot_move_its_successors_confinement() {
    require_root!();
    let c = Container::start(true, Some("compromise:evil"));
    std::env::remove_var("PORTA_FS_FAULT");
    std::fs::write(c.backing.join("marker"), b"served root").unwrap();
    let before: BTreeSet<String> = std::fs::read_dir(&c.mnt)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    // The first server plants other directories in the shared table and crashes; the
    // request is resent to its successor, which answers it.
    let e = std::fs::metadata(c.mnt.join("evil")).unwrap_err();
    assert_eq!(
        e.raw_os_error(),
        Some(libc::ENOENT),
        "{e}\nlog:\n{}",
        c.log()
    );
    let s = c.wait_for("a successor", |s| s.restarts >= 1 && s.pid > 0);
    assert!(
        c.log().contains("simulated compromise: replaced"),
        "{}",
        c.log()
    );
    // The keeper's procfs had no host /proc/sys to plant.
    assert!(!c.log().contains("host /proc/sys/kernel"), "{}", c.log());
    assert!(c.log().contains("opened it again"), "{}", c.log());
    // The successor serves exactly the container's root, as before.
    let after: BTreeSet<String> = std::fs::read_dir(&c.mnt)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(after, before, "the served root changed");
    assert_eq!(std::fs::read(c.mnt.join("marker")).unwrap(), b"served root");
    std::fs::write(c.mnt.join("new"), b"y").unwrap();
    assert_eq!(std::fs::read(c.backing.join("new")).unwrap(), b"y");
    assert_sandboxed(s.pid, "successor");
}

// ---- Every Porta process can die -------------------------------------------------------

/// SIGKILL through a pidfd (the pid may not be ours to wait for). False if it was gone.
fn sigkill(pid: i32) -> bool {
    sig(pid, libc::SIGKILL)
}

fn sig(pid: i32, s: i32) -> bool {
    assert!(pid > 0);
    porta_sys::pidfd::open(pid)
        .and_then(|fd| porta_sys::pidfd::send_signal(std::os::fd::AsFd::as_fd(&fd), s))
        .is_ok()
}

/// True while `pid` runs: its pidfd is not readable (it becomes readable once every
/// thread has exited; a zombie leader with threads still exiting is not gone yet).
fn running(pid: i32) -> bool {
    if pid <= 0 {
        return false;
    }
    porta_sys::pidfd::open(pid)
        .is_ok_and(|fd| !porta_sys::pidfd::has_exited(std::os::fd::AsFd::as_fd(&fd)))
}

/// Waits (bounded) until `pid` has exited.
fn wait_gone(pid: i32, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while running(pid) {
        assert!(Instant::now() < deadline, "{what} {pid} still runs");
        std::thread::sleep(Duration::from_millis(5));
    }
}

impl Container {
    /// Waits for the supervisor's record to satisfy `f`, checking on the way that
    /// `servers` never calls a dead server running.
    fn wait_state(
        &self,
        what: &str,
        f: impl Fn(&SupervisorState, &ServerStatus) -> bool,
    ) -> SupervisorState {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            // Dead before the look: `servers` must not call it running.
            let dead: Vec<i32> = read_state(&self.state)
                .map(|st| {
                    st.servers
                        .iter()
                        .map(|s| s.pid)
                        .filter(|p| !running(*p))
                        .collect()
                })
                .unwrap_or_default();
            if let (Ok(v), Ok(st)) = (servers(&self.state), read_state(&self.state)) {
                let fs = v.into_iter().find(|s| s.name == "fs").unwrap();
                if fs.state == "running" {
                    assert!(
                        !dead.contains(&fs.pid),
                        "state calls dead server {} running",
                        fs.pid
                    );
                }
                if f(&st, &fs) {
                    return st;
                }
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// Rounds of write, fsync, rename over one of 20 names, read back; every error kept.
/// Runs until `stop` is set and at least `min` rounds are done. Returns what each name
/// must hold and the errors.
fn workload(
    dir: PathBuf,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    min: usize,
) -> (std::collections::HashMap<PathBuf, Vec<u8>>, Vec<String>) {
    let mut kept = std::collections::HashMap::new();
    let mut errors = Vec::new();
    let mut i = 0usize;
    while i < min || !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let body = format!("round {i} ").repeat(1 + i % 300).into_bytes();
        let tmp = dir.join(format!("tmp{}", i % 3));
        let dst = dir.join(format!("f{}", i % 20));
        let r = (|| -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&body)?;
            f.sync_all()?;
            drop(f);
            std::fs::rename(&tmp, &dst)?;
            if std::fs::read(&dst)? != body {
                return Err(std::io::Error::other(format!(
                    "{} holds other bytes",
                    dst.display()
                )));
            }
            Ok(())
        })();
        match r {
            Ok(()) => {
                kept.insert(dst, body);
            }
            Err(e) => errors.push(format!("round {i}: {e}")),
        }
        i += 1;
    }
    (kept, errors)
}

fn check_kept(c: &Container, kept: &std::collections::HashMap<PathBuf, Vec<u8>>) {
    for (p, body) in kept {
        assert_eq!(&std::fs::read(p).unwrap(), body, "{}", p.display());
        // And in the backing directory: the fsync'ed bytes reached it.
        let b = c.backing.join(p.strip_prefix(&c.mnt).unwrap());
        assert_eq!(&std::fs::read(&b).unwrap(), body, "{}", b.display());
    }
}

/// Kills, one at a time and each several times, the supervisor, its successor, the
/// active server, the standby, the keeper and the keeper's twin while a workload writes,
/// fsyncs, renames and reads: no error, no lost byte, and the record follows every
/// takeover.
fn every_process_dies_in_turn(passthrough: bool) {
    let c = Container::start(passthrough, None);
    let stop_flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let work = {
        let (d, s) = (c.mnt.clone(), stop_flag.clone());
        std::thread::spawn(move || workload(d, s, 50))
    };
    let ready = |st: &SupervisorState, fs: &ServerStatus| {
        st.successor_pid > 0
            && st.standby_pid > 0
            && st.twin_pid > 0
            && fs.state == "running"
            && running(st.supervisor_pid)
            && running(st.successor_pid)
            && running(st.keeper_pid)
            && running(st.twin_pid)
    };
    for round in 0..4 {
        // The active supervisor: its successor takes over.
        let s0 = c.wait_state("a successor", ready);
        assert!(sigkill(s0.supervisor_pid));
        let s1 = c.wait_state("the takeover", |st, fs| {
            st.supervisor_pid == s0.successor_pid
                && st.takeovers == s0.takeovers + 1
                && ready(st, fs)
        });
        assert!(
            !running(s0.server_pid_of()),
            "the dead supervisor's server was kept"
        );
        // The successor: the active one forks another.
        assert!(sigkill(s1.successor_pid));
        let s2 = c.wait_state("a new successor", |st, fs| {
            st.successor_pid != s1.successor_pid && ready(st, fs)
        });
        assert_eq!(s2.supervisor_pid, s1.supervisor_pid);
        // The server: the standby takes over.
        let old = s2.servers[0].clone();
        assert!(sigkill(old.pid));
        c.wait_state("a new server", |st, fs| {
            fs.restarts > old.restarts && fs.pid != old.pid && ready(st, fs)
        });
        // The standby: another is pre-forked.
        let s3 = c.wait_state("a standby", ready);
        assert!(sigkill(s3.standby_pid));
        c.wait_state("a new standby", |st, fs| {
            st.standby_pid != s3.standby_pid && ready(st, fs)
        });
        // The keeper: its twin takes its place (and the table of open files and nodes
        // lives on in it); a new twin is forked.
        let s4 = c.wait_state("a twin", ready);
        assert!(sigkill(s4.keeper_pid));
        let s5 = c.wait_state("the twin in the keeper's place", |st, fs| {
            st.keeper_pid == s4.twin_pid
                && st.keeper_takeovers == s4.keeper_takeovers + 1
                && ready(st, fs)
        });
        assert_eq!(s5.supervisor_pid, s4.supervisor_pid);
        // The twin: the keeper forks another.
        assert!(sigkill(s5.twin_pid));
        c.wait_state("a new twin", |st, fs| {
            st.twin_pid != s5.twin_pid && st.keeper_pid == s5.keeper_pid && ready(st, fs)
        });
        eprintln!("round {round} done");
    }
    stop_flag.store(true, std::sync::atomic::Ordering::Relaxed);
    let (kept, errors) = work.join().unwrap();
    assert!(
        errors.is_empty(),
        "errors in the workload: {errors:?}\nlog:\n{}",
        c.log()
    );
    check_kept(&c, &kept);
    let last = read_state(&c.state).unwrap();
    stop(&c.state).unwrap();
    for (pid, what) in [
        (last.supervisor_pid, "supervisor"),
        (last.successor_pid, "successor"),
        (last.keeper_pid, "keeper"),
        (last.twin_pid, "twin"),
        (last.standby_pid, "standby"),
        (last.servers[0].pid, "server"),
    ] {
        wait_gone(pid, what);
    }
}

trait ServerPid {
    fn server_pid_of(&self) -> i32;
}

impl ServerPid for SupervisorState {
    fn server_pid_of(&self) -> i32 {
        self.servers.first().map_or(0, |s| s.pid)
    }
}

#[test]
fn every_process_can_die_passthrough() {
    require_root!();
    every_process_dies_in_turn(true);
}

#[test]
fn every_process_can_die_strict() {
    require_root!();
    every_process_dies_in_turn(false);
}

/// The keeper dies in the middle of a command, after doing it and before answering: while
/// it sets up a standby (its twin takes its place; the standby nobody knows is stopped;
/// the command goes to the twin), and while it forks its first twin (that twin, which the
/// supervisor never heard of, takes its place and is checked against the server). The
/// container never notices.
#[test]
fn keeper_dying_in_a_command_is_survived() {
    require_root!();
    for cmd in ["B", "T"] {
        let c = Container::start(true, Some(&format!("keeper-dies-in:{cmd}")));
        std::env::remove_var("PORTA_FS_FAULT");
        let st = c.wait_state("the twin in the keeper's place", |st, fs| {
            st.keeper_takeovers == 1
                && st.twin_pid > 0
                && st.standby_pid > 0
                && fs.state == "running"
        });
        assert!(
            c.log().contains("simulated fault: the keeper dies"),
            "{cmd}: {}",
            c.log()
        );
        assert!(running(st.keeper_pid) && running(st.twin_pid) && running(st.standby_pid));
        // B: the standby the dead keeper made without answering was stopped.
        let stopped = if cmd == "B" { "stopped=1" } else { "stopped=0" };
        assert!(
            c.log()
                .lines()
                .any(|l| l.contains("took its place") && l.contains(stopped)),
            "{cmd}: {}",
            c.log()
        );
        assert_eq!(
            children_with(st.keeper_pid, "keeper"),
            vec![st.twin_pid],
            "{cmd}: the new keeper has one twin"
        );
        std::fs::write(c.mnt.join("f"), b"after").unwrap();
        assert_eq!(std::fs::read(c.mnt.join("f")).unwrap(), b"after");
        assert_eq!(std::fs::read(c.backing.join("f")).unwrap(), b"after");
        let fs = c.fs();
        assert_eq!(fs.state, "running", "{cmd}: {}", c.log());
        stop(&c.state).unwrap();
        for pid in [st.keeper_pid, st.twin_pid, st.standby_pid, fs.pid] {
            wait_gone(pid, "a file-server process");
        }
    }
}

/// The keeper dies while the supervisor is stopped, then the supervisor dies too: the
/// successor takes over, finds the keeper dead and its twin in its place, and adopts it;
/// the workload sees nothing.
#[test]
fn keeper_and_supervisor_dying_together_is_survived() {
    require_root!();
    for passthrough in [true, false] {
        let c = Container::start(passthrough, None);
        let stop_flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let work = {
            let (d, s) = (c.mnt.clone(), stop_flag.clone());
            std::thread::spawn(move || workload(d, s, 30))
        };
        let s0 = c.wait_state("a successor and a twin", |st, fs| {
            st.successor_pid > 0 && st.twin_pid > 0 && st.standby_pid > 0 && fs.state == "running"
        });
        assert!(sig(s0.supervisor_pid, libc::SIGSTOP));
        assert!(sigkill(s0.keeper_pid));
        wait_gone(s0.keeper_pid, "keeper");
        assert!(sigkill(s0.supervisor_pid));
        let s1 = c.wait_state("the takeover with the twin as keeper", |st, fs| {
            st.supervisor_pid == s0.successor_pid
                && st.keeper_pid == s0.twin_pid
                && st.keeper_takeovers == s0.keeper_takeovers + 1
                && st.twin_pid > 0
                && st.twin_pid != s0.twin_pid
                && st.successor_pid > 0
                && fs.state == "running"
        });
        assert!(running(s1.keeper_pid) && running(s1.twin_pid));
        stop_flag.store(true, std::sync::atomic::Ordering::Relaxed);
        let (kept, errors) = work.join().unwrap();
        assert!(
            errors.is_empty(),
            "errors in the workload: {errors:?}\nlog:\n{}",
            c.log()
        );
        check_kept(&c, &kept);
    }
}

/// With both the supervisor and its successor dead, the record says failed (the server
/// goes on serving, with no one to replace it); after the unmount nothing is left.
#[test]
fn supervisor_and_successor_gone_is_failed() {
    require_root!();
    // Strict mode: with passthrough, opening a file needs the supervisor (the backing
    // broker), so the container fails its opens, as its record says.
    let c = Container::start(false, None);
    let st = c.wait_state("a successor", |st, fs| {
        st.successor_pid > 0 && st.standby_pid > 0 && fs.state == "running"
    });
    // Stopped, the active cannot fork another successor before it dies too.
    assert!(sig(st.supervisor_pid, libc::SIGSTOP));
    assert!(sigkill(st.successor_pid));
    wait_gone(st.successor_pid, "successor");
    assert!(sigkill(st.supervisor_pid));
    wait_gone(st.supervisor_pid, "supervisor");
    let fs = c.fs();
    assert_eq!(fs.state, "failed", "{fs:?}");
    let e = fs.error.unwrap_or_default();
    assert!(e.contains("are gone"), "{e}");
    // The container's files are served on, by the server nobody supervises.
    std::fs::write(c.mnt.join("after"), b"still served").unwrap();
    assert_eq!(
        std::fs::read(c.backing.join("after")).unwrap(),
        b"still served"
    );
    stop(&c.state).unwrap();
    porta_fs::mount::unmount(&c.mnt).unwrap();
    // The connection ends with the mount: the server, the standby (hang-up of the
    // control socket) and the keeper (end of file on it) all exit.
    for (pid, what) in [
        (st.servers[0].pid, "server"),
        (st.standby_pid, "standby"),
        (st.keeper_pid, "keeper"),
    ] {
        wait_gone(pid, what);
    }
}

/// External SIGKILLs in a tight loop, with no request answered between them and the CPUs
/// busy, are no reason to give up: only the server's own deaths on one request are.
#[test]
fn kills_without_progress_under_load_never_give_up() {
    require_root!();
    let c = Container::start(true, None);
    let busy = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let spinners: Vec<_> = (0..4)
        .map(|_| {
            let b = busy.clone();
            std::thread::spawn(move || {
                let mut n = 0u64;
                while b.load(std::sync::atomic::Ordering::Relaxed) {
                    n = n.wrapping_add(1);
                    std::hint::black_box(n);
                }
            })
        })
        .collect();
    for i in 0..25 {
        let fs = c.wait_for("a server", |s| s.state == "running" && s.restarts == i);
        assert!(sigkill(fs.pid));
    }
    let fs = c.wait_for("the 25th replacement", |s| {
        s.restarts == 25 && s.state != "restarting"
    });
    busy.store(false, std::sync::atomic::Ordering::Relaxed);
    for s in spinners {
        s.join().unwrap();
    }
    assert_eq!(fs.state, "running", "{fs:?}\n{}", c.log());
    std::fs::write(c.mnt.join("alive"), b"yes").unwrap();
    assert_eq!(std::fs::read(c.mnt.join("alive")).unwrap(), b"yes");
}

/// A server killed in a CREATE right after a spare file got its name: the resent CREATE
/// opens that (complete) file; the next server drops the named spare from its pool and
/// its backing id is not lost or leaked; later creates use spares again.
#[test]
fn server_killed_after_a_spare_got_its_name() {
    use std::os::unix::fs::MetadataExt;
    require_root!();
    let c = Container::start(true, Some("crash-linked:victim"));
    std::env::remove_var("PORTA_FS_FAULT");
    // Spares are made once the server is up: creates before that take the usual path,
    // so make creates until one crashes the server (a bounded number).
    std::fs::write(c.mnt.join("first"), b"1").unwrap();
    let mut crashed = false;
    for i in 0..200 {
        let name = if i % 20 == 19 {
            "victim".to_string()
        } else {
            format!("pre{i}")
        };
        if name == "victim" && c.backing.join("victim").exists() {
            let _ = std::fs::remove_file(c.mnt.join("victim"));
        }
        std::fs::write(c.mnt.join(&name), format!("content {i}\n")).unwrap();
        assert_eq!(
            std::fs::read_to_string(c.backing.join(&name)).unwrap(),
            format!("content {i}\n")
        );
        if c.fs().restarts > 0 {
            crashed = true;
            break;
        }
    }
    assert!(
        crashed,
        "no create took a spare file named victim:\n{}",
        c.log()
    );
    let st = std::fs::metadata(c.backing.join("victim")).unwrap();
    assert_eq!(st.nlink(), 1);
    assert_eq!(
        st.mode() & 0o777,
        0o644,
        "the mode the first server gave it"
    );
    c.wait_for("the replacement", |s| s.restarts == 1 && s.pid > 0);
    // The replacement adopts spares while it rebuilds its index (in the background).
    let dropped = (0..2000).any(|_| {
        std::thread::sleep(Duration::from_millis(10));
        c.log().contains("the named ones dropped")
    });
    assert!(
        dropped,
        "the next server did not drop the named spare:\n{}",
        c.log()
    );
    // Creates go on; every file is complete; the kernel reads back what was written.
    for i in 0..50 {
        std::fs::write(c.mnt.join(format!("after{i}")), b"x").unwrap();
    }
    assert_eq!(std::fs::read(c.mnt.join("after49")).unwrap(), b"x");
    assert!(!std::fs::read_to_string(c.mnt.join("victim"))
        .unwrap()
        .is_empty());
}

/// Processes whose command line names `dir` (a supervisor started for it, its successor,
/// its keeper and servers), and not this test process.
fn processes_naming(dir: &Path) -> Vec<i32> {
    let needle = dir.as_os_str().as_encoded_bytes().to_vec();
    let me = std::process::id() as i32;
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| pid != me)
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c.windows(needle.len()).any(|w| w == needle.as_slice()))
        })
        .filter(|&pid| running(pid))
        .collect()
}

/// Waits (at most 20 s) until `f` holds for the processes naming `dir`.
fn wait_processes(dir: &Path, what: &str, f: impl Fn(&[i32]) -> bool) -> Vec<i32> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let p = processes_naming(dir);
        if f(&p) {
            return p;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {p:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_supervisor_spawned_ahead_of_the_cgroup_waits_for_its_go_and_an_abandoned_one_leaves_nothing() {
    require_root!();
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    std::env::remove_var("PORTA_FS_FAULT");
    std::env::remove_var("PORTA_HANG_TIMEOUT_MS");
    std::env::remove_var("PORTA_FS_NOFILE");
    std::env::remove_var("PORTA_FS_USERNS");
    let dir = tempfile::Builder::new()
        .prefix("psv")
        .tempdir_in("/tmp")
        .unwrap();
    std::fs::create_dir(dir.path().join("rootfs")).unwrap();
    let spec = test_spec(dir.path(), true);

    // Without a go it starts nothing of the file server (no keeper, no control socket),
    // and it exits when the launcher goes.
    let p = porta_supervisor::spawn(&spec).unwrap();
    let started =
        || std::fs::read_to_string(&spec.log).is_ok_and(|l| l.contains("supervisor starting"));
    let alone = wait_processes(dir.path(), "the supervisor daemon alone", |p| {
        p.len() == 1 && started()
    });
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        processes_naming(dir.path()),
        alone,
        "it started more before its go"
    );
    assert!(!spec.state_dir.join("supervisor.sock").exists());
    drop(p);
    // Dropped, it has closed its descriptors (its end of the socket): it is on its way out,
    // and gone at once.
    wait_processes(dir.path(), "the supervisor to exit without a go", |p| {
        p.is_empty()
    });
    assert!(
        std::fs::read_to_string(&spec.log)
            .unwrap()
            .contains("went away before the container's cgroup was made"),
        "{}",
        std::fs::read_to_string(&spec.log).unwrap()
    );

    // With its go but abandoned before the mount is taken: stopped, nothing left.
    let mut p = porta_supervisor::spawn(&spec).unwrap();
    p.go(&[]).unwrap();
    drop(p);
    assert_eq!(processes_naming(dir.path()), Vec::<i32>::new());

    // The whole way: the root is served.
    let mut p = porta_supervisor::spawn(&spec).unwrap();
    p.go(&[]).unwrap();
    let l = p.ready().unwrap();
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let target = std::ffi::CString::new(mnt.as_os_str().as_encoded_bytes()).unwrap();
    porta_sys::mount_api::move_mount_to(std::os::fd::AsFd::as_fd(&l.mount_fd), &target).unwrap();
    drop(l.mount_fd);
    std::fs::write(mnt.join("hello"), b"world").unwrap();
    assert_eq!(
        std::fs::read(dir.path().join("rootfs/hello")).unwrap(),
        b"world"
    );
    stop(&spec.state_dir).unwrap();
    let _ = porta_fs::mount::unmount(&mnt);
    wait_processes(dir.path(), "every process to stop", |p| p.is_empty());
}
