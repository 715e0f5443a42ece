//! The guest agent's event loop: it accepts bridge connections, runs
//! their requests (connect, listen, attach, reset, stats) and hands each
//! established connection to the guest kernel's relay, or moves the
//! program's bytes between each bridge and its guest socket itself when
//! the kernel has none, for every connection of the instance, on one
//! thread.
//!
//! UML runs one guest CPU and every switch between guest threads is a
//! trip through the host (ptrace, signals), so the loop waits on epoll
//! (mio) and touches only sockets that are ready; an idle connection
//! costs two descriptors and a few hundred bytes here. Only a device
//! reset and a stats request, which run `ip` or `ss` for tens of
//! milliseconds, get a short-lived thread of their own.
//!
//! Bytes move both ways with back-pressure (a direction reads its source
//! only once what it read before reached its destination), a source's
//! end of stream becomes a shutdown of the destination's sending side,
//! and an error on either side resets both, so the program sees the
//! peer's error.

use super::{
    cvt, errno_of, guest_stats, new_socket, open_listener, reset_device, set_int, sock_addr,
};
use crate::proto::{Kind, Notice, Reply, Request, MAX_REQUEST};
use dropshim_abi::encode_in_domain;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::TcpListener;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

/// The token of the private link's listener; connections use
/// `2 * slot` (bridge) and `2 * slot + 1` (guest socket).
const BRIDGE_LISTENER: Token = Token(usize::MAX);

/// How the relay moves bytes from a source to a destination socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mover {
    /// read(2) into a buffer and write(2) from it while messages are
    /// small; splice(2) through a pipe (no copy through the agent's
    /// memory) once a read fills the buffer, until a turn moves less
    /// than a buffer's worth again.
    ///
    /// Every guest system call is a round of ptrace between the UML
    /// kernel's host process and the agent's, so calls per message set
    /// the round trip. A read that returns less than asked says the
    /// queue is empty (unless a shutdown may be queued behind the data,
    /// see [`Ready::closed`]), and a small message costs a read and a
    /// write. A
    /// short splice says no such thing (the pipe may have run out of
    /// slots), so splicing costs a third call that says EAGAIN: worth
    /// it for bulk data only.
    SpliceWhenBulk,
    /// read(2) into a buffer and write(2) from it.
    Copy,
}

/// The movers of the two directions, program->peer (bridge to guest
/// socket) and peer->program (guest socket to bridge).
///
/// Linux 6.12's MPTCP has no `splice_read` of its own: splicing from an
/// MPTCP socket falls back to a generic path that allocates pages for
/// the whole request (up to the pipe's size) before it reads, even when
/// a 64-byte message is all there is. Reading into the agent's buffer
/// does not pay that (downloads ran 1.5 to 2 times faster reading, on
/// the unshaped testbed). Splicing from the bridge (TCP) into a pipe
/// hands over the received pages without a copy, which reading does not
/// (uploads ran faster and at less CPU per byte splicing), once they
/// are bulk.
const UP: Mover = Mover::SpliceWhenBulk;
const DOWN: Mover = Mover::Copy;

/// What one direction of one connection moves before the loop turns to
/// the other connections.
const TURN_BUDGET: usize = 1 << 20;
/// The pipe of a splicing direction, and the most one splice moves.
const PIPE_SIZE: usize = 1 << 20;
/// The copying directions' shared buffer.
const SCRATCH: usize = 256 << 10;

/// How often guest sockets that wait are tried again.
///
/// Linux 6.12's MPTCP can leave a reader asleep for good after a path
/// was cut: the segment that fills the hole stays in its subflow while
/// out-of-order data fills the receive buffer, and no wake-up (so no
/// epoll event) comes. Reading again pulls it in (the same cure as the
/// lkl backend's relay). Nor has 6.12's MPTCP a persist timer: a writer
/// waiting for room, with nothing in flight on any subflow (the peer's
/// window closed, or memory ran short), is never woken; writing again
/// pushes what is pending or probes the window.
const RETRY: Duration = Duration::from_millis(200);
/// A connection that moved no byte for this many retry periods (5 s)
/// has its guest socket read again only every `IDLE_EVERY` periods: the
/// stall above needs data arriving, and a thousand idle connections
/// would otherwise cost five thousand system calls a second on the
/// guest's one CPU.
const ACTIVE_TICKS: u64 = 25;
const IDLE_EVERY: u64 = 5;

/// The guest socket's receive buffer once connected (the kernel doubles
/// it): four times the largest window the connection can advertise.
const RCVBUF: libc::c_int = 4 << 20;

/// The open-descriptor limit the agent asks for: two descriptors per
/// connection, two more (its pipe) once it carried bytes to the peer.
const NOFILE: libc::rlim_t = 1 << 20;

/// Readiness of one descriptor as epoll last reported it (edge
/// triggered: true until an operation says EAGAIN).
#[derive(Clone, Copy, Default)]
struct Ready {
    read: bool,
    write: bool,
    /// An end of stream may sit in the queue behind the data with no
    /// event to come for it (epoll reported the peer's shutdown, or the
    /// relay is new and missed the events before it): a short read then
    /// does not say the queue is empty. Cleared when a read says EAGAIN,
    /// after which a shutdown comes with an event of its own.
    closed: bool,
}

/// One direction of a relayed connection.
#[derive(Default)]
struct Pump {
    /// Bytes read but not yet written (copy mover, or the reply that
    /// precedes the program's bytes), from `off` on.
    pending: Vec<u8>,
    off: usize,
    /// The splice mover's pipe (read end, write end), made at first use
    /// so an idle connection holds none, and what it holds.
    pipe: Option<(OwnedFd, OwnedFd)>,
    in_pipe: usize,
    /// Bytes moved so far.
    total: u64,
    /// A [`Mover::SpliceWhenBulk`] direction is splicing.
    bulk: bool,
    /// The source reached its end of stream.
    eof: bool,
    /// ... and the destination's sending side was shut down.
    done: bool,
}

enum Step {
    /// Waiting for readiness (or finished).
    Wait,
    /// Moved its budget; more may be ready.
    More,
}

fn would_block(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EAGAIN | libc::EINTR | libc::EINPROGRESS)
    )
}

fn sys_read(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: the kernel writes at most `buf.len()` bytes into `buf`.
    let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

fn sys_write(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: the kernel reads at most `buf.len()` bytes from `buf`.
    let n = unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Non-blocking splice(2) of at most `len` bytes.
///
/// No SPLICE_F_MORE: it corks the destination socket until TCP's 200 ms
/// cork timer, and every request/response round trip waited for it.
/// What to hold back is the program's choice, already made on its own
/// (host) end of the bridge.
fn sys_splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    // SAFETY: splice between descriptors we own; no user memory involved.
    let n = unsafe {
        libc::splice(
            from,
            std::ptr::null_mut(),
            to,
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

fn new_pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut p = [0 as libc::c_int; 2];
    // SAFETY: the kernel writes two descriptors into `p`.
    cvt(unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) })?;
    // SAFETY: both descriptors were just created and are owned here.
    let (r, w) = unsafe { (OwnedFd::from_raw_fd(p[0]), OwnedFd::from_raw_fd(p[1])) };
    // SAFETY: F_SETPIPE_SZ takes an integer; failure leaves 64 KiB.
    unsafe { libc::fcntl(w.as_raw_fd(), libc::F_SETPIPE_SZ, PIPE_SIZE as libc::c_int) };
    Ok((r, w))
}

impl Pump {
    /// Bytes read from the source that have not reached the destination.
    fn holds(&self) -> bool {
        self.off < self.pending.len() || self.in_pipe > 0
    }

    /// Moves what readiness allows from `src` to `dst`.
    fn run(
        &mut self,
        mover: Mover,
        (src, src_ready): (RawFd, &mut Ready),
        (dst, dst_write): (RawFd, &mut bool),
        scratch: &mut [u8],
    ) -> io::Result<Step> {
        let mut moved = 0usize;
        let step = self.run_counted(
            mover,
            (src, src_ready),
            (dst, dst_write),
            scratch,
            &mut moved,
        );
        self.total += moved as u64;
        step
    }

    fn run_counted(
        &mut self,
        mover: Mover,
        (src, src_ready): (RawFd, &mut Ready),
        (dst, dst_write): (RawFd, &mut bool),
        scratch: &mut [u8],
        moved: &mut usize,
    ) -> io::Result<Step> {
        loop {
            if self.done {
                return Ok(Step::Wait);
            }
            while self.off < self.pending.len() {
                if !*dst_write {
                    return Ok(Step::Wait);
                }
                let want = self.pending.len() - self.off;
                match sys_write(dst, &self.pending[self.off..]) {
                    Ok(0) => return Err(io::Error::from_raw_os_error(libc::EPIPE)),
                    Ok(n) => {
                        self.off += n;
                        *moved += n;
                        if n < want {
                            // A short write: the send buffer is full.
                            *dst_write = false;
                        }
                    }
                    Err(e) if would_block(&e) => {
                        *dst_write = false;
                        return Ok(Step::Wait);
                    }
                    Err(e) => return Err(e),
                }
            }
            if !self.pending.is_empty() {
                // Nothing kept for an idle connection.
                self.pending = Vec::new();
                self.off = 0;
            }
            while self.in_pipe > 0 {
                if !*dst_write {
                    return Ok(Step::Wait);
                }
                let Some((pr, _)) = &self.pipe else {
                    return Err(io::Error::from_raw_os_error(libc::EBADF));
                };
                match sys_splice(pr.as_raw_fd(), dst, self.in_pipe) {
                    Ok(0) => return Err(io::Error::from_raw_os_error(libc::EPIPE)),
                    Ok(n) => {
                        if n < self.in_pipe {
                            *dst_write = false;
                        }
                        self.in_pipe -= n;
                        *moved += n;
                    }
                    Err(e) if would_block(&e) => {
                        *dst_write = false;
                        return Ok(Step::Wait);
                    }
                    Err(e) => return Err(e),
                }
            }
            if self.eof {
                // SAFETY: shutdown(2) takes integers only. A peer that
                // is gone already (ENOTCONN) needs no FIN.
                unsafe { libc::shutdown(dst, libc::SHUT_WR) };
                self.done = true;
                return Ok(Step::Wait);
            }
            if *moved >= TURN_BUDGET {
                return Ok(Step::More);
            }
            if !src_ready.read {
                return Ok(Step::Wait);
            }
            let splicing = mover == Mover::SpliceWhenBulk && self.bulk;
            let got = if splicing {
                if self.pipe.is_none() {
                    self.pipe = Some(new_pipe()?);
                }
                let Some((_, pw)) = &self.pipe else {
                    return Err(io::Error::from_raw_os_error(libc::EBADF));
                };
                sys_splice(src, pw.as_raw_fd(), PIPE_SIZE)
            } else {
                sys_read(src, scratch)
            };
            match got {
                Ok(0) => self.eof = true,
                Ok(n) if splicing => self.in_pipe = n,
                Ok(n) => {
                    if mover == Mover::SpliceWhenBulk && n == scratch.len() {
                        self.bulk = true;
                    }
                    // A stream socket's read stops short only when
                    // nothing more is queued (or the end of stream is
                    // next): wait for the next arrival instead of asking
                    // again. (Not so for a splice, which also stops when
                    // the pipe runs out of slots.)
                    if n < scratch.len() && !src_ready.closed {
                        src_ready.read = false;
                    }
                    // Straight on to the destination; what it does not
                    // take now is kept.
                    let mut sent = 0;
                    if *dst_write {
                        match sys_write(dst, &scratch[..n]) {
                            Ok(m) => {
                                sent = m;
                                *dst_write = m == n;
                            }
                            Err(e) if would_block(&e) => *dst_write = false,
                            Err(e) => return Err(e),
                        }
                    }
                    *moved += sent;
                    if sent < n {
                        self.pending = scratch[sent..n].to_vec();
                        self.off = 0;
                    }
                }
                Err(e) if would_block(&e) => {
                    src_ready.read = false;
                    src_ready.closed = false;
                    if splicing && *moved < scratch.len() {
                        // The data came in smaller pieces than a read
                        // takes at once: back to reading.
                        self.bulk = false;
                    }
                    return Ok(Step::Wait);
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// A connection relayed between its bridge and its guest socket.
struct Relay {
    bridge: OwnedFd,
    sock: OwnedFd,
    b: Ready,
    s: Ready,
    /// bridge -> guest socket (the program's bytes to the peer).
    up: Pump,
    /// guest socket -> bridge (the peer's bytes to the program).
    down: Pump,
    /// The retry period in which a byte last moved (or the relay began).
    active: u64,
}

/// Says on the console why a relay ends in a reset (the caller resets
/// both sides), so that a program's ECONNRESET can be traced to its
/// cause: which direction, after how many bytes, which error.
fn reported(way: &str, moved: u64, e: io::Error) -> io::Error {
    eprintln!("dropshim-uml agent: relay {way} failed after {moved} bytes: {e}; both sides reset");
    e
}

impl Relay {
    /// Ok(true) when both directions ended (the connection is over).
    /// `tick` is the current retry period.
    fn run(&mut self, scratch: &mut [u8], tick: u64, again: &mut bool) -> io::Result<bool> {
        let (b, s) = (self.bridge.as_raw_fd(), self.sock.as_raw_fd());
        let before = self.up.total + self.down.total;
        let up = self
            .up
            .run(UP, (b, &mut self.b), (s, &mut self.s.write), scratch)
            .map_err(|e| reported("program to guest", self.up.total, e))?;
        let down = self
            .down
            .run(DOWN, (s, &mut self.s), (b, &mut self.b.write), scratch)
            .map_err(|e| reported("guest to program", self.down.total, e))?;
        *again = matches!(up, Step::More) || matches!(down, Step::More);
        if before != self.up.total + self.down.total {
            self.active = tick;
        }
        Ok(self.up.done && self.down.done)
    }

    /// Resets both sides: linger 0 turns each close into a reset.
    fn abort(self) {
        for fd in [self.bridge.as_raw_fd(), self.sock.as_raw_fd()] {
            let lg = libc::linger {
                l_onoff: 1,
                l_linger: 0,
            };
            // SAFETY: the kernel reads one `linger` from `lg`.
            unsafe {
                libc::setsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    libc::SO_LINGER,
                    (&lg as *const libc::linger).cast(),
                    std::mem::size_of::<libc::linger>() as libc::socklen_t,
                );
            }
        }
    }
}

enum Conn {
    /// Reading the request that opens every bridge connection.
    Request {
        bridge: OwnedFd,
        buf: Vec<u8>,
    },
    /// The guest socket's connect is in progress.
    Connecting {
        bridge: OwnedFd,
        sock: OwnedFd,
    },
    /// A guest listener; each connection it accepts is announced on the
    /// bridge (`out` holds notices not yet written).
    Listening {
        bridge: OwnedFd,
        sock: OwnedFd,
        serial: u64,
        out: Vec<u8>,
    },
    Relay(Box<Relay>),
}

struct Agent {
    poll: Poll,
    listener: TcpListener,
    slots: Vec<Option<Conn>>,
    free: Vec<usize>,
    /// Guest connections accepted by listeners, waiting for their
    /// bridge: id -> (the listener's serial, the socket).
    pending: HashMap<u64, (u64, OwnedFd)>,
    next_id: u64,
    /// Relays that stopped at their budget with more to move.
    again: VecDeque<usize>,
    scratch: Vec<u8>,
    /// Retry periods so far.
    ticks: u64,
    /// The guest kernel's relay (`/proc/dropshim_relay`), when it has
    /// one: established connections are handed to it.
    kernel_relay: Option<OwnedFd>,
}

/// The guest kernel's relay: an ioctl on it hands over a bridge and its
/// guest socket (backend-uml/kernel/patches/0006), which it then relays
/// in the kernel, closing both when the connection ends. Kernels without
/// it (an older one named by DROPSHIM_UML_KERNEL) lack the file.
pub(super) const KERNEL_RELAY: &str = "/proc/dropshim_relay";

/// `_IOW('D', 1, struct { s32 bridge; s32 sock; })`.
const KERNEL_RELAY_START: libc::c_ulong =
    (1 << 30) | (8 << 16) | ((b'D' as libc::c_ulong) << 8) | 1;

fn open_kernel_relay() -> Option<OwnedFd> {
    let path = std::ffi::CString::new(KERNEL_RELAY).ok()?;
    // SAFETY: `path` is a valid NUL-terminated string alive for the call.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    if fd < 0 {
        eprintln!(
            "dropshim-uml agent: this kernel has no {KERNEL_RELAY} ({}); relaying in the agent",
            io::Error::last_os_error()
        );
        return None;
    }
    eprintln!("dropshim-uml agent: relaying established connections in the guest kernel");
    // SAFETY: open(2) returned a fresh descriptor nobody else owns.
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn kernel_relay_start(relay: RawFd, bridge: RawFd, sock: RawFd) -> io::Result<()> {
    let fds: [i32; 2] = [bridge, sock];
    // SAFETY: the kernel reads the two descriptors from `fds`, which
    // lives for the call.
    cvt(unsafe { libc::ioctl(relay, KERNEL_RELAY_START, fds.as_ptr()) }).map(drop)
}

fn token(slot: usize, sock: bool) -> Token {
    Token(2 * slot + usize::from(sock))
}

fn register(poll: &Poll, fd: RawFd, t: Token) -> io::Result<()> {
    poll.registry().register(
        &mut SourceFd(&fd),
        t,
        Interest::READABLE | Interest::WRITABLE,
    )
}

/// Writes a reply on a bridge that has carried nothing else yet: its
/// send buffer is empty, so the reply goes out whole or the bridge is
/// broken.
fn answer(bridge: RawFd, reply: &Reply) -> io::Result<()> {
    let b = reply.encode();
    match sys_write(bridge, &b) {
        Ok(n) if n == b.len() => Ok(()),
        Ok(_) => Err(io::Error::from_raw_os_error(libc::EPIPE)),
        Err(e) => Err(e),
    }
}

/// Raises the open-descriptor limit (init starts with 1,024).
fn raise_nofile() {
    let want = libc::rlimit {
        rlim_cur: NOFILE,
        rlim_max: NOFILE,
    };
    // SAFETY: the kernel reads one rlimit from `want`.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &want) } == 0 {
        return;
    }
    let mut have = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: the kernel writes one rlimit into `have`, then reads it.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut have) == 0 {
            have.rlim_cur = have.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &have);
        }
    }
}

fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    super::set_nonblocking(fd, true)
}

/// Serves bridge connections until the loop itself fails.
pub(super) fn serve(listener: TcpListener) -> io::Result<()> {
    raise_nofile();
    // A burst of connects (a server's clients arriving together) opens
    // as many bridges at once: a deeper queue than std's 128.
    // SAFETY: listen(2) takes integers only; it resizes the queue.
    unsafe { libc::listen(listener.as_raw_fd(), 4096) };
    listener.set_nonblocking(true)?;
    let poll = Poll::new()?;
    poll.registry().register(
        &mut SourceFd(&listener.as_raw_fd()),
        BRIDGE_LISTENER,
        Interest::READABLE,
    )?;

    let mut agent = Agent {
        poll,
        listener,
        slots: Vec::new(),
        free: Vec::new(),
        pending: HashMap::new(),
        next_id: 1,
        again: VecDeque::new(),
        scratch: vec![0; SCRATCH],
        ticks: 0,
        kernel_relay: open_kernel_relay(),
    };
    agent.run()
}

impl Agent {
    fn run(&mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        // The clock is read once per turn of the loop, after the wait: in
        // the guest that is a system call like any other (UML's vDSO
        // makes one), and every call costs a round of ptrace.
        let mut now = Instant::now();
        let mut next_tick = now + RETRY;
        loop {
            let timeout = if self.again.is_empty() {
                next_tick.saturating_duration_since(now)
            } else {
                Duration::ZERO
            };
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            now = Instant::now();
            for ev in events.iter() {
                if ev.token() == BRIDGE_LISTENER {
                    self.accept_bridges();
                    continue;
                }
                let slot = ev.token().0 / 2;
                let is_sock = ev.token().0 % 2 == 1;
                let read = ev.is_readable() || ev.is_read_closed() || ev.is_error();
                let write = ev.is_writable() || ev.is_write_closed() || ev.is_error();
                self.on_event(slot, is_sock, read, write, ev.is_read_closed());
            }
            for _ in 0..self.again.len() {
                if let Some(slot) = self.again.pop_front() {
                    self.advance(slot);
                }
            }
            if now >= next_tick {
                self.tick();
                next_tick = now + RETRY;
            }
        }
    }

    fn insert(&mut self, conn: Conn) -> usize {
        match self.free.pop() {
            Some(i) => {
                self.slots[i] = Some(conn);
                i
            }
            None => {
                self.slots.push(Some(conn));
                self.slots.len() - 1
            }
        }
    }

    fn release(&mut self, slot: usize) {
        if let Some(s) = self.slots.get_mut(slot) {
            if s.take().is_some() {
                self.free.push(slot);
            }
        }
    }

    fn accept_bridges(&mut self) {
        loop {
            // SAFETY: no address is requested, so nothing is written.
            let fd = unsafe {
                libc::accept4(
                    self.listener.as_raw_fd(),
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                    libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                )
            };
            if fd < 0 {
                let e = io::Error::last_os_error();
                match e.raw_os_error() {
                    Some(libc::EINTR | libc::ECONNABORTED) => continue,
                    Some(libc::EAGAIN) => return,
                    _ => {
                        // EMFILE and the like: the queue keeps them
                        // until a descriptor is free.
                        eprintln!("dropshim-uml agent: accept on the private link: {e}");
                        return;
                    }
                }
            }
            // SAFETY: accept4 returned a fresh descriptor nobody else owns.
            let bridge = unsafe { OwnedFd::from_raw_fd(fd) };
            set_int(fd, libc::IPPROTO_TCP, libc::TCP_NODELAY, 1);
            let slot = self.insert(Conn::Request {
                bridge,
                buf: Vec::new(),
            });
            if register(&self.poll, fd, token(slot, false)).is_err() {
                self.release(slot);
                continue;
            }
            // The request may be there already.
            self.advance(slot);
        }
    }

    fn on_event(&mut self, slot: usize, is_sock: bool, read: bool, write: bool, closed: bool) {
        if let Some(Some(Conn::Relay(r))) = self.slots.get_mut(slot) {
            let ready = if is_sock { &mut r.s } else { &mut r.b };
            ready.read |= read;
            ready.write |= write;
            ready.closed |= closed;
        }
        self.advance(slot);
    }

    /// Lets the connection in `slot` go as far as readiness allows.
    fn advance(&mut self, slot: usize) {
        let Some(conn) = self.slots.get_mut(slot).and_then(Option::take) else {
            return;
        };
        match self.step(slot, conn) {
            Some(conn) => self.slots[slot] = Some(conn),
            None => self.free.push(slot),
        }
    }

    /// One step of a connection's life; None when it is over.
    fn step(&mut self, slot: usize, conn: Conn) -> Option<Conn> {
        match conn {
            Conn::Request { bridge, mut buf } => match read_request(bridge.as_raw_fd(), &mut buf) {
                Ok(Some(req)) => self.dispatch(slot, bridge, req),
                Ok(None) => Some(Conn::Request { bridge, buf }),
                Err(e) => {
                    if e.kind() != io::ErrorKind::UnexpectedEof {
                        eprintln!("dropshim-uml agent: bridge: {e}");
                    }
                    None
                }
            },
            Conn::Connecting { bridge, sock } => self.connecting(bridge, sock),
            Conn::Listening {
                bridge,
                sock,
                serial,
                out,
            } => self.listening(bridge, sock, serial, out),
            Conn::Relay(mut r) => {
                let mut again = false;
                match r.run(&mut self.scratch, self.ticks, &mut again) {
                    Ok(false) => {
                        if again {
                            self.again.push_back(slot);
                        }
                        Some(Conn::Relay(r))
                    }
                    Ok(true) => None,
                    Err(_) => {
                        r.abort();
                        None
                    }
                }
            }
        }
    }

    fn dispatch(&mut self, slot: usize, bridge: OwnedFd, req: Request) -> Option<Conn> {
        let b = bridge.as_raw_fd();
        match req.kind {
            Kind::Connect => match start_connect(&req) {
                Ok((sock, done)) => {
                    if register(&self.poll, sock.as_raw_fd(), token(slot, true)).is_err() {
                        let _ = answer(b, &Reply::error(libc::ENOMEM));
                        return None;
                    }
                    if done {
                        self.begin_relay(bridge, sock)
                    } else {
                        Some(Conn::Connecting { bridge, sock })
                    }
                }
                Err(e) => {
                    let _ = answer(b, &Reply::error(errno_of(&e)));
                    None
                }
            },
            Kind::Listen => {
                let opened = open_listener(&req).and_then(|(sock, reply)| {
                    set_nonblocking(sock.as_raw_fd())?;
                    register(&self.poll, sock.as_raw_fd(), token(slot, true))?;
                    Ok((sock, reply))
                });
                match opened {
                    Ok((sock, reply)) => {
                        answer(b, &reply).ok()?;
                        let serial = self.next_id;
                        self.next_id += 1;
                        // Connections may be waiting already.
                        self.listening(bridge, sock, serial, Vec::new())
                    }
                    Err(e) => {
                        let _ = answer(b, &Reply::error(errno_of(&e)));
                        None
                    }
                }
            }
            Kind::Attach => match self.pending.remove(&req.id) {
                Some((_, sock)) => {
                    if register(&self.poll, sock.as_raw_fd(), token(slot, true)).is_err() {
                        let _ = answer(b, &Reply::error(libc::ENOMEM));
                        return None;
                    }
                    self.begin_relay(bridge, sock)
                }
                None => {
                    let _ = answer(b, &Reply::error(libc::ECONNABORTED));
                    None
                }
            },
            // Tens of milliseconds of `ip` commands: off the loop.
            Kind::Reset => self.off_loop(bridge, "reset", move |b| {
                let errno = match reset_device(req.id) {
                    Ok(()) => 0,
                    Err(e) => {
                        eprintln!("dropshim-uml agent: {e}");
                        libc::EIO
                    }
                };
                let _ = answer(b, &Reply::error(errno));
            }),
            // `ss` runs for tens of milliseconds too.
            Kind::Stats => self.off_loop(bridge, "stats", |b| {
                if answer(b, &Reply::error(0)).is_ok() {
                    let text = guest_stats();
                    let mut sent = 0;
                    while sent < text.len() {
                        match sys_write(b, &text.as_bytes()[sent..]) {
                            Ok(n) if n > 0 => sent += n,
                            _ => break,
                        }
                    }
                }
            }),
            Kind::Ping | Kind::Watch => {
                let _ = answer(b, &Reply::error(0));
                None
            }
        }
    }

    /// Runs `work` on the bridge (made blocking) on a short-lived thread of
    /// its own, for requests that would hold the loop; the bridge closes
    /// when `work` returns.
    fn off_loop(
        &mut self,
        bridge: OwnedFd,
        name: &str,
        work: impl FnOnce(RawFd) + Send + 'static,
    ) -> Option<Conn> {
        let _ = self
            .poll
            .registry()
            .deregister(&mut SourceFd(&bridge.as_raw_fd()));
        let spawned = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                let _ = super::set_nonblocking(bridge.as_raw_fd(), false);
                work(bridge.as_raw_fd());
            });
        if let Err(e) = spawned {
            eprintln!("dropshim-uml agent: cannot start a {name}: {e}");
        }
        None
    }

    fn connecting(&mut self, bridge: OwnedFd, sock: OwnedFd) -> Option<Conn> {
        // The supervisor sends nothing before the reply: a readable
        // bridge means it was closed (the program closed its socket
        // mid-connect), which abandons the attempt.
        let mut probe = [0u8; 1];
        // SAFETY: the kernel writes at most one byte into `probe`.
        let n = unsafe {
            libc::recv(
                bridge.as_raw_fd(),
                probe.as_mut_ptr().cast(),
                1,
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        if n >= 0 || !would_block(&io::Error::last_os_error()) {
            return None;
        }
        let fd = sock.as_raw_fd();
        let err = dropshim_abi::sock::getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_ERROR)
            .unwrap_or_else(|e| errno_of(&e));
        if err != 0 {
            let _ = answer(bridge.as_raw_fd(), &Reply::error(err));
            return None;
        }
        if sock_addr(fd, true).is_none() {
            return Some(Conn::Connecting { bridge, sock }); // not yet
        }
        self.begin_relay(bridge, sock)
    }

    fn listening(
        &mut self,
        bridge: OwnedFd,
        sock: OwnedFd,
        serial: u64,
        mut out: Vec<u8>,
    ) -> Option<Conn> {
        let b = bridge.as_raw_fd();
        // The supervisor sends nothing on a listener's bridge: readable
        // means closed (the program closed its listener), which closes
        // the guest listener and the connections nobody will attach.
        let mut probe = [0u8; 1];
        // SAFETY: the kernel writes at most one byte into `probe`.
        let n = unsafe {
            libc::recv(
                b,
                probe.as_mut_ptr().cast(),
                1,
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        if n >= 0 || !would_block(&io::Error::last_os_error()) {
            self.pending.retain(|_, (owner, _)| *owner != serial);
            return None;
        }
        loop {
            // SAFETY: no address is requested, so nothing is written.
            let cfd = unsafe {
                libc::accept4(
                    sock.as_raw_fd(),
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                    libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                )
            };
            if cfd < 0 {
                let e = io::Error::last_os_error();
                if matches!(e.raw_os_error(), Some(libc::EINTR | libc::ECONNABORTED)) {
                    continue;
                }
                break;
            }
            // SAFETY: accept4 returned a fresh descriptor nobody else owns.
            let conn = unsafe { OwnedFd::from_raw_fd(cfd) };
            let id = self.next_id;
            self.next_id += 1;
            let notice = Notice {
                id,
                local: sock_addr(cfd, false),
                peer: sock_addr(cfd, true),
            };
            self.pending.insert(id, (serial, conn));
            out.extend_from_slice(&notice.encode());
        }
        let mut off = 0;
        while off < out.len() {
            match sys_write(b, &out[off..]) {
                Ok(n) => off += n,
                Err(e) if would_block(&e) => break,
                Err(_) => {
                    self.pending.retain(|_, (owner, _)| *owner != serial);
                    return None;
                }
            }
        }
        out.drain(..off);
        Some(Conn::Listening {
            bridge,
            sock,
            serial,
            out,
        })
    }

    /// Answers the request with the guest socket's addresses and starts
    /// relaying: in the guest kernel if it has the relay, else here.
    fn begin_relay(&mut self, bridge: OwnedFd, sock: OwnedFd) -> Option<Conn> {
        let fd = sock.as_raw_fd();
        let reply = Reply {
            errno: 0,
            local: sock_addr(fd, false),
            peer: sock_addr(fd, true),
        };
        tune_guest_socket(fd);
        if let Some(relay) = &self.kernel_relay {
            // Nothing was written to the bridge yet, so the reply goes
            // out whole and first; the kernel relay then starts with
            // whatever either socket has queued since.
            answer(bridge.as_raw_fd(), &reply).ok()?;
            match kernel_relay_start(relay.as_raw_fd(), bridge.as_raw_fd(), fd) {
                Ok(()) => {
                    // The kernel holds its own references: the loop
                    // forgets the connection (the descriptors leave the
                    // epoll set first, as their files stay open).
                    for fd in [bridge.as_raw_fd(), fd] {
                        let _ = self.poll.registry().deregister(&mut SourceFd(&fd));
                    }
                    return None;
                }
                Err(e) => {
                    eprintln!("dropshim-uml agent: the kernel relay refused a connection ({e}); relaying it here");
                    return self.relay_here(bridge, sock, Vec::new());
                }
            }
        }
        self.relay_here(bridge, sock, reply.encode().to_vec())
    }

    /// Relays a connection on this loop; `first` goes to the program
    /// before any byte of the peer's.
    fn relay_here(&mut self, bridge: OwnedFd, sock: OwnedFd, first: Vec<u8>) -> Option<Conn> {
        let mut r = Box::new(Relay {
            bridge,
            sock,
            b: Ready {
                read: true,
                write: true,
                closed: true,
            },
            s: Ready {
                read: true,
                write: true,
                closed: true,
            },
            up: Pump::default(),
            down: Pump::default(),
            active: self.ticks,
        });
        // The reply goes first on the way to the program.
        r.down.pending = first;
        let mut again = false;
        match r.run(&mut self.scratch, self.ticks, &mut again) {
            Ok(false) => Some(Conn::Relay(r)),
            Ok(true) => None,
            Err(_) => {
                r.abort();
                None
            }
        }
    }

    /// Tries again the guest sockets that wait (see [`RETRY`]).
    fn tick(&mut self) {
        self.ticks += 1;
        let idle_turn = self.ticks.is_multiple_of(IDLE_EVERY);
        for slot in 0..self.slots.len() {
            let Some(Some(Conn::Relay(r))) = self.slots.get_mut(slot) else {
                continue;
            };
            let mut retry = false;
            let reading = !r.down.eof && !r.down.holds() && !r.s.read;
            if reading && (idle_turn || self.ticks - r.active < ACTIVE_TICKS) {
                r.s.read = true;
                retry = true;
            }
            if !r.up.done && r.up.holds() && !r.s.write {
                r.s.write = true;
                retry = true;
            }
            if retry {
                self.again.push_back(slot);
            }
        }
    }
}

/// Reads the request that opens a bridge connection, exactly (no byte
/// of the program's data after it). Ok(None): not all there yet.
fn read_request(fd: RawFd, buf: &mut Vec<u8>) -> io::Result<Option<Request>> {
    loop {
        let want = if buf.len() < 4 {
            4
        } else {
            let len = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
            if len > MAX_REQUEST {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "request too long",
                ));
            }
            4 + len
        };
        if buf.len() == want && want > 4 {
            return Request::decode(&buf[4..])
                .map(Some)
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "malformed request"));
        }
        let have = buf.len();
        buf.resize(want, 0);
        match sys_read(fd, &mut buf[have..]) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "bridge closed before its request",
                ))
            }
            Ok(n) => buf.truncate(have + n),
            Err(e) => {
                buf.truncate(have);
                if would_block(&e) {
                    return Ok(None);
                }
                return Err(e);
            }
        }
    }
}

/// A non-blocking guest socket for the request, connecting; true if the
/// connect completed at once.
fn start_connect(req: &Request) -> io::Result<(OwnedFd, bool)> {
    let dest = req
        .addr
        .ok_or_else(|| io::Error::from_raw_os_error(libc::EDESTADDRREQ))?;
    let sock = new_socket(req)?;
    let fd = sock.as_raw_fd();
    if let Some(bind) = req.bind {
        let bind = encode_in_domain(&bind, req.domain);
        // SAFETY: `bind` holds a valid address of `bind.len()` bytes.
        cvt(unsafe { libc::bind(fd, bind.as_ptr(), bind.len()) })?;
    }
    set_nonblocking(fd)?;
    let dest = encode_in_domain(&dest, req.domain);
    // SAFETY: `dest` holds a valid address of `dest.len()` bytes.
    let ret = unsafe { libc::connect(fd, dest.as_ptr(), dest.len()) };
    if ret == 0 {
        return Ok((sock, true));
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EINPROGRESS) {
        Ok((sock, false))
    } else {
        Err(e)
    }
}

/// Options every relayed guest socket gets once connected.
fn tune_guest_socket(fd: RawFd) {
    // The program's Nagle, TCP_NODELAY and TCP_CORK act on its end of the
    // bridge (a host TCP socket), which releases bytes when the program
    // wants them sent; the guest socket must then send them at once
    // instead of applying Nagle a second time (a small tail segment would
    // wait for the peer's delayed ACK), nor keep a cork the program set
    // before connecting and has since lifted on the bridge.
    set_int(fd, libc::IPPROTO_TCP, libc::TCP_NODELAY, 1);
    set_int(fd, libc::IPPROTO_TCP, libc::TCP_CORK, 0);
    // Once out-of-order data alone (a segment lost on a cut path, the
    // other path going on) holds more memory than the receive buffer,
    // 6.12 moves at most one skb per read out of the subflows, whose own
    // buffers are full, so the retransmission that fills the hole cannot
    // come in: the download trickles or stops for good. The window scale
    // is fixed by now (at connect, from the guest's 1.9 MB tcp_rmem
    // maximum: windows of at most 2 MiB), so a buffer four times that
    // never fills with out-of-order data. Forced: rmem_max is lower.
    set_int(fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, RCVBUF);
    // Accepted sockets come non-blocking from accept4; connected ones
    // were made so before connecting.
    let _ = set_nonblocking(fd);
}
