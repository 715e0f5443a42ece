//! The exported C symbols: the only doors from the program into the shim.
//!
//! Each hook sorts the call first, as cheaply as possible (one atomic load
//! from the descriptor table, or a look at socket()'s arguments): calls on
//! descriptors the shim does not manage go straight to libc. The rest go
//! to this process's backend through the contract
//! ([`crate::contract::backend`]). redhook resolves libc's own functions
//! with dlsym(RTLD_NEXT) once, and if a hook ever panicked it would call
//! libc's function instead of unwinding into C.
//!
//! Nothing else lives here: the helpers the hooks and the backends share
//! sit below both ([`crate::mem`], [`crate::libc_real`]), so no backend
//! depends on this module.

use crate::contract::{backend, Backend};
use crate::fdtable::{self, TRACKED};
use crate::Errno;
use libc::{c_int, c_void, sockaddr, socklen_t};

/// The backend that answers for `fd`, if the shim manages it.
#[inline]
fn owner(fd: c_int) -> Option<(&'static dyn Backend, u8)> {
    let flags = fdtable::get(fd);
    if flags & TRACKED == 0 {
        return None;
    }
    let b = backend();
    b.owns(flags).then_some((b, flags))
}

/// Is this a request for a TCP socket the shim should take over?
fn wants_tcp(domain: c_int, ty: c_int, protocol: c_int) -> bool {
    (domain == libc::AF_INET || domain == libc::AF_INET6)
        && ty & 0xf == libc::SOCK_STREAM
        && (protocol == 0 || protocol == libc::IPPROTO_TCP)
}

redhook::hook! {
    unsafe fn socket(domain: c_int, ty: c_int, protocol: c_int) -> c_int => ds_socket {
        if !wants_tcp(domain, ty, protocol) {
            // SAFETY: libc's own socket, with the program's integer arguments.
            return unsafe { redhook::real!(socket)(domain, ty, protocol) };
        }
        backend().socket(domain, ty, protocol)
    }
}

redhook::hook! {
    unsafe fn connect(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int => ds_connect {
        match owner(fd) {
            // SAFETY: the program's arguments, unchanged, as the backend contract asks.
            Some((b, flags)) => unsafe { b.connect(fd, flags, addr, len) },
            // SAFETY: libc's own connect, with the program's arguments unchanged: the
            // program made this call under libc's contract.
            None => unsafe { crate::libc_real::connect(fd, addr, len) },
        }
    }
}

redhook::hook! {
    unsafe fn bind(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int => ds_bind {
        match owner(fd) {
            // SAFETY: the program's arguments, unchanged, as the backend contract asks.
            Some((b, flags)) => unsafe { b.bind(fd, flags, addr, len) },
            // SAFETY: libc's own bind, with the program's arguments unchanged: the
            // program made this call under libc's contract.
            None => unsafe { crate::libc_real::bind(fd, addr, len) },
        }
    }
}

redhook::hook! {
    unsafe fn listen(fd: c_int, backlog: c_int) -> c_int => ds_listen {
        match owner(fd) {
            Some((b, flags)) => b.listen(fd, flags, backlog),
            // libc's own listen (or the same system call with the run's pass).
            None => crate::libc_real::listen(fd, backlog),
        }
    }
}

redhook::hook! {
    unsafe fn accept(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int => ds_accept {
        match owner(fd) {
            // SAFETY: the program's arguments, unchanged, as the backend contract asks.
            Some((b, flags)) => unsafe { b.accept4(fd, flags, addr, len, 0) },
            // SAFETY: libc's own accept, with the program's arguments unchanged: the
            // program made this call under libc's contract.
            None => unsafe { redhook::real!(accept)(fd, addr, len) },
        }
    }
}

redhook::hook! {
    unsafe fn accept4(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t, fl: c_int) -> c_int => ds_accept4 {
        match owner(fd) {
            // SAFETY: the program's arguments, unchanged, as the backend contract asks.
            Some((b, flags)) => unsafe { b.accept4(fd, flags, addr, len, fl) },
            // SAFETY: libc's own accept4, with the program's arguments unchanged: the
            // program made this call under libc's contract.
            None => unsafe { redhook::real!(accept4)(fd, addr, len, fl) },
        }
    }
}

redhook::hook! {
    unsafe fn setsockopt(fd: c_int, level: c_int, name: c_int, val: *const c_void, len: socklen_t) -> c_int => ds_setsockopt {
        match owner(fd) {
            // SAFETY: the program's arguments, unchanged, as the backend contract asks.
            Some((b, flags)) => unsafe { b.setsockopt(fd, flags, level, name, val, len) },
            // SAFETY: libc's own setsockopt, with the program's arguments unchanged: the
            // program made this call under libc's contract.
            None => unsafe { redhook::real!(setsockopt)(fd, level, name, val, len) },
        }
    }
}

redhook::hook! {
    unsafe fn getsockopt(fd: c_int, level: c_int, name: c_int, val: *mut c_void, len: *mut socklen_t) -> c_int => ds_getsockopt {
        match owner(fd) {
            // SAFETY: the program's arguments, unchanged, as the backend contract asks.
            Some((b, flags)) => unsafe { b.getsockopt(fd, flags, level, name, val, len) },
            // SAFETY: libc's own getsockopt, with the program's arguments unchanged: the
            // program made this call under libc's contract.
            None => unsafe { redhook::real!(getsockopt)(fd, level, name, val, len) },
        }
    }
}

redhook::hook! {
    unsafe fn getsockname(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int => ds_getsockname {
        match owner(fd) {
            // SAFETY: the program's arguments, unchanged, as the backend contract asks.
            Some((b, _)) => unsafe { b.getsockname(fd, addr, len) },
            // SAFETY: libc's own getsockname, with the program's arguments unchanged: the
            // program made this call under libc's contract.
            None => unsafe { redhook::real!(getsockname)(fd, addr, len) },
        }
    }
}

redhook::hook! {
    unsafe fn getpeername(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int => ds_getpeername {
        match owner(fd) {
            // SAFETY: the program's arguments, unchanged, as the backend contract asks.
            Some((b, _)) => unsafe { b.getpeername(fd, addr, len) },
            // SAFETY: libc's own getpeername, with the program's arguments unchanged: the
            // program made this call under libc's contract.
            None => unsafe { redhook::real!(getpeername)(fd, addr, len) },
        }
    }
}

redhook::hook! {
    unsafe fn shutdown(fd: c_int, how: c_int) -> c_int => ds_shutdown {
        match owner(fd) {
            Some((b, _)) => b.shutdown(fd, how),
            // SAFETY: libc's own shutdown, with the program's integer arguments.
            None => unsafe { redhook::real!(shutdown)(fd, how) },
        }
    }
}

/// The descriptor `fd` is going away (close, or dup2/dup3 over it):
/// forget it, and let its backend know.
fn forget(fd: c_int) {
    let flags = fdtable::take(fd);
    if flags & TRACKED != 0 {
        let b = backend();
        if b.owns(flags) {
            b.close(fd, flags);
        }
    }
}

redhook::hook! {
    unsafe fn close(fd: c_int) -> c_int => ds_close {
        forget(fd);
        // SAFETY: libc's own close, on the descriptor the program closes.
        unsafe { redhook::real!(close)(fd) }
    }
}

/// dup2/dup3 close what `newfd` was: forget it like close() would.
fn forget_replaced(oldfd: c_int, newfd: c_int, ret: c_int) -> c_int {
    if ret >= 0 && oldfd != newfd {
        forget(newfd);
    }
    ret
}

/// A duplicate of a backend's socket is the same socket under a second
/// number: the backend learns of it, so it answers getsockname,
/// getpeername and getsockopt as the original (the program's descriptor
/// itself may be a Unix socket or a bridge).
fn after_dup(oldfd: c_int, newfd: c_int) -> c_int {
    if newfd >= 0 && newfd != oldfd {
        if let Some((b, flags)) = owner(oldfd) {
            if b.dup(oldfd, newfd) {
                fdtable::set(newfd, flags);
            }
        }
    }
    newfd
}

redhook::hook! {
    unsafe fn dup(oldfd: c_int) -> c_int => ds_dup {
        // SAFETY: libc's own dup, with the program's integer argument.
        after_dup(oldfd, unsafe { redhook::real!(dup)(oldfd) })
    }
}

redhook::hook! {
    unsafe fn dup2(oldfd: c_int, newfd: c_int) -> c_int => ds_dup2 {
        // SAFETY: libc's own dup2, with the program's integer arguments.
        let ret = forget_replaced(oldfd, newfd, unsafe { redhook::real!(dup2)(oldfd, newfd) });
        after_dup(oldfd, ret)
    }
}

redhook::hook! {
    unsafe fn dup3(oldfd: c_int, newfd: c_int, fl: c_int) -> c_int => ds_dup3 {
        // SAFETY: libc's own dup3, with the program's integer arguments.
        let ret = forget_replaced(oldfd, newfd, unsafe { redhook::real!(dup3)(oldfd, newfd, fl) });
        after_dup(oldfd, ret)
    }
}

// fcntl is variadic in C; its third argument, when there is one, is an
// integer or a pointer, which the x86-64 and AArch64 calling conventions
// pass in the same register as a fixed argument of pointer width.
// Programs built with 64-bit file offsets (python among them) call fcntl64.
redhook::hook! {
    unsafe fn fcntl(fd: c_int, cmd: c_int, arg: libc::c_ulong) -> c_int => ds_fcntl {
        // SAFETY: libc's own fcntl, with the program's arguments unchanged (a
        // pointer argument is the program's, made under libc's contract).
        let ret = unsafe { redhook::real!(fcntl)(fd, cmd, arg) };
        if cmd == libc::F_DUPFD || cmd == libc::F_DUPFD_CLOEXEC {
            return after_dup(fd, ret);
        }
        ret
    }
}

redhook::hook! {
    unsafe fn fcntl64(fd: c_int, cmd: c_int, arg: libc::c_ulong) -> c_int => ds_fcntl64 {
        // SAFETY: libc's own fcntl64, with the program's arguments unchanged (a
        // pointer argument is the program's, made under libc's contract).
        let ret = unsafe { redhook::real!(fcntl64)(fd, cmd, arg) };
        if cmd == libc::F_DUPFD || cmd == libc::F_DUPFD_CLOEXEC {
            return after_dup(fd, ret);
        }
        ret
    }
}

// uml and lkl: a socket whose connect is not final yet gets a new file under
// its descriptor later; its epoll registrations are recorded to be made again.
redhook::hook! {
    unsafe fn epoll_ctl(epfd: c_int, op: c_int, fd: c_int, ev: *mut libc::epoll_event) -> c_int => ds_epoll_ctl {
        match owner(fd) {
            // SAFETY: the program's arguments, unchanged, as the backend contract asks.
            Some((b, flags)) if flags & crate::fdtable::FIXED == 0 => unsafe { b.epoll_ctl(epfd, op, fd, ev) },
            // SAFETY: libc's own epoll_ctl, with the program's arguments unchanged: the
            // program made this call under libc's contract.
            _ => unsafe { redhook::real!(epoll_ctl)(epfd, op, fd, ev) },
        }
    }
}

// The data calls go straight to the kernel; they are hooked only so that
// DROPSHIM_FAULTS can reach them. With no faults asked for, the cost is
// one relaxed atomic load.
macro_rules! data_hook {
    ($name:ident, $ds:ident, ($fd:ident, $buf:ident : $bt:ty, $len:ident $(, $a:ident : $t:ty)*)) => {
        redhook::hook! {
            unsafe fn $name($fd: c_int, $buf: $bt, $len: libc::size_t $(, $a: $t)*) -> libc::ssize_t => $ds {
                if crate::faults::active() {
                    match crate::faults::data(stringify!($name), $fd, $len) {
                        // SAFETY: libc's own call with the program's arguments; a
                        // shortened length is at most the program's, so the buffer
                        // still covers it.
                        crate::faults::Data::Go(n) => return unsafe { redhook::real!($name)($fd, $buf, n $(, $a)*) },
                        crate::faults::Data::Fail(e) => {
                            Errno(e).set();
                            return -1;
                        }
                    }
                }
                // SAFETY: libc's own call, with the program's arguments unchanged:
                // the program made it under libc's contract.
                unsafe { redhook::real!($name)($fd, $buf, $len $(, $a)*) }
            }
        }
    };
}

data_hook!(read, ds_read, (fd, buf: *mut c_void, count));
data_hook!(write, ds_write, (fd, buf: *const c_void, count));
data_hook!(recv, ds_recv, (fd, buf: *mut c_void, len, flags: c_int));
data_hook!(send, ds_send, (fd, buf: *const c_void, len, flags: c_int));
data_hook!(recvfrom, ds_recvfrom, (fd, buf: *mut c_void, len, flags: c_int, addr: *mut sockaddr, alen: *mut socklen_t));
data_hook!(sendto, ds_sendto, (fd, buf: *const c_void, len, flags: c_int, addr: *const sockaddr, alen: socklen_t));
