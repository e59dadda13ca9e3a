"""Epoch plans: which file goes where in an epoch, with each sample's crop, flip and lighting,
drawn in Python; data.dali.DaliLoader and data.pil.PilLoader run the same plans.

Which file goes where in an epoch, and each sample's crop position, flip and lighting, are drawn
in Python from a generator seeded by (seed, epoch), not by DALI's random operators: an epoch is
then a pure function of the seed, so a run resumed mid-epoch sees exactly the samples and crops an
uninterrupted run would, and the pipelines have no hidden state to checkpoint.

Sharding (`rank`, `world_size`): the train plan draws one permutation of the whole split and one
crop, flip and lighting per position of it, from the (seed, epoch) generator alone, so the draws do
not depend on the world size. It keeps the first len // (batch * world) * (batch * world) positions
(a different remainder is dropped each epoch) and gives rank r positions r, r + world, r + 2*world,
...: shards are disjoint, every rank gets the same number of whole batches, and global step k is
the k-th block of batch * world positions. The val plan gives rank r samples r, r + world, ...: the
shards cover every sample exactly once (their sizes differ by at most one), so summing the ranks'
counts gives exact totals.

Ten-crop (`val_plan(..., ten_crop=True)`): the loader yields images of shape (B, 10, 3, 227, 227):
crops 0-4 are the top-left, top-right, bottom-left, bottom-right and centre crops of the resized
image, and crop 5 + i is crop i mirrored. (torchvision's TenCrop holds the same ten crops, but
orders the mirrored half as the five crops of the mirrored image.)

PCA lighting (the paper's section 4.1): each train image gets 255 * EIGVEC @ (alpha * EIGVAL) added
to every pixel, alpha ~ N(0, lighting_std) per image and eigenvector, with the widely used PCA of
ImageNet's RGB pixels, which is on the 0..1 scale, hence the 255. The loaders fold it into the mean
they subtract, so it costs nothing.
"""

from dataclasses import dataclass, field

import numpy as np
import torch

from data.check import check_file
from data.folder import DatasetError, is_prepared

# Per-channel means of ImageNet's RGB pixels on the 0..255 scale. The paper subtracts the mean
# image; subtracting the per-channel mean is the common equivalent. There is no division by a std.
MEAN_RGB = (123.68, 116.78, 103.94)
RESIZE_SHORTER = 256
CROP = 227
# The widely used PCA of ImageNet's RGB pixels (0..1 scale): EIGVEC's columns are the eigenvectors.
EIGVAL = np.array([0.2175, 0.0188, 0.0045])
EIGVEC = np.array([[-0.5675, 0.7192, 0.4009],
                   [-0.5808, -0.0045, -0.8140],
                   [-0.5836, -0.6948, 0.4203]])
PIXEL_SCALE = 255.0  # the pipeline's pixels are 0..255, the PCA's 0..1
IMAGE_DTYPES = (torch.float32, torch.float16, torch.bfloat16)  # what the loaders can deliver
# Ten-crop: (crop_pos_x, crop_pos_y, mirror) of crops 0-9, as fractions of the slack.
TEN_CROPS = [(x, y, m) for m in (0, 1) for x, y in ((0, 0), (1, 0), (0, 1), (1, 1), (0.5, 0.5))]


@dataclass
class EpochPlan:
    """The samples of one epoch (or one rank's shard of it) in order, with each one's augmentation."""
    paths: list[str]
    labels: np.ndarray  # (n,) int64
    crop_x: np.ndarray  # (n,) float32 in [0, 1]: crop window's left edge as a fraction of the slack
    crop_y: np.ndarray  # (n,) float32 in [0, 1]
    mirror: np.ndarray  # (n,) int32, 1 = flip horizontally
    lighting: np.ndarray = None  # (n, 3) float32: RGB offset added to every pixel (0..255 scale); None = 0
    ten_crop: bool = False  # yield the ten crops of each image instead of the one above
    mean: np.ndarray = field(init=False)  # (n, 3) float32: what the loaders subtract, MEAN_RGB - lighting

    def __post_init__(self):
        n = len(self.paths)
        if self.lighting is None:
            self.lighting = np.zeros((n, 3), np.float32)
        for name in ("labels", "crop_x", "crop_y", "mirror", "lighting"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"EpochPlan.{name} has {len(getattr(self, name))} rows for {n} paths")
        self.mean = (np.array(MEAN_RGB, np.float32) - self.lighting).astype(np.float32)

    def __len__(self):
        return len(self.paths)


def lighting_offsets(alpha: np.ndarray) -> np.ndarray:
    """(n, 3) alphas -> (n, 3) RGB offsets on the 0..255 scale: 255 * EIGVEC @ (alpha * EIGVAL) per row."""
    return (PIXEL_SCALE * (alpha * EIGVAL) @ EIGVEC.T).astype(np.float32)


def _check_shard(rank: int, world_size: int):
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in 0..world_size-1 (world_size {world_size})")


def train_plan(samples: list[tuple[str, int]], batch_size: int, seed: int, epoch: int, rank: int = 0,
               world_size: int = 1, lighting_std: float = 0.1) -> EpochPlan:
    """Rank `rank`'s shard of a shuffled epoch, with random crops, flips and PCA lighting
    (`lighting_std` 0 turns it off), cut to the same number of whole batches on every rank."""
    _check_shard(rank, world_size)
    if lighting_std < 0:
        raise ValueError(f"lighting_std must be >= 0, got {lighting_std}")
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    total = len(samples)
    order = torch.randperm(total, generator=generator).tolist()
    crops = torch.rand(total, 2, generator=generator).numpy().astype(np.float32)
    mirror = (torch.rand(total, generator=generator) < 0.5).numpy().astype(np.int32)
    alpha = torch.randn(total, 3, generator=generator, dtype=torch.float64).numpy() * lighting_std
    n = total // (batch_size * world_size) * batch_size * world_size
    if n == 0:
        raise ValueError(f"the train split has {total} images, fewer than one batch of {batch_size}"
                         + (f" on each of {world_size} ranks" if world_size > 1 else ""))
    positions = np.arange(rank, n, world_size)
    return EpochPlan([samples[order[i]][0] for i in positions],
                     np.array([samples[order[i]][1] for i in positions], dtype=np.int64),
                     crops[positions, 0], crops[positions, 1], mirror[positions], lighting_offsets(alpha[positions]))


def val_plan(samples: list[tuple[str, int]], rank: int = 0, world_size: int = 1, ten_crop: bool = False) -> EpochPlan:
    """Rank `rank`'s shard of the samples (every `world_size`-th one), in order, centre-cropped and
    unflipped, or each as its ten crops if `ten_crop`."""
    _check_shard(rank, world_size)
    shard = samples[rank::world_size]
    n = len(shard)
    return EpochPlan([p for p, _ in shard], np.array([label for _, label in shard], dtype=np.int64),
                     np.full(n, 0.5, np.float32), np.full(n, 0.5, np.float32), np.zeros(n, np.int32),
                     ten_crop=ten_crop)


def find_bad_files(paths: list[str]) -> list[str]:
    """'path: reason' for each of `paths` that does not decode."""
    return [f"{path}: {reason}" for path in paths if (reason := check_file(path))]


def bad_files_error(bad: list[str]) -> DatasetError:
    """The error a loader raises on meeting the files `bad` ('path: reason' each)."""
    return DatasetError("the data pipeline failed on " + "; ".join(bad) + "\n(run `python -m data.check ROOT` "
                        "to list every bad file, and pass its list to training's --exclude-list)")


class PlanLoader:
    """What the loaders share: one plan, cut into batches of `batch_size` from batch `start_batch`
    (to resume mid-epoch), put on `device` as `dtype` images, with `workers` threads or processes
    decoding. A dataset data.prepare made (found by its marker) is read without resizing."""

    def __init__(self, plan: EpochPlan, batch_size: int, device: torch.device | str = "cpu",
                 workers: int = 2, start_batch: int = 0, dtype: torch.dtype = torch.float32):
        if dtype not in IMAGE_DTYPES:
            raise ValueError(f"images can be {', '.join(map(str, IMAGE_DTYPES))}, not {dtype}")
        self.plan, self.batch_size, self.start_batch = plan, batch_size, start_batch
        self.device, self.workers, self.dtype = torch.device(device), workers, dtype
        self.prepared = len(plan) > 0 and is_prepared(plan.paths[0])

    def __len__(self):
        return max(0, -(-len(self.plan) // self.batch_size) - self.start_batch)

    @staticmethod
    def decoded_dtype(dtype: torch.dtype) -> torch.dtype:
        """The dtype to ask for, for images that are to become `dtype` in a pass their consumer makes anyway
        (AlexNet.input_form): the dtype the loader has them in before its own cast to `dtype`, where that cast
        runs on the device; here (a cast on the host, before the copy to the device, halves it) `dtype`."""
        return dtype

    def start(self) -> None:
        """Begin delivering batches now, ahead of the loop that will take them (the next iter() returns
        them), so that the loader's start-up overlaps other work. DaliLoader builds its pipeline and starts
        its reading processes (seconds on a GPU machine, where they are spawned); here, nothing to do."""

    def close(self) -> None:
        """Stop what start() began, if no loop took it."""
