//! One device file, three stacks: the device configurator applies the same
//! file to the host (native, gw1's namespace), a library kernel (lkl, in a
//! `dropshim show` process in gw1) and a uml instance owning gw1's links,
//! and the state read back through the netlink layer is the same on each:
//! addresses, default routes (one per interface with a gateway, metric by
//! position), MPTCP endpoints with their flags and interfaces, limits,
//! path manager and scheduler. On the host, addresses and routes belong to
//! the administrator (the configurator only checks the addresses), so the
//! routes are compared between the two stacks that own theirs.

use anyhow::{ensure, Context, Result};
use dropshim_netlink::configure::{DeviceState, METRIC_BASE};
use dropshim_netlink::mptcp::{EndpointFlags, Limits};
use dropshim_testbed::Testbed;
use dropshim_tests::lkl::liblkl;
use dropshim_tests::uml::unique_device;
use dropshim_tests::*;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const STEP: Duration = Duration::from_secs(120);

/// `dropshim down` for a device on drop, whether the test passed or not.
struct Down<'a> {
    tb: &'a Testbed,
    config: PathBuf,
    backend: &'static str,
}

impl Drop for Down<'_> {
    fn drop(&mut self) {
        if let Ok(mut cmd) = self.tb.command("gw1", &cli_path().display().to_string()) {
            cmd.args(["down", "--backend", self.backend, "--config"])
                .arg(&self.config);
            let _ = run_bounded(&mut cmd, STEP);
        }
    }
}

fn dropshim(tb: &Testbed, args: &[&str], config: &Path) -> Result<Command> {
    let mut cmd = tb.command("gw1", &cli_path().display().to_string())?;
    cmd.args(args).arg("--config").arg(config);
    Ok(cmd)
}

fn show(tb: &Testbed, backend: &str, config: &Path) -> Result<DeviceState> {
    let mut cmd = dropshim(tb, &["show", "--json", "--backend", backend], config)?;
    cmd.env("DROPSHIM_LKL_LIB", liblkl()?);
    let out = run_ok(&mut cmd, STEP).with_context(|| format!("dropshim show ({backend})"))?;
    Ok(DeviceState::from_json(&String::from_utf8_lossy(
        &out.stdout,
    ))?)
}

#[test]
fn same_device_file_gives_the_same_state_on_every_stack() -> Result<()> {
    let tb = two_gateways()?;
    let a = |link| -> Result<(IpAddr, IpAddr)> {
        Ok((tb.addr4("gw1", link)?.into(), tb.addr6("gw1", link)?.into()))
    };
    let (a4_1, a6_1) = a(1)?;
    let (a4_2, a6_2) = a(2)?;
    let gw_1: IpAddr = tb.addr4("gw2", 1)?.into();
    let gw_2: IpAddr = tb.addr4("gw2", 2)?.into();
    let if1 = tb.ifname("gw1", 1)?.to_string();
    let if2 = tb.ifname("gw1", 2)?.to_string();
    let name = unique_device("conf");
    let dir = tempfile::tempdir()?;
    let config = dir.path().join(format!("{name}.toml"));
    std::fs::write(
        &config,
        format!(
            r#"[device]
name = "{name}"
backend = "native"

[[interfaces]]
name = "{if1}"
addresses = ["{a4_1}/24", "{a6_1}/64"]
gateway = "{gw_1}"
endpoint = ["signal"]

[[interfaces]]
name = "{if2}"
addresses = ["{a4_2}/24", "{a6_2}/64"]
gateway = "{gw_2}"
endpoint = ["subflow", "backup"]

[mptcp]
limits = {{ subflows = 3, add_addr_accepted = 2 }}
path_manager = "kernel"
scheduler = "default"
"#
        ),
    )?;
    let signal = EndpointFlags(EndpointFlags::SIGNAL);
    let backup = EndpointFlags(EndpointFlags::SUBFLOW | EndpointFlags::BACKUP);
    let mut endpoints = vec![
        (a4_1, signal, Some(0)),
        (a6_1, signal, Some(0)),
        (a4_2, backup, Some(1)),
        (a6_2, backup, Some(1)),
    ];
    endpoints.sort_by_key(|e| (e.0, e.1 .0, e.2));
    let expected = DeviceState {
        addresses: vec![
            {
                let mut v = vec![(a4_1, 24), (a6_1, 64)];
                v.sort();
                v
            },
            {
                let mut v = vec![(a4_2, 24), (a6_2, 64)];
                v.sort();
                v
            },
        ],
        default_routes: vec![(0, gw_1, METRIC_BASE), (1, gw_2, METRIC_BASE + 1)],
        endpoints,
        limits: Limits {
            subflows: 3,
            add_addr_accepted: 2,
        },
        path_manager: "kernel".into(),
        scheduler: "default".into(),
    };

    // The testbed gives gw1 an endpoint of its own: start from none.
    run_ok(
        tb.command("gw1", "ip")?
            .args(["mptcp", "endpoint", "flush"]),
        STEP,
    )?;
    // native: gw1's own addresses, MPTCP configured by `dropshim up`.
    let native = {
        let _down = Down {
            tb: &tb,
            config: config.clone(),
            backend: "native",
        };
        run_ok(
            &mut dropshim(&tb, &["up", "--backend", "native"], &config)?,
            STEP,
        )
        .context("dropshim up (native)")?;
        show(&tb, "native", &config)?
    };
    let without_routes = |s: &DeviceState| DeviceState {
        default_routes: Vec::new(),
        ..s.clone()
    };
    assert_eq!(without_routes(&native), without_routes(&expected), "native");

    // The user-space stacks own the links: the host keeps no address there.
    for ifname in [&if1, &if2] {
        run_ok(
            tb.command("gw1", "ip")?
                .args(["addr", "flush", "dev", ifname]),
            STEP,
        )?;
    }
    let lkl = show(&tb, "lkl", &config)?;
    assert_eq!(lkl, expected, "lkl");

    let uml = {
        let _down = Down {
            tb: &tb,
            config: config.clone(),
            backend: "uml",
        };
        run_ok(
            &mut dropshim(&tb, &["up", "--backend", "uml"], &config)?,
            Duration::from_secs(600),
        )
        .context("dropshim up (uml)")?;
        show(&tb, "uml", &config)?
    };
    assert_eq!(uml, expected, "uml");
    ensure!(uml == lkl, "uml and lkl differ");
    Ok(())
}
