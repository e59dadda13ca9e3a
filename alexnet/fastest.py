"""Which kernels backend trains fastest on this CPU: measured once, remembered.

`python -m alexnet.train` without `--kernels` on a CPU times one training step (forward, loss,
backward) of the network on "torch" (eager) and on "compile" (torch.compile), and trains on the
faster. Interpreted Triton is never a candidate: it runs the kernels in numpy, for correctness.
The answer is stored in a JSON file keyed by the torch version, the CPU, the thread count, the
batch and the precision, so only the first run on a machine pays for the measurement (compiling
takes a minute or two on a small CPU). Delete the file to measure again.
"""

import json
import os
import platform
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from alexnet.model import INPUT_SIZE, AlexNet

CANDIDATES = ("torch", "compile")
MEASURE_BATCH = 16  # enough work per step that the timing is not all framework overhead
TIMED_STEPS = 2


def cache_file() -> Path:
    home = os.environ.get("ALEXNET_DATA_HOME") or Path.home() / ".cache" / "alexnet-triton"
    return Path(home) / "fastest-kernels.json"


def _key(batch: int, amp: str) -> str:
    cpu = platform.processor() or platform.machine()
    return f"torch {torch.__version__} | {cpu} x{os.cpu_count()} | threads {torch.get_num_threads()} | batch {batch} | amp {amp}"


def step_seconds(name: str, num_classes: int, batch: int, autocast) -> float:
    """Best wall time of a forward+backward step on backend `name`, after one untimed step
    (which is where torch.compile compiles). The global RNG is left as it was, so the run's
    initial weights and dropout do not depend on whether a measurement happened."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = AlexNet(num_classes, kernels=name)
        images = torch.randn(batch, 3, INPUT_SIZE, INPUT_SIZE) * 60  # about the scale of mean-subtracted pixels
        labels = torch.randint(0, num_classes, (batch,))
        times = []
        for _ in range(1 + TIMED_STEPS):
            start = time.perf_counter()
            with autocast():
                loss = F.cross_entropy(model(images), labels)
            loss.backward()
            times.append(time.perf_counter() - start)
    return min(times[1:])


def _read_cache(path: Path) -> dict:
    """The timings remembered in `path`, {key: {backend: seconds}}; {} with a warning if it holds anything else."""
    try:
        known = json.loads(path.read_text())
    except OSError:
        return {}
    except ValueError:
        known = None
    if isinstance(known, dict) and all(isinstance(timings, dict) and timings and
                                       all(name in CANDIDATES and isinstance(t, (int, float)) and t > 0
                                           for name, t in timings.items()) for timings in known.values()):
        return known
    print(f"kernels: warning: {path} is not a table of timings; ignoring it (it will be rewritten)")
    return {}


def fastest_kernels(num_classes: int, batch_size: int, amp: str, autocast) -> tuple[str, str]:
    """(backend name, a sentence saying how it was chosen) for training on the CPU."""
    batch = min(batch_size, MEASURE_BATCH)
    path, key = cache_file(), _key(batch, amp)
    known = _read_cache(path)
    if key in known:
        timings, how = known[key], f"measured earlier, remembered in {path}"
    else:
        print(f"kernels: timing a batch-{batch} training step on {' and '.join(CANDIDATES)} to pick the "
              f"faster (once per machine; compiling takes a minute or two) ...", flush=True)
        timings = {}
        for name in CANDIDATES:
            try:
                timings[name] = step_seconds(name, num_classes, batch, autocast)
            except Exception as e:  # e.g. no C++ compiler for Inductor: that backend cannot run here
                print(f"kernels: {name} cannot run here ({type(e).__name__}: {str(e)[:200]}); leaving it out")
        if not timings:
            raise RuntimeError("no kernels backend ran on this CPU; give --kernels explicitly")
        how = f"measured now, remembered in {path}"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({**known, key: timings}, indent=1))
        tmp.replace(path)  # atomic: a run started alongside reads the old file or the new, never half of one
    name = min(timings, key=timings.get)
    summary = ", ".join(f"{n} {1000 * t:.0f} ms" for n, t in sorted(timings.items(), key=lambda kv: kv[1]))
    return name, f"fastest on this CPU at batch {batch} ({summary} per step; {how})"
