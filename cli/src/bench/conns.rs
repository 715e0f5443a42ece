//! conns: many connections held at once by one server process on the
//! stack. An event-driven echo server (python3 asyncio, one thread of its
//! own) runs in gw1 on the stack under test; a native MPTCP client in gw2
//! (python3 asyncio) opens N connections (`--conns`, default 1000), keeps
//! every one open, then sends 64-byte messages on all of them at once,
//! each echo checked byte for byte (a wrong byte fails the run).
//!
//! Per stack (native and lkl: the stacks whose connections live in the
//! server's own process): the server's host threads at their peak (from
//! /proc/PID/task, sampled throughout), of which the library kernel's own
//! tasks (threads named `lkl-kernel`: every kernel task, including those
//! that carry system calls for host threads); its resident memory per
//! idle connection (RSS with every connection open, less RSS before the
//! first); the round trip median and p99 under that load; and the time to
//! open them all.

use super::stacks::{self, Device, Role, Stack};
use super::{Ctx, Plan, Record, Scenario};
use anyhow::{bail, Context, Result};
use dropshim_testbed::{Options, Spec, Testbed};
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

/// How much each run measures.
#[derive(Clone, Debug)]
pub struct Settings {
    pub conns: usize,
    /// Round trips per connection.
    pub rounds: usize,
}

impl Settings {
    pub fn new(quick: bool, conns: usize) -> Settings {
        Settings {
            conns: conns.max(1),
            rounds: if quick { 5 } else { 20 },
        }
    }

    /// Rough seconds per stack and run, for the estimate.
    pub fn expected_seconds(&self) -> f64 {
        4.0 + self.conns as f64 * (0.004 + self.rounds as f64 * 0.0004)
    }

    pub fn label(&self) -> String {
        format!("{} connections, 64 B", self.conns)
    }
}

/// The echo server, on the stack: `python3 -c SERVER PORT`.
const SERVER: &str = r#"import asyncio, resource, socket, sys
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

async def echo(reader, writer):
    writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        while True:
            data = await reader.read(65536)
            if not data:
                break
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()

async def main():
    await asyncio.start_server(echo, "0.0.0.0", int(sys.argv[1]), backlog=4096)
    print("listening", flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"#;

/// The client, native in gw2: `python3 -c CLIENT HOST PORT N ROUNDS`.
/// Prints `open SECONDS` once every connection is up, waits for a line on
/// stdin, then exchanges and prints one JSON object.
const CLIENT: &str = r#"import asyncio, json, resource, socket, struct, sys, time
host, port, n, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
SIZE = 64

def message(i, seq):
    return struct.pack(">II", i, seq) * (SIZE // 8)

async def main():
    pending = asyncio.Semaphore(128)

    async def connect(i):
        async with pending:
            r, w = await asyncio.open_connection(host, port)
        w.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return r, w

    t0 = time.monotonic()
    conns = await asyncio.gather(*(connect(i) for i in range(n)))
    opened = time.monotonic() - t0
    print("open %f" % opened, flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    rtts = []

    async def talk(i, r, w):
        for seq in range(rounds):
            m = message(i, seq)
            t = time.perf_counter()
            w.write(m)
            got = await r.readexactly(SIZE)
            rtts.append(time.perf_counter() - t)
            if got != m:
                raise SystemExit("connection %d, message %d: the echo differs" % (i, seq))

    await asyncio.gather(*(talk(i, r, w) for i, (r, w) in enumerate(conns)))
    for _, w in conns:
        w.close()
    rtts.sort()
    q = lambda p: rtts[min(len(rtts) - 1, int(p * len(rtts)))] * 1e6
    print(json.dumps({"open_s": opened, "median_us": q(0.5), "p99_us": q(0.99),
                      "max_us": rtts[-1] * 1e6, "count": len(rtts),
                      "bytes": 2 * SIZE * len(rtts)}), flush=True)

asyncio.run(main())
"#;

pub fn run(ctx: &mut Ctx, plan: &Plan) -> Result<()> {
    let avail = ctx.stacks.clone();
    let setting = plan.conns.label();
    for stack in Stack::ALL {
        if let Some(reason) = avail.reason(stack) {
            ctx.records
                .push(Record::new(Scenario::Conns, stack, &setting, 0).skipped(reason));
            continue;
        }
        if !matches!(stack, Stack::Native | Stack::Lkl) {
            ctx.records.push(
                Record::new(Scenario::Conns, stack, &setting, 0).skipped(
                    "conns measures the stacks that hold connections in the server's own process (native, lkl)",
                ),
            );
            continue;
        }
        ctx.step(format!("conns: building the testbed for {}", stack.label()));
        let tb = Testbed::up(&Spec::builtin("two-gateways")?, &Options::default())?;
        let handle = if stack == Stack::Lkl {
            match stacks::device(stack, &tb, "gw1", &ctx.library, &avail) {
                Ok(h) => Some(h),
                Err(e) => {
                    ctx.records.push(
                        Record::new(Scenario::Conns, stack, &setting, 0)
                            .skipped(super::one_line(&format!("lkl device did not start: {e:#}"))),
                    );
                    continue;
                }
            }
        } else {
            None
        };
        for run in 1..=plan.runs {
            ctx.step(format!("conns run {run}: {}", stack.label()));
            let mut rec = Record::new(Scenario::Conns, stack, &setting, run);
            let device = handle.as_ref();
            match measure(ctx, plan, &tb, stack, device) {
                Ok(m) => m.apply(&mut rec),
                Err(e) => rec = rec.failed(&e),
            }
            ctx.push(rec);
        }
    }
    Ok(())
}

/// What one run measured.
struct Measured {
    report: serde_json::Value,
    peak: Threads,
    rss_kib_per_conn: f64,
    subflows: f64,
}

impl Measured {
    fn apply(&self, r: &mut Record) {
        r.seconds = self.report["open_s"].as_f64();
        r.median_us = self.report["median_us"].as_f64();
        r.p99_us = self.report["p99_us"].as_f64();
        r.max_us = self.report["max_us"].as_f64();
        r.samples = self.report["count"].as_u64();
        r.bytes = self.report["bytes"].as_u64();
        r.threads = Some(self.peak.total);
        r.kernel_tasks = Some(self.peak.kernel);
        r.rss_kib_per_conn = Some(self.rss_kib_per_conn);
        r.subflows = Some(self.subflows);
        r.intact = Some(true);
    }
}

/// Kills the process group on drop.
struct Group(Child);

impl Drop for Group {
    fn drop(&mut self) {
        // SAFETY: kill() on the process group this child leads.
        unsafe { libc::kill(-(self.0.id() as i32), libc::SIGKILL) };
        let _ = self.0.wait();
    }
}

/// Lines of a child's stdout, read on a thread so that every wait is
/// bounded.
fn lines(out: ChildStdout) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(|l| l.ok()) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

fn expect(
    rx: &mpsc::Receiver<String>,
    prefix: &str,
    timeout: Duration,
    who: &str,
) -> Result<String> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) if l.starts_with(prefix) => return Ok(l),
            Ok(_) => {}
            Err(mpsc::RecvTimeoutError::Timeout) => {
                bail!("{who} did not print {prefix:?} within {timeout:?}")
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                bail!("{who} ended before printing {prefix:?}")
            }
        }
    }
}

fn spawn(mut cmd: Command, stdin: bool) -> Result<(Group, mpsc::Receiver<String>)> {
    use std::os::unix::process::CommandExt;
    cmd.stdin(if stdin { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .process_group(0);
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting {:?}", cmd.get_program()))?;
    let out = child.stdout.take().context("no stdout")?;
    Ok((Group(child), lines(out)))
}

fn measure(
    ctx: &Ctx,
    plan: &Plan,
    tb: &Testbed,
    stack: Stack,
    device: Option<&Device>,
) -> Result<Measured> {
    let s = &plan.conns;
    let port = super::port(5);
    let gw2 = tb.netns("gw2")?.to_string();
    let addr = tb.addr4("gw1", 1)?.to_string();
    let mut server = stacks::command(
        tb,
        "gw1",
        stack,
        Role::Client,
        &ctx.library,
        device,
        "python3",
    )?;
    server.args(["-c", SERVER, &port.to_string()]);
    let (server, server_out) = spawn(server, false)?;
    expect(
        &server_out,
        "listening",
        Duration::from_secs(30),
        "the server",
    )?;
    let pid = server.0.id();
    let rss_before = rss_kib(pid)?;
    let before = super::mptcp_counters(&gw2)?;
    let peak = ThreadPeak::watch(pid);
    let mut client = stacks::command(
        tb,
        "gw2",
        stack,
        Role::Server,
        &ctx.library,
        device,
        "python3",
    )?;
    client.args([
        "-c",
        CLIENT,
        &addr,
        &port.to_string(),
        &s.conns.to_string(),
        &s.rounds.to_string(),
    ]);
    let (mut client, client_out) = spawn(client, true)?;
    let budget = Duration::from_secs_f64(s.expected_seconds() * 10.0 + 60.0);
    expect(&client_out, "open ", budget, "the client")?;
    let rss_open = rss_kib(pid)?;
    if let Some(stdin) = client.0.stdin.as_mut() {
        stdin
            .write_all(b"go\n")
            .context("telling the client to start")?;
    }
    let report = expect(&client_out, "{", budget, "the client")?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(st) = client.0.try_wait()? {
            break st;
        }
        if Instant::now() > deadline {
            bail!("the client did not exit after its report");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    if !status.success() {
        bail!("the client failed ({status})");
    }
    let peak = peak.finish();
    let after = super::mptcp_counters(&gw2)?;
    let report: serde_json::Value =
        serde_json::from_str(&report).context("parsing the client's report")?;
    Ok(Measured {
        report,
        peak,
        rss_kib_per_conn: rss_open.saturating_sub(rss_before) as f64 / s.conns as f64,
        subflows: super::subflow_ratio(&before, &after, "MPCapableSYNACKRX", "MPJoinSynAckRx"),
    })
}

fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("the server (pid {pid}) is gone"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no VmRSS in /proc/{pid}/status"))
}

/// A process's host threads, and how many are the library kernel's tasks.
#[derive(Clone, Copy, Default, Debug, PartialEq)]
pub struct Threads {
    pub total: u64,
    pub kernel: u64,
}

impl Threads {
    fn own(&self) -> u64 {
        self.total.saturating_sub(self.kernel)
    }
}

fn threads_of(pid: u32) -> Option<Threads> {
    let mut t = Threads::default();
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .flatten()
    {
        if let Ok(comm) = std::fs::read_to_string(task.path().join("comm")) {
            t.total += 1;
            t.kernel += u64::from(comm.trim_end() == "lkl-kernel");
        }
    }
    Some(t)
}

/// Samples a process's threads until finished; keeps the sample with the
/// most threads.
struct ThreadPeak {
    stop: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<Threads>>,
}

impl ThreadPeak {
    fn watch(pid: u32) -> ThreadPeak {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut peak = Threads::default();
            while !s.load(Ordering::Acquire) {
                let Some(t) = threads_of(pid) else { break };
                if t.total > peak.total || (t.total == peak.total && t.own() > peak.own()) {
                    peak = t;
                }
                // Sampling pace, not a wait for anything.
                std::thread::sleep(Duration::from_millis(5));
            }
            peak
        });
        ThreadPeak {
            stop,
            handle: Some(handle),
        }
    }

    fn finish(mut self) -> Threads {
        self.stop.store(true, Ordering::Release);
        self.handle
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default()
    }
}

impl Drop for ThreadPeak {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}
