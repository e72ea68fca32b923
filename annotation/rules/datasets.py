"""Held-out datasets and object vocabularies: the rules an import, an evaluation and a round
share.

A held-out prompt belongs to one named `Dataset`; a dataset names its objects in one
vocabulary: "coco" (COCO's 80 classes), "toyworld" (the synthetic world's) or a
`Vocabulary` the user registered (classes with synonyms). An import checks each held-out
row's classes against its dataset's vocabulary; an evaluation and a round score exactly one
dataset, by name; `scorable` says, before any training, whether a dataset can be scored.
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Count

from annotation.models import Dataset, Prompt, Round, Vocabulary
from annotation.rules.errors import Invalid, Refused
from contract.heldout import (
    BUILT_IN_VOCABULARIES,
    COCO_CLASSES,
    Associations,
    Classes,
    HeldoutError,
    parse_associations,
    parse_vocabulary,
)
from contract.protocols import FACTLOOP, PROTOCOLS
from testbed.toyworld import CLASSES as TOYWORLD_CLASSES

DEFAULT_VOCABULARY = "coco"
DEFAULT_DATASET = "heldout"  # the dataset an import's held-out rows join when it names none
_BUILT_IN = {"coco": tuple(COCO_CLASSES), "toyworld": tuple(TOYWORLD_CLASSES)}
assert set(_BUILT_IN) == set(BUILT_IN_VOCABULARIES)


def vocabulary_names() -> list[str]:
    return [*BUILT_IN_VOCABULARIES, *Vocabulary.objects.order_by("name").values_list("name", flat=True)]


def vocabulary_table(name: str) -> Classes | None:
    """A registered vocabulary's classes with their synonyms; None for a built-in one.
    Invalid for an unknown name."""
    if name in BUILT_IN_VOCABULARIES:
        return None
    stored = Vocabulary.objects.filter(name=name).values_list("classes", flat=True).first()
    if stored is None:
        raise Invalid(f"unknown vocabulary {name!r}; known: {', '.join(vocabulary_names())} (register_vocabulary)")
    return parse_vocabulary(stored)


def class_names(name: str) -> frozenset[str]:
    """The canonical class names of vocabulary `name` (Invalid when unknown)."""
    table = vocabulary_table(name)
    return frozenset(_BUILT_IN[name] if table is None else (cls for cls, _ in table))


def vocabulary_associations(name: str) -> Associations | None:
    """A registered vocabulary's AMBER associations (None: a built-in one, or none given)."""
    if name in BUILT_IN_VOCABULARIES:
        return None
    stored = Vocabulary.objects.filter(name=name).values_list("associations", flat=True).first()
    return None if stored is None else parse_associations(stored.get("associations"), stored.get("safe_words", []))


def register_vocabulary(
    name: str, data: Any, *, replace: bool = False, associations: Associations | None = None
) -> Vocabulary:
    """Store vocabulary `name` from JSON data (contract.heldout.parse_vocabulary's forms),
    with AMBER's `associations` when given. Refused for a built-in name, for a name taken
    (unless `replace`), and for replacing one a dataset uses: its evaluations would no
    longer mean the same."""
    if name in BUILT_IN_VOCABULARIES:
        raise Invalid(f"{name!r} is built in; choose another name")
    try:
        classes = parse_vocabulary(data)
    except HeldoutError as error:
        raise Invalid(f"vocabulary {name!r}: {error}") from None
    try:
        Vocabulary._meta.get_field("name").run_validators(name)
    except ValidationError as error:
        raise Invalid(f"vocabulary name {name!r}: {' '.join(error.messages)}") from None
    stored = [[cls, list(synonyms)] for cls, synonyms in classes]
    read = associations.as_json() if associations is not None else None
    with transaction.atomic():
        existing = Vocabulary.objects.select_for_update().filter(name=name).first()
        if existing is None:
            return Vocabulary.objects.create(name=name, classes=stored, associations=read)
        if existing.classes == stored and existing.associations == read:
            return existing  # the same vocabulary again
        if not replace:
            raise Refused(f"vocabulary {name!r} exists; --replace to change it")
        users = list(Dataset.objects.filter(vocabulary=name).values_list("name", flat=True))
        if users:
            raise Refused(f"vocabulary {name!r} is used by dataset(s) {', '.join(users)}; register a new name")
        existing.classes, existing.associations = stored, read
        existing.save(update_fields=["classes", "associations"])
        return existing


def object_classes(facts: dict[str, Any]) -> list[str]:
    """The object classes an image's facts name: `classes`, or `objects` when it lists names."""
    listed = facts.get("classes")
    if listed is None and all(isinstance(o, str) for o in facts.get("objects") or []):
        listed = facts.get("objects")
    return [str(name) for name in listed or []]


def unknown_classes(facts: dict[str, Any], names: frozenset[str]) -> list[str]:
    """The facts' object classes outside `names`."""
    return sorted(set(object_classes(facts)) - names)


def facts_problem(facts: dict[str, Any], vocabulary: str, names: frozenset[str]) -> str | None:
    """Why a held-out row's facts cannot be scored in `vocabulary`, or None."""
    named = facts.get("vocabulary")
    if named is not None and named != vocabulary:
        return f"facts name vocabulary {named!r}, and the dataset's is {vocabulary!r}"
    absent = facts.get("absent") or []
    if not isinstance(absent, list) or not all(isinstance(name, str) for name in absent):
        return "absent is a list of class names"
    if unknown := sorted(set(unknown_classes(facts, names)) | (set(absent) - names)):
        shown = ", ".join(repr(c) for c in unknown[:5]) + (" ..." if len(unknown) > 5 else "")
        return f"classes outside the {vocabulary} vocabulary: {shown}"
    return None


def datasets_with_counts() -> list[tuple[str, int]]:
    rows = Dataset.objects.annotate(n=Count("prompts")).order_by("name").values_list("name", "n")
    return [(name, n) for name, n in rows]


def only_dataset() -> Dataset | None:
    """The one dataset that has prompts, when exactly one has."""
    named = [name for name, n in datasets_with_counts() if n]
    return Dataset.objects.get(name=named[0]) if len(named) == 1 else None


def choose_dataset(name: str | None, round_: Round | None = None) -> Dataset:
    """Dataset `name`; without one, the round's recorded dataset, else the only one there
    is. Refused with the datasets to choose from when that leaves none or several."""
    if name:
        found = Dataset.objects.filter(name=name).first()
        if found is None:
            raise Invalid(f"no held-out dataset {name!r}; {_listing()}")
        return found
    if round_ is not None and round_.heldout_id is not None:
        return Dataset.objects.get(pk=round_.heldout_id)
    found = only_dataset()
    if found is None:
        if not any(n for _, n in datasets_with_counts()):
            raise Refused(
                "no held-out prompts to evaluate on: import some (import_prompts with split heldout, import_coco, "
                "import_toyworld)"
            )
        raise Invalid(f"more than one held-out dataset: name one ({_listing()})")
    return found


def _listing() -> str:
    listed = datasets_with_counts()
    if not listed:
        return "there are none: import held-out prompts first"
    return "datasets: " + ", ".join(f"{name} ({n} prompts)" for name, n in listed)


def scorable(dataset: Dataset, limit: int | None = None, *, protocol: str = FACTLOOP) -> dict[str, Any]:
    """What an evaluation of `dataset` (its first `limit` prompts) would score; Refused when
    it cannot be scored: no prompts, an unknown vocabulary, an image whose facts name a
    class outside it (facts imported before imports checked them, or a vocabulary changed),
    or a protocol that scores by AMBER's associations asked of a vocabulary without them."""
    names = class_names(dataset.vocabulary)
    if PROTOCOLS[protocol].scorer == "amber" and vocabulary_associations(dataset.vocabulary) is None:
        raise Refused(
            f"the {protocol} protocol scores by AMBER's associations and safe words, and held-out dataset "
            f"{dataset.name!r} (vocabulary {dataset.vocabulary!r}) has none: import AMBER with import_amber"
        )
    prompts = Prompt.objects.filter(dataset=dataset).order_by("pk")
    prompts = prompts[:limit] if limit else prompts
    count = 0
    for pk, facts in prompts.values_list("pk", "image__facts").iterator(chunk_size=2000):
        count += 1
        problem = facts_problem(facts if isinstance(facts, dict) else {}, dataset.vocabulary, names)
        if problem is not None:
            raise Refused(f"held-out dataset {dataset.name!r} cannot be scored: prompt {pk}: {problem}")
    if not count:
        raise Refused(f"held-out dataset {dataset.name!r} has no prompts")
    return {"dataset": dataset.name, "vocabulary": dataset.vocabulary, "items": count}


def dataset_for_import(name: str, vocabulary: str | None, *, rows_name: Any = None) -> tuple[Dataset, bool]:
    """The dataset an import's held-out rows join (and whether it is new: created when the
    rows are written, in `vocabulary`, else the one its rows name, else "coco"). Invalid
    when the name is not a slug, the vocabulary is unknown, or an existing dataset has
    another vocabulary than the one asked for."""
    try:
        Dataset._meta.get_field("name").run_validators(name)
    except ValidationError as error:
        raise Invalid(f"dataset name {name!r}: {' '.join(error.messages)}") from None
    existing = Dataset.objects.filter(name=name).first()
    if existing is not None:
        if vocabulary and vocabulary != existing.vocabulary:
            raise Invalid(f"dataset {name!r} names its objects in {existing.vocabulary!r}, not {vocabulary!r}")
        return existing, False
    vocabulary = vocabulary or (rows_name if isinstance(rows_name, str) and rows_name else DEFAULT_VOCABULARY)
    class_names(vocabulary)  # Invalid when unknown
    return Dataset(name=name, vocabulary=vocabulary), True


def default_heldout(previous: Round | None) -> Dataset | None:
    """The dataset a new round records: the previous round's, else the only one there is."""
    if previous is not None and previous.heldout_id is not None:
        return Dataset.objects.get(pk=previous.heldout_id)
    return only_dataset()
