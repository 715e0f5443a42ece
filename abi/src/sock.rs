//! The socket calls every dropshim crate makes on a host descriptor: its
//! local and peer address, reading and setting its options, and the
//! connected Unix pairs the emulated sockets and bridges are made of.
//!
//! Owns: the one "ask the kernel into a zeroed `sockaddr_storage`, then
//! decode" path ([`local_addr`], [`peer_addr`]) and the one
//! setsockopt/getsockopt pair ([`setsockopt`], [`getsockopt`], with
//! [`setsockopt_int`] and [`getsockopt_int`] for the common `int`
//! option), and [`unix_pair`]. Each call goes through `syscall(2)`, not the libc function
//! of the same name, so it is safe inside `libdropshim.so`, where the
//! exported `getsockname`, `setsockopt`... are the shim's own hooks and
//! calling them would recurse. Every failure is the call's own errno.

use crate::{decode_storage, SOCKADDR_STORAGE_LEN};
use libc::{c_int, c_long, c_void, sockaddr_storage, socklen_t};
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

/// `setsockopt(fd, level, name, value)`: the kernel reads the option's
/// value from `value`.
pub fn setsockopt(fd: c_int, level: c_int, name: c_int, value: &[u8]) -> io::Result<()> {
    // SAFETY: the kernel reads at most `value.len()` bytes from `value`,
    // which is borrowed for the whole call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_setsockopt,
            fd,
            level,
            name,
            value.as_ptr() as *const c_void,
            value.len() as socklen_t,
        )
    };
    check(ret)
}

/// `getsockopt(fd, level, name)` into `buf`; how many bytes the kernel
/// wrote.
pub fn getsockopt(fd: c_int, level: c_int, name: c_int, buf: &mut [u8]) -> io::Result<usize> {
    let mut len = buf.len() as socklen_t;
    // SAFETY: the kernel writes at most `len` (the buffer's length) bytes
    // into `buf` and the length it wrote into `len`; both are borrowed
    // mutably for the whole call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_getsockopt,
            fd,
            level,
            name,
            buf.as_mut_ptr() as *mut c_void,
            &mut len as *mut socklen_t,
        )
    };
    check(ret).map(|()| len as usize)
}

/// An `int` option (`SO_ERROR`, `SO_DOMAIN`, `SO_TYPE`, ...); bytes the
/// kernel did not write read as zero.
pub fn getsockopt_int(fd: c_int, level: c_int, name: c_int) -> io::Result<c_int> {
    let mut buf = [0u8; std::mem::size_of::<c_int>()];
    getsockopt(fd, level, name, &mut buf)?;
    Ok(c_int::from_ne_bytes(buf))
}

/// Sets an `int` option (`SO_REUSEADDR`, `TCP_NODELAY`, ...).
pub fn setsockopt_int(fd: c_int, level: c_int, name: c_int, value: c_int) -> io::Result<()> {
    setsockopt(fd, level, name, &value.to_ne_bytes())
}

/// A connected pair of Unix sockets of type `ty` (`SOCK_STREAM` or
/// `SOCK_SEQPACKET`), both ends close-on-exec and blocking.
pub fn unix_pair(ty: c_int) -> io::Result<[c_int; 2]> {
    let mut fds: [c_int; 2] = [-1; 2];
    // SAFETY: socketpair(2) writes two ints into `fds`, a live local
    // array of exactly two.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_socketpair,
            libc::AF_UNIX,
            ty | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    check(ret).map(|()| fds)
}

fn check(ret: c_long) -> io::Result<()> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
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
    check(ret)?;
    decode_storage(&storage, len).ok_or_else(|| io::Error::from_raw_os_error(libc::EAFNOSUPPORT))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream, UdpSocket};
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
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
    fn an_int_option_set_reads_back() {
        let sock = UdpSocket::bind("127.0.0.1:0").expect("a loopback socket");
        let fd = sock.as_raw_fd();
        for on in [1, 0, 1] {
            setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, on).expect("SO_REUSEADDR");
            assert_eq!(
                getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR).ok(),
                Some(on)
            );
        }
        assert_eq!(
            getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_TYPE).ok(),
            Some(libc::SOCK_DGRAM)
        );
        assert_eq!(
            getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_DOMAIN).ok(),
            Some(libc::AF_INET)
        );
    }

    #[test]
    fn a_byte_option_reports_its_length() {
        let sock = UdpSocket::bind("127.0.0.1:0").expect("a loopback socket");
        let fd = sock.as_raw_fd();
        setsockopt(fd, libc::IPPROTO_IP, libc::IP_TTL, &7i32.to_ne_bytes()).expect("IP_TTL");
        let mut buf = [0xffu8; 16];
        let n = getsockopt(fd, libc::IPPROTO_IP, libc::IP_TTL, &mut buf).expect("IP_TTL");
        assert_eq!(n, 4);
        assert_eq!(buf[..4], 7i32.to_ne_bytes());
        assert_eq!(buf[4..], [0xff; 12]);
    }

    #[test]
    fn option_errors_are_the_kernels() {
        let sock = UdpSocket::bind("127.0.0.1:0").expect("a loopback socket");
        let fd = sock.as_raw_fd();
        let err = setsockopt(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, &[1])
            .expect_err("one byte is too short for an int option");
        assert_eq!(err.raw_os_error(), Some(libc::EINVAL));
        let err = getsockopt_int(-1, libc::SOL_SOCKET, libc::SO_TYPE).expect_err("no descriptor");
        assert_eq!(err.raw_os_error(), Some(libc::EBADF));
        let err = setsockopt_int(fd, libc::SOL_SOCKET, 0x7fff, 1).expect_err("no such option");
        assert_eq!(err.raw_os_error(), Some(libc::ENOPROTOOPT));
    }

    #[test]
    fn a_unix_pair_is_connected_and_closed_on_exec() {
        for ty in [libc::SOCK_STREAM, libc::SOCK_SEQPACKET] {
            let fds = unix_pair(ty).expect("a unix pair");
            // SAFETY: both descriptors were just made and are ours alone.
            let [a, b] = fds.map(|fd| unsafe { OwnedFd::from_raw_fd(fd) });
            assert_eq!(
                getsockopt_int(a.as_raw_fd(), libc::SOL_SOCKET, libc::SO_TYPE).ok(),
                Some(ty)
            );
            for fd in [&a, &b] {
                // SAFETY: F_GETFD takes no argument.
                let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFD) };
                assert_eq!(flags & libc::FD_CLOEXEC, libc::FD_CLOEXEC);
                // SAFETY: as above.
                let fl = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) };
                assert_eq!(fl & libc::O_NONBLOCK, 0, "blocking");
            }
            let mut a = std::fs::File::from(a);
            let mut b = std::fs::File::from(b);
            a.write_all(b"ping").expect("write");
            let mut got = [0u8; 4];
            b.read_exact(&mut got).expect("read");
            assert_eq!(&got, b"ping");
        }
        let err = unix_pair(libc::SOCK_DGRAM + 1000).expect_err("no such socket type");
        assert_eq!(err.raw_os_error(), Some(libc::EINVAL));
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
