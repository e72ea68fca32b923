"""Evaluation datasets into the database, as prompts with known facts.

- `coco_rows` reads COCO-format annotations (an `instances_*.json`, optionally a
  `captions_*.json`, and the images folder): one description prompt per image, its facts
  the COCO classes of its object annotations and its reference captions, in the "coco"
  vocabulary (`questions` or `prompts` give the images Object HalBench's prompts). Object
  HalBench and POPE are built from exactly these (RLHF-V evaluates
  Object HalBench on COCO val2014 images with their instance and caption annotations; POPE
  samples its probes from COCO's instance annotations). The rows go through
  importers.import_rows, so each is checked as `import_prompts` checks its rows, and an
  image whose annotation names an unknown category is a bad row.
- `import_amber` reads AMBER's generative task (Wang et al., 2023, arXiv:2311.07397; the
  files of its repository, junyangwang0410/AMBER: data/annotations.json,
  data/query/query_generative.json, data/relation.json, data/safe_words.txt, and its
  images): one description prompt per image, its facts the objects AMBER annotates as
  present (`classes`) and as likely hallucinations (`absent`), in a vocabulary of AMBER's
  annotated objects registered with its associations and safe words (what the "amber"
  protocol scores by).
- `import_toyworld` stores the synthetic world's held-out scenes (the ones
  rlhf.scene_eval.evaluate_toyworld renders) as description prompts in the "toyworld"
  vocabulary: the same evaluator then scores the toy world as any other dataset.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from django.db import transaction

from annotation.data.images import add_image, add_prompt, atomic_with_files
from annotation.data.importers import ImportReport, Problem, import_rows
from annotation.models import Dataset, Prompt
from annotation.rules.datasets import dataset_for_import, register_vocabulary
from annotation.rules.errors import Invalid, Refused
from contract.heldout import COCO_CLASSES, Associations, Classes, HeldoutError, parse_associations, parse_vocabulary
from testbed.toyworld import Question, Scene, heldout_scenes
from testbed.toyworld.render import png_of_scene
from testbed.toyworld.world import NUMBER_WORDS, make_question

DESCRIBE_PROMPT = "Describe this image in detail."  # Object HalBench's kind of instruction
TOY_DESCRIBE = "Describe the image."  # what evaluate_toyworld asks
TOY_QUESTION_KINDS = ("count", "exist", "color")


class DatasetError(ValueError):
    """A dataset file that cannot be read as the format it claims; the message says why."""


def _json(path: Path, what: str) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise DatasetError(f"cannot read {what} {path}: {error}") from None
    if not isinstance(data, dict):
        raise DatasetError(f"{path} is not a COCO {what} file (a JSON object)")
    for key in ("images", "annotations"):
        if not isinstance(data.get(key), list):
            raise DatasetError(f"{path} is not a COCO {what} file: no {key!r} list")
    return data


def coco_rows(
    instances: Path,
    captions: Path | None,
    *,
    split: str = Prompt.Split.HELDOUT,
    prompt: str = DESCRIBE_PROMPT,
    limit: int | None = None,
    questions: Path | None = None,
    prompts: tuple[str, ...] = (),
) -> Iterator[tuple[int, dict[str, Any] | str]]:
    """(row number, row or the reason it is bad) per image of the instances file, in its
    order: the image's file name, the prompt, and facts {classes (in the order the
    annotations first name them), captions, vocabulary}. With `questions` (JSON Lines of
    {"image_id", "question"}, as RLHF-V's Object HalBench file), only those images, in that
    file's order, each with its question; with `prompts`, the i-th image gets prompt i
    modulo their number."""
    if limit is not None and limit < 1:
        raise DatasetError(f"--limit must be at least 1 (got {limit}); leave it out for every image")
    data = _json(instances, "instances")
    if not isinstance(data.get("categories"), list):
        raise DatasetError(f"{instances} is not a COCO instances file: no 'categories' list")
    categories: dict[int, str] = {}
    for category in data["categories"]:
        if not isinstance(category, dict) or not isinstance(category.get("id"), int):
            raise DatasetError(f"{instances}: a category without an integer id: {str(category)[:200]}")
        categories[category["id"]] = str(category.get("name", ""))
    names: dict[Any, list[str]] = {}
    bad: dict[Any, list[str]] = {}
    for number, annotation in enumerate(data["annotations"], start=1):
        if not isinstance(annotation, dict) or "image_id" not in annotation:
            raise DatasetError(f"{instances}: annotation {number} has no image_id")
        image_id, category_id = annotation["image_id"], annotation.get("category_id")
        name = categories.get(category_id) if isinstance(category_id, int) else None
        if name is None:
            bad.setdefault(image_id, []).append(
                f"annotation {annotation.get('id', number)}: unknown category id {category_id!r}"
            )
        elif name not in COCO_CLASSES:
            bad.setdefault(image_id, []).append(f"category {category_id} ({name!r}) is not one of COCO's 80 classes")
        else:
            names.setdefault(image_id, []).append(name)
    texts: dict[Any, list[str]] = {}
    if captions is not None:
        for annotation in _json(captions, "captions")["annotations"]:
            if isinstance(annotation, dict) and isinstance(annotation.get("caption"), str):
                texts.setdefault(annotation.get("image_id"), []).append(annotation["caption"].strip())
    images = data["images"]
    asked = _questions(questions) if questions is not None else None
    if asked is not None:
        by_id = {image.get("id"): image for image in images if isinstance(image, dict)}
        missing = [image_id for image_id, _ in asked if image_id not in by_id]
        if missing:
            shown = ", ".join(str(m) for m in missing[:5])
            raise DatasetError(f"{questions}: {len(missing)} image ids are not in {instances} (first: {shown})")
        images = [by_id[image_id] for image_id, _ in asked]
    images = images[:limit] if limit is not None else images
    for number, image in enumerate(images, start=1):
        if not isinstance(image, dict) or not isinstance(image.get("file_name"), str) or "id" not in image:
            yield number, "an image entry needs an id and a file_name"
            continue
        image_id = image["id"]
        if image_id in bad:
            yield number, f"image {image_id}: " + "; ".join(bad[image_id][:3])
            continue
        facts = {
            "classes": list(dict.fromkeys(names.get(image_id, []))),
            "captions": texts.get(image_id, []),
            "vocabulary": "coco",
            "coco_id": image_id,
        }
        text = (
            asked[number - 1][1] if asked is not None else prompts[(number - 1) % len(prompts)] if prompts else prompt
        )
        row = {"image": image["file_name"], "prompt": text, "split": split, "facts": facts}
        yield number, {**row, "meta": {"kind": "describe"}, "source": f"coco:{image_id}"}


def _questions(path: Path) -> list[tuple[Any, str]]:
    """(image id, question) per line of a JSON Lines file, as RLHF-V's Object HalBench
    question file (eval/data/obj_halbench_300_with_image.jsonl) gives them."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise DatasetError(f"cannot read the questions {path}: {error}") from None
    found: list[tuple[Any, str]] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as error:
            raise DatasetError(f"{path}:{number}: not JSON ({error})") from None
        if not isinstance(row, dict) or "image_id" not in row or not str(row.get("question") or "").strip():
            raise DatasetError(f'{path}:{number}: a line is {{"image_id": ..., "question": "..."}}')
        image_id = row["image_id"]
        found.append((int(image_id) if isinstance(image_id, str) and image_id.isdigit() else image_id, row["question"]))
    if not found:
        raise DatasetError(f"{path} holds no questions")
    return found


def import_coco(
    instances: Path,
    captions: Path | None,
    images: Path,
    *,
    split: str = Prompt.Split.HELDOUT,
    prompt: str = DESCRIBE_PROMPT,
    limit: int | None = None,
    skip_bad: bool = False,
    dataset: str = "coco",
    questions: Path | None = None,
    prompts: tuple[str, ...] = (),
) -> ImportReport:
    """Import COCO images as prompts with facts (held-out ones into `dataset`, in the "coco"
    vocabulary); all or nothing unless `skip_bad` (importers.ImportFailed names the bad rows).
    `questions` and `prompts` as coco_rows takes them."""
    if not Path(images).is_dir():
        raise DatasetError(f"{images} is not a folder")
    if not prompt.strip():
        raise DatasetError("the prompt is empty")
    rows = list(
        coco_rows(instances, captions, split=split, prompt=prompt, limit=limit, questions=questions, prompts=prompts)
    )
    return import_rows(rows, Path(images), skip_bad=skip_bad, dataset=dataset, vocabulary="coco")


def _json_any(path: Path, what: str) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise DatasetError(f"cannot read {what} {path}: {error}") from None


def amber_reading(relation: Path, safe_words: Path) -> tuple[Classes, Associations]:
    """AMBER's annotated objects as a vocabulary (the associations' keys in their order, each
    a class without synonyms: the objects its truth and hallu lists name; the words only
    associated are read by AMBER's scorer alone, as "people", the plural the standard
    reading gives "person", would otherwise name two classes) and its associations and safe
    words."""
    try:
        lines = Path(safe_words).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise DatasetError(f"cannot read the safe words {safe_words}: {error}") from None
    try:
        associations = parse_associations(_json_any(relation, "AMBER's relations"), [w for w in lines if w.strip()])
    except HeldoutError as error:
        raise DatasetError(f"{relation}: {error}") from None
    try:
        classes = parse_vocabulary([[word, []] for word in associations.words])
    except HeldoutError as error:
        raise DatasetError(f"{relation}: {error}") from None
    return classes, associations


def amber_rows(
    annotations: Path, queries: Path, associations: Associations, *, limit: int | None = None
) -> Iterator[tuple[int, dict[str, Any] | str]]:
    """(row number, row or the reason it is bad) per query of AMBER's generative query file,
    in its order: the image, the query, and facts {classes: AMBER's `truth`, absent: its
    `hallu`, amber_id}."""
    if limit is not None and limit < 1:
        raise DatasetError(f"--limit must be at least 1 (got {limit}); leave it out for every image")
    annotated = _json_any(annotations, "AMBER's annotations")
    asked = _json_any(queries, "AMBER's queries")
    if not isinstance(annotated, list) or not isinstance(asked, list):
        raise DatasetError(f"{annotations} and {queries} are AMBER's lists (data/annotations.json, data/query/...)")
    by_id = {row.get("id"): row for row in annotated if isinstance(row, dict)}
    for number, query in enumerate(asked[:limit] if limit else asked, start=1):
        if not isinstance(query, dict) or not all(isinstance(query.get(key), str) for key in ("image", "query")):
            yield number, 'a query is {"id": N, "image": "AMBER_N.jpg", "query": "..."}'
            continue
        truth = by_id.get(query.get("id"))
        if truth is None or truth.get("type") != "generative":
            yield number, f"query {query.get('id')!r}: no generative annotation with that id in {annotations}"
            continue
        given = [truth.get(key) for key in ("truth", "hallu")]
        if not all(isinstance(names, list) and all(isinstance(n, str) for n in names) for names in given):
            yield number, f"annotation {query['id']}: truth and hallu must be lists of object words"
            continue
        lists: list[list[str]] = [list(names or []) for names in given]
        if unknown := sorted({n for names in lists for n in names} - set(associations.words)):
            yield number, f"annotation {query['id']}: objects without associations: {', '.join(unknown[:5])}"
            continue
        facts = {"classes": lists[0], "absent": lists[1], "amber_id": query["id"]}
        row = {"image": query["image"], "prompt": query["query"], "split": Prompt.Split.HELDOUT, "facts": facts}
        yield number, {**row, "meta": {"kind": "describe"}, "source": f"amber:{query['id']}"}


def import_amber(
    annotations: Path,
    queries: Path,
    relation: Path,
    safe_words: Path,
    images: Path,
    *,
    limit: int | None = None,
    skip_bad: bool = False,
    dataset: str = "amber",
    vocabulary: str = "amber",
) -> ImportReport:
    """Import AMBER's generative task as held-out prompts of `dataset`, its annotated objects
    registered as `vocabulary` with their associations and the safe words (the same
    vocabulary again is kept; another one by that name refused); all or nothing, the
    vocabulary too, unless `skip_bad`."""
    if not Path(images).is_dir():
        raise DatasetError(f"{images} is not a folder")
    classes, associations = amber_reading(relation, safe_words)
    rows = [
        (number, row if isinstance(row, str) else {**row, "facts": {**row["facts"], "vocabulary": vocabulary}})
        for number, row in amber_rows(annotations, queries, associations, limit=limit)
    ]
    with transaction.atomic():  # the vocabulary goes with the rows, or neither stays
        try:
            register_vocabulary(vocabulary, [[name, list(s)] for name, s in classes], associations=associations)
        except (Invalid, Refused) as error:
            raise DatasetError(f"{error.message} (--vocabulary names another)") from None
        return import_rows(rows, Path(images), skip_bad=skip_bad, dataset=dataset, vocabulary=vocabulary)


def short_answer(scene: Scene, question: Question) -> str:
    """The answer a response must contain: yes or no (existence; "no" for a count of none),
    the number word (count) or the colour (color)."""
    if question.kind == "exist":
        return "yes" if question.target in scene.classes else "no"
    if question.kind == "count":
        return NUMBER_WORDS[scene.count(question.target)]  # "no" for none
    if question.kind == "color":
        return scene.of_class(question.target)[0].colour
    raise ValueError(f"no short answer for a {question.kind} question")


def import_toyworld(
    scenes: int,
    *,
    split: str = Prompt.Split.HELDOUT,
    image_size: int = 96,
    questions: bool = False,
    dataset: str = "toyworld",
) -> ImportReport:
    """The first `scenes` held-out scenes of the synthetic world (their images rendered at
    `image_size`) as description prompts, in scene order; with `questions`, a question with
    its known answer per scene too. Prompts already there are kept, not duplicated (a
    re-run adds the scenes it did not have). Held-out prompts join `dataset` (ValueError when
    it exists in another vocabulary than "toyworld")."""
    report = ImportReport()
    rng = random.Random(0)
    held: Dataset | None = None
    if split == Prompt.Split.HELDOUT:
        try:
            held, _ = dataset_for_import(dataset, "toyworld")
        except Refused as error:
            raise ValueError(error.message) from None
        report.dataset = held.name
    with atomic_with_files():
        if held is not None and held.pk is None:
            held.save()
        for scene in heldout_scenes(scenes):
            report.rows += 1
            facts = {**scene.facts(), "vocabulary": "toyworld"}
            image = add_image(png_of_scene(scene, image_size), facts=facts, source=scene.scene_id)
            texts = [(TOY_DESCRIBE, {"kind": "describe"})]
            if questions:
                question = make_question(rng, scene, rng.choice(TOY_QUESTION_KINDS))  # type: ignore[arg-type]
                if question is not None:
                    texts.append((question.text, {"kind": "question", "answer": short_answer(scene, question)}))
            for text, meta in texts:
                there = Prompt.objects.filter(image=image, text=text).first()
                if there is None:
                    add_prompt(image, text, split=split, meta=meta, dataset=held)
                    report.prompts += 1
                elif image.source != scene.scene_id:  # the tiny world repeats a scene now and then
                    report.problems.append(
                        Problem(report.rows, f"{scene.scene_id} is the same image as {image.source}")
                    )
                elif there.dataset_id != (held.pk if held is not None else None):
                    report.problems.append(Problem(report.rows, f"{scene.scene_id} is already in another dataset"))
                else:
                    report.already += 1
            report.images += 1
    return report
