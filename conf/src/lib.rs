//! dropshim device files: the TOML schema, its parser and validator, and
//! the embedded default used when no file is given.
//!
//! Owns: the meaning of every key a user can write, the error messages
//! for bad files (file, line, what was expected), and the upgrade policy
//! evaluation ([`Policy::decide`]) that the shim runs on every socket call.
//!
//! Must not touch: sockets, processes or the network. This crate is pure
//! data so that the shim, the CLI and the tests agree on one reading of a
//! file. It is linked into every shimmed process, so it stays small and
//! never panics on input.

#![warn(missing_docs)]

mod error;
mod schema;
mod spans;
mod validate;

pub use error::{ConfError, Diagnostic};
pub use schema::*;
pub use validate::{LKL_MEMORY_MIB, MAX_IFNAME, MAX_LIMIT, UML_MEMORY_MIB};

use std::path::Path;

/// Environment variable naming the device file.
pub const ENV_CONFIG: &str = "DROPSHIM_CONFIG";
/// Environment variable overriding the file's backend (native, uml, lkl).
pub const ENV_BACKEND: &str = "DROPSHIM_BACKEND";
/// Environment variable setting verbosity (error, warn, info, debug).
pub const ENV_LOG: &str = "DROPSHIM_LOG";

/// Origin name of the configuration used when no file is given.
pub const EMBEDDED_ORIGIN: &str = "<embedded default>";

/// Parses and validates a device file's text. `origin` names it in
/// errors (usually the path). On failure the error holds every problem
/// found: all unknown keys, the first type or syntax error (toml stops
/// there), or, once the file deserializes, every semantic error.
pub fn parse(text: &str, origin: &str) -> Result<DeviceConfig, ConfError> {
    let typed = toml::from_str::<DeviceConfig>(text);
    // A second, located reading of the same text, so that every error
    // (including semantic ones found on the typed config) gets a line.
    // Device files are small and read once per process, never per call.
    let tree = spans::read(text).ok();
    let locator = validate::Locator {
        file: origin,
        text,
        tree: tree.as_ref(),
    };
    let mut diagnostics = locator.unknown_keys();
    let config = match typed {
        Ok(config) => Some(config),
        Err(err) => {
            // toml stops at the first unknown key, which the walk above
            // has already reported along with every other one.
            let duplicate = err.message().starts_with("unknown field") && !diagnostics.is_empty();
            if !duplicate {
                diagnostics.push(locator.toml_error(&err));
            }
            None
        }
    };
    if let Some(config) = &config {
        diagnostics.extend(validate::check(config).iter().map(|f| locator.finding(f)));
    }
    match config {
        Some(config) if diagnostics.is_empty() => Ok(config),
        _ => {
            diagnostics.sort_by_key(|d| (d.line, d.column));
            Err(ConfError::Invalid {
                file: origin.to_string(),
                diagnostics,
            })
        }
    }
}

/// The MPTCP packet schedulers built into the kernels dropshim builds for
/// the uml and lkl backends (`kernel/mptcp-schedulers/` and the kernel's
/// own `default`), in the order the kernel lists them.
pub const BUILT_SCHEDULERS: &[&str] = &["default", "roundrobin", "blest", "costaware", "redundant"];

/// Checks the file's `[mptcp] scheduler` against what its backend offers:
/// `native` is what the host kernel lists in
/// `/proc/sys/net/mptcp/available_schedulers` (empty when it has no MPTCP),
/// uml and lkl offer [`BUILT_SCHEDULERS`]. `text` and `origin` are the
/// file's text and name, for the line of the error; the error names the
/// backends that do offer the scheduler.
pub fn check_scheduler(
    text: &str,
    origin: &str,
    cfg: &DeviceConfig,
    native: &[String],
) -> Option<Diagnostic> {
    let name = cfg.mptcp.scheduler.as_deref()?;
    let offered_by = |b: BackendKind| -> bool {
        match b {
            BackendKind::Native => native.iter().any(|s| s == name),
            BackendKind::Uml | BackendKind::Lkl => BUILT_SCHEDULERS.contains(&name),
        }
    };
    let backend = cfg.device.backend;
    if offered_by(backend) {
        return None;
    }
    let all = [BackendKind::Native, BackendKind::Uml, BackendKind::Lkl];
    let others: Vec<&str> = all
        .iter()
        .filter(|b| offered_by(**b))
        .map(|b| b.as_str())
        .collect();
    let elsewhere = if others.is_empty() {
        "no backend offers it".to_string()
    } else {
        format!("offered by the {} backend(s)", others.join(", "))
    };
    let here: Vec<String> = match backend {
        BackendKind::Native => native.to_vec(),
        BackendKind::Uml | BackendKind::Lkl => {
            BUILT_SCHEDULERS.iter().map(|s| s.to_string()).collect()
        }
    };
    let tree = spans::read(text).ok();
    let locator = validate::Locator {
        file: origin,
        text,
        tree: tree.as_ref(),
    };
    let what = if backend == BackendKind::Native {
        "the host kernel"
    } else {
        "dropshim's kernel"
    };
    Some(locator.finding(&validate::Finding {
        path: vec![spans::Seg::Key("mptcp"), spans::Seg::Key("scheduler")],
        message: format!(
            "scheduler `{name}` is not offered by the {} backend ({what} has {}); {elsewhere}",
            backend.as_str(),
            if here.is_empty() {
                "none".to_string()
            } else {
                here.join(", ")
            }
        ),
        expected: if here.is_empty() {
            "no scheduler on this backend".to_string()
        } else {
            format!("one of {}", here.join(", "))
        },
    }))
}

/// Reads, parses and validates the device file at `path`.
pub fn load(path: &Path) -> Result<DeviceConfig, ConfError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(&text, &path.display().to_string())
}

/// The configuration a process runs with: the file at `config` (or the
/// embedded default when there is none), with its backend replaced by
/// `backend_override` (the value of `DROPSHIM_BACKEND` or `--backend`)
/// when that is given and not empty.
pub fn resolve(
    config: Option<&Path>,
    backend_override: Option<&str>,
) -> Result<DeviceConfig, ConfError> {
    let mut device = match config {
        Some(path) => load(path)?,
        None => DeviceConfig::embedded_default(),
    };
    if let Some(name) = backend_override.map(str::trim).filter(|n| !n.is_empty()) {
        device.device.backend =
            BackendKind::from_name(name).ok_or_else(|| ConfError::UnknownBackend {
                name: name.to_string(),
                source_name: format!("{ENV_BACKEND} or --backend"),
            })?;
    }
    Ok(device)
}

#[cfg(test)]
mod tests;
