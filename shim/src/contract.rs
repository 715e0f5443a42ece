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
//! trace(faults(backend)): the trace shows what the program saw. A
//! wrapper writes one method, [`Wrapper::call`]; its [`Backend`]
//! methods come from the one list of the contract's calls below, so a
//! new method of the contract is one line there.

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

/// A wrapper around another backend ([`crate::trace`], [`crate::faults`]):
/// every call of the contract reaches the inner backend through
/// [`Wrapper::call`], which sees it with its arguments ([`Call`]) and may
/// answer instead of the inner backend, or record what it answered.
/// [`Backend`] is implemented for every wrapper from the one list of the
/// contract's calls ([`contract_calls!`]).
pub(crate) trait Wrapper: Send + Sync {
    /// The backend wrapped.
    fn inner(&self) -> &dyn Backend;

    /// Makes `call`: `run` is the inner backend's answer.
    fn call<R: Answer>(&self, call: &Call, run: impl FnOnce() -> R) -> R;
}

/// What a contract call returns, as a wrapper sees it.
pub(crate) trait Answer: Copy {
    /// The number a trace line shows as the result.
    fn shown(self) -> i64;

    /// The call's failure (errno says why), for calls that can fail.
    fn failure() -> Option<Self>;
}

impl Answer for c_int {
    fn shown(self) -> i64 {
        i64::from(self)
    }

    fn failure() -> Option<c_int> {
        Some(-1)
    }
}

impl Answer for () {
    fn shown(self) -> i64 {
        0
    }

    fn failure() -> Option<()> {
        None
    }
}

impl Answer for bool {
    fn shown(self) -> i64 {
        i64::from(self)
    }

    fn failure() -> Option<bool> {
        None
    }
}

/// The calls of [`Backend`] a wrapper passes on, each once: whether it is
/// unsafe, its arguments, its result, and how a trace line shows it (a
/// format string over the arguments). From this list come [`Call`], its
/// trace text, and the [`Backend`] implementation of every [`Wrapper`].
macro_rules! contract_calls {
    ($($safety:tt $name:ident($($arg:ident: $ty:ty),*) -> $ret:ty => $fmt:literal $(, $fa:expr)*;)*) => {
        /// One call of the contract with its arguments, as a wrapper sees
        /// it; the variants are named after the methods.
        #[allow(non_camel_case_types)]
        #[derive(Clone, Copy)]
        pub(crate) enum Call {
            $(
                #[allow(missing_docs)]
                $name { $($arg: $ty),* },
            )*
        }

        impl std::fmt::Display for Call {
            /// The call as a trace line shows it. Pointer arguments are
            /// read here, before the call: the program may reuse its
            /// memory.
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                match *self {
                    $(Call::$name { $($arg),* } => {
                        $(let _ = $arg;)*
                        write!(f, $fmt $(, $fa)*)
                    })*
                }
            }
        }

        impl<W: Wrapper> Backend for W {
            fn name(&self) -> &'static str {
                self.inner().name()
            }

            fn owns(&self, flags: u8) -> bool {
                self.inner().owns(flags)
            }

            $(contract_calls!(@method $safety $name($($arg: $ty),*) -> $ret);)*
        }
    };
    (@method safe $name:ident($($arg:ident: $ty:ty),*) -> $ret:ty) => {
        fn $name(&self, $($arg: $ty),*) -> $ret {
            self.call(&Call::$name { $($arg),* }, || self.inner().$name($($arg),*))
        }
    };
    (@method unsafe $name:ident($($arg:ident: $ty:ty),*) -> $ret:ty) => {
        unsafe fn $name(&self, $($arg: $ty),*) -> $ret {
            self.call(&Call::$name { $($arg),* }, || {
                // SAFETY: the caller's arguments, unchanged, under this
                // method's contract (the trait's # Safety).
                unsafe { self.inner().$name($($arg),*) }
            })
        }
    };
}

contract_calls! {
    safe socket(domain: c_int, ty: c_int, protocol: c_int) -> c_int
        => "socket({}, {ty:#x}, {protocol})", if domain == libc::AF_INET6 { "AF_INET6" } else { "AF_INET" };
    unsafe connect(fd: c_int, flags: u8, addr: *const sockaddr, len: socklen_t) -> c_int
        => "connect(fd={fd}, {})", addr_text(addr, len);
    unsafe bind(fd: c_int, flags: u8, addr: *const sockaddr, len: socklen_t) -> c_int
        => "bind(fd={fd}, {})", addr_text(addr, len);
    safe listen(fd: c_int, flags: u8, backlog: c_int) -> c_int
        => "listen(fd={fd}, {backlog})";
    unsafe accept4(fd: c_int, flags: u8, addr: *mut sockaddr, len: *mut socklen_t, fl: c_int) -> c_int
        => "accept4(fd={fd}, {fl:#x})";
    unsafe setsockopt(fd: c_int, flags: u8, level: c_int, name: c_int, val: *const c_void, len: socklen_t) -> c_int
        => "setsockopt(fd={fd}, level={level}, name={name}, len={len})";
    unsafe getsockopt(fd: c_int, flags: u8, level: c_int, name: c_int, val: *mut c_void, len: *mut socklen_t) -> c_int
        => "getsockopt(fd={fd}, level={level}, name={name})";
    unsafe getsockname(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int
        => "getsockname(fd={fd})";
    unsafe getpeername(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int
        => "getpeername(fd={fd})";
    safe shutdown(fd: c_int, how: c_int) -> c_int
        => "shutdown(fd={fd}, {how})";
    unsafe epoll_ctl(epfd: c_int, op: c_int, fd: c_int, ev: *mut libc::epoll_event) -> c_int
        => "epoll_ctl(epfd={epfd}, op={op}, fd={fd})";
    safe close(fd: c_int, flags: u8) -> ()
        => "close(fd={fd})";
    safe dup(oldfd: c_int, newfd: c_int) -> bool
        => "dup(fd={oldfd}) as {newfd}";
}

/// A socket address argument as a trace shows it: the address, or the
/// pointer and length when it cannot be read as one.
fn addr_text(addr: *const sockaddr, len: socklen_t) -> String {
    match crate::mem::read_addr(addr, len) {
        Some(a) => a.to_string(),
        None => format!("{addr:p}/{len}"),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Errno;

    /// A backend whose connects are all under way and whose accepts all
    /// wait.
    struct Pending;

    impl Backend for Pending {
        fn name(&self) -> &'static str {
            "pending"
        }

        fn owns(&self, _flags: u8) -> bool {
            true
        }

        fn socket(&self, _domain: c_int, _ty: c_int, _protocol: c_int) -> c_int {
            Errno(libc::EMFILE).fail()
        }

        unsafe fn connect(&self, _: c_int, _: u8, _: *const sockaddr, _: socklen_t) -> c_int {
            Errno(libc::EINPROGRESS).fail()
        }

        unsafe fn accept4(
            &self,
            _: c_int,
            _: u8,
            _: *mut sockaddr,
            _: *mut socklen_t,
            _: c_int,
        ) -> c_int {
            Errno(libc::EAGAIN).fail()
        }

        fn dup(&self, _oldfd: c_int, _newfd: c_int) -> bool {
            true
        }
    }

    /// A wrapper that counts the calls it passes on.
    struct Counting(Box<dyn Backend>, std::sync::atomic::AtomicUsize);

    impl Wrapper for Counting {
        fn inner(&self) -> &dyn Backend {
            self.0.as_ref()
        }

        fn call<R: Answer>(&self, _call: &Call, run: impl FnOnce() -> R) -> R {
            self.1.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            run()
        }
    }

    #[test]
    fn calls_read_as_trace_lines_show_them() {
        let raw = dropshim_abi::encode(&"198.18.1.2:80".parse().expect("an address"));
        let addr = raw.as_bytes().as_ptr().cast::<sockaddr>();
        let len = raw.as_bytes().len() as socklen_t;
        let cases = [
            (
                Call::socket {
                    domain: libc::AF_INET6,
                    ty: libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
                    protocol: 0,
                },
                "socket(AF_INET6, 0x80001, 0)",
            ),
            (
                Call::connect {
                    fd: 5,
                    flags: 0,
                    addr,
                    len,
                },
                "connect(fd=5, 198.18.1.2:80)",
            ),
            (
                Call::bind {
                    fd: 5,
                    flags: 0,
                    addr: std::ptr::null(),
                    len: 0,
                },
                "bind(fd=5, 0x0/0)",
            ),
            (
                Call::accept4 {
                    fd: 3,
                    flags: 0,
                    addr: std::ptr::null_mut(),
                    len: std::ptr::null_mut(),
                    fl: libc::SOCK_CLOEXEC,
                },
                "accept4(fd=3, 0x80000)",
            ),
            (
                Call::getsockopt {
                    fd: 4,
                    flags: 0,
                    level: 1,
                    name: 4,
                    val: std::ptr::null_mut(),
                    len: std::ptr::null_mut(),
                },
                "getsockopt(fd=4, level=1, name=4)",
            ),
            (Call::close { fd: 4, flags: 0 }, "close(fd=4)"),
            (Call::dup { oldfd: 4, newfd: 9 }, "dup(fd=4) as 9"),
        ];
        for (call, text) in cases {
            assert_eq!(call.to_string(), text);
        }
    }

    #[test]
    fn a_wrapper_passes_every_call_on_with_its_answer() {
        let w = Counting(Box::new(Pending), Default::default());
        assert_eq!(w.name(), "pending");
        assert!(w.owns(0));
        assert_eq!(w.socket(libc::AF_INET, libc::SOCK_STREAM, 0), -1);
        assert_eq!(
            std::io::Error::last_os_error().raw_os_error(),
            Some(libc::EMFILE)
        );
        // SAFETY: null pointers, which the inner backend never reads.
        let r = unsafe { w.connect(5, 0, std::ptr::null(), 0) };
        assert_eq!(r, -1);
        assert_eq!(
            std::io::Error::last_os_error().raw_os_error(),
            Some(libc::EINPROGRESS)
        );
        assert!(w.dup(5, 6));
        w.close(5, 0);
        assert_eq!(w.1.load(std::sync::atomic::Ordering::Relaxed), 4);
    }
}
