//! FUSE over io_uring (protocol 7.42, `include/uapi/linux/fuse.h`): the command an
//! `IORING_OP_URING_CMD` carries (`fuse_uring_cmd_req`), and the header block of a ring
//! entry (`fuse_uring_req_header`: the request or reply header, the operation's own
//! header, and `fuse_uring_ent_in_out`).
//!
//! A ring entry is two user buffers the server registers with the kernel: this header
//! block and a payload buffer. The kernel writes a request as its `fuse_in_header` into
//! `in_out`, the operation's first argument (its per-operation header; empty for some
//! operations) into `op_in`, and every further argument into the payload, whose length it
//! puts in `ent_in_out.payload_sz`. A reply is a `fuse_out_header` in `in_out` and all its
//! arguments in the payload. Everything read from these buffers is checked here: a
//! garbled block yields [`Malformed`], never a panic or an out-of-bounds access.

use super::{Malformed, IN_HEADER_LEN, OUT_HEADER_LEN};

/// `FUSE_IO_URING_CMD_REGISTER`: hand the kernel an entry's buffers (the SQE's `addr`
/// points at two iovecs, `len` is 2); it completes when a request is in them.
pub const CMD_REGISTER: u32 = 1;
/// `FUSE_IO_URING_CMD_COMMIT_AND_FETCH`: the reply to `commit_id` is in the entry's
/// buffers; completes when the entry holds the next request.
pub const CMD_COMMIT_AND_FETCH: u32 = 2;

/// Size of `in_out` (room for either header).
pub const IN_OUT_LEN: usize = 128;
/// Size of `op_in`.
pub const OP_IN_LEN: usize = 128;
/// Offset of `ent_in_out` in the header block.
pub const ENT_IN_OUT_OFF: usize = IN_OUT_LEN + OP_IN_LEN;
/// Size of `fuse_uring_req_header` (what the kernel requires of the first iovec).
pub const HEADER_LEN: usize = ENT_IN_OUT_OFF + 32;
/// Size of `fuse_uring_cmd_req` at the start of the SQE's command area.
pub const CMD_REQ_LEN: usize = 24;

/// Encodes `fuse_uring_cmd_req { flags: 0, commit_id, qid }` into an 80-byte command area.
pub fn cmd_req(commit_id: u64, qid: u16) -> [u8; 80] {
    let mut c = [0u8; 80];
    c[8..16].copy_from_slice(&commit_id.to_ne_bytes());
    c[16..18].copy_from_slice(&qid.to_ne_bytes());
    c
}

/// Decodes the `(commit_id, qid)` of a command area (tests and diagnostics).
pub fn parse_cmd_req(c: &[u8]) -> Result<(u64, u16), Malformed> {
    if c.len() < CMD_REQ_LEN {
        return Err(Malformed);
    }
    let mut id = [0u8; 8];
    id.copy_from_slice(&c[8..16]);
    Ok((u64::from_ne_bytes(id), u16::from_ne_bytes([c[16], c[17]])))
}

fn u64_at(b: &[u8], off: usize) -> Result<u64, Malformed> {
    let s = b.get(off..off + 8).ok_or(Malformed)?;
    let mut a = [0u8; 8];
    a.copy_from_slice(s);
    Ok(u64::from_ne_bytes(a))
}

fn u32_at(b: &[u8], off: usize) -> Result<u32, Malformed> {
    let s = b.get(off..off + 4).ok_or(Malformed)?;
    Ok(u32::from_ne_bytes([s[0], s[1], s[2], s[3]]))
}

/// `ent_in_out.commit_id` of a header block: the unique id of the request the kernel put
/// in the entry last.
pub fn commit_id(header: &[u8]) -> Result<u64, Malformed> {
    u64_at(header, ENT_IN_OUT_OFF + 8)
}

/// Rebuilds the request in an entry as the contiguous frame `/dev/fuse` would have given
/// (`fuse_in_header`, the operation header, the payload) into `out`; returns its length.
/// Checks that the lengths agree: the header's `len` is the whole frame, the payload
/// length fits the payload buffer, the operation header fits `op_in`, the frame fits
/// `out`, and the entry's commit id is the header's unique id.
pub fn assemble(header: &[u8], payload: &[u8], out: &mut [u8]) -> Result<usize, Malformed> {
    if header.len() < HEADER_LEN {
        return Err(Malformed);
    }
    let len = u32_at(header, 0)? as usize;
    let unique = u64_at(header, 8)?;
    let payload_sz = u32_at(header, ENT_IN_OUT_OFF + 16)? as usize;
    if unique == 0 || commit_id(header)? != unique || payload_sz > payload.len() {
        return Err(Malformed);
    }
    let op_len = len
        .checked_sub(IN_HEADER_LEN + payload_sz)
        .ok_or(Malformed)?;
    if op_len > OP_IN_LEN || len > out.len() {
        return Err(Malformed);
    }
    out[..IN_HEADER_LEN].copy_from_slice(&header[..IN_HEADER_LEN]);
    out[IN_HEADER_LEN..IN_HEADER_LEN + op_len]
        .copy_from_slice(&header[IN_OUT_LEN..IN_OUT_LEN + op_len]);
    out[IN_HEADER_LEN + op_len..len].copy_from_slice(&payload[..payload_sz]);
    Ok(len)
}

/// Puts a reply frame (`fuse_out_header` and its arguments, as [`super::Writer`] builds
/// it) into an entry: the header into `in_out` with `unique` as its id, the arguments into
/// the payload and their length into `ent_in_out.payload_sz`. A reply larger than the
/// payload buffer, or shorter than a header, is refused.
pub fn place_reply(
    reply: &[u8],
    unique: u64,
    header: &mut [u8],
    payload: &mut [u8],
) -> Result<(), Malformed> {
    if reply.len() < OUT_HEADER_LEN || header.len() < HEADER_LEN {
        return Err(Malformed);
    }
    let args = &reply[OUT_HEADER_LEN..];
    if args.len() > payload.len() {
        return Err(Malformed);
    }
    payload[..args.len()].copy_from_slice(args);
    header[..8].copy_from_slice(&reply[..8]);
    header[8..16].copy_from_slice(&unique.to_ne_bytes());
    let sz = ENT_IN_OUT_OFF + 16;
    header[sz..sz + 4].copy_from_slice(&(args.len() as u32).to_ne_bytes());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(len: u32, opcode: u32, unique: u64, op: &[u8], payload_sz: u32) -> Vec<u8> {
        let mut h = vec![0u8; HEADER_LEN];
        h[0..4].copy_from_slice(&len.to_ne_bytes());
        h[4..8].copy_from_slice(&opcode.to_ne_bytes());
        h[8..16].copy_from_slice(&unique.to_ne_bytes());
        h[16..24].copy_from_slice(&7u64.to_ne_bytes());
        h[IN_OUT_LEN..IN_OUT_LEN + op.len()].copy_from_slice(op);
        h[ENT_IN_OUT_OFF + 8..ENT_IN_OUT_OFF + 16].copy_from_slice(&unique.to_ne_bytes());
        h[ENT_IN_OUT_OFF + 16..ENT_IN_OUT_OFF + 20].copy_from_slice(&payload_sz.to_ne_bytes());
        h
    }

    #[test]
    fn command_round_trips() {
        let c = cmd_req(0x1234_5678_9abc, 3);
        assert_eq!(parse_cmd_req(&c), Ok((0x1234_5678_9abc, 3)));
        assert_eq!(&c[..8], &[0u8; 8]);
        assert!(parse_cmd_req(&c[..20]).is_err());
    }

    #[test]
    fn assembles_header_operation_header_and_payload() {
        // A WRITE-like request: 40 + 8 (op header) + 5 (payload).
        let h = header(53, 16, 42, &[1, 2, 3, 4, 5, 6, 7, 8], 5);
        let payload = *b"hello.....";
        let mut out = [0u8; 64];
        let n = assemble(&h, &payload, &mut out).unwrap();
        assert_eq!(n, 53);
        assert_eq!(&out[..40], &h[..40]);
        assert_eq!(&out[40..48], &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(&out[48..53], b"hello");
        let parsed = super::super::InHeader::parse(&out[..n]).unwrap();
        assert_eq!((parsed.opcode, parsed.unique, parsed.nodeid), (16, 42, 7));
    }

    #[test]
    fn garbled_blocks_are_refused_not_panicked_on() {
        let payload = [0u8; 16];
        let mut out = [0u8; 64];
        // short block
        assert!(assemble(&[0u8; 100], &payload, &mut out).is_err());
        // len smaller than header + payload
        assert!(assemble(&header(41, 1, 5, &[], 4), &payload, &mut out).is_err());
        // operation header longer than op_in
        assert!(assemble(&header(40 + 129, 1, 5, &[], 0), &payload, &mut out).is_err());
        // payload larger than the buffer
        assert!(assemble(&header(40 + 17, 1, 5, &[], 17), &payload, &mut out).is_err());
        // frame larger than the output
        assert!(assemble(&header(40 + 30, 1, 5, &[], 16), &payload, &mut out).is_err());
        // commit id not the unique id, or no id at all
        let mut h = header(40, 1, 5, &[], 0);
        h[ENT_IN_OUT_OFF + 8] = 6;
        assert!(assemble(&h, &payload, &mut out).is_err());
        assert!(assemble(&header(40, 1, 0, &[], 0), &payload, &mut out).is_err());
        // every single-byte corruption of a good block is handled without a panic
        let good = header(53, 16, 42, &[9; 8], 5);
        for i in 0..good.len() {
            for v in [0u8, 0x7f, 0xff] {
                let mut g = good.clone();
                g[i] = v;
                let _ = assemble(&g, &payload, &mut out);
            }
        }
    }

    #[test]
    fn replies_are_placed_with_the_commit_id() {
        let mut reply = vec![0u8; 16];
        reply[0..4].copy_from_slice(&(16u32 + 3).to_ne_bytes());
        reply[4..8].copy_from_slice(&(-2i32).to_ne_bytes());
        reply[8..16].copy_from_slice(&(42u64 | super::super::UNIQUE_RESEND_FLAG).to_ne_bytes());
        reply.extend_from_slice(b"abc");
        let mut h = vec![0u8; HEADER_LEN];
        let mut p = [0u8; 8];
        place_reply(&reply, 42, &mut h, &mut p).unwrap();
        assert_eq!(u32_at(&h, 0), Ok(19));
        assert_eq!(u32_at(&h, 4), Ok((-2i32) as u32));
        assert_eq!(u64_at(&h, 8), Ok(42));
        assert_eq!(u32_at(&h, ENT_IN_OUT_OFF + 16), Ok(3));
        assert_eq!(&p[..3], b"abc");
        assert!(place_reply(&reply[..10], 42, &mut h, &mut p).is_err());
        assert!(place_reply(&[0u8; 30], 42, &mut h, &mut p).is_err());
    }
}
