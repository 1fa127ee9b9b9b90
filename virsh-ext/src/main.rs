//! The `blobvirt` binary; everything lives in the `blobvirt_cli` library.

fn main() -> std::process::ExitCode {
    blobvirt_core::fsutil::tune_allocator();
    blobvirt_cli::main()
}
