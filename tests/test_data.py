"""The DALI pipelines give what the paper's transforms say, in a resumable, seeded order."""

import numpy as np
import pytest
import torch
from PIL import Image

from data.dali import CROP, MEAN_RGB, DaliLoader, EpochPlan, train_plan, val_plan
from data.embedded import write_dataset
from data.folder import load_splits


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    write_dataset(root, {"train": 5, "val": 2}, num_classes=2)
    classes, train, val = load_splits(root)
    assert classes == ["arrow", "circle"] and len(train) == 10 and len(val) == 4
    return train, val


def pil_centre_crop(path) -> torch.Tensor:
    """The val transform by hand: shorter side to 256, centre 227 crop, minus the mean, CHW."""
    image = Image.open(path).convert("RGB")
    w, h = image.size
    scale = 256 / min(w, h)
    image = image.resize((round(w * scale), round(h * scale)), Image.BILINEAR)
    w, h = image.size
    # DALI places a crop at round-half-up(pos * slack); for the centre that is ceil(slack / 2).
    left, top = -(-(w - CROP) // 2), -(-(h - CROP) // 2)
    pixels = np.asarray(image.crop((left, top, left + CROP, top + CROP)), dtype=np.float32)
    return torch.from_numpy(pixels - np.array(MEAN_RGB, dtype=np.float32)).permute(2, 0, 1)


def test_val_transform_matches_a_hand_computation(samples):
    _, val = samples
    images, labels = next(iter(DaliLoader(val_plan(val), batch_size=4)))
    assert images.shape == (4, 3, CROP, CROP) and images.dtype == torch.float32
    assert labels.tolist() == [label for _, label in val] and labels.dtype == torch.int64
    for i, (path, _) in enumerate(val):
        want = pil_centre_crop(path)
        # DALI's and PIL's bilinear resamplers differ by a level or two on edges and noise (0.2-0.4
        # on average, measured); a crop one pixel off is ~2.5 levels, a wrong channel order or mean tens.
        diff = (images[i] - want).abs().mean().item()
        assert diff < 1.0, f"[val image {i}] mean |DALI - PIL| = {diff:.2f} levels"


def test_mirror_flips_the_same_crop(samples):
    train, _ = samples
    path, label = train[0]
    plan = EpochPlan([path, path], np.array([label, label]), np.array([0.3, 0.3], np.float32),
                     np.array([0.8, 0.8], np.float32), np.array([0, 1], np.int32))
    images, _ = next(iter(DaliLoader(plan, batch_size=2)))
    torch.testing.assert_close(images[1], images[0].flip(-1), rtol=0, atol=0)
    assert not torch.equal(images[0], images[1])


def test_train_plan_is_seeded_shuffled_and_whole_batches(samples):
    train, _ = samples
    a, b = train_plan(train, 4, seed=1, epoch=0), train_plan(train, 4, seed=1, epoch=0)
    assert a.paths == b.paths and np.array_equal(a.crop_x, b.crop_x) and np.array_equal(a.mirror, b.mirror)
    assert len(a) == 8  # 10 samples cut to two batches of 4
    other = train_plan(train, 4, seed=1, epoch=1)
    assert other.paths != a.paths, "each epoch is shuffled anew"
    assert [dict(train)[p] for p in a.paths] == a.labels.tolist(), "labels follow their files"
    with pytest.raises(ValueError, match="fewer than one batch of 64"):
        train_plan(train, 64, seed=0, epoch=0)


def test_loader_resumes_mid_epoch_on_the_same_batches(samples):
    train, _ = samples
    plan = train_plan(train, 2, seed=5, epoch=3)
    full = list(DaliLoader(plan, batch_size=2))
    resumed = list(DaliLoader(plan, batch_size=2, start_batch=3))
    assert len(full) == 5 and len(resumed) == 2 == len(DaliLoader(plan, 2, start_batch=3))
    for (x0, y0), (x1, y1) in zip(full[3:], resumed):
        assert torch.equal(x0, x1) and torch.equal(y0, y1)


def test_val_keeps_the_last_partial_batch(samples):
    _, val = samples
    sizes = [len(labels) for _, labels in DaliLoader(val_plan(val), batch_size=3)]
    assert sizes == [3, 1]
