"""Golden values for learnable fake quantization (LSQ / LSQ+), from torch 2.9.1's
`_fake_quantize_learnable_per_tensor_affine` and `_fake_quantize_learnable_per_channel_affine`:
forward outputs and the gradients of `sum(y * g)` with respect to x, the scale and the zero
point, for a fixed upstream gradient g. Prints Rust literals for src/quant/lsq.rs's tests.

    python3 tools/torch_lsq_golden.py
"""
import math

import torch

X = [-1.7, -0.51, -0.0049, 0.0, 0.3337, 0.9, 1.2345, 2.6, -0.2, 1.9999, 0.0125, -0.77]
G = [0.3, -1.0, 0.5, 2.0, -0.25, 1.5, 0.75, -0.6, 1.0, 0.1, -2.0, 0.4]


def fmt(v):
    return "[" + ", ".join(repr(float(x)) for x in v) + "]"


def per_tensor(scale, zp, qmin, qmax):
    x = torch.tensor(X, requires_grad=True)
    s = torch.tensor([scale], requires_grad=True)
    z = torch.tensor([zp], requires_grad=True)
    grad_factor = 1.0 / math.sqrt(x.numel() * qmax)
    y = torch._fake_quantize_learnable_per_tensor_affine(x, s, z, qmin, qmax, grad_factor)
    (y * torch.tensor(G)).sum().backward()
    print(f"    ({scale!r}, {zp!r}, {qmin}, {qmax}, &{fmt(y.detach())}, &{fmt(x.grad)}, "
          f"{float(s.grad)!r}, {float(z.grad)!r}),")


def per_channel(scales, zps, qmin, qmax):
    # X as 3 channels of 4 values (axis 0).
    x = torch.tensor(X, requires_grad=True).reshape(3, 4)
    x.retain_grad()
    s = torch.tensor(scales, requires_grad=True)
    z = torch.tensor(zps, requires_grad=True)
    grad_factor = 1.0 / math.sqrt(4 * qmax)
    y = torch._fake_quantize_learnable_per_channel_affine(x, s, z, 0, qmin, qmax, grad_factor)
    (y * torch.tensor(G).reshape(3, 4)).sum().backward()
    print(f"    (&{fmt(scales)}, &{fmt(zps)}, {qmin}, {qmax}, &{fmt(y.detach().flatten())}, "
          f"&{fmt(x.grad.flatten())}, &{fmt(s.grad)}, &{fmt(z.grad)}),")


print("// per tensor: (scale, zero_point, quant_min, quant_max, y, dx, dscale, dzero_point)")
per_tensor(0.02, 0.0, 0, 255)
per_tensor(0.02, 64.0, 0, 255)
per_tensor(0.0137, -3.0, -128, 127)
per_tensor(0.25, 0.0, -8, 7)
per_tensor(0.1, 2.4, 0, 15)
print("// per channel (axis 0, three channels of four)")
per_channel([0.02, 0.05, 0.3], [0.0, 10.0, -1.0], -128, 127)
per_channel([0.25, 0.1, 0.4], [0.0, 0.0, 0.0], -8, 7)
