"""Triton LRN and max-pool against the torch ops, forward and forward+backward, at AlexNet's shapes.

    pytest bench/ --benchmark-only

On a GPU: batch 128, fp32/fp16/bf16, each op against its "torch" backend twin
(F.local_response_norm, F.max_pool2d) and the same ops through torch.compile; extra_info has GB/s, the HBM floor and the fraction of it
reached. On the CPU it is a smoke test: batch 1, spatial size cut to 15x15 and fp32 only, with
the Triton rows labelled as interpreted (their times are not speeds).

The bytes that must move (the floor) come from bench.costs (lrn_costs, pool_costs), the shapes from
bench.roofline. extra_info["floor_ms_batch128"] gives these floors at batch 128 on each GPU in bench.common.HBM_PEAK,
whatever machine ran the benchmark.
"""

import pytest
import torch

import kernels
from bench.common import hbm_floors_ms, measure
from bench.costs import lrn_costs, pool_costs
from alexnet.layers import LRN
from bench.roofline import LRN_POOL_SHAPES

GPU = torch.cuda.is_available()
DEVICE = torch.device("cuda" if GPU else "cpu")
BATCH = 128 if GPU else 1
DTYPES = [torch.float32, torch.float16, torch.bfloat16] if GPU else [torch.float32]


def bytes_moved(layer: str, backward: bool, dtype: torch.dtype, shape: tuple) -> int:
    costs = (lrn_costs if layer.startswith("lrn") else pool_costs)(shape, torch.finfo(dtype).bits // 8)
    return costs["fwd+bwd" if backward else "fwd"][1]


def shape(layer: str) -> tuple:
    c, h, w = LRN_POOL_SHAPES[layer]
    return (BATCH, c, h, w) if GPU else (BATCH, c, min(h, 15), min(w, 15))


@pytest.mark.parametrize("backend", kernels.BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).removeprefix("torch."))
@pytest.mark.parametrize("backward", [False, True], ids=["fwd", "fwd+bwd"])
@pytest.mark.parametrize("layer", list(LRN_POOL_SHAPES))
def test_lrn_pool(benchmark, layer, backward, dtype, backend):
    ops = kernels.backend(backend)
    op = (lambda t: ops.lrn(t, **LRN)) if layer.startswith("lrn") else (lambda t: ops.max_pool2d(t, 3, 2))
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
        layer=layer, shape=list(x.shape), batch=BATCH, backward=backward, backend=backend,
        floor_ms_batch128=hbm_floors_ms(bytes_moved(layer, backward, dtype, (128, *LRN_POOL_SHAPES[layer]))),
        **{"pass": "fwd+bwd" if backward else "fwd"})
    measure(benchmark, step, DEVICE, dtype, bytes_moved(layer, backward, dtype, tuple(x.shape)),
            triton=backend == "triton")
