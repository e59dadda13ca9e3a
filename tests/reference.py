"""Reference implementations every kernel is checked against (bench/ imports them too).

The torch references are the "torch" backend's ops; `lrn_paper_float64` is the paper's LRN
formula written out literally, in float64, with no library in between.
"""

import torch

from kernels.torch_ops import conv2d_relu, lrn, max_pool2d  # noqa: F401  (re-exported references)


def lrn_paper_float64(a: torch.Tensor, size=5, alpha=1e-4, beta=0.75, k=2.0) -> torch.Tensor:
    """b_i = a_i / (k + alpha * sum_{j=max(0, i-n/2)}^{min(N-1, i+n/2)} a_j^2)^beta over channels i.

    `size` is the paper's n (5). For an even n the window is n//2 channels before i and
    (n-1)//2 after, as PyTorch pads it, so every size agrees with F.local_response_norm.
    """
    a = a.double()
    channels = a.shape[1]
    out = []
    for i in range(channels):
        lo, hi = max(0, i - size // 2), min(channels - 1, i + (size - 1) // 2)
        sq = (a[:, lo:hi + 1] ** 2).sum(dim=1)
        out.append(a[:, i] / (k + alpha * sq) ** beta)
    return torch.stack(out, dim=1)  # stacked rather than written in place: autograd stays cheap


def lrn_grad_float64(a: torch.Tensor, dy: torch.Tensor, size=5, alpha=1e-4, beta=0.75, k=2.0) -> torch.Tensor:
    """dL/da of `lrn_paper_float64` for dL/db = dy, by autograd in float64."""
    a = a.detach().double().requires_grad_()
    (grad,) = torch.autograd.grad(lrn_paper_float64(a, size, alpha, beta, k), a, dy.double())
    return grad


def max_pool2d_grad_fp32(x: torch.Tensor, dy: torch.Tensor, kernel_size=3, stride=2) -> torch.Tensor:
    """F.max_pool2d's input gradient, summed in fp32 (returned in fp32, for the caller to round once).

    The same elements get the same gradients (the max, and its ties, are exact in fp32); rounded
    once to fp16/bf16 it is what PyTorch's CUDA kernel computes, while its CPU kernel rounds after
    every add.
    """
    x = x.detach().float().requires_grad_()
    (grad,) = torch.autograd.grad(max_pool2d(x, kernel_size, stride), x, dy.float())
    return grad
