//! What the code generator makes: CLIF snapshots of a small network (changes to codegen show in
//! review) and the dot-product instructions each target folds the GEMM into.

mod common;

use qatc::int8::QGraph;
use qatc::jit::target::{self, Arch};

/// A spec converted with its initial weights and observers calibrated on one batch of random
/// inputs (the snapshots depend on exactly this).
fn graph_of_file(path: &std::path::Path) -> QGraph {
    let text = std::fs::read_to_string(path).unwrap();
    common::calibrated(&path.display().to_string(), &text, 1, 1, 1.0)
}

/// tiny.qspec converted with its initial weights and observers calibrated on random inputs.
fn tiny() -> QGraph {
    graph_of_file(&common::root().join("tests/data/tiny.qspec"))
}

fn listing(graph: &QGraph, arch: Arch, features: &[&str]) -> qatc::jit::Listing {
    let features: Vec<String> = features.iter().map(|f| f.to_string()).collect();
    let isa = target::isa(arch, &features).unwrap();
    target::object(graph, isa, "qatc_tiny_run").unwrap().listing
}

#[test]
fn clif_of_a_small_network() {
    // The x86 VNNI form and the AVX2 one (pmaddubsw pairs, an i16 fallback); each target's
    // choice is deterministic.
    let graph = tiny();
    insta::assert_snapshot!(
        "tiny_vnni_clif",
        listing(&graph, Arch::X86_64, &["avx512vnni"]).clif
    );
    insta::assert_snapshot!(
        "tiny_avx2_clif",
        listing(&graph, Arch::X86_64, &["avx2"]).clif
    );
}

fn count(text: &str, mnemonic: &str) -> usize {
    text.lines()
        .filter(|l| l.split_whitespace().next() == Some(mnemonic))
        .count()
}

#[test]
fn each_target_folds_the_gemm_into_its_dot_instruction() {
    let graph = graph_of_file(&common::root().join("specs/lenet_mnist.qspec"));
    let vnni = listing(&graph, Arch::X86_64, &["avx512vnni"]).asm;
    let avx2 = listing(&graph, Arch::X86_64, &["avx2"]).asm;
    let i8mm = listing(&graph, Arch::Aarch64, &["i8mm"]).asm;
    let dotprod = listing(&graph, Arch::Aarch64, &["dotprod"]).asm;
    let plain = listing(&graph, Arch::Aarch64, &[]).asm;
    assert!(count(&vnni, "vpdpbusd") >= 10, "no vpdpbusd:\n{vnni}");
    assert!(count(&avx2, "vpdpbusd") == 0 && count(&avx2, "vpmaddubsw") >= 10);
    assert!(count(&avx2, "vpmaddwd") >= 10, "no i16 fallback:\n{avx2}");
    assert!(count(&i8mm, "usdot") >= 10, "no usdot:\n{i8mm}");
    assert!(count(&dotprod, "sdot") >= 10 && count(&dotprod, "usdot") == 0);
    assert!(count(&plain, "sdot") + count(&plain, "usdot") == 0);
    // The VNNI inner loop is loads, lane broadcasts and vpdpbusd: no widening left in it.
    let inner = vnni
        .split("\nblock")
        .filter(|b| count(b, "vpdpbusd") > 0)
        .min_by_key(|b| b.lines().count())
        .expect("a block with vpdpbusd");
    for widening in ["vpmovsxbw", "vpmovzxbw", "vpmullw", "vpmaddwd"] {
        assert_eq!(count(inner, widening), 0, "{widening} in\n{inner}");
    }
}
