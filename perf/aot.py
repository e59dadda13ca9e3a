"""Compile every Triton kernel config AlexNet uses for sm_80 and sm_90, with no GPU, check it, and estimate it.

    python -m perf.aot                               check: regs, spills, shared memory
    python -m perf.aot --report [--json FILE]        also the SASS facts, R, time estimates, step roll-up
    python -m perf.aot --report --only conv3         only the builds whose kernel or input names hold it

perf.launches yields `(label, kernel, kwargs, work)` for every launch the ops make at AlexNet's shapes
(batch 128): a label for the input (shape, dtype, layout), the @triton.jit function, every argument by
name as the launcher passes it (constexprs, num_warps, the tile), built by the ops' own plan code on
meta-device tensors, and the launch's `work` (perf.work: layer, op, dtype, programs, iterations, macs,
bytes, step). Triton's own binder turns those arguments into the signature, constexprs and
alignment/divisibility attributes the JIT would, so the cubin built here is the one that would run.
Identical builds are made once; the last column lists the inputs that share one.

The check gives registers, spilled bytes (local memory) and shared memory per block (static plus
Triton's dynamic allocation) from the cuobjdump in the Triton wheel. Exit status 1 on any compile
error, any spill, or shared memory beyond the architecture's per-block limit.
The interpreter (TRITON_INTERPRET=1) is switched off here: it has nothing to compile.

--report adds, per build and from its SASS (perf.sass: the main loop, its MMA, its wait, its
loads, R), an ESTIMATE of each launch's time on an H100 SXM and an H200 (sm_90 builds), with this model:

    per program   clocks = (instructions outside the main loop) x warps / 4          (prologue, epilogue)
                         + trips x max(issue clocks, tensor clocks) of one loop iteration  (perf.sass)
                  trips = work["iterations"], scaled by the MACs of the source tile (BLOCK_M*BLOCK_N*BLOCK_K)
                  over those of one SASS iteration where the compiler unrolled the loop; a kernel with no
                  loop runs its whole body once. Branches are not followed: every instruction counts once.
    occupancy     resident blocks per SM = min(65536 regs / (regs per warp, allocated by 256, x warps),
                  shared memory per SM (228 KiB sm_90, 164 KiB sm_80) / (block's + 1 KiB reserved),
                  64 warps / warps, 32). Resident blocks hide each other's latency but share the SM's
                  issue slots and tensor cores: they add no throughput.
    waves         ceil(programs / (SMs x occupancy)), shown; compute time = ceil(programs / SMs) x clocks
                  per program / clock (the busiest SM's share, the blocks on it taking turns).
    memory time   work["bytes"] (the fewest HBM bytes) / HBM bandwidth: L2 (50 MB) reuse is assumed
                  perfect, so a kernel that re-reads from HBM is underestimated.
    launch time   max(compute, memory), labelled tensor-, issue- or memory-bound. No launch overhead,
                  no latency (a single block whose wgmma waits every iteration is not slowed here).

The roll-up takes one training step at batch 128 in bf16 and in tf32: for each (layer, op) the best
estimated tile among the step's launches (as the autotuner would pick), plus the fully connected
layers at their floor (cuBLAS assumed to reach it: max(FLOPs / peak, bytes / bandwidth)), against
the step's compute floor (its FLOPs / bench.costs peak). All figures are estimates, not measurements.
"""

import argparse
import importlib
import json
import math
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

from alexnet.layers import CONVS, LINEARS, LRNS, ORDER, POOLS
from perf import sass
SHARED_LIMIT = {80: 163 * 1024, 90: 227 * 1024}  # bytes of shared memory per block, opt-in maximum
SHARED_PER_SM = {80: 164 * 1024, 90: 228 * 1024}
SHARED_RESERVED = 1024  # per block, by the driver
REGS_PER_SM, WARPS_PER_SM, BLOCKS_PER_SM = 65536, 64, 32

# The GPUs of the estimate: SMs, an assumed sustained clock under tensor load (the 1.83 GHz behind the
# datasheet's 989 TFLOP/s is the boost; 1.755 GHz is what long GEMMs hold), HBM bandwidth from bench.costs.
SMS, CLOCK_HZ = 132, 1.755e9
ESTIMATE_GPUS = ("h100", "h200")


def _specialise(kernel, target, kwargs):
    """(signature, constexprs, attrs, options) exactly as Triton's JIT derives them from a launch."""
    from triton.compiler import make_backend
    from triton.runtime.jit import create_function_from_signature

    backend = make_backend(target)
    binder = create_function_from_signature(kernel.signature, kernel.params, backend)
    bound_args, specialization, options = binder(**kwargs)
    meta = {name: value for name, value in kwargs.items() if name not in kernel.arg_names}
    options, signature, constexprs, attrs = kernel._pack_args(backend, meta, bound_args, specialization, options)
    return signature, constexprs, attrs, options


def _cuobjdump(cubin: bytes, workdir: Path, flag: str) -> str:
    import triton

    path = workdir / "kernel.cubin"
    path.write_bytes(cubin)
    cuobjdump = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    return subprocess.run([str(cuobjdump), flag, str(path)], capture_output=True, text=True, check=True).stdout


def _resource_usage(cubin: bytes, workdir: Path) -> dict:
    """{'REG': .., 'STACK': .., 'SHARED': .., 'LOCAL': ..} from `cuobjdump --dump-resource-usage`."""
    out = _cuobjdump(cubin, workdir, "--dump-resource-usage")
    usage = re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)", out)
    if usage is None:
        raise RuntimeError(f"no resource usage in cuobjdump's output:\n{out}")
    return dict(zip(("REG", "STACK", "SHARED", "LOCAL"), map(int, usage.groups())))


def _builds(only=None):
    """{(kernel name, config, arch, attrs): (kernel, target, signature, constexprs, attrs, options,
    [(label, work)])}, one per distinct build; `only`: keep launches whose kernel name or label holds it."""
    import triton

    from perf.launches import launches

    builds = {}
    for label, kernel, kwargs, work in launches():
        if not isinstance(kernel, triton.runtime.JITFunction):
            raise RuntimeError("the kernels were imported under TRITON_INTERPRET=1; run python -m perf.aot "
                               "in a fresh process")
        if only and only not in kernel.__name__ and only not in label:
            continue
        for arch in SHARED_LIMIT:
            target = triton.backends.compiler.GPUTarget("cuda", arch, 32)
            signature, constexprs, attrs, options = _specialise(kernel, target, kwargs)
            names = [kernel.arg_names[path[0]] for path in constexprs]
            config = " ".join(f"{name}={value}" for name, value in zip(names, constexprs.values()))
            config += f" warps={options.num_warps} stages={options.num_stages}"
            config += " " + ",".join(sorted({t for t in signature.values() if t.startswith("*")}))
            key = (kernel.__name__, config, arch, repr(attrs))
            entry = builds.setdefault(key, (kernel, target, signature, constexprs, attrs, options, []))
            entry[-1].append((label, work))
    return builds


# ----------------------------------------------------------------------------------------------------------
# The estimate (the model in the docstring above)


def occupancy(regs: int, shared: int, warps: int, arch: int) -> int:
    """Resident blocks per SM, limited by registers, shared memory, warps and the 32-block cap."""
    regs_per_warp = math.ceil(max(regs, 1) * 32 / 256) * 256
    by_regs = REGS_PER_SM // (regs_per_warp * warps)
    by_shared = SHARED_PER_SM[arch] // (shared + SHARED_RESERVED)
    return min(by_regs, by_shared, WARPS_PER_SM // warps, BLOCKS_PER_SM)


def program_clocks(loop: sass.MainLoop, warps: int, arch: int, trips: float) -> dict:
    """Clocks of one program: the instructions outside the main loop once, the loop `trips` times."""
    issue = sass.issue_clocks(loop.instructions, warps)
    tensor = sass.tensor_clocks(loop, warps, arch)
    if loop.which == "whole kernel":
        trips = 1
    outside = sass.issue_clocks(loop.kernel_instructions - loop.instructions, warps)
    return dict(clocks=outside + trips * max(issue, tensor), outside=outside, trips=trips,
                bound="tensor" if tensor >= issue else "issue")


def sass_trips(loop: sass.MainLoop, meta: dict, warps: int, iterations: int) -> float:
    """SASS loop trips of `iterations` source iterations: fewer when one SASS trip does several tiles."""
    macs = sass.block_macs(loop, warps)
    if macs and all(k in meta for k in ("BLOCK_M", "BLOCK_N", "BLOCK_K")):
        return iterations * meta["BLOCK_M"] * meta["BLOCK_N"] * meta["BLOCK_K"] / macs
    return iterations


def estimate(work: dict, per_program: dict, occ: int, gpu) -> dict:
    """Estimated seconds of one launch on `gpu` (bench.costs.Gpu), with its bound."""
    compute = math.ceil(work["programs"] / SMS) * per_program["clocks"] / CLOCK_HZ
    memory = work["bytes"] / gpu.bandwidth
    return dict(seconds=max(compute, memory), compute_s=compute, memory_s=memory,
                waves=math.ceil(work["programs"] / (SMS * occ)) if occ else None,
                bound="memory" if memory >= compute else per_program["bound"])


def report_build(arch, options, constexprs, usage_shared, regs, sass_text, launches):
    """The report's facts of one build and the estimates of its launches."""
    from bench.costs import GPUS

    loop = sass.main_loop(sass_text)
    warps = options.num_warps
    occ = occupancy(regs, usage_shared, warps, arch)
    row = dict(occupancy=occ, mma=loop.mma_shape, loop=loop.which, loop_instructions=loop.instructions,
               kernel_instructions=loop.kernel_instructions, waits_for_wgmma=loop.waits, loads=loop.loads,
               issue_clocks=sass.issue_clocks(loop.instructions, warps),
               tensor_clocks=sass.tensor_clocks(loop, warps, arch), R=sass.ratio(loop, warps, arch), launches=[])
    for label, work in launches:
        launch = dict(label=label, work=work)
        if arch == 90 and occ:
            per_program = program_clocks(loop, warps, arch, sass_trips(loop, constexprs, warps, work["iterations"]))
            launch.update(program=per_program, **{name: estimate(work, per_program, occ, GPUS[name])
                                                  for name in ESTIMATE_GPUS})
        row["launches"].append(launch)
    return row


# ----------------------------------------------------------------------------------------------------------
# The roll-up of one training step


def rollup(rows: list[dict], step_dtype: str) -> dict:
    """One batch-128 training step in `step_dtype` ("bf16" or "tf32"): the best tile per (layer, op) of the
    step's sm_90 launches, the fully connected layers at their floor, and the totals against the floors."""
    from bench.costs import ELEMENT_BYTES, GPUS, linear_costs, sgd_costs

    dtypes = {"bf16": ("bf16",), "tf32": ("tf32", "fp32")}[step_dtype]  # fp32 LRN/pool in the tf32 step
    h100, h200 = GPUS["h100"], GPUS["h200"]
    best = {}
    for row in rows:
        for launch in row.get("launches", []):
            work = launch["work"]
            if row["arch"] != "sm_90" or not work["step"] or work["dtype"] not in dtypes or "h100" not in launch:
                continue
            key = (work["layer"], work["op"])
            if key not in best or launch["h100"]["seconds"] < best[key]["h100"]["seconds"]:
                best[key] = dict(layer=work["layer"], op=work["op"], kernel=row["kernel"], tile=row["tile"],
                                 label=launch["label"], R=row["R"], h100=launch["h100"], h200=launch["h200"],
                                 flops=2 * work["macs"], bytes=work["bytes"])
    peak = h100.tflops[step_dtype] * 1e12
    layers = []
    for (layer, op), entry in sorted(best.items(), key=lambda item: _layer_order(item[0])):
        entry["floor_h100_s"] = max(entry["flops"] / peak, entry["bytes"] / h100.bandwidth)
        entry["floor_h200_s"] = max(entry["flops"] / peak, entry["bytes"] / h200.bandwidth)
        layers.append(entry)
    for layer, (fan_in, fan_out) in LINEARS.items():
        for op, (flops, bytes_) in linear_costs(128, fan_in, fan_out, ELEMENT_BYTES[step_dtype]).items():
            floors = {name: max(flops / peak, bytes_ / GPUS[name].bandwidth) for name in ESTIMATE_GPUS}
            layers.append(dict(layer=layer, op=op, kernel="cuBLAS (at its floor)", tile="", label="", R=None,
                               h100=dict(seconds=floors["h100"], bound="floor"),
                               h200=dict(seconds=floors["h200"], bound="floor"), flops=flops, bytes=bytes_,
                               floor_h100_s=floors["h100"], floor_h200_s=floors["h200"]))

    def total(kind):
        chosen = [e for e in layers if kind is None or e["layer"].startswith(kind)]
        return {name: dict(seconds=sum(e[name]["seconds"] for e in chosen),
                           floor_s=sum(e[f"floor_{name}_s"] for e in chosen)) for name in ESTIMATE_GPUS}

    flops = sum(e["flops"] for e in layers)
    totals = {kind: total(kind) for kind in ("conv", "lrn", "pool", "fc")}
    totals["step"] = total(None)
    params = sum(fi * fo + fo for fi, fo in LINEARS.values()) + _conv_params()
    return dict(dtype=step_dtype, layers=layers, totals=totals, flops=flops, compute_floor_s=flops / peak,
                ratio={name: totals["step"][name]["seconds"] / (flops / peak) for name in ESTIMATE_GPUS},
                missing=sorted({f"{layer} {op}" for layer, op in _expected_step_launches()} -
                               {f"{e['layer']} {e['op']}" for e in layers}),
                sgd_floor_s={name: sgd_costs(params)["update"][1] / GPUS[name].bandwidth for name in ESTIMATE_GPUS})


def _layer_order(key):
    layer, op = key
    ops = ("fwd", "dgrad", "wgrad", "bwd")
    return ORDER.index(layer) if layer in ORDER else len(ORDER), ops.index(op) if op in ops else len(ops)


def _expected_step_launches():
    convs = [(name, op) for name in CONVS for op in ("fwd", "dgrad", "wgrad") if (name, op) != ("conv1", "dgrad")]
    return convs + [(layer, op) for layer in (*LRNS, *POOLS) for op in ("fwd", "bwd")]


def _conv_params():
    return sum(math.prod(w) + w[0] for _, w, _, _, _ in CONVS.values())


# ----------------------------------------------------------------------------------------------------------
# Output


def _short(label: str) -> str:
    return label.replace("float32 tf32", "tf32").replace("bfloat16", "bf16").replace("float16", "fp16") \
        .replace("float32", "fp32")


def _tile(constexprs: dict) -> str:
    if "BLOCK_M" in constexprs:
        return "x".join(str(constexprs[k]) for k in ("BLOCK_M", "BLOCK_N", "BLOCK_K"))
    blocks = [f"{value}{name.removeprefix('BLOCK_').lower()}" for name, value in constexprs.items()
              if name.startswith("BLOCK_") or name == "VEC"]  # e.g. 32cx64p: 32 channels x 64 positions
    return "x".join(blocks) or "-"


def _us(seconds) -> str:
    return f"{seconds * 1e6:.0f}" if seconds is not None else "-"


def _table(header, rows):
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header) - 1)]
    return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[-1]
            for row in [header, *rows]]


def _report_lines(rows: list[dict]) -> list[str]:
    """The report's per-build table (one row a build)."""
    header = ("kernel", "arch", "tile", "w", "st", "regs", "spill", "smemKiB", "occ", "mma/iter", "wait0",
              "loads", "loop", "R", "H100us", "bound", "inputs (batch 128; est. of the first)")
    table = []
    for row in rows:
        if row["regs"] is None:
            table.append((row["kernel"], row["arch"], row["tile"], *[""] * 13, row["verdict"]))
            continue
        first = row["launches"][0] if row["launches"] else {}
        loop = f"{row['loop_instructions']}{ {'mma loop': '', 'largest loop': 'L', 'whole kernel': 'K'}[row['loop']]}"
        labels = [_short(label) for label in row["labels"]]
        inputs = labels[0] + (f" +{len(labels) - 1}" if len(labels) > 1 else "")
        table.append((row["kernel"], row["arch"], row["tile"], str(row["warps"]),
                      str(row["stages"]), str(row["regs"]), str(row["spill"]), f"{row['shared'] / 1024:.0f}",
                      str(row["occupancy"]), row["mma"], "yes" if row["waits_for_wgmma"] else "-",
                      ",".join(row["loads"]) or "-", loop, f"{row['R']:.2f}" if row["R"] is not None else "-",
                      _us(first.get("h100", {}).get("seconds")), first.get("h100", {}).get("bound", "-"),
                      ("FAIL " if row["fail"] else "") + inputs))
    return _table(header, table) + [
        "loop: main-loop instructions per warp per iteration (L: no MMA, the largest loop; K: no loop, the whole "
        "kernel); R = issue / tensor clocks of one iteration; wait0: the loop waits for its wgmma (gsb0, 0x0); "
        f"H100us: ESTIMATE at {CLOCK_HZ / 1e9:.3f} GHz, {SMS} SMs (model: python -m perf.aot --help, "
        "perf/aot.py)"]


def _r_summary_lines(rows: list[dict]) -> list[str]:
    """min / median / max of R per kernel on sm_90, over its builds."""
    lines = ["R on sm_90 per kernel over its builds (min / median / max):"]
    for kernel in dict.fromkeys(row["kernel"] for row in rows):
        ratios = sorted(row["R"] for row in rows if row["kernel"] == kernel and row["arch"] == "sm_90"
                        and row.get("R") is not None)
        if ratios:
            lines.append(f"  {kernel:16s} {ratios[0]:.2f} / {statistics.median(ratios):.2f} / {ratios[-1]:.2f}"
                         f"  ({len(ratios)} builds)")
    return lines


def _rollup_lines(roll: dict) -> list[str]:
    header = ("layer", "op", "kernel", "tile", "R", "H100 us", "H200 us", "bound", "floor H100 us", "input")
    table = [(e["layer"], e["op"], e["kernel"], e["tile"],
              f"{e['R']:.2f}" if e["R"] is not None else "-", _us(e["h100"]["seconds"]), _us(e["h200"]["seconds"]),
              e["h100"]["bound"], _us(e["floor_h100_s"]), _short(e["label"])) for e in roll["layers"]]
    lines = [f"== One training step, batch 128, {roll['dtype']} (ESTIMATES; per layer and op the tile with the "
             "best H100 estimate) =="]
    lines += _table(header, table)
    names = {"conv": "convolutions (fwd+dgrad+wgrad)", "lrn": "LRN fwd+bwd", "pool": "max-pool fwd+bwd",
             "fc": "fully connected (cuBLAS at floor)", "step": "step total"}
    for kind, name in names.items():
        t = roll["totals"][kind]
        lines.append(f"  {name:34s} H100 {t['h100']['seconds'] * 1e3:7.3f} ms  "
                     f"H200 {t['h200']['seconds'] * 1e3:7.3f} ms   floor (per launch max(FLOPs/peak, bytes/HBM)) "
                     f"H100 {t['h100']['floor_s'] * 1e3:.3f} ms"
                     f"  H200 {t['h200']['floor_s'] * 1e3:.3f} ms")
    lines.append(f"  step compute floor ({roll['flops'] / 1e9:.0f} GFLOP at the {roll['dtype']} peak): "
                 f"{roll['compute_floor_s'] * 1e3:.3f} ms; step estimate / compute floor: "
                 f"H100 {roll['ratio']['h100']:.2f}x, H200 {roll['ratio']['h200']:.2f}x")
    lines.append(f"  not counted: dropout, loss, the SGD update (HBM floor H100 "
                 f"{roll['sgd_floor_s']['h100'] * 1e3:.3f} ms), launch overheads"
                 + (f"; MISSING from the builds: {', '.join(roll['missing'])}" if roll["missing"] else ""))
    return lines


def _parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="python -m perf.aot", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Compile every Triton kernel build AlexNet uses for sm_80 and sm_90 (no GPU needed) and check "
                    "it: exit 1 on a compile error, a spill, or shared memory beyond the limit.",
        epilog=__doc__[__doc__.index("--report adds"):])
    parser.add_argument("--report", action="store_true",
                        help="also read each build's SASS: MMA, main loop, R, estimated time per launch on "
                             "H100/H200, and a training-step roll-up (estimates)")
    parser.add_argument("--json", metavar="FILE", type=Path, help="write the report (per build and roll-up) as "
                                                                    "JSON to FILE (implies --report)")
    parser.add_argument("--only", metavar="TEXT", help="only the launches whose kernel name or input label "
                                                       "contains TEXT (the roll-up is then partial)")
    args = parser.parse_args(argv)
    args.report = args.report or args.json is not None
    if args.json is not None:
        problem = _unwritable(args.json)
        if problem:
            parser.error(f"--json {args.json}: {problem}")
    return args


def _unwritable(path: Path) -> str | None:
    """Why a file cannot be written at `path` (checked before minutes of compiling), or None."""
    if path.is_dir():
        return "is a folder"
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        return f"{parent} is a file, not a folder"
    if not os.access(parent, os.W_OK):
        return f"{parent} is not writable"
    return None


def main(argv=None) -> int:
    args = _parse_args(argv)
    os.environ.pop("TRITON_INTERPRET", None)  # before any kernel module is imported
    import tempfile

    import triton
    from triton.compiler import ASTSource

    builds = _builds(args.only)
    if not builds:
        from perf.launches import launches

        kernel_names = sorted({kernel.__name__ for _, kernel, _, _ in launches()})
        print(f"python -m perf.aot: error: --only {args.only!r} matches no kernel name and no input label; the "
              f"kernels are {', '.join(kernel_names)} (labels look like 'conv3 bfloat16 wgrad', "
              "'96x55x55 float32 NHWC')", file=sys.stderr)
        return 2
    failures, rows = 0, []
    with tempfile.TemporaryDirectory() as tmp:
        for (name, config, arch, _), (kernel, target, signature, constexprs, attrs, options, launches) \
                in builds.items():
            named = {kernel.arg_names[path[0]]: value for path, value in constexprs.items()}
            row = dict(kernel=name, config=config, arch=f"sm_{arch}", tile=_tile(named), warps=options.num_warps,
                       stages=options.num_stages, labels=[label for label, _ in launches], regs=None)
            try:
                compiled = triton.compile(ASTSource(kernel, signature, constexprs, attrs), target=target,
                                          options=options.__dict__)
                usage = _resource_usage(compiled.asm["cubin"], Path(tmp))
                sass_text = _cuobjdump(compiled.asm["cubin"], Path(tmp), "-sass") if args.report else None
            except Exception as error:  # report every failing build, then fail
                failures += 1
                rows.append({**row, "fail": True, "verdict": f"FAILED {type(error).__name__}: {error}"})
                continue
            shared = usage["SHARED"] + compiled.metadata.shared
            bad = usage["LOCAL"] > 0 or shared > SHARED_LIMIT[arch]
            failures += bad
            row.update(regs=usage["REG"], spill=usage["LOCAL"], shared=shared, fail=bool(bad))
            if args.report:
                row.update(report_build(arch, options, named, shared, usage["REG"], sass_text, launches))
            rows.append(row)
    if args.report:
        lines = _report_lines(rows) + [""] + _r_summary_lines(rows)
        rolls = [rollup(rows, dtype) for dtype in ("bf16", "tf32")]
        for roll in rolls:
            lines += ["", *_rollup_lines(roll)]
        print("\n".join(lines))
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(dict(model=__doc__[__doc__.index("--report adds"):],
                                                 clock_hz=CLOCK_HZ, sms=SMS, builds=rows,
                                                 rollup={roll["dtype"]: roll for roll in rolls}), indent=1))
    else:
        header = ("kernel", "config", "arch", "regs", "spill B", "shared B", "inputs (batch 128)")
        table = [(r["kernel"], r["config"], r["arch"], *((str(r["regs"]), str(r["spill"]), str(r["shared"]))
                  if r["regs"] is not None else ("FAILED", "", "")),
                  r["verdict"] if r["regs"] is None else ("FAIL " if r["fail"] else "") + "; ".join(r["labels"]))
                 for r in rows]
        print("\n".join(_table(header, table)))
    print(f"{len(rows)} builds, {failures} failed" if failures else f"{len(rows)} builds, all pass")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
