//! The `qatc` command line: one subcommand per stage. It parses arguments, calls the library's
//! [`qatc::pipeline`] and prints the report; it is the only place that prints or exits.

mod args;
mod print;
mod progress;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Parser;

use args::{Cli, Command};
use qatc::diag::count;
use qatc::pipeline::Emit;

use qatc::pipeline::{self, Error, SpecFile, Stage};

/// mimalloc keeps freed pages for reuse; the system allocator hands large blocks back to the
/// OS, and training (which frees and reallocates the same large buffers every batch) then
/// spends much of its time in page faults.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Exit status for bad input (a malformed spec, a missing file): the same as clap's usage errors.
const EXIT_BAD_INPUT: u8 = 2;

fn main() -> ExitCode {
    quiet_on_closed_stdout();
    qatc::diag::set_color(colour_wanted());
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprint!("{}", e.render());
            ExitCode::from(EXIT_BAD_INPUT)
        }
    }
}

/// Diagnostics are coloured on a terminal, as clap's are: not when `NO_COLOR` is set (to
/// anything), always when `CLICOLOR_FORCE` is (and `NO_COLOR` is not).
fn colour_wanted() -> bool {
    use std::io::IsTerminal;
    let set = |name: &str| std::env::var_os(name).is_some_and(|v| !v.is_empty());
    !set("NO_COLOR") && (set("CLICOLOR_FORCE") || std::io::stderr().is_terminal())
}

/// Output into a pipe whose reader has gone (`qatc compile M --emit asm | head`) ends the
/// program quietly, with success, as other Unix tools do: Rust's printing macros panic on a
/// closed stdout, and this hook turns that one panic into an exit; any other panic is reported
/// as before.
fn quiet_on_closed_stdout() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let message = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or("");
        if message.starts_with("failed printing to stdout") && message.contains("Broken pipe") {
            std::process::exit(0);
        }
        report(info)
    }));
}

/// Runs one command.
fn run(cli: Cli) -> Result<(), Error> {
    DENY_WARNINGS.store(cli.deny_warnings, std::sync::atomic::Ordering::Relaxed);
    match cli.command {
        Command::Check { spec, json } => {
            let spec = load_spec(&spec)?;
            if json {
                println!("{:#}", qatc::check::model_json(&spec.model));
            } else {
                print!("{}", qatc::check::model_table(&spec.model));
            }
            Ok(())
        }
        Command::Fmt {
            spec,
            yaml,
            check,
            write,
        } => {
            let text = pipeline::read_spec(&spec)?;
            let (parsed, source) = qatc::syntax::parse_source(&spec.display().to_string(), &text);
            let ast = parsed.map_err(|diags| {
                Error::new(
                    Stage::Spec,
                    qatc::diag::render(&diags, &source.name, &source.text),
                )
            })?;
            if yaml {
                print!("{}", qatc::syntax::to_yaml(&ast));
                return Ok(());
            }
            // A .qspec keeps its comments; the YAML form's are YAML's own.
            let is_yaml = spec.extension().is_some_and(|e| e == "yaml" || e == "yml");
            let formatted = if is_yaml {
                qatc::syntax::fmt::format_spec(&ast)
            } else {
                qatc::syntax::fmt::format_with_comments(&ast, &text)
            };
            if check {
                if formatted != text {
                    eprintln!(
                        "{} is not in canonical form: `qatc fmt --write {}` rewrites it",
                        spec.display(),
                        spec.display()
                    );
                    std::process::exit(1);
                }
            } else if write {
                let target = if is_yaml {
                    spec.with_extension("qspec")
                } else {
                    spec.clone()
                };
                std::fs::write(&target, &formatted).map_err(|e| {
                    Error::new(
                        Stage::Write,
                        format!("cannot write {}: {e}", target.display()),
                    )
                })?;
            } else {
                print!("{formatted}");
            }
            Ok(())
        }
        Command::Calibrate {
            spec,
            from,
            batches,
            out,
        } => with_threads(None, |_| {
            let r = pipeline::calibrate(&load_spec(&spec)?, from.as_deref(), batches, out)?;
            println!(
                "calibrated on {}; test accuracy on {}:",
                count(r.calibration_images, "training image"),
                count(r.test_images, "image")
            );
            println!("  float                      {:6.2} %", r.float_acc);
            println!("  fake quant (PTQ)           {:6.2} %", r.fake_quant_acc);
            println!("  int8 (reference)           {:6.2} %", r.int8_acc);
            println!("wrote {}", r.qmodel.display());
            Ok(())
        }),
        Command::Compare {
            model,
            checkpoint,
            images,
        } => with_threads(None, |_| {
            let r = pipeline::compare(&model, checkpoint, images)?;
            println!(
                "int8 vs fake quant on {} (SQNR, higher is closer; 30 dB is PyTorch's bar)\n",
                count(r.images, "test image")
            );
            println!(
                "{:<16} {:<16} {:<16} {:>9}",
                "layer", "op", "shape", "SQNR dB"
            );
            // Identical values have no noise: an infinite SQNR reads "exact".
            let db = |v: f64| {
                if v.is_infinite() && v > 0.0 {
                    "exact".to_string()
                } else {
                    format!("{v:.1}")
                }
            };
            for e in &r.layers {
                let shape = format!("{:?}", e.shape);
                println!(
                    "{:<16} {:<16} {shape:<16} {:>9}",
                    e.name,
                    e.op,
                    db(e.sqnr_db)
                );
            }
            if let Some(last) = r.layers.last() {
                println!("\noutput SQNR: {} dB", db(last.sqnr_db));
            }
            Ok(())
        }),
        Command::Eval { model, data, json } => with_threads(None, |_| {
            let report = pipeline::evaluate(&model, data.as_deref())?;
            if json {
                println!("{}", to_json(&report)?);
            } else {
                print::eval(&report);
            }
            Ok(())
        }),
        Command::Run {
            model,
            input,
            output,
            interp,
            json,
            threads,
        } => with_threads(threads, |_| {
            let engine = if interp {
                pipeline::Engine::Interpreter
            } else {
                pipeline::Engine::Jit
            };
            let r = pipeline::run(&model, &input, engine)?;
            match output {
                Some(path) => {
                    write(&path, &r.to_npy()?)?;
                    eprintln!(
                        "wrote {} ({} x {} f32)",
                        path.display(),
                        r.samples,
                        r.output_size
                    );
                }
                None => print::run(&r, json),
            }
            Ok(())
        }),
        Command::Export {
            model,
            output,
            codes,
        } => {
            let options = qatc::onnx::export::ExportOptions { codes };
            let bytes = pipeline::export_onnx(&model, options)?;
            let path = output.unwrap_or_else(|| model.with_extension("onnx"));
            write(&path, &bytes)?;
            eprintln!("wrote {} ({} bytes)", path.display(), bytes.len());
            Ok(())
        }
        Command::Import { onnx, output } => {
            let r = pipeline::import_onnx(&onnx, &output)?;
            println!("{}", r.layers.join("\n"));
            println!("wrote {} and {}", r.spec.display(), r.weights.display());
            Ok(())
        }
        Command::Train {
            spec,
            out,
            epochs,
            seed,
            lr,
            data,
            resume,
            threads,
            json,
            quiet,
        } => {
            let options = pipeline::TrainOptions {
                out,
                epochs,
                seed,
                lr,
                data,
                resume,
            };
            let output = match (json, quiet) {
                (true, _) => Output::Json,
                (false, true) => Output::Quiet,
                (false, false) => Output::Normal,
            };
            with_threads(threads, |threads| train(&spec, options, threads, output))
        }
        Command::Compile {
            model,
            emit,
            target,
            features,
            output,
            verbose,
        } => compile(&model, emit, target, features, output, verbose),
        Command::Bench {
            model,
            batch,
            threads,
            json,
            reference,
            layers,
            dot,
            narrow,
        } => with_threads(threads, |threads| {
            let dot = dot.as_deref().map(parse_dot).transpose()?;
            let options = pipeline::BenchOptions {
                batches: batch,
                threads,
                dot,
                narrow,
                reference,
                layers,
            };
            print::bench(&pipeline::bench(&model, &options)?, json);
            Ok(())
        }),
        Command::BenchTrain {
            specs,
            epochs,
            threads,
            json,
            profile,
        } => with_threads(threads, |threads| {
            bench_train(specs, epochs, threads, json, profile)
        }),
    }
}

/// `--deny-warnings`: a spec with warnings is refused.
static DENY_WARNINGS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Reads and checks a spec, printing its warnings (rustc-style, to stderr); with
/// `--deny-warnings` a warning fails the command.
fn load_spec(path: &Path) -> Result<SpecFile, Error> {
    let spec = SpecFile::load(path)?;
    eprint!("{}", spec.warnings);
    if !spec.warnings.is_empty() && DENY_WARNINGS.load(std::sync::atomic::Ordering::Relaxed) {
        return Err(Error::new(
            Stage::Spec,
            format!(
                "error: {} has warnings, and --deny-warnings makes them errors\n",
                path.display()
            ),
        ));
    }
    Ok(spec)
}

fn parse_dot(name: &str) -> Result<qatc::jit::DotProduct, Error> {
    use qatc::jit::DotProduct;
    Ok(match name {
        "vnni" => DotProduct::Vnni,
        "usdot" => DotProduct::Usdot,
        "sdot" => DotProduct::Sdot,
        "i16" => DotProduct::I16,
        "pairs" => DotProduct::Pairs,
        other => {
            return Err(Error::new(
                Stage::Compile,
                format!("unknown --dot `{other}` (vnni, usdot, sdot, i16, pairs)"),
            ))
        }
    })
}

/// Runs `work` on a pool of worker threads (all cores by default), passing their number. The
/// work itself runs on a worker, so its parallel loops are shared with the other workers
/// directly instead of being handed over from outside the pool each time.
fn with_threads<T: Send>(
    threads: Option<usize>,
    work: impl FnOnce(usize) -> Result<T, Error> + Send,
) -> Result<T, Error> {
    let threads =
        threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    if threads == 0 {
        return Err(Error::new(Stage::Run, "--threads must be at least 1"));
    }
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .map_err(|e| Error::new(Stage::Run, format!("cannot start {threads} threads: {e}")))?;
    pool.install(|| work(threads))
}

/// Set by the first Ctrl-C: training stops before its next batch and says how to resume. A
/// second Ctrl-C ends the program at once.
fn interrupt_flag() -> &'static std::sync::atomic::AtomicBool {
    use std::sync::atomic::{AtomicBool, Ordering};
    static STOP: AtomicBool = AtomicBool::new(false);
    let installed = ctrlc::set_handler(|| {
        if STOP.swap(true, Ordering::SeqCst) {
            std::process::exit(130);
        }
        eprintln!("\nstopping after this batch (Ctrl-C again to quit now)");
    });
    if let Err(e) = installed {
        eprintln!("warning: Ctrl-C will end training without saving its state: {e}");
    }
    &STOP
}

/// How `qatc train` reports.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Output {
    /// The table, a bar and a line per epoch, then the results.
    Normal,
    /// Only the results.
    Quiet,
    /// One JSON object on stdout; the table and the epoch lines on stderr.
    Json,
}

fn to_json(value: &impl serde::Serialize) -> Result<String, Error> {
    serde_json::to_string_pretty(value).map_err(|e| Error::new(Stage::Write, e.to_string()))
}

fn train(
    spec_path: &Path,
    options: pipeline::TrainOptions,
    threads: usize,
    output: Output,
) -> Result<(), Error> {
    let spec = load_spec(spec_path)?;
    let run = pipeline::TrainRun::prepare(spec, &options)?;
    let held_out = if run.data.held_out {
        " (held out from the training files)"
    } else {
        ""
    };
    let validation = match &run.data.validation {
        Some(v) => format!(", {}", count(v.len(), "validation image")),
        None => String::new(),
    };
    let header = format!(
        "{}\ndata: {}{validation} and {}{held_out}; {}\n",
        qatc::check::model_table(&run.spec.model),
        count(run.data.train.len(), "training image"),
        count(run.data.test.len(), "test image"),
        count(threads, "thread"),
    );
    let lines = match output {
        Output::Normal => progress::Lines::Stdout,
        Output::Json => progress::Lines::Stderr,
        Output::Quiet => progress::Lines::None,
    };
    let mut bars = progress::Bars::new(lines, run.data.validation.is_some());
    match output {
        Output::Normal => print!("{header}"),
        Output::Json => eprint!("{header}"),
        Output::Quiet => {}
    }
    let r = run.run_until(&mut bars, interrupt_flag());
    bars.done();
    let r = r?;
    if output == Output::Json {
        // The report as summary.json has it, with the measured speeds added.
        // (Through text, so f32 figures keep their short form: 86.1, not 86.0999984741211.)
        let mut v: serde_json::Value = serde_json::from_str(&to_json(&r)?)
            .map_err(|e| Error::new(Stage::Write, e.to_string()))?;
        v["train_images_per_s"] = r.train_images_per_s.into();
        if let Some(q) = &r.int8 {
            v["jit_b1_us"] = q.jit_b1_us.into();
        }
        if let Some(epochs) = v["per_epoch"].as_array_mut() {
            for (e, s) in epochs.iter_mut().zip(&r.per_epoch) {
                e["images_per_s"] = (s.images_per_s.round() as f64).into();
            }
        }
        println!("{}", to_json(&v)?);
        return Ok(());
    }
    print::train(&r);
    Ok(())
}

fn compile(
    model: &Path,
    emit: Emit,
    target: Option<String>,
    features: Vec<String>,
    output: Option<PathBuf>,
    verbose: bool,
) -> Result<(), Error> {
    let options = pipeline::CompileOptions {
        emit,
        target,
        features,
    };
    let r = pipeline::compile(model, &options)?;
    let default_name = |ext: &str| PathBuf::from(format!("{}.{ext}", r.model));
    match emit {
        Emit::Ir | Emit::Clif | Emit::Asm => match output {
            Some(path) => {
                write(&path, &r.bytes)?;
                eprintln!("wrote {}", path.display());
            }
            None => print!("{}", String::from_utf8_lossy(&r.bytes)),
        },
        Emit::Obj => {
            let path = output.unwrap_or_else(|| default_name("o"));
            write(&path, &r.bytes)?;
            let entries: Vec<String> = r.entry_points.iter().map(|e| format!("`{e}`")).collect();
            eprintln!(
                "wrote {} (entry points {})",
                path.display(),
                entries.join(" and ")
            );
        }
        Emit::Header => {
            let path = output.unwrap_or_else(|| default_name("h"));
            write(&path, &r.bytes)?;
            eprintln!("wrote {}", path.display());
        }
    }
    if verbose {
        eprintln!(
            "compiled {} in {:.2} ms ({}); {} bytes of scratch per call",
            r.model,
            r.compile_ms,
            r.dot.map_or("no GEMM code".to_string(), |d| d.to_string()),
            r.scratch_bytes
        );
    }
    Ok(())
}

fn write(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    std::fs::write(path, bytes).map_err(|e| {
        Error::new(
            Stage::Write,
            format!("cannot write {}: {e}", path.display()),
        )
    })
}

fn bench_train(
    specs: Vec<PathBuf>,
    epochs: usize,
    threads: usize,
    json: bool,
    profile: bool,
) -> Result<(), Error> {
    // The defaults are the shipped specs: in the working directory's `specs/`, else in the
    // source tree this binary was built from, so the command works from anywhere.
    let specs = if specs.is_empty() {
        ["specs/mnist_mlp.qspec", "specs/lenet_mnist.qspec"]
            .iter()
            .map(|s| {
                let here = PathBuf::from(s);
                if here.exists() {
                    here
                } else {
                    Path::new(env!("CARGO_MANIFEST_DIR")).join(s)
                }
            })
            .collect()
    } else {
        specs
    };
    if !json {
        println!(
            "{:<28} {:>8} {:>7} {:>14} {:>14} {:>14}",
            "spec", "threads", "epochs", "median img/s", "min img/s", "max img/s"
        );
    }
    for spec in specs {
        let r = pipeline::bench_train(&spec, epochs, threads, profile)?;
        if json {
            println!("{}", serde_json::to_string(&r).unwrap_or_default());
        } else {
            println!(
                "{:<28} {threads:>8} {epochs:>7} {:>14.0} {:>14.0} {:>14.0}",
                spec.display().to_string(),
                r.median_images_per_s,
                r.min_images_per_s,
                r.max_images_per_s
            );
            if let Some(p) = &r.profile {
                println!("\n{}", p.table());
            }
        }
    }
    Ok(())
}
