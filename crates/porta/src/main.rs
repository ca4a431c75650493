//! `porta`: the command line, compatible with runc's, plus the hidden entry points of the
//! container's supervisor and file server.

mod cli;
mod logging;
mod run;
mod tty;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    // Hidden entry points, dispatched before the runc-compatible parser sees them.
    match argv.get(1).and_then(|a| a.to_str()) {
        Some("supervisor") => return code(porta_supervisor::main_supervisor(argv[2..].to_vec())),
        Some("fs") => return code(porta_supervisor::main_fs(argv[2..].to_vec())),
        _ => {}
    }
    let cli = cli::Cli::parse();
    let to_file = match logging::init(cli.log.as_deref(), cli.log_format, cli.debug) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("porta: {e:#}");
            return ExitCode::from(1);
        }
    };
    match run::dispatch(cli) {
        Ok(c) => code(c),
        Err(e) => {
            let msg = format!("{e:#}");
            tracing::error!("{msg}");
            if to_file {
                eprintln!("porta: {msg}");
            }
            ExitCode::from(1)
        }
    }
}

fn code(c: i32) -> ExitCode {
    ExitCode::from(c.clamp(0, 255) as u8)
}
