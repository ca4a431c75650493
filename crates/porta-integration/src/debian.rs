//! A Debian root file system with real FUSE programs, for the translator tests.
//!
//! [`root`] builds, once, a root holding Debian 13 (trixie) `fuse2fs`, `squashfuse`,
//! `libfuse3-4` and `attr`, Debian sid's `bindfs` (trixie's is built on libfuse 2), each with
//! its whole dependency closure, plus a static busybox for the shell and coreutils, the test
//! users of [`crate::rootfs`], and `/usr/local/bin/hello-fuse`, a small low-level libfuse 3
//! program of ours (`tests/data/hello_fuse.c`) linked statically.
//!
//! The packages come from deb.debian.org through the host's apt with a private
//! configuration (its own sources list, pins, lists, status file and cache; nothing of the
//! host's apt is read or changed): apt checks the InRelease signatures against
//! `/usr/share/keyrings/debian-archive-keyring.gpg` (and so does an explicit `gpgv` here),
//! and each `.deb` is checked against the SHA256 and size of its Packages index record
//! before `dpkg-deb -x` unpacks it (no maintainer scripts, no dpkg database).
//!
//! Everything lives under the cargo target directory, in `porta-debian-root/`: `apt/` (the
//! package lists and the `.deb` cache, so a rebuild needs no network) and one finished root
//! per version key (built in a temporary directory and renamed into place). [`images`] makes
//! the file system images the tests serve: ext4 (good and deliberately corrupted) and
//! squashfs.

use crate::cmd::{Cmd, Out};
use std::fs;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

/// The mirror the packages come from.
pub const MIRROR: &str = "http://deb.debian.org/debian";
/// The keyring the archive's InRelease files are checked against.
pub const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";
/// Packages taken from trixie (Debian 13), with their dependencies.
pub const TRIXIE_PACKAGES: &[&str] = &["fuse2fs", "squashfuse", "libfuse3-4", "attr"];
/// Packages taken from sid (pinned one by one; their dependencies come from trixie
/// whenever trixie satisfies them).
pub const SID_PACKAGES: &[&str] = &["bindfs"];
/// Where hello-fuse is installed in the root.
pub const HELLO_FUSE: &str = "/usr/local/bin/hello-fuse";
/// What hello-fuse's read-only file `hello` holds (`HELLO_TEXT` in hello_fuse.c).
pub const HELLO_TEXT: &str = "Hello from a Porta translator test.\n";
/// Source of hello-fuse.
const HELLO_FUSE_C: &str = include_str!("../tests/data/hello_fuse.c");
/// Bumped whenever the way the root is assembled changes (part of the version key).
const FORMAT: &str = "debian-root-1";

fn err(msg: impl Into<String>) -> io::Error {
    io::Error::other(msg.into())
}

fn ctx<T>(r: io::Result<T>, what: impl FnOnce() -> String) -> io::Result<T> {
    r.map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", what())))
}

/// Runs a host command; an error naming the command and its output unless it exits 0.
fn run_ok(cmd: Cmd) -> io::Result<Out> {
    let o = cmd.run();
    if o.ok() {
        Ok(o)
    } else {
        Err(err(format!("{o}")))
    }
}

/// The cargo target directory: an absolute `$CARGO_TARGET_DIR`, else the one holding the
/// running test binary (`<target>/<profile>/deps/<test>`), else the workspace's `target`.
pub fn target_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("CARGO_TARGET_DIR") {
        let d = PathBuf::from(d);
        if d.is_absolute() {
            return d;
        }
    }
    if let Ok(exe) = std::env::current_exe() {
        if exe.parent().and_then(Path::file_name) == Some("deps".as_ref()) {
            if let Some(t) = exe.ancestors().nth(3) {
                return t.to_path_buf();
            }
        }
    }
    crate::workspace().join("target")
}

/// `<target>/porta-debian-root`: the download cache and the finished roots.
pub fn cache_dir() -> PathBuf {
    target_dir().join("porta-debian-root")
}

/// FNV-1a, 64 bits: a stable hash for the version key (std's hasher may change).
fn fnv1a(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in p.bytes().chain(std::iter::once(0)) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

/// The version key of the root: changes with the package lists, the mirror, the way the
/// root is assembled and hello-fuse's source.
pub fn version_key() -> String {
    let mut parts = vec![FORMAT, MIRROR, HELLO_FUSE_C, "trixie"];
    parts.extend_from_slice(TRIXIE_PACKAGES);
    parts.push("sid");
    parts.extend_from_slice(SID_PACKAGES);
    format!("{FORMAT}-{:016x}", fnv1a(&parts))
}

/// An exclusive `flock` on `path`, released when dropped, so that two test processes
/// sharing a target directory do not build at once.
struct Lock {
    _file: fs::File,
}

impl Lock {
    fn take(path: &Path) -> io::Result<Lock> {
        let f = ctx(
            fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(path),
            || format!("opening lock file {}", path.display()),
        )?;
        flock_exclusive(f.as_raw_fd())
            .map_err(|e| err(format!("locking {}: {e}", path.display())))?;
        Ok(Lock { _file: f })
    }
}

fn flock_exclusive(fd: RawFd) -> io::Result<()> {
    loop {
        // SAFETY: flock on an open descriptor owned by the caller; no memory is passed.
        let r = unsafe { libc::flock(fd, libc::LOCK_EX) };
        if r == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// The Debian root, built on first use (or found ready under [`cache_dir`]). Read-only by
/// convention: copy it (e.g. with [`crate::rootfs::copy_tree`]) before changing anything.
pub fn root() -> &'static Path {
    static CELL: OnceLock<PathBuf> = OnceLock::new();
    CELL.get_or_init(|| build_cached().unwrap_or_else(|e| panic!("building the Debian root: {e}")))
}

fn build_cached() -> io::Result<PathBuf> {
    let cache = cache_dir();
    ctx(fs::create_dir_all(&cache), || {
        format!("creating {}", cache.display())
    })?;
    let done = cache.join(version_key());
    if done.join("usr/bin/fuse2fs").exists() {
        return Ok(done);
    }
    let _lock = Lock::take(&cache.join("lock"))?;
    if done.join("usr/bin/fuse2fs").exists() {
        return Ok(done); // another process built it while we waited
    }
    // Builds run only under the lock: any build or download directory left now is from a
    // process that died mid-way.
    remove_stale(&cache, "build-");
    remove_stale(&cache.join("apt/debs"), "download-");
    let tmp = ctx(
        tempfile::Builder::new().prefix("build-").tempdir_in(&cache),
        || format!("making a build directory in {}", cache.display()),
    )?;
    let apt = Apt::new(&cache.join("apt"))?;
    let debs = apt.fetch()?;
    assemble(tmp.path(), &debs)?;
    ctx(
        fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755)),
        || format!("chmod {}", tmp.path().display()),
    )?;
    let tmp = tmp.keep();
    if let Err(e) = fs::rename(&tmp, &done) {
        let _ = fs::remove_dir_all(&tmp);
        return Err(err(format!(
            "renaming {} to {}: {e}",
            tmp.display(),
            done.display()
        )));
    }
    Ok(done)
}

/// Removes the directories in `dir` whose names start with `prefix`.
fn remove_stale(dir: &Path, prefix: &str) {
    let Ok(rd) = fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        if e.file_name().to_string_lossy().starts_with(prefix) {
            note(&format!(
                "removing {} (left by an interrupted build)",
                e.path().display()
            ));
            let _ = fs::remove_dir_all(e.path());
        }
    }
}

/// One `.deb` to unpack: its package record and where the verified file lies.
#[derive(Debug, Clone)]
struct Deb {
    /// Package name.
    package: String,
    /// Version (with epoch).
    version: String,
    /// The verified file in the download cache.
    path: PathBuf,
}

/// A package record from `apt-cache show`.
#[derive(Debug, Clone, Default)]
struct Record {
    package: String,
    version: String,
    arch: String,
    filename: String,
    size: u64,
    sha256: String,
}

/// The private apt installation under `<cache>/apt`.
struct Apt {
    dir: PathBuf,
}

impl Apt {
    fn new(dir: &Path) -> io::Result<Apt> {
        if !Path::new(KEYRING).exists() {
            return Err(err(format!(
                "{KEYRING} is missing: install debian-archive-keyring (scripts/deps.sh)"
            )));
        }
        for d in [
            "etc/apt.conf.d",
            "etc/preferences.d",
            "etc/sources.list.d",
            "etc/trusted.gpg.d",
            "state/lists/partial",
            "cache/archives/partial",
            "log",
            "debs",
        ] {
            ctx(fs::create_dir_all(dir.join(d)), || {
                format!("creating {}", dir.join(d).display())
            })?;
        }
        let status = dir.join("state/status");
        if !status.exists() {
            ctx(fs::write(&status, ""), || {
                format!("writing {}", status.display())
            })?;
        }
        let arch = run_ok(Cmd::new("dpkg").arg("--print-architecture"))?
            .stdout
            .trim()
            .to_string();
        let d = dir.display();
        let conf = format!(
            "Dir::Etc \"{d}/etc/\";\n\
             Dir::Etc::main \"apt.conf\";\n\
             Dir::Etc::parts \"apt.conf.d\";\n\
             Dir::Etc::sourcelist \"sources.list\";\n\
             Dir::Etc::sourceparts \"sources.list.d\";\n\
             Dir::Etc::preferences \"preferences\";\n\
             Dir::Etc::preferencesparts \"preferences.d\";\n\
             Dir::Etc::trustedparts \"trusted.gpg.d\";\n\
             Dir::State \"{d}/state/\";\n\
             Dir::State::status \"{d}/state/status\";\n\
             Dir::Cache \"{d}/cache/\";\n\
             Dir::Cache::pkgcache \"\";\n\
             Dir::Cache::srcpkgcache \"\";\n\
             Dir::Log \"{d}/log/\";\n\
             APT::Architecture \"{arch}\";\n\
             APT::Architectures {{ \"{arch}\"; }};\n\
             APT::Default-Release \"trixie\";\n\
             APT::Install-Recommends \"false\";\n\
             APT::Install-Suggests \"false\";\n\
             APT::Sandbox::User \"root\";\n\
             Acquire::Languages \"none\";\n\
             Acquire::GzipIndexes \"true\";\n\
             Acquire::Retries \"3\";\n"
        );
        // sid's Release may carry a Valid-Until in the past on a frozen mirror: the
        // signature is still checked, only the freshness check is off, and only for sid.
        let sources = format!(
            "deb [signed-by={KEYRING}] {MIRROR} trixie main\n\
             deb [signed-by={KEYRING} check-valid-until=no] {MIRROR} sid main\n"
        );
        let prefs: String = SID_PACKAGES
            .iter()
            .map(|p| format!("Package: {p}\nPin: release n=sid\nPin-Priority: 995\n\n"))
            .collect();
        for (name, text) in [
            ("etc/apt.conf", conf),
            ("etc/sources.list", sources),
            ("etc/preferences", prefs),
        ] {
            let p = dir.join(name);
            ctx(fs::write(&p, text), || format!("writing {}", p.display()))?;
        }
        Ok(Apt {
            dir: dir.to_path_buf(),
        })
    }

    /// An apt command with this installation's configuration.
    fn cmd(&self, prog: &str) -> Cmd {
        Cmd::new(prog)
            .env("APT_CONFIG", self.dir.join("etc/apt.conf"))
            .env("LC_ALL", "C")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .timeout(Duration::from_secs(600))
    }

    fn in_release(&self, suite: &str) -> PathBuf {
        let host = MIRROR
            .split_once("://")
            .map(|(_, r)| r)
            .unwrap_or(MIRROR)
            .replace('/', "_");
        self.dir
            .join(format!("state/lists/{host}_dists_{suite}_InRelease"))
    }

    fn have_lists(&self) -> bool {
        ["trixie", "sid"]
            .iter()
            .all(|s| self.in_release(s).exists())
    }

    /// `apt-get update`, then the InRelease files checked once more with gpgv.
    fn update(&self) -> io::Result<()> {
        run_ok(self.cmd("apt-get").args(["-q", "--error-on=any", "update"]))
            .map_err(|e| err(format!("apt-get update (deb.debian.org reachable?): {e}")))?;
        self.verify_lists()
    }

    fn verify_lists(&self) -> io::Result<()> {
        for suite in ["trixie", "sid"] {
            let f = self.in_release(suite);
            run_ok(Cmd::new("gpgv").arg("--keyring").arg(KEYRING).arg(&f))
                .map_err(|e| err(format!("{} is not signed by {KEYRING}: {e}", f.display())))?;
        }
        Ok(())
    }

    /// The packages to install, with versions: apt's resolution of the closure.
    fn resolve(&self) -> io::Result<Vec<(String, String)>> {
        let o = run_ok(
            self.cmd("apt-get")
                .args(["-s", "-q", "install"])
                .args(TRIXIE_PACKAGES)
                .args(SID_PACKAGES),
        )?;
        let mut v = Vec::new();
        for l in o.stdout.lines() {
            // Inst <name> (<version> <release> [<arch>])
            let Some(rest) = l.strip_prefix("Inst ") else {
                continue;
            };
            let mut it = rest.split_whitespace();
            let (Some(name), Some(ver)) = (it.next(), it.next()) else {
                return Err(err(format!("unexpected apt-get -s line: {l}")));
            };
            let ver = ver.trim_start_matches('(');
            v.push((name.to_string(), ver.to_string()));
        }
        for want in TRIXIE_PACKAGES.iter().chain(SID_PACKAGES) {
            if !v.iter().any(|(n, _)| n == want) {
                return Err(err(format!("apt's resolution lacks {want}: {o}")));
            }
        }
        Ok(v)
    }

    /// The Packages index records of `pkgs` (name, version).
    fn records(&self, pkgs: &[(String, String)]) -> io::Result<Vec<Record>> {
        let o = run_ok(
            self.cmd("apt-cache")
                .arg("show")
                .args(pkgs.iter().map(|(n, v)| format!("{n}={v}"))),
        )?;
        let mut recs: Vec<Record> = Vec::new();
        for para in o.stdout.split("\n\n") {
            let mut r = Record::default();
            for l in para.lines() {
                let Some((k, v)) = l.split_once(": ") else {
                    continue;
                };
                match k {
                    "Package" => r.package = v.to_string(),
                    "Version" => r.version = v.to_string(),
                    "Architecture" => r.arch = v.to_string(),
                    "Filename" => r.filename = v.to_string(),
                    "Size" => r.size = v.parse().unwrap_or(0),
                    "SHA256" => r.sha256 = v.to_string(),
                    _ => {}
                }
            }
            if r.package.is_empty() || recs.iter().any(|x| x.package == r.package) {
                continue;
            }
            recs.push(r);
        }
        let mut out = Vec::new();
        for (n, v) in pkgs {
            let Some(r) = recs.iter().find(|r| &r.package == n && &r.version == v) else {
                return Err(err(format!("apt-cache show gave no record of {n}={v}")));
            };
            if r.filename.is_empty() || r.sha256.len() != 64 || r.size == 0 {
                return Err(err(format!(
                    "the record of {n}={v} lacks Filename, Size or SHA256: {r:?}"
                )));
            }
            out.push(r.clone());
        }
        Ok(out)
    }

    fn cached_path(&self, r: &Record) -> io::Result<PathBuf> {
        let base = Path::new(&r.filename)
            .file_name()
            .ok_or_else(|| err(format!("bad Filename {} of {}", r.filename, r.package)))?;
        Ok(self.dir.join("debs").join(base))
    }

    /// Downloads (into the cache) the records' files that are not there yet, each checked
    /// against its SHA256 and size before it enters the cache.
    fn download(&self, recs: &[Record]) -> io::Result<()> {
        let missing: Vec<&Record> = recs
            .iter()
            .filter(|r| {
                self.cached_path(r)
                    .map(|p| verify(&p, r).is_err())
                    .unwrap_or(true)
            })
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        let staging = ctx(
            tempfile::Builder::new()
                .prefix("download-")
                .tempdir_in(self.dir.join("debs")),
            || "making a download directory".to_string(),
        )?;
        let names: Vec<String> = missing
            .iter()
            .map(|r| format!("{}={}", r.package, r.version))
            .collect();
        run_ok(
            self.cmd("apt-get")
                .args(["-q", "download"])
                .args(&names)
                .cwd(staging.path()),
        )
        .map_err(|e| {
            err(format!(
                "downloading {} (not in the cache {} or failing their check): {e}",
                names.join(" "),
                self.dir.join("debs").display()
            ))
        })?;
        for r in missing {
            // apt-get download names a file <name>_<version, ':' as %3a>_<arch>.deb
            let got = staging.path().join(format!(
                "{}_{}_{}.deb",
                r.package,
                r.version.replace(':', "%3a"),
                r.arch
            ));
            verify(&got, r)?;
            let to = self.cached_path(r)?;
            ctx(fs::rename(&got, &to), || {
                format!("moving {} to {}", got.display(), to.display())
            })?;
        }
        Ok(())
    }

    /// Resolves, downloads and verifies the packages; the verified files, in apt's order.
    fn fetch(&self) -> io::Result<Vec<Deb>> {
        let fresh = !self.have_lists();
        if fresh {
            self.update()?;
        } else {
            self.verify_lists()?;
        }
        match self.fetch_with_lists() {
            Ok(d) => Ok(d),
            // Old lists may name files the mirror no longer has: refresh once.
            Err(e) if !fresh => {
                note("retrying with fresh package lists");
                self.update().map_err(|u| {
                    err(format!(
                        "{e}\nand refreshing the package lists to retry failed too: {u}"
                    ))
                })?;
                self.fetch_with_lists()
            }
            Err(e) => Err(e),
        }
    }

    fn fetch_with_lists(&self) -> io::Result<Vec<Deb>> {
        let pkgs = self.resolve()?;
        let recs = self.records(&pkgs)?;
        self.download(&recs)?;
        recs.iter()
            .map(|r| {
                let path = self.cached_path(r)?;
                verify(&path, r)?;
                Ok(Deb {
                    package: r.package.clone(),
                    version: r.version.clone(),
                    path,
                })
            })
            .collect()
    }
}

/// Prints a note to stderr, past the test harness's capture (the crate has no logger).
fn note(msg: &str) {
    use std::io::Write;
    let _ = writeln!(io::stderr(), "porta_integration::debian: {msg}");
}

/// Checks a downloaded file's size and SHA256 against its Packages record.
fn verify(path: &Path, r: &Record) -> io::Result<()> {
    let len = ctx(fs::metadata(path), || {
        format!("{} of {}={}", path.display(), r.package, r.version)
    })?
    .len();
    if len != r.size {
        return Err(err(format!(
            "{}: {len} bytes, the Packages index says {} for {}={}",
            path.display(),
            r.size,
            r.package,
            r.version
        )));
    }
    let o = run_ok(Cmd::new("sha256sum").arg(path))?;
    let sum = o.stdout.split_whitespace().next().unwrap_or("");
    if !sum.eq_ignore_ascii_case(&r.sha256) {
        return Err(err(format!(
            "{}: SHA256 {sum}, the Packages index says {} for {}={}",
            path.display(),
            r.sha256,
            r.package,
            r.version
        )));
    }
    Ok(())
}

/// The merged-/usr links of trixie (base-files makes them; it is not unpacked here).
const USR_LINKS: &[&str] = &["bin", "sbin", "lib", "lib64"];

/// Unpacks `debs` into `dir` and adds busybox, the users, the usual directories and
/// hello-fuse.
fn assemble(dir: &Path, debs: &[Deb]) -> io::Result<()> {
    for l in USR_LINKS {
        let d = dir.join("usr").join(l);
        ctx(fs::create_dir_all(&d), || {
            format!("creating {}", d.display())
        })?;
        ctx(symlink(format!("usr/{l}"), dir.join(l)), || {
            format!("linking /{l}")
        })?;
    }
    for d in debs {
        run_ok(Cmd::new("dpkg-deb").arg("-x").arg(&d.path).arg(dir))
            .map_err(|e| err(format!("unpacking {}={}: {e}", d.package, d.version)))?;
    }
    for l in USR_LINKS {
        let meta = ctx(fs::symlink_metadata(dir.join(l)), || format!("/{l}"))?;
        if !meta.file_type().is_symlink() {
            return Err(err(format!(
                "unpacking replaced the merged-/usr link /{l} with a directory"
            )));
        }
    }
    add_busybox(dir)?;
    for d in [
        "tmp",
        "proc",
        "sys",
        "dev",
        "root",
        "home/tester",
        "var/tmp",
        "run",
        "mnt",
        "etc",
        "usr/local/bin",
    ] {
        ctx(fs::create_dir_all(dir.join(d)), || format!("creating /{d}"))?;
    }
    fs::set_permissions(dir.join("tmp"), fs::Permissions::from_mode(0o1777))?;
    fs::set_permissions(dir.join("var/tmp"), fs::Permissions::from_mode(0o1777))?;
    fs::set_permissions(dir.join("root"), fs::Permissions::from_mode(0o700))?;
    // The same users and groups as the busybox root of the other tests.
    let busybox_root = crate::rootfs::cached();
    for f in ["passwd", "group", "hostname", "hosts"] {
        let from = busybox_root.join("etc").join(f);
        let to = dir.join("etc").join(f);
        ctx(fs::copy(&from, &to), || {
            format!("copying {} to {}", from.display(), to.display())
        })?;
    }
    let list: String = debs
        .iter()
        .map(|d| format!("{} {}\n", d.package, d.version))
        .collect();
    fs::write(dir.join("etc/porta-debian-packages"), list)?;
    build_hello_fuse(&dir.join(HELLO_FUSE.trim_start_matches('/')))
}

/// Copies the host's static busybox to /usr/bin/busybox and links each applet the Debian
/// packages do not provide (in /usr/bin or /usr/sbin, as busybox files it).
fn add_busybox(dir: &Path) -> io::Result<()> {
    let bb = Path::new(crate::rootfs::BUSYBOX);
    // The busybox root's builder checks that the host's busybox is static.
    crate::rootfs::cached();
    let to = dir.join("usr/bin/busybox");
    ctx(fs::copy(bb, &to), || format!("copying {}", bb.display()))?;
    fs::set_permissions(&to, fs::Permissions::from_mode(0o755))?;
    let list = run_ok(Cmd::new(bb).arg("--list-full"))?;
    for full in list.stdout.lines().map(str::trim) {
        let Some(name) = Path::new(full).file_name() else {
            continue;
        };
        if name == "busybox" {
            continue;
        }
        let taken = ["usr/bin", "usr/sbin"]
            .iter()
            .any(|d| fs::symlink_metadata(dir.join(d).join(name)).is_ok());
        if taken {
            continue;
        }
        let (sub, target) = if full.contains("sbin/") {
            ("usr/sbin", "../bin/busybox")
        } else {
            ("usr/bin", "busybox")
        };
        ctx(symlink(target, dir.join(sub).join(name)), || {
            format!("linking applet {full}")
        })?;
    }
    Ok(())
}

/// Builds hello-fuse (the source compiled into this crate, `tests/data/hello_fuse.c`)
/// statically with the host's gcc and `pkg-config --static fuse3`, at `out`.
pub fn build_hello_fuse(out: &Path) -> io::Result<()> {
    let src_dir = ctx(tempfile::tempdir(), || {
        "a directory for hello_fuse.c".to_string()
    })?;
    let src = src_dir.path().join("hello_fuse.c");
    ctx(fs::write(&src, HELLO_FUSE_C), || {
        format!("writing {}", src.display())
    })?;
    let flags = |what: &str| -> io::Result<Vec<String>> {
        let o = run_ok(Cmd::new("pkg-config").args(["--static", what, "fuse3"]))
            .map_err(|e| err(format!("pkg-config fuse3 (install libfuse3-dev): {e}")))?;
        Ok(o.stdout.split_whitespace().map(String::from).collect())
    };
    let cflags = flags("--cflags")?;
    let libs = flags("--libs")?;
    run_ok(
        Cmd::new("gcc")
            .args(["-O2", "-Wall", "-Wextra", "-Werror", "-static", "-o"])
            .arg(out)
            .args(cflags)
            .arg(&src)
            .args(libs)
            .timeout(Duration::from_secs(300)),
    )
    .map_err(|e| {
        err(format!(
            "building hello-fuse (tests/data/hello_fuse.c): {e}"
        ))
    })
    .map(|_| ())
}

/// Expected contents of the file system images.
#[derive(Debug, Clone)]
pub struct Images {
    /// A clean ext4 image of [`Images::tree`].
    pub ext4: PathBuf,
    /// The ext4 image with the inode of [`Images::damaged`] overwritten (its extent header
    /// and checksum no longer match): fuse2fs starts and serves the rest, access to the
    /// damaged file fails with EIO.
    pub ext4_bad_inode: PathBuf,
    /// The ext4 image with its group descriptor block zeroed: fuse2fs starts (it opens
    /// the superblock) but every access, even to the root, fails with EIO.
    pub ext4_bad_groups: PathBuf,
    /// The ext4 image with the superblock's magic number zeroed: fuse2fs refuses to start
    /// ("Bad magic number in super-block", exit status 2).
    pub ext4_bad_super: PathBuf,
    /// A squashfs image (gzip, all files owned by root) of [`Images::tree`].
    pub squashfs: PathBuf,
    /// The directory the images were made from.
    pub tree: PathBuf,
    /// Regular files in the images: path relative to the image's root, contents.
    pub files: Vec<(String, Vec<u8>)>,
    /// Directories in the images (relative paths).
    pub dirs: Vec<String>,
    /// Symbolic links in the images: path, target.
    pub symlinks: Vec<(String, String)>,
    /// The file whose inode is damaged in [`Images::ext4_bad_inode`].
    pub damaged: String,
}

/// The big file's contents: `len` bytes of a pattern that differs in every 4 KiB block.
pub fn pattern(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| ((i % 251) as u8) ^ ((i / 4096) as u8))
        .collect()
}

/// The ext4 block size of the images (the corruptions rely on it).
const BLOCK: u64 = 4096;

/// Makes the images in `dir` (which must exist): see [`Images`]. Each corrupted image is
/// checked to make `e2fsck -fn` report problems, the clean one to pass it.
pub fn images(dir: &Path) -> Images {
    make_images(dir).unwrap_or_else(|e| panic!("making images in {}: {e}", dir.display()))
}

fn make_images(dir: &Path) -> io::Result<Images> {
    let tree = dir.join("tree");
    let files: Vec<(String, Vec<u8>)> = vec![
        ("hello.txt".into(), b"Hello from an ext4 image.\n".to_vec()),
        ("dir/nested.txt".into(), b"nested file\n".to_vec()),
        ("dir/big.bin".into(), pattern(3 * 1024 * 1024 + 123)),
        ("empty".into(), Vec::new()),
    ];
    let dirs = vec!["dir".to_string(), "dir/sub".to_string()];
    let symlinks = vec![
        ("link".to_string(), "hello.txt".to_string()),
        ("dir/up".to_string(), "../hello.txt".to_string()),
    ];
    for d in &dirs {
        ctx(fs::create_dir_all(tree.join(d)), || format!("creating {d}"))?;
    }
    for (p, data) in &files {
        ctx(fs::write(tree.join(p), data), || format!("writing {p}"))?;
        fs::set_permissions(tree.join(p), fs::Permissions::from_mode(0o644))?;
    }
    for (p, t) in &symlinks {
        ctx(symlink(t, tree.join(p)), || format!("linking {p}"))?;
    }
    for d in std::iter::once(String::new()).chain(dirs.iter().cloned()) {
        fs::set_permissions(tree.join(d), fs::Permissions::from_mode(0o755))?;
    }

    let ext4 = dir.join("ext4.img");
    run_ok(
        Cmd::new("mke2fs")
            .args([
                "-q",
                "-F",
                "-t",
                "ext4",
                "-b",
                &BLOCK.to_string(),
                "-L",
                "porta-test",
            ])
            .args(["-E", "root_owner=0:0", "-d"])
            .arg(&tree)
            .arg(&ext4)
            .arg("16M"),
    )?;
    e2fsck(&ext4, true)?;

    let damaged = "dir/big.bin".to_string();
    let bad_inode = dir.join("ext4-bad-inode.img");
    fs::copy(&ext4, &bad_inode)?;
    // debugfs: "Inode N is part of block group G\n\tlocated at block B, offset 0xO"
    let o = run_ok(
        Cmd::new("debugfs")
            .arg("-R")
            .arg(format!("imap /{damaged}"))
            .arg(&ext4),
    )?;
    let (block, offset) = parse_imap(&o.stdout)
        .ok_or_else(|| err(format!("cannot read debugfs imap output: {o}")))?;
    // i_block (the extent header, magic 0xF30A) starts 0x28 bytes into the inode.
    write_at(
        &bad_inode,
        block * BLOCK + offset + 0x28,
        &[0xde, 0xad, 0xbe, 0xef],
    )?;
    e2fsck(&bad_inode, false)?;

    let bad_groups = dir.join("ext4-bad-groups.img");
    fs::copy(&ext4, &bad_groups)?;
    // With 4 KiB blocks the superblock is in block 0 and the group descriptors in block 1.
    write_at(&bad_groups, BLOCK, &[0u8; BLOCK as usize])?;
    e2fsck(&bad_groups, false)?;

    let bad_super = dir.join("ext4-bad-super.img");
    fs::copy(&ext4, &bad_super)?;
    // s_magic (0xEF53) lies 0x38 bytes into the superblock, which starts at byte 1024.
    write_at(&bad_super, 1024 + 0x38, &[0, 0])?;
    e2fsck(&bad_super, false)?;

    let squashfs = dir.join("squash.img");
    run_ok(
        Cmd::new("mksquashfs")
            .arg(&tree)
            .arg(&squashfs)
            .args(["-quiet", "-noappend", "-all-root", "-comp", "gzip"])
            .timeout(Duration::from_secs(300)),
    )
    .map_err(|e| err(format!("mksquashfs (install squashfs-tools): {e}")))?;

    Ok(Images {
        ext4,
        ext4_bad_inode: bad_inode,
        ext4_bad_groups: bad_groups,
        ext4_bad_super: bad_super,
        squashfs,
        tree,
        files,
        dirs,
        symlinks,
        damaged,
    })
}

fn parse_imap(s: &str) -> Option<(u64, u64)> {
    let rest = s.split("located at block ").nth(1)?;
    let (block, rest) = rest.split_once(',')?;
    let off = rest.split("offset 0x").nth(1)?.split_whitespace().next()?;
    Some((
        block.trim().parse().ok()?,
        u64::from_str_radix(off, 16).ok()?,
    ))
}

fn write_at(path: &Path, off: u64, data: &[u8]) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    let f = fs::OpenOptions::new().write(true).open(path)?;
    ctx(f.write_all_at(data, off), || {
        format!(
            "writing {} bytes at {off} of {}",
            data.len(),
            path.display()
        )
    })
}

/// `e2fsck -fn`: must pass on a clean image (`clean`), must report problems otherwise.
fn e2fsck(img: &Path, clean: bool) -> io::Result<()> {
    let o = Cmd::new("e2fsck").arg("-fn").arg(img).run();
    match (clean, o.code) {
        (true, 0) => Ok(()),
        // 4: errors left uncorrected, 8: the file system could not be opened (bad
        // superblock), 12 = 4 | 8.
        (false, c) if c & 12 != 0 => Ok(()),
        _ => Err(err(format!(
            "e2fsck -fn on {} should report {}: {o}",
            img.display(),
            if clean {
                "a clean file system"
            } else {
                "corruption"
            }
        ))),
    }
}

// ---------------------------------------------------------------------------------------
// Serving FUSE through a descriptor, as a translator does: a FUSE device opened and
// mounted by the test, handed to a program as /dev/fd/N.

/// A FUSE file system mounted by the test on `mount_point` with an opened `/dev/fuse`
/// (`fd=...,rootmode=40000,user_id=0,group_id=0,allow_other`), waiting for a program to
/// serve it through the descriptor. Unmounted (lazily) when dropped.
pub struct FuseMount {
    mount_point: PathBuf,
    dev: Option<OwnedFd>,
    mounted: bool,
}

impl FuseMount {
    /// Opens /dev/fuse and mounts it on `mount_point` (an existing directory).
    pub fn new(mount_point: &Path) -> io::Result<FuseMount> {
        let f = ctx(
            fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/fuse"),
            || "opening /dev/fuse".to_string(),
        )?;
        let dev = OwnedFd::from(f);
        let opts = format!(
            "fd={},rootmode=40000,user_id=0,group_id=0,allow_other",
            dev.as_raw_fd()
        );
        mount_fuse(mount_point, &opts).map_err(|e| {
            err(format!(
                "mount -t fuse {opts} on {}: {e}",
                mount_point.display()
            ))
        })?;
        Ok(FuseMount {
            mount_point: mount_point.to_path_buf(),
            dev: Some(dev),
            mounted: true,
        })
    }

    /// The mount point.
    pub fn path(&self) -> &Path {
        &self.mount_point
    }

    /// Starts `cmd` with the FUSE device as descriptor `n` (n > 2), then closes the
    /// test's own copy, so that the program holds the only one: when it dies, accesses
    /// fail (ENOTCONN) instead of waiting. Its stdout and stderr go to `log`.
    pub fn serve(&mut self, mut cmd: Command, n: RawFd, log: &Path) -> io::Result<Served> {
        let dev = self
            .dev
            .take()
            .ok_or_else(|| err("the FUSE device was already handed to a program"))?;
        let out = ctx(fs::File::create(log), || {
            format!("creating {}", log.display())
        })?;
        cmd.stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        give_fd(&mut cmd, dev.as_raw_fd(), n);
        let child = ctx(cmd.spawn(), || format!("starting {cmd:?}"))?;
        drop(dev);
        Ok(Served {
            child: Some(child),
            log: log.to_path_buf(),
        })
    }

    /// Unmounts now (not lazily); an error if the mount is busy or gone.
    pub fn unmount(&mut self) -> io::Result<()> {
        if self.mounted {
            self.mounted = false;
            umount(&self.mount_point, 0)?;
        }
        Ok(())
    }
}

impl Drop for FuseMount {
    fn drop(&mut self) {
        if self.mounted {
            let _ = umount(&self.mount_point, libc::MNT_DETACH);
        }
    }
}

/// A program serving a [`FuseMount`]; killed and reaped when dropped.
pub struct Served {
    child: Option<Child>,
    log: PathBuf,
}

impl Served {
    /// The program's output so far (stdout and stderr).
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits for the program to exit by itself; its exit status. If it is still running
    /// after `limit` (a guard against a hung program, not a timing assumption), kills it
    /// and returns an error with its output.
    pub fn wait(&mut self, limit: Duration) -> io::Result<std::process::ExitStatus> {
        let c = self
            .child
            .as_mut()
            .ok_or_else(|| err("the program was already reaped"))?;
        let st = crate::wait_for(limit, || c.try_wait().ok().flatten());
        match st {
            Some(st) => {
                self.child = None;
                Ok(st)
            }
            None => {
                self.kill();
                Err(err(format!(
                    "the FUSE program did not exit within {limit:?}; its output:\n{}",
                    self.log()
                )))
            }
        }
    }

    /// Kills the program (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Runs `f` (which accesses the mount) in a thread; if it has not finished after
    /// `limit`, kills the program so that the blocked accesses fail, and panics naming
    /// the program's log. A guard against a program that never answers, not a timing
    /// assumption: a working program answers long before.
    pub fn check<T: Send>(&mut self, limit: Duration, f: impl FnOnce() -> T + Send) -> T {
        let (tx, rx) = std::sync::mpsc::channel();
        let (res, killed) = std::thread::scope(|s| {
            let h = s.spawn(move || {
                let r = f();
                let _ = tx.send(());
                r
            });
            // Disconnected: `f` panicked (the join below passes the panic on).
            let killed = matches!(
                rx.recv_timeout(limit),
                Err(std::sync::mpsc::RecvTimeoutError::Timeout)
            ) && !h.is_finished();
            if killed {
                self.kill();
            }
            (h.join(), killed)
        });
        assert!(
            !killed,
            "the FUSE program did not answer within {limit:?}; its output:\n{}",
            self.log()
        );
        match res {
            Ok(v) => v,
            Err(p) => std::panic::resume_unwind(p),
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.kill();
    }
}

fn cstr(p: &Path) -> io::Result<std::ffi::CString> {
    std::ffi::CString::new(p.as_os_str().as_encoded_bytes())
        .map_err(|_| err(format!("{} holds a NUL byte", p.display())))
}

fn mount_fuse(target: &Path, opts: &str) -> io::Result<()> {
    let t = cstr(target)?;
    let o = std::ffi::CString::new(opts).map_err(|_| err("mount options hold a NUL byte"))?;
    // SAFETY: valid NUL-terminated strings that outlive the call; mount only reads them.
    let r = unsafe {
        libc::mount(
            c"porta-debian-test".as_ptr(),
            t.as_ptr(),
            c"fuse".as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV,
            o.as_ptr().cast(),
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn umount(target: &Path, flags: libc::c_int) -> io::Result<()> {
    let t = cstr(target)?;
    // SAFETY: a valid NUL-terminated string; umount2 only reads it.
    if unsafe { libc::umount2(t.as_ptr(), flags) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Makes `fd` descriptor `n` of the child `cmd` starts (without close-on-exec).
fn give_fd(cmd: &mut Command, fd: RawFd, n: RawFd) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure only calls dup2 and fcntl, async-signal-safe, between fork and
    // exec; `fd` stays open in the parent until spawn returns.
    unsafe {
        cmd.pre_exec(move || {
            if fd == n {
                // dup2 onto itself keeps close-on-exec: clear it instead.
                if libc::fcntl(n, libc::F_SETFD, 0) < 0 {
                    return Err(io::Error::last_os_error());
                }
            } else if libc::dup2(fd, n) < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// A private copy of [`root`] at `dst`, with the device nodes a chroot needs
/// (/dev/null, /dev/zero, /dev/urandom; fuse2fs reads /dev/urandom) when `devices`.
pub fn install(dst: &Path, devices: bool) -> io::Result<()> {
    crate::rootfs::copy_tree(root(), dst)
        .map_err(|e| err(format!("copying the Debian root to {}: {e}", dst.display())))?;
    if devices {
        for (name, minor) in [("null", 3), ("zero", 5), ("urandom", 9)] {
            let p = dst.join("dev").join(name);
            mknod_char(&p, 1, minor)?;
        }
    }
    Ok(())
}

fn mknod_char(p: &Path, major: u32, minor: u32) -> io::Result<()> {
    let c = cstr(p)?;
    // SAFETY: a valid NUL-terminated path; mknod only reads it.
    let r = unsafe {
        libc::mknod(
            c.as_ptr(),
            libc::S_IFCHR | 0o666,
            libc::makedev(major, minor),
        )
    };
    if r != 0 {
        return Err(err(format!(
            "mknod {}: {}",
            p.display(),
            io::Error::last_os_error()
        )));
    }
    // mknod's mode is filtered by the umask.
    fs::set_permissions(p, fs::Permissions::from_mode(0o666))
}
