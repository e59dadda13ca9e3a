"""The paper's ablations: train each variant with the same seed and data, and compare their errors.

    python -m alexnet.ablate                                        # every variant, train's default recipe
    python -m alexnet.ablate --variants paper no-lrn no-overlap --epochs 10 --lr 0.001
    python -m alexnet.ablate --output-dir ablation -b 4 --max-steps 3   # a smoke test, seconds a variant

Variants: `paper` (the network as published), `no-lrn`, `no-overlap` (2x2 pooling, stride 2),
`no-groups` (one tower, same widths), `no-dropout`, `no-lighting` (no PCA lighting noise). Every
flag this command does not know goes to `python -m alexnet.train` unchanged, for every variant;
each variant trains into OUTPUT/<variant>/ and is then evaluated (centre crop, or `--ten-crop`) on
the validation split. The table (as in the paper: top-1 and top-5 error, and each one's change
from `paper`) is printed and written to OUTPUT/ablation.json and OUTPUT/ablation.png.
On the embedded dataset a short run's differences are mostly noise: read them as a demonstration.
"""

import argparse
import json
import textwrap
from pathlib import Path

from matplotlib.figure import Figure

from alexnet import train
from alexnet.evaluate import evaluate_checkpoint
from alexnet.train import resolve_device

VARIANTS = {"paper": [], "no-lrn": ["--no-lrn"], "no-overlap": ["--no-overlap"], "no-groups": ["--no-groups"],
            "no-dropout": ["--no-dropout"], "no-lighting": ["--lighting-std", "0"]}
NOT_PASSED = ("--resume", "--test-only", *(f for flags in VARIANTS.values() for f in flags[:1]))


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m alexnet.ablate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Any other flag is passed to python -m alexnet.train (see its --help).")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS,
                   help=f"which to train (default: all: {' '.join(VARIANTS)})")
    p.add_argument("--output-dir", default="ablation", help="one folder per variant, and the table (default: ablation)")
    p.add_argument("--ten-crop", action="store_true", help="evaluate with ten crops instead of the centre crop")
    return p


def parse(argv=None) -> tuple[argparse.Namespace, list[str]]:
    """(ablate's own arguments, the flags for train), refusing the train flags a variant sets itself."""
    parser = get_args_parser()
    args, train_flags = parser.parse_known_args(argv)
    clash = [f for f in train_flags if f.split("=")[0] in NOT_PASSED]
    if clash:
        parser.error(f"{', '.join(clash)}: the variants set these themselves")
    args.variants = list(dict.fromkeys(["paper", *args.variants]))  # first: the row the others are compared with
    train.get_args_parser().parse_args(train_flags)  # bad train flags fail now, not after a variant trained
    used = [str(Path(args.output_dir) / v) for v in args.variants if (Path(args.output_dir) / v).exists()]
    if used:  # training would append to their metrics.jsonl
        parser.error(f"{', '.join(used)} already exist: give another --output-dir or remove them")
    return args, train_flags


def run(args, train_flags: list[str]) -> list[dict]:
    """Train and evaluate every variant; returns one row per variant."""
    rows = []
    for name in args.variants:
        out = Path(args.output_dir) / name
        targs = train.get_args_parser().parse_args([*train_flags, *VARIANTS[name], "--output-dir", str(out)])
        print(f"== {name}: python -m alexnet.train {' '.join([*train_flags, *VARIANTS[name]])}")
        train.main(targs)
        summary = evaluate_checkpoint(out / "checkpoint.pth", targs.data_path, targs.batch_size,
                                      resolve_device(targs.device), targs.workers, args.ten_crop, targs.kernels,
                                      targs.exclude_list)
        rows.append({"variant": name, "top1_err": summary["top1_err"], "top5_err": summary["top5_err"]})
    paper = rows[0]
    for r in rows:
        r["d_top1"], r["d_top5"] = r["top1_err"] - paper["top1_err"], r["top5_err"] - paper["top5_err"]
    return rows


def table(rows: list[dict]) -> str:
    lines = [f"{'variant':<12} {'top-1 err':>9} {'top-5 err':>9} {'d top-1':>8} {'d top-5':>8}"]
    lines += [f"{r['variant']:<12} {100 * r['top1_err']:>8.1f}% {100 * r['top5_err']:>8.1f}% "
              f"{100 * r['d_top1']:>+8.1f} {100 * r['d_top5']:>+8.1f}" for r in rows]
    return "\n".join(lines)


def plot(rows: list[dict], path: Path | str, title: str) -> Path:
    """Grouped bars: top-1 and top-5 error of each variant, the title (the run's flags) wrapped."""
    width = 1.4 * len(rows) + 2
    fig = Figure(figsize=(width, 4.4))
    ax = fig.add_subplot()
    x = range(len(rows))
    for offset, key, label in ((-0.2, "top1_err", "top-1"), (0.2, "top5_err", "top-5")):
        bars = ax.bar([i + offset for i in x], [100 * r[key] for r in rows], 0.4, label=label)
        ax.bar_label(bars, fmt="%.1f", fontsize=7)
    ax.set_xticks(list(x), [r["variant"] for r in rows])
    ax.set(ylabel="validation error (%)", ylim=(0, 105))
    ax.set_title(textwrap.fill(title, int(width * 11)), fontsize=8)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return Path(path)


def main(argv=None) -> list[dict]:
    args, train_flags = parse(argv)
    rows = run(args, train_flags)
    out = Path(args.output_dir)
    (out / "ablation.json").write_text(json.dumps({"train_flags": train_flags, "ten_crop": args.ten_crop,
                                                   "rows": rows}, indent=1) + "\n")
    title = f"ablations ({'ten-crop' if args.ten_crop else 'centre crop'}): {' '.join(train_flags) or 'defaults'}"
    png = plot(rows, out / "ablation.png", title)
    print(f"\n{table(rows)}\n\ntable: {out / 'ablation.json'}\nchart: {png}")
    return rows


if __name__ == "__main__":
    main()
