"""The commands' shared helpers: --device cuda:N becomes the current device, output paths are checked
before the work (figures' -o too), top-k hits."""

import json
import os

import pytest
import torch

from alexnet import cli, figures
from alexnet.train import get_args_parser, resolve


def test_cuda_n_becomes_the_current_device(monkeypatch):
    """Triton launches on the current device: a single process given cuda:1 must make it current, as
    torchrun's path does."""
    current = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", current.append)
    config, _, _ = resolve(get_args_parser().parse_args(["--device", "cuda:1"]), None)
    assert config.device == "cuda:1" and current == [torch.device("cuda:1")]
    assert cli.resolve_device("cuda:1") == torch.device("cuda:1") and current[-1] == torch.device("cuda:1")
    with pytest.raises(SystemExit, match="--device cuda:2: torch sees 2 CUDA device"):
        cli.resolve_device("cuda:2")


def test_output_files_are_checked(tmp_path):
    (tmp_path / "file").write_text("")
    assert cli.check_output_file(tmp_path / "new" / "deeper" / "x.json", "--json") == tmp_path / "new/deeper/x.json"
    with pytest.raises(SystemExit, match=f"--json {tmp_path} is a folder"):
        cli.check_output_file(tmp_path, "--json")
    with pytest.raises(SystemExit, match=f"-o {tmp_path / 'file' / 'a' / 'b'}: {tmp_path / 'file'} is a file"):
        cli.check_output_file(tmp_path / "file" / "a" / "b", "-o")
    if os.geteuid() != 0:  # root writes anywhere
        (tmp_path / "locked").mkdir(mode=0o500)
        with pytest.raises(SystemExit, match="is not writable"):
            cli.check_output_file(tmp_path / "locked" / "x", "-o")


def test_topk_hits_match_a_count_by_hand():
    torch.manual_seed(0)
    logits, target = torch.randn(50, 7), torch.randint(0, 7, (50,))
    hit1, hit5 = cli.topk_hits(logits, target)
    rank = (logits > logits.gather(1, target[:, None])).sum(1)  # how many scores beat the label's
    assert torch.equal(hit1, rank == 0) and torch.equal(hit5, rank < 5)
    assert cli.topk_hits(logits[:, :3], target.clamp(max=2), (5,))[0].all()  # fewer classes than k


def test_figures_checks_its_output_first_and_reads_a_cut_metrics_file(tmp_path, capsys):
    record = {"epoch": 1, "step": 3, "lr": 0.01, "train_loss": 2.3, "val_loss": 2.2, "val_top1": 30.0, "val_top5": 90.0}
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text(json.dumps(record) + "\n" + json.dumps({**record, "epoch": 2})[:25])  # the last line cut
    (tmp_path / "file").write_text("")
    with pytest.raises(SystemExit, match=f"^error: -o {tmp_path / 'file' / 'c.png'}: {tmp_path / 'file'} is a file"):
        figures.main(["curves", str(metrics), "-o", str(tmp_path / "file" / "c.png")])
    assert figures.main(["curves", str(metrics), "-o", str(tmp_path / "c.png")]).is_file()
    assert "warning: dropped the last line of" in capsys.readouterr().err
