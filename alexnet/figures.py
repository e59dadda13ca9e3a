"""Pictures of a trained network as PNGs: its conv1 filters, its training curves, its predictions.

    python -m alexnet.figures filters --checkpoint output/checkpoint.pth -o conv1.png
    python -m alexnet.figures curves output/metrics.jsonl -o curves.png
    python -m alexnet.figures predictions photos/ --checkpoint output/checkpoint.pth -o predictions.png

`filters` is the paper's Figure 3: the 96 conv1 kernels (11x11x3), each stretched to the full
range for display; the top three rows are the first tower's 48 (the maps conv2's first group
sees), the bottom three the second's. `curves` plots loss, top-1/top-5 error and learning rate
per epoch from a run's metrics.jsonl. `predictions` shows each image's 227 centre crop (what the
network sees) beside bars for its top-5 classes. The nearest-neighbour picture (the paper's
Figure 4) is `python -m alexnet.features neighbours`, the ablation chart `python -m alexnet.ablate`.
Figures are drawn on matplotlib's Agg canvas: no display needed.
"""

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure

from alexnet.checkpoint import CheckpointError
from alexnet.inference import InputError, displayable, image_files, load_image, load_trained
from alexnet.predict import predict
from alexnet.train import POSITIVE_INT


def _save(fig: Figure, path: Path | str) -> Path:
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


def plot_filters(weight: torch.Tensor, path: Path | str, title: str = "conv1 filters") -> Path:
    fig = Figure(figsize=(8, 3.4))
    ax = fig.add_subplot()
    ax.imshow(filters_grid(weight), interpolation="nearest")
    ax.set_title(f"{title}: {weight.shape[0]} kernels {weight.shape[2]}x{weight.shape[3]}x{weight.shape[1]}")
    ax.axis("off")
    fig.tight_layout()
    return _save(fig, path)


def read_metrics(path: Path | str) -> list[dict]:
    """The records of a metrics.jsonl, with a clear error when it is missing, empty or malformed."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"metrics file {path} does not exist")
    records = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise InputError(f"{path}:{n} is not JSON ({e})") from e
    needed = ("epoch", "lr", "train_loss", "val_loss", "val_acc1", "val_acc5")
    missing = sorted({k for r in records for k in needed if k not in r})
    if not records or missing:
        raise InputError(f"metrics file {path} has {'no records' if not records else 'no ' + ', '.join(missing)}; "
                         f"expected the lines python -m alexnet.train writes")
    return records


def plot_curves(records: list[dict], path: Path | str) -> Path:
    """Loss (train, val), val top-1/top-5 error and the learning rate against the epoch."""
    epoch = [r["epoch"] for r in records]
    fig = Figure(figsize=(12, 3.6))
    loss, err, lr = fig.subplots(1, 3)
    loss.plot(epoch, [r["train_loss"] for r in records], "o-", label="train")
    loss.plot(epoch, [r["val_loss"] for r in records], "o-", label="val")
    loss.set(title="loss", xlabel="epoch")
    loss.legend()
    err.plot(epoch, [100 * (1 - r["val_acc1"]) for r in records], "o-", label="top-1")
    err.plot(epoch, [100 * (1 - r["val_acc5"]) for r in records], "o-", label="top-5")
    err.set(title="val error (%)", xlabel="epoch", ylim=(0, 100))
    err.legend()
    lr.plot(epoch, [r["lr"] for r in records], "o-")
    lr.set(title="learning rate", xlabel="epoch", yscale="log")
    fig.tight_layout()
    return _save(fig, path)


def plot_predictions(images: list[np.ndarray], results: list[dict], path: Path | str, columns: int = 3) -> Path:
    """Each image (displayable) above bars of its top-k classes and probabilities (`predict`'s results)."""
    rows = -(-len(images) // columns)
    fig = Figure(figsize=(4 * columns, 5.2 * rows))
    grid = fig.add_gridspec(2 * rows, columns, height_ratios=[3, 2] * rows)
    for i, (image, r) in enumerate(zip(images, results)):
        row, col = divmod(i, columns)
        ax = fig.add_subplot(grid[2 * row, col])
        ax.imshow(image)
        ax.set_title(Path(r["path"]).name, fontsize=9)
        ax.axis("off")
        bars = fig.add_subplot(grid[2 * row + 1, col])
        top = r["top"][::-1]  # most probable at the top
        drawn = bars.barh([t["class"] for t in top], [t["prob"] for t in top], color="tab:blue")
        bars.bar_label(drawn, [f"{100 * t['prob']:.1f} %" for t in top], fontsize=7, padding=2)
        bars.set_xlim(0, 1.2)  # room for the labels
        bars.set_xticks([0, 0.25, 0.5, 0.75, 1])
        bars.set_xlabel("probability", fontsize=8)
        bars.tick_params(labelsize=8)
    fig.tight_layout()
    return _save(fig, path)


def plot_neighbours(queries: list[np.ndarray], neighbours: list[list[np.ndarray]], distances: list[list[float]],
                    path: Path | str) -> Path:
    """One row per query: the query, then its nearest images with their distances (the paper's Figure 4)."""
    rows, columns = len(queries), 1 + max(len(n) for n in neighbours)
    fig = Figure(figsize=(1.8 * columns, 2.0 * rows))
    axes = np.atleast_2d(fig.subplots(rows, columns, squeeze=False))
    for row, (query, near, dist) in enumerate(zip(queries, neighbours, distances)):
        for col, ax in enumerate(axes[row]):
            ax.axis("off")
            if col == 0:
                ax.imshow(query)
                ax.set_title("query", fontsize=9, color="tab:red")
            elif col <= len(near):
                ax.imshow(near[col - 1])
                ax.set_title(f"d = {dist[col - 1]:.3g}", fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m alexnet.figures", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="figure", required=True)
    f = sub.add_parser("filters", help="conv1's 96 filters as a grid (the paper's Figure 3)")
    f.add_argument("--checkpoint", required=True, help="checkpoint written by python -m alexnet.train")
    f.add_argument("-o", "--output", default="conv1_filters.png", help="PNG to write (default: conv1_filters.png)")
    c = sub.add_parser("curves", help="loss, top-1/top-5 error and learning rate per epoch")
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
    try:
        if args.figure == "filters":
            trained = load_trained(args.checkpoint)
            out = plot_filters(trained.model.conv1.weight, args.output, f"conv1 filters of {args.checkpoint}")
        elif args.figure == "curves":
            out = plot_curves(read_metrics(args.metrics), args.output)
        else:
            trained = load_trained(args.checkpoint)
            files = image_files(args.images)[:args.max_images]
            out = plot_predictions([displayable(load_image(f)) for f in files], predict(trained, files), args.output)
    except (CheckpointError, InputError) as e:
        raise SystemExit(f"error: {e}") from e
    print(out)
    return out


if __name__ == "__main__":
    main()
