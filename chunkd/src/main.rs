//! The `chunkd` binary: parses the command line and runs the library.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    blobvirt_core::fsutil::tune_allocator();
    chunkd::init_logging();
    let opts = match chunkd::Opts::from_args() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("chunkd: {e:#}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match chunkd::run(opts).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("chunkd: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
