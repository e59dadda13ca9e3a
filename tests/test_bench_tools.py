"""bench.roofline and bench.plot: the floors reproduce the performance anchors (docs/performance.md), and a
pytest-benchmark JSON becomes the right table rows and a real PNG, a CPU run's too, at the dtype and GPU the file holds; --help of
both and of bench.report names the command and does nothing else."""

import json
import re
import struct

import pytest

from bench import plot, report, roofline
from bench.costs import GPUS

H100 = GPUS["h100"]


def per_image(rows, passes):
    """FLOPs per image of the conv and linear rows' `passes`, at the batch the rows were built for."""
    return sum(row.flops for row in rows if row.pass_ in passes and not row.layer.startswith(("lrn", "pool")))


def test_anchors():
    assert roofline.parameter_count() == 60_965_224, "[parameters] the paper's 60,965,224"
    rows = roofline.layer_rows(batch=1, precision="bf16")
    assert per_image(rows, {"fwd"}) / 2 == pytest.approx(0.724e9, rel=0.01), "[forward GMAC/img]"
    assert per_image(rows, {"fwd", "dgrad", "wgrad"}) == pytest.approx(4.35e9, rel=0.01), "[training GFLOP/img]"

    rows = roofline.layer_rows(batch=128, precision="bf16")
    three_times_forward_ms = sum(row.compute_ms(H100, "bf16") for row in rows)
    assert three_times_forward_ms == pytest.approx(0.56, rel=0.01), "[H100 bf16 step compute floor]"
    conv1_dgrad = next(row for row in rows if (row.layer, row.pass_) == ("conv1", "dgrad"))
    step_ms = sum(row.compute_ms(H100, "bf16") for row in roofline.step_rows(rows))
    assert step_ms == pytest.approx(three_times_forward_ms - conv1_dgrad.compute_ms(H100, "bf16")), \
        "[train step] every conv/fc pass but conv1's dgrad"

    lrn1 = next(row for row in roofline.layer_rows(128, "fp32") if (row.layer, row.pass_) == ("lrn1", "fwd"))
    assert lrn1.floor_ms(H100, "fp32") == pytest.approx(0.09, rel=0.03), "[LRN1 fwd floor, H100 fp32]"


def benchmark(layer, pass_, backend, ms, device="cpu", batch=1, dtype="bfloat16", interpreted=False):
    return {"name": f"test_{layer}[{pass_}-{backend}]", "stats": {"median": ms / 1e3},
            "extra_info": {"layer": layer, "pass": pass_, "backend": backend, "device": device, "batch": batch,
                           "dtype": dtype, "triton_interpreted": interpreted}}


@pytest.fixture
def bench_json(tmp_path):
    h100 = "NVIDIA H100 80GB HBM3"
    lrn1_floor = roofline.floors_ms(H100, "bf16", 128)["lrn1", "fwd+bwd"]
    benchmarks = [benchmark("conv2", "fwd", "triton", 900.0, interpreted=True),
                  benchmark("conv2", "fwd", "torch", 2.5),
                  benchmark("lrn1", "fwd+bwd", "torch", 2 * lrn1_floor, device=h100, batch=128),
                  benchmark("train step", "step", "compile", 40.0, device=h100, batch=4),
                  benchmark("conv3", "fwd", "torch", 1.0, dtype="float32")]  # another dtype: left out
    path = tmp_path / "bench.json"
    path.write_text(json.dumps({"benchmarks": benchmarks}))
    return path


def test_roofline_matches_benchmarks(bench_json, capsys):
    measured = roofline.load_measurements(str(bench_json), "bf16")
    header, *lines = roofline.table(H100, "bf16", 128, measured)
    assert header[8:] == ["compile ms", "compile floor/time", "torch ms", "torch floor/time",
                          "triton ms", "triton floor/time"], header
    rows = {(line[0], line[1]): dict(zip(header, line)) for line in lines}
    conv2 = rows["conv2", "fwd"]
    assert (conv2["triton ms"], conv2["triton floor/time"]) == ("900 interpreted", "n/a (CPU)"), conv2
    assert (conv2["torch ms"], conv2["torch floor/time"]) == ("2.5", "n/a (CPU)"), conv2
    assert rows["lrn1", "fwd+bwd"]["torch floor/time"] == "0.50", rows["lrn1", "fwd+bwd"]
    assert rows["train step", "step"]["compile floor/time"] == "n/a (batch 4)", rows["train step", "step"]
    assert rows["conv3", "fwd"]["torch ms"] == "", "[conv3 fwd] an fp32 benchmark matched a bf16 row"

    roofline.main(["--gpu", "h100", "--json", str(bench_json)])
    out = capsys.readouterr().out
    assert "not measurements" in out and "900 interpreted" in out and len(out.splitlines()) == len(lines) + 3


def test_roofline_refuses_a_json_without_the_dtype(bench_json):
    with pytest.raises(SystemExit, match="no benchmark at fp16"):
        roofline.main(["--gpu", "h100", "--dtype", "fp16", "--json", str(bench_json)])


def test_plot_writes_a_png(bench_json, tmp_path):
    png = tmp_path / "bench.png"
    plot.main([str(bench_json), "--gpu", "h100", "-o", str(png)])
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "[bench.png] not a PNG"
    width, height = struct.unpack(">II", data[16:24])  # the IHDR chunk
    assert (width, height) == (plot.WIDTH_IN * plot.DPI, plot.HEIGHT_IN * plot.DPI)
    assert len(data) > 10_000, f"[bench.png] {len(data)} bytes: an empty plot?"


@pytest.fixture
def cpu_json(tmp_path):
    """What `pytest bench/ --benchmark-only --benchmark-json` records on a CPU: fp32 only (the convs as TF32),
    batch 1, Triton interpreted, and benchmarks with no layer (the towers, the data pipeline)."""
    conv = [benchmark("conv1", "fwd", backend, ms, dtype="float32", interpreted=backend == "triton")
            for backend, ms in (("triton", 4000.0), ("torch", 3.0), ("compile", 2.0))]
    for row in conv:
        row["extra_info"]["precision"] = "tf32"  # bench/test_conv.py's: TF32 while torch allows it for convolutions
    benchmarks = conv + [benchmark("lrn1", "fwd", "torch", 1.0, dtype="float32"),
                         {"name": "test_one_tower", "stats": {"median": 0.2},
                          "extra_info": {"device": "cpu", "dtype": "float32", "towers": 1}},
                         {"name": "test_data_pipeline[pil-cpu]", "stats": {"median": 1.0},
                          "extra_info": {"device": "cpu", "loader": "pil"}}]
    path = tmp_path / "cpu.json"
    path.write_text(json.dumps({"benchmarks": benchmarks}))
    return path


def test_roofline_and_plot_default_to_the_files_dtype_and_device(cpu_json, tmp_path, capsys):
    roofline.main(["--json", str(cpu_json)])
    out = capsys.readouterr().out
    assert out.startswith("Floors on an H100 SXM, batch 128, tf32,"), out  # fp32 rows, TF32 convs; no known GPU
    assert "4000 interpreted" in out and "n/a (CPU)" in out, out
    png = tmp_path / "cpu.png"
    plot.main([str(cpu_json), "-o", str(png)])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", "[cpu.png] not a PNG"

    benchmarks = json.loads(cpu_json.read_text())["benchmarks"]
    lrn_only = [b for b in benchmarks if b["extra_info"].get("layer") == "lrn1"]
    assert roofline.file_defaults("x.json", lrn_only) == ("fp32", "h100")
    h200 = [benchmark("lrn1", "fwd", "torch", 1.0, device="NVIDIA H200", dtype=dtype)
            for dtype in ("float32", "float16", "bfloat16")]
    assert roofline.file_defaults("x.json", h200) == ("bf16", "h200"), "[GPU file] bf16 among others, its GPU"


def test_roofline_and_plot_name_a_file_with_nothing_to_show(tmp_path):
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({"benchmarks": [{"name": "test_one_tower", "stats": {"median": 0.2},
                                                 "extra_info": {"device": "cpu", "towers": 1}}]}))
    for main, argv in ((roofline.main, ["--json", str(empty)]), (plot.main, [str(empty)])):
        with pytest.raises(SystemExit, match=f"{re.escape(str(empty))}: none of its 1 benchmarks records"):
            main(argv)
    with pytest.raises(SystemExit, match="missing.json: cannot read it as a pytest-benchmark JSON"):
        plot.main([str(tmp_path / "missing.json")])


@pytest.mark.parametrize("module", [roofline, plot, report])
def test_help_names_the_command_and_does_nothing(module, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        module.main(["--help"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: python -m {module.__name__} "), module.__name__
    assert not list(tmp_path.iterdir()), f"[{module.__name__} --help] wrote {list(tmp_path.iterdir())}"
