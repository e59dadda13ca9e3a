"""The paper's two-tower split: one process per tower, each holding half of every layer.

    torchrun --nproc-per-node 2 -m alexnet.train --towers 2       # one tower per GPU (or CPU process)

`TowerAlexNet(full, tower, group)` cuts tower `tower`'s share out of a single-device `AlexNet`:
rows [t * ceil(n/2), (t + 1) * ceil(n/2)) of every weight and bias along its output dimension, so
conv1 holds 48 of 96 filters, conv2 128 of 256, conv3 and conv4 192 of 384, conv5 128 of 256, fc6
and fc7 2048 of 4096 neurons, and fc8 the logits of half the classes (tower 0 takes the odd one).
Where AlexNet's layer is grouped (conv2, conv4, conv5: groups=2), a tower's half reads only its own
maps. conv3 and fc6, fc7, fc8 (groups=1) read both towers' maps: they are all-gathered along the
channel dimension with torch's functional all-gather, whose backward sums the two towers'
gradients (a reduce-scatter), as the chain rule asks. The fc8 logits are then gathered so
that both towers hold all of them; both compute the same loss from them, so that last gather's
backward hands each tower only its own columns' gradient (summing would count the loss twice).

Two details keep the split exactly the single-device network, not an approximation of it:
LRN's window (5 channels) crosses the tower boundary in AlexNet, so before normalising each tower
borrows its neighbour's 2 edge channels; dropout drops a tower's own neurons before they are
exchanged, so both towers see one mask, as the single-device model's fc layers do.

Checkpoints stay in AlexNet's single-device format: `split_rows` cuts a full tensor (a weight, a
bias, a momentum buffer) to a tower's rows, `gather_rows` puts the towers' rows back together.
"""

import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as funcol
import torch.nn.functional as F
from torch import nn

from alexnet.model import INPUT_SIZE, LRN, AlexNet

TOWERS = 2
# The all-gather that carries gradients. torch.distributed.nn.functional.all_gather is deprecated for
# it, and its gloo backward addresses a subgroup's ranks as global ranks (wrong with data parallelism).
# Older torch names it all_gather_tensor_autograd.
_all_gather = getattr(funcol, "all_gather_single_autograd", None) or funcol.all_gather_tensor_autograd


def tower_rows(rows: int, tower: int) -> slice:
    """Tower `tower`'s share of `rows` output rows: ceil(rows / 2) each, the last tower the rest."""
    share = -(-rows // TOWERS)
    return slice(min(rows, tower * share), min(rows, (tower + 1) * share))


def split_rows(full: torch.Tensor, tower: int) -> torch.Tensor:
    """Tower `tower`'s rows of a full-size weight, bias or optimizer buffer."""
    return full[tower_rows(len(full), tower)].clone()


def gather_rows(part: torch.Tensor, rows: int, group) -> torch.Tensor:
    """The full tensor of `rows` rows from every tower's `part` (a collective: every tower calls it)."""
    share = -(-rows // TOWERS)
    padded = part.new_zeros((share, *part.shape[1:]))
    padded[:len(part)] = part
    parts = [torch.empty_like(padded) for _ in range(TOWERS)]
    dist.all_gather(parts, padded, group=group)
    return torch.cat(parts)[:rows]


class _GatherLogits(torch.autograd.Function):
    """All-gather each tower's logit columns into the whole (N, classes) on every tower; backward
    returns each tower the gradient of its own columns (every tower computes the same loss)."""

    @staticmethod
    def forward(ctx, logits, classes, tower, group):
        ctx.own = tower_rows(classes, tower)
        return gather_rows(logits.t().contiguous(), classes, group).t().contiguous()

    @staticmethod
    def backward(ctx, grad):
        return grad[:, ctx.own].contiguous(), None, None, None


class TowerAlexNet(nn.Module):
    """Tower `tower` (0 or 1) of `full`'s layers, exchanging maps with the other tower over `group`
    (a process group of the two tower processes, in tower order). Parameters have AlexNet's names,
    each holding this tower's rows; the kernels backend and the ablation options are `full`'s."""

    def __init__(self, full: AlexNet, tower: int, group):
        super().__init__()
        if not 0 <= tower < TOWERS:
            raise ValueError(f"tower must be 0..{TOWERS - 1}, got {tower}")
        self.tower, self.group = tower, group
        self.kernels, self.ops, self.options, self.pool = full.kernels, full.ops, full.options, full.pool
        self.dropout = nn.Dropout(full.dropout.p)
        self.exchanges = set()  # layers that read both towers' maps
        self.rows = {}  # layer -> its full output size
        for name, layer in full.named_children():
            if not isinstance(layer, (nn.Conv2d, nn.Linear)):
                continue
            groups = getattr(layer, "groups", 1)
            if groups not in (1, TOWERS):
                raise ValueError(f"{name} has groups={groups}: a tower split needs 1 or {TOWERS}")
            if groups == 1 and name != "conv1":  # conv1 reads the images, which every tower has
                self.exchanges.add(name)
            rows = self.rows[name] = layer.weight.shape[0]
            own = tower_rows(rows, tower)
            factory = dict(device=layer.weight.device, dtype=layer.weight.dtype)  # skip_init: filled just below
            if isinstance(layer, nn.Conv2d):  # the weight's dim 1 is what one group reads
                part = nn.utils.skip_init(nn.Conv2d, layer.weight.shape[1], own.stop - own.start, layer.kernel_size,
                                          layer.stride, layer.padding, **factory)
            else:
                part = nn.utils.skip_init(nn.Linear, layer.in_features, own.stop - own.start, **factory)
            with torch.no_grad():
                part.weight.copy_(split_rows(layer.weight, tower))
                part.bias.copy_(split_rows(layer.bias, tower))
            self.add_module(name, part)

    def _gather(self, x):
        """Every tower's `x`, side by side along dim 1 in tower order. A plain tensor: the gather can
        return a wrapper that waits on first use (with one image), which Triton's launchers cannot read."""
        return funcol.wait_tensor(_all_gather(x.contiguous(), 1, self.group))

    def _input(self, name, x):
        """`x`, or all towers' `x` where layer `name` reads every tower's maps."""
        return self._gather(x) if name in self.exchanges else x

    def _conv(self, name, x):
        layer = getattr(self, name)
        return self.ops.conv2d_relu(self._input(name, x), layer.weight, layer.bias, layer.stride, layer.padding)

    def _linear(self, name, x):
        layer = getattr(self, name)
        return F.linear(self._input(name, x), layer.weight, layer.bias)

    def _norm(self, x):
        """LRN over this tower's channels, its window reaching into the neighbour's edge channels."""
        if not self.options["lrn"]:
            return x
        h = LRN["size"] // 2
        edges = self._gather(torch.cat([x[:, :h], x[:, -h:]], 1)).chunk(TOWERS, 1)
        left = edges[self.tower - 1][:, h:] if self.tower > 0 else x[:, :0]
        right = edges[self.tower + 1][:, :h] if self.tower < TOWERS - 1 else x[:, :0]
        y = self.ops.lrn(torch.cat([left, x, right], 1), **LRN)
        return y[:, left.shape[1]:left.shape[1] + x.shape[1]]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """All the logits (N, classes) of a batch of images that every tower is given."""
        if x.dim() != 4 or tuple(x.shape[1:]) != (3, INPUT_SIZE, INPUT_SIZE):
            raise ValueError(f"AlexNet expects images of shape (N, 3, {INPUT_SIZE}, {INPUT_SIZE}), "
                             f"got {tuple(x.shape)}")
        pool = self.ops.max_pool2d
        x = pool(self._norm(self._conv("conv1", x)), **self.pool)
        x = pool(self._norm(self._conv("conv2", x)), **self.pool)
        x = self._conv("conv5", self._conv("conv4", self._conv("conv3", x)))
        x = pool(x, **self.pool)
        x = F.relu(self._linear("fc6", self.dropout(torch.flatten(x, 1))))
        x = F.relu(self._linear("fc7", self.dropout(x)))
        return _GatherLogits.apply(self._linear("fc8", x), self.rows["fc8"], self.tower, self.group)

    def full_state_dict(self) -> dict:
        """AlexNet's state_dict, every tower's rows gathered (a collective: both towers call it)."""
        return {key: gather_rows(value, self.rows[key.split(".")[0]], self.group)
                for key, value in self.state_dict().items()}
