"""Labels out as files: the seam between the web side and training (ARCHITECTURE.md).

One function per format, each streaming rows from the database in a fixed order, so the same
database state gives byte-identical files; each export folder holds a `manifest.json`
(schema version, format, rounds, counts, SHA-256 of every file) and nothing time-dependent.

- `factloop`: `labels.jsonl`, one row per submitted judgement or correction, with full
  provenance (round, task, assignment, annotator, image, prompt, candidates).
- `trl`: a Hugging Face `datasets` directory in TRL's preference format: `prompt` (the
  conversation, the image first in the first user turn), `chosen`, `rejected` (assistant
  turns), `images`, plus `chosen_spans` / `rejected_spans` (changed segments as character
  offsets in each text, so DDPO can weight the tokens of any tokenizer) and provenance.
  Preference pairs follow docs/methods.md section 1: a ranking of k candidates gives its
  k(k-1)/2 ordered pairs (a Q1 tie still gives the Q2, helpfulness, order); a correction
  gives chosen = corrected, rejected = original; "no hallucination" gives no pair.
- `llava-rlhf`: `llava_rlhf.json`, which LLaVA-RLHF's reward-model loader reads, and
  `rlhf-v`: `rlhf_v.parquet` with the image bytes embedded, in RLHF-V's released columns
  (annotation/data/released.py: the layouts, their extras and what a round trip keeps).

Selection (every format): the rounds; gold tasks (QC copies of known answers) are left out
of the pair formats unless asked for; `min_gold_accuracy` keeps only the labels of
annotators whose gold accuracy passes; `aggregate="majority"` (pair formats) merges the
labels of a task's overlap by majority vote: a ranking pair is kept when more annotators
ordered it one way than the other (a tie of votes drops it); a correction is kept when most
annotators found a hallucination, using the first such annotator's correction.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from itertools import combinations, groupby
from pathlib import Path
from typing import Any, TextIO

from django.core.exceptions import ValidationError
from django.db import transaction

from annotation.data import released
from annotation.jobs.lifecycle import enqueue_job
from annotation.labeling.quality import passing_annotators
from annotation.models import AuditEvent, Candidate, Correction, Image, Job, Judgement, Round, TaskCandidate
from annotation.rules import audit
from contract.export import assistant_turn, user_turns, write_manifest, write_pairs
from contract.feedback import Feedback, ai_pairs
from models.staging import staged

SCHEMA_VERSION = 1
FORMATS = ("factloop", "trl", "llava-rlhf", "rlhf-v")
AGGREGATIONS = ("none", "majority")
CHUNK = 2000
Progress = Callable[[int], None]  # called with the number of labels just read


@dataclass(frozen=True)
class Selection:
    """Which labels an export holds (recorded in its manifest)."""

    rounds: tuple[int, ...]
    aggregate: str = "none"
    min_gold_accuracy: float | None = None
    include_gold: bool = False
    # The AI labeller's pairs (RLAIF-V: two candidates of a prompt whose scores differ by at
    # least 1), source "ai", after the people's; `trl` format only.
    ai_pairs: bool = False

    def __post_init__(self) -> None:
        if not self.rounds:
            raise ValueError("choose at least one round")
        if self.aggregate not in AGGREGATIONS:
            raise ValueError(f"unknown aggregation {self.aggregate!r}; expected one of {', '.join(AGGREGATIONS)}")
        if self.min_gold_accuracy is not None and not 0 <= self.min_gold_accuracy <= 1:
            raise ValueError("the gold accuracy threshold is from 0 to 1")


_PROVENANCE = {
    "assignment_id": "assignment_id",
    "task": "assignment__task_id",
    "round": "assignment__task__round__number",
    "annotator": "assignment__annotator__username",
    "gold": "assignment__task__is_gold",
    "submitted_at": "assignment__finished_at",
    "image_sha256": "assignment__task__prompt__image__sha256",
    "image_file": "assignment__task__prompt__image__file",
    "image_facts": "assignment__task__prompt__image__facts",
    "image_source": "assignment__task__prompt__image__source",
    "prompt_id": "assignment__task__prompt_id",
    "prompt_text": "assignment__task__prompt__text",
    "prompt_context": "assignment__task__prompt__context",
    "prompt_split": "assignment__task__prompt__split",
    "prompt_meta": "assignment__task__prompt__meta",
    "origin": "assignment__task__origin",
}
_JUDGEMENT = (
    "ranking",
    "hallucination_tie",
    "tiers",
    "hallucinated",
    "rejected_hallucinates",
    "rationale",
    "time_spent_ms",
)
_CORRECTION = ("candidate_id", "original", "corrected", "no_hallucination", "spans", "time_spent_ms")


def _chunks(
    model: type[Judgement] | type[Correction], rounds: Sequence[int], fields: Sequence[str], *, by_task: bool = False
) -> Iterator[list[dict[str, Any]]]:
    """Rows as plain values (no model instances: this is the hot loop of a million-row
    export), in assignment order (or task, then assignment, order), CHUNK keys at a time.

    Each chunk is two queries: the next CHUNK keys by keyset (`> last`, an index scan, no
    join), then the rows of those keys with their provenance joined in. A single joined
    query with LIMIT let PostgreSQL hash-join the whole table for every chunk
    (bench/export.py), which made an export quadratic."""
    key = "assignment__task_id" if by_task else "assignment_id"
    rows = (
        model.objects.filter(assignment__task__round__number__in=rounds)
        .order_by(*dict.fromkeys((key, "assignment_id")))
        .values(*_PROVENANCE.values(), *fields)
    )
    last = 0
    while True:
        next_keys = model.objects.filter(**{f"{key}__gt": last}).order_by(key).values_list(key, flat=True)
        # A task has several labels, an assignment one: no DISTINCT on the plain path.
        keys = list((next_keys.distinct() if by_task else next_keys)[:CHUNK])
        if not keys:
            return
        chunk = list(rows.filter(**{f"{key}__in": keys}))
        if chunk:
            yield chunk
        last = keys[-1]


def _candidate_texts(task_ids: set[int]) -> dict[int, dict[int, str]]:
    texts: dict[int, dict[int, str]] = {}
    slots = TaskCandidate.objects.filter(task_id__in=task_ids).values_list("task_id", "candidate_id", "candidate__text")
    for task_id, candidate_id, text in slots:
        texts.setdefault(task_id, {})[candidate_id] = text
    return texts


def _provenance(values: dict[str, Any]) -> dict[str, Any]:
    row = {name: values[path] for name, path in _PROVENANCE.items()}
    submitted = row["submitted_at"]
    return {
        "round": row["round"],
        "task": row["task"],
        "assignment": row["assignment_id"],
        "annotator": row["annotator"],
        "gold": row["gold"],
        "image": {
            "sha256": row["image_sha256"],
            "file": row["image_file"],
            "facts": row["image_facts"],
            "source": row["image_source"],
        },
        "prompt": {
            "id": row["prompt_id"],
            "text": row["prompt_text"],
            "context": row["prompt_context"],
            "split": row["prompt_split"],
            "meta": row["prompt_meta"],
        },
        "origin": row["origin"],
        "submitted_at": submitted.isoformat() if submitted else None,
    }


def factloop_rows(rounds: Sequence[int], *, by_task: bool = False) -> Iterator[dict[str, Any]]:
    """Judgements, then corrections, each by assignment id (or by task, then assignment);
    streamed in chunks."""
    for chunk in _chunks(Judgement, rounds, _JUDGEMENT, by_task=by_task):
        texts = _candidate_texts({values["assignment__task_id"] for values in chunk})
        for values in chunk:
            shown = texts[values["assignment__task_id"]]
            yield {
                "schema_version": SCHEMA_VERSION,
                "kind": "ranking",
                **_provenance(values),
                "candidates": [{"id": cid, "text": shown[cid]} for cid in values["ranking"]],
                "shown": list(shown),
                **{name: values[name] for name in _JUDGEMENT},
            }
    for chunk in _chunks(Correction, rounds, _CORRECTION, by_task=by_task):
        for values in chunk:
            yield {
                "schema_version": SCHEMA_VERSION,
                "kind": "correction",
                **_provenance(values),
                "candidate": values["candidate_id"],
                **{name: values[name] for name in _CORRECTION if name != "candidate_id"},
            }


def _prompt_turns(row: dict[str, Any]) -> list[dict[str, str]]:
    return [*row["prompt"]["context"], {"role": "user", "content": row["prompt"]["text"]}]


def _extra(row: dict[str, Any]) -> dict[str, Any]:
    """What a pair format carries beyond its own fields (module docstring, "extras"): the
    label's context, so that an import of the file restores it."""
    return {
        "task": row["task"],
        "annotator": row["annotator"],
        "split": row["prompt"]["split"],
        "context": row["prompt"]["context"],
        "meta": row["prompt"]["meta"],
        "facts": row["image"]["facts"],
        "origin": row["origin"],
    }


def _tier_of(row: dict[str, Any]) -> dict[int, int]:
    tiers = row["tiers"] or [[c] for c in row["ranking"]]
    return {c: i for i, tier in enumerate(tiers) for c in tier}


def preference_pairs(row: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The preference pairs of one factloop row (docs/methods.md section 1), in TRL's
    conversational preference format plus provenance, and under `extra` what the released
    layouts carry as extras."""
    prompt = user_turns(_prompt_turns(row))
    answer = assistant_turn

    base = {
        "prompt": prompt,
        "image_sha256": row["image"]["sha256"],
        "image_facts": json.dumps(row["image"]["facts"], sort_keys=True, ensure_ascii=False),
        "round": row["round"],
        "annotator": row["annotator"],
    }
    if row["kind"] == "ranking":
        texts = {c["id"]: c["text"] for c in row["candidates"]}
        hallucinated = set(row["hallucinated"])
        tier = _tier_of(row)
        shown = row["shown"]
        # The whole k-way label, on every one of its pairs: an import regroups them.
        label = {
            "group": f"a{row['assignment']}",
            "texts": [texts[c] for c in shown],
            "ranking": [shown.index(c) for c in row["ranking"]],
            "tiers": [[shown.index(c) for c in group] for group in (row["tiers"] or [[c] for c in row["ranking"]])],
            "hallucinated": sorted(shown.index(c) for c in hallucinated if c in shown),
        }
        for better, worse in combinations(row["ranking"], 2):
            yield base | {
                "id": f"r{row['assignment']}-{better}-{worse}",
                "source": "ranking",
                "chosen": answer(texts[better]),
                "rejected": answer(texts[worse]),
                "chosen_spans": [],
                "rejected_spans": [],
                # This pair's order answers Q2 (helpfulness) when Q1 put both in one group.
                "hallucination_tie": tier[better] == tier[worse],
                # For the LLaVA-RLHF layout: the pair as shown (A before B) and the flag.
                "chosen_first": shown.index(better) < shown.index(worse),
                "rejected_hallucinates": worse in hallucinated,
                "extra": _extra(row) | {"ranking": label},
            }
    elif not row["no_hallucination"]:
        yield base | {
            "id": f"c{row['assignment']}",
            "source": "correction",
            "chosen": answer(row["corrected"]),
            "rejected": answer(row["original"]),
            "chosen_spans": [[s["corrected_start"], s["corrected_end"]] for s in row["spans"]],
            "rejected_spans": [[s["original_start"], s["original_end"]] for s in row["spans"]],
            "hallucination_tie": False,
            "chosen_first": False,
            "rejected_hallucinates": True,
            # The spans follow from the two texts; the annotator's error types do not.
            "extra": _extra(row) | {"categories": [s.get("category") for s in row["spans"]]},
        }


def _majority(rows: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """One task's labels merged by majority vote (see the module's docstring)."""
    if rows[0]["kind"] == "ranking":
        votes: dict[tuple[int, int], int] = {}
        for row in rows:
            for better, worse in combinations(row["ranking"], 2):
                votes[better, worse] = votes.get((better, worse), 0) + 1
        first = rows[0]
        ties: Counter[tuple[int, int]] = Counter()
        for row in rows:
            tier = _tier_of(row)
            ties.update((a, b) for a, b in combinations(first["shown"], 2) if tier[a] == tier[b])
        flags = Counter(cid for row in rows for cid in row["hallucinated"])
        flagged = {cid for cid, n in flags.items() if 2 * n > len(rows)}
        merged = first | {"ranking": first["shown"], "tiers": [], "hallucinated": sorted(flagged)}
        for pair in preference_pairs(merged):
            a, b = (int(x) for x in pair["id"].split("-")[1:])
            forward, backward = votes.get((a, b), 0), votes.get((b, a), 0)
            if forward == backward:
                continue
            tie = 2 * ties[a, b] > len(rows)  # most annotators put the two in one Q1 group
            if backward > forward:
                pair = pair | {
                    "chosen": pair["rejected"],
                    "rejected": pair["chosen"],
                    "chosen_first": not pair["chosen_first"],
                    "rejected_hallucinates": a in flagged,
                }
                a, b = b, a
            # A merged pair stands alone: no k-way label to regroup.
            extra = {k: v for k, v in pair["extra"].items() if k != "ranking"}
            yield pair | {
                "id": f"m{first['task']}-{a}-{b}",
                "annotator": "majority",
                "hallucination_tie": tie,
                "extra": extra | {"annotator": "majority"},
            }
        return
    fixes = [row for row in rows if not row["no_hallucination"]]
    if 2 * len(fixes) > len(rows):
        for pair in preference_pairs(fixes[0]):
            yield pair | {"id": f"m{fixes[0]['task']}", "annotator": "majority"}


def _counted(rows: Iterator[dict[str, Any]], progress: Progress | None) -> Iterator[dict[str, Any]]:
    for row in rows:
        yield row
        if progress is not None:
            progress(1)


def _passing(selection: Selection) -> set[str] | None:
    if selection.min_gold_accuracy is None:
        return None

    return passing_annotators(min_gold_accuracy=selection.min_gold_accuracy)


def select_pairs(selection: Selection, progress: Progress | None = None) -> Iterator[dict[str, Any]]:
    """The preference pairs of the selection, in a fixed order; `progress(1)` per label read."""
    passing = _passing(selection)
    majority = selection.aggregate == "majority"
    rows = (
        row
        for row in _counted(factloop_rows(selection.rounds, by_task=majority), progress)
        if (selection.include_gold or not row["gold"]) and (passing is None or row["annotator"] in passing)
    )
    if not majority:
        for row in rows:
            yield from preference_pairs(row)
    else:
        for _, group in groupby(rows, key=lambda row: (row["kind"], row["task"])):
            yield from _majority(list(group))
    if selection.ai_pairs:
        yield from machine_pairs(selection.rounds)


def machine_pairs(rounds: Sequence[int]) -> Iterator[dict[str, Any]]:
    """The AI labeller's pairs of the rounds' candidates (contract/feedback.py's `ai_pairs`:
    per prompt, score gap >= 1, each candidate once), by round and prompt; `annotator` names
    the labeller ("ai:<version>"), so no pair passes for a person's."""
    found = (
        Candidate.objects.filter(round__number__in=rounds, ai_feedback__isnull=False)
        .exclude(params__has_key="gold_of")
        .select_related("round", "prompt__image")
        .order_by("round__number", "prompt_id", "index")
    )
    for (number, prompt_id), group in groupby(found.iterator(), key=lambda c: (c.round.number, c.prompt_id)):
        candidates = list(group)
        scored = [(c.text, Feedback.from_dict(c.ai_feedback).score) for c in candidates if c.ai_feedback]
        labeller = str(candidates[0].ai_feedback["labeller"]) if candidates[0].ai_feedback else "ai"
        prompt = candidates[0].prompt
        turns = [*prompt.context, {"role": "user", "content": prompt.text}]
        for index, (chosen, rejected) in enumerate(ai_pairs(scored)):
            yield {
                "id": f"ai{number}-{prompt_id}-{index}",
                "source": "ai",
                "prompt": user_turns(turns),
                "image_sha256": prompt.image.sha256,
                "image_facts": json.dumps(prompt.image.facts, sort_keys=True, ensure_ascii=False),
                "round": number,
                "annotator": labeller,
                "chosen": assistant_turn(chosen),
                "rejected": assistant_turn(rejected),
                "chosen_spans": [],
                "rejected_spans": [],
                "hallucination_tie": False,
                "chosen_first": False,
                "rejected_hallucinates": True,
                "extra": {},
            }


def select_rows(selection: Selection, progress: Progress | None = None) -> Iterator[dict[str, Any]]:
    """The factloop rows of the selection: every label, gold tasks included (each row says
    whether its task was gold); no aggregation in this format."""
    check_format("factloop", selection)
    passing = _passing(selection)
    for row in _counted(factloop_rows(selection.rounds), progress):
        if passing is None or row["annotator"] in passing:
            yield row


def _manifest(folder: Path, fmt: str, selection: Selection, counts: dict[str, int]) -> None:
    filters = {k: v for k, v in asdict(selection).items() if k != "rounds"}
    write_manifest(folder, fmt, rounds=sorted(selection.rounds), filters=filters, counts=counts)


def export_factloop(selection: Selection, out: Path, progress: Progress | None = None) -> dict[str, int]:
    counts = {"ranking": 0, "correction": 0}
    with open(out / "labels.jsonl", "w", encoding="utf-8") as handle:
        for row in select_rows(selection, progress):
            handle.write(json.dumps(row, sort_keys=True, ensure_ascii=False) + "\n")
            counts[row["kind"]] += 1
    return counts


class _ImageCache:
    """The bytes of the image last asked for (rows come grouped by image often enough, and
    memory stays flat)."""

    def __init__(self) -> None:
        self.sha = ""
        self.data = b""

    def get(self, sha: str, file: str) -> bytes:
        if sha != self.sha:
            from django.core.files.storage import default_storage

            with default_storage.open(file, "rb") as handle:
                self.data = handle.read()
            self.sha = sha
        return self.data


def _images_of(selection: Selection) -> Any:
    """The images the selection's labels use (with AI pairs, those of every candidate)."""
    if selection.ai_pairs:
        return Image.objects.filter(prompts__candidates__round__number__in=selection.rounds).distinct()
    return Image.objects.filter(prompts__tasks__round__number__in=selection.rounds).distinct()


def _image_files(selection: Selection) -> dict[str, str]:
    """sha256 -> stored file of every image the selection's labels use."""
    return dict(_images_of(selection).values_list("sha256", "file"))


def export_trl(selection: Selection, out: Path, progress: Progress | None = None) -> dict[str, int]:
    """A `datasets` directory (`datasets.load_from_disk(out)`); built from a generator, so
    memory stays flat, with a fingerprint derived from the rows for reproducible files."""
    files = _image_files(selection)
    cache = _ImageCache()
    digest = hashlib.sha256()
    counts = {"pairs": 0}

    def rows(selection: Selection) -> Iterator[dict[str, Any]]:
        for pair in select_pairs(selection, progress):
            del pair["chosen_first"], pair["rejected_hallucinates"], pair["extra"]
            image = cache.get(pair["image_sha256"], files[pair["image_sha256"]])
            yield pair | {"images": [{"bytes": image, "path": None}]}

    for pair in select_pairs(selection):
        digest.update(json.dumps(pair, sort_keys=True).encode())
        counts["pairs"] += 1
    write_pairs(rows, {"selection": selection}, out, digest.hexdigest()[:16])
    return counts


class _JsonList:
    """A JSON array written one element at a time."""

    def __init__(self, handle: TextIO) -> None:
        self.handle = handle
        self.count = 0

    def __enter__(self) -> _JsonList:
        self.handle.write("[")
        return self

    def add(self, item: dict[str, Any]) -> None:
        self.handle.write(",\n" if self.count else "\n")
        self.handle.write(json.dumps(item, sort_keys=True, ensure_ascii=False))
        self.count += 1

    def __exit__(self, *exc: object) -> None:
        self.handle.write("\n]\n" if self.count else "]\n")


def _image_names(selection: Selection) -> dict[str, tuple[str, str]]:
    """sha256 -> (stored file, name in the export) of the selection's images: the image's
    original name when one is known (where it was imported from) and not taken by another
    image, else `<sha256>.<ext>`."""
    rows = sorted(_images_of(selection).values_list("sha256", "file", "source"))
    names: dict[str, tuple[str, str]] = {}
    taken: set[str] = set()
    for sha, file, source in rows:
        original = released.safe_name(source)
        name = original if original and original.lower() not in taken else f"{sha}{Path(file).suffix}"
        taken.add(name.lower())
        names[sha] = (file, name)
    return names


def _write_images(selection: Selection, out: Path) -> dict[str, str]:
    """Copies the selection's images into out/images/ (released.py: under their original
    names when known); sha -> name relative to out/images/."""
    from django.core.files.storage import default_storage

    folder = out / "images"
    folder.mkdir()
    names = {}
    for sha, (file, name) in _image_names(selection).items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        with default_storage.open(file, "rb") as source, open(folder / name, "wb") as target:
            shutil.copyfileobj(source, target)
        names[sha] = name
    return names


def export_llava_rlhf(selection: Selection, out: Path, progress: Progress | None = None) -> dict[str, int]:
    """LLaVA-RLHF's preference JSON (annotation/data/released.py), images in `images/`."""
    images = _write_images(selection, out)
    with open(out / released.LLAVA_RLHF_FILE, "w", encoding="utf-8") as handle, _JsonList(handle) as items:
        for pair in select_pairs(selection, progress):
            items.add(released.llava_rlhf_item(pair, images[pair["image_sha256"]]))
    return {"pairs": items.count, "images": len(images)}


def export_rlhf_v(selection: Selection, out: Path, progress: Progress | None = None) -> dict[str, int]:
    """RLHF-V's released parquet (annotation/data/released.py), image bytes embedded; written
    through `datasets` from a generator, so memory stays flat."""
    from datasets import Dataset  # type: ignore[import-untyped]

    names = _image_names(selection)
    cache = _ImageCache()
    counts = {"pairs": 0}

    def rows() -> Iterator[dict[str, Any]]:
        for idx, pair in enumerate(select_pairs(selection, progress)):
            file, name = names[pair["image_sha256"]]
            counts["pairs"] += 1
            yield released.rlhf_v_row(pair, cache.get(pair["image_sha256"], file), name, idx)

    import tempfile

    with tempfile.TemporaryDirectory(prefix="factloop-export-") as work:
        dataset = Dataset.from_generator(rows, features=released.rlhf_v_features(), cache_dir=work)
        dataset.to_parquet(str(out / released.RLHF_V_FILE))
    return counts | {"images": len(names)}


_WRITERS = {
    "factloop": export_factloop,
    "trl": export_trl,
    "llava-rlhf": export_llava_rlhf,
    "rlhf-v": export_rlhf_v,
}


def count_labels(selection: Selection) -> int:
    """How many labels the rounds hold (the progress total: writers report each label read;
    the trl writer reads them twice, for its fingerprint, and reports the second pass)."""
    rounds = selection.rounds
    return (
        Judgement.objects.filter(assignment__task__round__number__in=rounds).count()
        + Correction.objects.filter(assignment__task__round__number__in=rounds).count()
    )


def check_format(fmt: str, selection: Selection) -> None:
    """Raises ValueError for an unknown format or a selection the format cannot hold."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    if fmt == "factloop" and selection.aggregate != "none":
        raise ValueError("the factloop format has one row per label; --aggregate applies to the pair formats")
    if selection.ai_pairs and fmt != "trl":
        raise ValueError("AI pairs go into the trl format only (the released layouts hold people's labels)")


def export(
    fmt: str, selection: Selection | Sequence[int], out: Path, progress: Progress | None = None
) -> dict[str, int]:
    """Write the export into `out` (which must not exist): built in a sibling folder and
    renamed into place, so `out` never holds half an export."""
    if not isinstance(selection, Selection):
        selection = Selection(tuple(selection))
    check_format(fmt, selection)
    if out.exists():
        raise FileExistsError(f"{out} exists; exports never overwrite (choose a new folder)")
    # A staging folder left by a killed export (its process gone) is removed first.
    with staged(out) as staging:
        counts = _WRITERS[fmt](selection, staging, progress)
        _manifest(staging, fmt, selection, counts)
    return counts


def queue_export(
    *,
    fmt: str,
    rounds: Sequence[int],
    aggregate: str = "none",
    min_gold_accuracy: float | None = None,
    include_gold: bool = False,
    ai_pairs: bool = False,
    created_by: Any = None,
) -> Job:
    """Queue an export (on the `export` queue); the selection is checked now, not in the worker."""

    known = set(Round.objects.filter(number__in=rounds).values_list("number", flat=True))
    if missing := sorted(set(rounds) - known):
        raise ValidationError(f"no round {', '.join(map(str, missing))}")
    try:
        check_format(fmt, Selection(tuple(sorted(set(rounds))), aggregate, min_gold_accuracy, include_gold, ai_pairs))
    except ValueError as error:
        raise ValidationError(str(error)) from None
    params = {
        "format": fmt,
        "rounds": sorted(set(rounds)),
        "aggregate": aggregate,
        "min_gold_accuracy": min_gold_accuracy,
        "include_gold": include_gold,
        "ai_pairs": ai_pairs,
    }
    with transaction.atomic():
        job = enqueue_job(Job.Kind.EXPORT, queue="export", params=params, created_by=created_by)
        audit.record(AuditEvent.Action.EXPORT, f"job {job.pk}", by=created_by, **params)
    return job
