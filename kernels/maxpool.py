"""Overlapping max-pooling (Krizhevsky et al. 2012, section 3.4) in Triton, with PyTorch's semantics.

Forward, no padding, floor mode: OH = (H - K) // S + 1 (same for W), and

    y[oh, ow] = max_{kh, kw < K} x[oh*S + kh, ow*S + kw]

scanning kh then kw and keeping the FIRST maximum (a later value must be strictly greater), except
that a NaN always wins, so the last NaN in the window is the one chosen: exactly F.max_pool2d's
rule, which decides who gets the gradient when values tie (zeros after a ReLU tie all the time).
The forward saves only that choice, kh*K + kw, as one uint8 per output (K*K <= 256), not x.

Backward: dL/dx[ih, iw] = sum of dL/dy[oh, ow] over the outputs whose saved choice is (ih, iw).
Each program gathers for a block of inputs from the ceil(K/S)^2 outputs whose windows can hold
them, in ascending (oh, ow) order and in fp32, as PyTorch's CUDA kernel does: no atomics, every
element of dx written once, the same result every run. (PyTorch's CPU kernel scatters in that
same order but rounds after each add in fp16/bf16; ours rounds once, like its CUDA kernel.)

Each program takes BLOCK_P positions (outputs forward, inputs backward) of one image and walks the
channels in blocks of BLOCK_C; any strides are read as they are.
"""

import torch
import triton
import triton.language as tl
from torch.autograd.function import once_differentiable

from kernels.tensors import cdiv, check_activation, check_positive_int, launch, memory_format, shapes_only, \
    tile_shape

TILE, NUM_WARPS = 2048, 8  # elements per [BLOCK_C, BLOCK_P] tile: 8 a thread


@triton.jit
def max_pool_fwd_kernel(
    x_ptr,    # [N, C, H, W] input, strides (sxn, sxc, sxh, sxw)
    y_ptr,    # [N, C, OH, OW] output, strides (syn, syc, syh, syw)
    arg_ptr,  # [N, C, OH, OW] uint8 kh*K + kw of each chosen maximum, strides as y
    C, OH, OW, sxn, sxc, sxh, sxw, syn, syc, syh, syw,
    K: tl.constexpr, S: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
):
    blocks_per_image = tl.cdiv(OH * OW, BLOCK_P)
    pid = tl.program_id(0).to(tl.int64)
    n = pid // blocks_per_image
    q = ((pid % blocks_per_image) * BLOCK_P).to(tl.int32) + tl.arange(0, BLOCK_P)  # output position
    q_ok = q < OH * OW
    oh, ow = (q // OW).to(tl.int64), (q % OW).to(tl.int64)
    x_win = x_ptr + n * sxn + (oh * S * sxh + ow * S * sxw)[None, :]  # each window's top-left
    y_out = n * syn + (oh * syh + ow * syw)[None, :]
    for c0 in range(0, C, BLOCK_C):
        c = c0 + tl.arange(0, BLOCK_C).to(tl.int64)
        ok = (c < C)[:, None] & q_ok[None, :]
        x_c = x_win + c[:, None] * sxc
        best = tl.load(x_c, mask=ok, other=0.0).to(tl.float32)
        choice = tl.zeros([BLOCK_C, BLOCK_P], dtype=tl.int32)
        for kh in tl.static_range(K):
            for kw in tl.static_range(K):
                if kh + kw > 0:
                    v = tl.load(x_c + kh * sxh + kw * sxw, mask=ok, other=0.0).to(tl.float32)
                    take = (v > best) | (v != v)  # strictly greater keeps the first max; NaN always wins
                    best = tl.where(take, v, best)
                    choice = tl.where(take, kh * K + kw, choice)
        out = y_out + c[:, None] * syc
        tl.store(y_ptr + out, best.to(y_ptr.dtype.element_ty), mask=ok)
        tl.store(arg_ptr + out, choice.to(tl.uint8), mask=ok)


@triton.jit
def max_pool_bwd_kernel(
    dy_ptr,   # [N, C, OH, OW] incoming gradient, strides (sgn, sgc, sgh, sgw)
    arg_ptr,  # [N, C, OH, OW] uint8 kh*K + kw saved by the forward, strides (san, sac, sah, saw)
    dx_ptr,   # [N, C, H, W] output gradient, strides (sdn, sdc, sdh, sdw)
    C, H, W, OH, OW, sgn, sgc, sgh, sgw, san, sac, sah, saw, sdn, sdc, sdh, sdw,
    K: tl.constexpr, S: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
):
    REACH: tl.constexpr = (K + S - 1) // S  # outputs per axis whose window can hold one input
    blocks_per_image = tl.cdiv(H * W, BLOCK_P)
    pid = tl.program_id(0).to(tl.int64)
    n = pid // blocks_per_image
    p = ((pid % blocks_per_image) * BLOCK_P).to(tl.int32) + tl.arange(0, BLOCK_P)  # input position
    p_ok = p < H * W
    ih, iw = p // W, p % W
    for c0 in range(0, C, BLOCK_C):
        c = c0 + tl.arange(0, BLOCK_C).to(tl.int64)
        ok = (c < C)[:, None] & p_ok[None, :]
        acc = tl.zeros([BLOCK_C, BLOCK_P], dtype=tl.float32)
        for th in tl.static_range(REACH):  # ascending oh, then ow: PyTorch's order of summation
            oh = ih // S - (REACH - 1) + th
            kh = ih - oh * S
            h_ok = (oh >= 0) & (oh < OH) & (kh < K)
            for tw in tl.static_range(REACH):
                ow = iw // S - (REACH - 1) + tw
                kw = iw - ow * S
                hit_ok = ok & (h_ok & (ow >= 0) & (ow < OW) & (kw < K))[None, :]
                oh64, ow64 = oh.to(tl.int64), ow.to(tl.int64)
                chosen = tl.load(arg_ptr + n * san + c[:, None] * sac + (oh64 * sah + ow64 * saw)[None, :],
                                 mask=hit_ok, other=0)
                g = tl.load(dy_ptr + n * sgn + c[:, None] * sgc + (oh64 * sgh + ow64 * sgw)[None, :],
                            mask=hit_ok, other=0.0).to(tl.float32)
                acc += tl.where(hit_ok & (chosen.to(tl.int32) == (kh * K + kw)[None, :]), g, 0.0)
        dx = dx_ptr + n * sdn + c[:, None] * sdc + (ih.to(tl.int64) * sdh + iw.to(tl.int64) * sdw)[None, :]
        tl.store(dx, acc.to(dx_ptr.dtype.element_ty), mask=ok)


def _check_window(H, W, kernel_size, stride):
    check_positive_int("max_pool2d", "kernel_size", kernel_size)
    check_positive_int("max_pool2d", "stride", stride)
    if kernel_size * kernel_size > 256:
        raise ValueError(f"max_pool2d: kernel_size {kernel_size} is too large: the saved choice is one byte")
    if H < kernel_size or W < kernel_size:
        raise ValueError(f"max_pool2d: x's spatial size {H}x{W} is smaller than kernel_size {kernel_size}")


def _grid_and_meta(C: int, positions: int, channels_contiguous: bool, N: int, kernel_size: int, stride: int):
    """Grid and compile-time parameters of either kernel: the launchers and perf.aot share it."""
    block_c, block_p = tile_shape(C, positions, channels_contiguous, elements=TILE)
    meta = dict(K=kernel_size, S=stride, BLOCK_C=block_c, BLOCK_P=block_p, num_warps=NUM_WARPS)
    return (N * cdiv(positions, block_p),), meta


def fwd_plan(x, kernel_size, stride):
    """(y, choice, grid, args, meta) for max_pool2d_fwd: empty outputs in x's layout and the launch."""
    N, C, H, W = x.shape
    OH, OW = (H - kernel_size) // stride + 1, (W - kernel_size) // stride + 1
    layout = memory_format(x)
    y = torch.empty(N, C, OH, OW, dtype=x.dtype, device=x.device, memory_format=layout)
    choice = torch.empty(N, C, OH, OW, dtype=torch.uint8, device=x.device, memory_format=layout)
    grid, meta = _grid_and_meta(C, OH * OW, x.stride(1) == 1, N, kernel_size, stride)
    return y, choice, grid, (x, y, choice, C, OH, OW, *x.stride(), *y.stride()), meta


def bwd_plan(dy, choice, input_hw, kernel_size, stride):
    """(dx, grid, args, meta) for max_pool2d_bwd: dx empty, in the layout the forward gave `choice`."""
    N, C, OH, OW = dy.shape
    H, W = input_hw
    dx = torch.empty(N, C, H, W, dtype=dy.dtype, device=dy.device, memory_format=memory_format(choice))
    grid, meta = _grid_and_meta(C, H * W, dx.stride(1) == 1, N, kernel_size, stride)
    return dx, grid, (dy, choice, dx, C, H, W, OH, OW, *dy.stride(), *choice.stride(), *dx.stride()), meta


def max_pool2d_fwd(x: torch.Tensor, kernel_size=3, stride=2) -> tuple[torch.Tensor, torch.Tensor]:
    """(y, choice): the pooled output in x's dtype and layout, and the uint8 window index of each max."""
    check_activation("max_pool2d", "x", x)
    _check_window(*x.shape[2:], kernel_size, stride)
    y, choice, grid, args, meta = fwd_plan(x, kernel_size, stride)
    if y.numel():
        launch(max_pool_fwd_kernel, grid, x.device, *args, **meta)
    return y, choice


def max_pool2d_bwd(dy: torch.Tensor, choice: torch.Tensor, input_hw, kernel_size=3, stride=2) -> torch.Tensor:
    """dL/dx of an (H, W) = `input_hw` input, from dy = dL/dy and the forward's `choice`."""
    check_activation("max_pool2d", "dy", dy)
    _check_window(*input_hw, kernel_size, stride)
    if choice.dtype != torch.uint8 or choice.shape != dy.shape:
        raise ValueError(f"max_pool2d: choice must be uint8 of dy's shape {tuple(dy.shape)}, "
                         f"got {choice.dtype} {tuple(choice.shape)}")
    dx, grid, args, meta = bwd_plan(dy, choice, input_hw, kernel_size, stride)
    if dx.numel():
        launch(max_pool_bwd_kernel, grid, dy.device, *args, **meta)
    return dx


class MaxPool2dFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, kernel_size, stride):
        y, choice = max_pool2d_fwd(x, kernel_size, stride)
        ctx.save_for_backward(choice)  # one byte per output; x itself is not kept
        ctx.params = (tuple(x.shape[2:]), kernel_size, stride)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, dy):
        (choice,) = ctx.saved_tensors
        return max_pool2d_bwd(dy, choice, *ctx.params), None, None


# The same launchers as custom ops, for torch.compile (see kernels/conv_relu/launch.py for why two doors).
@torch.library.custom_op("alexnet::max_pool2d", mutates_args=())
def max_pool2d_op(x: torch.Tensor, kernel_size: int, stride: int) -> tuple[torch.Tensor, torch.Tensor]:
    return max_pool2d_fwd(x, kernel_size, stride)


@torch.library.custom_op("alexnet::max_pool2d_backward", mutates_args=())
def max_pool2d_backward_op(dy: torch.Tensor, choice: torch.Tensor, input_hw: list[int], kernel_size: int,
                           stride: int) -> torch.Tensor:
    return max_pool2d_bwd(dy, choice, input_hw, kernel_size, stride)


max_pool2d_op.register_fake(shapes_only(max_pool2d_fwd))
max_pool2d_backward_op.register_fake(shapes_only(max_pool2d_bwd))


def _save(ctx, inputs, output):
    x, kernel_size, stride = inputs
    ctx.save_for_backward(output[1])
    ctx.mark_non_differentiable(output[1])
    ctx.params = (list(x.shape[2:]), kernel_size, stride)


def _gradients(ctx, dy, _):
    (choice,) = ctx.saved_tensors
    return max_pool2d_backward_op(dy, choice, *ctx.params), None, None


max_pool2d_op.register_autograd(_gradients, setup_context=_save)


def max_pool2d(x: torch.Tensor, kernel_size=3, stride=2) -> torch.Tensor:
    """Max-pooling with no padding and floor mode, differentiable in x, with PyTorch's tie rule."""
    if torch.compiler.is_compiling():
        return max_pool2d_op(x, kernel_size, stride)[0]
    return MaxPool2dFunction.apply(x, kernel_size, stride)
