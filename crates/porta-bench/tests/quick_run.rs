//! Integration test: `porta-bench --quick --only lifecycle,primes --runtimes native,porta`
//! and checks of results.json. Needs root (it runs containers); skipped otherwise. Asserts no
//! timing, only the shape and consistency of what was written.

use porta_bench::results::{validate, Load, Record, Status};
use std::path::PathBuf;
use std::process::Command;

#[test]
fn quick_lifecycle_and_primes_native_and_porta() {
    if !porta_sys::user::is_root() {
        eprintln!("skipped: porta-bench needs root");
        return;
    }
    let out = std::env::temp_dir().join(format!("porta-bench-it-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_porta-bench"));
    cmd.args([
        "--quick",
        "--only",
        "lifecycle,primes",
        "--runtimes",
        "native,porta",
        "--out",
    ])
    .arg(&out);
    if let Some(p) = std::env::var_os("PORTA_BIN") {
        cmd.arg("--porta").arg(p);
    }
    let output = cmd.output().expect("run porta-bench");
    let stderr = String::from_utf8_lossy(&output.stderr);
    eprintln!("{stderr}");
    assert!(
        output.status.success(),
        "porta-bench failed: {}",
        output.status
    );

    let text = std::fs::read_to_string(out.join("results.json")).expect("results.json");
    // The top level is a plain list of objects with the required fields.
    let raw: serde_json::Value = serde_json::from_str(&text).unwrap();
    let list = raw.as_array().expect("results.json is a list");
    for o in list {
        for k in [
            "workload",
            "runtime",
            "metric",
            "unit",
            "median",
            "min",
            "max",
            "runs",
            "ratio_to_native",
            "ratio_to_runc",
        ] {
            assert!(o.get(k).is_some(), "field {k} missing in {o}");
        }
    }
    let recs: Vec<Record> = serde_json::from_str(&text).unwrap();
    validate(&recs).unwrap();
    assert_eq!(
        recs.len(),
        4,
        "lifecycle and primes × native and porta: {recs:#?}"
    );

    for w in ["lifecycle", "primes"] {
        let native = recs
            .iter()
            .find(|r| r.workload == w && r.runtime == "native")
            .expect("native row");
        assert_eq!(native.status, Status::Ok, "{native:?}");
        assert!(native.runs.len() >= 5, "at least 5 counted runs");
        assert_eq!(native.ratio_to_native, Some(1.0));
        assert_eq!(
            native.ratio_to_runc, None,
            "runc was not measured in this run"
        );
        assert!(native.median.unwrap() > 0.0);

        let porta = recs
            .iter()
            .find(|r| r.workload == w && r.runtime == "porta")
            .expect("porta row");
        match porta.status {
            Status::Ok => {
                assert!(porta.runs.len() >= 5);
                assert!(porta.ratio_to_native.is_some());
            }
            Status::Skipped | Status::Failed => {
                eprintln!(
                    "porta {:?} in {w}: {}",
                    porta.status,
                    porta.reason.as_deref().unwrap_or("")
                );
                assert!(
                    !porta.reason.as_deref().unwrap_or("").is_empty(),
                    "a skip must say why"
                );
                assert!(porta.median.is_none() && porta.ratio_to_native.is_none());
            }
        }
    }
    let report = std::fs::read_to_string(out.join("report.md")).expect("report.md");
    assert!(report.contains("### lifecycle") && report.contains("### primes"));
    for w in ["lifecycle", "primes"] {
        let svg = std::fs::read_to_string(out.join(format!("{w}.svg"))).expect("plot");
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    }
    let machine: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("machine.json")).unwrap()).unwrap();
    assert!(machine["runtimes"]
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["name"] == "porta"));
    // Nothing of the run is left behind: the work directory it announced is gone.
    let work = stderr
        .lines()
        .find_map(|l| l.strip_prefix("porta-bench: work directory "))
        .map(PathBuf::from)
        .expect("work directory announced");
    assert!(!work.exists(), "{} left behind", work.display());
    let _ = std::fs::remove_dir_all(&out);
}

/// `--load` with `runc-fuse-overlayfs`: both loads are recorded for every environment, the
/// report shows both, and nothing is left behind: no hog (a process of the harness binary
/// leading its own session), no fuse-overlayfs daemon or mount of the run, no cgroup, no work
/// directory.
#[test]
fn load_and_runc_fuse_overlayfs_leave_nothing_behind() {
    if !porta_sys::user::is_root() {
        eprintln!("skipped: porta-bench needs root");
        return;
    }
    let in_path = |b: &str| {
        std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join(b).is_file()))
            .unwrap_or(false)
    };
    if !in_path("runc") || !in_path("fuse-overlayfs") {
        eprintln!("skipped: runc or fuse-overlayfs not installed");
        return;
    }
    let out = std::env::temp_dir().join(format!("porta-bench-it-load-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let bin = env!("CARGO_BIN_EXE_porta-bench");
    let output = Command::new(bin)
        .args([
            "--quick",
            "--load",
            "--only",
            "lifecycle",
            "--runtimes",
            "native,runc-fuse-overlayfs",
            "--runs",
            "2",
            "--warmup",
            "0",
            "--out",
        ])
        .arg(&out)
        .output()
        .expect("run porta-bench");
    let stderr = String::from_utf8_lossy(&output.stderr);
    eprintln!("{stderr}");
    assert!(
        output.status.success(),
        "porta-bench failed: {}",
        output.status
    );
    let recs: Vec<Record> =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    validate(&recs).unwrap();
    assert_eq!(recs.len(), 4, "2 environments × 2 loads: {recs:#?}");
    for rt in ["native", "runc-fuse-overlayfs"] {
        for load in [Load::Quiet, Load::Loaded] {
            let r = recs
                .iter()
                .find(|r| r.runtime == rt && r.load == load)
                .unwrap_or_else(|| panic!("{rt} {load:?} missing"));
            assert_eq!(r.status, Status::Ok, "{r:?}");
            assert_eq!(r.runs.len(), 2);
        }
    }
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(report.contains("Beside CPU hogs"), "{report}");
    assert!(
        report.contains("| runc-fuse-overlayfs | loaded | time |"),
        "{report}"
    );
    assert!(
        report.contains("fuse-overlayfs -o lowerdir=ROOTFS"),
        "{report}"
    );

    let work = stderr
        .lines()
        .find_map(|l| l.strip_prefix("porta-bench: work directory "))
        .map(PathBuf::from)
        .expect("work directory announced");
    assert!(!work.exists(), "{} left behind", work.display());
    let work_s = work.to_string_lossy().to_string();
    let exe = std::fs::canonicalize(bin).unwrap();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        assert!(
            !cmdline.contains(&work_s),
            "process {pid} of the run left: {cmdline}"
        );
        // SAFETY: getsid only reads.
        let sid = unsafe { libc::getsid(pid) };
        if sid == pid && std::fs::read_link(e.path().join("exe")).ok().as_ref() == Some(&exe) {
            panic!("a CPU hog (pid {pid}) outlived the harness");
        }
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(&work_s),
        "a mount of the run is left: {mounts}"
    );
    let cg = work.file_name().unwrap().to_string_lossy().to_string();
    for h in std::fs::read_dir("/sys/fs/cgroup").unwrap().flatten() {
        assert!(
            !h.path().join(&cg).exists(),
            "cgroup {cg} left in {:?}",
            h.path()
        );
    }
    let _ = std::fs::remove_dir_all(&out);
}

/// `translator-fuse2fs` (opt-in) in native (fuse2fs on the host), porta (fuse2fs as a
/// translator) and porta-memfs (the built-in memfs as the translator, filled by the probe),
/// one counted run each, with runc named to check it is skipped with a reason:
/// every latency metric is measured in both, the request counts (when the kernel can trace
/// FUSE requests) show at least one request per cold stat, and nothing is left behind — no
/// fuse2fs, mount, container process or work directory of the run. Asserts no timing. The
/// Debian root is built on first use (network to deb.debian.org), as for the translator
/// integration tests.
#[test]
fn translator_fuse2fs_native_and_porta() {
    if !porta_sys::user::is_root() {
        eprintln!("skipped: porta-bench needs root");
        return;
    }
    let out = std::env::temp_dir().join(format!("porta-bench-it-trans-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_porta-bench"));
    cmd.args([
        "--quick",
        "--only",
        "translator-fuse2fs",
        "--runtimes",
        "native,porta,porta-memfs,runc",
        "--runs",
        "1",
        "--warmup",
        "0",
        "--out",
    ])
    .arg(&out);
    if let Some(p) = std::env::var_os("PORTA_BIN") {
        cmd.arg("--porta").arg(p);
    }
    let output = cmd.output().expect("run porta-bench");
    let stderr = String::from_utf8_lossy(&output.stderr);
    eprintln!("{stderr}");
    assert!(
        output.status.success(),
        "porta-bench failed: {}",
        output.status
    );
    let recs: Vec<Record> =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    validate(&recs).unwrap();
    let get = |rt: &str, m: &str| {
        recs.iter()
            .find(|r| r.runtime == rt && r.metric == m && r.workload == "translator-fuse2fs")
            .unwrap_or_else(|| panic!("no {rt} {m} in {recs:#?}"))
    };
    for m in [
        "stat-cold-p50",
        "stat-hot-p90",
        "read-small-p50",
        "read-large",
        "create-p50",
        "ref-stat-p50",
    ] {
        for rt in ["native", "porta", "porta-memfs"] {
            let r = get(rt, m);
            assert_eq!(r.status, Status::Ok, "{r:?}");
            assert_eq!(r.runs.len(), 1);
            assert!(r.median.unwrap() > 0.0, "{r:?}");
        }
        let runc = get("runc", m);
        assert_eq!(runc.status, Status::Skipped, "{runc:?}");
        assert!(
            runc.reason
                .as_deref()
                .unwrap_or("")
                .contains("translators are Porta's"),
            "{runc:?}"
        );
    }
    if recs.iter().any(|r| r.metric == "req/stat-cold") {
        for rt in ["native", "porta"] {
            let r = get(rt, "req/stat-cold");
            assert!(
                r.median.unwrap() >= 1.0,
                "a cold stat is a FUSE request: {r:?}"
            );
        }
        // The reference directory is plain host ext4 natively, Porta's file server inside.
        assert_eq!(get("native", "req/ref-stat").median, Some(0.0));
        assert!(get("porta", "req/ref-stat").median.unwrap() >= 1.0);
    }
    let work = stderr
        .lines()
        .find_map(|l| l.strip_prefix("porta-bench: work directory "))
        .map(PathBuf::from)
        .expect("work directory announced");
    assert!(!work.exists(), "{} left behind", work.display());
    let work_s = work.to_string_lossy().to_string();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        assert!(
            !cmdline.contains(&work_s) && !cmdline.contains("/bench/img.ext4"),
            "process {:?} of the run left: {cmdline}",
            e.file_name()
        );
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(&work_s),
        "a mount of the run is left: {mounts}"
    );
    let _ = std::fs::remove_dir_all(&out);
}
