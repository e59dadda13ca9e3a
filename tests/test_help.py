"""Every command's --help names it as python -m alexnet.MODULE [SUBCOMMAND] and does no work: no
checkpoint loaded, no dataset drawn, no training, no export."""

import importlib

import pytest

from alexnet import train

COMMANDS = [("evaluate",), ("predict",), ("features",), ("features", "extract"), ("features", "neighbours"),
            ("figures",), ("figures", "filters"), ("figures", "curves"), ("figures", "predictions"), ("ablate",),
            ("export",)]
WORK = ("load_trained", "evaluate_checkpoint", "ensure_embedded", "run", "export")  # what the commands call to work


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_help_names_the_command_and_does_no_work(command, monkeypatch, capsys):
    module = importlib.import_module(f"alexnet.{command[0]}")

    def work(*args, **kwargs):
        raise AssertionError(f"python -m alexnet.{' '.join(command)} --help did work")

    for name in WORK:
        if hasattr(module, name):
            monkeypatch.setattr(module, name, work)
    monkeypatch.setattr(train, "main", work)
    with pytest.raises(SystemExit) as exit:
        module.main([*command[1:], "--help"])
    assert exit.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: python -m alexnet.{' '.join(command)} [-h]")
