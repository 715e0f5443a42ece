//! Programs dropshim was not written for, on the native backend, both
//! ends shimmed across the two-gateways testbed: socat, nc
//! (netcat-openbsd), wget from nginx (sendfile, epoll, accept4). Python
//! asyncio client and server are covered by the load test in
//! `reliability.rs`. Each test verifies the bytes (sha256) and MPTCP (the
//! server namespace's MPTcpExt counters: MP_CAPABLE and MP_JOIN).

use anyhow::{ensure, Result};
use dropshim_testbed::Testbed;
use dropshim_tests::reliability::*;
use dropshim_tests::*;
use std::path::Path;
use std::time::Duration;

const SHORT: Duration = Duration::from_secs(20);
const TRANSFER: Duration = Duration::from_secs(120);

fn size() -> Result<usize> {
    program_bytes(64 << 20)
}

/// Counters before, a transfer, counters after: at least one MPTCP
/// connection with a joined second subflow.
fn proves_mptcp(tb: &Testbed, run: impl FnOnce() -> Result<()>) -> Result<()> {
    warm_paths(tb)?;
    let before = mptcp_counters(tb.netns("gw2")?)?;
    run()?;
    let after = mptcp_counters(tb.netns("gw2")?)?;
    ensure!(delta(&before, &after, "MPCapableSYNRX") >= 1, "not MPTCP");
    ensure!(
        delta(&before, &after, "MPJoinSynRx") >= 1,
        "no second subflow"
    );
    Ok(())
}

fn blob(dir: &Path) -> Result<(std::path::PathBuf, String)> {
    random_blob(dir, size()?, 0x5eed)
}

#[test]
fn reliability_socat_client_and_server() -> Result<()> {
    need_programs(&["socat"])?;
    let tb = two_gateways()?;
    let dir = tempfile::tempdir()?;
    let (file, want) = blob(dir.path())?;
    let got = dir.path().join("got.bin");
    let ip = tb.addr4("gw2", 1)?;
    let port = unique_port();
    proves_mptcp(&tb, || {
        // `fork` keeps the listener open: without it socat closes the
        // listener after its one accept, and MPTCP joins (which arrive on
        // the listener's port) are refused, so that connection stays on
        // one subflow (still MPTCP, bytes intact).
        let mut srv = shimmed(&tb, "gw2", "socat", &[])?;
        srv.arg("-u")
            .arg(format!("TCP-LISTEN:{port},bind={ip},reuseaddr,fork"))
            .arg(format!("CREATE:{}", got.display()));
        let _server = Background::spawn(&mut srv, "socat server")?;
        wait_listening(tb.netns("gw2")?, port, SHORT)?;
        let mut cli = shimmed(&tb, "gw1", "socat", &[])?;
        cli.arg("-u")
            .arg(format!("OPEN:{}", file.display()))
            .arg(format!("TCP:{ip}:{port}"));
        run_ok(&mut cli, TRANSFER)?;
        let want_len = std::fs::metadata(&file)?.len();
        wait_until(SHORT, "socat's child to write the whole file", || {
            std::fs::metadata(&got).is_ok_and(|m| m.len() >= want_len)
        })?;
        Ok(())
    })?;
    ensure!(
        sha256_file(&got)? == want,
        "socat delivered different bytes"
    );
    Ok(())
}

#[test]
fn reliability_netcat_openbsd_client_and_server() -> Result<()> {
    need_programs(&["nc"])?;
    let tb = two_gateways()?;
    let dir = tempfile::tempdir()?;
    let (file, want) = blob(dir.path())?;
    let got = dir.path().join("got.bin");
    let ip = tb.addr4("gw2", 1)?;
    let port = unique_port();
    proves_mptcp(&tb, || {
        // nc -l writes what it receives to stdout: redirect in a shell
        // (the shim is inherited by the exec'd nc).
        let mut srv = shimmed(&tb, "gw2", "sh", &[])?;
        srv.args([
            "-c",
            &format!("exec nc -l -s {ip} -p {port} > '{}'", got.display()),
        ]);
        let server = Background::spawn(&mut srv, "nc -l")?;
        wait_listening(tb.netns("gw2")?, port, SHORT)?;
        let mut cli = shimmed(&tb, "gw1", "sh", &[])?;
        cli.args([
            "-c",
            &format!("exec nc -N {ip} {port} < '{}'", file.display()),
        ]);
        run_ok(&mut cli, TRANSFER)?;
        server.wait(SHORT)?;
        Ok(())
    })?;
    ensure!(sha256_file(&got)? == want, "nc delivered different bytes");
    Ok(())
}

#[test]
fn reliability_wget_from_nginx_large_file() -> Result<()> {
    need_programs(&["nginx", "wget"])?;
    let tb = two_gateways()?;
    let dir = tempfile::tempdir()?;
    let www = dir.path().join("www");
    std::fs::create_dir(&www)?;
    let (file, want) = blob(&www)?;
    let ip = tb.addr4("gw2", 1)?;
    let port = unique_port();
    let d = dir.path().display();
    // Own config: no daemon, everything in the temp dir, sendfile and
    // epoll on (accept4 is how nginx accepts on Linux).
    let conf = format!(
        "daemon off;\nmaster_process off;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
         events {{ use epoll; worker_connections 64; }}\n\
         http {{\n access_log off;\n sendfile on;\n tcp_nopush on;\n\
         client_body_temp_path {d}/body;\n proxy_temp_path {d}/proxy;\n\
         fastcgi_temp_path {d}/fastcgi;\n uwsgi_temp_path {d}/uwsgi;\n scgi_temp_path {d}/scgi;\n\
         server {{ listen {ip}:{port}; root {}; }}\n}}\n",
        www.display()
    );
    let conf_path = dir.path().join("nginx.conf");
    std::fs::write(&conf_path, conf)?;
    let got = dir.path().join("got.bin");
    proves_mptcp(&tb, || {
        let mut srv = shimmed(&tb, "gw2", "nginx", &[])?;
        srv.arg("-c").arg(&conf_path).arg("-p").arg(dir.path());
        let _server = Background::spawn(&mut srv, "nginx")?;
        wait_listening(tb.netns("gw2")?, port, SHORT)?;
        let name = file.file_name().map(|n| n.to_string_lossy().into_owned());
        let mut cli = shimmed(&tb, "gw1", "wget", &[])?;
        cli.args(["-q", "-O"])
            .arg(&got)
            .arg(format!("http://{ip}:{port}/{}", name.unwrap_or_default()));
        run_ok(&mut cli, TRANSFER)?;
        Ok(())
    })?;
    ensure!(
        sha256_file(&got)? == want,
        "wget got different bytes from nginx"
    );
    Ok(())
}
