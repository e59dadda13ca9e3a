"""The GEMM tiles the conv kernels run with, and how one is chosen for a launch.

A tile is (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages), BLOCK_K given for 16-bit operands and halved for
fp32, so a step reads 128 bytes of the reduction per row whatever the dtype. perf.aot compiles every tile
`usable_tiles` allows at AlexNet's shapes; the interpreter runs the first. All are 4 warps: a pipelined loop
flattened over (r, s, c) with div/mod on its index is known to miscompile at 8 warps (pytorch issue 173068).
wgrad's loop also splits pixels into (n, p, q), so it needs the widest tile to keep that address arithmetic
below the tensor cores' time.
"""

import torch
import triton

from kernels.interpret import interpreting
from kernels.tensors import cdiv

TILES = {
    "fwd": [(128, 128, 64, 4, 3), (128, 64, 64, 4, 4)],
    "dgrad": [(128, 128, 64, 4, 3), (128, 64, 64, 4, 4)],
    "wgrad": [(128, 128, 64, 4, 3)],
}
SMEM_BUDGET = 160 * 1024  # bytes for the pipelined operand tiles: sm_80 allows 163 KiB a block, sm_90 227
RESIDENT_BLOCKS = 2  # 4-warp blocks of up to 255 registers a thread that one SM's 64K registers hold
MIN_SPLIT_STEPS = 8  # wgrad's reduction is split across programs, each keeping at least this many BLOCK_K steps

# The autotuner's key: every argument that changes the layer or the code, except the tile itself (the
# tensors' dtypes are added by Triton). Not the batch (in ROWS): a layer keeps the tile it was tuned with
# (at the run's first step) for every batch size, so a ragged last batch or evaluation never re-tunes.
GEOMETRY = ["H", "W", "P", "Q", "CG", "KG", "KH", "KW", "STRIDE_H", "STRIDE_W", "PAD_H", "PAD_W"]
KEYS = {
    "fwd": [*GEOMETRY, "HAS_BIAS", "PRECISION", "INDEX_64"],
    "dgrad": [*GEOMETRY, "PRECISION", "INDEX_64"],
    "wgrad": [*GEOMETRY, "GROUPS", "PRECISION", "INDEX_64"],
}


def usable_tiles(kernel: str, dtype: torch.dtype, gemm_m: int, gemm_n: int) -> list[tuple]:
    """The tiles of TILES[kernel] the autotuner may pick for a GEMM of gemm_m x gemm_n outputs: those whose
    operand pipeline fits SMEM_BUDGET, none more than twice the side it covers (mostly masked work), and,
    where some tile's side divides the channel side (N forward and dgrad, M in wgrad), only those."""
    size = torch.finfo(dtype).bits // 8
    tiles = [(bm, bn, bk * 2 // size, warps, stages) for bm, bn, bk, warps, stages in TILES[kernel]]
    fits = [t for t in tiles if t[4] * (t[0] + t[1]) * t[2] * size <= SMEM_BUDGET]
    smallest_m, smallest_n = min(t[0] for t in fits), min(t[1] for t in fits)
    fits = [t for t in fits if t[0] <= max(smallest_m, 2 * gemm_m) and t[1] <= max(smallest_n, 2 * gemm_n)]
    side, channels = (0, gemm_m) if kernel == "wgrad" else (1, gemm_n)
    dividing = [t for t in fits if channels % t[side] == 0]
    return dividing or fits


def tile_meta(tile: tuple) -> dict:
    """The launch keywords of a tile."""
    bm, bn, bk, warps, stages = tile
    return dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, num_warps=warps, num_stages=stages)


def gemm_sides(kernel: str, args: dict) -> tuple:
    """(operand dtype, GEMM rows, GEMM columns) of a launch of `kernel` from its named arguments."""
    if kernel == "fwd":
        return args["x_ptr"].dtype, args["ROWS"], args["KG"]
    if kernel == "dgrad":
        return args["g_ptr"].dtype, args["ROWS"], args["CG"]
    return args["x_ptr"].dtype, args["KG"], args["CG"] * args["KH"] * args["KW"]


def configs(kernel: str) -> list[triton.Config]:
    """Every tile of TILES[kernel] with its 16-bit and its fp32 BLOCK_K (the pruner keeps the dtype's)."""
    return [triton.Config(dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=k), num_warps=warps, num_stages=stages)
            for bm, bn, bk, warps, stages in TILES[kernel] for k in (bk, bk // 2)]


def pruner(kernel: str):
    """An early_config_prune keeping usable_tiles. The interpreter would time every config (minutes per
    shape): it keeps the first usable one."""
    def prune(candidates, named_args, **kwargs):
        usable = usable_tiles(kernel, *gemm_sides(kernel, {**named_args, **kwargs}))
        kept = [c for c in candidates if (c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.kwargs["BLOCK_K"],
                                          c.num_warps, c.num_stages) in usable]
        return kept[:1] if interpreting() else kept
    return prune


def autotune(kernel: str):
    """The @triton.autotune of conv kernel `kernel` ("fwd", "dgrad" or "wgrad")."""
    return triton.autotune(configs=configs(kernel), key=KEYS[kernel],
                           prune_configs_by={"early_config_prune": pruner(kernel)})


def wgrad_splits(programs: int, steps: int, sms: int) -> int:
    """How many programs share wgrad's reduction of `steps` BLOCK_K steps when the output tiles alone
    make `programs`: one wave, each of `sms` SMs holding RESIDENT_BLOCKS, each split keeping MIN_SPLIT_STEPS steps."""
    return max(1, min(cdiv(RESIDENT_BLOCKS * sms, programs), steps // MIN_SPLIT_STEPS))
