//! The Debian package on this machine: built by `scripts/package.sh`,
//! installed, used (`dropshim run` finds the installed library with no
//! LD_PRELOAD path and the connection is MPTCP at the peer), upgraded,
//! removed and purged with nothing of it left behind.

use anyhow::{bail, ensure, Context, Result};
use dropshim_tests::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const STEP: Duration = Duration::from_secs(180);

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Builds the package at `version` into `out` from the built artifacts.
fn package(version: &str, out: &Path) -> Result<PathBuf> {
    let target = target_dir();
    let target = target.parent().context("the target folder has no parent")?;
    let mut cmd = Command::new("bash");
    cmd.arg(repo().join("scripts/package.sh"))
        .args(["--no-build", "--version", version, "--out"])
        .arg(out)
        .env("CARGO_TARGET_DIR", target)
        .current_dir(repo());
    let done = run_ok(&mut cmd, STEP)?;
    let deb = String::from_utf8_lossy(&done.stdout).trim().to_string();
    ensure!(
        Path::new(&deb).is_file(),
        "package.sh printed no package: {deb:?}"
    );
    Ok(PathBuf::from(deb))
}

fn dpkg(args: &[&str]) -> Result<String> {
    let out = run_ok(Command::new("dpkg").args(args), STEP)?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn installed_version() -> Option<String> {
    let out = Command::new("dpkg-query")
        .args(["-W", "-f", "${Status} ${Version}", "dropshim"])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.strip_prefix("install ok installed ")
        .map(str::to_string)
}

/// Purges the package if a failed run left it installed.
struct Purge;

impl Drop for Purge {
    fn drop(&mut self) {
        let _ = Command::new("dpkg").args(["-P", "dropshim"]).output();
    }
}

/// `/usr/bin/dropshim run -- curl` from gw1 to a native server in gw2:
/// intact and MPTCP at the peer, found without LD_PRELOAD paths.
fn installed_run_is_mptcp() -> Result<()> {
    let tb = two_gateways()?;
    let dir = tempfile::tempdir()?;
    write_random_file(&dir.path().join("f.bin"), 2 << 20, 7)?;
    let sum = sha256_file(&dir.path().join("f.bin"))?;
    let port = unique_port();
    let addr = tb.addr4("gw2", 1)?;
    let mut srv = plain(&tb, "gw2", "mptcpize")?;
    srv.args(["run", "python3", "-m", "http.server", "--bind"])
        .arg(addr.to_string())
        .arg(port.to_string())
        .current_dir(dir.path());
    let _srv = Background::spawn(&mut srv, "http.server in gw2")?;
    wait_listening(tb.netns("gw2")?, port, Duration::from_secs(20))?;
    let before = mptcp_counters(tb.netns("gw2")?)?;
    let got = dir.path().join("got.bin");
    let mut run = plain(&tb, "gw1", "/usr/bin/dropshim")?;
    run.env_remove("LD_PRELOAD")
        .env_remove("DROPSHIM_CONFIG")
        .args(["run", "--", "curl", "-sS", "-o"])
        .arg(&got)
        .arg(url(addr.into(), port, "f.bin"));
    run_ok(&mut run, STEP)?;
    ensure!(
        sha256_file(&got)? == sum,
        "the download through the installed dropshim differs"
    );
    let after = mptcp_counters(tb.netns("gw2")?)?;
    ensure!(
        delta(&before, &after, "MPCapableSYNRX") >= 1,
        "the installed dropshim's connection was not MPTCP at the peer"
    );
    Ok(())
}

#[test]
fn package_installs_runs_upgrades_and_purges_clean() -> Result<()> {
    if let Some(v) = installed_version() {
        bail!("a dropshim package ({v}) is installed here; this test installs and purges its own: remove it first with `dpkg -P dropshim`");
    }
    let out = tempfile::tempdir()?;
    let first = package("0.1.0~pkgtest1", out.path())?;
    let second = package("0.1.0~pkgtest2", out.path())?;
    let _purge = Purge;

    dpkg(&["-i", &first.display().to_string()])?;
    ensure!(installed_version().as_deref() == Some("0.1.0~pkgtest1"));
    let files: Vec<PathBuf> = dpkg(&["-L", "dropshim"])?
        .lines()
        .map(PathBuf::from)
        .filter(|p| p.is_file())
        .collect();
    let multiarch = format!("/usr/lib/{}-linux-gnu", std::env::consts::ARCH);
    for want in [
        "/usr/bin/dropshim".to_string(),
        "/usr/bin/dropshim-uml".to_string(),
        format!("{multiarch}/libdropshim.so"),
        "/usr/share/man/man1/dropshim-run.1.gz".to_string(),
        "/usr/share/bash-completion/completions/dropshim".to_string(),
        "/usr/share/doc/dropshim/examples/native.toml".to_string(),
    ] {
        ensure!(
            files.contains(&PathBuf::from(&want)),
            "the package lacks {want}: {files:?}"
        );
    }
    let help = run_ok(Command::new("/usr/bin/dropshim").arg("--help"), STEP)?;
    ensure!(String::from_utf8_lossy(&help.stdout).contains("testbed"));
    installed_run_is_mptcp().context("running the installed dropshim")?;

    dpkg(&["-i", &second.display().to_string()])?;
    ensure!(
        installed_version().as_deref() == Some("0.1.0~pkgtest2"),
        "the upgrade did not take: {:?}",
        installed_version()
    );
    installed_run_is_mptcp().context("running the upgraded dropshim")?;

    dpkg(&["-r", "dropshim"])?;
    ensure!(
        !Path::new("/usr/bin/dropshim").exists(),
        "remove left /usr/bin/dropshim"
    );
    dpkg(&["-P", "dropshim"])?;
    ensure!(
        installed_version().is_none(),
        "the package is still installed after purge"
    );
    let left: Vec<&PathBuf> = files.iter().filter(|p| p.exists()).collect();
    ensure!(left.is_empty(), "purge left files behind: {left:?}");
    ensure!(
        !Path::new("/usr/share/doc/dropshim").exists(),
        "purge left /usr/share/doc/dropshim"
    );
    Ok(())
}
