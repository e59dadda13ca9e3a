"""Swapping kernels trains the same network: from the same weights and batches, two SGD steps with
kernels="triton" (interpreted on the CPU) and kernels="torch" give the same loss, logits and
per-layer gradients.

Marked slow: at AlexNet's real 227x227 shapes, batch 2, the interpreted Triton run takes ~6 min on
2 CPU cores (`pytest -m slow tests/test_convergence.py`).

Dropout stays on (p=0.5, the training network) with the same RNG seed before each run: neither
backend's conv, LRN or pool draws random numbers, so both runs draw the same masks (a different mask
would move the logits by O(1), not 1e-6).

Tolerance: both runs are fp32 and the interpreter's dot is plain fp32 (not tf32), so they differ
only in summation order. Measured: at most 1.6e-6 of each tensor's largest value over two steps;
the bound is 10x that, 2e-5, far below what a wrong kernel does (alpha/n in LRN, a misrouted pool
gradient or an off-by-one tap moves some gradient by > 1e-3 of its maximum).
"""

import pytest
import torch
import torch.nn.functional as F

from alexnet.model import AlexNet
from tests.devices import needs_interpreter

STEPS, BATCH, CLASSES = 2, 2, 10
REL = 2e-5  # of each tensor's largest |value|, see the module docstring


def train(kernels: str, init: dict, images, labels) -> list[dict]:
    torch.manual_seed(1)  # the same dropout masks in both runs
    model = AlexNet(num_classes=CLASSES, kernels=kernels)
    model.load_state_dict(init)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    record = []
    for step in range(STEPS):
        logits = model(images[step])
        loss = F.cross_entropy(logits, labels[step])
        optimizer.zero_grad()
        loss.backward()
        record.append({"loss": loss.detach(), "logits": logits.detach(),
                       **{name: p.grad.clone() for name, p in model.named_parameters()}})
        optimizer.step()
    return record


@pytest.mark.slow
@needs_interpreter  # both backends on the same CPU tensors
def test_triton_and_torch_train_the_same_network():
    torch.manual_seed(0)
    init = AlexNet(num_classes=CLASSES).state_dict()
    images = torch.randn(STEPS, BATCH, 3, 227, 227) * 50  # mean-subtracted pixels on the 0..255 scale
    labels = torch.randint(0, CLASSES, (STEPS, BATCH))
    want, got = train("torch", init, images, labels), train("triton", init, images, labels)
    for step, (w, g) in enumerate(zip(want, got)):
        for name in w:
            scale = w[name].abs().max().item()
            torch.testing.assert_close(g[name], w[name], rtol=0, atol=REL * scale,
                                       msg=lambda m: f"[step {step} {name}] triton vs torch: {m}")
