//! The only module that crosses into libc: entering a network namespace,
//! waiting on a process with a deadline (pidfd + poll), sending signals.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::{Duration, Instant};

/// CPU time (user + system) every process of process group `pgrp` has
/// used so far, from `/proc/PID/stat`: a UML instance's kernel leads the
/// group of its host processes.
pub fn process_group_cpu(pgrp: i32) -> Duration {
    // SAFETY: sysconf has no preconditions; it only reads a constant.
    let hz = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) })
        .unwrap_or(100)
        .max(1);
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Duration::ZERO;
    };
    let ticks: u64 = dir
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
        .filter_map(|stat| {
            // The fields after the command (which may hold spaces and
            // parentheses): state ppid pgrp ..., utime the 12th, stime the
            // 13th of them (fields 14 and 15 of the line).
            let rest: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
            let group: i32 = rest.get(2)?.parse().ok()?;
            let utime: u64 = rest.get(11)?.parse().ok()?;
            let stime: u64 = rest.get(12)?.parse().ok()?;
            (group == pgrp).then_some(utime + stime)
        })
        .sum();
    Duration::from_millis(ticks * 1000 / hz)
}

pub(crate) fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Make `cmd` enter the network namespace `ns_file` (a /run/netns entry)
/// between fork and exec. The namespace file is opened now, so a missing
/// namespace is reported here rather than as an exec failure.
pub(crate) fn enter_netns_on_exec(cmd: &mut Command, ns_file: &str) -> io::Result<()> {
    let ns = File::open(ns_file)?; // O_CLOEXEC: the child does not inherit it
    let fd = ns.as_raw_fd();
    // SAFETY: the closure runs in the forked child before exec; it only
    // makes the setns system call (async-signal-safe, no allocation: the
    // error is built from errno without allocating). `ns` is moved into the
    // closure so the descriptor stays open for as long as the Command lives.
    unsafe {
        cmd.pre_exec(move || {
            let _keep = &ns;
            if libc::setns(fd, libc::CLONE_NEWNET) == 0 {
                Ok(())
            } else {
                Err(io::Error::last_os_error())
            }
        });
    }
    Ok(())
}

/// Run `f` on a fresh thread that has joined the network namespace
/// `ns_file`, so per-namespace files such as /proc/sys/net/* refer to it.
/// The calling thread's namespace is untouched.
pub(crate) fn in_netns<T: Send + 'static>(
    ns_file: &str,
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    let ns = File::open(ns_file)?;
    let handle = std::thread::spawn(move || {
        // SAFETY: setns on a valid namespace descriptor changes only this
        // thread's network namespace; the thread ends right after `f`.
        if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(io::Error::last_os_error());
        }
        f()
    });
    handle
        .join()
        .map_err(|_| io::Error::other("namespace worker thread panicked"))?
}

/// A pidfd for `pid`: readable once the process has exited.
pub(crate) fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor
    // or -1; it touches no memory of ours.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this descriptor and nobody else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Wait until `fd` is readable or `deadline` passes; true if readable.
pub(crate) fn wait_readable(fd: &OwnedFd, deadline: Instant) -> io::Result<bool> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        // Round up so we never spin on a sub-millisecond remainder.
        let ms = left.as_nanos().div_ceil(1_000_000).min(i32::MAX as u128) as i32;
        let mut pfd = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: pfd is a valid pollfd for the duration of the call; nfds = 1.
        let n = unsafe { libc::poll(&mut pfd, 1, ms) };
        if n > 0 {
            return Ok(true);
        }
        if n == 0 {
            if Instant::now() >= deadline {
                return Ok(false);
            }
            continue;
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// SIGKILL to a process group (the child of `run_with_timeout` leads its own).
pub(crate) fn kill_group(pgid: u32) {
    // SAFETY: kill with a negative pid signals that process group only;
    // the group id is the pid of a child we spawned in its own group.
    unsafe {
        libc::kill(-(pgid as libc::pid_t), libc::SIGKILL);
    }
}

/// SIGKILL to one process (used for processes left inside a testbed's
/// namespaces when it is removed).
pub(crate) fn kill_pid(pid: u32) {
    // SAFETY: kill has no memory effects; a stale pid just fails with ESRCH.
    unsafe {
        libc::kill(pid as libc::pid_t, libc::SIGKILL);
    }
}

/// Clock ticks since boot at which `pid` started (field 22 of
/// /proc/PID/stat): with the pid it identifies a process even after pid
/// reuse.
pub(crate) fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses; the rest
    // follows the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Duration helper used in messages.
pub(crate) fn secs(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_group_cpu_is_counted() {
        // SAFETY: getpgrp has no preconditions.
        let pgrp = unsafe { libc::getpgrp() };
        let before = process_group_cpu(pgrp);
        let start = Instant::now();
        let mut x = 0u64;
        while start.elapsed() < Duration::from_millis(150) {
            x = x.wrapping_mul(31).wrapping_add(7);
        }
        assert!(x != 1);
        assert!(process_group_cpu(pgrp) >= before + Duration::from_millis(50));
    }
}
