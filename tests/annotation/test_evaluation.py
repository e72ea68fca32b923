"""Evaluation on the database's held-out prompts: the toy world imported as a dataset and
scored through a real vLLM server gives the in-process toy evaluator's figures; results are
kept on the version and drawn with the base as round 0; COCO annotations become prompts
with facts; bad input to each command is refused with the reason and writes nothing."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from annotation.loop.evaluation import export_heldout
from annotation.models import Dataset, Image, Prompt
from contract.heldout import read_heldout
from models.registry import Registry
from tests.factories import png_bytes

pytestmark = pytest.mark.django_db

SCENES = 40


@pytest.fixture
def registry(settings: Any, tmp_path: Path, base_policy: Path) -> Registry:
    settings.FACTLOOP_MODEL_DIR = str(tmp_path / "models")
    registry = Registry(settings.FACTLOOP_MODEL_DIR)
    registry.register("tiny-base", base_model=str(base_policy))
    return registry


@pytest.mark.slow
@pytest.mark.serving
def test_the_database_evaluator_gives_the_toy_evaluators_figures(
    registry: Registry, base_policy: Path, vllm_server: Any, settings: Any, tmp_path: Path, admin_client: Any
) -> None:
    """The same scenes, prompts, POPE seed and vocabulary order: through vLLM (greedy) the
    figures are the in-process transformers evaluator's, up to the few answers in which
    the two runtimes' floating point picks another token."""
    from rlhf.common import load_policy
    from rlhf.scene_eval import evaluate_toyworld, heldout_scenes

    settings.FACTLOOP_VLLM_URL = vllm_server.url
    call_command("import_toyworld", scenes=SCENES, stdout=io.StringIO())
    call_command("import_toyworld", scenes=SCENES, stdout=io.StringIO())  # again: nothing duplicated
    assert Prompt.objects.filter(split="heldout").count() == SCENES
    out = tmp_path / "evaluation.json"
    stdout, stderr = io.StringIO(), io.StringIO()
    call_command("evaluate", version="tiny-base", out=out, stdout=stdout, stderr=stderr)
    served = json.loads(out.read_text())
    summary = json.loads(stdout.getvalue())
    assert summary["metrics"] == served["metrics"]
    # The summary and the result name the dataset, its item count and digest; the
    # evaluator's progress came through as it ran.
    assert summary["heldout"]["dataset"] == served["dataset"] == "toyworld"
    assert summary["heldout"]["items"] == served["items"] == SCENES
    assert summary["heldout"]["digest"] == served["heldout_digest"]
    assert f"dataset toyworld ({SCENES} items, digest {served['heldout_digest'][:12]})" in stderr.getvalue()
    assert "answers from" in stderr.getvalue()

    model, processor = load_policy(str(base_policy))
    local = evaluate_toyworld(model, processor, heldout_scenes(SCENES))
    assert served["settings"]["items"] == SCENES and served["vocabulary"] == "toyworld"
    assert len(served["records"]["pope"]["random"]) == local["pope"]["random"]["questions"]
    # Coverage too: the database's held-out images carry the scenes' classes as their objects.
    for key in ("chair_i", "chair_s", "pope_f1", "coverage"):
        assert served["metrics"][key] == pytest.approx(local[key], abs=0.03), (key, served["metrics"], local)
        low, high = served["intervals"][key]
        assert low <= served["metrics"][key] <= high
    low, high = served["intervals"]["chair_s"]
    assert 0 < low < high < 1  # some descriptions hallucinate, not all: the interval has a width
    assert served["metrics"]["mean_words"] == pytest.approx(local["mean_words"], rel=0.05)

    # Kept on the version, and drawn as round 0 of the per-round plot.
    [kept] = registry.evaluations("tiny-base")
    assert (
        kept["metrics"] == served["metrics"]
        and registry.latest_metrics("tiny-base")["chair_i"] == kept["metrics"]["chair_i"]
    )
    page = admin_client.get("/admin/annotation/round/metrics/").content.decode()
    assert "tiny-base" in page and "data:image/svg+xml;base64," in page


@pytest.mark.slow
@pytest.mark.serving
def test_an_adapter_is_evaluated_under_a_temporary_name_and_unloaded(
    registry: Registry, adapters: dict[str, Path], vllm_server: Any, settings: Any, base_policy: Path
) -> None:
    from models.serving import ServingClient

    settings.FACTLOOP_VLLM_URL = vllm_server.url
    registry.register("tiny-a", base_model=str(base_policy), adapter_dir=adapters["a"], parent="tiny-base")
    call_command("import_toyworld", scenes=8, stdout=io.StringIO())
    with ServingClient(vllm_server.url) as client:
        before = set(client.models())
        call_command("evaluate", version="tiny-a", stdout=io.StringIO(), stderr=io.StringIO())
        call_command("evaluate", version="tiny-base", stdout=io.StringIO(), stderr=io.StringIO())
        assert set(client.models()) == before  # the temporary adapter is gone
    adapted, base = registry.evaluations("tiny-a")[-1], registry.evaluations("tiny-base")[-1]
    assert adapted["heldout_digest"] == base["heldout_digest"]
    # POPE's protocol through the server: 3 present and 3 absent objects per image with at
    # least 3, per split, and nothing else asked; the summary says it is not comparable.
    stdout, stderr = io.StringIO(), io.StringIO()
    call_command("evaluate", version="tiny-base", protocol="pope", stdout=stdout, stderr=stderr)
    pope = registry.evaluations("tiny-base")[-1]
    summary = json.loads(stdout.getvalue())["protocol"]
    objects = [set(p.image.facts["classes"]) for p in Prompt.objects.filter(split="heldout")]
    eligible = [present for present in objects if len(present) >= 3]
    assert summary == {"name": "pope", "pope_images": len(eligible), "describe_items": 0, "comparable": False}
    assert eligible and "not comparable with published pope figures" in stderr.getvalue()
    assert pope["settings"]["protocol"] == "pope" and pope["records"]["describe"] == []
    # The toy world has few classes: an image that holds most of them has fewer than 3 absent.
    known = set().union(*eligible)
    absent = sum(min(3, len(known - present)) for present in eligible)
    for split in ("random", "popular", "adversarial"):
        labels = [label for label, _ in pope["records"]["pope"][split]]
        assert labels.count(1) == 3 * len(eligible) and labels.count(0) == absent
    # A recorded evaluation is reused only for the protocol it followed.
    from annotation.loop.evaluation import evaluation_request, recorded

    request = evaluation_request(registry, "tiny-base", registry.adapter_path("tiny-base"))
    assert recorded(registry, "tiny-base", pope["heldout_digest"], request, protocol="pope") == pope
    assert recorded(registry, "tiny-base", pope["heldout_digest"], request) == base
    # Kept beside FactLoop's evaluation of the same set, which still gives the round's figures.
    assert len(registry.evaluations("tiny-base")) == 2
    assert registry.latest_metrics("tiny-base")["chair_i"] == base["metrics"]["chair_i"]
    # The random adapter changes what the model says: the adapter was in use.
    assert [e["response"] for e in adapted["examples"]] != [e["response"] for e in base["examples"]]

    # A version built on another base is refused by evaluation, deployment and generation
    # alike, with both names, before anything is asked of the server.
    from annotation.loop.deployment import DeployRefused, deploy_version
    from annotation.loop.generation import served_model
    from annotation.rules.errors import Invalid
    from tests.factories import make_generation_round

    registry.register("elsewhere", base_model="someone/another-model", adapter_dir=adapters["b"])
    both = rf"serves '{base_policy}' as its base, but version 'elsewhere' is built on 'someone/another-model'"
    with pytest.raises(CommandError, match=both):
        call_command("evaluate", version="elsewhere", stdout=io.StringIO(), stderr=io.StringIO())
    with pytest.raises(DeployRefused, match=both):
        deploy_version("elsewhere", registry=registry)
    round_ = make_generation_round("elsewhere", prompts=1)
    with pytest.raises(Invalid, match=both), ServingClient(vllm_server.url) as client:
        served_model(round_, registry, client)
    assert registry.evaluations("elsewhere") == [] and "elsewhere" not in set(ServingClient(vllm_server.url).models())

    # Serving an adapter version asks the server what it serves once: the base's checkpoint
    # and the adapters loaded come from one /v1/models.
    from models.server import serve_version

    class Counting(ServingClient):
        def _request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
            asked.append(f"{method} {path}")
            return super()._request(method, path, body)

    with Counting(vllm_server.url) as client:
        for loaded in (False, True):
            asked: list[str] = []
            assert serve_version(client, registry, "tiny-a") == "tiny-a"
            assert asked == ["GET /v1/models"] + ([] if loaded else ["POST /v1/load_lora_adapter"])
        client.unload_adapter("tiny-a")


def test_bad_requests_to_evaluate_are_refused(registry: Registry, settings: Any) -> None:
    with pytest.raises(CommandError, match="no model version 'nope'"):
        call_command("evaluate", version="nope")
    with pytest.raises(CommandError, match="no held-out prompts to evaluate on"):
        call_command("evaluate", version="tiny-base")
    with pytest.raises(CommandError, match="--limit must be at least 1"):
        call_command("evaluate", version="tiny-base", limit=0)
    assert registry.evaluations("tiny-base") == []


def coco_files(tmp_path: Path, *, category_id: int = 18, missing_image: bool = False) -> dict[str, Path]:
    images = tmp_path / "val2014"
    images.mkdir()
    for index in (1, 2):
        if not (missing_image and index == 2):
            (images / f"COCO_val2014_{index:012d}.png").write_bytes(png_bytes((index * 60, 30, 90)))
    instances = {
        "images": [{"id": i, "file_name": f"COCO_val2014_{i:012d}.png", "width": 8, "height": 8} for i in (1, 2)],
        "categories": [{"id": 1, "name": "person"}, {"id": 18, "name": "dog"}, {"id": 62, "name": "chair"}],
        "annotations": [
            {"id": 10, "image_id": 1, "category_id": 1},
            {"id": 11, "image_id": 1, "category_id": 18},
            {"id": 12, "image_id": 2, "category_id": category_id},
        ],
    }
    captions = {
        "images": instances["images"],
        "annotations": [
            {"id": 20, "image_id": 1, "caption": "A man walks his dog past a bench."},
            {"id": 21, "image_id": 2, "caption": "An empty chair."},
        ],
    }
    (tmp_path / "instances.json").write_text(json.dumps(instances))
    (tmp_path / "captions.json").write_text(json.dumps(captions))
    return {"instances": tmp_path / "instances.json", "captions": tmp_path / "captions.json", "images": images}


def test_coco_annotations_become_prompts_with_facts(tmp_path: Path) -> None:
    files = coco_files(tmp_path)
    call_command("import_coco", **files, stdout=io.StringIO())
    prompts = list(Prompt.objects.order_by("pk"))
    assert [p.split for p in prompts] == ["heldout", "heldout"] and prompts[0].text == "Describe this image in detail."
    facts = prompts[0].image.facts
    # The classes in the order the annotations first name them (POPE asks an image's first ones).
    assert facts["classes"] == ["person", "dog"] and facts["vocabulary"] == "coco"
    assert facts["captions"] == ["A man walks his dog past a bench."]

    dataset = Dataset.objects.get(name="coco")
    heldout = read_heldout(tmp_path / "out") if export_heldout(tmp_path / "out", dataset) else None
    assert heldout is not None and heldout.vocabulary == "coco" and len(heldout.items) == 2
    assert heldout.dataset == "coco" and all(p.dataset == dataset for p in prompts)
    first = heldout.items[0]
    assert (first.kind, first.objects, list(first.captions)) == ("describe", ("person", "dog"), facts["captions"])
    assert heldout.image_bytes(first) == prompts[0].image.file.open("rb").read()

    # Run again: nothing new, said so, exit 0; a limit below 1 is refused, never "everything".
    again = io.StringIO()
    call_command("import_coco", **files, stdout=again)
    assert "imported 0 prompts" in again.getvalue() and "2 already imported" in again.getvalue()
    for limit in (0, -5):
        with pytest.raises(CommandError, match="--limit must be at least 1"):
            call_command("import_coco", **files, limit=limit, stdout=io.StringIO())
    assert Prompt.objects.count() == 2


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"category_id": 999}, "unknown category id 999"),
        ({"missing_image": True}, "row 2"),
    ],
)
def test_bad_coco_input_is_refused_and_nothing_is_written(tmp_path: Path, change: dict[str, Any], reason: str) -> None:
    files = coco_files(tmp_path, **change)
    errors = io.StringIO()
    with pytest.raises(CommandError, match="nothing was imported"):
        call_command("import_coco", **files, stdout=io.StringIO(), stderr=errors)
    assert reason in errors.getvalue()
    assert not Prompt.objects.exists() and not Image.objects.exists()


def test_a_coco_category_outside_cocos_80_and_unreadable_files_are_refused(tmp_path: Path) -> None:
    files = coco_files(tmp_path)
    data = json.loads(files["instances"].read_text())
    data["categories"].append({"id": 99, "name": "unicorn"})
    data["annotations"].append({"id": 13, "image_id": 1, "category_id": 99})
    files["instances"].write_text(json.dumps(data))
    errors = io.StringIO()
    with pytest.raises(CommandError, match="nothing was imported"):
        call_command("import_coco", **files, stdout=io.StringIO(), stderr=errors)
    assert "('unicorn') is not one of COCO's 80 classes" in errors.getvalue()
    files["instances"].write_text("{not json")
    with pytest.raises(CommandError, match="cannot read instances"):
        call_command("import_coco", **files)
    files["instances"].write_text(json.dumps({"images": []}))
    with pytest.raises(CommandError, match="no 'annotations' list"):
        call_command("import_coco", **files)
    assert not Prompt.objects.exists() and not Image.objects.exists()


def test_object_halbench_prompts_come_from_rlhf_vs_question_file_or_in_turn(tmp_path: Path) -> None:
    from contract.protocols import OBJECT_HALBENCH_PROMPTS

    files = coco_files(tmp_path)
    # RLHF-V's question file: its images only, in its order, each with its question.
    questions = tmp_path / "obj_halbench_300_with_image.jsonl"
    questions.write_text(json.dumps({"image_id": 2, "question": OBJECT_HALBENCH_PROMPTS[5]}) + "\n")
    call_command("import_coco", **files, questions=questions, dataset="halbench", stdout=io.StringIO())
    [prompt] = Prompt.objects.filter(dataset__name="halbench")
    assert prompt.text == OBJECT_HALBENCH_PROMPTS[5] and prompt.image.facts["coco_id"] == 2
    # Without the file, the 8 prompts in turn.
    call_command("import_coco", **files, object_halbench=True, dataset="turns", stdout=io.StringIO())
    texts = list(Prompt.objects.filter(dataset__name="turns").order_by("pk").values_list("text", flat=True))
    assert texts == list(OBJECT_HALBENCH_PROMPTS[:2])
    # A question file naming an image the instances lack, or a line without its question,
    # is refused before anything is written.
    for line, reason in (
        ({"image_id": 7, "question": "Describe."}, "1 image ids are not in"),
        ({"image_id": 1}, 'a line is {"image_id": ..., "question": "..."}'),
    ):
        questions.write_text(json.dumps(line) + "\n")
        with pytest.raises(CommandError, match=reason):
            call_command("import_coco", **files, questions=questions, dataset="bad", stdout=io.StringIO())
    assert not Dataset.objects.filter(name="bad").exists()
    with pytest.raises(CommandError, match="not allowed with argument"):
        call_command("import_coco", "--object-halbench", "--questions", str(questions), *_paths(files))


def _paths(files: dict[str, Path]) -> list[str]:
    return [f"--{key}={path}" for key, path in files.items()]


def test_held_out_questions_with_answers_are_exported_as_questions(tmp_path: Path) -> None:
    call_command("import_toyworld", scenes=6, questions=True, stdout=io.StringIO())
    dataset = Dataset.objects.get(name="toyworld")
    heldout = read_heldout(tmp_path / "h") if export_heldout(tmp_path / "h", dataset) else None
    assert heldout is not None
    kinds = [item.kind for item in heldout.items]
    assert kinds.count("describe") == 6 and kinds.count("question") >= 4
    assert all(item.answer for item in heldout.items if item.kind == "question")
    assert all(set(item.objects) and item.captions for item in heldout.items)


def test_an_evaluation_recorded_before_coverage_is_measured_again(registry: Registry) -> None:
    """The gate compares coverage on the same items, so a current policy's evaluation whose
    descriptions lack coverage's counts is not reused."""
    from annotation.loop.evaluation import evaluation_request, recorded

    registry.register("old", base_model="base")
    request = evaluation_request(registry, "old", registry.adapter_path("old"))
    kept = {"heldout_digest": "d1", "request": request, "metrics": {"chair_i": 0.1}}
    registry.record_evaluation("old", kept | {"records": {"describe": [[2, 1, 10]]}})
    assert recorded(registry, "old", "d1", request) is None
    registry.record_evaluation("old", kept | {"records": {"describe": [[2, 1, 10, 3, 1]]}})
    found = recorded(registry, "old", "d1", request)
    assert found is not None and found["records"]["describe"] == [[2, 1, 10, 3, 1]]
    assert recorded(registry, "old", "other", request) is None
