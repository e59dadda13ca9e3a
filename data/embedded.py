"""The embedded sample dataset: ten classes of shapes, generated deterministically as JPEGs.

Nothing can be downloaded at run time, so the default `--data-path` is a small dataset this
module draws itself, in the ImageNet folder layout (`train/<class>/*.JPEG`, `val/<class>/*.JPEG`).
Each image is a filled shape of a random colour, size, rotation and position on a cluttered
background of a random gradient, noise and distractor strokes. Colour carries no information
about the class, so a network has to learn shape; the clutter and JPEG artefacts keep it from
being trivial. Image sizes vary (160-400 px a side) so the resize/crop path is exercised.

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

CLASSES = ("arrow", "circle", "cross", "crescent", "diamond", "hexagon", "ring", "square", "star", "triangle")
IMAGES_PER_CLASS = {"train": 130, "val": 30}
VERSION = 1  # bump when the drawing changes, so stale caches are regenerated


def default_root() -> Path:
    """Where the embedded dataset lives: $ALEXNET_DATA_HOME, else ~/.cache/alexnet-triton."""
    home = os.environ.get("ALEXNET_DATA_HOME") or Path.home() / ".cache" / "alexnet-triton"
    return Path(home) / f"embedded-v{VERSION}"


def _regular_polygon(n, radius, angle, inner=None):
    """Vertices of a regular n-gon (or an n-pointed star when `inner` radius is given), at 0,0."""
    points = []
    steps = 2 * n if inner else n
    for i in range(steps):
        r = inner if inner and i % 2 else radius
        a = angle + 2 * math.pi * i / steps
        points.append((r * math.cos(a), r * math.sin(a)))
    return points


def _rotated(points, angle):
    c, s = math.cos(angle), math.sin(angle)
    return [(x * c - y * s, x * s + y * c) for x, y in points]


def _draw_shape(draw, name, cx, cy, r, angle, fill, background):
    """Draw one class's shape of radius ~r centred at (cx, cy)."""
    def poly(points):
        draw.polygon([(cx + x, cy + y) for x, y in points], fill=fill)

    if name == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif name == "ring":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
        draw.ellipse([cx - 0.55 * r, cy - 0.55 * r, cx + 0.55 * r, cy + 0.55 * r], fill=background)
    elif name == "crescent":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
        dx, dy = 0.45 * r * math.cos(angle), 0.45 * r * math.sin(angle)
        draw.ellipse([cx + dx - 0.85 * r, cy + dy - 0.85 * r, cx + dx + 0.85 * r, cy + dy + 0.85 * r], fill=background)
    elif name == "square":
        poly(_regular_polygon(4, r, angle))
    elif name == "diamond":  # a rhombus: one diagonal much longer than the other
        poly(_rotated([(r, 0), (0, 0.5 * r), (-r, 0), (0, -0.5 * r)], angle))
    elif name == "triangle":
        poly(_regular_polygon(3, r, angle))
    elif name == "hexagon":
        poly(_regular_polygon(6, r, angle))
    elif name == "star":
        poly(_regular_polygon(5, r, angle, inner=0.45 * r))
    elif name == "cross":
        w = 0.3 * r
        poly(_rotated([(-w, -r), (w, -r), (w, -w), (r, -w), (r, w), (w, w), (w, r), (-w, r),
                       (-w, w), (-r, w), (-r, -w), (-w, -w)], angle))
    elif name == "arrow":
        poly(_rotated([(-r, -0.2 * r), (0.2 * r, -0.2 * r), (0.2 * r, -0.6 * r), (r, 0),
                       (0.2 * r, 0.6 * r), (0.2 * r, 0.2 * r), (-r, 0.2 * r)], angle))
    else:
        raise ValueError(f"unknown shape {name!r}")


def render(split: str, class_index: int, index: int) -> tuple[Image.Image, int]:
    """Image `index` of class `class_index` in `split`, and the JPEG quality to save it with."""
    rng = np.random.default_rng([VERSION, ("train", "val").index(split), class_index, index])
    width, height = (int(v) for v in rng.integers(160, 401, size=2))

    # Background: a linear gradient between two random colours, plus pixel noise.
    c0, c1 = rng.uniform(0, 255, size=(2, 3))
    t = np.linspace(0, 1, width)[None, :, None] * np.ones((height, 1, 1))
    if rng.random() < 0.5:
        t = np.linspace(0, 1, height)[:, None, None] * np.ones((1, width, 1))
    pixels = c0 + (c1 - c0) * t + rng.normal(0, 12, size=(height, width, 3))
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    background = tuple(int(v) for v in (c0 + c1) / 2)

    # Distractor strokes, then the object, at least 90 levels away from the mean background.
    for _ in range(rng.integers(2, 7)):
        xy = rng.uniform(0, 1, size=4) * [width, height, width, height]
        colour = tuple(int(v) for v in rng.uniform(0, 255, size=3))
        draw.line(list(xy), fill=colour, width=int(rng.integers(1, 5)))
    while True:
        fill = rng.uniform(0, 255, size=3)
        if np.abs(fill - background).sum() > 90:
            break
    short = min(width, height)
    r = short * rng.uniform(0.18, 0.32)
    cx = width / 2 + rng.uniform(-0.15, 0.15) * width
    cy = height / 2 + rng.uniform(-0.15, 0.15) * height
    _draw_shape(draw, CLASSES[class_index], cx, cy, r, rng.uniform(0, 2 * math.pi),
                tuple(int(v) for v in fill), background)
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
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default=None, help=f"where to put it (default: {default_root()})")
    args = parser.parse_args(argv)
    print(ensure_embedded(args.root))


if __name__ == "__main__":
    main()
