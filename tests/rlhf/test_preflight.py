"""The preflight (rlhf/preflight.py): what a round will do to a model, once, on one batch of
the round's data. A family that works passes every step of its method; a documented gap
is refused before any model loads; vLLM is probed in the serving venv, not assumed from the
model type; a step that fails names the library and the cause."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from rlhf import family_matrix, preflight
from tests.conftest import PYTHON, REPO, clean_env

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pairs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return family_matrix.write_pairs(tmp_path_factory.mktemp("preflight") / "pairs")


@pytest.fixture(scope="module")
def kosmos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from testbed.family_checkpoints import build

    return build("kosmos-2", tmp_path_factory.mktemp("kosmos") / "checkpoint")


def run_preflight(*args: str, out: Path) -> tuple[int, dict[str, Any], str]:
    done = subprocess.run(
        [PYTHON, "-m", "rlhf.cli", "preflight", *args, "--out", str(out)],
        cwd=REPO,
        env=clean_env(OMP_NUM_THREADS="1"),
        capture_output=True,
        text=True,
        timeout=600,
    )
    report = json.loads(out.read_text()) if out.exists() else {}
    return done.returncode, report, done.stdout + done.stderr


@pytest.mark.parametrize(
    ("method", "config", "steps"),
    [
        ("ddpo", "toy-ddpo.yaml", ["family", "vllm", "serve", "train"]),
        ("ppo", "toy-ppo.yaml", ["family", "vllm", "serve", "reward", "rollout"]),
    ],
)
def test_a_family_that_works_passes_every_step_of_its_method(
    base_policy: Path, pairs: Path, tmp_path: Path, method: str, config: str, steps: list[str]
) -> None:
    configs = REPO / "testbed" / "demo" / "configs"
    code, report, output = run_preflight(
        "--model", str(base_policy), "--method", method, "--data", str(pairs),
        "--config", str(configs / config), out=tmp_path / "report.json",
    )  # fmt: skip
    assert code == 0, output
    assert [step["name"] for step in report["steps"]] == steps
    assert report["ok"] and all(step["status"] in ("ok", "skipped") for step in report["steps"]), report
    trained = report["steps"][-1]
    assert trained["status"] == "ok" and ("loss" in trained["detail"] or "rollout" in trained["detail"]), trained
    assert f"preflight of {method} on {base_policy}: passed" in output


def test_a_documented_gap_is_refused_before_any_model_loads(kosmos: Path, pairs: Path, tmp_path: Path) -> None:
    code, report, output = run_preflight(
        "--model", str(kosmos), "--method", "ddpo", "--data", str(pairs), out=tmp_path / "report.json"
    )
    assert code == 1
    statuses = {step["name"]: step["status"] for step in report["steps"]}
    assert statuses == {"family": "refused", "vllm": "skipped", "serve": "skipped", "train": "skipped"}
    assert "ddpo is not available for kosmos-2 models" in report["steps"][0]["detail"]
    assert "step family refused" in output and "last_hidden_state" in report["steps"][0]["detail"]


@pytest.mark.serving
def test_vllm_is_probed_in_the_serving_venv_not_assumed_from_the_model_type(
    base_policy: Path, kosmos: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With Kosmos-2's documented vLLM gap taken out of the table, the probe finds it by
    itself: the pinned vLLM has no model for the architecture, and its Transformers backend
    needs a method the processor lacks. The tiny LLaVA is served by a model of vLLM's own."""
    from django.conf import settings

    from contract import family_gaps

    python = str(settings.FACTLOOP_SERVING_PYTHON)
    assert "serves LlavaForConditionalGeneration with a model of its own" in preflight.vllm_step(
        str(base_policy), preflight.read_config(str(base_policy)), python
    )
    monkeypatch.setattr(
        family_gaps, "REFUSALS", {k: v for k, v in family_gaps.REFUSALS.items() if k != ("kosmos-2", "vllm")}
    )
    with pytest.raises(preflight.Refused) as refused:
        preflight.vllm_step(str(kosmos), preflight.read_config(str(kosmos)), python)
    message = str(refused.value)
    assert "has no model for Kosmos2ForConditionalGeneration" in message
    assert "`_get_num_multimodal_tokens`, which Kosmos2Processor lacks" in message


def test_a_step_that_fails_names_the_library_and_the_cause(base_policy: Path, pairs: Path, tmp_path: Path) -> None:
    """LoRA on modules the family does not have (a new family's layers are named otherwise):
    the train step fails in peft, and the preflight says so."""
    code, report, output = run_preflight(
        "--model", str(base_policy), "--method", "dpo", "--data", str(pairs),
        "--set", "lora.target_modules=[no_such_proj]", out=tmp_path / "report.json",
    )  # fmt: skip
    assert code == 1
    train = report["steps"][-1]
    assert (train["name"], train["status"], train["library"]) == ("train", "failed", "peft")
    assert "no_such_proj" in train["detail"] and "not found in the base model" in train["detail"]
    assert "step train failed in peft" in output and f"(input: dpo on one batch of {pairs})" in output


def test_the_run_settings_refuse_what_a_trainer_would(base_policy: Path, pairs: Path, tmp_path: Path) -> None:
    code, report, _ = run_preflight(
        "--model", str(base_policy), "--method", "dpo", "--data", str(pairs), "--set", "max_length=8",
        out=tmp_path / "report.json",
    )  # fmt: skip
    assert code == 1
    assert report["steps"][-1]["status"] == "refused" and "max_length" in report["steps"][-1]["detail"]


def test_a_folder_that_is_no_export_is_bad_input(base_policy: Path, tmp_path: Path) -> None:
    code, report, output = run_preflight(
        "--model", str(base_policy), "--method", "dpo", "--data", str(tmp_path), out=tmp_path / "report.json"
    )
    assert code == 2 and report == {} and "is not a trl export" in output


def test_a_model_that_is_no_checkpoint_fails_at_its_first_step_and_nothing_runs(pairs: Path, tmp_path: Path) -> None:
    missing = tmp_path / "no-such-checkpoint"
    code, report, output = run_preflight(
        "--model", str(missing), "--method", "ddpo", "--data", str(pairs), out=tmp_path / "report.json"
    )
    assert code == 1
    assert [(s["name"], s["status"]) for s in report["steps"]] == [
        ("family", "failed"), ("vllm", "skipped"), ("serve", "skipped"), ("train", "skipped"),
    ]  # fmt: skip
    family = report["steps"][0]
    assert family["library"] == "transformers" and family["input"] == f"{missing}'s config"
    assert "step family failed in transformers" in output and not missing.exists()


@pytest.mark.serving
def test_a_reachable_server_answers_one_request_through_the_adapter(
    vllm_server: Any, base_policy: Path, pairs: Path, tmp_path: Path
) -> None:
    """With a server named, the serve step loads the adapter there under a name of its own,
    answers one request with an image of the export through it and unloads it; an adapter
    vLLM cannot load is refused naming the server; no server answering is a skip."""
    from models.serving import ServingClient
    from rlhf.serving_check import random_adapter

    adapter = random_adapter(base_policy, tmp_path / "adapter", seed=3)
    ok = preflight.serve_step(vllm_server.url, str(adapter), pairs)
    assert "answered one request with an image through the adapter" in ok
    with ServingClient(vllm_server.url) as client:
        assert not [name for name in client.models() if name.startswith("factloop-preflight-")]  # unloaded
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "adapter_config.json").write_text("{}")
    refused = re.escape(f"the vLLM server at {vllm_server.url} could not answer with the adapter")
    with pytest.raises(preflight.Refused, match=refused):
        preflight.serve_step(vllm_server.url, str(broken), pairs)
    with pytest.raises(preflight.Skipped, match=re.escape("no server answers at http://127.0.0.1:9")):
        preflight.serve_step("http://127.0.0.1:9", str(adapter), pairs)
