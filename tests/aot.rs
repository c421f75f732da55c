//! Ahead-of-time objects: each spec's model compiled to an object for x86_64 and for aarch64,
//! linked with a C harness (no Rust at run time) and run natively or under qemu-aarch64; every
//! output byte must equal the reference interpreter's on this machine.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use qatc::int8::QGraph;
use qatc::jit::target::{self, Arch};
use qatc::train::{self, rng::Rng};

fn have(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// A scratch directory of this test run.
fn work_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("qatc-aot-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The batch sizes every object runs: partial, whole and more than one tile of 32 samples.
const BATCHES: [usize; 8] = [1, 2, 3, 4, 5, 31, 32, 33];

/// Builds the graph for `arch` with `features`, links it with the harness using `cc`, runs both
/// entries (under `runner` if given) on every batch size in [`BATCHES`] with the input, output and
/// scratch each ending at a guard page (`tests/data/harness.c`), and compares the outputs with
/// the interpreter's, bit for bit.
fn check(graph: &QGraph, arch: Arch, features: &[&str], cc: &str, runner: &[&str], dir: &Path) {
    let features: Vec<String> = features.iter().map(|f| f.to_string()).collect();
    let tag = format!("{}_{arch:?}_{}", graph.name, features.join("_"));
    let name = format!("qatc_{}_run", graph.name);
    let isa = target::isa(arch, &features).unwrap();
    let object = target::object(graph, isa, &name).unwrap();
    let obj = dir.join(format!("{tag}.o"));
    let header = dir.join(format!("{tag}.h"));
    let exe = dir.join(&tag);
    std::fs::write(&obj, &object.bytes).unwrap();
    let norm = qatc::data::Normalization {
        mean: vec![0.5],
        std: vec![0.25],
    };
    let text = target::c_header(graph, &name, object.scratch_bytes, Some(&norm));
    std::fs::write(&header, text).unwrap();
    run(Command::new(cc)
        .args(["-O1", "-Wall", "-Werror", "-include"])
        .arg(&header)
        .arg(common::root().join("tests/data/harness.c"))
        .arg(&obj)
        .arg("-o")
        .arg(&exe));
    let size: usize = graph.nodes[0].shape.iter().product();
    let out_size: usize = graph.nodes[graph.output].shape.iter().product();
    let batch = *BATCHES.iter().max().unwrap();
    let mut rng = Rng::new(9);
    let x: Vec<f32> = (0..batch * size)
        .map(|i| {
            if i % 17 == 0 {
                rng.uniform(-1e3, 1e3)
            } else {
                rng.uniform(-2.0, 2.0)
            }
        })
        .collect();
    let input = dir.join(format!("{tag}.in"));
    let output = dir.join(format!("{tag}.out"));
    let batches: Vec<String> = BATCHES.iter().map(|b| b.to_string()).collect();
    std::fs::write(
        &input,
        x.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>(),
    )
    .unwrap();
    run(runner_cmd(runner, &exe)
        .arg(&input)
        .arg(&output)
        .arg("f32")
        .args(&batches));
    // Samples are independent: a batch's outputs are the first ones of the largest batch.
    let all: Vec<u8> = qatc::interp::run(graph, &x, batch)
        .unwrap()
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let want = |elem: usize, all: &[u8]| -> Vec<u8> {
        BATCHES
            .iter()
            .flat_map(|b| all[..b * out_size * elem].to_vec())
            .collect()
    };
    let got = std::fs::read(&output).unwrap();
    assert!(
        got == want(4, &all),
        "{tag}: the object's outputs differ from the interpreter's"
    );

    // The u8 entry, where the model has one: the interpreter's input and output codes.
    if qatc::jit::lower::u8_entry(graph).is_some() {
        let (codes_in, all) = common::u8_entry_codes(graph, &x);
        std::fs::write(&input, &codes_in).unwrap();
        run(runner_cmd(runner, &exe)
            .arg(&input)
            .arg(&output)
            .arg("u8")
            .args(&batches));
        let got = std::fs::read(&output).unwrap();
        assert!(
            got == want(1, &all),
            "{tag}: the object's u8 entry differs from the interpreter"
        );
    }
}

/// The command that runs `exe`, under `runner` if there is one.
fn runner_cmd(runner: &[&str], exe: &Path) -> Command {
    match runner {
        [] => Command::new(exe),
        [first, rest @ ..] => {
            let mut c = Command::new(first);
            c.args(rest).arg(exe);
            c
        }
    }
}

fn graphs() -> Vec<QGraph> {
    common::spec_files()
        .iter()
        .map(|p| common::calibrated_file(p, 4))
        .collect()
}

/// The VNNI feature sets (as `qatc compile --features` names them) this CPU can run.
fn host_vnni_features() -> Vec<&'static [&'static str]> {
    let mut sets: Vec<&'static [&'static str]> = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        if has!("avx512vnni") && has!("avx512vl") {
            sets.push(&["avx512vnni"]);
        }
        if has!("avxvnni") {
            sets.push(&["avxvnni"]);
        }
    }
    sets
}

#[test]
#[cfg_attr(
    not(target_arch = "x86_64"),
    ignore = "runs x86_64 objects: needs an x86_64 host"
)]
#[cfg_attr(
    qatc_missing_c_tools,
    ignore = "needs cc, c++ and make (Debian: build-essential)"
)]
fn x86_64_objects_match_the_interpreter() {
    assert!(have("cc"), "this test needs a C compiler (cc)");
    let dir = work_dir("x86");
    for graph in graphs() {
        // The baseline (i16 dot products), AVX2 (`pmaddubsw` pairs) and, where this CPU has them,
        // AVX512-VNNI or AVX-VNNI (`vpdpbusd`).
        let mut feature_sets: Vec<&[&str]> = vec![&[], &["avx2"]];
        feature_sets.extend(host_vnni_features());
        for features in feature_sets {
            check(&graph, Arch::X86_64, features, "cc", &[], &dir);
        }
    }
    std::fs::remove_dir_all(dir).ok();
}

#[test]
#[cfg_attr(
    qatc_missing_aarch64,
    ignore = "needs aarch64-linux-gnu-gcc and qemu-aarch64 (Debian: gcc-aarch64-linux-gnu \
              libc6-dev-arm64-cross qemu-user; .ci/run installs them)"
)]
fn aarch64_objects_match_the_interpreter_under_qemu() {
    let (cc, qemu) = ("aarch64-linux-gnu-gcc", "qemu-aarch64");
    assert!(
        have(cc) && have(qemu),
        "this test needs {cc} and {qemu} (Debian: gcc-aarch64-linux-gnu qemu-user)"
    );
    let dir = work_dir("aarch64");
    let runner = [qemu, "-cpu", "max", "-L", "/usr/aarch64-linux-gnu"];
    for graph in graphs() {
        // Plain NEON, FEAT_DotProd (sdot) and FEAT_I8MM (usdot).
        for features in [&[][..], &["dotprod"], &["i8mm"]] {
            check(&graph, Arch::Aarch64, features, cc, &runner, &dir);
        }
    }
    std::fs::remove_dir_all(dir).ok();
}

#[test]
#[cfg_attr(
    not(target_arch = "x86_64"),
    ignore = "builds for the host: needs an x86_64 host"
)]
#[cfg_attr(
    qatc_missing_c_tools,
    ignore = "needs cc, c++ and make (Debian: build-essential)"
)]
fn the_c_host_example_builds_and_classifies() {
    assert!(
        have("cc") && have("make") && have("c++"),
        "this test needs cc, c++ and make"
    );
    // A lenet .qmodel (initial weights, calibrated observers) carrying its spec.
    let spec = common::root().join("specs/lenet_mnist.qspec");
    let dir = work_dir("c_host");
    let model = dir.join("model.qmodel");
    let graph = common::write_qmodel(&spec, 6, &model);
    for file in ["main.c", "Makefile"] {
        std::fs::copy(
            common::root().join("examples/c_host").join(file),
            dir.join(file),
        )
        .unwrap();
    }
    let out = Command::new("make")
        .arg("-C")
        .arg(&dir)
        .arg("run")
        .arg(format!("ROOT={}", common::root().display()))
        .arg(format!("QATC={}", env!("CARGO_BIN_EXE_qatc")))
        .arg(format!("MODEL={}", model.display()))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The same accuracy as the interpreter on the same images.
    let text = std::fs::read_to_string(&spec).unwrap();
    let (result, _) = qatc::front_end("lenet", &text);
    let model = result.unwrap().model;
    let cfg = model.train.clone().unwrap();
    let data = train::load_data(&model, &cfg, &common::root().join("specs")).unwrap();
    let acc = common::int8_accuracy(&graph, &data.test, &cfg);
    let want = format!("int8 accuracy on {} images: {acc:.2} %", data.test.len());
    assert!(stdout.contains(&want), "expected `{want}` in\n{stdout}");
    // The same program compiled as C++ links against the object: the header's declarations
    // are `extern "C"` there.
    let cpp = dir.join("classify_cpp");
    run(Command::new("c++")
        .current_dir(&dir)
        .args(["-x", "c++", "-O2", "-Wall", "-ffp-contract=off", "-o"])
        .arg(&cpp)
        .args(["main.c", "-x", "none", "model.o"]));
    let out = Command::new(&cpp)
        .current_dir(&dir)
        .args(["images.idx", "labels.idx"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&want),
        "C++: expected `{want}` in\n{stdout}"
    );
    std::fs::remove_dir_all(dir).ok();
}

/// Every shipped spec's GEMM loops, compiled for CPUs this machine may not be (Ice Lake VNNI,
/// Zen 3 AVX2, Neoverse N1 sdot and V1 usdot), reach 75% of their form's throughput as LLVM's
/// static model predicts it (`tools/kernel-mca --check 75`): a kernel regression fails here on
/// any host.
#[test]
fn gemm_loops_reach_three_quarters_of_each_forms_predicted_peak() {
    let have_mca = ["llvm-mca-19", "llvm-mca"].iter().any(|t| have(t));
    if !have_mca && std::env::var_os("QATC_SKIP_LLVM_MCA").is_some() {
        eprintln!("skipped: QATC_SKIP_LLVM_MCA is set and llvm-mca is missing");
        return;
    }
    assert!(
        have_mca,
        "this test needs llvm-mca (Debian: llvm-19 or llvm; .ci/run installs it), or set \
         QATC_SKIP_LLVM_MCA=1 to skip it"
    );
    let dir = work_dir("mca");
    for spec in common::spec_files() {
        let model = dir.join(spec.file_stem().unwrap()).with_extension("qmodel");
        common::write_qmodel(&spec, 4, &model);
        run(Command::new("python3")
            .arg(common::root().join("tools/kernel-mca"))
            .arg(&model)
            .args(["--qatc", env!("CARGO_BIN_EXE_qatc"), "--check", "75"]));
    }
    std::fs::remove_dir_all(dir).ok();
}
