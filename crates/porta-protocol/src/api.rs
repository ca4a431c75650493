//! The container API socket (annotation `run.porta.api=on`): the requests a process inside
//! a container sends to its container's API server, and the replies.
//!
//! Framing: one request or reply per SOCK_SEQPACKET message, a **frame**: a 4-byte
//! little-endian length, then that many bytes of JSON (`{"v": 1, "op": "list", …}`).
//! A frame is at most [`MAX_FRAME`] bytes in all; up to [`MAX_FDS`] descriptors travel
//! with it (SCM_RIGHTS): the stdio of an `exec` in a request, the object's descriptor in
//! the reply to `open`. A frame whose length does not match, that is not JSON of a
//! known request, or that carries more descriptors, is answered with an
//! [`Reply::Error`] and the connection is closed. Decoding never panics.
//!
//! The caller's identity is never part of a request: the server takes it from the kernel
//! (SO_PEERCRED and the peer's pidfd).

use serde::{Deserialize, Serialize};

use crate::Error;

/// The protocol version every frame carries (`"v"`).
pub const VERSION: u32 = 1;
/// Largest frame (length prefix included), in bytes.
pub const MAX_FRAME: usize = 64 * 1024;
/// Most descriptors one frame may carry.
pub const MAX_FDS: usize = 3;
/// Name of the API socket in the container's state directory (on the host).
pub const SOCKET_NAME: &str = "api.sock";
/// Where the socket appears inside the container.
pub const CONTAINER_PATH: &str = "/run/porta/api.sock";
/// Environment variable that overrides [`CONTAINER_PATH`] for the client.
pub const ENV_PATH: &str = "PORTA_API";
/// The annotation that switches the API socket on (`on`) or off (`off`, the default).
pub const ANNOTATION: &str = "run.porta.api";
/// The subcommand word of the API server process: `porta api …` (hidden).
pub const SUBCOMMAND: &str = "api";
/// Name of the API server in the supervisor's record of its servers.
pub const SERVER_NAME: &str = "api";

/// A request on the API socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "camelCase", deny_unknown_fields)]
pub enum Request {
    /// The caller's namespace of objects (the container view), or the subtree at `path`
    /// (`/ID/processes`, …).
    List {
        /// An object path of the caller's own namespace; none: the whole namespace.
        #[serde(default)]
        path: Option<String>,
    },
    /// A descriptor of the object at `path` (a pidfd of a process object); the reply
    /// carries it.
    Open {
        /// An object path of the caller's own namespace.
        path: String,
    },
    /// Creates a child container from a bundle (a path in the caller's tree).
    Create {
        /// The child's id.
        id: String,
        /// Its bundle directory, as the caller sees it.
        bundle: String,
    },
    /// Starts a created child container.
    Start {
        /// The child's id.
        id: String,
    },
    /// Runs a process in a child container; stdin, stdout and stderr travel with the
    /// request (3 descriptors); the reply is [`Reply::Exit`].
    Exec {
        /// The child's id.
        id: String,
        /// The program and its arguments.
        args: Vec<String>,
        /// Its environment (`NAME=VALUE`).
        #[serde(default)]
        env: Vec<String>,
        /// Its working directory in the child (default: the child's `process.cwd`).
        #[serde(default)]
        cwd: Option<String>,
    },
    /// Sends a signal to a child container.
    Kill {
        /// The child's id.
        id: String,
        /// Signal name or number.
        signal: String,
        /// To every process of the child.
        #[serde(default)]
        all: bool,
    },
    /// Deletes a child container (and its own children).
    Delete {
        /// The child's id.
        id: String,
        /// Kill it first when it runs.
        #[serde(default)]
        force: bool,
    },
    /// The OCI state of a child container.
    State {
        /// The child's id.
        id: String,
    },
    /// The caller's child containers and their states (as `porta list`).
    ListChildren {},
}

impl Request {
    /// The request's name as on the wire (`list`, `open`, …), for logs and errors.
    pub fn op(&self) -> &'static str {
        match self {
            Request::List { .. } => "list",
            Request::Open { .. } => "open",
            Request::Create { .. } => "create",
            Request::Start { .. } => "start",
            Request::Exec { .. } => "exec",
            Request::Kill { .. } => "kill",
            Request::Delete { .. } => "delete",
            Request::State { .. } => "state",
            Request::ListChildren {} => "listChildren",
        }
    }

    /// How many descriptors must travel with the request.
    pub fn fds_wanted(&self) -> usize {
        match self {
            Request::Exec { .. } => 3,
            _ => 0,
        }
    }

    /// Its frame.
    pub fn encode(&self) -> Vec<u8> {
        frame(&Envelope {
            v: VERSION,
            body: self,
        })
    }

    /// Reads a request frame (length prefix included).
    pub fn decode(frame: &[u8]) -> Result<Request, Error> {
        let body = unframe(frame, "API request")?;
        // A map with "v" first: checked apart, so that an unknown version is named as such.
        let mut v: serde_json::Value = serde_json::from_slice(body)
            .map_err(|e| Error::malformed("API request", e.to_string()))?;
        let obj = v
            .as_object_mut()
            .ok_or_else(|| Error::malformed("API request", "not a JSON object"))?;
        match obj.remove("v").and_then(|v| v.as_u64()) {
            Some(n) if n == u64::from(VERSION) => {}
            Some(n) => {
                return Err(Error::malformed(
                    "API request",
                    format!("version {n} (this server speaks {VERSION})"),
                ))
            }
            None => return Err(Error::malformed("API request", "no version field \"v\"")),
        }
        serde_json::from_value(v).map_err(|e| Error::malformed("API request", e.to_string()))
    }
}

/// A reply on the API socket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "camelCase", deny_unknown_fields)]
pub enum Reply {
    /// Done; what the request asked for.
    Ok {
        /// The answer (the object tree for `list`, the object for `open`, …).
        value: serde_json::Value,
    },
    /// Refused or failed.
    Error {
        /// An errno value (`ENOENT` 2, `EACCES` 13, `EINVAL` 22, `EPROTO` 71, …).
        code: i32,
        /// Its name (`"ENOENT"`).
        errno: String,
        /// What is wrong, for a person.
        message: String,
    },
    /// The exec'd process ended with this exit code.
    Exit {
        /// Exit code (128 + signal number when killed).
        code: i32,
    },
}

impl Reply {
    /// An error reply with errno `code`.
    pub fn error(code: i32, message: impl Into<String>) -> Reply {
        Reply::Error {
            code,
            errno: errno_name(code).into(),
            message: message.into(),
        }
    }

    /// Its frame.
    pub fn encode(&self) -> Vec<u8> {
        frame(&Envelope {
            v: VERSION,
            body: self,
        })
    }

    /// Reads a reply frame.
    pub fn decode(frame: &[u8]) -> Result<Reply, Error> {
        let body = unframe(frame, "API reply")?;
        let mut v: serde_json::Value = serde_json::from_slice(body)
            .map_err(|e| Error::malformed("API reply", e.to_string()))?;
        if let Some(o) = v.as_object_mut() {
            o.remove("v");
        }
        serde_json::from_value(v).map_err(|e| Error::malformed("API reply", e.to_string()))
    }
}

/// The name of the errno values the API uses.
pub fn errno_name(code: i32) -> &'static str {
    match code {
        1 => "EPERM",
        2 => "ENOENT",
        3 => "ESRCH",
        5 => "EIO",
        7 => "E2BIG",
        13 => "EACCES",
        16 => "EBUSY",
        17 => "EEXIST",
        22 => "EINVAL",
        38 => "ENOSYS",
        71 => "EPROTO",
        90 => "EMSGSIZE",
        95 => "EOPNOTSUPP",
        _ => "EIO",
    }
}

#[derive(Serialize)]
struct Envelope<'a, T: Serialize> {
    v: u32,
    #[serde(flatten)]
    body: &'a T,
}

fn frame<T: Serialize>(msg: &T) -> Vec<u8> {
    // Plain data with string keys: serializing cannot fail.
    let body = serde_json::to_vec(msg).unwrap_or_default();
    let mut out = Vec::with_capacity(4 + body.len());
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&body);
    out
}

fn unframe<'a>(frame: &'a [u8], what: &'static str) -> Result<&'a [u8], Error> {
    if frame.len() > MAX_FRAME {
        return Err(Error::malformed(
            what,
            format!("{} bytes: a frame is at most {MAX_FRAME}", frame.len()),
        ));
    }
    let (len, body) = frame
        .split_first_chunk::<4>()
        .ok_or_else(|| Error::malformed(what, "shorter than its 4-byte length"))?;
    let len = u32::from_le_bytes(*len) as usize;
    if len != body.len() {
        return Err(Error::malformed(
            what,
            format!("length {len} but {} bytes follow", body.len()),
        ));
    }
    Ok(body)
}

/// Whether `path` is an acceptable object path: absolute, no empty, `.` or `..`
/// component, no NUL, at most 4096 bytes. Returns its components.
pub fn path_components(path: &str) -> Result<Vec<&str>, Error> {
    let bad = |why: &str| Error::malformed("object path", format!("{path:?}: {why}"));
    if path.len() > 4096 {
        return Err(bad("longer than 4096 bytes"));
    }
    if !path.starts_with('/') {
        return Err(bad("not absolute"));
    }
    if path.contains('\0') {
        return Err(bad("holds a NUL byte"));
    }
    let parts: Vec<&str> = path.split('/').skip(1).filter(|c| !c.is_empty()).collect();
    if parts.iter().any(|c| *c == "." || *c == "..") {
        return Err(bad("\".\" and \"..\" are not allowed"));
    }
    Ok(parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip() {
        let all = [
            Request::List { path: None },
            Request::List {
                path: Some("/a/processes".into()),
            },
            Request::Open {
                path: "/a/processes/1".into(),
            },
            Request::Create {
                id: "b".into(),
                bundle: "/b".into(),
            },
            Request::Start { id: "b".into() },
            Request::Exec {
                id: "b".into(),
                args: vec!["sh".into()],
                env: vec!["A=1".into()],
                cwd: None,
            },
            Request::Kill {
                id: "b".into(),
                signal: "TERM".into(),
                all: true,
            },
            Request::Delete {
                id: "b".into(),
                force: false,
            },
            Request::State { id: "b".into() },
            Request::ListChildren {},
        ];
        for r in all {
            assert_eq!(Request::decode(&r.encode()).unwrap(), r);
        }
        let r = Reply::error(2, "no object");
        assert_eq!(Reply::decode(&r.encode()).unwrap(), r);
        let r = Reply::Ok {
            value: serde_json::json!({"a": [1]}),
        };
        assert_eq!(Reply::decode(&r.encode()).unwrap(), r);
    }

    fn raw(body: &[u8]) -> Vec<u8> {
        let mut f = (body.len() as u32).to_le_bytes().to_vec();
        f.extend_from_slice(body);
        f
    }

    #[test]
    fn hostile_frames_are_errors() {
        for f in [
            Vec::new(),
            vec![1, 2],
            vec![0xff, 0xff, 0xff, 0xff, b'{'],
            raw(b""),
            raw(b"\xff\xfe"),
            raw(b"[]"),
            raw(b"{\"op\":\"list\"}"),
            raw(b"{\"v\":2,\"op\":\"list\"}"),
            raw(b"{\"v\":1,\"op\":\"format\"}"),
            raw(b"{\"v\":1,\"op\":\"list\",\"uid\":0}"),
            raw(b"{\"v\":1,\"op\":\"open\"}"),
            raw(&[b'['; 5000]),
            vec![0; MAX_FRAME + 1],
        ] {
            assert!(Request::decode(&f).is_err(), "{f:?}");
        }
        assert!(Request::decode(&raw(b"{\"v\":1,\"op\":\"list\"}")).is_ok());
    }

    #[test]
    fn paths() {
        assert_eq!(path_components("/a/b/").unwrap(), vec!["a", "b"]);
        assert!(path_components("/").unwrap().is_empty());
        for p in ["a", "/a/../b", "/./a", "/a\0"] {
            assert!(path_components(p).is_err(), "{p}");
        }
    }
}
