//! `libdropshim.so`: the LD_PRELOAD library that puts unmodified
//! programs' TCP onto Multipath TCP.
//!
//! Owns: the semantics of the socket calls it takes over (socket,
//! connect, bind, listen, accept, setsockopt, getsockopt, close, dup,
//! dup2/3, fcntl's F_DUPFD)
//! for AF_INET/AF_INET6 stream sockets, and the choice of backend for
//! each process.
//!
//! Must not touch: any other socket (UDP, Unix, raw, netlink), any
//! descriptor it did not create, and on the native backend the data path
//! (read, write, send, recv, poll go straight to the kernel). It must
//! never crash, block or print on stdout in the host program. The data
//! calls (read, write, recv, send, recvfrom, sendto) are hooked only for
//! fault injection and pass straight through when it is off.
//!
//! Layout, top to bottom (a module uses only those below it):
//! - [`hooks`] is the only place that exports C symbols; it sorts calls
//!   and hands ours to this process's backend through the contract.
//! - [`contract`]: one trait, implemented for [`native`], [`uml`] and
//!   [`lkl`] in [`backends`], and by the wrappers [`trace`]
//!   (`DROPSHIM_TRACE`) and [`faults`] (`DROPSHIM_FAULTS`).
//! - The backends' socket semantics: [`native`]; [`uml`] and [`lkl`],
//!   which keep only what is their own (asking the uml supervisor for a
//!   bridge; the library kernel's sockets and relays) on top of
//!   [`emulated`], the one emulated TCP socket both stand behind (the
//!   connect gate, the twin-aware descriptor table, epoll replay, the
//!   options that follow from being TCP and SO_ERROR, getsockname and
//!   getpeername, local destinations handed back to the host). Transport code that needs no
//!   hooks lives in the backend crates (`dropshim-backend-uml`,
//!   `dropshim-backend-lkl`).
//! - Below all of them: [`mem`] (the one checked path to the program's
//!   memory: copies, socket addresses, option answers), [`libc_real`]
//!   (libc's own socket functions), [`fdtable`] (which descriptors are
//!   ours), [`runtime`] (the configuration, read once), [`forklock`]
//!   (fork() never leaves the shim's locks taken in a child) and [`log`].

#![warn(missing_docs)]

mod backends;
mod contract;
mod emulated;
mod faults;
mod fdtable;
mod forklock;
mod hooks;
mod libc_real;
mod lkl;
mod log;
mod mem;
mod native;
mod runtime;
mod trace;
mod uml;

use std::os::raw::c_int;

/// An errno value to hand back to the program.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Errno(pub c_int);

impl Errno {
    /// Sets the calling thread's errno.
    pub fn set(self) {
        // SAFETY: __errno_location returns this thread's errno slot, valid
        // for the thread's lifetime.
        unsafe { *libc::__errno_location() = self.0 };
    }

    /// Sets errno and returns -1, the failure value of the socket calls.
    pub fn fail(self) -> c_int {
        self.set();
        -1
    }
}

impl From<std::io::Error> for Errno {
    fn from(err: std::io::Error) -> Self {
        Errno(err.raw_os_error().unwrap_or(libc::EIO))
    }
}

/// Runs when the library is loaded, before the program's main: logging
/// level and fork safety. The configuration itself is read lazily at the
/// first TCP socket, so programs that never open one pay nothing.
#[ctor::ctor]
fn on_load() {
    runtime::init_logging();
    dropshim_abi::pass::init_address_pass();
    extern "C" fn prepare() {
        fdtable::before_fork();
    }
    extern "C" fn after() {
        fdtable::after_fork();
    }
    // SAFETY: the handlers are plain functions that live as long as the
    // library, which is never unloaded while the program runs.
    unsafe {
        libc::pthread_atfork(Some(prepare), Some(after), Some(after));
    }
}
