//! The per-container supervisor: holds the container's capabilities and keeps its servers alive.

use std::ffi::OsString;

/// Body of the hidden `porta supervisor …` subcommand; returns the process exit code.
pub fn main_supervisor(args: Vec<OsString>) -> i32 {
    eprintln!("porta supervisor: not available in this build ({args:?})");
    1
}

/// Body of the hidden `porta fs …` subcommand; returns the process exit code.
pub fn main_fs(args: Vec<OsString>) -> i32 {
    eprintln!("porta fs: not available in this build ({args:?})");
    1
}
