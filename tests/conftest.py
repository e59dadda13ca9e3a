"""Test set-up: with no GPU, Triton kernels run in the interpreter, which must be on before import
(tests/devices.py says where each test runs them); tests never write the repository's root."""

import os
import subprocess
import sys
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


@pytest.fixture
def hold_folder():
    """hold_folder(out) starts another process that holds run folder `out` as a running training run does, and
    returns it once it holds it (its pid is the holder's); any still running are killed when the test ends."""
    holders = []

    def hold(out: Path) -> subprocess.Popen:
        holder = subprocess.Popen(
            [sys.executable, "-c", "import time\nfrom alexnet.run_folder import RunFolder\n"
                                   f"with RunFolder({str(out)!r}).claimed('', False):\n"
                                   "    print('held', flush=True)\n    time.sleep(600)\n"],
            cwd=REPO, stdout=subprocess.PIPE, text=True)
        holders.append(holder)
        assert holder.stdout.readline() == "held\n", "the holder did not take the folder"
        return holder

    yield hold
    for holder in holders:
        holder.kill()
        holder.wait(timeout=60)
