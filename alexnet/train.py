"""Train the paper's AlexNet.

    python -m alexnet.train                                   # embedded dataset, ~10 min on 2 CPU cores
    python -m alexnet.train --compile                         # the whole network through torch.compile
    python -m alexnet.train --kernels compile                 # only conv, LRN and pool through torch.compile
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

The run's folder (--output-dir) holds args.json (the resolved configuration), metrics.jsonl (a line
per epoch), checkpoint.pth (after every epoch) and model_best.pth (a copy of the epoch with the best
validation top-1). A run holds its folder for as long as it runs (a second run into it is refused);
a folder that holds another run's files is refused unless --resume continues that run or
--overwrite replaces it, which happens only once every check has passed (alexnet/run_folder.py).

Resuming takes the data path and recipe from the checkpoint's arguments (flags given now override
them) and continues at the exact sample where the run stopped: bit for bit the run that never
stopped (on the CPU), the resumed epoch's train metrics included. The checkpoint records its data
(absolute path, samples per split, a fingerprint of the file names and sizes): data that changed
since is refused, unless --data-path is given again, and then the epoch in progress restarts.
A step reads nothing back from the device: the loss and accuracy add up there and are read when a
line is printed, and on a GPU the whole step is one CUDA graph (--cuda-graphs). On a terminal a
progress bar shows each epoch; otherwise (a log file, a cluster job) a plain line
every --print-freq steps.
"""


import argparse
import contextlib
import dataclasses
import functools
import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

import kernels
from alexnet import checkpoint, distributed
from alexnet.cli import COUNT, DEVICE_HELP, NON_NEGATIVE, POSITIVE, POSITIVE_INT, SEED, resolve_device, topk_hits
from alexnet.model import INITS, PAPER_OPTIONS, AlexNet
from alexnet.step import AMP_DTYPES, BAD_LOSS, FIRST_BAD, HITS, LAST_LOSS, LOSS_SUM, CapturedStep, capture_blockers, \
    training_step
from alexnet.run_folder import ARGS, BEST, CHECKPOINT, METRICS, FolderError, RunFolder, append_metrics, \
    keep_metrics_until
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
# The rest of what a run is: the same on any data.
DEFAULTS = dict(data_path=None, exclude_list=None, kernels="torch", amp="none", momentum=0.9, weight_decay=5e-4,
                lr_gamma=0.1, lr_patience=2, seed=0, data_loader="dali", lighting_std=0.1, no_lrn=False,
                no_overlap=False, no_groups=False, no_dropout=False)
# What a resumed run takes from its checkpoint's arguments unless given again. These flags have no
# argparse default: a flag is given exactly when it is in the parsed namespace.
INHERITED = tuple(dict.fromkeys(("data_path", "exclude_list", *RECIPES["paper"], *DEFAULTS)))
LOADERS = ("dali", "pil")  # --data-loader: same plans, same outputs
RESUME_KEYS = ("optimizer", "scheduler", "epoch", "step_in_epoch", "step", "rng")  # beyond the weights
# samples_in_epoch too since it was added; an older checkpoint's is step_in_epoch x its -b x its replicas
INTERPRETED_SECONDS_PER_IMAGE = 270  # a training step of Triton's interpreter, per image: ~9 min at -b 2 (2-core CPU)


@dataclass(frozen=True)
class Config:
    """A run, every value resolved: the flags given, else (when resuming) the checkpoint's arguments,
    else the recipe for the data and DEFAULTS. Saved as the checkpoint's "args" and as args.json."""
    data_path: str | None  # absolute; None until the embedded dataset's folder is known
    exclude_list: str | None  # absolute
    data_loader: str
    lighting_std: float
    workers: int
    kernels: str
    allow_interpreter: bool
    compile: bool
    cuda_graphs: str
    amp: str
    init: str
    no_lrn: bool
    no_overlap: bool
    no_groups: bool
    no_dropout: bool
    batch_size: int
    epochs: int
    lr: float
    momentum: float
    weight_decay: float
    lr_scheduler: str
    lr_gamma: float
    lr_patience: int
    lr_step_size: int
    seed: int
    device: str  # resolved: "cpu", "cuda", "cuda:N"
    output_dir: str
    overwrite: bool
    resume: str
    test_only: bool
    max_steps: int
    checkpoint_every: int
    print_freq: int
    towers: int
    dist_timeout: float

    @property
    def model_options(self) -> dict:
        """AlexNet's keyword arguments for the ablation flags (all off: the paper's network)."""
        return dict(dropout=0.0 if self.no_dropout else 0.5, lrn=not self.no_lrn, overlap=not self.no_overlap,
                    groups=not self.no_groups)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def get_args_parser() -> argparse.ArgumentParser:
    resumed = "; when resuming, the checkpoint's"
    unset = argparse.SUPPRESS  # INHERITED flags: absent from the namespace unless given
    p = argparse.ArgumentParser(prog="python -m alexnet.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-path", default=unset,
                   help="folder with train/<class>/* and val/<class>/* (default: the embedded dataset, "
                        f"generated on first use{resumed})")
    p.add_argument("--kernels", default=unset, choices=kernels.BACKENDS,
                   help="which implementation of conv+ReLU, LRN and max-pool to run: torch (cuDNN on a GPU, "
                        "oneDNN on a CPU), compile (torch.compile) or triton (this project's kernels; on a CPU "
                        f"only with --allow-interpreter) (default: torch{resumed})")
    p.add_argument("--allow-interpreter", action="store_true",
                   help="let --kernels triton run on a CPU, in Triton's interpreter: correct, but minutes per image")
    p.add_argument("--compile", action="store_true",
                   help="compile the whole network with torch.compile (Inductor; the ops of --kernels triton "
                        "are custom ops it sees whole): --kernels torch --compile is cuDNN + Inductor, the "
                        "baseline a PyTorch user would pick")
    p.add_argument("--cuda-graphs", default="on", choices=("on", "off"),
                   help="on a GPU, capture the training step (forward, backward, update) once as a CUDA graph "
                        "after a few warm-up steps and replay it; off: launch every kernel from Python each "
                        "step (default: on; always off on a CPU)")
    p.add_argument("--amp", default=unset, choices=("none", *AMP_DTYPES),
                   help="mixed precision: autocast to bf16, or to fp16 with a gradient scaler (CUDA only); "
                        f"every backend's conv, LRN and pool run in that dtype (default: none{resumed})")
    p.add_argument("-b", "--batch-size", default=unset, type=POSITIVE_INT,
                   help=f"images per step (default: 128, the paper's; 32 on the embedded dataset{resumed})")
    p.add_argument("--init", default=unset, choices=INITS,
                   help="initialisation: paper (biases 1) or caffe (Caffe's bvlc_alexnet: biases 0.1, fc6/fc7 "
                        f"std 0.005) (default: paper; caffe on the embedded dataset{resumed})")
    p.add_argument("--epochs", default=unset, type=POSITIVE_INT,
                   help=f"epochs in all (default: 90, as the paper; 7 on the embedded dataset{resumed})")
    p.add_argument("--lr", default=unset, type=POSITIVE,
                   help="initial learning rate; given with --resume, it replaces the checkpoint's current one "
                        "(default: 0.01)")
    p.add_argument("--momentum", default=unset, type=NON_NEGATIVE, help=f"SGD momentum (default: 0.9{resumed})")
    p.add_argument("--wd", "--weight-decay", dest="weight_decay", default=unset, type=NON_NEGATIVE,
                   help=f"weight decay (default: 5e-4{resumed})")
    p.add_argument("--lr-scheduler", default=unset, choices=("plateau", "step"),
                   help="plateau: divide the lr when val top-1 stops improving (the paper); step: divide it "
                        f"every --lr-step-size epochs (default: plateau; step on the embedded dataset{resumed})")
    p.add_argument("--lr-gamma", default=unset, type=POSITIVE,
                   help=f"factor the lr is multiplied by (default: 0.1{resumed})")
    p.add_argument("--lr-patience", default=unset, type=COUNT,
                   help=f"plateau: epochs without improvement before dividing (default: 2{resumed})")
    p.add_argument("--lr-step-size", default=unset, type=POSITIVE_INT,
                   help=f"step: epochs between divisions (default: 30; 4 on the embedded dataset{resumed})")
    p.add_argument("-j", "--workers", default=available_cpus(), type=POSITIVE_INT,
                   help=f"data-loading threads (default: {available_cpus()}, the CPUs this process may use)")
    p.add_argument("--output-dir", default="output",
                   help="the run's folder: args.json, metrics.jsonl, checkpoint.pth, model_best.pth (default: output)")
    p.add_argument("--overwrite", action="store_true",
                   help="start a new run in an --output-dir that holds another run's files, replacing them once "
                        "every check has passed")
    p.add_argument("--resume", default="", help="checkpoint to resume from (or to evaluate with --test-only)")
    p.add_argument("--device", default=None, help=DEVICE_HELP)
    p.add_argument("--seed", default=unset, type=SEED,
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
    p.add_argument("--data-loader", default=unset, choices=LOADERS,
                   help="dali: the DALI pipeline (decodes on the GPU when training on one); pil: PIL and a "
                        f"torch DataLoader, same samples and augmentation (default: dali{resumed})")
    p.add_argument("--lighting-std", default=unset, type=NON_NEGATIVE,
                   help="std of the paper's PCA lighting noise per eigenvector (default: 0.1; 0 turns it off"
                        f"{resumed})")
    p.add_argument("--exclude-list", default=unset,
                   help=f"leave out the files this list names (written by python -m data.check ROOT{resumed})")
    ablation = p.add_argument_group("ablations", "switch off one of the paper's ideas (python -m alexnet.ablate runs "
                                                 "them all; when resuming, the checkpoint's are kept)")
    ablation.add_argument("--no-lrn", action="store_true", default=unset, help="no local response normalisation")
    ablation.add_argument("--no-overlap", action="store_true", default=unset,
                          help="non-overlapping 2x2 max-pooling, stride 2")
    ablation.add_argument("--no-groups", action="store_true", default=unset,
                          help="one tower: conv2, conv4, conv5 without groups (same widths)")
    ablation.add_argument("--no-dropout", action="store_true", default=unset, help="no dropout before fc6 and fc7")
    return p


def resolve(args: argparse.Namespace, saved: dict | None) -> tuple[Config, dict, dict]:
    """The run's Config from the parsed flags and `saved` (the --resume checkpoint's arguments, or
    None). Returns (config, what came from the checkpoint, what came from the embedded run's recipe),
    the last two to be told to the user."""
    given = vars(args)
    inherited = {key: saved[key] for key in INHERITED if key not in given and key in (saved or {})}
    values = {**given, **inherited}
    embedded = values.get("data_path") is None
    from_recipe = {k: v for k, v in RECIPES["embedded" if embedded else "paper"].items() if k not in values}
    values = {**DEFAULTS, **from_recipe, **values}
    for key in ("data_path", "exclude_list"):  # a resume from another folder reads the same files
        if values[key] is not None:
            values[key] = os.path.abspath(values[key])
    values["device"] = str(resolve_device(values["device"]))
    return Config(**values), inherited, from_recipe if embedded else {}


def describe(config: Config, inherited: dict, from_recipe: dict) -> None:
    """Say where the values not given came from: the --resume checkpoint, or the embedded run's recipe."""
    shown = ", ".join(f"--{k.replace('_', '-')}" + ("" if v is True else f" {v}")
                      for k, v in inherited.items() if v is not None and v is not False)
    if shown:
        print(f"from {config.resume}'s arguments (a flag given now overrides one): {shown}")
    if from_recipe and not config.test_only:
        decay = (f" (x {config.lr_gamma:g} after epoch {config.lr_step_size})"
                 if config.lr_step_size < config.epochs else "")
        print(f"the embedded run's recipe: batch {config.batch_size}, {config.init} initialisation, {config.epochs} "
              f"epochs, lr {config.lr:g}{decay} (the paper's, for 1000 classes: -b 128 --init paper --lr-scheduler "
              f"plateau --epochs 90; docs/paper.md)")


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


def check_backend(config: Config, device: torch.device) -> None:
    """Refuse what `device` cannot run (fp16 autocast on a CPU; Triton's CPU interpreter unless asked
    for) before anything is read or written; say how to try the other backends."""
    if config.amp == "fp16" and device.type != "cuda":
        raise SystemExit(f"error: --amp fp16 needs a CUDA device (got --device {device}); use --amp bf16 on the CPU")
    if config.kernels == "triton" and device.type == "cpu":
        minutes = config.batch_size * INTERPRETED_SECONDS_PER_IMAGE / 60
        if not config.allow_interpreter:
            raise SystemExit(f"error: --kernels triton on the CPU runs Triton's interpreter, about {minutes:.0f} "
                             f"minutes per step at -b {config.batch_size}: train on a GPU (--device cuda), use "
                             f"--kernels torch or compile, or add --allow-interpreter to run it anyway")
        print(f"kernels: triton in Triton's CPU interpreter (--allow-interpreter): expect about {minutes:.0f} minutes "
              f"per step at -b {config.batch_size} on a 2-core CPU")
    others = " or ".join(f"--kernels {name}" for name in kernels.BACKENDS if name != config.kernels)
    print(f"kernels: {config.kernels} ({others} to compare)")


def make_scheduler(optimizer, config: Config):
    if config.lr_scheduler == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, config.lr_step_size, config.lr_gamma)
    return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=config.lr_gamma,
                                                      patience=config.lr_patience)


@torch.no_grad()
def evaluate(model, loader, desc="val", autocast=contextlib.nullcontext, reduce=None) -> dict:
    """Mean loss, and top-1 and top-5 accuracy in percent, of `model` over `loader`. `reduce`, given,
    sums the (loss, top-1 hits, top-5 hits, samples) totals over the data-parallel ranks' shards."""
    model.eval()
    totals, n = None, 0  # loss sum, top-1 and top-5 hits: on the device, read once at the end
    for images, labels in tqdm(loader, desc=desc, leave=False, dynamic_ncols=True, disable=not sys.stderr.isatty()):
        with autocast():
            logits = model(images)
        hit1, hit5 = topk_hits(logits, labels)
        batch = torch.stack([t.double() for t in (F.cross_entropy(logits, labels, reduction="sum"), hit1.sum(),
                                                  hit5.sum())])
        totals, n = (batch if totals is None else totals + batch), n + len(labels)
    if totals is None:  # this rank's shard is empty; the other replicas' totals may not be
        totals = torch.zeros(3, dtype=torch.float64)
    totals = torch.cat((totals, totals.new_tensor([n])))
    loss, top1, top5, n = (reduce(totals) if reduce else totals).tolist()
    return {"loss": loss / n, "top1": 100 * top1 / n, "top5": 100 * top5 / n}


class StepLog:
    """Progress within an epoch: a tqdm bar on a terminal; elsewhere (a log file, a cluster job) a plain
    line every `print_freq` steps: epoch and step (1-based), loss, lr, images per second, the time a
    step waited for data and, on a GPU, the most memory allocated so far. The loss is read from the
    device only for those lines (and the bar's figures, updated as often)."""

    def __init__(self, epoch: int, epochs: int, steps: int, start_step: int, print_freq: int, device: torch.device):
        self.epoch, self.epochs, self.steps, self.print_freq, self.device = epoch, epochs, steps, print_freq, device
        self.bar = tqdm(total=steps, initial=start_step, desc=f"epoch {epoch}/{epochs}", dynamic_ncols=True) \
            if sys.stderr.isatty() else None

    def due(self, step: int) -> bool:
        """Whether step `step` shows its loss: every `print_freq` steps and the epoch's last."""
        return step % self.print_freq == 0 or step == self.steps

    def step(self, step: int, shown: tuple[float, float] | None, img_s: float, data_s: float) -> None:
        """Step `step` ended; `shown` is (its loss, the lr) when it is `due`, else None."""
        if self.bar is not None:
            self.bar.update()
        if shown is None:
            return
        loss, lr = shown
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{loss:.3f}", img_s=f"{img_s:.1f}")
        else:
            memory = (f"  max mem {torch.cuda.max_memory_allocated(self.device) / 2**20:.0f} MB"
                      if self.device.type == "cuda" else "")
            print(f"epoch {self.epoch}/{self.epochs}  step {step}/{self.steps}  loss {loss:.4f}  lr {lr:g}  "
                  f"{img_s:.1f} img/s  data {data_s:.3f} s{memory}", flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


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


@dataclass(frozen=True)
class Data:
    """The dataset a run reads, every file it will read checked."""
    root: Path  # absolute
    classes: list[str]
    train: list[tuple[str, int]]
    val: list[tuple[str, int]]

    @functools.cached_property
    def record(self) -> dict:
        """What the checkpoint records to recognise this data: its folder, the samples of each split,
        and a SHA-256 of every file's name (relative to the folder) and size."""
        digest = hashlib.sha256()
        for path, _ in self.train + self.val:
            digest.update(f"{Path(path).relative_to(self.root).as_posix()}\t{os.path.getsize(path)}\n".encode())
        return {"path": str(self.root), "samples": {"train": len(self.train), "val": len(self.val)},
                "fingerprint": digest.hexdigest()}


def data_changes(saved: dict, now: dict) -> list[str]:
    """How the data of record `now` differs from `saved`'s, in words ([] if the same files: the same
    names and sizes, wherever the folder is)."""
    if saved["fingerprint"] == now["fingerprint"]:
        return []
    changes = [f"{split} images {saved['samples'][split]} -> {now['samples'][split]}"
               for split in ("train", "val") if saved["samples"][split] != now["samples"][split]]
    changes = changes or ["file names or sizes"]
    return ([f"folder {saved['path']} -> {now['path']}"] if saved["path"] != now["path"] else []) + changes


def load_data(config: Config, replicas: int) -> Data:
    """The run's data, with every file training will read checked first."""
    root = Path(config.data_path) if config.data_path else ensure_embedded().absolute()
    classes, train, val = load_splits(root, config.exclude_list)
    if len(train) < config.batch_size * replicas and not config.test_only:
        raise DatasetError(f"{root / 'train'} has {len(train)} images, fewer than one batch (-b {config.batch_size})"
                           + (f" for each of {replicas} data-parallel replicas" if replicas > 1 else ""))
    if bad := quick_check_all([p for p, _ in (val if config.test_only else train + val)], config.workers):
        raise bad_files_error(bad)
    return Data(root, classes, train, val)


def new_sums() -> dict:
    """An epoch's running train totals, saved in mid-epoch checkpoints so a resumed epoch reports them all."""
    return {"loss": 0.0, "hits": 0, "samples": 0, "seconds": 0.0}


class Run:
    """One training run: the network, its optimiser and where it is (epoch, step, the epoch's running
    totals, best val top-1), how it is saved into the run's folder, and when it stops."""

    def __init__(self, config: Config, layout, model: AlexNet, data: Data):
        self.config, self.layout, self.model, self.data = config, layout, model, data
        self.net = layout.wrap(model, config.seed)  # `model`, or under torchrun this rank's tower and/or DDP replica
        # what runs the batches: `net`, or with --compile its compiled form (sharing its parameters; `net`
        # is what is saved and restored, so checkpoints are the same either way)
        self.runner = torch.compile(self.net) if config.compile else self.net
        self.train_step = training_step(model, self.net, self.runner, layout.device, config.amp, config.lr,
                                        config.momentum, config.weight_decay)
        self.optimizer, self.scaler, self.autocast = (self.train_step.optimizer, self.train_step.scaler,
                                                      self.train_step.autocast)
        self.scheduler = make_scheduler(self.optimizer, config)
        self.run_step = self.train_step  # or its CUDA graph:
        if config.cuda_graphs == "on" and layout.device.type == "cuda":
            blocker = capture_blockers(self.train_step, layout.device, distributed=layout.world_size > 1)
            if blocker:
                print(f"cuda graphs: off, the step runs eagerly: {blocker}")
            else:
                self.run_step = CapturedStep(self.train_step, side_stream=torch.cuda.Stream(layout.device))
        self.epoch, self.step_in_epoch, self.global_step, self.best_top1 = 0, 0, 0, None
        self.sums = new_sums()
        self.out = Path(config.output_dir)

    def restore(self, state: dict, lr_given: bool, data_given: bool) -> None:
        """Load the --resume checkpoint's weights and, unless --test-only, where it was."""
        config, layout = self.config, self.layout
        trained = {**PAPER_OPTIONS, **state.get("model_options", {})}
        if trained != self.model.options:
            raise checkpoint.CheckpointError(
                f"checkpoint {config.resume} is the variant {trained}, this run builds {self.model.options}: "
                f"give the ablation flags it was trained with")
        checkpoint.load_model_state(self.model, state, config.resume)
        layout.load_weights(self.net, self.model)
        self.optimizer.refresh_copies()  # the forward's 16-bit weights, of the weights just loaded
        if state.get("classes", self.data.classes) != self.data.classes:
            raise checkpoint.CheckpointError(
                f"checkpoint {config.resume} was trained on other classes than the data has "
                f"({len(state['classes'])} vs {len(self.data.classes)})")
        if config.test_only:
            return
        missing = [key for key in RESUME_KEYS if key not in state]
        if missing:
            raise checkpoint.CheckpointError(
                f"checkpoint {config.resume} holds no training state ({', '.join(missing)} missing): "
                f"it can be evaluated with --test-only, not resumed")
        self.optimizer.load_state_dict(layout.local_optimizer_state(state["optimizer"], self.net))
        self.scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):  # empty unless the run used --amp fp16
            self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.global_step, self.best_top1 = state["epoch"], state["step"], state.get("best_top1")
        self.step_in_epoch = resume_step(state, config, layout.replicas)
        self.sums = state.get("epoch_sums", new_sums())  # older checkpoints: the steps after the resume only
        if rng := layout.rng_to_restore(state):  # None if another number of processes wrote it
            set_rng_state(rng)
        changes = data_changes(state["dataset"], self.data.record) if "dataset" in state else []
        if changes and not data_given:
            raise checkpoint.CheckpointError(
                f"the data is not what {config.resume} was trained on ({'; '.join(changes)}): give --data-path "
                f"to train on it as it is now (the epoch in progress then restarts)")
        if changes:
            print(f"--data-path {self.data.root} is not the data {config.resume} stopped on ({'; '.join(changes)}): "
                  f"epoch {self.epoch + 1} {'restarts from' if self.step_in_epoch else 'starts at'} its first sample")
            self.step_in_epoch, self.sums = 0, new_sums()
        print(f"resumed from {config.resume} in epoch {self.epoch + 1}, at sample "
              f"{self.step_in_epoch * config.batch_size * layout.replicas} of the epoch (step {self.step_in_epoch} "
              f"at -b {config.batch_size})")
        if lr_given:
            print(f"lr set to {config.lr:g} by --lr (the checkpoint's was "
                  f"{float(self.optimizer.param_groups[0]['lr']):g})")
            for group in self.optimizer.param_groups:
                group["lr"].fill_(config.lr)  # in place: a CUDA graph reads this tensor
        if self.epoch >= config.epochs:
            print(f"the checkpoint has finished all {config.epochs} epochs; raise --epochs to train on")

    def save(self, best: bool = False) -> None:
        """Write checkpoint.pth (and copy it to model_best.pth if `best`). Every rank takes part (the
        towers' halves are gathered, the RNG states collected); rank 0 writes."""
        config, layout = self.config, self.layout
        state = {"arch": checkpoint.ARCH, "model": layout.model_state(self.net),
                 "optimizer": layout.optimizer_state(self.optimizer, self.net),
                 "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(), "epoch": self.epoch,
                 "step_in_epoch": self.step_in_epoch,
                 "samples_in_epoch": self.step_in_epoch * config.batch_size * layout.replicas,
                 "epoch_sums": dict(self.sums), "step": self.global_step, "best_top1": self.best_top1,
                 "rng": rng_state(), "args": config.as_dict(), "dataset": self.data.record,
                 "classes": self.data.classes, "model_options": self.model.options,
                 "rank_rng": layout.gather_objects(rng_state())}
        if layout.main:
            try:
                checkpoint.save(state, self.out / CHECKPOINT)
                if best:
                    checkpoint.save_best(self.out / CHECKPOINT, self.out / BEST)
            except (checkpoint.CheckpointError, OSError) as e:
                raise SystemExit(f"error: {e}") from e

    def out_of_steps(self) -> bool:
        return bool(self.config.max_steps) and self.global_step >= self.config.max_steps

    def sync(self) -> tuple[float, float]:
        """Read the step's totals from the device (one read) into the epoch's sums; a loss that was not
        finite since the last read ends the run with an error naming its step (no checkpoint is written
        after it: the last one is kept). Returns (the last step's loss, the lr)."""
        totals, lr = self.train_step.read()
        if totals[FIRST_BAD]:
            raise SystemExit(f"error: the loss is {totals[BAD_LOSS]} at epoch {self.epoch + 1} step "
                             f"{int(totals[FIRST_BAD])}: lower --lr (the last checkpoint, if any, is kept)")
        self.sums.update(loss=totals[LOSS_SUM], hits=int(totals[HITS]))
        return totals[LAST_LOSS], lr

    def stop_after(self, step: int, steps: int) -> bool:
        """The one place a run stops early, after step `step` of `steps` of the epoch: --max-steps
        mid-epoch, with a checkpoint. Also saves every --checkpoint-every steps."""
        self.global_step, self.step_in_epoch = self.global_step + 1, step
        stop = self.out_of_steps() and step < steps  # at the epoch's end, the epoch is finished first
        every = self.config.checkpoint_every
        if stop or (every and self.global_step % every == 0 and step < steps):
            self.sync()
            self.save()
        if stop:
            print(f"stopped after {self.global_step} steps, in epoch {self.epoch + 1} at step {step} of {steps}")
        return stop

    def train_epoch(self, loader, log: StepLog, steps: int) -> bool:
        """One pass over `loader` (the rest of the epoch), adding to the epoch's running totals.
        Returns whether the run stopped before the epoch's end."""
        self.net.train()
        sums, start, seconds_before = self.sums, time.perf_counter(), self.sums["seconds"]
        self.train_step.start_epoch(loader.start_batch, sums["loss"], sums["hits"])
        batches, step = iter(loader), loader.start_batch
        while True:
            waited = time.perf_counter()
            try:
                images, labels = next(batches)
            except StopIteration:
                self.sync()
                sums["seconds"] = seconds_before + time.perf_counter() - start
                return False
            waited = time.perf_counter() - waited
            step += 1
            self.run_step(images, labels)  # queued on the device; nothing read back
            sums["samples"] += len(labels)
            shown = self.sync() if log.due(step) else None
            sums["seconds"] = seconds_before + time.perf_counter() - start
            log.step(step, shown, sums["samples"] / sums["seconds"], waited)
            if self.stop_after(step, steps):
                return True

    def train_metrics(self) -> dict:
        """The epoch's mean loss, top-1 accuracy in percent and images per second, over all its steps."""
        n, seconds = max(self.sums["samples"], 1), self.sums["seconds"]
        return {"train_loss": self.sums["loss"] / n, "train_top1": 100 * self.sums["hits"] / n,
                "img_per_s": self.sums["samples"] / seconds if seconds else 0.0, "train_seconds": seconds}

    def train_loader(self, Loader, epoch: int, start_batch: int):
        """Epoch `epoch`'s loader (its plan seeded by the epoch), from batch `start_batch`."""
        config = self.config
        plan = train_plan(self.data.train, config.batch_size, config.seed, epoch, lighting_std=config.lighting_std,
                          **self.layout.shard())
        dtype = AMP_DTYPES.get(config.amp, torch.float32)  # --amp's: no cast before conv1, or
        if self.train_step.input_form is not None:  # the images as decoded: the step's input form casts them
            dtype = Loader.decoded_dtype(dtype)
        return Loader(plan, config.batch_size, self.layout.device, config.workers, start_batch, dtype)

    def fit(self, val_loader, Loader) -> dict | None:
        """Epochs until --epochs or --max-steps; after each, validate, save, and log a line of metrics. On a
        GPU each loader starts ahead of its loop (starts_early): validation's at the epoch's start, the next
        epoch's before validation, so that their start-up (spawned reading processes) overlaps the work."""
        config, layout, out = self.config, self.layout, self.out
        writer = tensorboard_writer(out) if layout.main else None
        val, loader, early = None, None, starts_early(layout.device)
        try:
            while self.epoch < config.epochs:
                if loader is None:
                    loader = self.train_loader(Loader, self.epoch, self.step_in_epoch)
                if early:
                    val_loader.start()
                stopped, loader = self.run_epoch(loader), None
                if stopped:
                    break
                epoch_metrics = self.train_metrics()
                if early and self.epoch + 1 < config.epochs and not self.out_of_steps():
                    loader = self.train_loader(Loader, self.epoch + 1, 0)
                    loader.start()
                val = self.validate_and_save(val_loader, epoch_metrics, writer)
                if self.out_of_steps():
                    break
        finally:
            for unused in (val_loader, loader):
                if unused is not None:
                    unused.close()
        if writer:
            writer.close()
        print(f"checkpoint: {out / CHECKPOINT}")
        if (out / METRICS).exists():
            print(f"metrics: {out / METRICS}")
        return val

    def run_epoch(self, loader) -> bool:
        """The rest of the epoch from `loader`, its progress shown; whether the run stopped before its end."""
        steps = loader.start_batch + len(loader)
        log = StepLog(self.epoch + 1, self.config.epochs, steps, loader.start_batch, self.config.print_freq,
                      self.layout.device)
        stopped = self.train_epoch(loader, log, steps)
        log.close()
        return stopped

    def validate_and_save(self, val_loader, epoch_metrics: dict, writer) -> dict:
        """After an epoch: validate, step the schedule, save the checkpoint, log the epoch's line; the metrics."""
        config, layout, out = self.config, self.layout, self.out
        val = evaluate(self.runner, val_loader, autocast=self.autocast, reduce=layout.sum_over_replicas)
        lr = float(self.optimizer.param_groups[0]["lr"])  # the epoch's (a device tensor the scheduler changes)
        if config.lr_scheduler == "plateau":
            self.scheduler.step(val["top1"])
        else:
            self.scheduler.step()
        best = self.best_top1 is None or val["top1"] > self.best_top1
        if best:
            self.best_top1 = val["top1"]
        self.epoch, self.step_in_epoch, self.sums = self.epoch + 1, 0, new_sums()
        self.save(best)
        record = {"epoch": self.epoch, "step": self.global_step, "lr": lr, **epoch_metrics,
                  **{f"val_{k}": v for k, v in val.items()}}
        if layout.main:
            append_metrics(out / METRICS, record)
        if writer:
            for name, value in record.items():
                writer.add_scalar(name, value, self.epoch)
            writer.flush()
        print(f"epoch {self.epoch}/{config.epochs}: train loss {epoch_metrics['train_loss']:.4f}, top-1 "
              f"{epoch_metrics['train_top1']:.2f} %, {epoch_metrics['img_per_s']:.1f} img/s; val loss "
              f"{val['loss']:.4f}, top-1 {val['top1']:.2f} %, top-5 {val['top5']:.2f} %"
              f"{' (best)' if best else ''}; lr {lr:g}", flush=True)
        return val


def starts_early(device: torch.device) -> bool:
    """Whether the trainer starts each loader ahead of its loop: on a GPU, where DALI's reading processes are
    spawned (seconds each time). On a CPU they fork in ~0.2 s, and forking beside a running pipeline is
    better avoided."""
    return device.type == "cuda"


def resume_step(state: dict, config: Config, replicas: int) -> int:
    """The step of the epoch to resume `state` at with this run's -b and replicas: where the samples it
    consumed of the epoch (in the epoch's global order) end, or an error naming -b if that is mid-step."""
    saved = state["args"]
    consumed = state.get("samples_in_epoch",  # an older checkpoint's, from its -b and number of replicas
                         state["step_in_epoch"] * saved["batch_size"] * len(state.get("rank_rng", [0])) // saved["towers"])
    step = f"-b {config.batch_size}" + (f" x {replicas} replicas" if replicas > 1 else "")
    if consumed % (config.batch_size * replicas):
        raise SystemExit(f"error: {config.resume} stopped {consumed} samples into epoch {state['epoch'] + 1}, not a "
                         f"whole number of steps of {step}: give a -b that makes them so (it was trained with -b "
                         f"{saved['batch_size']})")
    return consumed // (config.batch_size * replicas)


def main(args: argparse.Namespace) -> dict | None:
    """Train (or with --test-only, evaluate); returns the last validation metrics."""
    if args.test_only and not args.resume:
        raise SystemExit("error: --test-only evaluates the --resume checkpoint: give --resume")
    try:
        resumed = checkpoint.load(args.resume) if args.resume else None  # read once, used below
        config, inherited, from_recipe = resolve(args, resumed and resumed.get("args", {}))
        describe(config, inherited, from_recipe)
        layout = distributed.setup(config.towers, torch.device(config.device), config.dist_timeout)  # torchrun's ranks
        check_backend(config, layout.device)
        if config.test_only:
            return evaluate_resumed(config, layout, resumed)
        folder = RunFolder(config.output_dir)
        with layout.on_main(folder.claimed(config.resume, config.overwrite)):
            return train(config, layout, resumed, lr_given="lr" in vars(args),
                         data_given="data_path" in vars(args), folder=folder)
    except (checkpoint.CheckpointError, FolderError, DatasetError) as e:
        raise SystemExit(f"error: {e}") from e


def evaluate_resumed(config: Config, layout, state: dict) -> dict:
    """--test-only: the --resume checkpoint's validation loss and accuracy."""
    data = load_data(config, layout.replicas)
    model = AlexNet(num_classes=len(data.classes), kernels=config.kernels, init=config.init, **config.model_options)
    run = Run(config, layout, model.to(layout.device), data)
    run.restore(state, lr_given=False, data_given=True)
    val_loader = loader_class(config.data_loader)(val_plan(data.val, **layout.shard()), config.batch_size,
                                                  layout.device, config.workers,
                                                  dtype=AMP_DTYPES.get(config.amp, torch.float32))
    print(f"evaluating {config.resume}")
    metrics = evaluate(run.runner, val_loader, autocast=run.autocast, reduce=layout.sum_over_replicas)
    print(f"val: loss {metrics['loss']:.4f}, top-1 {metrics['top1']:.2f} %, top-5 {metrics['top5']:.2f} %")
    return metrics


def environment() -> dict:
    """What besides the configuration decides a CPU run's bits: torch's version, its intra-op threads
    and the instruction set its kernels dispatch to (a run repeats exactly only when all three match)."""
    return {"torch": torch.__version__, "threads": torch.get_num_threads(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability()}


def train(config: Config, layout, resumed: dict | None, lr_given: bool, data_given: bool,
          folder: RunFolder) -> dict | None:
    """Set up (data, network, the resumed state), ready the run's folder, and train."""
    torch.manual_seed(config.seed)
    data = load_data(config, layout.replicas)
    config = dataclasses.replace(config, data_path=str(data.root))  # the embedded dataset's folder, once known
    model = AlexNet(num_classes=len(data.classes), kernels=config.kernels, init=config.init, **config.model_options)
    run = Run(config, layout, model.to(layout.device), data)
    Loader = loader_class(config.data_loader)
    val_loader = Loader(val_plan(data.val, **layout.shard()), config.batch_size, layout.device, config.workers,
                        dtype=AMP_DTYPES.get(config.amp, torch.float32))
    print(f"data: {data.root} ({len(data.classes)} classes, {len(data.train)} train / {len(data.val)} val images); "
          f"device: {layout.device}; amp: {config.amp}")
    if resumed is not None:
        run.restore(resumed, lr_given, data_given)
    if layout.main:  # every check passed: the folder becomes this run's
        folder.start()
        keep_metrics_until(run.out / METRICS, run.epoch)
        (run.out / ARGS).write_text(json.dumps({**config.as_dict(), "dataset": data.record,
                                                "environment": environment()}, indent=1) + "\n")
    return run.fit(val_loader, Loader)


if __name__ == "__main__":
    try:
        distributed.run(main, get_args_parser().parse_args())
    except DatasetError as e:  # a file the loader cannot decode, met mid-epoch
        raise SystemExit(f"error: {e}") from e
