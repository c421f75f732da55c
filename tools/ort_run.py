#!/usr/bin/env python3
"""Runs an ONNX model in onnxruntime on a .npy of float32 samples; saves every output as .npy.

Usage: ort_run.py MODEL.onnx INPUT.npy OUTDIR [--optimized FILE.onnx]

Writes OUTDIR/<output name>.npy for each graph output (`:` in a name becomes `_`), and
OUTDIR/ops.txt, the op types onnxruntime runs after its fusions (QLinearConv, QGemm, ... when it
runs the model in int8). Used by tests/onnx.rs to compare onnxruntime with `qatc run`.
"""
import os
import sys
import tempfile

import numpy as np
import onnx
import onnxruntime as ort


def main():
    model, inputs, outdir = sys.argv[1:4]
    os.makedirs(outdir, exist_ok=True)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    optimized = os.path.join(tempfile.mkdtemp(), "optimized.onnx")
    options.optimized_model_filepath = optimized
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    values = session.run(names, {"input": np.load(inputs)})
    for name, value in zip(names, values):
        np.save(os.path.join(outdir, name.replace(":", "_") + ".npy"), value)
    ops = sorted({n.op_type for n in onnx.load(optimized).graph.node})
    with open(os.path.join(outdir, "ops.txt"), "w") as f:
        f.write("\n".join(ops) + "\n")


if __name__ == "__main__":
    main()
