//! dropshim's criterion benchmarks live in `benches/benches/`. This crate
//! holds what they share: re-executing a benchmark with the shim
//! preloaded, and a private network namespace with a non-loopback address
//! (the shim leaves loopback on TCP by default, so connect/accept through
//! MPTCP needs an address of its own). End-to-end throughput is measured
//! by `dropshim bench`.
//!
//! Must not touch: the host's network; everything happens in a namespace
//! this process creates for itself and that dies with it.

#![warn(missing_docs)]

use std::path::PathBuf;
use std::process::Command;

/// The kernel's protocol number for Multipath TCP.
pub use dropshim_abi::IPPROTO_MPTCP;

/// The address the benchmarks listen on inside their own namespace
/// (benchmarking range, on a veth of its own).
pub const BENCH_ADDR: [u8; 4] = [198, 18, 250, 1];

/// libdropshim.so: `$DROPSHIM_TARGET_DIR/libdropshim.so`, else the
/// release build in cargo's `$CARGO_TARGET_DIR`, else the workspace's.
pub fn shim_path() -> PathBuf {
    let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    match (
        std::env::var_os("DROPSHIM_TARGET_DIR"),
        std::env::var_os("CARGO_TARGET_DIR"),
    ) {
        (Some(dir), _) => PathBuf::from(dir).join("libdropshim.so"),
        (None, Some(cargo)) => workspace.join(cargo).join("release/libdropshim.so"),
        (None, None) => workspace.join("target/release/libdropshim.so"),
    }
}

/// Re-executes this benchmark with the shim preloaded (native backend, no
/// configuration), once; returns in the preloaded process.
pub fn ensure_preloaded() {
    let preload = std::env::var("LD_PRELOAD").unwrap_or_default();
    if preload.contains("libdropshim.so") {
        return;
    }
    let shim = shim_path();
    if !shim.is_file() {
        eprintln!(
            "{} is missing: run `cargo build --release` first (or set DROPSHIM_TARGET_DIR)",
            shim.display()
        );
        std::process::exit(2);
    }
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => {
            eprintln!("cannot find this benchmark's executable: {e}");
            std::process::exit(2);
        }
    };
    use std::os::unix::process::CommandExt;
    let err = Command::new(exe)
        .args(std::env::args_os().skip(1))
        .env("LD_PRELOAD", shim)
        .env_remove("DROPSHIM_CONFIG")
        .env_remove("DROPSHIM_BACKEND")
        .env_remove("DROPSHIM_LOG")
        .exec();
    eprintln!("cannot re-execute with the shim preloaded: {err}");
    std::process::exit(2);
}

/// Moves the calling thread (criterion runs benchmarks on it) into a new
/// network namespace with `lo` up and [`BENCH_ADDR`]/24 on a veth
/// interface of its own. Needs root; exits with a clear message otherwise.
pub fn private_netns() {
    // SAFETY: unshare only changes this thread's namespace membership.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        eprintln!(
            "cannot create a network namespace ({}): run the benchmarks as root",
            std::io::Error::last_os_error()
        );
        std::process::exit(2);
    }
    let addr = format!(
        "{}.{}.{}.{}/24",
        BENCH_ADDR[0], BENCH_ADDR[1], BENCH_ADDR[2], BENCH_ADDR[3]
    );
    for args in [
        vec!["link", "set", "lo", "up"],
        // A veth pair (no dummy module on every kernel), both ends here.
        vec![
            "link", "add", "dsbench0", "type", "veth", "peer", "name", "dsbench1",
        ],
        vec!["addr", "add", &addr, "dev", "dsbench0"],
        vec!["link", "set", "dsbench0", "up"],
        vec!["link", "set", "dsbench1", "up"],
    ] {
        let status = Command::new("ip")
            .args(&args)
            .env_remove("LD_PRELOAD")
            .status();
        if !matches!(status, Ok(s) if s.success()) {
            eprintln!(
                "`ip {}` failed in the benchmark's namespace",
                args.join(" ")
            );
            std::process::exit(2);
        }
    }
    // Thousands of short connections per second: room and reuse for
    // ephemeral ports (this namespace only).
    for (knob, value) in [
        ("/proc/sys/net/ipv4/ip_local_port_range", "1024 65000"),
        ("/proc/sys/net/ipv4/tcp_tw_reuse", "1"),
    ] {
        if let Err(e) = std::fs::write(knob, value) {
            eprintln!("cannot set {knob} in the benchmark's namespace: {e}");
        }
    }
}

/// The kernel form of `BENCH_ADDR:port` (port in host order).
pub fn bench_sockaddr(port: u16) -> dropshim_abi::RawSockAddr {
    dropshim_abi::encode(&std::net::SocketAddr::from((BENCH_ADDR, port)))
}
