"""The embedded sample dataset: ten classes of textures, generated deterministically as JPEGs.

Nothing can be downloaded at run time, so the default `--data-path` is a small dataset this
module draws itself, in the ImageNet folder layout (`train/<class>/*.JPEG`, `val/<class>/*.JPEG`).
Each image is a patch (ellipse or rectangle, random size and place) of one class's texture
(checks, crosshatch, dots, rings, stripes in four orientations, waves, zigzag) in two random
colours, with a random period and phase and a slightly jittered orientation, on a random gradient
with pixel noise and distractor strokes. Colour carries no information about the class; the
texture does, at a scale conv1's filters see, so AlexNet learns it in ~280 steps (docs/paper.md), while
the near-neighbour classes (the four stripes, checks vs dots), the strokes, blur and JPEG
artefacts keep it from being trivial. Image sizes vary (160-400 px a side) so the resize/crop path
is exercised. (Version 1 drew shapes; telling rotated, recoloured shapes apart took a small CNN
far longer than a 10-minute CPU run.)

Every image is a pure function of (split, class, index), so the files are identical on every
machine. Generation writes into a temporary folder and renames it, so an interrupted run never
leaves a half-made dataset behind.

    python -m data.embedded [--root DIR]     # generate (or find) it and print where it is
"""

import argparse
import math
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

CLASSES = ("checks", "crosshatch", "dots", "rings", "stripes-antidiagonal", "stripes-diagonal",
           "stripes-horizontal", "stripes-vertical", "waves", "zigzag")  # sorted: class index = position
IMAGES_PER_CLASS = {"train": 130, "val": 30}
VERSION = 2  # bump when the drawing changes, so stale caches are regenerated


def default_root() -> Path:
    """Where the embedded dataset lives: $ALEXNET_DATA_HOME, else ~/.cache/alexnet-triton."""
    home = os.environ.get("ALEXNET_DATA_HOME") or Path.home() / ".cache" / "alexnet-triton"
    return Path(home) / f"embedded-v{VERSION}"


def _pattern(name: str, height: int, width: int, period: float, rng: np.random.Generator) -> np.ndarray:
    """(height, width) bool mask of class `name`'s texture: a period of `period` pixels, a random
    phase and an orientation jittered by up to ~11 degrees."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    phase, jitter = rng.uniform(0, 2 * math.pi), rng.uniform(-0.2, 0.2)
    if name.startswith("stripes-"):
        theta = {"horizontal": math.pi / 2, "vertical": 0.0, "diagonal": math.pi / 4,
                 "antidiagonal": 3 * math.pi / 4}[name.removeprefix("stripes-")] + jitter
        return np.sin(2 * math.pi * (x * math.cos(theta) + y * math.sin(theta)) / period + phase) > 0
    c, s = math.cos(jitter), math.sin(jitter)
    u, v = x * c + y * s, -x * s + y * c  # the texture's own axes

    def wave(t, length=period):
        return np.sin(2 * math.pi * t / length + phase)

    if name == "checks":
        return (wave(u) > 0) ^ (wave(v) > 0)
    if name == "crosshatch":
        return (np.abs(wave(u, 2 * period)) < 0.3) | (np.abs(wave(v, 2 * period)) < 0.3)
    if name == "dots":
        return wave(u) * wave(v) > 0.5
    if name == "rings":  # concentric, around a random centre
        return wave(np.hypot(x - rng.uniform(0, width), y - rng.uniform(0, height))) > 0
    if name == "waves":
        return wave(v + 0.25 * period * np.sin(2 * math.pi * u / (2.5 * period))) > 0
    if name == "zigzag":
        return wave(v + np.abs(u / period % 2 - 1) * period) > 0
    raise ValueError(f"unknown texture {name!r}")


def render(split: str, class_index: int, index: int) -> tuple[Image.Image, int]:
    """Image `index` of class `class_index` in `split`, and the JPEG quality to save it with."""
    rng = np.random.default_rng([VERSION, ("train", "val").index(split), class_index, index])
    width, height = (int(v) for v in rng.integers(160, 401, size=2))

    # Background: a linear gradient between two random colours.
    c0, c1 = rng.uniform(0, 255, size=(2, 3))
    t = np.linspace(0, 1, width)[None, :, None] * np.ones((height, 1, 1))
    if rng.random() < 0.5:
        t = np.linspace(0, 1, height)[:, None, None] * np.ones((1, width, 1))
    pixels = c0 + (c1 - c0) * t

    # The textured patch: an ellipse or a rectangle of two random, well-separated colours.
    period = min(width, height) * rng.uniform(0.05, 0.1)
    mask = _pattern(CLASSES[class_index], height, width, period, rng)
    while True:
        ink, paper = rng.uniform(0, 255, size=(2, 3))
        if np.abs(ink - paper).sum() > 150:
            break
    texture = np.where(mask[..., None], ink, paper)
    patch = Image.new("L", (width, height), 0)
    rx, ry = width * rng.uniform(0.35, 0.6), height * rng.uniform(0.35, 0.6)
    cx, cy = width * (0.5 + rng.uniform(-0.15, 0.15)), height * (0.5 + rng.uniform(-0.15, 0.15))
    draw_patch = ImageDraw.Draw(patch).ellipse if rng.random() < 0.5 else ImageDraw.Draw(patch).rectangle
    draw_patch([cx - rx, cy - ry, cx + rx, cy + ry], fill=255)
    inside = np.asarray(patch, np.float32)[..., None] / 255
    pixels = pixels * (1 - inside) + texture * inside + rng.normal(0, 12, size=(height, width, 3))
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))

    # Distractor strokes over everything: oriented lines that are not the class's.
    draw = ImageDraw.Draw(image)
    for _ in range(rng.integers(2, 7)):
        xy = rng.uniform(0, 1, size=4) * [width, height, width, height]
        colour = tuple(int(v) for v in rng.uniform(0, 255, size=3))
        draw.line(list(xy), fill=colour, width=int(rng.integers(1, 5)))
    if rng.random() < 0.3:
        image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 1.5)))
    return image, int(rng.integers(70, 96))


def write_dataset(root: Path, images_per_class: dict[str, int] = IMAGES_PER_CLASS,
                  num_classes: int = len(CLASSES)) -> None:
    """Draw the first `num_classes` classes with `images_per_class[split]` images each into `root`."""
    for split, count in images_per_class.items():
        for c, name in enumerate(CLASSES[:num_classes]):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                image, quality = render(split, c, i)
                image.save(folder / f"{name}_{i:04d}.JPEG", format="JPEG", quality=quality)


def ensure_embedded(root: Path | str | None = None, progress: bool = True) -> Path:
    """Return the embedded dataset's folder, generating it first if it is not there yet."""
    root = Path(root) if root is not None else default_root()
    if (root / "train").is_dir() and (root / "val").is_dir():
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    if progress:
        total = sum(IMAGES_PER_CLASS.values()) * len(CLASSES)
        print(f"Generating the embedded dataset ({total} JPEGs) in {root} ...", flush=True)
    tmp = Path(tempfile.mkdtemp(prefix=root.name + ".tmp-", dir=root.parent))
    try:
        write_dataset(tmp)
        try:
            tmp.rename(root)
        except OSError:  # another process finished first: keep theirs
            if not (root / "train").is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m data.embedded", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default=None, help=f"where to put it (default: {default_root()})")
    args = parser.parse_args(argv)
    print(ensure_embedded(args.root))


if __name__ == "__main__":
    main()
