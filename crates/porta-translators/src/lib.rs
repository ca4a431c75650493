//! Porta's built-in translators: file systems written in Porta that a container attaches
//! to one of its nodes by name (`porta:memfs`, `porta:view`, `porta:tar`).
//!
//! The supervisor starts a built-in in a forked process that has entered the container's
//! namespaces and dropped to the node owner's credentials (no capabilities, no_new_privs,
//! a seccomp filter). That process calls [`Builtin::parse`], [`Builtin::prepare`] and
//! [`Prepared::serve`] with one end of a `SOCK_SEQPACKET` socket on which the container's
//! file server speaks the FUSE protocol exactly as `/dev/fuse` does. Nothing here needs
//! privilege: no `/dev/fuse`, no mount, no root.

/// The `fuser::Filesystem` methods of a read-only file system that would change its tree
/// (mknod, mkdir, unlink, rmdir, symlink, rename, link): each answers EROFS.
#[macro_export]
#[doc(hidden)]
macro_rules! refuse_tree_changes {
    () => {
        fn mknod(
            &self,
            _req: &Request,
            _parent: INodeNo,
            _name: &OsStr,
            _mode: u32,
            _umask: u32,
            _rdev: u32,
            reply: ReplyEntry,
        ) {
            reply.error(Errno::EROFS)
        }

        fn mkdir(
            &self,
            _req: &Request,
            _parent: INodeNo,
            _name: &OsStr,
            _mode: u32,
            _umask: u32,
            reply: ReplyEntry,
        ) {
            reply.error(Errno::EROFS)
        }

        fn unlink(&self, _req: &Request, _parent: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
            reply.error(Errno::EROFS)
        }

        fn rmdir(&self, _req: &Request, _parent: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
            reply.error(Errno::EROFS)
        }

        fn symlink(
            &self,
            _req: &Request,
            _parent: INodeNo,
            _link_name: &OsStr,
            _target: &Path,
            reply: ReplyEntry,
        ) {
            reply.error(Errno::EROFS)
        }

        fn rename(
            &self,
            _req: &Request,
            _parent: INodeNo,
            _name: &OsStr,
            _newparent: INodeNo,
            _newname: &OsStr,
            _flags: RenameFlags,
            reply: ReplyEmpty,
        ) {
            reply.error(Errno::EROFS)
        }

        fn link(
            &self,
            _req: &Request,
            _ino: INodeNo,
            _newparent: INodeNo,
            _newname: &OsStr,
            reply: ReplyEntry,
        ) {
            reply.error(Errno::EROFS)
        }
    };
}

mod error;
pub mod file;
mod memfs;
mod session;
mod sys;
mod tarfs;
mod view;

use std::path::PathBuf;

pub use error::Error;

/// The names of the built-ins, in the order shown in help text.
const NAMES: &[&str] = &["memfs", "view", "tar"];

/// A built-in translator chosen by name, with its arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Builtin {
    /// `memfs [size=BYTES] [mode=OCTAL]`: an in-memory POSIX file system.
    Memfs {
        /// The most bytes the file system holds (file data, symlink targets, xattrs);
        /// `None`: half of the machine's physical memory, as tmpfs.
        size: Option<u64>,
        /// Permission bits of the root directory (default 0755).
        mode: u32,
    },
    /// `view DIR`: a read-only view of another directory of the container.
    View {
        /// The directory shown, relative to the current directory at `prepare`.
        dir: PathBuf,
    },
    /// `tar ARCHIVE`: a tar archive (plain, gzip or zstd) served read-only as an OCI layer.
    Tar {
        /// The archive, relative to the current directory at `prepare`.
        archive: PathBuf,
    },
}

/// A built-in whose directory or archive is open, ready to serve.
#[derive(Debug)]
pub struct Prepared {
    inner: PreparedInner,
}

#[derive(Debug)]
enum PreparedInner {
    Memfs(memfs::MemFs),
    View(view::View),
    Tar(tarfs::TarFs),
}

impl Builtin {
    /// Parses `name args...` as recorded on a node (name without any prefix: "memfs",
    /// "view", "tar"); a clear Error naming the bad argument otherwise.
    pub fn parse(name: &str, args: &[String]) -> Result<Builtin, Error> {
        match name {
            "memfs" => parse_memfs(args),
            "view" => Ok(Builtin::View {
                dir: one_path("view", "DIR", args)?,
            }),
            "tar" => Ok(Builtin::Tar {
                archive: one_path("tar", "ARCHIVE", args)?,
            }),
            _ => Err(Error::UnknownBuiltin {
                name: name.to_owned(),
                known: NAMES.join(", "),
            }),
        }
    }

    /// Names of the built-ins, for help text and errors.
    pub fn names() -> &'static [&'static str] {
        NAMES
    }

    /// Opens what it serves (the directory, the archive) now, relative to the current
    /// directory, so errors show before serving; called before `serve`.
    pub fn prepare(self) -> Result<Prepared, Error> {
        let inner = match self {
            Builtin::Memfs { size, mode } => {
                let limit = match size {
                    Some(size) => size,
                    None => memfs::default_size()?,
                };
                PreparedInner::Memfs(memfs::MemFs::new(limit, mode))
            }
            Builtin::View { dir } => PreparedInner::View(view::View::open(&dir)?),
            Builtin::Tar { archive } => PreparedInner::Tar(tarfs::TarFs::open(&archive)?),
        };
        Ok(Prepared { inner })
    }
}

impl Prepared {
    /// Serves FUSE requests on `fuse` until the peer closes it (then Ok) or a fatal error.
    pub fn serve(self, fuse: std::os::fd::OwnedFd) -> Result<(), Error> {
        match self.inner {
            PreparedInner::Memfs(fs) => session::serve("memfs", fs, fuse),
            PreparedInner::View(fs) => session::serve("view", fs, fuse),
            PreparedInner::Tar(fs) => session::serve("tar", fs, fuse),
        }
    }
}

const MEMFS_USAGE: &str = "memfs [size=BYTES[k|m|g]] [mode=OCTAL]";

fn parse_memfs(args: &[String]) -> Result<Builtin, Error> {
    let mut size = None;
    let mut mode = None;
    for arg in args {
        let bad = |reason: String| Error::BadArgument {
            builtin: "memfs",
            arg: arg.clone(),
            reason,
        };
        let Some((key, value)) = arg.split_once('=') else {
            return Err(bad(format!("expected KEY=VALUE (usage: {MEMFS_USAGE})")));
        };
        match key {
            "size" => {
                if size.is_some() {
                    return Err(bad("size given twice".into()));
                }
                size = Some(parse_size(value).map_err(bad)?);
            }
            "mode" => {
                if mode.is_some() {
                    return Err(bad("mode given twice".into()));
                }
                let m = u32::from_str_radix(value, 8)
                    .map_err(|_| bad(format!("mode {value:?} is not an octal number")))?;
                if value.is_empty() || m > 0o7777 {
                    return Err(bad(format!("mode {value:?} is not within 0..7777")));
                }
                mode = Some(m);
            }
            _ => {
                return Err(bad(format!(
                    "unknown option {key:?} (usage: {MEMFS_USAGE})"
                )))
            }
        }
    }
    Ok(Builtin::Memfs {
        size,
        mode: mode.unwrap_or(0o755),
    })
}

/// Parses `BYTES` with an optional binary suffix k, m, g (either case).
fn parse_size(value: &str) -> Result<u64, String> {
    let (digits, shift) = match value.as_bytes().last() {
        Some(b'k' | b'K') => (&value[..value.len() - 1], 10),
        Some(b'm' | b'M') => (&value[..value.len() - 1], 20),
        Some(b'g' | b'G') => (&value[..value.len() - 1], 30),
        _ => (value, 0),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("size {value:?} is not a number of bytes (k, m, g suffixes)"))?;
    let bytes = n
        .checked_mul(1u64 << shift)
        .ok_or_else(|| format!("size {value:?} is too large"))?;
    if bytes == 0 {
        return Err("size must be more than 0 bytes".into());
    }
    Ok(bytes)
}

fn one_path(builtin: &'static str, what: &'static str, args: &[String]) -> Result<PathBuf, Error> {
    match args {
        [one] if !one.is_empty() => Ok(PathBuf::from(one)),
        [one] => Err(Error::BadArgument {
            builtin,
            arg: one.clone(),
            reason: format!("{what} is empty"),
        }),
        [] => Err(Error::Usage {
            builtin,
            reason: format!("{what} is missing"),
            usage: usage(builtin),
        }),
        [_, extra, ..] => Err(Error::BadArgument {
            builtin,
            arg: extra.clone(),
            reason: format!("takes only {what} (usage: {})", usage(builtin)),
        }),
    }
}

fn usage(builtin: &str) -> &'static str {
    match builtin {
        "view" => "view DIR",
        "tar" => "tar ARCHIVE",
        _ => MEMFS_USAGE,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn parses_memfs() {
        assert_eq!(
            Builtin::parse("memfs", &[]).unwrap(),
            Builtin::Memfs {
                size: None,
                mode: 0o755
            }
        );
        assert_eq!(
            Builtin::parse("memfs", &s(&["size=64M", "mode=1777"])).unwrap(),
            Builtin::Memfs {
                size: Some(64 << 20),
                mode: 0o1777
            }
        );
        assert_eq!(
            Builtin::parse("memfs", &s(&["size=4096"])).unwrap(),
            Builtin::Memfs {
                size: Some(4096),
                mode: 0o755
            }
        );
    }

    #[test]
    fn refuses_bad_arguments_naming_them() {
        for (name, args, needle) in [
            ("memfs", vec!["size=lots"], "size=lots"),
            ("memfs", vec!["size=0"], "size=0"),
            ("memfs", vec!["mode=999"], "mode=999"),
            ("memfs", vec!["mode=17777"], "mode=17777"),
            ("memfs", vec!["colour=red"], "colour"),
            ("memfs", vec!["size=1k", "size=2k"], "twice"),
            ("memfs", vec!["size"], "KEY=VALUE"),
            ("view", vec![], "DIR is missing"),
            ("view", vec!["a", "b"], "\"b\""),
            ("tar", vec![""], "ARCHIVE is empty"),
            ("zip", vec![], "memfs, view, tar"),
        ] {
            let err = Builtin::parse(name, &s(&args)).unwrap_err().to_string();
            assert!(err.contains(needle), "{name} {args:?}: {err}");
        }
    }

    #[test]
    fn names_are_the_parseable_ones() {
        assert_eq!(Builtin::names(), &["memfs", "view", "tar"]);
        assert!(Builtin::parse("view", &s(&["/x"])).is_ok());
        assert!(Builtin::parse("tar", &s(&["/x.tar"])).is_ok());
    }
}
