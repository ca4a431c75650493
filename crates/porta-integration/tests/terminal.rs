//! Terminal mode: the pty master goes over --console-socket (create, run --detach),
//! input and output through it, /dev/console, consoleSize.

use porta_integration::console::host_pty;
use porta_integration::*;
use std::time::Duration;

#[test]
fn create_with_console_socket() {
    require_root!();
    let mut b = Bundle::new(&[]);
    b.terminal(true);
    b.sh("tty; [ -c /dev/console ] && echo console-ok; read l; echo got-$l");
    let c = Container::new("tty-create", b);
    let sock = ConsoleSocket::new(c.bundle.path());
    c.create_with(&["--console-socket", &sock.path_str()])
        .expect_ok();
    let (mut pty, _) = sock.master().expect("pty master");
    c.start().expect_ok();
    let out = pty.read_until("console-ok", Duration::from_secs(10));
    assert!(out.contains("/dev/pts/0"), "{out:?}");
    assert!(out.contains("console-ok"), "{out:?}");
    pty.write_all(b"xyz\n").unwrap();
    let out = pty.read_until("got-xyz", Duration::from_secs(10));
    assert!(out.contains("got-xyz"), "{out:?}");
    c.wait_stopped(10);
}

#[test]
fn run_detach_with_console_socket() {
    require_root!();
    let mut b = Bundle::new(&[]);
    b.terminal(true);
    b.sh("echo run-tty-ok; sleep 0.5");
    let c = Container::new("tty-run", b);
    let sock = ConsoleSocket::new(c.bundle.path());
    c.run_with(&["--detach", "--console-socket", &sock.path_str()])
        .expect_ok();
    let (mut pty, _) = sock.master().expect("pty master");
    let out = pty.read_until("run-tty-ok", Duration::from_secs(10));
    assert!(out.contains("run-tty-ok"), "{out:?}");
    c.wait_stopped(10);
}

#[test]
fn console_size() {
    require_root!();
    let mut b = Bundle::new(&[]);
    b.terminal(true);
    b.config["process"]["consoleSize"] = json!({"height": 33, "width": 111});
    b.sh("stty size; sleep 0.3");
    let c = Container::new("tty-size", b);
    let sock = ConsoleSocket::new(c.bundle.path());
    c.create_with(&["--console-socket", &sock.path_str()])
        .expect_ok();
    let (mut pty, _) = sock.master().expect("pty master");
    c.start().expect_ok();
    let out = pty.read_until("111", Duration::from_secs(10));
    assert!(out.contains("33 111"), "consoleSize not applied: {out:?}");
}

#[test]
fn terminal_without_console_socket_fails_create() {
    require_root!();
    let mut b = Bundle::new(&["true"]);
    b.terminal(true);
    let c = Container::new("tty-nosock", b);
    c.create().expect_fail();
    c.rt(&["state", &c.id]).expect_fail();
}

#[test]
fn console_socket_without_terminal_fails() {
    require_root!();
    let c = Container::new("tty-noterm", Bundle::new(&["true"]));
    let sock = ConsoleSocket::new(c.bundle.path());
    c.create_with(&["--console-socket", &sock.path_str()])
        .expect_fail();
    c.rt(&["state", &c.id]).expect_fail();
}

/// Waits (bounded by a count, not a clock) for `child` to exit; kills it if it does not.
fn wait_child(child: &mut std::process::Child, what: &str) -> std::process::ExitStatus {
    for _ in 0..6000 {
        if let Some(st) = child.try_wait().unwrap() {
            return st;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("{what} did not exit");
}

/// `run` of a terminal config with no terminal anywhere (stdio not a tty, no controlling
/// terminal) fails at once, as runc does ("open /dev/tty: ..."), makes nothing, and
/// leaves no console socket behind (it used to hang, holding `<root>/.console-<pid>`).
#[test]
fn run_terminal_without_any_terminal_fails_at_once() {
    require_root!();
    use std::os::unix::process::CommandExt;
    let mut b = Bundle::new(&["echo", "never"]);
    b.terminal(true);
    let c = Container::new("tty-noterm-run", b);
    let err = tempfile::NamedTempFile::new().unwrap();
    let mut cmd = std::process::Command::new(runtime());
    cmd.args([
        "--root",
        &c.root,
        "run",
        "--bundle",
        &c.bundle.path_str(),
        &c.id,
    ])
    .stdin(std::process::Stdio::null())
    .stdout(std::process::Stdio::null())
    .stderr(err.reopen().unwrap());
    // No controlling terminal either: a new session.
    // SAFETY: the closure only calls setsid, async-signal-safe, between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap();
    let pid = child.id();
    let st = wait_child(&mut child, "run without a terminal");
    let stderr = std::fs::read_to_string(err.path()).unwrap();
    assert!(!st.success(), "run succeeded: {stderr}");
    assert!(
        stderr.contains("/dev/tty"),
        "the error does not say why: {stderr}"
    );
    c.rt(&["state", &c.id]).expect_fail();
    let sock = std::path::Path::new(&c.root).join(format!(".console-{pid}"));
    assert!(!sock.exists(), "{} left behind", sock.display());
}

/// `run` in the foreground with a terminal relays the container's pty to it; the console
/// socket is gone as soon as the pty master arrived (not only at exit), and a SIGTERM to
/// the runtime reaches the container and leaves nothing behind.
#[test]
fn run_foreground_terminal_relays_and_keeps_no_socket() {
    require_root!();
    let mut b = Bundle::new(&[]);
    b.terminal(true);
    b.sh("trap 'exit 3' TERM; tty; echo fg-ready; while true; do sleep 0.1; done");
    let c = Container::new("tty-fg", b);
    let (master, slave) = host_pty();
    let mut child = std::process::Command::new(runtime())
        .args([
            "--root",
            &c.root,
            "run",
            "--bundle",
            &c.bundle.path_str(),
            &c.id,
        ])
        .stdin(slave.try_clone().unwrap())
        .stdout(slave.try_clone().unwrap())
        .stderr(slave)
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut pty = porta_integration::console::Pty { f: master };
    let out = pty.read_until("fg-ready", Duration::from_secs(60));
    assert!(
        out.contains("fg-ready"),
        "no output through the terminal: {out:?}"
    );
    assert!(out.contains("/dev/pts/"), "{out:?}");
    let sock = std::path::Path::new(&c.root).join(format!(".console-{pid}"));
    assert!(
        !sock.exists(),
        "{} still there after the pty master arrived",
        sock.display()
    );
    // SAFETY: kill(2) takes integers only; no memory is involved.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let st = wait_child(&mut child, "run after SIGTERM");
    assert_eq!(
        st.code(),
        Some(3),
        "SIGTERM not passed on to the container: {st:?}"
    );
    assert!(!sock.exists(), "{} left behind", sock.display());
    c.rt(&["state", &c.id]).expect_fail();
}

/// The pty belongs to the process's user, as runc gives it: uid of process.user, group
/// tty (the devpts mount's gid=5).
#[test]
fn pty_belongs_to_the_process_user() {
    require_root!();
    let mut b = Bundle::new(&[]);
    b.terminal(true);
    b.user(1000, 1000, &[]);
    b.sh("ls -ln $(tty) | awk '{print \"own=\" $3 \":\" $4}'; echo pty-done; sleep 0.2");
    let c = Container::new("tty-owner", b);
    let sock = ConsoleSocket::new(c.bundle.path());
    c.create_with(&["--console-socket", &sock.path_str()])
        .expect_ok();
    let (mut pty, _) = sock.master().expect("pty master");
    c.start().expect_ok();
    let out = pty.read_until("pty-done", Duration::from_secs(30));
    assert!(
        out.contains("own=1000:5"),
        "pty not owned by uid 1000, group tty: {out:?}"
    );
    c.wait_stopped(30);
}

/// In foreground terminal mode the runtime clears ONLCR on the container's pty, as runc
/// does (`stty -a` in the container shows -onlcr); Porta also puts the caller's terminal
/// in raw mode, so the lines arrive as the process wrote them, "\n" without "\r".
#[test]
fn foreground_terminal_output_has_no_carriage_returns() {
    require_root!();
    let mut b = Bundle::new(&[]);
    b.terminal(true);
    // The output waits for a line of input, sent once the container runs: by then the
    // runtime has its relay set up (runc sets it up while the process already runs).
    b.sh("read x; stty -a 2>/dev/null | grep -o -- '-*onlcr'; printf 'l1\\nl2\\n'; echo pty-done");
    let c = Container::new("tty-onlcr", b);
    let (master, slave) = host_pty();
    let mut child = std::process::Command::new(runtime())
        .args([
            "--root",
            &c.root,
            "run",
            "--bundle",
            &c.bundle.path_str(),
            &c.id,
        ])
        .stdin(slave.try_clone().unwrap())
        .stdout(slave.try_clone().unwrap())
        .stderr(slave)
        .spawn()
        .unwrap();
    let mut pty = porta_integration::console::Pty { f: master };
    let running = wait_for(Duration::from_secs(60), || {
        (c.status().as_deref() == Some("running")).then_some(())
    });
    assert!(running.is_some(), "container not running: {:?}", c.status());
    pty.write_all(b"go\n").unwrap();
    let out = pty.read_until("pty-done", Duration::from_secs(60));
    let st = wait_child(&mut child, "run");
    assert!(st.success(), "{st:?}: {out:?}");
    assert!(
        out.contains("-onlcr"),
        "ONLCR not cleared on the container's pty: {out:?}"
    );
    if is_porta() {
        assert!(out.contains("l1\nl2\n"), "{out:?}");
        assert!(
            !out.contains("l1\r") && !out.contains("l2\r"),
            "carriage returns in the output: {out:?}"
        );
    }
}

/// Creates its file when dropped: the signal a test's hook waits for.
struct Release(std::path::PathBuf);

impl Drop for Release {
    fn drop(&mut self) {
        let _ = std::fs::write(&self.0, b"");
    }
}

/// A signal that ends a foreground `run` before the pty master arrived (here: while a
/// createRuntime hook holds `create`) still removes the console socket.
#[test]
fn signal_before_the_master_arrived_removes_the_socket() {
    require_root!();
    porta_only!("the location of Porta's own console socket");
    for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
        let mut b = Bundle::new(&["true"]);
        b.terminal(true);
        b.annotation("run.porta.fs", "kernel");
        let mark = b.file("hook-running");
        let done = b.file("hook-done");
        // The hook waits for this file (a count of checks bounds it, never the clock), and
        // the guard makes it also when the test fails half-way, so no hook outlives the test.
        let release = Release(b.file("hook-release"));
        let script = format!(
            "touch {}; i=0; while [ ! -e {rel} ] && [ $i -lt 6000 ]; do sleep 0.05; i=$((i+1)); done; touch {}",
            mark.display(),
            done.display(),
            rel = release.0.display()
        );
        b.hook(
            "createRuntime",
            json!({"path": "/bin/sh", "args": ["sh", "-c", script]}),
        );
        let c = Container::new("tty-sig", b);
        let (_master, slave) = host_pty();
        let mut child = std::process::Command::new(runtime())
            .args([
                "--root",
                &c.root,
                "run",
                "--bundle",
                &c.bundle.path_str(),
                &c.id,
            ])
            .stdin(slave.try_clone().unwrap())
            .stdout(slave.try_clone().unwrap())
            .stderr(slave)
            .spawn()
            .unwrap();
        let pid = child.id();
        let sock = std::path::Path::new(&c.root).join(format!(".console-{pid}"));
        let held = wait_for(Duration::from_secs(60), || mark.exists().then_some(()));
        assert!(held.is_some(), "the createRuntime hook did not run");
        assert!(
            sock.join("sock").exists(),
            "no console socket while create runs"
        );
        // SAFETY: kill(2) takes integers only; no memory is involved.
        unsafe { libc::kill(pid as i32, sig) };
        let st = wait_child(&mut child, "run after the signal");
        // Let the hook finish, and wait until it has, so nothing of it outlives the test.
        drop(release);
        let finished = wait_for(Duration::from_secs(600), || done.exists().then_some(()));
        assert!(finished.is_some(), "the createRuntime hook never finished");
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(st.signal(), Some(sig), "{st:?}");
        assert!(
            !sock.exists(),
            "{} left behind after signal {sig}",
            sock.display()
        );
    }
}
