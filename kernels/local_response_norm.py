"""Cross-channel local response normalisation (Krizhevsky et al. 2012, section 3.3) in Triton.

Forward, for channel i of N at one position, with a window of n = `size` channels
W(i) = [i - B, i + A], B = n // 2 before and A = (n - 1) // 2 after (PyTorch's window; for the
paper's odd n it is i - n/2 .. i + n/2), clipped to [0, N):

    s_i = sum_{m in W(i)} a_m^2        d_i = k + alpha * s_i        b_i = a_i * d_i^(-beta)

alpha is the paper's: NOT divided by n (F.local_response_norm divides it; see kernels.torch_ops).
Backward, with g = dL/db: a_j enters b_j directly and every d_i whose window holds j, i.e.
i in [j - A, j + B], so, with T_i = g_i a_i d_i^(-beta-1),

    dL/da_j = g_j d_j^(-beta) - 2 alpha beta a_j sum_{i=j-A}^{j+B} T_i

The backward saves only `a` (the input): it recomputes every d_i from the neighbouring a's,
which it reads anyway, so saving d or b would only add a tensor's worth of HBM writes (forward)
and reads (backward) to a memory-bound op.

Both kernels are one pass of a sliding window over the channels. The tensor is seen as [N, C, L]
with L = H * W positions (merging H and W is a view for NCHW, channels_last and channel/batch
slices; other layouts are copied first). Each thread owns one position and walks its channels in
chunks of VEC, keeping the last few chunks in registers, so every a and g is loaded once and every
d_i, d_i^(-beta), T_i is computed once per element (the old kernels recomputed SIZE windows and
SIZE powers per element in the backward). The window lags the loads by whole chunks: the forward
writes chunk t after loading chunk t + KA (KA = ceil(A / VEC) chunks of look-ahead, KB = ceil(B / VEC)
of look-behind); the backward computes T for chunk t + KB (which needs a up to chunk t + KB + KA)
and then dL/da for chunk t. Channels outside [0, C) are zeros (masked loads; T forced to 0 there).

In channels_last the chunk is one 16-byte vector of the thread's own position (8 bf16/fp16 or 4 fp32
channels, a [BLOCK_P, VEC] tile whose channel axis lies within the thread) split into VEC registers
with tl.split and joined back for one 16-byte store; in NCHW (positions contiguous) a chunk is VEC
coalesced row loads. Offsets within an image are 32-bit (the launcher checks they fit); only the
image offset n * stride_n is 64-bit.

Powers: for the paper's beta = 0.75 (BETA_075), r = rsqrt(d) and d^(-0.75) = r * sqrt(r),
d^(-1.75) = d^(-0.75) * r^2: two MUFU ops (rsqrt.approx, sqrt.approx, a few ulp of fp32). Any other
beta takes exp2(-beta * log2(d)) with Triton's accurate log2 (a libdevice polynomial): slower, exact.
"""

import math

import torch
import triton
import triton.language as tl
from torch.autograd.function import once_differentiable

from kernels.tensors import cdiv, check_activation, check_image_offsets, check_positive_int, launch, \
    next_power_of_2, shapes_only

# (warps, channels a trip in NCHW): a program takes BLOCK_P = 32 * warps positions of one image,
# one a thread, and all its channels; a trip of the channel loop takes one 16-byte vector of channels
# in channels_last (8 bf16/fp16, 4 fp32) and this many row loads in NCHW
FWD_CONFIG = (4, 4)
BWD_CONFIG = (4, 4)


@triton.jit
def _split(t, VEC: tl.constexpr):
    """[P, VEC] tile (channel axis within the thread) -> tuple of VEC [P] tensors, in channel order."""
    if VEC == 1:
        return (tl.reshape(t, [t.shape[0]]),)
    elif VEC == 2:
        c0, c1 = tl.split(t)
        return c0, c1
    elif VEC == 4:
        even, odd = tl.split(tl.reshape(t, [t.shape[0], 2, 2]))  # channel = 2 * i + bit
        c0, c2 = tl.split(even)
        c1, c3 = tl.split(odd)
        return c0, c1, c2, c3
    else:
        tl.static_assert(VEC == 8, "VEC must be 1, 2, 4 or 8")
        even, odd = tl.split(tl.reshape(t, [t.shape[0], 4, 2]))
        e0, e1 = tl.split(tl.reshape(even, [t.shape[0], 2, 2]))
        o0, o1 = tl.split(tl.reshape(odd, [t.shape[0], 2, 2]))
        c0, c4 = tl.split(e0)
        c2, c6 = tl.split(e1)
        c1, c5 = tl.split(o0)
        c3, c7 = tl.split(o1)
        return c0, c1, c2, c3, c4, c5, c6, c7


@triton.jit
def _join(v, VEC: tl.constexpr):
    """Inverse of _split: a tuple of VEC [P] tensors -> [P, VEC] tile."""
    if VEC == 1:
        return tl.reshape(v[0], [v[0].shape[0], 1])
    elif VEC == 2:
        return tl.join(v[0], v[1])
    elif VEC == 4:
        return tl.reshape(tl.join(tl.join(v[0], v[2]), tl.join(v[1], v[3])), [v[0].shape[0], 4])
    else:
        even = tl.reshape(tl.join(tl.join(v[0], v[4]), tl.join(v[2], v[6])), [v[0].shape[0], 4])
        odd = tl.reshape(tl.join(tl.join(v[1], v[5]), tl.join(v[3], v[7])), [v[0].shape[0], 4])
        return tl.reshape(tl.join(even, odd), [v[0].shape[0], 8])


@triton.jit
def _load_chunk(img, row, pos_ok, c0, C, sc, VEC: tl.constexpr, CHANNELS_LAST: tl.constexpr):
    """fp32 a[c0 : c0 + VEC] at the program's positions (0 past channel C - 1), a tuple of VEC [P]
    tensors. img: the image's base pointer; row: [P] int32 offsets of the positions (pos * sl)."""
    if CHANNELS_LAST:  # sc == 1 (specialised): a [P, VEC] tile of 16-byte vectors, one per thread
        c = c0 + tl.arange(0, VEC)
        tile = tl.load(img + (row[:, None] + c[None, :] * sc), mask=pos_ok[:, None] & (c < C)[None, :], other=0.0)
        return _split(tile.to(tl.float32), VEC)
    else:
        chunk = ()
        for v in tl.static_range(VEC):
            chunk += (tl.load(img + (row + (c0 + v) * sc), mask=pos_ok & (c0 + v < C), other=0.0).to(tl.float32),)
        return chunk


@triton.jit
def _store_chunk(img, row, pos_ok, c0, C, sc, chunk, VEC: tl.constexpr, CHANNELS_LAST: tl.constexpr):
    """Store the tuple of VEC fp32 [P] tensors `chunk` as img's channels c0 .. c0 + VEC - 1 (one cast)."""
    if CHANNELS_LAST:
        c = c0 + tl.arange(0, VEC)
        tile = _join(chunk, VEC).to(img.dtype.element_ty)
        tl.store(img + (row[:, None] + c[None, :] * sc), tile, mask=pos_ok[:, None] & (c < C)[None, :])
    else:
        for v in tl.static_range(VEC):
            tl.store(img + (row + (c0 + v) * sc), chunk[v].to(img.dtype.element_ty), mask=pos_ok & (c0 + v < C))


@triton.jit
def _squares_and_pairs(a, COUNT: tl.constexpr):
    """(q, pairs): q[m] = a[m]^2 and pairs[e] = q[2e] + q[2e + 1] for the first COUNT entries of a
    (the compiler drops the ones no window uses)."""
    q = ()
    for m in tl.static_range(COUNT):
        q += (a[m] * a[m],)
    return q, _pair_sums(q, COUNT)


@triton.jit
def _pair_sums(q, COUNT: tl.constexpr):
    pairs = ()
    for e in tl.static_range(COUNT // 2):
        pairs += (q[2 * e] + q[2 * e + 1],)
    return pairs


@triton.jit
def _window_sum(q, pairs, LO: tl.constexpr, HI: tl.constexpr):
    """q[LO] + ... + q[HI] from the aligned pair sums: neighbouring windows share their pairs, so a
    window of n costs about n / 2 + 1 adds instead of n - 1 (exact: only the order of the sum differs)."""
    if HI == LO:
        s = q[LO]
    else:
        if LO % 2 == 1:
            s = q[LO]
        else:
            s = pairs[LO // 2]
        for e in tl.static_range((LO + 1) // 2 + 1 - LO % 2, (HI - 1) // 2 + 1):
            s += pairs[e]
        if HI % 2 == 0:
            s += q[HI]
    return s


@triton.jit
def _zeros(P: tl.constexpr, COUNT: tl.constexpr):
    z = ()
    for _ in tl.static_range(COUNT):
        z += (tl.zeros([P], dtype=tl.float32),)
    return z


@triton.jit
def lrn_fwd_kernel(
    x_ptr,  # [N, C, L] input a, strides (sxn, sxc, sxl)
    y_ptr,  # [N, C, L] output b, strides (syn, syc, syl)
    C, L, sxn, sxc, sxl, syn, syc, syl,
    alpha, beta, k,
    SIZE: tl.constexpr, VEC: tl.constexpr, BLOCK_P: tl.constexpr,
    CHANNELS_LAST: tl.constexpr, BETA_075: tl.constexpr,
):
    BEFORE: tl.constexpr = SIZE // 2
    AFTER: tl.constexpr = (SIZE - 1) // 2
    KB: tl.constexpr = (BEFORE + VEC - 1) // VEC  # chunks of look-behind
    KA: tl.constexpr = (AFTER + VEC - 1) // VEC  # chunks of look-ahead
    blocks_per_image = tl.cdiv(L, BLOCK_P)
    pid = tl.program_id(0)
    n = pid // blocks_per_image
    pos = (pid % blocks_per_image) * BLOCK_P + tl.arange(0, BLOCK_P)
    pos_ok = pos < L
    x_img = x_ptr + n.to(tl.int64) * sxn
    y_img = y_ptr + n.to(tl.int64) * syn
    x_row = pos * sxl
    y_row = pos * syl
    # win: a at channels (t - KB) * VEC .. (t + KA) * VEC - 1 before trip t loads chunk t + KA
    win = _zeros(BLOCK_P, KB * VEC)
    for u in tl.static_range(KA):
        win += _load_chunk(x_img, x_row, pos_ok, u * VEC, C, sxc, VEC, CHANNELS_LAST)
    for t in range(0, tl.cdiv(C, VEC)):
        win += _load_chunk(x_img, x_row, pos_ok, (t + KA) * VEC, C, sxc, VEC, CHANNELS_LAST)
        out = ()
        q, pairs = _squares_and_pairs(win, (KB + KA + 1) * VEC)
        for v in tl.static_range(VEC):  # channel t * VEC + v, win[KB * VEC + v]
            d = k + alpha * _window_sum(q, pairs, KB * VEC + v - BEFORE, KB * VEC + v + AFTER)
            if BETA_075:
                r = tl.math.rsqrt(d)
                out += (win[KB * VEC + v] * (r * tl.sqrt(r)),)
            else:
                out += (win[KB * VEC + v] * tl.exp2(-beta * tl.log2(d)),)
        _store_chunk(y_img, y_row, pos_ok, t * VEC, C, syc, out, VEC, CHANNELS_LAST)
        kept = ()
        for m in tl.static_range(VEC, (KB + KA + 1) * VEC):
            kept += (win[m],)
        win = kept


@triton.jit
def _lrn_bwd_terms(a, g, c0, C, alpha, beta, k, BEFORE: tl.constexpr, AFTER: tl.constexpr,
                   VEC: tl.constexpr, KB: tl.constexpr, BETA_075: tl.constexpr, MASK_TERMS: tl.constexpr):
    """For the chunk of channels c0 .. c0 + VEC - 1: T_i = g_i a_i d_i^(-beta-1) (0 past C - 1) and
    g_i d_i^(-beta). a holds a from channel c0 - KB * VEC on; g holds the chunk's g."""
    terms = ()
    direct = ()
    q, pairs = _squares_and_pairs(a, (KB + 1) * VEC + AFTER)
    for v in tl.static_range(VEC):  # channel c0 + v, a[KB * VEC + v]
        d = k + alpha * _window_sum(q, pairs, KB * VEC + v - BEFORE, KB * VEC + v + AFTER)
        if BETA_075:
            r = tl.math.rsqrt(d)
            p = r * tl.sqrt(r)  # d^(-0.75)
            p1 = p * (r * r)  # d^(-1.75)
        else:
            p1 = tl.exp2((-beta - 1.0) * tl.log2(d))
            p = d * p1
        term = g[v] * a[KB * VEC + v] * p1  # g = a = 0 past channel C - 1
        if MASK_TERMS:  # ... but p1 may be inf there (see _terms_need_mask)
            term = tl.where(c0 + v < C, term, 0.0)
        terms += (term,)
        direct += (g[v] * p,)
    return terms, direct


@triton.jit
def lrn_bwd_kernel(
    x_ptr,   # [N, C, L] forward input a, strides (sxn, sxc, sxl)
    dy_ptr,  # [N, C, L] incoming gradient g = dL/db, strides (sgn, sgc, sgl)
    dx_ptr,  # [N, C, L] output dL/da, strides (sdn, sdc, sdl)
    C, L, sxn, sxc, sxl, sgn, sgc, sgl, sdn, sdc, sdl,
    alpha, beta, k,
    SIZE: tl.constexpr, VEC: tl.constexpr, BLOCK_P: tl.constexpr,
    CHANNELS_LAST: tl.constexpr, BETA_075: tl.constexpr, MASK_TERMS: tl.constexpr = False,
):
    BEFORE: tl.constexpr = SIZE // 2
    AFTER: tl.constexpr = (SIZE - 1) // 2
    KB: tl.constexpr = (BEFORE + VEC - 1) // VEC
    KA: tl.constexpr = (AFTER + VEC - 1) // VEC
    blocks_per_image = tl.cdiv(L, BLOCK_P)
    pid = tl.program_id(0)
    n = pid // blocks_per_image
    pos = (pid % blocks_per_image) * BLOCK_P + tl.arange(0, BLOCK_P)
    pos_ok = pos < L
    x_img = x_ptr + n.to(tl.int64) * sxn
    dy_img = dy_ptr + n.to(tl.int64) * sgn
    dx_img = dx_ptr + n.to(tl.int64) * sdn
    x_row = pos * sxl
    dy_row = pos * sgl
    dx_row = pos * sdl
    # Before trip t: a_win = a at chunks t .. t + KB + KA - 1; t_win = T at chunks t - KA .. t + KB - 1;
    # gp_win = g d^(-beta) at chunks t .. t + KB - 1. The prologue fills them for t = 0.
    a_pro = _zeros(BLOCK_P, KB * VEC)
    for u in tl.static_range(KB + KA):
        a_pro += _load_chunk(x_img, x_row, pos_ok, u * VEC, C, sxc, VEC, CHANNELS_LAST)
    t_win = _zeros(BLOCK_P, KA * VEC)
    gp_win = ()
    for u in tl.static_range(KB):
        a_u = ()
        for m in tl.static_range(u * VEC, (u + KB + KA + 1) * VEC):
            a_u += (a_pro[m],)
        g_u = _load_chunk(dy_img, dy_row, pos_ok, u * VEC, C, sgc, VEC, CHANNELS_LAST)
        terms, direct = _lrn_bwd_terms(a_u, g_u, u * VEC, C, alpha, beta, k, BEFORE, AFTER, VEC, KB, BETA_075, MASK_TERMS)
        t_win += terms
        gp_win += direct
    a_win = ()
    for m in tl.static_range(KB * VEC, (2 * KB + KA) * VEC):
        a_win += (a_pro[m],)
    for t in range(0, tl.cdiv(C, VEC)):
        # T and g d^(-beta) of chunk t + KB, from a at chunks t .. t + KB + KA
        a_win += _load_chunk(x_img, x_row, pos_ok, (t + KB + KA) * VEC, C, sxc, VEC, CHANNELS_LAST)
        g_u = _load_chunk(dy_img, dy_row, pos_ok, (t + KB) * VEC, C, sgc, VEC, CHANNELS_LAST)
        terms, direct = _lrn_bwd_terms(a_win, g_u, (t + KB) * VEC, C, alpha, beta, k,
                                       BEFORE, AFTER, VEC, KB, BETA_075, MASK_TERMS)
        t_win += terms
        gp_win += direct
        # dL/da of chunk t: its a is a_win's first chunk; T of its neighbours t_win[KA * VEC + v + e]
        dx = ()
        t_pairs = _pair_sums(t_win, (KA + KB + 1) * VEC)
        for v in tl.static_range(VEC):  # channel t * VEC + v, t_win[KA * VEC + v]
            neighbours = _window_sum(t_win, t_pairs, KA * VEC + v - AFTER, KA * VEC + v + BEFORE)
            dx += (gp_win[v] - (2.0 * alpha * beta) * a_win[v] * neighbours,)
        _store_chunk(dx_img, dx_row, pos_ok, t * VEC, C, sdc, dx, VEC, CHANNELS_LAST)
        kept_a = ()
        for m in tl.static_range(VEC, (KB + KA + 1) * VEC):
            kept_a += (a_win[m],)
        a_win = kept_a
        kept_t = ()
        for m in tl.static_range(VEC, (KA + KB + 1) * VEC):
            kept_t += (t_win[m],)
        t_win = kept_t
        kept_gp = ()
        for m in tl.static_range(VEC, (KB + 1) * VEC):
            kept_gp += (gp_win[m],)
        gp_win = kept_gp


def _check(name, x, size):
    check_activation("lrn", name, x)
    check_positive_int("lrn", "size", size)


def grid_and_meta(x3: torch.Tensor, size: int, config: tuple[int, int], beta: float = 0.75):
    """Grid and compile-time parameters of a kernel on [N, C, L]: the launchers and perf.aot share it."""
    N, C, L = x3.shape
    warps, nchw_vec = config
    channels_last = x3.stride(1) == 1 and C > 1
    vec = 16 // x3.element_size() if channels_last else nchw_vec
    block_p = min(32 * warps, max(16, next_power_of_2(L)))
    meta = dict(SIZE=size, VEC=vec, BLOCK_P=block_p, CHANNELS_LAST=channels_last, BETA_075=beta == 0.75,
                num_warps=warps)
    return (N * cdiv(L, block_p),), meta


def _terms_need_mask(alpha, beta, k) -> bool:
    """Whether the backward must zero T_i of channels past the end (MASK_TERMS). There g = a = 0, so
    T = 0 * d^(-beta-1) is 0 unless the power is inf or NaN; with alpha >= 0, d >= k, and d^(-beta-1)
    stays finite when k is a normal positive float, beta >= -1 and k^(-beta-1) < 2^120."""
    return not (alpha >= 0 and k >= 2.0**-100 and beta >= -1 and (-beta - 1) * math.log2(k) < 120)


def fwd_args(x3, y3, alpha, beta, k):
    return (x3, y3, *x3.shape[1:], *x3.stride(), *y3.stride(), float(alpha), float(beta), float(k))


def bwd_args(x3, dy3, dx3, alpha, beta, k):
    return (x3, dy3, dx3, *x3.shape[1:], *x3.stride(), *dy3.stride(), *dx3.stride(),
            float(alpha), float(beta), float(k))


def lrn_fwd(x: torch.Tensor, size=5, alpha=1e-4, beta=0.75, k=2.0) -> torch.Tensor:
    """b = LRN(a), the paper's convention, in x's dtype and layout."""
    _check("x", x, size)
    x3 = x.flatten(2)  # [N, C, H*W]: a view unless H and W cannot merge
    y3 = torch.empty_like(x3)
    if x3.numel():
        check_image_offsets("lrn", "x", x3, margin=16)  # the kernels index within an image in int32
        grid, meta = grid_and_meta(x3, size, FWD_CONFIG, beta)
        launch(lrn_fwd_kernel, grid, x.device, *fwd_args(x3, y3, alpha, beta, k), **meta)
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
        for name, t in (("x", x3), ("dy", dy3)):
            check_image_offsets("lrn", name, t, margin=16)
        grid, meta = grid_and_meta(x3, size, BWD_CONFIG, beta)
        launch(lrn_bwd_kernel, grid, x.device, *bwd_args(x3, dy3, dx3, alpha, beta, k), **meta,
               MASK_TERMS=_terms_need_mask(alpha, beta, k))
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


# The same launchers as custom ops, for torch.compile (see kernels/conv_relu/launch.py for why two doors).
@torch.library.custom_op("alexnet::lrn", mutates_args=())
def lrn_op(x: torch.Tensor, size: int, alpha: float, beta: float, k: float) -> torch.Tensor:
    return lrn_fwd(x, size, alpha, beta, k)


@torch.library.custom_op("alexnet::lrn_backward", mutates_args=())
def lrn_backward_op(dy: torch.Tensor, x: torch.Tensor, size: int, alpha: float, beta: float, k: float) -> torch.Tensor:
    return lrn_bwd(dy, x, size, alpha, beta, k)


lrn_op.register_fake(shapes_only(lrn_fwd))
lrn_backward_op.register_fake(shapes_only(lrn_bwd))


def _save(ctx, inputs, output):
    ctx.save_for_backward(inputs[0])
    ctx.params = inputs[1:]


def _gradients(ctx, dy):
    (x,) = ctx.saved_tensors
    return lrn_backward_op(dy, x, *ctx.params), None, None, None, None


lrn_op.register_autograd(_gradients, setup_context=_save)


def lrn(x: torch.Tensor, size=5, alpha=1e-4, beta=0.75, k=2.0) -> torch.Tensor:
    """The paper's cross-channel LRN (alpha not divided by size), differentiable in x."""
    if torch.compiler.is_compiling():
        return lrn_op(x, size, float(alpha), float(beta), float(k))
    return LRNFunction.apply(x, size, alpha, beta, k)
