//! Tests on this machine's real cgroups. They need root and skip (with a printed reason)
//! otherwise. Every group is removed by a guard even when a test fails, and every child
//! process is killed with it.
//!
//! Children are made with fork(2) from the multi-threaded test harness, so between fork and
//! exit a child only makes raw system calls (no allocation, no locks).

use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::libc;
use nix::sys::signal::Signal;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{fork, ForkResult, Pid};
use oci_spec::runtime::{
    LinuxHugepageLimitBuilder, LinuxMemoryBuilder, LinuxPidsBuilder, LinuxResourcesBuilder,
};
use porta_cgroups::{CgroupConfig, CgroupMode, CgroupState, CgroupVersion, ContainerCgroup};

fn root_or_skip(test: &str) -> bool {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("{test}: skipped: needs root to make cgroups");
        return false;
    }
    true
}

/// Removes the groups (and kills their processes) when dropped, even after a failed assert.
struct Guard {
    cg: Option<ContainerCgroup>,
    state: CgroupState,
}

impl Guard {
    fn new(path: Option<&str>, id: &str) -> Guard {
        let cfg = CgroupConfig {
            cgroups_path: path.map(PathBuf::from),
            container_id: id.into(),
            systemd: false,
            rootless: false,
            resources: None,
        };
        let cg = ContainerCgroup::create(&cfg).expect("create cgroups");
        let state = cg.state();
        Guard {
            cg: Some(cg),
            state,
        }
    }

    fn cg(&self) -> &ContainerCgroup {
        self.cg.as_ref().expect("not destroyed yet")
    }

    /// Destroys now and checks that no directory is left in any hierarchy.
    fn destroy_and_check(&mut self) {
        if let Some(cg) = self.cg.take() {
            cg.destroy().expect("destroy");
        }
        for d in &self.state.dirs {
            assert!(!d.path.exists(), "{} left behind", d.path.display());
        }
        // Idempotent: destroying again through the saved state is fine.
        ContainerCgroup::open(&self.state)
            .unwrap()
            .destroy()
            .expect("second destroy");
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(cg) = self.cg.take() {
            if let Err(e) = cg.destroy() {
                eprintln!("cleanup failed: {e}");
            }
        }
        // The per-test parent group (see `unique`), made by `create`.
        for d in &self.state.dirs {
            if let Some(parent) = d.path.parent() {
                if parent
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("porta-test-"))
                {
                    let _ = std::fs::remove_dir(parent);
                }
            }
        }
    }
}

/// Waits for a child that must have been killed by `destroy`.
fn assert_killed(pid: Pid) {
    assert_eq!(
        waitpid(pid, None).unwrap(),
        WaitStatus::Signaled(pid, Signal::SIGKILL, false),
        "{pid} was not killed"
    );
}

/// A cgroupsPath of its own for each test: `/porta-test-<pid>-<name>/ctr`.
fn unique(name: &str) -> String {
    format!("/porta-test-{}-{name}/ctr", std::process::id())
}

fn cstrings(paths: &[PathBuf]) -> Vec<CString> {
    paths
        .iter()
        .map(|p| CString::new(p.as_os_str().as_encoded_bytes()).unwrap())
        .collect()
}

/// In a forked child: joins every `cgroup.procs` given by writing "0". Raw syscalls only.
fn child_join(procs: &[CString]) {
    for p in procs {
        // SAFETY: plain system calls on valid, NUL-terminated strings prepared before fork.
        unsafe {
            let fd = libc::open(p.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd < 0 || libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                libc::_exit(100);
            }
            libc::close(fd);
        }
    }
}

fn child_pause() -> ! {
    loop {
        // SAFETY: pause(2) has no preconditions.
        unsafe {
            libc::pause();
        }
    }
}

fn pipe() -> (OwnedFd, OwnedFd) {
    nix::unistd::pipe().unwrap()
}

/// Forks a child that joins `procs` and sleeps; returns its pid once it has joined.
fn spawn_sleeper(procs: &[PathBuf]) -> Pid {
    let procs = cstrings(procs);
    let (rd, wr) = pipe();
    // SAFETY: the child only makes raw system calls (see the module docs).
    match unsafe { fork() }.unwrap() {
        ForkResult::Child => {
            child_join(&procs);
            // SAFETY: writing one byte to a pipe we own.
            unsafe {
                libc::write(wr.as_raw_fd(), b"j".as_ptr().cast(), 1);
            }
            child_pause()
        }
        ForkResult::Parent { child } => {
            drop(wr);
            let mut b = [0u8; 1];
            assert_eq!(
                nix::unistd::read(rd.as_raw_fd(), &mut b).unwrap(),
                1,
                "child did not join"
            );
            child
        }
    }
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn layout_leaves_and_destroy() {
    if !root_or_skip("layout_leaves_and_destroy") {
        return;
    }
    let mut g = Guard::new(Some(&unique("layout")), "layout");
    let st = g.state.clone();
    assert!(!st.dirs.is_empty());
    for d in &st.dirs {
        assert!(d.path.join("payload").is_dir(), "{}", d.path.display());
        assert!(d.path.join("porta").is_dir(), "{}", d.path.display());
        if d.controllers.iter().any(|c| c == "cpuset") {
            // v1 cpuset groups got cpus and mems from their parents.
            assert!(!read(&d.path.join("payload/cpuset.cpus")).trim().is_empty());
            assert!(!read(&d.path.join("payload/cpuset.mems")).trim().is_empty());
        }
    }
    if st.mode == CgroupMode::Hybrid {
        assert!(st.dirs.iter().any(|d| d.version == CgroupVersion::V2));
    }
    // A server in porta/, a payload process, and a group the container made itself.
    let server = spawn_sleeper(&g.cg().server_procs_files());
    let payload = spawn_sleeper(&g.cg().payload_procs_files());
    for d in &st.dirs {
        std::fs::create_dir(d.path.join("payload/nested")).unwrap();
        assert!(read(&d.path.join("porta/cgroup.procs")).contains(&server.to_string()));
    }
    assert_eq!(g.cg().payload_pids().unwrap(), [payload.as_raw()]);
    // A process added by pid lands in the leaf too.
    let other = spawn_sleeper(&[]);
    g.cg().add_payload(other.as_raw()).unwrap();
    let mut want = vec![payload.as_raw(), other.as_raw()];
    want.sort();
    assert_eq!(g.cg().payload_pids().unwrap(), want);

    g.destroy_and_check();
    for pid in [server, payload, other] {
        assert_killed(pid);
    }
}

#[test]
fn pids_limit_stops_forks() {
    if !root_or_skip("pids_limit_stops_forks") {
        return;
    }
    let g = Guard::new(Some(&unique("pids")), "pids");
    let r = LinuxResourcesBuilder::default()
        .pids(LinuxPidsBuilder::default().limit(5).build().unwrap())
        .build()
        .unwrap();
    g.cg().apply(&r).unwrap();
    let procs = cstrings(&g.cg().payload_procs_files());
    let (rd, wr) = pipe();
    // SAFETY: the child only makes raw system calls.
    let child = match unsafe { fork() }.unwrap() {
        ForkResult::Child => {
            child_join(&procs);
            let mut forked: u8 = 0;
            for _ in 0..20 {
                // SAFETY: raw fork; grandchildren only pause.
                let pid = unsafe { libc::fork() };
                if pid == 0 {
                    child_pause();
                }
                if pid < 0 {
                    break;
                }
                forked += 1;
            }
            // SAFETY: writing one byte to a pipe we own.
            unsafe {
                libc::write(wr.as_raw_fd(), (&forked as *const u8).cast(), 1);
            }
            child_pause()
        }
        ForkResult::Parent { child } => child,
    };
    drop(wr);
    let mut b = [0u8; 1];
    assert_eq!(nix::unistd::read(rd.as_raw_fd(), &mut b).unwrap(), 1);
    // The child itself is one of the 5.
    assert_eq!(b[0], 4, "forks allowed under a pids limit of 5");
    let pids = g.cg().payload_pids().unwrap();
    assert_eq!(pids.len(), 5, "{pids:?}");
    assert!(pids.contains(&child.as_raw()));

    // The payload is at its limit, yet a server in porta/ can still fork (the reserve).
    let server_procs = cstrings(&g.cg().server_procs_files());
    // SAFETY: the child only makes raw system calls.
    let server = match unsafe { fork() }.unwrap() {
        ForkResult::Child => {
            child_join(&server_procs);
            // SAFETY: raw fork and wait; the grandchild exits at once.
            unsafe {
                let pid = libc::fork();
                if pid == 0 {
                    libc::_exit(0);
                }
                if pid < 0 {
                    libc::_exit(1);
                }
                let mut st = 0;
                libc::waitpid(pid, &mut st, 0);
                libc::_exit(0);
            }
        }
        ForkResult::Parent { child } => child,
    };
    assert_eq!(
        waitpid(server, None).unwrap(),
        WaitStatus::Exited(server, 0),
        "a server could not fork while the payload was at its pids limit"
    );

    let s = g.cg().stats().unwrap();
    assert_eq!(s.pids.current, 5);
    assert_eq!(s.pids.limit, 5);
    let j = serde_json::to_value(&s).unwrap();
    assert_eq!(j["pids"]["current"], 5);
    assert!(j["cpu"]["usage"].is_object());
    assert!(j["memory"]["usage"]["limit"].is_u64());
    drop(g);
    assert_killed(child);
}

#[test]
fn memory_limit_and_oom_kill() {
    if !root_or_skip("memory_limit_and_oom_kill") {
        return;
    }
    let g = Guard::new(Some(&unique("mem")), "mem");
    let limit: i64 = 32 << 20;
    let mut mem = LinuxMemoryBuilder::default().limit(limit);
    let swap_accounting = g
        .cg()
        .dirs()
        .iter()
        .any(|d| d.path.join("memory.memsw.limit_in_bytes").exists());
    if swap_accounting {
        mem = mem.swap(limit);
    }
    let r = LinuxResourcesBuilder::default()
        .memory(mem.build().unwrap())
        .build()
        .unwrap();
    g.cg().apply(&r).unwrap();
    let mem_dir = g
        .cg()
        .dirs()
        .iter()
        .find(|d| d.controllers.iter().any(|c| c == "memory"))
        .expect("memory hierarchy")
        .path
        .clone();
    let file = if mem_dir.join("memory.limit_in_bytes").exists() {
        "memory.limit_in_bytes"
    } else {
        "memory.max"
    };
    assert_eq!(read(&mem_dir.join(file)).trim(), limit.to_string());
    assert_eq!(g.cg().oom_kill_count().unwrap(), 0);

    // A child that touches 128 MiB in a 32 MiB group is killed by the OOM killer.
    let procs = cstrings(&g.cg().payload_procs_files());
    // SAFETY: the child only makes raw system calls.
    let child = match unsafe { fork() }.unwrap() {
        ForkResult::Child => {
            child_join(&procs);
            let len = 128usize << 20;
            // SAFETY: anonymous private mapping; every page written is inside it.
            unsafe {
                let p = libc::mmap(
                    std::ptr::null_mut(),
                    len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                );
                if p == libc::MAP_FAILED {
                    libc::_exit(101);
                }
                let p = p.cast::<u8>();
                let mut i = 0;
                while i < len {
                    *p.add(i) = 1;
                    i += 4096;
                }
                libc::_exit(0);
            }
        }
        ForkResult::Parent { child } => child,
    };
    let st = waitpid(child, None).unwrap();
    assert_eq!(
        st,
        WaitStatus::Signaled(child, Signal::SIGKILL, false),
        "the child should have been OOM-killed"
    );
    assert!(g.cg().oom_kill_count().unwrap() >= 1);
    let s = g.cg().stats().unwrap();
    assert_eq!(s.memory.usage.limit, limit as u64);
    assert!(s.memory.usage.failcnt > 0 || s.memory.usage.max > 0);
}

#[test]
fn freeze_and_thaw_payload_only() {
    if !root_or_skip("freeze_and_thaw_payload_only") {
        return;
    }
    let g = Guard::new(Some(&unique("freeze")), "freeze");
    let sleeper = spawn_sleeper(&g.cg().payload_procs_files());
    let server = spawn_sleeper(&g.cg().server_procs_files());
    assert!(!g.cg().is_frozen().unwrap());
    g.cg().freeze().unwrap();
    assert!(g.cg().is_frozen().unwrap());
    // The server leaf keeps running.
    for d in g.cg().dirs() {
        let f = d.path.join("porta/freezer.state");
        if f.exists() {
            assert_eq!(read(&f).trim(), "THAWED");
        }
    }
    // A frozen process does not act on a signal until thawed.
    nix::sys::signal::kill(sleeper, Signal::SIGTERM).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(100));
    assert_eq!(
        waitpid(sleeper, Some(WaitPidFlag::WNOHANG)).unwrap(),
        WaitStatus::StillAlive
    );
    g.cg().thaw().unwrap();
    assert!(!g.cg().is_frozen().unwrap());
    assert_eq!(
        waitpid(sleeper, None).unwrap(),
        WaitStatus::Signaled(sleeper, Signal::SIGTERM, false)
    );
    // Destroy works on a frozen group too.
    let again = spawn_sleeper(&g.cg().payload_procs_files());
    g.cg().freeze().unwrap();
    drop(g);
    assert_killed(again);
    assert_killed(server);
}

#[test]
fn default_path_is_relative_to_own_cgroup() {
    if !root_or_skip("default_path_is_relative_to_own_cgroup") {
        return;
    }
    let id = format!("porta-test-default-{}", std::process::id());
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap();
    let mut g = Guard::new(None, &id);
    for d in &g.state.dirs {
        assert!(d.cgroup_path.ends_with(&id), "{}", d.cgroup_path.display());
        if d.version == CgroupVersion::V1 {
            // v1: below our own group of that hierarchy.
            let line = own
                .lines()
                .find(|l| {
                    let mut c: Vec<&str> = l.split(':').nth(1).unwrap_or("").split(',').collect();
                    c.sort();
                    c == d.controllers.iter().map(String::as_str).collect::<Vec<_>>()
                })
                .expect("own cgroup line");
            let own_path = line.splitn(3, ':').nth(2).unwrap();
            assert_eq!(d.cgroup_path, Path::new(own_path).join(&id));
        }
    }
    g.destroy_and_check();
}

#[test]
fn hugetlb_limit_on_this_host() {
    if !root_or_skip("hugetlb_limit_on_this_host") {
        return;
    }
    if !Path::new("/sys/kernel/mm/hugepages/hugepages-2048kB").exists() {
        eprintln!("hugetlb_limit_on_this_host: skipped: no 2 MiB huge pages");
        return;
    }
    let g = Guard::new(Some(&unique("huge")), "huge");
    let Some(d) = g
        .cg()
        .dirs()
        .iter()
        .find(|d| d.controllers.iter().any(|c| c == "hugetlb"))
        .cloned()
    else {
        eprintln!("hugetlb_limit_on_this_host: skipped: no hugetlb controller");
        return;
    };
    let r = LinuxResourcesBuilder::default()
        .hugepage_limits(vec![LinuxHugepageLimitBuilder::default()
            .page_size("2MB")
            .limit(8i64 << 20)
            .build()
            .unwrap()])
        .build()
        .unwrap();
    g.cg().apply(&r).unwrap();
    let file = match d.version {
        CgroupVersion::V2 => "hugetlb.2MB.max",
        CgroupVersion::V1 => "hugetlb.2MB.limit_in_bytes",
    };
    assert_eq!(read(&d.path.join(file)).trim(), (8u64 << 20).to_string());
    let s = g.cg().stats().unwrap();
    assert!(s.hugetlb.contains_key("2MB"), "{:?}", s.hugetlb);
}

#[test]
fn device_rules_and_update_on_v1() {
    if !root_or_skip("device_rules_and_update_on_v1") {
        return;
    }
    let g = Guard::new(Some(&unique("devices")), "devices");
    let Some(dev) = g
        .cg()
        .dirs()
        .iter()
        .find(|d| d.version == CgroupVersion::V1 && d.controllers.iter().any(|c| c == "devices"))
        .cloned()
    else {
        eprintln!("device_rules_and_update_on_v1: skipped: no v1 devices hierarchy");
        return;
    };
    let r = LinuxResourcesBuilder::default()
        .devices(vec![oci_spec::runtime::LinuxDeviceCgroupBuilder::default()
            .allow(false)
            .access("rwm")
            .build()
            .unwrap()])
        .pids(LinuxPidsBuilder::default().limit(5).build().unwrap())
        .build()
        .unwrap();
    g.cg().apply(&r).unwrap();
    for sub in ["payload", "porta"] {
        let list = read(&dev.path.join(sub).join("devices.list"));
        assert!(!list.contains("a *:* rwm"), "{sub}: {list}");
        assert!(list.contains("c 1:3 rwm"), "{sub}: {list}");
        assert!(list.contains("c 136:* rwm"), "{sub}: {list}");
    }
    // `porta update`: a new pids limit, device rules untouched.
    let r = LinuxResourcesBuilder::default()
        .pids(LinuxPidsBuilder::default().limit(10).build().unwrap())
        .build()
        .unwrap();
    g.cg().update(&r).unwrap();
    let pids_dir = g
        .cg()
        .dirs()
        .iter()
        .find(|d| d.controllers.iter().any(|c| c == "pids"))
        .unwrap()
        .path
        .clone();
    assert_eq!(read(&pids_dir.join("payload/pids.max")).trim(), "10");
    assert_eq!(
        read(&pids_dir.join("pids.max")).trim(),
        (10 + porta_cgroups::SERVER_PIDS_RESERVE).to_string()
    );
    assert!(!read(&dev.path.join("payload/devices.list")).contains("a *:* rwm"));
}

/// Removes a bare directory made by a test.
struct DirGuard(PathBuf);

impl Drop for DirGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

#[test]
fn v2_device_filter_blocks_devices() {
    if !root_or_skip("v2_device_filter_blocks_devices") {
        return;
    }
    let setup = porta_cgroups::detect().unwrap();
    let Some(u) = setup.unified() else {
        eprintln!("v2_device_filter_blocks_devices: skipped: no cgroup2 hierarchy");
        return;
    };
    let dir = u
        .mount_point
        .join(format!("porta-test-{}-bpf", std::process::id()));
    std::fs::create_dir(&dir).unwrap();
    let _guard = DirGuard(dir.clone());
    use oci_spec::runtime::{LinuxDeviceCgroupBuilder, LinuxDeviceType};
    let rules = vec![
        LinuxDeviceCgroupBuilder::default()
            .allow(false)
            .access("rwm")
            .build()
            .unwrap(),
        LinuxDeviceCgroupBuilder::default()
            .allow(true)
            .typ(LinuxDeviceType::C)
            .major(1i64)
            .minor(3i64)
            .access("rwm")
            .build()
            .unwrap(),
    ];
    porta_cgroups::devices_v2::attach(&dir, &rules).unwrap();
    let procs = cstrings(&[dir.join("cgroup.procs")]);
    let null = CString::new("/dev/null").unwrap();
    let zero = CString::new("/dev/zero").unwrap();
    // SAFETY: the child only makes raw system calls.
    let child = match unsafe { fork() }.unwrap() {
        ForkResult::Child => {
            child_join(&procs);
            // SAFETY: open(2) on valid strings; exit codes report the outcome.
            unsafe {
                if libc::open(null.as_ptr(), libc::O_RDWR) < 0 {
                    libc::_exit(1);
                }
                if libc::open(zero.as_ptr(), libc::O_RDONLY) >= 0 {
                    libc::_exit(2);
                }
                if *libc::__errno_location() != libc::EPERM {
                    libc::_exit(3);
                }
                libc::_exit(0);
            }
        }
        ForkResult::Parent { child } => child,
    };
    let st = waitpid(child, None).unwrap();
    assert_eq!(
        st,
        WaitStatus::Exited(child, 0),
        "1: /dev/null refused, 2: /dev/zero allowed, 3: wrong errno"
    );
}

#[test]
fn signal_payload_reaches_every_payload_process_only() {
    if !root_or_skip("signal_payload_reaches_every_payload_process_only") {
        return;
    }
    let g = Guard::new(Some(&unique("signal")), "signal");
    let a = spawn_sleeper(&g.cg().payload_procs_files());
    let b = spawn_sleeper(&g.cg().payload_procs_files());
    let server = spawn_sleeper(&g.cg().server_procs_files());
    let mut sent = g.cg().signal_payload(Signal::SIGTERM).unwrap();
    sent.sort();
    let mut want = vec![a.as_raw(), b.as_raw()];
    want.sort();
    assert_eq!(sent, want);
    for pid in [a, b] {
        assert_eq!(
            waitpid(pid, None).unwrap(),
            WaitStatus::Signaled(pid, Signal::SIGTERM, false)
        );
    }
    assert!(!g.cg().is_frozen().unwrap(), "left frozen");
    assert_eq!(
        waitpid(server, Some(WaitPidFlag::WNOHANG)).unwrap(),
        WaitStatus::StillAlive,
        "the server was signalled"
    );
    drop(g);
    assert_killed(server);
}

/// Run by `rootless_without_delegation_degrades_clearly` as user nobody.
#[test]
fn rootless_child() {
    let Some(path) = std::env::var_os("PORTA_CGROUPS_ROOTLESS_CHILD") else {
        return; // only meaningful when started by the test below
    };
    assert!(!nix::unistd::geteuid().is_root());
    let cfg = CgroupConfig {
        cgroups_path: Some(PathBuf::from(path)),
        container_id: "rootless".into(),
        systemd: false,
        rootless: true,
        resources: None,
    };
    // Not rootless: the permission error is reported with the directory.
    let mut strict = cfg.clone();
    strict.rootless = false;
    let e = ContainerCgroup::create(&strict).unwrap_err().to_string();
    assert!(
        e.contains("cannot create cgroup directory /sys/fs/cgroup/"),
        "{e}"
    );
    // Rootless: no writable hierarchy, so no group; no limit asked works, a limit fails
    // with the controller named.
    let cg = ContainerCgroup::create(&cfg).unwrap();
    assert!(cg.dirs().is_empty(), "{:?}", cg.dirs());
    cg.apply(&Default::default()).unwrap();
    let r = LinuxResourcesBuilder::default()
        .pids(LinuxPidsBuilder::default().limit(5).build().unwrap())
        .build()
        .unwrap();
    let e = cg.apply(&r).unwrap_err().to_string();
    assert!(e.contains("pids") && e.contains("rootless"), "{e}");
    assert!(cg.payload_pids().unwrap().is_empty());
    cg.destroy().unwrap();
}

#[test]
fn rootless_without_delegation_degrades_clearly() {
    if !root_or_skip("rootless_without_delegation_degrades_clearly") {
        return;
    }
    use std::os::unix::process::CommandExt;
    let exe = std::env::current_exe().unwrap();
    let path = unique("rootless");
    let out = std::process::Command::new(exe)
        .args(["--exact", "rootless_child", "--nocapture"])
        .env("PORTA_CGROUPS_ROOTLESS_CHILD", &path)
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && text.contains("1 passed"), "{text}");
    for h in porta_cgroups::detect().unwrap().hierarchies {
        assert!(
            !h.mount_point.join(path.trim_start_matches('/')).exists(),
            "rootless run left a group in {}",
            h.mount_point.display()
        );
    }
}

#[test]
fn a_child_forked_by_join_starts_in_the_cgroup2_leaf_and_enters_the_v1_leaves_itself() {
    if !root_or_skip(
        "a_child_forked_by_join_starts_in_the_cgroup2_leaf_and_enters_the_v1_leaves_itself",
    ) {
        return;
    }
    use porta_cgroups::join::{Forked, Join};
    let g = Guard::new(Some(&unique("join")), "join");
    let has_v2 = g.state.dirs.iter().any(|d| d.version == CgroupVersion::V2);
    let join = Join::new(&g.cg().payload_procs_files()).unwrap();
    let (rd, wr) = pipe();
    // The child makes raw system calls only on its success path: clone3 (in fork), then
    // open/write/close of each leaf file through a stack-built path (see the module docs).
    let pid = match join.fork(0).unwrap() {
        Forked::Child { cloned_into } => {
            let entered = join.enter(cloned_into).is_ok();
            let b = [cloned_into as u8, entered as u8];
            // SAFETY: writing two bytes to a pipe we own.
            unsafe {
                libc::write(wr.as_raw_fd(), b.as_ptr().cast(), 2);
            }
            child_pause()
        }
        Forked::Parent(pid) => Pid::from_raw(pid),
    };
    drop(wr);
    let mut b = [0u8; 2];
    assert_eq!(nix::unistd::read(rd.as_raw_fd(), &mut b).unwrap(), 2);
    // Started inside the cgroup2 leaf wherever the host has one (no migration there).
    assert_eq!(b[0] == 1, has_v2, "cloned into the cgroup2 leaf: {}", b[0]);
    assert_eq!(b[1], 1, "the child could not enter the v1 leaves");
    // In the payload leaf of every hierarchy, and in no other group.
    for d in &g.state.dirs {
        let procs = read(&d.path.join("payload/cgroup.procs"));
        assert!(
            procs.lines().any(|l| l == pid.as_raw().to_string()),
            "{}: {procs:?}",
            d.path.display()
        );
        assert!(!read(&d.path.join("porta/cgroup.procs")).contains(&pid.as_raw().to_string()));
    }
    assert_eq!(g.cg().payload_pids().unwrap(), [pid.as_raw()]);
    drop(g);
    assert_killed(pid);
}
