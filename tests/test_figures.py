"""python -m alexnet.figures: the conv1 filter grid, training curves and predictions as PNGs.
The PNGs go to pytest's temporary folder (`--basetemp DIR` keeps them where you can look)."""

import json

import numpy as np
import pytest
import torch
from matplotlib.colors import to_hex
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


def test_filters_show_each_tower_apart():
    weight = torch.randn(96, 3, 11, 11)
    towers = figures.plot_filters(weight).axes
    assert [ax.get_title() for ax in towers] == ["tower 1 (the paper's GPU 1): kernels 1-48",
                                                 "tower 2 (the paper's GPU 2): kernels 49-96"]
    for ax, half in zip(towers, (weight[:48], weight[48:])):
        np.testing.assert_array_equal(ax.images[0].get_array(), figures.filters_grid(half))
    assert [ax.get_title() for ax in figures.plot_filters(weight, towers=1).axes] == ["one tower (no groups)"]


def test_curves_plot_accuracy_against_whole_epochs():
    records = [{"epoch": e, "lr": 0.01, "train_loss": 2 / e, "val_loss": 3 / e, "val_top1": 10.0 * e,
                "val_top5": 30.0 + 10 * e} for e in (1, 2, 3)]
    loss, acc, lr = figures.plot_curves(records).axes
    assert acc.get_title() == "validation accuracy (%)" and acc.get_ylim()[0] == 0
    assert [list(line.get_ydata()) for line in acc.lines] == [[10, 20, 30], [40, 50, 60]], "not val_top1, val_top5"
    for ax in (loss, acc, lr):
        low, high = ax.get_xlim()
        assert [t for t in ax.get_xticks() if low <= t <= high] == [1, 2, 3], f"[{ax.get_title()}] epoch ticks"


def test_predictions_name_the_true_class_and_fill_their_rows():
    image = np.zeros((227, 227, 3))
    top = [{"class": "b", "prob": 0.9}, {"class": "a", "prob": 0.08}, {"class": "c", "prob": 0.02}]
    results = [{"path": f"val/{c}/{i}.png", "top": top} for i, c in enumerate("abx")]
    fig = figures.plot_predictions([image] * 3, results, ["a", "b", None])
    pictures, bars = fig.axes[0::2], fig.axes[1::2]
    assert [ax.get_title() for ax in pictures] == ["0.png\ntrue: a", "1.png\ntrue: b", "2.png\ntrue: unknown"]
    for ax, truth in zip(bars, ["a", "b", None]):
        assert ax.get_xlim() == (0, 1), "the probability axis is not 0 to 1"
        assert [t.get_text() for t in ax.get_yticklabels()] == ["c", "a", "b"]  # most probable at the top
        assert [to_hex(p.get_facecolor()) for p in ax.patches] == [
            to_hex("tab:green" if c == truth else "tab:blue") for c in "cab"], "the true class's bar is not green"
        assert [t.get_text() for t in ax.texts] == ["2.0 %", "8.0 %", "90.0 %"]
    for n, shape in ((3, (1, 3)), (4, (1, 4)), (6, (2, 3)), (12, (3, 4))):  # rows x columns: no empty row of cells
        grid = figures.plot_predictions([image] * n, [results[0]] * n, ["a"] * n).axes[0].get_gridspec()
        assert (grid.nrows // 2, grid.ncols) == shape, f"{n} images"


def test_neighbours_name_each_class():
    image = np.zeros((227, 227, 3))
    fig = figures.plot_neighbours([image, image], [[image] * 2, [image]], [[1.0, 2.0], [3.0]],
                                  [["dots", "dots", "rings"], ["", "dots"]])
    assert [ax.get_xlabel() for ax in fig.axes] == ["dots", "dots", "rings", "", "dots", ""]
    assert [to_hex(ax.xaxis.label.get_color()) for ax in fig.axes[1:3]] == [to_hex("tab:green"), to_hex("black")]
    assert [ax.get_title() for ax in fig.axes] == ["query", "d = 1", "d = 2", "query", "d = 3", ""]


def test_pictures_of_a_trained_run(tiny_run, tmp_path):
    ckpt = str(tiny_run.checkpoint)
    filters = figures.main(["filters", "--checkpoint", ckpt, "-o", str(tmp_path / "conv1.png")])
    curves = figures.main(["curves", str(tiny_run.out / "metrics.jsonl"), "-o", str(tmp_path / "curves.png")])
    predictions = figures.main(["predictions", str(tiny_run.data / "val"), "--checkpoint", ckpt, "--max-images", "4",
                                "-o", str(tmp_path / "predictions.png")])
    assert png_size(filters) == (800, 388)
    assert png_size(curves) == (1200, 360)
    assert png_size(predictions) == (1360, 460)  # 4 images: one row of 4


def test_bad_metrics_are_named(tmp_path):
    with pytest.raises(SystemExit, match=f"metrics file {tmp_path / 'none.jsonl'} does not exist"):
        figures.main(["curves", str(tmp_path / "none.jsonl")])
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"epoch": 1}) + "\n{oops\n")
    with pytest.raises(SystemExit, match=f"{bad}:2 is not JSON"):
        figures.main(["curves", str(bad)])
    bad.write_text(json.dumps({"epoch": 1, "lr": 0.1}) + "\n")
    with pytest.raises(SystemExit, match=f"metrics file {bad} has no train_loss, val_loss, val_top1, val_top5"):
        figures.main(["curves", str(bad)])
