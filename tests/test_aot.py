"""`python -m perf.aot` compiles every Triton kernel for sm_80 and sm_90 with no GPU, and passes;
`--report` reads each build's SASS (perf.sass) and estimates it.

The full run (~3-4 min quiet, marked slow) and a one-launch run (plain pytest) are subprocesses with this
session's environment, TRITON_INTERPRET=1 included (conftest sets it on a CPU-only machine), so the command
must switch the interpreter off itself. The SASS parsing and the R arithmetic are tested on small SASS texts written
here in cuobjdump's format.
"""

import importlib
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import triton
from triton.runtime.interpreter import InterpretedFunction

from perf import aot, sass
from perf.work import KEYS, launch_work

ROOT = Path(__file__).resolve().parents[1]
MODULES = ["kernels.local_response_norm", "kernels.maxpool", "kernels.conv_relu.kernels"]  # where kernels live


def triton_kernels(module_name):
    """Names of the kernels a module defines: @triton.jit functions named *_kernel (jitted or
    interpreted, autotuned or not); the other jitted functions are helpers inlined into them."""
    module = importlib.import_module(module_name)
    jitted = (triton.runtime.JITFunction, InterpretedFunction)
    return sorted(name for name, value in vars(module).items()
                  if name.endswith("_kernel")
                  and (isinstance(value, jitted) or isinstance(getattr(value, "fn", None), jitted)))


def run_aot(*args, timeout):
    return subprocess.run([sys.executable, "-m", "perf.aot", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.slow
def test_aot_compiles_every_kernel_without_spills_and_reports(tmp_path):
    out = tmp_path / "report.json"
    run = run_aot("--report", "--json", out, timeout=1800)  # ~4 min quiet
    report = run.stdout + run.stderr
    assert run.returncode == 0, f"[perf.aot] exit {run.returncode}:\n{report}"
    assert report.rstrip().endswith("all pass"), f"[perf.aot] no verdict:\n{report}"
    for module in MODULES:
        kernels = triton_kernels(module)
        assert kernels, f"[perf.aot] {module} defines no Triton kernel"
        for kernel in kernels:
            for arch in ("sm_80", "sm_90"):
                assert any(kernel in line and arch in line for line in report.splitlines()), \
                    f"[perf.aot] {module}.{kernel} not compiled for {arch}:\n{report}"

    data = json.loads(out.read_text())
    builds = data["builds"]
    assert f"{len(builds)} builds, all pass" in report.splitlines()[-1], "[perf.aot] JSON rows != builds"
    for row in builds:
        name = f"[{row['kernel']} {row['arch']} {row['tile']}]"
        assert row["loop_instructions"] > 0 and row["occupancy"] >= 1, name
        assert row["launches"] and all(set(launch["work"]) == set(KEYS) for launch in row["launches"]), name
        if row["kernel"] in ("fwd_kernel", "dgrad_kernel", "wgrad_kernel"):  # tensor-core GEMMs
            mma = "HGMMA" if row["arch"] == "sm_90" else "HMMA"
            assert row["mma"].startswith(mma) and row["loop"] == "mma loop" and row["R"] > 0, name
            assert set(row["loads"]) <= {"LDGSTS", "LDG", "UTMALDG"} and row["loads"], name
            # the kernels' targets: tensor-bound by the count, wgmma pipelined, at most 4 warps (pytorch#173068)
            assert row["warps"] <= 4, f"{name} {row['warps']} warps"
            if row["arch"] == "sm_90":
                assert row["R"] <= 1.0 and not row["waits_for_wgmma"], f"{name} R={row['R']}, waits"
        else:  # LRN and max-pool: memory-bound, no MMA
            assert row["mma"] == "-" and row["R"] is None and row["loop"] != "mma loop", name
        for launch in row["launches"]:
            if row["arch"] == "sm_90":
                h100, h200 = launch["h100"], launch["h200"]
                assert 0 < h200["seconds"] <= h100["seconds"], f"{name} {launch['label']}"
                assert h100["bound"] in ("tensor", "issue", "memory"), f"{name} {launch['label']}"
    for dtype in ("bf16", "tf32"):
        roll = data["rollup"][dtype]
        assert not roll["missing"], f"[perf.aot rollup {dtype}] no build for {roll['missing']}"
        step = roll["totals"]["step"]["h100"]["seconds"]
        assert step > roll["compute_floor_s"] > 0 and roll["ratio"]["h100"] > 1, f"[perf.aot rollup {dtype}]"
        ops = {(e["layer"], e["op"]) for e in roll["layers"]}
        assert ("conv1", "dgrad") not in ops and ("conv2", "dgrad") in ops and ("fc6", "wgrad") in ops, \
            f"[perf.aot rollup {dtype}] {sorted(ops)}"


def test_one_launch_compiles_without_spills_and_is_estimated(tmp_path):
    """The plain-pytest share of the full run: conv3's bf16 wgrad (the GEMM whose split-K partials are now
    stored, not added with atomics) for sm_80 and sm_90, its SASS read and its launch estimated."""
    out = tmp_path / "report.json"
    run = run_aot("--report", "--only", "conv3 bfloat16 wgrad", "--json", out, timeout=600)  # ~20 s quiet
    report = run.stdout + run.stderr
    assert run.returncode == 0 and report.rstrip().endswith("all pass"), \
        f"[perf.aot --only] exit {run.returncode}:\n{report}"
    builds = json.loads(out.read_text())["builds"]
    assert {row["arch"] for row in builds} == {"sm_80", "sm_90"}, builds
    assert all(row["kernel"] == "wgrad_kernel" for row in builds), builds
    sm90 = next(row for row in builds if row["arch"] == "sm_90")
    assert sm90["mma"].startswith("HGMMA") and sm90["R"] <= 1.0 and not sm90["waits_for_wgmma"], \
        f"[wgrad sm_90] mma {sm90['mma']} R {sm90['R']} waits {sm90['waits_for_wgmma']}"
    assert sm90["launches"][0]["h100"]["seconds"] > 0, "[wgrad sm_90] no estimate"


def test_only_matching_nothing_and_an_unwritable_json_are_refused_before_compiling(tmp_path):
    run = run_aot("--only", "no_such_kernel", timeout=120)
    assert run.returncode == 2 and "matches no kernel name" in run.stderr and "wgrad_kernel" in run.stderr, \
        f"[perf.aot --only]\n{run.stdout}{run.stderr}"
    (tmp_path / "file").write_text("")
    for path, problem in ((tmp_path / "file" / "report.json", "is a file"), (tmp_path, "is a folder")):
        start = time.monotonic()
        run = run_aot("--report", "--json", path, timeout=120)
        assert run.returncode == 2 and problem in run.stderr and str(path) in run.stderr, \
            f"[perf.aot --json {path}]\n{run.stdout}{run.stderr}"
        assert time.monotonic() - start < 30, "[perf.aot --json] refused only after compiling"


def test_help_is_quick_and_compiles_nothing():
    start = time.monotonic()
    run = subprocess.run([sys.executable, "-m", "perf.aot", "--help"], cwd=ROOT, capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 0 and run.stdout.startswith("usage:"), f"[perf.aot --help]\n{run.stdout}{run.stderr}"
    assert "--report" in run.stdout and "--json" in run.stdout, f"[perf.aot --help]\n{run.stdout}"
    assert time.monotonic() - start < 5, "[perf.aot --help] took over 5 s: does it import triton?"
    check = ("import sys\nfrom perf import aot\ntry:\n    aot.main(['--help'])\nexcept SystemExit:\n    pass\n"
             "print('IMPORTED' if 'triton' in sys.modules or 'torch' in sys.modules else 'CLEAN')")
    run = subprocess.run([sys.executable, "-c", check], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert run.stdout.rstrip().endswith("CLEAN"), f"[perf.aot --help] imported triton or torch:\n{run.stdout}"


# ----------------------------------------------------------------------------------------------------------
# SASS fixtures, in cuobjdump -sass's format (encodings abridged to one word: the parser ignores them)

HEADER = """
\tcode for sm_90a
\t\tFunction : fwd_kernel
\t.headerflags\t@"EF_CUDA_TEXMODE_UNIFIED EF_CUDA_64BIT_ADDRESS EF_CUDA_SM90"
"""


def listing(*lines):
    """cuobjdump-style text of `lines` at addresses 0x0, 0x10, ...; then EXIT and the trap padding."""
    lines = [*lines, "EXIT ;", "BRA {self};", "NOP;"]
    out = [HEADER]
    for i, text in enumerate(lines):
        out.append(f"        /*{16 * i:04x}*/                   {text.format(self=hex(16 * i))}"
                   f"                  /* 0x000fe20000000800 */\n"
                   "                                                              /* 0x000fc60000011606 */")
    return "\n".join(out)


def at(i):
    return hex(16 * i)


# An sm_90 GEMM: prologue (2), loop body lines 2..9 (8 instructions, 4 HGMMA), epilogue.
SM90_PIPELINED = listing(
    "LDC R1, c[0x0][0x28] ;",
    "LDGSTS.E.BYPASS.128 [R49], desc[UR22][R26.64], P3 ;",
    "DEPBAR.LE SB0, 0x4 ;",  # loop start (2)
    "HGMMA.64x128x16.F32.BF16 R88, gdesc[UR8], R88 ;",
    "HGMMA.64x128x16.F32.BF16 R88, gdesc[UR12], R88 ;",
    "HGMMA.64x128x16.F32.BF16 R24, gdesc[UR8], R24 ;",
    "HGMMA.64x128x16.F32.BF16 R24, gdesc[UR12], R24, gsb0 ;",
    "WARPGROUP.DEPBAR.LE gsb0, 0x1 ;",
    "LDGSTS.E.BYPASS.128 [R171], desc[UR22][R162.64], P6 ;",
    f"@!P5 BRA {at(2)} ;",  # loop end (9)
    "WARPGROUP.DEPBAR.LE gsb0, 0x0 ;",  # after the loop: drains the last wgmma, not a per-iteration wait
    "STG.E.128 desc[UR4][R2.64], R88 ;",
)

# A wgrad-like loop whose HGMMA takes A from registers and waits to zero every iteration; an outer loop
# around it; plain LDG loads.
SM90_WAITING = listing(
    "S2R R0, SR_CTAID.X ;",
    "LDG.E.128 R100, desc[UR4][R2.64] ;",  # outer loop start (1)
    "LDG.E.128 R104, desc[UR4][R4.64] ;",  # inner loop start (2)
    "WARPGROUP.ARRIVE ;",
    "HGMMA.64x128x16.F32.BF16 R24, R100, gdesc[UR12].tnspB, R24, gsb0 ;",
    "WARPGROUP.DEPBAR.LE gsb0, 0x0 ;",
    "LDGDEPBAR ;",
    f"@!P2 BRA {at(2)} ;",  # inner loop end (7): 6 instructions
    "IADD3 R2, P0, R2, 0x40, RZ ;",
    f"@!P3 BRA {at(1)} ;",  # outer loop end (9)
)

# sm_80: HMMA.16816 (bf16) loop with a forward branch inside and NOPs.
SM80_HMMA = listing(
    "MOV R1, c[0x0][0x28] ;",
    "LDGSTS.E.BYPASS.LTC128B.128 [R217], [R26.64], P3 ;",  # loop start (1)
    "LDSM.16.M88.4 R132, [R0] ;",
    "HMMA.16816.F32.BF16 R4, R132.reuse, R136, R4 ;",
    "HMMA.16816.F32.BF16 R8, R132, R138, R8 ;",
    f"@P0 BRA {at(7)} ;",
    "NOP ;",
    f"@!P1 BRA {at(1)} ;",  # loop end (7): 6 instructions, the NOP not counted
)

# A memory-bound kernel: a small loop (3) and a larger one (5); plain loads.
NO_MMA_TWO_LOOPS = listing(
    "S2R R0, SR_TID.X ;",
    "LDG.E.U16 R53, desc[UR6][R10.64+0x2] ;",  # loop A (1..3)
    "FMUL R2, R53, R53 ;",
    f"@P0 BRA {at(1)} ;",
    "LDG.E R54, desc[UR6][R10.64+0x4] ;",  # loop B (4..8)
    "FFMA R3, R54, R54, R2 ;",
    "MUFU.LG2 R4, R3 ;",
    "STG.E.U16 desc[UR6][R8.64], R4 ;",
    f"@P1 BRA {at(4)} ;",
)

STRAIGHT_LINE = listing("S2R R0, SR_TID.X ;", "@P0 EXIT ;", "UTMALDG.2D [UR8], [UR4] ;", "STG.E [R2.64], R0 ;")


def test_parse_reads_addresses_opcodes_and_stops_at_the_trap():
    instructions = sass.parse(SM90_PIPELINED)
    assert instructions[0] == sass.Instruction(0, "LDC", "R1, c[0x0][0x28]")
    assert instructions[3].opcode == "HGMMA.64x128x16.F32.BF16" and instructions[3].name == "HGMMA"
    assert instructions[9].opcode == "BRA" and instructions[9].operands == f"{at(2)}"
    body = sass.kernel_body(instructions)
    assert body[-1].opcode == "EXIT" and len(body) == len(instructions) - 2  # trap BRA and NOP dropped


def test_main_loop_is_the_innermost_mma_loop():
    loop = sass.main_loop(SM90_PIPELINED)
    assert (loop.which, loop.instructions, loop.kernel_instructions) == ("mma loop", 8, 13)
    assert loop.mma_shape == "HGMMA.64x128x16 x4" and loop.loads == ["LDGSTS"]
    assert not loop.waits  # gsb0, 0x1 inside; the 0x0 after the loop does not count

    inner = sass.main_loop(SM90_WAITING)
    assert (inner.which, inner.instructions) == ("mma loop", 6)  # the inner loop, not the outer (9)
    assert inner.waits and inner.loads == ["LDG"]  # LDGDEPBAR is no load

    hmma = sass.main_loop(SM80_HMMA)
    assert (hmma.instructions, hmma.mma_shape) == (6, "HMMA.16816 x2")  # forward BRA is not a loop; NOP skipped


def test_main_loop_without_mma_is_the_largest_loop_or_the_whole_kernel():
    loop = sass.main_loop(NO_MMA_TWO_LOOPS)
    assert (loop.which, loop.instructions, loop.mmas, loop.loads) == ("largest loop", 5, [], ["LDG"])
    assert sass.ratio(loop, 4, 90) is None and sass.tensor_clocks(loop, 4, 90) == 0
    whole = sass.main_loop(STRAIGHT_LINE)
    assert (whole.which, whole.instructions, whole.loads) == ("whole kernel", 5, ["UTMALDG"])


def test_ratio_arithmetic():
    loop = sass.main_loop(SM90_PIPELINED)  # 8 instructions, 4 x HGMMA.64x128x16 = 4 x 131072 MACs per warpgroup
    # 4 warps = 1 warpgroup: issue 8 * 4 / 4 = 8 clocks; tensor 524288 / 2048 = 256 clocks
    assert sass.block_macs(loop, 4) == 524288
    assert sass.ratio(loop, 4, 90) == pytest.approx(8 / 256)
    # 8 warps = 2 warpgroups: each issues the HGMMAs: twice the MACs and twice the issue clocks
    assert sass.block_macs(loop, 8) == 2 * 524288
    assert sass.ratio(loop, 8, 90) == pytest.approx(16 / 512)

    hmma = sass.main_loop(SM80_HMMA)  # 6 instructions, 2 x HMMA.16816 = 2 x 2048 MACs per warp
    assert sass.block_macs(hmma, 4) == 4 * 2 * 2048
    assert sass.ratio(hmma, 4, 80) == pytest.approx(6 / (16384 / 1024))

    tf32 = sass.main_loop(SM80_HMMA.replace("HMMA.16816.F32.BF16", "HMMA.1688.F32.TF32"))
    assert tf32.mmas[0] == sass.Mma("HMMA", "1688", "tf32", 1024)
    assert sass.ratio(tf32, 4, 80) == pytest.approx(6 / (4 * 2 * 1024 / 512))
    wgmma_tf32 = sass.main_loop(SM90_PIPELINED.replace("64x128x16.F32.BF16", "64x128x8.F32.TF32"))
    assert sass.ratio(wgmma_tf32, 4, 90) == pytest.approx(8 / (4 * 64 * 128 * 8 / 1024))


def test_estimate_model():
    # regs 228 -> 7424 a warp, x4 warps: 2 blocks by registers; 65 KiB of shared memory: 3; 16 by warps
    assert aot.occupancy(228, 65 * 1024, 4, 90) == 2
    assert aot.occupancy(32, 0, 8, 90) == 8 and aot.occupancy(255, 200 * 1024, 4, 80) == 0
    loop = sass.main_loop(SM90_PIPELINED)
    # a source tile of 128x128x32 = 524288 MACs = one SASS iteration; 64x128x32 would be half of one
    assert aot.sass_trips(loop, dict(BLOCK_M=128, BLOCK_N=128, BLOCK_K=32), 4, 10) == 10
    assert aot.sass_trips(loop, dict(BLOCK_M=128, BLOCK_N=128, BLOCK_K=64), 4, 10) == 20
    per_program = aot.program_clocks(loop, 4, 90, trips=10)
    assert per_program["clocks"] == (13 - 8) + 10 * 256 and per_program["bound"] == "tensor"
    work = launch_work("conv9", "fwd", "bf16", programs=2 * aot.SMS + 1, iterations=10, macs=1, bytes=0, step=True)
    gpu = type("Gpu", (), {"bandwidth": 1e12})
    est = aot.estimate(work, per_program, occ=2, gpu=gpu)
    assert est["seconds"] == pytest.approx(3 * per_program["clocks"] / aot.CLOCK_HZ) and est["waves"] == 2
    assert est["bound"] == "tensor"
    assert aot.estimate({**work, "bytes": 10**9}, per_program, 2, gpu)["bound"] == "memory"


def test_work_is_checked():
    with pytest.raises(ValueError, match="dtype"):
        launch_work("conv1", "fwd", "float32", 1, 1, 0, 0, True)
    with pytest.raises(ValueError, match="programs"):
        launch_work("conv1", "fwd", "bf16", 0, 1, 0, 0, True)
