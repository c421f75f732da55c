"""PyTorch 2.9 eager-mode QAT training speed for the specs `qatc bench-train` measures, as the
workflow qatc replaces would run them: same data (data/mnist10k), model, qconfig, optimizer, batch
64, schedule. Prints one JSON object: images/s of each epoch's training loop (batches, forward,
loss, backward, step; not evaluation) and their median, the figure `qatc bench-train` reports.

    pip install torch==2.9.1 && python3 tools/torch_qat_bench.py lenet|mlp|lenet_custom [EPOCHS]

- lenet: specs/lenet_mnist.qspec (fbgemm, SGD(0.01, 0.9)).
- mlp: specs/mnist_mlp.qspec (fbgemm, 784 -> 256 -> ReLU -> 10).
- lenet_custom: specs/lenet_custom.qspec: Conv+BN+ReLU fused for QAT, qnnpack, fc1 with a
  moving-average activation observer (averaging 0.01) and per-channel symmetric qint8 weights, fc3
  left in float, SGD with weight decay 1e-4 and a cosine schedule, 1 epoch of float pretraining
  (fake quant and observers off), BatchNorm statistics frozen after 4 epochs, observers after 5.

Compare with `tools/train_bench.py`, which interleaves this script and `qatc bench-train`.
"""
import gzip
import json
import os
import statistics
import struct
import sys
import time

import torch
import torch.nn as nn
import torch.ao.quantization as tq
import torch.ao.nn.intrinsic.qat as nniqat

arch = sys.argv[1] if len(sys.argv) > 1 else "lenet"
epochs = int(sys.argv[2]) if len(sys.argv) > 2 else 3
seed = 1 if arch == "lenet_custom" else 0
torch.manual_seed(seed)
torch.set_num_threads(2)


def idx(path):
    b = gzip.open(path).read()
    nd = b[3]
    dims = struct.unpack(">" + "I" * nd, b[4:4 + 4 * nd])
    return torch.frombuffer(bytearray(b[4 + 4 * nd:]), dtype=torch.uint8).reshape(dims)


d = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "data", "mnist10k") + "/"
xtr = ((idx(d + "train-images-idx3-ubyte.gz").float() / 255 - 0.5) / 0.5).unsqueeze(1)
ytr = idx(d + "train-labels-idx1-ubyte.gz").long()


class LeNet(nn.Module):
    def __init__(s, bn):
        super().__init__()
        s.quant = tq.QuantStub()
        s.dequant = tq.DeQuantStub()
        s.conv1 = nn.Conv2d(1, 16, 5)
        s.bn1 = nn.BatchNorm2d(16) if bn else nn.Identity()
        s.relu1 = nn.ReLU()
        s.pool1 = nn.MaxPool2d(2, 2)
        s.conv2 = nn.Conv2d(16, 32, 5)
        s.bn2 = nn.BatchNorm2d(32) if bn else nn.Identity()
        s.relu2 = nn.ReLU()
        s.pool2 = nn.MaxPool2d(2, 2)
        s.fc1 = nn.Linear(512, 120)
        s.relu3 = nn.ReLU()
        s.fc2 = nn.Linear(120, 84)
        s.relu4 = nn.ReLU()
        s.fc3 = nn.Linear(84, 10)
        s.bn = bn

    def forward(s, x):
        x = s.quant(x)
        x = s.pool1(s.relu1(s.bn1(s.conv1(x))))
        x = s.pool2(s.relu2(s.bn2(s.conv2(x))))
        x = x.reshape(x.shape[0], -1)
        x = s.relu4(s.fc2(s.relu3(s.fc1(x))))
        if s.bn:  # fc3 stays float (`fc3: none`): dequantize before it
            return s.fc3(s.dequant(x))
        return s.dequant(s.fc3(x))


class Mlp(nn.Module):
    def __init__(s):
        super().__init__()
        s.quant = tq.QuantStub()
        s.dequant = tq.DeQuantStub()
        s.fc1 = nn.Linear(784, 256)
        s.relu = nn.ReLU()
        s.fc2 = nn.Linear(256, 10)

    def forward(s, x):
        x = s.quant(x).reshape(x.shape[0], -1)
        return s.dequant(s.fc2(s.relu(s.fc1(x))))


pretrain, freeze_bn, freeze_observers = 0, None, None
if arch == "mlp":
    m = Mlp().train()
    m = tq.fuse_modules_qat(m, [["fc1", "relu"]])
    m.qconfig = tq.get_default_qat_qconfig("fbgemm")
    opt = torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9)
elif arch == "lenet":
    m = LeNet(False).train()
    m = tq.fuse_modules_qat(m, [["conv1", "relu1"], ["conv2", "relu2"], ["fc1", "relu3"],
                                ["fc2", "relu4"]])
    m.qconfig = tq.get_default_qat_qconfig("fbgemm")
    opt = torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9)
elif arch == "lenet_custom":
    torch.backends.quantized.engine = "qnnpack"
    m = LeNet(True).train()
    m = tq.fuse_modules_qat(m, [["conv1", "bn1", "relu1"], ["conv2", "bn2", "relu2"],
                                ["fc1", "relu3"], ["fc2", "relu4"]])
    m.qconfig = tq.get_default_qat_qconfig("qnnpack")
    m.fc1.qconfig = tq.QConfig(
        activation=tq.FakeQuantize.with_args(
            observer=tq.MovingAverageMinMaxObserver, averaging_constant=0.01,
            quant_min=0, quant_max=255, dtype=torch.quint8),
        weight=tq.FakeQuantize.with_args(
            observer=tq.PerChannelMinMaxObserver, quant_min=-128, quant_max=127,
            dtype=torch.qint8, qscheme=torch.per_channel_symmetric))
    m.fc3.qconfig = None
    pretrain, freeze_bn, freeze_observers = 1, 4, 5
    opt = torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
else:
    sys.exit(f"unknown arch {arch!r}: lenet, mlp or lenet_custom")
tq.prepare_qat(m, inplace=True)
sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs) if arch == "lenet_custom" \
    else None
lossf = nn.CrossEntropyLoss()
rates = []
for epoch in range(epochs):
    if epoch < pretrain:
        m.apply(tq.disable_fake_quant)
        m.apply(tq.disable_observer)
    else:
        m.apply(tq.enable_fake_quant)
        m.apply(tq.enable_observer)
    if freeze_bn is not None and epoch >= freeze_bn:
        m.apply(nniqat.freeze_bn_stats)
    if freeze_observers is not None and epoch >= freeze_observers:
        m.apply(tq.disable_observer)
    m.train()
    perm = torch.randperm(len(xtr))
    t0 = time.perf_counter()
    for i in range(0, len(xtr), 64):
        b = perm[i:i + 64]
        opt.zero_grad()
        loss = lossf(m(xtr[b]), ytr[b])
        loss.backward()
        opt.step()
    rates.append(len(xtr) / (time.perf_counter() - t0))
    if sched:
        sched.step()
print(json.dumps({"arch": arch, "epochs": epochs, "images_per_s": [round(r) for r in rates],
                  "median_images_per_s": round(statistics.median(rates))}))
