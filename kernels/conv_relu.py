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
(summed once more on the host side of the launch, in a fixed order: no atomics, the same db every run), so
the two GEMM loops below read plain operands: no mask, no select and no row sum in them, which lets both
operands go through shared memory and the tensor-core instructions pipeline.

Each GEMM is one implicit GEMM (the Triton matmul tutorial, with im2col addressing instead of an unfolded copy):

    forward  [N*P*Q pixels, C_g*R*S window] @ [window, K_g]         bias + ReLU on the fp32 accumulator
    dgrad    [N*H*W pixels, K_g*taps]       @ [taps, C_g]           one grid slice per stride phase (below)
    wgrad    [K_g, N*P*Q pixels]            @ [pixels, C_g*R*S]     the pixels split across programs that
                                                                     add into a zeroed fp32 dw

dgrad with stride > 1: an input row h is reached only by the taps r = (h + ph) mod sh + t*sh. Grouping the
rows by h mod sh (and columns by v mod sw) gives sh*sw dense sub-convolutions with ceil(R/sh) x ceil(S/sw)
taps each, so no work is spent on taps that miss.

Space-to-depth: a strided convolution over few channels (AlexNet's conv1: 3 channels, 11x11, stride 4)
would reduce over runs of 3 contiguous values. It is run instead as the stride-1 convolution it equals:
x2[n, (i*sw + j)*C + c, h, v] = x[n, c, h*sh + i - ph, v*sw + j - pw] (48 channels for conv1, 57x57) with
the window cut into ceil(R/sh) x ceil(S/sw) = 3x3 taps of those channels (the weight zero-padded to 12x12).
The forward, wgrad and dgrad all run on that form and map back (two small copies, of x and of the weight).

Layout: the window index is (r, s, c) with c fastest and tensors are addressed through their strides, so
any layout is correct and NHWC (channels_last) is the fast one: there an im2col row reads channels
contiguously, which is what tensor cores want, and an output tile [pixels, channels] is written
contiguously. So y, g and dx are channels_last; the weights, small, are permuted per call so each GEMM
reads them contiguously along its reduction; x is read in place (or as its space-to-depth copy).
When the channels of a group are a multiple of BLOCK_K, a block of the reduction never straddles two
window taps, so the tap is one scalar per step and the masks are per pixel, not per element.

Indexing: 32-bit unless a tensor spans 2^31 elements or more (INDEX_64, chosen per launch).

Precision: fp16 and bf16 multiply on tensor cores with fp32 accumulation and one final cast. fp32 runs in
TF32 while ALLOW_TF32 is True, like cuDNN's default (torch.backends.cudnn.allow_tf32), so the two backends
compare like for like; set it False for exact fp32. The interpreter's tl.dot is exact whatever is asked.
A NaN in the pre-activation stays NaN in y, as in relu(conv2d(...)).
"""

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from torch.autograd.function import once_differentiable

from kernels.interpret import interpreting

ALLOW_TF32 = True

# GEMM tiles the autotuner chooses from: (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages), BLOCK_K given for
# 16-bit operands and halved for fp32, so a step reads 128 bytes of the reduction per row whatever the dtype.
# kernels.aot compiles every tile `usable_tiles` allows at AlexNet's shapes; the interpreter runs the first.
# All are 4 warps: a pipelined loop flattened over (r, s, c) with div/mod on its index is known to miscompile
# at 8 warps (pytorch issue 173068). wgrad's loop also splits pixels into (n, p, q), so it needs the widest
# tile to keep that address arithmetic below the tensor cores' time.
TILES = {
    "fwd": [(128, 128, 64, 4, 3), (128, 64, 64, 4, 4)],
    "dgrad": [(128, 128, 64, 4, 3), (128, 64, 64, 4, 4)],
    "wgrad": [(128, 128, 64, 4, 3)],
}
SMEM_BUDGET = 160 * 1024  # bytes for the pipelined operand tiles: sm_80 allows 163 KiB a block, sm_90 227
RESIDENT_BLOCKS = 2  # 4-warp blocks of up to 255 registers a thread that one SM's 64K registers hold
MIN_SPLIT_STEPS = 8  # wgrad's reduction is split across programs, each keeping at least this many BLOCK_K steps
S2D_MAX_CHANNELS = 64  # strided convolutions with at most this many channels after space-to-depth use it
MASK_TILE = 4096  # elements per program of the ReLU-mask kernel


def usable_tiles(kernel: str, dtype: torch.dtype, gemm_m: int, gemm_n: int) -> list[tuple]:
    """The tiles of TILES[kernel] the autotuner may pick for a GEMM of gemm_m x gemm_n outputs: those whose
    operand pipeline fits SMEM_BUDGET, none more than twice the side it covers (mostly masked work), and,
    where some tile's side divides the channel side (N forward and dgrad, M in wgrad), only those."""
    size = torch.finfo(dtype).bits // 8
    tiles = [(bm, bn, bk * 2 // size, warps, stages) for bm, bn, bk, warps, stages in TILES[kernel]]
    fits = [t for t in tiles if t[4] * (t[0] + t[1]) * t[2] * size <= SMEM_BUDGET]
    smallest_m, smallest_n = min(t[0] for t in fits), min(t[1] for t in fits)
    fits = [t for t in fits if t[0] <= max(smallest_m, 2 * gemm_m) and t[1] <= max(smallest_n, 2 * gemm_n)]
    side, channels = (0, gemm_m) if kernel == "wgrad" else (1, gemm_n)
    dividing = [t for t in fits if channels % t[side] == 0]
    return dividing or fits


def _tile_meta(tile: tuple) -> dict:
    bm, bn, bk, warps, stages = tile
    return dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, num_warps=warps, num_stages=stages)


def _configs(kernel: str) -> list[triton.Config]:
    """Every tile of TILES[kernel] with its 16-bit and its fp32 BLOCK_K (the pruner keeps the dtype's)."""
    return [triton.Config(dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=k), num_warps=warps, num_stages=stages)
            for bm, bn, bk, warps, stages in TILES[kernel] for k in (bk, bk // 2)]


def _pruner(kernel: str, gemm_sides):
    """An early_config_prune keeping usable_tiles; gemm_sides(args) -> (dtype, gemm_m, gemm_n).
    The interpreter would time every config (minutes per shape): it keeps the first usable one."""
    def prune(configs, named_args, **kwargs):
        usable = usable_tiles(kernel, *gemm_sides({**named_args, **kwargs}))
        kept = [c for c in configs if (c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.kwargs["BLOCK_K"],
                                       c.num_warps, c.num_stages) in usable]
        return kept[:1] if interpreting() else kept
    return prune


_KEY = ["ROWS", "H", "W", "P", "Q", "CG", "KG", "KH", "KW", "STRIDE_H", "STRIDE_W", "INDEX_64"]  # the problem

# The interpreter keeps bf16 as raw uint16 bits, and its tl.dot and comparisons use them as integers
# (triton/runtime/interpreter.py create_dot), so under it bf16 goes through fp32 there (exactly).
_BF16_VIA_FP32 = tl.constexpr(interpreting())


# ----------------------------------------------------------------------------------------------------------
# Addressing helpers shared by the kernels


@triton.jit
def _program_id(axis, INDEX_64: tl.constexpr):
    """program_id, widened to int64 when a tensor of the launch spans 2^31 elements (then so is every offset
    computed from it)."""
    pid = tl.program_id(axis)
    if INDEX_64:
        pid = pid.to(tl.int64)
    return pid


@triton.jit
def _split_pixels(m, P: tl.constexpr, Q: tl.constexpr):
    """Flat index over an [N, P, Q] pixel grid -> (n, p, q)."""
    n = m // (P * Q)
    pq = m - n * (P * Q)
    p = pq // Q
    return n, p, pq - p * Q


@triton.jit
def _split_window(kk, C: tl.constexpr, S: tl.constexpr):
    """Flat index over an [R, S, C] window, c fastest -> (c, r, s)."""
    rs = kk // C
    return kk % C, rs // S, rs % S


@triton.jit
def _inside(h, w, H: tl.constexpr, W: tl.constexpr):
    return (h >= 0) & (h < H) & (w >= 0) & (w < W)


@triton.jit
def _dot(a, b, acc, PRECISION: tl.constexpr):
    """acc + a @ b on tensor cores, fp32 accumulation."""
    if _BF16_VIA_FP32 and a.dtype == tl.bfloat16:
        a, b = a.to(tl.float32), b.to(tl.float32)
    return tl.dot(a, b, acc, input_precision=PRECISION)


# ----------------------------------------------------------------------------------------------------------
# Kernels


@triton.jit
def _relu_mask_kernel(
    dy_ptr,  # [ROWS, K] incoming gradient (channels_last [N, K, P, Q], contiguous)
    y_ptr,  # [ROWS, K] the forward's output (its sign is the ReLU mask), same layout
    g_ptr,  # [ROWS, K] out: dy where y > 0, else 0
    db_ptr,  # [cdiv(ROWS, BLOCK_R), K] float32 out: each row block's sum of g (not written without HAS_BIAS)
    ROWS, K: tl.constexpr,
    HAS_BIAS: tl.constexpr, INDEX_64: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
):
    pid_r = _program_id(0, INDEX_64)
    rows = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    ok = (rows < ROWS)[:, None] & (cols < K)[None, :]
    offsets = rows[:, None] * K + cols[None, :]
    dy = tl.load(dy_ptr + offsets, mask=ok, other=0.0)
    y = tl.load(y_ptr + offsets, mask=ok, other=0.0)
    if _BF16_VIA_FP32:
        y = y.to(tl.float32)
    g = tl.where(y > 0, dy, 0.0)
    tl.store(g_ptr + offsets, g.to(g_ptr.dtype.element_ty), mask=ok)
    if HAS_BIAS:
        tl.store(db_ptr + pid_r * K + cols, tl.sum(g.to(tl.float32), axis=0), mask=cols < K)


def _fwd_sides(a):
    return a["x_ptr"].dtype, a["ROWS"], a["KG"]


@triton.autotune(configs=_configs("fwd"), key=_KEY, prune_configs_by={"early_config_prune": _pruner("fwd", _fwd_sides)})
@triton.jit
def _fwd_kernel(
    x_ptr,  # [N, C, H, W] any strides
    w_ptr,  # [K, C_g, R, S] (the launcher makes (r, s, c) contiguous)
    b_ptr,  # [K] (not read when HAS_BIAS is False)
    y_ptr,  # [N, K, P, Q] (allocated channels_last)
    ROWS,  # N*P*Q, the output pixels
    sx_n, sx_c, sx_h, sx_w, sw_k, sw_c, sw_r, sw_s, sy_n, sy_c, sy_h, sy_w,
    H: tl.constexpr, W: tl.constexpr, P: tl.constexpr, Q: tl.constexpr,
    CG: tl.constexpr, KG: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr,
    STRIDE_H: tl.constexpr, STRIDE_W: tl.constexpr, PAD_H: tl.constexpr, PAD_W: tl.constexpr,
    HAS_BIAS: tl.constexpr, PRECISION: tl.constexpr, INDEX_64: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid = _program_id(0, INDEX_64)
    g = tl.program_id(1)
    pid_m, pid_n = pid // tl.cdiv(KG, BLOCK_N), pid % tl.cdiv(KG, BLOCK_N)

    m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # output pixels (GEMM rows)
    n, p, q = _split_pixels(m, P, Q)
    m_ok = m < ROWS
    ih, iw = p * STRIDE_H - PAD_H, q * STRIDE_W - PAD_W  # top-left corner of each pixel's window
    x_row = n * sx_n + ih * sx_h + iw * sx_w + g * CG * sx_c
    k = g * KG + pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # output channels (GEMM columns)
    k_ok = k < (g + 1) * KG

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, CG * KH * KW, BLOCK_K):
        if CG % BLOCK_K == 0:  # one tap (r, s) per step: masks per pixel
            r, s = (k0 // CG) // KW, (k0 // CG) % KW
            c = tl.multiple_of(k0 % CG, BLOCK_K) + tl.arange(0, BLOCK_K)  # the hint lets loads go async
            a_ok = (m_ok & _inside(ih + r, iw + s, H, W))[:, None]
            b_ok = k_ok[None, :]
        else:  # the window's positions (the reduction), element by element
            kk = k0 + tl.arange(0, BLOCK_K)
            c, r, s = _split_window(kk, CG, KW)
            kk_ok = kk < CG * KH * KW
            a_ok = m_ok[:, None] & kk_ok[None, :] & _inside(ih[:, None] + r[None, :], iw[:, None] + s[None, :], H, W)
            b_ok = kk_ok[:, None] & k_ok[None, :]
        a = tl.load(x_ptr + x_row[:, None] + (c * sx_c + r * sx_h + s * sx_w)[None, :], mask=a_ok, other=0.0)
        b = tl.load(w_ptr + (c * sw_c + r * sw_r + s * sw_s)[:, None] + (k * sw_k)[None, :], mask=b_ok, other=0.0)
        acc = _dot(a, b, acc, PRECISION)

    if HAS_BIAS:
        acc += tl.load(b_ptr + k, mask=k_ok, other=0.0).to(tl.float32)[None, :]
    y = tl.where(acc < 0, 0.0, acc).to(y_ptr.dtype.element_ty)  # not maximum(acc, 0): a NaN stays NaN
    y_off = (n * sy_n + p * sy_h + q * sy_w)[:, None] + (k * sy_c)[None, :]
    tl.store(y_ptr + y_off, y, mask=m_ok[:, None] & k_ok[None, :])


def _dgrad_sides(a):
    return a["g_ptr"].dtype, a["ROWS"], a["CG"]


@triton.autotune(configs=_configs("dgrad"), key=_KEY,
                 prune_configs_by={"early_config_prune": _pruner("dgrad", _dgrad_sides)})
@triton.jit
def _dgrad_kernel(
    g_ptr,  # [N, K, P, Q] the masked gradient dy * (y > 0), channels_last
    w_ptr,  # [K, C_g, R, S] (the launcher makes k contiguous)
    dx_ptr,  # [N, C, H, W] (allocated channels_last)
    ROWS,  # N * ceil(H / STRIDE_H) * ceil(W / STRIDE_W): the largest phase's pixels
    sg_n, sg_c, sg_h, sg_w, sw_k, sw_c, sw_r, sw_s, sx_n, sx_c, sx_h, sx_w,
    H: tl.constexpr, W: tl.constexpr, P: tl.constexpr, Q: tl.constexpr,
    CG: tl.constexpr, KG: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr,
    STRIDE_H: tl.constexpr, STRIDE_W: tl.constexpr, PAD_H: tl.constexpr, PAD_W: tl.constexpr,
    PRECISION: tl.constexpr, INDEX_64: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid = _program_id(0, INDEX_64)
    g = tl.program_id(1)
    # This program's stride phase: input rows h = i*STRIDE_H + h0 and columns v = j*STRIDE_W + v0, reached
    # by the taps r = r0 + t*STRIDE_H, s = s0 + u*STRIDE_W from output row p = i + p0 - t, column q = j + q0 - u.
    phase = tl.program_id(2)
    h0, v0 = phase // STRIDE_W, phase % STRIDE_W
    r0, s0 = (h0 + PAD_H) % STRIDE_H, (v0 + PAD_W) % STRIDE_W
    p0, q0 = (h0 + PAD_H) // STRIDE_H, (v0 + PAD_W) // STRIDE_W
    TAPS_H: tl.constexpr = (KH + STRIDE_H - 1) // STRIDE_H
    TAPS_W: tl.constexpr = (KW + STRIDE_W - 1) // STRIDE_W
    HS: tl.constexpr = (H + STRIDE_H - 1) // STRIDE_H  # rows and columns per phase, at most
    WS: tl.constexpr = (W + STRIDE_W - 1) // STRIDE_W
    pid_m, pid_n = pid // tl.cdiv(CG, BLOCK_N), pid % tl.cdiv(CG, BLOCK_N)

    m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # input pixels of this phase (GEMM rows)
    n, i, j = _split_pixels(m, HS, WS)
    h, v = i * STRIDE_H + h0, j * STRIDE_W + v0
    m_ok = (m < ROWS) & (h < H) & (v < W)
    g_row = n * sg_n + (i + p0) * sg_h + (j + q0) * sg_w + g * KG * sg_c
    c = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # input channels within the group (GEMM columns)
    c_ok = c < CG

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, TAPS_H * TAPS_W * KG, BLOCK_K):
        if KG % BLOCK_K == 0:  # one tap (t, u) per step: masks per pixel
            t, u = (k0 // KG) // TAPS_W, (k0 // KG) % TAPS_W
            k = tl.multiple_of(k0 % KG, BLOCK_K) + tl.arange(0, BLOCK_K)  # the hint lets loads go async
            tap_ok = (r0 + t * STRIDE_H < KH) & (s0 + u * STRIDE_W < KW)
            a_ok = (m_ok & _inside(i + p0 - t, j + q0 - u, P, Q) & tap_ok)[:, None]
            b_ok = c_ok[None, :] & tap_ok
        else:  # (tap, output channel) pairs (the reduction), element by element
            kk = k0 + tl.arange(0, BLOCK_K)
            k, t, u = _split_window(kk, KG, TAPS_W)
            kk_ok = (kk < TAPS_H * TAPS_W * KG) & (r0 + t * STRIDE_H < KH) & (s0 + u * STRIDE_W < KW)
            a_ok = m_ok[:, None] & kk_ok[None, :] & _inside((i + p0)[:, None] - t[None, :],
                                                            (j + q0)[:, None] - u[None, :], P, Q)
            b_ok = kk_ok[:, None] & c_ok[None, :]
        r, s = r0 + t * STRIDE_H, s0 + u * STRIDE_W
        a = tl.load(g_ptr + g_row[:, None] + (k * sg_c - t * sg_h - u * sg_w)[None, :], mask=a_ok, other=0.0)
        b = tl.load(w_ptr + ((g * KG + k) * sw_k + r * sw_r + s * sw_s)[:, None] + (c * sw_c)[None, :],
                    mask=b_ok, other=0.0)
        acc = _dot(a, b, acc, PRECISION)

    dx_off = (n * sx_n + h * sx_h + v * sx_w)[:, None] + ((g * CG + c) * sx_c)[None, :]
    tl.store(dx_ptr + dx_off, acc.to(dx_ptr.dtype.element_ty), mask=m_ok[:, None] & c_ok[None, :])


def _wgrad_sides(a):
    return a["x_ptr"].dtype, a["KG"], a["CG"] * a["KH"] * a["KW"]


@triton.autotune(configs=_configs("wgrad"), key=_KEY, reset_to_zero=["dw_ptr"],
                 prune_configs_by={"early_config_prune": _pruner("wgrad", _wgrad_sides)})
@triton.jit
def _wgrad_kernel(
    x_ptr,  # [N, C, H, W] any strides
    g_ptr,  # [N*P*Q, K] the masked gradient dy * (y > 0): channels_last [N, K, P, Q], contiguous
    dw_ptr,  # [K, C_g, R, S] float32, zeroed: every split adds its partial sum
    ROWS,  # N*P*Q, the output pixels (the reduction)
    sx_n, sx_c, sx_h, sx_w, sw_k, sw_c, sw_r, sw_s,
    H: tl.constexpr, W: tl.constexpr, P: tl.constexpr, Q: tl.constexpr,
    CG: tl.constexpr, KG: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr,
    STRIDE_H: tl.constexpr, STRIDE_W: tl.constexpr, PAD_H: tl.constexpr, PAD_W: tl.constexpr,
    GROUPS: tl.constexpr, PRECISION: tl.constexpr, INDEX_64: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid = tl.program_id(0)  # output tiles: few
    g = tl.program_id(1)
    split = _program_id(2, INDEX_64)
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
    for m0 in range(start, stop, BLOCK_K):
        m = m0 + tl.arange(0, BLOCK_K)  # output pixels
        m_ok = m < stop
        a = tl.load(g_ptr + k[:, None] + (m * (KG * GROUPS))[None, :],
                    mask=k_ok[:, None] & m_ok[None, :], other=0.0)
        n, p, q = _split_pixels(m, P, Q)
        ih, iw = p * STRIDE_H - PAD_H, q * STRIDE_W - PAD_W
        b_ok = m_ok[:, None] & kk_ok[None, :] & _inside(ih[:, None] + r[None, :], iw[:, None] + s[None, :], H, W)
        b = tl.load(x_ptr + (n * sx_n + ih * sx_h + iw * sx_w)[:, None] + x_col[None, :], mask=b_ok, other=0.0)
        acc = _dot(a, b, acc, PRECISION)

    dw_off = (k * sw_k)[:, None] + (c * sw_c + r * sw_r + s * sw_s)[None, :]
    tl.atomic_add(dw_ptr + dw_off, acc, mask=k_ok[:, None] & kk_ok[None, :], sem="relaxed")


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


def _index_64(*tensors) -> bool:
    """Whether an offset into one of `tensors` can reach 2^31 elements (then the kernels index in int64)."""
    return any(sum((size - 1) * step for size, step in zip(t.shape, t.stride())) >= 2**31 for t in tensors)


def _constants(x_shape, w_shape, y_shape, stride, padding, groups):
    """The constexpr geometry shared by the three GEMM kernels."""
    (_, C, H, W), (K, _, R, S), (_, _, P, Q) = x_shape, w_shape, y_shape
    return dict(H=H, W=W, P=P, Q=Q, CG=C // groups, KG=K // groups, KH=R, KW=S, STRIDE_H=stride[0],
                STRIDE_W=stride[1], PAD_H=padding[0], PAD_W=padding[1])


# Space-to-depth (see the top): the equivalent stride-1 convolution of a strided one over few channels.


def _space_to_depth(x_shape, w_shape, stride, padding, groups):
    """None, or (stride pair, padding pair, (R2, S2) taps, (rows, cols) of x2) of the space-to-depth form if it
    applies: a strided convolution, one group, at most S2D_MAX_CHANNELS channels after, a window at least the
    stride."""
    stride, padding, (P, Q) = _geometry(x_shape, w_shape, stride, padding, groups)
    (sh, sw), (_, C, _, _), (_, _, R, S) = stride, x_shape, w_shape
    if groups > 1 or sh * sw == 1 or C * sh * sw > S2D_MAX_CHANNELS or R < sh or S < sw:
        return None
    R2, S2 = triton.cdiv(R, sh), triton.cdiv(S, sw)
    return stride, padding, (R2, S2), (P + R2 - 1, Q + S2 - 1)


def _s2d_input(x, stride, padding, rows, cols):
    """x2[n, (i*sw + j)*C + c, h, v] = x[n, c, h*sh + i - ph, v*sw + j - pw] (0 outside x), channels_last."""
    (N, C, H, W), (sh, sw), (ph, pw) = x.shape, stride, padding
    x = F.pad(x, (pw, cols * sw - W - pw, ph, rows * sh - H - ph))  # a negative pad crops unread rows
    x = x.reshape(N, C, rows, sh, cols, sw).permute(0, 2, 4, 3, 5, 1)  # [N, rows, cols, sh, sw, C]
    return x.reshape(N, rows, cols, sh * sw * C).permute(0, 3, 1, 2)


def _s2d_input_grad(dx2, x_shape, stride, padding):
    """The gradient with respect to x of _s2d_input's output, given the gradient dx2 of that output."""
    (N, C, H, W), (sh, sw), (ph, pw), (_, _, rows, cols) = x_shape, stride, padding, dx2.shape
    dx = dx2.reshape(N, sh, sw, C, rows, cols).permute(0, 3, 4, 1, 5, 2).reshape(N, C, rows * sh, cols * sw)
    dx = F.pad(dx, (-pw, W + pw - cols * sw, -ph, H + ph - rows * sh))
    return dx.contiguous(memory_format=torch.channels_last)


def _s2d_weight(w, stride, taps):
    """w2[k, (i*sw + j)*C + c, r2, s2] = w[k, c, r2*sh + i, s2*sw + j] (0 past the window)."""
    (K, C, R, S), (sh, sw), (R2, S2) = w.shape, stride, taps
    w = F.pad(w, (0, S2 * sw - S, 0, R2 * sh - R))
    return w.reshape(K, C, R2, sh, S2, sw).permute(0, 3, 5, 1, 2, 4).reshape(K, sh * sw * C, R2, S2)


def _s2d_weight_grad(dw2, w_shape, stride):
    """dw from the gradient dw2 of _s2d_weight's output: the taps past the window are dropped."""
    (K, C, R, S), (sh, sw), (_, _, R2, S2) = w_shape, stride, dw2.shape
    dw = dw2.reshape(K, sh, sw, C, R2, S2).permute(0, 3, 4, 1, 5, 2).reshape(K, C, R2 * sh, S2 * sw)
    return dw[:, :, :R, :S]


# Plans: the output, grid, args and meta of one launch, the tile left to the autotuner. The launchers and
# kernels.aot (on meta-device tensors) share them, so what aot compiles is what runs.


def _mask_plan(dy, y, bias):
    N, K, P, Q = y.shape
    dy = dy.contiguous(memory_format=torch.channels_last)
    y = y.contiguous(memory_format=torch.channels_last)
    g = torch.empty_like(y)
    block_c = min(128, triton.next_power_of_2(K))
    block_r = MASK_TILE // block_c
    db = torch.empty(triton.cdiv(N * P * Q, block_r), K, device=y.device, dtype=torch.float32) if bias else None
    grid = (triton.cdiv(N * P * Q, block_r), triton.cdiv(K, block_c))
    args = (dy, y, g, db if bias else g, N * P * Q)
    meta = dict(K=K, HAS_BIAS=bias, INDEX_64=_index_64(y), BLOCK_R=block_r, BLOCK_C=block_c, num_warps=4)
    return g, db, grid, args, meta


def _fwd_plan(x, weight, bias, stride, padding, groups):
    stride, padding, (P, Q) = _geometry(x.shape, weight.shape, stride, padding, groups)
    N = x.shape[0]
    K = weight.shape[0]
    w = weight.contiguous(memory_format=torch.channels_last)  # (r, s, c) contiguous: the reduction
    y = torch.empty((N, K, P, Q), device=x.device, dtype=x.dtype, memory_format=torch.channels_last)
    grid = lambda meta: (triton.cdiv(N * P * Q, meta["BLOCK_M"]) * triton.cdiv(K // groups, meta["BLOCK_N"]), groups)
    args = (x, w, bias if bias is not None else w, y, N * P * Q, *x.stride(), *w.stride(), *y.stride())
    meta = dict(_constants(x.shape, w.shape, y.shape, stride, padding, groups), HAS_BIAS=bias is not None,
                PRECISION=_precision(x.dtype), INDEX_64=_index_64(x, y))
    return y, grid, args, meta


def _dgrad_plan(g, weight, x_shape, stride, padding, groups):
    stride, padding, _ = _geometry(x_shape, weight.shape, stride, padding, groups)
    N, C, H, W = x_shape
    w = weight.permute(1, 2, 3, 0).contiguous().permute(3, 0, 1, 2)  # k contiguous: the reduction
    dx = torch.empty(x_shape, device=g.device, dtype=g.dtype, memory_format=torch.channels_last)
    rows = N * triton.cdiv(H, stride[0]) * triton.cdiv(W, stride[1])
    grid = lambda meta: (triton.cdiv(rows, meta["BLOCK_M"]) * triton.cdiv(C // groups, meta["BLOCK_N"]),
                         groups, stride[0] * stride[1])
    args = (g, w, dx, rows, *g.stride(), *w.stride(), *dx.stride())
    meta = dict(_constants(x_shape, w.shape, g.shape, stride, padding, groups), PRECISION=_precision(g.dtype),
                INDEX_64=_index_64(g, dx))
    return dx, grid, args, meta


def wgrad_splits(programs: int, steps: int, sms: int) -> int:
    """How many programs share wgrad's reduction of `steps` BLOCK_K steps when the output tiles alone
    make `programs`: one wave, each of `sms` SMs holding RESIDENT_BLOCKS, each split keeping MIN_SPLIT_STEPS steps."""
    return max(1, min(triton.cdiv(RESIDENT_BLOCKS * sms, programs), steps // MIN_SPLIT_STEPS))


def _wgrad_plan(g, x, weight_shape, stride, padding, groups, sms=None):
    """(dw, grid, args, meta) of wgrad, its reduction split for `sms` SMs (default: x's GPU's; 4 with no GPU)."""
    stride, padding, _ = _geometry(x.shape, weight_shape, stride, padding, groups)
    N, _, _, _ = x.shape
    K, CG, R, S = weight_shape
    _, _, P, Q = g.shape
    dw = torch.zeros(weight_shape, device=x.device, dtype=torch.float32)
    tiles = lambda meta: triton.cdiv(K // groups, meta["BLOCK_M"]) * triton.cdiv(CG * R * S, meta["BLOCK_N"])
    if sms is None:
        sms = torch.cuda.get_device_properties(x.device).multi_processor_count if x.device.type == "cuda" else 4
    splits = lambda meta: wgrad_splits(tiles(meta) * groups, triton.cdiv(N * P * Q, meta["BLOCK_K"]), sms)
    grid = lambda meta: (tiles(meta), groups, splits(meta))
    args = (x, g, dw, N * P * Q, *x.stride(), *dw.stride())
    meta = dict(_constants(x.shape, weight_shape, g.shape, stride, padding, groups), GROUPS=groups,
                PRECISION=_precision(x.dtype), INDEX_64=_index_64(x, g))
    return dw, grid, args, meta


def _relu_mask(dy, y, bias: bool):
    """(g, db): dy where y > 0 (channels_last) and, if `bias`, its sum over pixels in fp32 (else None)."""
    if dy.shape != y.shape:
        raise ValueError(f"conv2d_relu: dy has shape {tuple(dy.shape)} but the output y has {tuple(y.shape)}")
    g, db, grid, args, meta = _mask_plan(dy, y, bias)
    if g.numel():
        _relu_mask_kernel[grid](*args, **meta)
    return g, (db.sum(0) if g.numel() else torch.zeros(y.shape[1], device=y.device)) if bias else None


def _stride_one(x, weight, stride, padding, groups):
    """(x, weight, stride, padding) of the convolution the forward runs: the space-to-depth form if it applies."""
    s2d = _space_to_depth(x.shape, weight.shape, stride, padding, groups)
    if not s2d:
        return x, weight, stride, padding
    stride, padding, taps, (rows, cols) = s2d
    return _s2d_input(x, stride, padding, rows, cols), _s2d_weight(weight, stride, taps), 1, 0


def _dgrad(g, weight, x_shape, stride, padding, groups):
    s2d = _space_to_depth(x_shape, weight.shape, stride, padding, groups)
    if s2d:
        stride, padding, taps, (rows, cols) = s2d
        w2 = _s2d_weight(weight, stride, taps)
        dx2 = _dgrad(g, w2, (x_shape[0], w2.shape[1], rows, cols), 1, 0, 1)
        return _s2d_input_grad(dx2, x_shape, stride, padding)
    dx, grid, args, meta = _dgrad_plan(g, weight, x_shape, stride, padding, groups)
    if dx.numel():
        _dgrad_kernel[grid](*args, **meta)
    return dx


def _wgrad(g, x, weight_shape, stride, padding, groups):
    """dw in fp32."""
    s2d = _space_to_depth(x.shape, weight_shape, stride, padding, groups)
    if s2d:
        stride, padding, taps, (rows, cols) = s2d
        x2 = _s2d_input(x, stride, padding, rows, cols)
        dw2 = _wgrad(g, x2, (weight_shape[0], x2.shape[1], *taps), 1, 0, 1)
        return _s2d_weight_grad(dw2, weight_shape, stride)
    dw, grid, args, meta = _wgrad_plan(g, x, weight_shape, stride, padding, groups)
    if g.numel():
        _wgrad_kernel[grid](*args, **meta)
    return dw


def conv2d_relu_fwd(x, weight, bias=None, stride=1, padding=0, groups=1):
    """relu(conv2d(x, weight, bias, stride, padding, groups=groups)), returned channels_last."""
    _check(x, weight, bias)
    x, weight, stride, padding = _stride_one(x, weight, stride, padding, groups)
    y, grid, args, meta = _fwd_plan(x, weight, bias, stride, padding, groups)
    if y.numel():
        _fwd_kernel[grid](*args, **meta)
    return y


def conv2d_relu_dgrad(dy, y, weight, x_shape, stride=1, padding=0, groups=1):
    """The gradient of conv2d_relu(x, weight, ...) = y with respect to x (of shape x_shape), channels_last."""
    return _dgrad(_relu_mask(dy, y, bias=False)[0], weight, x_shape, stride, padding, groups)


def conv2d_relu_wgrad(dy, y, x, weight_shape, stride=1, padding=0, groups=1, bias=True):
    """The gradients of conv2d_relu(x, weight, ...) = y with respect to the weight (of shape weight_shape)
    and, if `bias`, the bias (else None), in x's dtype; accumulated in fp32."""
    g, db = _relu_mask(dy, y, bias)
    dw = _wgrad(g, x, weight_shape, stride, padding, groups)
    return dw.to(x.dtype), db.to(x.dtype) if bias else None


def conv2d_relu_bwd(dy, y, x, weight, stride=1, padding=0, groups=1, needs=(True, True, True)):
    """(dx, dweight, dbias) of conv2d_relu; `needs` says which of the three to compute (None otherwise)."""
    g, db = _relu_mask(dy, y, bias=needs[2])
    dx = _dgrad(g, weight, x.shape, stride, padding, groups) if needs[0] else None
    dw = _wgrad(g, x, weight.shape, stride, padding, groups).to(x.dtype) if needs[1] else None
    return dx, dw, db.to(x.dtype) if needs[2] else None


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
    """(label, kernel, args, meta, work) of every launch the launchers make at AlexNet's shapes, one per usable
    tile (kernels.aot; `work` as kernels.work says, wgrad split for `sms` SMs: H100/H200). conv1's input is
    NCHW (the images) and runs in its space-to-depth form; the others are channels_last (conv1's output
    layout, which LRN and max-pool keep). The training step runs bf16 or tf32, and never conv1's dgrad (the
    images need none). MACs and bytes are the convolution's own (bench.costs), not its space-to-depth form's."""
    from math import prod

    from kernels.work import ELEMENT_BYTES, conv_work, dtype_name, launch_work

    for name, (x_shape, w_shape, stride, padding, groups) in ALEXNET_CONVS.items():
        layout = torch.contiguous_format if name == "conv1" else torch.channels_last
        for dtype in (torch.float32, torch.float16, torch.bfloat16):
            x = torch.empty(batch, *x_shape, dtype=dtype, device="meta", memory_format=layout)
            w = torch.empty(w_shape, dtype=dtype, device="meta")
            b = torch.empty(w_shape[0], dtype=dtype, device="meta")
            label = f"{name} {str(dtype).removeprefix('torch.')}{' tf32' if _precision(dtype) == 'tf32' else ''}"
            dt = dtype_name(dtype, tf32=_precision(dtype) == "tf32")
            in_step = dt in ("bf16", "tf32")
            work = lambda op, grid, iterations, step=in_step: conv_work(
                name, op, (batch, *x_shape), w_shape, stride, padding, dt, prod(grid), iterations, step)
            x2, w2, step, pad = _stride_one(x, w, stride, padding, groups)  # the form that runs
            y, grid, args, meta = _fwd_plan(x2, w2, b, step, pad, groups)
            yield from _tiled(f"{label} fwd", "fwd", _fwd_kernel, args, meta, _fwd_sides, lambda m: work(
                "fwd", grid(m), triton.cdiv(m["CG"] * m["KH"] * m["KW"], m["BLOCK_K"])))
            g, _, grid, args, meta = _mask_plan(y, y, bias=True)
            mask_bytes = 3 * y.numel() * ELEMENT_BYTES[dt] + 2 * grid[0] * y.shape[1] * 4  # dy, y, g; db partials
            yield f"{label} relu_mask", _relu_mask_kernel, args, meta, launch_work(
                name, "relu_mask", dt, prod(grid), 1, 0, mask_bytes, in_step)
            _, grid, args, meta = _dgrad_plan(g, w2, x2.shape, step, pad, groups)
            yield from _tiled(f"{label} dgrad", "dgrad", _dgrad_kernel, args, meta, _dgrad_sides, lambda m: work(
                "dgrad", grid(m), triton.cdiv(triton.cdiv(m["KH"], m["STRIDE_H"]) * triton.cdiv(m["KW"], m["STRIDE_W"])
                                              * m["KG"], m["BLOCK_K"]),
                step=in_step and name != "conv1"))
            _, grid, args, meta = _wgrad_plan(g, x2, w2.shape, step, pad, groups, sms=sms)
            yield from _tiled(f"{label} wgrad", "wgrad", _wgrad_kernel, args, meta, _wgrad_sides, lambda m: work(
                "wgrad", grid(m), triton.cdiv(triton.cdiv(args[3], m["BLOCK_K"]), grid(m)[2])))  # args[3]: the pixels


def _tiled(label, kernel_name, autotuned, args, meta, sides, work):
    """One (label, kernel, args, meta, work) per usable tile; work(tile meta) -> the launch's work."""
    named = {**dict(zip(autotuned.fn.arg_names, args)), **meta}
    for tile in usable_tiles(kernel_name, *sides(named)):
        tile_meta = {**meta, **_tile_meta(tile)}
        yield label, autotuned.fn, args, tile_meta, work(tile_meta)
