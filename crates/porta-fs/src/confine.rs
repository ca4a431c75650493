//! Confinement of a file-server process: capabilities it must not have are dropped
//! (CAP_MKNOD, CAP_DAC_READ_SEARCH — open_by_handle_at with it can name any inode of the
//! backing file system), no_new_privs, and a seccomp allowlist of the system calls the
//! server makes: no exec, no sockets (no network), no mount, no ptrace, no
//! open_by_handle_at; ioctl only for the two FUSE passthrough requests.

use crate::Error;

/// System calls the server may make (x86_64).
const ALLOWED: &[libc::c_long] = &[
    libc::SYS_read,
    libc::SYS_poll,
    libc::SYS_ppoll,
    libc::SYS_write,
    libc::SYS_readv,
    libc::SYS_writev,
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_openat,
    libc::SYS_close,
    libc::SYS_fcntl,
    libc::SYS_fstat,
    libc::SYS_newfstatat,
    libc::SYS_statx,
    libc::SYS_lseek,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mprotect,
    libc::SYS_madvise,
    libc::SYS_mremap,
    libc::SYS_brk,
    libc::SYS_rt_sigaction,
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigreturn,
    libc::SYS_sigaltstack,
    libc::SYS_futex,
    libc::SYS_clone,
    libc::SYS_clone3,
    libc::SYS_set_robust_list,
    libc::SYS_rseq,
    libc::SYS_exit,
    libc::SYS_exit_group,
    libc::SYS_gettid,
    libc::SYS_getpid,
    libc::SYS_tgkill,
    libc::SYS_sched_yield,
    libc::SYS_sched_getaffinity,
    libc::SYS_nanosleep,
    libc::SYS_clock_nanosleep,
    libc::SYS_clock_gettime,
    libc::SYS_getrandom,
    libc::SYS_restart_syscall,
    libc::SYS_umask,
    libc::SYS_mkdirat,
    libc::SYS_mknodat,
    libc::SYS_symlinkat,
    libc::SYS_unlinkat,
    libc::SYS_renameat2,
    libc::SYS_renameat,
    libc::SYS_linkat,
    libc::SYS_readlinkat,
    libc::SYS_fchownat,
    libc::SYS_setfsuid,
    libc::SYS_setfsgid,
    libc::SYS_fchmodat,
    libc::SYS_utimensat,
    libc::SYS_ftruncate,
    libc::SYS_fsync,
    libc::SYS_fdatasync,
    libc::SYS_syncfs,
    libc::SYS_fallocate,
    libc::SYS_copy_file_range,
    libc::SYS_fstatfs,
    libc::SYS_statfs,
    libc::SYS_getdents64,
    libc::SYS_getxattr,
    libc::SYS_setxattr,
    libc::SYS_listxattr,
    libc::SYS_removexattr,
];

const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
const RET_ALLOW: u32 = 0x7fff_0000;
const RET_KILL_PROCESS: u32 = 0x8000_0000;
const RET_ERRNO: u32 = 0x0005_0000;
const LD_W_ABS: u16 = 0x20;
const JEQ_K: u16 = 0x15;
const RET_K: u16 = 0x06;

fn stmt(code: u16, k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jeq(k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter {
        code: JEQ_K,
        jt,
        jf,
        k,
    }
}

/// The BPF program: check the architecture, allow listed calls (ioctl only with a FUSE
/// passthrough request number), answer everything else EPERM.
fn program() -> Vec<libc::sock_filter> {
    let mut p = vec![
        stmt(LD_W_ABS, 4),
        jeq(AUDIT_ARCH_X86_64, 1, 0),
        stmt(RET_K, RET_KILL_PROCESS),
        stmt(LD_W_ABS, 0),
    ];
    let all: Vec<libc::c_long> = ALLOWED
        .iter()
        .copied()
        .chain(crate::sys::XATTRAT_SYSCALLS)
        .collect();
    let n = all.len();
    for (i, nr) in all.iter().enumerate() {
        // Jump over the remaining compares, the ioctl block (5) and the deny.
        let to_allow = (n - i - 1) + 5 + 1;
        p.push(jeq(*nr as u32, to_allow as u8, 0));
    }
    // ioctl: allowed only for FUSE_DEV_IOC_BACKING_OPEN / _CLOSE (low word of arg 1).
    p.push(jeq(libc::SYS_ioctl as u32, 0, 4));
    p.push(stmt(LD_W_ABS, 24));
    p.push(jeq(crate::abi::DEV_IOC_BACKING_OPEN as u32, 3, 0));
    p.push(jeq(crate::abi::DEV_IOC_BACKING_CLOSE as u32, 2, 0));
    p.push(stmt(RET_K, RET_ERRNO | libc::EPERM as u32));
    p.push(stmt(RET_K, RET_ERRNO | libc::EPERM as u32));
    p.push(stmt(RET_K, RET_ALLOW));
    p
}

fn last(what: &'static str) -> Error {
    Error::Io(what, std::io::Error::last_os_error())
}

/// Removes CAP_MKNOD and CAP_DAC_READ_SEARCH from the bounding, effective, permitted
/// and inheritable sets of the calling process.
pub fn drop_capabilities() -> Result<(), Error> {
    // CAP_DAC_READ_SEARCH = 2, CAP_MKNOD = 27 (linux/capability.h).
    let drop: [u32; 2] = [27, 2];
    for cap in drop {
        // SAFETY: plain prctl.
        if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) } < 0 {
            return Err(last("drop capability from the bounding set"));
        }
    }
    // struct __user_cap_header_struct { u32 version; int pid; } and two data words.
    let mut hdr: [u32; 2] = [0x2008_0522, 0];
    let mut data = [0u32; 6];
    // SAFETY: valid header and a data array of two `__user_cap_data_struct`s.
    if unsafe { libc::syscall(libc::SYS_capget, hdr.as_mut_ptr(), data.as_mut_ptr()) } < 0 {
        return Err(last("capget"));
    }
    for cap in drop {
        let (word, bit) = ((cap / 32) as usize, cap % 32);
        for set in 0..3 {
            data[word * 3 + set] &= !(1u32 << bit);
        }
    }
    // SAFETY: as above.
    if unsafe { libc::syscall(libc::SYS_capset, hdr.as_mut_ptr(), data.as_ptr()) } < 0 {
        return Err(last("capset"));
    }
    Ok(())
}

/// Sets no_new_privs and installs the seccomp allowlist for this process and the
/// threads it creates afterwards.
pub fn install_seccomp() -> Result<(), Error> {
    let prog = program();
    let fprog = libc::sock_fprog {
        len: prog.len() as u16,
        filter: prog.as_ptr() as *mut _,
    };
    // SAFETY: plain prctl calls; `fprog` points to `prog`, alive for the call.
    unsafe {
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0 {
            return Err(last("no_new_privs"));
        }
        if libc::prctl(
            libc::PR_SET_SECCOMP,
            libc::SECCOMP_MODE_FILTER,
            &fprog as *const libc::sock_fprog,
        ) < 0
        {
            return Err(last("seccomp filter"));
        }
    }
    Ok(())
}

/// Drops capabilities, sets no_new_privs, restricts file access to the tree beneath
/// `root` (Landlock) and installs the seccomp allowlist.
pub fn confine(root: std::os::fd::RawFd) -> Result<(), Error> {
    drop_capabilities()?;
    // SAFETY: plain prctl.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } < 0 {
        return Err(last("no_new_privs"));
    }
    let abi = restrict_to_tree(root)?;
    if abi == 0 {
        tracing::warn!(
            "no Landlock in this kernel: file access of the server is not restricted to its tree"
        );
    }
    install_seccomp()
}

/// Moves the calling process (the keeper; its servers inherit it) into a new mount
/// namespace whose only content is the backing directory, as its root: `..` at the top
/// of the served tree stays there even for a compromised server, and no other host path
/// is reachable by name. Returns an O_PATH descriptor of the new root. Descriptors opened
/// before (the FUSE connection, /proc/self/fd) keep working.
pub fn enter_backing_namespace(backing: &std::path::Path) -> Result<std::os::fd::OwnedFd, Error> {
    use nix::mount::{mount, umount2, MntFlags, MsFlags};
    let sys = |what: &'static str| move |e: nix::errno::Errno| Error::Sys(what, e);
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)
        .map_err(sys("unshare mount namespace"))?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(sys("make mounts private"))?;
    mount(
        Some(backing),
        backing,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(sys("bind backing directory"))?;
    nix::unistd::chdir(backing).map_err(sys("chdir backing directory"))?;
    nix::unistd::pivot_root(".", ".").map_err(sys("pivot_root into backing directory"))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(sys("detach the host's mounts"))?;
    nix::unistd::chdir("/").map_err(sys("chdir /"))?;
    crate::sys::openat(libc::AT_FDCWD, c"/", libc::O_PATH | libc::O_DIRECTORY, 0)
        .map_err(|e| Error::Sys("open new root", nix::errno::Errno::from_raw(e)))
}

/// Landlock file-system access rights handled by [`restrict_to_tree`]: every right up to
/// ABI 3 (truncate). Device ioctls (ABI 5) are not handled: the FUSE device is already
/// open and the seccomp filter restricts ioctl.
const LL_ACCESS_ALL: u64 = (1 << 15) - 1;
const LL_MAKE_CHAR: u64 = 1 << 6;
const LL_MAKE_BLOCK: u64 = 1 << 11;
const LL_REFER: u64 = 1 << 13;
const LL_TRUNCATE: u64 = 1 << 14;
const SYS_LANDLOCK_CREATE_RULESET: libc::c_long = 444;
const SYS_LANDLOCK_ADD_RULE: libc::c_long = 445;
const SYS_LANDLOCK_RESTRICT_SELF: libc::c_long = 446;

/// Restricts the calling process (and the threads it creates afterwards) with Landlock to
/// the tree beneath `root` (an O_PATH directory descriptor): files elsewhere — reached for
/// instance through `/proc/<pid>/root` from the `/proc/self/fd` descriptor — cannot be
/// read, written, created, removed, truncated or executed, and no device node can be made
/// even beneath `root`. Needs no_new_privs. Returns the Landlock ABI version
/// used, or 0 when the kernel has no Landlock (then nothing is restricted).
pub fn restrict_to_tree(root: std::os::fd::RawFd) -> Result<i64, Error> {
    // SAFETY: version query: null attribute, size 0, flag LANDLOCK_CREATE_RULESET_VERSION.
    let abi = unsafe {
        libc::syscall(
            SYS_LANDLOCK_CREATE_RULESET,
            std::ptr::null::<u64>(),
            0usize,
            1u32,
        )
    };
    if abi < 1 {
        return Ok(0);
    }
    let mut handled = LL_ACCESS_ALL;
    if abi < 2 {
        handled &= !LL_REFER;
    }
    if abi < 3 {
        handled &= !LL_TRUNCATE;
    }
    let attr: [u64; 1] = [handled];
    // SAFETY: `attr` is a `struct landlock_ruleset_attr` (handled_access_fs only).
    let rs = unsafe { libc::syscall(SYS_LANDLOCK_CREATE_RULESET, attr.as_ptr(), 8usize, 0u32) };
    if rs < 0 {
        return Err(last("landlock_create_ruleset"));
    }
    // SAFETY: fresh descriptor owned by nobody else.
    let rs = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(rs as i32) };
    // EXECUTE stays allowed: passthrough opens backing files with the server's
    // credentials (its Landlock domain included) when the container executes a program;
    // the server itself cannot exec (seccomp).
    let allowed = handled & !(LL_MAKE_CHAR | LL_MAKE_BLOCK);
    // struct landlock_path_beneath_attr { u64 allowed_access; s32 parent_fd; } (packed).
    let mut rule = [0u8; 12];
    rule[..8].copy_from_slice(&allowed.to_ne_bytes());
    rule[8..].copy_from_slice(&root.to_ne_bytes());
    // SAFETY: `rule` has the packed layout of `struct landlock_path_beneath_attr`.
    let r = unsafe {
        libc::syscall(
            SYS_LANDLOCK_ADD_RULE,
            std::os::fd::AsRawFd::as_raw_fd(&rs),
            1u32,
            rule.as_ptr(),
            0u32,
        )
    };
    if r < 0 {
        return Err(last("landlock_add_rule"));
    }
    // SAFETY: plain system call on our ruleset descriptor.
    let r = unsafe {
        libc::syscall(
            SYS_LANDLOCK_RESTRICT_SELF,
            std::os::fd::AsRawFd::as_raw_fd(&rs),
            0u32,
        )
    };
    if r < 0 {
        return Err(last("landlock_restrict_self"));
    }
    Ok(abi)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jumps_land_on_allow() {
        let p = program();
        let allow = p.len() - 1;
        for (i, ins) in p.iter().enumerate().skip(4).take(ALLOWED.len() + 4) {
            assert_eq!(i + 1 + ins.jt as usize, allow);
        }
        assert!(p.len() < 200);
    }

    #[test]
    fn filter_blocks_exec_and_sockets_in_a_child() {
        // SAFETY: fork in a test; the child only makes system calls and _exits.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            let ok = install_seccomp().is_ok();
            // SAFETY: plain system calls in the child.
            let code = unsafe {
                let s = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
                let e = libc::execve(
                    c"/bin/true".as_ptr(),
                    [std::ptr::null()].as_ptr(),
                    [std::ptr::null()].as_ptr(),
                );
                let io = libc::ioctl(0, libc::TIOCGWINSZ, [0u16; 4].as_mut_ptr());
                if ok && s < 0 && e < 0 && io < 0 && libc::getpid() > 0 {
                    0
                } else {
                    1
                }
            };
            // SAFETY: ends the child.
            unsafe { libc::_exit(code) };
        }
        let mut st = 0;
        // SAFETY: waiting for our child.
        unsafe { libc::waitpid(pid, &mut st, 0) };
        assert!(
            libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 0,
            "status {st:#x}"
        );
    }

    #[test]
    fn landlock_keeps_a_process_inside_its_tree() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("inside"), b"in").unwrap();
        let c = std::ffi::CString::new(dir.path().as_os_str().as_encoded_bytes()).unwrap();
        let root =
            crate::sys::openat(libc::AT_FDCWD, &c, libc::O_PATH | libc::O_DIRECTORY, 0).unwrap();
        let inside = crate::sys::openat(
            std::os::fd::AsRawFd::as_raw_fd(&root),
            c"inside",
            libc::O_PATH,
            0,
        )
        .unwrap();
        // SAFETY: fork in a test; the child only makes system calls and _exits.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            // SAFETY: plain prctl.
            unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
            let abi = restrict_to_tree(std::os::fd::AsRawFd::as_raw_fd(&root)).unwrap_or(-1);
            let outside = crate::sys::openat(libc::AT_FDCWD, c"/etc/passwd", libc::O_RDONLY, 0);
            let via_proc_root = crate::sys::openat(
                libc::AT_FDCWD,
                c"/proc/1/root/etc/passwd",
                libc::O_RDONLY,
                0,
            );
            let name = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&inside));
            let cname = std::ffi::CString::new(name).unwrap();
            let reopened = crate::sys::openat(libc::AT_FDCWD, &cname, libc::O_RDWR, 0);
            let made = crate::sys::openat(
                std::os::fd::AsRawFd::as_raw_fd(&root),
                c"new",
                libc::O_CREAT | libc::O_WRONLY,
                0o600,
            );
            let code = if abi >= 1
                && outside.is_err()
                && via_proc_root.is_err()
                && reopened.is_ok()
                && made.is_ok()
            {
                0
            } else {
                1
            };
            // SAFETY: ends the child.
            unsafe { libc::_exit(code) };
        }
        let mut st = 0;
        // SAFETY: waiting for our child.
        unsafe { libc::waitpid(pid, &mut st, 0) };
        assert!(
            libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 0,
            "status {st:#x}"
        );
    }
}
