"""Data parallelism (DDP over gloo processes) and the multi-process training command: gradients equal
one process on the combined batch, replicas read disjoint shards, a tower run's checkpoint is the
single-device model's, and a rank that dies or hangs stops the others with a clear error in bounded time."""

import json
import os
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from alexnet import checkpoint
from alexnet.distributed import Layout, make_groups
from alexnet.model import AlexNet
from alexnet.towers import split_rows
from alexnet.train import get_args_parser, main
from data.plans import train_plan, val_plan
from data.embedded import write_dataset
from tests.test_towers import assert_close, batch, free_port, init_gloo, paper_net, spawn

ROOT = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    """3 classes, 4 train and 2 val images each."""
    root = tmp_path_factory.mktemp("tiny")
    write_dataset(root, {"train": 4, "val": 2}, num_classes=3)
    return root


def _replica_worker(rank: int, port: int):
    """Replica `rank` of DDP on its half of the batch, beside one process on the whole batch."""
    torch.set_num_threads(1)
    init_gloo(rank, port)
    layout = make_groups(1, CPU, timedelta(seconds=60))
    replica, single = layout.wrap(paper_net(), seed=0), paper_net()
    images, labels = batch()
    half = slice(rank * len(labels) // 2, (rank + 1) * len(labels) // 2)
    for net, rows in ((replica, half), (single, slice(None))):
        torch.nn.functional.cross_entropy(net(images[rows]), labels[rows]).backward()
    for (name, p), want in zip(replica.module.named_parameters(), single.parameters()):
        assert_close(p.grad, want.grad, f"replica {rank} {name}.grad")
    dist.destroy_process_group()


def test_data_parallel_gradients_equal_one_process_on_the_combined_batch():
    """2 replicas with 1 image each vs one process with both (tolerance as in test_towers)."""
    spawn(_replica_worker)


def _replicated_towers_worker(rank: int, port: int):
    """Rank `rank` of 2 replicas x 2 towers, each replica on its half of the batch, beside one process
    on the whole batch."""
    torch.set_num_threads(1)
    init_gloo(rank, port, world_size=4)
    layout = make_groups(2, CPU, timedelta(seconds=60))
    net, single = layout.wrap(paper_net(), seed=0), paper_net()
    images, labels = batch()
    half = slice(layout.replica, layout.replica + 1)
    for model, rows in ((net, half), (single, slice(None))):
        torch.nn.functional.cross_entropy(model(images[rows]), labels[rows]).backward()
    for (name, p), want in zip(net.module.named_parameters(), single.parameters()):
        assert_close(p.grad, split_rows(want.grad, layout.tower), f"rank {rank} {name}.grad")
    dist.destroy_process_group()


@pytest.mark.slow
def test_replicated_towers_gradients_equal_one_process_on_the_combined_batch():
    """2 replicas x 2 towers (4 processes, the groups torchrun's layout builds) vs one process. Slow: ~60 s."""
    spawn(_replicated_towers_worker, nprocs=4)


def test_replicas_read_disjoint_shards_and_both_towers_of_a_replica_the_same(tiny_data):
    from data.folder import load_splits
    _, train, val = load_splits(tiny_data)
    layouts = [Layout(rank, 4, 2, CPU) for rank in range(4)]  # 2 replicas x 2 towers
    plans = [train_plan(train, 2, seed=3, epoch=0, **layout.shard()) for layout in layouts]
    assert plans[0].paths == plans[1].paths and plans[2].paths == plans[3].paths, "towers of a replica differ"
    assert not set(plans[0].paths) & set(plans[2].paths), "the replicas' train shards overlap"
    assert len(plans[0]) == len(plans[2]) == len(train) // 4 * 2
    vals = [val_plan(val, **layouts[rank].shard()).paths for rank in (0, 2)]
    assert sorted(vals[0] + vals[1]) == sorted(p for p, _ in val), "the val shards do not cover val exactly once"


def torchrun(nproc: int, data: Path, out: Path, *flags: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc), "--master-port",
           str(free_port()), "-m", "alexnet.train", "--data-path", str(data), "--output-dir", str(out),
           "-b", "2", "--seed", "3", "--dist-timeout", "60", *flags]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{result.stdout}\n{result.stderr}"
    return result


@pytest.mark.slow
def test_replicated_tower_run_checkpoint_is_the_single_device_models(tiny_data, tmp_path):
    """torchrun trains an epoch on 2 replicas x 2 towers; its checkpoint loads into AlexNet, and one
    process evaluating it gets the validation numbers the replicas summed over their shards (top-1
    exactly: the same counts). Slow: ~70 s."""
    result = torchrun(4, tiny_data, tmp_path, "--towers", "2", "--epochs", "1")
    assert result.stdout.count("epoch 1/1:") == 1, "rank 1 printed too, or nobody did:\n" + result.stdout
    state = checkpoint.load(tmp_path / "checkpoint.pth")
    checkpoint.load_model_state(AlexNet(num_classes=3), state, tmp_path / "checkpoint.pth")
    assert len(state["rank_rng"]) == 4 and state["optimizer"]["state"][0]["momentum_buffer"].shape == (96, 3, 11, 11)
    towers_val = json.loads((tmp_path / "metrics.jsonl").read_text())
    single = main(get_args_parser().parse_args(["--data-path", str(tiny_data), "--test-only", "-b", "2",
                                                "--resume", str(tmp_path / "checkpoint.pth")]))
    assert single["top1"] == towers_val["val_top1"] and single["top5"] == towers_val["val_top5"]
    assert single["loss"] == pytest.approx(towers_val["val_loss"], rel=1e-4)


@pytest.mark.slow
def test_tower_resume_is_bit_identical(tiny_data, tmp_path):
    """Two towers stopped mid-epoch and resumed end with the weights and momentum of the run that
    never stopped, bit for bit (CPU). Slow: three torchrun runs, ~2 min."""
    torchrun(2, tiny_data, tmp_path / "straight", "--towers", "2", "--epochs", "2")
    torchrun(2, tiny_data, tmp_path / "resumed", "--towers", "2", "--epochs", "2", "--max-steps", "4")
    torchrun(2, tiny_data, tmp_path / "resumed", "--towers", "2", "--epochs", "2",
             "--resume", str(tmp_path / "resumed" / "checkpoint.pth"))
    straight, resumed = (checkpoint.load(tmp_path / run / "checkpoint.pth") for run in ("straight", "resumed"))
    assert straight["step"] == resumed["step"] == 12
    for key, value in straight["model"].items():
        assert torch.equal(value, resumed["model"][key]), f"[{key}] differs after the resume"
    for i, state in straight["optimizer"]["state"].items():
        want = resumed["optimizer"]["state"][i]["momentum_buffer"]
        assert torch.equal(state["momentum_buffer"], want), f"[momentum {i}] differs after the resume"


def launch_ranks(data: Path, out: Path, *flags: str) -> list[subprocess.Popen]:
    """Two tower ranks as torchrun would start them, but with no agent to tear them down: each
    rank is on its own when the other fails."""
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "WORLD_SIZE": "2",
           "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "alexnet.train", "--towers", "2", "--data-path", str(data), "--output-dir", str(out),
           "-b", "2", "--epochs", "100", "--checkpoint-every", "1", *flags]
    return [subprocess.Popen(cmd, cwd=ROOT, env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in range(2)]


def wait_for(path: Path, procs, limit_s: float = 180):
    start = time.monotonic()
    while not path.exists():
        assert all(p.poll() is None for p in procs), f"a rank exited before {path} appeared: " + procs[0].stderr.read()
        assert time.monotonic() - start < limit_s, f"{path} did not appear in {limit_s} s"
        time.sleep(0.2)


@pytest.mark.parametrize("failure", [signal.SIGKILL, pytest.param(signal.SIGSTOP, marks=pytest.mark.slow)],
                         ids=["dies", "hangs"])
def test_a_rank_that_dies_or_hangs_stops_the_other_with_a_clear_error(tiny_data, tmp_path, failure):
    """Rank 1 is killed (or stopped) mid-run: rank 0 exits non-zero within --dist-timeout (5 s)
    plus a margin, names the failure, and the last checkpoint it wrote still loads. ~30 s each; the
    hang is marked slow."""
    procs = launch_ranks(tiny_data, tmp_path, "--dist-timeout", "5")
    try:
        wait_for(tmp_path / "checkpoint.pth", procs)
        procs[1].send_signal(failure)
        failed_at = time.monotonic()
        _, stderr = procs[0].communicate(timeout=60)
        elapsed = time.monotonic() - failed_at
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    assert procs[0].returncode == 1, stderr
    assert "error: rank 0: lost contact with the other ranks" in stderr, stderr
    assert elapsed < 5 + 25, f"rank 0 took {elapsed:.0f} s to give up"
    assert checkpoint.load(tmp_path / "checkpoint.pth")["step"] >= 1


def test_when_rank_0_is_refused_the_folder_the_other_rank_stops_at_once_naming_why(tiny_data, tmp_path,
                                                                                     hold_folder):
    """Another process holds the run's folder: rank 0 is refused it, and rank 1 stops with rank 0's
    reason before its first exchange, not with a lost peer later (--dist-timeout is long here)."""
    out = tmp_path / "run"
    holder = hold_folder(out)
    procs = launch_ranks(tiny_data, out, "--dist-timeout", "300")
    try:
        errors = [p.communicate(timeout=120)[1] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    refusal = f"--output-dir {out} is in use by another run (pid {holder.pid})"
    assert procs[0].returncode == 1 and f"error: {refusal}" in errors[0], errors[0]
    assert procs[1].returncode == 1, errors[1]
    assert f"error: rank 1: rank 0 could not start, so neither does this rank: {refusal}" in errors[1], errors[1]


def test_towers_without_torchrun_is_refused(tiny_data, monkeypatch, tmp_path):
    for name in ("RANK", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(SystemExit, match="--towers 2 runs one process per tower: launch it with torchrun"):
        main(get_args_parser().parse_args(["--data-path", str(tiny_data), "--towers", "2", "--output-dir", str(tmp_path)]))


def test_towers_on_an_odd_number_of_processes_is_refused(tiny_data, monkeypatch, tmp_path):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "3")
    with pytest.raises(SystemExit, match="--towers 2 needs a multiple of 2 processes; torchrun started 3"):
        main(get_args_parser().parse_args(["--data-path", str(tiny_data), "--towers", "2", "--output-dir", str(tmp_path)]))


def test_towers_flag_takes_only_one_or_two(capsys):
    with pytest.raises(SystemExit):
        get_args_parser().parse_args(["--towers", "4"])
    assert "argument --towers: invalid choice: 4" in capsys.readouterr().err
