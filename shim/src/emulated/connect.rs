//! A connect in progress on an emulated socket: a blocking connect()
//! waits for the helper that runs it in a host read(), so signals act on
//! it as on a kernel socket's connect.

use libc::c_int;

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
