//! `tmpcopyup`: a tmpfs mounted over a directory of the image starts with that directory's
//! content — files, directories, symlinks, device nodes, fifos — with ownership, modes and
//! timestamps kept, as runc and crun do. The copy works from a descriptor of the directory
//! opened before the tmpfs hid it, and never follows a symlink.

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use nix::dir::Dir;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{fstatat, Mode, SFlag};

use crate::error::{Error, Result};

/// Deepest directory nesting copied; deeper trees are refused rather than recursing on.
const MAX_DEPTH: usize = 256;

fn open_at(dir: BorrowedFd<'_>, name: &std::ffi::CStr, flags: OFlag) -> nix::Result<OwnedFd> {
    let fd = nix::fcntl::openat(
        Some(dir.as_raw_fd()),
        name,
        flags | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    // SAFETY: openat returned a fresh fd we now own.
    Ok(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) })
}

/// Sets owner, mode and times of `name` in `dir` from `st` (the source's stat).
fn copy_meta(
    dir: BorrowedFd<'_>,
    name: &std::ffi::CStr,
    st: &libc::stat,
    link: bool,
) -> nix::Result<()> {
    // Never through a symlink: a link's own owner is set, not its target's.
    nix::unistd::fchownat(
        Some(dir.as_raw_fd()),
        name,
        Some(st.st_uid.into()),
        Some(st.st_gid.into()),
        AtFlags::AT_SYMLINK_NOFOLLOW,
    )?;
    if !link {
        nix::sys::stat::fchmodat(
            Some(dir.as_raw_fd()),
            name,
            Mode::from_bits_truncate(st.st_mode & 0o7777),
            nix::sys::stat::FchmodatFlags::NoFollowSymlink,
        )
        .or_else(|e| {
            // glibc's fchmodat refuses AT_SYMLINK_NOFOLLOW on some versions; the entry is
            // not a symlink (it was created just now), so following is the same thing.
            if e == nix::errno::Errno::EOPNOTSUPP || e == nix::errno::Errno::ENOTSUP {
                nix::sys::stat::fchmodat(
                    Some(dir.as_raw_fd()),
                    name,
                    Mode::from_bits_truncate(st.st_mode & 0o7777),
                    nix::sys::stat::FchmodatFlags::FollowSymlink,
                )
            } else {
                Err(e)
            }
        })?;
    }
    let ts = |s: i64, ns: i64| nix::sys::time::TimeSpec::new(s, ns);
    nix::sys::stat::utimensat(
        Some(dir.as_raw_fd()),
        name,
        &ts(st.st_atime, st.st_atime_nsec),
        &ts(st.st_mtime, st.st_mtime_nsec),
        nix::sys::stat::UtimensatFlags::NoFollowSymlink,
    )?;
    Ok(())
}

/// Copies the content of directory `from` into directory `to`, and `from`'s owner and mode
/// onto `to` unless `keep_root_mode` (a `mode=` option set the tmpfs root's mode).
/// `what` names the mount in errors.
pub fn copy_up(
    from: BorrowedFd<'_>,
    to: BorrowedFd<'_>,
    keep_root_mode: bool,
    what: &str,
) -> Result<()> {
    let err =
        |step: String, e: nix::errno::Errno| Error::nix(format!("tmpcopyup of {what}: {step}"), e);
    let st = nix::sys::stat::fstat(from.as_raw_fd())
        .map_err(|e| err("stat the image's directory".into(), e))?;
    nix::unistd::fchown(
        to.as_raw_fd(),
        Some(st.st_uid.into()),
        Some(st.st_gid.into()),
    )
    .map_err(|e| err("chown the tmpfs root".into(), e))?;
    if !keep_root_mode {
        nix::sys::stat::fchmod(
            to.as_raw_fd(),
            Mode::from_bits_truncate(st.st_mode & 0o7777),
        )
        .map_err(|e| err("chmod the tmpfs root".into(), e))?;
    }
    copy_dir(from, to, 0, &mut String::new()).map_err(|(p, step, e)| err(format!("{step} {p}"), e))
}

type CopyErr = (String, &'static str, nix::errno::Errno);

fn copy_dir(
    from: BorrowedFd<'_>,
    to: BorrowedFd<'_>,
    depth: usize,
    path: &mut String,
) -> std::result::Result<(), CopyErr> {
    if depth > MAX_DEPTH {
        return Err((
            path.clone(),
            "deeper than 256 directories at",
            nix::errno::Errno::ELOOP,
        ));
    }
    let here = path.clone();
    let fail = |step: &'static str, name: &str| {
        let p = format!("{here}/{name}");
        move |e: nix::errno::Errno| (p, step, e)
    };
    let src =
        open_at(from, c".", OFlag::O_RDONLY | OFlag::O_DIRECTORY).map_err(fail("open", ""))?;
    let raw = std::os::fd::IntoRawFd::into_raw_fd(src);
    // Dir owns the fd from here: closed on drop, and by from_fd itself when it fails.
    let mut dir = Dir::from_fd(raw).map_err(fail("list", ""))?;
    let dfd = dir.as_raw_fd();
    // SAFETY: `dir` outlives every use of this borrow below (it is dropped at the end).
    let dborrow = unsafe { BorrowedFd::borrow_raw(dfd) };
    let mut entries = Vec::new();
    for e in dir.iter() {
        let e = e.map_err(fail("list", ""))?;
        let n = e.file_name();
        if n.to_bytes() == b"." || n.to_bytes() == b".." {
            continue;
        }
        entries.push((n.to_owned(), e.file_type()));
    }
    for (name, _t) in entries {
        let shown = name.to_string_lossy().into_owned();
        let st = fstatat(Some(dfd), name.as_c_str(), AtFlags::AT_SYMLINK_NOFOLLOW)
            .map_err(fail("stat", &shown))?;
        let kind = SFlag::from_bits_truncate(st.st_mode & libc::S_IFMT);
        let mode = Mode::from_bits_truncate(st.st_mode & 0o7777);
        match kind {
            SFlag::S_IFDIR => {
                match nix::sys::stat::mkdirat(
                    Some(to.as_raw_fd()),
                    name.as_c_str(),
                    Mode::from_bits_truncate(0o700),
                ) {
                    Ok(()) | Err(nix::errno::Errno::EEXIST) => {}
                    Err(e) => return Err(fail("mkdir", &shown)(e)),
                }
                let sub_from = open_at(dborrow, &name, OFlag::O_RDONLY | OFlag::O_DIRECTORY)
                    .map_err(fail("open", &shown))?;
                let sub_to = open_at(to, &name, OFlag::O_RDONLY | OFlag::O_DIRECTORY)
                    .map_err(fail("open the copy of", &shown))?;
                let len = path.len();
                path.push('/');
                path.push_str(&shown);
                copy_dir(sub_from.as_fd(), sub_to.as_fd(), depth + 1, path)?;
                path.truncate(len);
            }
            SFlag::S_IFREG => {
                let src = open_at(dborrow, &name, OFlag::O_RDONLY).map_err(fail("open", &shown))?;
                let dst = open_at(to, &name, OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL)
                    .map_err(fail("create the copy of", &shown))?;
                let (mut s, mut d) = (File::from(src), File::from(dst));
                std::io::copy(&mut s, &mut d).map_err(|e| {
                    fail("copy", &shown)(nix::errno::Errno::from_raw(
                        e.raw_os_error().unwrap_or(libc::EIO),
                    ))
                })?;
            }
            SFlag::S_IFLNK => {
                let target = nix::fcntl::readlinkat(Some(dfd), name.as_c_str())
                    .map_err(fail("readlink", &shown))?;
                nix::unistd::symlinkat(target.as_os_str(), Some(to.as_raw_fd()), name.as_c_str())
                    .map_err(fail("symlink", &shown))?;
            }
            SFlag::S_IFCHR | SFlag::S_IFBLK | SFlag::S_IFIFO | SFlag::S_IFSOCK => {
                nix::sys::stat::mknodat(
                    Some(to.as_raw_fd()),
                    name.as_c_str(),
                    kind,
                    mode,
                    st.st_rdev,
                )
                .map_err(fail("mknod", &shown))?;
            }
            _ => continue,
        }
        copy_meta(to, &name, &st, kind == SFlag::S_IFLNK)
            .map_err(fail("set owner, mode and times of", &shown))?;
    }
    drop(dir);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    #[test]
    fn copies_files_dirs_symlinks_and_modes() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(a.path().join("d/e")).unwrap();
        std::fs::write(a.path().join("d/e/f"), b"hello").unwrap();
        std::fs::set_permissions(
            a.path().join("d/e/f"),
            std::fs::Permissions::from_mode(0o640),
        )
        .unwrap();
        std::fs::set_permissions(a.path().join("d"), std::fs::Permissions::from_mode(0o711))
            .unwrap();
        std::os::unix::fs::symlink("../outside", a.path().join("d/link")).unwrap();
        std::fs::set_permissions(a.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
        let fa = File::open(a.path()).unwrap();
        let fb = File::open(b.path()).unwrap();
        copy_up(fa.as_fd(), fb.as_fd(), false, "test").unwrap();
        assert_eq!(std::fs::read(b.path().join("d/e/f")).unwrap(), b"hello");
        let m = |p: &str| std::fs::symlink_metadata(b.path().join(p)).unwrap();
        assert_eq!(m("d/e/f").mode() & 0o7777, 0o640);
        assert_eq!(m("d").mode() & 0o7777, 0o711);
        assert_eq!(m(".").mode() & 0o7777, 0o1777);
        assert_eq!(
            std::fs::read_link(b.path().join("d/link")).unwrap(),
            std::path::Path::new("../outside")
        );
        assert_eq!(
            m("d/e/f").mtime(),
            std::fs::metadata(a.path().join("d/e/f")).unwrap().mtime()
        );
    }
}
