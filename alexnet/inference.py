"""A trained network and the images to show it, shared by evaluate, predict, features, figures, export.

`load_trained` rebuilds the exact variant a checkpoint was trained as (its ablation switches are
stored in it) and checks that its class names fit its last layer. `load_image` is data/dali.py's
validation transform done with PIL, so a single file of any size and any format PIL reads can be
classified without a dataset around it: shorter side to 256, centre 227x227 crop, per-channel mean
subtracted on the 0..255 scale. (DALI's and PIL's resampling differ by under a grey level on average.)
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from alexnet import checkpoint
from alexnet.model import PAPER_OPTIONS, AlexNet
from data.pil import open_rgb
from data.plans import CROP, MEAN_RGB, RESIZE_SHORTER
from data.folder import IMAGE_EXTENSIONS

MEAN = torch.tensor(MEAN_RGB).view(3, 1, 1)


class InputError(ValueError):
    """An image or folder named on the command line is missing or cannot be read."""


@dataclass
class Trained:
    model: AlexNet  # in eval mode, on its device
    classes: list[str]
    path: Path  # the checkpoint, for messages


def load_trained(path: Path | str, device: torch.device | str = "cpu", kernels: str = "torch") -> Trained:
    """The network in checkpoint `path`, rebuilt as the variant it was trained as, in eval mode."""
    path = Path(path)
    state = checkpoint.load(path)
    fc8 = state["model"].get("fc8.weight")
    if fc8 is None:
        raise checkpoint.CheckpointError(f"checkpoint {path} has no fc8.weight: not an AlexNet's weights")
    num_classes = fc8.shape[0]
    classes = list(state.get("classes") or [str(i) for i in range(num_classes)])
    if len(classes) != num_classes:
        raise checkpoint.CheckpointError(f"checkpoint {path} names {len(classes)} classes but its fc8 has "
                                         f"{num_classes} outputs")
    model = AlexNet(num_classes, kernels=kernels, **{**PAPER_OPTIONS, **state.get("model_options", {})})
    checkpoint.load_model_state(model, state, path)
    return Trained(model.to(device).eval(), classes, path)


def check_classes(trained: Trained, classes: list[str], where: Path | str) -> None:
    """Refuse to score a network on data labelled with other classes than it was trained on."""
    if trained.classes != classes:
        raise checkpoint.CheckpointError(
            f"checkpoint {trained.path} was trained on {len(trained.classes)} classes "
            f"({', '.join(trained.classes[:5])}{', ...' if len(trained.classes) > 5 else ''}) but {where} has "
            f"{len(classes)} ({', '.join(classes[:5])}{', ...' if len(classes) > 5 else ''})")


def image_files(inputs: list[str | Path]) -> list[Path]:
    """The image files named, folders searched recursively (sorted), in the order given."""
    files = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = sorted(p for p in item.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
            if not found:
                raise InputError(f"folder {item} holds no image files ({', '.join(IMAGE_EXTENSIONS)})")
            files += found
        elif item.is_file():
            files.append(item)
        else:
            raise InputError(f"image {item} does not exist")
    return files


def folder_class(path: Path | str, classes: list[str]) -> str | None:
    """The class an image's folder is named after (data laid out as CLASS/FILE), None if it is no class."""
    name = Path(path).parent.name
    return name if name in classes else None


def load_image(path: Path | str) -> torch.Tensor:
    """(3, 227, 227) float32: the validation transform of the image at `path`."""
    try:
        img = open_rgb(path)
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise InputError(f"image {path} cannot be read ({type(e).__name__}: {e})") from e
    w, h = img.size
    scale = RESIZE_SHORTER / min(w, h)
    w, h = round(w * scale), round(h * scale)
    img = img.resize((w, h), Image.BILINEAR)
    left, top = (w - CROP + 1) // 2, (h - CROP + 1) // 2  # DALI's centre: half the slack, rounded up
    img = img.crop((left, top, left + CROP, top + CROP))
    return torch.from_numpy(np.asarray(img, dtype=np.float32)).permute(2, 0, 1) - MEAN


def displayable(image: torch.Tensor) -> np.ndarray:
    """(227, 227, 3) in [0, 1]: a transformed image as it looks, for pictures."""
    return ((image.cpu().float() + MEAN).clamp(0, 255) / 255).permute(1, 2, 0).numpy()


@torch.no_grad()
def run(trained: Trained, files: list[Path], batch_size: int = 32, stage: str = "fc8") -> torch.Tensor:
    """The `stage` output (e.g. "fc8" logits, "fc7" features) for each file, stacked on the CPU as float32."""
    device = next(trained.model.parameters()).device
    out = []
    for lo in range(0, len(files), batch_size):
        images = torch.stack([load_image(f) for f in files[lo:lo + batch_size]]).to(device)
        activations = {}
        trained.model(images, activations)
        out.append(activations[stage].flatten(1).float().cpu())
    return torch.cat(out)
