"""`python -m kernels.aot` compiles every Triton kernel for sm_80 and sm_90 with no GPU, and passes.

It runs in a subprocess with this session's environment, TRITON_INTERPRET=1 included (conftest sets
it on a CPU-only machine): the command must switch the interpreter off itself.
"""

import importlib
import subprocess
import sys
from pathlib import Path

import triton
from triton.runtime.interpreter import InterpretedFunction

from kernels.aot import MODULES

ROOT = Path(__file__).resolve().parents[1]


def triton_kernels(module_name):
    """Names of the kernels a module defines: @triton.jit functions named *_kernel (jitted or
    interpreted, autotuned or not); the other jitted functions are helpers inlined into them."""
    module = importlib.import_module(module_name)
    jitted = (triton.runtime.JITFunction, InterpretedFunction)
    return sorted(name for name, value in vars(module).items()
                  if name.endswith("_kernel")
                  and (isinstance(value, jitted) or isinstance(getattr(value, "fn", None), jitted)))


def test_aot_compiles_every_kernel_without_spills():
    run = subprocess.run([sys.executable, "-m", "kernels.aot"], cwd=ROOT, capture_output=True, text=True,
                         timeout=900)
    report = run.stdout + run.stderr
    assert run.returncode == 0, f"[kernels.aot] exit {run.returncode}:\n{report}"
    assert report.rstrip().endswith("all pass"), f"[kernels.aot] no verdict:\n{report}"
    for module in MODULES:
        kernels = triton_kernels(module)
        assert kernels, f"[kernels.aot] {module} defines no Triton kernel"
        for kernel in kernels:
            for arch in ("sm_80", "sm_90"):
                assert any(kernel in line and arch in line for line in report.splitlines()), \
                    f"[kernels.aot] {module}.{kernel} not compiled for {arch}:\n{report}"
