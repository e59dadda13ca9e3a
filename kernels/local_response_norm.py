"""Cross-channel local response normalisation (Krizhevsky et al. 2012, section 3.3) in Triton.

Forward, for channel i of N at one position, with a window of n = `size` channels
W(i) = [i - B, i + A], B = n // 2 before and A = (n - 1) // 2 after (PyTorch's window; for the
paper's odd n it is i - n/2 .. i + n/2), clipped to [0, N):

    s_i = sum_{m in W(i)} a_m^2        d_i = k + alpha * s_i        b_i = a_i * d_i^(-beta)

alpha is the paper's: NOT divided by n (F.local_response_norm divides it; see kernels.torch_ops).
Backward, with g = dL/db: a_j enters b_j directly and every d_i whose window holds j, i.e.
i in [j - A, j + B], so

    dL/da_j = g_j d_j^(-beta) - 2 alpha beta a_j sum_{i=j-A}^{j+B} g_i a_i d_i^(-beta-1)

The backward saves only `a` (the input): it recomputes every d_i from the neighbouring a's,
which it reads anyway, so saving d or b would only add a tensor's worth of HBM writes (forward)
and reads (backward) to a memory-bound op. It is one pass: each program reads the a and g it
needs (the neighbours' repeat reads hit L1/L2) and writes dL/da once.

The kernels see the tensor as [N, C, L] with L = H * W positions (merging H and W is a view for
NCHW, channels_last and channel/batch slices; other layouts are copied first). Each program
takes BLOCK_P positions of one image and walks the channels in blocks of BLOCK_C.
"""

import torch
import triton
import triton.language as tl
from torch.autograd.function import once_differentiable

from kernels.nchw import alexnet_activations, check_activation, check_positive_int, tile_shape

# (elements per [BLOCK_C, BLOCK_P] tile, warps): 16 elements a thread forward, 4 backward, which
# holds 2 * SIZE - 1 tiles of a at once
FWD_CONFIG = (2048, 4)
BWD_CONFIG = (1024, 8)


@triton.jit
def _lrn_fwd_kernel(
    x_ptr,  # [N, C, L] input a, strides (sxn, sxc, sxl)
    y_ptr,  # [N, C, L] output b, strides (syn, syc, syl)
    C, L, sxn, sxc, sxl, syn, syc, syl,
    alpha, beta, k,
    SIZE: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
):
    blocks_per_image = tl.cdiv(L, BLOCK_P)
    pid = tl.program_id(0).to(tl.int64)
    n = pid // blocks_per_image
    pos = (pid % blocks_per_image) * BLOCK_P + tl.arange(0, BLOCK_P)
    pos_ok = pos < L
    x_img = x_ptr + n * sxn + pos[None, :] * sxl
    y_img = y_ptr + n * syn + pos[None, :] * syl
    for c0 in range(0, C, BLOCK_C):
        c = c0 + tl.arange(0, BLOCK_C).to(tl.int64)
        sumsq = tl.zeros([BLOCK_C, BLOCK_P], dtype=tl.float32)
        for d in tl.static_range(-(SIZE // 2), (SIZE - 1) // 2 + 1):
            ok = (c + d >= 0) & (c + d < C)
            a = tl.load(x_img + (c + d)[:, None] * sxc, mask=ok[:, None] & pos_ok[None, :], other=0.0)
            a = a.to(tl.float32)
            sumsq += a * a
            if d == 0:
                center = a
        b = center * tl.exp2(-beta * tl.log2(k + alpha * sumsq))
        tl.store(y_img + c[:, None] * syc, b.to(y_ptr.dtype.element_ty), mask=(c < C)[:, None] & pos_ok[None, :])


@triton.jit
def _lrn_bwd_kernel(
    x_ptr,   # [N, C, L] forward input a, strides (sxn, sxc, sxl)
    dy_ptr,  # [N, C, L] incoming gradient g = dL/db, strides (sgn, sgc, sgl)
    dx_ptr,  # [N, C, L] output dL/da, strides (sdn, sdc, sdl)
    C, L, sxn, sxc, sxl, sgn, sgc, sgl, sdn, sdc, sdl,
    alpha, beta, k,
    SIZE: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
):
    BEFORE: tl.constexpr = SIZE // 2
    AFTER: tl.constexpr = (SIZE - 1) // 2
    blocks_per_image = tl.cdiv(L, BLOCK_P)
    pid = tl.program_id(0).to(tl.int64)
    n = pid // blocks_per_image
    pos = (pid % blocks_per_image) * BLOCK_P + tl.arange(0, BLOCK_P)
    pos_ok = pos < L
    x_img = x_ptr + n * sxn + pos[None, :] * sxl
    dy_img = dy_ptr + n * sgn + pos[None, :] * sgl
    dx_img = dx_ptr + n * sdn + pos[None, :] * sdl
    for c0 in range(0, C, BLOCK_C):
        c = c0 + tl.arange(0, BLOCK_C).to(tl.int64)
        # a at channel offsets -(A+B)..A+B from c: every a the windows below need, each loaded once
        a_near = ()
        for t in tl.static_range(-(AFTER + BEFORE), AFTER + BEFORE + 1):
            ok = ((c + t >= 0) & (c + t < C))[:, None] & pos_ok[None, :]
            a_near += (tl.load(x_img + (c + t)[:, None] * sxc, mask=ok, other=0.0).to(tl.float32),)
        neighbours = tl.zeros([BLOCK_C, BLOCK_P], dtype=tl.float32)  # sum_i g_i a_i d_i^(-beta-1)
        for e in tl.static_range(-AFTER, BEFORE + 1):  # i = c + e: every channel whose window holds c
            i_ok = ((c + e >= 0) & (c + e < C))[:, None] & pos_ok[None, :]
            sumsq = tl.zeros([BLOCK_C, BLOCK_P], dtype=tl.float32)
            for d in tl.static_range(-BEFORE, AFTER + 1):
                sumsq += a_near[AFTER + BEFORE + e + d] * a_near[AFTER + BEFORE + e + d]
            a_i = a_near[AFTER + BEFORE + e]
            g_i = tl.load(dy_img + (c + e)[:, None] * sgc, mask=i_ok, other=0.0).to(tl.float32)
            denom = k + alpha * sumsq
            pow_i = tl.exp2((-beta - 1.0) * tl.log2(denom))  # d_i^(-beta-1)
            neighbours += tl.where(i_ok, g_i * a_i * pow_i, 0.0)  # where: d_i of a missing channel may be 0
            if e == 0:
                g_j, scale_j = g_i, denom * pow_i  # d_j^(-beta)
        dx = g_j * scale_j - 2.0 * alpha * beta * a_near[AFTER + BEFORE] * neighbours
        tl.store(dx_img + c[:, None] * sdc, dx.to(dx_ptr.dtype.element_ty), mask=(c < C)[:, None] & pos_ok[None, :])


def _check(name, x, size):
    check_activation("lrn", name, x)
    check_positive_int("lrn", "size", size)


def _grid_and_meta(x3: torch.Tensor, size: int, config: tuple[int, int]):
    """Grid and compile-time parameters of a kernel on [N, C, L]: the launchers and kernels.aot share it."""
    N, C, L = x3.shape
    tile, warps = config
    block_c, block_p = tile_shape(C, L, channels_contiguous=x3.stride(1) == 1, elements=tile)
    return (N * triton.cdiv(L, block_p),), dict(SIZE=size, BLOCK_C=block_c, BLOCK_P=block_p, num_warps=warps)


def _fwd_args(x3, y3, alpha, beta, k):
    return (x3, y3, *x3.shape[1:], *x3.stride(), *y3.stride(), float(alpha), float(beta), float(k))


def _bwd_args(x3, dy3, dx3, alpha, beta, k):
    return (x3, dy3, dx3, *x3.shape[1:], *x3.stride(), *dy3.stride(), *dx3.stride(),
            float(alpha), float(beta), float(k))


def lrn_fwd(x: torch.Tensor, size=5, alpha=1e-4, beta=0.75, k=2.0) -> torch.Tensor:
    """b = LRN(a), the paper's convention, in x's dtype and layout."""
    _check("x", x, size)
    x3 = x.flatten(2)  # [N, C, H*W]: a view unless H and W cannot merge
    y3 = torch.empty_like(x3)
    if x3.numel():
        grid, meta = _grid_and_meta(x3, size, FWD_CONFIG)
        _lrn_fwd_kernel[grid](*_fwd_args(x3, y3, alpha, beta, k), **meta)
    return y3.unflatten(2, x.shape[2:])


def lrn_bwd(dy: torch.Tensor, x: torch.Tensor, size=5, alpha=1e-4, beta=0.75, k=2.0) -> torch.Tensor:
    """dL/da given dy = dL/db and the forward input x."""
    _check("x", x, size)
    check_activation("lrn", "dy", dy)
    if dy.shape != x.shape:
        raise ValueError(f"lrn: dy has shape {tuple(dy.shape)} but x has {tuple(x.shape)}")
    x3, dy3 = x.flatten(2), dy.flatten(2)
    dx3 = torch.empty_like(x3)
    if x3.numel():
        grid, meta = _grid_and_meta(x3, size, BWD_CONFIG)
        _lrn_bwd_kernel[grid](*_bwd_args(x3, dy3, dx3, alpha, beta, k), **meta)
    return dx3.unflatten(2, x.shape[2:])


class LRNFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, size, alpha, beta, k):
        ctx.save_for_backward(x)  # the only saved tensor: backward recomputes d (see top)
        ctx.params = (size, alpha, beta, k)
        return lrn_fwd(x, size, alpha, beta, k)

    @staticmethod
    @once_differentiable
    def backward(ctx, dy):
        (x,) = ctx.saved_tensors
        return lrn_bwd(dy, x, *ctx.params), None, None, None, None


def lrn(x: torch.Tensor, size=5, alpha=1e-4, beta=0.75, k=2.0) -> torch.Tensor:
    """The paper's cross-channel LRN (alpha not divided by size), differentiable in x."""
    return LRNFunction.apply(x, size, alpha, beta, k)


def aot_configs():
    """(label, kernel, args, meta, work) of every launch lrn_fwd/lrn_bwd make at AlexNet's shapes
    (kernels.aot; `work` as kernels.work says: the step runs channels_last, bf16 or fp32)."""
    from kernels.work import dtype_name, in_step, lrn_work

    for layer, shape in (("lrn1", (96, 55, 55)), ("lrn2", (256, 27, 27))):
        for label, x in alexnet_activations((shape,)):
            x3 = x.flatten(2)
            step = in_step(dtype_name(x.dtype)) and x.is_contiguous(memory_format=torch.channels_last)
            for op, kernel, args, config in (
                    ("fwd", _lrn_fwd_kernel, _fwd_args(x3, torch.empty_like(x3), 1e-4, 0.75, 2.0), FWD_CONFIG),
                    ("bwd", _lrn_bwd_kernel,
                     _bwd_args(x3, torch.empty_like(x3), torch.empty_like(x3), 1e-4, 0.75, 2.0), BWD_CONFIG)):
                grid, meta = _grid_and_meta(x3, 5, config)
                yield (label, kernel, args, meta, lrn_work(layer, op, x.shape, dtype_name(x.dtype), grid[0],
                                                           triton.cdiv(shape[0], meta["BLOCK_C"]), step))
