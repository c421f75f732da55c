//! Parse and check a spec from a host program, then walk the checked model.
//!
//! Run with `cargo run --example check_spec -- specs/lenet_mnist.qspec`.

use std::process::ExitCode;

fn main() -> ExitCode {
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "specs/lenet_mnist.qspec".into());
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) => {
            eprintln!("cannot read {path}: {e}");
            return ExitCode::from(2);
        }
    };
    let (result, source) = qatc::front_end(&path, &text);
    match result {
        Ok(checked) => {
            for layer in &checked.model.layers {
                let qconfig = layer.qconfig.as_ref().map_or("float", |q| q.name.as_str());
                println!(
                    "{:<8} {:<24} {:?} {qconfig}",
                    layer.name,
                    layer.kind.describe(),
                    layer.out_shape
                );
            }
            ExitCode::SUCCESS
        }
        Err(diags) => {
            eprint!("{}", qatc::diag::render(&diags, &source.name, &source.text));
            ExitCode::from(2)
        }
    }
}
