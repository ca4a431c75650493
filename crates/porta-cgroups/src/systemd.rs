//! The systemd cgroup driver (`--systemd-cgroup`): systemd makes the container group as a
//! transient unit and removes it; Porta fills it (leaves, limits, freezer) as on cgroupfs.
//!
//! * The container group is a transient scope `<prefix>-<name>.scope` in the config's slice
//!   (`Delegate=yes`, so the subtree below it is Porta's), or a transient slice when the name
//!   ends in `.slice`, as with runc.
//! * A scope cannot start empty. Its first process is a *holder*: a child of `porta create`
//!   that asks systemd for the unit with itself as the unit's process, then waits. Porta
//!   moves it into `porta/` (so the container group itself holds no process, as cgroup v2
//!   requires) and kills it once the container's processes are in: `create` itself never
//!   enters the unit.
//! * Every D-Bus conversation happens in a child process. `porta create` forks the
//!   container with a bare `clone3` and must stay single-threaded; the D-Bus library runs
//!   threads.
//! * The resource limits also go to systemd as unit properties (`MemoryMax`/`MemoryLimit`,
//!   `CPUWeight`/`CPUShares`, `CPUQuota…`, `TasksMax`, `IOWeight`/`BlockIOWeight`,
//!   `AllowedCPUs`/`AllowedMemoryNodes`), so that systemd writes the same values when it
//!   re-applies a unit's settings; Porta then writes the exact values itself.
//! * As root Porta talks to the system instance on the system bus, as runc and crun do
//!   (`$DBUS_SYSTEM_BUS_ADDRESS`, else `/run/dbus/system_bus_socket`). Rootless it talks to
//!   the user's own instance on the session bus (`$DBUS_SESSION_BUS_ADDRESS`, else
//!   `$XDG_RUNTIME_DIR/bus`); that needs cgroup v2, where systemd delegates the user's
//!   subtree, and `porta` must run inside that subtree (as Podman's conmon does), so that
//!   the container's processes may move themselves into their leaves.

use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::sys::wait::waitpid;
use nix::unistd::{ForkResult, Pid};
use oci_spec::runtime::LinuxResources;
use zbus::blocking::{Connection, MessageIterator};
use zbus::zvariant::{OwnedObjectPath, OwnedValue, Value};

use crate::error::{Error, Result};
use crate::setup::CgroupMode;
use crate::SERVER_PIDS_RESERVE;

/// Where systemd marks that it manages this host (`sd_booted`).
pub(crate) const RUNNING_MARKER: &str = "/run/systemd/system";

const DEST: &str = "org.freedesktop.systemd1";
const OBJECT: &str = "/org/freedesktop/systemd1";
const MANAGER: &str = "org.freedesktop.systemd1.Manager";
/// How long Porta waits for systemd to finish a job (start or stop of a unit).
const JOB_TIMEOUT: Duration = Duration::from_secs(60);

/// One unit property as StartTransientUnit and SetUnitProperties take it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Prop {
    /// `b`
    Bool(bool),
    /// `t`
    U64(u64),
    /// `s`
    Str(String),
    /// `as` (unit dependencies)
    Strs(Vec<String>),
    /// `ay` (CPU and memory node masks)
    Bytes(Vec<u8>),
    /// `au` (PIDs)
    U32s(Vec<u32>),
}

impl Prop {
    fn value(&self) -> Value<'_> {
        match self {
            Prop::Bool(b) => Value::from(*b),
            Prop::U64(v) => Value::from(*v),
            Prop::Str(s) => Value::from(s.as_str()),
            Prop::Strs(v) => Value::from(v.clone()),
            Prop::Bytes(b) => Value::from(b.clone()),
            Prop::U32s(v) => Value::from(v.clone()),
        }
    }
}

/// A list of unit properties.
pub(crate) type Props = Vec<(&'static str, Prop)>;

/// The properties of the container's unit: what it is, where it lives, and its limits.
pub(crate) fn unit_properties(
    unit: &str,
    slice: &str,
    id: &str,
    r: Option<&LinuxResources>,
    mode: CgroupMode,
) -> Result<Props> {
    let mut p: Props = vec![
        ("Description", Prop::Str(format!("porta container {id}"))),
        ("DefaultDependencies", Prop::Bool(false)),
        ("CollectMode", Prop::Str("inactive-or-failed".into())),
        ("MemoryAccounting", Prop::Bool(true)),
        ("CPUAccounting", Prop::Bool(true)),
        ("TasksAccounting", Prop::Bool(true)),
    ];
    if mode == CgroupMode::Unified {
        p.push(("IOAccounting", Prop::Bool(true)));
    } else {
        p.push(("BlockIOAccounting", Prop::Bool(true)));
    }
    if is_slice(unit) {
        p.push(("Wants", Prop::Strs(vec![slice.to_string()])));
    } else {
        p.push(("Slice", Prop::Str(slice.to_string())));
        p.push(("Delegate", Prop::Bool(true)));
    }
    if let Some(r) = r {
        p.extend(resource_properties(r, mode)?);
    }
    Ok(p)
}

/// Whether the unit is a slice (the `slice:prefix:name.slice` form).
pub(crate) fn is_slice(unit: &str) -> bool {
    unit.ends_with(".slice")
}

/// The limits of `r` as unit properties, for a host of layout `mode`.
pub(crate) fn resource_properties(r: &LinuxResources, mode: CgroupMode) -> Result<Props> {
    let v2 = mode == CgroupMode::Unified;
    let mut p: Props = Vec::new();
    if let Some(m) = r.memory() {
        if let Some(limit) = m.limit() {
            let name = if v2 { "MemoryMax" } else { "MemoryLimit" };
            p.push((name, Prop::U64(limit_or_infinity(limit))));
        }
        if v2 {
            if let Some(res) = m.reservation().filter(|v| *v > 0) {
                p.push(("MemoryLow", Prop::U64(res as u64)));
            }
            // OCI's swap is memory + swap; systemd's MemorySwapMax is the swap alone.
            match (m.swap(), m.limit()) {
                (Some(-1), _) => p.push(("MemorySwapMax", Prop::U64(u64::MAX))),
                (Some(s), Some(l)) if s > 0 && l > 0 && s >= l => {
                    p.push(("MemorySwapMax", Prop::U64((s - l) as u64)))
                }
                _ => {}
            }
        }
    }
    if let Some(c) = r.cpu() {
        if let Some(shares) = c.shares().filter(|s| *s > 0) {
            if v2 {
                p.push(("CPUWeight", Prop::U64(shares_to_weight(shares))));
            } else {
                p.push(("CPUShares", Prop::U64(shares)));
            }
        }
        let period = c.period().filter(|p| *p > 0);
        if let Some(period) = period {
            p.push(("CPUQuotaPeriodUSec", Prop::U64(period)));
        }
        if let Some(quota) = c.quota().filter(|q| *q != 0) {
            let per_sec = if quota < 0 {
                u64::MAX
            } else {
                quota_per_sec(quota as u64, period.unwrap_or(100_000))
            };
            p.push(("CPUQuotaPerSecUSec", Prop::U64(per_sec)));
        }
        if v2 {
            if let Some(cpus) = c.cpus().as_deref().filter(|s| !s.is_empty()) {
                p.push(("AllowedCPUs", Prop::Bytes(list_to_mask(cpus, "cpus")?)));
            }
            if let Some(mems) = c.mems().as_deref().filter(|s| !s.is_empty()) {
                p.push((
                    "AllowedMemoryNodes",
                    Prop::Bytes(list_to_mask(mems, "mems")?),
                ));
            }
        }
    }
    if let Some(pids) = r.pids() {
        let limit = pids.limit();
        let v = if limit > 0 {
            (limit + SERVER_PIDS_RESERVE) as u64
        } else {
            u64::MAX
        };
        p.push(("TasksMax", Prop::U64(v)));
    }
    if let Some(w) = r
        .block_io()
        .as_ref()
        .and_then(|b| b.weight())
        .filter(|w| *w > 0)
    {
        if v2 {
            let w = 1 + (u64::from(w).saturating_sub(10) * 9999) / 990;
            p.push(("IOWeight", Prop::U64(w.clamp(1, 10_000))));
        } else {
            p.push(("BlockIOWeight", Prop::U64(u64::from(w))));
        }
    }
    Ok(p)
}

fn limit_or_infinity(v: i64) -> u64 {
    if v < 0 {
        u64::MAX
    } else {
        v as u64
    }
}

/// cgroup v1 cpu.shares → v2 cpu.weight (the conversion runc, crun and the kernel docs use).
fn shares_to_weight(shares: u64) -> u64 {
    let shares = shares.clamp(2, 262_144);
    1 + ((shares - 2) * 9999) / 262_142
}

/// A quota per period as systemd's quota per second, rounded up to the 10 ms steps systemd
/// keeps (as runc does), so that systemd never allows less than the config.
fn quota_per_sec(quota: u64, period: u64) -> u64 {
    let per_sec = quota.saturating_mul(1_000_000) / period.max(1);
    per_sec.div_ceil(10_000) * 10_000
}

/// `0-2,4` → a bit mask, one bit per CPU (or memory node), as systemd's `AllowedCPUs` wants.
pub(crate) fn list_to_mask(list: &str, field: &str) -> Result<Vec<u8>> {
    let bad = |why: &str| Error::InvalidValue {
        field: format!("linux.resources.cpu.{field}"),
        value: list.to_string(),
        reason: why.to_string(),
    };
    let mut mask: Vec<u8> = Vec::new();
    for part in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (a, b) = match part.split_once('-') {
            Some((a, b)) => (a, b),
            None => (part, part),
        };
        let a: usize = a
            .trim()
            .parse()
            .map_err(|_| bad("not a list of numbers and ranges"))?;
        let b: usize = b
            .trim()
            .parse()
            .map_err(|_| bad("not a list of numbers and ranges"))?;
        if a > b || b >= 1 << 16 {
            return Err(bad("a range is reversed or too large"));
        }
        for bit in a..=b {
            if mask.len() <= bit / 8 {
                mask.resize(bit / 8 + 1, 0);
            }
            mask[bit / 8] |= 1 << (bit % 8);
        }
    }
    Ok(mask)
}

/// The process holding the container's scope until the container's processes are in it:
/// killed and reaped when dropped.
#[derive(Debug)]
pub(crate) struct Holder {
    pid: Pid,
}

impl Holder {
    /// Its pid.
    pub(crate) fn pid(&self) -> i32 {
        self.pid.as_raw()
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = kill(self.pid, Signal::SIGKILL);
        let _ = waitpid(self.pid, None);
    }
}

/// Starts the transient unit `unit` with `props` and returns its cgroup path (systemd's
/// `ControlGroup`, from the hierarchy's root) and, for a scope, the holder in it.
pub(crate) fn start_unit(
    manager: Manager,
    unit: &str,
    props: Props,
) -> Result<(String, Option<Holder>)> {
    let scope = !is_slice(unit);
    let iface = if scope {
        "org.freedesktop.systemd1.Scope"
    } else {
        "org.freedesktop.systemd1.Slice"
    };
    let (out, child) = in_child(scope, |pid| {
        let mut props = props;
        if scope {
            props.push(("PIDs", Prop::U32s(vec![pid as u32])));
        }
        let conn = connect(manager)?;
        let job = run_job(&conn, unit, || {
            let list: Vec<(&str, Value<'_>)> = props.iter().map(|(k, v)| (*k, v.value())).collect();
            let aux: Vec<(&str, Vec<(&str, Value<'_>)>)> = Vec::new();
            call(&conn, "StartTransientUnit", &(unit, "replace", list, aux))
        })?;
        if job != "done" {
            return Err(format!(
                "systemd's job to start it ended with result {job:?} (see the journal: \
                 journalctl -u {unit})"
            ));
        }
        let path: OwnedObjectPath = call(&conn, "GetUnit", &(unit,))?;
        let cg: OwnedValue = conn
            .call_method(
                Some(DEST),
                path.as_str(),
                Some("org.freedesktop.DBus.Properties"),
                "Get",
                &(iface, "ControlGroup"),
            )
            .and_then(|m| m.body().deserialize::<OwnedValue>())
            .map_err(|e| format!("reading its ControlGroup: {e}"))?;
        String::try_from(cg).map_err(|e| format!("its ControlGroup is not a string: {e}"))
    })
    .map_err(|msg| Error::Systemd {
        unit: unit.to_string(),
        action: "start",
        msg,
    })?;
    Ok((out, child))
}

/// Stops the unit (its processes are gone by then) and forgets it if it failed. A unit
/// systemd no longer knows is not an error.
pub(crate) fn stop_unit(manager: Manager, unit: &str) -> Result<()> {
    in_child(false, |_| {
        let conn = connect(manager)?;
        let r = run_job(&conn, unit, || call(&conn, "StopUnit", &(unit, "replace")));
        let _: std::result::Result<(), String> = call(&conn, "ResetFailedUnit", &(unit,));
        match r {
            Ok(_) => Ok(String::new()),
            Err(e) if e.contains("NoSuchUnit") || e.contains("not loaded") => Ok(String::new()),
            Err(e) => Err(e),
        }
    })
    .map(|_| ())
    .map_err(|msg| Error::Systemd {
        unit: unit.to_string(),
        action: "stop",
        msg,
    })
}

/// Changes the unit's properties at runtime (`porta update`).
pub(crate) fn set_properties(manager: Manager, unit: &str, props: Props) -> Result<()> {
    if props.is_empty() {
        return Ok(());
    }
    in_child(false, |_| {
        let conn = connect(manager)?;
        let list: Vec<(&str, Value<'_>)> = props.iter().map(|(k, v)| (*k, v.value())).collect();
        call::<_, ()>(&conn, "SetUnitProperties", &(unit, true, list))?;
        Ok(String::new())
    })
    .map(|_| ())
    .map_err(|msg| Error::Systemd {
        unit: unit.to_string(),
        action: "update",
        msg,
    })
}

/// Which systemd instance owns the container's unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Manager {
    /// The system instance, on the system bus (root).
    System,
    /// The user's own instance, on the user's session bus (rootless).
    User,
}

impl Manager {
    /// The instance a runtime talks to: the user's when rootless.
    pub(crate) fn of(rootless: bool) -> Manager {
        if rootless {
            Manager::User
        } else {
            Manager::System
        }
    }
}

fn connect(manager: Manager) -> std::result::Result<Connection, String> {
    let conn = match manager {
        Manager::System => Connection::system().map_err(|e| {
            format!(
                "cannot connect to the system bus ({}): {e}",
                std::env::var("DBUS_SYSTEM_BUS_ADDRESS")
                    .unwrap_or_else(|_| "/run/dbus/system_bus_socket".into())
            )
        })?,
        Manager::User => Connection::session().map_err(|e| {
            format!(
                "cannot connect to the user's session bus ({}): {e}; the systemd user \
                 manager and its bus must run (loginctl enable-linger, or a login session)",
                std::env::var("DBUS_SESSION_BUS_ADDRESS").unwrap_or_else(|_| format!(
                    "$XDG_RUNTIME_DIR/bus = {}/bus",
                    std::env::var("XDG_RUNTIME_DIR").unwrap_or_default()
                ))
            )
        })?,
    };
    call::<_, ()>(&conn, "Subscribe", &())?;
    Ok(conn)
}

fn call<B, R>(conn: &Connection, method: &str, body: &B) -> std::result::Result<R, String>
where
    B: serde::Serialize + zbus::zvariant::DynamicType,
    R: for<'d> serde::Deserialize<'d> + zbus::zvariant::Type,
{
    conn.call_method(Some(DEST), OBJECT, Some(MANAGER), method, body)
        .and_then(|m| m.body().deserialize::<R>())
        .map_err(|e| format!("{method}: {e}"))
}

/// Runs a call that returns a job and waits for the job's end; returns its result
/// (`done`, `failed`, `canceled`, …).
fn run_job(
    conn: &Connection,
    unit: &str,
    start: impl FnOnce() -> std::result::Result<OwnedObjectPath, String>,
) -> std::result::Result<String, String> {
    let rule = zbus::MatchRule::builder()
        .msg_type(zbus::message::Type::Signal)
        .interface(MANAGER)
        .and_then(|b| b.member("JobRemoved"))
        .map(|b| b.build())
        .map_err(|e| format!("JobRemoved match rule: {e}"))?;
    // Listening before the call: the job may end before its reply is read.
    let signals = MessageIterator::for_match_rule(rule, conn, None)
        .map_err(|e| format!("listening for JobRemoved: {e}"))?;
    let job = start()?;
    for msg in signals {
        let msg = msg.map_err(|e| format!("waiting for the job of {unit}: {e}"))?;
        let Ok((_, path, _, result)) = msg
            .body()
            .deserialize::<(u32, OwnedObjectPath, String, String)>()
        else {
            continue;
        };
        if path == job {
            return Ok(result);
        }
    }
    Err(format!(
        "the system bus closed before the job of {unit} ended"
    ))
}

/// Runs `f` in a forked child and returns its answer. With `hold`, the child stays (paused,
/// killed with its parent) and is returned as a [`Holder`]; else it exits.
fn in_child(
    hold: bool,
    f: impl FnOnce(i32) -> std::result::Result<String, String>,
) -> std::result::Result<(String, Option<Holder>), String> {
    let (rd, wr) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))?;
    let parent = nix::unistd::getpid();
    match fork().map_err(|e| format!("fork: {e}"))? {
        ForkResult::Child => {
            drop(rd);
            child_main(hold, parent, wr, f)
        }
        ForkResult::Parent { child } => {
            drop(wr);
            // Owned from here: killed and reaped on every path but a kept holder's.
            let holder = Holder { pid: child };
            match read_answer(rd) {
                Ok(s) if hold => Ok((s, Some(holder))),
                Ok(s) => Ok((s, None)),
                Err(e) => Err(e),
            }
        }
    }
}

/// The child's side of [`in_child`]: never returns.
fn child_main(
    hold: bool,
    parent: Pid,
    wr: OwnedFd,
    f: impl FnOnce(i32) -> std::result::Result<String, String>,
) -> ! {
    let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
    if nix::unistd::getppid() != parent {
        exit_now(1);
    }
    let me = nix::unistd::getpid().as_raw();
    let line = match f(me) {
        Ok(s) => format!("ok:{s}"),
        Err(e) => format!("err:{e}"),
    };
    let mut file = std::fs::File::from(wr);
    let _ = file.write_all(line.as_bytes());
    drop(file);
    if hold {
        loop {
            nix::unistd::pause();
        }
    }
    exit_now(0)
}

/// Reads the child's answer, waiting at most [`JOB_TIMEOUT`].
fn read_answer(rd: OwnedFd) -> std::result::Result<String, String> {
    let mut fds = [nix::poll::PollFd::new(
        rd.as_fd(),
        nix::poll::PollFlags::POLLIN,
    )];
    let timeout = nix::poll::PollTimeout::try_from(JOB_TIMEOUT.as_millis() as i32)
        .unwrap_or(nix::poll::PollTimeout::MAX);
    match nix::poll::poll(&mut fds, timeout) {
        Ok(0) => {
            return Err(format!(
                "systemd did not answer within {} s",
                JOB_TIMEOUT.as_secs()
            ))
        }
        Ok(_) => {}
        Err(e) => return Err(format!("waiting for the D-Bus helper: {e}")),
    }
    let mut s = String::new();
    std::fs::File::from(rd)
        .read_to_string(&mut s)
        .map_err(|e| format!("reading the D-Bus helper's answer: {e}"))?;
    if let Some(ok) = s.strip_prefix("ok:") {
        Ok(ok.to_string())
    } else if let Some(e) = s.strip_prefix("err:") {
        Err(e.to_string())
    } else {
        Err("the D-Bus helper died without an answer".into())
    }
}

/// _exit(2): the forked child ends without running the parent's exit handlers.
fn exit_now(code: i32) -> ! {
    // SAFETY: _exit only ends the process; nothing of Rust's state is touched.
    unsafe { libc::_exit(code) }
}

/// fork(2).
fn fork() -> nix::Result<ForkResult> {
    // SAFETY: Porta's commands are single-threaded when they ask systemd for something
    // (that is why the conversation happens in a child); the child only runs the D-Bus
    // conversation and then exits or pauses.
    unsafe { nix::unistd::fork() }
}

/// Whether systemd manages this host.
pub(crate) fn running() -> bool {
    Path::new(RUNNING_MARKER).exists()
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::{
        LinuxCpuBuilder, LinuxMemoryBuilder, LinuxPidsBuilder, LinuxResourcesBuilder,
    };

    fn resources() -> LinuxResources {
        LinuxResourcesBuilder::default()
            .memory(
                LinuxMemoryBuilder::default()
                    .limit(64i64 << 20)
                    .swap(96i64 << 20)
                    .build()
                    .unwrap(),
            )
            .cpu(
                LinuxCpuBuilder::default()
                    .shares(1024u64)
                    .quota(50_000i64)
                    .period(100_000u64)
                    .cpus("0-1,3")
                    .build()
                    .unwrap(),
            )
            .pids(LinuxPidsBuilder::default().limit(10).build().unwrap())
            .build()
            .unwrap()
    }

    fn get<'a>(p: &'a Props, k: &str) -> Option<&'a Prop> {
        p.iter().find(|(n, _)| *n == k).map(|(_, v)| v)
    }

    #[test]
    fn v1_properties_use_the_legacy_names() {
        let p = resource_properties(&resources(), CgroupMode::Hybrid).unwrap();
        assert_eq!(get(&p, "MemoryLimit"), Some(&Prop::U64(64 << 20)));
        assert_eq!(get(&p, "CPUShares"), Some(&Prop::U64(1024)));
        assert_eq!(get(&p, "CPUQuotaPerSecUSec"), Some(&Prop::U64(500_000)));
        assert_eq!(
            get(&p, "TasksMax"),
            Some(&Prop::U64(10 + SERVER_PIDS_RESERVE as u64))
        );
        assert!(get(&p, "MemoryMax").is_none() && get(&p, "AllowedCPUs").is_none());
    }

    #[test]
    fn v2_properties_convert_shares_swap_and_cpus() {
        let p = resource_properties(&resources(), CgroupMode::Unified).unwrap();
        assert_eq!(get(&p, "MemoryMax"), Some(&Prop::U64(64 << 20)));
        assert_eq!(get(&p, "MemorySwapMax"), Some(&Prop::U64(32 << 20)));
        assert_eq!(get(&p, "CPUWeight"), Some(&Prop::U64(39)));
        assert_eq!(get(&p, "AllowedCPUs"), Some(&Prop::Bytes(vec![0b1011])));
        assert!(get(&p, "CPUShares").is_none());
    }

    #[test]
    fn scope_and_slice_units_differ() {
        let s = unit_properties(
            "porta-x.scope",
            "system.slice",
            "x",
            None,
            CgroupMode::Unified,
        )
        .unwrap();
        assert_eq!(get(&s, "Slice"), Some(&Prop::Str("system.slice".into())));
        assert_eq!(get(&s, "Delegate"), Some(&Prop::Bool(true)));
        let s = unit_properties("a-x.slice", "a.slice", "x", None, CgroupMode::Unified).unwrap();
        assert!(get(&s, "Slice").is_none() && get(&s, "Delegate").is_none());
        assert_eq!(get(&s, "Wants"), Some(&Prop::Strs(vec!["a.slice".into()])));
    }

    #[test]
    fn quota_rounds_up_to_ten_ms() {
        assert_eq!(quota_per_sec(12_345, 100_000), 130_000);
        assert_eq!(quota_per_sec(100_000, 100_000), 1_000_000);
    }

    #[test]
    fn helper_child_answers_and_a_holder_stays_until_dropped() {
        let (pid, h) = in_child(false, |pid| Ok(pid.to_string())).unwrap();
        assert!(h.is_none());
        assert!(pid.parse::<i32>().unwrap() > 0);
        let e = in_child(false, |_| Err("no bus".into())).unwrap_err();
        assert_eq!(e, "no bus");
        let (_, h) = in_child(true, |_| Ok(String::new())).unwrap();
        let h = h.unwrap();
        let pid = Pid::from_raw(h.pid());
        assert!(kill(pid, None).is_ok(), "the holder waits");
        drop(h);
        assert!(kill(pid, None).is_err(), "dropped: killed and reaped");
        // A helper that dies without answering is an error, not a hang.
        let e = in_child(false, |_| exit_now(3)).unwrap_err();
        assert!(e.contains("without an answer"), "{e}");
    }

    #[test]
    fn masks_from_lists() {
        assert_eq!(list_to_mask("0", "cpus").unwrap(), vec![1]);
        assert_eq!(list_to_mask("8-9", "cpus").unwrap(), vec![0, 3]);
        assert!(list_to_mask("3-1", "cpus").is_err());
        assert!(list_to_mask("x", "mems").is_err());
    }
}
