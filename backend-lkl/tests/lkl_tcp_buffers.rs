//! The library kernel's TCP buffer limits after boot: autotuning may grow
//! a socket's buffers as far as a host kernel's would (a long, fast path
//! needs a window of megabytes), from a TCP memory pool that holds a
//! connection at those ceilings before it reaches memory pressure. One test per file: a process boots its
//! kernel once.

use dropshim_backend_lkl::{BootOptions, Lkl, TCP_POOL_SHARES, TCP_RMEM_MAX, TCP_WMEM_MAX};

fn triple(lkl: &Lkl, name: &str) -> [u64; 3] {
    let v = lkl.sysctl(name).unwrap_or_else(|e| panic!("{name}: {e}"));
    let n: Vec<u64> = v
        .split_whitespace()
        .map(|x| x.parse().unwrap_or_else(|_| panic!("{name} = {v:?}")))
        .collect();
    assert_eq!(n.len(), 3, "{name} = {v:?}");
    [n[0], n[1], n[2]]
}

#[test]
fn lkl_tcp_buffer_ceilings_fit_a_long_fat_path() {
    // The smallest memory the shim's device files allow a TCP pool worth
    // having (64 MiB) still gets the ceilings: the kernel alone would
    // give 0.5 MB.
    let opts = BootOptions {
        mem_bytes: 64 << 20,
        ..BootOptions::default()
    };
    let lkl = Lkl::boot(&opts).unwrap_or_else(|e| panic!("boot failed: {e}"));
    let rmem = triple(&lkl, "net.ipv4.tcp_rmem");
    let wmem = triple(&lkl, "net.ipv4.tcp_wmem");
    let pool = triple(&lkl, "net.ipv4.tcp_mem");
    eprintln!("tcp_rmem {rmem:?}, tcp_wmem {wmem:?}, tcp_mem {pool:?} pages");
    assert_eq!(rmem[2], TCP_RMEM_MAX, "tcp_rmem {rmem:?}");
    assert_eq!(wmem[2], TCP_WMEM_MAX, "tcp_wmem {wmem:?}");
    // The minimum and initial sizes stay the kernel's.
    assert_eq!(rmem[..2], [4096, 131_072], "tcp_rmem {rmem:?}");
    assert_eq!(wmem[..2], [4096, 16_384], "tcp_wmem {wmem:?}");
    // The pool takes its shares of the kernel's memory, in pages: even
    // at 64 MiB one connection's two ceilings fit below the pressure
    // threshold (two at the default 128 MiB).
    let pages = (64u64 << 20) / 4096;
    assert_eq!(
        pool,
        TCP_POOL_SHARES.map(|share| pages / share),
        "tcp_mem {pool:?} pages"
    );
    assert!(
        pool[1] * 4096 >= TCP_RMEM_MAX + TCP_WMEM_MAX,
        "tcp_mem {pool:?} pages"
    );
    let _ = lkl.halt();
}
