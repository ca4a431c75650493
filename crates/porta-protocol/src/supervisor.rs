//! The supervisor (`porta supervisor`): its arguments, its launch reply, the requests and
//! replies of its control socket, and its record of the servers (`servers.json`, which is
//! also its answer to a status request).

use std::ffi::OsString;
use std::os::fd::RawFd;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::argv::{push, Options};
use crate::{Confinement, Error};

/// The subcommand word that starts a supervisor: `porta supervisor …`.
pub const SUBCOMMAND: &str = "supervisor";
/// How often a server may fail in a row before the supervisor gives up, when nothing
/// else is asked.
pub const DEFAULT_MAX_FAILURES: u32 = 5;

/// The arguments of `porta supervisor`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SupervisorArgs {
    /// Container id.
    pub id: String,
    /// The container's state directory (its control socket and records live there).
    pub state_dir: PathBuf,
    /// The backing directory to serve.
    pub rootfs: PathBuf,
    /// The socket on which it sends its [`LaunchReply`] (inherited).
    pub sock_fd: RawFd,
    /// Use FUSE passthrough for regular-file data.
    pub passthrough: bool,
    /// Watch the backing tree for changes made from the host (`--host-changes off`: no).
    pub host_changes: bool,
    /// cgroup.procs files the servers join.
    pub cgroup_procs: Vec<PathBuf>,
    /// The container's process, when known at start.
    pub container_pid: Option<i32>,
    /// The container's user namespace (inherited; rootless).
    pub userns_fd: Option<RawFd>,
    /// How long a request may make no progress before the server counts as deadlocked
    /// (whole milliseconds on the command line); `None`: the supervisor's default.
    pub hang_timeout: Option<Duration>,
    /// How often a server may fail in a row before the supervisor gives up.
    pub max_failures: u32,
    /// Request threads per server.
    pub threads: usize,
    /// How the servers take requests from the kernel.
    pub transport: crate::keeper::Transport,
    /// Stay in the foreground (no fork to daemonize; tests).
    pub foreground: bool,
    /// The container's API socket, bound and listening (inherited; annotation
    /// `run.porta.api=on`): the supervisor holds it and keeps an API server answering it.
    pub api_fd: Option<RawFd>,
    /// Started before the container's cgroup exists: the cgroup.procs files come in a
    /// [`LaunchGo`] on the launch socket, which the supervisor awaits before it starts
    /// any process of the file server (`--await-cgroups`).
    pub await_cgroups: bool,
}

impl SupervisorArgs {
    /// The arguments with what is required, everything else as by default.
    pub fn new(id: String, state_dir: PathBuf, rootfs: PathBuf, sock_fd: RawFd) -> Self {
        SupervisorArgs {
            id,
            state_dir,
            rootfs,
            sock_fd,
            passthrough: false,
            host_changes: true,
            cgroup_procs: Vec::new(),
            container_pid: None,
            userns_fd: None,
            hang_timeout: None,
            max_failures: DEFAULT_MAX_FAILURES,
            threads: crate::keeper::DEFAULT_THREADS,
            transport: crate::keeper::Transport::Dev,
            foreground: false,
            api_fd: None,
            await_cgroups: false,
        }
    }

    /// The argument list after [`SUBCOMMAND`]: `--id ID --state-dir DIR --rootfs DIR
    /// --sock-fd N [--passthrough] [--host-changes off] [--cgroup-procs FILE]…
    /// [--container-pid PID] [--userns-fd N] [--hang-timeout-ms MS] [--max-failures N]
    /// [--threads N] [--transport dev|auto|uring] [--foreground] [--api-fd N]
    /// [--await-cgroups]`; options at their default are left out.
    pub fn to_argv(&self) -> Vec<OsString> {
        let mut v = Vec::new();
        push(&mut v, "--id", self.id.clone());
        push(&mut v, "--state-dir", self.state_dir.clone());
        push(&mut v, "--rootfs", self.rootfs.clone());
        push(&mut v, "--sock-fd", self.sock_fd.to_string());
        if self.passthrough {
            v.push("--passthrough".into());
        }
        if !self.host_changes {
            push(&mut v, "--host-changes", "off");
        }
        for p in &self.cgroup_procs {
            push(&mut v, "--cgroup-procs", p.clone());
        }
        if let Some(pid) = self.container_pid {
            push(&mut v, "--container-pid", pid.to_string());
        }
        if let Some(fd) = self.userns_fd {
            push(&mut v, "--userns-fd", fd.to_string());
        }
        if let Some(t) = self.hang_timeout {
            push(&mut v, "--hang-timeout-ms", t.as_millis().to_string());
        }
        if self.max_failures != DEFAULT_MAX_FAILURES {
            push(&mut v, "--max-failures", self.max_failures.to_string());
        }
        if self.threads != crate::keeper::DEFAULT_THREADS {
            push(&mut v, "--threads", self.threads.to_string());
        }
        if self.transport != crate::keeper::Transport::Dev {
            push(&mut v, "--transport", self.transport.as_str());
        }
        if self.foreground {
            v.push("--foreground".into());
        }
        if let Some(fd) = self.api_fd {
            push(&mut v, "--api-fd", fd.to_string());
        }
        if self.await_cgroups {
            v.push("--await-cgroups".into());
        }
        v
    }

    /// Reads the argument list after [`SUBCOMMAND`] (as [`Self::to_argv`] makes it).
    pub fn from_argv(args: &[OsString]) -> Result<SupervisorArgs, Error> {
        let mut a = SupervisorArgs::new(String::new(), PathBuf::new(), PathBuf::new(), -1);
        let mut o = Options::new(args);
        while let Some(name) = o.next_name() {
            let name = name?;
            match name {
                "--id" => a.id = o.text(name)?.into(),
                "--state-dir" => a.state_dir = o.value(name)?.into(),
                "--rootfs" => a.rootfs = o.value(name)?.into(),
                "--sock-fd" => a.sock_fd = o.fd(name)?,
                "--passthrough" => a.passthrough = true,
                "--transport" => {
                    let v = o.text(name)?;
                    a.transport =
                        crate::keeper::Transport::parse(v).ok_or_else(|| Error::BadValue {
                            arg: name.into(),
                            value: v.into(),
                            want: "dev, auto or uring",
                        })?;
                }
                "--cgroup-procs" => a.cgroup_procs.push(o.value(name)?.into()),
                "--container-pid" => {
                    let pid: i32 = o.parsed(name, "a process id")?;
                    if pid <= 0 {
                        return Err(Error::BadValue {
                            arg: name.into(),
                            value: pid.to_string(),
                            want: "a process id",
                        });
                    }
                    a.container_pid = Some(pid);
                }
                "--userns-fd" => a.userns_fd = Some(o.fd(name)?),
                "--hang-timeout-ms" => {
                    a.hang_timeout = Some(Duration::from_millis(
                        o.parsed(name, "a number of milliseconds")?,
                    ))
                }
                "--max-failures" => a.max_failures = o.parsed(name, "a number")?,
                "--threads" => {
                    a.threads = o.parsed(name, "a number of threads")?;
                    if a.threads == 0 {
                        return Err(Error::BadValue {
                            arg: name.into(),
                            value: "0".into(),
                            want: "a number of threads",
                        });
                    }
                }
                "--foreground" => a.foreground = true,
                "--api-fd" => a.api_fd = Some(o.fd(name)?),
                "--await-cgroups" => a.await_cgroups = true,
                "--host-changes" => {
                    a.host_changes = match o.text(name)? {
                        "on" => true,
                        "off" => false,
                        v => {
                            return Err(Error::BadValue {
                                arg: name.into(),
                                value: v.into(),
                                want: "on or off",
                            })
                        }
                    }
                }
                other => return Err(Error::UnknownArgument(other.into())),
            }
        }
        if a.id.is_empty() {
            return Err(Error::Missing("--id"));
        }
        if a.state_dir.as_os_str().is_empty() {
            return Err(Error::Missing("--state-dir"));
        }
        if a.rootfs.as_os_str().is_empty() {
            return Err(Error::Missing("--rootfs"));
        }
        if a.sock_fd < 0 {
            return Err(Error::Missing("--sock-fd"));
        }
        if a.await_cgroups && !a.cgroup_procs.is_empty() {
            return Err(Error::BadValue {
                arg: "--cgroup-procs".into(),
                value: a.cgroup_procs[0].display().to_string(),
                want: "left out with --await-cgroups (the files come on the launch socket)",
            });
        }
        Ok(a)
    }
}

/// The supervisor's one message on its launch socket (with the detached mount's
/// descriptor when it is ready).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LaunchReply {
    /// The mount is served; the supervisor daemon has this pid.
    Ready {
        /// The supervisor daemon's pid.
        pid: i32,
    },
    /// It failed to start, for this reason.
    Failed(String),
}

impl LaunchReply {
    /// Its frame: `ok PID` or `error REASON`.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            LaunchReply::Ready { pid } => format!("ok {pid}").into_bytes(),
            LaunchReply::Failed(why) => format!("error {why}").into_bytes(),
        }
    }

    /// Reads a frame.
    pub fn decode(b: &[u8]) -> Result<LaunchReply, Error> {
        const WHAT: &str = "launch reply";
        let text = std::str::from_utf8(b).map_err(|_| {
            Error::malformed(WHAT, format!("not UTF-8: {:?}", String::from_utf8_lossy(b)))
        })?;
        if let Some(pid) = text.strip_prefix("ok ") {
            return pid
                .trim()
                .parse::<i32>()
                .ok()
                .filter(|p| *p > 0)
                .map(|pid| LaunchReply::Ready { pid })
                .ok_or_else(|| Error::malformed(WHAT, format!("bad pid in {text:?}")));
        }
        if let Some(why) = text.strip_prefix("error ") {
            return Ok(LaunchReply::Failed(why.to_string()));
        }
        Err(Error::malformed(
            WHAT,
            if text.is_empty() {
                "empty".to_string()
            } else {
                format!("{text:?}")
            },
        ))
    }
}

/// The launcher's go to a supervisor started with `--await-cgroups`: the container's
/// cgroup now exists, and these are the cgroup.procs files of its servers' leaf (none:
/// no cgroup to join). Framed as a 4-byte little-endian length and that many bytes of
/// `go`, each path after a NUL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchGo {
    /// The cgroup.procs files the servers join.
    pub cgroup_procs: Vec<PathBuf>,
}

impl LaunchGo {
    /// The longest frame body a supervisor reads.
    pub const MAX_LEN: usize = 64 * 1024;

    /// Its frame, length first.
    pub fn encode(&self) -> Vec<u8> {
        use std::os::unix::ffi::OsStrExt;
        let mut body = b"go".to_vec();
        for p in &self.cgroup_procs {
            body.push(0);
            body.extend_from_slice(p.as_os_str().as_bytes());
        }
        let mut frame = (body.len() as u32).to_le_bytes().to_vec();
        frame.extend_from_slice(&body);
        frame
    }

    /// Reads a frame's body (what follows the length).
    pub fn decode(body: &[u8]) -> Result<LaunchGo, Error> {
        use std::os::unix::ffi::OsStrExt;
        const WHAT: &str = "launch go";
        let mut parts = body.split(|b| *b == 0);
        if parts.next() != Some(b"go".as_slice()) {
            return Err(Error::malformed(
                WHAT,
                format!(
                    "does not start with \"go\": {:?}",
                    String::from_utf8_lossy(body)
                ),
            ));
        }
        let mut cgroup_procs = Vec::new();
        for p in parts {
            if p.first() != Some(&b'/') {
                return Err(Error::malformed(
                    WHAT,
                    format!("{:?} is not an absolute path", String::from_utf8_lossy(p)),
                ));
            }
            cgroup_procs.push(PathBuf::from(std::ffi::OsStr::from_bytes(p)));
        }
        Ok(LaunchGo { cgroup_procs })
    }
}

/// A request on the supervisor's control socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlRequest {
    /// Stop the servers and exit.
    Stop,
    /// Watch the container's process (stop when it is gone).
    Watch(i32),
    /// Answer the record of the servers ([`SupervisorState`] as JSON).
    Status,
    /// Serve a grant into this container (`porta share`): the source's O_PATH descriptor
    /// is attached; the record's target is in this container.
    Grant(Box<crate::grants::Grant>),
    /// Revoke the grant with this id (`porta unshare`).
    Revoke(String),
}

impl ControlRequest {
    /// The longest request frame.
    pub const MAX_LEN: usize = 8192;

    /// Its frame: a line.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            ControlRequest::Stop => b"stop\n".to_vec(),
            ControlRequest::Watch(pid) => format!("watch {pid}\n").into_bytes(),
            ControlRequest::Status => b"status\n".to_vec(),
            ControlRequest::Grant(g) => {
                let mut v = b"grant ".to_vec();
                v.extend_from_slice(&serde_json::to_vec(g).unwrap_or_default());
                v.push(b'\n');
                v
            }
            ControlRequest::Revoke(id) => format!("revoke {id}\n").into_bytes(),
        }
    }

    /// Reads a frame (surrounding white space ignored).
    pub fn decode(b: &[u8]) -> Result<ControlRequest, Error> {
        const WHAT: &str = "control request";
        let text = String::from_utf8_lossy(b);
        let text = text.trim();
        if let Some(json) = text.strip_prefix("grant ") {
            let g: crate::grants::Grant = serde_json::from_str(json)
                .map_err(|e| Error::malformed(WHAT, format!("grant: {e}")))?;
            if !crate::grants::valid_id(&g.id) {
                return Err(Error::malformed(WHAT, format!("bad grant id {:?}", g.id)));
            }
            return Ok(ControlRequest::Grant(Box::new(g)));
        }
        if let Some(id) = text.strip_prefix("revoke ") {
            let id = id.trim();
            if !crate::grants::valid_id(id) {
                return Err(Error::malformed(WHAT, format!("bad grant id {id:?}")));
            }
            return Ok(ControlRequest::Revoke(id.to_owned()));
        }
        match text {
            "stop" => Ok(ControlRequest::Stop),
            "status" => Ok(ControlRequest::Status),
            _ => match text.strip_prefix("watch ") {
                Some(pid) => pid
                    .trim()
                    .parse::<i32>()
                    .ok()
                    .filter(|p| *p > 0)
                    .map(ControlRequest::Watch)
                    .ok_or_else(|| Error::malformed(WHAT, format!("bad pid {:?}", pid.trim()))),
                None => Err(Error::malformed(WHAT, format!("unknown request {text:?}"))),
            },
        }
    }
}

/// The supervisor's reply to a [`ControlRequest`] (but `Status`, answered with the JSON
/// of [`SupervisorState`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlReply {
    /// Done.
    Ok,
    /// `Watch` named no live process.
    NoSuchProcess,
    /// The request was not understood.
    UnknownRequest,
    /// The request was refused or failed, for this reason (one line).
    Failed(String),
}

impl ControlReply {
    /// Its frame: a line.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            ControlReply::Ok => b"ok\n".to_vec(),
            ControlReply::NoSuchProcess => b"error no such process\n".to_vec(),
            ControlReply::UnknownRequest => b"error unknown command\n".to_vec(),
            ControlReply::Failed(why) => {
                format!("failed {}\n", why.replace('\n', " ")).into_bytes()
            }
        }
    }

    /// Reads a frame (surrounding white space ignored).
    pub fn decode(b: &[u8]) -> Result<ControlReply, Error> {
        match String::from_utf8_lossy(b).trim() {
            "ok" => Ok(ControlReply::Ok),
            "error no such process" => Ok(ControlReply::NoSuchProcess),
            "error unknown command" => Ok(ControlReply::UnknownRequest),
            "" => Err(Error::malformed("control reply", "empty")),
            other => match other.strip_prefix("failed ") {
                Some(why) => Ok(ControlReply::Failed(why.to_owned())),
                None => Err(Error::malformed("control reply", format!("{other:?}"))),
            },
        }
    }
}

/// One server of a container, as `porta state` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerStatus {
    /// "fs" for the file server.
    pub name: String,
    /// Current pid (0 when not running).
    pub pid: i32,
    /// Number of times it was replaced.
    pub restarts: u64,
    /// "running", "restarting", "stopped" or "failed".
    #[serde(default)]
    pub state: String,
    /// Why it last had to be replaced, or why the supervisor gave up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The confinement it runs under (see the supervisor log for why).
    #[serde(default, skip_serializing_if = "Confinement::is_unknown")]
    pub confinement: Confinement,
    /// Its start time (field 22 of /proc/PID/stat): tells it from a later process that
    /// got the same pid.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub start_time: u64,
    /// How it takes requests from the kernel: "uring" (FUSE over io_uring) or "dev"
    /// (/dev/fuse); empty until the connection is initialized.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub transport: String,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

/// The supervisor's record (`servers.json`), also its answer to a status request.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SupervisorState {
    /// The active supervisor's pid.
    pub supervisor_pid: i32,
    /// Its start time (tells it from a later process with the same pid).
    #[serde(default)]
    pub supervisor_start: u64,
    /// The successor's pid (0: none): it takes over when the active one dies.
    #[serde(default)]
    pub successor_pid: i32,
    /// The successor's start time.
    #[serde(default)]
    pub successor_start: u64,
    /// The container's process as the supervisor watches it (0: not yet).
    #[serde(default)]
    pub container_pid: i32,
    /// Its start time.
    #[serde(default)]
    pub container_start: u64,
    /// How often a successor took over from a dead supervisor.
    #[serde(default)]
    pub takeovers: u64,
    /// The keeper's pid (0: none).
    #[serde(default)]
    pub keeper_pid: i32,
    /// The keeper's twin, which takes its place when it dies (0: none).
    #[serde(default)]
    pub twin_pid: i32,
    /// How often a twin took the place of a dead keeper.
    #[serde(default)]
    pub keeper_takeovers: u64,
    /// The standby server's pid (0: none).
    #[serde(default)]
    pub standby_pid: i32,
    /// Its servers.
    pub servers: Vec<ServerStatus>,
    /// The translators running on nodes of the container's tree.
    #[serde(default)]
    pub translators: Vec<TranslatorStatus>,
}

/// A translator as `porta state` and `porta translator show` report it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TranslatorStatus {
    /// Its pid (host).
    pub pid: i32,
    /// The translated node's path in the container.
    pub path: String,
    /// Its argument vector as recorded.
    pub args: Vec<String>,
    /// The container's uid and gid it runs as.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Started from the node's passive record (else set active).
    pub passive: bool,
}

impl SupervisorState {
    /// Its JSON (the body of `servers.json` and of a status reply).
    pub fn encode(&self) -> Vec<u8> {
        // Plain data with string keys: serializing it cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Reads its JSON.
    pub fn decode(b: &[u8]) -> Result<SupervisorState, Error> {
        serde_json::from_slice(b).map_err(|e| Error::malformed("supervisor record", e.to_string()))
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
        let mut a = SupervisorArgs::new("c1".into(), "/run/porta/c1".into(), "/b/rootfs".into(), 3);
        assert_eq!(SupervisorArgs::from_argv(&a.to_argv()).unwrap(), a);
        a.passthrough = true;
        a.host_changes = false;
        a.cgroup_procs = vec![
            "/sys/fs/cgroup/a/cgroup.procs".into(),
            "/x/cgroup.procs".into(),
        ];
        a.container_pid = Some(42);
        a.userns_fd = Some(4);
        a.hang_timeout = Some(Duration::from_millis(1500));
        a.max_failures = 2;
        a.threads = 8;
        a.foreground = true;
        a.api_fd = Some(5);
        assert_eq!(SupervisorArgs::from_argv(&a.to_argv()).unwrap(), a);
    }

    #[test]
    fn await_cgroups_round_trips_and_excludes_cgroup_procs() {
        let mut a = SupervisorArgs::new("c".into(), "/s".into(), "/r".into(), 3);
        a.await_cgroups = true;
        assert_eq!(SupervisorArgs::from_argv(&a.to_argv()).unwrap(), a);
        a.cgroup_procs = vec!["/p".into()];
        let e = SupervisorArgs::from_argv(&a.to_argv()).unwrap_err();
        assert!(e.to_string().contains("--await-cgroups"), "{e}");
    }

    #[test]
    fn launch_go_frames_round_trip_and_bad_ones_are_named() {
        for procs in [
            vec![],
            vec![
                PathBuf::from("/sys/fs/cgroup/cpu/a b/porta/cgroup.procs"),
                "/x\ny".into(),
            ],
        ] {
            let g = LaunchGo {
                cgroup_procs: procs,
            };
            let f = g.encode();
            let len = u32::from_le_bytes([f[0], f[1], f[2], f[3]]) as usize;
            assert_eq!(len, f.len() - 4);
            assert_eq!(LaunchGo::decode(&f[4..]).unwrap(), g);
        }
        for (bad, why) in [
            (b"".as_slice(), "does not start"),
            (b"stop".as_slice(), "does not start"),
            (
                b"go\0relative/cgroup.procs".as_slice(),
                "not an absolute path",
            ),
            (b"go\0".as_slice(), "not an absolute path"),
        ] {
            let e = LaunchGo::decode(bad).unwrap_err().to_string();
            assert!(e.contains("launch go") && e.contains(why), "{bad:?}: {e}");
        }
    }

    #[test]
    fn arguments_as_porta_create_gave_them_before() {
        let a = SupervisorArgs::from_argv(&os(&[
            "--id",
            "c",
            "--state-dir",
            "/s",
            "--rootfs",
            "/r",
            "--sock-fd",
            "3",
            "--passthrough",
            "--host-changes",
            "off",
            "--cgroup-procs",
            "/p",
            "--userns-fd",
            "4",
        ]))
        .unwrap();
        assert!(a.passthrough && !a.host_changes);
        assert_eq!(a.cgroup_procs, vec![PathBuf::from("/p")]);
        assert_eq!(a.userns_fd, Some(4));
        assert_eq!(a.hang_timeout, None);
        assert_eq!(a.max_failures, DEFAULT_MAX_FAILURES);
    }

    #[test]
    fn bad_arguments_say_what_is_wrong() {
        let base = [
            "--id",
            "c",
            "--state-dir",
            "/s",
            "--rootfs",
            "/r",
            "--sock-fd",
            "3",
        ];
        let with = |extra: &[&str]| {
            let mut v = base.to_vec();
            v.extend_from_slice(extra);
            SupervisorArgs::from_argv(&os(&v)).unwrap_err().to_string()
        };
        assert_eq!(
            with(&["--host-changes", "maybe"]),
            "--host-changes: \"maybe\" is not on or off"
        );
        assert_eq!(
            with(&["--container-pid", "0"]),
            "--container-pid: \"0\" is not a process id"
        );
        assert_eq!(
            with(&["--max-failures", "-1"]),
            "--max-failures: \"-1\" is not a number"
        );
        assert_eq!(
            with(&["--hang-timeout-ms"]),
            "--hang-timeout-ms needs a value"
        );
        assert_eq!(with(&["--frobnicate"]), "unknown argument \"--frobnicate\"");
        assert_eq!(
            SupervisorArgs::from_argv(&os(&base[..6])).unwrap_err(),
            Error::Missing("--sock-fd")
        );
        assert_eq!(
            SupervisorArgs::from_argv(&os(&base[2..])).unwrap_err(),
            Error::Missing("--id")
        );
    }

    #[test]
    fn launch_replies_round_trip() {
        for r in [
            LaunchReply::Ready { pid: 1234 },
            LaunchReply::Failed("could not open /dev/fuse: EPERM".into()),
            LaunchReply::Failed(String::new()),
        ] {
            assert_eq!(LaunchReply::decode(&r.encode()).unwrap(), r);
        }
        assert_eq!(LaunchReply::Ready { pid: 7 }.encode(), b"ok 7");
        let e = |b: &[u8]| LaunchReply::decode(b).unwrap_err().to_string();
        assert_eq!(e(b""), "malformed launch reply: empty");
        assert_eq!(e(b"ok x"), "malformed launch reply: bad pid in \"ok x\"");
        assert_eq!(e(b"ok -3"), "malformed launch reply: bad pid in \"ok -3\"");
        assert_eq!(e(b"hello"), "malformed launch reply: \"hello\"");
        assert_eq!(
            e(&[0xff, 0xfe]),
            "malformed launch reply: not UTF-8: \"\u{fffd}\u{fffd}\""
        );
    }

    #[test]
    fn control_requests_and_replies_round_trip() {
        for r in [
            ControlRequest::Stop,
            ControlRequest::Watch(99),
            ControlRequest::Status,
            ControlRequest::Revoke("g-1".into()),
            ControlRequest::Grant(Box::new(crate::grants::Grant {
                id: "g-2".into(),
                kind: crate::grants::GrantKind::Directory,
                direction: crate::grants::Direction::In,
                source: crate::grants::Endpoint {
                    container: "a".into(),
                    path: "/data".into(),
                },
                target: crate::grants::Endpoint {
                    container: "b".into(),
                    path: "/mnt/data".into(),
                },
                read_only: false,
                created: "2026-12-07T00:00:00Z".into(),
            })),
        ] {
            assert_eq!(ControlRequest::decode(&r.encode()).unwrap(), r);
        }
        assert_eq!(ControlRequest::Watch(5).encode(), b"watch 5\n");
        assert_eq!(
            ControlRequest::decode(b"stop").unwrap(),
            ControlRequest::Stop
        );
        let e = |b: &[u8]| ControlRequest::decode(b).unwrap_err().to_string();
        assert_eq!(
            e(b"watch -1\n"),
            "malformed control request: bad pid \"-1\""
        );
        assert_eq!(
            e(b"watch \n"),
            "malformed control request: unknown request \"watch\""
        );
        assert_eq!(
            e(b"reboot\n"),
            "malformed control request: unknown request \"reboot\""
        );
        assert!(e(&[0xff; 70]).starts_with("malformed control request"));
        for r in [
            ControlReply::Ok,
            ControlReply::NoSuchProcess,
            ControlReply::UnknownRequest,
            ControlReply::Failed("no such grant g-1".into()),
        ] {
            assert_eq!(ControlReply::decode(&r.encode()).unwrap(), r);
        }
        assert!(ControlReply::decode(b"").is_err());
        assert!(ControlReply::decode(b"error disk on fire\n").is_err());
    }

    #[test]
    fn the_record_keeps_its_json() {
        let st = SupervisorState {
            supervisor_pid: 10,
            servers: vec![ServerStatus {
                name: "fs".into(),
                pid: 11,
                restarts: 1,
                state: "running".into(),
                error: None,
                confinement: Confinement::Userns,
                start_time: 0,
                transport: "uring".into(),
            }],
            ..Default::default()
        };
        let json = String::from_utf8(st.encode()).unwrap();
        assert!(json.contains(r#""confinement":"userns""#), "{json}");
        assert!(!json.contains("start_time"), "{json}");
        assert!(json.contains(r#""transport":"uring""#), "{json}");
        assert_eq!(SupervisorState::decode(json.as_bytes()).unwrap(), st);
        // A record written before the keeper said its confinement.
        let old = r#"{"supervisor_pid":1,"servers":[{"name":"fs","pid":2,"restarts":0}]}"#;
        let st = SupervisorState::decode(old.as_bytes()).unwrap();
        assert_eq!(st.servers[0].confinement, Confinement::Unknown);
        assert!(!String::from_utf8(st.encode())
            .unwrap()
            .contains("confinement"));
        assert!(SupervisorState::decode(b"{")
            .unwrap_err()
            .to_string()
            .starts_with("malformed supervisor record"));
    }
}
