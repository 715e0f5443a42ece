//! libc's own socket functions, for the backends and wrappers that
//! complete a call themselves. Inside the shim the plain libc names are
//! the shim's own hooks; these are the definitions that come after this
//! library in the lookup order (dlsym with RTLD_NEXT), resolved once each.
//!
//! The calls that take only integers are safe. Those that take pointers
//! are unsafe to call: the pointers must meet libc's contract for the
//! call, as the program's own arguments to it do (passed on unchanged),
//! or as buffers of the shim's own do.
//!
//! Under `dropshim run`, `bind`, `connect` and `listen` are made with
//! `syscall(2)` instead, carrying the run's pass that lets them by the
//! run's seccomp filter (`dropshim_abi::pass`).

use dropshim_backend_native::sys;
use libc::{c_int, c_void, sockaddr, socklen_t};
use std::sync::atomic::{AtomicUsize, Ordering};

/// The address of the next definition of the C function `name` (a
/// NUL-terminated name) after this library, cached in `slot`. Resolving
/// twice at once is harmless: both find the same address.
fn next(slot: &AtomicUsize, name: &'static [u8]) -> usize {
    let cached = slot.load(Ordering::Acquire);
    if cached != 0 {
        return cached;
    }
    // SAFETY: `name` is a NUL-terminated C string with static lifetime;
    // dlsym only reads it.
    let addr = unsafe { libc::dlsym(libc::RTLD_NEXT, name.as_ptr().cast()) } as usize;
    if addr == 0 {
        // libc always defines these; a process without them cannot have
        // reached a socket call. The hooks catch the panic and call libc's
        // function through their own resolution.
        panic!(
            "dropshim: libc's {} not found",
            String::from_utf8_lossy(&name[..name.len() - 1])
        );
    }
    slot.store(addr, Ordering::Release);
    addr
}

/// Defines `$name` calling libc's `$name` of C type `$ty` with `$args`.
macro_rules! resolve {
    ($name:ident, $ty:ty) => {{
        static SLOT: AtomicUsize = AtomicUsize::new(0);
        let addr = next(&SLOT, concat!(stringify!($name), "\0").as_bytes());
        // SAFETY: `addr` is the address dlsym gave for the C function of
        // this name, whose C type `$ty` is libc's declaration of it.
        unsafe { std::mem::transmute::<usize, $ty>(addr) }
    }};
}

pub fn socket(domain: c_int, ty: c_int, protocol: c_int) -> c_int {
    let f = resolve!(socket, unsafe extern "C" fn(c_int, c_int, c_int) -> c_int);
    // SAFETY: libc's socket takes integers only and touches no memory.
    unsafe { f(domain, ty, protocol) }
}

/// # Safety
///
/// `addr` and `len` meet connect()'s contract (the program's own
/// arguments to it do).
pub unsafe fn connect(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int {
    if dropshim_abi::pass::address_pass() != 0 {
        // SAFETY: the caller meets connect()'s contract (# Safety above).
        return unsafe { sys::connect_with_pass(fd, addr, len) };
    }
    let f = resolve!(
        connect,
        unsafe extern "C" fn(c_int, *const sockaddr, socklen_t) -> c_int
    );
    // SAFETY: the caller meets connect()'s contract (# Safety above).
    unsafe { f(fd, addr, len) }
}

/// # Safety
///
/// `addr` and `len` meet bind()'s contract (the program's own
/// arguments to it do).
pub unsafe fn bind(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int {
    if dropshim_abi::pass::address_pass() != 0 {
        // SAFETY: the caller meets bind()'s contract (# Safety above).
        return unsafe { sys::address_call(libc::SYS_bind, fd, addr, len) };
    }
    let f = resolve!(
        bind,
        unsafe extern "C" fn(c_int, *const sockaddr, socklen_t) -> c_int
    );
    // SAFETY: the caller meets bind()'s contract (# Safety above).
    unsafe { f(fd, addr, len) }
}

pub fn listen(fd: c_int, backlog: c_int) -> c_int {
    if dropshim_abi::pass::address_pass() != 0 {
        return sys::listen_with_pass(fd, backlog);
    }
    let f = resolve!(listen, unsafe extern "C" fn(c_int, c_int) -> c_int);
    // SAFETY: libc's listen takes integers only and touches no memory.
    unsafe { f(fd, backlog) }
}

/// # Safety
///
/// `addr` and `len` meet accept4()'s contract (the program's own
/// arguments to it do).
pub unsafe fn accept4(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t, flags: c_int) -> c_int {
    let f = resolve!(
        accept4,
        unsafe extern "C" fn(c_int, *mut sockaddr, *mut socklen_t, c_int) -> c_int
    );
    // SAFETY: the caller meets accept4()'s contract (# Safety above).
    unsafe { f(fd, addr, len, flags) }
}

/// # Safety
///
/// `val` and `len` meet setsockopt()'s contract (the program's own
/// arguments to it do, and so does a live buffer of `len` bytes).
pub unsafe fn setsockopt(
    fd: c_int,
    level: c_int,
    name: c_int,
    val: *const c_void,
    len: socklen_t,
) -> c_int {
    let f = resolve!(
        setsockopt,
        unsafe extern "C" fn(c_int, c_int, c_int, *const c_void, socklen_t) -> c_int
    );
    // SAFETY: the caller meets setsockopt()'s contract (# Safety above).
    unsafe { f(fd, level, name, val, len) }
}

/// # Safety
///
/// `val` and `len` meet getsockopt()'s contract (the program's own
/// arguments to it do).
pub unsafe fn getsockopt(
    fd: c_int,
    level: c_int,
    name: c_int,
    val: *mut c_void,
    len: *mut socklen_t,
) -> c_int {
    let f = resolve!(
        getsockopt,
        unsafe extern "C" fn(c_int, c_int, c_int, *mut c_void, *mut socklen_t) -> c_int
    );
    // SAFETY: the caller meets getsockopt()'s contract (# Safety above).
    unsafe { f(fd, level, name, val, len) }
}

/// # Safety
///
/// `addr` and `len` meet getsockname()'s contract (the program's own
/// arguments to it do).
pub unsafe fn getsockname(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int {
    let f = resolve!(
        getsockname,
        unsafe extern "C" fn(c_int, *mut sockaddr, *mut socklen_t) -> c_int
    );
    // SAFETY: the caller meets getsockname()'s contract (# Safety above).
    unsafe { f(fd, addr, len) }
}

/// # Safety
///
/// `addr` and `len` meet getpeername()'s contract (the program's own
/// arguments to it do).
pub unsafe fn getpeername(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int {
    let f = resolve!(
        getpeername,
        unsafe extern "C" fn(c_int, *mut sockaddr, *mut socklen_t) -> c_int
    );
    // SAFETY: the caller meets getpeername()'s contract (# Safety above).
    unsafe { f(fd, addr, len) }
}

pub fn shutdown(fd: c_int, how: c_int) -> c_int {
    let f = resolve!(shutdown, unsafe extern "C" fn(c_int, c_int) -> c_int);
    // SAFETY: libc's shutdown takes integers only and touches no memory.
    unsafe { f(fd, how) }
}
