"""Hallucination of a policy on a held-out set from the database (contract/heldout.py), any
dataset, any model family.

A `Responder` answers (image, prompt) requests: `ServedResponder` asks the vLLM server
(OpenAI-compatible API, concurrent requests so the server batches them; greedy decoding,
a fixed seed), `LocalResponder` runs transformers' `generate` in this process (the bench's
comparison, and machines without a server). The answers are scored from the items' facts
(docs/methods.md section 3):

- "describe" items: CHAIR_i and CHAIR_s (Rohrbach et al., 2018) and Object HalBench's
  response rate (Yu et al., 2024, RLHF-V), the ground truth being the item's objects plus
  the objects its reference captions name (as standard CHAIR adds them); mean length in
  words and the share of empty answers; coverage, AMBER's "Cover" (Wang et al., 2023,
  arXiv:2311.07397): the share of the item's annotated object classes (a COCO image's
  instance classes; where an item lists none, the classes its captions name) the answer names.
- POPE (Li et al., 2023) from the same images: for each split (random, popular,
  adversarial) `pope_per_image` present and as many absent objects per image, absent ones
  by the set's own object frequencies and co-occurrences; `pope_f1` is the splits' mean F1.
- which of these are asked, and how, is the evaluation protocol's (contract/protocols.py):
  FactLoop's own asks all of them; "pope", "object_halbench" and "amber" are the published
  ones, "amber" scoring the descriptions by AMBER's own reading too (rlhf/amber.py).
- "question" items: accuracy against the known answer (yes/no answers read by POPE's rule;
  any other answer correct when the response contains it as whole words, case-insensitive).
- with a reward model (rlhf.scoring.RewardModel): its mean score of the answers to the
  items, the facts given to it as it was trained (`reward_mean`).

Every metric carries a 95% percentile bootstrap interval over the items; the statistics
and the gate's paired comparison are contract/comparison.py's, which the web app calls too.
"""

from __future__ import annotations

import io
import random
import re
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

from contract.comparison import POPE_SPLITS, draws, indices, interval, statistics
from contract.heldout import Evaluation, Heldout, HeldoutError, Item
from contract.protocols import FACTLOOP, PROTOCOLS
from contract.protocols import Protocol as EvaluationProtocol
from rlhf.amber import AmberReader
from rlhf.metrics import PopeQuestion, build_pope, pope_published, pope_says_yes
from rlhf.vocabularies import Vocabulary, vocabulary


@dataclass(frozen=True)
class Request:
    image: bytes
    prompt: str
    context: tuple[dict[str, str], ...] = ()


class Responder(Protocol):
    @property
    def name(self) -> str: ...

    def answer(self, requests: Sequence[Request]) -> list[str]: ...


@dataclass
class ServedResponder:
    """Answers from an OpenAI-compatible server (models.serving.ServingClient) as `model`."""

    client: Any
    model: str
    max_tokens: int = 256
    workers: int = 32  # requests in flight: the server batches up to its max_num_seqs of them
    seed: int = 0

    @property
    def name(self) -> str:
        return self.model

    def answer(self, requests: Sequence[Request]) -> list[str]:
        from models.serving import Sampling

        sampling = Sampling(n=1, temperature=0.0, max_tokens=self.max_tokens, seed=self.seed)

        def one(request: Request) -> str:
            completion = self.client.chat(
                model=self.model, prompt=request.prompt, image=request.image, context=request.context, sampling=sampling
            )
            return str(completion.texts[0])

        from tqdm import tqdm  # type: ignore[import-untyped]

        with ThreadPoolExecutor(max_workers=self.workers) as pool:
            answers = pool.map(one, requests)
            return list(tqdm(answers, total=len(requests), desc=f"answers from {self.model}", mininterval=2))


@dataclass
class LocalResponder:
    """Greedy answers from a transformers model in this process (single-turn prompts)."""

    model: Any
    processor: Any
    name: str = "local"
    max_tokens: int = 256
    batch_size: int = 32

    def answer(self, requests: Sequence[Request]) -> list[str]:
        from PIL import Image

        from testbed.tiny import generate

        if any(request.context for request in requests):
            raise HeldoutError("the in-process responder answers single-turn prompts only; serve the model")
        images = [Image.open(io.BytesIO(request.image)).convert("RGB") for request in requests]
        return generate(
            self.model,
            self.processor,
            images,
            [request.prompt for request in requests],
            max_new_tokens=self.max_tokens,
            batch_size=self.batch_size,
        )


# ---------------------------------------------------------------------------------------
# Scoring


def _truth(item: Item, vocab: Vocabulary) -> set[str]:
    unknown = set(item.objects) - set(vocab.order)
    if unknown:
        raise HeldoutError(f"item {item.id}: objects outside the {vocab.name} vocabulary: {sorted(unknown)}")
    named = {m.cls for caption in item.captions for m in vocab.reader.mentions(caption)}
    return set(item.objects) | named


def _annotated(item: Item, vocab: Vocabulary) -> set[str]:
    """The object classes coverage counts: the item's own, else those its captions name."""
    return set(item.objects) or {m.cls for caption in item.captions for m in vocab.reader.mentions(caption)}


def _correct(response: str, answer: str) -> bool:
    expected = answer.strip().lower()
    if expected in ("yes", "no"):
        return pope_says_yes(response) == (expected == "yes")
    words = r"\s+".join(re.escape(part) for part in expected.split())
    return bool(words) and re.search(rf"(?<!\w){words}(?!\w)", response, flags=re.IGNORECASE) is not None


def _annotated_in_order(item: Item, vocab: Vocabulary) -> list[str]:
    """The item's annotated object classes in their given order (else its captions' in
    the order they name them), each once: POPE asks an image's first objects as present."""
    named = item.objects or tuple(m.cls for caption in item.captions for m in vocab.reader.mentions(caption))
    return list(dict.fromkeys(named))


def pope_probes(
    heldout: Heldout, vocab: Vocabulary, *, per_image: int, seed: int, chosen: EvaluationProtocol | None = None
) -> dict[str, list[PopeQuestion]]:
    """POPE's questions for each split, from the describe items' images (each once, in item
    order) and their objects (or, where an item lists none, the objects its captions name).
    A protocol may ask only about images with enough objects, at most so many of them
    (drawn at random with `seed`), and with POPE's own rule for absent objects."""
    chosen = chosen or PROTOCOLS[FACTLOOP]
    if not per_image:
        return {split: [] for split in POPE_SPLITS}
    images: dict[str, list[str]] = {}
    for item in heldout.items:
        if item.kind == "describe" and item.image not in images:
            images[item.image] = _annotated_in_order(item, vocab)
    pairs = [(image, objects) for image, objects in images.items() if len(objects) >= max(1, chosen.pope_min_objects)]
    if chosen.pope_images is not None and len(pairs) > chosen.pope_images:
        keep = set(random.Random(seed).sample(range(len(pairs)), chosen.pope_images))
        pairs = [pair for number, pair in enumerate(pairs) if number in keep]
    if chosen.pope_negatives == "published":
        return {split: pope_published(pairs, split, per_image=per_image, seed=seed) for split in POPE_SPLITS}  # type: ignore[arg-type]
    return {
        split: build_pope([(i, sorted(o)) for i, o in pairs], vocab.order, split, per_image=per_image, seed=seed)  # type: ignore[arg-type]
        for split in POPE_SPLITS
    }


def evaluate(
    heldout: Heldout,
    responder: Responder,
    *,
    protocol: str = FACTLOOP,
    pope_per_image: int | None = None,
    seed: int = 0,
    bootstrap: int = 1000,
    progress: Callable[[str, int, int], None] | None = None,
    reward_model: Any = None,
) -> Evaluation:
    """Answers of `responder` to every item and POPE probe the protocol asks, scored, with
    intervals. `pope_per_image` (FactLoop's protocol only) overrides its 1."""
    began = time.perf_counter()
    try:
        chosen = PROTOCOLS[protocol]
    except KeyError:
        raise HeldoutError(f"unknown evaluation protocol {protocol!r}; known: {', '.join(PROTOCOLS)}") from None
    if pope_per_image is not None and pope_per_image != chosen.pope_per_image and protocol != FACTLOOP:
        raise HeldoutError(f"the {protocol} protocol asks {chosen.pope_per_image} POPE objects per image; leave it")
    per_image = chosen.pope_per_image if pope_per_image is None else pope_per_image
    try:
        vocab = vocabulary(heldout.vocabulary, heldout.classes, rules=chosen.reader)
    except ValueError as error:  # a user vocabulary whose forms collide once plurals are read
        raise HeldoutError(str(error)) from None
    describe = [item for item in heldout.items if item.kind == "describe"] if chosen.describe else []
    describe = describe[: chosen.describe_items]  # the protocol's first N prompts (None: all)
    questions = [item for item in heldout.items if item.kind == "question"] if chosen.questions else []
    amber = amber_reader(heldout, describe) if chosen.scorer == "amber" else None
    truths = [_truth(item, vocab) for item in describe]
    annotated = [_annotated(item, vocab) for item in describe]
    probes = pope_probes(heldout, vocab, per_image=per_image, seed=seed, chosen=chosen)
    if not describe and not questions and not any(probes.values()):
        least = f" with at least {chosen.pope_min_objects} annotated objects" if chosen.pope_min_objects > 1 else ""
        raise HeldoutError(f"the {protocol} protocol finds nothing to ask in this set (no description prompt{least})")
    images: dict[str, bytes] = {}

    def image(name: str) -> bytes:
        if name not in images:
            images[name] = (heldout.folder / name).read_bytes()
        return images[name]

    requests = [Request(image(i.image), i.prompt, i.context) for i in [*describe, *questions]]
    for split in POPE_SPLITS:
        requests += [Request(image(q.image), q.text) for q in probes[split]]
    if progress:
        progress("answering", 0, len(requests))
    answers = responder.answer(requests)
    if progress:
        progress("scoring", len(requests), len(requests))
    descriptions, rest = answers[: len(describe)], answers[len(describe) :]
    qa_answers, rest = rest[: len(questions)], rest[len(questions) :]

    records: dict[str, Any] = {"describe": [], "qa": [], "pope": {}}
    for text, truth, objects in zip(descriptions, truths, annotated, strict=True):
        mentioned = [m.cls for m in vocab.reader.mentions(text)]
        hallucinated = sum(cls not in truth for cls in mentioned)
        covered = len(objects & set(mentioned))
        records["describe"].append([len(mentioned), hallucinated, len(text.split()), len(objects), covered])
    if amber is not None:
        records["amber"] = [
            amber.row(text, i.objects, i.absent) for text, i in zip(descriptions, describe, strict=True)
        ]
        # Every description by item id, so AMBER's own scorer can read them too (evaluate --amber-responses).
        records["responses"] = [[item.id, text] for item, text in zip(describe, descriptions, strict=True)]
    records["qa"] = [int(_correct(text, item.answer)) for text, item in zip(qa_answers, questions, strict=True)]
    if reward_model is not None:
        records["reward"] = reward_scores(reward_model, heldout, [*describe, *questions], [*descriptions, *qa_answers])
    for split in POPE_SPLITS:
        split_answers, rest = rest[: len(probes[split])], rest[len(probes[split]) :]
        records["pope"][split] = [
            [int(q.label == "yes"), int(pope_says_yes(a))] for q, a in zip(probes[split], split_answers, strict=True)
        ]
    metrics = statistics(records, indices(records))
    sizes = {"pope_images": len({q.image for q in probes["random"]}), "describe_items": len(describe)}
    samples = [statistics(records, draw) for draw in draws(records, bootstrap, seed)]
    intervals = {key: interval([s[key] for s in samples]) for key in metrics}
    examples = [
        {"id": item.id, "prompt": item.prompt, "response": text}
        for item, text in list(zip(describe, descriptions, strict=True))[:5]
    ]
    return Evaluation(
        policy=responder.name,
        heldout_digest=heldout.digest,
        vocabulary=heldout.vocabulary,
        metrics=metrics,
        intervals=intervals,
        records=records,
        examples=examples,
        settings={
            "protocol": protocol,
            "pope_per_image": per_image,
            "seed": seed,
            "bootstrap": bootstrap,
            "items": len(heldout.items),
            "protocol_size": sizes,  # what the protocol was measured on here
            "comparable": all(sizes[key] >= fixed for key, fixed in chosen.size.items()),
        },
        seconds=round(time.perf_counter() - began, 2),
        dataset=heldout.dataset,
        items=len(heldout.items),
    )


def amber_reader(heldout: Heldout, describe: Sequence[Item]) -> AmberReader:
    """AMBER's reader of the set's vocabulary; HeldoutError when the set has no AMBER data
    or an item names an object without associations (checked before anything is asked)."""
    if heldout.associations is None:
        raise HeldoutError(
            f"the amber protocol needs AMBER's associations and safe words with the {heldout.vocabulary} "
            "vocabulary; import the set with `manage.py import_amber`"
        )
    reader = AmberReader(heldout.associations)
    for item in describe:
        unknown = sorted((set(item.objects) | set(item.absent)) - set(heldout.associations.words))
        if unknown:
            raise HeldoutError(f"item {item.id}: objects without AMBER associations: {unknown[:5]}")
    return reader


def reward_scores(model: Any, heldout: Heldout, items: Sequence[Item], responses: Sequence[str]) -> list[float]:
    """The reward model's score of each response to its item (the item's objects and
    captions as the facts)."""
    from PIL import Image

    from contract.export import user_turns

    prompts = [user_turns([*item.context, {"role": "user", "content": item.prompt}]) for item in items]
    images = [Image.open(io.BytesIO(heldout.image_bytes(item))).convert("RGB") for item in items]
    facts = [{"classes": list(item.objects), "captions": list(item.captions)} for item in items]
    return [float(s) for s in model.score(prompts, list(responses), images, facts)]
