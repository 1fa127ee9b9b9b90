//! `mirrord --pool URL --mount DIR --cache DIR [--control SOCKET] [--threads N] [--trace-reads FILE]`
use clap::Parser;

fn main() {
    blobvirt_core::fsutil::init_logging("info");
    let opts = mirrord::daemon::Options::parse();
    if let Err(e) = mirrord::daemon::run(opts) {
        eprintln!("mirrord: {e:#}");
        std::process::exit(1);
    }
}
