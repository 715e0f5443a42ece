//! Destinations that name this host stay on it. The uml guest's and the
//! library kernel's loopback are not the host's: a program that connects
//! to 127.0.0.1, ::1 or the unspecified address (`0.0.0.0`, `::ffff:0.0.0.0`,
//! which connect() takes as this host) means a service of this host, and
//! one that binds a loopback address serves this host's programs. Such a
//! socket is handed back to the host kernel as a plain TCP socket under
//! every one of its descriptors, and the shim stops answering for it.
//! How the host socket gets under the descriptors is the backend's (the
//! uml placeholder already is one; lkl swaps one in).

use super::table::{Emulated, Table};
use crate::fdtable::{self, FIXED, TRACKED};
use dropshim_abi::{is_local_destination, is_loopback};
use libc::c_int;
use std::net::IpAddr;

/// Whether connect() to `ip` stays on the host: loopback and the
/// unspecified address, IPv4-mapped or not.
pub(crate) fn connect_stays_on_host(ip: IpAddr) -> bool {
    is_local_destination(ip)
}

/// Whether bind() to `ip` stays on the host: loopback only (the
/// unspecified address is every address of the stack the socket is on).
pub(crate) fn bind_stays_on_host(ip: IpAddr) -> bool {
    is_loopback(ip)
}

/// The socket `fd` names is the host's from now on: every one of its
/// descriptors leaves the table and is marked a plain TCP socket the
/// shim does not answer for. Returns the socket, for the backend to let
/// go of what it held (None if `fd` named none, or a twin was left).
pub(crate) fn hand_back<S: Emulated>(table: &mut Table<S>, fd: c_int) -> Option<S> {
    let mut sock = None;
    for f in table.fds_with(fd) {
        if let Some(s) = table.remove(f) {
            sock = Some(s);
        }
        fdtable::set(f, TRACKED | FIXED);
    }
    sock
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::emulated::epoll::Epolls;

    #[derive(Default)]
    struct S(Epolls);

    impl Emulated for S {
        fn epolls(&mut self) -> &mut Epolls {
            &mut self.0
        }
    }

    #[test]
    fn local_destinations_and_loopback_binds_stay_on_the_host() {
        let ip = |s: &str| s.parse::<IpAddr>().expect("an address");
        for dest in [
            "127.0.0.1",
            "127.3.2.1",
            "::1",
            "0.0.0.0",
            "::",
            "::ffff:0.0.0.0",
        ] {
            assert!(connect_stays_on_host(ip(dest)), "{dest}");
        }
        assert!(!connect_stays_on_host(ip("10.0.1.2")));
        assert!(bind_stays_on_host(ip("::ffff:127.0.0.1")));
        assert!(!bind_stays_on_host(ip("0.0.0.0")));
        assert!(!bind_stays_on_host(ip("::")));
    }

    #[test]
    fn handing_back_takes_every_twin_and_marks_them_the_hosts() {
        // Descriptor numbers far above any this test process opens.
        let (a, b) = (900_001, 900_002);
        let mut t = Table::new();
        t.insert(a, S::default());
        assert!(t.dup(a, b));
        assert!(hand_back(&mut t, b).is_some());
        assert!(t.get(a).is_none() && t.get(b).is_none());
        for fd in [a, b] {
            assert_eq!(fdtable::take(fd), TRACKED | FIXED);
        }
        assert!(hand_back(&mut t, a).is_none());
    }
}
