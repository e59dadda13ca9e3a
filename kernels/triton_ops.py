"""The "triton" backend: the project's Triton kernels.

All three ops are Triton: conv2d_relu (kernels.conv_relu: implicit-GEMM forward, dgrad and wgrad with
bias and ReLU fused), LRN (kernels.local_response_norm) and max-pooling (kernels.maxpool).
Under torch.autocast they run in the autocast dtype (kernels.autocast).
"""

from kernels import Backend
from kernels.autocast import autocast_inputs
from kernels.conv_relu import conv2d_relu
from kernels.local_response_norm import lrn
from kernels.maxpool import max_pool2d

BACKEND = Backend("triton", *map(autocast_inputs, (conv2d_relu, lrn, max_pool2d)))
