"""The dataset layout: ImageNet's `ROOT/train/<class>/*.JPEG` and `ROOT/val/<class>/*.JPEG`.

Class index = position of the class folder's name in sorted order of the train split, as in
torchvision's ImageFolder; the validation split is labelled with the train split's indices, so a
class missing from val is fine but a class val has and train lacks is an error.
"""

from pathlib import Path

IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


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


def list_samples(split_dir: Path, classes: list[str]) -> list[tuple[str, int]]:
    """(path, class index) for every image file under `split_dir`, in sorted order.

    Every class folder present must name a class in `classes` and hold at least one image.
    """
    index = {name: i for i, name in enumerate(classes)}
    samples = []
    for name in find_classes(split_dir):
        if name not in index:
            raise DatasetError(f"{split_dir / name} is a class the train split does not have")
        files = sorted(p for p in (split_dir / name).rglob("*")
                       if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        if not files:
            raise DatasetError(f"{split_dir / name} holds no image files ({', '.join(IMAGE_EXTENSIONS)})")
        samples += [(str(p), index[name]) for p in files]
    return samples


def load_splits(root: Path | str) -> tuple[list[str], list[tuple[str, int]], list[tuple[str, int]]]:
    """(class names, train samples, val samples) of the dataset at `root`."""
    root = Path(root)
    if not root.exists():
        raise DatasetError(f"data path {root} does not exist")
    classes = find_classes(root / "train")
    return classes, list_samples(root / "train", classes), list_samples(root / "val", classes)
