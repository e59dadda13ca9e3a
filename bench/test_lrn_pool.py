"""Triton LRN and max-pool against the torch ops, forward and forward+backward, at AlexNet's shapes.

    pytest bench/ --benchmark-only

On a GPU: batch 128, fp32/fp16/bf16, each op against its "torch" backend twin
(F.local_response_norm, F.max_pool2d); extra_info has GB/s, the HBM floor and the fraction of it
reached. On the CPU it is a smoke test: batch 1, spatial size cut to 15x15 and fp32 only, with
the Triton rows labelled as interpreted (their times are not speeds).

Bytes that must move (the floor), with E bytes per element:
    LRN forward        read a, write b                                 2 * numel * E
    LRN fwd+bwd        forward, then read a and dL/db, write dL/da      5 * numel * E
    max-pool forward   read x, write y                                 (in + out) * E
    max-pool fwd+bwd   forward, then read dL/dy, write dL/dx, and one
                       byte per output to say where each max was
                       (written forward, read backward)                2 * (in + out) * E + 2 * out
extra_info["floor_ms_batch128"] gives these floors at batch 128 on each GPU in bench.common.HBM_PEAK,
whatever machine ran the benchmark.
"""

import pytest
import torch

import kernels
from bench.common import hbm_floors_ms, measure

GPU = torch.cuda.is_available()
DEVICE = torch.device("cuda" if GPU else "cpu")
BATCH = 128 if GPU else 1
DTYPES = [torch.float32, torch.float16, torch.bfloat16] if GPU else [torch.float32]
SHAPES = {"lrn1": (96, 55, 55), "lrn2": (256, 27, 27),  # per image, (C, H, W) of each op's input
          "pool1": (96, 55, 55), "pool2": (256, 27, 27), "pool5": (256, 13, 13)}
PAPER_LRN = dict(size=5, alpha=1e-4, beta=0.75, k=2.0)


def bytes_moved(layer: str, backward: bool, dtype: torch.dtype, batch: int) -> int:
    """The floor's bytes (module docstring) for `layer` at `batch`."""
    c, h, w = SHAPES[layer]
    size = torch.finfo(dtype).bits // 8
    numel = batch * c * h * w
    if layer.startswith("lrn"):
        return (5 if backward else 2) * numel * size
    out = batch * c * ((h - 3) // 2 + 1) * ((w - 3) // 2 + 1)
    return 2 * (numel + out) * size + 2 * out if backward else (numel + out) * size


def shape(layer: str) -> tuple:
    c, h, w = SHAPES[layer]
    return (BATCH, c, h, w) if GPU else (BATCH, c, min(h, 15), min(w, 15))


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).removeprefix("torch."))
@pytest.mark.parametrize("backward", [False, True], ids=["fwd", "fwd+bwd"])
@pytest.mark.parametrize("layer", list(SHAPES))
def test_lrn_pool(benchmark, layer, backward, dtype, backend):
    ops = kernels.backend(backend)
    op = (lambda t: ops.lrn(t, **PAPER_LRN)) if layer.startswith("lrn") else (lambda t: ops.max_pool2d(t, 3, 2))
    x = torch.randn(shape(layer), device=DEVICE).relu().to(dtype)  # post-ReLU, as in the network
    if backward:
        x.requires_grad_()
        dy = torch.randn_like(op(x))

        def step():  # autograd.grad, not .backward: no accumulation into x.grad to time
            return torch.autograd.grad(op(x), x, dy)
    else:
        def step():
            return op(x)

    benchmark.group = f"{layer} {'fwd+bwd' if backward else 'fwd'} {str(dtype).removeprefix('torch.')}"
    benchmark.extra_info.update(
        layer=layer, shape=list(x.shape), backward=backward, backend=backend,
        floor_ms_batch128=hbm_floors_ms(bytes_moved(layer, backward, dtype, 128)))
    measure(benchmark, step, DEVICE, dtype, bytes_moved(layer, backward, dtype, x.shape[0]), triton=backend == "triton")
