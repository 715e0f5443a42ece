//! Step 2: boot the library kernel, see its kernel threads, halt it.
//! One test per file: a process boots its kernel once.

use dropshim_backend_lkl::{BootOptions, Error, Lkl};

fn host_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .map(|d| d.count())
        .unwrap_or(0)
}

#[test]
fn lkl_boot_threads_and_halt() {
    let before = host_threads();
    let lkl = match Lkl::boot(&BootOptions::default()) {
        Ok(l) => l,
        Err(e) => panic!("boot failed: {e}"),
    };
    let boot = lkl.boot_time();
    eprintln!("lkl boot time: {:.1} ms", boot.as_secs_f64() * 1e3);

    // The kernel answers system calls and is the 6.12 we built.
    let (sysname, release) = lkl.uname().expect("uname");
    assert_eq!(sysname, "Linux");
    assert!(release.starts_with("6.12"), "release {release}");
    // Our calls run in a kernel task of their own, not in pid 1 or 2.
    assert!(lkl.getpid() > 2, "getpid {}", lkl.getpid());

    // Kernel threads exist and run: kthreadd is pid 2, and the kernel's
    // worker threads have host threads of their own.
    let comm = lkl.read_file("/proc/2/comm").expect("read /proc/2/comm");
    assert_eq!(String::from_utf8_lossy(&comm).trim(), "kthreadd");
    let during = host_threads();
    assert!(
        during > before + 3,
        "host threads before {before}, after boot {during}"
    );
    assert!(
        lkl.log().contains("Linux version 6.12"),
        "log: {}",
        lkl.log()
    );

    // Time advances inside the kernel (timer interrupts are delivered).
    let up1 = lkl.read_file("/proc/uptime").expect("uptime");
    std::thread::sleep(std::time::Duration::from_millis(300));
    let up2 = lkl.read_file("/proc/uptime").expect("uptime");
    let secs = |b: &[u8]| -> f64 {
        String::from_utf8_lossy(b)
            .split_whitespace()
            .next()
            .unwrap_or("0")
            .parse()
            .unwrap_or(0.0)
    };
    assert!(
        secs(&up2) - secs(&up1) >= 0.2,
        "uptime {:?} -> {:?}",
        secs(&up1),
        secs(&up2)
    );

    // One boot per process, with a clear error.
    match Lkl::boot(&BootOptions::default()) {
        Err(Error::AlreadyBooted) => {}
        other => panic!("second boot: {:?}", other.err()),
    }

    lkl.halt().expect("halt");
    // Every kernel host thread (and the timer) is gone; our own calling
    // thread's kernel context was freed with it.
    let after = host_threads();
    assert_eq!(
        after, before,
        "host threads before boot {before}, after halt {after}"
    );
    // After halt, calls fail cleanly.
    match lkl.uname() {
        Err(Error::Sys { errno, .. }) => assert_eq!(errno, libc::ESHUTDOWN),
        other => panic!("uname after halt: {other:?}"),
    }
}
