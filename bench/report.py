"""One command for the first minutes on a GPU: every Triton kernel checked against cuDNN at AlexNet's shapes, every
layer and the training step timed against cuDNN and torch.compile, the data pipeline's img/s; written as
report.json, report.md (tables to paste) and report.png (per-layer time against cuDNN and the floor).

    python -m bench.report [--output-dir DIR] [--quick] [--aot-json FILE]

On a GPU (meant to take <= 8 minutes on an H100/H200, autotuning included), batch 128:
  1. correctness: each conv kernel (fwd, dgrad, wgrad) with EVERY tile the autotuner may pick there (the tile forced
     as tests/test_conv_relu.py's test_every_tile does), in fp32 exact, fp32 TF32, bf16 and fp16, and the LRN and
     max-pool kernels forward and backward; against float64 references computed by the torch ops on the device
     (cuDNN), with cuDNN's own error at the same dtype beside ours. A failure (wrong answer or exception) is
     recorded with its kernel, tile and error, and the report goes on.
  2. per-layer device times: triton.testing.do_bench (CUDA events, L2 flushed before every run, median), Triton vs
     torch (cuDNN) vs compile; the tile the autotuner chose; TFLOP/s or GB/s; % of cuDNN; % of the floor
     (bench.costs, on the recognised GPU, else "unknown"); the static estimate of `kernels.aot --report --json`.
     The host time of one call (launch overhead) is measured separately.
  3. the training step (forward, backward, SGD), img/s per backend, fp32 and bf16 autocast, with its host time.
  4. the data pipeline (bench/test_data_pipeline.py's code): DALI on the CPU and with the GPU decoder, and PIL.
With no GPU the same functions run at the CPU shapes of bench/ (batch 1, channels / 16, at most 15x15), Triton in
the interpreter (its times are marked: they are not speeds), no ratio against cuDNN and no floor; --quick shrinks
further (for tests/test_bench_report.py). Default output: docs/gpu-reports/<date>-<device>/ on a GPU,
report-cpu/ otherwise.
"""

import argparse
import datetime
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

CONV_PASSES = ("fwd", "dgrad", "wgrad")
LRN_POOL_LAYERS = ("lrn1", "pool1", "lrn2", "pool2", "pool5")
PAPER_LRN = dict(size=5, alpha=1e-4, beta=0.75, k=2.0)

# (max |ours - float64 reference| <= atol * max|reference| + rtol * |reference|), per dtype, at batch 128.
# atol is relative to the tensor's largest value: y, dx, dW are sums of 10^2..4x10^5 products (conv1's wgrad reduces
# over 128 x 57 x 57 pixels) whose scales differ by orders of magnitude. The reference takes the same rounded inputs
# (and our ReLU mask for the gradients), so only the kernel's arithmetic is measured.
CONV_TOLERANCES = {
    # fp32 exact: fp32 accumulation of up to ~4x10^5 terms, the error grows ~sqrt(n) * 2^-24 ~ 4e-5 of the largest
    "fp32": (1e-4, 1e-4),
    # TF32: operands cut to 10-bit mantissas (2^-11 ~ 4.9e-4 each), random-signed over the sum: ~1e-3 of the value;
    # cuDNN's TF32 errs alike (its error is recorded beside ours)
    "tf32": (5e-3, 5e-3),
    # fp16: exact products, fp32 accumulation, one rounding of the result (half an ulp = 2^-11 = 4.9e-4)
    "fp16": (2e-4, 2e-3),
    # bf16: one rounding (half an ulp = 2^-8 = 3.9e-3); the interpreter's cast truncates: a whole ulp (7.8e-3)
    "bf16": (2e-4, 1e-2),
}
# LRN: a handful of fp32 operations per element, then one rounding to the dtype. Max-pool forward is exact; its
# backward sums up to 4 overlapping gradients in fp32 and rounds once: a few ulps of the dtype at most.
LRN_POOL_TOLERANCES = {"fp32": (1e-5, 1e-5), "tf32": (1e-5, 1e-5), "fp16": (1e-3, 2e-3), "bf16": (8e-3, 1.6e-2)}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench.report", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", type=Path, help="where report.json/.md/.png go (default: see below)")
    parser.add_argument("--quick", action="store_true", help="smaller still and fewer cases: a test of the command")
    parser.add_argument("--aot-json", type=Path, help="`python -m kernels.aot --report --json FILE`'s output, for the "
                        "static estimate beside each time (default: aot.json in the output directory, if there)")
    parser.epilog = __doc__[__doc__.index("On a GPU"):]
    return parser.parse_args(argv)


# ----------------------------------------------------------------------------------------------------------
# What runs where: the plan of the run (shapes, dtypes, backends) for a GPU, a CPU, and --quick.


def make_plan(gpu: bool, quick: bool) -> dict:
    """Batch, shrink (channel divisor, largest side; None: AlexNet's shapes), dtypes and cases of this run."""
    if gpu:
        return dict(batch=128, shrink=None, check_dtypes=["fp32", "tf32", "bf16", "fp16"],
                    time_dtypes=["tf32", "bf16", "fp16"], compile_dtypes=["tf32", "bf16"],
                    backends=["triton", "torch", "compile"], convs=None, lrn_pool=LRN_POOL_LAYERS,
                    step_backends=["torch", "compile", "triton"], step_amps=["none", "bf16"], step_batch=128,
                    data=dict(per_class=64, repeat=2, batch=128), rounds=None)
    if quick:  # conv1 (space-to-depth) and conv2 (grouped, padded) cover the conv paths; the smallest shapes
        return dict(batch=1, shrink=(32, 11), check_dtypes=["fp32", "bf16"], time_dtypes=["fp32"], compile_dtypes=[],
                    backends=["triton", "torch"], convs=["conv1", "conv2"], lrn_pool=("lrn1", "pool1"),
                    step_backends=["torch"], step_amps=["none"], step_batch=1,
                    data=dict(per_class=3, repeat=1, batch=10), rounds=1)
    return dict(batch=1, shrink=(16, 15), check_dtypes=["fp32", "bf16", "fp16"], time_dtypes=["fp32"],
                compile_dtypes=["fp32"], backends=["triton", "torch", "compile"], convs=None, lrn_pool=LRN_POOL_LAYERS,
                step_backends=["torch", "compile"], step_amps=["none"], step_batch=4,
                data=dict(per_class=64, repeat=1, batch=128), rounds=3)


# ----------------------------------------------------------------------------------------------------------
# The machine: device, its peak (bench.costs.gpu_key, else "unknown"), driver, clocks, versions.


def environment(device) -> dict:
    import torch
    from importlib.metadata import PackageNotFoundError, version

    from bench.costs import GPUS, gpu_key
    from kernels.interpret import interpreting

    def package(*names):
        for name in names:
            try:
                return version(name)
            except PackageNotFoundError:
                pass
        return None

    env = dict(gpu=device.type == "cuda", torch=torch.__version__, triton=package("triton"), cuda=torch.version.cuda,
               dali=package("nvidia-dali-cuda130", "nvidia-dali-cuda120", "nvidia-dali-cuda110", "nvidia-dali"),
               python=platform.python_version(), host=platform.node(), cpus=os.cpu_count(),
               triton_interpreted=interpreting(), date=datetime.datetime.now(datetime.timezone.utc).isoformat())
    if device.type != "cuda":
        return dict(env, device="cpu", peak="none (no GPU)", cpu=platform.processor() or platform.machine())
    name = torch.cuda.get_device_name(device)
    key = gpu_key(name)
    env.update(device=name, peak=GPUS[key].name if key else "unknown", gpu_key=key,
               cudnn=torch.backends.cudnn.version(), sms=torch.cuda.get_device_properties(device).multi_processor_count)
    fields = "driver_version,clocks.sm,clocks.max.sm,clocks.mem,clocks.max.mem,power.limit,temperature.gpu"
    try:  # the driver and clocks, if nvidia-smi is there
        out = subprocess.run(["nvidia-smi", f"--query-gpu={fields}", "--format=csv,noheader", "-i",
                              str(device.index or 0)], capture_output=True, text=True, timeout=20).stdout.strip()
        env.update(zip(fields.split(","), (v.strip() for v in out.split(","))))
    except (OSError, subprocess.SubprocessError) as error:
        env["nvidia_smi"] = f"unavailable: {error}"
    return env


# ----------------------------------------------------------------------------------------------------------
# Problems: AlexNet's layers at this run's shapes (bench/test_conv.py's shrink on a CPU).


def torch_dtype(name):
    import torch
    return {"fp32": torch.float32, "tf32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[name]


def conv_problem(layer, dtype_name, plan, device, seed=0):
    """x, w, b, (stride, padding, groups): x ~ N(0, 1), w ~ N(0, 1/fan_in), b ~ N(0, 0.5^2); conv1's x NCHW."""
    import torch
    from kernels.conv_relu import ALEXNET_CONVS

    (C, H, W), (K, CG, R, S), stride, padding, groups = ALEXNET_CONVS[layer]
    if plan["shrink"]:
        div, side = plan["shrink"]
        K, CG, H, W = K // div, max(CG // div, 3), min(H, side), min(W, side)
        C = CG * groups
    generator = torch.Generator().manual_seed(seed)
    dtype = torch_dtype(dtype_name)
    layout = torch.contiguous_format if layer == "conv1" else torch.channels_last
    x = torch.randn(plan["batch"], C, H, W, generator=generator).to(device, dtype).contiguous(memory_format=layout)
    w = (torch.randn(K, CG, R, S, generator=generator) / (CG * R * S) ** 0.5).to(device, dtype)
    b = (torch.randn(K, generator=generator) * 0.5).to(device, dtype)
    return x, w, b, (stride, padding, groups)


def lrn_pool_shape(layer, plan):
    from bench.roofline import LRN_POOL_SHAPES

    c, h, w = LRN_POOL_SHAPES[layer]
    side = plan["shrink"][1] if plan["shrink"] else max(h, w)
    return plan["batch"], c, min(h, side), min(w, side)


@contextmanager
def precision(dtype_name):
    """fp32 exact or TF32, for our kernels (conv_relu.ALLOW_TF32) and cuDNN alike; 16-bit dtypes leave both as set."""
    import torch
    from kernels import conv_relu

    saved = conv_relu.ALLOW_TF32
    tf32 = dtype_name != "fp32"
    conv_relu.ALLOW_TF32 = tf32
    try:
        with torch.backends.cudnn.flags(enabled=True, benchmark=True, deterministic=False, allow_tf32=tf32):
            yield
    finally:
        conv_relu.ALLOW_TF32 = saved


# ----------------------------------------------------------------------------------------------------------
# 1. Correctness: every kernel, every usable tile, every dtype.


class ForcedTile:
    """Stands in for an autotuned conv kernel in kernels.conv_relu (`_fwd_kernel`...) so that the launchers' own
    path (space-to-depth, ReLU mask, split-K) runs with tile number `index` of usable_tiles, launched as
    `kernel.fn[grid](*args, **meta, **_tile_meta(tile))`; `tiles` lists what the launch could have used."""

    def __init__(self, autotuned, kernel: str, sides, index: int):
        self.autotuned, self.kernel, self.sides, self.index = autotuned, kernel, sides, index
        self.tiles, self.used = [], None

    def __getitem__(self, grid):
        from kernels import conv_relu

        def launch(*args, **meta):
            named = {**dict(zip(self.autotuned.fn.arg_names, args)), **meta}
            self.tiles = conv_relu.usable_tiles(self.kernel, *self.sides(named))
            self.used = self.tiles[self.index]
            return self.autotuned.fn[grid](*args, **meta, **conv_relu._tile_meta(self.used))
        return launch


@contextmanager
def forced_tile(kernel: str, index: int):
    from kernels import conv_relu

    name = f"_{kernel}_kernel"
    autotuned = getattr(conv_relu, name)
    shim = ForcedTile(autotuned, kernel, getattr(conv_relu, f"_{kernel}_sides"), index)
    setattr(conv_relu, name, shim)
    try:
        yield shim
    finally:
        setattr(conv_relu, name, autotuned)


def max_error(got, want) -> float:
    """max |got - want| / max |want| (the atol scale of the tolerances)."""
    return ((got.double() - want).abs().max() / want.abs().max().clamp_min(1e-30)).item()


def within(got, want, tolerance) -> bool:
    atol, rtol = tolerance
    return bool(((got.double() - want).abs() <= atol * want.abs().max() + rtol * want.abs()).all())


def check_convs(plan, device, layers) -> list[dict]:
    """One row per (layer, dtype, pass, tile): our error, cuDNN's at the same dtype, pass/fail or the exception."""
    rows = []
    for layer in layers:
        for dt in plan["check_dtypes"]:
            try:
                rows += check_conv(plan, device, layer, dt)
            except Exception as error:  # the references themselves failed: recorded, and the report goes on
                rows.append(dict(kernel="(references)", layer=layer, dtype=dt, tile="-", ok=False,
                                 exception=f"{type(error).__name__}: {error}"[:500]))
    return rows


def check_conv(plan, device, layer, dt) -> list[dict]:
    """check_convs' rows of one layer in one dtype: float64 references, cuDNN at the dtype, ours per tile."""
    import torch
    import torch.nn.functional as F
    from kernels import conv_relu

    rows = []
    with precision(dt):
        x, w, b, (stride, padding, groups) = conv_problem(layer, dt, plan, device)
        geometry = (stride, padding, groups)
        y = conv_relu.conv2d_relu_fwd(x, w, b, *geometry)  # the autotuner's tile: the mask of the references
        dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(1)).to(device, y.dtype)
        g = dy.double() * (y > 0)
        want = dict(
            fwd=F.relu(F.conv2d(x.double(), w.double(), b.double(), stride, padding, 1, groups)),
            dgrad=torch.nn.grad.conv2d_input(x.shape, w.double(), g, stride, padding, 1, groups),
            wgrad=torch.nn.grad.conv2d_weight(x.double(), w.shape, g, stride, padding, 1, groups))
        gc = g.to(x.dtype)
        cudnn_bwd = lambda mask: torch.ops.aten.convolution_backward(  # noqa: E731
            gc, x, w, [w.shape[0]], [stride] * 2, [padding] * 2, [1, 1], False, [0, 0], groups, mask)
        cudnn = dict(fwd=F.relu(F.conv2d(x, w, b, stride, padding, 1, groups)),
                     dgrad=cudnn_bwd([True, False, False])[0], wgrad=cudnn_bwd([False, True, False])[1])
        ours = dict(fwd=lambda: conv_relu.conv2d_relu_fwd(x, w, b, *geometry),
                    dgrad=lambda: conv_relu.conv2d_relu_dgrad(dy, y, w, x.shape, *geometry),
                    wgrad=lambda: conv_relu.conv2d_relu_wgrad(dy, y, x, w.shape, *geometry)[0])
        for kernel in CONV_PASSES:
            index, count = 0, 1
            while index < count:
                row = dict(kernel=kernel, layer=layer, dtype=dt, shape=list(x.shape), weight=list(w.shape),
                           tolerance=CONV_TOLERANCES[dt], cudnn_error=max_error(cudnn[kernel], want[kernel]))
                try:
                    with forced_tile(kernel, index) as shim:
                        got = ours[kernel]()
                    count = len(shim.tiles)
                    row.update(tile=list(shim.used), error=max_error(got, want[kernel]),
                               ok=within(got, want[kernel], CONV_TOLERANCES[dt]))
                except Exception as error:  # recorded, and the report goes on
                    row.update(tile=f"#{index}", ok=False, exception=f"{type(error).__name__}: {error}"[:500])
                rows.append(row)
                index += 1
    return rows


def check_lrn_pool(plan, device) -> list[dict]:
    """The Triton LRN and max-pool, forward and backward (through autograd), against float64 references."""
    import torch
    import torch.nn.functional as F

    import kernels
    from tests.reference import lrn_grad_float64, lrn_paper_float64

    ops = kernels.backend("triton")
    rows = []
    for layer in plan["lrn_pool"]:
        for dt in plan["check_dtypes"]:
            generator = torch.Generator().manual_seed(2)
            x = torch.randn(lrn_pool_shape(layer, plan), generator=generator).relu().to(device, torch_dtype(dt))
            x.requires_grad_()
            try:
                if layer.startswith("lrn"):
                    y = ops.lrn(x, **PAPER_LRN)
                    dy = torch.randn(y.shape, generator=generator).to(device, y.dtype)
                    want_y, want_dx = lrn_paper_float64(x.detach(), **PAPER_LRN), lrn_grad_float64(x, dy, **PAPER_LRN)
                else:
                    y = ops.max_pool2d(x, 3, 2)
                    dy = torch.randn(y.shape, generator=generator).to(device, y.dtype)
                    xd = x.detach().double().requires_grad_()
                    want_y = F.max_pool2d(xd, 3, 2)
                    (want_dx,) = torch.autograd.grad(want_y, xd, dy.double())
                (dx,) = torch.autograd.grad(y, x, dy)
                for kernel, got, want in (("fwd", y, want_y), ("bwd", dx, want_dx)):
                    rows.append(dict(kernel=f"{layer[:-1]} {kernel}", layer=layer, dtype=dt, shape=list(x.shape),
                                     tile="-", tolerance=LRN_POOL_TOLERANCES[dt], error=max_error(got, want),
                                     ok=within(got, want.detach(), LRN_POOL_TOLERANCES[dt])))
            except Exception as error:
                rows.append(dict(kernel=layer[:-1], layer=layer, dtype=dt, tile="-", ok=False,
                                 exception=f"{type(error).__name__}: {error}"[:500]))
    return rows


# ----------------------------------------------------------------------------------------------------------
# 2. Per-layer times against cuDNN, compile and the floor, with the static estimate beside them.


def aot_estimates(path) -> dict:
    """{(layer, op, dtype): {"h100": s, "h200": s}} from kernels.aot's JSON: the best tile's estimate per launch
    kind (as the autotuner would pick), sm_90 builds; LRN and pool "fwd+bwd" is fwd + bwd; conv dgrad/wgrad
    include the ReLU-mask launch."""
    if path is None or not Path(path).exists():
        return {}
    best = {}
    for row in json.loads(Path(path).read_text())["builds"]:
        for launch in row.get("launches", []):
            work = launch["work"]
            if row.get("arch") != "sm_90" or "h100" not in launch:
                continue
            key = (work["layer"], work["op"], work["dtype"])
            if key not in best or launch["h100"]["seconds"] < best[key]["h100"]:
                best[key] = {gpu: launch[gpu]["seconds"] for gpu in ("h100", "h200")}
    out = dict(best)
    for (layer, op, dtype), est in best.items():
        mask = best.get((layer, "relu_mask", dtype))
        if op in ("dgrad", "wgrad") and mask:
            out[(layer, op, dtype)] = {gpu: est[gpu] + mask[gpu] for gpu in est}
        if op == "fwd" and (layer, "bwd", dtype) in best:
            out[(layer, "fwd+bwd", dtype)] = {gpu: est[gpu] + best[(layer, "bwd", dtype)][gpu] for gpu in est}
    return out


def layer_cases(plan, device, dt, layers):
    """(layer, pass, {backend: fn}, (FLOPs, bytes), autotuned kernel or None) for every timed layer and pass."""
    import torch

    import kernels
    from bench.costs import conv_costs, lrn_costs, pool_costs
    from kernels import conv_relu

    backends = [b for b in plan["backends"] if b != "compile" or dt in plan["compile_dtypes"]]
    for layer in layers:
        x, w, b, geometry = conv_problem(layer, dt, plan, device)
        stride, padding, groups = geometry
        y = conv_relu.conv2d_relu_fwd(x, w, b, *geometry)
        dy = torch.randn_like(y)
        layout = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
        g = (dy * (y > 0)).contiguous(memory_format=layout)  # cuDNN's backward gets dy masked; ours masks it itself
        backward = lambda mask: torch.ops.aten.convolution_backward(  # noqa: E731
            g, x, w, [w.shape[0]], [stride] * 2, [padding] * 2, [1, 1], False, [0, 0], groups, mask)
        costs = conv_costs(x.shape, w.shape, stride, padding, x.element_size())
        compiled = kernels.backend("compile").conv2d_relu.__wrapped__ if "compile" in backends else None
        yield layer, "fwd", {"triton": lambda: conv_relu.conv2d_relu_fwd(x, w, b, *geometry),
                             "torch": lambda: torch.nn.functional.relu(
                                 torch.nn.functional.conv2d(x, w, b, stride, padding, 1, groups)),
                             **({"compile": lambda: compiled(x, w, b, *geometry)} if compiled else {})}, \
            costs["fwd"], conv_relu._fwd_kernel
        yield layer, "dgrad", {"triton": lambda: conv_relu.conv2d_relu_dgrad(dy, y, w, x.shape, *geometry),
                               "torch": lambda: backward([True, False, False])}, costs["dgrad"], conv_relu._dgrad_kernel
        yield layer, "wgrad", {"triton": lambda: conv_relu.conv2d_relu_wgrad(dy, y, x, w.shape, *geometry),
                               "torch": lambda: backward([False, True, True])}, costs["wgrad"], conv_relu._wgrad_kernel
    for layer in plan["lrn_pool"]:
        shape = lrn_pool_shape(layer, plan)
        size = torch.finfo(torch_dtype(dt)).bits // 8
        costs = (lrn_costs if layer.startswith("lrn") else pool_costs)(shape, size)
        x = torch.randn(shape, device=device).relu().to(torch_dtype(dt)).requires_grad_()
        fns = {}
        for backend in backends:
            ops = kernels.backend(backend)
            op = (lambda t, ops=ops: ops.lrn(t, **PAPER_LRN)) if layer.startswith("lrn") else \
                (lambda t, ops=ops: ops.max_pool2d(t, 3, 2))
            fns[backend] = op
        dy = torch.randn_like(fns["torch"](x))
        yield layer, "fwd", {name: (lambda op=op: op(x.detach())) for name, op in fns.items()}, costs["fwd"], None
        yield layer, "fwd+bwd", {name: (lambda op=op: torch.autograd.grad(op(x), x, dy)) for name, op in fns.items()}, \
            costs["fwd+bwd"], None


def time_layers(plan, device, env, layers, estimates) -> list[dict]:
    """One row per (dtype, layer, pass, backend): ms, host ms, tile chosen, TFLOP/s or GB/s, % of cuDNN, % of floor.
    Every time is bench.common.time_ms's: device time on a GPU (L2 flushed), wall clock on a CPU."""
    from bench.common import tile_name, time_ms
    from bench.costs import GPUS
    from kernels.interpret import interpreting

    gpu = GPUS.get(env.get("gpu_key") or "")
    rows = []
    for dt in plan["time_dtypes"]:
        with precision(dt):
            for layer, pass_, fns, (flops, nbytes), autotuned in layer_cases(plan, device, dt, layers):
                case = []
                for backend, fn in fns.items():
                    row = dict(layer=layer, pass_=pass_, dtype=dt, backend=backend, flops=flops, bytes=nbytes,
                               interpreted=backend == "triton" and interpreting())
                    try:
                        # interpreted Triton is timed once after its warm-up: not a speed, and the CPU run's slowest part
                        row.update(time_ms(fn, device, 1 if row["interpreted"] else plan["rounds"]))
                    except Exception as error:
                        case.append(dict(row, exception=f"{type(error).__name__}: {error}"[:500]))
                        continue
                    if backend == "triton" and autotuned is not None:
                        row["tile"] = tile_name(getattr(autotuned, "best_config", None))
                    seconds = row["ms"] / 1e3
                    row["TFLOPs" if flops else "GBps"] = flops / seconds / 1e12 if flops else nbytes / seconds / 1e9
                    if gpu is not None and device.type == "cuda":
                        row["floor_ms"] = 1e3 * max(flops / (gpu.tflops[dt] * 1e12), nbytes / gpu.bandwidth)
                        row["pct_of_floor"] = 100 * row["floor_ms"] / row["ms"]
                    aot_dtype = "fp32" if dt == "tf32" and flops == 0 else dt
                    est = estimates.get((layer, pass_, aot_dtype))
                    if backend == "triton" and est:
                        row["aot_estimate_ms_batch128"] = {gpu_: s * 1e3 for gpu_, s in est.items()}
                    case.append(row)
                cudnn_ms = next((r["ms"] for r in case if r["backend"] == "torch" and "ms" in r), None)
                for row in case:  # 100: as fast as cuDNN; above: faster. Not on a CPU (no cuDNN, interpreted Triton)
                    if row["backend"] != "torch" and "ms" in row and cudnn_ms is not None and device.type == "cuda":
                        row["pct_of_cudnn"] = 100 * cudnn_ms / row["ms"]
                rows += case
    return rows


# ----------------------------------------------------------------------------------------------------------
# 3. The training step; 4. the data pipeline (bench/'s own code paths).


def time_train_steps(plan, device) -> list[dict]:
    from bench.common import time_ms
    from bench.test_train_step import make_step

    rows = []
    for amp in plan["step_amps"]:
        for backend in plan["step_backends"]:
            row = dict(backend=backend, amp=amp, batch=plan["step_batch"])
            try:
                row.update(time_ms(make_step(backend, amp, device, plan["step_batch"]), device, plan["rounds"]))
                row["img_per_s"] = plan["step_batch"] / row["ms"] * 1e3
            except Exception as error:
                row["exception"] = f"{type(error).__name__}: {error}"[:500]
            rows.append(row)
    return rows


def time_data_pipeline(plan, device, workdir: Path) -> list[dict]:
    from bench.test_data_pipeline import WORKERS, first_batch, make_plan as data_plan, the_rest

    p = plan["data"]
    batches_plan = data_plan(workdir / "data", p["per_class"], p["repeat"], p["batch"])
    images = len(batches_plan) - p["batch"]  # the first batch pays for start-up: timed apart
    cases = [("dali", "cpu"), ("pil", "cpu")] + ([("dali", "cuda")] if device.type == "cuda" else [])
    rows = []
    for loader, where in cases:
        row = dict(loader=loader, device=where, workers=WORKERS, batch=p["batch"], images=images)
        try:
            batches, row["startup_s"] = first_batch(batches_plan, loader, where, WORKERS, p["batch"])
            start = time.perf_counter()
            the_rest(batches, where)
            row["seconds"] = time.perf_counter() - start
            row["img_per_s"] = images / row["seconds"]
        except Exception as error:
            row["exception"] = f"{type(error).__name__}: {error}"[:500]
        rows.append(row)
    return rows


# ----------------------------------------------------------------------------------------------------------
# Writing it down: report.json, report.md, report.png.


def _f(value, digits=3):
    return "-" if value is None else f"{value:.{digits}g}" if isinstance(value, float) else str(value)


def markdown(report: dict) -> str:
    env = report["environment"]
    lines = [f"# bench.report: {env['device']}, {env['date'][:10]}", ""]
    if not env["gpu"]:
        lines += ["**No GPU was present.** This run proves the command works: shapes shrunk (batch "
                  f"{report['plan']['batch']}), Triton in the CPU interpreter (its times are not speeds), "
                  "no ratio against cuDNN and no floor. None of these figures is a GPU figure.", ""]
    lines += ["| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in env.items()] + [""]
    checks = report["correctness"]
    failed = [r for r in checks if not r["ok"]]
    lines += ["## 1. Correctness against float64 references (cuDNN's error at the same dtype beside ours)", "",
              f"{len(checks) - len(failed)} of {len(checks)} pass; tolerance (atol x max|ref|, rtol).", "",
              "| kernel | layer | dtype | tile | error / max | cuDNN's | tolerance | ok |", "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['kernel']} | {r['layer']} | {r['dtype']} | {r['tile']} | {_f(r.get('error'))} | "
              f"{_f(r.get('cudnn_error'))} | {r.get('tolerance', '-')} | "
              f"{'yes' if r['ok'] else 'FAIL ' + r.get('exception', '')} |" for r in checks]
    lines += ["", f"## 2. Per-layer times ({report['layers_method']})", "",
              "| layer | pass | dtype | backend | ms | host ms | tile | TFLOP/s or GB/s | % of cuDNN | floor ms | "
              "% of floor | aot estimate ms H100/H200 (batch 128) |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["layers"]:
        rate = f"{r['TFLOPs']:.3g} TFLOP/s" if "TFLOPs" in r else f"{r['GBps']:.3g} GB/s" if "GBps" in r else "-"
        est = r.get("aot_estimate_ms_batch128")
        lines.append(f"| {r['layer']} | {r['pass_']} | {r['dtype']} | {r['backend']}"
                     f"{' (interpreted)' if r['interpreted'] else ''} | {_f(r.get('ms'))} | {_f(r.get('host_ms'))} | "
                     f"{r.get('tile') or '-'} | {rate} | {_f(r.get('pct_of_cudnn'))} | {_f(r.get('floor_ms'))} | "
                     f"{_f(r.get('pct_of_floor'))} | {'/'.join(_f(v) for v in est.values()) if est else '-'} |"
                     + (f" {r['exception']}" if "exception" in r else ""))
    lines += ["", "## 3. Training step (forward, backward, SGD), synthetic images", "",
              "| backend | amp | batch | ms | host ms | img/s |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['backend']} | {r['amp']} | {r['batch']} | {_f(r.get('ms'))} | {_f(r.get('host_ms'))} | "
              f"{_f(r.get('img_per_s'))} |" + (f" {r['exception']}" if "exception" in r else "")
              for r in report["train_step"]]
    lines += ["", "## 4. Data pipeline (the paper's train transform, embedded dataset)", "",
              "| loader | device | workers | batch | images | start-up s | img/s |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['loader']} | {r['device']} | {r['workers']} | {r['batch']} | {r['images']} | "
              f"{_f(r.get('startup_s'))} | {_f(r.get('img_per_s'))} |" + (f" {r['exception']}" if "exception" in r else "")
              for r in report["data_pipeline"]]
    lines += ["", f"Total {report['seconds']:.0f} s."]
    return "\n".join(lines) + "\n"


def plot_layers(report: dict, path: Path):
    """bench.plot's bars: per layer and pass, each backend's time and the floor (the plot dtype's rows)."""
    from bench.plot import plot

    rows = [r for r in report["layers"] if "ms" in r]
    dt = "bf16" if any(r["dtype"] == "bf16" for r in rows) else rows[0]["dtype"] if rows else "fp32"
    measured, floors = {}, {}
    for r in rows:
        if r["dtype"] != dt:
            continue
        key = (r["layer"], r["pass_"])
        measured.setdefault(key, {})[r["backend"]] = dict(ms=r["ms"], triton_interpreted=r["interpreted"])
        if r.get("floor_ms"):
            floors[key] = r["floor_ms"]
    env = report["environment"]
    if not floors:  # no GPU or an unknown one: the H100 SXM's floor at batch 128, labelled so
        from bench.costs import GPUS
        from bench.roofline import floors_ms
        floors = {k: v for k, v in floors_ms(GPUS["h100"], dt, 128).items() if k in measured}
        caveat = "floor: H100 SXM vendor peaks at batch 128 (no recognised GPU here: not like for like)"
    else:
        caveat = f"floor: {env['peak']} vendor peaks at the measured shapes"
    plot(measured, floors, f"bench.report on {env['device']}, {dt}, batch {report['plan']['batch']}\n{caveat}", str(path))


def default_output_dir(env) -> Path:
    if not env["gpu"]:
        return Path("report-cpu")
    slug = re.sub(r"[^A-Za-z0-9]+", "-", env["device"].removeprefix("NVIDIA ")).strip("-").lower()
    return Path("docs/gpu-reports") / f"{env['date'][:10]}-{slug}"


def main(argv=None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    from kernels.interpret import prepare  # imports torch; with no GPU, TRITON_INTERPRET=1 before Triton's import
    prepare()
    import torch
    from kernels.conv_relu import ALEXNET_CONVS

    gpu = torch.cuda.is_available()
    device = torch.device("cuda" if gpu else "cpu")
    plan = make_plan(gpu, args.quick)
    env = environment(device)
    out = args.output_dir or default_output_dir(env)
    out.mkdir(parents=True, exist_ok=True)
    aot = args.aot_json or (out / "aot.json")
    layers = plan["convs"] or list(ALEXNET_CONVS)

    def stage(name, fn, *fn_args):
        t = time.perf_counter()
        print(f"[bench.report] {name} ...", flush=True)
        result = fn(*fn_args)
        print(f"[bench.report] {name}: {time.perf_counter() - t:.1f} s", flush=True)
        return result

    torch.manual_seed(0)
    report = dict(environment=env, plan=plan, tolerances=dict(conv=CONV_TOLERANCES, lrn_pool=LRN_POOL_TOLERANCES))
    report["correctness"] = stage("correctness", lambda: check_convs(plan, device, layers) +
                                  check_lrn_pool(plan, device))
    report["aot_json"] = str(aot) if Path(aot).exists() else None
    report["layers_method"] = ("device time: triton.testing.do_bench, CUDA events, L2 flushed, median" if gpu
                               else "CPU wall clock, median; Triton interpreted: not speeds")
    report["layers"] = stage("per-layer times", time_layers, plan, device, env, layers, aot_estimates(aot))
    report["train_step"] = stage("training step", time_train_steps, plan, device)
    with tempfile.TemporaryDirectory() as scratch:  # the pipeline's JPEGs, not left in the output directory
        report["data_pipeline"] = stage("data pipeline", time_data_pipeline, plan, device, Path(scratch))
    report["seconds"] = time.perf_counter() - start
    (out / "report.json").write_text(json.dumps(report, indent=1, default=str))
    (out / "report.md").write_text(markdown(report))
    plot_layers(report, out / "report.png")
    failed = sum(not r["ok"] for r in report["correctness"])
    print(f"[bench.report] wrote {out}/report.json, report.md, report.png in {report['seconds']:.0f} s; "
          f"{failed} correctness failure(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
