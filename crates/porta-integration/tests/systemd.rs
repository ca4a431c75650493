//! The systemd cgroup driver (`--systemd-cgroup`) against a real systemd.
//!
//! The test machines do not boot with systemd, so each test boots its own: systemd as
//! PID 1 of a new pid, mount and cgroup namespace, rooted in a cgroup of its own in every
//! hierarchy of the host, with the host's cgroup file systems mounted again (showing the
//! namespace's root), a private /run, a D-Bus system bus, and only a handful of units (no
//! service of the host starts). The runtime runs inside those namespaces, as it would on a
//! systemd host. After the test systemd is killed and its cgroups removed.

use porta_integration::*;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A private systemd (with its system bus) booted for one test.
struct Systemd {
    unshare: Child,
    pid: i32,
    units: tempfile::TempDir,
    /// Dropped last: once systemd and everything in its namespaces is dead.
    groups: Groups,
}

/// The test systemd's own cgroup in every hierarchy, removed (with all below it) when
/// dropped. It exists before the first group is made, so a test that fails at any point
/// — even half-way through making them — leaves no group behind.
struct Groups {
    name: String,
    made: Vec<PathBuf>,
}

impl Groups {
    fn new(name: String) -> Groups {
        Groups {
            name,
            made: Vec::new(),
        }
    }

    /// Makes the group in the hierarchy mounted at `h`.
    fn make(&mut self, h: &Path) {
        let d = h.join(&self.name);
        std::fs::create_dir(&d)
            .unwrap_or_else(|e| panic!("test systemd's cgroup {}: {e}", d.display()));
        self.made.push(d.clone());
        if h.ends_with("cpuset") {
            for f in ["cpuset.cpus", "cpuset.mems"] {
                std::fs::write(d.join(f), std::fs::read(h.join(f)).unwrap()).unwrap();
            }
        }
    }
}

impl Drop for Groups {
    fn drop(&mut self) {
        for d in self.made.iter().rev() {
            let gone = wait_for(Duration::from_secs(10), || {
                cgroup::remove_tree(d);
                (!d.exists()).then_some(())
            });
            if gone.is_none() {
                eprintln!("test systemd's cgroup {} is left", d.display());
            }
        }
    }
}

/// Mounts the namespace's own /run and cgroup file systems, then becomes systemd. The
/// cgroup mounts are made again inside the new cgroup namespace, so they show its root.
/// `$1`: the unit directory; `$2`: `hybrid` (every hierarchy of the host) or `unified`
/// (only the cgroup2 one, at /sys/fs/cgroup); `$3`: a uid to give a passwd entry, or empty.
const BOOT: &str = r#"
set -e
units=$1 layout=$2
mount -t tmpfs -o mode=755 tmpfs /run
# the host's real hierarchies, one mount each (from the test; not every cgroup mount)
printf '%s\n' "$HIERARCHIES" > /run/cgroup-mounts
# This namespace's copies of the host's cgroup mounts go: they show the host's root.
# (Lazily: a mount of the namespace's copy can be busy for a moment.)
umount -R -l /sys/fs/cgroup
# So do the namespace's copies of any other cgroup mount (a second or read-only mount of a
# hierarchy, as another job may leave on the host): here each hierarchy is mounted once.
grep -E ' cgroup2? ' /proc/self/mounts | while read -r _ mp _; do
  umount -l "$mp" 2>/dev/null || true
done
if [ "$layout" = unified ]; then
  mount -t cgroup2 cgroup2 /sys/fs/cgroup
else
  mount -t tmpfs -o mode=755 tmpfs /sys/fs/cgroup
  while read -r _ mp type opts _; do
    mkdir -p "$mp"
    if [ "$type" = cgroup2 ]; then mount -t cgroup2 cgroup2 "$mp"; continue; fi
    keep=
    for o in $(echo "$opts" | tr , ' '); do
      case $o in rw|ro|nosuid|nodev|noexec|relatime|clone_children|xattr) ;; *) keep=$keep${keep:+,}$o ;; esac
    done
    mount -t cgroup -o "$keep" cgroup "$mp"
  done < /run/cgroup-mounts
fi
if [ -n "$3" ]; then
  # The test user gets a passwd entry in this namespace only (the user manager needs one).
  cp /etc/passwd /run/passwd; echo "pit:x:$3:$3::/tmp:/bin/sh" >> /run/passwd
  cp /etc/group /run/group; echo "pit:x:$3:" >> /run/group
  mount --bind /run/passwd /etc/passwd; mount --bind /run/group /etc/group
fi
export container=porta-test SYSTEMD_UNIT_PATH=$units
exec /lib/systemd/systemd --unit=porta-test.target --log-target=null
"#;

/// Joins the namespace's root cgroup (outside of any unit), then runs the arguments.
const JOIN: &str = r#"for f in /sys/fs/cgroup/*/cgroup.procs /sys/fs/cgroup/cgroup.procs; do { echo $$ > "$f"; } 2>/dev/null || true; done; exec "$@""#;

impl Systemd {
    fn boot(layout: &str) -> Option<Systemd> {
        Self::boot_with_user(layout, None)
    }

    /// Like [`Systemd::boot`], with a user manager (and its session bus) for `user`.
    fn boot_with_user(layout: &str, user: Option<u32>) -> Option<Systemd> {
        if !is_root() || !porta_only("the systemd cgroup driver") {
            return None;
        }
        let sd = Path::new("/lib/systemd/systemd");
        if !sd.exists() || !have_command("dbus-daemon") || !have_command("nsenter") {
            skip("needs systemd and dbus-daemon (scripts/deps.sh installs them)");
            return None;
        }
        let units = tempfile::tempdir().expect("unit dir");
        for u in ["dbus.service", "dbus.socket"] {
            std::fs::copy(
                Path::new("/lib/systemd/system").join(u),
                units.path().join(u),
            )
            .expect("copy the D-Bus units");
        }
        std::fs::write(
            units.path().join("porta-test.target"),
            "[Unit]\nDescription=Porta test target\nWants=dbus.socket dbus.service\n",
        )
        .unwrap();
        std::fs::write(
            units.path().join("system.slice"),
            "[Unit]\nDescription=System Slice\nDefaultDependencies=no\n",
        )
        .unwrap();
        if user.is_some() {
            write_user_units(units.path());
        }
        let mut groups = Groups::new(format!("porta-it-systemd-{}", unique_id(layout)));
        for h in hierarchies() {
            groups.make(&h);
        }
        // The launcher enters the cgroups before it unshares: the new cgroup namespace
        // is rooted there.
        let procs: Vec<String> = groups
            .made
            .iter()
            .map(|d| d.join("cgroup.procs").display().to_string())
            .collect();
        // the hierarchies for BOOT, in /proc/self/mounts' format
        let list: Vec<String> = cgroup::hierarchies()
            .iter()
            .map(|h| {
                format!(
                    "cgroup {} {} {} 0 0",
                    h.mount_point.display(),
                    h.fstype,
                    h.options
                )
            })
            .collect();
        let unshare = Command::new("sh")
            .arg("-c")
            .arg(
                r#"for f in $PROCS; do echo $$ > "$f"; done
                exec unshare --pid --mount --cgroup --fork --mount-proc sh -c "$BOOT" sh "$UNITS" "$LAYOUT" "$USER_UID""#,
            )
            .env("PROCS", procs.join(" "))
            .env("BOOT", BOOT)
            .env("HIERARCHIES", list.join("\n"))
            .env("UNITS", units.path())
            .env("LAYOUT", layout)
            .env("USER_UID", user.map(|u| u.to_string()).unwrap_or_default())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the test systemd");
        let mut me = Systemd {
            unshare,
            pid: 0,
            units,
            groups,
        };
        me.pid = wait_for(Duration::from_secs(10), || child_of(me.unshare.id() as i32))
            .expect("systemd started");
        let up = wait_for(Duration::from_secs(20), || {
            let o = me
                .cmd("systemctl")
                .args(["is-active", "dbus.service"])
                .run();
            o.ok().then_some(())
        });
        if up.is_none() {
            let o = me
                .cmd("systemctl")
                .args(["status", "--no-pager", "--all"])
                .run();
            panic!("the test systemd and its bus did not come up: {o}");
        }
        if let Some(uid) = user {
            me.cmd("systemctl")
                .args(["start", &format!("user@{uid}.service")])
                .run()
                .expect_ok();
        }
        Some(me)
    }

    /// The command prefix that runs a program inside the test systemd's namespaces, in its
    /// root cgroup.
    fn prefix(&self) -> Vec<std::ffi::OsString> {
        let pid = self.pid.to_string();
        [
            "nsenter", "-t", &pid, "-m", "-p", "-C", "--", "sh", "-c", JOIN, "sh",
        ]
        .iter()
        .map(|s| s.into())
        .collect()
    }

    /// `prog` run inside the test systemd's namespaces, in its root cgroup.
    fn cmd(&self, prog: impl AsRef<std::ffi::OsStr>) -> Cmd {
        let prefix = self.prefix();
        Cmd::new(&prefix[0]).args(&prefix[1..]).arg(prog.as_ref())
    }

    /// The runtime with `--systemd-cgroup` and its own state root, inside.
    fn runtime(&self, state: &Path) -> Cmd {
        self.cmd(runtime())
            .arg("--root")
            .arg(state)
            .arg("--systemd-cgroup")
    }

    /// `systemctl show -p <prop> --value <unit>`.
    fn show(&self, unit: &str, prop: &str) -> String {
        let o = self
            .cmd("systemctl")
            .args(["show", "-p", prop, "--value", unit])
            .run();
        o.stdout.trim().to_string()
    }

    /// A file as seen inside (pids there are the namespace's).
    fn read(&self, path: &str) -> String {
        self.cmd("cat").arg(path).run().stdout
    }

    /// The unit's directory in the hierarchy mounted at `h` on the host.
    fn dir(&self, h: &Path, group: &str) -> PathBuf {
        h.join(&self.groups.name)
            .join(group.trim_start_matches('/'))
    }
}

impl Drop for Systemd {
    fn drop(&mut self) {
        if self.pid > 0 {
            let _ = Cmd::new("kill")
                .args(["-KILL", &self.pid.to_string()])
                .run();
        }
        let _ = self.unshare.kill();
        let _ = self.unshare.wait();
        // then `groups` is dropped: the cgroups go
        let _ = &self.units;
    }
}

/// A minimal `user@.service` (no PAM, no logind: it makes the runtime directory itself)
/// and the user manager's units: its session bus only.
fn write_user_units(dir: &Path) {
    let user_units = dir.join("user");
    std::fs::create_dir(&user_units).unwrap();
    std::fs::write(
        dir.join("user@.service"),
        format!(
            "[Unit]\nDescription=User Manager for UID %i\nDefaultDependencies=no\n\
             [Service]\nUser=%i\nType=notify\nDelegate=yes\nKillMode=mixed\n\
             ExecStartPre=+/bin/sh -c 'install -d -m 700 -o %i -g %i /run/user/%i'\n\
             ExecStart=/lib/systemd/systemd --user\n\
             Environment=XDG_RUNTIME_DIR=/run/user/%i SYSTEMD_UNIT_PATH={}\n",
            user_units.display()
        ),
    )
    .unwrap();
    std::fs::write(
        user_units.join("default.target"),
        "[Unit]\nDescription=Default\nWants=dbus.socket\n",
    )
    .unwrap();
    std::fs::write(
        user_units.join("dbus.socket"),
        "[Unit]\nDescription=D-Bus User Message Bus Socket\nDefaultDependencies=no\n\
         [Socket]\nListenStream=%t/bus\n",
    )
    .unwrap();
    std::fs::write(
        user_units.join("dbus.service"),
        "[Unit]\nDescription=D-Bus User Message Bus\nDefaultDependencies=no\n\
         Requires=dbus.socket\n[Service]\nType=notify\nExecStart=/usr/bin/dbus-daemon \
         --session --address=systemd: --nofork --nopidfile --systemd-activation --syslog-only\n",
    )
    .unwrap();
}

/// Every cgroup hierarchy of the host (its mount point): one writable mount of each
/// hierarchy the kernel lists, not every cgroup mount (see [`cgroup::hierarchies`]).
fn hierarchies() -> Vec<PathBuf> {
    cgroup::hierarchies()
        .into_iter()
        .map(|h| h.mount_point)
        .collect()
}

fn child_of(pid: i32) -> Option<i32> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).ok()?;
    s.split_whitespace().next()?.parse().ok()
}

fn bundle(script: &str, cgroups_path: &str, resources: serde_json::Value) -> (Bundle, PathBuf) {
    let mut b = Bundle::new(&["true"]);
    b.sh(script).cgroups_path(cgroups_path).resources(resources);
    b.write();
    let state = b.path().join("state");
    std::fs::create_dir(&state).unwrap();
    (b, state)
}

#[test]
fn systemd_driver_makes_the_container_a_scope_with_its_limits() {
    let Some(sd) = Systemd::boot("hybrid") else {
        return;
    };
    let id = unique_id("sd-scope");
    let unit = format!("porta-{id}.scope");
    let (b, state) = bundle(
        "sleep 600",
        &format!("system.slice:porta:{id}"),
        serde_json::json!({"pids": {"limit": 10}, "memory": {"limit": 67108864}}),
    );
    let rt = |args: &[&str]| sd.runtime(&state).args(args).run();
    rt(&["create", "--bundle", &b.path_str(), &id]).expect_ok();
    let group = format!("/system.slice/{unit}");
    assert_eq!(sd.show(&unit, "ActiveState"), "active");
    assert_eq!(sd.show(&unit, "ControlGroup"), group);
    assert_eq!(
        sd.show(&unit, "TasksMax"),
        "74",
        "10 + the servers' reserve"
    );
    assert_eq!(sd.show(&unit, "MemoryLimit"), "67108864");
    // The group in every hierarchy, systemd's or not, with Porta's leaves.
    for h in hierarchies() {
        let d = sd.dir(&h, &group);
        assert!(
            d.join("payload").is_dir() && d.join("porta").is_dir(),
            "{}",
            d.display()
        );
    }
    let pids = |leaf: &str| sd.read(&format!("/sys/fs/cgroup/pids{group}/{leaf}"));
    assert_eq!(pids("payload/pids.max").trim(), "10");
    let mem = sd.dir(Path::new("/sys/fs/cgroup/memory"), &group);
    assert_eq!(
        std::fs::read_to_string(mem.join("memory.limit_in_bytes"))
            .unwrap()
            .trim(),
        "67108864"
    );
    // The holder that started the scope is gone: only the container and its file server
    // (with its supervisor, whose work for the container is the container's).
    let init = rt(&["state", &id]).json()["pid"]
        .as_i64()
        .unwrap()
        .to_string();
    let payload = pids("payload/cgroup.procs");
    assert!(
        payload.lines().any(|p| p == init),
        "init {init} in payload/: {payload}"
    );
    for p in pids("porta/cgroup.procs").lines() {
        let cmd = sd.read(&format!("/proc/{p}/cmdline"));
        assert!(
            cmd.contains("\0fs\0") || cmd.contains("\0supervisor\0"),
            "only servers and their supervisor in porta/, not {p}: {cmd:?}"
        );
    }
    rt(&["start", &id]).expect_ok();
    // update goes to systemd and to the files.
    rt(&["update", "--pids-limit", "20", "--memory", "134217728", &id]).expect_ok();
    assert_eq!(sd.show(&unit, "TasksMax"), "84");
    assert_eq!(sd.show(&unit, "MemoryLimit"), "134217728");
    assert_eq!(pids("payload/pids.max").trim(), "20");
    // The limit holds: the container cannot have more than 20 processes.
    let o = rt(&[
        "exec",
        &id,
        "sh",
        "-c",
        "i=0; while [ $i -lt 30 ]; do sleep 30 & i=$((i+1)); done",
    ]);
    let current: i64 = pids("payload/pids.current").trim().parse().unwrap_or(-1);
    assert!(
        (1..=20).contains(&current) && o.stderr.contains("fork"),
        "pids.max stops forks in the container ({current} processes): {o}"
    );
    rt(&["pause", &id]).expect_ok();
    assert_eq!(rt(&["state", &id]).json()["status"], "paused");
    rt(&["resume", &id]).expect_ok();
    rt(&["kill", &id, "KILL"]).expect_ok();
    wait_for(Duration::from_secs(10), || {
        (rt(&["state", &id]).json()["status"] == "stopped").then_some(())
    })
    .expect("stopped");
    rt(&["delete", &id]).expect_ok();
    assert_eq!(
        sd.show(&unit, "LoadState"),
        "not-found",
        "delete stops the unit"
    );
    for h in hierarchies() {
        assert!(
            !sd.dir(&h, &group).exists(),
            "delete removes {}",
            h.display()
        );
    }
    assert!(!state.join(&id).exists());
}

#[test]
fn systemd_failed_create_stops_the_unit_and_a_slice_unit_works() {
    let Some(sd) = Systemd::boot("hybrid") else {
        return;
    };
    // A create that fails after the unit started leaves no unit and no group.
    let id = unique_id("sd-fail");
    let (mut b, state) = bundle(
        "true",
        &format!("system.slice:porta:{id}"),
        serde_json::json!({}),
    );
    b.mount(serde_json::json!({"destination": "/x", "type": "bind",
        "source": "/nonexistent-porta-source", "options": ["bind"]}));
    b.write();
    let o = sd
        .runtime(&state)
        .args(["create", "--bundle", &b.path_str(), &id])
        .run();
    o.expect_fail();
    let unit = format!("porta-{id}.scope");
    assert_eq!(sd.show(&unit, "LoadState"), "not-found", "{o}");
    assert!(!sd
        .dir(
            Path::new("/sys/fs/cgroup/memory"),
            &format!("/system.slice/{unit}")
        )
        .exists());
    assert!(!state.join(&id).exists());

    // The `name.slice` form: the container's group is a slice unit.
    let id = format!("sl{}", std::process::id());
    let slice = format!("system-{id}.slice");
    let (b, state) = bundle(
        "grep -c . /proc/self/cgroup; exit 3",
        &format!("system.slice:porta:{slice}"),
        serde_json::json!({"pids": {"limit": 50}}),
    );
    let o = sd
        .runtime(&state)
        .args(["run", "--bundle", &b.path_str(), &id])
        .timeout(Duration::from_secs(60))
        .run();
    assert_eq!(o.code, 3, "{o}");
    // (Asked about, a slice with no unit file is loaded again, inactive: not Porta's.)
    assert_eq!(
        sd.show(&slice, "ActiveState"),
        "inactive",
        "run's delete stops the slice"
    );
    assert!(!sd.show(&slice, "Description").contains("porta"));
    assert!(!sd
        .dir(
            Path::new("/sys/fs/cgroup/pids"),
            &format!("/system.slice/{slice}")
        )
        .exists());
    // A malformed systemd path is refused with the form it must have.
    let (b, state) = bundle("true", "/not/systemd", serde_json::json!({}));
    let o = sd
        .runtime(&state)
        .args(["create", "--bundle", &b.path_str(), "bad"])
        .run();
    o.expect_fail();
    assert!(o.stderr.contains("slice:prefix:name"), "{o}");
}

#[test]
fn systemd_driver_on_a_cgroup_v2_only_host() {
    // systemd in unified mode: the cgroup2 hierarchy alone at /sys/fs/cgroup (on the
    // development machines it has only hugetlb; the other controllers are bound to v1).
    let Some(sd) = Systemd::boot("unified") else {
        return;
    };
    let id = unique_id("sd-v2");
    let unit = format!("porta-{id}.scope");
    let (b, state) = bundle(
        "sleep 600",
        &format!("system.slice:porta:{id}"),
        serde_json::json!({}),
    );
    let rt = |args: &[&str]| sd.runtime(&state).args(args).run();
    rt(&["create", "--bundle", &b.path_str(), &id]).expect_ok();
    let group = format!("/system.slice/{unit}");
    assert_eq!(sd.show(&unit, "ControlGroup"), group);
    let v2 = hierarchies()
        .into_iter()
        .find(|h| {
            std::fs::read_to_string("/proc/self/mounts")
                .unwrap_or_default()
                .lines()
                .any(|l| l.contains(&format!(" {} cgroup2 ", h.display())))
        })
        .expect("a cgroup2 mount");
    let d = sd.dir(&v2, &group);
    // The group itself holds no process (the holder went to porta/ and is gone).
    assert_eq!(
        std::fs::read_to_string(d.join("cgroup.procs"))
            .unwrap()
            .trim(),
        ""
    );
    let init = rt(&["state", &id]).json()["pid"]
        .as_i64()
        .unwrap()
        .to_string();
    let payload = sd.read(&format!("/sys/fs/cgroup{group}/payload/cgroup.procs"));
    assert!(payload.lines().any(|p| p == init), "{payload}");
    rt(&["start", &id]).expect_ok();
    rt(&["pause", &id]).expect_ok();
    assert_eq!(
        std::fs::read_to_string(d.join("payload/cgroup.freeze"))
            .unwrap()
            .trim(),
        "1"
    );
    rt(&["resume", &id]).expect_ok();
    rt(&["delete", "--force", &id]).expect_ok();
    assert_eq!(sd.show(&unit, "LoadState"), "not-found");
    assert!(!d.exists());
}

#[test]
fn podman_with_the_systemd_cgroup_manager() {
    // Podman on a systemd host passes --systemd-cgroup and `machine.slice:libpod:<id>`.
    let Some(sd) = Systemd::boot("hybrid") else {
        return;
    };
    if !have_command("podman") {
        skip("podman is not installed (scripts/deps.sh installs it)");
        return;
    }
    std::fs::create_dir_all(BUNDLES).unwrap();
    let dir = tempfile::Builder::new()
        .prefix("podman-sd-")
        .tempdir_in(BUNDLES)
        .unwrap();
    let podman = |args: &[&str]| {
        sd.cmd("podman")
            .args(podman_args(dir.path(), "systemd"))
            .args(args)
            .timeout(Duration::from_secs(120))
            .run()
    };
    let tar = dir.path().join("rootfs.tar");
    rootfs::tar_to(&tar).unwrap();
    let image = "localhost/pit-busybox:latest";
    podman(&["import", tar.to_str().unwrap(), image]).expect_ok();
    let o = podman(&[
        "run",
        "--rm",
        "--network=none",
        image,
        "sh",
        "-c",
        "echo hi; exit 4",
    ]);
    assert_eq!((o.code, o.stdout.trim()), (4, "hi"), "{o}");
    let o = podman(&[
        "run",
        "-d",
        "--network=none",
        "--pids-limit",
        "33",
        image,
        "sleep",
        "1000",
    ]);
    o.expect_ok();
    let cid = o.stdout.trim().to_string();
    let unit = format!("libpod-{cid}.scope");
    assert_eq!(sd.show(&unit, "ActiveState"), "active", "{o}");
    assert_eq!(
        sd.show(&unit, "ControlGroup"),
        format!("/machine.slice/{unit}")
    );
    assert_eq!(
        sd.show(&unit, "TasksMax"),
        "97",
        "33 + the servers' reserve"
    );
    let o = podman(&["exec", &cid, "sh", "-c", "echo exec-ok"]);
    assert_eq!(o.stdout.trim(), "exec-ok", "{o}");
    podman(&["stop", "-t", "2", &cid]).expect_ok();
    podman(&["rm", &cid]).expect_ok();
    assert_eq!(
        sd.show(&unit, "LoadState"),
        "not-found",
        "rm removes the unit"
    );
    let _ = podman(&["rmi", "-a", "-f"]);
    drop(sd);
    // Podman's mounts lived in the test systemd's mount namespace, gone with it.
    let _ = std::fs::remove_dir_all(dir.path());
}

/// The unprivileged user of the rootless test (needs no passwd entry on the host).
const UID: u32 = 52_017;

#[test]
fn rootless_systemd_driver_uses_the_user_manager() {
    // Rootless Podman on a systemd host with cgroup v2 passes --systemd-cgroup: the unit
    // then belongs to the user's own systemd, on the user's session bus.
    let Some(sd) = Systemd::boot_with_user("unified", Some(UID)) else {
        return;
    };
    if !have_command("setpriv") || !have_command("systemd-run") {
        skip("needs setpriv and systemd-run");
        return;
    }
    let b = Bundle::new(&["true"]);
    let state = b.path().join("state");
    std::fs::create_dir(&state).unwrap();
    let chown = || user::chown_tree(b.path(), UID);
    chown();
    let run_dir = format!("/run/user/{UID}");
    // The user's commands run in a scope of the user's manager, as Podman runs conmon: the
    // container's processes may then move themselves into the container's leaves.
    let as_user = |prog: &[&str]| {
        sd.cmd("setpriv")
            .args(user::setpriv_args(UID))
            .args([
                "env".to_string(),
                format!("XDG_RUNTIME_DIR={run_dir}"),
                format!("DBUS_SESSION_BUS_ADDRESS=unix:path={run_dir}/bus"),
            ])
            .args(prog)
    };
    let porta = runtime().display().to_string();
    let state_s = state.display().to_string();
    let rt = |args: &[&str]| {
        let mut cmd = vec!["systemd-run", "--user", "--scope", "--quiet", &porta];
        cmd.extend(["--root", &state_s, "--systemd-cgroup"]);
        cmd.extend(args);
        as_user(&cmd).run()
    };
    as_user(&[
        "sh",
        "-c",
        &format!("cd {} && {porta} spec --rootless", b.path_str()),
    ])
    .run()
    .expect_ok();
    let mut cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(b.file("config.json")).unwrap()).unwrap();
    cfg["process"]["args"] = serde_json::json!(["sleep", "600"]);
    cfg["process"]["terminal"] = serde_json::json!(false);
    std::fs::write(b.file("config.json"), serde_json::to_vec(&cfg).unwrap()).unwrap();
    chown();

    let id = unique_id("sd-user");
    let unit = format!("porta-{id}.scope");
    rt(&["create", "--bundle", &b.path_str(), &id]).expect_ok();
    let show = |prop: &str| {
        as_user(&["systemctl", "--user", "show", "-p", prop, "--value", &unit])
            .run()
            .stdout
            .trim()
            .to_string()
    };
    assert_eq!(show("ActiveState"), "active");
    let group = show("ControlGroup");
    assert!(
        group.ends_with(&format!("/user@{UID}.service/user.slice/{unit}")),
        "the default slice is the user manager's user.slice: {group}"
    );
    let init = rt(&["state", &id]).json()["pid"]
        .as_i64()
        .unwrap()
        .to_string();
    let payload = sd.read(&format!("/sys/fs/cgroup{group}/payload/cgroup.procs"));
    assert!(payload.lines().any(|p| p == init), "{payload}");
    rt(&["start", &id]).expect_ok();
    rt(&["pause", &id]).expect_ok();
    assert_eq!(rt(&["state", &id]).json()["status"], "paused");
    rt(&["resume", &id]).expect_ok();
    rt(&["delete", "--force", &id]).expect_ok();
    assert_eq!(
        show("LoadState"),
        "not-found",
        "delete stops the user's unit"
    );
    assert!(sd
        .read(&format!("/sys/fs/cgroup{group}/cgroup.procs"))
        .is_empty());
    assert!(!state.join(&id).exists());
}

#[test]
fn containerd_with_the_systemd_cgroup_driver() {
    // containerd's runc v2 shim with SystemdCgroup (as Kubernetes uses it): `ctr run
    // --runc-systemd-cgroup` with a cgroup path of the systemd form.
    let Some(sd) = Systemd::boot("hybrid") else {
        return;
    };
    if !have_command("containerd") || !have_command("ctr") {
        skip("containerd/ctr not installed (scripts/deps.sh installs them)");
        return;
    }
    let cd = porta_integration::containerd::Containerd::start_in(sd.prefix());
    let tar = porta_integration::containerd::build_image(&cd.dir);
    cd.ctr()
        .args(["images", "import", "--snapshotter", "native"])
        .arg(&tar)
        .run()
        .expect_ok();
    let image = porta_integration::containerd::IMAGE;
    let run = |id: &str, extra: &[&str], args: &[&str]| {
        cd.ctr()
            .arg("run")
            .args(extra)
            .args([
                "--runc-systemd-cgroup",
                "--cgroup",
                &format!("system.slice:ctr:{id}"),
            ])
            .args(cd.run_opts())
            .arg(image)
            .arg(id)
            .args(args)
            .run()
    };
    let id = unique_id("ctr-sd-run");
    let o = run(&id, &["--rm"], &["sh", "-c", "echo hi-from-ctr; exit 5"]);
    assert_eq!((o.code, o.stdout.trim()), (5, "hi-from-ctr"), "{o}");
    assert_eq!(
        sd.show(&format!("ctr-{id}.scope"), "LoadState"),
        "not-found"
    );

    let id = unique_id("ctr-sd-task");
    let unit = format!("ctr-{id}.scope");
    run(&id, &["-d"], &["sleep", "600"]).expect_ok();
    assert_eq!(sd.show(&unit, "ActiveState"), "active");
    assert_eq!(
        sd.show(&unit, "ControlGroup"),
        format!("/system.slice/{unit}")
    );
    cd.kill_and_remove(&id);
    assert_eq!(
        sd.show(&unit, "LoadState"),
        "not-found",
        "the task's delete stops the unit"
    );
    let _ = cd.ctr().args(["images", "rm", image]).run();
    // containerd and its mounts live in the test systemd's namespaces: gone with it.
    drop(sd);
    drop(cd);
}
