//! The command line's arguments: one subcommand per stage.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use qatc::pipeline::Emit;

/// qatc: a compiler for quantization-aware training.
#[derive(Parser)]
#[command(name = "qatc", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Treat the spec's warnings as errors (exit status 2).
    #[arg(long, global = true)]
    pub deny_warnings: bool,
}

#[derive(Subcommand)]
pub enum Command {
    /// Parse and check a spec, infer shapes, and print the model table.
    Check {
        /// A .qspec file, or its YAML form (.yaml / .yml).
        spec: PathBuf,
        /// Print the model table as one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Print a spec in canonical .qspec form, or as YAML with --yaml.
    Fmt {
        spec: PathBuf,
        /// Print the YAML form instead.
        #[arg(long)]
        yaml: bool,
        /// Change nothing; exit with status 1 (naming the file) if it is not in canonical form.
        #[arg(long, conflicts_with_all = ["yaml", "write"])]
        check: bool,
        /// Rewrite the file in canonical form instead of printing it.
        #[arg(long, conflicts_with = "yaml")]
        write: bool,
    },
    /// Evaluate a converted model (.qmodel) on the reference interpreter: accuracy and the
    /// confusion matrix on its spec's test data.
    Eval {
        model: PathBuf,
        /// Evaluate on this data instead: a folder of the kind the model's spec reads (MNIST or
        /// CIFAR-10 files), or a spec whose `train` block names the data.
        #[arg(long)]
        data: Option<PathBuf>,
        /// Print one JSON object (model, backend, test_images, accuracy, confusion).
        #[arg(long)]
        json: bool,
    },
    /// Post-training quantization: calibrate a float checkpoint's observers on training data
    /// (no training) and write the converted model.
    Calibrate {
        /// The spec, with the `quantize` block to apply.
        spec: PathBuf,
        /// A checkpoint trained from this model (e.g. by `qatc train` on the spec without its
        /// `quantize` block); default: the state dict the spec's `init:` names.
        #[arg(long)]
        from: Option<PathBuf>,
        /// Calibration batches of training data.
        #[arg(long, default_value_t = 32, allow_negative_numbers = true, value_parser = count)]
        batches: usize,
        /// Where to write model.qmodel (default: runs/<model>-ptq).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Per-layer error (SQNR) between the fake-quant graph and the int8 graph on test images.
    Compare {
        model: PathBuf,
        /// The fake-quant checkpoint (default: checkpoint.safetensors beside the model).
        #[arg(long)]
        checkpoint: Option<PathBuf>,
        /// Test images to compare on.
        #[arg(long, default_value_t = 64, allow_negative_numbers = true, value_parser = count)]
        images: usize,
    },
    /// Measure training throughput: images/s per epoch (median) for each spec.
    BenchTrain {
        /// Specs to measure (default: specs/mnist_mlp.qspec and specs/lenet_mnist.qspec).
        specs: Vec<PathBuf>,
        /// Epochs per spec; the median epoch is reported.
        #[arg(long, default_value_t = 3, allow_negative_numbers = true, value_parser = count)]
        epochs: usize,
        /// Worker threads (default: all cores).
        #[arg(long, allow_negative_numbers = true, value_parser = count)]
        threads: Option<usize>,
        /// Print one JSON object per spec instead of a table.
        #[arg(long)]
        json: bool,
        /// Also show where the time goes: each layer's forward and backward time and GFLOP/s,
        /// fake quant, batching, the optimizer (profiling adds a little time of its own).
        #[arg(long)]
        profile: bool,
    },
    /// Compile a converted model (.qmodel) to native code and print the int8 IR, the Cranelift IR
    /// (CLIF) or the machine code; or write a relocatable object and its C header.
    Compile {
        model: PathBuf,
        /// What to make.
        #[arg(long, value_enum, default_value_t = Emit::Ir)]
        emit: Emit,
        /// Generate code for this architecture (x86_64, aarch64) instead of this machine.
        #[arg(long)]
        target: Option<String>,
        /// CPU features of the target, comma-separated: x86_64 avx, avx2, avx512vnni, avxvnni;
        /// aarch64 dotprod, i8mm.
        #[arg(long, value_delimiter = ',')]
        features: Vec<String>,
        /// Where to write the output (default: <model>.o / <model>.h for objects and headers,
        /// stdout for ir, clif and asm).
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// Also print the compile time and the scratch memory per call (to stderr).
        #[arg(short, long)]
        verbose: bool,
    },
    /// Measure inference: batch-1 latency (median µs) and large-batch throughput (images/s) of the
    /// compiled model, as GMAC/s and as a share of this CPU's measured peak.
    Bench {
        model: PathBuf,
        /// Batch sizes: 1 measures latency on one thread, larger ones throughput on all threads.
        #[arg(long, value_delimiter = ',', default_values_t = [1, 256])]
        batch: Vec<usize>,
        /// Worker threads (default: all cores).
        #[arg(long, allow_negative_numbers = true, value_parser = count)]
        threads: Option<usize>,
        /// Print one JSON object (keys jit_b1_us, jit_b1_gmacs, jit_b256_img_s,
        /// jit_b256_gmacs_per_core, peak_gmacs, compile_ms; ref_* with --reference; layers with
        /// --layers) instead of a table.
        #[arg(long)]
        json: bool,
        /// Also time the reference interpreter (slow).
        #[arg(long)]
        reference: bool,
        /// Also time every layer at batch 1 (µs and GMAC/s).
        #[arg(long)]
        layers: bool,
        /// Force a GEMM form instead of this CPU's best (all are exact): vnni, usdot, sdot,
        /// i16, pairs.
        #[arg(long)]
        dot: Option<String>,
        /// Keep every GEMM in 128-bit code, even where the 256-bit kernels run (same results).
        #[arg(long)]
        narrow: bool,
    },
    /// Run a converted model (.qmodel) on the samples of a file: a .npy of float32 [N, ...input
    /// shape] (already normalized) or an IDX image file (normalized as the model's spec says).
    /// Prints each sample's best output, or writes every output with -o.
    Run {
        model: PathBuf,
        input: PathBuf,
        /// Write the outputs as a .npy file of float32 [N, outputs] instead of printing.
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// Use the reference interpreter instead of the JIT.
        #[arg(long)]
        interp: bool,
        /// Print one JSON object (model, engine, samples, output_size, predictions).
        #[arg(long)]
        json: bool,
        /// Worker threads (default: all cores).
        #[arg(long, allow_negative_numbers = true, value_parser = count)]
        threads: Option<usize>,
    },
    /// Write a converted model (.qmodel) as an ONNX model (opset 17, QDQ form) that
    /// onnxruntime runs as int8.
    Export {
        model: PathBuf,
        /// Where to write it (default: the model's path with .onnx).
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// Also output every quantized tensor's codes (uint8 outputs named `codes:<node>`),
        /// to compare a runtime with qatc tensor by tensor.
        #[arg(long)]
        codes: bool,
    },
    /// Import a float ONNX model (as torch.onnx.export writes it): writes DIR/NAME.qspec and
    /// DIR/NAME.safetensors, its weights named as PyTorch's state_dict.
    Import {
        onnx: PathBuf,
        /// The folder to write to (default: the working directory).
        #[arg(short, long, default_value = ".")]
        output: PathBuf,
    },
    /// Train a spec with fake quantization (QAT) and report accuracy.
    Train {
        spec: PathBuf,
        /// Where to write the run (default: runs/<model>).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Override the spec's number of epochs.
        #[arg(long, allow_negative_numbers = true, value_parser = count)]
        epochs: Option<usize>,
        /// Override the spec's seed.
        #[arg(long)]
        seed: Option<u64>,
        /// Override the optimizer's learning rate.
        #[arg(long, allow_negative_numbers = true)]
        lr: Option<f64>,
        /// Read the data from this folder instead (MNIST or CIFAR-10 files, the kind the spec
        /// names).
        #[arg(long)]
        data: Option<PathBuf>,
        /// Continue the run in this folder from its last completed epoch (after Ctrl-C, or with
        /// more --epochs); the result is the same as a run never stopped.
        #[arg(long, conflicts_with = "out")]
        resume: Option<PathBuf>,
        /// Worker threads (default: all cores).
        #[arg(long, allow_negative_numbers = true, value_parser = count)]
        threads: Option<usize>,
        /// Print one JSON object with the results on stdout (the table and the epochs go to
        /// stderr).
        #[arg(long)]
        json: bool,
        /// No table, progress bars or epoch lines: only the results.
        #[arg(short, long)]
        quiet: bool,
    },
}

/// A count given on the command line: a whole number of at least 1. (`-1` reaches here rather
/// than clap's advice to write `-- -1`.)
fn count(text: &str) -> Result<usize, String> {
    match text.trim().parse::<i128>() {
        Ok(n) if n >= 1 => usize::try_from(n).map_err(|_| format!("{n} is too large")),
        Ok(n) => Err(format!("it must be at least 1, not {n}")),
        Err(_) => Err(format!("expected a whole number, found `{text}`")),
    }
}
