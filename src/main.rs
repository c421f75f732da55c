//! The `qatc` command line: one subcommand per stage. The only place that prints or exits.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use qatc::diag::{self, Diag};

/// mimalloc keeps freed pages for reuse; the system allocator hands large blocks back to the
/// OS, and training (which frees and reallocates the same large buffers every batch) then
/// spends much of its time in page faults.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// qatc: a compiler for quantization-aware training.
#[derive(Parser)]
#[command(name = "qatc", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Parse and check a spec, infer shapes, and print the model table.
    Check {
        /// A .qspec file, or its YAML form (.yaml / .yml).
        spec: PathBuf,
    },
    /// Print a spec in canonical .qspec form, or as YAML with --yaml.
    Fmt {
        spec: PathBuf,
        /// Print the YAML form instead.
        #[arg(long)]
        yaml: bool,
    },
    /// Evaluate a converted model (.qmodel) on the reference interpreter: accuracy and the
    /// confusion matrix on its spec's test data.
    Eval {
        model: PathBuf,
        /// Evaluate on this spec's data instead of the one stored in the model.
        #[arg(long)]
        data: Option<PathBuf>,
    },
    /// Post-training quantization: calibrate a float checkpoint's observers on training data
    /// (no training) and write the converted model.
    Calibrate {
        /// The spec, with the `quantize` block to apply.
        spec: PathBuf,
        /// A checkpoint trained from this model (e.g. by `qatc train` on the spec without its
        /// `quantize` block).
        #[arg(long)]
        from: PathBuf,
        /// Calibration batches of training data.
        #[arg(long, default_value_t = 32)]
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
        #[arg(long, default_value_t = 64)]
        images: usize,
    },
    /// Measure training throughput: images/s per epoch (median) for each spec.
    BenchTrain {
        /// Specs to measure (default: specs/mnist_mlp.qspec and specs/lenet_mnist.qspec).
        specs: Vec<PathBuf>,
        /// Epochs per spec; the median epoch is reported.
        #[arg(long, default_value_t = 3)]
        epochs: usize,
        /// Worker threads (default: all cores).
        #[arg(long)]
        threads: Option<usize>,
        /// Print one JSON object per spec instead of a table.
        #[arg(long)]
        json: bool,
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
        /// Where to write the object or header (default: <model>.o / <model>.h).
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// Also print the compile time and the scratch memory per call (to stderr).
        #[arg(short, long)]
        verbose: bool,
    },
    /// Measure inference: batch-1 latency (median µs) and large-batch throughput (images/s) of the
    /// compiled model and of the reference interpreter.
    Bench {
        model: PathBuf,
        /// Batch sizes: 1 measures latency on one thread, larger ones throughput on all threads.
        #[arg(long, value_delimiter = ',', default_values_t = [1, 256])]
        batch: Vec<usize>,
        /// Worker threads (default: all cores).
        #[arg(long)]
        threads: Option<usize>,
        /// Print one JSON object (keys jit_b1_us, jit_b256_img_s, ref_b1_us, ref_b256_img_s,
        /// compile_ms) instead of a table.
        #[arg(long)]
        json: bool,
        /// Force a GEMM form instead of this CPU's best (all are exact): vnni, usdot, sdot,
        /// i16, pairs.
        #[arg(long)]
        dot: Option<String>,
    },
    /// Train a spec with fake quantization (QAT) and report accuracy.
    Train {
        spec: PathBuf,
        /// Where to write the run (default: runs/<model>).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Override the spec's number of epochs.
        #[arg(long)]
        epochs: Option<usize>,
        /// Worker threads (default: all cores).
        #[arg(long)]
        threads: Option<usize>,
    },
}

#[derive(Clone, Copy, PartialEq, clap::ValueEnum)]
enum Emit {
    /// The int8 IR, as `convert` made it.
    Ir,
    /// Cranelift IR of the entry function.
    Clif,
    /// The generated machine code.
    Asm,
    /// A relocatable object (ELF) with the entry point and the weights.
    Obj,
    /// A C header declaring the object's entry point and sizes.
    Header,
}

/// Exit status for bad input (a malformed spec, a missing file): the same as clap's usage errors.
const EXIT_BAD_INPUT: u8 = 2;

/// Spec files larger than this are refused before parsing.
const MAX_SPEC_BYTES: u64 = 1 << 20;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprint!("{message}");
            ExitCode::from(EXIT_BAD_INPUT)
        }
    }
}

/// Runs one command; `Err` holds the text to print to stderr.
fn run(cli: Cli) -> Result<(), String> {
    match cli.command {
        Command::Check { spec } => {
            let (model, _) = front_end(&spec)?;
            print!("{}", qatc::check::model_table(&model));
            Ok(())
        }
        Command::Calibrate {
            spec,
            from,
            batches,
            out,
        } => with_threads(None, |_| calibrate(&spec, &from, batches, out)),
        Command::Compare {
            model,
            checkpoint,
            images,
        } => with_threads(None, |_| compare(&model, checkpoint, images)),
        Command::Eval { model, data } => with_threads(None, |_| eval(&model, data.as_deref())),
        Command::Fmt { spec, yaml } => {
            let text = read_spec(&spec)?;
            let name = spec.display().to_string();
            let (parsed, source) = qatc::syntax::parse_source(&name, &text);
            let ast = parsed.map_err(|diags| diag::render(&diags, &source.name, &source.text))?;
            if yaml {
                print!("{}", qatc::syntax::to_yaml(&ast));
            } else {
                print!("{}", qatc::syntax::fmt::format_spec(&ast));
            }
            Ok(())
        }
        Command::Train {
            spec,
            out,
            epochs,
            threads,
        } => with_threads(threads, |threads| train(&spec, out, epochs, threads)),
        Command::Compile {
            model,
            emit,
            target,
            features,
            output,
            verbose,
        } => compile(&model, emit, target.as_deref(), &features, output, verbose),
        Command::Bench {
            model,
            batch,
            threads,
            json,
            dot,
        } => with_threads(threads, |threads| {
            bench(&model, &batch, threads, json, dot.as_deref())
        }),
        Command::BenchTrain {
            specs,
            epochs,
            threads,
            json,
        } => with_threads(threads, |threads| bench_train(specs, epochs, threads, json)),
    }
}

fn calibrate(
    spec_path: &Path,
    from: &Path,
    batches: usize,
    out: Option<PathBuf>,
) -> Result<(), String> {
    let spec_text = read_spec(spec_path)?;
    let (model, _) = front_end(spec_path)?;
    if model.backend.is_none() {
        return Err(format!(
            "error: `{}` has no `quantize` block: nothing to calibrate\n",
            spec_path.display()
        ));
    }
    let cfg = model.train.clone().ok_or_else(|| {
        format!(
            "error: `{}` has no `train` block naming data\n",
            spec_path.display()
        )
    })?;
    let data = qatc::train::load_data(&model, &cfg, spec_path.parent().unwrap_or(Path::new(".")))
        .map_err(|e| format!("error: {e}\n"))?;
    let mut net = qatc::train::build_net(&model, cfg.seed).map_err(|e| format!("error: {e}\n"))?;
    let bytes = std::fs::read(from)
        .map_err(|e| format!("error: cannot read `{}`: {e}\n", from.display()))?;
    qatc::train::checkpoint::load(&mut net, &bytes)
        .map_err(|e| format!("error: {}: {e}\n", from.display()))?;
    let float_acc = qatc::train::evaluate(&mut net, &data.test, &cfg, false);
    // Observers only: no fake quantization, no training, BatchNorm on its running statistics.
    let observe = qatc::train::engine::Mode {
        training: false,
        fake_quant: false,
        observe: true,
        bn_frozen: true,
    };
    let (mut x, mut labels) = (Vec::new(), Vec::new());
    let order: Vec<usize> = (0..data.train.len()).collect();
    let mut rng = qatc::train::rng::Rng::new(cfg.seed);
    let mut seen = 0;
    for chunk in order.chunks(cfg.batch).take(batches.max(1)) {
        data.train
            .batch(chunk, &cfg.normalization, &mut x, &mut labels);
        net.forward(&x, chunk.len(), observe, &mut rng);
        seen += chunk.len();
    }
    let fq_acc = qatc::train::evaluate(&mut net, &data.test, &cfg, true);
    let graph = qatc::convert::convert(&net).map_err(|e| format!("error: convert: {e}\n"))?;
    let int8_acc = int8_accuracy(&graph, &data.test, &cfg).map_err(|e| format!("error: {e}\n"))?;
    let dir = out.unwrap_or_else(|| PathBuf::from("runs").join(format!("{}-ptq", model.name)));
    std::fs::create_dir_all(&dir)
        .map_err(|e| format!("error: cannot create {}: {e}\n", dir.display()))?;
    let info = qatc::qmodel::Info {
        backend: model
            .backend
            .map_or(String::new(), |b| b.name().to_string()),
        spec: spec_text,
        qatc_version: env!("CARGO_PKG_VERSION").to_string(),
        normalization: Some(cfg.normalization.clone()),
    };
    let bytes = qatc::qmodel::to_bytes(&graph, &info).map_err(|e| format!("error: {e}\n"))?;
    let path = dir.join("model.qmodel");
    std::fs::write(&path, bytes)
        .map_err(|e| format!("error: cannot write {}: {e}\n", path.display()))?;
    println!(
        "calibrated on {seen} training images; test accuracy on {} images:",
        data.test.len()
    );
    println!("  float                      {float_acc:6.2} %");
    println!("  fake quant (PTQ)           {fq_acc:6.2} %");
    println!("  int8 (reference)           {int8_acc:6.2} %");
    println!("wrote {}", path.display());
    Ok(())
}

fn load_model(path: &Path) -> Result<qatc::Model, String> {
    qatc::Model::load(path).map_err(|e| format!("error: {e}\n"))
}

fn compile(
    model_path: &Path,
    emit: Emit,
    target: Option<&str>,
    features: &[String],
    output: Option<PathBuf>,
    verbose: bool,
) -> Result<(), String> {
    use qatc::jit::target;
    let model = load_model(model_path)?;
    let err = |e: qatc::jit::Error| format!("error: {e}\n");
    if emit == Emit::Ir {
        print!("{}", model.graph().to_text());
        return Ok(());
    }
    let start = std::time::Instant::now();
    let name = format!("qatc_{}_run", target::c_identifier(&model.graph().name));
    // The host JIT for listings of this machine; an object for anything else.
    let (listing, scratch, dot) = if target.is_none() && matches!(emit, Emit::Clif | Emit::Asm) {
        let options = qatc::jit::Options {
            dot_product: None,
            listing: true,
            u8_entry: false,
        };
        let (compiled, listing) = model.compile_with(&options).map_err(err)?;
        (
            listing.unwrap_or_default(),
            compiled.scratch_bytes(),
            compiled.dot_product(),
        )
    } else {
        let arch = match target {
            Some(t) => t.parse().map_err(err)?,
            None => target::host_arch().map_err(err)?,
        };
        let isa = target::isa(arch, features).map_err(err)?;
        let object = target::object(model.graph(), isa, &name).map_err(err)?;
        let default_name = |ext: &str| PathBuf::from(format!("{}.{ext}", model.graph().name));
        match emit {
            Emit::Obj => {
                let path = output.clone().unwrap_or_else(|| default_name("o"));
                std::fs::write(&path, &object.bytes)
                    .map_err(|e| format!("error: cannot write {}: {e}\n", path.display()))?;
                let u8_entry = if qatc::jit::lower::u8_entry(model.graph()).is_some() {
                    format!(" and `{name}_u8`")
                } else {
                    String::new()
                };
                eprintln!("wrote {} (entry points `{name}`{u8_entry})", path.display());
            }
            Emit::Header => {
                let path = output.clone().unwrap_or_else(|| default_name("h"));
                let norm = model.normalization().ok();
                let text = target::c_header(model.graph(), &name, object.scratch_bytes, norm);
                std::fs::write(&path, text)
                    .map_err(|e| format!("error: cannot write {}: {e}\n", path.display()))?;
                eprintln!("wrote {}", path.display());
            }
            _ => {}
        }
        (object.listing, object.scratch_bytes, object.dot)
    };
    match emit {
        Emit::Clif => print!("{}", listing.clif),
        Emit::Asm => print!("{}", listing.asm),
        _ => {}
    }
    if verbose {
        eprintln!(
            "compiled {} in {:.2} ms ({dot:?} dot products); {scratch} bytes of scratch per call",
            model.graph().name,
            start.elapsed().as_secs_f64() * 1e3,
        );
    }
    Ok(())
}

fn bench(
    model_path: &Path,
    batches: &[usize],
    threads: usize,
    json: bool,
    dot: Option<&str>,
) -> Result<(), String> {
    use qatc::jit::DotProduct;
    if batches.contains(&0) {
        return Err("error: --batch sizes must be at least 1\n".into());
    }
    let dot_product = match dot {
        None => None,
        Some("vnni") => Some(DotProduct::Vnni),
        Some("usdot") => Some(DotProduct::Usdot),
        Some("sdot") => Some(DotProduct::Sdot),
        Some("i16") => Some(DotProduct::I16),
        Some("pairs") => Some(DotProduct::Pairs),
        Some(other) => {
            return Err(format!(
                "error: unknown --dot `{other}` (vnni, usdot, sdot, i16, pairs)\n"
            ))
        }
    };
    let options = qatc::jit::Options {
        dot_product,
        listing: false,
        u8_entry: false,
    };
    let model = load_model(model_path)?;
    let mut compile_times = Vec::new();
    let mut compiled = None;
    for _ in 0..5 {
        let (c, _) = model
            .compile_with(&options)
            .map_err(|e| format!("error: {e}\n"))?;
        compile_times.push(c.compile_time());
        compiled = Some(c);
    }
    let compiled = compiled.expect("compiled five times");
    compile_times.sort();
    let compile_ms = compile_times[2].as_secs_f64() * 1e3;
    let graph = model.graph();
    let size = model.input_size();
    let mut out = serde_json::Map::new();
    out.insert("model".into(), graph.name.clone().into());
    out.insert("threads".into(), threads.into());
    out.insert(
        "compile_ms".into(),
        ((compile_ms * 100.0).round() / 100.0).into(),
    );
    if !json {
        println!(
            "{}: compiled in {compile_ms:.2} ms (median of 5, {:?} dot products); {threads} threads",
            graph.name,
            compiled.dot_product()
        );
        println!(
            "{:<8} {:>16} {:>16} {:>9}",
            "batch", "jit", "reference", "speedup"
        );
    }
    for &b in batches {
        let (jit, reference, unit) = if b == 1 {
            let jit = qatc::bench::latency_us(&compiled, 2000);
            let x = qatc::bench::inputs(size);
            let r = qatc::bench::median_time(3, 100, || {
                qatc::interp::run(graph, &x, 1).expect("lengths match");
            });
            (jit, r.as_secs_f64() * 1e6, "us")
        } else {
            let mut y = vec![0.0; b * compiled.output_size()];
            let jit = qatc::bench::throughput(size, b, 50, |x| {
                compiled.run_into(x, &mut y).expect("lengths match");
            });
            let reference = qatc::bench::throughput(size, b, 5, |x| {
                qatc::interp::run(graph, x, b).expect("lengths match");
            });
            (jit, reference, "img_s")
        };
        let round = |v: f64| (v * 100.0).round() / 100.0;
        out.insert(format!("jit_b{b}_{unit}"), round(jit).into());
        out.insert(format!("ref_b{b}_{unit}"), round(reference).into());
        if !json {
            let text = |v: f64| {
                if b == 1 {
                    format!("{v:.2} µs")
                } else {
                    format!("{v:.0} img/s")
                }
            };
            let speedup = if b == 1 {
                reference / jit
            } else {
                jit / reference
            };
            println!(
                "{b:<8} {:>16} {:>16} {:>8.1}x",
                text(jit),
                text(reference),
                speedup
            );
        }
    }
    if json {
        println!("{}", serde_json::Value::Object(out));
    }
    Ok(())
}

fn compare(model_path: &Path, checkpoint: Option<PathBuf>, images: usize) -> Result<(), String> {
    let bytes = std::fs::read(model_path)
        .map_err(|e| format!("error: cannot read `{}`: {e}\n", model_path.display()))?;
    let (graph, info) = qatc::qmodel::from_bytes(&bytes)
        .map_err(|e| format!("error: {}: {e}\n", model_path.display()))?;
    let checkpoint =
        checkpoint.unwrap_or_else(|| model_path.with_file_name("checkpoint.safetensors"));
    let name = format!("{} (its spec)", model_path.display());
    let (result, source) = qatc::front_end(&name, &info.spec);
    let model = result
        .map_err(|d| diag::render(&d, &source.name, &source.text))?
        .model;
    let cfg = model
        .train
        .clone()
        .ok_or_else(|| "error: the model's spec has no `train` block naming data\n".to_string())?;
    let data = qatc::train::load_data(&model, &cfg, Path::new("."))
        .map_err(|e| format!("error: {e}\n"))?;
    let mut net = qatc::train::build_net(&model, cfg.seed).map_err(|e| format!("error: {e}\n"))?;
    let ck = std::fs::read(&checkpoint).map_err(|e| {
        format!(
            "error: cannot read checkpoint `{}`: {e}\n",
            checkpoint.display()
        )
    })?;
    qatc::train::checkpoint::load(&mut net, &ck)
        .map_err(|e| format!("error: {}: {e}\n", checkpoint.display()))?;
    let n = images.clamp(1, data.test.len());
    let (mut x, mut labels) = (Vec::new(), Vec::new());
    data.test.batch(
        &(0..n).collect::<Vec<_>>(),
        &cfg.normalization,
        &mut x,
        &mut labels,
    );
    let errors = qatc::compare::layer_errors(&mut net, &graph, &x, n);
    println!(
        "int8 vs fake quant on {n} test images (SQNR, higher is closer; 30 dB is PyTorch's bar)\n"
    );
    println!(
        "{:<16} {:<16} {:<16} {:>9}",
        "layer", "op", "shape", "SQNR dB"
    );
    for e in &errors {
        println!(
            "{:<16} {:<16} {:<16} {:>9.1}",
            e.name,
            e.op,
            format!("{:?}", e.shape),
            e.sqnr_db
        );
    }
    if let Some(last) = errors.last() {
        println!("\noutput SQNR: {:.1} dB", last.sqnr_db);
    }
    Ok(())
}

fn eval(model_path: &Path, data_spec: Option<&Path>) -> Result<(), String> {
    let bytes = std::fs::read(model_path)
        .map_err(|e| format!("error: cannot read `{}`: {e}\n", model_path.display()))?;
    let (graph, info) = qatc::qmodel::from_bytes(&bytes)
        .map_err(|e| format!("error: {}: {e}\n", model_path.display()))?;
    // The data and its normalization come from a spec: the one given, or the one in the model.
    let (spec_name, spec_text, spec_dir) = match data_spec {
        Some(path) => (
            path.display().to_string(),
            read_spec(path)?,
            path.parent().unwrap_or(Path::new(".")).to_path_buf(),
        ),
        None => (
            format!("{} (its spec)", model_path.display()),
            info.spec.clone(),
            PathBuf::from("."),
        ),
    };
    let (result, source) = qatc::front_end(&spec_name, &spec_text);
    let checked = result.map_err(|d| diag::render(&d, &source.name, &source.text))?;
    let cfg = checked
        .model
        .train
        .clone()
        .ok_or_else(|| format!("error: {spec_name} has no `train` block naming data\n"))?;
    let data = qatc::train::load_data(&checked.model, &cfg, &spec_dir)
        .map_err(|e| format!("error: {e}\n"))?;
    let classes: usize = graph.nodes[graph.output].shape.iter().product();
    let mut confusion = vec![vec![0usize; classes]; classes];
    let (mut x, mut labels) = (Vec::new(), Vec::new());
    let indices: Vec<usize> = (0..data.test.len()).collect();
    for chunk in indices.chunks(500) {
        data.test
            .batch(chunk, &cfg.normalization, &mut x, &mut labels);
        let logits = qatc::interp::run(&graph, &x, chunk.len())
            .map_err(|e| format!("error: {}: {e}\n", model_path.display()))?;
        for (row, &label) in logits.chunks_exact(classes).zip(&labels) {
            confusion[label as usize][qatc::data::argmax(row)] += 1;
        }
    }
    let correct: usize = (0..classes).map(|c| confusion[c][c]).sum();
    println!(
        "model {} ({} backend), {} test images: int8 accuracy {:.2} %",
        graph.name,
        info.backend,
        data.test.len(),
        100.0 * correct as f64 / data.test.len().max(1) as f64
    );
    println!("\nconfusion matrix (rows: label, columns: prediction)");
    print!("      ");
    for c in 0..classes {
        print!("{c:>6}");
    }
    println!();
    for (label, row) in confusion.iter().enumerate() {
        print!("{label:>6}");
        for n in row {
            print!("{n:>6}");
        }
        println!();
    }
    Ok(())
}

/// Runs `work` on a pool of worker threads (all cores by default), passing their number. The
/// work itself runs on a worker, so its parallel loops are shared with the other workers
/// directly instead of being handed over from outside the pool each time.
fn with_threads<T: Send>(
    threads: Option<usize>,
    work: impl FnOnce(usize) -> Result<T, String> + Send,
) -> Result<T, String> {
    let threads =
        threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    if threads == 0 {
        return Err("error: --threads must be at least 1\n".into());
    }
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .map_err(|e| format!("error: cannot start {threads} threads: {e}\n"))?;
    pool.install(|| work(threads))
}

fn bench_train(
    specs: Vec<PathBuf>,
    epochs: usize,
    threads: usize,
    json: bool,
) -> Result<(), String> {
    if epochs == 0 {
        return Err("error: --epochs must be at least 1\n".into());
    }
    let specs = if specs.is_empty() {
        vec![
            PathBuf::from("specs/mnist_mlp.qspec"),
            PathBuf::from("specs/lenet_mnist.qspec"),
        ]
    } else {
        specs
    };
    if !json {
        println!(
            "{:<28} {:>8} {:>7} {:>14} {:>14} {:>14}",
            "spec", "threads", "epochs", "median img/s", "min img/s", "max img/s"
        );
    }
    for spec_path in specs {
        let (model, _) = front_end(&spec_path)?;
        let Some(cfg) = model.train.clone() else {
            return Err(format!(
                "error: `{}` has no `train` block\n",
                spec_path.display()
            ));
        };
        let spec_dir = spec_path.parent().unwrap_or(Path::new("."));
        let data =
            qatc::train::load_data(&model, &cfg, spec_dir).map_err(|e| format!("error: {e}\n"))?;
        let mut net =
            qatc::train::build_net(&model, cfg.seed).map_err(|e| format!("error: {e}\n"))?;
        let outcome = qatc::train::train(&mut net, &data, &cfg, epochs, &mut qatc::train::Quiet);
        let mut rates: Vec<f32> = outcome.epochs.iter().map(|e| e.images_per_s).collect();
        rates.sort_by(f32::total_cmp);
        let median = rates[rates.len() / 2];
        let (min, max) = (rates[0], rates[rates.len() - 1]);
        if json {
            let row = serde_json::json!({
                "spec": spec_path.display().to_string(),
                "threads": threads,
                "epochs": epochs,
                "median_images_per_s": median.round(),
                "min_images_per_s": min.round(),
                "max_images_per_s": max.round(),
                "fake_quant_acc": outcome.final_acc,
            });
            println!("{row}");
        } else {
            println!(
                "{:<28} {threads:>8} {epochs:>7} {median:>14.0} {min:>14.0} {max:>14.0}",
                spec_path.display().to_string()
            );
        }
    }
    Ok(())
}

fn train(
    spec_path: &Path,
    out: Option<PathBuf>,
    epochs: Option<usize>,
    threads: usize,
) -> Result<(), String> {
    let spec_text = read_spec(spec_path)?;
    let (model, _) = front_end(spec_path)?;
    let Some(cfg) = model.train.clone() else {
        return Err(format!(
            "error: `{}` has no `train` block: nothing to train\n",
            spec_path.display()
        ));
    };
    let epochs = epochs.unwrap_or(cfg.epochs);
    if epochs == 0 {
        return Err("error: --epochs must be at least 1\n".into());
    }
    print!("{}", qatc::check::model_table(&model));
    let spec_dir = spec_path.parent().unwrap_or(Path::new("."));
    let data =
        qatc::train::load_data(&model, &cfg, spec_dir).map_err(|e| format!("error: {e}\n"))?;
    println!(
        "\ndata: {} training and {} test images{}; {threads} threads",
        data.train.len(),
        data.test.len(),
        if data.held_out {
            " (held out from the training files)"
        } else {
            ""
        }
    );
    let mut net = qatc::train::build_net(&model, cfg.seed).map_err(|e| format!("error: {e}\n"))?;
    let quantized = model.backend.is_some();

    let mut bars = Bars::default();
    let outcome = qatc::train::train(&mut net, &data, &cfg, epochs, &mut bars);

    let dir = out.unwrap_or_else(|| PathBuf::from("runs").join(&model.name));
    std::fs::create_dir_all(&dir)
        .map_err(|e| format!("error: cannot create {}: {e}\n", dir.display()))?;
    let write = |name: &str, bytes: &[u8]| {
        let path = dir.join(name);
        std::fs::write(&path, bytes)
            .map_err(|e| format!("error: cannot write {}: {e}\n", path.display()))
    };
    let metadata = std::collections::HashMap::from([
        ("model".to_string(), model.name.clone()),
        ("spec".to_string(), spec_text.clone()),
        (
            "qatc_version".to_string(),
            env!("CARGO_PKG_VERSION").to_string(),
        ),
        ("epochs".to_string(), epochs.to_string()),
    ]);
    let checkpoint =
        qatc::train::checkpoint::to_bytes(&net, metadata).map_err(|e| format!("error: {e}\n"))?;
    write("checkpoint.safetensors", &checkpoint)?;
    write(
        "metrics.csv",
        qatc::train::report::metrics_csv(&outcome.epochs).as_bytes(),
    )?;
    let mut summary = qatc::train::report::summary(&model.name, &outcome, quantized);
    summary.insert("checkpoint_bytes".into(), checkpoint.len().into());
    // Convert to int8 and measure the reference interpreter on the same test set.
    let int8 = if quantized {
        let graph = qatc::convert::convert(&net).map_err(|e| format!("error: convert: {e}\n"))?;
        let acc = int8_accuracy(&graph, &data.test, &cfg).map_err(|e| format!("error: {e}\n"))?;
        summary.insert("int8_acc".into(), round2(acc).into());
        let info = qatc::qmodel::Info {
            backend: model
                .backend
                .map_or(String::new(), |b| b.name().to_string()),
            spec: spec_text.clone(),
            qatc_version: env!("CARGO_PKG_VERSION").to_string(),
            normalization: Some(cfg.normalization.clone()),
        };
        let bytes = qatc::qmodel::to_bytes(&graph, &info).map_err(|e| format!("error: {e}\n"))?;
        write("model.qmodel", &bytes)?;
        summary.insert("qmodel_bytes".into(), bytes.len().into());
        // Compile it and measure the native code on the same test set.
        let jit = qatc::Model::from_graph(graph.clone())
            .and_then(|m| m.compile())
            .map_err(|e| format!("error: compile: {e}\n"))?;
        let classes = jit.output_size();
        let jit_acc = qatc::data::accuracy(&data.test, &cfg.normalization, classes, |x, _| {
            jit.run(x).map_err(|e| e.to_string())
        })
        .map_err(|e| format!("error: {e}\n"))?;
        let b1_us = qatc::bench::latency_us(&jit, 1000);
        summary.insert("jit_int8_acc".into(), round2(jit_acc).into());
        summary.insert("jit_b1_us".into(), round2(b1_us as f32).into());
        Some((acc, graph, jit_acc, b1_us))
    } else {
        None
    };
    let json = serde_json::to_string_pretty(&summary).unwrap_or_default();
    write("summary.json", format!("{json}\n").as_bytes())?;
    let svg = qatc::train::report::curves_svg(&model.name, &outcome.epochs)
        .map_err(|e| format!("error: plot: {e}\n"))?;
    write("curves.svg", svg.as_bytes())?;

    println!("\ntest accuracy on {} images:", data.test.len());
    if let Some(acc) = outcome.float_acc {
        println!("  float (after pretraining)  {acc:6.2} %");
    }
    let what = if quantized { "fake quant" } else { "float" };
    println!("  {what:<26} {:6.2} %", outcome.final_acc);
    if let Some((acc, graph, jit_acc, b1_us)) = &int8 {
        println!("  int8 (reference)           {acc:6.2} %");
        println!("  int8 (JIT, native)         {jit_acc:6.2} %   batch-1 latency {b1_us:.1} µs");
        let int8_weights: usize = graph
            .nodes
            .iter()
            .map(|n| match &n.op {
                qatc::int8::QOp::Linear { w, .. } | qatc::int8::QOp::Conv2d { w, .. } => {
                    w.weight.len() + 4 * (w.bias.len() + w.weight_scales.len())
                }
                qatc::int8::QOp::FloatLinear { w, .. } | qatc::int8::QOp::FloatConv2d { w, .. } => {
                    4 * (w.weight.len() + w.bias.len())
                }
                _ => 0,
            })
            .sum();
        let float_weights: usize = net.params_mut().iter().map(|p| 4 * p.value.len()).sum();
        println!("model weights: float {float_weights} bytes, int8 {int8_weights} bytes");
    }
    println!(
        "training throughput: {:.0} images/s",
        outcome.train_images_per_s
    );
    let qmodel = if int8.is_some() { "model.qmodel, " } else { "" };
    println!(
        "wrote {}/{{checkpoint.safetensors, {qmodel}metrics.csv, summary.json, curves.svg}}",
        dir.display()
    );
    Ok(())
}

/// Rounds to two decimals for summary.json.
fn round2(v: f32) -> f64 {
    ((v as f64) * 100.0).round() / 100.0
}

/// A progress bar per epoch on stderr, and one line per epoch on stdout.
#[derive(Default)]
struct Bars {
    bar: Option<indicatif::ProgressBar>,
    images: usize,
    started: Option<std::time::Instant>,
}

impl qatc::train::Progress for Bars {
    fn epoch_start(
        &mut self,
        epoch: usize,
        epochs: usize,
        phase: qatc::train::Phase,
        batches: usize,
    ) {
        let bar = indicatif::ProgressBar::new(batches as u64);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{prefix} [{bar:30}] {pos}/{len} batches {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bar.set_prefix(format!("epoch {epoch}/{epochs} {}", phase.name()));
        self.bar = Some(bar);
        self.images = 0;
        self.started = Some(std::time::Instant::now());
    }

    fn batch_done(&mut self, loss: f32, images: usize) {
        self.images += images;
        if let (Some(bar), Some(started)) = (&self.bar, self.started) {
            let rate = self.images as f64 / started.elapsed().as_secs_f64().max(1e-9);
            bar.set_message(format!("loss {loss:.4}, {rate:.0} img/s"));
            bar.inc(1);
        }
    }

    fn epoch_end(&mut self, s: &qatc::train::EpochStats) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
        let test = if s.phase == qatc::train::Phase::Qat {
            "test acc (fake quant)"
        } else {
            "test acc (float)"
        };
        println!(
            "epoch {:>2} {:<5} lr {:.5}  train loss {:.4}  train acc {:6.2} %  {test} {:6.2} %  {:>7.0} img/s",
            s.epoch,
            s.phase.name(),
            s.lr,
            s.train_loss,
            s.train_acc,
            s.test_acc,
            s.images_per_s
        );
    }
}

fn read_spec(path: &Path) -> Result<String, String> {
    let meta = std::fs::metadata(path)
        .map_err(|e| format!("error: cannot read spec `{}`: {e}\n", path.display()))?;
    if meta.len() > MAX_SPEC_BYTES {
        return Err(format!(
            "error: spec `{}` is {} bytes; specs larger than {MAX_SPEC_BYTES} bytes are refused\n",
            path.display(),
            meta.len()
        ));
    }
    let bytes = std::fs::read(path)
        .map_err(|e| format!("error: cannot read spec `{}`: {e}\n", path.display()))?;
    String::from_utf8(bytes).map_err(|e| {
        format!(
            "error: spec `{}` is not UTF-8 text (invalid byte at offset {})\n",
            path.display(),
            e.utf8_error().valid_up_to()
        )
    })
}

/// Reads, parses and checks a spec; prints warnings; errors come back rendered.
fn front_end(path: &Path) -> Result<(qatc::check::CheckedModel, qatc::syntax::Spec), String> {
    let text = read_spec(path)?;
    let (result, source) = qatc::front_end(&path.display().to_string(), &text);
    match result {
        Ok(checked) => {
            print_warnings(&checked.warnings, &source);
            Ok((checked.model, checked.spec))
        }
        Err(diags) => Err(diag::render(&diags, &source.name, &source.text)),
    }
}

fn print_warnings(warnings: &[Diag], source: &qatc::syntax::SourceFile) {
    if !warnings.is_empty() {
        eprint!("{}", diag::render(warnings, &source.name, &source.text));
    }
}

fn int8_accuracy(
    graph: &qatc::int8::QGraph,
    data: &qatc::data::Dataset,
    cfg: &qatc::check::TrainConfig,
) -> Result<f32, String> {
    let classes = graph.nodes[graph.output].shape.iter().product();
    qatc::data::accuracy(data, &cfg.normalization, classes, |x, n| {
        qatc::interp::run(graph, x, n)
    })
}
