"""The tiny LLaVA: built from configs, trained on the synthetic world, loadable by
transformers (`AutoProcessor`, `AutoModelForImageTextToText`) and by vLLM.

- A byte-level BPE tokenizer trained here on the world's text, with `<image>`, `<pad>`,
  `<s>`, `</s>` and a LLaVA-1.5 style chat template ("USER: <image>\\n... ASSISTANT: ...").
- A tiny CLIP vision tower whose 32 px patches line up with the 3x3 grid cells of a 96 px
  scene, a linear-GELU projector, and a tiny Llama language model.
- Supervised fine-tuning of the projector and the language model on the world's prompts
  (the vision tower stays frozen, as in LLaVA's recipe), with a known share of wrong answers
  that follow the world's co-occurrence bias: descriptions that add an absent object of the
  scene's theme, counts off by one, wrong colours, "yes" to an absent object. The base
  policy so answers mostly right and still hallucinates in measurable, realistic ways.

torch and transformers are imported inside functions: importing `models` stays light.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import platform
import random
import shutil
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from models.staging import staged
from testbed.toyworld import render
from testbed.toyworld.render import BACKGROUND
from testbed.toyworld.world import (
    CLASSES,
    GRID,
    NUMBER_WORDS,
    PLURALS,
    POSITIONS,
    Question,
    Scene,
    questions_for,
    sample_scenes,
    true_answer,
    wrong_answer,
)

if TYPE_CHECKING:
    import torch
    from transformers import LlavaForConditionalGeneration, LlavaProcessor

IMAGE_TOKEN = "<image>"
SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", IMAGE_TOKEN)
# LLaVA-1.5's conversation format (USER/ASSISTANT turns, the image first in the user turn).
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}"
    "{% if not loop.first %} {% endif %}USER: "
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] in ('image', 'image_url') %}<image>\n"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{% elif message['role'] == 'assistant' %} ASSISTANT: "
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}{% if item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}</s>"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %} ASSISTANT:{% endif %}"
)
MANIFEST = "factloop-tiny.json"
# The project's tiny base policy, built once and shipped with the repository: tests, the
# demo and the benchmarks load these files; `build_toy_model --force` rebuilds them.
SHIPPED = Path(__file__).resolve().parent / "tiny-base"
# Validation scenes for choosing the checkpoint: their own seed and id prefix, apart from the
# training scenes (seed `spec.seed`, "train") and the held-out scenes (rlhf.scene_eval).
VALIDATION_SEED = 20_011


@dataclass(frozen=True)
class Band:
    """What a base policy must measure to serve as the test bed: it reads the image (POPE
    well above the 0.667 of a model that always answers yes) yet keeps a measurable share of
    hallucinated objects for alignment to remove (CHAIR above the floors), and never answers
    with nothing."""

    min_pope_f1: float = 0.8
    chair_i: tuple[float, float] = (0.04, 0.5)
    chair_s: tuple[float, float] = (0.15, 0.9)
    max_empty_share: float = 0.0

    def misses(self, metrics: Mapping[str, Any]) -> list[str]:
        """The band's conditions the metrics fail, in words (empty: in band)."""
        misses = []
        if metrics["pope_f1"] < self.min_pope_f1:
            misses.append(f"POPE F1 {metrics['pope_f1']:.3f} < {self.min_pope_f1}")
        for name in ("chair_i", "chair_s"):
            low, high = getattr(self, name)
            if not low <= metrics[name] <= high:
                misses.append(f"{name} {metrics[name]:.3f} outside [{low}, {high}]")
        if metrics["empty_share"] > self.max_empty_share:
            misses.append(f"empty answers {metrics['empty_share']:.2f} > {self.max_empty_share}")
        return misses


class OutOfBand(RuntimeError):
    """No validated checkpoint of a build landed in the band; the message gives the figures."""


@dataclass(frozen=True)
class TinySpec:
    """Sizes of the tiny LLaVA and of its base-policy training, and how the shipped
    checkpoint is chosen. A build takes about 10 minutes on one core (docs/testbed.md)."""

    seed: int = 0
    image_size: int = 96
    patch_size: int = 32
    vision_hidden: int = 64
    vision_layers: int = 2
    vision_heads: int = 2
    vision_feature_layer: int = -2
    text_hidden: int = 128
    text_layers: int = 4
    text_heads: int = 4
    text_kv_heads: int = 2
    text_intermediate: int = 256
    vocab_size: int = 640
    max_positions: int = 512
    train_scenes: int = 2500
    steps: int = 6000
    batch_size: int = 24
    # At 1.5e-3 (the earlier spec) whether a build ever learnt to read the image was luck: on
    # one machine it answered every existence question from the language prior through 9000
    # steps (POPE F1 0.58-0.67 on the validation scenes), on others it learnt to look at
    # some point after 2400 steps. At 7.5e-4, with the clean first stage and the existence
    # pairs below, builds of seeds 0 and 2 on that machine both read the image by step 3000
    # (validation POPE F1 0.92 and 0.85) and stayed in band to the end (measured; docs/testbed.md).
    learning_rate: float = 7.5e-4
    # Learning-rate multiplier of the projector (and the vision tower when it trains); at
    # 10 the model never learnt to look (measured).
    vision_lr_scale: float = 3.0
    freeze_vision: bool = True
    warmup_steps: int = 60
    # Steps of clean SFT (every answer right) before the biased data: see supervised_finetune.
    clean_steps: int = 1500
    # Share of short SFT answers (count, exist, colour) replaced by a plausible wrong one.
    error_rate: float = 0.1
    # Share of SFT descriptions given a ghost object from the scene's theme (a second ghost
    # follows with probability `second_ghost_rate`): the base policy's hallucination habit.
    describe_error_rate: float = 0.9
    second_ghost_rate: float = 0.6
    # Extra existence questions per training scene, each a pair (a present and an absent
    # class), on top of the one question of each kind: POPE's skill gets its own signal.
    existence_pairs: int = 1
    # One thread: the build's arithmetic does not depend on the core count. It still depends
    # on the CPU (vector kernels differ across CPU models): builds of the earlier spec on two
    # machines of the same kind measured POPE F1 0.854 and 0.639, which is why the model
    # ships with the repository and a build validates its checkpoints against the band.
    threads: int = 1
    # Checkpoint choice: from `validate_from` on, every `validate_every` steps, the model is
    # measured on `validation_scenes` validation scenes, and the latest checkpoint in band is
    # kept (the end of the schedule when it is in band). With none in band by `steps`,
    # training goes on at the schedule's final learning rate until one is, up to
    # `max_steps`; then the build fails with every validation's figures.
    validate_from: int = 3000
    validate_every: int = 1000
    max_steps: int = 9000
    validation_scenes: int = 100
    band: Band = field(default_factory=Band)

    def __post_init__(self) -> None:
        if self.image_size % self.patch_size or (self.image_size // self.patch_size) % GRID:
            raise ValueError("image_size / patch_size must be a multiple of the 3x3 grid")
        if self.max_steps < self.steps:
            raise ValueError("max_steps must be at least steps")
        if self.validate_every < 1 or self.validation_scenes < 1:
            raise ValueError("validate_every and validation_scenes must be at least 1")
        for name in ("error_rate", "describe_error_rate", "second_ghost_rate"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1)")

    @property
    def image_tokens(self) -> int:
        return (self.image_size // self.patch_size) ** 2


# ---------------------------------------------------------------------------------------
# Tokenizer, processor, model


def world_corpus(scenes: Sequence[Scene], seed: int) -> list[str]:
    rng = random.Random(seed)
    lines = []
    for scene in scenes:
        for question in questions_for(rng, scene):
            lines.append(f"USER: {question.text} ASSISTANT: {true_answer(scene, question)}")
    lines += [" ".join(POSITIONS[r]) for r in range(GRID)] + [" ".join(PLURALS.values()), " ".join(NUMBER_WORDS)]
    return lines


def train_tokenizer(corpus: Iterable[str], vocab_size: int) -> Any:
    """A byte-level BPE: any text round-trips, and the world's words become single tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus, trainer=trainer)
    return tokenizer


def build_processor(raw_tokenizer: Any, spec: TinySpec) -> LlavaProcessor:
    from transformers import CLIPImageProcessorPil, LlavaProcessor, PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=raw_tokenizer,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        extra_special_tokens={"image_token": IMAGE_TOKEN},
        padding_side="left",
        model_max_length=spec.max_positions,
    )
    # The Pillow backend: the CLIP processor's default backend needs torchvision (transformers 5.19).
    # The mean is the scenes' background colour, so empty space normalises to zero and the
    # objects carry the signal (CLIP's photo statistics would leave the background dominant).
    image_processor = CLIPImageProcessorPil(
        image_mean=[c / 255 for c in BACKGROUND],
        image_std=[0.25, 0.25, 0.25],
        size={"shortest_edge": spec.image_size},
        crop_size={"height": spec.image_size, "width": spec.image_size},
    )
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=spec.patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # CLIP's class token, dropped by the "default" strategy
        chat_template=CHAT_TEMPLATE,
    )


def build_model(spec: TinySpec, processor: LlavaProcessor) -> LlavaForConditionalGeneration:
    import torch
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    tokenizer = processor.tokenizer
    torch.manual_seed(spec.seed)
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(
            hidden_size=spec.vision_hidden,
            intermediate_size=spec.vision_hidden * 4,
            num_hidden_layers=spec.vision_layers,
            num_attention_heads=spec.vision_heads,
            image_size=spec.image_size,
            patch_size=spec.patch_size,
            projection_dim=spec.vision_hidden,
        ),
        text_config=LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=spec.text_hidden,
            intermediate_size=spec.text_intermediate,
            num_hidden_layers=spec.text_layers,
            num_attention_heads=spec.text_heads,
            num_key_value_heads=spec.text_kv_heads,
            max_position_embeddings=spec.max_positions,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            tie_word_embeddings=False,
        ),
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        vision_feature_select_strategy="default",
        vision_feature_layer=spec.vision_feature_layer,
        image_seq_length=spec.image_tokens,
        projector_hidden_act="gelu",
    )
    model = LlavaForConditionalGeneration(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    return model


def _vllm_key(key: str) -> str:
    # transformers 5.19 writes a LLaVA's CLIP tower as `vision_tower.embeddings.*`;
    # vLLM's loader wants `vision_tower.vision_model.*`. transformers reads both.
    for prefix in ("model.vision_tower.", "vision_tower."):
        if key.startswith(prefix) and not key.startswith(prefix + "vision_model."):
            return prefix + "vision_model." + key[len(prefix) :]
    return key


def save_pretrained(model: LlavaForConditionalGeneration, processor: LlavaProcessor, out: Path) -> None:
    """Save for transformers and vLLM alike (vision tower keys under `vision_model.`)."""
    from safetensors.torch import load_file, save_file

    model.save_pretrained(out)
    processor.save_pretrained(out)
    for shard in out.glob("*.safetensors"):
        tensors = load_file(shard)
        renamed = {_vllm_key(key): value for key, value in tensors.items()}
        if renamed.keys() != tensors.keys():
            save_file(renamed, shard, metadata={"format": "pt"})


# ---------------------------------------------------------------------------------------
# Supervised fine-tuning


@dataclass
class Example:
    scene_index: int
    prompt: str
    answer: str
    wrong: bool
    truth: str  # the right answer (the same as `answer` unless `wrong`)


def _existence_pairs(rng: random.Random, scene: Scene, pairs: int) -> list[Question]:
    """`pairs` existence questions about a present and an absent class each."""
    absent = [cls for cls in CLASSES if cls not in scene.classes]
    questions = []
    for _ in range(pairs if absent else 0):
        for cls in (rng.choice(sorted(scene.classes)), rng.choice(absent)):
            questions.append(Question("exist", f"Is there a {cls} in the image?", cls))
    return questions


def sft_examples(scenes: Sequence[Scene], spec: TinySpec) -> list[Example]:
    rng = random.Random(spec.seed + 1)
    examples = []
    for index, scene in enumerate(scenes):
        for question in [*questions_for(rng, scene), *_existence_pairs(rng, scene, spec.existence_pairs)]:
            truth = true_answer(scene, question)
            answer, wrong = truth, False
            rate = spec.describe_error_rate if question.kind == "describe" else spec.error_rate
            if rng.random() < rate:
                ghosts = 2 if rng.random() < spec.second_ghost_rate else 1
                candidate = wrong_answer(rng, scene, question, ghosts)
                if candidate is not None:
                    answer, wrong = candidate, True
            examples.append(Example(index, question.text, answer, wrong, truth))
    return examples


def prompt_text(processor: LlavaProcessor, question: str) -> str:
    messages: Any = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    return str(processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False))


def _encode(
    processor: LlavaProcessor, spec: TinySpec, examples: Sequence[Example], *, truth: bool = False
) -> list[tuple[list[int], int]]:
    """Token ids of prompt + answer (the right one with `truth`) + </s>, with the prompt
    length (labels start after it)."""
    tokenizer = processor.tokenizer
    image_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    encoded = []
    prompt_cache: dict[str, list[int]] = {}
    for example in examples:
        if example.prompt not in prompt_cache:
            ids = tokenizer(prompt_text(processor, example.prompt), add_special_tokens=False)["input_ids"]
            expanded: list[int] = []
            for token in ids:
                expanded.extend([image_id] * spec.image_tokens if token == image_id else [token])
            prompt_cache[example.prompt] = expanded
        prompt_ids = prompt_cache[example.prompt]
        answer_ids = tokenizer(" " + (example.truth if truth else example.answer), add_special_tokens=False)[
            "input_ids"
        ]
        encoded.append(([*prompt_ids, *answer_ids, tokenizer.eos_token_id], len(prompt_ids)))
    return encoded


def pixel_values(processor: LlavaProcessor, scenes: Sequence[Scene], spec: TinySpec) -> torch.Tensor:
    images = [render(scene, spec.image_size) for scene in scenes]
    out: torch.Tensor = processor.image_processor(images=images, return_tensors="pt")["pixel_values"]
    return out


ProgressFn = Callable[[int, int, float], None]
# A policy's hallucination metrics on scenes (rlhf.scene_eval.evaluate_toyworld): at least
# chair_i, chair_s, pope_f1 and empty_share.
Measure = Callable[[Any, Any, Sequence[Scene]], Mapping[str, Any]]


def validation_scenes(spec: TinySpec) -> list[Scene]:
    return sample_scenes(VALIDATION_SEED, spec.validation_scenes, prefix="validation")


class CheckpointPicker:
    """Measures the model at the spec's validation steps and keeps the latest checkpoint in
    band (a copy of its weights in memory: the tiny model is ~4 MB)."""

    def __init__(self, spec: TinySpec, measure: Measure, report: Callable[[str], None] | None = None) -> None:
        self.spec = spec
        self.measure = measure
        self.report = report
        self.scenes = validation_scenes(spec)
        self.history: list[dict[str, Any]] = []
        self.chosen: dict[str, Any] | None = None
        self._chosen_state: dict[str, Any] | None = None

    def due(self, step: int) -> bool:
        return step >= self.spec.validate_from and step % self.spec.validate_every == 0

    def done(self, step: int) -> bool:
        return step >= self.spec.steps and self.chosen is not None

    def offer(self, step: int, model: Any, processor: Any) -> None:
        import torch

        model.eval()
        # Generation seeds torch's global generator; training's own stream must not move.
        with torch.random.fork_rng(devices=[]):
            metrics = self.measure(model, processor, self.scenes)
        model.train()
        misses = self.spec.band.misses(metrics)
        row = {
            "step": step,
            **{key: round(float(metrics[key]), 4) for key in ("chair_i", "chair_s", "pope_f1", "empty_share")},
            "in_band": not misses,
            "misses": misses,
        }
        self.history.append(row)
        if self.report is not None:
            self.report(self.table().splitlines()[-1])
        if not misses:
            self.chosen = row
            self._chosen_state = copy.deepcopy(model.state_dict())

    def restore(self, model: Any) -> None:
        """Load the chosen checkpoint into `model`, or fail with every validation's figures."""
        if self._chosen_state is None:
            raise OutOfBand(
                f"no checkpoint of the tiny model landed in the band {self.spec.band} on "
                f"{len(self.scenes)} validation scenes by step {self.spec.max_steps}:\n{self.table()}"
            )
        model.load_state_dict(self._chosen_state)
        model.eval()

    def table(self) -> str:
        lines = [f"{'step':>6} {'CHAIR_i':>8} {'CHAIR_s':>8} {'POPE F1':>8} {'empty':>6}  band"]
        for row in self.history:
            verdict = "in" if row["in_band"] else "out: " + "; ".join(row["misses"])
            lines.append(
                f"{row['step']:>6} {row['chair_i']:>8.3f} {row['chair_s']:>8.3f} {row['pope_f1']:>8.3f} "
                f"{row['empty_share']:>6.2f}  {verdict}"
            )
        return "\n".join(lines)


def _length_buckets(
    encoded: Sequence[tuple[list[int], int]], batch_size: int, steps: int, seed: int
) -> list[list[int]]:
    """`steps` batches of similar-length examples (little padding), in a seeded random order.

    Long descriptions and one-line answers in one batch would pad every row to the longest.
    """
    rng = random.Random(seed)
    by_length = sorted(range(len(encoded)), key=lambda i: (len(encoded[i][0]), rng.random()))
    chunks = [by_length[i : i + batch_size] for i in range(0, len(by_length) - batch_size + 1, batch_size)]
    batches: list[list[int]] = []
    while len(batches) < steps:
        rng.shuffle(chunks)
        batches.extend(chunks)
    return batches[:steps]


def supervised_finetune(
    model: LlavaForConditionalGeneration,
    processor: LlavaProcessor,
    scenes: Sequence[Scene],
    spec: TinySpec,
    progress: ProgressFn | None = None,
    picker: CheckpointPicker | None = None,
) -> list[float]:
    """Train on the world's prompts; returns the loss of each step.

    With a `picker`, training may run past `spec.steps` (up to `spec.max_steps`) until a
    checkpoint is in band, and the model ends holding the chosen checkpoint's weights.
    """
    import torch

    torch.manual_seed(spec.seed)
    examples = sft_examples(scenes, spec)
    encoded = _encode(processor, spec, examples)
    # LLaVA's stage 1 aligns the projector on clean captions before instruction tuning (Liu
    # et al., 2023, "Visual Instruction Tuning", sec. 4.2); here the first `clean_steps`
    # steps train on the right answers only, so the model learns to look before it learns
    # the biased errors (without it, whether a build ever read the image was luck).
    clean = _encode(processor, spec, examples, truth=True) if spec.clean_steps else encoded
    pixels = pixel_values(processor, scenes, spec)
    pad = processor.tokenizer.pad_token_id
    # LLaVA trains the projector and the language model on a frozen vision tower. Here the
    # tower is randomly initialised, and frozen it still separates every class and colour
    # per cell (a linear probe of its features is ~100% accurate); trained jointly from
    # scratch, its features collapsed towards position-only codes within a few hundred
    # steps and the model stopped looking (measured while building this).
    if spec.freeze_vision:
        model.model.vision_tower.requires_grad_(False)
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    seeing = [p for n, p in trainable if "vision_tower" in n or "multi_modal_projector" in n]
    speaking = [p for n, p in trainable if not ("vision_tower" in n or "multi_modal_projector" in n)]
    optimiser = torch.optim.AdamW(
        [
            {"params": seeing, "lr": spec.learning_rate * spec.vision_lr_scale},
            {"params": speaking, "lr": spec.learning_rate},
        ],
        weight_decay=0.01,
    )

    def lr_at(step: int) -> float:
        if step < spec.warmup_steps:
            return (step + 1) / spec.warmup_steps
        # Cosine decay to 5% over the remaining steps, then 5% for any steps past `steps`.
        done = min(1.0, (step - spec.warmup_steps) / max(1, spec.steps - spec.warmup_steps))
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * done))

    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, lr_at)
    model.train()
    losses: list[float] = []
    last = spec.max_steps if picker is not None else spec.steps
    # The first `steps` batches are the same whatever `last` is (the order only extends).
    batches = _length_buckets(encoded, spec.batch_size, last, spec.seed)
    for step, batch in enumerate(batches):
        source = clean if step < spec.clean_steps else encoded
        width = max(len(source[i][0]) for i in batch)
        input_ids = torch.full((len(batch), width), pad, dtype=torch.long)  # (B, T)
        labels = torch.full((len(batch), width), -100, dtype=torch.long)  # (B, T)
        attention = torch.zeros((len(batch), width), dtype=torch.long)  # (B, T)
        for row, index in enumerate(batch):
            ids, prompt_len = source[index]
            input_ids[row, : len(ids)] = torch.tensor(ids)
            labels[row, prompt_len : len(ids)] = torch.tensor(ids[prompt_len:])
            attention[row, : len(ids)] = 1
        scene_rows = torch.tensor([examples[i].scene_index for i in batch])
        output = model(input_ids=input_ids, attention_mask=attention, pixel_values=pixels[scene_rows], labels=labels)
        output.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimiser.step()
        schedule.step()
        optimiser.zero_grad(set_to_none=True)
        losses.append(float(output.loss.detach()))
        if progress is not None:
            progress(step + 1, spec.steps if step < spec.steps else last, losses[-1])
        if picker is not None and picker.due(step + 1):
            picker.offer(step + 1, model, processor)
            if picker.done(step + 1):
                break
    if picker is not None:
        picker.restore(model)
    model.eval()
    return losses


# ---------------------------------------------------------------------------------------
# Generation (in-process; the server path is vLLM)


def generate(
    model: LlavaForConditionalGeneration,
    processor: LlavaProcessor,
    images: Sequence[Any],
    questions: Sequence[str],
    *,
    max_new_tokens: int = 80,
    batch_size: int = 64,
    do_sample: bool = False,
    temperature: float = 1.0,
    seed: int = 0,
) -> list[str]:
    """Answers of an image-text-to-text model to (image, question) pairs; greedy unless `do_sample`."""
    import torch

    if len(images) != len(questions):
        raise ValueError(f"{len(images)} images but {len(questions)} questions")
    answers: list[str] = []
    torch.manual_seed(seed)
    generator: Any = model  # transformers' stubs type generate() for text-only models
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            stop = min(start + batch_size, len(images))
            texts = [prompt_text(processor, question) for question in questions[start:stop]]
            # One list of images per text: the form every family's processor takes.
            batch = [[image] for image in images[start:stop]]
            inputs = processor(images=batch, text=texts, return_tensors="pt", padding=True)
            inputs.pop("labels", None)  # PaliGemma's processor adds labels
            output = generator.generate(
                **inputs,
                max_new_tokens=max_new_tokens,
                do_sample=do_sample,
                temperature=temperature if do_sample else None,
                top_p=None,
                top_k=None,
            )
            new_tokens = output[:, inputs["input_ids"].shape[1] :]
            answers += [text.strip() for text in processor.batch_decode(new_tokens, skip_special_tokens=True)]
    return answers


def reset_projector(model: LlavaForConditionalGeneration, seed: int = 0) -> None:
    """Re-initialise the projector in place: the model keeps its language but is blind (a
    reference for how much a policy's answers owe to looking)."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.model.multi_modal_projector.named_parameters():
            if name.endswith("weight"):
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.02)
            else:
                parameter.zero_()


def image_size_of(processor: Any, default: int = 96) -> int:
    """The side, in pixels, the processor brings an image to (the size to render scenes at):
    a crop's height (CLIP), else the size's height, shortest or longest edge; Qwen2/2.5-VL
    count their size in pixels of area (its square root is the side). `default` (the
    scenes' own size) when the processor names none."""
    image = getattr(processor, "image_processor", None)
    crop = getattr(image, "crop_size", None) or {}
    size = getattr(image, "size", None) or {}
    if hasattr(image, "temporal_patch_size") and size.get("shortest_edge"):  # Qwen's pixel area
        return math.isqrt(int(size["shortest_edge"]))
    for value in (crop.get("height"), size.get("height"), size.get("shortest_edge"), size.get("longest_edge")):
        if value:
            return int(value)
    return default


# ---------------------------------------------------------------------------------------
# The whole build


def spec_fingerprint(spec: TinySpec) -> dict[str, Any]:
    return asdict(spec)


def spec_hash(spec: TinySpec) -> str:
    """SHA-256 of the spec's canonical JSON: the name of what a build was made from."""
    canonical = json.dumps(spec_fingerprint(spec), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def file_digests(folder: Path) -> dict[str, str]:
    """SHA-256 of every file of a built model but its manifest, by name."""
    return {
        path.name: hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.iterdir())
        if path.is_file() and path.name != MANIFEST
    }


def read_manifest(folder: Path) -> dict[str, Any]:
    return dict(json.loads((Path(folder) / MANIFEST).read_text()))


def problems(out: Path, spec: TinySpec) -> list[str]:
    """Why the folder is not a complete build of `spec` (empty: it is)."""
    out = Path(out)
    try:
        manifest = read_manifest(out)
    except (OSError, ValueError) as error:
        return [f"no readable {MANIFEST} in {out} ({error.__class__.__name__})"]
    found = []
    if manifest.get("spec_hash") != spec_hash(spec):
        found.append(f"built from spec {str(manifest.get('spec_hash'))[:12]}, not {spec_hash(spec)[:12]}")
    digests = file_digests(out)
    for name, digest in (manifest.get("files") or {}).items():
        if digests.get(name) != digest:
            found.append(f"{name} is {'missing' if name not in digests else 'changed'}")
    if not manifest.get("files"):
        found.append("the manifest lists no files")
    return found


def is_built(out: Path, spec: TinySpec) -> bool:
    return not problems(out, spec)


def _install(out: Path, write: Callable[[Path], None]) -> None:
    """Write a model folder beside `out` and rename it into place: `out` is either as it
    was or complete."""
    with staged(out, replace=True) as staging:
        write(staging)


def _copy_shipped(staging: Path) -> None:
    shutil.copytree(SHIPPED, staging, dirs_exist_ok=True)


def build_toy_model(
    out: Path,
    spec: TinySpec | None = None,
    *,
    measure: Measure | None = None,
    progress: ProgressFn | None = None,
    report: Callable[[str], None] | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """The tiny base policy at `out`; returns its manifest.

    Reused when `out` already holds a build of `spec`, copied from the shipped model when
    that is one, else built (always with `force`). With `measure`, the build chooses its
    checkpoint on the validation scenes (`CheckpointPicker`) and raises `OutOfBand` with
    the figures when none lands in the band; nothing is written then.
    """
    import torch

    spec = spec or TinySpec()
    out = Path(out).resolve()
    if not force:
        if is_built(out, spec):
            return read_manifest(out)
        if out != SHIPPED and is_built(SHIPPED, spec):
            _install(out, _copy_shipped)
            return read_manifest(out)
    torch.set_num_threads(spec.threads)
    started = time.monotonic()
    scenes = sample_scenes(spec.seed, spec.train_scenes, prefix="train")
    processor = build_processor(train_tokenizer(world_corpus(scenes, spec.seed), spec.vocab_size), spec)
    model = build_model(spec, processor)
    picker = CheckpointPicker(spec, measure, report) if measure is not None else None
    losses = supervised_finetune(model, processor, scenes, spec, progress, picker)
    manifest: dict[str, Any] = {
        "kind": "factloop-tiny-llava",
        "spec": spec_fingerprint(spec),
        "spec_hash": spec_hash(spec),
        "parameters": sum(p.numel() for p in model.parameters()),
        "steps_trained": len(losses),
        "chosen_step": picker.chosen["step"] if picker and picker.chosen else len(losses),
        "validation": picker.history if picker else [],
        "final_loss": sum(losses[-50:]) / len(losses[-50:]),
        "losses": losses[:: max(1, len(losses) // 200)],
        "build_seconds": round(time.monotonic() - started, 1),
        "built_on": {"machine": platform.machine(), "processor": _cpu_name(), "torch": torch.__version__},
    }

    def write(staging: Path) -> None:
        save_pretrained(model, processor, staging)
        manifest["files"] = file_digests(staging)
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")

    _install(out, write)
    return manifest


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()
