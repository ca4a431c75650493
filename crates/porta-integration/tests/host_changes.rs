//! Changes made from the host to a running container's root (`root.path` of the bundle)
//! are seen inside, as under runc: a file copied in after the container's failed lookup of
//! its name (a cached negative entry), a file edited in place, a file replaced by rename,
//! a removal, a chmod, a chown, a truncate, an append, a name added to a directory whose
//! listing the container read. Each time the container first caches the old state (reads
//! the file, lists the directory, or looks the missing name up), then the host changes
//! the backing tree, then the container's next single access must see the change. Both in
//! passthrough and in strict mode (`run.porta.fs.passthrough=off`). And the container's
//! own changes trigger no invalidation.
//!
//! The guarantee tested (Porta): the supervisor's watcher handles the host's events in the
//! order they happened and logs each batch it invalidated (with the names it expired), so
//! once it has handled a later change — a *fence*: a new name the host creates in the
//! root afterwards — every access sees the earlier change. The test waits for the fence's
//! log line (an event, bounded by a count of checks), then accesses once. Under runc the
//! container shares the host's dentries and nothing needs waiting for.

use porta_integration::*;
use std::path::{Path, PathBuf};

/// The supervisor's log of container `c` (its state directory under the tests' root).
fn supervisor_log(c: &Container) -> PathBuf {
    Path::new(ROOT).join(&c.id).join("supervisor.log")
}

/// The `total=N` of the last line of `log` about host changes, or 0.
fn invalidations_logged(log: &str) -> u64 {
    log.lines()
        .rev()
        .filter(|l| l.contains("host changes: invalidated"))
        .filter_map(|l| {
            l.split_whitespace()
                .find_map(|w| w.strip_prefix("total="))
                .and_then(|n| n.parse().ok())
        })
        .next()
        .unwrap_or(0)
}

/// A fence: the host creates a new name in the root; returns once the container's
/// watcher has handled it (Porta; at once under runc), with the watcher's total count of
/// invalidations then.
fn fence(c: &Container, n: &mut u32) -> u64 {
    *n += 1;
    let name = format!(".porta-fence-{n}");
    std::fs::write(c.bundle.rootfs().join(&name), b"").unwrap();
    if !is_porta() {
        return 0;
    }
    let log = supervisor_log(c);
    let needle = format!("\"{name}\"");
    // Wait for the watcher's line naming the fence: 6,000 checks 10 ms apart, a bound
    // that only a hung supervisor reaches.
    for _ in 0..6000 {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if let Some(line) = text.lines().find(|l| l.contains(&needle)) {
            let upto = &text[..text.find(line).unwrap() + line.len()];
            return invalidations_logged(upto);
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    panic!(
        "the watcher never handled the fence {name}; supervisor log:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
}

/// Runs `script` in the container; its stdout (panics on failure).
#[track_caller]
fn sh(c: &Container, script: &str) -> String {
    let o = c.exec(&[], &["sh", "-c", script]);
    assert!(o.ok(), "`{script}` failed in {}: {}", c.id, o.stderr);
    o.stdout
}

fn started(tag: &str, strict: bool) -> Container {
    let mut b = Bundle::new(&[]);
    if strict {
        b.annotation("run.porta.fs.passthrough", "off");
    }
    b.sh("exec sleep 1000");
    let root = b.rootfs();
    std::fs::create_dir(root.join("hc")).unwrap();
    for (name, text) in [
        ("edit", "aaaa\n"),
        ("conf", "old\n"),
        ("gone", "here\n"),
        ("mode", "m\n"),
        ("owner", "o\n"),
        ("trunc", "123456789\n"),
        ("append", "one\n"),
    ] {
        std::fs::write(root.join("hc").join(name), text).unwrap();
    }
    std::fs::create_dir(root.join("hc/dir")).unwrap();
    std::fs::write(root.join("hc/dir/a"), "a").unwrap();
    let c = Container::new(tag, b);
    c.create_start();
    c
}

fn host_changes_are_seen(strict: bool) {
    let c = started(if strict { "hc-strict" } else { "hc-pass" }, strict);
    let hc = c.bundle.rootfs().join("hc");
    let mut n = 0;

    // The container caches the old state of everything.
    let o = c.exec(&[], &["cat", "/hc/new"]);
    assert!(!o.ok(), "/hc/new exists before the host made it");
    let o = c.exec(&[], &["ls", "/hc/newdir"]);
    assert!(!o.ok(), "/hc/newdir exists before the host made it");
    let before = sh(
        &c,
        "cat /hc/edit /hc/conf /hc/gone /hc/trunc /hc/append; ls -ln /hc/mode /hc/owner; ls /hc/dir",
    );
    assert_eq!(
        before.lines().take(5).collect::<Vec<_>>(),
        ["aaaa", "old", "here", "123456789", "one"]
    );

    // The host changes the backing tree.
    std::fs::write(hc.join("new"), "copied in\n").unwrap(); // docker cp of a new file
    std::fs::create_dir(hc.join("newdir")).unwrap();
    std::fs::write(hc.join("newdir/f"), "deep\n").unwrap();
    {
        use std::io::{Seek, Write};
        // An edit in place (same size: only the contents tell).
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(hc.join("edit"))
            .unwrap();
        f.seek(std::io::SeekFrom::Start(0)).unwrap();
        f.write_all(b"bbbb").unwrap();
    }
    std::fs::write(hc.join(".conf.tmp"), "new\n").unwrap(); // replaced by rename
    std::fs::rename(hc.join(".conf.tmp"), hc.join("conf")).unwrap();
    std::fs::remove_file(hc.join("gone")).unwrap();
    std::fs::set_permissions(
        hc.join("mode"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    std::os::unix::fs::chown(hc.join("owner"), Some(123), Some(456)).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(hc.join("trunc"))
        .unwrap()
        .set_len(3)
        .unwrap();
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(hc.join("append"))
            .unwrap();
        f.write_all(b"two\n").unwrap();
    }
    std::fs::write(hc.join("dir/b"), "b").unwrap();
    fence(&c, &mut n);

    // One access each, no retry.
    assert_eq!(
        sh(&c, "cat /hc/new"),
        "copied in\n",
        "a file copied in after a failed lookup"
    );
    assert_eq!(
        sh(&c, "cat /hc/newdir/f"),
        "deep\n",
        "a directory made after a failed lookup"
    );
    assert_eq!(sh(&c, "cat /hc/edit"), "bbbb\n", "a file edited in place");
    assert_eq!(sh(&c, "cat /hc/conf"), "new\n", "a file replaced by rename");
    assert_eq!(
        sh(&c, "[ -e /hc/gone ] && echo present || echo gone"),
        "gone\n",
        "a removal"
    );
    let mode = sh(&c, "ls -ln /hc/mode");
    assert!(mode.starts_with("-rw-------"), "a chmod: {mode}");
    let owner = sh(&c, "ls -ln /hc/owner");
    let f: Vec<&str> = owner.split_whitespace().collect();
    assert_eq!((f[2], f[3]), ("123", "456"), "a chown: {owner}");
    assert_eq!(sh(&c, "cat /hc/trunc"), "123", "a truncate");
    assert_eq!(sh(&c, "wc -c < /hc/trunc").trim(), "3", "a truncate (size)");
    assert_eq!(sh(&c, "cat /hc/append"), "one\ntwo\n", "an append");
    assert_eq!(
        sh(&c, "ls /hc/dir"),
        "a\nb\n",
        "a name added to a listed directory"
    );
}

#[test]
fn host_changes_are_seen_in_passthrough_mode() {
    require_root!();
    host_changes_are_seen(false);
}

#[test]
fn host_changes_are_seen_in_strict_mode() {
    require_root!();
    host_changes_are_seen(true);
}

/// The container's own changes (through its file server, and in passthrough mode its
/// writes to the backing files, made in its own context) invalidate nothing: between two
/// fences, the watcher's count grows by what a fence costs alone.
fn own_changes_invalidate_nothing(strict: bool) {
    porta_only!("the watcher counts its invalidations in the supervisor's log");
    let c = started(if strict { "hc-own-s" } else { "hc-own-p" }, strict);
    let mut n = 0;
    let t0 = fence(&c, &mut n);
    let t1 = fence(&c, &mut n);
    let per_fence = t1 - t0;
    assert!(per_fence > 0, "a fence costs no invalidation?");
    // In passthrough mode the kernel writes to the backing file in the writer's own
    // context; the watcher knows the writer for the container's while it is in the
    // container's cgroup when its first event is read. So the writes here come from one
    // shell (builtins) that lives on until the second fence was handled; the rest goes
    // through the file server. It says it is done by a file the test sees in the backing
    // tree.
    let o = c.exec(
        &["-d"],
        &[
            "sh",
            "-c",
            "set -e; cd /hc; echo x > own; echo y >> own; mv own own2; chmod 600 own2; \
             touch own2; mkdir d; echo z > d/f; mv d d2; rm -r d2; cat own2 >/dev/null; \
             i=0; while [ $i -lt 64 ]; do echo 0123456789abcdef >> big; i=$((i+1)); done; \
             truncate -s 5 big; rm own2 big; echo bbbb > edit; ls / >/dev/null; \
             touch /hc/own-done; exec sleep 1000",
        ],
    );
    assert!(o.ok(), "exec -d failed: {}", o.stderr);
    let done = c.bundle.rootfs().join("hc/own-done");
    // A bound by count (6,000 checks 10 ms apart) that only a hung container reaches.
    for _ in 0..6000 {
        if done.exists() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert!(done.exists(), "the container's own work never finished");
    let t2 = fence(&c, &mut n);
    assert_eq!(
        t2 - t1,
        per_fence,
        "the container's own changes caused {} invalidations; supervisor log:\n{}",
        (t2 - t1).saturating_sub(per_fence),
        std::fs::read_to_string(supervisor_log(&c)).unwrap_or_default()
    );
}

#[test]
fn own_changes_invalidate_nothing_in_passthrough_mode() {
    require_root!();
    own_changes_invalidate_nothing(false);
}

#[test]
fn own_changes_invalidate_nothing_in_strict_mode() {
    require_root!();
    own_changes_invalidate_nothing(true);
}

/// With `run.porta.fs.host-changes=off` nothing is watched: the container keeps what it
/// cached (the long timeouts), as the switch documents; a bad value is refused, naming
/// the annotation.
#[test]
fn the_switch_turns_the_watcher_off_and_bad_values_are_refused() {
    require_root!();
    porta_only!("run.porta.fs.host-changes is Porta's annotation");
    let mut b = Bundle::new(&[]);
    b.annotation("run.porta.fs.host-changes", "maybe");
    b.sh("exec sleep 1000");
    let c = Container::new("hc-bad", b);
    let o = c.create();
    assert!(!o.ok(), "a bad value was accepted");
    assert!(
        o.stderr.contains("run.porta.fs.host-changes"),
        "the error does not name the annotation: {}",
        o.stderr
    );
    drop(c);

    let mut b = Bundle::new(&[]);
    b.annotation("run.porta.fs.host-changes", "off");
    b.sh("exec sleep 1000");
    let c = Container::new("hc-off", b);
    c.create_start();
    let log = std::fs::read_to_string(supervisor_log(&c)).unwrap_or_default();
    assert!(
        log.contains("host changes are not watched"),
        "the supervisor does not say the watcher is off:\n{log}"
    );
    assert!(!c.exec(&[], &["cat", "/late"]).ok());
    std::fs::write(c.bundle.rootfs().join("late"), "x").unwrap();
    // Nothing will invalidate the negative entry: it stays for its one-day timeout.
    assert!(
        !c.exec(&[], &["cat", "/late"]).ok(),
        "seen without the watcher?"
    );
}
