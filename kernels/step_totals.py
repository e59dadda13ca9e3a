"""A training step's running totals updated in one launch, in Triton: what torch's ops take ~20 small
launches for (a cast, top-1 by sorting, comparisons, wheres, a stack and a copy).

    totals[LOSS_SUM]  += loss * batch       float64, the multiply and the add rounded apart, as torch's ops
    totals[HITS]      += top-1 hits         a sample's hit: its label is the first index of its highest logit
    totals[LAST_LOSS]  = loss
    totals[STEP]      += 1
    totals[FIRST_BAD], totals[BAD_LOSS] = the step and its loss, at the first step whose loss is not finite

Top-1 is torch.argmax's: on a tie the first of the highest logits, and a NaN counts as the highest (the first
NaN of the row). One program reads every row (a few hundred KB at ImageNet's 1000 classes, a few µs); it adds
nothing concurrently, so the totals are the same bits on every run. Nothing is read back to the host: the launch
can be captured in a CUDA graph.
"""

import torch
import triton
import triton.language as tl

from kernels.tensors import FLOAT_DTYPES, check_device, launch, next_power_of_2

# Where each total is in `totals`: alexnet.step's order (TrainStep.totals), as constexprs the kernel can read
ORDER = LOSS_SUM, HITS, LAST_LOSS, STEP, FIRST_BAD, BAD_LOSS = tuple(map(tl.constexpr, range(6)))
ELEMENTS = 8192  # logits a program holds at once (rows x the classes rounded up to a power of 2)


@triton.jit
def step_totals_kernel(totals_ptr, loss_ptr, logits_ptr, labels_ptr, batch, classes, row_stride, class_stride,
                       BLOCK_ROWS: tl.constexpr, BLOCK_CLASSES: tl.constexpr):
    rows = tl.arange(0, BLOCK_ROWS)
    classes_at = tl.arange(0, BLOCK_CLASSES)
    hits = tl.zeros((BLOCK_ROWS,), dtype=tl.int32)
    for first in range(0, batch, BLOCK_ROWS):
        row = first + rows
        in_batch = row < batch
        ok = in_batch[:, None] & (classes_at[None, :] < classes)
        x = tl.load(logits_ptr + row[:, None].to(tl.int64) * row_stride + classes_at[None, :] * class_stride,
                    mask=ok, other=float("-inf")).to(tl.float32)
        nan = ok & (x != x)
        highest = tl.max(tl.where(nan, float("-inf"), x), axis=1)
        first_highest = tl.min(tl.where(ok & (x == highest[:, None]), classes_at[None, :], BLOCK_CLASSES), axis=1)
        first_nan = tl.min(tl.where(nan, classes_at[None, :], BLOCK_CLASSES), axis=1)
        top1 = tl.where(first_nan < BLOCK_CLASSES, first_nan, first_highest)
        label = tl.load(labels_ptr + row, mask=in_batch, other=-1)
        hits += (in_batch & (top1 == label)).to(tl.int32)
    loss = tl.load(loss_ptr).to(tl.float64)
    step = tl.load(totals_ptr + STEP) + 1
    first_bad = tl.load(totals_ptr + FIRST_BAD)
    now_bad = (first_bad == 0) & ((loss != loss) | (tl.abs(loss) == float("inf")))
    tl.store(totals_ptr + LOSS_SUM, tl.load(totals_ptr + LOSS_SUM) + loss * batch)
    tl.store(totals_ptr + HITS, tl.load(totals_ptr + HITS) + tl.sum(hits, axis=0).to(tl.float64))
    tl.store(totals_ptr + LAST_LOSS, loss)
    tl.store(totals_ptr + STEP, step)
    tl.store(totals_ptr + FIRST_BAD, tl.where(now_bad, step, first_bad))
    tl.store(totals_ptr + BAD_LOSS, tl.where(now_bad, loss, tl.load(totals_ptr + BAD_LOSS)))


def add_step(totals: torch.Tensor, loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> None:
    """Add one step (its 0-dim `loss`, its (batch, classes) `logits` and (batch,) int64 `labels`) to `totals`,
    six float64 values on their device, in place (the order above)."""
    check_device("add_step", "totals", totals)
    if totals.dtype != torch.float64 or totals.shape != (6,) or not totals.is_contiguous():
        raise ValueError(f"add_step: totals must be 6 contiguous float64 values, got {totals.dtype} of shape "
                         f"{tuple(totals.shape)} and strides {totals.stride()}")
    if loss.dim() != 0 or not loss.dtype.is_floating_point:
        raise ValueError(f"add_step: loss must be a 0-dim float tensor, got {loss.dtype} of shape {tuple(loss.shape)}")
    if logits.dim() != 2 or logits.dtype not in FLOAT_DTYPES or 0 in logits.shape:
        raise ValueError(f"add_step: logits must be (batch, classes) float32, float16 or bfloat16, got "
                         f"{logits.dtype} of shape {tuple(logits.shape)}")
    if labels.dtype != torch.int64 or labels.shape != logits.shape[:1]:
        raise ValueError(f"add_step: labels must be int64 of shape ({logits.shape[0]},) like the logits' rows, got "
                         f"{labels.dtype} of shape {tuple(labels.shape)}")
    for name, t in (("loss", loss), ("logits", logits), ("labels", labels)):
        if t.device != totals.device:
            raise ValueError(f"add_step: {name} is on {t.device}, totals on {totals.device}")
    batch, classes = logits.shape
    block_classes = next_power_of_2(classes)
    launch(step_totals_kernel, (1,), totals.device, totals, loss, logits, labels.contiguous(), batch, classes,
           logits.stride(0), logits.stride(1), BLOCK_ROWS=max(1, ELEMENTS // block_classes),
           BLOCK_CLASSES=block_classes, num_warps=8, enable_fp_fusion=False)
