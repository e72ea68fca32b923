"""A fact-augmented Bradley-Terry reward model for image-text-to-text models.

LLaVA-RLHF (arXiv:2309.14525, section 2.3; docs/methods.md 2a): the VLM
backbone with a scalar head on the hidden state of the last response token, trained on
ranking pairs with the loss -log sigma(r(x, y_w) - r(x, y_l)). Fact-RLHF adds what is known
about the image (captions, object lists) to the reward model's input under a fixed
instruction; the policy never sees it.

The reward model is one class for every image-text-to-text family (`reward_model_class`):
the checkpoint's own model as AutoModelForImageTextToText loads it, with a linear head on
the last layer's hidden state (transformers ships sequence-classification heads for a few
families only: Gemma 3's is GenericForSequenceClassification over its base model, which
BLIP-2's nested outputs do not fit). trl's RewardTrainer is text-only, so
it trains on transformers' Trainer with the Bradley-Terry loss (`trainer_class`): LoRA on
the language model and the head trained in full (peft's modules_to_save), device
placement, mixed precision, gradient checkpointing, checkpoints and resume, accelerate.
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
from contract.run import ADAPTER
from rlhf.common import last_checkpoint, mean_over_ranks, prepare_torch, write_log
from rlhf.config import DTYPES, ConfigError, LoraSettings, normalise_run_inputs
from rlhf.training_data import load_pairs

REWARD_INFO = "factloop_reward.json"  # in the adapter folder: what scoring needs besides the weights
# 2: the head on any image-text-to-text backbone (ImageTextRewardModel); 1 (no "format"
# field) was the LLaVA-only sequence-classification class, whose weights are named differently.
REWARD_FORMAT = 2
LOG_FILE = "log.jsonl"  # the Trainer's log history, one entry a line

# LLaVA-RLHF's instruction for the facts (paraphrased; docs/methods.md 2a).
FACT_INSTRUCTION = "The response should be fully supported by the following facts about the image:"
TIES = ("use", "drop")
FACT_FORMATS = ("captions", "objects")

# The Fact-RLHF reward input as LLaVA-RLHF released it (`released: true`): after the
# response, a new user turn with its four criteria, the image's captions as bullets inside
# the first (shuffled on every call), and the assistant's opening, at whose last token the
# score is read. The text is RLHF/prompts/fact_rlhf_reward_prompt.txt split at its Vicuna
# turn markers ("USER: " ... " ASSISTANT: "), and FACTUAL_PROMPT of RLHF/data_utils/
# constants.py; ppo_trainer.py `rollout` fills it (a "  - {caption}\n" line per caption, after
# random.shuffle), and data_utils_rm.py shuffles the same way when the reward model trains.
RELEASED = "released"  # the facts mode of a reward model that reads the released input
RELEASED_EVALUATION = (
    "Please evaluate the quality of your last response. There are several dimensions you should consider in your "
    "evaluation:\n\n1. Accurate: The AI should provide factual and accurate information from the image, and refrain "
    "from making statements that are not supported by the image or inconsistent with the image. {factual_prompt}\n2. "
    "Helpful: The AI\u2019s response should precisely serve the user's needs and interests, while grounding the "
    "response in the image.\n3. Language Natural: The AI should employ language that flows smoothly and is free from "
    "repetitive or awkward constructs.\n4. Concise: The AI should efficiently address the task or answer the question, "
    "communicating the necessary information with brevity and clarity.\n\nA good response should be accurate, "
    "helpful, language natural, and concise."
)
RELEASED_FACTUAL_PROMPT = (
    "Specifically, the AI's response should be fully supported by the combination of the following captions:\n"
)
RELEASED_SCORE_PREFIX = "Following your definitions, the quality score of my last response is"
_SHUFFLE = random.Random(0)  # the release shuffles with Python's random; seeded here for repeatable runs


def released_evaluation(facts: dict[str, Any], rng: random.Random | None = None) -> str:
    """The released evaluation turn for an image: its captions (where it has none, its
    object list as one line) shuffled, each a "  - caption" line after FACTUAL_PROMPT."""
    lines = [c for c in facts.get("captions", []) if isinstance(c, str) and c.strip()]
    if not lines:
        objects = facts_text(facts, "objects")
        lines = [objects] if objects else []
    lines = lines[:]
    (rng or _SHUFFLE).shuffle(lines)
    factual = RELEASED_FACTUAL_PROMPT + "".join(f"  - {line}\n" for line in lines)
    return RELEASED_EVALUATION.replace("{factual_prompt}", factual)


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
    """Pairs per device step."""
    gradient_accumulation_steps: int = 1
    """Steps whose gradients add up before an update."""
    dtype: str = "float32"
    """Weights' dtype when loading: float32, bfloat16 (with bf16 mixed precision) or float16."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass (less memory, slower)."""
    share_prefix: bool = True
    """Run each pair's common beginning (prompt, image, facts) once, both responses
    continuing from its key-value cache (rlhf/prefix.py): the same scores to float rounding,
    less work; the families rlhf/prefix.py checked (REWARD_SUPPORTED), without gradient
    checkpointing; the plain path elsewhere."""
    logging_steps: int = 10
    """Log (console, TensorBoard) every this many updates."""
    save_steps: int = 0
    """Keep a resumable checkpoint every this many updates (0: only the final model)."""
    seed: int = 0
    """Seed of the split, data order and head initialisation."""
    threads: int | None = None
    """torch CPU threads (None: torch's default)."""
    max_pairs: int | None = None
    """Train on at most this many pairs, the first of the split (None: all; a preflight takes one batch)."""
    released: bool = False
    """Read LLaVA-RLHF's released Fact-RLHF input (README, "The reward model"): after the
    response, a user turn with its four criteria and the image's captions as shuffled
    bullets, then "Following your definitions, the quality score of my last response is",
    the score read at its last token. Off: FactLoop's input, the facts as one sentence in
    the last user turn before the response, the score at the response's last token."""

    def facts_mode(self) -> str | None:
        """The fact format the reward model reads ("released": LLaVA-RLHF's own input), or
        None without augmentation."""
        if self.released:
            return RELEASED
        return self.fact_format if self.fact_augmentation else None

    def __post_init__(self) -> None:
        normalise_run_inputs(self)
        if self.fact_format not in FACT_FORMATS:
            raise ConfigError(f"fact_format must be one of {', '.join(FACT_FORMATS)}, got {self.fact_format!r}")
        if self.ties not in TIES:
            raise ConfigError(f"ties must be one of {', '.join(TIES)}, got {self.ties!r}")
        if self.released and not self.fact_augmentation:
            raise ConfigError("released is the Fact-RLHF input: it needs fact_augmentation")
        if self.max_pairs is not None and self.max_pairs < 1:
            raise ConfigError(f"max_pairs must be at least 1, got {self.max_pairs}")
        if not 0 < self.heldout_share < 1:
            raise ConfigError(f"heldout_share must be between 0 and 1, got {self.heldout_share}")
        if self.learning_rate <= 0 or self.epochs <= 0 or self.batch_size < 1:
            raise ConfigError("learning_rate and epochs must be positive, batch_size at least 1")
        if self.gradient_accumulation_steps < 1 or self.logging_steps < 1 or self.save_steps < 0:
            raise ConfigError("gradient_accumulation_steps and logging_steps must be at least 1, save_steps 0 or more")
        if self.dtype not in DTYPES:
            raise ConfigError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")


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


def reward_model_class() -> type:
    """The reward model's class: a scalar head on any image-text-to-text backbone (built on
    first use: it subclasses torch's Module)."""
    global _REWARD_CLASS
    if _REWARD_CLASS is None:
        _REWARD_CLASS = _define_reward_class()
    return _REWARD_CLASS


_REWARD_CLASS: type | None = None
_NOT_MODEL_INPUTS = ("labels", "output_attentions", "output_hidden_states", "return_dict", "use_cache", "task_ids")


def _define_reward_class() -> type:
    import inspect

    import torch
    from transformers.modeling_outputs import SequenceClassifierOutput

    class ImageTextRewardModel(torch.nn.Module):
        """`backbone`: the checkpoint's own image-text-to-text model (what
        AutoModelForImageTextToText loads, so every family transformers ships); `score`: a
        linear head on the last layer's hidden state. The reward is the head at the last
        real token (by the attention mask: either padding side); `token_values` applies
        it at every position (PPO's critic). The language-model head is not used; where
        the backbone takes `logits_to_keep`, it computes one position's logits only."""

        # Read by transformers' weight-conversion scoping when peft loads an adapter: the
        # reward model's own names are its keys, from the root.
        base_model_prefix = ""
        share_prefix = True  # one pass over each pair's common beginning (rlhf/prefix.py)

        def __init__(self, backbone: Any) -> None:
            super().__init__()
            self.backbone = backbone
            self.config = backbone.config
            hidden = backbone.config.get_text_config().hidden_size
            self.score = torch.nn.Linear(hidden, 1, bias=False)
            torch.nn.init.normal_(self.score.weight, std=1 / (hidden + 1) ** 0.5)
            self.score.to(next(backbone.parameters()).dtype)
            parameters = inspect.signature(backbone.forward).parameters
            self._logits_to_keep = "logits_to_keep" in parameters

        def get_decoder(self) -> Any:  # where LoRA goes (rlhf.config.language_model_prefix)
            return self.backbone.get_decoder()

        def gradient_checkpointing_enable(
            self, gradient_checkpointing_kwargs: dict[str, Any] | None = None, **options: Any
        ) -> None:
            # Non-reentrant by default: the frozen embeddings' outputs need no gradient then.
            self.backbone.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs=gradient_checkpointing_kwargs or {"use_reentrant": False}, **options
            )

        def gradient_checkpointing_disable(self) -> None:
            self.backbone.gradient_checkpointing_disable()

        def hidden_states(self, inputs: dict[str, Any]) -> Any:
            """The last layer's hidden states, one per input token: (batch, tokens, hidden)."""
            kwargs = {k: v for k, v in inputs.items() if v is not None and k not in _NOT_MODEL_INPUTS}
            if self._logits_to_keep:
                kwargs["logits_to_keep"] = 1
            output = self.backbone(**kwargs, output_hidden_states=True, return_dict=True, use_cache=False)
            states = getattr(output, "hidden_states", None)
            if states is None:  # BLIP-2 and InstructBLIP keep their language model's outputs apart
                states = output.language_model_outputs.hidden_states
            return states[-1]

        def token_values(self, inputs: dict[str, Any]) -> Any:
            """The head at every position: (batch, tokens), float32."""
            hidden = self.hidden_states(inputs)
            return self.score(hidden.to(self.score.weight.dtype)).squeeze(-1).float()

        def forward(self, per_token: bool = False, **inputs: Any) -> Any:
            """The score at each sequence's last real token, or with `per_token` the values
            at every position (PPO's critic: through forward, so that a distributed wrapper
            syncs its gradients). A batch of pairs (`pair_batch`) runs each pair's common
            beginning once where rlhf/prefix.py applies (`share_prefix`)."""
            if not per_token and self.share_prefix:
                from rlhf.prefix import shared_prefix_last_hidden

                kwargs = {k: v for k, v in inputs.items() if v is not None and k not in _NOT_MODEL_INPUTS}
                last = shared_prefix_last_hidden(self.backbone, kwargs)
                if last is not None:
                    rewards = self.score(last.to(self.score.weight.dtype)).squeeze(-1).float()
                    return SequenceClassifierOutput(logits=rewards.unsqueeze(-1))
            values = self.token_values(inputs)
            if per_token:
                return values
            mask = inputs.get("attention_mask")
            if mask is None:
                last = torch.full((values.size(0),), values.size(1) - 1, device=values.device)
            else:
                positions = torch.arange(mask.size(1), device=mask.device)
                last = (positions * (mask > 0)).argmax(-1).to(values.device)
            rewards = values[torch.arange(values.size(0), device=values.device), last]
            return SequenceClassifierOutput(logits=rewards.unsqueeze(-1))

    return ImageTextRewardModel


def load_backbone(path: str, *, dtype: Any = None) -> tuple[Any, Any]:
    """The reward model's architecture on checkpoint `path` (head freshly initialised) and
    the checkpoint's processor."""
    import torch
    from transformers import AutoModelForImageTextToText

    from rlhf.common import load_processor

    processor = load_processor(path)
    backbone = AutoModelForImageTextToText.from_pretrained(path, dtype=dtype or torch.float32)
    return reward_model_class()(backbone), processor


Scored = tuple[list[dict[str, Any]], list[dict[str, Any]], Any, dict[str, Any]]  # prompt, response turns, image, facts


def released_conversation(
    prompt: list[dict[str, Any]],
    response: list[dict[str, Any]],
    facts: dict[str, Any],
    rng: random.Random | None = None,
) -> list[dict[str, Any]]:
    """The released reward input as turns: the prompt, the response, the evaluation turn and
    the assistant's opening (rendered with continue_final_message, so it ends at "is")."""
    evaluation = {"role": "user", "content": [{"type": "text", "text": released_evaluation(facts, rng)}]}
    opening = {"role": "assistant", "content": [{"type": "text", "text": RELEASED_SCORE_PREFIX}]}
    return reward_input(prompt, facts, None) + response + [evaluation, opening]


def encode_conversations(
    processor: Any, rows: Sequence[Scored], mode: str | None, rng: random.Random | None = None
) -> dict[str, Any]:
    """Reward-model inputs for (prompt, response turns, image, facts) rows."""
    if mode == RELEASED:
        texts = [
            processor.apply_chat_template(
                released_conversation(prompt, response, facts, rng), tokenize=False, continue_final_message=True
            )
            for prompt, response, _, facts in rows
        ]
    else:
        texts = [
            processor.apply_chat_template(reward_input(prompt, facts, mode) + response, tokenize=False)
            for prompt, response, _, facts in rows
        ]
    images = [[image.convert("RGB")] for _, _, image, _ in rows]  # one list per text: every processor takes it
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
    """-log sigma(r_w - r_l), averaged (LLaVA-RLHF's reward-model loss; docs/methods.md 2a)."""
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
    return train[: config.max_pairs], heldout


def _device_of(model: Any) -> Any:
    return next(model.parameters()).device


def accuracy(
    model: Any, processor: Any, rows: Sequence[dict[str, Any]], mode: str | None, batch_size: int = 16
) -> float:
    """Share of pairs whose chosen response scores above the rejected one."""
    import torch

    right = 0
    model.eval()
    device = _device_of(model)
    with torch.no_grad():
        for start in range(0, len(rows), batch_size):
            batch = rows[start : start + batch_size]
            inputs = {k: v.to(device) for k, v in pair_batch(processor, batch, mode).items()}
            both = scores(model, inputs)
            right += int((both[: len(batch)] > both[len(batch) :]).sum())
    return right / max(1, len(rows))


def pair_batch(processor: Any, rows: Sequence[dict[str, Any]], mode: str | None) -> dict[str, Any]:
    """One batch of 2n sequences for n pairs: the chosen responses, then the rejected ones
    (one forward pass scores both sides)."""
    return encode_conversations(
        processor,
        [
            (row["prompt"], row[side], row["images"][0], json.loads(row.get("image_facts") or "{}"))
            for side in ("chosen", "rejected")
            for row in rows
        ],
        mode,
    )


def trainer_class() -> type:
    """transformers' Trainer with the Bradley-Terry loss (built on first use)."""
    from transformers import Trainer

    class BradleyTerryTrainer(Trainer):
        """Each batch holds n chosen then n rejected sequences (`pair_batch`); the loss is
        -log sigma(r_w - r_l) over the n pairs. The Trainer brings device placement,
        mixed precision, gradient checkpointing, checkpoints and resume, and accelerate's
        distributed launch."""

        losses: list[float]

        def compute_loss(
            self, model: Any, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None
        ) -> Any:
            output = model(**inputs)
            rewards = output.logits.squeeze(-1).float()
            half = rewards.size(0) // 2
            loss = bradley_terry_loss(rewards[:half], rewards[half:])
            if model.training:
                self.losses.append(float(loss.detach()))
            return (loss, output) if return_outputs else loss

    return BradleyTerryTrainer


def build_trainer(config: RewardConfig, *, report_to: list[str] | None = None) -> tuple[Any, Any, list[int]]:
    """The reward run's trainer, ready to `.train()`, with the dataset and held-out ids."""
    import torch
    from peft import get_peft_model
    from transformers import TrainingArguments

    from rlhf.common import common_trainer_arguments

    prepare_torch(config)
    dataset = load_pairs(config.data, sources=["ranking"])
    train_ids, heldout_ids = split_pairs(dataset, config)
    if not train_ids or not heldout_ids:
        raise ConfigError("too few ranking pairs to hold some out")
    model, processor = load_backbone(config.model, dtype=getattr(torch, config.dtype))
    model.share_prefix = config.share_prefix
    model = get_peft_model(model, config.lora.peft_config(None, model, extra_to_save=["score"]))
    mode = config.facts_mode()
    args = TrainingArguments(
        per_device_train_batch_size=config.batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        num_train_epochs=config.epochs,
        lr_scheduler_type="linear",
        max_grad_norm=1.0,
        gradient_checkpointing=config.gradient_checkpointing,
        save_strategy="steps" if config.save_steps else "no",
        save_steps=config.save_steps or 500,
        **common_trainer_arguments(config, [] if report_to is None else report_to),
    )
    trainer = trainer_class()(
        model=model,
        args=args,
        train_dataset=dataset.select(train_ids),
        data_collator=lambda rows: pair_batch(processor, rows, mode),
    )
    trainer.losses = []
    trainer.processor = processor
    return trainer, dataset, heldout_ids


TRAIN_ACCURACY_PAIRS = 256  # training pairs scored before and after training


def train_reward_model(
    config: RewardConfig, *, resume: bool = False, report_to: list[str] | None = None, progress: bool = True
) -> RewardResult:
    """Train, measure held-out pairwise accuracy, save `adapter/`, `config.json` and
    `result.json` under output_dir. With `resume`, training continues from the newest
    checkpoint in output_dir."""
    began = time.perf_counter()
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    trainer, dataset, heldout_ids = build_trainer(config, report_to=report_to)
    if not progress:
        trainer.remove_callback(_progress_callback())
    checkpoint = last_checkpoint(out) if resume else None
    shown = [trainer.train_dataset[i] for i in range(min(TRAIN_ACCURACY_PAIRS, len(trainer.train_dataset)))]
    model, processor = trainer.model, trainer.processor
    before = None if checkpoint else accuracy(model, processor, shown, config.facts_mode())
    trainer.train(resume_from_checkpoint=checkpoint)
    held = accuracy(model, processor, [dataset[i] for i in heldout_ids], config.facts_mode())
    # Every rank takes part in the save (a sharded model is gathered first); rank 0 writes.
    trainer.save_model(str(out / ADAPTER))
    if trainer.is_world_process_zero():
        (out / ADAPTER / "training_args.bin").unlink(missing_ok=True)
        processor.save_pretrained(str(out / ADAPTER))
        info = {
            "format": REWARD_FORMAT,
            "base_model": config.model,
            "facts": config.facts_mode(),
            "heldout_accuracy": held,
        }
        (out / ADAPTER / REWARD_INFO).write_text(json.dumps(info, indent=2))
    losses = mean_over_ranks(trainer.accelerator, trainer.losses) or [float("nan")]
    window = max(1, len(losses) // 10)
    result = RewardResult(
        output_dir=str(out),
        train_pairs=len(trainer.train_dataset),
        heldout_pairs=len(heldout_ids),
        heldout_accuracy=held,
        first_loss=sum(losses[:window]) / window,
        last_loss=sum(losses[-window:]) / window,
        seconds=time.perf_counter() - began,
        config=asdict(config),
        train_accuracy_before=before,
        train_accuracy=accuracy(model, processor, shown, config.facts_mode()),
        steps=trainer.state.global_step,
        resumed_at=int(checkpoint.rsplit("-", 1)[-1]) if checkpoint else 0,
    )
    if trainer.is_world_process_zero():
        (out / "config.json").write_text(json.dumps(asdict(config), indent=2))
        write_log(out / LOG_FILE, trainer.state.log_history)
        result.write(out)
    return result


def _progress_callback() -> type:
    from transformers.trainer_callback import ProgressCallback

    return ProgressCallback
