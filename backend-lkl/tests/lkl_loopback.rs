//! Steps 3 and 5: TCP and MPTCP over the library kernel's loopback, and
//! several host threads issuing calls at once. One boot per process, so
//! one test function.

use std::net::SocketAddr;
use std::sync::Arc;

use dropshim_backend_lkl::{BootOptions, Fd, Lkl};

use dropshim_abi::{IPPROTO_MPTCP, MPTCP_INFO, SOL_MPTCP};

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// Server accepts one connection and echoes everything back.
fn echo_once(lkl: &Lkl, listener: Fd) {
    let (c, _) = lkl.accept(listener, 0).expect("accept");
    let mut buf = vec![0u8; 65536];
    loop {
        let n = lkl.recv(c, &mut buf, 0).expect("server recv");
        if n == 0 {
            break;
        }
        lkl.send_all(c, &buf[..n]).expect("server send");
    }
    lkl.close(c).expect("close");
}

fn roundtrip(lkl: &Lkl, proto: i32, port: u16, len: usize, seed: u8) -> Fd {
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let fd = lkl
        .socket(libc::AF_INET, libc::SOCK_STREAM, proto)
        .expect("socket");
    lkl.connect(fd, addr).expect("connect");
    let data = pattern(len, seed);
    let mut got = Vec::with_capacity(len);
    let mut buf = vec![0u8; 65536];
    // Interleave sends and receives so the echo never blocks on a full pipe.
    let mut sent = 0;
    while got.len() < len {
        if sent < len {
            let end = (sent + 16384).min(len);
            lkl.send_all(fd, &data[sent..end]).expect("client send");
            sent = end;
        }
        while got.len() < sent {
            let n = lkl.recv(fd, &mut buf, 0).expect("client recv");
            assert!(n > 0, "early end of stream");
            got.extend_from_slice(&buf[..n]);
        }
    }
    assert!(got == data, "echoed bytes differ");
    fd
}

#[test]
fn lkl_loopback_tcp_mptcp_and_threads() {
    let lkl = Arc::new(Lkl::boot(&BootOptions::default()).expect("boot"));
    lkl.loopback_up().expect("lo up");
    assert_eq!(lkl.sysctl("net.mptcp.enabled").expect("sysctl"), "1");

    for (proto, port) in [(0, 5001u16), (IPPROTO_MPTCP, 5002u16)] {
        let l = lkl
            .socket(libc::AF_INET, libc::SOCK_STREAM, proto)
            .expect("socket");
        lkl.setsockopt_int(l, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)
            .expect("reuseaddr");
        lkl.bind(l, format!("127.0.0.1:{port}").parse().expect("addr"))
            .expect("bind");
        lkl.listen(l, 16).expect("listen");
        let server = {
            let lkl = Arc::clone(&lkl);
            std::thread::spawn(move || echo_once(&lkl, l))
        };
        let fd = roundtrip(&lkl, proto, port, 4 << 20, proto as u8);
        if proto == IPPROTO_MPTCP {
            // The socket really speaks MPTCP: MPTCP_INFO answers.
            let mut info = [0u8; 64];
            let n = lkl
                .getsockopt(fd, SOL_MPTCP, MPTCP_INFO, &mut info)
                .expect("MPTCP_INFO");
            assert!(n > 0, "empty MPTCP_INFO");
        } else {
            let mut info = [0u8; 64];
            assert!(
                lkl.getsockopt(fd, SOL_MPTCP, MPTCP_INFO, &mut info)
                    .is_err(),
                "TCP socket answered MPTCP_INFO"
            );
        }
        let peer = lkl.peer_addr(fd).expect("getpeername");
        assert_eq!(
            peer,
            Some(format!("127.0.0.1:{port}").parse().expect("addr"))
        );
        // A receive timeout ends a blocking receive with EAGAIN (the
        // shim's receiving relay relies on it).
        lkl.set_recv_timeout(fd, std::time::Duration::from_millis(200))
            .expect("SO_RCVTIMEO");
        let started = std::time::Instant::now();
        let mut b = [0u8; 16];
        match lkl.recv(fd, &mut b, 0) {
            Err(dropshim_backend_lkl::Error::Sys { errno, .. }) => {
                assert_eq!(errno, libc::EAGAIN, "recv with a timeout")
            }
            other => panic!("recv with a timeout and no data gave {other:?}"),
        }
        let waited = started.elapsed();
        assert!(
            waited >= std::time::Duration::from_millis(150)
                && waited < std::time::Duration::from_secs(2),
            "timed out after {waited:?}, not about 200 ms"
        );
        lkl.shutdown(fd, libc::SHUT_WR).expect("shutdown");
        let mut b = [0u8; 16];
        assert_eq!(lkl.recv(fd, &mut b, 0).expect("recv eof"), 0);
        lkl.close(fd).expect("close");
        server.join().expect("server thread");
        lkl.close(l).expect("close listener");
    }

    // Step 5: eight host threads at once, each with its own listener and
    // client over MPTCP, blocking calls interleaved in the one kernel.
    let threads: Vec<_> = (0..8u16)
        .map(|i| {
            let lkl = Arc::clone(&lkl);
            std::thread::spawn(move || {
                let port = 6000 + i;
                let l = lkl
                    .socket(libc::AF_INET, libc::SOCK_STREAM, IPPROTO_MPTCP)
                    .expect("socket");
                lkl.bind(l, format!("127.0.0.1:{port}").parse().expect("addr"))
                    .expect("bind");
                lkl.listen(l, 4).expect("listen");
                let server = {
                    let lkl = Arc::clone(&lkl);
                    std::thread::spawn(move || echo_once(&lkl, l))
                };
                let fd = roundtrip(&lkl, IPPROTO_MPTCP, port, 1 << 20, i as u8);
                lkl.close(fd).expect("close");
                server.join().expect("server");
                lkl.close(l).expect("close");
                lkl.getpid()
            })
        })
        .collect();
    let mut pids: Vec<i64> = threads
        .into_iter()
        .map(|t| t.join().expect("worker thread"))
        .collect();
    pids.sort();
    pids.dedup();
    // Each host thread ran in a kernel task of its own.
    assert_eq!(pids.len(), 8, "pids {pids:?}");
    lkl.halt().expect("halt");
}
