"""Does vLLM serve a checkpoint with a hot-loaded LoRA adapter as transformers runs it?

The family matrix's vLLM cell (rlhf/families.py): start vLLM on the checkpoint from the
serving venv, load the adapter at runtime (`/v1/load_lora_adapter`, as a round's deploy
does), answer held-out prompts greedily, and compare with transformers' greedy answers
with the same adapter merged. Equal text is the check (float32 on both sides; STACK-FACTS.md
found vLLM's log-probs within 4 decimals of transformers' on the tiny LLaVA).
"""

from __future__ import annotations

import socket
from pathlib import Path

ADAPTER_NAME = "round"


class ServingMismatch(AssertionError):
    """vLLM's answers differ from transformers'."""


def _comparable(text: str) -> str:
    """An answer as both sides can be compared: white space at the ends stripped
    (transformers' answers come stripped: models.tiny.generate), and a trailing replacement
    character dropped (an answer cut by max_tokens inside a multi-byte character: vLLM's
    detokenizer holds the incomplete bytes back, transformers' decode shows U+FFFD)."""
    return text.strip().rstrip("\ufffd").strip()


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


def served_matches_transformers(
    model: Path, adapter: Path, heldout: Path, *, python: str, max_tokens: int = 8, log: Path | None = None
) -> str:
    """Start vLLM, hot-load `adapter`, and compare greedy answers on `heldout`'s
    description prompts with transformers'. Returns a short summary; raises
    ServingMismatch on a difference (with the first differing pair)."""
    from contract.heldout import read_heldout
    from models.server import ServerConfig, VLLMServer
    from models.serving import ServingClient
    from rlhf.common import load_policy
    from rlhf.heldout import LocalResponder, Request, ServedResponder

    items = read_heldout(heldout)
    requests = [Request(items.image_bytes(item), item.prompt) for item in items.items]
    config = ServerConfig(
        model=str(model),
        python=python,
        port=free_port(),
        max_lora_rank=8,
        log_path=log or adapter.parent / "vllm.log",
    )
    with VLLMServer(config) as server, ServingClient(server.url, timeout=300) as client:
        client.load_adapter(ADAPTER_NAME, str(adapter))
        served = ServedResponder(client, ADAPTER_NAME, max_tokens=max_tokens, workers=4).answer(requests)
    policy, processor = load_policy(str(model), adapter=adapter)
    local = LocalResponder(policy, processor, max_tokens=max_tokens).answer(requests)
    for request, mine, theirs in zip(requests, local, served, strict=True):
        if _comparable(mine) != _comparable(theirs):
            raise ServingMismatch(f"{request.prompt!r}: transformers {mine!r}, vLLM {theirs!r}")
    characters = sum(len(_comparable(text)) for text in local)
    return f"{len(requests)} greedy answers equal transformers' ({characters} characters; adapter hot-loaded)"
