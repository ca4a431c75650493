//! A scratch file system for one invocation (`--scratch-fs SIZE`): a new ext4, with a
//! journal, in a sparse image file, mounted through a loop device on the work directory.
//!
//! The file-system workloads create and delete thousands of files. On an ext4 without a
//! journal the inode allocator skips (and reads) every inode freed in the last minutes, so
//! on such a host the figures depend on what was deleted before the run, by anyone. A
//! scratch file system starts empty, has a journal (the allocator does not look back),
//! and goes with the run.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

/// A mounted scratch file system: removed by [`Scratch::remove`].
#[derive(Debug)]
pub struct Scratch {
    image: PathBuf,
    mount: PathBuf,
}

/// Runs `argv`; an error carries its standard error.
fn run(argv: &[&str], what: &str) -> Result<()> {
    let o = Command::new(argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {what} ({})", argv[0]))?;
    if !o.status.success() {
        bail!(
            "{what} failed ({}): {}",
            o.status,
            String::from_utf8_lossy(&o.stderr).trim()
        );
    }
    Ok(())
}

impl Scratch {
    /// Makes an image of `size` (as `truncate -s` takes it: `8G`, `512M`) at `image`, an
    /// ext4 with a journal in it, and mounts it on the existing empty directory `mount`.
    /// On failure nothing of it is left.
    pub fn make(image: &Path, mount: &Path, size: &str) -> Result<Scratch> {
        let img = image.to_string_lossy().to_string();
        let mnt = mount.to_string_lossy().to_string();
        let made = (|| {
            run(
                &["truncate", "-s", size, &img],
                &format!("making the scratch image {img} of size {size:?}"),
            )?;
            run(
                &["mkfs.ext4", "-q", "-F", "-O", "has_journal", &img],
                &format!("mkfs.ext4 of the scratch image {img}"),
            )?;
            run(
                &["mount", "-t", "ext4", "-o", "loop", &img, &mnt],
                &format!("mounting the scratch image {img} on {mnt}"),
            )
        })();
        if let Err(e) = made {
            let _ = fs::remove_file(image);
            return Err(e);
        }
        Ok(Scratch {
            image: image.to_path_buf(),
            mount: mount.to_path_buf(),
        })
    }

    /// Where it is mounted.
    pub fn mount(&self) -> &Path {
        &self.mount
    }

    /// The image file.
    pub fn image(&self) -> &Path {
        &self.image
    }

    /// Unmounts it (lazily when it is still busy: the loop device goes with the last
    /// user) and removes the image; the mount point stays.
    pub fn remove(&self) -> Result<()> {
        let mnt = self.mount.to_string_lossy().to_string();
        if run(&["umount", &mnt], "unmounting the scratch file system").is_err() {
            run(
                &["umount", "-l", &mnt],
                "unmounting the scratch file system (lazily)",
            )?;
        }
        fs::remove_file(&self.image)
            .with_context(|| format!("removing the scratch image {}", self.image.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mounted(p: &Path) -> Option<String> {
        let mi = fs::read_to_string("/proc/self/mountinfo").ok()?;
        let p = p.to_string_lossy().to_string();
        mi.lines()
            .find(|l| l.split(' ').nth(4) == Some(p.as_str()))
            .map(str::to_string)
    }

    /// A temporary directory with the image's path and an empty mount point in it;
    /// `None` (the test is skipped) when not root.
    fn place() -> Option<(tempfile::TempDir, PathBuf, PathBuf)> {
        // SAFETY: geteuid takes nothing and cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("not root: skipped");
            return None;
        }
        let dir = tempfile::tempdir_in("/var/tmp").unwrap();
        let (img, mnt) = (dir.path().join("s.img"), dir.path().join("mnt"));
        fs::create_dir(&mnt).unwrap();
        Some((dir, img, mnt))
    }

    #[test]
    fn a_scratch_file_system_is_a_journaled_ext4_that_goes_without_a_trace() {
        let Some((_dir, img, mnt)) = place() else {
            return;
        };
        let s = Scratch::make(&img, &mnt, "64M").unwrap();
        let line = mounted(&mnt).expect("mounted");
        assert!(line.contains(" - ext4 /dev/loop"), "{line}");
        let dump = Command::new("dumpe2fs")
            .args(["-h"])
            .arg(&img)
            .output()
            .unwrap();
        assert!(
            String::from_utf8_lossy(&dump.stdout).contains("has_journal"),
            "no journal"
        );
        fs::write(mnt.join("f"), b"x").unwrap();
        // Busy: a descriptor inside keeps it; the removal still ends the mount.
        let busy = fs::File::open(mnt.join("f")).unwrap();
        s.remove().unwrap();
        drop(busy);
        assert!(mounted(&mnt).is_none(), "still mounted");
        assert!(!img.exists(), "image left");
        assert!(!mnt.join("f").exists());
    }

    #[test]
    fn a_bad_size_is_named_and_leaves_nothing() {
        let Some((_dir, img, mnt)) = place() else {
            return;
        };
        let e = Scratch::make(&img, &mnt, "12Q").unwrap_err().to_string();
        assert!(e.contains("\"12Q\""), "{e}");
        assert!(!img.exists());
        assert!(mounted(&mnt).is_none());
    }
}
