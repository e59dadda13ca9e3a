"""Triton conv2d_relu against cuDNN at AlexNet's five convolutions: forward, dgrad and wgrad.

    pytest bench/ --benchmark-only

On a GPU: batch 128, fp32 (TF32 on both sides, cuDNN's default), fp16 and bf16, conv1's input NCHW
(the images) and the others' channels_last (as the network hands them on). Each pass has a "triton"
row (kernels.conv_relu's launchers) and a "torch" row, cuDNN: what autograd runs for the "torch"
backend (F.conv2d + F.relu, then aten.convolution_backward for dx, or for dW and db), with
cudnn.benchmark on. cuDNN's backward gets dy already masked by the ReLU (in x's layout), so autograd's
separate mask pass is not timed; ours is fused in. The forward also has a "compile" row: the compile
backend's conv2d_relu, where Inductor calls the library convolution and fuses bias and ReLU (its
backward is cuDNN's again, so it has no backward rows). extra_info has TFLOP/s, the compute floor and, on
Triton and compile rows, cuDNN's time taken the same way and pct_of_cudnn (100: as fast; above: faster).

FLOPs and bytes_moved of each pass (each operand read once, each result written once) come from
bench.costs.conv_costs; compute_floor_ms_H100_H200 = FLOPs / the H100 SXM's dense peak (the H200's is the same),
and on a recognised GPU compute_floor_ms and compute_floor_fraction use that GPU's own peak. On a GPU every ratio
is of device times (bench.common.time_ms: do_bench, L2 flushed), and a Triton row records the tile chosen.

On the CPU it is a smoke test: batch 1, channels / 16, spatial size <= 15, fp32; the Triton rows run in
the interpreter and are labelled so (their times are not speeds), and no cuDNN ratio is taken.
"""

import pytest
import torch
import torch.nn.functional as F

from bench.common import measure, time_ms
from kernels.interpret import prepare

prepare()  # with no GPU the interpreter must be on before kernels.conv_relu imports Triton
from bench.costs import GPUS, conv_costs, gpu_key  # noqa: E402
import kernels  # noqa: E402
from alexnet.layers import CONVS as ALEXNET_CONVS  # noqa: E402
from kernels import conv_relu  # noqa: E402
from kernels.conv_relu import kernels as conv_kernels  # noqa: E402
from kernels.conv_relu.launch import precision as conv_precision  # noqa: E402

GPU = torch.cuda.is_available()
DEVICE = torch.device("cuda" if GPU else "cpu")
BATCH = 128 if GPU else 1
DTYPES = [torch.float32, torch.float16, torch.bfloat16] if GPU else [torch.float32]
LOW_PRECISION = {torch.float16: "fp16", torch.bfloat16: "bf16"}


@pytest.fixture(autouse=True)
def cudnn_autotuned():
    with torch.backends.cudnn.flags(enabled=True, benchmark=True, deterministic=False, allow_tf32=True):
        yield


def problem(name, dtype):
    """x, w, b, geometry (stride, padding, groups) for one layer: AlexNet's on a GPU, shrunk on the CPU."""
    (C, H, W), (K, CG, R, S), stride, padding, groups = ALEXNET_CONVS[name]
    if not GPU:
        K, CG, H, W = K // 16, max(CG // 16, 3), min(H, 15), min(W, 15)
        C = CG * groups
    layout = torch.contiguous_format if name == "conv1" else torch.channels_last
    x = torch.randn(BATCH, C, H, W, device=DEVICE).to(dtype).contiguous(memory_format=layout)
    w = (torch.randn(K, CG, R, S, device=DEVICE) / (CG * R * S) ** 0.5).to(dtype)
    b = torch.randn(K, device=DEVICE).to(dtype)
    return x, w, b, (stride, padding, groups)


def passes(x, w, b, geometry):
    """{pass: (triton fn, cudnn fn, (FLOPs, bytes_moved))} for one layer."""
    stride, padding, groups = geometry
    y = conv_relu.conv2d_relu_fwd(x, w, b, *geometry)
    dy = torch.randn_like(y)
    layout = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
    g = (dy * (y > 0)).contiguous(memory_format=layout)  # what cuDNN's backward is handed (ours masks dy itself)
    backward = lambda mask: torch.ops.aten.convolution_backward(
        g, x, w, [w.shape[0]], [stride] * 2, [padding] * 2, [1, 1], False, [0, 0], groups, mask)
    costs = conv_costs(x.shape, w.shape, stride, padding, x.element_size())
    w_read = w.contiguous(memory_format=torch.channels_last)  # the forward's copy, which dgrad reads in a step
    return {
        "fwd": (lambda: conv_relu.conv2d_relu_fwd(x, w, b, *geometry),
                lambda: F.relu(F.conv2d(x, w, b, stride, padding, 1, groups)), costs["fwd"]),
        "dgrad": (lambda: conv_relu.conv2d_relu_dgrad(dy, y, w_read, x.shape, *geometry),
                  lambda: backward([True, False, False]), costs["dgrad"]),
        "wgrad": (lambda: conv_relu.conv2d_relu_wgrad(dy, y, x, w.shape, *geometry),
                  lambda: backward([False, True, True]), costs["wgrad"]),
    }


# (pass, backend): the compile backend's conv backward is cuDNN's, so it has forward rows only.
PASS_BACKENDS = [("fwd", "triton"), ("fwd", "torch"), ("fwd", "compile"),
                 ("dgrad", "triton"), ("dgrad", "torch"), ("wgrad", "triton"), ("wgrad", "torch")]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).removeprefix("torch."))
@pytest.mark.parametrize("which,backend", PASS_BACKENDS, ids=lambda v: v)
@pytest.mark.parametrize("layer", list(ALEXNET_CONVS))
def test_conv(benchmark, layer, which, dtype, backend):
    x, w, b, geometry = problem(layer, dtype)
    triton_fn, cudnn_fn, (flops, bytes_moved) = passes(x, w, b, geometry)[which]
    if backend == "compile":
        compiled = kernels.backend("compile").conv2d_relu.__wrapped__  # no autocast wrapper: dtype is explicit
        cudnn_fn = lambda: compiled(x, w, b, *geometry)  # noqa: E731
    precision = LOW_PRECISION.get(dtype, "tf32" if conv_precision(dtype) == "tf32" else "fp32")
    floor = flops / (GPUS["h100"].tflops[precision] * 1e12)
    benchmark.group = f"{layer} {which} {str(dtype).removeprefix('torch.')}"
    benchmark.extra_info.update(layer=layer, backend=backend, batch=BATCH, shape=list(x.shape), weight=list(w.shape),
                                **{"pass": which},
                                flops=flops, precision=precision, compute_floor_ms_H100_H200=floor * 1e3)
    autotuned = {"fwd": conv_kernels.fwd_kernel, "dgrad": conv_kernels.dgrad_kernel, "wgrad": conv_kernels.wgrad_kernel}
    measure(benchmark, triton_fn if backend == "triton" else cudnn_fn, DEVICE, dtype, bytes_moved,
            flops=flops, triton=backend == "triton", autotuned=autotuned[which] if backend == "triton" else None)
    if not GPU or benchmark.stats is None:
        return
    seconds = benchmark.extra_info["device_ms"] / 1e3
    key = gpu_key(torch.cuda.get_device_name(DEVICE))
    if key:  # this GPU's own peak (an H100 PCIe is not an SXM part); none for a GPU not recognised
        own_floor = flops / (GPUS[key].tflops[precision] * 1e12)
        benchmark.extra_info.update(compute_floor_ms=own_floor * 1e3, compute_floor_fraction=own_floor / seconds)
    if backend != "torch":
        cudnn = time_ms(passes(x, w, b, geometry)[which][1], DEVICE)["ms"] / 1e3
        benchmark.extra_info.update(cudnn_ms=cudnn * 1e3, pct_of_cudnn=100 * cudnn / seconds)
