"""What the three ops share about their tensors: the checks, the layouts, 32-bit offsets, and the device a
launch runs on.

`check_activation` turns unsupported input into an error that names the op and the argument;
`tile_shape` picks a [channels x positions] tile whose fast axis is the tensor's contiguous one,
so the same kernel reads NCHW (positions contiguous) and channels_last (channels contiguous)
with coalesced loads; `memory_format` keeps an output in its input's layout, as PyTorch does.

`launch` is the one way a kernel is started. Triton launches on torch's *current* CUDA device and its
current stream, not on the device of the tensors it is given: a tensor on cuda:1 while cuda:0 is current
would be read by a kernel running on GPU 0. `launch` makes the tensors' device current for the call (and
so its current stream), as every torch op does. `shapes_only(launcher)` runs a launcher starting no kernel:
its outputs' shapes, strides and dtypes are what torch.compile traces the ops' custom-op forms with.
"""

import contextlib
import functools
import threading

import torch

from kernels.interpret import interpreting

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
INT32_LIMIT = 2**31


def check_activation(op: str, name: str, x) -> None:
    """Raise a clear error unless `x` is a 4-D float tensor the Triton kernels can read."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"{op}: {name} must be 4-D (N, C, H, W), got shape {tuple(x.shape)}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{op}: {name} has dtype {x.dtype}; supported: float32, float16, bfloat16")
    check_device(op, name, x)


def check_device(op: str, name: str, x: torch.Tensor) -> None:
    if x.device.type != "cuda" and not (x.device.type == "cpu" and interpreting()):
        raise ValueError(f"{op}: {name} is on {x.device}; the Triton kernels need a CUDA tensor "
                         f"(or TRITON_INTERPRET=1 to run them on the CPU interpreter)")


def check_positive_int(op: str, name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{op}: {name} must be a positive int, got {value!r}")


def cdiv(a: int, b: int) -> int:
    """ceil(a / b) for launch grids: plain Python (triton.cdiv is a constexpr function, ~9 µs a host call)."""
    return -(-a // b)


def next_power_of_2(n: int) -> int:
    """The smallest power of two >= n (as triton.next_power_of_2, without its host-call cost)."""
    return 1 << (n - 1).bit_length()


def extent(t: torch.Tensor, skip_batch: bool = False) -> int:
    """The largest element offset into `t` from its first element (within one image with `skip_batch`)."""
    return span(t.shape, t.stride(), skip_batch)


def span(shape, strides, skip_batch: bool = False) -> int:
    """extent() of a tensor of `shape` and `strides`."""
    first = 1 if skip_batch else 0
    return sum((size - 1) * abs(step) for size, step in zip(shape[first:], strides[first:]))


def needs_int64(*tensors) -> bool:
    """Whether an offset into one of `tensors` can reach 2^31 elements (then a kernel indexes in int64)."""
    return any(extent(t) >= INT32_LIMIT for t in tensors)


def layouts_need_int64(*layouts) -> bool:
    """needs_int64 of tensors given as (shape, strides) pairs."""
    return any(span(shape, strides) >= INT32_LIMIT for shape, strides in layouts)


def check_image_offsets(op: str, name: str, t: torch.Tensor, margin: int = 0) -> None:
    """Kernels that index within one image in int32 (the image's own offset in int64) refuse larger images."""
    if extent(t, skip_batch=True) + margin >= INT32_LIMIT:
        raise ValueError(f"{op}: {name} has an image of {tuple(t.shape[1:])} with strides {tuple(t.stride()[1:])}: "
                         "offsets within one image must fit in int32 (pass a contiguous tensor)")


def tile_shape(channels: int, positions: int, channels_contiguous: bool, elements: int) -> tuple[int, int]:
    """(BLOCK_C, BLOCK_P) with BLOCK_C * BLOCK_P <= `elements`, both powers of two.

    The contiguous axis gets the wide side (up to 128 positions, or 32 channels: 96 and 256
    split into whole blocks of 32), never wider than the tensor needs."""
    if channels_contiguous:
        block_c = min(32, next_power_of_2(channels))
        return block_c, min(elements // block_c, next_power_of_2(positions))
    block_p = min(128, next_power_of_2(positions))
    return min(elements // block_p, next_power_of_2(channels)), block_p


def memory_format(x: torch.Tensor) -> torch.memory_format:
    """channels_last if `x` is laid out that way, else contiguous (PyTorch's choice for outputs)."""
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


_launching = threading.local()  # device: the launch in progress on this thread (for tests); shapes_only


def launch(kernel, grid, device: torch.device, *args, **kwargs):
    """kernel[grid](*args, **kwargs) on `device` (its current stream): the only way the ops start a kernel."""
    if getattr(_launching, "shapes_only", False):
        return
    guard = torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()
    _launching.device = device
    try:
        with guard:
            kernel[grid](*args, **kwargs)
    finally:
        _launching.device = None


def launching_on() -> torch.device | None:
    """The device of the launch in progress on this thread (inside `launch`), else None."""
    return getattr(_launching, "device", None)


def shapes_only(launcher):
    """`launcher`, run for its outputs alone (their contents undefined): no kernel starts. The fake (meta)
    implementation of a custom op is its launcher run this way, so the two cannot disagree on a stride."""
    @functools.wraps(launcher)
    def fake(*args, **kwargs):
        _launching.shapes_only = True
        try:
            return launcher(*args, **kwargs)
        finally:
            _launching.shapes_only = False
    return fake
