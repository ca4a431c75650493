//! The supervisor's errors.

use std::path::PathBuf;
use std::time::Duration;

/// Errors of the supervisor and of its client functions.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A system call failed.
    #[error("{0}: {1}")]
    Sys(&'static str, #[source] nix::errno::Errno),
    /// An I/O operation on a path failed.
    #[error("{what} {path}: {source}")]
    Path {
        /// What was being done.
        what: &'static str,
        /// The path concerned.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Another I/O operation failed.
    #[error("{0}: {1}")]
    Io(&'static str, #[source] std::io::Error),
    /// The supervisor reported a failure while starting (see its log file).
    #[error("supervisor for container {id} failed to start: {msg} (log: {log})")]
    Start {
        /// Container id.
        id: String,
        /// The supervisor's message.
        msg: String,
        /// The supervisor's log file.
        log: PathBuf,
    },
    /// The process that daemonizes the supervisor failed (see the log file).
    #[error("supervisor for container {id} failed to start: daemonizing process exited with {status} (log: {log})")]
    Daemonize {
        /// Container id.
        id: String,
        /// How the daemonizing process ended.
        status: std::process::ExitStatus,
        /// The supervisor's log file.
        log: PathBuf,
    },
    /// The supervisor ended without handing over the container's mount.
    #[error("supervisor for container {id} failed to start: exited before handing over the mount (log: {log})")]
    NoMount {
        /// Container id.
        id: String,
        /// The supervisor's log file.
        log: PathBuf,
    },
    /// The supervisor's launch reply is not one of the protocol's.
    #[error("supervisor for container {id} failed to start: {source} (log: {log})")]
    BadReply {
        /// Container id.
        id: String,
        /// What is wrong with the reply.
        #[source]
        source: porta_protocol::Error,
        /// The supervisor's log file.
        log: PathBuf,
    },
    /// The supervisor was asked to watch a process that does not exist.
    #[error("supervisor refused to watch process {0}: no such process")]
    NoSuchProcess(i32),
    /// A reply on the supervisor's control socket is not one of the protocol's, or not
    /// one the request allows.
    #[error("supervisor's answer to {request}: {source}")]
    Protocol {
        /// The request.
        request: &'static str,
        /// What is wrong with the answer.
        #[source]
        source: porta_protocol::Error,
    },
    /// The supervisor did not answer in time.
    #[error("supervisor did not {0} within {1:?}")]
    Timeout(&'static str, Duration),
    /// A file server error.
    #[error(transparent)]
    Fs(#[from] porta_fs::Error),
    /// The file server's cgroup leaf could not be prepared or joined.
    #[error("file server's cgroup: {0}")]
    Cgroup(Box<porta_cgroups::Error>),
    /// Bad arguments to a hidden subcommand.
    #[error(transparent)]
    Args(#[from] porta_protocol::Error),
    /// The supervisor has no keeper to send a command to.
    #[error("no file-server keeper")]
    NoKeeper,
    /// The supervisor, or the keeper, refused or failed a request.
    #[error("supervisor refused: {0}")]
    Refused(String),
    /// The state file could not be parsed.
    #[error("state file {0}: {1}")]
    State(PathBuf, String),
}

impl From<porta_cgroups::Error> for Error {
    fn from(e: porta_cgroups::Error) -> Self {
        Error::Cgroup(Box::new(e))
    }
}
