//! Parsing the kernel's process and mount tables: `/proc/PID/stat` and
//! `/proc/PID/mountinfo` (proc(5)).

use std::path::PathBuf;

use crate::Error;

/// The fields of a `/proc/PID/stat` line Porta reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stat {
    /// Field 1: the process id.
    pub pid: i32,
    /// Field 2: the command name, without its parentheses (it may itself hold spaces
    /// and parentheses).
    pub comm: String,
    /// Field 3: the state letter (`R`, `S`, `Z`, `T`, `t`, `X`…).
    pub state: char,
    /// Field 4: the parent's pid.
    pub ppid: i32,
    /// Field 22: start time in clock ticks since boot; with the pid it names one process
    /// for good (a reused pid has a later start time).
    pub start_time: u64,
    /// Field 52: the wait status as `waitpid` would give it (Linux 3.5+; what a zombie
    /// shows); `None` when the line is shorter.
    pub exit_code: Option<i32>,
}

impl Stat {
    /// Parses one `/proc/PID/stat` line. The command name is everything between the
    /// first `(` and the last `)`, as the kernel writes it unescaped.
    pub fn parse(line: &str) -> Result<Stat, Error> {
        let bad = |reason| Error::Malformed {
            what: "/proc/PID/stat",
            line: line.to_string(),
            reason,
        };
        let open = line
            .find('(')
            .ok_or_else(|| bad("no '(' before the command name"))?;
        let close = line
            .rfind(')')
            .ok_or_else(|| bad("no ')' after the command name"))?;
        if close < open {
            return Err(bad("')' before '('"));
        }
        let pid = line[..open]
            .trim()
            .parse()
            .map_err(|_| bad("the pid is not a number"))?;
        let comm = line[open + 1..close].to_string();
        let rest: Vec<&str> = line[close + 1..].split_whitespace().collect();
        // rest[0] is field 3.
        let field = |n: usize| rest.get(n - 3).copied();
        let state = field(3)
            .and_then(|s| s.chars().next())
            .ok_or_else(|| bad("no state"))?;
        let ppid = field(4)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad("no parent pid"))?;
        let start_time = field(22)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad("no start time (field 22)"))?;
        let exit_code = match field(52) {
            None => None,
            Some(s) => Some(
                s.parse()
                    .map_err(|_| bad("the exit code is not a number"))?,
            ),
        };
        Ok(Stat {
            pid,
            comm,
            state,
            ppid,
            start_time,
            exit_code,
        })
    }

    /// Reads and parses `/proc/PID/stat`; `None` when there is no such process (or its
    /// line cannot be read or parsed).
    pub fn of(pid: i32) -> Option<Stat> {
        let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        Stat::parse(&s).ok()
    }

    /// True for a zombie (`Z`) or a dead (`X`) process.
    pub fn is_dead(&self) -> bool {
        matches!(self.state, 'Z' | 'X')
    }

    /// True for a stopped process (job control `T` or ptrace `t`).
    pub fn is_stopped(&self) -> bool {
        matches!(self.state, 'T' | 't')
    }
}

/// Start time of `pid` (field 22 of its /proc stat), to tell it from a later process
/// with the same pid; `None` when it does not exist.
pub fn start_time(pid: i32) -> Option<u64> {
    Stat::of(pid).map(|s| s.start_time)
}

/// One line of `/proc/PID/mountinfo`, its paths unescaped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountInfo {
    /// Field 1: the mount's id.
    pub mount_id: u64,
    /// Field 2: the parent mount's id.
    pub parent_id: u64,
    /// Field 3: `major:minor` of the file system's device.
    pub device: String,
    /// Field 4: the directory of the file system that is the mount's root.
    pub root: PathBuf,
    /// Field 5: where it is mounted, relative to the reader's root.
    pub mount_point: PathBuf,
    /// Field 6: per-mount options (`rw,nosuid,…`).
    pub options: String,
    /// The optional fields (`shared:N`, `master:N`…), possibly none.
    pub optional: Vec<String>,
    /// The file system type (`ext4`, `fuse.porta`, `cgroup2`…).
    pub fs_type: String,
    /// The mount source (unescaped; `none` and the like where there is none).
    pub source: String,
    /// Per-superblock options.
    pub super_options: String,
}

impl MountInfo {
    /// Parses one mountinfo line, undoing the kernel's octal escapes in the paths and the
    /// source.
    pub fn parse(line: &str) -> Result<MountInfo, Error> {
        let bad = |reason| Error::Malformed {
            what: "mountinfo",
            line: line.to_string(),
            reason,
        };
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 6 {
            return Err(bad("fewer than six fields before the separator"));
        }
        let sep = f[6..]
            .iter()
            .position(|&x| x == "-")
            .map(|i| i + 6)
            .ok_or_else(|| bad("no '-' separator"))?;
        let post = &f[sep + 1..];
        if post.len() < 3 {
            return Err(bad("fewer than three fields after the separator"));
        }
        Ok(MountInfo {
            mount_id: f[0]
                .parse()
                .map_err(|_| bad("the mount id is not a number"))?,
            parent_id: f[1]
                .parse()
                .map_err(|_| bad("the parent id is not a number"))?,
            device: f[2].to_string(),
            root: PathBuf::from(unescape(f[3])),
            mount_point: PathBuf::from(unescape(f[4])),
            options: f[5].to_string(),
            optional: f[6..sep].iter().map(|s| s.to_string()).collect(),
            fs_type: post[0].to_string(),
            source: unescape(post[1]),
            super_options: post[2].to_string(),
        })
    }

    /// Whether the per-mount options hold `opt` (`ro`, `nosuid`…).
    pub fn has_option(&self, opt: &str) -> bool {
        self.options.split(',').any(|o| o == opt)
    }
}

/// Parses a whole mountinfo text; the first malformed line is an error.
pub fn parse_mountinfo(text: &str) -> Result<Vec<MountInfo>, Error> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(MountInfo::parse)
        .collect()
}

/// Reads and parses `/proc/self/mountinfo`.
pub fn own_mountinfo() -> std::io::Result<Vec<MountInfo>> {
    let text = std::fs::read_to_string("/proc/self/mountinfo")?;
    parse_mountinfo(&text).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// Undoes mountinfo's octal escapes (`\040` for a space, `\011` tab, `\012` newline,
/// `\134` backslash). A backslash not followed by three octal digits of a byte value
/// stays as it is. Bytes that are not UTF-8 become U+FFFD.
pub fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() {
            let oct = &b[i + 1..i + 4];
            if oct.iter().all(|c| (b'0'..=b'7').contains(c)) {
                let v = oct
                    .iter()
                    .fold(0u32, |acc, c| acc * 8 + u32::from(c - b'0'));
                if let Ok(v) = u8::try_from(v) {
                    out.push(v);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stat_line(comm: &str, state: char, fields: usize) -> String {
        // Fields 4.. numbered by their own position, so each is recognisable.
        let rest: Vec<String> = (4..=fields).map(|n| n.to_string()).collect();
        format!("4242 ({comm}) {state} {}", rest.join(" "))
    }

    #[test]
    fn stat_fields_by_number() {
        let s = Stat::parse(&stat_line("sh", 'S', 52)).unwrap();
        assert_eq!(s.pid, 4242);
        assert_eq!(s.comm, "sh");
        assert_eq!(s.state, 'S');
        assert_eq!(s.ppid, 4);
        assert_eq!(s.start_time, 22);
        assert_eq!(s.exit_code, Some(52));
        assert!(!s.is_dead() && !s.is_stopped());
    }

    #[test]
    fn odd_command_names_with_spaces_and_parentheses() {
        for comm in ["a b", "x) Z 1 (", ")", "((", "my (prog)", ""] {
            let s = Stat::parse(&stat_line(comm, 'Z', 44)).unwrap();
            assert_eq!(s.comm, comm);
            assert_eq!(s.state, 'Z');
            assert_eq!(s.ppid, 4);
            assert_eq!(s.start_time, 22);
            assert_eq!(s.exit_code, None, "a line shorter than 52 fields");
            assert!(s.is_dead());
        }
    }

    #[test]
    fn malformed_stat_lines_are_errors() {
        for line in [
            "",
            "12 sh S 1",
            "12 (sh S 1 2",
            "12 sh) S 1",
            "x (sh) S 1",
            "12 (sh)",
            "12 (sh) S notapid",
            &stat_line("sh", 'S', 21),
            &stat_line("sh", 'S', 52).replace(" 52", " fifty-two"),
        ] {
            let e = Stat::parse(line).unwrap_err();
            assert!(e.to_string().contains("malformed /proc/PID/stat"), "{e}");
        }
    }

    #[test]
    fn this_process_reads_itself() {
        let me = std::process::id() as i32;
        let s = Stat::of(me).unwrap();
        assert_eq!(s.pid, me);
        assert_eq!(s.ppid, std::os::unix::process::parent_id() as i32);
        assert_eq!(start_time(me), Some(s.start_time));
        assert!(Stat::of(-1).is_none());
    }

    const LINE: &str = "36 35 98:0 /mnt\\040dir /srv/a\\134b\\011c rw,noatime master:1 shared:2 - ext3 /dev/my\\040root rw,errors=continue";

    #[test]
    fn mountinfo_fields_and_escapes() {
        let m = MountInfo::parse(LINE).unwrap();
        assert_eq!(m.mount_id, 36);
        assert_eq!(m.parent_id, 35);
        assert_eq!(m.device, "98:0");
        assert_eq!(m.root, PathBuf::from("/mnt dir"));
        assert_eq!(m.mount_point, PathBuf::from("/srv/a\\b\tc"));
        assert_eq!(m.optional, vec!["master:1", "shared:2"]);
        assert_eq!(m.fs_type, "ext3");
        assert_eq!(m.source, "/dev/my root");
        assert_eq!(m.super_options, "rw,errors=continue");
        assert!(m.has_option("noatime") && !m.has_option("ro"));
        let plain = MountInfo::parse("1 0 0:1 / / ro - rootfs rootfs rw").unwrap();
        assert!(plain.optional.is_empty());
        assert!(plain.has_option("ro"));
    }

    #[test]
    fn unescape_leaves_what_is_not_an_escape() {
        assert_eq!(unescape("/a\\040b"), "/a b");
        assert_eq!(unescape("/plain"), "/plain");
        assert_eq!(unescape("/end\\"), "/end\\");
        assert_eq!(unescape("/short\\04"), "/short\\04");
        assert_eq!(unescape("/not\\089octal"), "/not\\089octal");
        assert_eq!(unescape("/too\\777big"), "/too\\777big");
        assert_eq!(unescape("\\134\\134"), "\\\\");
    }

    #[test]
    fn malformed_mountinfo_lines_are_errors() {
        for line in [
            "36 35 98:0 /mnt",
            "36 35 98:0 / /srv rw shared:1 ext3 /dev/x rw",
            "36 35 98:0 / /srv rw - ext3",
            "x 35 98:0 / /srv rw - ext3 /dev/x rw",
            "36 y 98:0 / /srv rw - ext3 /dev/x rw",
        ] {
            let e = MountInfo::parse(line).unwrap_err();
            assert!(e.to_string().contains("malformed mountinfo"), "{e}");
        }
        let text = format!("{LINE}\n\n1 0 0:1 / / rw - rootfs rootfs rw\n");
        assert_eq!(parse_mountinfo(&text).unwrap().len(), 2);
        assert!(parse_mountinfo(&format!("{LINE}\nbroken\n")).is_err());
    }

    #[test]
    fn this_process_mount_table_parses_and_has_a_root() {
        let all = own_mountinfo().unwrap();
        assert!(all
            .iter()
            .any(|m| m.mount_point == std::path::Path::new("/")));
    }
}
