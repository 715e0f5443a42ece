//! Support for the lkl backend's tests: gw1 handed over to a Linux Kernel
//! Library booted inside each shimmed program (its links keep no host
//! address; a device file gives gw1's addresses to the library kernel),
//! where `liblkl.so` is, and commands for programs on that backend and for
//! native MPTCP peers in gw2.

use crate::{shim_path, DeviceExtra};
use anyhow::{Context, Result};
use dropshim_testbed::Testbed;
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

/// liblkl.so, built (or found in its cache) by build-lkl.sh once per run,
/// the way the shim finds it.
pub fn liblkl() -> Result<PathBuf> {
    static LIB: OnceLock<std::result::Result<PathBuf, String>> = OnceLock::new();
    LIB.get_or_init(|| dropshim_backend_lkl::locate_library(true))
        .clone()
        .map_err(anyhow::Error::msg)
}

/// gw1 handed over to the library kernel: its links carry no host
/// address (the packet sockets see every frame; a host address would make
/// the host stack answer too), and a device file gives gw1's addresses to
/// the library kernel instead.
pub use dropshim_stacks::LklDevice as LklNode;

/// [`lkl_node_with`] without IPv6.
pub fn lkl_node(tb: &Testbed, roles2: &[&str]) -> Result<LklNode> {
    lkl_node_with(tb, roles2, false)
}

/// gw1 on the lkl backend; `roles2` is link 2's MPTCP endpoint roles
/// (`subflow` for a client, `signal` for a server); with `ipv6`, the
/// library kernel gets gw1's IPv6 addresses too.
pub fn lkl_node_with(tb: &Testbed, roles2: &[&str], ipv6: bool) -> Result<LklNode> {
    let extra = DeviceExtra {
        roles2: Some(roles2.iter().map(|r| r.to_string()).collect()),
        ..DeviceExtra::default()
    };
    lkl_node_extra(tb, ipv6, &extra)
}

/// gw1's links 1 and 2 on the lkl backend, with the additions of `extra`.
pub fn lkl_node_extra(tb: &Testbed, ipv6: bool, extra: &DeviceExtra) -> Result<LklNode> {
    let file = extra.device_file(&[1, 2], ipv6);
    LklNode::up(
        tb,
        "gw1",
        &file,
        &dropshim_stacks::unique_name("lkl"),
        &liblkl()?,
    )
}

/// `program` in gw1 under the shim with backend lkl.
pub fn on_lkl(tb: &Testbed, node: &LklNode, program: &str) -> Result<Command> {
    let mut cmd = tb.command("gw1", program)?;
    node.program_env(&mut cmd, &shim_path());
    Ok(cmd)
}

/// `program` in gw2 as a native MPTCP program (Debian's `mptcpize`).
pub fn native_peer(tb: &Testbed, program: &str) -> Result<Command> {
    let mut cmd = tb.command("gw2", "mptcpize")?;
    cmd.args(["run", program]);
    Ok(cmd)
}

/// A process's host threads, and how many of them are the library
/// kernel's own tasks (each kernel task runs on a host thread named
/// `lkl-kernel`, including the tasks that carry system calls for host
/// threads).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Threads {
    /// All host threads of the process.
    pub total: u64,
    /// Host threads named `lkl-kernel`: the library kernel's tasks.
    pub kernel: u64,
}

impl Threads {
    /// Threads that are not the library kernel's tasks.
    pub fn own(&self) -> u64 {
        self.total.saturating_sub(self.kernel)
    }
}

/// The threads of `pid` now (from /proc/PID/task/*/comm).
pub fn threads_of(pid: u32) -> Result<Threads> {
    let mut t = Threads::default();
    let dir = std::fs::read_dir(format!("/proc/{pid}/task"))
        .with_context(|| format!("process {pid} is gone"))?;
    for task in dir.flatten() {
        // A thread may end while it is read: not counted.
        if let Ok(comm) = std::fs::read_to_string(task.path().join("comm")) {
            t.total += 1;
            t.kernel += u64::from(comm.trim_end() == "lkl-kernel");
        }
    }
    Ok(t)
}

/// Samples the threads of `pid` until dropped; keeps the sample with the
/// most threads that are not the library kernel's.
pub struct ThreadPeak {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    handle: Option<std::thread::JoinHandle<Threads>>,
}

impl ThreadPeak {
    /// Starts sampling the threads of `pid` on a thread of its own.
    pub fn watch(pid: u32) -> ThreadPeak {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut peak = Threads::default();
            while !s.load(std::sync::atomic::Ordering::Acquire) {
                match threads_of(pid) {
                    Ok(t)
                        if t.own() > peak.own()
                            || (t.own() == peak.own() && t.total > peak.total) =>
                    {
                        peak = t
                    }
                    Ok(_) => {}
                    Err(_) => break,
                }
                // Sampling pace, not a wait for anything.
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
            peak
        });
        ThreadPeak {
            stop,
            handle: Some(handle),
        }
    }

    /// The peak seen so far; stops sampling.
    pub fn finish(mut self) -> Threads {
        self.stop.store(true, std::sync::atomic::Ordering::Release);
        self.handle
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default()
    }
}

impl Drop for ThreadPeak {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Release);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}
