//! Passing descriptors over a Unix socket (SCM_RIGHTS), with the payload bytes they
//! travel with. Neither direction allocates, so the file server's hot path and code
//! between fork and exec may use them.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

/// Most descriptors one message may carry in either direction here.
pub const MAX_FDS: usize = 16;

/// Control-message room for [`MAX_FDS`] descriptors (CMSG_SPACE(64) = 80 bytes on 64-bit
/// targets), 8-byte aligned for `cmsghdr`.
type ControlBuf = [u64; 12];

fn cmsg_space(nfds: usize) -> usize {
    // `nfds` is at most MAX_FDS, so the length fits a u32.
    let len = (nfds * std::mem::size_of::<RawFd>()) as u32;
    // SAFETY: CMSG_SPACE is arithmetic on its argument.
    unsafe { libc::CMSG_SPACE(len) as usize }
}

/// `sendmsg(2)` of `payload` on a connected socket with `fds` attached (none: no control
/// message). `flags` are passed as given (add MSG_NOSIGNAL to get EPIPE instead of
/// SIGPIPE). More than [`MAX_FDS`] descriptors: EINVAL. Returns the bytes sent.
pub fn send(sock: RawFd, payload: &[u8], fds: &[RawFd], flags: i32) -> io::Result<usize> {
    if fds.len() > MAX_FDS {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    let mut iov = libc::iovec {
        iov_base: payload.as_ptr() as *mut libc::c_void,
        iov_len: payload.len(),
    };
    let mut cbuf: ControlBuf = [0; 12];
    // SAFETY: all-zero is a valid msghdr (no name, no control).
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if !fds.is_empty() {
        let data_len = std::mem::size_of_val(fds);
        msg.msg_control = cbuf.as_mut_ptr().cast();
        msg.msg_controllen = cmsg_space(fds.len()) as _;
        // SAFETY: `msg_control` points to `cbuf`, at least CMSG_SPACE(data_len) bytes and
        // aligned for cmsghdr, so CMSG_FIRSTHDR is non-null and `data_len` bytes of its
        // data are writable; `fds` is valid for `data_len` bytes.
        unsafe {
            let c = libc::CMSG_FIRSTHDR(&msg);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN(data_len as u32) as _;
            std::ptr::copy_nonoverlapping(fds.as_ptr().cast::<u8>(), libc::CMSG_DATA(c), data_len);
        }
    }
    // SAFETY: `msg` points to `iov` (valid for `payload`) and `cbuf`, alive for the call.
    let n = unsafe { libc::sendmsg(sock, &msg, flags) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// What [`recv`] received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Received {
    /// Payload bytes received (up to the buffer's length).
    pub len: usize,
    /// `msg_flags` of the message (MSG_TRUNC: the payload was cut; MSG_CTRUNC:
    /// descriptors did not fit and the kernel closed them).
    pub flags: i32,
    /// How many descriptors were stored in the caller's slots.
    pub nfds: usize,
}

/// `recvmsg(2)` of one message into `buf` with MSG_CMSG_CLOEXEC (plus `flags`). Room is
/// made for `slots.len()` descriptors (at most [`MAX_FDS`]); those received are stored,
/// owned, in `slots` from the first on. Descriptors beyond the room are closed by the
/// kernel (MSG_CTRUNC), so nothing received is ever left open unowned.
pub fn recv(
    sock: RawFd,
    buf: &mut [u8],
    flags: i32,
    slots: &mut [Option<OwnedFd>],
) -> io::Result<Received> {
    let room = slots.len().min(MAX_FDS);
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let mut cbuf: ControlBuf = [0; 12];
    // SAFETY: all-zero is a valid msghdr.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if room > 0 {
        msg.msg_control = cbuf.as_mut_ptr().cast();
        msg.msg_controllen = cmsg_space(room) as _;
    }
    // SAFETY: `msg` points to `iov` (valid for `buf`) and `cbuf`, alive for the call.
    let n = unsafe { libc::recvmsg(sock, &mut msg, flags | libc::MSG_CMSG_CLOEXEC) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut out = Received {
        len: n as usize,
        flags: msg.msg_flags,
        nfds: 0,
    };
    if room == 0 {
        return Ok(out);
    }
    // SAFETY: walking the control messages the kernel wrote into `cbuf` with the CMSG
    // macros, which stay within `msg_controllen`; SCM_RIGHTS data is an array of ints,
    // each a descriptor now installed in our table and owned by nobody else.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(c) as *const RawFd;
                let count = ((*c).cmsg_len as usize - libc::CMSG_LEN(0) as usize)
                    / std::mem::size_of::<RawFd>();
                for i in 0..count {
                    let fd = OwnedFd::from_raw_fd(std::ptr::read_unaligned(data.add(i)));
                    if out.nfds < room {
                        slots[out.nfds] = Some(fd);
                        out.nfds += 1;
                    }
                }
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Seek, Write};
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;

    #[test]
    fn descriptors_travel_with_their_payload() {
        let (a, b) = UnixStream::pair().unwrap();
        let mut f = tempfile_in_tmp();
        f.write_all(b"hello").unwrap();
        let n = send(
            a.as_raw_fd(),
            b"one",
            &[f.as_raw_fd(), f.as_raw_fd()],
            libc::MSG_NOSIGNAL,
        )
        .unwrap();
        assert_eq!(n, 3);
        let mut buf = [0u8; 16];
        let mut slots: [Option<OwnedFd>; 4] = Default::default();
        let r = recv(b.as_raw_fd(), &mut buf, 0, &mut slots).unwrap();
        assert_eq!((r.len, r.nfds), (3, 2));
        assert_eq!(r.flags & (libc::MSG_TRUNC | libc::MSG_CTRUNC), 0);
        assert_eq!(&buf[..3], b"one");
        let mut got = std::fs::File::from(slots[0].take().unwrap());
        got.rewind().unwrap();
        let mut s = String::new();
        got.read_to_string(&mut s).unwrap();
        assert_eq!(s, "hello");
        // SAFETY: F_GETFD only queries the descriptor.
        let fdflags = unsafe { libc::fcntl(got.as_raw_fd(), libc::F_GETFD) };
        assert!(fdflags & libc::FD_CLOEXEC != 0, "received close-on-exec");
    }

    #[test]
    fn without_room_descriptors_are_cut_and_payload_only_works() {
        let (a, b) = std::os::unix::net::UnixDatagram::pair().unwrap();
        let f = tempfile_in_tmp();
        send(a.as_raw_fd(), b"x", &[f.as_raw_fd(); 3], 0).unwrap();
        let mut buf = [0u8; 4];
        let mut slots: [Option<OwnedFd>; 1] = Default::default();
        let r = recv(b.as_raw_fd(), &mut buf, 0, &mut slots).unwrap();
        assert_eq!(r.nfds, 1);
        assert!(r.flags & libc::MSG_CTRUNC != 0);
        send(a.as_raw_fd(), b"plain", &[], 0).unwrap();
        let r = recv(b.as_raw_fd(), &mut buf, 0, &mut []).unwrap();
        assert_eq!(r.len, 4);
        assert!(r.flags & libc::MSG_TRUNC != 0);
        assert_eq!(
            send(a.as_raw_fd(), b"x", &[0; MAX_FDS + 1], 0)
                .unwrap_err()
                .raw_os_error(),
            Some(libc::EINVAL)
        );
        let (a, b) = UnixStream::pair().unwrap();
        drop(b);
        assert_eq!(
            send(a.as_raw_fd(), b"x", &[], libc::MSG_NOSIGNAL)
                .unwrap_err()
                .raw_os_error(),
            Some(libc::EPIPE)
        );
    }

    fn tempfile_in_tmp() -> std::fs::File {
        let p = std::env::temp_dir().join(format!(
            "porta-sys-scm-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&p)
            .unwrap();
        std::fs::remove_file(&p).unwrap();
        f
    }
}
