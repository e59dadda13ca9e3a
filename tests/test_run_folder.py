"""A run's folder belongs to one run, every record in it is checked: the lock, --overwrite only after
every check, the whole-record checksum, the data recorded and checked on resume, whole-epoch metrics
after a resume, metrics.jsonl with a cut line, model_best.pth its own file."""

import json
import shutil
import signal
from pathlib import Path

import pytest
import torch

from alexnet import checkpoint
from alexnet.train import get_args_parser, main

ROOT = Path(__file__).resolve().parents[1]


def run_main(*argv: str):
    return main(get_args_parser().parse_args(list(argv)))


def train(data: Path, out: Path, *flags: str):
    return run_main("--data-path", str(data), "--output-dir", str(out), "-b", "4", "--seed", "3", "-j", "1", *flags)


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_a_second_run_into_a_held_folder_is_refused_and_a_stale_lock_is_taken_over(tiny_data, tmp_path, capsys,
                                                                                   hold_folder):
    out = tmp_path / "run"
    holder = hold_folder(out)
    with pytest.raises(SystemExit, match=f"--output-dir {out} is in use by another run \\(pid {holder.pid}\\)"):
        train(tiny_data, out, "--max-steps", "1")
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=60)
    assert (out / ".lock").read_text().strip() == str(holder.pid), "the killed run's lock should still be there"
    capsys.readouterr()
    train(tiny_data, out, "--max-steps", "1")  # the stale lock is taken over
    assert f"{out} was held by a run (pid {holder.pid}) that was killed; this run takes it over" in capsys.readouterr().out
    assert checkpoint.load(out / "checkpoint.pth")["step"] == 1 and (out / ".lock").read_text() == ""


def test_overwrite_removes_the_old_run_only_once_every_check_passed(tiny_data, tmp_path, capsys):
    out = tmp_path / "run"
    train(tiny_data, out, "--epochs", "1")
    old = sorted(p.name for p in out.iterdir())
    assert {"checkpoint.pth", "model_best.pth", "metrics.jsonl", "args.json", "tensorboard"} <= set(old)
    with pytest.raises(SystemExit, match=f"data path {tmp_path / 'typo'} does not exist"):
        run_main("--data-path", str(tmp_path / "typo"), "--output-dir", str(out), "--overwrite")
    with pytest.raises(SystemExit, match="--kernels triton on the CPU"):
        train(tiny_data, out, "--overwrite", "--kernels", "triton")
    assert sorted(p.name for p in out.iterdir()) == old and len(metrics(out)) == 1
    events = {p.name for p in (out / "tensorboard").iterdir()}
    capsys.readouterr()
    train(tiny_data, out, "--overwrite", "--max-steps", "1", "--seed", "5")
    assert f"--overwrite: removed the previous run's files from {out}" in capsys.readouterr().out
    assert not (out / "metrics.jsonl").exists() and not (out / "model_best.pth").exists()
    assert not (out / "tensorboard").exists() or not events & {p.name for p in (out / "tensorboard").iterdir()}
    assert json.loads((out / "args.json").read_text())["seed"] == 5


def test_a_refusal_offers_resume_only_when_there_is_a_checkpoint(tiny_data, tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.jsonl").write_text('{"epoch": 1}\n')
    with pytest.raises(SystemExit, match=r"holds another run \(metrics.jsonl\): give another --output-dir, or "
                                         r"--overwrite to replace it$"):
        train(tiny_data, tmp_path / "run")


def test_a_flipped_bit_anywhere_in_the_record_is_refused(tiny_data, tmp_path):
    train(tiny_data, tmp_path, "--max-steps", "1")
    path = tmp_path / "checkpoint.pth"
    data = bytearray(path.read_bytes())
    key = data.index(b"X\x0a\x00\x00\x00batch_size")  # the pickled key, a memo opcode, then BININT1 4
    at = data.index(b"K\x04", key, key + 24) + 1
    data[at] ^= 0x02  # -b 4 -> 6: loaded without a word before the checksum covered the whole record
    path.write_bytes(data)
    with pytest.raises(SystemExit, match=f"checkpoint {path} is corrupt: its contents do not match the checksum"):
        run_main("--resume", str(path), "--output-dir", str(tmp_path))


def test_a_checkpoint_without_its_checksum_is_refused_and_an_old_one_loads(tmp_path):
    record = {"arch": checkpoint.ARCH, "model": {"w": torch.randn(3)}, "epoch": 1}
    checkpoint.save(record, tmp_path / "c.pth")
    state = torch.load(tmp_path / "c.pth", weights_only=True)
    assert state["format"] == checkpoint.FORMAT
    del state["checksum"]
    torch.save(state, tmp_path / "stripped.pth")
    with pytest.raises(checkpoint.CheckpointError, match="stripped.pth has no checksum, which every format 2"):
        checkpoint.load(tmp_path / "stripped.pth")
    old = {**record, "checksum": checkpoint._tensor_checksum(record)}  # format 1: its tensors' checksum only
    torch.save(old, tmp_path / "old.pth")
    assert checkpoint.load(tmp_path / "old.pth")["epoch"] == 1
    torch.save({**old, "model": {"w": old["model"]["w"] + 1}}, tmp_path / "old-corrupt.pth")
    with pytest.raises(checkpoint.CheckpointError, match="old-corrupt.pth is corrupt: its tensors do not match"):
        checkpoint.load(tmp_path / "old-corrupt.pth")


def test_resume_checks_the_data_it_was_trained_on(tiny_data, tmp_path, monkeypatch, capsys):
    data, out = tmp_path / "data", tmp_path / "out"
    shutil.copytree(tiny_data, data)
    monkeypatch.chdir(tmp_path)
    run_main("--data-path", "data", "--output-dir", str(out), "-b", "4", "--max-steps", "1", "-j", "1")
    state = checkpoint.load(out / "checkpoint.pth")
    assert state["args"]["data_path"] == str(data)  # absolute: a resume from elsewhere reads the same files
    assert state["dataset"]["path"] == str(data) and state["dataset"]["samples"] == {"train": 12, "val": 6}
    monkeypatch.chdir(ROOT / "tests")
    run_main("--resume", str(out / "checkpoint.pth"), "--output-dir", str(out), "--max-steps", "2")
    assert checkpoint.load(out / "checkpoint.pth")["step"] == 2
    for i in range(2):  # three more images: the epoch would change under the run
        shutil.copy(next((data / "train" / "dots").iterdir()), data / "train" / "dots" / f"extra_{i}.JPEG")
    with pytest.raises(SystemExit, match=r"the data is not what .* was trained on \(train images 12 -> 14\): give "
                                         r"--data-path to train on it as it is now"):
        run_main("--resume", str(out / "checkpoint.pth"), "--output-dir", str(out), "--max-steps", "3")
    capsys.readouterr()
    run_main("--resume", str(out / "checkpoint.pth"), "--output-dir", str(out), "--max-steps", "3",
             "--data-path", str(data))
    assert f"--data-path {data} is not the data {out / 'checkpoint.pth'} stopped on (train images 12 -> 14): " \
           f"epoch 1 restarts from its first sample" in capsys.readouterr().out
    state = checkpoint.load(out / "checkpoint.pth")
    assert (state["step"], state["samples_in_epoch"]) == (3, 4)
    extra = data / "train" / "dots" / "extra_0.JPEG"
    other = next(p for p in sorted((data / "val").rglob("*.JPEG")) if p.stat().st_size != extra.stat().st_size)
    shutil.copy(other, extra)  # the same names and numbers, another file
    with pytest.raises(SystemExit, match=r"\(file names or sizes\)"):
        run_main("--resume", str(out / "checkpoint.pth"), "--output-dir", str(out), "--max-steps", "4")


def test_a_resumed_epoch_reports_the_whole_epoch(tiny_data, tmp_path):
    train(tiny_data, tmp_path / "straight", "--epochs", "1")
    train(tiny_data, tmp_path / "stopped", "--epochs", "1", "--max-steps", "2")
    train(tiny_data, tmp_path / "stopped", "--epochs", "1", "--resume", str(tmp_path / "stopped" / "checkpoint.pth"))
    straight, resumed = metrics(tmp_path / "straight")[0], metrics(tmp_path / "stopped")[0]
    assert (resumed["train_loss"], resumed["train_top1"]) == (straight["train_loss"], straight["train_top1"])
    assert resumed["train_seconds"] > 0 and resumed["img_per_s"] == pytest.approx(12 / resumed["train_seconds"])


def test_a_cut_last_line_of_metrics_is_dropped_with_a_warning(tiny_data, tmp_path, capsys):
    train(tiny_data, tmp_path, "--epochs", "1")
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 2, "step": 6, "lr": 0.0')  # what a full disk leaves
    capsys.readouterr()
    train(tiny_data, tmp_path, "--epochs", "2", "--resume", str(tmp_path / "checkpoint.pth"))
    assert "warning: dropped the last line of" in capsys.readouterr().err
    assert [r["epoch"] for r in metrics(tmp_path)] == [1, 2]


def test_model_best_is_its_own_file(tiny_data, tmp_path):
    train(tiny_data, tmp_path, "--epochs", "1")
    best, last = tmp_path / "model_best.pth", tmp_path / "checkpoint.pth"
    assert best.stat().st_ino != last.stat().st_ino and best.read_bytes() == last.read_bytes()
    with open(best, "r+b") as f:  # written over in place, as cp or torch.save would
        f.write(b"\x00" * 64)
    assert checkpoint.load(last)["epoch"] == 1


def test_a_max_steps_run_names_only_what_it_wrote_and_args_json_is_resolved(tiny_data, tmp_path, capsys):
    train(tiny_data, tmp_path, "--max-steps", "1")
    out = capsys.readouterr().out
    assert f"checkpoint: {tmp_path / 'checkpoint.pth'}" in out and "metrics:" not in out
    saved = json.loads((tmp_path / "args.json").read_text())
    assert saved["device"] == "cpu" and saved["data_path"] == str(tiny_data)
    assert saved["dataset"]["samples"] == {"train": 12, "val": 6} and len(saved["dataset"]["fingerprint"]) == 64
    assert saved["environment"]["threads"] == torch.get_num_threads() and saved["environment"]["torch"]


def test_the_embedded_recipe_line_names_the_lr_decay_only_within_the_run(capsys):
    from alexnet.train import describe, resolve
    describe(*resolve(get_args_parser().parse_args(["--epochs", "1"]), None))
    assert "after epoch" not in capsys.readouterr().out
    describe(*resolve(get_args_parser().parse_args([]), None))
    assert "lr 0.01 (x 0.1 after epoch 4)" in capsys.readouterr().out


def test_a_non_finite_loss_stops_the_run_with_one_line(tiny_data, tmp_path):
    with pytest.raises(SystemExit, match=r"^error: the loss is (nan|inf) at epoch 1 step [23]: lower --lr"):
        train(tiny_data, tmp_path, "--lr", "1e30", "--epochs", "1")


def test_a_failed_start_removes_the_folders_it_made_above_output_dir(tiny_data, tmp_path):
    (tmp_path / "kept").mkdir()
    out = tmp_path / "kept" / "new" / "runs" / "out"
    with pytest.raises(SystemExit, match=r"has 12 images, fewer than one batch \(-b 64\)"):
        run_main("--data-path", str(tiny_data), "-b", "64", "--output-dir", str(out))
    left = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    assert left == ["kept"], f"a failed start left folders behind: {left}"
