//! The FUSE kernel ABI (protocol 7.40+) as Porta uses it: opcodes, flags, and safe
//! little parsers and encoders for the request and reply structures.
//!
//! Everything is parsed with explicit bounds checks from the raw request bytes, so a
//! malformed frame yields an error, never a panic or an out-of-bounds read.

pub mod args;
pub mod uring;

/// Protocol major version spoken.
pub const KERNEL_VERSION: u32 = 7;
/// Highest protocol minor version this server speaks.
pub const KERNEL_MINOR_VERSION: u32 = 40;
/// Node id of the root directory.
pub const ROOT_ID: u64 = 1;
/// Size of `fuse_in_header`.
pub const IN_HEADER_LEN: usize = 40;
/// Size of `fuse_out_header`.
pub const OUT_HEADER_LEN: usize = 16;
/// Bit the kernel sets in `unique` for a request re-queued by FUSE_NOTIFY_RESEND.
pub const UNIQUE_RESEND_FLAG: u64 = 1 << 63;

/// FUSE opcodes.
#[allow(missing_docs)]
pub mod op {
    pub const LOOKUP: u32 = 1;
    pub const FORGET: u32 = 2;
    pub const GETATTR: u32 = 3;
    pub const SETATTR: u32 = 4;
    pub const READLINK: u32 = 5;
    pub const SYMLINK: u32 = 6;
    pub const MKNOD: u32 = 8;
    pub const MKDIR: u32 = 9;
    pub const UNLINK: u32 = 10;
    pub const RMDIR: u32 = 11;
    pub const RENAME: u32 = 12;
    pub const LINK: u32 = 13;
    pub const OPEN: u32 = 14;
    pub const READ: u32 = 15;
    pub const WRITE: u32 = 16;
    pub const STATFS: u32 = 17;
    pub const RELEASE: u32 = 18;
    pub const FSYNC: u32 = 20;
    pub const SETXATTR: u32 = 21;
    pub const GETXATTR: u32 = 22;
    pub const LISTXATTR: u32 = 23;
    pub const REMOVEXATTR: u32 = 24;
    pub const FLUSH: u32 = 25;
    pub const INIT: u32 = 26;
    pub const OPENDIR: u32 = 27;
    pub const READDIR: u32 = 28;
    pub const RELEASEDIR: u32 = 29;
    pub const FSYNCDIR: u32 = 30;
    pub const GETLK: u32 = 31;
    pub const SETLK: u32 = 32;
    pub const SETLKW: u32 = 33;
    pub const ACCESS: u32 = 34;
    pub const CREATE: u32 = 35;
    pub const INTERRUPT: u32 = 36;
    pub const BMAP: u32 = 37;
    pub const DESTROY: u32 = 38;
    pub const IOCTL: u32 = 39;
    pub const POLL: u32 = 40;
    pub const BATCH_FORGET: u32 = 42;
    pub const FALLOCATE: u32 = 43;
    pub const READDIRPLUS: u32 = 44;
    pub const RENAME2: u32 = 45;
    pub const LSEEK: u32 = 46;
    pub const COPY_FILE_RANGE: u32 = 47;
    pub const SYNCFS: u32 = 50;
    pub const TMPFILE: u32 = 51;
}

/// INIT flags (the high 32 bits travel in `flags2`).
#[allow(missing_docs)]
pub mod init {
    pub const ASYNC_READ: u64 = 1 << 0;
    pub const ATOMIC_O_TRUNC: u64 = 1 << 3;
    pub const BIG_WRITES: u64 = 1 << 5;
    pub const DO_READDIRPLUS: u64 = 1 << 13;
    pub const READDIRPLUS_AUTO: u64 = 1 << 14;
    pub const ASYNC_DIO: u64 = 1 << 15;
    pub const WRITEBACK_CACHE: u64 = 1 << 16;
    pub const PARALLEL_DIROPS: u64 = 1 << 18;
    pub const HANDLE_KILLPRIV: u64 = 1 << 19;
    pub const MAX_PAGES: u64 = 1 << 22;
    pub const CACHE_SYMLINKS: u64 = 1 << 23;
    pub const HANDLE_KILLPRIV_V2: u64 = 1 << 28;
    pub const INIT_EXT: u64 = 1 << 30;
    pub const PASSTHROUGH: u64 = 1 << 37;
    pub const NO_EXPORT_SUPPORT: u64 = 1 << 38;
    pub const HAS_RESEND: u64 = 1 << 39;
    /// The server will take requests over io_uring (FUSE_OVER_IO_URING, 7.42): offered by
    /// the kernel only while `/sys/module/fuse/parameters/enable_uring` is Y.
    pub const OVER_IO_URING: u64 = 1 << 41;
}

/// `open_flags` of `fuse_open_out`.
#[allow(missing_docs)]
pub mod fopen {
    pub const DIRECT_IO: u32 = 1 << 0;
    pub const KEEP_CACHE: u32 = 1 << 1;
    pub const CACHE_DIR: u32 = 1 << 3;
    pub const NOFLUSH: u32 = 1 << 5;
    pub const PARALLEL_DIRECT_WRITES: u32 = 1 << 6;
    pub const PASSTHROUGH: u32 = 1 << 7;
}

/// `valid` bits of `fuse_setattr_in`.
#[allow(missing_docs)]
pub mod fattr {
    pub const MODE: u32 = 1 << 0;
    pub const UID: u32 = 1 << 1;
    pub const GID: u32 = 1 << 2;
    pub const SIZE: u32 = 1 << 3;
    pub const ATIME: u32 = 1 << 4;
    pub const MTIME: u32 = 1 << 5;
    pub const FH: u32 = 1 << 6;
    pub const ATIME_NOW: u32 = 1 << 7;
    pub const MTIME_NOW: u32 = 1 << 8;
    pub const LOCKOWNER: u32 = 1 << 9;
    pub const CTIME: u32 = 1 << 10;
    pub const KILL_SUIDGID: u32 = 1 << 11;
}

/// `write_flags` of `fuse_write_in`.
#[allow(missing_docs)]
pub mod write_flags {
    /// The writer has no CAP_FSETID: clear set-user-id, and set-group-id where the group
    /// may execute (asked for with [`super::init::HANDLE_KILLPRIV_V2`]).
    pub const KILL_SUIDGID: u32 = 1 << 2;
}

/// `open_flags` of `fuse_open_in` and `fuse_create_in`.
#[allow(missing_docs)]
pub mod open_in {
    /// An O_TRUNC open by a caller without CAP_FSETID: clear set-id bits as truncate does.
    pub const KILL_SUIDGID: u32 = 1 << 0;
}

/// Notification codes (sent with `unique == 0`).
pub const NOTIFY_RESEND: i32 = 7;
/// `FUSE_NOTIFY_INVAL_ENTRY`: drop the dentry `parent`/`name` (and so maybe its inode).
pub const NOTIFY_INVAL_ENTRY: i32 = 3;
/// `FUSE_NOTIFY_PRUNE` (protocol 7.45): forget these node ids if nothing uses them.
pub const NOTIFY_PRUNE: i32 = 9;

/// Encodes a `FUSE_NOTIFY_PRUNE` frame asking the kernel to drop `ids` if unused
/// (`struct fuse_notify_prune_out`: count, padding, spare; then the ids).
pub fn encode_prune(w: &mut Writer, ids: &[u64]) {
    w.start();
    w.u32(ids.len() as u32).u32(0).u64(0);
    for &id in ids {
        w.u64(id);
    }
    w.finish(NOTIFY_PRUNE, 0);
}

/// Encodes a `FUSE_NOTIFY_INVAL_ENTRY` frame for `name` in directory node `parent`
/// (`struct fuse_notify_inval_entry_out`: parent, namelen, flags; then the name + NUL).
pub fn encode_inval_entry(w: &mut Writer, parent: u64, name: &[u8]) {
    encode_inval_entry_flags(w, parent, name, 0);
}

/// `flags` of `fuse_notify_inval_entry_out` (protocol 7.38): only mark the dentry's
/// timeout expired, so the next access looks the name up again; unlike a full
/// invalidation this neither prunes the subtree nor detaches mounts on an unchanged name.
pub const INVAL_ENTRY_EXPIRE_ONLY: u32 = 1 << 0;

/// Encodes a `FUSE_NOTIFY_INVAL_ENTRY` frame with `flags` (0 or
/// [`INVAL_ENTRY_EXPIRE_ONLY`]).
pub fn encode_inval_entry_flags(w: &mut Writer, parent: u64, name: &[u8], flags: u32) {
    w.start();
    w.u64(parent)
        .u32(name.len() as u32)
        .u32(flags)
        .bytes(name)
        .bytes(&[0]);
    w.finish(NOTIFY_INVAL_ENTRY, 0);
}

/// `FUSE_NOTIFY_INVAL_INODE`: the node's cached attributes (and data range) are stale.
pub const NOTIFY_INVAL_INODE: i32 = 2;

/// Encodes a `FUSE_NOTIFY_INVAL_INODE` frame for node `ino` that drops its cached
/// attributes only (`struct fuse_notify_inval_inode_out`: ino, off, len; a negative
/// offset leaves the page cache alone).
pub fn encode_inval_inode(w: &mut Writer, ino: u64) {
    encode_inval_inode_range(w, ino, -1, 0);
}

/// Encodes a `FUSE_NOTIFY_INVAL_INODE` frame for node `ino` that drops its cached
/// attributes and, for `off >= 0`, its cached pages from `off` on (`len` 0: to the end).
pub fn encode_inval_inode_range(w: &mut Writer, ino: u64, off: i64, len: i64) {
    w.start();
    w.u64(ino).u64(off as u64).u64(len as u64);
    w.finish(NOTIFY_INVAL_INODE, 0);
}

/// `FUSE_NOTIFY_STORE`: put data into a node's page cache (and grow its size to the end
/// of that data).
pub const NOTIFY_STORE: i32 = 4;

/// Encodes a `FUSE_NOTIFY_STORE` frame of `data` at `off` in node `ino`
/// (`struct fuse_notify_store_out`: nodeid, offset, size, padding; then the data). With
/// no data it only grows the kernel's size of the file to `off`, which a writeback-cache
/// connection takes from nowhere else.
pub fn encode_store(w: &mut Writer, ino: u64, off: u64, data: &[u8]) {
    w.start();
    w.u64(ino)
        .u64(off)
        .u32(data.len() as u32)
        .u32(0)
        .bytes(data);
    w.finish(NOTIFY_STORE, 0);
}

/// `FUSE_DEV_IOC_BACKING_OPEN`: `_IOW(229, 1, struct fuse_backing_map)`.
pub const DEV_IOC_BACKING_OPEN: u64 = 0x4010_e501;
/// `FUSE_DEV_IOC_BACKING_CLOSE`: `_IOW(229, 2, uint32_t)`.
pub const DEV_IOC_BACKING_CLOSE: u64 = 0x4004_e502;

/// Error of a malformed request: its body is shorter than the operation needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Malformed;

/// A bounds-checked cursor over the bytes of one request body.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    /// A reader over `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf }
    }

    /// Takes the next `n` bytes.
    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], Malformed> {
        if self.buf.len() < n {
            return Err(Malformed);
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    /// Takes a native-endian u32.
    pub fn u32(&mut self) -> Result<u32, Malformed> {
        let b = self.bytes(4)?;
        Ok(u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// Takes a native-endian u16.
    pub fn u16(&mut self) -> Result<u16, Malformed> {
        let b = self.bytes(2)?;
        Ok(u16::from_ne_bytes([b[0], b[1]]))
    }

    /// Takes a native-endian u64.
    pub fn u64(&mut self) -> Result<u64, Malformed> {
        let b = self.bytes(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_ne_bytes(a))
    }

    /// Skips `n` bytes.
    pub fn skip(&mut self, n: usize) -> Result<(), Malformed> {
        self.bytes(n).map(|_| ())
    }

    /// Takes a NUL-terminated, non-empty string.
    pub fn cstr(&mut self) -> Result<&'a std::ffi::CStr, Malformed> {
        let pos = self.buf.iter().position(|&c| c == 0).ok_or(Malformed)?;
        if pos == 0 {
            return Err(Malformed);
        }
        let s = std::ffi::CStr::from_bytes_with_nul(&self.buf[..pos + 1]).map_err(|_| Malformed)?;
        self.buf = &self.buf[pos + 1..];
        Ok(s)
    }

    /// Takes a NUL-terminated single path component: non-empty, no `/`, not `.` or `..`.
    pub fn name(&mut self) -> Result<&'a std::ffi::CStr, Malformed> {
        let s = self.cstr()?;
        let b = s.to_bytes();
        if b == b"." || b == b".." || b.contains(&b'/') {
            return Err(Malformed);
        }
        Ok(s)
    }

    /// The bytes not consumed yet.
    pub fn rest(&self) -> &'a [u8] {
        self.buf
    }
}

/// Parsed `fuse_in_header`.
#[derive(Debug, Clone, Copy, Default)]
pub struct InHeader {
    /// Total length of the request, header included.
    pub len: u32,
    /// Operation code.
    pub opcode: u32,
    /// Request id (bit 63 set on a resent request; echo it unchanged).
    pub unique: u64,
    /// Target node.
    pub nodeid: u64,
    /// Caller's fs uid as the superblock's user namespace sees it.
    pub uid: u32,
    /// Caller's fs gid.
    pub gid: u32,
    /// Caller's pid (thread group id).
    pub pid: u32,
    /// Length of extensions, in 8-byte units.
    pub total_extlen: u16,
}

impl InHeader {
    /// Parses the header at the start of a frame of `frame_len` bytes.
    pub fn parse(frame: &[u8]) -> Result<Self, Malformed> {
        let mut r = Reader::new(frame);
        let h = InHeader {
            len: r.u32()?,
            opcode: r.u32()?,
            unique: r.u64()?,
            nodeid: r.u64()?,
            uid: r.u32()?,
            gid: r.u32()?,
            pid: r.u32()?,
            total_extlen: r.u16()?,
        };
        r.u16()?;
        if (h.len as usize) < IN_HEADER_LEN || h.len as usize != frame.len() {
            return Err(Malformed);
        }
        Ok(h)
    }
}

/// Appends native-endian fields to a reply buffer.
#[derive(Debug, Default)]
pub struct Writer {
    /// The reply bytes, header included once `finish` ran.
    pub buf: Vec<u8>,
}

impl Writer {
    /// Clears the buffer and reserves the out header.
    pub fn start(&mut self) {
        self.buf.clear();
        self.buf.extend_from_slice(&[0u8; OUT_HEADER_LEN]);
    }
    /// Appends a u32.
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.buf.extend_from_slice(&v.to_ne_bytes());
        self
    }
    /// Appends a u16.
    pub fn u16(&mut self, v: u16) -> &mut Self {
        self.buf.extend_from_slice(&v.to_ne_bytes());
        self
    }
    /// Appends an i32.
    pub fn i32(&mut self, v: i32) -> &mut Self {
        self.buf.extend_from_slice(&v.to_ne_bytes());
        self
    }
    /// Appends a u64.
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.buf.extend_from_slice(&v.to_ne_bytes());
        self
    }
    /// Appends raw bytes.
    pub fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(b);
        self
    }
    /// Appends zero bytes.
    pub fn zeros(&mut self, n: usize) -> &mut Self {
        self.buf.resize(self.buf.len() + n, 0);
        self
    }
    /// Fills in the out header: total length, error (negative errno or 0) and unique.
    pub fn finish(&mut self, error: i32, unique: u64) {
        let len = self.buf.len() as u32;
        self.buf[0..4].copy_from_slice(&len.to_ne_bytes());
        self.buf[4..8].copy_from_slice(&error.to_ne_bytes());
        self.buf[8..16].copy_from_slice(&unique.to_ne_bytes());
    }
}

/// The attributes of a node, as `struct fuse_attr` carries them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Attr {
    /// Inode number shown to the container.
    pub ino: u64,
    /// Size in bytes.
    pub size: u64,
    /// 512-byte blocks.
    pub blocks: u64,
    /// Access time (s).
    pub atime: i64,
    /// Modification time (s).
    pub mtime: i64,
    /// Change time (s).
    pub ctime: i64,
    /// Access time (ns).
    pub atimensec: u32,
    /// Modification time (ns).
    pub mtimensec: u32,
    /// Change time (ns).
    pub ctimensec: u32,
    /// Type and permission bits.
    pub mode: u32,
    /// Link count.
    pub nlink: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Device number (device nodes).
    pub rdev: u32,
    /// Preferred I/O size.
    pub blksize: u32,
}

impl Attr {
    /// Encodes as `struct fuse_attr` (88 bytes).
    pub fn encode(&self, w: &mut Writer) {
        w.u64(self.ino)
            .u64(self.size)
            .u64(self.blocks)
            .u64(self.atime as u64)
            .u64(self.mtime as u64)
            .u64(self.ctime as u64)
            .u32(self.atimensec)
            .u32(self.mtimensec)
            .u32(self.ctimensec)
            .u32(self.mode)
            .u32(self.nlink)
            .u32(self.uid)
            .u32(self.gid)
            .u32(self.rdev)
            .u32(self.blksize)
            .u32(0);
    }
}

/// Size of `struct fuse_entry_out`.
pub const ENTRY_OUT_LEN: usize = 128;
/// Size of `struct fuse_dirent` without its name.
pub const DIRENT_LEN: usize = 24;

/// Encodes `struct fuse_entry_out`.
pub fn encode_entry(w: &mut Writer, nodeid: u64, generation: u64, ttl: Ttl, attr: &Attr) {
    w.u64(nodeid)
        .u64(generation)
        .u64(ttl.secs)
        .u64(ttl.secs)
        .u32(ttl.nsecs)
        .u32(ttl.nsecs);
    attr.encode(w);
}

/// Rounds up to the 8-byte alignment of directory records.
pub fn dirent_align(n: usize) -> usize {
    (n + 7) & !7
}

/// Encodes one `struct fuse_dirent` with its padded name.
pub fn encode_dirent(w: &mut Writer, ino: u64, off: u64, typ: u32, name: &[u8]) {
    w.u64(ino)
        .u64(off)
        .u32(name.len() as u32)
        .u32(typ)
        .bytes(name);
    let pad = dirent_align(DIRENT_LEN + name.len()) - (DIRENT_LEN + name.len());
    w.zeros(pad);
}

/// A cache timeout for entries and attributes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ttl {
    /// Seconds.
    pub secs: u64,
    /// Nanoseconds.
    pub nsecs: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notification_frames() {
        let mut w = Writer::default();
        encode_prune(&mut w, &[5, 9]);
        assert_eq!(w.buf.len(), OUT_HEADER_LEN + 16 + 16);
        assert_eq!(&w.buf[0..4], &(48u32).to_ne_bytes());
        assert_eq!(&w.buf[4..8], &NOTIFY_PRUNE.to_ne_bytes());
        assert_eq!(&w.buf[8..16], &0u64.to_ne_bytes());
        assert_eq!(&w.buf[16..20], &2u32.to_ne_bytes());
        assert_eq!(&w.buf[32..40], &5u64.to_ne_bytes());
        assert_eq!(&w.buf[40..48], &9u64.to_ne_bytes());
        encode_prune(&mut w, &[]);
        assert_eq!(w.buf.len(), OUT_HEADER_LEN + 16);
        encode_inval_entry(&mut w, 7, b"abc");
        assert_eq!(w.buf.len(), OUT_HEADER_LEN + 16 + 4);
        assert_eq!(&w.buf[4..8], &NOTIFY_INVAL_ENTRY.to_ne_bytes());
        assert_eq!(&w.buf[16..24], &7u64.to_ne_bytes());
        assert_eq!(&w.buf[24..28], &3u32.to_ne_bytes());
        assert_eq!(&w.buf[32..36], b"abc\0");
    }

    #[test]
    fn header_rejects_short_and_inconsistent_frames() {
        assert!(InHeader::parse(&[0u8; 10]).is_err());
        let mut f = vec![0u8; 40];
        f[0..4].copy_from_slice(&40u32.to_ne_bytes());
        assert!(InHeader::parse(&f).is_ok());
        f[0..4].copy_from_slice(&4000u32.to_ne_bytes());
        assert!(InHeader::parse(&f).is_err());
    }

    #[test]
    fn reader_names() {
        let mut r = Reader::new(b"abc\0def\0");
        assert_eq!(r.cstr().unwrap().to_bytes(), b"abc");
        assert_eq!(r.name().unwrap().to_bytes(), b"def");
        assert!(Reader::new(b"..\0").name().is_err());
        assert!(Reader::new(b"a/b\0").name().is_err());
        assert!(r.cstr().is_err());
        let mut r = Reader::new(b"\0");
        assert!(r.cstr().is_err());
    }

    #[test]
    fn entry_and_dirent_sizes() {
        let mut w = Writer::default();
        w.start();
        encode_entry(&mut w, 2, 0, Ttl { secs: 1, nsecs: 0 }, &Attr::default());
        assert_eq!(w.buf.len(), OUT_HEADER_LEN + ENTRY_OUT_LEN);
        w.start();
        encode_dirent(&mut w, 1, 1, 4, b"x");
        assert_eq!(w.buf.len(), OUT_HEADER_LEN + 32);
    }
}
