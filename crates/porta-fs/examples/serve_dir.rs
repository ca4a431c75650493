//! Serves BACKING on MOUNTPOINT until it is unmounted: `serve_dir BACKING MOUNTPOINT [strict]`.
//! A manual tool for trying the file server; needs root.

use std::ffi::CString;
use std::os::fd::AsRawFd;
use std::time::Duration;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        eprintln!("usage: serve_dir BACKING MOUNTPOINT [strict]");
        std::process::exit(2);
    }
    let fuse = porta_fs::mount::open_dev_fuse()?;
    let m = porta_fs::mount::fsmount_fuse(fuse.as_raw_fd(), &Default::default())?;
    porta_sys::mount_api::move_mount_to(
        std::os::fd::AsFd::as_fd(&m),
        &CString::new(args[2].clone())?,
    )?;
    drop(m);
    let root = porta_fs::sys::openat(
        libc::AT_FDCWD,
        &CString::new(args[1].clone())?,
        libc::O_PATH | libc::O_DIRECTORY,
        0,
    )
    .map_err(|e| format!("open backing: errno {e}"))?;
    let procfd = porta_fs::sys::openat(
        libc::AT_FDCWD,
        c"/proc/self/fd",
        libc::O_RDONLY | libc::O_DIRECTORY,
        0,
    )
    .map_err(|e| format!("open /proc/self/fd: errno {e}"))?;
    let cfg = porta_fs::Config {
        fuse_fd: fuse.as_raw_fd(),
        root_fd: root.as_raw_fd(),
        proc_fd: procfd.as_raw_fd(),
        shared: porta_fs::Shared::anonymous(20000)?,
        passthrough: args.get(3).map(String::as_str) != Some("strict"),
        threads: 2,
        ttl: Duration::from_secs(86400),
        backing_fd: -1,
        transport: porta_fs::Transport::Dev,
        rings: None,
    };
    let exit = porta_fs::serve(&cfg)?;
    eprintln!("server exited: {exit:?}");
    Ok(())
}
