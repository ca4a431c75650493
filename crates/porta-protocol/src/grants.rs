//! Grants: a handle of one container shared live into another (`porta share`), as the
//! state directories of both containers record them (`grants.json`, one per container,
//! holding the grants into it and out of it).
//!
//! The record is what `porta objects` lists and what `porta unshare` finds; the handle
//! itself (an O_PATH descriptor of the source) is held only by the target's supervisor.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::Error;

/// Name of the grants record in a container's state directory.
pub const GRANTS_FILE: &str = "grants.json";

/// Longest grant id.
pub const MAX_ID_LEN: usize = 64;

/// What a grant carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GrantKind {
    /// A directory of the source, served live in the target's file server.
    Directory,
    /// A memory object (a memfd a process of the source holds), served as a file in
    /// the target's file server.
    Memfd,
    /// A listening Unix stream socket of the source, reached in the target at a path
    /// (each connection relayed).
    Socket,
}

/// Which side of a grant a record is kept by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// The grant is served in this container (it is the target).
    In,
    /// The grant gives away a handle of this container (it is the source).
    Out,
}

/// One end of a grant: a container and a path in its tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    /// Container id.
    pub container: String,
    /// Absolute path in the container's tree.
    pub path: String,
}

/// One grant, as one side records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Grant {
    /// The grant's id (unique under a state root).
    pub id: String,
    /// What it carries.
    pub kind: GrantKind,
    /// Which side this record is.
    pub direction: Direction,
    /// Where the handle was taken.
    pub source: Endpoint,
    /// Where it is served.
    pub target: Endpoint,
    /// The target may only read.
    pub read_only: bool,
    /// When it was made (RFC 3339).
    pub created: String,
}

/// Whether `id` may name a grant: 1 to [`MAX_ID_LEN`] characters of `[A-Za-z0-9._-]`, not
/// starting with a dot.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// The grants a container's state directory records (none when there is no record).
pub fn load(state_dir: &Path) -> Result<Vec<Grant>, Error> {
    let path = state_dir.join(GRANTS_FILE);
    let data = match std::fs::read(&path) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(Error::malformed(
                "grants record",
                format!("{}: {e}", path.display()),
            ))
        }
    };
    decode(&data)
}

/// Reads a grants record.
pub fn decode(data: &[u8]) -> Result<Vec<Grant>, Error> {
    let grants: Vec<Grant> = serde_json::from_slice(data)
        .map_err(|e| Error::malformed("grants record", e.to_string()))?;
    if let Some(g) = grants.iter().find(|g| !valid_id(&g.id)) {
        return Err(Error::malformed(
            "grants record",
            format!("grant id {:?} is not valid", g.id),
        ));
    }
    Ok(grants)
}

/// The bytes of a grants record.
pub fn encode(grants: &[Grant]) -> Vec<u8> {
    // Serializing plain strings, booleans and enums cannot fail.
    serde_json::to_vec_pretty(grants).unwrap_or_else(|_| b"[]".to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant() -> Grant {
        Grant {
            id: "g-1".into(),
            kind: GrantKind::Directory,
            direction: Direction::In,
            source: Endpoint {
                container: "a".into(),
                path: "/data".into(),
            },
            target: Endpoint {
                container: "b".into(),
                path: "/mnt/data".into(),
            },
            read_only: true,
            created: "2026-12-07T00:00:00Z".into(),
        }
    }

    #[test]
    fn round_trip() {
        let g = vec![grant()];
        assert_eq!(decode(&encode(&g)).unwrap(), g);
    }

    #[test]
    fn refuses_bad_ids_and_garbage() {
        let mut g = grant();
        g.id = "../x".into();
        assert!(decode(&encode(&[g])).is_err());
        assert!(decode(b"{").is_err());
        assert!(!valid_id(""));
        assert!(!valid_id(".hidden"));
        assert!(valid_id("g-12.a_b"));
    }
}
