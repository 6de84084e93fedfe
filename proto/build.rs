//! Generates the tonic/prost code from `faultlab.proto` with protox, a pure-Rust
//! protobuf compiler, so building needs no system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=faultlab.proto");
    let descriptors = protox::compile(["faultlab.proto"], ["."])?;
    tonic_prost_build::configure().compile_fds(descriptors)?;
    Ok(())
}
