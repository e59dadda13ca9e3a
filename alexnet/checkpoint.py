"""Checkpoints: written atomically, loadable with `torch.load(weights_only=True)`.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts (no pickled objects):
model, optimizer and scheduler state, epoch and step, RNG states, the run's arguments and the
class names. `save` writes a temporary file beside the target, flushes it to disk and renames
it over the target, so a crash mid-save leaves the previous checkpoint whole.
"""

import os
import tempfile
from pathlib import Path

import torch
from torch import nn

ARCH = "alexnet-2012"


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable, or does not fit the model."""


def save(state: dict, path: Path | str) -> None:
    """Write `state` to `path` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
