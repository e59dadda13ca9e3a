"""The "triton" backend: the project's Triton kernels.

LRN and max-pooling are Triton (kernels.local_response_norm, kernels.maxpool). conv2d_relu is, for now, the torch
conv (F.conv2d + F.relu, cuDNN on a GPU) until kernels/conv_relu.py lands: comparisons of this
backend with "torch" differ only in LRN and pooling until then.
"""

from kernels import Backend
from kernels.local_response_norm import lrn
from kernels.maxpool import max_pool2d
from kernels.torch_ops import conv2d_relu

BACKEND = Backend("triton", conv2d_relu, lrn, max_pool2d)
