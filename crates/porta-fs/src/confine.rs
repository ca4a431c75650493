//! Confinement of a file-server process: an identity-mapped user namespace owning a mount
//! namespace that holds only the backing directory (no capability over anything global),
//! the capability sets cut down to the file-ownership ones the server needs, no_new_privs,
//! Landlock, and a seccomp allowlist of the system calls the server makes: no exec, no
//! new sockets (no network), no mount, no ptrace, no open_by_handle_at, no ioctl (the
//! supervisor registers passthrough backing files; the server talks to it with
//! sendmsg/recvmsg on one inherited socket).

use crate::Error;

// The seccomp program below is written in x86-64 system call numbers and checks the
// x86-64 audit architecture; on any other architecture it would allow the wrong calls.
#[cfg(not(target_arch = "x86_64"))]
compile_error!(
    "porta-fs confines its servers with a seccomp allowlist of x86-64 system call numbers \
     (src/confine.rs: ALLOWED, KEEPER_EXTRA, the audit architecture): port them before \
     building for another architecture"
);

/// System calls the server may make (x86_64).
#[cfg(target_arch = "x86_64")]
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
    // The io_uring transport: a ring per ring thread (restricted to FUSE commands and
    // eventfd reads), the eventfd workers wake it with, the thread's CPU.
    libc::SYS_io_uring_setup,
    libc::SYS_io_uring_enter,
    libc::SYS_io_uring_register,
    libc::SYS_eventfd2,
    libc::SYS_sched_setaffinity,
    libc::SYS_fallocate,
    libc::SYS_copy_file_range,
    libc::SYS_fstatfs,
    libc::SYS_statfs,
    libc::SYS_getdents64,
    // Ending a translator's socket (server::translators).
    libc::SYS_shutdown,
    libc::SYS_getxattr,
    libc::SYS_setxattr,
    libc::SYS_listxattr,
    libc::SYS_removexattr,
];

/// Capabilities a server keeps (in its user namespace: over files whose owner and group
/// are mapped there, which with the identity map is every file). CAP_CHOWN: new files get
/// the caller's uid/gid, SETATTR uid/gid. CAP_DAC_OVERRIDE: create, open, remove in
/// directories and files of any owner and mode. CAP_FOWNER: chmod, utimens, xattrs and hard
/// links (protected_hardlinks) of files the server does not own. CAP_FSETID: keep the
/// set-group-id bit on chmod and on files created in set-group-id directories whose group
/// the server is not in. CAP_SETFCAP: `security.capability` (setcap in the container).
/// CAP_SETGID and CAP_SETUID: only for setfsgid/setfsuid, so a thread creates a file as
/// its caller (the seccomp allowlist has no other id-changing call, and the file-system
/// ids count for file access only, not for signals).
/// Everything else goes, CAP_SYS_ADMIN, CAP_DAC_READ_SEARCH and CAP_MKNOD included.
pub const KEEP_CAPS: [u32; 7] = [0, 1, 3, 4, 6, 7, 31];

#[cfg(target_arch = "x86_64")]
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

/// System calls the keeper may make besides [`ALLOWED`]: what it needs to fork a server
/// (pipes, the parent-death signal) and what a new server needs to confine itself
/// (capability sets, no_new_privs, Landlock, its own seccomp filter, the core-dump limit),
/// and messages on the sockets it inherited (it cannot make new ones). Every server
/// inherits the keeper's filter and stacks its own, narrower one.
#[cfg(target_arch = "x86_64")]
const KEEPER_EXTRA: &[libc::c_long] = &[
    libc::SYS_pipe2,
    libc::SYS_prctl,
    libc::SYS_capget,
    libc::SYS_capset,
    libc::SYS_seccomp,
    libc::SYS_setrlimit,
    libc::SYS_prlimit64,
    libc::SYS_getppid,
    libc::SYS_sendmsg,
    libc::SYS_recvmsg,
    SYS_LANDLOCK_CREATE_RULESET,
    SYS_LANDLOCK_ADD_RULE,
    SYS_LANDLOCK_RESTRICT_SELF,
];

/// The BPF program: check the architecture, allow the server's calls and `extra`
/// (sendmsg and recvmsg only on descriptor `sock`, when given), answer everything else
/// EPERM.
#[cfg(target_arch = "x86_64")]
fn program(sock: Option<std::os::fd::RawFd>, extra: &[libc::c_long]) -> Vec<libc::sock_filter> {
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
        .chain(extra.iter().copied())
        .collect();
    // The socket block (5) when there is a socket: the call number, then the descriptor
    // (low word of argument 0: the kernel takes an int).
    let block = if sock.is_some() { 5 } else { 0 };
    let n = all.len();
    for (i, nr) in all.iter().enumerate() {
        // Jump over the remaining compares, the socket block and the deny.
        let to_allow = (n - i - 1) + block + 1;
        p.push(jeq(*nr as u32, to_allow as u8, 0));
    }
    if let Some(fd) = sock {
        p.push(jeq(libc::SYS_sendmsg as u32, 1, 0));
        p.push(jeq(libc::SYS_recvmsg as u32, 0, 3));
        p.push(stmt(LD_W_ABS, 16));
        p.push(jeq(fd as u32, 2, 0));
        p.push(stmt(RET_K, RET_ERRNO | libc::EPERM as u32));
    }
    p.push(stmt(RET_K, RET_ERRNO | libc::EPERM as u32));
    p.push(stmt(RET_K, RET_ALLOW));
    p
}

fn last(what: &'static str) -> Error {
    Error::Io(what, std::io::Error::last_os_error())
}

/// Cuts the calling process's capabilities down to [`KEEP_CAPS`]: every other capability
/// leaves the bounding set, and the effective, permitted and inheritable sets become
/// (at most) `KEEP_CAPS`. Idempotent.
pub fn limit_capabilities() -> Result<(), Error> {
    let keep = KEEP_CAPS.iter().fold(0u64, |m, c| m | (1u64 << c));
    for cap in 0..64u32 {
        if keep & (1u64 << cap) != 0 {
            continue;
        }
        // SAFETY: plain prctl.
        let r = unsafe { libc::prctl(libc::PR_CAPBSET_READ, cap, 0, 0, 0) };
        if r < 0 {
            break; // past the last capability this kernel knows
        }
        if r == 0 {
            continue;
        }
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
    // data[word * 3 + set]: set 0 effective, 1 permitted, 2 inheritable.
    for word in 0..2 {
        let k = (keep >> (32 * word)) as u32;
        data[word * 3] &= k;
        data[word * 3 + 1] &= k;
        data[word * 3 + 2] = 0;
    }
    // SAFETY: as above.
    if unsafe { libc::syscall(libc::SYS_capset, hdr.as_mut_ptr(), data.as_ptr()) } < 0 {
        return Err(last("capset"));
    }
    Ok(())
}

/// Empties every capability set of the calling process (and its bounding set).
pub fn drop_all_capabilities() -> Result<(), Error> {
    for cap in 0..64u32 {
        // SAFETY: plain prctl.
        let r = unsafe { libc::prctl(libc::PR_CAPBSET_READ, cap, 0, 0, 0) };
        if r < 0 {
            break;
        }
        // SAFETY: plain prctl.
        if r == 1 && unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) } < 0 {
            return Err(last("drop capability from the bounding set"));
        }
    }
    let mut hdr: [u32; 2] = [0x2008_0522, 0];
    let data = [0u32; 6];
    // SAFETY: valid header and a data array of two `__user_cap_data_struct`s.
    if unsafe { libc::syscall(libc::SYS_capset, hdr.as_mut_ptr(), data.as_ptr()) } < 0 {
        return Err(last("capset"));
    }
    Ok(())
}

/// Moves the calling process (single-threaded: the keeper) into a new user namespace.
/// Its uid_map and gid_map must then be written from the parent namespace (the
/// supervisor writes the identity); until then the process has no power over any file.
/// Fails when the kernel or the machine offers no user namespaces (EINVAL without
/// CONFIG_USER_NS, ENOSPC when `user.max_user_namespaces` is reached, EPERM under a
/// seccomp profile or LSM that forbids them).
pub fn unshare_user_namespace() -> Result<(), nix::errno::Errno> {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWUSER)
}

/// Sets no_new_privs and installs the seccomp allowlist for this process and the
/// threads it creates afterwards; `sock` is the one descriptor sendmsg/recvmsg may use.
pub fn install_seccomp(sock: Option<std::os::fd::RawFd>) -> Result<(), Error> {
    install_program(&program(sock, &[]))
}

fn install_program(prog: &[libc::sock_filter]) -> Result<(), Error> {
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

/// Cuts capabilities down to [`KEEP_CAPS`], sets no_new_privs, restricts file access to
/// the tree beneath `root` (Landlock) and installs the seccomp allowlist (`sock`: the
/// socket to the supervisor, the only one sendmsg/recvmsg may use).
pub fn confine(root: std::os::fd::RawFd, sock: Option<std::os::fd::RawFd>) -> Result<(), Error> {
    limit_capabilities()?;
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
    install_seccomp(sock)
}

/// Confines the keeper as its servers are, before it forks any: capabilities cut to
/// [`KEEP_CAPS`], no_new_privs, Landlock (everything beneath `root` but making device
/// nodes; beneath `proc`, its procfs, only listing directories: a new server opens its own
/// `self/fd` there), and a seccomp allowlist of the server's calls plus [`KEEPER_EXTRA`].
pub fn confine_keeper(root: std::os::fd::RawFd, proc: std::os::fd::RawFd) -> Result<(), Error> {
    limit_capabilities()?;
    // SAFETY: plain prctl.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } < 0 {
        return Err(last("no_new_privs"));
    }
    if restrict_to_trees(&[(root, TreeAccess::All), (proc, TreeAccess::ListDirs)])? == 0 {
        tracing::warn!("no Landlock in this kernel: file access of the keeper is not restricted");
    }
    install_program(&program(None, KEEPER_EXTRA))
}

/// What the keeper's mount namespace holds, as descriptors of its own mounts.
#[derive(Debug)]
pub struct KeeperMounts {
    /// O_PATH descriptor of the backing root (`/root` in the keeper's namespace).
    pub root: std::os::fd::OwnedFd,
    /// O_PATH descriptor of the keeper's procfs (`/proc` in its namespace).
    pub proc: std::os::fd::OwnedFd,
}

/// `path` as a C string for a system call.
fn path_cstr(path: &std::path::Path) -> Result<std::ffi::CString, Error> {
    std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| Error::BadState(format!("NUL in mount path {}", path.display())))
}

/// A detached copy of the mount at `path` (with the mounts beneath it when `recursive`).
fn clone_tree(path: &std::path::Path, recursive: bool) -> Result<std::os::fd::OwnedFd, Error> {
    use porta_sys::mount_api::{open_tree, AT_RECURSIVE, OPEN_TREE_CLOEXEC, OPEN_TREE_CLONE};
    let rec = if recursive { AT_RECURSIVE } else { 0 };
    open_tree(
        libc::AT_FDCWD,
        &path_cstr(path)?,
        OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | rec,
    )
    .map_err(|e| Error::Io("open_tree", e))
}

/// Where the backing root and the procfs sit in the keeper's mount namespace (whose root
/// is a small read-only tmpfs holding just these two mount points).
pub const KEEPER_ROOT: &std::ffi::CStr = c"/root";
/// See [`KEEPER_ROOT`].
pub const KEEPER_PROC: &std::ffi::CStr = c"/proc";

/// Moves the calling process (the keeper; its servers inherit it) into a new mount
/// namespace holding nothing but the backing directory and a procfs: a read-only tmpfs as
/// its root with the backing tree (a recursive clone of `backing`) at `/root` and `proc`
/// (a detached procfs mount, e.g. [`crate::mount::procfs_instance`]; `None`: a clone of
/// the caller's `/proc`, where no procfs instance can be made) at `/proc`. The host's
/// mounts are gone from it, so no descriptor the keeper or a server holds names a
/// directory outside its own namespace. Descriptors opened before (the FUSE connection,
/// the state memfd) keep working.
pub fn enter_keeper_namespace(
    backing: &std::path::Path,
    proc: Option<std::os::fd::OwnedFd>,
) -> Result<KeeperMounts, Error> {
    use nix::mount::{mount, umount2, MntFlags, MsFlags};
    use std::os::fd::AsFd;
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
    let tree = clone_tree(backing, true)?;
    let proc = match proc {
        Some(p) => p,
        // Procfs alone where the kernel allows it (not what the host mounted beneath it);
        // where those mounts are locked to it, with them.
        None => {
            let at = std::path::Path::new("/proc");
            clone_tree(at, false).or_else(|_| clone_tree(at, true))?
        }
    };
    // The new root: a tmpfs over the backing directory's path (in this namespace only).
    let top = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mount(
        Some("porta-keeper"),
        backing,
        Some("tmpfs"),
        top,
        Some("mode=0555,size=16k"),
    )
    .map_err(sys("mount the keeper's root tmpfs"))?;
    for (name, m) in [("root", &tree), ("proc", &proc)] {
        let at = backing.join(name);
        std::fs::create_dir(&at).map_err(|e| Error::Io("make a keeper mount point", e))?;
        let at = path_cstr(&at)?;
        porta_sys::mount_api::move_mount_to(m.as_fd(), &at)
            .map_err(|e| Error::Io("move_mount", e))?;
    }
    mount(
        None::<&str>,
        backing,
        None::<&str>,
        top | MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY,
        None::<&str>,
    )
    .map_err(sys("make the keeper's root read-only"))?;
    nix::unistd::chdir(backing).map_err(sys("chdir to the keeper's root"))?;
    nix::unistd::pivot_root(".", ".").map_err(sys("pivot_root into the keeper's root"))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(sys("detach the host's mounts"))?;
    nix::unistd::chdir("/").map_err(sys("chdir /"))?;
    let open = |p: &std::ffi::CStr, what: &'static str| {
        crate::sys::openat(libc::AT_FDCWD, p, libc::O_PATH | libc::O_DIRECTORY, 0)
            .map_err(|e| Error::Sys(what, nix::errno::Errno::from_raw(e)))
    };
    Ok(KeeperMounts {
        root: open(KEEPER_ROOT, "open the backing root")?,
        proc: open(KEEPER_PROC, "open the keeper's procfs")?,
    })
}

/// A directory's identity: device, inode and the mount it is reached through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DirIdentity {
    /// `st_dev`.
    pub dev: u64,
    /// `st_ino`.
    pub ino: u64,
    /// The mount's id (statx STATX_MNT_ID).
    pub mnt_id: u64,
}

/// The identity of the directory descriptor `fd` (statx on the descriptor itself).
pub fn dir_identity(fd: std::os::fd::RawFd) -> Result<DirIdentity, Error> {
    // SAFETY: an all-zero statx is a valid value to be filled in.
    let mut st: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is a valid out-pointer; empty path with AT_EMPTY_PATH names `fd`.
    let r = unsafe {
        libc::statx(
            fd,
            c"".as_ptr(),
            libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
            libc::STATX_INO | libc::STATX_TYPE | libc::STATX_MNT_ID,
            &mut st,
        )
    };
    if r < 0 {
        return Err(last("statx"));
    }
    if u32::from(st.stx_mode) & libc::S_IFMT != libc::S_IFDIR {
        return Err(Error::BadState(format!(
            "descriptor {fd} is not a directory (mode {:o})",
            st.stx_mode
        )));
    }
    Ok(DirIdentity {
        dev: libc::makedev(st.stx_dev_major, st.stx_dev_minor),
        ino: st.stx_ino,
        mnt_id: st.stx_mnt_id,
    })
}

/// Landlock file-system access rights handled by [`restrict_to_tree`]: every right up to
/// ABI 3 (truncate). Device ioctls (ABI 5) are not handled: the FUSE device is already
/// open and the seccomp filter restricts ioctl.
const LL_ACCESS_ALL: u64 = (1 << 15) - 1;
const LL_EXECUTE: u64 = 1 << 0;
const LL_READ_FILE: u64 = 1 << 2;
const LL_READ_DIR: u64 = 1 << 3;
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
    restrict_to_trees(&[(root, TreeAccess::All)])
}

/// What a Landlock rule of [`restrict_to_trees`] allows beneath its directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TreeAccess {
    /// Everything handled but making device nodes.
    All,
    /// Opening directories to list them, nothing else.
    ListDirs,
    /// Reading files and listing directories, nothing else.
    ReadOnly,
}

/// As [`restrict_to_tree`], with one rule per (directory, access) pair.
pub fn restrict_to_trees(rules: &[(std::os::fd::RawFd, TreeAccess)]) -> Result<i64, Error> {
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
    for &(dir, access) in rules {
        let allowed = match access {
            TreeAccess::All => handled & !(LL_MAKE_CHAR | LL_MAKE_BLOCK),
            TreeAccess::ListDirs => LL_READ_DIR,
            TreeAccess::ReadOnly => LL_EXECUTE | LL_READ_FILE | LL_READ_DIR,
        };
        // struct landlock_path_beneath_attr { u64 allowed_access; s32 parent_fd; } (packed).
        let mut rule = [0u8; 12];
        rule[..8].copy_from_slice(&allowed.to_ne_bytes());
        rule[8..].copy_from_slice(&dir.to_ne_bytes());
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

    /// Runs the filter on (arch, nr, args) the way the kernel would.
    fn run(p: &[libc::sock_filter], arch: u32, nr: i64, args: [u64; 6]) -> u32 {
        let mut data = [0u8; 64];
        data[..4].copy_from_slice(&(nr as i32).to_ne_bytes());
        data[4..8].copy_from_slice(&arch.to_ne_bytes());
        for (i, a) in args.iter().enumerate() {
            data[16 + 8 * i..24 + 8 * i].copy_from_slice(&a.to_ne_bytes());
        }
        let (mut pc, mut acc) = (0usize, 0u32);
        loop {
            let ins = p[pc];
            match ins.code {
                LD_W_ABS => {
                    let k = ins.k as usize;
                    acc = u32::from_ne_bytes(data[k..k + 4].try_into().unwrap());
                    pc += 1;
                }
                JEQ_K => pc += 1 + if acc == ins.k { ins.jt } else { ins.jf } as usize,
                RET_K => return ins.k,
                c => panic!("unknown instruction {c:#x}"),
            }
        }
    }

    #[test]
    fn filter_allows_listed_calls_and_the_socket_only() {
        let deny = RET_ERRNO | libc::EPERM as u32;
        for sock in [None, Some(7)] {
            let p = program(sock, &[]);
            assert!(p.len() < 200);
            for nr in ALLOWED.iter().chain(crate::sys::XATTRAT_SYSCALLS.iter()) {
                assert_eq!(run(&p, AUDIT_ARCH_X86_64, *nr, [0; 6]), RET_ALLOW, "{nr}");
            }
            for nr in [
                libc::SYS_execve,
                libc::SYS_socket,
                libc::SYS_connect,
                libc::SYS_mount,
                libc::SYS_ptrace,
                libc::SYS_open_by_handle_at,
                libc::SYS_kill,
                libc::SYS_unshare,
                libc::SYS_setns,
                libc::SYS_sendto,
            ] {
                assert_eq!(run(&p, AUDIT_ARCH_X86_64, nr, [7; 6]), deny, "{nr}");
            }
            // No ioctl at all: the supervisor registers backing files.
            let open = crate::abi::DEV_IOC_BACKING_OPEN;
            assert_eq!(
                run(
                    &p,
                    AUDIT_ARCH_X86_64,
                    libc::SYS_ioctl,
                    [7, open, 0, 0, 0, 0]
                ),
                deny
            );
            for nr in [libc::SYS_sendmsg, libc::SYS_recvmsg] {
                let want = if sock.is_some() { RET_ALLOW } else { deny };
                assert_eq!(run(&p, AUDIT_ARCH_X86_64, nr, [7, 0, 0, 0, 0, 0]), want);
                assert_eq!(run(&p, AUDIT_ARCH_X86_64, nr, [8, 0, 0, 0, 0, 0]), deny);
            }
            assert_eq!(
                run(&p, 0x4000_0003, libc::SYS_read, [0; 6]),
                RET_KILL_PROCESS
            );
        }
    }

    #[test]
    fn filter_blocks_exec_and_sockets_in_a_child() {
        let (a, b) = nix::sys::socket::socketpair(
            nix::sys::socket::AddressFamily::Unix,
            nix::sys::socket::SockType::SeqPacket,
            None,
            nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        )
        .unwrap();
        let (a, b) = (
            std::os::fd::AsRawFd::as_raw_fd(&a),
            std::os::fd::AsRawFd::as_raw_fd(&b),
        );
        // SAFETY: fork in a test; the child only makes system calls and _exits.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            let ok = install_seccomp(Some(a)).is_ok();
            // SAFETY: plain system calls in the child.
            let code = unsafe {
                let s = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
                let e = libc::execve(
                    c"/bin/true".as_ptr(),
                    [std::ptr::null()].as_ptr(),
                    [std::ptr::null()].as_ptr(),
                );
                let io = libc::ioctl(0, libc::TIOCGWINSZ, [0u16; 4].as_mut_ptr());
                let on_sock = crate::sys::send_with_fd(a, b"x", None, 0).is_ok();
                let elsewhere = crate::sys::send_with_fd(b, b"x", None, 0);
                if ok
                    && s < 0
                    && e < 0
                    && io < 0
                    && on_sock
                    && elsewhere == Err(libc::EPERM)
                    && libc::getpid() > 0
                {
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

    fn caps_of(status: &str, key: &str) -> u64 {
        let v = status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .unwrap();
        u64::from_str_radix(v, 16).unwrap()
    }

    #[test]
    fn capabilities_cut_to_the_file_ownership_set_in_a_user_namespace() {
        if !porta_sys::user::is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        let keep = KEEP_CAPS.iter().fold(0u64, |m, c| m | (1u64 << c));
        let (rd, wr) = nix::unistd::pipe().unwrap();
        let (go_rd, go_wr) = nix::unistd::pipe().unwrap();
        // SAFETY: fork in a test; the child only makes system calls and _exits.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            drop(rd);
            drop(go_wr);
            let userns = unshare_user_namespace().is_ok();
            let _ = nix::unistd::write(&wr, &[userns as u8]);
            let mut b = [0u8; 1];
            let _ = nix::unistd::read(std::os::fd::AsRawFd::as_raw_fd(&go_rd), &mut b);
            let ok = limit_capabilities().is_ok() && limit_capabilities().is_ok();
            let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
            let eff = caps_of(&status, "CapEff:");
            let bnd = caps_of(&status, "CapBnd:");
            // A file owned by a uid the process is not: chown needs CAP_CHOWN here.
            let chown = std::fs::File::create("/tmp/.porta-confine-caps-test")
                .ok()
                .map(|_| {
                    std::os::unix::fs::chown("/tmp/.porta-confine-caps-test", Some(1234), None)
                        .is_ok()
                })
                .unwrap_or(false);
            let _ = std::fs::remove_file("/tmp/.porta-confine-caps-test");
            let code = if ok && eff == keep && bnd == keep && chown {
                0
            } else {
                1
            };
            // SAFETY: ends the child.
            unsafe { libc::_exit(code) };
        }
        drop(wr);
        drop(go_rd);
        let mut b = [0u8; 1];
        nix::unistd::read(std::os::fd::AsRawFd::as_raw_fd(&rd), &mut b).unwrap();
        if b[0] == 1 {
            for f in ["uid_map", "gid_map"] {
                std::fs::write(format!("/proc/{pid}/{f}"), "0 0 4294967295").unwrap();
            }
        }
        nix::unistd::write(&go_wr, b"g").unwrap();
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
