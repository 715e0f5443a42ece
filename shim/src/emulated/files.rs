//! The files under an emulated socket's descriptors: replacing the file
//! under a descriptor (and under each of its twins) while keeping what
//! belongs to the descriptor, and closing the shim's own ends. Every call
//! is a raw syscall, so none of it comes back through the shim's hooks
//! (the dup3 hook, for one, would forget the descriptor).

use crate::Errno;
use libc::c_int;

/// Closes a descriptor the shim created and owns.
pub(crate) fn close_fd(fd: c_int) {
    // SAFETY: `fd` is a descriptor the shim created and owns; closing it
    // through the raw syscall skips the program-facing close hook.
    unsafe { libc::syscall(libc::SYS_close, fd as libc::c_long) };
}

/// A Unix stream socketpair, both ends close-on-exec and blocking.
pub(crate) fn pair() -> Result<[c_int; 2], Errno> {
    dropshim_abi::sock::unix_pair(libc::SOCK_STREAM).map_err(Errno::from)
}

/// A system call `nr` (fcntl or dup3 here) with three integer arguments.
fn int_call(nr: libc::c_long, a: c_int, b: c_int, c: c_int) -> std::io::Result<c_int> {
    // SAFETY: the calls made through this take and return integers only;
    // no memory is passed.
    let r = unsafe { libc::syscall(nr, a as libc::c_long, b as libc::c_long, c as libc::c_long) };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(r as c_int)
    }
}

/// fcntl with integer arguments only (F_GETFL, F_SETFL, F_GETFD, F_SETFD).
fn fcntl(fd: c_int, cmd: c_int, arg: c_int) -> std::io::Result<c_int> {
    int_call(libc::SYS_fcntl, fd, cmd, arg)
}

/// Adds the file status flags `add` (O_NONBLOCK) to `fd`'s.
pub(crate) fn add_status(fd: c_int, add: c_int) -> std::io::Result<()> {
    let fl = fcntl(fd, libc::F_GETFL, 0)?;
    fcntl(fd, libc::F_SETFL, fl | add).map(drop)
}

/// Whether `fd`'s file is non-blocking (false when it cannot be read).
pub(crate) fn nonblocking(fd: c_int) -> bool {
    fcntl(fd, libc::F_GETFL, 0).is_ok_and(|fl| fl & libc::O_NONBLOCK != 0)
}

/// Gives a socket the program gets (a new one, or an accepted one, whose
/// descriptor is close-on-exec and blocking) the socket()/accept4() flags
/// it asked for: SOCK_NONBLOCK and SOCK_CLOEXEC.
pub(crate) fn apply_flags(fd: c_int, flags: c_int) {
    if flags & libc::SOCK_NONBLOCK != 0 {
        let _ = add_status(fd, libc::O_NONBLOCK);
    }
    if flags & libc::SOCK_CLOEXEC == 0 {
        let _ = fcntl(fd, libc::F_SETFD, 0);
    }
}

/// Puts `new` under every descriptor in `fds` (the descriptors of one
/// socket, which share its file and so its O_NONBLOCK: `new` gets theirs),
/// keeping each one's close-on-exec flag, then closes `new`. Stops at the
/// first descriptor that cannot take it.
///
/// # Safety
///
/// As [`put_file`], for each of `fds`.
pub(crate) unsafe fn install(new: c_int, fds: &[c_int]) -> Result<(), Errno> {
    if fds.first().is_some_and(|&fd| nonblocking(fd)) {
        let _ = add_status(new, libc::O_NONBLOCK);
    }
    let mut result = Ok(());
    for &fd in fds {
        // SAFETY: the caller vouches for each of `fds` (# Safety above).
        if let Err(e) = unsafe { put_file(new, fd) } {
            result = Err(Errno::from(e));
            break;
        }
    }
    close_fd(new);
    result
}

/// Puts `file` under `fd` (dup3), keeping `fd`'s close-on-exec flag.
///
/// # Safety
///
/// `fd` is a descriptor of one of the backend's sockets (an entry of its
/// socket table, whose lock the caller holds): whatever file it had is
/// replaced, so it must not be a descriptor the program or the shim uses
/// for anything else.
pub(crate) unsafe fn put_file(file: c_int, fd: c_int) -> std::io::Result<()> {
    let cloexec = fcntl(fd, libc::F_GETFD, 0).is_ok_and(|f| f & libc::FD_CLOEXEC != 0);
    let dflags = if cloexec { libc::O_CLOEXEC } else { 0 };
    // The caller vouches that `fd` is the backend's socket (# Safety
    // above).
    int_call(libc::SYS_dup3, file, fd, dflags).map(drop)
}
