//! `DROPSHIM_FAULTS=...`: errors a correct program must cope with,
//! injected at a given rate into the calls on the sockets the shim
//! manages, to find out whether a program (and the shim under it) loses
//! bytes, hangs or crashes when they happen.
//!
//! The value is a comma-separated list of fault kinds and settings:
//!
//! ```text
//! DROPSHIM_FAULTS=eintr,eagain,short,reset,rate=0.02,seed=7
//! ```
//!
//! - `eintr`: a blocking call fails with EINTR before it does anything,
//!   as if a signal handler without SA_RESTART had run.
//! - `eagain`: a non-blocking call fails with EAGAIN, a spurious wakeup.
//!   (A program waiting for an edge-triggered epoll event after it may
//!   wait until the next data arrives, as it would after a real one.)
//! - `short`: a read or write moves fewer bytes than asked (at least one).
//! - `reset`: the connection is reset: the call fails with ECONNRESET
//!   (ECONNREFUSED for a connect, ECONNABORTED for an accept) and the
//!   connection is really torn down.
//! - `rate=P`: the probability that an eligible call gets a fault
//!   (default 0.01); `seed=N`: the random sequence (default 1), so a run
//!   that found a problem can be repeated.
//!
//! With no kind named, all four are on. The calls are connect and accept
//! (through the contract) and read, write, recv, send, recvfrom and
//! sendto (through the hooks' fast check of [`active`]). A malformed
//! value gets one line on stderr and no fault is injected; the program
//! itself always runs.

use crate::contract::{Answer, Backend, Call, Wrapper};
use crate::fdtable::{self, FIXED, TRACKED};
use crate::{log, trace, Errno};
use libc::c_int;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// The variable that asks for faults.
pub const ENV_FAULTS: &str = "DROPSHIM_FAULTS";

const EINTR: u8 = 1;
const EAGAIN: u8 = 2;
const SHORT: u8 = 4;
const RESET: u8 = 8;

/// What to inject and how often.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Plan {
    kinds: u8,
    /// Probability scaled to the full u64 range.
    threshold: u64,
    seed: u64,
}

/// Parses a `DROPSHIM_FAULTS` value.
pub(crate) fn parse(value: &str) -> Result<Plan, String> {
    let mut kinds = 0;
    let mut rate = 0.01f64;
    let mut seed = 1u64;
    for item in value.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        match item.split_once('=') {
            Some(("rate", v)) => {
                rate = v
                    .parse()
                    .ok()
                    .filter(|r: &f64| (0.0..=1.0).contains(r))
                    .ok_or_else(|| format!("rate={v} is not a probability from 0 to 1"))?;
            }
            Some(("seed", v)) => {
                seed = v
                    .parse()
                    .map_err(|_| format!("seed={v} is not a whole number"))?;
            }
            Some((k, _)) => return Err(format!("unknown setting `{k}` (rate, seed)")),
            None => {
                kinds |= match item {
                    "eintr" => EINTR,
                    "eagain" => EAGAIN,
                    "short" => SHORT,
                    "reset" => RESET,
                    other => {
                        return Err(format!(
                            "unknown fault `{other}` (eintr, eagain, short, reset)"
                        ))
                    }
                }
            }
        }
    }
    if kinds == 0 {
        kinds = EINTR | EAGAIN | SHORT | RESET;
    }
    Ok(Plan {
        kinds,
        threshold: (rate * u64::MAX as f64) as u64,
        seed,
    })
}

static ACTIVE: AtomicBool = AtomicBool::new(false);
static STATE: AtomicU64 = AtomicU64::new(0);
static KINDS: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);
static THRESHOLD: AtomicU64 = AtomicU64::new(0);

/// The plan `DROPSHIM_FAULTS` asks for, if any; a malformed one is
/// reported once and ignored.
pub(crate) fn from_env() -> Option<Plan> {
    let value = std::env::var(ENV_FAULTS)
        .ok()
        .filter(|v| !v.trim().is_empty())?;
    match parse(&value) {
        Ok(plan) => {
            install(plan);
            Some(plan)
        }
        Err(e) => {
            log::error!("{ENV_FAULTS}={value:?}: {e}; no faults injected");
            None
        }
    }
}

/// Injects faults by `plan` from now on.
fn install(plan: Plan) {
    STATE.store(plan.seed, Ordering::Relaxed);
    KINDS.store(plan.kinds, Ordering::Relaxed);
    THRESHOLD.store(plan.threshold, Ordering::Relaxed);
    ACTIVE.store(true, Ordering::Release);
}

/// Whether faults are being injected in this process: the data hooks'
/// fast check.
#[inline]
pub(crate) fn active() -> bool {
    ACTIVE.load(Ordering::Relaxed)
}

/// The next number of the process's random sequence (splitmix64).
fn next() -> u64 {
    let mut z = STATE
        .fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed)
        .wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn nonblocking(fd: c_int) -> bool {
    // SAFETY: F_GETFL on a descriptor number; a bad one is an error.
    let fl = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    fl >= 0 && fl & libc::O_NONBLOCK != 0
}

/// Rolls for a fault on a call on `fd` among the kinds `allowed` for the
/// call; the kinds that cannot happen to it (EINTR on a non-blocking
/// descriptor, EAGAIN on a blocking one) are left out.
fn roll(fd: c_int, allowed: u8) -> Option<u8> {
    if next() >= THRESHOLD.load(Ordering::Relaxed) {
        return None;
    }
    let mut kinds = KINDS.load(Ordering::Relaxed) & allowed;
    if kinds & (EINTR | EAGAIN) != 0 {
        kinds &= if nonblocking(fd) { !EINTR } else { !EAGAIN };
    }
    let options: Vec<u8> = [EINTR, EAGAIN, SHORT, RESET]
        .into_iter()
        .filter(|k| kinds & k != 0)
        .collect();
    if options.is_empty() {
        return None;
    }
    Some(options[(next() % options.len() as u64) as usize])
}

/// Tears the connection under `fd` down for real: a TCP or MPTCP socket
/// is disconnected (the peer gets a reset), anything else (the lkl
/// backend's socket pair) is shut down both ways.
fn tear_down(fd: c_int) {
    let unspec = libc::sockaddr {
        sa_family: libc::AF_UNSPEC as libc::sa_family_t,
        sa_data: [0; 14],
    };
    // SAFETY: connect with a live AF_UNSPEC address; shutdown with
    // integer arguments. Both only act on the descriptor.
    unsafe {
        let r = libc::syscall(
            libc::SYS_connect,
            fd as libc::c_long,
            &unspec as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr>() as libc::c_long,
        );
        if r < 0 {
            libc::syscall(
                libc::SYS_shutdown,
                fd as libc::c_long,
                libc::SHUT_RDWR as libc::c_long,
            );
        }
    }
}

/// What a data call does under the plan.
pub(crate) enum Data {
    /// Go ahead, moving at most this many bytes.
    Go(usize),
    /// Fail at once with this errno.
    Fail(c_int),
}

/// The fault, if any, for the data call `call` of `len` bytes on `fd`.
/// Only descriptors the shim manages are touched.
pub(crate) fn data(call: &str, fd: c_int, len: usize) -> Data {
    if fdtable::get(fd) & TRACKED == 0 {
        return Data::Go(len);
    }
    let allowed = if len > 1 {
        EINTR | EAGAIN | SHORT | RESET
    } else {
        EINTR | EAGAIN | RESET
    };
    let outcome = match roll(fd, allowed) {
        None => return Data::Go(len),
        Some(SHORT) => Data::Go(1 + (next() % (len as u64 - 1)) as usize),
        Some(EINTR) => Data::Fail(libc::EINTR),
        Some(EAGAIN) => Data::Fail(libc::EAGAIN),
        Some(_) => {
            tear_down(fd);
            Data::Fail(libc::ECONNRESET)
        }
    };
    if trace::on() {
        match outcome {
            Data::Go(n) => trace::record(
                "faults",
                format_args!("{call}(fd={fd}, {len}) shortened to {n}"),
                n as isize,
                0,
            ),
            Data::Fail(e) => trace::record("faults", format_args!("{call}(fd={fd}, {len})"), -1, e),
        }
    }
    outcome
}

/// A backend whose connects and accepts sometimes fail the way a network
/// makes them fail.
pub(crate) struct Faulty {
    inner: Box<dyn Backend>,
}

impl Faulty {
    pub(crate) fn new(inner: Box<dyn Backend>) -> Faulty {
        Faulty { inner }
    }
}

/// The error injected into `call`, if the dice say so: a refused
/// connect, before anything is sent (a peer with nothing listening
/// answers so); for an accept, EINTR on a blocking listener, EAGAIN on a
/// non-blocking one, or ECONNABORTED (a connection that went away before
/// it was accepted), none of which takes a connection off the queue.
/// Other calls get none.
fn injected(call: &Call) -> Option<c_int> {
    match *call {
        Call::connect { fd, flags, .. } if flags & FIXED == 0 => {
            roll(fd, RESET).map(|_| libc::ECONNREFUSED)
        }
        Call::accept4 { fd, .. } => roll(fd, EINTR | EAGAIN | RESET).map(|kind| match kind {
            EINTR => libc::EINTR,
            EAGAIN => libc::EAGAIN,
            _ => libc::ECONNABORTED,
        }),
        _ => None,
    }
}

impl Wrapper for Faulty {
    fn inner(&self) -> &dyn Backend {
        self.inner.as_ref()
    }

    fn call<R: Answer>(&self, call: &Call, run: impl FnOnce() -> R) -> R {
        match R::failure().and_then(|failed| Some((failed, injected(call)?))) {
            Some((failed, errno)) => {
                trace::mark_injected();
                Errno(errno).set();
                failed
            }
            None => run(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_parse_or_say_what_is_wrong() {
        let all = parse("").unwrap();
        assert_eq!(all.kinds, EINTR | EAGAIN | SHORT | RESET);
        assert_eq!(all.seed, 1);
        let p = parse("short, eintr,rate=0.5,seed=9").unwrap();
        assert_eq!(p.kinds, SHORT | EINTR);
        assert_eq!(p.seed, 9);
        assert!((p.threshold as f64 / u64::MAX as f64 - 0.5).abs() < 1e-9);
        assert!(parse("rate=2").unwrap_err().contains("probability"));
        assert!(parse("rate=x").unwrap_err().contains("probability"));
        assert!(parse("seed=-1").unwrap_err().contains("whole number"));
        assert!(parse("eintr,boom")
            .unwrap_err()
            .contains("unknown fault `boom`"));
        assert!(parse("speed=3")
            .unwrap_err()
            .contains("unknown setting `speed`"));
    }

    #[test]
    fn injected_connect_failures_are_refusals_and_traced_as_injected() {
        install(parse("reset,rate=1").expect("a plan"));
        let path = std::env::temp_dir().join(format!("dropshim-trace-{}", std::process::id()));
        let file = std::fs::File::create(&path).expect("a trace file");
        let out = std::os::fd::AsRawFd::as_raw_fd(&file);
        let traced = crate::trace::Traced::new(
            Box::new(Faulty::new(Box::new(crate::contract::Passthrough))),
            out,
        );
        // SAFETY: no address: the injected refusal comes before any call.
        let r = unsafe { traced.connect(-1, 0, std::ptr::null(), 0) };
        assert_eq!(r, -1);
        assert_eq!(
            std::io::Error::last_os_error().raw_os_error(),
            Some(libc::ECONNREFUSED)
        );
        // A settled socket's connect is never refused: the real call
        // answers (EBADF for no descriptor).
        // SAFETY: as above; the kernel checks the NULL address.
        let r = unsafe { traced.connect(-1, FIXED, std::ptr::null(), 0) };
        assert_eq!(r, -1);
        assert_ne!(
            std::io::Error::last_os_error().raw_os_error(),
            Some(libc::ECONNREFUSED)
        );
        let text = std::fs::read_to_string(&path).expect("the trace");
        let _ = std::fs::remove_file(&path);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(
            lines[0].contains(" passthrough connect(fd=-1, 0x0/0) = -1 ECONNREFUSED ")
                && lines[0].ends_with("us injected"),
            "{text}"
        );
        assert!(!lines[1].ends_with(" injected"), "{text}");
    }
}
