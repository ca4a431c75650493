//! Cgroup v2 (the unified hierarchy): making the groups and enabling controllers down to
//! them, the freezer (`cgroup.freeze`/`cgroup.events`), and limits, written by libcgroups'
//! v2 manager except the blkio weight (see [`apply`]), the pids limits and the device
//! filter (an eBPF program, `devices_v2`).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use libcgroups::common::{CgroupManager, ControllerOpt};
use oci_spec::runtime::LinuxResources;

use crate::error::{Error, Result};
use crate::{
    default_device_rules, devices_v2, fsutil, levels, mkdir, pids_stats, stats, write_pids_limits,
    CgroupDir, Stats, FREEZE_TIMEOUT, PAYLOAD, SERVERS,
};

/// Writes a whole set of resources on a v2-only host: the limits to the container group,
/// the memory and cpu limits again to `payload/`, the pids limits and the device filter.
pub(crate) fn set(d: &CgroupDir, r: &LinuxResources, rootless: bool) -> Result<()> {
    apply(d, r, rootless)?;
    // The same memory and cpu limits on payload/: the container's processes then see
    // their limits in their own cgroup (runtimes such as the JVM read them there).
    let mut mirror = LinuxResources::default();
    mirror.set_memory(*r.memory());
    mirror.set_cpu(r.cpu().clone().map(|mut c| {
        c.set_cpus(None);
        c.set_mems(None);
        c
    }));
    if mirror.memory().is_some() || mirror.cpu().is_some() {
        let mut payload = d.clone();
        payload.path = d.path.join(PAYLOAD);
        apply(&payload, &mirror, rootless)?;
    }
    if let Some(p) = r.pids() {
        if p.limit() != 0 {
            write_pids_limits(&d.path, p.limit())?;
        }
    }
    if let Some(devs) = r.devices() {
        let mut rules = devs.clone();
        rules.extend(default_device_rules());
        devices_v2::attach(&d.path, &rules)?;
    }
    Ok(())
}

/// Makes the v2 groups. With `enable`, enables in each level's `cgroup.subtree_control`
/// the controllers it offers, down to and including the container group (so that its
/// leaves have them); without (systemd driver: systemd owns the levels above the unit,
/// and the unit's own group still holds the holder), the caller enables them.
pub(crate) fn make_groups(
    mount_point: &Path,
    dir: &Path,
    made: &mut Vec<PathBuf>,
    enable: bool,
) -> Result<()> {
    if enable {
        enable_controllers(mount_point)?;
    }
    for level in levels(mount_point, dir) {
        mkdir(&level, made)?;
        if enable {
            enable_controllers(&level)?;
        }
    }
    mkdir(&dir.join(PAYLOAD), made)?;
    mkdir(&dir.join(SERVERS), made)?;
    Ok(())
}

/// Enables in `dir/cgroup.subtree_control` every controller of `dir/cgroup.controllers`
/// not enabled yet. Failures are logged, not returned: a limit that needs a controller
/// left out is refused later with the reason.
pub(crate) fn enable_controllers(dir: &Path) -> Result<()> {
    let Some(offered) = fsutil::read_opt(&dir.join("cgroup.controllers"))? else {
        return Ok(());
    };
    let sc = dir.join("cgroup.subtree_control");
    let enabled: Vec<String> = fsutil::read_opt(&sc)?
        .unwrap_or_default()
        .split_whitespace()
        .map(|c| c.trim_start_matches('+').to_string())
        .collect();
    let missing: Vec<&str> = offered
        .split_whitespace()
        .filter(|c| !enabled.iter().any(|e| e == c))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let all = missing
        .iter()
        .map(|c| format!("+{c}"))
        .collect::<Vec<_>>()
        .join(" ");
    if fsutil::write_raw(&sc, &all).is_ok() {
        return Ok(());
    }
    for c in missing {
        if let Err(e) = fsutil::write(&sc, &format!("+{c}")) {
            tracing::warn!(
                "cannot enable the {c} controller below {}: {e}",
                dir.display()
            );
        }
    }
    Ok(())
}

/// Whether the kernel reports the group frozen (`frozen 1` in `cgroup.events`).
pub(crate) fn is_frozen(dir: &Path) -> Result<bool> {
    let events = fsutil::read_flat_keyed(&dir.join("cgroup.events"))?;
    Ok(fsutil::keyed(&events, "frozen") == Some(1))
}

/// Waits until the group is frozen (`want`) or thawed, up to the freezer timeout.
fn wait_frozen(dir: &Path, want: bool) -> Result<()> {
    let start = Instant::now();
    loop {
        if is_frozen(dir)? == want {
            return Ok(());
        }
        if start.elapsed() > FREEZE_TIMEOUT {
            return Err(Error::FreezeTimeout {
                path: dir.to_path_buf(),
                wanted: if want { "frozen" } else { "thawed" },
                waited_ms: FREEZE_TIMEOUT.as_millis() as u64,
                state: fsutil::read_opt(&dir.join("cgroup.events"))?
                    .unwrap_or_default()
                    .replace('\n', "; "),
            });
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Writes limits to a cgroup v2 group with libcgroups' v2 manager.
pub(crate) fn apply(d: &CgroupDir, r: &LinuxResources, rootless: bool) -> Result<()> {
    let rel = d
        .path
        .strip_prefix(&d.mount_point)
        .unwrap_or(Path::new(""))
        .to_path_buf();
    let mgr = libcgroups::v2::manager::Manager::new(d.mount_point.clone(), rel)
        .map_err(|source| Error::V2Apply {
            path: d.path.clone(),
            source,
        })?
        .with_rootless(rootless);
    // libcgroups 0.7 converts the blkio weight to io.weight in u16 arithmetic, which
    // overflows for any weight above 16; the weight is written here instead.
    let mut r = r.clone();
    let weight = r
        .block_io()
        .as_ref()
        .and_then(|b| b.weight())
        .filter(|w| *w != 0);
    if weight.is_some() {
        if let Some(b) = r.block_io_mut() {
            b.set_weight(None);
        }
    }
    let opt = ControllerOpt {
        resources: &r,
        disable_oom_killer: r
            .memory()
            .as_ref()
            .and_then(|m| m.disable_oom_killer())
            .unwrap_or(false),
        oom_score_adj: None,
        freezer_state: None,
    };
    mgr.apply(&opt).map_err(|source| Error::V2Apply {
        path: d.path.clone(),
        source,
    })?;
    if let Some(w) = weight {
        io_weight(&d.path, w)?;
    }
    Ok(())
}

/// The blkio weight (10..=1000) on cgroup v2: as is to `io.bfq.weight` when BFQ is there,
/// else converted linearly to `io.weight`'s 1..=10000, as runc does.
fn io_weight(dir: &Path, w: u16) -> Result<()> {
    if !(10..=1000).contains(&w) {
        return Err(Error::InvalidValue {
            field: "linux.resources.blockIO.weight".into(),
            value: w.to_string(),
            reason: "must be between 10 and 1000".into(),
        });
    }
    let bfq = dir.join("io.bfq.weight");
    if bfq.exists() {
        return fsutil::write(&bfq, &w.to_string());
    }
    let converted = 1 + (u64::from(w) - 10) * 9999 / 990;
    fsutil::write(&dir.join("io.weight"), &converted.to_string())
}

/// Freezes the group (`cgroup.freeze`) and waits until the kernel reports it frozen; thaws
/// it again if that does not happen in time.
pub(crate) fn freeze(dir: &Path) -> Result<()> {
    fsutil::write(&dir.join("cgroup.freeze"), "1")?;
    if let Err(e) = wait_frozen(dir, true) {
        let _ = fsutil::write(&dir.join("cgroup.freeze"), "0");
        return Err(e);
    }
    Ok(())
}

/// Thaws the group and waits until the kernel reports it thawed.
pub(crate) fn thaw(dir: &Path) -> Result<()> {
    fsutil::write(&dir.join("cgroup.freeze"), "0")?;
    wait_frozen(dir, false)
}

/// Statistics of the container group `dir` on a v2-only host.
pub(crate) fn stats(dir: &Path) -> Result<Stats> {
    Ok(Stats {
        cpu: stats::v2_cpu(dir)?,
        memory: stats::v2_memory(dir)?,
        pids: pids_stats(dir)?,
        blkio: stats::parse_io_stat(&fsutil::read_opt(&dir.join("io.stat"))?.unwrap_or_default()),
        hugetlb: stats::v2_hugetlb(dir)?,
    })
}

/// OOM kills in the group and below it: `oom_kill` of its `memory.events` (hierarchical).
pub(crate) fn oom_kill_count(dir: &Path) -> Result<u64> {
    let list = fsutil::read_flat_keyed(&dir.join("memory.events"))?;
    Ok(fsutil::keyed(&list, "oom_kill").unwrap_or(0))
}
