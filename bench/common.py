"""Helpers every benchmark shares: what it ran on, the HBM floor, and a timing that waits for the GPU.

    environment(device, dtype)   -> dict   device name, torch/triton versions, dtype, interpreter flag
    hbm_peak(device)             -> float | None   peak HBM bytes/s of this GPU (None: CPU or unknown)
    hbm_floors_ms(bytes_moved)   -> dict   {GPU name: floor in ms} for every GPU in HBM_PEAK
    measure(benchmark, fn, device, dtype, bytes_moved, flops=None, triton=False)
        times `fn()` with pytest-benchmark (synchronising after every call on a GPU, a few short
        rounds on the CPU) and fills `benchmark.extra_info`: the environment, bytes_moved and, on a
        known GPU, the floor, GB/s and floor_fraction (plus TFLOP/s if `flops` is given).

`bytes_moved` is the fewest bytes the op must read and write (each input once, each output once);
floor = bytes_moved / peak bandwidth, and floor_fraction = floor / measured time (1.0 is the roofline).
GPU times are wall-clock around `fn(); torch.cuda.synchronize()`, so they include one launch and one
sync (a few microseconds): honest, and slightly pessimistic for the smallest kernels.
"""

from importlib.metadata import version

import torch

from bench.costs import GPUS
from kernels.interpret import interpreting

# GPU -> (substrings of torch.cuda.get_device_name() that name it, peak HBM bandwidth in bytes/s)
HBM_PEAK = {"H100 SXM": (("H100 80GB HBM3", "H100 SXM"), GPUS["h100"].bandwidth),
            "H200": (("H200",), GPUS["h200"].bandwidth)}

GPU_ROUNDS, GPU_WARMUP = 50, 5
CPU_ROUNDS, CPU_WARMUP = 3, 1  # the CPU run is a smoke test (and interpreted Triton is no speed at all)


def environment(device: torch.device, dtype: torch.dtype) -> dict:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    return {"device": name, "torch": torch.__version__, "triton": version("triton"),
            "dtype": str(dtype).removeprefix("torch."), "triton_interpreted": interpreting()}


def hbm_peak(device: torch.device) -> float | None:
    """Peak HBM bandwidth in bytes/s for the GPUs in HBM_PEAK, else None."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for keys, peak in HBM_PEAK.values() if any(key in name for key in keys)), None)


def hbm_floors_ms(bytes_moved: int) -> dict:
    """The bandwidth floor of moving `bytes_moved`, in ms, on each GPU in HBM_PEAK."""
    return {gpu: bytes_moved / peak * 1e3 for gpu, (_, peak) in HBM_PEAK.items()}


def measure(benchmark, fn, device: torch.device, dtype: torch.dtype, bytes_moved: int | None,
            flops: int | None = None, triton: bool = False):
    """Benchmark `fn()` and record bandwidth against the HBM floor in `benchmark.extra_info`
    (none when `bytes_moved` is None: a whole training step has no single byte count).

    Pass `triton=True` for a Triton kernel so that a CPU (interpreter) run is labelled as such."""
    info = benchmark.extra_info
    info.update(environment(device, dtype), bytes_moved=bytes_moved)
    if device.type != "cuda":
        if triton and interpreting():
            info["note"] = "Triton CPU interpreter: checks that the benchmark runs; the time is not a speed"
        return benchmark.pedantic(fn, rounds=CPU_ROUNDS, warmup_rounds=CPU_WARMUP)

    def synchronised():
        fn()
        torch.cuda.synchronize(device)

    result = benchmark.pedantic(synchronised, rounds=GPU_ROUNDS, warmup_rounds=GPU_WARMUP)
    if benchmark.stats is None:  # --benchmark-disable: ran once, timed nothing
        return result
    seconds = benchmark.stats.stats.median
    if bytes_moved is None:
        return result
    info["GBps"] = bytes_moved / seconds / 1e9
    peak = hbm_peak(device)
    if peak is not None:
        info["hbm_floor_ms"] = bytes_moved / peak * 1e3
        info["floor_fraction"] = bytes_moved / peak / seconds
    if flops is not None:
        info["TFLOPs"] = flops / seconds / 1e12
    return result
