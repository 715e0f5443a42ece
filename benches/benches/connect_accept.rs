//! What the shim adds to connect() and accept() on the native backend.
//!
//! Runs in a private network namespace (root) on a non-loopback address,
//! so the shim really upgrades these sockets to MPTCP. Each case times one
//! call only (criterion `iter_custom`): `connect` times the client's
//! connect() to a listening socket (socket creation, accept and close are
//! outside the clock); `accept` times the server's accept() of a
//! connection already queued. `bare` cases enter the kernel with
//! syscall(2), bypassing the shim's hooks; `shimmed` goes through libc,
//! i.e. the shim. A shimmed TCP request becomes MPTCP, so the fair
//! baseline is bare MPTCP; bare TCP is shown too.
//!
//! uml: per-call costs on the uml backend need a running uml device; this
//! suite measures the native backend only (see `dropshim bench` for uml).

use criterion::{criterion_group, criterion_main, Criterion};
use dropshim_abi::RawSockAddr;
use dropshim_benches::{bench_sockaddr, ensure_preloaded, private_netns, IPPROTO_MPTCP};
use std::time::{Duration, Instant};

/// How sockets are opened and called.
#[derive(Clone, Copy)]
enum Way {
    /// syscall(2) with this protocol: no shim involved.
    Bare(libc::c_int),
    /// libc calls, protocol 0: through the shim's hooks.
    Shimmed,
}

fn sock(way: Way) -> libc::c_int {
    // SAFETY: plain socket creation; the result is checked.
    let fd = unsafe {
        match way {
            Way::Bare(p) => {
                libc::syscall(libc::SYS_socket, libc::AF_INET, libc::SOCK_STREAM, p) as libc::c_int
            }
            Way::Shimmed => libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0),
        }
    };
    assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
    fd
}

fn close(way: Way, fd: libc::c_int) {
    // SAFETY: closes a descriptor this benchmark owns.
    unsafe {
        match way {
            Way::Bare(_) => {
                libc::syscall(libc::SYS_close, fd);
            }
            Way::Shimmed => {
                libc::close(fd);
            }
        }
    }
}

fn connect(way: Way, fd: libc::c_int, addr: &RawSockAddr) -> libc::c_int {
    let (p, len) = (addr.as_ptr(), addr.len());
    // SAFETY: `p` points to a valid socket address of `len` bytes.
    unsafe {
        match way {
            Way::Bare(_) => libc::syscall(libc::SYS_connect, fd, p, len) as libc::c_int,
            Way::Shimmed => libc::connect(fd, p, len),
        }
    }
}

fn accept(way: Way, fd: libc::c_int) -> libc::c_int {
    let null = std::ptr::null_mut::<libc::sockaddr>();
    let nolen = std::ptr::null_mut::<libc::socklen_t>();
    // SAFETY: accept with no address buffer is allowed.
    let c = unsafe {
        match way {
            Way::Bare(_) => libc::syscall(libc::SYS_accept4, fd, null, nolen, 0) as libc::c_int,
            Way::Shimmed => libc::accept(fd, null, nolen),
        }
    };
    assert!(c >= 0, "accept: {}", std::io::Error::last_os_error());
    c
}

/// A listener on the bench address, opened and bound the `way` given.
struct Listener {
    fd: libc::c_int,
    way: Way,
    addr: RawSockAddr,
}

impl Listener {
    fn new(way: Way, port: u16) -> Listener {
        let fd = sock(way);
        let addr = bench_sockaddr(port);
        let one: libc::c_int = 1;
        let (p, len) = (addr.as_ptr(), addr.len());
        let optp = &one as *const libc::c_int as *const libc::c_void;
        let optlen = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: valid option buffer and address of the stated sizes.
        // Bare listeners use syscall(2) throughout, so the shim never sees
        // them (it would otherwise manage a socket it did not create).
        let (r1, r2, r3) = unsafe {
            match way {
                Way::Bare(_) => (
                    libc::syscall(
                        libc::SYS_setsockopt,
                        fd,
                        libc::SOL_SOCKET,
                        libc::SO_REUSEADDR,
                        optp,
                        optlen,
                    ),
                    libc::syscall(libc::SYS_bind, fd, p, len),
                    libc::syscall(libc::SYS_listen, fd, 1024),
                ),
                Way::Shimmed => (
                    i64::from(libc::setsockopt(
                        fd,
                        libc::SOL_SOCKET,
                        libc::SO_REUSEADDR,
                        optp,
                        optlen,
                    )),
                    i64::from(libc::bind(fd, p, len)),
                    i64::from(libc::listen(fd, 1024)),
                ),
            }
        };
        assert_eq!(
            (r1, r2, r3),
            (0, 0, 0),
            "listener setup: {}",
            std::io::Error::last_os_error()
        );
        Listener { fd, way, addr }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        close(self.way, self.fd);
    }
}

/// Time only connect(): a fresh client socket per iteration.
fn time_connect(way: Way, l: &Listener, iters: u64) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        let c = sock(way);
        let t = Instant::now();
        let r = connect(way, c, &l.addr);
        total += t.elapsed();
        assert_eq!(r, 0, "connect: {}", std::io::Error::last_os_error());
        let a = accept(l.way, l.fd);
        // Server side first: TIME_WAIT stays off the client's ports.
        close(l.way, a);
        close(way, c);
    }
    total
}

/// Time only accept(): the connection is queued before the clock starts.
fn time_accept(way: Way, l: &Listener, iters: u64) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        let c = sock(way);
        assert_eq!(connect(way, c, &l.addr), 0, "connect");
        let t = Instant::now();
        let a = accept(l.way, l.fd);
        total += t.elapsed();
        close(l.way, a);
        close(way, c);
    }
    total
}

/// SO_PROTOCOL of a socket, as the kernel sees it.
/// (Through syscall(2), not libc: the shim answers SO_PROTOCOL with TCP
/// so programs cannot tell.) -1 when the socket cannot say.
fn protocol(fd: libc::c_int) -> libc::c_int {
    dropshim_abi::sock::getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_PROTOCOL).unwrap_or(-1)
}

/// The shimmed case only means something if the shim really made both
/// ends MPTCP: check once before measuring.
fn check_shim_upgrades() {
    let l = Listener::new(Way::Shimmed, 30999);
    let c = sock(Way::Shimmed);
    assert_eq!(connect(Way::Shimmed, c, &l.addr), 0, "connect");
    let a = accept(Way::Shimmed, l.fd);
    let (pc, pa) = (protocol(c), protocol(a));
    close(Way::Shimmed, a);
    close(Way::Shimmed, c);
    if (pc, pa) != (IPPROTO_MPTCP, IPPROTO_MPTCP) {
        eprintln!("the shim did not upgrade to MPTCP (client protocol {pc}, accepted {pa}): is net.mptcp.enabled=1?");
        std::process::exit(2);
    }
}

fn connect_accept(c: &mut Criterion) {
    ensure_preloaded();
    private_netns();
    check_shim_upgrades();
    let cases = [
        ("bare TCP (syscall)", Way::Bare(libc::IPPROTO_TCP)),
        ("bare MPTCP (syscall)", Way::Bare(IPPROTO_MPTCP)),
        ("shimmed (libc, native backend)", Way::Shimmed),
    ];
    let mut group = c.benchmark_group("connect");
    for (i, (name, way)) in cases.iter().enumerate() {
        // The listener speaks what the client does; shimmed = both shimmed.
        let l = Listener::new(*way, 31000 + i as u16);
        group.bench_function(*name, |b| b.iter_custom(|n| time_connect(*way, &l, n)));
    }
    group.finish();
    let mut group = c.benchmark_group("accept");
    for (i, (name, way)) in cases.iter().enumerate() {
        let l = Listener::new(*way, 31100 + i as u16);
        group.bench_function(*name, |b| b.iter_custom(|n| time_accept(*way, &l, n)));
    }
    group.finish();
}

criterion_group!(benches, connect_accept);
criterion_main!(benches);
