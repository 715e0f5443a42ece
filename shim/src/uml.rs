//! Socket semantics on the uml backend: the program's TCP sockets live in
//! a User Mode Linux instance.
//!
//! Every socket the program gets is a real host descriptor. Until it is
//! connected or listening it is a plain, unconnected host TCP socket (it
//! holds the descriptor number, O_NONBLOCK and the options the program
//! set). connect() asks the device's supervisor for a bridge: a host TCP
//! connection whose far end, inside the guest, is relayed to a guest
//! MPTCP socket already connected to the destination. The bridge is
//! dup3'd over the program's descriptor, so read/write/sendfile/poll/epoll
//! then work with no help from the shim. listen() gets a Unix socket on
//! which each connection the guest accepts arrives as a new bridge.
//!
//! The shim answers getsockname/getpeername from the guest socket's own
//! addresses (what the peer sees), and SO_ERROR/SO_TYPE/SO_PROTOCOL/
//! SO_DOMAIN as a TCP socket would. Destinations that name this host
//! (loopback and the unspecified address, IPv4-mapped or not) stay on
//! the host: the guest's loopback is not the host's.
//!
//! A duplicated descriptor (dup, dup2, dup3, F_DUPFD) is the same socket
//! under a second number: it answers as the original, and when connect
//! or listen replaces the file under the socket, every one of its
//! descriptors gets the new file. The socket goes with the last of them.
//!
//! What any emulated socket needs (the gate, the descriptor table, epoll
//! replay, the TCP identity options and SO_ERROR, the names, local
//! destinations) is [`crate::emulated`]'s; this
//! module holds what is uml's: the requests to the supervisor, the
//! bridges and listeners it hands back, and the watch on the instance.

use crate::emulated::connect::{connect_done, gate, refused_at, wait_blocking, Stage};
use crate::emulated::epoll::Epolls;
use crate::emulated::files::{self, apply_flags, nonblocking};
use crate::emulated::local::{bind_stays_on_host, connect_stays_on_host, hand_back};
use crate::emulated::names::{peer_name, sock_name, wildcard};
use crate::emulated::options::{so_error, tcp_identity};
use crate::emulated::table::{Emulated, Table};
use crate::fdtable::{self, BACKEND_OWNED, FIXED, MPTCP, TRACKED};
use crate::forklock::{self, ForkMutex};
use crate::libc_real as real;
use crate::log;
use crate::mem::{copy_in, put_int, read_addr, write_addr};
use crate::Errno;
use dropshim_backend_uml::client::{self, ClientError};
use dropshim_backend_uml::proto::{Kind, Opt, Reply, Request, REPLY_LEN};
use dropshim_backend_uml::sys;
use dropshim_conf::{Action, DeviceConfig};
use libc::{c_int, c_void, sockaddr, socklen_t};
use once_cell::sync::Lazy;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};

enum State {
    /// Not connected yet: the descriptor is the placeholder host socket.
    Fresh,
    /// A non-blocking connect is in progress: the descriptor is a gate
    /// (a Unix socket that never becomes writable) until a helper thread
    /// puts the bridge, or a fresh placeholder if the connect failed, in
    /// its place. `id` tells this attempt from a later one on the same fd.
    Connecting {
        id: u64,
    },
    Connected {
        local: Option<SocketAddr>,
        peer: Option<SocketAddr>,
    },
    Listening {
        local: Option<SocketAddr>,
    },
}

struct Sock {
    domain: c_int,
    bound: Option<SocketAddr>,
    opts: Vec<Opt>,
    state: State,
    device: String,
    /// SO_ERROR still to report (a failed non-blocking connect).
    so_error: c_int,
    /// A non-blocking connect failed and no connect() has answered for
    /// it yet ([`Stage::Failed`]).
    failed: bool,
    /// epoll registrations made while the descriptors are not final,
    /// made again on each new file.
    epolls: Epolls,
}

impl Sock {
    fn new(domain: c_int, device: String, state: State) -> Sock {
        Sock {
            domain,
            bound: None,
            opts: Vec::new(),
            state,
            device,
            so_error: 0,
            failed: false,
            epolls: Epolls::default(),
        }
    }

    /// Registers the socket's descriptors again in every epoll set the
    /// program put them in.
    fn reregister(&self) {
        self.epolls.replay(libc::EPOLL_CTL_ADD);
    }

    /// Where the socket stands for connect(); after a failed connect it
    /// is fresh (its placeholder is new) once connect() answered for it.
    fn stage(&self) -> Stage {
        match self.state {
            State::Fresh if self.failed => Stage::Failed,
            State::Fresh => Stage::Fresh,
            State::Connecting { .. } => Stage::Pending,
            State::Connected { .. } => Stage::Connected,
            State::Listening { .. } => Stage::Listening,
        }
    }
}

impl Emulated for Sock {
    fn epolls(&mut self) -> &mut Epolls {
        &mut self.epolls
    }
}

/// The uml sockets of this process, by descriptor (twins share one).
static SOCKS: Lazy<ForkMutex<Table<Sock>>> = Lazy::new(|| ForkMutex::new(Table::new()));

/// Holds the socket map's and the watch map's locks across fork, so a
/// child never starts with one another thread was holding. No code holds
/// both at once, so taking them in this order cannot deadlock.
fn before_fork() {
    SOCKS.hold();
    WATCHES.hold();
}

/// Registers the fork handlers once, at the process's first uml socket.
fn fork_safe() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        extern "C" fn prepare() {
            before_fork();
        }
        extern "C" fn after() {
            forklock::release_held();
        }
        // SAFETY: the handlers are plain functions that live as long as
        // the library, which is never unloaded while the program runs.
        unsafe { libc::pthread_atfork(Some(prepare), Some(after), Some(after)) };
    });
}

static POLICY: once_cell::sync::OnceCell<dropshim_conf::Policy> = once_cell::sync::OnceCell::new();

fn not_running(device: &str) -> c_int {
    static SAID: AtomicBool = AtomicBool::new(false);
    if !SAID.swap(true, Ordering::Relaxed) {
        let file =
            std::env::var(dropshim_conf::ENV_CONFIG).unwrap_or_else(|_| "DEVICE.toml".to_string());
        log::error!(
            "the uml instance of device {device:?} is not running (no answer on {}); start it with `dropshim up --config {file}`",
            dropshim_backend_uml::control_socket(device).display()
        );
    }
    Errno(libc::ENETDOWN).fail()
}

/// `socket()` for an AF_INET/AF_INET6 stream socket asking for TCP.
pub fn socket(config: &DeviceConfig, domain: c_int, ty: c_int) -> c_int {
    let device = &config.device.name;
    // Fail at the first socket call, not at connect, when nothing can work.
    match sys::connect_unix(&dropshim_backend_uml::control_socket(device)) {
        Ok(probe) => sys::close(probe),
        Err(_) => return not_running(device),
    }
    let _ = POLICY.set(config.policy.clone());
    fork_safe();
    let fd = real::socket(domain, ty, 0);
    if fd < 0 {
        return fd;
    }
    SOCKS
        .lock()
        .insert(fd, Sock::new(domain, device.clone(), State::Fresh));
    fdtable::set(fd, TRACKED | BACKEND_OWNED | MPTCP);
    fd
}

/// The socket leaves the backend and stays a plain host socket (its
/// placeholder), under every descriptor it has.
fn release(fd: c_int) {
    hand_back(&mut SOCKS.lock(), fd);
}

fn wants_mptcp(action: Action) -> bool {
    action == Action::Mptcp
}

/// Sends `req` and returns the reply with its descriptor, or fails the
/// call with an errno the program understands.
fn ask(device: &str, req: &Request) -> Result<(Reply, Option<c_int>), c_int> {
    match client::request(device, req) {
        Ok((reply, fd)) if reply.errno == 0 => match fd {
            Some(fd) => Ok((reply, Some(fd))),
            None => Err(Errno(libc::ECONNABORTED).fail()),
        },
        Ok((reply, fd)) => {
            if let Some(fd) = fd {
                sys::close(fd);
            }
            Err(Errno(reply.errno).fail())
        }
        Err(ClientError::NotRunning(_)) => Err(not_running(device)),
        Err(ClientError::Channel(e)) => {
            log::debug!("uml: the supervisor of {device:?} dropped a request: {e}");
            Err(Errno(libc::ECONNABORTED).fail())
        }
        Err(ClientError::Cancelled) => Err(Errno(libc::ECONNABORTED).fail()),
    }
}

/// Puts `new` in place of every descriptor in `fds` (the descriptors of
/// one of this backend's sockets, whose table lock the caller holds) and
/// closes it; a failure fails the call.
fn install(new: c_int, fds: &[c_int]) -> Result<(), c_int> {
    // SAFETY: `fds` are one socket's descriptors, its table locked (the
    // caller's word, above).
    unsafe { files::install(new, fds) }.map_err(Errno::fail)
}

/// Marks every descriptor in `fds` with the fd-table flags `flags`.
fn mark(fds: &[c_int], flags: u8) {
    for &fd in fds {
        fdtable::set(fd, flags);
    }
}

/// `connect()` on a uml socket: the guest connects, a bridge takes the
/// descriptor's place.
///
/// # Safety
///
/// `addr` and `len` are the program's arguments to connect(), unchanged (the
/// [`crate::contract::Backend`] contract).
pub unsafe fn connect(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int {
    let Some(dest) = read_addr(addr, len) else {
        return Errno(libc::EAFNOSUPPORT).fail();
    };
    {
        let mut socks = SOCKS.lock();
        let Some(s) = socks.get_mut(fd) else {
            // SAFETY: the program's arguments, unchanged (# Safety above).
            return unsafe { real::connect(fd, addr, len) };
        };
        let stage = s.stage();
        if let Some(e) = refused_at(stage, || std::mem::take(&mut s.so_error)) {
            s.failed = false;
            return e.fail();
        }
        s.so_error = 0;
        if connect_stays_on_host(dest.ip()) {
            drop(socks);
            release(fd);
            // SAFETY: the program's arguments, unchanged (# Safety above).
            return unsafe { real::connect(fd, addr, len) };
        }
        let mut req = Request::new(Kind::Connect);
        req.domain = s.domain;
        req.addr = Some(dest);
        req.bind = s.bound;
        req.opts = s.opts.clone();
        req.mptcp = POLICY.get().is_none_or(|p| wants_mptcp(p.decide(&dest)));
        if nonblocking(fd) {
            return start_connect(&mut socks, fd, req, None);
        }
        // Blocking: connect in the background as well, and wait as a
        // kernel socket's connect waits.
        let started = wait_blocking(
            move |done| {
                let r = start_connect(&mut socks, fd, req, Some(done));
                drop(socks);
                r
            },
            |_| {},
        );
        if let Err(r) = started {
            return r;
        }
        let mut socks = SOCKS.lock();
        match socks.get_mut(fd) {
            Some(s) if matches!(s.state, State::Connected { .. }) => 0,
            // The outcome is this call's to report: SO_ERROR says 0 after,
            // and the socket is fresh for another connect.
            Some(s) => {
                s.failed = false;
                match std::mem::take(&mut s.so_error) {
                    0 => Errno(libc::ECONNABORTED).fail(),
                    e => Errno(e).fail(),
                }
            }
            None => Errno(libc::ECONNABORTED).fail(),
        }
    }
}

static NEXT_CONNECT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// Non-blocking connect: puts a gate in place of the descriptor, hands
/// the request to a helper thread and says EINPROGRESS, like a kernel
/// socket. The descriptor becomes writable when the guest connect is
/// done; SO_ERROR then says how it went.
fn start_connect(socks: &mut Table<Sock>, fd: c_int, req: Request, done: Option<c_int>) -> c_int {
    let Some(key) = socks.key(fd) else {
        return Errno(libc::EBADF).fail();
    };
    let fds = socks.fds_of(key);
    let (prog, waker) = match gate() {
        Ok(p) => p,
        Err(e) => return Errno::from(e).fail(),
    };
    let flags = sys::fcntl(fd, libc::F_GETFL, 0).unwrap_or(0);
    if let Err(ret) = install(prog, &fds) {
        sys::close(waker);
        return ret;
    }
    // The gate is non-blocking (it was filled that way); a blocking
    // socket's descriptor stays blocking, and so does what replaces it.
    if flags & libc::O_NONBLOCK == 0 {
        let _ = sys::fcntl(fd, libc::F_SETFL, libc::c_long::from(flags));
    }
    let Some(s) = socks.by_key(key) else {
        sys::close(waker);
        return Errno(libc::EBADF).fail();
    };
    s.reregister();
    let id = NEXT_CONNECT.fetch_add(1, Ordering::Relaxed);
    s.state = State::Connecting { id };
    let device = s.device.clone();
    let domain = s.domain;
    let spawned = std::thread::Builder::new()
        .name("dropshim-connect".into())
        .spawn(move || finish_connect(key, id, domain, &device, &req, waker, done));
    if spawned.is_err() {
        // No thread to spare: answer like a kernel out of resources.
        s.state = State::Fresh;
        sys::close(waker);
        return Errno(libc::EAGAIN).fail();
    }
    Errno(libc::EINPROGRESS).fail()
}

/// The helper thread of a non-blocking connect.
fn finish_connect(
    key: u64,
    id: u64,
    domain: c_int,
    device: &str,
    req: &Request,
    waker: c_int,
    done: Option<c_int>,
) {
    // Cancelled when the program closes the gate (its socket) first.
    let res = client::request_cancellable(device, req, Some(waker));
    let mut socks = SOCKS.lock();
    let fds = socks.fds_of(key);
    let current = socks
        .by_key(key)
        .filter(|s| matches!(s.state, State::Connecting { id: i } if i == id));
    let Some(s) = current else {
        // The program closed the socket (all its descriptors) meanwhile:
        // nothing to deliver.
        if let Ok((_, Some(b))) = res {
            sys::close(b);
        }
        drop(socks);
        sys::close(waker);
        if let Some(d) = done {
            connect_done(d);
        }
        return;
    };
    let errno = match res {
        Ok((reply, Some(bridge))) if reply.errno == 0 => {
            dropshim_backend_uml::client::apply_to_bridge(bridge, &s.opts);
            match install(bridge, &fds) {
                Ok(()) => {
                    s.state = State::Connected {
                        local: reply.local,
                        peer: reply.peer,
                    };
                    s.reregister();
                    s.epolls.clear();
                    mark(&fds, TRACKED | BACKEND_OWNED | MPTCP | FIXED);
                    0
                }
                Err(_) => std::io::Error::last_os_error()
                    .raw_os_error()
                    .unwrap_or(libc::ECONNABORTED),
            }
        }
        Ok((reply, bridge)) => {
            if let Some(b) = bridge {
                sys::close(b);
            }
            if reply.errno == 0 {
                libc::ECONNABORTED
            } else {
                reply.errno
            }
        }
        Err(ClientError::NotRunning(_)) => libc::ENETDOWN,
        Err(ClientError::Channel(_)) | Err(ClientError::Cancelled) => libc::ECONNABORTED,
    };
    if errno != 0 {
        // A fresh placeholder: writable and hung up, like a kernel socket
        // whose connect failed; SO_ERROR reports why, once.
        let placeholder = real::socket(domain, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if placeholder >= 0 && install(placeholder, &fds).is_ok() {
            s.reregister();
        }
        s.state = State::Fresh;
        s.so_error = errno;
        s.failed = true;
    }
    let watch = errno == 0;
    drop(socks);
    // Closing the gate's other end wakes poll()/select() sleeping on the
    // gate; they look the descriptor up again and find the new file.
    sys::close(waker);
    if watch {
        ensure_watch(device);
    }
    if let Some(d) = done {
        connect_done(d);
    }
}

/// Records the program's epoll registrations of a descriptor that is not
/// final yet, then makes the call.
///
/// # Safety
///
/// `ev` is the program's argument to epoll_ctl(), unchanged (the
/// [`crate::contract::Backend`] contract).
pub unsafe fn epoll_ctl(epfd: c_int, op: c_int, fd: c_int, ev: *mut libc::epoll_event) -> c_int {
    let mut socks = SOCKS.lock();
    let rec = socks
        .get_mut(fd)
        .filter(|s| matches!(s.state, State::Fresh | State::Connecting { .. }))
        .map(|s| &mut s.epolls);
    // SAFETY: the program's argument, unchanged (# Safety above).
    unsafe { Epolls::ctl(rec, epfd, op, fd, ev) }
}

/// One watch per device and process: see [`client::watch`].
static WATCHES: Lazy<ForkMutex<HashMap<String, u32>>> =
    Lazy::new(|| ForkMutex::new(HashMap::new()));

/// Makes sure this process learns at once when the device's instance
/// dies, even with its supervisor: then every bridge of that device is
/// aborted in place, so blocked calls fail instead of waiting for the
/// bridges' keepalive.
fn ensure_watch(device: &str) {
    let pid = std::process::id();
    let mut w = WATCHES.lock();
    if w.get(device) == Some(&pid) {
        return;
    }
    let Ok(fd) = client::watch(device) else {
        return;
    };
    // Out of the way of the small numbers programs reuse.
    let fd = match sys::fcntl(fd, libc::F_DUPFD_CLOEXEC, 512) {
        Ok(high) => {
            sys::close(fd);
            high
        }
        Err(_) => fd,
    };
    let dev = device.to_string();
    let spawned = std::thread::Builder::new()
        .name("dropshim-watch".into())
        .spawn(move || watch_loop(&dev, fd));
    match spawned {
        Ok(_) => {
            w.insert(device.to_string(), pid);
        }
        Err(_) => sys::close(fd),
    }
}

fn watch_loop(device: &str, fd: c_int) {
    let mut fds = [libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    }];
    let gone = match sys::poll(&mut fds, -1) {
        // POLLNVAL: the program closed our descriptor; stop watching.
        Ok(_) => fds[0].revents & libc::POLLNVAL == 0 && !client::ping(device),
        Err(_) => false,
    };
    WATCHES.lock().remove(device);
    if fds[0].revents & libc::POLLNVAL == 0 {
        sys::close(fd);
    }
    if gone {
        let socks = SOCKS.lock();
        let mut n = 0;
        for (key, s) in socks.sockets() {
            if s.device != device || !matches!(s.state, State::Connected { .. }) {
                continue;
            }
            // The descriptors of one socket share its bridge: one will do.
            if let Some(&bfd) = socks.fds_of(key).first() {
                if sys::disconnect(bfd).is_ok() {
                    n += 1;
                }
            }
        }
        log::error!("the uml instance of device {device:?} is gone; {n} connection(s) aborted");
    }
}

/// `bind()` on a uml socket: recorded for the guest socket (loopback
/// stays on the host).
///
/// # Safety
///
/// `addr` and `len` are the program's arguments to bind(), unchanged (the
/// [`crate::contract::Backend`] contract).
pub unsafe fn bind(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int {
    let Some(local) = read_addr(addr, len) else {
        return Errno(libc::EAFNOSUPPORT).fail();
    };
    let mut socks = SOCKS.lock();
    let Some(s) = socks.get_mut(fd) else {
        // SAFETY: the program's arguments, unchanged (# Safety above).
        return unsafe { real::bind(fd, addr, len) };
    };
    if !matches!(s.state, State::Fresh) || s.bound.is_some() {
        return Errno(libc::EINVAL).fail();
    }
    if (s.domain == libc::AF_INET) != local.is_ipv4() {
        return Errno(libc::EAFNOSUPPORT).fail();
    }
    if bind_stays_on_host(local.ip()) {
        drop(socks);
        release(fd);
        // SAFETY: the program's arguments, unchanged (# Safety above).
        return unsafe { real::bind(fd, addr, len) };
    }
    s.bound = Some(local);
    0
}

pub fn listen(fd: c_int, backlog: c_int) -> c_int {
    let (req, device) = {
        let socks = SOCKS.lock();
        let Some(s) = socks.get(fd) else {
            return real::listen(fd, backlog);
        };
        match s.state {
            State::Fresh => {}
            State::Listening { .. } => return 0,
            State::Connected { .. } | State::Connecting { .. } => {
                return Errno(libc::EINVAL).fail()
            }
        }
        let mut req = Request::new(Kind::Listen);
        req.domain = s.domain;
        req.addr = s.bound;
        req.backlog = backlog;
        req.opts = s.opts.clone();
        let local = s.bound.unwrap_or_else(|| wildcard(s.domain));
        req.mptcp = POLICY
            .get()
            .is_none_or(|p| p.listeners && wants_mptcp(p.decide_bind(&local)));
        (req, s.device.clone())
    };
    let (reply, chan) = match ask(&device, &req) {
        Ok((r, Some(c))) => (r, c),
        Ok((_, None)) => return Errno(libc::ECONNABORTED).fail(),
        Err(ret) => return ret,
    };
    let mut socks = SOCKS.lock();
    let fds = socks.fds_with(fd);
    if let Err(ret) = install(chan, &fds) {
        return ret;
    }
    if let Some(s) = socks.get_mut(fd) {
        s.state = State::Listening { local: reply.local };
        s.reregister();
        s.epolls.clear();
    }
    mark(&fds, TRACKED | BACKEND_OWNED | MPTCP | FIXED);
    drop(socks);
    ensure_watch(&device);
    0
}

/// `accept4()` on a uml listener: the next bridge the guest accepted.
///
/// # Safety
///
/// `addr` and `len` are the program's arguments to accept4(), unchanged (the
/// [`crate::contract::Backend`] contract).
pub unsafe fn accept4(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t, flags: c_int) -> c_int {
    let (domain, device) = {
        let socks = SOCKS.lock();
        match socks.get(fd) {
            Some(s) if matches!(s.state, State::Listening { .. }) => (s.domain, s.device.clone()),
            Some(_) => return Errno(libc::EINVAL).fail(),
            // SAFETY: the program's arguments, unchanged (# Safety above).
            None => return unsafe { real::accept4(fd, addr, len, flags) },
        }
    };
    if flags & !(libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC) != 0 {
        return Errno(libc::EINVAL).fail();
    }
    let mut buf = [0u8; REPLY_LEN];
    // O_NONBLOCK on the listener's descriptor governs this receive, like
    // accept(); a signal interrupts it, like accept().
    let (n, conn) = match sys::recv_fd(fd, &mut buf, 0) {
        Ok(v) => v,
        Err(e) => return Errno::from(e).fail(),
    };
    let (Some(reply), Some(conn)) = (Reply::decode(&buf[..n]), conn) else {
        if let Some(c) = conn {
            sys::close(c);
        }
        // The supervisor is gone: this listener will never see another connection.
        log::error!("the uml instance of device {device:?} went away; listener fd {fd} is dead");
        return Errno(libc::EINVAL).fail();
    };
    apply_flags(conn, flags);
    SOCKS.lock().insert(
        conn,
        Sock::new(
            domain,
            device.clone(),
            State::Connected {
                local: reply.local,
                peer: reply.peer,
            },
        ),
    );
    fdtable::set(conn, TRACKED | BACKEND_OWNED | MPTCP | FIXED);
    ensure_watch(&device);
    if let Some(peer) = reply.peer {
        // A bad address buffer loses only the address: the connection is
        // handed over all the same.
        let _ = write_addr(peer, domain, addr, len);
    }
    conn
}

/// Options the bridge needs for its own liveness checks (keepalive), or
/// that would make it fail on its own (TCP_USER_TIMEOUT, which Linux also
/// applies to a shut window the guest end keeps shut while the real peer
/// does not read): the program may set them on the guest socket (before
/// connect) but not on the bridge.
fn bridge_owned(level: c_int, name: c_int) -> bool {
    (level == libc::SOL_SOCKET && name == libc::SO_KEEPALIVE)
        || (level == libc::IPPROTO_TCP
            && matches!(
                name,
                libc::TCP_KEEPIDLE
                    | libc::TCP_KEEPINTVL
                    | libc::TCP_KEEPCNT
                    | libc::TCP_USER_TIMEOUT
            ))
}

/// `setsockopt()` on a uml socket.
///
/// # Safety
///
/// `val` and `len` are the program's arguments to setsockopt(), unchanged (the
/// [`crate::contract::Backend`] contract).
pub unsafe fn setsockopt(
    fd: c_int,
    level: c_int,
    name: c_int,
    val: *const c_void,
    len: socklen_t,
) -> c_int {
    let mut socks = SOCKS.lock();
    let Some(s) = socks.get_mut(fd) else {
        // SAFETY: the program's arguments, unchanged (# Safety above).
        return unsafe { real::setsockopt(fd, level, name, val, len) };
    };
    match s.state {
        State::Fresh => {
            // The placeholder validates the option as the kernel would.
            // SAFETY: the program's arguments, unchanged (# Safety above).
            let ret = unsafe { real::setsockopt(fd, level, name, val, len) };
            let mut value = vec![0u8; (len as usize).min(1024)];
            if ret == 0 && len <= 1024 && copy_in(val as *const u8, &mut value) {
                match s
                    .opts
                    .iter_mut()
                    .find(|o| o.level == level && o.name == name)
                {
                    Some(o) => o.value = value,
                    None => s.opts.push(Opt { level, name, value }),
                }
            }
            ret
        }
        // Nothing to apply to, but a bad pointer is still the kernel's
        // EFAULT.
        State::Listening { .. } => {
            let mut probe = vec![0u8; (len as usize).min(1024)];
            if len > 0 && !copy_in(val as *const u8, &mut probe) {
                return Errno(libc::EFAULT).fail();
            }
            0
        }
        // The gate cannot take TCP options; the guest socket already has
        // the ones set before connect, and buffer sizes reach the bridge.
        State::Connecting { .. } => {
            let mut value = vec![0u8; (len as usize).min(1024)];
            if len > 0 && !copy_in(val as *const u8, &mut value) {
                return Errno(libc::EFAULT).fail();
            }
            if len <= 1024 {
                s.opts.retain(|o| !(o.level == level && o.name == name));
                s.opts.push(Opt { level, name, value });
            }
            0
        }
        State::Connected { .. } => {
            if bridge_owned(level, name) || level == libc::IPPROTO_IP || level == libc::IPPROTO_IPV6
            {
                return 0;
            }
            // SAFETY: the program's arguments, unchanged (# Safety above).
            unsafe { real::setsockopt(fd, level, name, val, len) }
        }
    }
}

/// `getsockopt()` on a uml socket: answers as a TCP socket would.
///
/// # Safety
///
/// `val` and `len` are the program's arguments to getsockopt(), unchanged (the
/// [`crate::contract::Backend`] contract).
pub unsafe fn getsockopt(
    fd: c_int,
    level: c_int,
    name: c_int,
    val: *mut c_void,
    len: *mut socklen_t,
) -> c_int {
    let (domain, listening, connecting) = {
        let mut socks = SOCKS.lock();
        match socks.get_mut(fd) {
            Some(s) => {
                // Until a bridge carries the connection, the error (of a
                // failed connect) is the shim's to report.
                if level == libc::SOL_SOCKET
                    && name == libc::SO_ERROR
                    && !matches!(s.state, State::Connected { .. })
                {
                    return so_error(val, len, || std::mem::take(&mut s.so_error));
                }
                (
                    s.domain,
                    matches!(s.state, State::Listening { .. }),
                    matches!(s.state, State::Connecting { .. }),
                )
            }
            // SAFETY: the program's arguments, unchanged (# Safety above).
            None => return unsafe { real::getsockopt(fd, level, name, val, len) },
        }
    };
    if let Some(v) = tcp_identity(level, name, domain, listening) {
        return put_int(val, len, v);
    }
    if connecting {
        // The gate is a Unix socket: TCP-level answers wait for the
        // connection.
        return match (level, name) {
            // SAFETY: the program's arguments, unchanged (# Safety above).
            (libc::SOL_SOCKET, _) => unsafe { real::getsockopt(fd, level, name, val, len) },
            _ => put_int(val, len, 0),
        };
    }
    if listening {
        // The descriptor is a Unix socket: answer TCP-level questions with
        // what a listener would say rather than ENOPROTOOPT.
        return match (level, name) {
            // SAFETY: the program's arguments, unchanged (# Safety above).
            (libc::SOL_SOCKET, _) => unsafe { real::getsockopt(fd, level, name, val, len) },
            _ => put_int(val, len, 0),
        };
    }
    // SAFETY: the program's arguments, unchanged (# Safety above).
    unsafe { real::getsockopt(fd, level, name, val, len) }
}

/// `getsockname()` on a uml socket: the guest socket's own address.
///
/// # Safety
///
/// `addr` and `len` are the program's arguments to getsockname(), unchanged (the
/// [`crate::contract::Backend`] contract).
pub unsafe fn getsockname(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int {
    let socks = SOCKS.lock();
    let Some(s) = socks.get(fd) else {
        // SAFETY: the program's arguments, unchanged (# Safety above).
        return unsafe { real::getsockname(fd, addr, len) };
    };
    let local = match s.state {
        State::Fresh | State::Connecting { .. } => s.bound,
        State::Connected { local, .. } | State::Listening { local } => local,
    };
    sock_name(local, s.domain, addr, len)
}

/// `getpeername()` on a uml socket: the guest socket's peer.
///
/// # Safety
///
/// `addr` and `len` are the program's arguments to getpeername(), unchanged (the
/// [`crate::contract::Backend`] contract).
pub unsafe fn getpeername(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int {
    let socks = SOCKS.lock();
    let Some(s) = socks.get(fd) else {
        // SAFETY: the program's arguments, unchanged (# Safety above).
        return unsafe { real::getpeername(fd, addr, len) };
    };
    let peer = match s.state {
        State::Connected { peer, .. } => peer,
        _ => None,
    };
    peer_name(peer, s.domain, addr, len)
}

pub fn shutdown(fd: c_int, how: c_int) -> c_int {
    let fresh = SOCKS
        .lock()
        .get(fd)
        .map(|s| matches!(s.state, State::Fresh | State::Connecting { .. }));
    match fresh {
        Some(true) => Errno(libc::ENOTCONN).fail(),
        _ => real::shutdown(fd, how),
    }
}

pub fn forget(fd: c_int) {
    SOCKS.lock().remove(fd);
}

/// `newfd` is a duplicate of `oldfd` (dup, dup2, dup3, F_DUPFD): the same
/// socket under a second number. It answers as the original, and a
/// connect or listen through either puts the new file under both.
/// Returns whether `newfd` is now this backend's.
pub fn dup(oldfd: c_int, newfd: c_int) -> bool {
    SOCKS.lock().dup(oldfd, newfd)
}
