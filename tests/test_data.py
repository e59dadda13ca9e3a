"""The DALI pipelines give what the paper's transforms say, in a resumable, seeded order; the PIL loader
gives the same; both validation layouts label alike."""

import gc
import os
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from data.dali import DaliLoader, RunAhead
from data.plans import CROP, MEAN_RGB, EpochPlan, train_plan, val_plan
from data.embedded import write_dataset
from data.folder import VAL_LABELS, DatasetError, load_splits
from data.pil import PilLoader


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    write_dataset(root, {"train": 5, "val": 2}, num_classes=2)
    classes, train, val = load_splits(root)
    assert classes == ["checks", "crosshatch"] and len(train) == 10 and len(val) == 4
    return train, val


# Mean |DALI - PIL| allowed per image, in levels: the resamplers differ by up to ~1.4 on these textures,
# a crop one pixel off by 4 or more (see the test below).
TOLERANCE = 2.0


def pil_ten_crops(path) -> torch.Tensor:
    """The ten-crop transform by hand: shorter side to 256, the top-left, top-right, bottom-left,
    bottom-right and centre 227 crops, then each of them mirrored, minus the mean: (10, 3, 227, 227)."""
    image = Image.open(path).convert("RGB")
    w, h = image.size
    scale = 256 / min(w, h)
    image = image.resize((round(w * scale), round(h * scale)), Image.BILINEAR)
    w, h = image.size
    # DALI places a crop at round-half-up(pos * slack); for the centre that is ceil(slack / 2).
    corners = [(0, 0), (w - CROP, 0), (0, h - CROP), (w - CROP, h - CROP), (-(-(w - CROP) // 2), -(-(h - CROP) // 2))]
    crops = [torch.from_numpy(np.asarray(image.crop((x, y, x + CROP, y + CROP)), dtype=np.float32)
                              - np.array(MEAN_RGB, dtype=np.float32)).permute(2, 0, 1) for x, y in corners]
    return torch.stack(crops + [c.flip(-1) for c in crops])


def pil_centre_crop(path) -> torch.Tensor:
    """The val transform by hand: shorter side to 256, centre 227 crop, minus the mean, CHW."""
    return pil_ten_crops(path)[4]


def test_val_transform_matches_a_hand_computation(samples):
    _, val = samples
    images, labels = next(iter(DaliLoader(val_plan(val), batch_size=4)))
    assert images.shape == (4, 3, CROP, CROP) and images.dtype == torch.float32
    assert labels.tolist() == [label for _, label in val] and labels.dtype == torch.int64
    for i, (path, _) in enumerate(val):
        want = pil_centre_crop(path)
        # DALI's and PIL's bilinear resamplers differ by a few levels on the textures' edges and noise
        # (0.3-1.4 on average, measured); a crop one pixel off is 4-24 levels on these textures
        # (measured), a wrong channel order or mean tens.
        diff = (images[i] - want).abs().mean().item()
        assert diff < TOLERANCE, f"[val image {i}] mean |DALI - PIL| = {diff:.2f} levels"


def test_mirror_flips_the_same_crop(samples):
    train, _ = samples
    path, label = train[0]
    plan = EpochPlan([path, path], np.array([label, label]), np.array([0.3, 0.3], np.float32),
                     np.array([0.8, 0.8], np.float32), np.array([0, 1], np.int32))
    images, _ = next(iter(DaliLoader(plan, batch_size=2)))
    # The fused resize-crop-mirror resamples the mirrored window itself: a rare pixel rounds one level
    # the other way (1 in 150k here); a crop anywhere else would differ by levels almost everywhere.
    diff = (images[1] - images[0].flip(-1)).abs()
    assert diff.max() <= 1 and diff.mean() < 0.01, f"mirrored crop vs flipped crop: mean {diff.mean()}, max {diff.max()}"
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


def test_ten_crop_geometry_matches_a_hand_computation(samples):
    _, val = samples
    images, labels = next(iter(DaliLoader(val_plan(val, ten_crop=True), batch_size=4)))
    assert images.shape == (4, 10, 3, CROP, CROP) and labels.tolist() == [label for _, label in val]
    for i, (path, _) in enumerate(val):
        want = pil_ten_crops(path)
        # (B, 10) table of mean |DALI crop - hand crop j|: same tolerance as the centre crop above, and each
        # DALI crop must be nearest its own hand crop, so a swapped order or a missing mirror fails.
        diff = (images[i][:, None] - want[None]).abs().mean(dim=(2, 3, 4))
        for k in range(10):
            assert diff[k, k] < TOLERANCE, f"[val image {i} crop {k}] mean |DALI - PIL| = {diff[k, k]:.2f} levels"
            assert diff[k].argmin() == k, f"[val image {i} crop {k}] is closest to hand crop {diff[k].argmin()}"


def test_lighting_adds_its_offset_to_every_pixel(samples):
    train, _ = samples
    path, label = train[0]
    offsets = np.array([[0, 0, 0], [5.5, -3.25, 1.0]], np.float32)
    plan = EpochPlan([path, path], np.array([label, label]), np.full(2, 0.2, np.float32), np.full(2, 0.7, np.float32),
                     np.zeros(2, np.int32), offsets)
    for name, loader in (("dali", DaliLoader), ("pil", PilLoader)):
        images, _ = next(iter(loader(plan, batch_size=2, workers=0 if name == "pil" else 1)))
        got = (images[1] - images[0]).mean(dim=(1, 2))
        torch.testing.assert_close(got, torch.from_numpy(offsets[1]), rtol=0, atol=1e-4,
                                   msg=lambda m: f"[{name}] lighting offset per channel: {m}")


@pytest.mark.parametrize("ten_crop", [False, True])
def test_pil_loader_agrees_with_dali_on_the_same_plan(samples, ten_crop):
    train, val = samples
    plan = val_plan(val, ten_crop=True) if ten_crop else train_plan(train, 5, seed=2, epoch=1)
    dali, pil = list(DaliLoader(plan, batch_size=5)), list(PilLoader(plan, batch_size=5, workers=1))
    assert len(dali) == len(pil) == len(DaliLoader(plan, 5))
    for b, ((x0, y0), (x1, y1)) in enumerate(zip(dali, pil)):
        assert x0.shape == x1.shape and x0.dtype == x1.dtype == torch.float32, f"[batch {b}] {x0.shape} vs {x1.shape}"
        assert torch.equal(y0, y1), f"[batch {b}] labels {y0} vs {y1}"
        # Same tolerance as the hand computation above: a crop one pixel off, a flip or lighting missed is more.
        diff = (x0 - x1).abs().flatten(1).mean(1)
        assert diff.max() < TOLERANCE, f"[batch {b}] mean |DALI - PIL| per image: {diff.tolist()}"


@pytest.mark.parametrize("loader", [DaliLoader, PilLoader])
def test_a_sharded_plan_resumes_on_the_same_batches(samples, loader):
    train, _ = samples
    plan = train_plan(train, 2, seed=5, epoch=1, rank=1, world_size=2)
    full, resumed = list(loader(plan, 2, workers=1)), list(loader(plan, 2, workers=1, start_batch=1))
    assert len(full) == 2 and len(resumed) == 1
    assert torch.equal(full[1][0], resumed[0][0]) and torch.equal(full[1][1], resumed[0][1])


def flatten_val(root: Path, flat: Path) -> dict[bytes, str]:
    """A copy of `root` whose val split is one flat folder of renamed files plus val_labels.txt (in
    shuffled order, as ImageNet's is); returns each val file's bytes -> its class."""
    shutil.copytree(root / "train", flat / "train")
    (flat / "val").mkdir()
    files = sorted((root / "val").glob("*/*"))
    classes, lines = {}, []
    for i in np.random.default_rng(0).permutation(len(files)):
        name = f"ILSVRC2012_val_{i:08d}.JPEG"
        shutil.copy(files[i], flat / "val" / name)
        lines.append(f"{name} {files[i].parent.name}")
        classes[files[i].read_bytes()] = files[i].parent.name
    (flat / VAL_LABELS).write_text("\n".join(lines) + "\n")
    return classes


def test_both_val_layouts_give_the_same_labels(tmp_path):
    write_dataset(tmp_path / "folders", {"train": 1, "val": 3}, num_classes=4)
    truth = flatten_val(tmp_path / "folders", tmp_path / "flat")
    for layout in ("folders", "flat"):
        classes, _, val = load_splits(tmp_path / layout)
        assert classes == ["checks", "crosshatch", "dots", "rings"] and len(val) == 12
        got = {Path(p).read_bytes(): classes[label] for p, label in val}
        assert got == truth, f"[{layout}] a val image has the wrong class"


def test_flat_val_layout_errors_name_the_culprit(tmp_path):
    write_dataset(tmp_path / "folders", {"train": 1, "val": 1}, num_classes=2)
    flat = tmp_path / "flat"
    flatten_val(tmp_path / "folders", flat)
    labels = (flat / VAL_LABELS).read_text()
    (flat / VAL_LABELS).write_text(labels.replace("crosshatch", "dog"))
    with pytest.raises(DatasetError, match=r"val_labels.txt, line \d: class 'dog' is not a class folder"):
        load_splits(flat)
    (flat / VAL_LABELS).write_text(labels.splitlines()[0] + "\n")
    with pytest.raises(DatasetError, match="1 images in .*val have no line in .*val_labels.txt, e.g. ILSVRC2012_val_"):
        load_splits(flat)
    (flat / VAL_LABELS).unlink()
    with pytest.raises(DatasetError, match="has no class folders and there is no .*val_labels.txt"):
        load_splits(flat)


def test_exclude_list_leaves_files_out_and_must_match_the_folder(tmp_path):
    write_dataset(tmp_path, {"train": 2, "val": 1}, num_classes=2)
    _, train, val = load_splits(tmp_path)
    gone = Path(train[1][0]).relative_to(tmp_path).as_posix()
    (tmp_path / "bad.txt").write_text(f"# python -m data.check\n{gone}\tnot an image\n")
    _, kept, kept_val = load_splits(tmp_path, tmp_path / "bad.txt")
    assert kept == train[:1] + train[2:] and kept_val == val
    (tmp_path / "bad.txt").write_text("train/checks/nothing.JPEG\tempty\n")
    with pytest.raises(DatasetError, match="names 1 files that are not images of .*nothing.JPEG"):
        load_splits(tmp_path, tmp_path / "bad.txt")
    with pytest.raises(DatasetError, match="exclude list .*missing.txt"):
        load_splits(tmp_path, tmp_path / "missing.txt")


def processes_with(marker: str) -> list[int]:
    """The pids of the processes whose command line holds `marker`."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and marker in (entry / "cmdline").read_bytes().decode(errors="replace"):
                pids.append(int(entry.name))
        except OSError:  # it ended meanwhile
            pass
    return pids


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds the reader processes through /proc (Linux)")
def test_a_run_killed_outright_leaves_no_reader_process_behind(tmp_path):
    """SIGKILL (the OOM killer, a scheduler's kill) gives the loader no chance to stop DALI's reader
    processes, which would wait for work forever: they notice their parent is gone and exit."""
    import signal
    import subprocess
    import sys
    import time

    write_dataset(tmp_path / "data", {"train": 4, "val": 1}, num_classes=2)
    marker = f"readers-of-{tmp_path.name}"
    script = ("import sys, time\nfrom data.dali import DaliLoader\nfrom data.folder import load_splits\n"
              "from data.plans import train_plan\n"
              f"_, train, _ = load_splits({str(tmp_path / 'data')!r})\n"
              "batches = iter(DaliLoader(train_plan(train, 2, seed=0, epoch=0), 2, workers=2))\n"
              "next(batches)\nprint('ready', flush=True)\ntime.sleep(600)\n")
    run = subprocess.Popen([sys.executable, "-c", script, marker], stdout=subprocess.PIPE, text=True,
                           cwd=Path(__file__).resolve().parents[1])
    try:
        assert run.stdout.readline().strip() == "ready"
        readers = [pid for pid in processes_with(marker) if pid != run.pid]
        assert readers, "the loader started no reader process: nothing to check"
    finally:
        run.send_signal(signal.SIGKILL)
        run.wait(timeout=60)
    deadline = time.monotonic() + 15  # each reader checks its parent every second
    while (left := processes_with(marker)) and time.monotonic() < deadline:
        time.sleep(0.2)
    for pid in left:  # not to leave them to the next test
        os.kill(pid, signal.SIGKILL)
    assert not left, f"reader processes {left} outlived their killed run"


def test_running_ahead_hands_over_every_batch_in_order_from_a_thread_of_its_own():
    made_in = []

    def batches():
        for i in range(7):
            made_in.append(threading.get_ident())
            yield i

    assert list(RunAhead(batches, 2)) == list(range(7))
    assert set(made_in) and threading.get_ident() not in made_in, "the caller's thread ran the generator"


def test_running_ahead_raises_the_generators_error_after_its_batches():
    def batches():
        yield 0
        yield 1
        raise DatasetError("bad file x.JPEG")

    got = []
    with pytest.raises(DatasetError, match="bad file x.JPEG"):
        for batch in RunAhead(batches, 2):
            got.append(batch)
    assert got == [0, 1]


def test_running_ahead_raises_an_error_from_entering_its_context_instead_of_waiting_forever():
    class Failing:
        def __enter__(self):
            raise RuntimeError("no such device")

        def __exit__(self, *exc):
            return False

    def batches():
        yield 0

    outcome = []

    def take():
        try:
            list(RunAhead(batches, 2, Failing()))
        except RuntimeError as e:
            outcome.append(str(e))

    taker = threading.Thread(target=take, daemon=True)
    taker.start()
    taker.join(timeout=30)  # ~1 ms quiet
    assert outcome == ["no such device"], "the caller waited for a batch the failed thread never sent"


@pytest.mark.parametrize("how", ["closed", "garbage-collected"])
def test_a_caller_that_stops_early_stops_the_thread_which_closes_the_generator(how):
    made, closed_in = [], []

    def batches():
        try:
            for i in range(1000):
                made.append(i)
                yield i
        finally:
            closed_in.append(threading.get_ident())

    ahead = RunAhead(batches, 2)
    assert next(ahead) == 0
    if how == "closed":
        ahead.close()
    else:
        del ahead  # the last reference (its thread holds none): CPython runs its __del__ at once
    assert closed_in and closed_in[0] != threading.get_ident(), "not closed, or closed by the caller's thread"
    assert len(made) <= 1 + 2 + 1, f"ran {len(made)} batches ahead of 1 taken"  # taken, queued, one in hand
    assert not [t for t in threading.enumerate() if t.name == "data loader"], "the loader's thread still runs"


def test_running_ahead_starts_at_once_not_at_the_first_batch_asked_for():
    started = threading.Event()

    def batches():
        started.set()  # a DALI pipeline would be built here
        yield 0

    ahead = RunAhead(batches, 2)
    assert started.wait(timeout=30), "the generator had not begun 30 s after RunAhead was made"  # ~1 ms quiet
    assert list(ahead) == [0] and list(ahead) == []


def test_a_started_dali_loader_builds_its_pipeline_before_its_loop_and_gives_the_same_batches(samples, monkeypatch):
    """start() begins the pipeline (its build and reading processes) at once; the next iter() takes the started
    batches, the same as an unstarted loader's; close() stops a start that no loop took."""
    import data.dali
    built = threading.Event()
    real = data.dali._pipeline

    def pipeline(*args, **kwargs):
        built.set()
        return real(*args, **kwargs)

    monkeypatch.setattr(data.dali, "_pipeline", pipeline)
    plan = val_plan(samples[1])
    loader = DaliLoader(plan, 3, workers=1)
    loader.start()
    assert built.wait(timeout=60), "start() had not built the pipeline 60 s later"  # ~0.3 s quiet
    started = [(images.clone(), labels.clone()) for images, labels in loader]
    unstarted = list(DaliLoader(plan, 3, workers=1))
    assert len(started) == len(unstarted) == 2
    for (x, y), (x2, y2) in zip(started, unstarted):
        assert torch.equal(x, x2) and torch.equal(y, y2)
    loader.start()
    loader.close()
    assert not [t for t in threading.enumerate() if t.name == "data loader"], "a closed start left its thread"
    empty = DaliLoader(plan, 3, workers=1, start_batch=2)  # past the plan's end: nothing to start
    empty.start()
    empty.close()
    assert list(empty) == []


def test_the_dali_pipeline_runs_outside_the_training_thread(samples, monkeypatch):
    """The training thread only takes finished batches (its time per batch, bench/test_data_pipeline.py's
    train_thread_ms, ~0.07 ms here against ~1.2 ms with the pipeline run in it)."""
    import data.dali
    ran_in = []
    real = data.dali.DALIGenericIterator

    class Recording(real):
        def __next__(self):
            ran_in.append(threading.get_ident())
            return super().__next__()

    monkeypatch.setattr(data.dali, "DALIGenericIterator", Recording)
    plan = val_plan(samples[1])
    assert sum(len(labels) for _, labels in DaliLoader(plan, 2, workers=1)) == len(plan)
    assert ran_in and threading.get_ident() not in ran_in


def test_a_failed_dali_loader_leaves_no_pipeline_for_the_garbage_collector(tmp_path):
    """A DatasetError from the loader's thread must not keep the DALI pipeline alive in a reference cycle: a
    pipeline left to the garbage collector can be collected in a process forked later (a PIL loader's worker),
    where DALI's shutdown waits forever for threads the fork did not copy."""
    from nvidia.dali import Pipeline
    gc.collect()
    gc.disable()
    try:
        plan = val_plan([(str(tmp_path / "gone.JPEG"), 0)])
        with pytest.raises(DatasetError, match="gone.JPEG"):
            list(DaliLoader(plan, 1, workers=1))
        left = [o for o in gc.get_objects() if issubclass(type(o), Pipeline)]
    finally:
        gc.enable()
    assert not left, f"{len(left)} DALI pipeline(s) kept alive by a reference cycle"
