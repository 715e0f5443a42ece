//! An lkl device: a device file each program on the node boots its
//! library kernel from. Nothing runs until a program starts; the node's
//! interfaces lose their host addresses, which the library kernel takes.

use crate::file::Written;
use crate::DeviceFile;
use anyhow::Result;
use dropshim_testbed::Testbed;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A node's interfaces handed to the library kernel of its programs.
pub struct LklDevice {
    pub(crate) file: Written,
    /// `liblkl.so`, the library kernel.
    pub library: PathBuf,
}

impl LklDevice {
    /// Hands `node`'s interfaces of `file` to device `name`, booted from
    /// `library` by each program.
    pub fn up(
        tb: &Testbed,
        node: &str,
        file: &DeviceFile,
        name: &str,
        library: &Path,
    ) -> Result<LklDevice> {
        Ok(LklDevice {
            file: file.write(tb, node, name, "lkl")?,
            library: library.to_path_buf(),
        })
    }

    /// The device file the programs' library kernels boot from.
    pub fn config(&self) -> &Path {
        &self.file.path
    }

    /// Puts `cmd` on this device: the shim preloaded, told to boot
    /// `library` with this device file, nothing else inherited.
    pub fn program_env(&self, cmd: &mut Command, shim: &Path) {
        crate::clear_stack_env(cmd);
        cmd.env("LD_PRELOAD", shim)
            .env("DROPSHIM_CONFIG", self.config())
            .env("DROPSHIM_BACKEND", "lkl")
            .env("DROPSHIM_LKL_LIB", &self.library);
    }
}
