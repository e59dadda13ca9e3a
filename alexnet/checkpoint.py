"""Checkpoints: written atomically, loadable with `torch.load(weights_only=True)`.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts (no pickled objects):
model, optimizer and scheduler state, epoch and step, RNG states, the run's arguments and the
class names. `save` writes a temporary file beside the target (`<name>.<pid>.tmp`, with the
permissions the umask gives), flushes it to disk and renames it over the target, so a crash
mid-save leaves the previous checkpoint whole. The temporary file is removed when the save fails
or the process is sent SIGTERM; one left by SIGKILL is removed by `remove_leftovers` (train does
so when it starts). `save` also stores a SHA-256 of every tensor in the checkpoint (with its dtype
and shape) under "checksum", and `load` verifies it, so a flipped bit does not load silently.
"""

import contextlib
import errno
import glob
import hashlib
import json
import math
import os
import shutil
import signal
import threading
from pathlib import Path

import torch
from torch import nn

ARCH = "alexnet-2012"


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable, or does not fit the model."""


@contextlib.contextmanager
def _sigterm_raises():
    """SIGTERM raises SystemExit (so cleanup runs) inside the block, when in the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        raise SystemExit(128 + signum)
    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _mount_point(path: Path) -> Path:
    path = path.resolve()
    while not os.path.ismount(path):
        path = path.parent
    return path


def save(state: dict, path: Path | str) -> None:
    """Write `state` to `path` atomically; a full disk raises a CheckpointError naming it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    state = {**state, "checksum": checksum(state)}
    try:
        with _sigterm_raises(), open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        needed = sum(t.nbytes for t in _tensors(state))
        # torch.save reports a full disk as a RuntimeError ("unexpected pos"): look at the free space too
        if isinstance(e, Exception) and (getattr(e, "errno", None) == errno.ENOSPC
                                         or shutil.disk_usage(path.parent).free < needed):
            raise CheckpointError(f"no space left on {_mount_point(path.parent)}: the checkpoint needs about "
                                  f"{math.ceil(needed / 2**20)} MB") from e
        raise


def remove_leftovers(path: Path | str) -> list[Path]:
    """Remove the temporary files that saves to `path` killed mid-write left beside it; returns them."""
    path = Path(path)
    leftovers = sorted(path.parent.glob(f"{glob.escape(path.name)}.*.tmp"))
    for leftover in leftovers:
        leftover.unlink(missing_ok=True)
    return leftovers


def _tensors(obj):
    """Every tensor in a nest of dicts, lists and tuples."""
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for value in obj.values():
            yield from _tensors(value)
    elif isinstance(obj, (list, tuple)):
        for value in obj:
            yield from _tensors(value)


def checksum(state: dict) -> str:
    """SHA-256 of the dtype, shape and bytes of every tensor in `state` but its "checksum", in order."""
    digest = hashlib.sha256()
    for t in _tensors({k: v for k, v in state.items() if k != "checksum"}):
        digest.update(f"{t.dtype} {tuple(t.shape)};".encode())
        digest.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def load(path: Path | str) -> dict:
    """Read a checkpoint written by `save`, with a clear error when it is not one."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"checkpoint {path} cannot be read ({type(e).__name__}: {e})") from e
    if not isinstance(state, dict) or state.get("arch") != ARCH or "model" not in state:
        raise CheckpointError(f"{path} is not an {ARCH} checkpoint")
    if "checksum" in state and checksum(state) != state["checksum"]:
        raise CheckpointError(f"checkpoint {path} is corrupt: its tensors do not match the checksum saved with them")
    return state


def load_model_state(model: nn.Module, state: dict, path: Path | str) -> None:
    """Load the checkpoint's weights into `model`, naming every tensor that does not fit."""
    own = model.state_dict()
    saved = state["model"]
    problems = [f"missing {k}" for k in own if k not in saved]
    problems += [f"unexpected {k}" for k in saved if k not in own]
    problems += [f"{k}: checkpoint {tuple(saved[k].shape)} vs model {tuple(v.shape)}"
                 for k, v in own.items() if k in saved and saved[k].shape != v.shape]
    if problems:
        raise CheckpointError(f"checkpoint {path} does not fit this model: " + "; ".join(problems))
    model.load_state_dict(saved)


# The output folder: one run's files. A run refuses a folder that holds another run's, so that two runs'
# metrics and checkpoints never mix.
CHECKPOINT, BEST, METRICS, ARGS = "checkpoint.pth", "model_best.pth", "metrics.jsonl", "args.json"
RUN_FILES = (CHECKPOINT, BEST, METRICS, ARGS)


def prepare_output_dir(out: Path, resume: str, overwrite: bool) -> None:
    """Make the run's folder `out`, or stop with a CheckpointError naming it: when it is not a writable
    folder, or when it holds another run's files and this run neither resumes from its checkpoint nor
    was told to `overwrite` them (which removes them)."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CheckpointError(f"--output-dir {out} cannot be made a folder: {e.strerror or e}") from e
    if not os.access(out, os.W_OK):
        raise CheckpointError(f"--output-dir {out} is not writable")
    used = [name for name in RUN_FILES if (out / name).exists()]
    continuing = bool(resume) and Path(resume).resolve().parent == out.resolve()
    if used and not continuing and not overwrite:
        raise CheckpointError(
            f"--output-dir {out} holds another run ({', '.join(used)}): give --resume {out / CHECKPOINT} to "
            f"carry it on, another --output-dir, or --overwrite to replace it")
    if overwrite and not continuing:
        for name in used:
            (out / name).unlink(missing_ok=True)  # every rank of a torchrun job does this


def keep_metrics_until(path: Path, epochs_done: int) -> None:
    """Drop the lines of the metrics file `path` after epoch `epochs_done` (a resumed run writes them again)."""
    if path.exists():
        lines = path.read_text().splitlines(keepends=True)
        path.write_text("".join(line for line in lines if json.loads(line)["epoch"] <= epochs_done))


def save_best(path: Path, best: Path) -> None:
    """Make `best` the checkpoint just saved at `path`: a hard link (no copy, no space) where the file
    system allows, else a copy; atomically, so a reader never sees half of it."""
    tmp = best.with_name(f"{best.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(path, tmp)
    except OSError:
        shutil.copyfile(path, tmp)
    os.replace(tmp, best)
