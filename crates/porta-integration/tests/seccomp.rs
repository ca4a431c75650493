//! seccomp: a syscall blocked with errnoRet, a rule with an argument condition, the
//! filter visible in /proc/self/status.

use porta_integration::*;

fn seccomp_bundle(script: &str, syscalls: Value) -> Bundle {
    let mut b = Bundle::new(&[]);
    b.sh(script);
    b.seccomp(json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "syscalls": syscalls
    }));
    b
}

fn run(tag: &str, b: Bundle) -> String {
    let c = Container::new(tag, b);
    let o = c.run();
    assert_eq!(o.code, 0, "{o}\n{}", c.output());
    c.output()
}

#[test]
fn mkdir_blocked_with_eperm() {
    require_root!();
    let b = seccomp_bundle(
        "exec 2>&1; mkdir /tmp/blocked || echo mkdir-failed; [ -d /tmp/blocked ] && echo exists; grep '^Seccomp:' /proc/self/status; touch /tmp/file && echo touch-ok",
        json!([{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]),
    );
    let out = run("sc-mkdir", b);
    assert!(out.contains("mkdir-failed"), "{out}");
    assert!(
        out.contains("Operation not permitted"),
        "mkdir did not fail with EPERM: {out}"
    );
    assert!(!out.contains("exists"), "{out}");
    assert!(out.contains("Seccomp:\t2"), "{out}");
    assert!(out.contains("touch-ok"), "{out}");
}

#[test]
fn errno_ret_value_is_used() {
    require_root!();
    let b = seccomp_bundle(
        "exec 2>&1; mkdir /tmp/blocked || echo mkdir-failed",
        json!([{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13}]),
    );
    let out = run("sc-errno", b);
    assert!(
        out.contains("Permission denied"),
        "errnoRet 13 (EACCES) not returned: {out}"
    );
}

#[test]
fn argument_condition() {
    require_root!();
    // chmod to mode 0777 is refused; any other mode is allowed
    let b = seccomp_bundle(
        "exec 2>&1; touch /tmp/f; chmod 777 /tmp/f || echo chmod777-failed; chmod 750 /tmp/f && echo chmod750-ok; stat -c %a /tmp/f",
        json!([
            {"names": ["chmod"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1,
             "args": [{"index": 1, "value": 511, "op": "SCMP_CMP_EQ"}]},
            {"names": ["fchmodat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1,
             "args": [{"index": 2, "value": 511, "op": "SCMP_CMP_EQ"}]}
        ]),
    );
    let out = run("sc-args", b);
    assert!(out.contains("chmod777-failed"), "{out}");
    assert!(out.contains("chmod750-ok"), "{out}");
    assert!(out.lines().any(|l| l.trim() == "750"), "{out}");
}

#[test]
fn masked_equality_condition() {
    require_root!();
    // SCMP_CMP_MASKED_EQ: refuse any mode with the world-write bit set
    let b = seccomp_bundle(
        "exec 2>&1; touch /tmp/f; chmod 602 /tmp/f || echo ww-failed; chmod 640 /tmp/f && echo ok640",
        json!([
            {"names": ["chmod"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1,
             "args": [{"index": 1, "value": 2, "valueTwo": 2, "op": "SCMP_CMP_MASKED_EQ"}]},
            {"names": ["fchmodat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1,
             "args": [{"index": 2, "value": 2, "valueTwo": 2, "op": "SCMP_CMP_MASKED_EQ"}]}
        ]),
    );
    let out = run("sc-masked", b);
    assert!(out.contains("ww-failed"), "{out}");
    assert!(out.contains("ok640"), "{out}");
}

#[test]
fn default_errno_with_allowlist() {
    require_root!();
    // default: refuse with EPERM; the rules allow what busybox sh and echo need,
    // but not mkdir
    let allowed: Vec<&str> = [PROGRAM_ONLY, RUNTIME_SET_UP].concat();
    let mut b = Bundle::new(&[]);
    b.sh("exec 2>&1; echo before; mkdir /tmp/d || echo mkdir-failed");
    b.seccomp(json!({
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": 1,
        "architectures": ["SCMP_ARCH_X86_64"],
        "syscalls": [{"names": allowed, "action": "SCMP_ACT_ALLOW"}]
    }));
    let out = run("sc-default", b);
    assert!(out.contains("before"), "{out}");
    assert!(out.contains("mkdir-failed"), "{out}");
    assert!(out.contains("Operation not permitted"), "{out}");
}

/// struct seccomp_notif (80 bytes) and struct seccomp_notif_resp (24 bytes).
#[repr(C)]
#[derive(Default)]
struct Notif {
    id: u64,
    pid: u32,
    flags: u32,
    nr: i32,
    arch: u32,
    ip: u64,
    args: [u64; 6],
}
#[repr(C)]
struct NotifResp {
    id: u64,
    val: i64,
    error: i32,
    flags: u32,
}
const NOTIF_RECV: u64 = 0xC050_2100; // _IOWR('!', 0, struct seccomp_notif)
const NOTIF_SEND: u64 = 0xC018_2101; // _IOWR('!', 1, struct seccomp_notif_resp)

#[test]
fn notify_listener_decides() {
    require_root!();
    notify_listener("sc-notify", true);
}

/// Without noNewPrivileges the filter is loaded while CAP_SYS_ADMIN is held; the
/// notification fd still reaches the listener at create.
#[test]
fn notify_listener_decides_no_new_privs_off() {
    require_root!();
    notify_listener("sc-notify-nnp0", false);
}

fn notify_listener(tag: &str, nnp: bool) {
    let mut b = Bundle::new(&[]);
    b.sh("exec 2>&1; mkdir /tmp/notified || echo mkdir-failed; echo done");
    b.config["process"]["noNewPrivileges"] = json!(nnp);
    let c = Container::new(tag, b);
    let sock = ConsoleSocket::new(c.bundle.path());
    let mut cfg = c.bundle.config.clone();
    cfg["linux"]["seccomp"] = json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "listenerPath": sock.path_str(),
        "listenerMetadata": "pit-metadata",
        "architectures": ["SCMP_ARCH_X86_64"],
        "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_NOTIFY"}]
    });
    std::fs::write(
        c.bundle.file("config.json"),
        serde_json::to_vec(&cfg).unwrap(),
    )
    .unwrap();
    c.create().expect_ok();
    let (pty, msg) = sock.master().expect("seccomp notify fd over listenerPath");
    let st: Value = serde_json::from_str(&msg)
        .unwrap_or_else(|e| panic!("listener message not JSON ({e}): {msg}"));
    assert_eq!(st["metadata"], "pit-metadata", "{st}");
    assert_eq!(st["state"]["id"], c.id.as_str(), "{st}");
    let fd = std::os::fd::AsRawFd::as_raw_fd(&pty.f);
    let h = std::thread::spawn(move || {
        let mut handled = 0;
        loop {
            let mut p = libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd, alive for the call.
            if unsafe { libc::poll(&mut p, 1, 10_000) } <= 0 || p.revents & libc::POLLIN == 0 {
                break;
            }
            let mut n = Notif::default();
            // SAFETY: the ioctl fills a `struct seccomp_notif`, which `Notif` lays out in full.
            if unsafe { libc::ioctl(fd, NOTIF_RECV as _, &mut n as *mut Notif) } != 0 {
                break;
            }
            let mut r = NotifResp {
                id: n.id,
                val: 0,
                error: -libc::EROFS,
                flags: 0,
            };
            // SAFETY: the ioctl reads a `struct seccomp_notif_resp`, which `NotifResp` lays out.
            unsafe { libc::ioctl(fd, NOTIF_SEND as _, &mut r as *mut NotifResp) };
            handled += 1;
        }
        (handled, pty)
    });
    c.start().expect_ok();
    c.wait_stopped(20);
    let out = c.output();
    assert!(
        out.contains("Read-only file system"),
        "the listener's answer (EROFS) did not reach mkdir: {out}"
    );
    assert!(out.contains("done"), "{out}");
    assert!(!c.bundle.rootfs().join("tmp/notified").exists());
    let (handled, _pty) = h.join().unwrap();
    assert!(handled >= 1);
}

/// What busybox sh, echo, cat and sleep need, and nothing of a runtime's own set-up:
/// no close_range, setgroups, setres[ug]id, prctl, capset, keyctl, mount, pivot_root,
/// openat2, umask, setsid, chdir. The filter must be loaded after the runtime's last
/// such call, or the container dies before its program runs.
const PROGRAM_ONLY: &[&str] = &[
    "read",
    "write",
    "open",
    "openat",
    "close",
    "fstat",
    "newfstatat",
    "stat",
    "lstat",
    "mmap",
    "mprotect",
    "munmap",
    "brk",
    "rt_sigaction",
    "rt_sigprocmask",
    "rt_sigreturn",
    "ioctl",
    "access",
    "getpid",
    "getppid",
    "getuid",
    "geteuid",
    "getgid",
    "getegid",
    "execve",
    "exit",
    "exit_group",
    "arch_prctl",
    "set_tid_address",
    "set_robust_list",
    "prlimit64",
    "getrandom",
    "rseq",
    "fcntl",
    "dup2",
    "dup3",
    "wait4",
    "clone",
    "fork",
    "vfork",
    "getcwd",
    "readlink",
    "futex",
    "sigaltstack",
    "getpgrp",
    "setpgid",
    "getdents64",
    "lseek",
    "pread64",
    "statx",
    "faccessat",
    "faccessat2",
    "clone3",
    "nanosleep",
    "clock_nanosleep",
    "clock_gettime",
    "gettimeofday",
    "restart_syscall",
    "sched_yield",
    "madvise",
    "gettid",
    "tgkill",
    "kill",
    "poll",
    "pipe",
    "pipe2",
    "uname",
    "sysinfo",
    "getrlimit",
    "writev",
    "readv",
    "sched_getaffinity",
    "epoll_pwait",
    "epoll_ctl",
    "epoll_create1",
    "epoll_wait",
];

/// What a runtime's own set-up calls after the filter may be loaded (and busybox's
/// `mkdir`-free shell beyond [`PROGRAM_ONLY`]): with both, a container runs under a
/// default-deny filter on any runtime.
const RUNTIME_SET_UP: &[&str] = &[
    "chdir",
    "capget",
    "capset",
    "prctl",
    "setgroups",
    "setuid",
    "setgid",
    "setresuid",
    "setresgid",
    "fchown",
    "fchdir",
    "close_range",
    "select",
    "pselect6",
    "mknodat",
    "keyctl",
    "setsid",
    "umask",
    "personality",
    "sethostname",
    "dup",
    "fstatfs",
    "statfs",
    "getpgid",
    "getsid",
    "mremap",
    "waitid",
    "readlinkat",
    "fchmod",
    "fsync",
    "setrlimit",
    "mount",
    "umount2",
    "pivot_root",
    "openat2",
    "fchownat",
    "unshare",
    "setns",
    "getitimer",
    "setitimer",
    "alarm",
    "time",
    "rt_sigsuspend",
    "rt_sigtimedwait",
    "sched_setaffinity",
    "membarrier",
    "fchmodat",
];

fn program_only_profile(extra: &[&str]) -> Value {
    let mut names: Vec<&str> = PROGRAM_ONLY.to_vec();
    names.extend_from_slice(extra);
    json!({
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": 1,
        "architectures": ["SCMP_ARCH_X86_64"],
        "syscalls": [
            {"names": names, "action": "SCMP_ACT_ALLOW"},
            {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13}
        ]
    })
}

/// What runc 1.1 itself calls after loading a filter (its Go runtime and, without
/// no_new_privs, its switch of user and capabilities), so that the tests below run on
/// runc too; close_range is not among them.
const RUNC_SETUP: &[&str] = &[
    "prctl",
    "fstatfs",
    "capget",
    "capset",
    "chdir",
    "setgroups",
    "setresuid",
    "setresgid",
    "setuid",
    "setgid",
];

/// A generated profile of the kind most engines ship without close_range: a container
/// without noNewPrivileges (the filter is then loaded while CAP_SYS_ADMIN is held) runs,
/// for create + start and for exec. Porta used to mark fds close-on-exec with close_range
/// after loading such a filter and died with "Operation not permitted".
#[test]
fn profile_without_close_range_no_new_privs_off() {
    require_root!();
    let mut b = Bundle::new(&[]);
    b.sh("exec 2>&1; echo started; id -u; mkdir /tmp/d || echo mkdir-refused; grep '^Seccomp:' /proc/self/status");
    b.config["process"]["noNewPrivileges"] = json!(false);
    b.user(1000, 1000, &[5]);
    b.seccomp(program_only_profile(RUNC_SETUP));
    let c = Container::new("sc-nocr", b);
    c.create().expect_ok();
    c.start().expect_ok();
    c.wait_stopped(60);
    let out = c.output();
    assert!(out.contains("started"), "the program did not run: {out}");
    assert!(out.lines().any(|l| l == "1000"), "{out}");
    assert!(
        out.contains("Permission denied"),
        "errnoRet 13 not seen: {out}"
    );
    assert!(out.contains("Seccomp:\t2"), "{out}");

    let mut b = Bundle::new(&["sleep", "1000"]);
    b.config["process"]["noNewPrivileges"] = json!(false);
    b.seccomp(program_only_profile(RUNC_SETUP));
    let c = Container::new("sc-nocr-ex", b);
    c.create_start();
    let o = c.exec(
        &["--user", "1000:1000"],
        &["sh", "-c", "echo in-exec; id -u; mkdir /tmp/e || echo mkdir-refused; grep '^Seccomp:' /proc/self/status"],
    );
    assert_eq!(o.code, 0, "{o}");
    assert!(o.stdout.contains("in-exec"), "{o}");
    assert!(o.stdout.lines().any(|l| l == "1000"), "{o}");
    assert!(o.stdout.contains("mkdir-refused"), "{o}");
    assert!(o.stdout.contains("Seccomp:\t2"), "{o}");
}

/// With noNewPrivileges the filter comes after all of the runtime's set-up: a profile
/// allowing only the program (and what runc's Go runtime calls) works for create +
/// start and for exec.
#[test]
fn profile_without_setup_calls_no_new_privs_on() {
    require_root!();
    let mut b = Bundle::new(&[]);
    b.sh("exec 2>&1; echo started; mkdir /tmp/d || echo mkdir-refused; grep '^Seccomp:' /proc/self/status");
    b.seccomp(program_only_profile(&["prctl", "fstatfs"]));
    let c = Container::new("sc-late", b);
    c.create().expect_ok();
    c.start().expect_ok();
    c.wait_stopped(60);
    let out = c.output();
    assert!(out.contains("started"), "the program did not run: {out}");
    assert!(out.contains("mkdir-refused"), "{out}");
    assert!(
        out.contains("Permission denied"),
        "errnoRet 13 not seen: {out}"
    );
    assert!(out.contains("Seccomp:\t2"), "{out}");

    let mut b = Bundle::new(&["sleep", "1000"]);
    b.seccomp(program_only_profile(&["prctl", "fstatfs"]));
    let c = Container::new("sc-late-ex", b);
    c.create_start();
    let o = c.exec(
        &[],
        &[
            "sh",
            "-c",
            "echo in-exec; mkdir /tmp/e || echo mkdir-refused; grep '^Seccomp:' /proc/self/status",
        ],
    );
    assert_eq!(o.code, 0, "{o}");
    assert!(o.stdout.contains("in-exec"), "{o}");
    assert!(o.stdout.contains("mkdir-refused"), "{o}");
    assert!(o.stdout.contains("Seccomp:\t2"), "{o}");
}

/// Without noNewPrivileges loading the filter needs CAP_SYS_ADMIN, which the config
/// drops: Porta keeps it until the filter is loaded and then drops it with one capset.
/// The program runs with the configured capabilities only, under the filter, with a
/// profile that allows capset but none of the other set-up calls. (runc loads the filter
/// before switching user in this case, so such a profile kills its container.)
#[test]
fn profile_without_setup_calls_no_new_privs_off() {
    require_root!();
    porta_only!("runc loads a filter without no_new_privs before its set-up calls");
    let mut b = Bundle::new(&[]);
    b.sh("exec 2>&1; echo started; mkdir /tmp/d || echo mkdir-refused; grep -E '^(Seccomp|NoNewPrivs|CapEff|CapPrm):' /proc/self/status");
    b.config["process"]["noNewPrivileges"] = json!(false);
    b.seccomp(program_only_profile(&["capset"]));
    let c = Container::new("sc-late-nnp0", b);
    c.create().expect_ok();
    c.start().expect_ok();
    c.wait_stopped(60);
    let out = c.output();
    assert!(out.contains("started"), "{out}");
    assert!(out.contains("mkdir-refused"), "{out}");
    assert!(out.contains("Seccomp:\t2"), "{out}");
    assert!(out.contains("NoNewPrivs:\t0"), "{out}");
    // CAP_AUDIT_WRITE, CAP_KILL, CAP_NET_BIND_SERVICE as configured; no CAP_SYS_ADMIN
    let want = (1u64 << 29) | (1 << 5) | (1 << 10);
    for f in ["CapEff", "CapPrm"] {
        let v = out
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{f}:")))
            .map(|v| u64::from_str_radix(v.trim(), 16).unwrap())
            .unwrap_or_else(|| panic!("no {f}: {out}"));
        assert_eq!(v, want, "{f}: {out}");
    }
    // the same for exec
    let mut b = Bundle::new(&["sleep", "1000"]);
    b.config["process"]["noNewPrivileges"] = json!(false);
    b.seccomp(program_only_profile(&["capset"]));
    let c = Container::new("sc-late-nnp0x", b);
    c.create_start();
    let o = c.exec(
        &[],
        &["sh", "-c", "grep -E '^(Seccomp|CapEff):' /proc/self/status"],
    );
    assert_eq!(o.code, 0, "{o}");
    assert!(o.stdout.contains("Seccomp:\t2"), "{o}");
    assert!(o.stdout.contains(&format!("{want:016x}")), "{o}");
}

/// A profile whose BPF program is longer than the kernel takes in one filter (4096
/// instructions) is refused by `create`, naming `linux.seccomp`, and leaves nothing behind.
/// Porta now generates the program before `create` reports ready and only installs it after
/// `start` (runc loads its filter before its exec fifo). Before, the program was generated
/// after `start`: `start` returned while the process spent tens of milliseconds in Porta's
/// set-up code (a signal sent at once met no handler of the program: the conformance
/// suite's `killsig`), and such a profile failed only after `start`, on the container's
/// stderr.
#[test]
fn a_filter_too_long_for_the_kernel_is_refused_by_create() {
    require_root!();
    // 100 conditional rules with their own errno and value on each of 30 system calls:
    // libseccomp can neither merge nor share them (about 6,000 instructions).
    let names = [
        "read",
        "write",
        "openat",
        "close",
        "fstat",
        "lseek",
        "mmap",
        "ioctl",
        "pread64",
        "pwrite64",
        "readv",
        "writev",
        "dup",
        "dup2",
        "fcntl",
        "flock",
        "fsync",
        "ftruncate",
        "fchmod",
        "fchown",
        "getdents64",
        "fdatasync",
        "fstatfs",
        "fchdir",
        "munmap",
        "mprotect",
        "madvise",
        "msync",
        "sendfile",
        "splice",
    ];
    let rules: Vec<Value> = names
        .iter()
        .enumerate()
        .flat_map(|(i, name)| {
            (0..100u64).map(move |v| {
                json!({
                    "names": [name],
                    "action": "SCMP_ACT_ERRNO",
                    "errnoRet": 1 + v,
                    "args": [{"index": 0, "value": 100_000 * (i as u64 + 1) + v, "op": "SCMP_CMP_EQ"}]
                })
            })
        })
        .collect();
    let mut b = Bundle::new(&["true"]);
    // Without no_new_privs runc too loads the filter before `create` returns.
    b.config["process"]["noNewPrivileges"] = json!(false);
    b.seccomp(json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64"],
        "syscalls": rules
    }));
    let c = Container::new("sc-toolong", b);
    let o = c.create();
    o.expect_fail();
    if is_porta() {
        assert!(
            o.stderr.contains("linux.seccomp") && o.stderr.contains("4096"),
            "the error does not name the profile and the limit: {o}"
        );
    }
    let ids = [c.id.clone()];
    let bundles = [c.bundle.path_str()];
    let gone = wait_for(std::time::Duration::from_secs(30), || {
        leaks::check(&ids, &bundles).is_empty().then_some(())
    });
    assert!(
        gone.is_some(),
        "left behind: {:?}",
        leaks::check(&ids, &bundles)
    );
}
