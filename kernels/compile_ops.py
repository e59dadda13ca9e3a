"""The "compile" backend: the torch backend's ops through torch.compile (Inductor).

Each op is compiled the first time it is called, not at import (compiling costs seconds). Dynamo
specialises on channel counts, the int arguments and grad mode, so AlexNet's five convs trained and
evaluated are ~10 graphs of one function: more than dynamo's default recompile limit (8), past which
it silently runs the op eagerly. The limit is raised around these ops' calls only.
"""

import functools

import torch

from kernels import Backend, torch_ops
from kernels.autocast import autocast_inputs

RECOMPILE_LIMIT = 64  # graphs per op: AlexNet's layers x grad on/off x a few batch sizes, with room


def _compiled_on_first_call(op):
    compiled = None

    @functools.wraps(op)
    def call(*args, **kwargs):
        nonlocal compiled
        if compiled is None:
            compiled = torch.compile(op)
        with torch._dynamo.config.patch(recompile_limit=RECOMPILE_LIMIT):
            return compiled(*args, **kwargs)

    return call


# Autocast outside the compiled graph: Inductor sees plain bf16/fp16 ops, not autocast state to guard on.
BACKEND = Backend("compile", *(autocast_inputs(_compiled_on_first_call(op))
                               for op in (torch_ops.conv2d_relu, torch_ops.lrn, torch_ops.max_pool2d)))
