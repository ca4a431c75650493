//! Porta's runtime core: OCI bundles, container state, namespaces, the root file system,
//! the container's process, cgroups (through `porta-cgroups`), seccomp and hooks.
//!
//! The container's root is either mounted by the kernel (`run.porta.fs=kernel`, as runc
//! does) or served by the container's own file server (see `porta-supervisor`); both plug in
//! at one place, [`rootfs::RootfsPlan::served_root`].

pub mod api;
pub mod checkpoint;
pub(crate) mod config;
pub(crate) mod console;
pub mod container;
pub(crate) mod detached;
pub mod error;
pub mod features;
pub(crate) mod hooks;
pub(crate) mod init;
pub(crate) mod kernel;
pub(crate) mod mounts;
pub(crate) mod namespaces;
pub mod nested;
pub mod objects;
pub(crate) mod process;
pub mod rootfs;
pub(crate) mod seccomp;
pub mod selfexe;
pub mod spec;
pub mod state;
pub(crate) mod sync;
pub mod sys;
pub(crate) mod tmpcopyup;

pub use error::{Error, Result};
