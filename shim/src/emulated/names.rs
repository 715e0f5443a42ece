//! The names of an emulated socket, as getsockname() and getpeername()
//! answer them: the wildcard address of its family before bind or
//! connect give it one, ENOTCONN for a peer it does not have (before any
//! of the program's pointers is looked at), and the kernel's rules for
//! those pointers ([`crate::mem::put_name`]). Where the addresses come
//! from (the uml guest's reply, the library kernel) is the backend's.

use crate::mem::put_name;
use crate::Errno;
use libc::{c_int, sockaddr, socklen_t};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The address of a socket of family `domain` that is neither bound nor
/// connected: the unspecified address, port 0.
pub(crate) fn wildcard(domain: c_int) -> SocketAddr {
    if domain == libc::AF_INET6 {
        SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0)
    } else {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0)
    }
}

/// getsockname()'s answer for a socket of family `domain` whose own
/// address is `local` (None: it has none yet, the wildcard).
pub(crate) fn sock_name(
    local: Option<SocketAddr>,
    domain: c_int,
    addr: *mut sockaddr,
    len: *mut socklen_t,
) -> c_int {
    answer(local.unwrap_or_else(|| wildcard(domain)), domain, addr, len)
}

/// getpeername()'s answer for a socket of family `domain` connected to
/// `peer` (None: not connected, or the connect is still pending).
pub(crate) fn peer_name(
    peer: Option<SocketAddr>,
    domain: c_int,
    addr: *mut sockaddr,
    len: *mut socklen_t,
) -> c_int {
    match peer {
        Some(p) => answer(p, domain, addr, len),
        None => Errno(libc::ENOTCONN).fail(),
    }
}

fn answer(a: SocketAddr, domain: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int {
    match put_name(a, domain, addr, len) {
        Ok(()) => 0,
        Err(e) => e.fail(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errno() -> c_int {
        std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
    }

    #[test]
    fn a_fresh_socket_is_named_the_wildcard_of_its_family() {
        let mut raw = [0xffu8; 28];
        let mut len: socklen_t = 28;
        let r = sock_name(None, libc::AF_INET6, raw.as_mut_ptr().cast(), &mut len);
        assert_eq!(r, 0);
        assert_eq!(len, 28);
        assert_eq!(dropshim_abi::decode(&raw), Some(wildcard(libc::AF_INET6)));
        let mut len: socklen_t = 16;
        let r = sock_name(None, libc::AF_INET, raw.as_mut_ptr().cast(), &mut len);
        assert_eq!((r, len), (0, 16));
        assert_eq!(
            dropshim_abi::decode(&raw[..16]),
            Some("0.0.0.0:0".parse().expect("an address"))
        );
    }

    #[test]
    fn bad_buffers_are_efault_and_a_missing_peer_is_enotconn_first() {
        let mut raw = [0u8; 28];
        let mut len: socklen_t = 28;
        let r = sock_name(None, libc::AF_INET, std::ptr::null_mut(), &mut len);
        assert_eq!((r, errno()), (-1, libc::EFAULT));
        let r = sock_name(
            None,
            libc::AF_INET,
            raw.as_mut_ptr().cast(),
            std::ptr::null_mut(),
        );
        assert_eq!((r, errno()), (-1, libc::EFAULT));
        let bad = std::ptr::dangling_mut::<sockaddr>();
        let r = sock_name(None, libc::AF_INET, bad, &mut len);
        assert_eq!((r, errno()), (-1, libc::EFAULT));
        // Not connected: ENOTCONN, whatever the pointers.
        let r = peer_name(None, libc::AF_INET, bad, std::ptr::null_mut());
        assert_eq!((r, errno()), (-1, libc::ENOTCONN));
        // A zero-length buffer asks only for the length.
        let mut zero: socklen_t = 0;
        let r = sock_name(None, libc::AF_INET6, std::ptr::null_mut(), &mut zero);
        assert_eq!((r, zero), (0, 28));
    }
}
