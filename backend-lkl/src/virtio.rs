//! A virtio-net device (virtio-mmio, version 2, split virtqueues) whose
//! frames travel over an AF_PACKET socket bound to a host interface.
//!
//! The packet socket carries a virtio_net_hdr with every frame
//! (PACKET_VNET_HDR), so checksum offload and TSO/GSO pass straight between
//! the host kernel and the library kernel without segmenting or
//! checksumming in between. Each device has one host thread (like vhost):
//! it sends what the driver queues, moves received frames in, and sleeps in
//! `poll()` on the packet socket and an eventfd that the driver's kicks
//! write. The library kernel, which has one CPU, therefore never runs the
//! host's `sendmsg` itself. That matters on veth, where `sendmsg` also runs
//! the peer's receive path: done inline it took about a third of the
//! kernel's only CPU (unshaped lkl/native went from about 0.5 to 1.0).
//! While the thread is busy sending it also picks up what arrived (the
//! ACKs), so a busy device costs no wake-ups for those.
//!
//! Guest "physical" addresses are host addresses (the library kernel has no
//! MMU), so descriptors point straight into memory; the ring indices are
//! read and written with atomics since the kernel and the device thread
//! share them.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{fence, AtomicBool, AtomicI32, AtomicU16, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::thread::JoinHandle;

use crate::sys::{self, MmioDevice};

const QUEUE_MAX: u32 = 256;
const VNET_HDR: usize = 10; // struct virtio_net_hdr (packet socket)
const VNET_HDR_V1: usize = 12; // + num_buffers (virtio 1.0)
/// Frames taken from the packet socket per receive interrupt at most.
const RX_BATCH: usize = 64;

const F_CSUM: u64 = 1 << 0;
const F_GUEST_CSUM: u64 = 1 << 1;
const F_MAC: u64 = 1 << 5;
const F_GUEST_TSO4: u64 = 1 << 7;
const F_GUEST_TSO6: u64 = 1 << 8;
const F_HOST_TSO4: u64 = 1 << 11;
const F_HOST_TSO6: u64 = 1 << 12;
const F_MRG_RXBUF: u64 = 1 << 15;
const F_VERSION_1: u64 = 1 << 32;
const FEATURES: u64 = F_CSUM
    | F_GUEST_CSUM
    | F_MAC
    | F_GUEST_TSO4
    | F_GUEST_TSO6
    | F_HOST_TSO4
    | F_HOST_TSO6
    | F_MRG_RXBUF
    | F_VERSION_1;

const DESC_F_NEXT: u16 = 1;
const DESC_F_WRITE: u16 = 2;
const AVAIL_F_NO_INTERRUPT: u16 = 1;
const USED_F_NO_NOTIFY: u16 = 1;

#[derive(Default, Clone, Copy)]
struct Queue {
    num: u32,
    ready: bool,
    desc: u64,
    avail: u64,
    used: u64,
    last_avail: u16,
    used_idx: u16,
}

#[derive(Default)]
struct Regs {
    status: u32,
    dev_features_sel: u32,
    drv_features_sel: u32,
    drv_features: u64,
    queue_sel: u32,
}

/// One virtio-net device.
pub(crate) struct NetDevice {
    sock: OwnedFd,
    ifname: String,
    mac: [u8; 6],
    irq: AtomicI32,
    isr: AtomicU32,
    regs: Mutex<Regs>,
    queues: [Mutex<Queue>; 2],
    stop: AtomicBool,
    /// Written by kicks (and `stop`) to wake the device thread.
    wake_fd: OwnedFd,
    /// The device thread is awake or about to be: kicks need not write.
    awake: AtomicBool,
    /// This device, for the wake-ups handed to [`sys::after_kernel`].
    me: Weak<NetDevice>,
    thread: Mutex<Option<JoinHandle<()>>>,
    rx_frames: AtomicU64,
    tx_frames: AtomicU64,
}

fn errno_msg(what: &str) -> String {
    format!("{what}: {}", std::io::Error::last_os_error())
}

impl NetDevice {
    /// Opens the packet socket on `ifname`.
    pub(crate) fn open(ifname: &str, index: usize) -> Result<Arc<NetDevice>, String> {
        let cname =
            std::ffi::CString::new(ifname).map_err(|_| format!("bad interface name {ifname:?}"))?;
        // SAFETY: if_nametoindex reads a C string.
        let ifindex = unsafe { libc::if_nametoindex(cname.as_ptr()) };
        if ifindex == 0 {
            return Err(format!(
                "host interface {ifname} not found (create it, e.g. one end of a veth pair, and bring it up)"
            ));
        }
        let proto = (libc::ETH_P_ALL as u16).to_be();
        // Protocol 0: the socket receives nothing until the bind below
        // names the protocol and the interface. Opened with ETH_P_ALL,
        // the bind would first take the socket off every interface, and
        // that waits for an RCU grace period of the host (about 10 ms).
        // SAFETY: plain socket creation.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(errno_msg(&format!(
                "cannot open a packet socket for {ifname} (needs CAP_NET_RAW)"
            )));
        }
        // SAFETY: fd is a fresh descriptor we own.
        let sock = unsafe { OwnedFd::from_raw_fd(fd) };
        let one: libc::c_int = 1;
        let setopt = |level: i32, name: i32, val: &libc::c_int, what: &str| -> Result<(), String> {
            dropshim_abi::sock::setsockopt_int(sock.as_raw_fd(), level, name, *val)
                .map_err(|e| format!("{what}: {e}"))
        };
        setopt(
            libc::SOL_PACKET,
            libc::PACKET_VNET_HDR,
            &one,
            "PACKET_VNET_HDR",
        )?;
        setopt(libc::SOL_PACKET, 23, &one, "PACKET_IGNORE_OUTGOING")?;
        let big: libc::c_int = 8 << 20;
        let _ = setopt(
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            &big,
            "SO_RCVBUFFORCE",
        );
        let _ = setopt(
            libc::SOL_SOCKET,
            libc::SO_SNDBUFFORCE,
            &big,
            "SO_SNDBUFFORCE",
        );
        // SAFETY: sockaddr_ll is plain data.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = proto;
        sll.sll_ifindex = ifindex as i32;
        // SAFETY: binding with a valid sockaddr_ll.
        let r = unsafe {
            libc::bind(
                sock.as_raw_fd(),
                (&sll as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if r < 0 {
            return Err(errno_msg(&format!(
                "cannot bind the packet socket to {ifname}"
            )));
        }
        // Frames for the library kernel's own MAC address are "other host"
        // frames to the host interface: receive them all.
        // SAFETY: packet_mreq is plain data.
        let mut mreq: libc::packet_mreq = unsafe { std::mem::zeroed() };
        mreq.mr_ifindex = ifindex as i32;
        mreq.mr_type = libc::PACKET_MR_PROMISC as u16;
        // SAFETY: valid socket and option struct.
        unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_ADD_MEMBERSHIP,
                (&mreq as *const libc::packet_mreq).cast(),
                std::mem::size_of::<libc::packet_mreq>() as libc::socklen_t,
            )
        };
        let pid = std::process::id();
        let mac = [
            0x02,
            0x6c,
            (pid >> 16) as u8,
            (pid >> 8) as u8,
            pid as u8,
            index as u8,
        ];
        // SAFETY: eventfd takes no pointers.
        let efd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if efd < 0 {
            return Err(errno_msg("cannot create the device's eventfd"));
        }
        // SAFETY: a fresh descriptor that nothing else owns.
        let wake_fd = unsafe { OwnedFd::from_raw_fd(efd) };
        Ok(Arc::new_cyclic(|me| NetDevice {
            sock,
            ifname: ifname.to_string(),
            mac,
            irq: AtomicI32::new(0),
            isr: AtomicU32::new(0),
            regs: Mutex::new(Regs::default()),
            queues: [Mutex::new(Queue::default()), Mutex::new(Queue::default())],
            stop: AtomicBool::new(false),
            wake_fd,
            awake: AtomicBool::new(true),
            me: me.clone(),
            thread: Mutex::new(None),
            rx_frames: AtomicU64::new(0),
            tx_frames: AtomicU64::new(0),
        }))
    }

    pub(crate) fn set_irq(&self, irq: i32) {
        self.irq.store(irq, Ordering::SeqCst);
    }

    pub(crate) fn counts(&self) -> (u64, u64) {
        (
            self.rx_frames.load(Ordering::Relaxed),
            self.tx_frames.load(Ordering::Relaxed),
        )
    }

    /// Starts the device thread.
    pub(crate) fn start_thread(self: &Arc<Self>) -> Result<(), String> {
        let me = Arc::clone(self);
        let h = std::thread::Builder::new()
            .name(format!("lkl-io-{}", self.ifname))
            .spawn(move || me.io_loop())
            .map_err(|e| format!("cannot start the device thread: {e}"))?;
        if let Ok(mut t) = self.thread.lock() {
            *t = Some(h);
        }
        Ok(())
    }

    pub(crate) fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        self.wake();
        let h = self.thread.lock().ok().and_then(|mut t| t.take());
        if let Some(h) = h {
            let _ = h.join();
        }
    }

    fn wake(&self) {
        sys::write_eventfd(&self.wake_fd);
    }

    /// The driver kicked a queue (on the kernel's thread): frames to send,
    /// or fresh receive buffers. The device thread is woken once the
    /// kicking thread is out of the kernel ([`sys::after_kernel`]).
    fn kick(&self) {
        if self.awake.swap(true, Ordering::SeqCst) {
            return;
        }
        match self.me.upgrade() {
            Some(me) => sys::after_kernel(me),
            None => self.wake(),
        }
    }

    fn tx_has_work(&self) -> bool {
        match self.queues[1].lock() {
            Ok(q) => {
                q.ready
                    // SAFETY: avail ring of a ready queue.
                    && unsafe { ring_u16(q.avail, 2) }.load(Ordering::Acquire) != q.last_avail
            }
            Err(_) => false,
        }
    }

    /// Tells the driver whether to kick the transmit queue
    /// (VRING_USED_F_NO_NOTIFY): not while this thread is awake anyway.
    fn tx_want_kicks(&self, want: bool) {
        if let Ok(q) = self.queues[1].lock() {
            if q.ready {
                // SAFETY: used ring flags of a ready queue.
                unsafe { ring_u16(q.used, 0) }
                    .store(if want { 0 } else { USED_F_NO_NOTIFY }, Ordering::SeqCst);
            }
        }
    }

    /// The device thread: send, receive, and sleep when neither moves.
    /// The driver publishes a frame before it reads the no-kick flag, and
    /// this thread re-arms kicks (and clears `awake`) before it looks for
    /// frames a last time, so a frame is never left with nobody awake.
    fn io_loop(&self) {
        let mut rx = RxState {
            buf: vec![0u8; 65536 + VNET_HDR + 64],
            held: None,
        };
        while !self.stop.load(Ordering::SeqCst) {
            self.tx_want_kicks(false);
            let sent = self.process_tx();
            let (received, starved) = self.rx_drain(&mut rx);
            if sent || received {
                continue;
            }
            self.tx_want_kicks(true);
            self.awake.store(false, Ordering::SeqCst);
            if self.tx_has_work() {
                self.awake.store(true, Ordering::SeqCst);
                continue;
            }
            // A frame waiting for buffers: only a kick (fresh buffers)
            // helps, so the socket is left out of the poll set.
            let mut fds = [
                libc::pollfd {
                    fd: self.wake_fd.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: self.sock.as_raw_fd(),
                    events: if starved { 0 } else { libc::POLLIN },
                    revents: 0,
                },
            ];
            // SAFETY: two valid pollfds.
            unsafe { libc::poll(fds.as_mut_ptr(), 2, 100) };
            self.awake.store(true, Ordering::SeqCst);
            let mut count = 0u64;
            // SAFETY: reads 8 bytes into `count` (non-blocking eventfd).
            unsafe { libc::read(self.wake_fd.as_raw_fd(), (&mut count as *mut u64).cast(), 8) };
        }
    }

    fn interrupt(&self, q: &Queue) {
        // The driver may have asked for no interrupt (NAPI polling); it
        // re-checks the used ring when it re-enables them.
        fence(Ordering::SeqCst);
        // SAFETY: q.avail points at the avail ring the driver gave us.
        let flags = unsafe { ring_u16(q.avail, 0) }.load(Ordering::Acquire);
        if flags & AVAIL_F_NO_INTERRUPT != 0 {
            return;
        }
        self.isr.fetch_or(1, Ordering::SeqCst);
        sys::trigger_irq(self.irq.load(Ordering::Relaxed));
    }

    fn config_byte(&self, off: u64) -> u8 {
        match off {
            0..=5 => self.mac[off as usize],
            8 => 1, // max_virtqueue_pairs (low byte)
            _ => 0,
        }
    }

    /// Transmit: send every available chain (header + frame) on the
    /// socket; true if there was any.
    fn process_tx(&self) -> bool {
        let mut q = match self.queues[1].lock() {
            Ok(q) => q,
            Err(_) => return false,
        };
        if !q.ready {
            return false;
        }
        // One frame is sent straight from the driver's buffers (a gather
        // list, no copy of ours), minus the header's num_buffers field,
        // which the packet socket's 10-byte header does not have.
        let mut iov: Vec<libc::iovec> = Vec::with_capacity(20);
        let mut sent_any = false;
        loop {
            // SAFETY: avail ring of a ready queue.
            let avail_idx = unsafe { ring_u16(q.avail, 2) }.load(Ordering::Acquire);
            if avail_idx == q.last_avail {
                break;
            }
            let slot = u64::from(q.last_avail % q.num as u16);
            // SAFETY: slot < num, inside the avail ring.
            let head = unsafe { ring_u16(q.avail, 4 + 2 * slot) }.load(Ordering::Acquire);
            iov.clear();
            let mut at = 0usize; // offset of the next descriptor in the chain
            let mut idx = head;
            for _ in 0..q.num {
                // SAFETY: idx < num (checked below), inside the descriptor table.
                let d = unsafe { read_desc(q.desc, idx) };
                let (start, end) = (at, at + d.len as usize);
                // The parts of [start, end) outside [VNET_HDR, VNET_HDR_V1).
                for (lo, hi) in [(start, end.min(VNET_HDR)), (start.max(VNET_HDR_V1), end)] {
                    if lo < hi {
                        iov.push(libc::iovec {
                            iov_base: (d.addr as usize + (lo - start)) as *mut libc::c_void,
                            iov_len: hi - lo,
                        });
                    }
                }
                at = end;
                if d.flags & DESC_F_NEXT == 0 || u32::from(d.next) >= q.num {
                    break;
                }
                idx = d.next;
            }
            if at > VNET_HDR_V1 {
                // SAFETY: a zeroed msghdr is valid; we set the gather list.
                let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
                msg.msg_iov = iov.as_mut_ptr();
                msg.msg_iovlen = iov.len();
                // SAFETY: every iovec points into buffers the driver made
                // readable for us until we return them on the used ring.
                let r = unsafe { libc::sendmsg(self.sock.as_raw_fd(), &msg, 0) };
                if r >= 0 {
                    self.tx_frames.fetch_add(1, Ordering::Relaxed);
                }
            }
            q.last_avail = q.last_avail.wrapping_add(1);
            let used_slot = u64::from(q.used_idx % q.num as u16);
            // SAFETY: used ring element inside the ring.
            unsafe {
                ring_u32(q.used, 4 + 8 * used_slot).store(u32::from(head), Ordering::Relaxed);
                ring_u32(q.used, 8 + 8 * used_slot).store(0, Ordering::Relaxed);
            }
            q.used_idx = q.used_idx.wrapping_add(1);
            // SAFETY: used ring index.
            unsafe { ring_u16(q.used, 2) }.store(q.used_idx, Ordering::Release);
            sent_any = true;
        }
        if sent_any {
            self.interrupt(&q);
        }
        sent_any
    }

    /// Receive, without waiting: frames from the packet socket into the
    /// receive queue, every one already there (up to a batch) before one
    /// interrupt. Returns (any delivered, a frame waits for buffers).
    fn rx_drain(&self, rx: &mut RxState) -> (bool, bool) {
        let mut delivered = 0;
        let mut starved = false;
        while delivered < RX_BATCH {
            let n = match rx.held.take() {
                Some(n) => n,
                None => {
                    // SAFETY: receiving into our buffer.
                    let n = unsafe {
                        libc::recv(
                            self.sock.as_raw_fd(),
                            rx.buf.as_mut_ptr().cast(),
                            rx.buf.len(),
                            libc::MSG_DONTWAIT,
                        )
                    };
                    if n < 0 {
                        break;
                    }
                    if n < VNET_HDR as isize + 14 {
                        continue;
                    }
                    n as usize
                }
            };
            match self.deliver(&rx.buf[..VNET_HDR], &rx.buf[VNET_HDR..n]) {
                Delivery::Done => delivered += 1,
                Delivery::Dropped => {}
                Delivery::NoRoom => {
                    rx.held = Some(n);
                    starved = true;
                    break;
                }
            }
        }
        if delivered > 0 || starved {
            // Starved: the driver refills in its poll, which this starts.
            if let Ok(q) = self.queues[0].lock() {
                self.interrupt(&q);
            }
        }
        (delivered > 0, starved)
    }

    /// One frame into the receive queue, whole or not at all.
    fn deliver(&self, hdr: &[u8], frame: &[u8]) -> Delivery {
        let mut q = match self.queues[0].lock() {
            Ok(q) => q,
            Err(_) => return Delivery::Dropped,
        };
        if !q.ready || q.num == 0 {
            return Delivery::Dropped;
        }
        let total = VNET_HDR_V1 + frame.len();
        if !has_room(&q, total) {
            return Delivery::NoRoom;
        }
        let mut written = 0usize;
        let mut nbufs: u16 = 0;
        let mut first_hdr: Option<*mut u8> = None;
        let (start_avail, start_used) = (q.last_avail, q.used_idx);
        while written < total {
            // SAFETY: avail ring of a ready queue.
            let avail_idx = unsafe { ring_u16(q.avail, 2) }.load(Ordering::Acquire);
            if avail_idx == q.last_avail {
                // has_room said otherwise; nothing is published yet, so
                // give the buffers back and try again later.
                q.last_avail = start_avail;
                q.used_idx = start_used;
                return Delivery::NoRoom;
            }
            let slot = u64::from(q.last_avail % q.num as u16);
            // SAFETY: slot inside the avail ring.
            let head = unsafe { ring_u16(q.avail, 4 + 2 * slot) }.load(Ordering::Acquire);
            q.last_avail = q.last_avail.wrapping_add(1);
            let mut idx = head;
            let mut chain_len = 0usize;
            for _ in 0..q.num {
                // SAFETY: idx inside the descriptor table.
                let d = unsafe { read_desc(q.desc, idx) };
                if d.flags & DESC_F_WRITE != 0 {
                    let dst = d.addr as *mut u8;
                    let mut off = 0usize;
                    while off < d.len as usize && written < total {
                        let take;
                        if written < VNET_HDR_V1 {
                            if first_hdr.is_none() && written == 0 && d.len as usize >= VNET_HDR_V1
                            {
                                first_hdr = Some(dst);
                            }
                            let mut h = [0u8; VNET_HDR_V1];
                            h[..VNET_HDR].copy_from_slice(hdr);
                            take = (VNET_HDR_V1 - written).min(d.len as usize - off);
                            // SAFETY: writable guest buffer of d.len bytes.
                            unsafe {
                                std::ptr::copy_nonoverlapping(
                                    h[written..].as_ptr(),
                                    dst.add(off),
                                    take,
                                )
                            };
                        } else {
                            let fo = written - VNET_HDR_V1;
                            take = (frame.len() - fo).min(d.len as usize - off);
                            // SAFETY: writable guest buffer of d.len bytes.
                            unsafe {
                                std::ptr::copy_nonoverlapping(
                                    frame[fo..].as_ptr(),
                                    dst.add(off),
                                    take,
                                )
                            };
                        }
                        off += take;
                        written += take;
                        chain_len += take;
                    }
                }
                if d.flags & DESC_F_NEXT == 0 || u32::from(d.next) >= q.num || written >= total {
                    break;
                }
                idx = d.next;
            }
            let used_slot = u64::from(q.used_idx % q.num as u16);
            // SAFETY: used ring element.
            unsafe {
                ring_u32(q.used, 4 + 8 * used_slot).store(u32::from(head), Ordering::Relaxed);
                ring_u32(q.used, 8 + 8 * used_slot).store(chain_len as u32, Ordering::Relaxed);
            }
            q.used_idx = q.used_idx.wrapping_add(1);
            nbufs += 1;
        }
        if let Some(h) = first_hdr {
            // SAFETY: the first buffer holds the whole 12-byte header.
            unsafe {
                std::ptr::copy_nonoverlapping(nbufs.to_le_bytes().as_ptr(), h.add(VNET_HDR), 2)
            };
        }
        // SAFETY: used ring index.
        unsafe { ring_u16(q.used, 2) }.store(q.used_idx, Ordering::Release);
        self.rx_frames.fetch_add(1, Ordering::Relaxed);
        Delivery::Done
    }

    fn reset(&self) {
        for q in &self.queues {
            if let Ok(mut q) = q.lock() {
                *q = Queue::default();
            }
        }
        self.isr.store(0, Ordering::SeqCst);
    }
}

impl MmioDevice for NetDevice {
    fn read(&self, off: u64, size: u32) -> u64 {
        if off >= 0x100 {
            let mut v = 0u64;
            for i in 0..u64::from(size.min(8)) {
                v |= u64::from(self.config_byte(off - 0x100 + i)) << (8 * i);
            }
            return v;
        }
        let regs = match self.regs.lock() {
            Ok(r) => r,
            Err(_) => return 0,
        };
        let sel = regs.queue_sel as usize;
        let v: u64 = match off {
            0x000 => 0x7472_6976, // "virt"
            0x004 => 2,
            0x008 => 1, // network card
            0x00c => 0x4c4b_4c44,
            0x010 => {
                if regs.dev_features_sel == 0 {
                    FEATURES & 0xffff_ffff
                } else if regs.dev_features_sel == 1 {
                    FEATURES >> 32
                } else {
                    0
                }
            }
            0x034 if sel < 2 => u64::from(QUEUE_MAX),
            0x044 => self
                .queues
                .get(sel)
                .and_then(|q| q.lock().ok())
                .map_or(0, |q| u64::from(q.ready)),
            0x060 => u64::from(self.isr.load(Ordering::SeqCst)),
            0x070 => u64::from(regs.status),
            0x0fc => 0,
            _ => 0,
        };
        v
    }

    fn write(&self, off: u64, val: u64, _size: u32) {
        let v32 = val as u32;
        if off == 0x050 {
            // Queue notify (receive buffers or frames to send): wake the
            // device thread.
            if v32 <= 1 {
                self.kick();
            }
            return;
        }
        if off == 0x064 {
            self.isr.fetch_and(!v32, Ordering::SeqCst);
            return;
        }
        let mut regs = match self.regs.lock() {
            Ok(r) => r,
            Err(_) => return,
        };
        let sel = regs.queue_sel as usize;
        let with_q = |f: &mut dyn FnMut(&mut Queue)| {
            if let Some(Ok(mut q)) = self.queues.get(sel).map(|q| q.lock()) {
                f(&mut q);
            }
        };
        match off {
            0x014 => regs.dev_features_sel = v32,
            0x020 => {
                if regs.drv_features_sel == 0 {
                    regs.drv_features = (regs.drv_features & !0xffff_ffff) | u64::from(v32);
                } else if regs.drv_features_sel == 1 {
                    regs.drv_features = (regs.drv_features & 0xffff_ffff) | (u64::from(v32) << 32);
                }
            }
            0x024 => regs.drv_features_sel = v32,
            0x030 => regs.queue_sel = v32,
            0x038 => with_q(&mut |q| q.num = v32.min(QUEUE_MAX)),
            0x044 => with_q(&mut |q| {
                q.ready = v32 == 1;
                q.last_avail = 0;
                q.used_idx = 0;
            }),
            0x070 => {
                regs.status = v32;
                if v32 == 0 {
                    drop(regs);
                    self.reset();
                }
            }
            0x080 => with_q(&mut |q| q.desc = (q.desc & !0xffff_ffff) | val),
            0x084 => with_q(&mut |q| q.desc = (q.desc & 0xffff_ffff) | (val << 32)),
            0x090 => with_q(&mut |q| q.avail = (q.avail & !0xffff_ffff) | val),
            0x094 => with_q(&mut |q| q.avail = (q.avail & 0xffff_ffff) | (val << 32)),
            0x0a0 => with_q(&mut |q| q.used = (q.used & !0xffff_ffff) | val),
            0x0a4 => with_q(&mut |q| q.used = (q.used & 0xffff_ffff) | (val << 32)),
            _ => {}
        }
    }
}

impl sys::AfterKernel for NetDevice {
    fn run_after_kernel(&self) {
        self.wake();
    }
}

/// The device thread's receive buffer, and the length of a frame in it
/// that waits for receive buffers.
struct RxState {
    buf: Vec<u8>,
    held: Option<usize>,
}

enum Delivery {
    Done,
    /// Not enough receive buffers yet: keep the frame.
    NoRoom,
    Dropped,
}

/// Whether the driver's available receive chains hold `need` bytes.
fn has_room(q: &Queue, need: usize) -> bool {
    // SAFETY: avail ring of a ready queue (the caller holds its lock).
    let avail_idx = unsafe { ring_u16(q.avail, 2) }.load(Ordering::Acquire);
    let mut have = 0usize;
    let mut at = q.last_avail;
    while at != avail_idx && have < need {
        let slot = u64::from(at % q.num as u16);
        // SAFETY: slot < num, inside the avail ring.
        let mut idx = unsafe { ring_u16(q.avail, 4 + 2 * slot) }.load(Ordering::Acquire);
        for _ in 0..q.num {
            if u32::from(idx) >= q.num {
                break;
            }
            // SAFETY: idx < num, inside the descriptor table.
            let d = unsafe { read_desc(q.desc, idx) };
            if d.flags & DESC_F_WRITE != 0 {
                have += d.len as usize;
            }
            if d.flags & DESC_F_NEXT == 0 {
                break;
            }
            idx = d.next;
        }
        at = at.wrapping_add(1);
    }
    have >= need
}

struct Desc {
    addr: u64,
    len: u32,
    flags: u16,
    next: u16,
}

/// # Safety
/// `table` must be a live descriptor table with more than `idx` entries.
unsafe fn read_desc(table: u64, idx: u16) -> Desc {
    let p = (table + 16 * u64::from(idx)) as *const u8;
    // SAFETY: per the function contract; unaligned-safe reads.
    unsafe {
        Desc {
            addr: std::ptr::read_unaligned(p.cast::<u64>()),
            len: std::ptr::read_unaligned(p.add(8).cast::<u32>()),
            flags: std::ptr::read_unaligned(p.add(12).cast::<u16>()),
            next: std::ptr::read_unaligned(p.add(14).cast::<u16>()),
        }
    }
}

/// # Safety
/// `base + off` must be a live, 2-byte aligned ring field.
unsafe fn ring_u16<'a>(base: u64, off: u64) -> &'a AtomicU16 {
    // SAFETY: per the function contract.
    unsafe { &*((base + off) as *const AtomicU16) }
}

/// # Safety
/// `base + off` must be a live, 4-byte aligned ring field.
unsafe fn ring_u32<'a>(base: u64, off: u64) -> &'a AtomicU32 {
    // SAFETY: per the function contract.
    unsafe { &*((base + off) as *const AtomicU32) }
}
