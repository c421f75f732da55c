//! Compiles ONNX's protobuf schema (`src/onnx/onnx.proto`, from the `onnx` Python package
//! 1.23.2, Apache-2.0) into Rust types with prost; protox parses it, so no `protoc` is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=src/onnx/onnx.proto");
    let descriptors = protox::compile(["onnx.proto"], ["src/onnx"])?;
    prost_build::Config::new()
        // The schema's comments hold code samples that are not Rust.
        .disable_comments(["."])
        .compile_fds(descriptors)?;
    Ok(())
}
