//! Nested containers (Porta-only): a container P with its API socket on makes child
//! containers from inside, with the `porta` binary copied into its root, and so does each
//! child for its own children, three levels deep (P → C → G). Every level has a user
//! namespace (P: 0 → HOST_BASE; a child's default map: its 0..65536 onto its parent's).
//! Refusals: a child's superuser reaching up (its parent, a sibling), hostile bundles
//! (a path or symlink out of the tree, a bind of the host's /etc/shadow, a namespace path,
//! a hook, an id map outside the parent's range), a non-root user of the parent; each
//! leaves nothing, nor does a create that fails half-way, nor deleting P from the host.

use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use porta_integration::{
    bundle::default_config, cmd::host, json, require_root, rootfs, user, Bundle, Container, Out,
    Value, ROOT,
};

/// P's user namespace: its 0..65536 are host HOST_BASE.. (unused by the other tests).
const HOST_BASE: u32 = 320_000;

/// Copies the runtime under test and the shared libraries it needs into `root`
/// (`/usr/local/bin/porta`, on the default PATH).
fn install_porta(root: &Path) {
    let rt = porta_integration::runtime();
    let bin = root.join("usr/local/bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::copy(&rt, bin.join("porta")).unwrap();
    let ldd = host("ldd", &[&rt.display().to_string()]);
    ldd.expect_ok();
    for lib in ldd.stdout.split_whitespace().filter(|w| w.starts_with('/')) {
        let dst = root.join(lib.trim_start_matches('/'));
        std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
        std::fs::copy(lib, &dst).unwrap();
    }
}

/// A config for a nested container: the tests' default, API socket on, running `args`.
fn nested_config(args: &[&str]) -> Value {
    let mut c = default_config(args);
    c["annotations"] = json!({"run.porta.api": "on"});
    c
}

/// Writes the bundle `dir` (a directory of a parent's tree, as the host sees it): its
/// config and, with `root`, a busybox root with porta in it.
fn write_bundle(dir: &Path, config: &Value, root: bool) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_vec_pretty(config).unwrap(),
    )
    .unwrap();
    if root {
        rootfs::install(&dir.join("rootfs"));
        install_porta(&dir.join("rootfs"));
    }
}

/// The top container P: user namespace, API socket on, porta in its root, the bundle of
/// a child at /nest/c (whose root holds the bundle of a grandchild at /nest/g), all
/// owned by P's root. Created and started.
fn parent(tag: &str) -> Container {
    let mut b = Bundle::new(&["sleep", "100000"]);
    b.user_ns(HOST_BASE, 65536)
        .annotation("run.porta.api", "on");
    let root = b.rootfs();
    install_porta(&root);
    let c = root.join("nest/c");
    write_bundle(&c, &nested_config(&["sleep", "100000"]), true);
    write_bundle(
        &c.join("rootfs/nest/g"),
        &nested_config(&["sleep", "100000"]),
        true,
    );
    user::chown_tree(&root, HOST_BASE);
    let p = Container::new(tag, b);
    p.create_start();
    p
}

/// Runs `script` with `sh -c` in container `c` as its root (through `porta exec`).
fn inside(c: &Container, script: &str) -> Out {
    c.exec(&[], &["sh", "-c", script])
}

/// The state root of `id`'s children.
fn children_of(state_dir: &Path) -> PathBuf {
    state_dir.join("children")
}

/// The cgroup directories a container's state records.
fn cgroup_dirs(state_dir: &Path) -> Vec<PathBuf> {
    let st: Value =
        serde_json::from_slice(&std::fs::read(state_dir.join("state.json")).unwrap()).unwrap();
    st["cgroup"]["dirs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| PathBuf::from(d["path"].as_str().unwrap()))
        .collect()
}

/// Lines of this process's mount table that mention `needle`.
fn mounts_with(needle: &str) -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.contains(needle))
        .map(str::to_string)
        .collect()
}

/// The host-only directory of the children of the container at `state_dir` (as
/// `porta_runtime::nested::child_roots` names it).
fn child_roots(state_dir: &Path) -> PathBuf {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in state_dir.as_os_str().as_encoded_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    Path::new("/run/porta-nested").join(format!("{h:016x}"))
}

/// Asserts that nothing of child `id` of the container at `state_dir` is left: no state
/// directory, no host-only root directory, no mount, no cgroup.
#[track_caller]
fn nothing_left_of(state_dir: &Path, id: &str) {
    assert!(
        !children_of(state_dir).join(id).exists(),
        "state of {id} left in {}",
        children_of(state_dir).display()
    );
    let dir = child_roots(state_dir).join(id);
    assert!(!dir.exists(), "{} left", dir.display());
    let m = mounts_with(&dir.display().to_string());
    assert!(m.is_empty(), "mounts of {id} left: {m:?}");
    let m = mounts_with(&format!("porta-{id} "));
    assert!(m.is_empty(), "file server mount of {id} left: {m:?}");
    for d in cgroup_dirs(state_dir) {
        let g = d.join("children").join(id);
        assert!(!g.exists(), "cgroup {} left", g.display());
    }
}

fn is_porta() -> bool {
    porta_integration::porta_only("nested containers are Porta's")
}

#[test]
fn three_levels_created_from_inside_and_deleted_with_the_top() {
    require_root!();
    if !is_porta() {
        return;
    }
    let p = parent("nest-3");
    let pdir = Path::new(ROOT).join(&p.id);
    // P makes C through its API socket, C makes G through its own; G reports its map
    // (composed down to host ids) and writes a file into its root.
    let o = inside(
        &p,
        "set -e; porta create --bundle /nest/c pit-c; porta start pit-c; \
         porta exec pit-c porta create --bundle /nest/g pit-g; \
         porta exec pit-c porta start pit-g; \
         porta exec pit-c porta exec pit-g sh -c 'cat /proc/self/uid_map; id -u; echo made > /made-by-g'; \
         porta list; porta exec pit-c porta list --format json",
    );
    assert!(o.ok(), "{o}");
    let words: Vec<&str> = o.stdout.split_whitespace().collect();
    assert_eq!(
        &words[..4],
        ["0", &HOST_BASE.to_string(), "65536", "0"],
        "G's map is not P's composed: {o}"
    );
    assert!(
        o.stdout.contains("pit-c") && o.stdout.contains("running"),
        "{o}"
    );
    assert!(o.stdout.contains("\"id\":\"pit-g\""), "{o}");
    // What P learns of its children: its own names, no host pid, no host path.
    let st = inside(&p, "porta state pit-c");
    assert!(st.ok(), "{st}");
    let v: Value = serde_json::from_str(&st.stdout).unwrap();
    assert_eq!(v["bundle"], "/nest/c");
    assert_eq!(v["rootfs"], "/nest/c/rootfs");
    assert_eq!(v["pid"], 0);
    for s in v["servers"].as_array().unwrap() {
        assert!(
            s.get("pid").is_none(),
            "a host pid in the state P sees: {st}"
        );
    }
    for host in ["/run/", "/var/tmp"] {
        assert!(
            !st.stdout.contains(host),
            "{host} in the state P sees: {st}"
        );
    }
    // G's file went through G's, C's and P's trees: it is in P's bundle, owned by P's 0.
    let made = p
        .bundle
        .rootfs()
        .join("nest/c/rootfs/nest/g/rootfs/made-by-g");
    assert_eq!(std::fs::read_to_string(&made).unwrap(), "made\n");
    assert_eq!(std::fs::metadata(&made).unwrap().uid(), HOST_BASE);

    // On the host: state under the parents, cgroups beneath the parents' groups.
    let cdir = children_of(&pdir).join("pit-c");
    let gdir = children_of(&cdir).join("pit-g");
    assert!(gdir.join("state.json").is_file());
    for (d, parent) in cgroup_dirs(&gdir).iter().zip(cgroup_dirs(&cdir)) {
        assert_eq!(d, &parent.join("children/pit-g"));
        assert!(d.is_dir());
    }
    for (d, parent) in cgroup_dirs(&cdir).iter().zip(cgroup_dirs(&pdir)) {
        assert_eq!(d, &parent.join("children/pit-c"));
    }
    // `porta list` on the host root does not show children; their own root does.
    let l = p.rt(&["list", "--quiet"]);
    assert!(!l.stdout.contains("pit-c"), "{l}");
    let l = porta_integration::rt_root(&children_of(&pdir).display().to_string(), &["list"]);
    assert!(l.stdout.contains("pit-c"), "{l}");

    // Every process of C and G (their init and their servers), pinned by pidfds.
    let mut pids: Vec<i32> = Vec::new();
    for d in [&cdir, &gdir] {
        let st: Value =
            serde_json::from_slice(&std::fs::read(d.join("state.json")).unwrap()).unwrap();
        pids.push(st["pid"].as_i64().unwrap() as i32);
        let servers: Value =
            serde_json::from_slice(&std::fs::read(d.join("servers.json")).unwrap_or_default())
                .unwrap_or(Value::Null);
        for s in servers.as_array().into_iter().flatten() {
            if let Some(pid) = s["pid"].as_i64().filter(|p| *p > 0) {
                pids.push(pid as i32);
            }
        }
    }
    let pidfds: Vec<_> = pids
        .iter()
        .filter_map(|p| porta_sys::pidfd::open(*p).ok())
        .collect();
    assert!(pidfds.len() >= 2, "no processes of C and G found: {pids:?}");
    let c_cgroups = cgroup_dirs(&cdir);

    // Deleting P from the host deletes C and G first.
    p.rt(&["delete", "--force", &p.id]).expect_ok();
    assert!(!pdir.exists(), "P's state left");
    for d in &c_cgroups {
        assert!(!d.exists(), "cgroup {} left", d.display());
    }
    for (pid, fd) in pids.iter().zip(&pidfds) {
        let mut pfd = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the call; timeout 0 (the delete has returned).
        let n = unsafe { libc::poll(&mut pfd, 1, 0) };
        assert_eq!(n, 1, "process {pid} of a child still runs after the delete");
    }
    assert!(!child_roots(&pdir).exists(), "P's children's roots left");
    assert!(!child_roots(&cdir).exists(), "C's children's roots left");
    let roots = child_roots(&pdir).display().to_string();
    let croots = child_roots(&cdir).display().to_string();
    for needle in [
        roots.as_str(),
        croots.as_str(),
        "porta-pit-c ",
        "porta-pit-g ",
    ] {
        let m = mounts_with(needle);
        assert!(m.is_empty(), "mounts left: {m:?}");
    }
}

#[test]
fn a_childs_superuser_cannot_reach_up() {
    require_root!();
    if !is_porta() {
        return;
    }
    let p = parent("nest-up");
    let pdir = Path::new(ROOT).join(&p.id);
    let croot = p.bundle.rootfs().join("nest/c/rootfs");
    // Hostile bundles in C's tree, each with C's whole tree as its root (allowed).
    let base = || {
        let mut c = nested_config(&["true"]);
        c["root"] = json!({"path": "/"});
        c
    };
    // A bundle path out of C's tree: the host path of C's own bundle exists on the host
    // (and is a valid bundle there), but not inside C.
    let host_bundle = p.bundle.rootfs().join("nest/c");
    let mut bad: Vec<(&str, String, Value)> = Vec::new();
    bad.push((
        "bundle",
        format!("/../../../../../..{}", host_bundle.display()),
        Value::Null,
    ));
    std::os::unix::fs::symlink(&host_bundle, croot.join("nest/link")).unwrap();
    bad.push(("bundle", "/nest/link".into(), Value::Null));
    let mut shadow = base();
    shadow["mounts"].as_array_mut().unwrap().push(
        json!({"destination": "/mnt", "type": "bind", "source": "/etc/shadow",
                     "options": ["bind", "ro"]}),
    );
    bad.push(("mounts[7].source", "/nest/shadow".into(), shadow));
    let mut shadow_rel = base();
    shadow_rel["mounts"]
        .as_array_mut()
        .unwrap()
        .push(json!({"destination": "/mnt", "type": "bind",
                     "source": "../../../../../../../../etc/shadow", "options": ["bind"]}));
    bad.push(("mounts[7].source", "/nest/shadow-rel".into(), shadow_rel));
    let mut ns = base();
    ns["linux"]["namespaces"] = json!([{"type": "network", "path": "/proc/1/ns/net"}]);
    bad.push(("linux.namespaces[0].path", "/nest/ns".into(), ns));
    let mut hook = base();
    hook["hooks"] =
        json!({"createRuntime": [{"path": "/bin/sh", "args": ["sh", "-c", "touch /tmp/x"]}]});
    bad.push(("hooks", "/nest/hook".into(), hook));
    let mut map = base();
    map["linux"]["namespaces"] = json!([{"type": "user"}]);
    map["linux"]["uidMappings"] = json!([{"containerID": 0, "hostID": 70000, "size": 1}]);
    bad.push(("linux.uidMappings", "/nest/map".into(), map));
    for (_, bundle, config) in &bad {
        if !config.is_null() {
            write_bundle(&croot.join(bundle.trim_start_matches('/')), config, false);
        }
    }
    user::chown_tree(&croot.join("nest"), HOST_BASE);
    assert!(
        Path::new("/etc/shadow").exists(),
        "the host has no /etc/shadow"
    );

    // C, and a sibling of C.
    let o = inside(
        &p,
        "set -e; porta create --bundle /nest/c pit-c; porta start pit-c; \
         porta create --bundle /nest/c pit-sib; porta start pit-sib",
    );
    assert!(o.ok(), "{o}");
    let cdir = children_of(&pdir).join("pit-c");

    // From C: its parent and its sibling are not in its namespace.
    for (cmd, what) in [
        (format!("porta delete --force {}", p.id), "delete P"),
        (format!("porta kill {} KILL", p.id), "kill P"),
        (format!("porta exec {} true", p.id), "exec in P"),
        (
            "porta delete --force pit-sib".to_string(),
            "delete the sibling",
        ),
        ("porta kill pit-sib KILL".to_string(), "kill the sibling"),
        ("porta exec pit-sib true".to_string(), "exec in the sibling"),
        (
            "porta delete --force ../pit-sib".to_string(),
            "a path as id",
        ),
    ] {
        let o = inside(&p, &format!("porta exec pit-c {cmd}"));
        assert!(!o.ok(), "{what} from C succeeded: {o}");
        assert!(
            o.stderr.contains("does not exist") || o.stderr.contains("invalid container id"),
            "{what}: {o}"
        );
    }
    assert_eq!(p.status().as_deref(), Some("running"));
    let o = inside(&p, "porta state pit-sib");
    assert!(o.ok() && o.stdout.contains("\"running\""), "{o}");

    // Hostile bundles from C's superuser: each refused, naming what is wrong, nothing left.
    for (i, (field, bundle, _)) in bad.iter().enumerate() {
        let id = format!("pit-bad{i}");
        let o = inside(
            &p,
            &format!("porta exec pit-c porta create --bundle {bundle} {id}"),
        );
        assert!(!o.ok(), "{bundle} was accepted: {o}");
        assert!(o.stderr.contains(field), "{bundle}: {field} not named: {o}");
        nothing_left_of(&cdir, &id);
    }
    assert!(!croot.join("tmp/x").exists(), "a hook ran");
}

#[test]
fn only_the_parents_superuser_creates_and_a_failed_create_leaves_nothing() {
    require_root!();
    if !is_porta() {
        return;
    }
    let p = parent("nest-perm");
    let pdir = Path::new(ROOT).join(&p.id);
    // A user of P that is not its root: refused, but may look.
    let o = p.exec(
        &["--user", "1000:1000"],
        &["porta", "create", "--bundle", "/nest/c", "pit-c"],
    );
    assert!(!o.ok(), "{o}");
    assert!(
        o.stderr.contains("EPERM") && o.stderr.contains("superuser"),
        "{o}"
    );
    nothing_left_of(&pdir, "pit-c");
    let o = p.exec(&["--user", "1000:1000"], &["porta", "list"]);
    assert!(o.ok(), "{o}");

    // A create that fails in the child's set-up (after its cgroup, state and file server
    // were made): a mount the kernel refuses.
    let mut c = nested_config(&["true"]);
    c["root"] = json!({"path": "/nest/c/rootfs"});
    c["mounts"].as_array_mut().unwrap().push(
        json!({"destination": "/mnt", "type": "tmpfs", "source": "tmpfs",
                     "options": ["size=bogus"]}),
    );
    let dir = p.bundle.rootfs().join("nest/fails");
    write_bundle(&dir, &c, false);
    user::chown_tree(&dir, HOST_BASE);
    let o = inside(&p, "porta create --bundle /nest/fails pit-fails");
    assert!(!o.ok(), "{o}");
    assert!(o.stderr.contains("pit-fails"), "{o}");
    for host in ["/run/porta", ROOT] {
        assert!(!o.stderr.contains(host), "a host path in the error: {o}");
    }
    nothing_left_of(&pdir, "pit-fails");
    // And the superuser may create after all.
    let o = inside(
        &p,
        "porta create --bundle /nest/c pit-c && porta delete pit-c",
    );
    assert!(o.ok(), "{o}");
    nothing_left_of(&pdir, "pit-c");
    // An id that would read as a flag on the runtime's command line.
    let o = inside(&p, "porta create --bundle /nest/c -- --no-pivot");
    assert!(!o.ok() && o.stderr.contains("may not start with"), "{o}");
    // A child deleted straight from the host (its state root) leaves nothing either.
    let o = inside(&p, "porta create --bundle /nest/c pit-c2");
    assert!(o.ok(), "{o}");
    porta_integration::rt_root(
        &children_of(&pdir).display().to_string(),
        &["delete", "--force", "pit-c2"],
    )
    .expect_ok();
    nothing_left_of(&pdir, "pit-c2");
}
