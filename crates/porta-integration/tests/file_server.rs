//! The per-container file server (docs/file-server.md): the root is
//! served by FUSE and never appears in the host's mount table; killing, crashing or stopping
//! container A's server while A and B work costs neither an error, B not even a restart;
//! a SIGKILL every 100 ms loses no fsync'ed file; no descriptor of Porta's reaches the
//! container; `porta delete` leaves no server process and no mount; the strict mode
//! (`run.porta.fs.passthrough=off`) works; real tools (tar, diff, find) work on the served
//! root; a container touching more files than the server may hold descriptors gets no
//! error and the server's descriptors stay bounded, also across kills. All Porta-only.

use porta_integration::*;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

const WHY: &str = "the per-container FUSE file server and its supervisor";

// ---------------------------------------------------------------------------------------
// helpers

/// The `fs` entry of `porta state`'s `servers` list: (pid, restarts, state).
fn fs_server(c: &Container) -> Option<(i32, u64, String)> {
    let o = c.rt(&["state", &c.id]);
    if !o.ok() {
        return None;
    }
    let v: Value = serde_json::from_str(&o.stdout).ok()?;
    let s = v["servers"]
        .as_array()?
        .iter()
        .find(|s| s["name"] == "fs")?
        .clone();
    Some((
        s["pid"].as_i64().unwrap_or(0) as i32,
        s["restarts"].as_u64().unwrap_or(0),
        s["state"].as_str().unwrap_or("").to_string(),
    ))
}

/// The `fs` server of a running container, panicking with the state when there is none.
#[track_caller]
fn fs_server_now(c: &Container) -> (i32, u64, String) {
    fs_server(c).unwrap_or_else(|| panic!("no fs server in state of {}: {}", c.id, c.state()))
}

/// A process's argv.
fn cmdline(pid: i32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            b.split(|x| *x == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// True when `pid` is a live file-server process (argv has `fs`) serving `c`'s root — so
/// the test never signals a process that merely reuses a stale pid.
fn is_fs_server_of(pid: i32, c: &Container) -> bool {
    if pid <= 0 || !pid_alive(pid) {
        return false;
    }
    let argv = cmdline(pid);
    let root = c.bundle.rootfs().display().to_string();
    argv.iter().any(|a| a == "fs") && argv.contains(&root)
}

/// The parent pid of `pid`.
fn ppid(pid: i32) -> Option<i32> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = s.rsplit_once(')')?;
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// Sends `sig` to `c`'s current file server; returns the pid signalled.
#[track_caller]
fn signal_fs(c: &Container, sig: i32) -> i32 {
    let (pid, _, _) = fs_server_now(c);
    assert!(
        is_fs_server_of(pid, c),
        "state's fs pid {pid} is not a live file server of {} (argv {:?})",
        c.id,
        cmdline(pid)
    );
    // SAFETY: kill(2) takes integers only; no memory is involved.
    let r = unsafe { libc::kill(pid, sig) };
    assert_eq!(
        r,
        0,
        "kill({pid}, {sig}): {}",
        std::io::Error::last_os_error()
    );
    pid
}

/// Waits until state names a live fs server other than `old`; returns (pid, restarts).
#[track_caller]
fn wait_replaced(c: &Container, old: i32, secs: u64) -> (i32, u64) {
    let r = wait_for(Duration::from_secs(secs), || {
        let (pid, restarts, _) = fs_server(c)?;
        (pid != old && is_fs_server_of(pid, c)).then_some((pid, restarts))
    });
    r.unwrap_or_else(|| {
        panic!(
            "{}: file server {old} not replaced within {secs}s; state: {:?}; old alive: {}",
            c.id,
            fs_server(c),
            pid_alive(old)
        )
    })
}

/// A shell loop running for `secs` seconds of wall time (and at least `min` iterations) in
/// `dir` of the container's served root: write a file, fsync it, read it back, rename it,
/// remove it; every failure is counted and named. Ends with
/// `SUMMARY iterations=N errors=E`. stderr goes to stdout, so error messages are kept.
fn workload(dir: &str, secs: u32, min: u32) -> String {
    workload_while(
        dir,
        &format!("end=$(( $(date +%s) + {secs} ))"),
        &format!("[ $i -lt {min} ] || [ $(date +%s) -lt $end ]"),
    )
}

/// The workload loop of [`workload`]: `init` runs first, the loop goes on while `cond`.
fn workload_while(dir: &str, init: &str, cond: &str) -> String {
    format!(
        "exec 2>&1; d={dir}; mkdir -p $d || echo 'ERR mkdir'; err=0; i=0; \
         {init}; \
         while {cond}; do \
           f=$d/f$i; \
           echo payload-$i > $f || {{ err=$((err+1)); echo ERR write $i; }}; \
           sync $f || {{ err=$((err+1)); echo ERR fsync $i; }}; \
           [ \"$(cat $f)\" = payload-$i ] || {{ err=$((err+1)); echo ERR readback $i; }}; \
           mv $f $d/g$i || {{ err=$((err+1)); echo ERR rename $i; }}; \
           rm $d/g$i || {{ err=$((err+1)); echo ERR unlink $i; }}; \
           i=$((i+1)); \
         done; \
         left=$(ls $d | wc -l); [ $left -eq 0 ] || {{ err=$((err+1)); echo ERR leftover $left; }}; \
         echo SUMMARY iterations=$i errors=$err"
    )
}

/// As [`workload`], bounded by events instead of time: runs at least `min` iterations
/// and until the file `/stop-workload` exists (made with `porta exec`, see [`stop_workload`]).
fn workload_until_stopped(dir: &str, min: u32) -> String {
    workload_while(
        dir,
        "true",
        &format!("[ $i -lt {min} ] || [ ! -e /stop-workload ]"),
    )
}

/// Ends the workload of [`workload_until_stopped`] in `c`.
#[track_caller]
fn stop_workload(c: &Container) {
    c.exec(&[], &["touch", "/stop-workload"]).expect_ok();
}

/// (iterations, errors) from a workload's SUMMARY line, panicking with the output if absent.
#[track_caller]
fn summary(c: &Container) -> (u64, u64) {
    let out = c.output();
    let line = out
        .lines()
        .find(|l| l.starts_with("SUMMARY "))
        .unwrap_or_else(|| panic!("{}: no SUMMARY line; output:\n{out}", c.id));
    let num = |k: &str| -> u64 {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(k))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("bad SUMMARY line {line:?}"))
    };
    (num("iterations="), num("errors="))
}

/// Asserts the workload finished with zero errors and some iterations.
#[track_caller]
fn assert_clean(c: &Container, what: &str) -> u64 {
    let (n, err) = summary(c);
    let out = c.output();
    let errs: Vec<&str> = out.lines().filter(|l| !l.starts_with("SUMMARY")).collect();
    assert_eq!(
        err,
        0,
        "{what} ({}): {err} errors in {n} iterations:\n{}",
        c.id,
        errs.join("\n")
    );
    assert!(n > 0, "{what} ({}): no iterations", c.id);
    n
}

/// A detached container running `script`, created and started.
fn started(tag: &str, mut b: Bundle, script: &str) -> Container {
    b.sh(script);
    let c = Container::new(tag, b);
    c.create_start();
    c
}

/// Mount-table lines of the test process that mention `c`'s root or id.
fn host_mounts_of(c: &Container) -> Vec<String> {
    let root = c.bundle.rootfs().display().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.contains(&root) || l.contains(&c.id))
        .map(str::to_string)
        .collect()
}

/// The fds in `ls -l /proc/self/fd` output: (fd, link target or "" when unreadable).
fn fd_listing(out: &str) -> Vec<(u32, String)> {
    let mut v = Vec::new();
    for l in out.lines().filter(|l| l.starts_with('l')) {
        let w: Vec<&str> = l.split_whitespace().collect();
        let (fd, target) = match w.iter().position(|x| *x == "->") {
            Some(i) if i > 0 => (w[i - 1], w[i + 1..].join(" ")),
            _ => (*w.last().unwrap_or(&""), String::new()),
        };
        if let Ok(n) = fd.parse() {
            v.push((n, target));
        }
    }
    v.sort();
    v
}

/// Only 0, 1, 2 and ls's own directory fd (3, its link unreadable or /proc/…/fd) and
/// nothing that looks like Porta's (FUSE device, memfd, pidfd, socket, anon inode).
#[track_caller]
fn assert_only_stdio(out: &str, where_: &str) {
    let fds = fd_listing(out);
    let nums: Vec<u32> = fds.iter().map(|f| f.0).collect();
    for want in [0, 1, 2] {
        assert!(nums.contains(&want), "{where_}: fd {want} missing:\n{out}");
    }
    for (fd, target) in &fds {
        for bad in ["fuse", "memfd", "pidfd", "socket:", "anon_inode", "pipe:"] {
            if *fd > 2 || bad != "pipe:" {
                assert!(
                    !target.contains(bad),
                    "{where_}: fd {fd} -> {target} is Porta's:\n{out}"
                );
            }
        }
        if *fd > 2 {
            assert!(
                *fd == 3 && (target.is_empty() || target.ends_with("/fd")),
                "{where_}: unexpected fd {fd} -> {target:?} (only 0-2 and ls's own 3 allowed):\n{out}"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------
// 1. the root is served

#[test]
fn root_is_served_by_fuse_and_not_in_host_mount_table() {
    require_root!();
    porta_only!(WHY);
    let c = started("fs-served", Bundle::new(&[]), "sleep 100");
    let o = c.exec(&[], &["cat", "/proc/mounts"]);
    o.expect_ok();
    let root = o
        .stdout
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some("/"))
        .unwrap_or_else(|| panic!("no / in /proc/mounts: {o}"));
    assert_eq!(
        root.split_whitespace().nth(2),
        Some("fuse"),
        "the container's root is not served by FUSE: {root}"
    );
    let (pid, restarts, state) = fs_server_now(&c);
    let st = c.state();
    let servers = st["servers"].as_array().unwrap();
    assert_eq!(
        servers.iter().filter(|s| s["name"] == "fs").count(),
        1,
        "exactly one fs server expected: {st}"
    );
    assert!(
        pid > 0 && std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "fs pid {pid} not live: {st}"
    );
    assert!(
        is_fs_server_of(pid, &c),
        "fs pid {pid} argv {:?}",
        cmdline(pid)
    );
    assert_eq!(restarts, 0, "{st}");
    assert_eq!(state, "running", "{st}");
    let m = host_mounts_of(&c);
    assert!(
        m.is_empty(),
        "the host's mount table holds the container's root:\n{}",
        m.join("\n")
    );
    // the file server's pid is not the container's, and not in its pid namespace
    assert_ne!(pid, c.pid());

    // with run.porta.fs=kernel the root is the kernel's
    let mut b = Bundle::new(&[]);
    b.annotation("run.porta.fs", "kernel");
    let k = started("fs-kernel", b, "sleep 100");
    let o = k.exec(&[], &["cat", "/proc/mounts"]);
    o.expect_ok();
    let root = o
        .stdout
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some("/"))
        .unwrap_or_else(|| panic!("no / in /proc/mounts: {o}"));
    assert!(
        !root
            .split_whitespace()
            .nth(2)
            .unwrap_or("")
            .starts_with("fuse"),
        "kernel mode still serves the root by FUSE: {root}"
    );
    let st = k.state();
    let live_fs = st["servers"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|s| s["name"] == "fs" && s["pid"].as_i64().unwrap_or(0) > 0)
                .count()
        })
        .unwrap_or(0);
    assert_eq!(live_fs, 0, "kernel mode lists a live fs server: {st}");
}

// ---------------------------------------------------------------------------------------
// 2. fault containment

/// A and B run the workload; `hurt` does something to A's file server (returning how many
/// restarts it must cause at least). Both must finish clean, B untouched.
fn containment(tag: &str, hurt: impl FnOnce(&Container) -> u64) {
    let a = started(
        &format!("{tag}-a"),
        Bundle::new(&[]),
        &workload_until_stopped("/data", 200),
    );
    let b = started(
        &format!("{tag}-b"),
        Bundle::new(&[]),
        &workload_until_stopped("/data", 200),
    );
    let (b_pid, b_restarts, _) = fs_server_now(&b);
    let (a_pid0, a_restarts0, _) = fs_server_now(&a);
    assert_eq!((a_restarts0, b_restarts), (0, 0));
    let b_start = start_time(b_pid);
    // let both get going
    std::thread::sleep(Duration::from_millis(300));
    let want = hurt(&a);
    // the harm was done while both workloads were still running
    assert!(
        !a.output().contains("SUMMARY") && !b.output().contains("SUMMARY"),
        "a workload ended before the faults were injected; A:\n{}\nB:\n{}",
        a.output(),
        b.output()
    );
    let (b_pid2, b_restarts2, _) = fs_server_now(&b);
    assert_eq!(
        (b_pid2, b_restarts2, start_time(b_pid2)),
        (b_pid, 0, b_start),
        "B's file server changed while A's was hurt"
    );
    stop_workload(&a);
    stop_workload(&b);
    a.wait_stopped(120);
    b.wait_stopped(120);
    let na = assert_clean(&a, "A's workload");
    let nb = assert_clean(&b, "B's workload");
    eprintln!("{tag}: A {na} iterations, B {nb} iterations");
    // B's server: same process, never restarted (state after exit, if it still lists it)
    if let Some((p, r, _)) = fs_server(&b) {
        assert_eq!(r, 0, "B's file server was restarted");
        assert!(
            p == b_pid || p <= 0,
            "B's file server pid changed: {b_pid} -> {p}"
        );
    }
    let (a_pid, a_restarts, _) =
        fs_server(&a).unwrap_or_else(|| panic!("no fs server in A's state: {}", a.state()));
    assert!(
        a_restarts >= want,
        "A's restarts {a_restarts} < {want} (faults injected); pid {a_pid0} -> {a_pid}"
    );
}

#[test]
fn containment_sigkill_five_times() {
    require_root!();
    porta_only!(WHY);
    containment("fs-ckill", |a| {
        for n in 1..=5u64 {
            let old = signal_fs(a, libc::SIGKILL);
            let (_, restarts) = wait_replaced(a, old, 10);
            assert!(restarts >= n, "after kill {n}: restarts {restarts}");
            std::thread::sleep(Duration::from_millis(150));
        }
        5
    });
}

#[test]
fn containment_sigsegv() {
    require_root!();
    porta_only!(WHY);
    containment("fs-csegv", |a| {
        let old = signal_fs(a, libc::SIGSEGV);
        wait_replaced(a, old, 10);
        assert!(
            !is_fs_server_of(old, a),
            "the SIGSEGV'd server {old} still runs"
        );
        1
    });
}

#[test]
fn containment_sigstop() {
    require_root!();
    porta_only!(WHY);
    containment("fs-cstop", |a| {
        let old = signal_fs(a, libc::SIGSTOP);
        let old_start = start_time(old);
        // the supervisor must notice the stopped server and put another in its place (a
        // generous bound, not a speed check: a loaded machine must not fail it)
        let replaced = wait_for(Duration::from_secs(30), || {
            let (pid, _, _) = fs_server(a)?;
            (pid != old && is_fs_server_of(pid, a)).then_some(pid)
        });
        // never leave a stopped process behind, whatever the outcome
        let still_there = pid_alive(old) && start_time(old) == old_start && is_fs_server_of(old, a);
        if still_there {
            // SAFETY: kill(2) takes integers only; no memory is involved.
            unsafe { libc::kill(old, libc::SIGCONT) };
        }
        let replaced = replaced.unwrap_or_else(|| {
            panic!(
                "stopped file server {old} not replaced within 30s (state {:?}; old still there: {still_there})",
                fs_server(a)
            )
        });
        assert!(is_fs_server_of(replaced, a));
        1
    });
}

// ---------------------------------------------------------------------------------------
// 3. kill loop

#[test]
fn sigkill_every_100ms_loses_nothing() {
    require_root!();
    porta_only!(WHY);
    // create/write/fsync/rename/unlink; every 10th file is kept (fsync'ed, renamed into
    // keep/, fsync'ed again) and reported as "KEPT i"; its content is `seq i i+200`.
    let script = "exec 2>&1; d=/kl; mkdir -p $d/keep || echo ERR mkdir; err=0; i=0; \
        end=$(( $(date +%s) + 8 )); \
        while [ $(date +%s) -lt $end ]; do \
          f=$d/t$i; \
          seq $i $((i+200)) > $f || { err=$((err+1)); echo ERR write $i; }; \
          sync $f || { err=$((err+1)); echo ERR fsync $i; }; \
          if [ $((i % 10)) -eq 0 ]; then \
            mv $f $d/keep/k$i || { err=$((err+1)); echo ERR rename-keep $i; }; \
            sync $d/keep/k$i || { err=$((err+1)); echo ERR fsync-keep $i; }; \
            echo KEPT $i; \
          else \
            mv $f $d/r$i || { err=$((err+1)); echo ERR rename $i; }; \
            rm $d/r$i || { err=$((err+1)); echo ERR unlink $i; }; \
          fi; \
          i=$((i+1)); \
        done; \
        echo SUMMARY iterations=$i errors=$err";
    let c = started("fs-killloop", Bundle::new(&[]), script);
    let t0 = Instant::now();
    let mut killed = BTreeSet::new();
    while t0.elapsed() < Duration::from_secs(5) && !c.output().contains("SUMMARY") {
        if let Some((pid, _, _)) = fs_server(&c) {
            if !killed.contains(&pid) && is_fs_server_of(pid, &c) {
                // SAFETY: kill(2) takes integers only; no memory is involved.
                let r = unsafe { libc::kill(pid, libc::SIGKILL) };
                if r == 0 {
                    killed.insert(pid);
                }
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        !c.output().contains("SUMMARY"),
        "the workload ended before the kill loop did:\n{}",
        c.output()
    );
    c.wait_stopped(60);
    let n = assert_clean(&c, "workload under a SIGKILL every 100 ms");
    let (_, restarts, _) = fs_server(&c).unwrap_or_else(|| panic!("no fs server: {}", c.state()));
    eprintln!(
        "kill loop: {} servers killed, {restarts} restarts, {n} iterations",
        killed.len()
    );
    assert!(killed.len() >= 10, "only {} kills in 5 s", killed.len());
    assert!(
        restarts >= killed.len() as u64,
        "restarts {restarts} < {} kills",
        killed.len()
    );
    // every reported file is there with its content; nothing else is left (unlinks and
    // renames all took effect exactly once)
    let out = c.output();
    let kept: BTreeSet<u64> = out
        .lines()
        .filter_map(|l| l.strip_prefix("KEPT "))
        .map(|v| v.trim().parse().unwrap())
        .collect();
    assert!(!kept.is_empty(), "nothing kept:\n{out}");
    let dir = c.bundle.rootfs().join("kl");
    for i in &kept {
        let p = dir.join(format!("keep/k{i}"));
        let want: String = (*i..=*i + 200).map(|n| format!("{n}\n")).collect();
        let got = std::fs::read_to_string(&p)
            .unwrap_or_else(|e| panic!("kept file {} lost: {e}", p.display()));
        assert!(
            got == want,
            "kept file {} has wrong content ({} bytes, want {})",
            p.display(),
            got.len(),
            want.len()
        );
    }
    let names = |d: &std::path::Path| -> BTreeSet<String> {
        std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    };
    let want: BTreeSet<String> = kept.iter().map(|i| format!("k{i}")).collect();
    assert_eq!(
        names(&dir.join("keep")),
        want,
        "keep/ differs from what the workload reported"
    );
    let top = names(&dir);
    assert_eq!(
        top,
        BTreeSet::from(["keep".to_string()]),
        "files left over (or lost) in /kl"
    );
}

// ---------------------------------------------------------------------------------------
// 4. no fd of Porta's reaches the container

#[test]
fn no_porta_fd_reaches_the_container() {
    require_root!();
    porta_only!(WHY);
    // the container's first process (run in the foreground)
    let mut b = Bundle::new(&[]);
    b.sh("exec ls -l /proc/self/fd");
    let c = Container::new("fs-fds", b);
    let o = c.run();
    assert_eq!(o.code, 0, "{o}");
    assert_only_stdio(&c.output(), "container process (run)");
    // create + start, a long-running process: its fds seen from the host, and exec's
    let c = started("fs-fds2", Bundle::new(&["sleep", "100"]), "exec sleep 100");
    assert!(fs_server(&c).is_some(), "no file server: {}", c.state());
    let init = c.pid();
    let fds: Vec<(String, String)> = std::fs::read_dir(format!("/proc/{init}/fd"))
        .unwrap()
        .flatten()
        .map(|e| {
            let t = std::fs::read_link(e.path())
                .map(|t| t.display().to_string())
                .unwrap_or_default();
            (e.file_name().to_string_lossy().into_owned(), t)
        })
        .collect();
    let mut nums: Vec<&str> = fds.iter().map(|f| f.0.as_str()).collect();
    nums.sort();
    assert_eq!(
        nums,
        ["0", "1", "2"],
        "container init's fds (from the host): {fds:?}"
    );
    for (fd, t) in &fds {
        assert!(
            !["fuse", "memfd", "pidfd", "socket:", "anon_inode"]
                .iter()
                .any(|b| t.contains(b)),
            "fd {fd} -> {t} of the container's init is Porta's"
        );
    }
    let o = c.exec(&[], &["ls", "-l", "/proc/self/fd"]);
    o.expect_ok();
    assert_only_stdio(&o.stdout, "porta exec");
    // and after a restart of the file server
    let old = signal_fs(&c, libc::SIGKILL);
    wait_replaced(&c, old, 10);
    let o = c.exec(&[], &["ls", "-l", "/proc/self/fd"]);
    o.expect_ok();
    assert_only_stdio(&o.stdout, "porta exec after a server restart");
    let n = std::fs::read_dir(format!("/proc/{init}/fd"))
        .unwrap()
        .count();
    assert_eq!(
        n, 3,
        "container init's fd count changed after a server restart"
    );
}

// ---------------------------------------------------------------------------------------
// 5. delete leaves nothing

/// Porta's processes for `c`: the fs server, its parent (the supervisor) and the
/// supervisor's other children (keeper, standby), each with its start time.
fn porta_processes(c: &Container) -> Vec<(i32, u64, String)> {
    let (fs, _, _) = fs_server_now(c);
    assert!(
        is_fs_server_of(fs, c),
        "fs pid {fs}: argv {:?}",
        cmdline(fs)
    );
    let sup = ppid(fs).expect("fs server's parent");
    assert!(sup > 1, "fs server {fs} has no supervisor parent");
    let mut v = vec![];
    for pid in std::iter::once(sup).chain(
        std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
            .filter(|p| ppid(*p) == Some(sup)),
    ) {
        if let Some(t) = start_time(pid) {
            v.push((pid, t, cmdline(pid).join(" ")));
        }
    }
    assert!(
        v.iter().any(|p| p.0 == fs),
        "fs server {fs} not a child of {sup}"
    );
    v
}

/// The processes of `procs` still alive (same pid and start time).
fn still_alive(procs: &[(i32, u64, String)]) -> Vec<String> {
    procs
        .iter()
        .filter(|(p, t, _)| pid_alive(*p) && start_time(*p) == Some(*t))
        .map(|(p, _, a)| format!("{p}: {a}"))
        .collect()
}

#[track_caller]
fn assert_gone(c: &Container, procs: &[(i32, u64, String)], how: &str) {
    let alive = still_alive(procs);
    assert!(
        alive.is_empty(),
        "after {how}: Porta processes of {} still alive:\n{}",
        c.id,
        alive.join("\n")
    );
    let m = leaks::mounts_matching(&|l| l.contains(&c.id) || l.contains(&c.bundle.path_str()));
    assert!(
        m.is_empty(),
        "after {how}: mounts of {} left:\n{}",
        c.id,
        m.join("\n")
    );
    let left = leaks::check(std::slice::from_ref(&c.id), &[c.bundle.path_str()]);
    assert!(
        left.is_empty(),
        "after {how}: {} left:\n{}",
        c.id,
        left.join("\n")
    );
}

#[test]
fn delete_leaves_no_server_and_no_mount() {
    require_root!();
    porta_only!(WHY);
    // a stopped container, plain delete
    let c = started("fs-del", Bundle::new(&[]), "exec sleep 100");
    let procs = porta_processes(&c);
    c.kill("KILL").expect_ok();
    c.wait_stopped(20);
    c.delete().expect_ok();
    assert_gone(&c, &procs, "delete");
    // a running container, delete --force
    let c = started("fs-delf", Bundle::new(&[]), "exec sleep 100");
    let procs = porta_processes(&c);
    c.rt(&["delete", "--force", &c.id]).expect_ok();
    assert_gone(&c, &procs, "delete --force");
}

// ---------------------------------------------------------------------------------------
// 6. strict mode

#[test]
fn strict_mode_workload() {
    require_root!();
    porta_only!(WHY);
    let mut b = Bundle::new(&[]);
    b.annotation("run.porta.fs.passthrough", "off");
    let c = started("fs-strict", b, &workload("/data", 3, 200));
    let (pid, _, _) = fs_server_now(&c);
    assert!(
        is_fs_server_of(pid, &c),
        "strict mode: no file server ({:?})",
        cmdline(pid)
    );
    // the annotation reached the server: a default server is started with --passthrough
    // (see the supervisor's command line), a strict one must not be
    assert!(
        !cmdline(pid).iter().any(|a| a == "--passthrough"),
        "strict mode: the file server runs with passthrough: {:?}",
        cmdline(pid)
    );
    let o = c.exec(&[], &["grep", " / ", "/proc/mounts"]);
    assert!(
        o.stdout.contains(" / fuse "),
        "strict mode: root not served: {o}"
    );
    c.wait_stopped(60);
    assert_clean(&c, "strict-mode workload");
}

// ---------------------------------------------------------------------------------------
// 7. real tools on the served root

#[test]
fn tar_diff_find_on_the_served_root() {
    require_root!();
    porta_only!(WHY);
    let mut b = Bundle::new(&[]);
    b.sh(
        "set -e; cd /; tar -czf /tmp/t.tgz bin etc; mkdir /tmp/x; tar -xzf /tmp/t.tgz -C /tmp/x; \
         diff -r /bin /tmp/x/bin; diff -r /etc /tmp/x/etc; \
         echo src=$(find /bin /etc | wc -l) dst=$(cd /tmp/x && find bin etc | wc -l); \
         cmp /bin/busybox /tmp/x/bin/busybox; \
         echo links=$(find /tmp/x/bin -type l | wc -l); \
         echo find=$(find / -xdev | wc -l); echo TOOLS-OK",
    );
    let c = Container::new("fs-tools", b);
    let o = c.run();
    let out = c.output();
    assert_eq!(o.code, 0, "{o}\n{out}");
    assert!(out.contains("TOOLS-OK"), "{out}");
    let val = |k: &str| -> u64 {
        out.split_whitespace()
            .find_map(|w| w.strip_prefix(k))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{k} missing: {out}"))
    };
    assert_eq!(val("src="), val("dst="), "{out}");
    assert!(val("src=") > 100, "{out}");
    assert!(val("links=") > 100, "{out}");
    assert!(val("find=") > val("src="), "{out}");
    // and the host sees the unpacked tree in the backing directory
    assert!(c.bundle.rootfs().join("tmp/x/bin/busybox").is_file());
}

// ---------------------------------------------------------------------------------------
// 8. more files than descriptors: the node table stays bounded

/// Builds a tree of 300 × 100 files, stats every one (`ls -lR`), counts them (`find`),
/// then creates 25,000 small files and deletes them; every failure is counted and shown.
const MANY_FILES: &str = "exec 2>&1; err=0; mkdir /t || { err=$((err+1)); echo ERR mkdir; }; \
    i=0; while [ $i -lt 300 ]; do \
      mkdir /t/d$i || { err=$((err+1)); echo ERR mkdir $i; }; \
      j=0; while [ $j -lt 100 ]; do \
        echo $i.$j > /t/d$i/f$j || { err=$((err+1)); echo ERR create $i.$j; }; j=$((j+1)); \
      done; i=$((i+1)); \
    done; echo TREE-DONE; \
    ls -lR /t > /tmp/ls.out 2> /tmp/ls.err || { err=$((err+1)); echo ERR ls; cat /tmp/ls.err; }; \
    n=$(grep -c '^-' /tmp/ls.out); [ $n -eq 30000 ] || { err=$((err+1)); echo ERR ls saw $n files; }; \
    n=$(find /t -type f | wc -l); [ $n -eq 30000 ] || { err=$((err+1)); echo ERR find saw $n files; }; \
    [ \"$(cat /t/d299/f99)\" = 299.99 ] || { err=$((err+1)); echo ERR content; }; \
    echo STAT-DONE; \
    mkdir /s || { err=$((err+1)); echo ERR mkdir s; }; \
    i=0; while [ $i -lt 25000 ]; do \
      echo $i > /s/small-$i || { err=$((err+1)); echo ERR small $i; }; i=$((i+1)); \
    done; \
    rm -r /s || { err=$((err+1)); echo ERR rm; }; \
    rm -r /t || { err=$((err+1)); echo ERR rm tree; }; \
    echo SUMMARY iterations=55000 errors=$err";

/// Entries in /proc/PID/fd (the server shares the keeper's fd table: all its nodes and
/// open files), or None when the process is gone.
fn fd_count(pid: i32) -> Option<usize> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count())
}

/// The soft "Max open files" limit of PID.
fn nofile_limit(pid: i32) -> Option<usize> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    let l = s.lines().find(|l| l.starts_with("Max open files"))?;
    l.split_whitespace().nth(3)?.parse().ok()
}

/// Runs MANY_FILES, sampling the file server's descriptor count every 50 ms and, with
/// `kill_every`, SIGKILLing the server that often. Returns (most descriptors seen, the
/// server's limit, kills).
fn many_files(tag: &str, kill_every: Option<Duration>) -> (usize, usize, usize) {
    let c = started(tag, Bundle::new(&[]), MANY_FILES);
    let (pid0, _, _) = fs_server_now(&c);
    let limit = nofile_limit(pid0).unwrap_or_else(|| panic!("no limits of server {pid0}"));
    let mut most = 0;
    let mut kills = BTreeSet::new();
    let mut last_kill = Instant::now();
    let t0 = Instant::now();
    while !c.output().contains("SUMMARY") && t0.elapsed() < Duration::from_secs(600) {
        if let Some((pid, _, _)) = fs_server(&c) {
            if is_fs_server_of(pid, &c) {
                if let Some(n) = fd_count(pid) {
                    most = most.max(n);
                }
                if let Some(every) = kill_every {
                    if last_kill.elapsed() >= every && !kills.contains(&pid) {
                        // SAFETY: kill(2) takes integers only; no memory is involved.
                        if unsafe { libc::kill(pid, libc::SIGKILL) } == 0 {
                            kills.insert(pid);
                        }
                        last_kill = Instant::now();
                    }
                }
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    c.wait_stopped(120);
    let n = assert_clean(&c, tag);
    eprintln!(
        "{tag}: {n} files, most server descriptors {most} (limit {limit}), {} kills, took {:?}",
        kills.len(),
        t0.elapsed()
    );
    assert!(
        most < limit,
        "{tag}: the file server held {most} descriptors, its limit is {limit}"
    );
    (most, limit, kills.len())
}

#[test]
fn more_files_than_descriptors() {
    require_root!();
    porta_only!(WHY);
    let (most, limit, _) = many_files("fs-nodes", None);
    // the bound leaves room: at most 7/8 of the limit in the table, plus a few of its own
    assert!(
        most <= limit - limit / 8 + 64,
        "most {most} descriptors, limit {limit}"
    );
}

#[test]
fn more_files_than_descriptors_with_kills() {
    require_root!();
    porta_only!(WHY);
    let (_, _, kills) = many_files("fs-nodes-kill", Some(Duration::from_millis(1500)));
    assert!(kills >= 3, "only {kills} kills during the workload");
}

// ---------------------------------------------------------------------------------------
// 9. the server's own user namespace (confinement)

/// A capability set line (`CapEff:` …) of /proc/PID/status.
fn caps(pid: i32, key: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let v = s
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .unwrap_or_else(|| panic!("no {key} in /proc/{pid}/status"));
    u64::from_str_radix(v.trim(), 16).unwrap()
}

#[test]
fn server_runs_in_an_identity_mapped_user_namespace_without_global_capabilities() {
    require_root!();
    porta_only!(WHY);
    let mut b = Bundle::new(&[]);
    b.capabilities(&["CAP_CHOWN", "CAP_FOWNER", "CAP_FSETID", "CAP_DAC_OVERRIDE"]);
    let c = started("fs-userns", b, "sleep 100");
    let (pid, _, _) = fs_server_now(&c);
    assert!(is_fs_server_of(pid, &c), "{:?}", cmdline(pid));
    // Its user namespace is not the host's (/proc/1 may be out of reach in a sandbox;
    // this test runs in the host's user namespace).
    let ns = |p: &str| std::fs::read_link(format!("/proc/{p}/ns/user")).ok();
    let server = ns(&pid.to_string()).expect("server's user namespace");
    for host in [ns("1"), ns("self")].into_iter().flatten() {
        assert_ne!(
            server, host,
            "the file server runs in the host's user namespace"
        );
    }
    // Mapped by the identity.
    for f in ["uid_map", "gid_map"] {
        let m = std::fs::read_to_string(format!("/proc/{pid}/{f}")).unwrap();
        assert_eq!(
            m.split_whitespace().collect::<Vec<_>>(),
            ["0", "0", "4294967295"],
            "{f} of the file server: {m}"
        );
    }
    // No CAP_DAC_READ_SEARCH (2), CAP_SYS_ADMIN (21), CAP_MKNOD (27), effective or bounding.
    for key in ["CapEff:", "CapBnd:", "CapPrm:"] {
        let set = caps(pid, key);
        for cap in [2, 21, 27] {
            assert_eq!(set & (1 << cap), 0, "{key} {set:#x} has capability {cap}");
        }
    }
    // `porta state` says which confinement is in force.
    let st = c.state();
    let fs = st["servers"]
        .as_array()
        .and_then(|a| a.iter().find(|s| s["name"] == "fs"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(fs["confinement"], "userns", "{st}");
    // Files the container makes still get the caller's ids, also ids nobody mapped
    // for the container; data goes through passthrough as before.
    let o = c.exec(
        &["--user", "1234:5678"],
        &["sh", "-c", "echo hi > /tmp/by-1234 && cat /tmp/by-1234"],
    );
    o.expect_ok();
    assert!(o.stdout.contains("hi"), "{o}");
    let o = c.exec(
        &[],
        &[
            "sh",
            "-c",
            "mkdir -p /tmp/d && echo x > /tmp/d/f && chown 4321:8765 /tmp/d/f && \
             chmod 6755 /tmp/d/f && mkfifo /tmp/d/p && stat -c '%u:%g %a' /tmp/d/f",
        ],
    );
    o.expect_ok();
    assert!(o.stdout.contains("4321:8765 6755"), "{o}");
    use std::os::unix::fs::MetadataExt;
    let md = std::fs::metadata(c.bundle.rootfs().join("tmp/by-1234")).unwrap();
    assert_eq!((md.uid(), md.gid()), (1234, 5678));
    let md = std::fs::metadata(c.bundle.rootfs().join("tmp/d/f")).unwrap();
    assert_eq!(
        (md.uid(), md.gid(), md.mode() & 0o7777),
        (4321, 8765, 0o6755)
    );
}
