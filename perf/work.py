"""The `work` of one launch: what perf.launches yields as the fourth item, for `python -m perf.aot --report`.

perf.launches yields `(label, kernel, kwargs, work)` per launch, with `work` the dict `launch_work` builds:

    layer       "conv1".."conv5", "lrn1", "lrn2", "pool1", "pool2", "pool5"
    op          "fwd", "dgrad", "wgrad", "bwd" (or another launch's name)
    dtype       "fp32", "tf32" (fp32 tensors, tf32 products), "bf16", "fp16"
    programs    the launch's grid size, all axes multiplied
    iterations  main-loop trips per program (the largest, where programs differ)
    macs        useful MACs of the whole launch (0 for memory-bound kernels)
    bytes       the fewest HBM bytes the launch must move (bench.costs, the project's one place for costs)
    step        True if the launch is part of one bf16 or tf32 training step of AlexNet(kernels="triton")

The costs come from bench.costs; the helpers below turn its per-op (FLOPs, bytes) into per-launch work.
"""

from bench.costs import ELEMENT_BYTES, conv_costs, lrn_costs, pool_costs

KEYS = ("layer", "op", "dtype", "programs", "iterations", "macs", "bytes", "step")
DTYPES = tuple(ELEMENT_BYTES)  # fp32, tf32, bf16, fp16


def dtype_name(dtype, tf32: bool = False) -> str:
    """'fp32' / 'tf32' / 'bf16' / 'fp16' of a torch dtype (`tf32`: fp32 tensors multiplied in tf32)."""
    name = {"torch.float32": "fp32", "torch.bfloat16": "bf16", "torch.float16": "fp16"}[str(dtype)]
    return "tf32" if tf32 and name == "fp32" else name


def launch_work(layer, op, dtype, programs, iterations, macs, bytes, step) -> dict:
    """The checked `work` dict (KEYS) of one launch."""
    if dtype not in DTYPES:
        raise ValueError(f"work: dtype {dtype!r} is not one of {DTYPES}")
    work = dict(layer=layer, op=op, dtype=dtype, programs=int(programs), iterations=int(iterations),
                macs=int(macs), bytes=int(bytes), step=bool(step))
    if min(work["programs"], work["iterations"]) < 1 or min(work["macs"], work["bytes"]) < 0:
        raise ValueError(f"work: {layer} {op}: programs and iterations must be >= 1, macs and bytes >= 0: {work}")
    return work


def in_step(dtype: str) -> bool:
    """Whether a launch in this dtype can be part of a training step: bf16 (autocast) or fp32/tf32."""
    return dtype in ("bf16", "tf32", "fp32")


def conv_work(layer, op, x_shape, w_shape, stride, padding, dtype, programs, iterations, step) -> dict:
    """A convolution launch: op in fwd/dgrad/wgrad; x_shape (N, C, H, W), w_shape (K, C/groups, R, S)."""
    flops, bytes_ = conv_costs(x_shape, w_shape, stride, padding, ELEMENT_BYTES[dtype])[op]
    return launch_work(layer, op, dtype, programs, iterations, flops // 2, bytes_, step)


def lrn_work(layer, op, shape, dtype, programs, iterations, step) -> dict:
    """An LRN launch: fwd reads a and writes b; bwd reads a and dL/db and writes dL/da."""
    costs = lrn_costs(shape, ELEMENT_BYTES[dtype])
    bytes_ = costs["fwd"][1] if op == "fwd" else costs["fwd+bwd"][1] - costs["fwd"][1]
    return launch_work(layer, op, dtype, programs, iterations, 0, bytes_, step)


def pool_work(layer, op, shape, kernel, stride, dtype, programs, iterations, step) -> dict:
    """A max-pool launch: fwd reads x, writes y and one byte per output (the choice); bwd reads dL/dy and
    the choice, writes dL/dx."""
    costs = pool_costs(shape, ELEMENT_BYTES[dtype], kernel, stride)
    n, c, h, w = shape
    outputs = n * c * ((h - kernel) // stride + 1) * ((w - kernel) // stride + 1)
    fwd = costs["fwd"][1] + outputs
    bytes_ = fwd if op == "fwd" else costs["fwd+bwd"][1] - fwd
    return launch_work(layer, op, dtype, programs, iterations, 0, bytes_, step)
