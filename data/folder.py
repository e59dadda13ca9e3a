"""The dataset layout: ImageNet's `ROOT/train/<class>/*.JPEG`, and the validation split either as
class folders, `ROOT/val/<class>/*.JPEG`, or as one flat folder `ROOT/val/*.JPEG` plus a label
file `ROOT/val_labels.txt` with one `<file name> <class name>` line per image.

Class index = position of the class folder's name in sorted order of the train split, as in
torchvision's ImageFolder; the validation split is labelled with the train split's indices, so a
class missing from val is fine but a class val has and train lacks is an error.
"""

import json
from pathlib import Path

IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
VAL_LABELS = "val_labels.txt"


class DatasetError(ValueError):
    """The data folder is missing or not laid out as the loaders expect."""


def find_classes(split_dir: Path) -> list[str]:
    """Sorted class-folder names under `split_dir`."""
    if not split_dir.is_dir():
        raise DatasetError(f"{split_dir} does not exist or is not a folder; expected "
                           f"{split_dir.parent}/{{train,val}}/<class>/<image files>")
    classes = sorted(p.name for p in split_dir.iterdir() if p.is_dir())
    if not classes:
        raise DatasetError(f"{split_dir} has no class folders; expected {split_dir}/<class>/<image files>")
    return classes


def _images(folder: Path, recursive: bool = True) -> list[Path]:
    return sorted(p for p in (folder.rglob("*") if recursive else folder.iterdir())
                  if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def list_samples(split_dir: Path, classes: list[str]) -> list[tuple[str, int]]:
    """(path, class index) for every image file under `split_dir`, in sorted order.

    Every class folder present must name a class in `classes` and hold at least one image.
    """
    index = {name: i for i, name in enumerate(classes)}
    samples = []
    for name in find_classes(split_dir):
        if name not in index:
            raise DatasetError(f"{split_dir / name} is a class the train split does not have")
        files = _images(split_dir / name)
        if not files:
            raise DatasetError(f"{split_dir / name} holds no image files ({', '.join(IMAGE_EXTENSIONS)})")
        samples += [(str(p), index[name]) for p in files]
    return samples


def list_flat_samples(split_dir: Path, label_file: Path, classes: list[str]) -> list[tuple[str, int]]:
    """(path, class index) for every image file directly in `split_dir`, in sorted order, labelled
    by `label_file`'s `<file name> <class name>` lines: every image needs exactly one line, and every
    line an image."""
    index = {name: i for i, name in enumerate(classes)}
    labels = {}
    for number, line in enumerate(label_file.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split()
        where = f"{label_file}, line {number}"
        if len(fields) != 2:
            raise DatasetError(f"{where}: expected '<file name> <class name>', got {line!r}")
        name, label = fields
        if label not in index:
            raise DatasetError(f"{where}: class {label!r} is not a class folder of the train split")
        if name in labels:
            raise DatasetError(f"{where}: {name} is labelled twice")
        labels[name] = index[label]
    files = _images(split_dir, recursive=False)
    unlabelled = [p.name for p in files if p.name not in labels]
    if unlabelled:
        raise DatasetError(f"{len(unlabelled)} images in {split_dir} have no line in {label_file}, "
                           f"e.g. {unlabelled[0]}")
    missing = sorted(set(labels) - {p.name for p in files})
    if missing:
        raise DatasetError(f"{label_file} labels {len(missing)} files {split_dir} does not hold, e.g. {missing[0]}")
    return [(str(p), labels[p.name]) for p in files]


def read_exclude_list(path: Path | str) -> set[str]:
    """The paths (relative to the data root) in a list written by `python -m data.check`:
    one `<path><TAB><reason>` line per file; `#` lines are comments."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as e:
        raise DatasetError(f"exclude list {path}: {e.strerror or e}") from e
    return {line.split("\t")[0] for line in lines if line.strip() and not line.startswith("#")}


def load_splits(root: Path | str, exclude_list: Path | str | None = None
                ) -> tuple[list[str], list[tuple[str, int]], list[tuple[str, int]]]:
    """(class names, train samples, val samples) of the dataset at `root`, without the files named
    in `exclude_list` (a `python -m data.check` list; each must be a file of the dataset)."""
    root = Path(root)
    if not root.exists():
        raise DatasetError(f"data path {root} does not exist")
    classes = find_classes(root / "train")
    train = list_samples(root / "train", classes)
    val_dir, label_file = root / "val", root / VAL_LABELS
    flat = val_dir.is_dir() and not any(p.is_dir() for p in val_dir.iterdir())
    if flat and not label_file.is_file():
        raise DatasetError(f"{val_dir} has no class folders and there is no {label_file}; expected "
                           f"{val_dir}/<class>/<image files>, or {val_dir}/<image files> plus {label_file} "
                           f"with '<file name> <class name>' lines")
    val = list_flat_samples(val_dir, label_file, classes) if flat else list_samples(val_dir, classes)
    if exclude_list is None:
        return classes, train, val
    exclude = read_exclude_list(exclude_list)
    known = {Path(p).relative_to(root).as_posix() for p, _ in train + val}
    unknown = sorted(exclude - known)
    if unknown:
        raise DatasetError(f"exclude list {exclude_list} names {len(unknown)} files that are not images of {root}, "
                           f"e.g. {unknown[0]} (was it written for another folder?)")

    def keep(samples):
        return [(p, label) for p, label in samples if Path(p).relative_to(root).as_posix() not in exclude]
    train, val = keep(train), keep(val)
    if not val:
        raise DatasetError(f"exclude list {exclude_list} leaves no images in {val_dir}")
    return classes, train, val


# data.prepare writes this JSON file at the root of a dataset it prepared, {"complete": true, ...} once done.
PREPARED_MARKER = "prepared.json"
PREPARED_SIZE = 256  # a prepared image is PREPARED_SIZE x PREPARED_SIZE
PREPARED_VERSION = 1


def is_prepared(sample_path: str | Path) -> bool:
    """Whether the dataset holding `sample_path` (ROOT/train/<class>/file, ROOT/val/<class>/file or
    ROOT/val/file) is one data.prepare finished; an unfinished or unreadable marker is an error."""
    for root in Path(sample_path).parents[1:3]:
        marker = root / PREPARED_MARKER
        if not marker.is_file():
            continue
        try:
            info = json.loads(marker.read_text())
            valid = info["version"] == PREPARED_VERSION and info["size"] == PREPARED_SIZE
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise DatasetError(f"{marker} is unreadable or not data.prepare's marker ({e})") from e
        if not valid:
            raise DatasetError(f"{marker} is for version {info['version']} / size {info['size']}, not "
                               f"{PREPARED_VERSION} / {PREPARED_SIZE}: prepare {root} again")
        if not info.get("complete"):
            raise DatasetError(f"{root} is only partly prepared (its {PREPARED_MARKER} says so): run "
                               f"python -m data.prepare again to finish it")
        return True
    return False
