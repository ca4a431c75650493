//! The container's process: args, env, cwd, user (uid, gid, additionalGids, umask),
//! capability sets, noNewPrivileges.

use porta_integration::*;

fn run_sh(tag: &str, mut b: Bundle, script: &str) -> String {
    b.sh(script);
    let c = Container::new(tag, b);
    let o = c.run();
    assert_eq!(o.code, 0, "{o}\n{}", c.output());
    c.output()
}

fn status_field(out: &str, field: &str) -> String {
    out.lines()
        .find(|l| l.starts_with(&format!("{field}:")))
        .map(|l| l.split_once(':').unwrap().1.trim().to_string())
        .unwrap_or_else(|| panic!("no {field} in {out}"))
}

fn cap_bits(out: &str, field: &str) -> u64 {
    u64::from_str_radix(&status_field(out, field), 16).unwrap()
}

const CAP_CHOWN: u32 = 0;
const CAP_KILL: u32 = 5;
const CAP_NET_BIND_SERVICE: u32 = 10;
const CAP_NET_RAW: u32 = 13;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_AUDIT_WRITE: u32 = 29;

#[test]
fn args_preserved_exactly() {
    require_root!();
    let mut b = Bundle::new(&["printf", "[%s]\\n", "a b", "", "c*", "$HOME"]);
    b.config["process"]["args"] = json!(["printf", "[%s]\\n", "a b", "", "c*", "$HOME"]);
    let c = Container::new("proc-args", b);
    assert_eq!(c.run().code, 0);
    assert_eq!(c.output(), "[a b]\n[]\n[c*]\n[$HOME]\n");
}

#[test]
fn env() {
    require_root!();
    let mut b = Bundle::new(&[]);
    b.env("PIT_VAR=hello world").env("PIT_EMPTY=");
    let out = run_sh("proc-env", b, "env");
    assert!(out.lines().any(|l| l == "PIT_VAR=hello world"), "{out}");
    assert!(out.lines().any(|l| l == "PIT_EMPTY="), "{out}");
    assert!(out.lines().any(|l| l == "TERM=xterm"), "{out}");
    assert!(
        out.lines().any(|l| l.starts_with("PATH=/usr/local/sbin")),
        "{out}"
    );
    // HOME comes from the container's /etc/passwd when the config does not set it
    assert!(out.lines().any(|l| l == "HOME=/root"), "{out}");
}

#[test]
fn cwd() {
    require_root!();
    let mut b = Bundle::new(&[]);
    b.cwd("/etc");
    let out = run_sh("proc-cwd", b, "pwd");
    assert_eq!(out.trim(), "/etc");
    // a cwd that does not exist yet is created
    let mut b = Bundle::new(&[]);
    b.cwd("/work/sub");
    let out = run_sh("proc-cwd2", b, "pwd");
    assert_eq!(out.trim(), "/work/sub");
}

#[test]
fn user_uid_gid_additional_gids() {
    require_root!();
    let mut b = Bundle::new(&[]);
    b.user(1000, 1000, &[1001, 1002]);
    let out = run_sh("proc-user", b, "id -u; id -g; grep -E '^(Uid|Gid|Groups):' /proc/self/status; echo HOME=$HOME; touch /tmp/mine; stat -c '%u:%g' /tmp/mine");
    let l: Vec<&str> = out.lines().collect();
    assert_eq!(&l[..2], ["1000", "1000"], "{out}");
    assert_eq!(
        status_field(&out, "Uid")
            .split_whitespace()
            .collect::<Vec<_>>(),
        ["1000"; 4],
        "{out}"
    );
    assert_eq!(
        status_field(&out, "Gid")
            .split_whitespace()
            .collect::<Vec<_>>(),
        ["1000"; 4],
        "{out}"
    );
    let mut groups: Vec<&str> = status_field(&out, "Groups")
        .leak()
        .split_whitespace()
        .collect();
    groups.sort();
    assert_eq!(groups, ["1001", "1002"], "{out}");
    assert!(out.contains("HOME=/home/tester"), "{out}");
    assert!(out.contains("1000:1000"), "{out}");
}

#[test]
fn user_without_additional_gids_has_no_groups() {
    require_root!();
    let mut b = Bundle::new(&[]);
    b.user(1000, 1000, &[]);
    let out = run_sh("proc-user2", b, "grep '^Groups:' /proc/self/status");
    assert_eq!(
        status_field(&out, "Groups"),
        "",
        "supplementary groups leaked: {out}"
    );
}

#[test]
fn umask() {
    require_root!();
    let mut b = Bundle::new(&[]);
    b.config["process"]["user"]["umask"] = json!(0o077);
    let out = run_sh("proc-umask", b, "umask; touch /tmp/f; stat -c '%a' /tmp/f");
    let l: Vec<&str> = out.lines().collect();
    assert_eq!(l, ["0077", "600"], "{out}");
}

#[test]
fn default_capabilities_are_dropped() {
    require_root!();
    let b = Bundle::new(&[]);
    let out = run_sh(
        "proc-caps",
        b,
        "grep -E '^Cap(Inh|Prm|Eff|Bnd|Amb):' /proc/self/status; touch /tmp/f; chown 1000 /tmp/f 2>/dev/null && echo chown-allowed; true",
    );
    let allowed = (1u64 << CAP_KILL) | (1u64 << CAP_NET_BIND_SERVICE) | (1u64 << CAP_AUDIT_WRITE);
    for f in ["CapEff", "CapPrm", "CapBnd"] {
        assert_eq!(cap_bits(&out, f), allowed, "{f}: {out}");
    }
    let eff = cap_bits(&out, "CapEff");
    for (name, bit) in [
        ("CAP_CHOWN", CAP_CHOWN),
        ("CAP_NET_RAW", CAP_NET_RAW),
        ("CAP_SYS_ADMIN", CAP_SYS_ADMIN),
    ] {
        assert_eq!(eff & (1 << bit), 0, "{name} present in CapEff: {out}");
    }
    assert!(
        !out.contains("chown-allowed"),
        "chown worked without CAP_CHOWN: {out}"
    );
}

#[test]
fn capabilities_per_set() {
    require_root!();
    let mut b = Bundle::new(&[]);
    b.config["process"]["capabilities"] = json!({
        "bounding": ["CAP_CHOWN", "CAP_KILL", "CAP_NET_RAW"],
        "permitted": ["CAP_CHOWN", "CAP_KILL"],
        "effective": ["CAP_CHOWN"],
        "inheritable": ["CAP_KILL"],
        "ambient": []
    });
    b.config["process"]["noNewPrivileges"] = json!(false);
    let out = run_sh(
        "proc-capsets",
        b,
        "grep -E '^Cap(Inh|Prm|Eff|Bnd|Amb):' /proc/self/status; touch /tmp/f; chown 1000 /tmp/f && echo chown-allowed",
    );
    assert_eq!(
        cap_bits(&out, "CapBnd"),
        (1 << CAP_CHOWN) | (1 << CAP_KILL) | (1 << CAP_NET_RAW),
        "{out}"
    );
    // uid 0 across execve: the kernel grants the whole bounding set as permitted and
    // effective (no SECBIT_NOROOT in OCI), so those equal the bounding set
    assert_eq!(cap_bits(&out, "CapPrm"), cap_bits(&out, "CapBnd"), "{out}");
    assert_eq!(cap_bits(&out, "CapEff"), cap_bits(&out, "CapBnd"), "{out}");
    assert_eq!(cap_bits(&out, "CapInh"), 1 << CAP_KILL, "{out}");
    assert_eq!(cap_bits(&out, "CapAmb"), 0, "{out}");
    assert!(out.contains("chown-allowed"), "{out}");
}

#[test]
fn non_root_user_with_ambient_capability() {
    require_root!();
    let mut b = Bundle::new(&[]);
    b.user(1000, 1000, &[]);
    b.capabilities(&["CAP_NET_BIND_SERVICE"]);
    let out = run_sh(
        "proc-ambient",
        b,
        "grep -E '^Cap(Eff|Amb):' /proc/self/status",
    );
    assert_eq!(cap_bits(&out, "CapEff"), 1 << CAP_NET_BIND_SERVICE, "{out}");
    assert_eq!(cap_bits(&out, "CapAmb"), 1 << CAP_NET_BIND_SERVICE, "{out}");
}

#[test]
fn no_new_privileges() {
    require_root!();
    let b = Bundle::new(&[]);
    let out = run_sh("proc-nnp1", b, "grep '^NoNewPrivs:' /proc/self/status");
    assert_eq!(status_field(&out, "NoNewPrivs"), "1", "{out}");
    let mut b = Bundle::new(&[]);
    b.config["process"]["noNewPrivileges"] = json!(false);
    let out = run_sh("proc-nnp0", b, "grep '^NoNewPrivs:' /proc/self/status");
    assert_eq!(status_field(&out, "NoNewPrivs"), "0", "{out}");
}

/// The working directory is entered before the user switch, as runc does: a directory
/// only root may search (0700 root:root) is the cwd of a non-root process, for the
/// first process and for exec.
#[test]
fn cwd_entered_before_dropping_privileges() {
    require_root!();
    use std::os::unix::fs::PermissionsExt;
    let mut b = Bundle::new(&[]);
    let dir = b.rootfs().join("pit-private");
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::os::unix::fs::chown(&dir, Some(0), Some(0)).unwrap();
    b.user(1000, 1000, &[]);
    b.cwd("/pit-private");
    let out = run_sh("proc-cwd700", b, "pwd; id -u");
    assert_eq!(out, "/pit-private\n1000\n");

    let mut b = Bundle::new(&["sleep", "1000"]);
    let dir = b.rootfs().join("pit-private");
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    b.user(1000, 1000, &[]);
    let c = Container::new("proc-cwd700x", b);
    c.create_start();
    let o = c.exec(
        &["--cwd", "/pit-private", "--user", "1000:1000"],
        &["sh", "-c", "pwd; id -u"],
    );
    assert_eq!(o.code, 0, "{o}");
    assert_eq!(o.stdout, "/pit-private\n1000\n", "{o}");
}

/// As runc: of an environment variable given twice the last value wins (once), and an
/// empty HOME is replaced by the user's home directory.
#[test]
fn env_duplicates_and_empty_home() {
    require_root!();
    // the environment execve got, read by cat run directly (a shell folds duplicates)
    let mut b = Bundle::new(&["cat", "/proc/self/environ"]);
    b.env("PIT_DUP=first").env("HOME=").env("PIT_DUP=second");
    let c = Container::new("proc-envdup", b);
    let o = c.run();
    assert_eq!(o.code, 0, "{o}");
    let out = c.output().replace('\0', "\n");
    let dups: Vec<&str> = out.lines().filter(|l| l.starts_with("PIT_DUP=")).collect();
    assert_eq!(dups, ["PIT_DUP=second"], "{out}");
    let homes: Vec<&str> = out.lines().filter(|l| l.starts_with("HOME=")).collect();
    assert_eq!(homes, ["HOME=/root"], "{out}");
}

/// As runc: a process without a capabilities field runs with every set empty (not with
/// a library's default sets).
#[test]
fn no_capabilities_field_means_none() {
    require_root!();
    let mut b = Bundle::new(&[]);
    b.config["process"]
        .as_object_mut()
        .unwrap()
        .remove("capabilities");
    let out = run_sh("proc-nocaps", b, "grep '^Cap' /proc/self/status");
    for f in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert_eq!(cap_bits(&out, f), 0, "{f}: {out}");
    }
}
