"""The whole training step (forward, backward, SGD with momentum and weight decay) per backend, in img/s.

    pytest bench/test_train_step.py --benchmark-only

On a GPU: batch 128, fp32 and bf16 autocast (`--amp bf16`'s path), backends torch (cuDNN), compile
(torch.compile) and triton. On the CPU: batch 4, fp32, torch and compile side by side in one run
(the group "train step none"), compile's graphs built in the warm-up round. Triton is left out on the
CPU: interpreted, one AlexNet step takes minutes and its time is no speed (tests/test_convergence.py
checks that it trains the same network). extra_info: img_per_s, batch, amp, the device and versions, and
layer "train step", pass "step" (bench.roofline's row).
"""

import pytest
import torch

from alexnet.model import AlexNet
from alexnet.step import AMP_DTYPES, LAST_LOSS, CapturedStep, training_step
from bench.common import measure
from data.dali import DaliLoader

GPU = torch.cuda.is_available()
DEVICE = torch.device("cuda" if GPU else "cpu")
BATCH = 128 if GPU else 4
BACKENDS = ["torch", "compile", "triton"] if GPU else ["torch", "compile"]
AMPS = ["none", "bf16"] if GPU else ["none"]


def images_dtype(amp: str) -> torch.dtype:
    """The dtype the trainer's DALI loader hands a step of `amp` its images in (the step casts them in the
    pass that makes conv1's input: alexnet.step.training_step)."""
    return DaliLoader.decoded_dtype(AMP_DTYPES.get(amp, torch.float32))


def make_step(backend: str, amp: str, device: torch.device, batch: int = BATCH, graph: bool = False):
    """A function running one training step of AlexNet(kernels=backend), the trainer's own (alexnet.step: the
    one-pass SGD, the 16-bit weight copies, nothing read back), and returning its loss (a device tensor); on
    synthetic images unless given others (bench.report's too: its DALI-fed step and the loss agreement).
    `graph`: as the trainer runs it on a GPU, captured as a CUDA graph after its warm-up steps."""
    torch.manual_seed(0)
    model = AlexNet(num_classes=1000, kernels=backend).to(device).train()
    train_step = training_step(model, model, model, device, amp, lr=0.01, momentum=0.9, weight_decay=5e-4)
    run = CapturedStep(train_step, side_stream=torch.cuda.Stream(device)) if graph else train_step
    images = (torch.randn(batch, 3, 227, 227, device=device) * 50).to(  # as the loader delivers them
        images_dtype(amp), memory_format=torch.channels_last)
    labels = torch.randint(0, 1000, (batch,), device=device)

    def step(images=images, labels=labels):
        run(images, labels)
        return train_step.totals[LAST_LOSS]

    return step


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("amp", AMPS)
def test_train_step(benchmark, amp, backend):
    step = make_step(backend, amp, DEVICE)
    benchmark.group = f"train step {amp}"
    benchmark.extra_info.update(backend=backend, batch=BATCH, amp=amp, layer="train step", **{"pass": "step"})
    measure(benchmark, step, DEVICE, AMP_DTYPES.get(amp, torch.float32), None, triton=backend == "triton")
    if benchmark.stats is not None:  # device time on a GPU (host_ms apart), the benchmark's median on the CPU
        seconds = benchmark.extra_info.get("device_ms", benchmark.stats.stats.median * 1e3) / 1e3
        benchmark.extra_info["img_per_s"] = BATCH / seconds
