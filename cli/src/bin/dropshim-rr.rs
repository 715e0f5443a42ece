//! `dropshim-rr`: the request/response probe of `dropshim bench
//! --scenario rr` and of the round-trip tests.
//!
//! A plain sockets program (std::net, so every call goes through libc and
//! through the shim when it is preloaded): `server` echoes what each
//! connection sends; `client` measures round trips of fixed-size messages
//! on one connection, transactions per second over many connections, and
//! connection set-up (connect to the first byte back), and prints one JSON
//! object on stdout. Every echoed message is compared with what was sent:
//! a message names its connection and sequence number in every 8-byte
//! word, so a wrong byte is reported with where it was and what came
//! instead, and the client exits 1.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "dropshim-rr",
    about = "request/response probe: echo server and latency client"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Echo every connection's bytes back until it closes.
    Server {
        /// Address and port to listen on.
        #[arg(long)]
        bind: SocketAddr,
        /// Serve this many connections, then exit (default: forever).
        #[arg(long)]
        connections: Option<u64>,
    },
    /// Measure round trips against a `dropshim-rr server`.
    Client {
        /// The server's address and port.
        #[arg(long)]
        to: SocketAddr,
        /// Message sizes in bytes for the one-connection round trips.
        #[arg(long, value_delimiter = ',', default_value = "64")]
        sizes: Vec<usize>,
        /// Round trips measured per size (after the warm-up).
        #[arg(long, default_value_t = 10_000)]
        count: u64,
        /// Round trips before measuring, per size.
        #[arg(long, default_value_t = 100)]
        warmup: u64,
        /// Connection counts for the transactions-per-second runs (64 B).
        #[arg(long, value_delimiter = ',', default_value = "1,50")]
        conns: Vec<usize>,
        /// Seconds per transactions-per-second run.
        #[arg(long, default_value_t = 3.0)]
        tps_seconds: f64,
        /// Fresh connections timed from connect() to the first byte back.
        #[arg(long, default_value_t = 50)]
        setups: u64,
        /// Leave TCP_NODELAY off (Nagle on), to see what a program that
        /// never sets it gets.
        #[arg(long)]
        nagle: bool,
        /// Append a line for every timed round trip slower than
        /// `--slow-ms` to this file: size, message number, duration, and
        /// the wall-clock time it ended (Unix seconds, as `tcpdump -tt`
        /// prints), to find it in a packet capture.
        #[arg(long)]
        slow_log: Option<std::path::PathBuf>,
        /// What `--slow-log` counts as slow, in milliseconds.
        #[arg(long, default_value_t = 10.0)]
        slow_ms: f64,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Server { bind, connections } => server(bind, connections),
        Cmd::Client {
            to,
            sizes,
            count,
            warmup,
            conns,
            tps_seconds,
            setups,
            nagle,
            slow_log,
            slow_ms,
        } => client(&ClientPlan {
            to,
            sizes,
            count,
            warmup,
            conns,
            tps_seconds,
            setups,
            nodelay: !nagle,
            slow_log,
            slow: Duration::from_secs_f64(slow_ms.max(0.0) / 1e3),
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dropshim-rr: {e}");
            ExitCode::FAILURE
        }
    }
}

fn server(bind: SocketAddr, connections: Option<u64>) -> io::Result<()> {
    let listener = TcpListener::bind(bind)?;
    let mut workers = Vec::new();
    for (served, conn) in (1u64..).zip(listener.incoming()) {
        let conn = conn?;
        let _ = conn.set_nodelay(true);
        workers.push(std::thread::spawn(move || echo(conn)));
        if connections.is_some_and(|n| served >= n) {
            break;
        }
    }
    for w in workers {
        let _ = w.join();
    }
    Ok(())
}

/// Echoes until the peer closes; a reset just ends the connection.
fn echo(mut conn: TcpStream) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match conn.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if conn.write_all(&buf[..n]).is_err() {
            return;
        }
    }
}

struct ClientPlan {
    to: SocketAddr,
    sizes: Vec<usize>,
    count: u64,
    warmup: u64,
    conns: Vec<usize>,
    tps_seconds: f64,
    setups: u64,
    nodelay: bool,
    slow_log: Option<std::path::PathBuf>,
    slow: Duration,
}

fn client(plan: &ClientPlan) -> io::Result<()> {
    let mut slow_log = match &plan.slow_log {
        Some(path) => Some(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| {
                    io::Error::new(e.kind(), format!("--slow-log {}: {e}", path.display()))
                })?,
        ),
        None => None,
    };
    // The process's first connection, before any other: on lkl it pays
    // for the library kernel's boot, on uml for the shim's link to the
    // instance, as every short-lived program (curl, a script) does.
    let first = {
        let t = Instant::now();
        let mut conn = Conn::open(plan.to, 2_000_000, plan.nodelay)?;
        conn.round_trip(8)?;
        Summary::of(8, vec![t.elapsed()]).json()
    };
    let mut latency = Vec::new();
    {
        let mut conn = Conn::open(plan.to, 0, plan.nodelay)?;
        for &size in &plan.sizes {
            let size = size.max(8);
            for _ in 0..plan.warmup {
                conn.round_trip(size)?;
            }
            let mut samples = Vec::with_capacity(plan.count as usize);
            for _ in 0..plan.count {
                let t = Instant::now();
                conn.round_trip(size)?;
                let took = t.elapsed();
                if let Some(log) = slow_log.as_mut().filter(|_| took > plan.slow) {
                    writeln!(
                        log,
                        "{}",
                        slow_line(size, conn.seq, took, std::time::SystemTime::now())
                    )?;
                }
                samples.push(took);
            }
            latency.push(Summary::of(size, samples).json());
        }
    }
    let mut tps = Vec::new();
    for &n in &plan.conns {
        let (transactions, secs) = transactions(plan, n.max(1))?;
        tps.push(serde_json::json!({
            "conns": n,
            "transactions": transactions,
            "seconds": secs,
            "per_s": transactions as f64 / secs,
        }));
    }
    let mut setups = Vec::with_capacity(plan.setups as usize);
    for i in 0..plan.setups {
        let t = Instant::now();
        let mut conn = Conn::open(plan.to, 1_000_000 + i, plan.nodelay)?;
        conn.round_trip(8)?;
        setups.push(t.elapsed());
    }
    let setup = if setups.is_empty() {
        serde_json::Value::Null
    } else {
        Summary::of(8, setups).json()
    };
    let report = serde_json::json!({
        "nodelay": plan.nodelay,
        "latency": latency,
        "tps": tps,
        "setup": setup,
        "first": first,
    });
    println!("{report}");
    Ok(())
}

/// `n` connections each doing 64 B round trips for `tps_seconds`; the
/// clock starts when all are connected.
fn transactions(plan: &ClientPlan, n: usize) -> io::Result<(u64, f64)> {
    let mut conns = Vec::with_capacity(n);
    for i in 0..n {
        conns.push(Conn::open(plan.to, 1000 + i as u64, plan.nodelay)?);
    }
    let total = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let start = Arc::new(Barrier::new(n + 1));
    let mut threads = Vec::with_capacity(n);
    for mut conn in conns {
        let (total, stop, start) = (total.clone(), stop.clone(), start.clone());
        threads.push(std::thread::spawn(move || -> io::Result<()> {
            start.wait();
            let mut done = 0;
            while !stop.load(Ordering::Relaxed) {
                conn.round_trip(64)?;
                done += 1;
            }
            total.fetch_add(done, Ordering::Relaxed);
            Ok(())
        }));
    }
    start.wait();
    let t = Instant::now();
    std::thread::sleep(Duration::from_secs_f64(plan.tps_seconds.max(0.1)));
    stop.store(true, Ordering::Relaxed);
    let mut first_err = None;
    for th in threads {
        let r = th
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("a client thread panicked")));
        if let (Err(e), None) = (r, &first_err) {
            first_err = Some(e);
        }
    }
    let secs = t.elapsed().as_secs_f64();
    match first_err {
        Some(e) => Err(e),
        None => Ok((total.load(Ordering::Relaxed), secs)),
    }
}

/// One connection and its message counter.
struct Conn {
    stream: TcpStream,
    id: u64,
    seq: u64,
    out: Vec<u8>,
    back: Vec<u8>,
}

impl Conn {
    fn open(to: SocketAddr, id: u64, nodelay: bool) -> io::Result<Conn> {
        let stream = TcpStream::connect(to)?;
        stream.set_nodelay(nodelay)?;
        // A lost wakeup must show as a failure, not hang the probe.
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        Ok(Conn {
            stream,
            id,
            seq: 0,
            out: Vec::new(),
            back: Vec::new(),
        })
    }

    /// Sends one message of `size` bytes and checks the echo.
    fn round_trip(&mut self, size: usize) -> io::Result<()> {
        self.seq += 1;
        fill(&mut self.out, size, self.id, self.seq);
        self.stream.write_all(&self.out)?;
        self.back.resize(size, 0);
        self.stream.read_exact(&mut self.back).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "connection {} message {}: echo of {size} bytes: {e}",
                    self.id, self.seq
                ),
            )
        })?;
        if let Some(off) = first_difference(&self.out, &self.back) {
            let end = (off + 16).min(size);
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "connection {} message {}: echo differs at byte {off} of {size}: expected {} got {}",
                    self.id,
                    self.seq,
                    hex(&self.out[off..end]),
                    hex(&self.back[off..end])
                ),
            ));
        }
        Ok(())
    }
}

/// A message: every 8-byte word is (connection << 40 | sequence << 8 |
/// word index), so any misplaced or altered word is told apart.
fn fill(buf: &mut Vec<u8>, size: usize, id: u64, seq: u64) {
    buf.clear();
    let mut word = 0u64;
    while buf.len() < size {
        let w = (id << 40) ^ (seq << 8) ^ word;
        let take = (size - buf.len()).min(8);
        buf.extend_from_slice(&w.to_le_bytes()[..take]);
        word += 1;
    }
}

fn first_difference(a: &[u8], b: &[u8]) -> Option<usize> {
    a.iter().zip(b).position(|(x, y)| x != y)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// One `--slow-log` line: which round trip, how long, and when it ended.
fn slow_line(size: usize, seq: u64, took: Duration, ended: std::time::SystemTime) -> String {
    let ended = ended
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    format!(
        "size {size} message {seq} took {:.3} ms ended {}.{:06}",
        took.as_secs_f64() * 1e3,
        ended.as_secs(),
        ended.subsec_micros()
    )
}

/// Round-trip times of one size, in microseconds.
struct Summary {
    size: usize,
    sorted_us: Vec<f64>,
}

impl Summary {
    fn of(size: usize, samples: Vec<Duration>) -> Summary {
        let mut sorted_us: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e6).collect();
        sorted_us.sort_by(f64::total_cmp);
        Summary { size, sorted_us }
    }

    fn quantile(&self, q: f64) -> f64 {
        if self.sorted_us.is_empty() {
            return f64::NAN;
        }
        let i = ((self.sorted_us.len() - 1) as f64 * q).round() as usize;
        self.sorted_us[i]
    }

    fn json(&self) -> serde_json::Value {
        let over = |us: f64| self.sorted_us.iter().filter(|&&t| t > us).count();
        serde_json::json!({
            "size": self.size,
            "count": self.sorted_us.len(),
            "median_us": self.quantile(0.5),
            "p99_us": self.quantile(0.99),
            "max_us": self.quantile(1.0),
            "mean_us": self.sorted_us.iter().sum::<f64>() / self.sorted_us.len().max(1) as f64,
            "over_1ms": over(1_000.0),
            "over_10ms": over(10_000.0),
            "over_20ms": over(20_000.0),
            "over_50ms": over(50_000.0),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_connection_and_sequence_in_every_word() {
        let mut a = Vec::new();
        let mut b = Vec::new();
        fill(&mut a, 64, 3, 7);
        fill(&mut b, 64, 3, 8);
        assert_eq!(a.len(), 64);
        // Every word of one message differs from the next message's.
        for w in 0..8 {
            assert_ne!(a[w * 8..w * 8 + 8], b[w * 8..w * 8 + 8], "word {w}");
        }
        fill(&mut b, 64, 4, 7);
        assert_eq!(first_difference(&a, &b), Some(5));
        fill(&mut b, 13, 3, 7);
        assert_eq!(b[..], a[..13]);
    }

    #[test]
    fn a_slow_line_names_the_round_trip_and_when_it_ended() {
        let ended = std::time::UNIX_EPOCH + Duration::from_micros(1_796_646_343_952_425);
        assert_eq!(
            slow_line(64, 327, Duration::from_micros(40_469), ended),
            "size 64 message 327 took 40.469 ms ended 1796646343.952425"
        );
    }

    #[test]
    fn summary_quantiles() {
        let s = Summary::of(
            64,
            (1..=100).map(|i| Duration::from_micros(i * 10)).collect(),
        );
        let j = s.json();
        assert_eq!(j["count"], 100);
        assert_eq!(j["max_us"].as_f64(), Some(1000.0));
        assert!((j["median_us"].as_f64().unwrap_or(0.0) - 510.0).abs() < 11.0);
        assert_eq!(j["over_1ms"], 0);
        let slow = Summary::of(
            64,
            vec![
                Duration::from_millis(5),
                Duration::from_millis(25),
                Duration::from_millis(60),
            ],
        )
        .json();
        assert_eq!(slow["over_10ms"], 2);
        assert_eq!(slow["over_20ms"], 2);
        assert_eq!(slow["over_50ms"], 1);
    }
}
