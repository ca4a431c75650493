//! The hidden subcommands' entry points: `porta supervisor …` and `porta fs …`.

use std::ffi::OsString;

use porta_protocol::keeper::KeeperArgs;
use porta_protocol::supervisor::SupervisorArgs;

use crate::daemon;

pub(crate) fn init_logging() {
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("PORTA_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .try_init();
}

/// Body of the hidden `porta supervisor …` subcommand; returns the process exit code.
pub fn main_supervisor(args: Vec<OsString>) -> i32 {
    match SupervisorArgs::from_argv(&args) {
        Ok(a) => daemon::run(a),
        Err(e) => {
            eprintln!("porta supervisor: {e}");
            2
        }
    }
}

/// Body of the hidden `porta fs …` subcommand; returns the process exit code.
/// `porta fs keeper --fuse-fd N --state-fd N --ctl-fd N --root DIR [--passthrough]`.
pub fn main_fs(args: Vec<OsString>) -> i32 {
    init_logging();
    match args.first().and_then(|a| a.to_str()) {
        Some(k) if k == porta_protocol::keeper::SUBCOMMAND[1] => {
            match KeeperArgs::from_argv(&args[1..]) {
                Ok(k) => match porta_fs::keeper::run_keeper(&k) {
                    Ok(()) => 0,
                    Err(e) => {
                        tracing::error!(error = %e, "keeper failed");
                        1
                    }
                },
                Err(e) => {
                    eprintln!("porta fs keeper: {e}");
                    2
                }
            }
        }
        _ => {
            eprintln!("porta fs: usage: porta fs keeper --fuse-fd N --state-fd N --ctl-fd N --root DIR [--passthrough]");
            2
        }
    }
}
