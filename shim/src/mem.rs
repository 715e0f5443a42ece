//! The one checked path between the shim and the program's memory:
//! copies through the kernel's own checked user copy
//! (process_vm_readv/writev), so a bad pointer from the program is an
//! EFAULT answer instead of a crash inside the shim; and what is built on
//! it: socket addresses read and written in the program's buffers, and
//! socket-option values answered the way the kernel writes them.
//!
//! Shared by the hooks, the contract's wrappers and every backend.

use crate::Errno;
use libc::{c_int, c_void, sockaddr, socklen_t};
use std::net::{IpAddr, SocketAddr};

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

/// Writes `a` into the program's address buffer as getsockname() and
/// getpeername() do, in the socket's own family (IPv4 on an AF_INET6
/// socket is IPv4-mapped): the length is read first (unreadable: EFAULT,
/// negative: EINVAL), the address is truncated to it like the kernel
/// truncates, and its full length is written back. Both pointers are the
/// program's and go through the checked copies: a bad or NULL one leaves
/// the program's memory alone and is EFAULT (a NULL address with a zero
/// length asks only for the length).
pub(crate) fn put_name(
    a: SocketAddr,
    domain: c_int,
    addr: *mut sockaddr,
    len: *mut socklen_t,
) -> Result<(), Errno> {
    let room = read_optlen(len)?;
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
    if copy_out(addr as *mut u8, &bytes[..n])
        && copy_out(len as *mut u8, &(full as socklen_t).to_ne_bytes())
    {
        Ok(())
    } else {
        Err(Errno(libc::EFAULT))
    }
}

/// [`put_name`] for accept(), whose NULL pointers ask for no address:
/// false for a bad buffer (the kernel's EFAULT).
pub(crate) fn write_addr(
    a: SocketAddr,
    domain: c_int,
    addr: *mut sockaddr,
    len: *mut socklen_t,
) -> bool {
    addr.is_null() || len.is_null() || put_name(a, domain, addr, len).is_ok()
}
