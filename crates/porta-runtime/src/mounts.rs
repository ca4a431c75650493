//! Mount options of the OCI config: every option runc, crun and the engines (Podman, Docker,
//! containerd, CRI-O) send, sorted into mount(2) flags, recursive mount attributes applied
//! with `mount_setattr(AT_RECURSIVE)`, propagation, runtime extensions (`tmpcopyup`,
//! `copy-symlink`, `idmap`, …) and file-system data. Options that only an engine gives a
//! meaning to are refused by name rather than handed to the kernel as data.

use nix::mount::MsFlags;
use porta_sys::mount_api;

/// `MS_NOSYMFOLLOW` (Linux 5.10), which nix does not name.
pub const MS_NOSYMFOLLOW: MsFlags = MsFlags::from_bits_retain(libc::MS_NOSYMFOLLOW as _);

/// Recursive mount attributes, applied to a mount and every mount below it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RecursiveAttrs {
    /// Attributes set (`MOUNT_ATTR_*`, the access-time field excluded).
    pub set: u64,
    /// Attributes cleared.
    pub clear: u64,
    /// The access-time value to set (`MOUNT_ATTR_RELATIME`, `_NOATIME` or `_STRICTATIME`).
    pub atime: Option<u64>,
}

impl RecursiveAttrs {
    /// Nothing to apply.
    pub fn is_empty(&self) -> bool {
        self.set == 0 && self.clear == 0 && self.atime.is_none()
    }

    /// (attr_set, attr_clr) for mount_setattr(2).
    pub fn set_clr(&self) -> (u64, u64) {
        match self.atime {
            Some(a) => (self.set | a, self.clear | mount_api::MOUNT_ATTR__ATIME),
            None => (self.set, self.clear),
        }
    }

    fn on(&mut self, a: u64) {
        self.set |= a;
        self.clear &= !a;
    }

    fn off(&mut self, a: u64) {
        self.clear |= a;
        self.set &= !a;
    }
}

/// An idmapped mount was asked for (`idmap`, `ridmap`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Idmap {
    /// `ridmap`: every mount of a recursive bind is idmapped, not only the top one.
    pub recursive: bool,
}

/// An option Porta refuses, with the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OptionError {
    /// The option as given.
    pub option: String,
    /// Why it is refused.
    pub msg: String,
}

impl std::fmt::Display for OptionError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "option {:?}: {}", self.option, self.msg)
    }
}

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
    /// Recursive attributes (`rro`, `rnosuid`, `rnoatime`, …), applied after the mount.
    pub rec_attrs: RecursiveAttrs,
    /// `tmpcopyup`: a tmpfs starts with what the image has at its destination.
    pub tmpcopyup: bool,
    /// `copy-symlink`: a bind source that is a symlink is copied as a symlink.
    pub copy_symlink: bool,
    /// `idmap` / `ridmap`.
    pub idmap: Option<Idmap>,
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
            rec_attrs: RecursiveAttrs::default(),
            tmpcopyup: false,
            copy_symlink: false,
            idmap: None,
        }
    }
}

/// What an option names, one entry of the table below.
#[derive(Clone, Copy)]
enum Opt {
    /// Sets mount(2) flags.
    Set(MsFlags),
    /// Clears mount(2) flags.
    Clear(MsFlags),
    /// A recursive attribute set.
    RecSet(u64),
    /// A recursive attribute cleared.
    RecClear(u64),
    /// A recursive access-time value.
    RecAtime(u64),
    /// A propagation type.
    Propagation(MsFlags),
    /// `bind`, `rbind`.
    Bind { recursive: bool },
    /// `tmpcopyup` (true), `notmpcopyup` (false).
    Copyup(bool),
    /// `copy-symlink`.
    CopySymlink,
    /// `idmap`, `ridmap`.
    Idmap { recursive: bool },
    /// Accepted, no effect (`defaults`).
    Nothing,
    /// Refused with this reason.
    Refused(&'static str),
}

const ENGINE_ONLY: &str = "a volume option the engine applies itself (relabel, chown or \
     overlay); it is not a mount option and must not reach the runtime";

/// Every option with a meaning of its own: runc's mountFlags, recAttrFlags,
/// mountPropagationMapping and extensionFlags, crun's options, and the engines' own.
fn lookup(opt: &str) -> Option<Opt> {
    use MsFlags as F;
    use Opt::*;
    Some(match opt {
        "defaults" => Nothing,
        "ro" => Set(F::MS_RDONLY),
        "rw" => Clear(F::MS_RDONLY),
        "nosuid" => Set(F::MS_NOSUID),
        "suid" => Clear(F::MS_NOSUID),
        "nodev" => Set(F::MS_NODEV),
        "dev" => Clear(F::MS_NODEV),
        "noexec" => Set(F::MS_NOEXEC),
        "exec" => Clear(F::MS_NOEXEC),
        "sync" => Set(F::MS_SYNCHRONOUS),
        "async" => Clear(F::MS_SYNCHRONOUS),
        "dirsync" => Set(F::MS_DIRSYNC),
        "remount" => Set(F::MS_REMOUNT),
        "mand" => Set(F::MS_MANDLOCK),
        "nomand" => Clear(F::MS_MANDLOCK),
        "atime" => Clear(F::MS_NOATIME),
        "noatime" => Set(F::MS_NOATIME),
        "diratime" => Clear(F::MS_NODIRATIME),
        "nodiratime" => Set(F::MS_NODIRATIME),
        "relatime" => Set(F::MS_RELATIME),
        "norelatime" => Clear(F::MS_RELATIME),
        "strictatime" => Set(F::MS_STRICTATIME),
        "nostrictatime" => Clear(F::MS_STRICTATIME),
        "acl" => Set(F::MS_POSIXACL),
        "noacl" => Clear(F::MS_POSIXACL),
        "iversion" => Set(F::MS_I_VERSION),
        "noiversion" => Clear(F::MS_I_VERSION),
        "lazytime" => Set(F::MS_LAZYTIME),
        "nolazytime" => Clear(F::MS_LAZYTIME),
        "silent" => Set(F::MS_SILENT),
        "loud" => Clear(F::MS_SILENT),
        "nosymfollow" => Set(MS_NOSYMFOLLOW),
        "symfollow" => Clear(MS_NOSYMFOLLOW),
        "bind" => Bind { recursive: false },
        "rbind" => Bind { recursive: true },
        "private" => Propagation(F::MS_PRIVATE),
        "rprivate" => Propagation(F::MS_PRIVATE | F::MS_REC),
        "shared" => Propagation(F::MS_SHARED),
        "rshared" => Propagation(F::MS_SHARED | F::MS_REC),
        "slave" => Propagation(F::MS_SLAVE),
        "rslave" => Propagation(F::MS_SLAVE | F::MS_REC),
        "unbindable" => Propagation(F::MS_UNBINDABLE),
        "runbindable" => Propagation(F::MS_UNBINDABLE | F::MS_REC),
        "rro" => RecSet(mount_api::MOUNT_ATTR_RDONLY),
        "rrw" => RecClear(mount_api::MOUNT_ATTR_RDONLY),
        "rnosuid" => RecSet(mount_api::MOUNT_ATTR_NOSUID),
        "rsuid" => RecClear(mount_api::MOUNT_ATTR_NOSUID),
        "rnodev" => RecSet(mount_api::MOUNT_ATTR_NODEV),
        "rdev" => RecClear(mount_api::MOUNT_ATTR_NODEV),
        "rnoexec" => RecSet(mount_api::MOUNT_ATTR_NOEXEC),
        "rexec" => RecClear(mount_api::MOUNT_ATTR_NOEXEC),
        "rnodiratime" => RecSet(mount_api::MOUNT_ATTR_NODIRATIME),
        "rdiratime" => RecClear(mount_api::MOUNT_ATTR_NODIRATIME),
        "rnosymfollow" => RecSet(mount_api::MOUNT_ATTR_NOSYMFOLLOW),
        "rsymfollow" => RecClear(mount_api::MOUNT_ATTR_NOSYMFOLLOW),
        "rnoatime" => RecAtime(mount_api::MOUNT_ATTR_NOATIME),
        "rstrictatime" => RecAtime(mount_api::MOUNT_ATTR_STRICTATIME),
        // The kernel's default access time is relatime: "atime", "no strict atime" and
        // "no relatime" without strictatime all come down to it, as with mount(2).
        "rrelatime" | "ratime" | "rnorelatime" | "rnostrictatime" => {
            RecAtime(mount_api::MOUNT_ATTR_RELATIME)
        }
        "tmpcopyup" => Copyup(true),
        "notmpcopyup" => Copyup(false),
        "copy-symlink" => CopySymlink,
        "idmap" => Idmap { recursive: false },
        "ridmap" => Idmap { recursive: true },
        "z" | "Z" | "U" | "O" => Refused(ENGINE_ONLY),
        "src-nofollow" | "dest-nofollow" => Refused(
            "crun's option to mount a symlink itself is not supported (neither runc nor \
             Porta mounts a symlink); use copy-symlink to copy a symlink source",
        ),
        _ if opt.starts_with("idmap=") || opt.starts_with("ridmap=") => Refused(
            "mappings inside the option are not supported; give the mount uidMappings and \
             gidMappings (OCI runtime spec 1.1) with a plain \"idmap\"",
        ),
        _ => return None,
    })
}

impl MountOptions {
    /// Parses the options list of a config mount: later options override earlier ones.
    /// Options without a meaning of their own are file-system data, as with runc.
    pub fn parse(options: &[String]) -> Result<MountOptions, OptionError> {
        let mut o = MountOptions::default();
        for opt in options {
            let refuse = |msg: &str| OptionError {
                option: opt.clone(),
                msg: msg.to_string(),
            };
            if opt.is_empty() {
                return Err(refuse("an empty option"));
            }
            if opt.contains(',') {
                return Err(refuse("one option per list entry (this one holds a comma)"));
            }
            let Some(kind) = lookup(opt) else {
                o.data.push(opt.clone());
                continue;
            };
            match kind {
                // insert/remove keep bits nix does not name (MS_NOSYMFOLLOW), which `!` drops.
                Opt::Set(f) => {
                    o.flags.insert(f);
                    o.cleared.remove(f);
                }
                Opt::Clear(f) => {
                    o.flags.remove(f);
                    o.cleared.insert(f);
                }
                Opt::RecSet(a) => o.rec_attrs.on(a),
                Opt::RecClear(a) => o.rec_attrs.off(a),
                Opt::RecAtime(a) => o.rec_attrs.atime = Some(a),
                Opt::Propagation(p) => o.propagation.push(p),
                Opt::Bind { recursive } => {
                    o.bind = true;
                    o.recursive |= recursive;
                }
                Opt::Copyup(on) => o.tmpcopyup = on,
                Opt::CopySymlink => o.copy_symlink = true,
                Opt::Idmap { recursive } => o.idmap = Some(Idmap { recursive }),
                Opt::Nothing => {}
                Opt::Refused(why) => return Err(refuse(why)),
            }
        }
        Ok(o)
    }

    /// Checks the options against the mount's type (`bind` for a bind mount).
    pub fn check_for_type(&self, typ: &str) -> Result<(), OptionError> {
        let bind = self.bind || typ == "bind";
        if self.tmpcopyup && typ != "tmpfs" {
            return Err(OptionError {
                option: "tmpcopyup".into(),
                msg: format!("only a tmpfs mount can start with the image's content, not {typ}"),
            });
        }
        if let Some(i) = self.idmap {
            if !bind {
                return Err(OptionError {
                    option: if i.recursive { "ridmap" } else { "idmap" }.into(),
                    msg: format!("only a bind mount can be idmapped, not {typ}"),
                });
            }
        }
        if self.copy_symlink && !bind {
            return Err(OptionError {
                option: "copy-symlink".into(),
                msg: format!("only applies to a bind mount, not {typ}"),
            });
        }
        Ok(())
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

    /// Whether the data sets the mode of a tmpfs root (`mode=`).
    pub fn has_mode(&self) -> bool {
        self.data.iter().any(|d| d.starts_with("mode="))
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

    fn p(v: &[&str]) -> MountOptions {
        MountOptions::parse(&s(v)).unwrap()
    }

    #[test]
    fn parses_flags_data_and_propagation() {
        let o = p(&[
            "nosuid",
            "noexec",
            "nodev",
            "mode=755",
            "size=65536k",
            "rprivate",
        ]);
        assert!(o
            .flags
            .contains(MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC | MsFlags::MS_NODEV));
        assert_eq!(
            o.data_with_label(None).as_deref(),
            Some("mode=755,size=65536k")
        );
        assert!(o.has_mode());
        assert_eq!(o.propagation, vec![MsFlags::MS_PRIVATE | MsFlags::MS_REC]);
        let b = p(&["rbind", "ro"]);
        assert!(b.bind && b.recursive && b.flags.contains(MsFlags::MS_RDONLY));
        let rw = p(&["ro", "rw"]);
        assert!(!rw.flags.contains(MsFlags::MS_RDONLY));
        assert_eq!(
            p(&[]).data_with_label(Some("x")).as_deref(),
            Some("context=\"x\"")
        );
        assert_eq!(
            propagation_flags("rslave"),
            Some(MsFlags::MS_SLAVE | MsFlags::MS_REC)
        );
        assert_eq!(propagation_flags("bogus"), None);
    }

    #[test]
    fn every_mount_flag_option() {
        use MsFlags as F;
        let table: &[(&str, MsFlags, bool)] = &[
            ("ro", F::MS_RDONLY, true),
            ("rw", F::MS_RDONLY, false),
            ("nosuid", F::MS_NOSUID, true),
            ("suid", F::MS_NOSUID, false),
            ("nodev", F::MS_NODEV, true),
            ("dev", F::MS_NODEV, false),
            ("noexec", F::MS_NOEXEC, true),
            ("exec", F::MS_NOEXEC, false),
            ("sync", F::MS_SYNCHRONOUS, true),
            ("async", F::MS_SYNCHRONOUS, false),
            ("dirsync", F::MS_DIRSYNC, true),
            ("remount", F::MS_REMOUNT, true),
            ("mand", F::MS_MANDLOCK, true),
            ("nomand", F::MS_MANDLOCK, false),
            ("noatime", F::MS_NOATIME, true),
            ("atime", F::MS_NOATIME, false),
            ("nodiratime", F::MS_NODIRATIME, true),
            ("diratime", F::MS_NODIRATIME, false),
            ("relatime", F::MS_RELATIME, true),
            ("norelatime", F::MS_RELATIME, false),
            ("strictatime", F::MS_STRICTATIME, true),
            ("nostrictatime", F::MS_STRICTATIME, false),
            ("acl", F::MS_POSIXACL, true),
            ("noacl", F::MS_POSIXACL, false),
            ("iversion", F::MS_I_VERSION, true),
            ("noiversion", F::MS_I_VERSION, false),
            ("lazytime", F::MS_LAZYTIME, true),
            ("nolazytime", F::MS_LAZYTIME, false),
            ("silent", F::MS_SILENT, true),
            ("loud", F::MS_SILENT, false),
            ("nosymfollow", MS_NOSYMFOLLOW, true),
            ("symfollow", MS_NOSYMFOLLOW, false),
        ];
        for (opt, flag, set) in table {
            let o = p(&[opt]);
            assert!(o.data.is_empty(), "{opt} became data");
            assert!(o.rec_attrs.is_empty(), "{opt} became a recursive attribute");
            if *set {
                assert_eq!(o.flags, *flag, "{opt}");
                assert!(o.cleared.is_empty(), "{opt}");
            } else {
                assert_eq!(o.cleared, *flag, "{opt}");
                assert!(o.flags.is_empty(), "{opt}");
                // and it undoes the setting option before it
                let mut both = vec![table.iter().find(|t| t.1 == *flag && t.2).unwrap().0];
                both.push(opt);
                assert!(!p(&both).flags.contains(*flag), "{both:?}");
            }
        }
        assert_eq!(p(&["defaults"]), MountOptions::default());
    }

    #[test]
    fn every_recursive_attribute() {
        let set: &[(&str, u64)] = &[
            ("rro", mount_api::MOUNT_ATTR_RDONLY),
            ("rnosuid", mount_api::MOUNT_ATTR_NOSUID),
            ("rnodev", mount_api::MOUNT_ATTR_NODEV),
            ("rnoexec", mount_api::MOUNT_ATTR_NOEXEC),
            ("rnodiratime", mount_api::MOUNT_ATTR_NODIRATIME),
            ("rnosymfollow", mount_api::MOUNT_ATTR_NOSYMFOLLOW),
        ];
        let clear: &[(&str, u64)] = &[
            ("rrw", mount_api::MOUNT_ATTR_RDONLY),
            ("rsuid", mount_api::MOUNT_ATTR_NOSUID),
            ("rdev", mount_api::MOUNT_ATTR_NODEV),
            ("rexec", mount_api::MOUNT_ATTR_NOEXEC),
            ("rdiratime", mount_api::MOUNT_ATTR_NODIRATIME),
            ("rsymfollow", mount_api::MOUNT_ATTR_NOSYMFOLLOW),
        ];
        for (opt, a) in set {
            let o = p(&[opt]);
            assert_eq!(o.rec_attrs.set_clr(), (*a, 0), "{opt}");
            assert!(o.flags.is_empty() && o.data.is_empty(), "{opt}");
        }
        for (opt, a) in clear {
            let o = p(&[opt]);
            assert_eq!(o.rec_attrs.set_clr(), (0, *a), "{opt}");
            assert!(o.flags.is_empty() && o.data.is_empty(), "{opt}");
        }
        // the last of a pair wins
        assert_eq!(
            p(&["rro", "rrw"]).rec_attrs.set_clr(),
            (0, mount_api::MOUNT_ATTR_RDONLY)
        );
        assert_eq!(
            p(&["rrw", "rro"]).rec_attrs.set_clr(),
            (mount_api::MOUNT_ATTR_RDONLY, 0)
        );
        for (opt, v) in [
            ("rnoatime", mount_api::MOUNT_ATTR_NOATIME),
            ("rstrictatime", mount_api::MOUNT_ATTR_STRICTATIME),
            ("rrelatime", mount_api::MOUNT_ATTR_RELATIME),
            ("ratime", mount_api::MOUNT_ATTR_RELATIME),
            ("rnorelatime", mount_api::MOUNT_ATTR_RELATIME),
            ("rnostrictatime", mount_api::MOUNT_ATTR_RELATIME),
        ] {
            let o = p(&[opt]);
            assert_eq!(
                o.rec_attrs.set_clr(),
                (v, mount_api::MOUNT_ATTR__ATIME),
                "{opt}"
            );
        }
        assert_eq!(
            p(&["rnoatime", "rro", "rnosuid"]).rec_attrs.set_clr(),
            (
                mount_api::MOUNT_ATTR_NOATIME
                    | mount_api::MOUNT_ATTR_RDONLY
                    | mount_api::MOUNT_ATTR_NOSUID,
                mount_api::MOUNT_ATTR__ATIME
            )
        );
    }

    #[test]
    fn propagation_bind_and_extensions() {
        for (opt, f) in [
            ("private", MsFlags::MS_PRIVATE),
            ("shared", MsFlags::MS_SHARED),
            ("slave", MsFlags::MS_SLAVE),
            ("unbindable", MsFlags::MS_UNBINDABLE),
        ] {
            assert_eq!(p(&[opt]).propagation, vec![f]);
            assert_eq!(
                p(&[&format!("r{opt}")]).propagation,
                vec![f | MsFlags::MS_REC]
            );
        }
        let b = p(&["bind"]);
        assert!(b.bind && !b.recursive);
        let c = p(&["tmpcopyup"]);
        assert!(c.tmpcopyup && c.data.is_empty());
        assert!(!p(&["tmpcopyup", "notmpcopyup"]).tmpcopyup);
        assert!(p(&["notmpcopyup", "tmpcopyup"]).tmpcopyup);
        let l = p(&["copy-symlink"]);
        assert!(l.copy_symlink && l.data.is_empty());
        assert_eq!(p(&["idmap"]).idmap, Some(Idmap { recursive: false }));
        assert_eq!(p(&["ridmap"]).idmap, Some(Idmap { recursive: true }));
        assert!(p(&["idmap"]).data.is_empty());
    }

    #[test]
    fn refused_options_name_themselves() {
        for opt in [
            "z",
            "Z",
            "U",
            "O",
            "idmap=uids=0-1-10",
            "ridmap=gids=0-1-1",
            "",
        ] {
            let e = MountOptions::parse(&s(&["rw", opt])).unwrap_err();
            assert_eq!(e.option, opt);
            assert!(
                e.to_string().starts_with(&format!("option {opt:?}: ")),
                "{e}"
            );
        }
        let e = MountOptions::parse(&s(&["nosuid,nodev"])).unwrap_err();
        assert!(e.msg.contains("comma"), "{e}");
    }

    #[test]
    fn options_checked_against_the_type() {
        assert!(p(&["tmpcopyup"]).check_for_type("tmpfs").is_ok());
        let e = p(&["tmpcopyup"]).check_for_type("bind").unwrap_err();
        assert_eq!(e.option, "tmpcopyup");
        assert!(p(&["notmpcopyup"]).check_for_type("bind").is_ok());
        assert!(p(&["rbind", "idmap"]).check_for_type("none").is_ok());
        assert!(p(&["idmap"]).check_for_type("bind").is_ok());
        assert_eq!(
            p(&["ridmap"]).check_for_type("tmpfs").unwrap_err().option,
            "ridmap"
        );
        assert_eq!(
            p(&["copy-symlink"])
                .check_for_type("proc")
                .unwrap_err()
                .option,
            "copy-symlink"
        );
    }
}
