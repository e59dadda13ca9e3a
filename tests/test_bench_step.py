"""bench.step: launches by kind and bytes counted exactly on a hand-checked conv+ReLU step (torch and triton),
host reads detected, the Triton kernels stubbed (the interpreter never entered), the command's rows and errors.
The step runs on CPU tensors (fake ones for the trainer's step), which the Triton ops take in the interpreter only:
the tests that give them to the Triton ops say so (@needs_interpreter)."""

import json
import subprocess
import sys

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import kernels
from bench import step as bench_step
from tests.devices import needs_interpreter

FP32 = 4


class ConvStep:
    """relu(conv2d(x, w) + b) with a given output gradient, then plain SGD (one add_ per parameter)."""

    def __init__(self, backend: str, x_shape, w_shape, read_loss: bool = False):
        self.ops = kernels.backend(backend)
        # channels_last weights: the Triton launcher reads them as they are (no copy to count)
        self.w = torch.randn(w_shape).contiguous(memory_format=torch.channels_last).requires_grad_()
        self.b = torch.randn(w_shape[0], requires_grad=True)
        self.optimizer = torch.optim.SGD([self.w, self.b], lr=0.1, foreach=False)
        y_shape = (x_shape[0], w_shape[0], x_shape[2] - w_shape[2] + 3, x_shape[3] - w_shape[3] + 3)  # padding 1
        self.dy = torch.randn(y_shape).contiguous(memory_format=torch.channels_last)
        self.read_loss = read_loss

    def __call__(self, x, labels):
        y = self.ops.conv2d_relu(x, self.w, self.b, 1, 1, 1)
        self.optimizer.zero_grad(set_to_none=True)
        y.backward(self.dy)
        self.optimizer.step()
        if self.read_loss:
            return y.sum().item()


def conv_step_count(backend, read_loss=False):
    x_shape, w_shape = (2, 8, 6, 6), (16, 8, 3, 3)
    step = ConvStep(backend, x_shape, w_shape, read_loss)
    x = torch.randn(x_shape).contiguous(memory_format=torch.channels_last)
    return bench_step.count_step(step, x, None, bench_step.KernelEstimates(None), repeats=1), x_shape, w_shape


def sgd_bytes(w_shape):
    params = torch.Size(w_shape).numel() + w_shape[0]
    return 3 * params * FP32  # add_(p, grad): read p and grad, write p


def test_a_torch_conv_step_is_counted_by_kind_and_byte():
    count, (n, c, h, w), w_shape = conv_step_count("torch")
    k = w_shape[0]
    x, weight, y = n * c * h * w, torch.Size(w_shape).numel(), n * k * h * w
    assert dict(count.launches) == {"gemm": 3, "elementwise": 2, "optimizer": 2}, count.ops
    # convolution: x, w, b in, y out; relu: y in and out; threshold_backward: dy, y in, g out;
    # convolution_backward (wgrad and bias only): g, x, w in, dw, db out; SGD
    expected = (x + weight + k + y) + 2 * y + 3 * y + (y + x + weight + weight + k)
    assert count.bytes_outside_kernels == expected * FP32 + sgd_bytes(w_shape)
    assert count.host_reads == 0 and count.triton == []


@needs_interpreter  # the Triton ops on CPU tensors
def test_a_triton_conv_step_counts_its_launches_and_only_the_rest_as_bytes_outside():
    count, (n, c, h, w), w_shape = conv_step_count("triton")
    k = w_shape[0]
    assert [name for name, _, _ in count.triton] == ["fwd_kernel", "relu_mask_kernel", "wgrad_kernel"]
    # around the kernels: the bias gradient's partial sums added (a reduction); the weight gradient, one split
    # here, copied to the weight's channels_last layout by autograd (a copy); SGD
    assert dict(count.launches) == {"triton": 3, "reduction": 1, "copy": 1, "optimizer": 2}, count.ops
    db_partials = next(args["db_ptr"] for name, _, args in count.triton if name == "relu_mask_kernel")
    dw_partials = next(args["dw_ptr"] for name, _, args in count.triton if name == "wgrad_kernel")
    assert dw_partials.shape[0] == 1
    weight = torch.Size(w_shape).numel()
    assert count.bytes_outside_kernels == (db_partials.numel() + k + 2 * weight) * FP32 + sgd_bytes(w_shape)
    x_tensor = next(args["x_ptr"] for name, _, args in count.triton if name == "fwd_kernel")
    assert tuple(x_tensor.shape) == (n, c, h, w)


@needs_interpreter  # the Triton ops on CPU tensors
def test_the_triton_kernels_never_run_and_one_started_around_launch_is_refused(monkeypatch):
    from triton.runtime import interpreter

    entered = []
    monkeypatch.setattr(interpreter.GridExecutor, "__call__", lambda *a, **k: entered.append(a))
    count, _, _ = conv_step_count("triton")
    assert len(count.triton) == 3 and entered == []

    from kernels.local_response_norm import lrn_fwd_kernel

    class Rogue(ConvStep):
        def __call__(self, x, labels):
            lrn_fwd_kernel[(1,)](x)
            super().__call__(x, labels)

    x = torch.randn(2, 8, 6, 6)
    with pytest.raises(RuntimeError, match="lrn_fwd_kernel was started without kernels.tensors.launch"):
        bench_step.count_step(Rogue("triton", x.shape, (16, 8, 3, 3)), x, None, bench_step.KernelEstimates(None))
    assert entered == []


def test_item_tolist_and_cpu_are_host_reads():
    count, _, _ = conv_step_count("torch", read_loss=True)
    assert count.host_reads == 1

    class Reads(ConvStep):
        def __call__(self, x, labels):
            super().__call__(x, labels)
            self.b.tolist(), self.b.cpu()

    x = torch.randn(2, 8, 6, 6)
    count = bench_step.count_step(Reads("torch", x.shape, (16, 8, 3, 3)), x, None, bench_step.KernelEstimates(None))
    assert count.host_reads == 2


def test_foreach_launches_follow_cudas_multi_tensor_apply():
    with FakeTensorMode():
        small = [torch.empty(1000) for _ in range(3)]
        big = [torch.empty(320 * 65536 + 1)]
        many = [torch.empty(10) for _ in range(111)]
    op = torch.ops.aten._foreach_mul_.Scalar
    assert bench_step.multi_tensor_launches(op, (small, 0.9)) == 1  # one launch packs them
    assert bench_step.multi_tensor_launches(op, (big, 0.9)) == 2  # 320 blocks a launch
    assert bench_step.multi_tensor_launches(op, (many, 0.9)) == 2  # 110 tensors a launch at depth 1


def test_the_trainers_step_reads_nothing_back_and_dropout_is_one_kernel():
    estimates = bench_step.KernelEstimates(None)
    with FakeTensorMode():
        step, images, labels, regions = bench_step.trainer_step("torch", "none", 2)
        count = bench_step.count_step(step, images, labels, estimates, regions, repeats=1)
    names = [name for _, name, _, _ in count.ops]
    assert count.host_reads == 0
    assert names.count("native_dropout") == 2 and "bernoulli_" not in names
    # the optimizer: one Triton pass over every parameter, as on CUDA (alexnet.optim), and nothing else; the
    # step's totals: one more (kernels.step_totals)
    assert [name for name, _, _ in count.triton] == ["sgd_kernel", "step_totals_kernel"]
    assert count.launches["triton"] == 2 and count.launches["optimizer"] == 0
    # fc6-8: addmm forward, mm dgrad and wgrad; conv1-5 forward; backward: conv1 wgrad and bias (no image
    # gradient), conv2-5 dgrad, wgrad and bias
    assert count.launches["gemm"] == 3 + 3 * 2 + 5 + 2 + 4 * 3


def test_the_command_counts_a_batch_128_triton_step_and_writes_its_row(tmp_path):
    out = tmp_path / "rows.json"
    result = subprocess.run([sys.executable, "-m", "bench.step", "--kernels", "triton", "--amp", "bf16",
                             "--compiled", "--json", str(out)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert "[bench.step] triton --amp bf16:" in result.stderr
    assert "host reads" in result.stdout and "est. H100 ms" in result.stdout
    (row,) = json.loads(out.read_text())
    assert {"backend", "amp", "launches", "host_reads", "bytes_outside_kernels", "host_us", "est_device_ms"} <= set(row)
    assert row["backend"] == "triton" and row["amp"] == "bf16" and row["batch"] == 128
    assert set(row["launches"]) == {"total", *bench_step.KINDS}
    assert row["launches"]["total"] == sum(row["launches"][kind] for kind in bench_step.KINDS)
    assert row["launches"]["triton"] >= 29  # conv fwd, mask, wgrad x5, dgrad x4, LRN and pool fwd+bwd
    assert row["host_reads"] == 0
    assert row["bytes_outside_kernels"] > 244e6  # at least the optimizer's one pass over the fp32 weights
    per_op = row["host_us_per_op"]
    assert set(per_op) == {"conv1", "conv (groups 2)", "conv", "no-op Function", "lrn", "max-pool"}
    # conv: forward; mask, dgrad, wgrad. conv1 from its input form: the weight's form and the forward; no dgrad
    launches = {op: (us["fwd_launches"], us["bwd_launches"]) for op, us in per_op.items()}
    assert launches == {"conv1": (2, 2), "conv (groups 2)": (1, 3), "conv": (1, 3), "no-op Function": (0, 0),
                        "lrn": (1, 1), "max-pool": (1, 1)}


@pytest.mark.parametrize("flags, message", [
    (["--amp", "fp16"], "invalid choice: 'fp16'"),
    (["--kernels", "cudnn"], "invalid choice: 'cudnn'"),
    (["-b", "0"], "must be a positive int"),
    (["--json", "{tmp}/missing/rows.json"], "no folder"),
    (["--json", "{tmp}"], "a folder"),
    (["--aot-json", "{tmp}/aot.json"], "is not perf.aot --report --json's output"),
])
def test_bad_flags_are_refused_naming_the_flag(flags, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        bench_step.main([flag.format(tmp=tmp_path) for flag in flags])
    assert stop.value.code == 2
    assert message in capsys.readouterr().err
