"""What each op must cost, the one place the benchmarks and the roofline take it from: FLOPs, the fewest
bytes it must move, and the peak rates of the GPUs the floors are computed for.

With E bytes per element and x, w, b, y the element counts of input, weight, bias and output:

    conv2d+ReLU fwd     FLOPs 2 * N*K*P*Q * (C/groups)*R*S      bytes (x + w + b + y) * E
                dgrad   the same FLOPs                          (dy + y + w + dx) * E   (y: the ReLU mask)
                wgrad   the same FLOPs                          (x + dy + y + dw + db) * E
    linear      fwd     FLOPs 2 * N * fan_in * fan_out          (x + w + b + y) * E
                dgrad / wgrad as conv, with no ReLU mask to read
    LRN         fwd     read a, write b                         2 * numel * E
                fwd+bwd forward, then read a and dL/db, write dL/da        5 * numel * E
    max-pool    fwd     read x, write y                         (in + out) * E
                fwd+bwd forward, then read dL/dy, write dL/dx, and one byte per output
                        to say where each max was (written forward, read backward)   2 * (in + out) * E + 2 * out
    SGD         update  read w, dw, momentum; write w, momentum: 5 * params * 4 (fp32 master weights, even under AMP)

LRN, max-pool and SGD do a handful of FLOPs per element on the CUDA cores: far from ever setting the
floor, so they count as 0 FLOPs here.
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class Gpu:
    name: str
    tflops: dict  # precision -> dense peak TFLOP/s
    bandwidth: float  # peak HBM bytes/s


# Vendor peak figures (NVIDIA datasheets, dense: no 2:4 sparsity, i.e. half the datasheets' "with sparsity" tensor
# figures), not measurements. The PCIe and NVL parts run lower clocks and power than the SXM ones: same chip, other
# peaks. A100: the 80 GB SXM4 part.
GPUS = {
    "h100": Gpu("H100 SXM", {"bf16": 989, "fp16": 989, "tf32": 495, "fp32": 67}, 3.35e12),
    "h100-pcie": Gpu("H100 PCIe", {"bf16": 756, "fp16": 756, "tf32": 378, "fp32": 51}, 2.0e12),
    "h100-nvl": Gpu("H100 NVL", {"bf16": 835, "fp16": 835, "tf32": 418, "fp32": 60}, 3.9e12),
    "h200": Gpu("H200", {"bf16": 989, "fp16": 989, "tf32": 495, "fp32": 67}, 4.8e12),
    "h200-nvl": Gpu("H200 NVL", {"bf16": 835, "fp16": 835, "tf32": 418, "fp32": 60}, 4.8e12),
    "a100": Gpu("A100 SXM", {"bf16": 312, "fp16": 312, "tf32": 156, "fp32": 19.5}, 2.04e12),
}
# torch.cuda.get_device_name() substrings -> GPUS key, the first match wins (so the NVL and PCIe parts before the
# bare names). A name matching none is "unknown": no peak is guessed (an A100 40 GB or PCIe part has other rates).
GPU_NAMES = (("H200 NVL", "h200-nvl"), ("H200", "h200"), ("H100 NVL", "h100-nvl"), ("H100 PCIe", "h100-pcie"),
             ("H100 80GB HBM3", "h100"), ("H100 SXM", "h100"), ("A100-SXM4-80GB", "a100"))


def gpu_key(device_name: str) -> str | None:
    """The GPUS key of a GPU named `device_name` (torch.cuda.get_device_name), or None if not recognised."""
    return next((key for part, key in GPU_NAMES if part in device_name), None)


ELEMENT_BYTES = {"fp32": 4, "tf32": 4, "bf16": 2, "fp16": 2}  # tf32 multiplies fp32 tensors


def conv_costs(x_shape, w_shape, stride: int, padding: int, size: int) -> dict:
    """{pass: (FLOPs, bytes)} of relu(conv2d(x, w) + b): x (N, C, H, W), w (K, C/groups, R, S), `size` bytes
    per element."""
    n, c, h, w = x_shape
    k, c_group, r, s = w_shape
    p, q = (h + 2 * padding - r) // stride + 1, (w + 2 * padding - s) // stride + 1
    x, weight, y = n * c * h * w, k * c_group * r * s, n * k * p * q
    flops = 2 * y * c_group * r * s
    return {"fwd": (flops, (x + weight + k + y) * size),
            "dgrad": (flops, (2 * y + weight + x) * size),
            "wgrad": (flops, (x + 2 * y + weight + k) * size)}


def linear_costs(batch: int, fan_in: int, fan_out: int, size: int) -> dict:
    """{pass: (FLOPs, bytes)} of x @ w.T + b (its ReLU, if any, is a separate op)."""
    x, weight, y = batch * fan_in, fan_in * fan_out, batch * fan_out
    flops = 2 * batch * fan_in * fan_out
    return {"fwd": (flops, (x + weight + fan_out + y) * size),
            "dgrad": (flops, (y + weight + x) * size),
            "wgrad": (flops, (x + y + weight + fan_out) * size)}


def lrn_costs(shape, size: int) -> dict:
    numel = _numel(shape)
    return {"fwd": (0, 2 * numel * size), "fwd+bwd": (0, 5 * numel * size)}


def pool_costs(shape, size: int, kernel: int = 3, stride: int = 2) -> dict:
    n, c, h, w = shape
    numel, out = _numel(shape), n * c * ((h - kernel) // stride + 1) * ((w - kernel) // stride + 1)
    return {"fwd": (0, (numel + out) * size), "fwd+bwd": (0, 2 * (numel + out) * size + 2 * out)}


def sgd_costs(params: int) -> dict:
    return {"update": (0, 5 * params * 4)}


def _numel(shape) -> int:
    n, c, h, w = shape
    return n * c * h * w
