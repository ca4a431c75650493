//! The request bodies of the operations the server implements, decoded from the wire
//! into one typed argument struct per opcode (`struct fuse_*_in` and the names that
//! follow it). Decoding checks every bound: a body too short for its structure, or a
//! name that is not one path component, is [`Malformed`].

use std::ffi::CStr;

use super::{Malformed, Reader};

/// An argument struct decoded from a request body.
pub trait Decode<'a>: Sized {
    /// Decodes the body `r` reads (it may leave bytes unread).
    fn decode(r: &mut Reader<'a>) -> Result<Self, Malformed>;
}

/// `GETATTR` flag: `fh` names an open file to take the attributes of.
pub const GETATTR_FH: u32 = 1 << 0;
/// `FSYNC` / `FSYNCDIR` flag: data only (fdatasync).
pub const FSYNC_FDATASYNC: u32 = 1 << 0;

/// `LOOKUP`: the name to look up in the request's directory node.
#[derive(Debug, Clone, Copy)]
pub struct Lookup<'a> {
    /// One path component.
    pub name: &'a CStr,
}

impl<'a> Decode<'a> for Lookup<'a> {
    fn decode(r: &mut Reader<'a>) -> Result<Self, Malformed> {
        Ok(Lookup { name: r.name()? })
    }
}

/// `FORGET` (`fuse_forget_in`): lookups of the request's node the kernel drops.
#[derive(Debug, Clone, Copy)]
pub struct Forget {
    /// How many lookups to drop.
    pub nlookup: u64,
}

impl Decode<'_> for Forget {
    fn decode(r: &mut Reader<'_>) -> Result<Self, Malformed> {
        Ok(Forget { nlookup: r.u64()? })
    }
}

/// `BATCH_FORGET` (`fuse_batch_forget_in` then `fuse_forget_one`s): (node id, lookups)
/// pairs. A frame shorter than its count says keeps the entries it holds.
#[derive(Debug, Clone)]
pub struct BatchForget {
    /// The (node id, lookups to drop) entries.
    pub entries: Vec<(u64, u64)>,
}

impl Decode<'_> for BatchForget {
    fn decode(r: &mut Reader<'_>) -> Result<Self, Malformed> {
        let count = r.u32()?;
        r.u32()?; // dummy
        let mut entries = Vec::with_capacity((count as usize).min(4096));
        for _ in 0..count {
            let (Ok(id), Ok(n)) = (r.u64(), r.u64()) else {
                break;
            };
            entries.push((id, n));
        }
        Ok(BatchForget { entries })
    }
}

/// `GETATTR` (`fuse_getattr_in`).
#[derive(Debug, Clone, Copy)]
pub struct Getattr {
    /// [`GETATTR_FH`] or 0.
    pub flags: u32,
    /// The open file, with [`GETATTR_FH`].
    pub fh: u64,
}

impl Decode<'_> for Getattr {
    fn decode(r: &mut Reader<'_>) -> Result<Self, Malformed> {
        let flags = r.u32()?;
        r.u32()?; // dummy
        let fh = r.u64()?;
        Ok(Getattr { flags, fh })
    }
}

/// `SETATTR` (`fuse_setattr_in`): the attributes named in `valid` (`abi::fattr`).
#[derive(Debug, Clone, Copy)]
pub struct Setattr {
    /// Which of the fields below are set (`abi::fattr` bits).
    pub valid: u32,
    /// The open file, with `fattr::FH`.
    pub fh: u64,
    /// New size.
    pub size: u64,
    /// New access time (s).
    pub atime: i64,
    /// New modification time (s).
    pub mtime: i64,
    /// New access time (ns).
    pub atimensec: u32,
    /// New modification time (ns).
    pub mtimensec: u32,
    /// New mode (permission bits are used).
    pub mode: u32,
    /// New owner.
    pub uid: u32,
    /// New group.
    pub gid: u32,
}

impl Decode<'_> for Setattr {
    fn decode(r: &mut Reader<'_>) -> Result<Self, Malformed> {
        let valid = r.u32()?;
        r.u32()?; // padding
        let fh = r.u64()?;
        let size = r.u64()?;
        r.u64()?; // lock_owner
        let atime = r.u64()? as i64;
        let mtime = r.u64()? as i64;
        r.u64()?; // ctime
        let atimensec = r.u32()?;
        let mtimensec = r.u32()?;
        r.u32()?; // ctimensec
        let mode = r.u32()?;
        r.u32()?; // unused
        let uid = r.u32()?;
        let gid = r.u32()?;
        Ok(Setattr {
            valid,
            fh,
            size,
            atime,
            mtime,
            atimensec,
            mtimensec,
            mode,
            uid,
            gid,
        })
    }
}

/// `SYMLINK`: the new link's name, then its target.
#[derive(Debug, Clone, Copy)]
pub struct Symlink<'a> {
    /// One path component.
    pub name: &'a CStr,
    /// What the link points to (any non-empty string).
    pub target: &'a CStr,
}

impl<'a> Decode<'a> for Symlink<'a> {
    fn decode(r: &mut Reader<'a>) -> Result<Self, Malformed> {
        let name = r.name()?;
        let target = r.cstr()?;
        Ok(Symlink { name, target })
    }
}

/// `MKNOD` (`fuse_mknod_in`, then the name).
#[derive(Debug, Clone, Copy)]
pub struct Mknod<'a> {
    /// File type and permission bits.
    pub mode: u32,
    /// Device number (character and block devices).
    pub rdev: u32,
    /// One path component.
    pub name: &'a CStr,
}

impl<'a> Decode<'a> for Mknod<'a> {
    fn decode(r: &mut Reader<'a>) -> Result<Self, Malformed> {
        let mode = r.u32()?;
        let rdev = r.u32()?;
        r.skip(8)?; // umask (applied by the kernel), padding
        let name = r.name()?;
        Ok(Mknod { mode, rdev, name })
    }
}

/// `MKDIR` (`fuse_mkdir_in`, then the name).
#[derive(Debug, Clone, Copy)]
pub struct Mkdir<'a> {
    /// Permission bits.
    pub mode: u32,
    /// One path component.
    pub name: &'a CStr,
}

impl<'a> Decode<'a> for Mkdir<'a> {
    fn decode(r: &mut Reader<'a>) -> Result<Self, Malformed> {
        let mode = r.u32()?;
        r.u32()?; // umask: applied by the kernel
        let name = r.name()?;
        Ok(Mkdir { mode, name })
    }
}

/// `UNLINK` and `RMDIR`: the name to remove from the request's directory node.
#[derive(Debug, Clone, Copy)]
pub struct Unlink<'a> {
    /// One path component.
    pub name: &'a CStr,
}

impl<'a> Decode<'a> for Unlink<'a> {
    fn decode(r: &mut Reader<'a>) -> Result<Self, Malformed> {
        Ok(Unlink { name: r.name()? })
    }
}

/// `RENAME` (`fuse_rename_in`) and `RENAME2` (`fuse_rename2_in`, with flags), then the
/// old and the new name.
#[derive(Debug, Clone, Copy)]
pub struct Rename<'a> {
    /// The directory node the name moves to.
    pub newdir: u64,
    /// renameat2(2) flags (0 for `RENAME`).
    pub flags: u32,
    /// The name in the request's directory node.
    pub old: &'a CStr,
    /// The name in `newdir`.
    pub new: &'a CStr,
}

impl<'a> Rename<'a> {
    /// Decodes a `RENAME2` body (`with_flags`) or a `RENAME` one.
    pub fn decode(r: &mut Reader<'a>, with_flags: bool) -> Result<Self, Malformed> {
        let newdir = r.u64()?;
        let flags = if with_flags {
            let f = r.u32()?;
            r.u32()?; // padding
            f
        } else {
            0
        };
        let old = r.name()?;
        let new = r.name()?;
        Ok(Rename {
            newdir,
            flags,
            old,
            new,
        })
    }
}

/// `LINK` (`fuse_link_in`, then the new name).
#[derive(Debug, Clone, Copy)]
pub struct Link<'a> {
    /// The node to link.
    pub oldnodeid: u64,
    /// The new name in the request's directory node.
    pub name: &'a CStr,
}

impl<'a> Decode<'a> for Link<'a> {
    fn decode(r: &mut Reader<'a>) -> Result<Self, Malformed> {
        let oldnodeid = r.u64()?;
        let name = r.name()?;
        Ok(Link { oldnodeid, name })
    }
}

/// `OPEN` (`fuse_open_in`).
#[derive(Debug, Clone, Copy)]
pub struct Open {
    /// open(2) flags.
    pub flags: i32,
    /// `open_in::KILL_SUIDGID` was set: an O_TRUNC open by a caller without CAP_FSETID.
    pub kill_suidgid: bool,
}

impl Decode<'_> for Open {
    fn decode(r: &mut Reader<'_>) -> Result<Self, Malformed> {
        let flags = r.u32()? as i32;
        let open_flags = r.u32()?;
        Ok(Open {
            flags,
            kill_suidgid: open_flags & super::open_in::KILL_SUIDGID != 0,
        })
    }
}

/// `CREATE` (`fuse_create_in`, then the name).
#[derive(Debug, Clone, Copy)]
pub struct Create<'a> {
    /// open(2) flags.
    pub flags: i32,
    /// Permission bits of a new file.
    pub mode: u32,
    /// The caller's umask (the kernel applied it to `mode` already).
    pub umask: u32,
    /// `open_in::KILL_SUIDGID` was set (see [`Open::kill_suidgid`]).
    pub kill_suidgid: bool,
    /// One path component.
    pub name: &'a CStr,
}

impl<'a> Decode<'a> for Create<'a> {
    fn decode(r: &mut Reader<'a>) -> Result<Self, Malformed> {
        let flags = r.u32()? as i32;
        let mode = r.u32()?;
        let umask = r.u32()?;
        let open_flags = r.u32()?;
        let name = r.name()?;
        Ok(Create {
            flags,
            mode,
            umask,
            kill_suidgid: open_flags & super::open_in::KILL_SUIDGID != 0,
            name,
        })
    }
}

/// `READ` (`fuse_read_in`, the fields used).
#[derive(Debug, Clone, Copy)]
pub struct Read {
    /// The open file.
    pub fh: u64,
    /// Where to read.
    pub offset: u64,
    /// How many bytes at most.
    pub size: u32,
}

impl Decode<'_> for Read {
    fn decode(r: &mut Reader<'_>) -> Result<Self, Malformed> {
        let fh = r.u64()?;
        let offset = r.u64()?;
        let size = r.u32()?;
        Ok(Read { fh, offset, size })
    }
}

/// `WRITE` (`fuse_write_in`, then the data).
#[derive(Debug, Clone, Copy)]
pub struct Write<'a> {
    /// The open file.
    pub fh: u64,
    /// Where to write.
    pub offset: u64,
    /// `abi::write_flags` bits.
    pub write_flags: u32,
    /// The bytes to write (as many as the request says; all present in the frame).
    pub data: &'a [u8],
}

impl<'a> Decode<'a> for Write<'a> {
    fn decode(r: &mut Reader<'a>) -> Result<Self, Malformed> {
        let fh = r.u64()?;
        let offset = r.u64()?;
        let size = r.u32()? as usize;
        let write_flags = r.u32()?;
        r.skip(16)?; // lock_owner, flags, padding
        let data = r.bytes(size)?;
        Ok(Write {
            fh,
            offset,
            write_flags,
            data,
        })
    }
}

/// `RELEASE` (`fuse_release_in`, the field used).
#[derive(Debug, Clone, Copy)]
pub struct Release {
    /// The open file to close.
    pub fh: u64,
}

impl Decode<'_> for Release {
    fn decode(r: &mut Reader<'_>) -> Result<Self, Malformed> {
        Ok(Release { fh: r.u64()? })
    }
}

/// `FSYNC` and `FSYNCDIR` (`fuse_fsync_in`).
#[derive(Debug, Clone, Copy)]
pub struct Fsync {
    /// The open file (`FSYNC`; unused for `FSYNCDIR`, which comes without OPENDIR).
    pub fh: u64,
    /// [`FSYNC_FDATASYNC`] or 0.
    pub fsync_flags: u32,
}

impl Fsync {
    /// Whether only the data is to be synced.
    pub fn datasync(&self) -> bool {
        self.fsync_flags & FSYNC_FDATASYNC != 0
    }
}

impl Decode<'_> for Fsync {
    fn decode(r: &mut Reader<'_>) -> Result<Self, Malformed> {
        let fh = r.u64()?;
        let fsync_flags = r.u32()?;
        Ok(Fsync { fh, fsync_flags })
    }
}

/// `SETXATTR` (`fuse_setxattr_in`, then the name and the value).
#[derive(Debug, Clone, Copy)]
pub struct Setxattr<'a> {
    /// setxattr(2) flags.
    pub flags: i32,
    /// The attribute's name.
    pub name: &'a CStr,
    /// Its value (as many bytes as the request says; all present in the frame).
    pub value: &'a [u8],
}

impl<'a> Decode<'a> for Setxattr<'a> {
    fn decode(r: &mut Reader<'a>) -> Result<Self, Malformed> {
        let size = r.u32()? as usize;
        let flags = r.u32()? as i32;
        let name = r.cstr()?;
        let value = r.bytes(size)?;
        Ok(Setxattr { flags, name, value })
    }
}

/// `GETXATTR` (`fuse_getxattr_in`, then the name).
#[derive(Debug, Clone, Copy)]
pub struct Getxattr<'a> {
    /// The caller's buffer size (0: only the value's size is asked for).
    pub size: u32,
    /// The attribute's name.
    pub name: &'a CStr,
}

impl<'a> Decode<'a> for Getxattr<'a> {
    fn decode(r: &mut Reader<'a>) -> Result<Self, Malformed> {
        let size = r.u32()?;
        r.u32()?; // padding
        let name = r.cstr()?;
        Ok(Getxattr { size, name })
    }
}

/// `LISTXATTR` (`fuse_getxattr_in`, the field used).
#[derive(Debug, Clone, Copy)]
pub struct Listxattr {
    /// The caller's buffer size (0: only the list's size is asked for).
    pub size: u32,
}

impl Decode<'_> for Listxattr {
    fn decode(r: &mut Reader<'_>) -> Result<Self, Malformed> {
        Ok(Listxattr { size: r.u32()? })
    }
}

/// `REMOVEXATTR`: the attribute's name.
#[derive(Debug, Clone, Copy)]
pub struct Removexattr<'a> {
    /// The attribute's name.
    pub name: &'a CStr,
}

impl<'a> Decode<'a> for Removexattr<'a> {
    fn decode(r: &mut Reader<'a>) -> Result<Self, Malformed> {
        Ok(Removexattr { name: r.cstr()? })
    }
}

/// `READDIR` and `READDIRPLUS` (`fuse_read_in`, the fields used).
#[derive(Debug, Clone, Copy)]
pub struct Readdir {
    /// The directory handle (unused: no OPENDIR; listings go by node).
    pub fh: u64,
    /// The offset to go on from (0, or one a previous reply gave).
    pub offset: u64,
    /// The most bytes of entries to answer.
    pub size: u32,
}

impl Decode<'_> for Readdir {
    fn decode(r: &mut Reader<'_>) -> Result<Self, Malformed> {
        let fh = r.u64()?;
        let offset = r.u64()?;
        let size = r.u32()?;
        Ok(Readdir { fh, offset, size })
    }
}

/// `FALLOCATE` (`fuse_fallocate_in`).
#[derive(Debug, Clone, Copy)]
pub struct Fallocate {
    /// The open file.
    pub fh: u64,
    /// Start of the range.
    pub offset: u64,
    /// Length of the range.
    pub length: u64,
    /// fallocate(2) mode.
    pub mode: i32,
}

impl Decode<'_> for Fallocate {
    fn decode(r: &mut Reader<'_>) -> Result<Self, Malformed> {
        let fh = r.u64()?;
        let offset = r.u64()?;
        let length = r.u64()?;
        let mode = r.u32()? as i32;
        Ok(Fallocate {
            fh,
            offset,
            length,
            mode,
        })
    }
}

/// `LSEEK` (`fuse_lseek_in`).
#[derive(Debug, Clone, Copy)]
pub struct Lseek {
    /// The open file.
    pub fh: u64,
    /// The offset.
    pub offset: i64,
    /// lseek(2) whence (SEEK_DATA, SEEK_HOLE...).
    pub whence: i32,
}

impl Decode<'_> for Lseek {
    fn decode(r: &mut Reader<'_>) -> Result<Self, Malformed> {
        let fh = r.u64()?;
        let offset = r.u64()? as i64;
        let whence = r.u32()? as i32;
        Ok(Lseek { fh, offset, whence })
    }
}

/// `COPY_FILE_RANGE` (`fuse_copy_file_range_in`); the source is the request's node.
#[derive(Debug, Clone, Copy)]
pub struct CopyFileRange {
    /// The source's open file.
    pub fh_in: u64,
    /// Where to read.
    pub off_in: u64,
    /// The destination's node.
    pub nodeid_out: u64,
    /// The destination's open file.
    pub fh_out: u64,
    /// Where to write.
    pub off_out: u64,
    /// How many bytes.
    pub len: u64,
    /// copy_file_range(2) flags.
    pub flags: u32,
}

impl Decode<'_> for CopyFileRange {
    fn decode(r: &mut Reader<'_>) -> Result<Self, Malformed> {
        let fh_in = r.u64()?;
        let off_in = r.u64()?;
        let nodeid_out = r.u64()?;
        let fh_out = r.u64()?;
        let off_out = r.u64()?;
        let len = r.u64()?;
        let flags = r.u64()? as u32;
        Ok(CopyFileRange {
            fh_in,
            off_in,
            nodeid_out,
            fh_out,
            off_out,
            len,
            flags,
        })
    }
}

/// `INIT` (`fuse_init_in`): the kernel's protocol version and what it offers.
#[derive(Debug, Clone, Copy)]
pub struct Init {
    /// Protocol major version.
    pub major: u32,
    /// Protocol minor version.
    pub minor: u32,
    /// The kernel's readahead limit.
    pub max_readahead: u32,
    /// The flags offered (`abi::init`; the high half from `flags2` when `INIT_EXT` is set).
    pub flags: u64,
}

impl Decode<'_> for Init {
    fn decode(r: &mut Reader<'_>) -> Result<Self, Malformed> {
        let major = r.u32()?;
        let minor = r.u32()?;
        let max_readahead = r.u32()?;
        let lo = u64::from(r.u32()?);
        let hi = u64::from(r.u32().unwrap_or(0));
        let flags = if lo & super::init::INIT_EXT != 0 {
            lo | (hi << 32)
        } else {
            lo
        };
        Ok(Init {
            major,
            minor,
            max_readahead,
            flags,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(parts: &[&[u8]]) -> Vec<u8> {
        parts.concat()
    }

    #[test]
    fn create_decodes_every_field_and_rejects_bad_names() {
        let b = body(&[
            &(libc::O_WRONLY | libc::O_TRUNC).to_ne_bytes(),
            &0o644u32.to_ne_bytes(),
            &0o022u32.to_ne_bytes(),
            &super::super::open_in::KILL_SUIDGID.to_ne_bytes(),
            b"f\0",
        ]);
        let c = Create::decode(&mut Reader::new(&b)).unwrap();
        assert_eq!(c.flags, libc::O_WRONLY | libc::O_TRUNC);
        assert_eq!((c.mode, c.umask), (0o644, 0o022));
        assert!(c.kill_suidgid);
        assert_eq!(c.name.to_bytes(), b"f");
        let mut bad = b.clone();
        bad.truncate(16);
        bad.extend_from_slice(b"a/b\0");
        assert!(Create::decode(&mut Reader::new(&bad)).is_err());
        assert!(Create::decode(&mut Reader::new(&b[..12])).is_err());
    }

    #[test]
    fn write_needs_all_its_data() {
        let mut b = body(&[
            &3u64.to_ne_bytes(),
            &7u64.to_ne_bytes(),
            &4u32.to_ne_bytes(),
            &0u32.to_ne_bytes(),
            &[0u8; 16],
            b"abcd",
        ]);
        let w = Write::decode(&mut Reader::new(&b)).unwrap();
        assert_eq!((w.fh, w.offset, w.data), (3, 7, &b"abcd"[..]));
        b.pop();
        assert!(Write::decode(&mut Reader::new(&b)).is_err());
    }

    #[test]
    fn rename_with_and_without_flags() {
        let b = body(&[&9u64.to_ne_bytes(), b"a\0b\0"]);
        let r = Rename::decode(&mut Reader::new(&b), false).unwrap();
        assert_eq!((r.newdir, r.flags), (9, 0));
        assert_eq!((r.old.to_bytes(), r.new.to_bytes()), (&b"a"[..], &b"b"[..]));
        let b = body(&[
            &9u64.to_ne_bytes(),
            &2u32.to_ne_bytes(),
            &[0; 4],
            b"a\0..\0",
        ]);
        assert!(Rename::decode(&mut Reader::new(&b), true).is_err());
    }

    #[test]
    fn batch_forget_keeps_the_entries_a_short_frame_holds() {
        let b = body(&[
            &3u32.to_ne_bytes(),
            &0u32.to_ne_bytes(),
            &5u64.to_ne_bytes(),
            &1u64.to_ne_bytes(),
            &6u64.to_ne_bytes(),
        ]);
        let f = BatchForget::decode(&mut Reader::new(&b)).unwrap();
        assert_eq!(f.entries, vec![(5, 1)]);
        assert!(BatchForget::decode(&mut Reader::new(&b[..6])).is_err());
    }

    #[test]
    fn init_takes_the_high_flags_only_with_init_ext() {
        use super::super::init;
        let b = body(&[
            &7u32.to_ne_bytes(),
            &40u32.to_ne_bytes(),
            &0u32.to_ne_bytes(),
            &(init::INIT_EXT as u32).to_ne_bytes(),
            &((init::PASSTHROUGH >> 32) as u32).to_ne_bytes(),
        ]);
        let i = Init::decode(&mut Reader::new(&b)).unwrap();
        assert_eq!(i.flags, init::INIT_EXT | init::PASSTHROUGH);
        let i = Init::decode(&mut Reader::new(&b[..16])).unwrap();
        assert_eq!(i.flags, init::INIT_EXT);
    }
}
