"""--amp: under bf16 autocast every backend's conv, LRN and pool run in bf16 (the Triton Functions
included, which autocast alone would leave in fp32); fp16 on the CPU is refused, naming the flag."""

import pytest
import torch

import kernels
from alexnet import checkpoint
from alexnet.model import AlexNet
from alexnet.train import get_args_parser, main
from kernels.conv_relu import ConvReLU
from kernels.local_response_norm import LRNFunction
from kernels.maxpool import MaxPool2dFunction
from data.embedded import write_dataset
from tests.devices import needs_interpreter


@needs_interpreter  # the CPU's autocast on CPU tensors
def test_triton_ops_see_bf16_under_autocast(monkeypatch):
    seen = []
    for function in (ConvReLU, LRNFunction, MaxPool2dFunction):
        def spy(x, *args, _apply=function.apply, _name=function.__name__):
            seen.append((_name, x.dtype) + ((args[0].dtype,) if _name == "ConvReLU" else ()))
            return _apply(x, *args)
        monkeypatch.setattr(function, "apply", spy)

    torch.manual_seed(0)
    model = AlexNet(num_classes=10, kernels="triton").eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(torch.randn(1, 3, 227, 227))
    assert logits.dtype == torch.bfloat16
    names = [s[0] for s in seen]
    assert names.count("ConvReLU") == 5 and names.count("LRNFunction") == 2 and names.count("MaxPool2dFunction") == 3
    assert all(s[1] == torch.bfloat16 for s in seen), f"[triton ops] inputs not all bf16: {seen}"
    # the conv reads the fp32 master weights itself (cast in its layout copy): autocast casts no weight for it
    assert all(s[2] == torch.float32 for s in seen if s[0] == "ConvReLU"), f"[conv weights] cast before the op: {seen}"


@pytest.mark.parametrize("backend", ["torch", "compile"])
def test_other_backends_run_in_bf16_under_autocast(backend):
    ops = kernels.backend(backend)
    x, w, b = torch.randn(1, 4, 9, 9), torch.randn(6, 2, 3, 3), torch.randn(6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = ops.conv2d_relu(x, w, b, 1, 1, 2)
        z = ops.lrn(y)
        p = ops.max_pool2d(z)
    assert (y.dtype, z.dtype, p.dtype) == (torch.bfloat16,) * 3, f"[{backend}] {y.dtype} {z.dtype} {p.dtype}"


def test_fp16_on_the_cpu_is_refused_naming_the_flag(tmp_path):
    with pytest.raises(SystemExit, match="--amp fp16 needs a CUDA device"):
        main(get_args_parser().parse_args(["--amp", "fp16", "--device", "cpu", "--output-dir", str(tmp_path / "out")]))
    assert not (tmp_path / "out").exists(), "refused before anything is made"


def test_bf16_training_step_saves_a_loadable_checkpoint(tmp_path):
    write_dataset(tmp_path / "data", {"train": 2, "val": 1}, num_classes=2)
    args = get_args_parser().parse_args(["--data-path", str(tmp_path / "data"), "--output-dir", str(tmp_path / "out"),
                                         "-b", "2", "--amp", "bf16", "--max-steps", "1", "--device", "cpu"])
    main(args)
    state = checkpoint.load(tmp_path / "out" / "checkpoint.pth")  # weights_only=True
    assert state["step"] == 1 and state["args"]["amp"] == "bf16" and state["scaler"] == {}  # no scaler for bf16
    assert all(v.dtype == torch.float32 for v in state["model"].values()), "autocast must keep fp32 weights"


def test_a_bf16_run_resumed_mid_epoch_equals_the_run_that_never_stopped(tiny_data, tmp_path):
    """The 16-bit weight copies the forward reads (written by the optimizer's update) are rebuilt from the
    checkpoint's fp32 weights on resume: the resumed bf16 run is the uninterrupted one bit for bit."""
    from tests.test_train import assert_same_state

    def run(out, *flags):
        main(get_args_parser().parse_args(["--data-path", str(tiny_data), "--output-dir", str(out), "-b", "4",
                                           "--amp", "bf16", "--epochs", "1", "--data-loader", "pil", "-j", "1",
                                           *flags]))

    run(tmp_path / "straight")
    run(tmp_path / "cut", "--max-steps", "2")
    run(tmp_path / "cut", "--resume", str(tmp_path / "cut" / "checkpoint.pth"))
    assert_same_state(tmp_path / "straight" / "checkpoint.pth", tmp_path / "cut" / "checkpoint.pth")
