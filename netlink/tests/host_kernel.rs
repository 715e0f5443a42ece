//! The netlink layer against the host kernel, in a private network
//! namespace (root): endpoints, flags, limits and flush through
//! `mptcp_pm`, links, addresses and routes through rtnetlink, the
//! `mptcp_pm_events` a connection raises, and sock_diag's view of it.

use dropshim_netlink::diag;
use dropshim_netlink::mptcp::{AddrAttr, EndpointFlags, EventKind, Events, Limits, NewEndpoint};
use dropshim_netlink::route::{Address, Route};
use dropshim_netlink::{host_mptcp_pm, host_rtnl, Conn, HostSocket, Protocol};
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::os::fd::FromRawFd;
use std::time::{Duration, Instant};

/// Runs `f` on a thread of its own in a fresh network namespace (the
/// namespace goes away with the thread).
fn in_new_netns<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(move || {
        // SAFETY: unshare takes a flag only; it moves this thread alone.
        let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
        assert_eq!(
            rc,
            0,
            "unshare(CLONE_NEWNET): {}",
            std::io::Error::last_os_error()
        );
        f()
    })
    .join()
    .expect("namespace thread")
}

#[test]
fn endpoints_limits_links_addresses_and_routes_round_trip() {
    in_new_netns(|| {
        let mut rtnl = host_rtnl().unwrap();
        let lo = rtnl.link_index("lo").unwrap();
        rtnl.set_link_up(lo, true).unwrap();
        assert!(rtnl.links().unwrap().iter().any(|l| l.index == lo && l.up));
        assert!(rtnl.link_states().unwrap().contains(&(lo, true)));
        rtnl.set_link_up(lo, false).unwrap();
        assert!(rtnl.link_states().unwrap().contains(&(lo, false)));
        rtnl.set_link_up(lo, true).unwrap();
        assert!(rtnl.link_states().unwrap().contains(&(lo, true)));
        let a: IpAddr = "198.18.77.1".parse().unwrap();
        let addr = Address {
            index: lo,
            addr: a,
            prefix: 24,
        };
        rtnl.add_address(&addr).unwrap();
        assert!(rtnl.addresses(Some(lo)).unwrap().contains(&addr));
        let e = rtnl.add_address(&addr).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::AlreadyExists, "{e}");
        let gw: IpAddr = "198.18.77.254".parse().unwrap();
        let r = Route::default_via(gw, lo, 117);
        rtnl.add_route(&r).unwrap();
        assert!(rtnl.routes(false, 254).unwrap().contains(&r));
        rtnl.delete_route(&r).unwrap();
        assert!(!rtnl.routes(false, 254).unwrap().contains(&r));

        let mut pm = host_mptcp_pm().unwrap();
        pm.flush_endpoints().unwrap();
        pm.add_endpoint(&NewEndpoint {
            addr: a,
            port: 0,
            flags: EndpointFlags(EndpointFlags::SUBFLOW),
            ifindex: Some(lo),
            id: Some(7),
        })
        .unwrap();
        let ep = pm.endpoint(7).unwrap();
        assert_eq!(
            (ep.addr, ep.flags.0, ep.ifindex),
            (a, EndpointFlags::SUBFLOW, Some(lo))
        );
        pm.set_flags(
            vec![AddrAttr::Id(7), AddrAttr::Flags(EndpointFlags::BACKUP)],
            None,
            None,
        )
        .unwrap();
        let ep = &pm.endpoints().unwrap()[0];
        assert!(ep.flags.contains(EndpointFlags::BACKUP), "{ep:?}");
        // The kernel's own reason comes back on a refused request.
        let err = pm
            .add_endpoint(&NewEndpoint {
                addr: "198.18.77.2".parse().unwrap(),
                port: 0,
                flags: EndpointFlags(EndpointFlags::SIGNAL | EndpointFlags::FULLMESH),
                ifindex: None,
                id: None,
            })
            .unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput, "{err}");
        let limits = Limits {
            subflows: 4,
            add_addr_accepted: 3,
        };
        pm.set_limits(limits).unwrap();
        assert_eq!(pm.limits().unwrap(), limits);
        pm.delete_endpoint(7).unwrap();
        assert!(pm.endpoints().unwrap().is_empty());
        assert!(pm.endpoint(7).is_err());
    });
}

#[test]
fn a_connection_raises_events_and_shows_in_sock_diag() {
    in_new_netns(|| {
        let mut rtnl = host_rtnl().unwrap();
        let lo = rtnl.link_index("lo").unwrap();
        rtnl.set_link_up(lo, true).unwrap();
        let pm = host_mptcp_pm().unwrap();
        let sock = HostSocket::open(Protocol::Generic).unwrap();
        sock.set_recv_timeout(Duration::from_secs(5)).unwrap();
        let mut events = Events::subscribe(sock, pm.family()).unwrap();

        // An MPTCP listener and client over loopback.
        let mptcp_socket = || {
            // SAFETY: socket(2) with integer arguments; checked below.
            let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, libc::IPPROTO_MPTCP) };
            assert!(fd >= 0, "MPTCP socket: {}", std::io::Error::last_os_error());
            fd
        };
        let sockaddr = |port: u16| dropshim_abi::encode(&SocketAddr::from(([127, 0, 0, 1], port)));
        let lfd = mptcp_socket();
        let any = sockaddr(0);
        // SAFETY: `any` is a valid socket address of the size passed; `lfd` is ours.
        unsafe {
            assert_eq!(libc::bind(lfd, any.as_ptr(), any.len()), 0);
            assert_eq!(libc::listen(lfd, 4), 0);
        }
        // SAFETY: `lfd` is a listening socket owned by the listener from now on.
        let listener = unsafe { TcpListener::from_raw_fd(lfd) };
        let port = listener.local_addr().unwrap().port();
        let cfd = mptcp_socket();
        let to = sockaddr(port);
        // SAFETY: `to` is a valid socket address of the size passed; `cfd` is ours.
        let rc = unsafe { libc::connect(cfd, to.as_ptr(), to.len()) };
        assert_eq!(rc, 0, "connect: {}", std::io::Error::last_os_error());
        // SAFETY: `cfd` is connected and owned by the stream from now on.
        let mut client = unsafe { std::net::TcpStream::from_raw_fd(cfd) };
        let (mut server, _) = listener.accept().unwrap();
        client.write_all(b"ping").unwrap();
        let mut buf = [0u8; 4];
        server.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"ping");

        let deadline = Instant::now() + Duration::from_secs(5);
        let mut seen = Vec::new();
        while Instant::now() < deadline
            && !seen
                .iter()
                .any(|e: &dropshim_netlink::mptcp::Event| e.kind == Some(EventKind::Established))
        {
            seen.extend(events.wait().unwrap());
        }
        let est = seen
            .iter()
            .find(|e| e.kind == Some(EventKind::Established))
            .unwrap_or_else(|| panic!("no established event in {seen:?}"));
        let token = est.token.expect("token");
        let ends = [est.local.unwrap().port(), est.remote.unwrap().port()];
        assert!(ends.contains(&port), "{est:?} port {port}");

        let conns = diag::connections_over(&mut Conn::new(
            HostSocket::open(Protocol::SockDiag).unwrap(),
        ))
        .unwrap();
        let c = conns
            .iter()
            .find(|c| c.token == token)
            .unwrap_or_else(|| panic!("no connection with token {token:08x}: {conns:?}"));
        assert!(c.local.port() == port || c.remote.port() == port, "{c:?}");
        assert!(!c.fallback, "{c:?}");
    });
}
