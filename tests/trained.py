"""A tiny trained run for the tests of what uses a trained network (evaluate, predict, features,
figures, export): 3 classes of the embedded shapes, 2 epochs at batch 4, trained once per session.
A test module gets the `tiny_run` fixture with `pytest_plugins = ["tests.trained"]`."""

from dataclasses import dataclass
from pathlib import Path

import pytest

from alexnet import train
from data.embedded import write_dataset


@dataclass
class TinyRun:
    data: Path  # train/ (2 images a class: one step an epoch) and val/ (2 a class)
    out: Path  # checkpoint.pth, metrics.jsonl
    checkpoint: Path


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> TinyRun:
    data, out = tmp_path_factory.mktemp("tiny-data"), tmp_path_factory.mktemp("tiny-run")
    write_dataset(data, {"train": 2, "val": 2}, num_classes=3)
    train.main(train.get_args_parser().parse_args(["--data-path", str(data), "--output-dir", str(out), "-b", "4",
                                                   "--epochs", "2", "--seed", "3", "--device", "cpu"]))
    return TinyRun(data, out, out / "checkpoint.pth")
