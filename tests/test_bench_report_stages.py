"""bench.report's stages as a GPU run would meet them, on the CPU: stand-in stages (one failing, one losing the CUDA
context, one overrunning --time-limit) and the real tiles stage with a tile #0 that fails, each leaving a valid,
partial report.json; and bench.common.time_ms's GPU branch on a "cuda" device with stand-in timers (nothing of it
reaches a GPU)."""

import json
import re
import time
from pathlib import Path

import torch
import triton.testing

import bench.report as report
from bench.common import time_ms
from kernels.conv_relu import tiles as conv_tiles
from tests.devices import needs_interpreter


def stand_in(rows):
    def run(_):
        return rows
    return run


def fails(_):
    raise RuntimeError("the start of a long error " + "x" * 20000 + " and the end that says what went wrong")


def run_report(tmp_path, *args) -> tuple[int, dict]:
    out = tmp_path / "out"
    code = report.main(["--output-dir", str(out), *args])
    return code, json.loads((out / "report.json").read_text())


def test_a_failing_stage_is_recorded_and_the_next_runs(tmp_path, monkeypatch):
    seen = {}

    def after(_):  # what report.json said while this stage ran: the failure already written down
        seen.update(json.loads((tmp_path / "out" / "report.json").read_text())["stages"])
        return [dict(x=2)]

    monkeypatch.setattr(report, "STAGES", [report.Stage("first", stand_in([dict(x=1)]), 1),
                                           report.Stage("broken", fails, 1), report.Stage("after", after, 1)])
    code, written = run_report(tmp_path)
    assert code == 1, "[exit] a failed stage is not a clean run"
    assert {name: entry["status"] for name, entry in written["stages"].items()} == \
        {"first": "ok", "broken": "failed", "after": "ok"}, written["stages"]
    assert seen["broken"]["status"] == "failed" and seen["after"]["status"] == "running", seen
    error = written["stages"]["broken"]["error"]
    assert len(error) == report.ERROR_TAIL and "the start of" not in error, "[error] its tail, not its start"
    assert error.rstrip().endswith("and the end that says what went wrong"), error[-200:]
    assert written["first"] == [dict(x=1)] and written["after"] == [dict(x=2)] and written["stopped"] is None
    assert "the end that says what went wrong" in (tmp_path / "out" / "report.md").read_text()


def test_a_lost_cuda_context_ends_the_run(tmp_path, monkeypatch):
    monkeypatch.setattr(report, "STAGES", [report.Stage("first", stand_in([dict(x=1)]), 1),
                                           report.Stage("broken", fails, 1),
                                           report.Stage("after", stand_in([dict(x=2)]), 1)])
    monkeypatch.setattr(report, "cuda_usable", lambda device: False)  # as after an illegal memory access
    code, written = run_report(tmp_path)
    assert code == 1
    assert {name: entry["status"] for name, entry in written["stages"].items()} == \
        {"first": "ok", "broken": "failed", "after": "skipped"}, written["stages"]
    assert "CUDA context is unusable after broken" in written["stopped"], written["stopped"]
    assert written["first"] == [dict(x=1)] and "after" not in written


def test_a_stage_past_the_time_limit_is_stopped(tmp_path, monkeypatch):
    def hangs(_):
        time.sleep(600)

    monkeypatch.setattr(report, "STAGES", [report.Stage("first", stand_in([dict(x=1)]), 1),
                                           report.Stage("hangs", hangs, 1),
                                           report.Stage("after", stand_in([dict(x=2)]), 1)])
    start = time.perf_counter()
    code, written = run_report(tmp_path, "--time-limit", "2")
    assert code == 1 and time.perf_counter() - start < 60, "[--time-limit] the run was not stopped"
    assert {name: entry["status"] for name, entry in written["stages"].items()} == \
        {"first": "ok", "hangs": "timeout", "after": "skipped"}, written["stages"]
    assert written["first"] == [dict(x=1)] and "--time-limit 2 s reached in hangs" in written["stopped"]


def test_a_failing_tile_zero_leaves_the_other_tiles_checked(tmp_path, monkeypatch):
    """Tile #0 a BLOCK_K Triton refuses (not a power of 2): its row says so, with the error's end, and tile #1 (the
    real one) is still checked, for every pass, through the tiles stage of `--quick`."""
    usable = conv_tiles.usable_tiles

    def with_a_bad_first(kernel, dtype, gemm_m, gemm_n):
        return [(32, 32, 24, 4, 2)] + usable(kernel, dtype, gemm_m, gemm_n)

    monkeypatch.setattr(conv_tiles, "usable_tiles", with_a_bad_first)
    code, written = run_report(tmp_path, "--quick", "--stages", "tiles")
    assert code == 0 and written["stages"]["tiles"]["status"] == "ok", written["stages"]
    rows = written["tiles"]
    for layer in ("conv1", "conv2"):
        for kernel in report.CONV_PASSES:
            tiles = [row for row in rows if (row["layer"], row["kernel"]) == (layer, kernel)]
            assert [row["ok"] for row in tiles] == [False, True], f"[{layer} {kernel}] {tiles}"
            assert tiles[0]["tile"] == "#0" and "power of 2" in tiles[0]["exception"], tiles[0]
    assert all(row["kernel"] != "(references)" for row in rows), rows


def test_gpu_timing_separates_host_from_device(monkeypatch):
    """time_ms on a "cuda" device with stand-in timers: the graph time beside the event time, host_bound when the
    call takes longer to return than the device to run it, a capture that fails recorded and not fatal."""
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)
    monkeypatch.setattr(triton.testing, "do_bench", lambda fn, **kw: 0.5)
    monkeypatch.setattr(triton.testing, "do_bench_cudagraph", lambda fn, **kw: 0.01)
    device = torch.device("cuda")
    slow_launcher = lambda: time.sleep(0.002)  # noqa: E731  2 ms to return: more than either device time
    timing = time_ms(slow_launcher, device)
    assert timing["ms"] == 0.5 and timing["graph_ms"] == 0.01 and timing["host_ms"] >= 2 and timing["host_bound"]
    assert time_ms(lambda: None, device)["host_bound"] is False

    def no_capture(fn, **kw):
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(triton.testing, "do_bench_cudagraph", no_capture)
    timing = time_ms(slow_launcher, device)
    assert "graph_ms" not in timing and "not permitted" in timing["graph_error"] and timing["host_bound"], timing
    assert "graph_ms" not in time_ms(slow_launcher, device, graph=False)


def test_plan_dtypes():
    """The GPU plan checks and times the training path's dtypes; fp32 exact and fp16 only with --all-dtypes."""
    plan = report.make_plan(gpu=True, quick=False)
    assert plan["train_dtypes"] == ["tf32", "bf16"] and "fp32" not in plan["tile_dtypes"]
    assert set(report.make_plan(gpu=True, quick=False, all_dtypes=True)["tile_dtypes"]) == {"tf32", "bf16", "fp32",
                                                                                            "fp16"}
    assert report.lrn_pool_dtypes(["tf32", "bf16", "fp32"]) == ["fp32", "bf16"]


def test_the_docs_list_the_stages_in_order_with_their_estimates():
    root = Path(__file__).resolve().parents[1]
    table = [line.split("|") for line in (root / "docs/performance.md").read_text().splitlines()
             if re.match(r"\| \d+ \| ", line)]
    assert [(cells[2].strip(), int(cells[4])) for cells in table] == \
        [(stage.name, stage.gpu_seconds) for stage in report.STAGES], "[docs/performance.md] the stage table"
    assert sum(stage.gpu_seconds for stage in report.STAGES) <= 360, "[STAGES] the estimate is over 6 minutes"
    readme = (root / "README.md").read_text()
    assert "python -m bench.report --require-gpu" in readme and "python -m bench.step" in readme, "[README]"


def test_a_layer_whose_set_up_fails_leaves_the_others_timed(tmp_path, monkeypatch):
    """conv1's set-up raising (as a failing Triton forward or a CUDA error there would) gives one row for it; conv2,
    LRN and max-pool are still timed, through the layers stage of `--quick`."""
    real = report.conv_cases

    def conv1_fails(plan, device, dt, layer, backends):
        if layer == "conv1":
            raise RuntimeError("conv1's set-up failed")
        return real(plan, device, dt, layer, backends)

    monkeypatch.setattr(report, "conv_cases", conv1_fails)
    code, written = run_report(tmp_path, "--quick", "--stages", "layers")
    assert code == 0 and written["stages"]["layers"]["status"] == "ok", written["stages"]
    rows = written["layers"]
    assert [row for row in rows if row["layer"] == "conv1"] == \
        [dict(layer="conv1", dtype="fp32", pass_="(set-up)", exception="RuntimeError: conv1's set-up failed")], rows
    timed = {(row["layer"], row["pass_"]) for row in rows if "ms" in row}
    assert {("conv2", "wgrad"), ("lrn1", "fwd+bwd"), ("pool1", "fwd")} <= timed, timed


@needs_interpreter
def test_wgrad_twice_from_the_same_inputs_is_bit_identical(tmp_path):
    """The agreement stage's determinism check (run on a GPU), here on the quick plan's shapes in the interpreter."""
    plan = report.make_plan(gpu=False, quick=True)
    rows = report.wgrad_repeats(report.Run(plan=plan, device=torch.device("cpu"), env={}, scratch=tmp_path))
    assert [(row["dtype"], row["layer"]) for row in rows] == [(dt, layer) for dt in plan["train_dtypes"]
                                                             for layer in ("conv1", "conv2")]
    assert all(row.get("bit_identical") is True for row in rows), rows
