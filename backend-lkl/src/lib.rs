//! The lkl backend: a Linux Kernel Library linked into the program.
//!
//! Owns `backend-lkl/`: the `lkl` architecture port of Linux 6.12
//! (`kernel/`, GPL-2.0, kept apart and built into its own `liblkl.so` by
//! `build-lkl.sh`), and this Rust host side (MIT OR Apache-2.0): the host
//! operations the kernel needs, virtio-net devices fed by raw packet
//! sockets, and a safe API (boot, interfaces, sysctls, socket calls,
//! halt). Device configuration (addresses, routes, MPTCP endpoints and
//! limits) goes through dropshim's netlink layer over the library
//! kernel's own netlink sockets ([`LklSocket`], [`Lkl::configure`]).
//! It must not touch the shim, the other backends or the host's network
//! configuration beyond opening packet sockets on the interfaces it is
//! given. The GPL code is only ever loaded at run time (dlopen), when this
//! backend is chosen.
//!
//! One boot per process: kernel data cannot be re-initialised, so a second
//! [`Lkl::boot`] (even after [`Lkl::halt`]) fails with
//! [`Error::AlreadyBooted`].

#![warn(missing_docs)]

mod netlink;
mod sys;
mod virtio;

use dropshim_netlink::mptcp::Limits;
use dropshim_netlink::route::{Address, Route, TABLE_MAIN};
use std::ffi::{c_long, CString};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use netlink::{LklSocket, LklStack};
pub use sys::locate_library;

/// Why the lkl backend cannot be used in this build.
pub const UNAVAILABLE: &str = "the lkl backend could not be started (no Linux Kernel Library); use backend = \"native\" or \"uml\"";

/// Generic (asm-generic/unistd.h) system call numbers used here.
pub mod nr {
    #![allow(missing_docs)]
    pub const EVENTFD2: i64 = 19;
    pub const EPOLL_CREATE1: i64 = 20;
    pub const EPOLL_CTL: i64 = 21;
    pub const EPOLL_PWAIT: i64 = 22;
    pub const IOCTL: i64 = 29;
    pub const OPENAT: i64 = 56;
    pub const CLOSE: i64 = 57;
    pub const READ: i64 = 63;
    pub const WRITE: i64 = 64;
    pub const UNAME: i64 = 160;
    pub const GETPID: i64 = 172;
    pub const SOCKET: i64 = 198;
    pub const BIND: i64 = 200;
    pub const LISTEN: i64 = 201;
    pub const ACCEPT: i64 = 202;
    pub const CONNECT: i64 = 203;
    pub const GETSOCKNAME: i64 = 204;
    pub const GETPEERNAME: i64 = 205;
    pub const SENDTO: i64 = 206;
    pub const RECVFROM: i64 = 207;
    pub const SETSOCKOPT: i64 = 208;
    pub const GETSOCKOPT: i64 = 209;
    pub const SHUTDOWN: i64 = 210;
    pub const ACCEPT4: i64 = 242;
}

/// Errors of the lkl backend.
#[derive(Debug)]
pub enum Error {
    /// The library could not be found, built or loaded.
    Library(String),
    /// A kernel was already booted in this process.
    AlreadyBooted,
    /// The kernel refused to boot (negative errno from lkl_start_kernel).
    Boot(i32),
    /// A system call inside the library kernel failed.
    Sys {
        /// What was being done.
        what: String,
        /// The errno.
        errno: i32,
    },
    /// A host-side resource (packet socket, interface) failed.
    Host(String),
    /// Bad input from the caller.
    Invalid(String),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Library(s) => write!(f, "{s}"),
            Error::AlreadyBooted => write!(
                f,
                "a library kernel was already booted in this process; LKL boots once per process (start a new process to boot again)"
            ),
            Error::Boot(e) => write!(
                f,
                "the library kernel failed to boot: {} (errno {e}); set DROPSHIM_LKL_CONSOLE=1 to see its log",
                std::io::Error::from_raw_os_error(*e)
            ),
            Error::Sys { what, errno } => write!(
                f,
                "{what}: {} (errno {errno}, in the library kernel)",
                std::io::Error::from_raw_os_error(*errno)
            ),
            Error::Host(s) => write!(f, "{s}"),
            Error::Invalid(s) => write!(f, "{s}"),
        }
    }
}

impl std::error::Error for Error {}

/// Result alias.
pub type Result<T> = std::result::Result<T, Error>;

fn check(what: impl FnOnce() -> String, r: c_long) -> Result<c_long> {
    if r < 0 {
        Err(Error::Sys {
            what: what(),
            errno: i32::try_from(-r).unwrap_or(libc::EINVAL),
        })
    } else {
        Ok(r)
    }
}

/// How to boot.
#[derive(Debug, Clone)]
pub struct BootOptions {
    /// Kernel command line (e.g. "quiet").
    pub cmdline: String,
    /// Memory for the kernel's page allocator, in bytes.
    pub mem_bytes: u64,
    /// liblkl.so to use; default: `DROPSHIM_LKL_LIB` or `build-lkl.sh`.
    pub library: Option<PathBuf>,
    /// Without `library`: may `build-lkl.sh` build the library when it is
    /// not cached yet (minutes)? Tests say yes; the shim says no.
    pub build_if_missing: bool,
}

impl Default for BootOptions {
    fn default() -> Self {
        BootOptions {
            cmdline: "quiet".into(),
            mem_bytes: 128 << 20,
            library: None,
            build_if_missing: true,
        }
    }
}

static BOOTED: AtomicBool = AtomicBool::new(false);

/// The ceiling of a TCP socket's receive buffer in the library kernel,
/// bytes: Linux's own for a host with 1 GiB or more (see
/// [`Lkl::raise_tcp_buffer_ceilings`]).
pub const TCP_RMEM_MAX: u64 = 6 << 20;
/// The ceiling of a TCP socket's send buffer, likewise.
pub const TCP_WMEM_MAX: u64 = 4 << 20;

/// TCP's memory pool in the library kernel (`tcp_mem`: no pressure
/// below, pressure from, hard limit), as the divisor of the kernel's
/// memory for each value: 1/8, 1/6 and 1/4 (16, 21 and 32 MiB of the
/// default 128 MiB), so that two connections' full ceilings fit below
/// the pressure threshold (one at 64 MiB). See [`Lkl::size_tcp_pool`].
pub const TCP_POOL_SHARES: [u64; 3] = [8, 6, 4];

/// A file descriptor inside the library kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fd(pub i32);

/// `struct epoll_event` as the library kernel lays it out: the port is
/// built by the host's x86-64 compiler, so the uapi header packs it (12
/// bytes) as on the host.
#[repr(C, packed)]
#[derive(Debug, Clone, Copy, Default)]
pub struct EpollEvent {
    /// EPOLLIN, EPOLLOUT, ... (the host's values: they are Linux's).
    pub events: u32,
    /// What was registered with the descriptor.
    pub data: u64,
}

/// An interface added with [`Lkl::add_interface`].
#[derive(Debug, Clone)]
pub struct Interface {
    /// Host interface whose frames the device carries.
    pub host_ifname: String,
    /// Interface index inside the library kernel.
    pub ifindex: i32,
}

/// The booted library kernel of this process.
pub struct Lkl {
    boot_time: Duration,
    devices: Mutex<Vec<Arc<virtio::NetDevice>>>,
    halted: AtomicBool,
}

impl Lkl {
    /// Boots the library kernel (once per process).
    pub fn boot(opts: &BootOptions) -> Result<Lkl> {
        if BOOTED.swap(true, Ordering::SeqCst) {
            return Err(Error::AlreadyBooted);
        }
        let lib = match &opts.library {
            Some(p) => p.clone(),
            None => sys::locate_library(opts.build_if_missing).map_err(Error::Library)?,
        };
        sys::load(&lib).map_err(Error::Library)?;
        let start = Instant::now();
        let r = sys::start_kernel(opts.mem_bytes, &opts.cmdline).map_err(Error::Invalid)?;
        if r == -libc::EBUSY {
            return Err(Error::AlreadyBooted);
        }
        if r < 0 {
            return Err(Error::Boot(-r));
        }
        let lkl = Lkl {
            boot_time: start.elapsed(),
            devices: Mutex::new(Vec::new()),
            halted: AtomicBool::new(false),
        };
        lkl.raise_tcp_buffer_ceilings()?;
        lkl.size_tcp_pool(opts.mem_bytes)?;
        Ok(lkl)
    }

    /// Gives TCP's memory pool (`net.ipv4.tcp_mem`, shared by every TCP
    /// and MPTCP socket of the kernel) [`TCP_POOL_SHARES`] of the
    /// kernel's `mem_bytes` where the kernel chose less.
    ///
    /// Linux sizes the pool for a host that also runs programs: its
    /// pressure threshold is 1/16 of free memory, about 7 MB of 128 MiB,
    /// less than one connection's ceilings ([`TCP_RMEM_MAX`] +
    /// [`TCP_WMEM_MAX`]). Under pressure 6.12's MPTCP does not shrink a
    /// window gracefully: the receiving connection drops data its
    /// subflows already acknowledged (`RcvPruned`); the gap it leaves
    /// keeps the data after it in the out-of-order queue, the
    /// retransmission that would fill it is dropped again while that
    /// queue and the sender's unacknowledged data keep the pool in
    /// pressure, and the transfer stops for good. With both ends of a
    /// 16 MiB transfer in one library kernel of 128 MiB it stopped every
    /// time, 4.2 MB unacknowledged at the sender and nothing to read at
    /// the receiver. The library kernel runs no programs: its memory is
    /// there for the network, so the pool may take a quarter of it.
    fn size_tcp_pool(&self, mem_bytes: u64) -> Result<()> {
        const NAME: &str = "net.ipv4.tcp_mem";
        let [low, pressure, high] = self.sysctl_triple(NAME)?;
        // The library kernel's pages are 4 KiB.
        let pages = mem_bytes / 4096;
        let want = TCP_POOL_SHARES.map(|share| pages / share);
        let pool = [low.max(want[0]), pressure.max(want[1]), high.max(want[2])];
        if pool != [low, pressure, high] {
            self.set_sysctl(NAME, &format!("{} {} {}", pool[0], pool[1], pool[2]))?;
        }
        Ok(())
    }

    /// A sysctl of three numbers (`tcp_mem`, `tcp_rmem`, `tcp_wmem`).
    fn sysctl_triple(&self, name: &str) -> Result<[u64; 3]> {
        let now = self.sysctl(name)?;
        let v: Vec<u64> = now
            .split_whitespace()
            .filter_map(|x| x.parse().ok())
            .collect();
        <[u64; 3]>::try_from(v)
            .map_err(|_| Error::Invalid(format!("{name} reads {now:?}, not three numbers")))
    }

    /// Raises the per-socket ceilings of TCP's buffer autotuning
    /// (`net.ipv4.tcp_rmem`/`tcp_wmem`, third value) to
    /// [`TCP_RMEM_MAX`]/[`TCP_WMEM_MAX`] where the kernel chose less.
    ///
    /// Linux derives them from its memory, 1/128 of the TCP pool's
    /// pressure threshold: 1 MB with the default 128 MiB, 0.5 MB with
    /// 64 MiB, against 6 MB / 4 MB on any host with 1 GiB or more. An MPTCP
    /// connection's receive window then caps a download at about
    /// ceiling / 2 per round trip of its slowest subflow: a phone's Wi-Fi
    /// (100 Mbit/s, 4 ms) plus LTE (30 Mbit/s, 50 ms) needs about 1.6 MB,
    /// more with jitter's reordering, and ran at half the native stack's
    /// rate. The pool they draw from is sized by [`Lkl::size_tcp_pool`].
    fn raise_tcp_buffer_ceilings(&self) -> Result<()> {
        for (name, ceiling) in [
            ("net.ipv4.tcp_rmem", TCP_RMEM_MAX),
            ("net.ipv4.tcp_wmem", TCP_WMEM_MAX),
        ] {
            let [min, default, max] = self.sysctl_triple(name)?;
            if max < ceiling {
                self.set_sysctl(name, &format!("{min} {default} {ceiling}"))?;
            }
        }
        Ok(())
    }

    /// How long lkl_start_kernel took (until the kernel took system calls).
    pub fn boot_time(&self) -> Duration {
        self.boot_time
    }

    /// The kernel's console output so far.
    pub fn log(&self) -> String {
        sys::kernel_log()
    }

    /// Raw system call (generic numbering); returns the result or -errno.
    ///
    /// # Safety
    /// Pointer arguments must be valid for what the call does with them.
    pub unsafe fn syscall(&self, nr: i64, args: [i64; 6]) -> i64 {
        sys::syscall(nr, args)
    }

    fn call(&self, nr: i64, args: [i64; 6]) -> i64 {
        sys::syscall(nr, args)
    }

    /// `uname()` of the library kernel: (sysname, release).
    pub fn uname(&self) -> Result<(String, String)> {
        let mut buf = [0u8; 65 * 6];
        let r = self.call(nr::UNAME, [buf.as_mut_ptr() as i64, 0, 0, 0, 0, 0]);
        check(|| "uname".into(), r)?;
        let field = |i: usize| {
            let f = &buf[i * 65..(i + 1) * 65];
            let end = f.iter().position(|&b| b == 0).unwrap_or(65);
            String::from_utf8_lossy(&f[..end]).into_owned()
        };
        Ok((field(0), field(2)))
    }

    /// `getpid()` of the calling host thread's kernel task.
    pub fn getpid(&self) -> i64 {
        self.call(nr::GETPID, [0; 6])
    }

    /// Reads a whole file of the library kernel (e.g. under /proc).
    pub fn read_file(&self, path: &str) -> Result<Vec<u8>> {
        let c = CString::new(path).map_err(|_| Error::Invalid(format!("bad path {path:?}")))?;
        let fd = check(
            || format!("open {path}"),
            self.call(
                nr::OPENAT,
                [
                    libc::AT_FDCWD as i64,
                    c.as_ptr() as i64,
                    libc::O_RDONLY as i64,
                    0,
                    0,
                    0,
                ],
            ),
        )?;
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = self.call(
                nr::READ,
                [fd, buf.as_mut_ptr() as i64, buf.len() as i64, 0, 0, 0],
            );
            if n <= 0 {
                self.call(nr::CLOSE, [fd, 0, 0, 0, 0, 0]);
                check(|| format!("read {path}"), n)?;
                return Ok(out);
            }
            out.extend_from_slice(&buf[..n as usize]);
        }
    }

    /// Sets a sysctl of the library kernel, e.g. ("net.mptcp.enabled", "1").
    pub fn set_sysctl(&self, name: &str, value: &str) -> Result<()> {
        if name.is_empty() || name.contains("..") || name.contains('/') {
            return Err(Error::Invalid(format!("bad sysctl name {name:?}")));
        }
        let path = format!("/proc/sys/{}", name.replace('.', "/"));
        let c = CString::new(path.clone())
            .map_err(|_| Error::Invalid(format!("bad sysctl {name:?}")))?;
        let fd = check(
            || format!("open {path}"),
            self.call(
                nr::OPENAT,
                [
                    libc::AT_FDCWD as i64,
                    c.as_ptr() as i64,
                    libc::O_WRONLY as i64,
                    0,
                    0,
                    0,
                ],
            ),
        )?;
        let r = self.call(
            nr::WRITE,
            [fd, value.as_ptr() as i64, value.len() as i64, 0, 0, 0],
        );
        self.call(nr::CLOSE, [fd, 0, 0, 0, 0, 0]);
        check(|| format!("set sysctl {name}={value}"), r)?;
        Ok(())
    }

    /// Reads a sysctl of the library kernel.
    pub fn sysctl(&self, name: &str) -> Result<String> {
        let path = format!("/proc/sys/{}", name.replace('.', "/"));
        let v = self.read_file(&path)?;
        Ok(String::from_utf8_lossy(&v).trim().to_string())
    }

    // ------------------------------------------------------------ sockets

    /// `socket(domain, type, protocol)`.
    pub fn socket(&self, domain: i32, ty: i32, protocol: i32) -> Result<Fd> {
        let r = self.call(
            nr::SOCKET,
            [domain as i64, ty as i64, protocol as i64, 0, 0, 0],
        );
        check(|| format!("socket({domain}, {ty}, {protocol})"), r).map(|f| Fd(f as i32))
    }

    /// `bind(fd, addr)`.
    pub fn bind(&self, fd: Fd, addr: SocketAddr) -> Result<()> {
        self.addr_in_call(nr::BIND, fd, addr, "bind")
    }

    /// Binds netlink socket `fd` to a port id the kernel picks. A socket
    /// left unbound has port id 0, the kernel's own, and is skipped by
    /// multicast delivery (events).
    pub fn bind_netlink(&self, fd: Fd) -> Result<()> {
        // struct sockaddr_nl: family, pad, port id 0 (kernel picks),
        // groups 0.
        let mut nl = [0u8; 12];
        nl[..2].copy_from_slice(&(libc::AF_NETLINK as u16).to_ne_bytes());
        let r = self.call(
            nr::BIND,
            [fd.0 as i64, nl.as_ptr() as i64, nl.len() as i64, 0, 0, 0],
        );
        check(|| "bind (netlink)".into(), r).map(|_| ())
    }

    /// `listen(fd, backlog)`.
    pub fn listen(&self, fd: Fd, backlog: i32) -> Result<()> {
        let r = self.call(nr::LISTEN, [fd.0 as i64, backlog as i64, 0, 0, 0, 0]);
        check(|| "listen".into(), r).map(|_| ())
    }

    /// `accept4(fd, &peer, flags)`.
    pub fn accept(&self, fd: Fd, flags: i32) -> Result<(Fd, Option<SocketAddr>)> {
        let (nfd, peer) = self.addr_out_call(nr::ACCEPT4, fd, flags, "accept")?;
        Ok((Fd(nfd as i32), peer))
    }

    /// `connect(fd, addr)`.
    pub fn connect(&self, fd: Fd, addr: SocketAddr) -> Result<()> {
        self.addr_in_call(nr::CONNECT, fd, addr, "connect")
    }

    /// `connect(fd, {AF_UNSPEC})`: dissolves the socket's association, so
    /// that a socket whose connect failed can connect again.
    pub fn disconnect(&self, fd: Fd) -> Result<()> {
        let unspec = (libc::AF_UNSPEC as u16).to_ne_bytes();
        let r = self.call(
            nr::CONNECT,
            [
                fd.0 as i64,
                unspec.as_ptr() as i64,
                unspec.len() as i64,
                0,
                0,
                0,
            ],
        );
        check(|| "connect AF_UNSPEC".into(), r).map(|_| ())
    }

    /// A call that takes `fd` and an address (`bind`, `connect`); its
    /// error names the call and the address.
    fn addr_in_call(&self, n: i64, fd: Fd, addr: SocketAddr, what: &str) -> Result<()> {
        let sa = dropshim_abi::encode(&addr);
        let r = self.call(
            n,
            [
                fd.0 as i64,
                sa.as_ptr() as i64,
                i64::from(sa.len()),
                0,
                0,
                0,
            ],
        );
        check(|| format!("{what} {addr}"), r).map(|_| ())
    }

    /// A call that takes `fd`, room for an address and `flags`, and
    /// fills the address in (`accept4`, `getsockname`, `getpeername`,
    /// which ignore the flags argument): its result and the address,
    /// None when it is not IPv4 or IPv6.
    fn addr_out_call(
        &self,
        n: i64,
        fd: Fd,
        flags: i32,
        what: &str,
    ) -> Result<(i64, Option<SocketAddr>)> {
        // SAFETY: sockaddr_storage is plain data, all-zero is valid.
        let mut sa: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        let r = self.call(
            n,
            [
                fd.0 as i64,
                &mut sa as *mut _ as i64,
                &mut len as *mut _ as i64,
                flags as i64,
                0,
                0,
            ],
        );
        let r = check(|| what.into(), r)?;
        Ok((r, dropshim_abi::decode_storage(&sa, len)))
    }

    /// `send(fd, buf, flags)`: bytes sent.
    pub fn send(&self, fd: Fd, buf: &[u8], flags: i32) -> Result<usize> {
        let r = self.call(
            nr::SENDTO,
            [
                fd.0 as i64,
                buf.as_ptr() as i64,
                buf.len() as i64,
                flags as i64,
                0,
                0,
            ],
        );
        check(|| "send".into(), r).map(|n| n as usize)
    }

    /// Sends all of `buf`.
    pub fn send_all(&self, fd: Fd, mut buf: &[u8]) -> Result<()> {
        while !buf.is_empty() {
            let n = self.send(fd, buf, libc::MSG_NOSIGNAL)?;
            buf = &buf[n..];
        }
        Ok(())
    }

    /// `recv(fd, buf, flags)`: bytes received (0 at end of stream).
    pub fn recv(&self, fd: Fd, buf: &mut [u8], flags: i32) -> Result<usize> {
        let r = self.call(
            nr::RECVFROM,
            [
                fd.0 as i64,
                buf.as_mut_ptr() as i64,
                buf.len() as i64,
                flags as i64,
                0,
                0,
            ],
        );
        check(|| "recv".into(), r).map(|n| n as usize)
    }

    /// `setsockopt` with an integer value.
    pub fn setsockopt_int(&self, fd: Fd, level: i32, name: i32, value: i32) -> Result<()> {
        self.setsockopt_raw(fd, level, name, &value.to_ne_bytes(), || {
            format!("setsockopt({level}, {name})")
        })
    }

    /// `SO_RCVTIMEO`: a blocking receive returns `EAGAIN` after `timeout`.
    pub fn set_recv_timeout(&self, fd: Fd, timeout: Duration) -> Result<()> {
        self.set_timeout(fd, libc::SO_RCVTIMEO, "SO_RCVTIMEO", timeout)
    }

    /// `SO_SNDTIMEO`: a blocking send returns what it queued, or `EAGAIN`
    /// if nothing, after `timeout`.
    pub fn set_send_timeout(&self, fd: Fd, timeout: Duration) -> Result<()> {
        self.set_timeout(fd, libc::SO_SNDTIMEO, "SO_SNDTIMEO", timeout)
    }

    fn set_timeout(&self, fd: Fd, name: i32, what: &str, timeout: Duration) -> Result<()> {
        // struct __kernel_old_timeval: two longs (the library is 64-bit).
        let mut tv = [0u8; 16];
        tv[..8].copy_from_slice(&(timeout.as_secs() as i64).to_ne_bytes());
        tv[8..].copy_from_slice(&i64::from(timeout.subsec_micros()).to_ne_bytes());
        self.setsockopt_raw(fd, libc::SOL_SOCKET, name, &tv, || {
            format!("setsockopt({what})")
        })
    }

    /// `SO_LINGER` on: a later close of `fd` waits, up to `timeout`
    /// (whole seconds), until the peer acknowledged the end of the stream.
    pub fn set_linger(&self, fd: Fd, timeout: Duration) -> Result<()> {
        // struct linger: l_onoff, l_linger (seconds), two ints.
        let secs = i32::try_from(timeout.as_secs()).unwrap_or(i32::MAX).max(1);
        let mut linger = [0u8; 8];
        linger[..4].copy_from_slice(&1i32.to_ne_bytes());
        linger[4..].copy_from_slice(&secs.to_ne_bytes());
        self.setsockopt_raw(fd, libc::SOL_SOCKET, libc::SO_LINGER, &linger, || {
            "setsockopt(SO_LINGER)".into()
        })
    }

    /// `setsockopt` with `value` as the option's bytes, which the library
    /// kernel only reads.
    fn setsockopt_raw(
        &self,
        fd: Fd,
        level: i32,
        name: i32,
        value: &[u8],
        what: impl FnOnce() -> String,
    ) -> Result<()> {
        let r = self.call(
            nr::SETSOCKOPT,
            [
                fd.0 as i64,
                level as i64,
                name as i64,
                value.as_ptr() as i64,
                value.len() as i64,
                0,
            ],
        );
        check(what, r).map(|_| ())
    }

    /// Bytes (and a FIN) written to `fd` that the peer has not yet
    /// acknowledged (`SIOCOUTQ`).
    pub fn unacked(&self, fd: Fd) -> Result<usize> {
        let mut queued: i32 = 0;
        let r = self.call(
            nr::IOCTL,
            [
                fd.0 as i64,
                libc::TIOCOUTQ as i64,
                &mut queued as *mut i32 as i64,
                0,
                0,
                0,
            ],
        );
        check(|| "ioctl(SIOCOUTQ)".to_string(), r).map(|_| queued.max(0) as usize)
    }

    /// `getsockopt` into `buf`; returns the length the kernel wrote.
    pub fn getsockopt(&self, fd: Fd, level: i32, name: i32, buf: &mut [u8]) -> Result<usize> {
        let mut len = buf.len() as libc::socklen_t;
        let r = self.call(
            nr::GETSOCKOPT,
            [
                fd.0 as i64,
                level as i64,
                name as i64,
                buf.as_mut_ptr() as i64,
                &mut len as *mut _ as i64,
                0,
            ],
        );
        check(|| format!("getsockopt({level}, {name})"), r).map(|_| len as usize)
    }

    /// `getsockname(fd)`.
    pub fn local_addr(&self, fd: Fd) -> Result<Option<SocketAddr>> {
        self.name_call(nr::GETSOCKNAME, fd, "getsockname")
    }

    /// `getpeername(fd)`.
    pub fn peer_addr(&self, fd: Fd) -> Result<Option<SocketAddr>> {
        self.name_call(nr::GETPEERNAME, fd, "getpeername")
    }

    fn name_call(&self, n: i64, fd: Fd, what: &str) -> Result<Option<SocketAddr>> {
        self.addr_out_call(n, fd, 0, what).map(|(_, addr)| addr)
    }

    /// `shutdown(fd, how)`.
    pub fn shutdown(&self, fd: Fd, how: i32) -> Result<()> {
        let r = self.call(nr::SHUTDOWN, [fd.0 as i64, how as i64, 0, 0, 0, 0]);
        check(|| "shutdown".into(), r).map(|_| ())
    }

    /// `close(fd)`.
    pub fn close(&self, fd: Fd) -> Result<()> {
        let r = self.call(nr::CLOSE, [fd.0 as i64, 0, 0, 0, 0, 0]);
        check(|| "close".into(), r).map(|_| ())
    }

    /// `read(fd, buf)`: bytes read (0 at end of file).
    pub fn read(&self, fd: Fd, buf: &mut [u8]) -> Result<usize> {
        let r = self.call(
            nr::READ,
            [
                fd.0 as i64,
                buf.as_mut_ptr() as i64,
                buf.len() as i64,
                0,
                0,
                0,
            ],
        );
        check(|| "read".into(), r).map(|n| n as usize)
    }

    /// `write(fd, buf)`: bytes written.
    pub fn write(&self, fd: Fd, buf: &[u8]) -> Result<usize> {
        let r = self.call(
            nr::WRITE,
            [fd.0 as i64, buf.as_ptr() as i64, buf.len() as i64, 0, 0, 0],
        );
        check(|| "write".into(), r).map(|n| n as usize)
    }

    // ------------------------------------------------------------ readiness

    /// `eventfd2(0, flags)`: a counter whose readability wakes an epoll
    /// waiter of the library kernel from any host thread (by `write`).
    pub fn eventfd(&self, flags: i32) -> Result<Fd> {
        let r = self.call(nr::EVENTFD2, [0, flags as i64, 0, 0, 0, 0]);
        check(|| "eventfd2".into(), r).map(|f| Fd(f as i32))
    }

    /// `epoll_create1(flags)`: an epoll instance of the library kernel.
    pub fn epoll_create(&self, flags: i32) -> Result<Fd> {
        let r = self.call(nr::EPOLL_CREATE1, [flags as i64, 0, 0, 0, 0, 0]);
        check(|| "epoll_create1".into(), r).map(|f| Fd(f as i32))
    }

    /// `epoll_ctl(epfd, op, fd, {events, data})`.
    pub fn epoll_ctl(&self, epfd: Fd, op: i32, fd: Fd, events: u32, data: u64) -> Result<()> {
        let mut ev = EpollEvent { events, data };
        let r = self.call(
            nr::EPOLL_CTL,
            [
                epfd.0 as i64,
                op as i64,
                fd.0 as i64,
                &mut ev as *mut EpollEvent as i64,
                0,
                0,
            ],
        );
        check(|| format!("epoll_ctl({op})"), r).map(|_| ())
    }

    /// `epoll_pwait(epfd, events, timeout_ms, NULL)`: how many of `events`
    /// were filled; `timeout_ms` < 0 waits without a bound.
    pub fn epoll_wait(
        &self,
        epfd: Fd,
        events: &mut [EpollEvent],
        timeout_ms: i32,
    ) -> Result<usize> {
        let max = i32::try_from(events.len()).unwrap_or(i32::MAX);
        let r = self.call(
            nr::EPOLL_PWAIT,
            [
                epfd.0 as i64,
                events.as_mut_ptr() as i64,
                max as i64,
                timeout_ms as i64,
                0,
                0,
            ],
        );
        check(|| "epoll_pwait".into(), r).map(|n| n as usize)
    }

    // ------------------------------------------------------------ network

    /// Gives the library kernel a virtio-net interface whose frames travel
    /// over an AF_PACKET socket on `host_ifname` (which should carry no host
    /// address); it stays down and unconfigured (see [`Lkl::configure`]).
    pub fn add_device(&self, host_ifname: &str) -> Result<Interface> {
        let index = self.devices.lock().map(|d| d.len()).unwrap_or(0);
        let dev = virtio::NetDevice::open(host_ifname, index).map_err(Error::Host)?;
        let base = 0x1000_0000u64 + (index as u64) * 0x1000;
        let irq = sys::FIRST_DEVICE_IRQ + index as i32;
        if irq >= sys::NR_IRQS {
            return Err(Error::Invalid("too many interfaces".into()));
        }
        dev.set_irq(irq);
        sys::register_device(base, 0x1000, dev.clone());
        let r = self.call(
            sys::NR_VIRTIO_MMIO_ADD,
            [base as i64, 0x1000, irq as i64, 0, 0, 0],
        );
        let ifindex = check(|| format!("add virtio-net device for {host_ifname}"), r)? as i32;
        if ifindex == 0 {
            return Err(Error::Host(format!(
                "the virtio device for {host_ifname} did not become a network interface; kernel log:\n{}",
                self.log()
            )));
        }
        dev.start_thread().map_err(Error::Host)?;
        if let Ok(mut d) = self.devices.lock() {
            d.push(dev);
        }
        Ok(Interface {
            host_ifname: host_ifname.to_string(),
            ifindex,
        })
    }

    /// Makes the library kernel announce `ifindex`'s addresses now (with
    /// `arp_notify`/`ndisc_notify` on): setting an interface's MAC address
    /// to the one it has is a "changed address" event, whose handlers send
    /// a gratuitous ARP per IPv4 address and an unsolicited neighbour
    /// advertisement per IPv6 address. Linking an interface up before its
    /// addresses are in place announces nothing, and the library kernel's
    /// MAC addresses are new in every process.
    pub fn announce_addresses(&self, ifindex: i32) -> Result<()> {
        const SIOCGIFNAME: i64 = 0x8910;
        const SIOCGIFHWADDR: i64 = 0x8927;
        const SIOCSIFHWADDR: i64 = 0x8924;
        let s = self.socket(libc::AF_INET, libc::SOCK_DGRAM, 0)?;
        // struct ifreq: a 16-byte name, then a 24-byte union (ifindex, or
        // a sockaddr holding the hardware address).
        let mut ifr = [0u8; 40];
        ifr[16..20].copy_from_slice(&ifindex.to_ne_bytes());
        let mut r = 0;
        let mut what = "";
        for (req, name) in [
            (SIOCGIFNAME, "SIOCGIFNAME"),
            (SIOCGIFHWADDR, "SIOCGIFHWADDR"),
            (SIOCSIFHWADDR, "SIOCSIFHWADDR"),
        ] {
            // `ifr` is a live, writable ifreq-sized buffer; the library
            // kernel reads and writes only within it.
            r = self.call(
                nr::IOCTL,
                [i64::from(s.0), req, ifr.as_mut_ptr() as i64, 0, 0, 0],
            );
            what = name;
            if r < 0 {
                break;
            }
        }
        let _ = self.close(s);
        check(|| format!("ioctl {what} on interface {ifindex}"), r).map(drop)
    }

    /// Gives the library kernel a virtio-net interface (see
    /// [`Lkl::add_device`]), brings it up with `addrs` (address, prefix
    /// length) and adds `routes` (destination, prefix length, optional
    /// gateway).
    pub fn add_interface(
        &self,
        host_ifname: &str,
        addrs: &[(IpAddr, u8)],
        routes: &[(IpAddr, u8, Option<IpAddr>)],
    ) -> Result<Interface> {
        let itf = self.add_device(host_ifname)?;
        let index = itf.ifindex as u32;
        let mut nl = self.rtnl()?;
        let io = |e: std::io::Error| Error::Host(e.to_string());
        nl.set_link_up(index, true).map_err(io)?;
        for (a, p) in addrs {
            nl.add_address(&Address {
                index,
                addr: *a,
                prefix: *p,
            })
            .map_err(io)?;
        }
        for (dst, p, gw) in routes {
            nl.add_route(&Route {
                dst: *dst,
                prefix: *p,
                gateway: *gw,
                oif: Some(index),
                metric: 0,
                table: TABLE_MAIN,
            })
            .map_err(io)?;
        }
        Ok(itf)
    }

    /// Brings the loopback interface up (127.0.0.1/8, ::1).
    pub fn loopback_up(&self) -> Result<()> {
        self.rtnl()?
            .set_link_up(1, true)
            .map_err(|e| Error::Host(e.to_string()))
    }

    /// MPTCP limits of the in-kernel path manager.
    pub fn mptcp_set_limits(&self, subflows: u32, add_addr_accepted: u32) -> Result<()> {
        self.mptcp_pm()?
            .set_limits(Limits {
                subflows,
                add_addr_accepted,
            })
            .map_err(|e| Error::Host(e.to_string()))
    }

    /// Halts the kernel: every kernel thread ends, devices stop. Calls still
    /// blocked in the kernel on other threads stay blocked; later calls
    /// fail with ESHUTDOWN.
    pub fn halt(&self) -> Result<()> {
        if self.halted.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        if let Ok(d) = self.devices.lock() {
            for dev in d.iter() {
                dev.stop();
            }
        }
        let r = self.call(sys::NR_HALT, [0; 6]);
        check(|| "halt".into(), r)?;
        sys::join_kernel_threads();
        sys::stop_timer();
        Ok(())
    }

    /// Host semaphores the kernel still holds (leak checks).
    pub fn live_semaphores(&self) -> usize {
        sys::live_semaphores()
    }

    /// Frames moved by the interface number `index` (rx, tx).
    pub fn frame_counts(&self, index: usize) -> Option<(u64, u64)> {
        self.devices.lock().ok()?.get(index).map(|d| d.counts())
    }
}
