//! The per-container supervisor: holds the container's capabilities and keeps its servers alive.
//!
//! `porta create` calls [`launch`]: it starts the supervisor as a fully detached daemon,
//! which opens /dev/fuse, makes the container's FUSE mount with the new mount API, starts
//! the file server (through a keeper process, see `porta_fs::keeper`) and sends the
//! detached mount back over a Unix socket. The supervisor restarts the file server when it
//! dies, stops or deadlocks, gives up only when the server's own deaths say a request kills
//! it, and exits when the mount is gone or after [`stop`]. A successor (a fork of it)
//! takes over when it dies. [`servers`] reports its servers for `porta state`, checked
//! against the processes.

mod backing;
mod client;
mod daemon;
mod entry;
mod error;
mod proc;
mod proxy;
pub mod translators;
mod watch;

pub(crate) use client::socket_path;
pub use client::{
    grant, launch, read_state, revoke, servers, spawn, stop, watch_container, LaunchSpec, Launched,
    Pending, LAUNCH_TIMEOUT,
};
pub use daemon::bind_api_socket;
pub(crate) use entry::init_logging;
pub use entry::{main_fs, main_supervisor};
pub use error::Error;
/// Translator records and the identity maps (re-exported for the `porta` binary).
pub use porta_fs::translator;
/// The typed messages between Porta's processes (re-exported for the `porta` binary,
/// which dispatches the hidden subcommands).
pub use porta_protocol as protocol;
pub use porta_protocol::supervisor::{ServerStatus, SupervisorState, TranslatorStatus};
pub use porta_protocol::Confinement;

/// Name of the supervisor's control socket in the state directory.
pub const SOCKET_NAME: &str = "supervisor.sock";
/// Name of the file, in the state directory, where the supervisor records its servers.
pub const SERVERS_FILE: &str = "servers.json";
