//! Reaching programs that bypass libc on the native backend: Go programs
//! and statically linked binaries make their `socket()` system calls
//! themselves, so a preloaded library never sees them.
//!
//! Owns: the classic-BPF seccomp filter `dropshim run` installs in the
//! program just before exec, and the supervisor that answers it. The
//! filter traps `socket(AF_INET or AF_INET6, SOCK_STREAM [| SOCK_NONBLOCK
//! | SOCK_CLOEXEC], 0 or IPPROTO_TCP)` and, unless the policy gives every
//! socket MPTCP whatever its address, `bind()`, `connect()` and
//! `listen()` (answered in [`super::native`]), and hands them to user
//! space (`SECCOMP_RET_USER_NOTIF`); every other system call, and every
//! socket call the shim itself makes (`socket()` carries
//! [`SOCKET_PASS_MARK`] in its unused fourth argument, the other three
//! the run's random pass in their sixth), goes straight to the kernel.
//! Of a 32-bit process only `socket()` is trapped, so that the
//! supervisor can say once that such a process is not served. The supervisor, which is `dropshim run` staying the
//! program's parent, opens `socket(domain, type, IPPROTO_MPTCP)` itself
//! (plain TCP when the kernel has no MPTCP) and installs it in the
//! program as the call's result with `SECCOMP_IOCTL_NOTIF_ADDFD` and
//! `SECCOMP_ADDFD_FLAG_SEND`, which answers the call atomically. The
//! socket is an ordinary kernel socket from then on: reads, writes,
//! connect, accept go to the kernel with nobody in between.
//!
//! Filters are inherited across fork and exec, so the reach covers the
//! program's whole process tree and nothing else. The supervisor forwards
//! the signals sent to it, exits with the program's status, and, when the
//! program leaves descendants behind that still carry the filter, leaves
//! a detached copy of itself serving them until the last one is gone.
//!
//! Written with the `libc` crate alone: `seccompiler` (rust-vmm) builds
//! filters but has no user-notification support, and this filter is
//! twenty instructions.

use dropshim_abi::IPPROTO_MPTCP;
pub use dropshim_backend_native::sys::SOCKET_PASS_MARK;
use std::collections::HashMap;
use std::ffi::CString;
use std::io;
use std::mem::{size_of, MaybeUninit};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::process::ExitCode;
use std::sync::{mpsc, Arc};

// Classic BPF opcodes (linux/filter.h): class | size | mode.
const LD_W_ABS: u16 = 0x20; // BPF_LD (0) | BPF_W (0) | BPF_ABS (0x20)
const JEQ_K: u16 = 0x15; // BPF_JMP (5) | BPF_JEQ (0x10) | BPF_K (0)
const AND_K: u16 = 0x54; // BPF_ALU (4) | BPF_AND (0x50) | BPF_K (0)
const RET_K: u16 = 0x06; // BPF_RET (6) | BPF_K (0)

// Offsets into `struct seccomp_data`.
const DATA_NR: u32 = 0;
const DATA_ARCH: u32 = 4;
const fn data_arg_low(i: u32) -> u32 {
    16 + 8 * i + if cfg!(target_endian = "little") { 0 } else { 4 }
}
const fn data_arg_high(i: u32) -> u32 {
    16 + 8 * i + if cfg!(target_endian = "little") { 4 } else { 0 }
}

#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xc000_003e;
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xc000_00b7;
/// The 32-bit ABI the host also runs (i386 on x86_64, Arm on aarch64):
/// its audit arch, its `socket()` and, where it has one, its
/// `socketcall()` (whose first argument 1 is SYS_SOCKET).
#[cfg(target_arch = "x86_64")]
const COMPAT: (u32, u32, Option<u32>) = (0x4000_0003, 359, Some(102));
#[cfg(target_arch = "aarch64")]
const COMPAT: (u32, u32, Option<u32>) = (0x4000_0028, 281, None);
/// socketcall()'s call number for socket().
const SOCKETCALL_SOCKET: u32 = 1;
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
compile_error!("dropshim run's seccomp filter knows the audit arch of x86_64 and aarch64 only");

/// One instruction with symbolic jump targets, resolved by [`assemble`].
enum Op {
    Load(u32),
    And(u32),
    /// `if A == k goto t else goto f`.
    Jeq(u32, Label, Label),
    Ret(u32),
    Here(Label),
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Label {
    Next,
    Allow,
    Notify,
    CheckType,
    CheckMark,
    CheckPass,
    Compat,
}

/// Resolves labels into the relative jumps classic BPF wants.
fn assemble(ops: &[Op]) -> Vec<libc::sock_filter> {
    let mut at = Vec::new();
    let mut pc = 0usize;
    for op in ops {
        match op {
            Op::Here(l) => at.push((*l, pc)),
            _ => pc += 1,
        }
    }
    let target = |label: Label, pc: usize| -> u8 {
        let dest = if label == Label::Next {
            pc + 1
        } else {
            at.iter()
                .find(|(l, _)| *l == label)
                .map(|&(_, p)| p)
                .expect("every label used is placed")
        };
        u8::try_from(dest - pc - 1).expect("jumps are short")
    };
    let mut out = Vec::new();
    for op in ops {
        let pc = out.len();
        let ins = |code, jt, jf, k| libc::sock_filter { code, jt, jf, k };
        out.push(match *op {
            Op::Load(off) => ins(LD_W_ABS, 0, 0, off),
            Op::And(k) => ins(AND_K, 0, 0, k),
            Op::Jeq(k, t, f) => ins(JEQ_K, target(t, pc), target(f, pc), k),
            Op::Ret(k) => ins(RET_K, 0, 0, k),
            Op::Here(_) => continue,
        });
    }
    out
}

/// Which stack the supervisor serves, and so what the filter traps.
/// Whatever the stack, a 32-bit process of the program's tree (which
/// neither the filter nor the shim serves) gets one line at its first
/// TCP `socket()`.
#[derive(Clone)]
pub enum Mode {
    /// Host MPTCP: TCP `socket()` calls become MPTCP sockets (or what the
    /// policy's default says) and, with `addresses`, the policy settles
    /// them at `bind()`, `connect()` and `listen()` ([`super::native`]),
    /// except those that carry `pass` in their sixth argument: the shim's,
    /// which applies the policy itself.
    Native {
        policy: dropshim_conf::Policy,
        addresses: bool,
        pass: u64,
    },
    /// A User Mode Linux instance: `connect()`, `bind()`, `listen()`,
    /// `accept()`, `getsockname()`, `getpeername()` and
    /// `getsockopt(SO_ERROR)` on TCP sockets are answered by the instance
    /// ([`super::guest`]), except the `connect()`, `bind()` and `listen()`
    /// calls that carry `pass` in their sixth argument: the shim's.
    Uml {
        device: String,
        policy: dropshim_conf::Policy,
        pass: u64,
    },
    /// The shim alone serves the program's tree (lkl): only 32-bit
    /// processes' sockets are looked at.
    Watch { backend: dropshim_conf::BackendKind },
}

/// The filter for `mode`. Of a process of the 32-bit ABI, only the
/// `socket()` calls are trapped, to be told about ([`Supervisor`]).
pub fn filter_for(mode: &Mode) -> Vec<libc::sock_filter> {
    match mode {
        Mode::Native {
            addresses, pass, ..
        } => filter_with(addresses.then_some(*pass)),
        Mode::Watch { .. } => {
            use Label::*;
            assemble(&with_compat(vec![
                Op::Load(DATA_ARCH),
                Op::Jeq(AUDIT_ARCH, Allow, Compat),
            ]))
        }
        Mode::Uml { pass, .. } => {
            use Label::*;
            // connect(), bind(), listen(), accept(), getsockname() and
            // getpeername() of every kind:
            // which descriptors are TCP sockets only the supervisor can
            // tell (it looks at the socket itself); it lets the others
            // continue untouched. connect(), bind() and listen() with the
            // run's pass are the shim's and run.
            let mut ops = vec![
                Op::Load(DATA_ARCH),
                Op::Jeq(AUDIT_ARCH, Next, Compat),
                Op::Load(DATA_NR),
            ];
            ops.extend(PASS_CALLS);
            ops.extend([
                Op::Jeq(libc::SYS_accept as u32, Notify, Next),
                Op::Jeq(libc::SYS_accept4 as u32, Notify, Next),
                Op::Jeq(libc::SYS_getsockname as u32, Notify, Next),
                Op::Jeq(libc::SYS_getpeername as u32, Notify, Next),
                // getsockopt(SOL_SOCKET, SO_ERROR) only: how a program
                // learns that a non-blocking connect has ended.
                Op::Jeq(libc::SYS_getsockopt as u32, Next, Allow),
                Op::Load(data_arg_low(1)),
                Op::Jeq(libc::SOL_SOCKET as u32, Next, Allow),
                Op::Load(data_arg_low(2)),
                Op::Jeq(libc::SO_ERROR as u32, Notify, Allow),
            ]);
            ops.extend(pass_check(*pass));
            assemble(&with_compat(ops))
        }
    }
}

/// Ends a filter whose host-ABI part jumps to `Compat` with the
/// accumulator holding the audit arch: the 32-bit ABI's `socket()` calls
/// (direct, or through `socketcall(SYS_SOCKET, ...)`, whose arguments
/// are in memory) are trapped, every other call runs.
fn with_compat(mut ops: Vec<Op>) -> Vec<Op> {
    use Label::*;
    let (arch, socket, socketcall) = COMPAT;
    ops.extend([
        Op::Here(Compat),
        Op::Jeq(arch, Next, Allow),
        Op::Load(DATA_NR),
    ]);
    match socketcall {
        Some(nr) => ops.extend([
            Op::Jeq(socket, Notify, Next),
            Op::Jeq(nr, Next, Allow),
            Op::Load(data_arg_low(0)),
            Op::Jeq(SOCKETCALL_SOCKET, Notify, Allow),
        ]),
        None => ops.push(Op::Jeq(socket, Notify, Allow)),
    }
    ops.extend([
        Op::Here(Notify),
        Op::Ret(libc::SECCOMP_RET_USER_NOTIF),
        Op::Here(Allow),
        Op::Ret(libc::SECCOMP_RET_ALLOW),
    ]);
    ops
}

/// With the system call number loaded: `connect()`, `bind()` and
/// `listen()` go to [`pass_check`].
const PASS_CALLS: [Op; 3] = [
    Op::Jeq(libc::SYS_connect as u32, Label::CheckPass, Label::Next),
    Op::Jeq(libc::SYS_bind as u32, Label::CheckPass, Label::Next),
    Op::Jeq(libc::SYS_listen as u32, Label::CheckPass, Label::Next),
];

/// `CheckPass`: a call whose sixth argument is the run's `pass` runs
/// (the shim's own); any other goes to the supervisor.
fn pass_check(pass: u64) -> [Op; 5] {
    use Label::*;
    [
        Op::Here(CheckPass),
        Op::Load(data_arg_low(5)),
        Op::Jeq(pass as u32, Next, Notify),
        Op::Load(data_arg_high(5)),
        Op::Jeq((pass >> 32) as u32, Allow, Notify),
    ]
}

/// The native filter: TCP stream sockets of the two IP families go to the
/// supervisor unless they carry the shim's mark; with `addresses` (the
/// run's pass), `bind()`, `connect()` and `listen()` of every kind too,
/// unless they carry the pass (which sockets are the supervisor's only it
/// can tell; it lets the others continue untouched); everything else
/// runs.
fn filter_with(addresses: Option<u64>) -> Vec<libc::sock_filter> {
    use Label::*;
    let flags = (libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC) as u32;
    let mut ops = vec![
        Op::Load(DATA_ARCH),
        Op::Jeq(AUDIT_ARCH, Next, Compat),
        Op::Load(DATA_NR),
    ];
    if addresses.is_some() {
        ops.extend(PASS_CALLS);
    }
    ops.extend([
        Op::Jeq(libc::SYS_socket as u32, Next, Allow),
        Op::Load(data_arg_low(0)),
        Op::Jeq(libc::AF_INET as u32, CheckType, Next),
        Op::Jeq(libc::AF_INET6 as u32, CheckType, Allow),
        Op::Here(CheckType),
        Op::Load(data_arg_low(1)),
        Op::And(!flags),
        Op::Jeq(libc::SOCK_STREAM as u32, Next, Allow),
        Op::Load(data_arg_low(2)),
        Op::Jeq(0, CheckMark, Next),
        Op::Jeq(libc::IPPROTO_TCP as u32, CheckMark, Allow),
        Op::Here(CheckMark),
        Op::Load(data_arg_low(3)),
        Op::Jeq(SOCKET_PASS_MARK as u32, Next, Notify),
        Op::Load(data_arg_high(3)),
        Op::Jeq((SOCKET_PASS_MARK >> 32) as u32, Allow, Notify),
    ]);
    if let Some(pass) = addresses {
        ops.extend(pass_check(pass));
    }
    assemble(&with_compat(ops))
}

/// The signals the supervisor passes on to the program when another
/// process sends them to it.
const FORWARDED: [libc::c_int; 8] = [
    libc::SIGINT,
    libc::SIGTERM,
    libc::SIGHUP,
    libc::SIGQUIT,
    libc::SIGUSR1,
    libc::SIGUSR2,
    libc::SIGWINCH,
    libc::SIGALRM,
];

fn forwarded_set() -> libc::sigset_t {
    let mut set = MaybeUninit::<libc::sigset_t>::zeroed();
    // SAFETY: sigemptyset/sigaddset initialise and fill the set we own.
    unsafe {
        libc::sigemptyset(set.as_mut_ptr());
        for sig in FORWARDED {
            libc::sigaddset(set.as_mut_ptr(), sig);
        }
        set.assume_init()
    }
}

/// Blocks the forwarded signals in this (single-threaded) process so none
/// is lost between spawning the program and reading them from a signalfd.
pub fn block_signals() -> io::Result<()> {
    let set = forwarded_set();
    // SAFETY: a valid set; the old mask is not wanted.
    let rc = unsafe { libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Undoes [`block_signals`] (when the program could not be started).
pub fn unblock_signals() {
    let set = forwarded_set();
    // SAFETY: a valid set; the old mask is not wanted.
    unsafe { libc::sigprocmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut()) };
}

/// What the child does between fork and exec. Everything it needs is
/// prepared here, in the parent, so that [`ChildSetup::apply`] only makes
/// system calls (no allocation, no locks: it runs in a forked child).
pub struct ChildSetup {
    filter: Vec<libc::sock_filter>,
    sock: RawFd,
    parent: libc::pid_t,
    no_new_privs: bool,
    unblock: libc::sigset_t,
}

/// The first byte the child sends: the filter is in and its listener is
/// attached, or it could not be installed (the errno follows).
const MSG_LISTENER: u8 = 1;
const MSG_UNSUPPORTED: u8 = 2;

impl ChildSetup {
    /// `sock` is the child's end of the socketpair the listener travels
    /// on (close-on-exec, so the program never holds it).
    pub fn new(sock: RawFd, mode: &Mode) -> ChildSetup {
        ChildSetup {
            filter: filter_for(mode),
            sock,
            // SAFETY: getpid has no preconditions.
            parent: unsafe { libc::getpid() },
            no_new_privs: !has_cap_sys_admin(),
            unblock: forwarded_set(),
        }
    }

    /// Runs in the forked child just before exec.
    pub fn apply(&self) -> io::Result<()> {
        // SAFETY: only async-signal-safe system calls on memory this
        // struct owns (copied into the child by fork); nothing allocates.
        unsafe {
            libc::sigprocmask(libc::SIG_UNBLOCK, &self.unblock, std::ptr::null_mut());
            // The program must not outlive its supervisor: its TCP
            // sockets would fail (ENOSYS) with no one to answer.
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(io::Error::last_os_error());
            }
            if libc::getppid() != self.parent {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            if self.no_new_privs {
                // Required to install a filter without CAP_SYS_ADMIN.
                libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
            }
            let prog = libc::sock_fprog {
                len: self.filter.len() as libc::c_ushort,
                filter: self.filter.as_ptr().cast_mut(),
            };
            let install = |flags: libc::c_ulong| {
                libc::syscall(
                    libc::SYS_seccomp,
                    libc::SECCOMP_SET_MODE_FILTER,
                    flags,
                    &prog as *const libc::sock_fprog,
                )
            };
            let base = libc::SECCOMP_FILTER_FLAG_NEW_LISTENER;
            // Killable wait (Linux 5.19): a program's non-fatal signals
            // (Go's runtime sends itself SIGURG constantly) do not
            // interrupt a socket() the supervisor is already answering.
            let mut fd = install(base | libc::SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV);
            if fd < 0 && *libc::__errno_location() == libc::EINVAL {
                fd = install(base);
            }
            if fd < 0 {
                let errno = *libc::__errno_location();
                let mut msg = [MSG_UNSUPPORTED, 0, 0, 0, 0];
                msg[1..].copy_from_slice(&errno.to_ne_bytes());
                libc::send(
                    self.sock,
                    msg.as_ptr().cast(),
                    msg.len(),
                    libc::MSG_NOSIGNAL,
                );
                return Ok(());
            }
            let sent = send_fd(self.sock, MSG_LISTENER, fd as RawFd);
            libc::close(fd as RawFd);
            sent
        }
    }
}

/// linux/capability.h
const CAP_SYS_ADMIN: u32 = 21;

/// Whether this process may install a filter without no_new_privs.
fn has_cap_sys_admin() -> bool {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return false;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << CAP_SYS_ADMIN) != 0)
}

/// Sends one byte with `fd` attached. Async-signal-safe.
///
/// # Safety
/// `sock` and `fd` must be open descriptors.
unsafe fn send_fd(sock: RawFd, byte: u8, fd: RawFd) -> io::Result<()> {
    let mut data = [byte];
    let mut iov = libc::iovec {
        iov_base: data.as_mut_ptr().cast(),
        iov_len: 1,
    };
    // Room for one descriptor, aligned for cmsghdr.
    let mut control = [0u64; 4];
    // SAFETY: CMSG_SPACE is arithmetic on its argument.
    let space = unsafe { libc::CMSG_SPACE(size_of::<RawFd>() as u32) } as usize;
    // SAFETY: msghdr is plain data; all-zero is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = space;
    // SAFETY: `msg` names `control`, whose `space` bytes (within its 32)
    // hold one header and one descriptor: the first header is in bounds
    // and not null, and its data takes a RawFd, written unaligned.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(size_of::<RawFd>() as u32) as usize;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<RawFd>(), fd);
    }
    // SAFETY: `msg` and all it points to are live locals; the caller
    // promises `sock` and `fd` are open (# Safety above).
    if unsafe { libc::sendmsg(sock, &msg, libc::MSG_NOSIGNAL) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// What the child reported after fork.
pub enum Listener {
    Ready(OwnedFd),
    /// The kernel refused the filter (errno), so the program runs with the
    /// shim only.
    Unsupported(io::Error),
}

/// Reads the child's report from the parent's end of the socketpair.
/// The child wrote it before exec, and exec has happened, so it waits for
/// nothing.
pub fn receive_listener(sock: RawFd) -> io::Result<Listener> {
    let mut data = [0u8; 5];
    let mut iov = libc::iovec {
        iov_base: data.as_mut_ptr().cast(),
        iov_len: data.len(),
    };
    let mut control = [0u64; 4];
    // SAFETY: msghdr is plain data; zero is a valid starting value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control);
    // SAFETY: every pointer in `msg` points at live buffers of the sizes given.
    let n = unsafe { libc::recvmsg(sock, &mut msg, libc::MSG_DONTWAIT | libc::MSG_CMSG_CLOEXEC) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel filled `control`; CMSG_FIRSTHDR checks its length.
    let cmsg = unsafe { libc::CMSG_FIRSTHDR(&msg) };
    let passed = if cmsg.is_null() {
        None
    } else {
        // SAFETY: a non-null header inside `control`, written by the kernel.
        unsafe {
            ((*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS)
                .then(|| std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<RawFd>()))
        }
    };
    // SAFETY: a descriptor just received is ours alone.
    let passed = passed.map(|fd| unsafe { OwnedFd::from_raw_fd(fd) });
    match (n, data[0], passed) {
        (1.., MSG_LISTENER, Some(fd)) => Ok(Listener::Ready(fd)),
        (5, MSG_UNSUPPORTED, _) => {
            let errno = i32::from_ne_bytes([data[1], data[2], data[3], data[4]]);
            Ok(Listener::Unsupported(io::Error::from_raw_os_error(errno)))
        }
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "the program's filter listener did not arrive",
        )),
    }
}

/// Log lines in the shim's format (`dropshim[PID]: LEVEL: ...`) at the
/// level `DROPSHIM_LOG` sets (default warn).
#[derive(Clone, Copy)]
pub struct Log {
    debug: bool,
    warn: bool,
}

impl Log {
    pub fn from_env() -> Log {
        let level = std::env::var("DROPSHIM_LOG")
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase();
        Log {
            debug: level == "debug",
            warn: level != "error",
        }
    }

    pub fn warn(&self, msg: &str) {
        if self.warn {
            eprintln!("dropshim[{}]: warn: {msg}", std::process::id());
        }
    }

    pub fn debug(&self, msg: impl FnOnce() -> String) {
        if self.debug {
            eprintln!("dropshim[{}]: debug: {}", std::process::id(), msg());
        }
    }
}

/// Answers the filter's notifications.
///
/// It never waits on one call: a call that waits for the network (a
/// blocking `accept()` or `connect()` on uml) goes to a worker thread,
/// which reports back through [`Supervisor::wake_fd`]; the notifications
/// of the program's other threads are answered meanwhile.
pub struct Supervisor {
    listener: Arc<OwnedFd>,
    notif_size: usize,
    resp_size: usize,
    /// `SECCOMP_ADDFD_FLAG_SEND` works (Linux 5.14).
    atomic_send: bool,
    /// MPTCP refused once: plain TCP from then on.
    pub(super) mptcp_missing: bool,
    own_netns: Option<(OwnedFd, u64, u64)>,
    pub(super) log: Log,
    pub(super) mode: Mode,
    /// uml: what the supervisor knows of the sockets it serves.
    pub(super) guest: super::guest::Sockets,
    /// Calls handed to worker threads, by notification id.
    pub(super) inflight: HashMap<u64, super::guest::Work>,
    /// Where workers report, and the eventfd they ring after reporting.
    pub(super) done: (
        mpsc::Sender<super::guest::Finished>,
        mpsc::Receiver<super::guest::Finished>,
    ),
    pub(super) wake: Arc<OwnedFd>,
    /// The 32-bit processes already told about, by process id.
    compat_told: std::collections::HashSet<libc::pid_t>,
}

/// One trapped system call.
#[derive(Debug, Clone)]
pub(super) struct Call {
    pub(super) id: u64,
    /// The calling thread (its id in our pid namespace).
    pub(super) pid: u32,
    pub(super) nr: i32,
    arch: u32,
    domain: i32,
    ty: i32,
    protocol: i32,
    pub(super) args: [u64; 6],
}

pub(super) fn ioctl_ptr<T>(
    fd: RawFd,
    request: libc::Ioctl,
    arg: *mut T,
) -> io::Result<libc::c_int> {
    // SAFETY: every caller passes a pointer to a live buffer at least as
    // large as the structure the request names.
    let rc = unsafe { libc::ioctl(fd, request, arg) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// A new non-blocking, close-on-exec eventfd.
fn eventfd() -> io::Result<OwnedFd> {
    // SAFETY: eventfd takes integers only.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: just created, ours alone.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Whether the notification `id` on `listener` still stands.
pub(super) fn notif_valid(listener: RawFd, id: u64) -> bool {
    let mut id = id;
    ioctl_ptr(listener, libc::SECCOMP_IOCTL_NOTIF_ID_VALID, &mut id).is_ok()
}

impl Supervisor {
    pub fn new(listener: OwnedFd, log: Log, mode: Mode) -> io::Result<Supervisor> {
        let mut sizes = libc::seccomp_notif_sizes {
            seccomp_notif: 0,
            seccomp_notif_resp: 0,
            seccomp_data: 0,
        };
        // SAFETY: GET_NOTIF_SIZES writes one seccomp_notif_sizes.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_GET_NOTIF_SIZES,
                0,
                &mut sizes as *mut libc::seccomp_notif_sizes,
            )
        };
        let (notif, resp) = if rc == 0 {
            (
                sizes.seccomp_notif as usize,
                sizes.seccomp_notif_resp as usize,
            )
        } else {
            (0, 0)
        };
        let own_netns = std::fs::File::open("/proc/self/ns/net").ok().and_then(|f| {
            let meta = f.metadata().ok()?;
            Some((OwnedFd::from(f), meta.dev(), meta.ino()))
        });
        Ok(Supervisor {
            listener: Arc::new(listener),
            notif_size: notif.max(size_of::<libc::seccomp_notif>()),
            resp_size: resp.max(size_of::<libc::seccomp_notif_resp>()),
            atomic_send: true,
            mptcp_missing: false,
            own_netns,
            log,
            mode,
            guest: Default::default(),
            inflight: HashMap::new(),
            done: mpsc::channel(),
            wake: Arc::new(eventfd()?),
            compat_told: Default::default(),
        })
    }

    pub fn fd(&self) -> RawFd {
        self.listener.as_raw_fd()
    }

    /// The eventfd that turns readable when a worker has finished waiting
    /// for one of the program's calls ([`Supervisor::finish_waits`]).
    pub fn wake_fd(&self) -> RawFd {
        self.wake.as_raw_fd()
    }

    /// Another reference to the listener, for a worker thread.
    pub(super) fn listener(&self) -> Arc<OwnedFd> {
        Arc::clone(&self.listener)
    }

    /// Whether the notification `id` still stands (the calling thread has
    /// not died or been interrupted since).
    pub(super) fn id_valid(&self, id: u64) -> bool {
        notif_valid(self.fd(), id)
    }

    /// Answers the calls whose workers have reported.
    pub fn finish_waits(&mut self) {
        let mut count = [0u8; 8];
        // SAFETY: reads one 8-byte counter into our buffer (non-blocking).
        unsafe { libc::read(self.wake_fd(), count.as_mut_ptr().cast(), count.len()) };
        while let Ok(done) = self.done.1.try_recv() {
            self.finish(done);
        }
    }

    /// In a forked copy of the supervisor: the workers stayed behind in
    /// the parent, so the calls they waited for are waited for again here,
    /// with a channel and an eventfd of this copy's own.
    fn after_fork(&mut self) -> io::Result<()> {
        self.done = mpsc::channel();
        self.wake = Arc::new(eventfd()?);
        let ids: Vec<u64> = self.inflight.keys().copied().collect();
        for id in ids {
            if let Some(work) = self.inflight.get(&id) {
                if let Err(e) = self.spawn_worker(work) {
                    self.log.debug(|| format!("waiting again for a call: {e}"));
                    self.inflight.remove(&id);
                    let _ = self.respond(id, 0, -libc::ENOMEM, 0);
                }
            }
        }
        Ok(())
    }

    fn receive(&self) -> io::Result<Call> {
        // u64 words keep the buffer aligned for the structure.
        let mut buf = vec![0u64; self.notif_size.div_ceil(8)];
        ioctl_ptr(self.fd(), libc::SECCOMP_IOCTL_NOTIF_RECV, buf.as_mut_ptr())?;
        // SAFETY: the buffer is at least size_of::<seccomp_notif>() bytes,
        // 8-aligned, and the kernel filled it.
        let n = unsafe { std::ptr::read(buf.as_ptr().cast::<libc::seccomp_notif>()) };
        Ok(Call {
            id: n.id,
            pid: n.pid,
            nr: n.data.nr,
            arch: n.data.arch,
            domain: n.data.args[0] as i32,
            ty: n.data.args[1] as i32,
            protocol: n.data.args[2] as i32,
            args: n.data.args,
        })
    }

    pub(super) fn respond(&self, id: u64, val: i64, error: i32, flags: u32) -> io::Result<()> {
        let mut buf = vec![0u64; self.resp_size.div_ceil(8)];
        let resp = libc::seccomp_notif_resp {
            id,
            val,
            error,
            flags,
        };
        // SAFETY: the buffer is large enough and 8-aligned for the structure.
        unsafe { std::ptr::write(buf.as_mut_ptr().cast::<libc::seccomp_notif_resp>(), resp) };
        ioctl_ptr(self.fd(), libc::SECCOMP_IOCTL_NOTIF_SEND, buf.as_mut_ptr()).map(drop)
    }

    /// Answers one pending notification. Errors here concern one call of
    /// one program thread; the caller logs them and goes on.
    pub fn handle_one(&mut self) -> io::Result<()> {
        let call = match self.receive() {
            Ok(c) => c,
            // The thread was interrupted or died before we read it.
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::EINTR)) => return Ok(()),
            Err(e) => return Err(e),
        };
        if call.arch != AUDIT_ARCH {
            return self.answer_compat(&call);
        }
        let (policy, addresses) = match &self.mode {
            Mode::Uml { .. } => return self.answer_uml(&call),
            Mode::Native {
                policy, addresses, ..
            } => (policy.clone(), *addresses),
            Mode::Watch { .. } => {
                return self.respond(call.id, 0, 0, libc::SECCOMP_USER_NOTIF_FLAG_CONTINUE as u32);
            }
        };
        if call.nr != libc::SYS_socket as i32 {
            return self.answer_native_call(&call, &policy);
        }
        let ours = call.nr == libc::SYS_socket as i32
            && is_tcp_request(call.domain, call.ty, call.protocol);
        if !ours {
            // Cannot happen with our filter; let the kernel do the call.
            return self.respond(call.id, 0, 0, libc::SECCOMP_USER_NOTIF_FLAG_CONTINUE as u32);
        }
        if !self.id_valid(call.id) {
            return Ok(());
        }
        let sock = match self.open_socket(&call, policy.initial()) {
            Ok(s) => s,
            Err(e) => {
                let errno = e.raw_os_error().unwrap_or(libc::ENOMEM);
                self.log
                    .debug(|| format!("pid {}: socket() failed: {e}", call.pid));
                return self.respond(call.id, 0, -errno, 0).or_else(ignore_gone);
            }
        };
        if addresses {
            if self.guest.unsettled.len() >= 65_536 {
                // Sockets the program closed before connect() or listen().
                self.guest.unsettled.clear();
            }
            if let Ok(ino) = super::guest::inode_of(sock.as_raw_fd()) {
                self.guest.unsettled.insert(ino);
            }
        }
        self.install(&call, sock)
    }

    /// A 32-bit process's socket() runs as it is; at its first TCP one,
    /// one line says what that means on this stack.
    fn answer_compat(&mut self, call: &Call) -> io::Result<()> {
        let (_, socket, _) = COMPAT;
        let args = if call.nr as u32 == socket {
            Some([call.domain, call.ty, call.protocol])
        } else {
            // socketcall(SYS_SOCKET, args): three 32-bit words in memory.
            super::guest::read_program_memory(self, call, call.args[1] & 0xffff_ffff, 12)
                .ok()
                .map(|b| {
                    let word = |i: usize| i32::from_ne_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
                    [word(0), word(4), word(8)]
                })
        };
        let tcp = args.is_some_and(|[domain, ty, protocol]| is_tcp_request(domain, ty, protocol));
        if tcp {
            if let Some(tgid) = super::guest::tgid_of(call.pid) {
                if self.compat_told.len() >= 65_536 {
                    self.compat_told.clear();
                }
                if self.compat_told.insert(tgid) {
                    self.log.warn(&self.compat_line(tgid));
                }
            }
        }
        self.respond(call.id, 0, 0, libc::SECCOMP_USER_NOTIF_FLAG_CONTINUE as u32)
            .or_else(ignore_gone)
    }

    /// What a 32-bit process's TCP sockets get on this run's stack.
    fn compat_line(&self, tgid: libc::pid_t) -> String {
        let exe = std::fs::read_link(format!("/proc/{tgid}/exe")).ok();
        let what = exe
            .as_deref()
            .and_then(super::program::foreign_abi)
            .unwrap_or("a 32-bit program");
        let exe = exe.map_or_else(|| "?".to_string(), |p| p.display().to_string());
        let host = std::env::consts::ARCH;
        let backend = match &self.mode {
            Mode::Native { .. } => {
                return format!(
                    "pid {tgid} ({exe}) is {what}: dropshim reaches {host} programs only; its \
                     TCP connections are the host's plain TCP"
                )
            }
            Mode::Uml { .. } => "uml",
            Mode::Watch { backend } => backend.as_str(),
        };
        format!(
            "pid {tgid} ({exe}) is {what}: the {backend} backend cannot carry its connections \
             (dropshim reaches {host} programs only), so they are the host's plain TCP; the \
             native backend runs it that way, an {host} build of it runs on {backend}"
        )
    }

    /// The socket the program asked for, as MPTCP, in the program's
    /// network namespace.
    fn open_socket(&mut self, call: &Call, initial: dropshim_conf::Action) -> io::Result<OwnedFd> {
        let ty = libc::SOCK_STREAM | libc::SOCK_CLOEXEC | (call.ty & libc::SOCK_NONBLOCK);
        let _netns = self.enter_netns(call)?;
        let open = |proto| {
            // SAFETY: socket(2) takes integers only; this process has no
            // filter and no shim, so this is the kernel's own socket().
            let fd = unsafe { libc::socket(call.domain, ty, proto) };
            if fd < 0 {
                Err(io::Error::last_os_error())
            } else {
                // SAFETY: a descriptor just created is ours alone.
                Ok(unsafe { OwnedFd::from_raw_fd(fd) })
            }
        };
        if !self.mptcp_missing && initial == dropshim_conf::Action::Mptcp {
            match open(IPPROTO_MPTCP) {
                Ok(fd) => return Ok(fd),
                Err(e) if dropshim_backend_native::socket::mptcp_unavailable(&e) => {
                    let tcp = open(libc::IPPROTO_TCP)?;
                    self.mptcp_missing = true;
                    self.log.warn(&format!(
                        "MPTCP is not available here ({e}); using plain TCP (is net.mptcp.enabled=1?)"
                    ));
                    return Ok(tcp);
                }
                Err(e) => return Err(e),
            }
        }
        open(libc::IPPROTO_TCP)
    }

    /// Enters the calling thread's network namespace when it is not ours
    /// (the program may have unshared one); the guard comes back on drop.
    pub(super) fn enter_netns(&self, call: &Call) -> io::Result<Option<NetnsGuard>> {
        let Some((own, dev, ino)) = &self.own_netns else {
            return Ok(None);
        };
        let path = format!("/proc/{}/ns/net", call.pid);
        let theirs = std::fs::File::open(&path)?;
        let meta = theirs.metadata()?;
        if (meta.dev(), meta.ino()) == (*dev, *ino) {
            return Ok(None);
        }
        // The pid could have been reused between the notification and
        // the open: the namespace counts only if the call still stands.
        if !self.id_valid(call.id) {
            return Err(io::Error::from_raw_os_error(libc::ESRCH));
        }
        // SAFETY: setns on a namespace descriptor we hold; this process is
        // single-threaded, so no other thread sees the switch.
        if unsafe { libc::setns(theirs.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Some(NetnsGuard(own.as_raw_fd())))
    }

    /// Puts `sock` into the program as the result of its socket() call.
    fn install(&mut self, call: &Call, sock: OwnedFd) -> io::Result<()> {
        let cloexec = if call.ty & libc::SOCK_CLOEXEC != 0 {
            libc::O_CLOEXEC as u32
        } else {
            0
        };
        let mut addfd = libc::seccomp_notif_addfd {
            id: call.id,
            flags: if self.atomic_send {
                libc::SECCOMP_ADDFD_FLAG_SEND as u32
            } else {
                0
            },
            srcfd: sock.as_raw_fd() as u32,
            newfd: 0,
            newfd_flags: cloexec,
        };
        match ioctl_ptr(self.fd(), libc::SECCOMP_IOCTL_NOTIF_ADDFD, &mut addfd) {
            Ok(fd) if self.atomic_send => {
                self.log.debug(|| {
                    format!(
                        "pid {}: socket() -> fd {fd} (MPTCP unless said otherwise)",
                        call.pid
                    )
                });
                Ok(())
            }
            Ok(fd) => self
                .respond(call.id, i64::from(fd), 0, 0)
                .or_else(ignore_gone),
            Err(e) if self.atomic_send && e.raw_os_error() == Some(libc::EINVAL) => {
                // Before Linux 5.14: add the descriptor, then answer.
                self.atomic_send = false;
                self.install(call, sock)
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
            Err(e) => {
                // The program could not take the descriptor (EMFILE...):
                // that is the call's answer.
                let errno = e.raw_os_error().unwrap_or(libc::EMFILE);
                self.respond(call.id, 0, -errno, 0).or_else(ignore_gone)
            }
        }
    }
}

/// Whether socket(domain, ty, protocol) asks for an IPv4/IPv6 TCP socket.
fn is_tcp_request(domain: i32, ty: i32, protocol: i32) -> bool {
    (domain == libc::AF_INET || domain == libc::AF_INET6)
        && ty & !(libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC) == libc::SOCK_STREAM
        && (protocol == 0 || protocol == libc::IPPROTO_TCP)
}

pub(super) fn ignore_gone(e: io::Error) -> io::Result<()> {
    if e.raw_os_error() == Some(libc::ENOENT) {
        Ok(())
    } else {
        Err(e)
    }
}

/// Returns to the supervisor's own network namespace on drop.
pub(super) struct NetnsGuard(RawFd);

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        // SAFETY: setns back to the namespace descriptor the supervisor
        // holds open for its whole life.
        unsafe { libc::setns(self.0, libc::CLONE_NEWNET) };
    }
}

/// How the program ended.
#[derive(Clone, Copy, Debug)]
pub enum Ended {
    Exited(i32),
    Signaled(i32),
}

/// Runs the program's side of `dropshim run` until the program ends:
/// answers notifications (when `sup` is given), forwards signals another
/// process sends, and returns how the program ended. When descendants of
/// the program still carry the filter, a detached copy of the supervisor
/// keeps answering them.
pub fn supervise(child: libc::pid_t, mut sup: Option<Supervisor>, log: Log) -> io::Result<Ended> {
    let set = forwarded_set();
    // SAFETY: a valid, blocked set; the result is a new descriptor or -1.
    let sigfd = unsafe { libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK) };
    if sigfd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: just created, ours alone.
    let sigfd = unsafe { OwnedFd::from_raw_fd(sigfd) };
    // SAFETY: pidfd_open takes a pid and flags.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, child, 0) } as RawFd;
    if pidfd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: just created, ours alone.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    loop {
        let mut fds = vec![
            libc::pollfd {
                fd: pidfd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: sigfd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        let mut connects = Vec::new();
        if let Some(s) = &sup {
            fds.push(libc::pollfd {
                fd: s.fd(),
                events: libc::POLLIN,
                revents: 0,
            });
            fds.push(libc::pollfd {
                fd: s.wake_fd(),
                events: libc::POLLIN,
                revents: 0,
            });
            let (inodes, more) = s.connect_polls();
            connects = inodes;
            fds.extend(more);
        }
        // SAFETY: `fds` is a live array of the length given.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return Err(e);
        }
        if let Some(sup) = sup.as_mut() {
            sup.connects_polled(&connects, fds.get(4..).unwrap_or_default());
        }
        if fds.get(3).is_some_and(|w| w.revents & libc::POLLIN != 0) {
            if let Some(sup) = sup.as_mut() {
                sup.finish_waits();
            }
        }
        if let Some(s) = fds.get(2) {
            if s.revents & libc::POLLIN != 0 {
                if let Some(sup) = sup.as_mut() {
                    if let Err(e) = sup.handle_one() {
                        log.debug(|| format!("answering a socket() call: {e}"));
                    }
                }
            } else if s.revents & (libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0 {
                // No process carries the filter any more.
                sup = None;
            }
        }
        if fds[1].revents & libc::POLLIN != 0 {
            forward_signals(sigfd.as_raw_fd(), child);
        }
        if fds[0].revents & libc::POLLIN != 0 {
            let ended = reap(child)?;
            if let Some(sup) = sup {
                linger(sup, log);
            }
            return Ok(ended);
        }
    }
}

fn forward_signals(sigfd: RawFd, child: libc::pid_t) {
    loop {
        let mut info = MaybeUninit::<libc::signalfd_siginfo>::zeroed();
        let size = size_of::<libc::signalfd_siginfo>();
        // SAFETY: reads at most one signalfd_siginfo into our buffer.
        let n = unsafe { libc::read(sigfd, info.as_mut_ptr().cast(), size) };
        if n != size as isize {
            return;
        }
        // SAFETY: the kernel filled the whole structure.
        let info = unsafe { info.assume_init() };
        // A terminal's signals (Ctrl-C) reach the whole foreground group,
        // the program included: passing them on would deliver them twice.
        if info.ssi_code != libc::SI_KERNEL {
            // SAFETY: kill takes integers only.
            unsafe { libc::kill(child, info.ssi_signo as libc::c_int) };
        }
    }
}

fn reap(child: libc::pid_t) -> io::Result<Ended> {
    let mut status = 0;
    loop {
        // SAFETY: waits for our own child; `status` is a live int.
        let rc = unsafe { libc::waitpid(child, &mut status, 0) };
        if rc == child {
            break;
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINTR) {
            return Err(e);
        }
    }
    Ok(if libc::WIFSIGNALED(status) {
        Ended::Signaled(libc::WTERMSIG(status))
    } else {
        Ended::Exited(libc::WEXITSTATUS(status))
    })
}

/// When the program is gone but processes it started still carry the
/// filter, a detached copy of the supervisor answers them until the last
/// one exits; `dropshim run` itself returns the program's status now.
fn linger(mut sup: Supervisor, log: Log) {
    let mut pfd = libc::pollfd {
        fd: sup.fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one live pollfd; zero timeout.
    let n = unsafe { libc::poll(&mut pfd, 1, 0) };
    if n == 1 && pfd.revents & libc::POLLIN == 0 {
        return; // hung up: nobody left
    }
    // SAFETY: the child runs only this supervisor's loop. Its other
    // threads (workers waiting for calls) do not follow it; it starts its
    // own ([`Supervisor::after_fork`]). glibc's fork leaves malloc usable
    // in the child, and no lock the loop takes is held by a worker: they
    // share only the channel, which the child replaces.
    let pid = unsafe { libc::fork() };
    if pid != 0 {
        return;
    }
    // SAFETY: detaching from the terminal and the caller's pipes, so a
    // reader of `dropshim run`'s output sees its end when the program ends.
    unsafe {
        libc::setsid();
        if let Ok(null) = CString::new("/dev/null") {
            let fd = libc::open(null.as_ptr(), libc::O_RDWR);
            if fd >= 0 {
                for target in 0..3 {
                    libc::dup2(fd, target);
                }
                libc::close(fd);
            }
        }
    }
    if let Err(e) = sup.after_fork() {
        log.debug(|| format!("the detached supervisor: {e}"));
        // SAFETY: ends the detached copy, as below.
        unsafe { libc::_exit(0) };
    }
    loop {
        let mut fds = vec![
            libc::pollfd {
                fd: sup.fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: sup.wake_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        let (connects, more) = sup.connect_polls();
        fds.extend(more);
        // SAFETY: `fds` is a live array of the length given.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if n < 0 {
            if io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            break;
        }
        sup.connects_polled(&connects, &fds[2..]);
        if fds[1].revents & libc::POLLIN != 0 {
            sup.finish_waits();
        }
        if fds[0].revents & libc::POLLIN != 0 {
            if let Err(e) = sup.handle_one() {
                log.debug(|| format!("answering a socket() call: {e}"));
            }
        } else if fds[0].revents != 0 {
            break;
        }
    }
    // SAFETY: ends the detached copy without running the parent's
    // exit-time code a second time.
    unsafe { libc::_exit(0) };
}

/// Ends `dropshim run` the way the program ended: the same exit code, or
/// the same signal.
pub fn exit_like(ended: Ended) -> ExitCode {
    match ended {
        Ended::Exited(code) => ExitCode::from(code as u8),
        Ended::Signaled(sig) => {
            // SAFETY: restore the default action, unblock and raise the
            // signal on ourselves so our parent sees the same death.
            unsafe {
                libc::signal(sig, libc::SIG_DFL);
                let mut set = MaybeUninit::<libc::sigset_t>::zeroed();
                libc::sigemptyset(set.as_mut_ptr());
                libc::sigaddset(set.as_mut_ptr(), sig);
                libc::sigprocmask(libc::SIG_UNBLOCK, set.as_ptr(), std::ptr::null_mut());
                libc::raise(sig);
            }
            // Signals that do not end a process by default land here.
            ExitCode::from((128 + sig) as u8)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A classic-BPF interpreter for the instructions the filter uses,
    /// over a `seccomp_data` laid out as the kernel lays it out.
    fn run(prog: &[libc::sock_filter], nr: i64, args: [u64; 6], arch: u32) -> u32 {
        let mut data = Vec::new();
        data.extend_from_slice(&(nr as u32).to_ne_bytes());
        data.extend_from_slice(&arch.to_ne_bytes());
        data.extend_from_slice(&0u64.to_ne_bytes());
        for a in args {
            data.extend_from_slice(&a.to_ne_bytes());
        }
        let mut acc = 0u32;
        let mut pc = 0usize;
        loop {
            let ins = prog[pc];
            pc += 1;
            match ins.code {
                LD_W_ABS => {
                    let at = ins.k as usize;
                    acc = u32::from_ne_bytes(data[at..at + 4].try_into().expect("4 bytes"));
                }
                AND_K => acc &= ins.k,
                JEQ_K => pc += usize::from(if acc == ins.k { ins.jt } else { ins.jf }),
                RET_K => return ins.k,
                other => panic!("unexpected opcode {other:#x}"),
            }
        }
    }

    const NOTIFY: u32 = libc::SECCOMP_RET_USER_NOTIF;
    const ALLOW: u32 = libc::SECCOMP_RET_ALLOW;

    fn socket_call(domain: i32, ty: i32, proto: i32, fourth: u64) -> u32 {
        let args = [domain as u64, ty as u64, proto as u64, fourth, 0, 0];
        run(&filter_with(None), libc::SYS_socket, args, AUDIT_ARCH)
    }

    #[test]
    fn tcp_stream_sockets_of_both_families_are_trapped() {
        for domain in [libc::AF_INET, libc::AF_INET6] {
            for proto in [0, libc::IPPROTO_TCP] {
                for flags in [
                    0,
                    libc::SOCK_NONBLOCK,
                    libc::SOCK_CLOEXEC,
                    libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                ] {
                    assert_eq!(
                        socket_call(domain, libc::SOCK_STREAM | flags, proto, 0xdead),
                        NOTIFY,
                        "domain {domain} proto {proto} flags {flags:#x}"
                    );
                }
            }
        }
    }

    #[test]
    fn everything_else_runs_untouched() {
        let stream = libc::SOCK_STREAM;
        // Already MPTCP, UDP, Unix, raw, netlink, SCTP-over-stream.
        assert_eq!(socket_call(libc::AF_INET, stream, IPPROTO_MPTCP, 0), ALLOW);
        assert_eq!(socket_call(libc::AF_INET, libc::SOCK_DGRAM, 0, 0), ALLOW);
        assert_eq!(socket_call(libc::AF_UNIX, stream, 0, 0), ALLOW);
        assert_eq!(socket_call(libc::AF_INET, libc::SOCK_RAW, 6, 0), ALLOW);
        assert_eq!(socket_call(libc::AF_NETLINK, libc::SOCK_RAW, 0, 0), ALLOW);
        assert_eq!(socket_call(libc::AF_INET6, stream, 132, 0), ALLOW);
        // The shim's own deliberate TCP sockets carry the mark.
        assert_eq!(
            socket_call(libc::AF_INET, stream, 6, SOCKET_PASS_MARK),
            ALLOW
        );
        assert_eq!(
            socket_call(libc::AF_INET6, stream, 0, SOCKET_PASS_MARK),
            ALLOW
        );
        // Half the mark is no mark.
        assert_eq!(
            socket_call(libc::AF_INET, stream, 6, SOCKET_PASS_MARK & 0xffff_ffff),
            NOTIFY
        );
        // Other system calls and other ABIs.
        let args = [libc::AF_INET as u64, stream as u64, 0, 0, 0, 0];
        assert_eq!(
            run(&filter_with(None), libc::SYS_connect, args, AUDIT_ARCH),
            ALLOW
        );
        assert_eq!(
            run(&filter_with(None), libc::SYS_socket, args, 0x4000_0003),
            ALLOW
        );
    }

    #[test]
    fn native_filter_traps_addresses_when_the_policy_decides_by_them() {
        let strict = dropshim_conf::Policy::default();
        assert!(super::super::native::needs_addresses(&strict));
        let pass = 0x0123_4567_89ab_cdef_u64;
        let native = filter_for(&Mode::Native {
            policy: strict,
            addresses: true,
            pass,
        });
        let none = [0u64; 6];
        for nr in [libc::SYS_connect, libc::SYS_bind, libc::SYS_listen] {
            assert_eq!(run(&native, nr, none, AUDIT_ARCH), NOTIFY, "{nr}");
            assert_eq!(run(&native, nr, none, COMPAT.0), ALLOW, "{nr}");
            // The shim's calls carry the run's pass in the sixth argument.
            let passing = [3, 0x1000, 16, 0, 0, pass];
            assert_eq!(run(&native, nr, passing, AUDIT_ARCH), ALLOW, "{nr}");
            let half = [3, 0x1000, 16, 0, 0, pass & 0xffff_ffff];
            assert_eq!(run(&native, nr, half, AUDIT_ARCH), NOTIFY, "{nr}");
            let elsewhere = [3, 0x1000, 16, pass, 0, 0];
            assert_eq!(run(&native, nr, elsewhere, AUDIT_ARCH), NOTIFY, "{nr}");
        }
        assert_eq!(run(&native, libc::SYS_accept4, none, AUDIT_ARCH), ALLOW);
        assert_eq!(run(&native, libc::SYS_read, none, AUDIT_ARCH), ALLOW);
        let tcp = [libc::AF_INET as u64, libc::SOCK_STREAM as u64, 0, 0, 0, 0];
        assert_eq!(run(&native, libc::SYS_socket, tcp, AUDIT_ARCH), NOTIFY);
        let udp = [libc::AF_INET as u64, libc::SOCK_DGRAM as u64, 0, 0, 0, 0];
        assert_eq!(run(&native, libc::SYS_socket, udp, AUDIT_ARCH), ALLOW);

        // MPTCP for every socket, loopback included: socket() alone.
        let all = dropshim_conf::Policy {
            loopback: true,
            ..Default::default()
        };
        assert!(!super::super::native::needs_addresses(&all));
        let native = filter_for(&Mode::Native {
            policy: all,
            addresses: false,
            pass: 0,
        });
        assert_eq!(run(&native, libc::SYS_connect, none, AUDIT_ARCH), ALLOW);
        assert_eq!(run(&native, libc::SYS_socket, tcp, AUDIT_ARCH), NOTIFY);
    }

    #[test]
    fn uml_filter_traps_socket_calls_and_only_so_error_of_getsockopt() {
        let pass = 0x1234_5678_9abc_def0u64;
        let uml = filter_for(&Mode::Uml {
            device: "d".into(),
            policy: dropshim_conf::Policy::default(),
            pass,
        });
        let none = [0u64; 6];
        let with_pass = [3, 0, 16, 0, 0, pass];
        let half_pass = [3, 0, 16, 0, 0, pass & 0xffff_ffff];
        for nr in [libc::SYS_connect, libc::SYS_bind, libc::SYS_listen] {
            assert_eq!(run(&uml, nr, with_pass, AUDIT_ARCH), ALLOW, "{nr}");
            assert_eq!(run(&uml, nr, half_pass, AUDIT_ARCH), NOTIFY, "{nr}");
        }
        assert_eq!(run(&uml, libc::SYS_accept, with_pass, AUDIT_ARCH), NOTIFY);
        for nr in [
            libc::SYS_connect,
            libc::SYS_bind,
            libc::SYS_listen,
            libc::SYS_accept,
            libc::SYS_accept4,
            libc::SYS_getsockname,
            libc::SYS_getpeername,
        ] {
            assert_eq!(run(&uml, nr, none, AUDIT_ARCH), NOTIFY, "{nr}");
        }
        let getsockopt = |level: i32, name: i32| {
            let args = [3, level as u64, name as u64, 0, 0, 0];
            run(&uml, libc::SYS_getsockopt, args, AUDIT_ARCH)
        };
        assert_eq!(getsockopt(libc::SOL_SOCKET, libc::SO_ERROR), NOTIFY);
        assert_eq!(getsockopt(libc::SOL_SOCKET, libc::SO_RCVBUF), ALLOW);
        assert_eq!(getsockopt(libc::IPPROTO_TCP, libc::SO_ERROR), ALLOW);
        assert_eq!(run(&uml, libc::SYS_socket, none, AUDIT_ARCH), ALLOW);
        assert_eq!(run(&uml, libc::SYS_read, none, AUDIT_ARCH), ALLOW);
        assert_eq!(run(&uml, libc::SYS_connect, none, COMPAT.0), ALLOW);
    }

    #[test]
    fn every_filter_traps_the_32_bit_abis_socket_calls_only() {
        let filters = [
            filter_for(&Mode::Native {
                policy: dropshim_conf::Policy::default(),
                addresses: true,
                pass: 7,
            }),
            filter_with(None),
            filter_for(&Mode::Uml {
                device: "d".into(),
                policy: dropshim_conf::Policy::default(),
                pass: 7,
            }),
            filter_for(&Mode::Watch {
                backend: dropshim_conf::BackendKind::Lkl,
            }),
        ];
        let (arch, socket, socketcall) = COMPAT;
        let tcp = [libc::AF_INET as u64, libc::SOCK_STREAM as u64, 0, 0, 0, 0];
        for f in &filters {
            assert_eq!(run(f, i64::from(socket), tcp, arch), NOTIFY);
            if let Some(nr) = socketcall {
                let socket_call = [u64::from(SOCKETCALL_SOCKET), 0xffd0_0000, 0, 0, 0, 0];
                assert_eq!(run(f, i64::from(nr), socket_call, arch), NOTIFY);
                // socketcall(SYS_CONNECT, ...) runs.
                let connect_call = [3, 0xffd0_0000, 0, 0, 0, 0];
                assert_eq!(run(f, i64::from(nr), connect_call, arch), ALLOW);
            }
            // The host ABI's number of socket() means something else there.
            assert_eq!(run(f, libc::SYS_socket, tcp, arch), ALLOW);
            assert_eq!(run(f, 3, tcp, arch), ALLOW);
            // Another foreign ABI altogether runs untouched.
            assert_eq!(run(f, i64::from(socket), tcp, 0x4000_0028 + 1), ALLOW);
        }
        // Watching only: nothing of the host's ABI is trapped.
        let watch = &filters[3];
        assert_eq!(run(watch, libc::SYS_socket, tcp, AUDIT_ARCH), ALLOW);
        assert_eq!(run(watch, libc::SYS_connect, tcp, AUDIT_ARCH), ALLOW);
    }
}
