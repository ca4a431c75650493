//! A client of Porta's container API socket that sends what it is told, hostile or not,
//! for the `objects` integration tests (it runs inside a container, and on the host).
//!
//! `pit-api-probe SOCKET MODE [ARG]`, one connection, one frame:
//! * `frame JSON`: JSON with its 4-byte length;
//! * `garbage`: bytes that are no frame;
//! * `huge`: a frame of 100 KiB;
//! * `fds N JSON`: the frame with N descriptors attached (copies of stdin);
//! * `len-lies JSON`: the frame with a length one byte longer than what follows;
//! * `pause-between JSON`: sends the request, prints the reply, reads its stdin to the
//!   end, then sends the request again on the same connection and prints the second reply;
//! * `hold N`: N connections, each asking for a listing and kept open; prints
//!   `ok K busy B` (how many were answered and how many refused) and waits for ever.
//!
//! Prints the reply's JSON on the first line; for a reply with a descriptor, a line
//! `fd-pid: N` (the `Pid:` of the descriptor's fdinfo: a pidfd's process, as this
//! process's pid namespace numbers it). Then sends a valid request and prints `open` if
//! the connection still answers, `closed` if the server closed it.

use std::os::fd::{AsRawFd, OwnedFd};

fn frame(body: &[u8]) -> Vec<u8> {
    let mut f = (body.len() as u32).to_le_bytes().to_vec();
    f.extend_from_slice(body);
    f
}

fn connect(path: &str) -> OwnedFd {
    // SAFETY: plain socket(2) call; the result is checked.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0) };
    assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
    // SAFETY: a fresh descriptor nobody else owns.
    let sock = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    // SAFETY: an all-zero sockaddr_un is valid.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (d, s) in addr.sun_path.iter_mut().zip(path.bytes()) {
        *d = s as libc::c_char;
    }
    // SAFETY: `addr` is a valid sockaddr_un for the call.
    let r = unsafe {
        libc::connect(
            sock.as_raw_fd(),
            (&addr as *const libc::sockaddr_un).cast(),
            std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t,
        )
    };
    if r != 0 {
        println!("connect failed: {}", std::io::Error::last_os_error());
        std::process::exit(3);
    }
    sock
}

/// Receives one message: its bytes, or None when the peer closed.
fn recv(sock: &OwnedFd) -> Option<(Vec<u8>, Vec<OwnedFd>)> {
    let mut buf = vec![0u8; 256 * 1024];
    let mut slots: [Option<OwnedFd>; 4] = Default::default();
    match porta_sys::scm::recv(sock.as_raw_fd(), &mut buf, 0, &mut slots) {
        Ok(r) if r.len == 0 => None,
        Ok(r) => Some((buf[..r.len].to_vec(), slots.into_iter().flatten().collect())),
        Err(_) => None,
    }
}

fn fd_pid(fd: &OwnedFd) -> Option<String> {
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd())).ok()?;
    info.lines()
        .find_map(|l| l.strip_prefix("Pid:"))
        .map(|p| p.trim().to_string())
}

fn pause_between(path: &str, json: &str) -> ! {
    use std::io::{Read, Write};
    let s = connect(path);
    for round in 0..2 {
        if round == 1 {
            let mut sink = Vec::new();
            let _ = std::io::stdin().read_to_end(&mut sink);
        }
        let sent = porta_sys::scm::send(
            s.as_raw_fd(),
            &frame(json.as_bytes()),
            &[],
            libc::MSG_NOSIGNAL,
        );
        let reply = sent.ok().and_then(|_| recv(&s));
        match reply {
            Some((r, _)) => println!("{}", String::from_utf8_lossy(r.get(4..).unwrap_or(&[]))),
            None => println!("no reply"),
        }
        let _ = std::io::stdout().flush();
    }
    std::process::exit(0)
}

fn hold(path: &str, n: usize) -> ! {
    let mut kept = Vec::new();
    let mut busy = 0;
    for _ in 0..n {
        let s = connect(path);
        let req = frame(b"{\"v\":1,\"op\":\"list\"}");
        let ok = porta_sys::scm::send(s.as_raw_fd(), &req, &[], libc::MSG_NOSIGNAL).is_ok()
            && recv(&s)
                .is_some_and(|(r, _)| String::from_utf8_lossy(&r).contains("\"reply\":\"ok\""));
        if ok {
            kept.push(s);
        } else {
            busy += 1;
        }
    }
    println!("ok {} busy {busy}", kept.len());
    use std::io::Write;
    let _ = std::io::stdout().flush();
    loop {
        // SAFETY: pause(2) only waits for a signal.
        unsafe { libc::pause() };
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        eprintln!("usage: pit-api-probe SOCKET MODE [ARG]");
        std::process::exit(2);
    }
    if args[2] == "hold" {
        hold(
            &args[1],
            args.get(3).and_then(|n| n.parse().ok()).unwrap_or(1),
        );
    }
    if args[2] == "pause-between" && args.len() == 4 {
        pause_between(&args[1], &args[3]);
    }
    let sock = connect(&args[1]);
    let arg = |i: usize| args.get(i).cloned().unwrap_or_default();
    let (msg, nfds) = match args[2].as_str() {
        "frame" => (frame(arg(3).as_bytes()), 0),
        "garbage" => (b"\x00\x01garbage\xff\xfe".to_vec(), 0),
        "huge" => {
            let mut body = b"{\"v\":1,\"op\":\"list\",\"path\":\"/".to_vec();
            body.extend(std::iter::repeat_n(b'a', 100 * 1024));
            body.extend_from_slice(b"\"}");
            (frame(&body), 0)
        }
        "fds" => (frame(arg(4).as_bytes()), arg(3).parse().unwrap_or(0)),
        "len-lies" => {
            let mut f = frame(arg(3).as_bytes());
            let n = u32::from_le_bytes([f[0], f[1], f[2], f[3]]) + 1;
            f[..4].copy_from_slice(&n.to_le_bytes());
            (f, 0)
        }
        m => {
            eprintln!("unknown mode {m}");
            std::process::exit(2);
        }
    };
    let fds = vec![0; nfds];
    if let Err(e) = porta_sys::scm::send(sock.as_raw_fd(), &msg, &fds, libc::MSG_NOSIGNAL) {
        println!("send failed: {e}");
        std::process::exit(3);
    }
    match recv(&sock) {
        Some((reply, fds)) => {
            println!("{}", String::from_utf8_lossy(reply.get(4..).unwrap_or(&[])));
            for fd in &fds {
                println!("fd-pid: {}", fd_pid(fd).unwrap_or_default());
            }
        }
        None => println!("no reply"),
    }
    let again = frame(b"{\"v\":1,\"op\":\"list\",\"path\":\"/\"}");
    let open = porta_sys::scm::send(sock.as_raw_fd(), &again, &[], libc::MSG_NOSIGNAL).is_ok()
        && recv(&sock).is_some();
    println!("{}", if open { "open" } else { "closed" });
}
