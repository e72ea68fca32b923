"""Candidate generation for a round: the round's policy answers each of its prompts K times.

Runs inside the `generate_candidates` Celery task. HTTP requests go to the server from a
bounded pool of threads; every database write happens on the calling thread, one prompt
per transaction, so a crash loses at most the requests in flight and never leaves a prompt
half-stored. It is safe to run again: it fills only what is missing (prompts not done, and
within a prompt only the missing candidates), and the unique (round, prompt, index) key
refuses duplicates even from two runs at once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from django.db import IntegrityError, transaction
from django.db.models import Count
from django.utils import timezone

from annotation.models import Candidate, Round, RoundPrompt
from annotation.queue import Refused
from models.registry import Registry, RegistryError
from models.server import BASE_NAME
from models.serving import Sampling, ServingClient, ServingError

log = logging.getLogger(__name__)

# LLaVA-RLHF sampled its candidates at temperature 0.7 (METHODS.md 1a).
DEFAULT_SAMPLING = {"temperature": 0.7, "top_p": 1.0, "max_tokens": 128}


@dataclass
class GenerationReport:
    prompts: int = 0
    done: int = 0
    failed: int = 0
    candidates_created: int = 0
    completion_tokens: int = 0
    errors: dict[int, str] = field(default_factory=dict)  # prompt id -> error

    def as_dict(self) -> dict[str, Any]:
        return {
            "prompts": self.prompts,
            "done": self.done,
            "failed": self.failed,
            "candidates_created": self.candidates_created,
            "completion_tokens": self.completion_tokens,
            "errors": {str(k): v for k, v in list(self.errors.items())[:20]},
        }


def served_model(round_: Round, registry: Registry, client: ServingClient) -> str:
    """The `model=` name that serves the round's policy, loading its adapter if the server
    does not have it yet."""
    if not round_.policy_version:
        raise Refused(f"{round_} names no policy version to generate with", status=400)
    try:
        version = registry.get(round_.policy_version)
    except RegistryError as error:
        raise Refused(str(error), status=400) from None
    if version.adapter is None:
        return BASE_NAME
    if version.name not in client.models():
        client.load_adapter(version.name, str(registry.adapter_path(version.name)), replace=False)
    return version.name


def _sampling(round_: Round, n: int) -> Sampling:
    params = {**DEFAULT_SAMPLING, **(round_.sampling or {})}
    return Sampling(
        n=n,
        temperature=float(params["temperature"]),
        top_p=float(params["top_p"]),
        max_tokens=int(params["max_tokens"]),
        seed=params.get("seed"),
    )


def _store(round_: Round, round_prompt: RoundPrompt, texts: list[str], model: str, sampling: Sampling) -> int:
    """Store up to the missing number of candidates and mark the prompt done, atomically."""
    with transaction.atomic():
        existing = list(
            Candidate.objects.filter(round=round_, prompt_id=round_prompt.prompt_id).values_list("index", flat=True)
        )
        room = max(0, round_.candidates_per_prompt - len(existing))
        first = max(existing, default=-1) + 1
        params = {"model": model, "temperature": sampling.temperature, "top_p": sampling.top_p}
        params |= {"max_tokens": sampling.max_tokens, "seed": sampling.seed}
        Candidate.objects.bulk_create(
            Candidate(
                round=round_,
                prompt_id=round_prompt.prompt_id,
                index=first + offset,
                text=text,
                model_version=round_.policy_version,
                params=params,
            )
            for offset, text in enumerate(texts[:room])
        )
        RoundPrompt.objects.filter(pk=round_prompt.pk).update(
            status=RoundPrompt.Status.DONE, error="", attempts=round_prompt.attempts + 1, updated_at=timezone.now()
        )
    return min(room, len(texts))


def generate_round(
    round_id: int,
    *,
    client: ServingClient,
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

    def ask(round_prompt: RoundPrompt, n: int) -> tuple[list[str], int]:
        prompt = round_prompt.prompt
        image = Path(prompt.image.file.path).read_bytes()
        completion = client.chat(
            model=model, prompt=prompt.text, image=image, context=prompt.context, sampling=_sampling(round_, n)
        )
        # vLLM hands back the text after the prompt, often with its leading space.
        return [text.strip() for text in completion.texts], completion.completion_tokens

    with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="generate") as pool:
        futures: dict[Future[tuple[list[str], int]], RoundPrompt] = {}
        for round_prompt in todo:
            missing = round_.candidates_per_prompt - have.get(round_prompt.prompt_id, 0)
            if missing <= 0:
                _store(round_, round_prompt, [], model, _sampling(round_, 1))
                report.done += 1
                continue
            futures[pool.submit(ask, round_prompt, missing)] = round_prompt
        for future in as_completed(futures):
            round_prompt = futures[future]
            try:
                texts, tokens = future.result()
                report.candidates_created += _store(round_, round_prompt, texts, model, _sampling(round_, 1))
                report.completion_tokens += tokens
                report.done += 1
            except (ServingError, OSError, IntegrityError) as error:
                message = f"{type(error).__name__}: {error}"[:2000]
                RoundPrompt.objects.filter(pk=round_prompt.pk).update(
                    status=RoundPrompt.Status.FAILED,
                    error=message,
                    attempts=round_prompt.attempts + 1,
                    updated_at=timezone.now(),
                )
                report.failed += 1
                report.errors[round_prompt.prompt_id] = message
                log.warning("round %s prompt %s: %s", round_.number, round_prompt.prompt_id, message)
            if progress is not None:
                progress(report.done + report.failed, report.prompts)
    return report
