"""What the memory-bound kernels (LRN, max-pool) share about an (N, C, H, W) activation.

`check_activation` turns unsupported input into an error that names the op and the argument;
`tile_shape` picks a [channels x positions] tile whose fast axis is the tensor's contiguous one,
so the same kernel reads NCHW (positions contiguous) and channels_last (channels contiguous)
with coalesced loads; `memory_format` keeps an output in its input's layout, as PyTorch does.
"""

import torch
import triton

from kernels.interpret import interpreting

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def check_activation(op: str, name: str, x) -> None:
    """Raise a clear error unless `x` is a 4-D float tensor the Triton kernels can read."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"{op}: {name} must be 4-D (N, C, H, W), got shape {tuple(x.shape)}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{op}: {name} has dtype {x.dtype}; supported: float32, float16, bfloat16")
    if x.device.type != "cuda" and not (x.device.type == "cpu" and interpreting()):
        raise ValueError(f"{op}: {name} is on {x.device}, but the Triton kernels run on a CUDA GPU "
                         f"(or on the CPU with TRITON_INTERPRET=1)")


def check_positive_int(op: str, name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{op}: {name} must be a positive int, got {value!r}")


def tile_shape(channels: int, positions: int, channels_contiguous: bool, elements: int) -> tuple[int, int]:
    """(BLOCK_C, BLOCK_P) with BLOCK_C * BLOCK_P <= `elements`, both powers of two.

    The contiguous axis gets the wide side (up to 128 positions, or 32 channels: 96 and 256
    split into whole blocks of 32), never wider than the tensor needs."""
    if channels_contiguous:
        block_c = min(32, triton.next_power_of_2(channels))
        return block_c, min(elements // block_c, triton.next_power_of_2(positions))
    block_p = min(128, triton.next_power_of_2(positions))
    return min(elements // block_p, triton.next_power_of_2(channels)), block_p


def memory_format(x: torch.Tensor) -> torch.memory_format:
    """channels_last if `x` is laid out that way, else contiguous (PyTorch's choice for outputs)."""
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


def alexnet_activations(shapes, batch: int = 128):
    """(label, tensor on the meta device) for each (C, H, W) in `shapes` at `batch`, in every dtype
    and layout the kernels serve: the inputs kernels.aot compiles for."""
    for shape in shapes:
        for dtype in FLOAT_DTYPES:
            for layout, layout_name in ((torch.contiguous_format, "NCHW"), (torch.channels_last, "NHWC")):
                x = torch.empty(batch, *shape, dtype=dtype, device="meta", memory_format=layout)
                yield f"{'x'.join(map(str, shape))} {str(dtype).removeprefix('torch.')} {layout_name}", x
