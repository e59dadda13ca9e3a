"""Train the paper's AlexNet.

    python -m alexnet.train                                   # embedded dataset, ~10 min on 2 CPU cores
    python -m alexnet.train --kernels triton                  # the same network on the Triton kernels
    python -m alexnet.train --device cuda --amp bf16          # mixed precision (fp16: --amp fp16)
    python -m alexnet.train --data-path /data/imagenet --epochs 90 --device cuda
    python -m alexnet.train --data-path /data/imagenet --exclude-list bad_files.txt  # from python -m data.check
    python -m alexnet.train --data-loader pil                 # PIL + DataLoader instead of DALI
    python -m alexnet.train --resume output/checkpoint.pth    # carry on where a run stopped
    python -m alexnet.train --resume output/checkpoint.pth --test-only
    torchrun --nproc-per-node 2 -m alexnet.train --towers 2   # the paper's two towers, one GPU each
    torchrun --nproc-per-node 8 -m alexnet.train --towers 2   # 4 data-parallel replicas x 2 towers (-b per replica)

The defaults are the paper's: its initialisation; SGD, batch 128, momentum 0.9, weight decay 5e-4,
learning rate 0.01 divided by 10 whenever validation top-1 stops improving (`--lr-scheduler step`
for a fixed schedule). On the embedded dataset (no --data-path) three differ, as printed at start-up:
batch 32, Caffe's initialisation (biases 0.1 instead of 1) and lr 0.01 for 5 epochs then 0.001 for 2,
because the paper's recipe, made for 1000 classes, does not learn 10 classes in a short run (README,
"The embedded run"). Every epoch validates, appends a line to OUTPUT/metrics.jsonl and writes
OUTPUT/checkpoint.pth; resuming from it gives bit for bit the run that never stopped (on the CPU).
"""

import argparse
import contextlib
import json
import math
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

import kernels
from alexnet import checkpoint, distributed
from alexnet.fastest import fastest_kernels
from alexnet.model import INITS, PAPER_OPTIONS, AlexNet
from data.check import quick_check_all
from data.embedded import ensure_embedded
from data.folder import DatasetError, load_splits
from data.pil import PilLoader
from data.plans import bad_files_error, train_plan, val_plan

# Defaults that depend on the data. With --data-path they are the paper's (bar the epochs: it ran ~90
# on ImageNet). The paper's recipe is made for ImageNet's 1000 classes; on the embedded dataset's 10
# it does not learn in a 10-minute run, so that run (no --data-path) departs from it: batch 32,
# Caffe's initialisation, and lr 0.01 for 5 epochs then 0.001 for 2 (README, "The embedded run").
# A flag given on the command line always wins.
# The lr is filled in here too (the same in both) so that main can tell a --lr given on resume.
RECIPES = {"paper": dict(batch_size=128, init="paper", epochs=6, lr=0.01, lr_scheduler="plateau", lr_step_size=30),
           "embedded": dict(batch_size=32, init="caffe", epochs=7, lr=0.01, lr_scheduler="step", lr_step_size=5)}
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
LOADERS = ("dali", "pil")  # --data-loader: same plans, same outputs
RESUME_KEYS = ("optimizer", "scheduler", "epoch", "step_in_epoch", "step", "rng")  # beyond the weights
# samples_in_epoch too since it was added; an older checkpoint's is step_in_epoch x its -b x its replicas


def _number(kind, low, strict=False, high=math.inf):
    """An argparse type: a finite `kind` (int or float) >= low (> low if strict) and <= high, else an
    error naming the flag."""
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number of type {kind.__name__}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
        if value < low or (strict and value == low):
            raise argparse.ArgumentTypeError(f"must be {'>' if strict else '>='} {low}, got {text}")
        if value > high:
            raise argparse.ArgumentTypeError(f"must be <= {high}, got {text}")
        return value
    return parse


POSITIVE_INT, COUNT, POSITIVE, NON_NEGATIVE = _number(int, 1), _number(int, 0), _number(float, 0, True), _number(float, 0)
SEED = _number(int, 0, high=2**32 - 1)  # the plans seed a generator with seed * 1_000_003 + epoch: fits in 64 bits


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m alexnet.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-path", default=None,
                   help="folder with train/<class>/* and val/<class>/* (default: the embedded dataset, "
                        "generated on first use)")
    env_kernels = os.environ.get("ALEXNET_KERNELS")
    if env_kernels and env_kernels not in kernels.BACKENDS:
        raise SystemExit(f"error: $ALEXNET_KERNELS is {env_kernels!r}; choose one of {', '.join(kernels.BACKENDS)}")
    p.add_argument("--kernels", default=env_kernels, choices=kernels.BACKENDS,
                   help="which implementation of conv+ReLU, LRN and max-pool to run (default: $ALEXNET_KERNELS "
                        "if set; else when resuming, the checkpoint's; torch on a GPU; on a CPU the faster of "
                        "torch and compile, measured once per machine)")
    p.add_argument("--amp", default="none", choices=("none", *AMP_DTYPES),
                   help="mixed precision: autocast to bf16, or to fp16 with a gradient scaler (CUDA only); "
                        "every backend's conv, LRN and pool run in that dtype (default: none)")
    p.add_argument("-b", "--batch-size", default=None, type=POSITIVE_INT,
                   help="images per step (default: 128, the paper's; 32 on the embedded dataset)")
    p.add_argument("--init", default=None, choices=INITS,
                   help="initialisation: paper (biases 1) or caffe (Caffe's bvlc_alexnet: biases 0.1, fc6/fc7 "
                        "std 0.005) (default: paper; caffe on the embedded dataset)")
    p.add_argument("--epochs", default=None, type=POSITIVE_INT, help="epochs in all (default: 6; 7 on the embedded dataset)")
    p.add_argument("--lr", default=None, type=POSITIVE,
                   help="initial learning rate; given with --resume, it replaces the checkpoint's (default: 0.01)")
    p.add_argument("--momentum", default=0.9, type=NON_NEGATIVE, help="SGD momentum (default: 0.9)")
    p.add_argument("--wd", "--weight-decay", dest="weight_decay", default=5e-4, type=NON_NEGATIVE,
                   help="weight decay (default: 5e-4)")
    p.add_argument("--lr-scheduler", default=None, choices=("plateau", "step"),
                   help="plateau: divide the lr when val top-1 stops improving (the paper); step: divide it "
                        "every --lr-step-size epochs (default: plateau; step on the embedded dataset)")
    p.add_argument("--lr-gamma", default=0.1, type=POSITIVE, help="factor the lr is multiplied by (default: 0.1)")
    p.add_argument("--lr-patience", default=2, type=COUNT,
                   help="plateau: epochs without improvement before dividing (default: 2)")
    p.add_argument("--lr-step-size", default=None, type=POSITIVE_INT,
                   help="step: epochs between divisions (default: 30; 5 on the embedded dataset)")
    p.add_argument("-j", "--workers", default=2, type=POSITIVE_INT, help="data-loading threads (default: 2)")
    p.add_argument("--output-dir", default="output", help="where checkpoint.pth and metrics.jsonl go (default: output)")
    p.add_argument("--resume", default="", help="checkpoint to resume from (or to evaluate with --test-only)")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if there is one, else cpu)")
    p.add_argument("--seed", default=0, type=SEED, help="seed for the weights, the data order and dropout (default: 0)")
    p.add_argument("--towers", default=1, type=int, choices=(1, 2),
                   help="2: the paper's two-tower split, one tower per process and device, launched with "
                        "torchrun --nproc-per-node 2 (x replicas for data parallelism too) (default: 1)")
    p.add_argument("--dist-timeout", default=300, type=POSITIVE,
                   help="under torchrun, stop with an error when another rank has not answered for this many "
                        "seconds (default: 300)")
    p.add_argument("--test-only", action="store_true", help="only evaluate (the --resume checkpoint) on val")
    p.add_argument("--max-steps", default=0, type=COUNT,
                   help="stop after this many steps in all, saving a checkpoint (default: 0, no limit)")
    p.add_argument("--checkpoint-every", default=0, type=COUNT,
                   help="also save a checkpoint every N steps (default: 0, only at the end of each epoch)")
    p.add_argument("--data-loader", default="dali", choices=LOADERS,
                   help="dali: the DALI pipeline (decodes on the GPU when training on one); pil: PIL and a "
                        "torch DataLoader, same samples and augmentation (default: dali)")
    p.add_argument("--lighting-std", default=0.1, type=NON_NEGATIVE,
                   help="std of the paper's PCA lighting noise per eigenvector (default: 0.1; 0 turns it off)")
    p.add_argument("--exclude-list", default=None,
                   help="leave out the files this list names (written by python -m data.check ROOT)")
    ablation = p.add_argument_group("ablations", "switch off one of the paper's ideas (python -m alexnet.ablate runs them all)")
    ablation.add_argument("--no-lrn", action="store_true", help="no local response normalisation")
    ablation.add_argument("--no-overlap", action="store_true", help="non-overlapping 2x2 max-pooling, stride 2")
    ablation.add_argument("--no-groups", action="store_true",
                          help="one tower: conv2, conv4, conv5 without groups (same widths)")
    ablation.add_argument("--no-dropout", action="store_true", help="no dropout before fc6 and fc7")
    return p


def model_options(args) -> dict:
    """AlexNet's keyword arguments for the ablation flags (all off: the paper's network)."""
    return dict(dropout=0.0 if args.no_dropout else 0.5, lrn=not args.no_lrn, overlap=not args.no_overlap,
                groups=not args.no_groups)


def apply_recipe(args) -> dict:
    """Fill the flags left unset from the recipe for the data (the embedded run's when there is no
    --data-path, else the paper's); returns what was filled in."""
    recipe = RECIPES["embedded" if args.data_path is None else "paper"]
    filled = {key: value for key, value in recipe.items() if getattr(args, key) is None}
    for key, value in filled.items():
        setattr(args, key, value)
    return filled


def loader_class(name: str):
    """--data-loader's class. DALI is imported only when asked for, so `pil` runs without it."""
    if name == "pil":
        return PilLoader
    try:
        from data.dali import DaliLoader
    except ImportError as e:
        raise SystemExit(f"error: --data-loader dali needs NVIDIA DALI ({e}); install nvidia-dali-cuda130, "
                         f"or use --data-loader pil") from e
    return DaliLoader


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


def default_kernels(args, resumed, device, num_classes, layout, autocast) -> tuple[str, str]:
    """The backend to run when --kernels is not given, and why; `resumed` is the --resume checkpoint."""
    trained_with = (resumed or {}).get("args", {}).get("kernels")
    if trained_with in kernels.BACKENDS:
        return trained_with, f"as {args.resume} was trained"
    if device.type == "cuda":
        return "torch", "the default on a GPU (cuDNN)"
    if layout.world_size > 1:
        return "torch", "the default when several processes share the CPU"
    return fastest_kernels(num_classes, args.batch_size, args.amp, autocast)


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
def evaluate(model, loader, desc="val", autocast=contextlib.nullcontext, reduce=None) -> dict:
    """Mean loss, and top-1 and top-5 accuracy in percent, of `model` over `loader`. `reduce`, given,
    sums the (loss, top-1 hits, top-5 hits, samples) totals over the data-parallel ranks' shards."""
    model.eval()
    total = {"loss": 0.0, "top1": 0.0, "top5": 0.0}
    n = 0
    for images, labels in tqdm(loader, desc=desc, leave=False, dynamic_ncols=True):
        with autocast():
            logits = model(images)
        acc1, acc5 = accuracy(logits, labels)
        b = len(labels)
        total["loss"] += F.cross_entropy(logits, labels, reduction="sum").item()
        total["top1"] += round(acc1 * b)  # counts of hits, exact when summed over ranks
        total["top5"] += round(acc5 * b)
        n += b
    totals = torch.tensor([*total.values(), n], dtype=torch.float64)
    *sums, n = (reduce(totals) if reduce else totals).tolist()
    return {k: v / n * (1 if k == "loss" else 100) for k, v in zip(total, sums)}


def train_one_epoch(model, optimizer, loader, epoch, on_step, autocast, scaler) -> dict:
    """One pass over `loader`; `on_step(step_in_epoch)` runs after every step and returns True to
    stop early. The forward runs under `autocast()`; `scaler` (a GradScaler) scales the loss.
    Returns the epoch's mean loss, top-1 accuracy in percent and images per second."""
    model.train()
    loss_sum, acc_sum, n, start = 0.0, 0.0, 0, time.perf_counter()
    bar = tqdm(loader, desc=f"epoch {epoch + 1}", dynamic_ncols=True)
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
    return {"train_loss": loss_sum / max(n, 1), "train_top1": 100 * acc_sum / max(n, 1),
            "img_per_s": n / seconds, "train_seconds": seconds}


def resume_step(state: dict, args, replicas: int) -> int:
    """The step of the epoch to resume `state` at with this run's -b and replicas: where the samples it
    consumed of the epoch (in the epoch's global order) end, or an error naming -b if that is mid-step."""
    saved = state["args"]
    consumed = state.get("samples_in_epoch",  # an older checkpoint's, from its -b and number of replicas
                         state["step_in_epoch"] * saved["batch_size"] * len(state.get("rank_rng", [0])) // saved["towers"])
    step = f"-b {args.batch_size}" + (f" x {replicas} replicas" if replicas > 1 else "")
    if consumed % (args.batch_size * replicas):
        raise SystemExit(f"error: {args.resume} stopped {consumed} samples into epoch {state['epoch'] + 1}, not a whole "
                         f"number of steps of {step}: give a -b that makes them so (it was trained with -b "
                         f"{saved['batch_size']})")
    return consumed // (args.batch_size * replicas)


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def check_output_dir(out: Path) -> None:
    """Make --output-dir, or stop with an error naming it if it is not a folder this process can write."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SystemExit(f"error: --output-dir {out} cannot be made a folder: {e.strerror or e}") from e
    if not os.access(out, os.W_OK):
        raise SystemExit(f"error: --output-dir {out} is not writable")


def tensorboard_writer(out: Path):
    """A SummaryWriter on OUTPUT/tensorboard when TensorBoard is installed (the optional extra), else None."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(out / "tensorboard"))


def main(args) -> dict:
    """Train (or with --test-only, evaluate); returns the last validation metrics."""
    lr_given = args.lr is not None
    if args.test_only and not args.resume:
        raise SystemExit("error: --test-only evaluates the --resume checkpoint: give --resume")
    if apply_recipe(args) and args.data_path is None and not args.test_only:
        print(f"the embedded run's recipe: batch {args.batch_size}, {args.init} initialisation, lr {args.lr:g} divided "
              f"by 10 after epoch {args.lr_step_size} of {args.epochs} (the paper's, for 1000 classes: -b 128 --init "
              f"paper --lr-scheduler plateau; README, 'The embedded run')")
    layout = distributed.setup(args.towers, resolve_device(args.device), args.dist_timeout)  # torchrun's ranks
    device = layout.device
    autocast, scaler = mixed_precision(args.amp, device)
    torch.manual_seed(args.seed)
    try:
        resumed = checkpoint.load(args.resume) if args.resume else None  # read once, used below
    except checkpoint.CheckpointError as e:
        raise SystemExit(f"error: {e}") from e
    out = Path(args.output_dir)
    if not args.test_only:
        check_output_dir(out)
    try:
        root = Path(args.data_path) if args.data_path else ensure_embedded()
        classes, train_samples, val_samples = load_splits(root, args.exclude_list)
        if len(train_samples) < args.batch_size * layout.replicas and not args.test_only:
            raise DatasetError(f"{root / 'train'} has {len(train_samples)} images, fewer than one batch "
                               f"(-b {args.batch_size})" + (f" for each of {layout.replicas} data-parallel replicas"
                                                            if layout.replicas > 1 else ""))
        if bad := quick_check_all([p for p, _ in (val_samples if args.test_only else train_samples + val_samples)],
                                  args.workers):
            raise bad_files_error(bad)
        if args.kernels is None:
            args.kernels, why = default_kernels(args, resumed, device, len(classes), layout, autocast)
            print(f"kernels: {args.kernels}, {why} (--kernels to choose)")
        model = AlexNet(num_classes=len(classes), kernels=args.kernels, init=args.init, **model_options(args)).to(device)
    except DatasetError as e:
        raise SystemExit(f"error: {e}") from e
    net = layout.wrap(model, args.seed)  # `model`, or under torchrun this rank's tower and/or DDP replica of it
    optimizer = torch.optim.SGD(net.parameters(), lr=args.lr, momentum=args.momentum,
                                weight_decay=args.weight_decay)
    scheduler = make_scheduler(optimizer, args)
    Loader = loader_class(args.data_loader)
    val_loader = Loader(val_plan(val_samples, **layout.shard()), args.batch_size, device, args.workers)
    print(f"data: {root} ({len(classes)} classes, {len(train_samples)} train / {len(val_samples)} val images); "
          f"kernels: {args.kernels}; device: {device}; amp: {args.amp}")

    epoch, step_in_epoch, global_step = 0, 0, 0
    if resumed is not None:
        state = resumed
        try:
            trained = {**PAPER_OPTIONS, **state.get("model_options", {})}
            if trained != model.options:
                raise checkpoint.CheckpointError(
                    f"checkpoint {args.resume} is the variant {trained}, this run builds {model.options}: "
                    f"give the ablation flags it was trained with")
            checkpoint.load_model_state(model, state, args.resume)
            layout.load_weights(net, model)
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
            optimizer.load_state_dict(layout.local_optimizer_state(state["optimizer"], net))
            scheduler.load_state_dict(state["scheduler"])
            if state.get("scaler"):  # empty unless the run used --amp fp16
                scaler.load_state_dict(state["scaler"])
            epoch, global_step = state["epoch"], state["step"]
            step_in_epoch = resume_step(state, args, layout.replicas)
            if rng := layout.rng_to_restore(state):  # None if another number of processes wrote it
                set_rng_state(rng)
            print(f"resumed from {args.resume} at epoch {epoch}, sample {step_in_epoch * args.batch_size * layout.replicas}"
                  f" of the epoch (step {step_in_epoch} at -b {args.batch_size})")
            if lr_given:
                print(f"lr set to {args.lr:g} by --lr (the checkpoint's was {optimizer.param_groups[0]['lr']:g})")
                for group in optimizer.param_groups:
                    group["lr"] = args.lr
            if epoch >= args.epochs:
                print(f"the checkpoint has finished all {args.epochs} epochs; raise --epochs to train on")

    if args.test_only:
        metrics = evaluate(net, val_loader, autocast=autocast, reduce=layout.sum_over_replicas)
        print(f"val: loss {metrics['loss']:.4f}  acc@1 {100 * metrics['acc1']:.2f}  acc@5 {100 * metrics['acc5']:.2f}")
        return metrics

    ckpt_path, metrics_path = out / "checkpoint.pth", out / "metrics.jsonl"
    if layout.main:
        for leftover in checkpoint.remove_leftovers(ckpt_path):
            print(f"removed {leftover}, left by a save that was killed")
    writer = tensorboard_writer(out) if layout.main else None

    def save(epoch_done: int, step: int):
        # Every rank takes part (the towers' halves are gathered, the RNG states collected); rank 0 writes.
        state = {"arch": checkpoint.ARCH, "model": layout.model_state(net),
                 "optimizer": layout.optimizer_state(optimizer, net),
                 "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "epoch": epoch_done,
                 "step_in_epoch": step, "samples_in_epoch": step * args.batch_size * layout.replicas, "step": global_step, "rng": rng_state(), "args": vars(args),
                 "classes": classes, "model_options": model.options, "rank_rng": layout.gather_objects(rng_state())}
        if layout.main:
            try:
                checkpoint.save(state, ckpt_path)
            except checkpoint.CheckpointError as e:
                raise SystemExit(f"error: {e}") from e

    val = None
    stopped = False
    while epoch < args.epochs and not stopped:
        plan = train_plan(train_samples, args.batch_size, args.seed, epoch, lighting_std=args.lighting_std,
                          **layout.shard())
        loader = Loader(plan, args.batch_size, device, args.workers, start_batch=step_in_epoch)

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

        train = train_one_epoch(net, optimizer, loader, epoch, on_step, autocast, scaler)
        if stopped:
            break
        val = evaluate(net, val_loader, autocast=autocast, reduce=layout.sum_over_replicas)
        lr = optimizer.param_groups[0]["lr"]
        if args.lr_scheduler == "plateau":
            scheduler.step(val["top1"])
        else:
            scheduler.step()
        epoch, step_in_epoch = epoch + 1, 0
        save(epoch, 0)
        record = {"epoch": epoch, "step": global_step, "lr": lr, **train,
                  **{f"val_{k}": v for k, v in val.items()}}
        if layout.main:
            with open(metrics_path, "a") as f:
                f.write(json.dumps(record) + "\n")
        if writer:
            for name, value in record.items():
                writer.add_scalar(name, value, epoch)
            writer.flush()
        print(f"epoch {epoch}/{args.epochs}: train loss {train['train_loss']:.4f}, {train['img_per_s']:.1f} img/s; "
              f"val loss {val['loss']:.4f} acc@1 {100 * val['acc1']:.2f} acc@5 {100 * val['acc5']:.2f}; lr {lr:g}")
        stopped = bool(args.max_steps and global_step >= args.max_steps)

    if writer:
        writer.close()
    print(f"checkpoint: {ckpt_path}\nmetrics: {metrics_path}")
    return val


if __name__ == "__main__":
    try:
        distributed.run(main, get_args_parser().parse_args())
    except DatasetError as e:  # a file the loader cannot decode, met mid-epoch
        raise SystemExit(f"error: {e}") from e
