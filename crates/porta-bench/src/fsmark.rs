//! The real fs_mark (`fsmark-real`): Debian's `/usr/bin/fs_mark` (3.3, package `fsmark`),
//! copied with the shared libraries `ldd` names into the benchmark's root file system so that
//! it runs inside every environment, and the parsing of its report.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Where fs_mark is on the host and in the root file system.
pub const FS_MARK: &str = "/usr/bin/fs_mark";

/// The arguments of one fs_mark run inside the container: `count` files of 10,240 bytes
/// with fs_mark's default 40-byte names in the fresh directory `dir` (fs_mark makes it), one
/// thread, one iteration, no fsync (`-S 0`) or fsync before close (`-S 1`), and `-k` to keep
/// the files (the workload program keeps its files too; the harness removes every run's
/// directory at the end). fs_mark refuses directory paths of 40 bytes or more.
pub fn args(dir: &str, count: usize, sync: bool) -> Result<Vec<String>> {
    if dir.len() >= 40 {
        bail!(
            "fs_mark directory {dir:?} is {} bytes long; fs_mark takes less than 40",
            dir.len()
        );
    }
    Ok([
        FS_MARK,
        "-d",
        dir,
        "-n",
        &count.to_string(),
        "-s",
        "10240",
        "-S",
        if sync { "1" } else { "0" },
        "-L",
        "1",
        "-k",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect())
}

/// Files per second from fs_mark's report: the fourth column of the result line after the
/// `FSUse%        Count         Size    Files/sec     App Overhead` header (one line per
/// iteration; with several, their mean).
pub fn parse_output(out: &str) -> Result<f64> {
    let mut lines = out
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("FSUse%"));
    if lines.next().is_none() {
        bail!("fs_mark: no `FSUse%` header in its output: {out:?}");
    }
    let mut rates = Vec::new();
    for l in lines {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.is_empty() {
            continue;
        }
        if f.len() != 5 || f.iter().any(|x| x.parse::<f64>().is_err()) {
            break;
        }
        let rate: f64 = f[3].parse().context("fs_mark files/sec")?;
        rates.push(rate);
    }
    if rates.is_empty() {
        bail!("fs_mark: no result line after the header: {out:?}");
    }
    Ok(rates.iter().sum::<f64>() / rates.len() as f64)
}

/// The libraries `ldd` lists, as absolute paths (the vDSO, which has none, is left out).
pub fn parse_ldd(out: &str) -> Vec<PathBuf> {
    let mut v = Vec::new();
    for l in out.lines() {
        let l = l.trim();
        let path = match l.split_once("=>") {
            Some((_, rest)) => rest.split_whitespace().next(),
            None => l.split_whitespace().next(),
        };
        if let Some(p) = path.filter(|p| p.starts_with('/')) {
            v.push(PathBuf::from(p));
        }
    }
    v
}

/// Copies fs_mark and its shared libraries into `rootfs` at the same paths. Returns false
/// (nothing copied) when fs_mark is not installed.
pub fn install(rootfs: &Path) -> Result<bool> {
    let bin = Path::new(FS_MARK);
    if !bin.is_file() {
        return Ok(false);
    }
    let out = Command::new("ldd")
        .arg(bin)
        .output()
        .context("running ldd")?;
    if !out.status.success() {
        bail!(
            "ldd {FS_MARK} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let libs = parse_ldd(&String::from_utf8_lossy(&out.stdout));
    if libs.is_empty() {
        bail!("ldd {FS_MARK}: no libraries listed");
    }
    for f in std::iter::once(bin.to_path_buf()).chain(libs) {
        let rel = f.strip_prefix("/").unwrap_or(&f);
        let to = rootfs.join(rel);
        if let Some(d) = to.parent() {
            std::fs::create_dir_all(d).with_context(|| format!("create {}", d.display()))?;
        }
        // fs::copy follows symbolic links: the file lands at the path the loader asks for.
        std::fs::copy(&f, &to)
            .with_context(|| format!("copy {} to {}", f.display(), to.display()))?;
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    const OUT: &str = "
#  /usr/bin/fs_mark  -d  /fsm  -n  200  -s  10240  -S  0  -L  1  -k 
#\tVersion 3.3, 1 thread(s) starting at Mon Dec  7 07:29:42 2026
#\tSync method: NO SYNC: Test does not issue sync() or fsync() calls.
#\tFile names: 40 bytes long, (16 initial bytes of time stamp with 24 random bytes at end of name)
#\tApp overhead is time in microseconds spent in the test not doing file writing related system calls.

FSUse%        Count         Size    Files/sec     App Overhead
    73          200        10240      35323.2              674
";

    #[test]
    fn parses_files_per_second() {
        assert_eq!(parse_output(OUT).unwrap(), 35323.2);
        let two = format!("{OUT}    73          400        10240      25000.0              674\n");
        assert!((parse_output(&two).unwrap() - 30161.6).abs() < 1e-6);
        assert!(parse_output("Must specify at least one directory with -d switch").is_err());
        assert!(
            parse_output("FSUse%        Count         Size    Files/sec     App Overhead\n")
                .is_err()
        );
        assert!(parse_output(
            "FSUse%        Count         Size    Files/sec     App Overhead\nfs_mark: error\n"
        )
        .is_err());
    }

    #[test]
    fn ldd_paths() {
        let out = "\tlinux-vdso.so.1 (0x00007ffd)\n\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f49)\n\t/lib64/ld-linux-x86-64.so.2 (0x00007f49)\n";
        assert_eq!(
            parse_ldd(out),
            vec![
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2")
            ]
        );
        assert!(parse_ldd("\tnot a dynamic executable\n").is_empty());
    }

    #[test]
    fn arguments_mirror_the_workload_program() {
        let a = args("/d", 500, false).unwrap();
        assert_eq!(
            a.join(" "),
            "/usr/bin/fs_mark -d /d -n 500 -s 10240 -S 0 -L 1 -k"
        );
        assert!(args("/d", 200, true).unwrap().join(" ").contains("-S 1"));
        let long = format!("/{}", "x".repeat(39));
        assert!(args(&long, 1, true).is_err());
        assert!(args(&long[1..], 1, true).is_ok());
    }

    #[test]
    fn installs_with_its_libraries() {
        if !Path::new(FS_MARK).is_file() {
            eprintln!("skipped: {FS_MARK} not installed");
            return;
        }
        let d = std::env::temp_dir().join(format!("porta-bench-fsm-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        assert!(install(&d).unwrap());
        assert!(d.join("usr/bin/fs_mark").is_file());
        assert!(std::fs::read_dir(&d).unwrap().count() >= 2, "libraries too");
        std::fs::remove_dir_all(&d).unwrap();
    }
}
