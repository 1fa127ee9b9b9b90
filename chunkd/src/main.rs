//! The `chunkd` binary: parses the command line and runs the library.

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let opts = chunkd::Opts::parse();
    chunkd::init_logging();
    match chunkd::run(opts).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("chunkd: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
