//! The server of a socket grant: a process that listens at the grant's path in the
//! target container's tree (bound through the container's own view of it, so that the
//! container's processes reach it by that path) and relays each connection, byte for
//! byte, to the source's socket (reached through the handle, never a path). Killing it
//! ends every relayed connection at once: that is the revocation.
//!
//! Stream sockets only; descriptors passed with SCM_RIGHTS and the peer's credentials do
//! not cross (the source sees the relay as its peer).

use std::ffi::CString;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};

/// Connections relayed at once; more wait in the listen queue.
const MAX_CONNECTIONS: usize = 256;

/// What the proxy's process needs, prepared by the supervisor before the fork.
pub(crate) struct Plan {
    /// O_PATH descriptor of the directory (in the container's view) the socket goes in.
    pub dir: OwnedFd,
    /// The socket's name in it.
    pub name: String,
    /// Permission bits of the socket (the source's).
    pub mode: u32,
    /// O_PATH descriptor of the source socket.
    pub source: OwnedFd,
    /// Where the child reports "ok" or why it failed (then exits).
    pub report: OwnedFd,
}

fn report(fd: RawFd, msg: &str) {
    // SAFETY: a valid pipe descriptor and buffer.
    unsafe { libc::write(fd, msg.as_ptr().cast(), msg.len()) };
}

/// The proxy process (a child of the supervisor): binds, reports, confines itself and
/// relays until killed. Never returns.
pub(crate) fn run(plan: Plan) -> ! {
    // SAFETY: ignoring SIGPIPE: a write to a closed peer is an error to handle.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
    crate::translators::detach_child(&[
        plan.dir.as_raw_fd(),
        plan.source.as_raw_fd(),
        plan.report.as_raw_fd(),
    ]);
    let at = format!("/proc/self/fd/{}/{}", plan.dir.as_raw_fd(), plan.name);
    // A stale socket of an earlier proxy goes first.
    if let Ok(c) = CString::new(plan.name.as_str()) {
        // SAFETY: valid descriptor and name.
        unsafe { libc::unlinkat(plan.dir.as_raw_fd(), c.as_ptr(), 0) };
    }
    let listener = match UnixListener::bind(&at) {
        Ok(l) => l,
        Err(e) => {
            report(plan.report.as_raw_fd(), &format!("bind {}: {e}", plan.name));
            // SAFETY: leave at once.
            unsafe { libc::_exit(1) }
        }
    };
    if let Ok(c) = CString::new(plan.name.as_str()) {
        // SAFETY: valid descriptor and name.
        unsafe { libc::fchmodat(plan.dir.as_raw_fd(), c.as_ptr(), plan.mode & 0o777, 0) };
    }
    drop(plan.dir);
    if let Err(e) = confine() {
        report(
            plan.report.as_raw_fd(),
            &format!("confine the socket relay: {e}"),
        );
        // SAFETY: leave at once.
        unsafe { libc::_exit(1) }
    }
    report(plan.report.as_raw_fd(), "ok");
    drop(plan.report);
    let source = format!("/proc/self/fd/{}", plan.source.as_raw_fd());
    let live = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    for conn in listener.incoming() {
        let Ok(client) = conn else { continue };
        if live.load(std::sync::atomic::Ordering::Relaxed) >= MAX_CONNECTIONS {
            continue;
        }
        let upstream = match UnixStream::connect(&source) {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(error = %e, "socket grant: the source refused a connection");
                continue;
            }
        };
        live.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let live = live.clone();
        let _ = std::thread::Builder::new().spawn(move || {
            relay(client, upstream);
            live.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        });
    }
    // SAFETY: leave at once.
    unsafe { libc::_exit(0) }
}

/// Copies both ways until either side ends; then shuts both down.
fn relay(a: UnixStream, b: UnixStream) {
    let (Ok(a2), Ok(b2)) = (a.try_clone(), b.try_clone()) else {
        return;
    };
    let back = std::thread::spawn(move || pump(b2, a2));
    pump(a, b);
    let _ = back.join();
}

fn pump(mut from: UnixStream, mut to: UnixStream) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown(std::net::Shutdown::Write);
    let _ = from.shutdown(std::net::Shutdown::Read);
}

/// No capabilities, no_new_privs, no file access (Landlock) beyond the two sockets it
/// holds.
fn confine() -> Result<(), porta_fs::Error> {
    porta_fs::grant::confine_files_and_capabilities()
}
