//! A connect in progress on an emulated socket: a blocking connect()
//! waits for the helper that runs it in a host read(), so signals act on
//! it as on a kernel socket's connect.

use crate::Errno;
use libc::c_int;

/// Where an emulated socket stands when the program calls connect().
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stage {
    /// Neither connected nor listening: connect() goes ahead.
    Fresh,
    /// A non-blocking connect is under way.
    Pending,
    Connected,
    /// A non-blocking connect failed, and no connect() has answered for
    /// it yet (its error is SO_ERROR's until taken).
    Failed,
    Listening,
}

/// What connect() answers at once on a socket at `stage`, as on a TCP
/// socket, or None to go ahead. A listening socket is EISCONN, as the
/// kernel says.
///
/// After a failed non-blocking connect the kernel's next connect()
/// answers for that attempt and leaves the socket fresh, so the one after
/// starts anew: it answers the attempt's error if SO_ERROR has not taken
/// it (`take_error` hands it over, 0 once taken), else ECONNABORTED. The
/// caller makes the socket fresh again when it gets that answer for
/// [`Stage::Failed`].
pub(crate) fn refused_at(stage: Stage, take_error: impl FnOnce() -> c_int) -> Option<Errno> {
    match stage {
        Stage::Fresh => None,
        Stage::Pending => Some(Errno(libc::EALREADY)),
        Stage::Connected | Stage::Listening => Some(Errno(libc::EISCONN)),
        Stage::Failed => Some(Errno(match take_error() {
            0 => libc::ECONNABORTED,
            e => e,
        })),
    }
}

/// How a blocking connect() of the uml and lkl backends waits for the
/// connect their helper thread runs: in a host read() of one end of a
/// socket pair, so a signal ends the wait exactly as it ends a kernel
/// socket's connect (EINTR without SA_RESTART, restarted with it).
/// Returns false if a signal interrupted the wait. Closes `wait`.
fn wait_for_connect(wait: c_int) -> bool {
    let mut byte = 0u8;
    // SAFETY: a one-byte read into a live local from our own descriptor.
    let n = unsafe { libc::read(wait, (&mut byte as *mut u8).cast(), 1) };
    let interrupted = n < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR);
    // SAFETY: closing our own descriptor.
    unsafe { libc::close(wait) };
    !interrupted
}

/// A blocking connect, run so that signals act on it as on a kernel
/// socket's: `start` begins it in the background as a non-blocking
/// connect would (-1 with EINPROGRESS), handing the end it is given to
/// whatever ends the connect ([`connect_done`]); meanwhile the caller
/// waits in a host read() of the other end. A signal then ends the wait
/// as it ends a kernel socket's connect: EINTR without SA_RESTART (the
/// connect goes on; connect() then says EALREADY and SO_ERROR tells the
/// outcome), a transparent restart with it. `no_pair` cleans up when the
/// pair cannot be made (errno is then socketpair's).
///
/// Returns Ok once the connect is over (the caller reports its outcome),
/// or Err with what connect() returns at once, errno set.
pub(crate) fn wait_blocking(
    start: impl FnOnce(c_int) -> c_int,
    no_pair: impl FnOnce(Errno),
) -> Result<(), c_int> {
    let [wait, done] = match super::files::pair() {
        Ok(p) => p,
        Err(e) => {
            no_pair(e);
            return Err(e.fail());
        }
    };
    let r = start(done);
    if r != -1 || std::io::Error::last_os_error().raw_os_error() != Some(libc::EINPROGRESS) {
        super::files::close_fd(wait);
        super::files::close_fd(done);
        return Err(r);
    }
    if !wait_for_connect(wait) {
        return Err(Errno(libc::EINTR).fail());
    }
    Ok(())
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

/// A gate: the program's end of a Unix stream pair whose send buffer is
/// full, so it is neither readable nor writable (as a TCP socket in
/// SYN_SENT is) until its other end, the opener the shim keeps, is
/// drained or closed. Returns (program's end, opener), both
/// close-on-exec; the program's end is non-blocking.
pub(crate) fn gate() -> std::io::Result<(c_int, c_int)> {
    let [prog, opener] = dropshim_abi::sock::unix_pair(libc::SOCK_STREAM)?;
    let filled = (|| {
        // The kernel rounds a send buffer of 1 up to its minimum.
        dropshim_abi::sock::setsockopt_int(prog, libc::SOL_SOCKET, libc::SO_SNDBUF, 1)?;
        set_nonblocking(prog)?;
        let block = [0u8; 4096];
        for _ in 0..64 {
            // SAFETY: a write from a live buffer of `block.len()` bytes to
            // our own descriptor; the raw syscall skips the write hook.
            let n = unsafe {
                libc::syscall(
                    libc::SYS_write,
                    prog as libc::c_long,
                    block.as_ptr(),
                    block.len() as libc::c_long,
                )
            };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if e.raw_os_error() == Some(libc::EAGAIN) {
                    return Ok(());
                }
                return Err(e);
            }
        }
        Err(std::io::Error::other("the gate never filled"))
    })();
    match filled {
        Ok(()) => Ok((prog, opener)),
        Err(e) => {
            super::files::close_fd(prog);
            super::files::close_fd(opener);
            Err(e)
        }
    }
}

/// Sets O_NONBLOCK on `fd`, keeping its other status flags.
fn set_nonblocking(fd: c_int) -> std::io::Result<()> {
    super::files::add_status(fd, libc::O_NONBLOCK)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_attempt_is_answered_with_its_error_until_taken_then_aborted() {
        assert_eq!(
            refused_at(Stage::Failed, || libc::ECONNREFUSED),
            Some(Errno(libc::ECONNREFUSED))
        );
        assert_eq!(
            refused_at(Stage::Failed, || 0),
            Some(Errno(libc::ECONNABORTED))
        );
        assert_eq!(refused_at(Stage::Fresh, || unreachable!()), None);
        assert_eq!(
            refused_at(Stage::Pending, || unreachable!()),
            Some(Errno(libc::EALREADY))
        );
    }
}
