//! The file server (`porta fs`'s servers): clones of the keeper, started by a keeper
//! command ([`crate::keeper::CommandKind`]), so they take no arguments of their own. A
//! server tells the supervisor how it ended by its exit code.

/// Exit code of a server whose connection is gone (the container's mount was unmounted,
/// or the kernel sent DESTROY): the supervisor stops.
pub const EXIT_UNMOUNTED: i32 = 0;
/// Exit code of a server that failed: the supervisor replaces it (and counts the
/// failure against the server).
pub const EXIT_FAILED: i32 = 3;
