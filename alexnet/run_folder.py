"""The run's folder (train's --output-dir): one run's files, owned by one running process at a time.

A run takes an advisory lock (flock on OUTPUT/.lock, which holds its pid) for as long as it runs, so
a second run into the same folder is refused at once, naming the folder and the holder's pid. The
lock goes with the process: one left by a killed run (its pid still in the file, which a run that
ends empties) is no longer held, and is taken over with a note. A folder that holds another run's
files is refused unless this run resumes from its checkpoint or was given --overwrite; with
--overwrite the old files are removed only by `start`, once every check has passed, just before the
first step. The folders this run made (--output-dir and any missing above it) are removed again if
the run fails before writing anything into them.

metrics.jsonl gets a line per epoch, appended and flushed to disk; a line cut short (a full disk, a
kill mid-write) is dropped with a warning when the next run reads the file.
"""

import contextlib
import fcntl
import json
import os
import shutil
import sys
from pathlib import Path

from alexnet import checkpoint

CHECKPOINT, BEST, METRICS, ARGS, TENSORBOARD, LOCK = (
    "checkpoint.pth", "model_best.pth", "metrics.jsonl", "args.json", "tensorboard", ".lock")
RUN_FILES = (CHECKPOINT, BEST, METRICS, ARGS, TENSORBOARD)


class FolderError(ValueError):
    """The run's folder cannot be used: not a folder, not writable, in use, or another run's."""


class RunFolder:
    def __init__(self, path: Path | str):
        self.path = Path(path)
        self._lock = None  # the open lock file while this process holds it
        self._made = []  # the folders this run made: the path and any missing above it, deepest first
        self._overwrite = False  # whether `start` removes another run's files

    @contextlib.contextmanager
    def claimed(self, resume: str, overwrite: bool):
        """Hold the folder for the block: made if missing, locked, and checked against `resume` and
        `overwrite`. Afterwards the lock is let go, and the folders this made removed if nothing was
        written into them."""
        try:
            self._claim(resume, overwrite)
            yield self
        finally:
            self._release()

    def _claim(self, resume: str, overwrite: bool) -> None:
        out = self.path
        self._made = [folder for folder in (out, *out.parents) if not folder.exists()]
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise FolderError(f"--output-dir {out} cannot be made a folder: {e.strerror or e}") from e
        if not os.access(out, os.W_OK):
            raise FolderError(f"--output-dir {out} is not writable")
        lock = open(out / LOCK, "a+")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "unknown"
            lock.close()
            raise FolderError(f"--output-dir {out} is in use by another run (pid {holder}): wait for it to end, "
                              f"or give another --output-dir") from None
        lock.seek(0)
        if stale := lock.read().strip():  # a run that ends empties the file: this one was killed
            print(f"{out} was held by a run (pid {stale}) that was killed; this run takes it over")
        lock.truncate(0)
        lock.write(f"{os.getpid()}\n")
        lock.flush()
        self._lock = lock
        used = [name for name in RUN_FILES if (out / name).exists()]
        continuing = bool(resume) and Path(resume).resolve().parent == out.resolve()
        if used and not continuing and not overwrite:
            carry_on = (f"--resume {out / CHECKPOINT} to carry it on, " if (out / CHECKPOINT).is_file() else "")
            raise FolderError(f"--output-dir {out} holds another run ({', '.join(used)}): give {carry_on}another "
                              f"--output-dir, or --overwrite to replace it")
        self._overwrite = overwrite and not continuing

    def start(self) -> None:
        """Called once every check has passed, before the first step: remove the old run's files when
        overwriting, and what saves killed mid-write left behind."""
        if self._overwrite:
            for name in RUN_FILES:
                if (self.path / name).is_dir():
                    shutil.rmtree(self.path / name)
                else:
                    (self.path / name).unlink(missing_ok=True)
            print(f"--overwrite: removed the previous run's files from {self.path}")
        for name in (CHECKPOINT, BEST):
            for leftover in checkpoint.remove_leftovers(self.path / name):
                print(f"removed {leftover}, left by a save that was killed")

    def _release(self) -> None:
        if self._lock is not None:
            self._lock.truncate(0)  # ended, not killed
            self._lock.close()  # lets go of the flock
            self._lock = None
        if self.path in self._made and self.path.is_dir() and {p.name for p in self.path.iterdir()} <= {LOCK}:
            (self.path / LOCK).unlink(missing_ok=True)
        for folder in self._made:  # deepest first, up to the first that holds something
            try:
                folder.rmdir()
            except OSError:
                break


def append_metrics(path: Path, record: dict) -> None:
    """Append `record` as a line of `path`, flushed to disk before returning."""
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_metrics(path: Path) -> list[dict]:
    """The records of metrics file `path` ([] if there is none). A last line cut short is dropped with
    a warning; a bad line before it is an error naming the file and line."""
    if not path.exists():
        return []
    lines = path.read_text().splitlines(keepends=True)
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if number < len(lines) or line.endswith("\n"):
                raise FolderError(f"{path}:{number} is not JSON: {line.strip()[:80]!r}") from None
            print(f"warning: dropped the last line of {path}, cut short (a full disk or a kill mid-write): "
                  f"{line[:80]!r}", file=sys.stderr)
    return records


def keep_metrics_until(path: Path, epochs_done: int) -> None:
    """Rewrite metrics file `path` (atomically) with only its records up to epoch `epochs_done`: a
    resumed run writes the later ones again."""
    if not path.exists():
        return
    kept = "".join(json.dumps(r) + "\n" for r in read_metrics(path) if r["epoch"] <= epochs_done)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(kept)
    os.replace(tmp, path)
