"""Every Triton launch runs on its tensors' device: Triton starts kernels on torch's *current* CUDA device and
its current stream, so a launcher that forgot to make the tensors' device current would run a cuda:1 tensor's
kernel on GPU 0. All launches go through kernels.tensors.launch, which does; these tests check that each of
the ops' kernels is started from inside it, and what it does with a CUDA device (mocked: no GPU here).
"""

import contextlib

import pytest
import torch
import triton
from triton.runtime.interpreter import InterpretedFunction

import kernels
from kernels import tensors

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
EVERY_KERNEL = {"fwd_kernel", "relu_mask_kernel", "dgrad_kernel", "wgrad_kernel", "lrn_fwd_kernel",
                "lrn_bwd_kernel", "max_pool_fwd_kernel", "max_pool_bwd_kernel"}


def test_every_kernel_is_started_inside_launch_on_its_tensors_device(monkeypatch):
    started = []
    for cls in (InterpretedFunction, triton.runtime.JITFunction):
        original = cls.run

        def run(self, *args, _original=original, **kwargs):
            started.append((self.fn.__name__ if hasattr(self, "fn") else self.__name__, tensors.launching_on()))
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(cls, "run", run)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 6, 9, 9, generator=generator).to(DEVICE).requires_grad_()
    w = (torch.randn(8, 3, 3, 3, generator=generator) / 3).to(DEVICE).requires_grad_()
    b = torch.randn(8, generator=generator).to(DEVICE).requires_grad_()
    y = kernels.max_pool2d(kernels.lrn(kernels.conv2d_relu(x, w, b, 1, 1, 2)), 3, 2)
    y.backward(torch.randn(y.shape, generator=generator).to(DEVICE))

    names = {name for name, _ in started}
    assert names == EVERY_KERNEL, f"[launch] kernels started: {sorted(names)}, expected {sorted(EVERY_KERNEL)}"
    outside = sorted({name for name, device in started if device != x.device})
    assert not outside, f"[launch] started outside kernels.tensors.launch (or on another device): {outside}"


def test_launch_makes_a_cuda_tensors_device_current(monkeypatch):
    """On CUDA, the kernel runs inside torch.cuda.device(its device) (which also makes that device's current
    stream the one Triton launches on); on the CPU (the interpreter) no CUDA call is made."""
    events = []

    @contextlib.contextmanager
    def fake_device(device):
        events.append(("enter", torch.device(device)))
        yield
        events.append(("exit", torch.device(device)))

    monkeypatch.setattr(torch.cuda, "device", fake_device)
    kernel = {(4,): lambda *args, **kwargs: events.append(("kernel", args, kwargs))}
    tensors.launch(kernel, (4,), torch.device("cuda", 1), "a", b=2)
    assert events == [("enter", torch.device("cuda", 1)), ("kernel", ("a",), {"b": 2}),
                      ("exit", torch.device("cuda", 1))], events
    events.clear()
    tensors.launch(kernel, (4,), torch.device("cpu"), "a")
    assert events == [("kernel", ("a",), {})], events


def test_launch_clears_its_mark_when_the_kernel_fails():
    def fail(*args, **kwargs):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        tensors.launch({(1,): fail}, (1,), torch.device("cpu"))
    assert tensors.launching_on() is None
