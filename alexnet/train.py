"""Train the paper's AlexNet.

    python -m alexnet.train                                   # embedded dataset, ~10 min on 2 CPU cores
    python -m alexnet.train --kernels compile                 # the same network through torch.compile
    python -m alexnet.train --device cuda --kernels triton    # on the Triton kernels (a GPU)
    python -m alexnet.train --device cuda --amp bf16          # mixed precision (fp16: --amp fp16)
    python -m alexnet.train --data-path /data/imagenet --device cuda          # 90 epochs, the paper's recipe
    python -m alexnet.train --data-path /data/imagenet --exclude-list bad_files.txt  # from python -m data.check
    python -m alexnet.train --data-loader pil                 # PIL + DataLoader instead of DALI
    python -m alexnet.train --resume output/checkpoint.pth    # carry on where a run stopped
    python -m alexnet.train --resume output/model_best.pth --test-only
    torchrun --nproc-per-node 2 -m alexnet.train --towers 2   # the paper's two towers, one GPU each
    torchrun --nproc-per-node 8 -m alexnet.train --towers 2   # 4 data-parallel replicas x 2 towers (-b per replica)

The defaults are the paper's: its initialisation; SGD, batch 128, momentum 0.9, weight decay 5e-4,
learning rate 0.01 divided by 10 whenever validation top-1 stops improving (`--lr-scheduler step`
for a fixed schedule), 90 epochs. On the embedded dataset (no --data-path) four differ, as printed
at start-up: batch 32, Caffe's initialisation (biases 0.1 instead of 1), 7 epochs, and lr 0.01 for
4 epochs then 0.001, because the paper's recipe, made for 1000 classes, does not learn 10 classes
in a short run (docs/paper.md). The kernels are torch's (cuDNN on a GPU, oneDNN on a CPU) unless
--kernels says otherwise.

The run's folder (--output-dir) holds args.json (the resolved arguments), metrics.jsonl (a line per
epoch), checkpoint.pth (after every epoch) and model_best.pth (the epoch with the best validation
top-1). A folder that holds another run's files is refused unless --resume continues that run or
--overwrite replaces it. Resuming takes the data path and recipe from the checkpoint's arguments
(flags given now override them) and continues at the exact sample where the run stopped: bit for
bit the run that never stopped (on the CPU). On a terminal a progress bar shows each epoch;
otherwise (a log file, a cluster job) a plain line every --print-freq steps.
"""

import argparse
import contextlib
import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

import kernels
from alexnet import checkpoint, distributed
from alexnet.model import INITS, PAPER_OPTIONS, AlexNet
from data.check import available_cpus, quick_check_all
from data.embedded import ensure_embedded
from data.folder import DatasetError, load_splits
from data.pil import PilLoader
from data.plans import bad_files_error, train_plan, val_plan

# Defaults that depend on the data. With --data-path they are the paper's. The paper's recipe is made
# for ImageNet's 1000 classes; on the embedded dataset's 10 it does not learn in a 10-minute run, so
# that run (no --data-path) departs from it: batch 32, Caffe's initialisation, 7 epochs, and lr 0.01
# for 4 epochs then 0.001 (docs/paper.md, "The embedded run"). A flag given on the command line wins.
RECIPES = {"paper": dict(batch_size=128, init="paper", epochs=90, lr=0.01, lr_scheduler="plateau", lr_step_size=30),
           "embedded": dict(batch_size=32, init="caffe", epochs=7, lr=0.01, lr_scheduler="step", lr_step_size=4)}
# The rest of what a run is: the same on any data. Unset flags (None) take these, or when resuming the
# checkpoint's.
DEFAULTS = dict(kernels="torch", amp="none", momentum=0.9, weight_decay=5e-4, lr_gamma=0.1, lr_patience=2,
                seed=0, data_loader="dali", lighting_std=0.1)
# What a resumed run takes from its checkpoint's arguments unless given again; the ablation flags too.
ABLATIONS = ("no_lrn", "no_overlap", "no_groups", "no_dropout")
INHERITED = ("data_path", "exclude_list", *RECIPES["paper"], *DEFAULTS, *ABLATIONS)
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
LOADERS = ("dali", "pil")  # --data-loader: same plans, same outputs
RESUME_KEYS = ("optimizer", "scheduler", "epoch", "step_in_epoch", "step", "rng")  # beyond the weights
# samples_in_epoch too since it was added; an older checkpoint's is step_in_epoch x its -b x its replicas
INTERPRETED_SECONDS_PER_IMAGE = 270  # a training step of Triton's interpreter, per image: ~9 min at -b 2 (2-core CPU)


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
    resumed = "; when resuming, the checkpoint's"
    p = argparse.ArgumentParser(prog="python -m alexnet.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-path", default=None,
                   help="folder with train/<class>/* and val/<class>/* (default: the embedded dataset, "
                        f"generated on first use{resumed})")
    p.add_argument("--kernels", default=None, choices=kernels.BACKENDS,
                   help="which implementation of conv+ReLU, LRN and max-pool to run: torch (cuDNN on a GPU, "
                        "oneDNN on a CPU), compile (torch.compile) or triton (this project's kernels; on a CPU "
                        f"only with --allow-interpreter) (default: torch{resumed})")
    p.add_argument("--allow-interpreter", action="store_true",
                   help="let --kernels triton run on a CPU, in Triton's interpreter: correct, but minutes per image")
    p.add_argument("--amp", default=None, choices=("none", *AMP_DTYPES),
                   help="mixed precision: autocast to bf16, or to fp16 with a gradient scaler (CUDA only); "
                        f"every backend's conv, LRN and pool run in that dtype (default: none{resumed})")
    p.add_argument("-b", "--batch-size", default=None, type=POSITIVE_INT,
                   help=f"images per step (default: 128, the paper's; 32 on the embedded dataset{resumed})")
    p.add_argument("--init", default=None, choices=INITS,
                   help="initialisation: paper (biases 1) or caffe (Caffe's bvlc_alexnet: biases 0.1, fc6/fc7 "
                        f"std 0.005) (default: paper; caffe on the embedded dataset{resumed})")
    p.add_argument("--epochs", default=None, type=POSITIVE_INT,
                   help=f"epochs in all (default: 90, as the paper; 7 on the embedded dataset{resumed})")
    p.add_argument("--lr", default=None, type=POSITIVE,
                   help="initial learning rate; given with --resume, it replaces the checkpoint's current one "
                        "(default: 0.01)")
    p.add_argument("--momentum", default=None, type=NON_NEGATIVE, help=f"SGD momentum (default: 0.9{resumed})")
    p.add_argument("--wd", "--weight-decay", dest="weight_decay", default=None, type=NON_NEGATIVE,
                   help=f"weight decay (default: 5e-4{resumed})")
    p.add_argument("--lr-scheduler", default=None, choices=("plateau", "step"),
                   help="plateau: divide the lr when val top-1 stops improving (the paper); step: divide it "
                        f"every --lr-step-size epochs (default: plateau; step on the embedded dataset{resumed})")
    p.add_argument("--lr-gamma", default=None, type=POSITIVE,
                   help=f"factor the lr is multiplied by (default: 0.1{resumed})")
    p.add_argument("--lr-patience", default=None, type=COUNT,
                   help=f"plateau: epochs without improvement before dividing (default: 2{resumed})")
    p.add_argument("--lr-step-size", default=None, type=POSITIVE_INT,
                   help=f"step: epochs between divisions (default: 30; 4 on the embedded dataset{resumed})")
    p.add_argument("-j", "--workers", default=available_cpus(), type=POSITIVE_INT,
                   help=f"data-loading threads (default: {available_cpus()}, the CPUs this process may use)")
    p.add_argument("--output-dir", default="output",
                   help="the run's folder: args.json, metrics.jsonl, checkpoint.pth, model_best.pth (default: output)")
    p.add_argument("--overwrite", action="store_true",
                   help="start a new run in an --output-dir that holds another run's files, replacing them")
    p.add_argument("--resume", default="", help="checkpoint to resume from (or to evaluate with --test-only)")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if there is one, else cpu)")
    p.add_argument("--seed", default=None, type=SEED,
                   help=f"seed for the weights, the data order and dropout (default: 0{resumed})")
    p.add_argument("--print-freq", default=10, type=POSITIVE_INT,
                   help="when the output is not a terminal, print a line every this many steps (default: 10)")
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
    p.add_argument("--data-loader", default=None, choices=LOADERS,
                   help="dali: the DALI pipeline (decodes on the GPU when training on one); pil: PIL and a "
                        f"torch DataLoader, same samples and augmentation (default: dali{resumed})")
    p.add_argument("--lighting-std", default=None, type=NON_NEGATIVE,
                   help="std of the paper's PCA lighting noise per eigenvector (default: 0.1; 0 turns it off"
                        f"{resumed})")
    p.add_argument("--exclude-list", default=None,
                   help=f"leave out the files this list names (written by python -m data.check ROOT{resumed})")
    ablation = p.add_argument_group("ablations", "switch off one of the paper's ideas (python -m alexnet.ablate runs "
                                                 "them all; when resuming, the checkpoint's are kept)")
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


def resolve_args(args, saved: dict | None) -> tuple[dict, dict]:
    """Fill the flags left unset: from `saved` (the --resume checkpoint's arguments) when given, else from
    the recipe for the data (the embedded run's when there is no --data-path) and DEFAULTS. Returns
    (what came from the checkpoint, what came from the embedded recipe), to be told to the user."""
    def unset(value):  # not given: None, or False for a store_true flag (not 0: --seed 0 is a value)
        return value is None or value is False

    inherited = {}
    if saved is not None:
        for key in INHERITED:
            if unset(getattr(args, key)) and not unset(saved.get(key)):
                inherited[key] = saved[key]
                setattr(args, key, saved[key])
    recipe = RECIPES["embedded" if args.data_path is None else "paper"]
    from_recipe = {}
    for key, value in {**recipe, **DEFAULTS}.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
            from_recipe[key] = value
    return inherited, {k: v for k, v in from_recipe.items() if args.data_path is None and k in recipe}


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
    for images, labels in tqdm(loader, desc=desc, leave=False, dynamic_ncols=True, disable=not sys.stderr.isatty()):
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


class StepLog:
    """Progress within an epoch: a tqdm bar on a terminal; elsewhere (a log file, a cluster job) a plain
    line every `print_freq` steps: epoch and step (1-based), loss, lr, images per second, the time a
    step waited for data and, on a GPU, the most memory allocated so far."""

    def __init__(self, epoch: int, epochs: int, steps: int, start_step: int, print_freq: int, device: torch.device):
        self.epoch, self.epochs, self.steps, self.print_freq, self.device = epoch, epochs, steps, print_freq, device
        self.bar = tqdm(total=steps, initial=start_step, desc=f"epoch {epoch}/{epochs}", dynamic_ncols=True) \
            if sys.stderr.isatty() else None

    def step(self, step: int, loss: float, lr: float, img_s: float, data_s: float) -> None:
        if self.bar is not None:
            self.bar.update()
            self.bar.set_postfix(loss=f"{loss:.3f}", img_s=f"{img_s:.1f}")
        elif step % self.print_freq == 0 or step == self.steps:
            memory = (f"  max mem {torch.cuda.max_memory_allocated(self.device) / 2**20:.0f} MB"
                      if self.device.type == "cuda" else "")
            print(f"epoch {self.epoch}/{self.epochs}  step {step}/{self.steps}  loss {loss:.4f}  lr {lr:g}  "
                  f"{img_s:.1f} img/s  data {data_s:.3f} s{memory}", flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def train_one_epoch(model, optimizer, loader, log: StepLog, on_step, autocast, scaler) -> dict:
    """One pass over `loader`; `on_step(step_in_epoch)` runs after every step and returns True to
    stop early. The forward runs under `autocast()`; `scaler` (a GradScaler) scales the loss.
    Returns the epoch's mean loss, top-1 accuracy in percent and images per second."""
    model.train()
    loss_sum, hits, n, start = 0.0, 0.0, 0, time.perf_counter()
    batches, step = iter(loader), loader.start_batch
    while True:
        waited = time.perf_counter()
        try:
            images, labels = next(batches)
        except StopIteration:
            break
        waited = time.perf_counter() - waited
        step += 1
        with autocast():
            loss = F.cross_entropy(logits := model(images), labels)
        if not math.isfinite(loss.item()):
            raise FloatingPointError(f"loss is {loss.item()} at epoch {log.epoch} step {step}; lower --lr")
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)  # skips the step if fp16 gradients overflowed
        scaler.update()
        b = len(labels)
        loss_sum += loss.item() * b
        hits += accuracy(logits, labels, topk=(1,))[0] * b
        n += b
        log.step(step, loss.item(), optimizer.param_groups[0]["lr"], n / (time.perf_counter() - start), waited)
        if on_step(step):
            break
    log.close()
    seconds = time.perf_counter() - start
    return {"train_loss": loss_sum / max(n, 1), "train_top1": 100 * hits / max(n, 1),
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


def tensorboard_writer(out: Path):
    """A SummaryWriter on OUTPUT/tensorboard when TensorBoard is installed (the optional extra), else None."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(out / "tensorboard"))


def describe_args(args, inherited: dict, from_recipe: dict) -> None:
    """Say where the flags not given came from: the --resume checkpoint, or the embedded run's recipe."""
    if inherited:
        shown = ", ".join(f"--{k.replace('_', '-')} {v}" if v is not True else f"--{k.replace('_', '-')}"
                          for k, v in inherited.items())
        print(f"from {args.resume}'s arguments (a flag given now overrides one): {shown}")
    if from_recipe and not args.test_only:
        print(f"the embedded run's recipe: batch {args.batch_size}, {args.init} initialisation, {args.epochs} epochs, "
              f"lr {args.lr:g} divided by 10 after epoch {args.lr_step_size} (the paper's, for 1000 classes: -b 128 "
              f"--init paper --lr-scheduler plateau --epochs 90; docs/paper.md)")


def check_kernels(args, device: torch.device) -> None:
    """Refuse Triton's CPU interpreter unless asked for; say how to try the other backends."""
    if args.kernels == "triton" and device.type == "cpu":
        minutes = args.batch_size * INTERPRETED_SECONDS_PER_IMAGE / 60
        if not args.allow_interpreter:
            raise SystemExit(f"error: --kernels triton on the CPU runs Triton's interpreter, about {minutes:.0f} "
                             f"minutes per step at -b {args.batch_size}: train on a GPU (--device cuda), use "
                             f"--kernels torch or compile, or add --allow-interpreter to run it anyway")
        print(f"kernels: triton in Triton's CPU interpreter (--allow-interpreter): expect about {minutes:.0f} minutes "
              f"per step at -b {args.batch_size} on a 2-core CPU")
    others = " or ".join(f"--kernels {name}" for name in kernels.BACKENDS if name != args.kernels)
    print(f"kernels: {args.kernels} ({others} to compare)")


def load_data(args, layout) -> tuple[Path, list[str], list, list]:
    """(root, classes, train samples, val samples), with every file training will read checked first."""
    try:
        root = Path(args.data_path) if args.data_path else ensure_embedded()
        classes, train, val = load_splits(root, args.exclude_list)
        if len(train) < args.batch_size * layout.replicas and not args.test_only:
            raise DatasetError(f"{root / 'train'} has {len(train)} images, fewer than one batch (-b {args.batch_size})"
                               + (f" for each of {layout.replicas} data-parallel replicas" if layout.replicas > 1 else ""))
        if bad := quick_check_all([p for p, _ in (val if args.test_only else train + val)], args.workers):
            raise bad_files_error(bad)
    except DatasetError as e:
        raise SystemExit(f"error: {e}") from e
    return root, classes, train, val


class Run:
    """One training run: the network, its optimiser and where it is (epoch, step, best val top-1), and
    how it is saved into the run's folder."""

    def __init__(self, args, layout, model: AlexNet, classes: list[str]):
        self.args, self.layout, self.model, self.classes = args, layout, model, classes
        self.net = layout.wrap(model, args.seed)  # `model`, or under torchrun this rank's tower and/or DDP replica
        self.optimizer = torch.optim.SGD(self.net.parameters(), lr=args.lr, momentum=args.momentum,
                                         weight_decay=args.weight_decay)
        self.scheduler = make_scheduler(self.optimizer, args)
        self.autocast, self.scaler = mixed_precision(args.amp, layout.device)
        self.epoch, self.step_in_epoch, self.global_step, self.best_top1 = 0, 0, 0, None
        self.out = Path(args.output_dir)

    def restore(self, state: dict, lr_given: bool) -> None:
        """Load the --resume checkpoint's weights and, unless --test-only, where it was."""
        args, layout = self.args, self.layout
        try:
            trained = {**PAPER_OPTIONS, **state.get("model_options", {})}
            if trained != self.model.options:
                raise checkpoint.CheckpointError(
                    f"checkpoint {args.resume} is the variant {trained}, this run builds {self.model.options}: "
                    f"give the ablation flags it was trained with")
            checkpoint.load_model_state(self.model, state, args.resume)
            layout.load_weights(self.net, self.model)
            if state.get("classes", self.classes) != self.classes:
                raise checkpoint.CheckpointError(
                    f"checkpoint {args.resume} was trained on other classes than the data has "
                    f"({len(state['classes'])} vs {len(self.classes)})")
            missing = [key for key in RESUME_KEYS if key not in state]
            if missing and not args.test_only:
                raise checkpoint.CheckpointError(
                    f"checkpoint {args.resume} holds no training state ({', '.join(missing)} missing): "
                    f"it can be evaluated with --test-only, not resumed")
        except checkpoint.CheckpointError as e:
            raise SystemExit(f"error: {e}") from e
        if args.test_only:
            return
        self.optimizer.load_state_dict(layout.local_optimizer_state(state["optimizer"], self.net))
        self.scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):  # empty unless the run used --amp fp16
            self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.global_step, self.best_top1 = state["epoch"], state["step"], state.get("best_top1")
        self.step_in_epoch = resume_step(state, args, layout.replicas)
        if rng := layout.rng_to_restore(state):  # None if another number of processes wrote it
            set_rng_state(rng)
        print(f"resumed from {args.resume} in epoch {self.epoch + 1}, at sample "
              f"{self.step_in_epoch * args.batch_size * layout.replicas} of the epoch (step {self.step_in_epoch} "
              f"at -b {args.batch_size})")
        if lr_given:
            print(f"lr set to {args.lr:g} by --lr (the checkpoint's was {self.optimizer.param_groups[0]['lr']:g})")
            for group in self.optimizer.param_groups:
                group["lr"] = args.lr
        if self.epoch >= args.epochs:
            print(f"the checkpoint has finished all {args.epochs} epochs; raise --epochs to train on")

    def save(self, best: bool = False) -> None:
        """Write checkpoint.pth (and make it model_best.pth too if `best`). Every rank takes part (the
        towers' halves are gathered, the RNG states collected); rank 0 writes."""
        args, layout = self.args, self.layout
        state = {"arch": checkpoint.ARCH, "model": layout.model_state(self.net),
                 "optimizer": layout.optimizer_state(self.optimizer, self.net),
                 "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(), "epoch": self.epoch,
                 "step_in_epoch": self.step_in_epoch,
                 "samples_in_epoch": self.step_in_epoch * args.batch_size * layout.replicas,
                 "step": self.global_step, "best_top1": self.best_top1, "rng": rng_state(), "args": vars(args),
                 "classes": self.classes, "model_options": self.model.options,
                 "rank_rng": layout.gather_objects(rng_state())}
        if layout.main:
            try:
                checkpoint.save(state, self.out / checkpoint.CHECKPOINT)
                if best:
                    checkpoint.save_best(self.out / checkpoint.CHECKPOINT, self.out / checkpoint.BEST)
            except (checkpoint.CheckpointError, OSError) as e:
                raise SystemExit(f"error: {e}") from e


def start_folder(run: Run) -> None:
    """Ready the run's folder: leftovers of killed saves removed, metrics past the checkpoint dropped,
    args.json written."""
    out, args = run.out, run.args
    for name in (checkpoint.CHECKPOINT, checkpoint.BEST):
        for leftover in checkpoint.remove_leftovers(out / name):
            print(f"removed {leftover}, left by a save that was killed")
    checkpoint.keep_metrics_until(out / checkpoint.METRICS, run.epoch)
    (out / checkpoint.ARGS).write_text(json.dumps(vars(args), indent=1) + "\n")


def train(run: Run, train_samples: list, val_loader, Loader) -> dict | None:
    """Epochs until --epochs or --max-steps; after each, validate, save, and log a line of metrics."""
    args, layout, out = run.args, run.layout, run.out
    writer = tensorboard_writer(out) if layout.main else None
    val, stopped = None, False
    while run.epoch < args.epochs and not stopped:
        plan = train_plan(train_samples, args.batch_size, args.seed, run.epoch, lighting_std=args.lighting_std,
                          **layout.shard())
        loader = Loader(plan, args.batch_size, layout.device, args.workers, run.step_in_epoch,
                        AMP_DTYPES.get(args.amp, torch.float32))  # --amp's dtype: no cast before conv1
        steps = loader.start_batch + len(loader)

        def on_step(step):
            nonlocal stopped
            run.global_step, run.step_in_epoch = run.global_step + 1, step
            stopped = bool(args.max_steps) and run.global_step >= args.max_steps and step < steps
            if stopped or (args.checkpoint_every and run.global_step % args.checkpoint_every == 0 and step < steps):
                run.save()
            if stopped:
                print(f"stopped after {run.global_step} steps, in epoch {run.epoch + 1} at step {step} of {steps}")
            return stopped

        log = StepLog(run.epoch + 1, args.epochs, steps, loader.start_batch, args.print_freq, layout.device)
        train = train_one_epoch(run.net, run.optimizer, loader, log, on_step, run.autocast, run.scaler)
        if stopped:
            break
        val = evaluate(run.net, val_loader, autocast=run.autocast, reduce=layout.sum_over_replicas)
        lr = run.optimizer.param_groups[0]["lr"]
        if args.lr_scheduler == "plateau":
            run.scheduler.step(val["top1"])
        else:
            run.scheduler.step()
        best = run.best_top1 is None or val["top1"] > run.best_top1
        if best:
            run.best_top1 = val["top1"]
        run.epoch, run.step_in_epoch = run.epoch + 1, 0
        run.save(best)
        record = {"epoch": run.epoch, "step": run.global_step, "lr": lr, **train,
                  **{f"val_{k}": v for k, v in val.items()}}
        if layout.main:
            with open(out / checkpoint.METRICS, "a") as f:
                f.write(json.dumps(record) + "\n")
        if writer:
            for name, value in record.items():
                writer.add_scalar(name, value, run.epoch)
            writer.flush()
        print(f"epoch {run.epoch}/{args.epochs}: train loss {train['train_loss']:.4f}, top-1 {train['train_top1']:.2f} %, "
              f"{train['img_per_s']:.1f} img/s; val loss {val['loss']:.4f}, top-1 {val['top1']:.2f} %, top-5 "
              f"{val['top5']:.2f} %{' (best)' if best else ''}; lr {lr:g}", flush=True)
        stopped = bool(args.max_steps and run.global_step >= args.max_steps)
    if writer:
        writer.close()
    print(f"checkpoint: {out / checkpoint.CHECKPOINT}\nmetrics: {out / checkpoint.METRICS}")
    return val


def main(args) -> dict | None:
    """Train (or with --test-only, evaluate); returns the last validation metrics."""
    lr_given = args.lr is not None
    if args.test_only and not args.resume:
        raise SystemExit("error: --test-only evaluates the --resume checkpoint: give --resume")
    try:
        resumed = checkpoint.load(args.resume) if args.resume else None  # read once, used below
        describe_args(args, *resolve_args(args, resumed and resumed.get("args", {})))
        if not args.test_only:
            checkpoint.prepare_output_dir(Path(args.output_dir), args.resume, args.overwrite)
    except checkpoint.CheckpointError as e:
        raise SystemExit(f"error: {e}") from e
    layout = distributed.setup(args.towers, resolve_device(args.device), args.dist_timeout)  # torchrun's ranks
    check_kernels(args, layout.device)
    torch.manual_seed(args.seed)
    root, classes, train_samples, val_samples = load_data(args, layout)
    model = AlexNet(num_classes=len(classes), kernels=args.kernels, init=args.init, **model_options(args))
    run = Run(args, layout, model.to(layout.device), classes)
    Loader = loader_class(args.data_loader)
    val_loader = Loader(val_plan(val_samples, **layout.shard()), args.batch_size, layout.device, args.workers,
                        dtype=AMP_DTYPES.get(args.amp, torch.float32))
    print(f"data: {root} ({len(classes)} classes, {len(train_samples)} train / {len(val_samples)} val images); "
          f"device: {layout.device}; amp: {args.amp}")
    if resumed is not None:
        run.restore(resumed, lr_given)
    if args.test_only:
        print(f"evaluating {args.resume}")
        metrics = evaluate(run.net, val_loader, autocast=run.autocast, reduce=layout.sum_over_replicas)
        print(f"val: loss {metrics['loss']:.4f}, top-1 {metrics['top1']:.2f} %, top-5 {metrics['top5']:.2f} %")
        return metrics
    if layout.main:
        start_folder(run)
    return train(run, train_samples, val_loader, Loader)


if __name__ == "__main__":
    try:
        distributed.run(main, get_args_parser().parse_args())
    except DatasetError as e:  # a file the loader cannot decode, met mid-epoch
        raise SystemExit(f"error: {e}") from e
