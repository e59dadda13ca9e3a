"""The Triton max-pool against F.max_pool2d: outputs and input gradients must be EXACTLY equal.

Max-pooling does no arithmetic forward (the max is one of the inputs) and its gradient is a sum
of incoming gradients chosen by the tie rule, so there is no tolerance: any difference means the
wrong element was chosen or the sum was taken in another order. Inputs are full of ties (ReLU
zeros, small integers) because that is where the tie rule shows.
"""

import pytest
import torch
import torch.nn.functional as F

import kernels
from kernels.interpret import interpreting
from kernels.maxpool import max_pool2d, max_pool2d_bwd, max_pool2d_fwd
from tests.devices import triton_device
from tests.reference import max_pool2d_grad_fp32

pytestmark = pytest.mark.usefixtures("on_triton_device")  # tensors made here go where the kernels run
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def rounded_like_the_kernel(grad32: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """An fp32 gradient cast to `dtype` as the kernel's final cast does it: round to nearest even on a
    GPU, but the Triton interpreter truncates fp32 -> bf16 (its cast_impl passes no rounding mode)."""
    if dtype == torch.bfloat16 and interpreting():
        grad32 = (grad32.view(torch.int32) & ~0xFFFF).view(torch.float32)  # exact in bf16: no rounding left
    return grad32.to(dtype)


def reference_dx(x, dy, kernel_size=3, stride=2):
    return rounded_like_the_kernel(max_pool2d_grad_fp32(x, dy, kernel_size, stride), dy.dtype)


def make_input(kind, shape, dtype=torch.float32, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = {"randn": lambda: torch.randn(shape, generator=generator, device="cpu"),
         "relu": lambda: torch.randn(shape, generator=generator, device="cpu").relu(),  # ties everywhere
         "integers": lambda: torch.randint(-2, 3, shape, generator=generator, device="cpu").float()}[kind]()
    return x.to(triton_device(), dtype)


def check_pool(name, x, dy, kernel_size=3, stride=2):
    """Output, layout and input gradient equal F.max_pool2d's, bit for bit."""
    x = x.detach().requires_grad_()
    y = max_pool2d(x, kernel_size, stride)
    y.backward(dy)
    want = F.max_pool2d(x.detach(), kernel_size, stride)
    assert y.dtype == want.dtype and y.shape == want.shape, f"[{name}.y] {y.dtype} {tuple(y.shape)}"
    assert y.stride() == want.stride() or y.shape[0] == 1, f"[{name}.y] strides {y.stride()} != {want.stride()}"
    assert torch.equal(y, want), f"[{name}.y] differs at {(y != want).nonzero()[:5].tolist()}"
    want_dx = reference_dx(x, dy, kernel_size, stride)
    assert x.grad.dtype == x.dtype, f"[{name}.dx] dtype {x.grad.dtype}"
    assert torch.equal(x.grad, want_dx), f"[{name}.dx] differs at {(x.grad != want_dx).nonzero()[:5].tolist()}"


@pytest.mark.parametrize("name, shape", [("pool1", (1, 96, 55, 55)), ("pool2", (1, 256, 27, 27)),
                                         ("pool5", (2, 256, 13, 13))])
def test_alexnet_shapes_after_relu(name, shape):
    check_pool(name, make_input("relu", shape), torch.randn(shape[0], shape[1], *[(s - 3) // 2 + 1 for s in shape[2:]]))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_alexnet_pool2_half_channels_last(dtype):
    x = make_input("integers", (1, 256, 27, 27), dtype).contiguous(memory_format=torch.channels_last)
    check_pool(f"pool2.{dtype}", x, torch.randn(1, 256, 13, 13).to(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("kind", ["randn", "relu", "integers"])
@pytest.mark.parametrize("shape", [(3, 5, 9, 11), (2, 37, 7, 8), (1, 1, 3, 3)])
def test_ties_odd_shapes_layouts_dtypes(shape, kind, channels_last, dtype):
    x = make_input(kind, shape, dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    out = (shape[0], shape[1], (shape[2] - 3) // 2 + 1, (shape[3] - 3) // 2 + 1)
    check_pool(f"pool{shape}.{kind}", x, torch.randn(out).to(dtype))


@pytest.mark.parametrize("kernel_size, stride", [(2, 2), (3, 1), (2, 3), (1, 1), (4, 2), (5, 3), (3, 3)])
def test_window_and_stride(kernel_size, stride):
    """Overlapping, tiling and gapped windows; floor mode drops the rows and columns that do not fit."""
    x = make_input("integers", (2, 3, 12, 11))
    out = [(s - kernel_size) // stride + 1 for s in x.shape[2:]]
    check_pool(f"pool(k={kernel_size}, s={stride})", x, torch.randn(2, 3, *out), kernel_size, stride)


def test_nan_and_infinity_like_pytorch():
    """A NaN wins its window (the last NaN gets the gradient); an all -inf window gives its first element."""
    x = make_input("integers", (2, 4, 9, 9))
    x[0, 0, 1, 1] = x[0, 0, 2, 2] = x[1, 3, 4, 0] = float("nan")
    x[1, 1] = float("-inf")
    x[1, 2, ::2, ::2] = float("inf")
    dy = torch.randn(2, 4, 4, 4)
    x = x.requires_grad_()
    y = max_pool2d(x, 3, 2)
    y.backward(dy)
    want = F.max_pool2d(x.detach(), 3, 2)
    assert torch.equal(y.isnan(), want.isnan()), "[pool.nan.y] NaN positions differ"
    assert torch.equal(y.nan_to_num(), want.nan_to_num()), "[pool.nan.y] values differ"
    assert torch.equal(x.grad, reference_dx(x, dy)), "[pool.nan.dx] differs"


@pytest.mark.parametrize("layout", ["channel_slice", "spatial_stride", "transposed_hw"])
def test_non_contiguous_input_and_gradient(layout):
    big = make_input("integers", (2, 14, 22, 22))
    x = {"channel_slice": big[:, 3:12, :11, :9],
         "spatial_stride": big[:, :9, ::2, 1:19:2],
         "transposed_hw": big[:, :9, :9, :11].transpose(2, 3)}[layout]
    dy = torch.randn(2, 18, 4, 5)[:, ::2].transpose(2, 3)
    assert x.shape == (2, 9, 11, 9) and dy.shape == (2, 9, 5, 4) and not dy.is_contiguous()
    check_pool(f"pool.{layout}", x, dy)


def test_saves_one_byte_per_output():
    x = make_input("randn", (2, 3, 7, 7)).requires_grad_()
    saved = max_pool2d(x).grad_fn.saved_tensors
    assert [(t.dtype, tuple(t.shape)) for t in saved] == [(torch.uint8, (2, 3, 3, 3))], "[pool.saved]"


def test_launchers_without_autograd():
    x, dy = make_input("relu", (2, 5, 9, 9)), torch.randn(2, 5, 4, 4)
    y, choice = max_pool2d_fwd(x)
    assert torch.equal(y, F.max_pool2d(x, 3, 2)), "[max_pool2d_fwd.y]"
    assert torch.equal(max_pool2d_bwd(dy, choice, (9, 9)), reference_dx(x, dy)), "[max_pool2d_bwd.dx]"


def test_empty_batch():
    x = torch.empty(0, 5, 7, 7, requires_grad=True)
    y = max_pool2d(x)
    y.sum().backward()
    assert y.shape == (0, 5, 3, 3) and x.grad.shape == x.shape


def test_backend_and_package_function():
    assert kernels.backend("triton").max_pool2d.__wrapped__ is max_pool2d  # under the autocast wrapper
    x = make_input("relu", (1, 4, 7, 7))
    assert torch.equal(kernels.max_pool2d(x), F.max_pool2d(x, 3, 2)), "[kernels.max_pool2d.y]"


@pytest.mark.parametrize("call, error, message", [
    (lambda: max_pool2d(torch.randn(3, 9, 9)), ValueError, r"max_pool2d: x must be 4-D \(N, C, H, W\)"),
    (lambda: max_pool2d(torch.ones(1, 1, 5, 5, dtype=torch.int32)), TypeError, "max_pool2d: x has dtype torch.int32"),
    (lambda: max_pool2d(torch.randn(1, 1, 2, 9)), ValueError, "spatial size 2x9 is smaller than kernel_size 3"),
    (lambda: max_pool2d(torch.randn(1, 1, 20, 20), 17, 1), ValueError, "kernel_size 17 is too large"),
    (lambda: max_pool2d(torch.randn(1, 1, 5, 5), (3, 3)), ValueError, "kernel_size must be a positive int"),
    (lambda: max_pool2d(torch.randn(1, 1, 5, 5), 3, 0), ValueError, "stride must be a positive int, got 0"),
    (lambda: max_pool2d_bwd(torch.randn(1, 1, 2, 2), torch.zeros(1, 1, 2, 2), (5, 5)), ValueError,
     "choice must be uint8"),
])
def test_clear_errors(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_cpu_tensor_without_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="max_pool2d: x is on cpu; the Triton kernels need a CUDA tensor"):
        max_pool2d(torch.randn(1, 3, 5, 5, device="cpu"))
