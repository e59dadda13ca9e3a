"""The "compile" backend is the torch backend through Inductor: same values, same gradients.
(The whole model on it runs in bench/test_train_step.py; compiling it here would double this file's time.)

Tolerances: fp32, and the math is the same; Inductor only reorders the LRN's sums of squares and
uses its own vectorised pow, each a few ulp (~1e-7 relative) per element, so rtol 1e-5 / atol 1e-6
is loose enough for that and far below any real error (a wrong window or alpha moves values by >1e-3).
"""

import time

import pytest
import torch

import kernels

TOL = dict(rtol=1e-5, atol=1e-6)


def test_import_compiles_nothing():
    start = time.perf_counter()
    kernels.backend("compile")
    assert time.perf_counter() - start < 1.0, "importing the compile backend should not compile anything"


@pytest.mark.parametrize("op_name, args", [
    ("conv2d_relu", dict(stride=2, padding=1, groups=2)),
    ("lrn", dict(size=5, alpha=1e-4, beta=0.75, k=2.0)),
    ("max_pool2d", dict(kernel_size=3, stride=2)),
])
def test_op_and_gradients_match_torch(op_name, args):
    torch.manual_seed(0)
    x = (torch.randn(2, 4, 9, 9) * 30).requires_grad_()  # LRN sees conv1-scale values, so alpha matters
    inputs = [x]
    if op_name == "conv2d_relu":
        inputs += [torch.randn(6, 2, 3, 3, requires_grad=True), torch.randn(6, requires_grad=True)]
    results = {}
    for name in ("torch", "compile"):
        out = getattr(kernels.backend(name), op_name)(*inputs, **args)
        dy = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
        results[name] = (out, *torch.autograd.grad(out, inputs, dy))
    labels = ["y", "dx", "dw", "db"]
    for label, got, want in zip(labels, results["compile"], results["torch"]):
        torch.testing.assert_close(got, want, **TOL, msg=lambda m: f"[{op_name}.{label}] compile vs torch: {m}")

