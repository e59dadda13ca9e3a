"""The Triton kernels of conv2d + ReLU: the space-to-depth copy (conv1's input), forward, the ReLU mask (and
bias-gradient partials), dgrad, wgrad.

The math and the layouts are in kernels/conv_relu/__init__.py; kernels/conv_relu/launch.py plans and starts
them, passing every argument by name. Each GEMM is the Triton matmul tutorial with im2col addressing.
"""

import triton
import triton.language as tl

from kernels.conv_relu.tiles import autotune
from kernels.interpret import interpreting
from kernels.rounding import to_16_bits

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
def space_to_depth_kernel(
    x_ptr,  # [N, C, H, W] any strides
    x2_ptr,  # [N, S2D_H*S2D_W*C, ROWS, COLS] out, channels_last: contiguous [N*ROWS*COLS, S2D_H*S2D_W*C]
    PIXELS,  # N*ROWS*COLS, x2's pixels
    sx_n, sx_c, sx_h, sx_w,
    C: tl.constexpr, H: tl.constexpr, W: tl.constexpr, ROWS: tl.constexpr, COLS: tl.constexpr,
    S2D_H: tl.constexpr, S2D_W: tl.constexpr, PAD_H: tl.constexpr, PAD_W: tl.constexpr,
    INDEX_64: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """x2[n, (i*S2D_W + j)*C + c, h, v] = x[n, c, h*S2D_H + i - PAD_H, v*S2D_W + j - PAD_W], 0 outside x: the
    space-to-depth form's input (space_to_depth.py) in one pass, a tile of [pixels, all their channels], cast to
    x2's dtype as torch casts. With no padding, the weight's form too (n the filter, (h, v) the tap)."""
    C2: tl.constexpr = S2D_H * S2D_W * C
    pixel = _program_id(0, INDEX_64) * BLOCK_P + tl.arange(0, BLOCK_P)
    n, h, v = _split_pixels(pixel, ROWS, COLS)
    top, left = h * S2D_H - PAD_H, v * S2D_W - PAD_W  # the x row and column of (i, j) = (0, 0)
    c2 = tl.arange(0, BLOCK_C)
    i, jc = c2 // (S2D_W * C), c2 % (S2D_W * C)
    j, c = jc // C, jc % C
    row, col = top[:, None] + i[None, :], left[:, None] + j[None, :]
    ok = (pixel < PIXELS)[:, None] & (c2 < C2)[None, :]
    x_off = (n * sx_n + top * sx_h + left * sx_w)[:, None] + (i * sx_h + j * sx_w + c * sx_c)[None, :]
    value = tl.load(x_ptr + x_off, mask=ok & _inside(row, col, H, W), other=0.0)
    if x2_ptr.dtype.element_ty != x_ptr.dtype.element_ty:  # through fp32, which holds every 16-bit value
        value = to_16_bits(value.to(tl.float32), x2_ptr.dtype.element_ty)
    tl.store(x2_ptr + (pixel * C2)[:, None] + c2[None, :], value, mask=ok)


@triton.jit
def relu_mask_kernel(
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


@autotune("fwd")
@triton.jit
def fwd_kernel(
    x_ptr,  # [N, C, H, W] any strides
    w_ptr,  # [K, C_g, R, S] (the launcher makes (r, s, c) contiguous)
    b_ptr,  # [K] any stride (not read when HAS_BIAS is False)
    y_ptr,  # [N, K, P, Q] (allocated channels_last)
    ROWS,  # N*P*Q, the output pixels
    sx_n, sx_c, sx_h, sx_w, sw_k, sw_c, sw_r, sw_s, sy_n, sy_c, sy_h, sy_w, sb_k,
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
        acc += tl.load(b_ptr + k * sb_k, mask=k_ok, other=0.0).to(tl.float32)[None, :]
    y = tl.where(acc < 0, 0.0, acc).to(y_ptr.dtype.element_ty)  # not maximum(acc, 0): a NaN stays NaN
    y_off = (n * sy_n + p * sy_h + q * sy_w)[:, None] + (k * sy_c)[None, :]
    tl.store(y_ptr + y_off, y, mask=m_ok[:, None] & k_ok[None, :])


@autotune("dgrad")
@triton.jit
def dgrad_kernel(
    g_ptr,  # [N, K, P, Q] the masked gradient dy * (y > 0), channels_last
    w_ptr,  # [K, C_g, R, S] k contiguous, or channels contiguous in 16 bits (the forward's copy)
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


@autotune("wgrad")
@triton.jit
def wgrad_kernel(
    x_ptr,  # [N, C, H, W] any strides
    g_ptr,  # [N*P*Q, K] the masked gradient dy * (y > 0): channels_last [N, K, P, Q], contiguous
    dw_ptr,  # [SPLITS, K, C_g, R, S] float32 out: each split's partial sum (the launcher adds them in order)
    ROWS,  # N*P*Q, the output pixels (the reduction)
    sx_n, sx_c, sx_h, sx_w, sw_split, sw_k, sw_c, sw_r, sw_s,
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
    # A plain store, no atomics: the same partials, summed in the same order, give the same dW every run.
    tl.store(dw_ptr + split * sw_split + dw_off, acc, mask=k_ok[:, None] & kk_ok[None, :])
