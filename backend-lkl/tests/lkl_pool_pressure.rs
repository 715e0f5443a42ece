//! Both ends of one MPTCP connection in the library kernel at their full
//! buffer ceilings: a 16 MiB send into a peer that is not reading fills
//! the sender's send buffer and the receiver's window, then the peer
//! reads everything. With the kernel's own TCP pool the two buffers put
//! it in memory pressure and 6.12's MPTCP receiver dropped data its
//! subflow had acknowledged: on this one subflow the drain took 23 s
//! instead of milliseconds, on two (the shim's signal test) it never
//! finished. The pool `boot` sizes holds them. One test per file: a
//! process boots its kernel once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use dropshim_abi::IPPROTO_MPTCP;
use dropshim_backend_lkl::{BootOptions, Error, Lkl};
use sha2::{Digest, Sha256};

const LEN: usize = 16 << 20;

fn pattern() -> Vec<u8> {
    // xorshift: no run repeats, so a lost or shifted block shows.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..LEN)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// `MPTcpExt` `name` in the kernel's /proc/net/netstat.
fn mptcp_counter(lkl: &Lkl, name: &str) -> u64 {
    let text = lkl.read_file("/proc/net/netstat").expect("netstat");
    let text = String::from_utf8_lossy(&text).into_owned();
    let rows: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("MPTcpExt:"))
        .collect();
    assert_eq!(rows.len(), 2, "MPTcpExt rows in {text}");
    let i = rows[0]
        .split_whitespace()
        .position(|n| n == name)
        .unwrap_or_else(|| panic!("no {name} in {}", rows[0]));
    rows[1]
        .split_whitespace()
        .nth(i)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{name} in {}", rows[1]))
}

#[test]
fn lkl_full_send_and_receive_buffers_of_one_connection_drain_intact() {
    let lkl = Arc::new(Lkl::boot(&BootOptions::default()).expect("boot"));
    lkl.loopback_up().expect("lo up");
    let addr = "127.0.0.1:5071".parse().expect("addr");
    let l = lkl
        .socket(libc::AF_INET, libc::SOCK_STREAM, IPPROTO_MPTCP)
        .expect("socket");
    lkl.bind(l, addr).expect("bind");
    lkl.listen(l, 1).expect("listen");
    let client = lkl
        .socket(libc::AF_INET, libc::SOCK_STREAM, IPPROTO_MPTCP)
        .expect("socket");
    lkl.connect(client, addr).expect("connect");
    let (server, _) = lkl.accept(l, 0).expect("accept");
    let pruned_before = mptcp_counter(&lkl, "RcvPruned");

    let data = Arc::new(pattern());
    let want = Sha256::digest(&data[..]);
    let sender = {
        let (lkl, data) = (Arc::clone(&lkl), Arc::clone(&data));
        std::thread::spawn(move || {
            let r = lkl.send_all(client, &data);
            let _ = lkl.shutdown(client, libc::SHUT_WR);
            r
        })
    };
    // The peer reads only once the sender holds megabytes the peer has
    // not acknowledged: the receive window is full.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let unacked = lkl.unacked(client).expect("SIOCOUTQ");
        if unacked >= 2 << 20 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the sender queued only {unacked} bytes in 20 s"
        );
        std::thread::yield_now();
    }

    lkl.set_recv_timeout(server, Duration::from_secs(10))
        .expect("SO_RCVTIMEO");
    let mut got = Sha256::new();
    let mut count = 0usize;
    let mut buf = vec![0u8; 1 << 20];
    let started = Instant::now();
    loop {
        match lkl.recv(server, &mut buf, 0) {
            Ok(0) => break,
            Ok(n) => {
                got.update(&buf[..n]);
                count += n;
            }
            Err(Error::Sys { errno, .. }) if errno == libc::EAGAIN => panic!(
                "nothing arrived for 10 s after {count} of {LEN} bytes \
                 (sender's unacknowledged bytes {:?}, RcvPruned {} -> {})",
                lkl.unacked(client),
                pruned_before,
                mptcp_counter(&lkl, "RcvPruned")
            ),
            Err(e) => panic!("recv after {count} bytes: {e}"),
        }
    }
    let took = started.elapsed();
    sender.join().expect("sender thread").expect("send");
    assert_eq!(count, LEN, "bytes received");
    assert!(got.finalize() == want, "the bytes received differ");
    let pruned = mptcp_counter(&lkl, "RcvPruned") - pruned_before;
    let pool = lkl.sysctl("net.ipv4.tcp_mem").expect("tcp_mem");
    eprintln!(
        "16 MiB drained in {took:?} after the window filled; RcvPruned +{pruned}; tcp_mem {pool}"
    );
    // With the kernel's own pool: RcvPruned +56 and 23 s, every
    // acknowledged block the receiver dropped waiting for the sender's
    // connection-level retransmission (on two subflows it never came).
    assert_eq!(
        pruned, 0,
        "the receiver dropped acknowledged data (RcvPruned) with tcp_mem {pool}"
    );
    assert!(
        took < Duration::from_secs(10),
        "draining took {took:?} (a few ms without drops)"
    );
    let _ = lkl.halt();
}
