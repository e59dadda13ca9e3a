"""bench.roofline and bench.plot: the floors reproduce design.md's anchors, and a pytest-benchmark JSON
becomes the right table rows and a real PNG."""

import json
import struct

import pytest

from bench import plot, roofline
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
