//! A fuzzer for qatc that runs on stable Rust: mutated specs, YAML specs and `.qmodel` files,
//! and random int8 graphs run by the JIT against the interpreter.
//!
//! ```text
//! cargo run --release --example fuzz -- --target spec|yaml|qmodel|jit|all --seconds N
//!     [--seed S] [--out DIR] [--timeout SECONDS] [--memory MIB]
//! cargo run --release --example fuzz -- --replay FILE     (one saved case, in this process)
//! ```
//!
//! Each target runs in a worker process (this program again) that makes case after case from
//! the seeds (`targets.rs`; case `i` of seed `S` is always the same input) and runs each under
//! `catch_unwind`. This process watches it: a case that runs longer than `--timeout` (default
//! 10 s), a worker whose resident memory passes `--memory` (default 2048 MiB), or a worker that
//! dies (a crash, an abort) is a finding too. Every finding is written to
//! `DIR/<target>/<kind>-<seed>-<case>.<ext>` (default DIR `target/fuzz`) with a `.txt` beside it
//! saying what happened; move it to `tests/fuzz/<target>/` and `cargo test --test
//! fuzz_regressions` runs it for ever after. The exit status is 1 when anything was found.

#[path = "../../tests/common/mod.rs"]
mod common;
mod mutate;
mod targets;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use targets::Target;

struct Args {
    targets: Vec<Target>,
    seconds: f64,
    seed: u64,
    out: PathBuf,
    timeout: f64,
    memory_mib: u64,
    replay: Option<PathBuf>,
    /// Worker mode: the first case to run.
    worker_start: Option<u64>,
}

fn usage() -> ! {
    eprintln!(
        "usage: fuzz --target spec|yaml|qmodel|jit|all --seconds N [--seed S] [--out DIR] \
         [--timeout SECONDS] [--memory MIB]\n       fuzz --replay FILE"
    );
    std::process::exit(2)
}

fn parse_args() -> Args {
    let mut args = Args {
        targets: targets::ALL.to_vec(),
        seconds: 20.0,
        seed: 1,
        out: common::root().join("target/fuzz"),
        timeout: 10.0,
        memory_mib: 2048,
        replay: None,
        worker_start: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| usage());
        let number = |v: String| v.parse::<f64>().unwrap_or_else(|_| usage());
        match flag.as_str() {
            "--target" => {
                let v = value();
                args.targets = if v == "all" {
                    targets::ALL.to_vec()
                } else {
                    v.split(',')
                        .map(|t| Target::from_name(t).unwrap_or_else(|| usage()))
                        .collect()
                };
            }
            "--seconds" => args.seconds = number(value()),
            "--seed" => args.seed = number(value()) as u64,
            "--out" => args.out = PathBuf::from(value()),
            "--timeout" => args.timeout = number(value()),
            "--memory" => args.memory_mib = number(value()) as u64,
            "--replay" => args.replay = Some(PathBuf::from(value())),
            "--worker-start" => args.worker_start = Some(number(value()) as u64),
            _ => usage(),
        }
    }
    args
}

fn main() {
    let args = parse_args();
    if let Some(file) = &args.replay {
        std::process::exit(replay(file));
    }
    if let Some(start) = args.worker_start {
        worker(&args, start);
        return;
    }
    std::fs::create_dir_all(&args.out).expect("the output folder can be made");
    let mut found = 0;
    for &target in &args.targets {
        found += supervise(&args, target);
    }
    std::process::exit(if found > 0 { 1 } else { 0 });
}

/// Runs one saved case in this process and says what happened.
fn replay(file: &Path) -> i32 {
    let ext = file.extension().and_then(|e| e.to_str()).unwrap_or("");
    let Some(target) = targets::ALL.into_iter().find(|t| t.extension() == ext) else {
        eprintln!("{}: unknown extension `{ext}`", file.display());
        return 2;
    };
    let input = std::fs::read(file).expect("the case can be read");
    match target.run(&input) {
        Ok(()) => {
            println!("{}: ok", file.display());
            0
        }
        Err(e) => {
            println!("{}: {e}", file.display());
            1
        }
    }
}

/// What a worker says on its standard output, one line each.
enum Report {
    /// `start I`: case I begins.
    Start(u64),
    /// `find I KIND MESSAGE`: case I panicked or gave a wrong answer (the message has `\n`
    /// escaped).
    Find(u64, String, String),
    /// `done N`: the time is up after N cases.
    Done(u64),
}

fn parse_report(line: &str) -> Option<Report> {
    let mut parts = line.splitn(4, ' ');
    match (parts.next()?, parts.next()?.parse().ok()?) {
        ("start", i) => Some(Report::Start(i)),
        ("done", n) => Some(Report::Done(n)),
        ("find", i) => Some(Report::Find(
            i,
            parts.next()?.to_string(),
            parts.next().unwrap_or("").replace("\\n", "\n"),
        )),
        _ => None,
    }
}

/// Runs workers for `target` until the time is up, restarting after a crash, hang or memory
/// blow-up; returns the number of findings.
fn supervise(args: &Args, target: Target) -> usize {
    let started = Instant::now();
    let seeds = targets::seeds(&[target]);
    let dir = args.out.join(target.name());
    std::fs::create_dir_all(&dir).expect("the output folder can be made");
    let mut next = 0u64;
    let mut executions = 0u64;
    let mut findings = Vec::new();
    let mut save = |kind: &str, case: u64, message: &str| {
        let input = target.generate(&seeds, args.seed, case);
        let stem = format!("{kind}-{}-{case}", args.seed);
        let file = dir.join(format!("{stem}.{}", target.extension()));
        std::fs::write(&file, input).expect("a finding can be written");
        std::fs::write(dir.join(format!("{stem}.txt")), message).expect("writable");
        let first = message.lines().next().unwrap_or("");
        eprintln!(
            "  {kind}: case {case}: {first}\n    saved as {}",
            file.display()
        );
        findings.push(file);
    };
    loop {
        let left = args.seconds - started.elapsed().as_secs_f64();
        if left <= 0.0 {
            break;
        }
        let mut child = Command::new(std::env::current_exe().expect("this program"))
            .args(["--target", target.name(), "--seconds", &left.to_string()])
            .args(["--seed", &args.seed.to_string()])
            .args(["--worker-start", &next.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("a worker starts");
        let pid = child.id();
        let stdout = child.stdout.take().expect("piped");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(r) = parse_report(&line) {
                    if tx.send(r).is_err() {
                        break;
                    }
                }
            }
        });
        let (mut current, mut since, mut done) = (next, Instant::now(), false);
        let outcome = loop {
            while let Ok(r) = rx.try_recv() {
                match r {
                    Report::Start(i) => (current, since) = (i, Instant::now()),
                    Report::Find(i, kind, msg) => save(&kind, i, &msg),
                    Report::Done(n) => {
                        executions += n;
                        done = true;
                    }
                }
            }
            if let Some(status) = child.try_wait().expect("the worker can be waited for") {
                // Reports sent just before the exit.
                for r in rx.iter() {
                    match r {
                        Report::Find(i, kind, msg) => save(&kind, i, &msg),
                        Report::Done(n) => {
                            executions += n;
                            done = true;
                        }
                        Report::Start(i) => current = i,
                    }
                }
                break if done {
                    None
                } else {
                    Some(("crash", format!("the worker died: {status}")))
                };
            }
            if since.elapsed().as_secs_f64() > args.timeout {
                break Some((
                    "hang",
                    format!("the case ran for more than {} s", args.timeout),
                ));
            }
            let rss = resident_mib(pid);
            if rss > args.memory_mib {
                break Some((
                    "memory",
                    format!("the worker's resident memory reached {rss} MiB"),
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        match outcome {
            None => break,
            Some((kind, message)) => {
                let _ = child.kill();
                let _ = child.wait();
                executions += current - next + 1;
                save(kind, current, &message);
                next = current + 1;
            }
        }
    }
    println!(
        "{}: {executions} executions in {:.0} s, {} findings",
        target.name(),
        started.elapsed().as_secs_f64(),
        findings.len()
    );
    findings.len()
}

/// A process's resident memory in MiB (0 if it cannot be read).
fn resident_mib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/statm"))
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4096 / (1 << 20))
}

/// Runs cases from `start` until the time is up, reporting on standard output.
fn worker(args: &Args, start: u64) {
    let target = args.targets[0];
    let seeds = targets::seeds(&[target]);
    // Panics are findings, reported by the loop below; keep their messages off the terminal.
    std::panic::set_hook(Box::new(|info| {
        let at = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_default();
        PANIC.with(|p| *p.borrow_mut() = format!("{msg}{at}"));
    }));
    let deadline = Instant::now() + Duration::from_secs_f64(args.seconds);
    let mut out = std::io::stdout().lock();
    let mut case = start;
    while Instant::now() < deadline {
        let _ = writeln!(out, "start {case}");
        let _ = out.flush();
        let input = target.generate(&seeds, args.seed, case);
        let result = std::panic::catch_unwind(|| target.run(&input));
        let finding = match result {
            Ok(Ok(())) => None,
            Ok(Err(wrong)) => Some(("wrong", wrong)),
            Err(_) => Some(("panic", PANIC.with(|p| p.borrow().clone()))),
        };
        if let Some((kind, msg)) = finding {
            let _ = writeln!(out, "find {case} {kind} {}", msg.replace('\n', "\\n"));
        }
        case += 1;
    }
    let _ = writeln!(out, "done {}", case - start);
}

thread_local! {
    static PANIC: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
}
