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

/// The tests of this file one at a time: the watcher marks the whole file system, and
/// another test's bundle made or removed meanwhile (inode numbers reused) shows up as
/// foreign events, which the exact counts of `own_changes_invalidate_nothing` would take
/// for the container's.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

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
    fence_in(c, &c.bundle.rootfs(), n)
}

/// [`fence`] for a container whose root (as the host reaches it) is `root`.
fn fence_in(c: &Container, root: &Path, n: &mut u32) -> u64 {
    *n += 1;
    let name = format!(".porta-fence-{n}");
    std::fs::write(root.join(&name), b"").unwrap();
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
    let _serial = serial();
    require_root!();
    host_changes_are_seen(false);
}

#[test]
fn host_changes_are_seen_in_strict_mode() {
    let _serial = serial();
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
    let _serial = serial();
    require_root!();
    own_changes_invalidate_nothing(false);
}

#[test]
fn own_changes_invalidate_nothing_in_strict_mode() {
    let _serial = serial();
    require_root!();
    own_changes_invalidate_nothing(true);
}

/// With `run.porta.fs.host-changes=off` nothing is watched: the container keeps what it
/// cached (the long timeouts), as the switch documents; a bad value is refused, naming
/// the annotation.
#[test]
fn the_switch_turns_the_watcher_off_and_bad_values_are_refused() {
    let _serial = serial();
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

// --- The fallbacks: an overlay root (what Podman and containerd hand over), with and
// without file handles; the watcher's queue overflowing; rootless containers.

/// An overlay mount made for one test: lower layer a private copy of the test root file
/// system, upper and work directories beside it, all in one temporary directory. Dropped
/// (after the container that uses it, so declare it first): unmounted, then removed.
struct Overlay {
    dir: tempfile::TempDir,
}

impl Overlay {
    /// Mounts the overlay with `extra` options (e.g. `nfs_export=off`); Err: the kernel's
    /// refusal (an option it does not allow here).
    fn mount(extra: &str) -> Result<Overlay, std::io::Error> {
        std::fs::create_dir_all(BUNDLES).unwrap();
        let dir = tempfile::Builder::new()
            .prefix("ovl-")
            .tempdir_in(BUNDLES)
            .unwrap();
        let p = dir.path();
        porta_integration::rootfs::install(&p.join("lower"));
        for d in ["upper", "work", "merged"] {
            std::fs::create_dir(p.join(d)).unwrap();
        }
        let opts = format!(
            "lowerdir={},upperdir={},workdir={},{extra}",
            p.join("lower").display(),
            p.join("upper").display(),
            p.join("work").display()
        );
        let target = std::ffi::CString::new(p.join("merged").display().to_string()).unwrap();
        let data = std::ffi::CString::new(opts).unwrap();
        // SAFETY: mount(2) with NUL-terminated strings that outlive the call.
        let r = unsafe {
            libc::mount(
                c"overlay".as_ptr(),
                target.as_ptr(),
                c"overlay".as_ptr(),
                0,
                data.as_ptr().cast(),
            )
        };
        if r != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Overlay { dir })
    }

    /// The merged directory: the container's root, and where the host makes its changes.
    fn merged(&self) -> PathBuf {
        self.dir.path().join("merged")
    }
}

impl Drop for Overlay {
    fn drop(&mut self) {
        unmount_below(self.dir.path());
    }
}

/// A container (`exec sleep 1000`) whose root is the overlay's merged directory.
fn on_overlay(tag: &str, ovl: &Overlay, strict: bool) -> Container {
    let mut b = Bundle::empty(&[]);
    if strict {
        b.annotation("run.porta.fs.passthrough", "off");
    }
    b.sh("exec sleep 1000");
    b.config["root"]["path"] = serde_json::json!(ovl.merged().display().to_string());
    let root = ovl.merged();
    std::fs::create_dir(root.join("hc")).unwrap();
    std::fs::write(root.join("hc/grow"), "one\n").unwrap();
    std::fs::write(root.join("hc/mode"), "m\n").unwrap();
    let c = Container::new(tag, b);
    c.create_start();
    c
}

/// The container caches what the next checks must see change: a failed lookup of
/// `/hc/new`, the size of `/hc/grow`, the mode of `/hc/mode`.
fn cache_old_state(c: &Container) {
    assert!(
        !c.exec(&[], &["cat", "/hc/new"]).ok(),
        "/hc/new exists early"
    );
    assert_eq!(
        sh(c, "cat /hc/grow; ls -ln /hc/mode | cut -c1-10"),
        "one\n-rw-r--r--\n"
    );
}

/// The host changes what [`cache_old_state`] cached, through the root it reaches.
fn change_from_host(root: &Path) {
    use std::io::Write;
    std::fs::write(root.join("hc/new"), "copied in\n").unwrap();
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(root.join("hc/grow"))
        .unwrap();
    f.write_all(b"two\n").unwrap();
    std::fs::set_permissions(
        root.join("hc/mode"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
}

/// What the container must see once the host's changes reached it.
const CHANGED: &str = "copied in\none\ntwo\n-rw-------\n";
const SHOW: &str = "cat /hc/new /hc/grow; ls -ln /hc/mode | cut -c1-10";

/// Checks, inside the container, until `show` prints `want`: at most `tries` checks 0.1 s
/// apart (a count; the bound is far above the 1 s fallback timeout and far below the
/// one-day one). Returns the number of checks that saw the old state.
fn checks_until_seen(c: &Container, show: &str, want: &str, tries: u32) -> u32 {
    let script = format!(
        "i=0; while [ $i -lt {tries} ]; do \
           [ \"$({show} 2>/dev/null)\" = \"$(printf '{}')\" ] && {{ echo $i; exit 0; }}; \
           sleep 0.1; i=$((i+1)); done; {show}; exit 1",
        want.replace('\n', "\\n")
    );
    let o = c
        .cmd()
        .args(["exec", &c.id, "sh", "-c", &script])
        .timeout(std::time::Duration::from_secs(600))
        .run();
    assert!(
        o.ok(),
        "the host's changes were not all seen after {tries} checks 0.1 s apart ({o}); the container sees:\n{}\nsupervisor log:\n{}",
        o.stdout,
        std::fs::read_to_string(supervisor_log(c)).unwrap_or_default()
    );
    o.stdout.trim().parse().unwrap_or(0)
}

/// An overlay root without file handles (`nfs_export=off`, the default of most kernels:
/// what Podman and containerd hand over): fanotify cannot mark it, the supervisor says so
/// and the servers answer with 1-second timeouts, so a host change made through the
/// merged directory is seen once they expire — a new name after a failed lookup, a chmod,
/// and in passthrough mode an append. Strict mode (writeback cache): the kernel keeps its
/// own size of a file it holds, so an append is not checked there (documented limit).
fn overlay_without_file_handles(strict: bool) {
    let ovl = match Overlay::mount("nfs_export=off") {
        Ok(o) => o,
        Err(e) => return skip(&format!("cannot mount an overlay here: {e}")),
    };
    let c = on_overlay(if strict { "hc-ovl-s" } else { "hc-ovl-p" }, &ovl, strict);
    if is_porta() {
        let log = std::fs::read_to_string(supervisor_log(&c)).unwrap_or_default();
        assert!(
            log.contains("cannot watch the backing tree for host changes")
                && log.contains("ttl_secs=1"),
            "the supervisor does not say it falls back to short timeouts:\n{log}"
        );
    }
    cache_old_state(&c);
    change_from_host(&ovl.merged());
    let stale = if strict && is_porta() {
        let n = checks_until_seen(
            &c,
            "cat /hc/new; ls -ln /hc/mode | cut -c1-10",
            "copied in\n-rw-------\n",
            600,
        );
        // Not asserted (the kernel may forget the inode under memory pressure, and then
        // it is seen): the documented limit, shown for the record.
        let grow = sh(&c, "cat /hc/grow");
        eprintln!("strict mode, the host's append to a held file: {grow:?}");
        n
    } else {
        checks_until_seen(&c, SHOW, CHANGED, 600)
    };
    eprintln!("seen after {stale} checks 0.1 s apart saw the old state");
}

#[test]
fn overlay_root_without_file_handles_falls_back_to_short_timeouts_passthrough() {
    let _serial = serial();
    require_root!();
    overlay_without_file_handles(false);
}

#[test]
fn overlay_root_without_file_handles_falls_back_to_short_timeouts_strict() {
    let _serial = serial();
    require_root!();
    overlay_without_file_handles(true);
}

/// An overlay root with file handles (`index=on,nfs_export=on`, where the kernel allows
/// it): the watcher marks it, and a change made through the merged directory is seen by
/// the container's next single access once the watcher handled a later fence.
#[test]
fn overlay_root_with_file_handles_is_watched() {
    let _serial = serial();
    require_root!();
    let ovl = match Overlay::mount("index=on,nfs_export=on") {
        Ok(o) => o,
        Err(e) => {
            return skip(&format!(
                "this kernel refuses an overlay with nfs_export=on: {e}"
            ))
        }
    };
    let c = on_overlay("hc-ovl-nfs", &ovl, false);
    if is_porta() {
        let log = std::fs::read_to_string(supervisor_log(&c)).unwrap_or_default();
        assert!(
            log.contains("watching the backing file system for host changes"),
            "the supervisor does not watch the overlay:\n{log}"
        );
    }
    cache_old_state(&c);
    change_from_host(&ovl.merged());
    fence_in(&c, &ovl.merged(), &mut 0);
    assert_eq!(sh(&c, SHOW), CHANGED, "one access after the fence");
}

/// The pid of the container's supervisor (its record in the state directory).
fn supervisor_pid(c: &Container) -> i32 {
    let rec: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(Path::new(ROOT).join(&c.id).join("servers.json"))
            .unwrap_or_default(),
    )
    .unwrap_or_default();
    rec["supervisor_pid"].as_i64().unwrap_or(0) as i32
}

/// Resumes a stopped process when dropped (also when the test fails half-way).
struct Stopped(i32);

impl Drop for Stopped {
    fn drop(&mut self) {
        // SAFETY: kill(2) of a pid we stopped.
        unsafe { libc::kill(self.0, libc::SIGCONT) };
    }
}

/// When the kernel's event queue overflows (the supervisor stopped while more events
/// than `fs/fanotify/max_queued_events` happen), the events after it are lost; the
/// watcher then invalidates every node's attributes and pages (strict mode: also prunes
/// the unused ones), so an append and a chmod whose events were lost are seen, and the
/// container's mounts stay. (A new name after a failed lookup is not: negative entries
/// cannot be enumerated — documented.)
fn a_full_event_queue_invalidates_every_node(strict: bool) {
    let max: usize = std::fs::read_to_string("/proc/sys/fs/fanotify/max_queued_events")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(16_384);
    if max > 1_000_000 {
        return skip("fs.fanotify.max_queued_events is too large to fill here");
    }
    let mut b = Bundle::new(&[]);
    if strict {
        b.annotation("run.porta.fs.passthrough", "off");
    }
    b.sh("exec sleep 1000");
    let root = b.rootfs();
    std::fs::create_dir(root.join("hc")).unwrap();
    std::fs::write(root.join("hc/grow"), "one\n").unwrap();
    std::fs::write(root.join("hc/mode"), "m\n").unwrap();
    let c = Container::new(if strict { "hc-ovf-s" } else { "hc-ovf-p" }, b);
    c.create_start();
    cache_old_state(&c);
    let sup = supervisor_pid(&c);
    assert!(sup > 0, "no supervisor pid in servers.json");
    // SAFETY: kill(2) of the container's supervisor, resumed by the guard.
    assert_eq!(unsafe { libc::kill(sup, libc::SIGSTOP) }, 0);
    let stopped = Stopped(sup);
    // More events than the queue holds, in a directory the container never looked at;
    // then the changes that must be seen, whose events are lost.
    let flood = c.bundle.rootfs().join("flood");
    std::fs::create_dir(&flood).unwrap();
    for i in 0..max + 1000 {
        std::fs::write(flood.join(i.to_string()), b"").unwrap();
    }
    change_from_host(&c.bundle.rootfs());
    drop(stopped);
    // Wait for the overflow's warning (6,000 checks 10 ms apart: only a hung supervisor
    // reaches the bound).
    let log = supervisor_log(&c);
    let warned = (0..6000).any(|_| {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("event queue overflowed") {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
        false
    });
    assert!(
        warned,
        "no overflow warning; supervisor log:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    // One access, no retry, once a later fence was handled.
    fence(&c, &mut 0);
    assert_eq!(
        sh(&c, "cat /hc/grow; ls -ln /hc/mode | cut -c1-10"),
        "one\ntwo\n-rw-------\n",
        "an append and a chmod whose events were lost"
    );
    // The container's mounts on its root (/proc, /dev, /sys) are all still there.
    let mounts = sh(
        &c,
        "cut -d' ' -f5 /proc/self/mountinfo | sort | tr '\\n' ' '",
    );
    eprintln!("mounts after the overflow: {mounts}");
    for m in ["/proc", "/dev", "/sys"] {
        assert!(
            mounts.split(' ').any(|x| x == m),
            "{m} was detached: {mounts}"
        );
    }
}

#[test]
fn a_full_event_queue_invalidates_every_node_in_passthrough_mode() {
    let _serial = serial();
    require_root!();
    porta_only!("the watcher's queue overflow is Porta's");
    a_full_event_queue_invalidates_every_node(false);
}

#[test]
fn a_full_event_queue_invalidates_every_node_in_strict_mode() {
    let _serial = serial();
    require_root!();
    porta_only!("the watcher's queue overflow is Porta's");
    a_full_event_queue_invalidates_every_node(true);
}

// Rootless: the runtime run by an unprivileged user (as in tests/rootless.rs).

/// The unprivileged user (needs no passwd entry; not the one rootless.rs uses).
const UID: u32 = 52_018;

/// `porta --root <state> …` as the unprivileged user, in a private mount namespace whose
/// /dev/fuse is a mode-0666 node of the FUSE device made in `dir` (as most distributions
/// ship it), so the user gets a file server.
fn as_user_with_fuse(state: &Path, dir: &Path) -> Cmd {
    user::runtime_as(user::with_open_fuse(dir), UID, state)
}

/// A rootless container gets no watcher (a fanotify filesystem mark needs CAP_SYS_ADMIN
/// in the initial user namespace): its supervisor says so and its servers answer with
/// 1-second timeouts, so a name the host creates after the container's failed lookup is
/// seen once the timeout expired.
#[test]
fn rootless_container_sees_host_changes_after_the_short_timeout() {
    let _serial = serial();
    require_root!();
    porta_only!("the rootless file server is Porta's");
    if !have_command("setpriv") || !have_command("unshare") || !Path::new("/dev/fuse").exists() {
        return skip("needs setpriv, unshare and /dev/fuse");
    }
    let b = Bundle::new(&["true"]);
    let state = b.path().join("state");
    std::fs::create_dir(&state).unwrap();
    let chown = || user::chown_tree(b.path(), UID);
    chown();
    as_user_with_fuse(&state, b.path())
        .arg("spec")
        .arg("--rootless")
        .cwd(b.path())
        .run()
        .expect_ok();
    let mut cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(b.file("config.json")).unwrap()).unwrap();
    // Looks the name up (a miss the kernel may cache), says it is ready, then checks for
    // it: at most 600 checks 0.1 s apart.
    cfg["process"]["args"] = serde_json::json!([
        "sh",
        "-c",
        "[ -e /late ] && exit 3; : > /ready; i=0; while [ $i -lt 600 ]; do \
         [ -e /late ] && { echo seen after $i; exit 0; }; sleep 0.1; i=$((i+1)); done; \
         echo unseen; exit 4"
    ]);
    cfg["process"]["terminal"] = serde_json::json!(false);
    cfg["root"]["readonly"] = serde_json::json!(false);
    std::fs::write(b.file("config.json"), serde_json::to_vec(&cfg).unwrap()).unwrap();
    chown();
    let id = unique_id("hc-rootless");
    let out = b.path().join("out");
    as_user_with_fuse(&state, b.path())
        .args(["run", "--detach", "--bundle", &b.path_str(), &id])
        .stdout_file(std::fs::File::create(&out).unwrap())
        .run()
        .expect_ok();
    let delete = || {
        as_user_with_fuse(&state, b.path())
            .args(["delete", "--force", &id])
            .run()
    };
    // The ready file, made through the container's file server (6,000 checks 10 ms apart).
    let ready = (0..6000).any(|_| {
        if b.rootfs().join("ready").exists() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
        false
    });
    let log = std::fs::read_to_string(state.join(&id).join("supervisor.log")).unwrap_or_default();
    if !ready {
        delete();
        panic!(
            "the container never got ready: {}",
            std::fs::read_to_string(&out).unwrap_or_default()
        );
    }
    std::fs::write(b.rootfs().join("late"), "x").unwrap();
    let stopped = wait_for(std::time::Duration::from_secs(300), || {
        let st = as_user_with_fuse(&state, b.path())
            .args(["state", &id])
            .run();
        (st.ok() && st.json()["status"] == "stopped").then_some(())
    });
    let text = std::fs::read_to_string(&out).unwrap_or_default();
    delete();
    assert!(stopped.is_some(), "the container did not end: {text}");
    assert!(
        text.starts_with("seen after"),
        "the host's new name was not seen: {text}\nsupervisor log:\n{log}"
    );
    assert!(
        log.contains("cannot watch the backing tree for host changes")
            && log.contains("ttl_secs=1"),
        "the rootless supervisor does not say it falls back to short timeouts:\n{log}"
    );
    assert!(!state.join(&id).exists(), "delete leaves no state behind");
}

/// The pid of the newest host-change notifier the supervisor of `c` logged.
fn notifier_pid(c: &Container) -> i32 {
    let log = std::fs::read_to_string(supervisor_log(c)).unwrap_or_default();
    log.lines()
        .rev()
        .find(|l| l.contains("host-change notifier started"))
        .and_then(|l| l.split_whitespace().find_map(|w| w.strip_prefix("pid=")))
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no notifier in the log:\n{log}"))
}

/// The notifier (the child writing the watcher's invalidations to the connection) dies
/// with invalidations handed to it but not written (it was stopped, then killed): the next
/// one writes them, and the container sees the host's changes.
#[test]
fn invalidations_a_killed_notifier_left_unwritten_are_sent_again() {
    let _serial = serial();
    require_root!();
    porta_only!("the host-change notifier");
    for strict in [false, true] {
        let c = started(if strict { "hc-notif-s" } else { "hc-notif-p" }, strict);
        let root = c.bundle.rootfs();
        std::fs::write(root.join("hc/seen"), b"old\n").unwrap();
        let mut n = 0;
        fence(&c, &mut n);
        // The container caches the file and a missing name.
        assert_eq!(
            sh(&c, "cat /hc/seen; ls /hc/late 2>/dev/null; true"),
            "old\n"
        );
        let pid = notifier_pid(&c);
        // SAFETY: kill(2) of the notifier just logged (killed below, or by the supervisor
        // when the container goes).
        assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
        std::fs::write(root.join("hc/seen"), b"new\n").unwrap();
        std::fs::write(root.join("hc/late"), b"here\n").unwrap();
        // Handled by the watcher, handed to the stopped notifier.
        fence(&c, &mut n);
        // SAFETY: as above.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
        // Once it is dead (its socket closed: a zombie or gone; SIGKILL is delivered
        // asynchronously), the next batch finds it so.
        let dead = (0..3000).any(|_| {
            let st = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let state = st
                .rsplit(')')
                .next()
                .and_then(|r| r.split_whitespace().next());
            if matches!(state, None | Some("Z") | Some("X")) {
                return true;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
            false
        });
        assert!(dead, "notifier {pid} did not die of SIGKILL");
        fence(&c, &mut n);
        assert_ne!(notifier_pid(&c), pid, "a new notifier was forked");
        assert_eq!(
            sh(&c, "cat /hc/seen /hc/late"),
            "new\nhere\n",
            "{}",
            std::fs::read_to_string(supervisor_log(&c)).unwrap_or_default()
        );
    }
}
