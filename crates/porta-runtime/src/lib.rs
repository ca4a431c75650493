//! Porta's runtime core: OCI bundles, container state, namespaces, the root file system,
//! the container's process, cgroups (through `porta-cgroups`), seccomp and hooks.
//!
//! The container's root is either mounted by the kernel (`run.porta.fs=kernel`, as runc
//! does) or served by the container's own file server (see `porta-supervisor`); both plug in
//! at one place, [`rootfs::RootfsPlan::served_root`].

pub mod checkpoint;
pub mod config;
pub mod console;
pub mod container;
pub mod detached;
pub mod error;
pub mod features;
pub mod hooks;
pub mod init;
pub(crate) mod kernel;
pub mod mounts;
pub mod namespaces;
pub mod process;
pub mod rootfs;
pub mod seccomp;
pub mod selfexe;
pub mod spec;
pub mod state;
pub mod sync;
pub mod sys;
pub mod tmpcopyup;

pub use error::{Error, Result};
