"""Rounding to 16 bits inside a kernel the way torch's casts round, on a GPU and in Triton's interpreter alike."""

import triton
import triton.language as tl


@triton.jit
def to_16_bits(x, dtype: tl.constexpr):
    """fp32 `x` rounded to nearest even in `dtype` (fp32: `x` itself). bf16 by hand, on the bits, as torch's cast does it: the same
    result on a GPU and in the interpreter (whose own fp32 -> bf16 conversion rounds ties up)."""
    if dtype == tl.bfloat16:
        bits = x.to(tl.uint32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
        bits = tl.where(x != x, 0x7FC0, bits)  # NaN stays NaN (the carry could turn one into inf)
        return bits.to(tl.uint16).to(tl.bfloat16, bitcast=True)
    return x.to(dtype)
