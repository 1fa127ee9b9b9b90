//! `mirrord --pool URL --mount DIR --cache DIR [--control SOCKET] [--threads N] [--trace-reads FILE]`
use clap::Parser;

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let opts = mirrord::daemon::Options::parse();
    if let Err(e) = mirrord::daemon::run(opts) {
        eprintln!("mirrord: {e:#}");
        std::process::exit(1);
    }
}
