//! Test-only stand-in for the `porta` binary: dispatches `supervisor …` and `fs …` to
//! this crate's entry points, so the integration tests can launch real supervisors.

fn main() {
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    use porta_supervisor::protocol::{keeper, supervisor};
    let code = match argv.get(1).and_then(|a| a.to_str()) {
        Some(supervisor::SUBCOMMAND) => porta_supervisor::main_supervisor(argv[2..].to_vec()),
        Some(s) if s == keeper::SUBCOMMAND[0] => porta_supervisor::main_fs(argv[2..].to_vec()),
        _ => {
            eprintln!("usage: porta-supervisor-test supervisor|fs ARGS…");
            2
        }
    };
    std::process::exit(code);
}
