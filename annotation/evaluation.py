"""Evaluation on the database's held-out prompts, through the vLLM server.

`export_heldout` writes the held-out prompts (their images, texts and the images' known
facts) as a held-out folder (contract/heldout.py); `evaluate_version` has the trainer's
command line (`python -m rlhf.cli evaluate`, in a child process: the web app never loads
torch) answer it through the server as a registered version, the version's adapter loaded
under a temporary name and unloaded after (the newest registered reward model, if any,
scores the answers too), and records the result on the version
(Registry.record_evaluation). `manage.py evaluate` and `train_round` run this same code.

What an item is scored as comes from the database: the prompt's `meta.kind` ("describe" or
"question"; a prompt whose meta holds an `answer` is a question, any other a description),
`meta.answer`, and the image's `facts`: `classes` (or `objects`, when it is a list of
names) for the objects in it, `captions` for its reference captions, `vocabulary` for the
names they are spelled in ("coco" when absent; rlhf/vocabularies.py).
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from django.conf import settings

from annotation.deployment import serving_client, vllm_urls
from annotation.errors import Invalid, Refused
from annotation.models import Prompt
from contract.heldout import Item, Kind, image_name, write_heldout
from contract.launch import ONE_PROCESS, Launch
from models.registry import Registry, RegistryError
from models.server import BASE_NAME, check_served_base
from models.serving import ServingError
from models.staging import staged

REPO = Path(__file__).resolve().parent.parent
DEFAULT_VOCABULARY = "coco"
SPLITS = (Prompt.Split.HELDOUT, Prompt.Split.TRAIN)


def _objects(facts: dict[str, Any]) -> list[str]:
    named = facts.get("classes")
    if named is None and all(isinstance(o, str) for o in facts.get("objects") or []):
        named = facts.get("objects")
    return [str(name) for name in named or []]


def _item(prompt: Prompt) -> tuple[Item, bytes]:
    facts = prompt.image.facts if isinstance(prompt.image.facts, dict) else {}
    meta = prompt.meta if isinstance(prompt.meta, dict) else {}
    answer = meta.get("answer")
    kind: Kind = "question" if meta.get("kind") == "question" or answer is not None else "describe"
    if meta.get("kind") == "describe":
        kind = "describe"
    with prompt.image.file.open("rb") as handle:
        data = handle.read()
    suffix = prompt.image.file.name.rsplit(".", 1)[-1]
    item = Item(
        id=str(prompt.pk),
        image=image_name(data, suffix),
        prompt=prompt.text,
        kind=kind,
        answer="" if answer is None else str(answer),
        objects=tuple(_objects(facts)),
        captions=tuple(str(c) for c in facts.get("captions") or [] if isinstance(c, str)),
        context=tuple(prompt.context or ()),
    )
    return item, data


def heldout_prompts(split: str = Prompt.Split.HELDOUT, limit: int | None = None) -> list[Prompt]:
    if split not in SPLITS:
        raise Invalid(f"prompts must be one of {', '.join(SPLITS)}, got {split!r}")
    prompts = Prompt.objects.filter(split=split).select_related("image").order_by("pk")
    return list(prompts[:limit] if limit else prompts)


def vocabulary_of(prompts: list[Prompt]) -> str:
    found = {(p.image.facts or {}).get("vocabulary", DEFAULT_VOCABULARY) for p in prompts}
    if len(found) > 1:
        raise Invalid(f"the prompts' images name objects in more than one vocabulary ({', '.join(sorted(found))})")
    return found.pop() if found else DEFAULT_VOCABULARY


def export_heldout(out: Path, *, split: str = Prompt.Split.HELDOUT, limit: int | None = None) -> dict[str, Any]:
    """Write the split's prompts (the first `limit`, oldest first) as a held-out folder at
    `out`, whole or not at all; returns its manifest. Refused when there are none."""
    prompts = heldout_prompts(split, limit)
    if not prompts:
        raise Refused(
            f"no {split} prompts to evaluate on: import some (import_prompts with split {split}, import_coco, "
            "import_toyworld)"
        )
    vocabulary = vocabulary_of(prompts)

    def items() -> Iterator[tuple[Item, bytes]]:
        for prompt in prompts:
            yield _item(prompt)

    with staged(Path(out), replace=True) as folder:
        manifest = write_heldout(folder, vocabulary, items())
    return manifest


def evaluate_version(
    name: str,
    heldout: Path,
    out: Path,
    *,
    log: Path,
    registry: Registry | None = None,
    adapter: Path | None = None,
    parent_pid: int | None = None,
) -> dict[str, Any]:
    """Evaluate registered version `name` (or, with `adapter`, that adapter on the served
    base: a candidate not registered yet) on the held-out folder through the vLLM server;
    the result (contract.heldout.Evaluation) is written to `out`. Returns it as a dict."""
    registry = registry or Registry(settings.FACTLOOP_MODEL_DIR)
    if adapter is None:
        try:
            version = registry.get(name)
        except RegistryError as error:
            raise Invalid(str(error)) from None
        if version.kind != "policy":
            raise Invalid(f"version {name!r} is a {version.kind} model, not a policy")
        adapter = registry.adapter_path(name)
        registered = True
    else:
        registered = False  # a candidate adapter on the served base, named `name` for its label
    if not out.is_file():
        if registered:
            try:
                with serving_client(timeout=30.0) as client:
                    check_served_base(client, registry, name)
            except (RegistryError, ServingError) as error:
                raise Invalid(str(error)) from None
        args = ["evaluate", "--data", str(heldout), "--server", ",".join(vllm_urls()), "--served", BASE_NAME]
        args += ["--label", name, "--out", str(out)]
        if adapter is not None:
            args += ["--adapter", str(adapter)]
        rewards = [v for v in registry if v.kind == "reward"]
        if rewards:  # the newest registered reward model scores the answers too
            args += ["--reward-model", str(registry.path_of(rewards[-1].name))]
        run_rlhf(args, log, parent_pid=parent_pid)
    return json.loads(out.read_text())


def record(registry: Registry, name: str, evaluation: Path) -> None:
    registry.record_evaluation(name, json.loads(evaluation.read_text()))


class RlhfFailed(Exception):
    """A `python -m rlhf.cli` child exited non-zero; the message holds its output's tail."""

    def __init__(self, message: str, returncode: int) -> None:
        super().__init__(message)
        self.returncode = returncode


def run_rlhf(args: list[str], log: Path, *, parent_pid: int | None = None, launch: Launch = ONE_PROCESS) -> None:
    """`python -m rlhf.cli ARGS` in a child process (or, with an accelerate `launch`, in
    several), its output appended to `log`; the children die with `parent_pid` (a worker)
    when one is named."""
    command = launch.command(args, parent_pid=parent_pid)
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as output:
        output.write(f"\n$ {' '.join(command)}\n")
        output.flush()
        finished = subprocess.run(command, cwd=REPO, stdout=output, stderr=subprocess.STDOUT, check=False)
    if finished.returncode != 0:
        tail = log.read_text(errors="replace")[-2000:]
        raise RlhfFailed(f"rlhf.cli {args[0]} exited with {finished.returncode}:\n{tail}", finished.returncode)
