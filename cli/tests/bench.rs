//! `dropshim bench --quick --out DIR` end to end (root: it builds testbeds
//! of namespaces): every scenario leaves rows in the CSV, MPTCP rows
//! really ran MPTCP over two subflows, TCP rows did not, transfers arrived
//! intact, skipped stacks say why, and the JSON, Markdown and SVG files
//! are written.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

/// `$DROPSHIM_TARGET_DIR`, else `release` in cargo's `$CARGO_TARGET_DIR`,
/// else the workspace's `target/release`.
fn release_dir() -> PathBuf {
    let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    match (
        std::env::var_os("DROPSHIM_TARGET_DIR"),
        std::env::var_os("CARGO_TARGET_DIR"),
    ) {
        (Some(dir), _) => PathBuf::from(dir),
        (None, Some(cargo)) => workspace.join(cargo).join("release"),
        (None, None) => workspace.join("target/release"),
    }
}

fn library() -> PathBuf {
    let lib = release_dir().join("libdropshim.so");
    assert!(
        lib.is_file(),
        "{} is missing: run `cargo build --release` first (or set DROPSHIM_TARGET_DIR)",
        lib.display()
    );
    lib
}

/// One CSV row as (column name -> value); reasons are the only quoted field.
fn rows(csv: &str) -> Vec<std::collections::HashMap<String, String>> {
    let mut lines = csv.lines();
    let header: Vec<String> = lines
        .next()
        .unwrap_or_default()
        .split(',')
        .map(str::to_string)
        .collect();
    lines
        .map(|line| {
            let mut fields = Vec::new();
            let mut cur = String::new();
            let mut quoted = false;
            let mut chars = line.chars().peekable();
            while let Some(c) = chars.next() {
                match (c, quoted) {
                    ('"', true) if chars.peek() == Some(&'"') => {
                        cur.push('"');
                        chars.next();
                    }
                    ('"', _) => quoted = !quoted,
                    (',', false) => fields.push(std::mem::take(&mut cur)),
                    (c, _) => cur.push(c),
                }
            }
            fields.push(cur);
            assert_eq!(fields.len(), header.len(), "row {line:?}");
            header.iter().cloned().zip(fields).collect()
        })
        .collect()
}

#[test]
fn quick_bench_writes_every_scenario_with_mptcp_proven() {
    assert_eq!(
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() },
        0,
        "this test builds network namespaces: run it as root"
    );
    let out = tempfile::tempdir().expect("temporary folder");
    let started = Instant::now();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_dropshim"));
    cmd.args(["bench", "--quick", "--out"])
        .arg(out.path())
        .arg("--library")
        .arg(library());
    // The uml stack runs when its helper is built (else it is a skipped
    // row, which is checked below like any other).
    let uml_helper = release_dir().join("dropshim-uml");
    if uml_helper.is_file() {
        cmd.env("DROPSHIM_UML_BIN", uml_helper);
    }
    let res = dropshim_testbed::run_with_timeout(&mut cmd, Duration::from_secs(420))
        .expect("dropshim bench --quick finished within 7 minutes");
    let took = started.elapsed();
    let stdout = String::from_utf8_lossy(&res.stdout);
    let stderr = String::from_utf8_lossy(&res.stderr);
    assert!(
        res.status.success(),
        "dropshim bench failed:\n{stdout}\n{stderr}"
    );
    eprintln!("dropshim bench --quick took {took:.1?}\n{stdout}");

    for f in [
        "results.csv",
        "summary.md",
        "throughput.svg",
        "download-time.svg",
        "handover.svg",
        "round-trip.svg",
    ] {
        let p = out.path().join(f);
        assert!(p.is_file(), "{f} missing");
        assert!(
            std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0) > 100,
            "{f} is empty"
        );
    }
    let csv = std::fs::read_to_string(out.path().join("results.csv")).expect("results.csv");
    let rows = rows(&csv);
    let jsons = std::fs::read_dir(out.path())
        .expect("out dir")
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("run-"))
        .count();
    assert_eq!(jsons, rows.len(), "one JSON file per CSV row");
    let summary = std::fs::read_to_string(out.path().join("summary.md")).expect("summary.md");
    assert_eq!(summary, stdout, "the printed table is the summary");

    for scenario in ["two-gateways", "local-cache", "handover", "overhead", "rr"] {
        let ok: Vec<_> = rows
            .iter()
            .filter(|r| r["scenario"] == scenario && r["status"] == "ok")
            .collect();
        for stack in ["tcp", "native", "mptcpize"] {
            assert!(
                ok.iter().any(|r| r["stack"] == stack),
                "{scenario}: no successful {stack} row in\n{csv}"
            );
        }
        // lkl is never silently dropped: it runs when liblkl.so is
        // built, else its row says how to build it.
        let lkl: Vec<_> = rows
            .iter()
            .filter(|r| r["scenario"] == scenario && r["stack"] == "lkl")
            .collect();
        assert!(
            lkl.iter().any(|r| r["status"] == "ok"
                || (r["status"] == "skipped"
                    && (r["reason"].contains("build-lkl.sh")
                        || r["reason"].contains("DROPSHIM_LKL_LIB")))),
            "{scenario}: no ok or honestly skipped lkl row in {lkl:?}"
        );
        for r in &ok {
            let subflows: f64 = r["subflows"].parse().expect("subflows column");
            if scenario == "rr" {
                // Every echo was compared byte for byte by the probe.
                assert_eq!(r["intact"], "true", "echo not checked: {r:?}");
                // Rates (transactions, redis) fill per_s; times
                // (round trips, set-ups) median_us.
                let figure = if r["per_s"].is_empty() {
                    r["median_us"].parse::<f64>().expect("median_us")
                } else {
                    r["per_s"].parse::<f64>().expect("per_s")
                };
                assert!(figure > 0.0, "rr row without its figure: {r:?}");
                if r["stack"] == "tcp" {
                    assert_eq!(subflows, 0.0, "TCP row used MPTCP: {r:?}");
                } else {
                    // Short connections may close before their join.
                    assert!(subflows >= 1.0, "rr row without MPTCP: {r:?}");
                }
                continue;
            }
            if r["stack"] == "tcp" {
                assert_eq!(subflows, 0.0, "TCP row used MPTCP: {r:?}");
            } else if scenario == "local-cache" && r["setting"] == "1 MB" {
                // Timing race, no data involved: the 1 MB download is done
                // within a few ms of its connection, and the second
                // subflow's join (the path manager's work, after the
                // connection is established) may come after the last
                // byte, the program already gone. MPTCP is still proven
                // here; two subflows are by the 10 MB row and the rest.
                assert!(
                    (1.0..=2.0).contains(&subflows),
                    "MPTCP row without MPTCP: {r:?}"
                );
            } else {
                assert_eq!(subflows, 2.0, "MPTCP row without two subflows: {r:?}");
            }
            if scenario == "local-cache" || scenario == "handover" {
                assert_eq!(r["intact"], "true", "bytes not intact: {r:?}");
                assert_eq!(r["completed"], "true", "transfer incomplete: {r:?}");
            } else {
                let mbit: f64 = r["mbit_per_s"].parse().expect("mbit_per_s");
                assert!(mbit > 10.0, "implausible throughput: {r:?}");
            }
        }
    }
    for r in rows.iter().filter(|r| r["status"] != "ok") {
        assert!(
            !r["reason"].trim().is_empty(),
            "skipped/failed row without a reason: {r:?}"
        );
    }
    // The table shows the README's three rows with throughput and subflows.
    for label in [
        "TCP, one link",
        "MPTCP via dropshim (native)",
        "MPTCP via mptcpize",
    ] {
        assert!(
            summary.contains(label),
            "{label:?} not in the summary:\n{summary}"
        );
    }
}
