"""python -m alexnet.predict: top-k classes with probabilities for files and folders of any size and
format, the same transform as the DALI validation pipeline, and clear errors for bad input."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from alexnet import predict
from alexnet.checkpoint import load, save
from alexnet.inference import image_files, load_image, load_trained, run
from data.dali import DaliLoader
from data.plans import val_plan
from data.folder import load_splits
pytest_plugins = ["tests.trained"]  # the tiny_run fixture


def test_folder_gives_ranked_probabilities(tiny_run, capsys):
    results = predict.main([str(tiny_run.data / "val"), "--checkpoint", str(tiny_run.checkpoint), "--device", "cpu"])
    files = sorted((tiny_run.data / "val").rglob("*.JPEG"))
    assert [r["path"] for r in results] == [str(f) for f in files]
    for r in results:
        probs = [t["prob"] for t in r["top"]]
        assert sorted(t["class"] for t in r["top"]) == ["checks", "crosshatch", "dots"], r  # 3 classes: all of them
        assert probs == sorted(probs, reverse=True) and all(0 <= p <= 1 for p in probs), r
        assert sum(probs) == pytest.approx(1, abs=1e-5), r
    # The probabilities are the softmax of the network's logits for the transformed image.
    trained = load_trained(tiny_run.checkpoint)
    expected = run(trained, files[:1]).softmax(1)[0]
    assert results[0]["top"][0]["prob"] == pytest.approx(expected.max().item(), abs=1e-6)
    text = capsys.readouterr().out
    assert str(files[0]) in text and " %  " in text


def test_json_output(tiny_run, capsys):
    image = next((tiny_run.data / "val").rglob("*.JPEG"))
    results = predict.main([str(image), "--checkpoint", str(tiny_run.checkpoint), "--json"])
    assert json.loads(capsys.readouterr().out) == results and len(results) == 1


def test_any_size_and_common_format(tiny_run, tmp_path):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (700, 50, 3), dtype=np.uint8)
    Image.fromarray(pixels, "RGB").convert("RGBA").save(tmp_path / "tall.png")
    Image.fromarray(pixels[:40, :, 0], "L").save(tmp_path / "grey_small.jpg")
    Image.fromarray(pixels[:300]).convert("P").save(tmp_path / "palette.gif")
    Image.fromarray(pixels[:500]).save(tmp_path / "wide.bmp")
    files = sorted(tmp_path.iterdir())
    for f in files:
        assert load_image(f).shape == (3, 227, 227), f
    results = predict.main([*map(str, files), "--checkpoint", str(tiny_run.checkpoint)])
    assert [r["path"] for r in results] == [str(f) for f in files]
    assert all(len(r["top"]) == 3 for r in results)


def test_transform_matches_the_dali_val_pipeline(tiny_run):
    _, _, val = load_splits(tiny_run.data)
    samples = val
    dali = torch.cat([images for images, _ in DaliLoader(val_plan(samples), 4)])
    pil = torch.stack([load_image(p) for p, _ in samples])
    difference = (pil - dali).abs()
    # Same geometry and mean; the two libraries' resampling differs by about a grey level on the textures,
    # a crop one pixel off by 4 or more (tests/test_data.py).
    assert difference.mean() < 2.0, f"PIL and DALI val transforms differ by {difference.mean():.2f} on average"


def test_bad_input_is_named(tiny_run, tmp_path):
    ckpt = str(tiny_run.checkpoint)
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a JPEG")
    with pytest.raises(SystemExit, match=f"image {tmp_path / 'broken.jpg'} cannot be read"):
        predict.main([str(tmp_path / "broken.jpg"), "--checkpoint", ckpt])
    with pytest.raises(SystemExit, match=f"image {tmp_path / 'missing.png'} does not exist"):
        predict.main([str(tmp_path / "missing.png"), "--checkpoint", ckpt])
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match=f"folder {tmp_path / 'empty'} holds no image files"):
        predict.main([str(tmp_path / "empty"), "--checkpoint", ckpt])
    image = str(next((tiny_run.data / "val").rglob("*.JPEG")))
    with pytest.raises(SystemExit, match=f"checkpoint {tmp_path / 'none.pth'} does not exist"):
        predict.main([image, "--checkpoint", str(tmp_path / "none.pth")])


def test_checkpoint_whose_classes_do_not_fit_its_last_layer(tiny_run, tmp_path):
    state = load(tiny_run.checkpoint)
    state["classes"] = ["a", "b", "c", "d"]
    save(state, tmp_path / "four.pth")
    with pytest.raises(SystemExit, match=r"four.pth names 4 classes but its fc8 has 3 outputs"):
        predict.main([str(tiny_run.data / "val"), "--checkpoint", str(tmp_path / "four.pth")])


def test_image_files_keeps_the_order_given(tmp_path):
    for name in ("b.jpg", "a.png", "sub/c.jpeg", "notes.txt"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    assert image_files([tmp_path / "b.jpg", tmp_path]) == [tmp_path / "b.jpg", tmp_path / "a.png",
                                                           tmp_path / "b.jpg", tmp_path / "sub/c.jpeg"]
