//! Running the runtime under test (or any program) with captured output and a timeout.

use std::ffi::OsString;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// What `f` holds from offset `off` on, read without moving the file's shared offset.
pub fn read_from(f: &File, mut off: u64) -> String {
    use std::os::unix::fs::FileExt;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 65536];
    loop {
        match f.read_at(&mut chunk, off) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                off += n as u64;
            }
        }
    }
    String::from_utf8_lossy(&buf).into_owned()
}

/// The result of one command.
#[derive(Debug, Clone)]
pub struct Out {
    /// Exit code; 128+N when killed by signal N; -1 on timeout.
    pub code: i32,
    /// Everything written to stdout (lossily UTF-8).
    pub stdout: String,
    /// Everything written to stderr (lossily UTF-8).
    pub stderr: String,
    /// The command line, for messages.
    pub cmdline: String,
}

impl Out {
    /// Whether the exit code is 0.
    pub fn ok(&self) -> bool {
        self.code == 0
    }
    /// Panics with the command line and output unless the exit code is 0.
    #[track_caller]
    pub fn expect_ok(&self) -> &Self {
        assert!(self.code == 0, "command failed: {self}");
        self
    }
    /// Panics unless the exit code is non-zero.
    #[track_caller]
    pub fn expect_fail(&self) -> &Self {
        assert!(self.code != 0, "command unexpectedly succeeded: {self}");
        self
    }
    /// stdout parsed as JSON; panics with the output on failure.
    #[track_caller]
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {self}"))
    }
}

impl std::fmt::Display for Out {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "`{}` exited {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.cmdline, self.code, self.stdout, self.stderr
        )
    }
}

/// A command under construction. Output goes to anonymous temporary files, never pipes,
/// so a container process that inherits the runtime's stdio cannot block the test.
pub struct Cmd {
    prog: PathBuf,
    args: Vec<OsString>,
    stdin: Option<Vec<u8>>,
    timeout: Duration,
    envs: Vec<(OsString, OsString)>,
    stdout_file: Option<File>,
    cwd: Option<PathBuf>,
}

impl Cmd {
    /// `prog` with no arguments, a 60-second time limit, the test's environment.
    pub fn new(prog: impl Into<PathBuf>) -> Cmd {
        Cmd {
            prog: prog.into(),
            args: vec![],
            stdin: None,
            timeout: Duration::from_secs(60),
            envs: vec![],
            stdout_file: None,
            cwd: None,
        }
    }
    /// The runtime under test with `--root <root>` first.
    pub fn runtime(root: &str) -> Cmd {
        Cmd::new(crate::runtime()).arg("--root").arg(root)
    }
    /// Appends one argument.
    pub fn arg(mut self, a: impl Into<OsString>) -> Cmd {
        self.args.push(a.into());
        self
    }
    /// Appends arguments.
    pub fn args<I, S>(mut self, a: I) -> Cmd
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.args.extend(a.into_iter().map(Into::into));
        self
    }
    /// Feeds `data` on stdin (else stdin is /dev/null).
    pub fn stdin(mut self, data: impl Into<Vec<u8>>) -> Cmd {
        self.stdin = Some(data.into());
        self
    }
    /// The time limit after which the command is killed (its code is then -1).
    pub fn timeout(mut self, t: Duration) -> Cmd {
        self.timeout = t;
        self
    }
    /// Sets environment variable `k` to `v`.
    pub fn env(mut self, k: impl Into<OsString>, v: impl Into<OsString>) -> Cmd {
        self.envs.push((k.into(), v.into()));
        self
    }
    /// Runs the command in directory `d`.
    pub fn cwd(mut self, d: impl Into<PathBuf>) -> Cmd {
        self.cwd = Some(d.into());
        self
    }
    /// Use this file (e.g. one kept by a `Container`) for stdout instead of a fresh one.
    pub fn stdout_file(mut self, f: File) -> Cmd {
        self.stdout_file = Some(f);
        self
    }

    /// Runs the command to completion (killing it after the timeout).
    pub fn run(self) -> Out {
        let cmdline = std::iter::once(self.prog.display().to_string())
            .chain(self.args.iter().map(|a| a.to_string_lossy().into_owned()))
            .collect::<Vec<_>>()
            .join(" ");
        let out_f = match self.stdout_file {
            Some(f) => f,
            None => tempfile::tempfile().expect("temp file"),
        };
        // The file's offset is shared with every process writing to it (a detached
        // container keeps writing after this command returns): never move it, read with
        // pread from where this command's output starts.
        let start_len = out_f.metadata().map(|m| m.len()).unwrap_or(0);
        let mut err_f = tempfile::tempfile().expect("temp file");
        let stdin = match &self.stdin {
            Some(data) => {
                let mut f = tempfile::tempfile().expect("temp file");
                f.write_all(data).unwrap();
                f.seek(SeekFrom::Start(0)).unwrap();
                Stdio::from(f)
            }
            None => Stdio::null(),
        };
        let mut c = Command::new(&self.prog);
        c.args(&self.args)
            .stdin(stdin)
            .stdout(Stdio::from(out_f.try_clone().unwrap()))
            .stderr(Stdio::from(err_f.try_clone().unwrap()));
        for (k, v) in &self.envs {
            c.env(k, v);
        }
        if let Some(d) = &self.cwd {
            c.current_dir(d);
        }
        let mut child = match c.spawn() {
            Ok(c) => c,
            Err(e) => {
                return Out {
                    code: -1,
                    stdout: String::new(),
                    stderr: format!("spawn failed: {e}"),
                    cmdline,
                }
            }
        };
        let deadline = Instant::now() + self.timeout;
        let mut timed_out = false;
        let status = loop {
            match child.try_wait() {
                Ok(Some(s)) => break Some(s),
                Ok(None) => {}
                Err(_) => break None,
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                timed_out = true;
                break child.wait().ok();
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        let code = match status {
            _ if timed_out => -1,
            Some(s) => s.code().unwrap_or_else(|| 128 + s.signal().unwrap_or(0)),
            None => -1,
        };
        let stdout = read_from(&out_f, start_len);
        let mut stderr = String::new();
        err_f.seek(SeekFrom::Start(0)).unwrap();
        let _ = err_f.read_to_string(&mut stderr);
        if timed_out {
            stderr.push_str(&format!(
                "\n[test harness: killed after {:?}]",
                self.timeout
            ));
        }
        Out {
            code,
            stdout,
            stderr,
            cmdline,
        }
    }
}

/// Runs the runtime under test with `--root /run/porta-test` and `args`.
pub fn rt(args: &[&str]) -> Out {
    Cmd::runtime(crate::ROOT).args(args).run()
}

/// Runs the runtime under test with the given `--root` and `args`.
pub fn rt_root(root: &str, args: &[&str]) -> Out {
    Cmd::runtime(root).args(args).run()
}

/// Runs a host program with args.
pub fn host(prog: &str, args: &[&str]) -> Out {
    Cmd::new(prog).args(args).run()
}
