"""Test set-up: with no GPU, Triton kernels run in the interpreter, which must be on before import
(tests/devices.py says where each test runs them)."""

import os

import pytest
import torch

from tests.devices import triton_device, use_interpreter

if use_interpreter():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture
def on_triton_device():
    """Tensors made without a device go to the one the Triton kernels run on (the GPU, if any)."""
    with torch.device(triton_device()):
        yield
