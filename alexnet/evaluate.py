"""Evaluate a checkpoint on a validation split: top-1 and top-5 accuracy, per class, and what it confuses.

    python -m alexnet.evaluate --checkpoint output/checkpoint.pth                 # embedded dataset, centre crop
    python -m alexnet.evaluate --checkpoint output/checkpoint.pth --ten-crop      # the paper's test-time procedure
    python -m alexnet.evaluate --checkpoint C --data-path /data/imagenet --device cuda -b 256 --json eval.json

Centre crop: the one 227x227 crop training validates on. Ten-crop (the paper's): the softmax
averaged over the four corner crops, the centre crop and the mirror images of all five. The
network is rebuilt as the variant the checkpoint was trained as (its ablation switches), and the
data's classes must be the checkpoint's. Accuracies are in percent, as training reports them
(the paper quotes error rates: 100 - accuracy).
"""

import argparse
import json
import sys
from pathlib import Path

import torch
from tqdm import tqdm

import kernels
from alexnet.checkpoint import CheckpointError
from alexnet.cli import DEVICE_HELP, POSITIVE_INT, check_output_file, resolve_device, topk_hits
from alexnet.inference import Trained, check_classes, load_trained
from data.check import available_cpus
from data.dali import DaliLoader
from data.plans import val_plan
from data.embedded import ensure_embedded
from data.folder import DatasetError, load_splits


@torch.no_grad()
def predict_split(trained: Trained, samples: list[tuple[str, int]], batch_size: int, workers: int = 2,
                  ten_crop: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(probabilities (N, classes), labels (N,)) on the CPU for `samples`, centre crop or ten-crop."""
    device = next(trained.model.parameters()).device
    loader = DaliLoader(val_plan(samples, ten_crop=ten_crop), batch_size, device, workers)
    probs, labels = [], []
    for images, target in tqdm(loader, desc="ten-crop" if ten_crop else "centre crop", leave=False,
                               dynamic_ncols=True, disable=not sys.stderr.isatty()):
        if ten_crop:  # (B, 10, 3, 227, 227): score all crops as one batch, then average each image's ten
            b, crops = images.shape[:2]
            p = trained.model(images.flatten(0, 1)).float().softmax(1).view(b, crops, -1).mean(1)
        else:
            p = trained.model(images).float().softmax(1)
        probs.append(p.cpu())
        labels.append(target.cpu())
    return torch.cat(probs), torch.cat(labels)


def percent(hits: torch.Tensor) -> float:
    """The share of True in `hits`, in percent."""
    return 100 * hits.sum().item() / hits.numel()


def summarize(probs: torch.Tensor, labels: torch.Tensor, classes: list[str], pairs: int = 10) -> dict:
    """Top-1/top-5 accuracy (%) overall and per class, and the `pairs` most frequent (true, predicted) mistakes."""
    hit1, hit5 = topk_hits(probs, labels)
    predicted = probs.argmax(1)
    per_class = []
    for c, name in enumerate(classes):
        mine = labels == c
        n = int(mine.sum())
        if n:
            per_class.append({"class": name, "images": n, "top1": percent(hit1[mine]), "top5": percent(hit5[mine])})
    confusion = torch.zeros(len(classes), len(classes), dtype=torch.long)
    confusion.index_put_((labels, predicted), torch.ones_like(labels), accumulate=True)
    mistakes = confusion.clone().fill_diagonal_(0)
    counts, flat = mistakes.flatten().topk(min(pairs, mistakes.numel()))
    confused = [{"true": classes[i // len(classes)], "predicted": classes[i % len(classes)], "images": int(n),
                 "of_true": int(n) / int(confusion[i // len(classes)].sum())}
                for n, i in zip(counts.tolist(), flat.tolist()) if n > 0]
    return {"images": len(labels), "top1": percent(hit1), "top5": percent(hit5), "per_class": per_class,
            "confused": confused, "confusion": confusion.tolist()}


def report(summary: dict, title: str) -> str:
    """The summary as the text the command prints."""
    lines = [f"{title}: {summary['images']} images, top-1 {summary['top1']:.2f} %, top-5 {summary['top5']:.2f} %", "",
             f"{'class':<24} {'images':>6} {'top-1 %':>8} {'top-5 %':>8}"]
    lines += [f"{r['class']:<24} {r['images']:>6} {r['top1']:>8.1f} {r['top5']:>8.1f}" for r in summary["per_class"]]
    lines += ["", "most confused (true -> predicted: images, share of the true class)"]
    lines += [f"  {r['true']} -> {r['predicted']}: {r['images']} ({100 * r['of_true']:.0f} %)"
              for r in summary["confused"]] or ["  none: every top-1 prediction is right"]
    return "\n".join(lines)


def evaluate_checkpoint(path, data_path=None, batch_size=64, device="cpu", workers=2, ten_crop=False,
                        kernels_name="torch", exclude_list=None) -> dict:
    """Load checkpoint `path` and summarize it on `data_path`'s val split (default: the embedded
    dataset), leaving out the files `exclude_list` names."""
    root = Path(data_path) if data_path else ensure_embedded()
    classes, _, val_samples = load_splits(root, exclude_list)
    trained = load_trained(path, device, kernels_name)
    check_classes(trained, classes, root)
    probs, labels = predict_split(trained, val_samples, batch_size, workers, ten_crop)
    return summarize(probs, labels, classes)


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m alexnet.evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="checkpoint written by python -m alexnet.train")
    p.add_argument("--data-path", default=None,
                   help="folder with train/<class>/* and val/<class>/* (default: the embedded dataset)")
    p.add_argument("--ten-crop", action="store_true", help="average the softmax over ten crops (the paper's test)")
    p.add_argument("-b", "--batch-size", default=64, type=POSITIVE_INT,
                   help="images per batch (ten-crop runs ten times as many crops) (default: 64)")
    p.add_argument("--device", default=None, help=DEVICE_HELP)
    p.add_argument("--kernels", default="torch", choices=kernels.BACKENDS, help="backend to run on (default: torch)")
    p.add_argument("-j", "--workers", default=available_cpus(), type=POSITIVE_INT,
                   help=f"data-loading threads (default: {available_cpus()}, the CPUs this process may use)")
    p.add_argument("--exclude-list", default=None,
                   help="leave out the files this list names (written by python -m data.check ROOT)")
    p.add_argument("--json", metavar="FILE", help="also write the summary (and the confusion matrix) as JSON")
    return p


def main(argv=None) -> dict:
    args = get_args_parser().parse_args(argv)
    if args.json:
        check_output_file(args.json, "--json")
    try:
        summary = evaluate_checkpoint(args.checkpoint, args.data_path, args.batch_size, resolve_device(args.device),
                                      args.workers, args.ten_crop, args.kernels, args.exclude_list)
    except (CheckpointError, DatasetError) as e:
        raise SystemExit(f"error: {e}") from e
    print(report(summary, f"{args.checkpoint}, {'ten-crop' if args.ten_crop else 'centre crop'}"))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(summary, indent=1) + "\n")
        print(f"summary: {args.json}")
    return summary


if __name__ == "__main__":
    main()
