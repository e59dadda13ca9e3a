"""The "triton" backend: the project's Triton kernels.

All three ops are Triton: conv2d_relu (kernels.conv_relu: implicit-GEMM forward, dgrad and wgrad with
bias and ReLU fused), LRN (kernels.local_response_norm) and max-pooling (kernels.maxpool).
Under torch.autocast they run in the autocast dtype (kernels.autocast); the conv reads fp32 weights and
bias as they are (cast in the layout copy it makes anyway) and returns their gradients in fp32.
conv2d_relu_input makes conv1's space-to-depth input in the dtype it is asked for.
"""

from kernels import Backend
from kernels.autocast import autocast_inputs
from kernels.conv_relu import conv2d_relu, conv2d_relu_input
from kernels.local_response_norm import lrn
from kernels.maxpool import max_pool2d

BACKEND = Backend("triton", autocast_inputs(conv2d_relu, weights=False), autocast_inputs(lrn),
                  autocast_inputs(max_pool2d), conv2d_relu_input)
