"""AlexNet's layers and the paper's constants, written once: the model builds itself from them, and the
ahead-of-time builds (perf.launches), the roofline and the GPU report (bench/) take their shapes from here.

No torch and no Triton: importing this costs nothing.

    input  3x227x227 (the paper says 224; 227 is what gives conv1 a 55x55 output with no padding)
    conv1  96 11x11 /4                       -> 55x55    lrn1, pool1 3/2 -> 27x27
    conv2  256 5x5 pad 2, 2 towers           -> 27x27    lrn2, pool2 3/2 -> 13x13
    conv3  384 3x3 pad 1 (the towers talk)   -> 13x13
    conv4  384 3x3 pad 1, 2 towers           -> 13x13
    conv5  256 3x3 pad 1, 2 towers           -> 13x13    pool5 3/2 -> 6x6
    fc6 9216 -> 4096, fc7 4096 -> 4096, fc8 4096 -> 1000
"""

from typing import NamedTuple

INPUT = (3, 227, 227)  # (C, H, W) of an image


class Conv(NamedTuple):
    input: tuple  # (C, H, W) of one image's input
    weight: tuple  # (K, C / groups, R, S)
    stride: int
    padding: int
    groups: int  # 2: the paper's two towers


CONVS = {
    "conv1": Conv((3, 227, 227), (96, 3, 11, 11), 4, 0, 1),
    "conv2": Conv((96, 27, 27), (256, 48, 5, 5), 1, 2, 2),
    "conv3": Conv((256, 13, 13), (384, 256, 3, 3), 1, 1, 1),
    "conv4": Conv((384, 13, 13), (384, 192, 3, 3), 1, 1, 2),
    "conv5": Conv((384, 13, 13), (256, 192, 3, 3), 1, 1, 2),
}

# The paper's LRN in its own convention (alpha is NOT divided by size, as PyTorch's is), and its input per image.
LRN = dict(size=5, alpha=1e-4, beta=0.75, k=2.0)
LRNS = {"lrn1": (96, 55, 55), "lrn2": (256, 27, 27)}

POOL = dict(kernel_size=3, stride=2)  # overlapping pooling
POOL_NO_OVERLAP = dict(kernel_size=2, stride=2)  # the ablation: windows that do not overlap
POOLS = {"pool1": (96, 55, 55), "pool2": (256, 27, 27), "pool5": (256, 13, 13)}  # input (C, H, W) per image

LINEARS = {"fc6": (256 * 6 * 6, 4096), "fc7": (4096, 4096), "fc8": (4096, 1000)}  # (fan_in, fan_out), 1000 classes

ORDER = ["conv1", "lrn1", "pool1", "conv2", "lrn2", "pool2", "conv3", "conv4", "conv5", "pool5", "fc6", "fc7", "fc8"]


def parameter_count(num_classes: int = 1000) -> int:
    """Weights and biases of the network: 60,965,224 with 1000 classes."""
    convs = sum(k * c * r * s + k for _, (k, c, r, s), *_ in CONVS.values())
    fans = [*LINEARS.values()][:-1] + [(LINEARS["fc8"][0], num_classes)]
    return convs + sum(fan_in * fan_out + fan_out for fan_in, fan_out in fans)
