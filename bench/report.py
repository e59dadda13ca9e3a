"""One command for the first minutes on a GPU: the training path's kernels checked, the training step and every
layer timed against cuDNN and torch.compile, and what else a first run must bring back, written down after every
stage as report.json and report.md (tables to paste), with report.png (per-layer time against cuDNN and the floor).

    python -m bench.report --require-gpu [--output-dir DIR] [--stages A,B] [--aot-json FILE]

The stages, in this order (what matters most first; --stages runs a subset, still in this order):
  train-check  correctness of what training runs: each conv pass (fwd, dgrad, wgrad) with the autotuner's tile,
               LRN and max-pool forward and backward channels_last (as the model runs them) and NCHW, in the
               training dtypes (fp32 steps run TF32 convs; --amp bf16), against float64 references computed by the
               torch ops on the device, cuDNN's own error at the same dtype beside ours
  step         the trainer's step (forward, backward, the one-pass SGD) per backend: img/s, device and host time per
               step, the first step's seconds (compiling and autotuning), max_memory_allocated; for triton and
               torch in bf16 also replayed from its CUDA graph, as the trainer runs it on a GPU
  agreement    a few training steps of triton and torch from the same weights and images: their losses side by side,
               and triton's replayed from a CUDA graph (equal bit for bit); every conv's dW twice (bit-identical)
  layers       per-layer times, triton vs torch (cuDNN) vs compile: device time (do_bench: CUDA events, L2 flushed)
               and beside it the same call replayed from a CUDA graph (no host time in it), the host time of one
               call, rows flagged where that is at least the device time; the tile the autotuner chose; TFLOP/s or
               GB/s, % of cuDNN, % of the floor, the static estimate of `perf.aot --report --json`. Equal work on
               both sides: cuDNN's dgrad and wgrad are timed from the unmasked gradient, with the ReLU mask, as ours
  tiles        every tile the autotuner may pick, each conv pass, the training dtypes (--all-dtypes: fp32 exact and
               fp16 too)
  profile      one profiler trace summary per backend's step: the kernels by device time, launches, device idle
  gpu-tests    the GPU-side pytest files (conv, LRN, max-pool, amp, compile) under a time cap, with their results
  dali-step    the training step fed by DALI (the paper's train transform on the embedded dataset), img/s
  data         the data pipeline alone, on 500x375 JPEGs and on the same prepared by data.prepare (256x256): DALI
               on the CPU and with the GPU decoder on both, PIL on the first, as many workers as the process may
               use CPUs; img/s, the training thread's ms per batch, prepared over original
  jit          what this run compiled: seconds and cache hit of each Triton build and autotuning, registers, spills
               and shared memory of each compiled kernel, torch.compile's graph and recompile counters
  clocks       clocks, power and throttle reasons, read after the timed stages
A stage that fails is recorded with the tail of its error and the next one runs; an error that leaves the CUDA
context unusable ends the run with the report written so far. A stage still running at --time-limit (default
540 s: under a 600-s cut) or at a SIGTERM is stopped and recorded so, and the rest are skipped. report.json and
report.md are replaced whole after every stage (a temporary file renamed): a kill at any moment leaves the last.

With no GPU the same functions run at the CPU shapes of bench/ (batch 1, channels / 16, at most 15x15), Triton in
the interpreter (its times are marked: they are not speeds), no ratio against cuDNN and no floor; --quick shrinks
further (the test of the command). --require-gpu refuses that at once, saying why no GPU is visible.
The output folder must not hold a report already (--overwrite replaces it); by default it is a new dated one:
docs/gpu-reports/<date>-<time>-<device>/ on a GPU, report-cpu/<date>-<time>/ otherwise.
"""

import argparse
import contextlib
import datetime
import itertools
import json
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from alexnet.layers import LRN


def alexnet_tables():
    """(convolutions, LRN and max-pool input shapes): AlexNet's layer tables (alexnet.layers)."""
    from alexnet.layers import CONVS, LRNS, POOLS
    return CONVS, {**LRNS, **POOLS}


def cost_model():
    """bench.costs (GPUS, gpu_key, conv_costs, lrn_costs, pool_costs): this file imports it here only."""
    from bench import costs
    return costs


CONV_PASSES = ("fwd", "dgrad", "wgrad")
LRN_POOL_LAYERS = ("lrn1", "pool1", "lrn2", "pool2", "pool5")
LAYOUTS = ("channels_last", "nchw")  # LRN and max-pool: the model's layout first
GPU_TESTS = ["tests/test_conv_relu.py", "tests/test_lrn.py", "tests/test_maxpool.py", "tests/test_amp.py",
             "tests/test_compile_backend.py", "tests/test_optim.py"]
DEFAULT_TIME_LIMIT = 540
ERROR_TAIL = 6000  # characters of an error kept: a Triton compile error says what went wrong at its end

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
    parser.add_argument("--output-dir", type=Path, help="where report.json/.md/.png go (default: a new dated folder, "
                        "see below)")
    parser.add_argument("--overwrite", action="store_true", help="replace the report already in --output-dir")
    parser.add_argument("--require-gpu", action="store_true", help="exit at once, saying why, if no GPU is visible")
    parser.add_argument("--stages", type=stage_list, default=[stage.name for stage in STAGES],
                        help=f"comma-separated subset of: {','.join(stage.name for stage in STAGES)} (default: all)")
    parser.add_argument("--time-limit", type=positive_seconds, default=DEFAULT_TIME_LIMIT, metavar="SECONDS",
                        help="stop the stage running at this many seconds and skip the rest (default: %(default)s)")
    parser.add_argument("--all-dtypes", action="store_true", help="the tiles stage also checks fp32 exact and fp16 "
                        "(not in the training path; ~2 min more of compiling on a GPU)")
    parser.add_argument("--quick", action="store_true", help="smaller still and fewer cases: a test of the command")
    parser.add_argument("--aot-json", type=Path, help="`python -m perf.aot --report --json FILE`'s output, for the "
                        "static estimate beside each time (default: aot.json in the output directory, if there)")
    parser.epilog = __doc__[__doc__.index("The stages"):]
    return parser.parse_args(argv)


def positive_seconds(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        seconds = float("nan")
    if not seconds > 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds above 0")
    return seconds


def stage_list(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    known = [stage.name for stage in STAGES]
    unknown = [name for name in names if name not in known]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown stage(s) {', '.join(unknown) or '(none given)'}; "
                                         f"the stages are {', '.join(known)}")
    return names


# ----------------------------------------------------------------------------------------------------------
# What runs where: the plan of the run (shapes, dtypes, backends) for a GPU, a CPU, and --quick.


def make_plan(gpu: bool, quick: bool, all_dtypes: bool = False) -> dict:
    """Batch, shrink (channel divisor, largest side; None: AlexNet's shapes), dtypes and cases of each stage.

    On a GPU the dtypes are the training path's: an fp32 step runs TF32 convs (our kernels follow cuDNN's
    default) and --amp bf16 runs bf16. fp32 exact and fp16 (no training run uses them) are the costliest to compile
    (~2.2 s per exact-fp32 conv build against ~1.0 s per 16-bit one) and come only with --all-dtypes; torch.compile
    is timed in bf16 only, and on LRN and max-pool forward+backward channels_last only (what training runs), to keep
    its graphs (3-6 s each) few: 10 instead of ~50."""
    if gpu:
        return dict(batch=128, shrink=None, train_dtypes=["tf32", "bf16"],
                    tile_dtypes=["tf32", "bf16"] + ["fp32", "fp16"] * all_dtypes, time_dtypes=["bf16", "tf32"],
                    compile_dtypes=["bf16"], backends=["triton", "torch", "compile"], convs=None,
                    lrn_pool=LRN_POOL_LAYERS, step_backends=["torch", "triton", "compile"], step_amps=["bf16", "none"],
                    compile_amps=["bf16"], step_batch=128, agreement=dict(amps=["bf16", "none"], steps=5),
                    profile=dict(backends=["torch", "triton", "compile"], amp="bf16", steps=3), tests_timeout=45,
                    dali_step=dict(backends=["triton", "torch"], amp="bf16"),
                    data=dict(per_class=64, repeat=2, batch=128), rounds=None)
    if quick:  # conv1 (space-to-depth) and conv2 (grouped, padded) cover the conv paths; the smallest shapes
        return dict(batch=1, shrink=(32, 11), train_dtypes=["fp32", "bf16"], tile_dtypes=["fp32"],
                    time_dtypes=["fp32"], compile_dtypes=[], backends=["triton", "torch"], convs=["conv1", "conv2"],
                    lrn_pool=("lrn1", "pool1"), step_backends=["torch"], step_amps=["none"], compile_amps=[],
                    step_batch=1, agreement=None, profile=dict(backends=["torch"], amp="none", steps=1),
                    tests_timeout=None, dali_step=dict(backends=["torch"], amp="none"),
                    data=dict(per_class=4, repeat=1, batch=10), rounds=1)
    return dict(batch=1, shrink=(16, 15), train_dtypes=["fp32", "bf16"], tile_dtypes=["fp32", "bf16", "fp16"],
                time_dtypes=["fp32"], compile_dtypes=["fp32"], backends=["triton", "torch", "compile"], convs=None,
                lrn_pool=LRN_POOL_LAYERS, step_backends=["torch", "compile"], step_amps=["none"],
                compile_amps=["none"], step_batch=4, agreement=None,
                profile=dict(backends=["torch", "compile"], amp="none", steps=2), tests_timeout=None,
                dali_step=dict(backends=["torch"], amp="none"), data=dict(per_class=64, repeat=1, batch=128), rounds=3)


# ----------------------------------------------------------------------------------------------------------
# The machine: device, its peak (bench.costs.gpu_key, else "unknown"), driver, versions; clocks by nvidia-smi.


def no_gpu_reason() -> str | None:
    """None when PyTorch sees a GPU, else why not: what PyTorch said, CUDA_VISIBLE_DEVICES and nvidia-smi's list."""
    import torch

    with warnings.catch_warnings(record=True) as caught:  # e.g. "The NVIDIA driver on your system is too old"
        warnings.simplefilter("always")
        if torch.cuda.is_available():
            return None
    said = "; ".join(str(w.message).strip().splitlines()[0] for w in caught)
    try:
        listed = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20)
        smi = (listed.stdout or listed.stderr).strip().splitlines()
        smi = f"nvidia-smi -L: {smi[0] if smi else f'exit {listed.returncode}, no output'}"
    except (OSError, subprocess.SubprocessError) as error:
        smi = f"nvidia-smi: {error}"
    return (f"PyTorch {torch.__version__} (built for CUDA {torch.version.cuda}) sees no GPU"
            + (f" ({said})" if said else "")
            + f"; CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}"
            + f"; {smi}")


def nvidia_smi(device, fields: list[str]) -> dict:
    """{field: value} of `nvidia-smi --query-gpu` for this device; {"nvidia_smi": why} if it cannot say."""
    try:
        done = subprocess.run(["nvidia-smi", f"--query-gpu={','.join(fields)}", "--format=csv,noheader", "-i",
                               str(device.index or 0)], capture_output=True, text=True, timeout=20)
        values = [v.strip() for v in done.stdout.strip().split(",")]
        if done.returncode or len(values) != len(fields):
            return dict(nvidia_smi=f"exit {done.returncode}: {(done.stderr or done.stdout).strip()[-300:]}")
        return dict(zip(fields, values))
    except (OSError, subprocess.SubprocessError) as error:
        return dict(nvidia_smi=f"unavailable: {error}")


def environment(device) -> dict:
    import torch
    from importlib.metadata import PackageNotFoundError, version

    from bench.common import usable_cpus
    from kernels.interpret import interpreting

    def package(*names):
        for name in names:
            try:
                return version(name)
            except PackageNotFoundError:
                pass
        return None

    costs = cost_model()
    env = dict(gpu=device.type == "cuda", torch=torch.__version__, triton=package("triton"), cuda=torch.version.cuda,
               dali=package("nvidia-dali-cuda130", "nvidia-dali-cuda120", "nvidia-dali-cuda110", "nvidia-dali"),
               python=platform.python_version(), host=platform.node(), cpus=usable_cpus(), host_cpus=os.cpu_count(),
               triton_interpreted=interpreting(), triton_cache_dir=os.environ.get("TRITON_CACHE_DIR", "default"),
               date=datetime.datetime.now(datetime.timezone.utc).isoformat())
    if device.type != "cuda":
        return dict(env, device="cpu", peak="none (no GPU)", cpu=platform.processor() or platform.machine())
    name = torch.cuda.get_device_name(device)
    key = costs.gpu_key(name)
    env.update(device=name, peak=costs.GPUS[key].name if key else "unknown", gpu_key=key,
               cudnn=torch.backends.cudnn.version(), sms=torch.cuda.get_device_properties(device).multi_processor_count)
    env.update(nvidia_smi(device, ["driver_version", "clocks.max.sm", "clocks.max.mem", "power.limit"]))
    return env


# ----------------------------------------------------------------------------------------------------------
# Problems: AlexNet's layers at this run's shapes (bench/test_conv.py's shrink on a CPU).


def torch_dtype(name):
    import torch
    return {"fp32": torch.float32, "tf32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[name]


def lrn_pool_dtypes(names) -> list[str]:
    """LRN and max-pool have no TF32 mode: tf32 is their fp32."""
    return list(dict.fromkeys("fp32" if name == "tf32" else name for name in names))


def conv_problem(layer, dtype_name, plan, device, seed=0):
    """x, w, b, (stride, padding, groups): x ~ N(0, 1), w ~ N(0, 1/fan_in), b ~ N(0, 0.5^2); conv1's x NCHW (the
    images), the others channels_last (as the model runs them)."""
    import torch

    convs, _ = alexnet_tables()
    (C, H, W), (K, CG, R, S), stride, padding, groups = convs[layer]
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


def lrn_pool_input(layer, dtype_name, layout, plan, device, seed=2):
    """relu(N(0, 1)) at the layer's input shape, in `layout` ("channels_last" or "nchw")."""
    import torch

    _, shapes = alexnet_tables()
    c, h, w = shapes[layer]
    side = plan["shrink"][1] if plan["shrink"] else max(h, w)
    x = torch.randn(plan["batch"], c, min(h, side), min(w, side), generator=torch.Generator().manual_seed(seed))
    memory_format = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    return x.relu().to(device, torch_dtype(dtype_name)).contiguous(memory_format=memory_format)


@contextmanager
def precision(dtype_name):
    """fp32 exact or TF32, for our kernels and cuDNN alike (ours follow cuDNN's convolution flag); 16-bit dtypes
    leave both as set."""
    import torch

    tf32 = dtype_name != "fp32"
    with torch.backends.cudnn.flags(enabled=True, benchmark=True, deterministic=False, allow_tf32=tf32):
        yield


# ----------------------------------------------------------------------------------------------------------
# Errors: a row's or a stage's error is recorded and the run goes on, unless the CUDA context is lost.


class Skip(Exception):
    """A stage that does not apply to this run (its reason is recorded)."""


class TimeLimit(BaseException):
    """--time-limit reached (raised by SIGALRM in whatever the stage was doing)."""


class Interrupted(BaseException):
    """SIGTERM: `timeout` or the machine's owner asks the run to end."""


class ContextLost(Exception):
    """An error after which the CUDA context is unusable: every later CUDA call would fail too."""


def error_text(error: BaseException) -> str:
    """The error's type and message, its tail kept (a Triton compile error ends with what went wrong)."""
    return f"{type(error).__name__}: {error}"[-ERROR_TAIL:]


def cuda_usable(device) -> bool:
    """Whether the device still runs work: after an illegal address or a device-side assert it does not."""
    if device.type != "cuda":
        return True
    import torch
    try:
        torch.cuda.synchronize(device)
        return torch.ones(1, device=device).add(1).item() == 2.0
    except Exception:
        return False


def recorded(error: Exception, device) -> str:
    """error_text(error) for a row, or ContextLost raised if the error left the device unusable."""
    if not cuda_usable(device):
        raise ContextLost(error_text(error)) from error
    return error_text(error)


# ----------------------------------------------------------------------------------------------------------
# train-check and tiles: the conv kernels with the autotuner's tile or every usable tile, LRN and max-pool.


class ForcedTile:
    """Stands in for an autotuned conv kernel in kernels.conv_relu.launch (`fwd_kernel`...) so that the launchers'
    own path (space-to-depth, ReLU mask, split-K) runs with tile number `index` of usable_tiles, launched as
    `kernel.fn[grid](**args, **tile_meta(tile))`; `tiles` lists what the launch could have used (known before
    the launch, so a tile that fails still tells how many there are)."""

    def __init__(self, autotuned, kernel: str, index: int):
        self.autotuned, self.kernel, self.index = autotuned, kernel, index
        self.tiles, self.used = [], None

    def __getitem__(self, grid):
        from kernels.conv_relu import tiles

        def launch(*args, **meta):
            named = {**dict(zip(self.autotuned.fn.arg_names, args)), **meta}
            self.tiles = tiles.usable_tiles(self.kernel, *tiles.gemm_sides(self.kernel, named))
            self.used = self.tiles[self.index]
            return self.autotuned.fn[grid](*args, **meta, **tiles.tile_meta(self.used))
        return launch


@contextmanager
def forced_tile(kernel: str, index: int):
    from kernels.conv_relu import launch

    name = f"{kernel}_kernel"
    autotuned = getattr(launch, name)
    shim = ForcedTile(autotuned, kernel, index)
    setattr(launch, name, shim)
    try:
        yield shim
    finally:
        setattr(launch, name, autotuned)


def tile_label(tile: tuple) -> str:
    """A TILES entry as bench.common.tile_name writes an autotuner's choice."""
    return "{}x{}x{} w{} s{}".format(*tile)


def max_error(got, want) -> float:
    """max |got - want| / max |want| (the atol scale of the tolerances)."""
    return ((got.double() - want).abs().max() / want.abs().max().clamp_min(1e-30)).item()


def within(got, want, tolerance) -> bool:
    atol, rtol = tolerance
    return bool(((got.double() - want).abs() <= atol * want.abs().max() + rtol * want.abs()).all())


def check_convs(plan, device, layers, dtypes, every_tile: bool) -> list[dict]:
    """One row per (layer, dtype, pass, tile): our error, cuDNN's at the same dtype, pass/fail or the exception."""
    rows = []
    for layer in layers:
        for dt in dtypes:
            try:
                rows += check_conv(plan, device, layer, dt, every_tile)
            except ContextLost:
                raise
            except Exception as error:  # the references themselves failed: recorded, and the report goes on
                rows.append(dict(kernel="(references)", layer=layer, dtype=dt, tile="-", ok=False,
                                 exception=recorded(error, device)))
    return rows


def check_conv(plan, device, layer, dt, every_tile: bool) -> list[dict]:
    """check_convs' rows of one layer in one dtype: float64 references, cuDNN at the dtype, ours with the autotuner's
    tile or with each usable tile forced."""
    import torch
    import torch.nn.functional as F

    from bench.common import tile_name
    from kernels import conv_relu
    from kernels.conv_relu import kernels as conv_kernels

    rows = []
    with precision(dt):
        x, w, b, (stride, padding, groups) = conv_problem(layer, dt, plan, device)
        geometry = (stride, padding, groups)
        cudnn_y = F.relu(F.conv2d(x, w, b, stride, padding, 1, groups))
        try:  # our forward's output is the ReLU mask of the gradients' references, as it is of our backward
            y = conv_relu.conv2d_relu_fwd(x, w, b, *geometry)
        except ContextLost:
            raise
        except Exception as error:  # the fwd rows below record it; the gradients are checked on cuDNN's mask
            recorded(error, device)
            y = cudnn_y
        dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(1)).to(device, y.dtype)
        g = dy.double() * (y > 0)
        want = dict(
            fwd=F.relu(F.conv2d(x.double(), w.double(), b.double(), stride, padding, 1, groups)),
            dgrad=torch.nn.grad.conv2d_input(x.shape, w.double(), g, stride, padding, 1, groups),
            wgrad=torch.nn.grad.conv2d_weight(x.double(), w.shape, g, stride, padding, 1, groups))
        gc = g.to(x.dtype)
        w_read = w.contiguous(memory_format=torch.channels_last)  # the forward's copy, which dgrad reads in a step
        cudnn_bwd = lambda mask: torch.ops.aten.convolution_backward(  # noqa: E731
            gc, x, w, [w.shape[0]], [stride] * 2, [padding] * 2, [1, 1], False, [0, 0], groups, mask)
        cudnn = dict(fwd=cudnn_y, dgrad=cudnn_bwd([True, False, False])[0], wgrad=cudnn_bwd([False, True, False])[1])
        ours = dict(fwd=lambda: conv_relu.conv2d_relu_fwd(x, w, b, *geometry),
                    dgrad=lambda: conv_relu.conv2d_relu_dgrad(dy, y, w_read, x.shape, *geometry),
                    wgrad=lambda: conv_relu.conv2d_relu_wgrad(dy, y, x, w.shape, *geometry)[0])
        for kernel in CONV_PASSES:
            index, count = 0, 1
            while index < count:
                row = dict(kernel=kernel, layer=layer, dtype=dt, shape=list(x.shape), weight=list(w.shape),
                           tolerance=CONV_TOLERANCES[dt], cudnn_error=max_error(cudnn[kernel], want[kernel]))
                shim = None
                try:
                    with forced_tile(kernel, index) if every_tile else contextlib.nullcontext() as shim:
                        got = ours[kernel]()
                    tile = (tile_label(shim.used) if shim else
                            tile_name(getattr(conv_kernels, f"{kernel}_kernel").best_config))
                    row.update(tile=tile, error=max_error(got, want[kernel]),
                               ok=within(got, want[kernel], CONV_TOLERANCES[dt]))
                except Exception as error:  # recorded, and the report goes on
                    row.update(tile=f"#{index}" if every_tile else "autotuned", ok=False,
                               exception=recorded(error, device))
                if shim is not None:
                    count = len(shim.tiles) or count
                rows.append(row)
                index += 1
    return rows


def check_lrn_pool(plan, device, dtypes) -> list[dict]:
    """The Triton LRN and max-pool, forward and backward (through autograd), in each layout, against float64
    references."""
    import torch
    import torch.nn.functional as F

    import kernels
    from tests.reference import lrn_grad_float64, lrn_paper_float64

    ops = kernels.backend("triton")
    rows = []
    for layer in plan["lrn_pool"]:
        for dt in lrn_pool_dtypes(dtypes):
            for layout in LAYOUTS:
                generator = torch.Generator().manual_seed(3)
                try:
                    x = lrn_pool_input(layer, dt, layout, plan, device).requires_grad_()
                    if layer.startswith("lrn"):
                        y = ops.lrn(x, **LRN)
                        dy = torch.randn(y.shape, generator=generator).to(device, y.dtype)
                        want_y = lrn_paper_float64(x.detach(), **LRN)
                        want_dx = lrn_grad_float64(x, dy, **LRN)
                    else:
                        y = ops.max_pool2d(x, 3, 2)
                        dy = torch.randn(y.shape, generator=generator).to(device, y.dtype)
                        xd = x.detach().double().requires_grad_()
                        want_y = F.max_pool2d(xd, 3, 2)
                        (want_dx,) = torch.autograd.grad(want_y, xd, dy.double())
                    (dx,) = torch.autograd.grad(y, x, dy)
                    for kernel, got, want in (("fwd", y, want_y), ("bwd", dx, want_dx)):
                        rows.append(dict(kernel=f"{layer[:-1]} {kernel}", layer=layer, dtype=dt, layout=layout,
                                         shape=list(x.shape), tile="-", tolerance=LRN_POOL_TOLERANCES[dt],
                                         error=max_error(got, want), ok=within(got, want.detach(),
                                                                               LRN_POOL_TOLERANCES[dt])))
                except Exception as error:
                    rows.append(dict(kernel=layer[:-1], layer=layer, dtype=dt, layout=layout, tile="-", ok=False,
                                     exception=recorded(error, device)))
    return rows


def conv_layers(run) -> list[str]:
    convs, _ = alexnet_tables()
    return run.plan["convs"] or list(convs)


def train_check(run) -> list[dict]:
    """The training path's dtypes: each conv pass with the autotuner's tile, then LRN and max-pool."""
    plan = run.plan
    return (check_convs(plan, run.device, conv_layers(run), plan["train_dtypes"], every_tile=False)
            + check_lrn_pool(plan, run.device, plan["train_dtypes"]))


def check_every_tile(run) -> list[dict]:
    return check_convs(run.plan, run.device, conv_layers(run), run.plan["tile_dtypes"], every_tile=True)


# ----------------------------------------------------------------------------------------------------------
# step, agreement: the training step per backend (bench/test_train_step.py's make_step).


def synchronize(device):
    import torch
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak_memory(device):
    import torch
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_mb(device) -> float | None:
    """max_memory_allocated since the last reset_peak_memory, in MB (None on a CPU)."""
    import torch
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def time_train_steps(run) -> list[dict]:
    from bench.common import time_ms
    from bench.test_train_step import make_step

    from alexnet.step import WARMUP_STEPS

    plan, device = run.plan, run.device
    rows = []
    for amp, backend, graph in itertools.product(plan["step_amps"], plan["step_backends"], (False, True)):
        if backend == "compile" and amp not in plan["compile_amps"]:
            continue
        if graph and (device.type != "cuda" or amp != "bf16" or backend == "compile"):
            continue  # as the trainer runs it on a GPU: timed for the bf16 step of triton and torch
        row = dict(backend=backend, amp=amp, batch=plan["step_batch"], cuda_graph=graph)
        reset_peak_memory(device)
        try:
            step = make_step(backend, amp, device, plan["step_batch"], graph=graph)
            start = time.perf_counter()
            step()  # compiles and autotunes: timed apart
            synchronize(device)
            row["first_step_s"] = time.perf_counter() - start
            for _ in range(WARMUP_STEPS if graph else 0):  # the rest of the warm-up, then the capture
                step()
            row.update(time_ms(step, device, plan["rounds"], graph=False))
            row["img_per_s"] = plan["step_batch"] / row["ms"] * 1e3
            row["max_memory_allocated_mb"] = peak_memory_mb(device)
        except Exception as error:
            row["exception"] = recorded(error, device)
        rows.append(row)
    return rows


def loss_agreement(run) -> list[dict]:
    """Triton's and torch's losses over the same few steps (same initial weights, same images), and Triton's again
    with the step replayed from a CUDA graph (as the trainer runs it: bit for bit the eager losses): one row a step.
    Then each conv layer's weight gradient computed twice from the same inputs: bit-identical (no atomics)."""
    from bench.test_train_step import make_step

    plan, device = run.plan, run.device
    if not plan["agreement"]:
        raise Skip("no GPU: an interpreted Triton training step takes minutes per image")
    rows = []
    for amp in plan["agreement"]["amps"]:
        losses, errors = {}, {}
        for backend, graph in (("torch", False), ("triton", False), ("triton", True)):
            name = backend + " graph" * graph
            try:
                step = make_step(backend, amp, device, plan["step_batch"], graph=graph)
                losses[name] = [step().item() for _ in range(plan["agreement"]["steps"])]
            except Exception as error:
                errors[name] = recorded(error, device)
        for i in range(plan["agreement"]["steps"]):
            row = dict(amp=amp, step=i + 1, **{f"{b.replace(' ', '_')}_loss": losses[b][i] for b in losses})
            if "torch" in losses and "triton" in losses:
                row["relative_difference"] = abs(losses["triton"][i] - losses["torch"][i]) / abs(losses["torch"][i])
            if "triton" in losses and "triton graph" in losses:
                row["graph_equals_eager"] = losses["triton graph"][i] == losses["triton"][i]
            if errors:
                row["exception"] = "; ".join(f"{b}: {e}" for b, e in errors.items())
            rows.append(row)
    return rows + wgrad_repeats(run)


def wgrad_repeats(run) -> list[dict]:
    """Each conv layer's dW from the same inputs twice, in the training dtypes: equal bit for bit."""
    from kernels.conv_relu.launch import conv2d_relu_fwd, conv2d_relu_wgrad

    plan, device = run.plan, run.device
    rows = []
    for dt, layer in itertools.product(plan["train_dtypes"], conv_layers(run)):
        row = dict(check="wgrad twice", dtype=dt, layer=layer)
        try:
            with precision(dt):
                x, w, b, (stride, padding, groups) = conv_problem(layer, dt, plan, device)
                y = conv2d_relu_fwd(x, w, b, stride, padding, groups)
                dy = torch_randn_like(y)
                first, again = (conv2d_relu_wgrad(dy, y, x, w.shape, stride, padding, groups)[0] for _ in range(2))
            row["bit_identical"] = torch_equal(first, again)
        except Exception as error:
            row["exception"] = recorded(error, device)
        rows.append(row)
    return rows


def torch_randn_like(t):
    import torch
    return torch.randn(t.shape, device=t.device, dtype=t.dtype, generator=torch.Generator(t.device).manual_seed(3))


def torch_equal(a, b) -> bool:
    import torch
    return torch.equal(a, b)


# ----------------------------------------------------------------------------------------------------------
# layers: per-layer times against cuDNN, compile and the floor, with the static estimate beside them.


def aot_estimates(path) -> dict:
    """{(layer, op, dtype): {"h100": s, "h200": s}} from perf.aot's JSON: the best tile's estimate per launch
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


def conv_cases(plan, device, dt, layer, backends) -> list[tuple]:
    """[(case, {backend: fn}, (FLOPs, bytes), autotuned kernel)] of one conv layer's fwd, dgrad and wgrad; case is
    dict(layer, pass_, dtype, layout). Both sides do the same work: the backward passes start from the unmasked
    gradient dy, ours masking it in its ReLU-mask kernel and cuDNN's in threshold_backward (as autograd runs it)."""
    import torch
    import torch.nn.functional as F

    import kernels
    from kernels import conv_relu
    from kernels.conv_relu import kernels as conv_kernels

    x, w, b, geometry = conv_problem(layer, dt, plan, device)
    stride, padding, groups = geometry
    y_cudnn = F.relu(F.conv2d(x, w, b, stride, padding, 1, groups))
    try:
        y = conv_relu.conv2d_relu_fwd(x, w, b, *geometry)
    except Exception as error:  # the triton fwd row records it; our backward passes run on cuDNN's output
        recorded(error, device)
        y = y_cudnn.contiguous(memory_format=torch.channels_last)
    dy = torch.randn_like(y)
    dy_cudnn = dy.contiguous(memory_format=torch.channels_last if y_cudnn.is_contiguous(
        memory_format=torch.channels_last) else torch.contiguous_format)

    def cudnn_backward(mask):
        return torch.ops.aten.convolution_backward(torch.ops.aten.threshold_backward(dy_cudnn, y_cudnn, 0), x, w,
                                                   [w.shape[0]], [stride] * 2, [padding] * 2, [1, 1], False, [0, 0],
                                                   groups, mask)

    cost = cost_model().conv_costs(x.shape, w.shape, stride, padding, x.element_size())
    w_read = w.contiguous(memory_format=torch.channels_last)  # the forward's copy, which dgrad reads in a step
    compiled = kernels.backend("compile").conv2d_relu.__wrapped__ if "compile" in backends else None
    fwd = {"triton": lambda: conv_relu.conv2d_relu_fwd(x, w, b, *geometry),
           "torch": lambda: F.relu(F.conv2d(x, w, b, stride, padding, 1, groups))}
    if compiled:
        fwd["compile"] = lambda: compiled(x, w, b, *geometry)
    dgrad = {"triton": lambda: conv_relu.conv2d_relu_dgrad(dy, y, w_read, x.shape, *geometry),
             "torch": lambda: cudnn_backward([True, False, False])}
    wgrad = {"triton": lambda: conv_relu.conv2d_relu_wgrad(dy, y, x, w.shape, *geometry),
             "torch": lambda: cudnn_backward([False, True, True])}
    case = dict(layer=layer, dtype=dt, layout="nchw" if layer == "conv1" else "channels_last")
    return [(dict(case, pass_="fwd"), fwd, cost["fwd"], conv_kernels.fwd_kernel),
            (dict(case, pass_="dgrad"), dgrad, cost["dgrad"], conv_kernels.dgrad_kernel),
            (dict(case, pass_="wgrad"), wgrad, cost["wgrad"], conv_kernels.wgrad_kernel)]


def lrn_pool_cases(plan, device, dt, layer, layout, backends) -> list[tuple]:
    """conv_cases' list for an LRN or max-pool layer in one layout: fwd, and fwd+bwd through autograd. torch.compile
    only on fwd+bwd channels_last (what training runs): Inductor's graphs cost seconds each."""
    import torch

    import kernels

    x = lrn_pool_input(layer, dt, layout, plan, device).requires_grad_()
    cost = (cost_model().lrn_costs if layer.startswith("lrn") else cost_model().pool_costs)(x.shape, x.element_size())
    ops = {}
    for backend in backends:
        if backend != "compile" or layout == "channels_last":
            ops[backend] = getattr(kernels.backend(backend), "lrn" if layer.startswith("lrn") else "max_pool2d")
    args = LRN if layer.startswith("lrn") else dict(kernel_size=3, stride=2)
    dy = torch.randn_like(ops["torch"](x, **args))
    fwd = {name: (lambda op=op: op(x.detach(), **args)) for name, op in ops.items() if name != "compile"}
    fwd_bwd = {name: (lambda op=op: torch.autograd.grad(op(x, **args), x, dy)) for name, op in ops.items()}
    case = dict(layer=layer, dtype=dt, layout=layout)
    return [(dict(case, pass_="fwd"), fwd, cost["fwd"], None), (dict(case, pass_="fwd+bwd"), fwd_bwd, cost["fwd+bwd"],
                                                                None)]


def time_case(run, case_, fns, flops, nbytes, autotuned) -> list[dict]:
    """time_layers' rows of one case, a row per backend."""
    from bench.common import tile_name, time_ms
    from kernels.interpret import interpreting

    plan, device, gpu_run = run.plan, run.device, run.device.type == "cuda"
    gpu = cost_model().GPUS.get(run.env.get("gpu_key") or "")
    rows = []
    for backend, fn in fns.items():
        row = dict(case_, backend=backend, flops=flops, bytes=nbytes,
                   interpreted=backend == "triton" and interpreting())
        try:
            # interpreted Triton is timed once after its warm-up: not a speed, and the CPU run's slowest part
            row.update(time_ms(fn, device, 1 if row["interpreted"] else plan["rounds"]))
        except Exception as error:
            rows.append(dict(row, exception=recorded(error, device)))
            continue
        row.pop("method")
        if backend == "triton" and autotuned is not None:
            row["tile"] = tile_name(getattr(autotuned, "best_config", None))
        seconds = row["ms"] / 1e3
        row["TFLOPs" if flops else "GBps"] = flops / seconds / 1e12 if flops else nbytes / seconds / 1e9
        if gpu is not None and gpu_run:
            row["floor_ms"] = 1e3 * max(flops / (gpu.tflops[case_["dtype"]] * 1e12), nbytes / gpu.bandwidth)
            row["pct_of_floor"] = 100 * row["floor_ms"] / row["ms"]
        est = run.estimates.get((case_["layer"], case_["pass_"], case_["dtype"]))
        if backend == "triton" and est:
            row["aot_estimate_ms_batch128"] = {gpu_: s * 1e3 for gpu_, s in est.items()}
        rows.append(row)
    cudnn = next((r for r in rows if r["backend"] == "torch" and "ms" in r), None)
    for row in rows:  # 100: as fast as cuDNN; above: faster. Not on a CPU (no cuDNN, interpreted Triton)
        if row["backend"] != "torch" and "ms" in row and cudnn is not None and gpu_run:
            row["pct_of_cudnn"] = 100 * cudnn["ms"] / row["ms"]
            if "graph_ms" in row and "graph_ms" in cudnn:
                row["pct_of_cudnn_graph"] = 100 * cudnn["graph_ms"] / row["graph_ms"]
    return rows


def time_layers(run) -> list[dict]:
    """One row per (dtype, layer, layout, pass, backend): ms (events), graph ms, host ms and host_bound, tile
    chosen, TFLOP/s or GB/s, % of cuDNN (events and graph), % of floor, the static estimate; a layer whose set-up
    fails (its inputs, cuDNN's output) gets one row saying so, and the next layer runs.
    Every time is bench.common.time_ms's: device time on a GPU, wall clock on a CPU."""
    plan, device = run.plan, run.device
    rows = []
    for dt in plan["time_dtypes"]:
        backends = [b for b in plan["backends"] if b != "compile" or dt in plan["compile_dtypes"]]
        setups = [(layer, lambda layer=layer: conv_cases(plan, device, dt, layer, backends))
                  for layer in conv_layers(run)]
        setups += [(layer, lambda layer=layer, layout=layout: lrn_pool_cases(plan, device, lrn_pool_dtypes([dt])[0],
                                                                             layer, layout, backends))
                   for layer in plan["lrn_pool"] for layout in LAYOUTS]
        with precision(dt):
            for layer, setup in setups:
                try:
                    cases = setup()
                except Exception as error:
                    rows.append(dict(layer=layer, dtype=dt, pass_="(set-up)", exception=recorded(error, device)))
                    continue
                for case_, fns, (flops, nbytes), autotuned in cases:
                    rows += time_case(run, case_, fns, flops, nbytes, autotuned)
    return rows


# ----------------------------------------------------------------------------------------------------------
# profile, gpu-tests: what a trace and the GPU-side tests say.


def profile_steps(run) -> list[dict]:
    """Per backend, `steps` profiled steps after two warm-up steps: wall ms per step, device busy ms per step (the
    sum of its kernels), idle %, kernel launches per step and the top kernels by device time (on a CPU: the ops by
    self CPU time)."""
    from torch.profiler import ProfilerActivity, profile

    from bench.test_train_step import make_step

    plan, device = run.plan, run.device
    p = plan["profile"]
    gpu = device.type == "cuda"
    rows = []
    for backend in p["backends"]:
        row = dict(backend=backend, amp=p["amp"], batch=plan["step_batch"], steps=p["steps"])
        try:
            step = make_step(backend, p["amp"], device, plan["step_batch"])
            step(), step()
            synchronize(device)
            with profile(activities=[ProfilerActivity.CPU] + [ProfilerActivity.CUDA] * gpu) as prof:
                start = time.perf_counter()
                for _ in range(p["steps"]):
                    step()
                synchronize(device)
                wall = time.perf_counter() - start
            row["wall_ms_per_step"] = wall * 1e3 / p["steps"]
            totals = {}
            if gpu:
                kernels = [e for e in prof.events() if e.device_type.name == "CUDA"]
                for e in kernels:
                    totals[e.name] = totals.get(e.name, 0.0) + e.time_range.elapsed_us()
                busy = sum(totals.values()) / 1e3 / p["steps"]
                row.update(device_busy_ms_per_step=busy, device_idle_pct=100 * (1 - busy / row["wall_ms_per_step"]),
                           launches_per_step=len(kernels) / p["steps"])
            else:
                totals = {e.key: e.self_cpu_time_total for e in prof.key_averages()}
            top = sorted(totals.items(), key=lambda item: -item[1])[:10]
            row["top"] = "; ".join(f"{name[:60]} {us / 1e3 / p['steps']:.3g} ms" for name, us in top)
        except Exception as error:
            row["exception"] = recorded(error, device)
        rows.append(row)
    return rows


TEST_LINE = re.compile(r"^(\S+::\S+)\s+(PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)")


def gpu_tests(run) -> list[dict]:
    """GPU_TESTS in one pytest (not the slow ones) under plan["tests_timeout"]: one row per test with its outcome,
    and a last row with pytest's summary line (or the time-out)."""
    if not run.plan["tests_timeout"]:
        raise Skip("no GPU: these tests run on the CPU in a plain pytest")
    root = Path(__file__).resolve().parents[1]
    command = [sys.executable, "-m", "pytest", *GPU_TESTS, "-v", "-p", "no:cacheprovider", "-m", "not slow"]
    start = time.perf_counter()
    try:
        done = subprocess.run(command, cwd=root, capture_output=True, text=True, timeout=run.plan["tests_timeout"])
        output, summary = done.stdout + done.stderr, dict(exit=done.returncode)
    except subprocess.TimeoutExpired as expired:  # what ran before the cap still says which tests passed
        output = (expired.stdout or b"").decode() if isinstance(expired.stdout, bytes) else expired.stdout or ""
        summary = dict(exit=f"timed out after {run.plan['tests_timeout']} s")
    rows = [dict(test=m.group(1), outcome=m.group(2)) for m in map(TEST_LINE.match, output.splitlines()) if m]
    failed = [line for line in output.splitlines() if line.startswith(("FAILED", "ERROR"))]
    last = output.strip().splitlines()[-1] if output.strip() else ""
    return rows + [dict(test="(pytest)", outcome=f"{summary['exit']}: {last}", seconds=time.perf_counter() - start,
                        **({"exception": "\n".join(failed)[-ERROR_TAIL:]} if failed else {}))]


# ----------------------------------------------------------------------------------------------------------
# dali-step, data: the loaders (bench/test_data_pipeline.py's code paths), alone and feeding the step.


def embedded_plan(run):
    """The train plan of the embedded dataset in the run's scratch folder (written once)."""
    from bench.test_data_pipeline import make_plan as data_plan

    if run.data_plan is None:
        p = run.plan["data"]
        run.data_plan = data_plan(run.scratch / "data", p["per_class"], p["repeat"], p["batch"])
    return run.data_plan


def dali_step(run) -> list[dict]:
    """The training step fed by DALI on this device: img/s after the first batch (which builds the pipeline and
    compiles), the images going straight from the loader into the step, run as the trainer runs it: on a GPU
    captured as a CUDA graph after its warm-up steps while the loader's own thread keeps the pipeline going."""
    from bench.common import usable_cpus
    from bench.test_data_pipeline import first_batch
    from bench.test_train_step import images_dtype, make_step

    plan, device = run.plan, run.device
    batches_plan, p = embedded_plan(run), plan["dali_step"]
    rows = []
    for backend in p["backends"]:
        row = dict(backend=backend, amp=p["amp"], batch=plan["data"]["batch"], loader="dali", decoder=device.type,
                   workers=usable_cpus(), graph=device.type == "cuda")
        try:
            step = make_step(backend, p["amp"], device, plan["data"]["batch"], graph=row["graph"])
            batches, row["startup_s"] = first_batch(batches_plan, "dali", device.type, usable_cpus(),
                                                    plan["data"]["batch"], images_dtype(p["amp"]))
            step()
            synchronize(device)
            start, images = time.perf_counter(), 0
            for x, labels in batches:
                step(x, labels)
                images += len(labels)
            synchronize(device)
            row.update(images=images, seconds=time.perf_counter() - start)
            row["img_per_s"] = images / row["seconds"] if images else None
        except Exception as error:
            row["exception"] = recorded(error, device)
        rows.append(row)
    return rows


def time_data_pipeline(run) -> list[dict]:
    """The loaders alone on the same images at ImageNet's typical 500x375 ("original") and prepared by data.prepare
    (256x256, "prepared": decoded at the crop, no resize): DALI on the CPU, PIL on the originals, and DALI's GPU
    decoder ("mixed") on both on a GPU. img/s after the first batch, the training thread's CPU ms per batch, and
    on a prepared row its img/s over the original's on the same decoder."""
    from bench.common import usable_cpus
    from bench.test_data_pipeline import first_batch, make_plans, the_rest

    p = run.plan["data"]
    plans = make_plans(run.scratch / "original-prepared", p["per_class"] // 2, p["repeat"], p["batch"])
    cases = [("dali", "cpu", "original"), ("dali", "cpu", "prepared"), ("pil", "cpu", "original")]
    if run.device.type == "cuda":
        cases += [("dali", "cuda", "original"), ("dali", "cuda", "prepared")]
    rows, rates = [], {}
    for loader, where, dataset in cases:
        images = len(plans[dataset]) - p["batch"]  # the first batch pays for start-up: timed apart
        row = dict(loader=loader, device=where, dataset=dataset, workers=usable_cpus(), batch=p["batch"],
                   images=images)
        try:
            batches, row["startup_s"] = first_batch(plans[dataset], loader, where, usable_cpus(), p["batch"])
            start = time.perf_counter()
            _, thread_seconds = the_rest(batches, where)
            row["seconds"] = time.perf_counter() - start
            row["img_per_s"] = images / row["seconds"]
            row["train_thread_ms"] = 1e3 * thread_seconds
            rates[loader, where, dataset] = row["img_per_s"]
            if dataset == "prepared" and (loader, where, "original") in rates:
                row["vs_original"] = row["img_per_s"] / rates[loader, where, "original"]
        except Exception as error:
            row["exception"] = recorded(error, run.device)
        rows.append(row)
    return rows


# ----------------------------------------------------------------------------------------------------------
# jit, clocks: what was compiled, and the clocks after the load.


def listen_to_triton(run):
    """Record every Triton build (seconds, cache hit) and autotuning (seconds, configs timed) of this run."""
    from triton import knobs

    def build(*, src, metadata, metadata_group, times, cache_hit):
        run.builds.append(dict(kernel=getattr(src, "name", str(src)), cache_hit=cache_hit, seconds=times.total / 1e6,
                               num_warps=metadata.get("num_warps"), num_stages=metadata.get("num_stages"),
                               shared=metadata.get("shared")))

    def autotuning(*, fn, key, best_config, configs_timings, duration, cache_hit):
        run.tunings.append(dict(kernel=getattr(fn, "__name__", str(fn)), key=str(key), best=str(best_config),
                                configs=len(configs_timings or {}), seconds=duration, cache_hit=cache_hit))

    knobs.compilation.listener = build
    knobs.autotuning.listener = autotuning


def compiled_kernels() -> list[dict]:
    """Registers, spills, shared memory, warps and stages of every kernel the JIT compiled in this process (Triton's
    in-memory caches of kernels.conv_relu, local_response_norm and maxpool)."""
    from triton.runtime.autotuner import Autotuner
    from triton.runtime.jit import JITFunction

    from kernels import conv_relu, local_response_norm, maxpool

    rows = []
    for module in (conv_relu, local_response_norm, maxpool):
        for name, obj in vars(module).items():
            fn = obj.fn if isinstance(obj, Autotuner) else obj
            if not isinstance(fn, JITFunction):
                continue
            for cache in fn.device_caches.values():
                for compiled in cache[0].values():
                    meta = compiled.metadata
                    rows.append(dict(kernel=name, registers=getattr(compiled, "n_regs", None),
                                     spills=getattr(compiled, "n_spills", None), shared=getattr(meta, "shared", None),
                                     num_warps=getattr(meta, "num_warps", None),
                                     num_stages=getattr(meta, "num_stages", None)))
    return rows


def jit_summary(run) -> dict:
    """{"triton builds", "autotuning", "compiled kernels", "torch.compile"} rows."""
    from torch._dynamo.utils import counters

    dynamo = [dict(group=group, counter=str(key), count=count) for group, counter in counters.items()
              for key, count in counter.items()]
    return {"triton builds": run.builds, "autotuning": run.tunings, "compiled kernels": compiled_kernels(),
            "torch.compile": dynamo}


def clocks(run) -> list[dict]:
    if run.device.type != "cuda":
        raise Skip("no GPU")
    fields = ["clocks.sm", "clocks.max.sm", "clocks.mem", "power.draw", "power.limit", "temperature.gpu",
              "clocks_throttle_reasons.active"]
    return [nvidia_smi(run.device, fields)]


@dataclass(frozen=True)
class Stage:
    name: str
    run: Callable
    gpu_seconds: int  # estimated on one H100/H200, compiling included (docs/performance.md's table)


STAGES = [Stage("train-check", train_check, 90), Stage("step", time_train_steps, 62),
          Stage("agreement", loss_agreement, 6), Stage("layers", time_layers, 95), Stage("tiles", check_every_tile, 15),
          Stage("profile", profile_steps, 10), Stage("gpu-tests", gpu_tests, 45), Stage("dali-step", dali_step, 15),
          Stage("data", time_data_pipeline, 20), Stage("jit", jit_summary, 1), Stage("clocks", clocks, 1)]


@dataclass
class Run:
    """What the stages share: the plan, the device, the environment, the scratch folder and what Triton built."""
    plan: dict
    device: object
    env: dict
    scratch: Path
    estimates: dict = field(default_factory=dict)
    builds: list = field(default_factory=list)
    tunings: list = field(default_factory=list)
    data_plan: object = None


# ----------------------------------------------------------------------------------------------------------
# Writing it down: report.json and report.md after every stage (each replaced whole), report.png after layers.


def write_atomically(path: Path, text: str):
    """A reader (or a kill) sees the old file or the new one, never half of one."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


def _cell(key, value) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, tuple):  # a tolerance
        return "(" + ", ".join(map(str, value)) + ")"
    if isinstance(value, list):  # a shape
        return "x".join(map(str, value))
    if isinstance(value, dict):
        return "/".join(_cell(k, v) for k, v in value.items())
    text = str(value)
    if key == "exception":  # the last line says what went wrong; report.json has the tail
        text = text.strip().splitlines()[-1][-200:] if text.strip() else text
    return text.replace("|", "\\|").replace("\n", " ")


HIDDEN_COLUMNS = {"flops", "bytes", "method", "graph_error"}
MAX_TABLE_ROWS = 80


def md_table(rows: list[dict]) -> list[str]:
    """A markdown table of `rows`, columns in first-seen order; failures first past MAX_TABLE_ROWS."""
    if not rows:
        return ["(no rows)"]
    shown = rows if len(rows) <= MAX_TABLE_ROWS else sorted(rows, key=lambda r: "exception" not in r and
                                                            r.get("ok", True))[:MAX_TABLE_ROWS]
    columns = [c for c in dict.fromkeys(k for r in shown for k in r) if c not in HIDDEN_COLUMNS]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(c, r.get(c)) for c in columns) + " |" for r in shown]
    if len(rows) > len(shown):
        lines.append(f"\n{len(rows) - len(shown)} more rows in report.json.")
    return lines


SECTION_NOTES = {
    "train-check": "error: max |ours - float64 reference| / max |reference|; cuDNN's at the same dtype beside it; "
                   "tolerance (atol x max|ref|, rtol).",
    "layers": "ms: device time (do_bench: CUDA events, L2 flushed, median); graph_ms: the same call replayed from a "
              "CUDA graph (no host time, L2 not flushed); host_ms: time for the call to return; host_bound: host_ms >= "
              "the device time, so the event figure measures the launcher. On a CPU: wall clock, Triton interpreted.",
    "tiles": "Every tile the autotuner may pick at these shapes, forced one at a time through the launchers.",
    "data": "The paper's train transform, batch as shown. original: 500x375 JPEGs; prepared: the same after "
            "data.prepare (256x256). train_thread_ms: the training thread's CPU time per batch (target <= 1); "
            "vs_original: prepared img/s over original's on the same decoder. Compare img_per_s with dali-step's "
            "and step's: the smaller bounds training.",
}


def markdown(report: dict) -> str:
    env = report["environment"]
    lines = [f"# bench.report: {env['device']}, {env['date'][:10]}", ""]
    if not env["gpu"]:
        lines += ["**No GPU was present.** This run proves the command works: shapes shrunk (batch "
                  f"{report['plan']['batch']}), Triton in the CPU interpreter (its times are not speeds), "
                  "no ratio against cuDNN and no floor. None of these figures is a GPU figure.", ""]
    if report.get("stopped"):
        lines += [f"**The run stopped early: {report['stopped']}.**", ""]
    lines += ["| | |", "|---|---|"] + [f"| {k} | {_cell(k, v)} |" for k, v in env.items()] + [""]
    lines += ["## Stages", ""] + md_table([dict(stage=name, **{k: v for k, v in entry.items() if k != "error"})
                                            for name, entry in report["stages"].items()]) + [""]
    for name, entry in report["stages"].items():
        if entry["status"] == "skipped" and name not in report:
            continue
        lines += [f"## {name}", ""] + ([SECTION_NOTES[name], ""] if name in SECTION_NOTES else [])
        if entry.get("error"):
            lines += [f"{entry['status']}:", "", "```", entry["error"].rstrip(), "```", ""]
        result = report.get(name)
        if isinstance(result, dict):
            for part, rows in result.items():
                lines += [f"### {part}", ""] + md_table(rows) + [""]
        elif result is not None:
            lines += md_table(result) + [""]
    lines += [f"Total {report['seconds']:.0f} s."]
    return "\n".join(lines) + "\n"


def plot_layers(report: dict, path: Path):
    """bench.plot's bars: per layer and pass, each backend's time and the floor (the plot dtype's rows, LRN and
    max-pool in the model's layout)."""
    from bench.plot import plot
    from bench.roofline import floors_ms

    rows = [r for r in report["layers"] if "ms" in r and (r["layout"] == "channels_last" or r["layer"] == "conv1")]
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
        floors = {k: v for k, v in floors_ms(cost_model().GPUS["h100"], dt, 128).items() if k in measured}
        caveat = "floor: H100 SXM vendor peaks at batch 128 (no recognised GPU here: not like for like)"
    else:
        caveat = f"floor: {env['peak']} vendor peaks at the measured shapes"
    temporary = path.with_name(f".{path.stem}.tmp{path.suffix}")
    plot(measured, floors, f"bench.report on {env['device']}, {dt}, batch {report['plan']['batch']}\n{caveat}",
         str(temporary))
    os.replace(temporary, path)


def write_report(report: dict, out: Path):
    write_atomically(out / "report.json", json.dumps(report, indent=1, default=str))
    write_atomically(out / "report.md", markdown(report))


# ----------------------------------------------------------------------------------------------------------
# The output folder: checked before any work, never a report written over unless --overwrite.


REPORT_FILES = ("report.json", "report.md", "report.png")


def output_problem(out: Path, overwrite: bool) -> str | None:
    """None if `out` can take this run's report, else one line saying why not."""
    existing = next((p for p in [out, *out.parents] if p.exists()), None)
    if existing is not None and not existing.is_dir():
        return (f"--output-dir {out} is a file" if existing == out else
                f"--output-dir {out} is under {existing}, which is a file")
    if existing == out and any((out / name).exists() for name in REPORT_FILES) and not overwrite:
        return f"--output-dir {out} already holds a report: pass --overwrite to replace it, or choose another folder"
    if existing is not None and not os.access(existing, os.W_OK | os.X_OK):
        return f"--output-dir {out}: cannot write in {existing} (permission denied)"
    return None


def default_output_dir(env) -> Path:
    """A folder no report has used: docs/gpu-reports/<date>-<time>-<device>/ or report-cpu/<date>-<time>/, -2, -3...
    appended when taken."""
    stamp = env["date"][:16].replace(":", "").replace("T", "-")  # 2026-12-03-0138
    if env["gpu"]:
        slug = re.sub(r"[^A-Za-z0-9]+", "-", env["device"].removeprefix("NVIDIA ")).strip("-").lower()
        base = Path("docs/gpu-reports") / f"{stamp}-{slug}"
    else:
        base = Path("report-cpu") / stamp
    candidate, n = base, 1
    while candidate.exists():
        n += 1
        candidate = base.with_name(f"{base.name}-{n}")
    return candidate


def fail(message: str) -> int:
    print(f"bench.report: {message}", file=sys.stderr)
    return 2


# ----------------------------------------------------------------------------------------------------------
# The run: every stage in order, the report written after each.


@contextmanager
def stoppable():
    """While the stages run: SIGALRM (set by alarm()) raises TimeLimit, SIGTERM raises Interrupted, in whatever code
    runs then."""
    def on_alarm(signum, frame):
        raise TimeLimit()

    main = os.getpid()

    def on_term(signum, frame):
        if os.getpid() != main:  # a worker a stage forked (data.prepare's pool) inherits this: end as SIGTERM would
            os._exit(128 + signum)
        raise Interrupted()

    previous = signal.signal(signal.SIGALRM, on_alarm), signal.signal(signal.SIGTERM, on_term)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous[0])
        signal.signal(signal.SIGTERM, previous[1])


@contextmanager
def alarm(seconds: float | None):
    """TimeLimit after `seconds` (None: never) unless the block ends first."""
    if seconds is not None:
        signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.001))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)


def run_stages(run: Run, names: list[str], report: dict, out: Path, time_limit: float | None, start: float) -> bool:
    """Run the named stages in STAGES' order, writing the report before (stage "running") and after each, stopping
    the one running `time_limit` seconds after `start` (time.perf_counter()); True if every one ran to its end (ok,
    or skipped as not applying)."""
    stages = report["stages"]
    for stage in STAGES:
        if stage.name not in names:
            continue
        if report.get("stopped"):
            stages[stage.name] = dict(status="skipped", reason=report["stopped"])
            continue
        entry = stages[stage.name] = dict(status="running")
        report["seconds"] = time.perf_counter() - start
        write_report(report, out)
        began = time.perf_counter()
        try:
            print(f"[bench.report] {stage.name} ... (estimated ~{stage.gpu_seconds} s on an H100/H200)", flush=True)
            reset_peak_memory(run.device)
            with alarm(None if time_limit is None else time_limit - (began - start)):
                report[stage.name] = stage.run(run)
            entry["status"] = "ok"
        except Skip as reason:
            entry.update(status="skipped", reason=str(reason))
        except TimeLimit:
            entry.update(status="timeout", error=traceback.format_exc()[-ERROR_TAIL:])
            report["stopped"] = f"--time-limit {time_limit:g} s reached in {stage.name}"
        except Interrupted:
            entry.update(status="interrupted", error=traceback.format_exc()[-ERROR_TAIL:])
            report["stopped"] = f"SIGTERM in {stage.name}"
        except Exception as error:
            entry.update(status="failed", error=traceback.format_exc()[-ERROR_TAIL:])
            if isinstance(error, ContextLost) or not cuda_usable(run.device):
                report["stopped"] = f"the CUDA context is unusable after {stage.name}'s error"
        entry.update(seconds=time.perf_counter() - began, peak_memory_mb=peak_memory_mb(run.device))
        report["seconds"] = time.perf_counter() - start
        write_report(report, out)
        if stage.name == "layers" and report.get("layers"):
            with contextlib.suppress(Exception):  # a picture is a convenience: the tables hold the figures
                plot_layers(report, out / "report.png")
        print(f"[bench.report] {stage.name}: {entry['status']}, {entry['seconds']:.1f} s"
              + (f" ({(entry.get('reason') or entry['error'].strip().splitlines()[-1])[-200:]})"
                 if entry["status"] not in ("ok",) else ""), flush=True)
    write_report(report, out)  # the stages skipped after a stop
    return all(entry["status"] in ("ok", "skipped") for entry in stages.values()) and not report.get("stopped")


def main(argv=None) -> int:
    start = time.perf_counter()
    args = parse_args(argv)
    if args.output_dir and (problem := output_problem(args.output_dir, args.overwrite)):
        return fail(problem)
    if args.aot_json and not args.aot_json.is_file():
        return fail(f"--aot-json {args.aot_json}: no such file")
    if args.require_gpu and (reason := no_gpu_reason()):
        return fail(f"--require-gpu: {reason}")
    from kernels.interpret import prepare  # imports torch; with no GPU, TRITON_INTERPRET=1 before Triton's import
    prepare()
    import torch

    gpu = torch.cuda.is_available()
    device = torch.device("cuda" if gpu else "cpu")
    env = environment(device)
    out = args.output_dir or default_output_dir(env)
    if problem := output_problem(out, args.overwrite):
        return fail(problem)
    aot = args.aot_json or (out / "aot.json")
    try:
        estimates = aot_estimates(aot)
    except (OSError, ValueError, KeyError, TypeError) as error:
        return fail(f"--aot-json {aot}: not perf.aot's JSON ({error_text(error)[:200]})")
    out.mkdir(parents=True, exist_ok=True)
    for name in REPORT_FILES:  # --overwrite: nothing of the old report stays beside the new one
        (out / name).unlink(missing_ok=True)

    torch.manual_seed(0)
    plan = make_plan(gpu, args.quick, args.all_dtypes)
    report = dict(environment=env, plan=plan, stages={}, aot_json=str(aot) if estimates else None,
                  tolerances=dict(conv=CONV_TOLERANCES, lrn_pool=LRN_POOL_TOLERANCES), stopped=None, seconds=0.0)
    with tempfile.TemporaryDirectory() as scratch:  # the pipeline's JPEGs, not left in the output directory
        run = Run(plan=plan, device=device, env=env, scratch=Path(scratch), estimates=estimates)
        if not env["triton_interpreted"]:
            listen_to_triton(run)
        with stoppable():
            try:
                complete = run_stages(run, args.stages, report, out, args.time_limit, start)
            except (TimeLimit, Interrupted) as stop:  # between two stages: the last report written stands
                complete, report["stopped"] = False, f"{type(stop).__name__} between two stages"
    failed = sum(not r["ok"] for name in ("train-check", "tiles") for r in report.get(name) or [])
    print(f"[bench.report] wrote {out}/report.json, report.md{', report.png' if (out / 'report.png').exists() else ''}"
          f" in {report['seconds']:.0f} s; {failed} correctness failure(s)"
          + ("" if complete else f"; not every stage completed{': ' + report['stopped'] if report['stopped'] else ''}"))
    return 0 if complete else 1


if __name__ == "__main__":
    sys.exit(main())
