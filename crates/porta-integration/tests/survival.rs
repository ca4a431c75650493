//! Every Porta process of a container can die: the supervisor, its successor, the file
//! server, the standby, the keeper and the keeper's twin are each killed with SIGKILL,
//! one at a time and several times,
//! while the container writes, fsyncs, renames and reads back files: no error inside, no
//! fsync'ed byte lost, `porta state` never calls a dead process running, and `porta
//! delete` leaves nothing (processes, mounts, cgroups, state). All Porta-only.

use porta_integration::*;
use std::time::Duration;

const WHY: &str = "the file server's supervisor and its successor";

/// The supervisor's record (`servers.json` in the container's state directory).
fn record(c: &Container) -> Option<Value> {
    let p = format!("{}/{}/servers.json", c.root, c.id);
    serde_json::from_str(&std::fs::read_to_string(p).ok()?).ok()
}

fn num(v: &Value, k: &str) -> i32 {
    v[k].as_i64().unwrap_or(0) as i32
}

/// True once every thread of `pid` has exited (its pidfd is readable) or it is gone. A
/// leader that is a zombie while other threads still exit has not exited yet.
fn exited(pid: i32) -> bool {
    // SAFETY: plain system calls on a pidfd we own.
    unsafe {
        let fd = libc::syscall(libc::SYS_pidfd_open, pid, 0) as i32;
        if fd < 0 {
            return true;
        }
        let mut p = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        let n = libc::poll(&mut p, 1, 0);
        libc::close(fd);
        n != 0
    }
}

/// SIGKILL through a pidfd, after checking the pid is still the process recorded (its
/// start time), so a reused pid is never signalled.
fn kill_recorded(pid: i32, start: u64) {
    assert!(pid > 0);
    // SAFETY: plain system calls on a pidfd we own.
    unsafe {
        let fd = libc::syscall(libc::SYS_pidfd_open, pid, 0) as i32;
        assert!(
            fd >= 0,
            "pidfd_open({pid}): {}",
            std::io::Error::last_os_error()
        );
        assert_eq!(
            start_time(pid),
            Some(start),
            "pid {pid} is not the recorded process"
        );
        assert_eq!(
            libc::syscall(libc::SYS_pidfd_send_signal, fd, libc::SIGKILL, 0, 0),
            0
        );
        libc::close(fd);
    }
}

/// Waits until the record and `porta state` satisfy `f`; on the way, `porta state` must
/// never call running a server that was dead before it was asked.
#[track_caller]
fn wait_state(c: &Container, what: &str, f: impl Fn(&Value, &Value) -> bool) -> Value {
    let r = wait_for(Duration::from_secs(30), || {
        let dead: Vec<i64> = record(c)
            .and_then(|r| r["servers"].as_array().cloned())
            .unwrap_or_default()
            .iter()
            .map(|s| s["pid"].as_i64().unwrap_or(0))
            .filter(|p| *p > 0 && exited(*p as i32))
            .collect();
        let o = c.rt(&["state", &c.id]);
        if !o.ok() {
            return None;
        }
        let st: Value = serde_json::from_str(&o.stdout).ok()?;
        let fs = st["servers"]
            .as_array()?
            .iter()
            .find(|s| s["name"] == "fs")?
            .clone();
        if fs["state"] == "running" {
            let pid = fs["pid"].as_i64().unwrap_or(0);
            assert!(
                !dead.contains(&pid),
                "porta state calls dead server {pid} running: {st}"
            );
        }
        let rec = record(c)?;
        f(&rec, &fs).then_some(rec)
    });
    r.unwrap_or_else(|| {
        panic!(
            "{}: timed out waiting for {what}; record {:?}",
            c.id,
            record(c)
        )
    })
}

/// Everything the record names, with start times (to check they are all gone later).
fn note(rec: &Value, seen: &mut Vec<(i32, u64)>) {
    let mut pids = vec![
        num(rec, "supervisor_pid"),
        num(rec, "successor_pid"),
        num(rec, "keeper_pid"),
        num(rec, "twin_pid"),
        num(rec, "standby_pid"),
    ];
    pids.extend(
        rec["servers"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|s| s["pid"].as_i64().unwrap_or(0) as i32),
    );
    for p in pids.into_iter().filter(|p| *p > 0) {
        if let Some(t) = start_time(p) {
            if !seen.contains(&(p, t)) {
                seen.push((p, t));
            }
        }
    }
}

fn ready(rec: &Value, fs: &Value) -> bool {
    let alive = |k: &str| num(rec, k) > 0 && pid_alive(num(rec, k));
    fs["state"] == "running"
        && alive("supervisor_pid")
        && alive("successor_pid")
        && alive("standby_pid")
        && alive("keeper_pid")
        && alive("twin_pid")
        && fs["pid"].as_i64().is_some_and(|p| pid_alive(p as i32))
}

/// Until /stop exists (made by `porta exec`, no clock involved) and at least `min`
/// rounds: write, fsync, read back, rename over a kept name, read again; every failure
/// counted and named. The kept files hold their last round's payload.
fn workload(min: u32) -> String {
    format!(
        "exec 2>&1; d=/work; mkdir -p $d || echo 'ERR mkdir'; err=0; i=0; \
         while [ $i -lt {min} ] || [ ! -e /stop ]; do \
           f=$d/tmp; k=$d/k$((i % 7)); \
           echo payload-$i > $f || {{ err=$((err+1)); echo ERR write $i; }}; \
           sync $f || {{ err=$((err+1)); echo ERR fsync $i; }}; \
           [ \"$(cat $f)\" = payload-$i ] || {{ err=$((err+1)); echo ERR readback $i; }}; \
           mv $f $k || {{ err=$((err+1)); echo ERR rename $i; }}; \
           [ \"$(cat $k)\" = payload-$i ] || {{ err=$((err+1)); echo ERR reread $i; }}; \
           i=$((i+1)); \
         done; \
         echo SUMMARY iterations=$i errors=$err"
    )
}

#[test]
fn every_porta_process_can_die_while_the_container_works() {
    require_root!();
    porta_only!(WHY);
    let mut b = Bundle::new(&[]);
    b.sh(&workload(30));
    let c = Container::new("survive", b);
    c.create_start();
    let mut seen = Vec::new();
    for round in 0..3 {
        // The supervisor: its successor takes over.
        let r0 = wait_state(&c, "a successor", ready);
        note(&r0, &mut seen);
        let sup = num(&r0, "supervisor_pid");
        kill_recorded(sup, r0["supervisor_start"].as_u64().unwrap());
        let r1 = wait_state(&c, "the takeover", |r, fs| {
            num(r, "supervisor_pid") == num(&r0, "successor_pid")
                && r["takeovers"].as_u64() == Some(r0["takeovers"].as_u64().unwrap_or(0) + 1)
                && ready(r, fs)
        });
        note(&r1, &mut seen);
        // The successor: the supervisor forks another.
        kill_recorded(
            num(&r1, "successor_pid"),
            r1["successor_start"].as_u64().unwrap(),
        );
        let r2 = wait_state(&c, "a new successor", |r, fs| {
            num(r, "successor_pid") != num(&r1, "successor_pid") && ready(r, fs)
        });
        note(&r2, &mut seen);
        // The file server: the standby takes over.
        let fs = &r2["servers"][0];
        let (old, restarts) = (
            fs["pid"].as_i64().unwrap() as i32,
            fs["restarts"].as_u64().unwrap(),
        );
        kill_recorded(old, fs["start_time"].as_u64().unwrap());
        let r3 = wait_state(&c, "a new server", |r, fs| {
            fs["restarts"].as_u64() > Some(restarts) && ready(r, fs)
        });
        note(&r3, &mut seen);
        // The standby: another is pre-forked.
        let sb = num(&r3, "standby_pid");
        kill_recorded(sb, start_time(sb).unwrap());
        let r4 = wait_state(&c, "a new standby", |r, fs| {
            num(r, "standby_pid") != sb && ready(r, fs)
        });
        note(&r4, &mut seen);
        // The keeper: its twin takes its place, with the table of open files and nodes.
        let (keeper, twin) = (num(&r4, "keeper_pid"), num(&r4, "twin_pid"));
        kill_recorded(keeper, start_time(keeper).unwrap());
        let r5 = wait_state(&c, "the twin in the keeper's place", |r, fs| {
            num(r, "keeper_pid") == twin
                && r["keeper_takeovers"].as_u64()
                    == Some(r4["keeper_takeovers"].as_u64().unwrap_or(0) + 1)
                && ready(r, fs)
        });
        note(&r5, &mut seen);
        // The twin: the keeper forks another.
        let twin = num(&r5, "twin_pid");
        kill_recorded(twin, start_time(twin).unwrap());
        let r6 = wait_state(&c, "a new twin", |r, fs| {
            num(r, "twin_pid") != twin && ready(r, fs)
        });
        note(&r6, &mut seen);
        eprintln!("round {round}: ok");
    }
    // The workload may end (and the container with it) before `touch` exits: the exec's
    // own status does not matter, the file it made does.
    let _ = c.exec(&[], &["touch", "/stop"]);
    c.wait_stopped(60);
    assert!(
        c.bundle.rootfs().join("stop").exists(),
        "exec made no /stop"
    );
    let out = c.output();
    let line = out
        .lines()
        .find(|l| l.starts_with("SUMMARY "))
        .unwrap_or_else(|| panic!("no SUMMARY; output:\n{out}"));
    assert!(
        line.ends_with(" errors=0"),
        "errors inside the container:\n{out}\nsupervisor log:\n{}",
        std::fs::read_to_string(format!("{}/{}/supervisor.log", c.root, c.id)).unwrap_or_default()
    );
    // Every fsync'ed byte is in the backing directory.
    let work = c.bundle.rootfs().join("work");
    for k in 0..7 {
        let body = std::fs::read_to_string(work.join(format!("k{k}"))).unwrap();
        assert!(body.starts_with("payload-"), "k{k}: {body:?}");
    }
    let last = record(&c).unwrap();
    note(&last, &mut seen);
    c.delete().expect_ok();
    let alive: Vec<_> = seen
        .iter()
        .filter(|(p, t)| pid_alive(*p) && start_time(*p) == Some(*t))
        .collect();
    assert!(
        alive.is_empty(),
        "Porta processes left after delete: {alive:?}"
    );
    let left = leaks::check(std::slice::from_ref(&c.id), &[c.bundle.path_str()]);
    assert!(left.is_empty(), "left after delete: {}", left.join("\n"));
    let _ = std::fs::remove_dir_all(work);
}
