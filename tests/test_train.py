"""Training end to end on a tiny embedded dataset: resume is exact, checkpoints survive crashes,
bad input is named."""

import json
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from alexnet import checkpoint
from alexnet.model import AlexNet
from alexnet.train import get_args_parser, main, resolve
from data.embedded import write_dataset

ROOT = Path(__file__).resolve().parents[1]


def train_cli(data: Path, out: Path, *flags: str) -> subprocess.CompletedProcess:
    """`python -m alexnet.train` in a new process, as a user runs it."""
    cmd = [sys.executable, "-m", "alexnet.train", "--data-path", str(data), "--output-dir", str(out),
           "-b", "4", "--seed", "3", *flags]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{result.stdout}\n{result.stderr}"
    return result


def assert_same_state(a: Path, b: Path):
    sa, sb = checkpoint.load(a), checkpoint.load(b)
    for key, value in sa["model"].items():
        assert torch.equal(value, sb["model"][key]), f"[{key}] differs between {a} and {b}"
    for i, (pa, pb) in enumerate(zip(sa["optimizer"]["state"].values(), sb["optimizer"]["state"].values())):
        assert torch.equal(pa["momentum_buffer"], pb["momentum_buffer"]), f"[momentum {i}] differs"
    assert (sa["epoch"], sa["step"]) == (sb["epoch"], sb["step"])
    assert sa["scheduler"] == sb["scheduler"]


@pytest.fixture(scope="module")
def uninterrupted(tiny_data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("straight")
    result = train_cli(tiny_data, out, "--epochs", "2")
    assert f"checkpoint: {out / 'checkpoint.pth'}" in result.stdout
    return out


def test_uninterrupted_run_writes_checkpoint_and_metrics(uninterrupted):
    lines = [json.loads(line) for line in (uninterrupted / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2]
    assert [r["step"] for r in lines] == [3, 6]
    for r in lines:
        assert 0 <= r["val_top1"] <= r["val_top5"] <= 100 and r["img_per_s"] > 0 and r["lr"] == 0.01
    state = torch.load(uninterrupted / "checkpoint.pth", weights_only=True)
    assert state["classes"] == ["checks", "crosshatch", "dots"] and state["args"]["batch_size"] == 4
    assert isinstance(state["args"], dict) and state["rng"]["torch"].dtype == torch.uint8


@pytest.mark.parametrize("stop_flags", [["--max-steps", "2"], ["--epochs", "1"]], ids=["mid-epoch", "epoch-boundary"])
def test_resume_is_bit_identical(tiny_data, uninterrupted, tmp_path, stop_flags):
    train_cli(tiny_data, tmp_path, "--epochs", "2", *stop_flags)
    stopped = checkpoint.load(tmp_path / "checkpoint.pth")
    assert stopped["step"] in (2, 3) and stopped["epoch"] == (0 if stopped["step"] == 2 else 1)
    result = train_cli(tiny_data, tmp_path, "--epochs", "2", "--resume", str(tmp_path / "checkpoint.pth"))
    assert "resumed from" in result.stdout
    assert_same_state(tmp_path / "checkpoint.pth", uninterrupted / "checkpoint.pth")


def test_resume_with_another_batch_size_continues_at_the_sample_or_is_refused(tiny_data, tmp_path, capsys):
    run_main("--data-path", str(tiny_data), "--output-dir", str(tmp_path), "-b", "4", "--max-steps", "1")
    ckpt = str(tmp_path / "checkpoint.pth")
    with pytest.raises(SystemExit, match=r"stopped 4 samples into epoch 1, not a whole number of steps of -b 8: give a -b"):
        run_main("--data-path", str(tiny_data), "--output-dir", str(tmp_path), "-b", "8", "--resume", ckpt)
    run_main("--data-path", str(tiny_data), "--output-dir", str(tmp_path), "-b", "2", "--resume", ckpt,
             "--max-steps", "2", "--lr", "0.05")
    out = capsys.readouterr().out
    assert "in epoch 1, at sample 4 of the epoch (step 2 at -b 2)" in out
    assert "lr set to 0.05 by --lr (the checkpoint's was 0.01)" in out
    state = checkpoint.load(ckpt)
    assert (state["epoch"], state["samples_in_epoch"], state["step_in_epoch"], state["step"]) == (0, 6, 3, 2)
    assert state["optimizer"]["param_groups"][0]["lr"] == 0.05


def test_pil_resume_mid_epoch_is_bit_identical(tiny_data, tmp_path):
    flags = ["--data-path", str(tiny_data), "-b", "4", "--seed", "3", "--data-loader", "pil", "-j", "1"]
    run_main(*flags, "--output-dir", str(tmp_path / "straight"), "--max-steps", "2")
    run_main(*flags, "--output-dir", str(tmp_path / "stopped"), "--max-steps", "1")
    run_main(*flags, "--output-dir", str(tmp_path / "stopped"), "--max-steps", "2",
             "--resume", str(tmp_path / "stopped" / "checkpoint.pth"))
    assert_same_state(tmp_path / "stopped" / "checkpoint.pth", tmp_path / "straight" / "checkpoint.pth")


def test_test_only_evaluates_a_checkpoint(tiny_data, uninterrupted):
    args = get_args_parser().parse_args(["--data-path", str(tiny_data), "--resume",
                                         str(uninterrupted / "checkpoint.pth"), "--test-only", "-b", "4"])
    metrics = main(args)
    last = json.loads((uninterrupted / "metrics.jsonl").read_text().splitlines()[-1])
    assert metrics["top1"] == pytest.approx(last["val_top1"]) and metrics["loss"] == pytest.approx(last["val_loss"])


def test_crash_during_save_leaves_previous_checkpoint_loadable(tmp_path):
    path = tmp_path / "checkpoint.pth"
    before = {"arch": checkpoint.ARCH, "model": {"w": torch.arange(5.0)}, "epoch": 1}
    checkpoint.save(before, path)
    # A process that dies (no exception handling, no cleanup) halfway through writing the next one.
    crash = f"""
import os, torch
from alexnet import checkpoint
def dying_save(obj, f):
    f.write(b"PK\\x03\\x04 half a zip file")
    f.flush()
    os._exit(9)
torch.save = dying_save
checkpoint.save({{"arch": checkpoint.ARCH, "model": {{"w": torch.zeros(5)}}, "epoch": 2}}, {str(path)!r})
"""
    result = subprocess.run([sys.executable, "-c", crash], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 9, result.stderr
    after = checkpoint.load(path)
    assert after["epoch"] == 1 and torch.equal(after["model"]["w"], before["model"]["w"])


def test_failed_save_cleans_up_and_keeps_previous(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pth"
    checkpoint.save({"arch": checkpoint.ARCH, "model": {}, "epoch": 1}, path)

    def disk_full(obj, f):
        f.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(checkpoint.CheckpointError, match="no space left on /.*: the checkpoint needs about 1 MB"):
        checkpoint.save({"arch": checkpoint.ARCH, "model": {"w": torch.zeros(2**18)}, "epoch": 2}, path)
    assert checkpoint.load(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pth"]


def test_sigterm_during_save_leaves_nothing_behind(tmp_path):
    path = tmp_path / "checkpoint.pth"
    killed = f"""
import os, signal, torch
from alexnet import checkpoint
def killed_save(obj, f):
    f.write(b"PK\\x03\\x04 half a zip file")
    os.kill(os.getpid(), signal.SIGTERM)
    f.write(b"never written")
torch.save = killed_save
checkpoint.save({{"arch": checkpoint.ARCH, "model": {{}}}}, {str(path)!r})
"""
    result = subprocess.run([sys.executable, "-c", killed], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 128 + 15, result.stderr
    assert list(tmp_path.iterdir()) == []


def test_train_names_a_full_disk_keeps_the_last_checkpoint_and_removes_leftovers(tiny_data, tmp_path, monkeypatch):
    out = tmp_path / "out"
    run_main("--data-path", str(tiny_data), "--output-dir", str(out), "-b", "4", "--max-steps", "1")
    last_good = (out / "checkpoint.pth").read_bytes()
    (out / "checkpoint.pth.4242.tmp").write_bytes(b"left by a killed save")

    def disk_full(obj, f):  # what torch.save raises when the disk fills up under it
        f.write(b"partial")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 320 vs 256")
    monkeypatch.setattr(torch, "save", disk_full)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**9, 10**9, 0))
    with pytest.raises(SystemExit, match=r"^error: no space left on /\S*: the checkpoint needs about \d+ MB$"):
        run_main("--resume", str(out / "checkpoint.pth"), "--output-dir", str(out), "--max-steps", "2")
    assert not list(out.glob("*.tmp"))
    assert (out / "checkpoint.pth").read_bytes() == last_good


def test_a_flipped_bit_in_a_checkpoint_is_named(tmp_path, tiny_data):
    path = tmp_path / "weights.pth"
    checkpoint.save({"arch": checkpoint.ARCH, "model": AlexNet(num_classes=3).state_dict(),
                     "classes": ["checks", "crosshatch", "dots"]}, path)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10  # the middle of the file is fc6's weights
    path.write_bytes(data)
    with pytest.raises(SystemExit, match=f"checkpoint {path} is corrupt: its contents do not match the checksum"):
        run_main("--data-path", str(tiny_data), "--resume", str(path), "--test-only", "-b", "4")


def test_checkpoints_follow_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        checkpoint.save({"arch": checkpoint.ARCH, "model": {}}, tmp_path / "checkpoint.pth")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "checkpoint.pth").stat().st_mode) == 0o640


def run_main(*argv: str):
    return main(get_args_parser().parse_args(list(argv)))


def test_missing_data_path_is_named(tmp_path):
    with pytest.raises(SystemExit, match=f"data path {tmp_path / 'nope'} does not exist"):
        run_main("--data-path", str(tmp_path / "nope"), "--output-dir", str(tmp_path / "out"))


def test_empty_folder_is_named(tmp_path):
    with pytest.raises(SystemExit, match=f"{tmp_path / 'train'} does not exist or is not a folder"):
        run_main("--data-path", str(tmp_path), "--output-dir", str(tmp_path / "out"))


def test_images_without_class_folders_are_named(tmp_path, tiny_data):
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "a.JPEG").write_bytes((tiny_data / "train/checks/checks_0000.JPEG").read_bytes())
    with pytest.raises(SystemExit, match="has no class folders"):
        run_main("--data-path", str(tmp_path), "--output-dir", str(tmp_path / "out"))


def test_class_folder_without_images_is_named(tmp_path):
    write_dataset(tmp_path, {"train": 1, "val": 1}, num_classes=2)
    (tmp_path / "train" / "zebra").mkdir()
    (tmp_path / "train" / "zebra" / "notes.txt").write_text("not an image")
    with pytest.raises(SystemExit, match=f"{tmp_path / 'train' / 'zebra'} holds no image files"):
        run_main("--data-path", str(tmp_path), "--output-dir", str(tmp_path / "out"))


def test_val_class_unknown_to_train_is_named(tmp_path):
    write_dataset(tmp_path, {"train": 1, "val": 1}, num_classes=2)
    (tmp_path / "val" / "crosshatch").rename(tmp_path / "val" / "zebra")
    with pytest.raises(SystemExit, match="zebra is a class the train split does not have"):
        run_main("--data-path", str(tmp_path), "--output-dir", str(tmp_path / "out"))


def test_unknown_kernels_name_is_refused(capsys):
    with pytest.raises(SystemExit):
        get_args_parser().parse_args(["--kernels", "cudnn"])
    assert "invalid choice: 'cudnn'" in capsys.readouterr().err


def test_checkpoint_of_another_architecture_is_named(tmp_path, tiny_data):
    other = AlexNet(num_classes=5)  # 5 classes where the data has 3
    checkpoint.save({"arch": checkpoint.ARCH, "model": other.state_dict()}, tmp_path / "five.pth")
    with pytest.raises(SystemExit, match=r"does not fit this model: fc8.weight: checkpoint \(5, 4096\) vs model \(3, 4096\)"):
        run_main("--data-path", str(tiny_data), "--resume", str(tmp_path / "five.pth"), "--test-only")
    # A bare state dict of some other network (e.g. torchvision's AlexNet layout).
    torch.save({"features.0.weight": torch.zeros(64, 3, 11, 11)}, tmp_path / "tv.pth")
    with pytest.raises(SystemExit, match="is not an alexnet-2012 checkpoint"):
        run_main("--data-path", str(tiny_data), "--resume", str(tmp_path / "tv.pth"), "--test-only")
    (tmp_path / "junk.pth").write_bytes(b"\x00garbage")
    with pytest.raises(SystemExit, match="junk.pth cannot be read"):
        run_main("--data-path", str(tiny_data), "--resume", str(tmp_path / "junk.pth"), "--test-only")
    with pytest.raises(SystemExit, match="missing.pth does not exist"):
        run_main("--data-path", str(tiny_data), "--resume", str(tmp_path / "missing.pth"), "--test-only")


@pytest.mark.parametrize("flag, value, message", [
    ("-b", "0", "argument -b/--batch-size: must be >= 1, got 0"),
    ("--epochs", "-2", "argument --epochs: must be >= 1, got -2"),
    ("--lr", "0", "argument --lr: must be > 0, got 0"),
    ("--wd", "x", "argument --wd/--weight-decay: 'x' is not a number of type float"),
    ("-j", "1.5", "argument -j/--workers: '1.5' is not a number of type int"),
    ("--lr", "nan", "argument --lr: must be a finite number, got nan"),
    ("--lr", "inf", "argument --lr: must be a finite number, got inf"),
    ("--wd", "inf", "argument --wd/--weight-decay: must be a finite number, got inf"),
    ("--momentum", "nan", "argument --momentum: must be a finite number, got nan"),
    ("--seed", "1" + "0" * 30, "argument --seed: must be <= 4294967295"),
])
def test_bad_numeric_flags_are_named(capsys, flag, value, message):
    with pytest.raises(SystemExit):
        get_args_parser().parse_args([flag, value])
    assert message in capsys.readouterr().err


def test_test_only_without_resume_is_refused(tiny_data, tmp_path):
    with pytest.raises(SystemExit, match="--test-only evaluates the --resume checkpoint: give --resume"):
        run_main("--data-path", str(tiny_data), "--test-only", "--output-dir", str(tmp_path))


def test_output_dir_that_is_a_file_is_named(tiny_data, tmp_path):
    (tmp_path / "out").write_text("a file")
    with pytest.raises(SystemExit, match=f"--output-dir {tmp_path / 'out'} cannot be made a folder: File exists"):
        run_main("--data-path", str(tiny_data), "--output-dir", str(tmp_path / "out"))


def test_exclude_list_that_empties_val_is_named(tiny_data, tmp_path):
    listed = "".join(f"{p.relative_to(tiny_data)}\tbad\n" for p in sorted((tiny_data / "val").rglob("*.JPEG")))
    (tmp_path / "bad.txt").write_text(listed)
    with pytest.raises(SystemExit, match=f"exclude list {tmp_path / 'bad.txt'} leaves no images in {tiny_data / 'val'}"):
        run_main("--data-path", str(tiny_data), "--exclude-list", str(tmp_path / "bad.txt"), "-b", "4",
                 "--output-dir", str(tmp_path / "out"))


def test_bad_val_file_is_named_before_the_first_step(tmp_path):
    write_dataset(tmp_path, {"train": 4, "val": 1}, num_classes=2)
    (tmp_path / "val" / "checks" / "notes.JPEG").write_text("not an image")
    with pytest.raises(SystemExit, match=r"the data pipeline failed on \S*val/checks/notes.JPEG: not an image"):
        run_main("--data-path", str(tmp_path), "-b", "4", "--output-dir", str(tmp_path / "out"))
    assert not (tmp_path / "out" / "checkpoint.pth").exists()


def test_batch_larger_than_the_train_split_is_named(tiny_data, tmp_path):
    with pytest.raises(SystemExit, match=r"has 12 images, fewer than one batch \(-b 64\)"):
        run_main("--data-path", str(tiny_data), "-b", "64", "--output-dir", str(tmp_path / "out"))
    assert not (tmp_path / "out").exists(), "a failed start left its output folder behind"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_cuda_device_without_a_gpu_is_named(tiny_data, tmp_path):
    with pytest.raises(SystemExit, match="--device cuda asked for, but torch sees no CUDA device"):
        run_main("--data-path", str(tiny_data), "--device", "cuda", "--output-dir", str(tmp_path))


def test_bad_device_name_is_named(tiny_data, tmp_path):
    with pytest.raises(SystemExit, match="--device 'gpu0' is not a device"):
        run_main("--data-path", str(tiny_data), "--device", "gpu0", "--output-dir", str(tmp_path))


def test_weights_only_checkpoint_evaluates_but_does_not_resume(tmp_path, tiny_data):
    torch.manual_seed(0)
    checkpoint.save({"arch": checkpoint.ARCH, "model": AlexNet(num_classes=3).state_dict(),
                     "classes": ["checks", "crosshatch", "dots"]}, tmp_path / "weights.pth")
    metrics = run_main("--data-path", str(tiny_data), "--resume", str(tmp_path / "weights.pth"), "--test-only", "-b", "4")
    assert 0 <= metrics["top1"] <= metrics["top5"] <= 100
    with pytest.raises(SystemExit, match="holds no training state .*optimizer.* it can be evaluated with --test-only"):
        run_main("--data-path", str(tiny_data), "--resume", str(tmp_path / "weights.pth"), "-b", "4",
                 "--output-dir", str(tmp_path / "out"))


@pytest.mark.parametrize("flags,want", [
    ([], dict(batch_size=32, init="caffe")),  # the embedded run's recipe
    (["--data-path", "/data/imagenet"], dict(batch_size=128, init="paper")),  # the paper's
    (["-b", "8", "--init", "paper"], dict(batch_size=8, init="paper")),  # flags given win
    (["--data-path", "d", "--init", "caffe"], dict(batch_size=128, init="caffe")),
])
def test_defaults_depend_on_the_data_and_flags_win(flags, want):
    config, _, _ = resolve(get_args_parser().parse_args(flags), None)
    assert {key: getattr(config, key) for key in want} == want


def test_piped_logs_are_plain_lines_with_1_based_epochs(tiny_data, tmp_path):
    result = train_cli(tiny_data, tmp_path, "--epochs", "1", "--print-freq", "2")
    steps = [line for line in result.stdout.splitlines() if line.startswith("epoch 1/1  step")]
    assert [line.split()[3] for line in steps] == ["2/3", "3/3"], result.stdout
    for line in steps:
        assert re.fullmatch(r"epoch 1/1  step \d/3  loss \d+\.\d{4}  lr 0\.01  \d+\.\d img/s  data \d+\.\d{3} s", line), line
    assert "\r" not in result.stdout + result.stderr, "a progress bar was drawn into a pipe"
    assert re.search(r"^epoch 1/1: train loss .* val loss .* top-1 \d+\.\d\d %, top-5 \d+\.\d\d % \(best\)",
                     result.stdout, re.M), result.stdout
    assert "kernels: torch (--kernels triton or --kernels compile to compare)" in result.stdout


def test_a_used_output_dir_is_refused_unless_resumed_or_overwritten(tiny_data, uninterrupted, tmp_path):
    shutil.copytree(uninterrupted, tmp_path / "run")
    with pytest.raises(SystemExit, match=f"--output-dir {tmp_path / 'run'} holds another run \\(checkpoint.pth, "
                                         "model_best.pth, metrics.jsonl, args.json, tensorboard\\): give --resume"):
        run_main("--data-path", str(tiny_data), "--output-dir", str(tmp_path / "run"), "-b", "4")
    with pytest.raises(SystemExit, match="holds another run"):  # resuming another run's checkpoint into it
        run_main("--resume", str(uninterrupted / "checkpoint.pth"), "--output-dir", str(tmp_path / "run"))
    run_main("--data-path", str(tiny_data), "--output-dir", str(tmp_path / "run"), "-b", "4", "--overwrite",
             "--epochs", "1", "--seed", "5")
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1], "the old run's metrics were kept"
    assert json.loads((tmp_path / "run" / "args.json").read_text())["seed"] == 5


def test_resume_takes_the_data_and_recipe_from_the_checkpoint(tiny_data, uninterrupted, tmp_path):
    """Only --resume and --epochs: the data path, -b and seed come from the checkpoint, and it says so."""
    train_cli(tiny_data, tmp_path, "--epochs", "1")
    result = subprocess.run([sys.executable, "-m", "alexnet.train", "--resume", str(tmp_path / "checkpoint.pth"),
                             "--output-dir", str(tmp_path), "--epochs", "2"],
                            cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert f"from {tmp_path / 'checkpoint.pth'}'s arguments (a flag given now overrides one): --data-path {tiny_data}, " \
           f"--batch-size 4, " in result.stdout and "--seed 3" in result.stdout, result.stdout
    assert_same_state(tmp_path / "checkpoint.pth", uninterrupted / "checkpoint.pth")
    assert [json.loads(line)["epoch"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    best = max(range(2), key=lambda i: json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[i])["val_top1"])
    assert checkpoint.load(tmp_path / "model_best.pth")["epoch"] == best + 1
    assert json.loads((tmp_path / "args.json").read_text())["data_path"] == str(tiny_data)


def test_the_default_backend_is_torch_whatever_the_machine(monkeypatch):
    for cuda in (False, True):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
        for flags in ([], ["--data-path", "d"]):
            config, _, _ = resolve(get_args_parser().parse_args(flags), None)
            assert config.kernels == "torch" and config.epochs == (7 if not flags else 90)


def test_triton_on_the_cpu_needs_allow_interpreter(tiny_data, tmp_path):
    with pytest.raises(SystemExit, match=r"--kernels triton on the CPU runs Triton's interpreter, about 18 minutes "
                                         r"per step at -b 4: .* add --allow-interpreter"):
        run_main("--data-path", str(tiny_data), "--kernels", "triton", "-b", "4", "--output-dir", str(tmp_path))


def test_resume_keeps_the_checkpoint_s_zeros_and_the_zeros_given_now():
    """0 is a value, not "not given": a checkpoint's --lighting-std 0 is kept, a --seed 0 given now wins."""
    saved, _, _ = resolve(get_args_parser().parse_args(["--lighting-std", "0", "--seed", "7", "--no-lrn"]), None)
    config, inherited, _ = resolve(get_args_parser().parse_args(["--seed", "0"]), saved.as_dict())
    assert (config.lighting_std, config.seed, config.no_lrn) == (0.0, 0, True)
    assert inherited["lighting_std"] == 0.0 and "seed" not in inherited


@pytest.mark.parametrize("stop", [[], ["--max-steps", "5"]], ids=["3 epochs", "max-steps mid-epoch 2"])
def test_on_a_gpu_each_loader_starts_ahead_of_its_loop_and_what_no_loop_took_is_closed(tiny_data, tmp_path,
                                                                                       monkeypatch, stop):
    """Where the trainer starts loaders early (a GPU: spawned reading processes take seconds), validation's
    loader starts when an epoch does and the next epoch's before validation, so that their start-up overlaps
    the work; a start no loop took (the run stopped) is closed. Driven on the CPU with the PIL loader, each
    loader's start, loop and close recorded; loaders are named in the order they are made (validation's
    first, then each epoch's)."""
    import alexnet.train as train_module
    from data.pil import PilLoader
    events, made = [], []

    class Recorded(PilLoader):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.name = "val" if not made else f"train {len(made)}"
            made.append(self)

        def start(self):
            events.append(f"start {self.name}")

        def close(self):
            events.append(f"close {self.name}")

        def __iter__(self):
            events.append(f"loop {self.name}")
            return super().__iter__()

    monkeypatch.setattr(train_module, "starts_early", lambda device: True)
    monkeypatch.setattr(train_module, "loader_class", lambda name: Recorded)
    run_main("--data-path", str(tiny_data), "--output-dir", str(tmp_path), "-b", "4", "--epochs", "3",
             "--data-loader", "pil", "-j", "1", *stop)  # 3 steps an epoch
    if not stop:
        assert events == ["start val", "loop train 1", "start train 2", "loop val",
                          "start val", "loop train 2", "start train 3", "loop val",
                          "start val", "loop train 3", "loop val", "close val"], events
    else:  # stopped at step 5, in epoch 2: validation's start is not taken
        assert events == ["start val", "loop train 1", "start train 2", "loop val",
                          "start val", "loop train 2", "close val"], events
