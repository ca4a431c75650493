//! Foreground terminal mode of `run` and `exec -t` without `--console-socket`: Porta itself
//! receives the pty master and relays it to its own terminal, as runc does.

use std::ffi::CString;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};

/// The terminal Porta relays a container's pty to: the first of stderr, stdout and stdin
/// that is a terminal, else the controlling terminal (`/dev/tty`), as runc finds it.
pub struct HostConsole {
    fd: OwnedFd,
}

impl HostConsole {
    /// Finds the caller's terminal; fails, naming what was tried, when there is none.
    pub fn find() -> Result<HostConsole> {
        for fd in [libc::STDERR_FILENO, libc::STDOUT_FILENO, libc::STDIN_FILENO] {
            // SAFETY: the standard fds stay open for the life of the process.
            let b = unsafe { BorrowedFd::borrow_raw(fd) };
            if nix::unistd::isatty(fd).unwrap_or(false) {
                let fd = b.try_clone_to_owned().context("dup the host terminal")?;
                return Ok(HostConsole { fd });
            }
        }
        let tty = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOCTTY | libc::O_CLOEXEC)
            .open("/dev/tty")
            .map_err(|e| {
                anyhow!(
                    "process.terminal is true, but there is no terminal to give the container: \
                     stdin, stdout and stderr are not terminals and open /dev/tty: {e}; \
                     run it from a terminal, pass --console-socket (with --detach), or set \
                     process.terminal to false"
                )
            })?;
        Ok(HostConsole { fd: tty.into() })
    }

    /// Copies the host terminal's window size to the container's pty.
    pub fn copy_size_to(&self, master: BorrowedFd<'_>) {
        let mut ws = libc::winsize {
            ws_row: 0,
            ws_col: 0,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCGWINSZ writes one winsize into `ws`, which outlives the call.
        if unsafe { libc::ioctl(self.fd.as_raw_fd(), libc::TIOCGWINSZ, &mut ws) } == 0 {
            // SAFETY: TIOCSWINSZ reads one winsize from `ws`.
            unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
        }
    }

    /// Puts the host terminal in raw mode until the returned guard is dropped.
    pub fn raw_mode(&self) -> Result<RawMode> {
        let fd = self.fd.try_clone().context("dup the host terminal")?;
        let orig = nix::sys::termios::tcgetattr(&fd).context("read the host terminal's mode")?;
        let mut raw = orig.clone();
        nix::sys::termios::cfmakeraw(&mut raw);
        nix::sys::termios::tcsetattr(&fd, nix::sys::termios::SetArg::TCSANOW, &raw)
            .context("put the host terminal in raw mode")?;
        Ok(RawMode { fd, orig })
    }
}

/// The socket this process listens on for a pty master, for the signal handler that removes
/// it when a signal ends Porta before the master arrived: (pid, socket, directory). Read
/// without a lock (a handler must not block); set before the handler is installed.
static HANDLER_PATHS: std::sync::atomic::AtomicPtr<(i32, CString, CString)> =
    std::sync::atomic::AtomicPtr::new(std::ptr::null_mut());

/// Signals that end Porta by default and after which the socket must not stay behind.
const FATAL: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

extern "C" fn remove_socket_and_die(sig: libc::c_int) {
    let p = HANDLER_PATHS.load(std::sync::atomic::Ordering::Acquire);
    // SAFETY: getpid, unlink, rmdir, signal and raise are async-signal-safe; `p` points to a
    // leaked box that is never freed (see ConsoleListener::new).
    unsafe {
        if !p.is_null() && (*p).0 == libc::getpid() {
            libc::unlink((*p).1.as_ptr());
            libc::rmdir((*p).2.as_ptr());
        }
        libc::signal(sig, libc::SIG_DFL);
        libc::raise(sig);
    }
}

/// Installs `handler` for the fatal signals.
fn set_fatal_handlers(handler: libc::sighandler_t) {
    for sig in FATAL {
        // SAFETY: installs a handler that only makes async-signal-safe calls, or the default.
        unsafe { libc::signal(sig, handler) };
    }
}

/// A listening console socket in a private directory under the state root. The directory
/// is removed when the master has been received, when the listener is dropped, and when
/// SIGINT, SIGTERM or SIGHUP end Porta before either.
pub struct ConsoleListener {
    dir: PathBuf,
    listener: UnixListener,
}

impl ConsoleListener {
    /// Binds a console socket under `root` (Porta's state root, so the path is short).
    pub fn new(root: &Path) -> Result<Self> {
        let dir = root.join(format!(".console-{}", std::process::id()));
        let sock = dir.join("sock");
        let c = |p: &Path| {
            CString::new(p.as_os_str().as_bytes())
                .map_err(|_| anyhow!("{} has a NUL byte", p.display()))
        };
        let paths = (std::process::id() as i32, c(&sock)?, c(&dir)?);
        if HANDLER_PATHS
            .load(std::sync::atomic::Ordering::Acquire)
            .is_null()
        {
            // Leaked on purpose: the handler may read it at any time, so it lives as long as
            // the process (one small allocation per process).
            let leaked = Box::into_raw(Box::new(paths.clone()));
            HANDLER_PATHS.store(leaked, std::sync::atomic::Ordering::Release);
        }
        set_fatal_handlers(remove_socket_and_die as *const () as libc::sighandler_t);
        let made = (|| -> Result<UnixListener> {
            std::fs::create_dir(&dir).with_context(|| format!("create {}", dir.display()))?;
            UnixListener::bind(&sock)
                .with_context(|| format!("bind console socket in {}", dir.display()))
        })();
        match made {
            Ok(listener) => Ok(ConsoleListener { dir, listener }),
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                set_fatal_handlers(libc::SIG_DFL);
                Err(e)
            }
        }
    }

    /// The socket's path, to pass as the console socket.
    pub fn path(&self) -> PathBuf {
        self.dir.join("sock")
    }

    /// Accepts the connection the runtime made and receives the pty master from it; the
    /// socket and its directory are gone when this returns.
    pub fn receive(self) -> Result<OwnedFd> {
        self.listener
            .set_nonblocking(true)
            .context("make the console socket non-blocking")?;
        // The runtime connected (and sent the master) before create or exec returned: a
        // connection that is not there now never comes.
        let (s, _) = self.listener.accept().map_err(|e| {
            anyhow!(
                "no pty master arrived on the console socket {}: {e}",
                self.path().display()
            )
        })?;
        s.set_nonblocking(false).context("console connection")?;
        let mut buf = [0u8; 256];
        let mut slot: [Option<OwnedFd>; 1] = Default::default();
        porta_sys::scm::recv(s.as_raw_fd(), &mut buf, 0, &mut slot)
            .context("receive the pty master")?;
        if let Some(fd) = slot[0].take() {
            return Ok(fd);
        }
        bail!("no pty master arrived on the console socket")
    }
}

impl Drop for ConsoleListener {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
        set_fatal_handlers(libc::SIG_DFL);
    }
}

/// Keeps the host terminal in raw mode while alive.
pub struct RawMode {
    fd: OwnedFd,
    orig: nix::sys::termios::Termios,
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ =
            nix::sys::termios::tcsetattr(&self.fd, nix::sys::termios::SetArg::TCSANOW, &self.orig);
    }
}

/// Relays stdin to the master and the master to stdout, in two threads; returns the
/// output thread, which ends when the pty closes.
pub fn relay(master: OwnedFd) -> Result<std::thread::JoinHandle<()>> {
    let mut from = std::fs::File::from(master);
    let mut to = from.try_clone().context("dup pty master")?;
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        let mut stdin = std::io::stdin();
        while let Ok(n) = stdin.read(&mut buf) {
            if n == 0 || to.write_all(&buf[..n]).is_err() {
                break;
            }
        }
    });
    Ok(std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        let mut out = std::io::stdout();
        // EIO once the last slave fd is closed: the container's terminal is gone.
        while let Ok(n) = from.read(&mut buf) {
            if n == 0 || out.write_all(&buf[..n]).is_err() {
                break;
            }
            let _ = out.flush();
        }
    }))
}

/// Clears ONLCR on the container's pty (a termios change on the master applies to the pty),
/// as runc does for the pty it relays: the kernel's default turns each `\n` the process
/// writes into `\r\n`, and the host terminal, in raw mode, would show both.
fn clear_onlcr(master: BorrowedFd<'_>) -> Result<()> {
    use nix::sys::termios::{tcgetattr, tcsetattr, OutputFlags, SetArg};
    let mut t = tcgetattr(master).context("read the pty's modes")?;
    t.output_flags.remove(OutputFlags::ONLCR);
    tcsetattr(master, SetArg::TCSANOW, &t).context("clear ONLCR on the pty")
}

/// Sets up foreground terminal mode: the host terminal (checked before anything is made)
/// and a console socket for the runtime to send the pty master to.
pub struct Foreground {
    /// The caller's terminal.
    pub host: HostConsole,
    /// Where the master will arrive.
    pub listener: ConsoleListener,
}

impl Foreground {
    /// Finds the host terminal, then binds the console socket under `root`.
    pub fn new(root: &Path) -> Result<Foreground> {
        let host = HostConsole::find()?;
        let listener = ConsoleListener::new(root)?;
        Ok(Foreground { host, listener })
    }

    /// Receives the master, sizes it as the host terminal, puts the host terminal in raw
    /// mode and starts relaying. Blocks the signals Porta forwards first, so that the relay
    /// threads never take one of them (they are read through a signalfd while waiting).
    pub fn attach(self) -> Result<(std::thread::JoinHandle<()>, RawMode)> {
        let master = self.listener.receive()?;
        clear_onlcr(master.as_fd())?;
        crate::run::forwarded_signals()
            .thread_block()
            .context("block signals")?;
        self.host.copy_size_to(master.as_fd());
        let raw = self.host.raw_mode()?;
        let out = relay(master)?;
        Ok((out, raw))
    }
}
