//! Identity maps of a nested container: given in the parent's id space, composed with the
//! parent's own maps into host ids.

/// Most lines the kernel takes in a `uid_map`/`gid_map`.
const MAX_EXTENTS: usize = 340;

/// How many ids the default map gives a child.
pub const DEFAULT_SIZE: u64 = 65536;

/// One line of an id map: `count` ids from `inside` map onto `outside..`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// First id in the namespace.
    pub inside: u64,
    /// First id it maps to, in the namespace above.
    pub outside: u64,
    /// How many ids.
    pub count: u64,
}

/// The identity map of a container without a user namespace (every host id).
pub fn identity() -> Vec<Extent> {
    vec![Extent {
        inside: 0,
        outside: 0,
        count: u64::from(u32::MAX),
    }]
}

/// Parses `/proc/PID/uid_map` (or `gid_map`) text.
pub fn parse_proc(text: &str) -> Result<Vec<Extent>, String> {
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let n: Vec<u64> = line
            .split_whitespace()
            .map(|w| {
                w.parse::<u64>()
                    .map_err(|_| format!("bad id map line {line:?}"))
            })
            .collect::<Result<_, _>>()?;
        if n.len() != 3 {
            return Err(format!("bad id map line {line:?}"));
        }
        out.push(Extent {
            inside: n[0],
            outside: n[1],
            count: n[2],
        });
    }
    Ok(out)
}

/// The id `inside` maps to through `map`, if any.
pub fn map_one(map: &[Extent], inside: u64) -> Option<u64> {
    map.iter()
        .find(|e| inside >= e.inside && inside - e.inside < e.count)
        .map(|e| e.outside + (inside - e.inside))
}

/// Composes the child's map (inside: the child's ids, outside: the parent's) with the
/// parent's (inside: the parent's ids, outside: host ids) into a map of the child's ids
/// to host ids. Every id of the child's map must be mapped by the parent: otherwise the
/// error says which range is not.
pub fn compose(child: &[Extent], parent: &[Extent]) -> Result<Vec<Extent>, String> {
    let mut sorted: Vec<Extent> = parent.to_vec();
    sorted.sort_by_key(|e| e.inside);
    let mut out = Vec::new();
    for (i, c) in child.iter().enumerate() {
        if c.count == 0 {
            return Err(format!("[{i}]: size 0"));
        }
        if c.inside + c.count > u64::from(u32::MAX) + 1
            || c.outside + c.count > u64::from(u32::MAX) + 1
        {
            return Err(format!("[{i}]: beyond the 32-bit id range"));
        }
        // Walk the child's range of parent ids across the parent's extents.
        let (mut at, end) = (c.outside, c.outside + c.count);
        while at < end {
            let Some(p) = sorted
                .iter()
                .find(|p| at >= p.inside && at - p.inside < p.count)
            else {
                return Err(format!(
                    "[{i}]: id {at} of the parent's id space (hostID {}..{}) is not mapped in the \
                     parent's user namespace",
                    c.outside, end
                ));
            };
            let n = (p.inside + p.count).min(end) - at;
            out.push(Extent {
                inside: c.inside + (at - c.outside),
                outside: p.outside + (at - p.inside),
                count: n,
            });
            at += n;
        }
    }
    if out.len() > MAX_EXTENTS {
        return Err(format!(
            "composed with the parent's map it needs {} lines, more than the kernel's {MAX_EXTENTS}",
            out.len()
        ));
    }
    Ok(out)
}

/// The default map of a child, in the parent's id space: the child's ids 0.. onto the
/// parent's mapped ids in ascending order, [`DEFAULT_SIZE`] ids in all (or what the
/// parent has, if fewer). Where the parent maps its 0..65536, that is the child's 0..65536
/// onto the parent's 0..65536.
pub fn default_child(parent: &[Extent]) -> Vec<Extent> {
    let mut sorted: Vec<Extent> = parent.to_vec();
    sorted.sort_by_key(|e| e.inside);
    let mut out: Vec<Extent> = Vec::new();
    let mut given = 0u64;
    for p in sorted {
        if given >= DEFAULT_SIZE {
            break;
        }
        let n = p.count.min(DEFAULT_SIZE - given);
        // Merge with the previous line when both columns continue it.
        match out.last_mut() {
            Some(l) if l.inside + l.count == given && l.outside + l.count == p.inside => {
                l.count += n
            }
            _ => out.push(Extent {
                inside: given,
                outside: p.inside,
                count: n,
            }),
        }
        given += n;
    }
    out
}

/// The map as `/proc/PID/uid_map` lines and as OCI `uidMappings` JSON.
pub fn to_json(map: &[Extent]) -> serde_json::Value {
    serde_json::Value::Array(
        map.iter()
            .map(|e| serde_json::json!({"containerID": e.inside, "hostID": e.outside, "size": e.count}))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(inside: u64, outside: u64, count: u64) -> Extent {
        Extent {
            inside,
            outside,
            count,
        }
    }

    #[test]
    fn a_child_map_inside_the_parents_range_composes_to_host_ids() {
        let parent = vec![e(0, 100_000, 65536)];
        let child = vec![e(0, 1000, 10), e(10, 2000, 5)];
        assert_eq!(
            compose(&child, &parent).unwrap(),
            vec![e(0, 101_000, 10), e(10, 102_000, 5)]
        );
    }

    #[test]
    fn a_child_range_across_two_parent_extents_is_split() {
        let parent = vec![e(0, 100_000, 10), e(10, 500_000, 10)];
        assert_eq!(
            compose(&[e(0, 5, 10)], &parent).unwrap(),
            vec![e(0, 100_005, 5), e(5, 500_000, 5)]
        );
    }

    #[test]
    fn a_child_map_outside_the_parents_range_is_refused() {
        let parent = vec![e(0, 100_000, 65536)];
        let err = compose(&[e(0, 65530, 10)], &parent).unwrap_err();
        assert!(err.contains("65536") && err.contains("not mapped"), "{err}");
        assert!(compose(&[e(0, 0, 0)], &parent)
            .unwrap_err()
            .contains("size 0"));
    }

    #[test]
    fn the_default_maps_0_to_65536_where_the_parent_has_them() {
        assert_eq!(default_child(&identity()), vec![e(0, 0, 65536)]);
        let parent = vec![e(0, 100_000, 65536)];
        let d = default_child(&parent);
        assert_eq!(d, vec![e(0, 0, 65536)]);
        assert_eq!(compose(&d, &parent).unwrap(), vec![e(0, 100_000, 65536)]);
        // A parent with a smaller, split map: the child gets what the parent maps, in order.
        let parent = vec![e(1000, 7000, 1), e(0, 5000, 1)];
        assert_eq!(default_child(&parent), vec![e(0, 0, 1), e(1, 1000, 1)]);
    }

    #[test]
    fn proc_maps_parse() {
        assert_eq!(
            parse_proc("         0     100000      65536\n").unwrap(),
            vec![e(0, 100_000, 65536)]
        );
        assert!(parse_proc("0 x 1").is_err());
        assert_eq!(map_one(&[e(0, 100_000, 10)], 3), Some(100_003));
        assert_eq!(map_one(&[e(0, 100_000, 10)], 10), None);
    }
}
