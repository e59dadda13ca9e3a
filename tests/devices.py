"""Where the tests run the Triton kernels: on the GPU when there is one, else on the CPU in Triton's
interpreter (tests/conftest.py switches it on, before Triton is imported, exactly when there is no GPU).

On a GPU host the interpreter is off and the kernels refuse CPU tensors, so a test of the Triton ops puts its
tensors on `triton_device()`; a test that can only run them on CPU tensors (the CPU's autocast, gloo towers)
says so with @needs_interpreter, which on a GPU host runs it again in a subprocess that sees no GPU.
"""

import functools
import os
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def use_interpreter() -> bool:
    """Whether this process runs the Triton kernels in the interpreter: exactly when no GPU is visible."""
    return not torch.cuda.is_available()


def triton_device() -> torch.device:
    """The device the Triton kernels run on in this process."""
    return torch.device("cpu" if use_interpreter() else "cuda")


def needs_interpreter(test):
    """A test that runs the Triton ops on CPU tensors: run in-process where the interpreter is on, else (a GPU
    host) in a pytest subprocess with no GPU visible, so that the interpreter is on there."""
    @functools.wraps(test)
    def run(*args, **kwargs):
        if os.environ.get("TRITON_INTERPRET") == "1":
            return test(*args, **kwargs)
        node = os.environ["PYTEST_CURRENT_TEST"].rsplit(" ", 1)[0]
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "TRITON_INTERPRET": "1"}
        done = subprocess.run([sys.executable, "-m", "pytest", node, "-q", "-m", "", "-p", "no:cacheprovider"],
                              cwd=ROOT, env=env, capture_output=True, text=True)
        assert done.returncode == 0, f"[{node} in the interpreter]\n{done.stdout[-4000:]}{done.stderr[-2000:]}"
    return run
