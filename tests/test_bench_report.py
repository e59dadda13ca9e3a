"""`python -m bench.report` on this machine, through the command: the quick CPU run (every stage, the files, "no GPU"
said plainly), its output folder checked before any work, and a run cut short by --time-limit, SIGTERM or SIGKILL
leaving a valid report.json of the stages done.

What this cannot test: the GPU timing path of bench.common.time_ms on a real GPU (tests/test_bench_report_stages.py
runs its GPU branch with stand-in timers), the floors and % of cuDNN, the GPU decoder, the GPU-side tests stage,
the profiler's kernel rows, and the tiles that only AlexNet's full shapes make usable (at the shrunk shapes one
tile per kernel is). What the CPU run does exercise are the same stage functions the GPU run calls, with the same
arguments. Measured here (2 shared cores): `--quick` ~45 s alone.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("train-check", "step", "agreement", "layers", "tiles", "profile", "gpu-tests", "dali-step", "data", "jit",
          "clocks")
NOT_ON_A_CPU = {"agreement", "gpu-tests", "clocks"}  # skipped, with the reason


def command(*args, cwd=ROOT):
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}  # the command sets it
    env["PYTHONPATH"] = str(ROOT)
    return [sys.executable, "-m", "bench.report", *args], dict(cwd=cwd, env=env)


def report_command(*args, timeout=300, cwd=ROOT):
    argv, kwargs = command(*args, cwd=cwd)
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kwargs)


def report_of(out: Path) -> dict:
    return json.loads((out / "report.json").read_text())


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU path: on a GPU --quick would still take minutes "
                    "(run `python -m bench.report` there instead)")
def test_quick_report_on_the_cpu(tmp_path):
    aot = tmp_path / "aot.json"  # a one-launch stand-in for perf.aot's JSON: the estimate column is filled
    aot.write_text(json.dumps(dict(builds=[dict(arch="sm_90", launches=[dict(
        label="conv1 float32 tf32 fwd", work=dict(layer="conv1", op="fwd", dtype="fp32"),
        h100=dict(seconds=1e-4), h200=dict(seconds=9e-5))])])))
    out = tmp_path / "out"
    done = report_command("--quick", "--output-dir", str(out), "--aot-json", str(aot), timeout=600)
    assert done.returncode == 0, f"[bench.report] exit {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    for name in ("report.json", "report.md", "report.png"):
        assert (out / name).stat().st_size > 0, f"[bench.report] {name} not written"
    assert not list(out.glob(".*")), f"[bench.report] temporary files left: {list(out.glob('.*'))}"
    markdown = (out / "report.md").read_text()
    assert "No GPU was present" in markdown, "[report.md] does not say there was no GPU"
    report = report_of(out)
    assert list(report["stages"]) == list(STAGES), report["stages"]
    for name, entry in report["stages"].items():
        want = "skipped" if name in NOT_ON_A_CPU else "ok"
        assert entry["status"] == want, f"[stage {name}] {entry}"
        assert entry["status"] == "ok" or entry["reason"], f"[stage {name}] skipped without a reason"
        assert entry["seconds"] >= 0 and f"## {name}" in markdown or name in NOT_ON_A_CPU, f"[report.md] {name}"
    assert report["environment"]["gpu"] is False and report["environment"]["triton_interpreted"] is True
    assert report["environment"]["cpus"] == len(os.sched_getaffinity(0)), report["environment"]
    checks = report["train-check"] + report["tiles"]
    failed = [row for row in checks if not row["ok"]]
    assert not failed, f"[report.json] correctness failures: {failed}"
    kernels = {(row["kernel"], row["dtype"]) for row in checks}
    assert {("fwd", "fp32"), ("dgrad", "fp32"), ("wgrad", "fp32"), ("wgrad", "bf16")} <= kernels, kernels
    layouts = {(row["kernel"], row["layout"]) for row in report["train-check"] if "layout" in row}
    assert {("lrn fwd", "channels_last"), ("lrn bwd", "nchw"), ("pool bwd", "channels_last"),
            ("pool fwd", "nchw")} <= layouts, f"[train-check] LRN and max-pool in both layouts: {layouts}"
    layers = report["layers"]
    assert {(row["layer"], row["layout"]) for row in layers if row["layer"] == "pool1"} == \
        {("pool1", "channels_last"), ("pool1", "nchw")}, "[layers] max-pool timed in both layouts"
    triton = [row for row in layers if row["backend"] == "triton"]
    assert triton and all(row["interpreted"] and "ms" in row for row in triton), "[layers] Triton rows"
    assert all("pct_of_cudnn" not in row and "floor_ms" not in row for row in layers), \
        "[layers] a ratio against cuDNN or a floor on the CPU"
    assert any(row.get("tile") for row in triton), "[layers] no autotuner tile recorded"
    assert any(row.get("aot_estimate_ms_batch128") for row in triton), "[layers] the aot estimate is not beside"
    rates = report["step"] + report["data"] + report["dali-step"]
    assert all(row.get("img_per_s") for row in rates), f"[report.json] img/s missing: {rates}"
    assert all(row["workers"] == len(os.sched_getaffinity(0)) for row in report["data"]), report["data"]
    assert [(row["loader"], row["dataset"]) for row in report["data"]] == [
        ("dali", "original"), ("dali", "prepared"), ("pil", "original")], "[data] original and prepared images"
    assert report["data"][1]["vs_original"] > 0 and all(row["train_thread_ms"] > 0 for row in report["data"])
    assert report["profile"] and all(row.get("top") for row in report["profile"]), report["profile"]
    assert set(report["jit"]) == {"triton builds", "autotuning", "compiled kernels", "torch.compile"}, report["jit"]


def test_output_dir_a_file_or_under_one(tmp_path):
    """One line naming the path, before any work (no torch import: well under a second of work)."""
    afile = tmp_path / "afile"
    afile.write_text("not a folder")
    for out, said in ((afile, f"{afile} is a file"), (afile / "sub", f"{afile / 'sub'} is under {afile}")):
        done = report_command("--output-dir", str(out), timeout=60)
        assert done.returncode == 2 and said in done.stderr, f"[{out}] {done.returncode} {done.stderr[-2000:]}"
        assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert afile.read_text() == "not a folder"


def test_an_existing_report_is_kept_unless_overwrite(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "report.json").write_text("{}")
    (out / "report.png").write_text("old picture")
    done = report_command("--output-dir", str(out), "--stages", "clocks", timeout=120)
    assert done.returncode == 2 and "already holds a report" in done.stderr and "--overwrite" in done.stderr, \
        f"{done.returncode} {done.stderr[-2000:]}"
    assert (out / "report.json").read_text() == "{}", "[report.json] replaced without --overwrite"
    done = report_command("--output-dir", str(out), "--stages", "clocks", "--overwrite", timeout=120)
    assert done.returncode == 0, f"{done.returncode} {done.stderr[-2000:]}"
    assert report_of(out)["stages"] == {"clocks": {"status": "skipped", "reason": "no GPU", "seconds":
                                                   pytest.approx(0, abs=5), "peak_memory_mb": None}}
    assert not (out / "report.png").exists(), "[--overwrite] the old report.png left beside the new report"


def test_default_output_dir_is_dated_and_new(tmp_path):
    """Two runs with no --output-dir, from another working directory: two dated folders under report-cpu/."""
    for _ in range(2):
        done = report_command("--stages", "clocks", cwd=tmp_path, timeout=120)
        assert done.returncode == 0, f"{done.returncode} {done.stderr[-2000:]}"
    folders = sorted(p.name for p in (tmp_path / "report-cpu").iterdir())
    assert len(folders) == 2 and folders[0][:10] == time.strftime("%Y-%m-%d", time.gmtime()), folders
    assert all((tmp_path / "report-cpu" / name / "report.json").exists() for name in folders), folders


def test_bad_flags_are_one_line(tmp_path):
    cases = [(["--stages", "layers,nope"], "unknown stage(s) nope"), (["--time-limit", "0"], "not a number of seconds"),
             (["--aot-json", str(tmp_path / "missing.json")], "--aot-json"),
             (["--require-gpu"], "sees no GPU")] if not torch.cuda.is_available() else []
    for args, said in cases:
        done = report_command("--output-dir", str(tmp_path / "out"), *args, timeout=120)
        assert done.returncode == 2 and said in done.stderr, f"[{args}] {done.returncode} {done.stderr[-2000:]}"
        assert "Traceback" not in done.stderr, done.stderr
        assert not (tmp_path / "out").exists(), f"[{args}] the output folder was made before the refusal"


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU's --quick shapes")
def test_time_limit_leaves_the_stages_done(tmp_path):
    """--time-limit 4 (counted from the start, torch's import included): train-check (~7 s here) or step stopped, the
    rest skipped, a valid report.json."""
    out = tmp_path / "out"
    done = report_command("--quick", "--output-dir", str(out), "--stages", "train-check,step,data", "--time-limit",
                          "4", timeout=300)
    assert done.returncode == 1, f"{done.returncode}\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
    report = report_of(out)
    stages = {name: entry["status"] for name, entry in report["stages"].items()}
    assert stages in ({"train-check": "timeout", "step": "skipped", "data": "skipped"},
                      {"train-check": "ok", "step": "timeout", "data": "skipped"}), stages
    assert "--time-limit 4 s reached" in report["stopped"] and "stopped early" in (out / "report.md").read_text()


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU's --quick shapes")
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_a_killed_run_leaves_a_valid_report(tmp_path, sig):
    """Killed while `step` runs (as `timeout` or a 600-s cut would): train-check's results are in report.json."""
    out = tmp_path / "out"
    argv, kwargs = command("--quick", "--output-dir", str(out), "--stages", "train-check,step,layers")
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs)
    try:
        lines = []
        for line in process.stdout:  # the stage line is printed after the report saying "running" is written
            lines.append(line)
            if line.startswith("[bench.report] step ..."):
                break
        process.send_signal(sig)
        process.wait(timeout=120)
    finally:
        process.kill()
    report = report_of(out)
    assert report["stages"]["train-check"]["status"] == "ok" and report["train-check"], "".join(lines)[-2000:]
    want = {signal.SIGTERM: "interrupted", signal.SIGKILL: "running"}[sig]
    assert report["stages"]["step"]["status"] == want, report["stages"]
    if sig == signal.SIGTERM:
        assert process.returncode == 1 and report["stages"]["layers"]["status"] == "skipped", report["stages"]


def test_output_dir_not_writable(tmp_path, monkeypatch, capsys):
    """Refused in one line before any work (in-process: as root every folder is writable, so os.access stands in)."""
    import bench.report as report

    monkeypatch.setattr(report.os, "access", lambda path, mode: False)
    assert report.main(["--output-dir", str(tmp_path / "new" / "out")]) == 2
    said = capsys.readouterr().err
    assert f"cannot write in {tmp_path}" in said and len(said.strip().splitlines()) == 1, said
    assert not (tmp_path / "new").exists()
