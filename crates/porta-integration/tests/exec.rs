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
    let o = c.exec(&[], &["sh", "-c", "for n in pid mnt net; do readlink /proc/self/ns/$n; done; cat /etc/hostname"]);
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
    let o = c.cmd().args(["exec", &c.id, "sh", "-c", "read x; echo got:$x"]).stdin("line-in\n").run();
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
    let o = c.exec(&["--env", "PIT_A=1", "--env", "PIT_B=two words", "--cwd", "/etc", "--user", "1000:1001"],
        &["sh", "-c", "echo $PIT_A; echo $PIT_B; pwd; id -u; id -g"]);
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
        let l = o.stdout.lines().find(|l| l.starts_with("CapEff:")).unwrap_or_else(|| panic!("{o}"));
        u64::from_str_radix(l.split_whitespace().nth(1).unwrap(), 16).unwrap()
    };
    let o = c.exec(&[], &["grep", "CapEff", "/proc/self/status"]);
    assert_eq!(eff(&o) & (1 << 13), 0, "{o}");
    let o = c.exec(&["--cap", "CAP_NET_RAW"], &["grep", "CapEff", "/proc/self/status"]);
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
        .args(["exec", "--detach", "--pid-file", pf.to_str().unwrap(), &c.id, "sh", "-c", "echo detached > /tmp/d; sleep 30"])
        .timeout(Duration::from_secs(20))
        .run();
    o.expect_ok();
    let pid: i32 = std::fs::read_to_string(&pf).expect("pid file").trim().parse().unwrap();
    assert!(pid_alive(pid), "exec'd process {pid} not running");
    let f = c.bundle.rootfs().join("tmp/d");
    assert!(wait_for(Duration::from_secs(10), || f.exists().then_some(())).is_some());
    // the host pid is in the container's pid namespace
    assert_eq!(
        std::fs::read_link(format!("/proc/{pid}/ns/pid")).unwrap(),
        std::fs::read_link(format!("/proc/{}/ns/pid", c.pid())).unwrap()
    );
    let ps = c.rt(&["ps", "--format", "json", &c.id]).json();
    assert!(ps.as_array().unwrap().iter().any(|p| p.as_i64() == Some(pid as i64)), "{ps}");
}

#[test]
fn tty_with_console_socket() {
    require_root!();
    let c = running("ex-tty");
    let sock = ConsoleSocket::new(c.bundle.path());
    let o = c
        .cmd()
        .args(["exec", "--tty", "--detach", "--console-socket", &sock.path_str(), &c.id, "sh", "-c", "tty; read l; echo got-$l; sleep 0.2"])
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
