//! Per-descriptor state of the sockets the shim manages, readable without
//! a lock on every intercepted call.
//!
//! A flat array of atomic bytes indexed by descriptor number, allocated in
//! chunks on first use so a program with few descriptors pays a few KiB.
//! Options a program set before its socket's protocol was settled live in
//! a separate map behind a mutex, touched only by `setsockopt` on such
//! sockets and when they close.

use crate::forklock::{self, ForkMutex};
use dropshim_backend_native::socket::SockOpt;
use once_cell::sync::Lazy;
use std::collections::HashMap;
use std::os::raw::c_int;
use std::ptr;
use std::sync::atomic::{AtomicPtr, AtomicU8, Ordering};

/// Born here from a TCP `socket()` call: the shim may change its protocol.
pub const TRACKED: u8 = 1 << 0;
/// Currently speaks MPTCP (native) or lives in the backend (uml).
pub const MPTCP: u8 = 1 << 1;
/// The protocol is settled (connected, listening or accepted).
pub const FIXED: u8 = 1 << 2;
/// Has entries in the recorded options map.
pub const HAS_OPTS: u8 = 1 << 3;
/// Reserved for the uml backend's own bookkeeping.
pub const BACKEND_OWNED: u8 = 1 << 4;

const CHUNK: usize = 4096;
const CHUNKS: usize = 1024; // descriptors up to 4 Mi, far above any rlimit in use

type Chunk = [AtomicU8; CHUNK];

static TABLE: [AtomicPtr<Chunk>; CHUNKS] = [const { AtomicPtr::new(ptr::null_mut()) }; CHUNKS];

fn slot(fd: c_int, create: bool) -> Option<&'static AtomicU8> {
    let fd = usize::try_from(fd).ok()?;
    let (hi, lo) = (fd / CHUNK, fd % CHUNK);
    let cell = TABLE.get(hi)?;
    let mut chunk = cell.load(Ordering::Acquire);
    if chunk.is_null() {
        if !create {
            return None;
        }
        let fresh = Box::into_raw(Box::new([const { AtomicU8::new(0) }; CHUNK]));
        match cell.compare_exchange(ptr::null_mut(), fresh, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => chunk = fresh,
            Err(winner) => {
                // SAFETY: `fresh` came from Box::into_raw above and lost the
                // race, so nobody else has seen it.
                drop(unsafe { Box::from_raw(fresh) });
                chunk = winner;
            }
        }
    }
    // SAFETY: chunks are never freed once published, so the reference is
    // valid for the rest of the process.
    Some(unsafe { &(*chunk)[lo] })
}

pub fn get(fd: c_int) -> u8 {
    slot(fd, false).map_or(0, |s| s.load(Ordering::Acquire))
}

pub fn set(fd: c_int, flags: u8) {
    if let Some(s) = slot(fd, true) {
        s.store(flags, Ordering::Release);
    }
}

pub fn insert(fd: c_int, flags: u8) {
    if let Some(s) = slot(fd, true) {
        s.fetch_or(flags, Ordering::AcqRel);
    }
}

/// Forgets `fd`, returning what it was, and drops its recorded options.
pub fn take(fd: c_int) -> u8 {
    let flags = slot(fd, false).map_or(0, |s| s.swap(0, Ordering::AcqRel));
    if flags & HAS_OPTS != 0 {
        OPTIONS.lock().remove(&fd);
    }
    flags
}

static OPTIONS: Lazy<ForkMutex<HashMap<c_int, Vec<SockOpt>>>> =
    Lazy::new(|| ForkMutex::new(HashMap::new()));

/// Records an option the program set; a later value for the same option
/// replaces the earlier one but keeps its place in the order.
pub fn record_option(fd: c_int, opt: SockOpt) {
    let mut map = OPTIONS.lock();
    let list = map.entry(fd).or_default();
    match list
        .iter_mut()
        .find(|o| o.level == opt.level && o.name == opt.name)
    {
        Some(existing) => existing.value = opt.value,
        None => list.push(opt),
    }
    drop(map);
    insert(fd, HAS_OPTS);
}

pub fn options(fd: c_int) -> Vec<SockOpt> {
    if get(fd) & HAS_OPTS == 0 {
        return Vec::new();
    }
    OPTIONS.lock().get(&fd).cloned().unwrap_or_default()
}

/// Holds the lock across fork so the child never starts with another
/// thread's lock it cannot release (see [`crate::forklock`]).
pub fn before_fork() {
    OPTIONS.hold();
}

pub fn after_fork() {
    forklock::release_held();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_round_trip_and_take_clears() {
        set(70_000, TRACKED | MPTCP);
        assert_eq!(get(70_000), TRACKED | MPTCP);
        insert(70_000, FIXED);
        assert_eq!(take(70_000), TRACKED | MPTCP | FIXED);
        assert_eq!(get(70_000), 0);
        assert_eq!(get(-1), 0);
        assert_eq!(get(i32::MAX), 0);
    }

    #[test]
    fn recorded_options_keep_order_and_latest_value() {
        let fd = 70_001;
        record_option(
            fd,
            SockOpt {
                level: 1,
                name: 2,
                value: vec![1],
            },
        );
        record_option(
            fd,
            SockOpt {
                level: 6,
                name: 1,
                value: vec![1],
            },
        );
        record_option(
            fd,
            SockOpt {
                level: 1,
                name: 2,
                value: vec![0],
            },
        );
        let opts = options(fd);
        assert_eq!(opts.len(), 2);
        assert_eq!((opts[0].level, opts[0].value.as_slice()), (1, &[0u8][..]));
        take(fd);
        assert!(options(fd).is_empty());
    }
}
