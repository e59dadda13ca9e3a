"""AlexNet's three custom ops behind one interface, with interchangeable backends.

    conv2d_relu(x, weight, bias=None, stride=1, padding=0, groups=1, input_form=False)
                                                                        relu(conv2d(x, w) + b)
    lrn(x, size=5, alpha=1e-4, beta=0.75, k=2.0)                        the paper's LRN (alpha NOT divided by size)
    max_pool2d(x, kernel_size=3, stride=2)                              no padding, floor mode

and, for the first layer,

    conv2d_relu_input(x, weight_shape, stride=1, padding=0, groups=1, dtype=None, out=None)
                                 x as conv2d_relu(..., input_form=True) reads it, made in one pass

`backend(name)` returns an object with those ops as attributes (a Backend built from the three ops alone
reads its input as it is: its conv2d_relu_input is x cast):
  "torch"    F.conv2d + F.relu (cuDNN on a GPU), F.local_response_norm, F.max_pool2d
  "triton"   the project's Triton kernels
  "compile"  the torch ops through torch.compile (Inductor)

The module-level `conv2d_relu`, `lrn`, `max_pool2d` and `conv2d_relu_input` are the Triton ops. Importing this package
does no work and imports no Triton: a backend's module is loaded the first time it is asked for.
"""

import importlib
from dataclasses import dataclass
from typing import Callable

BACKENDS = ("triton", "torch", "compile")


def input_as_it_is(x, weight_shape, stride=1, padding=0, groups=1, dtype=None, out=None):
    """conv2d_relu_input for a conv2d_relu that reads its input as it is: x cast to `dtype` (into `out`)."""
    dtype = dtype or x.dtype
    if out is None:
        return x.to(dtype)
    if getattr(out, "shape", None) != x.shape or out.dtype != dtype or out.device != x.device:
        raise ValueError(f"conv2d_relu_input: out must be a tensor of shape {tuple(x.shape)}, {dtype}, on "
                         f"{x.device}; got {getattr(out, 'shape', type(out).__name__)}")
    return out.copy_(x)


@dataclass(frozen=True)
class Backend:
    name: str
    conv2d_relu: Callable
    lrn: Callable
    max_pool2d: Callable
    conv2d_relu_input: Callable = input_as_it_is


# Backend name -> the module that builds it (each exposes `BACKEND`).
_MODULES = {"triton": "kernels.triton_ops", "torch": "kernels.torch_ops", "compile": "kernels.compile_ops"}


_LOADED: dict[str, Backend] = {}  # a plain dict lookup once loaded: torch.compile traces through it


def backend(name: str) -> Backend:
    """The ops of backend `name` (one of BACKENDS)."""
    if name in _LOADED:
        return _LOADED[name]
    if name not in BACKENDS:
        raise ValueError(f"unknown kernels backend {name!r}; choose one of {', '.join(BACKENDS)}")
    if name == "triton":
        from kernels.interpret import prepare
        prepare()  # with no GPU, switch the interpreter on before Triton is imported
    _LOADED[name] = importlib.import_module(_MODULES[name]).BACKEND
    return _LOADED[name]


def conv2d_relu(x, weight, bias=None, stride=1, padding=0, groups=1, input_form=False):
    """relu(conv2d(x, weight, bias, stride, padding, groups=groups)) on the Triton kernels; with `input_form`, x
    is what conv2d_relu_input made of the images."""
    return backend("triton").conv2d_relu(x, weight, bias, stride, padding, groups, input_form=input_form)


def conv2d_relu_input(x, weight_shape, stride=1, padding=0, groups=1, dtype=None, out=None):
    """x as the Triton conv2d_relu(..., input_form=True) reads it, in `dtype`, made in one pass (into `out`)."""
    return backend("triton").conv2d_relu_input(x, weight_shape, stride, padding, groups, dtype=dtype, out=out)


def lrn(x, size=5, alpha=1e-4, beta=0.75, k=2.0):
    """The paper's cross-channel LRN on the Triton kernels (alpha is not divided by size)."""
    return backend("triton").lrn(x, size, alpha, beta, k)


def max_pool2d(x, kernel_size=3, stride=2):
    """Max-pooling with no padding and floor mode on the Triton kernels."""
    return backend("triton").max_pool2d(x, kernel_size, stride)
