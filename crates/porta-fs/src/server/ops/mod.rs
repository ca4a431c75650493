//! One method per FUSE operation (`Fs::op_*`), each taking its typed arguments
//! ([`crate::abi::args`]), grouped by what they work on, with the helpers only they use.

pub(super) mod attr;
pub(super) mod dir;
pub(super) mod entry;
pub(super) mod file;
pub(super) mod setid;
pub(super) mod xattr;
