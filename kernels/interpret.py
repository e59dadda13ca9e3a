"""Running Triton kernels with no GPU: the interpreter, switched on before Triton is imported.

`TRITON_INTERPRET=1` runs every @triton.jit kernel on the CPU with numpy. Triton reads it when
it is imported, so it must be set first; `prepare()` does that when there is no GPU, and says
clearly when it is too late.
"""

import os
import sys
import warnings

import torch


def interpreting() -> bool:
    """True when Triton kernels run in the CPU interpreter."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def prepare() -> None:
    """Make Triton usable: on a machine without a GPU, switch the interpreter on (once)."""
    if torch.cuda.is_available() or interpreting():
        return
    if "triton" in sys.modules:
        raise RuntimeError("there is no GPU and Triton was imported before TRITON_INTERPRET=1 was set, "
                           "so its kernels cannot run; set TRITON_INTERPRET=1 in the environment")
    os.environ["TRITON_INTERPRET"] = "1"
    warnings.warn("no GPU: the Triton kernels run in the CPU interpreter (TRITON_INTERPRET=1), "
                  "which is correct but very slow", stacklevel=2)
