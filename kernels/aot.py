"""Compile every Triton kernel config AlexNet uses for sm_80 and sm_90, with no GPU, and check it.

    python -m kernels.aot

Each module in MODULES has `aot_configs()`, yielding `(label, kernel, args, meta)` for every launch
its launchers make at AlexNet's shapes (batch 128): a label for the input (shape, dtype, layout),
the @triton.jit function, and the positional args and keyword meta (constexprs, num_warps...) the
launcher passes, built by the launcher's own code (tensors may be on the meta device). Triton's
own binder turns them into the signature, constexprs and alignment/divisibility attributes the
JIT would, so the cubin built here is the one that would run. Identical builds are made once; the
last column lists the inputs that share one.

The table gives registers, spilled bytes (local memory) and shared memory per block (static plus
Triton's dynamic allocation) from the cuobjdump in the Triton wheel. Exit status 1 on any compile
error, any spill, or shared memory beyond the architecture's per-block limit.
The interpreter (TRITON_INTERPRET=1) is switched off here: it has nothing to compile.
"""

import importlib
import os
import re
import subprocess
import sys
from pathlib import Path

MODULES = ["kernels.local_response_norm", "kernels.maxpool", "kernels.conv_relu"]
SHARED_LIMIT = {80: 163 * 1024, 90: 227 * 1024}  # bytes of shared memory per block, opt-in maximum


def _specialise(kernel, target, args, meta):
    """(signature, constexprs, attrs, options) exactly as Triton's JIT derives them from a launch."""
    from triton.compiler import make_backend
    from triton.runtime.jit import create_function_from_signature

    backend = make_backend(target)
    binder = create_function_from_signature(kernel.signature, kernel.params, backend)
    bound_args, specialization, options = binder(*args, **meta)
    options, signature, constexprs, attrs = kernel._pack_args(backend, meta, bound_args, specialization, options)
    return signature, constexprs, attrs, options


def _resource_usage(cubin: bytes, workdir: Path) -> dict:
    """{'REG': .., 'STACK': .., 'SHARED': .., 'LOCAL': ..} from `cuobjdump --dump-resource-usage`."""
    import triton

    path = workdir / "kernel.cubin"
    path.write_bytes(cubin)
    cuobjdump = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    out = subprocess.run([str(cuobjdump), "--dump-resource-usage", str(path)],
                         capture_output=True, text=True, check=True).stdout
    usage = re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)", out)
    if usage is None:
        raise RuntimeError(f"no resource usage in cuobjdump's output:\n{out}")
    return dict(zip(("REG", "STACK", "SHARED", "LOCAL"), map(int, usage.groups())))


def _builds(modules):
    """{(kernel name, config, arch): (kernel, args, meta, [labels])}, one per distinct build."""
    import triton

    builds = {}
    for module in modules:
        for label, kernel, args, meta in importlib.import_module(module).aot_configs():
            if not isinstance(kernel, triton.runtime.JITFunction):
                raise RuntimeError(f"{module} was imported under TRITON_INTERPRET=1; run python -m kernels.aot "
                                   f"in a fresh process")
            for arch in SHARED_LIMIT:
                target = triton.backends.compiler.GPUTarget("cuda", arch, 32)
                signature, constexprs, attrs, options = _specialise(kernel, target, args, meta)
                names = [kernel.arg_names[path[0]] for path in constexprs]
                config = " ".join(f"{name}={value}" for name, value in zip(names, constexprs.values()))
                config += f" warps={options.num_warps} stages={options.num_stages}"
                config += " " + ",".join(sorted({t for t in signature.values() if t.startswith("*")}))
                key = (kernel.__name__, config, arch, repr(attrs))
                entry = builds.setdefault(key, (kernel, target, signature, constexprs, attrs, options, []))
                entry[-1].append(label)
    return builds


def main() -> int:
    os.environ.pop("TRITON_INTERPRET", None)  # before any kernel module is imported
    import tempfile

    import triton
    from triton.compiler import ASTSource

    failures, rows = 0, []
    with tempfile.TemporaryDirectory() as tmp:
        for (name, config, arch, _), (kernel, target, signature, constexprs, attrs, options, labels) \
                in _builds(MODULES).items():
            try:
                compiled = triton.compile(ASTSource(kernel, signature, constexprs, attrs), target=target,
                                          options=options.__dict__)
                usage = _resource_usage(compiled.asm["cubin"], Path(tmp))
            except Exception as error:  # report every failing build, then fail
                failures += 1
                rows.append((name, config, f"sm_{arch}", "FAILED", "", "", f"{type(error).__name__}: {error}"))
                continue
            shared = usage["SHARED"] + compiled.metadata.shared
            bad = usage["LOCAL"] > 0 or shared > SHARED_LIMIT[arch]
            failures += bad
            rows.append((name, config, f"sm_{arch}", str(usage["REG"]), str(usage["LOCAL"]), str(shared),
                         ("FAIL " if bad else "") + "; ".join(labels)))
    header = ("kernel", "config", "arch", "regs", "spill B", "shared B", "inputs (batch 128)")
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header) - 1)]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)), row[-1])
    print(f"{len(rows)} builds, {failures} failed" if failures else f"{len(rows)} builds, all pass")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
