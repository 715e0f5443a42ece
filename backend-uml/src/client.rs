//! The shim's side of the control channel: one request, one reply, and
//! the bridge descriptor that becomes the program's socket; and the watch
//! connection that tells a program its instance died.
//!
//! Runs inside shimmed programs, so it only uses [`crate::sys`] (raw
//! system calls) and allocates little.

use crate::proto::{Kind, Opt, Reply, Request, REPLY_LEN};
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
    let fd = send_request(device, req)?;
    let result = wait_for_reply(fd, cancel).and_then(|()| receive_reply(fd));
    sys::close(fd);
    result
}

/// Opens a control connection to the device's supervisor and sends
/// `req` on it; the reply comes later on the returned descriptor
/// ([`receive_reply`]), which the caller closes (closing it first tells
/// the supervisor to abandon the request).
pub fn send_request(device: &str, req: &Request) -> Result<c_int, ClientError> {
    let path = crate::control_socket(device);
    let fd = sys::connect_unix(&path).map_err(ClientError::NotRunning)?;
    if let Err(e) = sys::send(fd, &req.encode()) {
        sys::close(fd);
        return Err(ClientError::Channel(e));
    }
    Ok(fd)
}

/// Waits until `fd` has the reply (or its end), unless `cancel` reports
/// hang-up first.
fn wait_for_reply(fd: c_int, cancel: Option<c_int>) -> Result<(), ClientError> {
    let Some(cancel) = cancel else {
        return Ok(());
    };
    let mut fds = [
        libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: cancel,
            events: 0,
            revents: 0,
        },
    ];
    loop {
        sys::poll(&mut fds, -1).map_err(ClientError::Channel)?;
        if fds[0].revents != 0 {
            return Ok(());
        }
        if fds[1].revents != 0 {
            return Err(ClientError::Cancelled);
        }
    }
}

/// Receives the reply to a request sent with [`send_request`] (blocking
/// until it comes), with the descriptor it passes, if any.
pub fn receive_reply(fd: c_int) -> Result<(Reply, Option<c_int>), ClientError> {
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
                        Err(ClientError::Channel(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "the uml supervisor closed the request",
                        )))
                    }
                };
            }
            // A signal for the program must not fail its connect().
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
            Err(e) => return Err(ClientError::Channel(e)),
        }
    }
}

/// Whether the device's instance answers on its control socket.
pub fn ping(device: &str) -> bool {
    let req = Request::new(Kind::Ping);
    matches!(request(device, &req), Ok((r, _)) if r.errno == 0)
}

/// Opens a watch on the device's instance: a control connection the
/// supervisor holds open while the instance lives. It reports hang-up
/// (POLLHUP) when the instance is gone, even if the supervisor was
/// killed with it. The descriptor is close-on-exec.
pub fn watch(device: &str) -> io::Result<c_int> {
    let path = crate::control_socket(device);
    let fd = sys::connect_unix(&path)?;
    let ack = (|| {
        sys::send(fd, &Request::new(Kind::Watch).encode())?;
        let mut buf = [0u8; REPLY_LEN];
        let (n, passed) = sys::recv_fd(fd, &mut buf, 0)?;
        if let Some(p) = passed {
            sys::close(p);
        }
        match Reply::decode(&buf[..n]) {
            Some(r) if r.errno == 0 => Ok(()),
            _ => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the uml supervisor refused the watch",
            )),
        }
    })();
    match ack {
        Ok(()) => Ok(fd),
        Err(e) => {
            sys::close(fd);
            Err(e)
        }
    }
}

/// Applies to a bridge the options a program set before connecting or
/// listening that act on the bridge's own end, the one the program holds:
/// buffer sizes, and when to send small segments (TCP_NODELAY,
/// TCP_CORK), which the program's later calls change on the bridge too.
/// The others (keepalive, user timeout, ...) stay the bridge's own. Best
/// effort: a bridge that keeps its own value still carries every byte.
pub fn apply_to_bridge(bridge: c_int, opts: &[Opt]) {
    for o in opts {
        let buffers =
            o.level == libc::SOL_SOCKET && (o.name == libc::SO_SNDBUF || o.name == libc::SO_RCVBUF);
        let segments = o.level == libc::IPPROTO_TCP
            && (o.name == libc::TCP_NODELAY || o.name == libc::TCP_CORK);
        if buffers || segments {
            let _ = dropshim_abi::sock::setsockopt(bridge, o.level, o.name, &o.value);
        }
    }
}
