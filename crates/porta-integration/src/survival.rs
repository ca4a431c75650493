//! Killing a container's Porta processes one at a time (supervisor, successor, server,
//! standby, keeper, twin) and waiting for what takes each one's place, as the supervisor's
//! record (`servers.json`) and `porta state` show it.

use crate::{pid_alive, start_time, wait_for, Value};
use std::os::fd::AsFd;
use std::time::Duration;

/// How a test reads one container's state: the supervisor's record and `porta state`.
pub struct Watched<'a> {
    /// Container id (for messages).
    pub id: String,
    /// The supervisor's record (`<root>/<id>/servers.json`), parsed.
    pub record: Box<dyn Fn() -> Option<Value> + 'a>,
    /// `porta state <id>`, parsed.
    pub state: Box<dyn Fn() -> Option<Value> + 'a>,
}

/// The pid field `k` of a record.
pub fn num(v: &Value, k: &str) -> i32 {
    v[k].as_i64().unwrap_or(0) as i32
}

/// True once every thread of `pid` has exited (its pidfd is readable) or it is gone. A
/// leader that is a zombie while other threads still exit has not exited yet.
pub fn exited(pid: i32) -> bool {
    match porta_sys::pidfd::open(pid) {
        Ok(fd) => porta_sys::pidfd::has_exited(fd.as_fd()),
        Err(_) => true,
    }
}

/// Sends `sig` through a pidfd, after checking the pid is still the process recorded
/// (its start time), so a reused pid is never signalled.
#[track_caller]
pub fn signal_recorded(pid: i32, start: u64, sig: i32) {
    assert!(pid > 0);
    let fd = porta_sys::pidfd::open(pid).unwrap_or_else(|e| panic!("pidfd_open({pid}): {e}"));
    assert_eq!(
        start_time(pid),
        Some(start),
        "pid {pid} is not the recorded process"
    );
    porta_sys::pidfd::send_signal(fd.as_fd(), sig)
        .unwrap_or_else(|e| panic!("signal {sig} to pid {pid}: {e}"));
}

/// SIGKILL of a live pid (see [`signal_recorded`]), its start time read now.
#[track_caller]
pub fn kill_now(pid: i32) {
    let start = start_time(pid).unwrap_or_else(|| panic!("pid {pid} is gone"));
    signal_recorded(pid, start, libc::SIGKILL);
}

/// Waits until the record and `porta state` satisfy `f`; on the way, `porta state` must
/// never call running a server that was dead before it was asked.
#[track_caller]
pub fn wait_state(w: &Watched, what: &str, f: impl Fn(&Value, &Value) -> bool) -> Value {
    let r = wait_for(Duration::from_secs(30), || {
        let dead: Vec<i64> = (w.record)()
            .and_then(|r| r["servers"].as_array().cloned())
            .unwrap_or_default()
            .iter()
            .map(|s| s["pid"].as_i64().unwrap_or(0))
            .filter(|p| *p > 0 && exited(*p as i32))
            .collect();
        let st = (w.state)()?;
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
        let rec = (w.record)()?;
        f(&rec, &fs).then_some(rec)
    });
    r.unwrap_or_else(|| {
        panic!(
            "{}: timed out waiting for {what}; record {:?}",
            w.id,
            (w.record)()
        )
    })
}

/// Everything the record names, with start times (to check they are all gone later).
pub fn note(rec: &Value, seen: &mut Vec<(i32, u64)>) {
    let mut pids: Vec<i32> = [
        "supervisor_pid",
        "successor_pid",
        "keeper_pid",
        "twin_pid",
        "standby_pid",
    ]
    .iter()
    .map(|k| num(rec, k))
    .collect();
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

/// Every process of the file server is there and alive, and the server runs.
pub fn ready(rec: &Value, fs: &Value) -> bool {
    let alive = |k: &str| num(rec, k) > 0 && pid_alive(num(rec, k));
    fs["state"] == "running"
        && alive("supervisor_pid")
        && alive("successor_pid")
        && alive("standby_pid")
        && alive("keeper_pid")
        && alive("twin_pid")
        && fs["pid"].as_i64().is_some_and(|p| pid_alive(p as i32))
}

/// One round: kills the supervisor, the successor, the server, the standby, the keeper
/// and the twin, one at a time, each after the previous one was replaced, and checks who
/// replaced it. Every pid seen goes into `seen`.
#[track_caller]
pub fn kill_each_in_turn(w: &Watched, seen: &mut Vec<(i32, u64)>) {
    let count = |r: &Value, k: &str| r[k].as_u64().unwrap_or(0);
    // The supervisor: its successor takes over.
    let r0 = wait_state(w, "a successor", ready);
    note(&r0, seen);
    signal_recorded(
        num(&r0, "supervisor_pid"),
        count(&r0, "supervisor_start"),
        libc::SIGKILL,
    );
    let r1 = wait_state(w, "the takeover", |r, fs| {
        num(r, "supervisor_pid") == num(&r0, "successor_pid")
            && count(r, "takeovers") == count(&r0, "takeovers") + 1
            && ready(r, fs)
    });
    note(&r1, seen);
    // The successor: the supervisor forks another.
    signal_recorded(
        num(&r1, "successor_pid"),
        count(&r1, "successor_start"),
        libc::SIGKILL,
    );
    let r2 = wait_state(w, "a new successor", |r, fs| {
        num(r, "successor_pid") != num(&r1, "successor_pid") && ready(r, fs)
    });
    note(&r2, seen);
    // The file server: the standby takes over.
    let fs = &r2["servers"][0];
    let (old, restarts) = (num(fs, "pid"), count(fs, "restarts"));
    signal_recorded(old, count(fs, "start_time"), libc::SIGKILL);
    let r3 = wait_state(w, "a new server", |r, fs| {
        fs["restarts"].as_u64() > Some(restarts) && ready(r, fs)
    });
    note(&r3, seen);
    // The standby: another is pre-forked.
    let sb = num(&r3, "standby_pid");
    kill_now(sb);
    let r4 = wait_state(w, "a new standby", |r, fs| {
        num(r, "standby_pid") != sb && ready(r, fs)
    });
    note(&r4, seen);
    // The keeper: its twin takes its place, with the table of open files and nodes.
    let (keeper, twin) = (num(&r4, "keeper_pid"), num(&r4, "twin_pid"));
    kill_now(keeper);
    let r5 = wait_state(w, "the twin in the keeper's place", |r, fs| {
        num(r, "keeper_pid") == twin
            && count(r, "keeper_takeovers") == count(&r4, "keeper_takeovers") + 1
            && ready(r, fs)
    });
    note(&r5, seen);
    // The twin: the keeper forks another.
    let twin = num(&r5, "twin_pid");
    kill_now(twin);
    let r6 = wait_state(w, "a new twin", |r, fs| {
        num(r, "twin_pid") != twin && ready(r, fs)
    });
    note(&r6, seen);
}

/// The processes of `seen` still alive (same pid and start time).
pub fn still_alive(seen: &[(i32, u64)]) -> Vec<(i32, u64)> {
    seen.iter()
        .copied()
        .filter(|(p, t)| pid_alive(*p) && start_time(*p) == Some(*t))
        .collect()
}
