//! `porta-workload`: the multi-call workload binary that porta-bench copies into the container
//! root file system. Usage: `porta-workload <workload> [args...]`; figures go to stdout as
//! `RESULT <metric> <value> <unit>` lines, diagnostics to stderr.

use porta_workloads as w;
use std::path::Path;
use std::process::ExitCode;

const USAGE: &str = "usage: porta-workload <workload> [args]
  primes N                 count primes below N
  fsmark DIR COUNT SIZE sync|nosync
  membw MIB ITERS          copy bandwidth over two MIB-MiB buffers
  memlat MIB ACCESSES      random pointer-chase latency over MIB MiB
  mktree DIR FILES         (setup) create a tree of FILES empty files
  stat-tree DIR            walk and lstat every entry under DIR twice (cold, warm)
  seqio FILE MIB           write (+fsync) then read MIB MiB sequentially
  smallfile DIR COUNT      create, stat, rename, delete COUNT small files
  smallio FILE COUNT       COUNT 100-byte appends, then COUNT open+read+close
  host-change DIR COUNT LIMIT   wait for COUNT files the host creates in DIR (SEEN lines)";

fn num<T: std::str::FromStr>(args: &[String], i: usize) -> Result<T, String> {
    let s = args
        .get(i)
        .ok_or_else(|| format!("missing argument {i}\n{USAGE}"))?;
    s.replace('_', "")
        .parse()
        .map_err(|_| format!("bad number {s:?}"))
}

fn arg(args: &[String], i: usize) -> Result<&str, String> {
    args.get(i)
        .map(|s| s.as_str())
        .ok_or_else(|| format!("missing argument {i}\n{USAGE}"))
}

fn run(args: &[String]) -> Result<Vec<w::Figure>, String> {
    let io = |e: std::io::Error| e.to_string();
    match arg(args, 0)? {
        "primes" => {
            let n: u64 = num(args, 1)?;
            let (count, f) = w::primes(n);
            println!("INFO primes below {n}: {count}");
            Ok(vec![f])
        }
        "fsmark" => {
            let sync = match arg(args, 4)? {
                "sync" => true,
                "nosync" => false,
                o => return Err(format!("fsmark: expected sync|nosync, got {o:?}")),
            };
            Ok(vec![w::fsmark(
                Path::new(arg(args, 1)?),
                num(args, 2)?,
                num(args, 3)?,
                sync,
            )
            .map_err(io)?])
        }
        "membw" => Ok(vec![w::membw(num::<usize>(args, 1)? << 20, num(args, 2)?)]),
        "memlat" => Ok(vec![w::memlat(num::<usize>(args, 1)? << 20, num(args, 2)?)]),
        "mktree" => {
            let n = w::make_tree(Path::new(arg(args, 1)?), num(args, 2)?).map_err(io)?;
            println!("INFO created {n} files");
            Ok(vec![])
        }
        "stat-tree" => {
            let (n, f) = w::stat_tree(Path::new(arg(args, 1)?)).map_err(io)?;
            println!("INFO files {n}");
            Ok(f.to_vec())
        }
        "seqio" => Ok(w::seqio(Path::new(arg(args, 1)?), num(args, 2)?)
            .map_err(io)?
            .to_vec()),
        "smallio" => Ok(w::smallio(Path::new(arg(args, 1)?), num(args, 2)?)
            .map_err(io)?
            .to_vec()),
        "smallfile" => Ok(vec![
            w::smallfile(Path::new(arg(args, 1)?), num(args, 2)?).map_err(io)?
        ]),
        "host-change" => {
            let seen = w::host_change(Path::new(arg(args, 1)?), num(args, 2)?, num(args, 3)?)
                .map_err(io)?;
            for (i, (t, checks)) in seen.iter().enumerate() {
                println!("SEEN {i} {t} {checks}");
            }
            Ok(vec![])
        }
        other => Err(format!("unknown workload {other:?}\n{USAGE}")),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(figs) => {
            for f in figs {
                println!("{}", f.line());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("porta-workload: {e}");
            ExitCode::FAILURE
        }
    }
}
