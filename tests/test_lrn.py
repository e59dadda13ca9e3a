"""The Triton LRN against F.local_response_norm (fp32) and the paper's formula (float64).

With no GPU the kernels run in the interpreter (tests/conftest.py), so shapes stay small except
for AlexNet's own two LRN shapes at batch 1.
"""

import pytest
import torch

import kernels
from alexnet.layers import LRN as PAPER
from kernels.local_response_norm import lrn, lrn_bwd, lrn_fwd
from tests.devices import triton_device
from tests.reference import lrn as torch_lrn
from tests.reference import lrn_grad_float64, lrn_paper_float64

pytestmark = pytest.mark.usefixtures("on_triton_device")  # tensors made here go where the kernels run

# (dtype, atol, rtol) against the unrounded fp32 / float64 references. Our math is fp32 with one
# final rounding, so the output is off by at most half an ulp of its dtype plus fp32 error:
TOLERANCES = [
    # fp32: a different summation order and pow as exp2(log2): a few ulp (6e-8 each)
    (torch.float32, 1e-6, 1e-5),
    # fp16: half an ulp is 2^-11 = 4.9e-4 relative; atol for fp32 cancellation in dx near 0
    (torch.float16, 1e-5, 1e-3),
    # bf16: half an ulp (2^-8) on a GPU; a whole one (2^-7 = 7.8e-3) under the interpreter, whose
    # fp32 -> bf16 cast truncates (triton/runtime/interpreter.py passes no rounding mode)
    (torch.bfloat16, 1e-5, 1e-2),
]
TOLERANCE = {dtype: (atol, rtol) for dtype, atol, rtol in TOLERANCES}


@pytest.fixture(autouse=True)
def seeded():
    """Each test draws its random inputs (dy) from the same seed whatever ran before it: a test's
    inputs, and so its outcome, must not depend on which tests the run holds or their order."""
    torch.manual_seed(0)


def activations(shape, dtype=torch.float32, alpha=PAPER["alpha"], k=PAPER["k"], seed=0):
    """Random input scaled so that alpha * (sum of a^2 over a window) is about k: at N(0, 1) and the
    paper's alpha the denominator would be ~2 whatever the window, and a wrong window would pass."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=generator, device="cpu") * (k / alpha) ** 0.5 / 2
    return x.to(triton_device(), dtype)


def check_lrn(name, x, dy, **params):
    """Forward and input gradient of the Triton LRN against both references."""
    atol, rtol = TOLERANCE[x.dtype]
    x = x.detach().requires_grad_()
    y = lrn(x, **params)
    y.backward(dy)
    assert y.dtype == x.dtype and x.grad.dtype == x.dtype, f"[{name}] dtypes {y.dtype}, {x.grad.dtype}"
    layout = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
    assert y.is_contiguous(memory_format=layout), f"[{name}.y] strides {y.stride()}, input {x.stride()}"

    x32 = x.detach().float().requires_grad_()
    y32 = torch_lrn(x32, **params)
    y32.backward(dy.float())
    for what, got, want in (("y", y, y32), ("dx", x.grad, x32.grad),
                            ("y", y, lrn_paper_float64(x.detach(), **params)),
                            ("dx", x.grad, lrn_grad_float64(x.detach(), dy, **params))):
        reference = "float64 paper formula" if want.dtype == torch.float64 else "F.local_response_norm"
        torch.testing.assert_close(got.double(), want.double(), atol=atol, rtol=rtol,
                                   msg=lambda m: f"[{name}.{what}] vs {reference}: {m}")


@pytest.mark.parametrize("name, shape", [("lrn1", (1, 96, 55, 55)), ("lrn2", (1, 256, 27, 27))])
def test_alexnet_shapes_fp32(name, shape):
    x = activations(shape)
    check_lrn(name, x, torch.randn(shape), **PAPER)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_alexnet_lrn2_half_channels_last(dtype):
    x = activations((1, 256, 27, 27), dtype).contiguous(memory_format=torch.channels_last)
    check_lrn(f"lrn2.{dtype}", x, torch.randn(x.shape).to(dtype), **PAPER)


@pytest.mark.parametrize("dtype", [dtype for dtype, _, _ in TOLERANCES])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("shape", [(3, 7, 5, 9), (2, 37, 1, 1), (1, 1, 4, 3), (2, 3, 13, 2)])
def test_odd_shapes(shape, channels_last, dtype):
    x = activations(shape, dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    check_lrn(f"odd{shape}", x, torch.randn(shape).to(dtype), **PAPER)


@pytest.mark.parametrize("size, alpha, beta, k", [
    (1, 1e-4, 0.75, 2.0), (2, 1e-4, 0.75, 2.0), (3, 1e-2, 0.5, 1.0), (4, 1.0, 0.75, 1.0),
    (6, 1e-3, 1.0, 0.5), (7, 1e-4, 1.5, 2.0), (9, 1e-2, 0.75, 3.0), (40, 1e-3, 0.75, 1.0),
])
def test_parameters(size, alpha, beta, k):
    """Odd and even windows (even ones: size//2 before, (size-1)//2 after), windows wider than C."""
    x = activations((2, 11, 6, 5), alpha=alpha, k=k)
    check_lrn(f"lrn(size={size}, alpha={alpha}, beta={beta}, k={k})", x, torch.randn(x.shape),
              size=size, alpha=alpha, beta=beta, k=k)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("size, beta", [(2, 0.75), (9, 0.75), (17, 1.25), (6, 0.75)])
def test_channel_window_across_chunks_channels_last(size, beta, dtype):
    """channels_last walks the channels in 16-byte chunks (4 fp32, 8 bf16) with ceil(size/2 / chunk)
    chunks of look-behind and look-ahead: windows spanning one, two and three chunks, C (13) not a
    multiple of the chunk, even sizes, and the general-beta path."""
    x = activations((2, 13, 3, 2), dtype).contiguous(memory_format=torch.channels_last)
    check_lrn(f"lrn.channels_last(size={size}, beta={beta})", x, torch.randn(x.shape).to(dtype),
              size=size, alpha=1e-4, beta=beta, k=2.0)


# the interpreter warns about the 0 * inf it computes for the missing channels before masking them
@pytest.mark.filterwarnings("ignore:overflow encountered in multiply", "ignore:invalid value encountered in multiply")
def test_tiny_k_masks_the_terms_past_the_last_channel():
    """With k tiny (2^-110) the backward cannot rely on d >= k to keep the terms of missing channels
    finite, so it zeroes them explicitly (MASK_TERMS); the result must not change."""
    x = activations((2, 11, 2, 3), k=1.0)
    check_lrn("lrn(k=2^-110)", x, torch.randn(x.shape), size=5, alpha=1e-4, beta=0.75, k=2.0**-110)


def test_inputs_make_the_window_matter():
    """Guards the tests above: on their inputs a window off by one moves a typical output by more
    than even the bf16 tolerance (with unscaled N(0, 1) inputs it would move it by ~1e-5)."""
    x = activations((2, 11, 6, 5))
    gap = (lrn_paper_float64(x, 5) - lrn_paper_float64(x, 4)).abs() / lrn_paper_float64(x, 5).abs()
    assert gap.median() > TOLERANCE[torch.bfloat16][1], f"[lrn.window] median relative gap {gap.median():.2e}"


@pytest.mark.parametrize("layout", ["channel_slice", "spatial_stride", "transposed_hw"])
def test_non_contiguous_input_and_gradient(layout):
    shape = (2, 9, 7, 6)
    big = activations((2, 14, 14, 12))
    x = {"channel_slice": big[:, 3:12, :7, :6],  # H and W still merge: read in place
         "spatial_stride": big[:, :9, ::2, ::2],  # H and W cannot merge: copied first
         "transposed_hw": big[:, :9, :6, :7].transpose(2, 3)}[layout]
    dy = torch.randn(2, 18, 6, 7)[:, ::2].transpose(2, 3)  # strided channels, transposed H and W
    assert x.shape == dy.shape == shape and not x.is_contiguous() and not dy.is_contiguous()
    check_lrn(f"lrn.{layout}", x, dy, **PAPER)


def test_launchers_without_autograd():
    x, dy = activations((2, 6, 3, 4)), torch.randn(2, 6, 3, 4)
    torch.testing.assert_close(lrn_fwd(x, **PAPER), torch_lrn(x, **PAPER), atol=1e-6, rtol=1e-5,
                               msg=lambda m: f"[lrn_fwd.y] {m}")
    torch.testing.assert_close(lrn_bwd(dy, x, **PAPER).double(), lrn_grad_float64(x, dy, **PAPER),
                               atol=1e-6, rtol=1e-5, msg=lambda m: f"[lrn_bwd.dx] {m}")


def test_saves_only_the_input():
    x = activations((1, 4, 2, 2)).requires_grad_()
    saved = lrn(x).grad_fn.saved_tensors
    assert len(saved) == 1 and saved[0] is x, "[lrn.saved] backward should keep only x"


def test_empty_batch():
    x = torch.empty(0, 5, 3, 3, requires_grad=True)
    y = lrn(x)
    y.sum().backward()
    assert y.shape == x.shape and x.grad.shape == x.shape


def test_backend_and_package_function():
    """backend("triton") serves this op, and importing it leaves the package's kernels.lrn callable."""
    assert kernels.backend("triton").lrn.__wrapped__ is lrn  # under the autocast wrapper
    x = activations((1, 6, 2, 3))
    assert callable(kernels.lrn), "[kernels.lrn] shadowed by a submodule"
    torch.testing.assert_close(kernels.lrn(x), torch_lrn(x), atol=1e-6, rtol=1e-5,
                               msg=lambda m: f"[kernels.lrn.y] {m}")


@pytest.mark.parametrize("call, error, message", [
    (lambda: lrn(torch.randn(2, 3, 4)), ValueError, r"lrn: x must be 4-D \(N, C, H, W\), got shape \(2, 3, 4\)"),
    (lambda: lrn(torch.ones(1, 3, 2, 2, dtype=torch.int64)), TypeError, "lrn: x has dtype torch.int64"),
    (lambda: lrn(torch.randn(1, 3, 2, 2, dtype=torch.float64)), TypeError, "lrn: x has dtype torch.float64"),
    (lambda: lrn([[1.0]]), TypeError, "lrn: x must be a torch.Tensor"),
    (lambda: lrn(torch.randn(1, 3, 2, 2), size=0), ValueError, "lrn: size must be a positive int, got 0"),
    (lambda: lrn(torch.randn(1, 3, 2, 2), size=2.5), ValueError, "lrn: size must be a positive int, got 2.5"),
    (lambda: lrn_bwd(torch.randn(1, 3, 2, 1), torch.randn(1, 3, 2, 2)), ValueError, "lrn: dy has shape"),
])
def test_clear_errors(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_cpu_tensor_without_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="lrn: x is on cpu; the Triton kernels need a CUDA tensor"):
        lrn(torch.randn(1, 3, 2, 2, device="cpu"))
