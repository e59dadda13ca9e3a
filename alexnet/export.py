"""Export a checkpoint's weights to safetensors, for other frameworks and tools.

    python -m alexnet.export --checkpoint output/checkpoint.pth -o alexnet.safetensors

The file holds the model's tensors under their PyTorch names (conv1.weight ... fc8.bias) and, as
string metadata, the architecture, the class names and the model options (JSON), so the network can
be rebuilt: `AlexNet(len(classes), **json.loads(metadata["model_options"]))`. The metadata's
"checksum" is a SHA-256 of every tensor (name, dtype, shape, bytes, in name order) and the other
metadata; `load` verifies it, so a flipped bit is refused rather than loaded.
"""

import argparse
import hashlib
import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save

from alexnet.checkpoint import ARCH, CheckpointError
from alexnet.cli import check_output_file
from alexnet.inference import load_trained


def checksum(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> str:
    """SHA-256 of the tensors (by name) and of the metadata but its "checksum"."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name]
        digest.update(f"{name} {t.dtype} {tuple(t.shape)};".encode())
        digest.update(t.contiguous().reshape(-1).view(torch.uint8).numpy())
    digest.update(json.dumps({k: v for k, v in metadata.items() if k != "checksum"}, sort_keys=True).encode())
    return digest.hexdigest()


def export(checkpoint_path: Path | str, output: Path | str) -> Path:
    trained = load_trained(checkpoint_path)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.contiguous() for k, v in trained.model.state_dict().items()}
    metadata = {"arch": ARCH, "classes": json.dumps(trained.classes), "model_options": json.dumps(trained.model.options)}
    metadata["checksum"] = checksum(tensors, metadata)
    # written by Python, not by safetensors.torch.save_file, which makes the file 0600 whatever the umask
    output.write_bytes(save(tensors, metadata=metadata))
    return output


def load(path: Path | str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, metadata) of a file written by `export`, its checksum verified."""
    path = Path(path)
    try:
        with safe_open(path, "pt") as f:
            metadata = f.metadata() or {}
            tensors = {name: f.get_tensor(name) for name in f.keys()}
    except (OSError, SafetensorError) as e:
        raise CheckpointError(f"{path} cannot be read as safetensors ({type(e).__name__}: {e})") from e
    if metadata.get("arch") != ARCH or "checksum" not in metadata:
        raise CheckpointError(f"{path} is not an {ARCH} export with a checksum (python -m alexnet.export writes one)")
    if checksum(tensors, metadata) != metadata["checksum"]:
        raise CheckpointError(f"{path} is corrupt: its tensors or metadata do not match the checksum saved with them")
    return tensors, metadata


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m alexnet.export", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="checkpoint written by python -m alexnet.train")
    p.add_argument("-o", "--output", default="alexnet.safetensors", help="file to write (default: alexnet.safetensors)")
    return p


def main(argv=None) -> Path:
    args = get_args_parser().parse_args(argv)
    check_output_file(args.output, "-o")
    try:
        out = export(args.checkpoint, args.output)
    except CheckpointError as e:
        raise SystemExit(f"error: {e}") from e
    print(out)
    return out


if __name__ == "__main__":
    main()
