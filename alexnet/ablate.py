"""The paper's ablations: train each variant with the same seed and data, and compare their accuracies.

    python -m alexnet.ablate                                        # every variant, train's default recipe
    python -m alexnet.ablate --variants paper no-lrn no-overlap --epochs 10 --lr 0.001
    python -m alexnet.ablate --output-dir ablation -b 4 --max-steps 3   # a smoke test, seconds a variant

Variants: `paper` (the network as published), `no-lrn`, `no-overlap` (2x2 pooling, stride 2),
`no-groups` (one tower, same widths), `no-dropout`, `no-lighting` (no PCA lighting noise). Every
flag this command does not know goes to `python -m alexnet.train` unchanged, for every variant;
each variant trains into OUTPUT/<variant>/ and is then evaluated (centre crop, or `--ten-crop`) on
the validation split. The table (top-1 and top-5 accuracy in percent, and each one's change from
`paper` in points) is printed and written to OUTPUT/ablation.json and OUTPUT/ablation.png. The
paper quotes error rates instead: 100 - accuracy (a drop in accuracy is a rise in error).
On the embedded dataset a short run's differences are mostly noise: read them as a demonstration.
"""

import argparse
import json
from pathlib import Path

from matplotlib.figure import Figure

from alexnet import train
from alexnet.cli import check_output_file
from alexnet.evaluate import evaluate_checkpoint
from alexnet.figures import save
from alexnet.run_folder import ARGS, CHECKPOINT

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
    check_output_file(Path(args.output_dir) / "ablation.json", "--output-dir")  # the table, written last
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
        config = json.loads((out / ARGS).read_text())  # what train resolved the flags to
        summary = evaluate_checkpoint(out / CHECKPOINT, config["data_path"], config["batch_size"],
                                      config["device"], config["workers"], args.ten_crop, config["kernels"],
                                      config["exclude_list"])
        rows.append({"variant": name, "top1": summary["top1"], "top5": summary["top5"]})
    paper = rows[0]
    for r in rows:
        r["d_top1"], r["d_top5"] = r["top1"] - paper["top1"], r["top5"] - paper["top5"]
    return rows


def table(rows: list[dict]) -> str:
    """Accuracies in percent, changes from `paper` in points."""
    lines = [f"{'variant':<12} {'top-1 %':>8} {'top-5 %':>8} {'d top-1':>8} {'d top-5':>8}"]
    lines += [f"{r['variant']:<12} {r['top1']:>8.1f} {r['top5']:>8.1f} {r['d_top1']:>+8.1f} {r['d_top5']:>+8.1f}"
              for r in rows]
    return "\n".join(lines)


def plot(rows: list[dict], title: str) -> Figure:
    """Grouped bars: each variant's top-1 and top-5 accuracy (%), the values on the bars."""
    fig = Figure(figsize=(max(6.0, 1.2 * len(rows) + 2), 4.5), layout="constrained")
    ax = fig.add_subplot()
    for offset, key, label in ((-0.2, "top1", "top-1"), (0.2, "top5", "top-5")):
        bars = ax.bar([i + offset for i in range(len(rows))], [r[key] for r in rows], 0.4, label=label)
        ax.bar_label(bars, fmt="%.1f", fontsize=9, padding=2)
    ax.set_xticks(range(len(rows)), [r["variant"] for r in rows])
    ax.set(ylabel="validation accuracy (%)", ylim=(0, 112), yticks=range(0, 101, 20), title=title)
    ax.legend(loc="upper left", bbox_to_anchor=(1, 1), frameon=False)
    return fig


def main(argv=None) -> list[dict]:
    args, train_flags = parse(argv)
    rows = run(args, train_flags)
    out = Path(args.output_dir)
    (out / "ablation.json").write_text(json.dumps({"train_flags": train_flags, "ten_crop": args.ten_crop,
                                                   "rows": rows}, indent=1) + "\n")
    png = save(plot(rows, f"Ablations: validation accuracy, {'ten-crop' if args.ten_crop else 'centre crop'}"),
               out / "ablation.png")
    print(f"\n{table(rows)}\n\ntable: {out / 'ablation.json'}\nchart: {png}")
    return rows


if __name__ == "__main__":
    main()
