"""Autocast for the custom ops: under torch.autocast, run them in the autocast dtype.

Autocast only rewrites the ATen ops on its lists. A custom autograd Function (the Triton ops) would
receive fp32 tensors and silently run in fp32, and F.local_response_norm is on the CPU's fp32 list.
So every backend's ops take the same path: cast the floating-point tensor arguments to the autocast
dtype (a differentiable cast, so fp32 weights still get fp32 gradients) and run with autocast off,
as torch.amp.custom_fwd(cast_inputs=...) does, but with the dtype the caller's autocast chose.
"""

import functools

import torch


def autocast_inputs(op, weights: bool = True):
    """`op`, made to run in the autocast dtype whenever autocast is on for its first argument's device.
    With `weights=False` only the first argument (the activations) is cast: the op reads fp32 (master)
    weights itself, casting them in a copy it makes anyway, and returns their gradients in fp32, so no
    cast runs before it and none after its backward."""
    @functools.wraps(op)
    def call(x, *args, **kwargs):
        device_type = x.device.type
        if not torch.is_autocast_enabled(device_type):
            return op(x, *args, **kwargs)
        dtype = torch.get_autocast_dtype(device_type)

        def cast(a):
            return a.to(dtype) if isinstance(a, torch.Tensor) and a.is_floating_point() else a

        with torch.autocast(device_type, enabled=False):
            if not weights:
                return op(cast(x), *args, **kwargs)
            return op(cast(x), *map(cast, args), **{k: cast(v) for k, v in kwargs.items()})

    return call
