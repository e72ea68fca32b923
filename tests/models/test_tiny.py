"""The tiny LLaVA: built from configs, saved for transformers and vLLM, deterministic, and
trained into a base policy that is mostly right yet still hallucinates."""

from __future__ import annotations

import hashlib
import io
import time
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from models.tiny import (
    MANIFEST,
    TinySpec,
    build_model,
    build_toy_model,
    generate,
    image_size_of,
    reset_projector,
)
from models.toyworld import render, sample_scenes
from rlhf.evaluate import evaluate_toyworld, heldout_scenes, load_policy

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def base_metrics(base_policy: Path) -> dict[str, Any]:
    model, processor = load_policy(str(base_policy))
    return evaluate_toyworld(model, processor, heldout_scenes(100))


def digest(folder: Path) -> str:
    return hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()


def test_build_is_deterministic_for_a_seed(tmp_path: Path) -> None:
    spec = TinySpec(steps=4, train_scenes=40, batch_size=8)
    build_toy_model(tmp_path / "a", spec)
    build_toy_model(tmp_path / "b", spec)
    assert digest(tmp_path / "a") == digest(tmp_path / "b")
    build_toy_model(tmp_path / "c", TinySpec(steps=4, train_scenes=40, batch_size=8, seed=1))
    assert digest(tmp_path / "c") != digest(tmp_path / "a")


def test_checkpoint_reloads_with_transformers_and_generates(base_policy: Path) -> None:
    model, processor = load_policy(str(base_policy))
    assert type(model).__name__ == "LlavaForConditionalGeneration"
    scene = sample_scenes(5, 1, prefix="probe")[0]
    [answer] = generate(model, processor, [render(scene, image_size_of(processor))], ["Describe the image."])
    assert answer.startswith("A ") and answer.endswith(".")


def test_vision_tower_is_saved_under_vllm_names(base_policy: Path) -> None:
    from safetensors import safe_open

    with safe_open(str(base_policy / "model.safetensors"), "pt") as handle:
        keys = list(handle.keys())
    tower = [k for k in keys if ".vision_tower." in f".{k}"]
    assert tower and all(".vision_tower.vision_model." in f".{k}" for k in tower)


def test_build_is_reused(base_policy: Path) -> None:
    before = (base_policy / "model.safetensors").stat().st_mtime_ns
    started = time.monotonic()
    manifest = build_toy_model(base_policy)
    assert time.monotonic() - started < 5
    assert (base_policy / "model.safetensors").stat().st_mtime_ns == before
    assert manifest["kind"] == "factloop-tiny-llava"
    assert (base_policy / MANIFEST).exists()


@pytest.mark.django_db
def test_build_command_reuses_and_refuses_bad_input(base_policy: Path) -> None:
    out = io.StringIO()
    call_command("build_toy_model", out=base_policy, stdout=out)
    assert '"parameters"' in out.getvalue()
    with pytest.raises(CommandError, match="--steps must be at least 1"):
        call_command("build_toy_model", out=base_policy, steps=0)


def test_base_policy_sees_and_hallucinates_within_the_band(base_metrics: dict[str, Any]) -> None:
    """A test bed for alignment: the base policy reads the image (POPE well above chance)
    yet keeps its ghost-object habit (a fair share of descriptions hallucinate)."""
    assert base_metrics["pope_f1"] >= 0.8, base_metrics["pope"]
    assert 0.04 <= base_metrics["chair_i"] <= 0.5, base_metrics
    assert 0.15 <= base_metrics["chair_s"] <= 0.9, base_metrics
    assert base_metrics["empty_share"] == 0.0


def test_base_policy_beats_an_untrained_model(base_policy: Path, base_metrics: dict[str, Any]) -> None:
    """Every weight untrained: random bytes that now and then spell an object's name."""
    _, processor = load_policy(str(base_policy))
    untrained = build_model(TinySpec(), processor).eval()
    raw = evaluate_toyworld(untrained, processor, heldout_scenes(100))
    assert raw["object_halbench"]["responses_with_objects"] > 10
    assert base_metrics["chair_i"] < raw["chair_i"] - 0.3, (base_metrics["chair_i"], raw["chair_i"])
    assert base_metrics["pope_f1"] > raw["pope_f1"]


def test_base_policy_beats_untrained_vision(base_policy: Path, base_metrics: dict[str, Any]) -> None:
    """The base policy against the same model whose vision-to-language path is untrained.

    A fairer reference than random weights, which name few objects at all: this one speaks
    the grammar but has never learnt to look (the base policy with its projector
    re-initialised), so it can only guess objects from the language prior.
    """
    model, processor = load_policy(str(base_policy))
    reset_projector(model)
    blind = evaluate_toyworld(model, processor, heldout_scenes(100))
    assert blind["object_halbench"]["responses_with_objects"] > 50
    assert base_metrics["chair_i"] < blind["chair_i"] - 0.2, (base_metrics["chair_i"], blind["chair_i"])
    assert base_metrics["chair_s"] < blind["chair_s"]
