"""Prepare a dataset once, as the paper did: every image upright, shorter side 256, centre 256x256 crop.

    python -m data.prepare /data/imagenet /data/imagenet-256            # all cores, quality 90
    python -m data.prepare /data/imagenet /data/imagenet-256 -j 8 --quality 95
    python -m alexnet.train --data-path /data/imagenet-256

"We down-sampled the images to a fixed resolution of 256 x 256" (the paper, section 2): each image of
SRC's train and val splits (the layouts `data` reads, a flat val with its label file included) is
turned upright by its EXIF orientation, scaled so its shorter side is 256 with PIL's bilinear filter
(antialiased: the filter data.pil's loader uses, and what DALI's linear resize with antialiasing
approximates), centre-cropped to 256x256 (the centre placed as DALI places a centre crop) and
written as a JPEG at the same relative path under DST. The loaders then only decode and crop: they
recognise DST by the marker file prepare writes last (data.folder.PREPARED_MARKER).

Quality 90 by default, measured on 400 images of the embedded dataset against the unencoded
result: mean |error| 4.2 levels (PSNR 32.4 dB) at 24.8 KiB an image, vs 3.4 levels at 34.8 KiB for
quality 95 and 4.9 levels at 19.8 KiB for 85: most of 95's fidelity at 0.71 of its size
(docs/commands.md has the table).

Resumable: each image is written to a temporary file and renamed, so a file with its final name is
whole, and a second run skips every image already written. Files that do not decode are named on
screen and in DST/bad_files.txt (data.check's format) and skipped; a flat val's label file is
copied without their lines. Before the bulk of the work it prints the rate measured on the first
images, with the time and size that rate means for this dataset and for ImageNet, and stops if
DST's disk cannot hold the estimated output.
"""

import argparse
import json
import os
import shutil
import sys
import time
from multiprocessing import Pool
from pathlib import Path

from tqdm import tqdm

from data.check import available_cpus, check_file, progress
from data.folder import PREPARED_MARKER, PREPARED_SIZE, PREPARED_VERSION, VAL_LABELS, DatasetError, load_splits
from data.pil import open_rgb, resize_shorter

DEFAULT_QUALITY = 90
IMAGENET_IMAGES = 1_281_167 + 50_000  # ILSVRC-2012 train + val
SAMPLE = 256  # images timed first for the estimate
PARTIAL = ".partial"  # suffix of a file being written; not an image extension, so never read as one
SPACE_MARGIN = 1.2  # free space wanted per estimated byte
BAD_FILES = "bad_files.txt"


def prepare_image(source: str | Path, quality: int = DEFAULT_QUALITY):
    """The prepared image of `source`: upright, shorter side 256 (PIL's bilinear filter), centre 256x256."""
    image = resize_shorter(open_rgb(source), PREPARED_SIZE)
    w, h = image.size
    # The centre as DALI places a crop at 0.5: the slack's half rounded up.
    left, top = -(-(w - PREPARED_SIZE) // 2), -(-(h - PREPARED_SIZE) // 2)
    return image.crop((left, top, left + PREPARED_SIZE, top + PREPARED_SIZE))


def _prepare_file(task: tuple[str, str, int]) -> tuple[str, str | None, int]:
    """(source, why it failed or None, bytes written) for one (source, destination, quality) task;
    the destination appears only whole, by renaming its temporary file."""
    source, destination, quality = task
    partial = destination + PARTIAL
    try:
        prepare_image(source).save(partial, format="JPEG", quality=quality)
        os.replace(partial, destination)
        return source, None, os.path.getsize(destination)
    except Exception as e:  # one bad file must not stop the run: it is reported and skipped
        Path(partial).unlink(missing_ok=True)
        return source, check_file(source) or f"{type(e).__name__}: {e}", 0


def _write_atomic(path: Path, text: str):
    partial = path.with_name(path.name + PARTIAL)
    partial.write_text(text)
    os.replace(partial, path)


def _estimate(done: int, seconds: float, nbytes: int, workers: int, remaining: int) -> tuple[int, str]:
    """(bytes the remaining images need, the estimate's line) from `done` images timed."""
    rate, per_image = done / seconds, nbytes / done
    return int(remaining * per_image), (
        f"measured {rate:.0f} img/s with {workers} processes, {per_image / 1024:.1f} KiB an image on {done} images: "
        f"the remaining {remaining} images ~{_duration(remaining / rate)} and {remaining * per_image / 2**30:.2f} GiB; "
        f"ImageNet ({IMAGENET_IMAGES:,} images) ~{_duration(IMAGENET_IMAGES / rate)} and "
        f"{IMAGENET_IMAGES * per_image / 2**30:.0f} GiB")


def _duration(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


def _marker(quality: int, complete: bool, images: int = 0, bad: int = 0) -> str:
    return json.dumps(dict(version=PREPARED_VERSION, size=PREPARED_SIZE, quality=quality, complete=complete,
                           images=images, bad=bad)) + "\n"


def _claim(destination: Path, quality: int):
    """Refuse a DST that holds another preparation's images (other quality), else mark it as in progress."""
    marker = destination / PREPARED_MARKER
    if marker.is_file():
        try:
            earlier = json.loads(marker.read_text())["quality"]
        except (ValueError, KeyError, TypeError) as e:
            raise DatasetError(f"{marker} is not a marker data.prepare wrote ({e}); remove it or choose another DST")
        if earlier != quality:
            raise DatasetError(f"{destination} holds images prepared at --quality {earlier}; pass --quality "
                               f"{earlier} to finish it, or choose another DST")
    elif destination.is_dir() and any(destination.iterdir()):
        raise DatasetError(f"{destination} is not empty and was not made by data.prepare; choose an empty or new DST")
    destination.mkdir(parents=True, exist_ok=True)
    _write_atomic(marker, _marker(quality, complete=False))


def prepare_dataset(source: Path, destination: Path, workers: int, quality: int = DEFAULT_QUALITY,
                    bar: bool | None = None) -> list[tuple[str, str]]:
    """Prepare `source` into `destination`; (path relative to source, reason) for each bad file skipped.
    `bar`: as data.check.progress takes it."""
    source, destination = source.resolve(), destination.resolve()
    if destination == source or any(destination.is_relative_to(source / split) for split in ("train", "val")):
        raise DatasetError(f"DST {destination} must not be SRC or a folder inside its train or val split")
    _, train, val = load_splits(source)
    _claim(destination, quality)
    for stale in destination.rglob("*" + PARTIAL):  # left by an interrupted run
        stale.unlink()
    relative = [Path(p).relative_to(source) for p, _ in train + val]
    for folder in sorted({r.parent for r in relative}):  # every class folder, even one whose files all fail
        (destination / folder).mkdir(parents=True, exist_ok=True)
    todo = [(str(source / r), str(destination / r), quality) for r in relative if not (destination / r).is_file()]
    print(f"preparing {source} -> {destination}: {len(relative)} images, {len(relative) - len(todo)} already "
          f"done, {len(todo)} to do, {workers} processes, JPEG quality {quality}", flush=True)

    bad, written = [], 0
    start = time.perf_counter()
    with Pool(workers) as pool:
        results = progress(pool.imap_unordered(_prepare_file, todo, chunksize=8), len(todo), "preparing", bar)
        for done, (path, reason, nbytes) in enumerate(results, 1):
            written += nbytes
            if reason:
                bad.append((str(Path(path).relative_to(source)), reason))
                tqdm.write(f"bad file skipped: {path}: {reason}")
            if done == min(SAMPLE, len(todo)) and done - len(bad) > 0:
                need, line = _estimate(done - len(bad), time.perf_counter() - start, written, workers, len(todo) - done)
                tqdm.write(line)
                free = shutil.disk_usage(destination).free
                if need * SPACE_MARGIN > free:
                    raise DatasetError(f"{destination} has {free / 2**30:.2f} GiB free; the remaining images need "
                                       f"~{need / 2**30:.2f} GiB (x{SPACE_MARGIN} margin). Free some space and run "
                                       f"again: the images written so far are kept")

    _finish(source, destination, quality, len(relative), bad)
    return bad


def _finish(source: Path, destination: Path, quality: int, images: int, bad: list[tuple[str, str]]):
    """Write the bad-file list and the label file, then the marker that says the folder is complete."""
    _write_atomic(destination / BAD_FILES, f"# python -m data.prepare {source}: {len(bad)} bad files\n"
                  + "".join(f"{path}\t{reason}\n" for path, reason in bad))
    labels = source / VAL_LABELS
    if labels.is_file():
        skipped = {Path(path).name for path, _ in bad if Path(path).parent == Path("val")}
        lines = [line for line in labels.read_text().splitlines(keepends=True)
                 if not line.split() or line.split()[0] not in skipped]
        _write_atomic(destination / VAL_LABELS, "".join(lines))
    _write_atomic(destination / PREPARED_MARKER,
                  _marker(quality, complete=True, images=images - len(bad), bad=len(bad)))


def main(argv=None) -> int:
    cpus = available_cpus()
    p = argparse.ArgumentParser(prog="python -m data.prepare", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", metavar="SRC",
                   help="dataset folder (train/<class>/*, val/<class>/* or val/* + val_labels.txt)")
    p.add_argument("destination", metavar="DST", help="where to write the prepared dataset (new, empty, or an "
                                                      "earlier data.prepare run's to finish it)")
    p.add_argument("-j", "--workers", type=int, default=cpus,
                   help=f"processes (default: {cpus}, the CPUs this process may use)")
    p.add_argument("--quality", type=int, default=DEFAULT_QUALITY,
                   help=f"JPEG quality, 1-95 (default: {DEFAULT_QUALITY})")
    args = p.parse_args(argv)
    if args.workers < 1:
        p.error(f"-j/--workers must be >= 1, got {args.workers}")
    if not 1 <= args.quality <= 95:
        p.error(f"--quality must be in 1..95 (PIL's range; above 95 only grows the file), got {args.quality}")
    try:
        bad = prepare_dataset(Path(args.source), Path(args.destination), args.workers, args.quality)
    except DatasetError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"done: {args.destination}" + (f"; {len(bad)} bad files skipped, listed in "
                                          f"{Path(args.destination) / BAD_FILES}" if bad else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
