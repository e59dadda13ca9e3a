"""Static cost facts from a kernel's SASS (`cuobjdump -sass` of one cubin), and the main loop's bound R.

Reads the text cuobjdump prints, one instruction a line:

    /*1a20*/                   DEPBAR.LE SB0, 0x4 ;                    /* 0x000081000000791a */

address in hex, an optional predicate (@P0, @!P5), the opcode with its modifiers, operands, ';'.

Loops. A loop is a backward branch: a BRA whose target address is below its own; its body is every
instruction from the target to the branch (the addresses in between, in layout order; code the body
calls or jumps out to is not counted). `BRA` to its own address is the trap padding after the last
EXIT, not a loop. The main loop is the innermost loop (fewest instructions) holding MMA instructions;
a kernel without MMA takes the loop with the most instructions, and one without a loop the whole
kernel (instructions before the trap padding, NOPs left out). `main_loop` says which it took.

MMA instructions and their work:
    sm_90  HGMMA.64xNxK.<acc>.<in>  one warpgroup instruction (4 warps issue it together): 64*N*K MACs
    sm_80  HMMA.16816 (fp16/bf16)   one warp instruction: 16*8*16 = 2048 MACs
           HMMA.1688 (tf32)         one warp instruction: 16*8*8 = 1024 MACs
Every warp of a block runs the loop body once per iteration, so per iteration of a block:

    MACs    = sum over the body's HGMMAs of 64*N*K  x  warps / 4   (one per warpgroup)
            = sum over the body's HMMAs of m*n*k    x  warps        (one per warp)
    issue clocks  = body instructions x warps / 4    (an SM has 4 schedulers issuing one warp
                                                       instruction per clock each; one block per SM)
    tensor clocks = MACs / dense MACs per clock per SM (DENSE_MACS_PER_CLOCK below)
    R = issue clocks / tensor clocks

R <= ~0.7: the tensor cores can be the bottleneck; R >= 1: the loop is issue-bound whatever the
scheduler does. An HGMMA counts as one instruction issued, like any other.

Per loop body, also: whether the loop waits for its own wgmma each iteration (`WARPGROUP.DEPBAR.LE
gsb0, 0x0`: nothing left in flight, so loads cannot overlap the math), and which global loads it
makes: LDGSTS (cp.async into shared memory), LDG (plain, into registers), UTMALDG (TMA).
"""

import re
from dataclasses import dataclass, field

# Dense tensor-core MACs per clock per SM by (arch, input precision): sm_90 2048 bf16/fp16, 1024 tf32;
# sm_80 1024 and 512.
DENSE_MACS_PER_CLOCK = {(90, "16bit"): 2048, (90, "tf32"): 1024, (80, "16bit"): 1024, (80, "tf32"): 512}
SCHEDULERS = 4  # warp schedulers per SM, one instruction per clock each
LOAD_KINDS = ("LDGSTS", "LDG", "UTMALDG")

_LINE = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(@!?U?P\w+\s+)?([A-Z][A-Za-z0-9_.]*)([^;]*);")
_HGMMA = re.compile(r"HGMMA\.(\d+)x(\d+)x(\d+)")
_HMMA = re.compile(r"HMMA\.(16|8)(8)(\d+)")


@dataclass(frozen=True)
class Instruction:
    address: int
    opcode: str  # with modifiers: "HGMMA.64x128x16.F32.BF16", "LDGSTS.E.BYPASS.128"
    operands: str

    @property
    def name(self) -> str:  # the opcode alone: "HGMMA", "LDGSTS"
        return self.opcode.split(".")[0]


def parse(sass: str) -> list[Instruction]:
    """The instructions of the (first) function in cuobjdump -sass text, in address order."""
    instructions = []
    for line in sass.splitlines():
        match = _LINE.search(line)
        if match is None:
            continue
        address = int(match.group(1), 16)
        if instructions and address <= instructions[-1].address:
            break  # a second function starts: a Triton cubin holds one
        instructions.append(Instruction(address, match.group(3), match.group(4).strip()))
    return instructions


def _branch_target(instruction: Instruction):
    if instruction.name != "BRA":
        return None
    target = re.search(r"0x([0-9a-f]+)", instruction.operands)
    return int(target.group(1), 16) if target else None


def kernel_body(instructions: list[Instruction]) -> list[Instruction]:
    """The instructions that can run: up to the trap padding (a BRA to itself), NOPs left out."""
    body = []
    for instruction in instructions:
        if _branch_target(instruction) == instruction.address:
            break
        if instruction.name != "NOP":
            body.append(instruction)
    return body


def loops(instructions: list[Instruction]) -> list[list[Instruction]]:
    """The body of every loop (a backward BRA), from its target to the branch, in layout order."""
    found = []
    for instruction in instructions:
        target = _branch_target(instruction)
        if target is not None and target < instruction.address:
            found.append([i for i in instructions if target <= i.address <= instruction.address and i.name != "NOP"])
    return found


@dataclass(frozen=True)
class Mma:
    kind: str  # "HGMMA" (per warpgroup) or "HMMA" (per warp)
    shape: str  # "64x128x16", "16816"
    precision: str  # "16bit" or "tf32"
    macs: int  # MACs of one instruction: per warpgroup (HGMMA) or per warp (HMMA)


def mma(instruction: Instruction):
    """The Mma an instruction is, or None."""
    precision = "tf32" if ".TF32" in instruction.opcode else "16bit"
    if instruction.name == "HGMMA":
        m, n, k = map(int, _HGMMA.match(instruction.opcode).groups())
        return Mma("HGMMA", f"{m}x{n}x{k}", precision, m * n * k)
    if instruction.name == "HMMA":
        m, n, k = map(int, _HMMA.match(instruction.opcode).groups())
        return Mma("HMMA", f"{m}{n}{k}", precision, m * n * k)
    return None


def waits_for_wgmma(body: list[Instruction]) -> bool:
    """True if the loop waits for all its wgmma to finish (WARPGROUP.DEPBAR.LE gsb0, 0x0) each iteration."""
    return any(i.opcode.startswith("WARPGROUP.DEPBAR") and re.search(r"gsb0,\s*0x0\b", i.operands) for i in body)


def load_kinds(body: list[Instruction]) -> list[str]:
    """The kinds of global loads in `body`, of LOAD_KINDS (LDGDEPBAR and LDGSTS are not plain LDG)."""
    return [kind for kind in LOAD_KINDS if any(i.name == kind for i in body)]


@dataclass
class MainLoop:
    which: str  # "mma loop", "largest loop" (no MMA) or "whole kernel" (no loop)
    instructions: int  # in the body, per warp per iteration
    kernel_instructions: int  # of the whole kernel (kernel_body), loop included once
    mmas: list = field(default_factory=list)  # the Mma of every MMA instruction in the body
    waits: bool = False  # waits_for_wgmma
    loads: list = field(default_factory=list)  # load_kinds

    @property
    def mma_shape(self) -> str:
        """"HGMMA.64x128x16 x4", "HMMA.16816 x32", or "-"."""
        shapes = sorted({f"{m.kind}.{m.shape}" for m in self.mmas})
        return " ".join(f"{s} x{sum(f'{m.kind}.{m.shape}' == s for m in self.mmas)}" for s in shapes) or "-"


def main_loop(sass: str) -> MainLoop:
    instructions = kernel_body(parse(sass))
    bodies = loops(instructions)
    with_mma = [body for body in bodies if any(mma(i) for i in body)]
    if with_mma:
        which, body = "mma loop", min(with_mma, key=len)
    elif bodies:
        which, body = "largest loop", max(bodies, key=len)
    else:
        which, body = "whole kernel", instructions
    return MainLoop(which, len(body), len(instructions), [m for m in map(mma, body) if m],
                    waits_for_wgmma(body), load_kinds(body))


def block_macs(loop: MainLoop, warps: int) -> int:
    """MACs a block does in one iteration of the loop: HGMMA once per warpgroup, HMMA once per warp."""
    return sum(m.macs * (warps // 4 if m.kind == "HGMMA" else warps) for m in loop.mmas)


def issue_clocks(instructions: int, warps: int) -> float:
    """Clocks to issue `instructions` per warp for a block of `warps` warps alone on an SM."""
    return instructions * warps / SCHEDULERS


def tensor_clocks(loop: MainLoop, warps: int, arch: int) -> float:
    """Tensor-core clocks of one iteration of the block (0 with no MMA)."""
    if not loop.mmas:
        return 0.0
    precision = "tf32" if any(m.precision == "tf32" for m in loop.mmas) else "16bit"
    return block_macs(loop, warps) / DENSE_MACS_PER_CLOCK[(arch, precision)]


def ratio(loop: MainLoop, warps: int, arch: int):
    """R = issue clocks / tensor clocks of one iteration; None with no MMA."""
    tensor = tensor_clocks(loop, warps, arch)
    return issue_clocks(loop.instructions, warps) / tensor if tensor else None
