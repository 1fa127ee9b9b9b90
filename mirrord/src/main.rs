//! `mirrord [--config FILE] [--pool URL] [--mount DIR] [--cache DIR] [--control SOCKET] [--threads N] [--trace-reads FILE]`
fn main() {
    blobvirt_core::fsutil::tune_allocator();
    blobvirt_core::fsutil::init_logging("info");
    let opts = match mirrord::daemon::Options::from_args() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("mirrord: {e:#}");
            std::process::exit(1);
        }
    };
    if let Err(e) = mirrord::daemon::run(opts) {
        eprintln!("mirrord: {e:#}");
        std::process::exit(1);
    }
}
