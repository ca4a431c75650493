//! The command-line grammar: runc's subcommands and flags.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::logging::LogFormat;

/// Porta: an OCI container runtime that gives each container its own file server.
#[derive(Parser, Debug)]
#[command(name = "porta", version = concat!("version ", env!("CARGO_PKG_VERSION"), "\nspec: 1.2.1"), about, long_about = None)]
pub struct Cli {
    /// Root directory for container state.
    #[arg(long, global = true, default_value = "/run/porta")]
    pub root: PathBuf,
    /// Log file (default: stderr).
    #[arg(long, global = true)]
    pub log: Option<PathBuf>,
    /// Log format.
    #[arg(long = "log-format", global = true, value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// Debug logging.
    #[arg(long, global = true)]
    pub debug: bool,
    /// Use the systemd cgroup driver.
    #[arg(long = "systemd-cgroup", global = true, num_args = 0..=1, default_missing_value = "true", require_equals = true, action = clap::ArgAction::Set, default_value = "false")]
    pub systemd_cgroup: bool,
    /// Rootless mode: true, false or auto.
    #[arg(long, global = true, default_value = "auto", num_args = 0..=1, default_missing_value = "true")]
    pub rootless: String,
    /// Path to the criu binary (checkpoint and restore).
    #[arg(long, global = true, default_value = "criu")]
    pub criu: PathBuf,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// Flags shared by `create` and `run`.
#[derive(clap::Args, Debug, Clone)]
pub struct CreateArgs {
    /// Bundle directory.
    #[arg(short, long, default_value = ".")]
    pub bundle: PathBuf,
    /// File to write the container's pid to.
    #[arg(long = "pid-file")]
    pub pid_file: Option<PathBuf>,
    /// Unix socket to receive the pty master on.
    #[arg(long = "console-socket")]
    pub console_socket: Option<PathBuf>,
    /// Use MS_MOVE and chroot instead of pivot_root.
    #[arg(long = "no-pivot")]
    pub no_pivot: bool,
    /// Do not create a new session keyring.
    #[arg(long = "no-new-keyring")]
    pub no_new_keyring: bool,
    /// Pass this many fds above stdio to the container.
    #[arg(long = "preserve-fds", default_value_t = 0)]
    pub preserve_fds: u32,
    /// A nested container: the parent's state directory (its group goes beneath the
    /// parent's); set by the parent's API server, not for general use.
    #[arg(long = "nested-in", hide = true)]
    pub nested_in: Option<PathBuf>,
    /// Container id.
    pub id: String,
}

/// The subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create a container from a bundle.
    Create(CreateArgs),
    /// Start a created container.
    Start {
        /// Container id.
        id: String,
    },
    /// Create, start and wait for a container.
    Run {
        #[command(flatten)]
        create: CreateArgs,
        /// Do not wait: leave the container running.
        #[arg(short, long)]
        detach: bool,
        /// Keep the container's state after it exits.
        #[arg(long)]
        keep: bool,
    },
    /// Print a container's state.
    State {
        /// Container id.
        id: String,
    },
    /// Send a signal to a container.
    Kill {
        /// Signal every process of the container.
        #[arg(short, long)]
        all: bool,
        /// Container id.
        id: String,
        /// Signal name or number (0: only check that the process exists).
        #[arg(default_value = "SIGTERM")]
        signal: String,
    },
    /// Delete a container.
    Delete {
        /// Kill a running container first.
        #[arg(short, long)]
        force: bool,
        /// Container id.
        id: String,
    },
    /// List containers.
    List {
        /// table or json.
        #[arg(short, long, default_value = "table")]
        format: String,
        /// Ids only.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Print the object namespace: every container of the root (or one, ID) with its
    /// processes, servers, translators, mounts, grants and child containers. Inside a
    /// container (through its API socket): the container's own namespace.
    Objects {
        /// table (an indented tree) or json.
        #[arg(short, long, default_value = "table")]
        format: String,
        /// Container id (inside a container: an id of its tree, or an object path).
        id: Option<String>,
    },
    /// List a container's processes.
    Ps {
        /// table or json.
        #[arg(short, long, default_value = "table")]
        format: String,
        /// Container id.
        id: String,
        /// Options for the host's `ps` (default -ef); its output is filtered to the
        /// container's processes.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        ps_args: Vec<String>,
    },
    /// Run a process in a running container.
    Exec(ExecArgs),
    /// Freeze a container's processes.
    Pause {
        /// Container id.
        id: String,
    },
    /// Thaw a paused container.
    Resume {
        /// Container id.
        id: String,
    },
    /// Change a container's resource limits.
    Update(UpdateArgs),
    /// Print a container's events and statistics.
    Events {
        /// Interval between statistics.
        #[arg(long, default_value = "5s")]
        interval: String,
        /// Print statistics once and exit.
        #[arg(long)]
        stats: bool,
        /// Container id.
        id: String,
    },
    /// Write a default config.json.
    Spec {
        /// Bundle directory to write config.json into.
        #[arg(short, long, default_value = ".")]
        bundle: PathBuf,
    },
    /// Print the features this build supports (OCI features JSON).
    Features,
    /// Checkpoint a running container with CRIU (needs a kernel-mounted root:
    /// annotation run.porta.fs=kernel).
    Checkpoint(CheckpointArgs),
    /// Restore a container from a CRIU checkpoint.
    Restore(RestoreArgs),
    /// Attach, show and remove translators: file systems served below a node of a
    /// container's tree by a program of the container (or a built-in, porta:NAME).
    #[command(subcommand)]
    Translator(TranslatorCommand),
    /// Share a directory of one running container live into another (served by the
    /// target's file server from a handle, revocable at once); prints the grant's id.
    Share {
        /// The target may only read.
        #[arg(long)]
        read_only: bool,
        /// SOURCE-ID:/PATH, a directory in the source container.
        from: String,
        /// TARGET-ID:/PATH, where the target sees it (made if missing).
        to: String,
    },
    /// Revoke a share: every later request on it, open files included, fails with EACCES.
    Unshare {
        /// TARGET-ID:/PATH where it is served, or the grant's id.
        what: String,
    },
    /// Acts on the nested children of a container as a process inside it would through
    /// its API socket, with the caller's host ids given (for the host's administrator and
    /// the tests; the same checks apply).
    #[command(hide = true)]
    Nested(NestedArgs),
    /// Runs a restoring container's prestart and createRuntime hooks; CRIU calls it as an
    /// action script (from the environment it sets) once the namespaces exist.
    #[command(hide = true, name = "restore-hooks")]
    RestoreHooks {
        /// The restoring container's state directory.
        state_dir: PathBuf,
    },
}

/// `porta nested --parent ID --caller-uid N …`.
#[derive(clap::Args, Debug)]
pub struct NestedArgs {
    /// The parent container (under --root).
    #[arg(long)]
    pub parent: String,
    /// The caller's host uid.
    #[arg(long = "caller-uid")]
    pub caller_uid: u32,
    /// The caller's host gid.
    #[arg(long = "caller-gid", default_value_t = 0)]
    pub caller_gid: u32,
    /// The caller's host pid.
    #[arg(long = "caller-pid", default_value_t = 0)]
    pub caller_pid: i32,
    /// The operation.
    #[command(subcommand)]
    pub op: NestedOp,
}

/// The operations on a container's children.
#[derive(clap::Subcommand, Debug)]
pub enum NestedOp {
    /// Create a child from a bundle of the parent's tree.
    Create {
        /// Bundle directory, an absolute path in the parent's root.
        #[arg(short, long)]
        bundle: PathBuf,
        /// Child id.
        id: String,
    },
    /// Start a created child.
    Start {
        /// Child id.
        id: String,
    },
    /// Run a process in a child.
    Exec {
        /// Working directory in the child.
        #[arg(long)]
        cwd: Option<String>,
        /// Environment variables (KEY=VALUE).
        #[arg(short, long = "env")]
        env: Vec<String>,
        /// uid[:gid] in the child.
        #[arg(short, long)]
        user: Option<String>,
        /// Child id.
        id: String,
        /// The program and its arguments.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
        command: Vec<String>,
    },
    /// Send a signal to a child.
    Kill {
        /// Signal every process of the child.
        #[arg(short, long)]
        all: bool,
        /// Child id.
        id: String,
        /// Signal name or number.
        #[arg(default_value = "SIGTERM")]
        signal: String,
    },
    /// Delete a child (its children first).
    Delete {
        /// Kill a running child first.
        #[arg(short, long)]
        force: bool,
        /// Child id.
        id: String,
    },
    /// Print a child's state.
    State {
        /// Child id.
        id: String,
    },
    /// List the children (JSON).
    List,
}

/// `porta translator …`.
#[derive(clap::Subcommand, Debug)]
pub enum TranslatorCommand {
    /// Attach a translator to PATH: started now (active), or recorded on the node and
    /// started at its first access (--passive). `{}` in the arguments stands for the
    /// FUSE descriptor (/dev/fd/N), the translator's mount point.
    Set {
        /// Record it on the node instead of starting it now.
        #[arg(long)]
        passive: bool,
        /// Container id.
        id: String,
        /// The node, an absolute path in the container.
        path: String,
        /// The program and its arguments (after `--`), or porta:memfs, porta:view DIR,
        /// porta:tar ARCHIVE.
        #[arg(last = true)]
        program: Vec<String>,
    },
    /// Show the translators of a container, or the records of one node.
    Show {
        /// table or json.
        #[arg(short, long, default_value = "table")]
        format: String,
        /// Container id.
        id: String,
        /// A node, an absolute path in the container.
        path: Option<String>,
    },
    /// Remove a node's translators (active and passive); the running one is stopped.
    Rm {
        /// Container id.
        id: String,
        /// The node, an absolute path in the container.
        path: String,
    },
}

/// Flags `checkpoint` and `restore` share (runc's names).
#[derive(clap::Args, Debug, Clone)]
pub struct CriuArgs {
    /// Directory of the CRIU image files (default: ./checkpoint).
    #[arg(long = "image-path")]
    pub image_path: Option<PathBuf>,
    /// Directory for CRIU's work files and logs (default: the image directory).
    #[arg(long = "work-path")]
    pub work_path: Option<PathBuf>,
    /// Allow open TCP connections.
    #[arg(long = "tcp-established")]
    pub tcp_established: bool,
    /// Allow external unix sockets.
    #[arg(long = "ext-unix-sk")]
    pub ext_unix_sk: bool,
    /// Allow shell jobs.
    #[arg(long = "shell-job")]
    pub shell_job: bool,
    /// Handle file locks.
    #[arg(long = "file-locks")]
    pub file_locks: bool,
    /// Use userfaultfd to restore memory pages lazily.
    #[arg(long = "lazy-pages")]
    pub lazy_pages: bool,
    /// cgroups mode: soft (default), full, strict or ignore.
    #[arg(long = "manage-cgroups-mode")]
    pub manage_cgroups_mode: Option<String>,
    /// Create this namespace, but do not restore its properties (repeatable).
    #[arg(long = "empty-ns")]
    pub empty_ns: Vec<String>,
    /// Deduplicate memory images.
    #[arg(long = "auto-dedup")]
    pub auto_dedup: bool,
}

/// Flags of `checkpoint` (runc's).
#[derive(clap::Args, Debug)]
pub struct CheckpointArgs {
    #[command(flatten)]
    pub criu: CriuArgs,
    /// Directory of the previous images (of a pre-dump), relative to --image-path.
    #[arg(long = "parent-path")]
    pub parent_path: Option<PathBuf>,
    /// Leave the container running after checkpointing.
    #[arg(long = "leave-running")]
    pub leave_running: bool,
    /// Skip in-flight TCP connections.
    #[arg(long = "tcp-skip-in-flight")]
    pub tcp_skip_in_flight: bool,
    /// Allow to link unlinked files back when possible.
    #[arg(long = "link-remap")]
    pub link_remap: bool,
    /// CRIU writes \0 to this fd once lazy pages are ready (-1: none).
    #[arg(long = "status-fd", default_value_t = -1, allow_negative_numbers = true)]
    pub status_fd: i32,
    /// ADDRESS:PORT of a page server.
    #[arg(long = "page-server")]
    pub page_server: Option<String>,
    /// Dump the memory only and leave the container running.
    #[arg(long = "pre-dump")]
    pub pre_dump: bool,
    /// Container id.
    pub id: String,
}

/// Flags of `restore` (runc's).
#[derive(clap::Args, Debug)]
pub struct RestoreArgs {
    #[command(flatten)]
    pub criu: CriuArgs,
    /// Bundle directory.
    #[arg(short, long, default_value = ".")]
    pub bundle: PathBuf,
    /// Do not wait: leave the restored container running.
    #[arg(short, long)]
    pub detach: bool,
    /// File to write the restored process's pid to.
    #[arg(long = "pid-file")]
    pub pid_file: Option<PathBuf>,
    /// Unix socket to receive the pty master on.
    #[arg(long = "console-socket")]
    pub console_socket: Option<PathBuf>,
    /// Do not become a subreaper of the restored processes.
    #[arg(long = "no-subreaper")]
    pub no_subreaper: bool,
    /// Use MS_MOVE and chroot instead of pivot_root.
    #[arg(long = "no-pivot")]
    pub no_pivot: bool,
    /// LSM profile (TYPE:NAME) to restore the process with.
    #[arg(long = "lsm-profile")]
    pub lsm_profile: Option<String>,
    /// LSM mount context to restore with.
    #[arg(long = "lsm-mount-context")]
    pub lsm_mount_context: Option<String>,
    /// Container id.
    pub id: String,
}

/// Flags of `exec`.
#[derive(clap::Args, Debug)]
pub struct ExecArgs {
    /// JSON file describing the process.
    #[arg(short, long)]
    pub process: Option<PathBuf>,
    /// Do not wait for the process.
    #[arg(short, long)]
    pub detach: bool,
    /// Allocate a pty.
    #[arg(short, long)]
    pub tty: bool,
    /// Environment variables (NAME=VALUE).
    #[arg(short, long = "env")]
    pub env: Vec<String>,
    /// Working directory.
    #[arg(long)]
    pub cwd: Option<PathBuf>,
    /// uid[:gid].
    #[arg(short, long)]
    pub user: Option<String>,
    /// Additional gids.
    #[arg(short = 'g', long = "additional-gids")]
    pub additional_gids: Vec<u32>,
    /// File to write the process's pid to.
    #[arg(long = "pid-file")]
    pub pid_file: Option<PathBuf>,
    /// Unix socket to receive the pty master on.
    #[arg(long = "console-socket")]
    pub console_socket: Option<PathBuf>,
    /// Pass this many fds above stdio to the process.
    #[arg(long = "preserve-fds", default_value_t = 0)]
    pub preserve_fds: u32,
    /// Add a capability.
    #[arg(short, long = "cap")]
    pub cap: Vec<String>,
    /// Set no_new_privs.
    #[arg(long = "no-new-privs")]
    pub no_new_privs: bool,
    /// SELinux label of the process.
    #[arg(long = "process-label")]
    pub process_label: Option<String>,
    /// AppArmor profile of the process.
    #[arg(long)]
    pub apparmor: Option<String>,
    /// Allow exec into a paused container.
    #[arg(long = "ignore-paused")]
    pub ignore_paused: bool,
    /// Container id.
    pub id: String,
    /// Command and arguments.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

/// Flags of `update`.
#[derive(clap::Args, Debug)]
pub struct UpdateArgs {
    /// JSON file with the resources ("-" for stdin).
    #[arg(short, long)]
    pub resources: Option<PathBuf>,
    /// Block IO weight.
    #[arg(long = "blkio-weight")]
    pub blkio_weight: Option<u16>,
    /// CPU CFS period (µs).
    #[arg(long = "cpu-period")]
    pub cpu_period: Option<u64>,
    /// CPU CFS quota (µs); -1: unlimited.
    #[arg(long = "cpu-quota", allow_negative_numbers = true)]
    pub cpu_quota: Option<i64>,
    /// CPU shares.
    #[arg(long = "cpu-share")]
    pub cpu_share: Option<u64>,
    /// CPU realtime period.
    #[arg(long = "cpu-rt-period")]
    pub cpu_rt_period: Option<u64>,
    /// CPU realtime runtime.
    #[arg(long = "cpu-rt-runtime", allow_negative_numbers = true)]
    pub cpu_rt_runtime: Option<i64>,
    /// CPUs allowed.
    #[arg(long = "cpuset-cpus")]
    pub cpuset_cpus: Option<String>,
    /// Memory nodes allowed.
    #[arg(long = "cpuset-mems")]
    pub cpuset_mems: Option<String>,
    /// Memory limit (bytes, or with k/m/g suffix).
    #[arg(long, allow_negative_numbers = true)]
    pub memory: Option<String>,
    /// Memory reservation.
    #[arg(long = "memory-reservation", allow_negative_numbers = true)]
    pub memory_reservation: Option<String>,
    /// Memory plus swap limit.
    #[arg(long = "memory-swap", allow_negative_numbers = true)]
    pub memory_swap: Option<String>,
    /// Maximum number of pids.
    #[arg(long = "pids-limit", allow_negative_numbers = true)]
    pub pids_limit: Option<i64>,
    /// Container id.
    pub id: String,
}
