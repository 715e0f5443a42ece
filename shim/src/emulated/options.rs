//! The socket options an emulated socket answers itself, as the TCP
//! socket it stands for: its descriptor's file (a placeholder, a gate, a
//! Unix socket, a bridge) would answer them for itself.

use libc::c_int;

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
