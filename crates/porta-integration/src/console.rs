//! A `--console-socket` receiver: a Unix socket on which the runtime sends the pty
//! master as an SCM_RIGHTS file descriptor (runc sends the pty's name as the data).

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A `--console-socket` listener that receives the pty master a runtime sends.
pub struct ConsoleSocket {
    /// The socket's path, to pass as `--console-socket`.
    pub path: PathBuf,
    handle: Option<JoinHandle<io::Result<(OwnedFd, String)>>>,
}

impl ConsoleSocket {
    /// Listens on `dir/console.sock`; a thread accepts one connection (for up to 60 s).
    pub fn new(dir: &Path) -> ConsoleSocket {
        let path = dir.join("console.sock");
        let _ = std::fs::remove_file(&path);
        let l = UnixListener::bind(&path).expect("bind console socket");
        l.set_nonblocking(true).unwrap();
        let handle = std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                match l.accept() {
                    Ok((s, _)) => {
                        s.set_nonblocking(false)?;
                        return recv_fd(&s);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        if Instant::now() > deadline {
                            return Err(io::Error::new(io::ErrorKind::TimedOut, "no connection"));
                        }
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err(e) => return Err(e),
                }
            }
        });
        ConsoleSocket {
            path,
            handle: Some(handle),
        }
    }

    /// The socket's path as a string.
    pub fn path_str(&self) -> String {
        self.path.display().to_string()
    }

    /// Waits for the runtime to send the master; returns it and the name sent with it.
    pub fn master(mut self) -> io::Result<(Pty, String)> {
        let h = self.handle.take().unwrap();
        let (fd, name) = h
            .join()
            .map_err(|_| io::Error::other("receiver panicked"))??;
        Ok((Pty { f: File::from(fd) }, name))
    }
}

/// Receives the console socket's one message: the pty master and its name.
fn recv_fd(s: &UnixStream) -> io::Result<(OwnedFd, String)> {
    let mut data = vec![0u8; 65536];
    let mut fds: [Option<OwnedFd>; 4] = Default::default();
    let r = porta_sys::scm::recv(s.as_raw_fd(), &mut data, 0, &mut fds)?;
    let name = String::from_utf8_lossy(&data[..r.len]).into_owned();
    let [first, ..] = fds;
    first.map(|f| (f, name)).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "no fd in console-socket message",
        )
    })
}

/// The pty master received from the runtime.
pub struct Pty {
    /// The master side of the pty.
    pub f: File,
}

impl Pty {
    /// Reads until `needle` shows up, EOF/EIO (all slaves closed), or the timeout.
    pub fn read_until(&mut self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            if String::from_utf8_lossy(&out).contains(needle) {
                break;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let mut pfd = libc::pollfd {
                fd: self.f.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd, alive for the call.
            let r = unsafe { libc::poll(&mut pfd, 1, left.as_millis().min(1000) as i32) };
            if r <= 0 {
                continue;
            }
            match self.f.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    }
    /// Writes `data` to the terminal (the container's input).
    pub fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        self.f.write_all(data)
    }
}

/// A pty pair for a runtime that should find a terminal on its stdio: (master, slave).
#[track_caller]
pub fn host_pty() -> (File, File) {
    use std::os::fd::FromRawFd;
    let (mut m, mut s) = (0, 0);
    // SAFETY: openpty writes two descriptors into `m` and `s`; the null pointers ask for
    // no name, no termios and no window size.
    let r = unsafe {
        libc::openpty(
            &mut m,
            &mut s,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(r, 0, "openpty: {}", io::Error::last_os_error());
    // SAFETY: both descriptors were just opened by openpty and are owned by nobody else.
    unsafe { (File::from_raw_fd(m), File::from_raw_fd(s)) }
}
