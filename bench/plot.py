"""A PNG of a benchmark run: each layer's measured time per backend, next to its floor on a chosen GPU.

    pytest bench/ --benchmark-only --benchmark-json BENCH.json
    python -m bench.plot BENCH.json [--gpu h100] [--batch 128] [--dtype {fp32,tf32,bf16,fp16}] [-o bench.png]

Grouped bars on a log scale, one group per measured layer and pass (bench.roofline's rows), one bar per
backend, the last (grey) the floor. Interpreted Triton bars are hatched: those times are not speeds. A CPU
run's shapes are shrunk, so its bars and the batch-128 floors are not like for like; the title says so.
--dtype and --gpu default to what the file holds, as bench.roofline's (file_defaults).
"""

import argparse

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

from bench.costs import ELEMENT_BYTES, GPUS  # noqa: E402
from bench.roofline import DEFAULT_GPU, floors_ms, from_file  # noqa: E402

WIDTH_IN, HEIGHT_IN, DPI = 14, 6, 100


def plot(measured: dict, floors: dict, title: str, path: str):
    keys = [key for key in floors if key in measured]  # network order, then the step
    backends = sorted({backend for key in keys for backend in measured[key]})
    width = 0.8 / (len(backends) + 1)
    fig, ax = plt.subplots(figsize=(WIDTH_IN, HEIGHT_IN), dpi=DPI)
    for i, backend in enumerate(backends):
        at = [(x, measured[key][backend]) for x, key in enumerate(keys) if backend in measured[key]]
        interpreted = backend == "triton" and any(m.get("triton_interpreted") for _, m in at)
        ax.bar([x + i * width for x, _ in at], [m["ms"] for _, m in at], width, hatch="//" if interpreted else None,
               label=f"{backend} (interpreted)" if interpreted else backend)
    ax.bar([x + len(backends) * width for x in range(len(keys))], [floors[key] for key in keys], width,
           color="grey", label="floor")
    ax.set_yscale("log")
    ax.set_ylabel("ms (median)")
    ax.set_xticks([x + len(backends) * width / 2 for x in range(len(keys))])
    ax.set_xticklabels([f"{layer}\n{pass_}" for layer, pass_ in keys], fontsize=7)
    ax.set_title(title, fontsize=9)
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)  # outside: bars fill the axes
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench.plot", description=__doc__.split("\n\n")[0])
    parser.add_argument("json", metavar="BENCH.json")
    parser.add_argument("--gpu", choices=list(GPUS),
                        help=f"the floors' GPU (default: the file's, when known, else {DEFAULT_GPU})")
    parser.add_argument("--batch", type=int, default=128, help="batch of the floors")
    parser.add_argument("--dtype", choices=list(ELEMENT_BYTES), help="default: the file's (bf16 among others)")
    parser.add_argument("-o", "--output", default="bench.png")
    args = parser.parse_args(argv)
    dtype, gpu_name, measured = from_file(args.json, args.dtype, args.gpu)
    gpu = GPUS[gpu_name]
    devices = sorted({m["device"] for by_backend in measured.values() for m in by_backend.values()})
    caveat = " (CPU: shrunk shapes, not comparable with the floors)" if "cpu" in devices else ""
    title = (f"{args.json}: measured on {', '.join(devices)}{caveat}\n"
             f"floor: {gpu.name} vendor peaks, batch {args.batch}, {dtype}")
    plot(measured, floors_ms(gpu, dtype, args.batch), title, args.output)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
