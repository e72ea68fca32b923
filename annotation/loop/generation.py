"""A round started (`start_round`) and its candidates generated: the round's policy answers
each of its prompts K times; then the AI labeller (if any) labels them and the round's tasks
are made (`make_round_tasks`).

Runs inside the `generate_candidates` Celery task. HTTP requests go to the server from a
bounded pool of threads; every database write happens on the calling thread, a batch of
finished prompts per transaction, so a crash loses at most the requests in flight and
never leaves a prompt half-stored. It is safe to run again: it fills only what is missing (prompts not done, and
within a prompt only the missing candidates), and the unique (round, prompt, index) key
refuses duplicates even from two runs at once.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import ALL_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.db.models import Count, F
from django.utils import timezone

from annotation.jobs.lifecycle import enqueue_job
from annotation.labeling.rounds import (
    add_prompts_to_round,
    create_round,
    create_tasks,
    distinct_key,
    gold_count,
    open_round,
)
from annotation.loop.ai_labels import check_settings, label_round, selected_prompts
from annotation.loop.deployment import vllm_urls
from annotation.models import AuditEvent, Candidate, Job, Prompt, Round, RoundPrompt, Task
from annotation.rules import audit
from annotation.rules.datasets import choose_dataset
from annotation.rules.errors import Invalid, Refused
from models.registry import Registry, RegistryError
from models.replicas import ReplicaPool, Serving
from models.server import serve_version
from models.serving import Sampling, ServingError

log = logging.getLogger(__name__)

STORE_EVERY_SECONDS = 1.0
# LLaVA-RLHF sampled its candidates at temperature 0.7 (docs/methods.md 1a).
DEFAULT_SAMPLING = {"temperature": 0.7, "top_p": 1.0, "max_tokens": 128}


@dataclass
class GenerationReport:
    prompts: int = 0
    done: int = 0
    failed: int = 0
    candidates_created: int = 0
    completion_tokens: int = 0
    redrawn: int = 0  # candidates asked for again for repeating another of their prompt's
    tasks_created: int = 0
    ai_labelled: int = 0  # candidates the round's AI labeller labelled
    errors: dict[int, str] = field(default_factory=dict)  # prompt id -> error
    replicas: list[dict[str, Any]] = field(default_factory=list)  # per vLLM replica: served, failures

    def as_dict(self) -> dict[str, Any]:
        return {
            "prompts": self.prompts,
            "done": self.done,
            "failed": self.failed,
            "candidates_created": self.candidates_created,
            "completion_tokens": self.completion_tokens,
            "redrawn": self.redrawn,
            "tasks_created": self.tasks_created,
            "ai_labelled": self.ai_labelled,
            "errors": {str(k): v for k, v in list(self.errors.items())[:20]},
            **({"replicas": self.replicas} if self.replicas else {}),
        }


def served_model(round_: Round, registry: Registry, client: Serving) -> str:
    """The `model=` name that serves the round's policy, loading its adapter if the server
    does not have it yet."""
    if not round_.policy_version:
        raise Invalid(f"{round_} names no policy version to generate with")
    try:
        return serve_version(client, registry, round_.policy_version)
    except RegistryError as error:
        raise Invalid(str(error)) from None


def _sampling(round_: Round, n: int) -> Sampling:
    params = {**DEFAULT_SAMPLING, **(round_.sampling or {})}
    return Sampling(
        n=n,
        temperature=float(params["temperature"]),
        top_p=float(params["top_p"]),
        max_tokens=int(params["max_tokens"]),
        seed=params.get("seed"),
    )


Answers = tuple[list[str], list[int]]  # a prompt's new texts, and how often each was drawn again


def _store(round_: Round, finished: list[tuple[RoundPrompt, Answers]], model: str, sampling: Sampling) -> int:
    """Store the candidates of finished prompts (up to each prompt's missing number) and mark
    them done, all in one transaction; the number of candidates created.

    One transaction per batch of finished prompts rather than per prompt: a handful of
    queries whatever the batch size."""
    prompt_ids = [round_prompt.prompt_id for round_prompt, _ in finished]
    # A response past the limit is cut there (its full length recorded): an annotator can
    # still correct it, and nothing downstream meets an unbounded text.
    limit = settings.FACTLOOP_MAX_RESPONSE_CHARS
    params = {"model": model, "temperature": sampling.temperature, "top_p": sampling.top_p}
    params |= {"max_tokens": sampling.max_tokens, "seed": sampling.seed}
    with transaction.atomic():
        existing: dict[int, list[int]] = {prompt_id: [] for prompt_id in prompt_ids}
        for prompt_id, index in Candidate.objects.filter(round=round_, prompt_id__in=prompt_ids).values_list(
            "prompt_id", "index"
        ):
            existing[prompt_id].append(index)
        rows = []
        for round_prompt, (texts, redraws) in finished:
            have = existing[round_prompt.prompt_id]
            room = max(0, round_.candidates_per_prompt - len(have))
            first = max(have, default=-1) + 1
            rows += [
                Candidate(
                    round=round_,
                    prompt_id=round_prompt.prompt_id,
                    index=first + offset,
                    text=text[:limit],
                    model_version=round_.policy_version,
                    params=params
                    | ({"clipped_from": len(text)} if len(text) > limit else {})
                    | ({"redraws": redraws[offset]} if redraws[offset] else {}),
                )
                for offset, text in enumerate(texts[:room])
            ]
        Candidate.objects.bulk_create(rows)
        RoundPrompt.objects.filter(pk__in=[round_prompt.pk for round_prompt, _ in finished]).update(
            status=RoundPrompt.Status.DONE, error="", attempts=F("attempts") + 1, updated_at=timezone.now()
        )
    return len(rows)


def _fail(round_prompt: RoundPrompt, error: Exception) -> str:
    message = f"{type(error).__name__}: {error}"[:2000]
    RoundPrompt.objects.filter(pk=round_prompt.pk).update(
        status=RoundPrompt.Status.FAILED, error=message, attempts=F("attempts") + 1, updated_at=timezone.now()
    )
    return message


def generate_round(
    round_id: int,
    *,
    client: Serving,
    registry: Registry,
    concurrency: int,
    progress: Callable[[int, int], None] | None = None,
) -> GenerationReport:
    round_ = Round.objects.get(pk=round_id)
    model = served_model(round_, registry, client)
    todo = list(
        RoundPrompt.objects.filter(round=round_)
        .exclude(status=RoundPrompt.Status.DONE)
        .select_related("prompt__image")
        .order_by("pk")
    )
    have = dict(
        Candidate.objects.filter(round=round_).values("prompt_id").annotate(n=Count("pk")).values_list("prompt_id", "n")
    )
    report = GenerationReport(prompts=RoundPrompt.objects.filter(round=round_).count())
    already = report.prompts - len(todo)
    report.done = already
    if progress is not None:
        progress(already, report.prompts)

    # A round with ranking tasks asks again for a candidate that repeats another of its
    # prompt's (a ranking of identical answers teaches nothing), with a new seed each time.
    tries = settings.FACTLOOP_DISTINCT_TRIES if Task.Kind.RANK in round_.task_kinds else 0
    stored: dict[int, list[str]] = defaultdict(list)
    for prompt_id, text in Candidate.objects.filter(
        round=round_, prompt_id__in=[rp.prompt_id for rp in todo]
    ).values_list("prompt_id", "text"):
        stored[prompt_id].append(text)

    def ask(round_prompt: RoundPrompt, n: int) -> tuple[Answers, int]:
        prompt = round_prompt.prompt
        image = Path(prompt.image.file.path).read_bytes()

        def draw(count: int, attempt: int) -> tuple[list[str], int]:
            sampling = _sampling(round_, count)
            if attempt and sampling.seed is not None:
                sampling = replace(sampling, seed=sampling.seed + attempt * REDRAW_SEED_STEP)
            completion = client.chat(
                model=model, prompt=prompt.text, image=image, context=prompt.context, sampling=sampling
            )
            # vLLM hands back the text after the prompt, often with its leading space.
            # Model output is untrusted text; PostgreSQL text cannot hold NUL, which an untrained
            # adapter can emit, so it becomes U+FFFD (the replacement character).
            return [text.replace("\x00", "\ufffd").strip() for text in completion.texts], completion.completion_tokens

        texts, tokens = draw(n, 0)
        redraws = [0] * len(texts)
        for attempt in range(1, tries + 1):
            again = repeats(stored.get(round_prompt.prompt_id, []), texts)
            if not again:
                break
            fresh, spent = draw(len(again), attempt)
            tokens += spent
            for index, text in zip(again, fresh, strict=False):
                texts[index] = text
                redraws[index] += 1
        return (texts, redraws), tokens

    sampling = _sampling(round_, 1)
    with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="generate") as pool:
        try:
            _collect(round_, todo, have, ask, pool, model, sampling, report, progress)
        except BaseException:
            # Stopped (the job cancelled or taken back): requests not yet sent are dropped.
            pool.shutdown(wait=False, cancel_futures=True)
            raise
    if isinstance(client, ReplicaPool):
        report.replicas = client.stats()
    if not RoundPrompt.objects.filter(round=round_).exclude(status=RoundPrompt.Status.DONE).exists():
        # Every prompt has its candidates: the AI labeller's feedback (if the round has
        # one), then the round's tasks (and its opening, if asked).
        round_.refresh_from_db()
        report.ai_labelled = label_round(round_, client=client, registry=registry, urls=vllm_urls())
        report.tasks_created = make_round_tasks(round_)
    return report


def repeats(stored: Sequence[str], texts: Sequence[str]) -> list[int]:
    """The indices of `texts` that repeat (`distinct_key`) a stored candidate or an earlier text."""
    seen = {distinct_key(text) for text in stored}
    out = []
    for index, text in enumerate(texts):
        key = distinct_key(text)
        if key in seen:
            out.append(index)
        seen.add(key)
    return out


IDENTICAL_RANKINGS = tuple(value for value, _ in Round._meta.get_field("identical_rankings").choices or ())
REDRAW_SEED_STEP = 7919  # a round with a fixed seed asks again with seed + attempt * this


def _collect(
    round_: Round,
    todo: list[RoundPrompt],
    have: dict[int, int],
    ask: Callable[[RoundPrompt, int], tuple[Answers, int]],
    pool: ThreadPoolExecutor,
    model: str,
    sampling: Sampling,
    report: GenerationReport,
    progress: Callable[[int, int], None] | None,
) -> None:
    """Send the missing requests to the pool and store their answers as they come."""
    futures: dict[Future[tuple[Answers, int]], RoundPrompt] = {}
    complete: list[tuple[RoundPrompt, Answers]] = []
    for round_prompt in todo:
        missing = round_.candidates_per_prompt - have.get(round_prompt.prompt_id, 0)
        if missing <= 0:
            complete.append((round_prompt, ([], [])))
        else:
            futures[pool.submit(ask, round_prompt, missing)] = round_prompt
    if complete:
        _store(round_, complete, model, sampling)
        report.done += len(complete)
    pending = set(futures)
    while pending:
        # Store what finished in the last second as one batch: a write costs a few
        # scheduling round-trips on a machine busy with inference, so few writes of many
        # prompts keep up where one write per prompt fell behind (bench/generation.py).
        finished, pending = wait(pending, timeout=STORE_EVERY_SECONDS, return_when=ALL_COMPLETED)
        batch = []
        for future in finished:
            round_prompt = futures[future]
            try:
                answers, tokens = future.result()
            except (ServingError, OSError) as error:
                report.errors[round_prompt.prompt_id] = _fail(round_prompt, error)
                report.failed += 1
                log.warning("round %s prompt %s: %s", round_.number, round_prompt.prompt_id, error)
                continue
            batch.append((round_prompt, answers))
            report.completion_tokens += tokens
            report.redrawn += sum(answers[1])
        if batch:
            try:
                report.candidates_created += _store(round_, batch, model, sampling)
                report.done += len(batch)
            except IntegrityError as error:  # a concurrent run stored some of these first
                for round_prompt, _ in batch:
                    report.errors[round_prompt.prompt_id] = _fail(round_prompt, error)
                report.failed += len(batch)
        if progress is not None:
            progress(report.done + report.failed, report.prompts)


def make_round_tasks(round_: Round) -> int:
    """Once a round's candidates are in: its tasks of each of its kinds (gold mixed in at its
    rate), then open it if it asked to be. Again is harmless: covered candidates get no new
    task. Returns how many tasks were made."""
    made = 0
    chosen = selected_prompts(round_)
    for kind in round_.task_kinds:
        made += len(
            create_tasks(
                round_,
                kind=kind,
                overlap=round_.overlap,
                per_task=round_.candidates_per_prompt,
                gold_rate=round_.gold_rate,
                prompts=chosen,
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
    ai_labeller: str = "",
    selection: str = "all",
    human_prompts: int | None = None,
    heldout: str = "",
    identical_rankings: str = "convert",
    created_by: Any = None,
) -> tuple[Round, Job]:
    """A new round over `prompts`: a draft with these settings whose candidate generation is
    queued; when every prompt has its candidates, the AI labeller (if any) labels them, the
    tasks are made (for the selected prompts, with a selection) and the round opens."""
    if not task_kinds or any(kind not in Task.Kind.values for kind in task_kinds):
        raise ValidationError(f"choose task kinds among {', '.join(Task.Kind.values)}")
    if Task.Kind.RANK in task_kinds and candidates_per_prompt < 2:
        raise ValidationError("ranking needs at least 2 candidates per prompt")
    if candidates_per_prompt < 1 or overlap < 1:
        raise ValidationError("K and the overlap must be at least 1")
    gold_count(0, gold_rate)
    if identical_rankings not in IDENTICAL_RANKINGS:
        raise ValidationError(f"identical_rankings is one of {', '.join(IDENTICAL_RANKINGS)}")
    if not prompts:
        raise ValidationError("a round needs at least one prompt")
    try:
        check_settings(ai_labeller, selection, human_prompts)
    except Invalid as error:
        raise ValidationError(error.message) from None
    try:
        dataset = choose_dataset(heldout) if heldout else None
    except Refused as error:
        raise ValidationError(error.message) from None
    with transaction.atomic():
        round_ = create_round(policy_version=policy_version, heldout=dataset)
        round_.task_kinds = list(dict.fromkeys(task_kinds))
        round_.candidates_per_prompt = candidates_per_prompt
        round_.overlap = overlap
        round_.gold_rate = gold_rate
        round_.open_when_ready = True
        round_.sampling = sampling or {}
        round_.ai_labeller, round_.selection, round_.human_prompts = ai_labeller, selection, human_prompts
        round_.identical_rankings = identical_rankings
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


def queue_generation(round_: Round, *, created_by: Any = None) -> Job:
    """Queue the generation of the round's missing candidates (on the `generate` queue)."""
    if round_.status == Round.Status.FROZEN:
        raise ValidationError(f"{round_} is frozen; it takes no more candidates")
    return enqueue_job(Job.Kind.GENERATE, queue="generate", params={"round_id": round_.pk}, created_by=created_by)
