"""qatc against its peers on this machine, in the same run: `qatc bench`, onnxruntime on the
model `qatc export` writes (the same int8 weights, run by QLinearConv/QGemm), and PyTorch fbgemm
(tools/torch_int8_bench.py's eager-mode model of the same architecture, for lenet and mlp).
Rounds are interleaved and each figure is the median over rounds; the ratios are qatc's.

    pip install onnxruntime numpy [torch==2.9.1]
    python3 tools/peer_bench.py runs/lenet/model.qmodel runs/mlp/model.qmodel [--rounds 5]

Batch 1 runs on one thread (latency, µs); batch 256 on --threads threads (images/s).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import onnxruntime as ort

HERE = os.path.dirname(os.path.abspath(__file__))
QATC = os.environ.get("QATC", os.path.join(HERE, "..", "target", "release", "qatc"))


def median_time(f, runs, warmup=20):
    for _ in range(warmup):
        f()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        f()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def qatc_bench(model, threads):
    out = subprocess.run([QATC, "bench", model, "--json", "--threads", str(threads)],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def ort_bench(onnx_path, shape, threads):
    def session(n):
        o = ort.SessionOptions()
        o.intra_op_num_threads = n
        return ort.InferenceSession(onnx_path, o, providers=["CPUExecutionProvider"])
    s1, sn = session(1), session(threads)
    x1 = np.random.default_rng(0).uniform(-1, 1, (1, *shape)).astype(np.float32)
    x256 = np.random.default_rng(1).uniform(-1, 1, (256, *shape)).astype(np.float32)
    b1 = median_time(lambda: s1.run(["output"], {"input": x1}), 2000)
    b256 = median_time(lambda: sn.run(["output"], {"input": x256}), 50)
    return {"b1_us": b1 * 1e6, "b256_img_s": 256 / b256}


def torch_bench(name, threads):
    try:
        import torch
        sys.path.insert(0, HERE)
        import torch_int8_bench as tb
    except ImportError:
        return None
    models = {"lenet": tb.LeNet, "mlp": tb.MLP}
    if name not in models:
        return None
    torch.set_num_threads(threads)
    q = tb.quantized(models[name]())
    x1 = torch.rand(1, 1, 28, 28) * 2 - 1
    x256 = torch.rand(256, 1, 28, 28) * 2 - 1
    with torch.inference_mode():
        torch.set_num_threads(1)
        b1 = tb.median_time(lambda: q(x1), 2000)
        torch.set_num_threads(threads)
        b256 = tb.median_time(lambda: q(x256), 50)
    return {"b1_us": b1 * 1e6, "b256_img_s": 256 / b256}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("models", nargs="+")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    tmp = tempfile.mkdtemp()
    for model in args.models:
        onnx_path = os.path.join(tmp, os.path.basename(os.path.dirname(model) or "m") + ".onnx")
        subprocess.run([QATC, "export", model, "-o", onnx_path], check=True, capture_output=True)
        import onnx
        dims = onnx.load(onnx_path).graph.input[0].type.tensor_type.shape.dim[1:]
        shape = [d.dim_value for d in dims]
        rounds = {"qatc": [], "onnxruntime": [], "torch": []}
        name = None
        for _ in range(args.rounds):
            q = qatc_bench(model, args.threads)
            name = q["model"]
            rounds["qatc"].append({"b1_us": q["jit_b1_us"], "b256_img_s": q["jit_b256_img_s"],
                                   "peak_gmacs": q["peak_gmacs"],
                                   "b1_pct": q["jit_b1_peak_pct"],
                                   "b256_pct": q["jit_b256_peak_pct"]})
            rounds["onnxruntime"].append(ort_bench(onnx_path, shape, args.threads))
            t = torch_bench(name, args.threads)
            if t:
                rounds["torch"].append(t)
        med = {engine: {k: statistics.median(r[k] for r in rs) for k in rs[0]}
               for engine, rs in rounds.items() if rs}
        q = med["qatc"]
        print(f"{name}: peak {q['peak_gmacs']:.1f} GMAC/s per core; qatc at "
              f"{q['b1_pct']:.0f} % (b1) and {q['b256_pct']:.0f} % per core (b256)")
        print(f"  {'engine':<12} {'b1 µs':>10} {'b256 img/s':>12} {'qatc b1 speedup':>16} "
              f"{'qatc b256 ratio':>16}")
        for engine, m in med.items():
            print(f"  {engine:<12} {m['b1_us']:>10.2f} {m['b256_img_s']:>12.0f} "
                  f"{m['b1_us'] / q['b1_us']:>15.2f}x {q['b256_img_s'] / m['b256_img_s']:>15.2f}x")
        print(json.dumps({"model": name, "medians": med, "rounds": args.rounds}))


if __name__ == "__main__":
    main()
