//! The three backends behind the contract: each adapter maps the
//! [`Backend`] calls onto its module ([`crate::native`], [`crate::uml`],
//! [`crate::lkl`]), which holds the socket semantics.

use crate::contract::Backend;
use crate::fdtable::{self, BACKEND_OWNED, FIXED, MPTCP, TRACKED};
use crate::libc_real as real;
use crate::mem::{copy_in, put_int, read_addr};
use crate::{lkl, log, native, uml, Errno};
use dropshim_backend_native::socket::SockOpt;
use dropshim_conf::{DeviceConfig, Policy};
use libc::{c_int, c_void, sockaddr, socklen_t};

/// Options longer than this are passed through without being recorded
/// (no option a program sets before connecting comes close).
const MAX_RECORDED_OPTION: socklen_t = 1024;

/// Host-kernel MPTCP: the socket is the kernel's own; the shim only picks
/// its protocol before it is fixed and reports it on close.
pub(crate) struct Native(pub &'static Policy);

impl Backend for Native {
    fn name(&self) -> &'static str {
        "native"
    }

    fn owns(&self, flags: u8) -> bool {
        flags & TRACKED != 0
    }

    fn socket(&self, domain: c_int, ty: c_int, _protocol: c_int) -> c_int {
        native::socket(self.0, domain, ty).unwrap_or_else(Errno::fail)
    }

    unsafe fn connect(&self, fd: c_int, flags: u8, addr: *const sockaddr, len: socklen_t) -> c_int {
        if flags & FIXED == 0 {
            native::before_connect(self.0, fd, flags, read_addr(addr, len));
        }
        // SAFETY: the program's arguments, unchanged, as this method's contract
        // (the trait's # Safety) promises.
        unsafe { real::connect(fd, addr, len) }
    }

    unsafe fn bind(&self, fd: c_int, flags: u8, addr: *const sockaddr, len: socklen_t) -> c_int {
        if flags & FIXED == 0 {
            native::before_bind(self.0, fd, flags, read_addr(addr, len));
        }
        // SAFETY: the program's arguments, unchanged, as this method's contract
        // (the trait's # Safety) promises.
        unsafe { real::bind(fd, addr, len) }
    }

    fn listen(&self, fd: c_int, flags: u8, backlog: c_int) -> c_int {
        native::before_listen(self.0, fd, flags);
        real::listen(fd, backlog)
    }

    /// Sockets accepted on an MPTCP listener are MPTCP too (or fell back,
    /// which the close report tells apart).
    unsafe fn accept4(
        &self,
        fd: c_int,
        flags: u8,
        addr: *mut sockaddr,
        len: *mut socklen_t,
        fl: c_int,
    ) -> c_int {
        // SAFETY: the program's arguments, unchanged, as this method's contract
        // (the trait's # Safety) promises.
        let conn = unsafe { real::accept4(fd, addr, len, fl) };
        if conn >= 0 && flags & MPTCP != 0 {
            fdtable::set(conn, TRACKED | MPTCP | FIXED);
        }
        conn
    }

    unsafe fn setsockopt(
        &self,
        fd: c_int,
        flags: u8,
        level: c_int,
        name: c_int,
        val: *const c_void,
        len: socklen_t,
    ) -> c_int {
        if flags & FIXED != 0 || len > MAX_RECORDED_OPTION {
            // SAFETY: the program's arguments, unchanged, as this method's
            // contract (the trait's # Safety) promises.
            return unsafe { real::setsockopt(fd, level, name, val, len) };
        }
        // A NULL or unreadable value still goes through the native path:
        // MPTCP may refuse the option before reading it (EOPNOTSUPP) where
        // TCP says EFAULT, and the program must see what TCP says. Such a
        // call never succeeds, so nothing wrong is recorded.
        let mut value = vec![0u8; len as usize];
        if !copy_in(val as *const u8, &mut value) {
            value.clear();
        }
        let opt = SockOpt { level, name, value };
        native::setsockopt(fd, flags, opt, || {
            // SAFETY: the program's arguments, unchanged, as this method's
            // contract (the trait's # Safety) promises.
            unsafe { real::setsockopt(fd, level, name, val, len) }
        })
    }

    /// The program asked for TCP and must not be able to tell it got
    /// MPTCP: SO_PROTOCOL says TCP.
    unsafe fn getsockopt(
        &self,
        fd: c_int,
        flags: u8,
        level: c_int,
        name: c_int,
        val: *mut c_void,
        len: *mut socklen_t,
    ) -> c_int {
        // SAFETY: the program's arguments, unchanged, as this method's contract
        // (the trait's # Safety) promises.
        let ret = unsafe { real::getsockopt(fd, level, name, val, len) };
        if ret == 0 && level == libc::SOL_SOCKET && name == libc::SO_PROTOCOL && flags & MPTCP != 0
        {
            return put_int(val, len, libc::IPPROTO_TCP);
        }
        ret
    }

    fn close(&self, fd: c_int, flags: u8) {
        if flags & MPTCP != 0 && log::enabled(log::Level::Info) {
            native::report_close(fd);
        }
    }
}

/// A User Mode Linux instance carries the sockets ([`crate::uml`]).
pub(crate) struct Uml(pub &'static DeviceConfig);

/// A Linux Kernel Library in this process carries the sockets
/// ([`crate::lkl`]).
pub(crate) struct Lkl(pub &'static DeviceConfig);

/// The emulated-socket backends differ only in the module that answers:
/// the same adapter for both.
macro_rules! emulated {
    ($ty:ident, $module:ident, $name:literal) => {
        impl Backend for $ty {
            fn name(&self) -> &'static str {
                $name
            }

            fn owns(&self, flags: u8) -> bool {
                flags & BACKEND_OWNED != 0
            }

            fn socket(&self, domain: c_int, ty: c_int, _protocol: c_int) -> c_int {
                $module::socket(self.0, domain, ty)
            }

            unsafe fn connect(
                &self,
                fd: c_int,
                _flags: u8,
                addr: *const sockaddr,
                len: socklen_t,
            ) -> c_int {
                // SAFETY: the program's arguments, unchanged, as this method's
                // contract (the trait's # Safety) promises.
                unsafe { $module::connect(fd, addr, len) }
            }

            unsafe fn bind(
                &self,
                fd: c_int,
                _flags: u8,
                addr: *const sockaddr,
                len: socklen_t,
            ) -> c_int {
                // SAFETY: the program's arguments, unchanged, as this method's
                // contract (the trait's # Safety) promises.
                unsafe { $module::bind(fd, addr, len) }
            }

            fn listen(&self, fd: c_int, _flags: u8, backlog: c_int) -> c_int {
                $module::listen(fd, backlog)
            }

            unsafe fn accept4(
                &self,
                fd: c_int,
                _flags: u8,
                addr: *mut sockaddr,
                len: *mut socklen_t,
                fl: c_int,
            ) -> c_int {
                // SAFETY: the program's arguments, unchanged, as this method's
                // contract (the trait's # Safety) promises.
                unsafe { $module::accept4(fd, addr, len, fl) }
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
                // SAFETY: the program's arguments, unchanged, as this method's
                // contract (the trait's # Safety) promises.
                unsafe { $module::setsockopt(fd, level, name, val, len) }
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
                // SAFETY: the program's arguments, unchanged, as this method's
                // contract (the trait's # Safety) promises.
                unsafe { $module::getsockopt(fd, level, name, val, len) }
            }

            unsafe fn getsockname(
                &self,
                fd: c_int,
                addr: *mut sockaddr,
                len: *mut socklen_t,
            ) -> c_int {
                // SAFETY: the program's arguments, unchanged, as this method's
                // contract (the trait's # Safety) promises.
                unsafe { $module::getsockname(fd, addr, len) }
            }

            unsafe fn getpeername(
                &self,
                fd: c_int,
                addr: *mut sockaddr,
                len: *mut socklen_t,
            ) -> c_int {
                // SAFETY: the program's arguments, unchanged, as this method's
                // contract (the trait's # Safety) promises.
                unsafe { $module::getpeername(fd, addr, len) }
            }

            fn shutdown(&self, fd: c_int, how: c_int) -> c_int {
                $module::shutdown(fd, how)
            }

            unsafe fn epoll_ctl(
                &self,
                epfd: c_int,
                op: c_int,
                fd: c_int,
                ev: *mut libc::epoll_event,
            ) -> c_int {
                // SAFETY: the program's arguments, unchanged, as this method's
                // contract (the trait's # Safety) promises.
                unsafe { $module::epoll_ctl(epfd, op, fd, ev) }
            }

            fn close(&self, fd: c_int, _flags: u8) {
                $module::forget(fd)
            }

            fn dup(&self, oldfd: c_int, newfd: c_int) -> bool {
                $module::dup(oldfd, newfd)
            }
        }
    };
}

emulated!(Uml, uml, "uml");
emulated!(Lkl, lkl, "lkl");
