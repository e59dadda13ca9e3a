"""One pass of SGD with momentum and weight decay over one fp32 parameter, in Triton: torch.optim.SGD's update
with dampening 0, no Nesterov, minimising, and optionally GradScaler's unscaling and a 16-bit copy of the weights.

    g = grad / grad_scale        under GradScaler only; nothing is read or written while found_inf != 0
    g = fma(weight_decay, w, g)  torch: grad.add(param, alpha=weight_decay), rounded once
    m = m * momentum + g         torch: buf.mul_(momentum).add_(g), rounded twice; m = g on the first step
    w = fma(-lr, m, w)           torch: param.add_(buf, alpha=-lr), rounded once
    copy = w rounded to 16 bits  the weights the next forward reads (optional)

Each element of w, grad and m is read once and w, m and the copy written once: 20 bytes per parameter, 22 with
the copy (torch's foreach SGD moves 44 and autocast's cast of the weights 6 more).

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

from kernels.tensors import check_device, launch

BLOCK, NUM_WARPS = 4096, 8  # 16 elements a thread: four 16-byte loads of each fp32 tensor
COPY_DTYPES = (torch.bfloat16, torch.float16)


@triton.jit
def sgd_kernel(
    w_ptr,          # [n] fp32 weights, updated in place
    g_ptr,          # [n] fp32 gradient (times grad_scale under GradScaler)
    m_ptr,          # [n] fp32 momentum buffer, updated in place (not touched without MOMENTUM)
    copy_ptr,       # [n] bf16 or fp16 copy of the weights, written (not touched without COPY)
    lr_ptr,         # [] fp64 learning rate
    scale_ptr,      # [] fp32 GradScaler's scale (not read without UNSCALE)
    found_inf_ptr,  # [] fp32 nonzero if the scaled gradients overflowed (not read without SKIP)
    n, weight_decay, momentum,
    DECAY: tl.constexpr, MOMENTUM: tl.constexpr, FIRST_STEP: tl.constexpr, UNSCALE: tl.constexpr,
    SKIP: tl.constexpr, COPY: tl.constexpr, BLOCK: tl.constexpr,
):
    offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
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
    lr = tl.load(lr_ptr).to(tl.float32)
    w = tl.fma(g, -lr, w)
    tl.store(w_ptr + offsets, w, mask=ok)
    if COPY:
        tl.store(copy_ptr + offsets, to_16_bits(w, copy_ptr.dtype.element_ty), mask=ok)


@triton.jit
def to_16_bits(x, dtype: tl.constexpr):
    """fp32 `x` rounded to nearest even in `dtype`. bf16 by hand, on the bits, as torch's cast does it: the same
    result on a GPU and in the interpreter (whose own fp32 -> bf16 conversion rounds ties up)."""
    if dtype == tl.bfloat16:
        bits = x.to(tl.uint32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
        bits = tl.where(x != x, 0x7FC0, bits)  # NaN stays NaN (the carry could turn one into inf)
        return bits.to(tl.uint16).to(tl.bfloat16, bitcast=True)
    return x.to(dtype)


def _check(name: str, t: torch.Tensor, weight: torch.Tensor, dtypes) -> None:
    if t.dtype not in dtypes:
        raise TypeError(f"sgd_step: {name} has dtype {t.dtype}; expected {' or '.join(map(str, dtypes))}")
    if t.device != weight.device:
        raise ValueError(f"sgd_step: {name} is on {t.device}, the weight on {weight.device}")
    if t.shape != weight.shape or t.stride() != weight.stride():
        raise ValueError(f"sgd_step: {name} has shape {tuple(t.shape)} and strides {t.stride()}; the weight "
                         f"{tuple(weight.shape)} and {weight.stride()} (the pass walks their memory in one order)")


def sgd_step(weight: torch.Tensor, grad: torch.Tensor, momentum_buffer: torch.Tensor | None,
             copy: torch.Tensor | None, lr: torch.Tensor, weight_decay: float, momentum: float, first_step: bool,
             grad_scale: torch.Tensor | None = None, found_inf: torch.Tensor | None = None) -> None:
    """Update `weight` (and `momentum_buffer`, `copy`) in place from `grad`, in one pass (the formula above).

    weight, grad, momentum_buffer: fp32, one shape and one set of strides, with no gaps or overlaps (a parameter's
    own layout); momentum_buffer is None exactly when momentum is 0, and only written on the `first_step`. copy:
    bf16 or fp16 in the same layout, or None. lr: a 0-dim float64 tensor on the weight's device. grad_scale and
    found_inf: GradScaler's one-element fp32 tensors, or None (found_inf alone once the gradients are unscaled)."""
    check_device("sgd_step", "weight", weight)
    if weight.dtype != torch.float32:
        raise TypeError(f"sgd_step: weight has dtype {weight.dtype}; expected torch.float32 (the master weights)")
    if torch.empty_like(weight, device="meta").stride() != weight.stride():
        raise ValueError(f"sgd_step: weight has strides {weight.stride()} for shape {tuple(weight.shape)}: its "
                         f"elements must fill one block of memory with no gaps or overlaps")
    _check("grad", grad, weight, (torch.float32,))
    if (momentum_buffer is None) != (momentum == 0):
        raise ValueError(f"sgd_step: momentum {momentum} needs a momentum_buffer exactly when it is not 0")
    if momentum_buffer is not None:
        _check("momentum_buffer", momentum_buffer, weight, (torch.float32,))
    if copy is not None:
        _check("copy", copy, weight, COPY_DTYPES)
    if not (isinstance(lr, torch.Tensor) and lr.dtype == torch.float64 and lr.dim() == 0
            and lr.device == weight.device):
        got = f"{lr.dtype} of shape {tuple(lr.shape)} on {lr.device}" if isinstance(lr, torch.Tensor) else repr(lr)
        raise ValueError(f"sgd_step: lr must be a 0-dim torch.float64 tensor on {weight.device}, got {got}")
    grad_scale, found_inf = (None if t is None else t.to(weight.device, torch.float32).reshape(())
                             for t in (grad_scale, found_inf))
    n = weight.numel()
    if n == 0:
        return
    launch(sgd_kernel, ((n + BLOCK - 1) // BLOCK,), weight.device,
           weight, grad, momentum_buffer if momentum_buffer is not None else weight,
           copy if copy is not None else weight, lr, grad_scale if grad_scale is not None else lr,
           found_inf if found_inf is not None else lr, n, weight_decay, momentum,
           DECAY=weight_decay != 0, MOMENTUM=momentum != 0, FIRST_STEP=first_step,
           UNSCALE=grad_scale is not None, SKIP=found_inf is not None, COPY=copy is not None, BLOCK=BLOCK,
           num_warps=NUM_WARPS, enable_fp_fusion=False)
