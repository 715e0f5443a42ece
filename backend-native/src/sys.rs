//! Raw system calls for code that runs inside `libdropshim.so`.
//!
//! Inside the shim the exported names `socket`, `close`, `setsockopt`...
//! are the shim's own hooks, so calling them from here would recurse.
//! Going through `syscall(2)` reaches the kernel directly. These are the
//! only unsafe calls in this crate's socket path; every wrapper returns
//! `io::Result` and never touches memory it was not given.

use std::io;
use std::os::raw::{c_int, c_long};

fn check(ret: c_long) -> io::Result<c_long> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Passed as an unused fourth argument of every `socket(2)` the shim
/// makes. socket(2) ignores it; the seccomp filter `dropshim run` installs
/// (which turns the TCP sockets of programs that bypass libc into MPTCP)
/// sees it and lets the call through untouched, so a socket the shim
/// deliberately keeps on TCP (loopback, a `tcp` policy rule, the fallback
/// when MPTCP is missing) stays TCP.
pub const SOCKET_PASS_MARK: u64 = 0x6473_686d_5f70_6173;

/// `socket(2)`, carrying [`SOCKET_PASS_MARK`] so the `dropshim run` seccomp filter leaves it alone.
pub fn socket(domain: c_int, ty: c_int, protocol: c_int) -> io::Result<c_int> {
    // SAFETY: socket(2) takes three integers and touches no memory; the
    // fourth register is ignored by the kernel (read only by seccomp).
    let ret = unsafe { libc::syscall(libc::SYS_socket, domain, ty, protocol, SOCKET_PASS_MARK) };
    check(ret).map(|fd| fd as c_int)
}

pub use dropshim_abi::pass::address_call;
use dropshim_abi::pass::address_pass;

/// `connect(2)` with the run's pass, a cancellation point as libc's own
/// connect() is: `syscall(2)` is none, so asynchronous cancellation is
/// on for the system call alone (as glibc before 2.25 made its own
/// cancellation points). A cancellation that arrives as the call
/// returns may act after it has connected, as it could then.
///
/// # Safety
/// As [`address_call`].
pub unsafe fn connect_with_pass(
    fd: c_int,
    addr: *const libc::sockaddr,
    len: libc::socklen_t,
) -> c_int {
    let mut old: c_int = 0;
    // SAFETY: pthread_setcanceltype writes the previous type into a live
    // int; with cancellation disabled it changes nothing.
    unsafe { pthread_setcanceltype(PTHREAD_CANCEL_ASYNCHRONOUS, &mut old) };
    // SAFETY: as this function's contract.
    let rc = unsafe { address_call(libc::SYS_connect, fd, addr, len) };
    let errno = io::Error::last_os_error().raw_os_error().unwrap_or(0);
    let mut ignored: c_int = 0;
    // SAFETY: as above, restoring the caller's type.
    unsafe { pthread_setcanceltype(old, &mut ignored) };
    if rc < 0 {
        // SAFETY: this thread's errno slot.
        unsafe { *libc::__errno_location() = errno };
    }
    rc
}

/// `listen(2)` with the run's pass.
pub fn listen_with_pass(fd: c_int, backlog: c_int) -> c_int {
    // SAFETY: listen(2) takes integers only; the sixth argument is read
    // only by the seccomp filter.
    unsafe { libc::syscall(libc::SYS_listen, fd, backlog, 0, 0, 0, address_pass()) as c_int }
}

/// glibc's `PTHREAD_CANCEL_ASYNCHRONOUS` (pthread.h).
const PTHREAD_CANCEL_ASYNCHRONOUS: c_int = 1;

extern "C" {
    fn pthread_setcanceltype(kind: c_int, old: *mut c_int) -> c_int;
}

/// `close(2)`.
pub fn close(fd: c_int) -> io::Result<()> {
    // SAFETY: close(2) on a descriptor this module's caller owns.
    let ret = unsafe { libc::syscall(libc::SYS_close, fd) };
    check(ret).map(drop)
}

/// Makes `newfd` refer to the socket `oldfd` refers to, atomically closing
/// what `newfd` referred to before.
pub fn dup3(oldfd: c_int, newfd: c_int, flags: c_int) -> io::Result<()> {
    // SAFETY: dup3(2) takes integers only.
    let ret = unsafe { libc::syscall(libc::SYS_dup3, oldfd, newfd, flags) };
    check(ret).map(drop)
}

/// `fcntl(2)` with an integer argument; returns the call's result.
pub fn fcntl(fd: c_int, cmd: c_int, arg: c_long) -> io::Result<c_int> {
    // SAFETY: only F_GETFL/F_GETFD/F_SETFL-style commands with integer
    // arguments are used by this crate; none dereference `arg`.
    let ret = unsafe { libc::syscall(libc::SYS_fcntl, fd, cmd, arg) };
    check(ret).map(|v| v as c_int)
}

/// `bind(2)` to an already encoded socket address.
pub fn bind(fd: c_int, addr: &dropshim_abi::RawSockAddr) -> io::Result<()> {
    // SAFETY: the kernel reads `addr.len()` bytes from `addr.as_ptr()`,
    // which points at a whole sockaddr_storage that `addr` keeps alive.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bind,
            fd,
            addr.as_ptr(),
            addr.len(),
            0,
            0,
            address_pass(),
        )
    };
    check(ret).map(drop)
}
