"""Workflows that write several rows, each in one transaction."""

from __future__ import annotations

import contextvars
import hashlib
import io
import random
import secrets
from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractUser, Group
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import transaction
from django.db.models import Count, Max
from django.utils import timezone

from annotation import audit
from annotation.exporters import Selection, check_format
from annotation.jobs import enqueue_job
from annotation.models import (
    Assignment,
    AuditEvent,
    Candidate,
    Correction,
    Image,
    Job,
    Judgement,
    Prompt,
    Round,
    RoundPrompt,
    Task,
    TaskCandidate,
    image_path,
)
from annotation.queue import Refused, check_live, own_assignment
from annotation.roles import ANNOTATORS_GROUP
from contract import spans as span_diff

Role = Literal["annotator", "admin"]


# ---------------------------------------------------------------------------------------
# People


@dataclass(frozen=True)
class EnsuredUser:
    user: AbstractUser
    created: bool
    # The password that was set by this call, when it generated one; None otherwise.
    generated_password: str | None
    password_changed: bool


def ensure_user(
    username: str, *, role: Role, password: str | None = None, email: str = "", reactivate: bool = False
) -> EnsuredUser:
    """Create the user with the role, or give an existing user the role. Idempotent.

    A new user gets `password`, or a generated one that is returned once. An existing user
    keeps their password unless `password` is given. A deactivated account stays
    deactivated (ValidationError) unless `reactivate`: an admin's decision is not undone
    as a side effect. Raises ValidationError (nothing written) for a bad username or a
    password the validators refuse.
    """
    User = get_user_model()
    username_field = User._meta.get_field("username")
    try:
        username_field.clean(username, None)
    except ValidationError as error:
        raise ValidationError(f"invalid username {username!r}: {' '.join(error.messages)}") from None

    with transaction.atomic():
        user, created = User.objects.select_for_update().get_or_create(username=username, defaults={"email": email})
        if not created and not user.is_active and not reactivate:
            raise ValidationError(f"user {username!r} is deactivated; reactivate it explicitly (--reactivate)")
        generated = None
        if password is None and created:
            generated = secrets.token_urlsafe(12)
            password = generated
        if password is not None:
            # Raises ValidationError and rolls the transaction back, creation included.
            validate_password(password, user)
            user.set_password(password)
        if email and user.email != email:
            user.email = email
        if role == "admin":
            user.is_staff = True
            user.is_superuser = True
        user.is_active = True
        user.save()
        if role == "annotator":
            group, _ = Group.objects.get_or_create(name=ANNOTATORS_GROUP)
            user.groups.add(group)
    return EnsuredUser(user=user, created=created, generated_password=generated, password_changed=password is not None)


# ---------------------------------------------------------------------------------------
# Data: images, prompts, rounds, candidates, tasks

IMAGE_FORMATS = {"PNG": "png", "JPEG": "jpg", "WEBP": "webp", "GIF": "gif"}
MAX_IMAGE_PIXELS = 64_000_000


def inspect_image(data: bytes, source: str = "upload") -> tuple[str, int, int]:
    """(format, width, height) of image bytes, decoded in full: raises ValidationError for
    bytes that are not an image, a truncated file, a decompression bomb (over
    MAX_IMAGE_PIXELS) or a format other than PNG, JPEG, WebP and GIF."""
    from PIL import Image as PILImage
    from PIL import UnidentifiedImageError

    try:
        with PILImage.open(io.BytesIO(data)) as probe:
            kind, (width, height) = probe.format, probe.size
            if width * height > MAX_IMAGE_PIXELS:
                raise ValidationError(
                    f"{source}: {width}x{height} pixels is over the limit of {MAX_IMAGE_PIXELS} (a decompression bomb?)"
                )
            if kind not in IMAGE_FORMATS:
                raise ValidationError(
                    f"{source}: unsupported image format {kind}; use one of {', '.join(IMAGE_FORMATS)}"
                )
            # verify() checks the structure; load() decodes every pixel, which is what finds a
            # truncated JPEG.
            probe.verify()
        with PILImage.open(io.BytesIO(data)) as image:
            image.load()
    except PILImage.DecompressionBombError as error:
        raise ValidationError(f"{source}: {error}") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        raise ValidationError(f"{source}: not a readable image: {error}") from None
    return kind, width, height


def add_image(data: bytes, *, facts: dict[str, Any] | None = None, source: str = "") -> Image:
    """Store an image once per content. The same bytes again return the existing row (its
    facts are kept). Raises ValidationError as inspect_image does."""
    kind, width, height = inspect_image(data, source or "upload")
    digest = hashlib.sha256(data).hexdigest()
    existing = Image.objects.filter(sha256=digest).first()
    if existing is not None:
        return existing
    image = Image(sha256=digest, width=width, height=height, facts=facts or {}, source=source[:255])
    # The file is written before the row: a failed insert (or a rolled-back transaction)
    # leaves at most an unreferenced, content-addressed file, which the next upload of the
    # same bytes reuses rather than storing a renamed copy.
    name = image_path(image, f"image.{IMAGE_FORMATS[kind]}")
    if image.file.storage.exists(name):
        image.file.name = name
    else:
        image.file.save(name.rsplit("/", 1)[-1], ContentFile(data), save=False)
        if (written := _NEW_FILES.get()) is not None:
            written.append(image.file.name)
    with transaction.atomic():
        image.save()
    return image


_NEW_FILES: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar("new_image_files", default=None)


@contextmanager
def atomic_with_files() -> Iterator[None]:
    """transaction.atomic() for work that stores images: when it rolls back, the image files
    it wrote (and no row references) are deleted too, so a refused import leaves no orphans."""
    written: list[str] = []
    token = _NEW_FILES.set(written)
    try:
        with transaction.atomic():
            yield
    except BaseException:
        kept = set(Image.objects.filter(file__in=written).values_list("file", flat=True))
        for name in set(written) - kept:
            default_storage.delete(name)
        raise
    finally:
        _NEW_FILES.reset(token)


def add_prompt(
    image: Image,
    text: str,
    *,
    split: str = Prompt.Split.TRAIN,
    context: Sequence[dict[str, str]] = (),
    meta: dict[str, Any] | None = None,
) -> Prompt:
    if not text.strip():
        raise ValidationError("a prompt needs text")
    if split not in Prompt.Split.values:
        raise ValidationError(f"unknown split {split!r}; expected one of {', '.join(Prompt.Split.values)}")
    for turn in context:
        if set(turn) != {"role", "content"} or turn["role"] not in ("user", "assistant"):
            raise ValidationError('each context turn is {"role": "user"|"assistant", "content": "..."}')
    return Prompt.objects.create(image=image, text=text, split=split, context=list(context), meta=meta or {})


def create_round(*, policy_version: str = "") -> Round:
    """A new draft round numbered after the last one."""
    with transaction.atomic():
        last = Round.objects.select_for_update().aggregate(last=Max("number"))["last"] or 0
        return Round.objects.create(number=last + 1, policy_version=policy_version)


def add_candidates(
    round_: Round,
    prompt: Prompt,
    texts: Sequence[str],
    *,
    model_version: str = "",
    params: dict[str, Any] | None = None,
) -> list[Candidate]:
    """Append candidates to a prompt in a round, numbered after the ones it has."""
    with transaction.atomic():
        first = (Candidate.objects.filter(round=round_, prompt=prompt).aggregate(last=Max("index"))["last"] or -1) + 1
        return Candidate.objects.bulk_create(
            Candidate(
                round=round_,
                prompt=prompt,
                index=first + offset,
                text=text,
                model_version=model_version or round_.policy_version,
                params=params or {},
            )
            for offset, text in enumerate(texts)
        )


def gold_answer_problem(kind: str, answer: Any, candidates: int) -> str | None:
    """Why `answer` is not a valid known answer for a task of `kind` over `candidates`
    candidates, or None. Answers are by position: rank {"best_positions": [0, ...]} (the
    candidates with the fewest hallucinations; several when they tie), correct
    {"no_hallucination": true|false}."""
    if not isinstance(answer, dict):
        return "a gold answer is a JSON object"
    if kind == Task.Kind.RANK:
        best = answer.get("best_positions")
        if set(answer) != {"best_positions"} or not isinstance(best, list) or not best:
            return 'a ranking task\'s answer is {"best_positions": [positions of the best candidates]}'
        if any(not isinstance(p, int) or isinstance(p, bool) or not 0 <= p < candidates for p in best):
            return f"best_positions must be positions from 0 to {candidates - 1}"
        return None
    if set(answer) != {"no_hallucination"} or not isinstance(answer["no_hallucination"], bool):
        return 'a correction task\'s answer is {"no_hallucination": true or false}'
    return None


def gold_count(regular: int, rate: float) -> int:
    """Gold tasks to add to `regular` tasks so that they are `rate` of all of them."""
    if not 0 <= rate < 1:
        raise ValidationError("the gold rate is a share from 0 to below 1")
    return round(regular * rate / (1 - rate))


def _gold_copies(round_: Round, kind: str, size: int, wanted: int) -> list[tuple[Task, list[Candidate]]]:
    """Copies, into this round, of `wanted` tasks with known answers from earlier rounds (gold
    or adjudicated), picked at random but reproducibly (seeded by the round number). The
    copies' candidates are new rows of this round marked {"gold_of": original task id}."""
    if wanted <= 0:
        return []
    pool = list(
        Task.objects.filter(kind=kind, round__number__lt=round_.number, is_gold=False)
        .exclude(gold_answer={})
        .annotate(n=Count("slots"))
        .filter(n=size)
        .order_by("pk")
        .values_list("pk", flat=True)
    )
    chosen = sorted(random.Random(round_.number).sample(pool, min(wanted, len(pool))))
    copies = []
    next_index: dict[int, int] = {}
    for original in Task.objects.filter(pk__in=chosen).order_by("pk"):
        if original.prompt_id not in next_index:
            last = Candidate.objects.filter(round=round_, prompt_id=original.prompt_id).aggregate(m=Max("index"))["m"]
            next_index[original.prompt_id] = (last if last is not None else -1) + 1
        candidates = []
        for slot in TaskCandidate.objects.filter(task=original).select_related("candidate").order_by("position"):
            candidates.append(
                Candidate(
                    round=round_,
                    prompt_id=original.prompt_id,
                    index=next_index[original.prompt_id],
                    text=slot.candidate.text,
                    model_version=slot.candidate.model_version,
                    params={"gold_of": original.pk},
                )
            )
            next_index[original.prompt_id] += 1
        task = Task(
            round=round_, prompt_id=original.prompt_id, kind=kind, is_gold=True, gold_answer=original.gold_answer
        )
        copies.append((task, candidates))
    return copies


def create_tasks(
    round_: Round, *, kind: str, overlap: int = 1, per_task: int = 2, gold_rate: float = 0.0
) -> list[Task]:
    """Tasks over the round's candidates that no task of this kind covers yet (so it can be
    called again after more candidates arrive): a rank task per `per_task` candidates of a
    prompt, a correct task per candidate.

    With `gold_rate`, copies of tasks with known answers from earlier rounds are mixed in,
    spread evenly through the queue (it hands out tasks oldest first), so that they make up
    that share of the new tasks, as far as the pool of known answers allows."""
    if kind not in Task.Kind.values:
        raise ValidationError(f"unknown task kind {kind!r}; expected one of {', '.join(Task.Kind.values)}")
    if overlap < 1:
        raise ValidationError("overlap must be at least 1")
    if kind == Task.Kind.RANK and per_task < 2:
        raise ValidationError("a ranking task needs at least 2 candidates")
    size = per_task if kind == Task.Kind.RANK else 1
    covered = TaskCandidate.objects.filter(task__round=round_, task__kind=kind).values("candidate_id")
    free = (
        Candidate.objects.filter(round=round_)
        .exclude(pk__in=covered)
        .exclude(params__has_key="gold_of")
        .order_by("prompt_id", "index")
    )
    by_prompt: dict[int, list[Candidate]] = defaultdict(list)
    for candidate in free:
        by_prompt[candidate.prompt_id].append(candidate)
    regular = [
        (Task(round=round_, prompt_id=prompt_id, kind=kind, overlap=overlap), group[i : i + size])
        for prompt_id, group in by_prompt.items()
        for i in range(0, len(group) - size + 1, size)
    ]
    with transaction.atomic():
        gold = _gold_copies(round_, kind, size, gold_count(len(regular), gold_rate))
        Candidate.objects.bulk_create([c for _, candidates in gold for c in candidates])
        for task, _ in gold:
            task.overlap = overlap
        # Gold task i goes after regular task floor((i + 1/2) * len(regular) / len(gold)).
        merged: list[tuple[Task, list[Candidate]]] = []
        g = 0
        for j, item in enumerate(regular):
            merged.append(item)
            while g < len(gold) and (g + 0.5) * len(regular) / len(gold) < j + 1:
                merged.append(gold[g])
                g += 1
        merged.extend(gold[g:])
        tasks = Task.objects.bulk_create([task for task, _ in merged])
        TaskCandidate.objects.bulk_create(
            TaskCandidate(task=task, candidate=candidate, position=position)
            for task, (_, group) in zip(tasks, merged, strict=True)
            for position, candidate in enumerate(group)
        )
    return tasks


def mark_gold(task: Task, answer: dict[str, Any]) -> Task:
    """Make a task of this round a gold task with a known answer (e.g. from an oracle)."""
    problem = gold_answer_problem(task.kind, answer, task.slots.count())
    if problem:
        raise ValidationError(problem)
    Task.objects.filter(pk=task.pk).update(is_gold=True, gold_answer=answer)
    task.is_gold, task.gold_answer = True, answer
    return task


def adjudicate(task: Task, answer: dict[str, Any], *, by: Any) -> Task:
    """An admin's answer for a task the annotators disagreed on. It is kept on the task, and
    the task joins the pool from which later rounds draw their gold tasks."""
    if task.is_gold:
        raise ValidationError("a gold task already has its answer")
    problem = gold_answer_problem(task.kind, answer, task.slots.count())
    if problem:
        raise ValidationError(problem)
    now = timezone.now()
    Task.objects.filter(pk=task.pk).update(gold_answer=answer, adjudicated_by=by, adjudicated_at=now)
    task.gold_answer, task.adjudicated_by, task.adjudicated_at = answer, by, now
    return task


def make_round_tasks(round_: Round) -> int:
    """Once a round's candidates are in: its tasks of each of its kinds (gold mixed in at its
    rate), then open it if it asked to be. Again is harmless: covered candidates get no new
    task. Returns how many tasks were made."""
    made = 0
    for kind in round_.task_kinds:
        made += len(
            create_tasks(
                round_,
                kind=kind,
                overlap=round_.overlap,
                per_task=round_.candidates_per_prompt,
                gold_rate=round_.gold_rate,
            )
        )
    if round_.open_when_ready and round_.status == Round.Status.DRAFT:
        open_round(round_)
    return made


def start_round(
    *,
    policy_version: str,
    prompts: Sequence[Prompt],
    task_kinds: Sequence[str],
    candidates_per_prompt: int = 2,
    overlap: int = 1,
    gold_rate: float = 0.0,
    sampling: dict[str, Any] | None = None,
    created_by: Any = None,
) -> tuple[Round, Job]:
    """A new round over `prompts`: a draft with these settings whose candidate generation is
    queued; when every prompt has its candidates, the tasks are made and the round opens."""
    if not task_kinds or any(kind not in Task.Kind.values for kind in task_kinds):
        raise ValidationError(f"choose task kinds among {', '.join(Task.Kind.values)}")
    if Task.Kind.RANK in task_kinds and candidates_per_prompt < 2:
        raise ValidationError("ranking needs at least 2 candidates per prompt")
    if candidates_per_prompt < 1 or overlap < 1:
        raise ValidationError("K and the overlap must be at least 1")
    gold_count(0, gold_rate)
    if not prompts:
        raise ValidationError("a round needs at least one prompt")
    with transaction.atomic():
        round_ = create_round(policy_version=policy_version)
        round_.task_kinds = list(dict.fromkeys(task_kinds))
        round_.candidates_per_prompt = candidates_per_prompt
        round_.overlap = overlap
        round_.gold_rate = gold_rate
        round_.open_when_ready = True
        round_.sampling = sampling or {}
        round_.save()
        add_prompts_to_round(round_, prompts)
        job = queue_generation(round_, created_by=created_by)
        audit.record(
            AuditEvent.Action.ROUND,
            round_,
            by=created_by,
            change="started",
            policy=policy_version,
            prompts=len(prompts),
            task_kinds=round_.task_kinds,
        )
    return round_, job


def freeze_round(round_: Round) -> Round:
    """open or draft -> frozen: no more labels; its labels are final. Leases still out are
    ended when their holder next asks (annotation.queue)."""
    now = timezone.now()
    if (
        not Round.objects.filter(pk=round_.pk)
        .exclude(status=Round.Status.FROZEN)
        .update(status=Round.Status.FROZEN, frozen_at=now)
    ):
        raise ValidationError(f"{round_} is already frozen")
    round_.status, round_.frozen_at = Round.Status.FROZEN, now
    audit.record(AuditEvent.Action.ROUND, round_, change="frozen")
    return round_


def add_prompts_to_round(round_: Round, prompts: Sequence[Prompt]) -> int:
    """Put prompts in a round for candidate generation (again is harmless); how many were new."""
    with transaction.atomic():
        before = RoundPrompt.objects.filter(round=round_).count()
        RoundPrompt.objects.bulk_create(
            [RoundPrompt(round=round_, prompt=prompt) for prompt in prompts], ignore_conflicts=True
        )
        return RoundPrompt.objects.filter(round=round_).count() - before


def queue_generation(round_: Round, *, created_by: Any = None) -> Job:
    """Queue the generation of the round's missing candidates (on the `generate` queue)."""
    if round_.status == Round.Status.FROZEN:
        raise ValidationError(f"{round_} is frozen; it takes no more candidates")
    return enqueue_job(Job.Kind.GENERATE, queue="generate", params={"round_id": round_.pk}, created_by=created_by)


def queue_export(
    *,
    fmt: str,
    rounds: Sequence[int],
    aggregate: str = "none",
    min_gold_accuracy: float | None = None,
    include_gold: bool = False,
    created_by: Any = None,
) -> Job:
    """Queue an export (on the `export` queue); the selection is checked now, not in the worker."""

    known = set(Round.objects.filter(number__in=rounds).values_list("number", flat=True))
    if missing := sorted(set(rounds) - known):
        raise ValidationError(f"no round {', '.join(map(str, missing))}")
    try:
        check_format(fmt, Selection(tuple(sorted(set(rounds))), aggregate, min_gold_accuracy, include_gold))
    except ValueError as error:
        raise ValidationError(str(error)) from None
    params = {
        "format": fmt,
        "rounds": sorted(set(rounds)),
        "aggregate": aggregate,
        "min_gold_accuracy": min_gold_accuracy,
        "include_gold": include_gold,
    }
    with transaction.atomic():
        job = enqueue_job(Job.Kind.EXPORT, queue="export", params=params, created_by=created_by)
        audit.record(AuditEvent.Action.EXPORT, f"job {job.pk}", by=created_by, **params)
    return job


def open_round(round_: Round) -> Round:
    """draft -> open: its tasks are handed out from now on."""
    if not Round.objects.filter(pk=round_.pk, status=Round.Status.DRAFT).update(status=Round.Status.OPEN):
        round_.refresh_from_db()
        raise ValidationError(f"{round_} is {round_.status}; only a draft round can be opened")
    round_.status = Round.Status.OPEN
    audit.record(AuditEvent.Action.ROUND, round_, change="opened")
    return round_


# ---------------------------------------------------------------------------------------
# Submissions. Each runs in one transaction with the assignment row locked (PostgreSQL) or
# the write lock held (SQLite). A retry of a submission that went through returns what was
# stored, with created=False, and writes nothing: the first submission wins.


@dataclass(frozen=True)
class Shown:
    """A candidate as the task showed it."""

    candidate_id: int
    text: str


def _begin_submission(annotator: Any, assignment_id: int, kind: str) -> tuple[list[Shown], Any]:
    """Inside the caller's transaction: mark the annotator's live lease submitted and return
    the task's candidates in order, or return (_, stored result) for a submission that
    already went through. Raises Assignment.DoesNotExist for anyone else's assignment and
    Refused for a lease that is over, a task of another kind or a closed round.

    The fast path is one conditional UPDATE: it both checks the lease (the holder's, live,
    not yet submitted) and locks the row, so a concurrent retry waits for this transaction
    and then finds the assignment submitted. Anything refused afterwards rolls it back.
    """
    now = timezone.now()
    won = Assignment.objects.filter(
        pk=assignment_id, annotator=annotator, status=Assignment.Status.LEASED, expires_at__gt=now
    ).update(status=Assignment.Status.SUBMITTED, finished_at=now)
    if not won:
        assignment = own_assignment(annotator, assignment_id, lock=True)
        if assignment.task.kind != kind:
            raise Refused(f"this assignment is a {assignment.task.kind} task; submit a {assignment.task.kind} result")
        if assignment.status == Assignment.Status.SUBMITTED:
            return [], getattr(assignment, "judgement" if kind == Task.Kind.RANK else "correction")
        check_live(assignment, now)
        raise Refused("the lease on this task ended while the request was being checked; ask for the next one")
    rows = list(
        TaskCandidate.objects.filter(task__assignments__pk=assignment_id)
        .order_by("position")
        .values_list("task__kind", "task__round__status", "task__round__number", "candidate_id", "candidate__text")
    )
    if not rows:
        raise Refused("this task has no candidates to judge; ask for the next one")
    task_kind, round_status, round_number = rows[0][:3]
    if task_kind != kind:
        raise Refused(f"this assignment is a {task_kind} task; submit a {task_kind} result")
    if round_status != Round.Status.OPEN:
        raise Refused(f"Round {round_number} is {round_status}; it takes no more labels")
    return [Shown(candidate_id, text) for *_, candidate_id, text in rows], None


def submit_judgement(
    annotator: Any,
    assignment_id: int,
    *,
    ranking: Sequence[int],
    hallucination_tie: bool = False,
    hallucinated: Sequence[int] = (),
    rationale: str = "",
    time_spent_ms: int = 0,
) -> tuple[Judgement, bool]:
    """Store a ranking of the task's candidates, best first (LLaVA-RLHF, METHODS.md 1a):
    ordered by fewer hallucinations, or, when that was a tie (`hallucination_tie`), by
    helpfulness. `hallucinated` flags the candidates that hallucinate."""
    with transaction.atomic():
        slots, stored = _begin_submission(annotator, assignment_id, Task.Kind.RANK)
        if stored is not None:
            return stored, False
        shown = [slot.candidate_id for slot in slots]
        if sorted(ranking) != sorted(shown):
            raise Refused(f"the ranking must order exactly this task's candidates {sorted(shown)}", status=400)
        unknown = set(hallucinated) - set(shown)
        if unknown:
            raise Refused(f"flagged candidates {sorted(unknown)} are not part of this task", status=400)
        judgement = Judgement.objects.create(
            assignment_id=assignment_id,
            ranking=list(ranking),
            preferred_id=ranking[0],
            rejected_id=ranking[-1],
            hallucination_tie=hallucination_tie,
            hallucinated=sorted(set(hallucinated)),
            rejected_hallucinates=ranking[-1] in set(hallucinated),
            rationale=rationale,
            time_spent_ms=time_spent_ms,
        )
    return judgement, True


def preview_spans(annotator: Any, assignment_id: int, corrected: str) -> list[dict[str, Any]]:
    """The changed spans the server would store for this correction (the page's live diff)."""
    slot = (
        TaskCandidate.objects.filter(task__assignments__pk=assignment_id, task__assignments__annotator=annotator)
        .select_related("task", "candidate")
        .first()
    )
    if slot is None:
        raise Assignment.DoesNotExist
    if slot.task.kind != Task.Kind.CORRECT:
        raise Refused("only a correction task has a diff")
    return [span.as_dict() for span in span_diff.changed_spans(slot.candidate.text, corrected)]


def submit_correction(
    annotator: Any,
    assignment_id: int,
    *,
    corrected: str | None,
    no_hallucination: bool = False,
    span_categories: Sequence[str | None] = (),
    time_spent_ms: int = 0,
) -> tuple[Correction, bool]:
    """Store an RLHF-V correction (METHODS.md 1b): chosen = corrected, rejected = original.

    The changed spans are computed here from the two texts; `span_categories`, when given,
    has one error category (or None) per span, in order."""
    with transaction.atomic():
        slots, stored = _begin_submission(annotator, assignment_id, Task.Kind.CORRECT)
        if stored is not None:
            return stored, False
        candidate = slots[0]
        original = candidate.text
        if no_hallucination:
            if corrected is not None and corrected != original:
                raise Refused("a response marked 'no hallucination' must be left unchanged", status=400)
            corrected, changed = original, []
        else:
            if corrected is None or not corrected.strip():
                raise Refused("the corrected response is empty; correct the wrong words, do not delete everything", 400)
            changed = span_diff.changed_spans(original, corrected)
            if not changed:
                raise Refused("no word was changed; if nothing is wrong, mark it 'no hallucination'", status=400)
        if span_categories and len(span_categories) != len(changed):
            raise Refused(
                f"{len(span_categories)} categories for {len(changed)} changed spans; "
                "the categories must follow the spans of the submitted text",
                status=400,
            )
        categories = list(span_categories) or [None] * len(changed)
        for category in categories:
            if category is not None and category not in Correction.Category.values:
                raise Refused(f"unknown category {category!r}", status=400)
        correction = Correction.objects.create(
            assignment_id=assignment_id,
            candidate_id=candidate.candidate_id,
            original=original,
            corrected=corrected,
            no_hallucination=no_hallucination,
            spans=[span.as_dict() | {"category": category} for span, category in zip(changed, categories, strict=True)],
            time_spent_ms=time_spent_ms,
        )
    return correction, True
