//! `porta`: the command line, compatible with runc's, plus the hidden entry points of the
//! container's supervisor and file server.

mod cli;
mod logging;
mod nested;
mod objects;
mod run;
mod share;
mod translator;
mod tty;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    // Hidden entry points, dispatched before the runc-compatible parser sees them.
    use porta_supervisor::protocol::{keeper, supervisor};
    match argv.get(1).and_then(|a| a.to_str()) {
        Some(supervisor::SUBCOMMAND) => {
            porta_supervisor::translators::set_builtins(builtin_translator);
            porta_supervisor::translators::set_file_server(|file, fuse, read_only| {
                porta_translators::file::serve_file(file, fuse, read_only)
                    .map_err(|e| e.to_string())
            });
            return code(porta_supervisor::main_supervisor(argv[2..].to_vec()));
        }
        Some(s) if s == keeper::SUBCOMMAND[0] => {
            return code(porta_supervisor::main_fs(argv[2..].to_vec()))
        }
        Some(porta_supervisor::protocol::api::SUBCOMMAND) => {
            logging::init_daemon();
            return code(porta_runtime::api::main(&argv[2..]));
        }
        _ => {}
    }
    let cli = cli::Cli::parse();
    // As runc (Go kills a program whose write to stdout or stderr meets a closed pipe): a
    // reader that goes away, as in `porta features | head`, ends a command that only
    // prints quietly instead of making the next `println!` panic. The commands that make,
    // change or remove containers keep SIGPIPE ignored: a supervisor's control socket
    // closing under them is an error they handle (its rollback must run), never a reason
    // to die half-way. (The container's processes get the default disposition back before
    // their exec: porta_runtime::init.)
    if matches!(
        cli.command,
        cli::Command::Features
            | cli::Command::State { .. }
            | cli::Command::List { .. }
            | cli::Command::Objects { .. }
            | cli::Command::Ps { .. }
            | cli::Command::Events { .. }
            | cli::Command::Spec { .. }
    ) {
        restore_sigpipe();
    }
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

/// Serves a built-in translator (`porta:NAME`) in the translator's process.
fn builtin_translator(
    name: &str,
    args: &[String],
    fd: std::os::fd::OwnedFd,
) -> Result<(), (i32, String)> {
    use porta_translators::{Builtin, Error};
    let errno = |e: &Error| match e {
        Error::UnknownBuiltin { .. } | Error::BadArgument { .. } | Error::Usage { .. } => {
            libc::EINVAL
        }
        _ => std::error::Error::source(e)
            .and_then(|s| s.downcast_ref::<std::io::Error>())
            .and_then(std::io::Error::raw_os_error)
            .unwrap_or(libc::EIO),
    };
    let b = Builtin::parse(name, args).map_err(|e| (errno(&e), e.to_string()))?;
    let p = b.prepare().map_err(|e| (errno(&e), e.to_string()))?;
    p.serve(fd).map_err(|e| (libc::EIO, e.to_string()))
}

/// Gives SIGPIPE its default action back (the Rust runtime ignores it at start-up).
fn restore_sigpipe() {
    // SAFETY: installs the default disposition; no handler code is involved.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
}

fn code(c: i32) -> ExitCode {
    ExitCode::from(c.clamp(0, 255) as u8)
}
