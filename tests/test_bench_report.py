"""`python -m bench.report --quick` on this machine: exit 0, the three files, the sections, "no GPU" said plainly.

What this cannot test: the GPU timing path of bench.report.time_ms (triton.testing.do_bench: CUDA events, the L2
flushed before every run; the host time measured apart on an idle GPU), the floors and % of cuDNN, the GPU decoder
of the data pipeline, and the tiles that only AlexNet's full shapes make usable (at the shrunk shapes one tile per
kernel is). There is no GPU here: that path runs the first time the command runs on one.
What the CPU run does exercise are the same functions the GPU run calls, with the same arguments: make_plan,
environment, check_convs (ForcedTile/forced_tile launching `kernel.fn[grid](..., **_tile_meta(tile))` through the
launchers' own path, conv1 in its space-to-depth form), check_lrn_pool, layer_cases and time_layers (time_ms's CPU
branch, tile_name of the autotuner's best_config), aot_estimates, time_train_steps (bench/test_train_step.make_step),
time_data_pipeline (bench/test_data_pipeline's make_plan, first_batch, the_rest), markdown and plot_layers.
Measured here (2 shared cores): the command 23 s alone, the test 67 s while another job shared the cores.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = ("environment", "plan", "tolerances", "correctness", "layers", "train_step", "data_pipeline")


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU path: on a GPU --quick would still take minutes "
                    "(run `python -m bench.report` there instead)")
def test_quick_report_on_the_cpu(tmp_path):
    aot = tmp_path / "aot.json"  # a one-launch stand-in for kernels.aot's JSON: the estimate column is filled
    aot.write_text(json.dumps(dict(builds=[dict(arch="sm_90", launches=[dict(
        label="conv1 float32 tf32 fwd", work=dict(layer="conv1", op="fwd", dtype="fp32"),
        h100=dict(seconds=1e-4), h200=dict(seconds=9e-5))])])))
    out = tmp_path / "out"
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}  # the command sets it
    done = subprocess.run([sys.executable, "-m", "bench.report", "--quick", "--output-dir", str(out),
                           "--aot-json", str(aot)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"[bench.report] exit {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    for name in ("report.json", "report.md", "report.png"):
        assert (out / name).stat().st_size > 0, f"[bench.report] {name} not written"
    assert "No GPU was present" in (out / "report.md").read_text(), "[report.md] does not say there was no GPU"
    report = json.loads((out / "report.json").read_text())
    missing = [section for section in SECTIONS if not report.get(section)]
    assert not missing, f"[report.json] sections missing or empty: {missing}"
    assert report["environment"]["gpu"] is False and report["environment"]["triton_interpreted"] is True
    failed = [row for row in report["correctness"] if not row["ok"]]
    assert not failed, f"[report.json] correctness failures: {failed}"
    kernels = {(row["kernel"], row["dtype"]) for row in report["correctness"]}
    assert {("fwd", "fp32"), ("dgrad", "fp32"), ("wgrad", "fp32"), ("wgrad", "bf16")} <= kernels, kernels
    triton = [row for row in report["layers"] if row["backend"] == "triton"]
    assert triton and all(row["interpreted"] and "ms" in row for row in triton), "[layers] Triton rows"
    assert all("pct_of_cudnn" not in row and "floor_ms" not in row for row in report["layers"]), \
        "[layers] a ratio against cuDNN or a floor on the CPU"
    assert any(row.get("tile") for row in triton), "[layers] no autotuner tile recorded"
    assert any(row.get("aot_estimate_ms_batch128") for row in triton), "[layers] the aot estimate is not beside"
    assert all("img_per_s" in row for row in report["train_step"] + report["data_pipeline"]), \
        f"[report.json] {report['train_step']} {report['data_pipeline']}"
