//! `DROPSHIM_TRACE=FILE`: every socket call the shim answers, one line
//! each, appended to FILE:
//!
//! ```text
//! 1733467200123456 4242 4243 uml connect(fd=5, 198.18.1.2:80) = -1 EINPROGRESS 35us
//! ```
//!
//! Wall-clock time in microseconds, process, thread, backend, the call
//! with its arguments, the result with errno when it failed, and how long
//! the call took. A fault the shim injected (`DROPSHIM_FAULTS`) ends its
//! line with `injected`. Each line is one write(2) to a file opened with
//! O_APPEND, so the lines of several processes and threads never mix.
//! A file that cannot be opened gets one line on stderr, and the program
//! runs untraced.

use crate::contract::{Answer, Backend, Call, Wrapper};
use crate::log;
use libc::c_int;
use std::cell::Cell;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// The variable that names the trace file.
pub const ENV_TRACE: &str = "DROPSHIM_TRACE";

/// The trace file's descriptor, or -1.
static OUT: AtomicI32 = AtomicI32::new(-1);

thread_local! {
    /// Set by the fault injector when the call in progress on this thread
    /// got an injected error or count.
    static INJECTED: Cell<bool> = const { Cell::new(false) };
}

/// Opens the trace file `DROPSHIM_TRACE` names, if any.
pub(crate) fn from_env() -> Option<c_int> {
    let path = std::env::var_os(ENV_TRACE).filter(|p| !p.is_empty())?;
    let cpath =
        match std::ffi::CString::new(std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str())) {
            Ok(c) => c,
            Err(_) => {
                log::error!("{ENV_TRACE}={path:?} contains a NUL byte; not tracing");
                return None;
            }
        };
    // SAFETY: a NUL-terminated path and integer flags.
    let fd = unsafe {
        libc::open(
            cpath.as_ptr(),
            libc::O_WRONLY | libc::O_CREAT | libc::O_APPEND | libc::O_CLOEXEC,
            0o644,
        )
    };
    if fd < 0 {
        let e = std::io::Error::last_os_error();
        log::error!(
            "{ENV_TRACE}={}: cannot open it ({e}); not tracing",
            path.to_string_lossy()
        );
        return None;
    }
    // Out of the way of the small numbers programs reuse.
    // SAFETY: fcntl and close on the descriptor just opened.
    let fd = unsafe {
        let high = libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 600);
        if high >= 0 {
            libc::close(fd);
            high
        } else {
            fd
        }
    };
    OUT.store(fd, Ordering::Relaxed);
    Some(fd)
}

/// Whether a trace file is open.
pub(crate) fn on() -> bool {
    OUT.load(Ordering::Relaxed) >= 0
}

/// Marks the call in progress on this thread as carrying an injected
/// fault.
pub(crate) fn mark_injected() {
    INJECTED.with(|c| c.set(true));
}

/// Writes one line about a call the shim did not route through the
/// contract (the data calls the fault injector touches).
pub(crate) fn record(backend: &str, call: std::fmt::Arguments<'_>, ret: isize, errno: c_int) {
    let fd = OUT.load(Ordering::Relaxed);
    if fd < 0 {
        return;
    }
    let mut line = String::with_capacity(128);
    head(&mut line, backend);
    let _ = write!(line, "{call} = {ret}");
    if ret < 0 {
        let _ = write!(line, " {}", errno_name(errno));
    }
    line.push_str(" 0us injected\n");
    emit(fd, &line);
}

fn head(line: &mut String, backend: &str) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros())
        .unwrap_or(0);
    // SAFETY: gettid has no arguments and cannot fail.
    let tid = unsafe { libc::syscall(libc::SYS_gettid) };
    let _ = write!(line, "{now} {} {tid} {backend} ", std::process::id());
}

fn emit(fd: c_int, line: &str) {
    // SAFETY: write(2) reads `line.len()` bytes from a live buffer; a
    // failed trace write is not worth disturbing the program.
    unsafe { libc::write(fd, line.as_ptr().cast(), line.len()) };
}

/// The symbolic name of the errno values socket calls return.
pub(crate) fn errno_name(e: c_int) -> String {
    let name = match e {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::EINTR => "EINTR",
        libc::EIO => "EIO",
        libc::EBADF => "EBADF",
        libc::EAGAIN => "EAGAIN",
        libc::ENOMEM => "ENOMEM",
        libc::EACCES => "EACCES",
        libc::EFAULT => "EFAULT",
        libc::EINVAL => "EINVAL",
        libc::EMFILE => "EMFILE",
        libc::EPIPE => "EPIPE",
        libc::ENOTSOCK => "ENOTSOCK",
        libc::EPROTONOSUPPORT => "EPROTONOSUPPORT",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::ENOPROTOOPT => "ENOPROTOOPT",
        libc::EAFNOSUPPORT => "EAFNOSUPPORT",
        libc::EADDRINUSE => "EADDRINUSE",
        libc::EADDRNOTAVAIL => "EADDRNOTAVAIL",
        libc::ENETDOWN => "ENETDOWN",
        libc::ENETUNREACH => "ENETUNREACH",
        libc::ECONNABORTED => "ECONNABORTED",
        libc::ECONNRESET => "ECONNRESET",
        libc::EISCONN => "EISCONN",
        libc::ENOTCONN => "ENOTCONN",
        libc::ETIMEDOUT => "ETIMEDOUT",
        libc::ECONNREFUSED => "ECONNREFUSED",
        libc::EHOSTUNREACH => "EHOSTUNREACH",
        libc::EALREADY => "EALREADY",
        libc::EINPROGRESS => "EINPROGRESS",
        _ => return format!("errno{e}"),
    };
    name.to_string()
}

/// A backend whose every call is written to the trace file.
pub(crate) struct Traced {
    inner: Box<dyn Backend>,
    out: c_int,
}

impl Traced {
    pub(crate) fn new(inner: Box<dyn Backend>, out: c_int) -> Traced {
        Traced { inner, out }
    }
}

impl Wrapper for Traced {
    fn inner(&self) -> &dyn Backend {
        self.inner.as_ref()
    }

    /// Runs the call, then writes its line (the call's text is made
    /// first: the program may reuse its memory).
    fn call<R: Answer>(&self, call: &Call, run: impl FnOnce() -> R) -> R {
        let what = call.to_string();
        INJECTED.with(|c| c.set(false));
        let start = Instant::now();
        let ret = run();
        let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
        let took = start.elapsed().as_micros();
        // A duplicate's line shows the new descriptor.
        let shown = match *call {
            Call::dup { newfd, .. } => i64::from(newfd),
            _ => ret.shown(),
        };
        let mut line = String::with_capacity(128);
        head(&mut line, self.inner.name());
        let _ = write!(line, "{what} = {shown}");
        if shown < 0 {
            let _ = write!(line, " {}", errno_name(errno));
        }
        let _ = write!(line, " {took}us");
        if INJECTED.with(|c| c.replace(false)) {
            line.push_str(" injected");
        }
        line.push('\n');
        emit(self.out, &line);
        // The program reads errno after the call: the trace write must not
        // change it.
        crate::Errno(errno).set();
        ret
    }
}
