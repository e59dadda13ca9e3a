"""Without --kernels on a CPU, train runs the backend that measured fastest, and remembers it."""

import contextlib
import json

import pytest
import torch

from alexnet import fastest
from alexnet.train import default_kernels, get_args_parser


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ALEXNET_DATA_HOME", str(tmp_path))
    return tmp_path / "fastest-kernels.json"


def fake_timings(monkeypatch, seconds: dict) -> list:
    calls = []

    def step_seconds(name, num_classes, batch, autocast):
        calls.append((name, batch))
        return seconds[name]
    monkeypatch.setattr(fastest, "step_seconds", step_seconds)
    return calls


@pytest.mark.parametrize("winner", fastest.CANDIDATES)
def test_picks_the_faster_and_remembers_it(cache, monkeypatch, winner):
    loser = next(n for n in fastest.CANDIDATES if n != winner)
    calls = fake_timings(monkeypatch, {winner: 0.2, loser: 0.3})
    name, why = fastest.fastest_kernels(10, 128, "none", contextlib.nullcontext)
    assert name == winner and "measured now" in why and "200 ms" in why and "300 ms" in why
    assert sorted(calls) == sorted((n, fastest.MEASURE_BATCH) for n in fastest.CANDIDATES)
    assert list(json.loads(cache.read_text()).values()) == [{winner: 0.2, loser: 0.3}]

    calls.clear()
    assert fastest.fastest_kernels(10, 128, "none", contextlib.nullcontext)[0] == winner
    assert calls == [], "a remembered answer was measured again"
    fastest.fastest_kernels(10, 128, "bf16", contextlib.nullcontext)
    assert len(calls) == 2, "another precision is another measurement"


def test_a_backend_that_fails_is_left_out_and_a_corrupt_cache_ignored(cache, monkeypatch):
    cache.write_text("{not json")

    def step_seconds(name, num_classes, batch, autocast):
        if name == "compile":
            raise RuntimeError("no C++ compiler")
        return 0.5
    monkeypatch.setattr(fastest, "step_seconds", step_seconds)
    assert fastest.fastest_kernels(10, 8, "none", contextlib.nullcontext)[0] == "torch"
    assert list(json.loads(cache.read_text()).values()) == [{"torch": 0.5}]


@pytest.mark.parametrize("content", ["[]", '{"some key": {}}', '{"some key": {"torch": "fast"}}'])
def test_a_cache_of_the_wrong_shape_is_ignored_with_a_warning(cache, monkeypatch, capsys, content):
    cache.write_text(content)
    fake_timings(monkeypatch, {"torch": 0.2, "compile": 0.3})
    assert fastest.fastest_kernels(10, 8, "none", contextlib.nullcontext)[0] == "torch"
    assert f"{cache} is not a table of timings; ignoring it" in capsys.readouterr().out
    assert list(json.loads(cache.read_text()).values()) == [{"torch": 0.2, "compile": 0.3}]


def test_measurement_leaves_the_global_rng_alone():
    torch.manual_seed(1)
    before = torch.get_rng_state()
    seconds = fastest.step_seconds("torch", 3, 2, contextlib.nullcontext)
    assert seconds > 0 and torch.equal(torch.get_rng_state(), before)


def test_kernels_default_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("ALEXNET_KERNELS", "compile")
    assert get_args_parser().parse_args([]).kernels == "compile"
    monkeypatch.delenv("ALEXNET_KERNELS")
    assert get_args_parser().parse_args([]).kernels is None


def test_a_bad_kernels_environment_variable_is_named(monkeypatch):
    monkeypatch.setenv("ALEXNET_KERNELS", "cudnn")
    with pytest.raises(SystemExit, match="ALEXNET_KERNELS"):
        get_args_parser()


def test_a_resumed_run_keeps_the_backend_it_was_trained_with(monkeypatch):
    monkeypatch.setattr(fastest, "step_seconds", lambda *a: pytest.fail("measured instead of using the checkpoint's"))
    args = get_args_parser().parse_args(["--resume", "ckpt.pth"])
    name, why = default_kernels(args, {"args": {"kernels": "compile"}}, torch.device("cpu"), 10, None,
                                contextlib.nullcontext)
    assert name == "compile" and "ckpt.pth" in why
