"""Makes the fixtures of tests/import.rs: a float CNN with BatchNorm trained in PyTorch on the
shipped MNIST (data/mnist10k), saved two ways, the two doors `qatc import` and `init:` open:

- tests/fixtures/mnist_bn_cnn.onnx: `torch.onnx.export` (opset 17, BatchNormalization kept, not
  folded into the convolutions);
- tests/fixtures/mnist_bn_cnn.safetensors: `safetensors.torch.save_file(model.state_dict())`;
- tests/fixtures/mnist_bn_cnn.json: PyTorch's float test accuracy on the 2000 test images and
  the logits of the first 8, for the tests to compare with.

    pip install torch==2.9.1 onnx safetensors && python3 tools/torch_import_fixture.py
"""
import gzip, json, os, struct
import torch, torch.nn as nn
from safetensors.torch import save_file

torch.manual_seed(0)
torch.set_num_threads(2)
root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
def idx(path):
    b = gzip.open(path).read()
    nd = b[3]; dims = struct.unpack(">" + "I" * nd, b[4:4 + 4 * nd])
    return torch.frombuffer(bytearray(b[4 + 4 * nd:]), dtype=torch.uint8).reshape(dims)
d = os.path.join(root, "data", "mnist10k") + "/"
norm = lambda x: ((x.float() / 255 - 0.5) / 0.5).unsqueeze(1)
xtr, ytr = norm(idx(d + "train-images-idx3-ubyte.gz")), idx(d + "train-labels-idx1-ubyte.gz").long()
xte, yte = norm(idx(d + "t10k-images-idx3-ubyte.gz")), idx(d + "t10k-labels-idx1-ubyte.gz").long()

class Net(nn.Module):
    """Attribute names are the layer names `qatc import` gives (from the weights' names)."""
    def __init__(s):
        super().__init__()
        s.conv1 = nn.Conv2d(1, 8, 3, padding=1); s.bn1 = nn.BatchNorm2d(8); s.relu1 = nn.ReLU()
        s.pool1 = nn.MaxPool2d(2)
        s.conv2 = nn.Conv2d(8, 16, 3); s.bn2 = nn.BatchNorm2d(16); s.relu2 = nn.ReLU()
        s.pool2 = nn.MaxPool2d(2)
        s.fc1 = nn.Linear(16 * 6 * 6, 64); s.relu3 = nn.ReLU()
        s.fc2 = nn.Linear(64, 10)
    def forward(s, x):
        x = s.pool1(s.relu1(s.bn1(s.conv1(x))))
        x = s.pool2(s.relu2(s.bn2(s.conv2(x))))
        x = torch.flatten(x, 1)
        return s.fc2(s.relu3(s.fc1(x)))

m = Net()
opt = torch.optim.SGD(m.parameters(), lr=0.02, momentum=0.9)
for epoch in range(3):
    m.train(); perm = torch.randperm(len(xtr))
    for i in range(0, len(xtr), 64):
        j = perm[i:i + 64]
        opt.zero_grad(); nn.functional.cross_entropy(m(xtr[j]), ytr[j]).backward(); opt.step()
m.eval()
with torch.no_grad():
    logits = m(xte)
acc = (logits.argmax(1) == yte).float().mean().item() * 100
print(f"float test accuracy {acc:.2f} %")
out = os.path.join(root, "tests", "fixtures")
os.makedirs(out, exist_ok=True)
torch.onnx.export(m, xte[:1], os.path.join(out, "mnist_bn_cnn.onnx"), opset_version=17,
                  input_names=["input"], output_names=["logits"],
                  dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}},
                  do_constant_folding=False, training=torch.onnx.TrainingMode.EVAL, dynamo=False)
save_file(m.state_dict(), os.path.join(out, "mnist_bn_cnn.safetensors"))
with open(os.path.join(out, "mnist_bn_cnn.json"), "w") as f:
    json.dump({"torch": torch.__version__, "float_acc": round(acc, 2),
               "logits_first8": logits[:8].tolist()}, f, indent=1)
