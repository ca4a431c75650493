//! Resource limits on cgroup v1 hierarchies, written by hand.
//!
//! libcgroups' v1 manager takes one path and joins it to every controller's mount point. On
//! a host where the caller sits in different groups in different hierarchies (on the
//! development machines the caller's memory group is `/process_api/<hash>` while every
//! other is `/`), runc's relative and default cgroupsPath name different paths in different
//! hierarchies, which that manager cannot express (and its devices controller is applied on
//! every call). So v1 limits are written here, one controller at a time, each to the
//! container group of the hierarchy that carries it.

use std::path::{Path, PathBuf};

use oci_spec::runtime::{
    LinuxBlockIo, LinuxCpu, LinuxDeviceCgroup, LinuxDeviceType, LinuxMemory, LinuxNetwork,
};

use crate::error::{Error, Result};
use crate::fsutil;
use crate::{PAYLOAD, SERVERS};

/// Finds the container group of the v1 hierarchy carrying a controller.
pub(crate) type Finder<'a> = &'a dyn Fn(&str) -> Option<PathBuf>;

fn need(find: Finder, controller: &str, what: &str) -> Result<PathBuf> {
    find(controller).ok_or_else(|| Error::ControllerMissing {
        controller: controller.into(),
        what: what.into(),
        reason: "is not mounted on this host (or could not be used by this container)".into(),
    })
}

/// Memory limits (`memory.limit_in_bytes`, `memory.memsw.limit_in_bytes`, ...).
pub(crate) fn memory(find: Finder, m: &LinuxMemory) -> Result<()> {
    let wants = m.limit().is_some()
        || m.swap().is_some()
        || m.reservation().is_some()
        || m.swappiness().is_some()
        || m.disable_oom_killer() == Some(true);
    if m.kernel().is_some() || m.kernel_tcp().is_some() {
        tracing::warn!(
            "linux.resources.memory.kernel/kernelTCP are ignored (as in runc: the kernel no \
             longer supports kernel memory limits)"
        );
    }
    if !wants {
        return Ok(());
    }
    let dir = need(find, "memory", "linux.resources.memory")?;
    for (field, v) in [
        ("limit", m.limit()),
        ("swap", m.swap()),
        ("reservation", m.reservation()),
    ] {
        if let Some(v) = v {
            if v < -1 {
                return Err(Error::InvalidValue {
                    field: format!("linux.resources.memory.{field}"),
                    value: v.to_string(),
                    reason: "must be -1 (no limit) or a number of bytes".into(),
                });
            }
        }
    }
    if let (Some(l), Some(s)) = (m.limit(), m.swap()) {
        if l > 0 && s > 0 && s < l {
            return Err(Error::InvalidValue {
                field: "linux.resources.memory.swap".into(),
                value: s.to_string(),
                reason: format!(
                    "memory+swap must not be below the memory limit {l} (the OCI swap value \
                     is memory plus swap)"
                ),
            });
        }
    }
    let limit_file = dir.join("memory.limit_in_bytes");
    let swap_file = dir.join("memory.memsw.limit_in_bytes");
    match (m.limit(), m.swap()) {
        (limit, Some(swap)) => {
            if !swap_file.exists() {
                return Err(Error::ControllerMissing {
                    controller: "memory".into(),
                    what: "linux.resources.memory.swap".into(),
                    reason: format!(
                        "has no swap accounting on this host ({} is missing; boot with \
                         swapaccount=1)",
                        swap_file.display()
                    ),
                });
            }
            // memory must stay <= memory+swap at every step: when raising, raise swap
            // first; when lowering, lower memory first. Try one order, then the other.
            let swap_s = swap.to_string();
            match limit {
                Some(limit) => {
                    let limit_s = limit.to_string();
                    if fsutil::write_raw(&limit_file, &limit_s).is_ok() {
                        fsutil::write(&swap_file, &swap_s)?;
                    } else {
                        fsutil::write(&swap_file, &swap_s)?;
                        fsutil::write(&limit_file, &limit_s)?;
                    }
                }
                None => fsutil::write(&swap_file, &swap_s)?,
            }
        }
        (Some(limit), None) => {
            fsutil::write(&limit_file, &limit.to_string())?;
        }
        (None, None) => {}
    }
    if let Some(r) = m.reservation() {
        fsutil::write(&dir.join("memory.soft_limit_in_bytes"), &r.to_string())?;
    }
    if let Some(s) = m.swappiness() {
        if s > 100 {
            return Err(Error::InvalidValue {
                field: "linux.resources.memory.swappiness".into(),
                value: s.to_string(),
                reason: "must be between 0 and 100".into(),
            });
        }
        fsutil::write(&dir.join("memory.swappiness"), &s.to_string())?;
    }
    if m.disable_oom_killer() == Some(true) {
        fsutil::write(&dir.join("memory.oom_control"), "1")?;
    }
    Ok(())
}

/// CPU bandwidth and shares (`cpu.*`).
pub(crate) fn cpu(find: Finder, c: &LinuxCpu) -> Result<()> {
    let wants = c.shares().is_some()
        || c.quota().is_some()
        || c.period().is_some()
        || c.realtime_runtime().is_some()
        || c.realtime_period().is_some()
        || c.idle().is_some()
        || c.burst().is_some();
    if !wants {
        return Ok(());
    }
    let dir = need(find, "cpu", "linux.resources.cpu")?;
    if let Some(s) = c.shares() {
        if s != 0 {
            fsutil::write(&dir.join("cpu.shares"), &s.to_string())?;
        }
    }
    // The kernel checks period against the current quota and the other way round; write
    // the period, the quota, and the period again if it was refused the first time.
    let period_file = dir.join("cpu.cfs_period_us");
    let period_failed = match c.period() {
        Some(p) if p != 0 => fsutil::write_raw(&period_file, &p.to_string()).is_err(),
        _ => false,
    };
    if let Some(q) = c.quota() {
        if q != 0 {
            let q = if q < 0 { -1 } else { q };
            fsutil::write(&dir.join("cpu.cfs_quota_us"), &q.to_string())?;
        }
    }
    if period_failed {
        if let Some(p) = c.period() {
            fsutil::write(&period_file, &p.to_string())?;
        }
    }
    if let Some(b) = c.burst() {
        fsutil::write(&dir.join("cpu.cfs_burst_us"), &b.to_string())?;
    }
    if let Some(p) = c.realtime_period() {
        if p != 0 {
            fsutil::write(&dir.join("cpu.rt_period_us"), &p.to_string())?;
        }
    }
    if let Some(r) = c.realtime_runtime() {
        if r != 0 {
            fsutil::write(&dir.join("cpu.rt_runtime_us"), &r.to_string())?;
        }
    }
    if let Some(i) = c.idle() {
        fsutil::write(&dir.join("cpu.idle"), &i.to_string())?;
    }
    Ok(())
}

/// `cpuset.cpus` / `cpuset.mems` on the container group and on both leaves (a v1 child must
/// stay a subset of its parent, so leaves are narrowed first and widened last).
pub(crate) fn cpuset(find: Finder, c: &LinuxCpu) -> Result<()> {
    let cpus = c.cpus().as_ref().filter(|s| !s.is_empty());
    let mems = c.mems().as_ref().filter(|s| !s.is_empty());
    if cpus.is_none() && mems.is_none() {
        return Ok(());
    }
    let dir = need(find, "cpuset", "linux.resources.cpu.cpus/mems")?;
    let leaves = [dir.join(PAYLOAD), dir.join(SERVERS)];
    for (file, value) in [("cpuset.cpus", cpus), ("cpuset.mems", mems)] {
        let Some(value) = value else { continue };
        for leaf in &leaves {
            let _ = fsutil::write_raw(&leaf.join(file), value);
        }
        fsutil::write(&dir.join(file), value)?;
        for leaf in &leaves {
            if leaf.exists() {
                fsutil::write(&leaf.join(file), value)?;
            }
        }
    }
    Ok(())
}

/// Copies `cpuset.cpus` and `cpuset.mems` from the parent into a new v1 cpuset group when
/// they are empty (the kernel refuses tasks in a cpuset group with no cpus or mems).
pub(crate) fn cpuset_inherit(dir: &Path) -> Result<()> {
    let Some(parent) = dir.parent() else {
        return Ok(());
    };
    for file in ["cpuset.cpus", "cpuset.mems"] {
        let own = fsutil::read(&dir.join(file))?;
        if own.trim().is_empty() {
            let from_parent = fsutil::read(&parent.join(file))?;
            let v = from_parent.trim();
            if v.is_empty() {
                return Err(Error::Parse {
                    path: parent.join(file),
                    detail: "the parent cpuset has no cpus or mems to inherit".into(),
                });
            }
            fsutil::write(&dir.join(file), v)?;
        }
    }
    Ok(())
}

/// `pids.max`: a positive limit is written, a negative one means `max`, 0 means unset (as
/// in runc). See [`crate::write_pids_limits`] for where.
pub(crate) fn pids(find: Finder, limit: i64) -> Result<()> {
    if limit == 0 {
        return Ok(());
    }
    let dir = need(find, "pids", "linux.resources.pids.limit")?;
    crate::write_pids_limits(&dir, limit)
}

/// Whether a block IO section names any device (weights per device or throttles).
pub(crate) fn has_device_entries(b: &LinuxBlockIo) -> bool {
    b.weight_device().as_ref().is_some_and(|v| !v.is_empty())
        || b.throttle_read_bps_device()
            .as_ref()
            .is_some_and(|v| !v.is_empty())
        || b.throttle_write_bps_device()
            .as_ref()
            .is_some_and(|v| !v.is_empty())
        || b.throttle_read_iops_device()
            .as_ref()
            .is_some_and(|v| !v.is_empty())
        || b.throttle_write_iops_device()
            .as_ref()
            .is_some_and(|v| !v.is_empty())
}

/// blkio weights and throttles.
pub(crate) fn blkio(find: Finder, b: &LinuxBlockIo) -> Result<()> {
    let wants = b.weight().is_some() || b.leaf_weight().is_some() || has_device_entries(b);
    if !wants {
        return Ok(());
    }
    let dir = need(find, "blkio", "linux.resources.blockIO")?;
    // CFQ files, or BFQ's when CFQ is gone (kernels >= 5.0).
    let weight_file = if dir.join("blkio.weight").exists() {
        dir.join("blkio.weight")
    } else {
        dir.join("blkio.bfq.weight")
    };
    if let Some(w) = b.weight() {
        if w != 0 {
            fsutil::write(&weight_file, &w.to_string())?;
        }
    }
    if let Some(w) = b.leaf_weight() {
        if w != 0 {
            fsutil::write(&dir.join("blkio.leaf_weight"), &w.to_string())?;
        }
    }
    let weight_device_file = if dir.join("blkio.weight_device").exists() {
        dir.join("blkio.weight_device")
    } else {
        dir.join("blkio.bfq.weight_device")
    };
    for wd in b.weight_device().iter().flatten() {
        if let Some(w) = wd.weight() {
            fsutil::write(
                &weight_device_file,
                &format!("{}:{} {}", wd.major(), wd.minor(), w),
            )?;
        }
        if let Some(w) = wd.leaf_weight() {
            fsutil::write(
                &dir.join("blkio.leaf_weight_device"),
                &format!("{}:{} {}", wd.major(), wd.minor(), w),
            )?;
        }
    }
    for (list, file) in [
        (
            b.throttle_read_bps_device(),
            "blkio.throttle.read_bps_device",
        ),
        (
            b.throttle_write_bps_device(),
            "blkio.throttle.write_bps_device",
        ),
        (
            b.throttle_read_iops_device(),
            "blkio.throttle.read_iops_device",
        ),
        (
            b.throttle_write_iops_device(),
            "blkio.throttle.write_iops_device",
        ),
    ] {
        for t in list.iter().flatten() {
            fsutil::write(
                &dir.join(file),
                &format!("{}:{} {}", t.major(), t.minor(), t.rate()),
            )?;
        }
    }
    Ok(())
}

/// `hugetlb.<size>.limit_in_bytes` on a v1 hugetlb hierarchy.
pub(crate) fn hugetlb(dir: &Path, size: &str, limit: i64) -> Result<()> {
    fsutil::write(
        &dir.join(format!("hugetlb.{size}.limit_in_bytes")),
        &limit.to_string(),
    )
}

/// `net_cls.classid` and `net_prio.ifpriomap`.
pub(crate) fn network(find: Finder, n: &LinuxNetwork) -> Result<()> {
    if let Some(id) = n.class_id() {
        let dir = need(find, "net_cls", "linux.resources.network.classID")?;
        fsutil::write(&dir.join("net_cls.classid"), &id.to_string())?;
    }
    let prios = n.priorities().as_ref().filter(|p| !p.is_empty());
    if let Some(prios) = prios {
        let dir = need(find, "net_prio", "linux.resources.network.priorities")?;
        for p in prios {
            fsutil::write(
                &dir.join("net_prio.ifpriomap"),
                &format!("{} {}", p.name(), p.priority()),
            )?;
        }
    }
    Ok(())
}

/// Device rules: the config's list in order, then [`crate::default_device_rules`], written
/// to both leaves. The kernel refuses to change the default ("a" rules) of a v1 devices
/// group that has children: the container group itself got the same rules when it was
/// made, before its leaves ([`device_rules_on`] from `make_v1`), and groups made later
/// below a leaf inherit its rules.
pub(crate) fn devices(find: Finder, rules: &[LinuxDeviceCgroup]) -> Result<()> {
    let Some(dir) = find("devices") else {
        if rules.is_empty() {
            return Ok(());
        }
        return Err(Error::ControllerMissing {
            controller: "devices".into(),
            what: "linux.resources.devices".into(),
            reason: "is not mounted on this host".into(),
        });
    };
    for leaf in [PAYLOAD, SERVERS] {
        device_rules_on(&dir.join(leaf), rules)?;
    }
    Ok(())
}

/// Writes `rules`, then [`crate::default_device_rules`], to the v1 devices group `dir`.
pub(crate) fn device_rules_on(dir: &Path, rules: &[LinuxDeviceCgroup]) -> Result<()> {
    let defaults = crate::default_device_rules();
    for rule in rules.iter().chain(defaults.iter()) {
        let file = if rule.allow() {
            "devices.allow"
        } else {
            "devices.deny"
        };
        fsutil::write(&dir.join(file), &device_rule(rule))?;
    }
    Ok(())
}

/// One rule as the devices controller takes it: `c 1:3 rwm`, `a *:* rwm`.
pub(crate) fn device_rule(r: &LinuxDeviceCgroup) -> String {
    let typ = match r.typ().unwrap_or(LinuxDeviceType::A) {
        LinuxDeviceType::B => "b",
        LinuxDeviceType::C | LinuxDeviceType::U => "c",
        LinuxDeviceType::A | LinuxDeviceType::P => "a",
    };
    let num = |n: Option<i64>| {
        n.filter(|n| *n >= 0)
            .map_or("*".to_string(), |n| n.to_string())
    };
    let access = r
        .access()
        .as_deref()
        .filter(|a| !a.is_empty())
        .unwrap_or("rwm");
    format!("{typ} {}:{} {access}", num(r.major()), num(r.minor()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::{LinuxCpuBuilder, LinuxDeviceCgroupBuilder, LinuxMemoryBuilder};

    fn fake(files: &[&str]) -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        for f in files {
            std::fs::write(t.path().join(f), "").unwrap();
        }
        t
    }

    #[test]
    fn writes_memory_and_swap() {
        let t = fake(&[
            "memory.limit_in_bytes",
            "memory.memsw.limit_in_bytes",
            "memory.swappiness",
        ]);
        let p = t.path().to_path_buf();
        let find = move |c: &str| (c == "memory").then(|| p.clone());
        let m = LinuxMemoryBuilder::default()
            .limit(1 << 20)
            .swap(2 << 20)
            .swappiness(10u64)
            .build()
            .unwrap();
        memory(&find, &m).unwrap();
        let r = |f: &str| std::fs::read_to_string(t.path().join(f)).unwrap();
        assert_eq!(r("memory.limit_in_bytes"), "1048576");
        assert_eq!(r("memory.memsw.limit_in_bytes"), "2097152");
        assert_eq!(r("memory.swappiness"), "10");

        let bad = LinuxMemoryBuilder::default()
            .limit(4096)
            .swap(10)
            .build()
            .unwrap();
        assert!(matches!(
            memory(&find, &bad),
            Err(Error::InvalidValue { .. })
        ));
    }

    #[test]
    fn missing_controller_is_named() {
        let find = |_: &str| None;
        let c = LinuxCpuBuilder::default().shares(512u64).build().unwrap();
        let e = cpu(&find, &c).unwrap_err().to_string();
        assert!(e.contains("cpu cgroup controller"), "{e}");
        // Nothing asked, nothing needed.
        cpu(&find, &LinuxCpu::default()).unwrap();
    }

    #[test]
    fn formats_device_rules() {
        let r = LinuxDeviceCgroupBuilder::default()
            .allow(false)
            .access("rwm")
            .build()
            .unwrap();
        assert_eq!(device_rule(&r), "a *:* rwm");
        let r = LinuxDeviceCgroupBuilder::default()
            .allow(true)
            .typ(LinuxDeviceType::C)
            .major(136)
            .access("rw")
            .build()
            .unwrap();
        assert_eq!(device_rule(&r), "c 136:* rw");
    }
}
