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
    out = torch.empty_like(a)
    for i in range(channels):
        lo, hi = max(0, i - size // 2), min(channels - 1, i + (size - 1) // 2)
        sq = (a[:, lo:hi + 1] ** 2).sum(dim=1)
        out[:, i] = a[:, i] / (k + alpha * sq) ** beta
    return out
