//! Compiles `proto/blobvirt.proto` with protox (pure Rust), so no system
//! `protoc` is needed.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/blobvirt.proto");
    let fds = protox::compile(["proto/blobvirt.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .bytes(".")
        .codec_path("crate::codec::Codec")
        .compile_fds(fds)?;
    Ok(())
}
