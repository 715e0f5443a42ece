//! `dropshim-uml`: the uml backend's helper process.
//!
//! - `dropshim-uml supervise CONFIG KERNEL`: a device's supervisor (started by `dropshim up`).
//! - `dropshim-uml build-kernel`: builds (or finds in the cache) the UML kernel; prints its path.
//! - run by the UML kernel as init (DROPSHIM_UML_GUEST set): the guest agent.

use std::path::Path;
use std::process::ExitCode;

fn main() -> ExitCode {
    if std::env::var_os(dropshim_backend_uml::ENV_GUEST).is_some() && std::process::id() == 1 {
        dropshim_backend_uml::agent::main();
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["supervise", config, kernel] => {
            dropshim_backend_uml::host::supervise(Path::new(config), Path::new(kernel))
        }
        ["build-kernel"] => dropshim_backend_uml::host::build_kernel().map(|p| println!("{}", p.display())),
        _ => Err("usage: dropshim-uml build-kernel | supervise CONFIG KERNEL (the supervisor is started by `dropshim up`)".to_string()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dropshim-uml: error: {e}");
            ExitCode::FAILURE
        }
    }
}
