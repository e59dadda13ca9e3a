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


def test_the_export_s_checksum_is_verified_on_load(tiny_run, tmp_path):
    out = export.main(["--checkpoint", str(tiny_run.checkpoint), "-o", str(tmp_path / "a.safetensors")])
    tensors, meta = export.load(out)
    assert len(meta["checksum"]) == 64 and torch.equal(tensors["fc8.bias"], load(tiny_run.checkpoint)["model"]["fc8.bias"])
    data = bytearray(out.read_bytes())
    data[len(data) // 2] ^= 0x01  # a bit of some weight
    out.write_bytes(data)
    with pytest.raises(checkpoint.CheckpointError, match=f"{out} is corrupt: its tensors or metadata do not match"):
        export.load(out)


def test_output_path_is_checked_before_the_export(tiny_run, tmp_path):
    (tmp_path / "file").write_text("")
    for path, message in [(tmp_path, "is a folder: give a file name"), (tmp_path / "file" / "a.safetensors",
                                                                         f"{tmp_path / 'file'} is a file, not a folder")]:
        with pytest.raises(SystemExit, match=f"^error: -o {path}.*{message}"):
            export.main(["--checkpoint", str(tiny_run.checkpoint), "-o", str(path)])
