//! The run's pass: under `dropshim run`, the seccomp filter traps some
//! socket calls for the programs that bypass libc, unless the call
//! carries this run's pass in its unused sixth argument. The shim and the
//! uml backend's control channel make those calls with the pass, so a
//! process linked with libc does not wait for the supervisor for its own
//! calls, while a static program it starts is still served.

use libc::{c_int, c_long};
use std::sync::atomic::{AtomicU64, Ordering};

/// The environment variable through which `dropshim run` hands the
/// programs it starts its run's pass: 16 hex digits.
pub const ENV_ADDRESS_PASS: &str = "DROPSHIM_ADDRESS_PASS";

/// This run's pass (0: none), set once at load time by
/// [`init_address_pass`].
static ADDRESS_PASS: AtomicU64 = AtomicU64::new(0);

/// Reads [`ENV_ADDRESS_PASS`] once, when the shim is loaded.
pub fn init_address_pass() {
    let pass = std::env::var(ENV_ADDRESS_PASS)
        .ok()
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0);
    ADDRESS_PASS.store(pass, Ordering::Relaxed);
}

/// This run's pass, 0 when the program was not started by `dropshim run`
/// with one.
pub fn address_pass() -> u64 {
    ADDRESS_PASS.load(Ordering::Relaxed)
}

/// `bind(2)`/`connect(2)` through `syscall(2)` with the run's pass in the
/// unused sixth argument, so that the run's filter lets it through.
///
/// # Safety
/// `addr` and `len` meet the call's contract (the program's own
/// arguments to it do).
pub unsafe fn address_call(
    nr: c_long,
    fd: c_int,
    addr: *const libc::sockaddr,
    len: libc::socklen_t,
) -> c_int {
    let pass = address_pass();
    // SAFETY: the kernel reads `len` bytes at `addr`, valid by the
    // caller's contract; the fourth to sixth arguments are ignored by
    // bind and connect (the sixth is read only by the seccomp filter).
    unsafe { libc::syscall(nr, fd, addr, len, 0, 0, pass) as c_int }
}
