"""PyTorch eager-mode QAT of specs/lenet_mnist.qspec, for comparing qatc against the workflow it
replaces: same data (data/mnist10k), model, fbgemm qconfig, SGD(0.01, 0.9), batch 64, 5 epochs.
Prints, per epoch: the logits' observer range, train loss, fake-quant test accuracy, images/s.
qatc draws from torch's generator, so `seed: N` in the spec starts from the same weights and visits
the batches in the same order as this script with SEED N.

    pip install torch==2.9.1 && python3 tools/torch_lenet_qat.py SEED [LOSSES.json]

With LOSSES.json it trains one epoch only and writes that epoch's per-batch losses there (the
golden values of tests/training.rs's `first_epoch_losses_match_torch`).
"""
import gzip, struct, sys, time, torch, torch.nn as nn
import torch.ao.quantization as tq
seed = int(sys.argv[1]) if len(sys.argv) > 1 else 0
losses_out = sys.argv[2] if len(sys.argv) > 2 else None
torch.manual_seed(seed)
torch.set_num_threads(2)
def idx(path):
    b = gzip.open(path).read()
    nd = b[3]; dims = struct.unpack(">" + "I" * nd, b[4:4 + 4 * nd])
    return torch.frombuffer(bytearray(b[4 + 4 * nd:]), dtype=torch.uint8).reshape(dims)
import os
d = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "data", "mnist10k") + "/"
xtr = (idx(d + "train-images-idx3-ubyte.gz").float() / 255 - 0.5) / 0.5
ytr = idx(d + "train-labels-idx1-ubyte.gz").long()
xte = (idx(d + "t10k-images-idx3-ubyte.gz").float() / 255 - 0.5) / 0.5
yte = idx(d + "t10k-labels-idx1-ubyte.gz").long()
xtr = xtr.unsqueeze(1); xte = xte.unsqueeze(1)
class LeNet(nn.Module):
    def __init__(s):
        super().__init__()
        s.quant = tq.QuantStub(); s.dequant = tq.DeQuantStub()
        s.conv1 = nn.Conv2d(1, 16, 5); s.relu1 = nn.ReLU(); s.pool1 = nn.MaxPool2d(2, 2)
        s.conv2 = nn.Conv2d(16, 32, 5); s.relu2 = nn.ReLU(); s.pool2 = nn.MaxPool2d(2, 2)
        s.fc1 = nn.Linear(512, 120); s.relu3 = nn.ReLU(); s.fc2 = nn.Linear(120, 84); s.relu4 = nn.ReLU(); s.fc3 = nn.Linear(84, 10)
    def forward(s, x):
        x = s.quant(x)
        x = s.pool1(s.relu1(s.conv1(x))); x = s.pool2(s.relu2(s.conv2(x)))
        x = x.reshape(x.shape[0], -1)
        x = s.relu3(s.fc1(x)); x = s.relu4(s.fc2(x)); x = s.fc3(x)
        return s.dequant(x)
m = LeNet()
m.train()
m = tq.fuse_modules_qat(m, [["conv1", "relu1"], ["conv2", "relu2"], ["fc1", "relu3"], ["fc2", "relu4"]])
m.qconfig = tq.get_default_qat_qconfig("fbgemm")
tq.prepare_qat(m, inplace=True)
opt = torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9)
lossf = nn.CrossEntropyLoss()
batch_losses = []
for epoch in range(1 if losses_out else 5):
    m.train(); perm = torch.randperm(len(xtr)); tl = 0; t0 = time.time()
    for i in range(0, len(xtr), 64):
        idxs = perm[i:i + 64]
        opt.zero_grad(); out = m(xtr[idxs]); loss = lossf(out, ytr[idxs]); loss.backward(); opt.step(); tl += loss.item() * len(idxs)
        batch_losses.append(loss.item())
    dt = time.time() - t0
    m.eval()
    with torch.no_grad():
        acc = (m(xte).argmax(1) == yte).float().mean().item() * 100
    app = m.fc3.activation_post_process; inq = m.quant.activation_post_process
    print("fc3 range", app.activation_post_process.min_val.item(), app.activation_post_process.max_val.item(), "scale", app.scale.item(), "zp", app.zero_point.item(), "input", inq.activation_post_process.min_val.item(), inq.activation_post_process.max_val.item())
    print(f"epoch {epoch+1} loss {tl/len(xtr):.4f} test {acc:.2f} img/s {len(xtr)/dt:.0f}", flush=True)
if losses_out:
    import json
    with open(losses_out, "w") as f:
        json.dump({"spec": "specs/lenet_mnist.qspec", "seed": seed, "torch": torch.__version__,
                   "batch_losses": batch_losses}, f)
        f.write("\n")
