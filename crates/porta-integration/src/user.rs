//! Running the runtime under test as an unprivileged user (`setpriv`), as rootless
//! Podman or `runc --rootless` users do. The user needs no passwd entry.

use std::path::Path;

use crate::{runtime, Cmd};

/// `chown -R uid:uid` of `p`, so the user may use a bundle made by root.
#[track_caller]
pub fn chown_tree(p: &Path, uid: u32) {
    Cmd::new("chown")
        .args(["-R", &format!("{uid}:{uid}"), &p.display().to_string()])
        .run()
        .expect_ok();
}

/// The `setpriv` options that become user and group `uid` with no supplementary groups
/// and no inheritable capabilities.
pub fn setpriv_args(uid: u32) -> [String; 4] {
    [
        format!("--reuid={uid}"),
        format!("--regid={uid}"),
        "--clear-groups".to_string(),
        "--inh-caps=-all".to_string(),
    ]
}

/// `prog args… setpriv … -- <runtime> --root <state>`: the runtime under test run as
/// `uid` by `prog` (`env`, or a wrapper such as [`with_open_fuse`]), with its state and
/// XDG_RUNTIME_DIR in `state`.
pub fn runtime_as(prog: Cmd, uid: u32, state: &Path) -> Cmd {
    runtime_bin_as(prog, uid, state, &runtime())
}

/// [`runtime_as`] with the runtime binary `bin` (e.g. [`crate::fault_runtime`]).
pub fn runtime_bin_as(prog: Cmd, uid: u32, state: &Path, bin: &Path) -> Cmd {
    prog.arg("setpriv")
        .args(setpriv_args(uid))
        .arg("--")
        .arg(bin)
        .arg("--root")
        .arg(state)
        .env("XDG_RUNTIME_DIR", state)
}

/// A command prefix that runs the rest of its arguments in a private mount namespace
/// whose /dev/fuse is a mode-0666 node of the FUSE device (made in `dir` once), as most
/// distributions ship it, so an unprivileged user may open it.
#[track_caller]
pub fn with_open_fuse(dir: &Path) -> Cmd {
    let node = dir.join("fuse-0666");
    if !node.exists() {
        Cmd::new("mknod")
            .args(["-m", "0666", &node.display().to_string(), "c", "10", "229"])
            .run()
            .expect_ok();
    }
    Cmd::new("unshare")
        .args(["--mount", "--propagation", "private", "--", "sh", "-c"])
        .arg("mount --bind \"$0\" /dev/fuse && exec \"$@\"")
        .arg(&node)
}
