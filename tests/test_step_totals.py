"""The step's totals in one Triton launch (kernels/step_totals.py) against the torch ops it replaces
(alexnet.step.add_step's CPU path): the same float64 bits, on ties, NaN logits, a non-finite loss, odd
batches and classes, every logits dtype and layout."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from alexnet import step as train_step
from alexnet.step import BAD_LOSS, FIRST_BAD, HITS, LAST_LOSS, LOSS_SUM, STEP
from kernels import step_totals
from tests.devices import triton_device

ROOT = Path(__file__).resolve().parents[1]


def both_ways(start: list[float], steps: list[tuple], on=None) -> tuple[list[float], list[float]]:
    """The totals after `steps` of (loss, logits, labels) from `start`: (torch's ops on the CPU, the kernel)."""
    on = on or triton_device()
    by_torch = torch.tensor(start, dtype=torch.float64)
    by_kernel = by_torch.clone().to(on)
    for loss, logits, labels in steps:
        train_step.add_step(by_torch, loss, logits, labels)
        step_totals.add_step(by_kernel, loss.to(on), logits.to(on), labels.to(on))
    return by_torch.tolist(), by_kernel.cpu().tolist()


def random_step(batch, classes, dtype, generator, loss=None):
    logits = (torch.randn(batch, classes, generator=generator) * 3).to(dtype)
    labels = torch.randint(0, classes, (batch,), generator=generator)
    labels[::2] = logits[::2].float().argmax(1)  # about half hit: a wrong count cannot pass as 0 == 0
    loss = torch.rand((), generator=generator) * 7 if loss is None else torch.tensor(loss)
    return loss, logits, labels


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("batch, classes", [(1, 10), (7, 3), (130, 1000), (5, 1025)])
def test_the_kernel_adds_what_torchs_ops_add(dtype, batch, classes):
    g = torch.Generator().manual_seed(batch * classes)
    start = [123.456, 17.0, 0.5, 9.0, 0.0, 0.0]  # a resumed epoch's totals
    steps = [random_step(batch, classes, dtype, g) for _ in range(3)]
    by_torch, by_kernel = both_ways(start, steps)
    assert by_kernel == by_torch  # exact: the same float64 multiply and add, integer hits
    assert by_kernel[STEP] == 12 and by_kernel[FIRST_BAD] == 0 and by_kernel[HITS] >= 17 + 3 * (batch // 2)


def test_ties_go_to_the_first_highest_logit_and_a_nan_counts_as_the_highest():
    g = torch.Generator().manual_seed(1)
    logits = torch.randint(0, 3, (64, 20), generator=g).to(torch.bfloat16)  # many rows tie at their top
    logits[5, 7] = logits[9, 0] = logits[9, 11] = float("nan")
    top = logits == logits.amax(1, keepdim=True)
    labels = torch.where(top, torch.arange(20), 99)
    labels = torch.cat([labels[:32].amin(1), labels[32:].masked_fill(~top[32:], -1).amax(1)])  # first; last top
    labels[5], labels[9] = 7, 0
    assert logits.argmax(1)[[5, 9]].tolist() == [7, 0]  # torch's: the first NaN
    hits = 32 + int((top[32:].sum(1) == 1).sum())  # the last of several tops is no hit
    by_torch, by_kernel = both_ways([0.0] * 6, [(torch.tensor(1.0), logits, labels)])
    assert by_kernel == by_torch and by_kernel[HITS] == hits < 64, (by_kernel, hits)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_a_non_finite_loss_is_kept_with_its_step_and_later_ones_do_not_replace_it(bad):
    g = torch.Generator().manual_seed(2)
    losses = [2.0, 1.5, bad, float("nan"), float("inf"), 1.0]
    by_torch, by_kernel = both_ways([0.0] * 6, [random_step(4, 10, torch.float32, g, loss) for loss in losses])
    assert by_kernel[FIRST_BAD] == 3 and str(by_kernel[BAD_LOSS]) == str(bad) and by_kernel[LAST_LOSS] == 1.0
    assert str(by_kernel) == str(by_torch)  # NaN != NaN: compared as text


def test_non_contiguous_logits_and_labels():
    g = torch.Generator().manual_seed(3)
    loss, logits, labels = random_step(12, 40, torch.bfloat16, g)
    wide = torch.randn(40, 24, generator=g).to(torch.bfloat16)
    wide[:, ::2] = logits.t()
    steps = [(loss, wide[:, ::2].t(), torch.stack([labels, labels], 1)[:, 1])]  # strides (2, 24) and (2,)
    assert not steps[0][1].is_contiguous() and not steps[0][2].is_contiguous()
    by_torch, by_kernel = both_ways([0.0] * 6, steps)
    assert by_kernel == by_torch and by_kernel[HITS] >= 6


def test_the_kernel_reads_the_totals_in_the_steps_order_and_the_trainer_imports_no_triton():
    """alexnet.step names the totals without importing Triton (on a CPU, Triton imported before
    kernels.interpret switches its interpreter on could not run --kernels triton): the kernel's order is its."""
    assert [int(at) for at in step_totals.ORDER] == [LOSS_SUM, HITS, LAST_LOSS, STEP, FIRST_BAD, BAD_LOSS]
    code = "import sys, alexnet.train; assert 'triton' not in sys.modules, 'alexnet.train imported triton'"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]  # ~10 s quiet


def test_bad_input_is_named():
    on = triton_device()
    totals, loss = torch.zeros(6, dtype=torch.float64, device=on), torch.tensor(1.0, device=on)
    logits, labels = torch.randn(4, 10, device=on), torch.zeros(4, dtype=torch.int64, device=on)
    cases = [((totals.float(), loss, logits, labels), "totals must be 6 contiguous float64"),
             ((totals, loss[None], logits, labels), "loss must be a 0-dim float"),
             ((totals, loss, logits[0], labels), "logits must be (batch, classes)"),
             ((totals, loss, logits.double(), labels), "logits must be (batch, classes)"),
             ((totals, loss, logits, labels.int()), "labels must be int64 of shape (4,)"),
             ((totals, loss, logits, labels[:3]), "labels must be int64 of shape (4,)")]
    for args, message in cases:
        with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
            step_totals.add_step(*args)
    if on.type == "cpu":
        with pytest.raises(ValueError, match="labels is on meta"):
            step_totals.add_step(totals, loss, logits, labels.to("meta"))


BUILD = """
import json, re, sys, tempfile
from collections import Counter
from pathlib import Path
import torch, triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from perf.aot import _resource_usage, _specialise
from kernels import step_totals
launches = []
step_totals.check_device = lambda *args: None  # meta tensors: the launcher runs up to the launch, recorded
step_totals.launch = lambda kernel, grid, device, *args, **kwargs: launches.append(
    {**dict(zip(kernel.arg_names, args)), **kwargs})
meta = lambda *shape, dtype=torch.float32: torch.empty(*shape, dtype=dtype, device="meta")
for batch, classes, dtype in ((128, 1000, torch.bfloat16), (1, 10, torch.float32), (7, 21841, torch.float16)):
    step_totals.add_step(meta(6, dtype=torch.float64), meta(()), meta(batch, classes, dtype=dtype),
                         meta(batch, dtype=torch.int64))
report = []
with tempfile.TemporaryDirectory() as tmp:
    for kwargs in launches:
        for arch in (80, 90):
            target = GPUTarget("cuda", arch, 32)
            signature, constexprs, attrs, options = _specialise(step_totals.step_totals_kernel, target, kwargs)
            built = triton.compile(ASTSource(step_totals.step_totals_kernel, signature, constexprs, attrs),
                                   target=target, options=options.__dict__)
            report.append({"classes": kwargs["classes"], "arch": arch,
                           "spilled": _resource_usage(built.asm["cubin"], Path(tmp))["LOCAL"],
                           "f64": Counter(re.findall(r"\\b(?:fma|mul|add)\\.rn\\.f64", built.asm["ptx"]))})
print(json.dumps(report))
"""


def test_the_build_rounds_as_torchs_ops_and_never_spills():
    """Built for sm_80 and sm_90 with no GPU, from the launcher's own arguments (ImageNet's 1000 classes in
    bf16, batch 1 with 10, ImageNet-21k's 21841): no spills, and the float64 loss sum is a multiply and an
    add, never one fma (torch rounds the two apart); the other two adds are the hits and the step."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-c", BUILD], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)  # ~15 s quiet, no Triton cache
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(report) == 6 and all(build["spilled"] == 0 for build in report), report
    for build in report:
        multiplies = 0 if build["classes"] == 10 else 1  # batch 1 is specialised: loss * 1 is no multiply
        assert build["f64"] == {"add.rn.f64": 3, **({"mul.rn.f64": 1} if multiplies else {})}, build
