//! Every Porta process of a container can die: the supervisor, its successor, the file
//! server, the standby, the keeper and the keeper's twin are each killed with SIGKILL,
//! one at a time and several times,
//! while the container writes, fsyncs, renames and reads back files: no error inside, no
//! fsync'ed byte lost, `porta state` never calls a dead process running, and `porta
//! delete` leaves nothing (processes, mounts, cgroups, state). All Porta-only.

use porta_integration::survival::*;
use porta_integration::*;
use std::time::Duration;

const WHY: &str = "the file server's supervisor and its successor";

/// How the test reads `c`'s state.
fn watched(c: &Container) -> Watched<'_> {
    Watched {
        id: c.id.clone(),
        record: Box::new(move || {
            let p = format!("{}/{}/servers.json", c.root, c.id);
            serde_json::from_str(&std::fs::read_to_string(p).ok()?).ok()
        }),
        state: Box::new(move || {
            let o = c.rt(&["state", &c.id]);
            if !o.ok() {
                return None;
            }
            serde_json::from_str(&o.stdout).ok()
        }),
    }
}

/// After `delete`: none of the processes `seen` lives, and nothing of `c` is left.
#[track_caller]
fn assert_all_gone(c: &Container, seen: &[(i32, u64)]) {
    let alive = still_alive(seen);
    assert!(
        alive.is_empty(),
        "Porta processes left after delete: {alive:?}"
    );
    let left = leaks::check(std::slice::from_ref(&c.id), &[c.bundle.path_str()]);
    assert!(left.is_empty(), "left after delete: {}", left.join("\n"));
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

/// The iterations of [`workload`]'s output whose first error message was not one the
/// kernel gives a request it handed to a dead server's ring entry ("Operation canceled",
/// "Interrupted system call"). Messages precede the `ERR step i` line they belong to.
fn iterations_failed_not_by_the_kernel(out: &str) -> Vec<u32> {
    let mut first: std::collections::BTreeMap<u32, bool> = Default::default();
    let mut pending: Vec<&str> = Vec::new();
    for l in out.lines() {
        if let Some(rest) = l.strip_prefix("ERR ") {
            let i: u32 = rest
                .rsplit(' ')
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or(u32::MAX);
            let by_kernel = pending
                .iter()
                .any(|m| m.contains("Operation canceled") || m.contains("Interrupted system call"));
            first.entry(i).or_insert(by_kernel);
            pending.clear();
        } else if !l.starts_with("SUMMARY") {
            pending.push(l);
        }
    }
    first
        .into_iter()
        .filter(|(_, by_kernel)| !by_kernel)
        .map(|(i, _)| i)
        .collect()
}

#[test]
fn every_porta_process_can_die_while_the_container_works() {
    require_root!();
    porta_only!(WHY);
    every_process_dies_under_work(None);
}

/// The same on the io_uring transport. A killed server's successor answers what it
/// took from the rings, but on Linux up to 6.18 the kernel itself fails the requests it
/// hands to a dead server's still-armed ring entries (ECANCELED, EINTR; see
/// docs/file-server.md, "FUSE over io_uring"), so this checks what does hold: the
/// container never hangs and keeps working through every kill, every fsync'ed byte is
/// there, the state is right throughout, delete leaves nothing, and every iteration that
/// saw an error saw one of those two first. It prints how many there were.
#[test]
fn every_porta_process_can_die_while_the_container_works_on_rings() {
    require_root!();
    porta_only!(WHY);
    let Some(_on) = porta_integration::uring::Enabled::new() else {
        return;
    };
    every_process_dies_under_work(Some("uring"));
}

fn every_process_dies_under_work(transport: Option<&str>) {
    let mut b = Bundle::new(&[]);
    if let Some(t) = transport {
        b.annotation("run.porta.fs.transport", t);
    }
    b.sh(&workload(30));
    let c = Container::new("survive", b);
    c.create_start();
    let w = watched(&c);
    if let Some(t) = transport {
        let st = c.state();
        assert_eq!(st["servers"][0]["transport"], t, "{st}");
    }
    let mut seen = Vec::new();
    for round in 0..3 {
        kill_each_in_turn(&w, &mut seen);
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
    if transport == Some("uring") {
        let failed = iterations_failed_not_by_the_kernel(&out);
        eprintln!("on rings: {line}");
        assert!(
            failed.is_empty(),
            "iterations {failed:?} failed without a kernel-cancelled request first:\n{out}"
        );
    } else {
        assert!(
            line.ends_with(" errors=0"),
            "errors inside the container:\n{out}\nsupervisor log:\n{}",
            std::fs::read_to_string(format!("{}/{}/supervisor.log", c.root, c.id))
                .unwrap_or_default()
        );
    }
    // Every fsync'ed byte is in the backing directory.
    let work = c.bundle.rootfs().join("work");
    for k in 0..7 {
        let body = std::fs::read_to_string(work.join(format!("k{k}"))).unwrap();
        assert!(body.starts_with("payload-"), "k{k}: {body:?}");
    }
    let last = (w.record)().unwrap();
    note(&last, &mut seen);
    c.delete().expect_ok();
    assert_all_gone(&c, &seen);
    let _ = std::fs::remove_dir_all(work);
}

/// Both supervisors of a container die together (the supervisor stopped first, so it
/// cannot fork another successor, then both killed): `porta state` says the file server
/// failed and why, and `porta delete --force` still removes everything — the container,
/// the keeper, its twin, the server and the standby, the mount, the cgroups, the state.
#[test]
fn delete_after_both_supervisors_died_leaves_nothing() {
    require_root!();
    porta_only!(WHY);
    for passthrough in [true, false] {
        let mut b = Bundle::new(&[]);
        b.sh("echo up; while true; do cat /bin/sh > /dev/null; sleep 1; done");
        if !passthrough {
            b.annotation("run.porta.fs.passthrough", "off");
        }
        let c = Container::new("orphan", b);
        c.create_start();
        assert!(c.wait_output("up", 30), "{}", c.output());
        let w = watched(&c);
        let r = wait_state(&w, "a successor, a standby and a twin", ready);
        let mut seen = Vec::new();
        note(&r, &mut seen);
        let (sup, succ) = (num(&r, "supervisor_pid"), num(&r, "successor_pid"));
        signal_recorded(sup, r["supervisor_start"].as_u64().unwrap(), libc::SIGSTOP);
        signal_recorded(succ, r["successor_start"].as_u64().unwrap(), libc::SIGKILL);
        signal_recorded(sup, r["supervisor_start"].as_u64().unwrap(), libc::SIGKILL);
        let st = wait_for(Duration::from_secs(30), || {
            let o = c.rt(&["state", &c.id]);
            let v: Value = serde_json::from_str(&o.stdout).ok()?;
            (v["servers"][0]["state"] == "failed").then_some(v)
        })
        .unwrap_or_else(|| panic!("state never said failed: {:?}", c.rt(&["state", &c.id])));
        let err = st["servers"][0]["error"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert!(
            err.contains(&sup.to_string()) && err.contains(&succ.to_string()),
            "the cause names both supervisors: {st}"
        );
        c.rt(&["delete", "--force", &c.id]).expect_ok();
        assert_all_gone(&c, &seen);
    }
}
