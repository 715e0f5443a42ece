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

use crate::contract::Backend;
use crate::log;
use crate::mem::read_addr;
use libc::{c_int, c_void, sockaddr, socklen_t};
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

    /// Runs `call`, then writes its line: `what` formats the call and its
    /// arguments (read before the call: the program may reuse its memory).
    fn run(&self, what: String, call: impl FnOnce() -> c_int) -> c_int {
        INJECTED.with(|c| c.set(false));
        let start = Instant::now();
        let ret = call();
        let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
        let took = start.elapsed().as_micros();
        let mut line = String::with_capacity(128);
        head(&mut line, self.inner.name());
        let _ = write!(line, "{what} = {ret}");
        if ret < 0 {
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

fn addr_text(addr: *const sockaddr, len: socklen_t) -> String {
    match read_addr(addr, len) {
        Some(a) => a.to_string(),
        None => format!("{addr:p}/{len}"),
    }
}

impl Backend for Traced {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn owns(&self, flags: u8) -> bool {
        self.inner.owns(flags)
    }

    fn socket(&self, domain: c_int, ty: c_int, protocol: c_int) -> c_int {
        let family = if domain == libc::AF_INET6 {
            "AF_INET6"
        } else {
            "AF_INET"
        };
        self.run(format!("socket({family}, {ty:#x}, {protocol})"), || {
            self.inner.socket(domain, ty, protocol)
        })
    }

    unsafe fn connect(&self, fd: c_int, flags: u8, addr: *const sockaddr, len: socklen_t) -> c_int {
        self.run(
            format!("connect(fd={fd}, {})", addr_text(addr, len)),
            || {
                // SAFETY: the caller's arguments, unchanged, under this method's
                // contract (the trait's # Safety).
                unsafe { self.inner.connect(fd, flags, addr, len) }
            },
        )
    }

    unsafe fn bind(&self, fd: c_int, flags: u8, addr: *const sockaddr, len: socklen_t) -> c_int {
        self.run(format!("bind(fd={fd}, {})", addr_text(addr, len)), || {
            // SAFETY: the caller's arguments, unchanged, under this method's
            // contract (the trait's # Safety).
            unsafe { self.inner.bind(fd, flags, addr, len) }
        })
    }

    fn listen(&self, fd: c_int, flags: u8, backlog: c_int) -> c_int {
        self.run(format!("listen(fd={fd}, {backlog})"), || {
            self.inner.listen(fd, flags, backlog)
        })
    }

    unsafe fn accept4(
        &self,
        fd: c_int,
        flags: u8,
        addr: *mut sockaddr,
        len: *mut socklen_t,
        fl: c_int,
    ) -> c_int {
        self.run(format!("accept4(fd={fd}, {fl:#x})"), || {
            // SAFETY: the caller's arguments, unchanged, under this method's
            // contract (the trait's # Safety).
            unsafe { self.inner.accept4(fd, flags, addr, len, fl) }
        })
    }

    unsafe fn setsockopt(
        &self,
        fd: c_int,
        flags: u8,
        level: c_int,
        name: c_int,
        val: *const c_void,
        len: socklen_t,
    ) -> c_int {
        self.run(
            format!("setsockopt(fd={fd}, level={level}, name={name}, len={len})"),
            || {
                // SAFETY: the caller's arguments, unchanged, under this method's
                // contract (the trait's # Safety).
                unsafe { self.inner.setsockopt(fd, flags, level, name, val, len) }
            },
        )
    }

    unsafe fn getsockopt(
        &self,
        fd: c_int,
        flags: u8,
        level: c_int,
        name: c_int,
        val: *mut c_void,
        len: *mut socklen_t,
    ) -> c_int {
        self.run(
            format!("getsockopt(fd={fd}, level={level}, name={name})"),
            || {
                // SAFETY: the caller's arguments, unchanged, under this method's
                // contract (the trait's # Safety).
                unsafe { self.inner.getsockopt(fd, flags, level, name, val, len) }
            },
        )
    }

    unsafe fn getsockname(&self, fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int {
        self.run(format!("getsockname(fd={fd})"), || {
            // SAFETY: the caller's arguments, unchanged, under this method's
            // contract (the trait's # Safety).
            unsafe { self.inner.getsockname(fd, addr, len) }
        })
    }

    unsafe fn getpeername(&self, fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int {
        self.run(format!("getpeername(fd={fd})"), || {
            // SAFETY: the caller's arguments, unchanged, under this method's
            // contract (the trait's # Safety).
            unsafe { self.inner.getpeername(fd, addr, len) }
        })
    }

    fn shutdown(&self, fd: c_int, how: c_int) -> c_int {
        self.run(format!("shutdown(fd={fd}, {how})"), || {
            self.inner.shutdown(fd, how)
        })
    }

    unsafe fn epoll_ctl(
        &self,
        epfd: c_int,
        op: c_int,
        fd: c_int,
        ev: *mut libc::epoll_event,
    ) -> c_int {
        self.run(format!("epoll_ctl(epfd={epfd}, op={op}, fd={fd})"), || {
            // SAFETY: the caller's arguments, unchanged, under this method's
            // contract (the trait's # Safety).
            unsafe { self.inner.epoll_ctl(epfd, op, fd, ev) }
        })
    }

    fn close(&self, fd: c_int, flags: u8) {
        self.run(format!("close(fd={fd})"), || {
            self.inner.close(fd, flags);
            0
        });
    }

    fn dup(&self, oldfd: c_int, newfd: c_int) -> bool {
        let mut owned = false;
        self.run(format!("dup(fd={oldfd}) as {newfd}"), || {
            owned = self.inner.dup(oldfd, newfd);
            newfd
        });
        owned
    }
}
