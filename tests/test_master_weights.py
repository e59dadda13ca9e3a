"""fc6-fc8 on the optimizer's 16-bit weight copies (alexnet/master_weights.py): the same forward as
autocast's casts, fp32 gradients straight into .grad, and no cast of a weight or a gradient in the step."""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from alexnet import master_weights
from alexnet.master_weights import MasterLinear, fp32_product
from alexnet.model import AlexNet


COPIES = {torch.ops.aten._to_copy.default, torch.ops.aten.clone.default, torch.ops.aten.copy_.default}


class Copies(TorchDispatchMode):
    """The shapes of the tensors that casts and copies read, one entry per op."""

    def __init__(self):
        super().__init__()
        self.shapes = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in COPIES:
            self.shapes.append(tuple(args[-1 if func is torch.ops.aten.copy_.default else 0].shape))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("relu", [False, True])
def test_master_linear_equals_the_16_bit_linear_with_fp32_gradients(relu):
    """Its forward and dx bit for bit autocast's (a ReLU'd one: F.relu after it); dW and db its fp32 sums."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 7, generator=g).bfloat16()
    w, b = torch.randn(3, 7, generator=g).requires_grad_(), torch.randn(3, generator=g).requires_grad_()
    dy = torch.randn(5, 3, generator=g).bfloat16()
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    y = MasterLinear.apply(x1, w, b, w.detach().bfloat16(), b.detach().bfloat16(), relu)
    w2, b2 = w.detach().clone().requires_grad_(), b.detach().clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16, cache_enabled=False):
        want = torch.nn.functional.linear(x2, w2, b2)  # autocast's path: casts both ways
    want = want.relu() if relu else want
    assert relu == (y == 0).any().item(), "ReLU'd: some outputs 0, else none"
    assert torch.equal(y, want), "[y] differs from autocast's linear"
    y.backward(dy)
    want.backward(dy)
    assert torch.equal(x1.grad, x2.grad), "[dx] differs"
    assert w.grad.dtype == b.grad.dtype == torch.float32
    # autocast rounds dW and db to bf16 before casting them back: ours are those sums, not rounded
    torch.testing.assert_close(w.grad, w2.grad, atol=0, rtol=2 ** -8, msg="[dW]")
    dz = dy.masked_fill(want <= 0, 0) if relu else dy  # the gradient through the ReLU
    torch.testing.assert_close(b.grad, dz.float().sum(0), atol=0, rtol=0, msg="[db]")


def test_fp32_product_is_the_fp32_gemm_on_meta_and_the_cast_product_on_the_cpu():
    a, b = torch.randn(4, 6).bfloat16(), torch.randn(6, 3).bfloat16()
    assert fp32_product(a.to("meta"), b.to("meta")).dtype == torch.float32
    assert torch.equal(fp32_product(a, b), (a @ b).float())


@pytest.mark.parametrize("kernels", ["torch", "triton"])
def test_a_16_bit_alexnet_step_casts_no_fc_weight_and_no_gradient(kernels, monkeypatch):
    """With the copies in use, a bf16 step copies or casts no fc weight or gradient; on the Triton backend
    each conv weight is copied once, cast in the channels_last copy the forward kernel reads and dgrad reads
    again (before: autocast's cast, a copy for each, and the gradient's cast back); on the torch backend autocast casts
    the conv weights for cuDNN. The CPU has no fp32-output bf16 GEMM: the weight gradient's is the GPU's
    single op here (on fp32 operands: only activations are cast)."""
    monkeypatch.setattr(master_weights, "fp32_product", lambda a, b: torch.mm(a.float(), b.float()))
    torch.manual_seed(0)
    model = AlexNet(num_classes=10, kernels=kernels)
    copies = {p: p.detach().bfloat16() for p in model.parameters()}
    model.read_copies(copies.__getitem__)
    x = torch.randn(1, 3, 227, 227)
    if kernels == "triton":
        from kernels import tensors
        tensors._launching.shapes_only = True  # the kernels' results don't matter here: skip the interpreter
    try:
        with Copies() as copied:
            with torch.autocast("cpu", dtype=torch.bfloat16, cache_enabled=False):
                loss = model(x).float().sum()
            loss.backward()
    finally:
        if kernels == "triton":
            tensors._launching.shapes_only = False
    shapes = {name: tuple(p.shape) for name, p in model.named_parameters()}
    per_parameter = {name: copied.shapes.count(shape) for name, shape in shapes.items()}
    fc = {name: n for name, n in per_parameter.items() if name.startswith("fc") and n}
    assert not fc, f"fc parameters copied or cast in the step: {fc}"
    if kernels == "triton":
        convs = {name: n for name, n in per_parameter.items() if name.startswith("conv") and name.endswith("weight")}
        # conv1's: no dgrad (the images need no gradient), its copy a Triton kernel's (space-to-depth)
        assert all(n == 1 for name, n in convs.items() if name != "conv1.weight"), convs
    assert all(p.grad.dtype == torch.float32 for p in model.parameters())
