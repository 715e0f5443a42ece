//! The lkl backend's event loops: they carry the bytes of every
//! connection between the program's socketpair and its library socket,
//! accept for every listener and finish every non-blocking connect, with
//! two threads whatever the number of connections.
//!
//! - The host loop (mio) watches the relays' ends of the program's
//!   socketpairs. It moves program → library kernel: it reads a pair end
//!   and sends into the library socket without blocking.
//! - The library loop waits in the library kernel's own epoll (entered
//!   through the library's system call path) on every library socket,
//!   listener and pending connect, plus an eventfd of that kernel that
//!   the other threads write to wake it. It moves library kernel →
//!   program, accepts, and completes connects.
//!
//! Back-pressure: a direction whose destination is full keeps what it
//! read, stops reading its source, and says so in a flag; the loop that
//! sees the destination's writability clears the flag and hands the
//! relay back to its owner. Each direction is run by one loop only.
//!
//! Per message, each direction enters the library kernel as few times
//! as it can (an entry that finds another thread's task current
//! switches tasks): the host loop one send, the library loop its epoll
//! report and one recv. A read that does not fill the buffer ends an
//! edge-triggered turn instead of reading again for EAGAIN, and a
//! destination's writability is watched only while it is full, so that
//! bytes taken on one side do not wake the other side's loop.
//!
//! Timers only where Linux 6.12's MPTCP may never signal: a send that
//! found no room is tried again after [`SEND_RETRY`], a receive that
//! found nothing after [`RETRY`] ([`IDLE_RETRY`] once the connection has
//! been quiet for [`BUSY`]); lingering closes are checked with a backoff.

use super::{
    errno_of, inode, live, unread_byte, Accepted, Closing, Conn, Connecting, Listener, RELAYED,
};
use crate::log;
use crate::Errno;
use dropshim_backend_lkl::{EpollEvent, Fd, Lkl};
use libc::{c_int, c_void};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Registry, Token, Waker};
use once_cell::sync::{Lazy, OnceCell};
use parking_lot::Mutex;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Bytes moved per read.
const CHUNK: usize = 256 * 1024;

/// Linux 6.12's MPTCP can leave a reader without a wake-up: when
/// out-of-order data fills the receive buffer (a path was cut and the
/// other one went on), the segment that fills the hole stays in its
/// subflow until recvmsg runs again. Entering it again unsticks it, so
/// such a stall lasts at most this long.
const RETRY: Duration = Duration::from_millis(200);
/// The same for a sender: with no persist timer, data queued behind a
/// closed connection-level window is pushed only when sendmsg runs again,
/// and the window's reopening wakes no epoll waiter (a sender asleep in
/// sendmsg is woken by any activity on the socket, an epoll waiter only
/// by writability). A send that found no room is tried again this soon:
/// at 200 ms an unshaped upload ran at about half its rate.
const SEND_RETRY: Duration = Duration::from_millis(20);
/// How long after its last byte (either way) a connection counts as
/// busy: a busy connection whose receiving found nothing is read again
/// after [`RETRY`], an idle one after [`IDLE_RETRY`] (the stall above
/// follows traffic; the slower pace keeps thousands of idle connections
/// cheap).
const BUSY: Duration = Duration::from_secs(10);
const IDLE_RETRY: Duration = Duration::from_secs(1);
/// Reads or writes per connection per turn, so that one busy connection
/// cannot hold a loop while others wait.
const TURN: usize = 16;
/// Connections accepted per listener per turn.
const ACCEPT_BATCH: usize = 64;
/// How long a close waits for the peer's acknowledgement. Longer than the
/// exit flush: a connection closed shortly before exit is still waited
/// for then.
const LINGER: Duration = Duration::from_secs(30);

/// The epoll data of the library loop's eventfd, and the host loop's
/// waker token.
const WAKE: u64 = 0;

// The library kernel's values are Linux's, the host's.
const EPOLLIN: u32 = libc::EPOLLIN as u32;
const EPOLLOUT: u32 = libc::EPOLLOUT as u32;
const EPOLLERR: u32 = libc::EPOLLERR as u32;
const EPOLLHUP: u32 = libc::EPOLLHUP as u32;
const EPOLLRDHUP: u32 = libc::EPOLLRDHUP as u32;
const EPOLLET: u32 = libc::EPOLLET as u32;
/// What the library loop watches on a relayed library socket; EPOLLOUT
/// is added while the host loop waits for room in it.
const LIB_EVENTS: u32 = EPOLLIN | EPOLLRDHUP | EPOLLET;

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// A fresh identity for something a loop watches (never [`WAKE`]).
pub(super) fn new_id() -> u64 {
    NEXT_ID.fetch_add(1, Ordering::Relaxed)
}

#[derive(Clone)]
enum Entry {
    Relay(Arc<Relay>),
    Listener(Arc<Listener>),
    Connect(Arc<Connecting>),
}

/// Everything the loops watch, by identity (mio token, epoll data).
static ENTRIES: Lazy<Mutex<HashMap<u64, Entry>>> = Lazy::new(|| Mutex::new(HashMap::new()));

fn entry(id: u64) -> Option<Entry> {
    ENTRIES.lock().get(&id).cloned()
}

struct Loops {
    /// The library loop's epoll instance and eventfd.
    epfd: Fd,
    wake: Fd,
    registry: Registry,
    waker: Waker,
    /// Relays whose program → kernel direction the host loop must run.
    host_queue: Mutex<Vec<u64>>,
    host_kicked: AtomicBool,
    /// Entries the library loop must look at.
    lib_queue: Mutex<Vec<u64>>,
    lib_kicked: AtomicBool,
}

static LOOPS: OnceCell<Result<Loops, String>> = OnceCell::new();

/// The loops, started at first use.
fn loops() -> Result<&'static Loops, Errno> {
    let k = live().ok_or(Errno(libc::EOPNOTSUPP))?;
    match LOOPS.get_or_init(|| start_loops(k)) {
        Ok(l) => Ok(l),
        Err(e) => {
            static SAID: AtomicBool = AtomicBool::new(false);
            if !SAID.swap(true, Ordering::Relaxed) {
                log::error!("lkl: {e}; connections cannot be relayed");
            }
            Err(Errno(libc::EAGAIN))
        }
    }
}

fn start_loops(k: &'static Lkl) -> Result<Loops, String> {
    let epfd = k
        .epoll_create(libc::EPOLL_CLOEXEC)
        .map_err(|e| format!("library epoll: {e}"))?;
    let wake = k
        .eventfd(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)
        .map_err(|e| format!("library eventfd: {e}"))?;
    k.epoll_ctl(epfd, libc::EPOLL_CTL_ADD, wake, EPOLLIN | EPOLLET, WAKE)
        .map_err(|e| format!("library epoll: {e}"))?;
    let poll = Poll::new().map_err(|e| format!("host epoll: {e}"))?;
    let registry = poll
        .registry()
        .try_clone()
        .map_err(|e| format!("host epoll: {e}"))?;
    let waker = Waker::new(poll.registry(), Token(WAKE as usize))
        .map_err(|e| format!("host eventfd: {e}"))?;
    std::thread::Builder::new()
        .name("dropshim-lkl-host".into())
        .spawn(move || host_loop(k, poll))
        .map_err(|e| format!("cannot start the host relay thread: {e}"))?;
    std::thread::Builder::new()
        .name("dropshim-lkl-lib".into())
        .spawn(move || lib_loop(k))
        .map_err(|e| format!("cannot start the library relay thread: {e}"))?;
    Ok(Loops {
        epfd,
        wake,
        registry,
        waker,
        host_queue: Mutex::new(Vec::new()),
        host_kicked: AtomicBool::new(false),
        lib_queue: Mutex::new(Vec::new()),
        lib_kicked: AtomicBool::new(false),
    })
}

/// Hands `id` to the host loop.
fn to_host(l: &Loops, id: u64) {
    l.host_queue.lock().push(id);
    if !l.host_kicked.swap(true, Ordering::SeqCst) {
        if let Err(e) = l.waker.wake() {
            log::error!("lkl: cannot wake the host relay thread: {e}");
        }
    }
}

/// Hands `id` to the library loop.
fn to_lib(k: &Lkl, l: &Loops, id: u64) {
    l.lib_queue.lock().push(id);
    if !l.lib_kicked.swap(true, Ordering::SeqCst) {
        if let Err(e) = k.write(l.wake, &1u64.to_ne_bytes()) {
            log::error!("lkl: cannot wake the library relay thread: {e}");
        }
    }
}

/// Asks the library loop to look at `id` again (a listener whose program
/// took its queued connections, or closed it).
pub(super) fn poke(id: u64) {
    let Some(k) = live() else { return };
    if let Some(Ok(l)) = LOOPS.get() {
        to_lib(k, l, id);
    }
}

// ------------------------------------------------------------ buffers

/// A direction's own buffer while its destination is full, mapped
/// straight from the host kernel and unmapped when the direction goes
/// idle: buffers come and go with bursts, and from malloc would fragment
/// the program's heap.
struct RelayBuf(*mut u8);

impl RelayBuf {
    fn new() -> Option<RelayBuf> {
        // SAFETY: a fresh private anonymous mapping; nothing else uses it.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                CHUNK,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return None;
        }
        Some(RelayBuf(p as *mut u8))
    }
}

// SAFETY: RelayBuf owns its mapping alone (like a Box<[u8]>), so moving
// it between threads is sound.
unsafe impl Send for RelayBuf {}

impl std::ops::Deref for RelayBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: the mapping is CHUNK bytes, zero-filled, and lives as
        // long as self.
        unsafe { std::slice::from_raw_parts(self.0, CHUNK) }
    }
}

impl std::ops::DerefMut for RelayBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in deref; &mut self makes this the only view.
        unsafe { std::slice::from_raw_parts_mut(self.0, CHUNK) }
    }
}

impl Drop for RelayBuf {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in new(), no longer used.
        unsafe { libc::munmap(self.0 as *mut c_void, CHUNK) };
    }
}

// ------------------------------------------------------------ relays

/// One direction of a relay.
#[derive(Default)]
struct Dir {
    /// Bytes read but not yet written: `buf[start..end]`.
    buf: Option<RelayBuf>,
    start: usize,
    end: usize,
    done: bool,
    /// A [`RETRY`] timer is armed for this direction.
    armed: bool,
    /// Reads that brought bytes.
    progress: u64,
    /// The destination's writability is watched (only while it is full:
    /// otherwise every byte the other side takes would wake a loop).
    out_watch: bool,
}

/// One connection being relayed.
pub(super) struct Relay {
    id: u64,
    conn: Arc<Conn>,
    host: HostEnd,
    /// Program → library kernel: the host loop's.
    up: Mutex<Dir>,
    /// Library kernel → program: the library loop's.
    down: Mutex<Dir>,
    /// The host loop waits for the library socket to take bytes.
    up_waits: AtomicBool,
    /// The library loop waits for the program's end to take bytes.
    down_waits: AtomicBool,
    /// Directions finished; the second one to finish closes the relay.
    ended: AtomicU8,
    /// When bytes last moved either way (milliseconds since [`EPOCH`]).
    busy_at: AtomicU64,
}

static EPOCH: Lazy<Instant> = Lazy::new(Instant::now);

fn now_ms() -> u64 {
    EPOCH.elapsed().as_millis() as u64
}

/// The relays' end of the program's pair. After a reset the program must
/// read ECONNRESET, not the end of the stream; a Unix stream socket
/// closed while its own receive queue holds data sets ECONNRESET on its
/// peer (unix_release_sock), which the peer's read() returns after the
/// data already queued for it. So the relay makes sure a byte waits
/// unread in this end before it closes it.
pub(super) struct HostEnd {
    pub(super) fd: c_int,
    /// Inode of the program's end of the pair.
    pub(super) prog: Option<u64>,
    /// The connection was reset (or died otherwise): the program's reads
    /// must end in ECONNRESET; nothing more goes to the library socket.
    pub(super) reset: AtomicBool,
}

impl Drop for HostEnd {
    fn drop(&mut self) {
        super::close_fd(self.fd);
    }
}

/// Relays the connected `conn` through `host`, the relays' end of the
/// program's pair; `prog` is the inode of the program's end.
pub(super) fn start(conn: Arc<Conn>, host: c_int, prog: Option<u64>) {
    let (Some(k), Ok(l)) = (live(), loops()) else {
        // Closing our end shows the program the end of the stream.
        super::close_fd(host);
        return;
    };
    // SAFETY: fcntl on our own descriptor.
    unsafe {
        let fl = libc::fcntl(host, libc::F_GETFL);
        libc::fcntl(host, libc::F_SETFL, fl | libc::O_NONBLOCK);
    }
    conn.up_done.store(false, Ordering::Release);
    {
        let mut relayed = RELAYED.lock();
        // Forget finished connections now and then (amortised).
        if relayed.len() >= 64 && relayed.len().is_power_of_two() {
            relayed.retain(|w| w.strong_count() > 0);
        }
        relayed.push(Arc::downgrade(&conn));
    }
    let id = new_id();
    let lkl = conn.lkl;
    let r = Arc::new(Relay {
        id,
        conn,
        host: HostEnd {
            fd: host,
            prog,
            reset: AtomicBool::new(false),
        },
        up: Mutex::new(Dir::default()),
        down: Mutex::new(Dir::default()),
        up_waits: AtomicBool::new(false),
        down_waits: AtomicBool::new(false),
        ended: AtomicU8::new(0),
        busy_at: AtomicU64::new(now_ms()),
    });
    ENTRIES.lock().insert(id, Entry::Relay(r.clone()));
    let registered =
        l.registry
            .register(&mut SourceFd(&host), Token(id as usize), Interest::READABLE);
    if let Err(e) = registered {
        log::error!("lkl: cannot watch a connection ({e}); it is closed");
        ENTRIES.lock().remove(&id);
        return;
    }
    if let Err(e) = k.epoll_ctl(l.epfd, libc::EPOLL_CTL_ADD, lkl, LIB_EVENTS, id) {
        log::error!("lkl: cannot watch a connection ({e}); it is closed");
        let _ = l.registry.deregister(&mut SourceFd(&host));
        ENTRIES.lock().remove(&id);
        return;
    }
    // A first look on the library side arms its receive timer.
    to_lib(k, l, id);
}

/// What a read or write did.
enum Io {
    Moved(usize),
    Again,
    End,
    Fail(c_int),
}

/// How a direction stopped.
enum Stop {
    /// Its source has nothing more for now.
    Idle,
    /// Its destination is full; `waits` stays set.
    Blocked,
    /// Its turn is over with work left.
    More,
    /// The source ended (end of stream) or failed.
    SourceEnd,
    SourceFail(c_int),
    /// The destination failed.
    DestFail(c_int),
}

/// Moves bytes from `read` to `write` until the source is empty, the
/// destination full, either fails, or the turn is over. `waits` is set
/// around every write, so that the destination's writability seen by the
/// other loop at any moment after a refused write hands the relay back.
///
/// With `short_ends`, a read that did not fill its buffer counts as
/// having emptied the source once its bytes are written, which saves the
/// read that would only say EAGAIN. Only for an edge-triggered source
/// whose readiness was just reported without a hang-up: bytes that came
/// after that read report it readable again, and an end of stream that
/// came before it was in the report.
fn pump(
    d: &mut Dir,
    scratch: &mut [u8],
    waits: &AtomicBool,
    short_ends: bool,
    mut read: impl FnMut(&mut [u8]) -> Io,
    mut write: impl FnMut(&[u8]) -> Io,
) -> Stop {
    let mut drained = false;
    for _ in 0..TURN {
        if d.start < d.end {
            let Some(buf) = &d.buf else {
                d.start = 0;
                d.end = 0;
                continue;
            };
            waits.store(true, Ordering::SeqCst);
            match write(&buf[d.start..d.end]) {
                Io::Moved(n) => {
                    waits.store(false, Ordering::SeqCst);
                    d.start += n;
                    continue;
                }
                Io::Again => return Stop::Blocked,
                Io::End => return Stop::DestFail(libc::EPIPE),
                Io::Fail(e) => return Stop::DestFail(e),
            }
        }
        d.start = 0;
        d.end = 0;
        if drained {
            d.buf = None;
            return Stop::Idle;
        }
        if let Some(buf) = &mut d.buf {
            match read(buf) {
                Io::Moved(n) => {
                    drained = short_ends && n < buf.len();
                    d.end = n;
                    d.progress += 1;
                }
                Io::Again => {
                    d.buf = None;
                    return Stop::Idle;
                }
                Io::End => return Stop::SourceEnd,
                Io::Fail(e) => return Stop::SourceFail(e),
            }
            continue;
        }
        // No burst under way: read into the loop's scratch buffer and
        // write from it; only what the destination refuses is kept.
        let n = match read(scratch) {
            Io::Moved(n) => n,
            Io::Again => return Stop::Idle,
            Io::End => return Stop::SourceEnd,
            Io::Fail(e) => return Stop::SourceFail(e),
        };
        d.progress += 1;
        drained = short_ends && n < scratch.len();
        let mut off = 0;
        while off < n {
            waits.store(true, Ordering::SeqCst);
            match write(&scratch[off..n]) {
                Io::Moved(w) => {
                    waits.store(false, Ordering::SeqCst);
                    off += w;
                }
                Io::Again => {
                    let Some(mut own) = RelayBuf::new() else {
                        waits.store(false, Ordering::SeqCst);
                        return Stop::DestFail(libc::ENOMEM);
                    };
                    own[..n - off].copy_from_slice(&scratch[off..n]);
                    d.buf = Some(own);
                    d.start = 0;
                    d.end = n - off;
                    return Stop::Blocked;
                }
                Io::End => return Stop::DestFail(libc::EPIPE),
                Io::Fail(e) => return Stop::DestFail(e),
            }
        }
    }
    Stop::More
}

fn host_io(r: isize) -> Io {
    if r > 0 {
        return Io::Moved(r as usize);
    }
    if r == 0 {
        return Io::End;
    }
    match std::io::Error::last_os_error().raw_os_error() {
        Some(libc::EAGAIN) | Some(libc::EINTR) => Io::Again,
        Some(e) => Io::Fail(e),
        None => Io::Fail(libc::EIO),
    }
}

fn lib_io(r: Result<usize, dropshim_backend_lkl::Error>) -> Io {
    match r {
        Ok(0) => Io::End,
        Ok(n) => Io::Moved(n),
        Err(e) => match errno_of(&e) {
            libc::EAGAIN | libc::EINTR => Io::Again,
            e => Io::Fail(e),
        },
    }
}

/// Program → library kernel, on the host loop. Returns whether the
/// relay's turn ended with work left.
fn pump_up(
    k: &Lkl,
    l: &Loops,
    r: &Arc<Relay>,
    scratch: &mut [u8],
    timers: &mut Timers,
    short_ends: bool,
) -> bool {
    let mut d = r.up.lock();
    if d.done {
        return false;
    }
    let lkl = r.conn.lkl;
    let host = r.host.fd;
    let before = d.progress;
    let stop = if r.host.reset.load(Ordering::Acquire) {
        // The connection is gone: what the program wrote has nowhere to go.
        Stop::SourceEnd
    } else {
        pump(
            &mut d,
            scratch,
            &r.up_waits,
            short_ends,
            // SAFETY: reads into a live, writable buffer from our own end.
            |b| host_io(unsafe { libc::read(host, b.as_mut_ptr() as *mut c_void, b.len()) }),
            |b| match lib_io(k.send(lkl, b, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)) {
                Io::End => Io::Again,
                io => io,
            },
        )
    };
    if d.progress != before {
        r.busy_at.store(now_ms(), Ordering::Relaxed);
    }
    let full = matches!(stop, Stop::Blocked);
    if full != d.out_watch {
        // The library socket's room is watched only while it has none;
        // adding the watch reports room that came back meanwhile.
        let events = if full {
            LIB_EVENTS | EPOLLOUT
        } else {
            LIB_EVENTS
        };
        if k.epoll_ctl(l.epfd, libc::EPOLL_CTL_MOD, lkl, events, r.id)
            .is_ok()
        {
            d.out_watch = full;
        }
    }
    match stop {
        Stop::Idle => false,
        Stop::More => true,
        Stop::Blocked => {
            if !d.armed {
                d.armed = true;
                timers.push(Reverse((Instant::now() + SEND_RETRY, r.id)));
            }
            false
        }
        Stop::SourceEnd if !r.host.reset.load(Ordering::Acquire) => {
            let how = if r.conn.closed.load(Ordering::Acquire) {
                libc::SHUT_RDWR
            } else {
                libc::SHUT_WR
            };
            let _ = k.shutdown(lkl, how);
            end_up(k, l, r, &mut d);
            false
        }
        Stop::SourceEnd => {
            end_up(k, l, r, &mut d);
            false
        }
        Stop::SourceFail(_) => {
            let _ = k.shutdown(lkl, libc::SHUT_WR);
            end_up(k, l, r, &mut d);
            false
        }
        Stop::DestFail(e) => {
            log::debug!("lkl: send: {}", std::io::Error::from_raw_os_error(e));
            // The connection failed (a reset): the program's reads end in
            // ECONNRESET, its writes in EPIPE once the pair is closed, and
            // the shutdown ends the other direction.
            r.host.reset.store(true, Ordering::Release);
            r.conn.dead.store(true, Ordering::Release);
            let _ = k.shutdown(lkl, libc::SHUT_RDWR);
            end_up(k, l, r, &mut d);
            false
        }
    }
}

fn end_up(k: &Lkl, l: &Loops, r: &Arc<Relay>, d: &mut Dir) {
    d.done = true;
    d.buf = None;
    r.conn.up_done.store(true, Ordering::Release);
    ended(k, l, r);
}

/// Library kernel → program, on the library loop. Returns whether the
/// relay's turn ended with work left.
fn pump_down(
    k: &Lkl,
    l: &Loops,
    r: &Arc<Relay>,
    scratch: &mut [u8],
    timers: &mut Timers,
    short_ends: bool,
) -> bool {
    let mut d = r.down.lock();
    if d.done {
        return false;
    }
    let lkl = r.conn.lkl;
    let host = r.host.fd;
    let before = d.progress;
    let stop = pump(
        &mut d,
        scratch,
        &r.down_waits,
        short_ends,
        |b| lib_io(k.recv(lkl, b, libc::MSG_DONTWAIT)),
        |b| {
            // SAFETY: sends from a live buffer on our own end; MSG_NOSIGNAL
            // turns a closed reader into EPIPE instead of a signal.
            host_io(unsafe {
                libc::send(
                    host,
                    b.as_ptr() as *const c_void,
                    b.len(),
                    libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
                )
            })
        },
    );
    if d.progress != before {
        r.busy_at.store(now_ms(), Ordering::Relaxed);
    }
    let full = matches!(stop, Stop::Blocked);
    if full != d.out_watch {
        // The program's end is watched for room only while it has none;
        // adding the watch reports room that came back meanwhile.
        let interest = if full {
            Interest::READABLE | Interest::WRITABLE
        } else {
            Interest::READABLE
        };
        let mut src = SourceFd(&r.host.fd);
        if l.registry
            .reregister(&mut src, Token(r.id as usize), interest)
            .is_ok()
        {
            d.out_watch = full;
        }
    }
    match stop {
        Stop::More => true,
        Stop::Blocked => false,
        Stop::Idle => {
            if !d.armed {
                let idle_for = now_ms().saturating_sub(r.busy_at.load(Ordering::Relaxed));
                let after = if idle_for < BUSY.as_millis() as u64 {
                    RETRY
                } else {
                    IDLE_RETRY
                };
                d.armed = true;
                timers.push(Reverse((Instant::now() + after, r.id)));
            }
            false
        }
        Stop::SourceEnd if !r.host.reset.load(Ordering::Acquire) => {
            // SAFETY: shutdown on our own end: the program reads EOF.
            unsafe { libc::shutdown(host, libc::SHUT_WR) };
            end_down(k, l, r, &mut d);
            false
        }
        Stop::SourceEnd | Stop::SourceFail(_) => {
            // Reset, or dead otherwise: not a clean end of stream. The
            // host loop ends the other direction when it sees the flag.
            if let Stop::SourceFail(e) = stop {
                log::debug!("lkl: recv: {}", std::io::Error::from_raw_os_error(e));
            }
            r.host.reset.store(true, Ordering::Release);
            r.conn.dead.store(true, Ordering::Release);
            end_down(k, l, r, &mut d);
            to_host(l, r.id);
            false
        }
        Stop::DestFail(_) => {
            // The program closed or shut down reading.
            let _ = k.shutdown(lkl, libc::SHUT_RD);
            end_down(k, l, r, &mut d);
            false
        }
    }
}

fn end_down(k: &Lkl, l: &Loops, r: &Arc<Relay>, d: &mut Dir) {
    d.done = true;
    d.buf = None;
    ended(k, l, r);
}

/// One direction of `r` is over; after the second, the relay lets go of
/// everything: its watches, its end of the pair (with a byte left unread
/// in it after a reset, which the program then reads as ECONNRESET), and
/// its hold on the connection, whose library socket closes (lingering
/// while bytes are unacknowledged) with its last holder.
fn ended(k: &Lkl, l: &Loops, r: &Arc<Relay>) {
    if r.ended.fetch_add(1, Ordering::AcqRel) != 1 {
        return;
    }
    // Counted until the entry is gone, so that the exit flush never sees
    // the connection gone before its lingering close has begun.
    let _closing = Closing::enter();
    let _ = l.registry.deregister(&mut SourceFd(&r.host.fd));
    let _ = k.epoll_ctl(l.epfd, libc::EPOLL_CTL_DEL, r.conn.lkl, 0, 0);
    if r.host.reset.load(Ordering::Acquire) && !unread_byte(&r.conn, &r.host) {
        // Without a byte the close is a plain end of stream: the best
        // left when the reset cannot cross.
        log::debug!("lkl: a reset reaches the program as the end of the stream");
    }
    let gone = ENTRIES.lock().remove(&r.id);
    drop(gone);
}

// ------------------------------------------------------------ host loop

/// Deadlines of relays, soonest first.
type Timers = BinaryHeap<Reverse<(Instant, u64)>>;

fn relay(id: u64) -> Option<Arc<Relay>> {
    match entry(id) {
        Some(Entry::Relay(r)) => Some(r),
        _ => None,
    }
}

fn host_loop(k: &'static Lkl, mut poll: Poll) {
    let Ok(l) = loops() else { return };
    let Some(mut scratch) = RelayBuf::new() else {
        log::error!("lkl: no memory for the host relay buffer; connections stall");
        return;
    };
    let mut events = Events::with_capacity(1024);
    let mut timers: Timers = BinaryHeap::new();
    let mut ready: VecDeque<u64> = VecDeque::new();
    // Relays to run, and whether a short read may end their turn.
    let mut work: Vec<(u64, bool)> = Vec::new();
    loop {
        let timeout = if !ready.is_empty() {
            Some(Duration::ZERO)
        } else {
            timers
                .peek()
                .map(|Reverse((t, _))| t.saturating_duration_since(Instant::now()))
        };
        if let Err(e) = poll.poll(&mut events, timeout) {
            if e.kind() != std::io::ErrorKind::Interrupted {
                log::error!("lkl: host relay loop: {e}; connections stall");
                return;
            }
        }
        for ev in events.iter() {
            let id = ev.token().0 as u64;
            if id == WAKE {
                continue;
            }
            let Some(r) = relay(id) else { continue };
            if (ev.is_writable() || ev.is_write_closed() || ev.is_error())
                && r.down_waits.swap(false, Ordering::SeqCst)
            {
                to_lib(k, l, id);
            }
            let hup = ev.is_read_closed() || ev.is_error();
            if hup || ev.is_readable() {
                work.push((id, !hup));
            }
        }
        l.host_kicked.store(false, Ordering::SeqCst);
        work.extend(l.host_queue.lock().drain(..).map(|id| (id, false)));
        let now = Instant::now();
        while timers.peek().is_some_and(|Reverse((t, _))| *t <= now) {
            let Some(Reverse((_, id))) = timers.pop() else {
                break;
            };
            if let Some(r) = relay(id) {
                r.up.lock().armed = false;
                work.push((id, false));
            }
        }
        work.extend(ready.drain(..).map(|id| (id, false)));
        for (id, short_ends) in work.drain(..) {
            if let Some(r) = relay(id) {
                if pump_up(k, l, &r, &mut scratch, &mut timers, short_ends) {
                    ready.push_back(id);
                }
            }
        }
    }
}

// ------------------------------------------------------------ library loop

/// A library socket closed by the program with bytes unacknowledged:
/// kept open until the peer acknowledges them, or [`LINGER`] passes, so
/// that the exit flush can wait for it. The library kernel sends what is
/// queued and the FIN either way.
struct Lingering {
    fd: Fd,
    deadline: Instant,
    next: Instant,
    every: Duration,
    _closing: Closing,
}

static LINGERING: Mutex<Vec<Lingering>> = Mutex::new(Vec::new());

/// Closes `fd` once everything written to it is acknowledged (see
/// [`Lingering`]); at once if nothing is outstanding or no loop runs.
pub(super) fn linger(k: &Lkl, fd: Fd) {
    let unacked = k.unacked(fd).unwrap_or(0);
    let l = match LOOPS.get() {
        Some(Ok(l)) if unacked > 0 => l,
        _ => {
            let _ = k.close(fd);
            return;
        }
    };
    log::debug!("lkl: {unacked} bytes unacknowledged at close; the close lingers");
    let now = Instant::now();
    let every = Duration::from_millis(5);
    LINGERING.lock().push(Lingering {
        fd,
        deadline: now + LINGER,
        next: now + every,
        every,
        _closing: Closing::enter(),
    });
    to_lib(k, l, WAKE);
}

/// Closes the lingering sockets that are done (all of them that are due
/// now, or every one when `all`); returns when the next is due.
fn linger_tick(k: &Lkl, all: bool) -> Option<Instant> {
    let now = Instant::now();
    let mut done = Vec::new();
    let next = {
        let mut list = LINGERING.lock();
        let mut i = 0;
        while i < list.len() {
            let s = &mut list[i];
            if all || s.next <= now {
                // Acknowledged, or reset (SIOCOUTQ then stays where it
                // was, and SO_ERROR says why).
                let mut err = [0u8; 4];
                let reset = k
                    .getsockopt(s.fd, libc::SOL_SOCKET, libc::SO_ERROR, &mut err)
                    .map_or(true, |_| i32::from_ne_bytes(err) != 0);
                let acked = reset || k.unacked(s.fd).map_or(true, |n| n == 0);
                if acked || now >= s.deadline {
                    done.push(list.swap_remove(i));
                    continue;
                }
                s.every = (s.every * 2).min(Duration::from_secs(1));
                s.next = now + s.every;
            }
            i += 1;
        }
        list.iter().map(|s| s.next).min()
    };
    for s in done {
        let _ = k.close(s.fd);
    }
    next
}

/// At exit: closes the lingering sockets that are done, and returns a
/// fingerprint of what the others still wait for (how many, and their
/// unacknowledged bytes), or None when none is left.
pub(super) fn lingering_left(k: &Lkl) -> Option<u64> {
    linger_tick(k, true)?;
    let list = LINGERING.lock();
    Some(
        list.iter()
            .map(|s| k.unacked(s.fd).map_or(0, |n| n as u64))
            .fold(list.len() as u64, |acc, n| {
                acc.wrapping_mul(31).wrapping_add(n)
            }),
    )
}

fn lib_loop(k: &'static Lkl) {
    let Ok(l) = loops() else { return };
    let Some(mut scratch) = RelayBuf::new() else {
        log::error!("lkl: no memory for the library relay buffer; connections stall");
        return;
    };
    let mut events = vec![EpollEvent::default(); 256];
    let mut timers: Timers = BinaryHeap::new();
    let mut ready: VecDeque<u64> = VecDeque::new();
    // Relays to run, and whether a short read may end their turn.
    let mut work: Vec<(u64, bool)> = Vec::new();
    let mut poked: Vec<u64> = Vec::new();
    let mut linger_next: Option<Instant> = None;
    loop {
        let now = Instant::now();
        let due = [timers.peek().map(|Reverse((t, _))| *t), linger_next]
            .into_iter()
            .flatten()
            .min();
        let timeout = if !ready.is_empty() {
            0
        } else {
            match due {
                // Rounded up: waking early would only wait again.
                Some(t) => {
                    let ms = t.saturating_duration_since(now).as_micros().div_ceil(1000);
                    i32::try_from(ms).unwrap_or(i32::MAX)
                }
                None => -1,
            }
        };
        let n = match k.epoll_wait(l.epfd, &mut events, timeout) {
            Ok(n) => n,
            Err(e) if errno_of(&e) == libc::EINTR => 0,
            Err(e) => {
                log::error!("lkl: library relay loop: {e}; connections stall");
                return;
            }
        };
        for ev in &events[..n] {
            let (id, bits) = (ev.data, ev.events);
            if id == WAKE {
                continue;
            }
            match entry(id) {
                Some(Entry::Relay(r)) => {
                    if bits & (EPOLLOUT | EPOLLERR | EPOLLHUP) != 0
                        && r.up_waits.swap(false, Ordering::SeqCst)
                    {
                        to_host(l, id);
                    }
                    let hup = bits & (EPOLLERR | EPOLLHUP | EPOLLRDHUP) != 0;
                    if hup || bits & EPOLLIN != 0 {
                        work.push((id, !hup));
                    }
                }
                Some(Entry::Listener(li)) if accept_ready(k, l, &li) => ready.push_back(id),
                Some(Entry::Listener(_)) => {}
                Some(Entry::Connect(c)) => connect_ready(k, l, id, &c),
                None => {}
            }
        }
        l.lib_kicked.store(false, Ordering::SeqCst);
        poked.append(&mut l.lib_queue.lock());
        for id in poked.drain(..) {
            match entry(id) {
                Some(Entry::Relay(_)) => work.push((id, false)),
                Some(Entry::Listener(_)) => ready.push_back(id),
                _ => {}
            }
        }
        let now = Instant::now();
        while timers.peek().is_some_and(|Reverse((t, _))| *t <= now) {
            let Some(Reverse((_, id))) = timers.pop() else {
                break;
            };
            if let Some(r) = relay(id) {
                r.down.lock().armed = false;
                work.push((id, false));
            }
        }
        linger_next = if LINGERING.lock().is_empty() {
            None
        } else if linger_next.is_none_or(|t| t <= now) {
            linger_tick(k, false)
        } else {
            linger_next
        };
        let turn: Vec<u64> = ready.drain(..).collect();
        for id in turn {
            match entry(id) {
                Some(Entry::Relay(_)) => work.push((id, false)),
                Some(Entry::Listener(li)) if accept_ready(k, l, &li) => ready.push_back(id),
                _ => {}
            }
        }
        for (id, short_ends) in work.drain(..) {
            if let Some(r) = relay(id) {
                if pump_down(k, l, &r, &mut scratch, &mut timers, short_ends) {
                    ready.push_back(id);
                }
            }
        }
    }
}

// ------------------------------------------------------------ listeners

/// Watches the listening `li` in the library loop, which accepts for it.
pub(super) fn watch_listener(li: Arc<Listener>) -> Result<(), Errno> {
    let k = live().ok_or(Errno(libc::EOPNOTSUPP))?;
    let l = loops()?;
    let id = li.id;
    let lkl = li.lkl;
    ENTRIES.lock().insert(id, Entry::Listener(li));
    if let Err(e) = k.epoll_ctl(l.epfd, libc::EPOLL_CTL_ADD, lkl, EPOLLIN | EPOLLET, id) {
        ENTRIES.lock().remove(&id);
        return Err(Errno(errno_of(&e)));
    }
    Ok(())
}

fn unwatch_listener(k: &Lkl, l: &Loops, li: &Listener) {
    let _ = k.epoll_ctl(l.epfd, libc::EPOLL_CTL_DEL, li.lkl, 0, 0);
    let gone = ENTRIES.lock().remove(&li.id);
    drop(gone);
}

/// Accepts what the library kernel has for `li` and queues it for the
/// program, one token byte each. Returns whether more may be waiting.
fn accept_ready(k: &Lkl, l: &Loops, li: &Arc<Listener>) -> bool {
    if li.stop.load(Ordering::Acquire) {
        unwatch_listener(k, l, li);
        return false;
    }
    if li.paused.load(Ordering::Acquire) {
        return false;
    }
    let mut more = true;
    let mut got = 0;
    while got < ACCEPT_BATCH {
        let (nfd, peer) = match k.accept(li.lkl, libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC) {
            Ok(x) => x,
            Err(e) => match errno_of(&e) {
                libc::EAGAIN => {
                    more = false;
                    break;
                }
                libc::EINTR | libc::ECONNABORTED => continue,
                _ => {
                    if !li.stop.load(Ordering::Acquire) {
                        log::error!("lkl: accept: {e}; the listening socket stops accepting");
                        // SAFETY: shutdown on our own descriptor: the
                        // program's accept sees end of stream.
                        unsafe { libc::shutdown(li.token, libc::SHUT_WR) };
                    }
                    unwatch_listener(k, l, li);
                    return false;
                }
            },
        };
        let sv = match super::pair() {
            Ok(sv) => sv,
            Err(Errno(e)) => {
                log::error!(
                    "lkl: no descriptor for an accepted connection: {}",
                    std::io::Error::from_raw_os_error(e)
                );
                let _ = k.close(nfd);
                continue;
            }
        };
        got += 1;
        let conn = Conn::new(nfd, Some(0));
        start(conn.clone(), sv[1], inode(sv[0]));
        let mut q = li.queue.lock();
        q.ready.push_back(Accepted {
            fd: sv[0],
            peer,
            conn,
        });
        q.owed += 1;
    }
    if got > 0 && !post_tokens(li) {
        // The program is behind: accept no more until it catches up
        // (accept4 posts the rest and hands the listener back). Checked
        // again after the flag is up, in case it caught up meanwhile.
        li.paused.store(true, Ordering::SeqCst);
        if !post_tokens(li) {
            return false;
        }
        li.paused.store(false, Ordering::SeqCst);
    }
    more
}

/// Writes the token bytes the listener owes the program; returns whether
/// none is owed any more.
pub(super) fn post_tokens(li: &Listener) -> bool {
    let mut q = li.queue.lock();
    while q.owed > 0 {
        let bytes = [1u8; 256];
        let n = q.owed.min(bytes.len());
        // SAFETY: writes from a live buffer to our own non-blocking end.
        let w = unsafe { libc::write(li.token, bytes.as_ptr() as *const c_void, n) };
        if w <= 0 {
            return std::io::Error::last_os_error().raw_os_error() == Some(libc::EPIPE);
        }
        q.owed -= w as usize;
    }
    true
}

// ------------------------------------------------------------ connects

/// Waits in the library loop for the non-blocking connect of `c` to end,
/// then completes it there.
pub(super) fn watch_connect(c: Arc<Connecting>) -> Result<(), Errno> {
    let k = live().ok_or(Errno(libc::EOPNOTSUPP))?;
    let l = loops()?;
    let id = new_id();
    let lkl = c.conn.lkl;
    ENTRIES.lock().insert(id, Entry::Connect(c));
    let events = EPOLLOUT | EPOLLERR | EPOLLHUP | EPOLLET;
    if let Err(e) = k.epoll_ctl(l.epfd, libc::EPOLL_CTL_ADD, lkl, events, id) {
        ENTRIES.lock().remove(&id);
        return Err(Errno(errno_of(&e)));
    }
    Ok(())
}

fn connect_ready(k: &Lkl, l: &Loops, id: u64, c: &Arc<Connecting>) {
    let lkl = c.conn.lkl;
    let mut err = [0u8; 4];
    let errno = match k.getsockopt(lkl, libc::SOL_SOCKET, libc::SO_ERROR, &mut err) {
        Ok(_) => i32::from_ne_bytes(err),
        Err(e) => errno_of(&e),
    };
    if errno == 0 {
        match k.peer_addr(lkl) {
            Ok(_) => {}
            // Woken before the end: keep waiting.
            Err(e) if errno_of(&e) == libc::ENOTCONN => return,
            Err(_) => {}
        }
    }
    let _ = k.epoll_ctl(l.epfd, libc::EPOLL_CTL_DEL, lkl, 0, 0);
    let gone = ENTRIES.lock().remove(&id);
    if let Some(Entry::Connect(c)) = gone {
        if errno != 0 {
            log::debug!(
                "lkl: connect {}: {}",
                c.dest,
                std::io::Error::from_raw_os_error(errno)
            );
        }
        super::connect_finished(&c, errno);
    }
}
