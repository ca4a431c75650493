//! The keeper (`porta fs keeper`): its arguments, its first message, and the commands and
//! answers on its control socket (SOCK_SEQPACKET: one message per frame).
//!
//! The wire: a command is its byte and a sequence number (u32, native order), 5 bytes;
//! an answer is the outcome (i32: a pid, 0, or -errno), the command's sequence number
//! and the pid of the keeper that answered (i32), 12 bytes.

use std::ffi::OsString;
use std::os::fd::RawFd;
use std::path::PathBuf;
use std::time::Duration;

use crate::argv::{push, Options};
use crate::Error;

/// The subcommand words that start a keeper: `porta fs keeper …`.
pub const SUBCOMMAND: [&str; 2] = ["fs", "keeper"];

/// Length of a command: the command byte, then a sequence number (u32, native order).
pub const CMD_LEN: usize = 5;
/// Length of an answer: the outcome (i32), the command's sequence number (u32), then the
/// pid of the keeper that answered (i32; a twin's once it took over).
pub const ANSWER_LEN: usize = 12;

/// Entry and attribute timeout of the servers when nothing else is asked (one day).
pub const DEFAULT_TTL: Duration = Duration::from_secs(86400);
/// Request threads per server when nothing else is asked.
pub const DEFAULT_THREADS: usize = 2;

/// How a container's file server takes requests from the kernel (`--transport`, the
/// annotation `run.porta.fs.transport`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Transport {
    /// /dev/fuse reads and writes, always.
    #[default]
    Dev,
    /// FUSE over io_uring when the kernel offers it at INIT, /dev/fuse otherwise.
    Auto,
    /// FUSE over io_uring, or no server at all.
    Uring,
}

impl Transport {
    /// The name used on command lines and in annotations.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Dev => "dev",
            Transport::Auto => "auto",
            Transport::Uring => "uring",
        }
    }

    /// Parses [`Transport::as_str`]'s names.
    pub fn parse(s: &str) -> Option<Transport> {
        match s {
            "dev" => Some(Transport::Dev),
            "auto" => Some(Transport::Auto),
            "uring" => Some(Transport::Uring),
            _ => None,
        }
    }
}

/// The arguments of `porta fs keeper`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeeperArgs {
    /// The FUSE connection descriptor (inherited).
    pub fuse_fd: RawFd,
    /// The state memfd (inherited).
    pub state_fd: RawFd,
    /// The control socket to the supervisor (inherited, SOCK_SEQPACKET).
    pub ctl_fd: RawFd,
    /// The backing directory to serve.
    pub root: PathBuf,
    /// Use FUSE passthrough when the kernel offers it (needs `backing_fd`).
    pub passthrough: bool,
    /// Request threads per server.
    pub threads: usize,
    /// Entry/attribute timeout (whole seconds on the command line).
    pub ttl: Duration,
    /// Do not confine servers (seccomp, capabilities): for debugging only.
    pub no_confine: bool,
    /// Enter a new user namespace (the supervisor maps it); off: run in the initial one.
    pub userns: bool,
    /// The socket to the supervisor that registers passthrough backing files (inherited,
    /// SOCK_SEQPACKET); required with `passthrough`.
    pub backing_fd: Option<RawFd>,
    /// A detached procfs mount for the keeper's namespace (inherited); without it, a
    /// clone of the keeper's `/proc`.
    pub proc_fd: Option<RawFd>,
    /// The backing root's (device, inode) as the supervisor recorded it: the keeper serves
    /// nothing else.
    pub root_id: Option<(u64, u64)>,
    /// The transport the servers ask for at INIT.
    pub transport: Transport,
}

impl KeeperArgs {
    /// The arguments with what is required, everything else as by default.
    pub fn new(fuse_fd: RawFd, state_fd: RawFd, ctl_fd: RawFd, root: PathBuf) -> KeeperArgs {
        KeeperArgs {
            fuse_fd,
            state_fd,
            ctl_fd,
            root,
            passthrough: false,
            threads: DEFAULT_THREADS,
            ttl: DEFAULT_TTL,
            no_confine: false,
            userns: true,
            backing_fd: None,
            proc_fd: None,
            root_id: None,
            transport: Transport::Dev,
        }
    }

    /// The argument list after [`SUBCOMMAND`]: `--fuse-fd N --state-fd N --ctl-fd N
    /// --root PATH --threads N --ttl SECS [--passthrough] [--backing-fd N] [--no-userns]
    /// [--no-confine] [--proc-fd N] [--root-id DEV:INO] [--transport dev|auto|uring]`.
    pub fn to_argv(&self) -> Vec<OsString> {
        let mut v = Vec::new();
        push(&mut v, "--fuse-fd", self.fuse_fd.to_string());
        push(&mut v, "--state-fd", self.state_fd.to_string());
        push(&mut v, "--ctl-fd", self.ctl_fd.to_string());
        push(&mut v, "--root", self.root.clone());
        push(&mut v, "--threads", self.threads.to_string());
        push(&mut v, "--ttl", self.ttl.as_secs().to_string());
        if self.passthrough {
            v.push("--passthrough".into());
        }
        if let Some(fd) = self.backing_fd {
            push(&mut v, "--backing-fd", fd.to_string());
        }
        if !self.userns {
            v.push("--no-userns".into());
        }
        if self.no_confine {
            v.push("--no-confine".into());
        }
        if let Some(fd) = self.proc_fd {
            push(&mut v, "--proc-fd", fd.to_string());
        }
        if let Some((dev, ino)) = self.root_id {
            push(&mut v, "--root-id", format!("{dev}:{ino}"));
        }
        if self.transport != Transport::Dev {
            push(&mut v, "--transport", self.transport.as_str());
        }
        v
    }

    /// Reads the argument list after [`SUBCOMMAND`] (as [`Self::to_argv`] makes it).
    pub fn from_argv(args: &[OsString]) -> Result<KeeperArgs, Error> {
        let mut k = KeeperArgs::new(-1, -1, -1, PathBuf::new());
        let mut o = Options::new(args);
        while let Some(name) = o.next_name() {
            let name = name?;
            match name {
                "--fuse-fd" => k.fuse_fd = o.fd(name)?,
                "--state-fd" => k.state_fd = o.fd(name)?,
                "--ctl-fd" => k.ctl_fd = o.fd(name)?,
                "--root" => k.root = o.value(name)?.into(),
                "--threads" => {
                    k.threads = o.parsed(name, "a number of threads")?;
                    if k.threads == 0 {
                        return Err(Error::BadValue {
                            arg: name.into(),
                            value: "0".into(),
                            want: "a number of threads",
                        });
                    }
                }
                "--ttl" => k.ttl = Duration::from_secs(o.parsed(name, "a number of seconds")?),
                "--passthrough" => k.passthrough = true,
                "--no-confine" => k.no_confine = true,
                "--no-userns" => k.userns = false,
                "--backing-fd" => k.backing_fd = Some(o.fd(name)?),
                "--proc-fd" => k.proc_fd = Some(o.fd(name)?),
                "--transport" => {
                    let v = o.text(name)?;
                    k.transport = Transport::parse(v).ok_or_else(|| Error::BadValue {
                        arg: name.into(),
                        value: v.into(),
                        want: "dev, auto or uring",
                    })?;
                }
                "--root-id" => {
                    let v = o.text(name)?;
                    let id = v
                        .split_once(':')
                        .and_then(|(d, i)| Some((d.parse().ok()?, i.parse().ok()?)))
                        .ok_or_else(|| Error::BadValue {
                            arg: name.into(),
                            value: v.into(),
                            want: "DEV:INO",
                        })?;
                    k.root_id = Some(id);
                }
                other => return Err(Error::UnknownArgument(other.into())),
            }
        }
        if k.fuse_fd < 0 {
            return Err(Error::Missing("--fuse-fd"));
        }
        if k.state_fd < 0 {
            return Err(Error::Missing("--state-fd"));
        }
        if k.ctl_fd < 0 {
            return Err(Error::Missing("--ctl-fd"));
        }
        if k.root.as_os_str().is_empty() {
            return Err(Error::Missing("--root"));
        }
        if k.passthrough && k.backing_fd.is_none() {
            return Err(Error::Needs("--passthrough", "--backing-fd"));
        }
        Ok(k)
    }
}

/// What a command asks the keeper to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CommandKind {
    /// Start a server (answers its pid).
    Spawn,
    /// Pre-fork a standby server, set up and confined, waiting (answers its pid).
    Standby,
    /// Let the standby serve, or start a server when there is none (answers its pid).
    Activate,
    /// Do nothing but answer (0): once its answer is read, every earlier command has been
    /// answered.
    Sync,
    /// Fork the keeper's twin, which takes the keeper's place when it dies (answers the
    /// twin's pid).
    Twin,
}

impl CommandKind {
    /// Its byte on the wire.
    pub fn byte(self) -> u8 {
        match self {
            CommandKind::Spawn => b'S',
            CommandKind::Standby => b'B',
            CommandKind::Activate => b'A',
            CommandKind::Sync => b'Y',
            CommandKind::Twin => b'T',
        }
    }

    /// The command of byte `b`, if any.
    pub fn from_byte(b: u8) -> Option<CommandKind> {
        Some(match b {
            b'S' => CommandKind::Spawn,
            b'B' => CommandKind::Standby,
            b'A' => CommandKind::Activate,
            b'Y' => CommandKind::Sync,
            b'T' => CommandKind::Twin,
            _ => return None,
        })
    }

    /// Whether it starts a server (its answer is a server's pid).
    pub fn starts_server(self) -> bool {
        matches!(
            self,
            CommandKind::Spawn | CommandKind::Standby | CommandKind::Activate
        )
    }
}

/// A command from the supervisor to the keeper.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Command {
    /// What to do.
    pub kind: CommandKind,
    /// Sequence number, echoed by the answer (0: none).
    pub seq: u32,
}

impl Command {
    /// Its frame: the command byte, then the sequence number.
    pub fn encode(&self) -> [u8; CMD_LEN] {
        let mut b = [0u8; CMD_LEN];
        b[0] = self.kind.byte();
        b[1..].copy_from_slice(&self.seq.to_ne_bytes());
        b
    }

    /// Reads a frame: [`CMD_LEN`] bytes, or the command byte alone (sequence number 0).
    pub fn decode(b: &[u8]) -> Result<Command, Error> {
        const WHAT: &str = "keeper command";
        let (&first, rest) = b
            .split_first()
            .ok_or_else(|| Error::malformed(WHAT, "empty"))?;
        let kind = CommandKind::from_byte(first)
            .ok_or_else(|| Error::malformed(WHAT, format!("unknown command byte {first:#04x}")))?;
        let seq = match rest.len() {
            0 => 0,
            4 => u32::from_ne_bytes([rest[0], rest[1], rest[2], rest[3]]),
            n => {
                return Err(Error::malformed(
                    WHAT,
                    format!("{} bytes, want 1 or {CMD_LEN}", n + 1),
                ))
            }
        };
        Ok(Command { kind, seq })
    }
}

/// What the keeper did for a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The pid of the process it started (a server, a standby or a twin).
    Started(i32),
    /// Done, nothing started (the answer to [`CommandKind::Sync`]).
    Done,
    /// It failed with this errno.
    Failed(i32),
}

impl Outcome {
    fn to_word(self) -> i32 {
        match self {
            Outcome::Started(pid) => pid,
            Outcome::Done => 0,
            Outcome::Failed(errno) => -errno,
        }
    }

    fn from_word(w: i32) -> Result<Outcome, Error> {
        Ok(match w {
            0 => Outcome::Done,
            p if p > 0 => Outcome::Started(p),
            e => Outcome::Failed(e.checked_neg().ok_or_else(|| {
                Error::malformed("keeper answer", format!("outcome {e} is no -errno"))
            })?),
        })
    }
}

/// The keeper's answer to a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Answer {
    /// What it did.
    pub outcome: Outcome,
    /// The command's sequence number.
    pub seq: u32,
    /// The pid of the keeper that answered (a twin's once it took over).
    pub keeper: i32,
}

impl Answer {
    /// Its frame.
    pub fn encode(&self) -> [u8; ANSWER_LEN] {
        let mut b = [0u8; ANSWER_LEN];
        b[..4].copy_from_slice(&self.outcome.to_word().to_ne_bytes());
        b[4..8].copy_from_slice(&self.seq.to_ne_bytes());
        b[8..].copy_from_slice(&self.keeper.to_ne_bytes());
        b
    }

    /// Reads a frame of exactly [`ANSWER_LEN`] bytes.
    pub fn decode(b: &[u8]) -> Result<Answer, Error> {
        if b.len() != ANSWER_LEN {
            return Err(Error::malformed(
                "keeper answer",
                format!("{} bytes, want {ANSWER_LEN}", b.len()),
            ));
        }
        let word = |i: usize| [b[i], b[i + 1], b[i + 2], b[i + 3]];
        let keeper = i32::from_ne_bytes(word(8));
        if keeper <= 0 {
            return Err(Error::malformed(
                "keeper answer",
                format!("keeper pid {keeper}"),
            ));
        }
        Ok(Answer {
            outcome: Outcome::from_word(i32::from_ne_bytes(word(0)))?,
            seq: u32::from_ne_bytes(word(4)),
            keeper,
        })
    }
}

/// A keeper's first message on its control socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hello {
    /// It is in a new user namespace: the supervisor writes its uid_map and gid_map and
    /// answers a [`MapsReply`].
    Userns,
    /// It has no user namespace, for this errno (0: switched off); the servers run in the
    /// initial user namespace.
    Root(i32),
    /// It was started with `--no-confine`.
    Unconfined,
}

impl Hello {
    /// Its frame: `U`, `R` and the errno in decimal, or `N`.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Hello::Userns => vec![b'U'],
            Hello::Root(errno) => format!("R{errno}").into_bytes(),
            Hello::Unconfined => vec![b'N'],
        }
    }

    /// Reads a frame.
    pub fn decode(b: &[u8]) -> Result<Hello, Error> {
        const WHAT: &str = "keeper hello";
        match b.split_first() {
            Some((b'U', [])) => Ok(Hello::Userns),
            Some((b'N', [])) => Ok(Hello::Unconfined),
            Some((b'R', errno)) => std::str::from_utf8(errno)
                .ok()
                .and_then(|s| s.parse::<i32>().ok())
                .filter(|e| *e >= 0)
                .map(Hello::Root)
                .ok_or_else(|| {
                    Error::malformed(WHAT, format!("errno {:?}", String::from_utf8_lossy(errno)))
                }),
            Some(_) => Err(Error::malformed(
                WHAT,
                format!("{:?}", String::from_utf8_lossy(b)),
            )),
            None => Err(Error::malformed(WHAT, "empty")),
        }
    }

    /// The confinement its servers run under.
    pub fn confinement(&self) -> crate::Confinement {
        match self {
            Hello::Userns => crate::Confinement::Userns,
            Hello::Root(_) => crate::Confinement::Root,
            Hello::Unconfined => crate::Confinement::None,
        }
    }
}

/// The supervisor's answer to [`Hello::Userns`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MapsReply {
    /// It wrote the identity maps.
    Written,
    /// It could not (the keeper exits).
    Failed,
}

impl MapsReply {
    /// Its frame (one byte).
    pub fn encode(&self) -> [u8; 1] {
        match self {
            MapsReply::Written => [b'1'],
            MapsReply::Failed => [b'0'],
        }
    }

    /// Reads a frame.
    pub fn decode(b: &[u8]) -> Result<MapsReply, Error> {
        match b {
            [b'1'] => Ok(MapsReply::Written),
            [b'0'] => Ok(MapsReply::Failed),
            _ => Err(Error::malformed(
                "id-map reply",
                format!("{:?}", String::from_utf8_lossy(b)),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    #[test]
    fn arguments_round_trip() {
        let mut k = KeeperArgs::new(5, 6, 7, "/var/lib/x/rootfs".into());
        assert_eq!(KeeperArgs::from_argv(&k.to_argv()).unwrap(), k);
        k.passthrough = true;
        k.backing_fd = Some(9);
        k.threads = 4;
        k.ttl = Duration::from_secs(1);
        k.no_confine = true;
        k.userns = false;
        k.proc_fd = Some(10);
        k.root_id = Some((64768, 1234567));
        assert_eq!(KeeperArgs::from_argv(&k.to_argv()).unwrap(), k);
    }

    #[test]
    fn arguments_as_the_supervisor_gave_them_before() {
        let k = KeeperArgs::from_argv(&os(&[
            "--fuse-fd",
            "3",
            "--state-fd",
            "4",
            "--ctl-fd",
            "5",
            "--root",
            "/r",
            "--threads",
            "2",
            "--root-id",
            "1:2",
            "--passthrough",
            "--backing-fd",
            "6",
        ]))
        .unwrap();
        assert_eq!(k.ttl, DEFAULT_TTL);
        assert_eq!(k.root_id, Some((1, 2)));
        assert_eq!(k.backing_fd, Some(6));
        assert!(k.passthrough && k.userns && !k.no_confine);
    }

    #[test]
    fn bad_arguments_say_what_is_wrong() {
        let base = [
            "--fuse-fd",
            "3",
            "--state-fd",
            "4",
            "--ctl-fd",
            "5",
            "--root",
            "/r",
        ];
        let with = |extra: &[&str]| {
            let mut v = base.to_vec();
            v.extend_from_slice(extra);
            KeeperArgs::from_argv(&os(&v)).unwrap_err().to_string()
        };
        assert_eq!(with(&["--threads"]), "--threads needs a value");
        assert_eq!(
            with(&["--threads", "x"]),
            "--threads: \"x\" is not a number of threads"
        );
        assert_eq!(
            with(&["--threads", "0"]),
            "--threads: \"0\" is not a number of threads"
        );
        assert_eq!(
            with(&["--proc-fd", "-1"]),
            "--proc-fd: \"-1\" is not a descriptor number"
        );
        assert_eq!(
            with(&["--root-id", "12"]),
            "--root-id: \"12\" is not DEV:INO"
        );
        assert_eq!(with(&["--bogus"]), "unknown argument \"--bogus\"");
        assert_eq!(with(&["--passthrough"]), "--passthrough needs --backing-fd");
        let missing = KeeperArgs::from_argv(&os(&base[..6])).unwrap_err();
        assert_eq!(missing, Error::Missing("--root"));
        let missing = KeeperArgs::from_argv(&os(&base[2..])).unwrap_err();
        assert_eq!(missing, Error::Missing("--fuse-fd"));
    }

    #[test]
    fn commands_round_trip_with_the_bytes_of_the_wire() {
        for (kind, byte) in [
            (CommandKind::Spawn, b'S'),
            (CommandKind::Standby, b'B'),
            (CommandKind::Activate, b'A'),
            (CommandKind::Sync, b'Y'),
            (CommandKind::Twin, b'T'),
        ] {
            let c = Command {
                kind,
                seq: 0x0102_0304,
            };
            let b = c.encode();
            assert_eq!(b[0], byte);
            assert_eq!(b[1..], 0x0102_0304u32.to_ne_bytes());
            assert_eq!(Command::decode(&b).unwrap(), c);
            assert_eq!(Command::decode(&[byte]).unwrap(), Command { kind, seq: 0 });
        }
    }

    #[test]
    fn garbled_commands_are_errors() {
        let e = |b: &[u8]| Command::decode(b).unwrap_err().to_string();
        assert_eq!(e(&[]), "malformed keeper command: empty");
        assert_eq!(
            e(b"X1234"),
            "malformed keeper command: unknown command byte 0x58"
        );
        assert_eq!(e(b"S12"), "malformed keeper command: 3 bytes, want 1 or 5");
        assert_eq!(
            e(&[b'S'; 16]),
            "malformed keeper command: 16 bytes, want 1 or 5"
        );
    }

    #[test]
    fn answers_round_trip() {
        for outcome in [Outcome::Started(4242), Outcome::Done, Outcome::Failed(11)] {
            let a = Answer {
                outcome,
                seq: u32::MAX,
                keeper: 77,
            };
            assert_eq!(Answer::decode(&a.encode()).unwrap(), a);
        }
        let raw = Answer {
            outcome: Outcome::Failed(11),
            seq: 3,
            keeper: 9,
        }
        .encode();
        assert_eq!(raw[..4], (-11i32).to_ne_bytes());
    }

    #[test]
    fn garbled_answers_are_errors() {
        let e = |b: &[u8]| Answer::decode(b).unwrap_err().to_string();
        assert_eq!(e(&[0; 13]), "malformed keeper answer: 13 bytes, want 12");
        assert_eq!(e(&[]), "malformed keeper answer: 0 bytes, want 12");
        let mut b = [0u8; ANSWER_LEN];
        b[..4].copy_from_slice(&i32::MIN.to_ne_bytes());
        b[8..].copy_from_slice(&5i32.to_ne_bytes());
        assert_eq!(
            e(&b),
            format!("malformed keeper answer: outcome {} is no -errno", i32::MIN)
        );
        b[..4].copy_from_slice(&1i32.to_ne_bytes());
        b[8..].copy_from_slice(&0i32.to_ne_bytes());
        assert_eq!(e(&b), "malformed keeper answer: keeper pid 0");
    }

    /// Every frame of up to 13 bytes drawn from a few telling byte values: decoding any of
    /// them gives a message or an error, never a panic.
    #[test]
    fn no_frame_makes_a_decoder_panic() {
        let alphabet = [0u8, 1, b'0', b'1', b'R', b'S', b'U', b'Y', b'-', 0x80, 0xff];
        let mut frame = Vec::new();
        for len in 0..=13usize {
            for start in 0..alphabet.len() {
                frame.clear();
                frame.extend((0..len).map(|i| alphabet[(start + i * 7) % alphabet.len()]));
                let _ = Command::decode(&frame);
                let _ = Answer::decode(&frame);
                let _ = Hello::decode(&frame);
                let _ = MapsReply::decode(&frame);
                let _ = crate::supervisor::LaunchReply::decode(&frame);
                let _ = crate::supervisor::ControlRequest::decode(&frame);
                let _ = crate::supervisor::ControlReply::decode(&frame);
                let _ = crate::supervisor::SupervisorState::decode(&frame);
            }
        }
    }

    #[test]
    fn hellos_and_map_replies_round_trip() {
        for h in [
            Hello::Userns,
            Hello::Root(0),
            Hello::Root(1),
            Hello::Unconfined,
        ] {
            assert_eq!(Hello::decode(&h.encode()).unwrap(), h);
        }
        assert_eq!(Hello::Root(38).encode(), b"R38");
        assert_eq!(Hello::Userns.confinement(), crate::Confinement::Userns);
        for r in [MapsReply::Written, MapsReply::Failed] {
            assert_eq!(MapsReply::decode(&r.encode()).unwrap(), r);
        }
        let e = |b: &[u8]| Hello::decode(b).unwrap_err().to_string();
        assert_eq!(e(b""), "malformed keeper hello: empty");
        assert_eq!(e(b"Rx"), "malformed keeper hello: errno \"x\"");
        assert_eq!(e(b"R-1"), "malformed keeper hello: errno \"-1\"");
        assert_eq!(e(b"Ux"), "malformed keeper hello: \"Ux\"");
        assert!(MapsReply::decode(b"11").is_err());
        assert!(MapsReply::decode(b"").is_err());
    }
}
