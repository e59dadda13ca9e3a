"""The same loader as data.dali's, on PIL and torch.utils.data.DataLoader: the baseline DALI is
measured against, and the path for machines without DALI (`python -m alexnet.train --data-loader pil`).

    loader = PilLoader(train_plan(samples, 128, seed=0, epoch=0), 128, "cuda", workers=8)
    for images, labels in loader: ...   # (128, 3, 227, 227) float32, (128,) int64 on cuda

It runs the same data.plans plans, so it yields the same samples, crops, flips and lighting, in the
same order and shapes: decode, turn upright by the EXIF orientation, convert to 8-bit RGB (`open_rgb`), shorter side to 256 (PIL's antialiased bilinear
filter; DALI's linear resize with antialiasing differs from it by a level or so on edges), the
crop at the plan's position rounded as DALI rounds it, the flip, then minus the plan's mean, CHW.
Workers are processes (DataLoader's), one image each at a time.
"""

import math

import numpy as np
import torch
from PIL import Image, ImageOps
from torch.utils.data import DataLoader, Dataset, default_collate

from data.check import check_file
from data.plans import CROP, RESIZE_SHORTER, TEN_CROPS, EpochPlan, PlanLoader, bad_files_error


def open_rgb(path) -> Image.Image:
    """The image at `path` as a photo viewer shows it and DALI's decoder gives it: turned upright by
    its EXIF orientation, 8-bit RGB, 16-bit grey scaled to 8 bits (PIL's convert would clip it)."""
    with Image.open(path) as image:
        image = ImageOps.exif_transpose(image)
    if image.mode.startswith("I;16"):
        image = Image.fromarray((np.asarray(image, np.float32) / 257).round().astype(np.uint8))
    return image.convert("RGB")


def resize_shorter(image: Image.Image, size: int = RESIZE_SHORTER) -> Image.Image:
    """`image` with its shorter side scaled to `size` and the other side in proportion, rounded."""
    w, h = image.size
    scale = size / min(w, h)
    return image.resize((round(w * scale), round(h * scale)), Image.BILINEAR)


def crop(image: Image.Image, x: float, y: float, mirror: int) -> np.ndarray:
    """The CROP x CROP window whose left/top edge is at fraction x/y of the slack (rounded half up,
    as DALI does), flipped if `mirror`, as an HWC uint8 array."""
    w, h = image.size
    left, top = math.floor(x * (w - CROP) + 0.5), math.floor(y * (h - CROP) + 0.5)
    window = image.crop((left, top, left + CROP, top + CROP))
    if mirror:
        window = window.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return np.asarray(window)


class _PlanDataset(Dataset):
    """Item i of the plan: (image(s) float32, label), or (None, 'path: reason') if it does not decode."""

    def __init__(self, plan: EpochPlan, prepared: bool):
        self.plan, self.prepared = plan, prepared

    def __len__(self):
        return len(self.plan)

    def __getitem__(self, i: int):
        p = self.plan
        try:
            image = open_rgb(p.paths[i])
            image = image if self.prepared else resize_shorter(image)
        except Exception as e:  # reported by the loader, in its own process, without a worker's traceback
            return None, f"{p.paths[i]}: {check_file(p.paths[i]) or e}"
        crops = TEN_CROPS if p.ten_crop else [(p.crop_x[i], p.crop_y[i], p.mirror[i])]
        pixels = np.stack([crop(image, x, y, m) for x, y, m in crops]).astype(np.float32) - p.mean[i]
        images = torch.from_numpy(pixels).permute(0, 3, 1, 2)  # (crops, 3, CROP, CROP)
        return (images if p.ten_crop else images[0]).contiguous(), int(p.labels[i])


def _collate(items):
    """A batch as DataLoader makes it, or the list of 'path: reason' of its files that failed."""
    bad = [reason for images, reason in items if images is None]
    return bad or default_collate(items)


class PilLoader(PlanLoader):
    """data.dali.DaliLoader's interface and outputs on PIL: iterates (images, labels (B,) int64) on
    `device` for one plan from batch `start_batch`; `workers` loading processes (0: in this one)."""

    def __iter__(self):
        if len(self) == 0:
            return
        loader = DataLoader(_PlanDataset(self.plan, self.prepared), self.batch_size, num_workers=self.workers,
                            sampler=range(self.start_batch * self.batch_size, len(self.plan)),
                            collate_fn=_collate, pin_memory=self.device.type == "cuda",
                            generator=torch.Generator())  # its own: seeding workers leaves torch's global RNG alone
        for batch in loader:
            if isinstance(batch[0], str):
                raise bad_files_error(batch)
            images, labels = batch
            yield images.to(self.device, self.dtype, non_blocking=True), labels.to(self.device, non_blocking=True)
