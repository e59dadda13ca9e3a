"""Test set-up: with no GPU, Triton kernels run in the interpreter, which must be on before import
(tests/devices.py says where each test runs them); tests never write the repository's root."""

import os
from pathlib import Path

import pytest
import torch

from data.embedded import write_dataset
from tests.devices import triton_device, use_interpreter

if use_interpreter():
    os.environ.setdefault("TRITON_INTERPRET", "1")

REPO = Path(__file__).resolve().parents[1]
MADE_BY_PYTHON = {".pytest_cache", "__pycache__"}


@pytest.fixture
def on_triton_device():
    """Tensors made without a device go to the one the Triton kernels run on (the GPU, if any)."""
    with torch.device(triton_device()):
        yield


@pytest.fixture(scope="session", autouse=True)
def repo_root_unchanged():
    """Tests never write the working directory: the repository root lists the same entries after the
    session as before it (a train without a tmp --output-dir would leave ./output)."""
    before = {p.name for p in REPO.iterdir()} - MADE_BY_PYTHON
    yield
    after = {p.name for p in REPO.iterdir()} - MADE_BY_PYTHON
    assert after == before, f"the tests left {sorted(after - before)} and removed {sorted(before - after)} in {REPO}"


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    """The trainer tests' dataset (a test file may define its own): 3 classes, 4 train and 2 val images each,
    3 steps per epoch at batch 4."""
    root = tmp_path_factory.mktemp("tiny")
    write_dataset(root, {"train": 4, "val": 2}, num_classes=3)
    return root
