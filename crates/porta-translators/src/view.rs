//! `porta:view DIR`: a read-only view of another directory of the container.
//!
//! DIR is opened `O_PATH` at prepare. Every node is then reached one name at a time from
//! its parent's `O_PATH` descriptor with `openat2(RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)`
//! and `O_NOFOLLOW`: symlinks are served as symlinks and never followed, so nothing outside
//! DIR is reachable through the view. Reads reopen the node from its parent the same way
//! and check it is still the same inode. Every change is refused with EROFS.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, FopenFlags, Generation, INodeNo, OpenFlags, RenameFlags,
    ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen,
    ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use nix::fcntl::OFlag;

use crate::sys;
use crate::Error;

/// The directory shown may change under the view: attributes are cached briefly.
const TTL: Duration = Duration::from_secs(1);
/// FUSE node ids given out for inodes that cannot keep their own number.
const SYNTHETIC: u64 = 1 << 63;

#[derive(Debug)]
struct Node {
    /// `O_PATH | O_NOFOLLOW` descriptor of the node.
    fd: Arc<OwnedFd>,
    /// Its parent's descriptor and its name there (from the latest lookup), to reopen it.
    parent: Option<(Arc<OwnedFd>, OsString)>,
    key: (u64, u64),
    lookups: u64,
}

#[derive(Debug)]
enum Handle {
    File(File),
    Dir(Vec<(u64, FileType, OsString)>),
}

#[derive(Debug)]
struct State {
    nodes: HashMap<u64, Node>,
    /// Node ids handed out for (device, inode) pairs that cannot use their inode number.
    synthetic: HashMap<(u64, u64), u64>,
    next_synthetic: u64,
    handles: HashMap<u64, Handle>,
    next_fh: u64,
}

/// The view file system.
#[derive(Debug)]
pub(crate) struct View {
    root_key: (u64, u64),
    state: Mutex<State>,
}

type Res<T> = Result<T, Errno>;

fn kind_of(mode: u32) -> FileType {
    match mode & libc::S_IFMT {
        libc::S_IFDIR => FileType::Directory,
        libc::S_IFLNK => FileType::Symlink,
        libc::S_IFIFO => FileType::NamedPipe,
        libc::S_IFSOCK => FileType::Socket,
        libc::S_IFCHR => FileType::CharDevice,
        libc::S_IFBLK => FileType::BlockDevice,
        _ => FileType::RegularFile,
    }
}

fn kind_of_dtype(t: Option<nix::dir::Type>) -> FileType {
    use nix::dir::Type;
    match t {
        Some(Type::Directory) => FileType::Directory,
        Some(Type::Symlink) => FileType::Symlink,
        Some(Type::Fifo) => FileType::NamedPipe,
        Some(Type::Socket) => FileType::Socket,
        Some(Type::CharacterDevice) => FileType::CharDevice,
        Some(Type::BlockDevice) => FileType::BlockDevice,
        _ => FileType::RegularFile,
    }
}

fn timestamp(sec: i64, nsec: i64) -> SystemTime {
    if sec >= 0 {
        UNIX_EPOCH + Duration::new(sec as u64, nsec as u32)
    } else {
        UNIX_EPOCH - Duration::from_secs(sec.unsigned_abs()) + Duration::from_nanos(nsec as u64)
    }
}

/// The new-style (32-bit) device number encoding FUSE carries.
fn encode_dev(rdev: u64) -> u32 {
    let major = libc::major(rdev);
    let minor = libc::minor(rdev);
    (minor & 0xff) | ((major & 0xfff) << 8) | ((minor & !0xff) << 12)
}

fn attr_of(ino: u64, st: &libc::stat) -> FileAttr {
    FileAttr {
        ino: INodeNo(ino),
        size: st.st_size as u64,
        blocks: st.st_blocks as u64,
        atime: timestamp(st.st_atime, st.st_atime_nsec),
        mtime: timestamp(st.st_mtime, st.st_mtime_nsec),
        ctime: timestamp(st.st_ctime, st.st_ctime_nsec),
        crtime: timestamp(st.st_ctime, st.st_ctime_nsec),
        kind: kind_of(st.st_mode),
        perm: (st.st_mode & 0o7777) as u16,
        nlink: st.st_nlink as u32,
        uid: st.st_uid,
        gid: st.st_gid,
        rdev: encode_dev(st.st_rdev),
        blksize: st.st_blksize as u32,
        flags: 0,
    }
}

fn io_errno(e: std::io::Error) -> Errno {
    sys::errno(&e)
}

impl View {
    /// Opens `dir` (relative to the current directory) as the view's root.
    pub(crate) fn open(dir: &Path) -> Result<View, Error> {
        let open_err = |source| Error::Open {
            builtin: "view",
            path: dir.to_path_buf(),
            source,
        };
        let fd: OwnedFd = nix::fcntl::open(
            dir,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .map(|fd| {
            // SAFETY: open just returned this descriptor; nothing else owns it.
            unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) }
        })
        .map_err(|e| open_err(e.into()))?;
        let st = sys::fstat(fd.as_fd()).map_err(open_err)?;
        let root_key = (st.st_dev, st.st_ino);
        let mut nodes = HashMap::new();
        nodes.insert(
            1,
            Node {
                fd: Arc::new(fd),
                parent: None,
                key: root_key,
                lookups: 1,
            },
        );
        tracing::debug!(dir = %dir.display(), "view: root open");
        Ok(View {
            root_key,
            state: Mutex::new(State {
                nodes,
                synthetic: HashMap::new(),
                next_synthetic: SYNTHETIC,
                handles: HashMap::new(),
                next_fh: 1,
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the tables inconsistent in a way
        // worse than refusing every later request would.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The FUSE node id of an inode: its own number on the root's device (the root is 1),
    /// a synthetic one for inodes of other devices (mounts within DIR) or numbered 1.
    fn node_id(&self, s: &mut State, key: (u64, u64)) -> u64 {
        if key == self.root_key {
            return 1;
        }
        if key.0 == self.root_key.0 && key.1 != 1 && key.1 < SYNTHETIC {
            return key.1;
        }
        if let Some(id) = s.synthetic.get(&key) {
            return *id;
        }
        let id = s.next_synthetic;
        s.next_synthetic += 1;
        s.synthetic.insert(key, id);
        id
    }

    fn node_fd(s: &State, ino: u64) -> Res<Arc<OwnedFd>> {
        s.nodes.get(&ino).map(|n| n.fd.clone()).ok_or(Errno::ENOENT)
    }

    /// Opens node `ino` for reading: directories from their own descriptor, regular files
    /// again from their parent (checking it is the same inode); nothing else is opened.
    fn reopen(&self, ino: u64, flags: OFlag) -> Res<(OwnedFd, libc::stat)> {
        let (fd, parent, key) = {
            let s = self.lock();
            let n = s.nodes.get(&ino).ok_or(Errno::ENOENT)?;
            (n.fd.clone(), n.parent.clone(), n.key)
        };
        let st = sys::fstat(fd.as_fd()).map_err(io_errno)?;
        let opened = match st.st_mode & libc::S_IFMT {
            libc::S_IFDIR => sys::open_beneath(
                fd.as_fd(),
                OsStr::new("."),
                flags | OFlag::O_RDONLY | OFlag::O_DIRECTORY,
            ),
            libc::S_IFREG => {
                let Some((parent, name)) = parent else {
                    return Err(Errno::EIO);
                };
                sys::open_beneath(
                    parent.as_fd(),
                    &name,
                    flags | OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK,
                )
            }
            _ => return Err(Errno::EOPNOTSUPP),
        }
        .map_err(io_errno)?;
        let st = sys::fstat(opened.as_fd()).map_err(io_errno)?;
        if (st.st_dev, st.st_ino) != key {
            // Renamed or replaced in DIR since it was looked up.
            return Err(Errno::ESTALE);
        }
        Ok((opened, st))
    }

    fn getattr_of(&self, ino: u64) -> Res<FileAttr> {
        let fd = Self::node_fd(&self.lock(), ino)?;
        let st = sys::fstat(fd.as_fd()).map_err(io_errno)?;
        Ok(attr_of(ino, &st))
    }
}

fn check_name(name: &OsStr) -> Res<()> {
    if name.is_empty() || name == "." || name == ".." || name.as_bytes().contains(&b'/') {
        return Err(Errno::EINVAL);
    }
    Ok(())
}

fn reply_xattr(value: &[u8], size: u32, reply: ReplyXattr) {
    if size == 0 {
        reply.size(value.len() as u32);
    } else if (size as usize) < value.len() {
        reply.error(Errno::ERANGE);
    } else {
        reply.data(value);
    }
}

impl fuser::Filesystem for View {
    fn init(&mut self, _req: &Request, config: &mut fuser::KernelConfig) -> std::io::Result<()> {
        crate::session::init("view", config)
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let r = (|| {
            check_name(name)?;
            let parent_fd = Self::node_fd(&self.lock(), parent.0)?;
            let fd = sys::open_beneath(parent_fd.as_fd(), name, OFlag::O_PATH | OFlag::O_NOFOLLOW)
                .map_err(io_errno)?;
            let st = sys::fstat(fd.as_fd()).map_err(io_errno)?;
            let key = (st.st_dev, st.st_ino);
            let mut s = self.lock();
            let ino = self.node_id(&mut s, key);
            let node = s.nodes.entry(ino).or_insert_with(|| Node {
                fd: Arc::new(fd),
                parent: None,
                key,
                lookups: 0,
            });
            node.lookups += 1;
            if ino != 1 {
                node.parent = Some((parent_fd, name.to_owned()));
            }
            Ok(attr_of(ino, &st))
        })();
        match r {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        if ino.0 == 1 {
            return;
        }
        let mut s = self.lock();
        let gone = match s.nodes.get_mut(&ino.0) {
            Some(n) => {
                n.lookups = n.lookups.saturating_sub(nlookup);
                n.lookups == 0
            }
            None => false,
        };
        if gone {
            s.nodes.remove(&ino.0);
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.getattr_of(ino.0) {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        _size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        reply.error(Errno::EROFS)
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let r = Self::node_fd(&self.lock(), ino.0)
            .and_then(|fd| sys::readlink_fd(fd.as_fd()).map_err(io_errno));
        match r {
            Ok(target) => reply.data(&target),
            Err(e) => reply.error(e),
        }
    }

    crate::refuse_tree_changes!();

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let write = flags.0 & libc::O_ACCMODE != libc::O_RDONLY;
        if write || flags.0 & libc::O_TRUNC != 0 {
            return reply.error(Errno::EROFS);
        }
        match self.reopen(ino.0, OFlag::empty()) {
            Ok((fd, _)) => {
                let mut s = self.lock();
                let fh = s.next_fh;
                s.next_fh += 1;
                s.handles.insert(fh, Handle::File(File::from(fd)));
                reply.opened(FileHandle(fh), FopenFlags::empty())
            }
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        reply: ReplyData,
    ) {
        let file = match self.lock().handles.get(&fh.0) {
            Some(Handle::File(f)) => f.try_clone(),
            _ => return reply.error(Errno::EBADF),
        };
        let r = file.and_then(|f| {
            let mut buf = vec![0u8; size as usize];
            let mut done = 0;
            while done < buf.len() {
                match f.read_at(&mut buf[done..], offset + done as u64) {
                    Ok(0) => break,
                    Ok(n) => done += n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            buf.truncate(done);
            Ok(buf)
        });
        match r {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(io_errno(e)),
        }
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: u64,
        _data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        reply: ReplyWrite,
    ) {
        reply.error(Errno::EROFS)
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: fuser::LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok()
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.lock().handles.remove(&fh.0);
        reply.ok()
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        reply.ok()
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let r = (|| {
            let (dir, st) = self.reopen(ino.0, OFlag::empty())?;
            let entries = sys::read_dir(dir).map_err(io_errno)?;
            let mut s = self.lock();
            let parent = match s.nodes.get(&ino.0).and_then(|n| n.parent.as_ref()) {
                Some((pfd, _)) => {
                    let pst = sys::fstat(pfd.as_fd()).map_err(io_errno)?;
                    self.node_id(&mut s, (pst.st_dev, pst.st_ino))
                }
                None => 1,
            };
            let mut list = Vec::with_capacity(entries.len() + 2);
            list.push((ino.0, FileType::Directory, OsString::from(".")));
            list.push((parent, FileType::Directory, OsString::from("..")));
            for (name, d_ino, d_type) in entries {
                let id = self.node_id(&mut s, (st.st_dev, d_ino));
                list.push((id, kind_of_dtype(d_type), name));
            }
            let fh = s.next_fh;
            s.next_fh += 1;
            s.handles.insert(fh, Handle::Dir(list));
            Ok(fh)
        })();
        match r {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let s = self.lock();
        let Some(Handle::Dir(list)) = s.handles.get(&fh.0) else {
            return reply.error(Errno::EBADF);
        };
        for (i, (ino, kind, name)) in list.iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(*ino), i as u64 + 1, *kind, name) {
                break;
            }
        }
        reply.ok()
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.lock().handles.remove(&fh.0);
        reply.ok()
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let r = Self::node_fd(&self.lock(), 1).and_then(|fd| {
            nix::sys::statvfs::fstatvfs(fd.as_fd()).map_err(|e| Errno::from_i32(e as i32))
        });
        match r {
            Ok(v) => reply.statfs(
                v.blocks(),
                v.blocks_free(),
                v.blocks_available(),
                v.files(),
                v.files_free(),
                v.block_size() as u32,
                v.name_max() as u32,
                v.fragment_size() as u32,
            ),
            Err(e) => reply.error(e),
        }
    }

    fn setxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _value: &[u8],
        _flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::EROFS)
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let r = match self.reopen(ino.0, OFlag::empty()) {
            Ok((fd, _)) => sys::fgetxattr(fd.as_fd(), name).map_err(io_errno),
            // Symlinks and special files are not opened: they show no attributes.
            Err(Errno::EOPNOTSUPP) => Err(Errno::NO_XATTR),
            Err(e) => Err(e),
        };
        match r {
            Ok(v) => reply_xattr(&v, size, reply),
            Err(e) => reply.error(e),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let r = match self.reopen(ino.0, OFlag::empty()) {
            Ok((fd, _)) => sys::flistxattr(fd.as_fd()).map_err(io_errno),
            Err(Errno::EOPNOTSUPP) => Ok(Vec::new()),
            Err(e) => Err(e),
        };
        match r {
            Ok(v) => reply_xattr(&v, size, reply),
            Err(e) => reply.error(e),
        }
    }

    fn removexattr(&self, _req: &Request, _ino: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EROFS)
    }

    fn access(&self, _req: &Request, ino: INodeNo, mask: fuser::AccessFlags, reply: ReplyEmpty) {
        if mask.contains(fuser::AccessFlags::W_OK) {
            return reply.error(Errno::EROFS);
        }
        match self.getattr_of(ino.0) {
            Ok(_) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn create(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        reply.error(Errno::EROFS)
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: u64,
        _length: u64,
        _mode: i32,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::EROFS)
    }

    fn copy_file_range(
        &self,
        _req: &Request,
        _ino_in: INodeNo,
        _fh_in: FileHandle,
        _offset_in: u64,
        _ino_out: INodeNo,
        _fh_out: FileHandle,
        _offset_out: u64,
        _len: u64,
        _flags: fuser::CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        reply.error(Errno::EROFS)
    }
}
