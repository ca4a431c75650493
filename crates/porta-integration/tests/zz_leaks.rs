//! The leak check, meant to run LAST (scripts/test.sh runs it after every other test
//! binary): fails if any test left a mount (in ANY process's mount table), a cgroup
//! named after a test container id (any hierarchy under /sys/fs/cgroup), a container
//! process, or anything in /run/porta-test (or /run/porta), and what a test's private
//! Docker could leave (its daemons and shims, its `pit-docker-*` cgroup parent, its network
//! namespace and root mounts).

use porta_integration::*;

#[test]
fn nothing_left_behind() {
    if !is_root() {
        return;
    }
    let mut findings = Vec::new();
    findings.extend(
        leaks::mounts_matching(&leaks::is_test_mount)
            .into_iter()
            .map(|m| format!("mount: {m}")),
    );
    findings.extend(
        leaks::cgroups_matching(&leaks::is_test_cgroup)
            .into_iter()
            .map(|c| format!("cgroup: {}", c.display())),
    );
    findings.extend(
        leaks::processes_matching(&leaks::is_test_process)
            .into_iter()
            .map(|p| format!("process: {p}")),
    );
    for d in [ROOT, "/run/porta"] {
        findings.extend(
            leaks::state_entries(d)
                .into_iter()
                .map(|e| format!("state: {e}")),
        );
    }
    // the long --root of lifecycle::long_root_and_long_id must be empty (the test removes it)
    findings.extend(
        leaks::state_entries("/run")
            .into_iter()
            .filter(|e| e.starts_with("/run/pit-long-root") && !leaks::state_entries(e).is_empty())
            .map(|e| {
                format!(
                    "state: {e} (long --root) holds {:?}",
                    leaks::state_entries(&e)
                )
            }),
    );
    findings.extend(leaks::docker_leftovers());
    let bundles = leaks::state_entries(BUNDLES);
    findings.extend(
        bundles
            .into_iter()
            .map(|b| format!("bundle directory: {b}")),
    );
    if !findings.is_empty() {
        panic!(
            "the test suite left {} things behind:\n{}",
            findings.len(),
            findings.join("\n")
        );
    }
}
