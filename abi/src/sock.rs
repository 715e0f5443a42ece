//! The read-only socket queries every dropshim crate makes on a host
//! descriptor: its local and peer address.
//!
//! Owns: the one "ask the kernel into a zeroed `sockaddr_storage`, then
//! decode" path. Each call goes through `syscall(2)`, not the libc
//! function of the same name, so it is safe inside `libdropshim.so`,
//! where the exported `getsockname` and `getpeername` are the shim's own
//! hooks and calling them would recurse.

use crate::{decode_storage, SOCKADDR_STORAGE_LEN};
use libc::{c_int, c_long, sockaddr_storage, socklen_t};
use std::io;
use std::net::SocketAddr;

/// The address `fd` is bound to (`getsockname(2)`). The call's own errno
/// on failure (EBADF, ENOTSOCK, ...); EAFNOSUPPORT when the socket is not
/// an IPv4 or IPv6 one.
pub fn local_addr(fd: c_int) -> io::Result<SocketAddr> {
    name(libc::SYS_getsockname, fd)
}

/// The address `fd` is connected to (`getpeername(2)`). The call's own
/// errno on failure (ENOTCONN for a listener or a socket never
/// connected, EBADF, ...); EAFNOSUPPORT when the socket is not an IPv4
/// or IPv6 one.
pub fn peer_addr(fd: c_int) -> io::Result<SocketAddr> {
    name(libc::SYS_getpeername, fd)
}

fn name(call: c_long, fd: c_int) -> io::Result<SocketAddr> {
    // SAFETY: sockaddr_storage is plain data; all-zero is a valid value.
    let mut storage: sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = SOCKADDR_STORAGE_LEN as socklen_t;
    // SAFETY: getsockname(2) and getpeername(2) write at most `len` bytes
    // into `storage` and the address's length into `len`; both are live,
    // writable locals for the whole call and `len` is the storage's size.
    let ret = unsafe {
        libc::syscall(
            call,
            fd,
            &mut storage as *mut sockaddr_storage,
            &mut len as *mut socklen_t,
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    decode_storage(&storage, len).ok_or_else(|| io::Error::from_raw_os_error(libc::EAFNOSUPPORT))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream, UdpSocket};
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixDatagram;

    #[test]
    fn a_connected_pair_reports_both_ends() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("a loopback listener");
        let there = listener.local_addr().expect("the listener's address");
        let client = TcpStream::connect(there).expect("a loopback connection");
        let (server, _) = listener.accept().expect("the accepted connection");
        assert_eq!(local_addr(listener.as_raw_fd()).ok(), Some(there));
        assert_eq!(peer_addr(client.as_raw_fd()).ok(), Some(there));
        assert_eq!(
            local_addr(client.as_raw_fd()).ok(),
            client.local_addr().ok()
        );
        assert_eq!(peer_addr(server.as_raw_fd()).ok(), client.local_addr().ok());
    }

    #[test]
    fn ipv6_is_decoded_too() {
        let Ok(sock) = UdpSocket::bind("[::1]:0") else {
            return; // no IPv6 loopback on this host: nothing to compare
        };
        assert_eq!(local_addr(sock.as_raw_fd()).ok(), sock.local_addr().ok());
    }

    #[test]
    fn errors_are_the_kernels() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("a loopback listener");
        let err = peer_addr(listener.as_raw_fd()).expect_err("a listener has no peer");
        assert_eq!(err.raw_os_error(), Some(libc::ENOTCONN));
        let err = local_addr(-1).expect_err("-1 is no descriptor");
        assert_eq!(err.raw_os_error(), Some(libc::EBADF));
        let (unix, _other) = UnixDatagram::pair().expect("a unix socket pair");
        let err = local_addr(unix.as_raw_fd()).expect_err("a unix socket has no IP address");
        assert_eq!(err.raw_os_error(), Some(libc::EAFNOSUPPORT));
    }
}
