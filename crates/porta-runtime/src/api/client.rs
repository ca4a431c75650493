//! The client side of the API socket: what `porta` uses inside a container.
//!
//! [`Client::call`] sends one request with its descriptors and returns the reply with
//! the descriptors that came back; every command of the client mode goes through it.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use porta_supervisor::protocol::api::{self, Reply, Request};

use crate::error::{Error, Result};

/// The API socket to use inside a container: `$PORTA_API` when set, else
/// [`api::CONTAINER_PATH`] when it is a socket; `None` otherwise.
pub fn socket_path() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(api::ENV_PATH).filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    use std::os::unix::fs::FileTypeExt;
    let p = Path::new(api::CONTAINER_PATH);
    std::fs::metadata(p)
        .ok()
        .filter(|m| m.file_type().is_socket())
        .map(|_| p.to_path_buf())
}

/// A connection to an API socket.
pub struct Client {
    sock: OwnedFd,
    path: PathBuf,
}

fn api_err(what: impl Into<String>, e: impl std::fmt::Display, errno: &str) -> Error {
    Error::Api {
        what: what.into(),
        errno: errno.into(),
        message: e.to_string(),
    }
}

fn io_err(what: impl Into<String>, e: std::io::Error) -> Error {
    let code = e.raw_os_error().unwrap_or(libc::EIO);
    api_err(what, e, api::errno_name(code))
}

impl Client {
    /// Connects to the socket at `path`.
    pub fn connect(path: &Path) -> Result<Client> {
        use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, UnixAddr};
        let what = || format!("connect {}", path.display());
        let sock = socket(
            AddressFamily::Unix,
            SockType::SeqPacket,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .map_err(|e| io_err(what(), e.into()))?;
        let addr = UnixAddr::new(path).map_err(|e| io_err(what(), e.into()))?;
        connect(sock.as_raw_fd(), &addr).map_err(|e| io_err(what(), e.into()))?;
        Ok(Client {
            sock,
            path: path.to_path_buf(),
        })
    }

    /// Sends `req` with `fds` attached and waits for the reply; returns it with the
    /// descriptors it carried. An error reply is returned as a reply, not as an error:
    /// errors here are the transport's.
    pub fn call(&self, req: &Request, fds: &[RawFd]) -> Result<(Reply, Vec<OwnedFd>)> {
        let what = || format!("{} on {}", req.op(), self.path.display());
        porta_sys::scm::send(
            self.sock.as_raw_fd(),
            &req.encode(),
            fds,
            libc::MSG_NOSIGNAL,
        )
        .map_err(|e| io_err(what(), e))?;
        let mut buf = vec![0u8; api::MAX_FRAME + 1];
        let mut slots: [Option<OwnedFd>; api::MAX_FDS] = Default::default();
        let got = porta_sys::scm::recv(self.sock.as_raw_fd(), &mut buf, 0, &mut slots)
            .map_err(|e| io_err(what(), e))?;
        if got.len == 0 {
            return Err(api_err(
                what(),
                "the API server closed the connection",
                "EPIPE",
            ));
        }
        if got.flags & libc::MSG_TRUNC != 0 {
            return Err(api_err(what(), "reply larger than a frame", "EMSGSIZE"));
        }
        let reply = Reply::decode(&buf[..got.len]).map_err(|e| api_err(what(), e, "EPROTO"))?;
        Ok((reply, slots.into_iter().flatten().collect()))
    }

    /// [`Self::call`] for requests that answer a value: the value, or the error reply
    /// as an [`Error::Api`].
    pub fn value(&self, req: &Request) -> Result<serde_json::Value> {
        match self.call(req, &[])?.0 {
            Reply::Ok { value } => Ok(value),
            Reply::Error { errno, message, .. } => Err(Error::Api {
                what: req.op().into(),
                errno,
                message,
            }),
            Reply::Exit { code } => Err(api_err(
                req.op(),
                format!("unexpected exit reply (code {code})"),
                "EPROTO",
            )),
        }
    }
}
