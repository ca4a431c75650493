//! Device rules on cgroup v2: an eBPF program of type `BPF_PROG_TYPE_CGROUP_DEVICE`
//! attached to the container group.
//!
//! cgroup v2 has no devices controller files; the kernel asks every eBPF program attached
//! to the group (and to its ancestors) whether an access to a device node is allowed.
//! libcgroups can do this only with its `cgroupsv2_devices` feature, which needs libbpf
//! built from C sources; this module writes the (small) program itself.
//!
//! Semantics are those of the v1 devices controller as runc applies a rule list: the rules
//! are read in order and the **last** rule matching a request decides; with no matching
//! rule the access is allowed (a config normally starts with a deny-all rule). An allow
//! rule matches a request only if it allows every requested access (`r`, `w`, `m`); a deny
//! rule matches if it denies any of them.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use nix::libc;
use oci_spec::runtime::{LinuxDeviceCgroup, LinuxDeviceType};

use crate::error::{Error, Result};

// Instruction classes and fields of the eBPF encoding.
const LDX_MEM_W: u8 = 0x61; // dst = *(u32 *)(src + off)
const ALU64_AND_K: u8 = 0x57;
const ALU64_RSH_K: u8 = 0x77;
const ALU64_MOV_K: u8 = 0xb7;
const ALU64_MOV_X: u8 = 0xbf;
const JMP_JNE_K: u8 = 0x55;
const JMP_JEQ_K: u8 = 0x15;
const JMP_JSET_K: u8 = 0x45;
const JMP_EXIT: u8 = 0x95;

// struct bpf_cgroup_dev_ctx { u32 access_type; u32 major; u32 minor; }
// access_type = (access << 16) | type.
const DEV_BLOCK: i32 = 1;
const DEV_CHAR: i32 = 2;
const ACC_MKNOD: i32 = 1;
const ACC_READ: i32 = 2;
const ACC_WRITE: i32 = 4;
const ACC_ALL: i32 = ACC_MKNOD | ACC_READ | ACC_WRITE;

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_ATTACH: libc::c_long = 8;
const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
const BPF_CGROUP_DEVICE: u32 = 6;
const BPF_F_ALLOW_MULTI: u32 = 2;

/// One eBPF instruction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Insn {
    /// Opcode.
    pub code: u8,
    /// Destination register.
    pub dst: u8,
    /// Source register.
    pub src: u8,
    /// Offset (jumps: instructions to skip).
    pub off: i16,
    /// Immediate.
    pub imm: i32,
}

impl Insn {
    fn new(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
        Insn {
            code,
            dst,
            src,
            off,
            imm,
        }
    }

    /// The 8 bytes of `struct bpf_insn` (little-endian machine).
    pub fn to_bytes(self) -> [u8; 8] {
        let mut b = [0u8; 8];
        b[0] = self.code;
        b[1] = (self.src << 4) | (self.dst & 0x0f);
        b[2..4].copy_from_slice(&self.off.to_le_bytes());
        b[4..8].copy_from_slice(&self.imm.to_le_bytes());
        b
    }
}

fn access_mask(access: Option<&str>) -> i32 {
    let a = access.filter(|a| !a.is_empty()).unwrap_or("rwm");
    let mut m = 0;
    for c in a.chars() {
        m |= match c {
            'r' => ACC_READ,
            'w' => ACC_WRITE,
            'm' => ACC_MKNOD,
            _ => 0,
        };
    }
    m
}

/// The program for a rule list (see the module docs for its semantics).
pub fn program(rules: &[LinuxDeviceCgroup]) -> Result<Vec<Insn>> {
    // r2 = type, r3 = access, r4 = major, r5 = minor.
    let mut p = vec![
        Insn::new(LDX_MEM_W, 2, 1, 0, 0),
        Insn::new(ALU64_AND_K, 2, 0, 0, 0xffff),
        Insn::new(LDX_MEM_W, 3, 1, 0, 0),
        Insn::new(ALU64_RSH_K, 3, 0, 0, 16),
        Insn::new(LDX_MEM_W, 4, 1, 4, 0),
        Insn::new(LDX_MEM_W, 5, 1, 8, 0),
    ];
    for rule in rules.iter().rev() {
        let typ = match rule.typ().unwrap_or(LinuxDeviceType::A) {
            LinuxDeviceType::A => None,
            LinuxDeviceType::B => Some(DEV_BLOCK),
            LinuxDeviceType::C | LinuxDeviceType::U => Some(DEV_CHAR),
            LinuxDeviceType::P => continue, // FIFOs are not device-controlled
        };
        let num = |n: Option<i64>, what: &str| -> Result<Option<i32>> {
            match n {
                None => Ok(None),
                Some(n) if n < 0 => Ok(None),
                Some(n) => i32::try_from(n).map(Some).map_err(|_| Error::InvalidValue {
                    field: format!("linux.resources.devices[].{what}"),
                    value: n.to_string(),
                    reason: "out of range".into(),
                }),
            }
        };
        let major = num(rule.major(), "major")?;
        let minor = num(rule.minor(), "minor")?;
        let acc = access_mask(rule.access().as_deref());
        if acc == 0 {
            continue;
        }
        // Checks that jump to the next rule when they fail; patched once the block's
        // length is known.
        let mut block: Vec<Insn> = Vec::new();
        if let Some(t) = typ {
            block.push(Insn::new(JMP_JNE_K, 2, 0, 0, t));
        }
        if let Some(m) = major {
            block.push(Insn::new(JMP_JNE_K, 4, 0, 0, m));
        }
        if let Some(m) = minor {
            block.push(Insn::new(JMP_JNE_K, 5, 0, 0, m));
        }
        if rule.allow() {
            let not_allowed = !acc & ACC_ALL;
            if not_allowed != 0 {
                block.push(Insn::new(JMP_JSET_K, 3, 0, 0, not_allowed));
            }
        } else if acc != ACC_ALL {
            block.push(Insn::new(ALU64_MOV_X, 6, 3, 0, 0));
            block.push(Insn::new(ALU64_AND_K, 6, 0, 0, acc));
            block.push(Insn::new(JMP_JEQ_K, 6, 0, 0, 0));
        }
        let unconditional = block.is_empty();
        block.push(Insn::new(ALU64_MOV_K, 0, 0, 0, i32::from(rule.allow())));
        block.push(Insn::new(JMP_EXIT, 0, 0, 0, 0));
        let len = block.len();
        for (i, insn) in block.iter_mut().enumerate() {
            if matches!(insn.code, JMP_JNE_K | JMP_JEQ_K | JMP_JSET_K) {
                insn.off = (len - i - 1) as i16;
            }
        }
        p.extend(block);
        if unconditional {
            // Matches every request: earlier rules cannot matter (and the verifier
            // refuses unreachable instructions).
            return Ok(p);
        }
    }
    // No rule matched: allowed, as with the v1 controller's default.
    p.push(Insn::new(ALU64_MOV_K, 0, 0, 0, 1));
    p.push(Insn::new(JMP_EXIT, 0, 0, 0, 0));
    Ok(p)
}

fn bpf(cmd: libc::c_long, attr: &mut [u8]) -> std::io::Result<libc::c_long> {
    // SAFETY: `attr` is a valid, writable buffer of the given size laid out as the
    // kernel's `union bpf_attr` for `cmd`; every pointer in it outlives the call.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), attr.len()) };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// Loads the program for `rules` and attaches it to the cgroup v2 group `dir` (with
/// `BPF_F_ALLOW_MULTI`: programs of the group's ancestors still apply, and every group
/// below it is filtered too).
pub fn attach(dir: &Path, rules: &[LinuxDeviceCgroup]) -> Result<()> {
    let insns: Vec<u8> = program(rules)?
        .into_iter()
        .flat_map(Insn::to_bytes)
        .collect();
    let license = b"Apache-2.0\0";
    let mut log = vec![0u8; 64 * 1024];
    let mut attr = [0u8; 120];
    attr[0..4].copy_from_slice(&BPF_PROG_TYPE_CGROUP_DEVICE.to_ne_bytes());
    attr[4..8].copy_from_slice(&((insns.len() / 8) as u32).to_ne_bytes());
    attr[8..16].copy_from_slice(&(insns.as_ptr() as u64).to_ne_bytes());
    attr[16..24].copy_from_slice(&(license.as_ptr() as u64).to_ne_bytes());
    attr[24..28].copy_from_slice(&1u32.to_ne_bytes()); // log_level
    attr[28..32].copy_from_slice(&(log.len() as u32).to_ne_bytes());
    attr[32..40].copy_from_slice(&(log.as_mut_ptr() as u64).to_ne_bytes());
    attr[48..53].copy_from_slice(b"porta");
    attr[68..72].copy_from_slice(&BPF_CGROUP_DEVICE.to_ne_bytes());
    let prog = match bpf(BPF_PROG_LOAD, &mut attr) {
        // SAFETY: the kernel returned a new file descriptor that nothing else owns.
        Ok(fd) => unsafe { OwnedFd::from_raw_fd(fd as i32) },
        Err(source) => {
            let end = log.iter().position(|b| *b == 0).unwrap_or(log.len());
            return Err(Error::Bpf {
                op: "load the device filter program for",
                path: dir.to_path_buf(),
                source,
                log: String::from_utf8_lossy(&log[..end]).trim().to_string(),
            });
        }
    };
    let group = std::fs::File::open(dir).map_err(|source| Error::Read {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut attr = [0u8; 20];
    attr[0..4].copy_from_slice(&(group.as_raw_fd() as u32).to_ne_bytes());
    attr[4..8].copy_from_slice(&(prog.as_raw_fd() as u32).to_ne_bytes());
    attr[8..12].copy_from_slice(&BPF_CGROUP_DEVICE.to_ne_bytes());
    attr[12..16].copy_from_slice(&BPF_F_ALLOW_MULTI.to_ne_bytes());
    bpf(BPF_PROG_ATTACH, &mut attr).map_err(|source| Error::Bpf {
        op: "attach the device filter program to",
        path: dir.to_path_buf(),
        source,
        log: String::new(),
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::LinuxDeviceCgroupBuilder;

    fn rule(
        allow: bool,
        typ: LinuxDeviceType,
        major: Option<i64>,
        minor: Option<i64>,
        access: &str,
    ) -> LinuxDeviceCgroup {
        let mut b = LinuxDeviceCgroupBuilder::default()
            .allow(allow)
            .typ(typ)
            .access(access);
        if let Some(m) = major {
            b = b.major(m);
        }
        if let Some(m) = minor {
            b = b.minor(m);
        }
        b.build().unwrap()
    }

    /// Runs the program on a request, as the kernel would (a tiny interpreter of the
    /// instructions `program` emits).
    fn run(p: &[Insn], typ: i32, access: i32, major: i32, minor: i32) -> i64 {
        let ctx = [((access << 16) | typ) as u32, major as u32, minor as u32];
        let mut r = [0i64; 11];
        let mut pc = 0usize;
        loop {
            let i = p[pc];
            pc += 1;
            let (d, s) = (i.dst as usize, i.src as usize);
            match i.code {
                LDX_MEM_W => r[d] = i64::from(ctx[(i.off / 4) as usize]),
                ALU64_AND_K => r[d] &= i64::from(i.imm),
                ALU64_RSH_K => r[d] >>= i.imm,
                ALU64_MOV_K => r[d] = i64::from(i.imm),
                ALU64_MOV_X => r[d] = r[s],
                JMP_JNE_K if r[d] != i64::from(i.imm) => pc += i.off as usize,
                JMP_JEQ_K if r[d] == i64::from(i.imm) => pc += i.off as usize,
                JMP_JSET_K if r[d] & i64::from(i.imm) != 0 => pc += i.off as usize,
                JMP_JNE_K | JMP_JEQ_K | JMP_JSET_K => {}
                JMP_EXIT => return r[0],
                c => panic!("unexpected opcode {c:#x}"),
            }
        }
    }

    #[test]
    fn last_matching_rule_wins() {
        use LinuxDeviceType::{A, C};
        let rules = vec![
            rule(false, A, None, None, "rwm"),
            rule(true, C, Some(1), Some(3), "rwm"),
            rule(true, C, Some(136), None, "rw"),
            rule(true, C, Some(1), Some(5), "r"),
            rule(false, C, Some(1), Some(3), "w"),
        ];
        let p = program(&rules).unwrap();
        let rw = ACC_READ | ACC_WRITE;
        assert_eq!(run(&p, DEV_CHAR, ACC_READ, 1, 3), 1, "read /dev/null");
        assert_eq!(
            run(&p, DEV_CHAR, rw, 1, 3),
            0,
            "write /dev/null denied by the last rule"
        );
        assert_eq!(run(&p, DEV_CHAR, rw, 136, 7), 1, "any pty");
        assert_eq!(run(&p, DEV_CHAR, ACC_MKNOD, 136, 7), 0, "no mknod of ptys");
        assert_eq!(run(&p, DEV_CHAR, ACC_READ, 1, 5), 1);
        assert_eq!(run(&p, DEV_CHAR, rw, 1, 5), 0, "only read allowed");
        assert_eq!(run(&p, DEV_BLOCK, ACC_READ, 8, 0), 0, "deny-all");
        // No rules: allowed, as the v1 default.
        assert_eq!(run(&program(&[]).unwrap(), DEV_BLOCK, rw, 8, 0), 1);
        // The encoding of one instruction.
        assert_eq!(
            Insn::new(LDX_MEM_W, 4, 1, 4, 0).to_bytes(),
            [0x61, 0x14, 4, 0, 0, 0, 0, 0]
        );
    }
}
