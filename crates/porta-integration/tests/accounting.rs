//! Work done for a container is charged to that container: the eviction of every file a
//! container deletes (ext4 frees the inode in the context of the task that drops the last
//! reference) runs in a process of the container's cgroup — its payload or the `porta/`
//! leaf of its file server and supervisor — never in the host's. Checked with the ext4
//! tracepoint `ext4_free_inode`, in a tracefs instance of the test's own (mounted in a
//! private mount namespace), filtered on a uid only the container uses. Porta-only.

use porta_integration::*;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

const WHY: &str = "Porta's file server and supervisor in the container's cgroup";

/// The uid the container's files belong to: the tracepoint filter keeps only theirs.
const UID: u32 = 4242;
const FILES: usize = 300;

/// A tracefs instance recording `ext4_free_inode` of files owned by [`UID`], alive while
/// this value is: a shell in a private mount namespace mounted tracefs, made the instance
/// and answers `dump` with the trace so far; dropping the value removes the instance.
struct Trace {
    child: Child,
    stdin: Option<ChildStdin>,
    out: BufReader<ChildStdout>,
}

impl Trace {
    /// `None` when the kernel has no tracefs or no ext4 events (then nothing to check).
    fn start(name: &str) -> Option<Trace> {
        let script = format!(
            "set -e; [ -d /sys/kernel/tracing/instances ] || mount -t tracefs nodev /sys/kernel/tracing; \
             cd /sys/kernel/tracing/instances; \
             [ -d ../events/ext4/ext4_free_inode ] || {{ echo NOEXT4; exit 0; }}; \
             mkdir {name}; cd {name}; \
             echo 'uid == {UID}' > events/ext4/ext4_free_inode/filter; \
             echo 1 > events/ext4/ext4_free_inode/enable; \
             echo READY; \
             while read cmd; do [ \"$cmd\" = dump ] || break; cat trace; echo END; done; \
             echo 0 > events/ext4/ext4_free_inode/enable; cd ..; rmdir {name}"
        );
        let mut child = Command::new("unshare")
            .args(["-m", "--propagation", "private", "sh", "-c", &script])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn unshare");
        let stdin = child.stdin.take();
        let mut out = BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        out.read_line(&mut line)
            .expect("read from the tracing shell");
        if line.trim() != "READY" {
            drop(stdin);
            let _ = child.wait();
            skip(&format!("no ext4 tracepoints here ({})", line.trim()));
            return None;
        }
        Some(Trace { child, stdin, out })
    }

    /// The pids (threads) of the events recorded so far, one per event.
    fn dump(&mut self) -> Vec<i32> {
        if let Some(s) = self.stdin.as_mut() {
            s.write_all(b"dump\n").expect("ask the tracing shell");
        }
        let mut pids = vec![];
        let mut line = String::new();
        loop {
            line.clear();
            match self.out.read_line(&mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) if line.trim() == "END" => break,
                Ok(_) => {}
            }
            if line.starts_with('#') || !line.contains("ext4_free_inode") {
                continue;
            }
            // "  <comm>-<pid>  [cpu] flags  time: ext4_free_inode: …"
            let task = line.split('[').next().unwrap_or("").trim();
            if let Some(pid) = task.rsplit('-').next().and_then(|p| p.parse().ok()) {
                pids.push(pid);
            }
        }
        pids
    }
}

impl Drop for Trace {
    fn drop(&mut self) {
        // End of input: the shell disables the event and removes the instance.
        drop(self.stdin.take());
        let _ = self.child.wait();
    }
}

/// The cgroup v1 memory (or v2) directory of `pid`, `None` when it is gone.
fn group_of(pid: i32) -> Option<std::path::PathBuf> {
    cgroup::dir_of(pid, "memory")
}

#[test]
fn the_eviction_of_files_a_container_deletes_is_charged_to_the_container() {
    require_root!();
    porta_only!(WHY);
    for passthrough in [true, false] {
        let mut b = Bundle::new(&[]);
        b.user(UID, UID, &[]);
        if !passthrough {
            b.annotation("run.porta.fs.passthrough", "off");
        }
        b.sh(&format!(
            "d=/tmp/acct; mkdir -p $d || exit 1; i=0; \
             while [ $i -lt {FILES} ]; do echo data-$i > $d/f$i; cat $d/f$i > /dev/null; i=$((i+1)); done; \
             rm -r $d; sync; echo DONE; sleep 1000"
        ));
        let name = format!("pit-acct-{}", std::process::id());
        let Some(mut trace) = Trace::start(&name) else {
            return;
        };
        let c = Container::new("acct", b);
        c.create_start();
        assert!(
            c.wait_output("DONE", 120),
            "{}: workload did not finish: {}",
            c.id,
            c.output()
        );
        let container = group_of(c.pid())
            .and_then(|p| p.parent().map(|p| p.to_path_buf()))
            .expect("the container's cgroup");
        // The last frees follow the FORGETs of the removed files: wait for all of them,
        // by count of looks at the trace.
        let mut pids = vec![];
        for _ in 0..300 {
            pids = trace.dump();
            if pids.len() >= FILES {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        drop(trace);
        assert!(
            pids.len() >= FILES,
            "passthrough={passthrough}: {} inode frees of the container's {FILES} files",
            pids.len()
        );
        let mut outside = vec![];
        for pid in pids
            .iter()
            .copied()
            .collect::<std::collections::BTreeSet<_>>()
        {
            // Processes of the container that ended (the shell's rm) are the container's.
            let Some(g) = group_of(pid) else { continue };
            if !g.starts_with(&container) {
                let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
                outside.push(format!("{pid} ({}) in {}", comm.trim(), g.display()));
            }
        }
        assert!(
            outside.is_empty(),
            "passthrough={passthrough}: inode frees of the container's files ran outside its cgroup {}: {outside:?}",
            container.display()
        );
        c.kill("KILL");
        c.wait_stopped(30);
        c.delete().expect_ok();
    }
}

/// The supervisor works for the container (backing registrations, evictions): it joins
/// the file server's `porta/` leaf in every hierarchy, the cgroup2 one included (a
/// helper process makes that move, off the critical path of `create`).
#[test]
fn the_supervisor_joins_the_servers_leaf_in_every_hierarchy() {
    require_root!();
    porta_only!(WHY);
    let mut b = Bundle::new(&[]);
    b.sh("echo up; sleep 1000");
    let c = Container::new("acct-sup", b);
    c.create_start();
    assert!(c.wait_output("up", 30), "{}", c.output());
    let record = || -> Option<Value> {
        let p = format!("{}/{}/servers.json", c.root, c.id);
        serde_json::from_str(&std::fs::read_to_string(p).ok()?).ok()
    };
    let sup = wait_for(std::time::Duration::from_secs(30), || {
        record()?["supervisor_pid"].as_i64().filter(|p| *p > 0)
    })
    .expect("the supervisor's pid in servers.json") as i32;
    let server = record()
        .and_then(|r| r["servers"][0]["pid"].as_i64())
        .unwrap_or(0) as i32;
    assert!(server > 0, "no server pid recorded");
    // Every line of the supervisor's /proc/PID/cgroup names the same group as the
    // server's: the move into the cgroup2 leaf is asynchronous, so wait for it (bounded).
    let lines = |pid: i32| -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect();
        v.sort();
        v
    };
    let want = lines(server);
    assert!(
        want.iter().all(|l| l.ends_with("/porta")),
        "the server is not in porta/ leaves: {want:?}"
    );
    let same = wait_for(std::time::Duration::from_secs(30), || {
        (lines(sup) == want).then_some(())
    });
    assert!(
        same.is_some(),
        "supervisor {sup}: {:?}\nserver {server}: {want:?}",
        lines(sup)
    );
    c.delete();
}
