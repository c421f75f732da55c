"""qatc's QAT training speed against PyTorch 2.9's on this machine, in the same run: rounds of
`qatc bench-train SPEC --epochs N` and `tools/torch_qat_bench.py ARCH N` interleaved, 2 threads
each. Each side's figure per round is its median epoch; the table gives the median over rounds, the
ratio of the two medians, and the median of the rounds' own ratios.

    pip install torch==2.9.1
    cargo build --release && python3 tools/train_bench.py [--rounds 5] [--epochs 3]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.join(HERE, "..")
QATC = os.environ.get("QATC", os.path.join(ROOT, "target", "release", "qatc"))
PAIRS = [("lenet", "specs/lenet_mnist.qspec"), ("mlp", "specs/mnist_mlp.qspec"),
         ("lenet_custom", "specs/lenet_custom.qspec")]


def run_json(cmd):
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT).stdout
    return json.loads(out.strip().splitlines()[-1])


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--only", choices=[a for a, _ in PAIRS])
    args = p.parse_args()
    pairs = [(a, s) for a, s in PAIRS if args.only in (None, a)]
    figures = {a: {"qatc": [], "torch": []} for a, _ in pairs}
    for r in range(args.rounds):
        for arch, spec in pairs:
            q = run_json([QATC, "bench-train", spec, "--epochs", str(args.epochs), "--threads", "2",
                          "--json"])
            t = run_json([sys.executable, os.path.join(HERE, "torch_qat_bench.py"), arch,
                          str(args.epochs)])
            figures[arch]["qatc"].append(q["median_images_per_s"])
            figures[arch]["torch"].append(t["median_images_per_s"])
            print(f"round {r + 1}: {arch:<13} qatc {q['median_images_per_s']:>8.0f} img/s   "
                  f"torch {t['median_images_per_s']:>8.0f} img/s", file=sys.stderr, flush=True)
    # The machine is shared: load drifts between rounds, so the ratio within each round (both
    # sides ran back to back) is the steadier figure; its median is given beside the ratio of the
    # two medians.
    print(f"{'spec':<14} {'qatc img/s':>11} {'torch img/s':>12} {'ratio':>6} {'per round':>10}   "
          f"(medians of {args.rounds} rounds, {args.epochs} epochs each)")
    for arch, _ in pairs:
        q = statistics.median(figures[arch]["qatc"])
        t = statistics.median(figures[arch]["torch"])
        paired = statistics.median(a / b for a, b in zip(figures[arch]["qatc"],
                                                         figures[arch]["torch"]))
        print(f"{arch:<14} {q:>11.0f} {t:>12.0f} {q / t:>6.2f} {paired:>10.2f}")


if __name__ == "__main__":
    main()
