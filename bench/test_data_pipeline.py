"""Images per second of the data loaders, on ImageNet-sized JPEGs and on the same images prepared, in one run.

    pytest bench/test_data_pipeline.py --benchmark-only

Every case runs the paper's train transform (decode, shorter side to 256, random 227 crop, flip, PCA
lighting, mean subtraction, float32 channels_last) at batch 128 on one of two versions of the same
images: "original", 320 JPEGs of 500x375 (ImageNet's typical size; the embedded dataset's textures
scaled up, quality 90), each twice; "prepared", the same JPEGs after `python -m data.prepare`
(256x256: the loader decodes only the crop's window and does not resize). DALI on the CPU with 1 and
with 2 threads (and as many reading processes), so the per-thread rate is read off directly; PIL with
a DataLoader process per core on the original images as the baseline; on a GPU machine DALI's "mixed"
decoder on both versions.

A round times the steady state: everything after the first batch, which pays for building the
pipeline or starting the workers (recorded as extra_info["startup_s"]). extra_info also records
img_per_s and train_thread_ms: the CPU time the training thread spends in the loader per batch
(time.thread_time around each batch: the reading, checking and decoding the workers do is not in it;
DALI's receiving the files from its reading processes and handing the batch over is). make_plan,
make_plans, first_batch and the_rest are bench.report's code path too.
"""

import contextlib
import io
import time

import pytest
import torch
from PIL import Image

from data.check import available_cpus
from data.dali import DaliLoader
from data.embedded import write_dataset
from data.folder import load_splits
from data.pil import PilLoader
from data.plans import train_plan
from data.prepare import prepare_dataset

BATCH, PER_CLASS, REPEAT, ROUNDS = 128, 64, 2, 3  # the embedded dataset's 10 classes: 640 images a plan
ORIGINAL_SIZE = (500, 375)
ORIGINAL_QUALITY = 90
WORKERS = available_cpus()
GPU = torch.cuda.is_available()
CASES = ([("dali", "cpu", images, threads) for images in ("original", "prepared") for threads in (1, 2)]
         + [("pil", "cpu", "original", WORKERS)]
         + [("dali", "cuda", images, WORKERS) for images in ("original", "prepared") if GPU])


def make_plan(root, per_class=PER_CLASS, repeat=REPEAT, batch=BATCH):
    """The train plan of the embedded dataset written under `root`: `per_class` images a class, each `repeat` times."""
    write_dataset(root, {"train": per_class, "val": 1})
    _, train, _ = load_splits(root)
    return train_plan(train * repeat, batch, seed=0, epoch=0)


def make_plans(root, per_class=PER_CLASS // 2, repeat=REPEAT, batch=BATCH) -> dict:
    """{"original": the plan of `per_class` images a class at ORIGINAL_SIZE, "prepared": the same plan
    on those images prepared by data.prepare}, each image `repeat` times."""
    original = root / "original"
    write_dataset(original, {"train": per_class, "val": 1})
    for path in original.rglob("*.JPEG"):
        with Image.open(path) as image:
            image.resize(ORIGINAL_SIZE, Image.BICUBIC).save(path, format="JPEG", quality=ORIGINAL_QUALITY)
    with contextlib.redirect_stdout(io.StringIO()):  # data.prepare's progress lines: not this benchmark's output
        prepare_dataset(original, root / "prepared", WORKERS, bar=False)
    plans = {}
    for name in ("original", "prepared"):
        _, train, _ = load_splits(root / name)
        plans[name] = train_plan(train * repeat, batch, seed=0, epoch=0)
    return plans


def first_batch(plan, loader, device, workers=WORKERS, batch=BATCH, dtype=torch.float32):
    """(the loader's batch iterator, seconds to its first batch): building the pipeline or starting the workers."""
    start = time.perf_counter()
    batches = iter({"dali": DaliLoader, "pil": PilLoader}[loader](plan, batch, device, workers, dtype=dtype))
    next(batches)
    return batches, time.perf_counter() - start


def the_rest(batches, device):
    """Drain `batches` (the steady state, timed by the caller); (the last batch's shape, the training
    thread's CPU seconds per batch: in the calls that return one, so not the pipeline's teardown at
    the end of the epoch, paid once per epoch)."""
    thread_seconds, count = 0.0, 0
    while True:
        start = time.thread_time()
        try:
            images, _ = next(batches)
        except StopIteration:
            break
        thread_seconds += time.thread_time() - start
        count += 1
    if device == "cuda":
        torch.cuda.synchronize()
    return tuple(images.shape), thread_seconds / count


@pytest.fixture(scope="module")
def plans(tmp_path_factory):
    return make_plans(tmp_path_factory.mktemp("bench-data"))


@pytest.mark.parametrize("loader,device,images,threads", CASES, ids=[f"{loader}-{device}-{images}-{threads}t"
                                                                     for loader, device, images, threads in CASES])
def test_data_pipeline(benchmark, plans, loader, device, images, threads):
    plan, startup, thread_time = plans[images], [], []

    def setup():
        batches, seconds = first_batch(plan, loader, device, threads)
        startup.append(seconds)
        return (batches, device), {}

    def run(batches, device):
        shape, seconds = the_rest(batches, device)
        thread_time.append(seconds)
        return shape

    benchmark.group = "data pipeline (paper's train transform)"
    shape = benchmark.pedantic(run, setup=setup, rounds=ROUNDS, warmup_rounds=1)
    assert shape == (BATCH, 3, 227, 227)
    if benchmark.stats is None:  # --benchmark-disable: ran once, timed nothing
        return
    steady = len(plan) - BATCH
    benchmark.extra_info.update(loader=loader, device=device, dataset=images, workers=threads, batch=BATCH,
                                img_per_s=steady / benchmark.stats.stats.median,
                                train_thread_ms=1e3 * sorted(thread_time)[len(thread_time) // 2],
                                startup_s=sorted(startup)[len(startup) // 2])
