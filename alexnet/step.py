"""The training step: forward, backward and the optimizer's update, with nothing read back to the host.

The loss, the top-1 hits and the first step whose loss was not finite are added up on the device, in
`TrainStep.totals`, and read (one read) only when a line is printed, a checkpoint is saved or the epoch
ends. So the host runs ahead of the device and queues the next steps while the current one runs.

On a GPU the step is captured once as a CUDA graph (`CapturedStep`) after a few eager warm-up steps, and
each later step is one graph launch on static input buffers: no Python, no per-kernel launch cost. What
changes between steps lives in device memory that the graph reads: the batch (copied into the static
buffers), the learning rate (a 0-dim tensor in the optimizer that the schedulers fill in place) and the
totals.
"""

import contextlib
import functools

import torch
import torch.nn.functional as F

from alexnet import optim

# TrainStep.totals (kernels.step_totals' order). FIRST_BAD: the first step whose loss was not finite (0: none
# yet), BAD_LOSS its loss.
LOSS_SUM, HITS, LAST_LOSS, STEP, FIRST_BAD, BAD_LOSS = range(6)
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}  # --amp
WARMUP_STEPS = 3  # eager steps before the capture: tiles chosen, kernels compiled, the allocator's pools warm


class TrainStep:
    """One training step of `net` on a batch. `totals` (float64, on the device) holds the epoch's loss
    sum (loss x batch), top-1 hits, the last step's loss, the epoch's step number, and the first step of
    the epoch whose loss was not finite (0 if none) with that loss."""

    def __init__(self, net, optimizer, scaler, autocast, device: torch.device, input_form=None):
        self.net, self.optimizer, self.scaler, self.autocast = net, optimizer, scaler, autocast
        # input_form(images, out=None): the first layer's input made from a batch's images in one pass
        # (AlexNet.input_form in the step's dtype), which `net` reads with input_form=True; None: the images
        self.input_form = input_form
        self.totals = torch.zeros(6, dtype=torch.float64, device=device)

    def start_epoch(self, step: int, loss_sum: float, hits: int) -> None:
        """Set the totals to an epoch's at step `step` (0 at its start, or where a resumed run stopped)."""
        self.totals.copy_(torch.tensor([loss_sum, hits, 0.0, step, 0.0, 0.0], dtype=torch.float64))

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.run(self.inputs(images), labels)

    def inputs(self, images: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """What `net` reads for a batch of `images` (written into `out` if given): their input form, or the
        images themselves."""
        if self.input_form is not None:
            return self.input_form(images, out=out)
        return images if out is None else out.copy_(images)

    def run(self, inputs: torch.Tensor, labels: torch.Tensor) -> None:
        """The step on what inputs() made of a batch."""
        with self.autocast():
            logits = self.net(inputs, input_form=True) if self.input_form is not None else self.net(inputs)
            loss = F.cross_entropy(logits, labels)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)  # skips the update if fp16 gradients overflowed
        self.scaler.update()
        add_step(self.totals, loss.detach(), logits.detach(), labels)

    def read(self) -> tuple[list[float], float]:
        """(the totals, the first parameter group's learning rate) on the host, in one device-to-host read."""
        lr = self.optimizer.param_groups[0]["lr"]
        if not isinstance(lr, torch.Tensor):
            return self.totals.tolist(), lr
        *totals, lr = torch.cat((self.totals, lr.to(self.totals).reshape(1))).tolist()
        return totals, lr


def add_step(totals: torch.Tensor, loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> None:
    """Add a step's loss and top-1 hits (torch.argmax's) to `totals`, in place: on a GPU in one Triton launch
    (kernels.step_totals), elsewhere with torch's ops, to the same bits."""
    if optim.runs_kernel(totals.device):
        from kernels import step_totals  # here: Triton imported first on a CPU would keep its interpreter off
        step_totals.add_step(totals, loss, logits, labels)
        return
    with torch.no_grad():
        loss = loss.double()
        step = totals[STEP] + 1
        first = (totals[FIRST_BAD] == 0) & ~loss.isfinite()
        hits = (logits.argmax(1) == labels).sum()
        totals.copy_(torch.stack([totals[LOSS_SUM] + loss * len(labels), totals[HITS] + hits, loss, step,
                                  torch.where(first, step, totals[FIRST_BAD]),
                                  torch.where(first, loss, totals[BAD_LOSS])]))


def mixed_precision(amp: str, device: torch.device):
    """(autocast context factory, GradScaler) for --amp; the scaler is a no-op unless fp16."""
    if amp == "none":
        autocast = contextlib.nullcontext
    else:
        def autocast():  # no cast cache: each weight is cast once a step anyway, and a CUDA graph forbids it
            return torch.autocast(device.type, dtype=AMP_DTYPES[amp], cache_enabled=False)
    return autocast, torch.amp.GradScaler(device.type, enabled=amp == "fp16")


def training_step(model, net, runner, device: torch.device, amp: str, lr: float, momentum: float,
                  weight_decay: float) -> TrainStep:
    """The trainer's step: `runner` (`net` itself, or compiled) on batches, the one-pass SGD (alexnet.optim)
    updating `net`'s parameters (`model`'s, or under torchrun this rank's tower's) and, for a 16-bit run,
    writing the 16-bit copies of the weights that `model`'s fully connected layers read (the convs of
    --kernels triton read the fp32 weights themselves). When `runner` is `model`, each batch's images become
    conv1's input (AlexNet.input_form) in the step's dtype, in one pass."""
    copy_dtype = AMP_DTYPES.get(amp)
    optimizer = optim.SGD(net.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay,
                          copy_dtype=copy_dtype)
    if copy_dtype is not None:
        model.read_copies(optimizer.copy_of)
    autocast, scaler = mixed_precision(amp, device)
    # the first layer's input made in the pass that casts the images (not through torch.compile, towers or DDP)
    input_form = functools.partial(model.input_form, dtype=copy_dtype or torch.float32) if runner is model else None
    return TrainStep(runner, optimizer, scaler, autocast, device, input_form)


def capture_blockers(step: TrainStep, device: torch.device, distributed: bool) -> str | None:
    """Why `step` cannot run as a CUDA graph on `device` (None: it can)."""
    if device.type != "cuda":
        return "CUDA graphs need a CUDA device"
    if distributed:
        return "the data-parallel and tower exchanges (torchrun) run outside a graph"
    if not all(isinstance(group["lr"], torch.Tensor) and group["lr"].device == device
               for group in step.optimizer.param_groups):
        return "the optimizer's learning rate is a host number, which a graph would freeze"
    if step.scaler.is_enabled() and not getattr(step.optimizer, "_step_supports_amp_scaling", False):
        return "the fp16 gradient scaler reads the overflow flag back to the host before every update"
    return None


class CapturedStep:
    """`step` run eagerly for `warmup` steps, then captured as one CUDA graph and replayed: each call
    writes the batch into static input buffers (the images as step.inputs makes them: for AlexNet conv1's
    input form, so that copy is their only pass) and launches the graph. A batch of another shape (the
    graph's are fixed) runs eagerly. `graph_factory` and `capture` are CUDA's (torch.cuda.CUDAGraph,
    torch.cuda.graph, thread-local); tests pass stand-ins to drive the same logic on a CPU."""

    def __init__(self, step: TrainStep, warmup: int = WARMUP_STEPS, graph_factory=None, capture=None,
                 side_stream=None):
        self.step, self.warmup, self.calls = step, warmup, 0
        self.graph_factory = graph_factory or torch.cuda.CUDAGraph
        # thread_local: the loader's own threads (DALI's) keep working on the GPU while this thread captures
        self.capture = capture or functools.partial(torch.cuda.graph, capture_error_mode="thread_local")
        self.side_stream = side_stream  # the warm-up's stream: torch asks for one other than the default
        self.graph, self.images_shape, self.inputs, self.labels = None, None, None, None

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        if self.graph is not None and images.shape == self.images_shape and labels.shape == self.labels.shape:
            self.step.inputs(images, out=self.inputs)  # the images' one pass before conv1 (TrainStep.inputs)
            self.labels.copy_(labels)
            self.graph.replay()
            return
        if self.graph is not None or self.calls < self.warmup:
            self.calls += 1
            with self._on_side_stream():
                self.step(images, labels)
            return
        # images and labels are the loader's, reused by it: the graph reads buffers it owns
        inputs = self.step.inputs(images)
        self.images_shape, self.inputs = images.shape, inputs.clone() if inputs is images else inputs
        self.labels = labels.clone()
        self.graph = self.graph_factory()
        with self.capture(self.graph):
            self.step.run(self.inputs, self.labels)
        self.graph.replay()  # capturing recorded this step without running it

    @contextlib.contextmanager
    def _on_side_stream(self):
        if self.side_stream is None:
            yield
            return
        self.side_stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(self.side_stream):
            yield
        torch.cuda.current_stream().wait_stream(self.side_stream)
