//! Code that runs in the processes `porta create` and `porta exec` fork: stage one joins
//! namespaces and the cgroup and forks the container's process; the container's process sets
//! itself up and execs the program.

use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::path::Path;

use oci_spec::runtime::{LinuxNamespaceType, Process, Spec};

use crate::error::{Context, Error, Result};
use crate::kernel::{Kernel, LinuxKernel};
use crate::sync::{Channel, Msg};
use crate::{console, hooks, namespaces, process, rootfs, seccomp, sys};

/// Everything the container's process needs, prepared by the parent before the fork.
pub struct InitArgs<'a> {
    /// The container's config.
    pub spec: &'a Spec,
    /// Absolute root path.
    pub rootfs: &'a Path,
    /// Namespace plan.
    pub ns: &'a namespaces::Plan,
    /// The way into the container's payload leaf.
    pub cgroup: porta_cgroups::join::Join,
    /// Whether stage one was cloned into the leaf's cgroup2 group already.
    pub cloned_into: bool,
    /// The start fifo, opened O_PATH.
    pub fifo: Option<RawFd>,
    /// --no-pivot.
    pub no_pivot: bool,
    /// --no-new-keyring.
    pub no_new_keyring: bool,
    /// --preserve-fds.
    pub preserve_fds: u32,
    /// Whether the root is served: the container's process then asks for the file
    /// server's detached mount over the channel (the file server starts meanwhile).
    pub served_root: bool,
    /// Fds of the parent that the child must close at once (the state directory's lock).
    pub close_in_child: Vec<RawFd>,
}

/// Closes fds inherited through fork that belong to the parent (its locks).
pub fn close_parent_fds(fds: &[RawFd]) {
    for fd in fds {
        let _ = nix::unistd::close(*fd);
    }
}

/// Reports `r` to the parent and exits the forked process.
fn finish(chan: &Channel, r: Result<()>) -> ! {
    match r {
        Ok(()) => sys::exit_now(0),
        Err(e) => {
            let _ = chan.send(&Msg::Failed(e.to_string()), &[]);
            sys::exit_now(1)
        }
    }
}

/// Stage one of `create`: joins namespaces given by path and the cgroup, makes the time
/// namespace, forks the container's process into its new namespaces, reports its pid.
pub fn stage_one(chan: Channel, mut args: InitArgs<'_>) -> ! {
    close_parent_fds(&args.close_in_child);
    let r = (|| -> Result<i32> {
        // Closed once joined: no descriptor of a host cgroup reaches the container.
        std::mem::take(&mut args.cgroup).enter(args.cloned_into)?;
        let opened = args.ns.open_joins()?;
        namespaces::join_all(&LinuxKernel, &opened)?;
        drop(opened);
        let mut new = args.ns.new;
        if new & libc::CLONE_NEWTIME != 0 {
            sys::unshare(libc::CLONE_NEWTIME).ctx(|| "unshare time namespace".into())?;
            write_time_offsets(args.spec)?;
            new &= !libc::CLONE_NEWTIME;
        }
        // Bind sources are opened here, before the process enters its user namespace.
        let sources = crate::detached::open_sources(
            args.spec,
            args.rootfs,
            args.ns.creates(LinuxNamespaceType::User),
        )?;
        match sys::clone_into(new as u64).ctx(|| "clone the container's process".into())? {
            sys::Forked::Parent(pid) => Ok(pid),
            sys::Forked::Child => container_init(&chan, args, sources),
        }
    })();
    match r {
        Ok(pid) => {
            let _ = chan.send(&Msg::Pid(pid), &[]);
            sys::exit_now(0)
        }
        Err(e) => finish(&chan, Err(e)),
    }
}

fn write_time_offsets(spec: &Spec) -> Result<()> {
    let offsets = spec
        .linux()
        .as_ref()
        .and_then(|l| l.time_offsets().clone())
        .unwrap_or_default();
    for (clock, off) in offsets {
        let name = match clock.as_str() {
            "monotonic" => "monotonic",
            "boottime" => "boottime",
            other => {
                return Err(Error::field(
                    format!("linux.timeOffsets.{other}"),
                    "only monotonic and boottime can be offset",
                ))
            }
        };
        let line = format!(
            "{name} {} {}\n",
            off.secs().unwrap_or(0),
            off.nanosecs().unwrap_or(0)
        );
        std::fs::write("/proc/self/timens_offsets", line)
            .map_err(|e| Error::field(format!("linux.timeOffsets.{name}"), e.to_string()))?;
    }
    Ok(())
}

/// The container's process: never returns (execs the program, or reports and exits).
fn container_init(chan: &Channel, args: InitArgs<'_>, sources: crate::detached::Sources) -> ! {
    let r = init_steps(chan, args, sources);
    // init_steps only returns on error (success ends in execve).
    finish(chan, r)
}

fn init_steps(chan: &Channel, args: InitArgs<'_>, sources: crate::detached::Sources) -> Result<()> {
    let spec = args.spec;
    let proc_ = spec
        .process()
        .as_ref()
        .ok_or_else(|| Error::field("process", "missing"))?;
    if args.ns.creates(LinuxNamespaceType::User) {
        chan.send(&Msg::NeedMappings, &[])?;
        chan.expect("porta create", |m| matches!(m, Msg::MappingsDone))?;
        nix::unistd::setresgid(0.into(), 0.into(), 0.into())
            .ctx(|| "setgid 0 in the user namespace".into())?;
        nix::unistd::setresuid(0.into(), 0.into(), 0.into())
            .ctx(|| "setuid 0 in the user namespace".into())?;
    }
    if args.ns.creates(LinuxNamespaceType::Uts) {
        set_uts_names(&LinuxKernel, spec)?;
    }
    let served_root = if args.served_root {
        // Our user namespace goes with the request: a rootless container's file server
        // mounts from inside it (a privileged one ignores it).
        let userns =
            std::fs::File::open("/proc/self/ns/user").ctx(|| "open /proc/self/ns/user".into())?;
        chan.send(&Msg::NeedRoot, &[userns.as_raw_fd()])?;
        drop(userns);
        let fd = chan
            .expect("porta create", |m| matches!(m, Msg::Root))?
            .into_iter()
            .next()
            .ok_or_else(|| Error::Init("root message without a mount".into()))?;
        Some(fd)
    } else {
        None
    };
    let mut plan = rootfs::RootfsPlan {
        spec,
        rootfs: args.rootfs,
        new_cgroupns: args.ns.creates(LinuxNamespaceType::Cgroup),
        new_userns: args.ns.creates(LinuxNamespaceType::User),
        mount_label: spec.linux().as_ref().and_then(|l| l.mount_label().clone()),
        served_root,
        sources,
        own_mount_ns: args.ns.has(LinuxNamespaceType::Mount),
    };
    rootfs::prepare(&LinuxKernel, &mut plan)?;
    chan.send(&Msg::RunHooks, &[])?;
    let state_json = match chan.recv("porta create")?.0 {
        Msg::HooksDone(s) => s,
        m => return Err(Error::Init(format!("unexpected message {m:?}"))),
    };
    if let Some(h) = spec
        .hooks()
        .as_ref()
        .and_then(|h| h.create_container().clone())
    {
        hooks::run_all("createContainer", &h, state_json.as_bytes())?;
    }
    rootfs::enter(
        &LinuxKernel,
        args.rootfs,
        args.no_pivot,
        args.ns.has(LinuxNamespaceType::Mount),
    )?;
    rootfs::finish(&LinuxKernel, spec)?;
    // As runc: a missing working directory is made (a read-only root just fails later).
    if !proc_.cwd().exists() {
        let _ = std::fs::create_dir_all(proc_.cwd());
    }
    if proc_.terminal().unwrap_or(false) {
        let size = proc_
            .console_size()
            .as_ref()
            .map(|b| (b.height() as u16, b.width() as u16));
        let (master, slave) =
            console::open_pty(Path::new("/dev/pts/ptmx"), size, proc_.user().uid())?;
        if let Ok(t) = rootfs::ensure_file(std_root()?.as_fd(), Path::new("/dev/console")) {
            let _ = nix::mount::mount(
                Some(Path::new(&format!("/proc/self/fd/{}", slave.as_raw_fd()))),
                Path::new(&format!("/proc/self/fd/{}", t.as_raw_fd())),
                None::<&str>,
                nix::mount::MsFlags::MS_BIND,
                None::<&str>,
            );
        }
        chan.send(&Msg::Console, &[master.as_raw_fd()])?;
        drop(master);
        console::become_tty(slave.as_fd())?;
    } else {
        // As runc: the container's process leads a session of its own, with or without a
        // terminal (a session leader outside the container would stop CRIU from dumping it).
        let _ = nix::unistd::setsid();
    }
    if !args.no_new_keyring {
        join_session_keyring();
    }
    if let Some(p) = spec.linux().as_ref().and_then(|l| l.personality().as_ref()) {
        let dom = serde_json::to_value(p.domain())
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        let persona = match dom.as_str() {
            "LINUX" => 0x0000,
            "LINUX32" => 0x0008,
            other => {
                return Err(Error::field(
                    "linux.personality.domain",
                    format!("{other} is not supported"),
                ))
            }
        };
        sys::personality(persona).ctx(|| "linux.personality".into())?;
    }
    let fifo = args.fifo;
    finalize_and_exec(chan, spec, proc_, args.preserve_fds, fifo, &state_json)
}

/// The home directory of `uid` in the container's /etc/passwd, or "/" (as runc sets HOME).
fn home_of(uid: u32) -> String {
    std::fs::read_to_string("/etc/passwd")
        .ok()
        .and_then(|p| {
            p.lines().find_map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                (f.len() >= 6 && f[2].parse::<u32>().ok() == Some(uid)).then(|| f[5].to_string())
            })
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "/".to_string())
}

fn std_root() -> Result<OwnedFd> {
    Ok(std::fs::File::open("/").ctx(|| "open /".into())?.into())
}

/// `hostname` and `domainname` of the config, set in the container's new UTS namespace
/// (empty ones are left alone).
fn set_uts_names(k: &dyn Kernel, spec: &Spec) -> Result<()> {
    if let Some(h) = spec.hostname().as_deref().filter(|h| !h.is_empty()) {
        k.sethostname(h)
            .map_err(|e| Error::field("hostname", e.to_string()))?;
    }
    if let Some(d) = spec.domainname().as_deref().filter(|h| !h.is_empty()) {
        if d.contains('\0') {
            return Err(Error::field("domainname", "contains a NUL byte"));
        }
        k.setdomainname(d)
            .map_err(|e| Error::field("domainname", e.to_string()))?;
    }
    Ok(())
}

fn join_session_keyring() {
    const KEYCTL_JOIN_SESSION_KEYRING: libc::c_long = 1;
    // SAFETY: a null name asks for a new anonymous session keyring.
    let r = unsafe {
        libc::syscall(
            libc::SYS_keyctl,
            KEYCTL_JOIN_SESSION_KEYRING,
            std::ptr::null::<u8>(),
        )
    };
    if r < 0 {
        tracing::debug!("new session keyring: {}", std::io::Error::last_os_error());
    }
}

/// The process's environment as runc gives it: of a key given twice the last value wins
/// (in the place of its first occurrence), and a missing or empty `HOME` is set from the
/// user's entry in the container's /etc/passwd (or "/").
fn environment(p: &Process) -> Vec<String> {
    let mut env: Vec<String> = Vec::new();
    for e in p.env().iter().flatten() {
        let key = e.split_once('=').map_or(e.as_str(), |(k, _)| k);
        match env
            .iter_mut()
            .find(|x| x.split_once('=').map_or(x.as_str(), |(k, _)| k) == key)
        {
            Some(old) => *old = e.clone(),
            None => env.push(e.clone()),
        }
    }
    match env.iter_mut().find(|e| e.starts_with("HOME=")) {
        Some(h) if h.as_str() == "HOME=" => *h = format!("HOME={}", home_of(p.user().uid())),
        Some(_) => {}
        None => env.push(format!("HOME={}", home_of(p.user().uid()))),
    }
    env
}

/// Enters the working directory. Called as root before the user switch (so that a
/// directory the user cannot search is entered, as runc does) and, when that was refused
/// for lack of permission, again after it (a directory only the user may enter, e.g. on a
/// root-squashing or idmapped file system). Returns whether it still has to be done.
fn enter_cwd(p: &Process, last_try: bool) -> Result<bool> {
    match nix::unistd::chdir(p.cwd()) {
        Ok(()) => Ok(false),
        Err(nix::errno::Errno::EACCES | nix::errno::Errno::EPERM) if !last_try => Ok(true),
        Err(e) => Err(Error::field(
            "process.cwd",
            format!("{}: {e}", p.cwd().display()),
        )),
    }
}

/// The steps shared by a container's first process and exec'd processes: rlimits, LSM,
/// cwd, fds, identity, capabilities, no_new_privs, then (after `start` for a first
/// process) seccomp and execve.
///
/// The seccomp filter is loaded as late as possible, as runc does, so that a profile
/// needs to allow nothing of Porta's own set-up: right before execve, after the start fifo
/// and startContainer hooks. Without no_new_privs loading needs CAP_SYS_ADMIN: the process
/// then keeps it in its effective and permitted sets until the filter is loaded and drops
/// it with one capset (the only call besides execve made under the filter). With
/// SCMP_ACT_NOTIFY the listener must have the notification fd before `create` returns
/// (as with runc), so the filter is loaded before reporting ready: only sending that
/// report, the start fifo (open, write, close), the startContainer hooks and execve then
/// run under it.
pub fn finalize_and_exec(
    chan: &Channel,
    spec: &Spec,
    p: &Process,
    preserve_fds: u32,
    fifo: Option<RawFd>,
    state_json: &str,
) -> Result<()> {
    // Porta runs with SIGPIPE ignored (the Rust runtime's choice); an ignored signal would
    // survive the exec, and the container's process must start with the default.
    // SAFETY: installs the default disposition; no handler code is involved.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    if let Some(adj) = p.oom_score_adj() {
        process::set_oom_score_adj(adj)?;
    }
    process::apply_rlimits(p.rlimits().as_deref().unwrap_or(&[]))?;
    let env = environment(p);
    let args = p.args().clone().unwrap_or_default();
    let seccomp_cfg = spec.linux().as_ref().and_then(|l| l.seccomp().clone());
    let filter = seccomp_cfg.as_ref().map(seccomp::compile).transpose()?;
    let notify = seccomp_cfg.as_ref().is_some_and(seccomp::uses_notify);
    // The BPF program is generated now, before `create` reports ready: after `start` only
    // its installation is left (see seccomp::Program). A notifying filter is loaded whole
    // before ready anyway.
    let bpf = match (&filter, &seccomp_cfg) {
        (Some(f), Some(cfg)) if !notify => Some(seccomp::prepare(f, cfg)?),
        _ => None,
    };
    let nnp = p.no_new_privileges().unwrap_or(false);
    process::apply_lsm(
        p.apparmor_profile().as_deref(),
        p.selinux_label().as_deref(),
    )?;
    // As runc: the working directory is entered while still root, and again as the user
    // if root was refused.
    let chdir_again = enter_cwd(p, false)?;
    // Everything of Porta's above the preserved fds is closed on exec (CVE-2024-21626).
    porta_sys::fd::close_from(3 + preserve_fds, true).ctx(|| "mark fds close-on-exec".into())?;
    process::drop_bounding(p.capabilities())?;
    process::switch_user(p)?;
    if chdir_again {
        enter_cwd(p, true)?;
    }
    let keep_admin = filter.is_some() && !nnp;
    let final_caps = process::apply_capabilities(p.capabilities(), keep_admin)?;
    if nnp {
        process::set_no_new_privs()?;
    }
    let program = process::find_program(&args[0], &env)?;
    let cargs = process::cstrings("process.args", &args)?;
    let cenv = process::cstrings("process.env", &env)?;
    let mut filter = filter;
    if notify {
        if let Some(f) = filter.take() {
            if let Some(fd) = seccomp::load(&f, true)? {
                chan.send(&Msg::SeccompListener, &[fd.as_raw_fd()])?;
            }
        }
    }
    chan.send(&Msg::Ready, &[])?;
    if let Some(fifo) = fifo {
        // Blocks until `porta start` opens the fifo for reading.
        let w = nix::fcntl::open(
            Path::new(&format!("/proc/self/fd/{fifo}")),
            nix::fcntl::OFlag::O_WRONLY | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .ctx(|| "open the start fifo".into())?;
        nix::unistd::write(
            // SAFETY: w is a fresh fd from open that we own until close below.
            unsafe { std::os::fd::BorrowedFd::borrow_raw(w) },
            b"0",
        )
        .ctx(|| "write the start fifo".into())?;
        let _ = nix::unistd::close(w);
        let _ = nix::unistd::close(fifo);
        if let Some(h) = spec
            .hooks()
            .as_ref()
            .and_then(|h| h.start_container().clone())
        {
            if let Err(e) = hooks::run_all("startContainer", &h, state_json.as_bytes()) {
                eprintln!("porta: {e}");
                sys::exit_now(1);
            }
        }
    }
    let late = (|| -> Result<()> {
        if let Some(p) = &bpf {
            seccomp::install(p)?;
        }
        if let Some(c) = &final_caps {
            process::set_final_caps(c)?;
        }
        Ok(())
    })();
    if let Err(e) = late {
        // Ready was reported: nobody reads the channel any more. Tell the process's stderr.
        eprintln!("porta: {e}");
        sys::exit_now(127);
    }
    let err = process::exec(&program, &cargs, &cenv);
    if fifo.is_some() {
        // After `start` nobody listens on the channel: tell the container's stderr.
        eprintln!("porta: {err}");
        sys::exit_now(127);
    }
    Err(err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::recorder::{Call, Recorder};

    fn spec(v: serde_json::Value) -> Spec {
        let mut v = v;
        v["ociVersion"] = serde_json::json!("1.0.2");
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn uts_names_are_set_and_empty_ones_left_alone() {
        let k = Recorder::new(Path::new("/"));
        set_uts_names(
            &k,
            &spec(serde_json::json!({"hostname": "box", "domainname": "lan"})),
        )
        .unwrap();
        assert_eq!(
            k.calls(),
            [
                Call::Sethostname("box".into()),
                Call::Setdomainname("lan".into())
            ]
        );
        let k = Recorder::new(Path::new("/"));
        set_uts_names(&k, &spec(serde_json::json!({"hostname": ""}))).unwrap();
        assert!(k.calls().is_empty());
    }

    #[test]
    fn uts_name_errors_name_the_field() {
        let k = Recorder::new(Path::new("/"));
        k.fail(
            |c| matches!(c, Call::Sethostname(_)),
            nix::errno::Errno::EPERM,
        );
        let e = set_uts_names(&k, &spec(serde_json::json!({"hostname": "box"})))
            .unwrap_err()
            .to_string();
        assert!(e.contains("hostname"), "{e}");
        let k = Recorder::new(Path::new("/"));
        let e = set_uts_names(&k, &spec(serde_json::json!({"domainname": "a\u{0}b"})))
            .unwrap_err()
            .to_string();
        assert!(e.contains("domainname") && e.contains("NUL"), "{e}");
        assert!(k.calls().is_empty());
    }
}
