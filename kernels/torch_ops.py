"""The "torch" backend: PyTorch's own ops (cuDNN on a GPU), the unit every other backend is measured in."""

import torch
import torch.nn.functional as F

from kernels import Backend
from kernels.autocast import autocast_inputs


def conv2d_relu(x, weight, bias=None, stride=1, padding=0, groups=1, input_form=False):
    return F.relu(F.conv2d(x, weight, bias, stride, padding, groups=groups))  # x is its own input form


def lrn(x, size=5, alpha=1e-4, beta=0.75, k=2.0):
    # F.local_response_norm divides alpha by size; the paper does not, so multiply it back.
    if x.device.type == "cpu" and x.dtype in (torch.bfloat16, torch.float16):
        # The CPU has no half-precision avg_pool3d (inside F.local_response_norm): run it in fp32.
        return F.local_response_norm(x.float(), size, alpha * size, beta, k).to(x.dtype)
    return F.local_response_norm(x, size, alpha * size, beta, k)


def max_pool2d(x, kernel_size=3, stride=2):
    return F.max_pool2d(x, kernel_size, stride)


BACKEND = Backend("torch", *map(autocast_inputs, (conv2d_relu, lrn, max_pool2d)))  # its input form: x cast
