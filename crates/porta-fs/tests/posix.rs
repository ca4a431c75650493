//! POSIX semantics and real workloads through a real FUSE mount, compared with the same
//! operations on a plain directory. Needs root (skipped otherwise).

mod common;
use common::{sh, TestMount};
use std::path::Path;

/// A script of ordinary file operations; its output and the resulting tree (modes,
/// owners, sizes, types, link counts) must be the same on the mount and on a plain dir.
const OPS: &str = r#"
mkdir -p a/b/c
echo hello > a/f
cat a/f
printf 'xyz' >> a/f
wc -c < a/f
mv a/f a/g
ln a/g a/hard
ln -s ../g a/b/sym
readlink a/b/sym
cat a/b/sym
chmod 0640 a/g
chown 1000:1001 a/hard
truncate -s 100 a/g
truncate -s 3 a/g
cat a/g; echo
setfattr -n user.test -v val a/g 2>/dev/null || true
getfattr -n user.test --only-values a/g 2>/dev/null || true
mkfifo a/fifo
mknod a/null c 1 3
fallocate -l 65536 a/alloc
dd if=/dev/zero of=a/sparse bs=1 count=1 seek=1048575 2>/dev/null
rm a/hard
rmdir a/b/c
mkdir a/d && touch -d @1000000000 a/d/old
stat -c '%Y' a/d/old
touch a/x a/y && echo X > a/x && echo Y > a/y
mv -T --exchange a/x a/y 2>/dev/null || python3 -c 'import ctypes,os; l=ctypes.CDLL(None,use_errno=True); assert l.renameat2(-100,b"a/x",-100,b"a/y",2)==0'
cat a/x a/y
python3 -c 'import ctypes; l=ctypes.CDLL(None,use_errno=True); r=l.renameat2(-100,b"a/x",-100,b"a/y",1); print(r, ctypes.get_errno())'
cp --reflink=never a/g a/copy && cat a/copy; echo
umask 077; touch a/private; mkdir a/pdir
ls -la a | wc -l
"#;

fn tree(dir: &Path) -> String {
    sh(dir, "find . -printf '%p %y %m %u %g %n %s\\n' | sort")
}

fn compare_with_plain(m: &TestMount, name: &str, script: &str) {
    let on_mount = m.mnt.join(name);
    std::fs::create_dir(&on_mount).unwrap();
    let plain = m.dir.path().join(format!("plain-{name}"));
    std::fs::create_dir(&plain).unwrap();
    let a = sh(&on_mount, script);
    let b = sh(&plain, script);
    assert_eq!(a, b, "script output differs (mount vs plain)");
    assert_eq!(
        tree(&on_mount),
        tree(&plain),
        "resulting trees differ (mount vs plain)"
    );
}

fn ops_both_modes(passthrough: bool) {
    let m = TestMount::new(passthrough);
    compare_with_plain(&m, "ops", OPS);
    assert_eq!(m.passthrough_active(), passthrough);
    // The device node is stored as a regular file in the backing tree.
    let st = std::fs::symlink_metadata(m.backing.join("ops/a/null")).unwrap();
    assert!(
        st.file_type().is_file(),
        "device node must be a regular file in the backing tree"
    );
    let via = sh(&m.mnt, "stat -c '%F %t:%T' ops/a/null");
    assert_eq!(via.trim(), "character special file 1:3");
    // Hidden xattr is not visible nor writable through the mount.
    let l = sh(&m.mnt, "getfattr -d -m - ops/a/null 2>&1 || true");
    assert!(!l.contains("porta"), "{l}");
    let e = sh(
        &m.mnt,
        "setfattr -n user.porta.dev -v '20644 0' ops/a/g 2>&1 || echo refused",
    );
    assert!(e.contains("refused") || e.contains("not permitted"), "{e}");
    // statfs matches the backing file system.
    let a = sh(&m.mnt, "stat -f -c '%S %b' .");
    let b = sh(&m.backing, "stat -f -c '%S %b' .");
    assert_eq!(a, b);
}

#[test]
fn posix_ops_passthrough() {
    require_root!();
    ops_both_modes(true);
}

#[test]
fn posix_ops_strict() {
    require_root!();
    ops_both_modes(false);
}

#[test]
fn identity_of_new_files() {
    require_root!();
    let m = TestMount::new(true);
    sh(
        &m.mnt,
        "mkdir shared && chmod 1777 shared && mkdir sg && chown 0:1234 sg && chmod 2777 sg",
    );
    sh(&m.mnt, "setpriv --reuid 1000 --regid 1000 --clear-groups sh -c 'touch shared/u; mkdir shared/ud; ln -s x shared/us; mkfifo shared/uf; touch sg/g'");
    let out = sh(
        &m.backing,
        "stat -c '%n %u %g' shared/u shared/ud shared/us shared/uf sg/g",
    );
    assert_eq!(out, "shared/u 1000 1000\nshared/ud 1000 1000\nshared/us 1000 1000\nshared/uf 1000 1000\nsg/g 1000 1234\n");
    // A write or truncate by a non-root owner clears set-user-id and set-group-id bits.
    let bits = sh(&m.mnt, "setpriv --reuid 1000 --regid 1000 --clear-groups sh -c 'cd shared && echo a > s && chmod 6755 s && echo b >> s && stat -c %a s; echo c > t && chmod 6755 t && truncate -s 0 t && stat -c %a t'");
    assert_eq!(bits, "755\n755\n");
    // Permission checks are the kernel's (default_permissions): uid 1000 cannot write root's file.
    sh(&m.mnt, "echo root > rootfile && chmod 644 rootfile");
    let r = sh(&m.mnt, "setpriv --reuid 1000 --regid 1000 --clear-groups sh -c 'echo x >> rootfile' 2>&1 || echo denied");
    assert!(r.contains("denied"), "{r}");
}

#[test]
fn tar_find_make_workloads() {
    require_root!();
    for passthrough in [true, false] {
        let m = TestMount::new(passthrough);
        let tarball = m.dir.path().join("src.tar");
        sh(
            Path::new("/usr"),
            &format!(
                "tar -cf {} include/linux include/asm-generic",
                tarball.display()
            ),
        );
        sh(
            &m.mnt,
            &format!("mkdir x && tar -xf {} -C x", tarball.display()),
        );
        let plain = m.dir.path().join("plain");
        std::fs::create_dir(&plain).unwrap();
        sh(&plain, &format!("tar -xf {}", tarball.display()));
        sh(
            m.dir.path(),
            &format!("diff -r plain {}/x", m.mnt.display()),
        );
        assert_eq!(tree(&plain), tree(&m.mnt.join("x")));
        let n = sh(&m.mnt, "find x -type f | wc -l");
        assert!(n.trim().parse::<u32>().unwrap() > 500, "{n}");
        // Build a C program with make + gcc.
        sh(
            &m.mnt,
            r#"mkdir prog && cd prog
cat > main.c <<'C'
#include <stdio.h>
#include "lib.h"
int main(void) { printf("%d\n", add(40, 2)); return 0; }
C
cat > lib.h <<'C'
int add(int a, int b);
C
cat > lib.c <<'C'
#include "lib.h"
int add(int a, int b) { return a + b; }
C
printf 'prog: main.o lib.o\n\tgcc -o prog main.o lib.o\n%%.o: %%.c lib.h\n\tgcc -O1 -c $<\nclean:\n\trm -f *.o prog\n' > Makefile
make -s
"#,
        );
        assert_eq!(sh(&m.mnt.join("prog"), "./prog"), "42\n");
        sh(
            &m.mnt.join("prog"),
            "make -s clean && make -s && ./prog >/dev/null",
        );
    }
}

#[test]
fn sqlite_under_load() {
    require_root!();
    for passthrough in [true, false] {
        let m = TestMount::new(passthrough);
        sh(&m.mnt, "sqlite3 db.sqlite 'PRAGMA journal_mode=WAL; CREATE TABLE t(id INTEGER PRIMARY KEY, w INT, v TEXT);' >/dev/null");
        // Four concurrent writers, each 200 transactions, with busy waiting: real
        // POSIX locking contention, all in the kernel.
        sh(
            &m.mnt,
            r#"
for w in 1 2 3 4; do
  ( i=0; while [ $i -lt 200 ]; do
      echo "PRAGMA busy_timeout=10000; BEGIN IMMEDIATE; INSERT INTO t(w,v) VALUES($w, hex(randomblob(64))); COMMIT;"
      i=$((i+1)); done | sqlite3 db.sqlite >/dev/null ) &
done
wait
"#,
        );
        assert_eq!(
            sh(&m.mnt, "sqlite3 db.sqlite 'SELECT count(*) FROM t;'"),
            "800\n"
        );
        assert_eq!(
            sh(&m.mnt, "sqlite3 db.sqlite 'PRAGMA integrity_check;'"),
            "ok\n"
        );
        // Rollback-journal mode too.
        sh(
            &m.mnt,
            "sqlite3 j.sqlite 'CREATE TABLE t(x); INSERT INTO t VALUES(1),(2),(3);'",
        );
        assert_eq!(
            sh(&m.mnt, "sqlite3 j.sqlite 'SELECT sum(x) FROM t;'"),
            "6\n"
        );
    }
}

#[test]
fn locks_stay_in_the_kernel() {
    require_root!();
    let m = TestMount::new(true);
    sh(&m.mnt, "touch lockfile");
    // flock: a holder blocks a second non-blocking taker.
    let out = sh(
        &m.mnt,
        "flock lockfile sleep 1 & sleep 0.3; flock -n lockfile true && echo got || echo busy; wait",
    );
    assert_eq!(out.trim(), "busy");
    // POSIX record locks across processes.
    let out = sh(
        &m.mnt,
        r#"python3 - <<'P'
import fcntl, os, time
f = open('lockfile', 'r+')
fcntl.lockf(f, fcntl.LOCK_EX)
pid = os.fork()
if pid == 0:
    g = open('lockfile', 'r+')
    try:
        fcntl.lockf(g, fcntl.LOCK_EX | fcntl.LOCK_NB); print('got', flush=True)
    except OSError:
        print('busy', flush=True)
    os._exit(0)
os.waitpid(pid, 0)
P"#,
    );
    assert_eq!(out.trim(), "busy");
}

#[test]
fn data_paths_large_files_and_mmap() {
    require_root!();
    for passthrough in [true, false] {
        let m = TestMount::new(passthrough);
        sh(
            &m.mnt,
            "head -c 33554432 /dev/urandom > big && cp big big2 && cmp big big2 && sync big2",
        );
        let a = sh(&m.mnt, "sha256sum big | cut -d' ' -f1");
        let b = sh(&m.backing, "sha256sum big2 | cut -d' ' -f1");
        assert_eq!(a, b);
        let out = sh(
            &m.mnt,
            r#"python3 - <<'P'
import mmap
with open('mm', 'wb') as f: f.write(b'\0' * 8192)
with open('mm', 'r+b') as f:
    m = mmap.mmap(f.fileno(), 8192); m[100:105] = b'hello'; m.flush(); m.close()
print(open('mm','rb').read()[100:105].decode())
P"#,
        );
        assert_eq!(out.trim(), "hello");
        assert_eq!(
            sh(&m.backing, "dd if=mm bs=1 skip=100 count=5 2>/dev/null"),
            "hello"
        );
    }
}

/// The node entry (descriptor in the shared table) of the file at `p` on the backing side.
fn node_of(m: &TestMount, p: &Path) -> Option<i32> {
    use std::os::unix::fs::MetadataExt;
    let ino = std::fs::metadata(p).unwrap().ino();
    (0..m.shared.scan_end()).find(|&fd| {
        m.shared.kind(fd) == porta_fs::shared::kind::NODE
            && m.shared.hot_node(fd).unwrap().ino() == ino
    })
}

#[test]
fn backing_ids_live_as_long_as_their_node_and_never_block_exec() {
    require_root!();
    let m = TestMount::new(true);
    if !m.passthrough_active() {
        eprintln!("kernel without FUSE passthrough: nothing to check");
        return;
    }
    // Written, closed, run at once: the registration held for the node must not keep the
    // file open for writing (exec would fail with ETXTBSY).
    let out = sh(
        &m.mnt,
        "printf '#!/bin/sh\\necho ran $1\\n' > prog; chmod +x prog; ./prog 1; echo more >> prog; ./prog 2; cp /bin/true t; ./t && echo true-ran",
    );
    assert_eq!(out, "ran 1\nran 2\ntrue-ran\n");
    let node = node_of(&m, &m.backing.join("prog")).expect("prog has a node while cached");
    let id = m.shared.backing_of(node);
    assert!(id.is_some(), "the backing id outlives the last close");
    // Opens after the first reuse it: reads and writes still see one file.
    let again = sh(&m.mnt, "cat prog | wc -l; echo x >> prog; cat prog | wc -l");
    assert_eq!(again, "3\n4\n");
    assert_eq!(m.shared.backing_of(node), id, "reopened under the same id");
    assert_eq!(
        std::fs::read_to_string(m.backing.join("prog")).unwrap(),
        std::fs::read_to_string(m.mnt.join("prog")).unwrap()
    );
    // When the kernel forgets the node, its entry and backing id go.
    sh(&m.mnt, "rm prog t");
    std::fs::write("/proc/sys/vm/drop_caches", "2").unwrap();
    let gone = (0..200).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(10));
        m.shared.kind(node) != porta_fs::shared::kind::NODE || m.shared.backing_of(node) != id
    });
    assert!(
        gone,
        "node {node} kept its backing id after the kernel forgot it"
    );
}

/// Writes, truncates and capability xattrs: who loses set-user-id, set-group-id and
/// `security.capability`, exactly as on a plain directory. An unprivileged writer clears
/// the bits (set-group-id only where the group may execute), root (CAP_FSETID) keeps
/// them, and any write removes a file capability; also through O_TRUNC, fallocate,
/// copy_file_range, and
/// through a file opened for writing before it got the bits (s8: passed through). A file
/// that gets or loses the bits while open can be opened again (s8, s10: the kernel
/// refuses an open whose I/O mode differs from the open ones').
const KILLPRIV: &str = r#"
touch s1 s2 s3 c1 c2 && chmod 6777 s1 s2 s3 && chmod 0777 c1 c2
setpriv --reuid 1000 --regid 1000 --clear-groups sh -c 'echo x >> s1; truncate -s 0 s2'
echo y >> s3
setcap cap_net_raw+ep c1 && setcap cap_net_raw+ep c2 && getcap c1 c2
echo z >> c1
setpriv --reuid 1000 --regid 1000 --clear-groups sh -c 'echo w >> c2'
echo after; getcap c1 c2
stat -c '%n %a %s' s1 s2 s3 c1 c2
touch s4 && chmod 6777 s4 && echo 1 >> s4 && echo 2 >> s4
setpriv --reuid 1000 --regid 1000 --clear-groups sh -c 'echo 3 >> s4; echo 4 >> s4'
chmod 6777 s4 && setpriv --reuid 1000 --regid 1000 --clear-groups sh -c 'echo 5 >> s4'
stat -c '%n %a %s' s4
touch s5 && chmod 6777 s5 && setpriv --reuid 1000 --regid 1000 --clear-groups fallocate -l 4096 s5
stat -c '%n %a %s' s5
echo 1 > s6 && echo 1 > s7 && chmod 6777 s6 s7
setpriv --reuid 1000 --regid 1000 --clear-groups sh -c ': > s6'; : > s7
stat -c '%n %a %s' s6 s7
f=/tmp/porta-killpriv-$$; mkfifo $f.1 $f.2; touch s8 && chmod 0777 s8
timeout 20 setpriv --reuid 1000 --regid 1000 --clear-groups sh -c "exec 3>>s8; echo a >&3; echo opened > $f.1; read x < $f.2; echo b >&3" &
timeout 20 cat $f.1; chmod 6777 s8; cat s8 || echo cat failed; echo go > $f.2; wait
stat -c '%n %a %s' s8
touch s10 && chmod 6777 s10
timeout 20 sh -c "exec 3<s10; echo opened > $f.1; read x < $f.2" &
timeout 20 cat $f.1; chmod 0777 s10; echo z >> s10 || echo write failed; cat s10 || echo cat failed
echo go > $f.2; wait; rm $f.1 $f.2
stat -c '%n %a %s' s10
touch s9 && chmod 2767 s9 && setpriv --reuid 1000 --regid 1000 --clear-groups sh -c 'echo x >> s9'
stat -c '%n %a %s' s9
echo abc > src && touch s11 s12 && chmod 6777 s11 s12
cfr="import os, sys; os.copy_file_range(os.open('src', os.O_RDONLY), os.open(sys.argv[1], os.O_WRONLY), 3)"
setpriv --reuid 1000 --regid 1000 --clear-groups /usr/bin/python3 -c "$cfr" s11; /usr/bin/python3 -c "$cfr" s12
stat -c '%n %a %s' s11 s12
"#;

fn killpriv(passthrough: bool) {
    if !Path::new("/usr/sbin/setcap").exists() && !Path::new("/sbin/setcap").exists() {
        eprintln!("SKIP: setcap (libcap2-bin) is not installed");
        return;
    }
    let m = TestMount::new(passthrough);
    compare_with_plain(&m, "killpriv", KILLPRIV);
}

#[test]
fn privileges_dropped_on_write_as_natively_passthrough() {
    require_root!();
    killpriv(true);
}

#[test]
fn privileges_dropped_on_write_as_natively_strict() {
    require_root!();
    killpriv(false);
}

/// A copy_file_range larger than the server's piece (16 MiB) comes back short, and the
/// caller's loop completes it: no request holds its caller (who cannot be interrupted
/// once the server has taken it, not even by SIGKILL) for the whole of a large copy.
#[test]
fn a_large_copy_file_range_is_answered_in_pieces() {
    require_root!();
    use std::os::fd::AsRawFd;
    let m = TestMount::new(true);
    let len = 40usize << 20;
    let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
    std::fs::write(m.mnt.join("big"), &data).unwrap();
    let src = std::fs::File::open(m.mnt.join("big")).unwrap();
    let dst = std::fs::File::create(m.mnt.join("copy")).unwrap();
    let mut pieces = vec![];
    let mut done = 0usize;
    while done < len {
        // SAFETY: valid descriptors; null offsets use and advance the file positions.
        let n = unsafe {
            libc::copy_file_range(
                src.as_raw_fd(),
                std::ptr::null_mut(),
                dst.as_raw_fd(),
                std::ptr::null_mut(),
                len - done,
                0,
            )
        };
        assert!(
            n > 0,
            "copy_file_range: {}",
            std::io::Error::last_os_error()
        );
        pieces.push(n as usize);
        done += n as usize;
    }
    assert_eq!(pieces, [16 << 20, 16 << 20, 8 << 20]);
    drop(dst);
    assert!(
        std::fs::read(m.mnt.join("copy")).unwrap() == data,
        "copy differs"
    );
}

/// A chown of a set-user-id or set-group-id device node clears the bits as on a plain
/// directory, for an unprivileged owner (chown and lchown) and for root, although the
/// served tree stores the node as a regular file whose emulated mode is an xattr.
const DEVICE_CHOWN: &str = r#"
for t in b c; do for n in 1 2 3 4 5; do mknod $t$n $t 1 $n; done; done
chown 1000:1000 b1 b2 b3 b4 b5 c1 c2 c3 c4 c5
chmod 6777 b1 c1 b5 c5; chmod 2767 b2 c2; chmod 4777 b3 c3; chmod 2777 b4 c4
setpriv --reuid 1000 --regid 1000 --clear-groups sh -c 'chown 1000:1000 b1 c1 b2 c2; chown -h 1000 b3 c3'
chown 0:0 b4 c4; chown -h 1000:1000 b5 c5
stat -c '%n %a %u %g %t:%T %F' b1 b2 b3 b4 b5 c1 c2 c3 c4 c5
"#;

fn device_chown(passthrough: bool) {
    let m = TestMount::new(passthrough);
    compare_with_plain(&m, "devchown", DEVICE_CHOWN);
}

#[test]
fn chown_of_set_id_device_nodes_clears_the_bits_passthrough() {
    require_root!();
    device_chown(true);
}

#[test]
fn chown_of_set_id_device_nodes_clears_the_bits_strict() {
    require_root!();
    device_chown(false);
}

/// The inode numbers of the spare files the server holds ready.
fn spare_inodes(m: &TestMount) -> Vec<u64> {
    (0..m.shared.scan_end())
        .filter(|&fd| m.shared.kind(fd) == porta_fs::shared::kind::SPARE)
        .map(|fd| m.shared.hot_node(fd).unwrap().ino())
        .collect()
}

#[test]
fn passthrough_creates_take_spare_files_with_the_identity_a_create_gives() {
    use std::os::unix::fs::MetadataExt;
    require_root!();
    let m = TestMount::new(true);
    // INIT is answered before the first request is.
    std::fs::metadata(m.mnt.join(".")).unwrap();
    if !m.passthrough_active() {
        eprintln!("kernel without FUSE passthrough: nothing to check");
        return;
    }
    // The filler makes its spares once a CREATE asked for one (bounded wait on the
    // table); none before.
    assert!(spare_inodes(&m).is_empty(), "spares made before any create");
    sh(&m.mnt, "touch first-create");
    // The filler keeps 16 ready: wait for all of them, so that the next create takes
    // one of those listed (bounded: 3,000 looks 10 ms apart).
    let mut spares = Vec::new();
    for _ in 0..3000 {
        spares = spare_inodes(&m);
        if spares.len() >= 16 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert!(spares.len() >= 16, "the pool was not filled: {spares:?}");
    // A create as an ordinary user in a set-group-id directory, with a umask; an
    // O_EXCL create of a name that exists; a create in a directory with a default ACL.
    sh(
        &m.mnt,
        "mkdir -m 2777 d && chgrp 4242 d && mkdir -m 777 acl",
    );
    // (Set from the host side: whether the mount takes ACLs is not the point here.)
    sh(
        &m.backing,
        "setfacl -d -m u::rwx,g::r-x,o::---,u:1234:rwx acl",
    );
    let before = std::time::SystemTime::now() - std::time::Duration::from_secs(1);
    let out = sh(
        &m.mnt,
        "setpriv --reuid 1000 --regid 1000 --clear-groups sh -c 'umask 027; echo data > d/new; echo $?'; \
         setpriv --reuid 1000 --regid 1000 --clear-groups sh -c 'set -C; echo again > d/new' 2>/dev/null || echo refused; \
         touch acl/inherits",
    );
    assert_eq!(
        out, "0\nrefused\n",
        "create, then O_EXCL on an existing name"
    );
    let st = std::fs::metadata(m.backing.join("d/new")).unwrap();
    assert_eq!(
        (st.uid(), st.gid()),
        (1000, 4242),
        "owner: caller, set-group-id dir"
    );
    assert_eq!(st.mode() & 0o7777, 0o640, "mode: 0666 less the umask");
    assert_eq!(st.nlink(), 1);
    assert!(st.modified().unwrap() >= before, "times are the create's");
    assert_eq!(
        std::fs::read_to_string(m.backing.join("d/new")).unwrap(),
        "data\n"
    );
    assert!(
        spares.contains(&st.ino()),
        "d/new (inode {}) is not one of the spare files {spares:?}",
        st.ino()
    );
    let a = sh(&m.backing, "getfacl -c acl/inherits | grep -c 1234");
    assert_eq!(
        a.trim(),
        "1",
        "a file in a directory with a default ACL inherits it"
    );
    // Many creates in a row: the pool refills; every file is what a plain create makes.
    compare_with_plain(
        &m,
        "many",
        "for i in $(seq 1 100); do echo $i > f$i; done; cat f1 f50 f100; ls | wc -l",
    );
    // The filler made the spares that replaced those used where the creates were (a
    // file system puts a new inode near its directory): the newest spares are nameless
    // files of `many` (the server runs in this process: its descriptors are ours).
    let in_many = (0..m.shared.scan_end())
        .filter(|&fd| m.shared.kind(fd) == porta_fs::shared::kind::SPARE)
        .filter_map(|fd| std::fs::read_link(format!("/proc/self/fd/{fd}")).ok())
        .filter(|p| p.starts_with(m.backing.join("many")))
        .count();
    assert!(
        in_many > 0,
        "no spare file was made in the directory of the creates"
    );
    // A restart adopts the spares still nameless: none is lost, none named twice.
    let left = spare_inodes(&m);
    assert!(!left.is_empty());
    for ino in &left {
        let named = sh(&m.backing, &format!("find . -inum {ino} | wc -l"));
        assert_eq!(named.trim(), "0", "spare {ino} has a name");
    }
}
