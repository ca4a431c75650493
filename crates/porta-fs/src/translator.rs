//! Translators: what the file server and the supervisor say to each other about them, the
//! record a node carries, and the identity maps between the host and the container.
//!
//! A translator is a FUSE file-system program (or one of Porta's built-ins) that answers
//! for everything at and below one node of the container's tree. The file server cannot
//! start processes (it is confined), so it asks its supervisor over the backing socket
//! ([`crate::backing`]): a [`StartRequest`] with the node (an O_PATH descriptor attached),
//! the identity and the program's argument vector; the supervisor answers with the
//! translator's pid and the server's end of a SOCK_SEQPACKET socket pair whose other end
//! the translator got as `/dev/fd/N`. Over it the server plays the kernel's part of the
//! FUSE protocol.
//!
//! Wire format (native endian). Start: `op: u32 = OP_START, uid: u32, gid: u32,
//! flags: u32, tag: u64, path_len: u32, 0: u32`, then the node's path in the container
//! and the record (the argument vector, NUL-separated). Answer: `tag: u64, result: i32, pid: i32` (16 bytes, the
//! size of a backing answer), the socket attached when `result` is 0. Stop: `op: u32 =
//! OP_STOP, pid: i32, tag: u64` (no answer). Id maps: `op = OP_ID_MAPS, 0, tag`, answered
//! with the 16-byte header (`pid` = text length) followed by the container's `uid_map`,
//! a NUL, and its `gid_map`.

use std::os::fd::{OwnedFd, RawFd};

use crate::sys::{self, SysResult};

/// Start a translator (the node's O_PATH descriptor attached).
pub const OP_START: u32 = 3;
/// Kill translator `pid` (no answer).
pub const OP_STOP: u32 = 4;
/// Ask for the container's identity maps.
pub const OP_ID_MAPS: u32 = 5;
/// Kill translator `pid` at once (a hung one; no answer).
pub const OP_KILL: u32 = 6;

/// Length of the fixed part of a start request.
pub const START_HDR_LEN: usize = 32;
/// Longest record (argument vector) a node may carry.
pub const MAX_RECORD: usize = 4096;
/// Most arguments a record may hold.
pub const MAX_ARGS: usize = 64;

/// Extended attribute holding a node's passive translator record (kept on the node in
/// the backing tree, so it survives restarts of the server and of the container).
pub const PASSIVE_XATTR: &str = "user.porta.translator";
/// Extended attribute through which an active translator is set, shown and removed.
pub const ACTIVE_XATTR: &str = "user.porta.translator.active";

/// The prefix naming a built-in translator in a record (`porta:memfs`).
pub const BUILTIN_PREFIX: &str = "porta:";

/// The argument standing for the translator's FUSE descriptor (`/dev/fd/N`).
pub const MOUNT_POINT_ARG: &str = "{}";

/// Flag of a start request: the translator is passive (recorded on the node).
pub const FLAG_PASSIVE: u32 = 1;
/// Flag of a start request: the node carries a grant ([`GRANT_XATTR`]): the supervisor
/// serves the handle of another container it holds under that id, or refuses (EACCES)
/// when it holds none (the grant was revoked).
pub const FLAG_GRANT: u32 = 2;

/// Extended attribute (reserved to Porta: the container can neither see nor change it)
/// marking the node a grant is served at: [`encode_grant_record`]. Set and removed by the
/// container's supervisor in the backing tree.
pub const GRANT_XATTR: &str = "user.porta.grant";

/// The program word of a grant's start request (`porta:grant ID`).
pub const GRANT_PROGRAM: &str = "porta:grant";

/// A grant record: the grant's id, and `:ro` when the grant is read-only.
pub fn encode_grant_record(id: &str, read_only: bool) -> Vec<u8> {
    let mut v = id.as_bytes().to_vec();
    if read_only {
        v.extend_from_slice(b":ro");
    }
    v
}

/// Reads a grant record: (id, read-only); None when it is not one.
pub fn parse_grant_record(b: &[u8]) -> Option<(String, bool)> {
    let text = std::str::from_utf8(b).ok()?;
    let (id, ro) = match text.strip_suffix(":ro") {
        Some(id) => (id, true),
        None => (text, false),
    };
    let ok = !id.is_empty()
        && id.len() <= 64
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"._-".contains(&c));
    ok.then(|| (id.to_owned(), ro))
}

/// Unique id of the message a translator's starter sends in place of the INIT reply when
/// it could not start the program: `error` then carries the errno.
pub const START_FAILED_UNIQUE: u64 = u64::MAX;

/// Why a record is not a translator.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// Nothing in it.
    #[error("the translator record is empty")]
    Empty,
    /// Longer than [`MAX_RECORD`] bytes or [`MAX_ARGS`] arguments.
    #[error("the translator record is longer than {MAX_RECORD} bytes or {MAX_ARGS} arguments")]
    TooLong,
    /// Not UTF-8.
    #[error("the translator record is not UTF-8")]
    NotUtf8,
    /// The program is neither an absolute path, a name to find in PATH nor a built-in.
    #[error(
        "translator program {0:?}: give an absolute path, a name found in PATH, or porta:NAME"
    )]
    BadProgram(String),
}

/// A translator's argument vector as a node records it: NUL-separated (as the Hurd keeps
/// it, what `porta translator set` writes) or, as a person types it into `setfattr`,
/// separated by blanks (no quoting).
pub fn parse_record(bytes: &[u8]) -> Result<Vec<String>, RecordError> {
    if bytes.len() > MAX_RECORD {
        return Err(RecordError::TooLong);
    }
    let text = std::str::from_utf8(bytes).map_err(|_| RecordError::NotUtf8)?;
    let args: Vec<String> = if text.contains('\0') {
        text.split('\0')
            .filter(|a| !a.is_empty())
            .map(str::to_owned)
            .collect()
    } else {
        text.split_ascii_whitespace().map(str::to_owned).collect()
    };
    if args.len() > MAX_ARGS {
        return Err(RecordError::TooLong);
    }
    let prog = args.first().ok_or(RecordError::Empty)?;
    let ok = prog.starts_with('/')
        || prog.starts_with(BUILTIN_PREFIX) && prog.len() > BUILTIN_PREFIX.len()
        || !prog.contains('/') && !prog.contains(':');
    if !ok {
        return Err(RecordError::BadProgram(prog.clone()));
    }
    Ok(args)
}

/// The NUL-separated form of an argument vector (what nodes record).
pub fn encode_record(args: &[String]) -> Vec<u8> {
    args.join("\0").into_bytes()
}

/// A start request, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartRequest {
    /// Host uid the translator runs as (the node's owner).
    pub uid: u32,
    /// Host gid.
    pub gid: u32,
    /// [`FLAG_PASSIVE`].
    pub flags: u32,
    /// Echoed in the answer.
    pub tag: u64,
    /// The translated node's path in the container (its directory is the translator's
    /// working directory).
    pub path: String,
    /// The argument vector.
    pub args: Vec<String>,
}

impl StartRequest {
    /// The wire form (without the descriptor).
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(START_HDR_LEN + 64);
        b.extend_from_slice(&OP_START.to_ne_bytes());
        b.extend_from_slice(&self.uid.to_ne_bytes());
        b.extend_from_slice(&self.gid.to_ne_bytes());
        b.extend_from_slice(&self.flags.to_ne_bytes());
        b.extend_from_slice(&self.tag.to_ne_bytes());
        b.extend_from_slice(&(self.path.len() as u32).to_ne_bytes());
        b.extend_from_slice(&0u32.to_ne_bytes());
        b.extend_from_slice(self.path.as_bytes());
        b.extend_from_slice(&encode_record(&self.args));
        b
    }

    /// Parses a start request; None when malformed.
    pub fn decode(b: &[u8]) -> Option<StartRequest> {
        if b.len() < START_HDR_LEN || u32::from_ne_bytes(b[..4].try_into().ok()?) != OP_START {
            return None;
        }
        let word = |i: usize| u32::from_ne_bytes(b[i..i + 4].try_into().unwrap_or([0; 4]));
        let path_end = START_HDR_LEN.checked_add(word(24) as usize)?;
        let path = std::str::from_utf8(b.get(START_HDR_LEN..path_end)?).ok()?;
        Some(StartRequest {
            uid: word(4),
            gid: word(8),
            flags: word(12),
            tag: u64::from_ne_bytes(b[16..24].try_into().ok()?),
            path: path.to_owned(),
            args: parse_record(&b[path_end..]).ok()?,
        })
    }
}

/// The fixed 16-byte answer to a start or id-maps request.
pub fn encode_answer(tag: u64, result: i32, pid: i32) -> [u8; 16] {
    let mut a = [0u8; 16];
    a[..8].copy_from_slice(&tag.to_ne_bytes());
    a[8..12].copy_from_slice(&result.to_ne_bytes());
    a[12..].copy_from_slice(&pid.to_ne_bytes());
    a
}

fn decode_answer(b: &[u8]) -> Option<(u64, i32, i32)> {
    if b.len() < 16 {
        return None;
    }
    Some((
        u64::from_ne_bytes(b[..8].try_into().ok()?),
        i32::from_ne_bytes(b[8..12].try_into().ok()?),
        i32::from_ne_bytes(b[12..16].try_into().ok()?),
    ))
}

/// A simple request (`op`, `arg`, `tag`) in the 16-byte form of [`crate::backing`].
pub fn encode_simple(op: u32, arg: i32, tag: u64) -> [u8; 16] {
    crate::backing::Request { op, arg, tag }.encode()
}

/// Sends `msg` (with `fd` attached) and waits for the answer carrying `tag`, skipping
/// answers meant for a killed predecessor. The caller serializes exchanges on the socket.
fn exchange(
    sock: RawFd,
    msg: &[u8],
    fd: Option<RawFd>,
    tag: u64,
) -> SysResult<(i32, i32, Vec<u8>, Option<OwnedFd>)> {
    loop {
        match sys::send_with_fd(sock, msg, fd, 0) {
            Ok(_) => break,
            Err(libc::EINTR) => continue,
            Err(e) => return Err(e),
        }
    }
    let mut buf = vec![0u8; 16 + 2 * 65536];
    loop {
        let mut r = match sys::recv_with_fds(sock, &mut buf, 0) {
            Ok(r) => r,
            Err(libc::EINTR) => continue,
            Err(e) => return Err(e),
        };
        if r.len == 0 && r.nfds() == 0 {
            return Err(libc::ECONNRESET);
        }
        match decode_answer(&buf[..r.len]) {
            Some((t, result, pid)) if t == tag => {
                let fd = r.fds[0].take();
                return Ok((result, pid, buf[16..r.len].to_vec(), fd));
            }
            _ => continue,
        }
    }
}

/// Asks the supervisor on `sock` to start a translator; returns the server's end of the
/// translator's socket and its pid.
pub fn start(sock: RawFd, mut req: StartRequest) -> SysResult<(OwnedFd, i32)> {
    req.tag = crate::backing::next_tag();
    let tag = req.tag;
    let (result, pid, _, fd) = exchange(sock, &req.encode(), None, tag)?;
    if result < 0 {
        return Err(-result);
    }
    fd.map(|f| (f, pid)).ok_or(libc::EPROTO)
}

/// Asks the supervisor on `sock` to stop translator `pid` (SIGTERM, then SIGKILL after a
/// grace period; `kill`: SIGKILL at once).
pub fn stop(sock: RawFd, pid: i32, kill: bool) {
    let op = if kill { OP_KILL } else { OP_STOP };
    let msg = encode_simple(op, pid, crate::backing::next_tag());
    let _ = sys::send_with_fd(sock, &msg, None, libc::MSG_DONTWAIT);
}

/// Asks the supervisor on `sock` for the container's identity maps.
pub fn id_maps(sock: RawFd) -> SysResult<(IdMap, IdMap)> {
    let tag = crate::backing::next_tag();
    let (result, _, text, _) = exchange(sock, &encode_simple(OP_ID_MAPS, 0, tag), None, tag)?;
    if result < 0 {
        return Err(-result);
    }
    let text = String::from_utf8_lossy(&text);
    let (u, g) = text.split_once('\0').unwrap_or((&text, ""));
    Ok((IdMap::parse(u), IdMap::parse(g)))
}

/// The answer text of [`OP_ID_MAPS`]: the two maps separated by a NUL.
pub fn encode_id_maps(uid_map: &str, gid_map: &str) -> Vec<u8> {
    let mut v = uid_map.as_bytes().to_vec();
    v.push(0);
    v.extend_from_slice(gid_map.as_bytes());
    v
}

/// One identity map of a user namespace (`/proc/PID/uid_map` lines: inside, outside,
/// count); empty means identity (no user namespace).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IdMap(Vec<(u32, u32, u32)>);

/// The id an unmapped id shows as (the kernel's overflow id).
pub const OVERFLOW_ID: u32 = 65534;

impl IdMap {
    /// Parses the text of a `uid_map`/`gid_map` file; the full identity map is kept empty.
    pub fn parse(text: &str) -> IdMap {
        let v: Vec<(u32, u32, u32)> = text
            .lines()
            .filter_map(|l| {
                let mut it = l.split_whitespace().map(|w| w.parse::<u32>());
                match (it.next(), it.next(), it.next()) {
                    (Some(Ok(a)), Some(Ok(b)), Some(Ok(c))) => Some((a, b, c)),
                    _ => None,
                }
            })
            .collect();
        if v == [(0, 0, u32::MAX)] {
            IdMap(Vec::new())
        } else {
            IdMap(v)
        }
    }

    /// The container's id of host id `id`.
    pub fn to_inside(&self, id: u32) -> u32 {
        if self.0.is_empty() {
            return id;
        }
        self.0
            .iter()
            .find(|(_, out, n)| id >= *out && id - out < *n)
            .map_or(OVERFLOW_ID, |(inside, out, _)| inside + (id - out))
    }

    /// The host id of the container's id `id`.
    pub fn to_outside(&self, id: u32) -> u32 {
        if self.0.is_empty() {
            return id;
        }
        self.0
            .iter()
            .find(|(inside, _, n)| id >= *inside && id - inside < *n)
            .map_or(OVERFLOW_ID, |(inside, out, _)| out + (id - inside))
    }

    /// Whether host id `id` is the container's root (or the host's: the administrator).
    pub fn is_root(&self, id: u32) -> bool {
        id == 0 || !self.0.is_empty() && self.to_inside(id) == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grant_records_round_trip_and_refuse_junk() {
        assert_eq!(
            parse_grant_record(&encode_grant_record("g-1a", true)),
            Some(("g-1a".into(), true))
        );
        assert_eq!(
            parse_grant_record(&encode_grant_record("g-1a", false)),
            Some(("g-1a".into(), false))
        );
        assert_eq!(parse_grant_record(b""), None);
        assert_eq!(parse_grant_record(b":ro"), None);
        assert_eq!(parse_grant_record(b"../x"), None);
        assert_eq!(parse_grant_record(b"a\0b"), None);
    }

    #[test]
    fn records_parse_in_both_forms_and_bad_ones_are_named() {
        assert_eq!(
            parse_record(b"/usr/bin/fuse2fs\0img\0{}").unwrap(),
            ["/usr/bin/fuse2fs", "img", "{}"]
        );
        assert_eq!(
            parse_record(b"fuse2fs  img {}\n").unwrap(),
            ["fuse2fs", "img", "{}"]
        );
        assert_eq!(
            parse_record(b"porta:memfs size=1M").unwrap(),
            ["porta:memfs", "size=1M"]
        );
        assert_eq!(parse_record(b"  "), Err(RecordError::Empty));
        assert_eq!(
            parse_record(b"porta:"),
            Err(RecordError::BadProgram("porta:".into()))
        );
        assert_eq!(
            parse_record(b"bin/x"),
            Err(RecordError::BadProgram("bin/x".into()))
        );
        assert_eq!(parse_record(&[0xff, 0xfe]), Err(RecordError::NotUtf8));
        assert_eq!(
            parse_record(&vec![b'a'; MAX_RECORD + 1]),
            Err(RecordError::TooLong)
        );
    }

    #[test]
    fn start_requests_round_trip() {
        let r = StartRequest {
            uid: 1000,
            gid: 100,
            flags: FLAG_PASSIVE,
            tag: 7,
            path: "/mnt/x".into(),
            args: vec!["porta:memfs".into(), "size=1M".into()],
        };
        assert_eq!(StartRequest::decode(&r.encode()), Some(r));
        assert_eq!(StartRequest::decode(&[0u8; 10]), None);
    }

    #[test]
    fn id_maps_translate_both_ways() {
        let m = IdMap::parse("0 100000 65536\n");
        assert_eq!(m.to_inside(100000), 0);
        assert_eq!(m.to_inside(101000), 1000);
        assert_eq!(m.to_inside(5), OVERFLOW_ID);
        assert_eq!(m.to_outside(1000), 101000);
        assert!(m.is_root(100000) && m.is_root(0) && !m.is_root(101000));
        let id = IdMap::parse("         0          0 4294967295\n");
        assert_eq!(id, IdMap::default());
        assert_eq!(id.to_inside(5), 5);
        assert!(!id.is_root(5));
    }
}
