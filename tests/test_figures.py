"""python -m alexnet.figures: the conv1 filter grid, training curves and predictions as PNGs.
The PNGs go to pytest's temporary folder (`--basetemp DIR` keeps them where you can look)."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from alexnet import figures
pytest_plugins = ["tests.trained"]  # the tiny_run fixture


def png_size(path) -> tuple[int, int]:
    with Image.open(path) as img:
        assert img.format == "PNG", path
        return img.size


def test_filters_grid_normalises_each_filter():
    weight = torch.randn(96, 3, 11, 11) * torch.logspace(-3, 1, 96).view(96, 1, 1, 1)  # scales 1e-3 .. 10
    grid = figures.filters_grid(weight)
    assert grid.shape == (6 * 12 + 1, 16 * 12 + 1, 3)
    for i in (0, 47, 48, 95):
        r, c = divmod(i, 16)
        cell = grid[1 + 12 * r:12 + 12 * r, 1 + 12 * c:12 + 12 * c]
        assert cell.min() == 0 and cell.max() == 1, f"filter {i} is not stretched to [0, 1]"
        expected = weight[i].permute(1, 2, 0).numpy()
        np.testing.assert_allclose(cell, (expected - expected.min()) / (expected.max() - expected.min()), atol=1e-6)
    assert (grid[0] == 1).all() and (grid[:, 12] == 1).all(), "no white line between filters"


def test_pictures_of_a_trained_run(tiny_run, tmp_path):
    ckpt = str(tiny_run.checkpoint)
    filters = figures.main(["filters", "--checkpoint", ckpt, "-o", str(tmp_path / "conv1.png")])
    curves = figures.main(["curves", str(tiny_run.out / "metrics.jsonl"), "-o", str(tmp_path / "curves.png")])
    predictions = figures.main(["predictions", str(tiny_run.data / "val"), "--checkpoint", ckpt, "--max-images", "4",
                                "-o", str(tmp_path / "predictions.png")])
    assert png_size(filters) == (800, 340)
    assert png_size(curves) == (1200, 360)
    assert png_size(predictions) == (1200, 1040)  # 4 images: 3 columns, 2 rows


def test_bad_metrics_are_named(tmp_path):
    with pytest.raises(SystemExit, match=f"metrics file {tmp_path / 'none.jsonl'} does not exist"):
        figures.main(["curves", str(tmp_path / "none.jsonl")])
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"epoch": 1}) + "\n{oops\n")
    with pytest.raises(SystemExit, match=f"{bad}:2 is not JSON"):
        figures.main(["curves", str(bad)])
    bad.write_text(json.dumps({"epoch": 1, "lr": 0.1}) + "\n")
    with pytest.raises(SystemExit, match=f"metrics file {bad} has no train_loss, val_acc1, val_acc5, val_loss"):
        figures.main(["curves", str(bad)])
