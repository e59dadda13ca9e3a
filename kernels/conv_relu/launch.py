"""Planning and starting the conv kernels, the autograd Function, and the op as torch.compile sees it.

A plan turns tensors and a ConvGeometry into the output it allocates and a Launch: the kernel, its grid and
every argument by name, the tile left to the autotuner. The launchers start plans through
kernels.tensors.launch (on the tensors' device and stream); perf.launches builds the same plans on
meta-device tensors, so what perf.aot compiles is what runs.

Eagerly, conv2d_relu is the autograd Function ConvReLU (~5 µs of dispatch a call). Under torch.compile it
is the custom op alexnet::conv2d_relu with alexnet::conv2d_relu_backward as its gradient, which Dynamo
traces as single nodes (no graph break) and CUDA graphs can capture; their fake implementations are the
launchers run with no kernel (kernels.tensors.shapes_only). A custom op costs ~20 µs more per eager call
here, hence the two doors onto the same launchers.
"""

import functools
from dataclasses import dataclass
from typing import Callable

import torch
from torch.autograd.function import once_differentiable

from kernels import input_as_it_is
from kernels.conv_relu import space_to_depth
from kernels.conv_relu.geometry import ConvGeometry, conv_geometry, pair
from kernels.conv_relu.kernels import dgrad_kernel, fwd_kernel, relu_mask_kernel, space_to_depth_kernel, wgrad_kernel
from kernels.conv_relu.tiles import TILES, usable_tiles, wgrad_splits
from kernels.tensors import FLOAT_DTYPES, cdiv, check_activation, check_device, check_image_offsets, launch, \
    layouts_need_int64, next_power_of_2, shapes_only

MASK_TILE = 4096  # elements per program of the ReLU-mask kernel
S2D_TILE = 2048  # elements of x2 per program of the space-to-depth copy (its channels padded to a power of 2)


@dataclass(frozen=True)
class Launch:
    kernel: object  # a @triton.jit kernel, autotuned or not
    grid: tuple | Callable  # or grid(meta) once the autotuner has chosen the tile
    args: dict  # every argument by name, constexprs included, the tile excepted

    def start(self, device: torch.device):
        launch(self.kernel, self.grid, device, **self.args)


def precision(dtype: torch.dtype) -> str:
    """The kernels' input_precision for `dtype`: only fp32 products have a choice (16-bit ones are exact on
    tensor cores). As for cuDNN's convolutions: TF32 unless torch says otherwise, through
    torch.backends.cudnn.conv.fp32_precision (torch >= 2.9; "none" defers to the levels above) or, before it,
    torch.backends.cudnn.allow_tf32."""
    if dtype != torch.float32:
        return "ieee"
    levels = [getattr(getattr(torch.backends.cudnn, "conv", None), "fp32_precision", None),
              getattr(torch.backends.cudnn, "fp32_precision", None), getattr(torch.backends, "fp32_precision", None)]
    if levels[0] is None:
        return "tf32" if torch.backends.cudnn.allow_tf32 else "ieee"
    return next((level for level in levels if level not in (None, "none")), "ieee")


@functools.lru_cache(maxsize=None)
def _sms(device: torch.device) -> int:
    """Streaming multiprocessors of `device`'s GPU (4 with no GPU: the interpreter's splits are tests only)."""
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 4


# ----------------------------------------------------------------------------------------------------------
# Plans


def contiguous_strides(shape) -> tuple:
    strides, step = [], 1
    for size in reversed(shape):
        strides.append(step)
        step *= max(size, 1)
    return tuple(reversed(strides))


# A plan's grid and arguments other than the tensors depend only on the geometry, dtype and strides: computed
# once per combination (cached), then each call allocates its outputs and binds its tensors.


def mask_plan(dy, y, bias: bool):
    """(g, db partials or None, Launch): g = dy where y > 0, and each row block's sum of g if `bias`."""
    dy = dy.contiguous(memory_format=torch.channels_last)
    y = y.contiguous(memory_format=torch.channels_last)
    g = torch.empty_like(y)
    grid, constants = _mask_constants(tuple(y.shape), y.stride(), bias)
    db = torch.empty(grid[0], y.shape[1], device=y.device, dtype=torch.float32) if bias else None
    return g, db, Launch(relu_mask_kernel, grid, dict(constants, dy_ptr=dy, y_ptr=y, g_ptr=g,
                                                      db_ptr=db if bias else g))


@functools.lru_cache(maxsize=512)
def _mask_constants(shape, strides, bias: bool):
    N, K, P, Q = shape
    block_c = min(128, next_power_of_2(K))
    block_r = MASK_TILE // block_c
    grid = (cdiv(N * P * Q, block_r), cdiv(K, block_c))
    return grid, dict(ROWS=N * P * Q, K=K, HAS_BIAS=bias, INDEX_64=layouts_need_int64((shape, strides)),
                      BLOCK_R=block_r, BLOCK_C=block_c, num_warps=4)


def space_to_depth_plan(x, geometry: ConvGeometry, dtype: torch.dtype | None = None, out=None):
    """(x2, Launch): the input of `geometry`'s space-to-depth form (space_to_depth.py), channels_last, in `dtype`
    (x's by default; cast as torch casts), written in one pass over x (its padding zeroed, what no window reaches
    left out) into `out` if given (checked by the caller)."""
    x2 = out if out is not None else torch.empty(geometry.runs_as.x_shape, device=x.device, dtype=dtype or x.dtype,
                                                 memory_format=torch.channels_last)
    grid, constants = _space_to_depth_constants(geometry, x.stride())
    return x2, Launch(space_to_depth_kernel, grid, dict(constants, x_ptr=x, x2_ptr=x2))


def space_to_depth_weight_plan(weight, geometry: ConvGeometry, dtype: torch.dtype):
    """(w2, Launch): space_to_depth.to_weight(weight) in `dtype`, channels_last as the forward reads it, written
    in one pass over the weight (the taps past its window zeroed, an fp32 master weight cast)."""
    w2 = torch.empty(geometry.runs_as.w_shape, device=weight.device, dtype=dtype, memory_format=torch.channels_last)
    grid, constants = _space_to_depth_constants(_weight_as_image(geometry), weight.stride())
    return w2, Launch(space_to_depth_kernel, grid, dict(constants, x_ptr=weight, x2_ptr=w2))


@functools.lru_cache(maxsize=64)
def _weight_as_image(g: ConvGeometry) -> ConvGeometry:
    """The weight's space-to-depth copy as the input copy of a convolution with no padding: K images of C
    channels of R x S, whose form has taps_h x taps_w pixels."""
    taps_h, taps_w = g.runs_as.R, g.runs_as.S
    form = ConvGeometry(g.K, g.runs_as.C, taps_h, taps_w, 1, 1, 1, (1, 1), (0, 0), 1, taps_h, taps_w)
    return ConvGeometry(g.K, g.C, g.R, g.S, 1, 1, 1, g.stride, (0, 0), 1, taps_h, taps_w, runs_as=form)


@functools.lru_cache(maxsize=512)
def _space_to_depth_constants(g: ConvGeometry, sx):
    form = g.runs_as
    pixels, block_c = form.N * form.H * form.W, next_power_of_2(form.C)
    block_p = max(1, S2D_TILE // block_c)
    return (cdiv(pixels, block_p),), dict(
        PIXELS=pixels, sx_n=sx[0], sx_c=sx[1], sx_h=sx[2], sx_w=sx[3], C=g.C, H=g.H, W=g.W, ROWS=form.H, COLS=form.W,
        S2D_H=g.stride[0], S2D_W=g.stride[1], PAD_H=g.padding[0], PAD_W=g.padding[1],
        INDEX_64=layouts_need_int64((g.x_shape, sx), (form.x_shape, contiguous_strides(form.x_shape))),
        BLOCK_P=block_p, BLOCK_C=block_c, num_warps=4)


def fwd_plan(x, weight, bias, geometry: ConvGeometry):
    """(y, Launch) of the forward of `geometry` (a stride-1 form already applied to x and weight). The weight it
    reads, args["w_ptr"], is channels_last in x's dtype: the layout copy also casts fp32 master weights (and
    dgrad reads a 16-bit one again: dgrad_plan)."""
    w = weight.to(x.dtype, memory_format=torch.channels_last)
    y = torch.empty(geometry.y_shape, device=x.device, dtype=x.dtype, memory_format=torch.channels_last)
    grid, constants = _fwd_constants(geometry, x.stride(), w.stride(), y.stride(),
                                     bias.stride(0) if bias is not None else None, precision(x.dtype))
    return y, Launch(fwd_kernel, grid, dict(constants, x_ptr=x, w_ptr=w, b_ptr=bias if bias is not None else w,
                                            y_ptr=y))


@functools.lru_cache(maxsize=512)
def _fwd_constants(g: ConvGeometry, sx, sw, sy, sb, input_precision: str):
    rows, kg = g.N * g.P * g.Q, g.K // g.groups
    grid = lambda meta: (cdiv(rows, meta["BLOCK_M"]) * cdiv(kg, meta["BLOCK_N"]), g.groups)
    return grid, dict(ROWS=rows, sx_n=sx[0], sx_c=sx[1], sx_h=sx[2], sx_w=sx[3],
                      sw_k=sw[0], sw_c=sw[1], sw_r=sw[2], sw_s=sw[3], sy_n=sy[0], sy_c=sy[1], sy_h=sy[2], sy_w=sy[3],
                      sb_k=sb or 0, **g.constants(), HAS_BIAS=sb is not None, PRECISION=input_precision,
                      INDEX_64=layouts_need_int64((g.x_shape, sx), (g.y_shape, sy)))


def dgrad_plan(g_masked, weight, geometry: ConvGeometry):
    """(dx, Launch): the input gradient of `geometry` from the masked output gradient. A 16-bit weight in the
    gradient's dtype and channels_last (the copy the forward read) is read in place, its channels contiguous
    (tensor cores take a 16-bit operand either way round), where each step of the reduction stays in one tap
    (K/groups a multiple of BLOCK_K: a tile is then a block of the copy's rows). Any other weight is copied
    k-contiguous in the gradient's dtype (casting fp32 master weights): TF32 products need the reduction
    contiguous, and so does the element-wise reduction (perf.aot: conv1's form, in place, is issue-bound)."""
    one_tap_per_step = (geometry.K // geometry.groups) % max(tile[2] for tile in TILES["dgrad"]) == 0
    if g_masked.dtype != torch.float32 and weight.dtype == g_masked.dtype and one_tap_per_step and \
            weight.is_contiguous(memory_format=torch.channels_last):
        w = weight
    else:  # (Tensor.to(memory_format=torch.contiguous_format) would hand a permuted fp32 weight back uncopied)
        crsk = weight.permute(1, 2, 3, 0)
        w = torch.empty(crsk.shape, device=weight.device, dtype=g_masked.dtype).copy_(crsk).permute(3, 0, 1, 2)
    dx = torch.empty(geometry.x_shape, device=g_masked.device, dtype=g_masked.dtype,
                     memory_format=torch.channels_last)
    grid, constants = _dgrad_constants(geometry, g_masked.stride(), w.stride(), dx.stride(),
                                       precision(g_masked.dtype))
    return dx, Launch(dgrad_kernel, grid, dict(constants, g_ptr=g_masked, w_ptr=w, dx_ptr=dx))


@functools.lru_cache(maxsize=512)
def _dgrad_constants(g: ConvGeometry, sg, sw, sx, input_precision: str):
    (sh, sw_), cg = g.stride, g.C // g.groups
    rows = g.N * cdiv(g.H, sh) * cdiv(g.W, sw_)  # the largest stride phase's pixels
    grid = lambda meta: (cdiv(rows, meta["BLOCK_M"]) * cdiv(cg, meta["BLOCK_N"]), g.groups, sh * sw_)
    return grid, dict(ROWS=rows, sg_n=sg[0], sg_c=sg[1], sg_h=sg[2], sg_w=sg[3],
                      sw_k=sw[0], sw_c=sw[1], sw_r=sw[2], sw_s=sw[3], sx_n=sx[0], sx_c=sx[1], sx_h=sx[2], sx_w=sx[3],
                      **g.constants(), PRECISION=input_precision,
                      INDEX_64=layouts_need_int64((g.y_shape, sg), (g.x_shape, sx)))


def wgrad_plan(g_masked, x, geometry: ConvGeometry, sms: int | None = None):
    """(partials, Launch): dW of `geometry` as [splits, K, C/groups, R, S] fp32 partial sums, the reduction over
    pixels split for `sms` SMs (default: x's GPU's) so that the output tiles and splits fill one wave."""
    splits, grid, constants = _wgrad_constants(geometry, x.dtype, x.stride(), g_masked.stride(),
                                               sms if sms is not None else _sms(x.device), precision(x.dtype))
    partials = torch.empty(splits, *geometry.w_shape, device=x.device, dtype=torch.float32)
    return partials, Launch(wgrad_kernel, grid, dict(constants, x_ptr=x, g_ptr=g_masked, dw_ptr=partials))


@functools.lru_cache(maxsize=512)
def _wgrad_constants(g: ConvGeometry, dtype, sx, sg, sms: int, input_precision: str):
    kg, window, rows = g.K // g.groups, (g.C // g.groups) * g.R * g.S, g.N * g.P * g.Q
    bm, bn, bk, _, _ = usable_tiles("wgrad", dtype, kg, window)[0]
    tiles = lambda bm, bn: cdiv(kg, bm) * cdiv(window, bn)
    splits = wgrad_splits(tiles(bm, bn) * g.groups, cdiv(rows, bk), sms)
    sp = contiguous_strides((splits, *g.w_shape))
    grid = lambda meta: (tiles(meta["BLOCK_M"], meta["BLOCK_N"]), g.groups, splits)
    return splits, grid, dict(ROWS=rows, sx_n=sx[0], sx_c=sx[1], sx_h=sx[2], sx_w=sx[3],
                      sw_split=sp[0], sw_k=sp[1], sw_c=sp[2], sw_r=sp[3], sw_s=sp[4], **g.constants(), GROUPS=g.groups,
                      PRECISION=input_precision, INDEX_64=layouts_need_int64((g.x_shape, sx), (g.y_shape, sg)))


# ----------------------------------------------------------------------------------------------------------
# Launchers (callable without autograd)


def _check(x, weight, bias):
    for name, t in (("x", x), ("weight", weight)):
        if not isinstance(t, torch.Tensor) or t.dim() != 4:
            raise ValueError(f"conv2d_relu: {name} must be a 4-D tensor, got "
                             f"{tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"conv2d_relu: x has dtype {x.dtype}; supported: float16, bfloat16, float32")
    if weight.dtype not in (x.dtype, torch.float32):
        raise TypeError(f"conv2d_relu: weight has dtype {weight.dtype} but x has {x.dtype}; it must be x's, or "
                        f"float32 (master weights, cast as the kernels read them)")
    if bias is not None and (bias.dtype != weight.dtype or tuple(bias.shape) != (weight.shape[0],)):
        raise ValueError(f"conv2d_relu: bias must have shape ({weight.shape[0]},) and weight's dtype {weight.dtype}, "
                         f"got {tuple(bias.shape)} {bias.dtype}")
    for name, t in (("x", x), ("weight", weight), ("bias", bias)):
        if t is not None and t.device != x.device:
            raise ValueError(f"conv2d_relu: {name} is on {t.device} but x is on {x.device}")
    check_image_offsets("conv2d_relu", "x", x)  # column offsets within an image are 32-bit
    check_device("conv2d_relu", "x", x)


def kernel_input(x, geometry: ConvGeometry, input_form: bool = False):
    """The x the forward and wgrad kernels read: x itself, or its space-to-depth copy where the convolution runs
    as that form (made once by the autograd Function's forward and kept for wgrad), unless `input_form` says x
    is that copy already (conv2d_relu_input's)."""
    if not geometry.runs_as or input_form:
        return x
    x2, plan = space_to_depth_plan(x, geometry)
    if x2.numel():
        plan.start(x.device)
    return x2


def conv2d_relu_input(x, weight_shape, stride=1, padding=0, groups=1, dtype=None, out=None):
    """x as conv2d_relu(..., input_form=True) reads it, in `dtype` (x's by default, cast as torch casts), made in
    one pass: where the convolution runs as its space-to-depth form (AlexNet's conv1), that form's input
    ((N, 48, 57, 57) channels_last for conv1), else x itself cast. Written into `out` if given (it must have the
    shape, dtype and layout this would return). So a loader's cast, or the copy into a CUDA graph's input
    buffer, can be the one pass the first layer's input takes. No gradient reaches x through it."""
    check_activation("conv2d_relu_input", "x", x)
    dtype = dtype or x.dtype
    if dtype not in FLOAT_DTYPES:
        raise TypeError(f"conv2d_relu_input: dtype {dtype}; supported: float16, bfloat16, float32")
    check_image_offsets("conv2d_relu_input", "x", x)
    geometry = conv_geometry(x.shape, weight_shape, stride, padding, groups)
    if not geometry.runs_as:
        return input_as_it_is(x, weight_shape, stride, padding, groups, dtype, out)
    if out is not None and (not isinstance(out, torch.Tensor) or tuple(out.shape) != geometry.runs_as.x_shape or
                            out.dtype != dtype or out.device != x.device or
                            not out.is_contiguous(memory_format=torch.channels_last)):
        got = f"{tuple(out.shape)} {out.dtype} on {out.device}" if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"conv2d_relu_input: out must be a channels_last tensor of shape {geometry.runs_as.x_shape}, "
                         f"{dtype}, on {x.device}; got {got}")
    x2, plan = space_to_depth_plan(x, geometry, dtype, out)
    if x2.numel():
        plan.start(x.device)
    return x2


def _geometry_of(x, weight_shape, stride, padding, groups, input_form: bool) -> ConvGeometry:
    """The convolution's geometry, from x, or with `input_form` from the input form x is
    (conv2d_relu_input's): the space-to-depth form's input, whose image rows the convolution's output rows
    give (its height taken as the smallest that gives them: the form is the same for all)."""
    if not input_form or x.shape[1] == weight_shape[1] * groups:
        return conv_geometry(x.shape, weight_shape, stride, padding, groups)
    return _input_form_geometry(tuple(x.shape), tuple(weight_shape), pair(stride, "stride"), pair(padding, "padding"),
                                groups)


@functools.lru_cache(maxsize=64)
def _input_form_geometry(form_shape, weight_shape, stride, padding, groups) -> ConvGeometry:
    """_geometry_of for an input form, once per shape (the step asks every forward)."""
    (_, channels, R, S), (sh, sw), (ph, pw) = weight_shape, stride, padding
    P, Q = form_shape[2] - (-(-R // sh)) + 1, form_shape[3] - (-(-S // sw)) + 1
    image = (form_shape[0], channels * groups, (P - 1) * sh + R - 2 * ph, (Q - 1) * sw + S - 2 * pw)
    geometry = conv_geometry(image, weight_shape, stride, padding, groups) if min(P, Q, *image[2:]) > 0 else None
    if geometry is None or geometry.runs_as is None or geometry.runs_as.x_shape != form_shape:
        raise ValueError(f"conv2d_relu: x of shape {form_shape} is given as an input form, but it is not one "
                         f"for a weight of shape {weight_shape} with stride {stride} and padding {padding} "
                         f"(conv2d_relu_input makes it)")
    return geometry


def _forward(x_in, weight, bias, geometry: ConvGeometry):
    """(y, w_in) from x_in = kernel_input(x, geometry): w_in is the weight as the forward read it, in x_in's
    dtype and channels_last, in the space-to-depth form where the convolution runs as it (dgrad reads it too)."""
    if geometry.runs_as:
        weight, copy = space_to_depth_weight_plan(weight, geometry, x_in.dtype)
        copy.start(x_in.device)
    y, plan = fwd_plan(x_in, weight, bias, geometry.kernel_form)
    if y.numel():
        plan.start(x_in.device)
    return y, plan.args["w_ptr"]


def weight_form(weight, geometry: ConvGeometry):
    """The weight as the kernels of `geometry` read it: its space-to-depth form where the convolution runs as
    that form, else the weight itself."""
    return space_to_depth.to_weight(weight, geometry) if geometry.runs_as else weight


def _relu_mask(dy, y, bias: bool):
    """(g, db): dy where y > 0 (channels_last) and, if `bias`, its sum over pixels in fp32 (else None), the
    row blocks' partial sums added in a fixed order."""
    if dy.shape != y.shape:
        raise ValueError(f"conv2d_relu: dy has shape {tuple(dy.shape)} but the output y has {tuple(y.shape)}")
    g, db, plan = mask_plan(dy, y, bias)
    if g.numel():
        plan.start(y.device)
    return g, (db.sum(0) if g.numel() else torch.zeros(y.shape[1], device=y.device)) if bias else None


def _dgrad(g_masked, w_in, geometry: ConvGeometry):
    """dx from w_in = weight_form(weight, geometry), or the forward's copy of it."""
    dx, plan = dgrad_plan(g_masked, w_in, geometry.kernel_form)
    if dx.numel():
        plan.start(g_masked.device)
    return space_to_depth.from_input_grad(dx, geometry) if geometry.runs_as else dx


def _wgrad(g_masked, x_in, geometry: ConvGeometry):
    """dW in fp32 from x_in = kernel_input(x, geometry): the splits' partial sums added in split order (no
    atomics: the same dW every run)."""
    partials, plan = wgrad_plan(g_masked, x_in, geometry.kernel_form)
    if not g_masked.numel():
        return torch.zeros(geometry.w_shape, device=x_in.device, dtype=torch.float32)
    plan.start(x_in.device)
    if geometry.runs_as:
        return space_to_depth.from_weight_grad(partials, geometry)
    return partials.sum(0) if len(partials) > 1 else partials[0]


def conv2d_relu_fwd(x, weight, bias=None, stride=1, padding=0, groups=1, input_form=False):
    """relu(conv2d(x, weight, bias, stride, padding, groups=groups)), returned channels_last; with `input_form`,
    x is conv2d_relu_input's form of the images."""
    _check(x, weight, bias)
    geometry = _geometry_of(x, weight.shape, stride, padding, groups, input_form)
    return _forward(kernel_input(x, geometry, input_form), weight, bias, geometry)[0]


def conv2d_relu_dgrad(dy, y, weight, x_shape, stride=1, padding=0, groups=1):
    """The gradient of conv2d_relu(x, weight, ...) = y with respect to x (of shape x_shape), channels_last."""
    geometry = conv_geometry(x_shape, weight.shape, stride, padding, groups)
    return _dgrad(_relu_mask(dy, y, bias=False)[0], weight_form(weight, geometry), geometry)


def conv2d_relu_wgrad(dy, y, x, weight_shape, stride=1, padding=0, groups=1, bias=True):
    """The gradients of conv2d_relu(x, weight, ...) = y with respect to the weight (of shape weight_shape)
    and, if `bias`, the bias (else None), in x's dtype; accumulated in fp32."""
    geometry = conv_geometry(x.shape, weight_shape, stride, padding, groups)
    g, db = _relu_mask(dy, y, bias)
    return _wgrad(g, kernel_input(x, geometry), geometry).to(x.dtype), db.to(x.dtype) if bias else None


def _backward(dy, y, x_in, w_in, geometry: ConvGeometry, needs, weight_dtype: torch.dtype):
    """(dx, dweight, dbias), the last two in `weight_dtype` (fp32 master weights: no cast); x_in =
    kernel_input(x, geometry) (read only when `needs` the weight's), w_in as _dgrad reads it (only when
    `needs` x's)."""
    g, db = _relu_mask(dy, y, bias=needs[2])
    dx = _dgrad(g, w_in, geometry) if needs[0] else None
    dw = _wgrad(g, x_in, geometry).to(weight_dtype) if needs[1] else None
    return dx, dw, db.to(weight_dtype) if needs[2] else None


def conv2d_relu_bwd(dy, y, x, weight, stride=1, padding=0, groups=1, needs=(True, True, True), input_form=False):
    """(dx, dweight, dbias) of conv2d_relu; `needs` says which of the three to compute (None otherwise)."""
    geometry = _geometry_of(x, weight.shape, stride, padding, groups, input_form)
    _no_input_gradient(geometry, input_form, needs[0])
    return _backward(dy, y, kernel_input(x, geometry, input_form) if needs[1] else None,
                     weight_form(weight, geometry) if needs[0] else None, geometry, needs, weight.dtype)


def _no_input_gradient(geometry: ConvGeometry, input_form: bool, needed: bool) -> None:
    if needed and input_form and geometry.runs_as:
        raise ValueError("conv2d_relu: an input form (conv2d_relu_input's copy) gets no gradient; give the "
                         "images themselves to differentiate with respect to them")


class ConvReLU(torch.autograd.Function):
    """relu(conv2d(x, w) + b) with Triton forward, dgrad and wgrad; saves the x and w the forward kernel read
    (conv1's space-to-depth copy, and the weight's copy in the activations' dtype, which dgrad reads in 16 bits:
    no copy is made again), the output y, and the geometry computed once in the forward."""

    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, groups, input_form):
        _check(x, weight, bias)
        ctx.geometry = _geometry_of(x, weight.shape, stride, padding, groups, input_form)
        _no_input_gradient(ctx.geometry, input_form, ctx.needs_input_grad[0])
        x_in = kernel_input(x, ctx.geometry, input_form)
        y, w_in = _forward(x_in, weight, bias, ctx.geometry)
        ctx.save_for_backward(x_in, w_in, y)
        ctx.weight_dtype = weight.dtype
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, dy):
        x_in, w_in, y = ctx.saved_tensors
        dx, dw, db = _backward(dy, y, x_in, w_in, ctx.geometry, ctx.needs_input_grad[:3], ctx.weight_dtype)
        return dx, dw, db, None, None, None, None


@torch.library.custom_op("alexnet::conv2d_relu", mutates_args=())
def conv2d_relu_op(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: list[int],
                   padding: list[int], groups: int, input_form: bool) -> torch.Tensor:
    return conv2d_relu_fwd(x, weight, bias, stride, padding, groups, input_form)


def _needed_gradients(dy: torch.Tensor, y: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, stride: list[int],
                      padding: list[int], groups: int, input_form: bool, needs: list[bool]) -> list[torch.Tensor]:
    """The gradients `needs` asks for, of (x, weight, bias), in that order."""
    return [grad for grad in conv2d_relu_bwd(dy, y, x, weight, stride, padding, groups, needs, input_form)
            if grad is not None]


conv2d_relu_backward_op = torch.library.custom_op("alexnet::conv2d_relu_backward", mutates_args=())(_needed_gradients)
conv2d_relu_op.register_fake(shapes_only(conv2d_relu_fwd))
conv2d_relu_backward_op.register_fake(shapes_only(_needed_gradients))


def _save(ctx, inputs, output):
    x, weight, bias, stride, padding, groups, input_form = inputs
    ctx.save_for_backward(x, weight, output)
    ctx.geometry, ctx.has_bias = (stride, padding, groups, input_form), bias is not None


def _gradients(ctx, dy):
    x, weight, y = ctx.saved_tensors
    needs = [ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.has_bias and ctx.needs_input_grad[2]]
    grads = iter(conv2d_relu_backward_op(dy, y, x, weight, *ctx.geometry, needs))
    return (*(next(grads) if need else None for need in needs), None, None, None, None)


conv2d_relu_op.register_autograd(_gradients, setup_context=_save)


def conv2d_relu(x, weight, bias=None, stride=1, padding=0, groups=1, input_form=False):
    """relu(conv2d(x, weight, bias, stride, padding, groups=groups)) on Triton kernels, autograd included. With
    `input_form`, x is conv2d_relu_input(images, weight.shape, ...)'s form of the images (no gradient for it)."""
    if torch.compiler.is_compiling():
        return conv2d_relu_op(x, weight, bias, list(pair(stride, "stride")), list(pair(padding, "padding")), groups,
                              input_form)
    return ConvReLU.apply(x, weight, bias, stride, padding, groups, input_form)
