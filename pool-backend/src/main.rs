//! The `poold` binary: parses options, sets up logging, runs [`pool_backend::run`].
use clap::Parser;

fn main() {
    let opts = pool_backend::Opts::parse();
    blobvirt_core::fsutil::init_logging("info");
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("poold: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = rt.block_on(pool_backend::run(opts)) {
        eprintln!("poold: {e:#}");
        std::process::exit(1);
    }
}
