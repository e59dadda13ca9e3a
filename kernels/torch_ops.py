"""The "torch" backend: PyTorch's own ops (cuDNN on a GPU), the unit every other backend is measured in."""

import torch.nn.functional as F

from kernels import Backend


def conv2d_relu(x, weight, bias=None, stride=1, padding=0, groups=1):
    return F.relu(F.conv2d(x, weight, bias, stride, padding, groups=groups))


def lrn(x, size=5, alpha=1e-4, beta=0.75, k=2.0):
    # F.local_response_norm divides alpha by size; the paper does not, so multiply it back.
    return F.local_response_norm(x, size, alpha * size, beta, k)


def max_pool2d(x, kernel_size=3, stride=2):
    return F.max_pool2d(x, kernel_size, stride)


BACKEND = Backend("torch", conv2d_relu, lrn, max_pool2d)
