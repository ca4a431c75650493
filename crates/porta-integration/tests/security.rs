//! The runtime's own security: no fd of the runtime reaches the container beyond stdio
//! and --preserve-fds (CVE-2024-21626), the runtime binary cannot be opened for writing
//! from inside a container (CVE-2019-5736 style), ids cannot escape --root, mount
//! destinations cannot escape the root file system through symlinks.

use porta_integration::*;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Duration;

fn fds_of(out: &str) -> Vec<u32> {
    let mut v: Vec<u32> = out
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    v.sort();
    v
}

/// `ls` opens one directory fd of its own, numbered just above the inherited ones.
fn assert_only_fds(out: &str, expected: &[u32]) {
    let fds = fds_of(out);
    let extra: Vec<u32> = fds
        .iter()
        .copied()
        .filter(|f| !expected.contains(f))
        .collect();
    for e in expected {
        assert!(fds.contains(e), "fd {e} missing: {fds:?}");
    }
    assert!(
        extra.len() <= 1,
        "unexpected fds in the container: {fds:?} (expected {expected:?} + ls's own)"
    );
    if let Some(x) = extra.first() {
        assert_eq!(
            *x,
            expected.iter().max().unwrap() + 1,
            "fd {x} is not ls's own: {fds:?}"
        );
    }
}

#[test]
fn only_stdio_fds_reach_the_container() {
    require_root!();
    let mut b = Bundle::new(&[]);
    b.sh("exec ls /proc/self/fd");
    let c = Container::new("sec-fds", b);
    let o = c.run();
    assert_eq!(o.code, 0, "{o}");
    assert_only_fds(&c.output(), &[0, 1, 2]);
    // also through create/start
    let mut b = Bundle::new(&[]);
    b.sh("exec ls /proc/self/fd");
    let c = Container::new("sec-fds2", b);
    c.create_start();
    c.wait_stopped(10);
    assert_only_fds(&c.output(), &[0, 1, 2]);
}

#[test]
fn only_stdio_fds_reach_exec() {
    require_root!();
    let c = Container::new("sec-fdsx", Bundle::new(&["sleep", "100"]));
    c.create_start();
    let o = c.exec(&[], &["ls", "/proc/self/fd"]);
    o.expect_ok();
    assert_only_fds(&o.stdout, &[0, 1, 2]);
    // the cwd of the exec'd process is inside the container (CVE-2024-21626)
    let o = c.exec(
        &[],
        &[
            "sh",
            "-c",
            "cd /; ls -di . | cut -d' ' -f1; ls -di /. | cut -d' ' -f1; readlink /proc/self/cwd",
        ],
    );
    o.expect_ok();
    let l: Vec<&str> = o.stdout.lines().collect();
    assert_eq!(l[0], l[1], "{o}");
    assert_eq!(l[2], "/", "{o}");
}

/// Runs `<runtime> --root R run --preserve-fds 2 ...` with two extra fds at 3 and 4.
fn run_with_preserved(c: &Container) -> (i32, String) {
    let mut in3 = tempfile::tempfile().unwrap();
    in3.write_all(b"data-on-fd3\n").unwrap();
    in3.seek(SeekFrom::Start(0)).unwrap();
    let out4 = tempfile::tempfile().unwrap();
    let mut out = tempfile::tempfile().unwrap();
    let (a, b2) = (in3.as_raw_fd(), out4.as_raw_fd());
    let mut cmd = Command::new(runtime());
    cmd.args([
        "--root",
        ROOT,
        "run",
        "--preserve-fds",
        "2",
        "--bundle",
        &c.bundle.path_str(),
        &c.id,
    ])
    .stdin(Stdio::null())
    .stdout(out.try_clone().unwrap())
    .stderr(Stdio::inherit());
    // SAFETY: the closure only calls fcntl, dup2 and close, async-signal-safe, between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            // move the two files to fds 3 and 4, without close-on-exec
            let t3 = libc::fcntl(a, libc::F_DUPFD, 10);
            let t4 = libc::fcntl(b2, libc::F_DUPFD, 10);
            if t3 < 0 || t4 < 0 || libc::dup2(t3, 3) < 0 || libc::dup2(t4, 4) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            libc::close(t3);
            libc::close(t4);
            Ok(())
        });
    }
    let st = cmd.status().unwrap();
    let mut s = String::new();
    out.seek(SeekFrom::Start(0)).unwrap();
    out.read_to_string(&mut s).unwrap();
    let mut o4 = out4;
    let mut s4 = String::new();
    o4.seek(SeekFrom::Start(0)).unwrap();
    o4.read_to_string(&mut s4).unwrap();
    (st.code().unwrap_or(-1), format!("{s}\n--fd4--\n{s4}"))
}

#[test]
fn preserve_fds() {
    require_root!();
    let mut b = Bundle::new(&[]);
    b.sh("ls /proc/self/fd | tr '\\n' ' '; echo; cat <&3; echo via-fd4 >&4");
    let c = Container::new("sec-preserve", b);
    let (code, out) = run_with_preserved(&c);
    assert_eq!(code, 0, "{out}");
    let (main, fd4) = out.split_once("--fd4--").unwrap();
    let first = main.lines().next().unwrap_or("");
    assert_only_fds(first, &[0, 1, 2, 3, 4]);
    assert!(main.contains("data-on-fd3"), "{out}");
    assert!(fd4.contains("via-fd4"), "{out}");
}

#[test]
fn runtime_binary_not_writable_from_container() {
    require_root!();
    let bin = runtime();
    let before = std::fs::read(&bin).unwrap();
    // The container tries, over and over, to open every process's executable for
    // writing while the test runs `exec` into it (the runtime's own set-up process is
    // briefly in the container's pid namespace then).
    let mut b = Bundle::new(&[]);
    b.capabilities(&["CAP_SYS_PTRACE", "CAP_DAC_OVERRIDE", "CAP_KILL"]);
    b.sh(
        "while true; do for p in /proc/[0-9]*; do [ \"$p\" = /proc/1 ] && continue; \
          ( : >> $p/exe ) 2>/dev/null && echo OPENED-$p $(readlink $p/exe); \
          done; done",
    );
    let c = Container::new("sec-exe", b);
    c.create_start();
    for _ in 0..20 {
        let o = c.exec(&[], &["true"]);
        o.expect_ok();
    }
    std::thread::sleep(Duration::from_millis(200));
    let out = c.output();
    let after = std::fs::read(&bin).unwrap();
    assert!(
        before == after,
        "the runtime binary {} changed!",
        bin.display()
    );
    for l in out.lines().filter(|l| l.starts_with("OPENED-")) {
        // opening the container's own programs (busybox) is fine
        assert!(
            l.contains("busybox"),
            "a runtime executable was opened for writing: {l}"
        );
    }
}

#[test]
fn id_cannot_escape_root() {
    require_root!();
    for bad in [
        "../pit-escape",
        "pit/../../escape",
        "/pit-abs",
        "pit-a/b",
        ".",
        "..",
    ] {
        let c = Container::with_id(bad.to_string(), ROOT, Bundle::new(&["true"]));
        c.create().expect_fail();
        assert!(
            !std::path::Path::new("/run/pit-escape").exists(),
            "{bad} escaped"
        );
        assert!(!std::path::Path::new("/escape").exists(), "{bad} escaped");
        assert!(!std::path::Path::new("/pit-abs").exists(), "{bad} escaped");
    }
}

#[test]
fn mount_destination_symlink_stays_in_rootfs() {
    require_root!();
    let outside = tempfile::tempdir_in(BUNDLES).unwrap();
    let mut b = Bundle::new(&[]);
    std::os::unix::fs::symlink(outside.path(), b.rootfs().join("evil")).unwrap();
    b.mount(json!({"destination": "/evil/sub", "type": "tmpfs", "source": "tmpfs", "options": ["size=1m"]}));
    b.sh("touch /evil/sub/x && echo made");
    let c = Container::new("sec-symlink", b);
    let o = c.run();
    let _ = o;
    assert!(
        !outside.path().join("sub").exists(),
        "the runtime followed a symlink in the rootfs out to the host: {}/sub created",
        outside.path().display()
    );
}

#[test]
fn container_cannot_see_host_runtime_state() {
    require_root!();
    let mut b = Bundle::new(&[]);
    b.sh("ls /run; ls -a /run/porta-test 2>&1; true");
    let c = Container::new("sec-state", b);
    assert_eq!(c.run().code, 0);
    let out = c.output();
    assert!(
        !out.contains(&c.id),
        "container sees the runtime state dir: {out}"
    );
}
