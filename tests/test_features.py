"""python -m alexnet.features: fc7 features to an .npz, and nearest neighbours by Euclidean distance."""

import numpy as np
import pytest
import torch
from PIL import Image

from alexnet import features
from alexnet.inference import load_image, load_trained
pytest_plugins = ["tests.trained"]  # the tiny_run fixture


def test_extract_writes_fc7_of_every_image(tiny_run, tmp_path):
    out = features.main(["extract", str(tiny_run.data / "val"), "--checkpoint", str(tiny_run.checkpoint),
                         "-b", "4", "-o", str(tmp_path / "f.npz")])
    with np.load(out) as f:
        feats, paths = f["features"], list(f["paths"])
    files = sorted((tiny_run.data / "val").rglob("*.JPEG"))
    assert paths == [str(p) for p in files]
    assert feats.shape == (6, 4096) and feats.dtype == np.float32
    assert (feats >= 0).all(), "fc7 features are taken after the ReLU"
    # The same as the network's own fc7 for that image, run alone.
    trained = load_trained(tiny_run.checkpoint)
    activations = {}
    with torch.no_grad():
        trained.model(load_image(files[-1])[None], activations)
    np.testing.assert_allclose(feats[-1], activations["fc7"][0].numpy(), rtol=1e-4, atol=1e-4, err_msg="[fc7]")


def test_nearest_is_brute_force_euclidean():
    generator = torch.Generator().manual_seed(1)
    queries, gallery = torch.randn(5, 32, generator=generator), torch.randn(40, 32, generator=generator)
    exclude = torch.zeros(5, 40, dtype=torch.bool)
    exclude[2, 7] = True
    d, idx = features.nearest(queries, gallery, 4, exclude)
    for q in range(5):
        dist = [((queries[q] - g) ** 2).sum().sqrt().item() for g in gallery]
        order = [j for j in np.argsort(dist) if not (q == 2 and j == 7)][:4]
        assert idx[q].tolist() == order, f"query {q}: neighbours {idx[q].tolist()}, brute force {order}"
        assert d[q].tolist() == pytest.approx([dist[j] for j in order], rel=1e-5)


def test_neighbours_png_from_a_folder_or_an_npz(tiny_run, tmp_path):
    ckpt = str(tiny_run.checkpoint)
    query = sorted((tiny_run.data / "train").rglob("*.JPEG"))[0]
    npz = features.main(["extract", str(tiny_run.data / "train"), "--checkpoint", ckpt, "-o", str(tmp_path / "g.npz")])
    trained = load_trained(ckpt)
    png, d, near = features.neighbours(trained, [query], features.load_features(npz), 3, tmp_path / "a.png")
    assert query not in near[0], "a query in the gallery is its own nearest neighbour"
    assert len(near[0]) == 3 and d[0].tolist() == sorted(d[0].tolist())
    # From the folder, through the command: the same neighbours.
    png_cli = features.main(["neighbours", str(query), "--checkpoint", ckpt, "--gallery", str(tiny_run.data / "train"),
                             "-k", "3", "-o", str(tmp_path / "b.png")])
    _, d2, near2 = features.neighbours(trained, [query], sorted((tiny_run.data / "train").rglob("*.JPEG")), 3,
                                       tmp_path / "c.png")
    assert near2 == near and torch.allclose(d2, d, rtol=1e-4)
    for p in (png, png_cli):
        with Image.open(p) as img:
            assert img.format == "PNG" and img.width > img.height > 100, f"{p}: {img.size}"


def test_bad_features_file_is_named(tiny_run, tmp_path):
    (tmp_path / "junk.npz").write_bytes(b"nope")
    query = str(next((tiny_run.data / "val").rglob("*.JPEG")))
    with pytest.raises(SystemExit, match=f"features file {tmp_path / 'junk.npz'} cannot be read"):
        features.main(["neighbours", query, "--checkpoint", str(tiny_run.checkpoint),
                       "--gallery", str(tmp_path / "junk.npz")])


def test_extract_writes_the_file_it_names_and_checks_it_first(tiny_run, tmp_path, capsys):
    out = features.main(["extract", str(tiny_run.data / "val"), "--checkpoint", str(tiny_run.checkpoint),
                         "-o", str(tmp_path / "fc7")])
    assert out == tmp_path / "fc7" and out.is_file() and not (tmp_path / "fc7.npz").exists()
    assert capsys.readouterr().out.strip().endswith(f"fc7 features: {tmp_path / 'fc7'}")
    assert features.load_features(out)[0].shape == (6, 4096)
    with pytest.raises(SystemExit, match=f"^error: -o {tmp_path} is a folder: give a file name"):
        features.main(["extract", str(tiny_run.data / "val"), "--checkpoint", str(tiny_run.checkpoint),
                       "-o", str(tmp_path)])
