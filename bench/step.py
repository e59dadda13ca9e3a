"""Count what one training step launches, moves and reads around the Triton kernels, without a GPU.

    python -m bench.step                                    every backend, --amp none and bf16, batch 128
    python -m bench.step --kernels triton --amp bf16 --json step.json
    python -m bench.step --aot-json aot.json                our kernels' time from perf.aot's SASS model

The step is the trainer's own (alexnet.train.Run builds it: AlexNet with 1000 classes, its optimizer, autocast,
alexnet.step.TrainStep), run once to warm up (the optimizer's state made) and once counted, on fake tensors
(torch's FakeTensorMode: shapes, dtypes and strides, no data, no compute). Every Triton launch goes through
kernels.tensors.launch, stubbed here to record the kernel, its grid and its tensors: no kernel runs, the
interpreter is never entered. A TorchDispatchMode sees every ATen op the step runs after autograd, as a GPU
would get them. Per row (one backend x one --amp):

COUNTS (exact, from the ops the step runs)
  launches      GPU kernel launches by kind: triton (ours), gemm (mm, addmm, cuDNN convolutions: one launch per
                gradient convolution_backward computes, its bias gradient included), elementwise (fills
                included), reduction (log-softmax and the loss's sum included), copy (copies, dtype casts, pads,
                cat, stack), optimizer (everything the optimizer's step runs; a foreach op counts the launches
                CUDA's multi_tensor_apply makes: 65536-element chunks, at most 320 blocks a launch), other
                (pooling, dropout, top-k, the loss's backward). Views, allocations and metadata launch nothing.
  host_reads    tensor-to-host reads: .item() (and bool/float/int of a tensor), .tolist(), .cpu(), .numpy().
  bytes_outside_kernels   bytes moved by every launch that is not one of our Triton kernels: each op's tensor
                inputs read once and its outputs written once. An in-place op reads and writes its operand
                (a copy, fill or random fill only writes it); a GEMM reads each operand once (L2 reuse assumed
                perfect), so these are floors.
MEASURED on this machine
  host_us       wall-clock µs of the step on fake tensors, our kernels stubbed, best of 5: Python, dispatch and
                FakeTensorMode's shape work, no compute (and the counting mode's Python when the step reads
                from the device: .item() needs its stand-in value). Not on the meta device, which cannot run
                the step (kernels/autocast.py asks autocast about the tensors' device); not on real CPU
                tensors, which would compute. An upper bound of the eager host time on this CPU.
  host_us_per_op   µs one more Triton op call adds to a bf16 step, forward and backward, kernels stubbed, on
                tiny CPU tensors (so torch's ops around the kernel cost their dispatch only): the op followed by
                an LRN less the LRN alone, gradients set to None between steps as zero_grad does, so the
                backward() call's own start (once a step) is not in it; best of 5; with the Triton launches
                each makes (printed under the table, in the JSON's triton rows).
ESTIMATE (H100 SXM; no GPU ran)
  est_device_ms our kernels from perf.aot's estimate when --aot-json gives its report (per layer and op, the
                tile with the best estimate, as its step roll-up), else each launch's floor (perf.work's FLOPs
                and bytes, bench.costs' peaks; a launch perf.launches does not plan: its tensors' bytes at HBM
                speed); every other op at HBM speed (3.35 TB/s); GEMMs at cuBLAS's floor, max(FLOPs at the
                dense bf16 or tf32 peak, bytes at HBM speed).

Where CUDA would run other ops than the CPU the fakes are on, the step takes CUDA's choice: the trainer's Triton
passes (alexnet.optim's update and alexnet.step's totals, one launch each; on a CPU torch's ops), the fused
dropout kernel (one launch, not a bernoulli, a division and a product), wgrad's reduction split for an H100's 132
SMs, and fc6-fc8's weight gradients as fp32-output GEMMs (alexnet.master_weights; a CPU casts). Autocast follows
the CPU's op lists (the same for this model's convs and linears; the loss may differ from CUDA's by a cast), and
the torch backend's LRN runs in fp32 under bf16, as on a CPU (kernels/torch_ops.py). torch.compile cannot run on
fake tensors (Inductor crashes): in the compile and --compile rows, what it would compile (the three ops; the
whole network) runs eagerly and its ops, forward and backward, are left out of the counts
(compiled_ops_not_counted; the estimate is marked *); the rest of the step is counted.
"""

import argparse
import contextlib
import importlib
import dataclasses
import json
import math
import os
import sys
import time
from collections import Counter
from pathlib import Path
from unittest import mock

import torch
import torch.nn.functional as F
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.autograd.function import once_differentiable
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

import kernels
from bench.costs import GPUS

KINDS = ("triton", "gemm", "elementwise", "reduction", "copy", "optimizer", "other")
AMPS = ("none", "bf16")
GPU = GPUS["h100"]
aten = torch.ops.aten
NO_LAUNCH = {aten.empty.memory_format, aten.empty_strided.default, aten.empty_like.default, aten.new_empty.default,
             aten.new_empty_strided.default, aten.detach.default, aten.lift_fresh.default, aten._unsafe_view.default,
             aten.set_.source_Storage_storage_offset, aten.resize_.default}  # allocations and metadata
GEMMS = {aten.mm.default, aten.mm.dtype, aten.addmm.default, aten._addmm_activation.default, aten.bmm.default,
         aten.baddbmm.default, aten.addmv.default, aten.mv.default, aten.convolution.default,
         aten.convolution_backward.default}
COPIES = {aten._to_copy.default, aten.copy_.default, aten.clone.default, aten.constant_pad_nd.default,
          aten.cat.default, aten.stack.default, aten.slice_scatter.default, aten.select_scatter.default,
          aten.as_strided_scatter.default}
WRITE_ONLY = {aten.copy_.default, aten.fill_.Scalar, aten.fill_.Tensor, aten.zero_.default, aten.bernoulli_.float,
              aten.normal_.default, aten.uniform_.default}  # their first argument is written, not read
FILLS = {aten.zeros.default, aten.ones.default, aten.full.default, aten.zeros_like.default, aten.ones_like.default,
         aten.full_like.default, aten.scalar_tensor.default, *WRITE_ONLY - {aten.copy_.default}}  # one kernel each
ROW_REDUCTIONS = {aten._log_softmax.default, aten._log_softmax_backward_data.default, aten._softmax.default,
                  aten._softmax_backward_data.default, aten.nll_loss_forward.default}
CHUNK, BLOCKS_PER_LAUNCH, TENSORS_PER_LAUNCH = 65536, 320, (110, 64, 48, 36, 30)  # CUDA's multi_tensor_apply


# ----------------------------------------------------------------------------------------------------------
# The count


@dataclasses.dataclass
class Count:
    """What one step launched, read back and moved; `ops` lists each launching op (kind, name, bytes)."""
    launches: Counter = dataclasses.field(default_factory=Counter)
    host_reads: int = 0
    bytes_outside_kernels: int = 0
    est_device_s: float = 0.0
    host_us: float = 0.0
    compiled_ops: int = 0  # ops in torch.compile's regions, run eagerly and not counted (CompiledRegions)
    ops: list = dataclasses.field(default_factory=list)
    triton: list = dataclasses.field(default_factory=list)  # (kernel name, grid, {arg: value or tensor})

    def add(self, kind: str, name: str, launches: int, nbytes: int, seconds: float) -> None:
        self.launches[kind] += launches
        self.est_device_s += seconds
        if kind != "triton":
            self.bytes_outside_kernels += nbytes
        self.ops.append((kind, name, launches, nbytes))


def _tensors(tree) -> list:
    return [t for t in tree_flatten(tree)[0] if isinstance(t, torch.Tensor)]


def _nbytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def is_view(func) -> bool:
    """An op whose outputs alias its inputs without writing them (view, permute, t, ...): no launch."""
    return any(r.alias_info is not None and not r.alias_info.is_write for r in func._schema.returns)


def op_bytes(func, args, kwargs, out) -> int:
    """Bytes an op moves: its tensor inputs read once (not the destination of a copy or fill), the tensors it
    writes in place and its new outputs written once."""
    schema_args = func._schema.arguments
    read, written = [], []
    for i, (arg, value) in enumerate(zip(schema_args, list(args) + [kwargs.get(a.name) for a in
                                                                   schema_args[len(args):]])):
        tensors = _tensors(value)
        if not (i == 0 and func in WRITE_ONLY):
            read += tensors
        if arg.alias_info is not None and arg.alias_info.is_write:
            written += tensors
    known = {id(t) for t in read + written}  # an in-place op returns its operand: written once already
    written += [t for t in _tensors(out) if id(t) not in known]
    return _nbytes(read) + _nbytes(written)


def gemm_flops(func, args, out) -> int:
    """FLOPs of a GEMM or cuDNN convolution op (convolution_backward: dgrad and wgrad, each the forward's)."""
    if func in (aten.mm.default, aten.mm.dtype, aten.bmm.default, aten.mv.default):
        return 2 * out.numel() * args[0].shape[-1]
    if func in (aten.addmm.default, aten._addmm_activation.default, aten.baddbmm.default, aten.addmv.default):
        return 2 * out.numel() * args[1].shape[-1]
    if func == aten.convolution.default:
        return 2 * out.numel() * math.prod(args[1].shape[1:])
    grad_out, weight, mask = args[0], args[2], args[-1]  # convolution_backward
    return 2 * grad_out.numel() * math.prod(weight.shape[1:]) * sum(mask[:2])


def gemm_launches(func, args) -> int:
    """1, or per gradient convolution_backward computes (its output mask: input, weight, bias)."""
    return sum(args[-1][:2]) + args[-1][2] if func == aten.convolution_backward.default else 1


def multi_tensor_launches(func, args) -> int:
    """Launches of a foreach/fused op on CUDA: multi_tensor_apply packs 65536-element chunks of its tensors,
    launching when 320 blocks or the depth's tensor limit are reached, and once more for the rest."""
    lists = [a for a in args if isinstance(a, (list, tuple)) and a and isinstance(a[0], torch.Tensor)]
    depth = min(len(lists) + any(r.type.str().startswith("Tensor[]") for r in func._schema.returns), 5)
    launches = blocks = tensors = 0
    for t in lists[0] if lists else []:
        chunks = math.ceil(t.numel() / CHUNK)
        tensors += chunks > 0
        for chunk in range(chunks):
            blocks += 1
            last = chunk == chunks - 1
            if blocks == BLOCKS_PER_LAUNCH or (last and tensors == TENSORS_PER_LAUNCH[depth - 1]):
                launches, blocks, tensors = launches + 1, 0, 0 if last else 1
    return launches + (blocks > 0)


def classify(func) -> str:
    if func in GEMMS:
        return "gemm"
    if func in COPIES:
        return "copy"
    if torch.Tag.pointwise in func.tags or func in FILLS:
        return "elementwise"
    if torch.Tag.reduction in func.tags or func in ROW_REDUCTIONS:
        return "reduction"
    return "other"


class CountingMode(TorchDispatchMode):
    """Counts every ATen op of the step as a GPU would launch it (see the module's docstring)."""

    def __init__(self, count: Count, regions=None):
        super().__init__()
        self.count, self.in_optimizer, self.regions = count, False, regions

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func == aten._local_scalar_dense.default:  # .item(): a device-to-host read; the fakes hold no value
            self.count.host_reads += 1
            dtype = args[0].dtype
            return True if dtype == torch.bool else 1.0 if dtype.is_floating_point else 1
        out = func(*args, **kwargs)
        if func.namespace != "aten" or func in NO_LAUNCH or is_view(func):
            return out
        if self.regions is not None and self.regions.active():
            self.count.compiled_ops += 1
            return out
        name, nbytes = func.overloadpacket.__name__, op_bytes(func, args, kwargs, out)
        if name.startswith(("_foreach_", "_fused_")):
            launches, kind = multi_tensor_launches(func, args), "optimizer"
        else:
            kind = "optimizer" if self.in_optimizer else classify(func)
            launches = gemm_launches(func, args) if func in GEMMS else 1
        seconds = nbytes / GPU.bandwidth
        if func in GEMMS:
            dtype = "bf16" if _tensors(args)[0].dtype in (torch.bfloat16, torch.float16) else "tf32"
            seconds = max(gemm_flops(func, args, out) / (GPU.tflops[dtype] * 1e12), seconds)
        self.count.add(kind, name, launches, nbytes, seconds)
        return out


# ----------------------------------------------------------------------------------------------------------
# Our kernels, stubbed and estimated


def jit_function(kernel):
    """The @triton.jit function of `kernel` (an Autotuner or Heuristics wraps it in .fn)."""
    while not (hasattr(kernel, "arg_names") and hasattr(kernel, "__name__")):
        kernel = kernel.fn
    return kernel


def _named_args(kernel, args, kwargs) -> dict:
    return {**dict(zip(jit_function(kernel).arg_names, args)), **kwargs}


def kernel_name(kernel) -> str:
    return jit_function(kernel).__name__


@contextlib.contextmanager
def stubbed_launches(record):
    """kernels.tensors.launch replaced, in every module that imported it, by `record(kernel, grid, args)`; any
    Triton kernel started another way stops the count with an error naming it (nothing may run)."""
    from triton.runtime.interpreter import InterpretedFunction
    from triton.runtime.jit import JITFunction

    import kernels.tensors as tensors

    kernels.backend("triton")  # every launcher imported now, binding the real launch (replaced below)
    for imported_at_first_use in ("kernels.sgd", "kernels.step_totals"):  # the trainer's, at its first CUDA step
        importlib.import_module(imported_at_first_use)

    def stub(kernel, grid, device, *args, **kwargs):
        record(kernel, grid, _named_args(kernel, args, kwargs))

    def refuse(self, *args, **kwargs):
        raise RuntimeError(f"bench.step: the Triton kernel {self.__name__} was started without "
                           "kernels.tensors.launch, so it cannot be stubbed")

    with contextlib.ExitStack() as stack:
        launch = tensors.launch
        for module in list(sys.modules.values()):
            if getattr(module, "launch", None) is launch:
                stack.enter_context(mock.patch.object(module, "launch", stub))
        stack.enter_context(mock.patch.object(InterpretedFunction, "run", refuse))
        stack.enter_context(mock.patch.object(JITFunction, "run", refuse))
        yield


TILE_ARGS = {"BLOCK_M", "BLOCK_N", "BLOCK_K", "num_warps", "num_stages"}  # chosen by the autotuner, not the call


def launch_key(name: str, args: dict) -> tuple:
    """What identifies a launch of a kernel across runs: its name, its scalar arguments (shapes, strides,
    constexprs), its tensors' dtypes; not the tile or the tensors' sizes (wgrad's partials depend on the SMs)."""
    return name, tuple(sorted((k, str(v.dtype) if isinstance(v, torch.Tensor) else repr(v))
                              for k, v in args.items() if k not in TILE_ARGS))


class KernelEstimates:
    """Seconds of one launch of our kernels on an H100: perf.aot's estimate for its (layer, op) when a report
    is given, else its floor from perf.work's FLOPs and bytes; a launch perf.launches does not plan (another
    batch than 128) at its tensors' bytes at HBM speed."""

    def __init__(self, aot_json: Path | None):
        self.aot = _aot_step_estimates(aot_json) if aot_json else {}
        self._works = None
        self.sources = Counter()

    def works(self) -> dict:
        if self._works is None:
            from perf.launches import launches

            self._works = {launch_key(kernel_name(kernel), args): work for _, kernel, args, work in launches()}
        return self._works

    def seconds(self, name: str, args: dict) -> float:
        work = self.works().get(launch_key(name, args))
        if work is None:
            self.sources["tensor bytes"] += 1
            return _nbytes(_tensors(list(args.values()))) / GPU.bandwidth
        step_dtype = "bf16" if work["dtype"] in ("bf16", "fp16") else "tf32"
        estimate = self.aot.get((work["layer"], work["op"], step_dtype))
        if estimate is not None:
            self.sources["perf.aot"] += 1
            return estimate
        self.sources["floor"] += 1
        peak = GPU.tflops[step_dtype] * 1e12
        return max(2 * work["macs"] / peak, work["bytes"] / GPU.bandwidth)


def _aot_step_estimates(path: Path) -> dict:
    """{(layer, op, step dtype): H100 seconds} from perf.aot's step roll-ups, "bf16" and "tf32" (whose LRN and
    max-pool run fp32); the fully connected layers, at cuBLAS's floor there, are ATen GEMMs here."""
    rollup = json.loads(path.read_text())["rollup"]
    return {(entry["layer"], entry["op"], roll["dtype"]): entry["h100"]["seconds"]
            for roll in rollup.values() for entry in roll["layers"] if not entry["layer"].startswith("fc")}


# ----------------------------------------------------------------------------------------------------------
# The step


@contextlib.contextmanager
def as_on_cuda():
    """CUDA's choices where the CPU's differ: F.dropout as the one fused kernel (aten.native_dropout), wgrad's
    split of its reduction for an H100's SMs (perf.launches.SMS) instead of the CPU's stand-in, the fc layers'
    fp32-output weight-gradient GEMM (no cast after it), and the trainer's Triton passes (the optimizer's
    update, the step's totals)."""
    from alexnet import master_weights, optim
    from kernels.conv_relu import launch as conv_launch
    from perf.launches import SMS

    dropout = F.dropout

    def fused_dropout(input, p=0.5, training=True, inplace=False):
        if training and 0 < p < 1:
            return torch.native_dropout(input, p, training)[0]
        return dropout(input, p, training, inplace)

    with mock.patch.object(F, "dropout", fused_dropout), mock.patch.object(conv_launch, "_sms", lambda device: SMS), \
            mock.patch.object(optim, "runs_kernel", lambda device: True), \
            mock.patch.object(master_weights, "fp32_product", lambda a, b: torch.mm(a, b, out_dtype=torch.float32)):
        yield


@contextlib.contextmanager
def host_reads_counted(count: Count):
    """.tolist(), .cpu() and .numpy() of a tensor (all are the device's here) counted as reads; the fakes hold
    no data, so they give zeros."""
    import numpy as np

    def read(result):
        def method(t, *args, **kwargs):
            count.host_reads += 1
            return result(t)
        return method

    with mock.patch.object(torch.Tensor, "tolist", read(lambda t: np.zeros(tuple(t.shape)).tolist())), \
            mock.patch.object(torch.Tensor, "cpu", read(lambda t: t)), \
            mock.patch.object(torch.Tensor, "numpy", read(lambda t: np.zeros(tuple(t.shape)))):
        yield


class CompiledRegions:
    """The parts of a step torch.compile would run (a compiled model, or the compile backend's ops), which fake
    tensors cannot compile: they run eagerly, and their ops (forward, and backward through the autograd nodes
    they made) are set apart from the count, as `compiled_ops` (what Inductor would fuse into fewer kernels)."""

    def __init__(self):
        self.depth, self.nodes = 0, set()

    def active(self) -> bool:
        return self.depth > 0 or torch._C._current_autograd_node() in self.nodes

    def wrap(self, fn):
        def call(*args, **kwargs):
            self.depth += 1
            try:
                out = fn(*args, **kwargs)
            finally:
                self.depth -= 1
            self.nodes |= _nodes_between(out, args)
            return out
        return call


def _nodes_between(out, inputs) -> set:
    """The autograd nodes that made `out` from `inputs` (parameters' AccumulateGrad excluded)."""
    stop = {t.grad_fn for t in _tensors(inputs) if t.grad_fn is not None}
    todo, nodes = [t.grad_fn for t in _tensors(out) if t.grad_fn is not None], set()
    while todo:
        node = todo.pop()
        if node in nodes or node in stop or type(node).__name__ == "AccumulateGrad":
            continue
        nodes.add(node)
        todo += [next_node for next_node, _ in node.next_functions if next_node is not None]
    return nodes


def trainer_step(backend: str, amp: str, batch: int, compile_model: bool = False):
    """(step, images, labels, regions): alexnet.train's Run's step (a TrainStep) for 1000 classes at `batch`,
    built in the current (fake) tensor mode, the optimizer's CUDA path (one Triton launch). What torch.compile
    would compile (the whole network with `compile_model`, the ops of the compile backend) runs eagerly, marked
    in `regions` (CompiledRegions)."""
    from alexnet import distributed
    from alexnet.model import AlexNet
    from alexnet.train import Run, get_args_parser, resolve
    from kernels import Backend, torch_ops
    from kernels.autocast import autocast_inputs

    flags = ["--kernels", backend, "--amp", amp, "-b", str(batch), "--device", "cpu", "--cuda-graphs", "off"]
    config = resolve(get_args_parser().parse_args(flags), None)[0]
    regions = CompiledRegions()
    model = AlexNet(1000, kernels="torch" if backend == "compile" else backend)
    if backend == "compile":  # kernels.compile_ops: the torch ops, each compiled, autocast outside the graph
        model.ops = Backend("compile", *(autocast_inputs(regions.wrap(op)) for op in
                                         (torch_ops.conv2d_relu, torch_ops.lrn, torch_ops.max_pool2d)))
    run = Run(config, distributed.Layout(0, 1, 1, torch.device("cpu")), model, data=None)
    step = run.train_step
    if compile_model:  # alexnet.train --compile: torch.compile(net), which takes the images as they are
        step.net, step.input_form = regions.wrap(step.net), None
    # the images as the trainer's DALI loader hands them, channels_last in --amp's dtype, or as decoded when the
    # step casts them
    dtype = torch.bfloat16 if amp == "bf16" else torch.float32
    if step.input_form is not None:
        from data.dali import DaliLoader
        dtype = DaliLoader.decoded_dtype(dtype)
    images = torch.randn(batch, 3, 227, 227, dtype=dtype).contiguous(memory_format=torch.channels_last)
    return step, images, torch.randint(0, 1000, (batch,)), regions


def _grid(grid, args):
    """A launch's grid, or None where it depends on the tile the autotuner would choose."""
    try:
        return tuple(grid(args)) if callable(grid) else tuple(grid)
    except KeyError:
        return None


def count_step(step, images, labels, estimates: KernelEstimates, regions: CompiledRegions | None = None,
               warmup: int = 1, repeats: int = 5) -> Count:
    """Run `step(images, labels)` (a TrainStep) `warmup` times, once counted, then `repeats` times for the host
    time (the best), with our kernels stubbed; returns the count with `host_us` set."""
    count = Count()

    def record(kernel, grid, args):
        count.triton.append((kernel_name(kernel), _grid(grid, args), args))

    uncounted = Count()  # warm-up and timing: .item() still needs CountingMode's stand-in value
    with as_on_cuda(), stubbed_launches(lambda *a: None), host_reads_counted(uncounted), CountingMode(uncounted):
        for _ in range(warmup):
            step(images, labels)
    mode = CountingMode(count, regions)
    hooks = [step.optimizer.register_step_pre_hook(lambda *a: setattr(mode, "in_optimizer", True)),
             step.optimizer.register_step_post_hook(lambda *a: setattr(mode, "in_optimizer", False))]
    with as_on_cuda(), stubbed_launches(record), host_reads_counted(count), mode:
        step(images, labels)
    for hook in hooks:
        hook.remove()
    for name, grid, args in count.triton:  # estimated outside the modes: perf.launches plans on meta tensors
        count.add("triton", name, 1, _nbytes(_tensors(list(args.values()))), estimates.seconds(name, args))
    best = math.inf  # with no mode unless .item() needs its stand-in value (then CountingMode's cost is in)
    scalars = CountingMode(uncounted) if count.host_reads else contextlib.nullcontext()
    with as_on_cuda(), stubbed_launches(lambda *a: None), host_reads_counted(uncounted), scalars:
        for _ in range(repeats):
            start = time.perf_counter()
            step(images, labels)
            best = min(best, time.perf_counter() - start)
    count.host_us = best * 1e6
    return count


# ----------------------------------------------------------------------------------------------------------
# Host µs per Triton op call


def _best_us(fn, calls: int, repeats: int = 5) -> float:
    for _ in range(max(calls // 10, 1)):
        fn()
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - start) / calls)
    return best * 1e6


def activation(shape) -> torch.Tensor:
    return torch.randn(shape).to(torch.bfloat16, memory_format=torch.channels_last)


class NoOpConv(torch.autograd.Function):
    """A convolution's autograd node with no work: the output and the gradients allocated, the tensors saved as
    ConvReLU saves them. What autograd alone costs an op of conv2d_relu's inputs (the floor under its figure)."""

    @staticmethod
    def forward(ctx, x, weight, bias, y_shape):
        y = torch.empty(y_shape, dtype=x.dtype, memory_format=torch.channels_last)
        ctx.save_for_backward(x, weight, y)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, dy):
        x, weight, _ = ctx.saved_tensors
        return torch.empty_like(x), torch.empty_like(weight), weight.new_empty(weight.shape[0]), None


def triton_op_host_us(calls: int = 200) -> dict:
    """{op: {"fwd": µs, "bwd": µs, "fwd_launches": n, "bwd_launches": n}}: the host time one more call of each
    Triton op adds to a bf16 step, and the Triton launches the call makes (conv: 1 forward, 3 backward), kernels
    stubbed: bf16 channels_last activations, fp32 weights, no input gradient for conv1's images, on CPU tensors
    so small that every torch op around the kernel costs its dispatch only (as an asynchronous GPU op would).
    Each op is timed followed by an LRN, less that LRN alone on a leaf of the op's output's shape: so the
    backward() call's own cost (autograd's start, paid once a step, not per op) is left out, and the
    parameters' gradients are set to None after each step, as the trainer's zero_grad does (no accumulation).
    bwd is forward+backward less forward, autograd's work for the op's node included. conv2-5's stand-ins
    have AlexNet's K/groups (a multiple of 64: dgrad reads the forward's weight copy) on few input channels;
    conv1 (3 channels, stride 4; its K kept small, as it needs no dgrad) is given its space-to-depth input
    form, made before it as in the step. "no-op Function" is autograd's share: NoOpConv on conv's tensors."""
    ops = kernels.backend("triton")
    convs = {"conv1": ((1, 3, 23, 23), (8, 3, 11, 11), 4, 0, 1),
             "conv (groups 2)": ((1, 2, 7, 7), (128, 1, 5, 5), 1, 2, 2),
             "conv": ((1, 2, 7, 7), (64, 2, 3, 3), 1, 1, 1)}
    cases, leaves, tensors = {}, [], {}
    for name, (x_shape, w_shape, stride, padding, groups) in convs.items():
        form = name == "conv1"
        x = activation(x_shape)
        x = ops.conv2d_relu_input(x, w_shape, stride, padding, groups) if form else x.requires_grad_()
        w, b = torch.randn(w_shape).requires_grad_(), torch.randn(w_shape[0]).requires_grad_()
        leaves += [x, w, b]
        tensors[name] = x, w, b
        cases[name] = (lambda x=x, w=w, b=b, s=stride, p=padding, g=groups, f=form:
                       ops.conv2d_relu(x, w, b, s, p, g, input_form=f))
    y_shape = cases["conv"]().shape
    cases["no-op Function"] = lambda: NoOpConv.apply(*tensors["conv"], y_shape)
    x = activation((2, 16, 7, 7)).requires_grad_()
    leaves.append(x)
    cases["lrn"] = lambda: ops.lrn(x)
    cases["max-pool"] = lambda: ops.max_pool2d(x)

    def us(forward, backward: bool) -> float:
        dy = activation(forward().shape)

        def step():
            y = forward()
            if backward:
                y.backward(dy)
            for leaf in leaves:
                leaf.grad = None
        return _best_us(step, calls)

    def launches(call) -> int:
        started[0] = 0
        call()
        return started[0]

    def count(*launch):  # (a list of launches would keep their tensors alive: slower timing)
        started[0] += 1

    result, started = {}, [0]
    with stubbed_launches(count):
        for name, op in cases.items():
            alone = activation(op().shape).requires_grad_()
            leaves.append(alone)
            then_lrn, lrn_alone = (lambda: ops.lrn(op())), (lambda: ops.lrn(alone))
            fwd = us(then_lrn, False) - us(lrn_alone, False)
            both = us(then_lrn, True) - us(lrn_alone, True)
            y = op()
            dy = activation(y.shape)
            result[name] = {"fwd": fwd, "bwd": both - fwd, "fwd_launches": launches(op),
                            "bwd_launches": launches(lambda: y.backward(dy))}
            leaves.pop()
    return result


# ----------------------------------------------------------------------------------------------------------
# Rows, the table, the command


def row_name(backend: str, compile_model: bool) -> str:
    return f"{backend} --compile" if compile_model else backend


def measure_row(backend: str, amp: str, batch: int, compile_model: bool, aot_json: Path | None,
                host_us_per_op: dict | None = None) -> dict:
    """One row: the counts, host time and estimate of one training step (see the module's docstring), and
    `host_us_per_op` (triton_op_host_us) in a triton row."""
    estimates = KernelEstimates(aot_json)
    with FakeTensorMode():
        step, images, labels, regions = trainer_step(backend, amp, batch, compile_model)
        count = count_step(step, images, labels, estimates, regions)
    notes = []
    if count.compiled_ops:
        compiled = "the whole network" if compile_model else "conv+ReLU, LRN and max-pool"
        notes.append(f"torch.compile cannot run on fake tensors: {compiled} ({count.compiled_ops} eager ATen ops, "
                     "forward and backward; Inductor fuses them into fewer kernels) not counted")
    if backend == "torch" and amp == "bf16":
        notes.append("LRN runs in fp32 here (kernels/torch_ops.py: the CPU has no bf16 avg_pool3d), so its casts "
                     "and bytes are the CPU's, not CUDA's")
    if estimates.sources["tensor bytes"]:
        notes.append(f"{estimates.sources['tensor bytes']} Triton launch(es) not planned by perf.launches "
                     "estimated at their tensors' bytes")
    row = dict(backend=row_name(backend, compile_model), kernels=backend, compile=compile_model, amp=amp,
               batch=batch, launches={"total": sum(count.launches.values()),
                                      **{kind: count.launches[kind] for kind in KINDS}},
               host_reads=count.host_reads, bytes_outside_kernels=count.bytes_outside_kernels,
               host_us=round(count.host_us), est_device_ms=round(count.est_device_s * 1e3, 3),
               est_triton_from=dict(estimates.sources), compiled_ops_not_counted=count.compiled_ops, notes=notes)
    if backend == "triton" and host_us_per_op:
        row["host_us_per_op"] = {op: {k: round(v, 1) for k, v in us.items()} for op, us in host_us_per_op.items()}
    return row


def table(rows: list[dict]) -> str:
    header = ["backend", "amp", "launches", *KINDS, "host reads", "GB outside", "host ms", "est. H100 ms"]
    cells = [header] + [[r["backend"], r["amp"], str(r["launches"]["total"]),
                         *(str(r["launches"][kind]) for kind in KINDS), str(r["host_reads"]),
                         f"{r['bytes_outside_kernels'] / 1e9:.2f}", f"{r['host_us'] / 1e3:.1f}",
                         f"{r['est_device_ms']:.2f}" + ("*" if r["compiled_ops_not_counted"] else "")]
                        for r in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(header))]
    lines = ["  ".join(cell.rjust(w) if i > 1 else cell.ljust(w) for i, (cell, w) in enumerate(zip(line, widths)))
             for line in cells]
    for r in rows:
        lines += [f"{r['backend']} {r['amp']}: {note}" for note in r["notes"]]
    per_op = next((r["host_us_per_op"] for r in rows if "host_us_per_op" in r), {})
    if per_op:
        calls = "; ".join(f"{op} fwd {us['fwd']:.1f} ({us['fwd_launches']}) bwd {us['bwd']:.1f} ({us['bwd_launches']})"
                          for op, us in per_op.items())
        lines.append("host us one more Triton op call adds to a bf16 step, kernels stubbed (tiny CPU tensors, best "
                     f"of 5; its Triton launches in brackets): {calls}")
    return "\n".join(lines)


def _parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m bench.step", formatter_class=argparse.RawDescriptionHelpFormatter,
                                     description=__doc__.split("\n\n")[0], epilog=__doc__[__doc__.index("The step"):])
    parser.add_argument("--kernels", nargs="+", choices=kernels.BACKENDS, default=list(kernels.BACKENDS),
                        help="the backends to count, each as alexnet.train --kernels K (default: all)")
    parser.add_argument("--compiled", nargs="*", choices=kernels.BACKENDS, default=["torch"], metavar="K",
                        help="also count these backends with the whole network under torch.compile (alexnet.train "
                             "--kernels K --compile); none: give the flag alone (default: torch)")
    parser.add_argument("--amp", nargs="+", choices=AMPS, default=list(AMPS),
                        help="the step's precision: none (fp32, TF32 products) or bf16 autocast (default: both)")
    parser.add_argument("-b", "--batch-size", type=int, default=128, help="images per step (default: 128)")
    parser.add_argument("--aot-json", type=Path, metavar="FILE",
                        help="python -m perf.aot --report --json FILE's output: our kernels' time from its SASS "
                             "model (default: each launch's floor)")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the rows as a JSON list to FILE")
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error(f"argument -b/--batch-size: must be a positive int, got {args.batch_size}")
    if args.aot_json is not None:
        try:
            _aot_step_estimates(args.aot_json)
        except (OSError, ValueError, KeyError, TypeError) as error:
            parser.error(f"argument --aot-json: {args.aot_json} is not perf.aot --report --json's output "
                         f"({type(error).__name__}: {error})")
    if args.json is not None and (args.json.is_dir() or not args.json.parent.is_dir()):
        parser.error(f"argument --json: cannot write {args.json} (" +
                     ("a folder" if args.json.is_dir() else f"no folder {args.json.parent}") + ")")
    return args


def main(argv=None) -> list[dict]:
    args = _parse_args(argv)
    os.environ["TRITON_INTERPRET"] = "1"  # before Triton is imported: the ops accept the fakes' CPU tensors only
    # then (kernels.tensors.check_device); no kernel runs either way
    variants = [(k, False) for k in args.kernels] + [(k, True) for k in args.compiled]
    per_op = triton_op_host_us() if "triton" in args.kernels + args.compiled else None
    rows = []
    for backend, compile_model in variants:
        for amp in args.amp:
            start = time.perf_counter()
            rows.append(measure_row(backend, amp, args.batch_size, compile_model, args.aot_json, per_op))
            print(f"[bench.step] {row_name(backend, compile_model)} --amp {amp}: {rows[-1]['launches']['total']} "
                  f"launches, {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)
    print(f"One training step of AlexNet (1000 classes), batch {args.batch_size}: launches, host reads and bytes "
          "are COUNTS; host ms is MEASURED on this CPU with fake tensors and our kernels stubbed; est. H100 ms is "
          "an ESTIMATE (* partial: compiled regions not counted). python -m bench.step --help says how.")
    print(table(rows))
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")
    return rows


if __name__ == "__main__":
    main()
