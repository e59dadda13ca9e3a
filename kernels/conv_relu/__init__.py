"""Fused convolution + ReLU in Triton: forward, input gradient (dgrad), weight and bias gradient (wgrad).

Per group g (C_g = C / groups input channels, K_g = K / groups output channels, window R x S,
stride (sh, sw), padding (ph, pw)):

    forward  y[n,k,p,q]  = relu(b[k] + sum_{c,r,s} x[n,c, p*sh + r - ph, q*sw + s - pw] * w[k,c,r,s])
    backward g           = dy * (y > 0)         the ReLU mask read from the saved OUTPUT (y > 0 exactly
                                                 where the pre-activation was), so no pre-activation is kept
             db[k]       = sum_{n,p,q} g[n,k,p,q]
             dx[n,c,h,v] = sum_{k,r,s} g[n,k,p,q] * w[k,c,r,s]   over the taps with h = p*sh + r - ph, v = q*sw + s - pw
             dw[k,c,r,s] = sum_{n,p,q} g[n,k,p,q] * x[n,c, p*sh + r - ph, q*sw + s - pw]

The backward starts with one small memory-bound kernel that writes g and the per-block partial sums of db
(summed once more after the launch, in a fixed order: no atomics, the same db every run), so
the two GEMM loops below read plain operands: no mask, no select and no row sum in them, which lets both
operands go through shared memory and the tensor-core instructions pipeline.

Each GEMM is one implicit GEMM (the Triton matmul tutorial, with im2col addressing instead of an unfolded copy):

    forward  [N*P*Q pixels, C_g*R*S window] @ [window, K_g]         bias + ReLU on the fp32 accumulator
    dgrad    [N*H*W pixels, K_g*taps]       @ [taps, C_g]           one grid slice per stride phase (below)
    wgrad    [K_g, N*P*Q pixels]            @ [pixels, C_g*R*S]     the pixels split across programs, each
                                                                     writing its fp32 partial dw; the partials
                                                                     are then added in split order (no atomics:
                                                                     the same dw every run on one GPU model)

dgrad with stride > 1: an input row h is reached only by the taps r = (h + ph) mod sh + t*sh. Grouping the
rows by h mod sh (and columns by v mod sw) gives sh*sw dense sub-convolutions with ceil(R/sh) x ceil(S/sw)
taps each, so no work is spent on taps that miss.

Space-to-depth: a strided convolution over few channels (AlexNet's conv1: 3 channels, 11x11, stride 4) runs
as the stride-1 convolution it equals, over 48 channels of 3x3 taps (space_to_depth.py). Its input is a copy
of x in that form, made by the forward, or beforehand by conv2d_relu_input (in any dtype, into a given buffer:
the pass that casts a loader's images, or copies them into a CUDA graph's input, makes it) and passed with
input_form=True.

Layout: the window index is (r, s, c) with c fastest and tensors are addressed through their strides, so
any layout is correct and NHWC (channels_last) is the fast one: there an im2col row reads channels
contiguously, which is what tensor cores want, and an output tile [pixels, channels] is written
contiguously. So y, g and dx are channels_last; the weight, small, is copied once per forward, channels_last
in x's dtype (an fp32 master weight cast), and kept: dgrad reads that copy too in 16 bits (with K/groups a
multiple of BLOCK_K), else a k-contiguous copy (TF32 wants its reduction contiguous); x is read in place (or
as its space-to-depth copy).
When the channels of a group are a multiple of BLOCK_K, a block of the reduction never straddles two
window taps, so the tap is one scalar per step and the masks are per pixel, not per element.

Indexing: 32-bit unless a tensor spans 2^31 elements or more (INDEX_64, chosen per launch).

Precision: fp16 and bf16 multiply on tensor cores with fp32 accumulation and one final cast. fp32 follows
torch's flag for cuDNN's convolutions (torch.backends.cudnn.conv.fp32_precision, or cudnn.allow_tf32 before
torch 2.9): TF32 by default like cuDNN, so the two backends compare like for like, exact fp32 ("ieee") when
TF32 is off. The interpreter's tl.dot is exact whatever is asked.
A NaN in the pre-activation stays NaN in y, as in relu(conv2d(...)).

The package: geometry.py (the checked shape record, once per shape), tiles.py (the tiles and the autotuner),
kernels.py (the Triton kernels), space_to_depth.py (conv1's stride-1 form), launch.py (plans, launchers and
the autograd Function).
"""

from kernels.conv_relu.launch import (ConvReLU, conv2d_relu, conv2d_relu_bwd, conv2d_relu_dgrad,  # noqa: F401
                                      conv2d_relu_fwd, conv2d_relu_input, conv2d_relu_wgrad)
