//! The crate's one error type.

use std::io;
use std::path::PathBuf;

/// What went wrong choosing, preparing or serving a built-in translator.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No built-in has this name.
    #[error("unknown built-in translator {name:?} (the built-ins are: {known})")]
    UnknownBuiltin {
        /// The name asked for.
        name: String,
        /// The names there are, comma separated.
        known: String,
    },
    /// An argument of a built-in is malformed or not one it takes.
    #[error("porta:{builtin}: bad argument {arg:?}: {reason}")]
    BadArgument {
        /// The built-in the argument was given to.
        builtin: &'static str,
        /// The argument as given.
        arg: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A required argument is missing.
    #[error("porta:{builtin}: {reason} (usage: {usage})")]
    Usage {
        /// The built-in.
        builtin: &'static str,
        /// What is missing.
        reason: String,
        /// The built-in's synopsis.
        usage: &'static str,
    },
    /// What the built-in serves could not be opened or inspected.
    #[error("porta:{builtin}: cannot open {}: {source}", path.display())]
    Open {
        /// The built-in.
        builtin: &'static str,
        /// The directory or archive, as given.
        path: PathBuf,
        /// The system's reason.
        source: io::Error,
    },
    /// The path given is not the kind of file the built-in serves.
    #[error("porta:{builtin}: {}: {reason}", path.display())]
    WrongKind {
        /// The built-in.
        builtin: &'static str,
        /// The path, as given.
        path: PathBuf,
        /// What it is and should be.
        reason: &'static str,
    },
    /// The archive is not a tar archive Porta can serve.
    #[error("porta:tar: {}: {reason}", path.display())]
    Archive {
        /// The archive, as given.
        path: PathBuf,
        /// What is wrong, naming the entry where there is one.
        reason: String,
    },
    /// The machine's memory size, for memfs's default size limit, is unknown.
    #[error("porta:memfs: cannot learn the physical memory size for the default size limit (give size=BYTES): {0}")]
    MemorySize(io::Error),
    /// The FUSE connection failed (not the peer closing it, which ends serving cleanly).
    #[error("porta:{builtin}: serving the FUSE connection: {source}")]
    Serve {
        /// The built-in.
        builtin: &'static str,
        /// The failure.
        source: io::Error,
    },
}
