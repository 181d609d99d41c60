//! Generates the ONNX protobuf types from the vendored .proto files with protox (pure Rust),
//! so building kiln needs no protoc binary.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(["onnx/onnx-ml.proto", "onnx/onnx-data.proto"], ["proto"])?;
    prost_build::Config::new().compile_fds(fds)?;
    Ok(())
}
