"""AlexNet exactly as Krizhevsky, Sutskever & Hinton (2012) describe it.

    input 3x227x227 (the paper says 224; 227 is what gives conv1 a 55x55 output with no padding)
    conv1  96 11x11 /4            -> 55x55, ReLU, LRN, max-pool 3/2 -> 27x27
    conv2 256  5x5 pad 2, 2 towers -> 27x27, ReLU, LRN, max-pool 3/2 -> 13x13
    conv3 384  3x3 pad 1 (the towers talk)  -> 13x13, ReLU
    conv4 384  3x3 pad 1, 2 towers          -> 13x13, ReLU
    conv5 256  3x3 pad 1, 2 towers          -> 13x13, ReLU, max-pool 3/2 -> 6x6
    fc6 4096, fc7 4096 (ReLU, dropout 0.5 before each), fc8 num_classes

The two towers are the grouped convolutions (groups=2): each half of a layer's kernels sees
only the half of the previous layer's maps on its own GPU. Convolutions, LRN and pooling go
through `kernels.backend(kernels)`, so the same weights run on cuDNN, Triton or torch.compile.
60,965,224 parameters with 1000 classes.

The paper's ablations are switches, all on by default: `lrn=False` drops both LRN layers,
`overlap=False` pools 2x2 with stride 2 (the maps stay 27, 13 and 6 a side), `groups=False` makes
conv2, conv4 and conv5 one tower (groups=1, same widths, so more parameters: not the paper's
half-size one-GPU net), `dropout=0` turns dropout off. `model.options` records them, and
checkpoints store it so a variant is rebuilt as it was trained.
"""

import torch
import torch.nn.functional as F
from torch import nn

from alexnet import master_weights
from alexnet.layers import CONVS, INPUT, LINEARS, LRN, POOL, POOL_NO_OVERLAP
from kernels import backend

INPUT_SIZE = INPUT[1]
BIAS_ONE = ("conv2", "conv4", "conv5", "fc6", "fc7")  # the paper's biases of 1 (the rest are 0)
INITS = ("paper", "caffe")  # caffe: Caffe's reference AlexNet (bvlc_alexnet), see reset_parameters
PAPER_OPTIONS = dict(dropout=0.5, lrn=True, overlap=True, groups=True)  # the defaults; checkpoints without options


class AlexNet(nn.Module):
    def __init__(self, num_classes: int = 1000, kernels: str = "torch", dropout: float = 0.5,
                 lrn: bool = True, overlap: bool = True, groups: bool = True, init: str = "paper"):
        super().__init__()
        if init not in INITS:
            raise ValueError(f"unknown init {init!r}; choose one of {', '.join(INITS)}")
        self.kernels = kernels
        self.ops = backend(kernels)
        self.options = dict(dropout=dropout, lrn=lrn, overlap=overlap, groups=groups)  # what checkpoints record
        self.pool = POOL if overlap else POOL_NO_OVERLAP
        towers = 2 if groups else 1
        for name, ((channels, _, _), (filters, _, size, _), stride, padding, groups) in CONVS.items():
            setattr(self, name, nn.Conv2d(channels, filters, size, stride, padding, groups=min(groups, towers)))
        self.fc6 = nn.Linear(*LINEARS["fc6"])
        self.fc7 = nn.Linear(*LINEARS["fc7"])
        self.fc8 = nn.Linear(LINEARS["fc8"][0], num_classes)
        self.dropout = nn.Dropout(dropout)
        self.copy_of = None  # see read_copies
        self.reset_parameters(init)

    def reset_parameters(self, init: str = "paper"):
        """The paper's initialisation: weights N(0, 0.01); biases 1 in conv2, 4, 5, fc6, 7, else 0.

        init="caffe" is Caffe's reference AlexNet: those biases 0.1 instead of 1, and fc6, fc7 weights
        N(0, 0.005). With the paper's biases of 1 the hidden layers' outputs are almost the same for
        every image, which SGD at lr 0.01 tolerates with 1000 classes but not with 10 (docs/paper.md, "The
        embedded run"); the embedded dataset's default run uses this one."""
        for name, layer in self.named_children():
            if isinstance(layer, (nn.Conv2d, nn.Linear)):
                std = 0.005 if init == "caffe" and name in ("fc6", "fc7") else 0.01
                nn.init.normal_(layer.weight, 0.0, std)
                bias = (1.0 if init == "paper" else 0.1) if name in BIAS_ONE else 0.0
                nn.init.constant_(layer.bias, bias)

    def read_copies(self, copy_of) -> None:
        """Under autocast, have fc6-fc8 read the 16-bit copies `copy_of(parameter)` of their fp32 weights
        (kept by the optimizer) instead of casting them, and give fp32 gradients (alexnet.master_weights).
        None: autocast's casts."""
        self.copy_of = copy_of

    def _linear(self, layer: nn.Linear, x, relu: bool = False):
        if self.copy_of is None or not torch.is_autocast_enabled(x.device.type):
            return F.relu(layer(x)) if relu else layer(x)
        with torch.autocast(x.device.type, enabled=False):
            return master_weights.linear(layer, x, self.copy_of, relu)

    def _conv(self, layer: nn.Conv2d, x, input_form: bool = False):
        return self.ops.conv2d_relu(x, layer.weight, layer.bias, layer.stride, layer.padding, layer.groups,
                                    input_form=input_form)

    def input_form(self, images: torch.Tensor, dtype: torch.dtype | None = None,
                   out: torch.Tensor | None = None) -> torch.Tensor:
        """`images` as conv1 reads them, in `dtype` (theirs by default), made in one pass, into `out` if given:
        on --kernels triton conv1's space-to-depth input (kernels.conv2d_relu_input), elsewhere the images cast.
        forward(..., input_form=True) takes it. So the cast of a loader's images, or their copy into a CUDA
        graph's input buffer, is the only pass they take before conv1."""
        _check_images(images)
        conv1 = self.conv1
        return self.ops.conv2d_relu_input(images, conv1.weight.shape, conv1.stride, conv1.padding, conv1.groups,
                                          dtype=dtype, out=out)

    def forward(self, x: torch.Tensor, activations: dict | None = None, input_form: bool = False) -> torch.Tensor:
        """Logits for a batch of (N, 3, 227, 227) images, or with `input_form` for what input_form(images)
        made of them (no gradient reaches the images then). Pass a dict as `activations` to have every named
        stage's output put in it (conv1..conv5 after ReLU, pool1/2/5, fc6/7, fc8)."""
        if not input_form:
            _check_images(x)
        keep = activations.__setitem__ if activations is not None else lambda name, t: None

        def stage(name, t):
            keep(name, t)
            return t

        ops = self.ops
        norm = (lambda t: ops.lrn(t, **LRN)) if self.options["lrn"] else (lambda t: t)
        x = stage("conv1", self._conv(self.conv1, x, input_form))
        x = stage("pool1", ops.max_pool2d(norm(x), **self.pool))
        x = stage("conv2", self._conv(self.conv2, x))
        x = stage("pool2", ops.max_pool2d(norm(x), **self.pool))
        x = stage("conv3", self._conv(self.conv3, x))
        x = stage("conv4", self._conv(self.conv4, x))
        x = stage("conv5", self._conv(self.conv5, x))
        x = stage("pool5", ops.max_pool2d(x, **self.pool))
        x = stage("fc6", self._linear(self.fc6, self.dropout(torch.flatten(x, 1)), relu=True))
        x = stage("fc7", self._linear(self.fc7, self.dropout(x), relu=True))
        return stage("fc8", self._linear(self.fc8, x))


def _check_images(x: torch.Tensor) -> None:
    if x.dim() != 4 or tuple(x.shape[1:]) != (3, INPUT_SIZE, INPUT_SIZE):
        raise ValueError(f"AlexNet expects images of shape (N, 3, {INPUT_SIZE}, {INPUT_SIZE}), got {tuple(x.shape)}")
