//! Mount options of the OCI config, translated to mount(2) flags.

use nix::mount::MsFlags;

/// A config mount's options, parsed.
#[derive(Debug, Clone, PartialEq)]
pub struct MountOptions {
    /// Flags for the mount call itself.
    pub flags: MsFlags,
    /// Flags cleared by an explicit option (rw, suid, dev, exec, …).
    pub cleared: MsFlags,
    /// Propagation changes to apply afterwards (MS_SHARED, MS_SLAVE, …, with MS_REC).
    pub propagation: Vec<MsFlags>,
    /// File-system specific data (`mode=755,size=65536k`, …).
    pub data: Vec<String>,
    /// A bind mount (`bind` or `rbind`).
    pub bind: bool,
    /// A recursive bind mount (`rbind`).
    pub recursive: bool,
}

impl Default for MountOptions {
    fn default() -> Self {
        MountOptions {
            flags: MsFlags::empty(),
            cleared: MsFlags::empty(),
            propagation: Vec::new(),
            data: Vec::new(),
            bind: false,
            recursive: false,
        }
    }
}

impl MountOptions {
    /// Parses the options list of a config mount. Unknown options are passed to the file
    /// system as data, as runc does.
    pub fn parse(options: &[String]) -> MountOptions {
        let mut o = MountOptions::default();
        for opt in options {
            let set = |o: &mut MountOptions, f: MsFlags| o.flags |= f;
            let clear = |o: &mut MountOptions, f: MsFlags| {
                o.flags &= !f;
                o.cleared |= f;
            };
            match opt.as_str() {
                "defaults" => {}
                "ro" => set(&mut o, MsFlags::MS_RDONLY),
                "rw" => clear(&mut o, MsFlags::MS_RDONLY),
                "suid" => clear(&mut o, MsFlags::MS_NOSUID),
                "nosuid" => set(&mut o, MsFlags::MS_NOSUID),
                "dev" => clear(&mut o, MsFlags::MS_NODEV),
                "nodev" => set(&mut o, MsFlags::MS_NODEV),
                "exec" => clear(&mut o, MsFlags::MS_NOEXEC),
                "noexec" => set(&mut o, MsFlags::MS_NOEXEC),
                "sync" => set(&mut o, MsFlags::MS_SYNCHRONOUS),
                "async" => clear(&mut o, MsFlags::MS_SYNCHRONOUS),
                "dirsync" => set(&mut o, MsFlags::MS_DIRSYNC),
                "remount" => set(&mut o, MsFlags::MS_REMOUNT),
                "mand" => set(&mut o, MsFlags::MS_MANDLOCK),
                "nomand" => clear(&mut o, MsFlags::MS_MANDLOCK),
                "atime" => clear(&mut o, MsFlags::MS_NOATIME),
                "noatime" => set(&mut o, MsFlags::MS_NOATIME),
                "diratime" => clear(&mut o, MsFlags::MS_NODIRATIME),
                "nodiratime" => set(&mut o, MsFlags::MS_NODIRATIME),
                "relatime" => set(&mut o, MsFlags::MS_RELATIME),
                "norelatime" => clear(&mut o, MsFlags::MS_RELATIME),
                "strictatime" => set(&mut o, MsFlags::MS_STRICTATIME),
                "nostrictatime" => clear(&mut o, MsFlags::MS_STRICTATIME),
                "bind" => o.bind = true,
                "rbind" => {
                    o.bind = true;
                    o.recursive = true;
                }
                "private" => o.propagation.push(MsFlags::MS_PRIVATE),
                "rprivate" => o.propagation.push(MsFlags::MS_PRIVATE | MsFlags::MS_REC),
                "shared" => o.propagation.push(MsFlags::MS_SHARED),
                "rshared" => o.propagation.push(MsFlags::MS_SHARED | MsFlags::MS_REC),
                "slave" => o.propagation.push(MsFlags::MS_SLAVE),
                "rslave" => o.propagation.push(MsFlags::MS_SLAVE | MsFlags::MS_REC),
                "unbindable" => o.propagation.push(MsFlags::MS_UNBINDABLE),
                "runbindable" => o.propagation.push(MsFlags::MS_UNBINDABLE | MsFlags::MS_REC),
                // Recursive read-only and friends: applied as their plain forms (the kernel
                // applies MS_RDONLY of a bind remount to the top mount only).
                "rro" => set(&mut o, MsFlags::MS_RDONLY),
                "rrw" => clear(&mut o, MsFlags::MS_RDONLY),
                "rnosuid" => set(&mut o, MsFlags::MS_NOSUID),
                "rnodev" => set(&mut o, MsFlags::MS_NODEV),
                "rnoexec" => set(&mut o, MsFlags::MS_NOEXEC),
                other => o.data.push(other.to_string()),
            }
        }
        o
    }

    /// The data string for mount(2), with an SELinux context appended when given.
    pub fn data_with_label(&self, label: Option<&str>) -> Option<String> {
        let mut d = self.data.clone();
        if let Some(l) = label {
            d.push(format!("context=\"{l}\""));
        }
        if d.is_empty() {
            None
        } else {
            Some(d.join(","))
        }
    }
}

/// Parses a `rootfsPropagation` value.
pub fn propagation_flags(p: &str) -> Option<MsFlags> {
    Some(match p {
        "private" => MsFlags::MS_PRIVATE,
        "rprivate" => MsFlags::MS_PRIVATE | MsFlags::MS_REC,
        "slave" => MsFlags::MS_SLAVE,
        "rslave" => MsFlags::MS_SLAVE | MsFlags::MS_REC,
        "shared" => MsFlags::MS_SHARED,
        "rshared" => MsFlags::MS_SHARED | MsFlags::MS_REC,
        "unbindable" => MsFlags::MS_UNBINDABLE,
        "runbindable" => MsFlags::MS_UNBINDABLE | MsFlags::MS_REC,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn parses_flags_data_and_propagation() {
        let o = MountOptions::parse(&s(&[
            "nosuid",
            "noexec",
            "nodev",
            "mode=755",
            "size=65536k",
            "rprivate",
        ]));
        assert!(o
            .flags
            .contains(MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC | MsFlags::MS_NODEV));
        assert_eq!(
            o.data_with_label(None).as_deref(),
            Some("mode=755,size=65536k")
        );
        assert_eq!(o.propagation, vec![MsFlags::MS_PRIVATE | MsFlags::MS_REC]);
        let b = MountOptions::parse(&s(&["rbind", "ro"]));
        assert!(b.bind && b.recursive && b.flags.contains(MsFlags::MS_RDONLY));
        let rw = MountOptions::parse(&s(&["ro", "rw"]));
        assert!(!rw.flags.contains(MsFlags::MS_RDONLY));
        assert_eq!(
            MountOptions::parse(&[])
                .data_with_label(Some("x"))
                .as_deref(),
            Some("context=\"x\"")
        );
        assert_eq!(
            propagation_flags("rslave"),
            Some(MsFlags::MS_SLAVE | MsFlags::MS_REC)
        );
        assert_eq!(propagation_flags("bogus"), None);
    }
}
