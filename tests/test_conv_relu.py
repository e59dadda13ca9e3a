"""The Triton conv2d_relu (forward, dgrad, wgrad) against F.conv2d + F.relu in float64.

With no GPU the kernels run in the interpreter (tests/conftest.py), whose cost is per Python-level
step: AlexNet's five convolutions run at batch 1, except conv1's input gradient (16 stride phases of
57x57 pixels, ~100 s here), which runs on a 67x67 image by default (the same 11x11 window and stride 4,
every phase) and at full size under -m slow. The model never needs it: conv1's input is the images.
"""

import contextlib
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

import kernels
from alexnet.layers import CONVS as ALEXNET_CONVS
from kernels import conv_relu
from kernels.conv_relu import geometry as conv_geometry
from kernels.conv_relu import launch as conv_launch
from kernels.conv_relu import space_to_depth as conv_space_to_depth
from kernels.conv_relu import tiles as conv_tiles
from kernels.conv_relu.tiles import TILES
from tests.reference import conv2d_relu as reference

conv2d_relu = conv_relu.conv2d_relu

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")

# (name, dtype, tf32, atol, rtol) for |ours - float64 reference| <= atol * max|reference| + rtol * |reference|.
# atol is relative to the tensor's largest value because y, dx, dW and db are sums of 10..10^4 products
# and their scales differ by 100x. The reference runs on the same (rounded) inputs, so only our
# arithmetic is measured:
PRECISIONS = [
    # exact fp32: fp32 accumulation of up to ~10^4 terms, ~sqrt(n) * 2^-24 ~ 1e-6 of the largest value
    ("fp32", torch.float32, False, 1e-5, 1e-5),
    # tf32 (on a GPU; the interpreter's tl.dot is exact): operands cut to 10-bit mantissas, <= 2^-10 each
    ("tf32", torch.float32, True, 5e-3, 5e-3),
    # fp16: exact products, fp32 accumulation, one rounding of the result: half an ulp is 2^-11 = 4.9e-4;
    # atol (here and for bf16) covers fp32 accumulation error in elements that cancel to near 0
    ("fp16", torch.float16, False, 1e-4, 1e-3),
    # bf16: half an ulp (2^-8) on a GPU; a whole one (2^-7 = 7.8e-3) under the interpreter, whose
    # fp32 -> bf16 cast truncates (triton/runtime/interpreter.py passes no rounding mode)
    ("bf16", torch.bfloat16, False, 1e-4, 1e-2),
]
EXACT = PRECISIONS[0]

# (N, C, H, W), (K, C/groups, R, S), stride, padding, groups, bias: strides 2-4, padding 0-3, groups 1-4,
# 1x1 and non-square windows, sizes that divide no tile.
ODD = {
    "3x3": ((2, 4, 9, 9), (8, 4, 3, 3), 1, 1, 1, True),
    "3x2/2 g2": ((2, 6, 11, 13), (6, 3, 3, 2), 2, (1, 0), 2, True),
    "1x1/3 g4 no-bias": ((1, 4, 10, 10), (4, 1, 1, 1), 3, 2, 4, False),
    "5x4/(2,3) g3 pad3": ((2, 6, 17, 15), (9, 2, 5, 4), (2, 3), 3, 3, True),
    "7x7 = image": ((1, 8, 7, 7), (16, 8, 7, 7), 1, 3, 1, True),
    "2x3/4 stride > window": ((3, 5, 8, 9), (10, 5, 2, 3), 4, (0, 1), 1, True),
    "many pixels (wgrad splits)": ((3, 4, 24, 24), (8, 2, 3, 3), 1, 1, 2, True),
    # space-to-depth (few channels, strided, one group): the form's rows and columns span
    # [-pad, size*stride - pad) of x's. The first (18 channels of 3x2 taps) pads x on every side, the second
    # (32 channels, 1x1 taps) crops the rows and columns of x that no window reaches (18 > 4*4, 17 > 4*4)
    "s2d 5x4/(2,3) pad (1,2)": ((2, 3, 13, 14), (5, 3, 5, 4), (2, 3), (1, 2), 1, True),
    "s2d 4x4/4 cropped": ((1, 2, 18, 17), (7, 2, 4, 4), 4, 0, 1, False),
}


def make(x_shape, w_shape, bias, dtype, seed=0):
    """x ~ N(0, 1), w ~ N(0, 1/fan_in) so outputs are O(1) and about half pass the ReLU, b ~ N(0, 0.5^2)."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(x_shape, generator=generator).to(DEVICE, dtype)
    fan_in = w_shape[1] * w_shape[2] * w_shape[3]
    w = (torch.randn(w_shape, generator=generator) / fan_in ** 0.5).to(DEVICE, dtype)
    b = (torch.randn(w_shape[0], generator=generator) * 0.5).to(DEVICE, dtype) if bias else None
    return x, w, b


def gradient_like(y, seed=1):
    return torch.randn(y.shape, generator=torch.Generator().manual_seed(seed)).to(y.device, y.dtype)


def assert_close(name, got, want, atol, rtol):
    torch.testing.assert_close(got.double(), want, atol=atol * want.abs().max().item(), rtol=rtol,
                               msg=lambda message: f"[{name}] {message}")


def reference_grads(x, w, y, dy, stride, padding, groups):
    """(dx, dW, db) in float64 by torch's convolution gradients, the ReLU mask taken from OUR y: then a
    pre-activation within rounding of 0 (likely in tf32) cannot flip the mask, and the check is of the
    gradient kernels alone (y itself is checked against the reference forward)."""
    g = dy.double() * (y > 0)
    dx = torch.nn.grad.conv2d_input(x.shape, w.double(), g, stride, padding, 1, groups)
    dw = torch.nn.grad.conv2d_weight(x.double(), w.shape, g, stride, padding, 1, groups)
    return dx, dw, g.sum((0, 2, 3))


def check(name, x, w, b, stride, padding, groups, precision=EXACT, dy_layout=None, input_grad=True):
    """Forward and every gradient of conv2d_relu (through autograd) against float64 references."""
    _, dtype, tf32, atol, rtol = precision
    x = x.detach().requires_grad_(input_grad)
    w = w.detach().requires_grad_()
    b = b.detach().requires_grad_() if b is not None else None
    with torch.backends.cudnn.flags(allow_tf32=tf32):  # the flag the kernels follow, as cuDNN's convolutions do
        y = conv2d_relu(x, w, b, stride, padding, groups)
        dy = gradient_like(y)
        y.backward(dy_layout(dy) if dy_layout else dy)

    y_want = reference(x.detach().double(), w.detach().double(), b.detach().double() if b is not None else None,
                       stride, padding, groups)
    dx_want, dw_want, db_want = reference_grads(x, w, y, dy, stride, padding, groups)
    pairs = [("y", y, y_want), ("dW", w.grad, dw_want)]
    pairs += [("dx", x.grad, dx_want)] if input_grad else []
    pairs += [("db", b.grad, db_want)] if b is not None else []
    for what, got, want in pairs:
        assert got is not None and got.dtype == dtype, f"[{name}.{what}] missing or of the wrong dtype"
        assert_close(f"{name}.{what}", got, want, atol, rtol)


@pytest.mark.parametrize("name", list(ALEXNET_CONVS))
def test_alexnet_shapes(name):
    x_shape, w_shape, stride, padding, groups = ALEXNET_CONVS[name]
    x, w, b = make((1, *x_shape), w_shape, True, torch.float32)
    # conv1's input gradient at full size is test_conv1_input_gradient_full_size's (slow).
    check(name, x, w, b, stride, padding, groups, input_grad=name != "conv1")


def test_conv1_input_gradient_on_a_smaller_image():
    _, w_shape, stride, padding, groups = ALEXNET_CONVS["conv1"]
    x, w, b = make((1, 3, 67, 67), w_shape, True, torch.float32)  # 15x15 outputs, all 16 stride phases
    check("conv1 at 67x67", x, w, b, stride, padding, groups)


@pytest.mark.slow
def test_conv1_input_gradient_full_size():
    x_shape, w_shape, stride, padding, groups = ALEXNET_CONVS["conv1"]
    x, w, b = make((1, *x_shape), w_shape, True, torch.float32)
    check("conv1", x, w, b, stride, padding, groups)


@pytest.mark.parametrize("name", list(ODD))
def test_odd_shapes(name):
    x_shape, w_shape, stride, padding, groups, bias = ODD[name]
    x, w, b = make(x_shape, w_shape, bias, torch.float32)
    check(name, x, w, b, stride, padding, groups)


PRECISION_SHAPES = {  # (N, C, H, W), (K, C/groups, R, S), stride, padding, groups, bias
    "3x2/2 g2": ODD["3x2/2 g2"],
    "5x4/(2,3) g3 pad3": ODD["5x4/(2,3) g3 pad3"],
    "conv4 at 7x7": ((1, 384, 7, 7), ALEXNET_CONVS["conv4"][1], 1, 1, 2, True),  # its channels, 1/4 of the time
    # torchvision's conv1 (64 filters): a space-to-depth form whose 16-bit dgrad reads the forward's weight copy
    "s2d 64 filters 11x11/4 pad 2": ((1, 3, 27, 27), (64, 3, 11, 11), 4, 2, 1, True),
}


@pytest.mark.parametrize("precision", PRECISIONS[1:], ids=[p[0] for p in PRECISIONS[1:]])
@pytest.mark.parametrize("name", list(PRECISION_SHAPES))
def test_precisions(name, precision):
    x_shape, w_shape, stride, padding, groups, bias = PRECISION_SHAPES[name]
    x, w, b = make(x_shape, w_shape, bias, precision[1])
    check(f"{name}.{precision[0]}", x, w, b, stride, padding, groups, precision)


def sliced(t):
    """A non-contiguous view with t's values: every other element of a twice-as-wide tensor."""
    wide = torch.empty(*t.shape[:-1], 2 * t.shape[-1], dtype=t.dtype, device=t.device)
    wide[..., ::2] = t
    return wide[..., ::2]


def channels_last(t):
    return t.contiguous(memory_format=torch.channels_last)


def transposed(t):
    """H and W swapped in memory (strides (.., 1, H)), the values unchanged."""
    return t.transpose(2, 3).contiguous().transpose(2, 3)


LAYOUTS = {"channels_last": channels_last, "sliced": sliced, "transposed": transposed}


@pytest.mark.parametrize("x_layout, w_layout, dy_layout", [
    ("channels_last", None, "channels_last"), ("sliced", "channels_last", None),
    (None, "sliced", "sliced"), ("transposed", "transposed", "transposed")])
def test_layouts(x_layout, w_layout, dy_layout):
    x_shape, w_shape, stride, padding, groups, bias = ODD["5x4/(2,3) g3 pad3"]
    x, w, b = make(x_shape, w_shape, bias, torch.float32)
    x, w = (LAYOUTS[layout](t) if layout else t for t, layout in ((x, x_layout), (w, w_layout)))
    assert x_layout is None or not x.is_contiguous(), "the layout under test must not be the default"
    check(f"layouts x={x_layout} w={w_layout} dy={dy_layout}", x, w, b, stride, padding, groups,
          dy_layout=LAYOUTS[dy_layout] if dy_layout else None)


# The space-to-depth cases at batch 1, and two where rows and columns differ: x's rows padded (at 1 and
# 11 of 10) and its columns padded on the left and cropped on the right (-1 and 11 of 13); then rows cropped
# (10 of 11) and columns padded (-2 and 10 of 9).
S2D = {
    **{name: ((1, *case[0][1:]), *case[1:]) for name, case in ODD.items() if name.startswith("s2d")},
    "s2d 3x4/(2,4) pad 1: rows padded, columns cropped": ((1, 3, 10, 13), (5, 3, 3, 4), (2, 4), 1, 1, True),
    "s2d 4x3/(2,3) pad (0,2): rows cropped, columns padded": ((1, 2, 11, 9), (4, 2, 4, 3), (2, 3), (0, 2), 1, True),
}


@pytest.mark.parametrize("precision", [EXACT, *PRECISIONS[2:]], ids=lambda p: p[0])
@pytest.mark.parametrize("layout", ["NCHW", "channels_last"])
@pytest.mark.parametrize("name", list(S2D))
def test_space_to_depth_in_every_layout_and_dtype(name, layout, precision):
    """A strided convolution over few channels, run as its space-to-depth form, from x in either layout."""
    x_shape, w_shape, stride, padding, groups, bias = S2D[name]
    x, w, b = make(x_shape, w_shape, bias, precision[1])
    assert conv_geometry.conv_geometry(x.shape, w.shape, stride, padding, groups).runs_as, f"[{name}] not s2d"
    x = channels_last(x) if layout == "channels_last" else x
    check(f"{name} {layout}.{precision[0]}", x, w, b, stride, padding, groups, precision)


class ReadsOf(TorchDispatchMode):
    """The aten ops that read a tensor's memory (it or a view of it) into other memory: copies, casts, pads."""

    def __init__(self, t):
        super().__init__()
        self.storage, self.ops = t.untyped_storage().data_ptr(), []

    def _on_it(self, tree):
        return any(isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() == self.storage
                   for t in tree_leaves(tree))

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if self._on_it((args, kwargs)) and not self._on_it(out):
            self.ops.append(str(func))
        return out


@pytest.mark.parametrize("layout", ["channels_last", "NCHW"])
def test_conv1_copies_its_input_once_a_step_in_one_kernel(layout, monkeypatch):
    """conv1's space-to-depth copy of x is one kernel, started by the forward, whose output wgrad reuses: over
    the forward and the backward one launch of it, and no torch op reads x into other memory (F.pad and a
    permuted copy did, in the forward and again in wgrad). The fp32 weight's form, in x's dtype, is one
    launch of the same kernel (F.pad, a permuted copy and a cast were three). No kernel runs here (each launch
    is recorded instead): only the host side. The images need no input gradient."""
    x_shape, w_shape, stride, padding, groups = ALEXNET_CONVS["conv1"]
    x, w, b = make((2, *x_shape), w_shape, True, torch.float32)
    x = x.to(torch.bfloat16)  # the loader's batch: the run's dtype, channels_last
    x = channels_last(x) if layout == "channels_last" else x
    w, b = w.requires_grad_(), b.requires_grad_()  # fp32 master weights, as in a bf16 step
    started = []
    monkeypatch.setattr(conv_launch.Launch, "start", lambda launch, device: started.append(launch.kernel))
    with ReadsOf(x) as reads, ReadsOf(w) as weight_reads:
        y = conv2d_relu(x, w, b, stride, padding, groups)
        y.backward(torch.ones_like(y))
    assert w.grad is not None and b.grad is not None, "[conv1] no weight gradient"
    assert not reads.ops, f"[conv1 {layout}] x read into other memory by {reads.ops}"
    assert not weight_reads.ops, f"[conv1 {layout}] the weight read into other memory by {weight_reads.ops}"
    kernel_names = [getattr(kernel, "fn", kernel).__name__ for kernel in started]
    assert kernel_names == ["space_to_depth_kernel", "space_to_depth_kernel", "fwd_kernel", "relu_mask_kernel",
                            "wgrad_kernel"], kernel_names


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", ["conv1", "s2d 4x3/(2,3) pad (0,2): rows cropped, columns padded"])
def test_the_weights_space_to_depth_copy_is_torchs_cast_of_its_form(name, dtype):
    """The one-launch copy of an fp32 weight to its space-to-depth form in x's dtype equals torch's F.pad, permute
    and cast bit for bit, with ties to even (half the elements are made exact ties) and from a permuted weight."""
    if name == "conv1":
        x_shape, w_shape, stride, padding, groups = ALEXNET_CONVS[name]
        x_shape = (2, *x_shape)
    else:
        x_shape, w_shape, stride, padding, groups, _ = S2D[name]
    geometry = conv_geometry.conv_geometry(x_shape, w_shape, stride, padding, groups)
    w = torch.randn(w_shape, generator=torch.Generator().manual_seed(0))
    bits = w.view(torch.int32)
    ties = 0x8000 if dtype == torch.bfloat16 else 0x1000  # the half-way point below the kept mantissa bits
    bits[..., ::2] = bits[..., ::2] & ~(2 * ties - 1) | ties
    for weight in (w, w.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)):
        w2, copy = conv_launch.space_to_depth_weight_plan(weight, geometry, dtype)
        copy.start(w2.device)
        want = conv_space_to_depth.to_weight(w, geometry).to(dtype, memory_format=torch.channels_last)
        assert w2.stride() == want.stride() and torch.equal(w2, want), f"[{name} {dtype}] differs from torch's"


def test_outputs_are_channels_last():
    x, w, b = make(*ODD["3x3"][:2], True, torch.float32)
    y = conv_relu.conv2d_relu_fwd(x, w, b, 1, 1)
    dx = conv_relu.conv2d_relu_dgrad(torch.ones_like(y), y, w, x.shape, 1, 1)
    for name, t in (("y", y), ("dx", dx)):
        assert t.is_contiguous(memory_format=torch.channels_last), f"[{name}] strides {t.stride()}"


@pytest.mark.parametrize("name", ["3x2/2 g2", "64 filters 3x3/2"])
@pytest.mark.parametrize("kernel", list(TILES))
def test_every_tile(kernel, name):
    """Each tile the autotuner can pick on a GPU (the interpreter runs one per shape) gives the same answer,
    in fp32 (TF32 on a GPU while torch allows it for convolutions, so TF32's tolerance then) and in bf16. The
    weight is channels_last, as the forward's copy: with 64 filters bf16 dgrad reads it in place."""
    x_shape, w_shape, *arguments, bias = {**ODD, "64 filters 3x3/2": ((1, 4, 9, 8), (64, 4, 3, 3), 2, 1, 1, True)}[name]
    for precision in (PRECISIONS[1] if conv_launch.precision(torch.float32) == "tf32" else EXACT, PRECISIONS[3]):
        x, w, b = make(x_shape, w_shape, bias, precision[1])
        w = channels_last(w)
        y = reference(x.double(), w.double(), b.double(), *arguments).to(x.dtype)
        y = y.contiguous(memory_format=torch.channels_last)
        g, _ = conv_launch._relu_mask(gradient_like(y), y, bias=False)
        dx, dw, _ = reference_grads(x, w, y, g, *arguments)
        geometry = conv_geometry.conv_geometry(x.shape, w.shape, *arguments)
        tiles = conv_tiles.usable_tiles(kernel, x.dtype, 1 << 20, 1 << 20)  # every tile: any side fits, all divide
        assert len(tiles) == len(TILES[kernel]), f"[{kernel}] tiles {tiles}"
        for tile in tiles:
            if kernel == "fwd":
                out, plan = conv_launch.fwd_plan(x, w, b, geometry)
                want = reference(x.double(), w.double(), b.double(), *arguments)
            elif kernel == "dgrad":
                out, plan = conv_launch.dgrad_plan(g, w, geometry)
                want = dx
                in_place = name == "64 filters 3x3/2" and x.dtype == torch.bfloat16
                assert (plan.args["w_ptr"] is w) == in_place, f"[dgrad {name} {precision[0]}] in place: {not in_place}"
            else:
                out, plan = conv_launch.wgrad_plan(g, x, geometry)
                want = dw
            plan.kernel.fn[plan.grid](**plan.args, **conv_tiles.tile_meta(tile))
            got = out.sum(0) if kernel == "wgrad" else out  # wgrad's partial sums, one per split
            assert_close(f"{kernel} tile {tile} {precision[0]}", got, want, *precision[3:])


@contextlib.contextmanager
def fresh_plans():
    """The plans' arguments computed anew (they are cached per geometry and strides), for a patched helper."""
    plans = (conv_launch._mask_constants, conv_launch._fwd_constants, conv_launch._dgrad_constants,
             conv_launch._wgrad_constants)
    for plan in plans:
        plan.cache_clear()
    try:
        yield
    finally:
        for plan in plans:
            plan.cache_clear()


def test_wgrad_splits_the_reduction(monkeypatch):
    """The split-K path (several programs adding into dW) is exercised, and agrees."""
    splits = []
    original = conv_launch.wgrad_splits
    monkeypatch.setattr(conv_launch, "wgrad_splits", lambda *args: splits.append(original(*args)) or splits[-1])
    x_shape, w_shape, stride, padding, groups, bias = ODD["many pixels (wgrad splits)"]
    with fresh_plans():
        check("many pixels", *make(x_shape, w_shape, bias, torch.float32), stride, padding, groups)
    assert splits and max(splits) > 1, f"[wgrad] splits {splits}: the reduction was never split"


def test_conv1_runs_as_a_stride_one_convolution_over_48_channels():
    x_shape, w_shape, stride, padding, groups = ALEXNET_CONVS["conv1"]
    form = conv_geometry.conv_geometry((128, *x_shape), w_shape, stride, padding, groups).runs_as
    assert form and (form.C, form.R, form.S, form.H, form.W, form.stride, form.padding) == \
        (48, 3, 3, 57, 57, (1, 1), (0, 0)), f"[conv1] space-to-depth form {form}"
    for name in ("conv2", "conv3", "conv4", "conv5"):
        x_shape, w_shape, stride, padding, groups = ALEXNET_CONVS[name]
        assert conv_geometry.conv_geometry((1, *x_shape), w_shape, stride, padding, groups).runs_as is None, \
            f"[{name}]"


def test_strided_conv1_without_space_to_depth(monkeypatch):
    """The direct strided kernels (every dgrad stride phase) at conv1's window, the other path of conv1."""
    monkeypatch.setattr(conv_geometry, "S2D_MAX_CHANNELS", 0)
    conv_geometry._geometry.cache_clear()  # geometries are cached per shape
    try:
        _, w_shape, stride, padding, groups = ALEXNET_CONVS["conv1"]
        x, w, b = make((1, 3, 31, 31), w_shape, True, torch.float32)
        assert conv_geometry.conv_geometry(x.shape, w.shape, stride, padding, groups).runs_as is None
        check("conv1 direct at 31x31", x, w, b, stride, padding, groups)
    finally:
        conv_geometry._geometry.cache_clear()


@pytest.mark.parametrize("name", ["5x4/(2,3) g3 pad3", "s2d 5x4/(2,3) pad (1,2)"])
def test_64_bit_indexing_path(monkeypatch, name):
    """The int64 offsets taken when a tensor spans 2^31 elements (too big to test here) give the same answer."""
    monkeypatch.setattr(conv_launch, "layouts_need_int64", lambda *layouts: True)
    with fresh_plans():
        x_shape, w_shape, stride, padding, groups, bias = ODD[name]
        check(f"{name} INDEX_64", *make(x_shape, w_shape, bias, torch.float32), stride, padding, groups)


def test_nan_propagates_like_relu_of_conv2d():
    x, w, b = make((1, 4, 6, 6), (6, 4, 3, 3), True, torch.float32)
    x[0, 1, 2, 3] = float("nan")
    got, want = conv2d_relu(x, w, b, 1, 1), reference(x, w, b, 1, 1)
    assert torch.equal(got.isnan(), want.isnan()) and want.isnan().any(), \
        f"[y] NaN at {got.isnan().nonzero().tolist()}, reference at {want.isnan().nonzero().tolist()}"
    ok = ~want.isnan()
    assert_close("y (not NaN)", got[ok], want[ok].double(), *EXACT[3:])


def test_the_triton_backend_uses_it_and_shapes_are_alexnets():
    assert kernels.backend("triton").conv2d_relu.__wrapped__ is conv2d_relu  # under the autocast wrapper
    from alexnet.model import AlexNet
    with torch.device("meta"):
        model = AlexNet()
    for name, (x_shape, w_shape, stride, padding, groups) in ALEXNET_CONVS.items():
        layer = getattr(model, name)
        assert (tuple(layer.weight.shape), layer.stride, layer.padding, layer.groups) == \
               (w_shape, (stride,) * 2, (padding,) * 2, groups), f"[{name}] alexnet.layers differs from the model"
        assert layer.in_channels == x_shape[0], f"[{name}] input channels"


def errors():
    x, w, b = make((1, 4, 8, 8), (6, 2, 3, 3), True, torch.float32)
    return [
        ("x 3-D", (x[0], w, b, 1, 0, 2), ValueError, "x must be a 4-D tensor"),
        ("weight 3-D", (x, w[0], b, 1, 0, 2), ValueError, "weight must be a 4-D tensor"),
        ("integer x", (x.long(), w.long(), None, 1, 0, 2), TypeError, "x has dtype torch.int64"),
        ("dtype mismatch", (x, w.half(), b, 1, 0, 2), TypeError, "weight has dtype torch.float16"),
        ("groups do not divide C", (x, w, b, 1, 0, 3), ValueError, "divisible by groups=3"),
        ("weight channels", (x, w, b, 1, 0, 1), ValueError, "expects 2 input channels with groups=1, but x has 4"),
        ("output size 0", (x[..., :2, :2], w, b, 1, 0, 2), ValueError, "output size would be 0x0"),
        ("bias shape", (x, w, b[:3], 1, 0, 2), ValueError, "bias must have shape"),
        ("stride 0", (x, w, b, 0, 0, 2), ValueError, "stride must be >= 1"),
        ("stride triple", (x, w, b, (1, 1, 1), 0, 2), TypeError, "stride must be an int or a pair"),
        ("device mismatch", (x, w.to("meta"), b, 1, 0, 2), ValueError, f"weight is on meta but x is on {DEVICE}"),
    ]


@pytest.mark.parametrize("case", errors(), ids=lambda case: case[0])
def test_clear_errors(case):
    _, args, error, message = case
    with pytest.raises(error, match=message):
        conv2d_relu(*args)


def test_cpu_tensor_without_the_interpreter_is_refused(monkeypatch):
    monkeypatch.setattr(kernels.tensors, "interpreting", lambda: False)
    x, w, b = (t.cpu() for t in make((1, 4, 8, 8), (6, 2, 3, 3), True, torch.float32))
    with pytest.raises(ValueError, match="x is on cpu; the Triton kernels need a CUDA tensor"):
        conv2d_relu(x, w, b, 1, 0, 2)


@pytest.mark.parametrize("name", ["3x3", "3x2/2 g2", "s2d 5x4/(2,3) pad (1,2)"])
def test_a_strided_bias_is_read_by_its_stride(name):
    """A bias that is a view with stride 2 (every other element of a wider tensor) is read as such."""
    x_shape, w_shape, stride, padding, groups, _ = ODD[name]
    x, w, b = make(x_shape, w_shape, True, torch.float32)
    wide = torch.randn(2 * b.numel(), generator=torch.Generator().manual_seed(7)).to(DEVICE, b.dtype)
    wide[::2] = b
    assert wide[::2].stride() == (2,)
    check(f"{name} strided bias", x, w, wide[::2], stride, padding, groups)


def test_fp32_precision_follows_torchs_convolution_flag():
    """fp32 runs TF32 when torch allows it for cuDNN's convolutions (the default) and exact fp32 ("ieee")
    when not; 16-bit inputs are exact either way. The exact path itself is what every EXACT check runs."""
    x, w, b = make(*ODD["3x3"][:2], True, torch.float32)
    geometry = conv_geometry.conv_geometry(x.shape, w.shape, 1, 1, 1)
    for allowed, want in ((True, "tf32"), (False, "ieee")):
        with torch.backends.cudnn.flags(allow_tf32=allowed):
            assert conv_launch.precision(torch.float32) == want, f"[precision] allow_tf32={allowed}"
            assert conv_launch.fwd_plan(x, w, b, geometry)[1].args["PRECISION"] == want, "[fwd PRECISION]"
            assert conv_launch.precision(torch.bfloat16) == "ieee", "[precision] bf16"


def test_wgrad_is_reproducible_and_uses_no_atomics():
    """dW of two identical calls is bit-identical with the reduction split (partials summed in a fixed order),
    and no kernel under kernels/ uses an atomic (whose order would change the sum run to run on a GPU)."""
    from pathlib import Path

    x_shape, w_shape, stride, padding, groups, bias = ODD["many pixels (wgrad splits)"]
    x, w, b = make(x_shape, w_shape, bias, torch.float32)
    y = conv2d_relu(x, w, b, stride, padding, groups)
    dy = gradient_like(y)
    first, second = (conv_relu.conv2d_relu_wgrad(dy, y, x, w.shape, stride, padding, groups) for _ in range(2))
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1]), "[dW] differs between two calls"
    for path in Path(kernels.__file__).parent.rglob("*.py"):
        assert "atomic_" not in path.read_text(), f"[{path.name}] uses an atomic"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("case", ["3x2/2 g2", "s2d 5x4/(2,3) pad (1,2)"])
def test_fp32_master_weights_give_the_16_bit_answers_and_fp32_gradients(case, dtype):
    """With fp32 weight and bias and 16-bit x (the trainer's master weights), the conv computes exactly what
    it computes on the weights cast to x's dtype, and returns dW and db in fp32: the fp32 sums that the
    16-bit path rounds (so no cast runs after the backward)."""
    x_shape, w_shape, stride, padding, groups, bias = ODD[case]
    x, w, b = make(x_shape, w_shape, bias, torch.float32)
    x, b = x.to(dtype), b.to(dtype).float()  # an fp32 bias is added unrounded: make it one the 16-bit path has
    w16, b16 = w.to(dtype).requires_grad_(), b.to(dtype).requires_grad_()
    w, b = w.requires_grad_(), b.requires_grad_()
    x16, x32 = x.clone().requires_grad_(), x.clone().requires_grad_()
    y16, y = conv2d_relu(x16, w16, b16, stride, padding, groups), conv2d_relu(x32, w, b, stride, padding, groups)
    assert y.dtype == dtype and torch.equal(y, y16), f"[{case}.y] fp32 weights changed the forward"
    dy = gradient_like(y)
    y16.backward(dy)
    y.backward(dy)
    assert torch.equal(x32.grad, x16.grad), f"[{case}.dx] differs"
    for name, master, cast in (("dW", w, w16), ("db", b, b16)):
        assert master.grad.dtype == torch.float32, f"[{case}.{name}] is {master.grad.dtype}"
        assert torch.equal(master.grad.to(dtype), cast.grad), f"[{case}.{name}] is not the sum the 16-bit path rounds"


def test_under_autocast_the_triton_conv_reads_the_fp32_parameters_with_no_cast_node():
    """Autocast casts only the activations for the Triton conv: the weight and bias reach the op (and their
    gradients .grad) with no cast between, so a step has no per-weight cast and no gradient cast."""
    x, w, b = make((2, 4, 9, 9), (8, 4, 3, 3), True, torch.float32)
    w, b = w.requires_grad_(), b.requires_grad_()
    with torch.autocast(DEVICE.type, dtype=torch.bfloat16):
        y = kernels.backend("triton").conv2d_relu(x, w, b, 1, 1, 1)
    assert y.dtype == torch.bfloat16
    inputs = [fn for fn, _ in y.grad_fn.next_functions if fn is not None]
    assert [type(fn).__name__ for fn in inputs].count("AccumulateGrad") == 2, [type(fn).__name__ for fn in inputs]
    y.float().sum().backward()
    assert w.grad.dtype == b.grad.dtype == torch.float32


def test_a_16_bit_weight_with_fp32_x_is_refused():
    x, w, b = make((1, 4, 9, 9), (8, 4, 3, 3), True, torch.float32)
    with pytest.raises(TypeError, match="weight has dtype torch.bfloat16 but x has torch.float32"):
        conv2d_relu(x, w.to(torch.bfloat16), None)
    with pytest.raises(ValueError, match="bias must have shape \\(8,\\) and weight's dtype torch.float32"):
        conv2d_relu(x.to(torch.bfloat16), w, b.to(torch.bfloat16))


@pytest.mark.parametrize("dtype, layout, channels, in_place", [
    (torch.float32, None, 64, False), (torch.bfloat16, None, 64, False), (torch.float32, "channels_last", 64, False),
    (torch.bfloat16, "channels_last", 64, True), (torch.float16, "channels_last", 128, True),
    (torch.bfloat16, "channels_last", 96, False), (torch.bfloat16, "channels_last fp32", 64, False)])
def test_which_weight_dgrad_reads(dtype, layout, channels, in_place):
    """dgrad's reduction runs over (tap, k). A weight in the gradient's 16-bit dtype and channels_last (the copy
    the forward read) is read in place when K/groups is a multiple of BLOCK_K (one tap per step). Any other is
    copied k-contiguous in the gradient's dtype, also when no cast is needed: a TF32 product, or the
    element-wise reduction, reading the channels contiguous is issue-bound on sm_90 (R > 1 in perf.aot)."""
    geometry = conv_geometry.conv_geometry((2, 8, 9, 9), (channels, 8, 3, 3), 1, 1, 1)
    g = torch.empty(2, channels, 9, 9, dtype=dtype, device="meta").contiguous(memory_format=torch.channels_last)
    weight = torch.empty(channels, 8, 3, 3, device="meta", dtype=torch.float32 if layout != "channels_last" else dtype)
    weight = channels_last(weight) if layout else weight
    _, plan = conv_launch.dgrad_plan(g, weight, geometry)
    w = plan.args["w_ptr"]
    if in_place:
        assert w is weight, "a copy of the forward's weight was made"
    else:
        assert w.dtype == dtype and w.stride() == (1, 3 * 3 * channels, 3 * channels, channels), w.stride()


def test_a_16_bit_backward_reads_the_weight_copy_the_forward_made(monkeypatch):
    """In a bf16 step the fp32 master weight is copied once, cast channels_last by the forward, and dgrad reads
    that copy (K/groups = 64): the backward reads the weight into no other memory (it made a k-contiguous copy)."""
    x, w, b = make((1, 8, 5, 5), (64, 8, 3, 3), True, torch.float32)
    x, w, b = x.to(torch.bfloat16).requires_grad_(), w.requires_grad_(), b.requires_grad_()
    started = {}
    monkeypatch.setattr(conv_launch.Launch, "start",
                        lambda launch, device: started.setdefault(launch.kernel.fn.__name__, launch.args))
    with ReadsOf(w) as forward_reads:
        y = conv2d_relu(x, w, b, 1, 1)
    with ReadsOf(w) as backward_reads:
        y.backward(torch.ones_like(y))
    assert forward_reads.ops == ["aten._to_copy.default"], forward_reads.ops
    assert not backward_reads.ops, f"the backward read the weight into other memory: {backward_reads.ops}"
    assert started["dgrad_kernel"]["w_ptr"] is started["fwd_kernel"]["w_ptr"], "dgrad read another copy"
    assert w.grad.dtype == torch.float32 and b.grad.dtype == torch.float32


# ----------------------------------------------------------------------------------------------------------
# The first layer's input form (conv2d_relu_input, input_form=True)

STEP_INPUT = (torch.float16, torch.bfloat16)  # the DALI loader's float16 images, for a bf16 step
INPUT_FORMS = [  # (x's dtype, the form's): a cast down, a cast up, none
    STEP_INPUT, (torch.float32, torch.float16), (torch.bfloat16, torch.bfloat16), (torch.float32, torch.float32)]
# the small space-to-depth convolutions in every layout and cast; AlexNet's conv1 (~10 s here) as a step has it
INPUT_FORM_CASES = [(name, layout, dtypes) for name in S2D for layout in ("channels_last", "NCHW", "strided")
                    for dtypes in INPUT_FORMS] + [("conv1 batch 1", "channels_last", STEP_INPUT)]


@pytest.mark.parametrize("name,layout,dtypes", INPUT_FORM_CASES, ids=lambda v: v if isinstance(v, str) else
                         "->".join(str(t).removeprefix("torch.") for t in v))
def test_an_input_form_gives_the_convolution_of_the_images_cast(name, layout, dtypes):
    """conv2d_relu on conv2d_relu_input's form of x (one pass: the space-to-depth copy, cast) equals
    conv2d_relu on x cast with torch, forward and weight and bias gradients bit for bit, from x in any layout
    (a strided view of a larger tensor too); the form is the forward's own copy of x.to(dtype)."""
    if name == "conv1 batch 1":
        x_shape, w_shape, stride, padding, groups = ALEXNET_CONVS["conv1"]
        x_shape, bias = (1, *x_shape), True
    else:
        x_shape, w_shape, stride, padding, groups, bias = S2D[name]
    source, dtype = dtypes
    x, w, b = make(x_shape, w_shape, bias, torch.float32)
    x = x.to(source)
    x = {"channels_last": channels_last(x), "NCHW": x, "strided": channels_last(torch.cat([x, x], 3))[..., ::2]}[layout]
    form = conv_relu.conv2d_relu_input(x, w.shape, stride, padding, groups, dtype=dtype)
    geometry = conv_geometry.conv_geometry(x.shape, w.shape, stride, padding, groups)
    assert form.shape == geometry.runs_as.x_shape and form.dtype == dtype
    assert torch.equal(form, conv_launch.kernel_input(x.to(dtype), geometry)), f"[{name}] the form differs"
    results = []
    for images, input_form in ((x.to(dtype), False), (form, True)):
        w_, b_ = w.clone().requires_grad_(), b.clone().requires_grad_() if b is not None else None
        y = conv2d_relu(images, w_, b_, stride, padding, groups, input_form=input_form)
        y.backward(gradient_like(y))
        results.append([y, w_.grad] + ([b_.grad] if b is not None else []))
    for what, plain, formed in zip(("y", "dW", "db"), *results):
        assert torch.equal(plain, formed), f"[{name} {layout} {dtypes}] {what} differs on the input form"


def test_an_input_form_is_written_into_a_given_buffer_and_checked():
    x_shape, w_shape, stride, padding, groups = ALEXNET_CONVS["conv1"]
    x, w, b = make((2, *x_shape), w_shape, True, torch.float32)
    form = conv_relu.conv2d_relu_input(x, w.shape, stride, padding, groups, dtype=torch.bfloat16)
    out = torch.empty_like(form)
    assert conv_relu.conv2d_relu_input(x, w.shape, stride, padding, groups, torch.bfloat16, out=out) is out
    assert torch.equal(out, form)
    for wrong in (out.float(), out[:1], out.contiguous(), torch.empty(out.shape, dtype=torch.bfloat16)):
        with pytest.raises(ValueError, match="out must be a channels_last tensor of shape"):
            conv_relu.conv2d_relu_input(x, w.shape, stride, padding, groups, torch.bfloat16, out=wrong)
    with pytest.raises(ValueError, match="an input form .* gets no gradient"):
        conv2d_relu(form.requires_grad_(), w, b, stride, padding, groups, input_form=True)
    with pytest.raises(ValueError, match=r"x of shape \(2, 47, 57, 57\) is given as an input form, but it is not"):
        conv2d_relu(form.detach()[:, :47], w, b, stride, padding, groups, input_form=True)
    with pytest.raises(TypeError, match="conv2d_relu_input: dtype torch.int32"):
        conv_relu.conv2d_relu_input(x, w.shape, stride, padding, groups, dtype=torch.int32)


def test_without_space_to_depth_the_input_form_is_the_input_cast():
    """A convolution that runs on x itself: its input form is x cast (into `out`, any layout), and
    input_form=True changes nothing, input gradient included."""
    x_shape, w_shape, stride, padding, groups, bias = ODD["3x3"]
    x, w, b = make(x_shape, w_shape, bias, torch.float32)
    form = conv_relu.conv2d_relu_input(x, w.shape, stride, padding, groups, dtype=torch.float16)
    assert torch.equal(form, x.half())
    out = channels_last(torch.empty_like(form))
    assert conv_relu.conv2d_relu_input(x, w.shape, stride, padding, groups, torch.float16, out=out) is out
    assert torch.equal(out, x.half())
    check("3x3 as input form", x, w, b, stride, padding, groups)  # the plain path, for the reference
    xs = [x.clone().requires_grad_() for _ in range(2)]
    ys = [conv2d_relu(xi, w, b, stride, padding, groups, input_form=as_form) for xi, as_form in zip(xs, (False, True))]
    for y in ys:
        y.backward(gradient_like(y))
    assert torch.equal(ys[0], ys[1]) and torch.equal(xs[0].grad, xs[1].grad)
