"""Registering a base model: any transformers checkpoint folder (not only the tiny
builder's), or a hub id; bad input refused with the reason and nothing written; rounds start
only from registered versions."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import Client

from annotation.models import AuditEvent, Round
from models.registry import Registry
from tests.factories import make_round

pytestmark = pytest.mark.django_db


@pytest.fixture
def registry(settings: Any, tmp_path: Path) -> Registry:
    settings.FACTLOOP_MODEL_DIR = str(tmp_path / "models")
    return Registry(settings.FACTLOOP_MODEL_DIR)


@pytest.fixture
def checkpoint(base_policy: Path, tmp_path: Path) -> Path:
    """The tiny model saved under another name, without the builder's manifest."""
    folder = tmp_path / "someone-elses-vlm"
    shutil.copytree(base_policy, folder)
    (folder / "factloop-tiny.json").unlink()
    return folder


def test_a_checkpoint_folder_and_a_hub_id_register(registry: Registry, checkpoint: Path) -> None:
    out = io.StringIO()
    call_command("register_model", "my-base", model=str(checkpoint), stdout=out)
    assert json.loads(out.getvalue())["base_model"] == str(checkpoint.resolve())
    assert registry.get("my-base").base_model == str(checkpoint.resolve()) and registry.status("my-base") == "ready"
    call_command("register_model", "llava-7b", model="llava-hf/llava-1.5-7b-hf", stdout=io.StringIO())
    assert registry.get("llava-7b").base_model == "llava-hf/llava-1.5-7b-hf"
    assert AuditEvent.objects.filter(action="register").count() == 2


def test_bad_input_is_refused_with_the_reason_and_nothing_is_written(
    registry: Registry, checkpoint: Path, tmp_path: Path
) -> None:
    (tmp_path / "file.bin").write_text("x")
    no_type = tmp_path / "no-type"
    shutil.copytree(checkpoint, no_type)
    (no_type / "config.json").write_text(json.dumps({"architectures": ["X"]}))
    no_tokenizer = tmp_path / "no-tokenizer"
    shutil.copytree(checkpoint, no_tokenizer)
    for name in ("tokenizer.json", "tokenizer_config.json", "processor_config.json"):
        (no_tokenizer / name).unlink(missing_ok=True)
    (tmp_path / "empty").mkdir()
    unservable = tmp_path / "chameleon"  # a family vLLM cannot serve with images (contract/family_gaps.py)
    shutil.copytree(checkpoint, unservable)
    (unservable / "config.json").write_text(json.dumps({"model_type": "chameleon"}))
    cases: list[tuple[dict[str, Any], str]] = [
        ({"model": str(tmp_path / "missing")}, "neither a checkpoint folder here nor a hub id"),
        ({"model": "./relative/missing"}, "neither a checkpoint folder here nor a hub id"),
        ({"model": str(tmp_path / "file.bin")}, "is a file, not a checkpoint folder"),
        ({"model": str(tmp_path / "empty")}, "holds no readable config.json"),
        ({"model": str(no_type)}, "names no model_type"),
        ({"model": str(no_tokenizer)}, "holds no processor or tokenizer"),
        ({"model": str(unservable)}, "cannot be served: vLLM removed its Chameleon model"),
        ({"model": str(checkpoint), "adapter": tmp_path / "empty"}, "holds no LoRA adapter"),
    ]
    for options, reason in cases:
        with pytest.raises(CommandError, match=reason):
            call_command("register_model", "v1", **options)
    with pytest.raises(CommandError, match="invalid version name"):
        call_command("register_model", "a/b", model=str(checkpoint))
    assert list(registry) == [] and not AuditEvent.objects.filter(action="register").exists()
    call_command("register_model", "v1", model=str(checkpoint), stdout=io.StringIO())
    with pytest.raises(CommandError, match="already registered"):
        call_command("register_model", "v1", model=str(checkpoint))


def test_the_admin_registers_a_model_and_starts_rounds_only_from_registered_versions(
    registry: Registry, checkpoint: Path, admin_user: User, django_capture_on_commit_callbacks: Any
) -> None:
    image = make_round(tasks=1).tasks.get().prompt.image
    from annotation.data.images import add_prompt

    add_prompt(image, "A new prompt.")
    client = Client()
    client.force_login(admin_user)
    refused = client.post("/admin/annotation/round/register-model/", {"name": "x", "model": "/no/such/folder"})
    assert refused.status_code == 200 and "neither a checkpoint folder here nor a hub id" in refused.content.decode()
    done = client.post("/admin/annotation/round/register-model/", {"name": "mine", "model": str(checkpoint)})
    assert done.status_code == 302 and registry.get("mine").base_model == str(checkpoint.resolve())
    page = client.get("/admin/annotation/round/start/").content.decode()
    assert '<option value="mine">' in page and 'value="base"' not in page
    form = {
        "task_kinds": ["rank"],
        "candidates_per_prompt": 2,
        "overlap": 1,
        "gold_rate": 0,
        "split": "train",
        "temperature": 0.7,
        "max_tokens": 64,
    }
    unknown = client.post("/admin/annotation/round/start/", form | {"policy_version": "base"})
    assert unknown.status_code == 200 and "Select a valid choice" in unknown.content.decode()
    with django_capture_on_commit_callbacks(execute=False):
        started = client.post("/admin/annotation/round/start/", form | {"policy_version": "mine"})
    assert started.status_code == 302 and Round.objects.get(number=2).policy_version == "mine"


@pytest.mark.serving
def test_a_family_the_table_does_not_list_is_probed_in_the_serving_venv(
    registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Kosmos-2 with its documented gap taken out of the table: registering it asks the
    serving venv's vLLM, which has no model for it and whose Transformers backend needs a
    method Kosmos-2's processor lacks; refused with that reason, nothing written."""
    from contract import family_gaps
    from testbed.family_checkpoints import build

    kosmos = build("kosmos-2", tmp_path / "kosmos")
    monkeypatch.setattr(
        "annotation.loop.deployment.REFUSALS",
        {k: v for k, v in family_gaps.REFUSALS.items() if k != ("kosmos-2", "vllm")},
    )
    with pytest.raises(CommandError, match="has no model for Kosmos2ForConditionalGeneration") as refused:
        call_command("register_model", "kosmos", model=str(kosmos))
    assert "`_get_num_multimodal_tokens`, which Kosmos2Processor lacks" in str(refused.value)
    assert list(registry) == [] and not AuditEvent.objects.filter(action="register").exists()
