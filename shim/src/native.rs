//! Socket semantics on the native backend.
//!
//! A TCP socket is opened as MPTCP when the policy's default says so;
//! once its address is known (bind, connect) the policy may say otherwise
//! and the socket is switched in place, keeping its descriptor number,
//! flags and the options the program set. After connect() or listen()
//! the protocol is fixed and the shim steps out of the way: reads and
//! writes go straight to the kernel.

use crate::fdtable::{self, FIXED, HAS_OPTS, MPTCP, TRACKED};
use crate::log;
use crate::Errno;
use dropshim_backend_native::socket::{self as nsock, Proto, SockOpt};
use dropshim_conf::{Action, Policy};
use std::io;
use std::net::SocketAddr;
use std::os::raw::c_int;
use std::sync::atomic::{AtomicBool, Ordering};

/// Set once this process has seen that MPTCP is unavailable; from then on
/// sockets are opened as TCP directly instead of failing twice each time.
static UNAVAILABLE: AtomicBool = AtomicBool::new(false);

fn note_unavailable(err: &io::Error) {
    if !UNAVAILABLE.swap(true, Ordering::Relaxed) {
        log::warning!(
            "MPTCP is not available here ({err}); using plain TCP (is net.mptcp.enabled=1?)"
        );
    }
}

fn proto_of(flags: u8) -> Proto {
    if flags & MPTCP != 0 {
        Proto::Mptcp
    } else {
        Proto::Tcp
    }
}

fn proto_for(action: Action) -> Proto {
    match action {
        Action::Mptcp => Proto::Mptcp,
        Action::Tcp => Proto::Tcp,
    }
}

/// `socket()` for an AF_INET/AF_INET6 stream socket asking for TCP.
pub fn socket(policy: &Policy, domain: c_int, ty: c_int) -> Result<c_int, Errno> {
    let want = proto_for(policy.initial());
    if want == Proto::Mptcp && !UNAVAILABLE.load(Ordering::Relaxed) {
        match nsock::open(domain, ty, Proto::Mptcp) {
            Ok(fd) => {
                fdtable::set(fd, TRACKED | MPTCP);
                return Ok(fd);
            }
            Err(e) if nsock::mptcp_unavailable(&e) => {
                // Bad arguments (say unknown SOCK_* flags) fail with EINVAL
                // too: only when TCP accepts the same call is MPTCP missing.
                let fd = nsock::open(domain, ty, Proto::Tcp).map_err(Errno::from)?;
                note_unavailable(&e);
                fdtable::set(fd, TRACKED);
                return Ok(fd);
            }
            Err(e) => return Err(Errno::from(e)),
        }
    }
    let fd = nsock::open(domain, ty, Proto::Tcp).map_err(Errno::from)?;
    fdtable::set(fd, TRACKED);
    Ok(fd)
}

/// Brings a not-yet-fixed socket to the protocol the policy wants for
/// `addr`. Failure keeps the socket as it was: the program must not notice.
fn settle(fd: c_int, flags: u8, action: Action, addr: &SocketAddr) {
    let have = proto_of(flags);
    let want = proto_for(action);
    if have == want || (want == Proto::Mptcp && UNAVAILABLE.load(Ordering::Relaxed)) {
        return;
    }
    match nsock::switch_protocol(fd, want, &fdtable::options(fd)) {
        Ok(()) => {
            let flags = if want == Proto::Mptcp {
                flags | MPTCP
            } else {
                flags & !MPTCP
            };
            fdtable::set(fd, flags);
            log::debug!("fd {fd} to {addr}: switched to {want:?} by policy");
        }
        Err(e) if want == Proto::Mptcp && nsock::mptcp_unavailable(&e) => note_unavailable(&e),
        Err(e) => {
            log::debug!("fd {fd} to {addr}: stays {have:?}, could not switch to {want:?}: {e}")
        }
    }
}

/// Before the real `connect()`: settle the protocol for the destination.
pub fn before_connect(policy: &Policy, fd: c_int, flags: u8, dest: Option<SocketAddr>) {
    if let Some(dest) = dest {
        settle(fd, flags, policy.decide(&dest), &dest);
    }
    fdtable::insert(fd, FIXED);
}

/// Before the real `bind()`: a listener's address is matched like a
/// destination (a loopback-only server stays TCP by default).
pub fn before_bind(policy: &Policy, fd: c_int, flags: u8, local: Option<SocketAddr>) {
    if let Some(local) = local {
        settle(fd, flags, policy.decide_bind(&local), &local);
    }
}

/// Before the real `listen()`: a policy with `listeners = false` keeps
/// servers on TCP (the socket is switched and rebound to its address).
pub fn before_listen(policy: &Policy, fd: c_int, flags: u8) {
    if !policy.listeners && flags & FIXED == 0 {
        let local = std::net::SocketAddr::from(([0, 0, 0, 0], 0));
        settle(fd, flags, Action::Tcp, &local);
    }
    fdtable::insert(fd, FIXED);
}

/// `setsockopt()` on a socket whose protocol is not fixed yet: remember
/// the option so a replacement socket gets it too. If MPTCP refuses an
/// option the program needs, the socket goes back to TCP and the option
/// is applied there: the program's request wins over the upgrade.
pub fn setsockopt(fd: c_int, flags: u8, opt: SockOpt, real: impl Fn() -> c_int) -> c_int {
    let diverges = opt.level == libc::IPPROTO_TCP
        && matches!(opt.name, libc::TCP_CONGESTION | libc::TCP_MAXSEG);
    if flags & MPTCP != 0 && diverges {
        if let Some(Err(errno)) = on_plain_tcp(fd, &opt) {
            return Errno(errno).fail();
        }
    }
    let ret = real();
    if ret == 0 {
        fdtable::record_option(fd, opt);
        return 0;
    }
    let errno = Errno::from(io::Error::last_os_error());
    let refused = matches!(errno.0, libc::EOPNOTSUPP | libc::ENOPROTOOPT);
    if !(refused && flags & MPTCP != 0) {
        return errno.fail();
    }
    // Only a refusal that plain TCP would not give means "MPTCP cannot do
    // this" (programs often try options that fail on TCP as well, like
    // python's IPV6_V6ONLY on an IPv4 socket); then TCP's answer is the
    // one the program gets.
    match on_plain_tcp(fd, &opt) {
        Some(Ok(())) => {}
        Some(Err(tcp_errno)) => return Errno(tcp_errno).fail(),
        None => return errno.fail(),
    }
    match nsock::switch_protocol(fd, Proto::Tcp, &fdtable::options(fd)) {
        Ok(()) => {
            fdtable::set(fd, (flags & !MPTCP) | (flags & HAS_OPTS));
            log::info!(
                "fd {fd}: MPTCP does not support option level {} name {}; socket stays plain TCP",
                opt.level,
                opt.name
            );
            let ret = real();
            if ret == 0 {
                fdtable::record_option(fd, opt);
            }
            ret
        }
        // Keep the original failure for the program.
        Err(_) => errno.fail(),
    }
}

/// What a plain TCP socket of the same family says to `opt`: `None` when
/// that cannot be found out. MPTCP and TCP differ on a few values (an
/// unknown TCP_CONGESTION name, a TCP_MAXSEG below the minimum, options
/// MPTCP does not implement); the program asked for TCP and must get
/// TCP's answer. Costs a throwaway socket, so it is asked only for the
/// options known to differ and after a refusal.
fn on_plain_tcp(fd: c_int, opt: &SockOpt) -> Option<Result<(), c_int>> {
    use dropshim_backend_native::sys;
    if opt.value.is_empty() {
        return None;
    }
    let domain = dropshim_abi::sock::getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_DOMAIN).ok()?;
    let probe = nsock::open(domain, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, Proto::Tcp).ok()?;
    let res = dropshim_abi::sock::setsockopt(probe, opt.level, opt.name, &opt.value);
    let _ = sys::close(probe);
    Some(res.map_err(|e| e.raw_os_error().unwrap_or(libc::EINVAL)))
}

/// Says what MPTCP did on a connection that is about to close.
pub fn report_close(fd: c_int) {
    let Ok(peer) = dropshim_abi::sock::peer_addr(fd) else {
        return; // listener or never connected: nothing to say
    };
    let Ok(local) = dropshim_abi::sock::local_addr(fd) else {
        return;
    };
    match nsock::mptcp_report(fd) {
        Ok(r) if r.fallback => log::info!(
            "closed {local} -> {peer}: fell back to plain TCP (the peer did not speak MPTCP)"
        ),
        Ok(r) => {
            let paths: Vec<String> = r
                .subflow_addrs
                .iter()
                .map(|(l, p)| format!("{l}->{p}"))
                .collect();
            log::info!(
                "closed {local} -> {peer}: MPTCP, {} subflow(s) [{}], {} bytes sent, {} received",
                r.subflows,
                paths.join(", "),
                r.bytes_sent,
                r.bytes_received
            );
        }
        Err(e) => log::info!("closed {local} -> {peer}: MPTCP state unreadable ({e})"),
    }
}
