//! Workload programs run inside containers by the benchmark harness (`porta-bench`).
//!
//! Everything here uses only the standard library, so that the `porta-workload` binary can be
//! linked statically (`RUSTFLAGS="-C target-feature=+crt-static"`) and dropped into a busybox
//! root file system. Each workload measures itself and prints its figures as
//! `RESULT <metric> <value> <unit>` lines on standard output; the harness parses those lines.
//! Timing therefore never includes the container's start-up, only the work itself.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// One measured figure, printed as `RESULT <metric> <value> <unit>`.
#[derive(Debug, Clone, PartialEq)]
pub struct Figure {
    /// The figure's name (one word).
    pub metric: &'static str,
    /// The measured value.
    pub value: f64,
    /// Its unit (`ms`, `MiB/s`…).
    pub unit: &'static str,
}

impl Figure {
    /// The `RESULT <metric> <value> <unit>` line.
    pub fn line(&self) -> String {
        format!("RESULT {} {} {}", self.metric, self.value, self.unit)
    }
}

/// Parses a `RESULT <metric> <value> <unit>` line (the harness side of [`Figure::line`]).
pub fn parse_result_line(line: &str) -> Option<(String, f64, String)> {
    let mut it = line.split_whitespace();
    if it.next()? != "RESULT" {
        return None;
    }
    let metric = it.next()?.to_string();
    let value: f64 = it.next()?.parse().ok()?;
    let unit = it.next()?.to_string();
    if it.next().is_some() || !value.is_finite() {
        return None;
    }
    Some((metric, value, unit))
}

/// A small deterministic PRNG (xorshift64*), so that runs are reproducible and no dependency is
/// needed.
pub struct XorShift(u64);

impl XorShift {
    /// A generator seeded with `seed` (0 is taken as 1, which xorshift needs).
    pub fn new(seed: u64) -> Self {
        XorShift(seed.max(1))
    }
    /// The next 64-bit value.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform-ish value in `0..n` (n > 0); the modulo bias is irrelevant here.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

fn isqrt(n: u64) -> u64 {
    let mut r = (n as f64).sqrt() as u64;
    while r * r > n {
        r -= 1;
    }
    while (r + 1) * (r + 1) <= n {
        r += 1;
    }
    r
}

/// Counts the primes strictly below `n` with a segmented sieve of Eratosthenes over odd
/// numbers (segments of 128 KiB, so the work is CPU-bound and cache-resident).
pub fn count_primes_below(n: u64) -> u64 {
    if n <= 2 {
        return 0;
    }
    let limit = n - 1; // inclusive
    let root = isqrt(limit);
    let mut small = vec![true; (root + 1) as usize];
    small[0] = false;
    if root >= 1 {
        small[1] = false;
    }
    let mut i = 2usize;
    while i * i <= root as usize {
        if small[i] {
            let mut j = i * i;
            while j <= root as usize {
                small[j] = false;
                j += i;
            }
        }
        i += 1;
    }
    let primes: Vec<u64> = (3..=root).filter(|&p| small[p as usize]).collect();
    let mut next: Vec<u64> = primes.iter().map(|&p| p * p).collect();

    const SEG_ODDS: u64 = 1 << 17; // odd numbers per segment
    let mut seg = vec![0u8; SEG_ODDS as usize];
    let mut count = 1u64; // the prime 2
    let mut low = 3u64; // always odd
    while low <= limit {
        let high = (low + 2 * (SEG_ODDS - 1)).min(limit);
        let len = ((high - low) / 2 + 1) as usize;
        seg[..len].fill(1);
        for (k, &p) in primes.iter().enumerate() {
            let mut m = next[k];
            if m > high {
                continue;
            }
            let step = 2 * p;
            while m <= high {
                seg[((m - low) / 2) as usize] = 0;
                m += step;
            }
            next[k] = m;
        }
        count += seg[..len].iter().map(|&b| b as u64).sum::<u64>();
        low += 2 * SEG_ODDS;
    }
    count
}

/// Counts primes below `n` and reports the elapsed time in seconds.
pub fn primes(n: u64) -> (u64, Figure) {
    let t = Instant::now();
    let c = count_primes_below(n);
    let s = t.elapsed().as_secs_f64();
    (
        c,
        Figure {
            metric: "time",
            value: s,
            unit: "s",
        },
    )
}

/// fs_mark-like name: 40 bytes, 8 hex digits of sequence number then 32 pseudo-random
/// alphanumerics.
pub fn fsmark_name(i: usize, rng: &mut XorShift) -> String {
    const ALNUM: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut s = format!("{:08x}", i);
    while s.len() < 40 {
        s.push(ALNUM[rng.below(ALNUM.len() as u64) as usize] as char);
    }
    s
}

/// fs_mark's basic test: creates `dir` (which must not exist: the directory is always fresh),
/// then writes `count` files of `size` bytes with 40-byte names into it. Per file it makes the
/// system calls fs_mark 3.3 makes (`fs_mark -d DIR -n COUNT -s SIZE -S 0|1`, one thread, no
/// subdirectories; checked with `strace -f -c`): `mkdir(DIR)` (fs_mark re-creates its
/// directory before every file; EEXIST), `openat(O_RDWR|O_CREAT|O_TRUNC, 0666)`, one
/// `write` of `size` bytes (fs_mark's I/O size is 16 KiB, larger than the file), `fsync`
/// when `fsync` (`-S 1`), `close`. Reports files per second over the create loop.
pub fn fsmark(dir: &Path, count: usize, size: usize, fsync: bool) -> io::Result<Figure> {
    use std::os::unix::fs::OpenOptionsExt;
    fs::create_dir(dir)?;
    let mut rng = XorShift::new(0x5eed ^ count as u64);
    let names: Vec<PathBuf> = (0..count)
        .map(|i| dir.join(fsmark_name(i, &mut rng)))
        .collect();
    let buf = vec![0x61u8; size];
    let t = Instant::now();
    for p in &names {
        match fs::create_dir(dir) {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
            Ok(()) => return Err(io::Error::other("fsmark: the directory vanished")),
        }
        let mut f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o666)
            .open(p)?;
        if f.write(&buf)? != size {
            return Err(io::Error::other("fsmark: short write"));
        }
        if fsync {
            f.sync_all()?;
        }
        drop(f);
    }
    let s = t.elapsed().as_secs_f64();
    Ok(Figure {
        metric: "rate",
        value: count as f64 / s,
        unit: "files/s",
    })
}

/// Memory copy bandwidth over two buffers of `bytes` each (larger than the last-level cache),
/// best of `iters` copies, in MB/s (10^6 bytes copied per second, as tinymembench's "C copy").
pub fn membw(bytes: usize, iters: usize) -> Figure {
    let src: Vec<u8> = (0..bytes).map(|i| i as u8).collect();
    let mut dst = vec![0u8; bytes];
    dst.copy_from_slice(&src); // fault every page in before timing
    let mut best = f64::INFINITY;
    for _ in 0..iters.max(1) {
        let t = Instant::now();
        dst.copy_from_slice(std::hint::black_box(&src));
        std::hint::black_box(&mut dst);
        best = best.min(t.elapsed().as_secs_f64());
    }
    Figure {
        metric: "copy",
        value: bytes as f64 / best / 1e6,
        unit: "MB/s",
    }
}

/// Builds a single random cycle over `slots` cache-line slots (Sattolo's algorithm) and returns
/// the chase buffer: the word at `i * 8` holds the next slot.
pub fn chase_buffer(slots: usize, seed: u64) -> Vec<u64> {
    let mut order: Vec<usize> = (0..slots).collect();
    let mut rng = XorShift::new(seed);
    let mut i = slots;
    while i > 1 {
        i -= 1;
        let j = rng.below(i as u64) as usize; // j < i: Sattolo, one cycle
        order.swap(i, j);
    }
    let mut buf = vec![0u64; slots * 8];
    for k in 0..slots {
        let from = order[k];
        let to = order[(k + 1) % slots];
        buf[from * 8] = to as u64;
    }
    buf
}

/// Random-access latency: a dependent pointer chase over a buffer of `bytes` (64-byte slots, one
/// random cycle), `accesses` loads; reports nanoseconds per access.
pub fn memlat(bytes: usize, accesses: u64) -> Figure {
    let slots = (bytes / 64).max(2);
    let buf = chase_buffer(slots, 0xC0FFEE);
    // Warm the TLB/page tables once over the whole cycle's first part.
    let mut idx = 0usize;
    for _ in 0..slots.min(1 << 20) {
        idx = buf[idx * 8] as usize;
    }
    let t = Instant::now();
    for _ in 0..accesses {
        idx = buf[idx * 8] as usize;
    }
    let s = t.elapsed().as_secs_f64();
    std::hint::black_box(idx);
    Figure {
        metric: "latency",
        value: s * 1e9 / accesses as f64,
        unit: "ns",
    }
}

/// Creates a tree of `files` empty files under `root`: 20 top directories, each with up to 25
/// subdirectories holding 100 files each (50,000 files = 20 x 25 x 100).
pub fn make_tree(root: &Path, files: usize) -> io::Result<usize> {
    fs::create_dir_all(root)?;
    let mut made = 0usize;
    'outer: for a in 0..usize::MAX {
        for b in 0..25 {
            let d = root.join(format!("d{a:02}")).join(format!("s{b:02}"));
            fs::create_dir_all(&d)?;
            for c in 0..100 {
                if made == files {
                    break 'outer;
                }
                File::create(d.join(format!("file-{c:03}.txt")))?;
                made += 1;
            }
        }
    }
    Ok(made)
}

/// Walks `root` recursively, reading every directory and stat'ing (lstat) every entry, like
/// `find ROOT -ls` does, twice: the first walk finds whatever caches the caller left (cold
/// after the harness dropped the kernel's caches), the second finds them filled by the first
/// (warm). Returns (files seen, [cold figure, warm figure] in files per second).
pub fn stat_tree(root: &Path) -> io::Result<(u64, [Figure; 2])> {
    fn walk(dir: &Path, files: &mut u64) -> io::Result<()> {
        for e in fs::read_dir(dir)? {
            let e = e?;
            let md = fs::symlink_metadata(e.path())?;
            if md.is_dir() {
                walk(&e.path(), files)?;
            } else {
                *files += 1;
            }
        }
        Ok(())
    }
    let timed = |metric: &'static str| -> io::Result<(u64, Figure)> {
        let t = Instant::now();
        let mut files = 0u64;
        fs::symlink_metadata(root)?;
        walk(root, &mut files)?;
        let s = t.elapsed().as_secs_f64();
        Ok((
            files,
            Figure {
                metric,
                value: files as f64 / s,
                unit: "files/s",
            },
        ))
    };
    let (files, cold) = timed("cold")?;
    let (again, warm) = timed("warm")?;
    if again != files {
        return Err(io::Error::other(format!(
            "the second walk saw {again} files, the first {files}"
        )));
    }
    Ok((files, [cold, warm]))
}

/// Small I/O on one new file `path`: `count` appends of 100 bytes (append figure, writes per
/// second; each is a write(2) call, as a log writer makes them), then `count` rounds of
/// open, read of the first 100 bytes and close of the same file (reopen figure, opens per
/// second, as a shell or compiler reading the same small files again). Removes the file.
pub fn smallio(path: &Path, count: usize) -> io::Result<[Figure; 2]> {
    let rec = [0x62u8; 100];
    let t = Instant::now();
    let mut f = OpenOptions::new()
        .append(true)
        .create_new(true)
        .open(path)?;
    for _ in 0..count {
        f.write_all(&rec)?;
    }
    drop(f);
    let ws = t.elapsed().as_secs_f64();
    let mut buf = [0u8; 100];
    let t = Instant::now();
    for _ in 0..count {
        let mut f = File::open(path)?;
        f.read_exact(&mut buf)?;
    }
    let rs = t.elapsed().as_secs_f64();
    let len = fs::metadata(path)?.len();
    fs::remove_file(path)?;
    if len != (count * rec.len()) as u64 || buf != rec {
        return Err(io::Error::other(format!(
            "file holds {len} bytes after {count} appends of 100"
        )));
    }
    Ok([
        Figure {
            metric: "append",
            value: count as f64 / ws,
            unit: "writes/s",
        },
        Figure {
            metric: "reopen",
            value: count as f64 / rs,
            unit: "opens/s",
        },
    ])
}

extern "C" {
    fn posix_fadvise(fd: i32, offset: i64, len: i64, advice: i32) -> i32;
}
const POSIX_FADV_DONTNEED: i32 = 4;

/// Sequential I/O: writes `mib` MiB to the new file `path` in 1 MiB blocks and fsyncs it (write
/// figure), drops the file's cached pages, reads it back in 1 MiB blocks (read figure) and
/// removes it.
pub fn seqio(path: &Path, mib: usize) -> io::Result<[Figure; 2]> {
    use std::os::fd::AsRawFd;
    const BLOCK: usize = 1 << 20;
    let mut block = vec![0u8; BLOCK];
    for (i, b) in block.iter_mut().enumerate() {
        *b = (i * 31 % 251) as u8;
    }
    let t = Instant::now();
    let mut f = OpenOptions::new().write(true).create_new(true).open(path)?;
    for _ in 0..mib {
        f.write_all(&block)?;
    }
    f.sync_all()?;
    let ws = t.elapsed().as_secs_f64();
    // SAFETY: plain syscall on a valid descriptor.
    unsafe { posix_fadvise(f.as_raw_fd(), 0, 0, POSIX_FADV_DONTNEED) };
    drop(f);
    let t = Instant::now();
    let mut f = File::open(path)?;
    let mut total = 0usize;
    loop {
        let n = f.read(&mut block)?;
        if n == 0 {
            break;
        }
        total += n;
    }
    let rs = t.elapsed().as_secs_f64();
    drop(f);
    fs::remove_file(path)?;
    if total != mib * BLOCK {
        return Err(io::Error::other(format!(
            "read back {total} bytes, wrote {}",
            mib * BLOCK
        )));
    }
    let mb = (mib * BLOCK) as f64 / 1e6;
    Ok([
        Figure {
            metric: "write",
            value: mb / ws,
            unit: "MB/s",
        },
        Figure {
            metric: "read",
            value: mb / rs,
            unit: "MB/s",
        },
    ])
}

/// Host-change probe, the container's side: for each `i` below `count`, looks `DIR/f<i>` up
/// (it must not exist yet: the kernel may now cache the miss), says it is ready by creating
/// `DIR/r<i>`, then checks for `DIR/f<i>` (which the host creates after it saw `r<i>`) until
/// it exists, at most `limit` checks. Returns, for each `i`, the wall-clock time (ns since
/// the epoch, the clock the host also reads) it was first seen and the checks it took.
pub fn host_change(dir: &Path, count: usize, limit: u64) -> io::Result<Vec<(u128, u64)>> {
    let mut seen = Vec::with_capacity(count);
    for i in 0..count {
        let f = dir.join(format!("f{i}"));
        if f.symlink_metadata().is_ok() {
            return Err(io::Error::other(format!(
                "{} exists before the host made it",
                f.display()
            )));
        }
        fs::File::create(dir.join(format!("r{i}")))?;
        let mut checks = 0u64;
        while f.symlink_metadata().is_err() {
            checks += 1;
            if checks >= limit {
                return Err(io::Error::other(format!(
                    "{} not seen after {limit} checks (change {i} of {count})",
                    f.display()
                )));
            }
        }
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_err(io::Error::other)?
            .as_nanos();
        seen.push((t, checks));
    }
    Ok(seen)
}

/// Small-file churn: in the fresh directory `dir`, creates `count` files of 1 KiB, stats each,
/// renames each and deletes each. Reports files per second through all four steps.
pub fn smallfile(dir: &Path, count: usize) -> io::Result<Figure> {
    fs::create_dir(dir)?;
    let data = [0x62u8; 1024];
    let a: Vec<PathBuf> = (0..count)
        .map(|i| dir.join(format!("small-{i:06}")))
        .collect();
    let b: Vec<PathBuf> = (0..count)
        .map(|i| dir.join(format!("moved-{i:06}")))
        .collect();
    let t = Instant::now();
    for p in &a {
        let mut f = OpenOptions::new().write(true).create_new(true).open(p)?;
        f.write_all(&data)?;
    }
    for p in &a {
        if fs::metadata(p)?.len() != data.len() as u64 {
            return Err(io::Error::other(format!("{}: wrong size", p.display())));
        }
    }
    for (x, y) in a.iter().zip(&b) {
        fs::rename(x, y)?;
    }
    for p in &b {
        fs::remove_file(p)?;
    }
    let s = t.elapsed().as_secs_f64();
    fs::remove_dir(dir)?;
    Ok(Figure {
        metric: "rate",
        value: count as f64 / s,
        unit: "files/s",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prime_counts() {
        assert_eq!(count_primes_below(0), 0);
        assert_eq!(count_primes_below(2), 0);
        assert_eq!(count_primes_below(3), 1);
        assert_eq!(count_primes_below(10), 4);
        assert_eq!(count_primes_below(100), 25);
        assert_eq!(count_primes_below(1_000_000), 78_498);
        assert_eq!(count_primes_below(10_000_000), 664_579);
        // Segment boundaries: 2 * 2^17 = 262,144 numbers per segment.
        let naive = |n: u64| {
            (2..n)
                .filter(|&k| (2..).take_while(|d| d * d <= k).all(|d| k % d != 0))
                .count() as u64
        };
        for n in [262_140, 262_147, 262_149, 524_290, 600_001] {
            assert_eq!(count_primes_below(n), naive(n), "n = {n}");
        }
    }

    #[test]
    fn names_are_40_bytes_and_unique() {
        let mut r = XorShift::new(1);
        let names: Vec<String> = (0..1000).map(|i| fsmark_name(i, &mut r)).collect();
        assert!(names.iter().all(|n| n.len() == 40));
        let set: std::collections::HashSet<_> = names.iter().collect();
        assert_eq!(set.len(), names.len());
    }

    #[test]
    fn chase_is_one_cycle() {
        let slots = 1000;
        let buf = chase_buffer(slots, 7);
        let mut seen = vec![false; slots];
        let mut i = 0;
        for _ in 0..slots {
            assert!(!seen[i]);
            seen[i] = true;
            i = buf[i * 8] as usize;
        }
        assert_eq!(i, 0);
    }

    #[test]
    fn result_lines_round_trip() {
        let f = Figure {
            metric: "rate",
            value: 1234.5,
            unit: "files/s",
        };
        assert_eq!(
            parse_result_line(&f.line()),
            Some(("rate".into(), 1234.5, "files/s".into()))
        );
        assert_eq!(parse_result_line("INFO x"), None);
        assert_eq!(parse_result_line("RESULT a NaN s"), None);
    }

    #[test]
    fn file_workloads_run() {
        let base =
            std::env::temp_dir().join(format!("porta-workloads-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&base);
        fs::create_dir_all(&base).unwrap();
        let [a, r] = smallio(&base.join("small"), 50).unwrap();
        assert!(a.value > 0.0 && r.value > 0.0);
        assert!(!base.join("small").exists());
        let f = fsmark(&base.join("fsm"), 50, 10240, false).unwrap();
        assert!(f.value > 0.0);
        assert_eq!(fs::read_dir(base.join("fsm")).unwrap().count(), 50);
        for e in fs::read_dir(base.join("fsm")).unwrap() {
            let e = e.unwrap();
            assert_eq!(e.metadata().unwrap().len(), 10240);
            assert_eq!(e.file_name().len(), 40);
        }
        assert!(
            fsmark(&base.join("fsm"), 5, 10, false).is_err(),
            "directory must be fresh"
        );
        assert_eq!(make_tree(&base.join("tree"), 2600).unwrap(), 2600);
        let (n, _) = stat_tree(&base.join("tree")).unwrap();
        assert_eq!(n, 2600);
        let [w, r] = seqio(&base.join("seq.dat"), 4).unwrap();
        assert!(w.value > 0.0 && r.value > 0.0);
        assert!(!base.join("seq.dat").exists());
        smallfile(&base.join("sf"), 100).unwrap();
        assert!(!base.join("sf").exists());
        fs::remove_dir_all(&base).unwrap();
    }
}
