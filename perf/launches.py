"""Every launch the three ops make at AlexNet's shapes (batch 128), built by the ops' own plan code on
meta-device tensors: what perf.aot compiles is what would run.

`launches()` yields `(label, kernel, kwargs, work)`: a label for the input (shape, dtype, layout), the
@triton.jit function, every argument by name as the launcher passes it (num_warps and the tile included),
and the launch's `work` (perf.work: layer, op, dtype, programs, iterations, macs, bytes, step).
The shapes are alexnet.layers'; the MACs and bytes are bench.costs'.
"""

from math import prod

import torch
import triton

from alexnet.layers import CONVS, LRN, LRNS, POOL, POOL_NO_OVERLAP, POOLS
from kernels import local_response_norm as lrn_op
from kernels import maxpool
from kernels.conv_relu import launch as conv_launch
from kernels.conv_relu.geometry import conv_geometry
from kernels.conv_relu.tiles import gemm_sides, tile_meta, usable_tiles
from kernels.tensors import FLOAT_DTYPES, memory_format
from perf.work import ELEMENT_BYTES, conv_work, dtype_name, in_step, launch_work, lrn_work, pool_work

BATCH = 128
SMS = 132  # H100/H200: wgrad's reduction is split for them


def activations(shape, batch: int = BATCH):
    """(label, tensor on the meta device) for a (C, H, W) activation at `batch`, in every dtype and layout the
    kernels serve."""
    for dtype in FLOAT_DTYPES:
        for layout, layout_name in ((torch.contiguous_format, "NCHW"), (torch.channels_last, "NHWC")):
            x = torch.empty(batch, *shape, dtype=dtype, device="meta", memory_format=layout)
            yield f"{'x'.join(map(str, shape))} {str(dtype).removeprefix('torch.')} {layout_name}", x


def lrn_launches():
    """LRN's forward and backward at lrn1 and lrn2 (the step runs them channels_last, bf16 or fp32)."""
    size, alpha, beta, k = LRN["size"], LRN["alpha"], LRN["beta"], LRN["k"]
    for layer, shape in LRNS.items():
        for label, x in activations(shape):
            x3 = x.flatten(2)
            step = in_step(dtype_name(x.dtype)) and x.is_contiguous(memory_format=torch.channels_last)
            for op, kernel, args, config in (
                    ("fwd", lrn_op.lrn_fwd_kernel, lrn_op.fwd_args(x3, torch.empty_like(x3), alpha, beta, k),
                     lrn_op.FWD_CONFIG),
                    ("bwd", lrn_op.lrn_bwd_kernel,
                     lrn_op.bwd_args(x3, torch.empty_like(x3), torch.empty_like(x3), alpha, beta, k),
                     lrn_op.BWD_CONFIG)):
                grid, meta = lrn_op.grid_and_meta(x3, size, config, beta)
                if op == "bwd":
                    meta["MASK_TERMS"] = lrn_op._terms_need_mask(alpha, beta, k)
                yield (label, kernel, _named(kernel, args, meta),
                       lrn_work(layer, op, x.shape, dtype_name(x.dtype), grid[0],
                                triton.cdiv(shape[0], meta["VEC"]), step))


def pool_launches():
    """Max-pool's forward and backward at pool1, pool2, pool5, for the paper's 3x3/2 windows (the step's, in
    channels_last, bf16 or fp32) and the ablation's 2x2/2: the window is a constexpr, each its own build."""
    for layer, shape in POOLS.items():
        for label, x in activations(shape):
            dtype = dtype_name(x.dtype)
            for k, s in ((POOL["kernel_size"], POOL["stride"]),
                         (POOL_NO_OVERLAP["kernel_size"], POOL_NO_OVERLAP["stride"])):
                step = (k, s) == (POOL["kernel_size"], POOL["stride"]) and in_step(dtype) \
                    and memory_format(x) == torch.channels_last
                y, choice, grid, args, meta = maxpool.fwd_plan(x, k, s)
                iterations = triton.cdiv(x.shape[1], meta["BLOCK_C"])
                yield (f"{label} {k}x{k}/{s}", maxpool.max_pool_fwd_kernel,
                       _named(maxpool.max_pool_fwd_kernel, args, meta),
                       pool_work(layer, "fwd", x.shape, k, s, dtype, grid[0], iterations, step))
                _, grid, args, meta = maxpool.bwd_plan(torch.empty_like(y), choice, x.shape[2:], k, s)
                yield (f"{label} {k}x{k}/{s}", maxpool.max_pool_bwd_kernel,
                       _named(maxpool.max_pool_bwd_kernel, args, meta),
                       pool_work(layer, "bwd", x.shape, k, s, dtype, grid[0], iterations, step))


def conv_launches(batch: int = BATCH, sms: int = SMS):
    """The conv kernels at AlexNet's convolutions, one per usable tile, on channels_last inputs: the loader's
    images for conv1, conv1's output layout (which LRN and max-pool keep) for the rest. conv1 runs in its
    space-to-depth form, copied from x by one kernel (also built for an NCHW x, a caller's, not the step's, and
    for the step's float16 images, cast to bf16 in the copy), and its weight's by another launch of it.
    The training step runs bf16 or tf32, and never conv1's dgrad (the images need none). MACs and bytes are
    the convolution's own (bench.costs), not its space-to-depth form's."""
    for name, (x_shape, w_shape, stride, padding, groups) in CONVS.items():
        geometry = conv_geometry((batch, *x_shape), w_shape, stride, padding, groups)
        form = geometry.kernel_form
        for dtype in FLOAT_DTYPES:
            tf32 = conv_launch.precision(dtype) == "tf32"
            dt = dtype_name(dtype, tf32=tf32)
            label = f"{name} {str(dtype).removeprefix('torch.')}{' tf32' if tf32 else ''}"
            in_the_step = dt in ("bf16", "tf32")
            x = torch.empty(geometry.x_shape, dtype=dtype, device="meta", memory_format=torch.channels_last)
            # the trainer's fp32 master weight and bias, whatever the activations' dtype (the launchers cast the
            # weight in their layout copies; the forward adds the bias in fp32)
            w = torch.empty(geometry.w_shape, dtype=torch.float32, device="meta")
            b = torch.empty(geometry.K, dtype=torch.float32, device="meta")
            if geometry.runs_as:  # the copies to the space-to-depth form: a caller's x (NHWC, NCHW) in the op's
                # dtype, and the training step's (AlexNet.input_form), which casts the DALI loader's images: for a
                # bf16 step they are float16 (data.dali.DaliLoader.decoded_dtype)
                sources = [(x, "", in_the_step and dtype != torch.bfloat16), (x.contiguous(), " NCHW", False)]
                if dtype == torch.bfloat16:
                    sources.append((x.to(torch.float16), " from float16", in_the_step))
                for x_in, layout, step in sources:
                    x2, copy = conv_launch.space_to_depth_plan(x_in, geometry, dtype)
                    yield f"{label}{layout} space_to_depth", copy.kernel, copy.args, launch_work(
                        name, "space_to_depth", dt, prod(copy.grid), 1, 0, (x.numel() + x2.numel()) * ELEMENT_BYTES[dt],
                        step)
                w2, weight_copy = conv_launch.space_to_depth_weight_plan(w, geometry, dtype)
                yield f"{label} space_to_depth weight", weight_copy.kernel, weight_copy.args, launch_work(
                    name, "space_to_depth weight", dt, prod(weight_copy.grid), 1, 0,
                    w.numel() * 4 + w2.numel() * ELEMENT_BYTES[dt], in_the_step)
                x = x2

            def work(op, launch_grid, iterations, step=in_the_step):
                return conv_work(name, op, (batch, *x_shape), w_shape, stride, padding, dt, prod(launch_grid),
                                 iterations, step)

            y, plan = conv_launch.fwd_plan(x, w2 if geometry.runs_as else w, b, form)
            window = form.C // form.groups * form.R * form.S
            yield from _tiled(f"{label} fwd", "fwd", plan,
                              lambda m: work("fwd", plan.grid(m), triton.cdiv(window, m["BLOCK_K"])))
            g, _, mask = conv_launch.mask_plan(y, y, bias=True)
            mask_bytes = 3 * y.numel() * ELEMENT_BYTES[dt] + 2 * mask.grid[0] * y.shape[1] * 4  # dy, y, g; db
            yield f"{label} relu_mask", mask.kernel, mask.args, launch_work(
                name, "relu_mask", dt, prod(mask.grid), 1, 0, mask_bytes, in_the_step)
            # the weight as the forward read it: ConvReLU keeps it for dgrad, which reads a 16-bit one in place
            _, dgrad = conv_launch.dgrad_plan(g, plan.args["w_ptr"], form)
            taps = triton.cdiv(form.R, form.stride[0]) * triton.cdiv(form.S, form.stride[1]) * (form.K // form.groups)
            yield from _tiled(f"{label} dgrad", "dgrad", dgrad, lambda m: work(
                "dgrad", dgrad.grid(m), triton.cdiv(taps, m["BLOCK_K"]), step=in_the_step and name != "conv1"))
            _, wgrad = conv_launch.wgrad_plan(g, x, form, sms=sms)
            pixels = wgrad.args["ROWS"]
            yield from _tiled(f"{label} wgrad", "wgrad", wgrad, lambda m: work(
                "wgrad", wgrad.grid(m), triton.cdiv(triton.cdiv(pixels, m["BLOCK_K"]), wgrad.grid(m)[2])))


def _tiled(label, kernel_name, plan, work):
    """One (label, kernel, kwargs, work) per usable tile of an autotuned plan; work(tile meta) -> its work."""
    for tile in usable_tiles(kernel_name, *gemm_sides(kernel_name, plan.args)):
        kwargs = {**plan.args, **tile_meta(tile)}
        yield label, plan.kernel.fn, kwargs, work(kwargs)


def _named(kernel, args, meta) -> dict:
    """A launch's positional args and keyword meta as one dict by name."""
    return {**dict(zip(kernel.arg_names, args)), **meta}


def launches():
    """Every launch of the three ops at AlexNet's shapes."""
    yield from lrn_launches()
    yield from pool_launches()
    yield from conv_launches()
