"""LoRA goes on the language model's linear layers in any family, found by the model's
`get_decoder()` rather than by the name LLaVA gives it: on the tiny LLaVA the same modules
as before; on Idefics3 (whose vision tower also has `q_proj`) the text model only, where the
old name-based rule found nothing; on Qwen2-VL the language model, not the vision blocks.
Tiny configs built here, no hub."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from rlhf.config import LoraSettings, language_model_prefix

TEXT = {
    "vocab_size": 300,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "max_position_embeddings": 256,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pad_token_id": 0,
}


def idefics3() -> Any:
    from transformers import Idefics3Config, Idefics3ForConditionalGeneration

    vision = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2}
    config = Idefics3Config(
        text_config={"model_type": "llama", **TEXT}, vision_config={**vision, "image_size": 64, "patch_size": 16}
    )
    return Idefics3ForConditionalGeneration(config)


def qwen2_vl() -> Any:
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    text = {**TEXT, "rope_scaling": {"type": "mrope", "mrope_section": [2, 3, 3]}}
    return Qwen2VLForConditionalGeneration(
        Qwen2VLConfig(text_config=text, vision_config={"depth": 1, "embed_dim": 32, "hidden_size": 32, "num_heads": 2})
    )


def adapted(model: Any, settings: LoraSettings) -> set[str]:
    """The modules peft puts an adapter on."""
    from peft import get_peft_model

    peft_model = get_peft_model(model, settings.peft_config("CAUSAL_LM", model))
    return {
        name.removeprefix("base_model.model.")
        for name, module in peft_model.named_modules()
        if hasattr(module, "lora_A") and name.endswith("_proj")
    }


def test_the_tiny_llava_gets_the_modules_it_always_got(base_policy: Path) -> None:
    from rlhf.common import load_policy

    model, _ = load_policy(str(base_policy))
    assert language_model_prefix(model) == "model.language_model"
    old = re.compile(r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj)")
    expected = {name for name, _ in model.named_modules() if old.fullmatch(name)}
    assert expected and adapted(model, LoraSettings()) == expected


def test_idefics3_gets_its_text_model_and_not_its_vision_tower() -> None:
    import torch

    torch.manual_seed(0)
    model = idefics3()
    assert language_model_prefix(model) == "model.text_model"
    names = adapted(model, LoraSettings())
    assert len(names) == 2 * 4 and all(name.startswith("model.text_model.layers.") for name in names)
    # The rule by LLaVA's name finds no language model in Idefics3: peft refuses it.
    from peft import get_peft_model

    with pytest.raises(ValueError, match="not found in the base model"):
        get_peft_model(idefics3(), LoraSettings().peft_config("CAUSAL_LM"))


def test_qwen2_vl_gets_its_language_model_and_the_settings_still_rule() -> None:
    model = qwen2_vl()
    names = adapted(model, LoraSettings(target_modules=["q_proj", "v_proj", "gate_proj"]))
    assert names and all(name.startswith("model.language_model.layers.") for name in names)
    assert {name.rsplit(".", 1)[1] for name in names} == {"q_proj", "v_proj", "gate_proj"}
    # language_model_only off: the names alone, anywhere (here the vision blocks have none).
    assert LoraSettings(language_model_only=False).targets(model) == ["q_proj", "k_proj", "v_proj", "o_proj"]


def test_a_language_model_without_llamas_names_gets_all_its_linear_layers() -> None:
    """Fuyu's Persimmon names its layers query_key_value, dense...: the default targets mean
    every linear layer of its language model (none of the vision side's); names set by
    the user are taken as they are."""
    from peft import get_peft_model
    from transformers import FuyuConfig, FuyuForCausalLM

    def fuyu() -> Any:
        config = FuyuConfig(
            text_config={"model_type": "persimmon", **TEXT}, vocab_size=300, hidden_size=32, patch_size=16
        )
        return FuyuForCausalLM(config)

    model = fuyu()
    peft_model = get_peft_model(model, LoraSettings().peft_config("CAUSAL_LM", model))
    names = {n.removeprefix("base_model.model.") for n, m in peft_model.named_modules() if hasattr(m, "lora_A")}
    assert {name.rsplit(".", 1)[1] for name in names} == {"query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"}
    assert all(name.startswith("model.language_model.layers.") for name in names)
    chosen = LoraSettings(target_modules=["dense"])
    model = fuyu()
    peft_model = get_peft_model(model, chosen.peft_config("CAUSAL_LM", model))
    names = {n for n, m in peft_model.named_modules() if hasattr(m, "lora_A")}
    assert names and all(name.endswith(".self_attn.dense") for name in names)
