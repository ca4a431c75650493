//! The `translator-fuse2fs` workload: the same operations on the same ext4 image served
//! by the same fuse2fs binary, (a) on the host, fuse2fs serving a FUSE mount the harness
//! makes (`native`), and (b) inside a Porta container whose root is Porta's own file
//! server, fuse2fs attached with `porta translator set` (the `porta*` environments).
//!
//! Both sides run in a copy of the Debian root of the integration tests
//! (`porta_integration::debian`, built on first use: that needs deb.debian.org once), with
//! the image at `/bench/img.ext4`, the mount point or translated node `/mnt/img` and the
//! measuring program `porta-translator-probe` (a binary of this crate) in
//! `/usr/local/bin`. Each run gets a fresh FUSE connection (a new host mount, a new
//! container and translator), so the first `stat` of every name is cold.
//!
//! With tracefs and the kernel's `fuse:fuse_request_send`/`fuse_request_end` tracepoints
//! (Linux 6.13+), each run is also traced in a tracefs instance of its own: the FUSE
//! requests of the probe's connection are counted per operation and their round trips (from
//! the kernel queueing a request to its answer) timed, so that the report shows how many
//! requests each operation costs on each side and what one request costs.

use super::{progress, tail, Bench, STEP_TIMEOUT};
use crate::env::{config_json, Kind};
use crate::results::{Better, Load};
use crate::sys;
use anyhow::{anyhow, bail, Context, Result};
use std::collections::HashMap;
use std::fs;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The workload's name (opt-in: run only when `--only` names it).
pub const WORKLOAD: &str = "translator-fuse2fs";
/// The image inside the Debian root.
const IMAGE: &str = "/bench/img.ext4";
/// The mount point (host) and translated node (Porta) inside the Debian root.
const NODE: &str = "/mnt/img";
/// The probe inside the Debian root.
const PROBE_IN_ROOT: &str = "/usr/local/bin/porta-translator-probe";
/// The probe's file name next to the harness binary.
const PROBE_BIN: &str = "porta-translator-probe";
/// The FUSE program and its arguments after the image and the descriptor.
const FUSE2FS: &str = "/usr/bin/fuse2fs";
/// The descriptor number the FUSE device (host) or socket (Porta) has in fuse2fs.
const FUSE_FD: RawFd = 3;
/// Size of each small file (as the probe's `SMALL`).
const SMALL: usize = 1024;
/// The operations, in the probe's order, with their per-operation latency metrics.
const LATENCY_OPS: &[&str] = &["stat-cold", "stat-hot", "read-small", "create"];
/// Phases whose FUSE requests are counted per operation (read-large per MiB).
const TRACED: &[&str] = &[
    "stat-cold",
    "stat-hot",
    "read-small",
    "read-large",
    "create",
    "ref-stat",
];
/// The reference directory of plain files in the Debian root (outside the image).
const REF_DIR: &str = "/bench/ref";

/// Problem sizes: (small files stat'ed and read, files created, big file MiB).
pub fn sizes(quick: bool) -> (usize, usize, usize) {
    if quick {
        (300, 200, 16)
    } else {
        (2000, 1000, 128)
    }
}

/// The workload's metrics.
pub fn metrics() -> Vec<(&'static str, &'static str, Better)> {
    let mut v = Vec::new();
    for op in LATENCY_OPS {
        let (p50, p90): (&'static str, &'static str) = match *op {
            "stat-cold" => ("stat-cold-p50", "stat-cold-p90"),
            "stat-hot" => ("stat-hot-p50", "stat-hot-p90"),
            "read-small" => ("read-small-p50", "read-small-p90"),
            _ => ("create-p50", "create-p90"),
        };
        v.push((p50, "µs", Better::Lower));
        v.push((p90, "µs", Better::Lower));
    }
    v.push(("read-large", "MB/s", Better::Higher));
    v.push(("ref-stat-p50", "µs", Better::Lower));
    v
}

/// The metrics the FUSE trace adds when the kernel has the tracepoints: requests per
/// operation (per MiB for read-large) and the median request round trip of each phase.
pub fn trace_metrics() -> Vec<(&'static str, &'static str, Better)> {
    vec![
        ("req/stat-cold", "requests/op", Better::Lower),
        ("req/stat-hot", "requests/op", Better::Lower),
        ("req/read-small", "requests/op", Better::Lower),
        ("req/read-large", "requests/MiB", Better::Lower),
        ("req/create", "requests/op", Better::Lower),
        ("req/ref-stat", "requests/op", Better::Lower),
        ("rt/stat-cold", "µs/request", Better::Lower),
        ("rt/stat-hot", "µs/request", Better::Lower),
        ("rt/read-small", "µs/request", Better::Lower),
        ("rt/read-large", "µs/request", Better::Lower),
        ("rt/create", "µs/request", Better::Lower),
        ("rt/ref-stat", "µs/request", Better::Lower),
    ]
}

/// The metrics of a run: [`metrics`], and [`trace_metrics`] when the kernel can trace FUSE
/// requests.
pub fn all_metrics() -> Vec<(&'static str, &'static str, Better)> {
    let mut v = metrics();
    if tracing_available() {
        v.extend(trace_metrics());
    }
    v
}

/// What the workload does, for the report.
pub fn describe(quick: bool) -> String {
    let (files, creates, mib) = sizes(quick);
    format!(
        "One ext4 image (made with `mke2fs -d` from {files} files of {SMALL} bytes and a {mib} MiB file) served by Debian trixie's fuse2fs 1.47 (libfuse 3.17), `fuse2fs /bench/img.ext4 /dev/fd/3 -f`, in a copy of the Debian root of the integration tests. native: the harness opens /dev/fuse, mounts it on the root's /mnt/img (`fd=3,rootmode=40000,user_id=0,group_id=0,allow_other,default_permissions`) and runs fuse2fs chrooted into the root with the device as /dev/fd/3, then the probe chrooted into the same root. porta: a container on that root (`sleep`), `porta translator set ID /mnt/img -- /usr/bin/fuse2fs /bench/img.ext4 {{}} -f`, then the probe through `porta exec`. Each run has a new mount or container. The probe (`porta-translator-probe`, std only) times each operation: stat-cold: lstat of {files} names never looked up on this connection; stat-hot: the same again; read-small: open + read + close of each; read-large: one sequential read of the big file in 1 MiB blocks (MB/s); create: {creates} files, open(O_CREAT|O_EXCL) + write {SMALL} bytes + close, in a new directory; ref-stat: lstat of {files} plain files in /bench/ref, outside the image (in the container Porta's own file server answers them, on the host the host's ext4: the reference for one bare round trip). p50/p90: median and 90th percentile of the run's operations (µs). With the kernel's FUSE tracepoints (traced in a tracefs instance of the harness, filtered to the probe's FUSE connection: the host mount or the container's root), req/*: FUSE requests the kernel sent on that connection per operation (per MiB for read-large) and rt/*: their median round trip (µs, from the kernel queueing a request to its answer; in Porta that includes the file server's forwarding to the translator and back)."
    )
}

/// Why environment `name` does not run this workload (None: it does).
pub fn env_skip(name: &str) -> Option<String> {
    let inner = name
        .strip_prefix(crate::env::BASELINE_PREFIX)
        .unwrap_or(name);
    match inner {
        "native" if inner == name => None,
        "porta"
        | "porta-nowatch"
        | "porta-strict"
        | "porta-strict-nowatch"
        | "porta-uring"
        | "porta-memfs" => None,
        "porta-kernel" => Some(format!(
            "{WORKLOAD}: porta-kernel has no file server, so no translators"
        )),
        "porta-overlay" => Some(format!(
            "{WORKLOAD}: runs on the Debian root, not on a per-container overlay"
        )),
        _ => Some(format!(
            "{WORKLOAD}: translators are Porta's; native is fuse2fs on the host"
        )),
    }
}

/// Why environment `name` runs no workload but this one (`porta-memfs`), or None.
pub fn only_translator_env(name: &str) -> Option<String> {
    is_memfs(name).then(|| format!("{name} runs {WORKLOAD} only"))
}

/// How long porta-memfs waits after filling memfs: past memfs's 1-second entry and
/// attribute timeout, so that the kernel asks memfs again for every name.
const MEMFS_SETTLE: Duration = Duration::from_secs(2);

/// Whether environment `name` runs the probe against `porta:memfs` instead of fuse2fs.
fn is_memfs(name: &str) -> bool {
    name.strip_prefix(crate::env::BASELINE_PREFIX)
        .unwrap_or(name)
        == "porta-memfs"
}

/// The translator of environment `name`: its program and arguments.
fn translator_argv(name: &str, mib: usize) -> Vec<String> {
    if is_memfs(name) {
        // Room for the files, the big file and every run's created files.
        vec!["porta:memfs".into(), format!("size={}M", mib + 64)]
    } else {
        [FUSE2FS, IMAGE, "{}", "-f"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    }
}

/// The Debian root copy of this invocation.
fn debroot(b: &Bench) -> PathBuf {
    b.work.join("debroot")
}

/// Untimed preparation: the Debian root copy (built by a child process of the harness,
/// `--install-debian-root`, so that a failure there cannot leave this process's
/// containers and mounts behind), the image, the mount point and the probe.
pub fn setup(b: &mut Bench) -> Result<()> {
    let root = debroot(b);
    if root.join("bench/img.ext4").exists() {
        return Ok(());
    }
    if let Err(err) = mount_tracefs() {
        progress(&format!("{WORKLOAD}: no FUSE request traces: {err:#}"));
    } else if !tracing_available() {
        progress(&format!("{WORKLOAD}: no FUSE request traces: this kernel has no fuse:fuse_request_send tracepoint (Linux 6.13+)"));
    }
    let me = std::env::current_exe().context("the harness's own path")?;
    let probe = me.with_file_name(PROBE_BIN);
    if !probe.is_file() {
        bail!(
            "{} is missing: build it with `cargo build --release -p porta-bench` (it is a binary of porta-bench)",
            probe.display()
        );
    }
    progress(&format!(
        "{WORKLOAD}: copying the Debian root to {} (built first, under the cargo target directory, if it is not there: that needs deb.debian.org) ...",
        root.display()
    ));
    let out = Command::new(&me)
        .arg("--install-debian-root")
        .arg(&root)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {} --install-debian-root", me.display()))?;
    if !out.status.success() {
        bail!(
            "installing the Debian root failed ({}): {}",
            out.status,
            tail(&String::from_utf8_lossy(&out.stderr), 600)
        );
    }
    let (files, _, mib) = sizes(b.sizes.quick);
    let tree = b.work.join("tbench-tree");
    fs::create_dir_all(tree.join("files"))?;
    for i in 0..files {
        let data: Vec<u8> = (0..SMALL).map(|k| ((k + i) % 251) as u8).collect();
        fs::write(tree.join(format!("files/f{i:05}")), data)?;
    }
    let big: Vec<u8> = (0..mib << 20)
        .map(|k| ((k % 251) ^ (k >> 12)) as u8)
        .collect();
    fs::write(tree.join("big.bin"), big)?;
    fs::create_dir_all(root.join("bench"))?;
    fs::create_dir_all(root.join(NODE.trim_start_matches('/')))?;
    let img = root.join(IMAGE.trim_start_matches('/'));
    // Room for every run's created files: sparse, so only what is written takes space.
    let size = if b.sizes.quick { "512M" } else { "2G" };
    let o = Command::new("mke2fs")
        .args([
            "-q",
            "-F",
            "-t",
            "ext4",
            "-b",
            "4096",
            "-N",
            "200000",
            "-E",
            "root_owner=0:0",
            "-d",
        ])
        .arg(&tree)
        .arg(&img)
        .arg(size)
        .stdin(Stdio::null())
        .output()
        .context("running mke2fs (apt-get install e2fsprogs)")?;
    if !o.status.success() {
        bail!(
            "mke2fs -d {} {}: {}",
            tree.display(),
            img.display(),
            tail(&String::from_utf8_lossy(&o.stderr), 300)
        );
    }
    fs::remove_dir_all(&tree)?;
    let refs = root.join(REF_DIR.trim_start_matches('/'));
    fs::create_dir_all(&refs)?;
    for i in 0..files {
        fs::write(refs.join(format!("f{i:05}")), vec![b'r'; SMALL])?;
    }
    let dst = root.join(PROBE_IN_ROOT.trim_start_matches('/'));
    fs::copy(&probe, &dst).with_context(|| format!("copying {}", probe.display()))?;
    fs::set_permissions(&dst, fs::Permissions::from_mode(0o755))?;
    // The probe is linked against the host's glibc and runs on the root's (trixie's, newer):
    // check that it starts there (no arguments: its usage, exit status 2).
    let o = chrooted(&root, &[PROBE_IN_ROOT])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .context("running the probe in the Debian root")?;
    let err = String::from_utf8_lossy(&o.stderr);
    if o.status.code() != Some(2) || !err.contains("usage") {
        bail!(
            "{PROBE_IN_ROOT} does not start in the Debian root ({}; a host glibc newer than the root's?): {}",
            o.status,
            tail(&err, 300)
        );
    }
    Ok(())
}

/// A command run chrooted into `root`, with a plain environment.
fn chrooted(root: &Path, argv: &[&str]) -> Command {
    let mut c = Command::new(argv[0]);
    c.args(&argv[1..])
        .env_clear()
        .env("PATH", "/usr/bin:/usr/sbin:/bin:/sbin")
        .stdin(Stdio::null())
        .process_group(0);
    // SAFETY: the action only makes async-signal-safe syscalls (chroot, chdir).
    unsafe { c.pre_exec(sys::chroot_action(root)) };
    c
}

/// One run in environment `e`: the probe's figures.
pub fn measure(b: &mut Bench, e: usize, tag: &str, load: Load) -> Result<Vec<(String, f64)>> {
    if let Some(why) = env_skip(&b.envs[e].name) {
        bail!("{why}");
    }
    let (files, creates, mib) = sizes(b.sizes.quick);
    let cdir = format!("c-{tag}");
    let probe_args: Vec<String> = [
        PROBE_IN_ROOT,
        NODE,
        &files.to_string(),
        &cdir,
        &creates.to_string(),
        REF_DIR,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let (out, events) = match b.envs[e].kind {
        Kind::Native => host_once(b, tag, &probe_args)?,
        Kind::Oci(_) => porta_once(b, e, &probe_args)?,
    };
    let mut figs: HashMap<String, f64> = HashMap::new();
    for l in out.lines() {
        if let Some((k, v, _)) = porta_workloads::parse_result_line(l) {
            figs.insert(k, v);
        }
    }
    let want = all_metrics();
    if let Some(events) = events {
        let (counted, ops) = count_requests(&out, &events, (files, creates, mib))?;
        figs.extend(counted);
        // The opcodes of the environment's first measured run of each load, for the report.
        let head = format!(
            "{WORKLOAD}, FUSE requests of one run, {} ({}):",
            b.envs[e].name,
            load.name()
        );
        if !b.notes.iter().any(|n| n.starts_with(&head)) {
            b.notes.push(format!("{head} {ops}"));
        }
    }
    want.iter()
        .map(|(m, _, _)| {
            figs.get(*m).map(|v| (m.to_string(), *v)).ok_or_else(|| {
                anyhow!(
                    "{}: metric {m} missing: {}",
                    b.envs[e].name,
                    tail(&out, 300)
                )
            })
        })
        .collect()
}

/// The host side: mount, fuse2fs chrooted with the device as /dev/fd/3, the probe
/// chrooted against the mount, unmount, fuse2fs's exit.
fn host_once(b: &mut Bench, tag: &str, probe: &[String]) -> Result<Traced> {
    let root = debroot(b);
    let mnt = root.join(NODE.trim_start_matches('/'));
    let dir = b.bundles.join(format!("tnative-{tag}"));
    fs::create_dir_all(&dir)?;
    let r = (|| -> Result<Traced> {
        let mut m = FuseMount::new(&mnt)?;
        let log = dir.join("fuse2fs.log");
        let served = m.serve(
            chrooted(
                &root,
                &[FUSE2FS, IMAGE, &format!("/dev/fd/{FUSE_FD}"), "-f"],
            ),
            &log,
        )?;
        let argv: Vec<&str> = probe.iter().map(String::as_str).collect();
        let (out_f, err_f) = (dir.join("out"), dir.join("err"));
        let mut c = chrooted(&root, &argv);
        c.stdout(fs::File::create(&out_f)?)
            .stderr(fs::File::create(&err_f)?);
        // Its first access waits for fuse2fs's answer to INIT (or fails if fuse2fs died).
        let trace = Trace::start(connection_of(&mnt)?)?;
        let mut child = c.spawn().context("spawn the probe on the host")?;
        let st = sys::wait_child(&mut child, run_limit(b), "probe (host)");
        let events = trace.map(Trace::finish).transpose();
        let stdout = fs::read_to_string(&out_f).unwrap_or_default();
        let stderr = fs::read_to_string(&err_f).unwrap_or_default();
        m.unmount();
        served.finish(STEP_TIMEOUT)?;
        let st = st?;
        if !st.success() {
            bail!(
                "probe (host) failed ({st}): {}",
                tail(&format!("{stderr}\n{stdout}"), 400)
            );
        }
        Ok((stdout, events?))
    })();
    let _ = fs::remove_dir_all(&dir);
    r
}

/// The probe's output and, when traced, the FUSE requests of its connection.
type Traced = (String, Option<Vec<Request>>);

/// The FUSE connection serving `path` as the tracepoints name it: the kernel's dev_t of
/// its superblock, `major << 20 | minor`.
fn connection_of(path: &Path) -> Result<u32> {
    use std::os::unix::fs::MetadataExt;
    let dev = fs::metadata(path)
        .with_context(|| format!("stat {}", path.display()))?
        .dev();
    Ok((libc::major(dev) << 20) | libc::minor(dev))
}

fn run_limit(b: &Bench) -> Duration {
    Duration::from_secs(if b.sizes.quick { 300 } else { 1800 })
}

/// The Porta side: a container on the Debian root, fuse2fs attached as an active
/// translator, the probe through `porta exec`; the container is deleted in every case.
fn porta_once(b: &mut Bench, e: usize, probe: &[String]) -> Result<Traced> {
    let id = b.next_id();
    let dir = b.bundles.join(&id);
    fs::create_dir_all(&dir)?;
    let ann = b.envs[e]
        .oci()
        .map(|o| o.annotations.clone())
        .unwrap_or_default();
    let cfg = config_json(
        &debroot(b),
        &["/usr/bin/sleep".to_string(), "1000000".to_string()],
        &ann,
        &format!("/{}/{}", b.cgroup_parent, id),
        "porta-bench",
        !b.opt.no_cgroup_mount,
    );
    if let Err(err) = fs::write(dir.join("config.json"), serde_json::to_vec_pretty(&cfg)?) {
        let _ = fs::remove_dir_all(&dir);
        return Err(err.into());
    }
    b.live.push((e, id.clone()));
    let r = (|| -> Result<Traced> {
        let bundle = dir.to_string_lossy().to_string();
        let pidfile = dir.join("pid").to_string_lossy().to_string();
        b.step(
            e,
            &["create", "--bundle", &bundle, "--pid-file", &pidfile, &id],
            &dir,
        )?;
        b.step(e, &["start", &id], &dir)?;
        let (files, _, mib) = sizes(b.sizes.quick);
        let prog = translator_argv(&b.envs[e].name, mib);
        let mut set: Vec<&str> = vec!["translator", "set", &id, NODE, "--"];
        set.extend(prog.iter().map(String::as_str));
        b.step(e, &set, &dir)?;
        if is_memfs(&b.envs[e].name) {
            // memfs starts empty: the probe fills it with what the image holds. The kernel
            // then knows every name; memfs gives its entries and attributes a 1-second
            // timeout (porta-translators' memfs TTL), so after 2 s each first stat sends the
            // LOOKUP a cold one would. (Not drop_caches: that would also evict the image and
            // the root from the host's page cache, slowing the next environment's run.)
            let (n, m) = (files.to_string(), mib.to_string());
            b.step(
                e,
                &["exec", &id, PROBE_IN_ROOT, "--populate", NODE, &n, &m],
                &dir,
            )?;
            std::thread::sleep(MEMFS_SETTLE);
        }
        let mut args: Vec<&str> = vec!["exec", &id];
        args.extend(probe.iter().map(String::as_str));
        let (out_f, err_f) = (dir.join("exec.out"), dir.join("exec.err"));
        let mut c = b.oci_cmd(e, &args);
        c.stdout(fs::File::create(&out_f)?)
            .stderr(fs::File::create(&err_f)?);
        // The container's root, as its init sees it: the file server's FUSE connection.
        let pid: i32 = fs::read_to_string(dir.join("pid"))
            .context("reading --pid-file")?
            .trim()
            .parse()
            .context("parsing --pid-file")?;
        let trace = Trace::start(connection_of(Path::new(&format!("/proc/{pid}/root")))?)?;
        let mut child = c.spawn().context("spawn porta exec")?;
        let st = sys::wait_child(&mut child, run_limit(b), "porta exec of the probe");
        let events = trace.map(Trace::finish).transpose();
        let st = st?;
        let stdout = fs::read_to_string(&out_f).unwrap_or_default();
        if !st.success() {
            let stderr = fs::read_to_string(&err_f).unwrap_or_default();
            bail!(
                "porta exec of the probe failed ({st}): {}",
                tail(&format!("{stderr}\n{stdout}"), 400)
            );
        }
        Ok((stdout, events?))
    })();
    let pid: Option<i32> = fs::read_to_string(dir.join("pid"))
        .ok()
        .and_then(|s| s.trim().parse().ok());
    let _ = b.step(e, &["kill", &id, "KILL"], &dir);
    if let Some(pid) = pid {
        sys::wait_pid_exit(pid, STEP_TIMEOUT);
    }
    sys::reap_zombies();
    b.force_delete(e, &id);
    let _ = fs::remove_dir_all(&dir);
    r
}

// ---------------------------------------------------------------------------------------
// The host's FUSE mount.

/// A FUSE mount made with an opened /dev/fuse, served by a program that gets the device
/// as /dev/fd/3. Unmounted (detached if busy) when dropped.
struct FuseMount {
    at: PathBuf,
    dev: Option<OwnedFd>,
    mounted: bool,
}

impl FuseMount {
    fn new(at: &Path) -> Result<FuseMount> {
        let f = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/fuse")
            .context("opening /dev/fuse")?;
        let dev = OwnedFd::from(f);
        let opts = format!(
            "fd={},rootmode=40000,user_id=0,group_id=0,allow_other,default_permissions",
            dev.as_raw_fd()
        );
        mount_fuse(at, &opts)
            .with_context(|| format!("mount -t fuse -o {opts} {}", at.display()))?;
        Ok(FuseMount {
            at: at.to_path_buf(),
            dev: Some(dev),
            mounted: true,
        })
    }

    /// Starts `cmd` with the device as descriptor 3, output to `log`; closes the
    /// harness's copy, so that the mount fails (ENOTCONN) instead of hanging if it dies.
    fn serve(&mut self, mut cmd: Command, log: &Path) -> Result<Served> {
        let dev = self
            .dev
            .take()
            .ok_or_else(|| anyhow!("FUSE device already handed over"))?;
        let out = fs::File::create(log)?;
        cmd.stdout(out.try_clone()?).stderr(out);
        let fd = dev.as_raw_fd();
        // SAFETY: the closure only calls dup2 and fcntl (async-signal-safe) between fork
        // and exec; `fd` stays open in the parent until spawn returns.
        unsafe { cmd.pre_exec(move || give_fd(fd, FUSE_FD)) };
        let child = cmd.spawn().context("starting fuse2fs on the host")?;
        drop(dev);
        Ok(Served {
            child: Some(child),
            log: log.to_path_buf(),
        })
    }

    fn unmount(&mut self) {
        if std::mem::take(&mut self.mounted) {
            sys::unmount_or_detach(&self.at);
        }
    }
}

impl Drop for FuseMount {
    fn drop(&mut self) {
        self.unmount();
    }
}

/// fuse2fs serving a [`FuseMount`]: killed and reaped when dropped.
struct Served {
    child: Option<Child>,
    log: PathBuf,
}

impl Served {
    /// After the unmount: waits (bounded) for the program to exit by itself, an error
    /// with its output if it failed or had to be killed.
    fn finish(mut self, limit: Duration) -> Result<()> {
        let Some(mut c) = self.child.take() else {
            return Ok(());
        };
        let st = sys::wait_child(&mut c, limit, "fuse2fs after the unmount");
        let log = fs::read_to_string(&self.log).unwrap_or_default();
        let st = st.with_context(|| tail(&log, 300))?;
        if !st.success() {
            bail!("fuse2fs exited with {st}: {}", tail(&log, 300));
        }
        Ok(())
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn give_fd(fd: RawFd, n: RawFd) -> std::io::Result<()> {
    // SAFETY: dup2 and fcntl on descriptors of this process; no memory is passed.
    let r = unsafe {
        if fd == n {
            libc::fcntl(n, libc::F_SETFD, 0)
        } else {
            libc::dup2(fd, n)
        }
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn mount_fuse(target: &Path, opts: &str) -> std::io::Result<()> {
    let t = std::ffi::CString::new(target.as_os_str().as_encoded_bytes())
        .map_err(|_| std::io::Error::other("mount point holds a NUL byte"))?;
    let o = std::ffi::CString::new(opts)
        .map_err(|_| std::io::Error::other("options hold a NUL byte"))?;
    // SAFETY: valid NUL-terminated strings that outlive the call; mount only reads them.
    let r = unsafe {
        libc::mount(
            c"porta-bench-fuse2fs".as_ptr(),
            t.as_ptr(),
            c"fuse".as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV,
            o.as_ptr().cast(),
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

// ---------------------------------------------------------------------------------------
// FUSE request traces.

/// Where tracefs is (mounted there by [`setup`] in the harness's private mount
/// namespace when it was not).
const TRACEFS: &str = "/sys/kernel/tracing";

/// Whether the kernel has the FUSE request tracepoints (and tracefs is mounted).
pub fn tracing_available() -> bool {
    Path::new(TRACEFS)
        .join("events/fuse/fuse_request_send")
        .exists()
}

/// Mounts tracefs on [`TRACEFS`] unless it is there. The harness runs in a private mount
/// namespace: the mount is its own and goes with it.
fn mount_tracefs() -> Result<()> {
    if Path::new(TRACEFS).join("instances").exists() {
        return Ok(());
    }
    // SAFETY: NUL-terminated constant strings; mount only reads them.
    let r = unsafe {
        libc::mount(
            c"tracefs".as_ptr(),
            c"/sys/kernel/tracing".as_ptr(),
            c"tracefs".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if r != 0 {
        bail!(
            "mount -t tracefs on {TRACEFS}: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

/// A tracefs instance of this harness with the FUSE request tracepoints on (its own
/// buffer, so other tracing on the machine is left alone); removed when dropped.
struct Trace {
    dir: PathBuf,
}

/// One traced FUSE request: (connection, opcode name, sent, answered; ns, CLOCK_MONOTONIC).
type Request = (u32, String, u128, Option<u128>);

impl Trace {
    /// Starts tracing the requests of FUSE connection `conn` (the tracepoints' own filter),
    /// or None when the FUSE tracepoints are missing.
    fn start(conn: u32) -> Result<Option<Trace>> {
        if !tracing_available() {
            return Ok(None);
        }
        let dir = Path::new(TRACEFS).join(format!("instances/porta-bench-{}", std::process::id()));
        // One left by an interrupted run of this process: remove it first.
        let _ = fs::remove_dir(&dir);
        fs::create_dir(&dir).with_context(|| format!("mkdir {}", dir.display()))?;
        let t = Trace { dir };
        let filter = format!("connection == {conn}");
        for (f, v) in [
            ("trace_clock", "mono"),
            ("buffer_size_kb", "16384"),
            ("events/fuse/fuse_request_send/filter", filter.as_str()),
            ("events/fuse/fuse_request_end/filter", filter.as_str()),
            ("events/fuse/fuse_request_send/enable", "1"),
            ("events/fuse/fuse_request_end/enable", "1"),
            ("tracing_on", "1"),
        ] {
            fs::write(t.dir.join(f), v)
                .with_context(|| format!("writing {v} to {}", t.dir.join(f).display()))?;
        }
        Ok(Some(t))
    }

    /// Stops tracing and returns the requests seen; an error if the buffer lost any.
    fn finish(self) -> Result<Vec<Request>> {
        let _ = fs::write(self.dir.join("tracing_on"), "0");
        for cpu in fs::read_dir(self.dir.join("per_cpu"))?.flatten() {
            let stats = fs::read_to_string(cpu.path().join("stats")).unwrap_or_default();
            for l in stats.lines() {
                if let Some((k, v)) = l.split_once(':') {
                    if (k == "overrun" || k == "dropped events") && v.trim() != "0" {
                        bail!(
                            "the FUSE trace lost events ({}: {l}): its counts would be wrong",
                            cpu.path().display()
                        );
                    }
                }
            }
        }
        let text = fs::read_to_string(self.dir.join("trace")).context("reading the trace")?;
        Ok(parse_trace(&text))
    }
}

impl Drop for Trace {
    fn drop(&mut self) {
        let _ = fs::write(self.dir.join("tracing_on"), "0");
        let _ = fs::write(self.dir.join("events/fuse/enable"), "0");
        if let Err(e) = fs::remove_dir(&self.dir) {
            progress(&format!(
                "warning: could not remove the trace instance {}: {e}",
                self.dir.display()
            ));
        }
    }
}

/// Parses the trace text into requests (sent and, if seen, answered).
fn parse_trace(text: &str) -> Vec<Request> {
    let mut open: HashMap<(u32, u64), usize> = HashMap::new();
    let mut out: Vec<Request> = Vec::new();
    for l in text.lines() {
        if l.starts_with('#') {
            continue;
        }
        // "  task-pid [cpu] flags  123.456789: fuse_request_send: connection 45 req 8 opcode 1 (FUSE_LOOKUP) len 44"
        let Some((head, rest)) = l.split_once(": fuse_request_") else {
            continue;
        };
        let Some(ts) = head.rsplit(' ').next().and_then(parse_ts) else {
            continue;
        };
        let send = rest.starts_with("send");
        let mut w = rest.split_whitespace();
        let mut conn = None;
        let mut req = None;
        let mut op = String::new();
        while let Some(k) = w.next() {
            match k {
                "connection" => conn = w.next().and_then(|v| v.parse::<u32>().ok()),
                "req" => req = w.next().and_then(|v| v.parse::<u64>().ok()),
                k if k.starts_with("(FUSE_") => {
                    op = k.trim_matches(|c| c == '(' || c == ')').to_string()
                }
                _ => {}
            }
        }
        let (Some(conn), Some(req)) = (conn, req) else {
            continue;
        };
        if send {
            open.insert((conn, req), out.len());
            out.push((conn, op, ts, None));
        } else if let Some(i) = open.remove(&(conn, req)) {
            out[i].3 = Some(ts);
        }
    }
    out
}

/// "123.456789" (seconds with µs, or ns with 9 digits) → ns.
fn parse_ts(s: &str) -> Option<u128> {
    let (sec, frac) = s.split_once('.')?;
    let sec: u128 = sec.parse().ok()?;
    let digits = frac.len() as u32;
    if digits == 0 || digits > 9 {
        return None;
    }
    let f: u128 = frac.parse().ok()?;
    Some(sec * 1_000_000_000 + f * 10u128.pow(9 - digits))
}

/// From the probe's `DEV` and `PHASE` lines and the trace: requests per operation of
/// each phase and the median round trip of its requests, on the probe's connection; and
/// the opcodes of each phase (`phase: N×FUSE_X, …`), for the report's notes.
fn count_requests(
    out: &str,
    events: &[Request],
    (files, creates, mib): (usize, usize, usize),
) -> Result<(HashMap<String, f64>, String)> {
    let dev = out
        .lines()
        .find_map(|l| l.strip_prefix("DEV "))
        .and_then(|d| d.trim().split_once(':'))
        .and_then(|(a, b)| Some((a.parse::<u32>().ok()?, b.parse::<u32>().ok()?)))
        .ok_or_else(|| anyhow!("the probe printed no DEV line"))?;
    // The kernel's dev_t (what the tracepoint prints): major << 20 | minor.
    let conn = (dev.0 << 20) | dev.1;
    let ref_conn = out
        .lines()
        .find_map(|l| l.strip_prefix("REFDEV "))
        .and_then(|d| d.trim().split_once(':'))
        .and_then(|(a, b)| Some((a.parse::<u32>().ok()? << 20) | b.parse::<u32>().ok()?));
    let mut figs = HashMap::new();
    let mut breakdown = Vec::new();
    for l in out.lines() {
        let mut w = l.split_whitespace();
        if w.next() != Some("PHASE") {
            continue;
        }
        let (Some(name), Some(t0), Some(t1)) = (
            w.next(),
            w.next().and_then(|v| v.parse::<u128>().ok()),
            w.next().and_then(|v| v.parse::<u128>().ok()),
        ) else {
            bail!("bad PHASE line {l:?}");
        };
        if !TRACED.contains(&name) {
            continue;
        }
        // ref-stat: the reference directory's own connection (none natively: host ext4).
        let c = if name == "ref-stat" {
            ref_conn
        } else {
            Some(conn)
        };
        let reqs: Vec<&Request> = events
            .iter()
            .filter(|r| Some(r.0) == c && r.2 >= t0 && r.2 <= t1)
            .collect();
        let per = match name {
            "read-large" => mib as f64,
            "create" => creates as f64,
            _ => files as f64,
        };
        figs.insert(format!("req/{name}"), reqs.len() as f64 / per);
        let mut rt: Vec<f64> = reqs
            .iter()
            .filter_map(|r| r.3.map(|e| e.saturating_sub(r.2) as f64 / 1e3))
            .collect();
        rt.sort_by(f64::total_cmp);
        figs.insert(
            format!("rt/{name}"),
            crate::stats::median(&rt).unwrap_or(0.0),
        );
        let mut ops: HashMap<&str, usize> = HashMap::new();
        for r in &reqs {
            *ops.entry(r.1.as_str()).or_default() += 1;
        }
        let mut ops: Vec<_> = ops.into_iter().collect();
        ops.sort();
        let ops: Vec<String> = ops.iter().map(|(o, n)| format!("{n}×{o}")).collect();
        breakdown.push(format!("{name}: {}", ops.join(" ")));
    }
    Ok((figs, breakdown.join("; ")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_lines_pair_up_by_connection_and_request() {
        let t = "# tracer: nop\n\
            probe-12 [001] ..... 100.000001: fuse_request_send: connection 45 req 8 opcode 1 (FUSE_LOOKUP) len 44\n\
            other-13 [000] ..... 100.000002: fuse_request_send: connection 46 req 8 opcode 3 (FUSE_GETATTR) len 56\n\
            fuse2fs-14 [000] ..... 100.000031: fuse_request_end: connection 45 req 8 len 144 error 0\n";
        let r = parse_trace(t);
        assert_eq!(r.len(), 2);
        assert_eq!(
            r[0],
            (
                45,
                "FUSE_LOOKUP".to_string(),
                100_000_001_000,
                Some(100_000_031_000)
            )
        );
        assert_eq!(r[1].0, 46);
        assert_eq!(r[1].3, None);
        let out = "DEV 0:45\nPHASE stat-cold 100000000000 100000100000\n";
        let (f, ops) = count_requests(out, &r, (1, 1, 1)).unwrap();
        assert_eq!(ops, "stat-cold: 1×FUSE_LOOKUP");
        assert_eq!(f["req/stat-cold"], 1.0);
        assert_eq!(f["rt/stat-cold"], 30.0);
    }

    #[test]
    fn only_native_and_porta_file_server_environments_run_it() {
        assert!(env_skip("native").is_none());
        assert!(env_skip("porta").is_none());
        assert!(env_skip("baseline-porta-strict").is_none());
        assert!(env_skip("porta-kernel").unwrap().contains("no file server"));
        assert!(env_skip("runc").is_some());
        assert!(env_skip("baseline-native").is_some());
        assert!(env_skip("porta-memfs").is_none());
        assert!(only_translator_env("porta-memfs").is_some());
        assert!(only_translator_env("porta").is_none());
        assert_eq!(
            translator_argv("porta-memfs", 16),
            ["porta:memfs", "size=80M"]
        );
        assert_eq!(
            translator_argv("porta-strict", 16),
            [FUSE2FS, IMAGE, "{}", "-f"]
        );
        assert_eq!(metrics().len(), 10);
    }
}
