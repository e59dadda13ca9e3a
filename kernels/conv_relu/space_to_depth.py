"""Space-to-depth: a strided convolution over few channels run as the stride-1 convolution it equals.

AlexNet's conv1 (3 channels, 11x11, stride 4) would reduce over runs of 3 contiguous values. With
(sh, sw) the stride and (ph, pw) the padding,

    x2[n, (i*sw + j)*C + c, h, v] = x[n, c, h*sh + i - ph, v*sw + j - pw]     (0 outside x)
    w2[k, (i*sw + j)*C + c, t, u] = w[k, c, t*sh + i, u*sw + j]             (0 past the window)

make conv(x, w, stride, padding) = conv(x2, w2, 1, 0): 48 channels of 57x57 and 3x3 taps for conv1 (the
weight zero-padded to 12x12). The forward, dgrad and wgrad all run on that form. x2 is one Triton kernel's
(kernels.py space_to_depth_kernel: one pass over x); these are the other copies, to the form and back: of
the weight, and of the gradients of x2 and of the weight. `g` is the convolution's ConvGeometry and
`g.runs_as` its space-to-depth form.
"""

import torch
import torch.nn.functional as F


def from_input_grad(dx2, g):
    """The gradient with respect to x, given the gradient dx2 with respect to x2; channels_last."""
    (N, C, H, W), (sh, sw), (ph, pw), (_, _, rows, cols) = g.x_shape, g.stride, g.padding, dx2.shape
    dx = dx2.reshape(N, sh, sw, C, rows, cols).permute(0, 3, 4, 1, 5, 2).reshape(N, C, rows * sh, cols * sw)
    dx = F.pad(dx, (-pw, W + pw - cols * sw, -ph, H + ph - rows * sh))
    return dx.contiguous(memory_format=torch.channels_last)


def to_weight(w, g):
    """w2."""
    (K, C, R, S), (sh, sw), (taps_h, taps_w) = w.shape, g.stride, (g.runs_as.R, g.runs_as.S)
    w = F.pad(w, (0, taps_w * sw - S, 0, taps_h * sh - R))
    return w.reshape(K, C, taps_h, sh, taps_w, sw).permute(0, 3, 5, 1, 2, 4).reshape(K, sh * sw * C, taps_h, taps_w)


def from_weight_grad(partials, g):
    """dw from wgrad's partial sums of the gradient of to_weight's output ([splits, *w2's shape]): one pass adds
    the splits (in a fixed order) into the window padded to whole taps ([K, C, taps_h*sh, taps_w*sw]), whose taps
    past the window are then dropped (a view: autograd's copy into the weight's layout is the only other pass)."""
    (K, C, R, S), (sh, sw), (splits, _, _, taps_h, taps_w) = g.w_shape, g.stride, partials.shape
    padded = torch.empty(K, C, taps_h * sh, taps_w * sw, dtype=partials.dtype, device=partials.device)
    splits_by_tap = partials.view(splits, K, sh, sw, C, taps_h, taps_w).permute(0, 1, 4, 5, 2, 6, 3)
    torch.sum(splits_by_tap, 0, out=padded.view(K, C, taps_h, sh, taps_w, sw))
    return padded[:, :, :R, :S]
