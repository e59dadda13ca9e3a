"""The two-tower split's training step against one device's, in img/s.

    pytest bench/test_towers.py --benchmark-only

"1 tower" is AlexNet's whole step (forward, backward, SGD with momentum) in one process on one
device. "2 towers" is the same step split by alexnet.towers over two processes: this one holds tower
0 and a helper process tower 1, both stepping in lockstep, exchanging over NCCL (one GPU each) or
gloo (CPU). On a GPU: batch 128, fp32; the 2-tower case needs two GPUs, and its goal is at least
1.6x one device's img/s. On the CPU: batch 4, and both cases get the same cores (one process with
all of them, or two processes with half each). extra_info: img_per_s, towers, batch, the device.
"""

import socket
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from alexnet.model import AlexNet
from alexnet.towers import TowerAlexNet
from bench.common import measure

GPUS = torch.cuda.device_count()
BATCH = 128 if GPUS else 4
CLASSES = 1000
CORES = torch.get_num_threads()


def device_of(rank: int) -> torch.device:
    return torch.device("cuda", rank) if GPUS else torch.device("cpu")


def training_step(net, device: torch.device):
    """A closure running one SGD step of `net` on a fixed random batch (the same on every tower)."""
    generator = torch.Generator().manual_seed(0)
    images = (torch.randn(BATCH, 3, 227, 227, generator=generator) * 50).to(device)
    labels = torch.randint(0, CLASSES, (BATCH,), generator=generator).to(device)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)

    def step():
        loss = F.cross_entropy(net(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return step


def tower(rank: int, port: int):
    """Join the two-tower group as `rank`; returns tower `rank` of a seeded AlexNet on its device."""
    dist.init_process_group("nccl" if GPUS else "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=2, timeout=timedelta(seconds=120))
    torch.manual_seed(0)
    return TowerAlexNet(AlexNet(num_classes=CLASSES).to(device_of(rank)), rank, dist.group.WORLD).train()


def _tower1(port: int, threads: int):
    """The helper process: tower 1, one step each time tower 0 broadcasts 0, until it broadcasts 1."""
    torch.set_num_threads(threads)
    step = training_step(tower(1, port), device_of(1))
    stop = torch.zeros(1, device=device_of(1))
    while True:
        dist.broadcast(stop, 0)
        if stop.item():
            break
        step()
    dist.destroy_process_group()


def test_one_tower(benchmark):
    torch.manual_seed(0)
    net = AlexNet(num_classes=CLASSES).to(device_of(0)).train()
    benchmark.group = "towers step"
    benchmark.extra_info.update(towers=1, batch=BATCH)
    measure(benchmark, training_step(net, device_of(0)), device_of(0), torch.float32, None)
    if benchmark.stats is not None:
        benchmark.extra_info["img_per_s"] = BATCH / benchmark.stats.stats.median


@pytest.mark.skipif(GPUS == 1, reason="the two-tower split needs two GPUs, one per tower")
def test_two_towers(benchmark):
    threads = max(1, CORES // 2)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    helper = mp.get_context("spawn").Process(target=_tower1, args=(port, threads))
    helper.start()
    torch.set_num_threads(threads)
    try:
        step = training_step(tower(0, port), device_of(0))
        stop = torch.zeros(1, device=device_of(0))

        def lockstep():
            dist.broadcast(stop, 0)
            step()

        benchmark.group = "towers step"
        benchmark.extra_info.update(towers=2, batch=BATCH, threads_per_tower=threads)
        measure(benchmark, lockstep, device_of(0), torch.float32, None)
        if benchmark.stats is not None:
            benchmark.extra_info["img_per_s"] = BATCH / benchmark.stats.stats.median
        stop.fill_(1)
        dist.broadcast(stop, 0)
    finally:
        torch.set_num_threads(CORES)
        if dist.is_initialized():
            dist.destroy_process_group()
        helper.join(timeout=120)
        if helper.is_alive():
            helper.kill()
    assert helper.exitcode == 0, f"the tower 1 process exited with {helper.exitcode}"
