//! The Kubernetes Container Runtime Interface (CRI) drives the runtime the way the
//! kubelet does: a private containerd with its CRI plugin enabled and two runtime
//! handlers, `porta` (the runtime under test, declared as the README tells users) and
//! `runc` (where runc is installed), side by side. A CRI client (`cri/cri_client.py`, a
//! small gRPC client over Porta's own subset of the CRI proto, `cri/runtime.proto`)
//! runs a pod sandbox with host networking (no CNI needed), creates and starts a
//! container from a locally imported busybox image, runs commands in it with ExecSync,
//! checks the root is served by Porta's file server (for the `porta` handler), stops and
//! removes container and sandbox, and checks that nothing is left. The sandbox ("pause")
//! image is built locally from the same busybox root: no registry is needed.

use porta_integration::containerd::{build_oci_image, Containerd};
use porta_integration::*;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Debian's Python, which has the `python3-grpcio` and `python3-protobuf` packages (a
/// `python3` earlier on PATH may be another installation without them).
const PYTHON: &str = "/usr/bin/python3";
/// The container image the pods' containers run.
const BUSYBOX_IMAGE: &str = "docker.io/library/pit-cri-busybox:latest";
/// The sandbox image (`sandbox_image` of the CRI plugin): busybox's `sleep`.
const PAUSE_IMAGE: &str = "docker.io/library/pit-cri-pause:latest";
/// The containerd namespace of the CRI plugin.
const CRI_NAMESPACE: &str = "k8s.io";
/// Bound on one CRI call (a failure bound, not a speed check).
const CALL_TIMEOUT: Duration = Duration::from_secs(180);

/// The directory holding the proto and the client.
fn cri_dir() -> PathBuf {
    workspace().join("crates/porta-integration/cri")
}

/// The path of `prog` on PATH.
fn which(prog: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(prog))
        .find(|p| p.is_file())
}

/// Whether this process may lower an oom_score_adj (CAP_SYS_RESOURCE in its bounding
/// set). Without it the CRI plugin's default sandbox oom_score_adj (-998) is refused by
/// the kernel for any runtime, runc too.
fn has_cap_sys_resource() -> bool {
    const CAP_SYS_RESOURCE: u32 = 24;
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapBnd:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .is_some_and(|bnd| bnd & (1 << CAP_SYS_RESOURCE) != 0)
}

/// One runtime handler of the CRI plugin.
struct Handler {
    /// The handler's name (`runtime_handler` of RunPodSandbox).
    name: &'static str,
    /// Its `BinaryName`.
    binary: PathBuf,
    /// Whether the binary is Porta (then the Porta-only checks apply).
    porta: bool,
}

impl Handler {
    /// The runtime's `--root` under the shim: `options.Root` / containerd's namespace.
    fn root(&self, dir: &Path) -> PathBuf {
        dir.join(format!("rr-{}", self.name)).join(CRI_NAMESPACE)
    }
}

/// A private containerd with the CRI plugin, and a CRI client for it. Dropping it stops
/// and removes whatever pod sandbox is left (and so their containers), stops containerd,
/// removes its directory and the pods' cgroup parent.
struct Cri {
    cd: Option<Containerd>,
    dir: PathBuf,
    stubs: PathBuf,
    sock: PathBuf,
    /// The pods' cgroup parent (`/pit-cri-<pid>`: the leak check finds it by its name).
    cgroup_parent: String,
}

impl Cri {
    fn start(handlers: &[Handler]) -> Cri {
        let restrict_oom = !has_cap_sys_resource();
        if restrict_oom {
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "note: no CAP_SYS_RESOURCE here: the CRI plugin is told restrict_oom_score_adj \
                 (the sandbox keeps containerd's oom_score_adj instead of -998)"
            );
        }
        let cd = Containerd::start_with_cri(|d| {
            let d = d.display();
            let mut t = format!(
                "[plugins.\"io.containerd.grpc.v1.cri\"]\n\
                 \x20 sandbox_image = \"{PAUSE_IMAGE}\"\n\
                 \x20 stream_server_address = \"127.0.0.1\"\n\
                 \x20 stream_server_port = \"0\"\n\
                 \x20 restrict_oom_score_adj = {restrict_oom}\n\
                 [plugins.\"io.containerd.grpc.v1.cri\".cni]\n\
                 \x20 bin_dir = \"{d}/cni/bin\"\n\
                 \x20 conf_dir = \"{d}/cni/conf\"\n\
                 [plugins.\"io.containerd.grpc.v1.cri\".containerd]\n\
                 \x20 snapshotter = \"native\"\n\
                 \x20 default_runtime_name = \"porta\"\n"
            );
            for h in handlers {
                // The snippet the README gives users (with its pod_annotations allow-list
                // for Porta's annotations), plus a private state root.
                let n = h.name;
                t.push_str(&format!(
                    "[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.{n}]\n\
                     \x20 runtime_type = \"io.containerd.runc.v2\"\n\
                     \x20 pod_annotations = [\"run.porta.*\"]\n\
                     [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.{n}.options]\n\
                     \x20 BinaryName = \"{}\"\n\
                     \x20 Root = \"{d}/rr-{n}\"\n",
                    h.binary.display()
                ));
            }
            t
        });
        let dir = cd.dir.clone();
        let stubs = dir.join("stubs");
        std::fs::create_dir_all(&stubs).unwrap();
        let cri = Cri {
            sock: dir.join("c.sock"),
            dir,
            stubs,
            cd: Some(cd),
            cgroup_parent: format!("/{ID_PREFIX}cri-{}", std::process::id()),
        };
        let proto = cri_dir();
        let o = Cmd::new("protoc")
            .arg("-I")
            .arg(&proto)
            .arg(format!("--python_out={}", cri.stubs.display()))
            .arg(proto.join("runtime.proto"))
            .run();
        o.expect_ok();
        // the images, in the CRI plugin's namespace, unpacked for its snapshotter
        for (name, entrypoint, cmd) in [
            (BUSYBOX_IMAGE, &[][..], &["sh"][..]),
            (PAUSE_IMAGE, &["sleep", "2147483647"][..], &[][..]),
        ] {
            let tar = build_oci_image(&cri.dir, name, entrypoint, cmd);
            cri.ctr()
                .args(["images", "import", "--snapshotter", "native"])
                .arg(&tar)
                .run()
                .expect_ok();
        }
        // The plugin learns of imported images from containerd's events: wait (bounded)
        // until it knows both.
        for image in [BUSYBOX_IMAGE, PAUSE_IMAGE] {
            let known = wait_for(Duration::from_secs(60), || {
                let r = cri.ok(
                    "ImageService/ImageStatus",
                    json!({"image": {"image": image}}),
                );
                r["image"]["id"]
                    .as_str()
                    .is_some_and(|s| !s.is_empty())
                    .then_some(())
            });
            assert!(known.is_some(), "the CRI plugin never saw image {image}");
        }
        cri
    }

    fn ctr(&self) -> Cmd {
        Cmd::new("ctr")
            .arg("-a")
            .arg(&self.sock)
            .args(["-n", CRI_NAMESPACE])
            .timeout(CALL_TIMEOUT)
    }

    /// Calls `method` (`Service/Method`) with the JSON request; the JSON response, or the
    /// client's error output (the gRPC status code's name and message when the server
    /// refused; the whole output when the client itself failed).
    fn call(&self, method: &str, req: Value) -> Result<Value, String> {
        self.call_within(method, req, CALL_TIMEOUT)
    }

    /// [`Cri::call`] bounded by `timeout`.
    fn call_within(&self, method: &str, req: Value, timeout: Duration) -> Result<Value, String> {
        let o = Cmd::new(PYTHON)
            .arg(cri_dir().join("cri_client.py"))
            .arg(&self.stubs)
            .arg(&self.sock)
            .arg(method)
            .arg(timeout.as_secs().to_string())
            .stdin(req.to_string())
            .timeout(timeout + Duration::from_secs(30))
            .run();
        match o.code {
            0 => Ok(serde_json::from_str(&o.stdout)
                .unwrap_or_else(|e| panic!("{method}: bad JSON from the client ({e}): {o}"))),
            3 => Err(o.stderr),
            // not panicking: Drop calls this too
            _ => Err(format!("{method}: the CRI client failed: {o}")),
        }
    }

    /// [`Cri::call`], panicking (with the containerd log) when the call fails.
    #[track_caller]
    fn ok(&self, method: &str, req: Value) -> Value {
        match self.call(method, req.clone()) {
            Ok(v) => v,
            Err(e) => panic!(
                "CRI {method} failed: {e}\nrequest: {req}\n--- containerd log (tail) ---\n{}",
                self.log_tail()
            ),
        }
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// The pod sandbox config of one handler's pod (the kubelet's choices for a pod with
    /// `hostNetwork: true`: network and UTS of the node, a pod IPC namespace, a PID
    /// namespace per container).
    /// `pod` names the pod (and its log directory); `annotations` are the pod's.
    fn sandbox_config(&self, pod: &str, annotations: Value) -> Value {
        let logs = self.dir.join("pods").join(pod);
        std::fs::create_dir_all(&logs).unwrap();
        json!({
            "metadata": {"name": format!("pit-pod-{pod}"), "uid": format!("pit-uid-{pod}-{}", std::process::id()), "namespace": "pit"},
            "log_directory": logs,
            "labels": {"pit-test": "cri"},
            "annotations": annotations,
            "linux": {
                "cgroup_parent": self.cgroup_parent,
                "security_context": {
                    "namespace_options": {"network": "NODE", "pid": "CONTAINER", "ipc": "POD"}
                }
            }
        })
    }
}

impl Drop for Cri {
    fn drop(&mut self) {
        // What a failed test left: stop and remove every sandbox (with its containers).
        // Shorter bounds: containerd may be what failed.
        let t = Duration::from_secs(60);
        if let Ok(list) = self.call_within("RuntimeService/ListPodSandbox", json!({}), t) {
            for sb in list["items"].as_array().cloned().unwrap_or_default() {
                let id = json!({"pod_sandbox_id": sb["id"]});
                let _ = self.call_within("RuntimeService/StopPodSandbox", id.clone(), t);
                let _ = self.call_within("RuntimeService/RemovePodSandbox", id, t);
            }
        }
        drop(self.cd.take());
        let name = self.cgroup_parent.trim_start_matches('/').to_string();
        for d in leaks::cgroups_matching(&|n| n == name) {
            cgroup::remove_tree(&d);
        }
    }
}

/// The mountinfo line of the root ("/" as mount point; the last one, the one seen).
fn root_line(mountinfo: &str) -> String {
    mountinfo
        .lines()
        .rfind(|l| l.split_whitespace().nth(4) == Some("/"))
        .unwrap_or_default()
        .to_string()
}

/// The file system type of a mountinfo line.
fn fstype(line: &str) -> Option<&str> {
    line.split(" - ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
}

/// `<runtime> --root <root> state <id>` as JSON.
#[track_caller]
fn runtime_state(h: &Handler, root: &Path, id: &str) -> Value {
    let o = Cmd::new(&h.binary)
        .arg("--root")
        .arg(root)
        .args(["state", id])
        .run();
    o.expect_ok();
    o.json()
}

/// Asserts that Porta's state of `id` lists a live file server.
#[track_caller]
fn assert_file_server(st: &Value, what: &str) {
    let fs = st["servers"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["name"] == "fs"))
        .unwrap_or_else(|| panic!("{what}: porta state lists no file server: {st}"));
    let pid = fs["pid"].as_i64().unwrap_or(0) as i32;
    assert!(
        pid > 0 && pid_alive(pid),
        "{what}: file server not alive: {st}"
    );
}

/// A pod through CRI with `h`: sandbox, container, ExecSync, stop, removal. With
/// `kernel_root` the pod has the annotation `run.porta.fs=kernel` (passed on to the
/// runtime by the handler's `pod_annotations`): with Porta, no file server then.
fn pod_lifecycle(cri: &Cri, h: &Handler, kernel_root: bool) {
    let pod = format!("{}{}", h.name, if kernel_root { "-kernel" } else { "" });
    let what = format!("handler {}, pod {pod}", h.name);
    let root = h.root(&cri.dir);
    // the root is Porta's FUSE mount, with a file server
    let served = h.porta && !kernel_root;

    // the sandbox
    let annotations = if kernel_root {
        json!({"run.porta.fs": "kernel"})
    } else {
        json!({})
    };
    let sb_config = cri.sandbox_config(&pod, annotations);
    let r = cri.ok(
        "RuntimeService/RunPodSandbox",
        json!({"config": sb_config, "runtime_handler": h.name}),
    );
    let sb = r["pod_sandbox_id"].as_str().unwrap_or_default().to_string();
    assert!(!sb.is_empty(), "{what}: no sandbox id: {r}");
    let st = cri.ok(
        "RuntimeService/PodSandboxStatus",
        json!({"pod_sandbox_id": sb}),
    );
    assert_eq!(st["status"]["state"], "SANDBOX_READY", "{what}: {st}");
    assert_eq!(st["status"]["runtime_handler"], h.name, "{what}: {st}");
    assert_eq!(
        st["status"]["linux"]["namespaces"]["options"]["network"], "NODE",
        "{what}: {st}"
    );
    // the sandbox runs under this handler's runtime (its state is under the handler's
    // root) and, with Porta, has its own file server
    let sb_state = runtime_state(h, &root, &sb);
    assert_eq!(sb_state["status"], "running", "{what}: sandbox {sb_state}");
    if served {
        assert_file_server(&sb_state, &format!("{what}, sandbox"));
    } else if h.porta {
        assert_eq!(sb_state["servers"], json!([]), "{what}: sandbox {sb_state}");
    }
    let sb_pid = sb_state["pid"].as_i64().unwrap_or(0);
    assert!(sb_pid > 0, "{what}: sandbox pid: {sb_state}");

    // the container: it prints a line (to its CRI log) and waits; SIGTERM ends it with 7
    let log_path = "box/0.log";
    let r = cri.ok(
        "RuntimeService/CreateContainer",
        json!({
            "pod_sandbox_id": sb,
            "sandbox_config": sb_config,
            "config": {
                "metadata": {"name": "box"},
                "image": {"image": BUSYBOX_IMAGE},
                "command": ["sh", "-c"],
                "args": ["trap 'exit 7' TERM; echo started-$PIT_CRI; sleep 100000 & wait"],
                "envs": [{"key": "PIT_CRI", "value": "yes"}],
                "labels": {"pit-test": "cri"},
                "log_path": log_path,
                // what Kubernetes' "restricted" pod security sends: the runtime's
                // default seccomp profile (containerd's), no_new_privs
                "linux": {"security_context": {
                    "namespace_options": {"network": "NODE", "pid": "CONTAINER", "ipc": "POD"},
                    "seccomp": {"profile_type": "RuntimeDefault"},
                    "no_new_privs": true
                }}
            }
        }),
    );
    let cid = r["container_id"].as_str().unwrap_or_default().to_string();
    assert!(!cid.is_empty(), "{what}: no container id: {r}");
    let status = |cid: &str| {
        cri.ok(
            "RuntimeService/ContainerStatus",
            json!({"container_id": cid}),
        )["status"]
            .clone()
    };
    assert_eq!(status(&cid)["state"], "CONTAINER_CREATED", "{what}");
    let list = cri.ok(
        "RuntimeService/ListContainers",
        json!({"filter": {"pod_sandbox_id": sb}}),
    );
    let ids: Vec<&str> = list["containers"]
        .as_array()
        .map(|a| a.iter().filter_map(|c| c["id"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(ids, [cid.as_str()], "{what}: {list}");

    cri.ok(
        "RuntimeService/StartContainer",
        json!({"container_id": cid}),
    );
    let s = status(&cid);
    assert_eq!(s["state"], "CONTAINER_RUNNING", "{what}: {s}");

    // ExecSync: stdout, stderr, exit code, the container's environment
    let exec = |cmd: &[&str]| {
        cri.ok(
            "RuntimeService/ExecSync",
            json!({"container_id": cid, "cmd": cmd, "timeout": 120}),
        )
    };
    let r = exec(&["sh", "-c", "echo out-$PIT_CRI; echo to-stderr >&2; exit 3"]);
    assert_eq!(r["stdout"], "out-yes\n", "{what}: {r}");
    assert_eq!(r["stderr"], "to-stderr\n", "{what}: {r}");
    assert_eq!(r["exit_code"], 3, "{what}: {r}");
    // a file written in the container is read back
    let r = exec(&[
        "sh",
        "-c",
        "echo written > /pit-cri-file && cat /pit-cri-file",
    ]);
    assert_eq!(
        (r["exit_code"].clone(), r["stdout"].clone()),
        (json!(0), json!("written\n")),
        "{what}: {r}"
    );
    // the namespaces CRI asked for: the node's UTS (host network), the sandbox's IPC
    // namespace, a PID namespace of the container's own
    let host_name = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    let r = exec(&["hostname"]);
    assert_eq!(
        r["stdout"].as_str().map(str::trim),
        Some(host_name.trim()),
        "{what}: {r}"
    );
    let sb_ipc = std::fs::read_link(format!("/proc/{sb_pid}/ns/ipc")).unwrap();
    let r = exec(&["readlink", "/proc/self/ns/ipc"]);
    assert_eq!(
        r["stdout"].as_str().map(str::trim),
        sb_ipc.to_str(),
        "{what}: the container is not in the sandbox's IPC namespace: {r}"
    );
    let r = exec(&["cat", "/proc/1/cmdline"]);
    assert!(
        r["stdout"].as_str().is_some_and(|s| s.contains("trap")),
        "{what}: pid 1 of the container's PID namespace is not its process: {r}"
    );

    // the restricted security context: a seccomp filter and no_new_privs on the
    // container's process
    let r = exec(&["grep", "-E", "^(NoNewPrivs|Seccomp):", "/proc/1/status"]);
    let words: Vec<&str> = r["stdout"]
        .as_str()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(words, ["NoNewPrivs:", "1", "Seccomp:", "2"], "{what}: {r}");

    // the root: Porta's FUSE mount named after the container with Porta, not FUSE with runc
    let r = exec(&["cat", "/proc/self/mountinfo"]);
    let mountinfo = r["stdout"].as_str().unwrap_or_default();
    let line = root_line(mountinfo);
    if served {
        assert_eq!(
            fstype(&line),
            Some("fuse"),
            "{what}: root not FUSE: {line:?}\n{mountinfo}"
        );
        assert!(
            line.contains(&format!(" porta-{cid} ")),
            "{what}: the root's FUSE mount is not Porta's for {cid}: {line:?}"
        );
        let st = runtime_state(h, &root, &cid);
        assert_eq!(st["status"], "running", "{what}: {st}");
        assert_file_server(&st, &what);
        let o = Cmd::new(&h.binary)
            .arg("--root")
            .arg(&root)
            .args(["list", "-q"])
            .run();
        o.expect_ok();
        let mut listed: Vec<&str> = o.stdout.lines().collect();
        listed.sort();
        let mut want = vec![sb.as_str(), cid.as_str()];
        want.sort();
        assert_eq!(listed, want, "{what}: porta list: {o}");
    } else {
        assert!(
            !line.is_empty(),
            "{what}: no root in the mountinfo: {mountinfo}"
        );
        assert_ne!(fstype(&line), Some("fuse"), "{what}: {line:?}");
        let st = runtime_state(h, &root, &cid);
        assert_eq!(st["status"], "running", "{what}: {st}");
        if h.porta {
            assert_eq!(st["servers"], json!([]), "{what}: {st}");
        }
    }

    // the container's stdout reached its CRI log (written by containerd as it arrives)
    let log_file = cri.dir.join("pods").join(&pod).join(log_path);
    let logged = wait_for(Duration::from_secs(60), || {
        std::fs::read_to_string(&log_file)
            .ok()
            .filter(|s| s.lines().any(|l| l.ends_with(" stdout F started-yes")))
    });
    assert!(
        logged.is_some(),
        "{what}: no 'started-yes' in {}: {:?}",
        log_file.display(),
        std::fs::read_to_string(&log_file)
    );

    // stop: SIGTERM reaches the container's process, whose exit code CRI reports
    cri.ok(
        "RuntimeService/StopContainer",
        json!({"container_id": cid, "timeout": 120}),
    );
    let s = status(&cid);
    assert_eq!(s["state"], "CONTAINER_EXITED", "{what}: {s}");
    assert_eq!(s["exit_code"], 7, "{what}: {s}");
    cri.ok(
        "RuntimeService/RemoveContainer",
        json!({"container_id": cid}),
    );
    let list = cri.ok(
        "RuntimeService/ListContainers",
        json!({"filter": {"pod_sandbox_id": sb}}),
    );
    assert_eq!(list["containers"], json!([]), "{what}: {list}");
    let gone = cri.call(
        "RuntimeService/ContainerStatus",
        json!({"container_id": cid}),
    );
    assert!(
        gone.as_ref().is_err_and(|e| e.contains("NOT_FOUND")),
        "{what}: a removed container's status is not NotFound: {gone:?}"
    );
    assert!(
        !root.join(&cid).exists(),
        "{what}: the runtime's state of the removed container is left in {}",
        root.display()
    );

    // the sandbox: stopped (not ready), then removed with its runtime state
    cri.ok(
        "RuntimeService/StopPodSandbox",
        json!({"pod_sandbox_id": sb}),
    );
    let st = cri.ok(
        "RuntimeService/PodSandboxStatus",
        json!({"pod_sandbox_id": sb}),
    );
    assert_eq!(st["status"]["state"], "SANDBOX_NOTREADY", "{what}: {st}");
    assert!(
        !pid_alive(sb_pid as i32),
        "{what}: the stopped sandbox's process {sb_pid} lives"
    );
    cri.ok(
        "RuntimeService/RemovePodSandbox",
        json!({"pod_sandbox_id": sb}),
    );
    let list = cri.ok("RuntimeService/ListPodSandbox", json!({}));
    assert!(
        !list["items"]
            .as_array()
            .is_some_and(|a| a.iter().any(|p| p["id"] == sb.as_str())),
        "{what}: removed sandbox still listed: {list}"
    );
    assert!(
        leaks::state_entries(root.to_str().unwrap()).is_empty(),
        "{what}: runtime state left: {:?}",
        leaks::state_entries(root.to_str().unwrap())
    );
}

#[test]
fn cri_pod_end_to_end() {
    require_root!();
    if !have_command("containerd") || !have_command("ctr") {
        skip("containerd/ctr not installed (scripts/deps.sh installs them)");
        return;
    }
    let client_ok = Cmd::new(PYTHON)
        .args(["-c", "import grpc, google.protobuf"])
        .run();
    if client_ok.code != 0 || !have_command("protoc") {
        skip(
            "the CRI client needs python3-grpcio, python3-protobuf and protobuf-compiler \
             (scripts/deps.sh installs them)",
        );
        return;
    }
    let mut handlers = vec![Handler {
        name: "porta",
        binary: runtime(),
        porta: is_porta(),
    }];
    match which("runc") {
        Some(runc) => handlers.push(Handler {
            name: "runc",
            binary: runc,
            porta: false,
        }),
        None => skip("runc not installed: no runc handler beside porta"),
    }
    let cri = Cri::start(&handlers);
    let v = cri.ok("RuntimeService/Version", json!({"version": "v1"}));
    assert_eq!(v["runtime_api_version"], "v1", "{v}");
    let st = cri.ok("RuntimeService/Status", json!({}));
    let ready = st["status"]["conditions"].as_array().is_some_and(|c| {
        c.iter()
            .any(|c| c["type"] == "RuntimeReady" && c["status"] == true)
    });
    assert!(ready, "the CRI runtime is not ready: {st}");

    for h in &handlers {
        pod_lifecycle(&cri, h, false);
        if h.porta {
            pod_lifecycle(&cri, h, true);
        }
    }

    let dir = cri.dir.clone();
    let parent = cri.cgroup_parent.trim_start_matches('/').to_string();
    drop(cri);
    let d = dir.display().to_string();
    assert!(
        !dir.exists(),
        "containerd's private directory could not be removed: {d}"
    );
    let mounts = leaks::mounts_matching(&|l| l.contains(&d));
    assert!(mounts.is_empty(), "mounts left: {mounts:#?}");
    let procs = leaks::processes_matching(&|s| s.contains(&d));
    assert!(procs.is_empty(), "processes left: {procs:#?}");
    let cgroups = leaks::cgroups_matching(&|n| n == parent);
    assert!(cgroups.is_empty(), "cgroups left: {cgroups:?}");
}
