"""Images per second of the DALI and the PIL loaders on the same files and cores, in one run.

    pytest bench/test_data_pipeline.py --benchmark-only

Both run the paper's train transform (decode, shorter side to 256, random 227 crop, flip, PCA
lighting, mean subtraction, CHW float32) on the same plan: the 640 JPEGs of a small embedded dataset
(160-400 px a side, generated into a temporary folder), each twice, batch 128, with as many DALI
threads / DataLoader worker processes as the process may use cores. A round times the steady state:
everything after the first batch, which pays for building the pipeline or starting the workers
(that start-up time is recorded as extra_info["startup_s"]). make_plan, first_batch and the_rest are
bench.report's code path too. On a GPU machine a third case decodes
and augments on the GPU (DALI's "mixed" decoder). extra_info: img_per_s, startup_s, workers, device.
"""

import time

import pytest
import torch

from bench.common import usable_cpus
from data.dali import DaliLoader
from data.plans import train_plan
from data.embedded import write_dataset
from data.folder import load_splits
from data.pil import PilLoader

BATCH, PER_CLASS, REPEAT, ROUNDS = 128, 64, 2, 3
WORKERS = usable_cpus()
CASES = [("dali", "cpu"), ("pil", "cpu")] + ([("dali", "cuda")] if torch.cuda.is_available() else [])


def make_plan(root, per_class=PER_CLASS, repeat=REPEAT, batch=BATCH):
    """The train plan of the embedded dataset written under `root`: `per_class` images a class, each `repeat` times."""
    write_dataset(root, {"train": per_class, "val": 1})
    _, train, _ = load_splits(root)
    return train_plan(train * repeat, batch, seed=0, epoch=0)


def first_batch(plan, loader, device, workers=WORKERS, batch=BATCH):
    """(the loader's batch iterator, seconds to its first batch): building the pipeline or starting the workers."""
    start = time.perf_counter()
    batches = iter({"dali": DaliLoader, "pil": PilLoader}[loader](plan, batch, device, workers))
    next(batches)
    return batches, time.perf_counter() - start


def the_rest(batches, device):
    """Drain `batches` (the steady state, timed by the caller); the last batch's shape."""
    for images, _ in batches:
        pass
    if device == "cuda":
        torch.cuda.synchronize()
    return tuple(images.shape)


@pytest.fixture(scope="module")
def plan(tmp_path_factory):
    return make_plan(tmp_path_factory.mktemp("bench-data"))


@pytest.mark.parametrize("loader,device", CASES, ids=[f"{name}-{device}" for name, device in CASES])
def test_data_pipeline(benchmark, plan, loader, device):
    startup = []

    def setup():
        batches, seconds = first_batch(plan, loader, device)
        startup.append(seconds)
        return (batches, device), {}

    benchmark.group = "data pipeline (paper's train transform)"
    shape = benchmark.pedantic(the_rest, setup=setup, rounds=ROUNDS, warmup_rounds=1)
    assert shape == (BATCH, 3, 227, 227)
    benchmark.extra_info.update(loader=loader, device=device, workers=WORKERS, batch=BATCH, images=len(plan) - BATCH,
                                img_per_s=(len(plan) - BATCH) / benchmark.stats.stats.median,
                                startup_s=sorted(startup)[len(startup) // 2])
