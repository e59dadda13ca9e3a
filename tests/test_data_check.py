"""Odd and broken files: `python -m data.check` finds the broken ones, both loaders decode the odd
ones alike and name a broken one when they meet it, and training fails fast or leaves them out."""

import fcntl
import os
import runpy
import struct
import subprocess
import sys
import termios
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from alexnet.inference import load_image
from alexnet.train import get_args_parser, main
from data.check import check_file, quick_check
from data.dali import DaliLoader
from data.plans import MEAN_RGB, val_plan
from data.embedded import write_dataset
from data.folder import DatasetError, load_splits
from data.pil import PilLoader

ROOT = Path(__file__).resolve().parents[1]
BAD = {"truncated.JPEG": "truncated", "empty.JPEG": "empty", "text.JPEG": "not an image"}
ODD = ("png.JPEG", "cmyk.JPEG", "gray.JPEG")  # fine: both decoders go by content and convert to RGB


@pytest.fixture(scope="module")
def odd_folder(tmp_path_factory) -> Path:
    """The tiny embedded dataset (2 classes, 4 train and 1 val image each) plus, in train/crosshatch, a
    truncated JPEG, a 0-byte file, a text file, a PNG, a CMYK JPEG and a grayscale JPEG, all named .JPEG,
    made from one of its images."""
    root = tmp_path_factory.mktemp("odd")
    write_dataset(root, {"train": 4, "val": 1}, num_classes=2)
    source = sorted((root / "train" / "checks").iterdir())[0]
    folder = root / "train" / "crosshatch"
    data = source.read_bytes()
    (folder / "truncated.JPEG").write_bytes(data[:len(data) // 2])
    (folder / "empty.JPEG").write_bytes(b"")
    (folder / "text.JPEG").write_text("this is not an image\n")
    with Image.open(source) as image:
        image.save(folder / "png.JPEG", format="PNG")
        image.convert("CMYK").save(folder / "cmyk.JPEG", format="JPEG", quality=95)
        image.convert("L").save(folder / "gray.JPEG", format="JPEG", quality=95)
        (folder / "source.JPEG").write_bytes(data)  # the original, to compare the odd ones with
    return root


def test_check_file_gives_the_reason(odd_folder, tmp_path):
    folder = odd_folder / "train" / "crosshatch"
    for name, reason in BAD.items():
        got = check_file(folder / name)
        assert got and reason in got, f"[{name}] check_file says {got!r}, want {reason!r}"
    for name in ODD:
        assert check_file(folder / name) is None, f"[{name}] is reported bad: {check_file(folder / name)}"
    Image.new("RGB", (30, 20)).save(tmp_path / "gif.JPEG", format="GIF")
    assert "GIF image, a format DALI's decoder does not take" in check_file(tmp_path / "gif.JPEG")
    assert "unreadable" in check_file(tmp_path / "absent.JPEG")


def run(*cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *cmd], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_quick_check_agrees_with_the_full_decode(odd_folder, tmp_path):
    folder = odd_folder / "train" / "crosshatch"
    for name, reason in BAD.items():
        assert reason in (quick_check(folder / name) or ""), f"[{name}] quick_check says {quick_check(folder / name)!r}"
    png = (folder / "png.JPEG").read_bytes()
    (tmp_path / "cut.png").write_bytes(png[:len(png) // 3])  # header and a part of the pixels: DALI crashed on it
    assert "truncated" in (quick_check(tmp_path / "cut.png") or "")
    assert quick_check(tmp_path / "cut.png", png[:len(png) // 3]) == quick_check(tmp_path / "cut.png")
    trailer = tmp_path / "trailer.JPEG"  # data after the end marker, as some phones append: decodes fine
    trailer.write_bytes((folder / "source.JPEG").read_bytes() + b"appended by a phone")
    for path in [folder / name for name in ODD] + [trailer]:
        assert quick_check(path) is None, f"[{path.name}] is reported bad: {quick_check(path)}"


def test_exif_orientation_and_16_bit_png_are_read_alike_everywhere(tmp_path):
    """DALI (training), the PIL loader and predict/features/figures' load_image see the same picture."""
    pixels = np.zeros((240, 320, 3), np.uint8)
    pixels[:, :160], pixels[:40] = 200, 50
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to show
    image.save(tmp_path / "phone.JPEG", exif=exif, quality=95)
    Image.fromarray((np.add.outer(np.arange(240), np.arange(300)) * 100).astype(np.uint16)).save(tmp_path / "16bit.png")
    for name in ("phone.JPEG", "16bit.png"):
        plan = val_plan([(str(tmp_path / name), 0)])
        dali = next(iter(DaliLoader(plan, 1, workers=1)))[0][0]
        pil = next(iter(PilLoader(plan, 1, workers=0)))[0][0]
        for what, got in (("PilLoader", pil), ("load_image", load_image(tmp_path / name))):
            diff = (got - dali).abs()
            assert diff.mean() < 0.1 and diff.max() <= 1, f"[{name}] {what} differs from DALI by {diff.mean():.2f} on average"
    Image.fromarray(np.ones((300, 300), np.float32)).save(tmp_path / "float.tif")
    assert "32-bit pixels (PIL mode F)" in check_file(tmp_path / "float.tif")


def test_check_cli_lists_the_bad_files_for_training_to_exclude(odd_folder, tmp_path):
    result = run("data.check", str(odd_folder), "-o", str(tmp_path / "bad.txt"), "-j", "2")
    assert result.returncode == 1, f"exit code {result.returncode}:\n{result.stdout}\n{result.stderr}"
    listed = [line.split("\t") for line in (tmp_path / "bad.txt").read_text().splitlines()[1:]]
    assert sorted(path for path, _ in listed) == sorted(f"train/crosshatch/{name}" for name in BAD)
    for name, reason in BAD.items():
        assert any(path.endswith(name) and reason in why for path, why in listed), f"[{name}] not listed as {reason}"
        assert f"train/crosshatch/{name}: " in result.stdout
    _, train, _ = load_splits(odd_folder, tmp_path / "bad.txt")
    assert not any(Path(p).name in BAD for p, _ in train) and len(train) == 8 + 1 + len(ODD)


def test_check_cli_exit_codes_on_a_clean_and_a_missing_folder(tmp_path):
    write_dataset(tmp_path / "clean", {"train": 1, "val": 1}, num_classes=2)
    clean = run("data.check", str(tmp_path / "clean"), "-o", str(tmp_path / "none.txt"))
    assert clean.returncode == 0 and "0 bad files" in clean.stdout, clean.stdout + clean.stderr
    assert (tmp_path / "none.txt").read_text().splitlines()[1:] == []
    missing = run("data.check", str(tmp_path / "nowhere"), "-o", str(tmp_path / "x.txt"))
    assert missing.returncode == 2 and f"data path {tmp_path / 'nowhere'} does not exist" in missing.stderr


def test_check_cli_shows_a_bar_on_a_terminal_and_plain_lines_in_a_log(tmp_path):
    images = int(np.random.default_rng().integers(3, 7))
    write_dataset(tmp_path / "data", {"train": images, "val": 1}, num_classes=2)
    total = 2 * images + 2
    logged = run("data.check", str(tmp_path / "data"), "-o", str(tmp_path / "bad.txt"))  # stdout and stderr piped
    assert logged.returncode == 0, logged.stdout + logged.stderr
    assert "\r" not in logged.stdout + logged.stderr, f"a bar drawn into a log:\n{logged.stderr!r}"
    assert f"checking {tmp_path / 'data'}: {total}/{total} img, " in logged.stdout, logged.stdout
    terminal, stderr = os.openpty()
    fcntl.ioctl(stderr, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a new pty is 0 columns wide
    try:
        shown = subprocess.run([sys.executable, "-m", "data.check", str(tmp_path / "data"), "-o",
                                str(tmp_path / "bad.txt")], cwd=ROOT, stdout=subprocess.PIPE, stderr=stderr,
                               text=True, timeout=300)
        bar = os.read(terminal, 1 << 16).decode()
    finally:
        os.close(terminal), os.close(stderr)
    assert shown.returncode == 0 and f"{total}/{total}" in bar and "\r" in bar, bar
    assert f"{total}/{total} img, " not in shown.stdout, shown.stdout


def test_a_corrupt_scan_with_a_whole_header_and_end_passes_every_check_and_is_trained_on(tmp_path, capsys):
    """What no check here catches: a JPEG whose compressed pixel data is corrupt while its header and
    end marker (FF D9) are whole. PIL and DALI both decode it (libjpeg decodes what it can and goes on),
    so data.check lists nothing, training's header-and-end check passes it, both loaders return a
    garbled picture for it, and training trains on that without a word."""
    write_dataset(tmp_path / "data", {"train": 4, "val": 1}, num_classes=2)
    source = sorted((tmp_path / "data" / "train" / "checks").iterdir())[0]
    data = bytearray(source.read_bytes())
    scan = data.index(b"\xff\xda") + 20  # past the start-of-scan header: the entropy-coded pixels
    # Seeded: where the bytes land decides how much is garbled. Most places garble half the picture or
    # more, but some (1 in 10 seeds tried) only a few blocks or a level shift, as the decoder resyncs.
    rng = np.random.default_rng(0)
    at = int(rng.integers(scan, scan + (len(data) - scan) // 2))
    data[at:at + 16] = rng.integers(0, 0xFF, 16, dtype=np.uint8).tobytes()  # below FF: no marker made
    corrupt = source.with_name("corrupt.JPEG")
    corrupt.write_bytes(data)
    assert data.endswith(b"\xff\xd9") and check_file(corrupt) is None and quick_check(corrupt) is None
    checked = run("data.check", str(tmp_path / "data"), "-o", str(tmp_path / "bad.txt"))
    assert checked.returncode == 0 and "0 bad files" in checked.stdout, checked.stdout + checked.stderr
    for loader in (DaliLoader, PilLoader):
        images, _ = next(iter(loader(val_plan([(str(corrupt), 0), (str(source), 0)]), 2, workers=1)))
        diff = (images[0] - images[1]).abs().mean().item()
        assert diff > 1, f"[{loader.__name__}] the corrupt copy at byte {at} decodes {diff:.2f} levels from the source"
    main(get_args_parser().parse_args(train_args(tmp_path / "data", tmp_path / "out", "-b", "9", "-j", "1")))
    assert "train loss" in capsys.readouterr().out, "the epoch with the corrupt file did not finish"


@pytest.mark.parametrize("loader", [DaliLoader, PilLoader])
def test_odd_files_decode_to_their_source_image(odd_folder, loader):
    folder = odd_folder / "train" / "crosshatch"
    names = ["source.JPEG", *ODD]
    images, _ = next(iter(loader(val_plan([(str(folder / n), 0) for n in names]), 4, workers=1)))
    source = images[0]
    for name, image in zip(names[1:], images[1:]):
        # PNG is lossless; the CMYK and gray copies are re-encoded at quality 95 (0.3 levels off on average,
        # measured), and gray loses the colour: compare it with the source's luma (ITU-R 601, as PIL converts).
        # CMYK read with its channels inverted, or gray as one channel, would be tens of levels off.
        want = source
        if name == "gray.JPEG":
            rgb = source + torch.tensor(MEAN_RGB)[:, None, None]
            want = (rgb * torch.tensor([0.299, 0.587, 0.114])[:, None, None]).sum(0) - torch.tensor(MEAN_RGB)[:, None, None]
        diff = (image - want).abs().mean().item()
        assert diff < 1.0, f"[{loader.__name__} {name}] mean |image - source| = {diff:.2f} levels"


@pytest.mark.parametrize("loader", [DaliLoader, PilLoader])
@pytest.mark.parametrize("name", sorted(BAD))
def test_loaders_name_the_bad_file(odd_folder, loader, name):
    good = [str(p) for p in sorted((odd_folder / "train" / "checks").iterdir())]
    paths = good[:3] + [str(odd_folder / "train" / "crosshatch" / name)] + good[3:]
    batches = iter(loader(val_plan([(p, 0) for p in paths]), 2, workers=1))
    if loader is PilLoader:
        next(batches)  # batch 0 is fine; DALI's source checks files as it reads them, PREFETCH batches ahead
    with pytest.raises(DatasetError, match=f"the data pipeline failed on .*{name}: .*{BAD[name]}"):
        next(batches)
        next(batches)


@pytest.mark.parametrize("loader", [DaliLoader, PilLoader])
def test_loaders_name_a_file_that_vanished(odd_folder, tmp_path, loader):
    paths = [str(odd_folder / "train" / "crosshatch" / "source.JPEG"), str(tmp_path / "gone.JPEG")]
    with pytest.raises(DatasetError, match="failed on .*gone.JPEG: unreadable: No such file"):
        list(loader(val_plan([(p, 0) for p in paths]), 2, workers=1))


def train_args(data: Path, out: Path, *flags: str) -> list[str]:
    return ["--data-path", str(data), "--output-dir", str(out), "--epochs", "1", *flags]


# runpy runs a fresh copy of alexnet.train as __main__ (this file imported the module too): harmless here
@pytest.mark.filterwarnings("ignore:'alexnet.train' found in sys.modules")
@pytest.mark.parametrize("loader", ["dali", "pil"])
def test_training_fails_fast_naming_the_bad_files(odd_folder, tmp_path, monkeypatch, loader):
    """One batch holds all 15 train images, bad ones included: `python -m alexnet.train` stops before
    its first step with an error message (SystemExit), not a traceback."""
    monkeypatch.setattr(sys, "argv", ["alexnet.train", *train_args(odd_folder, tmp_path, "-b", "15", "--data-loader",
                                                                    loader, "-j", "1")])
    with pytest.raises(SystemExit) as exit:
        runpy.run_module("alexnet.train", run_name="__main__")
    message = str(exit.value.code)
    assert message.startswith("error: the data pipeline failed on "), message
    for name, reason in BAD.items():
        assert f"{name}: " in message and reason in message, f"[{name}] not named: {message}"


def test_training_leaves_out_the_files_data_check_lists(odd_folder, tmp_path, capsys):
    assert run("data.check", str(odd_folder), "-o", str(tmp_path / "bad.txt")).returncode == 1
    main(get_args_parser().parse_args(train_args(odd_folder, tmp_path, "-b", "4", "--max-steps", "1",
                                                 "--exclude-list", str(tmp_path / "bad.txt"))))
    out = capsys.readouterr().out
    assert "12 train" in out and "stopped after 1 steps" in out, out


# A plan whose batch `BAD_BATCH` holds one bad file among good ones, run through DaliLoader in a
# fresh process (a crash must not take pytest down); exit 1 with the error, 0 if it decoded.
LOADER_RUN = """
import sys
from data.dali import DaliLoader
from data.folder import DatasetError
from data.plans import train_plan
good, bad, batch, position = sys.argv[1].split(","), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
plan = train_plan([(p, 0) for p in good], batch, seed=0, epoch=0)
plan.paths[position] = bad
try:
    for _ in DaliLoader(plan, batch, "cpu", workers=2):
        pass
except DatasetError as e:
    sys.exit(str(e))
"""


def run_dali_on(good: list[Path], bad: Path, batch: int, position: int) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", LOADER_RUN, ",".join(map(str, good)), str(bad), str(batch),
                           str(position)], cwd=ROOT, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def forty_images(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("forty")
    write_dataset(root, {"train": 4, "val": 0}, num_classes=10)
    return sorted(root.glob("train/*/*.JPEG"))


def test_a_file_dali_cannot_parse_is_named_not_a_crash(forty_images, odd_folder):
    """DALI 2.4's CPU decoder crashed the process (SIGSEGV, 4 runs in 4 on this case) on a batch of
    40 holding a text file: the loader must name the file instead, every time."""
    for _ in range(3):
        result = run_dali_on(forty_images, odd_folder / "train" / "crosshatch" / "text.JPEG", 40, 5)
        assert result.returncode == 1, f"exit {result.returncode}:\n{result.stderr[-2000:]}"
        assert "text.JPEG: not an image" in result.stderr


@pytest.mark.slow
def test_bad_files_never_crash_the_loader_or_training(forty_images, odd_folder, tmp_path):
    """Many runs, several batch sizes and places, every kind of cut-off or foreign file: exit 0 (a file
    DALI decodes) or 1 (a named error), never a signal. Before the fix ~1 run in 3 died of SIGSEGV."""
    source = (odd_folder / "train" / "crosshatch" / "png.JPEG").read_bytes()
    jpeg = (odd_folder / "train" / "crosshatch" / "source.JPEG").read_bytes()
    bad = [odd_folder / "train" / "crosshatch" / name for name in BAD]
    for data, kind in ((jpeg, "jpeg"), (source, "png")):
        for size in (2, 16, 40, 100, 300, len(data) // 2):
            (tmp_path / f"{kind}{size}.JPEG").write_bytes(data[:size])
            bad.append(tmp_path / f"{kind}{size}.JPEG")
    Image.new("RGB", (30, 20)).save(tmp_path / "gif.JPEG", format="GIF")
    bad.append(tmp_path / "gif.JPEG")
    for path in bad:
        for batch, position in ((40, 5), (32, 5), (32, 31), (16, 20), (8, 0)):
            result = run_dali_on(forty_images, path, batch, position)
            assert result.returncode in (0, 1), f"[{path.name} -b {batch} at {position}] exit {result.returncode}"
    train = tmp_path / "train_data"
    write_dataset(train, {"train": 12, "val": 2}, num_classes=10)
    for path in bad[:3]:
        (train / "train" / "dots" / path.name).write_bytes(path.read_bytes())
    for batch in (32, 40, 64):
        for _ in range(2):
            result = run("alexnet.train", "--kernels", "torch", "--data-path", str(train), "--epochs", "1", "-b",
                         str(batch), "--output-dir", str(tmp_path / "out"))
            assert result.returncode == 1, f"[-b {batch}] exit {result.returncode}:\n{result.stderr[-2000:]}"
            assert "error: the data pipeline failed on" in result.stderr
