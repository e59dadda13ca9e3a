"""What the commands share: argparse number types, the --device flag, output paths checked before the
work, and top-k accuracy."""

import argparse
import math
import os
from pathlib import Path

import torch


def _number(kind, low, strict=False, high=math.inf):
    """An argparse type: a finite `kind` (int or float) >= low (> low if strict) and <= high, else an
    error naming the flag."""
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number of type {kind.__name__}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
        if value < low or (strict and value == low):
            raise argparse.ArgumentTypeError(f"must be {'>' if strict else '>='} {low}, got {text}")
        if value > high:
            raise argparse.ArgumentTypeError(f"must be <= {high}, got {text}")
        return value
    return parse


POSITIVE_INT, COUNT, POSITIVE, NON_NEGATIVE = _number(int, 1), _number(int, 0), _number(float, 0, True), _number(float, 0)
SEED = _number(int, 0, high=2**32 - 1)  # the plans seed a generator with seed * 1_000_003 + epoch: fits in 64 bits
DEVICE_HELP = "cpu, cuda or cuda:N (default: cuda if there is one, else cpu)"


def resolve_device(name: str | None) -> torch.device:
    """--device as a torch.device, or an error naming it. A CUDA device is made the current one, as the
    torchrun path does: Triton launches on the current device, not on its tensors'."""
    if name is None:
        return resolve_device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise SystemExit(f"error: --device {name!r} is not a device ({e})") from e
    if device.type not in ("cpu", "cuda"):
        raise SystemExit(f"error: --device {name}: only cpu and cuda are supported")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit(f"error: --device {name} asked for, but torch sees no CUDA device")
        if device.index is not None:  # plain "cuda" is the current device already
            if device.index >= torch.cuda.device_count():
                raise SystemExit(f"error: --device {name}: torch sees {torch.cuda.device_count()} CUDA device(s)")
            torch.cuda.set_device(device)
    return device


def check_output_file(path: Path | str, flag: str) -> Path:
    """`path` as a file the command can write, checked before the work: an error naming `flag` and the
    path when it is a folder, under a file, or in a folder this user cannot write."""
    path = Path(path)
    if path.is_dir():
        raise SystemExit(f"error: {flag} {path} is a folder: give a file name")
    parent = path.parent
    while not parent.exists():  # the folders that will be made
        parent = parent.parent
    if not parent.is_dir():
        raise SystemExit(f"error: {flag} {path}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise SystemExit(f"error: {flag} {path} is not writable")
    return path


def topk_hits(logits: torch.Tensor, target: torch.Tensor, ks=(1, 5)) -> list[torch.Tensor]:
    """For each k, a (N,) bool tensor: whether the sample's label is among its k highest scores."""
    top = logits.topk(min(max(ks), logits.shape[1]), dim=1).indices
    hit = top == target[:, None]
    return [hit[:, :k].any(dim=1) for k in ks]
