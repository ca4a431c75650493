//! Sharing (docs/objects.md, "Sharing"): `porta share A:/data B:/mnt/data [--read-only]`
//! serves a directory of running container A live in running container B, through B's
//! file server, from a handle taken inside A's root; `porta unshare` revokes it at once:
//! every later request fails with EACCES, files B holds open included, and nothing of A
//! stays reachable. The grant survives restarts of both file servers, of its own server
//! and of B's supervisor; both sides record it; deleting either side ends it. Porta-only.

use porta_integration::survival::exited;
use porta_integration::*;
use std::path::PathBuf;
use std::time::Duration;

const WHY: &str = "grants are served by Porta's per-container file server";

/// A running container (`sleep`) on the busybox root.
fn running(tag: &str) -> Container {
    let c = Container::new(tag, Bundle::new(&["sleep", "100000"]));
    c.create_start();
    c
}

fn sh(c: &Container, script: &str) -> Out {
    c.exec(&[], &["sh", "-c", script])
}

#[track_caller]
fn sh_ok(c: &Container, script: &str) -> String {
    let o = sh(c, script);
    assert!(o.ok(), "in {}: {script}: {o}", c.id);
    o.stdout
}

/// `sh -c script` in `c` on a thread of its own (the script waits for the test).
fn exec_in_background(c: &Container, script: &str) -> std::thread::JoinHandle<Out> {
    let (root, id, script) = (c.root.clone(), c.id.clone(), script.to_string());
    std::thread::spawn(move || {
        Cmd::runtime(&root)
            .args(["exec", &id, "sh", "-c", &script])
            .run()
    })
}

fn state_dir(c: &Container) -> PathBuf {
    PathBuf::from(&c.root).join(&c.id)
}

/// The grants container `c` records (`grants.json` in its state directory).
fn recorded(c: &Container) -> Vec<Value> {
    match std::fs::read(state_dir(c).join("grants.json")) {
        Ok(b) => serde_json::from_slice::<Value>(&b)
            .unwrap()
            .as_array()
            .cloned()
            .unwrap_or_default(),
        Err(_) => Vec::new(),
    }
}

/// `porta share`; returns the grant id it prints.
#[track_caller]
fn share(a: &Container, from: &str, b: &Container, to: &str, extra: &[&str]) -> String {
    let (f, t) = (format!("{}:{from}", a.id), format!("{}:{to}", b.id));
    let mut args = vec!["share"];
    args.extend_from_slice(extra);
    args.extend_from_slice(&[&f, &t]);
    let o = a.rt(&args);
    assert!(o.ok(), "share {f} {t}: {o}");
    let id = o.stdout.trim().to_string();
    assert!(id.starts_with("g-"), "{o}");
    id
}

/// The running grant servers of container `c` (pids), from its supervisor's record.
fn grant_servers(c: &Container) -> Vec<i32> {
    let o = c.rt(&["translator", "show", "--format", "json", &c.id]);
    assert!(o.ok(), "{o}");
    o.json()
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter(|t| t["args"][0] == "porta:grant")
        .map(|t| t["pid"].as_i64().unwrap_or(0) as i32)
        .collect()
}

fn fs_server_pid(c: &Container) -> i32 {
    let st = c.state();
    st["servers"]
        .as_array()
        .and_then(|s| s.first())
        .map(|s| s["pid"].as_i64().unwrap_or(0) as i32)
        .unwrap_or(0)
}

fn has_grant_mark(path: &std::path::Path) -> bool {
    let p = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    // SAFETY: valid strings; size 0 asks only for the length.
    let n = unsafe {
        libc::getxattr(
            p.as_ptr(),
            c"user.porta.grant".as_ptr(),
            std::ptr::null_mut(),
            0,
        )
    };
    n >= 0
}

/// Waits (bounded) for `path` on the host to hold `want`.
#[track_caller]
fn wait_file(path: &std::path::Path, want: &str) {
    let ok = wait_for(Duration::from_secs(60), || {
        std::fs::read_to_string(path)
            .ok()
            .filter(|s| s.contains(want))
            .map(|_| ())
    });
    assert!(ok.is_some(), "{} never held {want:?}", path.display());
}

#[test]
fn a_shared_directory_is_live_both_ways_and_unshare_revokes_it_even_for_open_files() {
    porta_only!(WHY);
    let a = running("shr-a");
    let b = running("shr-b");
    let data = a.bundle.rootfs().join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("f"), "from A\n").unwrap();
    let id = share(&a, "/data", &b, "/mnt/data", &[]);
    // Live: A's file in B, B's write in A, A's later change in B at once (nothing of a
    // grant is cached by B's kernel).
    assert_eq!(sh_ok(&b, "cat /mnt/data/f"), "from A\n");
    sh_ok(&b, "echo from B > /mnt/data/g && mkdir /mnt/data/d");
    assert_eq!(std::fs::read_to_string(data.join("g")).unwrap(), "from B\n");
    assert!(data.join("d").is_dir());
    sh_ok(&a, "echo changed in A > /data/f");
    assert_eq!(sh_ok(&b, "cat /mnt/data/f"), "changed in A\n");
    // Both sides record it; the mark on B's node is Porta's and invisible inside B.
    let (ra, rb) = (recorded(&a), recorded(&b));
    assert!(
        ra.iter()
            .any(|g| g["id"] == id.as_str() && g["direction"] == "out"),
        "{ra:?}"
    );
    assert!(
        rb.iter().any(|g| g["id"] == id.as_str()
            && g["direction"] == "in"
            && g["target"]["path"] == "/mnt/data"),
        "{rb:?}"
    );
    assert!(has_grant_mark(&b.bundle.rootfs().join("mnt/data")));
    let o = sh(&b, "cat /proc/self/mountinfo");
    assert!(!o.stdout.contains("/mnt/data"), "a grant is no mount: {o}");
    // A process of B holds a file of the grant open, then the grant is revoked.
    sh_ok(&b, "mkfifo /tmp/go");
    let holder = exec_in_background(&b, "exec 3</mnt/data/f; echo opened > /tmp/opened; read x < /tmp/go; cat <&3 > /tmp/out 2> /tmp/err; echo done > /tmp/done");
    wait_file(&b.bundle.rootfs().join("tmp/opened"), "opened");
    let servers = grant_servers(&b);
    assert_eq!(servers.len(), 1, "one grant server: {servers:?}");
    let o = b.rt(&["unshare", &format!("{}:/mnt/data", b.id)]);
    assert!(o.ok(), "unshare: {o}");
    sh_ok(&b, "echo go > /tmp/go");
    let o = holder.join().unwrap();
    assert!(o.ok(), "{o}");
    let err = std::fs::read_to_string(b.bundle.rootfs().join("tmp/err")).unwrap();
    assert!(
        err.contains("Permission denied"),
        "a read of a file opened before the revocation: {err:?}"
    );
    assert_eq!(
        std::fs::read_to_string(b.bundle.rootfs().join("tmp/out")).unwrap(),
        ""
    );
    // Nothing of A is reachable: the name shows B's own (empty) directory, the grant's
    // server is gone, the mark and the records are gone; A's data is intact.
    assert_eq!(sh_ok(&b, "ls -A /mnt/data"), "");
    assert!(!sh(&b, "cat /mnt/data/f").ok());
    assert!(
        exited(servers[0]),
        "the grant's server outlived the revocation"
    );
    assert!(!has_grant_mark(&b.bundle.rootfs().join("mnt/data")));
    assert!(recorded(&a).is_empty() && recorded(&b).is_empty());
    assert_eq!(
        std::fs::read_to_string(data.join("f")).unwrap(),
        "changed in A\n"
    );
    assert_eq!(std::fs::read_to_string(data.join("g")).unwrap(), "from B\n");
    // Revoking again is an error naming what is not there.
    let o = b.rt(&["unshare", &format!("{}:/mnt/data", b.id)]);
    assert!(!o.ok() && o.stderr.contains("nothing is shared"), "{o}");
}

#[test]
fn a_read_only_share_refuses_every_change() {
    porta_only!(WHY);
    let a = running("shro-a");
    let b = running("shro-b");
    let data = a.bundle.rootfs().join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("f"), "ro\n").unwrap();
    let id = share(&a, "/data", &b, "/ro", &["--read-only"]);
    assert_eq!(sh_ok(&b, "cat /ro/f"), "ro\n");
    for script in [
        "echo x > /ro/new",
        "echo x >> /ro/f",
        "rm /ro/f",
        "mkdir /ro/d",
        "mv /ro/f /ro/g",
        "touch /ro/f",
        "chmod 600 /ro/f",
    ] {
        let o = sh(&b, script);
        assert!(
            !o.ok() && o.stderr.contains("Read-only file system"),
            "{script}: {o}"
        );
    }
    assert_eq!(std::fs::read_dir(&data).unwrap().count(), 1);
    assert_eq!(std::fs::read_to_string(data.join("f")).unwrap(), "ro\n");
    assert!(recorded(&b)
        .iter()
        .any(|g| g["id"] == id.as_str() && g["readOnly"] == true));
    let o = b.rt(&["unshare", &id]);
    assert!(o.ok(), "unshare by id: {o}");
    assert!(recorded(&a).is_empty());
}

#[test]
fn a_grant_survives_restarts_of_both_file_servers_its_server_and_the_supervisor() {
    porta_only!(WHY);
    let a = running("shrs-a");
    let b = running("shrs-b");
    let data = a.bundle.rootfs().join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("f"), "kept\n").unwrap();
    share(&a, "/data", &b, "/mnt/data", &[]);
    assert_eq!(sh_ok(&b, "cat /mnt/data/f"), "kept\n");
    let server = grant_servers(&b)[0];
    // A's file server killed: the grant holds a handle, not A's server.
    let fs_a = fs_server_pid(&a);
    survival::kill_now(fs_a);
    assert_eq!(sh_ok(&b, "cat /mnt/data/f"), "kept\n");
    // B's file server killed: its successor adopts the grant's connection.
    let fs_b = fs_server_pid(&b);
    survival::kill_now(fs_b);
    assert_eq!(sh_ok(&b, "cat /mnt/data/f"), "kept\n");
    assert_eq!(
        grant_servers(&b),
        vec![server],
        "the same grant server after B's server restart"
    );
    // The grant's own server killed: the next lookup starts a new one (the first access
    // may still meet the dead one's node).
    survival::kill_now(server);
    let _ = sh(&b, "cat /mnt/data/f");
    assert_eq!(sh_ok(&b, "cat /mnt/data/f"), "kept\n");
    let server2 = grant_servers(&b);
    assert_eq!(server2.len(), 1);
    assert_ne!(server2[0], server);
    // B's supervisor killed: its successor holds the handle and knows the new server, so
    // the revocation still kills it.
    let sup = std::fs::read_to_string(state_dir(&b).join("servers.json"))
        .ok()
        .and_then(|s| serde_json::from_str::<Value>(&s).ok())
        .and_then(|v| v["supervisor_pid"].as_i64())
        .unwrap_or(0) as i32;
    assert!(sup > 0);
    survival::kill_now(sup);
    let o = wait_for(Duration::from_secs(60), || {
        let o = b.rt(&["unshare", &format!("{}:/mnt/data", b.id)]);
        o.ok().then_some(o)
    });
    assert!(o.is_some(), "unshare after the supervisor's takeover");
    assert!(
        exited(server2[0]),
        "the grant's server outlived the revocation"
    );
    assert!(!sh(&b, "cat /mnt/data/f").ok());
}

#[test]
fn revoking_under_a_read_write_load_stops_it_with_eacces() {
    porta_only!(WHY);
    let a = running("shrl-a");
    let b = running("shrl-b");
    let data = a.bundle.rootfs().join("data");
    std::fs::create_dir_all(&data).unwrap();
    share(&a, "/data", &b, "/mnt/data", &[]);
    let load = exec_in_background(
        &b,
        "exec 3<>/mnt/data/load; i=0; \
                     while [ $i -lt 1000000 ]; do \
                       echo $i >&3 || break; \
                       cat /mnt/data/load > /dev/null 2>/dev/null; \
                       i=$((i+1)); \
                     done 2> /tmp/load-err; echo $i > /tmp/load-count",
    );
    // Revoked once the load is well under way.
    let started = wait_for(Duration::from_secs(120), || {
        std::fs::read_to_string(data.join("load"))
            .ok()
            .filter(|s| s.lines().count() > 200)
            .map(|_| ())
    });
    assert!(started.is_some(), "the load never got going");
    let o = b.rt(&["unshare", &format!("{}:/mnt/data", b.id)]);
    assert!(o.ok(), "unshare: {o}");
    let o = load.join().unwrap();
    assert!(o.ok(), "{o}");
    let count: u64 = std::fs::read_to_string(b.bundle.rootfs().join("tmp/load-count"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(count < 1_000_000, "the load went on after the revocation");
    let err = std::fs::read_to_string(b.bundle.rootfs().join("tmp/load-err")).unwrap();
    assert!(err.contains("Permission denied"), "{err:?}");
    // A's file holds whole lines only, the last written before the revocation.
    let text = std::fs::read_to_string(data.join("load")).unwrap();
    let lines: Vec<u64> = text.lines().map(|l| l.parse().unwrap()).collect();
    assert_eq!(lines, (0..lines.len() as u64).collect::<Vec<_>>());
}

#[test]
fn bad_shares_are_refused_with_what_is_wrong_and_leave_nothing() {
    porta_only!(WHY);
    let a = running("shrb-a");
    let b = running("shrb-b");
    let root = a.bundle.rootfs();
    std::fs::create_dir_all(root.join("data")).unwrap();
    std::fs::write(root.join("file"), "x").unwrap();
    // A symlink climbing out of A's root resolves inside it: the host's directory next to
    // the root is not reachable.
    std::fs::create_dir_all(a.bundle.file("outside")).unwrap();
    std::os::unix::fs::symlink("../../outside", root.join("data/esc")).unwrap();
    let (ida, idb) = (a.id.clone(), b.id.clone());
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec![format!("{ida}:/data/esc"), format!("{idb}:/x")],
            "not a directory",
        ),
        (
            vec![format!("{ida}:/file"), format!("{idb}:/x")],
            "not a directory",
        ),
        (
            vec![format!("{ida}:/nope"), format!("{idb}:/x")],
            "not a directory",
        ),
        (
            vec![format!("{ida}/data"), format!("{idb}:/x")],
            "CONTAINER:/PATH",
        ),
        (vec![format!("{ida}:data"), format!("{idb}:/x")], "absolute"),
        (
            vec![format!("{ida}:/data/../data"), format!("{idb}:/x")],
            "must not hold",
        ),
        (
            vec![format!("{ida}:/data"), format!("{ida}:/x")],
            "same container",
        ),
        (
            vec![format!("{ida}:/data"), format!("{idb}:/")],
            "below the root",
        ),
        (
            vec![format!("{ida}:/data"), "pit-no-such:/x".to_string()],
            "pit-no-such",
        ),
    ];
    for (args, want) in cases {
        let mut v = vec!["share"];
        v.extend(args.iter().map(String::as_str));
        let o = a.rt(&v);
        assert!(
            !o.ok() && o.stderr.contains(want),
            "{v:?} should fail with {want:?}: {o}"
        );
    }
    assert!(recorded(&a).is_empty() && recorded(&b).is_empty());
    assert!(!b.bundle.rootfs().join("x").exists());
    let o = a.rt(&["unshare", &format!("{idb}:/x")]);
    assert!(!o.ok() && o.stderr.contains("nothing is shared"), "{o}");
    let o = a.rt(&["unshare", "g-none"]);
    assert!(
        !o.ok() && o.stderr.contains("no container serves grant"),
        "{o}"
    );
    // Twice at one place.
    share(&a, "/data", &b, "/x", &[]);
    let o = a.rt(&["share", &format!("{ida}:/data"), &format!("{idb}:/x")]);
    assert!(!o.ok() && o.stderr.contains("already serves"), "{o}");
    // A container with a kernel-mounted root cannot serve one.
    let mut kb = Bundle::new(&["sleep", "100000"]);
    kb.annotation("run.porta.fs", "kernel");
    let k = Container::new("shrb-k", kb);
    k.create_start();
    let o = a.rt(&["share", &format!("{ida}:/data"), &format!("{}:/x", k.id)]);
    assert!(!o.ok() && o.stderr.contains("no file server"), "{o}");
}

#[test]
fn deleting_either_side_ends_the_grant() {
    porta_only!(WHY);
    let a = running("shrd-a");
    let b = running("shrd-b");
    let c = running("shrd-c");
    std::fs::create_dir_all(a.bundle.rootfs().join("data")).unwrap();
    std::fs::write(a.bundle.rootfs().join("data/f"), "a\n").unwrap();
    share(&a, "/data", &b, "/from-a", &[]);
    share(&a, "/data", &c, "/from-a", &[]);
    assert_eq!(sh_ok(&b, "cat /from-a/f"), "a\n");
    assert_eq!(sh_ok(&c, "cat /from-a/f"), "a\n");
    assert_eq!(recorded(&a).len(), 2);
    // The target deleted: the source forgets it.
    let o = c.rt(&["delete", "--force", &c.id]);
    assert!(o.ok(), "{o}");
    assert_eq!(recorded(&a).len(), 1);
    // The source deleted: the grant is revoked where it is served.
    let server = grant_servers(&b);
    let o = a.rt(&["delete", "--force", &a.id]);
    assert!(o.ok(), "{o}");
    assert!(server.iter().all(|p| exited(*p)));
    assert!(!sh(&b, "cat /from-a/f").ok());
    assert!(recorded(&b).is_empty());
}

/// The memfd holder (tests/data/memfd_holder.c), built statically into `out`.
fn build_memfd_holder(out: &std::path::Path) {
    build_static(include_str!("data/memfd_holder.c"), out);
}

/// A C program of the tests, built statically into `out` with the host's compiler.
fn build_static(source: &str, out: &std::path::Path) {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("prog.c");
    std::fs::write(&src, source).unwrap();
    let o = cmd::host(
        "cc",
        &[
            "-static",
            "-O2",
            "-o",
            out.to_str().unwrap(),
            src.to_str().unwrap(),
        ],
    );
    o.expect_ok();
}

#[test]
fn a_memory_object_is_shared_as_a_file_and_revoked_like_a_directory() {
    porta_only!(WHY);
    let mut ab = Bundle::new(&["/memfd-holder"]);
    build_memfd_holder(&ab.rootfs().join("memfd-holder"));
    ab.args(&["/memfd-holder"]);
    let a = Container::new("shrm-a", ab);
    a.create_start();
    let b = running("shrm-b");
    // Not a memfd, no such process, no such descriptor: refused, naming it.
    for (src, want) in [
        ("/proc/1/fd/0", "not a memfd"),
        ("/proc/999999/fd/3", "no process 999999"),
        ("/proc/1/fd/77", "no descriptor 77"),
    ] {
        let o = a.rt(&[
            "share",
            &format!("{}:{src}", a.id),
            &format!("{}:/shm/x", b.id),
        ]);
        assert!(!o.ok() && o.stderr.contains(want), "{src}: {o}");
    }
    let id = share(&a, "/proc/1/fd/3", &b, "/shm/obj", &[]);
    assert_eq!(sh_ok(&b, "cat /shm/obj"), "hello from A\n");
    assert!(recorded(&b)
        .iter()
        .any(|g| g["id"] == id.as_str() && g["kind"] == "memfd"));
    // B writes; A's own descriptor sees it (one memory object).
    sh_ok(&b, "echo from B > /shm/obj");
    let holder = format!("/proc/{}/fd/3", a.pid());
    assert_eq!(std::fs::read_to_string(&holder).unwrap(), "from B\n");
    // Revoked while B holds it open: the next read fails with EACCES.
    sh_ok(&b, "mkfifo /tmp/go");
    let user = exec_in_background(&b, "exec 3</shm/obj; echo opened > /tmp/opened; read x < /tmp/go; cat <&3 > /tmp/out 2> /tmp/err");
    wait_file(&b.bundle.rootfs().join("tmp/opened"), "opened");
    let o = b.rt(&["unshare", &format!("{}:/shm/obj", b.id)]);
    assert!(o.ok(), "unshare: {o}");
    sh_ok(&b, "echo go > /tmp/go");
    let _ = user.join().unwrap();
    let err = std::fs::read_to_string(b.bundle.rootfs().join("tmp/err")).unwrap();
    assert!(err.contains("Permission denied"), "{err:?}");
    // What B sees at the name now is its own empty file; A's object is untouched.
    assert_eq!(sh_ok(&b, "cat /shm/obj"), "");
    assert_eq!(std::fs::read_to_string(&holder).unwrap(), "from B\n");
}

#[test]
fn a_listening_socket_is_reached_by_path_and_revocation_cuts_its_connections() {
    porta_only!(WHY);
    let ab = Bundle::new(&["/unix-echo", "server", "/run/app.sock"]);
    build_static(
        include_str!("data/unix_echo.c"),
        &ab.rootfs().join("unix-echo"),
    );
    std::fs::create_dir_all(ab.rootfs().join("run")).unwrap();
    let a = Container::new("shrk-a", ab);
    a.create_start();
    let b = running("shrk-b");
    std::fs::copy(
        a.bundle.rootfs().join("unix-echo"),
        b.bundle.rootfs().join("unix-echo"),
    )
    .unwrap();
    // The service is up inside A (its socket lives in A's view of its tree).
    let up = wait_for(Duration::from_secs(60), || {
        let o = a.exec(&[], &["/unix-echo", "client", "/run/app.sock", "up?\n"]);
        o.ok().then_some(o.stdout)
    });
    assert_eq!(up.as_deref(), Some("A: up?\n"));
    let id = share(&a, "/run/app.sock", &b, "/srv/app.sock", &[]);
    assert!(recorded(&b)
        .iter()
        .any(|g| g["id"] == id.as_str() && g["kind"] == "socket"));
    let o = b.exec(&[], &["/unix-echo", "client", "/srv/app.sock", "hello\n"]);
    assert!(o.ok(), "{o}");
    assert_eq!(o.stdout, "A: hello\n");
    // The relay, killed, is started again by the supervisor.
    let relay = grant_servers(&b);
    assert_eq!(relay.len(), 1, "{relay:?}");
    survival::kill_now(relay[0]);
    let again = wait_for(Duration::from_secs(60), || {
        let o = b.exec(&[], &["/unix-echo", "client", "/srv/app.sock", "again\n"]);
        o.ok().then_some(o.stdout)
    });
    assert_eq!(again.as_deref(), Some("A: again\n"));
    // A connection held across the revocation is cut; a new one is refused.
    sh_ok(&b, "mkfifo /tmp/go");
    let holder = exec_in_background(&b, "/unix-echo hold /srv/app.sock /tmp/go > /tmp/held 2>&1");
    wait_file(&b.bundle.rootfs().join("tmp/held"), "A: ping");
    let o = b.rt(&["unshare", &format!("{}:/srv/app.sock", b.id)]);
    assert!(o.ok(), "unshare: {o}");
    sh_ok(&b, "echo go > /tmp/go");
    let _ = holder.join().unwrap();
    let held = std::fs::read_to_string(b.bundle.rootfs().join("tmp/held")).unwrap();
    assert!(
        held.contains("closed") || held.contains("reset") || held.contains("pipe"),
        "a relayed connection outlived the revocation: {held:?}"
    );
    let o = b.exec(&[], &["/unix-echo", "client", "/srv/app.sock", "x\n"]);
    assert!(!o.ok() && o.stderr.contains("connect"), "{o}");
    assert!(grant_servers(&b).is_empty());
    assert!(recorded(&a).is_empty() && recorded(&b).is_empty());
    // A's service is untouched.
    let o = a.exec(&[], &["/unix-echo", "client", "/run/app.sock", "still\n"]);
    assert_eq!(o.stdout, "A: still\n");
}
