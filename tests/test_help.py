"""Every command's --help names it as it is typed (python -m PACKAGE.MODULE) and does no work: it
writes no file (no dataset generated, no kernel compiled, no output folder made) and returns at once."""

import os
import subprocess
import sys
import time

import pytest

COMMANDS = {
    "alexnet.train": [], "alexnet.evaluate": [], "alexnet.predict": [], "alexnet.features": ["extract", "neighbours"],
    "alexnet.figures": ["filters", "curves", "predictions"], "alexnet.ablate": [], "alexnet.export": [],
    "data.embedded": [], "data.check": [], "data.prepare": [], "perf.aot": [], "bench.report": [],
    "bench.roofline": [], "bench.step": [], "bench.plot": [],
}


@pytest.mark.parametrize("module", sorted(COMMANDS))
def test_help_names_the_command_and_does_no_work(module, tmp_path, tmp_path_factory):
    home = tmp_path / "home"
    env = {**os.environ, "ALEXNET_DATA_HOME": str(home / "data"), "HOME": str(home),
           "TRITON_CACHE_DIR": str(home / "triton"), "TORCHINDUCTOR_CACHE_DIR": str(home / "inductor"),
           "MPLCONFIGDIR": str(tmp_path_factory.mktemp("matplotlib"))}  # matplotlib's font list, made on import
    for sub in ([], *([name] for name in COMMANDS[module])):
        start = time.perf_counter()
        result = subprocess.run([sys.executable, "-m", module, *sub, "--help"], cwd=tmp_path, env=env,
                                capture_output=True, text=True, timeout=120)
        seconds = time.perf_counter() - start
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith(f"usage: python -m {module}{''.join(' ' + s for s in sub)}"), result.stdout[:200]
        assert seconds < 30, f"{module} {' '.join(sub)} --help took {seconds:.0f} s: it did some work"
    assert list(tmp_path.rglob("*")) == [], f"--help wrote {sorted(map(str, tmp_path.rglob('*')))}"
