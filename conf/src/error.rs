//! Errors a device file can have, each tied to a place in the file.

use std::fmt;
use std::path::PathBuf;

/// One thing wrong with a device file, at a place in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// The file as the user named it (or `<embedded default>`, `<text>`).
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column, in characters.
    pub column: usize,
    /// What is wrong.
    pub message: String,
    /// What would have been right.
    pub expected: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file, self.line, self.column, self.message
        )?;
        if !self.expected.is_empty() {
            write!(f, "; expected {}", self.expected)?;
        }
        Ok(())
    }
}

/// Why a device configuration could not be had.
#[derive(Debug, thiserror::Error)]
pub enum ConfError {
    /// The file could not be read at all.
    #[error(
        "{}: cannot read device file: {source}; give the path of an existing device file \
         (examples in conf/examples/) and validate it with `dropshim check --config FILE`",
        path.display()
    )]
    Read {
        /// The path as given.
        path: PathBuf,
        /// Why reading it failed.
        source: std::io::Error,
    },
    /// The file was read but is not a valid device file. Holds every
    /// error found, in file order.
    #[error("{}", DiagnosticList(diagnostics))]
    Invalid {
        /// The file as the user named it.
        file: String,
        /// Every error found, in file order; never empty.
        diagnostics: Vec<Diagnostic>,
    },
    /// A backend override (`DROPSHIM_BACKEND`, `--backend`) names no backend.
    #[error("unknown backend `{name}` given by {source_name}; expected one of native, uml, lkl")]
    UnknownBackend {
        /// The backend name as given.
        name: String,
        /// Where the name came from (`DROPSHIM_BACKEND`, `--backend`).
        source_name: String,
    },
}

impl ConfError {
    /// Every located error, for callers that print them one per line.
    /// Empty for errors that have no place in a file.
    pub fn diagnostics(&self) -> &[Diagnostic] {
        match self {
            ConfError::Invalid { diagnostics, .. } => diagnostics,
            _ => &[],
        }
    }
}

struct DiagnosticList<'a>(&'a [Diagnostic]);

impl fmt::Display for DiagnosticList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}
