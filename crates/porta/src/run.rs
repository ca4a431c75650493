//! What each subcommand does, on top of the runtime core.

use std::io::Write;
use std::os::fd::AsFd;
use std::path::Path;
use std::str::FromStr;

use anyhow::{anyhow, bail, Context, Result};
use oci_spec::runtime::{LinuxCpu, LinuxMemory, LinuxPids, LinuxResources, Process};
use porta_runtime::container::{self, Container, CreateOptions, ExecOptions};
use porta_runtime::state::{StateRoot, Status};
use porta_runtime::{checkpoint, features, selfexe, spec, sys};

use crate::cli::{Cli, Command, CreateArgs, ExecArgs, UpdateArgs};

/// Runs the parsed command; returns the process exit code.
pub fn dispatch(cli: Cli) -> Result<i32> {
    let rootless = match cli.rootless.as_str() {
        "true" => true,
        "false" => false,
        "auto" => !nix::unistd::geteuid().is_root(),
        other => bail!("--rootless: {other:?} is not true, false or auto"),
    };
    // Inside a container with its API socket: the commands on containers act on its
    // children, through the socket.
    if crate::nested::is_client_command(&cli.command) {
        if let Some(sock) = crate::objects::client_socket(&cli.root) {
            return crate::nested::client(&sock, cli.command);
        }
    }
    if matches!(
        cli.command,
        Command::Create(_) | Command::Run { .. } | Command::Exec(_)
    ) {
        // These commands enter the container: run them from a sealed copy of the binary.
        selfexe::ensure_sealed_copy()?;
    }
    let root = || StateRoot::open(&cli.root).map_err(anyhow::Error::from);
    match cli.command {
        Command::Objects { format, id } => crate::objects::run(&cli.root, id.as_deref(), &format),
        Command::Create(a) => {
            container::create(&root()?, &create_opts(&a, cli.systemd_cgroup, rootless))?;
            Ok(0)
        }
        Command::Start { id } => {
            Container::open(&root()?, &id)?.start()?;
            Ok(0)
        }
        Command::Run {
            create,
            detach,
            keep,
        } => {
            let root = root()?;
            let mut opts = create_opts(&create, cli.systemd_cgroup, rootless);
            // Foreground terminal without a console socket: relay the pty to our own
            // terminal, found (or its absence reported) before anything is made.
            let console = if !detach
                && opts.console_socket.is_none()
                && bundle_wants_terminal(&opts.bundle)
            {
                let f = crate::tty::Foreground::new(&root.path)?;
                opts.console_socket = Some(f.listener.path());
                Some(f)
            } else {
                None
            };
            run(&root, &opts, detach, keep, console)
        }
        Command::State { id } => {
            let c = Container::open(&root()?, &id)?;
            println!("{}", serde_json::to_string_pretty(&c.state_json())?);
            Ok(0)
        }
        Command::Kill { all, id, signal } => {
            let sig = parse_signal(&signal)?;
            Container::open(&root()?, &id)?.kill(sig, all)?;
            Ok(0)
        }
        Command::Delete { force, id } => {
            let root = root()?;
            match container::delete_half_made(&root, &id) {
                Ok(true) => return Ok(0),
                Ok(false) => {}
                // As runc: deleting a container that does not exist is fine with --force.
                Err(porta_runtime::Error::NotFound(_)) if force => return Ok(0),
                Err(e) => return Err(e.into()),
            }
            let grants = crate::share::before_delete(&root, &id);
            match Container::open(&root, &id) {
                Ok(c) => c.delete(force)?,
                Err(porta_runtime::Error::NotFound(_)) if force => {}
                Err(e) => return Err(e.into()),
            }
            crate::share::after_delete(&root, grants);
            Ok(0)
        }
        Command::List { format, quiet } => list(&root()?, &format, quiet),
        Command::Ps {
            format,
            id,
            ps_args,
        } => ps(&root()?, &id, &format, &ps_args),
        Command::Exec(a) => exec(&root()?, a),
        Command::Translator(t) => crate::translator::run(&root()?, t),
        Command::Share {
            read_only,
            from,
            to,
        } => crate::share::share(&root()?, &from, &to, read_only),
        Command::Unshare { what } => crate::share::unshare(&root()?, &what),
        Command::Nested(a) => crate::nested::run(&root()?, a),
        Command::RestoreHooks { state_dir } => {
            let action = std::env::var("CRTOOLS_SCRIPT_ACTION").unwrap_or_default();
            let pid = std::env::var("CRTOOLS_INIT_PID")
                .ok()
                .and_then(|p| p.parse::<i32>().ok())
                .unwrap_or(0);
            checkpoint::restore_hooks(&state_dir, &action, pid)?;
            Ok(0)
        }
        Command::Pause { id } => {
            Container::open(&root()?, &id)?.pause()?;
            Ok(0)
        }
        Command::Resume { id } => {
            Container::open(&root()?, &id)?.resume()?;
            Ok(0)
        }
        Command::Update(a) => update(&root()?, a),
        Command::Events {
            interval,
            stats,
            id,
        } => events(&root()?, &id, &interval, stats),
        Command::Spec { bundle } => {
            // `spec --rootless` is the global flag given explicitly.
            let rl = cli.rootless == "true";
            let path = bundle.join("config.json");
            if path.exists() {
                bail!("{} already exists; remove it first", path.display());
            }
            let v = spec::default_spec(
                rl,
                nix::unistd::geteuid().as_raw(),
                nix::unistd::getegid().as_raw(),
                spec::pure_cgroup_v2(),
            );
            std::fs::write(&path, serde_json::to_string_pretty(&v)? + "\n")
                .with_context(|| format!("write {}", path.display()))?;
            Ok(0)
        }
        Command::Features => {
            println!("{}", serde_json::to_string_pretty(&features::features())?);
            Ok(0)
        }
        Command::Checkpoint(a) => {
            let opts = checkpoint::CheckpointOptions {
                criu: criu_opts(&cli.criu, &a.criu),
                parent_path: a.parent_path.clone(),
                leave_running: a.leave_running,
                tcp_skip_in_flight: a.tcp_skip_in_flight,
                link_remap: a.link_remap,
                status_fd: a.status_fd,
                page_server: a.page_server.clone(),
                pre_dump: a.pre_dump,
            };
            checkpoint::checkpoint(&root()?, &a.id, &opts)?;
            Ok(0)
        }
        Command::Restore(a) => {
            let opts = checkpoint::RestoreOptions {
                criu: criu_opts(&cli.criu, &a.criu),
                id: a.id.clone(),
                bundle: absolute(&a.bundle),
                console_socket: a.console_socket.as_ref().map(|p| absolute(p)),
                lsm_profile: a.lsm_profile.clone(),
                pid_file: a.pid_file.as_ref().map(|p| absolute(p)),
                systemd_cgroup: cli.systemd_cgroup,
            };
            restore(&root()?, &opts, a.detach, a.no_subreaper)
        }
    }
}

/// The options of `checkpoint` and `restore` both take, with runc's defaults: the image
/// directory is ./checkpoint.
fn criu_opts(criu: &Path, a: &crate::cli::CriuArgs) -> checkpoint::CriuOptions {
    checkpoint::CriuOptions {
        criu: criu.to_path_buf(),
        image_path: absolute(a.image_path.as_deref().unwrap_or(Path::new("checkpoint"))),
        work_path: a.work_path.as_ref().map(|p| absolute(p)),
        tcp_established: a.tcp_established,
        ext_unix_sk: a.ext_unix_sk,
        shell_job: a.shell_job,
        file_locks: a.file_locks,
        lazy_pages: a.lazy_pages,
        manage_cgroups_mode: a.manage_cgroups_mode.clone(),
        empty_ns: a.empty_ns.clone(),
        auto_dedup: a.auto_dedup,
    }
}

fn create_opts(a: &CreateArgs, systemd: bool, rootless: bool) -> CreateOptions {
    CreateOptions {
        id: a.id.clone(),
        bundle: a.bundle.clone(),
        pid_file: a.pid_file.as_ref().map(|p| absolute(p)),
        console_socket: a.console_socket.as_ref().map(|p| absolute(p)),
        no_pivot: a.no_pivot,
        no_new_keyring: a.no_new_keyring,
        preserve_fds: a.preserve_fds,
        systemd_cgroup: systemd,
        rootless,
        nested_in: a.nested_in.clone(),
    }
}

fn absolute(p: &Path) -> std::path::PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()
            .map(|d| d.join(p))
            .unwrap_or_else(|_| p.to_path_buf())
    }
}

/// Parses a signal given as a name (SIGKILL, KILL) or a number.
pub fn parse_signal(s: &str) -> Result<i32> {
    if let Ok(n) = s.parse::<i32>() {
        // 0 sends nothing and only checks that the process exists (kill(2)), as runc allows.
        if (0..=64).contains(&n) {
            return Ok(n);
        }
        bail!("invalid signal {s:?}: numbers go from 0 to 64");
    }
    let up = s.to_ascii_uppercase();
    let name = if up.starts_with("SIG") {
        up
    } else {
        format!("SIG{up}")
    };
    if let Some(rest) = name.strip_prefix("SIGRTMIN") {
        let off: i32 = if rest.is_empty() {
            0
        } else {
            rest.trim_start_matches('+')
                .parse()
                .map_err(|_| anyhow!("invalid signal {s:?}"))?
        };
        return Ok(libc::SIGRTMIN() + off);
    }
    nix::sys::signal::Signal::from_str(&name)
        .map(|s| s as i32)
        .map_err(|_| anyhow!("invalid signal {s:?}"))
}

fn bundle_wants_terminal(bundle: &Path) -> bool {
    std::fs::read(bundle.join("config.json"))
        .ok()
        .and_then(|d| serde_json::from_slice::<serde_json::Value>(&d).ok())
        .and_then(|v| v["process"]["terminal"].as_bool())
        .unwrap_or(false)
}

fn run(
    root: &StateRoot,
    opts: &CreateOptions,
    detach: bool,
    keep: bool,
    console: Option<crate::tty::Foreground>,
) -> Result<i32> {
    if !detach {
        // The container's process is reparented to us when create's stage one exits.
        sys::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0).context("prctl(PR_SET_CHILD_SUBREAPER)")?;
    }
    let st = container::create(root, opts)?;
    let mut relay = None;
    let mut _raw = None;
    if let Some(f) = console {
        match f.attach() {
            Ok((r, raw)) => {
                relay = Some(r);
                _raw = Some(raw);
            }
            Err(e) => {
                if let Ok(c) = Container::open(root, &opts.id) {
                    let _ = c.delete(true);
                }
                return Err(e);
            }
        }
    }
    let started = Container::open(root, &opts.id).and_then(|mut c| c.start());
    if let Err(e) = started {
        if let Ok(c) = Container::open(root, &opts.id) {
            let _ = c.delete(true);
        }
        return Err(e.into());
    }
    if detach {
        return Ok(0);
    }
    let code = wait_forwarding_signals(st.pid)?;
    if let Some(r) = relay {
        // The pty reports EOF once the container's last process is gone; give the relay a
        // moment to pass on the final output, but never hang on a stray holder of the pty.
        for _ in 0..50 {
            if r.is_finished() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
    if !keep {
        if let Ok(c) = Container::open(root, &opts.id) {
            c.delete(true)?;
        }
    }
    Ok(code)
}

/// `restore`: a new container from a checkpoint. Detached, it returns once the container
/// runs; else, as `run`, it waits for the container's process, passing signals on, then
/// deletes the container and returns the process's exit code.
fn restore(
    root: &StateRoot,
    opts: &checkpoint::RestoreOptions,
    detach: bool,
    no_subreaper: bool,
) -> Result<i32> {
    if !detach && !no_subreaper {
        // The restored tree's root is our child; its orphans come to us as well.
        sys::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0).context("prctl(PR_SET_CHILD_SUBREAPER)")?;
    }
    let st = container::restore(root, opts)?;
    if detach {
        return Ok(0);
    }
    let code = wait_forwarding_signals(st.pid)?;
    if let Ok(c) = Container::open(root, &opts.id) {
        c.delete(true)?;
    }
    Ok(code)
}

/// The signals `run` and `exec` pass on to the container's process (and SIGCHLD).
pub fn forwarded_signals() -> nix::sys::signal::SigSet {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    for s in [
        Signal::SIGINT,
        Signal::SIGTERM,
        Signal::SIGHUP,
        Signal::SIGQUIT,
        Signal::SIGUSR1,
        Signal::SIGUSR2,
        Signal::SIGWINCH,
        Signal::SIGCHLD,
    ] {
        set.add(s);
    }
    set
}

/// Waits for `pid` (a child, directly or by reparenting), forwarding the usual signals to
/// it, and returns its exit code as a shell would (128+signal when killed).
fn wait_forwarding_signals(pid: i32) -> Result<i32> {
    use nix::sys::signal::Signal;
    use nix::sys::signalfd::{SfdFlags, SignalFd};
    let set = forwarded_signals();
    set.thread_block().context("block signals")?;
    let sfd = SignalFd::with_flags(&set, SfdFlags::SFD_CLOEXEC).context("signalfd")?;
    // The exit is watched through a pidfd as well as SIGCHLD: a SIGCHLD that reaches a
    // thread of this process which does not block it is discarded, and the zombie would
    // then never be looked at.
    let pidfd = porta_sys::pidfd::open(pid).ok();
    let target = nix::unistd::Pid::from_raw(pid);
    loop {
        // Reap whatever exited; stop when the container's process did.
        loop {
            match nix::sys::wait::waitpid(None, Some(nix::sys::wait::WaitPidFlag::WNOHANG)) {
                Ok(nix::sys::wait::WaitStatus::Exited(p, c)) if p == target => return Ok(c),
                Ok(nix::sys::wait::WaitStatus::Signaled(p, s, _)) if p == target => {
                    return Ok(128 + s as i32)
                }
                Ok(nix::sys::wait::WaitStatus::StillAlive) | Err(_) => break,
                Ok(_) => continue,
            }
        }
        {
            use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
            use std::os::fd::AsFd;
            let mut fds = vec![PollFd::new(sfd.as_fd(), PollFlags::POLLIN)];
            if let Some(p) = &pidfd {
                fds.push(PollFd::new(p.as_fd(), PollFlags::POLLIN));
            }
            match poll(&mut fds, PollTimeout::NONE) {
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(e) => bail!("poll for the container's exit: {e}"),
            }
            let ready = |f: &PollFd| f.revents().is_some_and(|r| r.contains(PollFlags::POLLIN));
            if fds.get(1).is_some_and(ready) {
                // It exited: it is a zombie child now (porta is its subreaper), so the
                // reaping above returns on the next round; if it is not our child, say so.
                match nix::sys::wait::waitpid(target, None) {
                    Ok(nix::sys::wait::WaitStatus::Exited(_, c)) => return Ok(c),
                    Ok(nix::sys::wait::WaitStatus::Signaled(_, s, _)) => return Ok(128 + s as i32),
                    Ok(_) => continue,
                    Err(e) => bail!("the container's process {pid} exited, but its exit status cannot be read: {e}"),
                }
            }
            if !ready(&fds[0]) {
                continue;
            }
        }
        match sfd.read_signal() {
            Ok(Some(info)) => {
                let sig = info.ssi_signo as i32;
                if sig != libc::SIGCHLD {
                    let _ = nix::sys::signal::kill(target, Signal::try_from(sig).ok());
                }
            }
            Ok(None) => {}
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => bail!("read signalfd: {e}"),
        }
    }
}

fn list(root: &StateRoot, format: &str, quiet: bool) -> Result<i32> {
    print_list(&container::list(root)?, format, quiet)
}

/// Prints containers' states as `list` does (table, json, or ids with `quiet`).
pub fn print_list(items: &[serde_json::Value], format: &str, quiet: bool) -> Result<i32> {
    let out = std::io::stdout();
    let mut out = out.lock();
    if quiet {
        for i in items {
            writeln!(out, "{}", i["id"].as_str().unwrap_or_default())?;
        }
        return Ok(0);
    }
    match format {
        "json" => writeln!(out, "{}", serde_json::to_string(items)?)?,
        "table" => {
            writeln!(
                out,
                "{:<12} {:<10} {:<10} {:<40} {:<30} OWNER",
                "ID", "PID", "STATUS", "BUNDLE", "CREATED"
            )?;
            for i in items {
                writeln!(
                    out,
                    "{:<12} {:<10} {:<10} {:<40} {:<30} {}",
                    i["id"].as_str().unwrap_or_default(),
                    i["pid"].to_string(),
                    i["status"].as_str().unwrap_or_default(),
                    i["bundle"].as_str().unwrap_or_default(),
                    i["created"].as_str().unwrap_or_default(),
                    i["owner"].as_str().unwrap_or_default()
                )?;
            }
        }
        other => bail!("--format: {other:?} is not table or json"),
    }
    Ok(0)
}

/// `ps`: as runc, json prints the container's pids; table runs the host's `ps` with the
/// given arguments (default `-ef`) and prints its header and the lines whose PID column
/// holds one of the container's processes.
fn ps(root: &StateRoot, id: &str, format: &str, args: &[String]) -> Result<i32> {
    let c = Container::open(root, id)?;
    let pids = c.pids()?;
    drop(c);
    match format {
        "json" => {
            println!("{}", serde_json::to_string(&pids)?);
            return Ok(0);
        }
        "table" => {}
        other => bail!("--format: {other:?} is not table or json"),
    }
    let args: Vec<&str> = if args.is_empty() {
        vec!["-ef"]
    } else {
        args.iter().map(String::as_str).collect()
    };
    let out = std::process::Command::new("ps")
        .args(&args)
        .stdin(std::process::Stdio::null())
        .output()
        .context("run ps")?;
    if !out.status.success() {
        bail!(
            "ps {}: {}: {}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut w = std::io::stdout().lock();
    for line in filter_ps(&text, &pids)? {
        writeln!(w, "{line}")?;
    }
    Ok(0)
}

/// The header of `ps` output and its lines whose PID column is one of `pids`.
fn filter_ps<'a>(text: &'a str, pids: &[i32]) -> Result<Vec<&'a str>> {
    let mut lines = text.lines();
    let header = lines.next().unwrap_or_default();
    let col = header
        .split_whitespace()
        .position(|f| f == "PID")
        .ok_or_else(|| {
            anyhow!("ps output has no PID column (header: {header:?}): add pid to -o")
        })?;
    let mut keep = vec![header];
    for line in lines.filter(|l| !l.trim().is_empty()) {
        let field = line.split_whitespace().nth(col).unwrap_or_default();
        let pid: i32 = field
            .parse()
            .map_err(|_| anyhow!("ps output: no pid in column {} of {line:?}", col + 1))?;
        if pids.contains(&pid) {
            keep.push(line);
        }
    }
    Ok(keep)
}

fn exec(root: &StateRoot, a: ExecArgs) -> Result<i32> {
    if !a.detach {
        sys::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0).context("prctl(PR_SET_CHILD_SUBREAPER)")?;
    }
    let c = Container::open(root, &a.id)?;
    let spec = c.spec()?;
    let process = build_exec_process(&spec, &a)?;
    let terminal = process.terminal().unwrap_or(false);
    let mut console_socket = a.console_socket.as_ref().map(|p| absolute(p));
    // `exec -t` without --console-socket: the caller's terminal, as runc does.
    let console = if terminal && console_socket.is_none() {
        if a.detach {
            bail!("exec --tty --detach needs --console-socket: a detached exec has no terminal to use");
        }
        let f = crate::tty::Foreground::new(&root.path)?;
        console_socket = Some(f.listener.path());
        Some(f)
    } else {
        None
    };
    let what = process
        .args()
        .as_ref()
        .and_then(|v| v.first().cloned())
        .unwrap_or_default();
    let opts = ExecOptions {
        process: Some(process),
        pid_file: a.pid_file.as_ref().map(|p| absolute(p)),
        console_socket,
        detach: a.detach,
        preserve_fds: a.preserve_fds,
        ignore_paused: a.ignore_paused,
    };
    let pid = c.exec(&spec, &opts).map_err(|e| match e {
        // The exec'd process failed to set itself up: name the exec, not the container's
        // init (which the same message type reports for `create`).
        porta_runtime::Error::Init(why) => match why.strip_prefix("config field ") {
            Some(field) => anyhow!("exec {field}"),
            None => anyhow!("exec {what:?}: {why}"),
        },
        e => e.into(),
    })?;
    let (relay, _raw) = match console {
        Some(f) => {
            let (r, raw) = f.attach()?;
            (Some(r), Some(raw))
        }
        None => (None, None),
    };
    if a.detach {
        return Ok(0);
    }
    let code = wait_forwarding_signals(pid)?;
    if let Some(r) = relay {
        // Pass on the last output; the pty reports EOF once the process is gone (unless
        // something else in the container holds it: then do not hang on it).
        for _ in 0..50 {
            if r.is_finished() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
    Ok(code)
}

fn build_exec_process(spec: &oci_spec::runtime::Spec, a: &ExecArgs) -> Result<Process> {
    if let Some(path) = &a.process {
        let data =
            std::fs::read(path).with_context(|| format!("read --process {}", path.display()))?;
        let de = &mut serde_json::Deserializer::from_slice(&data);
        let p: Process = serde_path_to_error::deserialize(de).map_err(|e| {
            let field = e.path().to_string();
            anyhow!(
                "--process {}: field {field}: {}",
                path.display(),
                e.into_inner()
            )
        })?;
        return Ok(p);
    }
    if a.command.is_empty() {
        bail!("exec: no command given (give one after the container id, or --process)");
    }
    let base = spec
        .process()
        .clone()
        .ok_or_else(|| anyhow!("the container's config has no process"))?;
    let mut p = base;
    p.set_args(Some(a.command.clone()));
    p.set_terminal(Some(a.tty));
    p.set_console_size(None);
    let mut env = p.env().clone().unwrap_or_default();
    for e in &a.env {
        let Some((k, _)) = e.split_once('=') else {
            bail!("--env {e:?}: not NAME=VALUE")
        };
        env.retain(|x| x.split_once('=').map(|(xk, _)| xk) != Some(k));
        env.push(e.clone());
    }
    p.set_env(Some(env));
    if let Some(cwd) = &a.cwd {
        p.set_cwd(cwd.clone());
    }
    let mut user = p.user().clone();
    if let Some(u) = &a.user {
        let (uid, gid) = match u.split_once(':') {
            Some((u, g)) => (
                u.parse::<u32>()
                    .map_err(|_| anyhow!("--user {u:?}: not a number"))?,
                g.parse::<u32>()
                    .map_err(|_| anyhow!("--user {g:?}: gid is not a number"))?,
            ),
            None => (
                u.parse::<u32>()
                    .map_err(|_| anyhow!("--user {u:?}: not a number (uid[:gid])"))?,
                0,
            ),
        };
        user.set_uid(uid);
        user.set_gid(gid);
    }
    if !a.additional_gids.is_empty() {
        user.set_additional_gids(Some(a.additional_gids.clone()));
    }
    p.set_user(user);
    if !a.cap.is_empty() {
        let mut caps = p.capabilities().clone().unwrap_or_default();
        for c in &a.cap {
            let cap: oci_spec::runtime::Capability =
                serde_json::from_value(serde_json::json!(c))
                    .map_err(|_| anyhow!("--cap {c:?}: unknown capability"))?;
            for set in [
                caps.bounding().clone(),
                caps.effective().clone(),
                caps.permitted().clone(),
            ]
            .iter()
            .enumerate()
            {
                let mut s = set.1.clone().unwrap_or_default();
                s.insert(cap);
                match set.0 {
                    0 => caps.set_bounding(Some(s)),
                    1 => caps.set_effective(Some(s)),
                    _ => caps.set_permitted(Some(s)),
                };
            }
            // As runc: ambient too, when the process has an inheritable set (an ambient
            // capability must also be inheritable, which --cap does not make it).
            if caps.inheritable().is_some() {
                let mut amb = caps.ambient().clone().unwrap_or_default();
                amb.insert(cap);
                caps.set_ambient(Some(amb));
            }
        }
        p.set_capabilities(Some(caps));
    }
    if a.no_new_privs {
        p.set_no_new_privileges(Some(true));
    }
    if let Some(l) = &a.process_label {
        p.set_selinux_label(Some(l.clone()));
    }
    if let Some(aa) = &a.apparmor {
        p.set_apparmor_profile(Some(aa.clone()));
    }
    Ok(p)
}

fn parse_bytes(flag: &str, s: &str) -> Result<i64> {
    if s == "-1" {
        return Ok(-1);
    }
    let lower = s.to_ascii_lowercase();
    let (num, mult) = match lower.trim_end_matches('b').chars().last() {
        Some('k') => (&lower[..lower.trim_end_matches('b').len() - 1], 1i64 << 10),
        Some('m') => (&lower[..lower.trim_end_matches('b').len() - 1], 1 << 20),
        Some('g') => (&lower[..lower.trim_end_matches('b').len() - 1], 1 << 30),
        _ => (lower.trim_end_matches('b'), 1),
    };
    let n: i64 = num
        .trim()
        .parse()
        .map_err(|_| anyhow!("{flag} {s:?}: not a size"))?;
    Ok(n * mult)
}

fn update(root: &StateRoot, a: UpdateArgs) -> Result<i32> {
    let mut c = Container::open(root, &a.id)?;
    let mut r: LinuxResources = match &a.resources {
        Some(p) => {
            let data = if p.as_os_str() == "-" {
                let mut v = Vec::new();
                std::io::Read::read_to_end(&mut std::io::stdin(), &mut v)?;
                v
            } else {
                std::fs::read(p).with_context(|| format!("read {}", p.display()))?
            };
            container::parse_resources(&data, p)?
        }
        None => LinuxResources::default(),
    };
    let mut mem = (*r.memory()).unwrap_or_default();
    let mut mem_set = r.memory().is_some();
    if let Some(m) = &a.memory {
        mem.set_limit(Some(parse_bytes("--memory", m)?));
        mem_set = true;
    }
    if let Some(m) = &a.memory_reservation {
        mem.set_reservation(Some(parse_bytes("--memory-reservation", m)?));
        mem_set = true;
    }
    if let Some(m) = &a.memory_swap {
        mem.set_swap(Some(parse_bytes("--memory-swap", m)?));
        mem_set = true;
    }
    if mem_set {
        r.set_memory(Some(mem));
    }
    let mut cpu: LinuxCpu = r.cpu().clone().unwrap_or_default();
    let cpu_set = r.cpu().is_some()
        || a.cpu_period.is_some()
        || a.cpu_quota.is_some()
        || a.cpu_share.is_some()
        || a.cpuset_cpus.is_some()
        || a.cpuset_mems.is_some()
        || a.cpu_rt_period.is_some()
        || a.cpu_rt_runtime.is_some();
    if let Some(v) = a.cpu_period {
        cpu.set_period(Some(v));
    }
    if let Some(v) = a.cpu_quota {
        cpu.set_quota(Some(v));
    }
    if let Some(v) = a.cpu_share {
        cpu.set_shares(Some(v));
    }
    if let Some(v) = a.cpu_rt_period {
        cpu.set_realtime_period(Some(v));
    }
    if let Some(v) = a.cpu_rt_runtime {
        cpu.set_realtime_runtime(Some(v));
    }
    if let Some(v) = &a.cpuset_cpus {
        cpu.set_cpus(Some(v.clone()));
    }
    if let Some(v) = &a.cpuset_mems {
        cpu.set_mems(Some(v.clone()));
    }
    if cpu_set {
        r.set_cpu(Some(cpu));
    }
    if let Some(p) = a.pids_limit {
        let mut pids = LinuxPids::default();
        pids.set_limit(p);
        r.set_pids(Some(pids));
    }
    if let Some(w) = a.blkio_weight {
        let mut b = r.block_io().clone().unwrap_or_default();
        b.set_weight(Some(w));
        r.set_block_io(Some(b));
    }
    let _ = LinuxMemory::default();
    c.update(&r)?;
    Ok(0)
}

fn parse_interval(s: &str) -> Result<std::time::Duration> {
    let (n, unit) = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .map(|i| s.split_at(i))
        .unwrap_or((s, "s"));
    let v: f64 = n
        .parse()
        .map_err(|_| anyhow!("--interval {s:?}: not a duration"))?;
    let secs = match unit {
        "ms" => v / 1000.0,
        "s" | "" => v,
        "m" => v * 60.0,
        _ => bail!("--interval {s:?}: unit must be ms, s or m"),
    };
    if secs <= 0.0 {
        bail!("--interval {s:?}: must be positive");
    }
    Ok(std::time::Duration::from_secs_f64(secs))
}

fn events(root: &StateRoot, id: &str, interval: &str, once: bool) -> Result<i32> {
    let every = parse_interval(interval)?;
    let mut last_oom = None;
    loop {
        let c = Container::open(root, id)?;
        let status = c.status();
        if status == Status::Stopped && !once {
            return Ok(0);
        }
        let stats = c.stats()?;
        let oom = c.oom_kills();
        drop(c);
        let out = serde_json::json!({"type": "stats", "id": id, "data": stats});
        println!("{out}");
        if once {
            return Ok(0);
        }
        if let Some(prev) = last_oom {
            if oom > prev {
                println!("{}", serde_json::json!({"type": "oom", "id": id}));
            }
        }
        last_oom = Some(oom);
        std::io::stdout().flush()?;
        // `events` reports at the interval the user asked for.
        std::thread::sleep(every);
        let _ = std::io::stdout().as_fd();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_parse_by_name_and_number() {
        assert_eq!(parse_signal("9").unwrap(), 9);
        assert_eq!(parse_signal("KILL").unwrap(), 9);
        assert_eq!(parse_signal("sigterm").unwrap(), 15);
        assert!(parse_signal("SIGBOGUS").is_err());
        assert_eq!(parse_signal("0").unwrap(), 0);
        assert!(parse_signal("65").is_err());
        assert_eq!(parse_signal("SIGRTMIN+1").unwrap(), libc::SIGRTMIN() + 1);
    }

    #[test]
    fn ps_output_is_filtered_by_the_pid_column() {
        let text = "UID  PID PPID CMD\nroot 1 0 init\nroot 42 1 sleep 100\nroot 43 1 bash\n";
        assert_eq!(
            filter_ps(text, &[42]).unwrap(),
            vec!["UID  PID PPID CMD", "root 42 1 sleep 100"]
        );
        let aux = "USER PID %CPU COMMAND\nroot 7 0.0 x\n";
        assert_eq!(filter_ps(aux, &[7]).unwrap().len(), 2);
        assert!(filter_ps("USER COMMAND\nroot x\n", &[1]).is_err());
        assert!(filter_ps("PID CMD\nabc x\n", &[1]).is_err());
    }

    #[test]
    fn sizes_and_intervals_parse() {
        assert_eq!(parse_bytes("--memory", "10m").unwrap(), 10 << 20);
        assert_eq!(parse_bytes("--memory", "1024").unwrap(), 1024);
        assert!(parse_bytes("--memory", "ten").is_err());
        assert_eq!(
            parse_interval("500ms").unwrap(),
            std::time::Duration::from_millis(500)
        );
        assert!(parse_interval("-1s").is_err());
    }
}
