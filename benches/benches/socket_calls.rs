//! What the shim adds to a socket()+close() pair on the native backend.
//!
//! The benchmark runs with libdropshim.so preloaded (it re-executes itself
//! with LD_PRELOAD when started without it), so libc's `socket`/`close`
//! go through the shim's hooks, while the `bare` cases enter the kernel
//! through syscall(2) and bypass them. All cases run in one process, side
//! by side. The shim turns a TCP request into MPTCP, so the fair baseline
//! for its overhead is the bare MPTCP pair; the bare TCP pair is shown
//! too. Bar (design brief): shimmed minus bare < 250 ns, median.

use criterion::{criterion_group, criterion_main, Criterion};

use dropshim_benches::{ensure_preloaded, IPPROTO_MPTCP};

fn bare_pair(protocol: libc::c_int) {
    // SAFETY: raw socket/close system calls on a descriptor we own.
    unsafe {
        let fd = libc::syscall(libc::SYS_socket, libc::AF_INET, libc::SOCK_STREAM, protocol);
        assert!(fd >= 0, "socket failed");
        libc::syscall(libc::SYS_close, fd);
    }
}

fn shimmed_pair() {
    // SAFETY: libc's socket/close (the shim's hooks here) on our own fd.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        assert!(fd >= 0, "socket failed");
        libc::close(fd);
    }
}

fn socket_close(c: &mut Criterion) {
    ensure_preloaded();
    let mut group = c.benchmark_group("socket+close");
    group.bench_function("bare TCP (syscall)", |b| {
        b.iter(|| bare_pair(libc::IPPROTO_TCP))
    });
    group.bench_function("bare MPTCP (syscall)", |b| {
        b.iter(|| bare_pair(IPPROTO_MPTCP))
    });
    group.bench_function("shimmed (libc, native backend)", |b| b.iter(shimmed_pair));
    group.finish();
}

criterion_group!(benches, socket_close);
criterion_main!(benches);
