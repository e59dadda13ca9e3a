"""Checkpoints: written atomically, loadable with `torch.load(weights_only=True)`.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts (no pickled objects):
model, optimizer and scheduler state, epoch and step, RNG states, the run's arguments and the
class names. `save` writes a temporary file beside the target (`<name>.<pid>.tmp`, with the
permissions the umask gives), flushes it to disk and renames it over the target, so a crash
mid-save leaves the previous checkpoint whole. The temporary file is removed when the save fails
or the process is sent SIGTERM; one left by SIGKILL is removed by `remove_leftovers` (train does
so when it starts).

`save` stores a SHA-256 of the whole record under "checksum": every key and value, tensors by
dtype, shape and bytes, the rest by type and exact repr, in order; and "format": FORMAT. `load`
verifies it, so one flipped bit anywhere (a weight, the epoch, a saved argument) is refused, and so
is a file of this format whose checksum is missing. Checkpoints written before format 2 (no
"format" key) held a checksum of their tensors only: that one is still verified, and the rest of
such a record is trusted as it is.
"""

import contextlib
import errno
import glob
import hashlib
import math
import os
import shutil
import signal
import threading
from pathlib import Path

import torch
from torch import nn

ARCH = "alexnet-2012"
FORMAT = 2  # 2: the checksum covers the whole record; before: its tensors only


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
    state = {**state, "format": FORMAT}
    state["checksum"] = checksum(state)
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


def _digest(obj, digest) -> None:
    """Feed `obj` (a nest of dicts, lists, tensors and plain values) into `digest`, unambiguously."""
    if isinstance(obj, torch.Tensor):
        digest.update(f"tensor {obj.dtype} {tuple(obj.shape)};".encode())
        digest.update(obj.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    elif isinstance(obj, dict):
        digest.update(f"dict {len(obj)};".encode())
        for key, value in obj.items():
            _digest(key, digest)
            _digest(value, digest)
    elif isinstance(obj, (list, tuple)):
        digest.update(f"list {len(obj)};".encode())
        for value in obj:
            _digest(value, digest)
    else:
        digest.update(f"{type(obj).__name__} {obj!r};".encode())


def checksum(state: dict) -> str:
    """SHA-256 of the whole record but its "checksum"."""
    digest = hashlib.sha256()
    _digest({k: v for k, v in state.items() if k != "checksum"}, digest)
    return digest.hexdigest()


def _tensor_checksum(state: dict) -> str:
    """The checksum of a checkpoint written before format 2: its tensors only."""
    digest = hashlib.sha256()
    for t in _tensors({k: v for k, v in state.items() if k != "checksum"}):
        digest.update(f"{t.dtype} {tuple(t.shape)};".encode())
        digest.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def load(path: Path | str) -> dict:
    """Read a checkpoint written by `save`, with a clear error when it is not one or does not match
    its checksum."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"checkpoint {path} cannot be read ({type(e).__name__}: {e})") from e
    if not isinstance(state, dict) or state.get("arch") != ARCH or "model" not in state:
        raise CheckpointError(f"{path} is not an {ARCH} checkpoint")
    if "format" in state:
        if state["format"] != FORMAT:
            raise CheckpointError(f"checkpoint {path} is of format {state['format']!r}; this version reads "
                                  f"format {FORMAT} (and older ones)")
        if "checksum" not in state:
            raise CheckpointError(f"checkpoint {path} has no checksum, which every format {FORMAT} checkpoint "
                                  f"has: it was altered after it was saved")
        if checksum(state) != state["checksum"]:
            raise CheckpointError(f"checkpoint {path} is corrupt: its contents do not match the checksum saved "
                                  f"with them")
    elif "checksum" in state and _tensor_checksum(state) != state["checksum"]:
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


def save_best(path: Path, best: Path) -> None:
    """Make `best` a copy of the checkpoint just saved at `path`: its own file (writing over one never
    changes the other), copied to a temporary file, flushed to disk and renamed, so a reader never sees
    half of it. The cost: the checkpoint's size again on disk, and the copy's time (0.4-1.0 s for a
    455 MB file on the 2-core development VM's disk), once per epoch that sets a new best."""
    tmp = best.with_name(f"{best.name}.{os.getpid()}.tmp")
    try:
        shutil.copyfile(path, tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, best)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
