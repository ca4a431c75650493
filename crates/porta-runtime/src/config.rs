//! Loading and checking a bundle's config.json, and Porta's own annotations.

use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxNamespaceType, Spec};

use crate::error::{Error, Result};
pub use porta_supervisor::protocol::keeper::Transport;

/// Annotation choosing how the container's root is served: `kernel` turns the file server off.
pub const ANNOTATION_FS: &str = "run.porta.fs";
/// Annotation turning FUSE passthrough off (`off`): the strict mode.
pub const ANNOTATION_PASSTHROUGH: &str = "run.porta.fs.passthrough";
/// Annotation switching the watcher of changes made from the host off (`off`).
pub const ANNOTATION_HOST_CHANGES: &str = "run.porta.fs.host-changes";

/// Annotation choosing how the file server takes requests from the kernel: `dev`
/// (/dev/fuse), `uring` (FUSE over io_uring, required) or `auto` (the default).
pub const ANNOTATION_TRANSPORT: &str = "run.porta.fs.transport";
/// Annotation switching the container's API socket on (`on`) or off (`off`, the default).
pub const ANNOTATION_API: &str = porta_supervisor::protocol::api::ANNOTATION;
/// The kernel's switch for FUSE over io_uring (Y or N; absent: not built in).
pub const ENABLE_URING: &str = "/sys/module/fuse/parameters/enable_uring";

/// A bundle: its directory, its parsed config and the absolute root path.
pub struct Bundle {
    /// Absolute bundle directory.
    pub dir: PathBuf,
    /// The parsed config.
    pub spec: Spec,
    /// Absolute path of the root file system.
    pub rootfs: PathBuf,
}

/// Parses config.json bytes, naming the field at fault on error.
pub fn parse_spec(data: &[u8], path: &Path) -> Result<Spec> {
    let de = &mut serde_json::Deserializer::from_slice(data);
    let spec: Spec = serde_path_to_error::deserialize(de).map_err(|e| {
        let field = e.path().to_string();
        let inner = e.into_inner();
        let msg = if field == "." || field.is_empty() {
            inner.to_string()
        } else {
            format!("field {field}: {inner}")
        };
        Error::Config {
            path: path.to_path_buf(),
            msg,
        }
    })?;
    Ok(spec)
}

impl Bundle {
    /// Loads and checks the bundle in `dir`.
    pub fn load(dir: &Path) -> Result<Bundle> {
        let dir = std::fs::canonicalize(dir).map_err(|e| Error::Config {
            path: dir.to_path_buf(),
            msg: format!("bundle directory: {e}"),
        })?;
        let path = dir.join("config.json");
        let data = std::fs::read(&path).map_err(|e| Error::Config {
            path: path.clone(),
            msg: e.to_string(),
        })?;
        let spec = parse_spec(&data, &path)?;
        let rootfs = validate(&spec, &dir)?;
        Ok(Bundle { dir, spec, rootfs })
    }
}

/// Checks a spec for what Porta needs and returns the absolute root path.
pub fn validate(spec: &Spec, bundle: &Path) -> Result<PathBuf> {
    let version = spec.version();
    if !version.starts_with("1.") {
        return Err(Error::field(
            "ociVersion",
            format!("{version:?} is not a 1.x version of the runtime spec"),
        ));
    }
    let root = spec
        .root()
        .as_ref()
        .ok_or_else(|| Error::field("root", "missing"))?;
    let rootfs = if root.path().is_absolute() {
        root.path().clone()
    } else {
        bundle.join(root.path())
    };
    let meta = std::fs::metadata(&rootfs)
        .map_err(|e| Error::field("root.path", format!("{}: {e}", rootfs.display())))?;
    if !meta.is_dir() {
        return Err(Error::field(
            "root.path",
            format!("{} is not a directory", rootfs.display()),
        ));
    }
    // Mounts need the real path (a symlinked root would be replaced, not mounted on).
    let rootfs = std::fs::canonicalize(&rootfs)
        .map_err(|e| Error::field("root.path", format!("{}: {e}", rootfs.display())))?;
    let process = spec
        .process()
        .as_ref()
        .ok_or_else(|| Error::field("process", "missing"))?;
    validate_process(process)?;
    let linux = spec
        .linux()
        .as_ref()
        .ok_or_else(|| Error::field("linux", "missing"))?;
    let mut seen = Vec::new();
    for (i, ns) in linux.namespaces().iter().flatten().enumerate() {
        if seen.contains(&ns.typ()) {
            return Err(Error::field(
                format!("linux.namespaces[{i}]"),
                format!("{:?} namespace given twice", ns.typ()),
            ));
        }
        seen.push(ns.typ());
        if let Some(p) = ns.path() {
            if !p.is_absolute() {
                return Err(Error::field(
                    format!("linux.namespaces[{i}].path"),
                    format!("{} is not absolute", p.display()),
                ));
            }
        }
    }
    let has = |t: LinuxNamespaceType| linux.namespaces().iter().flatten().any(|n| n.typ() == t);
    let new_user = linux
        .namespaces()
        .iter()
        .flatten()
        .any(|n| n.typ() == LinuxNamespaceType::User && n.path().is_none());
    if new_user && linux.uid_mappings().as_ref().is_none_or(|m| m.is_empty()) {
        return Err(Error::field(
            "linux.uidMappings",
            "a new user namespace needs uid mappings",
        ));
    }
    if new_user && linux.gid_mappings().as_ref().is_none_or(|m| m.is_empty()) {
        return Err(Error::field(
            "linux.gidMappings",
            "a new user namespace needs gid mappings",
        ));
    }
    if !has(LinuxNamespaceType::User)
        && (linux.uid_mappings().as_ref().is_some_and(|m| !m.is_empty()))
    {
        return Err(Error::field(
            "linux.uidMappings",
            "mappings given without a user namespace",
        ));
    }
    if spec.hostname().as_ref().is_some_and(|h| !h.is_empty()) && !has(LinuxNamespaceType::Uts) {
        return Err(Error::field(
            "hostname",
            "setting the hostname needs a new uts namespace",
        ));
    }
    if spec.domainname().as_ref().is_some_and(|h| !h.is_empty()) && !has(LinuxNamespaceType::Uts) {
        return Err(Error::field(
            "domainname",
            "setting the domain name needs a new uts namespace",
        ));
    }
    if !has(LinuxNamespaceType::Mount) {
        // As runc: paths cannot be masked or made read-only in the host's mount namespace.
        for (field, list) in [
            ("linux.maskedPaths", linux.masked_paths()),
            ("linux.readonlyPaths", linux.readonly_paths()),
        ] {
            if list.as_ref().is_some_and(|l| !l.is_empty()) {
                return Err(Error::field(
                    field,
                    "unable to restrict sys entries without a private mount namespace \
                     (add {\"type\": \"mount\"} to linux.namespaces or remove the list)",
                ));
            }
        }
    }
    for (i, m) in spec.mounts().iter().flatten().enumerate() {
        if !m.destination().is_absolute() {
            return Err(Error::field(
                format!("mounts[{i}].destination"),
                format!("{} is not absolute", m.destination().display()),
            ));
        }
        // Options and idmapped-mount fields are checked here, before anything is made.
        let name = || format!("mounts[{i}] ({})", m.destination().display());
        let opts = crate::mounts::MountOptions::parse(m.options().as_deref().unwrap_or(&[]))
            .map_err(|e| Error::field(name(), e.to_string()))?;
        let typ = m
            .typ()
            .as_deref()
            .unwrap_or(if opts.bind { "bind" } else { "none" });
        opts.check_for_type(typ)
            .map_err(|e| Error::field(name(), e.to_string()))?;
        let (u, g) = (
            m.uid_mappings().as_ref().is_some_and(|v| !v.is_empty()),
            m.gid_mappings().as_ref().is_some_and(|v| !v.is_empty()),
        );
        if u != g {
            return Err(Error::field(
                format!(
                    "mounts[{i}].{}",
                    if u { "gidMappings" } else { "uidMappings" }
                ),
                "an idmapped mount needs both uidMappings and gidMappings",
            ));
        }
        if u && !(opts.bind || typ == "bind") {
            return Err(Error::field(
                format!("mounts[{i}].uidMappings"),
                format!("only a bind mount can be idmapped, not {typ}"),
            ));
        }
    }
    if let Some(prop) = linux.rootfs_propagation() {
        if !matches!(
            prop.as_str(),
            "" | "private"
                | "rprivate"
                | "slave"
                | "rslave"
                | "shared"
                | "rshared"
                | "unbindable"
                | "runbindable"
        ) {
            return Err(Error::field(
                "linux.rootfsPropagation",
                format!("unknown propagation {prop:?}"),
            ));
        }
    }
    if let Some(fs) = spec
        .annotations()
        .as_ref()
        .and_then(|a| a.get(ANNOTATION_FS))
    {
        if !matches!(fs.as_str(), "kernel" | "fuse" | "server" | "") {
            return Err(Error::field(
                format!("annotations.{ANNOTATION_FS}"),
                format!("{fs:?}: expected \"kernel\" or \"server\""),
            ));
        }
    }
    on_off(spec, ANNOTATION_HOST_CHANGES)?;
    on_off(spec, ANNOTATION_API)?;
    transport_checked(spec, Path::new(ENABLE_URING))?;
    if let Some(p) = on_off(spec, ANNOTATION_PASSTHROUGH)? {
        if p && !nix::unistd::geteuid().is_root() {
            return Err(Error::field(
                format!("annotations.{ANNOTATION_PASSTHROUGH}"),
                "FUSE passthrough needs porta to run as root (the kernel registers backing \
                 files only for CAP_SYS_ADMIN in the host's user namespace); a rootless \
                 container's file server runs the strict mode (remove the annotation or set \
                 it to \"off\")",
            ));
        }
    }
    Ok(rootfs)
}

/// Whether the container gets an API socket (annotation `run.porta.api=on`; validated by
/// [`validate`]).
pub fn api_on(spec: &Spec) -> bool {
    spec.annotations()
        .as_ref()
        .and_then(|a| a.get(ANNOTATION_API))
        .map(String::as_str)
        == Some("on")
}

/// Appends the bind mount of the API socket (`<state dir>/api.sock` on the host) at
/// `/run/porta/api.sock` to the config's mounts: the last mount made.
pub fn add_api_mount(spec: &mut Spec, state_dir: &Path) -> Result<()> {
    use porta_supervisor::protocol::api;
    let m = oci_spec::runtime::MountBuilder::default()
        .destination(api::CONTAINER_PATH)
        .typ("bind")
        .source(state_dir.join(api::SOCKET_NAME))
        .options(vec![
            "bind".to_string(),
            "nosuid".to_string(),
            "nodev".to_string(),
            "noexec".to_string(),
        ])
        .build()
        .map_err(|e| Error::field("mounts", format!("the API socket's mount: {e}")))?;
    let mut mounts = spec.mounts().clone().unwrap_or_default();
    mounts.push(m);
    spec.set_mounts(Some(mounts));
    Ok(())
}

/// The value of an `on`/`off` annotation (None when absent); any other value is an error
/// naming the annotation.
fn on_off(spec: &Spec, name: &str) -> Result<Option<bool>> {
    let Some(v) = spec.annotations().as_ref().and_then(|a| a.get(name)) else {
        return Ok(None);
    };
    match v.as_str() {
        "on" => Ok(Some(true)),
        "off" => Ok(Some(false)),
        _ => Err(Error::field(
            format!("annotations.{name}"),
            format!("{v:?}: expected \"on\" or \"off\""),
        )),
    }
}

/// Checks the parts of a process description every runtime needs.
pub fn validate_process(process: &oci_spec::runtime::Process) -> Result<()> {
    match process.args() {
        Some(a) if !a.is_empty() && !a[0].is_empty() => {}
        _ => {
            return Err(Error::field(
                "process.args",
                "missing or empty: nothing to run",
            ))
        }
    }
    if !process.cwd().is_absolute() {
        return Err(Error::field(
            "process.cwd",
            format!("{} is not absolute", process.cwd().display()),
        ));
    }
    for (i, e) in process.env().iter().flatten().enumerate() {
        if !e.contains('=') {
            return Err(Error::field(
                format!("process.env[{i}]"),
                format!("{e:?} is not NAME=VALUE"),
            ));
        }
    }
    Ok(())
}

/// How the container's root is served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootMode {
    /// Mounted by the kernel, as runc does (`run.porta.fs=kernel`).
    Kernel,
    /// Served by the container's own file server.
    Served {
        /// FUSE passthrough of file data (off in strict mode).
        passthrough: bool,
        /// The FUSE mount belongs to the container's user namespace (porta runs rootless).
        rootless: bool,
    },
}

/// The root mode a spec asks for. `host_root`: porta runs as root on the host (else the
/// container is rootless: its file server mounts from inside the container's user
/// namespace, without passthrough). `dev_fuse`: /dev/fuse can be opened by this user.
/// Rootless without a usable /dev/fuse, the default is the kernel's root (as with runc);
/// asking for the server explicitly then is an error naming the annotation.
///
/// A container without a mount namespace of its own gets the kernel's root: the file
/// server's mount would have to be attached in the caller's (the host's) mount table,
/// where every process of the host would see it and use it. Asking for the server then
/// is an error naming the annotation.
pub fn root_mode(spec: &Spec, host_root: bool, dev_fuse: bool) -> Result<RootMode> {
    let ann = spec.annotations().as_ref();
    let fs = ann.and_then(|a| a.get(ANNOTATION_FS)).map(String::as_str);
    if fs == Some("kernel") {
        return Ok(RootMode::Kernel);
    }
    if !has_mount_namespace(spec) {
        if matches!(fs, Some("server" | "fuse")) {
            return Err(Error::field(
                format!("annotations.{ANNOTATION_FS}"),
                "the container has no mount namespace of its own: its file server's mount \
                 would be attached in the host's mount table; add {\"type\": \"mount\"} to \
                 linux.namespaces, or remove the annotation or set it to \"kernel\"",
            ));
        }
        return Ok(RootMode::Kernel);
    }
    if !dev_fuse {
        if matches!(fs, Some("server" | "fuse")) {
            return Err(Error::field(
                format!("annotations.{ANNOTATION_FS}"),
                "porta runs rootless and cannot open /dev/fuse: a rootless file server needs \
                 it readable and writable by this user (most distributions ship it mode \
                 0666); remove the annotation or set it to \"kernel\"",
            ));
        }
        return Ok(RootMode::Kernel);
    }
    let passthrough = host_root
        && ann
            .and_then(|a| a.get(ANNOTATION_PASSTHROUGH))
            .map(String::as_str)
            != Some("off");
    Ok(RootMode::Served {
        passthrough,
        rootless: !host_root,
    })
}

/// Whether the config gives the container a mount namespace (new or joined by path).
pub fn has_mount_namespace(spec: &Spec) -> bool {
    spec.linux()
        .as_ref()
        .and_then(|l| l.namespaces().as_ref())
        .is_some_and(|ns| ns.iter().any(|n| n.typ() == LinuxNamespaceType::Mount))
}

/// Whether the file server invalidates the kernel's cache of changes made from the host
/// (annotation `run.porta.fs.host-changes`, default on; validated by [`validate`]).
pub fn host_changes(spec: &Spec) -> bool {
    spec.annotations()
        .as_ref()
        .and_then(|a| a.get(ANNOTATION_HOST_CHANGES))
        .map(String::as_str)
        != Some("off")
}

/// How the file server takes requests from the kernel (annotation
/// `run.porta.fs.transport`; validated by [`validate`]). `auto` (and no annotation) is
/// /dev/fuse: on the kernels Porta knows (up to 6.18) a server killed while it has ring
/// entries armed makes the kernel fail requests handed to them, so only /dev/fuse keeps
/// a restart transparent (docs/file-server.md, "FUSE over io_uring").
pub fn transport(spec: &Spec) -> Transport {
    match spec
        .annotations()
        .as_ref()
        .and_then(|a| a.get(ANNOTATION_TRANSPORT))
        .and_then(|v| Transport::parse(v))
    {
        Some(Transport::Uring) => Transport::Uring,
        Some(Transport::Auto | Transport::Dev) | None => Transport::Dev,
    }
}

/// The transport annotation checked: a known value, and `uring` only where the kernel
/// allows FUSE over io_uring (`switch`: the kernel's enable_uring parameter).
fn transport_checked(spec: &Spec, switch: &Path) -> Result<Transport> {
    let Some(v) = spec
        .annotations()
        .as_ref()
        .and_then(|a| a.get(ANNOTATION_TRANSPORT))
    else {
        return Ok(Transport::default());
    };
    let field = || format!("annotations.{ANNOTATION_TRANSPORT}");
    let t = Transport::parse(v).ok_or_else(|| {
        Error::field(
            field(),
            format!("{v:?}: expected \"auto\", \"uring\" or \"dev\""),
        )
    })?;
    if t == Transport::Uring {
        match std::fs::read_to_string(switch) {
            Ok(s) if s.trim() == "Y" => {}
            Ok(s) => {
                return Err(Error::field(
                    field(),
                    format!(
                        "\"uring\": the kernel does not allow FUSE over io_uring ({} is {}); \
                         an administrator turns it on with `echo Y > {}` (or the kernel \
                         command line fuse.enable_uring=1), or use \"auto\" or \"dev\"",
                        switch.display(),
                        s.trim(),
                        switch.display()
                    ),
                ))
            }
            Err(_) => {
                return Err(Error::field(
                    field(),
                    format!(
                        "\"uring\": this kernel has no FUSE over io_uring ({} is missing: \
                         it needs Linux 6.14 or later built with CONFIG_FUSE_IO_URING); use \
                         \"auto\" or \"dev\"",
                        switch.display()
                    ),
                ))
            }
        }
    }
    Ok(t)
}

/// Whether this process can open /dev/fuse for reading and writing.
pub fn dev_fuse_usable() -> bool {
    nix::unistd::access(
        "/dev/fuse",
        nix::unistd::AccessFlags::R_OK | nix::unistd::AccessFlags::W_OK,
    )
    .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_transport_annotation_is_checked_against_the_kernel_switch() {
        let spec = |v: Option<&str>| {
            let ann = v
                .map(|v| format!(r#","annotations":{{"{ANNOTATION_TRANSPORT}":"{v}"}}"#))
                .unwrap_or_default();
            let cfg = format!(
                r#"{{"ociVersion":"1.2.0","root":{{"path":"/tmp"}},"process":{{"args":["true"],"cwd":"/","user":{{"uid":0,"gid":0}}}}{ann}}}"#
            );
            parse_spec(cfg.as_bytes(), Path::new("c")).expect("parses")
        };
        let dir = tempfile::tempdir().unwrap();
        let switch = dir.path().join("enable_uring");
        let check =
            |v: Option<&str>| transport_checked(&spec(v), &switch).map_err(|e| e.to_string());
        // No switch at all: the kernel lacks FUSE over io_uring.
        let e = check(Some("uring")).unwrap_err();
        assert!(
            e.contains(ANNOTATION_TRANSPORT) && e.contains("missing"),
            "{e}"
        );
        std::fs::write(&switch, "N\n").unwrap();
        let e = check(Some("uring")).unwrap_err();
        assert!(
            e.contains(ANNOTATION_TRANSPORT) && e.contains("echo Y >"),
            "{e}"
        );
        assert_eq!(check(Some("auto")), Ok(Transport::Auto));
        assert_eq!(check(Some("dev")), Ok(Transport::Dev));
        assert_eq!(check(None), Ok(Transport::Dev));
        let e = check(Some("fast")).unwrap_err();
        assert!(
            e.contains(ANNOTATION_TRANSPORT) && e.contains("\"fast\""),
            "{e}"
        );
        std::fs::write(&switch, "Y\n").unwrap();
        assert_eq!(check(Some("uring")), Ok(Transport::Uring));
        // What the supervisor is asked for: auto is /dev/fuse on these kernels.
        assert_eq!(transport(&spec(Some("auto"))), Transport::Dev);
        assert_eq!(transport(&spec(Some("uring"))), Transport::Uring);
        assert_eq!(transport(&spec(None)), Transport::Dev);
    }

    #[test]
    fn idmapped_mount_fields_and_options_are_checked() {
        let cfg = |mount: &str| {
            format!(
                r#"{{"ociVersion":"1.2.0","root":{{"path":"/tmp"}},"process":{{"args":["true"],"cwd":"/","user":{{"uid":0,"gid":0}}}},"linux":{{"namespaces":[{{"type":"mount"}}]}},"mounts":[{mount}]}}"#
            )
        };
        let check = |mount: &str| {
            let spec = parse_spec(cfg(mount).as_bytes(), Path::new("c")).expect("parses");
            validate(&spec, Path::new("/")).map_err(|e| e.to_string())
        };
        let map = r#"[{"containerID":0,"hostID":1000,"size":1}]"#;
        let both = format!(
            r#"{{"destination":"/data","type":"bind","source":"/tmp","options":["bind"],"uidMappings":{map},"gidMappings":{map}}}"#
        );
        check(&both).unwrap();
        let uid_only = format!(
            r#"{{"destination":"/data","type":"bind","source":"/tmp","options":["bind"],"uidMappings":{map}}}"#
        );
        let err = check(&uid_only).unwrap_err();
        assert!(err.contains("mounts[0].gidMappings"), "{err}");
        let tmpfs = format!(
            r#"{{"destination":"/data","type":"tmpfs","source":"tmpfs","uidMappings":{map},"gidMappings":{map}}}"#
        );
        let err = check(&tmpfs).unwrap_err();
        assert!(
            err.contains("mounts[0].uidMappings") && err.contains("tmpfs"),
            "{err}"
        );
        let err =
            check(r#"{"destination":"/x","type":"bind","source":"/tmp","options":["rbind","Z"]}"#)
                .unwrap_err();
        assert!(err.contains("mounts[0] (/x): option \"Z\""), "{err}");
        let err = check(
            r#"{"destination":"/x","type":"bind","source":"/tmp","options":["rbind","tmpcopyup"]}"#,
        )
        .unwrap_err();
        assert!(
            err.contains("mounts[0] (/x): option \"tmpcopyup\""),
            "{err}"
        );
    }

    #[test]
    fn rootless_root_mode_is_strict_or_the_kernel() {
        let spec = |ann: serde_json::Value| -> Spec {
            serde_json::from_value(serde_json::json!({
                "ociVersion": "1.0.2", "root": {"path": "r"}, "annotations": ann,
                "linux": {"namespaces": [{"type": "mount"}]}
            }))
            .unwrap()
        };
        let plain = spec(serde_json::json!({}));
        assert_eq!(
            root_mode(&plain, true, true).unwrap(),
            RootMode::Served {
                passthrough: true,
                rootless: false
            }
        );
        assert_eq!(
            root_mode(&plain, false, true).unwrap(),
            RootMode::Served {
                passthrough: false,
                rootless: true
            }
        );
        assert_eq!(root_mode(&plain, false, false).unwrap(), RootMode::Kernel);
        let asked = spec(serde_json::json!({ANNOTATION_FS: "server"}));
        let err = root_mode(&asked, false, false).unwrap_err().to_string();
        assert!(
            err.contains(ANNOTATION_FS) && err.contains("/dev/fuse"),
            "{err}"
        );
        let kernel = spec(serde_json::json!({ANNOTATION_FS: "kernel"}));
        assert_eq!(root_mode(&kernel, true, true).unwrap(), RootMode::Kernel);
    }

    #[test]
    fn without_a_mount_namespace_the_root_is_the_kernels() {
        let spec = |ann: serde_json::Value| -> Spec {
            serde_json::from_value(serde_json::json!({
                "ociVersion": "1.0.2", "root": {"path": "r"}, "annotations": ann,
                "linux": {"namespaces": [{"type": "pid"}]}
            }))
            .unwrap()
        };
        assert_eq!(
            root_mode(&spec(serde_json::json!({})), true, true).unwrap(),
            RootMode::Kernel
        );
        for asked in ["server", "fuse"] {
            let err = root_mode(&spec(serde_json::json!({ANNOTATION_FS: asked})), true, true)
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(ANNOTATION_FS) && err.contains("no mount namespace"),
                "{err}"
            );
        }
    }

    #[test]
    fn without_a_mount_namespace_masked_and_readonly_paths_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir(tmp.path().join("rootfs")).unwrap();
        let good = serde_json::json!({
            "ociVersion": "1.0.2",
            "root": {"path": "rootfs"},
            "process": {"args": ["sh"], "cwd": "/", "user": {"uid": 0, "gid": 0}},
            "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"}],
            "linux": {"namespaces": [{"type": "pid"}], "maskedPaths": [], "readonlyPaths": []}
        });
        let spec: Spec = serde_json::from_value(good.clone()).unwrap();
        validate(&spec, tmp.path()).expect("no mount namespace, nothing to restrict");
        for field in ["maskedPaths", "readonlyPaths"] {
            let mut v = good.clone();
            v["linux"][field] = serde_json::json!(["/proc/kcore"]);
            let spec: Spec = serde_json::from_value(v).unwrap();
            let err = validate(&spec, tmp.path()).unwrap_err().to_string();
            assert!(
                err.contains(&format!("linux.{field}")) && err.contains("mount namespace"),
                "{err}"
            );
            // With a mount namespace (joined by path too) the same list is fine.
            let mut v = good.clone();
            v["linux"][field] = serde_json::json!(["/proc/kcore"]);
            v["linux"]["namespaces"] =
                serde_json::json!([{"type": "mount", "path": "/proc/self/ns/mnt"}]);
            let spec: Spec = serde_json::from_value(v).unwrap();
            validate(&spec, tmp.path()).expect("a mount namespace joined by path");
        }
    }

    #[test]
    fn malformed_json_names_the_field() {
        let bad = br#"{"ociVersion":"1.0.2","process":{"args":"sh","cwd":"/","user":{"uid":0,"gid":0}},"root":{"path":"rootfs"}}"#;
        let err = parse_spec(bad, Path::new("config.json"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("process.args"), "{err}");
        let bad_ns = br#"{"ociVersion":"1.0.2","root":{"path":"r"},"linux":{"namespaces":[{"type":"bogus"}]}}"#;
        let err = parse_spec(bad_ns, Path::new("c")).unwrap_err().to_string();
        assert!(err.contains("linux.namespaces[0].type"), "{err}");
        let truncated = br#"{"ociVersion":"1.0.2","root":{"pa"#;
        assert!(parse_spec(truncated, Path::new("c")).is_err());
    }

    #[test]
    fn validation_catches_missing_parts() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir(tmp.path().join("rootfs")).unwrap();
        let good = serde_json::json!({
            "ociVersion": "1.0.2",
            "root": {"path": "rootfs"},
            "process": {"args": ["sh"], "cwd": "/", "user": {"uid": 0, "gid": 0}},
            "linux": {"namespaces": [{"type": "mount"}, {"type": "pid"}]}
        });
        let spec: Spec = serde_json::from_value(good.clone()).unwrap();
        assert_eq!(
            validate(&spec, tmp.path()).unwrap(),
            std::fs::canonicalize(tmp.path().join("rootfs")).unwrap()
        );

        let mut v = good.clone();
        v["process"]["args"] = serde_json::json!([]);
        let spec: Spec = serde_json::from_value(v).unwrap();
        assert!(validate(&spec, tmp.path())
            .unwrap_err()
            .to_string()
            .contains("process.args"));

        let mut v = good.clone();
        v["root"]["path"] = serde_json::json!("nope");
        let spec: Spec = serde_json::from_value(v).unwrap();
        assert!(validate(&spec, tmp.path())
            .unwrap_err()
            .to_string()
            .contains("root.path"));

        let mut v = good.clone();
        v["linux"]["namespaces"] = serde_json::json!([{"type": "mount"}, {"type": "user"}]);
        let spec: Spec = serde_json::from_value(v).unwrap();
        assert!(validate(&spec, tmp.path())
            .unwrap_err()
            .to_string()
            .contains("uidMappings"));

        let mut v = good.clone();
        v["hostname"] = serde_json::json!("h");
        let spec: Spec = serde_json::from_value(v).unwrap();
        assert!(validate(&spec, tmp.path())
            .unwrap_err()
            .to_string()
            .contains("hostname"));

        let mut v = good;
        v["linux"]["namespaces"] = serde_json::json!([{"type": "mount"}, {"type": "mount"}]);
        let spec: Spec = serde_json::from_value(v).unwrap();
        assert!(validate(&spec, tmp.path())
            .unwrap_err()
            .to_string()
            .contains("twice"));
    }
}
