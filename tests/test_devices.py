"""The suite's choice of where the Triton kernels run (tests/devices.py), as a GPU host would see it: CUDA
reported present (mocked), so no interpreter, tensors on the GPU, and a test that needs the interpreter run
apart in a subprocess with no GPU visible."""

import subprocess

import torch

from tests import devices


def test_a_gpu_host_runs_the_kernels_on_the_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert not devices.use_interpreter(), "[devices] the interpreter would be on beside a GPU"
    assert devices.triton_device() == torch.device("cuda"), "[devices] CPU tensors on a GPU host"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert devices.use_interpreter() and devices.triton_device() == torch.device("cpu")


def test_a_test_that_needs_the_interpreter_runs_apart_on_a_gpu_host(monkeypatch):
    calls, ran = [], []

    def fake_run(command, **kwargs):
        calls.append((command, kwargs["env"]))
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(devices.subprocess, "run", fake_run)
    monkeypatch.setenv("TRITON_INTERPRET", "0")  # as on a GPU host, where conftest leaves it off
    devices.needs_interpreter(lambda: ran.append("in-process"))()
    assert not ran and len(calls) == 1, f"[needs_interpreter] ran {ran}, subprocesses {calls}"
    command, env = calls[0]
    assert env["CUDA_VISIBLE_DEVICES"] == "" and env["TRITON_INTERPRET"] == "1", env
    assert "tests/test_devices.py::test_a_test_that_needs_the_interpreter_runs_apart_on_a_gpu_host" in command

    monkeypatch.setenv("TRITON_INTERPRET", "1")  # this machine with no GPU: in-process
    devices.needs_interpreter(lambda: ran.append("in-process"))()
    assert ran == ["in-process"] and len(calls) == 1
