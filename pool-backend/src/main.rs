//! The `poold` binary: parses options, sets up logging, runs [`pool_backend::run`].
fn main() {
    blobvirt_core::fsutil::tune_allocator();
    blobvirt_core::fsutil::init_logging(blobvirt_core::fsutil::DAEMON_LOG);
    let opts = match pool_backend::Opts::from_args() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("poold: {e:#}");
            std::process::exit(1);
        }
    };
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
