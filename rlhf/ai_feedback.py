"""AI feedback: a served model labels responses, as RLAIF-V does (arXiv:2405.17220).

RLAIF-V (section 3.1, "divide-and-conquer") splits a response into atomic claims, turns
each claim into a yes/no question about the image, asks an open model, and scores the
response by the claims judged false: score = -(number of rejected claims); two responses of
one prompt whose scores differ by at least 1 are a preference pair (docs/methods.md's table).

Here:
- **Claims** come from a rule-based splitter over the dataset's object vocabulary
  (rlhf/vocabularies.py: its synonym table finds the object mentions), sentence by sentence:
  - existence: every object named ("no X" claims it absent);
  - count: a number word or digit before a mention ("two red balls");
  - colour: a colour word in the two words before a mention ("a large blue ball");
  - relation: "A ... is left of / right of / above / below / next to / under the B".
  RLAIF-V splits claims with a served text model: `ServedSplitter` asks one (any chat model
  on the vLLM server) to write a yes/no question per atomic claim.
- **Questions**: existence and relations are yes/no (read with POPE's rule, rlhf/metrics.py);
  a count asks "How many X are there?" and a colour "What color is the X?", and the answer's
  number or colour word is compared with the claim (a yes/no "Are there two balls?" is
  answered "yes" by models that were never taught to count, so it checks nothing).
- **The labeller** is whatever answers: the current policy served by vLLM (self-feedback, as
  RLAIF-V's iterative rounds use it), a separate judge version, or a local transformers
  model (`local_answerer`, for the benches). Identical questions about one image are asked once.
- **Pairs**: contract/feedback.py's `ai_pairs` (per prompt, a score gap of at least 1).
- **Suggested fixes** (shown to annotators): the answered number or colour replaces a wrong
  one; a sentence about an object judged absent is rewritten into "There is a Y." about an
  object the existence answers confirmed for the same image and the response does not name
  (`replace_absent`), and deleted only where none is left.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

from contract.feedback import ClaimVerdict, Feedback
from contract.spans import sentence_deletion, sentences
from rlhf.metrics import Mention, ObjectReader, plural, pope_says_yes

# Basic colour terms (Berlin & Kay's eleven) and a few common others.
COLOURS = (
    "black", "white", "red", "green", "yellow", "blue", "brown", "purple", "pink", "orange", "grey", "gray",
    "silver", "gold", "beige", "tan",
)  # fmt: skip
NUMBERS = {
    "no": 0, "zero": 0, "one": 1, "single": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7,
    "eight": 8, "nine": 9, "ten": 10, "a couple of": 2, "several": -1, "many": -1,
}  # fmt: skip
NUMBER_NAMES = {value: word for word, value in NUMBERS.items() if value >= 0 and " " not in word and word != "single"}
RELATIONS = ("to the left of", "to the right of", "left of", "right of", "above", "below", "next to", "under", "beside")

_NUMBER_BEFORE = re.compile(
    r"(?<![\w-])(?P<number>" + "|".join(sorted(map(re.escape, NUMBERS), key=len, reverse=True)) + r"|\d+)"
    r"(?P<gap>(?:\s+[a-z-]+){0,2}\s+)$",
    re.IGNORECASE,
)
_COLOUR_BEFORE = re.compile(r"(?<![\w-])(?P<colour>" + "|".join(COLOURS) + r")(?:\s+[a-z-]+)?\s+$", re.IGNORECASE)
_RELATION_BETWEEN = re.compile(
    r"^\s+(?:is|are|sits|sit|lies|lie)\s+(?P<relation>" + "|".join(RELATIONS) + r")\s+(?:the|a|an)\s+"
    r"(?:[a-z-]+\s+){0,2}$",
    re.IGNORECASE,
)
_NEGATED = re.compile(r"(?<![\w-])(?:no|not|without|never)\s+(?:[a-z-]+\s+){0,2}$", re.IGNORECASE)
_ANSWER_NUMBER = re.compile(
    r"(?<![\w-])(" + "|".join(sorted(map(re.escape, NUMBERS), key=len, reverse=True)) + r"|\d+)(?![\w-])",
    re.IGNORECASE,
)
_COLOUR_WORD = re.compile(r"(?<![\w-])(" + "|".join(COLOURS) + r")(?![\w-])", re.IGNORECASE)


class ClaimSplitter(Protocol):
    def __call__(self, text: str) -> list[ClaimVerdict]: ...


@dataclass(frozen=True)
class RuleSplitter:
    """Claims found by rules over the vocabulary's object mentions (see the module doc)."""

    reader: ObjectReader

    def __call__(self, text: str) -> list[ClaimVerdict]:
        claims: list[ClaimVerdict] = []
        for start, end in sentences(text):
            sentence = text[start:end]
            mentions = [
                Mention(m.cls, m.surface, m.start + start, m.end + start) for m in self.reader.mentions(sentence)
            ]
            deletion = sentence_deletion(text, start, end)
            for index, mention in enumerate(mentions):
                claims.extend(self._about(text, start, mention, mentions[index + 1 :], deletion))
        return claims

    def _about(
        self, text: str, sentence_start: int, mention: Mention, later: list[Mention], deletion: tuple[int, int, str]
    ) -> list[ClaimVerdict]:
        before = text[sentence_start : mention.start]
        cls = mention.cls
        number = _NUMBER_BEFORE.search(before)
        count = NUMBERS.get(number["number"].lower(), -1) if number else None
        if number and number["number"].isdigit():
            count = int(number["number"])
        negated = count == 0 or bool(_NEGATED.search(before))
        exist = ClaimVerdict(
            "exist",
            cls,
            "no" if negated else "yes",
            mention.start,
            mention.end,
            f"Is there a {cls} in the image?",
            fix=None if negated else deletion,
        )
        claims = [exist]
        if negated:
            return claims
        if number and count is not None and count > 1:
            where = sentence_start + number.start("number")
            claims.append(
                ClaimVerdict(
                    "count",
                    cls,
                    str(count),
                    where,
                    where + len(number["number"]),  # the number word: what a fix replaces
                    f"How many {plural(cls)} are there?",
                    fix=deletion,
                )
            )
        colour = _COLOUR_BEFORE.search(before)
        if colour:
            where = sentence_start + colour.start("colour")
            claims.append(
                ClaimVerdict(
                    "colour",
                    cls,
                    colour["colour"].lower(),
                    where,
                    where + len(colour["colour"]),
                    f"What color is the {cls}?",
                    fix=deletion,
                )
            )
        if later:
            other = later[0]
            relation = _RELATION_BETWEEN.match(text[mention.end : other.start])
            if relation:
                phrase = relation["relation"].lower()
                claims.append(
                    ClaimVerdict(
                        "relation",
                        cls,
                        f"{phrase}|{other.cls}",
                        mention.start,
                        other.end,
                        f"Is the {cls} {phrase} the {other.cls}?",
                        fix=deletion,
                    )
                )
        return claims


# The served splitter's instruction (FactLoop's wording of RLAIF-V's step: atomic claims
# turned into polar questions about the image; arXiv:2405.17220 section 3.1).
SPLIT_INSTRUCTION = (
    "Below is a description of an image. Split it into atomic claims about what the image shows "
    "(objects, their number, attributes and positions) and rewrite each claim as a yes/no question "
    "that is answered yes when the claim is true. Write one question per line and nothing else.\n\n"
    "Description: {response}"
)


@dataclass(frozen=True)
class ServedSplitter:
    """RLAIF-V's way: a served text model writes a yes/no question per atomic claim (`ask`:
    an instruction in, the model's reply out). Each question is a claim of kind "question"
    placed on the response's mention of the first object it names (the vocabulary's reader),
    else on the response's first sentence; a false one suggests deleting that sentence."""

    ask: Callable[[str], str]
    reader: ObjectReader

    def __call__(self, text: str) -> list[ClaimVerdict]:
        if not text.strip():
            return []
        spans = sentences(text)
        mentions = self.reader.mentions(text)
        claims = []
        for line in self.ask(SPLIT_INSTRUCTION.format(response=text)).splitlines():
            question = re.sub(r"^\s*(?:[-*•]|\d+[.)])\s*", "", line).strip()
            if not question.endswith("?") or len(question) < 5:
                continue
            named = [m.cls for m in self.reader.mentions(question)]
            where = next((m for m in mentions if named and m.cls == named[0]), None)
            start, end = (where.start, where.end) if where else spans[0]
            sentence = next(((a, b) for a, b in spans if a <= start < b), spans[0])
            claims.append(
                ClaimVerdict(
                    "question",
                    named[0] if named else "",
                    question,
                    start,
                    end,
                    question,
                    fix=sentence_deletion(text, *sentence),
                )
            )
        return claims


def read_number(answer: str) -> int | None:
    found = _ANSWER_NUMBER.search(answer)
    if found is None:
        return None
    word = found.group(1).lower()
    value = int(word) if word.isdigit() else NUMBERS[word]
    return None if value < 0 else value


def verdict(claim: ClaimVerdict, answer: str) -> ClaimVerdict:
    """The claim judged by the labeller's answer to its question, with the fix the answer
    suggests where it names the right value (a count or colour word), else the claim's own."""
    fix = claim.fix
    supported: bool | None
    if claim.kind in ("exist", "relation", "question"):
        supported = pope_says_yes(answer) == (claim.value != "no")
    elif claim.kind == "count":
        said = read_number(answer)
        supported = None if said is None else said == int(claim.value)
        if said:  # the right number replaces the claimed one; none at all deletes the sentence
            fix = (claim.start, claim.end, NUMBER_NAMES.get(said, str(said)))
    else:
        colours = [c.lower() for c in _COLOUR_WORD.findall(answer)]
        supported = None if not colours else claim.value in colours
        if colours and not supported:
            fix = (claim.start, claim.end, colours[0])
    return replace(claim, answer=answer.strip(), supported=supported, fix=fix)


Answerer = Callable[[Sequence[tuple[Any, str]]], list[str]]
"""Answers to (image, question) pairs, in order: a served model, a local one."""


@dataclass
class Labeller:
    """Claims of each response, a question per claim asked of `answer`, the verdicts.

    `name` says what made the labels ("ai:round-3", "ai:judge-qwen"); it goes into every
    label the feedback makes."""

    split: ClaimSplitter
    answer: Answerer
    name: str
    # Suggest rewriting a sentence about an absent object into one about a confirmed, unnamed
    # object (`replace_absent`); False keeps every suggested fix of an absent object a deletion.
    rewrite: bool = True

    def label(self, items: Sequence[tuple[str, Hashable, Any, str]]) -> list[Feedback]:
        """Feedback on (key, image key, image, response) items; one question about one image
        (keyed by `image key`) is asked once for all the items that raise it."""
        claims = [self.split(text) for _, _, _, text in items]
        questions: dict[tuple[Hashable, str], Any] = {}
        for (_, image_key, image, _), found in zip(items, claims, strict=True):
            for claim in found:
                questions.setdefault((image_key, claim.question), image)
        asked = list(questions)
        answers = dict(zip(asked, self.answer([(questions[q], q[1]) for q in asked]), strict=True)) if asked else {}
        judged = [
            [verdict(claim, answers[(image_key, claim.question)]) for claim in found]
            for (_, image_key, _, _), found in zip(items, claims, strict=True)
        ]
        if self.rewrite:
            present: dict[Hashable, list[str]] = {}
            for (_, image_key, _, _), found in zip(items, judged, strict=True):
                for cls in confirmed_present(found):
                    if cls not in present.setdefault(image_key, []):
                        present[image_key].append(cls)
            judged = [
                replace_absent(text, found, present.get(image_key, []), self.named(text))
                for (_, image_key, _, text), found in zip(items, judged, strict=True)
            ]
        return [Feedback(key, self.name, tuple(found)) for (key, _, _, _), found in zip(items, judged, strict=True)]

    def named(self, text: str) -> set[str]:
        """The classes a response names (by the splitter's reader, where it has one)."""
        reader = getattr(self.split, "reader", None)
        return {m.cls for m in reader.mentions(text)} if reader is not None else set()


def confirmed_present(claims: Sequence[ClaimVerdict]) -> list[str]:
    """Classes the labeller's existence answers say the image shows ("yes" to "Is there a
    X?"), in the order they were asked."""
    found: list[str] = []
    for claim in claims:
        says_present = claim.supported is not None and (claim.value == "yes") == claim.supported
        if claim.kind == "exist" and says_present and claim.subject not in found:
            found.append(claim.subject)
    return found


def _article(noun: str) -> str:
    return "an" if noun[:1].lower() in "aeiou" else "a"


def replace_absent(
    text: str, claims: Sequence[ClaimVerdict], present: Sequence[str], named: set[str]
) -> list[ClaimVerdict]:
    """Suggest rewriting, not deleting, a sentence about an object the labeller says is
    absent: into "There is a Y." about a class its existence answers confirmed for the same
    image (asked about any response to it) that this response does not name, each such class
    once; the deletion stays where none is left. RLHF-V's annotators edit a hallucinated
    segment into what the image shows (Yu et al., 2024, arXiv:2312.00849, section 3.1); a
    deletion alone teaches a policy to say less."""
    spare = [cls for cls in present if cls not in named]
    spans = sentences(text)
    rewrites: dict[tuple[int, int, str], tuple[int, int, str]] = {}
    for claim in sorted(claims, key=lambda c: c.start):
        absent = claim.kind == "exist" and claim.value == "yes" and claim.supported is False
        if not (absent and spare and claim.fix is not None and claim.fix[2] == "" and claim.fix not in rewrites):
            continue
        sentence = next(((a, b) for a, b in spans if a <= claim.start < b), None)
        if sentence is None:
            continue
        cls = spare.pop(0)
        rewrites[claim.fix] = (*sentence, f"There is {_article(cls)} {cls}.")
    return [replace(c, fix=rewrites[c.fix]) if c.fix in rewrites else c for c in claims]


def local_answerer(model: Any, processor: Any, *, max_new_tokens: int = 24) -> Answerer:
    """A transformers model answering greedily (testbed.tiny.generate works for any family)."""
    from testbed.tiny import generate

    def answer(pairs: Sequence[tuple[Any, str]]) -> list[str]:
        images = [_pil(image) for image, _ in pairs]
        return generate(model, processor, images, [q for _, q in pairs], max_new_tokens=max_new_tokens)

    return answer


def _pil(image: Any) -> Any:
    """A PIL image from one, or from an image file's bytes."""
    if not isinstance(image, bytes):
        return image
    import io

    from PIL import Image

    return Image.open(io.BytesIO(image)).convert("RGB")


def _png(image: Any) -> bytes:
    """An image file's bytes from them, or from a PIL image (as PNG)."""
    if isinstance(image, bytes):
        return image
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def served_answerer(client: Any, model: str, *, workers: int = 8, max_tokens: int = 24) -> Answerer:
    """A model served over the OpenAI API (models.serving.ServingClient): the base, a LoRA
    adapter's name (self-feedback from the current policy) or a judge; greedy, `workers`
    requests in flight (vLLM batches them)."""
    from models.serving import Sampling

    sampling = Sampling(temperature=0.0, max_tokens=max_tokens)

    def one(pair: tuple[Any, str]) -> str:
        image, question = pair
        return client.chat(model=model, prompt=question, image=_png(image), sampling=sampling).texts[0]

    def answer(pairs: Sequence[tuple[Any, str]]) -> list[str]:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            return list(pool.map(one, pairs))

    return answer


def read_items(path: Path) -> list[tuple[str, Hashable, Any, str]]:
    """Items to label from a JSON Lines file, {"key", "image": a file path, "response"} a
    line, as `Labeller.label` takes them (the image's bytes; its path is its key)."""
    items: list[tuple[str, Hashable, Any, str]] = []
    images: dict[str, bytes] = {}
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                key, image, response = str(row["key"]), str(row["image"]), str(row["response"])
            except (ValueError, KeyError, TypeError) as error:
                raise ValueError(f"{path}:{number}: expected {{key, image, response}} ({error})") from None
            if image not in images:
                try:
                    images[image] = Path(image).read_bytes()
                except OSError as error:
                    raise ValueError(f"{path}:{number}: cannot read the image: {error}") from None
            items.append((key, image, images[image], response))
    return items


def served_text(client: Any, model: str, *, max_tokens: int = 512) -> Callable[[str], str]:
    """A served text model's greedy reply to an instruction (no image): the served splitter's `ask`."""
    from models.serving import Sampling

    sampling = Sampling(temperature=0.0, max_tokens=max_tokens)

    def ask(instruction: str) -> str:
        return str(client.chat(model=model, prompt=instruction, sampling=sampling).texts[0])

    return ask


def labeller_for(
    vocabulary: str, answer: Answerer, name: str, *, split_with: Callable[[str], str] | None = None
) -> Labeller:
    """A labeller of the vocabulary's objects: claims by rules, or by a served text model
    when `split_with` asks one."""
    from rlhf.vocabularies import vocabulary as named

    reader = named(vocabulary).reader
    split: ClaimSplitter = RuleSplitter(reader) if split_with is None else ServedSplitter(split_with, reader)
    return Labeller(split, answer, name)
