"""Training writes TensorBoard scalars when TensorBoard is installed, and trains without it."""

import sys

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from alexnet import train
pytest_plugins = ["tests.trained"]  # the tiny_run fixture


def test_scalars_per_epoch(tiny_run):
    events = EventAccumulator(str(tiny_run.out / "tensorboard"))
    events.Reload()
    tags = events.Tags()["scalars"]
    for tag in ("train_loss", "train_top1", "val_top1", "val_top5", "lr"):
        assert tag in tags, f"no {tag} scalar in {tiny_run.out / 'tensorboard'}"
        assert [e.step for e in events.Scalars(tag)] == [1, 2]


def test_no_tensorboard_no_writer(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if it were not installed
    assert train.tensorboard_writer(tmp_path) is None
