//! `porta-translator-probe DIR FILES CREATE_DIR CREATES [REF_DIR]`: the measuring side of the
//! `translator-fuse2fs` workload, run on the host against a fuse2fs mount and inside a
//! Porta container against fuse2fs attached as a translator (the same binary, the same
//! image). DIR is the file system's root; it must hold `files/f00000` … (at least FILES
//! files of [`SMALL`] bytes each) and `big.bin`. Each operation is timed on its own:
//!
//! 1. `stat-cold`: `lstat` of `files/f<i>`, i < FILES, names never looked up before on
//!    this mount (`files` itself is looked up first, untimed);
//! 2. `stat-hot`: the same names again, right after;
//! 3. `read-small`: open + read (until end of file) + close of each of those files;
//! 4. `read-large`: one sequential read of `big.bin` in 1 MiB blocks (MB/s);
//! 5. `create`: in the new directory `CREATE_DIR` (relative to DIR, made untimed),
//!    CREATES files, each open(O_CREAT|O_EXCL) + one write of [`SMALL`] bytes + close;
//! 6. `ref-stat` (with REF_DIR, a plain directory outside DIR holding `f00000` … like
//!    `files`): `lstat` of FILES names there, never looked up before by this process,
//!    the reference: in a Porta container, the root's own file server answering directly.
//!
//! `porta-translator-probe --populate DIR FILES MIB` makes those files in DIR instead (for
//! a translator that starts empty, `porta:memfs`): `files/f00000` … of [`SMALL`] bytes and
//! a `big.bin` of MIB MiB.
//!
//! It prints `DEV <major>:<minor>` of DIR, `PHASE <name> <start> <end>` (CLOCK_MONOTONIC,
//! ns) around each phase, and `RESULT <metric> <value> <unit>` lines: the median and 90th
//! percentile of each phase's operations (µs) and the read-large rate. Only std and libc:
//! it runs in the Debian root, linked against its glibc.

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

/// Size of each small file and of each created file.
const SMALL: usize = 1024;

fn monotonic_ns() -> u128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes only into `ts`, a valid timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u128 * 1_000_000_000 + ts.tv_nsec as u128
}

/// The value below which `p` percent of `sorted` lie (nearest rank).
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Times `op` once per index; prints the phase's window and its p50 and p90 (µs).
fn phase(
    name: &str,
    n: usize,
    mut op: impl FnMut(usize) -> Result<(), String>,
) -> Result<(), String> {
    let mut lat = Vec::with_capacity(n);
    let start = monotonic_ns();
    for i in 0..n {
        let t = Instant::now();
        op(i).map_err(|e| format!("{name} #{i}: {e}"))?;
        lat.push(t.elapsed().as_secs_f64() * 1e6);
    }
    let end = monotonic_ns();
    println!("PHASE {name} {start} {end}");
    lat.sort_by(f64::total_cmp);
    println!("RESULT {name}-p50 {:.3} µs", percentile(&lat, 50.0));
    println!("RESULT {name}-p90 {:.3} µs", percentile(&lat, 90.0));
    Ok(())
}

fn run(
    dir: &Path,
    files: usize,
    create_dir: &str,
    creates: usize,
    ref_dir: Option<&Path>,
) -> Result<(), String> {
    let md = fs::metadata(dir).map_err(|e| format!("stat {}: {e}", dir.display()))?;
    let dev = md.dev();
    println!("DEV {}:{}", libc::major(dev), libc::minor(dev));
    let fdir = dir.join("files");
    fs::metadata(&fdir).map_err(|e| format!("stat {}: {e}", fdir.display()))?;
    let names: Vec<_> = (0..files).map(|i| fdir.join(format!("f{i:05}"))).collect();
    let stat = |i: usize| -> Result<(), String> {
        let m = fs::symlink_metadata(&names[i]).map_err(|e| e.to_string())?;
        if m.len() != SMALL as u64 {
            return Err(format!("{} bytes, expected {SMALL}", m.len()));
        }
        Ok(())
    };
    phase("stat-cold", files, stat)?;
    phase("stat-hot", files, stat)?;
    let mut buf = vec![0u8; 64 * 1024];
    phase("read-small", files, |i| {
        let mut f = fs::File::open(&names[i]).map_err(|e| e.to_string())?;
        let mut got = 0;
        loop {
            let k = f.read(&mut buf).map_err(|e| e.to_string())?;
            if k == 0 {
                break;
            }
            got += k;
        }
        if got != SMALL {
            return Err(format!("read {got} bytes, expected {SMALL}"));
        }
        Ok(())
    })?;

    let big = dir.join("big.bin");
    let mut block = vec![0u8; 1 << 20];
    let start = monotonic_ns();
    let t = Instant::now();
    let mut f = fs::File::open(&big).map_err(|e| format!("open {}: {e}", big.display()))?;
    let mut total = 0usize;
    loop {
        let k = f
            .read(&mut block)
            .map_err(|e| format!("read {}: {e}", big.display()))?;
        if k == 0 {
            break;
        }
        total += k;
    }
    drop(f);
    let secs = t.elapsed().as_secs_f64();
    println!("PHASE read-large {start} {}", monotonic_ns());
    if total == 0 {
        return Err(format!("{} is empty", big.display()));
    }
    println!("RESULT read-large {:.3} MB/s", total as f64 / 1e6 / secs);

    let cdir = dir.join(create_dir);
    fs::create_dir(&cdir).map_err(|e| format!("mkdir {}: {e}", cdir.display()))?;
    let data = vec![b'c'; SMALL];
    phase("create", creates, |i| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(cdir.join(format!("n{i:05}")))
            .map_err(|e| e.to_string())?;
        f.write_all(&data).map_err(|e| e.to_string())?;
        Ok(())
    })?;
    if let Some(r) = ref_dir {
        let md = fs::metadata(r).map_err(|e| format!("stat {}: {e}", r.display()))?;
        println!("REFDEV {}:{}", libc::major(md.dev()), libc::minor(md.dev()));
        let refs: Vec<_> = (0..files).map(|i| r.join(format!("f{i:05}"))).collect();
        phase("ref-stat", files, |i| {
            let m = fs::symlink_metadata(&refs[i]).map_err(|e| e.to_string())?;
            if m.len() != SMALL as u64 {
                return Err(format!("{} bytes, expected {SMALL}", m.len()));
            }
            Ok(())
        })?;
    }
    Ok(())
}

/// Makes what the measuring phases expect in `dir`.
fn populate(dir: &Path, files: usize, mib: usize) -> Result<(), String> {
    let fdir = dir.join("files");
    fs::create_dir_all(&fdir).map_err(|e| format!("mkdir {}: {e}", fdir.display()))?;
    for i in 0..files {
        let data: Vec<u8> = (0..SMALL).map(|k| ((k + i) % 251) as u8).collect();
        let p = fdir.join(format!("f{i:05}"));
        fs::write(&p, data).map_err(|e| format!("write {}: {e}", p.display()))?;
    }
    let big = dir.join("big.bin");
    let mut f = fs::File::create(&big).map_err(|e| format!("create {}: {e}", big.display()))?;
    let block: Vec<u8> = (0..1usize << 20).map(|k| (k % 251) as u8).collect();
    for _ in 0..mib {
        f.write_all(&block)
            .map_err(|e| format!("write {}: {e}", big.display()))?;
    }
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--populate") {
        let parsed = match &args[2..] {
            [d, f, m] => f
                .parse::<usize>()
                .ok()
                .zip(m.parse::<usize>().ok())
                .map(|x| (d, x)),
            _ => None,
        };
        let Some((dir, (files, mib))) = parsed else {
            eprintln!("usage: porta-translator-probe --populate DIR FILES MIB");
            return ExitCode::from(2);
        };
        return match populate(Path::new(dir), files, mib) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("porta-translator-probe: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let usage = "usage: porta-translator-probe DIR FILES CREATE_DIR CREATES [REF_DIR]";
    let (dir, files, create_dir, creates, ref_dir) = match args.as_slice() {
        [_, d, f, c, n, rest @ ..] if rest.len() <= 1 => {
            match (f.parse::<usize>(), n.parse::<usize>()) {
                (Ok(f), Ok(n)) if f > 0 && n > 0 => (d, f, c, n, rest.first().map(Path::new)),
                _ => {
                    eprintln!("porta-translator-probe: FILES and CREATES must be positive numbers ({f:?}, {n:?}); {usage}");
                    return ExitCode::from(2);
                }
            }
        }
        _ => {
            eprintln!("{usage}");
            return ExitCode::from(2);
        }
    };
    if create_dir.is_empty() || create_dir.contains('/') {
        eprintln!("porta-translator-probe: CREATE_DIR must be one name, got {create_dir:?}");
        return ExitCode::from(2);
    }
    match run(Path::new(dir), files, create_dir, creates, ref_dir) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("porta-translator-probe: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::percentile;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=10).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 5.0);
        assert_eq!(percentile(&v, 90.0), 9.0);
        assert_eq!(percentile(&[3.0], 90.0), 3.0);
        assert_eq!(percentile(&[], 50.0), 0.0);
    }
}
