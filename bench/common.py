"""Helpers every benchmark shares: what it ran on, the HBM floor, and device time on a GPU.

    environment(device, dtype)   -> dict   device name, torch/triton versions, dtype, interpreter flag
    hbm_peak(device)             -> float | None   peak HBM bytes/s of this GPU (None: CPU or not recognised)
    hbm_floors_ms(bytes_moved)   -> dict   {GPU name: floor in ms} for every GPU in HBM_PEAK
    time_ms(fn, device, rounds, graph=True) -> dict   {"ms", "graph_ms", "host_ms", "host_bound", "method"}: device
                                            time on a GPU, with and without the host's part (bench.report's too)
    usable_cpus()                -> int    the CPUs this process may run on (its affinity, not the host's count)
    tile_name(config)            -> str    an autotuner's best_config, short
    measure(benchmark, fn, device, dtype, bytes_moved, flops=None, triton=False, autotuned=None)
        times `fn()` with pytest-benchmark and fills `benchmark.extra_info`: the environment, bytes_moved and, on
        a GPU, device_ms and host_ms (time_ms), GB/s (plus TFLOP/s if `flops` is given), the tile the autotuner
        chose (`autotuned`: the kernel, e.g. kernels.conv_relu.kernels.fwd_kernel) and, on a recognised GPU, the floor
        and floor_fraction.

`bytes_moved` is the fewest bytes the op must read and write (each input once, each output once);
floor = bytes_moved / peak bandwidth, and floor_fraction = floor / device time (1.0 is the roofline).
On a GPU, pytest-benchmark's own statistics are wall-clock around `fn(); torch.cuda.synchronize()` (launch and
sync included); the figures in extra_info come from device time instead: triton.testing.do_bench, CUDA events
around each run with the L2 flushed before it (conv3-5 and pool5 fit in the 50 MB L2, so without the flush
they would beat the HBM floor), and the host time of one call (Python and launch overhead) as its own figure.
"""

import statistics
import time
from importlib.metadata import version

import torch

from bench.costs import GPUS, gpu_key
from data.check import available_cpus as usable_cpus  # noqa: F401  (re-exported: bench.report uses it)
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
    """Peak HBM bandwidth in bytes/s of this GPU (bench.costs.gpu_key: SXM, PCIe, NVL told apart), else None."""
    if device.type != "cuda":
        return None
    key = gpu_key(torch.cuda.get_device_name(device))
    return GPUS[key].bandwidth if key else None


def hbm_floors_ms(bytes_moved: int) -> dict:
    """The bandwidth floor of moving `bytes_moved`, in ms, on each GPU in HBM_PEAK."""
    return {gpu: bytes_moved / peak * 1e3 for gpu, (_, peak) in HBM_PEAK.items()}


def time_ms(fn, device: torch.device, rounds: int | None = None, graph: bool = True) -> dict:
    """{"ms": median time of fn(), "host_ms": median time for fn() to return, "method"; on a GPU also "graph_ms" and
    "host_bound"}.

    GPU: "ms" is device time by triton.testing.do_bench (CUDA events around each run, the L2 flushed before each,
    median of ~100 ms of runs). For a short op the events also enclose the launcher's Python when it takes longer
    than the kernel, so "graph_ms" times the same fn() captured once in a CUDA graph and replayed
    (do_bench_cudagraph: no host time at all, but no L2 flush either); `graph=False` leaves it out (a function that
    cannot be captured, such as an optimizer step). "host_ms" is the time to enqueue fn() on an idle GPU, and
    "host_bound" says host_ms >= the device time (graph_ms where it was measured): the event figure then measures
    the launcher, not the kernel. A capture that fails is recorded as "graph_error".
    CPU: wall-clock median of `rounds` runs (default CPU_ROUNDS) after one warm-up: host and device are one there."""
    if device.type == "cuda":
        import triton.testing

        ms = triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")
        host = []
        for _ in range(10):
            torch.cuda.synchronize(device)
            start = time.perf_counter()
            fn()
            host.append((time.perf_counter() - start) * 1e3)
        torch.cuda.synchronize(device)
        timing = dict(ms=ms, host_ms=statistics.median(host), method="do_bench: CUDA events, L2 flushed, median")
        if graph:
            try:
                timing["graph_ms"] = triton.testing.do_bench_cudagraph(fn, rep=20, return_mode="median")
            except Exception as error:  # not capturable: the event figure stands alone, flagged by host_bound
                timing["graph_error"] = f"{type(error).__name__}: {error}"[-2000:]
        timing["host_bound"] = timing["host_ms"] >= timing.get("graph_ms", ms)
        return timing
    fn()
    times = []
    for _ in range(rounds or CPU_ROUNDS):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return dict(ms=statistics.median(times), host_ms=statistics.median(times), method="wall clock (CPU), median")


def tile_name(config) -> str | None:
    """BLOCK_MxBLOCK_NxBLOCK_K wWARPS sSTAGES of an autotuner's best_config (set by its last launch)."""
    if config is None:
        return None
    k = config.kwargs
    return f"{k['BLOCK_M']}x{k['BLOCK_N']}x{k['BLOCK_K']} w{config.num_warps} s{config.num_stages}"


def measure(benchmark, fn, device: torch.device, dtype: torch.dtype, bytes_moved: int | None,
            flops: int | None = None, triton: bool = False, autotuned=None):
    """Benchmark `fn()` and record device time, bandwidth against the HBM floor and the chosen tile in
    `benchmark.extra_info` (no bandwidth when `bytes_moved` is None: a whole training step has no byte count).

    Pass `triton=True` for a Triton kernel so that a CPU (interpreter) run is labelled as such."""
    info = benchmark.extra_info
    info.update(environment(device, dtype), bytes_moved=bytes_moved)
    if device.type != "cuda":
        if triton and interpreting():
            info["note"] = "Triton CPU interpreter: checks that the benchmark runs; the time is not a speed"
        result = benchmark.pedantic(fn, rounds=CPU_ROUNDS, warmup_rounds=CPU_WARMUP)
        if autotuned is not None:
            info["tile"] = tile_name(getattr(autotuned, "best_config", None))
        return result

    def synchronised():
        fn()
        torch.cuda.synchronize(device)

    result = benchmark.pedantic(synchronised, rounds=GPU_ROUNDS, warmup_rounds=GPU_WARMUP)
    if benchmark.stats is None:  # --benchmark-disable: ran once, timed nothing
        return result
    timing = time_ms(fn, device, graph=bytes_moved is not None)  # a whole step (no byte count) is not graph-captured
    info.update(device_ms=timing["ms"], host_ms=timing["host_ms"], host_bound=timing["host_bound"],
                timing=timing["method"], **({"graph_ms": timing["graph_ms"]} if "graph_ms" in timing else {}))
    if autotuned is not None:
        info["tile"] = tile_name(getattr(autotuned, "best_config", None))
    seconds = timing["ms"] / 1e3
    if flops is not None:
        info["TFLOPs"] = flops / seconds / 1e12
    if bytes_moved is None:
        return result
    info["GBps"] = bytes_moved / seconds / 1e9
    peak = hbm_peak(device)
    if peak is not None:
        info["hbm_floor_ms"] = bytes_moved / peak * 1e3
        info["floor_fraction"] = bytes_moved / peak / seconds
    return result
