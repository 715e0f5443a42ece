//! Everything that can be wrong with a device file beyond TOML syntax:
//! unknown keys, values of the wrong type, and values that parse but make
//! no sense (semantic checks). Each finding carries a path into the file
//! so it can be located.

use crate::error::Diagnostic;
use crate::schema::{DeviceConfig, EndpointRole, CIDR_EXPECTED, PORTS_EXPECTED};
use crate::spans::{line_col, Kind, Node, PathDisplay, Seg};
use std::collections::HashMap;
use std::net::IpAddr;
use std::ops::Range;

/// The Linux kernel's bound on each `ip mptcp limits` value (MPTCP_PM_ADDR_MAX).
pub const MAX_LIMIT: u32 = 8;
/// Interface names are at most IFNAMSIZ - 1 bytes.
pub const MAX_IFNAME: usize = 15;
/// Device names end up in runtime file names; keep them short.
pub const MAX_DEVICE_NAME: usize = 32;
/// Scheduler names are at most MPTCP_SCHED_NAME_MAX - 1 bytes.
pub const MAX_SCHEDULER: usize = 15;
/// What an interface's `cost` should look like.
const COST_EXPECTED: &str = "an integer from 0 (cheapest, the default) to 1000000";
const POLICY_EXPECTED: &str = "one of \"fullmesh\", \"ndiffports\", \"backup\", \"costaware\"";
const SUBFLOWS_EXPECTED: &str =
    "an integer from 1 to 8 (subflows per connection, the first included)";
const SATURATION_KIB_EXPECTED: &str = "an integer from 1 to 1048576 (KiB unacknowledged)";
const SATURATION_MS_EXPECTED: &str = "an integer from 100 to 60000 (milliseconds)";
/// Smallest and largest `[uml] memory_mib` accepted, in MiB.
pub const UML_MEMORY_MIB: (u32, u32) = (32, 65536);
/// Smallest and largest `[lkl] memory_mib` accepted, in MiB.
pub const LKL_MEMORY_MIB: (u32, u32) = (16, 65536);

/// Keys each table accepts, by table path (array indices left out). Keep
/// in step with the serde structs in schema.rs; the `every_key_is_accepted` test fails
/// when a key is listed here that serde refuses.
const TABLES: &[(&[&str], &str, &[&str])] = &[
    (
        &[],
        "the top level",
        &["device", "interfaces", "mptcp", "policy", "uml", "lkl"],
    ),
    (&["device"], "[device]", &["name", "backend"]),
    (
        &["interfaces"],
        "[[interfaces]]",
        &["name", "addresses", "endpoint", "gateway", "cost"],
    ),
    (
        &["mptcp"],
        "[mptcp]",
        &["limits", "path_manager", "scheduler", "userspace"],
    ),
    (
        &["mptcp", "userspace"],
        "[mptcp.userspace]",
        &["policy", "subflows", "saturation_kib", "saturation_ms"],
    ),
    (
        &["mptcp", "limits"],
        "[mptcp.limits]",
        &["subflows", "add_addr_accepted"],
    ),
    (
        &["policy"],
        "[policy]",
        &["default", "loopback", "listeners", "rule"],
    ),
    (
        &["policy", "rule"],
        "[[policy.rule]]",
        &["dest", "ports", "action"],
    ),
    (&["uml"], "[uml]", &["kernel", "memory_mib", "cmdline"]),
    (&["lkl"], "[lkl]", &["memory_mib", "boot_options"]),
];

/// What a value at `keys` (array indices left out) should look like.
fn describe(keys: &[&str], in_array: bool) -> Option<&'static str> {
    let text = match (keys, in_array) {
        ([], _) => "a device file with a [device] table",
        (["device"], _) => "a [device] table with name and backend",
        (["device", "name"], _) => "a name of 1-32 letters, digits, '-' or '_'",
        (["device", "backend"], _) => "one of \"native\", \"uml\", \"lkl\"",
        (["interfaces"], false) => "an array of tables, written [[interfaces]]",
        (["interfaces"], true) => "a table with name, addresses, endpoint and gateway",
        (["interfaces", "name"], _) => "an interface name of 1-15 bytes without '/', ':' or spaces",
        (["interfaces", "addresses"], false) => {
            "an array of addresses, like [\"198.18.1.1/24\", \"2001:2::1/64\"]"
        }
        (["interfaces", "addresses"], true) => CIDR_EXPECTED,
        (["interfaces", "endpoint"], false) => {
            "an array of endpoint roles, like [\"subflow\", \"backup\"]"
        }
        (["interfaces", "endpoint"], true) => {
            "one of \"subflow\", \"signal\", \"backup\", \"fullmesh\""
        }
        (["interfaces", "gateway"], _) => "an IPv4 or IPv6 address, like \"198.18.1.254\"",
        (["interfaces", "cost"], _) => COST_EXPECTED,
        (["mptcp"], _) => "an [mptcp] table with limits, path_manager and scheduler",
        (["mptcp", "limits"], _) => "a table like { subflows = 2, add_addr_accepted = 2 }",
        (["mptcp", "limits", _], _) => "an integer from 0 to 8",
        (["mptcp", "path_manager"], _) => "\"kernel\" or \"userspace\"",
        (["mptcp", "userspace"], _) => "a table like { policy = \"ndiffports\", subflows = 4 }",
        (["mptcp", "userspace", "policy"], _) => POLICY_EXPECTED,
        (["mptcp", "userspace", "subflows"], _) => SUBFLOWS_EXPECTED,
        (["mptcp", "userspace", "saturation_kib"], _) => SATURATION_KIB_EXPECTED,
        (["mptcp", "userspace", "saturation_ms"], _) => SATURATION_MS_EXPECTED,
        (["mptcp", "scheduler"], _) => {
            "a scheduler name of lowercase letters, digits and '_', like \"default\""
        }
        (["policy"], _) => "a [policy] table with default, loopback, listeners and rules",
        (["policy", "default"], _) | (["policy", "rule", "action"], _) => "\"mptcp\" or \"tcp\"",
        (["policy", "loopback"], _) | (["policy", "listeners"], _) => "true or false",
        (["policy", "rule"], false) => "an array of tables, written [[policy.rule]]",
        (["policy", "rule"], true) => "a table with dest, ports and action",
        (["policy", "rule", "dest"], _) => "a network, like \"198.18.0.0/15\" or \"2001:2::/48\"",
        (["policy", "rule", "ports"], false) => {
            "an array of ports and ranges, like [443, \"5201-5210\"]"
        }
        (["policy", "rule", "ports"], true) => PORTS_EXPECTED,
        (["uml"], _) => "a [uml] table with kernel, memory_mib and cmdline",
        (["uml", "kernel"], _) => "the path of a UML kernel built with MPTCP",
        (["uml", "memory_mib"], _) => "an integer from 32 to 65536 (MiB)",
        (["uml", "cmdline"], false) | (["lkl", "boot_options"], false) => {
            "an array of strings, like [\"loglevel=4\"]"
        }
        (["uml", "cmdline"], true) | (["lkl", "boot_options"], true) => "a string",
        (["lkl"], _) => "an [lkl] table with memory_mib and boot_options",
        (["lkl", "memory_mib"], _) => "an integer from 16 to 65536 (MiB)",
        _ => return None,
    };
    Some(text)
}

/// The key names of a path, and whether it ends inside an array.
fn keys_of<'a>(path: &[Seg<'a>]) -> (Vec<&'a str>, bool) {
    let keys = path
        .iter()
        .filter_map(|s| match s {
            Seg::Key(k) => Some(*k),
            Seg::Index(_) => None,
        })
        .collect();
    (keys, matches!(path.last(), Some(Seg::Index(_))))
}

/// Places diagnostics in one file.
pub(crate) struct Locator<'t> {
    pub file: &'t str,
    pub text: &'t str,
    pub tree: Option<&'t Node>,
}

impl Locator<'_> {
    fn at(&self, offset: usize, message: String, expected: String) -> Diagnostic {
        let (line, column) = line_col(self.text, offset);
        Diagnostic {
            file: self.file.to_string(),
            line,
            column,
            message,
            expected,
        }
    }

    fn span_of(&self, path: &[Seg<'_>]) -> Option<Range<usize>> {
        self.tree.and_then(|t| t.locate(path))
    }

    /// A diagnostic about the value at `path`.
    pub fn finding(&self, f: &Finding) -> Diagnostic {
        let offset = self.span_of(&f.path).map_or(0, |s| s.start);
        self.at(
            offset,
            format!("{}: {}", PathDisplay(&f.path), f.message),
            f.expected.clone(),
        )
    }

    /// Turns toml's error (syntax, type, missing key) into a diagnostic.
    pub fn toml_error(&self, err: &toml::de::Error) -> Diagnostic {
        let span = err.span();
        let offset = span.as_ref().map_or(0, |s| s.start);
        let raw = err.message().trim();
        // Without a tree the text is not even TOML: keep toml's own words.
        let path = match (&span, self.tree) {
            (Some(_), Some(tree)) => tree.path_at(offset),
            _ => Vec::new(),
        };
        let (mut message, mut expected) = split_expected(raw);
        if message.is_empty() {
            // toml sometimes gives only the expectation, e.g. for a file
            // that ends right after `key = `.
            message = "incomplete or invalid TOML here".to_string();
        }
        let (mut keys, mut in_array) = keys_of(&path);
        let missing = raw
            .strip_prefix("missing field `")
            .and_then(|rest| rest.split('`').next());
        if let Some(field) = missing {
            keys.push(field);
            in_array = false;
            expected = match describe(&keys, in_array) {
                Some(d) => format!("`{field}` = {d}"),
                None => format!("a `{field}` key"),
            };
        } else if self.tree.is_some() {
            // Our own wording of what belongs here beats serde's type
            // names ("u32", "a sequence"), except for lists of allowed
            // names, which are already exact.
            if let Some(described) = describe(&keys, in_array) {
                if !expected.starts_with("one of") {
                    expected = described.to_string();
                }
            }
        } else if message.starts_with("duplicate key") || message.contains("duplicate key") {
            expected = "each key and each [table] once".to_string();
        }
        if expected.is_empty() {
            expected = "valid TOML (see conf/examples/)".to_string();
        }
        let message = message
            .replace("missing field", "missing key")
            .replace("unknown variant", "unknown value")
            .replace("unknown field", "unknown key")
            .replace("invalid type: map", "invalid type: table")
            .replace("invalid type: sequence", "invalid type: array");
        let message = if path.is_empty() {
            message
        } else {
            format!("{}: {message}", PathDisplay(&path))
        };
        self.at(offset, message, expected)
    }

    /// Every key the schema does not know, anywhere in the file.
    pub fn unknown_keys(&self) -> Vec<Diagnostic> {
        let mut out = Vec::new();
        if let Some(tree) = self.tree {
            self.walk(tree, &mut Vec::new(), &mut out);
        }
        out
    }

    fn walk<'n>(&self, node: &'n Node, keys: &mut Vec<&'n str>, out: &mut Vec<Diagnostic>) {
        let Some((_, table_name, allowed)) = TABLES.iter().find(|(p, _, _)| *p == keys.as_slice())
        else {
            return;
        };
        let entries = match &node.kind {
            Kind::Table(entries) => entries,
            Kind::Array(items) => {
                // Arrays of tables: check each table under the same name.
                for item in items {
                    if matches!(item.kind, Kind::Table(_)) {
                        self.walk(item, keys, out);
                    }
                }
                return;
            }
            Kind::Leaf => return,
        };
        for (key, child) in entries {
            if allowed.contains(&key.as_str()) {
                keys.push(key);
                self.walk(child, keys, out);
                keys.pop();
                continue;
            }
            let offset = child
                .any_span()
                .map_or(0, |span| self.key_offset(key, span.start));
            let hint = closest(key, allowed)
                .map(|k| format!(" (did you mean `{k}`?)"))
                .unwrap_or_default();
            let list = allowed
                .iter()
                .map(|k| format!("`{k}`"))
                .collect::<Vec<_>>()
                .join(", ");
            out.push(self.at(
                offset,
                format!("unknown key `{key}` in {table_name}{hint}"),
                format!("one of {list}"),
            ));
        }
    }

    /// Where `key` is written on the line of its value (whose span we
    /// know); toml gives no span for keys of implicit tables.
    fn key_offset(&self, key: &str, value_start: usize) -> usize {
        let text = self.text;
        let value_start = value_start.min(text.len());
        let line_start = text[..value_start].rfind('\n').map_or(0, |i| i + 1);
        let line_end = text[value_start..]
            .find('\n')
            .map_or(text.len(), |i| value_start + i);
        match text[line_start..line_end].find(key) {
            Some(i) => line_start + i,
            None => value_start,
        }
    }
}

/// Splits "what; expected X" or serde's "what, expected X".
fn split_expected(raw: &str) -> (String, String) {
    // toml's syntax errors put the expectation on its own line.
    let lines: Vec<&str> = raw
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    if lines.len() > 1 {
        let what: Vec<&str> = lines
            .iter()
            .copied()
            .filter(|l| !l.starts_with("expected "))
            .collect();
        let exp = lines.iter().find_map(|l| l.strip_prefix("expected "));
        return (what.join(": "), exp.unwrap_or_default().to_string());
    }
    let one_line = raw.replace('\n', " ");
    if let Some((what, exp)) = one_line.split_once("; expected ") {
        return (what.trim().to_string(), exp.trim().to_string());
    }
    if let Some(i) = one_line.rfind(", expected ") {
        return (
            one_line[..i].trim().to_string(),
            one_line[i + ", expected ".len()..].trim().to_string(),
        );
    }
    (one_line.trim().to_string(), String::new())
}

/// The allowed key nearest to a misspelt one, if it is near enough.
fn closest<'a>(key: &str, allowed: &[&'a str]) -> Option<&'a str> {
    allowed
        .iter()
        .map(|k| (edit_distance(key, k), *k))
        .filter(|(d, k)| *d <= (k.len() / 3).max(1))
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let substitute = prev[j] + usize::from(ca != *cb);
            cur[j + 1] = substitute.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// A semantic error: where, what, and what was expected.
#[derive(Debug)]
pub(crate) struct Finding {
    pub path: Vec<Seg<'static>>,
    pub message: String,
    pub expected: String,
}

struct Findings(Vec<Finding>);

impl Findings {
    fn push(&mut self, path: Vec<Seg<'static>>, message: String, expected: impl Into<String>) {
        self.0.push(Finding {
            path,
            message,
            expected: expected.into(),
        });
    }
}

use Seg::{Index, Key};

/// Every semantic error in a deserialized file.
pub(crate) fn check(cfg: &DeviceConfig) -> Vec<Finding> {
    let mut f = Findings(Vec::new());
    check_device_name(&cfg.device.name, &mut f);
    check_interfaces(cfg, &mut f);
    check_mptcp(cfg, &mut f);
    check_backends(cfg, &mut f);
    f.0
}

fn check_device_name(name: &str, f: &mut Findings) {
    let path = vec![Key("device"), Key("name")];
    let expected = "a name of 1-32 letters, digits, '-' or '_'";
    if name.is_empty() {
        f.push(path, "the device name is empty".into(), expected);
    } else if name.chars().count() > MAX_DEVICE_NAME {
        f.push(
            path,
            format!(
                "device name `{name}` is {} characters long",
                name.chars().count()
            ),
            expected,
        );
    } else if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
    {
        f.push(
            path,
            format!("device name `{name}` contains {c:?}"),
            expected,
        );
    }
}

fn check_interfaces(cfg: &DeviceConfig, f: &mut Findings) {
    let mut names: HashMap<&str, usize> = HashMap::new();
    let mut addresses: HashMap<IpAddr, (usize, usize)> = HashMap::new();
    for (i, iface) in cfg.interfaces.iter().enumerate() {
        let at = |k: &'static str| vec![Key("interfaces"), Index(i), Key(k)];
        let name = iface.name.as_str();
        let name_expected = "an interface name of 1-15 bytes without '/', ':' or spaces";
        if name.is_empty() {
            f.push(
                at("name"),
                "the interface name is empty".into(),
                name_expected,
            );
        } else if name.len() > MAX_IFNAME {
            f.push(
                at("name"),
                format!(
                    "interface name `{name}` is {} bytes long (Linux allows 15)",
                    name.len()
                ),
                name_expected,
            );
        } else if let Some(c) = name
            .chars()
            .find(|c| *c == '/' || *c == ':' || c.is_whitespace())
        {
            f.push(
                at("name"),
                format!("interface name `{name}` contains {c:?}"),
                name_expected,
            );
        } else if name == "." || name == ".." {
            f.push(
                at("name"),
                format!("`{name}` cannot name an interface"),
                name_expected,
            );
        } else if let Some(first) = names.get(name) {
            f.push(
                at("name"),
                format!("interface `{name}` is already described by interfaces[{first}]"),
                "each interface in one [[interfaces]] table only",
            );
        } else {
            names.insert(name, i);
        }

        for (j, cidr) in iface.addresses.iter().enumerate() {
            if let Some((fi, fj)) = addresses.get(&cidr.addr) {
                f.push(
                    vec![Key("interfaces"), Index(i), Key("addresses"), Index(j)],
                    format!(
                        "address {} is already given as interfaces[{fi}].addresses[{fj}]",
                        cidr.addr
                    ),
                    "each address once, on one interface",
                );
            } else {
                addresses.insert(cidr.addr, (i, j));
            }
        }

        let roles = &iface.endpoint;
        for (j, role) in roles.iter().enumerate() {
            if roles[..j].contains(role) {
                f.push(
                    vec![Key("interfaces"), Index(i), Key("endpoint"), Index(j)],
                    format!("endpoint role `{}` is listed twice", role.as_str()),
                    "each role at most once",
                );
            }
        }
        if roles.contains(&EndpointRole::Signal) && roles.contains(&EndpointRole::Fullmesh) {
            f.push(
                at("endpoint"),
                "roles `signal` and `fullmesh` cannot be combined (the kernel refuses the pair)"
                    .into(),
                "either `signal` or `fullmesh`, not both",
            );
        }
        if !roles.is_empty() && iface.addresses.is_empty() {
            f.push(
                at("endpoint"),
                format!("interface `{name}` has endpoint roles but no addresses to apply them to"),
                "addresses = [\"198.18.1.1/24\", ...] on this interface, or no endpoint roles",
            );
        }

        if let Some(cost) = iface.cost.filter(|c| *c > crate::schema::MAX_COST) {
            f.push(
                at("cost"),
                format!(
                    "cost {cost} is above the maximum of {}",
                    crate::schema::MAX_COST
                ),
                COST_EXPECTED,
            );
        }

        if let Some(gw) = iface.gateway {
            let same_family = iface
                .addresses
                .iter()
                .any(|c| c.addr.is_ipv4() == gw.is_ipv4());
            if !same_family {
                let family = if gw.is_ipv4() { "IPv4" } else { "IPv6" };
                f.push(
                    at("gateway"),
                    format!("gateway {gw} cannot be reached: interface `{name}` has no {family} address"),
                    format!("an {family} address in this interface's addresses"),
                );
            }
        }
    }
}

fn check_mptcp(cfg: &DeviceConfig, f: &mut Findings) {
    if let Some(limits) = cfg.mptcp.limits {
        for (key, value) in [
            ("subflows", limits.subflows),
            ("add_addr_accepted", limits.add_addr_accepted),
        ] {
            if value > MAX_LIMIT {
                f.push(
                    vec![Key("mptcp"), Key("limits"), Key(key)],
                    format!("{key} = {value} is above the kernel's maximum of {MAX_LIMIT}"),
                    "an integer from 0 to 8",
                );
            }
        }
    }
    check_userspace_pm(cfg, f);
    if let Some(name) = &cfg.mptcp.scheduler {
        let path = vec![Key("mptcp"), Key("scheduler")];
        let expected = "a scheduler name of lowercase letters, digits and '_', like \"default\"";
        if name.is_empty() {
            f.push(path, "the scheduler name is empty".into(), expected);
        } else if name.len() > MAX_SCHEDULER {
            f.push(
                path,
                format!("scheduler name `{name}` is longer than {MAX_SCHEDULER} bytes"),
                expected,
            );
        } else if let Some(c) = name
            .chars()
            .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_'))
        {
            f.push(
                path,
                format!("scheduler name `{name}` contains {c:?}"),
                expected,
            );
        }
    }
}

/// `[mptcp.userspace]`: parameters in range and meant for the policy,
/// and the table only where the userspace path manager is chosen.
fn check_userspace_pm(cfg: &DeviceConfig, f: &mut Findings) {
    use crate::schema::{PathManager, PmPolicy, NDIFFPORTS_MAX};
    let Some(us) = &cfg.mptcp.userspace else {
        return;
    };
    let at = |k: &'static str| vec![Key("mptcp"), Key("userspace"), Key(k)];
    if cfg.mptcp.path_manager != Some(PathManager::Userspace) {
        f.push(
            at("policy"),
            format!(
                "policy `{}` is for dropshim's userspace path manager, but [mptcp] path_manager is not \"userspace\"",
                us.policy.as_str()
            ),
            "path_manager = \"userspace\" in [mptcp], or no [mptcp.userspace] table",
        );
    }
    let not_for = |key: &'static str, wants: PmPolicy, f: &mut Findings| {
        if us.policy != wants {
            f.push(
                at(key),
                format!(
                    "`{key}` is a parameter of the {} policy, not of {}",
                    wants.as_str(),
                    us.policy.as_str()
                ),
                format!("no `{key}` with policy = \"{}\"", us.policy.as_str()),
            );
        }
    };
    if let Some(n) = us.subflows {
        not_for("subflows", PmPolicy::Ndiffports, f);
        if !(1..=NDIFFPORTS_MAX).contains(&n) {
            f.push(
                at("subflows"),
                format!("subflows = {n} is outside 1-{NDIFFPORTS_MAX}"),
                SUBFLOWS_EXPECTED,
            );
        }
    }
    if let Some(k) = us.saturation_kib {
        not_for("saturation_kib", PmPolicy::Costaware, f);
        if !(1..=1_048_576).contains(&k) {
            f.push(
                at("saturation_kib"),
                format!("saturation_kib = {k} is outside 1-1048576"),
                SATURATION_KIB_EXPECTED,
            );
        }
    }
    if let Some(ms) = us.saturation_ms {
        not_for("saturation_ms", PmPolicy::Costaware, f);
        if !(100..=60_000).contains(&ms) {
            f.push(
                at("saturation_ms"),
                format!("saturation_ms = {ms} is outside 100-60000"),
                SATURATION_MS_EXPECTED,
            );
        }
    }
}

fn check_backends(cfg: &DeviceConfig, f: &mut Findings) {
    if let Some(uml) = &cfg.uml {
        check_memory("uml", uml.memory_mib, UML_MEMORY_MIB, f);
        if uml.kernel.as_deref() == Some("") {
            f.push(
                vec![Key("uml"), Key("kernel")],
                "the kernel path is empty".into(),
                "the path of a UML kernel built with MPTCP, or no `kernel` key to use dropshim's",
            );
        }
    }
    if let Some(lkl) = &cfg.lkl {
        check_memory("lkl", lkl.memory_mib, LKL_MEMORY_MIB, f);
    }
}

fn check_memory(section: &'static str, value: u32, (min, max): (u32, u32), f: &mut Findings) {
    if !(min..=max).contains(&value) {
        f.push(
            vec![Key(section), Key("memory_mib")],
            format!("memory_mib = {value} is outside {min}-{max}"),
            format!("an integer from {min} to {max} (MiB)"),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_forms() {
        assert_eq!(
            split_expected("invalid type: string \"x\", expected u32"),
            ("invalid type: string \"x\"".into(), "u32".into())
        );
        assert_eq!(
            split_expected("bad thing; expected good thing"),
            ("bad thing".into(), "good thing".into())
        );
        assert_eq!(
            split_expected("invalid key\nexpected `=`"),
            ("invalid key".into(), "`=`".into())
        );
    }

    #[test]
    fn suggestions() {
        assert_eq!(closest("backnd", &["name", "backend"]), Some("backend"));
        assert_eq!(closest("zzzzzz", &["name", "backend"]), None);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }
}
