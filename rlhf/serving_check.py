"""Does vLLM serve a checkpoint with a hot-loaded LoRA adapter as transformers runs it?

The family matrix's vLLM cell (rlhf/family_matrix.py): start vLLM on the checkpoint from the
serving venv, load the adapter at runtime (`/v1/load_lora_adapter`, as a round's deploy
does), answer held-out prompts greedily for `max_tokens` tokens (a stop token does not end
an answer: a tiny random model often says little else), and compare the generated token
ids with transformers' greedy ones with the same adapter merged (float32 on both sides;
vLLM's log-probs were found within 4 decimals of transformers' on the tiny
LLaVA). Token ids, not text: a tiny random model says things that are not valid text (a
partial UTF-8 byte decodes differently in the two detokenizers) or only white space.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

ADAPTER_NAME = "round"


class ServingMismatch(AssertionError):
    """vLLM's answers differ from transformers'."""


def random_adapter(base: Path, out: Path, *, seed: int, rank: int = 8, scale: float = 0.5) -> Path:
    """A LoRA adapter on the language model's q and v projections (by the defaults' rule:
    all its linear layers where it has no such names), with both factors drawn at random
    (peft starts B at zero, which would change nothing): one that visibly changes what the
    model says."""
    import torch
    from peft import get_peft_model
    from transformers import AutoModelForImageTextToText

    from rlhf.config import LoraSettings

    torch.manual_seed(seed)
    model = AutoModelForImageTextToText.from_pretrained(str(base), dtype=torch.float32)
    settings = LoraSettings(r=rank, alpha=2 * rank, dropout=0.0, target_modules=["q_proj", "v_proj"])
    peft_model = get_peft_model(model, settings.peft_config("CAUSAL_LM", model))
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_A" in name or "lora_B" in name:
                parameter.normal_(0.0, scale)
    peft_model.save_pretrained(str(out))
    return out


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def served_ids(client: Any, model: str, image: bytes, prompt: str, max_tokens: int) -> list[int]:
    """vLLM's greedy token ids for one prompt (logprobs with tokens named by id)."""
    from models.serving import Sampling

    sampling = Sampling(temperature=0.0, max_tokens=max_tokens, seed=0, logprobs=0, token_ids=True, ignore_eos=True)
    choice = client.chat(model=model, prompt=prompt, image=image, sampling=sampling).choices[0]
    return [int(token.removeprefix("token_id:")) for token, _, _ in choice.logprobs or []]


def local_ids(model: Any, processor: Any, image: bytes, prompt: str, max_tokens: int) -> list[int]:
    """transformers' greedy token ids for one prompt (`max_tokens` of them: no stop token)."""
    import copy
    import io

    import torch
    from PIL import Image

    from testbed.tiny import prompt_text

    picture = Image.open(io.BytesIO(image)).convert("RGB")
    inputs = processor(images=[[picture]], text=[prompt_text(processor, prompt)], return_tensors="pt")
    inputs.pop("labels", None)
    # generate() fills what a passed config leaves unset from the model's own: no stop token
    # means none on the model's config for the duration, and on its language model's (BLIP-2
    # generates through its language model's generate()).
    configured = [m for m in model.modules() if getattr(m, "generation_config", None) is not None]
    saved = [copy.deepcopy(m.generation_config) for m in configured]
    for module in configured:
        module.generation_config.eos_token_id = None
    try:
        with torch.inference_mode():
            output = model.generate(**inputs, max_new_tokens=max_tokens, do_sample=False, top_p=None, top_k=None)
    finally:
        for module, config in zip(configured, saved, strict=True):
            module.generation_config = config
    return [int(token) for token in output[0, inputs["input_ids"].shape[1] :]]


def served_matches_transformers(
    model: Path, adapter: Path, heldout: Path, *, python: str, max_tokens: int = 8, log: Path | None = None
) -> str:
    """Start vLLM, hot-load `adapter`, and compare greedy token ids on `heldout`'s prompts
    with transformers'. Returns a short summary; raises ServingMismatch on a difference
    (with the first differing prompt)."""
    from contract.heldout import read_heldout
    from models.server import ServerConfig, VLLMServer
    from models.serving import ServingClient
    from rlhf.common import load_policy

    items = read_heldout(heldout)
    requests = [(items.image_bytes(item), item.prompt) for item in items.items]
    config = ServerConfig(
        model=str(model),
        python=python,
        port=free_port(),
        max_lora_rank=8,
        log_path=log or adapter.parent / "vllm.log",
    )
    with VLLMServer(config) as server, ServingClient(server.url, timeout=300) as client:
        client.load_adapter(ADAPTER_NAME, str(adapter))
        served = [served_ids(client, ADAPTER_NAME, image, prompt, max_tokens) for image, prompt in requests]
    policy, processor = load_policy(str(model), adapter=adapter)
    tokens = 0
    for (image, prompt), theirs in zip(requests, served, strict=True):
        mine = local_ids(policy, processor, image, prompt, max_tokens)
        if mine != theirs:
            raise ServingMismatch(f"{prompt!r}: transformers' token ids {mine}, vLLM's {theirs}")
        tokens += len(mine)
    return f"{len(requests)} greedy answers ({tokens} tokens) equal transformers' token for token; adapter hot-loaded"
