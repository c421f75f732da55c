"""Golden values for tests/activations.rs: each activation's forward value and derivative at
fixed inputs, from PyTorch's own modules and autograd, and the fixed quantization parameters
torch.ao.quantization uses after it.

    python3 tools/torch_activation_golden.py   # prints Rust source for the GOLDEN table
"""
import torch

XS = [-6.0, -3.5, -3.0, -1.0, -0.25, 0.0, 0.25, 1.0, 2.9, 3.0, 3.5, 6.5]

MODULES = {
    "ReLU": torch.nn.ReLU(),
    "ReLU6": torch.nn.ReLU6(),
    "Hardswish": torch.nn.Hardswish(),
    "Hardsigmoid": torch.nn.Hardsigmoid(),
    "LeakyReLU": torch.nn.LeakyReLU(0.01),
    "Sigmoid": torch.nn.Sigmoid(),
    "Tanh": torch.nn.Tanh(),
    "SiLU": torch.nn.SiLU(),
}


def main():
    print(f"// torch {torch.__version__}, tools/torch_activation_golden.py")
    print(f"const XS: [f32; {len(XS)}] = {fmt(XS)};")
    print("const GOLDEN: &[(&str, [f32; 12], [f32; 12])] = &[")
    for name, module in MODULES.items():
        x = torch.tensor(XS, dtype=torch.float32, requires_grad=True)
        y = module(x)
        y.sum().backward()
        print(f"    (\"{name}\", {fmt(y.tolist())}, {fmt(x.grad.tolist())}),")
    print("];")
    # torch.ao.quantization's fixed output parameters (quint8) for these modules.
    from torch.ao.quantization.qconfig_mapping import _FIXED_QPARAMS_OP_TO_OBSERVER
    for op, obs in _FIXED_QPARAMS_OP_TO_OBSERVER.items():
        o = obs()
        print(f"// fixed qparams {op}: scale {o.scale} zero_point {o.zero_point} {o.dtype}")


def fmt(values):
    return "[" + ", ".join(repr(float(v)) for v in values) + "]"


if __name__ == "__main__":
    main()
