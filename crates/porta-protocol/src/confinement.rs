//! The confinement a file server runs under.

use serde::{Deserialize, Serialize};

/// The confinement the file servers run under, as the keeper's first message tells it
/// and `porta state` shows it (the JSON strings of `servers.json`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Confinement {
    /// Not known yet (no keeper has said): "" in JSON, and left out of a record.
    #[default]
    #[serde(rename = "")]
    Unknown,
    /// An identity-mapped user namespace of its own, without global capabilities.
    #[serde(rename = "userns")]
    Userns,
    /// The initial user namespace (user namespaces unavailable or switched off).
    #[serde(rename = "root")]
    Root,
    /// Not confined (`--no-confine`, for debugging).
    #[serde(rename = "none")]
    None,
}

impl Confinement {
    /// Its name in `porta state` ("" when unknown).
    pub fn as_str(self) -> &'static str {
        match self {
            Confinement::Unknown => "",
            Confinement::Userns => "userns",
            Confinement::Root => "root",
            Confinement::None => "none",
        }
    }

    /// True while no keeper has said which one is in force.
    pub fn is_unknown(&self) -> bool {
        *self == Confinement::Unknown
    }
}

impl std::fmt::Display for Confinement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<&str> for Confinement {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_keeps_the_strings_of_servers_json() {
        for (c, s) in [
            (Confinement::Unknown, "\"\""),
            (Confinement::Userns, "\"userns\""),
            (Confinement::Root, "\"root\""),
            (Confinement::None, "\"none\""),
        ] {
            assert_eq!(serde_json::to_string(&c).unwrap(), s);
            assert_eq!(serde_json::from_str::<Confinement>(s).unwrap(), c);
            assert_eq!(format!("\"{c}\""), s);
        }
        assert!(serde_json::from_str::<Confinement>("\"jail\"").is_err());
        assert_eq!(Confinement::Userns, "userns");
    }
}
