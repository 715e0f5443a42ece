//! The uml backend's reach into programs that bypass libc: their TCP
//! connections are made, and accepted, by the device's User Mode Linux
//! instance.
//!
//! Owns: answering the `connect()`, `bind()`, `listen()`, `accept()` and
//! `getsockopt(SO_ERROR)` calls the uml filter traps ([`super::seccomp::Mode::Uml`]), with the
//! same requests, over the same channel, as the shim's in
//! `shim/src/uml.rs` (through `dropshim_backend_uml::client`):
//! - `connect()` on an IPv4/IPv6 TCP socket to a non-loopback destination
//!   gets a bridge (a host TCP connection relayed by the guest agent to a
//!   guest MPTCP socket connected to the destination), installed in the
//!   program at the socket's own descriptor number
//!   (`SECCOMP_IOCTL_NOTIF_ADDFD` with `SECCOMP_ADDFD_FLAG_SETFD`), keeping
//!   its O_NONBLOCK and close-on-exec; the call returns 0. On a
//!   non-blocking socket a gate takes that place and the call says
//!   EINPROGRESS; the gate turns writable when the guest connect has
//!   ended, and the program's `getsockopt(SO_ERROR)` (the only
//!   getsockopt trapped), `getpeername()` or `connect()` then puts the
//!   bridge there, registered again in the program's epoll sets.
//! - `bind()` to a non-loopback address is recorded, not made on the host
//!   (which need not hold that address: the instance owns it).
//! - `listen()` gets the instance's listener channel (a Unix socket that
//!   turns readable when the guest has accepted a connection), installed
//!   at the socket's number the same way, so poll and epoll work on it.
//! - `accept()`/`accept4()` on such a channel receives the accepted
//!   connection's bridge, writes the peer's address into the program's
//!   buffer and installs the bridge as the call's result.
//! - `getsockname()`/`getpeername()` on a bridge or channel answer with
//!   the guest socket's addresses, which are what the peer sees.
//!
//! Socket options the program set before connect() or listen() (keepalive
//! and its timers, buffer sizes, TCP_NODELAY, SO_REUSEADDR, IPV6_V6ONLY
//! and the others in [`CARRIED`]) are read from the program's own socket
//! at that moment, and those that differ from a fresh socket's are made
//! on the guest socket; buffer sizes and when to send small segments also
//! on the bridge, whose end the program then holds. setsockopt() itself
//! is not trapped: it acts on the program's socket as usual.
//!
//! Reads and writes then go through the bridges with no interception.
//! Every other call continues untouched, and so does every call of a
//! process linked with libc, which the shim serves: the filter is there
//! for the programs that bypass libc, started directly or by such a
//! process.
//!
//! A blocking `connect()` or `accept()` is waited for by a worker thread
//! ([`Work`]), so the supervisor answers the program's other calls
//! meanwhile; a signal for a thread blocked in either ends the wait with
//! `ERESTARTSYS`, as on a kernel socket. A blocking connect goes on
//! behind a gate like a non-blocking one, so after the signal the
//! connection is still in progress, as a kernel socket's would be.
//!
//! The program's memory (the address connect() names) is read through one
//! function, [`read_program_memory`], which checks after the read that the
//! call still stands (`SECCOMP_IOCTL_NOTIF_ID_VALID`), so the bytes are
//! those of the thread that made the call.

use super::seccomp::{ignore_gone, ioctl_ptr, notif_valid, Call, Mode, Supervisor};
use dropshim_abi::{is_local_destination, is_loopback};
use dropshim_backend_uml::client::{self, ClientError};
use dropshim_backend_uml::proto::{Kind, Opt, Reply, Request, REPLY_LEN};
use dropshim_backend_uml::sys;
use dropshim_conf::Action;
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// Lets the trapped call run as if it had not been trapped.
const CONTINUE: u32 = libc::SECCOMP_USER_NOTIF_FLAG_CONTINUE as u32;

impl Supervisor {
    /// Answers one trapped call in uml mode.
    pub(super) fn answer_uml(&mut self, call: &Call) -> io::Result<()> {
        let Mode::Uml { device, policy, .. } = self.mode.clone() else {
            return self.respond(call.id, 0, 0, CONTINUE).or_else(ignore_gone);
        };
        // A process linked with libc is the shim's: its calls (the shim's
        // own among them) run untouched. The filter is there for the
        // programs it starts that bypass libc.
        if self.guest.carries_the_shim(call.pid) {
            return self.respond(call.id, 0, 0, CONTINUE).or_else(ignore_gone);
        }
        let nr = i64::from(call.nr);
        let answer = if nr == libc::SYS_connect {
            self.uml_connect(call, &device, &policy)
        } else if nr == libc::SYS_bind {
            self.uml_bind(call)
        } else if nr == libc::SYS_listen {
            self.uml_listen(call, &device, &policy)
        } else if nr == libc::SYS_accept {
            self.uml_accept(call, 0)
        } else if nr == libc::SYS_accept4 {
            self.uml_accept(call, call.args[3] as i32)
        } else if nr == libc::SYS_getsockname {
            self.uml_name(call, false)
        } else if nr == libc::SYS_getpeername {
            self.uml_name(call, true)
        } else if nr == libc::SYS_getsockopt {
            self.uml_so_error(call)
        } else {
            Ok(Answer::Continue)
        };
        match answer {
            Ok(Answer::Continue) => self.respond(call.id, 0, 0, CONTINUE),
            Ok(Answer::Value(v)) => self.respond(call.id, v, 0, 0),
            Ok(Answer::Done) => Ok(()),
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
        // A gate (a connect in progress) first: it is no TCP socket.
        if self.guest.pending.contains_key(&target.inode()) {
            // connect() again while one is in progress, as on a kernel
            // socket: its outcome once it has ended; until then EALREADY
            // on a non-blocking socket, and a blocking one waits for it
            // (the call a signal interrupted, restarted or made again).
            return match self.settle(call, &target, fd, Settle::ByConnect)? {
                None if is_nonblocking(&target)? => {
                    Err(io::Error::from_raw_os_error(libc::EALREADY))
                }
                None => {
                    self.wait_for_connect(call, target, fd)?;
                    Ok(Answer::Done)
                }
                Some(0) => Ok(Answer::Value(0)),
                Some(errno) => Err(io::Error::from_raw_os_error(errno)),
            };
        }
        let Some(domain) = target.tcp_domain() else {
            return Ok(Answer::Continue); // not a TCP socket: not ours
        };
        if target.peer().is_some() {
            return Ok(Answer::Continue); // connected already: EISCONN
        }
        let Some(dest) = self.read_sockaddr(call, call.args[1], call.args[2])? else {
            return Ok(Answer::Continue); // AF_UNSPEC and the like
        };
        if is_local_destination(dest.ip()) {
            // The guest's loopback is not the host's.
            return Ok(Answer::Continue);
        }
        let mut req = Request::new(Kind::Connect);
        req.domain = domain;
        req.addr = Some(dest);
        let inode = target.inode();
        req.bind = self
            .guest
            .bound
            .get(&inode)
            .copied()
            .or_else(|| target.bound());
        req.mptcp = policy.decide(&dest) == Action::Mptcp;
        req.opts = self.guest.carried(&target, domain);
        self.guest.bound.remove(&inode);
        let nonblocking = is_nonblocking(&target)?;
        self.log.debug(|| {
            format!(
                "pid {}: connect(fd {fd}, {dest}) through the uml instance of {device:?}",
                call.pid
            )
        });
        let gate = self.start_connect(call, &target, fd, device, req)?;
        if nonblocking {
            return Err(io::Error::from_raw_os_error(libc::EINPROGRESS));
        }
        // A blocking connect waits for the guest's handshake behind the
        // same gate: a signal then finds the connection in progress, as a
        // kernel socket's, and the program's other calls go on meanwhile.
        self.wait_for_connect(call, gate, fd)?;
        Ok(Answer::Done)
    }

    /// Has a worker wait for the connect in progress behind `gate` (the
    /// program's `fd`), then answer the blocking connect() `call` with its
    /// outcome ([`Supervisor::finish`]), or with ERESTARTSYS if a signal
    /// comes first.
    fn wait_for_connect(&mut self, call: &Call, gate: Target, fd: RawFd) -> io::Result<()> {
        self.hand_over(Work::Connect {
            call: call.clone(),
            gate,
            fd,
        })
    }

    /// Gives `work` to a worker thread and remembers it until it reports.
    fn hand_over(&mut self, work: Work) -> io::Result<()> {
        self.spawn_worker(&work)?;
        self.inflight.insert(work.call().id, work);
        Ok(())
    }

    /// Starts a thread that waits for what `work` waits for, then reports
    /// to the supervisor's loop ([`Supervisor::finish`]).
    pub(super) fn spawn_worker(&self, work: &Work) -> io::Result<()> {
        let listener = self.listener();
        let wake = Arc::clone(&self.wake);
        let tx = self.done.0.clone();
        let (id, tid) = (work.call().id, work.call().pid);
        let job = match work {
            Work::Accept { chan, .. } => Job::Accept(chan.copy.try_clone()?),
            Work::Connect { gate, .. } => {
                let outcome = self
                    .guest
                    .pending
                    .get(&gate.inode())
                    .map(|p| Arc::clone(&p.outcome))
                    .ok_or_else(|| io::Error::from_raw_os_error(libc::EALREADY))?;
                Job::Connect(gate.copy.try_clone()?, outcome)
            }
        };
        std::thread::Builder::new()
            .name("dropshim-wait".into())
            .spawn(move || {
                let listener = listener.as_raw_fd();
                let found =
                    match job {
                        Job::Accept(chan) => wait_until(
                            listener,
                            id,
                            tid,
                            &chan,
                            libc::POLLIN,
                            || match receive_conn(chan.as_raw_fd()) {
                                Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => None,
                                got => Some(Found::Accepted(got)),
                            },
                        ),
                        // The gate turns writable when the connect has ended.
                        Job::Connect(gate, outcome) => {
                            wait_until(listener, id, tid, &gate, libc::POLLOUT, || {
                                let done = outcome.lock().unwrap_or_else(|p| p.into_inner());
                                done.is_some().then_some(Found::Connected)
                            })
                        }
                    };
                if tx.send(Finished { id, found }).is_ok() {
                    let one = 1u64.to_ne_bytes();
                    // SAFETY: writes 8 bytes from our buffer to an eventfd
                    // the Arc keeps open.
                    unsafe { libc::write(wake.as_raw_fd(), one.as_ptr().cast(), one.len()) };
                }
            })?;
        Ok(())
    }

    /// Answers the call a worker waited for.
    pub(super) fn finish(&mut self, done: Finished) {
        let Some(work) = self.inflight.remove(&done.id) else {
            return;
        };
        let answer = match (work, done.found) {
            (_, Found::Gone) => Ok(()),
            (work, Found::Interrupted) => self
                .respond(work.call().id, 0, -ERESTARTSYS, 0)
                .or_else(ignore_gone),
            (
                Work::Accept {
                    call,
                    chan,
                    flags,
                    domain,
                    opts,
                },
                Found::Accepted(got),
            ) => match got {
                Ok(got) => self.deliver_accept(&call, &chan, flags, domain, &opts, got),
                Err(e) => self.fail(&call, e),
            },
            (Work::Connect { call, gate, fd }, Found::Connected) => {
                match self.settle(&call, &gate, fd, Settle::ByConnect) {
                    Ok(Some(0)) => self.respond(call.id, 0, 0, 0).or_else(ignore_gone),
                    Ok(Some(errno)) => self.fail(&call, io::Error::from_raw_os_error(errno)),
                    // Another of the program's calls settled it meanwhile.
                    Ok(None) => match Target::open(call.pid, fd).and_then(|t| t.peer()) {
                        Some(_) => self.respond(call.id, 0, 0, 0).or_else(ignore_gone),
                        None => self.fail(&call, io::Error::from_raw_os_error(libc::ECONNABORTED)),
                    },
                    Err(e) => self.fail(&call, e),
                }
            }
            (work, _) => {
                let call = work.call().clone();
                self.fail(&call, io::Error::other("a worker answered another call"))
            }
        };
        if let Err(e) = answer {
            self.log
                .debug(|| format!("answering a call after its wait: {e}"));
        }
    }

    /// The call fails with `e`'s errno, unless it no longer stands.
    fn fail(&self, call: &Call, e: io::Error) -> io::Result<()> {
        if !self.id_valid(call.id) {
            return Ok(());
        }
        let errno = e.raw_os_error().unwrap_or(libc::ECONNABORTED);
        self.respond(call.id, 0, -errno, 0).or_else(ignore_gone)
    }

    /// Starts a connect through the instance: a gate takes the socket's
    /// place (the connection in progress, as a kernel socket in SYN_SENT)
    /// and the request goes to the device's supervisor; its reply is
    /// taken on this supervisor's own loop ([`Supervisor::connect_polls`]),
    /// so a detached copy of it goes on with the connects in progress. When
    /// the reply comes the gate turns writable (and hung up), so poll,
    /// select and epoll wake, and the program's next
    /// getsockopt(SO_ERROR), getpeername() or connect() on it puts the
    /// bridge (or, if the connect failed, a fresh socket) in the gate's
    /// place ([`Supervisor::settle`]). A non-blocking connect() then says
    /// EINPROGRESS; a blocking one waits for that moment. Returns the
    /// supervisor's copy of the gate.
    fn start_connect(
        &mut self,
        call: &Call,
        target: &Target,
        fd: RawFd,
        device: &str,
        req: Request,
    ) -> io::Result<Target> {
        let (gate, waker) = gate()?;
        let outcome: Arc<Mutex<Option<Outcome>>> = Arc::default();
        let (domain, opts) = (req.domain, req.opts.clone());
        let chan = match client::send_request(device, &req) {
            // SAFETY: a descriptor just opened is ours alone.
            Ok(chan) => Some(unsafe { OwnedFd::from_raw_fd(chan) }),
            Err(e) => {
                *outcome.lock().unwrap_or_else(|p| p.into_inner()) = Some(Err(connect_errno(&e)));
                None
            }
        };
        // On failure the request's channel is dropped, which cancels it.
        self.install_at(call, target, fd, &gate)?;
        let ino = inode_of(gate.as_raw_fd())?;
        if self.guest.pending.len() >= 1024 {
            // Gates the program closed after their connect ended were
            // never settled: let their bridges go.
            self.guest
                .pending
                .retain(|_, p| p.outcome.lock().map(|o| o.is_none()).unwrap_or(false));
        }
        // A request that could not be sent has its outcome already: the
        // gate wakes at once.
        let waker = chan.is_some().then_some(waker);
        self.guest.pending.insert(
            ino,
            Pending {
                domain,
                opts,
                outcome,
                request: chan.zip(waker),
            },
        );
        Ok(Target {
            tgid: target.tgid,
            copy: gate,
        })
    }

    /// What the loop polls for the connects in progress: per connect, its
    /// request's channel (the reply) and the gate's other end (hang-up:
    /// the program closed the socket), with the gates' inodes in the same
    /// order, two descriptors each.
    pub(super) fn connect_polls(&self) -> (Vec<u64>, Vec<libc::pollfd>) {
        let mut inodes = Vec::new();
        let mut fds = Vec::new();
        for (ino, p) in &self.guest.pending {
            if let Some((chan, waker)) = &p.request {
                inodes.push(*ino);
                for (fd, events) in [(chan, libc::POLLIN), (waker, 0)] {
                    fds.push(libc::pollfd {
                        fd: fd.as_raw_fd(),
                        events,
                        revents: 0,
                    });
                }
            }
        }
        (inodes, fds)
    }

    /// Ends the connects whose reply came, or whose program closed the
    /// socket first, after a poll of [`Supervisor::connect_polls`]'s
    /// descriptors. Closing the gate's other end wakes the program;
    /// closing the channel of a cancelled one tells the device's
    /// supervisor to abandon it.
    pub(super) fn connects_polled(&mut self, inodes: &[u64], fds: &[libc::pollfd]) {
        for (ino, pair) in inodes.iter().zip(fds.chunks(2)) {
            let [reply, hangup] = pair else { continue };
            if reply.revents == 0 && hangup.revents == 0 {
                continue;
            }
            let Some(p) = self.guest.pending.get_mut(ino) else {
                continue;
            };
            let Some((chan, waker)) = p.request.take() else {
                continue;
            };
            let res = if reply.revents != 0 {
                match client::receive_reply(chan.as_raw_fd()) {
                    Ok((reply, Some(b))) if reply.errno == 0 => {
                        // SAFETY: a descriptor just received is ours alone.
                        Ok((reply, unsafe { OwnedFd::from_raw_fd(b) }))
                    }
                    Ok((reply, other)) => {
                        if let Some(b) = other {
                            // SAFETY: a descriptor just received is ours alone.
                            drop(unsafe { OwnedFd::from_raw_fd(b) });
                        }
                        Err(if reply.errno == 0 {
                            libc::ECONNABORTED
                        } else {
                            reply.errno
                        })
                    }
                    Err(e) => Err(connect_errno(&e)),
                }
            } else {
                Err(connect_errno(&ClientError::Cancelled))
            };
            *p.outcome.lock().unwrap_or_else(|p| p.into_inner()) = Some(res);
            drop(chan);
            drop(waker);
        }
    }

    /// If the connect in progress behind the gate at the program's `fd`
    /// has ended, puts its outcome in the gate's place (the bridge, or a
    /// fresh socket if it failed), registered again in the program's epoll
    /// sets as the gate was, and returns its errno (0: connected). None
    /// while it goes on.
    fn settle(
        &mut self,
        call: &Call,
        target: &Target,
        fd: RawFd,
        how: Settle,
    ) -> io::Result<Option<i32>> {
        let ino = target.inode();
        let Some(p) = self.guest.pending.get(&ino) else {
            return Ok(None);
        };
        let Some(outcome) = p.outcome.lock().unwrap_or_else(|p| p.into_inner()).take() else {
            return Ok(None);
        };
        let Some(p) = self.guest.pending.remove(&ino) else {
            return Ok(None);
        };
        let (new, errno) = match outcome {
            Ok((reply, bridge)) => {
                client::apply_to_bridge(bridge.as_raw_fd(), &p.opts);
                self.guest
                    .remember(&bridge, p.domain, reply.local, reply.peer)?;
                if how == Settle::ByConnect {
                    // The program's connect() returns 0: its socket is
                    // connected now, and says EISCONN to the next one, as
                    // a kernel socket does after such a connect().
                    mark_connected(&bridge);
                }
                (bridge, 0)
            }
            Err(errno) => {
                // SAFETY: socket(2) takes integers only.
                let raw =
                    unsafe { libc::socket(p.domain, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
                if raw < 0 {
                    return Err(io::Error::last_os_error());
                }
                // SAFETY: just created, ours alone.
                (unsafe { OwnedFd::from_raw_fd(raw) }, errno)
            }
        };
        let epolls = epoll_registrations(target.tgid, fd, ino);
        self.install_at(call, target, fd, &new)?;
        let sets: Vec<(Target, u32, u64)> = epolls
            .into_iter()
            .filter_map(|(epfd, events, data)| Some((Target::open(call.pid, epfd)?, events, data)))
            .collect();
        if !sets.is_empty() {
            let failed = reregister(&new, fd, &sets);
            if let Err(e) = failed {
                self.log
                    .debug(|| format!("pid {}: epoll again for fd {fd}: {e}", call.pid));
            }
        }
        Ok(Some(errno))
    }

    /// getsockopt(SOL_SOCKET, SO_ERROR) on a gate: 0 while the connect
    /// goes on (as the kernel says), then its outcome, once.
    fn uml_so_error(&mut self, call: &Call) -> io::Result<Answer> {
        let fd = call.args[0] as i32;
        let Some(target) = Target::open(call.pid, fd) else {
            return Ok(Answer::Continue);
        };
        if !self.guest.pending.contains_key(&target.inode()) {
            return Ok(Answer::Continue);
        }
        let (val, lenp) = (call.args[3], call.args[4]);
        let len = read_program_memory(self, call, lenp, 4)?;
        let room = i32::from_ne_bytes([len[0], len[1], len[2], len[3]]);
        if room < 0 {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        let errno = self.settle(call, &target, fd, Settle::Asked)?.unwrap_or(0);
        let n = (room as usize).min(4);
        write_program_memory(self, call, val, &errno.to_ne_bytes()[..n])?;
        write_program_memory(self, call, lenp, &(n as u32).to_ne_bytes())?;
        Ok(Answer::Value(0))
    }

    /// Puts `new` at the program's descriptor `fd` in place of the socket
    /// there, with the socket's O_NONBLOCK and the descriptor's
    /// close-on-exec.
    pub(super) fn install_at(
        &self,
        call: &Call,
        target: &Target,
        fd: RawFd,
        new: &OwnedFd,
    ) -> io::Result<()> {
        let flags = fcntl(target.copy.as_raw_fd(), libc::F_GETFL, 0)?;
        if flags & libc::O_NONBLOCK != 0 {
            fcntl(
                new.as_raw_fd(),
                libc::F_SETFL,
                libc::O_RDWR | libc::O_NONBLOCK,
            )?;
        }
        let cloexec = fd_cloexec(target.tgid, fd);
        let mut addfd = libc::seccomp_notif_addfd {
            id: call.id,
            flags: libc::SECCOMP_ADDFD_FLAG_SETFD as u32,
            srcfd: new.as_raw_fd() as u32,
            newfd: fd as u32,
            newfd_flags: if cloexec { libc::O_CLOEXEC as u32 } else { 0 },
        };
        ioctl_ptr(self.fd(), libc::SECCOMP_IOCTL_NOTIF_ADDFD, &mut addfd).map(drop)
    }

    /// The socket address at `addr` (`len` bytes) in the program's memory.
    pub(super) fn read_sockaddr(
        &self,
        call: &Call,
        addr: u64,
        len: u64,
    ) -> io::Result<Option<SocketAddr>> {
        let len = (len as usize).min(dropshim_abi::SOCKADDR_STORAGE_LEN);
        let bytes = read_program_memory(self, call, addr, len)?;
        Ok(dropshim_abi::decode(&bytes))
    }

    /// bind() to a guest address: recorded for the listen() or connect()
    /// that follows; the host never binds it.
    fn uml_bind(&mut self, call: &Call) -> io::Result<Answer> {
        let fd = call.args[0] as i32;
        let Some(target) = Target::open(call.pid, fd) else {
            return Ok(Answer::Continue);
        };
        let Some(domain) = target.tcp_domain() else {
            return Ok(Answer::Continue);
        };
        let Some(local) = self.read_sockaddr(call, call.args[1], call.args[2])? else {
            return Ok(Answer::Continue);
        };
        // An IPv4-mapped loopback (`::ffff:127.0.0.1` on an AF_INET6
        // socket) is loopback too, as for the shim, lkl and the policy.
        if is_loopback(local.ip()) || (domain == libc::AF_INET) != local.is_ipv4() {
            // Loopback stays on the host; a family mismatch gets the
            // kernel's own error.
            return Ok(Answer::Continue);
        }
        let inode = target.inode();
        if self.guest.bound.contains_key(&inode) || target.bound().is_some() {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        self.guest.bound.insert(inode, local);
        Ok(Answer::Value(0))
    }

    fn uml_listen(
        &mut self,
        call: &Call,
        device: &str,
        policy: &dropshim_conf::Policy,
    ) -> io::Result<Answer> {
        let fd = call.args[0] as i32;
        let Some(target) = Target::open(call.pid, fd) else {
            return Ok(Answer::Continue);
        };
        let Some(domain) = target.tcp_domain() else {
            return Ok(Answer::Continue);
        };
        if target.bound().is_some() {
            return Ok(Answer::Continue); // bound on the host (loopback)
        }
        let inode = target.inode();
        let bound = self.guest.bound.get(&inode).copied();
        let local = bound.unwrap_or_else(|| wildcard(domain));
        let mut req = Request::new(Kind::Listen);
        req.domain = domain;
        req.addr = bound;
        req.backlog = call.args[1] as i32;
        req.mptcp = policy.listeners && policy.decide_bind(&local) == Action::Mptcp;
        req.opts = self.guest.carried(&target, domain);
        let (reply, chan) = ask(&self.log, device, &req)?;
        self.guest
            .remember(&chan, domain, reply.local.or(bound), None)?;
        self.guest.bound.remove(&inode);
        self.guest
            .listeners
            .insert(inode_of(chan.as_raw_fd())?, (domain, req.opts));
        self.install_at(call, &target, fd, &chan)?;
        self.log.debug(|| {
            format!(
                "pid {}: listen(fd {fd}, {local}) in the uml instance of {device:?}",
                call.pid
            )
        });
        Ok(Answer::Value(0))
    }

    /// accept()/accept4() on a listener channel: the next connection the
    /// guest accepted, as a new descriptor in the program.
    fn uml_accept(&mut self, call: &Call, flags: i32) -> io::Result<Answer> {
        let fd = call.args[0] as i32;
        let Some(target) = Target::open(call.pid, fd) else {
            return Ok(Answer::Continue);
        };
        let Some((domain, opts)) = self.guest.listeners.get(&target.inode()).cloned() else {
            return Ok(Answer::Continue);
        };
        if flags & !(libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC) != 0 {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        let status = fcntl(target.copy.as_raw_fd(), libc::F_GETFL, 0)?;
        let nonblocking = status & libc::O_NONBLOCK != 0;
        let inode = target.inode();
        // A connection taken for a call that was interrupted first.
        if let Some(got) = self.guest.stash.get_mut(&inode).and_then(|q| q.pop()) {
            self.deliver_accept(call, &target, flags, domain, &opts, got)?;
            return Ok(Answer::Done);
        }
        match receive_conn(target.copy.as_raw_fd()) {
            Ok(got) => self.deliver_accept(call, &target, flags, domain, &opts, got)?,
            Err(e) if e.raw_os_error() == Some(libc::EAGAIN) && !nonblocking => {
                // A blocking accept: a worker waits for the connection.
                self.hand_over(Work::Accept {
                    call: call.clone(),
                    chan: target,
                    flags,
                    domain,
                    opts,
                })?;
            }
            Err(e) => return Err(e),
        }
        Ok(Answer::Done)
    }

    /// Installs an accepted connection's bridge in the program as the
    /// result of its accept() and writes the peer's address. If the call
    /// no longer stands, the connection is kept for the listener's next
    /// accept(), as the kernel keeps it queued.
    fn deliver_accept(
        &mut self,
        call: &Call,
        chan: &Target,
        flags: i32,
        domain: i32,
        opts: &[Opt],
        got: Received,
    ) -> io::Result<()> {
        let (n, buf, conn) = got;
        let (Some(reply), Some(conn)) = (Reply::decode(&buf[..n]), conn) else {
            self.log
                .warn("the uml instance went away; a listener of the program is dead");
            return self.fail(call, io::Error::from_raw_os_error(libc::EINVAL));
        };
        let res = self.install_accepted(call, flags, domain, opts, &reply, &conn);
        match res {
            Err(_) if !self.id_valid(call.id) => {
                let q = self.guest.stash.entry(chan.inode()).or_default();
                q.insert(0, (n, buf, Some(conn)));
                Ok(())
            }
            Err(e) => self.fail(call, e),
            Ok(()) => Ok(()),
        }
    }

    fn install_accepted(
        &mut self,
        call: &Call,
        flags: i32,
        domain: i32,
        opts: &[Opt],
        reply: &Reply,
        conn: &OwnedFd,
    ) -> io::Result<()> {
        let status = fcntl(conn.as_raw_fd(), libc::F_GETFL, 0)?;
        let nonblock = if flags & libc::SOCK_NONBLOCK != 0 {
            libc::O_NONBLOCK
        } else {
            0
        };
        fcntl(
            conn.as_raw_fd(),
            libc::F_SETFL,
            (status & !libc::O_NONBLOCK) | nonblock,
        )?;
        // An accepted socket inherits its listener's options.
        client::apply_to_bridge(conn.as_raw_fd(), opts);
        self.guest.remember(conn, domain, reply.local, reply.peer)?;
        if let Some(peer) = reply.peer {
            self.write_name(call, domain, peer)?;
        }
        let mut addfd = libc::seccomp_notif_addfd {
            id: call.id,
            flags: libc::SECCOMP_ADDFD_FLAG_SEND as u32,
            srcfd: conn.as_raw_fd() as u32,
            newfd: 0,
            newfd_flags: if flags & libc::SOCK_CLOEXEC != 0 {
                libc::O_CLOEXEC as u32
            } else {
                0
            },
        };
        ioctl_ptr(self.fd(), libc::SECCOMP_IOCTL_NOTIF_ADDFD, &mut addfd)?;
        Ok(())
    }

    /// getsockname()/getpeername() on a bridge or listener channel: the
    /// guest socket's addresses, which are what the peer sees.
    fn uml_name(&mut self, call: &Call, peer: bool) -> io::Result<Answer> {
        let fd = call.args[0] as i32;
        let Some(target) = Target::open(call.pid, fd) else {
            return Ok(Answer::Continue);
        };
        if let Some(p) = self.guest.pending.get(&target.inode()) {
            let domain = p.domain;
            if self.settle(call, &target, fd, Settle::Asked)?.is_none() {
                // Still connecting: no peer yet, and no local address
                // known but the family's.
                if peer {
                    return Err(io::Error::from_raw_os_error(libc::ENOTCONN));
                }
                self.write_name(call, domain, wildcard(domain))?;
                return Ok(Answer::Value(0));
            }
        }
        let Some(&(domain, local, remote)) = self.guest.names.get(&target.inode()) else {
            return Ok(Answer::Continue);
        };
        let name = if peer { remote } else { local };
        let Some(name) = name else {
            return Err(io::Error::from_raw_os_error(if peer {
                libc::ENOTCONN
            } else {
                libc::EINVAL
            }));
        };
        self.write_name(call, domain, name)?;
        Ok(Answer::Value(0))
    }

    /// Writes `peer` into the address arguments (args 1 and 2) of
    /// accept(), getsockname() or getpeername() as the kernel would: at
    /// most `*addrlen` bytes of it, then its whole length into `*addrlen`.
    /// No buffer, no address.
    fn write_name(&self, call: &Call, domain: i32, peer: SocketAddr) -> io::Result<()> {
        let (addr, lenp) = (call.args[1], call.args[2]);
        if addr == 0 || lenp == 0 {
            return Ok(());
        }
        let len = read_program_memory(self, call, lenp, 4)?;
        let room = u32::from_ne_bytes([len[0], len[1], len[2], len[3]]) as usize;
        // An IPv6 listener reports IPv4 peers as mapped addresses.
        let peer = dropshim_abi::encode_in_domain(&peer, domain);
        let raw = peer.as_bytes();
        let n = raw.len();
        write_program_memory(self, call, addr, &raw[..n.min(room)])?;
        write_program_memory(self, call, lenp, &(n as u32).to_ne_bytes())
    }
}

/// Sends `req` to the instance's supervisor: the descriptor it answers
/// with, or the errno the program's call gets.
fn ask(log: &super::seccomp::Log, device: &str, req: &Request) -> io::Result<(Reply, OwnedFd)> {
    match client::request(device, req) {
        Ok((reply, Some(fd))) if reply.errno == 0 => {
            // SAFETY: a descriptor just received is ours alone.
            Ok((reply, unsafe { OwnedFd::from_raw_fd(fd) }))
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
            Err(io::Error::from_raw_os_error(errno))
        }
        Err(ClientError::NotRunning(_)) => {
            static SAID: AtomicBool = AtomicBool::new(false);
            if !SAID.swap(true, Ordering::Relaxed) {
                log.warn(&format!(
                    "the uml instance of device {device:?} is not running; start it with \
                     `dropshim up --config FILE`"
                ));
            }
            Err(io::Error::from_raw_os_error(libc::ENETDOWN))
        }
        Err(_) => Err(io::Error::from_raw_os_error(libc::ECONNABORTED)),
    }
}

/// One connection received from a listener channel: the reply's bytes,
/// their length, and the bridge.
type Received = (usize, [u8; REPLY_LEN], Option<OwnedFd>);

/// Takes the next connection from a listener channel without waiting.
fn receive_conn(chan: RawFd) -> io::Result<Received> {
    let mut buf = [0u8; REPLY_LEN];
    let (n, conn) = sys::recv_fd(chan, &mut buf, libc::MSG_DONTWAIT)?;
    // SAFETY: a descriptor just received is ours alone.
    Ok((n, buf, conn.map(|c| unsafe { OwnedFd::from_raw_fd(c) })))
}

/// A worker's wait for a blocking accept() or connect(): until `ready`
/// has found what the call waits for (looked at whenever `file` polls
/// `events`), the call no longer stands (the thread died, or a signal
/// interrupted it before the filter's wait turned killable-only), or a
/// signal the thread does not block is pending for it, looked at every
/// 50 ms.
fn wait_until(
    listener: RawFd,
    id: u64,
    tid: u32,
    file: &OwnedFd,
    events: libc::c_short,
    mut ready: impl FnMut() -> Option<Found>,
) -> Found {
    loop {
        if !notif_valid(listener, id) {
            return Found::Gone;
        }
        if signal_pending(tid) {
            return Found::Interrupted;
        }
        if let Some(found) = ready() {
            return found;
        }
        let mut pfd = libc::pollfd {
            fd: file.as_raw_fd(),
            events,
            revents: 0,
        };
        // SAFETY: one live pollfd.
        unsafe { libc::poll(&mut pfd, 1, 50) };
    }
}

/// Whether thread `tid` has a signal pending that it does not block (its
/// own or its process's), from `/proc/TID/status`. A thread waiting for
/// the supervisor's answer does not take signals meanwhile (the filter's
/// wait is killable only, Linux 5.19), so the supervisor ends the wait
/// itself, as a kernel socket's accept() is ended.
fn signal_pending(tid: u32) -> bool {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{tid}/status")) else {
        return false;
    };
    let field = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            .unwrap_or(0)
    };
    (field("SigPnd:") | field("ShdPnd:")) & !field("SigBlk:") != 0
}

/// The errno that makes the kernel restart the call after the signal's
/// handler when it was installed with SA_RESTART (or when no handler
/// runs), and turns into EINTR otherwise: what an interrupted blocking
/// accept() or connect() of a kernel socket returns inside the kernel.
const ERESTARTSYS: i32 = 512;

/// A call of the program that waits for the network, handed to a worker:
/// what is needed to wait for it again and to answer it.
pub(super) enum Work {
    /// A blocking accept() on a listener channel.
    Accept {
        call: Call,
        chan: Target,
        flags: i32,
        domain: i32,
        opts: Vec<Opt>,
    },
    /// A blocking connect() through the instance, in progress behind the
    /// gate at the program's `fd`.
    Connect { call: Call, gate: Target, fd: RawFd },
}

impl Work {
    fn call(&self) -> &Call {
        match self {
            Work::Accept { call, .. } | Work::Connect { call, .. } => call,
        }
    }
}

/// What a worker thread owns while it waits.
enum Job {
    Accept(OwnedFd),
    /// The gate, and where the supervisor's loop leaves the connect's
    /// outcome.
    Connect(OwnedFd, Arc<Mutex<Option<Outcome>>>),
}

/// What a worker found, for the notification `id`.
pub(super) struct Finished {
    id: u64,
    found: Found,
}

pub(super) enum Found {
    /// The call no longer stands; nothing was taken.
    Gone,
    /// A signal came for the waiting thread; nothing was taken.
    Interrupted,
    Accepted(io::Result<Received>),
    /// The connect behind the gate has ended; its outcome waits there.
    Connected,
}

fn wildcard(domain: i32) -> SocketAddr {
    if domain == libc::AF_INET6 {
        SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 0))
    } else {
        SocketAddr::from((std::net::Ipv4Addr::UNSPECIFIED, 0))
    }
}

/// What the supervisor knows of the TCP sockets it serves (on uml, and
/// on native which are not settled yet), keyed by socket inode (the same
/// in every process holding the socket).
#[derive(Default)]
pub(super) struct Sockets {
    /// Sockets bound to a guest address (never bound on the host).
    bound: HashMap<u64, SocketAddr>,
    /// Listener channels installed in the program, with their family and
    /// the options carried to the guest listener.
    listeners: HashMap<u64, (i32, Vec<Opt>)>,
    /// Bridges and listener channels: family, the guest socket's local
    /// and peer addresses.
    names: HashMap<u64, (i32, Option<SocketAddr>, Option<SocketAddr>)>,
    /// A fresh socket's value of each option in [`CARRIED`], per family
    /// and protocol, read once.
    defaults: HashMap<(i32, i32), Vec<Option<Vec<u8>>>>,
    /// native: the sockets the supervisor opened for the program's
    /// socket() calls whose protocol is not fixed yet (no connect() or
    /// listen() so far), by inode.
    pub(super) unsettled: std::collections::HashSet<u64>,
    /// Non-blocking connects in progress, by the inode of their gate.
    pending: HashMap<u64, Pending>,
    /// Connections a worker took for an accept() that was interrupted
    /// before they were installed, by listener channel inode, served to
    /// the next accept() on that channel (oldest last).
    stash: HashMap<u64, Vec<Received>>,
    /// uml: whether each thread and process seen carries the shim, by
    /// id, with the program file it ran then (an exec changes both).
    shim_processes: HashMap<u32, ((u64, u64), bool)>,
}

/// How a connect through the instance ended: the reply and the bridge,
/// or the errno.
type Outcome = Result<(Reply, OwnedFd), i32>;

/// A connect in progress behind a gate: what its socket was, its outcome
/// once known (which the workers waiting on the gate read), and, until
/// then, the request's channel to the device's supervisor and the gate's
/// other end, whose closing wakes the program.
struct Pending {
    domain: i32,
    opts: Vec<Opt>,
    outcome: Arc<Mutex<Option<Outcome>>>,
    request: Option<(OwnedFd, OwnedFd)>,
}

/// The errno a connect gets when its request to the device's supervisor
/// failed: ENETDOWN if no instance runs, else ECONNABORTED.
fn connect_errno(e: &ClientError) -> i32 {
    match e {
        ClientError::NotRunning(_) => libc::ENETDOWN,
        _ => libc::ECONNABORTED,
    }
}

/// A gate: the program's end of a Unix stream pair whose send buffer is
/// full, so it is neither readable nor writable until the other end (the
/// supervisor's) is closed. Returns (program's end, supervisor's end).
fn gate() -> io::Result<(OwnedFd, OwnedFd)> {
    let [a, b] = dropshim_abi::sock::unix_pair(libc::SOCK_STREAM)?;
    // SAFETY: just created, ours alone.
    let (prog, keep) = unsafe { (OwnedFd::from_raw_fd(a), OwnedFd::from_raw_fd(b)) };
    dropshim_abi::sock::setsockopt_int(prog.as_raw_fd(), libc::SOL_SOCKET, libc::SO_SNDBUF, 1)?;
    fcntl(
        prog.as_raw_fd(),
        libc::F_SETFL,
        libc::O_RDWR | libc::O_NONBLOCK,
    )?;
    let block = [0u8; 4096];
    for _ in 0..64 {
        match sys::write(prog.as_raw_fd(), &block) {
            Ok(_) => continue,
            Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => {
                // Blocking as a fresh socket is; the program's own
                // O_NONBLOCK is set when the gate is installed.
                fcntl(prog.as_raw_fd(), libc::F_SETFL, libc::O_RDWR)?;
                return Ok((prog, keep));
            }
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::other("the gate never filled"))
}

/// Adds `file` to each epoll set in `sets` (copies of the program's, with
/// the program's events and data) under the program's descriptor number
/// `fd`, so the program's own `EPOLL_CTL_MOD`/`DEL` by that number find
/// it. An epoll entry is keyed by file and number in the caller's table:
/// a thread with a private copy of the table puts `file` at `fd` there
/// and makes the calls, and its table goes when it ends.
fn reregister(file: &OwnedFd, fd: RawFd, sets: &[(Target, u32, u64)]) -> io::Result<()> {
    let src = file.as_raw_fd();
    std::thread::scope(|scope| {
        scope
            .spawn(move || -> io::Result<()> {
                // SAFETY: unshare(CLONE_FILES) gives this thread alone a
                // copy of the descriptor table; the process's own table
                // is not touched by what follows.
                if unsafe { libc::unshare(libc::CLONE_FILES) } != 0 {
                    return Err(io::Error::last_os_error());
                }
                // SAFETY: both numbers are in this thread's private table;
                // whatever `fd` named there is only this copy's.
                if unsafe { libc::dup2(src, fd) } < 0 {
                    return Err(io::Error::last_os_error());
                }
                let mut result = Ok(());
                for (ep, events, data) in sets {
                    let mut ev = libc::epoll_event {
                        events: *events,
                        u64: *data,
                    };
                    // SAFETY: a live epoll descriptor, `fd` names `file`
                    // in this table, and one live event.
                    let rc = unsafe {
                        libc::epoll_ctl(ep.copy.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut ev)
                    };
                    if rc != 0 {
                        result = Err(io::Error::last_os_error());
                    }
                }
                result
            })
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("the epoll thread panicked")))
    })
}

/// The epoll sets of process `tgid` that hold its descriptor `fd` with
/// the file of inode `ino`: (epoll descriptor, events, data), read from
/// /proc (an epoll descriptor's fdinfo lists `tfd: N events: X data: Y
/// ... ino: I` per registration).
fn epoll_registrations(tgid: libc::pid_t, fd: RawFd, ino: u64) -> Vec<(RawFd, u32, u64)> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{tgid}/fd")) else {
        return out;
    };
    for entry in dir.flatten() {
        let is_epoll = std::fs::read_link(entry.path())
            .is_ok_and(|l| l.as_os_str() == "anon_inode:[eventpoll]");
        let Some(epfd) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<RawFd>().ok())
        else {
            continue;
        };
        if !is_epoll {
            continue;
        }
        let Ok(info) = std::fs::read_to_string(format!("/proc/{tgid}/fdinfo/{epfd}")) else {
            continue;
        };
        for line in info.lines() {
            let Some(rest) = line.strip_prefix("tfd:") else {
                continue;
            };
            let words: Vec<&str> = rest.split_whitespace().collect();
            let after = |key: &str| {
                words
                    .iter()
                    .position(|w| *w == key)
                    .and_then(|i| words.get(i + 1))
                    .copied()
            };
            let tfd = words.first().and_then(|w| w.parse::<RawFd>().ok());
            let events = after("events:").and_then(|v| u32::from_str_radix(v, 16).ok());
            let data = after("data:").and_then(|v| u64::from_str_radix(v, 16).ok());
            let tino = words
                .iter()
                .find_map(|w| w.strip_prefix("ino:"))
                .and_then(|v| u64::from_str_radix(v, 16).ok());
            if let (Some(t), Some(events), Some(data), Some(i)) = (tfd, events, data, tino) {
                if t == fd && i == ino {
                    out.push((epfd, events, data));
                }
            }
        }
    }
    out
}

impl Sockets {
    /// The options of the program's socket that differ from a fresh
    /// socket's: what the program set before connect() or listen(). An
    /// option set to its default value is not told apart from one left
    /// alone; either way the guest socket gets the same value.
    fn carried(&mut self, target: &Target, domain: i32) -> Vec<Opt> {
        self.set_options(target, domain, libc::IPPROTO_TCP)
    }

    /// The options of the program's socket (of `protocol`) that differ
    /// from a fresh socket's of the same protocol.
    pub(super) fn set_options(&mut self, target: &Target, domain: i32, protocol: i32) -> Vec<Opt> {
        let defaults = self.defaults.entry((domain, protocol)).or_insert_with(|| {
            // SAFETY: socket(2) takes integers only.
            let fd =
                unsafe { libc::socket(domain, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, protocol) };
            if fd < 0 {
                return Vec::new();
            }
            // SAFETY: just created, ours alone.
            let fresh = unsafe { OwnedFd::from_raw_fd(fd) };
            CARRIED
                .iter()
                .map(|&(level, name)| raw_opt(fresh.as_raw_fd(), level, name))
                .collect()
        });
        let mut opts = Vec::new();
        for (i, &(level, name)) in CARRIED.iter().enumerate() {
            if level == libc::IPPROTO_IPV6 && domain != libc::AF_INET6 {
                continue;
            }
            let Some(mut value) = raw_opt(target.copy.as_raw_fd(), level, name) else {
                continue;
            };
            if defaults.get(i).and_then(Option::as_ref) == Some(&value) {
                continue;
            }
            if level == libc::SOL_SOCKET && (name == libc::SO_RCVBUF || name == libc::SO_SNDBUF) {
                // The kernel reports twice what was asked (its bookkeeping
                // share included) and doubles what it is given.
                if let Ok(b) = <[u8; 4]>::try_from(value.as_slice()) {
                    value = (i32::from_ne_bytes(b) / 2).to_ne_bytes().to_vec();
                }
            }
            opts.push(Opt { level, name, value });
        }
        opts
    }

    /// Whether thread `tid`'s process has the shim loaded
    /// (`libdropshim.so` in its memory map). Known threads cost one
    /// `stat` of the program file they run, which an exec changes; a new
    /// thread of a known process one read of its status.
    fn carries_the_shim(&mut self, tid: u32) -> bool {
        let Ok(exe) = std::fs::metadata(format!("/proc/{tid}/exe")) else {
            return false;
        };
        let file = (exe.dev(), exe.ino());
        let seen = &mut self.shim_processes;
        let known = |pid: u32| seen.get(&pid).filter(|(f, _)| *f == file).map(|(_, s)| *s);
        if let Some(shim) = known(tid) {
            return shim;
        }
        let tgid = tgid_of(tid).map_or(tid, |t| t as u32);
        let shim = known(tgid).unwrap_or_else(|| {
            std::fs::read_to_string(format!("/proc/{tgid}/maps"))
                .is_ok_and(|maps| maps.lines().any(|l| l.ends_with("/libdropshim.so")))
        });
        if seen.len() >= 4096 {
            seen.retain(|pid, _| Path::new(&format!("/proc/{pid}")).exists());
        }
        seen.insert(tgid, (file, shim));
        seen.insert(tid, (file, shim));
        shim
    }

    /// Records the guest addresses behind `fd` (a bridge or a channel).
    fn remember(
        &mut self,
        fd: &OwnedFd,
        domain: i32,
        local: Option<SocketAddr>,
        peer: Option<SocketAddr>,
    ) -> io::Result<()> {
        // Entries of descriptors the program has closed since stay behind;
        // keep the table from growing without bound on a busy server.
        if self.names.len() >= 65_536 {
            self.names.clear();
        }
        self.names
            .insert(inode_of(fd.as_raw_fd())?, (domain, local, peer));
        Ok(())
    }
}

/// Options carried from the program's socket to the guest socket at
/// connect() and listen() (IPV6 ones on IPv6 sockets only).
const CARRIED: &[(i32, i32)] = &[
    (libc::SOL_SOCKET, libc::SO_KEEPALIVE),
    (libc::SOL_SOCKET, libc::SO_REUSEADDR),
    (libc::SOL_SOCKET, libc::SO_REUSEPORT),
    (libc::SOL_SOCKET, libc::SO_RCVBUF),
    (libc::SOL_SOCKET, libc::SO_SNDBUF),
    (libc::SOL_SOCKET, libc::SO_LINGER),
    (libc::SOL_SOCKET, libc::SO_PRIORITY),
    (libc::IPPROTO_TCP, libc::TCP_NODELAY),
    (libc::IPPROTO_TCP, libc::TCP_CORK),
    (libc::IPPROTO_TCP, libc::TCP_KEEPIDLE),
    (libc::IPPROTO_TCP, libc::TCP_KEEPINTVL),
    (libc::IPPROTO_TCP, libc::TCP_KEEPCNT),
    (libc::IPPROTO_TCP, libc::TCP_USER_TIMEOUT),
    (libc::IPPROTO_IPV6, libc::IPV6_V6ONLY),
];

/// An option's raw value (at most 16 bytes: an int or a `struct linger`).
fn raw_opt(fd: RawFd, level: i32, name: i32) -> Option<Vec<u8>> {
    let mut buf = [0u8; 16];
    let len = dropshim_abi::sock::getsockopt(fd, level, name, &mut buf).ok()?;
    Some(buf[..len.min(buf.len())].to_vec())
}

pub(super) fn inode_of(fd: RawFd) -> io::Result<u64> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::zeroed();
    // SAFETY: fstat writes one stat into our buffer.
    if unsafe { libc::fstat(fd, st.as_mut_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fstat succeeded and filled it.
    Ok(unsafe { st.assume_init() }.st_ino)
}

/// How to answer a trapped call.
enum Answer {
    /// Let the kernel run it.
    Continue,
    /// Return this value.
    Value(i64),
    /// Already answered (or no longer waited for).
    Done,
}

/// Reads `len` bytes at `addr` in the calling thread's memory, then checks
/// that the call still stands: a thread that died, or was interrupted,
/// between the notification and the read may have left another process
/// (a reused pid) or other bytes behind, and then the read counts for
/// nothing.
pub(super) fn read_program_memory(
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

/// Writes `bytes` at `addr` in the calling thread's memory, then checks
/// that the call still stands (see [`read_program_memory`]).
fn write_program_memory(sup: &Supervisor, call: &Call, addr: u64, bytes: &[u8]) -> io::Result<()> {
    if !bytes.is_empty() {
        let local = libc::iovec {
            iov_base: bytes.as_ptr().cast_mut().cast(),
            iov_len: bytes.len(),
        };
        let remote = libc::iovec {
            iov_base: addr as *mut libc::c_void,
            iov_len: bytes.len(),
        };
        // SAFETY: the kernel only reads `local` (our live slice); the
        // remote side is the other process's memory, which it checks.
        let n =
            unsafe { libc::process_vm_writev(call.pid as libc::pid_t, &local, 1, &remote, 1, 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        if n as usize != bytes.len() {
            return Err(io::Error::from_raw_os_error(libc::EFAULT));
        }
    }
    if !sup.id_valid(call.id) {
        return Err(io::Error::from_raw_os_error(libc::ESRCH));
    }
    Ok(())
}

/// A copy of the program's descriptor, taken with pidfd_getfd.
pub(super) struct Target {
    tgid: libc::pid_t,
    pub(super) copy: OwnedFd,
}

impl Target {
    pub(super) fn open(tid: u32, fd: RawFd) -> Option<Target> {
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

    pub(super) fn inode(&self) -> u64 {
        inode_of(self.copy.as_raw_fd()).unwrap_or(0)
    }

    pub(super) fn int_opt(&self, level: i32, name: i32) -> Option<i32> {
        dropshim_abi::sock::getsockopt_int(self.copy.as_raw_fd(), level, name).ok()
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

    fn peer(&self) -> Option<SocketAddr> {
        dropshim_abi::sock::peer_addr(self.copy.as_raw_fd()).ok()
    }

    /// The address the program bound, if it bound one.
    fn bound(&self) -> Option<SocketAddr> {
        dropshim_abi::sock::local_addr(self.copy.as_raw_fd())
            .ok()
            .filter(|a| a.port() != 0 || !a.ip().is_unspecified())
    }
}

pub(super) fn tgid_of(tid: u32) -> Option<libc::pid_t> {
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

/// Who learns the outcome of a connect in progress when it is settled.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Settle {
    /// The program's connect(), which returns it.
    ByConnect,
    /// getsockopt(SO_ERROR) or getpeername(), after which a kernel socket
    /// still answers the next connect() with the outcome (0) once.
    Asked,
}

/// Moves a bridge whose connect the host saw as non-blocking to the
/// connected state, so that a connect() on it says EISCONN: connect()
/// again to its own peer completes the host's own connect.
fn mark_connected(bridge: &OwnedFd) {
    if let Ok(peer) = dropshim_abi::sock::peer_addr(bridge.as_raw_fd()) {
        let raw = dropshim_abi::encode(&peer);
        // SAFETY: connect(2) reads `raw.len()` bytes of the address `raw`
        // keeps alive; on an established socket it only changes its state.
        unsafe { libc::connect(bridge.as_raw_fd(), raw.as_ptr().cast(), raw.len()) };
    }
}

/// Whether the program's file behind `target` is O_NONBLOCK.
fn is_nonblocking(target: &Target) -> io::Result<bool> {
    Ok(fcntl(target.copy.as_raw_fd(), libc::F_GETFL, 0)? & libc::O_NONBLOCK != 0)
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
