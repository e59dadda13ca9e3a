"""DALI pipelines: the paper's train transform, a centre-crop val transform and ten-crop.

    train:    decode, shorter side to 256, random 227x227 crop, horizontal flip (p=0.5),
              PCA lighting noise, mean subtraction
    val:      decode, shorter side to 256, centre 227x227 crop, mean subtraction
    ten-crop: decode, shorter side to 256, ten 227x227 crops, mean subtraction

On a dataset `python -m data.prepare` made (its images are already 256x256) there is no resize, and
the one-crop transforms decode only the crop's window (DALI's region-of-interest decode: exact, since
nothing is resampled); ten-crop decodes the whole image once.

Decoding runs on the GPU ("mixed": nvJPEG, with the share of the hardware JPEG decoder below) when
the loader's device is CUDA, on the CPU otherwise. Images come out on the 0..255 scale minus the
per-channel mean (no division by a std), in the dtype asked for (float32; float16 or bfloat16 for
mixed precision: DALI writes float16, and bfloat16 is cast from it on the loader's device, as DALI has
no bfloat16; a bf16 training step asks for float16 and casts the images itself, in the pass that makes
conv1's input: `decoded_dtype`) and in channels_last memory (NCHW shape, NHWC strides).

Reading and checking the files runs in worker processes (DALI's parallel external source), and DALI's
pipeline in a thread of the loader's own (`RunAhead`), never in the training thread: it only takes
finished batches. The samples, crops, flips and lighting of an epoch come from a data.plans plan
(seeded, shardable, resumable mid-epoch); `data.pil.PilLoader` runs the same plans through PIL.
"""

import contextlib
import io
import os
import queue
import threading
import time
from pathlib import Path

import numpy as np
import torch
from nvidia.dali import fn, pipeline_def, types
from nvidia.dali.plugin.pytorch import DALIGenericIterator
from PIL import Image

from data.check import quick_check
from data.folder import PREPARED_SIZE, DatasetError
from data.plans import CROP, RESIZE_SHORTER, TEN_CROPS, EpochPlan, PlanLoader, bad_files_error, find_bad_files

PREFETCH = 2  # batches DALI prepares ahead: a decode error is looked for in them too
HANDED_AHEAD = 2  # finished batches the loader's thread holds for the training thread
# Decoding threads per reading process: reading and checking a file takes ~40 us here, decoding and
# augmenting it 0.7-2 ms, and each process holds its batches in shared memory (and, started by spawn
# on a GPU machine, takes seconds to start), so a few readers feed many decoders.
THREADS_PER_READER = 4
# Share of the JPEG work nvJPEG gives the GPU's hardware JPEG decoder, by compute capability (GPUs
# without one ignore it). 0.65 is DALI's default, tuned on the A100 (sm_80); the H100/H200 (sm_90) have
# seven decoder engines, so they take a larger share. Starting values, not measured here:
# bench/test_data_pipeline.py's cuda cases are the way to tune them.
HW_DECODER_LOAD = {(8, 0): 0.65, (9, 0): 0.9}
DALI_DTYPES = {torch.float32: types.FLOAT, torch.float16: types.FLOAT16, torch.bfloat16: types.FLOAT16}


def _read(path: str, prepared: bool) -> np.ndarray:
    """The bytes of the file at `path`, once its header shows an image DALI's decoder takes (and, for
    a prepared dataset, a 256x256 one). DALI 2.4's CPU decoder can crash the process (SIGSEGV in a
    worker thread) on a file whose header it cannot parse, such as a text file or a cut-off header,
    instead of raising an error: such a file must never reach it. A file whose header is whole but
    whose data is not fails in DALI with an error, which the loader turns into one naming the file."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise bad_files_error([f"{path}: unreadable: {e.strerror or e}"]) from e
    if reason := quick_check(path, data):
        raise bad_files_error([f"{path}: {reason}"])
    if prepared:
        with Image.open(io.BytesIO(data)) as image:  # the header only
            if image.size != (PREPARED_SIZE, PREPARED_SIZE):
                raise bad_files_error([f"{path}: {image.width}x{image.height} in a prepared dataset, whose "
                                       f"images are {PREPARED_SIZE}x{PREPARED_SIZE}"])
    return np.frombuffer(data, dtype=np.uint8)


READER_WATCH_S = 1.0  # how often a reader process checks that the process it reads for is still alive
_watching = False  # in a reader process: whether its watchdog runs


def _exit_with(parent: int) -> None:
    """In a reader process: exit as soon as `parent` (the loader's process) has died. DALI's readers wait for
    work forever, so a run killed outright (SIGKILL, the OOM killer) would otherwise leave them behind."""
    global _watching
    if _watching or os.getpid() == parent:
        return
    _watching = True

    def watch():
        while os.getppid() == parent:
            time.sleep(READER_WATCH_S)
        os._exit(1)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _stacked(files: list[np.ndarray]) -> np.ndarray:
    """`files` as the rows of one (B, longest) uint8 array, each padded with zeros."""
    rows = np.zeros((len(files), max(map(len, files))), np.uint8)
    for row, data in zip(rows, files):
        row[:len(data)] = data
    return rows


class _PlanSource:
    """DALI external source, run in worker processes: batch i of the plan as (encoded files, one
    (B, 8) float32 array of each sample's label, mean RGB, crop x, crop y, mirror and file length).
    Handing each array over costs the training thread (~4 us here), so the small fields go as one
    array, not B lists; and a prepared dataset's files, all about one size, go as the rows of one
    padded array (~0.02 ms a batch instead of ~0.5 ms for B arrays), which the pipeline cuts back to
    their lengths. Other datasets' files go one by one: a few large ones would pad every row."""

    def __init__(self, plan: EpochPlan, batch_size: int, start_batch: int, prepared: bool):
        self.plan, self.batch_size, self.start_batch, self.prepared = plan, batch_size, start_batch, prepared
        self.parent = os.getpid()

    def __call__(self, iteration: int):
        _exit_with(self.parent)
        lo = (self.start_batch + iteration) * self.batch_size
        if lo >= len(self.plan):
            raise StopIteration
        rows = range(lo, min(lo + self.batch_size, len(self.plan)))
        p = self.plan
        files = [_read(p.paths[i], self.prepared) for i in rows]
        fields = np.column_stack([p.labels[rows], p.mean[rows], p.crop_x[rows], p.crop_y[rows], p.mirror[rows],
                                  [len(data) for data in files]])  # read for prepared files: < 2^24, exact
        return _stacked(files) if self.prepared else files, fields.astype(np.float32)


def hw_decoder_load(device: torch.device) -> float:
    """HW_DECODER_LOAD for `device`'s GPU generation (DALI's default 0.65 for the others)."""
    return HW_DECODER_LOAD.get(torch.cuda.get_device_capability(device), 0.65)


@pipeline_def
def _pipeline(source, ten_crop: bool, prepared: bool, dtype, decoder: dict, source_depth: int):
    encoded, fields = fn.external_source(source=source, num_outputs=2, batch=True, parallel=True,
                                         prefetch_queue_depth=source_depth)
    labels, mean = fn.cast(fields[0:1], dtype=types.INT64), fields[1:4]  # labels < 2^24: exact in float32
    crop_x, crop_y, mirror = fields[4], fields[5], fn.cast(fields[6], dtype=types.INT32)
    if prepared:  # the rows of one padded array: each cut back to its file
        encoded = fn.slice(encoded, shape=fn.cast(fields[7:8], dtype=types.INT32), axes=[0])
    normalize = dict(dtype=dtype, output_layout="HWC", mean=mean, std=[1.0, 1.0, 1.0])
    if ten_crop:
        images = fn.decoders.image(encoded, **decoder)
        if not prepared:
            images = fn.resize(images, resize_shorter=RESIZE_SHORTER, interp_type=types.INTERP_LINEAR)
        crops = [fn.crop_mirror_normalize(images, crop=(CROP, CROP), crop_pos_x=x, crop_pos_y=y, mirror=m, **normalize)
                 for x, y, m in TEN_CROPS]
        return fn.stack(*crops, axis=0), labels
    if prepared:  # nothing to resample: decode the crop's window alone, then flip
        images = fn.decoders.image_crop(encoded, crop=(CROP, CROP), crop_pos_x=crop_x, crop_pos_y=crop_y, **decoder)
        return fn.crop_mirror_normalize(images, mirror=mirror, **normalize), labels
    # One crop: resize_crop_mirror resamples only the crop's window (what resize, crop and flip give,
    # to a level at a few pixels), ~1.5x faster on the CPU than resizing the whole image first.
    images = fn.decoders.image(encoded, **decoder)
    images = fn.resize_crop_mirror(images, resize_shorter=RESIZE_SHORTER, interp_type=types.INTERP_LINEAR,
                                   crop=(CROP, CROP), crop_pos_x=crop_x, crop_pos_y=crop_y, mirror=mirror)
    return fn.crop_mirror_normalize(images, **normalize), labels


class RunAhead:
    """Iterates `batches()` (a generator function) run in a thread of its own, inside `context`, up to `depth`
    items ahead of the caller, in order: the calling (training) thread only takes finished items. The thread
    starts at once, so whatever the generator does before its first item (building a DALI pipeline, starting
    its reading processes) overlaps the caller's work until it asks for one. An exception from the generator
    is raised in the caller. close(), or dropping the iterator, stops the thread and waits for it to close the
    generator (a DALI pipeline is torn down in the thread that ran it). On CUDA the thread works on the
    device's default stream, as the training thread does, so the batches are ready, in stream order, for the
    kernels that read them."""

    def __init__(self, batches, depth: int, context=contextlib.nullcontext()):
        self._items, self._stop, self._done = queue.Queue(maxsize=depth), threading.Event(), False
        # the thread holds no reference to this object: dropping it is what closes it
        self._thread = threading.Thread(target=_run_ahead, args=(batches, context, self._items, self._stop),
                                        name="data loader", daemon=True)
        self._thread.start()

    def __iter__(self):
        return self

    def __next__(self):
        if self._done:
            raise StopIteration
        batch, error = self._items.get()
        if error is not None or batch is _END:
            self.close()
            if error is not None:
                try:
                    raise error
                finally:  # not kept in this frame, which its traceback holds: no cycle keeps the
                    del error  # generator's frames (a DALI pipeline) alive until a garbage collection
            raise StopIteration
        return batch

    def close(self) -> None:
        self._done = True
        self._stop.set()
        self._thread.join()

    def __del__(self):
        if hasattr(self, "_thread"):
            self.close()


_END = object()  # RunAhead's last item


def _run_ahead(batches, context, items: queue.Queue, stop: threading.Event) -> None:
    """RunAhead's thread: `batches()`'s items into `items`, then _END or the error it raised, until `stop`."""

    def offer(item) -> bool:
        while not stop.is_set():
            try:
                items.put(item, timeout=0.1)
                return True
            except queue.Full:
                pass
        return False

    try:  # whatever fails here, entering `context` included, reaches the caller: it never waits in vain
        with context:
            generator = batches()
            try:
                for batch in generator:
                    if not offer((batch, None)):
                        return
                offer((_END, None))
            finally:
                generator.close()
    except BaseException as e:  # the caller raises it, with its traceback
        offer((None, e))


class DaliLoader(PlanLoader):
    """Iterates (images, labels (B,) int64) on `device` for one plan, starting at batch `start_batch`
    (to resume mid-epoch). Images are (B, 3, 227, 227), or (B, 10, 3, 227, 227) for a ten-crop plan,
    of `dtype`, channels_last. The last batch may be smaller. `workers` DALI threads decode, and one
    process per THREADS_PER_READER of them (at least one) reads and checks the files.

    start() builds the pipeline (and starts its reading processes) at once, in the loader's thread, for the
    next loop to take: the trainer does so on a GPU, where those processes are spawned (seconds).

    A file the decoder rejects, or one removed or changed since the pre-flight check, stops the epoch
    with a DatasetError naming it (found by decoding the failing batches' files with PIL);
    `python -m data.check` finds them all beforehand."""

    _started = None

    def start(self) -> None:
        if self._started is None and len(self):
            self._started = self._run()

    def close(self) -> None:
        if self._started is not None:
            self._started.close()
            self._started = None

    def __iter__(self):
        started, self._started = self._started, None
        return started if started is not None else self._run()

    def _run(self):
        if len(self) == 0:
            return iter(())
        device = torch.cuda.device(self.device) if self.device.type == "cuda" else contextlib.nullcontext()
        return RunAhead(self._batches, HANDED_AHEAD, device)

    def _batches(self):
        gpu = self.device.type == "cuda"
        decoder = dict(device="mixed", hw_decoder_load=hw_decoder_load(self.device)) if gpu else dict(device="cpu")
        source = _PlanSource(self.plan, self.batch_size, self.start_batch, self.prepared)
        pipe = _pipeline(source, self.plan.ten_crop, self.prepared, DALI_DTYPES[self.dtype],
                         dict(output_type=types.RGB, **decoder), self._source_depth(),
                         batch_size=self.batch_size, num_threads=self.workers, prefetch_queue_depth=PREFETCH,
                         device_id=(self.device.index or 0) if gpu else None, seed=0, py_num_workers=self._readers(),
                         # fork is quick, but not once CUDA is set up in this process
                         py_start_method="spawn" if gpu or torch.cuda.is_initialized() else "fork")
        batch = self.start_batch
        try:
            batches = iter(DALIGenericIterator(pipe, ["images", "labels"]))  # this runs the first batch
        except Exception as e:  # a worker's error comes back as the type it had there
            raise self._decode_error(batch, e) from e
        while True:
            try:
                out = next(batches)[0]
            except StopIteration:
                return
            except Exception as e:
                raise self._decode_error(batch, e) from e
            images = out["images"].to(self.device)  # (B, [10,] H, W, C): channels last as NCHW, without a copy
            images = images.permute(0, 1, 4, 2, 3) if self.plan.ten_crop else images.permute(0, 3, 1, 2)
            yield images.to(self.dtype), out["labels"].view(-1).to(self.device)
            batch += 1

    @staticmethod
    def decoded_dtype(dtype: torch.dtype) -> torch.dtype:
        """DALI writes 16-bit images in float16 (bfloat16 is cast from it on the device): float16 for either."""
        return torch.float16 if dtype in (torch.float16, torch.bfloat16) else dtype

    def _readers(self) -> int:
        return -(-self.workers // THREADS_PER_READER)

    def _source_depth(self) -> int:
        """Batches the reading processes prepare ahead: one each keeps them all busy."""
        return max(PREFETCH, self._readers())

    def _decode_error(self, batch: int, error: Exception) -> DatasetError:
        """The error to raise when DALI failed on batch `batch` (or one it prefetched)."""
        ahead = PREFETCH + self._source_depth()
        paths = self.plan.paths[batch * self.batch_size:(batch + 1 + ahead) * self.batch_size]
        bad = find_bad_files(paths)
        if bad:
            return bad_files_error(bad)
        return DatasetError(f"the data pipeline failed in batch {batch}, though PIL decodes all its files "
                            f"({paths[0]} ...): {error}")
