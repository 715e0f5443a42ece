//! The socket options an emulated socket answers itself, as the TCP
//! socket it stands for: its descriptor's file (a placeholder, a gate, a
//! Unix socket, a bridge) would answer them for itself. That includes
//! SO_ERROR while the connect is the shim's: 0 while it is pending, its
//! error once after it failed.

use crate::mem::{put_int, read_optlen};
use libc::{c_int, c_void, socklen_t};

/// getsockopt(SOL_SOCKET, SO_ERROR) on an emulated socket: `take` hands
/// over the error still to report (0 if none) and forgets it. As in the
/// kernel, the length is read first (an unreadable one is EFAULT and the
/// error stays), and the error is gone once taken, even when the value
/// cannot be written.
pub(crate) fn so_error(
    val: *mut c_void,
    len: *mut socklen_t,
    take: impl FnOnce() -> c_int,
) -> c_int {
    if let Err(e) = read_optlen(len) {
        return e.fail();
    }
    put_int(val, len, take())
}

/// The answer to getsockopt(SOL_SOCKET, `name`) that follows from what
/// the socket is (a TCP stream socket of family `domain`, listening or
/// not), or None for an option the backend asks its stack about.
pub(crate) fn tcp_identity(
    level: c_int,
    name: c_int,
    domain: c_int,
    listening: bool,
) -> Option<c_int> {
    if level != libc::SOL_SOCKET {
        return None;
    }
    match name {
        libc::SO_TYPE => Some(libc::SOCK_STREAM),
        libc::SO_PROTOCOL => Some(libc::IPPROTO_TCP),
        libc::SO_DOMAIN => Some(domain),
        libc::SO_ACCEPTCONN => Some(c_int::from(listening)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn so_error_is_reported_once_and_consumed_even_into_a_bad_buffer() {
        let mut pending = libc::ECONNREFUSED;
        let mut v: c_int = -1;
        let mut len: socklen_t = 4;
        let r = so_error((&mut v as *mut c_int).cast(), &mut len, || {
            std::mem::take(&mut pending)
        });
        assert_eq!((r, v, pending), (0, libc::ECONNREFUSED, 0));

        // An unreadable length leaves the error to report.
        pending = libc::ETIMEDOUT;
        let bad = std::ptr::dangling_mut::<socklen_t>();
        let r = so_error((&mut v as *mut c_int).cast(), bad, || {
            std::mem::take(&mut pending)
        });
        assert_eq!(r, -1);
        assert_eq!(pending, libc::ETIMEDOUT);

        // An unwritable value: EFAULT, and the error is gone.
        let r = so_error(std::ptr::dangling_mut::<c_void>(), &mut len, || {
            std::mem::take(&mut pending)
        });
        assert_eq!(r, -1);
        assert_eq!(
            std::io::Error::last_os_error().raw_os_error(),
            Some(libc::EFAULT)
        );
        assert_eq!(pending, 0);
    }

    #[test]
    fn identity_is_a_tcp_stream_socket_of_its_family() {
        let ask = |name, listening| tcp_identity(libc::SOL_SOCKET, name, libc::AF_INET6, listening);
        assert_eq!(ask(libc::SO_TYPE, false), Some(libc::SOCK_STREAM));
        assert_eq!(ask(libc::SO_PROTOCOL, false), Some(libc::IPPROTO_TCP));
        assert_eq!(ask(libc::SO_DOMAIN, false), Some(libc::AF_INET6));
        assert_eq!(ask(libc::SO_ACCEPTCONN, true), Some(1));
        assert_eq!(ask(libc::SO_ACCEPTCONN, false), Some(0));
        // What the stack knows is the backend's to ask.
        assert_eq!(ask(libc::SO_ERROR, false), None);
        assert_eq!(ask(libc::SO_SNDBUF, false), None);
        assert_eq!(
            tcp_identity(libc::IPPROTO_TCP, libc::SO_TYPE, libc::AF_INET, false),
            None
        );
    }
}
