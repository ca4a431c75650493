//! Docker drives the runtime end to end, through containerd's runc v2 shim: a private
//! `dockerd` (its own data root, exec root, pid file, socket and config file under a
//! temporary directory; no bridge, no iptables; the runtime under test added as `porta`;
//! ulimit defaults the host allows; a `pit-` cgroup parent) runs an image imported from the
//! tests' busybox root file system with `--runtime porta --network none`: output and exit
//! code, `run -d` + `exec` + `stop` + `rm`, `docker cp` out of and into a running
//! container, `--read-only`, `--tmpfs`, and the same next to runc (`--runtime runc`).
//! With Porta, every container's root must be a FUSE mount served by its own file server
//! (`porta state` lists it), and runc and Porta share Docker's state root
//! (`<exec-root>/runtime-runc/moby`): `runc list` there must not fail on Porta's containers.
//! Everything dockerd made (containers, mounts, cgroups, network namespaces, state) is
//! removed when the test ends, also when it fails. Skipped when dockerd is not installed.

use porta_integration::*;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const IMAGE: &str = "pit-busybox:latest";

/// Directories outside its private one that dockerd and its containerd make whatever the
/// flags say (plugin discovery, shim sockets); removed when the test made them and they
/// are empty, deepest first.
const HOST_DIRS: [&str; 4] = [
    "/run/docker/plugins",
    "/run/docker",
    "/run/containerd/s",
    "/run/containerd",
];

/// A private dockerd.
struct Dockerd {
    dir: PathBuf,
    child: Option<Child>,
    /// The `--cgroup-parent` of its containers (a `pit-` name, so the leak check sees it).
    cgroup_parent: String,
    /// Which of [`HOST_DIRS`] existed before the daemon started.
    had: Vec<bool>,
}

/// The Docker client: Debian's, beside its dockerd, when installed; else the one on PATH.
fn docker_client() -> PathBuf {
    let debian = Path::new("/usr/bin/docker");
    if debian.exists() {
        return debian.to_path_buf();
    }
    PathBuf::from("docker")
}

/// The soft and hard limit of a resource on this host, for Docker's `--default-ulimit`
/// (Docker's defaults ask for more than some hosts allow, and the hard limit of the
/// daemon's own process cannot be raised).
fn ulimit(res: libc::__rlimit_resource_t, cap: u64) -> String {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass and reads nothing else.
    unsafe { libc::getrlimit(res, &mut r) };
    let hard = if r.rlim_max == libc::RLIM_INFINITY {
        cap
    } else {
        r.rlim_max.min(cap)
    };
    format!("{hard}:{hard}")
}

impl Dockerd {
    fn start() -> Dockerd {
        std::fs::create_dir_all(BUNDLES).unwrap();
        let dir = tempfile::Builder::new()
            .prefix("docker-")
            .tempdir_in(BUNDLES)
            .unwrap()
            .keep();
        // its own config file (the host's /etc/docker/daemon.json is not read), which puts
        // the daemon's identity key in the private directory (else /etc/docker/key.json)
        std::fs::write(
            dir.join("daemon.json"),
            serde_json::to_vec(&json!({"deprecated-key-path": dir.join("key.json")})).unwrap(),
        )
        .unwrap();
        let cgroup_parent = format!("pit-docker-{}", std::process::id());
        let had = HOST_DIRS.iter().map(|d| Path::new(d).exists()).collect();
        let log = std::fs::File::create(dir.join("dockerd.log")).unwrap();
        let p = |s: &str| dir.join(s);
        let mut me = Dockerd {
            dir: dir.clone(),
            child: None,
            cgroup_parent: cgroup_parent.clone(),
            had,
        };
        let child = Command::new("dockerd")
            .arg("--config-file")
            .arg(p("daemon.json"))
            .arg("--data-root")
            .arg(p("data"))
            .arg("--exec-root")
            .arg(p("exec"))
            .arg("--pidfile")
            .arg(p("docker.pid"))
            .arg("-H")
            .arg(format!("unix://{}", p("docker.sock").display()))
            .args([
                "--bridge=none",
                "--iptables=false",
                "--ip-masq=false",
                "--storage-driver",
                "vfs",
                "--cgroup-parent",
                &cgroup_parent,
                "--default-ulimit",
                &format!("nofile={}", ulimit(libc::RLIMIT_NOFILE, 1024)),
                "--default-ulimit",
                &format!("nproc={}", ulimit(libc::RLIMIT_NPROC, 1024)),
            ])
            .arg("--add-runtime")
            .arg(format!("porta={}", runtime().display()))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start dockerd");
        me.child = Some(child);
        // up when the API answers; given up when the daemon exits (the bound is generous:
        // a loaded machine starts dockerd and its containerd slowly)
        let up = wait_for(Duration::from_secs(180), || {
            if let Some(Ok(Some(st))) = me.child.as_mut().map(|c| c.try_wait()) {
                return Some(Err(st));
            }
            me.cmd()
                .timeout(Duration::from_secs(10))
                .args(["version", "--format", "{{.Server.Version}}"])
                .run()
                .ok()
                .then_some(Ok(()))
        });
        assert!(
            matches!(up, Some(Ok(()))),
            "dockerd did not come up ({up:?}): {}",
            std::fs::read_to_string(me.dir.join("dockerd.log")).unwrap_or_default()
        );
        me
    }

    fn cmd(&self) -> Cmd {
        Cmd::new(docker_client())
            .arg("-H")
            .arg(format!("unix://{}", self.dir.join("docker.sock").display()))
            .timeout(Duration::from_secs(120))
    }

    fn run(&self, args: &[&str]) -> Out {
        self.cmd().args(args).run()
    }

    /// `docker run` with the runtime named `rt` and no network, then `args`.
    fn run_in(&self, rt: &str, args: &[&str]) -> Out {
        self.cmd()
            .args(["run", "--runtime", rt, "--network", "none"])
            .args(args)
            .run()
    }

    /// The state root the shim gives every runtime for container `cid` (the directory
    /// below the exec root that holds a directory named after it).
    fn state_root_of(&self, cid: &str) -> PathBuf {
        let exec = self.dir.join("exec");
        for e in std::fs::read_dir(&exec).unwrap().flatten() {
            let moby = e.path().join("moby");
            if moby.join(cid).is_dir() {
                return moby;
            }
        }
        panic!("no state directory of {cid} below {}", exec.display());
    }

    /// The container group's directories (any hierarchy) below the daemon's cgroup parent.
    fn parent_cgroups(&self) -> Vec<PathBuf> {
        let name = self.cgroup_parent.clone();
        leaks::cgroups_matching(&move |n| n == name)
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        // containers first (their shims exit with them), then images, then the daemon
        let ids = self.run(&["ps", "-a", "-q"]);
        let ids: Vec<&str> = ids.stdout.split_whitespace().collect();
        if !ids.is_empty() {
            let _ = self.cmd().args(["rm", "-f"]).args(&ids).run();
        }
        let _ = self.run(&["rmi", "-f", IMAGE]);
        if let Some(mut child) = self.child.take() {
            // SAFETY: a signal to the daemon we started and have not reaped.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let gone = wait_for(Duration::from_secs(60), || child.try_wait().ok().flatten());
            if gone.is_none() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        unmount_below(&self.dir);
        for top in self.parent_cgroups() {
            cgroup::remove_tree(&top);
        }
        let d = self.dir.display().to_string();
        if !std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .contains(&d)
        {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
        for (p, had) in HOST_DIRS.iter().zip(&self.had) {
            if !had {
                let _ = std::fs::remove_dir(p); // only when empty
            }
        }
    }
}

fn have_dockerd() -> bool {
    if !have_command("dockerd") {
        skip("dockerd is not installed (scripts/deps.sh installs docker.io)");
        return false;
    }
    true
}

/// The mountinfo line of `/` in a container's mount table (as printed by the container).
fn root_line(mountinfo: &str) -> String {
    mountinfo
        .lines()
        .find(|l| l.split_whitespace().nth(4) == Some("/"))
        .unwrap_or_default()
        .to_string()
}

/// Asserts that a container's root, as its mountinfo shows it, is Porta's FUSE mount.
#[track_caller]
fn assert_served_by_porta(mountinfo: &str, what: &str) {
    let l = root_line(mountinfo);
    let fstype = l
        .split(" - ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next());
    assert_eq!(
        fstype,
        Some("fuse"),
        "{what}: the root is not a FUSE mount: {l:?}\n{mountinfo}"
    );
    assert!(
        l.contains(" porta-"),
        "{what}: the root's FUSE mount is not Porta's: {l:?}"
    );
}

/// Asserts that `porta state` of a running container lists its file server, alive.
#[track_caller]
fn assert_has_file_server(root: &Path, cid: &str) {
    let o = Cmd::new(runtime())
        .arg("--root")
        .arg(root)
        .args(["state", cid])
        .run();
    o.expect_ok();
    let st = o.json();
    let servers = st["servers"].as_array().cloned().unwrap_or_default();
    let fs = servers
        .iter()
        .find(|s| s["name"] == "fs")
        .unwrap_or_else(|| panic!("porta state lists no file server: {st}"));
    let pid = fs["pid"].as_i64().unwrap_or(0) as i32;
    assert!(pid > 0 && pid_alive(pid), "file server not alive: {st}");
}

#[test]
fn docker_end_to_end() {
    require_root!();
    if !have_dockerd() {
        return;
    }
    let porta = is_porta();
    let dk = Dockerd::start();
    // the leak check sees a running private dockerd (so it would see one left behind)
    let d = dk.dir.display().to_string();
    let seen = leaks::docker_leftovers();
    assert!(
        seen.iter()
            .any(|l| l.contains("docker daemon") && l.contains(&d)),
        "the leak check does not see the test's dockerd: {seen:#?}"
    );
    let tar = dk.dir.join("rootfs.tar");
    rootfs::tar_to(&tar).unwrap();
    dk.run(&[
        "import",
        "--change",
        "ENV PATH=/usr/sbin:/usr/bin:/sbin:/bin",
        tar.to_str().unwrap(),
        IMAGE,
    ])
    .expect_ok();
    let show_root = "grep ' / ' /proc/self/mountinfo";

    // run --rm in the foreground: output, exit code, the root
    for rt in ["porta", "runc"] {
        let o = dk.run_in(
            rt,
            &[
                "--rm",
                IMAGE,
                "sh",
                "-c",
                &format!("echo hi-{rt}; {show_root}; exit 3"),
            ],
        );
        assert_eq!(o.code, 3, "exit code through docker with {rt}: {o}");
        assert_eq!(
            o.stdout.lines().next(),
            Some(format!("hi-{rt}").as_str()),
            "{o}"
        );
        if rt == "porta" && porta {
            assert_served_by_porta(&o.stdout, "docker run --runtime porta");
        }
        if rt == "runc" {
            assert_ne!(
                root_line(&o.stdout)
                    .split(" - ")
                    .nth(1)
                    .and_then(|r| r.split_whitespace().next()),
                Some("fuse"),
                "runc's root is not FUSE: {o}"
            );
        }
    }

    // run -d, inspect, exec, the root served by Porta, cp out and in, stop, rm
    let o = dk.run_in(
        "porta",
        &[
            "-d",
            "--name",
            "pit-docker-detached",
            IMAGE,
            "sleep",
            "1000",
        ],
    );
    o.expect_ok();
    let cid = o.stdout.trim().to_string();
    assert_eq!(cid.len(), 64, "{o}");
    let o = dk.run(&[
        "inspect",
        "--format",
        "{{.HostConfig.Runtime}} {{.State.Status}}",
        &cid,
    ]);
    o.expect_ok();
    assert_eq!(o.stdout.trim(), "porta running", "{o}");
    let o = dk.run(&["exec", &cid, "sh", "-c", "echo exec-ok; id -u"]);
    o.expect_ok();
    assert_eq!(o.stdout, "exec-ok\n0\n", "{o}");
    let o = dk.run(&["exec", &cid, "sh", "-c", "exit 5"]);
    assert_eq!(o.code, 5, "exit code of docker exec: {o}");
    let o = dk.run(&["exec", &cid, "ps", "-o", "pid,comm"]);
    o.expect_ok();
    assert!(o.stdout.contains("sleep"), "{o}");
    let state_root = dk.state_root_of(&cid);
    if porta {
        let o = dk.run(&["exec", &cid, "cat", "/proc/self/mountinfo"]);
        o.expect_ok();
        assert_served_by_porta(&o.stdout, "docker exec in a Porta container");
        assert_has_file_server(&state_root, &cid);
    }

    // docker cp out of the running container
    dk.run(&["exec", &cid, "sh", "-c", "echo made-inside > /tmp/out.txt"])
        .expect_ok();
    let out = dk.dir.join("out.txt");
    dk.run(&["cp", &format!("{cid}:/tmp/out.txt"), out.to_str().unwrap()])
        .expect_ok();
    assert_eq!(
        std::fs::read_to_string(&out).unwrap(),
        "made-inside\n",
        "docker cp out of a running container"
    );
    // docker cp into the running container: seen inside at once
    let inp = dk.dir.join("in.txt");
    std::fs::write(&inp, "copied-in\n").unwrap();
    dk.run(&["cp", inp.to_str().unwrap(), &format!("{cid}:/tmp/in.txt")])
        .expect_ok();
    let o = dk.run(&["exec", &cid, "cat", "/tmp/in.txt"]);
    assert_eq!(
        o.stdout, "copied-in\n",
        "a file docker cp put into a running container is not seen inside: {o}"
    );

    // a runc container beside it: both runtimes share the shim's state root
    let o = dk.run_in("runc", &["-d", IMAGE, "sleep", "1000"]);
    o.expect_ok();
    let rcid = o.stdout.trim().to_string();
    assert_eq!(
        dk.state_root_of(&rcid),
        state_root,
        "docker gives runc and the runtime under test different state roots"
    );
    if porta && have_command("runc") {
        let o = Cmd::new("runc")
            .arg("--root")
            .arg(&state_root)
            .args(["list", "--format", "json"])
            .run();
        o.expect_ok();
        assert!(
            o.stderr.trim().is_empty(),
            "runc list fails on Porta's container in the shared root: {o}"
        );
        let list = o.json();
        let ids: Vec<&str> = list
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|c| c["id"].as_str())
            .collect();
        assert!(
            ids.contains(&cid.as_str()) && ids.contains(&rcid.as_str()),
            "{o}"
        );
        let o = Cmd::new("runc")
            .arg("--root")
            .arg(&state_root)
            .args(["state", &cid])
            .run();
        o.expect_ok();
        assert_eq!(o.json()["status"], "running", "{o}");
        // Porta lists its own and names runc's as runc's
        let o = Cmd::new(runtime())
            .arg("--root")
            .arg(&state_root)
            .args(["list", "-q"])
            .run();
        o.expect_ok();
        assert_eq!(o.stdout.trim(), cid, "{o}");
        let o = Cmd::new(runtime())
            .arg("--root")
            .arg(&state_root)
            .args(["state", &rcid])
            .run();
        o.expect_fail();
        assert!(o.stderr.contains("made by runc"), "{o}");
        // and leaves it alone, even when asked to delete it
        let o = Cmd::new(runtime())
            .arg("--root")
            .arg(&state_root)
            .args(["delete", "--force", &rcid])
            .run();
        o.expect_fail();
        assert!(o.stderr.contains("made by runc"), "{o}");
        assert!(state_root.join(&rcid).join("state.json").exists());
        let o = dk.run(&["inspect", "--format", "{{.State.Status}}", &rcid]);
        assert_eq!(o.stdout.trim(), "running", "{o}");
    }
    dk.run(&["rm", "-f", &rcid]).expect_ok();

    dk.cmd().args(["stop", "-t", "2", &cid]).run().expect_ok();
    let o = dk.run(&["inspect", "--format", "{{.State.Status}}", &cid]);
    assert_eq!(o.stdout.trim(), "exited", "{o}");
    dk.run(&["rm", &cid]).expect_ok();
    assert!(
        !state_root.join(&cid).exists(),
        "the runtime's state of {cid} is left after docker rm"
    );

    // --read-only: the root refuses writes, and is still Porta's
    let o = dk.run_in(
        "porta",
        &[
            "--rm",
            "--read-only",
            IMAGE,
            "sh",
            "-c",
            &format!("{show_root}; touch /probe && echo WROTE; exit 0"),
        ],
    );
    o.expect_ok();
    assert!(
        !o.stdout.contains("WROTE"),
        "--read-only root took a write: {o}"
    );
    assert!(
        o.stderr.contains("Read-only file system"),
        "no read-only error: {o}"
    );
    let root = root_line(&o.stdout);
    assert!(
        root.split_whitespace()
            .nth(5)
            .is_some_and(|f| f.split(',').any(|x| x == "ro")),
        "--read-only root not mounted ro: {root:?}"
    );
    if porta {
        assert_served_by_porta(&o.stdout, "docker run --read-only");
    }

    // --tmpfs on a read-only root
    let o = dk.run_in(
        "porta",
        &[
            "--rm",
            "--read-only",
            "--tmpfs",
            "/scratch:size=1m",
            IMAGE,
            "sh",
            "-c",
            &format!(
                "echo in-tmpfs > /scratch/f && cat /scratch/f; \
                 grep ' /scratch ' /proc/self/mountinfo; {show_root}"
            ),
        ],
    );
    o.expect_ok();
    assert_eq!(o.stdout.lines().next(), Some("in-tmpfs"), "{o}");
    let scratch = o
        .stdout
        .lines()
        .find(|l| l.split_whitespace().nth(4) == Some("/scratch"))
        .unwrap_or_default();
    assert!(
        scratch.contains(" - tmpfs "),
        "/scratch is not a tmpfs: {o}"
    );
    assert!(
        scratch.contains("size=1024k"),
        "/scratch has not size=1m: {o}"
    );
    if porta {
        assert_served_by_porta(&o.stdout, "docker run --tmpfs");
    }

    let o = dk.run(&["ps", "-a", "-q"]);
    assert!(o.stdout.trim().is_empty(), "containers left in docker: {o}");
    dk.run(&["rmi", IMAGE]).expect_ok();
    let dir = dk.dir.clone();
    let parent = dk.cgroup_parent.clone();
    drop(dk);
    assert!(
        !dir.exists(),
        "docker's private directory could not be removed: {}",
        dir.display()
    );
    let left = leaks::cgroups_matching(&|n| n == parent);
    assert!(left.is_empty(), "docker's cgroup parent is left: {left:?}");
    let mut left = leaks::mounts_matching(&|l| l.contains(&d));
    left.extend(leaks::processes_matching(&|s| s.contains(&d)));
    assert!(left.is_empty(), "docker left: {left:#?}");
    let left: Vec<_> = leaks::docker_leftovers()
        .into_iter()
        .filter(|l| l.contains(&d) || l.contains(&parent))
        .collect();
    assert!(left.is_empty(), "the leak check finds docker's: {left:#?}");
}
