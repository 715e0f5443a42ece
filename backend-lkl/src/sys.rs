//! The boundary with the library kernel: loading `liblkl.so`, the host
//! operations it calls back (threads, semaphores, thread-local storage,
//! clocks, the timer, memory, device registers) and its entry points.
//!
//! All `unsafe` of the crate that touches the C contract lives here (and in
//! `virtio.rs` for guest memory). The contract is
//! `kernel/arch/lkl/include/uapi/asm/lkl_host.h`; the structure below must
//! match it field for field.

use std::cell::RefCell;
use std::ffi::{c_char, c_int, c_long, c_uint, c_ulong, c_ulonglong, c_void, CStr, CString};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Interrupt line of the kernel timer (lkl_host.h).
pub const TIMER_IRQ: c_int = 1;
/// First interrupt line free for devices (lkl_host.h).
pub const FIRST_DEVICE_IRQ: c_int = 3;
/// Interrupt lines the kernel has (lkl_host.h).
pub const NR_IRQS: c_int = 64;
/// `lkl_syscall` number that registers a virtio-mmio device.
pub const NR_VIRTIO_MMIO_ADD: c_long = 4096;
/// `lkl_syscall` number that halts the kernel.
pub const NR_HALT: c_long = 4097;

#[repr(C)]
struct HostOps {
    print: unsafe extern "C" fn(*const c_char, c_int),
    panic: unsafe extern "C" fn(),
    sem_alloc: unsafe extern "C" fn(c_int) -> *mut c_void,
    sem_free: unsafe extern "C" fn(*mut c_void),
    sem_up: unsafe extern "C" fn(*mut c_void),
    sem_down: unsafe extern "C" fn(*mut c_void),
    thread_create: unsafe extern "C" fn(unsafe extern "C" fn(*mut c_void), *mut c_void) -> c_int,
    tls_alloc: unsafe extern "C" fn(*mut c_ulong, unsafe extern "C" fn(*mut c_void)) -> c_int,
    tls_free: unsafe extern "C" fn(c_ulong),
    tls_set: unsafe extern "C" fn(c_ulong, *mut c_void) -> c_int,
    tls_get: unsafe extern "C" fn(c_ulong) -> *mut c_void,
    time_ns: unsafe extern "C" fn() -> c_ulonglong,
    realtime_ns: unsafe extern "C" fn() -> c_ulonglong,
    timer_set: unsafe extern "C" fn(c_ulonglong),
    mem_alloc: unsafe extern "C" fn(c_ulong) -> *mut c_void,
    mem_free: unsafe extern "C" fn(*mut c_void),
    iomem_access: unsafe extern "C" fn(c_ulong, *mut c_void, c_int, c_int) -> c_int,
}

type StartKernelFn = unsafe extern "C" fn(*const HostOps, c_ulong, *const c_char) -> c_int;
type SyscallFn = unsafe extern "C" fn(c_long, *mut c_long) -> c_long;
type TriggerIrqFn = unsafe extern "C" fn(c_int);

/// The loaded library's entry points.
struct Entry {
    start_kernel: StartKernelFn,
    syscall: SyscallFn,
    trigger_irq: TriggerIrqFn,
}

static ENTRY: OnceLock<Entry> = OnceLock::new();
static LOG: Mutex<String> = Mutex::new(String::new());
static ECHO_LOG: OnceLock<bool> = OnceLock::new();
static THREADS: Mutex<Vec<JoinHandle<()>>> = Mutex::new(Vec::new());
static LIVE_SEMS: AtomicUsize = AtomicUsize::new(0);
static TIMER: OnceLock<Arc<Timer>> = OnceLock::new();
/// Registered device register windows: (base, size, device).
type DeviceTable = Vec<(u64, u64, Arc<dyn MmioDevice>)>;
static DEVICES: Mutex<DeviceTable> = Mutex::new(Vec::new());

/// A device whose registers the kernel reads and writes through the host.
pub trait MmioDevice: Send + Sync {
    /// Register read at `offset` of `size` bytes.
    fn read(&self, offset: u64, size: u32) -> u64;
    /// Register write at `offset` of `size` bytes.
    fn write(&self, offset: u64, value: u64, size: u32);
}

/// Loads the library at `path` (once per process) and returns an error
/// saying what is wrong otherwise.
pub fn load(path: &Path) -> Result<(), String> {
    if ENTRY.get().is_some() {
        return Ok(());
    }
    let c_path = CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| format!("library path {} contains a NUL byte", path.display()))?;
    // SAFETY: dlopen with a valid C string; the handle is never closed, so
    // the symbols stay valid for the life of the process.
    let handle = unsafe { libc::dlopen(c_path.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
    if handle.is_null() {
        // SAFETY: dlerror returns a thread-local C string or NULL.
        let why = unsafe {
            let e = libc::dlerror();
            if e.is_null() {
                "unknown error".to_string()
            } else {
                CStr::from_ptr(e).to_string_lossy().into_owned()
            }
        };
        return Err(format!(
            "cannot load the LKL library {}: {why}",
            path.display()
        ));
    }
    let sym = |name: &CStr| -> Result<*mut c_void, String> {
        // SAFETY: handle is a live dlopen handle and name a C string.
        let p = unsafe { libc::dlsym(handle, name.as_ptr()) };
        if p.is_null() {
            Err(format!(
                "{} does not export {:?}: not a dropshim LKL build",
                path.display(),
                name
            ))
        } else {
            Ok(p)
        }
    };
    let start = sym(c"lkl_start_kernel")?;
    let syscall = sym(c"lkl_syscall")?;
    let irq = sym(c"lkl_trigger_irq")?;
    // SAFETY: the symbols have exactly these C signatures (lkl_host.h).
    let entry = unsafe {
        Entry {
            start_kernel: std::mem::transmute::<*mut c_void, StartKernelFn>(start),
            syscall: std::mem::transmute::<*mut c_void, SyscallFn>(syscall),
            trigger_irq: std::mem::transmute::<*mut c_void, TriggerIrqFn>(irq),
        }
    };
    let _ = ENTRY.set(entry);
    Ok(())
}

fn entry() -> Result<&'static Entry, String> {
    ENTRY
        .get()
        .ok_or_else(|| "the LKL library is not loaded".to_string())
}

/// Boots the kernel. Returns the kernel's result (0 or -errno).
pub fn start_kernel(mem: u64, cmdline: &str) -> Result<i32, String> {
    let e = entry()?;
    let cmd = CString::new(cmdline).map_err(|_| "kernel command line contains a NUL byte")?;
    let _ = TIMER.get_or_init(Timer::start);
    let _ = ECHO_LOG.get_or_init(|| {
        std::env::var("DROPSHIM_LOG").is_ok_and(|v| v == "debug")
            || std::env::var_os("DROPSHIM_LKL_CONSOLE").is_some()
    });
    let mem = c_ulong::try_from(mem).map_err(|_| "memory size too large")?;
    // SAFETY: OPS lives for the whole process and matches lkl_host.h; the
    // command line is copied by the kernel before this returns.
    let r = unsafe { (e.start_kernel)(&OPS, mem, cmd.as_ptr()) };
    run_after_kernel();
    Ok(r)
}

/// Issues system call `nr` (generic numbering) in the library kernel.
pub fn syscall(nr: c_long, args: [c_long; 6]) -> c_long {
    let Ok(e) = entry() else {
        return -(libc::ENOSYS as c_long);
    };
    let mut a = args;
    // SAFETY: lkl_syscall reads six longs from the array, which outlives
    // the call; pointers among the arguments are the caller's business
    // (see the safe wrappers in lib.rs).
    let r = unsafe { (e.syscall)(nr, a.as_mut_ptr()) };
    run_after_kernel();
    r
}

/// Raises interrupt `irq` from any host thread.
pub fn trigger_irq(irq: c_int) {
    if let Ok(e) = entry() {
        // SAFETY: lkl_trigger_irq sets a bit and, if the CPU is free,
        // runs the handlers on this thread.
        unsafe { (e.trigger_irq)(irq) };
        run_after_kernel();
    }
}

/// Work that kernel code asks for but that must not run while the
/// calling thread holds the kernel's CPU (see [`after_kernel`]).
pub(crate) trait AfterKernel: Send + Sync {
    fn run_after_kernel(&self);
}

thread_local! {
    /// What this thread runs once it is out of the kernel.
    static AFTER_KERNEL: RefCell<Vec<Arc<dyn AfterKernel>>> = const { RefCell::new(Vec::new()) };
}

/// Runs `work` once the calling thread no longer runs kernel code: when
/// its library call or interrupt returns, before it sleeps, or when its
/// kernel thread ends. Called from kernel code, which holds the kernel's
/// one CPU: a host thread woken there often preempts its waker on a busy
/// machine (it slept, so the host scheduler favours it), and the kernel
/// then waits, CPU held, for the waker to run again. On 2 shared cores
/// that was most of the cost of a small send (25 of 40 us).
pub(crate) fn after_kernel(work: Arc<dyn AfterKernel>) {
    let queued = AFTER_KERNEL.try_with(|q| {
        let mut q = q.borrow_mut();
        let same = |w: &Arc<dyn AfterKernel>| std::ptr::addr_eq(Arc::as_ptr(w), Arc::as_ptr(&work));
        if !q.iter().any(same) {
            q.push(Arc::clone(&work));
        }
    });
    // A thread on its way out (the exit flush's last calls) runs it now.
    if queued.is_err() {
        work.run_after_kernel();
    }
}

/// Runs what [`after_kernel`] put off.
fn run_after_kernel() {
    loop {
        let work = AFTER_KERNEL
            .try_with(|q| {
                let mut q = q.borrow_mut();
                (!q.is_empty()).then(|| std::mem::take(&mut *q))
            })
            .ok()
            .flatten();
        let Some(work) = work else { return };
        for w in work {
            w.run_after_kernel();
        }
    }
}

/// Adds one to eventfd `fd`, which wakes its reader.
pub(crate) fn write_eventfd(fd: &OwnedFd) {
    let one: u64 = 1;
    // SAFETY: writes 8 bytes from `one` to an open eventfd.
    unsafe { libc::write(fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
}

/// Everything the kernel printed so far.
pub fn kernel_log() -> String {
    LOG.lock().map(|l| l.clone()).unwrap_or_default()
}

/// Waits for every host thread the kernel created to end (after halt).
pub fn join_kernel_threads() -> usize {
    let handles: Vec<_> = match THREADS.lock() {
        Ok(mut t) => t.drain(..).collect(),
        Err(_) => return 0,
    };
    let n = handles.len();
    for h in handles {
        let _ = h.join();
    }
    n
}

/// Stops the host timer thread (after halt).
pub fn stop_timer() {
    if let Some(t) = TIMER.get() {
        t.stop();
    }
}

/// Host semaphores currently allocated by the kernel.
pub fn live_semaphores() -> usize {
    LIVE_SEMS.load(Ordering::SeqCst)
}

/// Registers a device serving registers at `[base, base+size)`.
pub fn register_device(base: u64, size: u64, dev: Arc<dyn MmioDevice>) {
    if let Ok(mut d) = DEVICES.lock() {
        d.push((base, size, dev));
    }
}

/// Path of the library: `DROPSHIM_LKL_LIB`, else taken from the cache of
/// `build-lkl.sh` next to this crate's sources, which builds it first only
/// when `allow_build` (never inside a shimmed program: minutes); where
/// those sources are not (an install from the Debian package), the
/// library the package installed.
pub fn locate_library(allow_build: bool) -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("DROPSHIM_LKL_LIB") {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(format!(
                "DROPSHIM_LKL_LIB={} is not a file; point it at liblkl.so or unset it",
                p.display()
            ))
        };
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("build-lkl.sh");
    if !script.is_file() {
        // Installed from the Debian package: the library ships with it.
        let installed = PathBuf::from(format!(
            "/usr/lib/{}-linux-gnu/dropshim/liblkl.so",
            std::env::consts::ARCH
        ));
        if installed.is_file() {
            return Ok(installed);
        }
    }
    let mut cmd = std::process::Command::new("sh");
    cmd.arg(&script);
    if !allow_build {
        cmd.env("LKL_NO_BUILD", "1");
    }
    let out = cmd
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
    if !out.status.success() {
        return Err(format!(
            "{} failed ({}); see the messages above",
            script.display(),
            out.status
        ));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let dir = stdout.lines().last().unwrap_or("").trim();
    let lib = Path::new(dir).join("liblkl.so");
    if lib.is_file() {
        Ok(lib)
    } else {
        Err(format!(
            "{} did not produce {}",
            script.display(),
            lib.display()
        ))
    }
}

// ---------------------------------------------------------------- host ops

static OPS: HostOps = HostOps {
    print: op_print,
    panic: op_panic,
    sem_alloc: op_sem_alloc,
    sem_free: op_sem_free,
    sem_up: op_sem_up,
    sem_down: op_sem_down,
    thread_create: op_thread_create,
    tls_alloc: op_tls_alloc,
    tls_free: op_tls_free,
    tls_set: op_tls_set,
    tls_get: op_tls_get,
    time_ns: op_time_ns,
    realtime_ns: op_realtime_ns,
    timer_set: op_timer_set,
    mem_alloc: op_mem_alloc,
    mem_free: op_mem_free,
    iomem_access: op_iomem_access,
};

unsafe extern "C" fn op_print(s: *const c_char, len: c_int) {
    let len = usize::try_from(len).unwrap_or(0);
    // SAFETY: the kernel passes len readable bytes.
    let bytes = unsafe { std::slice::from_raw_parts(s.cast::<u8>(), len) };
    let text = String::from_utf8_lossy(bytes);
    if ECHO_LOG.get().copied().unwrap_or(false) {
        for line in text.lines() {
            eprintln!("dropshim-lkl: {line}");
        }
    }
    if let Ok(mut l) = LOG.lock() {
        // Keep the log bounded: boot messages plus recent lines.
        if l.len() > 1 << 20 {
            let cut = l.len() - (1 << 19);
            l.drain(..cut);
        }
        l.push_str(&text);
    }
}

unsafe extern "C" fn op_panic() {
    eprintln!("dropshim-lkl: the library kernel panicked; its log:");
    eprintln!("{}", kernel_log());
    std::process::abort();
}

/// A counting semaphore on one futex word: `up` is an atomic update
/// (plus a wake only when someone sleeps), `down` takes a unit without a
/// system call whenever one is there. Every kernel context switch is an
/// `up` of the next task's semaphore and a `down` of the previous one's,
/// so this is the hottest host operation the kernel uses.
///
/// The word holds the count and, in its top bit, "someone sleeps here".
/// After its atomic update `up` touches the word only through the futex
/// call, so a waiter may free the semaphore as soon as it has its unit.
struct Sem {
    word: AtomicU32,
}

const SLEEPERS: u32 = 1 << 31;

impl Sem {
    fn try_take(&self) -> bool {
        let mut w = self.word.load(Ordering::Acquire);
        while w & !SLEEPERS > 0 {
            match self
                .word
                .compare_exchange_weak(w, w - 1, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return true,
                Err(now) => w = now,
            }
        }
        false
    }

    fn up(&self) {
        // Add one and clear the sleepers bit; whoever slept re-checks.
        let mut w = self.word.load(Ordering::Acquire);
        loop {
            let new = (w & !SLEEPERS) + 1;
            match self
                .word
                .compare_exchange_weak(w, new, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => break,
                Err(now) => w = now,
            }
        }
        if w & SLEEPERS != 0 {
            futex(
                &self.word,
                libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG,
                i32::MAX as u32,
            );
        }
    }

    fn down(&self) {
        loop {
            if self.try_take() {
                return;
            }
            // The count is 0: mark that we sleep, then sleep only while
            // the word still says exactly that (an `up` in between changes
            // it and FUTEX_WAIT returns at once).
            let w = self.word.load(Ordering::Acquire);
            if w & !SLEEPERS != 0 {
                continue;
            }
            if w & SLEEPERS == 0
                && self
                    .word
                    .compare_exchange(0, SLEEPERS, Ordering::AcqRel, Ordering::Acquire)
                    .is_err()
            {
                continue;
            }
            // This thread is about to sleep: no kernel code runs on it
            // until it wakes, so the wake-ups it put off are due.
            run_after_kernel();
            futex(
                &self.word,
                libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
                SLEEPERS,
            );
        }
    }
}

fn futex(word: &AtomicU32, op: c_int, val: u32) {
    // SAFETY: word is a live, aligned u32; no timeout, no second word.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            op,
            val,
            std::ptr::null::<libc::timespec>(),
            std::ptr::null::<u32>(),
            0u32,
        )
    };
}

unsafe extern "C" fn op_sem_alloc(count: c_int) -> *mut c_void {
    LIVE_SEMS.fetch_add(1, Ordering::SeqCst);
    let s = Box::new(Sem {
        word: AtomicU32::new(u32::try_from(count).unwrap_or(0).min(SLEEPERS - 1)),
    });
    Box::into_raw(s).cast()
}

unsafe extern "C" fn op_sem_free(sem: *mut c_void) {
    if sem.is_null() {
        return;
    }
    LIVE_SEMS.fetch_sub(1, Ordering::SeqCst);
    // SAFETY: sem came from op_sem_alloc and the kernel frees it once.
    drop(unsafe { Box::from_raw(sem.cast::<Sem>()) });
}

unsafe extern "C" fn op_sem_up(sem: *mut c_void) {
    // SAFETY: sem came from op_sem_alloc and is alive while the kernel uses it.
    unsafe { &*sem.cast::<Sem>() }.up();
}

unsafe extern "C" fn op_sem_down(sem: *mut c_void) {
    // SAFETY: as in op_sem_up.
    unsafe { &*sem.cast::<Sem>() }.down();
}

struct SendPtr(*mut c_void);
// SAFETY: the pointer is handed to exactly one new thread, which is the
// kernel's intent (a task_struct owned by that thread from then on).
unsafe impl Send for SendPtr {}

unsafe extern "C" fn op_thread_create(
    f: unsafe extern "C" fn(*mut c_void),
    arg: *mut c_void,
) -> c_int {
    let arg = SendPtr(arg);
    let spawned = std::thread::Builder::new()
        .name("lkl-kernel".into())
        .stack_size(512 * 1024)
        .spawn(move || {
            let a = arg;
            // SAFETY: f is a kernel thread entry expecting this argument.
            unsafe { f(a.0) };
            // The thread's task died (or the kernel halted) in kernel code.
            run_after_kernel();
        });
    match spawned {
        Ok(h) => {
            if let Ok(mut t) = THREADS.lock() {
                t.retain(|h| !h.is_finished());
                t.push(h);
            }
            0
        }
        Err(_) => -1,
    }
}

unsafe extern "C" fn op_tls_alloc(
    key: *mut c_ulong,
    destructor: unsafe extern "C" fn(*mut c_void),
) -> c_int {
    let mut k: libc::pthread_key_t = 0;
    // SAFETY: pthread_key_create with a valid out pointer; the destructor
    // is a C function of the right type.
    let r = unsafe { libc::pthread_key_create(&mut k, Some(destructor)) };
    if r == 0 {
        // SAFETY: key points to writable memory owned by the kernel.
        unsafe { *key = c_ulong::from(k) };
    }
    r
}

unsafe extern "C" fn op_tls_free(key: c_ulong) {
    // SAFETY: key came from op_tls_alloc.
    unsafe { libc::pthread_key_delete(key as libc::pthread_key_t) };
}

unsafe extern "C" fn op_tls_set(key: c_ulong, data: *mut c_void) -> c_int {
    // SAFETY: key came from op_tls_alloc.
    unsafe { libc::pthread_setspecific(key as libc::pthread_key_t, data) }
}

unsafe extern "C" fn op_tls_get(key: c_ulong) -> *mut c_void {
    // SAFETY: key came from op_tls_alloc.
    unsafe { libc::pthread_getspecific(key as libc::pthread_key_t) }
}

fn clock_ns(clock: libc::clockid_t) -> c_ulonglong {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec we own.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    (ts.tv_sec as c_ulonglong) * 1_000_000_000 + ts.tv_nsec as c_ulonglong
}

unsafe extern "C" fn op_time_ns() -> c_ulonglong {
    clock_ns(libc::CLOCK_MONOTONIC)
}

unsafe extern "C" fn op_realtime_ns() -> c_ulonglong {
    clock_ns(libc::CLOCK_REALTIME)
}

unsafe extern "C" fn op_timer_set(delta_ns: c_ulonglong) {
    if let Some(t) = TIMER.get() {
        t.set(if delta_ns == 0 {
            None
        } else {
            Some(Instant::now() + Duration::from_nanos(delta_ns))
        });
    }
}

/// Requests this large are the page allocator's memory (the kernel's
/// only one; everything else it asks for is a few KiB).
const PAGE_ALLOCATOR_MIN: usize = 16 << 20;

/// Where the page allocator's memory is asked to go: low, but far above
/// any program's heap. The kernel's boot walks its page frame numbers
/// from 0 up to the memory in steps of 4 MiB (the memory map's holes), so
/// memory at the usual mmap addresses (about 128 TiB) costs 30 million
/// steps, about 50 ms on every program's first socket; here it is 16,384.
const PAGE_ALLOCATOR_HINT: usize = 64 << 30;

/// The page allocator's memory (address, length), to unmap on free.
static PAGE_ALLOCATOR: Mutex<Option<(usize, usize)>> = Mutex::new(None);

unsafe extern "C" fn op_mem_alloc(size: c_ulong) -> *mut c_void {
    let size = size as usize;
    if size >= PAGE_ALLOCATOR_MIN {
        // SAFETY: an anonymous private mapping with a hint only (no
        // MAP_FIXED): the kernel takes the hint when the range is free
        // and picks another address otherwise, so nothing mapped is
        // replaced. The pages are zeroed and backed lazily, as calloc's.
        let p = unsafe {
            libc::mmap(
                PAGE_ALLOCATOR_HINT as *mut c_void,
                size,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return std::ptr::null_mut();
        }
        if let Ok(mut slot) = PAGE_ALLOCATOR.lock() {
            *slot = Some((p as usize, size));
        }
        return p;
    }
    // calloc: zeroed like the big block.
    // SAFETY: plain allocation.
    unsafe { libc::calloc(1, size) }
}

unsafe extern "C" fn op_mem_free(p: *mut c_void) {
    if let Ok(mut slot) = PAGE_ALLOCATOR.lock() {
        if let Some((addr, len)) = *slot {
            if addr == p as usize {
                *slot = None;
                // SAFETY: (addr, len) is the mapping op_mem_alloc made,
                // handed back once by the kernel.
                unsafe { libc::munmap(p, len) };
                return;
            }
        }
    }
    // SAFETY: any other p came from calloc in op_mem_alloc.
    unsafe { libc::free(p) }
}

unsafe extern "C" fn op_iomem_access(
    addr: c_ulong,
    val: *mut c_void,
    size: c_int,
    write: c_int,
) -> c_int {
    #[allow(clippy::unnecessary_cast)] // c_ulong is u32 on some targets
    let addr = addr as u64;
    let dev = DEVICES.lock().ok().and_then(|d| {
        d.iter()
            .find(|(b, s, _)| addr >= *b && addr < b + s)
            .map(|(b, _, dev)| (*b, Arc::clone(dev)))
    });
    let Some((base, dev)) = dev else {
        return -1;
    };
    let size_u = c_uint::try_from(size).unwrap_or(4);
    let val = val.cast::<u64>();
    if write != 0 {
        // SAFETY: the kernel passes a u64 holding the value (lkl_iomem_write).
        let v = unsafe { *val };
        dev.write(addr - base, v, size_u);
    } else {
        let v = dev.read(addr - base, size_u);
        // SAFETY: the kernel passes a u64 to fill (lkl_iomem_read).
        unsafe { *val = v };
    }
    0
}

// ------------------------------------------------------------------- timer

/// The kernel's one-shot timer: a host thread sleeping until the deadline.
struct Timer {
    state: Mutex<(Option<Instant>, bool)>,
    cv: Condvar,
    handle: Mutex<Option<JoinHandle<()>>>,
}

impl Timer {
    fn start() -> Arc<Timer> {
        let t = Arc::new(Timer {
            state: Mutex::new((None, false)),
            cv: Condvar::new(),
            handle: Mutex::new(None),
        });
        let t2 = Arc::clone(&t);
        let h = std::thread::Builder::new()
            .name("lkl-timer".into())
            .spawn(move || t2.run());
        if let (Ok(h), Ok(mut slot)) = (h, t.handle.lock()) {
            *slot = Some(h);
        }
        t
    }

    fn set(&self, deadline: Option<Instant>) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.0 = deadline;
        self.cv.notify_one();
    }

    fn stop(&self) {
        {
            let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
            s.1 = true;
            self.cv.notify_one();
        }
        let h = self.handle.lock().ok().and_then(|mut h| h.take());
        if let Some(h) = h {
            let _ = h.join();
        }
    }

    fn run(&self) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if s.1 {
                return;
            }
            match s.0 {
                None => s = self.cv.wait(s).unwrap_or_else(|e| e.into_inner()),
                Some(d) => {
                    let now = Instant::now();
                    if d <= now {
                        s.0 = None;
                        drop(s);
                        trigger_irq(TIMER_IRQ);
                        s = self.state.lock().unwrap_or_else(|e| e.into_inner());
                    } else {
                        s = self
                            .cv
                            .wait_timeout(s, d - now)
                            .map(|r| r.0)
                            .unwrap_or_else(|e| e.into_inner().0);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::sync::mpsc;

    /// Counts its runs and reports each on a channel.
    struct Probe {
        runs: AtomicUsize,
        tx: Mutex<mpsc::Sender<()>>,
    }

    impl AfterKernel for Probe {
        fn run_after_kernel(&self) {
            self.runs.fetch_add(1, Ordering::SeqCst);
            if let Ok(tx) = self.tx.lock() {
                let _ = tx.send(());
            }
        }
    }

    fn probe() -> (Arc<Probe>, mpsc::Receiver<()>) {
        let (tx, rx) = mpsc::channel();
        let p = Arc::new(Probe {
            runs: AtomicUsize::new(0),
            tx: Mutex::new(tx),
        });
        (p, rx)
    }

    #[test]
    fn the_page_allocators_memory_is_low_zeroed_and_given_back() {
        let size = PAGE_ALLOCATOR_MIN + 4096;
        // SAFETY: the host op as the kernel calls it; the block is used
        // only within `size` and freed once.
        let p = unsafe { op_mem_alloc(size as c_ulong) };
        assert!(!p.is_null());
        // Far below the usual mmap area: the boot's walk over the page
        // frame numbers below the memory stays short.
        assert!(
            (p as usize) < (1usize << 40),
            "page allocator memory at {p:?}"
        );
        // SAFETY: p is `size` writable bytes from op_mem_alloc.
        let bytes = unsafe { std::slice::from_raw_parts_mut(p.cast::<u8>(), size) };
        assert!(bytes.iter().step_by(4096).all(|&b| b == 0), "not zeroed");
        bytes[size - 1] = 1;
        // SAFETY: p came from op_mem_alloc and is freed once.
        unsafe { op_mem_free(p) };
        assert!(PAGE_ALLOCATOR.lock().unwrap().is_none(), "not unmapped");
        // SAFETY: a small block takes calloc's path and goes back to free.
        let q = unsafe { op_mem_alloc(64) };
        assert!(!q.is_null());
        // SAFETY: q came from op_mem_alloc.
        unsafe { op_mem_free(q) };
    }

    #[test]
    fn work_put_off_in_the_kernel_runs_once_when_the_thread_leaves_it() {
        let (p, _rx) = probe();
        after_kernel(p.clone());
        after_kernel(p.clone());
        assert_eq!(p.runs.load(Ordering::SeqCst), 0, "ran while in the kernel");
        run_after_kernel();
        assert_eq!(p.runs.load(Ordering::SeqCst), 1, "two kicks, one wake-up");
        run_after_kernel();
        assert_eq!(p.runs.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_thread_going_to_sleep_first_runs_what_it_put_off() {
        // The sleeper's semaphore is upped only once the put-off work has
        // run: a wake-up kept back across the sleep would hang both.
        let (p, rx) = probe();
        let sem = Arc::new(Sem {
            word: AtomicU32::new(0),
        });
        let sleeper = {
            let (p, sem) = (p.clone(), sem.clone());
            std::thread::spawn(move || {
                after_kernel(p);
                sem.down();
            })
        };
        let ran = rx.recv_timeout(Duration::from_secs(10));
        sem.up();
        sleeper.join().expect("the sleeping thread panicked");
        assert!(ran.is_ok(), "the put-off wake-up waited for the sleeper");
        assert_eq!(p.runs.load(Ordering::SeqCst), 1);
    }
}
