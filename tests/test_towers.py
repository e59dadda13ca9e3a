"""The two-tower split (alexnet.towers) computes the single-device grouped AlexNet: same logits, same
gradients, same weights after SGD steps, on two gloo processes.

Tolerance: both sides run fp32 on the same CPU ops, but a tower's conv3 and fc layers compute half
the output rows from a gathered copy of the maps, and the split changes how the CPU kernels block
those sums (up to 9216 terms), so rounding differs at fp32's epsilon (1.2e-7) times the growth of
such sums. Measured: at most 2.4e-6 of the tensor's largest magnitude (logits and gradients, 3
steps). We allow rtol 1e-4 plus an atol of 1e-5 of the reference's largest magnitude: a few times
that, and far below any real error (a missed exchange, a wrong row or a doubled gradient is O(1)).
"""

import socket
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from alexnet.distributed import Layout
from alexnet.model import AlexNet
from alexnet.towers import TowerAlexNet, split_rows, tower_rows
from tests.devices import needs_interpreter

CLASSES = 3  # odd, so the towers' fc8 shares differ (2 and 1 classes)
BATCH = 2
STEPS = 3
SGD = dict(lr=0.001, momentum=0.9, weight_decay=5e-4)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(worker, *args, nprocs: int = 2):
    """Run worker(rank, port, *args) in `nprocs` fresh processes; re-raises a worker's exception."""
    mp.spawn(worker, args=(free_port(), *args), nprocs=nprocs)


def init_gloo(rank: int, port: int, world_size: int = 2):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size,
                            timeout=timedelta(seconds=60))


def assert_close(actual, expected, what: str):
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-5 * expected.abs().max().item(),
                               msg=lambda m: f"[{what}] {m}")


def batch(seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(BATCH, 3, 227, 227, generator=generator) * 50
    return images, torch.randint(0, CLASSES, (BATCH,), generator=generator)


def paper_net(**options) -> AlexNet:
    torch.manual_seed(0)
    return AlexNet(num_classes=CLASSES, dropout=0.0, **options)  # no dropout: the masks would differ


def sgd_steps(net, optimizer):
    """STEPS SGD steps on batch(): yields each step's logits and gradients (by parameter name)."""
    images, labels = batch()
    for _ in range(STEPS):
        logits = net(images)
        optimizer.zero_grad()
        F.cross_entropy(logits, labels).backward()
        optimizer.step()
        yield logits.detach(), {name: p.grad for name, p in net.named_parameters()}


def _tower_worker(rank: int, port: int, options: dict):
    """Tower `rank` and, beside it, the single-device network it must equal, step for step."""
    torch.set_num_threads(1)  # two processes on a shared CPU
    init_gloo(rank, port)
    full = paper_net(**options)
    layout = Layout(rank, 2, 2, torch.device("cpu"), tower_group=dist.group.WORLD)  # one replica of 2 towers
    tower = layout.wrap(full, seed=0)
    tower_sgd, full_sgd = (torch.optim.SGD(net.parameters(), **SGD) for net in (tower, full))
    for step, ((logits, grads), (want_logits, want_grads)) in enumerate(
            zip(sgd_steps(tower, tower_sgd), sgd_steps(full, full_sgd))):
        assert_close(logits, want_logits, f"tower {rank} step {step} logits")
        for name, want in want_grads.items():
            assert_close(grads[name], split_rows(want, rank), f"tower {rank} step {step} {name}.grad")
    # Checkpoints: the towers' weights and momentum gathered are the single-device model's, and back.
    gathered, want = layout.model_state(tower), full.state_dict()
    assert gathered.keys() == want.keys()
    for name in want:
        assert_close(gathered[name], want[name], f"tower {rank} gathered {name} after {STEPS} steps")
    momentum, want_momentum = layout.optimizer_state(tower_sgd, tower)["state"], full_sgd.state_dict()["state"]
    assert momentum.keys() == want_momentum.keys()
    for i in want_momentum:
        assert_close(momentum[i]["momentum_buffer"], want_momentum[i]["momentum_buffer"], f"tower {rank} momentum {i}")
    tower_sgd.load_state_dict(layout.local_optimizer_state(full_sgd.state_dict(), tower))
    for i, p in enumerate(tower.parameters()):
        assert torch.equal(tower_sgd.state[p]["momentum_buffer"], split_rows(want_momentum[i]["momentum_buffer"], rank))
    with torch.no_grad():
        for p in tower.parameters():
            p.zero_()
    layout.load_weights(tower, full)  # as a resume does, from the single-device model
    for name, value in tower.state_dict().items():
        assert torch.equal(value, split_rows(want[name], rank)), f"[tower {rank} {name}] not reloaded from AlexNet"
    # With one image the gather can hand back a wrapper tensor, which the Triton launchers cannot read.
    assert type(tower._gather(torch.zeros(1, 2, 3, 3))) is torch.Tensor, "a one-image exchange is not a plain tensor"
    dist.destroy_process_group()


@pytest.mark.parametrize("options", [{}, pytest.param({"groups": False, "lrn": False}, marks=pytest.mark.slow)],
                         ids=["paper", "no-groups-no-lrn"])
def test_towers_equal_the_single_device_network(options):
    """Logits and every parameter's gradient at each of 3 SGD steps; the weights and momentum after
    them gathered back into AlexNet's (and its SGD's) state_dict, and cut again into a tower's. The
    ablation variant (exchanges at every layer, no LRN halo) is marked slow: ~35 s more."""
    spawn(_tower_worker, options)


def _triton_tower_worker(rank: int, port: int):
    """Tower `rank` on the Triton kernels against the single-device network on torch's, one image."""
    torch.set_num_threads(1)
    init_gloo(rank, port)
    torch.manual_seed(0)
    full = AlexNet(num_classes=CLASSES, kernels="triton", dropout=0.0)
    reference = AlexNet(num_classes=CLASSES, kernels="torch", dropout=0.0)
    reference.load_state_dict(full.state_dict())
    tower = TowerAlexNet(full, rank, dist.group.WORLD)
    images, labels = (t[:1] for t in batch())
    logits, want = tower(images), reference(images)
    F.cross_entropy(logits, labels).backward()
    F.cross_entropy(want, labels).backward()
    assert_close(logits, want, f"tower {rank} logits on triton")
    for (name, p), q in zip(tower.named_parameters(), reference.parameters()):
        assert_close(p.grad, split_rows(q.grad, rank), f"tower {rank} {name}.grad on triton")
    dist.destroy_process_group()


@pytest.mark.slow
@needs_interpreter  # gloo towers on CPU tensors
def test_towers_run_the_triton_kernels():
    """--kernels triton in each tower (the interpreter on a CPU) gives the torch single-device
    network's logits and gradients for one image (exchanges of one image included). Slow: ~3 min."""
    spawn(_triton_tower_worker)


def test_tower_rows_cover_every_row_once():
    for rows in (1, 3, 10, 96, 4096):
        shares = [tower_rows(rows, t) for t in range(2)]
        assert shares[0].start == 0 and shares[0].stop == shares[1].start and shares[1].stop == rows, (rows, shares)
        assert shares[0].stop - shares[0].start >= shares[1].stop - shares[1].start, (rows, shares)


def test_tower_of_an_unsplittable_layer_is_refused():
    net = paper_net()
    net.conv2 = torch.nn.Conv2d(96, 256, 5, padding=2, groups=4)
    with pytest.raises(ValueError, match="conv2 has groups=4: a tower split needs 1 or 2"):
        TowerAlexNet(net, 0, None)
