"""DALI pipelines: the paper's train transform, a centre-crop val transform and ten-crop.

    train:    decode, shorter side to 256, random 227x227 crop, horizontal flip (p=0.5),
              PCA lighting noise, mean subtraction
    val:      decode, shorter side to 256, centre 227x227 crop, mean subtraction
    ten-crop: decode, shorter side to 256, ten 227x227 crops, mean subtraction

Decoding runs on the GPU ("mixed") when the loader's device is CUDA, on the CPU otherwise. Images
come out as float32 CHW on the 0..255 scale minus the per-channel mean (no division by a std).

The samples, crops, flips and lighting of an epoch come from a data.plans plan (seeded,
shardable, resumable mid-epoch); `data.pil.PilLoader` runs the same plans through PIL.
"""

from pathlib import Path

import numpy as np
from nvidia.dali import fn, pipeline_def, types
from nvidia.dali.plugin.pytorch import DALIGenericIterator

from data.check import quick_check
from data.folder import DatasetError
from data.plans import CROP, RESIZE_SHORTER, TEN_CROPS, EpochPlan, PlanLoader, bad_files_error, find_bad_files

PREFETCH = 2  # batches DALI prepares ahead: a decode error is looked for in them too


def _read(path: str) -> np.ndarray:
    """The bytes of the file at `path`, once its header shows an image DALI's decoder takes.
    DALI 2.4's CPU decoder can crash the process (SIGSEGV in a worker thread) on a file whose header
    it cannot parse, such as a text file or a cut-off header, instead of raising an error: such a
    file must never reach it. A file whose header is whole but whose data is not fails in DALI with
    an error, which the loader turns into one naming the file."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise bad_files_error([f"{path}: unreadable: {e.strerror or e}"]) from e
    if reason := quick_check(path, data):
        raise bad_files_error([f"{path}: {reason}"])
    return np.frombuffer(data, dtype=np.uint8)


class _PlanSource:
    """DALI external source: batch i of the plan as (encoded files, labels, means), then, unless the
    plan is ten-crop, (crop x, crop y, mirror)."""

    def __init__(self, plan: EpochPlan, batch_size: int, start_batch: int):
        self.plan, self.batch_size, self.start_batch = plan, batch_size, start_batch

    def __call__(self, iteration: int):
        lo = (self.start_batch + iteration) * self.batch_size
        if lo >= len(self.plan):
            raise StopIteration
        rows = range(lo, min(lo + self.batch_size, len(self.plan)))
        p = self.plan
        out = ([_read(p.paths[i]) for i in rows], [p.labels[i:i + 1] for i in rows],
               [p.mean[i] for i in rows])
        if p.ten_crop:
            return out
        return *out, [p.crop_x[i] for i in rows], [p.crop_y[i] for i in rows], [p.mirror[i] for i in rows]


@pipeline_def
def _pipeline(source, gpu: bool, ten_crop: bool):
    encoded, labels, mean, *placement = fn.external_source(source=source, num_outputs=3 if ten_crop else 6, batch=True)
    images = fn.decoders.image(encoded, device="mixed" if gpu else "cpu", output_type=types.RGB)
    if ten_crop:
        images = fn.resize(images, resize_shorter=RESIZE_SHORTER, interp_type=types.INTERP_LINEAR)
        crops = [fn.crop_mirror_normalize(images, dtype=types.FLOAT, output_layout="CHW", crop=(CROP, CROP),
                                          crop_pos_x=x, crop_pos_y=y, mirror=m, mean=mean, std=[1.0, 1.0, 1.0])
                 for x, y, m in TEN_CROPS]
        return fn.stack(*crops, axis=0), labels
    # One crop: resize_crop_mirror resamples only the crop's window (what resize, crop and flip give,
    # to a level at a few pixels), ~1.5x faster on the CPU than resizing the whole image first.
    crop_x, crop_y, mirror = placement
    images = fn.resize_crop_mirror(images, resize_shorter=RESIZE_SHORTER, interp_type=types.INTERP_LINEAR,
                                   crop=(CROP, CROP), crop_pos_x=crop_x, crop_pos_y=crop_y, mirror=mirror)
    return fn.crop_mirror_normalize(images, dtype=types.FLOAT, output_layout="CHW", mean=mean,
                                    std=[1.0, 1.0, 1.0]), labels


class DaliLoader(PlanLoader):
    """Iterates (images, labels (B,) int64) on `device` for one plan, starting at batch `start_batch`
    (to resume mid-epoch). Images are (B, 3, 227, 227) float32, or (B, 10, 3, 227, 227) for a
    ten-crop plan. The last batch may be smaller.

    A file the decoder rejects stops the epoch with a DatasetError naming it (found by decoding the
    failing batch's files with PIL); `python -m data.check` finds them all beforehand."""

    def __iter__(self):
        if len(self) == 0:
            return
        gpu = self.device.type == "cuda"
        pipe = _pipeline(_PlanSource(self.plan, self.batch_size, self.start_batch), gpu, self.plan.ten_crop,
                         batch_size=self.batch_size, num_threads=self.workers, prefetch_queue_depth=PREFETCH,
                         device_id=(self.device.index or 0) if gpu else None, seed=0)
        batch = self.start_batch
        try:
            batches = iter(DALIGenericIterator(pipe, ["images", "labels"]))  # this runs the first batch
        except RuntimeError as e:
            raise self._decode_error(batch, e) from e
        while True:
            try:
                out = next(batches)[0]
            except StopIteration:
                return
            except RuntimeError as e:
                raise self._decode_error(batch, e) from e
            yield out["images"].to(self.device), out["labels"].view(-1).to(self.device)
            batch += 1

    def _decode_error(self, batch: int, error: Exception) -> DatasetError:
        """The error to raise when DALI failed on batch `batch` (or one it prefetched)."""
        paths = self.plan.paths[batch * self.batch_size:(batch + 1 + PREFETCH) * self.batch_size]
        bad = find_bad_files(paths)
        if bad:
            return bad_files_error(bad)
        return DatasetError(f"the data pipeline failed in batch {batch}, though PIL decodes all its files "
                            f"({paths[0]} ...): {error}")
