"""Test set-up: with no GPU, Triton kernels run in the interpreter, which must be on before import."""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


import pytest  # noqa: E402

from pathlib import Path  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
MADE_BY_PYTHON = {".pytest_cache", "__pycache__"}


@pytest.fixture(scope="session", autouse=True)
def repo_root_unchanged():
    """Tests never write the working directory: the repository root lists the same entries after the
    session as before it (a train without a tmp --output-dir would leave ./output)."""
    before = {p.name for p in REPO.iterdir()} - MADE_BY_PYTHON
    yield
    after = {p.name for p in REPO.iterdir()} - MADE_BY_PYTHON
    assert after == before, f"the tests left {sorted(after - before)} and removed {sorted(before - after)} in {REPO}"
