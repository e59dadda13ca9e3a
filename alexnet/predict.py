"""Classify images: the five most probable classes of each, with their probabilities.

    python -m alexnet.predict photo.jpg --checkpoint output/checkpoint.pth
    python -m alexnet.predict photos/ cat.png --checkpoint output/checkpoint.pth --json > predictions.json

Images may be files or folders (searched recursively), of any size and any format PIL reads; each
goes through the validation transform (shorter side 256, centre 227 crop, mean subtraction).
"""

import argparse
import json
from pathlib import Path

import kernels
from alexnet.checkpoint import CheckpointError
from alexnet.cli import DEVICE_HELP, POSITIVE_INT, resolve_device
from alexnet.inference import InputError, Trained, image_files, load_trained, run


def predict(trained: Trained, files: list[Path], top: int = 5, batch_size: int = 32) -> list[dict]:
    """For each file: {"path", "top": [{"class", "prob"}, ...]} with the `top` most probable classes."""
    probs = run(trained, files, batch_size).softmax(1)
    values, indices = probs.topk(min(top, probs.shape[1]), dim=1)
    return [{"path": str(f), "top": [{"class": trained.classes[i], "prob": p} for p, i in zip(v.tolist(), ix.tolist())]}
            for f, v, ix in zip(files, values, indices)]


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m alexnet.predict", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("images", nargs="+", metavar="IMAGE_OR_FOLDER", help="image files or folders of them")
    p.add_argument("--checkpoint", required=True, help="checkpoint written by python -m alexnet.train")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.add_argument("-b", "--batch-size", default=32, type=POSITIVE_INT, help="images per batch (default: 32)")
    p.add_argument("--device", default=None, help=DEVICE_HELP)
    p.add_argument("--kernels", default="torch", choices=kernels.BACKENDS, help="backend to run on (default: torch)")
    return p


def main(argv=None) -> list[dict]:
    args = get_args_parser().parse_args(argv)
    try:
        trained = load_trained(args.checkpoint, resolve_device(args.device), args.kernels)
        results = predict(trained, image_files(args.images), batch_size=args.batch_size)
    except (CheckpointError, InputError) as e:
        raise SystemExit(f"error: {e}") from e
    if args.json:
        print(json.dumps(results, indent=1))
    else:
        for r in results:
            print(r["path"])
            for t in r["top"]:
                print(f"  {100 * t['prob']:6.2f} %  {t['class']}")
    return results


if __name__ == "__main__":
    main()
