"""One prefix pass per preference pair: the prompt and its image run once, both responses
continue from its key-value cache.

trl's DPOTrainer (pinned 1.16) lays a batch of B pairs out as 2B rows, [chosen rows;
rejected rows], each row the prompt followed by one response, and runs them all: the
prompt, its image tokens and the vision tower twice for the policy and twice more for the
reference. In a vision-language pair the prompt dominates (576 image tokens for
LLaVA-1.5 against 50 to 150 response tokens), so most of that work is repeated.

`shared_prefix_hidden` takes trl's own batch, finds each pair's prompt (the tokens of a
row that attend but are not labelled) and response, and computes:
1. the B prompts once (left-padded, positions counted from each prompt's first real
   token), with the vision tower and the image inputs, keeping the cache. With a frozen
   vision tower (LoRA on the language model alone, the default) the image features are
   computed once per batch and the reference's pass reuses the policy's (`image_inputs`);
2. the 2B responses (right-padded) in one forward over the cache, repeated for the
   chosen and the rejected rows, positions continuing after each prompt; inputs that run
   along the sequence (token types) are split between the two passes;
3. the last layer's hidden states, placed where trl's layout has them (position p holds
   the state that predicts token p + 1: the prompt's last, then the responses').
`wrap_forward` hands those states to trl's own fused LM head in place of the backbone's
output (the backbone is not run again), so the log-probabilities, trl's metrics and
DDPO's token weights (rlhf/train_dpo.py) come from trl's code unchanged, with the family's
logit scale and soft-capping.

It is exact: the same attention over the same tokens at the same positions, so the loss
and gradients equal trl's to float rounding. Each family in SUPPORTED is checked against
trl's path on its tiny checkpoint (tests/rlhf/test_ddpo.py for LLaVA,
tests/rlhf/test_families.py for the others). It answers None, and trl's own path runs, for
anything else: another model type, an input it does not know, gradient checkpointing in
training (it drops the cache), or a batch whose chosen and rejected rows do not share
their prompt and image. Qwen2/2.5-VL's multimodal rotary positions are taken from the
model's own `get_rope_index` over the whole rows and split between the passes, and their
flat patch list is split by image (MROPE).

`shared_prefix_last_hidden` does the same for the reward model's pairs (rlhf/reward.py):
each pair's common beginning once, the state at each sequence's last token.

Nothing here imports torch at import time.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

# Model types whose prefix-then-continuation forward was checked against trl's path on a
# tiny checkpoint (the tests named above). Their backbones take a key-value cache and
# position ids, and compute the image features from the image inputs in the prompt's
# forward (Qwen2/2.5-VL: see MROPE). Left out: BLIP-2 and InstructBLIP (the Q-Former's
# inputs), Kosmos-2 (positions it derives from the padding), PaliGemma (its prompt attends
# both ways, and its positions start at 1), Chameleon's DPO batches (the shared path
# declines them; its reward model is in).
SUPPORTED = frozenset({"llava", "llava_next", "gemma3", "idefics3", "smolvlm", "qwen2_vl", "qwen2_5_vl"})
# Per-row image inputs the prompt's forward takes; row r of each belongs to row r of the ids.
IMAGE_INPUTS = ("pixel_values", "image_sizes", "pixel_attention_mask")
# Inputs that run along the token sequence: split between the prompt's and the responses' passes.
SEQUENCE_INPUTS = ("token_type_ids", "mm_token_type_ids")
# Families whose positions are 3-D (temporal, height, width: multimodal rotary positions,
# Qwen2-VL, arXiv:2409.12191, section 2.1): each row's positions come from the backbone's own
# `get_rope_index` over the whole row and are split between the two passes; their images
# arrive as one flat patch list, split by `image_grid_thw`.
MROPE = frozenset({"qwen2_vl", "qwen2_5_vl"})
# What trl's fused-head call passes besides those.
_CALL = frozenset({"input_ids", "attention_mask", "labels", "fused_lm_head", "use_cache"})
# The same for the reward model's forward (rlhf/reward.py), whose families were checked too:
# Chameleon joins for it (its image tokens sit in the prompt, which both sides share whole).
# PaliGemma stays out here as well: its processor marks the whole conversation as the prefix
# that attends both ways, so a response cannot continue from a cache.
REWARD_SUPPORTED = SUPPORTED | {"chameleon"}


def supported(model: Any, types: frozenset[str] = SUPPORTED) -> bool:
    """A checked model type, whose forward keeps a cache: gradient checkpointing in training
    drops it (transformers' GradientCheckpointingLayer sets `use_cache=False`), so a
    checkpointed model takes the plain path."""
    if getattr(getattr(model, "config", None), "model_type", None) not in types:
        return False
    return not (model.training and any(getattr(m, "gradient_checkpointing", False) for m in model.modules()))


def backbone_of(model: Any) -> Any:
    """The model without its LM head: what trl's fused head calls (`base_model`)."""
    return model.base_model


def _per_row_images(inputs: dict[str, Any], rows: int) -> dict[str, Any] | None:
    """The image inputs of the first half of the rows, when every one is laid out one per
    row and the second half repeats the first (the rejected rows' images are the chosen
    rows'); None otherwise."""
    import torch

    pairs = rows // 2
    grid = inputs.get("image_grid_thw")
    if grid is not None:  # one flat list of every image's patches, in row order
        if grid.size(0) != rows or not torch.equal(grid[:pairs], grid[pairs:]) or inputs.get("pixel_values") is None:
            return None
        patches = inputs["pixel_values"].split(grid.prod(-1).tolist())
        if any(not torch.equal(patches[r], patches[r + pairs]) for r in range(pairs)):
            return None
        return {"pixel_values": torch.cat(patches[:pairs]), "image_grid_thw": grid[:pairs]}
    images = {k: inputs[k] for k in IMAGE_INPUTS if inputs.get(k) is not None}
    if "pixel_values" not in images:
        return None
    for value in images.values():
        if value.size(0) != rows or not torch.equal(value[:pairs], value[pairs:]):
            return None
    return {k: v[:pairs] for k, v in images.items()}


def shared_prefix_hidden(model: Any, **inputs: Any) -> Any:
    """The last layer's hidden states for trl's 2B rows (a tensor shaped like the ids plus
    the hidden size) from one prompt pass per pair, nonzero where trl's head reads them (the
    positions before each response token); None when this path does not apply."""
    import torch

    if not supported(model) or set(inputs) - _CALL - set(IMAGE_INPUTS) - set(SEQUENCE_INPUTS) - _grid(model):
        return None
    input_ids, attention_mask, labels = inputs["input_ids"], inputs.get("attention_mask"), inputs.get("labels")
    rows = input_ids.size(0)
    if rows % 2 or labels is None or attention_mask is None:
        return None
    pairs = rows // 2
    images = _per_row_images(inputs, rows)
    if images is None:
        return None
    completion = labels != -100
    prompt = attention_mask.bool() & ~completion
    prompts = [input_ids[r][prompt[r]] for r in range(rows)]
    responses = [input_ids[r][completion[r]] for r in range(rows)]
    for r in range(rows):
        # trl's layout: the prompt, then the response right after it, then padding.
        n_prompt, n_response = len(prompts[r]), len(responses[r])
        if not n_response or not (prompt[r, :n_prompt].all() and completion[r, n_prompt : n_prompt + n_response].all()):
            return None
    if any(not torch.equal(prompts[r], prompts[r + pairs]) for r in range(pairs)):
        return None
    sequences = {k: inputs[k] for k in SEQUENCE_INPUTS if inputs.get(k) is not None}

    def split(mask: Any, which: range, pad: Any) -> dict[str, Any]:
        return {k: pad([v[r][mask[r]] for r in which], v)[0] for k, v in sequences.items()}

    device = input_ids.device
    prompt_ids, prompt_mask = left_padded(prompts[:pairs], input_ids)
    response_ids, response_mask = right_padded(responses, input_ids)
    positions = None
    if model.config.model_type in MROPE:
        full = rope_positions(backbone_of(model), inputs, attention_mask)
        positions = (
            _split_positions(full, prompt, range(pairs), left_padded),
            _split_positions(full, completion, range(rows), right_padded),
        )
    first, second = prefix_then_continuations(
        backbone_of(model),
        (prompt_ids, prompt_mask, split(prompt, range(pairs), left_padded)),
        images,
        (response_ids, response_mask, split(completion, range(rows), right_padded)),
        torch.arange(pairs, device=device).repeat(2),
        positions,
    )
    # Response token j is predicted at the position before it: the prompt's last for j = 0.
    states = torch.cat((first[:, -1:].repeat(2, 1, 1), second[:, :-1]), dim=1)[response_mask.bool()]
    # Where trl's head reads them (it drops the last position and shifts the labels by one).
    where = torch.cat((completion[:, 1:], completion.new_zeros((rows, 1))), dim=1)
    hidden = states.new_zeros((*input_ids.shape, states.size(-1)))
    return hidden.masked_scatter(where.unsqueeze(-1), states)


def _grid(model: Any) -> set[str]:
    """The extra input a multimodal-rotary family takes."""
    return {"image_grid_thw"} if getattr(model.config, "model_type", None) in MROPE else set()


def rope_positions(backbone: Any, inputs: dict[str, Any], attention_mask: Any) -> Any:
    """The 3-D positions (3, rows, tokens) the backbone gives the whole rows by itself."""
    positions, _ = backbone.get_rope_index(
        inputs["input_ids"],
        mm_token_type_ids=inputs.get("mm_token_type_ids"),
        image_grid_thw=inputs.get("image_grid_thw"),
        attention_mask=attention_mask,
    )
    return positions


def _split_positions(full: Any, mask: Any, which: range, pad: Any) -> Any:
    """The 3-D positions of the tokens `mask` picks in each row of `which`, padded as `pad`
    pads the ids: (3, len(which), width)."""
    import torch

    return torch.stack([pad([full[axis, r][mask[r]] for r in which], full)[0] for axis in range(full.size(0))])


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


Part = tuple[Any, Any, dict[str, Any]]  # ids, attention mask, sequence-aligned inputs


def prefix_then_continuations(
    backbone: Any,
    prefixes: Part,
    images: dict[str, Any],
    continuations: Part,
    owners: Any,
    positions: tuple[Any, Any] | None = None,
) -> tuple[Any, Any]:
    """The left-padded prefixes (with their image inputs) in one forward that keeps the
    cache, then the right-padded continuations in one forward over it, row i continuing
    prefix `owners[i]` at the positions after it (or at the given `positions` of both
    passes). Answers the last layer's hidden states of both: (prefixes, width, hidden) and
    (continuations, span, hidden)."""
    import torch

    prefix_ids, prefix_mask, prefix_extra = prefixes
    continuation_ids, continuation_mask, continuation_extra = continuations
    span = continuation_ids.size(1)
    if positions is None:
        positions = (
            (prefix_mask.cumsum(1) - 1).clamp(min=0),  # counted from each prefix's first real token
            prefix_mask.sum(1, keepdim=True)[owners] + torch.arange(span, device=continuation_ids.device),
        )
    first = backbone(
        input_ids=prefix_ids,
        attention_mask=prefix_mask,
        position_ids=positions[0],
        use_cache=True,
        **prefix_extra,
        **image_inputs(backbone, images),
    )
    cache = first.past_key_values
    cache.reorder_cache(owners)
    second = backbone(
        input_ids=continuation_ids,
        attention_mask=torch.cat((prefix_mask[owners], continuation_mask), dim=1),
        position_ids=positions[1],
        past_key_values=cache,
        use_cache=True,
        **continuation_extra,
    )
    return first.last_hidden_state, second.last_hidden_state


def shared_prefix_last_hidden(model: Any, inputs: dict[str, Any]) -> Any:
    """For a reward model's batch of 2n sequences (n chosen, then the n rejected, rlhf/
    reward.py `pair_batch`): the last layer's hidden state at each sequence's last real
    token, (2n, hidden), with each pair's common beginning (its prompt, the image and the
    facts, and any words both responses begin with) run once; None where this path does not
    apply. Exact as `shared_prefix_hidden` is: the same tokens at the same positions."""
    import torch

    known = {"input_ids", "attention_mask", *IMAGE_INPUTS, *SEQUENCE_INPUTS} | _grid(model)
    if not supported(model, REWARD_SUPPORTED) or set(inputs) - known:
        return None
    input_ids, attention_mask = inputs.get("input_ids"), inputs.get("attention_mask")
    if input_ids is None or attention_mask is None or input_ids.size(0) % 2:
        return None
    rows, pairs = input_ids.size(0), input_ids.size(0) // 2
    images = _per_row_images(inputs, rows)
    if images is None:
        return None
    real = [input_ids[r][attention_mask[r].bool()] for r in range(rows)]
    if any(len(tokens) < 2 for tokens in real):
        return None
    image_token = getattr(model.config, "image_token_id", None) or getattr(model.config, "image_token_index", None)
    cuts = []
    for r in range(pairs):
        chosen, rejected = real[r], real[r + pairs]
        shortest = min(len(chosen), len(rejected))
        differs = (chosen[:shortest] != rejected[:shortest]).nonzero()
        common = int(differs[0]) if len(differs) else shortest
        common = min(common, shortest - 1)  # each continuation keeps at least its last token
        if common == 0 or (chosen[common:] == image_token).any() or (rejected[common:] == image_token).any():
            return None  # an image token past the common beginning: its features would be lost
        cuts.append(common)
    sequences = {k: inputs[k] for k in SEQUENCE_INPUTS if inputs.get(k) is not None}

    def real_of(values: Any, r: int) -> Any:
        return values[r][attention_mask[r].bool()]

    def parts(values: Any) -> tuple[list[Any], list[Any]]:
        heads = [real_of(values, r)[: cuts[r]] for r in range(pairs)]
        tails = [real_of(values, r)[cuts[r % pairs] :] for r in range(rows)]
        return heads, tails

    heads, tails = parts(input_ids)
    prefix_ids, prefix_mask = left_padded(heads, input_ids)
    continuation_ids, continuation_mask = right_padded(tails, input_ids)
    split = {k: parts(v) for k, v in sequences.items()}
    positions = None
    if model.config.model_type in MROPE:
        full = rope_positions(backbone_of(model), inputs, attention_mask)
        axes = [parts(full[axis]) for axis in range(full.size(0))]
        positions = (
            torch.stack([left_padded(h, full)[0] for h, _ in axes]),
            torch.stack([right_padded(t, full)[0] for _, t in axes]),
        )
    _, hidden = prefix_then_continuations(
        backbone_of(model),
        (prefix_ids, prefix_mask, {k: left_padded(h, sequences[k])[0] for k, (h, _) in split.items()}),
        images,
        (continuation_ids, continuation_mask, {k: right_padded(t, sequences[k])[0] for k, (_, t) in split.items()}),
        torch.arange(pairs, device=input_ids.device).repeat(2),
        positions,
    )
    last = continuation_mask.sum(1) - 1
    return hidden[torch.arange(rows, device=hidden.device), last]


def image_inputs(backbone: Any, images: dict[str, Any]) -> dict[str, Any]:
    """What the prompt's forward takes for its images. With a frozen vision tower and
    projector (LoRA on the language model alone, the default), the policy and the reference
    see the same image features: they are computed once, without gradients, and the next
    forward over the same pixels (the reference's, after the policy's) reuses them through
    transformers' `mm_encoder_outputs` (transformers 5.19: LLaVA, LLaVA-NeXT, Gemma 3).
    Otherwise the image inputs go in and the tower runs as usual."""
    import inspect

    import torch

    if not frozen_tower(backbone) or "mm_encoder_outputs" not in inspect.signature(backbone.forward).parameters:
        return images
    cached = getattr(backbone, "_factloop_image_outputs", None)
    if (
        cached is None
        or cached[0].keys() != images.keys()
        or not all(cached[0][k].shape == v.shape and torch.equal(cached[0][k], v) for k, v in images.items())
    ):
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        with torch.no_grad():
            outputs = backbone.get_image_features(**images, return_dict=True)
        # The projected features alone (the tower's hidden states of every layer are dropped).
        kept = BaseModelOutputWithPooling(pooler_output=outputs.pooler_output)
        cached = ({k: v.detach().clone() for k, v in images.items()}, kept)
        backbone._factloop_image_outputs = cached
    return {k: v for k, v in images.items() if k != "pixel_values" and k != "image_sizes"} | {
        "mm_encoder_outputs": {"image": cached[1]}
    }


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


@contextmanager
def _answering(backbone: Any, hidden: Any) -> Iterator[None]:
    """For the duration, `backbone` answers any call with `hidden` as its last hidden state
    instead of running (trl's fused head calls it once)."""
    from transformers.modeling_outputs import BaseModelOutputWithPast

    had_own = "forward" in vars(backbone)
    original = backbone.forward
    backbone.forward = lambda *args, **kwargs: BaseModelOutputWithPast(last_hidden_state=hidden)
    try:
        yield
    finally:
        if had_own:
            backbone.forward = original
        else:
            del backbone.forward


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
            hidden = shared_prefix_hidden(base, **kwargs)
            if hidden is not None:
                with _answering(backbone_of(base), hidden):
                    return original(*args, **kwargs)
        return original(*args, **kwargs)

    model.forward = forward

    def undo() -> None:
        if had_own:
            model.forward = original
        else:
            del model.forward

    return undo
