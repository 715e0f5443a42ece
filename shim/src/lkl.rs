//! Socket semantics on the lkl backend: the program's TCP sockets live in
//! a Linux Kernel Library booted inside the program's own process.
//!
//! The kernel boots at the program's first TCP socket (the library is
//! dlopen'ed then, never on other backends) and takes the device file's
//! interfaces (raw packet sockets on the named host interfaces), their
//! addresses, default gateway, MPTCP limits and endpoints. It announces
//! the addresses at once (gratuitous ARP, unsolicited neighbour
//! advertisement): its MAC addresses are new in every process, and a peer
//! still holding the previous process's would send a server here SYNs
//! nobody receives.
//!
//! Every socket the program gets is a real host descriptor: one end of an
//! AF_UNIX stream socketpair carrying the program's NONBLOCK/CLOEXEC
//! flags. Behind it sits a non-blocking MPTCP socket in the library
//! kernel. Once it is connected, the relays move the bytes between the
//! other end of the pair and the library socket, so
//! read/write/sendfile/poll/epoll work with no help from the shim. The
//! relays are two event loops shared by every connection (`relay.rs`): a
//! host one (mio) over the pairs, and one in the library kernel's own
//! epoll over the library sockets, which also accepts for every listener
//! and finishes every connect; a process on lkl has these two threads
//! whatever its number of connections. A listening socket's descriptor
//! is replaced (dup3) by one end of another socketpair that receives one
//! byte per connection the library kernel accepted, so it becomes
//! readable exactly when accept() has something to return.
//!
//! Non-blocking connect returns EINPROGRESS and connects in the library
//! loop; meanwhile the descriptor is a gate (a socketpair end whose peer
//! is full, so neither readable nor writable), SO_ERROR is 0 and
//! getpeername says ENOTCONN, as on TCP. When the connect ends, the data
//! end is put back under the descriptor (dup3), epoll registrations the
//! program made are made again on it, and the gate opens so a poll or
//! select already sleeping on it wakes; SO_ERROR then tells the outcome.
//! A blocking connect does the same and waits for the outcome in a host
//! read(), so signals act on it as on a kernel socket's connect (EINTR
//! without SA_RESTART, the connect going on behind; restarted with it).
//!
//! Exit: the library kernel dies with the process, so an atexit handler
//! ends every connection's writing and waits until the relays and the
//! kernel's send queues are empty: bytes written just before exit() and
//! the FIN still reach the peer. It gives up once nothing has moved for
//! 5 s (a peer that stopped reading, a dead path), or after 30 s in all
//! however slowly the bytes move. `_exit()` skips it.
//! A connection the program closed before exiting is covered too: its
//! library socket stays open (shut down both ways, the FIN sent) while
//! anything is unacknowledged, at most 30 s, and the exit handler waits
//! for such lingering closes to end. A reset connection is not waited
//! for: nothing it holds can reach the peer.
//!
//! fork: the library kernel's threads stay in the parent. A child's
//! inherited sockets keep working for reading and writing (they are plain
//! socketpair ends, relayed by the parent while it lives), but calls that
//! need the kernel (new TCP sockets, connect, setsockopt, ...) fail with
//! EPROTONOSUPPORT/EOPNOTSUPP and one error line. exec: the old image's
//! kernel is gone, so an inherited socket reads end of stream and writes
//! fail with EPIPE; the new program boots its own kernel at its first TCP
//! socket.
//!
//! A dup()'d descriptor is the same socket under a second number: it
//! shares the original's library socket, connection or listener, so it
//! answers getsockname, getpeername and getsockopt as the original; the
//! socket closes with the last of its descriptors.
//!
//! A reset (or any failure of the connection) reaches the program as
//! ECONNRESET after the bytes that came before it: the relay closes its
//! end of the pair with a byte left unread in it, which Linux reports to
//! the other end as ECONNRESET.
//!
//! What names this host stays on it ([`crate::emulated::local`]): binding
//! to loopback, or connecting to loopback or the unspecified address,
//! swaps in a plain host TCP socket under the same descriptor (options set
//! so far are applied to it) and drops the library socket.
//!
//! What any emulated socket needs (the gate, the descriptor table, epoll
//! replay, the TCP identity options and SO_ERROR, the names, local
//! destinations) is [`crate::emulated`]'s; this
//! module holds what is lkl's: the library kernel's boot in the process,
//! its sockets, the relays and the flush at exit.

mod relay;

use crate::emulated::connect::{connect_done, gate, refused_at, wait_blocking, Stage};
use crate::emulated::epoll::Epolls;
use crate::emulated::files::{apply_flags, close_fd, install, nonblocking, pair, put_file};
use crate::emulated::local::{bind_stays_on_host, connect_stays_on_host, hand_back};
use crate::emulated::names::{peer_name, sock_name};
use crate::emulated::options::{so_error, tcp_identity};
use crate::emulated::table::{Emulated, Table};
use crate::fdtable::{self, BACKEND_OWNED, FIXED, MPTCP, TRACKED};
use crate::forklock::{self, ForkMutex};
use crate::libc_real as real;
use crate::log;
use crate::mem::{copy_in, put_int, put_sockopt, read_addr, read_optlen, write_addr};
use crate::Errno;
use dropshim_abi::IPPROTO_MPTCP;
use dropshim_backend_lkl::{BootOptions, Error as LklError, Fd, Lkl};
use dropshim_conf::DeviceConfig;
use libc::{c_int, c_void, sockaddr, socklen_t};
use once_cell::sync::{Lazy, OnceCell};
use parking_lot::Mutex;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Kernel {
    lkl: Lkl,
    pid: libc::pid_t,
    /// dropshim's path manager for this kernel, when the device file
    /// chooses `path_manager = "userspace"`: its policy and the library
    /// kernel's local addresses. It runs on its own thread, started once
    /// the kernel is in place ([`start_path_manager`]).
    pm: Option<(dropshim_pm::Settings, Vec<dropshim_pm::LocalAddr>)>,
}

static KERNEL: OnceCell<Result<Kernel, String>> = OnceCell::new();

fn errno_of(e: &LklError) -> c_int {
    match e {
        LklError::Sys { errno, .. } => *errno,
        _ => libc::EIO,
    }
}

/// The booted kernel, if this process booted it (a forked child did not:
/// its copy has no kernel threads and would hang).
fn live() -> Option<&'static Lkl> {
    match KERNEL.get() {
        Some(Ok(k)) => {
            // SAFETY: getpid has no preconditions.
            if k.pid == unsafe { libc::getpid() } {
                Some(&k.lkl)
            } else {
                static SAID: AtomicBool = AtomicBool::new(false);
                if !SAID.swap(true, Ordering::Relaxed) {
                    log::error!("lkl: this process is a fork of the one that booted the library kernel, whose threads stayed in the parent; inherited sockets still read and write, but new TCP sockets and socket calls fail here (exec a program to give it its own kernel)");
                }
                None
            }
        }
        _ => None,
    }
}

fn kernel(config: &DeviceConfig) -> Result<&'static Lkl, Errno> {
    let k = KERNEL.get_or_init(|| boot(config).map_err(|e| format!("lkl: {e}")));
    match k {
        Ok(k) => {
            let lkl = live().ok_or(Errno(libc::EPROTONOSUPPORT))?;
            static PM: std::sync::Once = std::sync::Once::new();
            PM.call_once(|| start_path_manager(lkl, k));
            Ok(lkl)
        }
        Err(e) => {
            static SAID: AtomicBool = AtomicBool::new(false);
            if !SAID.swap(true, Ordering::Relaxed) {
                log::error!("{e}; TCP sockets fail with EPROTONOSUPPORT");
            }
            Err(Errno(libc::EPROTONOSUPPORT))
        }
    }
}

fn boot(config: &DeviceConfig) -> Result<Kernel, String> {
    let mut opts = BootOptions {
        build_if_missing: false,
        ..BootOptions::default()
    };
    if let Some(s) = &config.lkl {
        opts.mem_bytes = u64::from(s.memory_mib) << 20;
        for o in &s.boot_options {
            opts.cmdline.push(' ');
            opts.cmdline.push_str(o);
        }
    }
    let lkl = Lkl::boot(&opts).map_err(|e| e.to_string())?;
    // The library kernel's MAC addresses are new in every process, but a
    // peer keeps the address it learned from the last process on these
    // links: its first SYNs to a server here would go to a MAC nobody
    // has any more (dropped, the connection falling back to TCP after a
    // retransmission, or failing). Announce the addresses (gratuitous
    // ARP, unsolicited neighbour advertisement) as they come up.
    for (name, v) in [
        ("net.ipv4.conf.all.arp_notify", "1"),
        ("net.ipv6.conf.all.ndisc_notify", "1"),
    ] {
        if let Err(e) = lkl.set_sysctl(name, v) {
            log::warning!(
                "lkl: {name}: {e}; peers may not learn this process's MAC addresses at once"
            );
        }
    }
    let mut devices = Vec::with_capacity(config.interfaces.len());
    for iface in &config.interfaces {
        devices.push(
            lkl.add_device(&iface.name)
                .map_err(|e| format!("interface {}: {e}", iface.name))?,
        );
    }
    // Links, addresses, default routes, endpoints, limits, path manager
    // and scheduler: the same configurator as the host and the uml guest.
    lkl.configure(config, &devices).map_err(|e| e.to_string())?;
    for (iface, itf) in config.interfaces.iter().zip(&devices) {
        if let Err(e) = lkl.announce_addresses(itf.ifindex) {
            log::warning!(
                "lkl: cannot announce the addresses of {}: {e}; a peer may reach this process only after its neighbour entry expires",
                iface.name
            );
        }
    }
    log::info!(
        "lkl: library kernel booted in {:?} with {} interface(s)",
        lkl.boot_time(),
        config.interfaces.len()
    );
    extern "C" fn prepare() {
        before_fork();
    }
    extern "C" fn after() {
        after_fork();
    }
    // SAFETY: the handlers are plain functions that live as long as the
    // library, which is never unloaded while the program runs; getpid
    // has no preconditions.
    let pid = unsafe {
        libc::pthread_atfork(Some(prepare), Some(after), Some(after));
        libc::atexit(flush_at_exit);
        libc::getpid()
    };
    let pm = path_manager(config, &devices);
    Ok(Kernel { lkl, pid, pm })
}

/// The path manager's settings and local addresses, when the device file
/// chooses dropshim's userspace path manager; `devices[i]` is the library
/// kernel's interface for the file's i-th one.
fn path_manager(
    config: &DeviceConfig,
    devices: &[dropshim_backend_lkl::Interface],
) -> Option<(dropshim_pm::Settings, Vec<dropshim_pm::LocalAddr>)> {
    if config.mptcp.path_manager != Some(dropshim_conf::PathManager::Userspace) {
        return None;
    }
    let settings = dropshim_pm::Settings::from_config(config)?;
    let (locals, _) = dropshim_pm::locals_from(config, |name| {
        let i = config.interfaces.iter().position(|f| f.name == name)?;
        devices.get(i).map(|d| d.ifindex as u32)
    });
    Some((settings, locals))
}

/// Starts dropshim's path manager on its own thread, driving the library
/// kernel's MPTCP for the life of the process (a no-op without one).
fn start_path_manager(lkl: &'static Lkl, k: &'static Kernel) {
    let Some((settings, locals)) = k.pm.clone() else {
        return;
    };
    let policy = settings.policy.as_str();
    // Joined here, before the first connection: its events are not missed.
    let stack = match dropshim_backend_lkl::LklStack::open(lkl) {
        Ok(s) => s,
        Err(e) => {
            log::error!("lkl: the path manager cannot start: {e}; connections get no subflows beyond the first");
            return;
        }
    };
    let spawned = std::thread::Builder::new()
        .name("dropshim-pm".into())
        .spawn(move || {
            static STOP: AtomicBool = AtomicBool::new(false);
            let note = |line: &str| log::warning!("lkl path manager: {line}");
            if let Err(e) = stack.run_path_manager(settings, locals, &STOP, note) {
                log::error!("lkl: {e}; connections keep their subflows but get no new ones");
            }
        });
    match spawned {
        Ok(_) => log::info!("lkl: path manager started (policy {policy})"),
        Err(e) => log::error!(
            "lkl: cannot start the path manager thread ({e}); connections get no subflows beyond the first"
        ),
    }
}

// ------------------------------------------------------------ bookkeeping

/// A library-kernel socket that carries (or will carry) a connection.
struct Conn {
    lkl: Fd,
    /// errno of the connect once known (0 = connected).
    result: Mutex<Option<c_int>>,
    /// SO_ERROR reported once already.
    reported: AtomicBool,
    /// The program closed its descriptor: once the bytes it wrote are
    /// sent, the library socket may be shut down both ways.
    closed: AtomicBool,
    /// No program→kernel relay is running (never started, or finished).
    up_done: AtomicBool,
    /// The connection was reset (or failed otherwise): nothing it holds
    /// can reach the peer any more, so nothing waits for it.
    dead: AtomicBool,
    /// The connect failed and the library socket went back to the
    /// program's fresh socket ([`renew`]): it is no longer this one's.
    handed_back: AtomicBool,
}

impl Conn {
    fn new(lkl: Fd, result: Option<c_int>) -> Arc<Conn> {
        Arc::new(Conn {
            lkl,
            result: Mutex::new(result),
            reported: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            up_done: AtomicBool::new(true),
            dead: AtomicBool::new(false),
            handed_back: AtomicBool::new(false),
        })
    }

    fn finish(&self, errno: c_int) {
        *self.result.lock() = Some(errno);
    }

    /// The connect's error still to report through SO_ERROR (0 while it
    /// is pending, once it succeeded, and once reported).
    fn take_error(&self) -> c_int {
        let e = self.result.lock().unwrap_or(0);
        if e == 0 || self.reported.swap(true, Ordering::AcqRel) {
            0
        } else {
            e
        }
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        if self.handed_back.load(Ordering::Acquire) {
            return;
        }
        if let Some(k) = live() {
            if self.dead.load(Ordering::Acquire) {
                let _ = k.close(self.lkl);
            } else {
                relay::linger(k, self.lkl);
            }
        }
    }
}

/// Closes in progress that wait for the peer's acknowledgement (and
/// relays about to drop their connection, which may start one).
static CLOSING: std::sync::Mutex<usize> = std::sync::Mutex::new(0);
static CLOSING_DONE: std::sync::Condvar = std::sync::Condvar::new();

/// Counts one in [`CLOSING`] while it lives.
struct Closing;

impl Closing {
    fn enter() -> Closing {
        *CLOSING.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        Closing
    }

    /// Waits until no close is in progress, or until `deadline`.
    fn wait_all(deadline: std::time::Instant) {
        let mut n = CLOSING.lock().unwrap_or_else(|p| p.into_inner());
        while *n > 0 {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return;
            }
            n = match CLOSING_DONE.wait_timeout(n, left) {
                Ok((n, _)) => n,
                Err(p) => p.into_inner().0,
            };
        }
    }
}

impl Drop for Closing {
    fn drop(&mut self) {
        let mut n = CLOSING.lock().unwrap_or_else(|p| p.into_inner());
        *n -= 1;
        if *n == 0 {
            CLOSING_DONE.notify_all();
        }
    }
}

struct Accepted {
    fd: c_int,
    peer: Option<SocketAddr>,
    conn: Arc<Conn>,
}

/// Connections accepted in the library kernel, waiting for the program.
#[derive(Default)]
struct Backlog {
    ready: VecDeque<Accepted>,
    /// Token bytes not yet written (the program is behind).
    owed: usize,
}

struct Listener {
    /// Identity in the library loop.
    id: u64,
    lkl: Fd,
    queue: Mutex<Backlog>,
    stop: AtomicBool,
    /// Accepting waits until the program has taken its queued connections.
    paused: AtomicBool,
    /// Write end of the token socketpair (one byte per queued
    /// connection), non-blocking.
    token: c_int,
}

impl Drop for Listener {
    fn drop(&mut self) {
        for a in self.queue.get_mut().ready.drain(..) {
            close_fd(a.fd);
        }
        close_fd(self.token);
        if let Some(k) = live() {
            let _ = k.close(self.lkl);
        }
    }
}

enum State {
    /// Not connected: `relay_end` is the other end of the program's pair.
    Fresh {
        lkl: Fd,
        relay_end: c_int,
    },
    Connected(Arc<Conn>),
    Listening(Arc<Listener>),
}

struct Sock {
    domain: c_int,
    state: State,
    /// Options set before connect/bind, replayed if the socket moves to
    /// the host stack (loopback).
    opts: Vec<(c_int, c_int, Vec<u8>)>,
    /// epoll registrations made while the file under the descriptor may
    /// still change (connect, listen, loopback), made again on the new one.
    epolls: Epolls,
}

impl Sock {
    fn lkl(&self) -> Fd {
        match &self.state {
            State::Fresh { lkl, .. } => *lkl,
            State::Connected(c) => c.lkl,
            State::Listening(l) => l.lkl,
        }
    }

    /// The connection whose connect failed, while no connect() has
    /// answered for it ([`Stage::Failed`]).
    fn failed_conn(&self) -> Option<&Conn> {
        match &self.state {
            State::Connected(c) if matches!(*c.result.lock(), Some(e) if e != 0) => Some(c),
            _ => None,
        }
    }

    /// Where the socket stands for connect().
    fn stage(&self) -> Stage {
        match &self.state {
            State::Fresh { .. } => Stage::Fresh,
            State::Connected(c) => match *c.result.lock() {
                None => Stage::Pending,
                Some(0) => Stage::Connected,
                Some(_) => Stage::Failed,
            },
            State::Listening(_) => Stage::Listening,
        }
    }
}

impl Emulated for Sock {
    fn epolls(&mut self) -> &mut Epolls {
        &mut self.epolls
    }
}

/// The library sockets of this process, by descriptor (twins share one).
static SOCKS: Lazy<ForkMutex<Table<Sock>>> = Lazy::new(|| ForkMutex::new(Table::new()));

/// Flags of a socket whose file may still change (fresh: connect or
/// listen replace it): epoll_ctl comes to [`epoll_ctl`] to be recorded.
const MOVABLE: u8 = TRACKED | MPTCP | BACKEND_OWNED;
/// Flags of a socket whose file is final.
const SETTLED: u8 = TRACKED | MPTCP | FIXED | BACKEND_OWNED;

fn register(fd: c_int, sock: Sock, flags: u8) {
    SOCKS.lock().insert(fd, sock);
    fdtable::set(fd, flags);
}

/// The file under the socket's descriptors `fds` is final: forget its
/// epoll registrations.
fn settle(fds: &[c_int], sock: &mut Sock) {
    sock.epolls.clear();
    for &fd in fds {
        fdtable::set(fd, SETTLED);
    }
}

// ------------------------------------------------------------ relay

/// Bytes waiting in `fd`'s receive queue.
fn queued(fd: c_int) -> c_int {
    let mut n: c_int = 0;
    // SAFETY: FIONREAD writes one int into `n`, a live local.
    let r = unsafe { libc::ioctl(fd, libc::FIONREAD, &mut n as *mut c_int) };
    if r < 0 {
        0
    } else {
        n
    }
}

/// The inode of the socket `fd` is.
fn inode(fd: c_int) -> Option<u64> {
    // SAFETY: struct stat is plain data; all-zero is valid.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat writes one struct stat into `st`, a live local.
    if unsafe { libc::fstat(fd, &mut st) } < 0 {
        return None;
    }
    Some(st.st_ino)
}

/// Makes sure a byte waits in the relays' end of the pair: if none does,
/// sends one from the program's end, through a descriptor of the
/// program's that still is this connection's end (looked up under the
/// socket map's lock, which close and dup2 take before the descriptor is
/// gone, and checked by inode). Returns whether a byte waits: not when
/// the program closed its descriptor, shut down its writing, or has not
/// accepted the connection yet.
fn unread_byte(conn: &Arc<Conn>, host: &relay::HostEnd) -> bool {
    if queued(host.fd) > 0 {
        return true;
    }
    let Some(prog) = host.prog else {
        return false;
    };
    let socks = SOCKS.lock();
    let mine = socks.descriptors().find_map(|(fd, s)| match &s.state {
        State::Connected(c) if Arc::ptr_eq(c, conn) && inode(fd) == Some(prog) => Some(fd),
        _ => None,
    });
    let Some(fd) = mine else {
        return false;
    };
    // SAFETY: one byte from a live buffer to the program's end of this
    // connection's pair, without blocking or a signal; the raw syscall
    // keeps it off the program's own hooks.
    let sent = unsafe {
        libc::syscall(
            libc::SYS_sendto,
            fd as libc::c_long,
            [0u8].as_ptr(),
            1 as libc::c_long,
            (libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) as libc::c_long,
            std::ptr::null::<sockaddr>(),
            0 as libc::c_long,
        )
    };
    sent == 1
}

/// Connections that were relayed, for the flush at exit.
static RELAYED: Lazy<Mutex<Vec<std::sync::Weak<Conn>>>> = Lazy::new(|| Mutex::new(Vec::new()));

/// The program's exit gives up waiting for its bytes to leave once
/// nothing has moved for this long...
const EXIT_STALL: Duration = Duration::from_secs(5);
/// ...or once it has waited this long in all (as long as a close
/// lingers).
const EXIT_CAP: Duration = Duration::from_secs(30);

/// The exit's wait: goes on while what is left keeps changing (bytes
/// relayed, sent, acknowledged), within [`EXIT_CAP`].
struct ExitWait {
    start: Instant,
    cap: Instant,
    stall_at: Instant,
    last: Option<u64>,
}

impl ExitWait {
    fn new() -> ExitWait {
        let now = Instant::now();
        ExitWait {
            start: now,
            cap: now + EXIT_CAP,
            stall_at: now + EXIT_STALL,
            last: None,
        }
    }

    /// Whether to wait on, given a fingerprint of what is left now.
    fn go_on(&mut self, left: u64) -> bool {
        let now = Instant::now();
        if self.last != Some(left) {
            self.last = Some(left);
            self.stall_at = now + EXIT_STALL;
        }
        now < self.stall_at.min(self.cap)
    }

    /// The latest moment further waits may last.
    fn deadline(&self) -> Instant {
        self.stall_at.min(self.cap)
    }
}

/// At exit the library kernel dies with the process: without this, bytes
/// still in a socketpair or unacknowledged in the kernel would be lost and
/// the peers would never see a FIN. Ends every open connection's writing
/// (the relays send what is queued, then FIN) and waits until the relays
/// are done, the kernel's send queues are empty and no lingering close (a
/// connection the program closed earlier) is left, for as long as the
/// bytes keep moving ([`ExitWait`]).
extern "C" fn flush_at_exit() {
    let Some(k) = live() else { return };
    let open: Vec<c_int> = SOCKS
        .lock()
        .descriptors()
        .filter(|(_, s)| matches!(s.state, State::Connected(_)))
        .map(|(fd, _)| fd)
        .collect();
    for fd in open {
        // SAFETY: shutdown on a descriptor the shim created; the program
        // is exiting and writes nothing more.
        unsafe {
            libc::syscall(
                libc::SYS_shutdown,
                fd as libc::c_long,
                libc::SHUT_WR as libc::c_long,
            )
        };
    }
    let conns: Vec<Arc<Conn>> = RELAYED.lock().iter().filter_map(|w| w.upgrade()).collect();
    let mut wait = ExitWait::new();
    loop {
        // What is left: per connection still sending, its unacknowledged
        // bytes and whether its relay still runs; then the lingering
        // closes (which the library loop may be ending meanwhile).
        let mut left: Option<u64> = None;
        for c in &conns {
            if c.dead.load(Ordering::Acquire) {
                continue;
            }
            let relaying = !c.up_done.load(Ordering::Acquire);
            let unacked = k.unacked(c.lkl).map_or(0, |n| n as u64);
            if relaying || unacked > 0 {
                let mark = unacked.wrapping_mul(2) | u64::from(relaying);
                left = Some(left.unwrap_or(0).wrapping_mul(31).wrapping_add(mark));
            }
        }
        if let Some(lingering) = relay::lingering_left(k) {
            left = Some(left.unwrap_or(0).wrapping_mul(31).wrapping_add(lingering));
        }
        let Some(left) = left else { break };
        if !wait.go_on(left) {
            log::warning!(
                "lkl: exit gave up waiting for unacknowledged bytes after {:?}",
                wait.start.elapsed()
            );
            break;
        }
        // A bounded wait for the network, at exit only.
        std::thread::sleep(Duration::from_millis(1));
    }
    drop(conns);
    Closing::wait_all(wait.deadline());
    log::debug!("lkl: exit flush done in {:?}", wait.start.elapsed());
}

// ------------------------------------------------------------ the calls

pub fn socket(config: &DeviceConfig, domain: c_int, ty: c_int) -> c_int {
    let k = match kernel(config) {
        Ok(k) => k,
        Err(e) => return e.fail(),
    };
    // Non-blocking: only the event loops wait on it (and connect, which
    // they finish).
    let ty_lkl = libc::SOCK_STREAM | libc::SOCK_NONBLOCK;
    let lfd = match k.socket(domain, ty_lkl, IPPROTO_MPTCP) {
        Ok(f) => f,
        Err(e) => {
            log::warning!("lkl: MPTCP socket refused ({e}); using TCP");
            match k.socket(domain, ty_lkl, libc::IPPROTO_TCP) {
                Ok(f) => f,
                Err(e) => return Errno(errno_of(&e)).fail(),
            }
        }
    };
    let sv = match pair() {
        Ok(sv) => sv,
        Err(e) => {
            let _ = k.close(lfd);
            return e.fail();
        }
    };
    apply_flags(sv[0], ty);
    register(
        sv[0],
        Sock {
            domain,
            state: State::Fresh {
                lkl: lfd,
                relay_end: sv[1],
            },
            opts: Vec::new(),
            epolls: Epolls::default(),
        },
        MOVABLE,
    );
    sv[0]
}

/// Puts a plain host TCP socket under `fd` (same descriptor number,
/// O_NONBLOCK, FD_CLOEXEC and recorded options) and drops the library
/// socket: for loopback, which must stay the host's. Only before the
/// socket is connected, listening or bound in the library kernel.
fn move_to_host(fd: c_int) -> Result<(), Errno> {
    let mut socks = SOCKS.lock();
    let Some(sock) = socks.get(fd) else {
        return Err(Errno(libc::EBADF));
    };
    let State::Fresh { lkl, relay_end } = sock.state else {
        return Err(Errno(libc::EISCONN));
    };
    let host = real::socket(
        sock.domain,
        libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
        libc::IPPROTO_TCP,
    );
    if host < 0 {
        return Err(Errno::from(std::io::Error::last_os_error()));
    }
    for (level, name, value) in &sock.opts {
        // SAFETY: `value` is a live buffer of `value.len()` bytes.
        unsafe {
            real::setsockopt(
                host,
                *level,
                *name,
                value.as_ptr() as *const c_void,
                value.len() as socklen_t,
            )
        };
    }
    // Duplicates of this socket are the same socket: they move too.
    let fds = socks.fds_with(fd);
    // SAFETY: `fds` are the descriptors of this backend's socket, whose
    // table lock is held: their file may be replaced, by our own `host`.
    unsafe { install(host, &fds) }?;
    if let Some(s) = socks.get(fd) {
        s.epolls.replay(libc::EPOLL_CTL_ADD);
    }
    hand_back(&mut socks, fd);
    drop(socks);
    close_fd(relay_end);
    if let Some(k) = live() {
        let _ = k.close(lkl);
    }
    Ok(())
}

fn lkl_fd(fd: c_int) -> Option<(Fd, c_int)> {
    SOCKS.lock().get(fd).map(|s| (s.lkl(), s.domain))
}

fn fail_lkl(e: &LklError) -> c_int {
    Errno(errno_of(e)).fail()
}

/// `bind()` on a library socket (loopback moves the socket to the host).
///
/// # Safety
///
/// `addr` and `len` are the program's arguments to bind(), unchanged (the
/// [`crate::contract::Backend`] contract).
pub unsafe fn bind(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int {
    let Some(k) = live() else {
        return Errno(libc::EOPNOTSUPP).fail();
    };
    let Some((lfd, _)) = lkl_fd(fd) else {
        return Errno(libc::EBADF).fail();
    };
    let Some(a) = read_addr(addr, len) else {
        return Errno(if addr.is_null() {
            libc::EFAULT
        } else {
            libc::EINVAL
        })
        .fail();
    };
    if bind_stays_on_host(a.ip()) {
        if let Err(e) = move_to_host(fd) {
            return e.fail();
        }
        // SAFETY: the program's arguments, unchanged (# Safety above).
        return unsafe { real::bind(fd, addr, len) };
    }
    match k.bind(lfd, a) {
        Ok(()) => 0,
        Err(e) => fail_lkl(&e),
    }
}

/// `connect()` on a library socket (loopback moves the socket to the
/// host).
///
/// # Safety
///
/// `addr` and `len` are the program's arguments to connect(), unchanged (the
/// [`crate::contract::Backend`] contract).
pub unsafe fn connect(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int {
    let Some(k) = live() else {
        return Errno(libc::EOPNOTSUPP).fail();
    };
    let Some(dest) = read_addr(addr, len) else {
        return Errno(if addr.is_null() {
            libc::EFAULT
        } else {
            libc::EAFNOSUPPORT
        })
        .fail();
    };
    {
        let mut socks = SOCKS.lock();
        if let Some(sock) = socks.get(fd) {
            let stage = sock.stage();
            if let Some(e) = refused_at(stage, || sock.failed_conn().map_or(0, |c| c.take_error()))
            {
                if stage == Stage::Failed {
                    renew(k, &mut socks, fd);
                }
                return e.fail();
            }
        }
    }
    if connect_stays_on_host(dest.ip()) {
        // The library kernel's loopback is not the host's: local services
        // stay on the host stack, as plain TCP.
        if let Err(e) = move_to_host(fd) {
            return e.fail();
        }
        // SAFETY: the program's arguments, unchanged (# Safety above).
        return unsafe { real::connect(fd, addr, len) };
    }
    let (conn, relay_end) = {
        let mut socks = SOCKS.lock();
        let Some(sock) = socks.get_mut(fd) else {
            return Errno(libc::EBADF).fail();
        };
        match &sock.state {
            State::Fresh { lkl, relay_end } => {
                let (lkl, end) = (*lkl, *relay_end);
                let conn = Conn::new(lkl, None);
                // Duplicates name the same socket (and the same data
                // file, which the connect puts back under `fd`).
                sock.state = State::Connected(conn.clone());
                (conn, end)
            }
            // Changed since the check above (another thread's connect).
            _ => {
                return refused_at(sock.stage(), || 0)
                    .unwrap_or(Errno(libc::EISCONN))
                    .fail()
            }
        }
    };
    if nonblocking(fd) {
        // SAFETY: `fd` is this backend's socket: its table entry was just
        // made Connected above.
        return unsafe { connect_in_background(k, fd, conn, relay_end, dest, None) };
    }
    // Blocking: connect in the background as well, and wait as a kernel
    // socket's connect waits.
    let started = wait_blocking(
        // SAFETY: `fd` is this backend's socket: its table entry was just
        // made Connected above.
        |done| unsafe { connect_in_background(k, fd, conn.clone(), relay_end, dest, Some(done)) },
        |e| {
            conn.finish(e.0);
            close_fd(relay_end);
        },
    );
    if let Err(r) = started {
        return r;
    }
    // The outcome is this call's to report: SO_ERROR says 0 afterwards,
    // and after a failure the socket is fresh for another connect.
    conn.reported.store(true, Ordering::Release);
    let outcome = *conn.result.lock();
    match outcome {
        Some(0) => 0,
        Some(e) => {
            renew(k, &mut SOCKS.lock(), fd);
            Errno(e).fail()
        }
        None => Errno(libc::EIO).fail(),
    }
}

/// After connect() answered for a failed attempt on `fd`, the socket is
/// fresh again, as a kernel socket is then: its library socket is
/// dissolved (a connect to AF_UNSPEC) for a new connect, and its
/// descriptors get a new data end in place of the one that says EOF.
/// Left as it was if any step fails: the next connect then answers
/// ECONNABORTED again.
fn renew(k: &Lkl, socks: &mut Table<Sock>, fd: c_int) {
    let Some(key) = socks.key(fd) else {
        return;
    };
    let fds = socks.fds_of(key);
    let Some(sock) = socks.by_key(key) else {
        return;
    };
    let State::Connected(conn) = &sock.state else {
        return;
    };
    if let Err(e) = k.disconnect(conn.lkl) {
        log::debug!("lkl: cannot make a failed socket fresh: {e}");
        return;
    }
    let Ok([data, relay_end]) = pair() else {
        return;
    };
    // SAFETY: `fds` are this socket's descriptors, its table locked.
    if unsafe { install(data, &fds) }.is_err() {
        close_fd(relay_end);
        return;
    }
    conn.handed_back.store(true, Ordering::Release);
    sock.state = State::Fresh {
        lkl: conn.lkl,
        relay_end,
    };
    // The registrations the program made (kept recorded since the failed
    // connect) are the socket's, not the old file's: made again on the
    // new one. Its file changes again at the next connect.
    sock.epolls.replay(libc::EPOLL_CTL_ADD);
    for &t in &fds {
        fdtable::set(t, MOVABLE);
    }
}

/// Non-blocking connect: the program's descriptor becomes a gate until
/// the library kernel's connect ends; then the data end (or, after a
/// failure, an end whose reads say EOF) is put back under it, its epoll
/// registrations are made again, and the gate is opened so that a poll
/// or select already waiting on it wakes up.
///
/// # Safety
///
/// `fd` is the descriptor of one of this backend's sockets, the one this
/// connect is for: its file is replaced by the gate, then by the data end.
unsafe fn connect_in_background(
    k: &'static Lkl,
    fd: c_int,
    conn: Arc<Conn>,
    relay_end: c_int,
    dest: SocketAddr,
    done: Option<c_int>,
) -> c_int {
    let fail = |e: Errno, data: c_int| {
        conn.finish(e.0);
        close_fd(relay_end);
        if data >= 0 {
            close_fd(data);
        }
        e.fail()
    };
    // The raw syscall skips the fcntl hook: this copy is the shim's own.
    // SAFETY: duplicates a descriptor, no memory passed.
    let data = unsafe {
        libc::syscall(
            libc::SYS_fcntl,
            fd as libc::c_long,
            libc::F_DUPFD_CLOEXEC as libc::c_long,
            0 as libc::c_long,
        )
    } as c_int;
    if data < 0 {
        return fail(Errno::from(std::io::Error::last_os_error()), -1);
    }
    let (prog, opener) = match gate() {
        Ok(g) => g,
        Err(e) => return fail(Errno::from(e), data),
    };
    // Under the lock, so that close() (which forgets the socket first)
    // cannot slip in between.
    {
        let socks = SOCKS.lock();
        let epolls = socks
            .get(fd)
            .map(|s| s.epolls.of_fd(fd))
            .unwrap_or_default();
        // The data file stays open (as `data`), so its registrations would
        // outlive the swap and report it writable too early: move them.
        epolls.replay(libc::EPOLL_CTL_DEL);
        // SAFETY: the caller vouches that `fd` is this backend's socket
        // (# Safety above); the gate is our own.
        if let Err(e) = unsafe { put_file(prog, fd) } {
            close_fd(prog);
            close_fd(opener);
            return fail(Errno::from(e), data);
        }
        epolls.replay(libc::EPOLL_CTL_ADD);
    }
    close_fd(prog);
    let pending = Arc::new(Connecting {
        conn: conn.clone(),
        data,
        relay_end,
        opener,
        done,
        dest,
    });
    match k.connect(conn.lkl, dest) {
        Err(e) if errno_of(&e) == libc::EINPROGRESS => {
            if let Err(e) = relay::watch_connect(pending.clone()) {
                log::error!(
                    "lkl: cannot wait for a connect: {}",
                    std::io::Error::from_raw_os_error(e.0)
                );
                connect_finished(&pending, e.0);
            }
        }
        Ok(()) => connect_finished(&pending, 0),
        Err(e) => {
            log::debug!("lkl: connect {dest}: {e}");
            connect_finished(&pending, errno_of(&e));
        }
    }
    Errno(libc::EINPROGRESS).fail()
}

/// A connect under way in the library kernel (non-blocking), and what
/// its end puts back in place.
struct Connecting {
    conn: Arc<Conn>,
    /// The data end of the program's pair (a copy of the descriptor).
    data: c_int,
    /// The relays' end of that pair.
    relay_end: c_int,
    /// The gate's other end: draining it opens the gate.
    opener: c_int,
    /// A blocking connect waits for one byte from this.
    done: Option<c_int>,
    dest: SocketAddr,
}

/// The connect of `c` ended with `errno` (0: connected): every descriptor
/// of the socket gets the data end back (its epoll registrations made
/// again), the relay starts (or the program's reads see EOF, writes
/// EPIPE), and the gate opens so that a poll or select already sleeping on
/// it wakes. Runs once per connect.
fn connect_finished(c: &Connecting, errno: c_int) {
    c.conn.finish(errno);
    {
        let mut socks = SOCKS.lock();
        // The socket's descriptors, including a duplicate the program made
        // of the gate meanwhile: each gets the data end back.
        let key = socks
            .sockets()
            .find(|(_, s)| matches!(&s.state, State::Connected(x) if Arc::ptr_eq(x, &c.conn)))
            .map(|(k, _)| k);
        if let Some(key) = key {
            let mine = socks.fds_of(key);
            for &t in &mine {
                // SAFETY: `t` is still one of this socket's descriptors (the
                // program forgets it under this lock before closing it).
                let _ = unsafe { put_file(c.data, t) };
            }
            if let Some(sock) = socks.by_key(key) {
                sock.epolls.replay(libc::EPOLL_CTL_ADD);
                // A failed socket's file changes again if the program
                // connects once more ([`renew`]): its registrations are
                // still recorded until then.
                if errno == 0 {
                    settle(&mine, sock);
                }
            }
        }
    }
    let prog = inode(c.data);
    close_fd(c.data);
    if errno == 0 {
        relay::start(c.conn.clone(), c.relay_end, prog);
    } else {
        close_fd(c.relay_end);
    }
    // SAFETY: reads into a live buffer from our own descriptor.
    unsafe {
        libc::fcntl(c.opener, libc::F_SETFL, libc::O_NONBLOCK);
        let mut junk = [0u8; 4096];
        while libc::read(c.opener, junk.as_mut_ptr() as *mut c_void, junk.len()) > 0 {}
    }
    close_fd(c.opener);
    if let Some(done) = c.done {
        connect_done(done);
    }
}

/// epoll_ctl on a socket whose connect is pending: done on the gate and
/// recorded, to be made again on the final file.
///
/// # Safety
///
/// `ev` is the program's argument to epoll_ctl(), unchanged (the
/// [`crate::contract::Backend`] contract).
pub unsafe fn epoll_ctl(epfd: c_int, op: c_int, fd: c_int, ev: *mut libc::epoll_event) -> c_int {
    let mut socks = SOCKS.lock();
    let rec = socks.get_mut(fd).map(|s| &mut s.epolls);
    // SAFETY: the program's argument, unchanged (# Safety above).
    unsafe { Epolls::ctl(rec, epfd, op, fd, ev) }
}

pub fn listen(fd: c_int, backlog: c_int) -> c_int {
    let Some(k) = live() else {
        return Errno(libc::EOPNOTSUPP).fail();
    };
    let mut socks = SOCKS.lock();
    let Some(sock) = socks.get(fd) else {
        return Errno(libc::EBADF).fail();
    };
    let (lfd, relay_end) = match &sock.state {
        State::Fresh { lkl, relay_end } => (*lkl, *relay_end),
        State::Listening(l) => {
            return match k.listen(l.lkl, backlog) {
                Ok(()) => 0,
                Err(e) => fail_lkl(&e),
            }
        }
        State::Connected(_) => return Errno(libc::EINVAL).fail(),
    };
    if let Err(e) = k.listen(lfd, backlog) {
        return fail_lkl(&e);
    }
    let tokens = match pair() {
        Ok(t) => t,
        Err(e) => return e.fail(),
    };
    // The program's descriptor becomes the token pair's read end, with
    // the same descriptor flags and O_NONBLOCK; so do its duplicates,
    // which are the same socket.
    let fds = socks.fds_with(fd);
    // SAFETY: `fds` are the descriptors of this socket, whose table lock
    // is held.
    if let Err(e) = unsafe { install(tokens[0], &fds) } {
        close_fd(tokens[1]);
        return e.fail();
    }
    close_fd(relay_end);
    // The loop never waits on the token end: a program behind on its
    // accepts pauses the accepting instead.
    // SAFETY: flag reads and writes on our own token end, no memory passed.
    unsafe {
        let tfl = libc::fcntl(tokens[1], libc::F_GETFL);
        libc::fcntl(tokens[1], libc::F_SETFL, tfl | libc::O_NONBLOCK);
    }
    let listener = Arc::new(Listener {
        id: relay::new_id(),
        lkl: lfd,
        queue: Mutex::new(Backlog::default()),
        stop: AtomicBool::new(false),
        paused: AtomicBool::new(false),
        token: tokens[1],
    });
    if let Some(sock) = socks.get_mut(fd) {
        sock.epolls.replay(libc::EPOLL_CTL_ADD);
        settle(&fds, sock);
        sock.state = State::Listening(listener.clone());
    }
    drop(socks);
    if let Err(e) = relay::watch_listener(listener) {
        log::error!(
            "lkl: cannot accept for a listening socket: {}",
            std::io::Error::from_raw_os_error(e.0)
        );
        return e.fail();
    }
    0
}

/// `accept4()` on a library listener: the next connection its loop
/// accepted.
///
/// # Safety
///
/// `addr` and `len` are the program's arguments to accept4(), unchanged (the
/// [`crate::contract::Backend`] contract).
pub unsafe fn accept4(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t, flags: c_int) -> c_int {
    let (listener, domain) = match SOCKS.lock().get(fd) {
        Some(Sock {
            state: State::Listening(l),
            domain,
            ..
        }) => (l.clone(), *domain),
        Some(_) => return Errno(libc::EINVAL).fail(),
        None => return Errno(libc::EBADF).fail(),
    };
    if flags & !(libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC) != 0 {
        return Errno(libc::EINVAL).fail();
    }
    // A forked child's copy of the queue is stale: taking a token here
    // would lose the parent's connection.
    if live().is_none() {
        return Errno(libc::EOPNOTSUPP).fail();
    }
    let mut b = [0u8; 1];
    // Waits (or says EAGAIN) by the program's own O_NONBLOCK.
    // SAFETY: a one-byte read into a live local buffer.
    let n = unsafe { libc::read(fd, b.as_mut_ptr() as *mut c_void, 1) };
    if n < 0 {
        return -1; // errno from read: EAGAIN, EINTR
    }
    if n == 0 {
        return Errno(libc::EINVAL).fail();
    }
    let Some(a) = listener.queue.lock().ready.pop_front() else {
        return Errno(libc::EAGAIN).fail();
    };
    // Accepting was paused while the program was behind: it has caught up.
    if listener.paused.load(Ordering::SeqCst)
        && relay::post_tokens(&listener)
        && listener.paused.swap(false, Ordering::SeqCst)
    {
        relay::poke(listener.id);
    }
    apply_flags(a.fd, flags);
    if let Some(p) = a.peer {
        write_addr(p, domain, addr, len);
    }
    let nfd = a.fd;
    register(
        nfd,
        Sock {
            domain,
            state: State::Connected(a.conn),
            opts: Vec::new(),
            epolls: Epolls::default(),
        },
        SETTLED,
    );
    nfd
}

fn names(fd: c_int, peer: bool) -> Result<(Option<SocketAddr>, c_int), Errno> {
    let k = live().ok_or(Errno(libc::EOPNOTSUPP))?;
    let (lfd, domain, conn) = {
        let socks = SOCKS.lock();
        let s = socks.get(fd).ok_or(Errno(libc::EBADF))?;
        let conn = match &s.state {
            State::Connected(c) => Some(c.clone()),
            _ => None,
        };
        (s.lkl(), s.domain, conn)
    };
    // As TCP: no peer until connected (or while a connect is pending).
    let connected = conn.as_ref().is_some_and(|c| *c.result.lock() == Some(0));
    if peer && !connected {
        return Err(Errno(libc::ENOTCONN));
    }
    let r = if peer {
        k.peer_addr(lfd)
    } else {
        k.local_addr(lfd)
    };
    r.map(|a| (a, domain)).map_err(|e| Errno(errno_of(&e)))
}

/// `getsockname()` on a library socket.
///
/// # Safety
///
/// `addr` and `len` are the program's arguments to getsockname(), unchanged (the
/// [`crate::contract::Backend`] contract).
pub unsafe fn getsockname(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int {
    name_call(fd, addr, len, false)
}

/// `getpeername()` on a library socket.
///
/// # Safety
///
/// `addr` and `len` are the program's arguments to getpeername(), unchanged (the
/// [`crate::contract::Backend`] contract).
pub unsafe fn getpeername(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int {
    name_call(fd, addr, len, true)
}

fn name_call(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t, peer: bool) -> c_int {
    match names(fd, peer) {
        Ok((a, domain)) if peer => peer_name(a, domain, addr, len),
        Ok((a, domain)) => sock_name(a, domain, addr, len),
        Err(e) => e.fail(),
    }
}

/// Options that belong to the program's own descriptor (timeouts of its
/// reads and writes), not to the library socket.
fn host_option(level: c_int, name: c_int) -> bool {
    level == libc::SOL_SOCKET && matches!(name, libc::SO_RCVTIMEO | libc::SO_SNDTIMEO)
}

/// `setsockopt()` on a library socket (read and write timeouts stay on
/// the program's descriptor).
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
    if host_option(level, name) {
        // SAFETY: the program's own arguments; the kernel checks the pointer.
        return unsafe {
            libc::syscall(
                libc::SYS_setsockopt,
                fd as libc::c_long,
                level as libc::c_long,
                name as libc::c_long,
                val,
                len as libc::c_long,
            )
        } as c_int;
    }
    let Some(k) = live() else {
        return Errno(libc::EOPNOTSUPP).fail();
    };
    let Some((lfd, _)) = lkl_fd(fd) else {
        return Errno(libc::EBADF).fail();
    };
    if len > 4096 {
        return Errno(libc::EINVAL).fail();
    }
    let mut value = vec![0u8; len as usize];
    if !copy_in(val as *const u8, &mut value) {
        return Errno(libc::EFAULT).fail();
    }
    // SAFETY: `value` is a live buffer of `len` bytes that the library
    // kernel only reads.
    let r = unsafe {
        k.syscall(
            dropshim_backend_lkl::nr::SETSOCKOPT,
            [
                i64::from(lfd.0),
                i64::from(level),
                i64::from(name),
                value.as_ptr() as i64,
                i64::from(len),
                0,
            ],
        )
    };
    if r == -i64::from(libc::EOPNOTSUPP) {
        // MPTCP in 6.12 refuses a few TCP options plain TCP takes; the
        // program asked for TCP and must not fail for it.
        log::debug!("lkl: option ({level}, {name}) not supported by MPTCP; ignored");
        return 0;
    }
    if r < 0 {
        return Errno(-r as c_int).fail();
    }
    if let Some(sock) = SOCKS.lock().get_mut(fd) {
        if matches!(sock.state, State::Fresh { .. }) {
            sock.opts.push((level, name, value));
        }
    }
    0
}

/// `getsockopt()` on a library socket: answers as a TCP socket would.
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
    if host_option(level, name) {
        // SAFETY: the program's own arguments; the kernel checks the pointers.
        return unsafe {
            libc::syscall(
                libc::SYS_getsockopt,
                fd as libc::c_long,
                level as libc::c_long,
                name as libc::c_long,
                val,
                len,
            )
        } as c_int;
    }
    let (lfd, domain, state) = {
        let socks = SOCKS.lock();
        let Some(s) = socks.get(fd) else {
            return Errno(libc::EBADF).fail();
        };
        let st = match &s.state {
            State::Fresh { .. } => (None, false),
            State::Connected(c) => (Some(c.clone()), false),
            State::Listening(_) => (None, true),
        };
        (s.lkl(), s.domain, st)
    };
    if let Some(v) = tcp_identity(level, name, domain, state.1) {
        return put_int(val, len, v);
    }
    if level == libc::SOL_SOCKET && name == libc::SO_ERROR {
        return so_error(val, len, || state.0.as_ref().map_or(0, |c| c.take_error()));
    }
    let Some(k) = live() else {
        return Errno(libc::EOPNOTSUPP).fail();
    };
    let want = match read_optlen(len) {
        Ok(n) => n,
        Err(e) => return e.fail(),
    };
    let mut buf = vec![0u8; want.min(4096)];
    match k.getsockopt(lfd, level, name, &mut buf) {
        Ok(n) => put_sockopt(val, len, &buf[..n.min(buf.len())]),
        Err(e) => fail_lkl(&e),
    }
}

pub fn shutdown(fd: c_int, how: c_int) -> c_int {
    let state = match SOCKS.lock().get(fd) {
        Some(s) => match &s.state {
            State::Fresh { .. } => None,
            State::Connected(c) => Some(Ok(c.clone())),
            State::Listening(l) => Some(Err(l.lkl)),
        },
        None => return Errno(libc::EBADF).fail(),
    };
    match state {
        None => Errno(libc::ENOTCONN).fail(),
        // The relays carry it over in order: bytes written before a
        // SHUT_WR still reach the peer before its FIN.
        Some(Ok(_)) => {
            // SAFETY: integers only, on this backend's connected socket.
            unsafe {
                libc::syscall(libc::SYS_shutdown, fd as libc::c_long, how as libc::c_long) as c_int
            }
        }
        Some(Err(lfd)) => match live() {
            Some(k) => match k.shutdown(lfd, how) {
                Ok(()) => 0,
                Err(e) => fail_lkl(&e),
            },
            None => Errno(libc::EOPNOTSUPP).fail(),
        },
    }
}

/// `newfd` is a duplicate of `oldfd` (dup, dup2, dup3, F_DUPFD): the
/// same socket under a second number, sharing its library socket,
/// connection or listener. What later happens to one (connect, listen,
/// loopback) happens to all; the socket closes with the last of them.
/// Returns whether `newfd` is now this backend's.
pub fn dup(oldfd: c_int, newfd: c_int) -> bool {
    SOCKS.lock().dup(oldfd, newfd)
}

/// The program is closing `fd` (or replacing it with dup2/dup3).
pub fn forget(fd: c_int) {
    let sock = {
        let mut socks = SOCKS.lock();
        // A duplicate still naming this socket keeps it open.
        let Some(sock) = socks.remove(fd) else {
            return;
        };
        sock
    };
    match sock.state {
        State::Fresh { lkl, relay_end } => {
            close_fd(relay_end);
            if let Some(k) = live() {
                let _ = k.close(lkl);
            }
        }
        // The relays finish sending what the program wrote, then shut
        // the library socket down; the last of them closes it.
        State::Connected(c) => c.closed.store(true, Ordering::Release),
        State::Listening(l) => {
            l.stop.store(true, Ordering::Release);
            if let Some(k) = live() {
                let _ = k.shutdown(l.lkl, libc::SHUT_RDWR);
                // The library loop lets go of it (and closes it).
                relay::poke(l.id);
            }
        }
    }
}

/// Holds the socket map's lock across fork, so the child never inherits
/// another thread's lock.
fn before_fork() {
    SOCKS.hold();
}

fn after_fork() {
    forklock::release_held();
}
