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
    // As runc (Go kills a program whose write to stdout or stderr meets a closed pipe): a
    // reader that goes away, as in `porta features | head`, ends Porta quietly instead of
    // making the next `println!` panic. The container's processes inherit the default
    // disposition too, as under runc, instead of an ignored SIGPIPE.
    restore_sigpipe();
    let cli = cli::Cli::parse();
    let to_file = match logging::init(cli.log.as_deref(), cli.log_format, cli.debug) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("porta: {e:#}");
            return ExitCode::from(1);
        }
    };
    // As runc: `exec` exits 255 when the runtime itself fails (the process's own exit code
    // otherwise), so that a caller can tell the two apart.
    let fail = if matches!(cli.command, cli::Command::Exec(_)) {
        255
    } else {
        1
    };
    match run::dispatch(cli) {
        Ok(c) => code(c),
        Err(e) => {
            let msg = format!("{e:#}");
            tracing::error!("{msg}");
            if to_file {
                eprintln!("porta: {msg}");
            }
            ExitCode::from(fail)
        }
    }
}

/// Gives SIGPIPE its default action back (the Rust runtime ignores it at start-up).
fn restore_sigpipe() {
    // SAFETY: installs the default disposition; no handler code is involved.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
}

fn code(c: i32) -> ExitCode {
    ExitCode::from(c.clamp(0, 255) as u8)
}
