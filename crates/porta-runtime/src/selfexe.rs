//! Protection of the `porta` binary against being overwritten from inside a container through
//! /proc/self/exe (CVE-2019-5736): processes that enter a container run from a sealed memfd copy.

use std::ffi::CString;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;

use crate::error::{Context, Error, Result};
use crate::sys;

const MEMFD_NAME: &str = "porta";

/// Whether this process already runs from a sealed memfd copy of the binary.
pub fn is_sealed_copy() -> bool {
    let Ok(link) = std::fs::read_link("/proc/self/exe") else {
        return false;
    };
    if !link
        .as_os_str()
        .as_bytes()
        .starts_with(format!("/memfd:{MEMFD_NAME}").as_bytes())
    {
        return false;
    }
    let Ok(f) = std::fs::File::open("/proc/self/exe") else {
        return false;
    };
    let want = libc::F_SEAL_SEAL | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE;
    sys::get_seals(f.as_fd())
        .map(|s| s & want == want)
        .unwrap_or(false)
}

/// Re-executes the current command from a sealed memfd copy of the binary, unless it already
/// runs from one. Returns only when nothing had to be done, or on error.
pub fn ensure_sealed_copy() -> Result<()> {
    if is_sealed_copy() {
        return Ok(());
    }
    let mut src = std::fs::File::open("/proc/self/exe").ctx(|| "open /proc/self/exe".into())?;
    let memfd = sys::memfd_create(MEMFD_NAME, libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING)
        .ctx(|| "memfd_create".into())?;
    let mut dst = std::fs::File::from(memfd);
    std::io::copy(&mut src, &mut dst).ctx(|| "copy the porta binary into a memfd".into())?;
    sys::add_seals(
        dst.as_fd(),
        libc::F_SEAL_SEAL | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE,
    )
    .ctx(|| "seal the memfd copy".into())?;
    let argv: Vec<CString> = std::env::args_os()
        .filter_map(|a| CString::new(a.as_bytes()).ok())
        .collect();
    let envp: Vec<CString> = std::env::vars_os()
        .filter_map(|(k, v)| {
            let mut b = k.as_bytes().to_vec();
            b.push(b'=');
            b.extend_from_slice(v.as_bytes());
            CString::new(b).ok()
        })
        .collect();
    let err = sys::fexecve(dst.as_fd(), &argv, &envp);
    Err(Error::sys("re-execute from the sealed memfd copy", err))
}
