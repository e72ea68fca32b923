"""Held-out data as named datasets in a named vocabulary: imports name the dataset their
held-out rows join and check their facts against its vocabulary; a user registers a
vocabulary of their own and the evaluator reads answers through it; rounds record the
dataset they start with; the evaluator's output is echoed as it runs and its log kept
when it fails."""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from django.core.exceptions import ValidationError
from django.core.management import CommandError, call_command

from annotation.data.images import add_prompt
from annotation.labeling.rounds import create_round
from annotation.loop.evaluation import RlhfFailed, export_heldout, run_rlhf
from annotation.loop.generation import start_round
from annotation.models import Dataset, Prompt, Vocabulary
from contract.heldout import VOCABULARY_FILE, read_heldout
from tests.factories import make_image, png_bytes

pytestmark = pytest.mark.django_db


def manifest(tmp_path: Path, rows: list[dict[str, Any]], name: str = "rows.jsonl") -> dict[str, Any]:
    """A JSONL manifest of `rows` (each gets its own image) and its images folder."""
    images = tmp_path / "images"
    images.mkdir(exist_ok=True)
    lines = []
    for row in rows:
        index = row.pop("colour")
        (images / f"{index}.png").write_bytes(png_bytes((index * 20, 10, 10)))
        lines.append(json.dumps({"image": f"{index}.png", "prompt": "Describe it.", **row}))
    (tmp_path / name).write_text("\n".join(lines) + "\n")
    return {"manifest": tmp_path / name, "images": images}


def imported(files: dict[str, Any], **options: Any) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    call_command("import_prompts", str(files["manifest"]), images=files["images"], stdout=out, stderr=err, **options)
    return out.getvalue(), err.getvalue()


def refused(files: dict[str, Any], **options: Any) -> str:
    err = io.StringIO()
    with pytest.raises(CommandError) as failed:
        call_command("import_prompts", str(files["manifest"]), images=files["images"], stderr=err, **options)
    return f"{failed.value}\n{err.getvalue()}"


def test_an_import_names_its_dataset_and_checks_held_out_facts_against_its_vocabulary(tmp_path: Path) -> None:
    files = manifest(
        tmp_path,
        [
            {"colour": 1, "split": "heldout", "facts": {"classes": ["dog"]}},
            {"colour": 2, "split": "heldout", "facts": {"classes": ["dog", "unicorn"]}},
            {"colour": 3, "split": "train", "facts": {"classes": ["unicorn"]}},  # a training row is not scored
        ],
    )
    said = refused(files, dataset="pets")
    assert "row 2: classes outside the coco vocabulary: 'unicorn'" in said and "nothing was imported" in said
    assert not Dataset.objects.exists() and not Prompt.objects.exists()

    out, err = imported(files, dataset="pets", skip_bad=True)
    assert "imported 2 prompts" in out and "held-out prompts in dataset 'pets'" in out and "skipped row 2" in err
    pets = Dataset.objects.get(name="pets")
    assert pets.vocabulary == "coco"
    assert sorted(Prompt.objects.values_list("split", "dataset__name")) == [("heldout", "pets"), ("train", None)]

    # The same prompt into another dataset is a bad row, never moved or doubled.
    said = refused(files, dataset="other", skip_bad=False)
    assert "row 1: the prompt is already imported in held-out dataset 'pets', not 'other'" in said
    assert "row 3" not in said  # the training row is simply there already
    assert not Dataset.objects.filter(name="other").exists()
    # A re-run into its own dataset adds only what is new.
    out, _ = imported(files, dataset="pets", skip_bad=True)
    assert "imported 0 prompts" in out and "2 already imported" in out

    # A row naming another vocabulary than the dataset's; a dataset asked to change its
    # vocabulary; an unknown vocabulary; a name that is not a slug: each refused with why.
    other = manifest(
        tmp_path,
        [{"colour": 4, "split": "heldout", "facts": {"classes": ["box"], "vocabulary": "toyworld"}}],
        "toy.jsonl",
    )
    assert "facts name vocabulary 'toyworld', and the dataset's is 'coco'" in refused(other, dataset="pets")
    assert "dataset 'pets' names its objects in 'coco', not 'toyworld'" in refused(
        other, dataset="pets", vocabulary="toyworld"
    )
    assert "unknown vocabulary 'nope'" in refused(other, dataset="new", vocabulary="nope")
    assert "dataset name 'two words'" in refused(other, dataset="two words")
    # A new dataset takes the vocabulary its rows name.
    out, _ = imported(other, dataset="toys")
    assert Dataset.objects.get(name="toys").vocabulary == "toyworld"
    # Without a name, held-out rows join "heldout".
    out, _ = imported(manifest(tmp_path, [{"colour": 5, "split": "heldout"}], "plain.jsonl"))
    assert "held-out prompts in dataset 'heldout'" in out


class Canned:
    """Answers as a policy would, fixed: every description names a kitten and a parrot,
    every POPE probe is answered no. It stands for the policy only, so that the figures
    the evaluator computes through a user's vocabulary are known exactly."""

    name = "canned"

    def answer(self, requests: Sequence[Any]) -> list[str]:
        return ["A kitten sits by a parrot." if r.prompt == "Describe it." else "No." for r in requests]


def test_a_users_vocabulary_is_registered_checked_at_import_and_read_by_the_evaluator(tmp_path: Path) -> None:
    from rlhf.hallucination import evaluate
    from rlhf.vocabularies import vocabulary

    def register(name: str, data: Any, *options: str) -> str:
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(data) if not isinstance(data, str) else data)
        out = io.StringIO()
        call_command("register_vocabulary", name, str(path), *options, stdout=out)
        return out.getvalue()

    for name, data, reason in (
        ("coco", {"cat": []}, "'coco' is built in"),
        ("pets", {"cat": ["kitty"], "dog": ["Kitty"]}, "'kitty' names both 'cat' and 'dog'"),
        ("pets", {}, "at least one class"),
        ("pets", {"cat": [""]}, "non-empty text"),
        ("pets", "{oops", "cannot read"),
        ("two words", ["cat"], "vocabulary name 'two words'"),
    ):
        with pytest.raises(CommandError, match=reason):
            register(name, data)
    assert not Vocabulary.objects.exists()
    assert "registered vocabulary pets: 3 classes" in register("pets", {"cat": ["kitten"], "parrot": [], "fish": []})
    with pytest.raises(CommandError, match="exists; --replace"):
        register("pets", ["cat"])

    files = manifest(
        tmp_path,
        [
            {"colour": 1, "split": "heldout", "facts": {"classes": ["cat"]}},
            {"colour": 2, "split": "heldout", "facts": {"classes": ["dog"]}},
        ],
    )
    assert "row 2: classes outside the pets vocabulary: 'dog'" in refused(files, dataset="home", vocabulary="pets")
    imported(files, dataset="home", vocabulary="pets", skip_bad=True)
    with pytest.raises(CommandError, match="used by dataset\\(s\\) home"):
        register("pets", ["cat"], "--replace")

    manifest_ = export_heldout(tmp_path / "heldout", Dataset.objects.get(name="home"))
    assert (manifest_["dataset"], manifest_["vocabulary"], manifest_["items"]) == ("home", "pets", 1)
    assert json.loads((tmp_path / "heldout" / VOCABULARY_FILE).read_text())["classes"][0] == ["cat", ["kitten"]]
    heldout = read_heldout(tmp_path / "heldout")
    pets = vocabulary(heldout.vocabulary, heldout.classes)
    assert [m.cls for m in pets.reader.mentions("Two kittens and a parrot, no fishes.")] == ["cat", "parrot", "fish"]
    assert pets.order == ("cat", "parrot", "fish")

    result = evaluate(heldout, Canned(), bootstrap=20)
    # One description: "kitten" is the cat that is there, "parrot" is not: CHAIR_i 1/2.
    assert result.metrics["chair_i"] == pytest.approx(0.5) and result.metrics["chair_s"] == 1.0
    assert (result.dataset, result.items, result.vocabulary) == ("home", 1, "pets")
    # POPE asks about the vocabulary's classes: "cat" (there, answered no) and absent ones.
    probed = {q for split in result.records["pope"].values() for q in map(tuple, split)}
    assert probed <= {(1, 0), (0, 0)} and (1, 0) in probed


def test_rounds_record_the_held_out_dataset_they_start_with() -> None:
    first = create_round()
    assert first.heldout is None  # nothing to evaluate on yet
    coco = Dataset.objects.create(name="coco-val", vocabulary="coco")
    add_prompt(make_image(), "Describe it.", split="heldout", dataset=coco)
    second = create_round()
    assert second.heldout == coco  # the only one there is
    other = Dataset.objects.create(name="mine", vocabulary="coco")
    add_prompt(make_image((9, 9, 9)), "Describe it.", split="heldout", dataset=other)
    assert create_round().heldout == coco  # the previous round's
    assert create_round(heldout=other).heldout == other
    prompts = [add_prompt(make_image((7, 7, 7)), "Describe it.")]
    with pytest.raises(ValidationError, match=r"no held-out dataset 'nope'; datasets: coco-val \(1 prompts\), mine"):
        start_round(policy_version="p", prompts=prompts, task_kinds=["rank"], heldout="nope")
    with pytest.raises(ValidationError, match="only a held-out prompt"):
        add_prompt(make_image((8, 8, 8)), "Describe it.", split="train", dataset=coco)


def test_the_evaluators_output_is_echoed_as_it_runs_and_its_log_kept_when_it_fails(tmp_path: Path) -> None:
    log, echoed = tmp_path / "logs" / "evaluate.log", io.StringIO()
    missing = tmp_path / "no-such-set"
    with pytest.raises(RlhfFailed) as failed:
        run_rlhf(["evaluate", "--data", str(missing), "--model", "unused"], log, echo=echoed)
    assert str(log) in str(failed.value) and failed.value.returncode != 0
    assert f"{missing} is not a held-out folder" in log.read_text()
    assert f"{missing} is not a held-out folder" in echoed.getvalue()


@pytest.mark.django_db(transaction=True)
def test_held_out_prompts_made_before_datasets_had_names_join_one_dataset_per_vocabulary() -> None:
    from django.db import connection
    from django.db.migrations.executor import MigrationExecutor

    before = [("annotation", "0012_job_claim_token_task_in_open_round")]
    after = [("annotation", "0013_heldout_datasets_vocabularies")]
    executor = MigrationExecutor(connection)
    executor.migrate(before)
    try:
        old = executor.loader.project_state(before).apps
        image, prompt, round_ = (old.get_model("annotation", n) for n in ("Image", "Prompt", "Round"))
        facts = ({"classes": ["dog"]}, {"classes": ["box"], "vocabulary": "toyworld"}, {"vocabulary": "coco"})
        images = [
            image.objects.create(sha256=str(i) * 64, file=f"{i}.png", width=1, height=1, facts=f)
            for i, f in enumerate(facts)
        ]
        for one in images:
            prompt.objects.create(image=one, text="Describe it.", split="heldout")
        prompt.objects.create(image=images[0], text="Train on it.", split="train")
        round_.objects.create(number=1)
        executor = MigrationExecutor(connection)
        executor.migrate(after)
        new = executor.loader.project_state(after).apps
        named = new.get_model("annotation", "Prompt").objects.order_by("pk").values_list("split", "dataset__name")
        assert list(named) == [("heldout", "coco"), ("heldout", "toyworld"), ("heldout", "coco"), ("train", None)]
        datasets = new.get_model("annotation", "Dataset").objects.values_list("name", "vocabulary")
        assert sorted(datasets) == [("coco", "coco"), ("toyworld", "toyworld")]
        assert new.get_model("annotation", "Round").objects.get().heldout_id is None  # two: none chosen for it
    finally:
        executor = MigrationExecutor(connection)
        executor.migrate(executor.loader.graph.leaf_nodes())


def test_a_versions_evaluation_recorded_on_the_same_set_and_request_is_reused(tmp_path: Path, settings: Any) -> None:
    from annotation.loop.evaluation import evaluate_version, evaluation_request, recorded
    from models.registry import Registry

    settings.FACTLOOP_MODEL_DIR = str(tmp_path / "models")
    settings.FACTLOOP_VLLM_URL = "http://127.0.0.1:9"  # nothing answers there: a reuse asks nothing
    registry = Registry(settings.FACTLOOP_MODEL_DIR)
    registry.register("base-v", base_model="some/base")
    call_command("import_toyworld", scenes=3, stdout=io.StringIO())
    toyworld = Dataset.objects.get(name="toyworld")
    whole = export_heldout(tmp_path / "whole", toyworld)
    fewer = export_heldout(tmp_path / "fewer", toyworld, limit=2)
    request = evaluation_request(registry, "base-v", None)
    kept = {"policy": "base-v", "heldout_digest": whole["digest"], "metrics": {"chair_i": 0.25}, "request": request}
    registry.record_evaluation("base-v", kept)

    result = evaluate_version("base-v", tmp_path / "whole", tmp_path / "eval.json", log=tmp_path / "log", reuse=True)
    assert result["metrics"] == {"chair_i": 0.25} and result["reused"] is True and not (tmp_path / "log").exists()
    # Another held-out set, or answers a newer reward model would score: measured again.
    assert recorded(registry, "base-v", fewer["digest"], request) is None
    registry.register("rm-1", base_model="some/base", kind="reward")
    assert recorded(registry, "base-v", whole["digest"], evaluation_request(registry, "base-v", None)) is None
