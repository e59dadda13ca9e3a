"""python -m alexnet.evaluate: its accuracies agree with training's own validation and with a count by
hand, ten-crop is the mean of the ten crops' softmaxes, and bad input is named."""

import json
import subprocess
import sys
from collections import Counter

import pytest
import torch

from alexnet import evaluate
from alexnet.inference import load_trained
from data.dali import DaliLoader
from data.plans import val_plan
from data.embedded import write_dataset
from data.folder import load_splits
pytest_plugins = ["tests.trained"]  # the tiny_run fixture


def test_centre_crop_matches_training_validation(tiny_run, tmp_path, capsys):
    out = tmp_path / "eval.json"
    summary = evaluate.main(["--checkpoint", str(tiny_run.checkpoint), "--data-path", str(tiny_run.data),
                             "-b", "4", "--device", "cpu", "--json", str(out)])
    last = json.loads((tiny_run.out / "metrics.jsonl").read_text().splitlines()[-1])
    assert summary["images"] == 6
    assert summary["top1"] == pytest.approx(last["val_top1"]), "evaluate disagrees with train's val top-1"
    assert summary["top5"] == pytest.approx(last["val_top5"]), "evaluate disagrees with train's val top-5"
    assert json.loads(out.read_text()) == summary
    assert [r["class"] for r in summary["per_class"]] == ["checks", "crosshatch", "dots"]
    assert sum(r["images"] for r in summary["per_class"]) == 6
    confusion = torch.tensor(summary["confusion"])
    assert confusion.sum() == 6 and 100 * confusion.trace() / 6 == pytest.approx(summary["top1"])
    text = capsys.readouterr().out
    assert f"centre crop: 6 images, top-1 {summary['top1']:.2f} %, top-5 {summary['top5']:.2f} %\n" in text
    assert "most confused" in text and "checks" in text


def test_summary_matches_a_count_by_hand():
    generator = torch.Generator().manual_seed(0)
    classes = [f"c{i}" for i in range(7)]
    probs = torch.rand(200, 7, generator=generator).softmax(1)
    labels = torch.randint(0, 7, (200,), generator=generator)
    s = evaluate.summarize(probs, labels, classes, pairs=3)
    order = probs.argsort(1, descending=True).tolist()
    rows = list(zip(order, labels.tolist()))
    assert s["top1"] == pytest.approx(100 * sum(o[0] == y for o, y in rows) / 200), "[top1]"
    assert s["top5"] == pytest.approx(100 * sum(y in o[:5] for o, y in rows) / 200), "[top5]"
    for r in s["per_class"]:
        c = classes.index(r["class"])
        mine = [(o, y) for o, y in rows if y == c]
        assert r["images"] == len(mine), r
        assert r["top1"] == pytest.approx(100 * sum(o[0] == y for o, y in mine) / len(mine)), r
        assert r["top5"] == pytest.approx(100 * sum(y in o[:5] for o, y in mine) / len(mine)), r
    table = evaluate.report(s, "by hand").splitlines()
    assert table[2].split() == ["class", "images", "top-1", "%", "top-5", "%"], table[2]
    assert table[3].split() == ["c0", str(s["per_class"][0]["images"]), f"{s['per_class'][0]['top1']:.1f}",
                                f"{s['per_class'][0]['top5']:.1f}"], table[3]
    mistakes = Counter((classes[y], classes[o[0]]) for o, y in rows if o[0] != y)
    top_counts = sorted(mistakes.values(), reverse=True)[:3]
    assert [r["images"] for r in s["confused"]] == top_counts, "[confused] is not the most frequent mistakes"
    for r in s["confused"]:
        assert mistakes[(r["true"], r["predicted"])] == r["images"]
        assert r["of_true"] == pytest.approx(r["images"] / int((labels == classes.index(r["true"])).sum()))


def test_ten_crop_is_the_mean_of_ten_softmaxes(tiny_run):
    _, _, val = load_splits(tiny_run.data)
    samples = val[1:]  # 5 images: batches of 3 and 2
    trained = load_trained(tiny_run.checkpoint)
    probs, labels = evaluate.predict_split(trained, samples, batch_size=3, ten_crop=True)
    assert probs.shape == (5, 3) and labels.tolist() == [label for _, label in samples]

    crops = torch.cat([images for images, _ in DaliLoader(val_plan(samples, ten_crop=True), 5)])
    centre = torch.cat([images for images, _ in DaliLoader(val_plan(samples), 5)])
    assert crops.shape == (5, 10, 3, 227, 227)
    # The centre-crop loader resamples only the crop's window: the same pixels to within a grey level.
    assert (crops[:, 4] - centre).abs().max() <= 1, "crop 4 is not the centre crop"
    assert (crops[:, 9] - centre.flip(-1)).abs().max() <= 1, "crop 9 is not the mirrored centre crop"
    with torch.no_grad():  # each image's ten crops, a softmax for each, then their mean
        by_hand = torch.stack([trained.model(crops[i]).softmax(1).mean(0) for i in range(5)])
    torch.testing.assert_close(probs, by_hand, atol=1e-5, rtol=1e-4, msg=lambda m: f"[ten-crop probs] {m}")
    torch.testing.assert_close(probs.sum(1), torch.ones(5))


def test_checkpoint_with_other_classes_is_refused(tiny_run, tmp_path):
    write_dataset(tmp_path, {"train": 1, "val": 1}, num_classes=4)
    with pytest.raises(SystemExit, match=r"checkpoint .*checkpoint.pth was trained on 3 classes .* has 4"):
        evaluate.main(["--checkpoint", str(tiny_run.checkpoint), "--data-path", str(tmp_path), "-b", "4"])


def test_missing_files_are_named(tiny_run, tmp_path):
    with pytest.raises(SystemExit, match=f"checkpoint {tmp_path / 'nope.pth'} does not exist"):
        evaluate.main(["--checkpoint", str(tmp_path / "nope.pth"), "--data-path", str(tiny_run.data)])
    with pytest.raises(SystemExit, match=f"data path {tmp_path / 'nodata'} does not exist"):
        evaluate.main(["--checkpoint", str(tiny_run.checkpoint), "--data-path", str(tmp_path / "nodata")])
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(SystemExit, match="junk.pth cannot be read"):
        evaluate.main(["--checkpoint", str(tmp_path / "junk.pth"), "--data-path", str(tiny_run.data)])


def test_json_path_is_checked_before_the_evaluation(tiny_run, tmp_path, monkeypatch):
    monkeypatch.setattr(evaluate, "evaluate_checkpoint", lambda *a: pytest.fail("evaluated before checking --json"))
    (tmp_path / "file").write_text("")
    for path, message in [(tmp_path, "is a folder: give a file name"), (tmp_path / "file" / "e.json", "is a file")]:
        with pytest.raises(SystemExit, match=f"^error: --json {path}.*{message}"):
            evaluate.main(["--checkpoint", str(tiny_run.checkpoint), "--data-path", str(tiny_run.data),
                           "--json", str(path)])


def test_no_progress_bar_is_drawn_into_a_log_file(tiny_run, tmp_path):
    result = subprocess.run([sys.executable, "-m", "alexnet.evaluate", "--checkpoint", str(tiny_run.checkpoint),
                             "--data-path", str(tiny_run.data), "-b", "4", "--device", "cpu"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "\r" not in result.stdout + result.stderr and "centre crop:" not in result.stderr, result.stderr
