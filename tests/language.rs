//! The language front end on the example specs: parse, check, YAML and canonical round trips.
//! Snapshots: the AST (YAML form) and the `check` table of every file in specs/.

mod common;

use qatc::syntax::{self, fmt::format_spec, Spec};

fn parse_ok(name: &str, text: &str) -> Spec {
    let (parsed, source) = syntax::parse_source(name, text);
    parsed.unwrap_or_else(|d| panic!("{}", qatc::diag::render(&d, &source.name, &source.text)))
}

#[test]
fn every_spec_parses_checks_and_is_snapshotted() {
    let specs = common::spec_files();
    assert!(specs.len() >= 4, "the four example specs are in specs/");
    for path in specs {
        let name = common::stem(&path);
        let text = std::fs::read_to_string(&path).unwrap();
        let (result, source) = qatc::front_end(&path.display().to_string(), &text);
        let qatc::Checked {
            model,
            spec,
            warnings,
        } = result
            .unwrap_or_else(|d| panic!("{}", qatc::diag::render(&d, &source.name, &source.text)));
        assert!(
            warnings.is_empty(),
            "{name}: unexpected warnings {warnings:?}"
        );
        insta::assert_snapshot!(format!("ast_{name}"), syntax::to_yaml(&spec));
        insta::assert_snapshot!(format!("table_{name}"), qatc::check::model_table(&model));
    }
}

#[test]
fn lenet_shapes_and_macs_match_pytorch() {
    let text = std::fs::read_to_string(common::root().join("specs/lenet_mnist.qspec")).unwrap();
    let (result, _) = qatc::front_end("lenet_mnist.qspec", &text);
    let model = result.expect("lenet checks").model;
    let layer = |name: &str| model.layers.iter().find(|l| l.name == name).unwrap();
    assert_eq!(layer("conv1").out_shape, vec![16, 24, 24]);
    assert_eq!(layer("flat").out_shape, vec![512]);
    assert!(matches!(
        layer("fc1").kind,
        qatc::check::LayerKind::Linear {
            in_features: 512,
            ..
        }
    ));
    let macs: usize = model.layers.iter().map(|l| l.macs).sum();
    assert_eq!(macs, 1_121_960);
    // torch: sum(p.numel() for p in QuantizedCNN().parameters())
    assert_eq!(model.layers.iter().map(|l| l.params).sum::<usize>(), 85_822);
}

#[test]
fn qspec_yaml_qspec_round_trip_keeps_the_ast() {
    for path in common::spec_files() {
        let text = std::fs::read_to_string(&path).unwrap();
        let ast = parse_ok("spec.qspec", &text);
        let yaml = syntax::to_yaml(&ast);
        let from_yaml = parse_ok("spec.yaml", &yaml);
        assert_eq!(ast, from_yaml, "{}: YAML round trip", path.display());
        let canonical = format_spec(&from_yaml);
        let again = parse_ok("spec.qspec", &canonical);
        assert_eq!(ast, again, "{}: canonical text round trip", path.display());
        assert_eq!(
            canonical,
            format_spec(&again),
            "{}: fmt is idempotent",
            path.display()
        );
    }
}

#[test]
fn yaml_specs_check_like_qspec_specs() {
    let text = std::fs::read_to_string(common::root().join("specs/lenet_custom.qspec")).unwrap();
    let yaml = syntax::to_yaml(&parse_ok("a.qspec", &text));
    let (from_yaml, _) = qatc::front_end("lenet_custom.yaml", &yaml);
    let (from_qspec, _) = qatc::front_end("lenet_custom.qspec", &text);
    let table = |r: Result<qatc::Checked, _>| qatc::check::model_table(&r.expect("checks").model);
    assert_eq!(table(from_yaml), table(from_qspec));
}

#[test]
fn bad_yaml_is_an_error_that_names_the_problem() {
    let (result, source) = syntax::parse_source(
        "x.yaml",
        "model:\n  name: m\n  input: [1, 2]\n  layers: [{name: a, op: {type: Linaer, out: 2}}]\n",
    );
    let diags = result.expect_err("Linaer is not a layer type");
    let text = qatc::diag::render(&diags, &source.name, &source.text);
    assert!(text.contains("Linaer"), "{text}");
}

/// A small deterministic generator of random valid specs, for round trips beyond specs/.
struct Gen(u64);

impl Gen {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len() as u64) as usize]
    }
    fn float(&mut self) -> String {
        let v = (self.below(999) + 1) as f64 / 1000.0;
        format!("{v:?}")
    }

    fn spec(&mut self) -> String {
        let mut s = String::from("model g {\n    input: [3, 16, 16]\n");
        for i in 0..self.below(6) + 1 {
            let layer = match self.below(9) {
                0 => format!(
                    "Conv2d(out: {}, kernel: {}, stride: [1, {}], padding: {}, bias: false)",
                    self.below(8) + 1,
                    self.below(3) + 1,
                    self.below(2) + 1,
                    self.below(2)
                ),
                1 => format!("MaxPool2d({})", self.below(3) + 1),
                2 => "AvgPool2d(kernel: [2, 3], stride: 1, padding: [1, 1])".to_string(),
                3 => format!("Dropout(p: {})", self.float()),
                4 => format!("BatchNorm2d(eps: 1e-3, momentum: {})", self.float()),
                5 => format!("Linear(out: {}, bias: true)", self.below(64) + 1),
                6 => "Add(l0, input)".to_string(),
                _ => self
                    .pick(&["ReLU", "ReLU6", "Flatten", "GlobalAvgPool"])
                    .to_string(),
            };
            s.push_str(&format!("    l{i}: {layer}\n"));
        }
        s.push_str("}\n");
        if self.below(3) > 0 {
            s.push_str("quantize {\n");
            if self.below(2) == 0 {
                let backend = self.pick(&["fbgemm", "qnnpack", "native"]);
                s.push_str(&format!("    backend: {backend}\n"));
            }
            s.push_str(&format!(
                "    qconfig q {{\n        activation: fake_quant(observer: {}, reduce_range: {}, averaging: {})\n        weight: fake_quant(scheme: {}, quant_min: -{}, quant_max: {})\n    }}\n",
                self.pick(&["minmax", "moving_average_minmax"]),
                self.pick(&["true", "false"]),
                self.float(),
                self.pick(&["affine", "symmetric"]),
                self.below(128),
                self.below(127) + 1
            ));
            s.push_str(&format!(
                "    default: {}\n",
                self.pick(&["q", "qat(fbgemm)", "ptq(qnnpack)", "none"])
            ));
            s.push_str(&format!(
                "    l0: {}\n}}\n",
                self.pick(&["q", "none", "qat(native)"])
            ));
        }
        if self.below(3) > 0 {
            s.push_str("train {\n");
            s.push_str(self.pick(&[
                "    data: mnist(\"a/b\")\n",
                "    data: cifar10(\"c\")\n",
                "    data: idx(images: \"i\", labels: \"l\", test_images: \"ti\")\n",
            ]));
            s.push_str(&format!(
                "    normalize: {{ mean: [{}, 0.5, 0.25], std: {} }}\n",
                self.float(),
                self.float().replace("0.0", "0.5")
            ));
            s.push_str(self.pick(&[
                "    optimizer: sgd(lr: 0.1, momentum: 0.5, weight_decay: 1e-4, nesterov: true)\n",
                "    optimizer: adam(lr: 3e-4, beta1: 0.8, beta2: 0.99, eps: 1e-7)\n",
                "",
            ]));
            s.push_str(self.pick(&[
                "    schedule: cosine\n",
                "    schedule: step(2, gamma: 0.5)\n",
                "    schedule: step(step_size: 3)\n",
                "",
            ]));
            s.push_str(&format!(
                "    epochs: {}\n    batch: {}\n    seed: {}\n",
                self.below(9) + 1,
                self.below(256) + 1,
                self.next() >> 1
            ));
            s.push_str(&format!(
                "    pretrain: {} epoch\n    freeze_bn: after 2 epochs\n}}\n",
                self.below(3)
            ));
        }
        s
    }
}

#[test]
fn generated_specs_round_trip_through_yaml_and_fmt() {
    let mut gen = Gen(0x9e37_79b9_7f4a_7c15);
    for _ in 0..300 {
        let text = gen.spec();
        let ast = parse_ok("g.qspec", &text);
        let from_yaml = syntax::parse_yaml(&syntax::to_yaml(&ast)).expect("own YAML parses");
        assert_eq!(ast, from_yaml, "YAML round trip of\n{text}");
        let again = parse_ok("g.qspec", &format_spec(&ast));
        assert_eq!(ast, again, "fmt round trip of\n{text}");
    }
}

/// PyTorch's spellings: `kernel_size` for `kernel`, `AdaptiveAvgPool2d(1)` for `GlobalAvgPool`;
/// `qatc fmt` writes qatc's.
#[test]
fn pytorch_spellings_are_accepted() {
    let text = "model m { input: [1, 12, 12] c: Conv2d(out: 4, kernel_size: 3) p: MaxPool2d(kernel_size: 2) \
                g: AdaptiveAvgPool2d(1) f: Flatten o: Linear(out: 3) }";
    let spec = parse_ok("torch.qspec", text);
    let canonical = qatc::syntax::fmt::format_spec(&spec);
    for want in [
        "Conv2d(out: 4, kernel: 3)",
        "MaxPool2d(kernel: 2)",
        "g:     GlobalAvgPool",
    ] {
        assert!(canonical.contains(want), "{want} in\n{canonical}");
    }
    let (result, _) = qatc::front_end("torch.qspec", text);
    let model = result.expect("checks").model;
    assert_eq!(model.layers[2].out_shape, vec![4, 1, 1]);

    let (result, source) = qatc::front_end(
        "bad.qspec",
        "model m { input: [1, 8, 8] g: AdaptiveAvgPool2d(2) }",
    );
    let text = qatc::diag::render(&result.err().unwrap(), &source.name, &source.text);
    assert!(text.contains("output size 1"), "{text}");
}
