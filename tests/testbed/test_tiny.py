"""The tiny LLaVA: built from configs, saved for transformers and vLLM, deterministic,
trained into a base policy that is mostly right yet still hallucinates, and shipped with the
repository as the one test bed every machine measures."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import shutil
import time
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from rlhf.common import load_policy
from rlhf.scene_eval import evaluate_toyworld, heldout_scenes
from testbed.tiny import (
    MANIFEST,
    SHIPPED,
    Band,
    OutOfBand,
    TinySpec,
    build_model,
    build_toy_model,
    file_digests,
    generate,
    image_size_of,
    problems,
    read_manifest,
    reset_projector,
    spec_hash,
    validation_scenes,
)
from testbed.toyworld import render, sample_scenes

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
# The base row docs/training.md's alignment table shows, as bench/alignment.py measured it.
ALIGNMENT_RESULTS = REPO / "bench" / "results" / "alignment.json"
# A small build for the builder's own tests (seconds, not minutes), validated every 20 steps.
SMALL = TinySpec(
    steps=40, max_steps=60, train_scenes=60, batch_size=8, validate_from=20, validate_every=20, validation_scenes=12
)
ANY_BAND = Band(min_pope_f1=0.0, chair_i=(0.0, 1.0), chair_s=(0.0, 1.0), max_empty_share=1.0)


@pytest.fixture(scope="session")
def base_metrics(base_policy: Path) -> dict[str, Any]:
    """The base policy on the held-out scenes of docs/training.md's table (as many as bench/alignment.py uses)."""
    model, processor = load_policy(str(base_policy))
    return evaluate_toyworld(model, processor, heldout_scenes(200))


def digest(folder: Path) -> str:
    return hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()


def test_build_is_deterministic_for_a_seed(tmp_path: Path) -> None:
    spec = TinySpec(steps=4, train_scenes=40, batch_size=8)
    build_toy_model(tmp_path / "a", spec)
    build_toy_model(tmp_path / "b", spec)
    assert digest(tmp_path / "a") == digest(tmp_path / "b")
    build_toy_model(tmp_path / "c", TinySpec(steps=4, train_scenes=40, batch_size=8, seed=1))
    assert digest(tmp_path / "c") != digest(tmp_path / "a")


def test_the_shipped_model_is_a_build_of_the_current_spec() -> None:
    """The files in testbed/tiny-base are the ones its manifest lists, built from this spec,
    and the checkpoint it kept was in band on the validation scenes."""
    spec = TinySpec()
    assert problems(SHIPPED, spec) == []
    manifest = read_manifest(SHIPPED)
    assert manifest["spec_hash"] == spec_hash(spec)
    assert manifest["files"] == file_digests(SHIPPED)
    assert {"model.safetensors", "config.json", "tokenizer.json", "processor_config.json"} <= set(manifest["files"])
    chosen = [row for row in manifest["validation"] if row["step"] == manifest["chosen_step"]]
    assert len(chosen) == 1 and chosen[0]["in_band"] and spec.band.misses(chosen[0]) == []
    assert sum((SHIPPED / name).stat().st_size for name in manifest["files"]) < 8 * 2**20


def test_a_changed_file_or_spec_is_not_the_shipped_build(tmp_path: Path) -> None:
    copy = tmp_path / "tiny-base"
    shutil.copytree(SHIPPED, copy)
    assert problems(copy, TinySpec()) == []
    assert problems(copy, TinySpec(steps=6001)) == [
        f"built from spec {spec_hash(TinySpec())[:12]}, not {spec_hash(TinySpec(steps=6001))[:12]}"
    ]
    with (copy / "tokenizer.json").open("a") as handle:
        handle.write(" ")
    assert problems(copy, TinySpec()) == ["tokenizer.json is changed"]
    (copy / "config.json").unlink()
    assert "config.json is missing" in problems(copy, TinySpec())


def test_a_build_of_the_shipped_spec_copies_the_shipped_files(tmp_path: Path) -> None:
    started = time.monotonic()
    manifest = build_toy_model(tmp_path / "copy")
    assert time.monotonic() - started < 10  # a copy, not a 10-minute build
    assert manifest == read_manifest(SHIPPED)
    assert file_digests(tmp_path / "copy") == file_digests(SHIPPED)
    assert [p.name for p in tmp_path.iterdir()] == ["copy"]  # no staging folder left


def test_a_build_keeps_its_latest_in_band_checkpoint(tmp_path: Path) -> None:
    """Validated every 20 steps, the build keeps its latest checkpoint in band, records every
    validation, stops at `steps` once one is in band, and the saved model measures what was
    recorded for it."""
    spec = dataclasses.replace(SMALL, band=ANY_BAND)
    manifest = build_toy_model(tmp_path / "m", spec, measure=evaluate_toyworld)
    assert [row["step"] for row in manifest["validation"]] == [20, 40]
    assert manifest["chosen_step"] == 40 and manifest["steps_trained"] == 40
    model, processor = load_policy(str(tmp_path / "m"))
    again = evaluate_toyworld(model, processor, validation_scenes(spec))
    for key in ("chair_i", "chair_s", "pope_f1", "empty_share"):
        assert again[key] == pytest.approx(manifest["validation"][-1][key], abs=1e-4), key
    assert problems(tmp_path / "m", spec) == []


def test_a_build_that_never_lands_in_band_fails_with_its_figures_and_writes_nothing(tmp_path: Path) -> None:
    """40 steps cannot see: every validation misses the real band, training goes on to
    max_steps, then the build stops with each validation's figures."""
    spec = SMALL
    with pytest.raises(OutOfBand) as raised:
        build_toy_model(tmp_path / "m", spec, measure=evaluate_toyworld)
    message = str(raised.value)
    assert "by step 60" in message and "POPE F1" in message
    assert [line.split()[0] for line in message.splitlines()[2:]] == ["20", "40", "60"]
    assert list(tmp_path.iterdir()) == []  # neither the model nor a staging folder


def test_the_base_figures_equal_the_readmes(base_metrics: dict[str, Any]) -> None:
    """Every machine measures the shipped model as docs/training.md's table reports it (the raw
    output of bench/alignment.py), within 0.005."""
    results = json.loads(ALIGNMENT_RESULTS.read_text())
    assert results["model_spec_hash"] == spec_hash(TinySpec()) and results["heldout"] == 200
    [base] = [row for row in results["rows"] if row["method"] == "base"]
    for key in ("chair_i", "chair_s", "pope_f1"):
        assert base_metrics[key] == pytest.approx(base[key], abs=0.005), key


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
    assert TinySpec().band.misses(base_metrics) == [], base_metrics["pope"]


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
