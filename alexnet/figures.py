"""Pictures of a trained network as PNGs: its conv1 filters, its training curves, its predictions.

    python -m alexnet.figures filters --checkpoint output/checkpoint.pth -o conv1.png
    python -m alexnet.figures curves output/metrics.jsonl -o curves.png
    python -m alexnet.figures predictions photos/ --checkpoint output/checkpoint.pth -o predictions.png

`filters` is the paper's Figure 3: the 96 conv1 kernels (11x11x3), each stretched to the full
range for display, in two panels: the first tower's 48 (the maps conv2's first group sees) above
the second's. `curves` plots loss, top-1/top-5 accuracy (%) and learning rate per epoch from a
run's metrics.jsonl. `predictions` shows each image's 227 centre crop (what the network sees)
above bars for its top-5 classes; an image in a folder named after one of the checkpoint's classes
(data laid out as CLASS/FILE) is labelled with that class, and its bar is green. The
nearest-neighbour picture (the paper's Figure 4) is `python -m alexnet.features neighbours`, the
ablation chart `python -m alexnet.ablate`.
Figures are drawn on matplotlib's Agg canvas: no display needed.
"""

import argparse
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from alexnet import run_folder
from alexnet.checkpoint import CheckpointError
from alexnet.cli import POSITIVE_INT, check_output_file
from alexnet.inference import InputError, displayable, folder_class, image_files, load_image, load_trained
from alexnet.predict import predict


def save(fig: Figure, path: Path | str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path


def filters_grid(weight: torch.Tensor, columns: int = 16) -> np.ndarray:
    """An image in [0, 1] of (K, 3, h, w) filters, `columns` a row, left to right, each min-max
    normalised on its own (their scales differ), with one white pixel between them."""
    k, _, h, w = weight.shape
    rows = -(-k // columns)
    grid = np.ones((rows * (h + 1) + 1, columns * (w + 1) + 1, 3), np.float32)
    for i, f in enumerate(weight.detach().float().cpu()):
        f = (f - f.min()) / (f.max() - f.min()).clamp_min(1e-12)
        r, c = divmod(i, columns)
        grid[1 + r * (h + 1):1 + r * (h + 1) + h, 1 + c * (w + 1):1 + c * (w + 1) + w] = f.permute(1, 2, 0).numpy()
    return grid


def plot_filters(weight: torch.Tensor, title: str = "conv1 filters", towers: int = 2) -> Figure:
    """The kernels as a grid, one panel per tower: the first K/towers kernels are tower 1's."""
    k, c, h, w = weight.shape
    per, columns = k // towers, 16
    fig = Figure(figsize=(8, 0.4 + towers * (0.3 + 0.48 * -(-per // columns))), layout="constrained")
    fig.suptitle(f"{title}: {k} kernels {h}x{w}x{c}")
    for t, ax in enumerate(fig.subplots(towers, 1, squeeze=False)[:, 0]):
        ax.imshow(filters_grid(weight[t * per:(t + 1) * per], columns), interpolation="nearest")
        ax.set_title(f"tower {t + 1} (the paper's GPU {t + 1}): kernels {t * per + 1}-{(t + 1) * per}"
                     if towers > 1 else "one tower (no groups)", fontsize=10)
        ax.axis("off")
    return fig


def read_metrics(path: Path | str) -> list[dict]:
    """The records of a metrics.jsonl, with a clear error when it is missing, empty or malformed."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"metrics file {path} does not exist")
    try:
        records = run_folder.read_metrics(path)  # a last line cut short is dropped, with a warning
    except run_folder.FolderError as e:
        raise InputError(str(e)) from e
    needed = ("epoch", "lr", "train_loss", "val_loss", "val_top1", "val_top5")
    missing = sorted({k for r in records for k in needed if k not in r})
    if not records or missing:
        raise InputError(f"metrics file {path} has {'no records' if not records else 'no ' + ', '.join(missing)}; "
                         f"expected the lines python -m alexnet.train writes")
    return records


def plot_curves(records: list[dict]) -> Figure:
    """Loss (train, val), val top-1/top-5 accuracy (%) and the learning rate against the epoch."""
    epoch = [r["epoch"] for r in records]
    style = "o-" if len(epoch) <= 30 else "-"
    fig = Figure(figsize=(12, 3.6), layout="constrained")
    loss, acc, lr = fig.subplots(1, 3)
    loss.plot(epoch, [r["train_loss"] for r in records], style, label="train")
    loss.plot(epoch, [r["val_loss"] for r in records], style, label="val")
    loss.set(title="loss")
    acc.plot(epoch, [r["val_top1"] for r in records], style, label="top-1")
    acc.plot(epoch, [r["val_top5"] for r in records], style, label="top-5")
    acc.set(title="validation accuracy (%)", ylim=(0, 104), yticks=range(0, 101, 20))  # room for markers at 100
    lr.plot(epoch, [r["lr"] for r in records], style)
    lr.set(title="learning rate", yscale="log")
    for ax in (loss, acc, lr):
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    loss.legend()
    acc.legend()
    return fig


def plot_predictions(images: list[np.ndarray], results: list[dict], truths: list[str | None],
                     columns: int = 4) -> Figure:
    """Each image (displayable), titled with its true class where known, above bars of its top-k
    classes and probabilities (`predict`'s results); the true class's bar is green."""
    rows = -(-len(images) // columns)
    columns = -(-len(images) // rows)  # as many a row as the rows need: no empty row of cells
    fig = Figure(figsize=(3.4 * columns, 4.6 * rows), layout="constrained")
    grid = fig.add_gridspec(2 * rows, columns, height_ratios=[2.6, 1.4] * rows)
    for i, (image, r, truth) in enumerate(zip(images, results, truths)):
        row, col = divmod(i, columns)
        ax = fig.add_subplot(grid[2 * row, col])
        ax.imshow(image)
        ax.set_title(f"{Path(r['path']).name}\ntrue: {truth or 'unknown'}", fontsize=9)
        ax.axis("off")
        bars = fig.add_subplot(grid[2 * row + 1, col])
        top = r["top"][::-1]  # most probable at the top
        bars.barh([t["class"] for t in top], [t["prob"] for t in top],
                  color=["tab:green" if t["class"] == truth else "tab:blue" for t in top])
        for y, t in enumerate(top):  # the value inside a long bar, after a short one
            inside = t["prob"] > 0.75
            bars.text(t["prob"] + (-0.02 if inside else 0.02), y, f"{100 * t['prob']:.1f} %", va="center",
                      ha="right" if inside else "left", color="white" if inside else "black", fontsize=8)
        bars.set_xlim(0, 1)
        bars.set_xticks([0, 0.25, 0.5, 0.75, 1])
        bars.set_xlabel("probability", fontsize=8)
        bars.tick_params(labelsize=8)
    return fig


def plot_neighbours(queries: list[np.ndarray], neighbours: list[list[np.ndarray]], distances: list[list[float]],
                    classes: list[list[str]]) -> Figure:
    """One row per query: the query, then its nearest images with their distances (the paper's Figure 4),
    each image's class under it (`classes`: a row's query's, then its neighbours'), green where it is
    the query's."""
    rows, columns = len(queries), 1 + max(len(n) for n in neighbours)
    fig = Figure(figsize=(1.8 * columns, 2.2 * rows), layout="constrained")
    axes = fig.subplots(rows, columns, squeeze=False)
    for row, (query, near, dist, names) in enumerate(zip(queries, neighbours, distances, classes)):
        for col, ax in enumerate(axes[row]):
            ax.set(xticks=[], yticks=[])
            ax.spines[:].set_visible(False)
            if col > len(near):
                continue
            ax.imshow(query if col == 0 else near[col - 1])
            if col == 0:
                ax.set_title("query", fontsize=9, color="tab:red")
            else:
                ax.set_title(f"d = {dist[col - 1]:.3g}", fontsize=8)
            same = col > 0 and names[0] and names[col] == names[0]
            ax.set_xlabel(names[col], fontsize=8, color="tab:green" if same else "black")
    return fig


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m alexnet.figures", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="figure", required=True)
    f = sub.add_parser("filters", help="conv1's 96 filters as a grid (the paper's Figure 3)")
    f.add_argument("--checkpoint", required=True, help="checkpoint written by python -m alexnet.train")
    f.add_argument("-o", "--output", default="conv1_filters.png", help="PNG to write (default: conv1_filters.png)")
    c = sub.add_parser("curves", help="loss, top-1/top-5 accuracy and learning rate per epoch")
    c.add_argument("metrics", help="a run's metrics.jsonl (OUTPUT/metrics.jsonl)")
    c.add_argument("-o", "--output", default="curves.png", help="PNG to write (default: curves.png)")
    r = sub.add_parser("predictions", help="images with bars for their top-5 classes")
    r.add_argument("images", nargs="+", metavar="IMAGE_OR_FOLDER", help="image files or folders of them")
    r.add_argument("--checkpoint", required=True, help="checkpoint written by python -m alexnet.train")
    r.add_argument("--max-images", default=12, type=POSITIVE_INT, help="draw at most this many (default: 12)")
    r.add_argument("-o", "--output", default="predictions.png", help="PNG to write (default: predictions.png)")
    return p


def main(argv=None) -> Path:
    args = get_args_parser().parse_args(argv)
    check_output_file(args.output, "-o")
    try:
        if args.figure == "filters":
            model = load_trained(args.checkpoint).model
            fig = plot_filters(model.conv1.weight, f"conv1 filters of {args.checkpoint}",
                               towers=2 if model.options["groups"] else 1)
        elif args.figure == "curves":
            fig = plot_curves(read_metrics(args.metrics))
        else:
            trained = load_trained(args.checkpoint)
            files = image_files(args.images)[:args.max_images]
            fig = plot_predictions([displayable(load_image(f)) for f in files], predict(trained, files),
                                   [folder_class(f, trained.classes) for f in files])
        out = save(fig, args.output)
    except (CheckpointError, InputError) as e:
        raise SystemExit(f"error: {e}") from e
    print(out)
    return out


if __name__ == "__main__":
    main()
