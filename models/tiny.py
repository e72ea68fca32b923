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

import json
import math
import random
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from models.toyworld import render
from models.toyworld.render import BACKGROUND
from models.toyworld.world import (
    GRID,
    NUMBER_WORDS,
    PLURALS,
    POSITIONS,
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


@dataclass(frozen=True)
class TinySpec:
    """Sizes of the tiny LLaVA and of its base-policy training. Defaults build in ~6 min on 2 cores."""

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
    # The model learns to read the image late: at 2400 steps a build could still answer
    # from the language prior alone (POPE yes-ratio 1.0, CHAIR_i 0.60, measured); by 6000
    # it looks (POPE F1 0.91, CHAIR_i 0.13, CHAIR_s 0.44 on 200 held-out scenes) while
    # keeping the ghost-object habit that alignment is meant to remove.
    steps: int = 6000
    batch_size: int = 24
    learning_rate: float = 1.5e-3
    # Learning-rate multiplier of the projector (and the vision tower when it trains).
    vision_lr_scale: float = 3.0
    freeze_vision: bool = True
    warmup_steps: int = 60
    # Share of short SFT answers (count, exist, colour) replaced by a plausible wrong one. At
    # 0.2 a build on one machine answered every existence question "yes" (POPE yes-ratio 1.0,
    # F1 0.667) while one elsewhere saw (0.907); at 0.1 the same machine's build sees (0.854).
    error_rate: float = 0.1
    # Share of SFT descriptions given a ghost object from the scene's theme (a second ghost
    # follows with probability `second_ghost_rate`): the base policy's hallucination habit.
    describe_error_rate: float = 0.9
    second_ghost_rate: float = 0.6
    # One thread: the build's arithmetic does not depend on the core count.
    threads: int = 1

    def __post_init__(self) -> None:
        if self.image_size % self.patch_size or (self.image_size // self.patch_size) % GRID:
            raise ValueError("image_size / patch_size must be a multiple of the 3x3 grid")
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
    # The Pillow backend: the CLIP processor's default backend needs torchvision (STACK-FACTS.md).
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
    # STACK-FACTS.md: transformers 5.19 writes a LLaVA's CLIP tower as `vision_tower.embeddings.*`;
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


def sft_examples(scenes: Sequence[Scene], spec: TinySpec) -> list[Example]:
    rng = random.Random(spec.seed + 1)
    examples = []
    for index, scene in enumerate(scenes):
        for question in questions_for(rng, scene):
            answer, wrong = true_answer(scene, question), False
            rate = spec.describe_error_rate if question.kind == "describe" else spec.error_rate
            if rng.random() < rate:
                ghosts = 2 if rng.random() < spec.second_ghost_rate else 1
                candidate = wrong_answer(rng, scene, question, ghosts)
                if candidate is not None:
                    answer, wrong = candidate, True
            examples.append(Example(index, question.text, answer, wrong))
    return examples


def prompt_text(processor: LlavaProcessor, question: str) -> str:
    messages: Any = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    return str(processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False))


def _encode(processor: LlavaProcessor, spec: TinySpec, examples: Sequence[Example]) -> list[tuple[list[int], int]]:
    """Token ids of prompt + answer + </s>, with the prompt length (labels start after it)."""
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
        answer_ids = tokenizer(" " + example.answer, add_special_tokens=False)["input_ids"]
        encoded.append(([*prompt_ids, *answer_ids, tokenizer.eos_token_id], len(prompt_ids)))
    return encoded


def pixel_values(processor: LlavaProcessor, scenes: Sequence[Scene], spec: TinySpec) -> torch.Tensor:
    images = [render(scene, spec.image_size) for scene in scenes]
    out: torch.Tensor = processor.image_processor(images=images, return_tensors="pt")["pixel_values"]
    return out


ProgressFn = Callable[[int, int, float], None]


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
) -> list[float]:
    """Train on the world's prompts; returns the loss of each step."""
    import torch

    torch.manual_seed(spec.seed)
    examples = sft_examples(scenes, spec)
    encoded = _encode(processor, spec, examples)
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
        # Cosine decay to 5% over the remaining steps.
        done = (step - spec.warmup_steps) / max(1, spec.steps - spec.warmup_steps)
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * done))

    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, lr_at)
    model.train()
    losses: list[float] = []
    batches = _length_buckets(encoded, spec.batch_size, spec.steps, spec.seed)
    for step, batch in enumerate(batches):
        width = max(len(encoded[i][0]) for i in batch)
        input_ids = torch.full((len(batch), width), pad, dtype=torch.long)  # (B, T)
        labels = torch.full((len(batch), width), -100, dtype=torch.long)  # (B, T)
        attention = torch.zeros((len(batch), width), dtype=torch.long)  # (B, T)
        for row, index in enumerate(batch):
            ids, prompt_len = encoded[index]
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
            progress(step + 1, spec.steps, losses[-1])
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
            inputs = processor(images=list(images[start:stop]), text=texts, return_tensors="pt", padding=True)
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


def image_size_of(processor: Any) -> int:
    crop = getattr(processor.image_processor, "crop_size", None) or {}
    return int(crop.get("height") or processor.image_processor.size.get("shortest_edge"))


# ---------------------------------------------------------------------------------------
# The whole build


def spec_fingerprint(spec: TinySpec) -> dict[str, Any]:
    return asdict(spec)


def is_built(out: Path, spec: TinySpec) -> bool:
    manifest = out / MANIFEST
    if not manifest.exists():
        return False
    try:
        return bool(json.loads(manifest.read_text()).get("spec") == spec_fingerprint(spec))
    except (OSError, ValueError):
        return False


def build_toy_model(
    out: Path, spec: TinySpec | None = None, *, progress: ProgressFn | None = None, force: bool = False
) -> dict[str, Any]:
    """Build (or reuse) the tiny base policy at `out`; returns its manifest.

    Written to a sibling temporary folder and renamed into place, so `out` is either absent
    or complete.
    """
    import shutil

    import torch

    spec = spec or TinySpec()
    out = Path(out)
    if not force and is_built(out, spec):
        return dict(json.loads((out / MANIFEST).read_text()))
    torch.set_num_threads(spec.threads)
    started = time.monotonic()
    scenes = sample_scenes(spec.seed, spec.train_scenes, prefix="train")
    processor = build_processor(train_tokenizer(world_corpus(scenes, spec.seed), spec.vocab_size), spec)
    model = build_model(spec, processor)
    losses = supervised_finetune(model, processor, scenes, spec, progress)
    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    save_pretrained(model, processor, staging)
    manifest = {
        "kind": "factloop-tiny-llava",
        "spec": spec_fingerprint(spec),
        "parameters": sum(p.numel() for p in model.parameters()),
        "final_loss": sum(losses[-50:]) / len(losses[-50:]),
        "losses": losses[:: max(1, len(losses) // 200)],
        "build_seconds": round(time.monotonic() - started, 1),
    }
    (staging / MANIFEST).write_text(json.dumps(manifest, indent=2))
    if out.exists():
        shutil.rmtree(out)
    staging.rename(out)
    return manifest
