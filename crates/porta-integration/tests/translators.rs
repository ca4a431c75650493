//! Translators (docs/translators.md): any process in a container attaches a file system to
//! a node it owns, with no capability and no /dev/fuse, through the container's file
//! server. Real programs from Debian (fuse2fs on an ext4 image the container holds, also a
//! corrupted one; squashfuse; hello-fuse, the libfuse example built by the tests) in a
//! Debian root built by the tests, the built-ins (porta:memfs, porta:view, porta:tar),
//! active and passive records, the host's `porta translator set/show/rm` and the in-container
//! `settrans/showtrans/rmtrans`, a crash loop of a passive translator, a hung one, restarts
//! of the file server and of the container, the translator's identity, confinement and
//! cgroup, permission refusals, and nothing left after translators come and go. Porta-only.

use porta_integration::*;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const WHY: &str = "translators are served by Porta's per-container file server";

/// A container on a copy of the Debian root with the images under /images, the
/// in-container tools in /usr/local/bin and empty mount points under /mnt.
struct Rig {
    c: Container,
    images: debian::Images,
}

fn tools_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../contrib/translator-tools")
}

fn rig(tag: &str, env: &[(&str, &str)]) -> Rig {
    rig_with(tag, env, None)
}

/// As [`rig`]; `userns`: a user namespace mapping container ids 0..65536 to host ids
/// from this one (the root file system chowned to match).
fn rig_with(tag: &str, env: &[(&str, &str)], userns: Option<u32>) -> Rig {
    let mut b = Bundle::empty(&["sleep", "100000"]);
    let root = b.rootfs();
    debian::install(&root, false).expect("Debian root");
    let img_dir = root.join("images");
    std::fs::create_dir_all(&img_dir).unwrap();
    let images = debian::images(&img_dir);
    for t in ["settrans", "showtrans", "rmtrans"] {
        std::fs::copy(tools_dir().join(t), root.join("usr/local/bin").join(t)).unwrap();
    }
    for d in ["disk", "bad", "sq", "hello", "mem", "view", "tar", "u"] {
        std::fs::create_dir_all(root.join("mnt").join(d)).unwrap();
    }
    let base = userns.unwrap_or(0);
    if let Some(host) = userns {
        b.user_ns(host, 65536);
        let o = cmd::host(
            "chown",
            &[
                "-R",
                "-h",
                &format!("{host}:{host}"),
                root.to_str().unwrap(),
            ],
        );
        o.expect_ok();
    }
    // (The test config drops CAP_CHOWN: the container's root cannot chown.)
    std::os::unix::fs::chown(root.join("mnt/u"), Some(base + 1000), Some(base + 1000)).unwrap();
    let c = Container::new(tag, b);
    let bundle = c.bundle.path_str();
    let mut cmd = c.cmd();
    for (k, v) in env {
        cmd = cmd.env(k, v);
    }
    cmd.args(["create", "--bundle", &bundle, &c.id])
        .run()
        .expect_ok();
    c.start().expect_ok();
    Rig { c, images }
}

impl Rig {
    /// `sh -c script` in the container as `user` (uid:gid, "" for the config's).
    fn sh_as(&self, user: &str, script: &str) -> Out {
        let mut opts = vec![];
        if !user.is_empty() {
            opts = vec!["--user", user];
        }
        self.c.exec(&opts, &["sh", "-c", script])
    }

    fn sh(&self, script: &str) -> Out {
        self.sh_as("", script)
    }

    #[track_caller]
    fn sh_ok(&self, script: &str) -> String {
        let o = self.sh(script);
        assert!(o.ok(), "in the container: {script}: {o}");
        o.stdout
    }

    fn porta(&self, args: &[&str]) -> Out {
        let mut a = vec!["translator"];
        a.extend_from_slice(args);
        self.c.rt(&a)
    }

    /// The running translators as `porta translator show ID --format json` lists them.
    fn running(&self) -> Vec<Value> {
        let o = self.porta(&["show", "--format", "json", &self.c.id]);
        assert!(o.ok(), "{o}");
        o.json().as_array().cloned().unwrap_or_default()
    }

    /// The pid of the running translator of `path` (waits for the supervisor's record).
    #[track_caller]
    fn pid_of(&self, path: &str) -> i32 {
        for _ in 0..200 {
            if let Some(t) = self.running().iter().find(|t| t["path"] == path) {
                return t["pid"].as_i64().unwrap_or(0) as i32;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("no translator recorded for {path}: {:?}", self.running());
    }

    /// Waits until no translator of `path` is recorded.
    #[track_caller]
    fn wait_none(&self, path: &str) {
        for _ in 0..200 {
            if !self.running().iter().any(|t| t["path"] == path) {
                return;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("translator of {path} still recorded: {:?}", self.running());
    }
}

fn status_field(pid: i32, field: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .map(|l| l[field.len()..].trim().to_string())
        .unwrap_or_default()
}

#[track_caller]
fn wait_dead(pid: i32) {
    for _ in 0..400 {
        if !pid_alive(pid) {
            return;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!("process {pid} still alive");
}

#[test]
fn fuse2fs_serves_an_image_the_container_holds_and_the_kernel_never_mounts_it() {
    require_root!();
    porta_only!(WHY);
    let r = rig("tr-fuse2fs", &[]);
    // The thesis' `settrans -c container /hurd/ext2fs container_storage`, inside the
    // container as its root, with the stock tools.
    r.sh_ok("settrans -a /mnt/disk fuse2fs /images/ext4.img {} -f");
    for (path, data) in &r.images.files {
        // The image was made from /images/tree.
        r.sh_ok(&format!("cmp /mnt/disk/{path} /images/tree/{path}"));
        assert_eq!(
            r.sh_ok(&format!("wc -c < /mnt/disk/{path}")).trim(),
            data.len().to_string()
        );
    }
    for (link, target) in &r.images.symlinks {
        assert_eq!(
            r.sh_ok(&format!("readlink /mnt/disk/{link}")).trim(),
            target
        );
    }
    // Writes land in the image and survive the translator.
    r.sh_ok("echo written > /mnt/disk/new.txt && mkdir /mnt/disk/d2 && sync");
    let shown = r.sh_ok("showtrans /mnt/disk");
    assert!(
        shown.contains("active: fuse2fs /images/ext4.img {} -f"),
        "{shown}"
    );
    r.sh_ok("rmtrans /mnt/disk");
    r.wait_none("/mnt/disk");
    assert_eq!(
        r.sh_ok("ls -A /mnt/disk"),
        "",
        "the node shows its own (empty) directory again"
    );
    r.sh_ok("settrans -a /mnt/disk fuse2fs /images/ext4.img {} -f");
    assert_eq!(r.sh_ok("cat /mnt/disk/new.txt"), "written\n");
    r.sh_ok("test -d /mnt/disk/d2");
    // No kernel mount of the image anywhere: the host's and the container's mount tables
    // know only FUSE (the container's root) — the kernel never parses the image.
    let host = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let inside = r.sh_ok("cat /proc/self/mountinfo");
    for table in [&host, &inside] {
        assert!(
            !table.contains("ext4.img") && !table.contains("/mnt/disk"),
            "{table}"
        );
    }
    assert!(
        !inside.contains(" ext4 "),
        "no ext4 mount in the container: {inside}"
    );
    // The translator: the node owner's identity in the container, no capabilities,
    // no_new_privs, seccomp, the container's PID namespace and cgroup.
    let pid = r.pid_of("/mnt/disk");
    assert_eq!(status_field(pid, "CapEff:"), "0000000000000000");
    assert_eq!(status_field(pid, "CapBnd:"), "0000000000000000");
    assert_eq!(status_field(pid, "NoNewPrivs:"), "1");
    assert_eq!(status_field(pid, "Seccomp:"), "2");
    let ns = |p: i32, n: &str| std::fs::read_link(format!("/proc/{p}/ns/{n}")).ok();
    for n in ["pid", "mnt", "ipc", "uts", "net"] {
        assert_eq!(
            ns(pid, n),
            ns(r.c.pid(), n),
            "{n} namespace of the translator"
        );
    }
    let cg = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    assert!(
        cg.contains(&r.c.id),
        "the translator is in the container's cgroup: {cg}"
    );
    // A corrupted image: the damaged file fails with EIO, the rest is served; nothing
    // outside the node is touched.
    r.sh_ok("settrans -a /mnt/bad fuse2fs /images/ext4-bad-inode.img {} -f -o ro");
    let o = r.sh(&format!("cat /mnt/bad/{}", r.images.damaged));
    assert!(!o.ok() && o.stderr.contains("Input/output error"), "{o}");
    assert_eq!(
        r.sh_ok("cat /mnt/bad/hello.txt"),
        "Hello from an ext4 image.\n"
    );
    r.sh_ok("rmtrans /mnt/bad");
    r.wait_none("/mnt/bad");
    // A superblock fuse2fs refuses: the set fails, naming the reason, nothing is left.
    let o = r.sh("settrans -a /mnt/bad fuse2fs /images/ext4-bad-super.img {} -f -o ro");
    assert!(!o.ok(), "{o}");
    assert!(!r.running().iter().any(|t| t["path"] == "/mnt/bad"));
    assert_eq!(r.sh_ok("ls -A /mnt/bad"), "");
    assert_eq!(
        r.sh_ok("cat /mnt/disk/hello.txt"),
        "Hello from an ext4 image.\n"
    );
    r.c.rt(&["delete", "--force", &r.c.id]).expect_ok();
    wait_dead(pid);
}

#[test]
fn squashfuse_hello_fuse_and_passive_records_from_the_host() {
    require_root!();
    porta_only!(WHY);
    let r = rig("tr-progs", &[]);
    r.porta(&[
        "set",
        "--passive",
        &r.c.id,
        "/mnt/sq",
        "--",
        "squashfuse",
        "-f",
        "/images/squash.img",
        "{}",
    ])
    .expect_ok();
    // Passive: nothing runs until the first access.
    assert!(!r.running().iter().any(|t| t["path"] == "/mnt/sq"));
    for (path, data) in &r.images.files {
        r.sh_ok(&format!("cmp /mnt/sq/{path} /images/tree/{path}"));
        assert_eq!(
            r.sh_ok(&format!("wc -c < /mnt/sq/{path}")).trim(),
            data.len().to_string()
        );
    }
    let sq = r.pid_of("/mnt/sq");
    let shown = r.porta(&["show", &r.c.id, "/mnt/sq"]);
    assert!(
        shown.ok()
            && shown
                .stdout
                .contains("passive: squashfuse -f /images/squash.img {}"),
        "{shown}"
    );
    // The record is an extended attribute of the node: getfattr is showtrans.
    let g = r.sh_ok("getfattr --only-values -n user.porta.translator /mnt/sq | tr '\\0' ' '");
    assert_eq!(g.trim(), "squashfuse -f /images/squash.img {}");
    // hello-fuse, the libfuse example built by the tests, active from the host.
    r.porta(&["set", &r.c.id, "/mnt/hello", "--", "hello-fuse", "-f", "{}"])
        .expect_ok();
    assert!(r.sh_ok("cat /mnt/hello/hello").starts_with("Hello"));
    r.sh_ok("echo one > /mnt/hello/note && echo two >> /mnt/hello/note");
    assert_eq!(r.sh_ok("cat /mnt/hello/note"), "one\ntwo\n");
    let listed = r.sh_ok("ls /mnt/hello");
    assert_eq!(
        listed.split_whitespace().collect::<Vec<_>>(),
        ["hello", "note"]
    );
    // `..` at a translator's root is the parent file system.
    assert_eq!(
        r.sh_ok("cd /mnt/hello/.. && ls -d sq hello | wc -l").trim(),
        "2"
    );
    r.porta(&["rm", &r.c.id, "/mnt/hello"]).expect_ok();
    r.wait_none("/mnt/hello");
    let o = r.porta(&["rm", &r.c.id, "/mnt/hello"]);
    assert!(!o.ok() && o.stderr.contains("no translator"), "{o}");
    // Bad input from the host: a relative path, a missing node, an empty program, a
    // program that is not there, a stopped container.
    for (args, needle) in [
        (
            vec!["set", &r.c.id, "mnt/u", "--", "hello-fuse", "{}"],
            "absolute",
        ),
        (
            vec!["set", &r.c.id, "/mnt/none", "--", "hello-fuse", "{}"],
            "/mnt/none",
        ),
        (vec!["set", &r.c.id, "/mnt/u"], "program"),
        (
            vec!["set", &r.c.id, "/mnt/u", "--", "no-such-program", "{}"],
            "not found",
        ),
        (vec!["set", &r.c.id, "/mnt/u", "--", "bin/x"], "translator"),
    ] {
        let o = r.porta(&args);
        assert!(!o.ok() && o.stderr.contains(needle), "{args:?}: {o}");
    }
    assert!(!r.running().iter().any(|t| t["path"] == "/mnt/u"));
    // A restart of the container keeps the passive record (it is on the node): the new
    // container's first access starts it again.
    r.c.kill("KILL").expect_ok();
    r.c.wait_stopped(30);
    wait_dead(sq);
    r.c.delete().expect_ok();
    let c2 = Container::new("tr-progs2", {
        let b = Bundle::empty(&["sleep", "100000"]);
        std::fs::remove_dir_all(b.rootfs()).ok();
        std::fs::rename(r.c.bundle.rootfs(), b.rootfs()).unwrap();
        b
    });
    c2.create_start();
    let o = c2.exec(&[], &["cat", "/mnt/sq/hello.txt"]);
    assert!(o.ok() && o.stdout == "Hello from an ext4 image.\n", "{o}");
    c2.rt(&["delete", "--force", &c2.id]).expect_ok();
}

#[test]
fn passive_translator_crash_loop_file_server_restart_and_hang() {
    require_root!();
    porta_only!(WHY);
    let r = rig("tr-crash", &[("PORTA_TRANSLATOR_TIMEOUT_MS", "3000")]);
    r.sh_ok("settrans /mnt/hello hello-fuse -f {}");
    let mut seen = std::collections::HashSet::new();
    for round in 0..5 {
        // Started (again) by the access.
        assert!(
            r.sh_ok("cat /mnt/hello/hello").starts_with("Hello"),
            "round {round}"
        );
        let pid = r.pid_of("/mnt/hello");
        assert!(seen.insert(pid), "a new translator each round");
        // A process working below the node when the translator dies: its requests fail
        // with EIO, never hang; the rest of the container goes on.
        r.c.exec(
            &["--detach"],
            &["sh", "-c", "cd /mnt/hello && exec sleep 100000"],
        )
        .expect_ok();
        // SAFETY: plain kill of the translator's pid, alive (recorded by the supervisor).
        unsafe { libc::kill(pid, libc::SIGKILL) };
        wait_dead(pid);
        let o = r.sh("cat /proc/$(pgrep -n sleep)/cwd/hello");
        assert!(
            !o.ok(),
            "round {round}: a dead translator's node answers nothing: {o}"
        );
        assert_eq!(r.sh_ok("echo ok > /tmp/x && cat /tmp/x"), "ok\n");
        r.sh("pkill -n sleep; true");
        // The first access after the crash may still meet the dead translator's cached
        // node (EIO); it clears it, and the next access starts a new translator.
        let _ = r.sh("cat /mnt/hello/hello");
    }
    // The file server killed while the translator serves: the translator goes on, the
    // node keeps working (its socket and ids are in the shared state).
    assert!(r.sh_ok("cat /mnt/hello/hello").starts_with("Hello"));
    let pid = r.pid_of("/mnt/hello");
    let st = r.c.state();
    let fs = st["servers"]
        .as_array()
        .and_then(|s| s.first())
        .map(|s| s["pid"].as_i64().unwrap_or(0))
        .unwrap_or(0);
    assert!(fs > 0, "{st}");
    // SAFETY: plain kill of the file server (Porta restarts it).
    unsafe { libc::kill(fs as i32, libc::SIGKILL) };
    r.sh_ok("echo kept > /mnt/hello/note");
    assert_eq!(r.sh_ok("cat /mnt/hello/note"), "kept\n");
    assert_eq!(
        r.pid_of("/mnt/hello"),
        pid,
        "the same translator after the server restart"
    );
    // A hung translator: a request left unanswered past the timeout fails with EIO, the
    // translator is killed, and the passive record starts a new one at the next access.
    r.sh_ok("echo hang > /mnt/hello/note");
    let started = Instant::now();
    let o = r.sh("cat /mnt/hello/hello");
    assert!(!o.ok() && o.stderr.contains("Input/output error"), "{o}");
    assert!(started.elapsed() < Duration::from_secs(120));
    wait_dead(pid);
    assert!(r.sh_ok("cat /mnt/hello/hello").starts_with("Hello"));
    assert_ne!(r.pid_of("/mnt/hello"), pid);
    r.sh_ok("rmtrans /mnt/hello");
    r.wait_none("/mnt/hello");
    let o = r.sh("getfattr -n user.porta.translator /mnt/hello");
    assert!(!o.ok(), "the record is gone: {o}");
}

#[test]
fn builtins_and_permissions() {
    require_root!();
    porta_only!(WHY);
    let r = rig("tr-builtin", &[]);
    r.sh_ok("mkdir -p /srv/data && echo viewed > /srv/data/f");
    // memfs with a size limit, owned by the node's owner.
    r.sh_ok("settrans -a /mnt/mem porta:memfs size=1M");
    r.sh_ok("echo a > /mnt/mem/a && mkdir /mnt/mem/d && ln -s a /mnt/mem/l");
    assert_eq!(r.sh_ok("cat /mnt/mem/l"), "a\n");
    let o = r.sh("dd if=/dev/zero of=/mnt/mem/big bs=64k count=64 2>&1");
    assert!(o.stdout.contains("No space left"), "{o}");
    // view: read-only.
    r.sh_ok("settrans -a /mnt/view porta:view /srv/data");
    assert_eq!(r.sh_ok("cat /mnt/view/f"), "viewed\n");
    let o = r.sh("echo x > /mnt/view/f");
    assert!(!o.ok() && o.stderr.contains("Read-only"), "{o}");
    // tar: an archive and a gzip'd OCI layer with a whiteout, served without unpacking.
    r.sh_ok(
        "mkdir -p /tmp/l/sub && echo in-tar > /tmp/l/sub/t && touch /tmp/l/.wh.gone && \
         cd /tmp/l && tar cf /images/l.tar sub .wh.gone && gzip -c /images/l.tar > /images/l.tar.gz",
    );
    r.sh_ok("settrans -a /mnt/tar porta:tar /images/l.tar.gz");
    assert_eq!(r.sh_ok("cat /mnt/tar/sub/t"), "in-tar\n");
    assert_eq!(
        r.sh_ok("ls -A /mnt/tar"),
        "sub\n",
        "whiteouts are not shown"
    );
    let o = r.sh("settrans -a /mnt/u porta:nothing");
    assert!(!o.ok(), "an unknown built-in is refused: {o}");
    // Permissions: a user attaches to a node it owns; its translator runs as that user.
    r.sh_as("1000:1000", "settrans -a /mnt/u porta:memfs")
        .expect_ok();
    let pid = r.pid_of("/mnt/u");
    let uids = status_field(pid, "Uid:");
    let host_uid = uids.split_whitespace().next().unwrap_or("");
    assert_eq!(host_uid, "1000", "the translator runs as its setter");
    r.sh_as("1000:1000", "touch /mnt/u/mine && stat -c %u /mnt/u/mine")
        .expect_ok();
    assert_eq!(
        r.sh_as("1000:1000", "stat -c %u /mnt/u/mine").stdout.trim(),
        "1000"
    );
    // ... but not to nodes it does not own, nor a symlink, nor the root; and nobody
    // replaces a running translator without removing it first.
    for (user, script) in [
        ("1000:1000", "settrans -a /mnt/mem porta:memfs"),
        ("1000:1000", "settrans /srv porta:memfs"),
        ("1000:1000", "rmtrans /mnt/view"),
        (
            "",
            "ln -s /srv /tmp/sl && setfattr -h -n user.porta.translator -v porta:memfs /tmp/sl",
        ),
        ("", "settrans -a / porta:memfs"),
        ("", "settrans -a /proc porta:memfs"),
    ] {
        let o = r.sh_as(user, script);
        assert!(!o.ok(), "{user} {script}: {o}");
    }
    assert_eq!(
        r.sh_ok("cat /mnt/view/f"),
        "viewed\n",
        "refusals left the translators alone"
    );
    // Translators come and go; after delete none is left.
    let pids: Vec<i32> = r
        .running()
        .iter()
        .map(|t| t["pid"].as_i64().unwrap_or(0) as i32)
        .collect();
    assert!(pids.len() >= 4, "{pids:?}");
    r.c.rt(&["delete", "--force", &r.c.id]).expect_ok();
    for p in pids {
        wait_dead(p);
    }
}

#[test]
fn user_namespaced_container_gets_its_own_ids_through_translators() {
    require_root!();
    porta_only!(WHY);
    const HOST: u32 = 310000;
    let r = rig_with("tr-userns", &[], Some(HOST));
    // The container's root attaches a memfs: the translator runs as the mapped root, and
    // what it makes shows the container's ids inside.
    r.sh_ok("settrans -a /mnt/mem porta:memfs && touch /mnt/mem/f");
    let pid = r.pid_of("/mnt/mem");
    assert_eq!(
        status_field(pid, "Uid:").split_whitespace().next(),
        Some(&*HOST.to_string())
    );
    assert_eq!(
        r.sh_ok("stat -c %u:%g /mnt/mem/f /mnt/mem").trim(),
        "0:0\n0:0"
    );
    // A user of the container: the translator runs as its host id, files are its own.
    r.sh_as(
        "1000:1000",
        "settrans -a /mnt/u porta:memfs && touch /mnt/u/g",
    )
    .expect_ok();
    let upid = r.pid_of("/mnt/u");
    assert_eq!(
        status_field(upid, "Uid:").split_whitespace().next(),
        Some(&*(HOST + 1000).to_string())
    );
    assert_eq!(
        r.sh_as("1000:1000", "stat -c %u:%g /mnt/u/g").stdout.trim(),
        "1000:1000"
    );
    let o = r.sh_as("1000:1000", "touch /mnt/mem/x");
    assert!(!o.ok(), "the user cannot write root's memfs: {o}");
    // A real program: fuse2fs on the image, with the image's root-owned files shown as
    // the container's root.
    r.sh_ok("settrans -a /mnt/disk fuse2fs /images/ext4.img {} -f");
    assert_eq!(
        r.sh_ok("cat /mnt/disk/hello.txt"),
        "Hello from an ext4 image.\n"
    );
    assert_eq!(r.sh_ok("stat -c %u /mnt/disk/hello.txt").trim(), "0");
    r.c.rt(&["delete", "--force", &r.c.id]).expect_ok();
    wait_dead(pid);
    wait_dead(upid);
}
