"""Fused convolution + ReLU in Triton: forward, input gradient (dgrad), weight and bias gradient (wgrad).

Per group g (C_g = C / groups input channels, K_g = K / groups output channels, window R x S,
stride (sh, sw), padding (ph, pw)):

    forward  y[n,k,p,q]  = relu(b[k] + sum_{c,r,s} x[n,c, p*sh + r - ph, q*sw + s - pw] * w[k,c,r,s])
    backward g           = dy * (y > 0)         the ReLU mask read from the saved OUTPUT (y > 0 exactly
                                                 where the pre-activation was), so no pre-activation is kept
             dx[n,c,h,v] = sum_{k,r,s} g[n,k,p,q] * w[k,c,r,s]   over the taps with h = p*sh + r - ph, v = q*sw + s - pw
             dw[k,c,r,s] = sum_{n,p,q} g[n,k,p,q] * x[n,c, p*sh + r - ph, q*sw + s - pw]
             db[k]       = sum_{n,p,q} g[n,k,p,q]

Each is one implicit GEMM (the Triton matmul tutorial, with im2col addressing instead of an unfolded copy):

    forward  [N*P*Q pixels, C_g*R*S window] @ [window, K_g]         bias + ReLU on the fp32 accumulator
    dgrad    [N*H*W pixels, K_g*taps]       @ [taps, C_g]           one grid slice per stride phase (below)
    wgrad    [K_g, N*P*Q pixels]            @ [pixels, C_g*R*S]     the pixels split across programs that
                                                                     add into a zeroed fp32 dw (and db)

dgrad with stride > 1: an input row h is reached only by the taps r = (h + ph) mod sh + t*sh. Grouping the
rows by h mod sh (and columns by v mod sw) gives sh*sw dense sub-convolutions with ceil(R/sh) x ceil(S/sw)
taps each, so no work is spent on taps that miss (conv1's stride 4 would otherwise waste 15/16 of it).

Layout: the window index is (r, s, c) with c fastest and tensors are addressed through their strides, so
any layout is correct and NHWC (channels_last) is the fast one: there an im2col row reads channels
contiguously, which is what tensor cores want (operands contiguous along the reduction), and an output
tile [pixels, channels] is written contiguously. So y and dx are allocated channels_last; dy is brought
to y's layout (a no-op when the next op kept it) so one offset tile addresses both; the weights, small,
are permuted per call so each GEMM reads them contiguously along its reduction; x is read in place
(conv1's images are NCHW, and copying them would cost about as much as the convolution reads).

Precision: fp16 and bf16 multiply on tensor cores with fp32 accumulation and one final cast. fp32 runs in
TF32 while ALLOW_TF32 is True, like cuDNN's default (torch.backends.cudnn.allow_tf32), so the two backends
compare like for like; set it False for exact fp32. The interpreter's tl.dot is exact whatever is asked.
"""

import torch
import triton
import triton.language as tl
from torch.autograd.function import once_differentiable

from kernels.interpret import interpreting

ALLOW_TF32 = True

# GEMM tiles the autotuner chooses from: (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages). kernels.aot
# compiles every tile `usable_tiles` allows at AlexNet's shapes; the interpreter runs the first usable one.
TILES = {
    "fwd": [(128, 128, 32, 4, 4), (128, 64, 32, 4, 4), (128, 128, 64, 8, 3)],
    "dgrad": [(128, 128, 32, 4, 4), (128, 64, 32, 4, 4), (128, 32, 32, 4, 4)],
    "wgrad": [(64, 128, 32, 4, 4), (128, 128, 64, 8, 3), (64, 64, 64, 4, 4)],
}
SMEM_BUDGET = 160 * 1024  # bytes for the pipelined operand tiles: sm_80 allows 163 KiB a block, sm_90 227
WAVES = 4  # wgrad splits the reduction until there are about this many programs per SM
MIN_SPLIT_STEPS = 8  # ... but each split keeps at least this many BLOCK_K steps


def usable_tiles(kernel: str, dtype: torch.dtype, gemm_m: int, gemm_n: int) -> list[tuple]:
    """The tiles of TILES[kernel] the autotuner may pick for a GEMM of gemm_m x gemm_n outputs: those whose
    operand pipeline fits SMEM_BUDGET, and none more than twice the side it covers (mostly masked work)."""
    size = torch.finfo(dtype).bits // 8
    fits = [t for t in TILES[kernel] if t[4] * (t[0] + t[1]) * t[2] * size <= SMEM_BUDGET]
    smallest_m, smallest_n = min(t[0] for t in fits), min(t[1] for t in fits)
    return [t for t in fits if t[0] <= max(smallest_m, 2 * gemm_m) and t[1] <= max(smallest_n, 2 * gemm_n)]


def _tile_meta(tile: tuple) -> dict:
    bm, bn, bk, warps, stages = tile
    return dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, num_warps=warps, num_stages=stages)


def _configs(kernel: str) -> list[triton.Config]:
    return [triton.Config(dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk), num_warps=warps, num_stages=stages)
            for bm, bn, bk, warps, stages in TILES[kernel]]


def _pruner(kernel: str, gemm_sides):
    """An early_config_prune keeping usable_tiles; gemm_sides(args) -> (dtype, gemm_m, gemm_n).
    The interpreter would time every config (minutes per shape): it keeps the first usable one."""
    def prune(configs, named_args, **kwargs):
        usable = usable_tiles(kernel, *gemm_sides({**named_args, **kwargs}))
        kept = [c for c in configs if (c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.kwargs["BLOCK_K"],
                                       c.num_warps, c.num_stages) in usable]
        return kept[:1] if interpreting() else kept
    return prune


_KEY = ["ROWS", "H", "W", "P", "Q", "CG", "KG", "KH", "KW", "STRIDE_H", "STRIDE_W"]  # the problem shape

# The interpreter keeps bf16 as raw uint16 bits, and its tl.dot and comparisons use them as integers
# (triton/runtime/interpreter.py create_dot), so under it bf16 goes through fp32 there (exactly).
_BF16_VIA_FP32 = tl.constexpr(interpreting())


# ----------------------------------------------------------------------------------------------------------
# Addressing helpers shared by the three kernels


@triton.jit
def _split_pixels(m, P, Q):
    """Flat int64 index over an [N, P, Q] pixel grid -> (n int64, p int32, q int32)."""
    n = m // (P * Q)
    pq = (m - n * (P * Q)).to(tl.int32)
    p = pq // Q
    return n, p, pq - p * Q


@triton.jit
def _split_window(kk, C: tl.constexpr, S: tl.constexpr):
    """Flat index over an [R, S, C] window, c fastest -> (c, r, s)."""
    rs = kk // C
    return kk % C, rs // S, rs % S


@triton.jit
def _gather(row_off, row_h, row_w, row_ok, col_off, col_h, col_w, col_ok, H, W):
    """Offsets and mask of a [rows, cols] implicit-GEMM tile of an [N, C, H, W] tensor: element (i, j) is at
    spatial position (row_h[i] + col_h[j], row_w[i] + col_w[j]), zero (masked) outside the image."""
    h = row_h[:, None] + col_h[None, :]
    w = row_w[:, None] + col_w[None, :]
    ok = row_ok[:, None] & col_ok[None, :] & (h >= 0) & (h < H) & (w >= 0) & (w < W)
    return row_off[:, None] + col_off[None, :], ok


@triton.jit
def _relu_grad(dy_ptr, y_ptr, offsets, mask):
    """dy where the ReLU let its input through (y > 0), else 0."""
    dy = tl.load(dy_ptr + offsets, mask=mask, other=0.0)
    y = tl.load(y_ptr + offsets, mask=mask, other=0.0)
    if _BF16_VIA_FP32:
        y = y.to(tl.float32)
    return tl.where(y > 0, dy, 0.0)


@triton.jit
def _dot(a, b, acc, PRECISION: tl.constexpr):
    """acc + a @ b on tensor cores, fp32 accumulation."""
    if _BF16_VIA_FP32 and a.dtype == tl.bfloat16:
        a, b = a.to(tl.float32), b.to(tl.float32)
    return tl.dot(a, b, acc, input_precision=PRECISION)


# ----------------------------------------------------------------------------------------------------------
# Kernels. 64-bit safety: program_id(0) is widened to int64 first, so pixel indices and the batch offset
# n * stride_n are int64 (and so is every pointer offset, being a sum with it); coordinates and offsets
# within one image stay int32, which is cheaper in the inner loop and exact (_check: an image < 2^31 elements).


def _fwd_sides(a):
    return a["x_ptr"].dtype, a["ROWS"], a["KG"]


@triton.autotune(configs=_configs("fwd"), key=_KEY, prune_configs_by={"early_config_prune": _pruner("fwd", _fwd_sides)})
@triton.jit
def _fwd_kernel(
    x_ptr,  # [N, C, H, W] any strides
    w_ptr,  # [K, C_g, R, S] (the launcher makes (r, s, c) contiguous)
    b_ptr,  # [K] (not read when HAS_BIAS is False)
    y_ptr,  # [N, K, P, Q] (allocated channels_last)
    ROWS, H, W, P, Q,  # ROWS = N*P*Q, the output pixels
    sx_n, sx_c, sx_h, sx_w, sw_k, sw_c, sw_r, sw_s, sy_n, sy_c, sy_h, sy_w,
    CG: tl.constexpr, KG: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr,
    STRIDE_H: tl.constexpr, STRIDE_W: tl.constexpr, PAD_H: tl.constexpr, PAD_W: tl.constexpr,
    HAS_BIAS: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    g = tl.program_id(1)
    pid_m, pid_n = pid // tl.cdiv(KG, BLOCK_N), pid % tl.cdiv(KG, BLOCK_N)

    m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # output pixels (GEMM rows)
    n, p, q = _split_pixels(m, P, Q)
    m_ok = m < ROWS
    ih, iw = p * STRIDE_H - PAD_H, q * STRIDE_W - PAD_W  # top-left corner of each pixel's window
    x_row = n * sx_n + ih * sx_h + iw * sx_w
    k = g * KG + (pid_n * BLOCK_N).to(tl.int32) + tl.arange(0, BLOCK_N)  # output channels (GEMM columns)
    k_ok = k < (g + 1) * KG

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, CG * KH * KW, BLOCK_K):
        kk = k0 + tl.arange(0, BLOCK_K)  # window positions (the reduction)
        c, r, s = _split_window(kk, CG, KW)
        kk_ok = kk < CG * KH * KW
        x_off, x_ok = _gather(x_row, ih, iw, m_ok, r * sx_h + s * sx_w + (g * CG + c) * sx_c, r, s, kk_ok, H, W)
        a = tl.load(x_ptr + x_off, mask=x_ok, other=0.0)
        w_off = (c * sw_c + r * sw_r + s * sw_s)[:, None] + (k * sw_k)[None, :]
        b = tl.load(w_ptr + w_off, mask=kk_ok[:, None] & k_ok[None, :], other=0.0)
        acc = _dot(a, b, acc, PRECISION)

    if HAS_BIAS:
        acc += tl.load(b_ptr + k, mask=k_ok, other=0.0).to(tl.float32)[None, :]
    y = tl.maximum(acc, 0.0).to(y_ptr.dtype.element_ty)
    y_off = (n * sy_n + p * sy_h + q * sy_w)[:, None] + (k * sy_c)[None, :]
    tl.store(y_ptr + y_off, y, mask=m_ok[:, None] & k_ok[None, :])


def _dgrad_sides(a):
    return a["dy_ptr"].dtype, a["ROWS"], a["CG"]


@triton.autotune(configs=_configs("dgrad"), key=_KEY,
                 prune_configs_by={"early_config_prune": _pruner("dgrad", _dgrad_sides)})
@triton.jit
def _dgrad_kernel(
    dy_ptr,  # [N, K, P, Q] incoming gradient, y's strides
    y_ptr,  # [N, K, P, Q] the forward's output (its sign is the ReLU mask)
    w_ptr,  # [K, C_g, R, S] (the launcher makes k contiguous)
    dx_ptr,  # [N, C, H, W] (allocated channels_last)
    ROWS, H, W, P, Q,  # ROWS = N * ceil(H / STRIDE_H) * ceil(W / STRIDE_W): the largest phase's pixels
    sy_n, sy_c, sy_h, sy_w, sw_k, sw_c, sw_r, sw_s, sx_n, sx_c, sx_h, sx_w,
    CG: tl.constexpr, KG: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr,
    STRIDE_H: tl.constexpr, STRIDE_W: tl.constexpr, PAD_H: tl.constexpr, PAD_W: tl.constexpr,
    PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    g = tl.program_id(1)
    # This program's stride phase: input rows h = i*STRIDE_H + h0 and columns v = j*STRIDE_W + v0, reached
    # by the taps r = r0 + t*STRIDE_H, s = s0 + u*STRIDE_W from output row p = i + p0 - t, column q = j + q0 - u.
    phase = tl.program_id(2)
    h0, v0 = phase // STRIDE_W, phase % STRIDE_W
    r0, s0 = (h0 + PAD_H) % STRIDE_H, (v0 + PAD_W) % STRIDE_W
    p0, q0 = (h0 + PAD_H) // STRIDE_H, (v0 + PAD_W) // STRIDE_W
    TAPS_H: tl.constexpr = (KH + STRIDE_H - 1) // STRIDE_H
    TAPS_W: tl.constexpr = (KW + STRIDE_W - 1) // STRIDE_W
    HS, WS = tl.cdiv(H, STRIDE_H), tl.cdiv(W, STRIDE_W)  # rows and columns per phase, at most
    pid_m, pid_n = pid // tl.cdiv(CG, BLOCK_N), pid % tl.cdiv(CG, BLOCK_N)

    m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # input pixels of this phase (GEMM rows)
    n, i, j = _split_pixels(m, HS, WS)
    h, v = i * STRIDE_H + h0, j * STRIDE_W + v0
    m_ok = (m < ROWS) & (h < H) & (v < W)
    dy_row = n * sy_n + (i + p0) * sy_h + (j + q0) * sy_w
    c = (pid_n * BLOCK_N).to(tl.int32) + tl.arange(0, BLOCK_N)  # input channels within the group (GEMM columns)
    c_ok = c < CG

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, TAPS_H * TAPS_W * KG, BLOCK_K):
        kk = k0 + tl.arange(0, BLOCK_K)  # (tap, output channel) pairs (the reduction)
        k, t, u = _split_window(kk, KG, TAPS_W)
        k += g * KG
        r, s = r0 + t * STRIDE_H, s0 + u * STRIDE_W
        kk_ok = (kk < TAPS_H * TAPS_W * KG) & (r < KH) & (s < KW)
        dy_off, dy_ok = _gather(dy_row, i + p0, j + q0, m_ok, k * sy_c - t * sy_h - u * sy_w, -t, -u, kk_ok, P, Q)
        a = _relu_grad(dy_ptr, y_ptr, dy_off, dy_ok)
        w_off = (k * sw_k + r * sw_r + s * sw_s)[:, None] + (c * sw_c)[None, :]
        b = tl.load(w_ptr + w_off, mask=kk_ok[:, None] & c_ok[None, :], other=0.0)
        acc = _dot(a, b, acc, PRECISION)

    dx_off = (n * sx_n + h * sx_h + v * sx_w)[:, None] + ((g * CG + c) * sx_c)[None, :]
    tl.store(dx_ptr + dx_off, acc.to(dx_ptr.dtype.element_ty), mask=m_ok[:, None] & c_ok[None, :])


def _wgrad_sides(a):
    return a["x_ptr"].dtype, a["KG"], a["CG"] * a["KH"] * a["KW"]


@triton.autotune(configs=_configs("wgrad"), key=_KEY, reset_to_zero=["dw_ptr", "db_ptr"],
                 prune_configs_by={"early_config_prune": _pruner("wgrad", _wgrad_sides)})
@triton.jit
def _wgrad_kernel(
    x_ptr,  # [N, C, H, W] any strides
    dy_ptr,  # [N, K, P, Q] incoming gradient, y's strides
    y_ptr,  # [N, K, P, Q] the forward's output (its sign is the ReLU mask)
    dw_ptr,  # [K, C_g, R, S] float32, zeroed: every split adds its partial sum
    db_ptr,  # [K] float32, zeroed (not written when HAS_BIAS is False)
    ROWS, H, W, P, Q,  # ROWS = N*P*Q, the output pixels (the reduction)
    sx_n, sx_c, sx_h, sx_w, sy_n, sy_c, sy_h, sy_w, sw_k, sw_c, sw_r, sw_s,
    CG: tl.constexpr, KG: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr,
    STRIDE_H: tl.constexpr, STRIDE_W: tl.constexpr, PAD_H: tl.constexpr, PAD_W: tl.constexpr,
    HAS_BIAS: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid = tl.program_id(0)  # output tiles: few
    g = tl.program_id(1)
    split = tl.program_id(2).to(tl.int64)  # pixel indices are int64
    pid_m, pid_n = pid // tl.cdiv(CG * KH * KW, BLOCK_N), pid % tl.cdiv(CG * KH * KW, BLOCK_N)

    k = g * KG + pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # output channels (GEMM rows)
    k_ok = k < (g + 1) * KG
    kk = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # window positions (GEMM columns)
    c, r, s = _split_window(kk, CG, KW)
    kk_ok = kk < CG * KH * KW
    x_col = r * sx_h + s * sx_w + (g * CG + c) * sx_c

    share = tl.cdiv(tl.cdiv(ROWS, BLOCK_K), tl.num_programs(2)) * BLOCK_K  # the reduction, cut in contiguous shares
    start = split * share
    stop = tl.minimum(start + share, ROWS)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    db = tl.zeros((BLOCK_M,), dtype=tl.float32)
    for m0 in range(start, stop, BLOCK_K):
        m = m0 + tl.arange(0, BLOCK_K)  # output pixels
        n, p, q = _split_pixels(m, P, Q)
        m_ok = m < stop
        dy_off = (k * sy_c)[:, None] + (n * sy_n + p * sy_h + q * sy_w)[None, :]
        a = _relu_grad(dy_ptr, y_ptr, dy_off, k_ok[:, None] & m_ok[None, :])
        ih, iw = p * STRIDE_H - PAD_H, q * STRIDE_W - PAD_W
        x_off, x_ok = _gather(n * sx_n + ih * sx_h + iw * sx_w, ih, iw, m_ok, x_col, r, s, kk_ok, H, W)
        b = tl.load(x_ptr + x_off, mask=x_ok, other=0.0)
        acc = _dot(a, b, acc, PRECISION)
        if HAS_BIAS:
            db += tl.sum(a.to(tl.float32), axis=1)

    dw_off = (k * sw_k)[:, None] + (c * sw_c + r * sw_r + s * sw_s)[None, :]
    tl.atomic_add(dw_ptr + dw_off, acc, mask=k_ok[:, None] & kk_ok[None, :], sem="relaxed")
    if HAS_BIAS:  # the first column of tiles owns the bias
        tl.atomic_add(db_ptr + k, db, mask=k_ok & (pid_n == 0), sem="relaxed")


# ----------------------------------------------------------------------------------------------------------
# Launchers (callable without autograd)


def _pair(value, name: str) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, int) for v in pair):
        raise TypeError(f"conv2d_relu: {name} must be an int or a pair of ints, got {value!r}")
    return pair


def _geometry(x_shape, w_shape, stride, padding, groups):
    """(stride pair, padding pair, (P, Q)) after checking that the shapes make a convolution."""
    stride, padding = _pair(stride, "stride"), _pair(padding, "padding")
    if min(stride) < 1 or min(padding) < 0:
        raise ValueError(f"conv2d_relu: stride must be >= 1 and padding >= 0, got stride={stride}, padding={padding}")
    if not isinstance(groups, int) or groups < 1:
        raise ValueError(f"conv2d_relu: groups must be a positive int, got {groups!r}")
    (_, C, H, W), (K, CG, R, S) = x_shape, w_shape
    if C % groups or K % groups:
        raise ValueError(f"conv2d_relu: x's {C} channels and weight's {K} filters must both be divisible "
                         f"by groups={groups}")
    if CG != C // groups:
        raise ValueError(f"conv2d_relu: weight of shape {tuple(w_shape)} expects {CG * groups} input channels "
                         f"with groups={groups}, but x has {C}")
    P = (H + 2 * padding[0] - R) // stride[0] + 1
    Q = (W + 2 * padding[1] - S) // stride[1] + 1
    if P <= 0 or Q <= 0:
        raise ValueError(f"conv2d_relu: output size would be {P}x{Q}: x's {H}x{W} (padded by {padding}) is "
                         f"smaller than the {R}x{S} weight window")
    if max(C * H * W, K * P * Q) >= 2**31:
        raise ValueError(f"conv2d_relu: one image of x ({C}x{H}x{W}) or of the output ({K}x{P}x{Q}) has 2^31 "
                         "elements or more; the kernels index within an image in int32")
    return stride, padding, (P, Q)


def _check(x, weight, bias):
    for name, t in (("x", x), ("weight", weight)):
        if not isinstance(t, torch.Tensor) or t.dim() != 4:
            raise ValueError(f"conv2d_relu: {name} must be a 4-D tensor, got "
                             f"{tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__}")
    if x.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise TypeError(f"conv2d_relu: x has dtype {x.dtype}; supported: float16, bfloat16, float32")
    if weight.dtype != x.dtype:
        raise TypeError(f"conv2d_relu: weight has dtype {weight.dtype} but x has {x.dtype}; they must match")
    if bias is not None and (bias.dtype != x.dtype or tuple(bias.shape) != (weight.shape[0],)):
        raise ValueError(f"conv2d_relu: bias must have shape ({weight.shape[0]},) and x's dtype {x.dtype}, "
                         f"got {tuple(bias.shape)} {bias.dtype}")
    for name, t in (("x", x), ("weight", weight), ("bias", bias)):
        if t is not None and t.device != x.device:
            raise ValueError(f"conv2d_relu: {name} is on {t.device} but x is on {x.device}")
    if sum((size - 1) * step for size, step in zip(x.shape[1:], x.stride()[1:])) >= 2**31:
        raise ValueError(f"conv2d_relu: x's strides {x.stride()} span 2^31 elements or more within one image; "
                         "the kernels index within an image in int32 (pass a contiguous x)")
    if x.device.type != "cuda" and not interpreting():
        raise ValueError(f"conv2d_relu: x is on {x.device}; the Triton kernels need a CUDA tensor "
                         "(or TRITON_INTERPRET=1 to run them on the CPU interpreter)")


def _precision(dtype):
    # Only fp32 products have a choice; 16-bit ones are exact on tensor cores whatever is asked.
    return "tf32" if ALLOW_TF32 and dtype == torch.float32 else "ieee"


def _constants(x_shape, w_shape, stride, padding, groups):
    """The constexpr geometry shared by the three kernels."""
    (_, C, _, _), (K, _, R, S) = x_shape, w_shape
    return dict(CG=C // groups, KG=K // groups, KH=R, KW=S, STRIDE_H=stride[0], STRIDE_W=stride[1],
                PAD_H=padding[0], PAD_W=padding[1])


# Plans: the output, grid, args and meta of one launch, the tile left to the autotuner. The launchers and
# kernels.aot (on meta-device tensors) share them, so what aot compiles is what runs.


def _fwd_plan(x, weight, bias, stride, padding, groups):
    stride, padding, (P, Q) = _geometry(x.shape, weight.shape, stride, padding, groups)
    N, _, H, W = x.shape
    K = weight.shape[0]
    w = weight.contiguous(memory_format=torch.channels_last)  # (r, s, c) contiguous: the reduction
    y = torch.empty((N, K, P, Q), device=x.device, dtype=x.dtype, memory_format=torch.channels_last)
    grid = lambda meta: (triton.cdiv(N * P * Q, meta["BLOCK_M"]) * triton.cdiv(K // groups, meta["BLOCK_N"]), groups)
    args = (x, w, bias if bias is not None else w, y, N * P * Q, H, W, P, Q, *x.stride(), *w.stride(), *y.stride())
    meta = dict(_constants(x.shape, w.shape, stride, padding, groups), HAS_BIAS=bias is not None,
                PRECISION=_precision(x.dtype))
    return y, grid, args, meta


def _dgrad_plan(dy, y, weight, x_shape, stride, padding, groups):
    stride, padding, _ = _geometry(x_shape, weight.shape, stride, padding, groups)
    N, C, H, W = x_shape
    _, _, P, Q = y.shape
    dy = dy.contiguous(memory_format=torch.channels_last)
    y = y.contiguous(memory_format=torch.channels_last)
    w = weight.permute(1, 2, 3, 0).contiguous().permute(3, 0, 1, 2)  # k contiguous: the reduction
    dx = torch.empty(x_shape, device=dy.device, dtype=dy.dtype, memory_format=torch.channels_last)
    rows = N * triton.cdiv(H, stride[0]) * triton.cdiv(W, stride[1])
    grid = lambda meta: (triton.cdiv(rows, meta["BLOCK_M"]) * triton.cdiv(C // groups, meta["BLOCK_N"]),
                         groups, stride[0] * stride[1])
    args = (dy, y, w, dx, rows, H, W, P, Q, *y.stride(), *w.stride(), *dx.stride())
    meta = dict(_constants(x_shape, w.shape, stride, padding, groups), PRECISION=_precision(dy.dtype))
    return dx, grid, args, meta


def wgrad_splits(programs: int, steps: int, device: torch.device) -> int:
    """How many programs share wgrad's reduction of `steps` BLOCK_K steps when the output tiles alone
    make `programs`: enough to fill every SM WAVES times over, each keeping MIN_SPLIT_STEPS steps."""
    sms = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 4
    return max(1, min(triton.cdiv(WAVES * sms, programs), steps // MIN_SPLIT_STEPS))


def _wgrad_plan(dy, y, x, weight_shape, stride, padding, groups, bias):
    stride, padding, _ = _geometry(x.shape, weight_shape, stride, padding, groups)
    N, _, H, W = x.shape
    K, CG, R, S = weight_shape
    _, _, P, Q = y.shape
    dy = dy.contiguous(memory_format=torch.channels_last)
    y = y.contiguous(memory_format=torch.channels_last)
    dw = torch.zeros(weight_shape, device=x.device, dtype=torch.float32)
    db = torch.zeros(K, device=x.device, dtype=torch.float32) if bias else None
    tiles = lambda meta: triton.cdiv(K // groups, meta["BLOCK_M"]) * triton.cdiv(CG * R * S, meta["BLOCK_N"])
    splits = lambda meta: wgrad_splits(tiles(meta) * groups, triton.cdiv(N * P * Q, meta["BLOCK_K"]), x.device)
    grid = lambda meta: (tiles(meta), groups, splits(meta))
    args = (x, dy, y, dw, db if bias else dw, N * P * Q, H, W, P, Q, *x.stride(), *y.stride(), *dw.stride())
    meta = dict(_constants(x.shape, weight_shape, stride, padding, groups), HAS_BIAS=bias,
                PRECISION=_precision(x.dtype))
    return dw, db, grid, args, meta


def conv2d_relu_fwd(x, weight, bias=None, stride=1, padding=0, groups=1):
    """relu(conv2d(x, weight, bias, stride, padding, groups=groups)), returned channels_last."""
    _check(x, weight, bias)
    y, grid, args, meta = _fwd_plan(x, weight, bias, stride, padding, groups)
    if y.numel():
        _fwd_kernel[grid](*args, **meta)
    return y


def conv2d_relu_dgrad(dy, y, weight, x_shape, stride=1, padding=0, groups=1):
    """The gradient of conv2d_relu(x, weight, ...) = y with respect to x (of shape x_shape), channels_last."""
    dx, grid, args, meta = _dgrad_plan(dy, y, weight, x_shape, stride, padding, groups)
    if dx.numel():
        _dgrad_kernel[grid](*args, **meta)
    return dx


def conv2d_relu_wgrad(dy, y, x, weight_shape, stride=1, padding=0, groups=1, bias=True):
    """The gradients of conv2d_relu(x, weight, ...) = y with respect to the weight (of shape weight_shape)
    and, if `bias`, the bias (else None), in x's dtype; accumulated in fp32."""
    dw, db, grid, args, meta = _wgrad_plan(dy, y, x, weight_shape, stride, padding, groups, bias)
    if y.numel():
        _wgrad_kernel[grid](*args, **meta)
    return dw.to(x.dtype), db.to(x.dtype) if bias else None


def conv2d_relu_bwd(dy, y, x, weight, stride=1, padding=0, groups=1, needs=(True, True, True)):
    """(dx, dweight, dbias) of conv2d_relu; `needs` says which of the three to compute (None otherwise)."""
    dx = conv2d_relu_dgrad(dy, y, weight, x.shape, stride, padding, groups) if needs[0] else None
    dw, db = (conv2d_relu_wgrad(dy, y, x, weight.shape, stride, padding, groups, bias=needs[2])
              if needs[1] or needs[2] else (None, None))
    return dx, dw if needs[1] else None, db


class ConvReLU(torch.autograd.Function):
    """relu(conv2d(x, w) + b) with Triton forward, dgrad and wgrad; saves x, w and the output y."""

    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, groups):
        y = conv2d_relu_fwd(x, weight, bias, stride, padding, groups)
        ctx.save_for_backward(x, weight, y)
        ctx.geometry = (stride, padding, groups)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, dy):
        x, weight, y = ctx.saved_tensors
        dx, dw, db = conv2d_relu_bwd(dy, y, x, weight, *ctx.geometry, needs=ctx.needs_input_grad[:3])
        return dx, dw, db, None, None, None


def conv2d_relu(x, weight, bias=None, stride=1, padding=0, groups=1):
    """relu(conv2d(x, weight, bias, stride, padding, groups=groups)) on Triton kernels, autograd included."""
    return ConvReLU.apply(x, weight, bias, stride, padding, groups)


# AlexNet's convolutions: input (C, H, W), weight (K, C_g, R, S), stride, padding, groups.
ALEXNET_CONVS = {
    "conv1": ((3, 227, 227), (96, 3, 11, 11), 4, 0, 1),
    "conv2": ((96, 27, 27), (256, 48, 5, 5), 1, 2, 2),
    "conv3": ((256, 13, 13), (384, 256, 3, 3), 1, 1, 1),
    "conv4": ((384, 13, 13), (384, 192, 3, 3), 1, 1, 2),
    "conv5": ((384, 13, 13), (256, 192, 3, 3), 1, 1, 2),
}


def aot_configs(batch: int = 128, sms: int = 132):
    """(label, kernel, args, meta, work) of every launch the three launchers can make at AlexNet's shapes, one
    per usable tile (kernels.aot; `work` as kernels.work says, with wgrad split for `sms` SMs: H100/H200).
    conv1's input is NCHW (the images), the others channels_last (conv1's output layout, which LRN and
    max-pool keep). The training step runs bf16 or tf32, and never conv1's dgrad (the images need none)."""
    from math import prod

    from kernels.work import conv_work, dtype_name

    for name, (x_shape, w_shape, stride, padding, groups) in ALEXNET_CONVS.items():
        layout = torch.contiguous_format if name == "conv1" else torch.channels_last
        for dtype in (torch.float32, torch.float16, torch.bfloat16):
            x = torch.empty(batch, *x_shape, dtype=dtype, device="meta", memory_format=layout)
            w = torch.empty(w_shape, dtype=dtype, device="meta")
            b = torch.empty(w_shape[0], dtype=dtype, device="meta")
            label = f"{name} {str(dtype).removeprefix('torch.')}{' tf32' if _precision(dtype) == 'tf32' else ''}"
            dt = dtype_name(dtype, tf32=_precision(dtype) == "tf32")
            work = lambda op, programs, iterations, step=dt in ("bf16", "tf32"): conv_work(
                name, op, x.shape, w_shape, stride, padding, dt, programs, iterations, step)
            (K, CG, R, S), (N, _, H, W) = w_shape, x.shape
            P, Q = (H + 2 * padding - R) // stride + 1, (W + 2 * padding - S) // stride + 1
            y, grid, args, meta = _fwd_plan(x, w, b, stride, padding, groups)
            yield from _tiled(f"{label} fwd", "fwd", _fwd_kernel, args, meta, _fwd_sides, lambda m: work(
                "fwd", prod(grid(m)), triton.cdiv(CG * R * S, m["BLOCK_K"])))
            _, grid, args, meta = _dgrad_plan(y, y, w, x.shape, stride, padding, groups)
            taps = triton.cdiv(R, stride) * triton.cdiv(S, stride)
            yield from _tiled(f"{label} dgrad", "dgrad", _dgrad_kernel, args, meta, _dgrad_sides, lambda m: work(
                "dgrad", prod(grid(m)), triton.cdiv(taps * (K // groups), m["BLOCK_K"]),
                step=dt in ("bf16", "tf32") and name != "conv1"))
            _, _, _, args, meta = _wgrad_plan(y, y, x, w.shape, stride, padding, groups, bias=True)

            def wgrad_work(m):  # wgrad_splits' rule with `sms` SMs (on the meta device it would assume 4)
                tiles = triton.cdiv(K // groups, m["BLOCK_M"]) * triton.cdiv(CG * R * S, m["BLOCK_N"]) * groups
                steps = triton.cdiv(N * P * Q, m["BLOCK_K"])
                splits = max(1, min(triton.cdiv(WAVES * sms, tiles), steps // MIN_SPLIT_STEPS))
                return work("wgrad", tiles * splits, triton.cdiv(steps, splits))
            yield from _tiled(f"{label} wgrad", "wgrad", _wgrad_kernel, args, meta, _wgrad_sides, wgrad_work)


def _tiled(label, kernel_name, autotuned, args, meta, sides, work):
    """One (label, kernel, args, meta, work) per usable tile; work(tile meta) -> the launch's work."""
    named = {**dict(zip(autotuned.fn.arg_names, args)), **meta}
    for tile in usable_tiles(kernel_name, *sides(named)):
        tile_meta = {**meta, **_tile_meta(tile)}
        yield label, autotuned.fn, args, tile_meta, work(tile_meta)
