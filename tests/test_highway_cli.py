"""``worldplan highway`` on the command line: ``--help`` shows the values a run uses."""

from __future__ import annotations

import re

import pytest

from worldplan.experiments.cli import main


def _help(capsys, monkeypatch, *flags: str) -> str:
    monkeypatch.setenv("COLUMNS", "80")  # one column: a field's help follows its flag
    with pytest.raises(SystemExit) as info:
        main(["highway", "train-policy", *flags, "--help"])
    assert info.value.code == 0
    return re.sub(r"[│╭╮╰╯─]", " ", capsys.readouterr().out)


def _default(text: str, flag: str) -> str:
    after = text.split(f"{flag} INT", 1)[1]
    return re.search(r"\(default: ([^)]*)\)", after.split("--", 1)[0]).group(1)


def test_help_shows_the_policy_context_it_takes(capsys, monkeypatch) -> None:
    text = _help(capsys, monkeypatch)
    assert _default(text, "--policy.ncond") == "2"  # the world model's, not the placeholder 0
    assert "--model.ncond 2" in text
    text = _help(capsys, monkeypatch, "--model.ncond", "4")
    assert _default(text, "--policy.ncond") == "4" and _default(text, "--model.ncond") == "4"
    text = _help(capsys, monkeypatch, "--model.ncond", "4", "--policy.ncond", "10")
    assert _default(text, "--policy.ncond") == "10"
