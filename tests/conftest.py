"""Test set-up: with no GPU, Triton kernels run in the interpreter, which must be on before import."""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
