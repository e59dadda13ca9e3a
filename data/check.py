"""Check a dataset before training: decode every image once and list the files that fail.

    python -m data.check /data/imagenet                    # writes bad_files.txt; exit code 1 if any
    python -m data.check /data/imagenet -o bad.txt -j 8    # the list elsewhere, 8 processes
    python -m alexnet.train --data-path /data/imagenet --exclude-list bad.txt

DALI cannot skip a sample mid-epoch, so a file it cannot decode stops training (the loader then
names it). This decodes every file the loaders would read (train and val) with PIL, in parallel,
and reports the ones that are empty, not an image, truncated or corrupt, or in a format DALI's
decoder does not take (DALI reads JPEG, PNG, BMP, TIFF, PNM, JPEG 2000 and WebP; not GIF, for one).
Both decoders go by a file's content, not its name: a PNG named .JPEG decodes fine in both and is
not reported; nor are grayscale and CMYK JPEGs, which both convert to RGB. Nor, since both decoders
take it without an error, is a JPEG whose compressed data is corrupt but whose header and end marker
are whole: it decodes to a garbled picture, and training uses it as it is.

The list has one line per bad file, `<path relative to ROOT><TAB><reason>`, after a `#` comment
line; `--exclude-list` on `python -m alexnet.train` reads it and leaves those files out.
"""

import argparse
import io
import os
import sys
import time
from multiprocessing import Pool
from pathlib import Path

from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from data.folder import DatasetError, load_splits

# PIL's names for the formats DALI's image decoder takes (MPO: a camera JPEG with extra frames).
DALI_FORMATS = {"JPEG", "MPO", "PNG", "BMP", "TIFF", "PPM", "JPEG2000", "WEBP"}
QUICK_IN_PROCESS = 2000  # quick_check_all starts processes for more files than this


def available_cpus() -> int:
    """The CPUs this process may run on (its affinity mask: a container's or a job's share, not the machine's)."""
    return len(os.sched_getaffinity(0))


def progress(items, total: int, desc: str, bar: bool | None = None, unit: str = "img"):
    """Yield `items` (`total` of them) and show how far they got: a tqdm bar on a terminal, or with
    `bar` True; otherwise (a log file, a cluster job) a plain line on stdout at every 5 %."""
    if sys.stderr.isatty() if bar is None else bar:
        yield from tqdm(items, total=total, desc=desc, unit=unit, dynamic_ncols=True)
        return
    every, start = max(1, total // 20), time.perf_counter()
    for done, item in enumerate(items, 1):
        yield item
        if done % every == 0 or done == total:
            print(f"{desc}: {done}/{total} {unit}, {done / (time.perf_counter() - start):.0f} {unit}/s", flush=True)


def check_file(path: str | Path) -> str | None:
    """Why `path` cannot be trained on, or None if it decodes."""
    try:
        size = os.path.getsize(path)
    except OSError as e:
        return f"unreadable: {e.strerror or e}"
    if size == 0:
        return "empty (0 bytes)"
    try:
        with Image.open(path) as image:
            if image.format not in DALI_FORMATS:
                return f"{image.format} image, a format DALI's decoder does not take"
            image.load()  # decodes every pixel: a truncated or corrupt file raises here
            if image.mode in ("I", "F"):  # data.pil.open_rgb reads 8- and 16-bit pixels as DALI does, not these
                return f"32-bit pixels (PIL mode {image.mode}), which DALI and PIL do not read alike"
    except UnidentifiedImageError:
        return "not an image"
    except OSError as e:
        return f"truncated or corrupt: {e.strerror or e}"
    except Exception as e:  # PIL's plugins raise SyntaxError, ValueError, ... on corrupt data
        return f"corrupt: {type(e).__name__}: {e}"
    return None


# How a whole file of these formats ends: JPEG's end-of-image marker, PNG's IEND chunk.
END_MARKERS = {"JPEG": b"\xff\xd9", "MPO": b"\xff\xd9", "PNG": b"IEND\xaeB`\x82"}


def quick_check(path: str | Path, data: bytes | None = None) -> str | None:
    """Why `path` cannot be trained on, or None if it looks right, from its header and how it ends;
    `data`, given, is the file's content, already read. A JPEG or PNG that does not end with its end
    marker (truncated, or with data appended, as some phones do) and a file of any other format are
    decoded in full by `check_file`: DALI's decoder can crash on a cut-off PNG instead of failing."""
    try:
        with Image.open(path if data is None else io.BytesIO(data)) as image:
            if image.format not in DALI_FORMATS:
                return f"{image.format} image, a format DALI's decoder does not take"
            end = END_MARKERS.get(image.format)
            if end is not None:
                image.fp.seek(-len(end), os.SEEK_END)
            if end is None or image.fp.read(len(end)) != end:
                return check_file(path)
    except Exception:
        return check_file(path) or "unreadable"  # names what is wrong: empty, unreadable, not an image, ...
    return None


def quick_check_all(paths: list[str], workers: int) -> list[str]:
    """'path: reason' for each of `paths` that `quick_check` rejects, with `workers` processes for many."""
    if len(paths) < QUICK_IN_PROCESS:
        reasons = list(map(quick_check, paths))
    else:
        with Pool(workers) as pool:
            reasons = pool.map(quick_check, paths, chunksize=256)
    return [f"{path}: {reason}" for path, reason in zip(paths, reasons) if reason]


def check_dataset(root: Path, workers: int, bar: bool | None = None) -> list[tuple[str, str]]:
    """(path relative to root, reason) for every bad file the loaders would read under `root`;
    `bar`: as `progress` takes it."""
    _, train, val = load_splits(root)
    paths = [p for p, _ in train + val]
    with Pool(workers) as pool:
        reasons = list(progress(pool.imap(check_file, paths, chunksize=32), len(paths), f"checking {root}", bar))
    return [(str(Path(p).relative_to(root)), r) for p, r in zip(paths, reasons) if r]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m data.check", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("root", help="dataset folder (train/<class>/*, val/...)")
    p.add_argument("-o", "--output", default="bad_files.txt",
                   help="where to write the list of bad files (default: bad_files.txt)")
    p.add_argument("-j", "--workers", type=int, default=available_cpus(),
                   help=f"decoding processes (default: {available_cpus()}, the CPUs this process may use)")
    args = p.parse_args(argv)
    if args.workers < 1:
        p.error(f"-j/--workers must be >= 1, got {args.workers}")
    root = Path(args.root)
    try:
        bad = check_dataset(root, args.workers)
    except DatasetError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    Path(args.output).write_text(f"# python -m data.check {root}: {len(bad)} bad files\n"
                                 + "".join(f"{path}\t{reason}\n" for path, reason in bad))
    for path, reason in bad:
        print(f"{path}: {reason}")
    print(f"{len(bad)} bad files; list written to {args.output}"
          + (f" (train with --exclude-list {args.output} to leave them out)" if bad else ""))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
