//! The guest agent: init of the UML instance.
//!
//! It runs the configuration commands the supervisor wrote (addresses,
//! routes, MPTCP endpoints, limits, path manager), listens on the private
//! link, and for each bridge connection opens the program's socket in the
//! guest (MPTCP or TCP as the host's policy decided) and moves bytes
//! between the two with splice(2), so the guest's user space never copies
//! the payload.

use crate::proto::{Kind, Notice, Reply, Request, NOTICE_LEN};
use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

const IPPROTO_MPTCP: i32 = 262;

/// Entry point when the kernel runs us as init. Never returns normally:
/// the instance powers off if configuration fails.
pub fn main() -> ! {
    std::env::set_var(
        "PATH",
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    );
    let cmds = std::env::var_os(crate::ENV_GUEST).map(PathBuf::from);
    let Some(cmds) = cmds else {
        eprintln!(
            "dropshim-uml agent: {} is not set; not started by a dropshim supervisor",
            crate::ENV_GUEST
        );
        power_off();
    };
    let run = cmds.parent().map(Path::to_path_buf).unwrap_or_default();
    match setup(&cmds) {
        Ok(listener) => {
            // The supervisor waits for this file before serving programs.
            if let Err(e) = std::fs::write(run.join("ready"), b"ready\n") {
                eprintln!("dropshim-uml agent: cannot write ready file: {e}");
            }
            serve(listener);
        }
        Err(e) => {
            eprintln!("dropshim-uml agent: {e}");
            let _ = std::fs::write(run.join("agent-error"), format!("{e}\n"));
        }
    }
    power_off();
}

fn power_off() -> ! {
    // SAFETY: sync and reboot take no pointers; as init we may power off.
    unsafe {
        libc::sync();
        libc::reboot(libc::LINUX_REBOOT_CMD_POWER_OFF);
    }
    std::process::exit(1);
}

fn mount(src: &str, target: &str, fstype: &str) {
    let c = |s: &str| std::ffi::CString::new(s).unwrap_or_default();
    let (src, target, fstype) = (c(src), c(target), c(fstype));
    // SAFETY: all three are valid NUL-terminated strings alive for the call.
    unsafe {
        libc::mount(
            src.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
}

/// Runs the supervisor's command list, then listens on the private link.
fn setup(cmds: &Path) -> Result<TcpListener, String> {
    mount("proc", "/proc", "proc");
    mount("sysfs", "/sys", "sysfs");
    // SAFETY: socket(2) takes integers only; the probe is closed at once.
    let probe = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, IPPROTO_MPTCP) };
    if probe < 0 {
        return Err(format!(
            "this UML kernel has no MPTCP ({}); Debian's user-mode-linux package is built without CONFIG_MPTCP. \
             Remove `kernel` from [uml] to boot the kernel dropshim builds (backend-uml/build-kernel.sh)",
            io::Error::last_os_error()
        ));
    }
    // SAFETY: closing the probe socket we just opened.
    unsafe { libc::close(probe) };
    let text = std::fs::read_to_string(cmds)
        .map_err(|e| format!("cannot read {}: {e}", cmds.display()))?;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let argv: Vec<&str> = line.split('\t').collect();
        run_command(&argv)?;
    }
    record_mptcp(cmds);
    let addr = SocketAddrV4::new(Ipv4Addr::from(crate::GUEST_BRIDGE_ADDR), crate::BRIDGE_PORT);
    TcpListener::bind(addr).map_err(|e| format!("cannot listen on the private link {addr}: {e}"))
}

/// The name of the file, next to the command list in the run directory,
/// where the guest records its MPTCP packet schedulers once configured:
/// `net.mptcp.available_schedulers = ...` and `net.mptcp.scheduler = ...`.
pub const GUEST_MPTCP_FILE: &str = "guest.mptcp";

/// Writes [`GUEST_MPTCP_FILE`], so the host can see which schedulers the
/// guest kernel offers and which one it runs. Best effort: the instance
/// works without it.
fn record_mptcp(cmds: &Path) {
    let mut text = String::new();
    for key in ["available_schedulers", "scheduler"] {
        let value =
            std::fs::read_to_string(Path::new("/proc/sys/net/mptcp").join(key)).unwrap_or_default();
        text.push_str(&format!("net.mptcp.{key} = {}\n", value.trim()));
    }
    let _ = std::fs::write(cmds.with_file_name(GUEST_MPTCP_FILE), text);
}

fn run_command(argv: &[&str]) -> Result<(), String> {
    match argv {
        // `sysctl KEY VALUE`: written directly, the guest has no sysctl(8) need.
        ["sysctl", key, value] => {
            let path = Path::new("/proc/sys").join(key.replace('.', "/"));
            std::fs::write(&path, value).map_err(|e| format!("cannot set {key}={value}: {e}"))
        }
        [prog, args @ ..] => {
            let out = Command::new(prog)
                .args(args)
                .output()
                .map_err(|e| format!("cannot run {prog}: {e}"))?;
            if out.status.success() {
                Ok(())
            } else {
                Err(format!(
                    "`{}` failed: {}",
                    argv.join(" "),
                    String::from_utf8_lossy(&out.stderr).trim()
                ))
            }
        }
        [] => Ok(()),
    }
}

/// Reopens `vec<index>` after its host interface came back: closing the
/// device clears the vector driver's failed-transport mark and opening it
/// makes a fresh raw socket. The bounce removes the device's IPv6
/// addresses and the routes through it, so its configuration commands
/// run again; those whose result survived the bounce (IPv4 addresses,
/// MPTCP endpoints) fail with "File exists", "already assigned" or
/// "duplicate", which is fine.
///
/// Endpoints are deliberately not deleted and added again to make the
/// path manager open fresh subflows for existing connections: tried, and
/// it stalled the connection at the data level (a 128 MiB download never
/// finished). New connections get a subflow over the device again.
fn reset_device(index: u64) -> Result<(), String> {
    let dev = format!("vec{index}");
    run_command(&["ip", "link", "set", &dev, "down"])?;
    run_command(&["ip", "link", "set", &dev, "up"])?;
    let cmds = std::env::var_os(crate::ENV_GUEST)
        .map(PathBuf::from)
        .ok_or_else(|| format!("{} is not set", crate::ENV_GUEST))?;
    let text = std::fs::read_to_string(&cmds)
        .map_err(|e| format!("cannot read {}: {e}", cmds.display()))?;
    for line in text.lines() {
        let argv: Vec<&str> = line.split('\t').collect();
        if !argv.contains(&dev.as_str()) {
            continue;
        }
        if let Err(e) = run_command(&argv) {
            let benign = ["exists", "already assigned", "duplicate"];
            if !benign.iter().any(|b| e.contains(b)) {
                return Err(e);
            }
        }
    }
    Ok(())
}

/// Guest connections accepted by listeners, waiting for their bridge.
type Pending = Arc<Mutex<HashMap<u64, OwnedFd>>>;

fn serve(listener: TcpListener) {
    let pending: Pending = Arc::default();
    for bridge in listener.incoming() {
        let Ok(bridge) = bridge else { continue };
        let _ = bridge.set_nodelay(true);
        let pending = pending.clone();
        std::thread::spawn(move || {
            if let Err(e) = handle(bridge, &pending) {
                eprintln!("dropshim-uml agent: bridge: {e}");
            }
        });
    }
}

fn read_request(bridge: &mut TcpStream) -> io::Result<Request> {
    let mut len = [0u8; 4];
    bridge.read_exact(&mut len)?;
    let len = u32::from_le_bytes(len) as usize;
    if len > crate::proto::MAX_REQUEST {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "request too long",
        ));
    }
    let mut body = vec![0u8; len];
    bridge.read_exact(&mut body)?;
    Request::decode(&body)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "malformed request"))
}

fn handle(mut bridge: TcpStream, pending: &Pending) -> io::Result<()> {
    let req = read_request(&mut bridge)?;
    match req.kind {
        Kind::Connect => match open_connected(&req, bridge.as_raw_fd()) {
            Ok((sock, reply)) => {
                bridge.write_all(&reply.encode())?;
                relay(bridge, sock);
                Ok(())
            }
            Err(e) => bridge.write_all(&Reply::error(errno_of(&e)).encode()),
        },
        Kind::Listen => match open_listener(&req) {
            Ok((sock, reply)) => {
                bridge.write_all(&reply.encode())?;
                accept_loop(bridge, sock, pending)
            }
            Err(e) => bridge.write_all(&Reply::error(errno_of(&e)).encode()),
        },
        Kind::Attach => {
            let sock = pending
                .lock()
                .map_err(|_| io::Error::other("poisoned"))?
                .remove(&req.id);
            match sock {
                Some(sock) => {
                    let reply = Reply {
                        errno: 0,
                        local: sock_addr(sock.as_raw_fd(), false),
                        peer: sock_addr(sock.as_raw_fd(), true),
                    };
                    bridge.write_all(&reply.encode())?;
                    relay(bridge, sock);
                    Ok(())
                }
                None => bridge.write_all(&Reply::error(libc::ECONNABORTED).encode()),
            }
        }
        Kind::Reset => {
            let errno = match reset_device(req.id) {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("dropshim-uml agent: {e}");
                    libc::EIO
                }
            };
            bridge.write_all(&Reply::error(errno).encode())
        }
        Kind::Ping | Kind::Watch => bridge.write_all(&Reply::error(0).encode()),
    }
}

fn errno_of(e: &io::Error) -> i32 {
    e.raw_os_error().unwrap_or(libc::EIO)
}

fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// A guest socket of the request's family, MPTCP if asked (falling back to
/// TCP only if the guest kernel refuses MPTCP, which ours never does),
/// with the program's options applied.
fn new_socket(req: &Request) -> io::Result<OwnedFd> {
    let proto = if req.mptcp {
        IPPROTO_MPTCP
    } else {
        libc::IPPROTO_TCP
    };
    // SAFETY: socket(2) takes integers only.
    let fd =
        cvt(unsafe { libc::socket(req.domain, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, proto) })?;
    // SAFETY: `fd` was just returned by socket(2) and is owned by nobody else.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    for opt in &req.opts {
        // Options the program set on a TCP socket; MPTCP may refuse a
        // few (it says so with EOPNOTSUPP), which TCP semantics survive.
        // SAFETY: the kernel reads `value.len()` bytes from `value`.
        unsafe {
            libc::setsockopt(
                fd,
                opt.level,
                opt.name,
                opt.value.as_ptr().cast(),
                opt.value.len() as libc::socklen_t,
            );
        }
    }
    Ok(sock)
}

fn to_storage(addr: &SocketAddr, domain: i32) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain data; all-zero is valid.
    let mut st: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    // An AF_INET6 socket reaching an IPv4 address uses the mapped form.
    let addr = match (addr, domain) {
        (SocketAddr::V4(v4), libc::AF_INET6) => {
            SocketAddr::new(v4.ip().to_ipv6_mapped().into(), v4.port())
        }
        _ => *addr,
    };
    let len = match addr {
        SocketAddr::V4(v4) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: v4.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from(*v4.ip()).to_be(),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_in fits in sockaddr_storage.
            unsafe { std::ptr::write(&mut st as *mut _ as *mut libc::sockaddr_in, sin) };
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(v6) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: v6.port().to_be(),
                sin6_flowinfo: v6.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: v6.ip().octets(),
                },
                sin6_scope_id: v6.scope_id(),
            };
            // SAFETY: sockaddr_in6 fits in sockaddr_storage.
            unsafe { std::ptr::write(&mut st as *mut _ as *mut libc::sockaddr_in6, sin6) };
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (st, len as libc::socklen_t)
}

/// The socket's local or peer address, as the guest kernel sees it.
fn sock_addr(fd: RawFd, peer: bool) -> Option<SocketAddr> {
    // SAFETY: sockaddr_storage is plain data; all-zero is valid.
    let mut st: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    let p = &mut st as *mut _ as *mut libc::sockaddr;
    // SAFETY: the kernel writes at most `len` bytes into `st`.
    let ret = unsafe {
        if peer {
            libc::getpeername(fd, p, &mut len)
        } else {
            libc::getsockname(fd, p, &mut len)
        }
    };
    if ret < 0 {
        return None;
    }
    from_storage(&st)
}

fn from_storage(st: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match st.ss_family as i32 {
        libc::AF_INET => {
            // SAFETY: the family says this storage holds a sockaddr_in.
            let sin = unsafe { &*(st as *const _ as *const libc::sockaddr_in) };
            Some(SocketAddr::new(
                Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)).into(),
                u16::from_be(sin.sin_port),
            ))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says this storage holds a sockaddr_in6.
            let sin6 = unsafe { &*(st as *const _ as *const libc::sockaddr_in6) };
            Some(SocketAddr::V6(std::net::SocketAddrV6::new(
                sin6.sin6_addr.s6_addr.into(),
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

fn set_nonblocking(fd: RawFd, on: bool) -> io::Result<()> {
    // SAFETY: F_GETFL/F_SETFL take integers only.
    let fl = cvt(unsafe { libc::fcntl(fd, libc::F_GETFL) })?;
    let fl = if on {
        fl | libc::O_NONBLOCK
    } else {
        fl & !libc::O_NONBLOCK
    };
    // SAFETY: as above.
    cvt(unsafe { libc::fcntl(fd, libc::F_SETFL, fl) }).map(drop)
}

fn open_connected(req: &Request, bridge: RawFd) -> io::Result<(OwnedFd, Reply)> {
    let dest = req
        .addr
        .ok_or_else(|| io::Error::from_raw_os_error(libc::EDESTADDRREQ))?;
    let sock = new_socket(req)?;
    let fd = sock.as_raw_fd();
    if let Some(bind) = req.bind {
        let (st, len) = to_storage(&bind, req.domain);
        // SAFETY: `st` holds a valid address of `len` bytes.
        cvt(unsafe { libc::bind(fd, &st as *const _ as *const libc::sockaddr, len) })?;
    }
    let (st, len) = to_storage(&dest, req.domain);
    // Non-blocking, so that a bridge closed meanwhile (the program closed
    // its socket mid-connect) abandons the attempt instead of holding a
    // guest socket for the whole SYN retry period.
    set_nonblocking(fd, true)?;
    // SAFETY: `st` holds a valid address of `len` bytes.
    let ret = unsafe { libc::connect(fd, &st as *const _ as *const libc::sockaddr, len) };
    if ret < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINPROGRESS) {
            return Err(e);
        }
        let mut fds = [
            libc::pollfd {
                fd,
                events: libc::POLLOUT,
                revents: 0,
            },
            libc::pollfd {
                fd: bridge,
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        loop {
            // SAFETY: `fds` is a live array of two pollfd.
            let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.raw_os_error() == Some(libc::EINTR) {
                    continue;
                }
                return Err(e);
            }
            if fds[0].revents != 0 {
                break;
            }
            if fds[1].revents != 0 {
                return Err(io::Error::from_raw_os_error(libc::ECANCELED));
            }
        }
        let mut err: libc::c_int = 0;
        let mut elen = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: the kernel writes at most `elen` bytes into `err`.
        cvt(unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_ERROR,
                &mut err as *mut libc::c_int as *mut libc::c_void,
                &mut elen,
            )
        })?;
        if err != 0 {
            return Err(io::Error::from_raw_os_error(err));
        }
    }
    set_nonblocking(fd, false)?;
    let reply = Reply {
        errno: 0,
        local: sock_addr(fd, false),
        peer: sock_addr(fd, true),
    };
    Ok((sock, reply))
}

fn open_listener(req: &Request) -> io::Result<(OwnedFd, Reply)> {
    let sock = new_socket(req)?;
    let fd = sock.as_raw_fd();
    let local = req.addr.unwrap_or_else(|| {
        if req.domain == libc::AF_INET6 {
            "[::]:0"
                .parse()
                .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
        } else {
            SocketAddr::from(([0, 0, 0, 0], 0))
        }
    });
    let (st, len) = to_storage(&local, req.domain);
    // SAFETY: `st` holds a valid address of `len` bytes.
    cvt(unsafe { libc::bind(fd, &st as *const _ as *const libc::sockaddr, len) })?;
    // SAFETY: listen(2) takes integers only.
    cvt(unsafe { libc::listen(fd, req.backlog.max(1)) })?;
    let reply = Reply {
        errno: 0,
        local: sock_addr(fd, false),
        peer: None,
    };
    Ok((sock, reply))
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// Accepts guest connections and announces each on the listener's
/// bridge; ends when the supervisor closes that bridge (the program
/// closed its listener), which also closes the guest listener.
fn accept_loop(mut bridge: TcpStream, sock: OwnedFd, pending: &Pending) -> io::Result<()> {
    let lfd = sock.as_raw_fd();
    loop {
        let mut fds = [
            libc::pollfd {
                fd: lfd,
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: bridge.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: `fds` is a live array of two pollfd.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if n < 0 {
            continue;
        }
        if fds[1].revents != 0 {
            return Ok(()); // supervisor side closed: the program closed its listener
        }
        if fds[0].revents & libc::POLLIN == 0 {
            continue;
        }
        // SAFETY: no address is requested, so nothing is written.
        let cfd = unsafe {
            libc::accept4(
                lfd,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_CLOEXEC,
            )
        };
        if cfd < 0 {
            continue;
        }
        // SAFETY: accept4 returned a fresh descriptor nobody else owns.
        let conn = unsafe { OwnedFd::from_raw_fd(cfd) };
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let notice = Notice {
            id,
            local: sock_addr(cfd, false),
            peer: sock_addr(cfd, true),
        };
        pending
            .lock()
            .map_err(|_| io::Error::other("poisoned"))?
            .insert(id, conn);
        bridge.write_all(&notice.encode()[..NOTICE_LEN])?;
    }
}

/// How long a splice from or to the guest socket waits before it looks
/// again.
const RECV_RETRY: std::time::Duration = std::time::Duration::from_millis(200);
const SEND_RETRY: std::time::Duration = std::time::Duration::from_millis(200);

/// The guest socket's receive buffer once connected (the kernel doubles
/// it): four times the largest window the connection can advertise.
const RCVBUF: libc::c_int = 4 << 20;

/// setsockopt of one int; failure leaves the kernel's default.
fn set_int(fd: RawFd, level: libc::c_int, name: libc::c_int, value: libc::c_int) {
    // SAFETY: the kernel reads one int from `value`.
    unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            &value as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// Moves bytes both ways until both directions ended. A reset on one side
/// becomes a reset on the other, so the program sees the peer's error.
fn relay(bridge: TcpStream, sock: OwnedFd) {
    // SAFETY: `sock` is a connected stream socket we own; TcpStream only
    // issues read/write/shutdown/close on it.
    let sock = unsafe { TcpStream::from_raw_fd(std::os::fd::IntoRawFd::into_raw_fd(sock)) };
    // The program's Nagle, TCP_NODELAY and TCP_CORK act on its end of the
    // bridge (a host TCP socket), which releases bytes when the program
    // wants them sent; the guest socket must then send them at once
    // instead of applying Nagle a second time (a small tail segment would
    // wait for the peer's delayed ACK), nor keep a cork the program set
    // before connecting and has since lifted on the bridge.
    let _ = sock.set_nodelay(true);
    let off: libc::c_int = 0;
    // SAFETY: the kernel reads one int from `off`.
    unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_CORK,
            &off as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
    // Linux 6.12's MPTCP can leave a reader blocked for good after a path
    // was cut: the segment that fills the hole stays in its subflow while
    // out-of-order data fills the receive buffer, and nothing wakes the
    // reader to pull it in. A receive timeout makes `pump` call splice
    // again, which pulls it (the same cure as the lkl backend's relay).
    let _ = sock.set_read_timeout(Some(RECV_RETRY));
    // Nor has it a persist timer: a writer asleep for room, with nothing
    // in flight on any subflow (the peer's window closed, or memory ran
    // short), is never woken. A send timeout makes `pump` splice again,
    // and that pushes what is pending or probes the window.
    let _ = sock.set_write_timeout(Some(SEND_RETRY));
    // And once out-of-order data alone (a segment lost on a cut path, the
    // other path going on) holds more memory than the receive buffer,
    // 6.12 moves at most one skb per read out of the subflows, whose own
    // buffers are full, so the retransmission that fills the hole cannot
    // come in: the download trickles or stops for good. The window scale
    // is fixed by now (at connect, from the guest's 1.9 MB tcp_rmem
    // maximum: windows of at most 2 MiB), so a buffer four times that
    // never fills with out-of-order data. Forced: rmem_max is lower.
    set_int(
        sock.as_raw_fd(),
        libc::SOL_SOCKET,
        libc::SO_RCVBUFFORCE,
        RCVBUF,
    );
    let (b2, s2) = match (bridge.try_clone(), sock.try_clone()) {
        (Ok(b), Ok(s)) => (b, s),
        _ => return,
    };
    let up = std::thread::spawn(move || pump(&b2, &s2));
    pump(&sock, &bridge);
    let _ = up.join();
}

/// One direction: splice `from` -> pipe -> `to`.
fn pump(from: &TcpStream, to: &TcpStream) {
    let (src, dst) = (from.as_raw_fd(), to.as_raw_fd());
    let mut pipe = [0 as libc::c_int; 2];
    // SAFETY: the kernel writes two descriptors into `pipe`.
    if unsafe { libc::pipe2(pipe.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return;
    }
    // SAFETY: both descriptors were just created and are owned here.
    let (pr, pw) = unsafe { (OwnedFd::from_raw_fd(pipe[0]), OwnedFd::from_raw_fd(pipe[1])) };
    const CHUNK: usize = 1 << 20;
    // SAFETY: F_SETPIPE_SZ takes an integer; failure leaves 64 KiB.
    unsafe { libc::fcntl(pw.as_raw_fd(), libc::F_SETPIPE_SZ, CHUNK as libc::c_int) };
    // No SPLICE_F_MORE: it corks the destination socket until TCP's
    // 200 ms cork timer, and every request/response round trip waited for
    // it. What to hold back is the program's choice, already made on its
    // own (host) end of the bridge.
    let flags = libc::SPLICE_F_MOVE;
    let failed = 'outer: loop {
        // SAFETY: splice between descriptors we own; no user memory involved.
        let n = unsafe {
            libc::splice(
                src,
                std::ptr::null_mut(),
                pw.as_raw_fd(),
                std::ptr::null_mut(),
                CHUNK,
                flags,
            )
        };
        if n == 0 {
            break false;
        }
        if n < 0 {
            // EAGAIN: the receive timeout set in `relay` (no data yet).
            if matches!(
                io::Error::last_os_error().raw_os_error(),
                Some(libc::EINTR | libc::EAGAIN)
            ) {
                continue;
            }
            break true;
        }
        let mut left = n as usize;
        while left > 0 {
            // SAFETY: as above.
            let m = unsafe {
                libc::splice(
                    pr.as_raw_fd(),
                    std::ptr::null_mut(),
                    dst,
                    std::ptr::null_mut(),
                    left,
                    flags,
                )
            };
            if m <= 0 {
                // EAGAIN: the send timeout set in `relay` (no room yet).
                if m < 0
                    && matches!(
                        io::Error::last_os_error().raw_os_error(),
                        Some(libc::EINTR | libc::EAGAIN)
                    )
                {
                    continue;
                }
                break 'outer true;
            }
            left -= m as usize;
        }
    };
    if failed {
        // Abort both sides: linger 0 turns the final close into a reset,
        // and shutting down wakes the other direction's thread.
        for s in [from, to] {
            let lg = libc::linger {
                l_onoff: 1,
                l_linger: 0,
            };
            // SAFETY: the kernel reads one `linger` from `lg`.
            unsafe {
                libc::setsockopt(
                    s.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_LINGER,
                    &lg as *const _ as *const libc::c_void,
                    std::mem::size_of::<libc::linger>() as libc::socklen_t,
                );
            }
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    } else {
        let _ = to.shutdown(std::net::Shutdown::Write);
    }
}
