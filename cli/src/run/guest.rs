//! The uml backend's reach into programs that bypass libc: their TCP
//! connections are made by the device's User Mode Linux instance.
//!
//! Owns: answering the `connect()` and `listen()` calls the uml filter
//! traps ([`super::seccomp::Mode::Uml`]). A `connect()` on an IPv4/IPv6 TCP
//! socket to a non-loopback destination becomes a request to the
//! instance's supervisor (the same request, over the same channel, as the
//! shim's in `shim/src/uml.rs`, through `dropshim_backend_uml::client`);
//! the bridge it returns (a host TCP connection relayed by the guest agent
//! to a guest MPTCP socket connected to the destination) is installed in
//! the program at the socket's own descriptor number
//! (`SECCOMP_IOCTL_NOTIF_ADDFD` with `SECCOMP_ADDFD_FLAG_SETFD`), keeping
//! its O_NONBLOCK and close-on-exec, and the call returns 0. Reads and
//! writes then go through the bridge with no interception. `listen()` on a
//! TCP socket is refused with EOPNOTSUPP and one line: the server side is
//! not served on this path. Every other call continues untouched.
//!
//! The program's memory (the address connect() names) is read through one
//! function, [`read_program_memory`], which checks after the read that the
//! call still stands (`SECCOMP_IOCTL_NOTIF_ID_VALID`), so the bytes are
//! those of the thread that made the call.

use super::seccomp::{ignore_gone, ioctl_ptr, Call, Mode, Supervisor};
use dropshim_backend_native::socket::socket_addr;
use dropshim_backend_uml::client::{self, ClientError};
use dropshim_backend_uml::proto::{Kind, Request};
use dropshim_conf::Action;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};

/// Lets the trapped call run as if it had not been trapped.
const CONTINUE: u32 = libc::SECCOMP_USER_NOTIF_FLAG_CONTINUE as u32;

impl Supervisor {
    /// Answers one trapped call in uml mode.
    pub(super) fn answer_uml(&mut self, call: &Call) -> io::Result<()> {
        let Mode::Uml { device, policy } = self.mode.clone() else {
            return self.respond(call.id, 0, 0, CONTINUE).or_else(ignore_gone);
        };
        let answer = if call.nr == libc::SYS_connect as i32 {
            self.uml_connect(call, &device, &policy)
        } else if call.nr == libc::SYS_listen as i32 {
            self.uml_listen(call)
        } else {
            Ok(Answer::Continue)
        };
        match answer {
            Ok(Answer::Continue) => self.respond(call.id, 0, 0, CONTINUE),
            Ok(Answer::Value(v)) => self.respond(call.id, v, 0, 0),
            Err(e) => {
                let errno = e.raw_os_error().unwrap_or(libc::ECONNABORTED);
                self.respond(call.id, 0, -errno, 0)
            }
        }
        .or_else(ignore_gone)
    }

    fn uml_connect(
        &mut self,
        call: &Call,
        device: &str,
        policy: &dropshim_conf::Policy,
    ) -> io::Result<Answer> {
        let fd = call.args[0] as i32;
        let Some(target) = Target::open(call.pid, fd) else {
            return Ok(Answer::Continue); // the kernel reports EBADF & co.
        };
        let Some(domain) = target.tcp_domain() else {
            return Ok(Answer::Continue); // not a TCP socket: not ours
        };
        if target.peer().is_some() {
            return Ok(Answer::Continue); // connected already: EISCONN
        }
        let len = (call.args[2] as usize).min(std::mem::size_of::<libc::sockaddr_storage>());
        let bytes = read_program_memory(self, call, call.args[1], len)?;
        // SAFETY: sockaddr_storage is plain data; zero is a valid value.
        let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        // SAFETY: `bytes` holds at most size_of::<sockaddr_storage>() bytes.
        unsafe {
            std::ptr::copy_nonoverlapping(
                bytes.as_ptr(),
                (&mut storage as *mut libc::sockaddr_storage).cast::<u8>(),
                bytes.len(),
            )
        };
        let Some(dest) = socket_addr(&storage, bytes.len() as libc::socklen_t) else {
            return Ok(Answer::Continue); // AF_UNSPEC and the like
        };
        if is_local(&dest) {
            // The guest's loopback is not the host's.
            return Ok(Answer::Continue);
        }
        let mut req = Request::new(Kind::Connect);
        req.domain = domain;
        req.addr = Some(dest);
        req.bind = target.bound();
        req.mptcp = policy.decide(&dest) == Action::Mptcp;
        let bridge = match client::request(device, &req) {
            Ok((reply, Some(bridge))) if reply.errno == 0 => {
                // SAFETY: a descriptor just received is ours alone.
                unsafe { OwnedFd::from_raw_fd(bridge) }
            }
            Ok((reply, other)) => {
                if let Some(b) = other {
                    // SAFETY: a descriptor just received is ours alone.
                    drop(unsafe { OwnedFd::from_raw_fd(b) });
                }
                let errno = if reply.errno == 0 {
                    libc::ECONNABORTED
                } else {
                    reply.errno
                };
                return Err(io::Error::from_raw_os_error(errno));
            }
            Err(ClientError::NotRunning(_)) => {
                static SAID: AtomicBool = AtomicBool::new(false);
                if !SAID.swap(true, Ordering::Relaxed) {
                    self.log.warn(&format!(
                        "the uml instance of device {device:?} is not running; start it with \
                         `dropshim up --config FILE`"
                    ));
                }
                return Err(io::Error::from_raw_os_error(libc::ENETDOWN));
            }
            Err(_) => return Err(io::Error::from_raw_os_error(libc::ECONNABORTED)),
        };
        // The program's descriptor keeps its status flags and FD_CLOEXEC.
        let flags = fcntl(target.copy.as_raw_fd(), libc::F_GETFL, 0)?;
        if flags & libc::O_NONBLOCK != 0 {
            fcntl(
                bridge.as_raw_fd(),
                libc::F_SETFL,
                libc::O_RDWR | libc::O_NONBLOCK,
            )?;
        }
        let cloexec = fd_cloexec(target.tgid, fd);
        let mut addfd = libc::seccomp_notif_addfd {
            id: call.id,
            flags: libc::SECCOMP_ADDFD_FLAG_SETFD as u32,
            srcfd: bridge.as_raw_fd() as u32,
            newfd: fd as u32,
            newfd_flags: if cloexec { libc::O_CLOEXEC as u32 } else { 0 },
        };
        ioctl_ptr(self.fd(), libc::SECCOMP_IOCTL_NOTIF_ADDFD, &mut addfd)?;
        self.log.debug(|| {
            format!(
                "pid {}: connect(fd {fd}, {dest}) through the uml instance of {device:?}",
                call.pid
            )
        });
        Ok(Answer::Value(0))
    }

    fn uml_listen(&mut self, call: &Call) -> io::Result<Answer> {
        let fd = call.args[0] as i32;
        let Some(target) = Target::open(call.pid, fd) else {
            return Ok(Answer::Continue);
        };
        if target.tcp_domain().is_none() {
            return Ok(Answer::Continue);
        }
        static SAID: AtomicBool = AtomicBool::new(false);
        if !SAID.swap(true, Ordering::Relaxed) {
            self.log.warn(
                "the uml backend does not serve listening sockets of programs that bypass libc \
                 (Go, static binaries); run such a server with --backend native",
            );
        }
        Err(io::Error::from_raw_os_error(libc::EOPNOTSUPP))
    }
}

/// How to answer a trapped call.
enum Answer {
    /// Let the kernel run it.
    Continue,
    /// Return this value.
    Value(i64),
}

fn is_local(dest: &SocketAddr) -> bool {
    let ip = match dest.ip() {
        std::net::IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(std::net::IpAddr::V4)
            .unwrap_or(dest.ip()),
        v4 => v4,
    };
    ip.is_loopback() || ip.is_unspecified()
}

/// Reads `len` bytes at `addr` in the calling thread's memory, then checks
/// that the call still stands: a thread that died, or was interrupted,
/// between the notification and the read may have left another process
/// (a reused pid) or other bytes behind, and then the read counts for
/// nothing.
fn read_program_memory(
    sup: &Supervisor,
    call: &Call,
    addr: u64,
    len: usize,
) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    if len > 0 {
        let local = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: len,
        };
        let remote = libc::iovec {
            iov_base: addr as *mut libc::c_void,
            iov_len: len,
        };
        // SAFETY: `local` is our live buffer of `len` bytes; the remote
        // side is the other process's memory, which the kernel checks.
        let n =
            unsafe { libc::process_vm_readv(call.pid as libc::pid_t, &local, 1, &remote, 1, 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        if n as usize != len {
            return Err(io::Error::from_raw_os_error(libc::EFAULT));
        }
    }
    if !sup.id_valid(call.id) {
        return Err(io::Error::from_raw_os_error(libc::ESRCH));
    }
    Ok(buf)
}

/// A copy of the program's descriptor, taken with pidfd_getfd.
struct Target {
    tgid: libc::pid_t,
    copy: OwnedFd,
}

impl Target {
    fn open(tid: u32, fd: RawFd) -> Option<Target> {
        let tgid = tgid_of(tid)?;
        // SAFETY: pidfd_open takes a pid and flags.
        let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, tgid, 0) } as RawFd;
        if pidfd < 0 {
            return None;
        }
        // SAFETY: just created, ours alone.
        let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
        // SAFETY: pidfd_getfd takes a pidfd, a descriptor number and flags.
        let copy =
            unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0) } as RawFd;
        if copy < 0 {
            return None;
        }
        Some(Target {
            tgid,
            // SAFETY: a new descriptor (close-on-exec) that is ours alone.
            copy: unsafe { OwnedFd::from_raw_fd(copy) },
        })
    }

    fn int_opt(&self, level: i32, name: i32) -> Option<i32> {
        let mut v: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: `v` and `len` are live and sized for an int option.
        let rc = unsafe {
            libc::getsockopt(
                self.copy.as_raw_fd(),
                level,
                name,
                (&mut v as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        (rc == 0).then_some(v)
    }

    /// AF_INET or AF_INET6 when the descriptor is a TCP stream socket.
    fn tcp_domain(&self) -> Option<i32> {
        let domain = self.int_opt(libc::SOL_SOCKET, libc::SO_DOMAIN)?;
        let ty = self.int_opt(libc::SOL_SOCKET, libc::SO_TYPE)?;
        let proto = self.int_opt(libc::SOL_SOCKET, libc::SO_PROTOCOL)?;
        ((domain == libc::AF_INET || domain == libc::AF_INET6)
            && ty == libc::SOCK_STREAM
            && proto == libc::IPPROTO_TCP)
            .then_some(domain)
    }

    fn name(&self, peer: bool) -> Option<SocketAddr> {
        // SAFETY: plain data; zero is valid.
        let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        let ptr = (&mut storage as *mut libc::sockaddr_storage).cast::<libc::sockaddr>();
        // SAFETY: the storage and its length are live and match.
        let rc = unsafe {
            if peer {
                libc::getpeername(self.copy.as_raw_fd(), ptr, &mut len)
            } else {
                libc::getsockname(self.copy.as_raw_fd(), ptr, &mut len)
            }
        };
        if rc != 0 {
            return None;
        }
        socket_addr(&storage, len)
    }

    fn peer(&self) -> Option<SocketAddr> {
        self.name(true)
    }

    /// The address the program bound, if it bound one.
    fn bound(&self) -> Option<SocketAddr> {
        self.name(false)
            .filter(|a| a.port() != 0 || !a.ip().is_unspecified())
    }
}

fn tgid_of(tid: u32) -> Option<libc::pid_t> {
    let status = std::fs::read_to_string(format!("/proc/{tid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Tgid:"))
        .and_then(|v| v.trim().parse().ok())
}

/// Whether the program's descriptor `fd` is close-on-exec (fdinfo's
/// `flags` are the open flags in octal, O_CLOEXEC included).
fn fd_cloexec(tgid: libc::pid_t, fd: RawFd) -> bool {
    std::fs::read_to_string(format!("/proc/{tgid}/fdinfo/{fd}"))
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("flags:"))
                .and_then(|v| i64::from_str_radix(v.trim(), 8).ok())
        })
        .is_some_and(|flags| flags & i64::from(libc::O_CLOEXEC) != 0)
}

fn fcntl(fd: RawFd, cmd: i32, arg: i32) -> io::Result<i32> {
    // SAFETY: F_GETFL/F_SETFL with an integer argument.
    let rc = unsafe { libc::fcntl(fd, cmd, arg) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}
