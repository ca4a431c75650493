//! The busybox-static root file system the tests run containers on.
//!
//! Built once per test process into a cache directory (atomically: temp dir + rename),
//! then copied into each bundle.

use std::fs;
use std::io;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// Where the cached root file system lives.
pub const CACHE: &str = "/var/tmp/porta-it-rootfs";
/// Where busybox-static is installed on Debian/Ubuntu.
pub const BUSYBOX: &str = "/bin/busybox";

const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
daemon:x:1:1:daemon:/usr/sbin:/bin/false\n\
tester:x:1000:1000:tester:/home/tester:/bin/sh\n\
nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n";
const GROUP: &str = "root:x:0:\ndaemon:x:1:\ntty:x:5:\ntester:x:1000:\nextra1:x:1001:\nextra2:x:1002:\nnogroup:x:65534:\n";

fn busybox_is_static(p: &Path) -> bool {
    // A static ELF has no PT_INTERP program header; cheap check: no "ld-linux" string
    // is not reliable, so ask the ELF header through `file`-free parsing.
    let Ok(data) = fs::read(p) else { return false };
    if data.len() < 64 || &data[..4] != b"\x7fELF" || data[4] != 2 {
        return false;
    }
    let rd16 = |o: usize| u16::from_le_bytes([data[o], data[o + 1]]) as usize;
    let rd32 = |o: usize| u32::from_le_bytes(data[o..o + 4].try_into().unwrap()) as usize;
    let rd64 = |o: usize| u64::from_le_bytes(data[o..o + 8].try_into().unwrap()) as usize;
    let phoff = rd64(0x20);
    let phentsize = rd16(0x36);
    let phnum = rd16(0x38);
    for i in 0..phnum {
        let o = phoff + i * phentsize;
        if o + 4 > data.len() {
            return false;
        }
        if rd32(o) == 3 {
            return false; // PT_INTERP: dynamically linked
        }
    }
    true
}

fn build(dir: &Path) -> io::Result<()> {
    let bb = Path::new(BUSYBOX);
    if !bb.exists() || !busybox_is_static(bb) {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("{BUSYBOX} missing or not static: install busybox-static (scripts/deps.sh)"),
        ));
    }
    for d in [
        "bin",
        "etc",
        "tmp",
        "proc",
        "sys",
        "dev",
        "root",
        "home/tester",
        "var",
        "run",
        "mnt",
    ] {
        fs::create_dir_all(dir.join(d))?;
    }
    fs::set_permissions(dir.join("tmp"), fs::Permissions::from_mode(0o1777))?;
    fs::set_permissions(dir.join("root"), fs::Permissions::from_mode(0o700))?;
    fs::copy(bb, dir.join("bin/busybox"))?;
    fs::set_permissions(dir.join("bin/busybox"), fs::Permissions::from_mode(0o755))?;
    let list = Command::new(bb).arg("--list").output()?;
    for name in String::from_utf8_lossy(&list.stdout).lines() {
        let name = name.trim();
        if name.is_empty() || name == "busybox" || name.contains('/') {
            continue;
        }
        symlink("busybox", dir.join("bin").join(name))?;
    }
    symlink("bin", dir.join("sbin"))?;
    fs::create_dir_all(dir.join("usr"))?;
    symlink("../bin", dir.join("usr/bin"))?;
    symlink("../bin", dir.join("usr/sbin"))?;
    fs::write(dir.join("etc/passwd"), PASSWD)?;
    fs::write(dir.join("etc/group"), GROUP)?;
    fs::write(dir.join("etc/hostname"), "pit\n")?;
    fs::write(dir.join("etc/hosts"), "127.0.0.1 localhost\n")?;
    Ok(())
}

/// The cached root file system, built on first use in this process (or reused when a
/// previous process already built it).
pub fn cached() -> &'static Path {
    static CELL: OnceLock<PathBuf> = OnceLock::new();
    CELL.get_or_init(|| {
        let root = Path::new(CACHE);
        let done = root.join("v1");
        if done.join("bin/busybox").exists() {
            return done;
        }
        fs::create_dir_all(root).expect("create rootfs cache dir");
        let tmp = tempfile::Builder::new()
            .prefix("build-")
            .tempdir_in(root)
            .expect("temp dir for rootfs");
        build(tmp.path()).unwrap_or_else(|e| panic!("building busybox rootfs: {e}"));
        fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let tmp = tmp.keep();
        if fs::rename(&tmp, &done).is_err() {
            // another process won the race; use its copy
            let _ = fs::remove_dir_all(&tmp);
        }
        assert!(done.join("bin/busybox").exists(), "rootfs cache incomplete");
        done
    })
}

/// Copies a directory tree (directories, regular files, symlinks) preserving modes.
pub fn copy_tree(src: &Path, dst: &Path) -> io::Result<()> {
    fs::create_dir_all(dst)?;
    fs::set_permissions(dst, fs::metadata(src)?.permissions())?;
    for e in fs::read_dir(src)? {
        let e = e?;
        let ty = e.file_type()?;
        let to = dst.join(e.file_name());
        if ty.is_symlink() {
            symlink(fs::read_link(e.path())?, &to)?;
        } else if ty.is_dir() {
            copy_tree(&e.path(), &to)?;
        } else if ty.is_file() {
            fs::copy(e.path(), &to)?;
        }
    }
    Ok(())
}

/// Makes a private copy of the root file system at `dst`.
pub fn install(dst: &Path) {
    copy_tree(cached(), dst).unwrap_or_else(|e| panic!("copying rootfs to {}: {e}", dst.display()));
}

/// Writes a tar of the root file system (for `podman import`) using the host's tar.
pub fn tar_to(path: &Path) -> io::Result<()> {
    let st = Command::new("tar")
        .arg("-C")
        .arg(cached())
        .arg("-cf")
        .arg(path)
        .arg(".")
        .status()?;
    if !st.success() {
        return Err(io::Error::other(format!("tar exited {st}")));
    }
    Ok(())
}
