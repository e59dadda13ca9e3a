"""Train the paper's AlexNet.

    python -m alexnet.train                                   # embedded dataset, ~10 min on 2 CPU cores
    python -m alexnet.train --kernels triton                  # the same network on the Triton kernels
    python -m alexnet.train --device cuda --amp bf16          # mixed precision (fp16: --amp fp16)
    python -m alexnet.train --data-path /data/imagenet --epochs 90 --device cuda
    python -m alexnet.train --resume output/checkpoint.pth    # carry on where a run stopped
    python -m alexnet.train --resume output/checkpoint.pth --test-only

The optimiser defaults are the paper's: SGD, batch 128, momentum 0.9, weight decay 5e-4, learning
rate 0.01 divided by 10 whenever validation top-1 stops improving (`--lr-scheduler step` for a
fixed schedule). Every epoch validates, appends a line to OUTPUT/metrics.jsonl and writes
OUTPUT/checkpoint.pth; resuming from it gives bit for bit the run that never stopped (on the CPU).
"""

import argparse
import contextlib
import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

import kernels
from alexnet import checkpoint
from alexnet.model import AlexNet
from data.dali import DaliLoader, train_plan, val_plan
from data.embedded import ensure_embedded
from data.folder import DatasetError, load_splits

DEFAULT_EPOCHS = 6  # sized for the embedded dataset on a 2-core CPU; the paper ran ~90 on ImageNet
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
RESUME_KEYS = ("optimizer", "scheduler", "epoch", "step_in_epoch", "step", "rng")  # beyond the weights


def _number(kind, low, strict=False):
    """An argparse type: a `kind` (int or float) >= low (> low if strict), else an error naming the flag."""
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number of type {kind.__name__}") from None
        if value < low or (strict and value == low):
            raise argparse.ArgumentTypeError(f"must be {'>' if strict else '>='} {low}, got {text}")
        return value
    return parse


POSITIVE_INT, COUNT, POSITIVE, NON_NEGATIVE = _number(int, 1), _number(int, 0), _number(float, 0, True), _number(float, 0)


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m alexnet.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-path", default=None,
                   help="folder with train/<class>/* and val/<class>/* (default: the embedded dataset, "
                        "generated on first use)")
    p.add_argument("--kernels", default="torch", choices=kernels.BACKENDS,
                   help="which implementation of conv+ReLU, LRN and max-pool to run (default: torch)")
    p.add_argument("--amp", default="none", choices=("none", *AMP_DTYPES),
                   help="mixed precision: autocast to bf16, or to fp16 with a gradient scaler (CUDA only); "
                        "every backend's conv, LRN and pool run in that dtype (default: none)")
    p.add_argument("-b", "--batch-size", default=128, type=POSITIVE_INT, help="images per step (default: 128)")
    p.add_argument("--epochs", default=DEFAULT_EPOCHS, type=POSITIVE_INT, help=f"epochs in all (default: {DEFAULT_EPOCHS})")
    p.add_argument("--lr", default=0.01, type=POSITIVE, help="initial learning rate (default: 0.01)")
    p.add_argument("--momentum", default=0.9, type=NON_NEGATIVE, help="SGD momentum (default: 0.9)")
    p.add_argument("--wd", "--weight-decay", dest="weight_decay", default=5e-4, type=NON_NEGATIVE,
                   help="weight decay (default: 5e-4)")
    p.add_argument("--lr-scheduler", default="plateau", choices=("plateau", "step"),
                   help="plateau: divide the lr when val top-1 stops improving (the paper); "
                        "step: divide it every --lr-step-size epochs (default: plateau)")
    p.add_argument("--lr-gamma", default=0.1, type=POSITIVE, help="factor the lr is multiplied by (default: 0.1)")
    p.add_argument("--lr-patience", default=1, type=COUNT,
                   help="plateau: epochs without improvement before dividing (default: 1)")
    p.add_argument("--lr-step-size", default=30, type=POSITIVE_INT, help="step: epochs between divisions (default: 30)")
    p.add_argument("-j", "--workers", default=2, type=POSITIVE_INT, help="data-loading threads (default: 2)")
    p.add_argument("--output-dir", default="output", help="where checkpoint.pth and metrics.jsonl go (default: output)")
    p.add_argument("--resume", default="", help="checkpoint to resume from (or to evaluate with --test-only)")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if there is one, else cpu)")
    p.add_argument("--seed", default=0, type=int, help="seed for the weights, the data order and dropout (default: 0)")
    p.add_argument("--test-only", action="store_true", help="only evaluate (the --resume checkpoint) on val")
    p.add_argument("--max-steps", default=0, type=COUNT,
                   help="stop after this many steps in all, saving a checkpoint (default: 0, no limit)")
    p.add_argument("--checkpoint-every", default=0, type=COUNT,
                   help="also save a checkpoint every N steps (default: 0, only at the end of each epoch)")
    return p


def resolve_device(name: str | None) -> torch.device:
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise SystemExit(f"error: --device {name!r} is not a device ({e})") from e
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"error: --device {name} asked for, but torch sees no CUDA device")
    if device.type not in ("cpu", "cuda"):
        raise SystemExit(f"error: --device {name}: only cpu and cuda are supported")
    return device


def mixed_precision(amp: str, device: torch.device):
    """(autocast context factory, GradScaler) for --amp; the scaler is a no-op unless fp16."""
    if amp == "fp16" and device.type != "cuda":
        raise SystemExit(f"error: --amp fp16 needs a CUDA device (got --device {device}); use --amp bf16 on the CPU")
    if amp == "none":
        autocast = contextlib.nullcontext
    else:
        def autocast():
            return torch.autocast(device.type, dtype=AMP_DTYPES[amp])
    return autocast, torch.amp.GradScaler(device.type, enabled=amp == "fp16")


def make_scheduler(optimizer, args):
    if args.lr_scheduler == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, args.lr_step_size, args.lr_gamma)
    return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=args.lr_gamma,
                                                      patience=args.lr_patience)


def accuracy(logits, target, topk=(1, 5)) -> list[float]:
    """Fraction of samples whose label is among the k highest logits, for each k."""
    top = logits.topk(min(max(topk), logits.shape[1]), dim=1).indices
    hit = top == target[:, None]
    return [hit[:, :k].any(dim=1).float().mean().item() for k in topk]


@torch.no_grad()
def evaluate(model, loader, desc="val", autocast=contextlib.nullcontext) -> dict:
    """Mean loss, top-1 and top-5 accuracy of `model` over `loader`."""
    model.eval()
    total = {"loss": 0.0, "acc1": 0.0, "acc5": 0.0}
    n = 0
    for images, labels in tqdm(loader, desc=desc, leave=False, dynamic_ncols=True):
        with autocast():
            logits = model(images)
        acc1, acc5 = accuracy(logits, labels)
        b = len(labels)
        total["loss"] += F.cross_entropy(logits, labels, reduction="sum").item()
        total["acc1"] += acc1 * b
        total["acc5"] += acc5 * b
        n += b
    return {k: v / n for k, v in total.items()}


def train_one_epoch(model, optimizer, loader, epoch, on_step, autocast, scaler) -> dict:
    """One pass over `loader`; `on_step(step_in_epoch)` runs after every step and returns True to
    stop early. The forward runs under `autocast()`; `scaler` (a GradScaler) scales the loss.
    Returns the epoch's mean loss, top-1 and images per second."""
    model.train()
    loss_sum, acc_sum, n, start = 0.0, 0.0, 0, time.perf_counter()
    bar = tqdm(loader, desc=f"epoch {epoch}", dynamic_ncols=True)
    for step, (images, labels) in enumerate(bar, start=loader.start_batch + 1):
        with autocast():
            loss = F.cross_entropy(logits := model(images), labels)
        if not math.isfinite(loss.item()):
            raise FloatingPointError(f"loss is {loss.item()} at epoch {epoch} step {step}; lower --lr")
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)  # skips the step if fp16 gradients overflowed
        scaler.update()
        b = len(labels)
        loss_sum += loss.item() * b
        acc_sum += accuracy(logits, labels, topk=(1,))[0] * b
        n += b
        bar.set_postfix(loss=f"{loss.item():.3f}", img_s=f"{n / (time.perf_counter() - start):.1f}")
        if on_step(step):
            break
    bar.close()
    seconds = time.perf_counter() - start
    return {"train_loss": loss_sum / max(n, 1), "train_acc1": acc_sum / max(n, 1),
            "img_per_s": n / seconds, "train_seconds": seconds}


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def main(args) -> dict:
    """Train (or with --test-only, evaluate); returns the last validation metrics."""
    device = resolve_device(args.device)
    autocast, scaler = mixed_precision(args.amp, device)
    torch.manual_seed(args.seed)
    try:
        root = Path(args.data_path) if args.data_path else ensure_embedded()
        classes, train_samples, val_samples = load_splits(root)
        if len(train_samples) < args.batch_size and not args.test_only:
            raise DatasetError(f"{root / 'train'} has {len(train_samples)} images, fewer than one batch "
                               f"(-b {args.batch_size})")
        model = AlexNet(num_classes=len(classes), kernels=args.kernels).to(device)
    except DatasetError as e:
        raise SystemExit(f"error: {e}") from e
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum,
                                weight_decay=args.weight_decay)
    scheduler = make_scheduler(optimizer, args)
    val_loader = DaliLoader(val_plan(val_samples), args.batch_size, device, args.workers)
    print(f"data: {root} ({len(classes)} classes, {len(train_samples)} train / {len(val_samples)} val images); "
          f"kernels: {args.kernels}; device: {device}; amp: {args.amp}")

    epoch, step_in_epoch, global_step = 0, 0, 0
    if args.resume:
        try:
            state = checkpoint.load(args.resume)
            checkpoint.load_model_state(model, state, args.resume)
            if state.get("classes", classes) != classes:
                raise checkpoint.CheckpointError(
                    f"checkpoint {args.resume} was trained on other classes than {root} has "
                    f"({len(state['classes'])} vs {len(classes)})")
            missing = [key for key in RESUME_KEYS if key not in state]
            if missing and not args.test_only:
                raise checkpoint.CheckpointError(
                    f"checkpoint {args.resume} holds no training state ({', '.join(missing)} missing): "
                    f"it can be evaluated with --test-only, not resumed")
        except checkpoint.CheckpointError as e:
            raise SystemExit(f"error: {e}") from e
        if args.test_only:
            print(f"evaluating {args.resume}")
        else:
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            if state.get("scaler"):  # empty unless the run used --amp fp16
                scaler.load_state_dict(state["scaler"])
            epoch, step_in_epoch, global_step = state["epoch"], state["step_in_epoch"], state["step"]
            set_rng_state(state["rng"])
            print(f"resumed from {args.resume} at epoch {epoch}, step {step_in_epoch} of the epoch")
            if epoch >= args.epochs:
                print(f"the checkpoint has finished all {args.epochs} epochs; raise --epochs to train on")

    if args.test_only:
        metrics = evaluate(model, val_loader, autocast=autocast)
        print(f"val: loss {metrics['loss']:.4f}  acc@1 {100 * metrics['acc1']:.2f}  acc@5 {100 * metrics['acc5']:.2f}")
        return metrics

    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path, metrics_path = out / "checkpoint.pth", out / "metrics.jsonl"

    def save(epoch_done: int, step: int):
        checkpoint.save({"arch": checkpoint.ARCH, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                         "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "epoch": epoch_done,
                         "step_in_epoch": step, "step": global_step, "rng": rng_state(), "args": vars(args),
                         "classes": classes},
                        ckpt_path)

    val = None
    stopped = False
    while epoch < args.epochs and not stopped:
        loader = DaliLoader(train_plan(train_samples, args.batch_size, args.seed, epoch), args.batch_size,
                            device, args.workers, start_batch=step_in_epoch)

        def on_step(step):
            nonlocal global_step, stopped
            global_step += 1
            last = step == loader.start_batch + len(loader)
            if args.max_steps and global_step >= args.max_steps and not last:
                stopped = True
            elif args.checkpoint_every and global_step % args.checkpoint_every == 0 and not last:
                save(epoch, step)
            if stopped:
                save(epoch, step)
                print(f"stopped after {global_step} steps, in epoch {epoch} at step {step}")
            return stopped

        train = train_one_epoch(model, optimizer, loader, epoch, on_step, autocast, scaler)
        if stopped:
            break
        val = evaluate(model, val_loader, autocast=autocast)
        lr = optimizer.param_groups[0]["lr"]
        if args.lr_scheduler == "plateau":
            scheduler.step(val["acc1"])
        else:
            scheduler.step()
        epoch, step_in_epoch = epoch + 1, 0
        save(epoch, 0)
        record = {"epoch": epoch, "step": global_step, "lr": lr, **train,
                  **{f"val_{k}": v for k, v in val.items()}}
        with open(metrics_path, "a") as f:
            f.write(json.dumps(record) + "\n")
        print(f"epoch {epoch}/{args.epochs}: train loss {train['train_loss']:.4f}, {train['img_per_s']:.1f} img/s; "
              f"val loss {val['loss']:.4f} acc@1 {100 * val['acc1']:.2f} acc@5 {100 * val['acc5']:.2f}; lr {lr:g}")
        stopped = bool(args.max_steps and global_step >= args.max_steps)

    print(f"checkpoint: {ckpt_path}\nmetrics: {metrics_path}")
    return val


if __name__ == "__main__":
    main(get_args_parser().parse_args())
