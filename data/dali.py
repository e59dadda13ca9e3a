"""DALI pipelines: the paper's train transform and a centre-crop val transform.

    train: decode, shorter side to 256, random 227x227 crop, horizontal flip (p=0.5), mean subtraction
    val:   decode, shorter side to 256, centre 227x227 crop, mean subtraction

Decoding runs on the GPU ("mixed") when the loader's device is CUDA, on the CPU otherwise.

Which file goes where in an epoch, and each sample's crop position and flip, are drawn here in
Python from a generator seeded by (seed, epoch), not by DALI's random operators: an epoch is then a
pure function of the seed, so a run resumed mid-epoch sees exactly the samples and crops an
uninterrupted run would, and the pipeline has no hidden state to checkpoint.
"""

from dataclasses import dataclass

import numpy as np
import torch
from nvidia.dali import fn, pipeline_def, types
from nvidia.dali.plugin.pytorch import DALIGenericIterator

# Per-channel means of ImageNet's RGB pixels on the 0..255 scale. The paper subtracts the mean
# image; subtracting the per-channel mean is the common equivalent. There is no division by a std.
MEAN_RGB = (123.68, 116.78, 103.94)
RESIZE_SHORTER = 256
CROP = 227


@dataclass
class EpochPlan:
    """The samples of one epoch in order, with each one's augmentation."""
    paths: list[str]
    labels: np.ndarray  # (n,) int64
    crop_x: np.ndarray  # (n,) float32 in [0, 1]: crop window's left edge as a fraction of the slack
    crop_y: np.ndarray  # (n,) float32 in [0, 1]
    mirror: np.ndarray  # (n,) int32, 1 = flip horizontally

    def __len__(self):
        return len(self.paths)


def train_plan(samples: list[tuple[str, int]], batch_size: int, seed: int, epoch: int) -> EpochPlan:
    """A shuffled epoch with random crops and flips, cut to whole batches (each epoch drops a
    different remainder, so every sample is seen over the run)."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(len(samples), generator=generator)
    n = len(samples) // batch_size * batch_size
    if n == 0:
        raise ValueError(f"the train split has {len(samples)} images, fewer than one batch of {batch_size}")
    order = order[:n].tolist()
    crops = torch.rand(n, 2, generator=generator).numpy().astype(np.float32)
    mirror = (torch.rand(n, generator=generator) < 0.5).numpy().astype(np.int32)
    return EpochPlan([samples[i][0] for i in order], np.array([samples[i][1] for i in order], dtype=np.int64),
                     crops[:, 0], crops[:, 1], mirror)


def val_plan(samples: list[tuple[str, int]]) -> EpochPlan:
    """Every sample once, in order, centre-cropped and unflipped."""
    n = len(samples)
    return EpochPlan([p for p, _ in samples], np.array([label for _, label in samples], dtype=np.int64),
                     np.full(n, 0.5, np.float32), np.full(n, 0.5, np.float32), np.zeros(n, np.int32))


class _PlanSource:
    """DALI external source: batch i of the plan as (encoded files, labels, crop x, crop y, mirror)."""

    def __init__(self, plan: EpochPlan, batch_size: int, start_batch: int):
        self.plan, self.batch_size, self.start_batch = plan, batch_size, start_batch

    def __call__(self, iteration: int):
        lo = (self.start_batch + iteration) * self.batch_size
        if lo >= len(self.plan):
            raise StopIteration
        rows = range(lo, min(lo + self.batch_size, len(self.plan)))
        p = self.plan
        return ([np.fromfile(p.paths[i], dtype=np.uint8) for i in rows],
                [p.labels[i:i + 1] for i in rows],
                [p.crop_x[i] for i in rows], [p.crop_y[i] for i in rows], [p.mirror[i] for i in rows])


@pipeline_def
def _pipeline(source, gpu: bool):
    encoded, labels, crop_x, crop_y, mirror = fn.external_source(source=source, num_outputs=5, batch=True)
    images = fn.decoders.image(encoded, device="mixed" if gpu else "cpu", output_type=types.RGB)
    images = fn.resize(images, resize_shorter=RESIZE_SHORTER, interp_type=types.INTERP_LINEAR)
    images = fn.crop_mirror_normalize(images, dtype=types.FLOAT, output_layout="CHW", crop=(CROP, CROP),
                                      crop_pos_x=crop_x, crop_pos_y=crop_y, mirror=mirror,
                                      mean=list(MEAN_RGB), std=[1.0, 1.0, 1.0])
    return images, labels


class DaliLoader:
    """Iterates (images (B, 3, 227, 227) float32, labels (B,) int64) on `device` for one plan,
    starting at batch `start_batch` (to resume mid-epoch). The last batch may be smaller."""

    def __init__(self, plan: EpochPlan, batch_size: int, device: torch.device | str = "cpu",
                 workers: int = 2, start_batch: int = 0):
        self.plan, self.batch_size, self.start_batch = plan, batch_size, start_batch
        self.device, self.workers = torch.device(device), workers

    def __len__(self):
        return max(0, -(-len(self.plan) // self.batch_size) - self.start_batch)

    def __iter__(self):
        if len(self) == 0:
            return
        gpu = self.device.type == "cuda"
        pipe = _pipeline(_PlanSource(self.plan, self.batch_size, self.start_batch), gpu,
                         batch_size=self.batch_size, num_threads=self.workers,
                         device_id=(self.device.index or 0) if gpu else None, seed=0)
        for batch in DALIGenericIterator(pipe, ["images", "labels"]):
            out = batch[0]
            yield out["images"].to(self.device), out["labels"].view(-1).to(self.device)
