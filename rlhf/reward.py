"""A fact-augmented Bradley-Terry reward model for image-text-to-text models.

LLaVA-RLHF (arXiv:2309.14525, section 2.3; ../shared/reference/METHODS.md 2a): the VLM
backbone with a scalar head on the hidden state of the last response token, trained on
ranking pairs with the loss -log sigma(r(x, y_w) - r(x, y_l)). Fact-RLHF adds what is known
about the image (captions, object lists) to the reward model's input under a fixed
instruction; the policy never sees it.

transformers has no sequence-classification class for LLaVA; `reward_model_class` makes one
from `GenericForSequenceClassification` and the checkpoint's own pretrained-model base, as
transformers does for Gemma 3 (STACK-FACTS.md). trl's RewardTrainer is text-only, so the
loop here is our own: LoRA on the language model (peft's SEQ_CLS task type, so the score
head trains too), AdamW, a held-out share for pairwise accuracy.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from contract.results import RewardResult
from rlhf.common import prepare_torch
from rlhf.config import ConfigError, LoraSettings, normalise_run_inputs
from rlhf.data import load_pairs

REWARD_INFO = "factloop_reward.json"  # in the adapter folder: what scoring needs besides the weights

# LLaVA-RLHF's instruction for the facts (paraphrased; METHODS.md 2a).
FACT_INSTRUCTION = "The response should be fully supported by the following facts about the image:"
TIES = ("use", "drop")
FACT_FORMATS = ("captions", "objects")


@dataclass
class RewardConfig:
    """One reward-model run: ranking pairs in, a scored model version out."""

    model: str
    """The backbone: the policy's base checkpoint (folder or hub id)."""
    data: list[str]
    """`trl` export folders; their ranking pairs are used."""
    output_dir: str
    """Where the reward model (adapter + score head), its config and metrics are written."""
    fact_augmentation: bool = True
    """Put the image's known facts into the reward model's input (Fact-RLHF)."""
    fact_format: str = "captions"
    """Which facts go in: `captions` (the image's captions, else its object list) or
    `objects` (its object names only)."""
    ties: str = "use"
    """Pairs whose question 1 was a tie (ordered by helpfulness): `use` or `drop`."""
    heldout_share: float = 0.1
    """Share of the pairs kept out of training to measure pairwise accuracy."""
    lora: LoraSettings = field(default_factory=lambda: LoraSettings(r=64, alpha=16))
    """LoRA settings (LLaVA-RLHF: r 64, alpha 16)."""
    learning_rate: float = 2e-5
    """Peak learning rate (LLaVA-RLHF: 2e-5), linear decay."""
    epochs: float = 1.0
    """Passes over the training pairs (LLaVA-RLHF: 1)."""
    batch_size: int = 8
    """Pairs per step."""
    seed: int = 0
    """Seed of the split, data order and head initialisation."""
    threads: int | None = None
    """torch CPU threads (None: torch's default)."""

    def facts_mode(self) -> str | None:
        """The fact format the reward model reads, or None without augmentation."""
        return self.fact_format if self.fact_augmentation else None

    def __post_init__(self) -> None:
        normalise_run_inputs(self)
        if self.fact_format not in FACT_FORMATS:
            raise ConfigError(f"fact_format must be one of {', '.join(FACT_FORMATS)}, got {self.fact_format!r}")
        if self.ties not in TIES:
            raise ConfigError(f"ties must be one of {', '.join(TIES)}, got {self.ties!r}")
        if not 0 < self.heldout_share < 1:
            raise ConfigError(f"heldout_share must be between 0 and 1, got {self.heldout_share}")
        if self.learning_rate <= 0 or self.epochs <= 0 or self.batch_size < 1:
            raise ConfigError("learning_rate and epochs must be positive, batch_size at least 1")


def facts_text(facts: dict[str, Any], fact_format: str = "captions") -> str:
    """The known facts of an image as text: its captions (unless `fact_format` is
    "objects"), else its objects, else nothing."""
    captions = [c for c in facts.get("captions", []) if isinstance(c, str) and c.strip()]
    if captions and fact_format == "captions":
        return " ".join(captions)
    objects = facts.get("classes") or facts.get("objects") or []
    names = [o.get("cls") or o.get("name", "") if isinstance(o, dict) else str(o) for o in objects]
    return ("Objects: " + ", ".join(n for n in names if n) + ".") if names else ""


def reward_input(prompt: list[dict[str, Any]], facts: dict[str, Any], mode: str | None) -> list[dict[str, Any]]:
    """The conversation the reward model reads: the prompt, with the facts appended to the
    last user turn when augmenting (`mode` is a fact format, or None for no facts)."""
    turns = [
        {
            "role": turn["role"],
            "content": [
                {"type": "text", "text": part}
                if isinstance(part, str)
                else {key: value for key, value in part.items() if key != "image"}
                for part in ([turn["content"]] if isinstance(turn["content"], str) else turn["content"])
            ],
        }
        for turn in prompt
    ]  # a copy; image parts lose any payload (the processor gets the image separately)
    text = facts_text(facts, mode) if mode else ""
    if text:
        turns[-1]["content"].append({"type": "text", "text": f"\n{FACT_INSTRUCTION} {text}"})
    return turns


def reward_model_class(model_type: str = "llava") -> Any:
    """A sequence-classification class for the checkpoint's architecture (LLaVA here)."""
    from transformers import LlavaPreTrainedModel
    from transformers.modeling_layers import GenericForSequenceClassification

    if model_type != "llava":
        raise ConfigError(f"no reward-model class for model type {model_type!r} yet (LLaVA-style models only)")

    class LlavaForSequenceClassification(GenericForSequenceClassification, LlavaPreTrainedModel):
        pass

    return LlavaForSequenceClassification


def load_backbone(path: str, *, num_labels: int = 1, dtype: Any = None) -> tuple[Any, Any]:
    import torch
    from transformers import AutoConfig, AutoProcessor

    config = AutoConfig.from_pretrained(path)
    config.num_labels = num_labels
    processor = AutoProcessor.from_pretrained(path)
    model = reward_model_class(config.model_type).from_pretrained(path, config=config, dtype=dtype or torch.float32)
    return model, processor


Scored = tuple[list[dict[str, Any]], list[dict[str, Any]], Any, dict[str, Any]]  # prompt, response turns, image, facts


def encode_conversations(processor: Any, rows: Sequence[Scored], mode: str | None) -> dict[str, Any]:
    """Reward-model inputs for (prompt, response turns, image, facts) rows."""
    texts = [
        processor.apply_chat_template(reward_input(prompt, facts, mode) + response, tokenize=False)
        for prompt, response, _, facts in rows
    ]
    images = [image.convert("RGB") for _, _, image, _ in rows]
    return dict(processor(images=images, text=texts, return_tensors="pt", padding=True))


def encode(processor: Any, rows: Sequence[dict[str, Any]], side: str, mode: str | None) -> dict[str, Any]:
    """Model inputs for one side (chosen or rejected) of a batch of pairs."""
    return encode_conversations(
        processor,
        [(row["prompt"], row[side], row["images"][0], json.loads(row.get("image_facts") or "{}")) for row in rows],
        mode,
    )


def scores(model: Any, inputs: dict[str, Any]) -> Any:
    return model(**inputs).logits.squeeze(-1)


def bradley_terry_loss(chosen: Any, rejected: Any) -> Any:
    """-log sigma(r_w - r_l), averaged (LLaVA-RLHF's reward-model loss; METHODS.md 2a)."""
    import torch.nn.functional as F

    return -F.logsigmoid(chosen - rejected).mean()


def split_pairs(dataset: Any, config: RewardConfig) -> tuple[list[int], list[int]]:
    """Held-out and training indices, split by image so no image is on both sides."""
    keep = [i for i, tie in enumerate(dataset["hallucination_tie"]) if config.ties == "use" or not tie]
    images = sorted({dataset[i]["image_sha256"] for i in keep})
    random.Random(config.seed).shuffle(images)
    held = set(images[: max(1, round(len(images) * config.heldout_share))])
    heldout = [i for i in keep if dataset[i]["image_sha256"] in held]
    train = [i for i in keep if dataset[i]["image_sha256"] not in held]
    return train, heldout


def accuracy(
    model: Any, processor: Any, rows: Sequence[dict[str, Any]], mode: str | None, batch_size: int = 16
) -> float:
    """Share of pairs whose chosen response scores above the rejected one."""
    import torch

    right = 0
    model.eval()
    with torch.no_grad():
        for start in range(0, len(rows), batch_size):
            batch = rows[start : start + batch_size]
            chosen = scores(model, encode(processor, batch, "chosen", mode))
            rejected = scores(model, encode(processor, batch, "rejected", mode))
            right += int((chosen > rejected).sum())
    return right / max(1, len(rows))


def train_reward_model(config: RewardConfig, *, progress: bool = True) -> RewardResult:
    """Train, measure held-out pairwise accuracy, save `adapter/`, `config.json` and
    `result.json` under output_dir."""
    import torch
    from peft import get_peft_model
    from tqdm import tqdm  # type: ignore[import-untyped]

    prepare_torch(config)
    began = time.perf_counter()
    dataset = load_pairs(config.data, sources=["ranking"])
    train_ids, heldout_ids = split_pairs(dataset, config)
    if not train_ids or not heldout_ids:
        raise ConfigError("too few ranking pairs to hold some out")
    model, processor = load_backbone(config.model)
    model = get_peft_model(model, config.lora.peft_config("SEQ_CLS", model))
    optimiser = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=config.learning_rate)
    rng = random.Random(config.seed)
    steps_per_epoch = max(1, len(train_ids) // config.batch_size)
    total = max(1, round(steps_per_epoch * config.epochs))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda step: max(0.0, 1 - step / total))
    losses: list[float] = []
    order: list[int] = []
    model.train()
    for _ in tqdm(range(total), desc="reward model", unit="step", disable=not progress):
        if len(order) < config.batch_size:
            refill = list(train_ids)
            rng.shuffle(refill)
            order += refill
        batch = [dataset[i] for i in order[: config.batch_size]]
        del order[: config.batch_size]
        loss = bradley_terry_loss(
            scores(model, encode(processor, batch, "chosen", config.facts_mode())),
            scores(model, encode(processor, batch, "rejected", config.facts_mode())),
        )
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimiser.step()
        schedule.step()
        optimiser.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
    held = accuracy(model, processor, [dataset[i] for i in heldout_ids], config.facts_mode())
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out / "adapter"))
    processor.save_pretrained(str(out / "adapter"))
    info = {"base_model": config.model, "facts": config.facts_mode(), "heldout_accuracy": held}
    (out / "adapter" / REWARD_INFO).write_text(json.dumps(info, indent=2))
    window = max(1, len(losses) // 10)
    result = RewardResult(
        output_dir=str(out),
        train_pairs=len(train_ids),
        heldout_pairs=len(heldout_ids),
        heldout_accuracy=held,
        first_loss=sum(losses[:window]) / window,
        last_loss=sum(losses[-window:]) / window,
        seconds=time.perf_counter() - began,
        config=asdict(config),
    )
    (out / "config.json").write_text(json.dumps(asdict(config), indent=2))
    result.write(out)
    return result
