//! The Markdown report writer (`report.md`, and `docs/benchmarks.md` with `--docs`).

use crate::results::{has_load, Better, Load, Record, Status};
use crate::svg::fmt_num;
use serde::{Deserialize, Serialize};
use std::fmt::Write;

/// Facts about the machine and the invocation, written to `machine.json` and the report header.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RunInfo {
    /// When the run started, UTC, RFC 3339.
    pub date_utc: String,
    /// The harness's command line.
    pub command: String,
    /// `quick` or `full`.
    pub mode: String,
    /// Warm-up and counted rounds, in words.
    pub rounds: String,
    /// `uname -srv` and machine.
    pub kernel: String,
    /// The CPU model.
    pub cpu: String,
    /// Logical CPUs.
    pub cpus: usize,
    /// Total memory, MiB.
    pub memory_mib: u64,
    /// The file system that holds the work directory.
    pub work_fs: String,
    /// Wall-clock length of the whole run, seconds.
    pub duration_s: f64,
    /// (runtime, binary and flags, version, status text)
    pub runtimes: Vec<RuntimeInfo>,
    /// Free-form notes on how the environments were run (workarounds etc.).
    pub notes: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
/// One runtime as the report's runtime table shows it.
pub struct RuntimeInfo {
    /// Environment name.
    pub name: String,
    /// Binary and flags.
    pub invocation: String,
    /// Version line.
    pub version: String,
    /// `ok`, or why it was skipped.
    pub status: String,
}

/// `text` with every path under `workspace` written relative to it (`/src/ws/target/x` →
/// `target/x`).
pub fn relative_to(text: &str, workspace: &std::path::Path) -> String {
    let ws = workspace.to_string_lossy();
    let ws = ws.trim_end_matches('/');
    if ws.is_empty() {
        return text.to_string();
    }
    text.replace(&format!("{ws}/"), "")
}

/// Applies [`relative_to`] to every text of `info` that can name a binary or a path.
pub fn relativize_info(info: &mut RunInfo, workspace: &std::path::Path) {
    info.command = relative_to(&info.command, workspace);
    for r in &mut info.runtimes {
        r.invocation = relative_to(&r.invocation, workspace);
        r.status = relative_to(&r.status, workspace);
        r.version = relative_to(&r.version, workspace);
    }
    for n in &mut info.notes {
        *n = relative_to(n, workspace);
    }
}

/// Description of one workload for the report: name and what/how big.
#[derive(Debug, Clone)]
pub struct WorkloadDoc {
    /// Workload name.
    pub name: String,
    /// What it does and how big it is.
    pub description: String,
}

fn cell(r: &Record) -> String {
    match (r.status, r.median) {
        (Status::Ok, Some(m)) => fmt_num(m),
        (Status::Failed, _) => "failed".into(),
        _ => "skipped".into(),
    }
}

fn ratio(x: Option<f64>) -> String {
    x.map(|v| format!("{v:.2}")).unwrap_or_else(|| "–".into())
}

fn table_escape(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

/// The runtimes in the order they first appear in the records.
fn runtimes(records: &[Record]) -> Vec<String> {
    let mut v: Vec<String> = Vec::new();
    for r in records {
        if !v.contains(&r.runtime) {
            v.push(r.runtime.clone());
        }
    }
    v
}

/// The summary table: one row per workload and metric, one column per runtime, each cell the
/// median and, in parentheses, the ratio to native.
pub fn summary_table(records: &[Record]) -> String {
    let rts = runtimes(records);
    let mut s = String::new();
    let _ = write!(s, "| workload | metric | unit |");
    for rt in &rts {
        let _ = write!(s, " {rt} |");
    }
    s.push('\n');
    let _ = write!(s, "|---|---|---|");
    for _ in &rts {
        s.push_str("---:|");
    }
    s.push('\n');
    let mut keys: Vec<(&str, &str)> = Vec::new();
    for r in records {
        if !keys.contains(&(r.workload.as_str(), r.metric.as_str())) {
            keys.push((&r.workload, &r.metric));
        }
    }
    for (w, m) in keys {
        let first = records
            .iter()
            .find(|r| r.workload == w && r.metric == m)
            .expect("key from records");
        let arrow = if first.better == Better::Lower {
            "↓"
        } else {
            "↑"
        };
        let _ = write!(s, "| {w} | {m} {arrow} | {} |", first.unit);
        for rt in &rts {
            match records
                .iter()
                .find(|r| r.workload == w && r.metric == m && &r.runtime == rt)
            {
                Some(r) => match (r.status, r.median, r.ratio_to_native) {
                    (Status::Ok, Some(_), Some(x)) if rt != "native" => {
                        let _ = write!(s, " {} (×{x:.2}) |", cell(r));
                    }
                    _ => {
                        let _ = write!(s, " {} |", cell(r));
                    }
                },
                None => s.push_str(" – |"),
            }
        }
        s.push('\n');
    }
    s
}

/// The pairs compared by [`watcher_table`]: (watcher on, watcher off).
pub const WATCHER_PAIRS: &[(&str, &str)] = &[
    ("porta", "porta-nowatch"),
    ("porta-strict", "porta-strict-nowatch"),
];

/// What the host-change watcher costs: for each workload and metric, the median with the
/// watcher on divided by the median with it off (`run.porta.fs.host-changes=off`),
/// measured in the same run. None when no pair was measured.
pub fn watcher_table(records: &[Record]) -> Option<String> {
    let pairs: Vec<(&str, &str)> = WATCHER_PAIRS.to_vec();
    pair_table(records, &pairs, "on ÷ off")
}

/// This build against the baseline build (`--baseline`): for each Porta environment run by
/// both, the median of this build divided by the baseline's, measured in the same run.
/// None when no baseline environment was measured.
pub fn baseline_table(records: &[Record]) -> Option<String> {
    let mut pairs: Vec<(&str, &str)> = Vec::new();
    for r in records {
        if let Some(inner) = r.runtime.strip_prefix(crate::env::BASELINE_PREFIX) {
            if !pairs.iter().any(|p| p.1 == r.runtime) {
                pairs.push((inner, &r.runtime));
            }
        }
    }
    pair_table(records, &pairs, "this ÷ baseline")
}

/// Medians of pairs of environments side by side with their ratio, one row per workload and
/// metric; only pairs of which both environments were measured. None when no pair was.
fn pair_table(records: &[Record], pairs: &[(&str, &str)], ratio: &str) -> Option<String> {
    let find = |w: &str, m: &str, rt: &str| {
        records
            .iter()
            .find(|r| r.workload == w && r.metric == m && r.runtime == rt)
            .filter(|r| r.status == Status::Ok)
            .and_then(|r| r.median)
    };
    let pairs: Vec<(&str, &str)> = pairs
        .iter()
        .copied()
        .filter(|(on, off)| {
            records.iter().any(|r| r.runtime == *on) && records.iter().any(|r| r.runtime == *off)
        })
        .collect();
    if pairs.is_empty() {
        return None;
    }
    let mut s = String::from("| workload | metric | unit |");
    for (on, off) in &pairs {
        let _ = write!(s, " {on} | {off} | {ratio} |");
    }
    s.push_str("\n|---|---|---|");
    for _ in &pairs {
        s.push_str("---:|---:|---:|");
    }
    s.push('\n');
    let mut keys: Vec<(&str, &str, &str, Better)> = Vec::new();
    for r in records {
        if !keys.iter().any(|k| k.0 == r.workload && k.1 == r.metric) {
            keys.push((&r.workload, &r.metric, &r.unit, r.better));
        }
    }
    for (w, m, unit, better) in keys {
        let arrow = if better == Better::Lower {
            "↓"
        } else {
            "↑"
        };
        let _ = write!(s, "| {w} | {m} {arrow} | {unit} |");
        for (on, off) in &pairs {
            let (a, b) = (find(w, m, on), find(w, m, off));
            let show = |x: Option<f64>| x.map(fmt_num).unwrap_or_else(|| "–".into());
            let r = match (a, b) {
                (Some(a), Some(b)) if b != 0.0 => format!("{:.2}", a / b),
                _ => "–".into(),
            };
            let _ = write!(s, " {} | {} | {r} |", show(a), show(b));
        }
        s.push('\n');
    }
    Some(s)
}

/// The detailed table of one workload; with loaded records (`--load`), a `load` column.
pub fn workload_table(records: &[&Record]) -> String {
    let loaded = records.iter().any(|r| r.load == Load::Loaded);
    let mut s = if loaded {
        String::from("| runtime | load | metric | median | min | max | unit | ×native | ×runc | runs | note |\n|---|---|---|---:|---:|---:|---|---:|---:|---:|---|\n")
    } else {
        String::from("| runtime | metric | median | min | max | unit | ×native | ×runc | runs | note |\n|---|---|---:|---:|---:|---|---:|---:|---:|---|\n")
    };
    for r in records {
        let f = |x: Option<f64>| x.map(fmt_num).unwrap_or_else(|| "–".into());
        let load = if loaded {
            format!(" {} |", r.load.name())
        } else {
            String::new()
        };
        let _ = writeln!(
            s,
            "| {} |{load} {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.runtime,
            r.metric,
            if r.status == Status::Ok {
                f(r.median)
            } else {
                cell(r)
            },
            f(r.min),
            f(r.max),
            r.unit,
            ratio(r.ratio_to_native),
            ratio(r.ratio_to_runc),
            r.runs.len(),
            table_escape(r.reason.as_deref().unwrap_or(""))
        );
    }
    s
}

/// The workload program's fsmark figures beside the real fs_mark's, both from `fsmark-real`
/// (which runs them in pairs, same round and environment), per runtime and load, with
/// program ÷ fs_mark. None unless some pair was measured.
pub fn fsmark_comparison(records: &[Record]) -> Option<String> {
    let med = |m: &str, rt: &str, load: Load| {
        crate::results::reference(records, "fsmark-real", m, rt, load)
    };
    let show = |x: Option<f64>| x.map(fmt_num).unwrap_or_else(|| "–".into());
    let div = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
        _ => "–".into(),
    };
    let mut rows = String::new();
    let mut any = false;
    for load in [Load::Quiet, Load::Loaded] {
        for rt in runtimes(records) {
            let (pn, rn) = (med("program-nosync", &rt, load), med("nosync", &rt, load));
            let (pf, rf) = (med("program-fsync", &rt, load), med("fsync", &rt, load));
            if (pn.is_none() || rn.is_none()) && (pf.is_none() || rf.is_none()) {
                continue;
            }
            any = true;
            let _ = writeln!(
                rows,
                "| {rt} | {} | {} | {} | {} | {} | {} | {} |",
                load.name(),
                show(pn),
                show(rn),
                div(pn, rn),
                show(pf),
                show(rf),
                div(pf, rf)
            );
        }
    }
    any.then(|| format!("| runtime | load | program, nosync | fs_mark -S 0 | program ÷ fs_mark | program, fsync | fs_mark -S 1 | program ÷ fs_mark |\n|---|---|---:|---:|---:|---:|---:|---:|\n{rows}"))
}

/// The records measured under `load`.
pub fn of_load(records: &[Record], load: Load) -> Vec<Record> {
    records.iter().filter(|r| r.load == load).cloned().collect()
}

/// The summary tables: as [`summary_table`] for a run without `--load`; with it, the quiet
/// table and the loaded one, each headed.
pub fn summary_tables(records: &[Record]) -> String {
    if !has_load(records) {
        return summary_table(records);
    }
    format!(
        "Quiet:\n\n{}\nBeside CPU hogs (`--load`; ratios to native under the same load):\n\n{}",
        summary_table(&of_load(records, Load::Quiet)),
        summary_table(&of_load(records, Load::Loaded))
    )
}

/// What to keep in mind when reading the figures (printed after the summary).
pub const CAVEATS: &str = "
### Reading the figures

* Every figure except `lifecycle` and `density` is measured by the workload program itself inside \
the container, so container start-up is not part of it. `lifecycle` for native is a fork + chroot + \
exec of `/bin/true`, a floor rather than a peer: compare container runtimes to runc there.
* `primes` is a segmented sieve that finishes in well under a second; it is the CPU-bound control \
(ratios near 1 are expected) and its spread is scheduling noise of the shared machine.
* `seqio` read: the workload drops the file's pages with `posix_fadvise(DONTNEED)` after the fsync, \
but that only reaches the cache the workload sees. Natively and under runc/crun it is the host's \
page cache; under runsc it is the sandbox's own cache while the host page cache behind its gofer \
stays warm, and a FUSE file server's backing file stays in the host page cache likewise. Read \
figures above native mean \"served from memory\", not a faster disk.
* `stat-tree` cold: the harness writes back and drops the kernel's caches before every run of \
every environment, so the first walk reads the file system's metadata from the disk in all of \
them; a FUSE file server's own node table is also empty then (a fresh container). warm: the \
second walk in the same container. Under a FUSE file server the kernel keeps every node of \
the tree cached (nodes past the server's descriptor budget are kept without a descriptor: \
cold nodes, docs/file-server.md) and directories are listed from the kernel's cache without \
an OPENDIR, so the second walk sends one request per directory: a GETATTR, because the first \
walk's READDIR marked the directory's atime stale (a third walk would send none).
* `smallio` append under a FUSE file server: the first write(2) to a file asks the server \
whether it carries `security.capability` (file_remove_privs); Porta's server takes over \
clearing set-id bits (FUSE_HANDLE_KILLPRIV_V2), so the kernel remembers the answer for the \
following writes until it next refreshes the file's attributes. reopen: each open is one \
round trip (OPEN).
* `fsmark-*`, `smallfile`: on an ext4 without a journal (as this machine's root file system may \
be), allocating an inode skips inodes freed in the last minutes (`recently_deleted`), which makes \
creates right after large deletions slow for every environment alike.
* `fsmark-fsync` depends on the state of the (virtual) disk and its host; rates drift during a run \
and interleaving only spreads the drift evenly.
* `density` host-used is MemTotal − MemFree sampled before and after; other work on the shared \
machine (builds, page cache) moves it by tens of MiB either way, so single runs can be negative \
and only a large, consistent difference means something. The PSS figure is the robust one.
* No ratio is given when the reference median is zero or negative or the median itself is negative.
";

/// What to keep in mind about the loaded figures (printed after [`CAVEATS`] with `--load`).
pub const LOAD_CAVEAT: &str =
    "* Under load (`--load`) a measurement shares the CPUs with the hogs, each hog one \
scheduling entity of its own: a single-threaded workload gets well under half a CPU, and a \
file server, a fuse-overlayfs daemon or a runtime's helper processes compete for the same \
time. Loaded figures spread more than quiet ones; compare environments within one load, not \
a loaded figure with a quiet one.
";

/// The fixed text at the top of docs/benchmarks.md: what the harness does and how to run it.
pub fn docs_preface() -> String {
    "This page is written by `porta-bench --docs docs/benchmarks.md`; the plots are in \
[docs/bench/](bench/). Each workload runs natively and in every runtime on the same busybox root \
file system, with workload programs from `crates/porta-workloads` (one static multi-call binary, \
`porta-workload`) and the real fs_mark. Figures are ratios measured in the same run; absolute \
numbers on a shared machine are noise. What Porta promises about these figures: \
[SPECIFICATION.md](SPECIFICATION.md); the investigations behind them (where the time goes, what \
was tried): [measurements.md](measurements.md).

## Running the harness

As root, from the workspace root (the harness builds the static workload binary itself with \
`cargo build --release -p porta-workloads --target x86_64-unknown-linux-gnu` and \
`RUSTFLAGS=\"-C target-feature=+crt-static\"` into `target/porta-bench-workloads/`, or takes \
`--workload-bin PATH`):

```sh
apt-get install -y runc crun runsc busybox-static fuse-overlayfs fsmark   # peers and fs_mark (Debian 12; scripts/deps.sh)
cargo build --release -p porta                         # the runtime under test
cargo run --release -p porta-bench -- --load --out /tmp/bench --docs docs/benchmarks.md   # full run, quiet and loaded
cargo run --release -p porta-bench -- --quick --out /tmp/quick                     # reduced sizes, quiet only
cargo run --release -p porta-bench -- --quick --load --only fsmark-nosync,reopen,lifecycle \\
    --runtimes native,porta,porta-kernel,runc,runc-fuse-overlayfs --runs 2 --out /tmp/b
cargo run --release -p porta-bench -- --quick --only host-change --runtimes native,porta,porta-nowatch,porta-strict,porta-overlay,runc --out /tmp/hc
```

It writes `results.json` (one record per workload × environment × metric × load: median, \
min, max, the counted runs, ratios to native and runc of the same load; files written before \
`load` existed read as quiet), `machine.json`, `report.md` and one SVG plot per workload. Paths \
inside the workspace (the porta binary, `--porta`, `--baseline`) are written relative to it.

**Environments** (`--runtimes`, default all but the last): `native` (a chroot into the same \
root), `porta` (passthrough), `porta-strict` (`run.porta.fs.passthrough=off`), each also with \
its host-change watcher off (`porta-nowatch`, `porta-strict-nowatch`: annotation \
`run.porta.fs.host-changes=off`) to measure what the watcher costs, `porta-kernel` \
(`run.porta.fs=kernel`: no file server), `runc`, `runc-fuse-overlayfs`, `crun`, `runsc`; and, \
only when named, `porta-overlay`: porta on an overlay root the harness mounts per container \
(lower layer the shared root, `nfs_export=off`), where no fanotify mark can be had and the \
servers fall back to 1-second timeouts. `runc-fuse-overlayfs` is the FUSE peer users know, \
rootless Podman's classic root: for each container the harness runs `fuse-overlayfs -o \
lowerdir=<shared root>,upperdir=B/upper,workdir=B/work B/merged` in the bundle directory B and \
gives runc `root.path` = `B/merged`; after the container is deleted (and on every error path) \
it unmounts it, waits for the fuse-overlayfs daemon to exit and reaps it (the harness is the \
child subreaper), and removes B. It is skipped, with the reason in the report, when runc or \
fuse-overlayfs is missing.

**`--load`**: every workload is measured twice per round in every environment, quiet and then \
beside CPU hogs: two busy loops per online CPU, processes the harness forks at nice 0, each in \
a session of its own (so that, with the scheduler's autogroups, each hog competes as one \
scheduling entity, as a container's cgroup, a fuse-overlayfs daemon or the harness's own \
session does). They are started right before each loaded measurement and killed and reaped \
right after it, also when it fails or on Ctrl-C, and they carry `PR_SET_PDEATHSIG`, so none \
outlives the harness even if it is killed. The report then has a second summary table (under \
load), a `load` column in the workload tables, and two bars per environment in the plots \
(solid: quiet, light: under load).

**Targets**: the summary ends with a table of the bounds Porta is held to (issue 18), each \
a ratio of `porta` to a reference measured in the same run and under the same load: \
fsmark-nosync ≥ 0.30, fsmark-fsync ≥ 0.65, smallio reopen ≥ 0.12, smallfile ≥ 0.6, seqio write \
and read and stat-tree warm ≥ 0.95 of `porta-kernel`; every file-system metric ≥ 2 × `runsc` \
and ≥ 1.5 × `runc-fuse-overlayfs`; lifecycle ≤ `crun` quiet and ≤ `runc` under load. The ratio \
is oriented so that above 1 is better for porta: porta ÷ reference for rates, reference ÷ \
porta for times. A target over several metrics shows the smallest ratio and its metric; one \
whose environments were not in the run says \"not measured\".

**fs_mark** (`fsmark-real`): Debian's `/usr/bin/fs_mark` (3.3, package `fsmark`) is copied \
with the shared libraries `ldd` lists into the root file system, so it runs unchanged in every \
environment (its source is not built here). Each round runs `fs_mark -d DIR -n N -s 10240 -S 0 \
-L 1 -k` and `-S 1` (N as in fsmark-nosync and fsmark-fsync; fs_mark takes directory paths \
shorter than 40 bytes) and, paired with each in the same round and environment, the workload \
program's fsmark of the same size, the order alternating by round; the report compares the two \
in \"fs_mark against the workload program\". The workload program mirrors fs_mark's system \
calls per file, as `strace -f -c` of both showed (200 files, `-S 1`): fs_mark makes, per file, \
`mkdir(DIR)` (failing with EEXIST: it re-creates its directory before every file), \
`openat(O_RDWR|O_CREAT|O_TRUNC, 0666)`, one `write` of 10,240 bytes (its I/O size is 16 KiB), \
`fsync` with `-S 1`, and `close`; the program makes the same five calls (plus O_CLOEXEC on the \
open). Both use 40-byte names in one directory. fs_mark itself forks one worker and keeps a \
log file in its working directory, outside the timed loop. On the host, in five pairs run one \
after the other (2,000 files, no fsync), the two agreed within 20%, the program the faster in \
four of them (19,600–22,900 files/s against 16,400–20,400).

Other options: `--porta PATH` (default `<workspace>/target/release/porta`), `--baseline PATH` \
(a second porta binary, e.g. the build before a change, run by environments named \
`baseline-porta`, `baseline-porta-strict`, … interleaved with the rest; the report then compares \
the two builds), `--only` (workloads, or a metric of exactly one workload: `reopen` selects \
smallio), `--runs N`, `--warmup N`, `--work-dir DIR` (default /var/tmp; the shared root file \
system and all fs workloads live there), `--scratch-fs SIZE` (run on a new ext4 with a journal \
of SIZE, e.g. `8G`: a sparse image file under the work directory, mounted through a loop device \
for this run and removed after it; on a host whose file system is an ext4 without a journal, \
where the inode allocator reads past every inode freed in the last minutes, the fs figures \
otherwise depend on what was deleted before the run), `--keep`. A runtime whose binary is \
missing or whose probe container fails is reported as skipped; a runtime that fails during a workload is \
reported as failed for that workload (and that load) and the run goes on.

".to_string()
}

/// Writes the whole report. `image_prefix` is prepended to `<workload>.svg` in image links.
pub fn render(
    info: &RunInfo,
    records: &[Record],
    docs: &[WorkloadDoc],
    image_prefix: &str,
    preface: &str,
) -> String {
    let mut s = String::new();
    s.push_str("# Porta benchmark report\n\n");
    s.push_str(preface);
    let _ = writeln!(
        s,
        "Run of {} ({} mode; {}; environments interleaved run by run), took {:.0} s.\n\nCommand: `{}`\n",
        info.date_utc, info.mode, info.rounds, info.duration_s, info.command
    );
    s.push_str("## Machine\n\n| | |\n|---|---|\n");
    let _ = writeln!(
        s,
        "| CPU | {} ({} logical CPUs) |",
        table_escape(&info.cpu),
        info.cpus
    );
    let _ = writeln!(s, "| memory | {} MiB |", info.memory_mib);
    let _ = writeln!(s, "| kernel | {} |", table_escape(&info.kernel));
    let _ = writeln!(
        s,
        "| file system of the root file system | {} |",
        table_escape(&info.work_fs)
    );
    s.push_str("\n## Runtimes\n\n| runtime | invocation | version | status |\n|---|---|---|---|\n");
    for r in &info.runtimes {
        let _ = writeln!(
            s,
            "| {} | `{}` | {} | {} |",
            r.name,
            table_escape(&r.invocation),
            table_escape(&r.version),
            table_escape(&r.status)
        );
    }
    if !info.notes.is_empty() {
        s.push_str("\n### How the environments were run\n\n");
        for n in &info.notes {
            let _ = writeln!(s, "* {n}");
        }
    }
    s.push_str("\n## Summary\n\nMedian of the counted runs; in parentheses the ratio to native measured in the same run (↓: lower is better, ↑: higher is better). Absolute numbers on a shared machine are noise; compare ratios.\n\n");
    s.push_str(&summary_tables(records));
    if let Some(t) = crate::targets::targets_table(records) {
        s.push_str("\n### Targets\n\n");
        s.push_str(crate::targets::TARGETS_INTRO);
        s.push_str("\n\n");
        s.push_str(&t);
    }
    if let Some(t) = fsmark_comparison(records) {
        s.push_str("\n### fs_mark against the workload program\n\nThe workload program's fsmark (the program behind `fsmark-nosync` and `fsmark-fsync`) makes the same system calls per file as fs_mark 3.3. `fsmark-real` runs the two in pairs, with the same file count and size, in the same round and environment, in alternating order: medians of files/s and their ratio, per environment and load. A ratio near 1 means the program's figure is fs_mark's.\n\n");
        s.push_str(&t);
    }
    let quiet = of_load(records, Load::Quiet);
    let records_all = records;
    let records = &quiet[..];
    if let Some(t) = watcher_table(records) {
        s.push_str("\n### The host-change watcher: on against off\n\nThe same Porta configuration with its host-change watcher (the default) and without it (annotation `run.porta.fs.host-changes=off`), interleaved in the same run: medians, and their ratio (on ÷ off; for ↑ metrics below 1 means the watcher costs, for ↓ metrics above 1). Differences of a few per cent are within this machine's noise; compare with the spread (min/max) in the workload tables.\n\n");
        s.push_str(&t);
    }
    if let Some(t) = baseline_table(records) {
        s.push_str("\n### This build against the baseline\n\nThe same Porta environments run by this build and by the baseline binary (`--baseline`), interleaved in the same run: medians, and their ratio (this ÷ baseline; for ↑ metrics below 1 means this build is slower, for ↓ metrics above 1). Differences of a few per cent are within this machine's noise; compare with the spread (min/max) in the workload tables.\n\n");
        s.push_str(&t);
    }
    s.push_str(CAVEATS);
    if has_load(records_all) {
        s.push_str(LOAD_CAVEAT);
    }
    s.push_str("\n## Workloads\n");
    let records = records_all;
    let mut names: Vec<&str> = Vec::new();
    for r in records {
        if !names.contains(&r.workload.as_str()) {
            names.push(&r.workload);
        }
    }
    for w in names {
        let _ = writeln!(s, "\n### {w}\n");
        if let Some(d) = docs.iter().find(|d| d.name == w) {
            let _ = writeln!(s, "{}\n", d.description);
        }
        let rows: Vec<&Record> = records.iter().filter(|r| r.workload == w).collect();
        s.push_str(&workload_table(&rows));
        let _ = writeln!(s, "\n![{w}]({image_prefix}{w}.svg)");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::results::{finalize, Cell};

    fn records() -> Vec<Record> {
        let c = |w: &str, rt: &str, v: &[f64], st: Status| Cell {
            workload: w.into(),
            runtime: rt.into(),
            metric: "time".into(),
            unit: "ms".into(),
            better: Better::Lower,
            load: crate::results::Load::Quiet,
            values: v.to_vec(),
            status: st,
            reason: (st != Status::Ok).then(|| "not found: /x/porta | y".into()),
        };
        finalize(&[
            c(
                "lifecycle",
                "native",
                &[1.0, 2.0, 3.0, 4.0, 5.0],
                Status::Ok,
            ),
            c("lifecycle", "porta", &[], Status::Skipped),
            c(
                "lifecycle",
                "runc",
                &[40.0, 50.0, 60.0, 70.0, 80.0],
                Status::Ok,
            ),
            c("primes", "native", &[1.0; 5], Status::Ok),
            c("primes", "porta", &[], Status::Skipped),
            c("primes", "runc", &[1.1; 5], Status::Ok),
        ])
    }

    #[test]
    fn summary_has_every_workload_and_runtime() {
        let t = summary_table(&records());
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 4); // header, rule, 2 rows
        assert_eq!(
            lines[0],
            "| workload | metric | unit | native | porta | runc |"
        );
        assert!(
            lines[2].starts_with("| lifecycle | time ↓ | ms | 3.00 | skipped | 60.0 (×20.00) |"),
            "{}",
            lines[2]
        );
        assert!(lines[3].contains("1.10 (×1.10)"));
    }

    #[test]
    fn watcher_table_divides_on_by_off() {
        let c = |rt: &str, v: f64| Cell {
            workload: "smallio".into(),
            runtime: rt.into(),
            metric: "append".into(),
            unit: "writes/s".into(),
            better: Better::Higher,
            load: crate::results::Load::Quiet,
            values: vec![v],
            status: Status::Ok,
            reason: None,
        };
        let recs = finalize(&[
            c("native", 100.0),
            c("porta", 90.0),
            c("porta-nowatch", 100.0),
        ]);
        let t = watcher_table(&recs).unwrap();
        assert!(
            t.contains("| smallio | append ↑ | writes/s | 90.0 | 100 | 0.90 |"),
            "{t}"
        );
        assert!(!t.contains("porta-strict"), "{t}");
        assert!(watcher_table(&finalize(&[c("native", 1.0), c("porta", 1.0)])).is_none());
        assert!(baseline_table(&finalize(&[c("porta", 1.0)])).is_none());
        let b = baseline_table(&finalize(&[c("porta", 90.0), c("baseline-porta", 60.0)])).unwrap();
        assert!(
            b.contains("| porta | baseline-porta | this ÷ baseline |"),
            "{b}"
        );
        assert!(b.contains("| 1.50 |"), "{b}");
    }

    #[test]
    fn loaded_figures_get_their_own_summary_and_column() {
        let mut cells = Vec::new();
        for (load, v) in [(Load::Quiet, 2.0), (Load::Loaded, 8.0)] {
            for (rt, f) in [("native", 1.0), ("runc", 3.0)] {
                cells.push(Cell {
                    workload: "lifecycle".into(),
                    runtime: rt.into(),
                    metric: "time".into(),
                    unit: "ms".into(),
                    better: Better::Lower,
                    load,
                    values: vec![v * f],
                    status: Status::Ok,
                    reason: None,
                });
            }
        }
        let recs = finalize(&cells);
        let t = summary_tables(&recs);
        assert!(t.starts_with("Quiet:\n\n| workload |"), "{t}");
        assert!(
            t.contains("| lifecycle | time ↓ | ms | 2.00 | 6.00 (×3.00) |"),
            "{t}"
        );
        assert!(t.contains("Beside CPU hogs"), "{t}");
        assert!(
            t.contains("| lifecycle | time ↓ | ms | 8.00 | 24.0 (×3.00) |"),
            "{t}"
        );
        let md = render(&RunInfo::default(), &recs, &[], "", "");
        assert!(md.contains("| runtime | load | metric |"), "{md}");
        assert!(md.contains("| runc | loaded | time | 24.0 |"), "{md}");
        assert!(md.contains(LOAD_CAVEAT), "{md}");
        // A quiet-only run keeps its old layout.
        let quiet = of_load(&recs, Load::Quiet);
        assert_eq!(summary_tables(&quiet), summary_table(&quiet));
        let quiet_md = render(&RunInfo::default(), &quiet, &[], "", "");
        assert!(!quiet_md.contains("| load |") && !quiet_md.contains(LOAD_CAVEAT));
    }

    #[test]
    fn fs_mark_beside_the_workload_program() {
        let c = |w: &str, m: &str, rt: &str, v: f64| Cell {
            workload: w.into(),
            runtime: rt.into(),
            metric: m.into(),
            unit: "files/s".into(),
            better: Better::Higher,
            load: Load::Quiet,
            values: vec![v],
            status: Status::Ok,
            reason: None,
        };
        let recs = finalize(&[
            c("fsmark-real", "program-nosync", "porta", 900.0),
            c("fsmark-real", "nosync", "porta", 1000.0),
            c("fsmark-real", "fsync", "porta", 100.0),
            c("fsmark-real", "program-nosync", "runc", 5.0),
        ]);
        let t = fsmark_comparison(&recs).unwrap();
        assert!(
            t.contains("| porta | quiet | 900 | 1000 | 0.90 | – | 100 | – |"),
            "{t}"
        );
        assert!(!t.contains("| runc |"), "{t}");
        assert!(render(&RunInfo::default(), &recs, &[], "", "").contains("### fs_mark against"));
        assert!(fsmark_comparison(&records()).is_none());
    }

    #[test]
    fn paths_in_the_workspace_are_relative() {
        let ws = std::path::Path::new("/work/wt");
        assert_eq!(
            relative_to("/work/wt/target/release/porta --root STATE", ws),
            "target/release/porta --root STATE"
        );
        assert_eq!(relative_to("/usr/sbin/runc", ws), "/usr/sbin/runc");
        assert_eq!(relative_to("/work/wt2/x", ws), "/work/wt2/x");
        let mut info = RunInfo {
            command: "porta-bench --porta /work/wt/target/release/porta".into(),
            runtimes: vec![RuntimeInfo {
                name: "porta".into(),
                invocation: "/work/wt/target/release/porta --root STATE run".into(),
                version: "v".into(),
                status: "skipped: porta: binary /work/wt/target/release/porta not found".into(),
            }],
            notes: vec!["built in /work/wt/target/x".into()],
            ..Default::default()
        };
        relativize_info(&mut info, std::path::Path::new("/work/wt/"));
        let md = render(&info, &records(), &[], "", "");
        assert!(!md.contains("/work/wt"), "{md}");
        assert!(
            md.contains("`target/release/porta --root STATE run`"),
            "{md}"
        );
        assert!(md.contains("--porta target/release/porta"), "{md}");
    }

    #[test]
    fn full_report() {
        let info = RunInfo {
            date_utc: "2026-11-22T08:00:00Z".into(),
            mode: "quick".into(),
            rounds: "1 warm-up, 5 counted".into(),
            ..Default::default()
        };
        let docs = vec![WorkloadDoc {
            name: "primes".into(),
            description: "Count primes.".into(),
        }];
        let md = render(&info, &records(), &docs, "bench/", "Preface.\n\n");
        assert!(md.starts_with("# Porta benchmark report\n\nPreface."));
        assert!(md.contains("### lifecycle\n"));
        assert!(md.contains("### Reading the figures"));
        assert!(md.contains("### primes\n\nCount primes.\n"));
        assert!(md.contains("![lifecycle](bench/lifecycle.svg)"));
        assert!(md.contains("![primes](bench/primes.svg)"));
        // A reason with a pipe must not break the table.
        assert!(md.contains("not found: /x/porta \\| y"));
        // Each table row has the same number of cells as its header.
        for block in md.split("\n\n").filter(|b| b.starts_with("| runtime |")) {
            let counts: Vec<usize> = block
                .lines()
                .map(|l| l.replace("\\|", "").matches('|').count())
                .collect();
            assert!(counts.iter().all(|&c| c == counts[0]), "{block}");
        }
    }
}
