"""Evaluation on a held-out dataset of the database, through the vLLM server.

`export_heldout` writes one named dataset's prompts (their images, texts and the images'
known facts; annotation/rules/datasets.py) as a held-out folder (contract/heldout.py), with its
name, item count and digest in the manifest and, for a vocabulary of the user's own, its
classes; `evaluate_version` has the trainer's
command line (`python -m rlhf.cli evaluate`, in a child process: the web app never loads
torch) answer it through the server as a registered version, the version's adapter loaded
under a temporary name and unloaded after (the newest registered reward model, if any,
scores the answers too), and records the result on the version
(Registry.record_evaluation). `manage.py evaluate` and `train_round` run this same code.

What an item is scored as comes from the database: the prompt's `meta.kind` ("describe" or
"question"; a prompt whose meta holds an `answer` is a question, any other a description),
`meta.answer`, and the image's `facts`: `classes` (or `objects`, when it is a list of
names) for the objects in it, `captions` for its reference captions, `absent` for objects
known to be absent (AMBER's "hallu"); the dataset names the vocabulary they are spelled in
(with AMBER's associations when it has them).
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

from django.conf import settings

from annotation.loop.deployment import serving_client, vllm_urls
from annotation.models import Dataset, Prompt
from annotation.rules.datasets import (
    DEFAULT_VOCABULARY,
    object_classes,
    scorable,
    vocabulary_associations,
    vocabulary_table,
)
from annotation.rules.errors import Invalid
from contract.heldout import MANIFEST as HELDOUT_MANIFEST
from contract.heldout import Item, Kind, image_name, write_heldout
from contract.launch import ONE_PROCESS, Launch
from contract.protocols import FACTLOOP
from models.registry import Registry, RegistryError
from models.server import BASE_NAME, check_served_base
from models.serving import ServingError
from models.staging import staged

REPO = Path(__file__).resolve().parents[2]


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
        objects=tuple(object_classes(facts)),
        captions=tuple(str(c) for c in facts.get("captions") or [] if isinstance(c, str)),
        context=tuple(prompt.context or ()),
        absent=tuple(str(name) for name in facts.get("absent") or [] if isinstance(name, str)),
    )
    return item, data


def heldout_prompts(dataset: Dataset, limit: int | None = None) -> list[Prompt]:
    """The dataset's prompts, oldest first (the first `limit`)."""
    prompts = Prompt.objects.filter(dataset=dataset).select_related("image").order_by("pk")
    return list(prompts[:limit] if limit else prompts)


def vocabulary_of(prompts: list[Prompt]) -> str:
    found = {(p.image.facts or {}).get("vocabulary", DEFAULT_VOCABULARY) for p in prompts}  # AI labels
    if len(found) > 1:
        raise Invalid(f"the prompts' images name objects in more than one vocabulary ({', '.join(sorted(found))})")
    return found.pop() if found else DEFAULT_VOCABULARY


def export_heldout(
    out: Path, dataset: Dataset, *, limit: int | None = None, protocol: str = FACTLOOP
) -> dict[str, Any]:
    """Write the dataset's prompts (the first `limit`, oldest first) as a held-out folder at
    `out`, whole or not at all; returns its manifest. Refused when it cannot be scored under
    `protocol` (annotation.rules.datasets.scorable)."""
    scorable(dataset, limit, protocol=protocol)
    prompts = heldout_prompts(dataset, limit)
    classes = vocabulary_table(dataset.vocabulary)
    associations = vocabulary_associations(dataset.vocabulary)

    def items() -> Iterator[tuple[Item, bytes]]:
        for prompt in prompts:
            yield _item(prompt)

    with staged(Path(out), replace=True) as folder:
        manifest = write_heldout(
            folder, dataset.vocabulary, items(), dataset=dataset.name, classes=classes, associations=associations
        )
    return manifest


def amber_responses(result: dict[str, Any]) -> list[dict[str, Any]]:
    """An amber-protocol evaluation's descriptions as AMBER's inference.py reads them
    ([{"id": AMBER's id, "response": text}, ...], by id), from the prompts' `amber_id`
    facts; Invalid for an evaluation that kept no responses (another protocol)."""
    kept = result.get("records", {}).get("responses")
    if not kept:
        raise Invalid("the evaluation kept no responses: only the amber protocol keeps them")
    ids = dict(Prompt.objects.filter(pk__in=[int(pk) for pk, _ in kept]).values_list("pk", "image__facts__amber_id"))
    missing = [pk for pk, _ in kept if ids.get(int(pk)) is None]
    if missing:
        raise Invalid(f"prompts {', '.join(missing[:5])} have no AMBER id (not imported by import_amber)")
    return sorted(({"id": ids[int(pk)], "response": text} for pk, text in kept), key=lambda row: row["id"])


def described(manifest: dict[str, Any]) -> str:
    """A held-out folder's manifest in words: its dataset, item count and digest."""
    name = manifest.get("dataset") or "(unnamed)"
    return f"dataset {name} ({manifest['items']} items, digest {manifest['digest'][:12]})"


def evaluate_version(
    name: str,
    heldout: Path,
    out: Path,
    *,
    log: Path,
    registry: Registry | None = None,
    adapter: Path | None = None,
    parent_pid: int | None = None,
    echo: Writer | None = None,
    reuse: bool = False,
    protocol: str = FACTLOOP,
) -> dict[str, Any]:
    """Evaluate registered version `name` (or, with `adapter`, that adapter on the served
    base: a candidate not registered yet) on the held-out folder through the vLLM server;
    the result (contract.heldout.Evaluation, with the `request` that made it) is written to
    `out`. Returns it as a dict. The evaluator's output (its progress) goes to `log`, and to
    `echo` too when given. With `reuse`, a registered version's evaluation recorded on the
    same held-out set (its digest) for the same request is taken instead of asking the
    server again (`reused` says so). `protocol` names what is asked (contract/protocols.py)."""
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
    request = evaluation_request(registry, name, adapter)
    if not out.is_file() and registered and reuse:
        digest = json.loads((heldout / HELDOUT_MANIFEST).read_text())["digest"]
        kept = recorded(registry, name, digest, request, protocol=protocol)
        if kept is not None:
            write_json(out, {k: v for k, v in kept.items() if k != "recorded_at"} | {"reused": True})
    reward = request["reward_model"]
    if not out.is_file():
        if registered:
            try:
                with serving_client(timeout=30.0) as client:
                    check_served_base(client, registry, name)
            except (RegistryError, ServingError) as error:
                raise Invalid(str(error)) from None
        answers = out.with_name(f"{out.stem}.answers.json")
        args = ["evaluate", "--data", str(heldout), "--server", ",".join(vllm_urls()), "--served", BASE_NAME]
        args += ["--label", name, "--out", str(answers), "--protocol", protocol]
        if adapter is not None:
            args += ["--adapter", str(adapter)]
        if reward:
            args += ["--reward-model", reward]
        run_rlhf(args, log, parent_pid=parent_pid, echo=echo)
        write_json(out, json.loads(answers.read_text()) | {"request": request, "reused": False})
        answers.unlink()
    return json.loads(out.read_text())


def evaluation_request(registry: Registry, name: str, adapter: Path | None) -> dict[str, str]:
    """What, besides the held-out set, decides an evaluation's result: the model (a
    registered version's files never change) and the reward model that scores the answers
    (the newest registered one, if any)."""
    rewards = [v for v in registry if v.kind == "reward"]
    reward = str(registry.path_of(rewards[-1].name)) if rewards else ""
    return {"version": name, "adapter": str(adapter) if adapter is not None else "", "reward_model": reward}


def recorded(
    registry: Registry, name: str, digest: str, request: dict[str, str], *, protocol: str = FACTLOOP
) -> dict[str, Any] | None:
    """The newest evaluation of version `name` recorded on the held-out set `digest` for the
    same request and protocol (one recorded before protocols was FactLoop's), or None. One
    recorded before descriptions carried coverage's counts is measured again (the gate
    compares coverage on the same items)."""
    for kept in reversed(registry.evaluations(name)):
        current = all(len(row) >= 5 for row in kept.get("records", {}).get("describe", []))
        same = kept.get("settings", {}).get("protocol", FACTLOOP) == protocol
        if kept.get("heldout_digest") == digest and kept.get("request") == request and current and same:
            return kept
    return None


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Written whole: a temporary file renamed."""
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(data, indent=1) + "\n")
    partial.replace(path)


def record(registry: Registry, name: str, evaluation: Path) -> None:
    registry.record_evaluation(name, json.loads(evaluation.read_text()))


class Writer(Protocol):
    def write(self, text: str, /) -> int: ...
    def flush(self) -> None: ...


class RlhfFailed(Exception):
    """A `python -m rlhf.cli` child exited non-zero; the message holds its output's tail."""

    def __init__(self, message: str, returncode: int) -> None:
        super().__init__(message)
        self.returncode = returncode


def run_rlhf(
    args: list[str],
    log: Path,
    *,
    parent_pid: int | None = None,
    launch: Launch = ONE_PROCESS,
    echo: Writer | None = None,
) -> None:
    """`python -m rlhf.cli ARGS` in a child process (or, with an accelerate `launch`, in
    several), its output appended to `log` (and copied to `echo` as it comes, progress bars
    included, when given); the children die with `parent_pid` (a worker) when one is named.
    RlhfFailed, naming the log, when it fails."""
    command = launch.command(args, parent_pid=parent_pid)
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as output:
        output.write(f"\n$ {' '.join(command)}\n".encode())
        output.flush()
        if echo is None:
            returncode = subprocess.run(
                command, cwd=REPO, stdout=output, stderr=subprocess.STDOUT, check=False
            ).returncode
        else:
            with subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) as child:
                assert child.stdout is not None
                while chunk := os.read(child.stdout.fileno(), 65536):  # as it comes: tqdm writes "\r", not lines
                    output.write(chunk)
                    output.flush()
                    echo.write(chunk.decode(errors="replace"))
                    echo.flush()
            returncode = child.returncode
    if returncode != 0:
        tail = log.read_text(errors="replace")[-2000:]
        raise RlhfFailed(f"rlhf.cli {args[0]} exited with {returncode} (its log: {log}):\n{tail}", returncode)
