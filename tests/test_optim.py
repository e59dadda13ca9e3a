"""alexnet.optim.SGD against torch.optim.SGD, and its Triton pass (kernels/sgd.py).

On the CPU the optimizer runs torch's own per-tensor ops: bit-exact with torch.optim.SGD, over many steps, with
schedulers, GradScaler and checkpoints. The Triton pass runs here in the interpreter, where tl.fma is a numpy
multiply and add (two roundings; one on a GPU): there it must equal `op_by_op`, the formula with every operation
rounded, bit for bit. On a GPU it must equal torch.optim.SGD's foreach path: the CUDA tests (which say why they skip
without one), and the sm_90 build's instructions here (its fma's are exactly torch's, nothing else is fused).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import alexnet.optim
import kernels.sgd
from alexnet.optim import SGD
from kernels.sgd import sgd_step
from tests.devices import needs_interpreter

ROOT = Path(__file__).resolve().parents[1]
SHAPES = [(7,), (3, 5), (4, 3, 3, 3), (1,), (2 * kernels.sgd.BLOCK + 37,)]  # odd sizes; the last over 3 blocks
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="compares with torch's CUDA SGD: needs a GPU")


def make_params(seed: int, device="cpu") -> list[torch.nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    params = [torch.nn.Parameter(torch.randn(shape, generator=g).to(device)) for shape in SHAPES]
    params[2].data = params[2].data.contiguous(memory_format=torch.channels_last)  # a conv weight's layout
    return params


def clone(params) -> list[torch.nn.Parameter]:
    return [torch.nn.Parameter(p.detach().clone()) for p in params]


def set_grads(param_lists, step: int) -> None:
    """The same random gradient on the same parameter of every list, in the parameter's layout (as autograd's)."""
    g = torch.Generator().manual_seed(1000 + step)
    for ps in zip(*param_lists):
        grad = torch.randn(ps[0].shape, generator=g)
        for p in ps:
            p.grad = torch.empty_like(p).copy_(grad)


def assert_same(ours: SGD, theirs: torch.optim.Optimizer, what: str) -> None:
    for i, (p, q) in enumerate(zip(ours.param_groups[0]["params"], theirs.param_groups[0]["params"])):
        assert torch.equal(p, q), f"[{what}: weight {i}] differs by {(p - q).abs().max():.3g}"
        mine, want = ours.state[p].get("momentum_buffer"), theirs.state[q].get("momentum_buffer")
        assert (mine is None) == (want is None), f"[{what}: momentum {i}] present in one only"
        if want is not None:
            assert torch.equal(mine, want), f"[{what}: momentum {i}] differs by {(mine - want).abs().max():.3g}"
        if ours.copy_dtype is not None:
            assert torch.equal(ours.copy_of(p), p.to(ours.copy_dtype)), f"[{what}: copy {i}] is not the cast weight"


@pytest.mark.parametrize("momentum,weight_decay", [(0.9, 5e-4), (0.9, 0.0), (0.0, 5e-4), (0.0, 0.0)])
@pytest.mark.parametrize("schedule", ["step", "plateau"])
def test_cpu_steps_equal_torch_sgd_bit_for_bit(momentum, weight_decay, schedule):
    params = make_params(0)
    ours_p, theirs_p = clone(params), clone(params)
    ours = SGD(ours_p, lr=0.01, momentum=momentum, weight_decay=weight_decay, copy_dtype=torch.bfloat16)
    theirs = torch.optim.SGD(theirs_p, lr=0.01, momentum=momentum, weight_decay=weight_decay)
    if schedule == "step":  # three decays in 40 steps: a float32 lr would have drifted from the float one
        schedulers = [torch.optim.lr_scheduler.StepLR(o, step_size=10, gamma=0.1) for o in (ours, theirs)]
    else:
        schedulers = [torch.optim.lr_scheduler.ReduceLROnPlateau(o, mode="max", factor=0.1, patience=0)
                      for o in (ours, theirs)]
    metrics = torch.rand(40, generator=torch.Generator().manual_seed(1)).tolist()
    for step in range(40):
        set_grads([ours_p, theirs_p], step)
        ours.step()
        theirs.step()
        assert_same(ours, theirs, f"step {step}")
        for scheduler in schedulers:
            scheduler.step(metrics[step]) if schedule == "plateau" else scheduler.step()
        if step == 25:  # an lr set by hand, as the trainer's --lr on resume does
            for o in (ours, theirs):
                o.param_groups[0]["lr"] = 0.003
        assert float(ours.param_groups[0]["lr"]) == theirs.param_groups[0]["lr"], f"[lr after step {step}]"
    assert theirs.param_groups[0]["lr"] < 0.01, "the schedule never changed the lr"


def test_lr_is_a_float64_tensor_on_the_device_and_state_dict_is_torchs():
    params = make_params(0)
    ours, theirs = SGD(clone(params), lr=0.01, momentum=0.9), torch.optim.SGD(clone(params), lr=0.01, momentum=0.9)
    for o in (ours, theirs):
        torch.optim.lr_scheduler.StepLR(o, step_size=3)
        set_grads([o.param_groups[0]["params"]], 0)
        o.step()
    lr = ours.param_groups[0]["lr"]
    assert isinstance(lr, torch.Tensor) and lr.dtype == torch.float64 and lr.dim() == 0
    mine, want = ours.state_dict(), theirs.state_dict()
    assert mine["param_groups"] == want["param_groups"], "[param_groups] not torch.optim.SGD's"
    assert type(mine["param_groups"][0]["lr"]) is float and type(mine["param_groups"][0]["initial_lr"]) is float
    assert mine["state"].keys() == want["state"].keys() and all(s.keys() == {"momentum_buffer"}
                                                               for s in mine["state"].values())


@pytest.mark.parametrize("saved_by", ["ours", "torch"])
def test_resuming_from_a_saved_state_dict_gives_the_same_steps(tmp_path, saved_by):
    """A checkpoint of this optimizer or of torch.optim.SGD (an old one), saved and loaded as the trainer does
    (torch.load with weights_only=True), continues exactly as the run that never stopped."""
    params = make_params(2)
    straight_p, first_p = clone(params), clone(params)
    straight = SGD(straight_p, lr=0.01, momentum=0.9, weight_decay=5e-4, copy_dtype=torch.bfloat16)
    first = (SGD(first_p, lr=0.01, momentum=0.9, weight_decay=5e-4) if saved_by == "ours" else
             torch.optim.SGD(first_p, lr=0.01, momentum=0.9, weight_decay=5e-4, foreach=True))
    for step in range(5):
        set_grads([straight_p, first_p], step)
        straight.step()
        first.step()
    torch.save({"weights": [p.detach() for p in first_p], "optimizer": first.state_dict()}, tmp_path / "ckpt.pth")
    saved = torch.load(tmp_path / "ckpt.pth", weights_only=True)
    resumed_p = make_params(3)  # as the trainer resumes: a new model and optimizer, the weights loaded first
    resumed = SGD(resumed_p, lr=0.5, momentum=0.0, copy_dtype=torch.bfloat16)  # all three come from the checkpoint
    with torch.no_grad():
        for p, w in zip(resumed_p, saved["weights"]):
            p.copy_(w)
    resumed.load_state_dict(saved["optimizer"])
    assert resumed.param_groups[0]["lr"].dtype == torch.float64
    assert_same(resumed, straight, "after load")  # the copies too, cast from the loaded weights
    for step in range(5, 10):
        set_grads([straight_p, resumed_p], step)
        straight.step()
        resumed.step()
        assert_same(resumed, straight, f"resumed step {step}")
    back = torch.optim.SGD(clone(resumed_p), lr=1.0)  # and torch.optim.SGD loads ours
    back.load_state_dict(resumed.state_dict())
    assert back.param_groups[0]["lr"] == 0.01 and back.param_groups[0]["momentum"] == 0.9


@needs_interpreter
def test_a_momentum_buffer_saved_in_another_layout_is_loaded_in_the_parameters(monkeypatch):
    """An old checkpoint's buffer of a conv weight saved contiguous, loaded for a channels_last weight: the pass
    walks both in memory order, so the buffer takes the weight's layout (the same values)."""
    monkeypatch.setattr(alexnet.optim, "runs_kernel", lambda device: True)
    old_p = [torch.nn.Parameter(p.detach().contiguous()) for p in make_params(4)]
    old = torch.optim.SGD(old_p, lr=0.01, momentum=0.9)
    set_grads([old_p], 0)
    old.step()
    params = make_params(4)
    ours = SGD(params, lr=0.01, momentum=0.9)
    ours.load_state_dict(old.state_dict())
    for p, q in zip(params, old_p):
        buf = ours.state[p]["momentum_buffer"]
        assert buf.stride() == p.stride() and torch.equal(buf, old.state[q]["momentum_buffer"]), \
            f"[momentum of {tuple(p.shape)}] strides {buf.stride()}, the weight's {p.stride()}"
    gen = torch.Generator().manual_seed(9)
    grads = [torch.randn(p.shape, generator=gen) for p in params]  # set by hand, contiguous: one not in its layout
    want = [op_by_op(p.detach(), g, ours.state[p]["momentum_buffer"], 0.01, 0.0, 0.9, False)[0]
            for p, g in zip(params, grads)]
    for p, g in zip(params, grads):
        p.grad = g
    ours.step()
    for p, w in zip(params, want):
        assert torch.equal(p.detach(), w), f"[weight {tuple(p.shape)}] wrong with a gradient in another layout"


def test_a_state_dict_whose_momentum_buffers_are_none_starts_them_as_torch_does():
    """Older torch versions saved "momentum_buffer": None for a parameter that had no gradient yet."""
    params = make_params(6)
    saved = torch.optim.SGD(clone(params), lr=0.01, momentum=0.9).state_dict()
    saved["state"] = {i: {"momentum_buffer": None} for i in range(len(params))}
    ours_p, theirs_p = clone(params), clone(params)
    ours, theirs = SGD(ours_p, lr=0.5, momentum=0.9), torch.optim.SGD(theirs_p, lr=0.5, momentum=0.9)
    for o in (ours, theirs):
        o.load_state_dict(saved)
    for step in range(3):
        set_grads([ours_p, theirs_p], step)
        ours.step()
        theirs.step()
        assert_same(ours, theirs, f"step {step} after loading None buffers")


def scaled_steps(optimizer_for, params, overflow_at, unscale_at, steps=8):
    """`steps` steps under GradScaler (init scale 2^10), the loss made inf at the steps in `overflow_at`, the
    gradients unscaled before step() (as for clipping them) at those in `unscale_at`."""
    ps = clone(params)
    optimizer = optimizer_for(ps)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    gen = torch.Generator().manual_seed(5)
    for step in range(steps):
        targets = [torch.randn(p.shape, generator=gen) for p in ps]
        loss = sum((p * t).sum() for p, t in zip(ps, targets)) * (float("inf") if step in overflow_at else 1.0)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if step in unscale_at:
            scaler.unscale_(optimizer)
        scaler.step(optimizer)
        scaler.update()
    return optimizer, scaler.get_scale()


def check_grad_scaler_path():
    params = make_params(3)
    overflow_at = {0, 4}  # the first step too: it must leave a momentum buffer the next step starts from
    unscale_at = {3, 4}  # then step() gets found_inf alone
    ours, scale = scaled_steps(lambda ps: SGD(ps, lr=0.01, momentum=0.9, weight_decay=5e-4,
                                               copy_dtype=torch.float16), params, overflow_at, unscale_at)
    theirs, want_scale = scaled_steps(lambda ps: torch.optim.SGD(ps, lr=0.01, momentum=0.9, weight_decay=5e-4),
                                      params, overflow_at, unscale_at)
    assert scale == want_scale == 2.0**8, "the overflowed steps did not lower the scale"
    return ours, theirs


def test_grad_scaler_unscales_and_skips_overflowed_steps_on_the_device_path():
    """GradScaler hands step() its scale and found_inf (no unscale_ pass): the steps equal torch.optim.SGD's
    under the same scaler (which unscales by multiplying with 1/scale: the same bits, the scale being a power
    of two), the overflowed steps, the first included, changing nothing."""
    ours, theirs = check_grad_scaler_path()
    assert_same(ours, theirs, "GradScaler")


def op_by_op(w, g, m, lr, weight_decay, momentum, first_step, scale=None):
    """The kernel's formula with every operation rounded to fp32 (what the interpreter computes)."""
    if scale is not None:
        g = g / scale
    if weight_decay:
        g = g + w * weight_decay
    if momentum:
        g = g if first_step else m * momentum + g
        m = g.clone()
    return w + g * -lr, m


@needs_interpreter
@pytest.mark.filterwarnings("ignore:overflow encountered in cast")  # numpy's, on weights beyond fp16's range
@pytest.mark.parametrize("copy_dtype", [None, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("momentum,weight_decay,first_step", [(0.9, 5e-4, False), (0.9, 5e-4, True),
                                                               (0.0, 5e-4, False), (0.9, 0.0, False)])
@pytest.mark.parametrize("max_tensors", [32, 2])
def test_kernel_in_the_interpreter(copy_dtype, momentum, weight_decay, first_step, max_tensors, monkeypatch):
    """Tensors of odd sizes (an empty one too) in one launch, or in launches of two: each equal to the op-by-op
    formula; the copies to the cast weights."""
    monkeypatch.setattr(kernels.sgd, "MAX_TENSORS", max_tensors)
    gen = torch.Generator().manual_seed(7)
    sizes = (1, 37, 0, kernels.sgd.BLOCK + 1, 2 * kernels.sgd.BLOCK + 37)
    ws, gs, ms = ([torch.randn(n, generator=gen) * 10.0 ** torch.randint(-30, 30, (n,), generator=gen) for n in sizes]
                  for _ in range(3))
    want = [op_by_op(w, g, m, 0.01, weight_decay, momentum, first_step) for w, g, m in zip(ws, gs, ms)]
    bufs = [torch.full_like(m, float("nan")) if first_step else m.clone() for m in ms] if momentum else None
    copies = [torch.empty(n, dtype=copy_dtype) for n in sizes] if copy_dtype else None
    sgd_step(ws, gs, bufs, copies, torch.tensor(0.01, dtype=torch.float64), weight_decay, momentum, first_step)
    for i, (w, (want_w, want_m)) in enumerate(zip(ws, want)):
        n = sizes[i]
        assert torch.equal(w, want_w), f"[weight n={n}] differs by {(w - want_w).abs().max():.3g}"
        if momentum:
            assert torch.equal(bufs[i], want_m), f"[momentum n={n}] differs by {(bufs[i] - want_m).abs().max():.3g}"
        if copy_dtype:
            assert torch.equal(copies[i], w.to(copy_dtype)), f"[copy n={n}] is not the cast weight"


@needs_interpreter
@pytest.mark.parametrize("found_inf", [0.0, 1.0])
def test_kernel_unscales_or_skips_in_the_interpreter(found_inf):
    gen = torch.Generator().manual_seed(8)
    w, g, m = (torch.randn(2 * kernels.sgd.BLOCK + 37, generator=gen) for _ in range(3))
    scale = torch.tensor(2.0**13)
    want_w, want_m = op_by_op(w, g * scale, m, 0.01, 5e-4, 0.9, False, scale) if not found_inf else (w.clone(), m)
    w0, buf, copy = w.clone(), m.clone(), torch.zeros(w.shape, dtype=torch.bfloat16)
    sgd_step([w], [g * scale], [buf], [copy], torch.tensor(0.01, dtype=torch.float64), 5e-4, 0.9, False,
             grad_scale=scale, found_inf=torch.tensor(found_inf))
    assert torch.equal(w, want_w) and torch.equal(buf, want_m), "[weight, momentum] wrong after unscaling"
    assert torch.equal(copy, torch.zeros_like(copy) if found_inf else w.to(torch.bfloat16)), "[copy]"
    if found_inf:
        assert torch.equal(w, w0), "[weight] changed on an overflowed step"


@needs_interpreter
def test_the_optimizers_triton_path_in_the_interpreter(monkeypatch):
    """The optimizer driving the kernel (as on CUDA) over steps with a schedule and GradScaler: the same steps as
    the op-by-op formula, state kept as torch keeps it, and the copies cast."""
    monkeypatch.setattr(alexnet.optim, "runs_kernel", lambda device: True)
    params = make_params(4)
    ours_p = clone(params)
    ours = SGD(ours_p, lr=0.01, momentum=0.9, weight_decay=5e-4, copy_dtype=torch.bfloat16)
    scheduler = torch.optim.lr_scheduler.StepLR(ours, step_size=2, gamma=0.1)
    want = [p.detach().clone() for p in params]
    bufs = [None] * len(params)
    for step in range(5):
        set_grads([ours_p], step)
        grads = [p.grad.clone() for p in ours_p]
        lr = float(ours.param_groups[0]["lr"])
        ours.step()
        for i, (w, g) in enumerate(zip(want, grads)):
            want[i], bufs[i] = op_by_op(w, g, bufs[i], lr, 5e-4, 0.9, bufs[i] is None)
        scheduler.step()
        for i, p in enumerate(ours_p):
            assert torch.equal(p.detach(), want[i]), f"[step {step} weight {i}]"
            assert torch.equal(ours.state[p]["momentum_buffer"], bufs[i]), f"[step {step} momentum {i}]"
            assert torch.equal(ours.copy_of(p), p.to(torch.bfloat16)), f"[step {step} copy {i}]"
            assert ours.state[p]["momentum_buffer"].stride() == p.stride(), f"[momentum {i}] not in the weight's layout"


@needs_interpreter
def test_grad_scaler_on_the_triton_path_in_the_interpreter(monkeypatch):
    """Unscaling and skipping inside the kernel: with one fp32 rounding per operation (the interpreter) the
    result stays within 2 ulp-sized steps of torch.optim.SGD's (one rounding in its fma's)."""
    monkeypatch.setattr(alexnet.optim, "runs_kernel", lambda device: True)
    ours, theirs = check_grad_scaler_path()
    for p, q in zip(ours.param_groups[0]["params"], theirs.param_groups[0]["params"]):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-8)
        assert torch.equal(ours.copy_of(p), p.to(torch.float16))


def test_importing_the_optimizer_imports_no_triton():
    """Triton imported before kernels.interpret switches its interpreter on (no GPU) could not run --kernels triton."""
    code = "import sys, alexnet.optim; assert 'triton' not in sys.modules, 'alexnet.optim imported triton'"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


def test_bad_input_is_refused_naming_the_culprit():
    p = torch.nn.Parameter(torch.randn(3))
    with pytest.raises(ValueError, match=r"parameter 1 of group 0 \(shape \(2,\)\) is on meta"):
        SGD([p, torch.nn.Parameter(torch.randn(2, device="meta"))], lr=0.1)
    with pytest.raises(TypeError, match=r"parameter 0 .* has dtype torch.int64; it updates fp32 master weights"):
        SGD([torch.arange(3)], lr=0.1)
    with pytest.raises(TypeError, match=r"parameter 0 .* torch.float16"):
        SGD([torch.nn.Parameter(torch.randn(3, dtype=torch.float16))], lr=0.1)
    with pytest.raises(ValueError, match=r"strides \(8, 2\) with gaps"):
        SGD([torch.randn(4, 8)[:, ::2]], lr=0.1)
    with pytest.raises(ValueError, match="lr must be >= 0, got -0.1"):
        SGD([p], lr=-0.1)
    with pytest.raises(ValueError, match="copy_dtype must be None, torch.bfloat16 or torch.float16, got torch.float32"):
        SGD([p], lr=0.1, copy_dtype=torch.float32)
    with pytest.raises(ValueError, match="keeps no 16-bit copies"):
        SGD([p], lr=0.1).copy_of(p)
    with pytest.raises(KeyError, match=r"shape \(3,\) is not one of this optimizer's parameters"):
        SGD([p], lr=0.1, copy_dtype=torch.bfloat16).copy_of(torch.randn(3))
    nesterov = torch.optim.SGD([torch.nn.Parameter(torch.randn(3))], lr=0.1, momentum=0.9, nesterov=True)
    with pytest.raises(ValueError, match="group 0 has nesterov=True; this optimizer supports only nesterov=False"):
        SGD([p], lr=0.1, momentum=0.9).load_state_dict(nesterov.state_dict())
    conv = torch.nn.Parameter(torch.randn(2, 3, 4, 4))
    optimizer = SGD([conv], lr=0.1, copy_dtype=torch.bfloat16)
    conv.data = conv.data.contiguous(memory_format=torch.channels_last)  # as model.to(memory_format=...) does
    conv.grad = torch.randn(2, 3, 4, 4).contiguous(memory_format=torch.channels_last)
    with pytest.raises(ValueError, match=r"shape \(2, 3, 4, 4\) is now torch.float32 on cpu with strides "
                                         r"\(48, 1, 12, 3\), not torch.float32 on cpu with \(48, 16, 4, 1\): make "
                                         r"the optimizer after changing the model's dtype, device or memory format"):
        optimizer.step()
    p.grad = torch.randn(3).to_sparse()
    with pytest.raises(ValueError, match=r"gradient of the parameter of shape \(3,\) is torch.sparse_coo; it "
                                         r"updates from dense gradients only"):
        SGD([p], lr=0.1).step()


def test_the_kernels_launcher_refuses_mismatched_tensors():
    w = torch.randn(6)
    lr = torch.tensor(0.1, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"lr must be a 0-dim torch.float64 tensor on cpu, got torch.float32"):
        sgd_step([w], [torch.randn(6)], None, None, lr.float(), 0.0, 0.0, False)
    with pytest.raises(ValueError, match=r"grads\[1\] has shape \(3, 2\)"):
        sgd_step([w, w], [torch.randn(6), torch.randn(3, 2)], None, None, lr, 0.0, 0.0, False)
    with pytest.raises(TypeError, match=r"copies\[0\] has dtype torch.float32"):
        sgd_step([w], [torch.randn(6)], None, [torch.randn(6)], lr, 0.0, 0.0, False)
    with pytest.raises(ValueError, match="momentum 0.9 needs momentum_buffers"):
        sgd_step([w], [torch.randn(6)], None, None, lr, 0.0, 0.9, False)
    with pytest.raises(ValueError, match="2 weights but 1 grads"):
        sgd_step([w, w], [torch.randn(6)], None, None, lr, 0.0, 0.0, False)
    with pytest.raises(ValueError, match=r"weights\[0\] has strides \(2,\) for shape \(3,\)"):
        sgd_step([w[::2]], [torch.randn(6)[::2]], None, None, lr, 0.0, 0.0, False)


BUILD = """
import itertools, json, re, sys, tempfile
from collections import Counter
from pathlib import Path
import torch, triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from perf.aot import _resource_usage, _specialise
from kernels import sgd
launches = []
sgd.check_device = lambda *args: None  # meta tensors: the launcher runs up to the launch, which is recorded
sgd.launch = lambda kernel, grid, device, *args, **kwargs: launches.append({**dict(zip(kernel.arg_names, args)),
                                                                            **kwargs})
from alexnet.model import AlexNet
with torch.device("meta"):
    alexnet = list(AlexNet().parameters())
lr, scalar = torch.empty((), dtype=torch.float64, device="meta"), torch.empty((), device="meta")
def step(ws, copy, first, amp):
    sgd.sgd_step(ws, ws, ws, [torch.empty_like(w, dtype=copy) for w in ws] if copy else None, lr, 5e-4, 0.9, first,
                 *[scalar if amp else None] * 2)
step([alexnet[10]], torch.bfloat16, False, False)  # fc6's weight alone, for its instructions
step(alexnet, torch.bfloat16, False, False)  # a bf16 run's step
if sys.argv[1] == "all":
    for options in itertools.product((torch.bfloat16, torch.float16, None), (False, True), (False, True)):
        step(alexnet, *options)
spills, counts = 0, None
with tempfile.TemporaryDirectory() as tmp:
    for kwargs, arch in itertools.product(launches, (80, 90)):
        target = GPUTarget("cuda", arch, 32)
        signature, constexprs, attrs, options = _specialise(sgd.sgd_kernel, target, kwargs)
        built = triton.compile(ASTSource(sgd.sgd_kernel, signature, constexprs, attrs), target=target,
                               options=options.__dict__)
        spills += _resource_usage(built.asm["cubin"], Path(tmp))["LOCAL"]
        if counts is None and arch == 90:
            counts = Counter(re.findall(r"\\b(?:fma|mul|add|sub)\\.\\w+\\.f32|(?:ld|st)\\.global\\.v4\\.b32",
                                        built.asm["ptx"]))
print(json.dumps({"builds": 2 * len(launches), "spilled_bytes": spills, "fc6_sm90": counts}))
"""


def build(variants: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-c", BUILD, variants], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=1200)  # "all": ~70 s quiet, no Triton cache
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_build_rounds_as_torchs_cuda_sgd_and_never_spills():
    """A bf16 run's launch for AlexNet's 16 parameters, built for sm_80 and sm_90 with no GPU from the launcher's
    own arguments, does not spill; and fc6's update on sm_90 has per element exactly two fma's (weight decay, the
    update) and a separate multiply and add (momentum), as torch's foreach kernels round, with 16-byte loads and
    stores."""
    report = build("main")
    assert report["builds"] == 4 and report["spilled_bytes"] == 0, report
    per_thread = kernels.sgd.BLOCK // (kernels.sgd.NUM_WARPS * 32)  # fp32 elements: 4 a 16-byte access, bf16 8
    assert report["fc6_sm90"] == {"fma.rn.f32": 2 * per_thread, "mul.rn.f32": per_thread, "add.rn.f32": per_thread,
                                  "ld.global.v4.b32": 3 * per_thread // 4,
                                  "st.global.v4.b32": 2 * per_thread // 4 + per_thread // 8}, report


@pytest.mark.slow
def test_every_variant_of_the_launch_builds_without_spills():
    """fp16, bf16 or no copy, first step or not, GradScaler or not: sm_80 and sm_90."""
    report = build("all")
    assert report["builds"] == 28 and report["spilled_bytes"] == 0, report


@needs_cuda
def test_cuda_steps_equal_torch_sgd_bit_for_bit():
    params = make_params(0, "cuda")
    ours_p, theirs_p = clone(params), clone(params)
    ours = SGD(ours_p, lr=0.01, momentum=0.9, weight_decay=5e-4, copy_dtype=torch.bfloat16)
    theirs = torch.optim.SGD(theirs_p, lr=0.01, momentum=0.9, weight_decay=5e-4)  # foreach on CUDA
    schedulers = [torch.optim.lr_scheduler.StepLR(o, step_size=7, gamma=0.1) for o in (ours, theirs)]
    for step in range(30):
        set_grads([ours_p, theirs_p], step)
        ours.step()
        theirs.step()
        assert_same(ours, theirs, f"cuda step {step}")
        for scheduler in schedulers:
            scheduler.step()


@needs_cuda
def test_cuda_step_reads_nothing_back_and_replays_in_a_cuda_graph():
    params = make_params(1, "cuda")
    eager_p, graph_p = clone(params), clone(params)
    eager = SGD(eager_p, lr=0.01, momentum=0.9, weight_decay=5e-4, copy_dtype=torch.bfloat16)
    graphed = SGD(graph_p, lr=0.01, momentum=0.9, weight_decay=5e-4, copy_dtype=torch.bfloat16)
    for o in (eager, graphed):  # as GradScaler hands them over
        o.grad_scale, o.found_inf = torch.tensor(4.0, device="cuda"), torch.tensor(0.0, device="cuda")
    for step in range(2):  # the first step and a later one outside the graph: buffers made, both kernels built
        set_grads([eager_p, graph_p], step)
        eager.step()
        graphed.step()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):  # a read back to the host inside step() would fail the capture
        graphed.step()
    for step in range(2, 7):
        set_grads([eager_p], step)
        for p, q in zip(eager_p, graph_p):
            q.grad.copy_(p.grad)  # in place: the graph reads these addresses
        torch.cuda.set_sync_debug_mode("error")  # and eagerly: any synchronising call raises
        try:
            eager.step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
        graph.replay()
        for o in (eager, graphed):  # a scheduler's fill_, seen by the graph
            o.param_groups[0]["lr"].fill_(0.01 / step)
        torch.cuda.synchronize()
        assert_same(graphed, eager, f"replay {step}")
