//! The harness proper: root file system assembly, container operations, the interleaved
//! measurement loop, density, and clean-up.

use crate::env::{config_json, Env, Kind, RootMount};
use crate::report::{RunInfo, RuntimeInfo, WorkloadDoc};
use crate::results::{finalize, Better, Cell, Load, Record, Status};
use crate::sys;
use anyhow::{anyhow, bail, Context, Result};
use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::Write;
use std::os::unix::fs::symlink;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub mod translator;

/// Every workload, in run order.
pub const WORKLOADS: &[&str] = &[
    "lifecycle",
    "primes",
    "membw",
    "memlat",
    "fsmark-fsync",
    "fsmark-nosync",
    "fsmark-real",
    "stat-tree",
    "smallfile",
    "smallio",
    "seqio",
    "host-change",
    "density",
];

/// Workloads run only when `--only` names them (after the others): `translator-fuse2fs`
/// needs the Debian root of the integration tests (built on first use, from
/// deb.debian.org).
pub const OPT_IN_WORKLOADS: &[&str] = &[translator::WORKLOAD];

/// Problem sizes; `quick` shrinks them.
#[derive(Debug, Clone, Copy)]
pub struct Sizes {
    /// Reduced problem sizes (`--quick`).
    pub quick: bool,
}

impl Sizes {
    /// Sieve limit and the number of primes below it.
    pub fn primes_n(&self) -> (u64, u64) {
        // The sieve takes well under a second even at full size, so --quick keeps it.
        let _ = self.quick;
        (100_000_000, 5_761_455)
    }
    /// Files per fs_mark run, with or without fsync.
    pub fn fsmark_files(&self, sync: bool) -> usize {
        match (self.quick, sync) {
            (false, _) => 5_000,
            (true, true) => 200,
            (true, false) => 500,
        }
    }
    /// Buffer size (MiB) and number of copies of `membw`.
    pub fn membw_mib(&self) -> (usize, usize) {
        if self.quick {
            (64, 10)
        } else {
            (128, 20)
        }
    }
    /// Buffer size (MiB) and number of dependent loads of `memlat`.
    pub fn memlat(&self) -> (usize, u64) {
        if self.quick {
            (64, 1_000_000)
        } else {
            (256, 5_000_000)
        }
    }
    /// Files in the `stat-tree` tree.
    pub fn tree_files(&self) -> usize {
        if self.quick {
            5_000
        } else {
            50_000
        }
    }
    /// Appends (and reopens) per `smallio` run.
    pub fn smallio(&self) -> usize {
        if self.quick {
            2_000
        } else {
            20_000
        }
    }
    /// Size of the `seqio` file, MiB.
    pub fn seqio_mib(&self) -> usize {
        if self.quick {
            64
        } else {
            1024
        }
    }
    /// Files per `smallfile` run.
    pub fn smallfiles(&self) -> usize {
        if self.quick {
            1_000
        } else {
            20_000
        }
    }
    /// Host changes per run of `host-change`, and the checks the container makes for each
    /// before it gives up (a count, not a time: at roughly a microsecond a check, tens of
    /// seconds — far beyond the 1 s fallback timeout, far below the one-day one).
    pub fn host_changes(&self) -> (usize, u64) {
        if self.quick {
            (50, 20_000_000)
        } else {
            (200, 20_000_000)
        }
    }
    /// Idle containers running at once in `density`.
    pub fn density(&self) -> usize {
        if self.quick {
            5
        } else {
            20
        }
    }
}

/// The metrics a workload reports: (workload-side metric name, unit, direction).
pub fn metrics(workload: &str) -> Vec<(&'static str, &'static str, Better)> {
    match workload {
        "lifecycle" => vec![("time", "ms", Better::Lower)],
        "primes" => vec![("time", "s", Better::Lower)],
        "membw" => vec![("copy", "MB/s", Better::Higher)],
        "memlat" => vec![("latency", "ns", Better::Lower)],
        "fsmark-fsync" | "fsmark-nosync" | "smallfile" => {
            vec![("rate", "files/s", Better::Higher)]
        }
        "fsmark-real" => vec![
            ("nosync", "files/s", Better::Higher),
            ("fsync", "files/s", Better::Higher),
            ("program-nosync", "files/s", Better::Higher),
            ("program-fsync", "files/s", Better::Higher),
        ],
        "stat-tree" => vec![
            ("cold", "files/s", Better::Higher),
            ("warm", "files/s", Better::Higher),
        ],
        "smallio" => vec![
            ("append", "writes/s", Better::Higher),
            ("reopen", "opens/s", Better::Higher),
        ],
        "seqio" => vec![
            ("write", "MB/s", Better::Higher),
            ("read", "MB/s", Better::Higher),
        ],
        "host-change" => vec![("p50", "µs", Better::Lower), ("max", "µs", Better::Lower)],
        "density" => vec![
            ("pss", "MiB/container", Better::Lower),
            ("host-used", "MiB/container", Better::Lower),
        ],
        translator::WORKLOAD => translator::all_metrics(),
        _ => vec![],
    }
}

/// What a workload does and how big it is, for the report.
pub fn describe(workload: &str, s: Sizes) -> String {
    match workload {
        "lifecycle" => "`create` + `start` + wait for exit + `delete` of a container running busybox `/bin/true`, timed by the harness from the spawn of `create` to the exit of `delete` (wait: the pid from `--pid-file`, watched through a pidfd until it exits — the container's init for runc, crun and porta; for runsc its sandbox process, which exits with the container). Native: fork + chroot + exec of `/bin/true` + wait.".into(),
        "primes" => { let (n, c) = s.primes_n(); format!("Count the primes below {n} ({c} of them) with a segmented sieve of Eratosthenes (CPU-bound, cache-resident); seconds, timed inside the container.") }
        "membw" => { let (m, i) = s.membw_mib(); format!("Memory copy bandwidth: `memcpy` between two {m} MiB buffers (larger than the 32 MiB L3), best of {i} copies, MB/s = 10^6 bytes copied per second (tinymembench's \"C copy\").") }
        "memlat" => { let (m, a) = s.memlat(); format!("Random-access latency: dependent loads chasing one random cycle through a {m} MiB buffer (64-byte slots), {a} loads, ns per load (4 KiB pages, so TLB misses are included).") }
        "fsmark-fsync" => format!("fs_mark-style: {} files of 10,240 bytes with 40-byte names, created in one fresh directory of the container's root, with fs_mark 3.3's system calls per file (`fs_mark -S 1`; see fsmark-real): mkdir of the directory (EEXIST), openat O_RDWR|O_CREAT|O_TRUNC, one write, fsync, close; files/s over the loop.", s.fsmark_files(true)),
        "fsmark-nosync" => format!("As fsmark-fsync without the fsync: {} files, in a directory that never held files before (earlier runs' directories are kept until the end of the whole invocation, never deleted in between).", s.fsmark_files(false)),
        "fsmark-real" => format!("The real fs_mark 3.3 (Debian's `/usr/bin/fs_mark`, copied with its shared libraries into the root file system), the same sizes as fsmark-nosync and fsmark-fsync, so that the two can be checked against each other: `fs_mark -d DIR -n {} -s 10240 -S 0 -L 1 -k` (nosync) and `fs_mark -d DIR -n {} -s 10240 -S 1 -L 1 -k` (fsync), each in its own container, in a fresh directory; fs_mark's own files/sec. Paired with each, in the same round and environment, the workload program's fsmark of the same size in a container of its own (program-nosync, program-fsync; which of the two runs first alternates from round to round), so that the two are compared without the drift between workloads. Per file both make the same system calls (mkdir of the directory, EEXIST; openat O_RDWR|O_CREAT|O_TRUNC; one write of 10,240 bytes; fsync with -S 1; close).", s.fsmark_files(false), s.fsmark_files(true)),
        "stat-tree" => format!("Walk a tree of {} empty files (20 directories × 25 subdirectories × 100 files, created once before the first run) reading every directory and lstat'ing every entry, like `find -ls`, twice in one container; files/s. cold: the first walk, in a fresh container, right after the harness wrote back and dropped the kernel's page, dentry and inode caches (`sync; echo 3 > /proc/sys/vm/drop_caches`, before every run of every environment); warm: the second walk, right after the first.", s.tree_files()),
        "smallfile" => format!("In a fresh directory: create {} files of 1 KiB, stat each, rename each, delete each; files/s through all four steps.", s.smallfiles()),
        "smallio" => format!("One new file: {n} appends of 100 bytes, one write(2) each, as a log writer makes them (append, writes/s); then {n} rounds of open + read of 100 bytes + close of that file, as a shell or compiler reads the same small files again (reopen, opens/s).", n = s.smallio()),
        "seqio" => format!("Write a new {} MiB file sequentially in 1 MiB blocks and fsync it (write MB/s), drop its cached pages with posix_fadvise(DONTNEED), read it back in 1 MiB blocks (read MB/s), remove it.", s.seqio_mib()),
        "host-change" => { let (n, l) = s.host_changes(); format!("The window between a change made from the host and the container seeing it. The container (`porta-workload host-change`) looks a missing name up (so the kernel may cache the miss), creates a ready file; the harness, polling the root from the host, sees it, reads the clock and creates the name; the container checks for it in a loop (at most {l} checks, then it fails) and reads the clock when it is there. {n} changes per run, one after the other; p50 and max: median and largest delay of the run, µs (wall clock, read on both sides; the host's create call is inside the window). Natively and under runc/crun the container shares the host's dentries: their figures are the probe's own floor. porta-nowatch keeps the one-day timeouts: it never sees the change and fails by design.") }
        "density" => format!("{} idle containers (`sleep`) running at once. pss: the PSS (from /proc/PID/smaps_rollup) summed over every process the runtime leaves running — every descendant of the harness, which is the child subreaper, plus any new process whose executable is the runtime binary — divided by the number of containers; for runc/crun that is the containers' own processes, for runsc its sandbox, gofer and stub processes, for porta its supervisor and file-server processes. host-used: growth of MemTotal − MemFree (page cache included) from just before the first create to 2 s (quick: 1 s) after the last start, per container. Native: {} chrooted `sleep` processes.", s.density(), s.density()),
        translator::WORKLOAD => translator::describe(s.quick),
        _ => String::new(),
    }
}

/// Command-line options the harness needs (filled in by main).
#[derive(Debug, Clone)]
pub struct Options {
    /// Output directory for results, report and plots.
    pub out: PathBuf,
    /// Reduced problem sizes.
    pub quick: bool,
    /// Workloads to run (empty: all).
    pub only: Vec<String>,
    /// Environments to run (empty: the default set).
    pub runtimes: Vec<String>,
    /// The porta binary under test.
    pub porta: PathBuf,
    /// A second porta binary, run by the `baseline-*` environments.
    pub baseline: Option<PathBuf>,
    /// The workspace root (to build the workload binary).
    pub workspace: PathBuf,
    /// A prebuilt static workload binary, instead of building one.
    pub workload_bin: Option<PathBuf>,
    /// Where the root file system and state directories are made.
    pub work_dir: PathBuf,
    /// Make a scratch file system of this size for the run (see [`crate::scratch`]).
    pub scratch_fs: Option<String>,
    /// Counted runs per environment (default per workload).
    pub runs: Option<usize>,
    /// Warm-up rounds (default per workload).
    pub warmup: Option<usize>,
    /// Keep the work directory for inspection.
    pub keep: bool,
    /// Also write this Markdown page, with its plots beside it.
    pub docs: Option<PathBuf>,
    /// The command line, as printed in the report.
    pub command_line: String,
    /// Leave the `/sys/fs/cgroup` mount out of every config.json.
    pub no_cgroup_mount: bool,
    /// Measure every workload a second time per round beside CPU hogs.
    pub load: bool,
}

/// The CPU hogs of a loaded measurement: two busy loops per online CPU.
pub fn hog_count(online_cpus: usize) -> usize {
    2 * online_cpus.max(1)
}

/// One invocation of the harness: its environments, the shared root file system and the work directory it removes at the end.
pub struct Bench {
    opt: Options,
    sizes: Sizes,
    /// The environments, in the order they run.
    pub envs: Vec<Env>,
    work: PathBuf,
    /// The scratch file system mounted on `work` (`--scratch-fs`).
    scratch: Option<crate::scratch::Scratch>,
    rootfs: PathBuf,
    bundles: PathBuf,
    cgroup_parent: String,
    counter: u64,
    /// Containers that exist right now: (env index, id).
    live: Vec<(usize, String)>,
    /// Native processes that exist right now.
    native_pids: Vec<i32>,
    notes: Vec<String>,
    /// Runs that failed once and were retried.
    retries: Vec<String>,
    /// fs_mark is installed in the root file system (`fsmark-real` can run).
    fs_mark: bool,
    /// The fuse-overlayfs daemons serving container roots right now: mount point → pid.
    fuse_daemons: HashMap<PathBuf, i32>,
    /// The CPU hogs running right now (a loaded measurement): not counted by `density`.
    hog_pids: Vec<i32>,
    started: Instant,
    started_utc: String,
}

/// A workload program started by [`Bench::start_program`].
struct Started {
    e: usize,
    /// The container (None: native).
    id: Option<String>,
    /// Its bundle (or, native, output) directory, removed when it is finished.
    dir: PathBuf,
    child: std::process::Child,
    /// The root file system it sees, as the host reaches it.
    root: PathBuf,
    what: String,
    args: String,
}

const PROBE_TIMEOUT: Duration = Duration::from_secs(60);
const STEP_TIMEOUT: Duration = Duration::from_secs(60);

fn tail(s: &str, n: usize) -> String {
    let s = s.trim();
    let lines: Vec<&str> = s.lines().filter(|l| !l.trim().is_empty()).collect();
    let joined = lines[lines.len().saturating_sub(4)..].join(" / ");
    if joined.chars().count() > n {
        let skip = joined.chars().count() - n;
        format!("…{}", joined.chars().skip(skip).collect::<String>())
    } else {
        joined
    }
}

fn progress(msg: &str) {
    eprintln!("{msg}");
}

impl Bench {
    /// Prepares the work directory, the root file system and every environment (probing each runtime).
    pub fn new(opt: Options, notes: Vec<String>) -> Result<Bench> {
        let sizes = Sizes { quick: opt.quick };
        let pid = std::process::id();
        let work = opt.work_dir.join(format!("porta-bench-{pid}"));
        fs::create_dir_all(&work).with_context(|| format!("create {}", work.display()))?;
        let mut envs = Vec::new();
        for name in &opt.runtimes {
            let e = Env::new(
                name,
                &opt.porta,
                opt.baseline.as_deref(),
                &work.join("state"),
            )
            .ok_or_else(|| {
                anyhow!(
                    "unknown runtime {name:?} (known: {}, and baseline-<a porta environment>)",
                    crate::env::ALL
                        .iter()
                        .chain(crate::env::EXTRA)
                        .copied()
                        .collect::<Vec<_>>()
                        .join(",")
                )
            })?;
            envs.push(e);
        }
        let scratch = match &opt.scratch_fs {
            Some(size) => {
                let image = opt.work_dir.join(format!("porta-bench-{pid}.img"));
                progress(&format!(
                    "making a scratch ext4 of {size} in {} on {} ...",
                    image.display(),
                    work.display()
                ));
                match crate::scratch::Scratch::make(&image, &work, size) {
                    Ok(s) => Some(s),
                    Err(e) => {
                        let _ = fs::remove_dir(&work);
                        return Err(e);
                    }
                }
            }
            None => None,
        };
        Ok(Bench {
            scratch,
            sizes,
            rootfs: work.join("rootfs"),
            bundles: work.join("bundles"),
            cgroup_parent: format!("porta-bench-{pid}"),
            work,
            envs,
            counter: 0,
            live: Vec::new(),
            native_pids: Vec::new(),
            notes,
            retries: Vec::new(),
            hog_pids: Vec::new(),
            fuse_daemons: HashMap::new(),
            fs_mark: false,
            started: Instant::now(),
            started_utc: Command::new("date")
                .args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
                .unwrap_or_default(),
            opt,
        })
    }

    fn warmup(&self, workload: &str) -> usize {
        self.opt.warmup.unwrap_or(match (workload, self.opt.quick) {
            ("density", _) => 0, // each round starts 20 containers; the probe already warmed every runtime up
            ("lifecycle", false) => 2,
            _ => 1,
        })
    }

    fn counted(&self, workload: &str) -> usize {
        self.opt.runs.unwrap_or(match (workload, self.opt.quick) {
            ("lifecycle", false) => 10,
            _ => 5,
        })
    }

    /// Finds or builds the static workload binary.
    fn workload_binary(&self) -> Result<PathBuf> {
        if let Some(p) = &self.opt.workload_bin {
            if !sys::is_static_elf(p)? {
                bail!("{} is not statically linked", p.display());
            }
            return Ok(p.clone());
        }
        let target_dir = self
            .opt
            .workspace
            .join("target")
            .join("porta-bench-workloads");
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        progress(&format!(
            "building the static workload binary (cargo, target dir {}) ...",
            target_dir.display()
        ));
        let st = Command::new(&cargo)
            .args([
                "build",
                "--release",
                "--quiet",
                "-p",
                "porta-workloads",
                "--bin",
                "porta-workload",
                "--target",
                "x86_64-unknown-linux-gnu",
            ])
            .current_dir(&self.opt.workspace)
            .env("RUSTFLAGS", "-C target-feature=+crt-static")
            .env("CARGO_TARGET_DIR", &target_dir)
            .stdin(Stdio::null())
            .status()
            .with_context(|| format!("running {cargo:?}"))?;
        if !st.success() {
            bail!("building porta-workloads failed ({st}); pass a prebuilt static binary with --workload-bin");
        }
        let p = target_dir.join("x86_64-unknown-linux-gnu/release/porta-workload");
        if !sys::is_static_elf(&p)? {
            bail!("{} is not statically linked", p.display());
        }
        Ok(p)
    }

    /// Assembles the busybox root file system shared by every environment.
    fn assemble_rootfs(&mut self) -> Result<()> {
        let wl = self.workload_binary()?;
        let r = &self.rootfs;
        for d in ["bin", "proc", "sys", "dev", "tmp", "etc", "data", "root"] {
            fs::create_dir_all(r.join(d))?;
        }
        let busybox = Path::new("/bin/busybox");
        if !sys::is_static_elf(busybox).unwrap_or(false) {
            bail!("/bin/busybox missing or not static (apt-get install busybox-static)");
        }
        fs::copy(busybox, r.join("bin/busybox"))?;
        let out = Command::new(busybox)
            .arg("--list")
            .output()
            .context("busybox --list")?;
        for applet in String::from_utf8_lossy(&out.stdout).lines().map(str::trim) {
            if applet.is_empty() || applet == "busybox" || applet.contains('/') {
                continue;
            }
            let _ = symlink("busybox", r.join("bin").join(applet));
        }
        fs::copy(&wl, r.join("bin/porta-workload"))?;
        self.fs_mark = crate::fsmark::install(r)?;
        fs::write(
            r.join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
        )?;
        fs::write(r.join("etc/group"), "root:x:0:\nnogroup:x:65534:\n")?;
        fs::write(r.join("etc/hostname"), "porta-bench\n")?;
        fs::create_dir_all(&self.bundles)?;
        Ok(())
    }

    fn next_id(&mut self) -> String {
        self.counter += 1;
        format!("pb{}-{}", std::process::id(), self.counter)
    }

    fn oci_cmd(&self, e: usize, args: &[&str]) -> Command {
        let env = &self.envs[e];
        let o = env.oci().expect("oci env");
        let mut c = Command::new(&o.bin);
        c.args(&o.global)
            .arg("--root")
            .arg(&env.state_root)
            .args(args);
        c.stdin(Stdio::null()).process_group(0);
        c
    }

    /// Runs a short runtime subcommand, stdout/stderr to files in `dir`, with a time limit.
    fn step(&self, e: usize, args: &[&str], dir: &Path) -> Result<String> {
        let out = dir.join(format!("{}.out", args[0]));
        let err = dir.join(format!("{}.err", args[0]));
        let mut c = self.oci_cmd(e, args);
        c.stdout(fs::File::create(&out)?)
            .stderr(fs::File::create(&err)?);
        let what = format!("{} {}", self.envs[e].name, args[0]);
        let mut child = c.spawn().with_context(|| format!("spawn {what}"))?;
        let st = sys::wait_child(&mut child, STEP_TIMEOUT, &what)?;
        let stdout = fs::read_to_string(&out).unwrap_or_default();
        if !st.success() {
            let stderr = fs::read_to_string(&err).unwrap_or_default();
            bail!(
                "{what} failed ({st}): {}",
                tail(&format!("{stderr}\n{stdout}"), 400)
            );
        }
        Ok(stdout)
    }

    fn write_bundle(&mut self, e: usize, args: &[String]) -> Result<(String, PathBuf)> {
        let id = self.next_id();
        let dir = self.bundles.join(&id);
        fs::create_dir_all(&dir)?;
        let ann = self.envs[e]
            .oci()
            .map(|o| o.annotations.clone())
            .unwrap_or_default();
        if let Err(err) = self.mount_root(e, &dir) {
            self.release_root(e, &dir);
            let _ = fs::remove_dir_all(&dir);
            return Err(err);
        }
        let root = self.root_of(e, &dir);
        let cfg = config_json(
            &root,
            args,
            &ann,
            &format!("/{}/{}", self.cgroup_parent, id),
            "porta-bench",
            !self.opt.no_cgroup_mount,
        );
        let written = serde_json::to_vec_pretty(&cfg)
            .map_err(anyhow::Error::from)
            .and_then(|b| Ok(fs::write(dir.join("config.json"), b)?));
        if let Err(err) = written {
            self.release_root(e, &dir);
            let _ = fs::remove_dir_all(&dir);
            return Err(err);
        }
        Ok((id, dir))
    }

    /// Makes the root of environment `e`'s container in bundle `dir`: nothing for the
    /// shared root, else the environment's mount on `dir/merged`.
    fn mount_root(&mut self, e: usize, dir: &Path) -> Result<()> {
        match self.envs[e].root.clone() {
            RootMount::Shared => Ok(()),
            RootMount::Overlay => self.mount_overlay(dir),
            RootMount::FuseOverlayfs(bin) => self.mount_fuse_overlayfs(&bin, dir),
        }
    }

    /// Undoes [`Bench::mount_root`]: unmounts `dir/merged` (a fuse-overlayfs daemon is
    /// waited for and reaped). Harmless when nothing is mounted.
    fn release_root(&mut self, e: usize, dir: &Path) {
        match self.envs[e].root {
            RootMount::Shared => {}
            RootMount::Overlay => sys::unmount(&dir.join("merged")),
            RootMount::FuseOverlayfs(_) => self.unmount_fuse(&dir.join("merged")),
        }
    }

    /// Mounts `dir/merged` with `fuse-overlayfs -o lowerdir=<shared root>,upperdir=dir/upper,
    /// workdir=dir/work`. fuse-overlayfs returns once the mount is made and leaves its
    /// daemon, reparented to the harness (the child subreaper): it is remembered, so that
    /// [`Bench::unmount_fuse`] waits for it and reaps it.
    fn mount_fuse_overlayfs(&mut self, bin: &Path, dir: &Path) -> Result<()> {
        for d in ["upper", "work", "merged"] {
            fs::create_dir_all(dir.join(d))?;
        }
        let merged = dir.join("merged");
        let opts = format!(
            "lowerdir={},upperdir={},workdir={}",
            self.rootfs.display(),
            dir.join("upper").display(),
            dir.join("work").display()
        );
        let err_file = dir.join("fuse-overlayfs.err");
        let mut child = Command::new(bin)
            .arg("-o")
            .arg(&opts)
            .arg(&merged)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&err_file)?)
            .process_group(0)
            .spawn()
            .with_context(|| format!("spawn {}", bin.display()))?;
        let st = sys::wait_child(&mut child, STEP_TIMEOUT, "fuse-overlayfs");
        // Its daemon: our child now, running the same binary, not one we know already.
        let me = std::process::id() as i32;
        let exe = fs::canonicalize(bin).unwrap_or_else(|_| bin.to_path_buf());
        let known: Vec<i32> = self.fuse_daemons.values().copied().collect();
        let daemons: Vec<i32> = sys::all_pids()
            .into_iter()
            .filter(|&p| {
                !known.contains(&p)
                    && sys::parent_of(p) == Some(me)
                    && sys::exe_of(p).as_deref() == Some(exe.as_path())
            })
            .collect();
        let mounted = porta_sys::proc::own_mountinfo()
            .unwrap_or_default()
            .iter()
            .any(|m| m.mount_point == merged);
        let stderr = || tail(&fs::read_to_string(&err_file).unwrap_or_default(), 300);
        let why = match (st, daemons.as_slice(), mounted) {
            (Ok(st), [pid], true) if st.success() => {
                self.fuse_daemons.insert(merged, *pid);
                return Ok(());
            }
            (Err(err), _, _) => format!("{err:#}"),
            (Ok(st), _, _) if !st.success() => format!("exited with {st}: {}", stderr()),
            (Ok(_), _, false) => {
                format!("no mount on {} afterwards: {}", merged.display(), stderr())
            }
            (Ok(_), d, true) => format!("expected one daemon process, found {d:?}"),
        };
        // Undo whatever was made: the mount, then the daemons it left.
        sys::unmount(&merged);
        for p in daemons {
            sys::kill_pid(p, libc::SIGKILL);
            sys::reap_child(p);
        }
        bail!("fuse-overlayfs {opts} {}: {why}", merged.display())
    }

    /// Unmounts a fuse-overlayfs root and waits for its daemon to exit (killing it if it
    /// does not within the step time limit), reaping it.
    fn unmount_fuse(&mut self, merged: &Path) {
        sys::unmount_or_detach(merged);
        if let Some(pid) = self.fuse_daemons.remove(merged) {
            // After an interrupt the wait returns at once: the daemon is killed then.
            if !sys::wait_pid_exit(pid, STEP_TIMEOUT) {
                if !sys::interrupted() {
                    progress(&format!(
                        "warning: fuse-overlayfs daemon {pid} of {} did not exit after the unmount; killing it",
                        merged.display()
                    ));
                }
                sys::kill_pid(pid, libc::SIGKILL);
                sys::reap_child(pid);
            }
        }
    }

    /// Deletes a container (force) and forgets it; unmounts its own root, if it has one.
    fn force_delete(&mut self, e: usize, id: &str) {
        let dir = self.bundles.join(id);
        let _ = fs::create_dir_all(&dir);
        let _ = self.step(e, &["delete", "--force", id], &dir);
        self.live.retain(|(le, lid)| !(*le == e && lid == id));
        sys::reap_zombies();
        self.release_root(e, &dir);
    }

    /// The root file system of the container whose bundle is `dir`, as the host reaches it.
    fn root_of(&self, e: usize, dir: &Path) -> PathBuf {
        if self.envs[e].root.per_container() {
            dir.join("merged")
        } else {
            self.rootfs.clone()
        }
    }

    /// Mounts `dir/merged`: an overlay whose lower layer is the shared root file system
    /// and whose upper layer is `dir/upper`, `nfs_export=off` (so without file handles).
    fn mount_overlay(&self, dir: &Path) -> Result<()> {
        for d in ["upper", "work", "merged"] {
            fs::create_dir_all(dir.join(d))?;
        }
        let opts = format!(
            "lowerdir={},upperdir={},workdir={},nfs_export=off",
            self.rootfs.display(),
            dir.join("upper").display(),
            dir.join("work").display()
        );
        sys::mount_overlay(&dir.join("merged"), &opts)
    }

    fn native_cmd(&self, args: &[String]) -> Command {
        let mut c = Command::new(&args[0]);
        c.args(&args[1..])
            .env_clear()
            .env("PATH", "/bin")
            .stdin(Stdio::null())
            .process_group(0);
        // SAFETY: the action only makes async-signal-safe syscalls.
        unsafe { c.pre_exec(sys::chroot_action(&self.rootfs)) };
        c
    }

    /// Runs one workload program to completion in environment `e`, returns its stdout.
    fn run_program(&mut self, e: usize, args: &[String], timeout: Duration) -> Result<String> {
        let p = self.start_program(e, args)?;
        self.finish_program(p, timeout)
    }

    /// Starts one workload program in environment `e` (its bundle written, its root
    /// mounted for an overlay environment); [`Bench::finish_program`] waits for it.
    fn start_program(&mut self, e: usize, args: &[String]) -> Result<Started> {
        match self.envs[e].kind {
            Kind::Native => {
                let id = self.next_id();
                let dir = self.bundles.join(format!("native-{id}"));
                fs::create_dir_all(&dir)?;
                let (out, err) = (dir.join("out"), dir.join("err"));
                let mut c = self.native_cmd(args);
                c.stdout(fs::File::create(&out)?)
                    .stderr(fs::File::create(&err)?);
                let child = c.spawn().context("spawn native workload");
                let child = match child {
                    Ok(c) => c,
                    Err(err) => {
                        let _ = fs::remove_dir_all(&dir);
                        return Err(err);
                    }
                };
                Ok(Started {
                    e,
                    id: None,
                    dir,
                    child,
                    root: self.rootfs.clone(),
                    what: "native workload".into(),
                    args: args.join(" "),
                })
            }
            Kind::Oci(_) => {
                let (id, dir) = self.write_bundle(e, args)?;
                self.live.push((e, id.clone()));
                let root = self.root_of(e, &dir);
                let (out, err) = (dir.join("out"), dir.join("err"));
                let bundle = dir.to_string_lossy().to_string();
                let mut c = self.oci_cmd(e, &["run", "--bundle", &bundle, &id]);
                let what = format!("{} run", self.envs[e].name);
                let child = fs::File::create(&out)
                    .and_then(|o| Ok((o, fs::File::create(&err)?)))
                    .map_err(anyhow::Error::from)
                    .and_then(|(o, r)| {
                        c.stdout(o)
                            .stderr(r)
                            .spawn()
                            .with_context(|| format!("spawn {what}"))
                    });
                match child {
                    Ok(child) => Ok(Started {
                        e,
                        id: Some(id),
                        dir,
                        child,
                        root,
                        what,
                        args: args.join(" "),
                    }),
                    Err(err) => {
                        self.force_delete(e, &id);
                        let _ = fs::remove_dir_all(&dir);
                        Err(err)
                    }
                }
            }
        }
    }

    /// Waits for a started program (killed after `timeout`), removes its container and
    /// bundle, returns its stdout.
    fn finish_program(&mut self, mut p: Started, timeout: Duration) -> Result<String> {
        let res = sys::wait_child(&mut p.child, timeout, &p.what);
        let stdout = fs::read_to_string(p.dir.join("out")).unwrap_or_default();
        let stderr = fs::read_to_string(p.dir.join("err")).unwrap_or_default();
        if let Some(id) = &p.id {
            self.force_delete(p.e, id);
        }
        let _ = fs::remove_dir_all(&p.dir);
        let st = res?;
        if !st.success() {
            bail!(
                "{} of {} failed ({st}): {}",
                p.what,
                p.args,
                tail(&format!("{stderr}\n{stdout}"), 400)
            );
        }
        Ok(stdout)
    }

    /// Runs a workload program and parses its `RESULT` lines.
    fn run_figures(
        &mut self,
        e: usize,
        args: &[String],
        timeout: Duration,
    ) -> Result<HashMap<String, f64>> {
        let out = self.run_program(e, args, timeout)?;
        let mut m = HashMap::new();
        for l in out.lines() {
            if let Some((k, v, _unit)) = porta_workloads::parse_result_line(l) {
                m.insert(k, v);
            }
        }
        if m.is_empty() {
            bail!(
                "{}: no RESULT line in output: {}",
                self.envs[e].name,
                tail(&out, 300)
            );
        }
        if args.get(1).map(String::as_str) == Some("primes")
            && args.get(2) == Some(&self.sizes.primes_n().0.to_string())
        {
            let want = self.sizes.primes_n().1;
            if !out.contains(&format!(": {want}")) {
                bail!(
                    "{}: wrong prime count: {}",
                    self.envs[e].name,
                    tail(&out, 200)
                );
            }
        }
        Ok(m)
    }

    /// One container life cycle (create, start, wait, delete) in milliseconds.
    fn lifecycle_once(&mut self, e: usize) -> Result<f64> {
        let args = vec!["/bin/true".to_string()];
        if let Kind::Native = self.envs[e].kind {
            let mut c = self.native_cmd(&args);
            c.stdout(Stdio::null()).stderr(Stdio::null());
            let t = Instant::now();
            let mut child = c.spawn()?;
            let st = sys::wait_child(&mut child, STEP_TIMEOUT, "native /bin/true")?;
            let ms = t.elapsed().as_secs_f64() * 1e3;
            if !st.success() {
                bail!("native /bin/true failed: {st}");
            }
            return Ok(ms);
        }
        let (id, dir) = self.write_bundle(e, &args)?;
        let bundle = dir.to_string_lossy().to_string();
        let pidfile = dir.join("pid");
        let pidfile_s = pidfile.to_string_lossy().to_string();
        self.live.push((e, id.clone()));
        let t = Instant::now();
        let r = (|| -> Result<f64> {
            self.step(
                e,
                &["create", "--bundle", &bundle, "--pid-file", &pidfile_s, &id],
                &dir,
            )?;
            let pid: i32 = fs::read_to_string(&pidfile)
                .context("reading --pid-file")?
                .trim()
                .parse()
                .context("parsing --pid-file")?;
            self.step(e, &["start", &id], &dir)?;
            if !sys::wait_pid_exit(pid, STEP_TIMEOUT) {
                bail!("container init {pid} did not exit");
            }
            // Reap what the runtime left to us (the subreaper), as a shim would: runtimes take a
            // zombie for a live process.
            sys::reap_zombies();
            self.step(e, &["delete", &id], &dir)?;
            Ok(t.elapsed().as_secs_f64() * 1e3)
        })();
        match r {
            Ok(ms) => {
                self.live.retain(|(le, lid)| !(*le == e && *lid == id));
                sys::reap_zombies();
                self.release_root(e, &dir);
                let _ = fs::remove_dir_all(&dir);
                Ok(ms)
            }
            Err(err) => {
                self.force_delete(e, &id);
                Err(err)
            }
        }
    }

    /// Starts `n` idle containers, measures, stops them. Returns (PSS MiB per container, host
    /// used MiB per container, description of the processes counted).
    fn density_once(&mut self, e: usize, n: usize) -> Result<(f64, f64, String)> {
        let args = vec!["/bin/sleep".to_string(), "1000000".to_string()];
        let me = std::process::id() as i32;
        let before = sys::pid_set();
        let settle = if self.opt.quick {
            Duration::from_secs(1)
        } else {
            Duration::from_secs(2)
        };
        std::thread::sleep(settle / 4);
        let used0 = sys::host_used_kib();
        let mut started: Vec<String> = Vec::new();
        let r = (|| -> Result<(f64, f64, String)> {
            for _ in 0..n {
                if sys::interrupted() {
                    bail!("interrupted");
                }
                match self.envs[e].kind {
                    Kind::Native => {
                        let mut c = self.native_cmd(&args);
                        c.stdout(Stdio::null()).stderr(Stdio::null());
                        let child = c.spawn()?;
                        self.native_pids.push(child.id() as i32);
                        std::mem::forget(child); // reaped by reap_zombies after the kill
                    }
                    Kind::Oci(_) => {
                        let (id, dir) = self.write_bundle(e, &args)?;
                        self.live.push((e, id.clone()));
                        started.push(id.clone());
                        let bundle = dir.to_string_lossy().to_string();
                        let pidfile = dir.join("pid").to_string_lossy().to_string();
                        self.step(
                            e,
                            &["create", "--bundle", &bundle, "--pid-file", &pidfile, &id],
                            &dir,
                        )?;
                        self.step(e, &["start", &id], &dir)?;
                    }
                }
            }
            std::thread::sleep(settle);
            let used1 = sys::host_used_kib();
            let mut procs: HashSet<i32> = sys::descendants(me)
                .into_iter()
                .filter(|p| !self.hog_pids.contains(p))
                .collect();
            if let Some(o) = self.envs[e].oci() {
                let bin = fs::canonicalize(&o.bin).unwrap_or(o.bin.clone());
                for p in sys::all_pids() {
                    if !before.contains(&p)
                        && p != me
                        && sys::exe_of(p).as_deref() == Some(bin.as_path())
                    {
                        procs.insert(p);
                    }
                }
            }
            let mut pss = 0u64;
            let mut names: HashMap<String, usize> = HashMap::new();
            for &p in &procs {
                if let Some(k) = sys::pss_kib(p) {
                    pss += k;
                    *names.entry(sys::comm_of(p)).or_default() += 1;
                }
            }
            let mut names: Vec<_> = names.into_iter().collect();
            names.sort();
            let desc = format!(
                "{} processes ({})",
                procs.len(),
                names
                    .iter()
                    .map(|(k, v)| format!("{v}× {k}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            let per = |kib: i64| kib as f64 / 1024.0 / n as f64;
            Ok((per(pss as i64), per(used1 as i64 - used0 as i64), desc))
        })();
        // Stop everything this round started.
        for id in started {
            let dir = self.bundles.join(&id);
            let pid: Option<i32> = fs::read_to_string(dir.join("pid"))
                .ok()
                .and_then(|s| s.trim().parse().ok());
            let _ = self.step(e, &["kill", &id, "KILL"], &dir);
            if let Some(pid) = pid {
                sys::wait_pid_exit(pid, Duration::from_secs(10));
            }
            sys::reap_zombies();
            self.force_delete(e, &id);
            let _ = fs::remove_dir_all(&dir);
        }
        for p in std::mem::take(&mut self.native_pids) {
            sys::kill_pid(p, libc::SIGKILL);
            let mut st = 0;
            // SAFETY: our own child.
            unsafe { libc::waitpid(p, &mut st, 0) };
        }
        sys::reap_zombies();
        r
    }

    /// One measurement of `workload` in environment `e` in round `round`, beside CPU hogs
    /// when `load` is [`Load::Loaded`] (started right before, killed and reaped right after).
    fn measure(
        &mut self,
        workload: &str,
        e: usize,
        round: usize,
        load: Load,
    ) -> Result<Vec<(String, f64)>> {
        let _hogs = match load {
            Load::Quiet => None,
            Load::Loaded => {
                let h = sys::Hogs::start(hog_count(sys::online_cpus()))?;
                self.hog_pids = h.pids().to_vec();
                Some(h)
            }
        };
        let r = self.measure_inner(workload, e, round, load);
        self.hog_pids.clear();
        r
    }

    fn measure_inner(
        &mut self,
        workload: &str,
        e: usize,
        round: usize,
        load: Load,
    ) -> Result<Vec<(String, f64)>> {
        let s = self.sizes;
        // The retry count makes a retried run's directories fresh: a failed attempt may have
        // left its directory behind.
        let tag = format!(
            "{}-{}{}-{}",
            self.envs[e].name,
            round,
            if load == Load::Loaded { "-load" } else { "" },
            self.retries.len()
        );
        let long = Duration::from_secs(if s.quick { 300 } else { 1800 });
        let a = |v: &[&str]| -> Vec<String> {
            std::iter::once("/bin/porta-workload")
                .chain(v.iter().copied())
                .map(String::from)
                .collect()
        };
        let figs = match workload {
            "lifecycle" => return Ok(vec![("time".into(), self.lifecycle_once(e)?)]),
            "density" => {
                let (pss, used, desc) = self.density_once(e, s.density())?;
                if round == self.warmup(workload) && load == Load::Quiet {
                    let note = format!("density, {}: {}", self.envs[e].name, desc);
                    self.notes.push(note);
                }
                return Ok(vec![("pss".into(), pss), ("host-used".into(), used)]);
            }
            "primes" => self.run_figures(e, &a(&["primes", &s.primes_n().0.to_string()]), long)?,
            "membw" => {
                let (m, i) = s.membw_mib();
                self.run_figures(e, &a(&["membw", &m.to_string(), &i.to_string()]), long)?
            }
            "memlat" => {
                let (m, n) = s.memlat();
                self.run_figures(e, &a(&["memlat", &m.to_string(), &n.to_string()]), long)?
            }
            "fsmark-fsync" => self.run_figures(
                e,
                &a(&[
                    "fsmark",
                    &format!("/fsmark-sync-{tag}"),
                    &s.fsmark_files(true).to_string(),
                    "10240",
                    "sync",
                ]),
                long,
            )?,
            "fsmark-nosync" => self.run_figures(
                e,
                &a(&[
                    "fsmark",
                    &format!("/fsmark-nosync-{tag}"),
                    &s.fsmark_files(false).to_string(),
                    "10240",
                    "nosync",
                ]),
                long,
            )?,
            "fsmark-real" => {
                let mut figs = HashMap::new();
                for (metric, sync) in [("nosync", false), ("fsync", true)] {
                    // fs_mark takes directory paths shorter than 40 bytes: the environment's
                    // index instead of its name.
                    let dir = |who: &str| {
                        format!(
                            "/fm{who}-{metric}-{e}-{round}{}-{}",
                            if load == Load::Loaded { "l" } else { "" },
                            self.retries.len()
                        )
                    };
                    let real = crate::fsmark::args(&dir("r"), s.fsmark_files(sync), sync)?;
                    let n = s.fsmark_files(sync).to_string();
                    let mode = if sync { "sync" } else { "nosync" };
                    let program = a(&["fsmark", &dir("p"), &n, "10240", mode]);
                    // Alternate the order from round to round: neither always runs first.
                    for first in [round % 2 == 0, round % 2 != 0] {
                        if first {
                            let out = self.run_program(e, &real, long)?;
                            let rate = crate::fsmark::parse_output(&out)
                                .with_context(|| format!("{} {metric}", self.envs[e].name))?;
                            figs.insert(metric.to_string(), rate);
                        } else {
                            let f = self.run_figures(e, &program, long)?;
                            let rate = *f.get("rate").ok_or_else(|| {
                                anyhow!("{}: fsmark gave no rate", self.envs[e].name)
                            })?;
                            figs.insert(format!("program-{metric}"), rate);
                        }
                    }
                }
                figs
            }
            "stat-tree" => {
                sys::drop_caches()?;
                self.run_figures(e, &a(&["stat-tree", "/data/tree"]), long)?
            }
            "smallfile" => self.run_figures(
                e,
                &a(&[
                    "smallfile",
                    &format!("/smallfile-{tag}"),
                    &s.smallfiles().to_string(),
                ]),
                long,
            )?,
            "smallio" => self.run_figures(
                e,
                &a(&[
                    "smallio",
                    &format!("/smallio-{tag}.dat"),
                    &s.smallio().to_string(),
                ]),
                long,
            )?,
            "seqio" => self.run_figures(
                e,
                &a(&[
                    "seqio",
                    &format!("/seqio-{tag}.dat"),
                    &s.seqio_mib().to_string(),
                ]),
                long,
            )?,
            "host-change" => return self.host_change_once(e, &tag),
            translator::WORKLOAD => return translator::measure(self, e, &tag, load),
            other => bail!("unknown workload {other}"),
        };
        metrics(workload)
            .iter()
            .map(|(m, _, _)| {
                figs.get(*m)
                    .map(|v| (m.to_string(), *v))
                    .ok_or_else(|| anyhow!("{}: metric {m} missing", self.envs[e].name))
            })
            .collect()
    }

    /// One run of `host-change`: the container waits for names the host creates in its root
    /// (see [`describe`]); the delays are the host's creation time to the container's
    /// sighting. Returns the run's median and largest delay in µs.
    fn host_change_once(&mut self, e: usize, tag: &str) -> Result<Vec<(String, f64)>> {
        let (n, limit) = self.sizes.host_changes();
        let rel = format!("hostchange-{tag}");
        // Made before the container starts: in the shared root (an overlay's lower layer).
        fs::create_dir(self.rootfs.join(&rel)).with_context(|| format!("mkdir {rel}"))?;
        let args: Vec<String> = [
            "/bin/porta-workload",
            "host-change",
            &format!("/{rel}"),
            &n.to_string(),
            &limit.to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let started = self.start_program(e, &args)?;
        let dir = started.root.join(&rel);
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let host = {
            let stop = stop.clone();
            std::thread::spawn(move || host_side(&dir, n, &stop))
        };
        let timeout = Duration::from_secs(if self.sizes.quick { 300 } else { 1800 });
        let out = self.finish_program(started, timeout);
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let made = host
            .join()
            .map_err(|_| anyhow!("host-change: the host side panicked"))?;
        let _ = fs::remove_dir_all(self.rootfs.join(&rel));
        let out = out?;
        let made = made?;
        let mut delays = Vec::with_capacity(n);
        for l in out.lines() {
            let mut w = l.split_whitespace();
            if w.next() != Some("SEEN") {
                continue;
            }
            let (Some(i), Some(t)) = (
                w.next().and_then(|x| x.parse::<usize>().ok()),
                w.next().and_then(|x| x.parse::<u128>().ok()),
            ) else {
                bail!("host-change: bad line {l:?}");
            };
            let t0 = *made
                .get(i)
                .ok_or_else(|| anyhow!("host-change: seen {i}, never made"))?;
            delays.push(t.saturating_sub(t0) as f64 / 1e3);
        }
        if delays.len() != n {
            bail!(
                "host-change: {} of {n} changes reported: {}",
                delays.len(),
                tail(&out, 200)
            );
        }
        let (p50, max) = (
            crate::stats::median(&delays).unwrap_or(0.0),
            delays.iter().copied().fold(0.0, f64::max),
        );
        Ok(vec![("p50".into(), p50), ("max".into(), max)])
    }

    /// Untimed preparation before the first run of a workload.
    fn setup(&mut self, workload: &str) -> Result<()> {
        if workload == translator::WORKLOAD {
            return translator::setup(self);
        }
        if workload == "stat-tree" && !self.rootfs.join("data/tree").exists() {
            let n = self.sizes.tree_files().to_string();
            let args: Vec<String> = ["/bin/porta-workload", "mktree", "/data/tree", &n]
                .iter()
                .map(|s| s.to_string())
                .collect();
            let native = self.native_cmd(&args).output().context("mktree")?;
            if !native.status.success() {
                bail!("mktree failed: {}", String::from_utf8_lossy(&native.stderr));
            }
        }
        Ok(())
    }

    /// Checks each environment once with a tiny container; failures mark it skipped.
    fn probe(&mut self) {
        for e in 0..self.envs.len() {
            if self.envs[e].skip.is_some() {
                continue;
            }
            if let Some(o) = self.envs[e].oci() {
                let v = Command::new(&o.bin)
                    .arg("--version")
                    .stdin(Stdio::null())
                    .output();
                self.envs[e].version = match v {
                    Ok(o) => String::from_utf8_lossy(&o.stdout)
                        .lines()
                        .take(2)
                        .collect::<Vec<_>>()
                        .join("; "),
                    Err(err) => format!("--version failed: {err}"),
                };
            } else {
                self.envs[e].version = "host".into();
            }
            let args: Vec<String> =
                vec!["/bin/porta-workload".into(), "primes".into(), "1000".into()];
            let t = Instant::now();
            match self.run_figures(e, &args, PROBE_TIMEOUT) {
                Ok(_) => progress(&format!(
                    "  {:<13} ok ({:.0} ms)",
                    self.envs[e].name,
                    t.elapsed().as_secs_f64() * 1e3
                )),
                Err(err) => {
                    let reason =
                        format!("probe container failed: {}", tail(&format!("{err:#}"), 400));
                    progress(&format!("  {:<13} SKIPPED: {reason}", self.envs[e].name));
                    self.envs[e].skip = Some(reason);
                }
            }
        }
    }

    /// Facts about the machine and this run, with every path inside the workspace written
    /// relative to it (so that committed report pages name `target/release/porta`, not the
    /// checkout they were made in).
    fn info(&self) -> RunInfo {
        let mut i = self.info_raw();
        crate::report::relativize_info(&mut i, &self.opt.workspace);
        i
    }

    fn info_raw(&self) -> RunInfo {
        let cpu = fs::read_to_string("/proc/cpuinfo")
            .unwrap_or_default()
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split(':').nth(1))
            .map(|s| s.trim().to_string())
            .unwrap_or_default();
        let kernel = Command::new("uname")
            .arg("-srvm")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default();
        RunInfo {
            date_utc: self.started_utc.clone(),
            command: self.opt.command_line.clone(),
            mode: if self.opt.quick { "quick".into() } else { "full".into() },
            rounds: match (self.opt.warmup, self.opt.runs) {
                (Some(w), Some(r)) => format!("{w} warm-up round(s) and {r} counted runs per environment"),
                _ => format!(
                    "warm-up rounds: {} (lifecycle {}, density {}); counted runs per environment: {} (lifecycle {})",
                    self.warmup("primes"), self.warmup("lifecycle"), self.warmup("density"), self.counted("primes"), self.counted("lifecycle")
                ),
            },
            kernel,
            cpu,
            cpus: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            memory_mib: sys::mem_total_kib() / 1024,
            work_fs: match &self.scratch {
                Some(_) => format!(
                    "{} (a new ext4 with a journal made for this run: --scratch-fs)",
                    sys::fs_type(&self.work)
                ),
                None => sys::fs_type(&self.work),
            },
            duration_s: self.started.elapsed().as_secs_f64(),
            runtimes: self
                .envs
                .iter()
                .map(|e| RuntimeInfo {
                    name: e.name.clone(),
                    invocation: e.invocation(),
                    version: e.version.clone(),
                    status: e.skip.clone().map(|s| format!("skipped: {s}")).unwrap_or_else(|| "measured".into()),
                })
                .collect(),
            notes: {
                let mut n = self.notes.clone();
                if !self.retries.is_empty() {
                    n.push(format!("{} run(s) failed and were retried once (a second failure marks the runtime failed for that workload): {}", self.retries.len(), self.retries.join("; ")));
                }
                n
            },
        }
    }

    /// Writes results.json, machine.json, report.md and the SVGs (and the docs page).
    fn write_outputs(&self, cells: &[Cell], done: &[String]) -> Result<Vec<Record>> {
        let mut records = finalize(cells);
        for r in &mut records {
            if let Some(why) = &mut r.reason {
                *why = crate::report::relative_to(why, &self.opt.workspace);
            }
        }
        let out = &self.opt.out;
        fs::create_dir_all(out)?;
        fs::write(
            out.join("results.json"),
            serde_json::to_vec_pretty(&records)?,
        )?;
        let info = self.info();
        fs::write(out.join("machine.json"), serde_json::to_vec_pretty(&info)?)?;
        let docs: Vec<WorkloadDoc> = done
            .iter()
            .map(|w| WorkloadDoc {
                name: w.clone(),
                description: describe(w, self.sizes),
            })
            .collect();
        for w in done {
            let rows: Vec<&Record> = records.iter().filter(|r| &r.workload == w).collect();
            fs::write(
                out.join(format!("{w}.svg")),
                crate::svg::workload_svg(w, &rows),
            )?;
        }
        fs::write(
            out.join("report.md"),
            crate::report::render(&info, &records, &docs, "", ""),
        )?;
        if let Some(doc) = &self.opt.docs {
            let sub = plots_dir_name(doc);
            let plots = doc.parent().unwrap_or(Path::new(".")).join(&sub);
            fs::create_dir_all(&plots)?;
            for w in done {
                fs::copy(out.join(format!("{w}.svg")), plots.join(format!("{w}.svg")))?;
            }
            let preface = crate::report::docs_preface();
            fs::write(
                doc,
                crate::report::render(&info, &records, &docs, &format!("{sub}/"), &preface),
            )?;
        }
        Ok(records)
    }

    /// The whole benchmark. Call [`Bench::cleanup`] afterwards in every case.
    pub fn run(&mut self) -> Result<Vec<Record>> {
        let selected = select_workloads(&self.opt.only)?;
        progress(&format!(
            "porta-bench: work directory {}",
            self.work.display()
        ));
        self.assemble_rootfs()?;
        progress("probing environments:");
        self.probe();
        let mut cells: Vec<Cell> = Vec::new();
        let mut done: Vec<String> = Vec::new();
        for (wi, w) in selected.iter().enumerate() {
            if w == "fsmark-real" && !self.fs_mark {
                let why = format!(
                    "{} not installed on the host (apt-get install fsmark)",
                    crate::fsmark::FS_MARK
                );
                progress(&format!(
                    "[{}/{} {w}] skipped: {why}",
                    wi + 1,
                    selected.len()
                ));
                let loads: &[Load] = if self.opt.load {
                    &[Load::Quiet, Load::Loaded]
                } else {
                    &[Load::Quiet]
                };
                for env in &self.envs {
                    for &load in loads {
                        for (m, unit, better) in metrics(w) {
                            cells.push(Cell {
                                workload: w.clone(),
                                runtime: env.name.clone(),
                                metric: m.to_string(),
                                unit: unit.to_string(),
                                better,
                                load,
                                values: Vec::new(),
                                status: Status::Skipped,
                                reason: Some(env.skip.clone().unwrap_or_else(|| why.clone())),
                            });
                        }
                    }
                }
                done.push(w.clone());
                continue;
            }
            self.setup(w)?;
            let warm = self.warmup(w);
            let counted = self.counted(w);
            let ms = metrics(w);
            let n_env = self.envs.len();
            let loads: &[Load] = if self.opt.load {
                &[Load::Quiet, Load::Loaded]
            } else {
                &[Load::Quiet]
            };
            // One slot per environment and load, in run order: each environment quiet, then
            // (with --load) the same environment beside the CPU hogs.
            let slots: Vec<(usize, Load)> = (0..n_env)
                .flat_map(|e| loads.iter().map(move |&l| (e, l)))
                .collect();
            let mut values: Vec<Vec<Vec<f64>>> = vec![vec![Vec::new(); ms.len()]; slots.len()];
            let mut failed: Vec<Option<String>> = vec![None; slots.len()];
            // Environments a workload does not run in (translator-fuse2fs: Porta's own).
            let env_names: Vec<String> = self.envs.iter().map(|e| e.name.clone()).collect();
            let wskip = |e: usize| -> Option<String> {
                if w == translator::WORKLOAD {
                    translator::env_skip(&env_names[e])
                } else {
                    translator::only_translator_env(&env_names[e])
                }
            };
            let t0 = Instant::now();
            for round in 0..warm + counted {
                let mut line = format!(
                    "[{}/{} {w}] {} {}/{}:",
                    wi + 1,
                    selected.len(),
                    if round < warm { "warm-up" } else { "run" },
                    if round < warm {
                        round + 1
                    } else {
                        round - warm + 1
                    },
                    if round < warm { warm } else { counted }
                );
                for (si, &(e, load)) in slots.iter().enumerate() {
                    if self.envs[e].skip.is_some() || failed[si].is_some() || wskip(e).is_some() {
                        continue;
                    }
                    if sys::interrupted() {
                        bail!("interrupted");
                    }
                    let label = match load {
                        Load::Quiet => self.envs[e].name.clone(),
                        Load::Loaded => format!("{}/loaded", self.envs[e].name),
                    };
                    let mut result = self.measure(w, e, round, load);
                    if let Err(first) = &result {
                        if !sys::interrupted() {
                            // One retry, so that a single flaky start does not drop a runtime
                            // from a workload; every retry is listed in the report.
                            let why = tail(&format!("{first:#}"), 300);
                            progress(&format!(
                                "  {label} failed in {w} round {}, retrying once: {why}",
                                round + 1
                            ));
                            self.retries
                                .push(format!("{w}, {label}, round {}: {why}", round + 1));
                            result = self.measure(w, e, round, load);
                        }
                    }
                    match result {
                        Ok(figs) => {
                            let shown: Vec<String> = figs
                                .iter()
                                .map(|(m, v)| {
                                    if figs.len() > 1 {
                                        format!("{m}={}", crate::svg::fmt_num(*v))
                                    } else {
                                        crate::svg::fmt_num(*v)
                                    }
                                })
                                .collect();
                            line.push_str(&format!(" {label} {}", shown.join("/")));
                            if round >= warm {
                                for (mi, (m, _, _)) in ms.iter().enumerate() {
                                    if let Some((_, v)) = figs.iter().find(|(n, _)| n == m) {
                                        values[si][mi].push(*v);
                                    }
                                }
                            }
                        }
                        Err(err) => {
                            if sys::interrupted() {
                                bail!("interrupted");
                            }
                            let reason =
                                format!("round {}: {}", round + 1, tail(&format!("{err:#}"), 400));
                            line.push_str(&format!(" {label} FAILED"));
                            progress(&format!("  {label} failed in {w}: {reason}"));
                            failed[si] = Some(reason);
                        }
                    }
                }
                progress(&format!("{line}  ({:.0} s)", t0.elapsed().as_secs_f64()));
            }
            let unit_of = |m: &str| {
                ms.iter()
                    .find(|x| x.0 == m)
                    .map(|x| (x.1, x.2))
                    .expect("metric")
            };
            for (si, &(e, load)) in slots.iter().enumerate() {
                for (mi, (m, _, _)) in ms.iter().enumerate() {
                    let (unit, better) = unit_of(m);
                    let (status, reason) =
                        match (&self.envs[e].skip.clone().or(wskip(e)), &failed[si]) {
                            (Some(s), _) => (Status::Skipped, Some(s.clone())),
                            (None, Some(f)) => (Status::Failed, Some(f.clone())),
                            _ => (Status::Ok, None),
                        };
                    cells.push(Cell {
                        workload: w.clone(),
                        runtime: self.envs[e].name.clone(),
                        metric: m.to_string(),
                        unit: unit.to_string(),
                        better,
                        load,
                        values: values[si][mi].clone(),
                        status,
                        reason,
                    });
                }
            }
            done.push(w.clone());
            // Write after every workload, so an interrupted run still leaves what it measured.
            self.write_outputs(&cells, &done)?;
        }
        let records = self.write_outputs(&cells, &done)?;
        progress(&format!(
            "\nwrote {}/results.json, report.md and plots ({:.0} s)\n",
            self.opt.out.display(),
            self.started.elapsed().as_secs_f64()
        ));
        eprintln!("{}", crate::report::summary_tables(&records));
        if let Some(t) = crate::targets::targets_table(&records) {
            eprintln!("Targets (ratio oriented so that above 1 is better for porta):\n\n{t}");
        }
        Ok(records)
    }

    /// Removes every container, process, cgroup and temporary file this invocation made.
    pub fn cleanup(&mut self) {
        for (e, id) in std::mem::take(&mut self.live) {
            let dir = self.bundles.join(&id);
            let _ = fs::create_dir_all(&dir);
            let _ = self.step(e, &["kill", &id, "KILL"], &dir);
            let _ = self.step(e, &["delete", "--force", &id], &dir);
            self.release_root(e, &dir);
        }
        // fuse-overlayfs roots whose container never existed (or was already forgotten).
        for merged in self.fuse_daemons.keys().cloned().collect::<Vec<_>>() {
            self.unmount_fuse(&merged);
        }
        for p in std::mem::take(&mut self.native_pids) {
            sys::kill_pid(p, libc::SIGKILL);
        }
        // Anything still left under the harness (the subreaper) is a leftover: kill and reap.
        let me = std::process::id() as i32;
        for _ in 0..3 {
            let left = sys::descendants(me);
            if left.is_empty() {
                break;
            }
            for p in left {
                sys::kill_pid(p, libc::SIGKILL);
            }
            std::thread::sleep(Duration::from_millis(200));
            sys::reap_zombies();
        }
        // cgroups: every hierarchy, our parent directory, deepest first.
        if let Ok(rd) = fs::read_dir("/sys/fs/cgroup") {
            for h in rd.flatten() {
                let parent = h.path().join(&self.cgroup_parent);
                if parent.is_dir() {
                    remove_cgroup_tree(&parent);
                }
            }
        }
        if let (Some(s), true) = (&self.scratch, self.opt.keep) {
            progress(&format!(
                "kept {} (the scratch file system stays mounted there; its image is {})",
                self.work.display(),
                s.image().display()
            ));
        } else if let Some(s) = self.scratch.take() {
            progress(&format!(
                "removing the scratch file system on {} ...",
                s.mount().display()
            ));
            match s.remove() {
                Ok(()) => {
                    let _ = fs::remove_dir(&self.work);
                }
                Err(e) => progress(&format!("warning: {e:#}")),
            }
        } else if self.opt.keep {
            progress(&format!("kept {}", self.work.display()));
        } else if self.work.exists() {
            progress(&format!("removing {} ...", self.work.display()));
            if let Err(e) = fs::remove_dir_all(&self.work) {
                progress(&format!(
                    "warning: could not remove {}: {e}",
                    self.work.display()
                ));
            }
        }
        let _ = std::io::stderr().flush();
    }
}

/// The workloads `--only` names, in run order (all when empty). A name is a workload, or a
/// metric that only one workload has (`reopen` selects `smallio`, `cold` `stat-tree`).
pub fn select_workloads(only: &[String]) -> Result<Vec<String>> {
    let mut want: Vec<&str> = Vec::new();
    for o in only {
        if let Some(w) = WORKLOADS
            .iter()
            .chain(OPT_IN_WORKLOADS)
            .find(|w| **w == o.as_str())
        {
            want.push(w);
            continue;
        }
        let owners: Vec<&str> = WORKLOADS
            .iter()
            .copied()
            .filter(|w| metrics(w).iter().any(|m| m.0 == o.as_str()))
            .collect();
        match owners.as_slice() {
            [w] => want.push(w),
            [] => bail!(
                "unknown workload {o:?} (known: {}, and when named: {}; or a metric of exactly one of them, e.g. reopen)",
                WORKLOADS.join(","),
                OPT_IN_WORKLOADS.join(",")
            ),
            many => bail!(
                "{o:?} is a metric of several workloads ({}): name the workload",
                many.join(", ")
            ),
        }
    }
    Ok(WORKLOADS
        .iter()
        .filter(|w| want.is_empty() || want.contains(w))
        .chain(OPT_IN_WORKLOADS.iter().filter(|w| want.contains(w)))
        .map(|s| s.to_string())
        .collect())
}

/// The directory, next to a `--docs` page, that its plots go to: `bench` for
/// `benchmarks.md`, `bench-<stem>` for any other page (so that a partial run written to
/// its own page leaves the full report's plots alone).
pub fn plots_dir_name(doc: &Path) -> String {
    match doc.file_stem().and_then(|s| s.to_str()) {
        None | Some("benchmarks") => "bench".into(),
        Some(stem) => format!("bench-{stem}"),
    }
}

/// The host's side of `host-change`: for each `i`, waits until the container's ready file
/// `r<i>` is in `dir`, reads the clock and creates `f<i>`. Returns the creation times (ns
/// since the epoch). Ends early, with an error, when `stop` is set (the container ended).
fn host_side(dir: &Path, n: usize, stop: &std::sync::atomic::AtomicBool) -> Result<Vec<u128>> {
    let mut made = Vec::with_capacity(n);
    for i in 0..n {
        let ready = dir.join(format!("r{i}"));
        while ready.symlink_metadata().is_err() {
            if stop.load(std::sync::atomic::Ordering::SeqCst) {
                bail!("host-change: the container ended before it was ready for change {i}");
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_nanos();
        fs::write(dir.join(format!("f{i}")), b"")
            .with_context(|| format!("host-change: create f{i}"))?;
        made.push(t);
    }
    Ok(made)
}

fn remove_cgroup_tree(dir: &Path) {
    // With /sys/fs/cgroup/unified unmounted in our namespace, crun writes its "unified" files
    // into the plain tmpfs directory underneath (hidden by the cgroup2 mount on the host):
    // remove those as ordinary files.
    // SAFETY: statfs is plain old data; all zeroes is a valid value.
    let mut sf: libc::statfs = unsafe { std::mem::zeroed() };
    let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).unwrap_or_default();
    // SAFETY: valid C string and out-pointer.
    if unsafe { libc::statfs(c.as_ptr(), &mut sf) } == 0 && sf.f_type == libc::TMPFS_MAGIC {
        if let Err(e) = fs::remove_dir_all(dir) {
            progress(&format!("warning: could not remove {}: {e}", dir.display()));
        }
        return;
    }
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                remove_cgroup_tree(&e.path());
            }
        }
    }
    if let Err(e) = fs::remove_dir(dir) {
        progress(&format!(
            "warning: could not remove cgroup {}: {e}",
            dir.display()
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_workload_has_metrics_and_a_description() {
        for w in WORKLOADS {
            assert!(!metrics(w).is_empty(), "{w}");
            assert!(!describe(w, Sizes { quick: false }).is_empty(), "{w}");
        }
        assert_eq!(Sizes { quick: false }.primes_n(), (100_000_000, 5_761_455));
        assert_eq!(Sizes { quick: false }.fsmark_files(true), 5_000);
        assert_eq!(Sizes { quick: false }.tree_files(), 50_000);
        assert_eq!(Sizes { quick: false }.seqio_mib(), 1024);
        assert_eq!(Sizes { quick: false }.smallfiles(), 20_000);
        assert_eq!(Sizes { quick: false }.density(), 20);
    }

    #[test]
    fn plots_of_a_page_other_than_benchmarks_md_go_to_their_own_directory() {
        assert_eq!(plots_dir_name(Path::new("docs/benchmarks.md")), "bench");
        assert_eq!(
            plots_dir_name(Path::new("docs/benchmarks-watcher.md")),
            "bench-benchmarks-watcher"
        );
    }

    #[test]
    fn only_takes_workloads_and_unique_metrics() {
        let v = |x: &[&str]| x.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(select_workloads(&[]).unwrap().len(), WORKLOADS.len());
        assert_eq!(
            select_workloads(&v(&["fsmark-nosync", "reopen", "lifecycle"])).unwrap(),
            v(&["lifecycle", "fsmark-nosync", "smallio"])
        );
        assert_eq!(select_workloads(&v(&["warm"])).unwrap(), v(&["stat-tree"]));
        let e = select_workloads(&v(&["rate"])).unwrap_err().to_string();
        assert!(e.contains("several workloads"), "{e}");
        assert_eq!(
            select_workloads(&v(&["translator-fuse2fs", "primes"])).unwrap(),
            v(&["primes", "translator-fuse2fs"])
        );
        assert!(!select_workloads(&[])
            .unwrap()
            .contains(&"translator-fuse2fs".to_string()));
        let e = select_workloads(&v(&["bogus"])).unwrap_err().to_string();
        assert!(e.contains("unknown workload \"bogus\""), "{e}");
    }

    #[test]
    fn tail_keeps_the_end() {
        assert_eq!(tail("a\nb\n\nc\nd\ne\n", 100), "b / c / d / e");
        assert_eq!(tail("abcdef", 3), "…def");
    }
}
