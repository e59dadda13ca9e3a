"""`python -m data.prepare`: the paper's 256x256 preparation, resumable, naming bad files; the loaders on
prepared data (no resize, same crops), off the training thread, in the run's dtype and channels_last."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import data.dali
import data.prepare
from alexnet.evaluate import evaluate_checkpoint
from alexnet.train import get_args_parser, main as train_main
from data.check import check_file
from data.dali import DaliLoader
from data.embedded import write_dataset
from data.folder import PREPARED_MARKER, VAL_LABELS, DatasetError, is_prepared, load_splits
from data.pil import PilLoader
from data.plans import CROP, train_plan, val_plan
from data.prepare import main as prepare

ROOT = Path(__file__).resolve().parents[1]


def smooth_image(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """Random RGB image with structure at ~16 px: a pixel's shift changes it by levels, resampling barely."""
    coarse = torch.from_numpy(rng.uniform(0, 255, (1, 3, height // 16 + 2, width // 16 + 2)).astype(np.float32))
    fine = F.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=False)[0]
    return Image.fromarray(fine.clamp(0, 255).round().byte().permute(1, 2, 0).numpy())


def float_reference(image: Image.Image) -> torch.Tensor:
    """Shorter side to 256 (antialiased bilinear, in float), centre 256x256 crop: (256, 256, 3) float."""
    x = torch.from_numpy(np.asarray(image, np.float32)).permute(2, 0, 1)[None]
    h, w = x.shape[-2:]
    size = (256, round(w * 256 / h)) if h < w else (round(h * 256 / w), 256)
    y = F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)[0].permute(1, 2, 0)
    top, left = -(-(size[0] - 256) // 2), -(-(size[1] - 256) // 2)
    return y[top:top + 256, left:left + 256]


def make_folder(root: Path, images: dict[str, Image.Image], labels: str | None = None) -> Path:
    """A dataset at `root` holding `images` by relative path (and `labels` as its val label file)."""
    for rel, image in images.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        image.save(root / rel, format="PNG" if rel.endswith(".png") else "JPEG", quality=95)
    if labels is not None:
        (root / VAL_LABELS).write_text(labels)
    return root


def pixels(path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"), np.float32)


def test_geometry_matches_a_float_reference(tmp_path):
    rng = np.random.default_rng(0)
    images = {"train/a/wide.png": smooth_image(rng, 384, 300), "train/a/tall.png": smooth_image(rng, 280, 420),
              "val/a/small.png": smooth_image(rng, 200, 150)}  # upscaled, as a small image is
    src = make_folder(tmp_path / "src", images)
    assert prepare([str(src), str(tmp_path / "dst"), "-j", "1", "--quality", "95"]) == 0
    for rel, image in images.items():
        got, want = pixels(tmp_path / "dst" / rel), float_reference(image).numpy()
        assert got.shape == (256, 256, 3), f"[{rel}] prepared shape {got.shape}"
        diff = np.abs(got - want).mean()
        # PIL's bilinear vs torch's antialiased bilinear: 0.3 levels, with JPEG at 95: 1.5 (measured); one
        # pixel off: 6 levels on these images, so the geometry is pinned to the pixel.
        shifted = min(np.abs(got[1:] - want[:-1]).mean(), np.abs(got[:, 1:] - want[:, :-1]).mean())
        assert diff < 2 and diff < shifted / 2, f"[{rel}] mean |prepared - reference| {diff:.2f}, shifted {shifted:.2f}"


def test_exif_orientation_is_applied(tmp_path):
    image = smooth_image(np.random.default_rng(1), 400, 300)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored lying on its side: viewers turn it 90 degrees clockwise
    src = tmp_path / "src"
    make_folder(src, {"val/a/upright.JPEG": image.transpose(Image.Transpose.ROTATE_270)})
    (src / "train/a").mkdir(parents=True)
    image.save(src / "train/a/rotated.JPEG", format="JPEG", quality=95, exif=exif)
    assert prepare([str(src), str(tmp_path / "dst"), "-j", "1"]) == 0
    rotated, upright = pixels(tmp_path / "dst/train/a/rotated.JPEG"), pixels(tmp_path / "dst/val/a/upright.JPEG")
    assert np.abs(rotated - upright).mean() < 2, "the EXIF orientation was not applied"


def test_bad_files_are_named_listed_and_skipped_with_a_flat_val(tmp_path, capsys):
    rng = np.random.default_rng(2)
    src = make_folder(tmp_path / "src", {"train/a/0.JPEG": smooth_image(rng, 300, 260),
                                         "train/b/0.JPEG": smooth_image(rng, 260, 300),
                                         "val/x.JPEG": smooth_image(rng, 280, 280),
                                         "val/y.JPEG": smooth_image(rng, 290, 270)},
                      labels="x.JPEG a\ny.JPEG b\nbad.JPEG a\n")
    (src / "val/bad.JPEG").write_text("not an image\n")
    data = (src / "train/a/0.JPEG").read_bytes()
    (src / "train/a/cut.JPEG").write_bytes(data[:len(data) // 3])
    assert prepare([str(src), str(tmp_path / "dst"), "-j", "2"]) == 0
    out = capsys.readouterr().out
    for name in ("val/bad.JPEG", "train/a/cut.JPEG"):
        assert f"bad file skipped: {src / name}" in out, out
        assert not (tmp_path / "dst" / name).exists()
    listed = (tmp_path / "dst/bad_files.txt").read_text()
    assert "val/bad.JPEG\tnot an image" in listed and "train/a/cut.JPEG\ttruncated" in listed, listed
    classes, train, val = load_splits(tmp_path / "dst")
    assert classes == ["a", "b"] and len(train) == 2
    assert [(Path(p).name, c) for p, c in val] == [("x.JPEG", 0), ("y.JPEG", 1)]
    assert json.loads((tmp_path / "dst" / PREPARED_MARKER).read_text())["bad"] == 2


def test_a_killed_run_resumes_without_half_files(tmp_path):
    src = tmp_path / "src"
    write_dataset(src, {"train": 60, "val": 10}, num_classes=2)
    cmd = [sys.executable, "-m", "data.prepare", str(src), str(tmp_path / "dst"), "-j", "1"]
    run = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           start_new_session=True)  # its pool workers die with it
    deadline = time.monotonic() + 120  # ~5 s here
    while len(list((tmp_path / "dst").rglob("*.JPEG"))) < 20 and time.monotonic() < deadline:
        time.sleep(0.01)
    os.killpg(run.pid, signal.SIGKILL)
    run.wait()
    written = list((tmp_path / "dst").rglob("*.JPEG"))
    assert 20 <= len(written) < 140, f"{len(written)} images written before the kill"
    for path in written:
        assert check_file(path) is None, f"{path} has its final name but is not whole: {check_file(path)}"
    with pytest.raises(DatasetError, match="only partly prepared"):
        is_prepared(written[0])

    again = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and f"{len(written)} already done" in again.stdout, again.stdout + again.stderr
    assert prepare([str(src), str(tmp_path / "whole"), "-j", "2"]) == 0
    for path in (tmp_path / "whole").rglob("*.JPEG"):
        rel = path.relative_to(tmp_path / "whole")
        assert (tmp_path / "dst" / rel).read_bytes() == path.read_bytes(), f"[{rel}] differs from an uninterrupted run"
    assert is_prepared(written[0]) and not list((tmp_path / "dst").rglob("*.partial"))


def test_refusals_name_the_culprit(tmp_path, capsys, monkeypatch):
    src = make_folder(tmp_path / "src", {"train/a/0.JPEG": smooth_image(np.random.default_rng(3), 300, 260),
                                         "val/a/0.JPEG": smooth_image(np.random.default_rng(4), 300, 260)})
    assert prepare([str(src), str(tmp_path / "dst"), "--quality", "80"]) == 0
    assert prepare([str(src), str(tmp_path / "dst")]) == 2
    assert f"{tmp_path / 'dst'} holds images prepared at --quality 80" in capsys.readouterr().err
    (tmp_path / "other").mkdir()
    (tmp_path / "other/notes.txt").write_text("mine\n")
    assert prepare([str(src), str(tmp_path / "other")]) == 2
    assert "is not empty and was not made by data.prepare" in capsys.readouterr().err
    monkeypatch.setattr(data.prepare.shutil, "disk_usage", lambda path: SimpleNamespace(free=1000))
    monkeypatch.setattr(data.prepare, "SAMPLE", 1)
    assert prepare([str(src), str(tmp_path / "full"), "-j", "1"]) == 2
    assert f"{tmp_path / 'full'} has 0.00 GiB free" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        prepare([str(src), str(tmp_path / "q"), "--quality", "100"])
    assert "--quality must be in 1..95" in capsys.readouterr().err


def test_workers_default_to_the_cpus_the_process_may_use(monkeypatch, tmp_path):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2})
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    assert get_args_parser().parse_args([]).workers == 3
    assert "default: 3, the CPUs this process may use" in subprocess.run(
        [sys.executable, "-c", "import os; os.sched_getaffinity = lambda pid: {0, 1, 2}; "
         "from data.prepare import main; main(['--help'])"], capture_output=True, text=True, cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)}).stdout


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    """The tiny embedded dataset (2 classes, 6 train and 2 val images each), prepared."""
    root = tmp_path_factory.mktemp("prepared")
    write_dataset(root / "src", {"train": 6, "val": 2}, num_classes=2)
    assert prepare([str(root / "src"), str(root / "dst"), "-j", "2"]) == 0
    return root / "dst"


def test_prepared_data_gives_the_unprepared_path_s_crops(prepared):
    _, train, val = load_splits(prepared)
    for plan in (train_plan(train, 4, seed=3, epoch=1), val_plan(val), val_plan(val, ten_crop=True)):
        loader = DaliLoader(plan, 4)
        assert loader.prepared
        unprepared = DaliLoader(plan, 4)
        unprepared.prepared = False  # the resize path, on the same 256x256 images
        for (x, y), (x0, y0), (x1, _) in zip(loader, unprepared, PilLoader(plan, 4, workers=0)):
            assert torch.equal(y, y0)
            # Resizing 256 to 256 rounds a rare pixel by a level; a crop one pixel off differs by levels.
            assert (x - x0).abs().mean() < 0.05, f"prepared vs resize path: {(x - x0).abs().mean():.3f} levels"
            assert (x - x1).abs().mean() < 0.05, f"DALI vs PIL on prepared data: {(x - x1).abs().mean():.3f} levels"


def test_a_prepared_folder_with_a_wrong_size_image_is_named(prepared, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(prepared, copy)
    victim = sorted((copy / "train").rglob("*.JPEG"))[0]
    Image.new("RGB", (300, 256)).save(victim, format="JPEG")
    _, train, _ = load_splits(copy)
    with pytest.raises(DatasetError, match=f"{victim}: 300x256 in a prepared dataset"):
        list(DaliLoader(val_plan(train), 4))


def test_images_come_in_the_run_s_dtype_channels_last(prepared):
    _, train, val = load_splits(prepared)
    for plan in (train_plan(train, 4, seed=0, epoch=0), val_plan(val, ten_crop=True)):
        want = next(iter(DaliLoader(plan, 4)))[0]
        for dtype in (torch.float32, torch.float16, torch.bfloat16):
            images = next(iter(DaliLoader(plan, 4, dtype=dtype)))[0]
            flat = images.flatten(0, -4)  # ten crops: (B * 10, 3, 227, 227)
            assert images.dtype == dtype and flat.shape[1:] == (3, CROP, CROP)
            assert flat.is_contiguous(memory_format=torch.channels_last), f"[{dtype}] strides {flat.stride()}"
            assert torch.allclose(images.float(), want, atol=0.6 if dtype == torch.bfloat16 else 0.07), f"[{dtype}]"


def test_files_are_read_and_checked_off_the_training_thread(prepared, monkeypatch):
    main_pid, read = os.getpid(), data.dali._read

    def read_elsewhere(*args):
        assert os.getpid() != main_pid, "a file was read in the training process"
        return read(*args)
    monkeypatch.setattr(data.dali, "_read", read_elsewhere)  # the fork-started workers inherit it
    _, train, _ = load_splits(prepared)
    plan = train_plan(train, 2, seed=0, epoch=0)
    assert sum(len(y) for _, y in DaliLoader(plan, 2, workers=2)) == len(plan)


def test_a_prepared_batch_is_handed_over_as_one_array_of_its_files(prepared):
    """The training thread takes one (B, longest) array a prepared batch, not B arrays (~0.5 ms of its
    time a batch here); each row cut to its length (the fields' last column) is its file."""
    _, train, _ = load_splits(prepared)
    plan = train_plan(train, 4, seed=int(np.random.default_rng().integers(1000)), epoch=0)
    files, fields = data.dali._PlanSource(plan, 4, start_batch=1, prepared=True)(0)
    assert isinstance(files, np.ndarray) and files.dtype == np.uint8 and files.shape[0] == 4, type(files)
    for row, length, path in zip(files, fields[:, 7].astype(int), plan.paths[4:8]):
        assert row[:length].tobytes() == Path(path).read_bytes() and not row[length:].any(), f"[{path}]"


@pytest.mark.parametrize("change", ["removed", "text"])
def test_a_file_removed_or_changed_mid_epoch_is_named(prepared, tmp_path, change):
    copy = tmp_path / "copy"
    shutil.copytree(prepared, copy)
    _, train, _ = load_splits(copy)
    plan = train_plan(train * 4, 2, seed=0, epoch=0)  # 24 batches: the last is far beyond what runs ahead
    batches = iter(DaliLoader(plan, 2, workers=2))
    next(batches)
    victim = Path(plan.paths[-1])
    victim.unlink() if change == "removed" else victim.write_text("not an image any more\n")
    with pytest.raises(DatasetError, match=str(victim)):
        for _ in batches:
            pass


def test_training_and_evaluation_on_prepared_data(prepared, tmp_path, capsys):
    train_main(get_args_parser().parse_args(["--data-path", str(prepared), "--output-dir", str(tmp_path),
                                             "-b", "4", "--max-steps", "2", "--amp", "bf16"]))
    assert "stopped after 2 steps" in capsys.readouterr().out
    result = evaluate_checkpoint(tmp_path / "checkpoint.pth", prepared, batch_size=4, ten_crop=True)
    assert sum(c["images"] for c in result["per_class"]) == 4 and 0 <= result["top1"] <= 100, result


def test_exact_order_and_mid_epoch_resume_on_prepared_data(prepared):
    _, train, _ = load_splits(prepared)
    plan = train_plan(train, 2, seed=7, epoch=2)
    full = list(DaliLoader(plan, 2, workers=2))
    assert torch.cat([y for _, y in full]).tolist() == plan.labels.tolist(), "batches out of the plan's order"
    resumed = list(DaliLoader(plan, 2, workers=2, start_batch=4))
    assert len(resumed) == len(full) - 4
    for (x0, y0), (x1, y1) in zip(full[4:], resumed):
        assert torch.equal(x0, x1) and torch.equal(y0, y1)


def test_readers_started_by_spawn_give_the_same_batches(prepared, monkeypatch):
    """On a GPU machine the reading processes are spawned (CUDA is set up): the source must pickle."""
    _, train, _ = load_splits(prepared)
    plan = train_plan(train, 4, seed=1, epoch=0)
    forked = list(DaliLoader(plan, 4, workers=2))
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    spawned = list(DaliLoader(plan, 4, workers=2))
    assert len(spawned) == len(forked) == 3
    for (x0, y0), (x1, y1) in zip(forked, spawned):
        assert torch.equal(x0, x1) and torch.equal(y0, y1)
