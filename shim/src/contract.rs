//! The backend contract: what every backend (native, uml, lkl) answers
//! for the TCP sockets it owns, and the one place that picks this
//! process's backend and wraps it.
//!
//! [`crate::hooks`] sorts each call (is the descriptor ours at all?) and
//! hands ours to [`backend()`]. Every method has the C call's own
//! arguments plus the descriptor's [`crate::fdtable`] flags; a backend
//! that has nothing to add to a call keeps the default, which is the host
//! kernel's answer through libc.
//!
//! Wrappers implement the same trait around another backend, the way a
//! device is wrapped in smoltcp: [`crate::trace`] records every call
//! (`DROPSHIM_TRACE=FILE`), [`crate::faults`] injects errors a program
//! must cope with (`DROPSHIM_FAULTS=...`). The order is
//! trace(faults(backend)): the trace shows what the program saw.

use crate::libc_real as real;
use crate::runtime::{self, Mode};
use libc::{c_int, c_void, sockaddr, socklen_t};
use once_cell::sync::OnceCell;

/// One backend's answers to the socket calls. `flags` is the descriptor's
/// entry in the descriptor table at the time of the call.
///
/// # Safety
///
/// The methods that take pointers are unsafe to call: callers pass the
/// program's arguments to the C call unchanged, so each pointer is one the
/// program handed to libc under that call's contract. The pointers are
/// still unchecked: implementations read and write them only through
/// [`crate::mem::copy_in`] and its relatives, or hand them to the
/// kernel, which checks them.
pub(crate) trait Backend: Send + Sync {
    /// The name used in traces and messages.
    fn name(&self) -> &'static str;

    /// Does this backend answer for a tracked descriptor with these
    /// flags? (uml and lkl leave the loopback sockets they released to
    /// the host.)
    fn owns(&self, flags: u8) -> bool;

    /// A new AF_INET/AF_INET6 stream socket the program asked TCP for.
    fn socket(&self, domain: c_int, ty: c_int, protocol: c_int) -> c_int;

    unsafe fn connect(
        &self,
        fd: c_int,
        _flags: u8,
        addr: *const sockaddr,
        len: socklen_t,
    ) -> c_int {
        // SAFETY: the program's arguments, unchanged (the trait's # Safety); libc
        // hands the pointers to the kernel, which checks them.
        unsafe { real::connect(fd, addr, len) }
    }

    unsafe fn bind(&self, fd: c_int, _flags: u8, addr: *const sockaddr, len: socklen_t) -> c_int {
        // SAFETY: the program's arguments, unchanged (the trait's # Safety); libc
        // hands the pointers to the kernel, which checks them.
        unsafe { real::bind(fd, addr, len) }
    }

    fn listen(&self, fd: c_int, _flags: u8, backlog: c_int) -> c_int {
        real::listen(fd, backlog)
    }

    /// accept() is accept4() with no flags.
    unsafe fn accept4(
        &self,
        fd: c_int,
        _flags: u8,
        addr: *mut sockaddr,
        len: *mut socklen_t,
        fl: c_int,
    ) -> c_int {
        // SAFETY: the program's arguments, unchanged (the trait's # Safety); libc
        // hands the pointers to the kernel, which checks them.
        unsafe { real::accept4(fd, addr, len, fl) }
    }

    unsafe fn setsockopt(
        &self,
        fd: c_int,
        _flags: u8,
        level: c_int,
        name: c_int,
        val: *const c_void,
        len: socklen_t,
    ) -> c_int {
        // SAFETY: the program's arguments, unchanged (the trait's # Safety); libc
        // hands the pointers to the kernel, which checks them.
        unsafe { real::setsockopt(fd, level, name, val, len) }
    }

    unsafe fn getsockopt(
        &self,
        fd: c_int,
        _flags: u8,
        level: c_int,
        name: c_int,
        val: *mut c_void,
        len: *mut socklen_t,
    ) -> c_int {
        // SAFETY: the program's arguments, unchanged (the trait's # Safety); libc
        // hands the pointers to the kernel, which checks them.
        unsafe { real::getsockopt(fd, level, name, val, len) }
    }

    unsafe fn getsockname(&self, fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int {
        // SAFETY: the program's arguments, unchanged (the trait's # Safety); libc
        // hands the pointers to the kernel, which checks them.
        unsafe { real::getsockname(fd, addr, len) }
    }

    unsafe fn getpeername(&self, fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int {
        // SAFETY: the program's arguments, unchanged (the trait's # Safety); libc
        // hands the pointers to the kernel, which checks them.
        unsafe { real::getpeername(fd, addr, len) }
    }

    fn shutdown(&self, fd: c_int, how: c_int) -> c_int {
        real::shutdown(fd, how)
    }

    /// epoll_ctl on a descriptor whose file is not final yet (a socket
    /// before its connect or listen completes).
    unsafe fn epoll_ctl(
        &self,
        epfd: c_int,
        op: c_int,
        fd: c_int,
        ev: *mut libc::epoll_event,
    ) -> c_int {
        // SAFETY: the program's arguments, unchanged (the trait's # Safety); the
        // kernel checks the pointer.
        unsafe { libc::syscall(libc::SYS_epoll_ctl, epfd, op, fd, ev) as c_int }
    }

    /// The program is closing `fd` (or dup2/dup3 replace it); the hook
    /// closes the descriptor itself afterwards.
    fn close(&self, _fd: c_int, _flags: u8) {}

    /// `newfd` became a duplicate of `oldfd`; returns whether the backend
    /// now answers for `newfd` too.
    fn dup(&self, _oldfd: c_int, _newfd: c_int) -> bool {
        false
    }
}

/// A configuration that could not be read: sockets stay plain TCP and the
/// shim owns none of them.
pub(crate) struct Passthrough;

impl Backend for Passthrough {
    fn name(&self) -> &'static str {
        "passthrough"
    }

    fn owns(&self, _flags: u8) -> bool {
        false
    }

    fn socket(&self, domain: c_int, ty: c_int, protocol: c_int) -> c_int {
        real::socket(domain, ty, protocol)
    }
}

static BACKEND: OnceCell<Box<dyn Backend>> = OnceCell::new();

/// This process's backend, chosen once from the configuration (at the
/// first TCP socket) and wrapped as the environment asks.
pub(crate) fn backend() -> &'static dyn Backend {
    BACKEND.get_or_init(build).as_ref()
}

fn build() -> Box<dyn Backend> {
    let base: Box<dyn Backend> = match runtime::mode() {
        Mode::Native(policy) => Box::new(crate::backends::Native(policy)),
        Mode::Uml(config) => Box::new(crate::backends::Uml(config.as_ref())),
        Mode::Lkl(config) => Box::new(crate::backends::Lkl(config.as_ref())),
        Mode::Passthrough => Box::new(Passthrough),
    };
    let faulty: Box<dyn Backend> = match crate::faults::from_env() {
        Some(_) => Box::new(crate::faults::Faulty::new(base)),
        None => base,
    };
    match crate::trace::from_env() {
        Some(out) => Box::new(crate::trace::Traced::new(faulty, out)),
        None => faulty,
    }
}
