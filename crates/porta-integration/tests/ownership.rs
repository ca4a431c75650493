//! Owners of what a container creates: files, directories, symlinks, FIFOs and device
//! nodes get the creating process's uid and gid, or the directory's group under a
//! set-group-id directory (and subdirectories inherit the bit) — with the file server
//! exactly as on the kernel's own file systems.

use porta_integration::*;

const SCRIPT: &str = "cd /tmp/o && touch f && mkdir d && ln -s f l && mkfifo p \
    && touch g/f && mkdir g/d && mkdir g/d/e && \
    stat -c '%n %u %g %A' f d l p g/f g/d g/d/e";

fn owners(tag: &str, kernel_root: bool) -> String {
    let mut b = Bundle::new(&["true"]);
    let o = b.rootfs().join("tmp/o");
    std::fs::create_dir_all(o.join("g")).unwrap();
    Cmd::new("chown")
        .args(["1000:1000", &o.display().to_string()])
        .run()
        .expect_ok();
    Cmd::new("chown")
        .args(["1000:2000", &o.join("g").display().to_string()])
        .run()
        .expect_ok();
    Cmd::new("chmod")
        .args(["2777", &o.join("g").display().to_string()])
        .run()
        .expect_ok();
    b.readonly_root(false).user(1000, 1000, &[]).sh(SCRIPT);
    if kernel_root {
        b.annotation("run.porta.fs", "kernel");
    }
    let c = Container::new(tag, b);
    let out = c.run();
    assert_eq!(out.code, 0, "{out}");
    c.output()
}

#[test]
fn new_files_belong_to_their_creator_and_setgid_directories_pass_their_group_on() {
    if !is_root() {
        skip("needs root");
        return;
    }
    let kernel = owners("own-kernel", true);
    let expect = [
        "f 1000 1000 -rw-r--r--",
        "d 1000 1000 drwxr-xr-x",
        "l 1000 1000 lrwxrwxrwx",
        "p 1000 1000 prw-r--r--",
        "g/f 1000 2000 -rw-r--r--",
        "g/d 1000 2000 drwxr-sr-x",
        "g/d/e 1000 2000 drwxr-sr-x",
    ];
    assert_eq!(
        kernel.lines().collect::<Vec<_>>(),
        expect,
        "kernel root: {kernel}"
    );
    if is_porta() {
        let served = owners("own-served", false);
        assert_eq!(
            served, kernel,
            "the file server gives what the kernel gives"
        );
    }
}
