"""LoRA adapters for tests: random, so that they visibly change the tiny model's answers."""

from __future__ import annotations

from pathlib import Path


def random_adapter(base: Path, out: Path, *, seed: int, rank: int = 8, scale: float = 0.5) -> Path:
    """A LoRA adapter on the tiny model's language-model attention (q and v projections),
    with both factors drawn at random (peft starts B at zero, which would change nothing)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText

    torch.manual_seed(seed)
    model = AutoModelForImageTextToText.from_pretrained(str(base), dtype=torch.float32)
    # vLLM applies LoRA to the language model only; keep the vision tower's projections out.
    config = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=r".*language_model.*\.(q_proj|v_proj)")
    peft_model = get_peft_model(model, config)
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_A" in name or "lora_B" in name:
                parameter.normal_(0.0, scale)
    peft_model.save_pretrained(str(out))
    return out
