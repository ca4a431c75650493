//! A container under test: runs the runtime's commands for one id, and on drop does
//! `delete --force` so a failing test leaves nothing behind.

use crate::cmd::{Cmd, Out};
use crate::Bundle;
use serde_json::Value;
use std::fs::File;
use std::time::Duration;

/// One container id under test with its bundle; `delete --force` on drop.
pub struct Container {
    /// The container id.
    pub id: String,
    /// The runtime's `--root`.
    pub root: String,
    /// The container's bundle (removed after the container on drop).
    pub bundle: Bundle,
    /// stdout of `create`/`run` — the container's process inherits it.
    io: File,
    /// Whether Drop runs `delete --force` for this id.
    armed: bool,
}

impl Container {
    /// A container with a unique id (prefix `pit-<tag>`) for `bundle`; writes config.json.
    pub fn new(tag: &str, bundle: Bundle) -> Container {
        Container::with_id(crate::unique_id(tag), crate::ROOT, bundle)
    }

    /// A container with an explicit id and `--root`.
    pub fn with_id(id: String, root: &str, bundle: Bundle) -> Container {
        bundle.write();
        Container {
            id,
            root: root.to_string(),
            bundle,
            io: tempfile::tempfile().expect("temp file"),
            armed: true,
        }
    }

    /// The runtime under test with this container's `--root`.
    pub fn cmd(&self) -> Cmd {
        Cmd::runtime(&self.root)
    }

    /// Runs `<runtime> --root R <args...>`.
    pub fn rt(&self, args: &[&str]) -> Out {
        self.cmd().args(args).run()
    }

    /// `create --bundle B [extra] ID`; the container's stdout goes to a file read by
    /// [`Container::output`].
    pub fn create_with(&self, extra: &[&str]) -> Out {
        let b = self.bundle.path_str();
        self.cmd()
            .args(["create", "--bundle", &b])
            .args(extra)
            .arg(&self.id)
            .stdout_file(self.io.try_clone().unwrap())
            .run()
    }
    /// `create --bundle B ID`.
    pub fn create(&self) -> Out {
        self.create_with(&[])
    }
    /// `start ID`.
    pub fn start(&self) -> Out {
        self.rt(&["start", &self.id])
    }
    /// `run --bundle B [extra] ID` in the foreground.
    pub fn run_with(&self, extra: &[&str]) -> Out {
        let b = self.bundle.path_str();
        self.cmd()
            .args(["run", "--bundle", &b])
            .args(extra)
            .arg(&self.id)
            .stdout_file(self.io.try_clone().unwrap())
            .timeout(Duration::from_secs(120))
            .run()
    }
    /// `run --bundle B ID` in the foreground.
    pub fn run(&self) -> Out {
        self.run_with(&[])
    }
    /// create + start, panicking on failure.
    pub fn create_start(&self) {
        self.create().expect_ok();
        self.start().expect_ok();
    }

    /// Everything the container's process wrote to stdout so far.
    pub fn output(&self) -> String {
        crate::cmd::read_from(&self.io, 0)
    }

    /// `state ID` parsed; panics on failure.
    #[track_caller]
    pub fn state(&self) -> Value {
        let o = self.rt(&["state", &self.id]);
        o.expect_ok();
        o.json()
    }
    /// The status from `state`, or None when state fails (e.g. container gone).
    pub fn status(&self) -> Option<String> {
        let o = self.rt(&["state", &self.id]);
        if !o.ok() {
            return None;
        }
        serde_json::from_str::<Value>(&o.stdout)
            .ok()
            .and_then(|v| v["status"].as_str().map(str::to_string))
    }
    /// The container's init pid from `state`.
    #[track_caller]
    pub fn pid(&self) -> i32 {
        self.state()["pid"].as_i64().expect("pid in state") as i32
    }
    /// Waits until `state` reports `stopped`; panics after `secs`.
    #[track_caller]
    pub fn wait_stopped(&self, secs: u64) {
        let r = crate::wait_for(Duration::from_secs(secs), || {
            (self.status().as_deref() == Some("stopped")).then_some(())
        });
        assert!(
            r.is_some(),
            "container {} not stopped after {secs}s (status {:?})",
            self.id,
            self.status()
        );
    }
    /// Waits until the container's stdout contains `needle`.
    pub fn wait_output(&self, needle: &str, secs: u64) -> bool {
        crate::wait_for(Duration::from_secs(secs), || {
            self.output().contains(needle).then_some(())
        })
        .is_some()
    }
    /// `kill ID SIG`.
    pub fn kill(&self, sig: &str) -> Out {
        self.rt(&["kill", &self.id, sig])
    }
    /// `delete ID` (without --force).
    pub fn delete(&self) -> Out {
        self.rt(&["delete", &self.id])
    }
    /// `exec [opts] ID args...` with captured output.
    pub fn exec(&self, opts: &[&str], args: &[&str]) -> Out {
        self.cmd()
            .arg("exec")
            .args(opts)
            .arg(&self.id)
            .args(args)
            .run()
    }
    /// The container's cgroup directory for `controller` (v1) or the unified one.
    pub fn cgroup_dir(&self, controller: &str) -> Option<std::path::PathBuf> {
        crate::cgroup::dir_of(self.pid(), controller)
    }
}

impl Container {
    /// Keeps Drop from deleting the id (for a second guard on an id another owns).
    pub fn disarm(&mut self) {
        self.armed = false;
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let o = self
            .cmd()
            .args(["delete", "--force", &self.id])
            .timeout(Duration::from_secs(30))
            .run();
        // The container is normally gone already; a failure then is expected.
        let _ = o;
    }
}

/// Runs `script` with `sh -c` in a container of `b` (id prefix `tag`) in the foreground:
/// the runtime's result and what the container wrote to stdout.
pub fn run_sh(tag: &str, mut b: Bundle, script: &str) -> (Out, String) {
    b.sh(script);
    let c = Container::new(tag, b);
    let o = c.run();
    let out = c.output();
    (o, out)
}
