//! `dropshim generate`: the man pages and shell completions the package
//! installs, generated from the command's own help so they never drift
//! from it.

use anyhow::{Context, Result};
use clap::CommandFactory;
use clap_complete::Shell;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(clap::Args, Clone)]
pub struct Args {
    /// Folder for the man pages (dropshim.1, dropshim-SUBCOMMAND.1).
    #[arg(long)]
    man: Option<PathBuf>,
    /// Folder for the completions (dropshim.bash, _dropshim, dropshim.fish).
    #[arg(long)]
    completions: Option<PathBuf>,
}

pub fn main<C: CommandFactory>(args: Args) -> Result<ExitCode> {
    if args.man.is_none() && args.completions.is_none() {
        anyhow::bail!("nothing to write: give --man DIR and/or --completions DIR");
    }
    let cmd = C::command();
    if let Some(dir) = &args.man {
        create(dir)?;
        write_man(&cmd, "dropshim", dir)?;
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
            let name = format!("dropshim-{}", sub.get_name());
            let page = sub
                .clone()
                .display_name(name.clone())
                .bin_name(format!("dropshim {}", sub.get_name()));
            write_man(&page, &name, dir)?;
        }
    }
    if let Some(dir) = &args.completions {
        create(dir)?;
        for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
            let mut cmd = C::command();
            clap_complete::generate_to(shell, &mut cmd, "dropshim", dir).with_context(|| {
                format!("writing the {shell} completion into {}", dir.display())
            })?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn create(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))
}

fn write_man(cmd: &clap::Command, name: &str, dir: &Path) -> Result<()> {
    let mut page = Vec::new();
    clap_mangen::Man::new(cmd.clone())
        .title(name.to_uppercase())
        .render(&mut page)
        .with_context(|| format!("rendering the man page of {name}"))?;
    let path = dir.join(format!("{name}.1"));
    std::fs::write(&path, page).with_context(|| format!("writing {}", path.display()))
}
