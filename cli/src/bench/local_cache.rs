//! local-cache: `python3 -m http.server` in `cache` serves files, curl in
//! `client` downloads them over two links shaped at --rate; download time
//! and goodput per size, every stack, each download checked by sha256.

use super::stacks::{self, Device, Role, Stack};
use super::{Ctx, KillOnDrop, Plan, Record, Scenario};
use anyhow::{bail, Context, Result};
use dropshim_testbed::{Options, Spec, Testbed};
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A file to serve and the sha256 it must arrive with.
pub struct Served {
    pub name: String,
    pub bytes: u64,
    pub sha256: String,
}

/// Writes `bytes` of pseudo-random data (xorshift: incompressible enough
/// and fast) to `dir/name`, hashing as it goes.
pub fn make_file(dir: &Path, name: &str, bytes: u64, seed: u64) -> Result<Served> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join(name);
    let mut f = std::io::BufWriter::new(
        std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?,
    );
    let mut h = Sha256::new();
    let mut x = seed | 1;
    let mut left = bytes;
    let mut buf = vec![0u8; 1 << 20];
    while left > 0 {
        for chunk in buf.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            chunk.copy_from_slice(&x.to_le_bytes());
        }
        let n = left.min(buf.len() as u64) as usize;
        f.write_all(&buf[..n])?;
        h.update(&buf[..n]);
        left -= n as u64;
    }
    f.flush()?;
    Ok(Served {
        name: name.to_string(),
        bytes,
        sha256: super::hex(&h.finalize()),
    })
}

/// `python3 -m http.server` for `stack` in `node`, serving `dir` on
/// `node`'s link-1 address; returns once it listens.
pub fn serve(
    ctx: &Ctx,
    tb: &Testbed,
    node: &str,
    stack: Stack,
    dir: &Path,
    port: u16,
) -> Result<KillOnDrop> {
    let addr = tb.addr4(node, 1)?.to_string();
    let mut cmd = stacks::command(tb, node, stack, Role::Server, &ctx.library, None, "python3")?;
    cmd.args([
        "-m",
        "http.server",
        &port.to_string(),
        "--bind",
        &addr,
        "--directory",
    ])
    .arg(dir);
    let mut server = super::spawn_server(cmd)?;
    super::wait_listening(tb.netns(node)?, port, &mut server)
        .with_context(|| format!("python3 -m http.server ({})", stack.label()))?;
    Ok(server)
}

pub fn run(ctx: &mut Ctx, plan: &Plan) -> Result<()> {
    let rate = ctx.args.rate;
    let www = ctx.work.join("www");
    ctx.step("local-cache: writing the files to serve".into());
    let mut files = Vec::new();
    for (i, mb) in plan.sizes_mb.iter().enumerate() {
        files.push(make_file(
            &www,
            &format!("file-{mb}MB"),
            mb * 1_000_000,
            0x9e37_79b9_7f4a_7c15 ^ i as u64,
        )?);
    }
    let avail = ctx.stacks.clone();
    let mut host = Vec::new();
    for stack in [Stack::Tcp, Stack::Native, Stack::Mptcpize] {
        match avail.reason(stack) {
            None => host.push(stack),
            Some(reason) => skip_all(ctx, plan, stack, reason),
        }
    }
    for stack in [Stack::Uml, Stack::Lkl] {
        if let Some(reason) = avail.reason(stack) {
            skip_all(ctx, plan, stack, reason);
        }
    }
    let spec = Spec::builtin("local-cache")?;
    let opts = Options {
        rate_mbit: Some(rate),
        ..Default::default()
    };
    {
        ctx.step("local-cache: building the testbed".into());
        let tb = Testbed::up(&spec, &opts)?;
        // One server per stack, side by side on their own ports.
        let mut servers = Vec::new();
        for (slot, &stack) in host.iter().enumerate() {
            let port = super::port(1 + slot as u16);
            servers.push((stack, port, serve(ctx, &tb, "cache", stack, &www, port)?));
        }
        for run in 1..=plan.runs {
            for file in &files {
                for (stack, port, _server) in &servers {
                    download_one(ctx, &tb, *stack, None, *port, file, run);
                }
            }
        }
    }
    // The device stacks: the client's links belong to the device, each on
    // a testbed of its own; the cache serves with the native backend.
    for stack in [Stack::Uml, Stack::Lkl] {
        if avail.reason(stack).is_some() {
            continue;
        }
        ctx.step(format!("local-cache: starting the {} device", stack.name()));
        let tb = Testbed::up(&spec, &opts)?;
        match stacks::device(stack, &tb, "client", &ctx.library, &avail) {
            Err(e) => {
                let reason =
                    super::one_line(&format!("{} device did not start: {e:#}", stack.name()));
                skip_all(ctx, plan, stack, &reason);
            }
            Ok(dev) => {
                let port = super::port(4);
                let _server = serve(ctx, &tb, "cache", stack, &www, port)?;
                for run in 1..=plan.runs {
                    for file in &files {
                        download_one(ctx, &tb, stack, Some(&dev), port, file, run);
                    }
                }
            }
        }
    }
    Ok(())
}

fn setting(bytes: u64) -> String {
    format!("{} MB", bytes / 1_000_000)
}

fn skip_all(ctx: &mut Ctx, plan: &Plan, stack: Stack, reason: &str) {
    for mb in &plan.sizes_mb {
        ctx.records.push(
            Record::new(Scenario::LocalCache, stack, setting(mb * 1_000_000), 0).skipped(reason),
        );
    }
}

fn download_one(
    ctx: &mut Ctx,
    tb: &Testbed,
    stack: Stack,
    device: Option<&Device>,
    port: u16,
    file: &Served,
    run: u32,
) {
    ctx.step(format!(
        "local-cache {} run {run}: {}",
        setting(file.bytes),
        stack.label()
    ));
    let mut rec = Record::new(Scenario::LocalCache, stack, setting(file.bytes), run);
    match download(ctx, tb, stack, device, port, file) {
        Ok(d) => {
            rec.seconds = Some(d.seconds);
            rec.bytes = Some(d.bytes);
            rec.mbit_per_s = Some(d.bytes as f64 * 8.0 / d.seconds.max(1e-9) / 1e6);
            rec.subflows = Some(d.subflows);
            rec.intact = Some(d.intact);
            rec.completed = Some(d.bytes == file.bytes);
        }
        Err(e) => rec = rec.failed(&e),
    }
    ctx.push(rec);
}

struct Download {
    seconds: f64,
    bytes: u64,
    subflows: f64,
    intact: bool,
}

fn download(
    ctx: &Ctx,
    tb: &Testbed,
    stack: Stack,
    device: Option<&Device>,
    port: u16,
    file: &Served,
) -> Result<Download> {
    let addr = tb.addr4("cache", 1)?;
    let cache_ns = tb.netns("cache")?.to_string();
    let out_file: PathBuf = ctx.work.join(format!("download-{}", stack.name()));
    let _ = std::fs::remove_file(&out_file);
    // Generous: a tenth of the link rate, plus start-up.
    let budget = 20 + file.bytes * 8 / (u64::from(ctx.args.rate.max(1)) * 100_000);
    let before = super::mptcp_counters(&cache_ns)?;
    let mut curl = stacks::command(
        tb,
        "client",
        stack,
        Role::Client,
        &ctx.library,
        device,
        "curl",
    )?;
    curl.args(["-sS", "--fail", "--max-time", &budget.to_string(), "-o"])
        .arg(&out_file)
        .args(["-w", "%{time_total} %{size_download}"])
        .arg(format!("http://{addr}:{port}/{}", file.name));
    let out = dropshim_testbed::run_with_timeout(&mut curl, Duration::from_secs(budget + 10))?;
    if !out.status.success() {
        bail!(
            "curl failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let after = super::mptcp_counters(&cache_ns)?;
    let (seconds, bytes) = parse_write_out(&String::from_utf8_lossy(&out.stdout))?;
    let intact = super::sha256_file(&out_file)? == file.sha256;
    let _ = std::fs::remove_file(&out_file);
    Ok(Download {
        seconds,
        bytes,
        subflows: super::subflows_between(&before, &after),
        intact,
    })
}

/// curl's `-w "%{time_total} %{size_download}"`.
fn parse_write_out(s: &str) -> Result<(f64, u64)> {
    let mut it = s.split_whitespace();
    let (Some(t), Some(n)) = (it.next(), it.next()) else {
        bail!("unexpected curl -w output {s:?}");
    };
    let t: f64 = t.parse().with_context(|| format!("curl time {t:?}"))?;
    let n: f64 = n.parse().with_context(|| format!("curl size {n:?}"))?;
    Ok((t, n as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn served_file_hash_matches_what_is_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let f = make_file(dir.path(), "f", 3_000_001, 7).unwrap();
        assert_eq!(
            std::fs::metadata(dir.path().join("f")).unwrap().len(),
            3_000_001
        );
        assert_eq!(
            super::super::sha256_file(&dir.path().join("f")).unwrap(),
            f.sha256
        );
        let g = make_file(dir.path(), "g", 3_000_001, 8).unwrap();
        assert_ne!(f.sha256, g.sha256);
    }

    #[test]
    fn curl_write_out_is_parsed() {
        assert_eq!(parse_write_out("0.25 1000000").unwrap(), (0.25, 1_000_000));
        assert!(parse_write_out("").is_err());
    }
}
