//! Compiles ONNX's protobuf schema (`src/onnx/onnx.proto`, from the `onnx` Python package
//! 1.23.2, Apache-2.0) into Rust types with prost; protox parses it, so no `protoc` is needed.
//!
//! It also tells the tests which external tools this machine lacks (`qatc_missing_c_tools`,
//! `qatc_missing_aarch64`): the tests that need them are then reported as ignored, with the
//! reason, instead of passing without running. Under `CI` nothing is marked missing, so a
//! missing tool fails there.

use std::path::Path;

/// Whether `tool` is an executable file in one of `PATH`'s folders.
fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths).any(|dir| Path::new(&dir).join(tool).is_file())
    })
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=src/onnx/onnx.proto");
    println!("cargo:rerun-if-env-changed=PATH");
    println!("cargo:rerun-if-env-changed=CI");
    println!("cargo::rustc-check-cfg=cfg(qatc_missing_c_tools)");
    println!("cargo::rustc-check-cfg=cfg(qatc_missing_aarch64)");
    if std::env::var_os("CI").is_none() {
        if !["cc", "c++", "make"].iter().all(|t| on_path(t)) {
            println!("cargo:rustc-cfg=qatc_missing_c_tools");
        }
        if !["aarch64-linux-gnu-gcc", "qemu-aarch64"]
            .iter()
            .all(|t| on_path(t))
        {
            println!("cargo:rustc-cfg=qatc_missing_aarch64");
        }
    }
    let descriptors = protox::compile(["onnx.proto"], ["src/onnx"])?;
    prost_build::Config::new()
        // The schema's comments hold code samples that are not Rust.
        .disable_comments(["."])
        .compile_fds(descriptors)?;
    Ok(())
}
