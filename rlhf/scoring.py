"""The reward of a response in online RL: the reward model's score plus symbolic terms.

LLaVA-RLHF (arXiv:2309.14525, section 3; docs/methods.md 2b) adds to the
reward model's score a length penalty, a penalty for a response that never emits the stop
token, and, for questions whose answer is known, a bonus for the right answer. FactLoop
knows the answer of a yes/no question when the image's facts say so: an explicit
`answers` mapping in the facts (prompt text to "yes"/"no"), or an existence question ("Is
there a cat in the image?") about an image whose object list is known.

One `RewardFunction` serves FactLoop's PPO and trl's GRPO/RLOO trainers (trl calls it with
the prompts, the completions and the dataset's other columns as keyword arguments, images
and `image_facts` among them: trl's GRPOTrainer docs, reward functions).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from contract.export import assistant_turn
from contract.run import ADAPTER
from rlhf.config import ConfigError
from rlhf.reward import REWARD_FORMAT, REWARD_INFO, encode_conversations, load_backbone, scores

_EXISTS = re.compile(
    r"^\s*(?:is|are)\s+there\s+(?:(?:an|any|some|a)\s+)?([a-z][a-z -]*?)"
    r"\s+in\s+the\s+(?:image|picture|photo)\s*\??\s*$",
    re.IGNORECASE,
)
_FIRST_WORD = re.compile(r"[a-z]+", re.IGNORECASE)


def object_names(facts: dict[str, Any]) -> set[str] | None:
    """The names of the objects the facts list, or None when they list none."""
    names = facts.get("classes")
    if not names:
        objects = facts.get("objects") or []
        names = [o.get("cls") or o.get("name") for o in objects if isinstance(o, dict)] + [
            o for o in objects if isinstance(o, str)
        ]
    cleaned = {str(n).strip().lower() for n in names or [] if n}
    return cleaned or None


def known_answer(question: str, facts: dict[str, Any]) -> str | None:
    """ "yes" or "no" when the facts settle a yes/no question, else None."""
    answers = facts.get("answers")
    if isinstance(answers, dict):
        answer = answers.get(question.strip())
        if isinstance(answer, str) and answer.strip().lower() in ("yes", "no"):
            return answer.strip().lower()
    match = _EXISTS.match(question)
    names = object_names(facts)
    if not match or names is None:
        return None
    name = match.group(1).strip().lower()
    singular = name[:-1] if name.endswith("s") and name[:-1] in names else name
    return "yes" if singular in names else "no"


def said(response: str) -> str | None:
    """The yes or no a response opens with, if any."""
    match = _FIRST_WORD.search(response)
    word = match.group(0).lower() if match else ""
    return word if word in ("yes", "no") else None


@dataclass(frozen=True)
class SymbolicTerms:
    length_penalty: float = 0.0
    length_free: int = 0
    missing_stop_penalty: float = 1.0
    yes_no_bonus: float = 1.0
    length_anchor: float = 0.0
    length_anchor_share: float = 0.9

    def __call__(
        self,
        question: str,
        response: str,
        facts: dict[str, Any],
        tokens: int,
        stopped: bool,
        reference_words: float | None = None,
    ) -> float:
        value = -self.length_penalty * max(0, tokens - self.length_free)
        if self.length_anchor and reference_words:
            # Per word the response falls short of the share of the prompt's reference length.
            value -= self.length_anchor * max(0.0, self.length_anchor_share * reference_words - len(response.split()))
        if not stopped:
            value -= self.missing_stop_penalty
        answer = known_answer(question, facts)
        if answer is not None and said(response) == answer:
            value += self.yes_no_bonus
        return value


def last_user_text(prompt: Sequence[dict[str, Any]]) -> str:
    """The text of the last user turn of a conversation (content as text or parts)."""
    for turn in reversed(prompt):
        if turn.get("role") != "user":
            continue
        content = turn.get("content")
        if isinstance(content, str):
            return content
        return " ".join(p.get("text") or "" for p in content or [] if p.get("type") == "text").strip()
    return ""


def completion_text(completion: Any) -> str:
    """A completion as trl passes it (text, or assistant messages) as text."""
    if isinstance(completion, str):
        return completion
    parts = []
    for message in completion:
        content = message.get("content")
        if isinstance(content, str):
            parts.append(content)
        else:
            parts += [p.get("text") or "" for p in content or [] if p.get("type") == "text"]
    return "".join(parts)


def parse_facts(value: Any) -> dict[str, Any]:
    if isinstance(value, dict):
        return value
    if not value:
        return {}
    try:
        parsed = json.loads(value)
    except (TypeError, ValueError):
        return {}
    return parsed if isinstance(parsed, dict) else {}


@dataclass
class RewardModelFiles:
    base_model: str
    adapter: Path
    facts: str | None  # the fact format the reward model was trained with, None without facts


def locate_reward_model(path: str | Path) -> RewardModelFiles:
    """A reward model's base and adapter from a reward run's folder (`adapter/`), its
    registered version folder (manifest.json + adapter/) or the adapter folder itself."""
    folder = Path(path)
    adapter = folder / ADAPTER if (folder / ADAPTER / "adapter_config.json").is_file() else folder
    if not (adapter / "adapter_config.json").is_file():
        raise ConfigError(f"reward_model {str(path)!r} holds no reward-model adapter")
    info_path = adapter / REWARD_INFO
    if not info_path.is_file():
        raise ConfigError(f"{adapter} is not a FactLoop reward model ({REWARD_INFO} is missing)")
    info = json.loads(info_path.read_text())
    if info.get("format", 1) != REWARD_FORMAT:
        raise ConfigError(
            f"{adapter} is a reward model of format {info.get('format', 1)} (LLaVA-only, before FactLoop "
            f"read every family); this version reads format {REWARD_FORMAT}: train the reward model again"
        )
    return RewardModelFiles(info["base_model"], adapter, info.get("facts"))


class RewardModel:
    """A trained reward model, frozen, scoring (prompt, image, facts, response) batches."""

    def __init__(self, path: str | Path, *, dtype: str = "float32", device: Any = None) -> None:
        import torch
        from peft import PeftModel

        self.files = locate_reward_model(path)
        backbone, self.processor = load_backbone(self.files.base_model, dtype=getattr(torch, dtype))
        self.model = PeftModel.from_pretrained(backbone, str(self.files.adapter)).merge_and_unload()
        self.model.eval().requires_grad_(False)
        if device is not None:
            self.model.to(device)
        self.device = device

    def score(
        self,
        prompts: Sequence[list[dict[str, Any]]],
        responses: Sequence[str],
        images: Sequence[Any],
        facts: Sequence[dict[str, Any]],
        *,
        batch_size: int = 16,
    ) -> list[float]:
        import torch

        out: list[float] = []
        with torch.no_grad():
            for start in range(0, len(prompts), batch_size):
                stop = start + batch_size
                rows = [
                    (prompt, assistant_turn(text), image, fact)
                    for prompt, text, image, fact in zip(
                        prompts[start:stop], responses[start:stop], images[start:stop], facts[start:stop], strict=True
                    )
                ]
                inputs = encode_conversations(self.processor, rows, self.files.facts)
                if self.device is not None:
                    inputs = {k: v.to(self.device) for k, v in inputs.items()}
                out += [float(x) for x in scores(self.model, inputs).float()]
        return out


def remove_length_trend(scores: Sequence[float], lengths: Sequence[int]) -> list[float]:
    """The scores less their least-squares linear trend in response length over the batch,
    s - b (L - mean L) with b = cov(s, L) / var(L): a reward model that learned "shorter is
    safer" (on the test bed it did: fewer sentences, fewer chances to hallucinate) no longer
    pays for cutting an answer, only for what differs at the same length. A batch of equal
    lengths is left as it is. Length as a confound of reward models: Singhal et al., "A Long
    Way to Go: Investigating Length Correlations in RLHF" (arXiv:2310.03716), whose remedies
    include regressing length out of the reward; this is the per-batch form."""
    n = len(scores)
    if n < 2:
        return list(scores)
    mean_s, mean_l = sum(scores) / n, sum(lengths) / n
    var = sum((x - mean_l) ** 2 for x in lengths)
    if var == 0:
        return list(scores)
    slope = sum((x - mean_l) * (s - mean_s) for x, s in zip(lengths, scores, strict=True)) / var
    return [s - slope * (x - mean_l) for x, s in zip(lengths, scores, strict=True)]


def released_answer_bonus(question: str, response: str, facts: dict[str, Any]) -> float:
    """LLaVA-RLHF's answer bonus before its x2.0 (ppo_trainer.py, `rollout`, per AnswerType):
    for a question whose answer is "no", +0.5 when the response starts with "No", -0.5 when
    it starts with "Yes"; nothing for one whose answer is "yes" (the release gives none yet);
    for a multiple-choice question whose answer is an option letter (the facts' `answers`
    give "A" to "D"), +1 when the response starts with "A." or says "correct option is A.".
    The release reads the stripped response's start, case as written."""
    answers = facts.get("answers")
    option = answers.get(question.strip()) if isinstance(answers, dict) else None
    text = response.strip()
    if isinstance(option, str) and option.strip().upper() in ("A", "B", "C", "D"):
        start = option.strip().upper() + "."
        return 1.0 if text.startswith(start) or f"correct option is {start}" in response else 0.0
    if known_answer(question, facts) != "no":
        return 0.0
    if text.startswith("No"):
        return 0.5
    return -0.5 if text.startswith("Yes") else 0.0


@dataclass(frozen=True)
class ReleasedTerms:
    """LLaVA-RLHF's symbolic reward terms with its 13B run's values (train_rl_model.sh:
    LENGTH_BONUS -10.0, INCOMPLETE_RESPONSE -8.0 with --relative_stop_token_penalty True,
    CORRECT_BONUS 2.0; ppo_trainer.py `rollout`, `post_reward`, `_shape_reward`):
    length_bonus_score x response tokens / response_len (tokens that are not padding, the
    stop token included), penalty_reward_value added when no stop token was sampled, and
    correct_bonus_score x `released_answer_bonus`."""

    response_len: int  # the release's response_len: the run's max_new_tokens
    length_bonus_score: float = -10.0
    penalty_reward_value: float = -8.0
    correct_bonus_score: float = 2.0

    def __call__(
        self,
        question: str,
        response: str,
        facts: dict[str, Any],
        tokens: int,
        stopped: bool,
        reference_words: float | None = None,
    ) -> float:
        value = self.length_bonus_score * tokens / self.response_len
        if not stopped:
            value += self.penalty_reward_value
        return value + self.correct_bonus_score * released_answer_bonus(question, response, facts)


class Scorer(Protocol):
    """What scores responses in place of a reward model (the family matrix's learnable
    reward): the policy's processor, and a score per response."""

    processor: Any

    def score(
        self,
        prompts: Sequence[list[dict[str, Any]]],
        responses: Sequence[str],
        images: Sequence[Any],
        facts: Sequence[dict[str, Any]],
    ) -> list[float]: ...


class RewardFunction:
    """reward = reward_scale * reward model score + symbolic terms, for a batch of rollouts.

    Callable the way trl's GRPOTrainer and RLOOTrainer call reward functions:
    `(prompts, completions, completion_ids, images=..., image_facts=..., ...)`."""

    __name__ = "factloop_reward"  # trl logs rewards under their function's name

    def __init__(
        self,
        model: RewardModel | Scorer,
        terms: SymbolicTerms | ReleasedTerms,
        *,
        reward_scale: float = 1.0,
        stop_ids: Sequence[int] = (),
        length_debias: bool = False,
    ) -> None:
        self.model = model
        self.terms = terms
        self.reward_scale = reward_scale
        self.length_debias = length_debias
        self.stop_ids = set(stop_ids)
        self.last: dict[str, list[float]] = {}

    def rewards(
        self,
        prompts: Sequence[list[dict[str, Any]]],
        responses: Sequence[str],
        images: Sequence[Any],
        facts: Sequence[dict[str, Any]],
        tokens: Sequence[int],
        stopped: Sequence[bool],
        reference_words: Sequence[float | None] | None = None,
    ) -> list[float]:
        model_scores = self.model.score(prompts, responses, images, facts)
        if self.length_debias:
            model_scores = remove_length_trend(model_scores, tokens)
        references = reference_words if reference_words is not None else [None] * len(responses)
        symbolic = [
            self.terms(last_user_text(p), r, f, n, s, w)
            for p, r, f, n, s, w in zip(prompts, responses, facts, tokens, stopped, references, strict=True)
        ]
        self.last = {"model": model_scores, "symbolic": symbolic}
        return [self.reward_scale * m + s for m, s in zip(model_scores, symbolic, strict=True)]

    def __call__(self, prompts: Any, completions: Any, completion_ids: Any = None, **kwargs: Any) -> list[float | None]:
        images = kwargs.get("images") or [[image] for image in kwargs.get("image") or []]
        images = [item[0] if isinstance(item, list) else item for item in images]
        facts = [parse_facts(f) for f in kwargs.get("image_facts") or [None] * len(prompts)]
        texts = [completion_text(c).strip() for c in completions]
        ids = completion_ids or [[] for _ in completions]
        stopped = [bool(self.stop_ids & set(map(int, i))) for i in ids] if completion_ids else [True] * len(texts)
        references = kwargs.get("reference_words")
        return list(self.rewards(list(prompts), texts, images, facts, [len(i) for i in ids], stopped, references))
