"""Multi-process training under torchrun: the paper's two-tower split and data parallelism (DDP).

    torchrun --nproc-per-node 2 -m alexnet.train --towers 2     # the paper's split, one tower per GPU
    torchrun --nproc-per-node 4 -m alexnet.train                # 4 data-parallel replicas
    torchrun --nproc-per-node 8 -m alexnet.train --towers 2     # 4 replicas of the two-tower network
    torchrun --nnodes 2 --node-rank N --master-addr HOST --nproc-per-node 8 -m alexnet.train --towers 2

Rank r is tower r % towers of replica r // towers, so a replica's towers are neighbouring ranks (on
one node when every node runs an even number of processes). Each replica's towers form a process
group for their exchanges (alexnet.towers); each tower index across the replicas forms one for
DistributedDataParallel's gradient all-reduce. Replica k reads shard k of every epoch (data.plans'
`rank`/`world_size`), both its towers the same one; validation sums its counts over the replicas.
One GPU per process (LOCAL_RANK) with NCCL, or CPU processes with gloo.

Failure: every process group is made with `--dist-timeout` seconds, so a collective that another
rank does not join in time raises instead of waiting for PyTorch's default of 10-30 minutes, and
one whose peer died raises as soon as its connection drops. `run` turns either into a one-line
error naming the rank. When rank 0 is refused the run's folder (in use, another run's), the other
ranks stop at once with its reason (`Layout.on_main`). Only rank 0 writes checkpoints, atomically,
so the last good one survives. Checkpoints are in the single-device AlexNet's format whatever the
layout.
"""

import builtins
import contextlib
import functools
import os
import traceback
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from alexnet.model import AlexNet
from alexnet.towers import TowerAlexNet, gather_rows, split_rows

TORCH_DISTRIBUTED = Path(dist.__file__).parent


@dataclass
class Layout:
    """Where this process sits: its rank, the towers per replica, its device and process groups."""
    rank: int
    world_size: int
    towers: int
    device: torch.device
    tower_group: dist.ProcessGroup | None = None  # this replica's towers (None with one tower)
    replica_group: dist.ProcessGroup | None = None  # this tower index in every replica (None: one process)

    @property
    def tower(self) -> int:
        return self.rank % self.towers

    @property
    def replica(self) -> int:
        return self.rank // self.towers

    @property
    def replicas(self) -> int:
        return self.world_size // self.towers

    @property
    def main(self) -> bool:
        """Rank 0 prints, and writes checkpoints and metrics."""
        return self.rank == 0

    @contextlib.contextmanager
    def on_main(self, context: contextlib.AbstractContextManager):
        """Enter `context` (the run's folder) on rank 0 alone, for the block. Every rank learns whether
        rank 0 could (a collective), so when rank 0 is refused the others stop at once, naming why,
        rather than failing at their next exchange with a lost peer."""
        with contextlib.ExitStack() as stack:
            refusal = None
            if self.main:
                try:
                    stack.enter_context(context)
                except Exception as e:
                    refusal = e
            if self.world_size > 1:
                shared = [None if refusal is None else str(refusal)]
                dist.broadcast_object_list(shared, src=0)
                if not self.main and shared[0]:
                    raise SystemExit(f"error: rank {self.rank}: rank 0 could not start, so neither does this "
                                     f"rank: {shared[0]}")
            if refusal is not None:
                raise refusal
            yield

    def shard(self) -> dict:
        """data.plans' train_plan / val_plan keyword arguments for this replica's shard."""
        return dict(rank=self.replica, world_size=self.replicas)

    def wrap(self, model: AlexNet, seed: int) -> nn.Module:
        """This rank's share of `model` (its tower, if split), in DDP when there are several replicas;
        `model` itself for one process. With several, reseeds torch's generator per rank so that each
        draws its own dropout masks."""
        net = TowerAlexNet(model, self.tower, self.tower_group) if self.towers > 1 else model
        if self.replicas > 1:
            net = DistributedDataParallel(net, device_ids=[self.device] if self.device.type == "cuda" else None,
                                          process_group=self.replica_group)
        if self.world_size > 1:
            torch.manual_seed(seed * 1_000_003 + self.rank)
        return net

    @staticmethod
    def _local(net: nn.Module) -> nn.Module:
        return net.module if isinstance(net, DistributedDataParallel) else net

    def load_weights(self, net: nn.Module, model: AlexNet):
        """Copy `model`'s weights (e.g. just loaded from a checkpoint) into `net`, cut to this tower."""
        local = self._local(net)
        if local is not model:
            local.load_state_dict({k: split_rows(v, self.tower) for k, v in model.state_dict().items()})

    def model_state(self, net: nn.Module) -> dict:
        """AlexNet's single-device state_dict (a collective with the other tower)."""
        local = self._local(net)
        return local.full_state_dict() if self.towers > 1 else local.state_dict()

    def _param_rows(self, net: nn.Module) -> list[int]:
        """Full output size of each parameter, in the optimizer's order."""
        local = self._local(net)
        return [local.rows[name.split(".")[0]] for name, _ in local.named_parameters()]

    def _map_buffers(self, state: dict, net: nn.Module, fn) -> dict:
        """The optimizer `state` with fn(tensor, full rows) applied to every per-parameter buffer."""
        if self.towers == 1:
            return state
        rows = self._param_rows(net)
        return {**state, "state": {i: {k: fn(v, rows[int(i)]) if torch.is_tensor(v) and v.dim() else v
                                       for k, v in s.items()} for i, s in state["state"].items()}}

    def optimizer_state(self, optimizer: torch.optim.Optimizer, net: nn.Module) -> dict:
        """The optimizer's state_dict as the single-device model's (momentum buffers gathered)."""
        return self._map_buffers(optimizer.state_dict(), net, lambda v, rows: gather_rows(v, rows, self.tower_group))

    def local_optimizer_state(self, state: dict, net: nn.Module) -> dict:
        """A single-device optimizer state_dict cut to this tower's rows."""
        return self._map_buffers(state, net, lambda v, rows: split_rows(v, self.tower).to(self.device))

    def sum_over_replicas(self, totals: torch.Tensor) -> torch.Tensor:
        """`totals` summed over the replicas (a collective)."""
        if self.replica_group is None:
            return totals
        totals = totals.to(self.device)
        dist.all_reduce(totals, group=self.replica_group)
        return totals.cpu()

    def gather_objects(self, obj) -> list:
        """`obj` from every rank, in rank order (a collective)."""
        if not dist.is_initialized():
            return [obj]
        objects = [None] * self.world_size
        dist.all_gather_object(objects, obj)
        return objects

    def rng_to_restore(self, state: dict) -> dict | None:
        """This rank's RNG state in checkpoint `state`; None when another number of processes wrote it."""
        per_rank = state.get("rank_rng", [state["rng"]])
        return per_rank[self.rank] if len(per_rank) == self.world_size else None


def setup(towers: int, device: torch.device, timeout_s: float) -> Layout:
    """Join the torchrun job this process was started in (a single process's Layout when torchrun did
    not start it). A process takes GPU LOCAL_RANK when `device` is CUDA; ranks other than 0 print nothing."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        if towers > 1:
            raise SystemExit(f"error: --towers {towers} runs one process per tower: launch it with "
                             f"torchrun --nproc-per-node {towers} -m alexnet.train --towers {towers} ...")
        return Layout(0, 1, 1, device)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    if world % towers:
        raise SystemExit(f"error: --towers {towers} needs a multiple of {towers} processes; torchrun started {world}")
    if device.type == "cuda":
        if device.index is not None:
            raise SystemExit(f"error: --device {device}: under torchrun each process takes GPU LOCAL_RANK; "
                             f"pass --device cuda")
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    timeout = timedelta(seconds=timeout_s)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timeout,
                            device_id=device if device.type == "cuda" else None)
    layout = make_groups(towers, device, timeout)
    if rank != 0:  # as torchvision's references do: one process speaks for the job
        builtins.print = lambda *args, **kwargs: None
        tqdm.__init__ = functools.partialmethod(tqdm.__init__, disable=True)  # tqdm reads TQDM_DISABLE at import
    print(f"torchrun: {world} processes, {layout.replicas} data-parallel replica(s) x {towers} tower(s), "
          f"{dist.get_backend()}, --dist-timeout {timeout_s:g} s")
    return layout


def make_groups(towers: int, device: torch.device, timeout: timedelta) -> Layout:
    """This rank's Layout, with the tower and replica process groups made (every rank calls it,
    after init_process_group)."""
    rank, world = dist.get_rank(), dist.get_world_size()
    tower_group = None
    if towers > 1:
        tower_group, _ = dist.new_subgroups_by_enumeration(
            [list(range(r, r + towers)) for r in range(0, world, towers)], timeout=timeout)
    replica_group, _ = dist.new_subgroups_by_enumeration(
        [list(range(t, world, towers)) for t in range(towers)], timeout=timeout)
    return Layout(rank, world, towers, device, tower_group, replica_group)


def _in_collective(e: BaseException) -> bool:
    """Whether `e` came from a collective. gloo reports a lost peer as a bare RuntimeError, raised in
    torch.distributed's Python code, or from C++ (DDP's gradient all-reduce) naming gloo's transport."""
    return (isinstance(e, dist.DistError) or "gloo/transport" in str(e)
            or any(Path(f.filename).is_relative_to(TORCH_DISTRIBUTED) for f in traceback.extract_tb(e.__traceback__)))


def run(main, args):
    """main(args), then leave the process group, however main ended (a process that exits with its group
    alive can abort in gloo's threads at interpreter exit). In a multi-process run, a collective that failed
    or timed out (another rank died or hung) becomes a one-line error naming this rank, and exit status 1."""
    try:
        return main(args)
    except RuntimeError as e:
        if not (dist.is_initialized() and _in_collective(e)):
            raise
        first = str(e).strip().splitlines()[0]
        raise SystemExit(f"error: rank {dist.get_rank()}: lost contact with the other ranks (one died, or did "
                         f"not answer within --dist-timeout {args.dist_timeout:g} s): {first}") from e
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
