//! AST -> canonical `.qspec` text (`qatc fmt`). Parsing the output gives the same AST.

use std::fmt::Write;

use super::ast::*;

/// The canonical text of a spec: four-space indents, aligned layer names, named arguments.
pub fn format_spec(spec: &Spec) -> String {
    let mut out = String::new();
    model(&mut out, &spec.model);
    if let Some(q) = &spec.quantize {
        out.push('\n');
        quantize(&mut out, q);
    }
    if let Some(t) = &spec.train {
        out.push('\n');
        train(&mut out, t);
    }
    out
}

fn model(out: &mut String, m: &Model) {
    let width = m
        .layers
        .iter()
        .map(|l| l.name.node.len())
        .chain(["input".len()])
        .max()
        .unwrap_or(0)
        + 1;
    // `key` padded to `width` by hand: a format width above 65535 panics, and names may be
    // longer.
    let entry = |out: &mut String, key: &str, value: &str| {
        let pad = " ".repeat(width.saturating_sub(key.len()));
        let _ = writeln!(out, "    {key}{pad} {value}");
    };
    let _ = writeln!(out, "model {} {{", m.name.node);
    entry(&mut *out, "input:", &list(m.input.node.iter()));
    for layer in &m.layers {
        entry(
            &mut *out,
            &format!("{}:", layer.name.node),
            &layer_text(layer),
        );
    }
    if let Some(output) = &m.output {
        entry(&mut *out, "output:", &output.node);
    }
    out.push_str("}\n");
}

/// `Type(inputs..., name: value, ...)`, or just `Type` when there is nothing to say.
pub fn layer_text(layer: &Layer) -> String {
    let mut args: Vec<String> = layer.inputs.iter().map(|i| i.node.clone()).collect();
    let mut named = |name: &str, value: Option<String>| {
        if let Some(v) = value {
            args.push(format!("{name}: {v}"));
        }
    };
    match &layer.op.node {
        Op::Linear { out, bias } => {
            named("out", Some(out.to_string()));
            named("bias", bias.map(|b| b.to_string()));
        }
        Op::Conv2d {
            out,
            kernel,
            stride,
            padding,
            groups,
            bias,
        } => {
            named("out", Some(out.to_string()));
            named("kernel", Some(size2(*kernel)));
            named("stride", stride.map(size2));
            named("padding", padding.map(size2));
            named("groups", groups.map(|g| g.to_string()));
            named("bias", bias.map(|b| b.to_string()));
        }
        Op::MaxPool2d(pool) | Op::AvgPool2d(pool) => {
            named("kernel", Some(size2(pool.kernel)));
            named("stride", pool.stride.map(size2));
            named("padding", pool.padding.map(size2));
        }
        Op::Norm(n) => {
            named("eps", n.eps.map(number));
            named("momentum", n.momentum.map(number));
        }
        Op::Dropout { p } => named("p", p.map(number)),
        Op::Activation(a) => {
            for (name, value) in a.0.args() {
                named(name, Some(number(value)));
            }
        }
        Op::GlobalAvgPool | Op::Flatten | Op::Combine(_) => {}
    }
    let ty = layer.op.node.type_name();
    if args.is_empty() {
        ty.to_string()
    } else {
        format!("{ty}({})", args.join(", "))
    }
}

fn quantize(out: &mut String, q: &Quantize) {
    out.push_str("quantize {\n");
    if let Some(b) = &q.backend {
        let _ = writeln!(out, "    backend: {}", b.node.name());
    }
    if let Some(d) = &q.default {
        let _ = writeln!(out, "    default: {}", d.node);
    }
    for def in &q.qconfigs {
        let _ = writeln!(out, "\n    qconfig {} {{", def.name.node);
        for (field, fq) in [("activation", &def.activation), ("weight", &def.weight)] {
            if let Some(fq) = fq {
                let _ = writeln!(out, "        {field}: {}", fake_quant(&fq.node));
            }
        }
        out.push_str("    }\n");
    }
    if !q.overrides.is_empty() && !q.qconfigs.is_empty() {
        out.push('\n');
    }
    for o in &q.overrides {
        let _ = writeln!(out, "    {}: {}", o.layer.node, o.qconfig.node);
    }
    out.push_str("}\n");
}

fn fake_quant(fq: &FakeQuantSpec) -> String {
    let mut args = Vec::new();
    let mut named = |name: &str, value: Option<String>| {
        if let Some(v) = value {
            args.push(format!("{name}: {v}"));
        }
    };
    named("observer", fq.observer.map(|o| o.name().to_string()));
    named("dtype", fq.dtype.map(|d| d.name().to_string()));
    named("scheme", fq.scheme.map(|s| s.name().to_string()));
    named("reduce_range", fq.reduce_range.map(|b| b.to_string()));
    named("quant_min", fq.quant_min.map(|n| n.to_string()));
    named("quant_max", fq.quant_max.map(|n| n.to_string()));
    named("averaging", fq.averaging.map(number));
    named("learnable", fq.learnable.map(|b| b.to_string()));
    format!("fake_quant({})", args.join(", "))
}

fn train(out: &mut String, t: &Train) {
    out.push_str("train {\n");
    let mut line = |key: &str, value: Option<String>| {
        if let Some(v) = value {
            let _ = writeln!(out, "    {key}: {v}");
        }
    };
    line("data", t.data.as_ref().map(|d| data_source(&d.node)));
    line(
        "normalize",
        t.normalize.as_ref().map(|n| {
            format!(
                "{{ mean: {}, std: {} }}",
                per_channel(&n.node.mean),
                per_channel(&n.node.std)
            )
        }),
    );
    line("epochs", t.epochs.as_ref().map(|n| n.node.to_string()));
    line("batch", t.batch.as_ref().map(|n| n.node.to_string()));
    line(
        "optimizer",
        t.optimizer.as_ref().map(|o| optimizer(&o.node)),
    );
    line("schedule", t.schedule.as_ref().map(|s| schedule(&s.node)));
    line(
        "pretrain",
        t.pretrain.as_ref().map(|n| format!("{} epochs", n.node)),
    );
    line(
        "freeze_bn",
        t.freeze_bn
            .as_ref()
            .map(|n| format!("after {} epochs", n.node)),
    );
    line(
        "freeze_observers",
        t.freeze_observers
            .as_ref()
            .map(|n| format!("after {} epochs", n.node)),
    );
    line("seed", t.seed.as_ref().map(|n| n.node.to_string()));
    line("validation", t.validation.as_ref().map(|f| number(f.node)));
    line("init", t.init.as_ref().map(|p| string(&p.node)));
    out.push_str("}\n");
}

fn data_source(d: &DataSource) -> String {
    match d {
        DataSource::Mnist { dir } => format!("mnist({})", string(dir)),
        DataSource::Cifar10 { dir } => format!("cifar10({})", string(dir)),
        DataSource::Idx {
            images,
            labels,
            test_images,
            test_labels,
        } => {
            let mut args = vec![
                format!("images: {}", string(images)),
                format!("labels: {}", string(labels)),
            ];
            if let Some(p) = test_images {
                args.push(format!("test_images: {}", string(p)));
            }
            if let Some(p) = test_labels {
                args.push(format!("test_labels: {}", string(p)));
            }
            format!("idx({})", args.join(", "))
        }
    }
}

fn optimizer(o: &Optimizer) -> String {
    let mut args = Vec::new();
    let mut named = |name: &str, value: Option<f64>| {
        if let Some(v) = value {
            args.push(format!("{name}: {}", number(v)));
        }
    };
    let name = match o {
        Optimizer::Sgd {
            lr,
            momentum,
            weight_decay,
            nesterov,
        } => {
            named("lr", Some(*lr));
            named("momentum", *momentum);
            named("weight_decay", *weight_decay);
            if let Some(n) = nesterov {
                args.push(format!("nesterov: {n}"));
            }
            "sgd"
        }
        Optimizer::Adam {
            lr,
            beta1,
            beta2,
            eps,
            weight_decay,
        } => {
            named("lr", *lr);
            named("beta1", *beta1);
            named("beta2", *beta2);
            named("eps", *eps);
            named("weight_decay", *weight_decay);
            "adam"
        }
    };
    format!("{name}({})", args.join(", "))
}

fn schedule(s: &Schedule) -> String {
    match s {
        Schedule::Cosine => "cosine".into(),
        Schedule::Step { step_size, gamma } => match gamma {
            Some(g) => format!("step(step_size: {step_size}, gamma: {})", number(*g)),
            None => format!("step(step_size: {step_size})"),
        },
    }
}

fn per_channel(p: &PerChannel) -> String {
    match p {
        PerChannel::All(v) => number(*v),
        PerChannel::Each(vs) => list(vs.iter().map(|v| number(*v))),
    }
}

fn size2(s: Size2) -> String {
    match s {
        Size2::Square(n) => n.to_string(),
        Size2::Rect([h, w]) => format!("[{h}, {w}]"),
    }
}

fn list<T: ToString>(items: impl Iterator<Item = T>) -> String {
    format!(
        "[{}]",
        items.map(|i| i.to_string()).collect::<Vec<_>>().join(", ")
    )
}

/// A float that reads back as the same f64: Rust's shortest round-trip form, always with a point
/// or exponent so it stays a float in the source (`0.01`, `1.0`, `1e-5`).
pub fn number(x: f64) -> String {
    let s = format!("{x:?}");
    if s.contains('.') || s.contains('e') || s.contains("inf") || s.contains("NaN") {
        s
    } else {
        format!("{s}.0")
    }
}

/// A string literal. The grammar has no escapes, so a `"` or newline cannot be written; such
/// strings only arise from YAML and are rejected by the checker.
fn string(s: &str) -> String {
    format!("\"{s}\"")
}

/// [`format_spec`] with the comments of `source` kept: a comment on its own lines stays above
/// the entry (or the `}`) that followed it, and a comment after code stays at the end of that
/// entry's line. Entries are found by their block and key (`train/epochs`,
/// `quantize/qconfig wide/weight`), so moving or re-spacing them keeps their comments; a comment
/// whose entry is gone goes to the end of the file rather than being lost.
pub fn format_with_comments(spec: &Spec, source: &str) -> String {
    let formatted = format_spec(spec);
    // Comments by anchor: (lines above it, the comment after it on its line).
    let mut comments: Vec<(String, Vec<String>, Option<String>)> = Vec::new();
    let mut pending: Vec<String> = Vec::new();
    let mut blocks = Anchors::default();
    for line in source.lines() {
        let (code, comment) = split_comment(line);
        match blocks.anchor(code) {
            // A blank line before a comment stays (one, as an empty entry).
            None if comment.is_none() => {
                if pending.last().is_some_and(|c| !c.is_empty()) || pending.is_empty() {
                    pending.push(String::new());
                }
            }
            None => pending.extend(comment.map(str::to_string)),
            Some(anchor) => {
                // Blank lines after the comments are the formatter's to place.
                while pending.last().is_some_and(String::is_empty) {
                    pending.pop();
                }
                comments.push((
                    anchor,
                    std::mem::take(&mut pending),
                    comment.map(str::to_string),
                ));
            }
        }
    }
    let mut out = String::new();
    let mut blocks = Anchors::default();
    for line in formatted.lines() {
        let anchor = blocks.anchor(line);
        let found = anchor.and_then(|a| comments.iter().position(|(b, ..)| *b == a));
        let (above, after) = match found {
            Some(i) => {
                let (_, above, after) = comments.remove(i);
                (above, after)
            }
            None => (Vec::new(), None),
        };
        // Comments above a `}` belong to the block's body, one level in.
        let indent = format!(
            "{}{}",
            &line[..line.len() - line.trim_start().len()],
            if line.trim() == "}" { "    " } else { "" }
        );
        for c in above {
            if c.is_empty() {
                // Not twice, and not right after a block's `{`.
                if !(out.is_empty() || out.ends_with("\n\n") || out.ends_with("{\n")) {
                    out.push('\n');
                }
            } else {
                let _ = writeln!(out, "{indent}{c}");
            }
        }
        match after {
            Some(c) => {
                let _ = writeln!(out, "{line}  {c}");
            }
            None => {
                let _ = writeln!(out, "{line}");
            }
        }
    }
    // Comments whose entry the formatted text no longer has, and those at the end of the file.
    let rest: Vec<String> = comments
        .into_iter()
        .flat_map(|(_, above, after)| above.into_iter().chain(after))
        .chain(pending)
        .filter(|c| !c.is_empty())
        .collect();
    if !rest.is_empty() {
        out.push('\n');
        for c in rest {
            let _ = writeln!(out, "{c}");
        }
    }
    out
}

/// A line's code and its comment (`# ...`, outside strings; strings have no escapes).
fn split_comment(line: &str) -> (&str, Option<&str>) {
    let mut in_string = false;
    for (i, c) in line.char_indices() {
        match c {
            '"' => in_string = !in_string,
            '#' if !in_string => return (line[..i].trim_end(), Some(line[i..].trim_end())),
            _ => {}
        }
    }
    (line.trim_end(), None)
}

/// Names the lines of a spec by their block and key, line by line.
#[derive(Default)]
struct Anchors {
    path: Vec<String>,
}

impl Anchors {
    /// The anchor of a line of code (`None` for a blank line): its block path and key, or the
    /// block's header or closing brace.
    fn anchor(&mut self, code: &str) -> Option<String> {
        let code = code.trim();
        if code.is_empty() {
            return None;
        }
        let here = self.path.join("/");
        if code == "}" {
            self.path.pop();
            return Some(format!("{here}/}}"));
        }
        if let Some(header) = code.strip_suffix('{') {
            // `model NAME {`, `quantize {`, `qconfig NAME {`.
            let header = header.trim();
            let key = if header.starts_with("model") {
                "model"
            } else {
                header
            };
            self.path.push(key.to_string());
            return Some(format!("{here}/{key}"));
        }
        let key = code.split(':').next().unwrap_or(code).trim();
        Some(format!("{here}/{key}"))
    }
}
