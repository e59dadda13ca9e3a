"""Fully connected layers on fp32 master weights through their 16-bit copies, with fp32 gradients.

Under autocast, F.linear casts its fp32 weight to 16 bits in every forward (fc6-fc8 hold 58M of AlexNet's
61M parameters: 350 MB of traffic a step) and the 16-bit weight gradient is cast back to fp32 for .grad
(350 MB more). A 16-bit run instead keeps a 16-bit copy of each weight, written by the optimizer in its
update pass (alexnet.optim), that the forward reads as it is; the backward computes the weight gradient
straight into fp32 (cuBLAS's fp32-output GEMM on a GPU), so nothing is cast per step.
"""

import torch
import torch.nn.functional as F


class MasterLinear(torch.autograd.Function):
    """y = x @ weight16.T + bias16 (then ReLU'd with `relu`), the gradients of x (in x's dtype) and of the fp32
    `weight` and `bias` (in fp32). `weight16` and `bias16` are the 16-bit copies of `weight` and `bias`; they
    get no gradient. The ReLU is the GEMM's epilogue (one cuBLASLt launch on a GPU, not a GEMM and a ReLU)."""

    @staticmethod
    def forward(ctx, x, weight, bias, weight16, bias16, relu=False):
        y = torch._addmm_activation(bias16, x, weight16.t()) if relu else F.linear(x, weight16, bias16)
        ctx.relu = relu
        ctx.save_for_backward(x, weight16, y if relu else None)
        return y

    @staticmethod
    def backward(ctx, dy):
        x, weight16, y = ctx.saved_tensors
        if ctx.relu:
            dy = torch.ops.aten.threshold_backward(dy, y, 0)  # F.relu's own backward
        dx = dy @ weight16 if ctx.needs_input_grad[0] else None
        dw = fp32_product(dy.t(), x) if ctx.needs_input_grad[1] else None
        db = dy.sum(0, dtype=torch.float32) if ctx.needs_input_grad[2] else None
        return dx, dw, db, None, None, None


def fp32_product(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b of 16-bit matrices accumulated and returned in fp32: one GEMM on a GPU (and on the meta device);
    elsewhere (no such kernel) the 16-bit product, cast."""
    if a.device.type in ("cuda", "meta"):
        return torch.mm(a, b, out_dtype=torch.float32)
    return torch.mm(a, b).float()


def linear(layer: torch.nn.Linear, x: torch.Tensor, copy_of, relu: bool = False) -> torch.Tensor:
    """`layer`(x), ReLU'd with `relu`, on the 16-bit copies that `copy_of(parameter)` returns, in their dtype
    (x is cast to it: the flattened pool5 output already is, under autocast)."""
    weight16 = copy_of(layer.weight)
    return MasterLinear.apply(x.to(weight16.dtype), layer.weight, layer.bias, weight16, copy_of(layer.bias), relu)
