//! The file server on the io_uring transport (`run.porta.fs.transport`): a container's
//! file work served over FUSE io_uring rings, and the annotation's checks.
//!
//! FUSE over io_uring is off by default in the kernel (`enable_uring`): each test that
//! needs it turns it on for its duration and puts back what it found (a guard). A kernel
//! without it (no `/sys/module/fuse/parameters/enable_uring`) skips them with a reason.

use porta_integration::*;

const SWITCH: &str = "/sys/module/fuse/parameters/enable_uring";
const WHY: &str = "Porta's file-server transports";

/// enable_uring turned on; its old value written back on drop. Tests that use it hold
/// one lock so that one test's restore cannot turn it off under another.
struct Enabled {
    old: String,
    _lock: std::sync::MutexGuard<'static, ()>,
}

static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

impl Enabled {
    fn new() -> Option<Enabled> {
        let lock = LOCK.lock().unwrap_or_else(|p| p.into_inner());
        let Ok(old) = std::fs::read_to_string(SWITCH) else {
            eprintln!("SKIPPED: this kernel has no FUSE over io_uring ({SWITCH} is missing)");
            return None;
        };
        std::fs::write(SWITCH, "Y").expect("turn enable_uring on");
        Some(Enabled {
            old: old.trim().to_string(),
            _lock: lock,
        })
    }
}

impl Drop for Enabled {
    fn drop(&mut self) {
        let _ = std::fs::write(SWITCH, &self.old);
    }
}

/// The script's file work: creates, writes, appends, fsyncs, renames, links, lists,
/// removes; prints DONE when everything checked out.
const FILE_WORK: &str = "exec 2>&1; set -e; mkdir -p /w/d; cd /w; \
    for i in 1 2 3 4 5 6 7 8 9 10; do echo line-$i > f$i; done; \
    for i in 1 2 3 4 5 6 7 8 9 10; do [ \"$(cat f$i)\" = line-$i ]; done; \
    dd if=/dev/zero of=big bs=65536 count=40 2>/dev/null; [ $(wc -c < big) = 2621440 ]; \
    echo more >> f1; [ \"$(tail -n1 f1)\" = more ]; sync f1; \
    mv f2 d/moved; [ -e d/moved ] && [ ! -e f2 ]; ln f3 d/hard; [ \"$(cat d/hard)\" = line-3 ]; \
    ln -s f4 sym; [ \"$(cat sym)\" = line-4 ]; \
    [ $(ls | wc -l) = 12 ]; rm -r d sym big f*; [ -z \"$(ls)\" ]; \
    echo DONE";

/// The transport the running server reports in `porta state`.
fn reported_transport(c: &Container) -> String {
    let st = c.state();
    st["servers"][0]["transport"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn a_container_does_file_work_on_the_io_uring_transport() {
    require_root!();
    porta_only!(WHY);
    let Some(_on) = Enabled::new() else { return };
    for passthrough in [true, false] {
        let mut b = Bundle::new(&[]);
        b.annotation("run.porta.fs.transport", "uring");
        if !passthrough {
            b.annotation("run.porta.fs.passthrough", "off");
        }
        b.sh(&format!("{FILE_WORK}; echo up; while [ ! -e /stop ]; do sleep 1; done"));
        let c = Container::new("uring", b);
        c.create_start();
        assert!(
            c.wait_output("up", 60),
            "passthrough {passthrough}: {}\nsupervisor log:\n{}",
            c.output(),
            std::fs::read_to_string(format!("{}/{}/supervisor.log", c.root, c.id))
                .unwrap_or_default()
        );
        assert!(c.output().contains("DONE"), "{}", c.output());
        assert_eq!(reported_transport(&c), "uring", "{}", c.state());
        let _ = c.exec(&[], &["touch", "/stop"]);
        c.wait_stopped(60);
        c.delete().expect_ok();
        let left = leaks::check(std::slice::from_ref(&c.id), &[c.bundle.path_str()]);
        assert!(left.is_empty(), "left after delete: {}", left.join("\n"));
    }
}
