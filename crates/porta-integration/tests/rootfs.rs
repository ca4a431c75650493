//! The root file system: read-only root, bind/ro-bind/tmpfs mounts and their options,
//! maskedPaths, readonlyPaths, default devices and /dev symlinks, config devices,
//! sysctl, rlimits, oomScoreAdj, personality, --no-pivot.

use porta_integration::container::run_sh;
use porta_integration::*;

#[test]
fn readonly_root() {
    require_root!();
    let mut b = Bundle::new(&[]);
    b.readonly_root(true);
    let (o, out) = run_sh(
        "fs-ro",
        b,
        "touch /newfile 2>/dev/null && echo root-writable; touch /tmp/x 2>/dev/null && echo tmp-writable; \
         touch /dev/shm/x && echo shm-ok; grep ' / ' /proc/mounts",
    );
    assert_eq!(o.code, 0, "{o}");
    assert!(!out.contains("root-writable"), "{out}");
    assert!(!out.contains("tmp-writable"), "{out}");
    assert!(out.contains("shm-ok"), "{out}");
    let root_line = out
        .lines()
        .find(|l| l.contains(" / "))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        root_line
            .split_whitespace()
            .nth(3)
            .unwrap()
            .split(',')
            .any(|o| o == "ro"),
        "{root_line}"
    );
}

#[test]
fn writable_root_by_default() {
    require_root!();
    let b = Bundle::new(&[]);
    let (o, out) = run_sh("fs-rw", b, "touch /newfile && echo root-writable");
    assert_eq!(o.code, 0, "{o}");
    assert!(out.contains("root-writable"));
}

#[test]
fn bind_mounts_rw_and_ro() {
    require_root!();
    let host = tempfile::tempdir().unwrap();
    std::fs::write(host.path().join("from-host"), "hello-from-host\n").unwrap();
    let src = host.path().display().to_string();
    let mut b = Bundle::new(&[]);
    b.mount(
        json!({"destination": "/data", "type": "bind", "source": src, "options": ["rbind", "rw"]}),
    );
    b.mount(json!({"destination": "/rodata", "type": "bind", "source": src, "options": ["rbind", "ro"]}));
    b.mount(json!({"destination": "/etc/pit-file", "type": "bind", "source": host.path().join("from-host"), "options": ["bind", "ro"]}));
    let (o, out) = run_sh(
        "fs-bind",
        b,
        "cat /data/from-host; echo written > /data/from-container; \
         touch /rodata/nope 2>/dev/null && echo ro-writable; cat /rodata/from-container; \
         cat /etc/pit-file; echo x > /etc/pit-file 2>/dev/null && echo file-writable; true",
    );
    assert_eq!(o.code, 0, "{o}");
    assert!(out.contains("hello-from-host"), "{out}");
    assert_eq!(
        std::fs::read_to_string(host.path().join("from-container")).unwrap(),
        "written\n"
    );
    assert!(!out.contains("ro-writable"), "{out}");
    assert!(!out.contains("file-writable"), "{out}");
    assert!(!host.path().join("nope").exists());
    assert_eq!(out.matches("written").count(), 1, "{out}");
    assert_eq!(out.matches("hello-from-host").count(), 2, "{out}");
    // the host's own mount table never holds the container's bind mounts
    let mi = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mi.contains(&src), "{mi}");
}

#[test]
fn tmpfs_mount_with_options() {
    require_root!();
    let mut b = Bundle::new(&[]);
    b.mount(
        json!({"destination": "/scratch", "type": "tmpfs", "source": "tmpfs",
                   "options": ["nosuid", "nodev", "noexec", "size=1m", "mode=700"]}),
    );
    let (o, out) = run_sh(
        "fs-tmpfs",
        b,
        "grep ' /scratch ' /proc/mounts; stat -c '%a' /scratch; \
         head -c 2000000 /dev/zero > /scratch/big 2>/dev/null || echo size-enforced; \
         cp /bin/busybox /scratch/bb 2>/dev/null; /scratch/bb true 2>/dev/null && echo exec-allowed; true",
    );
    assert_eq!(o.code, 0, "{o}");
    let line = out
        .lines()
        .find(|l| l.contains("/scratch"))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(line.starts_with("tmpfs /scratch tmpfs"), "{line}");
    for opt in ["nosuid", "nodev", "noexec"] {
        assert!(line.contains(opt), "{opt} missing: {line}");
    }
    assert!(out.lines().any(|l| l.trim() == "700"), "{out}");
    assert!(out.contains("size-enforced"), "{out}");
    assert!(!out.contains("exec-allowed"), "{out}");
}

#[test]
fn masked_paths() {
    require_root!();
    let mut b = Bundle::new(&[]);
    std::fs::create_dir_all(b.rootfs().join("secret-dir")).unwrap();
    std::fs::write(b.rootfs().join("secret-dir/key"), "top-secret").unwrap();
    std::fs::write(b.rootfs().join("secret-file"), "top-secret").unwrap();
    b.config["linux"]["maskedPaths"]
        .as_array_mut()
        .unwrap()
        .push(json!("/secret-dir"));
    b.config["linux"]["maskedPaths"]
        .as_array_mut()
        .unwrap()
        .push(json!("/secret-file"));
    let (o, out) = run_sh(
        "fs-mask",
        b,
        "echo kcore=$(head -c 16 /proc/kcore | wc -c); echo fw=$(ls /sys/firmware | wc -l); \
         cat /secret-file; ls /secret-dir; echo end",
    );
    assert_eq!(o.code, 0, "{o}");
    assert!(out.contains("kcore=0"), "{out}");
    assert!(out.contains("fw=0"), "{out}");
    assert!(!out.contains("top-secret") && !out.contains("key"), "{out}");
    assert!(out.contains("end"));
}

#[test]
fn readonly_paths() {
    require_root!();
    let mut b = Bundle::new(&[]);
    std::fs::create_dir_all(b.rootfs().join("frozen")).unwrap();
    b.config["linux"]["readonlyPaths"]
        .as_array_mut()
        .unwrap()
        .push(json!("/frozen"));
    b.capabilities(&["CAP_SYS_ADMIN", "CAP_NET_ADMIN", "CAP_DAC_OVERRIDE"]);
    let (o, out) = run_sh(
        "fs-ropath",
        b,
        "echo 1 > /proc/sys/kernel/domainname 2>/dev/null && echo procsys-writable; \
         touch /frozen/x 2>/dev/null && echo frozen-writable; touch /other && echo other-ok; \
         grep ' /proc/sys ' /proc/mounts",
    );
    assert_eq!(o.code, 0, "{o}");
    assert!(!out.contains("procsys-writable"), "{out}");
    assert!(!out.contains("frozen-writable"), "{out}");
    assert!(out.contains("other-ok"), "{out}");
    let l = out
        .lines()
        .find(|l| l.contains("/proc/sys"))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        l.split_whitespace()
            .nth(3)
            .unwrap()
            .split(',')
            .any(|o| o == "ro"),
        "{l}"
    );
}

#[test]
fn default_devices_and_symlinks() {
    require_root!();
    let b = Bundle::new(&[]);
    let (o, out) = run_sh(
        "fs-dev",
        b,
        "for d in null zero full random urandom tty; do [ -c /dev/$d ] && echo char:$d; done; \
         for l in fd stdin stdout stderr ptmx; do [ -L /dev/$l ] && echo link:$l=$(readlink /dev/$l); done; \
         [ -d /dev/pts ] && echo dir:pts; [ -d /dev/shm ] && echo dir:shm; [ -d /dev/mqueue ] && echo dir:mqueue; \
         echo x > /dev/null && echo null-ok; echo rnd=$(head -c 8 /dev/urandom | wc -c); \
         echo zero=$(head -c 4 /dev/zero | od -An -tx1 | tr -d ' '); \
         echo x > /dev/full 2>/dev/null || echo full-enospc; ls /dev/fd/ >/dev/null && echo fd-ok",
    );
    assert_eq!(o.code, 0, "{o}");
    for d in ["null", "zero", "full", "random", "urandom", "tty"] {
        assert!(
            out.contains(&format!("char:{d}\n")),
            "/dev/{d} missing: {out}"
        );
    }
    assert!(out.contains("link:fd=/proc/self/fd\n"), "{out}");
    assert!(out.contains("link:stdin=/proc/self/fd/0\n"), "{out}");
    assert!(out.contains("link:stdout=/proc/self/fd/1\n"), "{out}");
    assert!(out.contains("link:stderr=/proc/self/fd/2\n"), "{out}");
    assert!(out.contains("link:ptmx=pts/ptmx\n"), "{out}");
    for s in [
        "dir:pts",
        "dir:shm",
        "dir:mqueue",
        "null-ok",
        "rnd=8",
        "zero=00000000",
        "full-enospc",
        "fd-ok",
    ] {
        assert!(out.contains(s), "{s} missing: {out}");
    }
    // no host device leaks in
    assert!(!out.contains("char:sda"));
}

#[test]
fn config_devices() {
    require_root!();
    let mut b = Bundle::new(&[]);
    b.config["linux"]["devices"] = json!([
        {"path": "/dev/pit-null", "type": "c", "major": 1, "minor": 3, "fileMode": 438, "uid": 0, "gid": 0},
        {"path": "/dev/pit-zero", "type": "c", "major": 1, "minor": 5, "fileMode": 420, "uid": 0, "gid": 0}
    ]);
    // allow pit-null (1:3 is allowed by default anyway) but not 1:5? 1:5 is /dev/zero, a
    // default device; use the cgroup to deny a fresh device number instead.
    b.config["linux"]["devices"].as_array_mut().unwrap().push(
        json!({"path": "/dev/pit-mem", "type": "c", "major": 1, "minor": 1, "fileMode": 384, "uid": 0, "gid": 0}),
    );
    let (o, out) = run_sh(
        "fs-cdev",
        b,
        "stat -c '%n %F %t:%T %a' /dev/pit-null /dev/pit-zero /dev/pit-mem; echo hi > /dev/pit-null && echo pit-null-ok; \
         head -c 1 /dev/pit-mem >/dev/null 2>&1 || echo pit-mem-denied",
    );
    assert_eq!(o.code, 0, "{o}");
    assert!(
        out.contains("/dev/pit-null character special file 1:3 666"),
        "{out}"
    );
    assert!(
        out.contains("/dev/pit-zero character special file 1:5 644"),
        "{out}"
    );
    assert!(
        out.contains("/dev/pit-mem character special file 1:1 600"),
        "{out}"
    );
    assert!(out.contains("pit-null-ok"), "{out}");
    // /dev/mem (1:1) is not in the device cgroup's allow list
    assert!(out.contains("pit-mem-denied"), "{out}");
}

#[test]
fn sysctl() {
    require_root!();
    let mut b = Bundle::new(&[]);
    b.config["linux"]["sysctl"] = json!({"net.ipv4.ip_forward": "1", "kernel.msgmax": "12345"});
    let (o, out) = run_sh(
        "fs-sysctl",
        b,
        "cat /proc/sys/net/ipv4/ip_forward /proc/sys/kernel/msgmax",
    );
    assert_eq!(o.code, 0, "{o}");
    assert_eq!(out.lines().collect::<Vec<_>>(), ["1", "12345"], "{out}");
    // the host's values are not touched
    assert_ne!(
        std::fs::read_to_string("/proc/sys/kernel/msgmax")
            .unwrap()
            .trim(),
        "12345"
    );
}

#[test]
fn rlimits() {
    require_root!();
    let mut b = Bundle::new(&[]);
    b.config["process"]["rlimits"] = json!([
        {"type": "RLIMIT_NOFILE", "soft": 512, "hard": 768},
        {"type": "RLIMIT_CORE", "soft": 0, "hard": 0},
        {"type": "RLIMIT_NPROC", "soft": 900, "hard": 1000}
    ]);
    let (o, out) = run_sh(
        "fs-rlimit",
        b,
        "ulimit -Sn; ulimit -Hn; ulimit -c; grep -E 'Max (processes|open files)' /proc/self/limits",
    );
    assert_eq!(o.code, 0, "{o}");
    let l: Vec<&str> = out.lines().collect();
    assert_eq!(&l[..3], ["512", "768", "0"], "{out}");
    assert!(
        out.lines()
            .any(|x| x.starts_with("Max processes") && x.contains("900") && x.contains("1000")),
        "{out}"
    );
}

#[test]
fn oom_score_adj() {
    require_root!();
    let mut b = Bundle::new(&[]);
    b.config["process"]["oomScoreAdj"] = json!(500);
    let (o, out) = run_sh("fs-oomadj", b, "cat /proc/self/oom_score_adj");
    assert_eq!(o.code, 0, "{o}");
    assert_eq!(out.trim(), "500");
}

#[test]
fn personality_linux32() {
    require_root!();
    porta_only!("runc 1.1 does not support linux.personality (added in runc 1.2)");
    let mut b = Bundle::new(&[]);
    b.config["linux"]["personality"] = json!({"domain": "LINUX32"});
    let (o, out) = run_sh("fs-pers", b, "uname -m");
    assert_eq!(o.code, 0, "{o}");
    assert!(matches!(out.trim(), "i686" | "i386"), "{out}");
}

#[test]
fn no_pivot() {
    require_root!();
    let mut b = Bundle::new(&[]);
    b.sh("cd /../..; ls; cat /etc/hostname; grep -c . /proc/mounts");
    let c = Container::new("fs-nopivot", b);
    std::fs::write(c.bundle.rootfs().join("etc/hostname"), "nopivot-root\n").unwrap();
    let o = c.run_with(&["--no-pivot"]);
    assert_eq!(o.code, 0, "{o}");
    let out = c.output();
    assert!(out.contains("nopivot-root"), "{out}");
    assert!(out.lines().any(|l| l == "bin"), "{out}");
    assert!(!out.contains("pit-bundles"), "{out}");
}

#[test]
fn absolute_root_path() {
    require_root!();
    let mut b = Bundle::new(&[]);
    b.config["root"]["path"] = json!(b.rootfs().display().to_string());
    let (o, out) = run_sh("fs-abs", b, "echo abs-ok");
    assert_eq!(o.code, 0, "{o}");
    assert!(out.contains("abs-ok"));
}

#[test]
fn rootfs_propagation_private() {
    require_root!();
    let mut b = Bundle::new(&[]);
    b.config["linux"]["rootfsPropagation"] = json!("private");
    let (o, out) = run_sh(
        "fs-prop",
        b,
        "grep -c . /proc/self/mountinfo >/dev/null && echo prop-ok",
    );
    assert_eq!(o.code, 0, "{o}");
    assert!(out.contains("prop-ok"));
}

#[test]
fn rlimit_above_hard_limit() {
    require_root!();
    // Where the hard limit cannot be raised (some hosts refuse even root), the failure
    // must say which limit and value; where it can, the container gets it.
    let want: u64 = 1_048_576;
    let mut b = Bundle::new(&[]);
    b.config["process"]["rlimits"] = json!([{"type": "RLIMIT_NOFILE", "soft": want, "hard": want}]);
    b.sh("ulimit -Hn");
    let c = Container::new("fs-rlimit-hi", b);
    let o = c.run();
    if o.ok() {
        assert_eq!(c.output().trim(), want.to_string());
    } else if is_porta() {
        assert!(
            o.stderr.contains("RLIMIT_NOFILE") && o.stderr.contains(&want.to_string()),
            "unclear rlimit error: {o}"
        );
    }
    let ids = [c.id.clone()];
    let bundles = [c.bundle.path_str()];
    let ok = wait_for(std::time::Duration::from_secs(5), || {
        leaks::check(&ids, &bundles).is_empty().then_some(())
    });
    assert!(ok.is_some(), "{:?}", leaks::check(&ids, &bundles));
}

#[test]
fn porta_kernel_fs_mode() {
    require_root!();
    porta_only!("the run.porta.fs=kernel annotation (root mounted by the kernel, no file server)");
    let mut b = Bundle::new(&[]);
    b.annotation("run.porta.fs", "kernel");
    let (o, out) = run_sh("fs-kernel", b, "grep ' / ' /proc/mounts; echo kernel-ok");
    assert_eq!(o.code, 0, "{o}");
    assert!(out.contains("kernel-ok"), "{out}");
    let root = out
        .lines()
        .find(|l| l.contains(" / "))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        !root.contains("fuse"),
        "root is served by FUSE in kernel mode: {root}"
    );
}
