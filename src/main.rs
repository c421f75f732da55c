//! The `qatc` command line: one subcommand per stage. The only place that prints or exits.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use qatc::diag::{self, Diag};

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
        Command::Train { spec, .. } => {
            let (model, _) = front_end(&spec)?;
            print!("{}", qatc::check::model_table(&model));
            println!("\nqatc train: training is not built yet; the spec checks out.");
            Ok(())
        }
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
