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
        if mine != theirs:
            raise ServingMismatch(f"{request.prompt!r}: transformers {mine!r}, vLLM {theirs!r}")
    return f"{len(requests)} greedy answers equal transformers' (adapter hot-loaded)"
