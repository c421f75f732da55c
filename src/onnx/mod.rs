//! ONNX interop: `export` writes a converted int8 graph as an ONNX model in QDQ form, which
//! onnxruntime runs as int8.

pub mod export;
pub mod import;

/// ONNX's protobuf messages, generated at build time from `onnx.proto`.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/onnx.rs"));
}
