"""Export a checkpoint's weights to safetensors, for other frameworks and tools.

    python -m alexnet.export --checkpoint output/checkpoint.pth -o alexnet.safetensors

The file holds the model's tensors under their PyTorch names (conv1.weight ... fc8.bias) and, as
string metadata, the architecture, the class names and the model options (JSON), so the network can
be rebuilt: `AlexNet(len(classes), **json.loads(metadata["model_options"]))`.
"""

import argparse
import json
from pathlib import Path

from safetensors.torch import save

from alexnet.checkpoint import ARCH, CheckpointError
from alexnet.inference import load_trained


def export(checkpoint_path: Path | str, output: Path | str) -> Path:
    trained = load_trained(checkpoint_path)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    # written by Python, not by safetensors.torch.save_file, which makes the file 0600 whatever the umask
    output.write_bytes(save({k: v.contiguous() for k, v in trained.model.state_dict().items()},
                            metadata={"arch": ARCH, "classes": json.dumps(trained.classes),
                                      "model_options": json.dumps(trained.model.options)}))
    return output


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m alexnet.export", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="checkpoint written by python -m alexnet.train")
    p.add_argument("-o", "--output", default="alexnet.safetensors", help="file to write (default: alexnet.safetensors)")
    return p


def main(argv=None) -> Path:
    args = get_args_parser().parse_args(argv)
    try:
        out = export(args.checkpoint, args.output)
    except CheckpointError as e:
        raise SystemExit(f"error: {e}") from e
    print(out)
    return out


if __name__ == "__main__":
    main()
