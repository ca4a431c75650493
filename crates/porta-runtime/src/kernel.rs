//! The kernel seam: the system calls that build a container's root file system and set up
//! its process (mount, umount, pivot_root, chroot, mknod, chown/chmod of device nodes,
//! symlink, move_mount, mount_setattr, setns, sethostname, setdomainname), behind one
//! trait. [`LinuxKernel`] makes the calls; in unit tests a recording double (`Recorder`)
//! keeps them instead, so that what the root file system and init code ask of the kernel
//! for a given config can be checked without root. Calls that only read or that make
//! ordinary files (openat2, mkdirat, stat) stay direct: they work unprivileged on a
//! scratch directory.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::path::Path;

use nix::mount::{MntFlags, MsFlags};
use nix::sys::stat::{Mode, SFlag};

use crate::sys;

/// The system calls that change mounts, roots, device nodes or the process's namespaces.
/// Every path is passed as the caller means it (often `/proc/self/fd/N` of an opened
/// target); errors are the kernel's, the caller adds what it was doing.
pub(crate) trait Kernel {
    /// mount(2).
    fn mount(
        &self,
        source: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> nix::Result<()>;
    /// umount2(2).
    fn umount2(&self, target: &Path, flags: MntFlags) -> nix::Result<()>;
    /// pivot_root(2).
    fn pivot_root(&self, new_root: &Path, put_old: &Path) -> nix::Result<()>;
    /// chdir(2).
    fn chdir(&self, path: &Path) -> nix::Result<()>;
    /// fchdir(2).
    fn fchdir(&self, dir: BorrowedFd<'_>) -> nix::Result<()>;
    /// chroot(2).
    fn chroot(&self, path: &Path) -> nix::Result<()>;
    /// mknodat(2) of `name` in `dir`.
    fn mknodat(
        &self,
        dir: BorrowedFd<'_>,
        name: &str,
        kind: SFlag,
        perm: Mode,
        dev: u64,
    ) -> nix::Result<()>;
    /// fchownat(2) of `name` in `dir`, not following a symlink.
    fn fchownat(&self, dir: BorrowedFd<'_>, name: &str, uid: u32, gid: u32) -> nix::Result<()>;
    /// fchmodat(2) of `name` in `dir`.
    fn fchmodat(&self, dir: BorrowedFd<'_>, name: &str, mode: Mode) -> nix::Result<()>;
    /// symlinkat(2): `name` in `dir` pointing at `target`.
    fn symlinkat(&self, target: &Path, dir: BorrowedFd<'_>, name: &Path) -> nix::Result<()>;
    /// move_mount(2) of the detached mount `mount_fd` onto the path `target`.
    fn move_mount_onto(&self, mount_fd: BorrowedFd<'_>, target: &Path) -> io::Result<()>;
    /// move_mount(2) of the detached mount `from` onto what `to` is open on.
    fn attach(&self, from: BorrowedFd<'_>, to: BorrowedFd<'_>) -> io::Result<()>;
    /// mount_setattr(2) on the mount `fd` is open on (`AT_RECURSIVE` with `recursive`).
    fn mount_setattr(
        &self,
        fd: BorrowedFd<'_>,
        recursive: bool,
        set: u64,
        clr: u64,
    ) -> io::Result<()>;
    /// setns(2).
    fn setns(&self, fd: BorrowedFd<'_>, nstype: i32) -> io::Result<()>;
    /// sethostname(2).
    fn sethostname(&self, name: &str) -> nix::Result<()>;
    /// setdomainname(2).
    fn setdomainname(&self, name: &str) -> io::Result<()>;
}

impl dyn Kernel + '_ {
    /// [`Kernel::mount`] taking anything path-like, as `nix::mount::mount` does.
    pub(crate) fn mnt<S: AsRef<Path> + ?Sized, T: AsRef<Path> + ?Sized>(
        &self,
        source: Option<&S>,
        target: &T,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> nix::Result<()> {
        self.mount(
            source.map(|s| s.as_ref()),
            target.as_ref(),
            fstype,
            flags,
            data,
        )
    }

    /// [`Kernel::umount2`] taking anything path-like.
    pub(crate) fn umnt<T: AsRef<Path> + ?Sized>(
        &self,
        target: &T,
        flags: MntFlags,
    ) -> nix::Result<()> {
        self.umount2(target.as_ref(), flags)
    }
}

/// The kernel itself.
pub(crate) struct LinuxKernel;

impl Kernel for LinuxKernel {
    fn mount(
        &self,
        source: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> nix::Result<()> {
        nix::mount::mount(source, target, fstype, flags, data)
    }

    fn umount2(&self, target: &Path, flags: MntFlags) -> nix::Result<()> {
        nix::mount::umount2(target, flags)
    }

    fn pivot_root(&self, new_root: &Path, put_old: &Path) -> nix::Result<()> {
        nix::unistd::pivot_root(new_root, put_old)
    }

    fn chdir(&self, path: &Path) -> nix::Result<()> {
        nix::unistd::chdir(path)
    }

    fn fchdir(&self, dir: BorrowedFd<'_>) -> nix::Result<()> {
        nix::unistd::fchdir(dir.as_raw_fd())
    }

    fn chroot(&self, path: &Path) -> nix::Result<()> {
        nix::unistd::chroot(path)
    }

    fn mknodat(
        &self,
        dir: BorrowedFd<'_>,
        name: &str,
        kind: SFlag,
        perm: Mode,
        dev: u64,
    ) -> nix::Result<()> {
        nix::sys::stat::mknodat(Some(dir.as_raw_fd()), name, kind, perm, dev)
    }

    fn fchownat(&self, dir: BorrowedFd<'_>, name: &str, uid: u32, gid: u32) -> nix::Result<()> {
        nix::unistd::fchownat(
            Some(dir.as_raw_fd()),
            name,
            Some(uid.into()),
            Some(gid.into()),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        )
    }

    fn fchmodat(&self, dir: BorrowedFd<'_>, name: &str, mode: Mode) -> nix::Result<()> {
        nix::sys::stat::fchmodat(
            Some(dir.as_raw_fd()),
            name,
            mode,
            nix::sys::stat::FchmodatFlags::FollowSymlink,
        )
    }

    fn symlinkat(&self, target: &Path, dir: BorrowedFd<'_>, name: &Path) -> nix::Result<()> {
        nix::unistd::symlinkat(target, Some(dir.as_raw_fd()), name)
    }

    fn move_mount_onto(&self, mount_fd: BorrowedFd<'_>, target: &Path) -> io::Result<()> {
        let t = CString::new(target.as_os_str().as_encoded_bytes())
            .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        porta_sys::mount_api::move_mount_to(mount_fd, &t)
    }

    fn attach(&self, from: BorrowedFd<'_>, to: BorrowedFd<'_>) -> io::Result<()> {
        use porta_sys::mount_api::{move_mount, MOVE_MOUNT_F_EMPTY_PATH, MOVE_MOUNT_T_EMPTY_PATH};
        move_mount(
            from.as_raw_fd(),
            c"",
            to.as_raw_fd(),
            c"",
            MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH,
        )
    }

    fn mount_setattr(
        &self,
        fd: BorrowedFd<'_>,
        recursive: bool,
        set: u64,
        clr: u64,
    ) -> io::Result<()> {
        use porta_sys::mount_api::{MountAttr, AT_RECURSIVE};
        let mut flags = libc::AT_EMPTY_PATH as u32;
        if recursive {
            flags |= AT_RECURSIVE;
        }
        let attr = MountAttr {
            attr_set: set,
            attr_clr: clr,
            ..Default::default()
        };
        porta_sys::mount_api::mount_setattr(fd.as_raw_fd(), c"", flags, &attr)
    }

    fn setns(&self, fd: BorrowedFd<'_>, nstype: i32) -> io::Result<()> {
        sys::setns(fd, nstype)
    }

    fn sethostname(&self, name: &str) -> nix::Result<()> {
        nix::unistd::sethostname(name)
    }

    fn setdomainname(&self, name: &str) -> io::Result<()> {
        let c = CString::new(name).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: c is a valid buffer of the given length for the duration of the call.
        if unsafe { libc::setdomainname(c.as_ptr(), name.len()) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod recorder {
    //! The recording test double of [`Kernel`].

    use std::cell::RefCell;
    use std::path::PathBuf;

    use super::*;

    /// One call made to the kernel seam. Paths of `/proc/self/fd/N` and fds are resolved
    /// to the file they name, and shown relative to the recorder's root (`/dev/null`
    /// for `<root>/dev/null`) when they lie beneath it.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub(crate) enum Call {
        Mount {
            source: Option<String>,
            target: String,
            fstype: Option<String>,
            flags: MsFlags,
            data: Option<String>,
        },
        Umount2(String, MntFlags),
        PivotRoot(String, String),
        Chdir(String),
        Fchdir(String),
        Chroot(String),
        Mknod {
            path: String,
            kind: SFlag,
            perm: u32,
            major: u64,
            minor: u64,
        },
        Chown(String, u32, u32),
        Chmod(String, u32),
        Symlink {
            path: String,
            target: String,
        },
        MoveMount(String),
        Attach(String),
        MountSetattr {
            path: String,
            recursive: bool,
            set: u64,
            clr: u64,
        },
        Setns(i32),
        Sethostname(String),
        Setdomainname(String),
    }

    /// Which call fails, and with what.
    type Failure = (Box<dyn Fn(&Call) -> bool>, nix::errno::Errno);

    /// Records every call; fails those a rule given to [`Recorder::fail`] picks.
    pub(crate) struct Recorder {
        root: PathBuf,
        calls: RefCell<Vec<Call>>,
        failures: RefCell<Vec<Failure>>,
    }

    impl Recorder {
        /// A recorder whose paths are shown relative to `root`.
        pub(crate) fn new(root: &Path) -> Recorder {
            Recorder {
                root: root.canonicalize().unwrap_or_else(|_| root.to_path_buf()),
                calls: RefCell::new(Vec::new()),
                failures: RefCell::new(Vec::new()),
            }
        }

        /// Makes every later call that `pick` matches fail with `errno` (still recorded).
        pub(crate) fn fail(
            &self,
            pick: impl Fn(&Call) -> bool + 'static,
            errno: nix::errno::Errno,
        ) {
            self.failures.borrow_mut().push((Box::new(pick), errno));
        }

        /// The calls so far.
        pub(crate) fn calls(&self) -> Vec<Call> {
            self.calls.borrow().clone()
        }

        fn show(&self, p: &Path) -> String {
            let real = if p.starts_with("/proc/self/fd") {
                std::fs::read_link(p).unwrap_or_else(|_| p.to_path_buf())
            } else {
                p.to_path_buf()
            };
            match real.strip_prefix(&self.root) {
                Ok(r) => format!("/{}", r.display()),
                Err(_) => real.display().to_string(),
            }
        }

        fn fd(&self, fd: BorrowedFd<'_>) -> String {
            self.show(Path::new(&format!("/proc/self/fd/{}", fd.as_raw_fd())))
        }

        fn at(&self, dir: BorrowedFd<'_>, name: impl AsRef<Path>) -> String {
            let d = self.fd(dir);
            Path::new(&d).join(name).display().to_string()
        }

        fn record(&self, c: Call) -> nix::Result<()> {
            let e = self
                .failures
                .borrow()
                .iter()
                .find(|(pick, _)| pick(&c))
                .map(|(_, e)| *e);
            self.calls.borrow_mut().push(c);
            match e {
                Some(e) => Err(e),
                None => Ok(()),
            }
        }
    }

    impl Kernel for Recorder {
        fn mount(
            &self,
            source: Option<&Path>,
            target: &Path,
            fstype: Option<&str>,
            flags: MsFlags,
            data: Option<&str>,
        ) -> nix::Result<()> {
            self.record(Call::Mount {
                source: source.map(|s| self.show(s)),
                target: self.show(target),
                fstype: fstype.map(str::to_string),
                flags,
                data: data.map(str::to_string),
            })
        }

        fn umount2(&self, target: &Path, flags: MntFlags) -> nix::Result<()> {
            self.record(Call::Umount2(self.show(target), flags))
        }

        fn pivot_root(&self, new_root: &Path, put_old: &Path) -> nix::Result<()> {
            self.record(Call::PivotRoot(self.show(new_root), self.show(put_old)))
        }

        fn chdir(&self, path: &Path) -> nix::Result<()> {
            self.record(Call::Chdir(self.show(path)))
        }

        fn fchdir(&self, dir: BorrowedFd<'_>) -> nix::Result<()> {
            self.record(Call::Fchdir(self.fd(dir)))
        }

        fn chroot(&self, path: &Path) -> nix::Result<()> {
            self.record(Call::Chroot(self.show(path)))
        }

        fn mknodat(
            &self,
            dir: BorrowedFd<'_>,
            name: &str,
            kind: SFlag,
            perm: Mode,
            dev: u64,
        ) -> nix::Result<()> {
            self.record(Call::Mknod {
                path: self.at(dir, name),
                kind,
                perm: perm.bits(),
                major: nix::sys::stat::major(dev),
                minor: nix::sys::stat::minor(dev),
            })
        }

        fn fchownat(&self, dir: BorrowedFd<'_>, name: &str, uid: u32, gid: u32) -> nix::Result<()> {
            self.record(Call::Chown(self.at(dir, name), uid, gid))
        }

        fn fchmodat(&self, dir: BorrowedFd<'_>, name: &str, mode: Mode) -> nix::Result<()> {
            self.record(Call::Chmod(self.at(dir, name), mode.bits()))
        }

        fn symlinkat(&self, target: &Path, dir: BorrowedFd<'_>, name: &Path) -> nix::Result<()> {
            self.record(Call::Symlink {
                path: self.at(dir, name),
                target: target.display().to_string(),
            })
        }

        fn move_mount_onto(&self, _mount_fd: BorrowedFd<'_>, target: &Path) -> io::Result<()> {
            Ok(self.record(Call::MoveMount(self.show(target)))?)
        }

        fn attach(&self, _from: BorrowedFd<'_>, to: BorrowedFd<'_>) -> io::Result<()> {
            Ok(self.record(Call::Attach(self.fd(to)))?)
        }

        fn mount_setattr(
            &self,
            fd: BorrowedFd<'_>,
            recursive: bool,
            set: u64,
            clr: u64,
        ) -> io::Result<()> {
            Ok(self.record(Call::MountSetattr {
                path: self.fd(fd),
                recursive,
                set,
                clr,
            })?)
        }

        fn setns(&self, _fd: BorrowedFd<'_>, nstype: i32) -> io::Result<()> {
            Ok(self.record(Call::Setns(nstype))?)
        }

        fn sethostname(&self, name: &str) -> nix::Result<()> {
            self.record(Call::Sethostname(name.to_string()))
        }

        fn setdomainname(&self, name: &str) -> io::Result<()> {
            if name.contains('\0') {
                return Err(io::Error::from_raw_os_error(libc::EINVAL));
            }
            Ok(self.record(Call::Setdomainname(name.to_string()))?)
        }
    }
}
