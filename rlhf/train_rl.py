"""Online RL against a reward model for image-text-to-text models: FactLoop's PPO, or trl's
GRPO and RLOO with the same reward function.

PPO (Schulman et al., 2017) with LLaVA-RLHF's settings (arXiv:2309.14525, section 3;
docs/methods.md 2b), written here because trl ships no PPO for images
(trl 0.2x's PPOTrainer takes text only); padding never counts. With `released: true` it is
PPO as LLaVA-RLHF's released code ran it (RLHF/models/ppo_trainer.py): responses padded to
max_new_tokens, every column counted, rewards x10, its symbolic terms (rlhf/losses.py's
released_* functions, rlhf/scoring.py's ReleasedTerms; the README's departures table in
docs/training.md, "Online RL"). One step:

1. Rollouts: the policy samples a response per prompt (image included) at `temperature`.
2. Scoring: reward = reward_scale * reward model score (with the image's facts when the
   reward model was trained with them) + symbolic terms (rlhf/scoring.py).
3. Per token: log-probs under the policy and under the reference (the policy without the
   round's adapter update), the critic's values; rewards = -kl_coef * KL_t (k1, clamped)
   with the score added on the last token; advantages and returns by GAE (rlhf/losses.py).
4. `ppo_epochs` passes over the batch in minibatches: clipped policy loss + vf_coef *
   clipped value loss; the policy's LoRA and the critic step.

The critic: a separate model initialised from the reward model (its backbone, LoRA adapter
and score head, all trainable), as LLaVA-RLHF initialised its value model from the reward
model. It reads the policy's own tokens (prompt and response, without the facts; the reward
model must share the policy's tokenizer) and its score head, applied to every position,
gives V(s_t) for the state before each response token. A value head on the policy's
backbone would save memory but lets the value loss move the policy's features; the
separate critic keeps the two apart at the cost of one more model in memory.

The reference is the policy at the start of the round: the base model with the adapter
disabled, or, when `init_adapter` continues the previous round's adapter, a frozen copy of
it (the "ref" adapter), as the DDPO trainer does.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from contract.results import RunResult
from rlhf import losses
from rlhf.common import (
    carried_on,
    common_trainer_arguments,
    git_revision,
    load_policy,
    prepare_torch,
    require,
    write_log,
)
from rlhf.config import ConfigError, RLTrainConfig, dump
from rlhf.distributed import is_main, world_size
from rlhf.reward import load_backbone
from rlhf.rollouts import RolloutMismatch, ServerRollouts, check_prompt, openai_messages
from rlhf.scoring import (
    ReleasedTerms,
    RewardFunction,
    RewardModel,
    SymbolicTerms,
    locate_reward_model,
    parse_facts,
)
from rlhf.train_dpo import ADAPTER_DIR, CONFIG_FILE, save_trained
from rlhf.training_data import load_prompts

LOG_FILE = "log.jsonl"


# ---------------------------------------------------------------------------------------
# Models


def load_trainable_policy(config: RLTrainConfig) -> tuple[Any, Any]:
    """The policy with a trainable LoRA adapter (new, or the previous round's continued
    with a frozen "ref" copy) and its processor."""
    from peft import get_peft_model

    model, processor = load_policy(config.model, adapter=config.init_adapter, dtype=config.dtype, trainable=True)
    if config.init_adapter is None:
        model = get_peft_model(model, config.lora.peft_config("CAUSAL_LM", model))
    return model, processor


@contextmanager
def reference(model: Any) -> Iterator[None]:
    """The reference policy for the duration: the frozen "ref" adapter when continuing one,
    else the model with its adapter disabled."""
    if "ref" in getattr(model, "peft_config", {}):
        model.set_adapter("ref")
        try:
            yield
        finally:
            model.set_adapter("default")  # also makes the default adapter trainable again
    else:
        with model.disable_adapter():
            yield


def load_critic(reward_model: str, dtype: str) -> Any:
    """The critic, initialised from the reward model (backbone, LoRA and score head trainable)."""
    import torch
    from peft import PeftModel

    files = locate_reward_model(reward_model)
    backbone, _ = load_backbone(files.base_model, dtype=getattr(torch, dtype))
    return PeftModel.from_pretrained(backbone, str(files.adapter), is_trainable=True)


def token_values(critic: Any, inputs: dict[str, Any]) -> Any:
    """The critic's score head on every position: (batch, tokens)."""
    return critic.get_base_model().token_values(inputs)


def reward_function(config: RLTrainConfig, stops: list[int], device: Any = None) -> Any:
    """The run's reward: its reward model plus its symbolic terms (rlhf/scoring.py)."""

    terms: SymbolicTerms | ReleasedTerms = SymbolicTerms(
        config.length_penalty,
        config.length_free,
        config.missing_stop_penalty,
        config.yes_no_bonus,
        config.length_anchor,
        config.length_anchor_share,
    )
    if config.released:
        terms = ReleasedTerms(response_len=config.max_new_tokens)
    return RewardFunction(
        RewardModel(config.reward_model, dtype=config.dtype, device=device),
        terms,
        reward_scale=config.reward_scale,
        stop_ids=stops,
        length_debias=config.length_debias,
    )


def same_tokenizer(policy_processor: Any, reward_processor: Any) -> None:
    if policy_processor.tokenizer.get_vocab() != reward_processor.tokenizer.get_vocab():
        raise ConfigError(
            "the reward model's tokenizer differs from the policy's: its critic cannot read the policy's tokens"
        )


# ---------------------------------------------------------------------------------------
# Rollouts


@dataclass
class Rollout:
    """A batch of sampled responses and what PPO needs of them; per-token tensors cover the
    response tokens (batch, R)."""

    inputs: dict[str, Any]  # input_ids, attention_mask, position_ids, pixel_values of prompt + response
    prompt_width: int
    response_ids: Any
    mask: Any
    texts: list[str]
    stopped: list[bool]
    suppressed: tuple[int, ...] = ()  # token ids never sampled (`placeholder_ids`): scored as never sampled
    image_token: int | None = None  # the id a row's image features replace (`image_token_of`)
    sampled_logprobs: Any = None  # what generate() sampled from, when asked to keep it
    served_logprobs: Any = None  # the server's log-probs of the sampled tokens (before temperature)
    logprobs: Any = None
    ref_logprobs: Any = None
    values: Any = None
    scores: Any = None
    advantages: Any = None
    returns: Any = None
    loss_mask: Any = None  # what the losses average over: the response tokens, or every column (released)

    def rows(self, index: Any) -> dict[str, Any]:
        return select_rows(self.inputs, index, self.image_token)


def select_rows(inputs: dict[str, Any], index: Any, image_token: int | None = None) -> dict[str, Any]:
    """The model inputs of some rows (a slice or a tensor of row numbers). Every tensor is
    indexed by row, except a flat list of all the batch's images' parts (Qwen2/2.5-VL's
    patches, InternVL's tiles: `pixel_values` whose first dimension is not the batch's):
    each row's share of it is in proportion to its image tokens, found by what they are
    (`image_token`), not by which family sent them."""
    import torch

    batch = inputs["input_ids"].size(0)
    rows = list(range(batch))[index] if isinstance(index, slice) else index.tolist()
    out = {}
    for key, value in inputs.items():
        if key == "pixel_values" and value.shape[0] != batch:
            sizes = flat_shares(inputs["input_ids"], value.shape[0], image_token)
            starts = [sum(sizes[:i]) for i in range(len(sizes))]
            out[key] = torch.cat([value[starts[r] : starts[r] + sizes[r]] for r in rows])
        else:
            out[key] = value[index]
    return out


def flat_shares(input_ids: Any, parts: int, image_token: int | None) -> list[int]:
    """How many of a flat list's `parts` belong to each row: in proportion to the row's image
    tokens (every image's parts give it the same number of tokens each)."""
    if image_token is None:
        raise ValueError("a flat list of image parts, and no image token to split it between rows by")
    tokens = (input_ids == image_token).sum(dim=1).tolist()
    total = sum(tokens)
    if total == 0 or any(count * parts % total for count in tokens):
        raise ValueError(f"{parts} image parts do not divide between rows holding {tokens} image tokens")
    return [count * parts // total for count in tokens]


def image_token_of(model: Any, processor: Any) -> int | None:
    """The token id whose positions a family's image features replace: the processor's, or
    else its model config's."""
    found = getattr(processor, "image_token_id", None)
    if found is None and isinstance(getattr(processor, "image_token", None), str):
        found = processor.tokenizer.convert_tokens_to_ids(processor.image_token)
    if found is None:
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        found = getattr(base.config, "image_token_id", None) or getattr(base.config, "image_token_index", None)
    return int(found) if isinstance(found, int) else None


def along_the_sequence(inputs: dict[str, Any]) -> list[str]:
    """The processor outputs besides input_ids and attention_mask that run along the token
    sequence: by what they are (their first two dimensions are input_ids' batch and length),
    not by which family sent them (Gemma 3's token_type_ids, Qwen2/2.5-VL's
    mm_token_type_ids, Kosmos-2's image_embeds_position_mask, Mllama's cross_attention_mask
    of batch x length x images x tiles)."""
    shape = tuple(inputs["input_ids"].shape)
    return [
        key
        for key, value in inputs.items()
        if key not in ("input_ids", "attention_mask")
        and hasattr(value, "shape")
        and len(value.shape) >= 2
        and tuple(value.shape[:2]) == shape
    ]


def response_part(model: Any, key: str, value: Any, length: int) -> Any:
    """What a response token gets in a sequence-aligned input: what the prompt's last token
    has (in a left-padded batch, a real text token: not an image token, attending to what
    the prompt's text attends to, as transformers' generate() carries Mllama's
    cross-attention mask on), repeated `length` times; PaliGemma's token_type_ids mark the
    causal suffix (1) after the bidirectional prefix (0), and a response is suffix."""
    import torch

    if key == "token_type_ids" and model_type_of_policy(model) == "paligemma":
        return torch.ones((value.shape[0], length, *value.shape[2:]), dtype=value.dtype, device=value.device)
    return carried_on(value, length)[:, -length:]


def takes_position_ids(model: Any, inputs: dict[str, Any]) -> bool:
    """Whether to pass 1-D position ids counted over real tokens (what generate() uses for a
    left-padded batch): not to models that derive their positions themselves (Qwen's
    M-RoPE from the image grid, Kosmos-2's padding-aware sinusoidal positions), and only
    to a forward that takes them (by name, or passing its keyword arguments on to its
    language model, as BLIP-2's does)."""
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if "image_grid_thw" in inputs or getattr(base.config, "model_type", "") in SELF_POSITIONED:
        return False
    parameters = inspect.signature(base.forward).parameters
    return "position_ids" in parameters or any(p.kind is p.VAR_KEYWORD for p in parameters.values())


SELF_POSITIONED = {"kosmos-2"}


def placeholder_ids(processor: Any, prompt_ids: Iterable[int], stops: list[int]) -> tuple[int, ...]:
    """The token ids a response must never hold: the tokenizer's special tokens that the
    processor put in the prompt (image placeholders and their markers, the padding, the
    chat's turn markers), except the stop tokens. Found by what they are, not by family: a
    sampled image placeholder makes the next forward pass count one image token more than
    the images' features (Qwen2-VL's `<|image_pad|>`, Idefics3's `<image>`)."""
    tokenizer = processor.tokenizer
    special = set(tokenizer.all_special_ids) | {
        i for i, token in getattr(tokenizer, "added_tokens_decoder", {}).items() if token.special
    }
    present = {int(i) for i in prompt_ids}
    return tuple(sorted((special & present) - set(stops)))


def suppress(logits: Any, ids: tuple[int, ...]) -> Any:
    """The logits with `ids` made impossible (what generate's `suppress_tokens` does), so a
    forward pass scores the distribution that was sampled from."""
    if not ids:
        return logits
    logits = logits.clone()
    logits[..., list(ids)] = SUPPRESSED
    return logits


SUPPRESSED = -1e9  # finite: a suppressed token's probability is 0 and its entropy term 0, not NaN


def stop_ids(model: Any, processor: Any) -> list[int]:
    ids = {processor.tokenizer.eos_token_id}
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids |= set(configured) if isinstance(configured, list) else {configured}
    return sorted(i for i in ids if i is not None)


def position_ids(attention_mask: Any) -> Any:
    """Positions counted over real tokens, as transformers' generate() derives them for
    left-padded batches (padding gets 1)."""
    positions = attention_mask.long().cumsum(-1) - 1
    return positions.masked_fill(attention_mask == 0, 1)


def prompt_parts(processor: Any, rows: list[dict[str, Any]]) -> tuple[list[str], list[list[Any]]]:
    """Each row's templated prompt text and its image."""
    texts = [processor.apply_chat_template(row["prompt"], add_generation_prompt=True, tokenize=False) for row in rows]
    return texts, [[row["images"][0].convert("RGB")] for row in rows]


def encode_prompts(processor: Any, rows: list[dict[str, Any]], device: Any) -> dict[str, Any]:
    """The rows' prompts with their images, left-padded (generation appends on the right)."""
    processor.tokenizer.padding_side = "left"
    texts, images = prompt_parts(processor, rows)
    encoded = processor(images=images, text=texts, return_tensors="pt", padding=True)
    encoded.pop("labels", None)  # PaliGemma's processor adds labels; a rollout has none
    return {k: v.to(device) for k, v in encoded.items()}


def sample(
    model: Any,
    processor: Any,
    rows: list[dict[str, Any]],
    config: RLTrainConfig,
    stops: list[int],
    device: Any,
    *,
    keep_scores: bool = False,
) -> Rollout:
    """One response per row, sampled at the config's temperature (no top-k/top-p, so the
    log-probs PPO computes are those of the sampling distribution). With `keep_scores`, the
    log-probs generate() sampled from are kept too (a check on the forward pass)."""
    import torch

    prompt = encode_prompts(processor, rows, device)
    width = prompt["input_ids"].shape[1]
    suppressed = placeholder_ids(processor, prompt["input_ids"].flatten().tolist(), stops)
    settings = {
        "do_sample": True,
        "temperature": config.temperature,
        "top_k": 0,
        "top_p": 1.0,
        "max_new_tokens": config.max_new_tokens,
        "pad_token_id": processor.tokenizer.pad_token_id,
        "eos_token_id": stops,
        "output_scores": keep_scores,
        "return_dict_in_generate": True,
        **({"suppress_tokens": list(suppressed)} if suppressed else {}),
    }
    model.eval()
    with torch.no_grad():
        if model_type_of_policy(model) in UNBATCHED_GENERATION:
            texts, images = prompt_parts(processor, rows)
            response, step_scores = _sample_row_by_row(model, processor, images, texts, settings, device)
        else:
            output = model.generate(**prompt, **settings)
            response = output.sequences[:, width:]
            step_scores = torch.stack(output.scores, dim=1) if keep_scores else None
    rollout = assemble(model, processor, prompt, response, stops, pad_to=released_width(config))
    rollout.suppressed = suppressed
    if keep_scores:
        sampled = gather_logprobs(step_scores.float(), rollout.response_ids[:, : step_scores.size(1)])
        # released mode pads the responses wider than generate() sampled them
        rollout.sampled_logprobs = right_pad(sampled, rollout.mask.size(1)) * rollout.mask
    return rollout


def sample_served(
    model: Any,
    processor: Any,
    rows: list[dict[str, Any]],
    config: RLTrainConfig,
    stops: list[int],
    device: Any,
    server: ServerRollouts,
    *,
    seed: int,
) -> Rollout:
    """One response per row from the vLLM server with the policy's adapter (rlhf/rollouts.py),
    as `sample` gives them; the server's log-probs of the sampled tokens are kept in
    `served_logprobs`. The server's prompt tokens must equal the trainer's."""
    import torch

    prompt = encode_prompts(processor, rows, device)
    suppressed = placeholder_ids(processor, prompt["input_ids"].flatten().tolist(), stops)
    served = server.sample(
        [openai_messages(row["prompt"], row["images"][:1]) for row in rows],
        temperature=config.temperature,
        max_tokens=config.max_new_tokens,
        seed=seed,
        suppress=suppressed,
    )
    for r, answer in enumerate(served):
        check_prompt(answer.prompt_ids, prompt["input_ids"][r][prompt["attention_mask"][r].bool()].tolist())
    pad = processor.tokenizer.pad_token_id
    length = max(1, max(len(a.token_ids) for a in served))
    response = torch.tensor([a.token_ids + [pad] * (length - len(a.token_ids)) for a in served], device=device)
    rollout = assemble(model, processor, prompt, response, stops, pad_to=released_width(config))
    rollout.suppressed = suppressed
    logprobs = torch.tensor([a.logprobs + [0.0] * (length - len(a.logprobs)) for a in served], device=device)
    rollout.served_logprobs = right_pad(logprobs, rollout.mask.size(1)) * rollout.mask
    return rollout


def right_pad(values: Any, width: int | None, value: float = 0.0) -> Any:
    """(batch, n) values right-padded with `value` to `width` columns (as they are when
    already that wide, or with no width)."""
    import torch

    extra = 0 if width is None else width - values.size(1)
    return torch.nn.functional.pad(values, (0, extra), value=value) if extra > 0 else values


def released_width(config: RLTrainConfig) -> int | None:
    """The response width of a rollout: LLaVA-RLHF's response_len (max_new_tokens) in
    released mode, where padding columns count; else as long as the longest response."""
    return config.max_new_tokens if config.released else None


def assemble(
    model: Any, processor: Any, prompt: dict[str, Any], response: Any, stops: list[int], *, pad_to: int | None = None
) -> Rollout:
    """A rollout of sampled `response` tokens after the left-padded `prompt`: each response
    ends at its first stop token (kept), padding after it. With `pad_to`, the responses are
    right-padded to it, as LLaVA-RLHF's release pads them to its response_len
    (rl_models.py, `respond`: right_pad(..., response_len))."""
    import torch

    pad = processor.tokenizer.pad_token_id
    response = right_pad(response, pad_to, pad)
    width = prompt["input_ids"].shape[1]
    is_stop = torch.isin(response, torch.tensor(stops, device=response.device))
    stopped = is_stop.any(dim=1)
    never = torch.full_like(stopped, response.size(1), dtype=torch.long)
    first = torch.where(stopped, is_stop.long().argmax(dim=1), never)
    mask = (torch.arange(response.size(1), device=response.device)[None, :] <= first[:, None]).float()
    response = torch.where(mask > 0, response, torch.full_like(response, pad))
    attention = torch.cat([prompt["attention_mask"], mask.long()], dim=1)
    # Every processor output the family's forward needs (image sizes, grids, patch masks,
    # the Q-Former's text...), with the sequence-aligned ones extended over the response.
    inputs = dict(prompt)
    inputs["input_ids"] = torch.cat([prompt["input_ids"], response], dim=1)
    inputs["attention_mask"] = attention
    for key in along_the_sequence(prompt):
        inputs[key] = torch.cat([inputs[key], response_part(model, key, inputs[key], response.size(1))], dim=1)
    if takes_position_ids(model, inputs):
        inputs["position_ids"] = position_ids(attention)
    decoded = processor.tokenizer.batch_decode(response, skip_special_tokens=True)
    rollout = Rollout(inputs, width, response, mask, [t.strip() for t in decoded], [bool(s) for s in stopped])
    rollout.image_token = image_token_of(model, processor)
    return rollout


# Families whose generate() positions the new tokens of a left-padded batch differently from
# their forward pass over the same batch (Kosmos-2 counts the padding in, transformers 5.19):
# each row is sampled alone, without padding, so the forward pass scores what was sampled.
UNBATCHED_GENERATION = {"kosmos-2"}


def model_type_of_policy(model: Any) -> str:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return str(getattr(base.config, "model_type", ""))


def _sample_row_by_row(
    model: Any, processor: Any, images: list[Any], texts: list[str], settings: dict[str, Any], device: Any
) -> tuple[Any, Any]:
    """Responses (right-padded) and, when asked, the step scores (zero-padded) of
    generating each row alone."""
    import torch

    pad = settings["pad_token_id"]
    responses, scores = [], []
    for image, text in zip(images, texts, strict=True):
        encoded = processor(images=[image], text=[text], return_tensors="pt")
        encoded.pop("labels", None)
        single = {k: v.to(device) for k, v in encoded.items()}
        output = model.generate(**single, **settings)
        responses.append(output.sequences[0, single["input_ids"].shape[1] :])
        if settings["output_scores"]:
            scores.append(torch.stack(output.scores, dim=1)[0])
    length = max(len(r) for r in responses)
    response = torch.stack([torch.nn.functional.pad(r, (0, length - len(r)), value=pad) for r in responses])
    if not scores:
        return response, None
    return response, torch.stack([torch.nn.functional.pad(s, (0, 0, 0, length - len(s))) for s in scores])


def response_logits(
    model: Any, inputs: dict[str, Any], width: int, temperature: float, suppressed: tuple[int, ...] = ()
) -> Any:
    """Next-token logits at the response positions, divided by the sampling temperature,
    with the `suppressed` tokens impossible (as they were when sampling)."""
    logits = model(**inputs).logits
    return suppress(logits[:, width - 1 : -1].float() / temperature, suppressed)


def gather_logprobs(logits: Any, tokens: Any) -> Any:
    import torch

    return torch.log_softmax(logits, dim=-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def chunks(n: int, size: int) -> Iterator[slice]:
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


# ---------------------------------------------------------------------------------------
# PPO


class PPOTrainer:
    """FactLoop's PPO for image-text-to-text policies (see the module's text)."""

    def __init__(self, config: RLTrainConfig, *, progress: bool = True, reward: RewardFunction | None = None) -> None:
        import torch
        from accelerate import Accelerator  # type: ignore[import-untyped]

        if config.method != "ppo":
            raise ConfigError(f"PPOTrainer runs method ppo, not {config.method!r}")
        self.config = config
        self.progress = progress
        prepare_torch(config)
        # One process, or one of accelerate launch's: data parallel (rlhf/distributed.py).
        self.accelerator = Accelerator(cpu=not torch.cuda.is_available())
        self.processes = self.accelerator.num_processes
        if self.accelerator.distributed_type.value in ("FSDP", "DEEPSPEED"):
            raise ConfigError("PPO runs data-parallel only: launch it with the ddp config (deploy/accelerate/ddp.yaml)")
        check_shares(config, self.processes)
        self.device = self.accelerator.device
        self.prompts = load_prompts(config.data, max_prompts=config.max_prompts)
        self.policy, self.processor = load_trainable_policy(config)
        self.policy.to(self.device)
        self.stops = stop_ids(self.policy, self.processor)
        self.reward = reward or reward_function(config, self.stops, self.device)
        same_tokenizer(self.processor, self.reward.model.processor)
        self.critic = load_critic(config.reward_model, config.dtype).to(self.device)
        self.critic.eval()  # no dropout: values and ratios must be deterministic
        self.policy_optimiser = torch.optim.AdamW(
            [p for p in self.policy.parameters() if p.requires_grad], lr=config.learning_rate
        )
        self.critic_optimiser = torch.optim.AdamW(
            [p for p in self.critic.parameters() if p.requires_grad],
            lr=config.critic_learning_rate or config.learning_rate,
        )
        # The wrapped modules (DistributedDataParallel under a launcher; the same objects when
        # alone) take the forward passes that train; sampling and scoring use the models.
        self.policy_train, self.policy_optimiser, self.critic_train, self.critic_optimiser = self.accelerator.prepare(
            self.policy, self.policy_optimiser, self.critic, self.critic_optimiser
        )
        self.server = server_rollouts(config)
        self.kl_coef = config.kl_coef
        self.order: list[int] = []
        self.rng = random.Random(config.seed)  # the same on every process: they share each batch's prompts

    def next_rows(self) -> list[dict[str, Any]]:
        size = self.config.rollout_batch_size
        while len(self.order) < size:
            refill = list(range(len(self.prompts)))
            self.rng.shuffle(refill)
            self.order += refill
        ids, self.order = self.order[:size], self.order[size:]
        rank = self.accelerator.process_index
        return [self.prompts[i] for i in ids[rank :: self.processes]]  # this process's share

    def score_rollout(self, rows: list[dict[str, Any]], rollout: Rollout) -> dict[str, float]:
        """Fill in log-probs, reference log-probs, values, scores, advantages and returns."""
        import torch

        c = self.config
        width = rollout.prompt_width
        logprobs, ref_logprobs, values, entropies, raw = [], [], [], [], []
        with torch.no_grad():
            for part in chunks(len(rows), c.minibatch_size):
                inputs = rollout.rows(part)
                tokens = rollout.response_ids[part]
                unsuppressed = response_logits(self.policy, inputs, width, c.temperature)
                logits = suppress(unsuppressed, rollout.suppressed)
                logprobs.append(gather_logprobs(logits, tokens))
                if rollout.served_logprobs is not None:  # the server reports them raw: before temperature and bias
                    raw.append(gather_logprobs(unsuppressed * c.temperature, tokens))
                entropies.append(losses.entropy(logits, rollout.mask[part]) * rollout.mask[part].sum())
                with reference(self.policy):
                    ref_logits = response_logits(self.policy, inputs, width, c.temperature, rollout.suppressed)
                ref_logprobs.append(gather_logprobs(ref_logits, tokens))
                values.append(token_values(self.critic, inputs)[:, width - 1 : -1])
        mask = rollout.mask
        rollout.logprobs = torch.cat(logprobs)
        rollout.ref_logprobs = torch.cat(ref_logprobs)
        rollout.scores = torch.tensor(self.rollout_rewards(rows, rollout), device=mask.device)
        kl = losses.kl_k1(rollout.logprobs, rollout.ref_logprobs)
        if c.released:  # LLaVA-RLHF's released rules: every column counts, padding included
            rollout.values = torch.cat(values)
            gather = self.accelerator.gather if self.processes > 1 else None
            rewards = losses.released_rewards(rollout.scores, kl, self.kl_coef)
            _, rollout.advantages, returns = losses.released_advantages(
                rewards, rollout.values, gamma=c.gamma, lam=c.lam, gather=gather
            )
            rollout.loss_mask = torch.ones_like(mask)
        else:
            rollout.values = torch.cat(values) * mask
            rewards = losses.token_rewards(rollout.scores, kl, mask, self.kl_coef)
            advantages, returns = losses.gae(rewards, rollout.values, mask, gamma=c.gamma, lam=c.lam)
            rollout.advantages = losses.masked_whiten(advantages, mask) if c.whiten_advantages else advantages
            rollout.loss_mask = mask
        rollout.returns = returns
        kl_per_response = float((kl * mask).sum(dim=1).mean())
        served = {}
        if rollout.served_logprobs is not None:
            gap = float(losses.masked_mean((torch.cat(raw) - rollout.served_logprobs).abs(), mask))
            if gap > c.rollout_max_gap:
                raise RolloutMismatch(
                    f"the server's log-probs of the sampled tokens differ from the trainer's by {gap:.3f} per token "
                    f"(rollout_max_gap {c.rollout_max_gap}): it is not serving the trainer's policy "
                    "(another base model, or the adapter did not load)"
                )
            served["rollout_logprob_gap"] = gap
        return served | {
            "reward": float(rollout.scores.mean()),
            "reward_model": sum(self.reward.last["model"]) / len(rows),
            "symbolic": sum(self.reward.last["symbolic"]) / len(rows),
            "kl": kl_per_response,
            "kl_coef": self.kl_coef,
            "entropy": float(sum(e for e in entropies) / mask.sum().clamp(min=1)),
            "response_tokens": float(mask.sum(dim=1).mean()),
            "no_stop_share": 1 - sum(rollout.stopped) / len(rows),
            "empty_share": sum(not t for t in rollout.texts) / len(rows),
            "explained_variance": float(losses.explained_variance(rollout.values, returns, mask)),
        }

    def update(self, rollout: Rollout) -> dict[str, float]:
        """ppo_epochs passes of minibatch updates over one rollout batch."""
        import torch

        c = self.config
        n = rollout.response_ids.size(0)
        generator = torch.Generator().manual_seed(self.rng.randrange(2**31))
        sums: dict[str, float] = {"policy_loss": 0.0, "value_loss": 0.0, "clip_fraction": 0.0, "approx_kl": 0.0}
        updates = 0
        self.policy.eval()  # eval mode with gradients: no dropout, so the ratio at the first update is 1
        for _ in range(c.ppo_epochs):
            order = torch.randperm(n, generator=generator)
            for part in chunks(n, c.minibatch_size // self.processes):
                index = order[part].to(rollout.mask.device)
                inputs = rollout.rows(index)
                mask = rollout.loss_mask[index]  # released mode: plain means over every column
                logits = response_logits(
                    self.policy_train, inputs, rollout.prompt_width, c.temperature, rollout.suppressed
                )
                logprobs = gather_logprobs(logits, rollout.response_ids[index])
                pg_loss, clip_fraction = losses.policy_loss(
                    logprobs, rollout.logprobs[index], rollout.advantages[index], mask, clip=c.clip
                )
                values = self.critic_train(per_token=True, **inputs)[:, rollout.prompt_width - 1 : -1]
                v_loss = losses.value_loss(
                    values, rollout.values[index], rollout.returns[index], mask, clip=c.value_clip
                )
                self.accelerator.backward(pg_loss + c.vf_coef * v_loss)  # gradients averaged over processes
                for model, optimiser in ((self.policy, self.policy_optimiser), (self.critic, self.critic_optimiser)):
                    self.accelerator.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
                    optimiser.step()
                    optimiser.zero_grad(set_to_none=True)
                with torch.no_grad():
                    sums["approx_kl"] += float(losses.masked_mean(rollout.logprobs[index] - logprobs, mask))
                sums["policy_loss"] += float(pg_loss.detach())
                sums["value_loss"] += float(v_loss.detach())
                sums["clip_fraction"] += float(clip_fraction.detach())
                updates += 1
        return {k: v / updates for k, v in sums.items()}

    def rollout_rewards(self, rows: list[dict[str, Any]], rollout: Rollout) -> list[float]:

        return list(
            self.reward.rewards(
                [row["prompt"] for row in rows],
                rollout.texts,
                [row["images"][0] for row in rows],
                [parse_facts(row["image_facts"]) for row in rows],
                [int(n) for n in rollout.mask.sum(dim=1)],
                rollout.stopped,
                [row.get("reference_words") for row in rows],
            )
        )

    def mean_reward(self, rows: list[dict[str, Any]], *, seed: int = 0) -> float:
        """The policy's mean reward (reward model + symbolic terms, no KL) on `rows`, one
        response each sampled with a fixed seed: a fixed yardstick across training."""
        import torch

        total = []
        torch.manual_seed(seed)
        for part in chunks(len(rows), self.config.rollout_batch_size):
            batch = rows[part]
            rollout = sample(self.policy, self.processor, batch, self.config, self.stops, self.device)
            total += self.rollout_rewards(batch, rollout)
        return sum(total) / max(1, len(total))

    def step(self) -> dict[str, float]:

        rows = self.next_rows()
        if self.server is None:
            rollout = sample(self.policy, self.processor, rows, self.config, self.stops, self.device)
        else:
            rollout = self.sample_served(rows)
        stats = self.score_rollout(rows, rollout)
        stats |= self.update(rollout)
        stats = self.mean_over_processes(stats)
        if self.config.kl_target is not None:
            # The controller counts every rollout of the step, over all processes.
            self.kl_coef = losses.adaptive_kl_coef(
                self.kl_coef, stats["kl"], self.config.kl_target, self.config.rollout_batch_size, self.config.kl_horizon
            )
        return stats

    def sample_served(self, rows: list[dict[str, Any]]) -> Rollout:
        """Rollouts from the vLLM server, after loading the policy's current adapter there."""
        assert self.server is not None
        version = self.server.syncs
        self.server.sync(
            lambda folder: self.policy.save_pretrained(str(folder), selected_adapters=["default"]),
            version,
            leader=self.accelerator.is_main_process,
            wait=self.accelerator.wait_for_everyone,
        )
        seed = random.Random(f"{self.config.seed}/{version}/{self.accelerator.process_index}").randrange(2**31)
        return sample_served(
            self.policy, self.processor, rows, self.config, self.stops, self.device, self.server, seed=seed
        )

    def mean_over_processes(self, stats: dict[str, float]) -> dict[str, float]:
        """Each statistic averaged over the processes (each measured its share of the batch);
        every process then adapts its KL coefficient alike."""
        if self.processes == 1:
            return stats
        import torch

        keys = sorted(stats)
        values = torch.tensor([float(stats[k]) for k in keys], dtype=torch.float64, device=self.device)
        reduced = self.accelerator.reduce(values, reduction="mean")
        return {k: float(v) for k, v in zip(keys, reduced.tolist(), strict=True)}

    def train(self) -> list[dict[str, float]]:
        from tqdm import tqdm  # type: ignore[import-untyped]

        out = Path(self.config.output_dir)
        main = self.accelerator.is_main_process  # the others train and write nothing
        writer = _tensorboard(out) if main else None
        history = []
        with open(out / LOG_FILE if main else os.devnull, "w") as log, closing_server(self.server, main):
            bar = tqdm(range(1, self.config.steps + 1), desc="ppo", unit="step", disable=not (self.progress and main))
            for step in bar:
                stats = {"step": step, **self.step()}
                history.append(stats)
                if step % self.config.logging_steps == 0 or step == self.config.steps:
                    log.write(json.dumps(stats) + "\n")
                    log.flush()
                    if writer is not None:
                        for key, value in stats.items():
                            if key != "step":
                                writer.add_scalar(f"ppo/{key}", value, step)
                bar.set_postfix(reward=f"{stats['reward']:.3f}", kl=f"{stats['kl']:.3f}")
        if writer is not None:
            writer.close()
        return history

    def save(self, adapter: Path) -> None:
        self.policy.save_pretrained(str(adapter), selected_adapters=["default"])
        self.processor.save_pretrained(str(adapter))


def server_rollouts(config: RLTrainConfig) -> ServerRollouts | None:
    """The run's rollout server (rlhf/rollouts.py), when it names one. Every process of a
    launch derives the same adapter name and folder from the output folder."""
    if config.rollout_server is None:
        return None
    out = Path(config.output_dir)
    name = "rollout-" + hashlib.sha1(str(out.resolve()).encode()).hexdigest()[:12]
    return ServerRollouts(config.rollout_server, name=name, folder=out / ROLLOUT_ADAPTER_DIR)


ROLLOUT_ADAPTER_DIR = "rollout-adapter"  # under output_dir: the adapter the servers load, removed at the end


@contextmanager
def closing_server(server: ServerRollouts | None, leader: bool) -> Iterator[None]:
    try:
        yield
    finally:
        if server is not None:
            server.close(leader=leader)


def _tensorboard(out: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional for the trainer itself
        return None
    return SummaryWriter(log_dir=str(out / "runs"))


# ---------------------------------------------------------------------------------------
# GRPO and RLOO through trl


def trl_trainer(
    config: RLTrainConfig, *, report_to: list[str] | None = None, reward: RewardFunction | None = None
) -> Any:
    """trl's GRPOTrainer or RLOOTrainer on the export's prompts, rewarded by the same
    function as PPO (trl passes the images and `image_facts` to it as keyword arguments)."""

    if config.method == "grpo":
        from trl import GRPOConfig as ArgsClass
        from trl import GRPOTrainer as TrainerClass
    elif config.method == "rloo":
        from trl import RLOOConfig as ArgsClass  # type: ignore[assignment]
        from trl import RLOOTrainer as TrainerClass  # type: ignore[assignment]
    else:
        raise ConfigError(f"trl runs grpo or rloo, not {config.method!r}")
    require(config.model, config.method)  # a documented gap of the family stops here
    prepare_torch(config)
    prompts = load_prompts(config.data, max_prompts=config.max_prompts)
    model, processor = load_trainable_policy(config)
    stops = stop_ids(model, processor)
    reward = reward or reward_function(config, stops)
    # The placeholders of the first prompts' encoding, never sampled (`placeholder_ids`;
    # trl's GRPOConfig docs name `suppress_tokens` among its generation_kwargs).
    first = encode_prompts(processor, [prompts[i] for i in range(min(4, len(prompts)))], "cpu")
    suppressed = placeholder_ids(processor, first["input_ids"].flatten().tolist(), stops)
    processes = world_size()  # rollout_batch_size is over all processes
    check_shares(config, processes)
    args = ArgsClass(
        per_device_train_batch_size=config.rollout_batch_size // processes,
        num_generations=config.num_generations,
        max_completion_length=config.max_new_tokens,
        temperature=config.temperature,
        generation_kwargs={"suppress_tokens": list(suppressed)} if suppressed else None,
        top_k=0,
        top_p=1.0,
        beta=config.kl_coef,
        epsilon=config.clip,
        max_steps=config.steps,
        lr_scheduler_type="constant",
        save_strategy="no",
        gradient_checkpointing=False,
        # remove_unused_columns is off (common_trainer_arguments): image_facts must reach the reward.
        **common_trainer_arguments(config, report_to),
    )
    server = server_rollouts(config)
    if server is not None:
        TrainerClass = served_trainer(TrainerClass, config, suppressed)  # type: ignore[assignment, misc]
    trainer: Any = TrainerClass(
        model=model,
        reward_funcs=[reward],
        args=args,
        train_dataset=prompts,
        processing_class=processor,
    )
    trainer.factloop_server = server
    if server is not None and trainer.accelerator.distributed_type.value in ("FSDP", "DEEPSPEED"):
        raise ConfigError(
            "rollouts through the vLLM server save the whole adapter from one process: launch with the ddp config"
        )
    return trainer


def served_trainer(base: type, config: RLTrainConfig, suppressed: tuple[int, ...] = ()) -> type:
    """trl's GRPO or RLOO trainer sampling through the vLLM server (rlhf/rollouts.py). It
    overrides two private methods of trl 1.16 (pinned, requirements.txt): `_tokenize_prompts`
    keeps the batch's conversations, and `_generate_single_turn` (which trl's own vLLM
    modes use, syncing weights when the step changed) loads the policy's adapter on the
    server when the step changed and samples them there instead of with generate()."""
    from trl import GRPOTrainer

    answers_logprobs = issubclass(base, GRPOTrainer)  # RLOO's answers the completions alone

    class Served(base):
        factloop_server: ServerRollouts
        _factloop_prompts: list[Any] = []
        _factloop_version = -1
        _factloop_calls = 0

        def _tokenize_prompts(self, prompts: list[Any]) -> Any:
            self._factloop_prompts = prompts
            return super()._tokenize_prompts(prompts)

        def _generate_single_turn(self, prompt_ids: list[list[int]], images: Any, *args: Any, **kwargs: Any) -> Any:
            server, step = self.factloop_server, self.state.global_step
            if self._factloop_version != step:
                model = self.accelerator.unwrap_model(self.model)
                server.sync(
                    lambda folder: model.save_pretrained(str(folder), selected_adapters=["default"]),
                    step,
                    leader=self.accelerator.is_main_process,
                    wait=self.accelerator.wait_for_everyone,
                )
                self._factloop_version = step
            self._factloop_calls += 1
            where = f"{config.seed}/{step}/{self._factloop_calls}/{self.accelerator.process_index}"
            conversations = [
                openai_messages(prompt, (images[i] or []) if images else [])
                for i, prompt in enumerate(self._factloop_prompts)
            ]
            served = server.sample(
                conversations,
                temperature=config.temperature,
                max_tokens=config.max_new_tokens,
                seed=random.Random(where).randrange(2**31),
                suppress=suppressed,
            )
            for answer, own in zip(served, prompt_ids, strict=True):
                check_prompt(answer.prompt_ids, own)
            completion_ids = [answer.token_ids for answer in served]
            return (completion_ids, [answer.logprobs for answer in served]) if answers_logprobs else completion_ids

    Served.__name__ = Served.__qualname__ = f"Served{base.__name__}"
    return Served


def check_shares(config: RLTrainConfig, processes: int) -> None:
    """Each of the processes takes an equal share of every batch."""
    sizes = {"rollout_batch_size": config.rollout_batch_size}
    if config.method == "ppo":
        sizes["minibatch_size"] = config.minibatch_size
    uneven = [name for name, size in sizes.items() if size % processes]
    if uneven:
        raise ConfigError(f"{' and '.join(uneven)} must be a multiple of the {processes} processes sharing it")


def train(
    config: RLTrainConfig,
    *,
    report_to: list[str] | None = None,
    progress: bool = True,
    reward: RewardFunction | None = None,
) -> RunResult:
    """Run PPO, GRPO or RLOO and write, under output_dir: `adapter/` (the policy's LoRA
    adapter), `config.yaml`, `log.jsonl` (PPO: one line of statistics per step) and
    `result.json`. `reward` replaces the config's reward model and symbolic terms as what
    the rollouts are scored by (the family matrix's checks; PPO's critic still starts from
    the reward model)."""
    check_shares(config, world_size())  # before anything is written
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if is_main():  # under accelerate launch, rank 0 alone writes (rlhf/distributed.py)
        (out / CONFIG_FILE).write_text(dump(config))
    began = time.perf_counter()
    adapter = out / ADAPTER_DIR
    if config.method == "ppo":
        trainer = PPOTrainer(config, progress=progress, reward=reward)
        history = trainer.train()
        if is_main():
            trainer.save(adapter)
        prompts = len(trainer.prompts)
        rewards = [h["reward"] for h in history]
        kls = [h["kl"] for h in history]
    else:
        trl = trl_trainer(config, report_to=report_to, reward=reward)
        with closing_server(trl.factloop_server, is_main()):
            trl.train()
        save_trained(trl, adapter)
        prompts = len(trl.train_dataset)
        logged = [e for e in trl.state.log_history if "reward" in e]
        rewards = [e["reward"] for e in logged]
        kls = [e["kl"] for e in logged if "kl" in e]
        if is_main():
            write_log(out / LOG_FILE, trl.state.log_history)
    window = max(1, len(rewards) // 5)
    result = RunResult(
        method=config.method,
        output_dir=str(out),
        adapter_dir=str(adapter),
        prompts=prompts,
        steps=config.steps,
        first_reward=sum(rewards[:window]) / window if rewards else None,
        last_reward=sum(rewards[-window:]) / window if rewards else None,
        last_kl=kls[-1] if kls else None,
        seconds=time.perf_counter() - began,
        git_revision=git_revision(),
        config=config.to_dict(),
    )
    if is_main():
        result.write(out)
    return result
