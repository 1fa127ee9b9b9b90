//! The `blobvirt` binary; everything lives in the `blobvirt_cli` library.

fn main() -> std::process::ExitCode {
    blobvirt_cli::main()
}
