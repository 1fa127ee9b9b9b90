//! `blobvirt-hook`: see the library docs (`blobvirt_hook`).

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let cfg = blobvirt_hook::config::path();
    match blobvirt_hook::ops::run(&args, std::io::stdin().lock(), &cfg) {
        Ok(out) => {
            for w in out.warnings {
                eprintln!("{w}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("blobvirt: {e}");
            ExitCode::FAILURE
        }
    }
}
