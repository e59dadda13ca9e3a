"""fc7 features (the last hidden layer, 4096-d) of images, and their nearest neighbours.

    python -m alexnet.features extract $DATA/train --checkpoint output/checkpoint.pth -o train_fc7.npz
    python -m alexnet.features neighbours query.jpg --checkpoint output/checkpoint.pth --gallery train_fc7.npz
    python -m alexnet.features neighbours queries/ --checkpoint C --gallery $DATA/train -k 7 -o neighbours.png

`extract` writes an .npz with `features` (N, 4096) float32 and `paths` (N,), in the order the
images were found (folders recursively, sorted). `neighbours` draws the paper's Figure 4: each
query image, then the gallery images (an .npz from `extract`, or images and folders) nearest to it
by Euclidean distance between fc7 features, each image's class (its folder's name, when that is
one of the checkpoint's classes) under it. A query that is itself in the gallery is not its own
neighbour. Features are taken in eval mode (no dropout) from the centre crop, after fc7's ReLU.
"""

import argparse
from pathlib import Path

import numpy as np
import torch

import kernels
from alexnet.checkpoint import CheckpointError
from alexnet.cli import DEVICE_HELP, POSITIVE_INT, check_output_file, resolve_device
from alexnet.figures import plot_neighbours, save
from alexnet.inference import (InputError, Trained, displayable, folder_class, image_files, load_image, load_trained,
                               run)

STAGE = "fc7"


def extract(trained: Trained, files: list[Path], batch_size: int = 32) -> torch.Tensor:
    """(N, 4096) fc7 features of `files`."""
    return run(trained, files, batch_size, STAGE)


def save_features(path: Path | str, features: torch.Tensor, files: list[Path]) -> Path:
    """Write the .npz at `path`, under exactly that name (np.savez given a name adds .npz to it)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        np.savez(f, features=features.numpy(), paths=np.array([str(f) for f in files]))
    return path


def load_features(path: Path | str) -> tuple[torch.Tensor, list[Path]]:
    """(features, paths) of an .npz written by `extract`, with a clear error when it is not one."""
    try:
        with np.load(path, allow_pickle=False) as f:
            features, paths = torch.from_numpy(f["features"]), [Path(p) for p in f["paths"]]
    except (OSError, ValueError, KeyError) as e:
        raise InputError(f"features file {path} cannot be read ({type(e).__name__}: {e}); "
                         f"write one with python -m alexnet.features extract") from e
    if features.dim() != 2 or len(features) != len(paths):
        raise InputError(f"features file {path} holds features of shape {tuple(features.shape)} for "
                         f"{len(paths)} paths; expected (N, 4096) for N paths")
    return features, paths


def nearest(queries: torch.Tensor, gallery: torch.Tensor, k: int, exclude: torch.Tensor | None = None):
    """(distances, indices), each (Q, k): the k gallery rows nearest each query row (Euclidean),
    never a gallery row where `exclude` (Q, G) is True."""
    if queries.shape[1] != gallery.shape[1]:
        raise InputError(f"queries have {queries.shape[1]}-d features, the gallery {gallery.shape[1]}-d")
    distances = torch.cdist(queries.double(), gallery.double())
    if exclude is not None:
        distances = distances.masked_fill(exclude, float("inf"))
    k = min(k, gallery.shape[0] - (int(exclude.sum(1).max()) if exclude is not None else 0))
    d, i = distances.topk(k, dim=1, largest=False)
    return d.float(), i


def neighbours(trained: Trained, query_files: list[Path], gallery, k: int, output: Path | str,
               batch_size: int = 32) -> tuple[Path, torch.Tensor, list[list[Path]]]:
    """Draw each query and its k nearest gallery images; returns (PNG, distances, neighbour paths).
    `gallery` is (features, paths), e.g. from `load_features`, or a list of image files."""
    features, paths = gallery if isinstance(gallery, tuple) else (extract(trained, gallery, batch_size), gallery)
    queries = extract(trained, query_files, batch_size)
    same = torch.tensor([[q.resolve() == p.resolve() for p in paths] for q in query_files])
    d, idx = nearest(queries, features, k, same)
    near = [[paths[j] for j in row] for row in idx.tolist()]
    classes = [[folder_class(p, trained.classes) or "" for p in [q, *row]] for q, row in zip(query_files, near)]
    fig = plot_neighbours([displayable(load_image(q)) for q in query_files],
                          [[displayable(load_image(p)) for p in row] for row in near], d.tolist(), classes)
    return save(fig, output), d, near


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m alexnet.features", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--checkpoint", required=True, help="checkpoint written by python -m alexnet.train")
    common.add_argument("-b", "--batch-size", default=32, type=POSITIVE_INT, help="images per batch (default: 32)")
    common.add_argument("--device", default=None, help=DEVICE_HELP)
    common.add_argument("--kernels", default="torch", choices=kernels.BACKENDS, help="backend (default: torch)")
    sub = p.add_subparsers(dest="command", required=True)
    e = sub.add_parser("extract", parents=[common], help="fc7 features of images to an .npz")
    e.add_argument("images", nargs="+", metavar="IMAGE_OR_FOLDER", help="image files or folders of them")
    e.add_argument("-o", "--output", default="features.npz", help=".npz to write (default: features.npz)")
    n = sub.add_parser("neighbours", parents=[common], help="PNG of query images and their nearest gallery images")
    n.add_argument("queries", nargs="+", metavar="IMAGE_OR_FOLDER", help="query image files or folders of them")
    n.add_argument("--gallery", nargs="+", required=True,
                   help="an .npz from `extract`, or image files and folders, to search")
    n.add_argument("-k", default=6, type=POSITIVE_INT, help="neighbours per query (default: 6)")
    n.add_argument("-o", "--output", default="neighbours.png", help="PNG to write (default: neighbours.png)")
    return p


def main(argv=None):
    args = get_args_parser().parse_args(argv)
    check_output_file(args.output, "-o")
    try:
        trained = load_trained(args.checkpoint, resolve_device(args.device), args.kernels)
        if args.command == "extract":
            files = image_files(args.images)
            out = save_features(args.output, extract(trained, files, args.batch_size), files)
            print(f"{len(files)} images, fc7 features: {out}")
            return out
        if len(args.gallery) == 1 and args.gallery[0].endswith(".npz"):
            gallery = load_features(args.gallery[0])
        else:
            gallery = image_files(args.gallery)
        png, d, near = neighbours(trained, image_files(args.queries), gallery, args.k, args.output, args.batch_size)
    except (CheckpointError, InputError) as e:
        raise SystemExit(f"error: {e}") from e
    print(png)
    return png


if __name__ == "__main__":
    main()
