//! `porta:tar ARCHIVE`: a tar archive served read-only, as an OCI image layer.
//!
//! At prepare the archive is indexed once: a plain tar is read in place and each file's
//! contents are served from its offset in the archive; a gzip or zstd archive (told by its
//! magic bytes) is first decompressed, once, into an anonymous memfd, and served from there.
//! Whiteouts (`.wh.NAME`) and opaque markers (`.wh..wh..opq`) are not shown: a layer served
//! alone has no layer beneath whose entries they would hide.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, FopenFlags, Generation, INodeNo, OpenFlags, RenameFlags,
    ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen,
    ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};

use crate::Error;

/// An archive never changes while served.
const TTL: Duration = Duration::from_secs(60);
const BLOCK: u32 = 4096;
const GZIP_MAGIC: &[u8] = &[0x1f, 0x8b];
const ZSTD_MAGIC: &[u8] = &[0x28, 0xb5, 0x2f, 0xfd];
/// The prefix of whiteouts, opaque markers and other overlay bookkeeping names.
const WHITEOUT_PREFIX: &[u8] = b".wh.";
const PAX_XATTR_PREFIX: &str = "SCHILY.xattr.";

#[derive(Debug)]
enum Data {
    /// `len` bytes at `offset` of the (decompressed) archive.
    Range { offset: u64, len: u64 },
    /// Contents held in memory (GNU sparse files, expanded).
    Mem(Vec<u8>),
}

#[derive(Debug)]
enum Kind {
    Dir {
        children: BTreeMap<OsString, u64>,
        parent: u64,
    },
    File(Data),
    Symlink(Vec<u8>),
    Special(FileType),
}

#[derive(Debug)]
struct Node {
    kind: Kind,
    perm: u32,
    uid: u32,
    gid: u32,
    mtime: SystemTime,
    rdev: u32,
    nlink: u32,
    xattrs: BTreeMap<OsString, Vec<u8>>,
}

impl Node {
    fn dir(parent: u64, mtime: SystemTime) -> Node {
        Node {
            kind: Kind::Dir {
                children: BTreeMap::new(),
                parent,
            },
            perm: 0o755,
            uid: 0,
            gid: 0,
            mtime,
            rdev: 0,
            nlink: 2,
            xattrs: BTreeMap::new(),
        }
    }

    fn file_type(&self) -> FileType {
        match &self.kind {
            Kind::Dir { .. } => FileType::Directory,
            Kind::File(_) => FileType::RegularFile,
            Kind::Symlink(_) => FileType::Symlink,
            Kind::Special(t) => *t,
        }
    }

    fn size(&self) -> u64 {
        match &self.kind {
            Kind::Dir { .. } => u64::from(BLOCK),
            Kind::File(Data::Range { len, .. }) => *len,
            Kind::File(Data::Mem(v)) => v.len() as u64,
            Kind::Symlink(t) => t.len() as u64,
            Kind::Special(_) => 0,
        }
    }

    fn attr(&self, ino: u64) -> FileAttr {
        let size = self.size();
        FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: self.mtime,
            mtime: self.mtime,
            ctime: self.mtime,
            crtime: self.mtime,
            kind: self.file_type(),
            perm: self.perm as u16,
            nlink: self.nlink,
            uid: self.uid,
            gid: self.gid,
            rdev: self.rdev,
            blksize: BLOCK,
            flags: 0,
        }
    }
}

/// The tar file system: the index (node `ino` at `nodes[ino - 1]`) and the backing file.
#[derive(Debug)]
pub(crate) struct TarFs {
    nodes: Vec<Node>,
    backing: File,
    /// Bytes of the (decompressed) archive, for statfs.
    archive_len: u64,
}

/// The new-style (32-bit) device number encoding FUSE carries.
fn encode_dev(major: u32, minor: u32) -> u32 {
    (minor & 0xff) | ((major & 0xfff) << 8) | ((minor & !0xff) << 12)
}

/// What an archive's first bytes say it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Compression {
    None,
    Gzip,
    Zstd,
}

struct Builder<'a> {
    path: &'a Path,
    nodes: Vec<Node>,
    archive_len: u64,
}

impl Builder<'_> {
    fn bad(&self, reason: String) -> Error {
        Error::Archive {
            path: self.path.to_path_buf(),
            reason,
        }
    }

    fn children_mut(&mut self, dir: u64) -> Option<&mut BTreeMap<OsString, u64>> {
        match &mut self.nodes[(dir - 1) as usize].kind {
            Kind::Dir { children, .. } => Some(children),
            _ => None,
        }
    }

    fn push(&mut self, node: Node) -> u64 {
        self.nodes.push(node);
        self.nodes.len() as u64
    }

    /// The directory at `components`, created (0755, root's, the archive's mtime) where
    /// the archive only implies it.
    fn dir_at(
        &mut self,
        entry: &str,
        components: &[&[u8]],
        mtime: SystemTime,
    ) -> Result<u64, Error> {
        let mut dir = 1;
        for c in components {
            let name = OsStr::from_bytes(c);
            let existing = match self.children_mut(dir) {
                Some(children) => children.get(name).copied(),
                None => None,
            };
            dir = match existing {
                Some(ino) if matches!(self.nodes[(ino - 1) as usize].kind, Kind::Dir { .. }) => ino,
                Some(_) => {
                    return Err(self.bad(format!(
                        "entry {entry:?}: {:?} on its path is not a directory",
                        name
                    )))
                }
                None => {
                    let ino = self.push(Node::dir(dir, mtime));
                    if let Some(children) = self.children_mut(dir) {
                        children.insert(name.to_owned(), ino);
                    }
                    self.nodes[(dir - 1) as usize].nlink += 1;
                    ino
                }
            };
        }
        Ok(dir)
    }

    /// Looks up an existing node by its archive path (for hard links).
    fn find(&self, components: &[&[u8]]) -> Option<u64> {
        let mut ino = 1u64;
        for c in components {
            match &self.nodes[(ino - 1) as usize].kind {
                Kind::Dir { children, .. } => ino = *children.get(OsStr::from_bytes(c))?,
                _ => return None,
            }
        }
        Some(ino)
    }

    /// Puts `ino` at `name` in `dir`, replacing what was there (as extracting would).
    fn place(&mut self, dir: u64, name: &OsStr, ino: u64) {
        let is_dir = matches!(self.nodes[(ino - 1) as usize].kind, Kind::Dir { .. });
        let old = self
            .children_mut(dir)
            .and_then(|c| c.insert(name.to_owned(), ino));
        if let Some(old) = old {
            let old_node = &mut self.nodes[(old - 1) as usize];
            old_node.nlink = old_node.nlink.saturating_sub(1);
            if matches!(old_node.kind, Kind::Dir { .. }) {
                let d = &mut self.nodes[(dir - 1) as usize];
                d.nlink = d.nlink.saturating_sub(1);
            }
        }
        if is_dir {
            self.nodes[(dir - 1) as usize].nlink += 1;
        }
    }
}

/// Splits an archive path into its components: leading `/` and `./` and `.` components
/// dropped; `..` refused (a layer never reaches above its root).
fn components(path: &[u8]) -> Result<Vec<&[u8]>, String> {
    let mut out = Vec::new();
    for c in path.split(|b| *b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return Err("has a \"..\" component".into()),
            c => out.push(c),
        }
    }
    Ok(out)
}

fn parse_pax_time(value: &str) -> Option<SystemTime> {
    let (secs, frac) = value.split_once('.').unwrap_or((value, ""));
    let secs: i64 = secs.parse().ok()?;
    let mut nanos = 0u32;
    if !frac.is_empty() {
        let digits: String = frac.chars().take(9).collect();
        let scale = 10u32.pow(9 - digits.len() as u32);
        nanos = digits.parse::<u32>().ok()? * scale;
    }
    if secs >= 0 {
        Some(UNIX_EPOCH + Duration::new(secs as u64, nanos))
    } else {
        Some(
            UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
                + Duration::from_nanos(u64::from(nanos)),
        )
    }
}

impl TarFs {
    /// Opens and indexes `archive` (relative to the current directory).
    pub(crate) fn open(archive: &Path) -> Result<TarFs, Error> {
        let open_err = |source| Error::Open {
            builtin: "tar",
            path: archive.to_path_buf(),
            source,
        };
        let bad = |reason: String| Error::Archive {
            path: archive.to_path_buf(),
            reason,
        };
        let file = File::open(archive).map_err(open_err)?;
        let meta = file.metadata().map_err(open_err)?;
        if !meta.is_file() {
            return Err(Error::WrongKind {
                builtin: "tar",
                path: archive.to_path_buf(),
                reason: "not a regular file (the archive must be one)",
            });
        }
        let archive_mtime = meta.modified().unwrap_or(UNIX_EPOCH);
        let mut magic = [0u8; 4];
        let n = file.read_at(&mut magic, 0).map_err(open_err)?;
        let compression = if magic[..n].starts_with(GZIP_MAGIC) {
            Compression::Gzip
        } else if magic[..n].starts_with(ZSTD_MAGIC) {
            Compression::Zstd
        } else {
            Compression::None
        };
        let (mut backing, archive_len) = match compression {
            Compression::None => (file, meta.len()),
            Compression::Gzip => {
                let decoder = flate2::read::MultiGzDecoder::new(io::BufReader::new(file));
                decompress(decoder).map_err(|e| bad(format!("decompressing gzip: {e}")))?
            }
            Compression::Zstd => {
                decompress_zstd(file).map_err(|e| bad(format!("decompressing zstd: {e}")))?
            }
        };
        backing
            .seek(SeekFrom::Start(0))
            .map_err(|e| bad(format!("rewinding: {e}")))?;
        let nodes = index(archive, &mut backing, archive_len, archive_mtime)?;
        tracing::debug!(
            archive = %archive.display(),
            ?compression,
            nodes = nodes.len(),
            "tar: archive indexed"
        );
        Ok(TarFs {
            nodes,
            backing,
            archive_len,
        })
    }

    fn node(&self, ino: INodeNo) -> Result<&Node, Errno> {
        ino.0
            .checked_sub(1)
            .and_then(|i| self.nodes.get(i as usize))
            .ok_or(Errno::ENOENT)
    }
}

/// A new anonymous memory file for decompressed contents.
fn memfd() -> io::Result<File> {
    let fd =
        nix::sys::memfd::memfd_create(c"porta-tar", nix::sys::memfd::MemFdCreateFlag::MFD_CLOEXEC)?;
    Ok(File::from(fd))
}

/// Decompresses `reader` into a new anonymous memfd; returns it and the byte count.
fn decompress(mut reader: impl Read) -> io::Result<(File, u64)> {
    let mut file = memfd()?;
    let len = io::copy(&mut reader, &mut file)?;
    Ok((file, len))
}

/// Decompresses every frame of a zstd stream, in order, into a new anonymous memfd
/// (`ruzstd`'s decoder reads one frame); skippable frames are skipped, and whatever
/// follows a frame must be another frame.
fn decompress_zstd(file: File) -> io::Result<(File, u64)> {
    use ruzstd::decoding::errors::{FrameDecoderError, ReadFrameHeaderError};
    use ruzstd::decoding::StreamingDecoder;
    use std::io::BufRead;
    let mut input = io::BufReader::new(file);
    let mut out = memfd()?;
    let mut len = 0;
    while !input.fill_buf()?.is_empty() {
        match StreamingDecoder::new(&mut input) {
            Ok(mut frame) => {
                let n = io::copy(&mut frame, &mut out)?;
                len += n;
                let decoder = frame.into_frame_decoder();
                if let (Some(stored), Some(computed)) = (
                    decoder.get_checksum_from_data(),
                    decoder.get_calculated_checksum(),
                ) {
                    if stored != computed {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!(
                                "frame checksum mismatch (stored {stored:#010x}, contents {computed:#010x})"
                            ),
                        ));
                    }
                }
            }
            Err(FrameDecoderError::ReadFrameHeaderError(ReadFrameHeaderError::SkipFrame {
                length,
                ..
            })) => {
                let want = u64::from(length);
                let skipped = io::copy(&mut (&mut input).take(want), &mut io::sink())?;
                if skipped != want {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "a skippable frame runs past the end",
                    ));
                }
            }
            Err(e) => return Err(io::Error::other(e)),
        }
    }
    Ok((out, len))
}

/// Reads the archive's headers into the node table (the root is node 1).
fn index(
    path: &Path,
    backing: &mut File,
    archive_len: u64,
    archive_mtime: SystemTime,
) -> Result<Vec<Node>, Error> {
    let mut b = Builder {
        path,
        nodes: vec![Node::dir(1, archive_mtime)],
        archive_len,
    };
    let mut archive = tar::Archive::new(backing);
    let entries = archive
        .entries_with_seek()
        .map_err(|e| b.bad(format!("reading the archive: {e}")))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| b.bad(format!("reading the archive: {e}")))?;
        let raw_path = entry.path_bytes().into_owned();
        let shown = String::from_utf8_lossy(&raw_path).into_owned();
        let bad_entry = |b: &Builder<'_>, what: &str, e: io::Error| {
            b.bad(format!("entry {shown:?}: {what}: {e}"))
        };
        let header = entry.header().clone();
        let kind = header.entry_type();
        if kind.is_pax_global_extensions() {
            continue;
        }
        let comps = components(&raw_path).map_err(|r| b.bad(format!("entry {shown:?} {r}")))?;
        let mode = header.mode().map_err(|e| bad_entry(&b, "mode", e))? & 0o7777;
        let uid = header.uid().map_err(|e| bad_entry(&b, "uid", e))?;
        let gid = header.gid().map_err(|e| bad_entry(&b, "gid", e))?;
        let (Ok(uid), Ok(gid)) = (u32::try_from(uid), u32::try_from(gid)) else {
            return Err(b.bad(format!("entry {shown:?}: owner {uid}:{gid} out of range")));
        };
        let mut mtime = UNIX_EPOCH
            + Duration::from_secs(header.mtime().map_err(|e| bad_entry(&b, "mtime", e))?);
        let mut xattrs = BTreeMap::new();
        if let Some(pax) = entry
            .pax_extensions()
            .map_err(|e| bad_entry(&b, "PAX header", e))?
        {
            for ext in pax {
                let ext = ext.map_err(|e| bad_entry(&b, "PAX header", e))?;
                let Ok(key) = ext.key() else { continue };
                if key.starts_with("GNU.sparse.") {
                    return Err(b.bad(format!(
                        "entry {shown:?}: a PAX-format sparse file, which is not supported \
                         (GNU-format sparse files are: tar --sparse --format=gnu)"
                    )));
                }
                if key == "mtime" {
                    if let Some(t) = ext.value().ok().and_then(parse_pax_time) {
                        mtime = t;
                    }
                } else if let Some(name) = key.strip_prefix(PAX_XATTR_PREFIX) {
                    xattrs.insert(OsString::from(name), ext.value_bytes().to_vec());
                }
            }
        }
        let Some((last, parents)) = comps.split_last() else {
            // The archive's root ("./"): its metadata is the root's.
            if kind.is_dir() {
                let root = &mut b.nodes[0];
                root.perm = mode;
                root.uid = uid;
                root.gid = gid;
                root.mtime = mtime;
                root.xattrs = xattrs;
            }
            continue;
        };
        let dir = b.dir_at(&shown, parents, archive_mtime)?;
        if last.starts_with(WHITEOUT_PREFIX) {
            // A whiteout or opaque marker: meaningful only over a lower layer.
            continue;
        }
        let name = OsStr::from_bytes(last);
        let is_v7_dir = (kind.is_file() || kind.is_contiguous()) && raw_path.ends_with(b"/");
        let node_kind = if kind.is_dir() || is_v7_dir {
            let existing = b.children_mut(dir).and_then(|c| c.get(name).copied());
            if let Some(ino) = existing {
                let node = &mut b.nodes[(ino - 1) as usize];
                if matches!(node.kind, Kind::Dir { .. }) {
                    // A directory seen again (or implied before): the header's metadata.
                    node.perm = mode;
                    node.uid = uid;
                    node.gid = gid;
                    node.mtime = mtime;
                    node.xattrs = xattrs;
                    continue;
                }
            }
            Kind::Dir {
                children: BTreeMap::new(),
                parent: dir,
            }
        } else if kind.is_file() || kind.is_contiguous() {
            let len = entry.size();
            let offset = entry.raw_file_position();
            match offset.checked_add(len) {
                Some(end) if end <= b.archive_len => {}
                _ => {
                    return Err(b.bad(format!(
                        "entry {shown:?}: its {len} bytes at offset {offset} run past the end of the archive ({} bytes): truncated",
                        b.archive_len
                    )))
                }
            }
            Kind::File(Data::Range { offset, len })
        } else if kind.is_gnu_sparse() {
            let mut data = Vec::new();
            entry
                .read_to_end(&mut data)
                .map_err(|e| bad_entry(&b, "sparse contents", e))?;
            Kind::File(Data::Mem(data))
        } else if kind.is_symlink() {
            let target = entry
                .link_name_bytes()
                .ok_or_else(|| b.bad(format!("entry {shown:?}: symlink without a target")))?;
            Kind::Symlink(target.into_owned())
        } else if kind.is_hard_link() {
            let target = entry
                .link_name_bytes()
                .ok_or_else(|| b.bad(format!("entry {shown:?}: hard link without a target")))?
                .into_owned();
            let target_shown = String::from_utf8_lossy(&target).into_owned();
            let tcomps = components(&target).map_err(|r| {
                b.bad(format!(
                    "entry {shown:?}: hard link target {target_shown:?} {r}"
                ))
            })?;
            let Some(ino) = b.find(&tcomps) else {
                return Err(b.bad(format!(
                    "entry {shown:?}: hard link to {target_shown:?}, which is not earlier in the archive"
                )));
            };
            if matches!(b.nodes[(ino - 1) as usize].kind, Kind::Dir { .. }) {
                return Err(b.bad(format!(
                    "entry {shown:?}: hard link to the directory {target_shown:?}"
                )));
            }
            if b.children_mut(dir).and_then(|c| c.get(name).copied()) == Some(ino) {
                continue;
            }
            b.nodes[(ino - 1) as usize].nlink += 1;
            b.place(dir, name, ino);
            continue;
        } else if kind.is_fifo() {
            Kind::Special(FileType::NamedPipe)
        } else if kind.is_character_special() || kind.is_block_special() {
            Kind::Special(if kind.is_character_special() {
                FileType::CharDevice
            } else {
                FileType::BlockDevice
            })
        } else {
            return Err(b.bad(format!(
                "entry {shown:?}: unsupported entry type {:?}",
                char::from(kind.as_byte())
            )));
        };
        let rdev = if matches!(
            node_kind,
            Kind::Special(FileType::CharDevice | FileType::BlockDevice)
        ) {
            let major = header
                .device_major()
                .map_err(|e| bad_entry(&b, "device major", e))?
                .unwrap_or(0);
            let minor = header
                .device_minor()
                .map_err(|e| bad_entry(&b, "device minor", e))?
                .unwrap_or(0);
            encode_dev(major, minor)
        } else {
            0
        };
        let is_dir = matches!(node_kind, Kind::Dir { .. });
        let ino = b.push(Node {
            kind: node_kind,
            perm: mode,
            uid,
            gid,
            mtime,
            rdev,
            nlink: if is_dir { 2 } else { 1 },
            xattrs,
        });
        b.place(dir, name, ino);
    }
    Ok(b.nodes)
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

impl fuser::Filesystem for TarFs {
    fn init(&mut self, _req: &Request, config: &mut fuser::KernelConfig) -> std::io::Result<()> {
        crate::session::init("tar", config)
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let r = self.node(parent).and_then(|p| match &p.kind {
            Kind::Dir { children, .. } => children.get(name).copied().ok_or(Errno::ENOENT),
            _ => Err(Errno::ENOTDIR),
        });
        match r.and_then(|ino| Ok((ino, self.node(INodeNo(ino))?))) {
            Ok((ino, n)) => reply.entry(&TTL, &n.attr(ino), Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.node(ino) {
            Ok(n) => reply.attr(&TTL, &n.attr(ino.0)),
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
        match self.node(ino).map(|n| &n.kind) {
            Ok(Kind::Symlink(t)) => reply.data(t),
            Ok(_) => reply.error(Errno::EINVAL),
            Err(e) => reply.error(e),
        }
    }

    crate::refuse_tree_changes!();

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if flags.0 & libc::O_ACCMODE != libc::O_RDONLY || flags.0 & libc::O_TRUNC != 0 {
            return reply.error(Errno::EROFS);
        }
        match self.node(ino).map(|n| &n.kind) {
            Ok(Kind::File(_)) => reply.opened(FileHandle(0), FopenFlags::FOPEN_KEEP_CACHE),
            Ok(Kind::Dir { .. }) => reply.error(Errno::EISDIR),
            Ok(_) => reply.error(Errno::EINVAL),
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
        match self.node(ino).map(|n| &n.kind) {
            Ok(Kind::File(Data::Mem(v))) => {
                let start = (offset as usize).min(v.len());
                let end = start.saturating_add(size as usize).min(v.len());
                reply.data(&v[start..end])
            }
            Ok(Kind::File(Data::Range { offset: base, len })) => {
                let start = offset.min(*len);
                let end = start.saturating_add(u64::from(size)).min(*len);
                let mut buf = vec![0u8; (end - start) as usize];
                match self.backing.read_exact_at(&mut buf, base + start) {
                    Ok(()) => reply.data(&buf),
                    Err(e) => reply.error(crate::sys::errno(&e)),
                }
            }
            Ok(Kind::Dir { .. }) => reply.error(Errno::EISDIR),
            Ok(_) => reply.error(Errno::EINVAL),
            Err(e) => reply.error(e),
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

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.node(ino).map(|n| &n.kind) {
            Ok(Kind::Dir { .. }) => reply.opened(FileHandle(0), FopenFlags::empty()),
            Ok(_) => reply.error(Errno::ENOTDIR),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let (children, parent) = match self.node(ino).map(|n| &n.kind) {
            Ok(Kind::Dir { children, parent }) => (children, *parent),
            Ok(_) => return reply.error(Errno::ENOTDIR),
            Err(e) => return reply.error(e),
        };
        let dots = [
            (ino.0, FileType::Directory, OsStr::new(".")),
            (parent, FileType::Directory, OsStr::new("..")),
        ];
        let rest = children.iter().map(|(name, child)| {
            let kind = self
                .node(INodeNo(*child))
                .map(Node::file_type)
                .unwrap_or(FileType::RegularFile);
            (*child, kind, name.as_os_str())
        });
        for (i, (child, kind, name)) in dots
            .into_iter()
            .chain(rest)
            .enumerate()
            .skip(offset as usize)
        {
            if reply.add(INodeNo(child), i as u64 + 1, kind, name) {
                break;
            }
        }
        reply.ok()
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let blocks = self.archive_len.div_ceil(u64::from(BLOCK));
        reply.statfs(blocks, 0, 0, self.nodes.len() as u64, 0, BLOCK, 255, BLOCK)
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
        match self.node(ino) {
            Ok(n) => match n.xattrs.get(name) {
                Some(v) => reply_xattr(v, size, reply),
                None => reply.error(Errno::NO_XATTR),
            },
            Err(e) => reply.error(e),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        match self.node(ino) {
            Ok(n) => {
                let mut list = Vec::new();
                for name in n.xattrs.keys() {
                    list.extend_from_slice(name.as_bytes());
                    list.push(0);
                }
                reply_xattr(&list, size, reply)
            }
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
        match self.node(ino) {
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
}
