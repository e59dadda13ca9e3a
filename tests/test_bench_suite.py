"""`pytest bench/`, the benchmark suite users run: every benchmark's body runs once (pytest-benchmark's
--benchmark-disable), so a benchmark that no longer runs fails here rather than in a user's hands. It runs
the CPU's smoke sizes on any host: the GPU's sizes are bench.report's to run."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_benchmark_runs_once(tmp_path):
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1",  # nothing written into the checkout
           "CUDA_VISIBLE_DEVICES": ""}  # the CPU's sizes
    done = subprocess.run([sys.executable, "-m", "pytest", "bench/", "--benchmark-disable", "-q", "-p",
                           "no:cacheprovider", "--basetemp", str(tmp_path / "bench")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)  # ~1 min quiet
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert " passed" in done.stdout.splitlines()[-1], done.stdout[-2000:]
