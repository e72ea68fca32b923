"""The whole loop on the embedded default, for `manage.py demo --loop` and the end-to-end test.

Round 1: toy-world prompts (a description and a question per training scene) get candidates
from the tiny base policy served by vLLM; simulated annotators label them over the HTTP API;
`train_round` trains with DDPO, evaluates, registers and hot-loads the new policy, and opens
round 2 on it, whose candidates the worker generates. Each round's policy is measured on the
same held-out scenes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from django.conf import settings

from annotation.data.images import add_image, add_prompt
from annotation.loop.deployment import register_model
from annotation.models import Prompt, Round
from models.registry import Registry, UnknownVersion
from testbed.demo import TOY_DDPO
from testbed.tiny import SHIPPED, TinySpec, build_toy_model, problems
from testbed.toyworld import sample_scenes
from testbed.toyworld.render import png_of_scene
from testbed.toyworld.world import make_question

BASE_VERSION = "tiny-base"
TOY_CONFIG = TOY_DDPO
ROUND_SEED = 4321  # the loop's training scenes (held-out scenes have their own seed and prefix)


def ensure_base_policy() -> str:
    """The shipped tiny base policy, copied under FACTLOOP_MODEL_DIR and registered. It is
    never rebuilt here: a shipped model that no longer matches its spec stops the demo."""
    from django.core.management.base import CommandError

    found = problems(SHIPPED, TinySpec())
    if found:
        raise CommandError(
            f"the shipped tiny model at {SHIPPED} is not a build of the current spec ({'; '.join(found)}); "
            "rebuild it with `make tiny` (about 10 minutes)"
        )
    folder = Path(settings.FACTLOOP_MODEL_DIR) / "tiny-base"
    build_toy_model(folder)  # a copy of the shipped files, or the identical copy already there
    registry = Registry(settings.FACTLOOP_MODEL_DIR)
    try:
        registry.get(BASE_VERSION)
    except UnknownVersion:
        register_model(BASE_VERSION, str(folder), registry=registry)  # as `manage.py register_model` does
        registry.set_status(BASE_VERSION, "serving")
    return str(folder)


def toy_prompts(scenes: int, *, seed: int = ROUND_SEED) -> list[Prompt]:
    """A description and a question per toy scene, as training prompts (reused if there)."""
    import random

    rng = random.Random(seed)
    prompts = []
    size = TinySpec().image_size
    for scene in sample_scenes(seed, scenes, prefix="loop"):
        image = add_image(png_of_scene(scene, size), facts=scene.facts(), source=scene.scene_id)
        prompts.append(_prompt(image, "Describe the image."))
        question = make_question(rng, scene, rng.choice(("count", "exist", "color", "spatial")))
        if question is not None:
            prompts.append(_prompt(image, question.text))
    return prompts


def _prompt(image: Any, text: str) -> Prompt:
    existing = Prompt.objects.filter(image=image, text=text).first()
    return existing or add_prompt(image, text)


def wait_open(round_: Round, timeout: float, check: Callable[[], None] | None = None) -> Round:
    """Until the round's candidates are in and it opens (the worker's generation job)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        round_.refresh_from_db()
        if round_.status == Round.Status.OPEN:
            return round_
        if check:
            check()
        time.sleep(1)
    raise TimeoutError(f"{round_} did not open within {timeout:.0f} s (is the worker generating?)")
