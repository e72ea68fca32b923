"""Command-line entry points refuse bad input with a message and an exit code."""

from __future__ import annotations

from pathlib import Path

import pytest

from models import cli as models_cli
from rlhf import cli as rlhf_cli


def test_evaluate_refuses_a_folder_that_is_no_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert rlhf_cli.main(["evaluate", "--model", str(tmp_path)]) == 2
    assert "cannot load model" in capsys.readouterr().err


def test_evaluate_refuses_a_bad_scene_count(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        rlhf_cli.main(["evaluate", "--model", "x", "--scenes", "0"])
    assert exit_info.value.code == 2
    assert "--scenes must be at least 1" in capsys.readouterr().err


def test_build_tiny_refuses_bad_steps(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        models_cli.main(["build-tiny", "--out", str(tmp_path / "m"), "--steps", "0"])
    assert exit_info.value.code == 2
    assert "--steps must be at least 1" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()
