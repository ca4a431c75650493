//! The wire protocol between Porta's processes, one module per process.
//!
//! * [`supervisor`]: the arguments of `porta supervisor` (built by `porta create`), its
//!   launch reply, the requests and replies of its control socket, and the record it keeps
//!   of its servers (`servers.json`).
//! * [`keeper`]: the arguments of `porta fs keeper` (built by the supervisor), its first
//!   message, and the commands and answers on its control socket.
//! * [`server`]: what a file server tells the supervisor by its exit code (servers are
//!   clones of the keeper, not executed: they take no arguments).
//! * [`confinement`]: the confinement a file server runs under, as `porta state` shows it.
//! * [`grants`]: the record of the handles shared between containers (`grants.json`).
//! * [`objects`]: a container's namespace of objects, as `porta objects` lists it.
//! * [`api`]: the requests and replies of a container's API socket.
//!
//! Every message is built with `encode`/`to_argv` and read back with `decode`/`from_argv`;
//! malformed input (a garbled frame, a hostile process writing on a shared socket) is an
//! [`Error`] naming what is wrong, never a panic.

pub mod api;
pub mod confinement;
pub mod grants;
pub mod keeper;
pub mod objects;
pub mod server;
pub mod supervisor;

mod argv;

pub use confinement::Confinement;

/// What is wrong with an argument list or a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// An option that takes a value came last.
    #[error("{0} needs a value")]
    MissingValue(String),
    /// An option's value is not what it takes.
    #[error("{arg}: {value:?} is not {want}")]
    BadValue {
        /// The option.
        arg: String,
        /// The value given.
        value: String,
        /// What it takes.
        want: &'static str,
    },
    /// An argument no process of Porta takes.
    #[error("unknown argument {0:?}")]
    UnknownArgument(String),
    /// A required option is missing.
    #[error("{0} is required")]
    Missing(&'static str),
    /// Two options that go together, one without the other.
    #[error("{0} needs {1}")]
    Needs(&'static str, &'static str),
    /// A message that is not one of the protocol's.
    #[error("malformed {what}: {why}")]
    Malformed {
        /// Which message.
        what: &'static str,
        /// What is wrong with it.
        why: String,
    },
}

impl Error {
    pub(crate) fn malformed(what: &'static str, why: impl Into<String>) -> Error {
        Error::Malformed {
            what,
            why: why.into(),
        }
    }
}
