"""python -m alexnet.export: a safetensors file with the checkpoint's exact weights, and what it
takes to rebuild the network from it."""

import json
import os
import stat

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from alexnet import checkpoint, export
from alexnet.checkpoint import ARCH, load
from alexnet.model import AlexNet
pytest_plugins = ["tests.trained"]  # the tiny_run fixture


def test_export_round_trips(tiny_run, tmp_path):
    out = export.main(["--checkpoint", str(tiny_run.checkpoint), "-o", str(tmp_path / "a.safetensors")])
    tensors, saved = load_file(out), load(tiny_run.checkpoint)["model"]
    assert tensors.keys() == saved.keys()
    for name, value in saved.items():
        assert torch.equal(tensors[name], value), f"[{name}] differs from the checkpoint"
    with safe_open(out, "pt") as f:
        meta = f.metadata()
    assert meta["arch"] == ARCH and json.loads(meta["classes"]) == ["checks", "crosshatch", "dots"]
    model = AlexNet(len(json.loads(meta["classes"])), **json.loads(meta["model_options"]))
    model.load_state_dict(tensors)  # strict: every tensor fits


def test_missing_checkpoint_is_named(tmp_path):
    with pytest.raises(SystemExit, match=f"checkpoint {tmp_path / 'x.pth'} does not exist"):
        export.main(["--checkpoint", str(tmp_path / "x.pth"), "-o", str(tmp_path / "x.safetensors")])


def test_export_follows_the_umask(tmp_path):
    checkpoint.save({"arch": ARCH, "model": AlexNet(3).state_dict(), "classes": ["a", "b", "c"]}, tmp_path / "c.pth")
    old = os.umask(0o027)
    try:
        out = export.main(["--checkpoint", str(tmp_path / "c.pth"), "-o", str(tmp_path / "a.safetensors")])
    finally:
        os.umask(old)
    assert stat.S_IMODE(out.stat().st_mode) == 0o640
