//! Device files, good and bad, and what the user is told about them.

use super::*;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

const F: &str = "dev.toml";

fn diags(text: &str) -> Vec<Diagnostic> {
    match parse(text, F) {
        Ok(cfg) => panic!("expected errors, parsed {cfg:?}"),
        Err(e) => {
            let d = e.diagnostics().to_vec();
            assert!(!d.is_empty(), "error without diagnostics: {e}");
            d
        }
    }
}

/// The only diagnostic for `text`, checked for line and expectation.
fn only(text: &str, line: usize, message_has: &str, expected_has: &str) -> Diagnostic {
    let d = diags(text);
    assert_eq!(d.len(), 1, "{d:#?}");
    let d = d.into_iter().next().unwrap();
    check(&d, line, message_has, expected_has);
    d
}

fn check(d: &Diagnostic, line: usize, message_has: &str, expected_has: &str) {
    let shown = d.to_string();
    assert_eq!(d.line, line, "{shown}");
    assert!(
        shown.starts_with(&format!("{F}:{line}:{}: ", d.column)),
        "{shown}"
    );
    assert!(d.message.contains(message_has), "{shown}");
    assert!(d.expected.contains(expected_has), "{shown}");
    assert!(shown.contains("; expected "), "{shown}");
}

const HEAD: &str = "[device]\nname = \"gw\"\nbackend = \"native\"\n";

fn with_head(rest: &str) -> String {
    format!("{HEAD}{rest}")
}

fn example(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("examples")
        .join(name)
}

#[test]
fn examples_load() {
    let native = load(&example("native.toml")).unwrap();
    assert_eq!(native.device.backend, BackendKind::Native);
    assert_eq!(native.interfaces.len(), 3);
    assert_eq!(
        native.interfaces[0].addresses[0],
        "198.18.1.1/24".parse::<Cidr>().unwrap()
    );
    assert_eq!(
        native.interfaces[2].endpoint,
        vec![EndpointRole::Subflow, EndpointRole::Backup]
    );
    assert_eq!(
        native.mptcp.limits,
        Some(Limits {
            subflows: 3,
            add_addr_accepted: 2
        })
    );
    assert_eq!(native.mptcp.path_manager, Some(PathManager::Kernel));
    assert_eq!(native.policy.rules.len(), 2);
    assert_eq!(
        native.policy.rules[1].ports,
        vec![
            PortRange {
                first: 5201,
                last: 5201
            },
            PortRange {
                first: 5202,
                last: 5210
            }
        ]
    );

    let uml = load(&example("uml.toml")).unwrap();
    assert_eq!(uml.device.backend, BackendKind::Uml);
    assert_eq!(uml.uml.as_ref().map(|u| u.memory_mib), Some(256));
    assert_eq!(
        uml.interfaces[0].gateway,
        Some("198.18.1.1".parse().unwrap())
    );

    let lkl = load(&example("lkl.toml")).unwrap();
    assert_eq!(lkl.device.backend, BackendKind::Lkl);
    assert_eq!(lkl.lkl.as_ref().map(|l| l.memory_mib), Some(128));
    assert_eq!(lkl.policy.default, Action::Tcp);
    assert_eq!(lkl.mptcp.scheduler.as_deref(), Some("costaware"));
    assert_eq!(lkl.interfaces[1].cost, Some(10));
}

#[test]
fn every_key_is_accepted() {
    // Uses every key the unknown-key walk allows, so that list and the
    // serde structs cannot drift apart unnoticed.
    let text = r#"
[device]
name = "all-keys_1"
backend = "uml"
[[interfaces]]
name = "eth0"
addresses = ["198.18.0.1/24"]
endpoint = ["subflow", "fullmesh", "backup"]
gateway = "198.18.0.254"
cost = 7
[mptcp]
path_manager = "userspace"
scheduler = "default"
[mptcp.limits]
subflows = 8
add_addr_accepted = 0
[policy]
default = "tcp"
loopback = true
listeners = false
[[policy.rule]]
dest = "2001:2::/48"
ports = ["1-65535"]
action = "mptcp"
[uml]
kernel = "/opt/linux"
memory_mib = 32
cmdline = ["mem=32M"]
[lkl]
memory_mib = 16
boot_options = []
"#;
    let cfg = parse(text, F).unwrap();
    assert_eq!(cfg.interfaces[0].endpoint.len(), 3);
    assert_eq!(cfg.interfaces[0].cost, Some(7));
    assert!(cfg.policy.loopback && !cfg.policy.listeners);
    assert_eq!(cfg.uml.unwrap().kernel.as_deref(), Some("/opt/linux"));
    assert!(cfg.lkl.unwrap().boot_options.is_empty());
}

#[test]
fn defaults_when_sections_absent() {
    let cfg = parse(HEAD, F).unwrap();
    assert!(cfg.interfaces.is_empty());
    assert_eq!(cfg.policy, Policy::default());
    assert_eq!(cfg.mptcp, MptcpSettings::default());
    let cfg = parse(&with_head("[uml]\n[lkl]\n"), F).unwrap();
    assert_eq!(cfg.uml.unwrap().memory_mib, 256);
    assert_eq!(cfg.lkl.unwrap().memory_mib, 128);
}

#[test]
fn unknown_key() {
    only(
        &with_head("[policy]\ndefault = \"mptcp\"\nloopbak = true\n"),
        6,
        "unknown key `loopbak` in [policy] (did you mean `loopback`?)",
        "`loopback`",
    );
}

#[test]
fn every_unknown_key_is_reported() {
    let text = "[device]\nname = \"gw\"\nbakend = \"uml\"\nbackend = \"uml\"\n\
                [[interfaces]]\nname = \"a\"\nadresses = []\n[umll]\nx = 1\n\
                [[policy.rule]]\naction = \"tcp\"\nport = 1\n";
    let d = diags(text);
    let lines: Vec<usize> = d.iter().map(|d| d.line).collect();
    assert_eq!(lines, vec![3, 7, 8, 12], "{d:#?}");
    check(&d[0], 3, "`bakend` in [device]", "`name`, `backend`");
    assert_eq!(d[0].column, 1);
    check(&d[1], 7, "`adresses` in [[interfaces]]", "`addresses`");
    check(&d[2], 8, "unknown key `umll` in the top level", "`uml`");
    check(&d[3], 12, "`port` in [[policy.rule]]", "`ports`");
}

#[test]
fn wrong_type() {
    let d = only(
        &with_head("[mptcp]\nlimits = { subflows = \"two\", add_addr_accepted = 1 }\n"),
        5,
        "mptcp.limits.subflows: invalid type: string \"two\"",
        "an integer from 0 to 8",
    );
    assert_eq!(d.column, 23);
    only(
        &with_head("[policy]\nloopback = \"yes\"\n"),
        5,
        "policy.loopback",
        "true or false",
    );
    only(
        &format!("interfaces = \"eth0\"\n{HEAD}"),
        1,
        "interfaces",
        "[[interfaces]]",
    );
}

#[test]
fn missing_key() {
    only("[device]\nname = \"gw\"\n", 1, "missing key `backend`", "");
    only("[policy]\n", 1, "missing key `device`", "");
}

#[test]
fn syntax_error() {
    let d = only(&with_head("[mptcp\n"), 4, "", "");
    assert!(d.message.contains("invalid table header"), "{d}");
}

#[test]
fn bad_cidr() {
    only(
        &with_head("[[interfaces]]\nname = \"eth0\"\naddresses = [\"198.18.1.1/24\", \"198.18.300.1/24\"]\n"),
        6,
        "`198.18.300.1` is not an IPv4 or IPv6 address",
        "\"198.18.1.1/24\"",
    );
    only(
        &with_head("[[policy.rule]]\ndest = \"198.18.0.0/x\"\naction = \"tcp\"\n"),
        5,
        "`x` in `198.18.0.0/x` is not a prefix length",
        "a network, like \"198.18.0.0/15\"",
    );
}

#[test]
fn prefix_too_long() {
    only(
        &with_head("[[interfaces]]\nname = \"eth0\"\naddresses = [\n  \"198.18.1.1/33\",\n]\n"),
        7,
        "prefix length 33 in `198.18.1.1/33` is longer than 32",
        "prefix length",
    );
    only(
        &with_head("[[interfaces]]\nname = \"eth0\"\naddresses = [\"2001:2::1/129\"]\n"),
        6,
        "longer than 128",
        "prefix length",
    );
}

#[test]
fn cidr_forms() {
    let c: Cidr = "198.18.1.1".parse().unwrap();
    assert_eq!(c.prefix, 32);
    assert_eq!(c.to_string(), "198.18.1.1/32");
    let c: Cidr = "2001:2::1".parse().unwrap();
    assert_eq!(c.prefix, 128);
    let c: Cidr = "2001:2::/48".parse().unwrap();
    assert_eq!(c.to_string(), "2001:2::/48");
    assert!("198.18.0.0/+8".parse::<Cidr>().is_err());
    assert!("198.18.0.0/".parse::<Cidr>().is_err());
    assert!("198.18.0.0/8/8".parse::<Cidr>().is_err());
    assert!("".parse::<Cidr>().is_err());
    let zero: Cidr = "0.0.0.0/0".parse().unwrap();
    assert!(zero.contains("203.0.113.9".parse().unwrap()));
    assert!(!zero.contains("::1".parse().unwrap()));
}

#[test]
fn unknown_backend() {
    only(
        "[device]\nname = \"gw\"\nbackend = \"linux\"\n",
        3,
        "device.backend: unknown value `linux`",
        "`native`, `uml`, `lkl`",
    );
}

#[test]
fn unknown_endpoint_role() {
    only(
        &with_head("[[interfaces]]\nname = \"eth0\"\naddresses = [\"198.18.1.1/24\"]\nendpoint = [\"subflow\", \"mesh\"]\n"),
        7,
        "unknown value `mesh`",
        "`subflow`, `signal`, `backup`, `fullmesh`",
    );
}

#[test]
fn duplicate_interface_and_address() {
    let text = with_head(
        "[[interfaces]]\nname = \"eth0\"\naddresses = [\"198.18.1.1/24\"]\n\
         [[interfaces]]\nname = \"eth1\"\naddresses = [\"198.18.2.1/24\"]\n\
         [[interfaces]]\nname = \"eth0\"\naddresses = [\"198.18.3.1/24\", \"198.18.1.1/16\"]\n",
    );
    let d = diags(&text);
    assert_eq!(d.len(), 2, "{d:#?}");
    check(
        &d[0],
        11,
        "interfaces[2].name: interface `eth0` is already described by interfaces[0]",
        "one [[interfaces]] table",
    );
    check(
        &d[1],
        12,
        "address 198.18.1.1 is already given as interfaces[0].addresses[0]",
        "each address once",
    );
    assert_eq!(d[1].column, 31, "{}", d[1]);
}

#[test]
fn limits_too_high() {
    let d = diags(&with_head(
        "[mptcp.limits]\nsubflows = 9\nadd_addr_accepted = 200\n",
    ));
    assert_eq!(d.len(), 2, "{d:#?}");
    check(
        &d[0],
        5,
        "subflows = 9 is above the kernel's maximum of 8",
        "0 to 8",
    );
    check(&d[1], 6, "add_addr_accepted = 200", "0 to 8");
    only(
        &with_head("[mptcp.limits]\nsubflows = -1\nadd_addr_accepted = 0\n"),
        5,
        "invalid value: integer `-1`",
        "0 to 8",
    );
}

#[test]
fn bad_port_range() {
    only(
        &with_head("[[policy.rule]]\nports = [80, \"5210-5201\"]\naction = \"tcp\"\n"),
        5,
        "range `5210-5201` runs backwards",
        "first <= last",
    );
    only(
        &with_head("[[policy.rule]]\nports = [0]\naction = \"tcp\"\n"),
        5,
        "port 0 in `0` is outside 1-65535",
        "1 to 65535",
    );
    only(
        &with_head("[[policy.rule]]\nports = [\"80-70000\"]\naction = \"tcp\"\n"),
        5,
        "outside 1-65535",
        "1 to 65535",
    );
    only(
        &with_head("[[policy.rule]]\nports = [\"http\"]\naction = \"tcp\"\n"),
        5,
        "`http` is not a port or a port range",
        "\"5201-5210\"",
    );
}

#[test]
fn semantic_errors_are_all_reported() {
    let text = "[device]\nname = \"bad name\"\nbackend = \"uml\"\n\
                [[interfaces]]\nname = \"a-very-long-interface\"\naddresses = []\nendpoint = [\"subflow\"]\n\
                [[interfaces]]\nname = \"eth/1\"\naddresses = [\"198.18.1.1/24\"]\nendpoint = [\"signal\", \"fullmesh\", \"signal\"]\ngateway = \"2001:2::1\"\n\
                [mptcp]\nscheduler = \"Fast\"\n\
                [uml]\nmemory_mib = 16\n[lkl]\nmemory_mib = 100000\n";
    let d = diags(text);
    let got: Vec<(usize, &str)> = d.iter().map(|d| (d.line, d.message.as_str())).collect();
    let want_lines = [2, 5, 7, 9, 11, 11, 12, 14, 16, 18];
    assert_eq!(
        got.iter().map(|g| g.0).collect::<Vec<_>>(),
        want_lines,
        "{got:#?}"
    );
    assert!(got[0].1.contains("device name `bad name` contains ' '"));
    assert!(got[1].1.contains("is 21 bytes long"));
    assert!(got[2].1.contains("has endpoint roles but no addresses"));
    assert!(got[3].1.contains("contains '/'"));
    assert!(d[4..6].iter().any(|d| d
        .message
        .contains("`signal` and `fullmesh` cannot be combined")));
    assert!(d[4..6]
        .iter()
        .any(|d| d.message.contains("role `signal` is listed twice")));
    assert!(got[6].1.contains("no IPv6 address"));
    assert!(got[7].1.contains("scheduler name `Fast` contains 'F'"));
    assert!(got[8]
        .1
        .contains("uml.memory_mib: memory_mib = 16 is outside 32-65536"));
    assert!(got[9].1.contains("lkl.memory_mib"));
    let shown = parse(text, F).unwrap_err().to_string();
    assert_eq!(shown.lines().count(), 10, "{shown}");
}

#[test]
fn device_name_rules() {
    only(
        "[device]\nname = \"\"\nbackend = \"native\"\n",
        2,
        "empty",
        "1-32",
    );
    only(
        &format!(
            "[device]\nname = \"{}\"\nbackend = \"native\"\n",
            "x".repeat(33)
        ),
        2,
        "33 characters",
        "1-32",
    );
}

#[test]
fn load_missing_file_names_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nope.toml");
    let err = load(&path).unwrap_err();
    let shown = err.to_string();
    assert!(shown.starts_with(&path.display().to_string()), "{shown}");
    assert!(shown.contains("dropshim check"), "{shown}");
    assert!(matches!(err, ConfError::Read { .. }));
}

#[test]
fn load_reports_path_as_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("d.toml");
    std::fs::write(&path, "[device]\nname = \"gw\"\nbackend = \"nat\"\n").unwrap();
    let shown = load(&path).unwrap_err().to_string();
    assert!(
        shown.starts_with(&format!("{}:3:11: ", path.display())),
        "{shown}"
    );
}

#[test]
fn resolve_default_and_override() {
    let cfg = resolve(None, None).unwrap();
    assert_eq!(cfg, DeviceConfig::embedded_default());
    assert_eq!(cfg.device.backend, BackendKind::Native);
    let cfg = resolve(None, Some("uml")).unwrap();
    assert_eq!(cfg.device.backend, BackendKind::Uml);
    let cfg = resolve(Some(&example("uml.toml")), Some(" lkl ")).unwrap();
    assert_eq!(cfg.device.backend, BackendKind::Lkl);
    assert_eq!(cfg.device.name, "stb-uml");
    let cfg = resolve(Some(&example("uml.toml")), Some("")).unwrap();
    assert_eq!(cfg.device.backend, BackendKind::Uml);
    let err = resolve(None, Some("dpdk")).unwrap_err().to_string();
    assert!(err.contains("`dpdk`"), "{err}");
    assert!(err.contains("native, uml, lkl"), "{err}");
    assert!(err.contains(ENV_BACKEND), "{err}");
}

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn policy(text: &str) -> Policy {
    parse(&with_head(text), F).unwrap().policy
}

#[test]
fn decide_default_policy() {
    let p = Policy::default();
    assert_eq!(p.decide(&sa("198.18.1.2:5201")), Action::Mptcp);
    assert_eq!(p.decide(&sa("[2001:2::2]:80")), Action::Mptcp);
    assert_eq!(p.decide(&sa("127.0.0.1:5201")), Action::Tcp);
    assert_eq!(p.decide(&sa("127.8.9.1:5201")), Action::Tcp);
    assert_eq!(p.decide(&sa("[::1]:5201")), Action::Tcp);
    assert_eq!(p.decide(&sa("[::ffff:127.0.0.1]:5201")), Action::Tcp);
    assert_eq!(p.decide(&sa("0.0.0.0:5201")), Action::Tcp);
    assert_eq!(p.initial(), Action::Mptcp);
    assert_eq!(p.decide_bind(&sa("0.0.0.0:80")), Action::Mptcp);
    assert_eq!(p.decide_bind(&sa("[::]:80")), Action::Mptcp);
    assert_eq!(p.decide_bind(&sa("127.0.0.1:80")), Action::Tcp);
    let lo = Policy {
        loopback: true,
        ..Policy::default()
    };
    assert_eq!(lo.decide(&sa("127.0.0.1:5201")), Action::Mptcp);
    assert_eq!(lo.decide_bind(&sa("[::1]:80")), Action::Mptcp);
}

#[test]
fn decide_rules_first_match() {
    let p = policy(
        "[policy]\ndefault = \"tcp\"\nlisteners = false\n\
         [[policy.rule]]\ndest = \"198.18.5.0/24\"\naction = \"tcp\"\n\
         [[policy.rule]]\ndest = \"198.18.0.0/15\"\nports = [80, \"5201-5210\"]\naction = \"mptcp\"\n\
         [[policy.rule]]\ndest = \"2001:2::/48\"\naction = \"mptcp\"\n",
    );
    assert_eq!(p.initial(), Action::Tcp);
    assert_eq!(p.decide(&sa("198.18.1.2:5201")), Action::Mptcp);
    assert_eq!(p.decide(&sa("198.19.255.1:5210")), Action::Mptcp);
    assert_eq!(p.decide(&sa("198.18.1.2:80")), Action::Mptcp);
    // Port just outside the range, and an address just outside the /15.
    assert_eq!(p.decide(&sa("198.18.1.2:5211")), Action::Tcp);
    assert_eq!(p.decide(&sa("198.20.0.1:5201")), Action::Tcp);
    // The first rule wins over the broader second one.
    assert_eq!(p.decide(&sa("198.18.5.9:5201")), Action::Tcp);
    // IPv4-mapped IPv6 destinations are matched as IPv4.
    assert_eq!(p.decide(&sa("[::ffff:198.18.1.2]:5201")), Action::Mptcp);
    assert_eq!(p.decide(&sa("[::ffff:198.18.5.9]:5201")), Action::Tcp);
    assert_eq!(p.decide(&sa("[2001:2:0:9::1]:22")), Action::Mptcp);
    assert_eq!(p.decide(&sa("[2001:3::1]:22")), Action::Tcp);
    // Default tcp: a wildcard bind matches no dest rule, so stays TCP.
    assert_eq!(p.decide_bind(&sa("0.0.0.0:80")), Action::Tcp);
    assert_eq!(p.decide_bind(&sa("198.18.1.1:5201")), Action::Mptcp);
}

#[test]
fn decide_ports_without_dest() {
    let p = policy("[[policy.rule]]\nports = [22, \"6000-6010\"]\naction = \"tcp\"\n");
    assert_eq!(p.decide(&sa("198.18.1.2:22")), Action::Tcp);
    assert_eq!(p.decide(&sa("[2001:2::1]:6005")), Action::Tcp);
    assert_eq!(p.decide(&sa("198.18.1.2:23")), Action::Mptcp);
    // Loopback stays TCP even if a rule would say otherwise.
    let p = policy("[[policy.rule]]\naction = \"mptcp\"\n");
    assert_eq!(p.decide(&sa("127.0.0.1:1")), Action::Tcp);
}

#[test]
fn port_range_forms() {
    assert_eq!(
        "5201-5210".parse::<PortRange>().unwrap().to_string(),
        "5201-5210"
    );
    assert_eq!(" 80 ".parse::<PortRange>().unwrap().to_string(), "80");
    assert_eq!("80 - 81".parse::<PortRange>().unwrap().last, 81);
    assert!("-5".parse::<PortRange>().is_err());
    assert!("65536".parse::<PortRange>().is_err());
    assert!("1-2-3".parse::<PortRange>().is_err());
    assert!("99999999999999999999999".parse::<PortRange>().is_err());
}

#[test]
fn datetime_value_is_a_type_error() {
    only(
        "[device]\nname = 1979-05-27\nbackend = \"native\"\n",
        2,
        "device.name: invalid type",
        "1-32",
    );
}

#[test]
fn embedded_default_is_valid() {
    let cfg = DeviceConfig::embedded_default();
    assert!(validate::check(&cfg).is_empty());
    let _: IpAddr = "198.18.0.1".parse().unwrap();
}

#[test]
fn interface_cost_out_of_range_or_wrong_type() {
    only(
        &with_head("[[interfaces]]\nname = \"eth1\"\ncost = 1000001\n"),
        6,
        "cost 1000001 is above the maximum",
        "an integer from 0",
    );
    only(
        &with_head("[[interfaces]]\nname = \"eth1\"\ncost = \"cheap\"\n"),
        6,
        "",
        "an integer from 0",
    );
    only(
        &with_head("[[interfaces]]\nname = \"eth1\"\ncost = -1\n"),
        6,
        "",
        "an integer from 0",
    );
}

fn scheduler_file(backend: &str, name: &str) -> String {
    format!("[device]\nname = \"gw\"\nbackend = \"{backend}\"\n\n[mptcp]\nscheduler = \"{name}\"\n")
}

#[test]
fn scheduler_checked_against_what_the_backend_offers() {
    let native = vec!["default".to_string()];
    for backend in ["uml", "lkl"] {
        for name in BUILT_SCHEDULERS {
            let text = scheduler_file(backend, name);
            let cfg = parse(&text, F).unwrap();
            assert_eq!(
                check_scheduler(&text, F, &cfg, &native),
                None,
                "{backend} {name}"
            );
        }
    }
    let text = scheduler_file("native", "default");
    let cfg = parse(&text, F).unwrap();
    assert_eq!(check_scheduler(&text, F, &cfg, &native), None);

    // On native, a scheduler only dropshim's kernels have: the line, and
    // which backends offer it.
    let text = scheduler_file("native", "roundrobin");
    let cfg = parse(&text, F).unwrap();
    let d = check_scheduler(&text, F, &cfg, &native).expect("an error");
    check(&d, 6, "not offered by the native backend", "one of default");
    assert!(
        d.message.contains("offered by the uml, lkl backend(s)"),
        "{d}"
    );
    assert!(d.message.contains("the host kernel has default"), "{d}");

    // A name nobody offers, on uml: no backend offers it.
    let text = scheduler_file("uml", "fastest");
    let cfg = parse(&text, F).unwrap();
    let d = check_scheduler(&text, F, &cfg, &native).expect("an error");
    check(
        &d,
        6,
        "not offered by the uml backend",
        "one of default, roundrobin, blest, costaware, redundant",
    );
    assert!(d.message.contains("no backend offers it"), "{d}");

    // A host that offers it makes native an answer for uml's error too.
    let host = vec!["default".to_string(), "fastest".to_string()];
    let d = check_scheduler(&text, F, &cfg, &host).expect("an error");
    assert!(
        d.message.contains("offered by the native backend(s)"),
        "{d}"
    );
    // No scheduler key: nothing to check.
    let text = with_head("");
    let cfg = parse(&text, F).unwrap();
    assert_eq!(check_scheduler(&text, F, &cfg, &[]), None);
}

#[test]
fn userspace_path_manager_policies_parse() {
    for (policy, extra) in [
        ("fullmesh", ""),
        ("ndiffports", "subflows = 4\n"),
        ("backup", ""),
        ("costaware", "saturation_kib = 512\nsaturation_ms = 500\n"),
    ] {
        let text = with_head(&format!(
            "[mptcp]\npath_manager = \"userspace\"\n[mptcp.userspace]\npolicy = \"{policy}\"\n{extra}"
        ));
        let cfg = parse(&text, F).unwrap();
        let us = cfg.mptcp.userspace.unwrap();
        assert_eq!(us.policy.as_str(), policy);
    }
}

#[test]
fn userspace_path_manager_errors_point_at_the_line() {
    let pm = "[mptcp]\npath_manager = \"userspace\"\n[mptcp.userspace]\n";
    // Lines: 1-3 head, 4 [mptcp], 5 path_manager, 6 [mptcp.userspace], 7...
    only(
        &with_head(&format!("{pm}policy = \"roundrobin\"\n")),
        7,
        "unknown value `roundrobin`",
        "fullmesh",
    );
    only(
        &with_head(&format!("{pm}policy = \"ndiffports\"\nsubflows = 9\n")),
        8,
        "subflows = 9 is outside 1-8",
        "an integer from 1 to 8",
    );
    only(
        &with_head(&format!("{pm}policy = \"ndiffports\"\nsubflows = 0\n")),
        8,
        "subflows = 0 is outside 1-8",
        "an integer from 1 to 8",
    );
    only(
        &with_head(&format!("{pm}policy = \"fullmesh\"\nsubflows = 2\n")),
        8,
        "a parameter of the ndiffports policy",
        "no `subflows`",
    );
    only(
        &with_head(&format!("{pm}policy = \"costaware\"\nsaturation_ms = 5\n")),
        8,
        "saturation_ms = 5 is outside 100-60000",
        "milliseconds",
    );
    only(
        &with_head(&format!("{pm}policy = \"backup\"\nflavour = 1\n")),
        8,
        "flavour",
        "",
    );
    only(
        &with_head("[mptcp]\n[mptcp.userspace]\npolicy = \"backup\"\n"),
        6,
        "path_manager is not \"userspace\"",
        "path_manager = \"userspace\"",
    );
}
