//! `porta-bench`: runs every workload natively and in porta, porta-strict, porta-kernel, runc,
//! crun and runsc, interleaved run by run, and writes results.json, report.md and SVG plots.

use clap::Parser;
use porta_bench::bench::{Bench, Options};
use porta_bench::sys;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser, Debug)]
#[command(
    name = "porta-bench",
    about = "Benchmark Porta against native, runc, crun and runsc, side by side"
)]
struct Args {
    /// Output directory for results.json, machine.json, report.md and the SVG plots.
    #[arg(long, default_value = "porta-bench-out")]
    out: PathBuf,
    /// Reduced problem sizes (a quarter of an hour for everything on a small machine: the
    /// watcher-off environments spend minutes on host-change, which they fail by design).
    #[arg(long)]
    quick: bool,
    /// Comma-separated workloads to run (default: all); a metric of exactly one workload
    /// names that workload (`reopen`: smallio). `translator-fuse2fs` (fuse2fs on the host
    /// against fuse2fs as a Porta translator; environments native and porta*) runs only
    /// when named: it needs the Debian root of the integration tests, whose first build
    /// downloads packages from deb.debian.org (see docs/benchmarks-translators.md).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Comma-separated environments (default: native,porta,porta-nowatch,porta-strict,
    /// porta-strict-nowatch,porta-kernel,runc,runc-fuse-overlayfs,crun,runsc).
    #[arg(long, value_delimiter = ',')]
    runtimes: Vec<String>,
    /// The porta binary (default: <workspace>/target/release/porta).
    #[arg(long)]
    porta: Option<PathBuf>,
    /// A second porta binary (e.g. the build before a change): environments named
    /// `baseline-<porta environment>` in --runtimes run it, interleaved with the others.
    #[arg(long)]
    baseline: Option<PathBuf>,
    /// The workspace root (default: the one this binary was built from).
    #[arg(long)]
    workspace: Option<PathBuf>,
    /// A prebuilt static porta-workload binary (default: build it with cargo).
    #[arg(long)]
    workload_bin: Option<PathBuf>,
    /// Where the root file system and state directories are made (a disk-backed file system).
    #[arg(long, default_value = "/var/tmp")]
    work_dir: PathBuf,
    /// Run on a new ext4 with a journal of SIZE (e.g. 8G; a sparse image file under
    /// --work-dir, mounted through a loop device), made for this run and removed after it.
    #[arg(long, value_name = "SIZE")]
    scratch_fs: Option<String>,
    /// Counted runs per environment (default 5; lifecycle 10 in full mode).
    #[arg(long)]
    runs: Option<usize>,
    /// Warm-up rounds (default 1; lifecycle 2 in full mode; density 0).
    #[arg(long)]
    warmup: Option<usize>,
    /// Keep the work directory for inspection.
    #[arg(long)]
    keep: bool,
    /// Leave the read-only /sys/fs/cgroup mount of `runc spec` out of every config.json (all
    /// environments alike), for runtimes that cannot mount it yet.
    #[arg(long)]
    no_cgroup_mount: bool,
    /// Measure every workload twice per round in each environment: quiet, then beside CPU
    /// hogs (two busy loops per online CPU, nice 0, started right before and killed right
    /// after each loaded measurement). The report shows both side by side.
    #[arg(long)]
    load: bool,
    /// Also write this Markdown page (e.g. docs/benchmarks.md) with the plots in `bench/` next to
    /// it (for another page name, e.g. docs/benchmarks-watcher.md, in `bench-<name>/`).
    #[arg(long)]
    docs: Option<PathBuf>,
    /// Internal (translator-fuse2fs): copy the Debian root of the integration tests to DIR,
    /// building it first if needed, and exit. Run in a child process of the harness.
    #[arg(long, hide = true, value_name = "DIR")]
    install_debian_root: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if !porta_sys::user::is_root() {
        eprintln!("porta-bench: must run as root (it runs OCI runtimes)");
        return ExitCode::from(2);
    }
    if let Some(dir) = &args.install_debian_root {
        // A panic here (the builder's way of failing) aborts this child process only.
        return match porta_integration::debian::install(dir, true) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!(
                    "porta-bench: copying the Debian root to {}: {e}",
                    dir.display()
                );
                ExitCode::FAILURE
            }
        };
    }
    // Before any thread exists: unshare needs a single-threaded process.
    let ns_note = match sys::enter_private_mount_namespace() {
        Ok(n) => n,
        Err(e) => {
            eprintln!("porta-bench: {e:#}");
            return ExitCode::from(2);
        }
    };
    sys::install_signal_handlers();
    if let Err(e) = sys::set_child_subreaper() {
        eprintln!("porta-bench: {e:#}");
        return ExitCode::from(2);
    }
    let workspace = args
        .workspace
        .clone()
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../..")));
    let workspace = std::fs::canonicalize(&workspace).unwrap_or(workspace);
    let runtimes = if args.runtimes.is_empty() {
        porta_bench::env::ALL
            .iter()
            .map(|s| s.to_string())
            .collect()
    } else {
        args.runtimes.clone()
    };
    if args.runs == Some(0) {
        eprintln!("porta-bench: --runs must be at least 1");
        return ExitCode::from(2);
    }
    if args.runs.is_some_and(|r| r < 5) {
        eprintln!("porta-bench: warning: fewer than 5 counted runs");
    }
    let opt = Options {
        out: args.out.clone(),
        quick: args.quick,
        only: args.only.clone(),
        runtimes,
        porta: args
            .porta
            .clone()
            .unwrap_or_else(|| workspace.join("target/release/porta")),
        baseline: args.baseline.clone(),
        workspace,
        workload_bin: args.workload_bin.clone(),
        work_dir: args.work_dir.clone(),
        scratch_fs: args.scratch_fs.clone(),
        runs: args.runs,
        warmup: args.warmup,
        keep: args.keep,
        docs: args.docs.clone(),
        no_cgroup_mount: args.no_cgroup_mount,
        load: args.load,
        command_line: std::iter::once("porta-bench".to_string())
            .chain(std::env::args().skip(1))
            .collect::<Vec<_>>()
            .join(" "),
    };
    let mut notes = vec![
        ns_note,
        "runsc runs with `--network=none --platform=ptrace` (its KVM platform hangs on this nested machine; it has no network support here).".to_string(),
        "Every container gets a config.json like `runc spec` writes (ociVersion 1.0.2-dev, which crun 1.8.1 requires to be 1.0.x), with a writable root (the shared busybox root file system), no terminal, and cgroupsPath /porta-bench-PID/ID (removed afterwards). Each runtime has its own --root state directory.".to_string(),
        "The harness is the child subreaper, so processes runtimes leave running are reparented to it: it measures them (density) and reaps or kills them at the end.".to_string(),
    ];
    if args.no_cgroup_mount {
        notes.push("--no-cgroup-mount: the read-only `/sys/fs/cgroup` mount of `runc spec` is left out of every config.json, for every environment alike (porta's container init cannot mount it yet: \"remount ... MS_RDONLY|MS_NOSUID|MS_NODEV|MS_NOEXEC|MS_RELATIME: Invalid argument\"); the workloads do not use it.".to_string());
    }
    if args.load {
        let cpus = sys::online_cpus();
        notes.push(format!("--load: every workload is measured twice per round in each environment, quiet and then beside {} CPU hogs (two busy loops per online CPU, {cpus} online; processes forked by the harness at nice 0, in the harness's cgroup, each in a session of its own, so that with the scheduler's autogroups each hog is one scheduling entity of the same weight as a container's cgroup, the harness's own session (native runs there) or a fuse-overlayfs daemon's session; started right before each loaded measurement, killed and reaped right after it). Ratios compare figures of the same load.", porta_bench::bench::hog_count(cpus)));
    }
    let mut bench = match Bench::new(opt, notes) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("porta-bench: {e:#}");
            return ExitCode::from(2);
        }
    };
    let r = bench.run();
    bench.cleanup();
    match r {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("porta-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}
