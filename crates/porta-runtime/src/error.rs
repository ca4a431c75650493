//! The runtime core's error type.

use std::path::PathBuf;

/// Everything that can go wrong in the runtime core, with the context a person needs to act.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The bundle's config.json is missing, unreadable or malformed.
    #[error("config {path}: {msg}")]
    Config {
        /// The config file.
        path: PathBuf,
        /// What is wrong with it.
        msg: String,
    },
    /// A field of the config has a value Porta cannot honour.
    #[error("config field {field}: {msg}")]
    InvalidField {
        /// The field, as a JSON path (e.g. `process.args`).
        field: String,
        /// What is wrong with its value.
        msg: String,
    },
    /// A command-line argument is wrong.
    #[error("{0}")]
    Usage(String),
    /// No container with this id exists under the state root.
    #[error("container {0} does not exist")]
    NotFound(String),
    /// A container with this id already exists.
    #[error("container {0} already exists")]
    Exists(String),
    /// The container id is not acceptable.
    #[error("invalid container id {id:?}: {why}")]
    InvalidId {
        /// The id as given.
        id: String,
        /// Why it is refused.
        why: String,
    },
    /// The container is not in a state that allows the operation.
    #[error("container {id} is {status}: {msg}")]
    BadState {
        /// The container.
        id: String,
        /// Its status now (`created`, `running`, …).
        status: String,
        /// Why the operation needs another status.
        msg: String,
    },
    /// A system call or file operation failed.
    #[error("{what}: {source}")]
    Sys {
        /// The operation and its object, e.g. `mount /proc`.
        what: String,
        /// The error the kernel returned.
        #[source]
        source: std::io::Error,
    },
    /// The container's init process reported a failure while setting up.
    #[error("container init: {0}")]
    Init(String),
    /// A hook failed or timed out.
    #[error("{kind} hook {path}: {msg}")]
    Hook {
        /// The hook kind (`prestart`, `createRuntime`, …).
        kind: String,
        /// The hook's program.
        path: PathBuf,
        /// How it failed.
        msg: String,
    },
    /// A cgroup operation failed.
    #[error(transparent)]
    Cgroup(#[from] porta_cgroups::Error),
    /// A seccomp filter could not be built or loaded.
    #[error("seccomp: {0}")]
    Seccomp(String),
    /// State on disk is corrupt.
    #[error("state {path}: {msg}")]
    State {
        /// The state file.
        path: PathBuf,
        /// What is wrong with it.
        msg: String,
    },
    /// Checkpoint or restore cannot be done, or CRIU failed.
    #[error("{0}")]
    Checkpoint(String),
    /// The file server or its supervisor failed (launch, stop, watch), with the
    /// supervisor's own error as the source.
    #[error("file server: {0}")]
    FileServer(#[source] Box<porta_supervisor::Error>),
    /// The caller may not do this to a nested container (EPERM): only the parent's
    /// superuser creates, starts, enters, kills or deletes its children.
    #[error("permission denied: {0}")]
    Denied(String),
    /// A nested container's operation failed in the runtime it ran (`porta create` or
    /// `porta exec` beneath the parent), with that runtime's own message.
    #[error("nested container {id}: {op}: {msg}")]
    Nested {
        /// The child.
        id: String,
        /// The operation (`create`, `exec`).
        op: String,
        /// What went wrong.
        msg: String,
    },
    /// The container API socket refused a request or could not be reached (the API
    /// server's errno, or an errno of the client's own, and its message).
    #[error("API {what}: {message} ({errno})")]
    Api {
        /// What was asked (`list`, `connect /run/porta/api.sock`, …).
        what: String,
        /// The errno name (`ENOENT`, `EACCES`, …).
        errno: String,
        /// What went wrong.
        message: String,
    },
}

impl From<porta_supervisor::Error> for Error {
    fn from(e: porta_supervisor::Error) -> Error {
        // Boxed: the supervisor's error is large and would make every Result of the
        // runtime carry its size.
        Error::FileServer(Box::new(e))
    }
}

/// Result type of the runtime core.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The errno a caller across an API (the API socket of a container) should see for
    /// this error: EPERM for a refused caller, ENOENT for an unknown container, EEXIST for
    /// a taken id, EINVAL for a refused config or argument, EIO otherwise.
    pub fn errno(&self) -> i32 {
        match self {
            Error::Denied(_) => libc::EPERM,
            Error::NotFound(_) => libc::ENOENT,
            Error::Exists(_) => libc::EEXIST,
            Error::InvalidField { .. }
            | Error::Config { .. }
            | Error::Usage(_)
            | Error::InvalidId { .. }
            | Error::BadState { .. } => libc::EINVAL,
            Error::Sys { source, .. } => source.raw_os_error().unwrap_or(libc::EIO),
            _ => libc::EIO,
        }
    }

    /// Wraps an I/O error with a description of what was being done.
    pub fn sys(what: impl Into<String>, source: std::io::Error) -> Self {
        Error::Sys {
            what: what.into(),
            source,
        }
    }

    /// Wraps an errno from nix with a description of what was being done.
    pub fn nix(what: impl Into<String>, errno: nix::errno::Errno) -> Self {
        Error::Sys {
            what: what.into(),
            source: std::io::Error::from_raw_os_error(errno as i32),
        }
    }

    /// An invalid config field.
    pub fn field(field: impl Into<String>, msg: impl Into<String>) -> Self {
        Error::InvalidField {
            field: field.into(),
            msg: msg.into(),
        }
    }
}

/// Adds context to nix and io results.
pub trait Context<T> {
    /// Attaches a description of the failed action.
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T> Context<T> for std::result::Result<T, nix::errno::Errno> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| Error::nix(what(), e))
    }
}

impl<T> Context<T> for std::result::Result<T, std::io::Error> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| Error::sys(what(), e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A supervisor error reaches the runtime typed, with the message it always had.
    #[test]
    fn supervisor_errors_are_carried_as_the_source() {
        let e: Error = porta_supervisor::Error::Start {
            id: "c1".into(),
            msg: "no /dev/fuse".into(),
            log: PathBuf::from("/run/x/supervisor.log"),
        }
        .into();
        assert_eq!(
            e.to_string(),
            "file server: supervisor for container c1 failed to start: no /dev/fuse \
             (log: /run/x/supervisor.log)"
        );
        let src = std::error::Error::source(&e).expect("a source");
        let typed = src
            .downcast_ref::<Box<porta_supervisor::Error>>()
            .map(|b| b.as_ref());
        assert!(matches!(
            typed,
            Some(porta_supervisor::Error::Start { id, .. }) if id == "c1"
        ));
        assert!(
            matches!(e, Error::FileServer(ref b) if matches!(**b, porta_supervisor::Error::Start { .. }))
        );
    }
}
