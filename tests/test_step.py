"""The training step (alexnet/step.py): nothing read back to the host, its totals, and the CUDA-graph
logic (warm-up, static buffers, replay, eager fallback) driven on the CPU with a stand-in graph.

Only a GPU can check the capture itself: that the recorded kernels replay bit for bit what eager steps
compute (bench.report's step stage compares them), that dropout's RNG advances per replay, that the
learning-rate tensor is read by the replayed optimizer, and the time per replay."""

import contextlib
import copy

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from alexnet.model import AlexNet
from alexnet.step import FIRST_BAD, HITS, LAST_LOSS, LOSS_SUM, STEP, CapturedStep, TrainStep, capture_blockers


class HostReads(TorchDispatchMode):
    """Counts the ops that read a tensor's value back to the host."""

    def __init__(self):
        super().__init__()
        self.reads = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.reads += func is torch.ops.aten._local_scalar_dense.default
        return func(*args, **(kwargs or {}))


class TinyNet(torch.nn.Module):
    """Small enough for many steps; dropout so the RNG is part of the step."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)
        self.fc = torch.nn.Linear(4 * 6 * 6, 5)

    def forward(self, x, input_form=False):
        return self.fc(torch.nn.functional.dropout(self.conv(x).relu().flatten(1), 0.5, self.training))

    @staticmethod
    def input_form(images, out=None):
        """AlexNet.input_form's stand-in: the images in another layout, written by one copy."""
        return images.contiguous(memory_format=torch.channels_last) if out is None else out.copy_(images)


def make_step(net, lr=0.1, input_form=False):
    optimizer = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    return TrainStep(net, optimizer, scaler, contextlib.nullcontext, torch.device("cpu"),
                     net.input_form if input_form else None)


def batches(n, size=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, 3, 8, 8, generator=g), torch.randint(0, 5, (size,), generator=g)) for _ in range(n)]


def test_a_step_reads_nothing_back_and_adds_to_the_totals_it_started_from():
    torch.manual_seed(0)
    step = make_step(TinyNet())
    step.start_epoch(2, loss_sum=1.5, hits=3)  # a resumed epoch: 2 steps, their loss sum and hits
    with HostReads() as mode:
        for images, labels in batches(5):
            step(images, labels)
    assert mode.reads == 0, f"5 training steps read {mode.reads} values back to the host"
    totals, lr = step.read()
    assert lr == 0.1 and totals[STEP] == 2 + 5 and totals[FIRST_BAD] == 0
    assert totals[LOSS_SUM] > 1.5 and 3 <= totals[HITS] <= 3 + 20 and totals[HITS] == int(totals[HITS])


def test_the_totals_add_up_exactly_what_the_old_host_loop_added():
    torch.manual_seed(0)
    net = TinyNet()
    step = make_step(copy.deepcopy(net))
    old = make_step(net)  # the same step, summed on the host as the trainer did before: loss.item() * b
    step.start_epoch(0, 0.0, 0)
    loss_sum, hits = 0.0, 0
    torch.manual_seed(1)
    for images, labels in batches(6):
        step(images, labels)
    torch.manual_seed(1)
    for images, labels in batches(6):
        logits = old.net(images)
        loss = torch.nn.functional.cross_entropy(logits, labels)
        old.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        old.optimizer.step()
        loss_sum += loss.item() * len(labels)
        hits += int((logits.argmax(1) == labels).sum())
    totals, _ = step.read()
    assert totals[LOSS_SUM] == loss_sum and totals[HITS] == hits, (totals, loss_sum, hits)
    assert totals[LAST_LOSS] == loss.item()


def test_the_first_non_finite_loss_is_kept_with_its_step():
    step = make_step(TinyNet(), lr=1e30)  # diverges within a few steps
    step.start_epoch(0, 0.0, 0)
    for images, labels in batches(8):
        step(images, labels)
    totals, _ = step.read()
    assert totals[FIRST_BAD] >= 2, totals
    step.start_epoch(0, 0.0, 0)
    assert step.read()[0][FIRST_BAD] == 0, "a new epoch did not clear the flag"


class FakeGraph:
    """CUDA-graph semantics on the CPU: while capturing, the step is recorded (with the tensors it was
    given), not run; each replay runs it on those same tensors, whatever they hold now."""

    def __init__(self):
        self.recorded, self.replays = None, 0

    def replay(self):
        self.replays += 1
        self.recorded()


class Recording:
    """A step whose run() records itself into the graph being captured instead of running, like CUDA's capture."""

    def __init__(self, step):
        self.step, self.capturing, self.eager_calls = step, None, 0

    def __call__(self, images, labels):
        self.eager_calls += 1
        self.step(images, labels)

    def inputs(self, images, out=None):
        return self.step.inputs(images, out)

    def run(self, inputs, labels):
        assert self.capturing is not None, "only the capture runs the step on prepared inputs"
        self.capturing.recorded = lambda: self.step.run(inputs, labels)

    @contextlib.contextmanager
    def capture(self, graph):
        self.capturing = graph
        yield
        self.capturing = None


@pytest.mark.parametrize("input_form", [False, True], ids=["images", "input-form"])
def test_the_graph_replays_on_its_static_buffers_and_equals_eager_steps(input_form):
    """With an input form (AlexNet's on --kernels triton), the static buffer is that form, written by the step's
    own input pass: the images take no other copy."""
    torch.manual_seed(0)
    net = TinyNet()
    eager, graphed = make_step(copy.deepcopy(net), input_form=input_form), make_step(net, input_form=input_form)
    recording = Recording(graphed)
    captured = CapturedStep(recording, warmup=2, graph_factory=FakeGraph, capture=recording.capture)
    data = batches(7) + batches(1, size=3, seed=9)  # the last batch is ragged: it runs eagerly
    buffers = set()
    for step in (eager, captured):
        torch.manual_seed(5)  # the same dropout masks
        for images, labels in data:
            step(images, labels)
            if step is captured and captured.graph is not None:
                buffers.add((captured.inputs.data_ptr(), captured.labels.data_ptr()))
    assert recording.eager_calls == 2 + 1, "warm-up steps and the ragged batch run eagerly"
    assert captured.graph.replays == 7 - 2, "the capture's own step and every later one replay the graph"
    assert len(buffers) == 1, "the static input buffers moved"
    assert captured.inputs.data_ptr() not in {images.data_ptr() for images, _ in data}, \
        "the graph reads the loader's own tensor, which the loader reuses"
    assert captured.inputs.is_contiguous(memory_format=torch.channels_last) == input_form
    for (name, a), b in zip(eager.net.state_dict().items(), graphed.net.state_dict().values()):
        assert torch.equal(a, b), f"[{name}] eager and replayed steps differ"
    assert eager.read() == graphed.read()


def test_a_learning_rate_change_reaches_the_graph_through_the_lr_tensor():
    net = TinyNet()
    lr = torch.tensor(0.1)
    optimizer = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 1, 0.1)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=0.5, patience=0)
    optimizer.step()
    scheduler.step()
    plateau.step(1.0)
    plateau.step(0.0)
    assert optimizer.param_groups[0]["lr"] is lr, "a scheduler replaced the tensor a graph would have captured"
    assert lr.item() == pytest.approx(0.1 * 0.1 * 0.5)


def test_capture_is_refused_with_a_reason_where_it_would_be_wrong():
    step = make_step(TinyNet())
    assert "CUDA device" in capture_blockers(step, torch.device("cpu"), distributed=False)
    cuda = torch.device("cuda")
    assert "host number" in capture_blockers(step, cuda, distributed=False)  # a float lr would be frozen
    assert "torchrun" in capture_blockers(step, cuda, distributed=True)


def test_the_trainer_reads_the_device_once_per_printed_line(tiny_data, tmp_path, monkeypatch, capsys):
    from alexnet.train import get_args_parser, main
    reads = []
    monkeypatch.setattr(TrainStep, "read", lambda self, read=TrainStep.read: reads.append(1) or read(self))
    main(get_args_parser().parse_args(["--data-path", str(tiny_data), "--output-dir", str(tmp_path), "-b", "4",
                                       "--epochs", "1", "--print-freq", "2", "--data-loader", "pil", "-j", "1"]))
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("epoch 1/1  step")]
    assert len(lines) == 2 and len(reads) == len(lines) + 1, (lines, reads)  # + the epoch's end


def test_an_alexnet_step_reads_nothing_back():
    torch.manual_seed(0)
    step = make_step(AlexNet(num_classes=3))
    images, labels = torch.randn(1, 3, 227, 227), torch.tensor([2])
    with HostReads() as mode:
        step(images, labels)
    assert mode.reads == 0


@pytest.mark.slow  # Inductor compiles the network's forward and backward for the CPU: ~1 minute here
def test_compile_trains_the_whole_network_and_saves_the_plain_model(tiny_data, tmp_path, capsys):
    """--compile (torch.compile of the whole network) through the trainer: it trains, and its checkpoint
    is the uncompiled model's (no torch.compile prefix in the keys), so evaluate and resume read it."""
    from alexnet import checkpoint
    from alexnet.train import get_args_parser, main
    main(get_args_parser().parse_args(["--data-path", str(tiny_data), "--output-dir", str(tmp_path), "-b", "4",
                                       "--epochs", "1", "--compile", "--data-loader", "pil", "-j", "1"]))
    assert "epoch 1/1: train loss" in capsys.readouterr().out
    state = checkpoint.load(tmp_path / "checkpoint.pth")
    assert set(state["model"]) == set(AlexNet(num_classes=3).state_dict()), sorted(state["model"])[:3]
    assert state["args"]["compile"] is True


@pytest.mark.parametrize("loader,amp,handed", [("dali", "bf16", torch.float16), ("pil", "bf16", torch.bfloat16),
                                               ("dali", "none", torch.float32)])
def test_the_trainer_hands_the_step_images_as_decoded_and_the_step_casts_them_in_the_input_form(
        tiny_data, tmp_path, monkeypatch, loader, amp, handed):
    """The DALI loader's 16-bit images are float16 (DALI has no bfloat16): for a bf16 step it hands them uncast,
    and the step's input form (AlexNet.input_form: conv1's input) casts them in the pass it makes anyway. PIL
    casts on the host, before the copy to the device, so it still hands --amp's dtype."""
    from alexnet.train import get_args_parser, main
    seen = []
    inputs = TrainStep.inputs

    def recording(step, images, out=None):
        form = inputs(step, images, out)
        seen.append((images.dtype, form.dtype))
        return form
    monkeypatch.setattr(TrainStep, "inputs", recording)
    main(get_args_parser().parse_args(["--data-path", str(tiny_data), "--output-dir", str(tmp_path), "-b", "4",
                                       "-j", "1", "--max-steps", "1", "--data-loader", loader, "--amp", amp]))
    assert seen == [(handed, {"bf16": torch.bfloat16, "none": torch.float32}[amp])], seen
