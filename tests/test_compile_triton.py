"""The Triton ops as torch.compile sees them: custom ops (alexnet::conv2d_relu, ::lrn, ::max_pool2d and their
backward ops) that Dynamo traces with no graph break, forward and backward, giving what the eager ops give.

The ops are compiled with the aot_eager backend (Dynamo + AOTAutograd, no Inductor code generation): what is
checked is the tracing and the custom ops' fake implementations (shapes, strides, dtypes), and the values
through the compiled graph. The whole model's trace runs with the kernels stubbed (kernels.tensors.launch
a no-op): interpreted, a batch-1 AlexNet step takes minutes, and every kernel's values are checked above
and in the ops' own tests. On a GPU the same custom ops are what `--compile` captures in CUDA graphs.
"""

import pytest
import torch
import torch._dynamo.testing

import kernels
from alexnet.model import AlexNet
from kernels import tensors
from tests.devices import triton_device

DEVICE = triton_device()


def compiled(fn):
    """fn compiled whole (fullgraph: a graph break is an error) and a counter of its graphs."""
    counter = torch._dynamo.testing.CompileCounterWithBackend("aot_eager")
    return torch.compile(fn, backend=counter, fullgraph=True, dynamic=False), counter


def small_net(x, w, b):
    y = kernels.conv2d_relu(x, w, b, (2, 1), 1, 2)
    return kernels.max_pool2d(kernels.lrn(y), 3, 2)


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_compiled_ops_trace_whole_and_match_eager(layout, dtype):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 6, 13, 11, generator=generator).to(DEVICE, dtype).contiguous(memory_format=layout)
    w = (torch.randn(8, 3, 3, 3, generator=generator) / 3).to(DEVICE, dtype)
    b = torch.randn(8, generator=generator).to(DEVICE, dtype)
    dy = torch.randn(2, 8, 3, 5, generator=generator).to(DEVICE, dtype)
    results = []
    for fn in (small_net, compiled(small_net)[0]):
        inputs = [t.detach().clone().requires_grad_() for t in (x, w, b)]
        y = fn(*inputs)
        y.backward(dy)
        results.append((y, *(t.grad for t in inputs)))
    for name, eager, traced in zip(("y", "dx", "dW", "db"), *results):
        assert traced.dtype == eager.dtype and traced.shape == eager.shape, f"[{name}] {traced.dtype} {traced.shape}"
        assert traced.stride() == eager.stride(), f"[{name}] strides {traced.stride()} vs eager {eager.stride()}"
        assert torch.equal(traced, eager), f"[{name}] the compiled graph differs from the eager ops"


def test_a_convolution_on_its_input_form_traces_whole_and_matches_eager():
    """conv2d_relu(..., input_form=True) on conv2d_relu_input's space-to-depth form (conv1's, in the step),
    through the custom op: the forward and the weight and bias gradients of the eager op, bit for bit."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 13, 14, generator=generator).to(DEVICE, torch.float16)
    w = (torch.randn(5, 3, 5, 4, generator=generator) / 8).to(DEVICE)
    b = torch.randn(5, generator=generator).to(DEVICE)
    form = kernels.conv2d_relu_input(x, w.shape, (2, 3), (1, 2), dtype=torch.bfloat16)

    def conv(form, w, b):
        return kernels.conv2d_relu(form, w, b, (2, 3), (1, 2), input_form=True)
    results = []
    for fn in (conv, compiled(conv)[0]):
        w_, b_ = w.clone().requires_grad_(), b.clone().requires_grad_()
        y = fn(form, w_, b_)
        y.backward(torch.ones_like(y))
        results.append((y, w_.grad, b_.grad))
    for name, eager, traced in zip(("y", "dW", "db"), *results):
        assert torch.equal(traced, eager), f"[{name}] the compiled graph differs from the eager op"


@pytest.mark.slow
def test_the_model_on_triton_compiles_as_one_graph(monkeypatch):
    """torch.compile(AlexNet(kernels="triton"), fullgraph=True): one graph forward, and backward through the
    custom ops' gradients (kernels stubbed: see the top). ~1.5-3.5 min here: Dynamo and AOTAutograd over
    the whole model on 2 cores."""
    monkeypatch.setattr(tensors, "launch", lambda *args, **kwargs: None)
    torch.manual_seed(0)
    model = AlexNet(num_classes=10, kernels="triton").to(DEVICE).train()
    step, counter = compiled(lambda images: model(images).float().square().mean())
    loss = step(torch.randn(1, 3, 227, 227, device=DEVICE))
    loss.backward()
    assert counter.frame_count == 1, f"[compile] {counter.frame_count} graphs: a graph break"
    names = {str(node.target) for graph in counter.graphs for node in graph.graph.nodes}
    for op in ("alexnet.conv2d_relu", "alexnet.lrn", "alexnet.max_pool2d"):
        assert any(op in name for name in names), f"[compile] {op} not in the graph: {sorted(names)[:20]}"
    assert all(p.grad is not None for p in model.parameters()), "[compile] a parameter got no gradient"
