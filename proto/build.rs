//! Compiles `proto/ingest.proto` with protox (pure Rust), so no `protoc` is
//! needed on build machines.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/ingest.proto";
    println!("cargo:rerun-if-changed={proto}");
    let fds = protox::compile([proto], ["proto"])?;
    tonic_prost_build::configure()
        .type_attribute(".", "#[allow(clippy::all)]")
        .compile_fds(fds)?;
    Ok(())
}
