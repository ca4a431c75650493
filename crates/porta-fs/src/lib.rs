//! The container's file server: a FUSE server confined to the container's backing storage.
//!
//! Porta speaks the FUSE kernel ABI itself ([`abi`], [`server`]) so that a replacement
//! server can take over a live connection without a second INIT handshake. State that must
//! outlive one server process lives in a shared memory region ([`shared`]) and in an fd
//! table shared with a keeper process ([`keeper`]).

pub mod abi;
pub mod backing;
pub(crate) mod confine;
pub mod evict;
pub mod grant;
pub(crate) mod helper;
pub mod keeper;
pub mod listing;
pub mod mount;
pub(crate) mod server;
pub mod shared;
pub mod sys;
pub mod translator;

pub use server::uring::RingArea;
pub use server::{serve, Config, Exit, Transport, MAX_WRITE};
pub use shared::Shared;

/// Errors of the file server.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A system call failed (nix).
    #[error("{0}: {1}")]
    Sys(&'static str, #[source] nix::errno::Errno),
    /// A system call failed (std).
    #[error("{0}: {1}")]
    Io(&'static str, #[source] std::io::Error),
    /// The shared state or the configuration is inconsistent.
    #[error("file server state: {0}")]
    BadState(String),
    /// Bad command-line arguments to `porta fs`.
    #[error("porta fs: {0}")]
    Usage(String),
}
