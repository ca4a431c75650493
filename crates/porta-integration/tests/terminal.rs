//! Terminal mode: the pty master goes over --console-socket (create, run --detach),
//! input and output through it, /dev/console, consoleSize.

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
