//! Compiles `proto/sluice/v1/ingest.proto` with protox (pure Rust), so building
//! sluice needs no system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let file = root.join("sluice/v1/ingest.proto");
    println!("cargo:rerun-if-changed={}", file.display());
    let fds = protox::compile([&file], [&root])?;
    tonic_prost_build::configure()
        .build_transport(false)
        // Payloads stay zero-copy slices of the request buffer.
        .bytes(".sluice.v1.Event.payload")
        .compile_fds(fds)?;
    Ok(())
}
