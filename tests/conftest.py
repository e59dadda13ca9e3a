"""Test set-up: with no GPU, Triton kernels run in the interpreter, which must be on before import.

Training runs in the tests use the torch backend unless they ask for another: without --kernels,
train would first time torch against torch.compile (tests/test_fastest.py covers that choice).
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("ALEXNET_KERNELS", "torch")
