"""The table `pytest bench/ --benchmark-only` ends with (bench/conftest.py, bench/summary.py): one row per group,
triton, torch and compile side by side with their speed-up over torch, interpreted Triton marked; pytest-benchmark's
own 200-column tables only with -v. Two real runs of the smallest benchmarks (pool5 forward, ~10 s and ~4 s here),
and the table itself on made-up GPU rows."""

import re
import subprocess
import sys
from pathlib import Path

from bench.summary import FOOTNOTE, HOST_FOOTNOTE, MARK, summary

ROOT = Path(__file__).resolve().parents[1]
SECTION = "Triton vs torch vs compile"
HEADER = ["group", "triton ms", "speed-up", "torch ms", "compile ms", "speed-up"]
RAW_TABLE = "Name (time in"  # the head of pytest-benchmark's own table


def run_bench(*args) -> str:
    done = subprocess.run([sys.executable, "-m", "pytest", "bench/test_lrn_pool.py", "--benchmark-only",
                           "-p", "no:cacheprovider", *args], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"[pytest bench] exit {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def table(out: str) -> dict:
    """{group: {column: cell}} of the summary section in pytest's output."""
    lines = out.split(SECTION, 1)[1].splitlines()[1:]
    assert re.split(r"\s{2,}", lines[0]) == HEADER, lines[0]
    rows = [re.split(r"\s{2,}", line) for line in lines[1:] if line.startswith("pool5")]
    return {row[0]: dict(zip(["group", "triton ms", "triton speed-up", "torch ms", "compile ms",
                              "compile speed-up"], row)) for row in rows}


def test_summary_after_a_run():
    out = run_bench("-k", "pool5 and not bwd")
    assert SECTION in out, f"[summary] not printed:\n{out[-3000:]}"
    assert RAW_TABLE not in out, "[summary] pytest-benchmark's own table printed without -v"
    row = table(out)["pool5 fwd float32"]
    assert row["triton ms"].endswith(f" {MARK}"), f"[triton] interpreted, not marked: {row}"
    assert all(re.fullmatch(r"[\d.]+x", row[f"{b} speed-up"]) for b in ("triton", "compile")), row
    assert float(row["torch ms"]) > 0 and float(row["compile ms"]) > 0, row
    assert FOOTNOTE in out and "speed-up: torch ms / that backend's ms" in out
    summary_lines = out.split(SECTION, 1)[1].splitlines()[1:-1]  # up to pytest's "passed" line
    assert max(map(len, summary_lines)) <= 100, summary_lines


def test_raw_tables_with_verbose():
    out = run_bench("-k", "pool5 and not bwd and torch", "-v")
    assert RAW_TABLE in out, "[-v] pytest-benchmark's own table not printed"
    assert out.index(RAW_TABLE) < out.index(SECTION), "[-v] the summary is not last"
    row = table(out)["pool5 fwd float32"]
    assert (row["triton ms"], row["triton speed-up"], row["compile ms"]) == ("-", "-", "-"), row
    assert FOOTNOTE not in out, "[-v] the interpreter footnote with no Triton row"


def bench(group, ms, device_ms=None, **info):
    extra = {**info, **({"device_ms": device_ms} if device_ms is not None else {})}
    return {"group": group, "name": f"test_x[{group}]", "param": info.get("backend"), "median": ms / 1e3,
            "extra_info": extra, "path": None}


def test_summary_of_a_gpu_run():
    """Device times where every row has one; a backend missing is "-"; no-backend groups in a table of their own."""
    groups = [("conv1 fwd bfloat16", [bench("conv1 fwd bfloat16", 9.0, 1.0, backend="triton", host_bound=False),
                                      bench("conv1 fwd bfloat16", 9.0, 2.0, backend="torch"),
                                      bench("conv1 fwd bfloat16", 9.0, 4.0, backend="compile")]),
              ("lrn1 fwd bfloat16", [bench("lrn1 fwd bfloat16", 9.0, 0.5, backend="triton", host_bound=True)]),
              ("towers step", [dict(bench("towers step", 200.0, towers=1, img_per_s=640.0), param=None,
                                    name="test_one_tower")])]
    lines = summary(groups)
    assert re.split(r"\s{2,}", lines[0]) == HEADER, lines
    assert re.split(r"\s{2,}", lines[1]) == ["conv1 fwd bfloat16", "1", "2.00x", "2", "4", "0.500x"], lines[1]
    assert re.split(r"\s{2,}", lines[2]) == ["lrn1 fwd bfloat16", "0.5 !", "-", "-", "-", "-"], lines[2]
    assert "device time" in "\n".join(lines) and FOOTNOTE not in lines and HOST_FOOTNOTE in lines, lines
    assert re.split(r"\s{2,}", lines[-1]) == ["towers step", "one_tower", "200", "640.0"], lines[-1]
