"""The roofline of AlexNet's training step: for every layer and pass, its FLOPs, the fewest bytes it must move,
and the time neither could be beaten in on a given GPU; with a pytest-benchmark JSON, the measured times too.

    python -m bench.roofline [--gpu h100] [--batch 128] [--dtype {fp32,tf32,bf16,fp16}] [--json BENCH.json]

compute floor = FLOPs / peak FLOP/s, memory floor = bytes / peak bandwidth, floor = the larger (bench.costs
has the formulas and the vendor peaks). The "train step" row is every pass a training step runs (conv1's dgrad
aside: nothing needs the images' gradient), plus the SGD update; its floor is the sum of theirs, as they run
one after another. The usual "3x forward" count (~4.35 GFLOP/img) includes conv1's dgrad; this step does not.

With --json (`pytest bench/ --benchmark-only --benchmark-json BENCH.json`) each benchmark at the chosen dtype
is matched to its row by the `layer` and `pass` in its extra_info, and the table gets, per backend, the median
time and floor / time (1.0 is the roofline). That fraction means something only for a GPU run at the same
batch: a CPU run's shapes are shrunk, so it reads "n/a (CPU)", and interpreted Triton times are marked so.
The file's extra_info also sets the defaults (file_defaults): --dtype, what its benchmarks ran at (bf16 when
it holds bf16, as a GPU run does, else its most common dtype; fp32 as tf32 when its convs record TF32), and
--gpu, the GPU it ran on when bench.costs knows it, else h100 (a CPU run's too), as without --json.
"""

import argparse
import json
import sys
from collections import Counter
from dataclasses import dataclass

from alexnet.layers import CONVS, LINEARS, LRNS, ORDER, POOLS, parameter_count
from bench.costs import ELEMENT_BYTES, GPUS, Gpu, conv_costs, gpu_key, linear_costs, lrn_costs, pool_costs, sgd_costs

LRN_POOL_SHAPES = {**LRNS, **POOLS}  # per image, (C, H, W) of each op's input
TORCH_DTYPES = {"fp32": "float32", "tf32": "float32", "bf16": "bfloat16", "fp16": "float16"}  # as benchmarks record it
FROM_TORCH = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}
DEFAULT_GPU, DEFAULT_DTYPE = "h100", "bf16"
STEP = ("train step", "step")


@dataclass(frozen=True)
class Row:
    layer: str
    pass_: str
    flops: int
    bytes: int

    def compute_ms(self, gpu: Gpu, precision: str) -> float:
        return self.flops / (gpu.tflops[precision] * 1e12) * 1e3

    def memory_ms(self, gpu: Gpu) -> float:
        return self.bytes / gpu.bandwidth * 1e3

    def floor_ms(self, gpu: Gpu, precision: str) -> float:
        return max(self.compute_ms(gpu, precision), self.memory_ms(gpu))


def layer_rows(batch: int, precision: str) -> list[Row]:
    """One row per pass of every layer, in network order."""
    size = ELEMENT_BYTES[precision]
    rows = []
    for layer in ORDER:
        if layer in CONVS:
            x_shape, w_shape, stride, padding, _ = CONVS[layer]
            costs = conv_costs((batch, *x_shape), w_shape, stride, padding, size)
        elif layer in LINEARS:
            costs = linear_costs(batch, *LINEARS[layer], size)
        else:
            shape = (batch, *LRN_POOL_SHAPES[layer])
            costs = (lrn_costs if layer.startswith("lrn") else pool_costs)(shape, size)
        rows += [Row(layer, pass_, flops, nbytes) for pass_, (flops, nbytes) in costs.items()]
    return rows


def step_rows(rows: list[Row]) -> list[Row]:
    """The passes a training step runs: LRN's and pool's fwd+bwd (not their fwd alone again), every conv and
    linear pass but conv1's dgrad (nothing needs the images' gradient), then the SGD update."""
    ran = [row for row in rows if (row.layer, row.pass_) != ("conv1", "dgrad")
           and not (row.layer in LRN_POOL_SHAPES and row.pass_ == "fwd")]
    sgd = [Row("sgd", pass_, flops, nbytes) for pass_, (flops, nbytes) in sgd_costs(parameter_count()).items()]
    return ran + sgd


def read_benchmarks(path: str) -> list[dict]:
    """The benchmarks of a pytest-benchmark JSON; exits naming the file if it is not one."""
    try:
        with open(path) as f:
            return json.load(f)["benchmarks"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        sys.exit(f"{path}: cannot read it as a pytest-benchmark JSON ({type(error).__name__}: {error})")


def layer_benchmarks(path: str, benchmarks: list[dict]) -> list[dict]:
    """The benchmarks with a row here: a layer, pass, backend and dtype in their extra_info; exits if none has."""
    usable = [b for b in benchmarks if {"layer", "pass", "backend", "dtype"} <= b.get("extra_info", {}).keys()
              and b["extra_info"]["dtype"] in FROM_TORCH]
    if not usable:
        sys.exit(f"{path}: none of its {len(benchmarks)} benchmarks records a layer, pass, backend and dtype "
                 "(bench/test_conv.py, test_lrn_pool.py and test_train_step.py do): nothing to set beside the floors")
    return usable


def file_defaults(path: str, benchmarks: list[dict]) -> tuple[str, str]:
    """(dtype, GPUS key) of a benchmark file: bf16 if it holds bf16 rows, else its most common dtype (fp32 as tf32
    when its convs record TF32); the GPU its rows ran on when bench.costs knows it, else DEFAULT_GPU."""
    infos = [b["extra_info"] for b in layer_benchmarks(path, benchmarks)]
    held = Counter(info["dtype"] for info in infos)
    dtype = FROM_TORCH["bfloat16" if "bfloat16" in held else held.most_common(1)[0][0]]
    if dtype == "fp32" and any(info["dtype"] == "float32" and info.get("precision") == "tf32" for info in infos):
        dtype = "tf32"
    gpus = {gpu_key(info.get("device", "cpu")) for info in infos} - {None}
    return dtype, gpus.pop() if len(gpus) == 1 else DEFAULT_GPU


def load_measurements(path: str, dtype: str, benchmarks: list[dict] | None = None) -> dict:
    """{(layer, pass): {backend: benchmark's extra_info plus "ms", its median}} for the benchmarks at `dtype`."""
    benchmarks = layer_benchmarks(path, read_benchmarks(path) if benchmarks is None else benchmarks)
    wanted = TORCH_DTYPES[dtype]
    measured = {}
    for bench in benchmarks:
        info = bench["extra_info"]
        if info["dtype"] == wanted:
            measured.setdefault((info["layer"], info["pass"]), {})[info["backend"]] = {
                **info, "ms": bench["stats"]["median"] * 1e3}
    if not measured:
        found = sorted({FROM_TORCH[b["extra_info"]["dtype"]] for b in benchmarks})
        sys.exit(f"{path}: no benchmark at {dtype} ({wanted}); it holds {', '.join(found)}")
    return measured


def from_file(path: str, dtype: str | None = None, gpu: str | None = None) -> tuple[str, str, dict]:
    """(dtype, GPUS key, load_measurements) of a benchmark file, dtype and gpu defaulting to file_defaults."""
    benchmarks = read_benchmarks(path)
    file_dtype, file_gpu = file_defaults(path, benchmarks)
    dtype, gpu = dtype or file_dtype, gpu or file_gpu
    return dtype, gpu, load_measurements(path, dtype, benchmarks)


def time_cell(m: dict) -> str:
    interpreted = m["backend"] == "triton" and m.get("triton_interpreted")
    return f"{m['ms']:.4g}" + (" interpreted" if interpreted else "")


def fraction_cell(m: dict, floor_ms: float, batch: int) -> str:
    if m["device"] == "cpu":
        return "n/a (CPU)"
    if m.get("batch") != batch:
        return f"n/a (batch {m.get('batch')})"
    return f"{floor_ms / m['ms']:.2f}"


def floors_ms(gpu: Gpu, precision: str, batch: int) -> dict:
    """{(layer, pass): floor in ms} for every row, the train step's (the sum of its passes') included."""
    rows = layer_rows(batch, precision)
    floors = {(row.layer, row.pass_): row.floor_ms(gpu, precision) for row in rows}
    floors[STEP] = sum(row.floor_ms(gpu, precision) for row in step_rows(rows))
    return floors


def table(gpu: Gpu, precision: str, batch: int, measured: dict | None = None) -> list[list[str]]:
    """The report's rows of cells, header first."""
    rows = layer_rows(batch, precision)
    step = step_rows(rows)
    floors = floors_ms(gpu, precision, batch)
    backends = sorted({b for by_backend in (measured or {}).values() for b in by_backend})
    header = ["layer", "pass", "GFLOP", "MB", "compute ms", "memory ms", "floor ms", "bound"]
    header += [cell for b in backends for cell in (f"{b} ms", f"{b} floor/time")]
    cells = [header]
    for row in rows + [Row(*STEP, sum(r.flops for r in step), sum(r.bytes for r in step))]:
        is_step, floor = (row.layer, row.pass_) == STEP, floors[row.layer, row.pass_]
        compute, memory = row.compute_ms(gpu, precision), row.memory_ms(gpu)
        line = [row.layer, row.pass_, f"{row.flops / 1e9:.2f}", f"{row.bytes / 1e6:.1f}", f"{compute:.4f}",
                f"{memory:.4f}", f"{floor:.4f}", "sum" if is_step else "compute" if compute > memory else "memory"]
        for backend in backends:
            m = (measured or {}).get((row.layer, row.pass_), {}).get(backend)
            line += [time_cell(m), fraction_cell(m, floor, batch)] if m else ["", ""]
        cells.append(line)
    return cells


def render(cells: list[list[str]]) -> str:
    widths = [max(len(line[i]) for line in cells) for i in range(len(cells[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in cells)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench.roofline", description=__doc__.split("\n\n")[0])
    parser.add_argument("--gpu", choices=list(GPUS),
                        help=f"the floors' GPU (default: the --json file's, when known, else {DEFAULT_GPU})")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--dtype", choices=list(ELEMENT_BYTES),
                        help=f"default: the --json file's (bf16 among others), else {DEFAULT_DTYPE}")
    parser.add_argument("--json", metavar="BENCH.json", help="a pytest-benchmark JSON to compare with the floors")
    args = parser.parse_args(argv)
    measured = None
    if args.json:
        args.dtype, args.gpu, measured = from_file(args.json, args.dtype, args.gpu)
    dtype, gpu = args.dtype or DEFAULT_DTYPE, GPUS[args.gpu or DEFAULT_GPU]
    print(f"Floors on an {gpu.name}, batch {args.batch}, {dtype}, from vendor peaks "
          f"({gpu.tflops[dtype]:g} TFLOP/s, {gpu.bandwidth / 1e12:g} TB/s): lower bounds, not measurements.")
    if measured:
        devices = sorted({m["device"] for by_backend in measured.values() for m in by_backend.values()})
        print(f"Measured ({args.json}, median ms) on: {', '.join(devices)}")
    print(render(table(gpu, dtype, args.batch, measured)))


if __name__ == "__main__":
    main()
