//! Paths resolved inside a directory taken as the root (`openat2` with
//! RESOLVE_IN_ROOT): `..` and absolute symlinks stay beneath it, magic links are refused,
//! so a tree a container can change cannot lead the host out of it.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// Opens `path` (absolute or relative: both from `root`) resolved inside `root`, with
/// `flags` (O_CLOEXEC added).
pub fn open_in_root(root: BorrowedFd<'_>, path: &str, flags: i32) -> io::Result<OwnedFd> {
    let rel = path.trim_start_matches('/');
    let rel = if rel.is_empty() { "." } else { rel };
    let c = CString::new(rel).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: all-zero is a valid open_how.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (flags | libc::O_CLOEXEC) as u64;
    how.resolve = libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS;
    loop {
        // SAFETY: valid directory descriptor, string and open_how for the call.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                root.as_raw_fd(),
                c.as_ptr(),
                &how as *const libc::open_how,
                std::mem::size_of::<libc::open_how>(),
            )
        };
        if fd >= 0 {
            // SAFETY: a new descriptor we own.
            return Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) });
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EAGAIN) && e.raw_os_error() != Some(libc::EINTR) {
            return Err(e);
        }
    }
}

/// The directory `path` inside `root` as an O_PATH descriptor, made (mode `mode`, owned
/// by the caller) with every missing component. Each component must be a real directory
/// (a symlink is refused with ELOOP or ENOTDIR, `..` with EINVAL), so every step stays
/// beneath `root` whatever the tree holds.
pub fn mkdir_in_root(root: BorrowedFd<'_>, path: &str, mode: u32) -> io::Result<OwnedFd> {
    let flags = libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    let mut dir = open_in_root(root, "/", libc::O_PATH | libc::O_DIRECTORY)?;
    for comp in path.split('/').filter(|c| !c.is_empty() && *c != ".") {
        if comp == ".." {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        let name = CString::new(comp).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: valid directory descriptor and name.
        let r = unsafe { libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), mode as libc::mode_t) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EEXIST) {
                return Err(e);
            }
        }
        // SAFETY: valid directory descriptor and name; O_NOFOLLOW refuses a symlink.
        let fd = unsafe { libc::openat(dir.as_raw_fd(), name.as_ptr(), flags) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a new descriptor we own.
        dir = unsafe { OwnedFd::from_raw_fd(fd) };
    }
    Ok(dir)
}

/// The regular file `path` inside `root` as an O_PATH descriptor, made empty (mode `mode`)
/// when missing, its directories with it (mode 0755, see [`mkdir_in_root`]). A symlink
/// as the last component is refused.
pub fn create_file_in_root(root: BorrowedFd<'_>, path: &str, mode: u32) -> io::Result<OwnedFd> {
    let path = path.trim_end_matches('/');
    let (dir, name) = path.rsplit_once('/').unwrap_or(("", path));
    if name.is_empty() || name == "." || name == ".." {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    let dir = mkdir_in_root(root, dir, 0o755)?;
    let name = CString::new(name).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let open_path = || {
        // SAFETY: valid directory descriptor and name; O_NOFOLLOW: a symlink is not followed.
        let fd = unsafe {
            libc::openat(
                dir.as_raw_fd(),
                name.as_ptr(),
                libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a new descriptor we own.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    };
    let file = match open_path() {
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
            // SAFETY: as above; O_EXCL makes a new file or fails.
            let fd = unsafe {
                libc::openat(
                    dir.as_raw_fd(),
                    name.as_ptr(),
                    libc::O_CREAT
                        | libc::O_EXCL
                        | libc::O_WRONLY
                        | libc::O_NOFOLLOW
                        | libc::O_CLOEXEC,
                    mode as libc::c_uint,
                )
            };
            if fd < 0 {
                let e = io::Error::last_os_error();
                if e.raw_os_error() != Some(libc::EEXIST) {
                    return Err(e);
                }
            } else {
                // SAFETY: closing the descriptor just made.
                unsafe { libc::close(fd) };
            }
            open_path()?
        }
        r => r?,
    };
    if nix_free_fstat(file.as_raw_fd())? & libc::S_IFMT != libc::S_IFREG {
        return Err(io::Error::from_raw_os_error(libc::EEXIST));
    }
    Ok(file)
}

/// The st_mode of `fd`.
fn nix_free_fstat(fd: std::os::fd::RawFd) -> io::Result<u32> {
    // SAFETY: all-zero is a valid stat buffer, filled by the call.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: a valid descriptor and buffer.
    if unsafe { libc::fstat(fd, &mut st) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st.st_mode)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn resolution_stays_inside_the_root() {
        let t = std::env::temp_dir().join(format!("porta-sys-path-{}", std::process::id()));
        let root = t.join("root");
        std::fs::create_dir_all(root.join("d")).unwrap();
        std::fs::write(t.join("outside"), b"x").unwrap();
        std::os::unix::fs::symlink("/../../outside", root.join("d/up")).unwrap();
        std::os::unix::fs::symlink("/d", root.join("link")).unwrap();
        let r = std::fs::File::open(&root).unwrap();
        // An absolute symlink climbing out resolves inside: nothing there.
        let e = open_in_root(r.as_fd(), "/d/up", libc::O_RDONLY).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOENT));
        assert!(open_in_root(r.as_fd(), "../../d", libc::O_PATH).is_ok());
        // mkdir_in_root makes what is missing and refuses symlinks and "..".
        mkdir_in_root(r.as_fd(), "/a/b/c", 0o755).unwrap();
        assert!(root.join("a/b/c").is_dir());
        assert!(mkdir_in_root(r.as_fd(), "/link/x", 0o755).is_err());
        assert!(!root.join("d/x").exists());
        assert_eq!(
            mkdir_in_root(r.as_fd(), "/a/../x", 0o755)
                .unwrap_err()
                .raw_os_error(),
            Some(libc::EINVAL)
        );
        std::fs::remove_dir_all(&t).unwrap();
    }
}
