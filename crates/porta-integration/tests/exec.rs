//! exec into a running container: inline args, --process FILE, --env, --cwd, --user,
//! --cap, --detach, --pid-file, --tty with --console-socket, exit codes, paused and
//! stopped containers.

use porta_integration::*;
use std::time::Duration;

fn running(tag: &str) -> Container {
    let c = Container::new(tag, Bundle::new(&["sleep", "1000"]));
    c.create_start();
    c
}

#[test]
fn inline_args_and_exit_code() {
    require_root!();
    let c = running("ex-inline");
    let o = c.exec(&[], &["echo", "hello", "exec"]);
    o.expect_ok();
    assert_eq!(o.stdout, "hello exec\n");
    let o = c.exec(&[], &["sh", "-c", "echo to-err >&2; exit 5"]);
    assert_eq!(o.code, 5, "{o}");
    assert!(o.stderr.contains("to-err"), "{o}");
    // the exec'd process is in the container's namespaces and sees its root
    let init = c.pid();
    let o = c.exec(
        &[],
        &[
            "sh",
            "-c",
            "for n in pid mnt net; do readlink /proc/self/ns/$n; done; cat /etc/hostname",
        ],
    );
    o.expect_ok();
    let l: Vec<&str> = o.stdout.lines().collect();
    for (i, n) in ["pid", "mnt", "net"].iter().enumerate() {
        let want = std::fs::read_link(format!("/proc/{init}/ns/{n}")).unwrap();
        assert_eq!(l[i], want.to_str().unwrap(), "{n}: {o}");
    }
    assert_eq!(l[3], "pit", "{o}");
}

#[test]
fn exec_stdin_is_passed() {
    require_root!();
    let c = running("ex-stdin");
    let o = c
        .cmd()
        .args(["exec", &c.id, "sh", "-c", "read x; echo got:$x"])
        .stdin("line-in\n")
        .run();
    o.expect_ok();
    assert_eq!(o.stdout.trim(), "got:line-in", "{o}");
}

#[test]
fn process_file() {
    require_root!();
    let c = running("ex-procfile");
    let p = json!({
        "terminal": false,
        "user": {"uid": 1000, "gid": 1000},
        "args": ["sh", "-c", "echo $PIT_P; pwd; id -u"],
        "env": ["PATH=/bin", "PIT_P=from-process-file"],
        "cwd": "/tmp",
        "capabilities": {"bounding": [], "effective": [], "permitted": [], "ambient": []},
        "noNewPrivileges": true
    });
    let f = c.bundle.file("process.json");
    std::fs::write(&f, serde_json::to_vec(&p).unwrap()).unwrap();
    let o = c.exec(&["--process", f.to_str().unwrap()], &[]);
    o.expect_ok();
    let l: Vec<&str> = o.stdout.lines().collect();
    assert_eq!(l, ["from-process-file", "/tmp", "1000"], "{o}");
}

#[test]
fn env_cwd_user() {
    require_root!();
    let c = running("ex-opts");
    let o = c.exec(
        &[
            "--env",
            "PIT_A=1",
            "--env",
            "PIT_B=two words",
            "--cwd",
            "/etc",
            "--user",
            "1000:1001",
        ],
        &["sh", "-c", "echo $PIT_A; echo $PIT_B; pwd; id -u; id -g"],
    );
    o.expect_ok();
    let l: Vec<&str> = o.stdout.lines().collect();
    assert_eq!(l, ["1", "two words", "/etc", "1000", "1001"], "{o}");
    // the container's env is inherited
    let o = c.exec(&[], &["sh", "-c", "echo $TERM"]);
    assert_eq!(o.stdout.trim(), "xterm", "{o}");
    // --user with a uid only
    let o = c.exec(&["--user", "1000"], &["id", "-u"]);
    assert_eq!(o.stdout.trim(), "1000", "{o}");
}

#[test]
fn cap_adds_a_capability() {
    require_root!();
    let c = running("ex-cap");
    let eff = |o: &Out| {
        let l = o
            .stdout
            .lines()
            .find(|l| l.starts_with("CapEff:"))
            .unwrap_or_else(|| panic!("{o}"));
        u64::from_str_radix(l.split_whitespace().nth(1).unwrap(), 16).unwrap()
    };
    let o = c.exec(&[], &["grep", "CapEff", "/proc/self/status"]);
    assert_eq!(eff(&o) & (1 << 13), 0, "{o}");
    let o = c.exec(
        &["--cap", "CAP_NET_RAW"],
        &["grep", "CapEff", "/proc/self/status"],
    );
    o.expect_ok();
    assert_ne!(eff(&o) & (1 << 13), 0, "--cap CAP_NET_RAW not granted: {o}");
}

#[test]
fn detach_and_pid_file() {
    require_root!();
    let c = running("ex-detach");
    let pf = c.bundle.file("exec.pid");
    let o = c
        .cmd()
        .args([
            "exec",
            "--detach",
            "--pid-file",
            pf.to_str().unwrap(),
            &c.id,
            "sh",
            "-c",
            "echo detached > /tmp/d; sleep 30",
        ])
        .timeout(Duration::from_secs(20))
        .run();
    o.expect_ok();
    let pid: i32 = std::fs::read_to_string(&pf)
        .expect("pid file")
        .trim()
        .parse()
        .unwrap();
    assert!(pid_alive(pid), "exec'd process {pid} not running");
    let f = c.bundle.rootfs().join("tmp/d");
    assert!(wait_for(Duration::from_secs(10), || f.exists().then_some(())).is_some());
    // the host pid is in the container's pid namespace
    assert_eq!(
        std::fs::read_link(format!("/proc/{pid}/ns/pid")).unwrap(),
        std::fs::read_link(format!("/proc/{}/ns/pid", c.pid())).unwrap()
    );
    let ps = c.rt(&["ps", "--format", "json", &c.id]).json();
    assert!(
        ps.as_array()
            .unwrap()
            .iter()
            .any(|p| p.as_i64() == Some(pid as i64)),
        "{ps}"
    );
}

#[test]
fn tty_with_console_socket() {
    require_root!();
    let c = running("ex-tty");
    let sock = ConsoleSocket::new(c.bundle.path());
    let o = c
        .cmd()
        .args([
            "exec",
            "--tty",
            "--detach",
            "--console-socket",
            &sock.path_str(),
            &c.id,
            "sh",
            "-c",
            "tty; read l; echo got-$l; sleep 0.2",
        ])
        .run();
    o.expect_ok();
    let (mut pty, _name) = sock.master().expect("pty master over the console socket");
    let out = pty.read_until("/dev/pts/", Duration::from_secs(10));
    assert!(out.contains("/dev/pts/"), "tty not a pty: {out:?}");
    pty.write_all(b"abc\n").unwrap();
    let out = pty.read_until("got-abc", Duration::from_secs(10));
    assert!(out.contains("got-abc"), "{out:?}");
}

#[test]
fn exec_into_stopped_container_fails() {
    require_root!();
    let c = Container::new("ex-stopped", Bundle::new(&["true"]));
    c.create_start();
    c.wait_stopped(10);
    c.exec(&[], &["echo", "no"]).expect_fail();
    // and into an unknown container
    rt(&["exec", "pit-no-such-container", "true"]).expect_fail();
}

#[test]
fn exec_into_paused_container() {
    require_root!();
    let c = running("ex-paused");
    c.rt(&["pause", &c.id]).expect_ok();
    c.exec(&[], &["echo", "no"]).expect_fail();
    c.rt(&["resume", &c.id]).expect_ok();
    c.exec(&[], &["true"]).expect_ok();
}

#[test]
fn additional_gids_and_no_new_privs() {
    require_root!();
    let mut b = Bundle::new(&["sleep", "1000"]);
    b.config["process"]["noNewPrivileges"] = json!(false);
    let c = Container::new("ex-gids", b);
    c.create_start();
    let o = c.exec(
        &[
            "--user",
            "1000:1000",
            "--additional-gids",
            "1001",
            "--additional-gids",
            "1002",
        ],
        &["grep", "^Groups:", "/proc/self/status"],
    );
    o.expect_ok();
    let mut g: Vec<&str> = o.stdout.split_whitespace().skip(1).collect();
    g.sort();
    assert_eq!(g, ["1001", "1002"], "{o}");
    let o = c.exec(&[], &["grep", "^NoNewPrivs:", "/proc/self/status"]);
    assert!(o.stdout.contains('0'), "{o}");
    let o = c.exec(
        &["--no-new-privs"],
        &["grep", "^NoNewPrivs:", "/proc/self/status"],
    );
    assert!(o.stdout.contains('1'), "--no-new-privs not applied: {o}");
}

#[test]
fn ignore_paused() {
    require_root!();
    let c = std::sync::Arc::new(running("ex-ignpaused"));
    c.rt(&["pause", &c.id]).expect_ok();
    // without --ignore-paused: refused at once
    c.exec(&[], &["true"]).expect_fail();
    // with it the exec is let in, but its process is frozen with the others until resume
    let c2 = c.clone();
    let h =
        std::thread::spawn(move || c2.exec(&["--ignore-paused"], &["echo", "ran-after-resume"]));
    std::thread::sleep(Duration::from_millis(800));
    c.rt(&["resume", &c.id]).expect_ok();
    let o = h.join().unwrap();
    o.expect_ok();
    assert!(o.stdout.contains("ran-after-resume"), "{o}");
}

#[test]
fn exec_preserve_fds() {
    require_root!();
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let c = running("ex-preserve");
    let mut f = tempfile::tempfile().unwrap();
    std::io::Write::write_all(&mut f, b"exec-fd3-data\n").unwrap();
    std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(0)).unwrap();
    let out = tempfile::NamedTempFile::new().unwrap();
    let raw = f.as_raw_fd();
    let mut cmd = std::process::Command::new(runtime());
    cmd.args([
        "--root",
        ROOT,
        "exec",
        "--preserve-fds",
        "1",
        &c.id,
        "sh",
        "-c",
        "cat <&3; ls /proc/self/fd | tr '\\n' ' '",
    ])
    .stdin(std::process::Stdio::null())
    .stdout(out.reopen().unwrap());
    // SAFETY: the closure only calls fcntl, dup2 and close, async-signal-safe, between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            let t = libc::fcntl(raw, libc::F_DUPFD, 10);
            if t < 0 || libc::dup2(t, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            libc::close(t);
            Ok(())
        });
    }
    let st = cmd.status().unwrap();
    let text = std::fs::read_to_string(out.path()).unwrap();
    assert!(st.success(), "{text}");
    assert!(text.contains("exec-fd3-data"), "{text}");
    let fds: Vec<u32> = text
        .lines()
        .last()
        .unwrap_or("")
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    assert!(
        fds.iter().all(|f| *f <= 4),
        "unexpected fds in exec: {fds:?}"
    );
}

/// `exec -t` without --console-socket uses the caller's terminal, as runc does (it used to
/// be refused with "--tty needs --console-socket").
#[test]
fn exec_tty_uses_the_callers_terminal() {
    require_root!();
    let c = running("exec-hosttty");
    let (master, slave) = porta_integration::console::host_pty();
    let mut child = std::process::Command::new(runtime())
        .args([
            "--root",
            &c.root,
            "exec",
            "-t",
            &c.id,
            "sh",
            "-c",
            "tty; echo exec-tty-ok; exit 4",
        ])
        .stdin(slave.try_clone().unwrap())
        .stdout(slave.try_clone().unwrap())
        .stderr(slave)
        .spawn()
        .unwrap();
    let mut pty = porta_integration::console::Pty { f: master };
    let out = pty.read_until("exec-tty-ok", Duration::from_secs(60));
    let mut status = None;
    for _ in 0..6000 {
        if let Some(st) = child.try_wait().unwrap() {
            status = Some(st);
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let Some(st) = status else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("exec -t did not exit: {out:?}");
    };
    assert!(out.contains("exec-tty-ok"), "{out:?}");
    assert!(
        out.contains("/dev/pts/"),
        "no pty in the container: {out:?}"
    );
    assert_eq!(st.code(), Some(4), "{out:?}");
}

/// A failing exec exits 255 (the runtime's own error, runc's convention) and its error
/// names the exec; a process that runs exits with its own code.
#[test]
fn exec_errors_exit_255_and_name_the_exec() {
    require_root!();
    let c = running("exec-255");
    let o = c.exec(&[], &["/no/such/program"]);
    assert_eq!(o.code, 255, "{o}");
    let o2 = c.exec(&[], &["sh", "-c", "exit 255"]);
    assert_eq!(o2.code, 255, "{o2}");
    let o3 = c.exec(&[], &["sh", "-c", "exit 7"]);
    assert_eq!(o3.code, 7, "{o3}");
    let gone = c.rt(&["exec", "pit-no-such-container-x", "true"]);
    assert_eq!(gone.code, 255, "{gone}");
    if is_porta() {
        assert!(o.stderr.contains("exec process.args[0]"), "{o}");
        assert!(!o.stderr.contains("container init"), "{o}");
    }
}

fn status_bits(out: &str, field: &str) -> u64 {
    out.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .map(|v| u64::from_str_radix(v.trim(), 16).unwrap())
        .unwrap_or_else(|| panic!("no {field} in {out}"))
}

/// As runc: `exec --cap X` adds X to the ambient set too when the process has an
/// inheritable set holding it, so a non-root exec'd process keeps X across execve.
#[test]
fn cap_adds_to_ambient() {
    require_root!();
    let mut b = Bundle::new(&["sleep", "1000"]);
    b.user(1000, 1000, &[]);
    b.config["process"]["capabilities"]["inheritable"] = json!(["CAP_NET_RAW"]);
    b.config["process"]["capabilities"]["bounding"] = json!([
        "CAP_AUDIT_WRITE",
        "CAP_KILL",
        "CAP_NET_BIND_SERVICE",
        "CAP_NET_RAW"
    ]);
    let c = Container::new("ex-capamb", b);
    c.create_start();
    let o = c.exec(&["--cap", "CAP_NET_RAW"], &["cat", "/proc/self/status"]);
    assert_eq!(o.code, 0, "{o}");
    for f in ["CapAmb", "CapEff", "CapPrm"] {
        assert_ne!(
            status_bits(&o.stdout, f) & (1 << 13),
            0,
            "{f} lacks CAP_NET_RAW: {o}"
        );
    }
}

/// As runc: `exec --process FILE` whose process has no capabilities field runs with
/// the container's capabilities.
#[test]
fn process_file_without_capabilities() {
    require_root!();
    let c = running("ex-procnocap");
    let p = json!({
        "terminal": false,
        "user": {"uid": 0, "gid": 0},
        "args": ["cat", "/proc/self/status"],
        "env": ["PATH=/bin"],
        "cwd": "/"
    });
    let f = c.bundle.file("process-nocap.json");
    std::fs::write(&f, serde_json::to_vec(&p).unwrap()).unwrap();
    let o = c.exec(&["--process", f.to_str().unwrap()], &[]);
    assert_eq!(o.code, 0, "{o}");
    // CAP_AUDIT_WRITE, CAP_KILL, CAP_NET_BIND_SERVICE: the container's sets
    let want = (1u64 << 29) | (1 << 5) | (1 << 10);
    for f in ["CapEff", "CapPrm", "CapBnd"] {
        assert_eq!(status_bits(&o.stdout, f), want, "{f}: {o}");
    }
}
