//! Namespaces: each one made (or not) as the config says, joined by path, user
//! namespaces with mappings, hostname/domainname, and the thesis' isolation checks
//! (`ps`, `df`, `ifconfig`/`ip link`, `..` at the root).

use porta_integration::*;
use std::collections::HashMap;
use std::time::Duration;

const NS_NAMES: [&str; 8] = ["pid", "mnt", "ipc", "uts", "net", "cgroup", "user", "time"];

fn host_ns() -> HashMap<String, String> {
    NS_NAMES
        .iter()
        .filter_map(|n| {
            std::fs::read_link(format!("/proc/self/ns/{n}"))
                .ok()
                .map(|l| (n.to_string(), l.display().to_string()))
        })
        .collect()
}

const PRINT_NS: &str = "for n in pid mnt ipc uts net cgroup user time; do echo \"$n $(readlink /proc/self/ns/$n)\"; done";

fn parse_ns(out: &str) -> HashMap<String, String> {
    out.lines()
        .filter_map(|l| l.split_once(' '))
        .filter(|(_, v)| !v.trim().is_empty())
        .map(|(k, v)| (k.to_string(), v.trim().to_string()))
        .collect()
}

fn run_ns(tag: &str, b: Bundle) -> HashMap<String, String> {
    let c = Container::new(tag, b);
    let o = c.run();
    assert_eq!(o.code, 0, "{o}");
    parse_ns(&c.output())
}

#[test]
fn each_namespace_is_new_when_asked() {
    require_root!();
    let host = host_ns();
    let mut b = Bundle::new(&[]);
    b.sh(PRINT_NS);
    b.namespace("cgroup", None);
    let inside = run_ns("ns-all", b);
    for n in ["pid", "mnt", "ipc", "uts", "net", "cgroup"] {
        assert_ne!(
            inside.get(n),
            host.get(n),
            "{n} namespace not new: {inside:?}"
        );
        assert!(inside.contains_key(n), "{n} missing: {inside:?}");
    }
    // not asked for: shared with the host
    assert_eq!(inside.get("user"), host.get("user"));
}

#[test]
fn namespaces_not_asked_for_are_shared() {
    require_root!();
    let host = host_ns();
    let mut b = Bundle::new(&[]);
    b.sh(PRINT_NS);
    for n in ["pid", "ipc", "uts", "network"] {
        b.remove_namespace(n);
    }
    // without a new uts namespace no hostname may be set; without a new net
    // namespace sysfs cannot be mounted fresh: bind it instead, as engines do
    b.config.as_object_mut().unwrap().remove("hostname");
    b.remove_mount("/sys").remove_mount("/sys/fs/cgroup");
    b.mount(json!({"destination": "/sys", "type": "bind", "source": "/sys", "options": ["rbind", "ro", "nosuid", "noexec", "nodev"]}));
    let inside = run_ns("ns-none", b);
    for n in ["pid", "ipc", "uts", "net", "cgroup", "user"] {
        assert_eq!(inside.get(n), host.get(n), "{n} namespace unexpectedly new");
    }
    assert_ne!(inside.get("mnt"), host.get("mnt"));
}

#[test]
fn pid_namespace_ps_sees_only_container() {
    require_root!();
    let mut b = Bundle::new(&[]);
    // wait for the background child to exec sleep; `true` keeps sh from exec'ing ps
    b.sh("sleep 100 & i=0; while [ $i -lt 50 ] && ! grep -q sleep /proc/[0-9]*/comm 2>/dev/null; do i=$((i+1)); sleep 0.05; done; echo pid=$$; ps -o pid,comm; true");
    let c = Container::new("ns-ps", b);
    let o = c.run();
    assert_eq!(o.code, 0, "{o}");
    let out = c.output();
    assert!(out.contains("pid=1"), "shell is not PID 1: {out}");
    let procs: Vec<&str> = out
        .lines()
        .skip_while(|l| !l.contains("PID"))
        .skip(1)
        .collect();
    assert!(
        procs.len() <= 4,
        "ps shows more than the container's processes: {out}"
    );
    assert!(procs.iter().any(|l| l.contains("sleep")), "{out}");
    // the host has far more processes than that
    let host_count = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .count();
    assert!(host_count > procs.len());
}

#[test]
fn uts_hostname() {
    require_root!();
    let mut b = Bundle::new(&[]);
    b.sh("cat /proc/sys/kernel/hostname; hostname");
    b.hostname("pit-host");
    let c = Container::new("ns-uts", b);
    assert_eq!(c.run().code, 0);
    let out = c.output();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines, ["pit-host", "pit-host"], "{out}");
    // the host's name is untouched
    assert_ne!(
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .unwrap()
            .trim(),
        "pit-host"
    );
}

#[test]
fn uts_domainname() {
    require_root!();
    porta_only!("runc 1.1 ignores the domainname field (added in runc 1.2)");
    let mut b = Bundle::new(&[]);
    b.sh("cat /proc/sys/kernel/hostname /proc/sys/kernel/domainname");
    b.hostname("pit-host");
    b.config["domainname"] = json!("pit.example");
    let c = Container::new("ns-domain", b);
    assert_eq!(c.run().code, 0);
    let out = c.output();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines, ["pit-host", "pit.example"], "{out}");
    assert_ne!(
        std::fs::read_to_string("/proc/sys/kernel/domainname")
            .unwrap()
            .trim(),
        "pit.example"
    );
}

#[test]
fn net_namespace_shows_only_loopback() {
    require_root!();
    let mut b = Bundle::new(&[]);
    b.sh("ip -o link; echo ---; ifconfig -a");
    let c = Container::new("ns-net", b);
    assert_eq!(c.run().code, 0);
    let out = c.output();
    let (ip, ifc) = out.split_once("---").unwrap();
    let links: Vec<&str> = ip.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(links.len(), 1, "ip link shows more than lo: {out}");
    assert!(links[0].contains("lo"), "{out}");
    let ifaces: Vec<&str> = ifc
        .lines()
        .filter(|l| !l.starts_with(' ') && !l.trim().is_empty())
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(ifaces, ["lo"], "ifconfig -a shows more than lo: {out}");
}

#[test]
fn mount_namespace_df_shows_only_container() {
    require_root!();
    let mut b = Bundle::new(&[]);
    b.sh("df -P; echo ---; cat /proc/mounts");
    let c = Container::new("ns-df", b);
    assert_eq!(c.run().code, 0);
    let out = c.output();
    let (df, mounts) = out.split_once("---").unwrap();
    let allowed = |p: &str| {
        p == "/" || p.starts_with("/proc") || p.starts_with("/dev") || p.starts_with("/sys")
    };
    for l in mounts.lines().filter(|l| !l.trim().is_empty()) {
        let mp = l.split_whitespace().nth(1).unwrap_or("");
        assert!(allowed(mp), "container sees foreign mount {mp}: {out}");
    }
    for l in df.lines().skip(1).filter(|l| !l.trim().is_empty()) {
        let mp = l.split_whitespace().last().unwrap_or("");
        assert!(allowed(mp), "df shows foreign mount {mp}: {out}");
    }
    assert!(!df.contains(BUNDLES), "df shows the bundle path: {df}");
}

#[test]
fn dotdot_at_root_stays_at_root() {
    require_root!();
    let mut b = Bundle::new(&[]);
    b.sh("cd /; cd ..; cd ../..; pwd; ls -di / | cut -d' ' -f1; ls -di /../.. | cut -d' ' -f1; cat /../../../etc/hostname; ls /../../..");
    let c = Container::new("ns-dotdot", b);
    std::fs::write(c.bundle.rootfs().join("etc/hostname"), "inside-root\n").unwrap();
    std::fs::write(c.bundle.rootfs().join("marker-file"), "").unwrap();
    let o = c.run();
    assert_eq!(o.code, 0, "{o}");
    let out = c.output();
    let l: Vec<&str> = out.lines().map(str::trim).collect();
    assert_eq!(l[0], "/", "{out}");
    assert_eq!(l[1], l[2], "/ and /../.. differ: {out}");
    assert_eq!(l[3], "inside-root", "{out}");
    assert!(l.contains(&"marker-file"), "{out}");
    assert!(!l.contains(&"pit-bundles"), "{out}");
}

#[test]
fn cgroup_namespace_root_is_container_cgroup() {
    require_root!();
    let mut b = Bundle::new(&[]);
    b.sh("cat /proc/self/cgroup");
    b.namespace("cgroup", None);
    let c = Container::new("ns-cgroup", b);
    assert_eq!(c.run().code, 0);
    let out = c.output();
    for l in out.lines().filter(|l| !l.is_empty()) {
        let path = l.splitn(3, ':').nth(2).unwrap_or("");
        assert_eq!(path, "/", "cgroup path not virtualised: {out}");
    }
}

#[test]
fn user_namespace_with_mappings() {
    require_root!();
    let host_uid = 200000u32;
    let mut b = Bundle::new(&[]);
    b.sh("cat /proc/self/uid_map /proc/self/gid_map; id -u; id -g; touch /tmp/made-inside; sleep 100");
    b.user_ns(host_uid, 65536);
    // the container's root must own its files through the mapping
    let o = cmd::host(
        "chown",
        &[
            "-R",
            "-h",
            &format!("{host_uid}:{host_uid}"),
            b.rootfs().to_str().unwrap(),
        ],
    );
    o.expect_ok();
    let c = Container::new("ns-user", b);
    c.create_start();
    assert!(
        c.wait_output("\n0\n0\n", 10) || c.wait_output("0\n0\n", 1),
        "{}",
        c.output()
    );
    let out = c.output();
    let maps: Vec<Vec<&str>> = out
        .lines()
        .take(2)
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(maps[0], ["0", &host_uid.to_string(), "65536"], "{out}");
    assert_eq!(maps[1], ["0", &host_uid.to_string(), "65536"], "{out}");
    // seen from the host, the container's root is the mapped id
    let status = std::fs::read_to_string(format!("/proc/{}/status", c.pid())).unwrap();
    let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert!(
        uid_line.split_whitespace().nth(1) == Some(&host_uid.to_string()),
        "{uid_line}"
    );
    let f = c.bundle.rootfs().join("tmp/made-inside");
    assert!(wait_for(Duration::from_secs(5), || f.exists().then_some(())).is_some());
    use std::os::unix::fs::MetadataExt;
    assert_eq!(std::fs::metadata(&f).unwrap().uid(), host_uid);
    let ns = std::fs::read_link(format!("/proc/{}/ns/user", c.pid())).unwrap();
    assert_ne!(ns, std::fs::read_link("/proc/self/ns/user").unwrap());
}

#[test]
fn join_namespaces_by_path() {
    require_root!();
    let mut a = Bundle::new(&["sleep", "100"]);
    a.hostname("pit-alpha");
    a.namespace("cgroup", None);
    let a = Container::new("ns-joina", a);
    a.create_start();
    let apid = a.pid();
    let mut b = Bundle::new(&[]);
    b.sh(&format!("{PRINT_NS}; cat /proc/sys/kernel/hostname"));
    b.config.as_object_mut().unwrap().remove("hostname");
    for (ty, name) in [("network", "net"), ("uts", "uts"), ("ipc", "ipc")] {
        b.namespace(ty, Some(&format!("/proc/{apid}/ns/{name}")));
    }
    let c = Container::new("ns-joinb", b);
    let o = c.run();
    assert_eq!(o.code, 0, "{o}");
    let out = c.output();
    let inside = parse_ns(&out);
    for n in ["net", "uts", "ipc"] {
        let a_ns = std::fs::read_link(format!("/proc/{apid}/ns/{n}"))
            .unwrap()
            .display()
            .to_string();
        assert_eq!(inside.get(n), Some(&a_ns), "{n} not joined: {out}");
    }
    let a_pid_ns = std::fs::read_link(format!("/proc/{apid}/ns/pid"))
        .unwrap()
        .display()
        .to_string();
    assert_ne!(
        inside.get("pid"),
        Some(&a_pid_ns),
        "pid namespace should be new"
    );
    assert!(out.lines().any(|l| l == "pit-alpha"), "{out}");
}

#[test]
fn join_pid_namespace_by_path() {
    require_root!();
    let a = Container::new("ns-pida", Bundle::new(&["sleep", "100"]));
    a.create_start();
    let apid = a.pid();
    let mut b = Bundle::new(&[]);
    b.sh("ps -o pid,comm");
    b.namespace("pid", Some(&format!("/proc/{apid}/ns/pid")));
    let c = Container::new("ns-pidb", b);
    assert_eq!(c.run().code, 0);
    let out = c.output();
    assert!(
        out.contains("sleep"),
        "joined pid namespace does not show A's sleep: {out}"
    );
}

#[test]
fn time_namespace_offsets() {
    require_root!();
    if !kernel_has_ns("time") {
        skip("kernel has no time namespace");
        return;
    }
    porta_only!("runc 1.1 does not support the time namespace");
    let mut b = Bundle::new(&[]);
    b.sh("cat /proc/uptime; readlink /proc/self/ns/time");
    b.namespace("time", None);
    b.config["linux"]["timeOffsets"] = json!({"monotonic": {"secs": 864000, "nanosecs": 0}, "boottime": {"secs": 864000, "nanosecs": 0}});
    let c = Container::new("ns-time", b);
    let o = c.run();
    assert_eq!(o.code, 0, "{o}");
    let out = c.output();
    let up: f64 = out.split_whitespace().next().unwrap().parse().unwrap();
    assert!(up >= 864000.0, "boottime offset not applied: {out}");
    assert_ne!(
        out.lines().nth(1).unwrap_or(""),
        std::fs::read_link("/proc/self/ns/time")
            .unwrap()
            .to_str()
            .unwrap()
    );
}

/// A bundle without a mount namespace, as `runc spec` writes it otherwise: the masked
/// and read-only paths removed (no runtime can apply them there), the mounts kept.
fn no_mount_ns_bundle(script: &str) -> Bundle {
    let mut b = Bundle::new(&[]);
    b.sh(script);
    b.remove_namespace("mount");
    let linux = b.config["linux"].as_object_mut().unwrap();
    linux.remove("maskedPaths");
    linux.remove("readonlyPaths");
    b
}

/// Runs `script` with sh in a private mount namespace of its own (so that whatever a
/// runtime mounts in its caller's mount namespace goes away with it, runc's leftovers
/// too), with RT, ROOT, B and ID naming the runtime, its --root, the bundle and the id.
fn in_private_mount_ns(c: &Container, script: &str) -> Out {
    Cmd::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", script])
        .env("RT", runtime())
        .env("ROOT", &c.root)
        .env("B", c.bundle.path_str())
        .env("ID", &c.id)
        .timeout(Duration::from_secs(120))
        .run()
}

/// The value after `key ` on the line of `out` starting with it.
fn line_value<'a>(out: &'a str, key: &str) -> Option<&'a str> {
    out.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(' '))
        .map(str::trim)
}

/// Counts the mount table lines naming the bundle, before and after `run`.
const RUN_AND_COUNT: &str = r#"
echo "caller $(readlink /proc/self/ns/mnt)"
echo "before $(grep -c -F "$B/" /proc/self/mountinfo)"
"$RT" --root "$ROOT" run --bundle "$B" "$ID"; echo "rc $?"
echo "after $(grep -c -F "$B/" /proc/self/mountinfo)"
"#;

#[test]
fn without_a_mount_namespace_the_container_shares_the_callers_and_is_rooted_in_the_bundle() {
    require_root!();
    let b = no_mount_ns_bundle(
        "echo \"inside $(readlink /proc/self/ns/mnt)\"; echo \"marker $(cat /pit-marker)\"; \
         echo \"dev $(ls /dev/null /dev/pts/ptmx | wc -l)\"",
    );
    std::fs::write(b.rootfs().join("pit-marker"), "in-the-bundle\n").unwrap();
    let c = Container::new("ns-nomnt", b);
    let o = in_private_mount_ns(&c, RUN_AND_COUNT);
    let out = &o.stdout;
    assert_eq!(line_value(out, "rc"), Some("0"), "{o}");
    // The caller's mount namespace, not a new one (as runc: no CLONE_NEWNS).
    let caller = line_value(out, "caller").expect("caller's namespace");
    assert_eq!(line_value(out, "inside"), Some(caller), "{o}");
    // Its root is the bundle's root (chroot), with the config's mounts beneath it.
    assert_eq!(line_value(out, "marker"), Some("in-the-bundle"), "{o}");
    assert_eq!(line_value(out, "dev"), Some("2"), "{o}");
    if is_porta() {
        // Porta detaches the root's bind, and every mount beneath it, at delete (runc
        // leaves its mounts in the caller's namespace: gone here with the namespace).
        assert_eq!(line_value(out, "after"), line_value(out, "before"), "{o}");
    }
}

#[test]
fn without_a_mount_namespace_masked_and_readonly_paths_are_refused() {
    require_root!();
    for field in ["maskedPaths", "readonlyPaths"] {
        let mut b = no_mount_ns_bundle("true");
        b.config["linux"][field] = json!(["/proc/kcore"]);
        let c = Container::new("ns-nomnt-mask", b);
        let o = in_private_mount_ns(
            &c,
            r#""$RT" --root "$ROOT" create --bundle "$B" "$ID"; echo "rc $?""#,
        );
        assert_ne!(line_value(&o.stdout, "rc"), Some("0"), "{field}: {o}");
        // runc: "unable to restrict sys entries without a private MNT namespace"
        assert!(o.stderr.contains("restrict sys entries"), "{field}: {o}");
        if is_porta() {
            assert!(o.stderr.contains(&format!("linux.{field}")), "{o}");
        }
        assert_eq!(c.status(), None, "{field}: state left behind");
    }
}

#[test]
fn without_a_mount_namespace_the_root_is_the_kernels_and_owned_by_the_container() {
    require_root!();
    porta_only!("Porta's file server and the release of the root's bind");
    // create, state and delete as separate commands: delete detaches the bind.
    let b = no_mount_ns_bundle("sleep 1000");
    let c = Container::new("ns-nomnt-kernel", b);
    let o = in_private_mount_ns(
        &c,
        r#"
echo "before $(grep -c -F "$B/" /proc/self/mountinfo)"
"$RT" --root "$ROOT" create --bundle "$B" "$ID" || exit 1
echo "during $(grep -c -F "$B/" /proc/self/mountinfo)"
"$RT" --root "$ROOT" state "$ID" | tr -d '\n'; echo
"$RT" --root "$ROOT" delete --force "$ID"; echo "rc $?"
echo "after $(grep -c -F "$B/" /proc/self/mountinfo)"
"#,
    );
    let out = &o.stdout;
    assert_eq!(line_value(out, "rc"), Some("0"), "{o}");
    let before: usize = line_value(out, "before").unwrap().parse().unwrap();
    let during: usize = line_value(out, "during").unwrap().parse().unwrap();
    assert!(
        during > before,
        "no mount of the container's in the caller's table: {o}"
    );
    assert_eq!(
        line_value(out, "after"),
        Some(before.to_string().as_str()),
        "{o}"
    );
    let state: Value = out
        .lines()
        .find(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap())
        .expect("state JSON");
    assert!(
        state["servers"].as_array().is_none_or(|s| s.is_empty()),
        "a file server without a mount namespace: {state}"
    );

    // Asking for the file server is refused, naming the annotation; nothing is made.
    let mut b = no_mount_ns_bundle("true");
    b.annotation("run.porta.fs", "server");
    let c = Container::new("ns-nomnt-server", b);
    let o = in_private_mount_ns(&c, RUN_AND_COUNT);
    assert_eq!(line_value(&o.stdout, "rc"), Some("1"), "{o}");
    assert!(
        o.stderr.contains("annotations.run.porta.fs") && o.stderr.contains("no mount namespace"),
        "{o}"
    );
    assert_eq!(
        line_value(&o.stdout, "after"),
        line_value(&o.stdout, "before"),
        "{o}"
    );
    assert_eq!(c.status(), None, "state left behind");

    // A mount that fails half-way: the rollback detaches what was mounted before it.
    let mut b = no_mount_ns_bundle("true");
    b.mount(json!({"destination": "/mnt", "type": "pit-no-such-fs", "source": "x"}));
    let c = Container::new("ns-nomnt-rollback", b);
    let o = in_private_mount_ns(&c, RUN_AND_COUNT);
    assert_eq!(line_value(&o.stdout, "rc"), Some("1"), "{o}");
    assert!(o.stderr.contains("mounts[7] (/mnt)"), "{o}");
    assert_eq!(
        line_value(&o.stdout, "after"),
        line_value(&o.stdout, "before"),
        "{o}"
    );
    assert_eq!(c.status(), None, "state left behind");
}
