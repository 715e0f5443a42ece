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
//! The helpers below the hooks (checked copies of the program's memory,
//! socket addresses, the connect wait) are shared by every backend.

use crate::contract::{backend, Backend};
use crate::fdtable::{self, TRACKED};
use crate::Errno;
use libc::{c_int, c_void, sockaddr, socklen_t};
use std::net::{IpAddr, SocketAddr};

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

/// What a copy between the shim and the program's memory did.
enum Copied {
    All,
    /// The kernel refused the call itself (a seccomp sandbox may forbid
    /// process_vm_readv/writev): the caller copies directly.
    Forbidden,
    /// A bad pointer, or fewer bytes than asked.
    Failed,
}

/// process_vm_readv or process_vm_writev (`nr`) on our own pid: `len`
/// bytes between `local` (ours) and `remote` (the program's pointer).
/// The kernel reaches the program's memory through its own checked user
/// copy, so unmapped or read-only memory is an error instead of a fault,
/// and alignment does not matter.
fn own_vm_copy(nr: libc::c_long, local: *mut c_void, remote: *mut c_void, len: usize) -> Copied {
    let local = libc::iovec {
        iov_base: local,
        iov_len: len,
    };
    let remote = libc::iovec {
        iov_base: remote,
        iov_len: len,
    };
    // Every variadic argument is passed at full register width: the sixth
    // goes on the stack, where a 32-bit value would leave the upper half
    // undefined (and the flags must be zero).
    // SAFETY: both iovecs are live for the call; the kernel touches our
    // side only within `local` (which the caller owns for `len` bytes)
    // and the program's side through its checked user copy.
    let n = unsafe {
        libc::syscall(
            nr,
            libc::getpid() as libc::c_long,
            &local as *const libc::iovec,
            1 as libc::c_ulong,
            &remote as *const libc::iovec,
            1 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    };
    if n == len as libc::c_long {
        return Copied::All;
    }
    let err = std::io::Error::last_os_error().raw_os_error();
    if n < 0 && matches!(err, Some(libc::ENOSYS | libc::EPERM)) {
        return Copied::Forbidden;
    }
    Copied::Failed
}

/// Copies `dst.len()` bytes of the program's memory at `src` into `dst`
/// without trusting the pointer: a bad pointer (which the kernel would
/// answer with EFAULT) must not crash the program inside the shim.
/// Returns false unless every byte was copied.
pub(crate) fn copy_in(src: *const u8, dst: &mut [u8]) -> bool {
    if src.is_null() {
        return false;
    }
    if dst.is_empty() {
        return true;
    }
    let len = dst.len();
    match own_vm_copy(
        libc::SYS_process_vm_readv,
        dst.as_mut_ptr() as *mut c_void,
        src as *mut c_void,
        len,
    ) {
        Copied::All => true,
        Copied::Failed => false,
        Copied::Forbidden => {
            // Read the memory directly, trusting the pointer as libc
            // itself does.
            // SAFETY: the program promises `len` readable bytes at `src`
            // (the same promise the kernel relies on).
            unsafe { std::ptr::copy_nonoverlapping(src, dst.as_mut_ptr(), len) };
            true
        }
    }
}

/// Copies `src` into the program's memory at `dst` without trusting the
/// pointer, the counterpart of [`copy_in`]. Returns false unless every
/// byte was written.
pub(crate) fn copy_out(dst: *mut u8, src: &[u8]) -> bool {
    if src.is_empty() {
        return true;
    }
    if dst.is_null() {
        return false;
    }
    match own_vm_copy(
        libc::SYS_process_vm_writev,
        src.as_ptr() as *mut c_void,
        dst as *mut c_void,
        src.len(),
    ) {
        Copied::All => true,
        Copied::Failed => false,
        Copied::Forbidden => {
            // Write directly, byte-wise (no alignment assumed), trusting
            // the pointer as libc itself does.
            // SAFETY: the program promises `src.len()` writable bytes at
            // `dst` (the same promise the kernel relies on).
            unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), dst, src.len()) };
            true
        }
    }
}

/// The length a program passes to getsockopt, read as the kernel reads
/// it: unreadable is EFAULT, negative (it is a signed int) is EINVAL.
pub(crate) fn read_optlen(len: *mut socklen_t) -> Result<usize, Errno> {
    let mut raw = [0u8; std::mem::size_of::<socklen_t>()];
    if !copy_in(len as *const u8, &mut raw) {
        return Err(Errno(libc::EFAULT));
    }
    usize::try_from(c_int::from_ne_bytes(raw)).map_err(|_| Errno(libc::EINVAL))
}

/// Answers getsockopt with `value` the way the kernel writes an option:
/// an unreadable length is EFAULT, a negative one EINVAL, a short buffer
/// gets the leading bytes, and an unwritable value or length is EFAULT.
/// The program's pointers may be unaligned or bad; neither crashes here.
pub(crate) fn put_sockopt(val: *mut c_void, len: *mut socklen_t, value: &[u8]) -> c_int {
    let want = match read_optlen(len) {
        Ok(n) => n,
        Err(e) => return e.fail(),
    };
    let n = want.min(value.len());
    if !copy_out(val as *mut u8, &value[..n]) {
        return Errno(libc::EFAULT).fail();
    }
    if !copy_out(len as *mut u8, &(n as socklen_t).to_ne_bytes()) {
        return Errno(libc::EFAULT).fail();
    }
    0
}

/// [`put_sockopt`] for an int option.
pub(crate) fn put_int(val: *mut c_void, len: *mut socklen_t, v: c_int) -> c_int {
    put_sockopt(val, len, &v.to_ne_bytes())
}

/// How a blocking connect() of the uml and lkl backends waits for the
/// connect their helper thread runs: in a host read() of one end of a
/// socket pair, so a signal ends the wait exactly as it ends a kernel
/// socket's connect (EINTR without SA_RESTART, restarted with it).
/// Returns false if a signal interrupted the wait. Closes `wait`.
pub(crate) fn wait_for_connect(wait: c_int) -> bool {
    let mut byte = 0u8;
    // SAFETY: a one-byte read into a live local from our own descriptor.
    let n = unsafe { libc::read(wait, (&mut byte as *mut u8).cast(), 1) };
    let interrupted = n < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR);
    // SAFETY: closing our own descriptor.
    unsafe { libc::close(wait) };
    !interrupted
}

/// The helper thread's side of `wait_for_connect`: the connect is over.
/// The waiter may have been interrupted and gone (MSG_NOSIGNAL: then the
/// error is moot). Closes `done`.
pub(crate) fn connect_done(done: c_int) {
    // SAFETY: a one-byte send from a live buffer on our own descriptor,
    // then closing it.
    unsafe {
        libc::send(done, [1u8].as_ptr().cast(), 1, libc::MSG_NOSIGNAL);
        libc::close(done);
    }
}

/// Copies the program's socket address, if it is an IPv4/IPv6 one and
/// readable (otherwise the real call reports the program's mistake). The
/// bytes are read through [`copy_in`] and decoded by [`dropshim_abi`].
pub(crate) fn read_addr(addr: *const sockaddr, len: socklen_t) -> Option<SocketAddr> {
    if addr.is_null() || (len as usize) < std::mem::size_of::<libc::sa_family_t>() {
        return None;
    }
    let mut buf = [0u8; dropshim_abi::SOCKADDR_STORAGE_LEN];
    let n = (len as usize).min(buf.len());
    if !copy_in(addr as *const u8, &mut buf[..n]) {
        return None;
    }
    dropshim_abi::decode(&buf[..n])
}

/// Writes `a` into the program's address buffer (the backends'
/// getsockname, getpeername and accept) in the socket's own family (IPv4
/// on an AF_INET6 socket is IPv4-mapped), truncating like the kernel when
/// the buffer is short. Both pointers are the program's and go through
/// the checked copies: a bad one leaves the program's memory alone
/// instead of crashing it, and the result is false (the kernel's EFAULT).
/// NULL pointers ask for nothing and are fine.
pub(crate) fn write_addr(
    a: SocketAddr,
    domain: c_int,
    addr: *mut sockaddr,
    len: *mut socklen_t,
) -> bool {
    if addr.is_null() || len.is_null() {
        return true;
    }
    let Ok(room) = read_optlen(len) else {
        return false;
    };
    // An IPv4-mapped address on an AF_INET socket is reported as IPv4;
    // an IPv4 one on an AF_INET6 socket is mapped by the encoder.
    let a = match (a, domain) {
        (SocketAddr::V6(v6), libc::AF_INET) => match v6.ip().to_ipv4_mapped() {
            Some(ip) => SocketAddr::new(IpAddr::V4(ip), v6.port()),
            None => a,
        },
        _ => a,
    };
    let raw = dropshim_abi::encode_in_domain(&a, domain);
    let bytes = raw.as_bytes();
    let full = bytes.len();
    let n = full.min(room);
    copy_out(addr as *mut u8, &bytes[..n])
        && copy_out(len as *mut u8, &(full as socklen_t).to_ne_bytes())
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
            None => unsafe { redhook::real!(connect)(fd, addr, len) },
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
            None => unsafe { redhook::real!(bind)(fd, addr, len) },
        }
    }
}

redhook::hook! {
    unsafe fn listen(fd: c_int, backlog: c_int) -> c_int => ds_listen {
        match owner(fd) {
            Some((b, flags)) => b.listen(fd, flags, backlog),
            // SAFETY: libc's own listen, with the program's integer arguments.
            None => unsafe { redhook::real!(listen)(fd, backlog) },
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

/// libc's own functions, for backends that complete a call themselves.
///
/// The calls that take only integers are safe. Those that take pointers
/// are unsafe to call: the pointers must meet libc's contract for the
/// call, as the program's own arguments to it do (passed on unchanged),
/// or as buffers of the shim's own do.
pub(crate) mod real {
    use libc::{c_int, c_void, sockaddr, socklen_t};

    pub fn socket(domain: c_int, ty: c_int, protocol: c_int) -> c_int {
        // SAFETY: libc's socket takes integers only and touches no memory.
        unsafe { super::socket.get()(domain, ty, protocol) }
    }

    /// # Safety
    ///
    /// `addr` and `len` meet connect()'s contract (the program's own
    /// arguments to it do).
    pub unsafe fn connect(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int {
        // SAFETY: the caller meets connect()'s contract (# Safety above).
        unsafe { super::connect.get()(fd, addr, len) }
    }

    /// # Safety
    ///
    /// `addr` and `len` meet bind()'s contract (the program's own
    /// arguments to it do).
    pub unsafe fn bind(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int {
        // SAFETY: the caller meets bind()'s contract (# Safety above).
        unsafe { super::bind.get()(fd, addr, len) }
    }

    pub fn listen(fd: c_int, backlog: c_int) -> c_int {
        // SAFETY: libc's listen takes integers only and touches no memory.
        unsafe { super::listen.get()(fd, backlog) }
    }

    /// # Safety
    ///
    /// `addr` and `len` meet accept4()'s contract (the program's own
    /// arguments to it do).
    pub unsafe fn accept4(
        fd: c_int,
        addr: *mut sockaddr,
        len: *mut socklen_t,
        flags: c_int,
    ) -> c_int {
        // SAFETY: the caller meets accept4()'s contract (# Safety above).
        unsafe { super::accept4.get()(fd, addr, len, flags) }
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
        // SAFETY: the caller meets setsockopt()'s contract (# Safety above).
        unsafe { super::setsockopt.get()(fd, level, name, val, len) }
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
        // SAFETY: the caller meets getsockopt()'s contract (# Safety above).
        unsafe { super::getsockopt.get()(fd, level, name, val, len) }
    }

    /// # Safety
    ///
    /// `addr` and `len` meet getsockname()'s contract (the program's own
    /// arguments to it do).
    pub unsafe fn getsockname(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int {
        // SAFETY: the caller meets getsockname()'s contract (# Safety above).
        unsafe { super::getsockname.get()(fd, addr, len) }
    }

    /// # Safety
    ///
    /// `addr` and `len` meet getpeername()'s contract (the program's own
    /// arguments to it do).
    pub unsafe fn getpeername(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int {
        // SAFETY: the caller meets getpeername()'s contract (# Safety above).
        unsafe { super::getpeername.get()(fd, addr, len) }
    }

    pub fn shutdown(fd: c_int, how: c_int) -> c_int {
        // SAFETY: libc's shutdown takes integers only and touches no memory.
        unsafe { super::shutdown.get()(fd, how) }
    }
}
