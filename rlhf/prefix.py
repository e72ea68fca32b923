"""One prefix pass per preference pair: the prompt and its image run once, both responses
continue from its key-value cache.

trl's DPOTrainer (pinned 1.16) lays a batch of B pairs out as 2B rows, [chosen rows;
rejected rows], each row the prompt followed by one response, and runs them all: the
prompt, its image tokens and the vision tower twice for the policy and twice more for the
reference. In a vision-language pair the prompt dominates (576 image tokens for
LLaVA-1.5 against 50 to 150 response tokens), so most of that work is repeated.

`shared_prefix_log_probs` takes trl's own batch, finds each pair's prompt (the tokens of a
row that attend but are not labelled) and response, and computes:
1. the B prompts once (left-padded, positions counted from each prompt's first real
   token), with the vision tower, keeping the cache;
2. the 2B responses (right-padded) in one forward over the cache, repeated for the
   chosen and the rejected rows, positions continuing after each prompt;
   With a frozen vision tower (LoRA on the language model alone, the default) the image
   features are computed once per batch and the reference's pass reuses the policy's
   (`image_inputs`).
3. the log-probability of each response token (its first from the prompt's last
   position), with the entropy, mean logit and top-1 flags trl's metrics read, placed
   where trl's fused LM head puts them, so that trl's loss code, and DDPO's token weights
   (rlhf/train_dpo.py), run unchanged on them.

It is exact: the same causal attention over the same tokens at the same positions, so the
log-probabilities equal trl's to float rounding (tests/rlhf/test_ddpo.py). It answers
None, and trl's own path runs, for anything it was not checked on: a model type outside
SUPPORTED, extra model inputs (Gemma's token types, Qwen2-VL's multimodal positions, image
sizes), or a batch whose chosen and rejected rows do not share their prompt.

Nothing here imports torch at import time.
"""

from __future__ import annotations

from typing import Any

# Model types whose prefix-then-continuation forward was checked against trl's log-probs.
# LLaVA's language model takes position_ids and a key-value cache as any decoder does, and
# its image features are computed from pixel_values inside the prompt's forward.
SUPPORTED = frozenset({"llava"})
# The inputs trl passes that this path understands; any other one falls back to trl's path.
_KNOWN = frozenset({"input_ids", "attention_mask", "pixel_values", "labels", "fused_lm_head", "use_cache"})


def supported(model: Any) -> bool:
    """A checked model type, whose forward keeps a cache: gradient checkpointing in training
    drops it (transformers' GradientCheckpointingLayer sets `use_cache=False`), so a
    checkpointed model takes the plain path."""
    if getattr(getattr(model, "config", None), "model_type", None) not in SUPPORTED:
        return False
    return not (model.training and any(getattr(m, "gradient_checkpointing", False) for m in model.modules()))


def shared_prefix_log_probs(model: Any, **inputs: Any) -> Any:
    """What trl's fused head returns for `inputs` (trl's 2B rows: a FusedCausalLMOutput of
    per-token log-probabilities and the fields its metrics read), from one prompt pass per
    pair; None when this path does not apply."""
    import torch

    if not supported(model) or set(inputs) - _KNOWN or inputs.get("pixel_values") is None:
        return None
    input_ids, attention_mask, labels = inputs["input_ids"], inputs["attention_mask"], inputs["labels"]
    rows = input_ids.size(0)
    if rows % 2 or labels is None:
        return None
    pairs = rows // 2
    completion = labels != -100
    prompt = attention_mask.bool() & ~completion
    prompts = [input_ids[r][prompt[r]] for r in range(rows)]
    responses = [input_ids[r][completion[r]] for r in range(rows)]
    for r in range(rows):
        # trl's layout: the prompt, then the response right after it, then padding.
        n_prompt, n_response = len(prompts[r]), len(responses[r])
        if not (prompt[r, :n_prompt].all() and completion[r, n_prompt : n_prompt + n_response].all()):
            return None
    if any(not torch.equal(prompts[r], prompts[r + pairs]) for r in range(pairs)):
        return None
    pixel_values = inputs["pixel_values"]
    if pixel_values.size(0) != rows or not torch.equal(pixel_values[:pairs], pixel_values[pairs:]):
        return None

    device = input_ids.device
    prompt_ids, prompt_mask = left_padded(prompts[:pairs], input_ids)
    response_ids, response_mask = right_padded(responses, input_ids)
    first, second = prefix_then_continuations(
        model.model,
        prompt_ids,
        prompt_mask,
        pixel_values[:pairs],
        response_ids,
        response_mask,
        torch.arange(pairs, device=device).repeat(2),
    )
    head = model.lm_head
    # Response token j is predicted at the position before it: the prompt's last for j = 0.
    hidden = torch.cat((first[:, -1:].repeat(2, 1, 1), second[:, :-1]), dim=1)
    scored = response_mask.bool()
    targets = response_ids[scored]
    logits = head(hidden[scored]).float()
    all_log_probs = torch.log_softmax(logits, dim=-1)
    token_log_probs = all_log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    with torch.no_grad():  # trl's metrics (and WPO's weights), as its fused head computes them
        plain = all_log_probs.detach()
        entropy = -(plain.exp() * plain).sum(-1)
        log_sum_sq_probs = torch.logsumexp(2 * plain, dim=-1)
        mean_logits = logits.detach().mean(-1)
        is_top1 = logits.detach().argmax(-1) == targets
    # Where trl's fused head puts them: position p holds token p + 1's, zero elsewhere.
    mask = completion[:, 1:]

    def placed(values: Any) -> Any:
        return values.new_zeros(mask.shape).masked_scatter(mask, values)

    from trl.trainer.utils import FusedCausalLMOutput

    log_probs = placed(token_log_probs)
    return FusedCausalLMOutput(
        loss=-log_probs.sum() / mask.sum().clamp(min=1),
        log_probs=log_probs,
        entropy=placed(entropy),
        log_sum_sq_probs=placed(log_sum_sq_probs),
        mean_logits=placed(mean_logits),
        is_top1=placed(is_top1),
        label_mask=mask,
    )


def left_padded(rows: list[Any], like: Any) -> tuple[Any, Any]:
    """Token rows left-padded into one tensor (each row's last token in the last column),
    with the attention mask."""
    import torch

    width = max(len(row) for row in rows)
    ids = torch.zeros((len(rows), width), dtype=like.dtype, device=like.device)
    mask = torch.zeros((len(rows), width), dtype=torch.long, device=like.device)
    for r, row in enumerate(rows):
        ids[r, width - len(row) :] = row
        mask[r, width - len(row) :] = 1
    return ids, mask


def right_padded(rows: list[Any], like: Any) -> tuple[Any, Any]:
    """Token rows right-padded into one tensor, with the attention mask."""
    import torch

    width = max(len(row) for row in rows)
    ids = torch.zeros((len(rows), width), dtype=like.dtype, device=like.device)
    mask = torch.zeros((len(rows), width), dtype=torch.long, device=like.device)
    for r, row in enumerate(rows):
        ids[r, : len(row)] = row
        mask[r, : len(row)] = 1
    return ids, mask


def prefix_then_continuations(
    backbone: Any,
    prefix_ids: Any,
    prefix_mask: Any,
    pixel_values: Any,
    continuation_ids: Any,
    continuation_mask: Any,
    owners: Any,
) -> tuple[Any, Any]:
    """The left-padded prefixes (with their images) in one forward that keeps the cache, then
    the right-padded continuations in one forward over it, row i continuing prefix
    `owners[i]` at the positions after it. Answers the last layer's hidden states of both:
    (prefixes, width, hidden) and (continuations, span, hidden)."""
    import torch

    first = backbone(
        input_ids=prefix_ids,
        attention_mask=prefix_mask,
        position_ids=(prefix_mask.cumsum(1) - 1).clamp(min=0),  # counted from each prefix's first real token
        use_cache=True,
        **image_inputs(backbone, pixel_values),
    )
    cache = first.past_key_values
    cache.reorder_cache(owners)
    span = continuation_ids.size(1)
    second = backbone(
        input_ids=continuation_ids,
        attention_mask=torch.cat((prefix_mask[owners], continuation_mask), dim=1),
        position_ids=prefix_mask.sum(1, keepdim=True)[owners] + torch.arange(span, device=continuation_ids.device),
        past_key_values=cache,
        use_cache=True,
    )
    return first.last_hidden_state, second.last_hidden_state


def shared_prefix_last_hidden(model: Any, inputs: dict[str, Any]) -> Any:
    """For a reward model's batch of 2n sequences (n chosen, then the n rejected, rlhf/
    reward.py `pair_batch`): the last layer's hidden state at each sequence's last real
    token, (2n, hidden), with each pair's common beginning (its prompt, the image and the
    facts, and any words both responses begin with) run once; None where this path does not
    apply. Exact as `shared_prefix_log_probs` is: the same tokens at the same positions."""
    import torch

    if not supported(model) or set(inputs) - {"input_ids", "attention_mask", "pixel_values"}:
        return None
    input_ids, attention_mask, pixel_values = (
        inputs.get("input_ids"),
        inputs.get("attention_mask"),
        inputs.get("pixel_values"),
    )
    if input_ids is None or attention_mask is None or pixel_values is None or input_ids.size(0) % 2:
        return None
    rows, pairs = input_ids.size(0), input_ids.size(0) // 2
    if pixel_values.size(0) != rows or not torch.equal(pixel_values[:pairs], pixel_values[pairs:]):
        return None
    real = [input_ids[r][attention_mask[r].bool()] for r in range(rows)]
    if any(len(tokens) < 2 for tokens in real):
        return None
    image_token = model.config.image_token_id
    prefixes, continuations = [], []
    for r in range(pairs):
        chosen, rejected = real[r], real[r + pairs]
        shortest = min(len(chosen), len(rejected))
        differs = (chosen[:shortest] != rejected[:shortest]).nonzero()
        common = int(differs[0]) if len(differs) else shortest
        common = min(common, shortest - 1)  # each continuation keeps at least its last token
        if (chosen[common:] == image_token).any() or (rejected[common:] == image_token).any():
            return None  # an image token past the common beginning: its features would be lost
        prefixes.append(chosen[:common])
        continuations += [chosen[common:], rejected[common:]]
    if any(len(prefix) == 0 for prefix in prefixes):
        return None
    order = [*range(0, rows, 2), *range(1, rows, 2)]  # back to [chosen rows; rejected rows]
    continuations = [continuations[i] for i in order]
    prefix_ids, prefix_mask = left_padded(prefixes, input_ids)
    continuation_ids, continuation_mask = right_padded(continuations, input_ids)
    _, hidden = prefix_then_continuations(
        model.model,
        prefix_ids,
        prefix_mask,
        pixel_values[:pairs],
        continuation_ids,
        continuation_mask,
        torch.arange(pairs, device=input_ids.device).repeat(2),
    )
    last = continuation_mask.sum(1) - 1
    return hidden[torch.arange(rows, device=hidden.device), last]


def image_inputs(backbone: Any, pixel_values: Any) -> dict[str, Any]:
    """What the prompt's forward takes for its images. With a frozen vision tower and
    projector (LoRA on the language model alone, the default), the policy and the reference
    see the same image features: they are computed once, without gradients, and the next
    forward over the same pixels (the reference's, after the policy's) reuses them through
    transformers' `mm_encoder_outputs` (LlavaModel.forward, transformers 5.19). Otherwise
    the pixels go in and the tower runs as usual."""
    import torch

    if not frozen_tower(backbone):
        return {"pixel_values": pixel_values}
    cached = getattr(backbone, "_factloop_image_outputs", None)
    if cached is None or cached[0].shape != pixel_values.shape or not torch.equal(cached[0], pixel_values):
        with torch.no_grad():
            outputs = backbone.get_image_features(
                pixel_values=pixel_values,
                vision_feature_layer=backbone.config.vision_feature_layer,
                vision_feature_select_strategy=backbone.config.vision_feature_select_strategy,
                return_dict=True,
            )
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        # The projected features alone (the tower's hidden states of every layer are dropped).
        cached = (pixel_values.detach().clone(), BaseModelOutputWithPooling(pooler_output=outputs.pooler_output))
        backbone._factloop_image_outputs = cached
    return {"mm_encoder_outputs": {"image": cached[1]}}


def frozen_tower(backbone: Any) -> bool:
    """The vision tower and projector have nothing to train, no adapter and no active
    dropout: their features do not depend on which pass (policy or reference) asks."""
    from torch.nn.modules.dropout import _DropoutNd

    parts: list[Any] = [getattr(backbone, "vision_tower", None), getattr(backbone, "multi_modal_projector", None)]
    if any(part is None for part in parts):
        return False
    for part in parts:
        for module in part.modules():
            if any(p.requires_grad for p in module.parameters(recurse=False)) or hasattr(module, "lora_A"):
                return False
            if isinstance(module, _DropoutNd) and module.training and module.p > 0:
                return False
    vision = getattr(backbone.config, "vision_config", None)
    return not (parts[0].training and float(getattr(vision, "attention_dropout", 0.0) or 0.0) > 0)


def wrap_forward(model: Any) -> Any:
    """Make `model`'s fused-head forwards (trl's `fused_lm_head=True` calls) take the shared
    prefix path where it applies; returns an undo callable. `model` is what trl calls: a
    PEFT model (its base model does the work, adapters on or off as trl set them) or a
    plain transformers model."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    original = model.forward
    had_own = "forward" in vars(model)

    def forward(*args: Any, **kwargs: Any) -> Any:
        if not args and kwargs.get("fused_lm_head"):
            shared = shared_prefix_log_probs(base, **kwargs)
            if shared is not None:
                return shared
        return original(*args, **kwargs)

    model.forward = forward

    def undo() -> None:
        if had_own:
            model.forward = original
        else:
            del model.forward

    return undo
