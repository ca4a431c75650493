//! Small helpers to read and write cgroup interface files with errors that name the file.

use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Reads a whole cgroup file.
pub(crate) fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|source| Error::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Whether an io error means the group is gone: not found, or removed while it was being
/// read (ENODEV; systemd removes a unit's groups when the unit stops, concurrently with
/// Porta's own clean-up).
fn is_gone(e: &std::io::Error) -> bool {
    e.kind() == ErrorKind::NotFound || e.raw_os_error() == Some(nix::libc::ENODEV)
}

/// Reads a cgroup file, or `None` if it (or its group) does not exist.
pub(crate) fn read_opt(path: &Path) -> Result<Option<String>> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if is_gone(&e) => Ok(None),
        Err(source) => Err(Error::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Writes `value` to an existing cgroup file in one write(2), as the kernel expects.
pub(crate) fn write_raw(path: &Path, value: &str) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(false)
        .truncate(false)
        .open(path)?;
    f.write_all(value.as_bytes())
}

/// Writes `value` to an existing cgroup file.
pub(crate) fn write(path: &Path, value: &str) -> Result<()> {
    write_raw(path, value).map_err(|source| Error::Write {
        path: path.to_path_buf(),
        value: value.to_string(),
        source,
    })
}

/// Reads a file holding one number (see [`parse_u64`]), 0 when the file does not exist.
pub(crate) fn read_u64_or_zero(path: &Path) -> Result<u64> {
    match read_opt(path)? {
        Some(s) => parse_u64(path, s.trim()),
        None => Ok(0),
    }
}

/// Parses one number as cgroup files hold it (`max` is `u64::MAX`, negative is `u64::MAX`
/// too: v1 writes -1 for "no limit" in some files).
pub(crate) fn parse_u64(path: &Path, s: &str) -> Result<u64> {
    if s == "max" {
        return Ok(u64::MAX);
    }
    if let Ok(v) = s.parse::<u64>() {
        return Ok(v);
    }
    match s.parse::<i64>() {
        Ok(v) if v < 0 => Ok(u64::MAX),
        _ => Err(Error::Parse {
            path: path.to_path_buf(),
            detail: format!("expected a number or \"max\", found {s:?}"),
        }),
    }
}

/// Parses a flat keyed file (`key value` per line) such as memory.stat or cpu.stat.
/// Lines that do not hold a number are skipped.
pub(crate) fn parse_flat_keyed(text: &str) -> Vec<(String, u64)> {
    text.lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let k = it.next()?;
            let v = it.next()?.parse::<u64>().ok()?;
            Some((k.to_string(), v))
        })
        .collect()
}

/// Reads a flat keyed file; empty when it does not exist.
pub(crate) fn read_flat_keyed(path: &Path) -> Result<Vec<(String, u64)>> {
    Ok(read_opt(path)?
        .map(|t| parse_flat_keyed(&t))
        .unwrap_or_default())
}

/// Looks a key up in a flat keyed list.
pub(crate) fn keyed(list: &[(String, u64)], key: &str) -> Option<u64> {
    list.iter().find(|(k, _)| k == key).map(|(_, v)| *v)
}

/// The pids listed in `dir/cgroup.procs` and in every group below `dir`.
/// A directory that does not exist holds no pids.
pub(crate) fn pids_recursive(dir: &Path) -> Result<Vec<i32>> {
    let mut out = Vec::new();
    let mut stack: Vec<PathBuf> = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let procs = d.join("cgroup.procs");
        if let Some(text) = read_opt(&procs)? {
            for l in text.lines().filter(|l| !l.trim().is_empty()) {
                let pid = l.trim().parse::<i32>().map_err(|e| Error::Parse {
                    path: procs.clone(),
                    detail: format!("line {l:?} is not a pid: {e}"),
                })?;
                out.push(pid);
            }
        }
        for sub in subdirs(&d)? {
            stack.push(sub);
        }
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

/// The directories directly below `dir` (empty when `dir` does not exist).
pub(crate) fn subdirs(dir: &Path) -> Result<Vec<PathBuf>> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if is_gone(&e) => return Ok(Vec::new()),
        Err(source) => {
            return Err(Error::Read {
                path: dir.to_path_buf(),
                source,
            })
        }
    };
    let mut out = Vec::new();
    for ent in rd {
        let ent = match ent {
            Ok(ent) => ent,
            Err(e) if is_gone(&e) => break,
            Err(source) => {
                return Err(Error::Read {
                    path: dir.to_path_buf(),
                    source,
                })
            }
        };
        if ent.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            out.push(ent.path());
        }
    }
    Ok(out)
}

/// Whether an io error means "not allowed" (for rootless containers without delegation).
pub(crate) fn is_permission(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error().map(nix::errno::Errno::from_raw),
        Some(nix::errno::Errno::EACCES)
            | Some(nix::errno::Errno::EPERM)
            | Some(nix::errno::Errno::EROFS)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_numbers_and_max() {
        let p = Path::new("x");
        assert_eq!(parse_u64(p, "max").unwrap(), u64::MAX);
        assert_eq!(parse_u64(p, "-1").unwrap(), u64::MAX);
        assert_eq!(parse_u64(p, "42").unwrap(), 42);
        assert!(parse_u64(p, "forty").is_err());
    }

    #[test]
    fn parses_flat_keyed() {
        let l = parse_flat_keyed("usage_usec 10\nuser_usec 7\nbogus line here\n\nsystem_usec 3\n");
        assert_eq!(keyed(&l, "usage_usec"), Some(10));
        assert_eq!(keyed(&l, "system_usec"), Some(3));
        assert_eq!(keyed(&l, "bogus"), None);
    }
}
