"""The GPU acceptance script's dry run (bench/gpu.py --dry-run): the same three parts as on
a GPU (trl against FactLoop's DPO and DDPO, rollouts through vLLM with a hot-loaded
adapter against generate, one round of the test bed end to end), on the CPU with the tiny
model, so the script is known to work before a GPU is ever available."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
@pytest.mark.serving
@pytest.mark.timeout(1500)
def test_the_gpu_scripts_dry_run_passes_every_part(tmp_path: Path) -> None:
    out = tmp_path / "gpu.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "bench/gpu.py", "--dry-run", "--allow-dirty", "--json", str(out)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=1400,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["dry_run"] is True and result["passed"] is True
    assert {name: part["status"] for name, part in result["parts"].items()} == dict.fromkeys(
        ("train_step", "rollout", "round"), "ok"
    )
    figures = result["figures"]
    # Each part measured what it is for, with the provenance of the run.
    assert set(figures["pairs_per_second"]) == {"trl-dpo", "dpo", "ddpo"} and figures["device"] == "cpu"
    assert all(rate > 0 for rate in figures["pairs_per_second"].values())
    assert figures["rollout_tokens_per_second"]["served"] > 0 and figures["served_over_generate"] > 0
    loop = result["parts"]["round"]["result"]
    assert loop["steps"]["train"] is not None and loop["next_round"]["number"] == 2
    assert 0 <= figures["round_chair_i"]["new"] <= 1 and figures["round_seconds"] > 0
    assert result["revision"] and result["machine"]["cpus"] and "gpu.py --dry-run" in result["command"]
    # The table names every part.
    for name in ("train_step", "rollout", "round"):
        assert f"\n{name}" in done.stdout
