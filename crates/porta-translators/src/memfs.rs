//! `porta:memfs`: an in-memory POSIX file system with a size limit.
//!
//! Permission checks are the kernel's: the container's mount uses `default_permissions`,
//! so the kernel decides from the modes and owners returned here (including sticky
//! directories, chown to a group the caller is in, and clearing set-id bits). memfs
//! itself sets what the kernel leaves to a file system: the owner of new files (the
//! caller, or the directory's group under a set-gid directory, which also passes its
//! set-gid bit to new subdirectories), link counts, times, the space limit; and it
//! re-checks the rules that guard ownership (chmod and chown by the owner or root only,
//! sticky directories) so that a misbehaving peer cannot get around them.

use std::collections::{BTreeMap, HashMap};
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, FopenFlags, Generation, INodeNo, KernelConfig,
    OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty,
    ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};

use crate::Error;

/// How long the kernel may cache entries and attributes. memfs is the only writer, but
/// requests reach it through the container's file server, which keeps its own cache.
const TTL: Duration = Duration::from_secs(1);
const BLOCK: u64 = 4096;
const NAME_MAX: usize = 255;
const SYMLINK_MAX: usize = 4095;
/// The most bytes one extended attribute value may hold (as Linux's XATTR_SIZE_MAX).
const XATTR_SIZE_MAX: usize = 65536;
/// One inode is allowed per this many bytes of the size limit (at least `MIN_INODES`).
const BYTES_PER_INODE: u64 = 1024;
const MIN_INODES: u64 = 64;

const S_ISUID: u32 = 0o4000;
const S_ISGID: u32 = 0o2000;
const S_ISVTX: u32 = 0o1000;

/// memfs's default size limit: half the physical memory, as tmpfs.
pub(crate) fn default_size() -> Result<u64, Error> {
    // SAFETY: sysconf only reads system configuration.
    let pages = unsafe { libc::sysconf(libc::_SC_PHYS_PAGES) };
    // SAFETY: as above.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if pages <= 0 || page <= 0 {
        return Err(Error::MemorySize(std::io::Error::last_os_error()));
    }
    Ok((pages as u64).saturating_mul(page as u64) / 2)
}

#[derive(Debug)]
enum Kind {
    File(Vec<u8>),
    Dir {
        entries: BTreeMap<OsString, u64>,
        parent: u64,
    },
    Symlink(Vec<u8>),
    /// A fifo, socket or device node: only attributes.
    Special(FileType),
}

#[derive(Debug)]
struct Inode {
    kind: Kind,
    /// Permission bits with set-uid, set-gid and sticky (`0o7777`).
    perm: u32,
    uid: u32,
    gid: u32,
    nlink: u32,
    rdev: u32,
    atime: SystemTime,
    mtime: SystemTime,
    ctime: SystemTime,
    crtime: SystemTime,
    xattrs: BTreeMap<OsString, Vec<u8>>,
    /// References the kernel holds (lookups not yet forgotten).
    lookups: u64,
    /// Open file handles.
    opens: u64,
    /// Whether `charge()` counts against the size limit: until the last name is gone and
    /// the last handle closed (the kernel may hold its reference a while longer).
    charged: bool,
}

impl Inode {
    fn new(kind: Kind, perm: u32, uid: u32, gid: u32, rdev: u32) -> Inode {
        let now = SystemTime::now();
        let nlink = if matches!(kind, Kind::Dir { .. }) {
            2
        } else {
            1
        };
        Inode {
            kind,
            perm: perm & 0o7777,
            uid,
            gid,
            nlink,
            rdev,
            atime: now,
            mtime: now,
            ctime: now,
            crtime: now,
            xattrs: BTreeMap::new(),
            lookups: 0,
            opens: 0,
            charged: true,
        }
    }

    fn file_type(&self) -> FileType {
        match &self.kind {
            Kind::File(_) => FileType::RegularFile,
            Kind::Dir { .. } => FileType::Directory,
            Kind::Symlink(_) => FileType::Symlink,
            Kind::Special(t) => *t,
        }
    }

    fn is_dir(&self) -> bool {
        matches!(self.kind, Kind::Dir { .. })
    }

    fn size(&self) -> u64 {
        match &self.kind {
            Kind::File(data) => data.len() as u64,
            Kind::Dir { entries, .. } => BLOCK.max(entries.len() as u64 * 32),
            Kind::Symlink(target) => target.len() as u64,
            Kind::Special(_) => 0,
        }
    }

    /// Bytes charged to the size limit: data, symlink target, xattrs.
    fn charge(&self) -> u64 {
        let body = match &self.kind {
            Kind::File(data) => data.len() as u64,
            Kind::Symlink(target) => target.len() as u64,
            _ => 0,
        };
        body + self
            .xattrs
            .iter()
            .map(|(k, v)| (k.len() + v.len()) as u64)
            .sum::<u64>()
    }

    fn attr(&self, ino: u64) -> FileAttr {
        let size = self.size();
        FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: self.atime,
            mtime: self.mtime,
            ctime: self.ctime,
            crtime: self.crtime,
            kind: self.file_type(),
            perm: self.perm as u16,
            nlink: self.nlink,
            uid: self.uid,
            gid: self.gid,
            rdev: self.rdev,
            blksize: BLOCK as u32,
            flags: 0,
        }
    }

    fn touch_change(&mut self) {
        let now = SystemTime::now();
        self.mtime = now;
        self.ctime = now;
    }
}

#[derive(Debug)]
enum Handle {
    File { ino: u64, append: bool },
    Dir(Vec<(u64, FileType, OsString)>),
}

#[derive(Debug)]
struct State {
    inodes: HashMap<u64, Inode>,
    next_ino: u64,
    handles: HashMap<u64, Handle>,
    next_fh: u64,
    /// Bytes charged (see `Inode::charge`).
    used: u64,
    limit: u64,
    max_inodes: u64,
}

/// The memfs file system.
#[derive(Debug)]
pub(crate) struct MemFs {
    state: Mutex<State>,
}

type Res<T> = Result<T, Errno>;

impl MemFs {
    /// An empty memfs holding at most `limit` bytes, its root directory owned by this
    /// process's uid and gid with permission bits `mode`.
    pub(crate) fn new(limit: u64, mode: u32) -> MemFs {
        let uid = nix::unistd::geteuid().as_raw();
        let gid = nix::unistd::getegid().as_raw();
        let mut inodes = HashMap::new();
        let mut root = Inode::new(
            Kind::Dir {
                entries: BTreeMap::new(),
                parent: 1,
            },
            mode,
            uid,
            gid,
            0,
        );
        // The kernel's reference to the root is never forgotten.
        root.lookups = 1;
        inodes.insert(1, root);
        MemFs {
            state: Mutex::new(State {
                inodes,
                next_ino: 2,
                handles: HashMap::new(),
                next_fh: 1,
                used: 0,
                limit,
                max_inodes: (limit / BYTES_PER_INODE).max(MIN_INODES),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves the tree as it was at some request's
        // step; serving on is better than refusing every later request.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn check_name(name: &OsStr) -> Res<()> {
    if name.len() > NAME_MAX {
        return Err(Errno::ENAMETOOLONG);
    }
    if name.is_empty() || name == "." || name == ".." || name.as_bytes().contains(&b'/') {
        return Err(Errno::EINVAL);
    }
    Ok(())
}

fn time(t: TimeOrNow) -> SystemTime {
    match t {
        TimeOrNow::SpecificTime(t) => t,
        TimeOrNow::Now => SystemTime::now(),
    }
}

impl State {
    fn get(&self, ino: u64) -> Res<&Inode> {
        self.inodes.get(&ino).ok_or(Errno::ENOENT)
    }

    fn get_mut(&mut self, ino: u64) -> Res<&mut Inode> {
        self.inodes.get_mut(&ino).ok_or(Errno::ENOENT)
    }

    /// An inode whose contents may grow: one still counted against the limit (with a
    /// name or an open handle). Others are only reachable by a peer that skips OPEN.
    fn growable(&self, ino: u64) -> Res<&Inode> {
        let inode = self.get(ino)?;
        if inode.charged {
            Ok(inode)
        } else {
            Err(Errno::ESTALE)
        }
    }

    fn entries(&self, dir: u64) -> Res<&BTreeMap<OsString, u64>> {
        match &self.get(dir)?.kind {
            Kind::Dir { entries, .. } => Ok(entries),
            _ => Err(Errno::ENOTDIR),
        }
    }

    fn entries_mut(&mut self, dir: u64) -> Res<&mut BTreeMap<OsString, u64>> {
        match &mut self.get_mut(dir)?.kind {
            Kind::Dir { entries, .. } => Ok(entries),
            _ => Err(Errno::ENOTDIR),
        }
    }

    fn child(&self, dir: u64, name: &OsStr) -> Res<u64> {
        self.entries(dir)?.get(name).copied().ok_or(Errno::ENOENT)
    }

    /// Charges `more` bytes, or ENOSPC past the limit.
    fn reserve(&mut self, more: u64) -> Res<()> {
        match self.used.checked_add(more) {
            Some(total) if total <= self.limit => {
                self.used = total;
                Ok(())
            }
            _ => Err(Errno::ENOSPC),
        }
    }

    fn release_bytes(&mut self, less: u64) {
        self.used = self.used.saturating_sub(less);
    }

    /// Gives back an inode's space once it has no name and no open handle, and frees it
    /// once the kernel has forgotten it too.
    fn maybe_free(&mut self, ino: u64) {
        let Some(i) = self.inodes.get_mut(&ino) else {
            return;
        };
        if ino == 1 || i.nlink != 0 || i.opens != 0 {
            return;
        }
        if i.charged {
            i.charged = false;
            let charge = i.charge();
            self.release_bytes(charge);
        }
        if self.inodes.get(&ino).is_some_and(|i| i.lookups == 0) {
            self.inodes.remove(&ino);
        }
    }

    /// Adds a new inode named `name` in `parent`, owned as `req` asks under `parent`'s
    /// set-gid rule, and returns its number (with one kernel reference).
    fn add(
        &mut self,
        req: &Request,
        parent: u64,
        name: &OsStr,
        kind: Kind,
        perm: u32,
        rdev: u32,
    ) -> Res<u64> {
        check_name(name)?;
        let p = self.get(parent)?;
        if !p.is_dir() {
            return Err(Errno::ENOTDIR);
        }
        if p.nlink == 0 {
            // A removed directory takes no new entries.
            return Err(Errno::ENOENT);
        }
        if self.entries(parent)?.contains_key(name) {
            return Err(Errno::EEXIST);
        }
        if self.inodes.len() as u64 >= self.max_inodes {
            return Err(Errno::ENOSPC);
        }
        let is_dir = matches!(kind, Kind::Dir { .. });
        let (gid, mut perm) = if p.perm & S_ISGID != 0 {
            let perm = if is_dir { perm | S_ISGID } else { perm };
            (p.gid, perm)
        } else {
            (req.gid(), perm)
        };
        perm &= 0o7777;
        let mut inode = Inode::new(kind, perm, req.uid(), gid, rdev);
        let charge = inode.charge();
        self.reserve(charge)?;
        inode.lookups = 1;
        let ino = self.next_ino;
        self.next_ino += 1;
        self.inodes.insert(ino, inode);
        self.entries_mut(parent)?.insert(name.to_owned(), ino);
        let p = self.get_mut(parent)?;
        if is_dir {
            p.nlink += 1;
        }
        p.touch_change();
        Ok(ino)
    }

    /// Refuses removing or replacing `child` in the sticky directory `dir` unless the
    /// caller owns one of them (or is root).
    fn sticky_ok(&self, req: &Request, dir: u64, child: u64) -> Res<()> {
        let d = self.get(dir)?;
        if d.perm & S_ISVTX == 0 || req.uid() == 0 || req.uid() == d.uid {
            return Ok(());
        }
        if self.get(child)?.uid == req.uid() {
            return Ok(());
        }
        Err(Errno::EPERM)
    }

    /// Drops one name of `ino` (already taken out of its directory `parent`).
    fn unlinked(&mut self, parent: u64, ino: u64) -> Res<()> {
        let now = SystemTime::now();
        let inode = self.get_mut(ino)?;
        let is_dir = inode.is_dir();
        if is_dir {
            inode.nlink = 0;
        } else {
            inode.nlink = inode.nlink.saturating_sub(1);
        }
        inode.ctime = now;
        let p = self.get_mut(parent)?;
        if is_dir {
            p.nlink = p.nlink.saturating_sub(1);
        }
        p.mtime = now;
        p.ctime = now;
        self.maybe_free(ino);
        Ok(())
    }

    /// Whether `ancestor` is `dir` or one of its ancestors.
    fn is_ancestor(&self, ancestor: u64, mut dir: u64) -> bool {
        loop {
            if dir == ancestor {
                return true;
            }
            match self.inodes.get(&dir).map(|i| &i.kind) {
                Some(Kind::Dir { parent, .. }) if *parent != dir => dir = *parent,
                _ => return false,
            }
        }
    }

    fn set_parent(&mut self, dir: u64, new_parent: u64) {
        if let Some(Inode {
            kind: Kind::Dir { parent, .. },
            ..
        }) = self.inodes.get_mut(&dir)
        {
            *parent = new_parent;
        }
    }

    fn entry_reply(&self, ino: u64, reply: ReplyEntry) {
        match self.get(ino) {
            Ok(i) => reply.entry(&TTL, &i.attr(ino), Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn rename(
        &mut self,
        req: &Request,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        flags: u32,
    ) -> Res<()> {
        let noreplace = flags & libc::RENAME_NOREPLACE != 0;
        let exchange = flags & libc::RENAME_EXCHANGE != 0;
        if flags & !(libc::RENAME_NOREPLACE | libc::RENAME_EXCHANGE) != 0 || (noreplace && exchange)
        {
            return Err(Errno::EINVAL);
        }
        check_name(newname)?;
        let src = self.child(parent, name)?;
        if !self.get(newparent)?.is_dir() {
            return Err(Errno::ENOTDIR);
        }
        let dst = self.entries(newparent)?.get(newname).copied();
        let src_dir = self.get(src)?.is_dir();
        match dst {
            Some(_) if noreplace => return Err(Errno::EEXIST),
            None if exchange => return Err(Errno::ENOENT),
            _ => {}
        }
        if src_dir && self.is_ancestor(src, newparent) {
            return Err(Errno::EINVAL);
        }
        self.sticky_ok(req, parent, src)?;
        if let Some(dst) = dst {
            if dst == src {
                // Two names of one inode (or the same name): nothing to do.
                return Ok(());
            }
            self.sticky_ok(req, newparent, dst)?;
            let dst_dir = self.get(dst)?.is_dir();
            if exchange {
                if dst_dir && self.is_ancestor(dst, parent) {
                    return Err(Errno::EINVAL);
                }
                self.entries_mut(parent)?.insert(name.to_owned(), dst);
                self.entries_mut(newparent)?.insert(newname.to_owned(), src);
                if parent != newparent {
                    if src_dir {
                        self.set_parent(src, newparent);
                    }
                    if dst_dir {
                        self.set_parent(dst, parent);
                    }
                    if src_dir != dst_dir {
                        let (gains, loses) = if src_dir {
                            (newparent, parent)
                        } else {
                            (parent, newparent)
                        };
                        self.get_mut(gains)?.nlink += 1;
                        let l = self.get_mut(loses)?;
                        l.nlink = l.nlink.saturating_sub(1);
                    }
                }
                let now = SystemTime::now();
                for ino in [src, dst] {
                    self.get_mut(ino)?.ctime = now;
                }
                for dir in [parent, newparent] {
                    self.get_mut(dir)?.touch_change();
                }
                return Ok(());
            }
            match (src_dir, dst_dir) {
                (true, false) => return Err(Errno::ENOTDIR),
                (false, true) => return Err(Errno::EISDIR),
                (true, true) if !self.entries(dst)?.is_empty() => return Err(Errno::ENOTEMPTY),
                _ => {}
            }
            self.entries_mut(newparent)?.remove(newname);
            self.unlinked(newparent, dst)?;
        }
        self.entries_mut(parent)?.remove(name);
        self.entries_mut(newparent)?.insert(newname.to_owned(), src);
        if src_dir && parent != newparent {
            self.set_parent(src, newparent);
            let p = self.get_mut(parent)?;
            p.nlink = p.nlink.saturating_sub(1);
            self.get_mut(newparent)?.nlink += 1;
        }
        let now = SystemTime::now();
        self.get_mut(src)?.ctime = now;
        for dir in [parent, newparent] {
            self.get_mut(dir)?.touch_change();
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn setattr(
        &mut self,
        req: &Request,
        ino: u64,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        ctime: Option<SystemTime>,
    ) -> Res<FileAttr> {
        let caller = req.uid();
        let now = SystemTime::now();
        let inode = self.get(ino)?;
        let owner_or_root = caller == 0 || caller == inode.uid;
        let is_file = matches!(inode.kind, Kind::File(_));
        let is_dir = inode.is_dir();
        if mode.is_some() && !owner_or_root {
            return Err(Errno::EPERM);
        }
        if let Some(uid) = uid {
            if uid != inode.uid && caller != 0 {
                return Err(Errno::EPERM);
            }
        }
        if let Some(gid) = gid {
            // Which groups the caller is in is the kernel's check (default_permissions).
            if gid != inode.gid && !owner_or_root {
                return Err(Errno::EPERM);
            }
        }
        if let Some(size) = size {
            if is_dir {
                return Err(Errno::EISDIR);
            }
            if !is_file {
                return Err(Errno::EINVAL);
            }
            if !inode.charged {
                return Err(Errno::ESTALE);
            }
            let old = inode.size();
            if size > old {
                self.reserve(size - old)?;
            } else {
                self.release_bytes(old - size);
            }
            let inode = self.get_mut(ino)?;
            if let Kind::File(data) = &mut inode.kind {
                data.resize(size as usize, 0);
                data.shrink_to(size as usize);
            }
            inode.mtime = now;
            inode.ctime = now;
        }
        let inode = self.get_mut(ino)?;
        if let Some(mode) = mode {
            inode.perm = mode & 0o7777;
            inode.ctime = now;
        }
        let owner_changes =
            uid.is_some_and(|u| u != inode.uid) || gid.is_some_and(|g| g != inode.gid);
        if let Some(uid) = uid {
            inode.uid = uid;
            inode.ctime = now;
        }
        if let Some(gid) = gid {
            inode.gid = gid;
            inode.ctime = now;
        }
        if owner_changes && mode.is_none() && !is_dir {
            // As Linux: a chown clears set-uid, and set-gid where group-execute is set.
            inode.perm &= !S_ISUID;
            if inode.perm & 0o010 != 0 {
                inode.perm &= !S_ISGID;
            }
        }
        if let Some(t) = atime {
            inode.atime = time(t);
            inode.ctime = now;
        }
        if let Some(t) = mtime {
            inode.mtime = time(t);
            inode.ctime = now;
        }
        if let Some(t) = ctime {
            inode.ctime = t;
        }
        Ok(inode.attr(ino))
    }

    fn write(&mut self, ino: u64, offset: u64, data: &[u8], append: bool) -> Res<u32> {
        let inode = self.growable(ino)?;
        let Kind::File(content) = &inode.kind else {
            return Err(Errno::EBADF);
        };
        let len = content.len() as u64;
        let offset = if append { len } else { offset };
        let end = offset.checked_add(data.len() as u64).ok_or(Errno::EFBIG)?;
        let room = self.limit - self.used;
        // Write what fits; ENOSPC only when nothing does.
        let end = if end > len && end - len > room {
            let fits = (len + room).saturating_sub(offset);
            if fits == 0 {
                return Err(Errno::ENOSPC);
            }
            offset + fits
        } else {
            end
        };
        let count = (end - offset) as usize;
        if end > len {
            self.reserve(end - len)?;
        }
        let inode = self.get_mut(ino)?;
        if let Kind::File(content) = &mut inode.kind {
            if end as usize > content.len() {
                content.resize(end as usize, 0);
            }
            content[offset as usize..end as usize].copy_from_slice(&data[..count]);
        }
        inode.touch_change();
        Ok(count as u32)
    }

    fn fallocate(&mut self, ino: u64, offset: u64, length: u64, mode: i32) -> Res<()> {
        let end = offset.checked_add(length).ok_or(Errno::EFBIG)?;
        let inode = self.growable(ino)?;
        let Kind::File(content) = &inode.kind else {
            return Err(Errno::ENODEV);
        };
        let len = content.len() as u64;
        let keep_size = mode & libc::FALLOC_FL_KEEP_SIZE != 0;
        let zero = match mode & !libc::FALLOC_FL_KEEP_SIZE {
            0 => false,
            libc::FALLOC_FL_PUNCH_HOLE if keep_size => true,
            libc::FALLOC_FL_ZERO_RANGE => true,
            _ => return Err(Errno::EOPNOTSUPP),
        };
        let new_len = if keep_size { len } else { len.max(end) };
        if new_len > len {
            self.reserve(new_len - len)?;
        }
        let inode = self.get_mut(ino)?;
        if let Kind::File(content) = &mut inode.kind {
            content.resize(new_len as usize, 0);
            if zero {
                let stop = end.min(new_len) as usize;
                if (offset as usize) < stop {
                    content[offset as usize..stop].fill(0);
                }
            }
        }
        if new_len != len || zero {
            inode.touch_change();
        }
        Ok(())
    }

    fn setxattr(&mut self, ino: u64, name: &OsStr, value: &[u8], flags: i32) -> Res<()> {
        xattr_namespace_ok(name)?;
        if value.len() > XATTR_SIZE_MAX {
            return Err(Errno::E2BIG);
        }
        let inode = self.growable(ino)?;
        if name.as_bytes().starts_with(b"user.")
            && !matches!(inode.kind, Kind::File(_) | Kind::Dir { .. })
        {
            return Err(Errno::EPERM);
        }
        let old = inode
            .xattrs
            .get(name)
            .map(|v| (name.len() + v.len()) as u64);
        match old {
            Some(_) if flags & libc::XATTR_CREATE != 0 => return Err(Errno::EEXIST),
            None if flags & libc::XATTR_REPLACE != 0 => return Err(Errno::NO_XATTR),
            _ => {}
        }
        let new = (name.len() + value.len()) as u64;
        let old = old.unwrap_or(0);
        if new > old {
            self.reserve(new - old)?;
        } else {
            self.release_bytes(old - new);
        }
        let inode = self.get_mut(ino)?;
        inode.xattrs.insert(name.to_owned(), value.to_vec());
        inode.ctime = SystemTime::now();
        Ok(())
    }
}

/// memfs keeps `user.`, `trusted.` and `security.` attributes; `system.` ones (POSIX
/// ACLs) are not supported.
fn xattr_namespace_ok(name: &OsStr) -> Res<()> {
    let b = name.as_bytes();
    if b.len() > NAME_MAX || b.is_empty() {
        return Err(Errno::ERANGE);
    }
    if [&b"user."[..], b"trusted.", b"security."]
        .iter()
        .any(|p| b.starts_with(p) && b.len() > p.len())
    {
        Ok(())
    } else {
        Err(Errno::EOPNOTSUPP)
    }
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

fn empty(r: Res<()>, reply: ReplyEmpty) {
    match r {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(e),
    }
}

impl fuser::Filesystem for MemFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        crate::session::init("memfs", config)
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let mut s = self.lock();
        if name.len() > NAME_MAX {
            return reply.error(Errno::ENAMETOOLONG);
        }
        match s.child(parent.0, name) {
            Ok(ino) => {
                if let Ok(i) = s.get_mut(ino) {
                    i.lookups += 1;
                }
                s.entry_reply(ino, reply)
            }
            Err(e) => reply.error(e),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        let mut s = self.lock();
        if let Ok(i) = s.get_mut(ino.0) {
            i.lookups = i.lookups.saturating_sub(nlookup);
        }
        s.maybe_free(ino.0);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.lock().get(ino.0) {
            Ok(i) => reply.attr(&TTL, &i.attr(ino.0)),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let r = self
            .lock()
            .setattr(req, ino.0, mode, uid, gid, size, atime, mtime, ctime);
        match r {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.lock().get(ino.0).map(|i| &i.kind) {
            Ok(Kind::Symlink(t)) => reply.data(t),
            Ok(_) => reply.error(Errno::EINVAL),
            Err(e) => reply.error(e),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let kind = match mode & libc::S_IFMT {
            0 | libc::S_IFREG => Kind::File(Vec::new()),
            libc::S_IFIFO => Kind::Special(FileType::NamedPipe),
            libc::S_IFSOCK => Kind::Special(FileType::Socket),
            libc::S_IFCHR => Kind::Special(FileType::CharDevice),
            libc::S_IFBLK => Kind::Special(FileType::BlockDevice),
            _ => return reply.error(Errno::EINVAL),
        };
        let rdev = if matches!(
            kind,
            Kind::Special(FileType::CharDevice | FileType::BlockDevice)
        ) {
            rdev
        } else {
            0
        };
        let mut s = self.lock();
        match s.add(req, parent.0, name, kind, mode & !umask, rdev) {
            Ok(ino) => s.entry_reply(ino, reply),
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let mut s = self.lock();
        let kind = Kind::Dir {
            entries: BTreeMap::new(),
            parent: parent.0,
        };
        match s.add(req, parent.0, name, kind, mode & !umask, 0) {
            Ok(ino) => s.entry_reply(ino, reply),
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let mut s = self.lock();
        let r = (|| {
            let ino = s.child(parent.0, name)?;
            if s.get(ino)?.is_dir() {
                return Err(Errno::EISDIR);
            }
            s.sticky_ok(req, parent.0, ino)?;
            s.entries_mut(parent.0)?.remove(name);
            s.unlinked(parent.0, ino)
        })();
        empty(r, reply)
    }

    fn rmdir(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let mut s = self.lock();
        let r = (|| {
            let ino = s.child(parent.0, name)?;
            if !s.entries(ino)?.is_empty() {
                return Err(Errno::ENOTEMPTY);
            }
            s.sticky_ok(req, parent.0, ino)?;
            s.entries_mut(parent.0)?.remove(name);
            s.unlinked(parent.0, ino)
        })();
        empty(r, reply)
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let target = target.as_os_str().as_bytes();
        if target.len() > SYMLINK_MAX {
            return reply.error(Errno::ENAMETOOLONG);
        }
        let mut s = self.lock();
        let kind = Kind::Symlink(target.to_vec());
        match s.add(req, parent.0, link_name, kind, 0o777, 0) {
            Ok(ino) => s.entry_reply(ino, reply),
            Err(e) => reply.error(e),
        }
    }

    fn rename(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let r = self
            .lock()
            .rename(req, parent.0, name, newparent.0, newname, flags.bits());
        empty(r, reply)
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let mut s = self.lock();
        let r = (|| {
            check_name(newname)?;
            let i = s.get(ino.0)?;
            if i.is_dir() {
                return Err(Errno::EPERM);
            }
            if i.nlink == 0 {
                // As Linux: an inode whose last name is gone gets no new one.
                return Err(Errno::ENOENT);
            }
            let p = s.get(newparent.0)?;
            if p.is_dir() && p.nlink == 0 {
                return Err(Errno::ENOENT);
            }
            let entries = s.entries_mut(newparent.0)?;
            if entries.contains_key(newname) {
                return Err(Errno::EEXIST);
            }
            entries.insert(newname.to_owned(), ino.0);
            s.get_mut(newparent.0)?.touch_change();
            let i = s.get_mut(ino.0)?;
            i.nlink += 1;
            i.lookups += 1;
            i.ctime = SystemTime::now();
            Ok(())
        })();
        match r {
            Ok(()) => s.entry_reply(ino.0, reply),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let mut s = self.lock();
        match s.get_mut(ino.0) {
            Ok(i) if i.is_dir() => reply.error(Errno::EISDIR),
            Ok(i) => {
                if !i.charged {
                    // Reopened after its last name went (through /proc): count it again.
                    let charge = i.charge();
                    i.charged = true;
                    if let Err(e) = s.reserve(charge) {
                        if let Ok(i) = s.get_mut(ino.0) {
                            i.charged = false;
                        }
                        return reply.error(e);
                    }
                }
                let Ok(i) = s.get_mut(ino.0) else {
                    return reply.error(Errno::ENOENT);
                };
                i.opens += 1;
                let fh = s.next_fh;
                s.next_fh += 1;
                let append = flags.0 & libc::O_APPEND != 0;
                s.handles.insert(fh, Handle::File { ino: ino.0, append });
                reply.opened(FileHandle(fh), FopenFlags::empty())
            }
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        reply: ReplyData,
    ) {
        match self.lock().get(ino.0).map(|i| &i.kind) {
            Ok(Kind::File(data)) => {
                let start = (offset as usize).min(data.len());
                let end = start.saturating_add(size as usize).min(data.len());
                reply.data(&data[start..end])
            }
            Ok(Kind::Dir { .. }) => reply.error(Errno::EISDIR),
            Ok(_) => reply.error(Errno::EINVAL),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        reply: ReplyWrite,
    ) {
        let mut s = self.lock();
        let append = match s.handles.get(&fh.0) {
            Some(Handle::File { append, .. }) => *append,
            _ => flags.0 & libc::O_APPEND != 0,
        };
        match s.write(ino.0, offset, data, append) {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(e),
        }
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
        let mut s = self.lock();
        if let Some(Handle::File { ino, .. }) = s.handles.remove(&fh.0) {
            if let Ok(i) = s.get_mut(ino) {
                i.opens = i.opens.saturating_sub(1);
            }
            s.maybe_free(ino);
        }
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
        let mut s = self.lock();
        let listing = (|| {
            let i = s.get(ino.0)?;
            let Kind::Dir { entries, parent } = &i.kind else {
                return Err(Errno::ENOTDIR);
            };
            let mut list = Vec::with_capacity(entries.len() + 2);
            list.push((ino.0, FileType::Directory, OsString::from(".")));
            list.push((*parent, FileType::Directory, OsString::from("..")));
            for (name, child) in entries {
                let kind = s.get(*child)?.file_type();
                list.push((*child, kind, name.clone()));
            }
            Ok(list)
        })();
        match listing {
            Ok(list) => {
                let fh = s.next_fh;
                s.next_fh += 1;
                s.handles.insert(fh, Handle::Dir(list));
                reply.opened(FileHandle(fh), FopenFlags::empty())
            }
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

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        reply.ok()
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let s = self.lock();
        let blocks = s.limit / BLOCK;
        let free = (s.limit - s.used) / BLOCK;
        let files = s.max_inodes;
        let ffree = files.saturating_sub(s.inodes.len() as u64);
        reply.statfs(
            blocks,
            free,
            free,
            files,
            ffree,
            BLOCK as u32,
            NAME_MAX as u32,
            BLOCK as u32,
        )
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        empty(self.lock().setxattr(ino.0, name, value, flags), reply)
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let s = self.lock();
        match s.get(ino.0) {
            Ok(i) => match i.xattrs.get(name) {
                Some(v) => reply_xattr(v, size, reply),
                None => reply.error(Errno::NO_XATTR),
            },
            Err(e) => reply.error(e),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let s = self.lock();
        match s.get(ino.0) {
            Ok(i) => {
                let mut list = Vec::new();
                for name in i.xattrs.keys() {
                    list.extend_from_slice(name.as_bytes());
                    list.push(0);
                }
                reply_xattr(&list, size, reply)
            }
            Err(e) => reply.error(e),
        }
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let mut s = self.lock();
        let r = (|| {
            xattr_namespace_ok(name)?;
            let i = s.get_mut(ino.0)?;
            let v = i.xattrs.remove(name).ok_or(Errno::NO_XATTR)?;
            i.ctime = SystemTime::now();
            if i.charged {
                s.release_bytes((name.len() + v.len()) as u64);
            }
            Ok(())
        })();
        empty(r, reply)
    }

    fn access(&self, _req: &Request, ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
        // Permissions are the kernel's (default_permissions); this answers existence.
        empty(self.lock().get(ino.0).map(|_| ()), reply)
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let mut s = self.lock();
        let r = s.add(
            req,
            parent.0,
            name,
            Kind::File(Vec::new()),
            mode & !umask,
            0,
        );
        match r.and_then(|ino| s.get_mut(ino).map(|i| (ino, i))) {
            Ok((ino, i)) => {
                i.opens += 1;
                let attr = i.attr(ino);
                let fh = s.next_fh;
                s.next_fh += 1;
                let append = flags & libc::O_APPEND != 0;
                s.handles.insert(fh, Handle::File { ino, append });
                reply.created(
                    &TTL,
                    &attr,
                    Generation(0),
                    FileHandle(fh),
                    FopenFlags::empty(),
                )
            }
            Err(e) => reply.error(e),
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        empty(self.lock().fallocate(ino.0, offset, length, mode), reply)
    }
}
