"""The shape of one convolution, checked and derived once: a frozen record every plan and kernel reads by name.

`conv_geometry(x_shape, w_shape, stride, padding, groups)` checks that the shapes make a convolution and
returns its ConvGeometry, cached per shape (a training step sees the same few shapes over and over).
`runs_as` is the convolution the kernels actually run: itself, or for a strided convolution over few channels
its space-to-depth form (kernels/conv_relu/space_to_depth.py), a stride-1 convolution over sh*sw*C channels.
"""

import functools
from dataclasses import dataclass

S2D_MAX_CHANNELS = 64  # strided convolutions with at most this many channels after space-to-depth use it


@dataclass(frozen=True)
class ConvGeometry:
    N: int
    C: int
    H: int
    W: int
    K: int
    R: int
    S: int
    stride: tuple[int, int]
    padding: tuple[int, int]
    groups: int
    P: int
    Q: int
    runs_as: "ConvGeometry | None" = None  # the space-to-depth form, when it applies; None: this one runs

    @property
    def x_shape(self):
        return (self.N, self.C, self.H, self.W)

    @property
    def w_shape(self):
        return (self.K, self.C // self.groups, self.R, self.S)

    @property
    def y_shape(self):
        return (self.N, self.K, self.P, self.Q)

    @property
    def kernel_form(self) -> "ConvGeometry":
        """The convolution the kernels run."""
        return self.runs_as or self

    def constants(self) -> dict:
        """The constexpr geometry the three GEMM kernels share."""
        return dict(H=self.H, W=self.W, P=self.P, Q=self.Q, CG=self.C // self.groups, KG=self.K // self.groups,
                    KH=self.R, KW=self.S, STRIDE_H=self.stride[0], STRIDE_W=self.stride[1],
                    PAD_H=self.padding[0], PAD_W=self.padding[1])


def pair(value, name: str) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in pair):
        raise TypeError(f"conv2d_relu: {name} must be an int or a pair of ints, got {value!r}")
    return pair


def conv_geometry(x_shape, w_shape, stride, padding, groups) -> ConvGeometry:
    """The checked geometry of conv2d(x, w, stride=stride, padding=padding, groups=groups)."""
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
        raise ValueError(f"conv2d_relu: groups must be a positive int, got {groups!r}")
    return _geometry(tuple(x_shape), tuple(w_shape), pair(stride, "stride"), pair(padding, "padding"), groups)


@functools.lru_cache(maxsize=256)
def _geometry(x_shape, w_shape, stride, padding, groups) -> ConvGeometry:
    if min(stride) < 1 or min(padding) < 0:
        raise ValueError(f"conv2d_relu: stride must be >= 1 and padding >= 0, got stride={stride}, padding={padding}")
    (N, C, H, W), (K, CG, R, S) = x_shape, w_shape
    if C % groups or K % groups:
        raise ValueError(f"conv2d_relu: x's {C} channels and weight's {K} filters must both be divisible "
                         f"by groups={groups}")
    if CG != C // groups:
        raise ValueError(f"conv2d_relu: weight of shape {w_shape} expects {CG * groups} input channels "
                         f"with groups={groups}, but x has {C}")
    P = (H + 2 * padding[0] - R) // stride[0] + 1
    Q = (W + 2 * padding[1] - S) // stride[1] + 1
    if P <= 0 or Q <= 0:
        raise ValueError(f"conv2d_relu: output size would be {P}x{Q}: x's {H}x{W} (padded by {padding}) is "
                         f"smaller than the {R}x{S} weight window")
    if max(C * H * W, K * P * Q) >= 2**31:
        raise ValueError(f"conv2d_relu: one image of x ({C}x{H}x{W}) or of the output ({K}x{P}x{Q}) has 2^31 "
                         "elements or more; the kernels index within an image in int32")
    geometry = ConvGeometry(N, C, H, W, K, R, S, stride, padding, groups, P, Q)
    return ConvGeometry(**{**vars(geometry), "runs_as": _space_to_depth_form(geometry)})


def _space_to_depth_form(g: ConvGeometry) -> ConvGeometry | None:
    """The stride-1 convolution a strided one over few channels equals (kernels/conv_relu/space_to_depth.py):
    one group, at most S2D_MAX_CHANNELS channels after, a window at least the stride; else None."""
    (sh, sw) = g.stride
    if g.groups > 1 or sh * sw == 1 or g.C * sh * sw > S2D_MAX_CHANNELS or g.R < sh or g.S < sw:
        return None
    taps_h, taps_w = -(-g.R // sh), -(-g.S // sw)
    return ConvGeometry(g.N, sh * sw * g.C, g.P + taps_h - 1, g.Q + taps_w - 1, g.K, taps_h, taps_w, (1, 1), (0, 0),
                        1, g.P, g.Q)
