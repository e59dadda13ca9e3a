"""The ablation switches (model and train flags), checkpoints that remember them, and
python -m alexnet.ablate end to end on a tiny dataset."""

import json

import pytest
import torch
from PIL import Image

import kernels

from alexnet import ablate, checkpoint
from alexnet.inference import load_trained
from alexnet.model import PAPER_OPTIONS, POOL_NO_OVERLAP, AlexNet
from alexnet.train import get_args_parser, main, resolve
from data.embedded import write_dataset
from tests.devices import needs_interpreter


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    write_dataset(root, {"train": 4, "val": 1}, num_classes=3)  # --max-steps 1 stops mid-epoch: no val
    return root


@pytest.fixture(scope="module")
def variants() -> dict:
    """One network of each variant, all with the paper's net's weights where their shapes agree."""
    torch.manual_seed(0)
    nets = {"paper": AlexNet(10), "no-lrn": AlexNet(10, lrn=False), "no-overlap": AlexNet(10, overlap=False),
            "no-groups": AlexNet(10, groups=False), "no-dropout": AlexNet(10, dropout=0.0)}
    for name in ("no-lrn", "no-overlap", "no-dropout"):
        nets[name].load_state_dict(nets["paper"].state_dict())
    return nets


def test_defaults_are_the_paper(variants):
    assert variants["paper"].options == PAPER_OPTIONS
    assert sum(p.numel() for p in AlexNet().parameters()) == 60_965_224


def test_each_switch_does_what_it_says(variants):
    x = torch.randn(2, 3, 227, 227)
    with torch.no_grad():
        logits, sizes = {}, {}
        for name, net in variants.items():
            activations = {}
            logits[name] = net.eval()(x, activations)
            sizes[name] = {stage: tuple(t.shape[1:]) for stage, t in activations.items()}
        for name in variants:
            assert sizes[name] == sizes["paper"], f"{name} changes the feature-map sizes"
        assert sizes["paper"]["pool5"] == (256, 6, 6)
        assert not torch.allclose(logits["no-lrn"], logits["paper"]), "lrn=False changes nothing"
        assert not torch.allclose(logits["no-overlap"], logits["paper"]), "overlap=False changes nothing"
        assert torch.equal(logits["no-dropout"], logits["paper"]), "dropout changes the eval-mode output"
        no_dropout, paper = variants["no-dropout"].train(), variants["paper"].train()
        assert torch.equal(no_dropout(x), no_dropout(x)), "dropout=0 still drops in training mode"
        assert not torch.equal(paper(x), paper(x)), "the paper's net does not drop in training mode"
    one_tower = variants["no-groups"]
    assert [one_tower.conv2.groups, one_tower.conv4.groups, one_tower.conv5.groups] == [1, 1, 1]
    assert one_tower.conv2.weight.shape == (256, 96, 5, 5)
    assert variants["no-overlap"].pool == dict(kernel_size=2, stride=2)


@pytest.mark.parametrize("hw", [(13, 13), (55, 55), (27, 27)])
@needs_interpreter  # CPU tensors against the CPU's F.max_pool2d
def test_non_overlapping_pool_on_the_triton_kernels(hw):
    x = torch.randn(2, 8, *hw, requires_grad=True)
    got = kernels.backend("triton").max_pool2d(x, **POOL_NO_OVERLAP)
    want = torch.nn.functional.max_pool2d(x, **POOL_NO_OVERLAP)
    torch.testing.assert_close(got, want, msg=lambda m: f"[pool 2/2 forward {hw}] {m}")
    dy = torch.randn_like(want)
    (g_got,), (g_want,) = torch.autograd.grad(got, x, dy), torch.autograd.grad(want, x, dy)
    torch.testing.assert_close(g_got, g_want, msg=lambda m: f"[pool 2/2 backward {hw}] {m}")


def config(flags):
    return resolve(get_args_parser().parse_args(flags), None)[0]


def test_each_variant_switches_off_one_thing():
    paper = config([])
    for name, flags in ablate.VARIANTS.items():
        variant = config(flags)
        changed = {k for k, v in variant.model_options.items() if v != paper.model_options[k]}
        changed |= {"lighting"} if variant.lighting_std != paper.lighting_std else set()
        expected = {"paper": set(), "no-lrn": {"lrn"}, "no-overlap": {"overlap"}, "no-groups": {"groups"},
                    "no-dropout": {"dropout"}, "no-lighting": {"lighting"}}[name]
        assert changed == expected, f"variant {name} changes {changed}"
    assert config(ablate.VARIANTS["no-lighting"]).lighting_std == 0
    assert config(ablate.VARIANTS["no-dropout"]).model_options["dropout"] == 0


def run_ablate(tiny_data, out, *flags):
    return ablate.main(["--output-dir", str(out), "--data-path", str(tiny_data), "-b", "4", "--max-steps", "1",
                        "--device", "cpu", *flags])


def check_run(rows, out, variants):
    assert [r["variant"] for r in rows] == variants
    assert rows[0]["d_top1"] == 0 and rows[0]["d_top5"] == 0
    for r in rows:
        assert 0 <= r["top1"] <= 100 and r["top5"] == 100, r  # percent; 3 classes: the top 5 hold every one
        assert r["d_top1"] == pytest.approx(r["top1"] - rows[0]["top1"])
        state = checkpoint.load(out / r["variant"] / "checkpoint.pth")
        assert state["step"] == 1
    assert json.loads((out / "ablation.json").read_text())["rows"] == rows
    with Image.open(out / "ablation.png") as img:
        assert img.format == "PNG"


def test_ablate_end_to_end_and_the_checkpoint_remembers_the_variant(tiny_data, tmp_path, capsys):
    rows = run_ablate(tiny_data, tmp_path, "--variants", "no-groups")
    check_run(rows, tmp_path, ["paper", "no-groups"])
    out = capsys.readouterr().out
    assert ablate.table(rows) in out and "ablation.png" in out
    path = tmp_path / "no-groups" / "checkpoint.pth"
    assert checkpoint.load(path)["model_options"] == dict(PAPER_OPTIONS, groups=False)
    trained = load_trained(path)  # rebuilt as the variant: the one-tower weights fit
    assert trained.model.options["groups"] is False and trained.model.conv2.groups == 1
    capsys.readouterr()
    main(get_args_parser().parse_args(["--resume", str(path), "--test-only", "--device", "cpu"]))
    assert "--no-groups" in capsys.readouterr().out, "resuming did not take the variant from the checkpoint"
    state = checkpoint.load(path)
    del state["args"]["no_groups"]  # a checkpoint whose arguments do not say: its model_options decide
    checkpoint.save(state, tmp_path / "unsaid.pth")
    with pytest.raises(SystemExit, match=r"checkpoint .* is the variant .*'groups': False.* give the ablation flags"):
        main(get_args_parser().parse_args(["--resume", str(tmp_path / "unsaid.pth"), "--test-only", "--device", "cpu"]))


def test_table_and_chart_show_accuracy_in_percent():
    rows = [{"variant": "paper", "top1": 60.3, "top5": 82.5, "d_top1": 0.0, "d_top5": 0.0},
            {"variant": "no-lrn", "top1": 58.7, "top5": 83.0, "d_top1": -1.6, "d_top5": 0.5}]
    assert [line.split() for line in ablate.table(rows).splitlines()] == [
        ["variant", "top-1", "%", "top-5", "%", "d", "top-1", "d", "top-5"],
        ["paper", "60.3", "82.5", "+0.0", "+0.0"], ["no-lrn", "58.7", "83.0", "-1.6", "+0.5"]]
    ax, = ablate.plot(rows, "Ablations").axes
    assert ax.get_title() == "Ablations" and ax.get_ylabel() == "validation accuracy (%)"
    assert [b.get_height() for b in ax.patches] == [60.3, 58.7, 82.5, 83.0]  # top-1 bars, then top-5
    assert [t.get_text() for t in ax.get_xticklabels()] == ["paper", "no-lrn"]
    assert [t.get_text() for t in ax.texts] == ["60.3", "58.7", "82.5", "83.0"]


@pytest.mark.slow  # ~2 min on 2 CPU cores: six networks trained and evaluated
def test_ablate_trains_every_variant(tiny_data, tmp_path):
    check_run(run_ablate(tiny_data, tmp_path), tmp_path, list(ablate.VARIANTS))


def test_ablate_refuses_flags_it_sets_and_bad_train_flags(tmp_path, capsys):
    with pytest.raises(SystemExit):
        ablate.parse(["--no-lrn"])
    assert "--no-lrn: the variants set these themselves" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        ablate.parse(["--epochs", "zero"])
    assert "--epochs" in capsys.readouterr().err
    args, flags = ablate.parse(["--variants", "no-lrn", "paper", "--epochs", "2", "-b", "4",
                                "--output-dir", str(tmp_path)])
    assert args.variants == ["paper", "no-lrn"] and flags == ["--epochs", "2", "-b", "4"]
    (tmp_path / "no-lrn").mkdir()
    with pytest.raises(SystemExit):
        ablate.parse(["--variants", "no-lrn", "--output-dir", str(tmp_path)])
    assert f"{tmp_path / 'no-lrn'} already exist" in capsys.readouterr().err


def test_an_output_dir_that_is_a_file_is_refused_before_training(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(SystemExit, match=f"--output-dir {tmp_path / 'file' / 'ablation.json'}: {tmp_path / 'file'} "
                                         "is a file, not a folder"):
        ablate.parse(["--output-dir", str(tmp_path / "file")])
