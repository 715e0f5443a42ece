//! Raw system calls for the channel to the supervisor: Unix sockets and
//! descriptor passing.
//!
//! This code also runs inside `libdropshim.so`, where libc's exported
//! socket functions are the shim's own hooks, so everything here goes
//! through `syscall(2)`. Each wrapper returns `io::Result` and touches only
//! memory it was given.

use std::io;
use std::os::raw::{c_int, c_long, c_void};
use std::path::Path;

fn check(ret: c_long) -> io::Result<c_long> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Builds a `sockaddr_un` for `path`.
fn unix_addr(path: &Path) -> io::Result<(libc::sockaddr_un, libc::socklen_t)> {
    use std::os::unix::ffi::OsStrExt;
    // SAFETY: sockaddr_un is plain data; all-zero is valid.
    let mut sun: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    sun.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = path.as_os_str().as_bytes();
    if bytes.len() >= sun.sun_path.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "socket path too long",
        ));
    }
    for (dst, src) in sun.sun_path.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    let len = std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1;
    Ok((sun, len as libc::socklen_t))
}

/// Closes `fd`, ignoring errors.
pub fn close(fd: c_int) {
    // SAFETY: closes a descriptor the caller owns; errors are irrelevant.
    unsafe { libc::syscall(libc::SYS_close, fd) };
}

/// A connected SOCK_SEQPACKET socket to the Unix socket at `path`.
pub fn connect_unix(path: &Path) -> io::Result<c_int> {
    let (sun, len) = unix_addr(path)?;
    // SAFETY: socket(2) takes integers only.
    let fd = check(unsafe {
        libc::syscall(
            libc::SYS_socket,
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
        )
    })? as c_int;
    // With the run's pass: under `dropshim run` the filter lets this call
    // through.
    // SAFETY: the kernel reads `len` bytes of `sun`, which is that long.
    let ret = unsafe {
        dropshim_abi::pass::address_call(
            libc::SYS_connect,
            fd,
            (&sun as *const libc::sockaddr_un).cast(),
            len,
        )
    };
    if let Err(e) = check(ret.into()) {
        close(fd);
        return Err(e);
    }
    Ok(fd)
}

/// A listening SOCK_SEQPACKET socket at `path` (replacing a stale one).
pub fn listen_unix(path: &Path) -> io::Result<c_int> {
    let (sun, len) = unix_addr(path)?;
    let _ = std::fs::remove_file(path);
    // SAFETY: socket(2) takes integers only.
    let fd = check(unsafe {
        libc::syscall(
            libc::SYS_socket,
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
        )
    })? as c_int;
    // SAFETY: the kernel reads `len` bytes of `sun`, which is that long.
    let ret = unsafe { libc::syscall(libc::SYS_bind, fd, &sun as *const libc::sockaddr_un, len) };
    if let Err(e) = check(ret).and_then(|_| {
        // SAFETY: listen(2) takes integers only.
        check(unsafe { libc::syscall(libc::SYS_listen, fd, 128) })
    }) {
        close(fd);
        return Err(e);
    }
    Ok(fd)
}

/// Accepts one connection (close-on-exec) on a listening socket.
pub fn accept(fd: c_int) -> io::Result<c_int> {
    // SAFETY: no address is requested, so no memory is written.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_accept4,
            fd,
            std::ptr::null_mut::<c_void>(),
            std::ptr::null_mut::<c_void>(),
            libc::SOCK_CLOEXEC,
        )
    };
    check(ret).map(|v| v as c_int)
}

/// Sends one message (see [`send_fd`]) with no descriptor attached.
pub fn send(fd: c_int, data: &[u8]) -> io::Result<usize> {
    send_fd(fd, data, None)
}

/// Sends one message, with `pass` attached as SCM_RIGHTS if given.
pub fn send_fd(fd: c_int, data: &[u8], pass: Option<c_int>) -> io::Result<usize> {
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut c_void,
        iov_len: data.len(),
    };
    // Room for one descriptor, aligned like a cmsghdr.
    let mut cbuf = [0u64; 4];
    // SAFETY: msghdr is plain data; all-zero is valid.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if let Some(pass) = pass {
        // SAFETY: CMSG_SPACE only computes a size.
        let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<c_int>() as u32) } as usize;
        msg.msg_control = cbuf.as_mut_ptr() as *mut c_void;
        msg.msg_controllen = space;
        // SAFETY: msg_control points at `cbuf`, which holds `space` bytes
        // (32 >= CMSG_SPACE(4)), so the first header and its data fit.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<c_int>() as u32) as usize;
            std::ptr::write_unaligned(libc::CMSG_DATA(cmsg) as *mut c_int, pass);
        }
    }
    // SAFETY: `msg` points at `iov`, `data` and `cbuf`, all alive for the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_sendmsg,
            fd,
            &msg as *const libc::msghdr,
            libc::MSG_NOSIGNAL,
        )
    };
    check(ret).map(|v| v as usize)
}

/// Receives one message into `buf`; returns its length and a descriptor
/// if one came along (always with close-on-exec set; the caller decides).
pub fn recv_fd(fd: c_int, buf: &mut [u8], flags: c_int) -> io::Result<(usize, Option<c_int>)> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr() as *mut c_void,
        iov_len: buf.len(),
    };
    let mut cbuf = [0u64; 8];
    // SAFETY: msghdr is plain data; all-zero is valid.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr() as *mut c_void;
    msg.msg_controllen = std::mem::size_of_val(&cbuf);
    // SAFETY: the kernel writes at most `buf.len()` bytes into `buf` and
    // `msg_controllen` bytes into `cbuf`, both alive for the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_recvmsg,
            fd,
            &mut msg as *mut libc::msghdr,
            flags | libc::MSG_CMSG_CLOEXEC,
        )
    };
    let n = check(ret)? as usize;
    let mut got = None;
    // SAFETY: the CMSG_* macros walk the control buffer the kernel just
    // filled, bounded by msg_controllen.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(cmsg) as *const c_int;
                let count =
                    ((*cmsg).cmsg_len - libc::CMSG_LEN(0) as usize) / std::mem::size_of::<c_int>();
                for i in 0..count {
                    let fd = std::ptr::read_unaligned(data.add(i));
                    // Only one descriptor is ever sent; close any extra.
                    if got.is_none() {
                        got = Some(fd);
                    } else {
                        close(fd);
                    }
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    Ok((n, got))
}

/// `fcntl(2)` with an integer argument; returns the call's result.
pub fn fcntl(fd: c_int, cmd: c_int, arg: c_long) -> io::Result<c_int> {
    // SAFETY: only integer-argument commands (F_GETFL/F_SETFL/F_GETFD/F_SETFD/
    // F_DUPFD_CLOEXEC) are used.
    check(unsafe { libc::syscall(libc::SYS_fcntl, fd, cmd, arg) }).map(|v| v as c_int)
}

/// Makes `newfd` refer to what `oldfd` refers to (`dup3(2)`), closing what `newfd` referred to
/// before.
pub fn dup3(oldfd: c_int, newfd: c_int, flags: c_int) -> io::Result<()> {
    // SAFETY: dup3(2) takes integers only.
    check(unsafe { libc::syscall(libc::SYS_dup3, oldfd, newfd, flags) }).map(drop)
}

/// poll(2) on the given descriptors; retries on EINTR.
pub fn poll(fds: &mut [libc::pollfd], timeout_ms: c_int) -> io::Result<usize> {
    loop {
        // SAFETY: the kernel reads and writes `fds.len()` pollfd entries.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_poll,
                fds.as_mut_ptr(),
                fds.len() as libc::c_ulong,
                timeout_ms as c_long,
            )
        };
        match check(ret) {
            Ok(n) => return Ok(n as usize),
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
            Err(e) => return Err(e),
        }
    }
}

/// A non-blocking write; returns the bytes written.
pub fn write(fd: c_int, data: &[u8]) -> io::Result<usize> {
    // SAFETY: the kernel reads `data.len()` bytes from `data`.
    let ret = unsafe { libc::syscall(libc::SYS_write, fd, data.as_ptr(), data.len()) };
    check(ret).map(|v| v as usize)
}

/// epoll_ctl(2) without going through the shim's own hook.
pub fn epoll_ctl(
    epfd: c_int,
    op: c_int,
    fd: c_int,
    ev: Option<libc::epoll_event>,
) -> io::Result<()> {
    let mut ev = ev;
    let p = ev
        .as_mut()
        .map_or(std::ptr::null_mut(), |e| e as *mut libc::epoll_event);
    // SAFETY: `p` is NULL or points at one epoll_event alive for the call.
    check(unsafe { libc::syscall(libc::SYS_epoll_ctl, epfd, op, fd, p) }).map(drop)
}

/// connect(fd, AF_UNSPEC): aborts a TCP connection in place (the kernel
/// sends a reset and wakes every thread blocked on the socket with an
/// error), without closing the program's descriptor.
pub fn disconnect(fd: c_int) -> io::Result<()> {
    // SAFETY: sockaddr is plain data; all-zero with family AF_UNSPEC.
    let mut sa: libc::sockaddr = unsafe { std::mem::zeroed() };
    sa.sa_family = libc::AF_UNSPEC as libc::sa_family_t;
    // SAFETY: the kernel reads `size_of::<sockaddr>()` bytes of `sa`.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_connect,
            fd,
            &sa as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr>() as libc::socklen_t,
        )
    };
    check(ret).map(drop)
}
