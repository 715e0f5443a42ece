//! The Linux socket ABI values and layouts every dropshim backend shares:
//! socket address encoding and decoding, MPTCP's socket constants, and
//! which addresses stay on this host.
//!
//! Owns: the one conversion between `std::net::SocketAddr` and the
//! kernel's `sockaddr_in` / `sockaddr_in6` (in a `sockaddr_storage`), used
//! by the shim, the native, uml and lkl backends and the seccomp
//! supervisor alike: [`encode`] (with [`encode_in_domain`] for a socket of
//! a given family) and [`decode`] (with [`decode_storage`] for a filled
//! `sockaddr_storage`); the MPTCP protocol, socket option and flag numbers
//! of the kernel's uapi ([`IPPROTO_MPTCP`], [`SOL_MPTCP`], [`MPTCP_INFO`],
//! ...); and the address predicates every backend uses to keep local
//! traffic on the host: [`unmapped`], [`is_loopback`] and
//! [`is_local_destination`]; in [`sock`], the one way to read a host
//! socket's local and peer address; and, in [`pass`], the run's pass
//! that lets the shim's own calls through `dropshim run`'s filter.
//!
//! Must not touch: the program's memory, nor change any socket (the
//! queries in [`sock`] only read; a failed one leaves errno as its system
//! call set it, which the caller reports or discards). Callers read the
//! bytes (through whatever checked path they own) and decide what a
//! `None` means for their call (EINVAL, EAFNOSUPPORT, or "not ours").
//! This crate sits below every other dropshim crate and is linked into
//! every shimmed process: it stays small, allocates nothing and never
//! panics on input.
#![warn(missing_docs)]

use libc::{c_int, sockaddr, sockaddr_storage, socklen_t};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

pub mod pass;
pub mod sock;

/// The protocol number of Multipath TCP, as `socket(domain, SOCK_STREAM,
/// IPPROTO_MPTCP)` takes it (262). The `libc` crate's own constant,
/// re-exported so every crate names it from one place.
pub use libc::IPPROTO_MPTCP;

/// The socket option level of MPTCP's own options (284, `SOL_MPTCP` in
/// `linux/socket.h`). Defined here because the `libc` crate does not
/// define it.
pub const SOL_MPTCP: c_int = 284;
/// `getsockopt(SOL_MPTCP, MPTCP_INFO)`: a `struct mptcp_info` about the
/// connection (`linux/mptcp.h`).
pub const MPTCP_INFO: c_int = 1;
/// `getsockopt(SOL_MPTCP, MPTCP_SUBFLOW_ADDRS)`: a `struct
/// mptcp_subflow_data` header, then each subflow's local and remote
/// address (`linux/mptcp.h`).
pub const MPTCP_SUBFLOW_ADDRS: c_int = 3;
/// The bit of `mptcp_info.mptcpi_flags` set once the connection fell back
/// to plain TCP (`linux/mptcp.h`); the same bit in the `MPTCP_INFO` a
/// sock_diag dump carries.
pub const MPTCP_INFO_FLAG_FALLBACK: u32 = 1;

/// `ip` with an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`) turned into
/// the IPv4 address it stands for, as the kernel treats it on an
/// `AF_INET6` socket; every other address as it is.
pub fn unmapped(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Whether `ip` is a loopback address: `127.0.0.0/8`, `::1`, or an
/// IPv4-mapped loopback (`::ffff:127.x.y.z`). Not the unspecified
/// address: binding to it serves every network, not only this host.
pub fn is_loopback(ip: IpAddr) -> bool {
    unmapped(ip).is_loopback()
}

/// Whether connecting to `ip` reaches this host itself: a loopback
/// address ([`is_loopback`]) or the unspecified address (`0.0.0.0`, `::`,
/// `::ffff:0.0.0.0`), which `connect()` takes as "this host".
pub fn is_local_destination(ip: IpAddr) -> bool {
    let ip = unmapped(ip);
    ip.is_loopback() || ip.is_unspecified()
}

/// Bytes of a `sockaddr_in`: family, port, IPv4 address, padding.
pub const SOCKADDR_IN_LEN: usize = std::mem::size_of::<libc::sockaddr_in>();
/// Bytes of a `sockaddr_in6`: family, port, flow info, IPv6 address,
/// scope id.
pub const SOCKADDR_IN6_LEN: usize = std::mem::size_of::<libc::sockaddr_in6>();
/// Bytes of a `sockaddr_storage`, the room for any socket address.
pub const SOCKADDR_STORAGE_LEN: usize = std::mem::size_of::<sockaddr_storage>();

/// A socket address in the kernel's form: a `sockaddr_storage` and how
/// many of its leading bytes are the address (what `bind`, `connect` and
/// the `*addrlen` of `accept` and `getsockname` take).
#[derive(Clone, Copy)]
pub struct RawSockAddr {
    storage: sockaddr_storage,
    len: usize,
}

impl RawSockAddr {
    /// The address as the pointer `bind` and `connect` take; valid for
    /// [`RawSockAddr::len`] bytes as long as `self` lives.
    pub fn as_ptr(&self) -> *const sockaddr {
        (&self.storage as *const sockaddr_storage).cast()
    }

    /// The whole storage (the address in its first [`RawSockAddr::len`]
    /// bytes, zeros after).
    pub fn storage(&self) -> &sockaddr_storage {
        &self.storage
    }

    /// How many bytes the address takes: [`SOCKADDR_IN_LEN`] or
    /// [`SOCKADDR_IN6_LEN`].
    pub fn len(&self) -> socklen_t {
        self.len as socklen_t
    }

    /// Never true: an encoded address always has a family. Present so the
    /// type reads like every other sized container.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The address's bytes, exactly [`RawSockAddr::len`] of them, as they
    /// are copied into a program's buffer.
    pub fn as_bytes(&self) -> &[u8] {
        // SAFETY: every byte of the storage is initialised: it starts
        // all-zero and the encoder writes a sockaddr_in or sockaddr_in6
        // over it, neither of which has padding. `len` is at most its
        // size, and the slice borrows `self`.
        unsafe { std::slice::from_raw_parts(self.as_ptr().cast::<u8>(), self.len) }
    }
}

/// The kernel form of `addr`: a `sockaddr_in` for IPv4, a `sockaddr_in6`
/// for IPv6 (port in network byte order, flow info and scope id carried
/// as they are). The inverse of [`decode`].
pub fn encode(addr: &SocketAddr) -> RawSockAddr {
    // SAFETY: sockaddr_storage is plain data; all-zero is a valid value.
    let mut storage: sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(v4) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: v4.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(v4.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than, and aligned for,
            // every sockaddr type, sockaddr_in included.
            unsafe { std::ptr::write((&mut storage as *mut sockaddr_storage).cast(), sin) };
            SOCKADDR_IN_LEN
        }
        SocketAddr::V6(v6) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: v6.port().to_be(),
                sin6_flowinfo: v6.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: v6.ip().octets(),
                },
                sin6_scope_id: v6.scope_id(),
            };
            // SAFETY: as above, for sockaddr_in6.
            unsafe { std::ptr::write((&mut storage as *mut sockaddr_storage).cast(), sin6) };
            SOCKADDR_IN6_LEN
        }
    };
    RawSockAddr { storage, len }
}

/// The kernel form of `addr` for a socket of family `domain`: an IPv4
/// address on an `AF_INET6` socket becomes the IPv4-mapped IPv6 address
/// (`::ffff:a.b.c.d`), the form such a socket takes and reports;
/// everything else is [`encode`]d as it is.
pub fn encode_in_domain(addr: &SocketAddr, domain: c_int) -> RawSockAddr {
    match (addr, domain) {
        (SocketAddr::V4(v4), libc::AF_INET6) => encode(&SocketAddr::V6(SocketAddrV6::new(
            v4.ip().to_ipv6_mapped(),
            v4.port(),
            0,
            0,
        ))),
        _ => encode(addr),
    }
}

/// The socket address in `bytes`, the first `bytes.len()` bytes of a
/// `sockaddr` (its length is the address length a caller passed or a call
/// returned). `None` when the family is neither `AF_INET` nor `AF_INET6`,
/// or the bytes are too few for the family's structure (as the kernel,
/// which answers such an address with EINVAL or EAFNOSUPPORT). IPv6 flow
/// info and scope id are kept. Bytes beyond the structure are ignored.
pub fn decode(bytes: &[u8]) -> Option<SocketAddr> {
    let family = u16::from_ne_bytes(take(bytes, 0)?);
    let port = u16::from_be_bytes(take(bytes, 2)?);
    match c_int::from(family) {
        libc::AF_INET if bytes.len() >= SOCKADDR_IN_LEN => {
            let ip = Ipv4Addr::from(take::<4>(bytes, 4)?);
            Some(SocketAddr::V4(SocketAddrV4::new(ip, port)))
        }
        libc::AF_INET6 if bytes.len() >= SOCKADDR_IN6_LEN => {
            let flowinfo = u32::from_ne_bytes(take(bytes, 4)?);
            let ip = Ipv6Addr::from(take::<16>(bytes, 8)?);
            let scope_id = u32::from_ne_bytes(take(bytes, 24)?);
            Some(SocketAddr::V6(SocketAddrV6::new(
                ip, port, flowinfo, scope_id,
            )))
        }
        _ => None,
    }
}

/// [`decode`] of the first `len` bytes of `storage` (as `getsockname`,
/// `getpeername` or `accept` filled it and its length); a `len` beyond the
/// storage is taken as the whole storage.
pub fn decode_storage(storage: &sockaddr_storage, len: socklen_t) -> Option<SocketAddr> {
    let n = (len as usize).min(SOCKADDR_STORAGE_LEN);
    // SAFETY: sockaddr_storage is plain data, `n` bytes of it are in
    // bounds, and the slice borrows `storage` for its whole life.
    let bytes =
        unsafe { std::slice::from_raw_parts((storage as *const sockaddr_storage).cast::<u8>(), n) };
    decode(bytes)
}

/// `N` bytes of `bytes` from `at`, if they are all there.
fn take<const N: usize>(bytes: &[u8], at: usize) -> Option<[u8; N]> {
    bytes.get(at..at.checked_add(N)?)?.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("an IP address literal")
    }

    #[test]
    fn the_whole_ipv4_loopback_range_is_loopback() {
        for text in ["127.0.0.1", "127.0.0.0", "127.1.2.3", "127.255.255.255"] {
            assert!(is_loopback(ip(text)), "{text}");
            assert!(is_local_destination(ip(text)), "{text}");
        }
        for text in ["126.255.255.255", "128.0.0.0"] {
            assert!(!is_loopback(ip(text)), "{text}");
            assert!(!is_local_destination(ip(text)), "{text}");
        }
    }

    #[test]
    fn ipv6_loopback_is_loopback() {
        assert!(is_loopback(ip("::1")));
        assert!(is_local_destination(ip("::1")));
        assert!(!is_loopback(ip("::2")));
        assert_eq!(unmapped(ip("::1")), ip("::1"));
    }

    #[test]
    fn v4_mapped_loopback_is_loopback() {
        for text in ["::ffff:127.0.0.1", "::ffff:127.9.8.7"] {
            assert!(is_loopback(ip(text)), "{text}");
            assert!(is_local_destination(ip(text)), "{text}");
        }
        assert_eq!(unmapped(ip("::ffff:127.0.0.1")), ip("127.0.0.1"));
        // IPv4-compatible (::a.b.c.d, deprecated) is not a mapping.
        assert!(!is_loopback(ip("::127.0.0.1")));
    }

    #[test]
    fn unspecified_is_a_local_destination_but_not_loopback() {
        for text in ["0.0.0.0", "::", "::ffff:0.0.0.0"] {
            assert!(!is_loopback(ip(text)), "{text}");
            assert!(is_local_destination(ip(text)), "{text}");
        }
        assert_eq!(unmapped(ip("::ffff:0.0.0.0")), ip("0.0.0.0"));
    }

    #[test]
    fn a_routable_address_is_neither() {
        for text in ["198.18.1.2", "::ffff:198.18.1.2", "2001:db8::1", "fe80::1"] {
            assert!(!is_loopback(ip(text)), "{text}");
            assert!(!is_local_destination(ip(text)), "{text}");
        }
        assert_eq!(unmapped(ip("::ffff:198.18.1.2")), ip("198.18.1.2"));
        assert_eq!(unmapped(ip("2001:db8::1")), ip("2001:db8::1"));
        assert_eq!(unmapped(ip("198.18.1.2")), ip("198.18.1.2"));
    }

    #[test]
    fn mptcp_numbers_are_the_kernel_uapi() {
        assert_eq!(IPPROTO_MPTCP, 262);
        assert_eq!(SOL_MPTCP, 284);
        assert_eq!(MPTCP_INFO, 1);
        assert_eq!(MPTCP_SUBFLOW_ADDRS, 3);
        assert_eq!(MPTCP_INFO_FLAG_FALLBACK, 1);
    }

    fn addr(text: &str) -> SocketAddr {
        text.parse().expect("a socket address literal")
    }

    #[test]
    fn ipv4_survives_the_kernel_form() {
        for text in ["198.18.1.2:8080", "0.0.0.0:0", "255.255.255.255:65535"] {
            let a = addr(text);
            let raw = encode(&a);
            assert_eq!(raw.len() as usize, SOCKADDR_IN_LEN);
            assert_eq!(decode(raw.as_bytes()), Some(a));
            assert_eq!(decode_storage(raw.storage(), raw.len()), Some(a));
        }
    }

    #[test]
    fn ipv4_is_laid_out_as_the_kernel_reads_it() {
        let raw = encode(&addr("198.18.1.2:8080"));
        let b = raw.as_bytes();
        assert_eq!(u16::from_ne_bytes([b[0], b[1]]), libc::AF_INET as u16);
        assert_eq!(&b[2..4], &8080u16.to_be_bytes());
        assert_eq!(&b[4..8], &[198, 18, 1, 2]);
        assert_eq!(&b[8..16], &[0; 8]);
    }

    #[test]
    fn ipv6_keeps_flow_info_and_scope_id() {
        let scoped = SocketAddr::V6(SocketAddrV6::new(
            "fe80::1".parse().expect("an IPv6 literal"),
            443,
            0x0001_2345,
            7,
        ));
        for a in [scoped, addr("[2001:2:0:1::2]:443"), addr("[::]:0")] {
            let raw = encode(&a);
            assert_eq!(raw.len() as usize, SOCKADDR_IN6_LEN);
            let back = decode(raw.as_bytes());
            assert_eq!(back, Some(a));
            let Some(SocketAddr::V6(v6)) = back else {
                panic!("{a} did not decode as IPv6");
            };
            let SocketAddr::V6(want) = a else {
                unreachable!()
            };
            assert_eq!(
                (v6.flowinfo(), v6.scope_id()),
                (want.flowinfo(), want.scope_id())
            );
        }
        // The scope id sits where the kernel reads sin6_scope_id.
        let raw = encode(&scoped);
        // SAFETY: the storage holds a sockaddr_in6 (the family is AF_INET6).
        let sin6 = unsafe { &*(raw.as_ptr() as *const libc::sockaddr_in6) };
        assert_eq!(sin6.sin6_scope_id, 7);
        assert_eq!(u16::from_be(sin6.sin6_port), 443);
    }

    #[test]
    fn a_short_length_is_no_address() {
        for text in ["198.18.1.2:8080", "[2001:2:0:1::2]:443"] {
            let raw = encode(&addr(text));
            let bytes = raw.as_bytes();
            for n in 0..bytes.len() {
                assert_eq!(decode(&bytes[..n]), None, "{text} cut to {n} bytes");
                assert_eq!(decode_storage(raw.storage(), n as socklen_t), None);
            }
        }
    }

    #[test]
    fn a_longer_length_reads_only_the_structure() {
        let a = addr("198.18.1.2:8080");
        let raw = encode(&a);
        let mut bytes = raw.as_bytes().to_vec();
        bytes.extend_from_slice(&[0xff; 40]);
        assert_eq!(decode(&bytes), Some(a));
        assert_eq!(decode_storage(raw.storage(), socklen_t::MAX), Some(a));
    }

    #[test]
    fn other_families_are_no_address() {
        for family in [
            libc::AF_UNSPEC,
            libc::AF_UNIX,
            libc::AF_NETLINK,
            libc::AF_PACKET,
        ] {
            let mut bytes = [0u8; SOCKADDR_STORAGE_LEN];
            bytes[..2].copy_from_slice(&(family as u16).to_ne_bytes());
            assert_eq!(decode(&bytes), None, "family {family}");
        }
        assert_eq!(decode(&[]), None);
    }

    #[test]
    fn ipv4_on_an_ipv6_socket_is_mapped() {
        let raw = encode_in_domain(&addr("198.18.1.2:8080"), libc::AF_INET6);
        assert_eq!(raw.len() as usize, SOCKADDR_IN6_LEN);
        assert_eq!(
            decode(raw.as_bytes()),
            Some(addr("[::ffff:198.18.1.2]:8080"))
        );
    }

    #[test]
    fn the_socket_family_changes_nothing_else() {
        for (text, domain) in [
            ("198.18.1.2:8080", libc::AF_INET),
            ("[2001:2:0:1::2]:443", libc::AF_INET6),
            ("[::ffff:198.18.1.2]:80", libc::AF_INET6),
            // Not unmapped: an AF_INET socket given an IPv6 address gets
            // the kernel's own answer to it.
            ("[::ffff:198.18.1.2]:80", libc::AF_INET),
        ] {
            let a = addr(text);
            assert_eq!(
                encode_in_domain(&a, domain).as_bytes(),
                encode(&a).as_bytes(),
                "{text} on family {domain}"
            );
        }
    }
}
