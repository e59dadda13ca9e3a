"""One pass of SGD with momentum and weight decay over a list of fp32 parameters in one launch, in Triton:
torch.optim.SGD's update with dampening 0, no Nesterov, minimising, and optionally GradScaler's unscaling and a
16-bit copy of the weights.

    g = grad / grad_scale        under GradScaler only; nothing is read or written while found_inf != 0
    g = fma(weight_decay, w, g)  torch: grad.add(param, alpha=weight_decay), rounded once
    m = m * momentum + g         torch: buf.mul_(momentum).add_(g), rounded twice; m = g on the first step
    w = fma(-lr, m, w)           torch: param.add_(buf, alpha=-lr), rounded once
    copy = w rounded to 16 bits  the weights the next forward reads (optional)

Each element of w, grad and m is read once and w, m and the copy written once: 20 bytes per parameter, 22 with
the copy (torch's foreach SGD moves 44 and autocast's cast of the weights 6 more). The tensors are passed as tuples
of pointers: each program takes one BLOCK of one tensor, found from the tensors' first programs (`starts`); the
kernel holds one copy of the update per tensor, so a launch takes at most MAX_TENSORS of them.

Rounding: torch's CUDA foreach kernels compute `a + alpha * b` as one fused multiply-add (nvcc contracts it) and
`buf * momentum` then `+ g` as two separate ops in two kernels. The kernel writes its two fma's out and is built
with enable_fp_fusion=False, so that Triton contracts nothing else: on a GPU, the bits of torch.optim.SGD's
default (foreach) path in fp32. Triton's interpreter computes tl.fma as a numpy multiply and add, so under
TRITON_INTERPRET=1 those two round twice. lr is a float64 scalar on the device (a scheduler's arithmetic on it is
then Python's, as with a float lr) rounded to fp32 as torch rounds a float alpha; grad_scale and found_inf are
GradScaler's device scalars. Nothing is read back to the host: the launch can be captured in a CUDA graph.
"""

import torch
import triton
import triton.language as tl

from kernels.rounding import to_16_bits
from kernels.tensors import check_device, launch

BLOCK, NUM_WARPS = 2048, 8  # 8 elements a thread: two 16-byte loads of each fp32 tensor (<= 108 registers)
MAX_TENSORS = 32  # a launch's kernel holds one copy of the update per tensor: at most this many
COPY_DTYPES = (torch.bfloat16, torch.float16)


@triton.jit
def sgd_kernel(
    ws,             # T pointers: [n_i] fp32 weights, updated in place
    gs,             # T pointers: [n_i] fp32 gradients (times grad_scale under GradScaler)
    ms,             # T pointers: [n_i] fp32 momentum buffers, updated in place (not touched without MOMENTUM)
    copies,         # T pointers: [n_i] bf16 or fp16 copies of the weights, written (not touched without COPY)
    numels,         # T ints: n_i
    starts,         # T + 1 ints: the first program of each tensor, then the number of programs
    lr_ptr,         # [] fp64 learning rate
    scale_ptr,      # [] fp32 GradScaler's scale (not read without UNSCALE)
    found_inf_ptr,  # [] fp32 nonzero if the scaled gradients overflowed (not read without SKIP)
    weight_decay, momentum,
    DECAY: tl.constexpr, MOMENTUM: tl.constexpr, FIRST_STEP: tl.constexpr, UNSCALE: tl.constexpr,
    SKIP: tl.constexpr, COPY: tl.constexpr, BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    for i in tl.static_range(len(ws)):  # each program updates one block of one tensor
        if (pid >= starts[i]) & (pid < starts[i + 1]):
            sgd_block(ws[i], gs[i], ms[i], copies[i], numels[i], pid - starts[i], lr_ptr, scale_ptr, found_inf_ptr,
                      weight_decay, momentum, DECAY, MOMENTUM, FIRST_STEP, UNSCALE, SKIP, COPY, BLOCK)


@triton.jit
def sgd_block(w_ptr, g_ptr, m_ptr, copy_ptr, n, block, lr_ptr, scale_ptr, found_inf_ptr, weight_decay, momentum,
              DECAY: tl.constexpr, MOMENTUM: tl.constexpr, FIRST_STEP: tl.constexpr, UNSCALE: tl.constexpr,
              SKIP: tl.constexpr, COPY: tl.constexpr, BLOCK: tl.constexpr):
    """The update of elements [block * BLOCK, (block + 1) * BLOCK) of one tensor of n."""
    offsets = block.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    if SKIP:
        n = tl.where(tl.load(found_inf_ptr) == 0, n, 0)  # an overflowed step touches nothing
    ok = offsets < n
    w = tl.load(w_ptr + offsets, mask=ok)
    g = tl.load(g_ptr + offsets, mask=ok)
    if UNSCALE:
        g = tl.div_rn(g, tl.load(scale_ptr))
    if DECAY:
        g = tl.fma(w, weight_decay, g)
    if MOMENTUM:
        if not FIRST_STEP:
            g = tl.load(m_ptr + offsets, mask=ok) * momentum + g
        tl.store(m_ptr + offsets, g, mask=ok)
    w = tl.fma(g, -tl.load(lr_ptr).to(tl.float32), w)
    tl.store(w_ptr + offsets, w, mask=ok)
    if COPY:
        tl.store(copy_ptr + offsets, to_16_bits(w, copy_ptr.dtype.element_ty), mask=ok)


def _check(name: str, i: int, t: torch.Tensor, weight: torch.Tensor, dtypes) -> None:
    if t.dtype not in dtypes:
        raise TypeError(f"sgd_step: {name}[{i}] has dtype {t.dtype}; expected {' or '.join(map(str, dtypes))}")
    if t.device != weight.device:
        raise ValueError(f"sgd_step: {name}[{i}] is on {t.device}, weights[{i}] on {weight.device}")
    if t.shape != weight.shape or t.stride() != weight.stride():
        raise ValueError(f"sgd_step: {name}[{i}] has shape {tuple(t.shape)} and strides {t.stride()}; weights[{i}] "
                         f"{tuple(weight.shape)} and {weight.stride()} (the pass walks their memory in one order)")


def _check_all(weights, grads, momentum_buffers, copies, lr, momentum) -> None:
    device = weights[0].device
    check_device("sgd_step", "weights[0]", weights[0])
    if (momentum_buffers is None) != (momentum == 0):
        raise ValueError(f"sgd_step: momentum {momentum} needs momentum_buffers exactly when it is not 0")
    for name, tensors in (("grads", grads), ("momentum_buffers", momentum_buffers), ("copies", copies)):
        if tensors is not None and len(tensors) != len(weights):
            raise ValueError(f"sgd_step: {len(weights)} weights but {len(tensors)} {name}")
    for i, w in enumerate(weights):
        if w.dtype != torch.float32 or w.device != device:
            raise ValueError(f"sgd_step: weights[{i}] is {w.dtype} on {w.device}; expected torch.float32 on {device}")
        if torch.empty_like(w, device="meta").stride() != w.stride():
            raise ValueError(f"sgd_step: weights[{i}] has strides {w.stride()} for shape {tuple(w.shape)}: its "
                             f"elements must fill one block of memory with no gaps or overlaps")
        _check("grads", i, grads[i], w, (torch.float32,))
        if momentum_buffers is not None:
            _check("momentum_buffers", i, momentum_buffers[i], w, (torch.float32,))
        if copies is not None:
            _check("copies", i, copies[i], w, COPY_DTYPES)
    if not (isinstance(lr, torch.Tensor) and lr.dtype == torch.float64 and lr.dim() == 0 and lr.device == device):
        got = f"{lr.dtype} of shape {tuple(lr.shape)} on {lr.device}" if isinstance(lr, torch.Tensor) else repr(lr)
        raise ValueError(f"sgd_step: lr must be a 0-dim torch.float64 tensor on {device}, got {got}")


def sgd_step(weights: list[torch.Tensor], grads: list[torch.Tensor], momentum_buffers: list[torch.Tensor] | None,
             copies: list[torch.Tensor] | None, lr: torch.Tensor, weight_decay: float, momentum: float,
             first_step: bool, grad_scale: torch.Tensor | None = None, found_inf: torch.Tensor | None = None,
             check: bool = True) -> None:
    """Update `weights` (and `momentum_buffers`, `copies`) in place from `grads`, in one pass and one launch per
    MAX_TENSORS tensors (the formula above).

    weights[i], grads[i], momentum_buffers[i]: fp32, one shape and one set of strides, with no gaps or overlaps (a
    parameter's own layout); momentum_buffers is None exactly when momentum is 0, and only written on the
    `first_step`. copies[i]: bf16 or fp16 in the same layout; or copies is None. All on one device. lr: a 0-dim
    float64 tensor there. grad_scale and found_inf: GradScaler's one-element fp32 tensors, or None (found_inf
    alone once the gradients are unscaled). `check=False` skips checking all that (~1 us a tensor), for a caller
    that has checked them already (an optimizer, whose tensors stay the same from step to step)."""
    if not weights:
        return
    device = weights[0].device
    if check:
        _check_all(weights, grads, momentum_buffers, copies, lr, momentum)
    grad_scale, found_inf = (None if t is None else t.to(device, torch.float32).reshape(())
                             for t in (grad_scale, found_inf))
    for first in range(0, len(weights), MAX_TENSORS):
        chosen = slice(first, first + MAX_TENSORS)
        ws = tuple(weights[chosen])
        starts = [0]
        for w in ws:
            starts.append(starts[-1] + (w.numel() + BLOCK - 1) // BLOCK)
        if starts[-1] == 0:
            continue
        launch(sgd_kernel, (starts[-1],), device,
               ws, tuple(grads[chosen]), tuple(momentum_buffers[chosen]) if momentum_buffers is not None else ws,
               tuple(copies[chosen]) if copies is not None else ws, tuple(w.numel() for w in ws), tuple(starts),
               lr, grad_scale if grad_scale is not None else lr, found_inf if found_inf is not None else lr,
               weight_decay, momentum,
               DECAY=weight_decay != 0, MOMENTUM=momentum != 0, FIRST_STEP=first_step,
               UNSCALE=grad_scale is not None, SKIP=found_inf is not None, COPY=copies is not None, BLOCK=BLOCK,
               num_warps=NUM_WARPS, enable_fp_fusion=False)

