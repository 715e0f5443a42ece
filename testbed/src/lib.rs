//! dropshim testbeds: the study's topologies built out of network
//! namespaces and veth pairs on one machine, described by TOML specs in
//! `conf/testbeds/`.
//!
//! Owns: creating and removing namespaces, links, shared segments
//! (bridges), addresses, routes and rate shaping; taking links down and
//! up; running commands inside a namespace with a bounded wait.
//!
//! Its only footprint outside those namespaces is one state file per
//! testbed under /run/dropshim/testbeds/ (owner pid, spec, layout), which
//! is how a testbed left by a dead process is recognised and removed.
//!
//! Must not touch: anything outside the namespaces it created. Every name
//! carries a per-run id so runs can go side by side, and removal is tied
//! to `Drop` so a failing test still cleans up.

#![warn(missing_docs)]

mod emu;
mod exec;
pub mod link;
mod spec;
mod sys;
mod testbed;

pub use emu::{port_seed, EmulatorCpu, ENV_SEED};
pub use exec::run_with_timeout;
pub use link::{DirParams, LinkChoice, LinkParams, Method, Profile, PROFILES};
pub use spec::{
    DirSpec, EndpointFlag, EndpointSpec, Family, Hop, InternetSpec, LinkSpec, MptcpSpec, NodeSpec,
    RouteSpec, SegmentSpec, Spec, MESH_DEFAULT_DEVICES,
};
pub use sys::process_group_cpu;
pub use testbed::{Description, EndInfo, LinkInfo, Listing, NodeInfo, Status, Testbed, STATE_DIR};

use serde::{Deserialize, Serialize};

/// The drop-mesh agent, for `python3 -c`: one process per device that
/// serves its own file (seeded, so every peer knows its digest) on a port
/// of every address and pulls every peer's, checking each byte by sha256;
/// one process because an lkl device's kernel lives in it. Arguments: its
/// device number I (1..=N), N, port, bytes, the peers' address prefix
/// ("198.18.1." + J), a time limit in seconds. Prints `pull J ok|BAD BYTES
/// SECONDS` per peer and `served K`; exits 0 when every pull was intact
/// and every peer pulled from it.
pub const MESH_AGENT_PY: &str = include_str!("mesh_agent.py");

/// How links are rate-limited: a token bucket (`tbf`) as root qdisc, or an
/// `htb` root with one class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Shaper {
    /// A token bucket filter (`tbf`) as root qdisc.
    #[default]
    Tbf,
    /// A hierarchical token bucket (`htb`) root with one class.
    Htb,
}

impl Shaper {
    /// The qdisc's name as `tc` writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Shaper::Tbf => "tbf",
            Shaper::Htb => "htb",
        }
    }
}

/// What to build besides the spec itself.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Options {
    /// Shape every link at this rate on both ends' egress; `None` keeps the
    /// spec's own per-link `rate_mbit` (unset in the shipped specs, so
    /// unshaped).
    pub rate_mbit: Option<u32>,
    /// The qdisc that shapes links given a rate.
    pub shaper: Shaper,
    /// Add the spec's `[internet]` part.
    pub internet: bool,
    /// Testbed id (letters, digits, `_`); `None` picks a unique one that
    /// includes this process's pid.
    pub id: Option<String>,
    /// Per link, in the order the links are built (the spec's `[[link]]`s,
    /// then its internet links): a profile that replaces the link's own,
    /// or a rate that makes it a rate-only link. Shorter than the list of
    /// links: the rest keep the spec's values; longer: an error.
    #[serde(default)]
    pub links: Vec<LinkChoice>,
    /// The seed of the link emulator's netem qdiscs (their loss and jitter
    /// pattern), to repeat a run; `None` takes `DROPSHIM_TESTBED_NETEM_SEED`
    /// when set, else a fresh seed from the host's random source.
    #[serde(default)]
    pub netem_seed: Option<u64>,
}

/// Everything that can go wrong, each saying what to do about it.
/// The underlying I/O error is part of each message (not a separate
/// `source`), so printing the error once says everything.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Not running as root.
    #[error(
        "needs root: network namespaces, veth pairs and tc need root; run as root (e.g. with sudo)"
    )]
    NotRoot,
    /// A program the testbed runs is not installed.
    #[error("`{program}` not found: install {package} (apt-get install {package})")]
    MissingTool {
        /// The program that was looked for.
        program: String,
        /// The Debian package that provides it.
        package: String,
    },
    /// The spec named is neither a shipped spec nor a file.
    #[error(
        "unknown testbed spec {0:?}: use two-gateways, local-cache, drop-home, drop-mesh, or a path to a .toml file"
    )]
    UnknownSpec(String),
    /// The spec file could not be read.
    #[error("cannot read testbed spec {path}: {err}")]
    SpecRead {
        /// The spec's path.
        path: String,
        /// Why reading failed.
        err: std::io::Error,
    },
    /// The spec was read but is not a valid testbed spec.
    #[error("testbed spec {origin}: {message}")]
    Spec {
        /// The spec's name or path.
        origin: String,
        /// What is wrong with it.
        message: String,
    },
    /// [`Options::internet`] was asked of a spec without an `[internet]` part.
    #[error("spec {0} has no [internet] part: drop --internet, or add [internet] to the spec")]
    NoInternet(String),
    /// A link rate of 0 Mbit/s was given.
    #[error("rate 0 Mbit/s: leave the rate out for unshaped links")]
    ZeroRate,
    /// More per-link settings ([`Options::links`]) than the testbed has links.
    #[error("{given} link settings given (--links) but spec {spec} builds only {links} link(s); give at most {links}")]
    TooManyLinks {
        /// How many link settings were given.
        given: usize,
        /// The spec's name.
        spec: String,
        /// How many links the spec builds.
        links: usize,
    },
    /// The link emulator could not be set up or run.
    #[error("link emulator: {0}")]
    Emulator(String),
    /// A testbed id that is empty, longer than 24 bytes, or holds characters other than
    /// letters, digits and `_`.
    #[error("bad testbed id {0:?}: use 1 to 24 letters, digits or `_`")]
    BadId(String),
    /// A testbed with this id exists already.
    #[error("testbed {0} already exists: choose another id, or remove it with `dropshim testbed down {0}`")]
    Exists(String),
    /// No testbed has this id.
    #[error("no testbed {0}: `dropshim testbed list` shows the ones that exist")]
    NotFound(String),
    /// The testbed has no node of this name.
    #[error("testbed {id} has no node {node:?}; its nodes are {known}")]
    UnknownNode {
        /// The testbed's id.
        id: String,
        /// The node asked for.
        node: String,
        /// The testbed's nodes, comma-separated.
        known: String,
    },
    /// The testbed has no link of this number.
    #[error("testbed {id} has no link {link}; its links are {known}")]
    UnknownLink {
        /// The testbed's id.
        id: String,
        /// The link number asked for.
        link: u32,
        /// The testbed's link numbers, comma-separated.
        known: String,
    },
    /// The node is not an end of the link.
    #[error("node {node:?} is not on link {link} of testbed {id} (link {link} joins {a} and {b})")]
    NotOnLink {
        /// The testbed's id.
        id: String,
        /// The node asked for.
        node: String,
        /// The link asked for.
        link: u32,
        /// One node the link joins.
        a: String,
        /// The other node the link joins.
        b: String,
    },
    /// A command the testbed ran failed.
    #[error("`{command}` failed ({status}): {stderr}")]
    Failed {
        /// The command line.
        command: String,
        /// How it exited.
        status: String,
        /// What it printed on stderr.
        stderr: String,
    },
    /// A command the testbed ran did not finish in time and was killed.
    #[error("`{command}` did not finish within {timeout} and was killed; it printed: {stderr:?}")]
    Timeout {
        /// The command line.
        command: String,
        /// How long it was given.
        timeout: String,
        /// What it printed on stderr before it was killed.
        stderr: String,
    },
    /// A system call or file operation failed.
    #[error("{what}: {err}")]
    Io {
        /// What was being done.
        what: String,
        /// The error it met.
        err: std::io::Error,
    },
}
