//! The file server on the io_uring transport (`run.porta.fs.transport`): a container's
//! file work served over FUSE io_uring rings, and the annotation's checks.
//!
//! FUSE over io_uring is off by default in the kernel (`enable_uring`): each test that
//! needs it turns it on for its duration and puts back what it found (a guard). A kernel
//! without it (no `/sys/module/fuse/parameters/enable_uring`) skips them with a reason.

use porta_integration::*;

use porta_integration::uring::Enabled;

const WHY: &str = "Porta's file-server transports";

/// The script's file work: creates, writes, appends, fsyncs, renames, links, lists,
/// removes; prints DONE when everything checked out.
const FILE_WORK: &str = "exec 2>&1; set -e; mkdir -p /w/d; cd /w; \
    for i in 1 2 3 4 5 6 7 8 9 10; do echo line-$i > f$i; done; \
    for i in 1 2 3 4 5 6 7 8 9 10; do [ \"$(cat f$i)\" = line-$i ]; done; \
    dd if=/dev/zero of=big bs=65536 count=40 2>/dev/null; [ $(wc -c < big) = 2621440 ]; \
    echo more >> f1; [ \"$(tail -n1 f1)\" = more ]; sync f1; \
    mv f2 d/moved; [ -e d/moved ] && [ ! -e f2 ]; ln f3 d/hard; [ \"$(cat d/hard)\" = line-3 ]; \
    ln -s f4 sym; [ \"$(cat sym)\" = line-4 ]; \
    [ $(ls | wc -l) = 12 ]; rm -r d sym big f*; [ -z \"$(ls)\" ]; \
    echo DONE";

/// The transport the running server reports in `porta state`.
fn reported_transport(c: &Container) -> String {
    let st = c.state();
    st["servers"][0]["transport"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn a_container_does_file_work_on_the_io_uring_transport() {
    require_root!();
    porta_only!(WHY);
    let Some(_on) = Enabled::new() else { return };
    for passthrough in [true, false] {
        let mut b = Bundle::new(&[]);
        b.annotation("run.porta.fs.transport", "uring");
        if !passthrough {
            b.annotation("run.porta.fs.passthrough", "off");
        }
        b.sh(&format!(
            "{FILE_WORK}; echo up; while [ ! -e /stop ]; do sleep 1; done"
        ));
        let c = Container::new("uring", b);
        c.create_start();
        assert!(
            c.wait_output("up", 60),
            "passthrough {passthrough}: {}\nsupervisor log:\n{}",
            c.output(),
            std::fs::read_to_string(format!("{}/{}/supervisor.log", c.root, c.id))
                .unwrap_or_default()
        );
        assert!(c.output().contains("DONE"), "{}", c.output());
        assert_eq!(reported_transport(&c), "uring", "{}", c.state());
        let _ = c.exec(&[], &["touch", "/stop"]);
        c.wait_stopped(60);
        c.delete().expect_ok();
        let left = leaks::check(std::slice::from_ref(&c.id), &[c.bundle.path_str()]);
        assert!(left.is_empty(), "left after delete: {}", left.join("\n"));
    }
}

/// A server killed while it holds a request it took from a ring: the first server
/// crashes (SIGSEGV, the fault-injection build's `crash-once:NAME`) in the LOOKUP of a
/// name, after the kernel put the LOOKUP in one of its ring entries. Nothing resends a
/// ring request on this kernel; its successor finds it in the shared ring buffers,
/// serves it and commits the answer: the container's lookup gets its answer and no error.
/// Without that the lookup would wait for good (the test then fails on its deadline).
#[test]
fn a_request_a_killed_server_took_from_a_ring_is_answered_by_its_successor() {
    require_root!();
    porta_only!(WHY);
    let Some(_on) = Enabled::new() else { return };
    for passthrough in [true, false] {
        let mut b = Bundle::new(&[]);
        b.annotation("run.porta.fs.transport", "uring");
        if !passthrough {
            b.annotation("run.porta.fs.passthrough", "off");
        }
        b.sh("cat /fine; [ -e /sacrifice ]; echo sacrifice=$?; cat /fine; echo after=$?");
        std::fs::write(b.rootfs().join("fine"), "fine\n").unwrap();
        let c = Container::new("uring-crash", b);
        let bundle = c.bundle.path_str();
        Cmd::new(fault_runtime())
            .args([
                "--root", &c.root, "run", "--detach", "--bundle", &bundle, &c.id,
            ])
            .env("PORTA_FS_FAULT", "crash-once:sacrifice")
            .stdout_file(std::fs::File::create(c.bundle.file("out")).unwrap())
            .run()
            .expect_ok();
        let st = wait_for(std::time::Duration::from_secs(60), || {
            let st = c.state();
            (st["status"] == "stopped").then_some(st)
        })
        .unwrap_or_else(|| {
            panic!(
                "passthrough {passthrough}: the container never ended (a request waits for \
                 good?): {:?}",
                std::fs::read_to_string(c.bundle.file("out"))
            )
        });
        let out = std::fs::read_to_string(c.bundle.file("out")).unwrap();
        assert_eq!(
            out, "fine\nsacrifice=1\nfine\nafter=0\n",
            "passthrough {passthrough}: {st}"
        );
        let fs = &st["servers"][0];
        assert!(
            fs["restarts"].as_u64() >= Some(1),
            "passthrough {passthrough}: the first server crashed in the lookup: {st}"
        );
        let log = std::fs::read_to_string(format!("{}/{}/supervisor.log", c.root, c.id))
            .unwrap_or_default();
        assert!(
            log.contains("answering a request the previous server took"),
            "passthrough {passthrough}: the successor answered it from the ring:\n{log}"
        );
        c.delete().expect_ok();
        let left = leaks::check(std::slice::from_ref(&c.id), &[c.bundle.path_str()]);
        assert!(left.is_empty(), "left after delete: {}", left.join("\n"));
    }
}

/// `uring` where the kernel does not allow it: `create` fails, naming the annotation and
/// how to turn FUSE over io_uring on, and leaves nothing behind. An unknown value fails too.
#[test]
fn the_transport_annotation_is_checked() {
    require_root!();
    porta_only!(WHY);
    let _lock = porta_integration::uring::Enabled::off();
    for (value, want) in [("uring", "enable_uring"), ("fast", "expected")] {
        let mut b = Bundle::new(&["true"]);
        b.annotation("run.porta.fs.transport", value);
        let c = Container::new("uring-bad", b);
        let o = c.create();
        assert!(!o.ok(), "{value}: create succeeded");
        assert!(
            o.stderr.contains("run.porta.fs.transport") && o.stderr.contains(want),
            "{value}: {}",
            o.stderr
        );
        assert!(
            !std::path::Path::new(&format!("{}/{}", c.root, c.id)).exists(),
            "{value}: state left behind"
        );
    }
}

/// The io_uring instances of killed servers do not pile up in the descriptor table the
/// servers share with the keeper: after five kills the server's table holds one ring per
/// ring thread (one per possible CPU here, up to five), and `delete` leaves nothing.
#[test]
fn killed_servers_leave_no_rings_behind() {
    require_root!();
    porta_only!(WHY);
    let Some(_on) = Enabled::new() else { return };
    use porta_integration::survival::{num, signal_recorded};
    let mut b = Bundle::new(&[]);
    b.annotation("run.porta.fs.transport", "uring");
    b.sh("while [ ! -e /stop ]; do cat /bin/sh > /dev/null; sleep 0.1; done");
    let c = Container::new("uring-fds", b);
    c.create_start();
    let rec = || -> Option<Value> {
        let p = format!("{}/{}/servers.json", c.root, c.id);
        serde_json::from_str(&std::fs::read_to_string(p).ok()?).ok()
    };
    let running = |restarts: u64| {
        wait_for(std::time::Duration::from_secs(30), || {
            let r = rec()?;
            let fs = &r["servers"][0];
            (fs["state"] == "running"
                && fs["restarts"].as_u64() == Some(restarts)
                && pid_alive(num(fs, "pid")))
            .then(|| fs.clone())
        })
        .unwrap_or_else(|| panic!("no server running after {restarts} restarts: {:?}", rec()))
    };
    let rings = |pid: i32| {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|d| {
                d.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
                    .filter(|l| l.to_string_lossy() == "anon_inode:[io_uring]")
                    .count()
            })
            .unwrap_or(0)
    };
    let possible = std::fs::read_to_string("/sys/devices/system/cpu/possible").unwrap();
    let cpus: usize = possible
        .trim()
        .split(',')
        .map(|p| match p.split_once('-') {
            Some((a, b)) => b.parse::<usize>().unwrap() - a.parse::<usize>().unwrap() + 1,
            None => 1,
        })
        .sum();
    let want = cpus.min(5);
    for k in 0..5 {
        let fs = running(k);
        let pid = num(&fs, "pid");
        // The ring threads create their rings after INIT or a takeover, and a new server
        // closes its predecessor's only once its own entries are armed: wait until the
        // table holds exactly one ring per thread (bounded: a pile-up never gets there).
        wait_for(std::time::Duration::from_secs(30), || {
            (rings(pid) == want).then_some(())
        })
        .unwrap_or_else(|| {
            panic!(
                "after {k} kills server {pid}'s table holds {} rings, want {want}",
                rings(pid)
            )
        });
        signal_recorded(pid, fs["start_time"].as_u64().unwrap(), libc::SIGKILL);
    }
    let fs = running(5);
    let pid = num(&fs, "pid");
    // (As above: the predecessor's rings go once the new ones are armed; a pile-up
    // never comes down to one ring per thread.)
    let settled = wait_for(std::time::Duration::from_secs(30), || {
        (rings(pid) == want).then_some(())
    });
    assert!(
        settled.is_some(),
        "after 5 kills the shared table holds {} rings, want {want}",
        rings(pid)
    );
    let _ = c.exec(&[], &["touch", "/stop"]);
    c.wait_stopped(60);
    c.delete().expect_ok();
    let left = leaks::check(std::slice::from_ref(&c.id), &[c.bundle.path_str()]);
    assert!(left.is_empty(), "left after delete: {}", left.join("\n"));
}
