"""PyTorch's int8 inference on this machine, for `qatc bench` to be compared with.

Builds the eager-mode quantized LeNet and MLP of specs/ (fbgemm, per-channel weights, as
`qat(fbgemm)` converts), calibrates them on random inputs and prints, for 2 threads, the median
batch-1 latency (µs) and the median batch-256 throughput (images/s), like `qatc bench --json`.

    python3 tools/torch_int8_bench.py [--threads 2]
"""
import argparse
import json
import statistics
import time

import torch
import torch.nn as nn
import torch.ao.quantization as tq


class LeNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.quant, self.dequant = tq.QuantStub(), tq.DeQuantStub()
        self.conv1, self.relu1 = nn.Conv2d(1, 16, 5), nn.ReLU()
        self.pool1 = nn.MaxPool2d(2, 2)
        self.conv2, self.relu2 = nn.Conv2d(16, 32, 5), nn.ReLU()
        self.pool2 = nn.MaxPool2d(2, 2)
        self.fc1, self.relu3 = nn.Linear(512, 120), nn.ReLU()
        self.fc2, self.relu4 = nn.Linear(120, 84), nn.ReLU()
        self.fc3 = nn.Linear(84, 10)

    def forward(self, x):
        x = self.quant(x)
        x = self.pool1(self.relu1(self.conv1(x)))
        x = self.pool2(self.relu2(self.conv2(x)))
        x = torch.flatten(x, 1)
        x = self.relu3(self.fc1(x))
        x = self.relu4(self.fc2(x))
        return self.dequant(self.fc3(x))

    fuse = [["conv1", "relu1"], ["conv2", "relu2"], ["fc1", "relu3"], ["fc2", "relu4"]]


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.quant, self.dequant = tq.QuantStub(), tq.DeQuantStub()
        self.fc1, self.relu = nn.Linear(784, 256), nn.ReLU()
        self.fc2 = nn.Linear(256, 10)

    def forward(self, x):
        x = self.quant(torch.flatten(x, 1))
        return self.dequant(self.fc2(self.relu(self.fc1(x))))

    fuse = [["fc1", "relu"]]


def quantized(model):
    torch.backends.quantized.engine = "fbgemm"
    model.eval()
    model = tq.fuse_modules(model, model.fuse)
    model.qconfig = tq.get_default_qconfig("fbgemm")
    tq.prepare(model, inplace=True)
    with torch.no_grad():
        for _ in range(4):
            model(torch.rand(64, 1, 28, 28) * 2 - 1)
    return tq.convert(model)


def median_time(f, runs, warmup=20):
    for _ in range(warmup):
        f()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        f()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    for name, model in [("lenet", LeNet()), ("mlp", MLP())]:
        q = quantized(model)
        x1 = torch.rand(1, 1, 28, 28) * 2 - 1
        x256 = torch.rand(256, 1, 28, 28) * 2 - 1
        with torch.inference_mode():
            b1 = median_time(lambda: q(x1), 2000)
            b256 = median_time(lambda: q(x256), 50)
        print(json.dumps({
            "model": name, "engine": "fbgemm", "threads": args.threads, "torch": torch.__version__,
            "b1_us": round(b1 * 1e6, 2), "b256_img_s": round(256 / b256),
        }))


if __name__ == "__main__":
    main()
